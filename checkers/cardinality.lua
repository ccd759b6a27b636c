-- checker: cardinality
-- types: set map hll
-- params: threshold:int
-- alert: value = the number of distinct members (fields) when it first reached `threshold`;
--   figures {n = that number}; says e.g. "15 distinct members >= 15"
-- about: distinct-count trigger: ports probed by a source (port scan), hosts probed
--   (address scan), client IPs seen with one session cookie (sidejacking),
--   subdomains queried under one domain (DNS tunnel).
local NOUN = { set = 'distinct members', map = 'distinct fields', hll = 'distinct values (estimated)' }

cogs.register_checker('cardinality', {
    test = function(rk, hint, st, p)
        local c = st.T.measure.card(rk, hint)
        return c >= p.threshold, c
    end,
    -- called for an alert only: what crossed the threshold, in one line
    explain = function(p, f, st)
        return string.format('%d %s >= %d', f.n, NOUN[st.T.name] or 'distinct', p.threshold)
    end,
})
