-- checker: cardinality
-- types: set map hll
-- params: threshold:int
-- alert: value = the number of distinct members (fields) when it first reached `threshold`
-- about: distinct-count trigger: ports probed by a source (port scan), hosts probed
--   (address scan), client IPs seen with one session cookie (sidejacking),
--   subdomains queried under one domain (DNS tunnel).
cogs.register_checker('cardinality', {
    test = function(rk, hint, st, p)
        local c = st.T.measure.card(rk, hint)
        return c >= p.threshold, c
    end,
})
