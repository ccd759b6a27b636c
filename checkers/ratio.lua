-- checker: ratio
-- types: map
-- params: numerator:string denominator:string threshold:number min_denominator:int=1
-- alert: value = numerator/denominator when it first reached `threshold` with at least
--   `min_denominator` in the denominator field; figures {n = numerator, d = denominator,
--   ratio}; says e.g. "odd/all = 81/81 = 100% >= 50% (all >= 50)"
-- about: share of one counter in another, both fields of a map state updated with
--   `incr`: e.g. TXT+NULL+CNAME queries over all queries of a client (DNS tunnel),
--   failed over total connections (scanner), 4xx over all responses.
local R
cogs.on_bind(function() R = redis.call end)

local function pct(x)
    return string.format('%.4g%%', x * 100)
end

cogs.register_checker('ratio', {
    test = function(rk, hint, st, p)
        local v = R('HMGET', rk, p.numerator, p.denominator)
        local num, den = tonumber(v[1]) or 0, tonumber(v[2]) or 0
        if den < p.min_denominator or den <= 0 then
            return false, 0
        end
        local r = num / den
        return r >= p.threshold, r
    end,
    -- called for an alert only (after test, in the same atomic call): its figures
    figures = function(rk, st, p, r)
        local v = R('HMGET', rk, p.numerator, p.denominator)
        return { n = tonumber(v[1]) or 0, d = tonumber(v[2]) or 0, ratio = r }
    end,
    explain = function(p, f)
        return string.format('%s/%s = %s/%s = %s >= %s (%s >= %d)', p.numerator, p.denominator,
            cogs.num2s(f.n), cogs.num2s(f.d), pct(f.ratio), pct(p.threshold), p.denominator, p.min_denominator)
    end,
})
