-- Exactly-once batches: a proxy numbers its batches (one counter per proxy) and
-- sends each to a node with the alert-stream tag of that node; the node records, per
-- (proxy, tag), the highest number applied and the replies of recent batches that
-- had results or errors. A batch re-sent after a lost connection or a failover comes
-- back as a duplicate: its stored reply, or {-1, {}, {}} ("applied before, nothing to
-- report"), and nothing is applied twice.
-- Per link a proxy sends in increasing order and re-sends in order before anything
-- new, so "number <= highest applied" means applied. The record is written by the
-- same atomic call as the effects: a replica promoted after a crash has both or
-- neither, and a batch it never saw is applied when re-sent.
--   cogs:seq:{tag}:<proxy id>   hash: last = highest number, r:<n> = stored reply
--   cogs:seql:{tag}:<proxy id>  list of the numbers whose replies are stored
do
    local R, encode, decode
    cogs.on_bind(function() R, encode, decode = redis.call, cjson.encode, cjson.decode end)
    local once = {}
    cogs.once = once
    local KEEP = 64 -- replies kept per (proxy, tag): far more than batches in flight (2 per node)
    local TTL = 3600000 -- a proxy silent for an hour starts afresh

    local function keys(stream, pid)
        local tag = stream:sub(13) -- "{tag}" of cogs:alerts:{tag}
        return 'cogs:seq:' .. tag .. ':' .. pid, 'cogs:seql:' .. tag .. ':' .. pid
    end

    -- The reply of an already applied batch, or nil when `seq` is new.
    function once.seen(stream, pid, seq)
        local k = keys(stream, pid)
        local last = tonumber(R('HGET', k, 'last')) or 0
        if tonumber(seq) > last then
            return nil
        end
        local stored = R('HGET', k, 'r:' .. seq)
        if stored then
            return decode(stored)
        end
        return { -1, {}, {} }
    end

    function once.record(stream, pid, seq, reply)
        local k, l = keys(stream, pid)
        R('HSET', k, 'last', seq)
        if #reply[2] > 0 or #reply[3] > 0 then
            R('HSET', k, 'r:' .. seq, encode(reply))
            if R('LPUSH', l, seq) > KEEP then
                R('HDEL', k, 'r:' .. R('RPOP', l))
            end
            R('PEXPIRE', l, TTL)
        end
        R('PEXPIRE', k, TTL)
    end
end
