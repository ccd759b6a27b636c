-- type: portmap
-- update: map release
-- retrieve: out in size
-- whole: size
-- params: external:string port_min:int=1024 port_max:int=65535 block:int=1024
-- replicas: entries
-- about: a NAT's port mappings, one block of external ports per key. A key is a block
--   "<external ip>|<first port>" of the pool the params declare (the IPs in `external`,
--   space-separated, ports port_min..port_max in blocks of `block`); the proxy hashes
--   an internal flow to a block, so allocating a port and writing both directions is
--   one atomic call on one node, and blocks spread over the cluster.
-- args: map/out/release take the internal flow "<proto>|<ip>|<port>"; in takes an
--   external port of the block. map returns the flow's port, allocating a free one
--   (EXHAUSTED when the block has none); out/in look a mapping up; release returns
--   the port it freed (0: the flow had none). Each returns
--   {value or false, version (0 in singleton mode: nothing is cached), idle ms left}
--   and refreshes the mapping's idle deadline
--   (the state's ttl); mappings idle longer are reclaimed. In replica mode a caller
--   of map/out/in is recorded as a holder of the block and gets discards naming
--   "o|<flow>" and "i|<ip>|<port>" when a mapping it may cache is released or reclaimed.
local R, str, fmt, match, tonum
cogs.on_bind(function()
    R, str, fmt, match, tonum = redis.call, cogs.str, string.format, string.match, tonumber
end)

local REAP = 64 -- expired mappings reclaimed per call (the rest: on later calls)
local MAX_FLOW = 256

-- One clock reading per batch (the batch is one atomic step anyway).
local function now_ms(ctx)
    local now = ctx.portmap_now
    if not now then
        local t = R('TIME')
        now = tonum(t[1]) * 1000 + math.floor(tonum(t[2]) / 1000)
        ctx.portmap_now = now
    end
    return now
end

-- The block a key names, checked against the pool: ip, first and last port.
local function block(st, key)
    local pool = st.pool
    if not pool then
        local p = st.params
        pool = { ips = {}, min = p.port_min, max = p.port_max, size = p.block }
        for ip in string.gmatch(p.external, '%S+') do pool.ips[ip] = true end
        st.pool = pool
    end
    local ip, lo = match(key, '^([^|]+)|(%d+)$')
    lo = tonum(lo)
    if not ip or not pool.ips[ip] or lo < pool.min or lo > pool.max or (lo - pool.min) % pool.size ~= 0 then
        cogs.fail('BAD_KEY', 'not a block of this pool: want "<external ip>|<first port>" with ip in {'
            .. st.params.external .. '} and first port port_min + k*block')
    end
    local hi = lo + pool.size - 1
    if hi > pool.max then hi = pool.max end
    return ip, lo, hi
end

local function flow_arg(arg, st)
    local f = str(arg, st, 'flow')
    if f == '' or #f > MAX_FLOW or not match(f, '^%d+|[^|]+|%d+$') then
        cogs.fail('BAD_DELTA', 'flow must be "<proto>|<ip>|<port>" of at most ' .. MAX_FLOW .. ' bytes, got ' .. cogs.show(arg))
    end
    return f
end

local function holders(st, rk, ctx)
    if st.replica and ctx.pid then cogs.replica.hold(rk, ctx) end
end

-- Drop one mapping (both directions), free its port, tell the holders.
local function drop(st, sidx, rk, ip, flow, port, ctx)
    R('HDEL', rk, flow)
    R('HDEL', rk .. ':in', port)
    R('ZREM', rk .. ':idle', flow)
    R('RPUSH', rk .. ':free', port)
    local v = R('INCR', rk .. ':v')
    if st.replica then
        local who = R('SMEMBERS', rk .. ':r')
        cogs.replica.queue(ctx, who, sidx, 'o|' .. flow, v)
        cogs.replica.queue(ctx, who, sidx, 'i|' .. ip .. '|' .. port, v)
    end
end

-- Reclaim idle mappings of a block, once per block per batch.
local function reap(st, sidx, rk, ip, now, ctx)
    if not st.ttl then return end
    local done = ctx.portmap_reaped
    if not done then
        done = {}
        ctx.portmap_reaped = done
    elseif done[rk] then
        return
    end
    done[rk] = true
    local old = R('ZRANGEBYSCORE', rk .. ':idle', '-inf', now, 'LIMIT', 0, REAP)
    for i = 1, #old do
        drop(st, sidx, rk, ip, old[i], R('HGET', rk, old[i]), ctx)
    end
end

local function touch(st, rk, flow, now)
    if st.ttl then
        R('ZADD', rk .. ':idle', now + st.ttl, flow)
        return st.ttl
    end
    return -1
end

-- The block's version: what a cached entry is checked against. A singleton-mode
-- state caches nothing, so it saves the read.
local function version(st, rk)
    if not st.replica then return 0 end
    return tonum(R('GET', rk .. ':v') or 0)
end

local function allocate(rk, lo, hi)
    local port = R('LPOP', rk .. ':free')
    if port then return port end
    local used = R('GET', rk .. ':next')
    local n = used and tonum(used) or 0
    if lo + n > hi then return nil end
    R('SET', rk .. ':next', n + 1)
    return fmt('%d', lo + n)
end

local function map(st, sidx, rk, ip, lo, hi, flow, now, ctx)
    local port = R('HGET', rk, flow)
    if not port then
        port = allocate(rk, lo, hi)
        if not port then
            cogs.fail('EXHAUSTED', 'no free port in block ' .. ip .. ':' .. lo .. '-' .. hi
                .. ' (' .. (hi - lo + 1) .. ' mappings live); packets of new flows hashed here are dropped')
        end
        R('HSET', rk, flow, port)
        R('HSET', rk .. ':in', port, flow)
        R('INCR', rk .. ':v')
    end
    holders(st, rk, ctx)
    local left = touch(st, rk, flow, now)
    return { tonum(port), version(st, rk), left }
end

local ops = {
    map = function(st, sidx, rk, ip, lo, hi, arg, now, ctx)
        return map(st, sidx, rk, ip, lo, hi, flow_arg(arg, st), now, ctx)
    end,
    release = function(st, sidx, rk, ip, _, _, arg, _, ctx)
        local flow = flow_arg(arg, st)
        local port = R('HGET', rk, flow)
        if not port then return 0 end
        drop(st, sidx, rk, ip, flow, port, ctx)
        return tonum(port) -- the caller drops its own copies of both directions at once
    end,
    out = function(st, _, rk, _, _, _, arg, now, ctx)
        local flow = flow_arg(arg, st)
        local port = R('HGET', rk, flow)
        if not port then return { false, version(st, rk), 0 } end
        holders(st, rk, ctx)
        return { tonum(port), version(st, rk), touch(st, rk, flow, now) }
    end,
    ['in'] = function(st, _, rk, _, lo, hi, arg, now, ctx)
        local port = cogs.int(arg, 'port')
        if port < lo or port > hi then
            cogs.fail('BAD_DELTA', 'port ' .. port .. ' is not in block ' .. lo .. '-' .. hi)
        end
        local field = fmt('%d', port)
        local n = R('HSTRLEN', rk .. ':in', field)
        if n > MAX_FLOW then -- no flow this type writes is longer: not read for a caller
            cogs.stored_over('of port ' .. field .. ' is', n .. ' bytes', 'flow limit ' .. MAX_FLOW)
        end
        local flow = R('HGET', rk .. ':in', field)
        if not flow then return { false, version(st, rk), 0 } end
        holders(st, rk, ctx)
        return { flow, version(st, rk), touch(st, rk, flow, now) }
    end,
    size = function(_, _, rk, _, lo, hi)
        local used = tonum(R('GET', rk .. ':next') or 0)
        return { R('HLEN', rk), (hi - lo + 1) - used + R('LLEN', rk .. ':free') }
    end,
}

local MODES = {
    map = { [MODE.UPDATE] = true, [MODE.UPDATE_GET] = true },
    release = { [MODE.UPDATE] = true, [MODE.UPDATE_GET] = true },
    out = { [MODE.RETRIEVE] = true, [MODE.RETRIEVE_REPLICA] = true },
    ['in'] = { [MODE.RETRIEVE] = true, [MODE.RETRIEVE_REPLICA] = true },
    size = { [MODE.RETRIEVE] = true },
}

cogs.register_type('portmap', {
    -- the whole type runs here: its ops touch several keys of the block's hash tag
    apply = function(mode, st, sidx, op, key, rk, arg, ctx)
        local fn = ops[op]
        if not fn or not MODES[op][mode] then
            cogs.fail('UNKNOWN_OP', 'type portmap has no op ' .. cogs.show(op) .. ' in mode ' .. cogs.show(mode)
                .. ' (update: map release; retrieve: out in size)')
        end
        local ip, lo, hi = block(st, key)
        local now = now_ms(ctx)
        if op ~= 'size' then reap(st, sidx, rk, ip, now, ctx) end
        return fn(st, sidx, rk, ip, lo, hi, arg, now, ctx)
    end,
    update = { map = true, release = true },
    retrieve = { out = true, ['in'] = true, size = true },
    check = {},
    measure = {},
    whole = 'size',
})
