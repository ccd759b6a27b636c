-- checker: threshold
-- types: int
-- params: threshold:int
-- alert: value = the counter when it first reached `threshold` (value >= threshold);
--   figures {n = the counter}; says e.g. "52 >= 50"
-- about: the classic count trigger (failed logins, DNS queries per client, ...).
cogs.register_checker('threshold', {
    test = function(rk, hint, st, p)
        local v = hint or st.T.measure.value(rk) -- an int update's hint is its new value
        return v >= p.threshold, v
    end,
    explain = function(p, f)
        return cogs.num2s(f.n) .. ' >= ' .. cogs.num2s(p.threshold)
    end,
})
