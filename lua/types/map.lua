-- type: map
-- update: set incr del
-- retrieve: all field len
-- check: has
-- measure: len
-- whole: all
-- coalesce: incr=mapsum
-- about: a map of string fields (a Redis hash). set writes fields, incr adds integers
--   to fields (HINCRBY), del removes fields. max_items bounds the number of fields
--   (DEFAULT_MAX_ITEMS when the state declares none); all/field refuse a stored map
--   over the state's bounds (written outside cogs) rather than hand it to a proxy.
-- args: set takes {field: value} or [field, value, ...]; incr takes {field: int} or
--   [field, int, ...]; del takes a field or an array of fields; field/has take a field.
local R, str, intarg, strlist = nil, cogs.str, cogs.intarg, cogs.strlist
cogs.on_bind(function() R = redis.call end)

-- a field's value: a string of at most max_bytes, or a counter (incr) of up to 20 digits
local function value_limit(st)
    return st.max_bytes > 20 and st.max_bytes or 20
end

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
        all = function(rk, _, st)
            local n = R('HLEN', rk)
            if n > st.max_items then cogs.stored_over('has', n .. ' fields', 'max_items ' .. st.max_items) end
            local fv = R('HGETALL', rk)
            local mf, mv = st.max_member, value_limit(st)
            for i = 1, #fv, 2 do -- (one loop: cogs.check_sizes twice costs a second pass)
                if #fv[i] > mf or #fv[i + 1] > mv then
                    cogs.check_sizes(fv, 1, 2, mf, 'max_member_bytes', 'field')
                    cogs.check_sizes(fv, 2, 2, mv, 'max_bytes', 'field value')
                end
            end
            return fv
        end,
        field = function(rk, arg, st)
            local f = str(arg, st, 'field')
            local n = R('HSTRLEN', rk, f)
            if n > value_limit(st) then
                cogs.stored_over('of field ' .. cogs.show(f) .. ' is', n .. ' bytes', 'max_bytes ' .. value_limit(st))
            end
            return R('HGET', rk, f)
        end,
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
