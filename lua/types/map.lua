-- type: map
-- update: set incr del
-- retrieve: all field len
-- check: has
-- measure: len
-- whole: all
-- coalesce: incr=mapsum
-- about: a map of string fields (a Redis hash). set writes fields, incr adds integers
--   to fields (HINCRBY), del removes fields. max_items bounds the number of fields.
-- args: set takes {field: value} or [field, value, ...]; incr takes {field: int} or
--   [field, int, ...]; del takes a field or an array of fields; field/has take a field.
local R, str, intarg, strlist = nil, cogs.str, cogs.intarg, cogs.strlist
cogs.on_bind(function() R = redis.call end)

local function bound(rk, st, fv)
    cogs.check_room(rk, st, fv, 2, 'HLEN', 'HEXISTS', 'fields')
end

cogs.register_type('map', {
    update = {
        set = function(rk, d, st)
            local fv = cogs.pairs_list(d, st, function(v) return str(v, st) end)
            bound(rk, st, fv)
            cogs.chunked('HSET', rk, fv)
            return true, nil
        end,
        incr = function(rk, d, st)
            local fv = cogs.pairs_list(d, st, function(v) return intarg(v) end)
            bound(rk, st, fv)
            for i = 1, #fv, 2 do
                local ok, e = pcall(R, 'HINCRBY', rk, fv[i], fv[i + 1])
                if not ok then  -- all or nothing: a field past 64 bits undoes the fields before it
                    for j = i - 2, 1, -2 do
                        local n = fv[j + 1]
                        R('HINCRBY', rk, fv[j], n == '0' and n or (n:sub(1, 1) == '-' and n:sub(2) or '-' .. n))
                    end
                    error(e, 0)
                end
            end
            return true, nil
        end,
        del = function(rk, d, st)
            return cogs.chunked('HDEL', rk, strlist(d, st, 'field')) > 0, nil, false
        end,
    },
    retrieve = {
        all = function(rk) return R('HGETALL', rk) end,
        field = function(rk, arg, st) return R('HGET', rk, str(arg, st, 'field')) end,
        len = function(rk) return R('HLEN', rk) end,
    },
    check = {
        has = function(rk, arg, st) return R('HEXISTS', rk, str(arg, st, 'field')) == 1 end,
    },
    measure = {
        len = function(rk) return R('HLEN', rk) end,
        card = function(rk) return R('HLEN', rk) end,
    },
    whole = 'all',
})
