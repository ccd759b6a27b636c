-- type: set
-- update: add remove
-- retrieve: members card contains
-- check: contains
-- measure: card
-- whole: members
-- coalesce: add=union remove=union
-- about: a set of strings. add/remove take one member or an array of members (a
--   coalesced batch of inserts is one op). max_items bounds the cardinality: an add
--   that would exceed it fails whole and leaves the set untouched.
-- args: add/remove take a string or an array of strings; contains takes a string.
local R, strlist, str = nil, cogs.strlist, cogs.str
cogs.on_bind(function() R = redis.call end)

cogs.register_type('set', {
    update = {
        add = function(rk, d, st)
            local added
            if type(d) == 'string' and #d <= st.max_member and not st.max_items then
                added = R('SADD', rk, d) -- one member: no list to build (the trigger hot path)
            else
                local ms = strlist(d, st, 'member')
                cogs.check_room(rk, st, ms, 1, 'SCARD', 'SISMEMBER', 'members')
                added = cogs.chunked('SADD', rk, ms)
            end
            if added > 0 and (st.window or st.checker) then
                -- one SCARD serves the checker (hint) and the window (new key?)
                local card = R('SCARD', rk)
                return true, card, card == added
            end
            return added > 0, nil, nil
        end,
        remove = function(rk, d, st)
            return cogs.chunked('SREM', rk, strlist(d, st, 'member')) > 0, nil, false
        end,
    },
    retrieve = {
        members = function(rk) return R('SMEMBERS', rk) end,
        card = function(rk) return R('SCARD', rk) end,
        contains = function(rk, arg, st) return R('SISMEMBER', rk, str(arg, st, 'member')) end,
    },
    check = {
        contains = function(rk, arg, st) return R('SISMEMBER', rk, str(arg, st, 'member')) == 1 end,
    },
    measure = {
        card = function(rk, hint) return hint or R('SCARD', rk) end,
    },
    whole = 'members',
})
