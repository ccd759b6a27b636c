-- checker: rate
-- types: int
-- params: threshold:number min_count:int=1
-- needs: window
-- alert: value = events per second since the window opened, when it first reached
--   `threshold` with at least `min_count` events counted; figures {n = events,
--   seconds = the time they took (at least 1), rate}; says e.g. "25 in 2s = 12.5/s >= 5/s"
-- about: a windowed counter read as a rate (queries/s per client, SYNs/s per source).
--   Needs a state with a `window`: the elapsed time is window - remaining TTL, floored
--   at one second so the first events of a window do not read as a huge rate.
local R
cogs.on_bind(function() R = redis.call end)

cogs.register_checker('rate', {
    test = function(rk, hint, st, p)
        local v = st.T.measure.value(rk, hint)
        if v < p.min_count then
            return false, 0
        end
        local left = R('PTTL', rk)
        local elapsed = st.window - (left > 0 and left or 0)
        if elapsed < 1000 then elapsed = 1000 end
        local rate = v * 1000 / elapsed
        return rate >= p.threshold, rate
    end,
    -- called for an alert only (after test, in the same atomic call): its figures
    figures = function(rk, st, p, rate)
        local n = st.T.measure.value(rk)
        return { n = n, seconds = n / rate, rate = rate }
    end,
    explain = function(p, f)
        return string.format('%s in %.4gs = %.4g/s >= %.4g/s (at least %d events)',
            cogs.num2s(f.n), f.seconds, f.rate, p.threshold, p.min_count)
    end,
})
