-- checker: threshold
-- types: int
-- params: threshold:int
-- alert: value = the counter when it first reached `threshold` (value >= threshold)
-- about: the classic count trigger (failed logins, DNS queries per client, ...).
cogs.register_checker('threshold', {
    test = function(rk, hint, st, p)
        local v = hint or st.T.measure.value(rk) -- an int update's hint is its new value
        return v >= p.threshold, v
    end,
})
