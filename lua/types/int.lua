-- type: int
-- update: add sub max min set
-- retrieve: get
-- check: gt ge lt le eq
-- measure: value
-- whole: get
-- coalesce: add=sum sub=sum
-- about: a counter. add/sub are S' = S +/- d (INCRBY, exact to 64 bits); max/min keep
--   the larger/smaller; set overwrites. Deltas are integers within +/-2^53 (JSON
--   numbers are doubles). A missing state reads as nil; predicates treat it as 0.
-- args: add/sub/max/min/set take an integer; gt/ge/lt/le/eq take an integer.
local R, int, intarg, tonum = nil, cogs.int, cogs.intarg, cogs.tonum
cogs.on_bind(function() R = redis.call end)

-- Before the value is read for a caller: no 64-bit integer has more than 20 characters,
-- and a longer value (written outside cogs) is not read at all.
local MAX_DIGITS = 20
local function fits(rk)
    local n = R('STRLEN', rk)
    if n > MAX_DIGITS then cogs.stored_over('is', n .. ' bytes', MAX_DIGITS .. ' (no 64-bit integer is longer)') end
end

local function keep(rk, d, better)
    fits(rk)
    local cur = R('GET', rk)
    local n = cur and tonumber(cur)
    if cur and not n then -- a value written outside cogs: refused like INCRBY refuses it
        cogs.fail('WRONGTYPE', 'the stored value is not an integer (written outside cogs?)')
    end
    if cur and not better(d, n) then
        return false, n, false
    end
    R('SET', rk, cogs.num2s(d), 'KEEPTTL')
    return true, d, not cur
end

local function cmp(test)
    return function(rk, arg)
        local b = int(arg, 'argument')
        fits(rk)
        return test(tonum(R('GET', rk)), b)
    end
end

cogs.register_type('int', {
    update = {
        -- (changed, new value, created?): the result equal to the delta may be a new key
        add = function(rk, d)
            if type(d) ~= 'string' or #d > 20 then d = intarg(d) end -- a decimal string passes as is
            local v = R('INCRBY', rk, d)
            return d ~= '0', v, v == tonumber(d)
        end,
        sub = function(rk, d)
            d = intarg(d)
            local v = R('DECRBY', rk, d)
            return d ~= '0', v, v == -tonumber(d)
        end,
        max = function(rk, d) return keep(rk, int(d), function(a, b) return a > b end) end,
        min = function(rk, d) return keep(rk, int(d), function(a, b) return a < b end) end,
        set = function(rk, d)
            d = int(d)
            R('SET', rk, cogs.num2s(d), 'KEEPTTL')
            return true, d
        end,
    },
    retrieve = {
        get = function(rk)
            fits(rk)
            return R('GET', rk)
        end,
    },
    check = {
        gt = cmp(function(a, b) return a > b end),
        ge = cmp(function(a, b) return a >= b end),
        lt = cmp(function(a, b) return a < b end),
        le = cmp(function(a, b) return a <= b end),
        eq = cmp(function(a, b) return a == b end),
    },
    measure = {
        value = function(rk, hint)
            if hint then return hint end
            return tonum(R('GET', rk))
        end,
    },
    whole = 'get',
})
