-- Exactly-once delivery: a proxy's batches to one node form an ordered channel.
--
-- Each proxy start draws a random session secret (32 hex chars, never stored in
-- clear: the record's name carries its SHA-1, so neither SCAN nor key-tracking
-- reveals it). Per (session, node tag) the proxy numbers its batches 1, 2, 3, ...
-- without gaps and sends with each the highest number whose reply it has ("ack":
-- every batch up to it is settled). The node keeps one record per channel,
--   cogs:once:{tag}:<sha1(session)>  hash  last = highest number applied,
--                                          lo = lowest reply still kept,
--                                          r:<n> = reply of batch n (until acked)
-- written by the same atomic call as the batch's effects, so a replica promoted
-- after a crash has both or neither. A batch numbered
--   last + 1        is applied (the record says so before any op runs);
--   <= last         is a re-send: its stored reply comes back, nothing is applied;
--   > last + 1      is refused (GAP <last + 1>): an older batch is missing, which
--                   the proxy re-sends first. "Not seen" is never taken for "applied".
-- ack > last means batches the proxy saw acknowledged are gone (a failover lost
-- them before they reached a replica): refused with LOST <last> until the proxy,
-- having reported the loss, re-sends with the resync flag (last := ack).
-- A record lives ONCE_TTL_MS after its last batch; a live proxy sends an empty
-- batch on a channel idle for a quarter of that, so only dead sessions expire.
do
    local R, encode, decode, find, sha1
    cogs.on_bind(function()
        R, encode, decode, find = redis.call, cjson.encode, cjson.decode, string.find
        -- fakeredis (unit tests) has no sha1hex: the record is named by the session itself there
        sha1 = redis.sha1hex or function(s) return s end
    end)
    local once = {}
    cogs.once = once
    local TRIM = 1000 -- replies dropped per call at most (an ack far ahead: the rest next time)

    function once.record_key(stream, session)
        return ONCE_PREFIX .. stream:sub(#ALERTS_STREAM_PREFIX + 1) .. ':' .. sha1(session)
    end

    -- Returns nil when batch `seq` is to be applied now (the record already says so),
    -- else the reply to return instead: a stored reply, or an error reply.
    local function check(rec, seq, ack, resync)
        local got = R('HMGET', rec, 'last', 'lo')
        local last, lo = tonumber(got[1]) or 0, tonumber(got[2])
        if ack > last then
            if not resync then
                return redis.error_reply('LOST ' .. last .. ' batches up to ' .. ack
                    .. ' were acknowledged, this node has ' .. last)
            end
            last = ack
        end
        if seq <= last then
            -- a write: WAIT after a re-send then covers the original batch (durable mode)
            R('PEXPIRE', rec, ONCE_TTL_MS)
            local stored = R('HGET', rec, 'r:' .. seq)
            if stored then
                return decode(stored)
            end
            return redis.error_reply('DUP_UNKNOWN batch ' .. seq .. ' was applied but its reply is gone (acked: '
                .. ack .. ')')
        end
        if seq > last + 1 then
            return redis.error_reply('GAP ' .. (last + 1) .. ' batch ' .. seq .. ' came before ' .. (last + 1))
        end
        if ack > 0 and lo and lo <= ack then -- replies the proxy has: not needed any more
            local upto = math.min(ack, lo + TRIM - 1)
            for n = lo, upto do R('HDEL', rec, 'r:' .. n) end
            lo = upto + 1
        end
        R('HSET', rec, 'last', seq, 'lo', lo or seq)
        return nil
    end

    -- The channel checks of a numbered batch. Any Redis failure here (cluster down,
    -- loading, out of memory) comes before the first op: nothing is applied.
    function once.begin(stream, session, seq, ack, flags)
        local rec = once.record_key(stream, session)
        local ok, reply = pcall(check, rec, tonumber(seq), tonumber(ack), flags == 'R')
        if not ok then
            local _, msg = cogs.classify(reply)
            return rec, redis.error_reply('UNAVAILABLE ' .. msg)
        end
        return rec, reply
    end

    function once.record(rec, seq, reply)
        R('HSET', rec, 'r:' .. seq, encode(reply))
        R('PEXPIRE', rec, ONCE_TTL_MS)
    end

    function once.valid(session, seq, ack, flags)
        return #session == 32 and find(session, '^%x+$') and find(seq, '^%d+$') and #seq <= 15
            and find(ack, '^%d+$') and #ack <= 15 and tonumber(ack) < tonumber(seq)
            and (flags == nil or flags == 'R')
    end
end
