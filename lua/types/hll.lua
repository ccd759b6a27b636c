-- type: hll
-- update: add
-- retrieve: count
-- check:
-- measure: card
-- whole: count
-- coalesce: add=union
-- about: USER-DEFINED TYPE EXAMPLE. An approximate distinct counter on HyperLogLog:
--   12 KB at most per state whatever the number of members, ~0.81% standard error.
--   Use it instead of a set when only the count matters (distinct ports, distinct
--   subdomains at line rate). This file plus its register_type call is all a type
--   needs: the header lines above tell the Python side the op names.
-- args: add takes a string or an array of strings; count takes none.
local R, strlist = nil, cogs.strlist
cogs.on_bind(function() R = redis.call end)

cogs.register_type('hll', {
    update = {
        add = function(rk, d, st)
            return cogs.chunked('PFADD', rk, strlist(d, st, 'member')) > 0, nil
        end,
    },
    retrieve = {
        count = function(rk) return R('PFCOUNT', rk) end,
    },
    check = {},
    measure = {
        card = function(rk) return R('PFCOUNT', rk) end,
    },
    whole = 'count',
})
