-- checker: ratio
-- types: map
-- params: numerator:string denominator:string threshold:number min_denominator:int=1
-- alert: value = numerator/denominator when it first reached `threshold` with at least
--   `min_denominator` in the denominator field
-- about: share of one counter in another, both fields of a map state updated with
--   `incr`: e.g. TXT+NULL+CNAME queries over all queries of a client (DNS tunnel),
--   failed over total connections (scanner), 4xx over all responses.
local R
cogs.on_bind(function() R = redis.call end)

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
})
