-- Replica mode: versions, the replica reference table, and who holds what.
--
-- Keys, sharing the state's hash tag:  <rk>:v  version of the state
--                                       <rk>:r  set of proxy ids holding a replica
-- and per node and proxy: HELD_PREFIX{tag}:<proxy id>  the <rk>s it is registered
-- at (tag: the node's alert stream tag), so the entries of a proxy that closed or
-- died can be dropped without scanning (cogs_release).
-- A version only grows: max(previous + 1, now in microseconds), so even a state whose
-- keys expired and came back never repeats an older version a proxy may still cache.
-- An update bumps the version, takes the holder set (the table entry is cleared) and
-- queues one discard per holder; cogs_batch publishes them when the batch is done,
-- one message per holder:  PUBLISH DISCARD_PREFIX<proxy id>  [sidx, key, "version", ...]
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

    local function held(stream, pid)
        return HELD_PREFIX .. stream:sub(#ALERTS_STREAM_PREFIX + 1) .. ':' .. pid
    end

    -- Before an op writes anything: while the key's slot is being migrated, the node
    -- refuses any command on a key of the slot it does not hold (ASK). An update whose
    -- <rk>:v or <rk>:r does not exist would write <rk>, then fail in bump(): reported
    -- MOVED, re-sent by its proxy, applied twice. Touching them first makes such an op
    -- fail before it writes (elsewhere EXISTS changes nothing).
    function replica.guard(rk)
        R('EXISTS', rk .. ':v', rk .. ':r')
    end

    function replica.version(rk)
        return tonumber(R('GET', rk .. ':v') or 0) or 0
    end

    -- A holder index is bookkeeping, no state: one of another type was written outside
    -- cogs (anyone with the NF's proxy credentials can), and must not fail the ops of
    -- every key its proxy holds. SREM from it is best effort; SADD makes it anew.
    local function unheld(index, rk)
        pcall(R, 'SREM', index, rk)
    end

    -- Record the caller as a holder of <rk> (it will cache what it reads).
    function replica.hold(rk, ctx)
        if R('SADD', rk .. ':r', ctx.pid) == 1 then
            local index = held(ctx.stream, ctx.pid)
            if not pcall(R, 'SADD', index, rk) then
                R('DEL', index)
                R('SADD', index, rk)
            end
        end
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
            for i = 1, #holders do
                unheld(held(ctx.stream, holders[i]), rk)
            end
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

    -- A retrieve that leaves a replica at the caller: record the holder, return the version.
    function replica.register(st, rk, ctx)
        replica.hold(rk, ctx)
        if st.ttl then
            R('PEXPIRE', rk .. ':r', st.ttl)
            R('PEXPIRE', rk .. ':v', st.ttl)
        end
        return replica.version(rk)
    end

    -- How long the caller may keep the replica it just registered for (ms; -1: until
    -- a discard): the state's own time left, but never past its holder record, which an
    -- update after that would not find (an absent key has no time left of its own).
    function replica.lifetime(st, rk)
        local left = R('PTTL', rk)
        if st.ttl then
            local held = R('PTTL', rk .. ':r')
            if left < 0 or (held >= 0 and held < left) then left = held end
        end
        return left
    end

    -- The caller no longer holds a replica of <rk> (mode RELEASE): 1 if it did.
    function replica.release(rk, ctx)
        if R('SREM', rk .. ':r', ctx.pid) == 1 then
            unheld(held(ctx.stream, ctx.pid), rk)
            return 1
        end
        return 0
    end

    -- Every holder entry of `pid` on this node (it closed, or its heartbeat died):
    -- the number dropped. A key whose slot moved away meanwhile is skipped (its
    -- entry goes with that key's next update).
    function replica.release_all(stream, pid, run)
        local index = held(stream, pid)
        local n = 0
        local ok, rks = pcall(R, 'SMEMBERS', index)
        for _, rk in ipairs(ok and rks or {}) do -- (not a set: written outside cogs, dropped below)
            local ok, removed = pcall(R, 'SREM', rk .. ':r', pid)
            if ok then n = n + removed end
        end
        R('DEL', index)
        -- every process with this id (an old one still running after a restart with the
        -- same id, too) drops its whole cache now: an update finding no holder entry
        -- sends it no discard. Published on this node before this call returns, so it
        -- reaches each subscriber here ahead of any PONG vouching for later reads.
        -- The releasing process (its run token) ignores it: at its start it held nothing yet.
        R('PUBLISH', DISCARD_PREFIX .. pid, run and (DROP_ALL .. ':' .. run) or DROP_ALL)
        return n
    end

    function replica.publish(ctx, encode)
        for holder, l in pairs(ctx.discards) do
            R('PUBLISH', DISCARD_PREFIX .. holder, encode(l))
        end
    end
end
