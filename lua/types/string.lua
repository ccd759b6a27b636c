-- type: string
-- update: set append
-- retrieve: get len
-- check: eq
-- measure: len
-- whole: get
-- about: a text value. set overwrites, append concatenates; the result may not
--   exceed the state's max_bytes (checked before writing, so an oversize append
--   leaves the state untouched); get/eq refuse a stored value over max_bytes
--   (written outside cogs) before reading it.
-- args: set/append/eq take a string; get/len take none.
local R, str = nil, cogs.str
cogs.on_bind(function() R = redis.call end)

-- Before the value is read for a caller: one written outside cogs may be any size.
local function fits(rk, st)
    local n = R('STRLEN', rk)
    if n > st.max_bytes then cogs.stored_over('is', n .. ' bytes', 'max_bytes ' .. st.max_bytes) end
end

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
        get = function(rk, _, st)
            fits(rk, st)
            return R('GET', rk)
        end,
        len = function(rk) return R('STRLEN', rk) end,
    },
    check = {
        eq = function(rk, arg, st)
            arg = str(arg, st, 'argument')
            fits(rk, st)
            return R('GET', rk) == arg
        end,
    },
    measure = {
        len = function(rk, hint) return hint or R('STRLEN', rk) end,
    },
    whole = 'get',
})
