-- Replica mode of direct-retrieval states: versions and the replica reference table.
--
-- Keys, sharing the state's hash tag:  <rk>:v  version of the state
--                                       <rk>:r  set of proxy ids holding a replica
-- A version only grows: max(previous + 1, now in microseconds), so even a state whose
-- keys expired and came back never repeats an older version a proxy may still cache.
-- An update bumps the version, takes the holder set (the table entry is cleared) and
-- queues one discard per holder; cogs_batch publishes them when the batch is done,
-- one message per holder:  PUBLISH cogs:discard:<proxy id>  [sidx, key, "version", ...]
-- Classic PUBLISH reaches subscribers on every node of a cluster, so a proxy listens
-- on any one node and still hears discards for keys of every node, across resharding.
-- A proxy drops a cached value older than the version a discard carries.
do
    local R, fmt
    cogs.on_bind(function() R, fmt = redis.call, string.format end)
    local replica = {}
    cogs.replica = replica

    local function now_us(ctx)
        if not ctx.now then
            local t = R('TIME')
            ctx.now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        end
        return ctx.now
    end

    function replica.version(rk)
        return tonumber(R('GET', rk .. ':v') or 0) or 0
    end

    -- After a change: new version; discards for every holder queued in ctx.discards.
    function replica.bump(st, sidx, key, rk, ctx)
        local v = replica.version(rk) + 1
        local now = now_us(ctx)
        if now > v then v = now end
        if st.ttl then
            R('SET', rk .. ':v', fmt('%d', v), 'PX', st.ttl)
        else
            R('SET', rk .. ':v', fmt('%d', v))
        end
        local rt = rk .. ':r'
        local holders = R('SMEMBERS', rt)
        if #holders > 0 then
            R('DEL', rt)
            replica.queue(ctx, holders, sidx, key, v)
        end
        return v
    end

    -- Queue a discard of (sidx, key) at version v for each holder (published by
    -- cogs_batch once the batch is done).
    function replica.queue(ctx, holders, sidx, key, v)
        local out = ctx.discards
        for i = 1, #holders do
            local l = out[holders[i]]
            if not l then
                l = {}
                out[holders[i]] = l
            end
            l[#l + 1] = sidx
            l[#l + 1] = key
            l[#l + 1] = fmt('%d', v) -- cjson would print a 16-digit number with 14
        end
    end

    -- A retrieve that leaves a replica at `pid`: record the holder, return the version.
    function replica.register(st, rk, pid)
        local rt = rk .. ':r'
        R('SADD', rt, pid)
        if st.ttl then
            R('PEXPIRE', rt, st.ttl)
            R('PEXPIRE', rk .. ':v', st.ttl)
        end
        return replica.version(rk)
    end

    function replica.publish(ctx, encode)
        for holder, l in pairs(ctx.discards) do
            R('PUBLISH', 'cogs:discard:' .. holder, encode(l))
        end
    end
end
