-- type: string
-- update: set append
-- retrieve: get len
-- check: eq
-- measure: len
-- whole: get
-- about: a text value. set overwrites, append concatenates; the result may not
--   exceed the state's max_bytes (checked before writing, so an oversize append
--   leaves the state untouched).
-- args: set/append/eq take a string; get/len take none.
local R, str = nil, cogs.str
cogs.on_bind(function() R = redis.call end)

cogs.register_type('string', {
    update = {
        set = function(rk, d, st)
            d = str(d, st)
            R('SET', rk, d, 'KEEPTTL')
            return true, #d
        end,
        append = function(rk, d, st)
            d = str(d, st)
            local len = R('STRLEN', rk)
            if len + #d > st.max_bytes then
                cogs.fail('OVERSIZE', 'append would make the value ' .. (len + #d)
                    .. ' bytes, limit ' .. st.max_bytes)
            end
            local len = R('APPEND', rk, d)
            return #d > 0, len, len == #d
        end,
    },
    retrieve = {
        get = function(rk) return R('GET', rk) end,
        len = function(rk) return R('STRLEN', rk) end,
    },
    check = {
        eq = function(rk, arg, st) return R('GET', rk) == str(arg, st, 'argument') end,
    },
    measure = {
        len = function(rk, hint) return hint or R('STRLEN', rk) end,
    },
    whole = 'get',
})
