-- cogs API: the functions proxies call. Paper operations: Update, Retrieve, Check,
-- applied many at a time by one FCALL per cluster node. Constants in capitals (MODE,
-- MAX_KEY, the key prefixes) come from cogs/protocol.py, generated into the header.
--
-- FCALL cogs_batch 0 <token> <alert_stream> <ops_json> [<proxy_id> [<session> <seq> <ack> [R]]]
--   token        "<LIB_VERSION>:<CATALOG_DIGEST>" the caller was built for; a mismatch
--                rejects the whole batch (OUTDATED) before anything is touched.
--   alert_stream a key "cogs:alerts:{tag}" whose slot this node serves (the caller
--                picks it from the slot map), where alerts raised here are kept; its
--                tag names the caller's ordered channel to this node.
--   ops_json     flat JSON array of runs of ops sharing mode, state and op:
--                  mode, state index (1-based, catalog order), op name, n,
--                  then n pairs: key, argument (null when none)
--                ops are numbered 0.. in frame order for errors and results.
--                modes (MODE): UPDATE (no reply; trigger path), UPDATE_GET (the new
--                state), RETRIEVE, CHECK, RETRIEVE_REPLICA (leaves a replica at
--                proxy_id), LOCATE/CLAIM/OWNER/FORGET (indirect.lua), RELEASE (the
--                caller no longer holds a replica of the key).
--   proxy_id     the caller's id: replica and state reference tables name it.
--   session, seq, ack [R]: a numbered batch of the session's channel to this node,
--                applied exactly once and in order (once.lua); without them the
--                batch must be one that may be applied twice (reads, locator ops).
--   Keys are undeclared (0 numkeys): with allow-cross-slot-keys a function may touch
--   keys of many slots as long as this node serves them. A key of another node fails
--   that op alone with MOVED; the caller re-routes it.
-- Returns {applied, errors, results}: applied = number of ops that took effect;
--   errors = flat {op index (0-based), "CODE state=.. key=.. op=..: message", ...};
--   results = flat {op index, value, ...} for every mode but UPDATE (nil values come back as nil).
--   On a replica-mode state, UPDATE_GET returns {value, version} and RETRIEVE_REPLICA
--   returns {value, version, pttl} (how long the replica may live: never past the
--   caller's holder record, replica.lifetime). Updates of replica-mode states publish discards (replica.lua).
-- A whole-call error reply changes nothing: OUTDATED, BAD_FRAME (a malformed frame;
--   numbered: recorded as the batch's outcome), UNAVAILABLE (cluster down, loading:
--   retry), GAP / LOST / DUP_UNKNOWN (the channel's order, once.lua), LIMIT (the NF is
--   over its ops rate on this node, LIMIT_OPS_PER_S: a token bucket per node in
--   <prefix>limit:{tag}; a batch is admitted while the bucket is positive and may take
--   it into debt; numbered: recorded as the batch's outcome, so it never applies later).
--
-- FCALL cogs_release 0 <alert_stream> <proxy_id> [<run>]  -> holder entries dropped on this
--   node (a proxy that closed or died no longer holds replicas: replica.lua's index); every
--   process with that id is told to drop its cache (DROP_ALL), but the releasing run itself.
-- FCALL cogs_beat 1 <heartbeat key> <run> take|renew|drop [<entry> <ttl ms>]  -> a proxy's
--   heartbeat, written or deleted only by the process whose run token it carries (registry.lua).
-- FCALL_RO cogs_info 0  ->  JSON {version, catalog_digest, catalog_json, types, checkers, nf, limits}
do
    local R, decode, encode, null, byte, sub, gsub, find, pcall_, classify, replica
    local STATES, TOKEN
    local UPDATE, UPDATE_GET, RETRIEVE, CHECK, RETRIEVE_REPLICA, RELEASE =
        MODE.UPDATE, MODE.UPDATE_GET, MODE.RETRIEVE, MODE.CHECK, MODE.RETRIEVE_REPLICA, MODE.RELEASE
    -- a leading '}' would make the hash tag empty and split the entry's keys
    local KEY_RULE = 'key must be a non-empty escaped string of at most ' .. MAX_KEY .. ' bytes, not starting with }'

    local function bind_states()
        local cat = decode(CATALOG_JSON)
        STATES = {}
        for i, s in ipairs(cat.states) do
            local T = cogs.types[s.type]
            local st = {
                name = s.name,
                class = s.class,
                T = T,
                prefix = PREFIX .. s.name .. ':{',
                window = s.window_ms ~= null and s.window_ms or nil,
                -- as redis.call's argument: a number would be formatted (%.14g) per call
                window_arg = s.window_ms ~= null and cogs.num2s(s.window_ms) or nil,
                ttl = s.ttl_ms ~= null and s.ttl_ms or nil,
                max_bytes = s.max_bytes,
                max_member = s.max_member_bytes,
                -- a set or map without its own bound has DEFAULT_MAX_ITEMS (reads are bounded too)
                max_items = s.max_items ~= null and s.max_items or DEFAULT_MAX_ITEMS,
                replica = s.class == 'direct' and s.mode == 'replica',
                -- a type with its own apply (multi-key ops) takes no fast path
                update = T and not T.apply and T.update,
                params = s.params,
            }
            if s.class == 'indirect' then
                st.indirect = true
                st.replica = s.mode == 'replica'
            elseif T == nil then
                st.broken = 'type ' .. s.type .. ' is not in this library'
            end
            if s.checker ~= null then
                local c = cogs.checkers[s.checker]
                if c == nil then
                    st.broken = 'checker ' .. s.checker .. ' is not in this library'
                else
                    st.checker = c
                    st.test = c.test
                    st.checker_name = s.checker
                    st.params = s.params
                    st.params_json = encode(s.params)
                end
            end
            st.post = (st.window or st.ttl or st.checker or st.replica) and true or false
            STATES[i] = st
        end
        TOKEN = LIB_VERSION .. ':' .. CATALOG_DIGEST
    end

    local function bind()
        if STATES then return end
        R, decode, encode, null = redis.call, cjson.decode, cjson.encode, cjson.null
        byte, sub, gsub, find, pcall_ = string.byte, string.sub, string.gsub, string.find, pcall
        cogs.bind()
        classify, replica = cogs.classify, cogs.replica
        bind_states()
    end

    local function nf_key(key)
        -- keys.py escapes '%' and '}' so a key never ends the hash tag early
        return (gsub(gsub(key, '%%7D', '}'), '%%25', '%%'))
    end

    local function now_ms()
        local t = R('TIME')
        return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end

    -- 300000 -> '5m', 3200 -> '3.2s': how long a window is, for an alert's message
    local function span(ms)
        if ms < 60000 then return string.format('%.3gs', ms / 1000) end
        local s = math.floor(ms / 1000 + 0.5)
        local h, m, r = math.floor(s / 3600), math.floor(s % 3600 / 60), s % 60
        return (h > 0 and h .. 'h' or '') .. (m > 0 and m .. 'm' or '') .. (r > 0 and r .. 's' or '')
    end

    -- One alert per key per window: a marker key next to the state, expiring with it.
    -- The alert explains itself: the checker and its params, the window (its length and
    -- when it opened) and the figures that crossed the threshold, with `msg` saying it
    -- in one line (the checker's explain()); n is the count behind it (Zeek's notice n).
    local function raise(st, key, rk, value, stream)
        local mk = rk .. ':alerted'
        local set
        local left = st.window and R('PTTL', rk) or -1
        if left > 0 then
            set = R('SET', mk, '1', 'NX', 'PX', left)
        else
            set = R('SET', mk, '1', 'NX')
        end
        if not set then return end
        local value_s = cogs.num2s(value)
        local ms = now_ms()
        local k = nf_key(key)
        local c = st.checker
        -- figures beyond the value are read only now, for the one alert of the window:
        -- the checker's test on every update stays as cheap as it was
        local figures = c.figures and c.figures(rk, st, st.params, value) or { n = value }
        local why = c.explain and c.explain(st.params, figures, st) or (value_s .. ' (' .. st.params_json .. ')')
        local msg = st.name .. '[' .. k .. ']: ' .. why
        local opened = 0
        if left > 0 then
            opened = ms - (st.window - left)
            msg = msg .. ' in ' .. span(ms - opened) .. ' of a ' .. span(st.window) .. ' window'
        end
        local n = cogs.num2s(tonumber(figures.n) or value)
        local figures_json = encode(figures)
        local id = R('XADD', stream, 'MAXLEN', '~', ALERTS_MAXLEN, '*',
            'state', st.name, 'key', k, 'value', value_s, 'checker', st.checker_name,
            'params', st.params_json, 'time', ms, 'window', st.window or 0,
            'opened', opened, 'figures', figures_json, 'n', n, 'msg', msg)
        R('PUBLISH', ALERTS_CHANNEL, encode({
            id = id, stream = stream, state = st.name, key = k, value = value_s,
            checker = st.checker_name, params = st.params, time = ms, window = st.window or 0,
            opened = opened, figures = figures, n = n, msg = msg,
        }))
    end

    -- Window / idle ttl, replica discards, checker: what follows a change.
    -- Returns the new version of a replica-mode state.
    local function after_update(st, sidx, key, rk, hint, created, ctx)
        if st.window then
            -- the window opens when the state is created; `created == false` (the op
            -- knows the key existed) saves the call
            if created ~= false then
                R('PEXPIRE', rk, st.window_arg, 'NX')
            end
        elseif st.ttl then
            R('PEXPIRE', rk, st.ttl)
        end
        local version
        if st.replica then
            version = replica.bump(st, sidx, key, rk, ctx)
        end
        if st.test then
            local fire, value = st.test(rk, hint, st, st.params)
            if fire then
                -- the update stands even if recording its alert fails
                local ok, e = pcall_(raise, st, key, rk, value, ctx.stream)
                if not ok then
                    local _, msg = classify(e)
                    cogs.fail('ALERT', 'applied, but the alert was not recorded: ' .. msg)
                end
            end
        end
        return version
    end

    -- The trigger hot path: a whole run of updates of one state and op under ONE
    -- protected call (a pcall per op costs as much as the update). `at.j` tracks the
    -- op being applied, so when one fails the caller records it and resumes after it.
    local function trigger_run(fn, st, sidx, ops, j, last, ctx, at)
        local prefix, post, guard = st.prefix, st.post, st.replica
        while j <= last do
            at.j = j
            local key = ops[j]
            if type(key) ~= 'string' or key == '' or #key > MAX_KEY or byte(key) == 125 then
                cogs.fail('BAD_KEY', KEY_RULE)
            end
            local rk = prefix .. key .. '}'
            if guard then replica.guard(rk) end
            local changed, hint, created = fn(rk, ops[j + 1], st)
            if changed and post then
                after_update(st, sidx, key, rk, hint, created, ctx)
            end
            j = j + 2
        end
        at.j = j
    end

    local function update(mode, st, sidx, op, key, rk, arg, ctx)
        local T = st.T
        local fn = T.update[op]
        local changed, hint, created
        if st.replica then replica.guard(rk) end
        if fn then
            changed, hint, created = fn(rk, arg, st)
        elseif op == 'clear' then
            changed = R('DEL', rk, rk .. ':alerted') > 0
            created = false
        else
            cogs.fail('UNKNOWN_OP', 'type ' .. T.name .. ' has no update op ' .. cogs.show(op))
        end
        local version
        if changed and st.post then
            version = after_update(st, sidx, key, rk, hint, created, ctx)
        end
        if mode == UPDATE then
            return nil
        end
        local value = T.retrieve[T.whole](rk, null, st)
        if st.replica then
            return { value == nil and false or value, version or replica.version(rk) }
        end
        return value
    end

    local function apply(mode, st, sidx, op, key, rk, arg, ctx)
        if mode == RELEASE then -- any state a proxy can hold replicas of (direct, indirect, portmap)
            return replica.release(rk, ctx)
        end
        if st.indirect then
            return cogs.indirect.apply(mode, st, sidx, key, rk, arg, ctx)
        end
        local T = st.T
        if T.apply then
            return T.apply(mode, st, sidx, op, key, rk, arg, ctx)
        end
        if mode == UPDATE or mode == UPDATE_GET then
            return update(mode, st, sidx, op, key, rk, arg, ctx)
        elseif mode == RETRIEVE or mode == RETRIEVE_REPLICA then
            local fn = T.retrieve[op]
            if not fn then
                if op == 'exists' and mode == RETRIEVE then
                    return R('EXISTS', rk)
                elseif op == 'ttl' and mode == RETRIEVE then
                    return R('PTTL', rk)
                end
                cogs.fail('UNKNOWN_OP', 'type ' .. T.name .. ' has no retrieve op ' .. cogs.show(op))
            end
            if st.ttl then R('PEXPIRE', rk, st.ttl) end
            local value = fn(rk, arg, st)
            if mode == RETRIEVE then
                return value
            end
            if not st.replica then
                cogs.fail('BAD_FRAME', 'a replica retrieve needs a replica-mode direct state')
            elseif not ctx.pid then
                cogs.fail('BAD_FRAME', 'a replica retrieve needs the proxy id argument')
            end
            local version = replica.register(st, rk, ctx)
            return { value == nil and false or value, version, replica.lifetime(st, rk) }
        elseif mode == CHECK then
            if op == 'checker' then
                if not st.checker then
                    cogs.fail('UNKNOWN_OP', 'state has no checker to run')
                end
                local fire = st.checker.test(rk, nil, st, st.params)
                return fire and 1 or 0
            end
            local fn = T.check[op]
            if not fn then
                cogs.fail('UNKNOWN_OP', 'type ' .. T.name .. ' has no check op ' .. cogs.show(op))
            end
            return fn(rk, arg, st) and 1 or 0
        end
        cogs.fail('BAD_FRAME', 'unknown mode ' .. cogs.show(mode))
    end

    local function describe(st, key, op)
        return ' state=' .. (st and st.name or '?') .. ' key=' .. cogs.show(key) .. ' op=' .. cogs.show(op) .. ': '
    end

    local function header(args)
        if args[1] ~= TOKEN then
            return 'OUTDATED the coordinator runs cogs library ' .. TOKEN
                .. ' but the caller expects ' .. cogs.show(args[1])
                .. ': reload the library (' .. LOAD_HINT .. ') or restart the proxy with the stored catalog'
        end
        local stream = args[2]
        if type(stream) ~= 'string' or sub(stream, 1, #ALERTS_STREAM_PREFIX + 1) ~= ALERTS_STREAM_PREFIX .. '{'
            or sub(stream, -1) ~= '}' or #stream > 64 then
            return 'BAD_FRAME alert stream must be a ' .. ALERTS_STREAM_PREFIX .. '{...} key'
        end
        local pid = args[4]
        if pid ~= nil and (#pid > MAX_PROXY_ID or not find(pid, '^[%w_.:-]+$')) then
            return 'BAD_FRAME proxy id must be 1-' .. MAX_PROXY_ID .. ' characters of [A-Za-z0-9_.:-]'
        end
        if args[5] ~= nil and (pid == nil or args[7] == nil or not cogs.once.valid(args[5], args[6], args[7], args[8])) then
            return 'BAD_FRAME a numbered batch needs the proxy id, a session of 32 hex digits, '
                .. 'a batch number > 0 and an ack below it (decimal), and at most the flag R'
        end
        return nil
    end

    -- The frame is a flat array of runs: mode, state index, op, n, then n (key, arg)
    -- pairs. Checked whole before anything is applied, so a malformed frame changes nothing.
    -- Returns the number of ops, or false.
    local function frame_ok(ops, total)
        local i, count = 1, 0
        while i <= total do
            local n = ops[i + 3]
            if type(n) ~= 'number' or n < 0 or n ~= math.floor(n) then
                return false
            end
            count = count + n
            i = i + 4 + 2 * n
        end
        return i == total + 1 and count
    end

    -- This node's own tag: the slot tag (cogs/keys.py slot_tag, SLOT_TAGS: 3 base-64
    -- digits per slot) of its lowest slot, the one its proxies' streams name. The
    -- limits' records live under it whatever stream a batch names, so a caller cannot
    -- take a fresh bucket or count by naming another of the node's slots, and a batch
    -- of a channel an older slot map made counts against the same records. The slot
    -- map is read at most once a second (and again after a record was not local).
    local DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/'
    local DIGIT, own = nil, { at = nil, tag = nil }

    local function slot_tag(s)
        if not DIGIT then
            DIGIT = {}
            for i = 1, 64 do DIGIT[byte(DIGITS, i)] = i - 1 end
        end
        local a, b, c = byte(SLOT_TAGS, 3 * s + 1, 3 * s + 3)
        return '{' .. string.format('%d', DIGIT[a] * 4096 + DIGIT[b] * 64 + DIGIT[c]) .. '}'
    end

    local function node_tag(now)
        if own.at and now - own.at < 1000 then return own.tag end
        local first = 0 -- a Redis without cluster mode serves every slot
        local ok, me = pcall_(R, 'CLUSTER', 'MYID')
        if ok then
            first = nil
            for _, r in ipairs(R('CLUSTER', 'SLOTS')) do
                if r[3][3] == me and (not first or r[1] < first) then first = r[1] end
            end
            if not first then error('this node serves no slot') end
        end
        own.at, own.tag = now, slot_tag(first)
        return own.tag
    end

    local function forget_tag()
        own.at = nil
    end

    -- The NF's ops-rate limit on this node (LIMIT_OPS_PER_S; 0: none): a token bucket
    -- refilled at that rate, holding at most one second of it, under this node's own
    -- tag. Read before the channel record moves, so a node
    -- that cannot serve it now fails the call while nothing has changed; charged once
    -- the batch's size is known.
    -- The bucket is written by this function alone; one that is not a hash, or holds
    -- no finite numbers ("nan" would refuse every batch for good), was written outside
    -- cogs: it starts again full rather than stall or refuse the NF.
    local function finite(x)
        return x and x == x and x > -math.huge and x < math.huge and x
    end

    local function bucket_read(tag, now)
        local key = LIMIT_PREFIX .. tag
        local ok, got = pcall_(R, 'HMGET', key, 't', 'b')
        if not ok then
            if classify(got) ~= 'WRONGTYPE' then error(got) end
            R('DEL', key)
            got = {}
        end
        local t, b = finite(tonumber(got[1])), finite(tonumber(got[2]))
        if not t or not b then
            b = LIMIT_OPS_PER_S
        else
            -- what this function writes has t <= now and b >= -(one second of the rate): a
            -- time in the future or a deeper debt was forged and would refuse the NF for good
            t, b = math.min(t, now), math.max(b, -LIMIT_OPS_PER_S)
            b = math.min(LIMIT_OPS_PER_S, b + (now - t) * LIMIT_OPS_PER_S / 1000)
        end
        return { key = key, now = now, b = b }
    end

    local function bucket_charge(bk, n)
        local ok = bk.b > 0
        R('HSET', bk.key, 't', bk.now, 'b', string.format('%.3f', ok and bk.b - n or bk.b))
        R('PEXPIRE', bk.key, 60000)
        return ok
    end

    -- The NF's usage limits on this node (LIMIT_MAX_KEYS state entries, LIMIT_MAX_BYTES of
    -- everything it stores; 0: none). Redis can count neither per NF: the keeper
    -- (cogs/keeper.py) counts them on every primary (SCAN, MEMORY USAGE) into
    -- USAGE_PREFIX{tag}, a key the NF's users may read but not write, noting how far
    -- the library's own count of what it created had got when it started
    -- (CREATED_PREFIX{tag}, k and b, only ever added to). In use: the keeper's count
    -- plus what was created since, so entries created during a count are counted
    -- twice until the next one (refusing early, never late); entries that expired or
    -- were deleted are credited at the next count. Never counted: only what this
    -- library created is, so the NF is refused once it created the limit's worth.
    local function whole(x)
        x = tonumber(x)
        return x and x >= 0 and x < 2 ^ 53 and x == math.floor(x) and x or nil
    end

    local function usage_read(tag)
        local m = R('HMGET', USAGE_PREFIX .. tag, 'k', 'b', 'ck', 'cb', 't')
        local ckey = CREATED_PREFIX .. tag
        local ok, c = pcall_(R, 'HMGET', ckey, 'k', 'b')
        if not ok then
            if classify(c) ~= 'WRONGTYPE' then error(c) end
            c = { true }
        end
        if (c[1] and not whole(c[1])) or (c[2] and not whole(c[2])) then
            R('DEL', ckey) -- written outside cogs: counting starts again (the keeper's count stands)
            c = {}
        end
        local ck, cb = whole(c[1]) or 0, whole(c[2]) or 0
        return {
            ckey = ckey, t = whole(m[5]), nk = 0, nb = 0,
            keys = (whole(m[1]) or 0) + math.max(0, ck - (whole(m[3]) or 0)),
            bytes = (whole(m[2]) or 0) + math.max(0, cb - (whole(m[4]) or 0)),
        }
    end

    local function usage_over(u, what, have, limit, refused)
        local seen = u.t and ('counted by the keeper ' .. string.format('%.1f', (now_ms() - u.t) / 1000)
            .. ' s ago, plus what was created since') or 'never counted by the keeper (is cogs keeper running?): '
            .. 'what this library created'
        cogs.fail('LIMIT', 'NF ' .. NF .. ' has ' .. cogs.num2s(have) .. ' ' .. what .. ' on this node, its limit is '
            .. cogs.num2s(limit) .. ' per primary (' .. seen .. '): ' .. refused)
    end

    -- Before an op that may create or grow an entry: refused when the NF is at a limit.
    -- Returns whether the key is new (then usage_count counts it once it exists).
    local function usage_admit(u, rk)
        if LIMIT_MAX_BYTES > 0 and u.bytes >= LIMIT_MAX_BYTES then
            usage_over(u, 'bytes', u.bytes, LIMIT_MAX_BYTES, 'updates refused ([limits] max_memory)')
        end
        if R('EXISTS', rk) == 1 then return false end
        if LIMIT_MAX_KEYS > 0 and u.keys >= LIMIT_MAX_KEYS then
            usage_over(u, 'keys', u.keys, LIMIT_MAX_KEYS, 'new keys refused ([limits] max_keys)')
        end
        return true
    end

    -- an entry's bytes until the keeper measures it: what Redis says it takes (MEMORY
    -- USAGE, sampled), or for users made before they were given that command, its
    -- name, its argument (an array's members) and Redis' overhead per entry and member
    local ENTRY_BYTES = 64

    local function arg_bytes(arg, depth)
        if type(arg) == 'string' then return #arg end
        if type(arg) ~= 'table' or depth > 2 then return 16 end
        local n = 0
        for k, v in pairs(arg) do
            n = n + 16 + arg_bytes(v, depth + 1) + (type(k) == 'string' and #k or 0)
        end
        return n
    end

    local function entry_bytes(rk, arg)
        local ok, n = pcall_(R, 'MEMORY', 'USAGE', rk)
        if ok and type(n) == 'number' then return n end
        return #rk + arg_bytes(arg, 1) + ENTRY_BYTES
    end

    local function usage_count(u, rk, arg)
        if R('EXISTS', rk) == 1 then
            local b = entry_bytes(rk, arg)
            u.keys, u.bytes, u.nk, u.nb = u.keys + 1, u.bytes + b, u.nk + 1, u.nb + b
        end
    end

    local function usage_write(u)
        if u.nk > 0 then
            R('HINCRBY', u.ckey, 'k', u.nk)
            R('HINCRBY', u.ckey, 'b', u.nb)
        end
    end

    local USAGE_LIMITED = LIMIT_MAX_KEYS > 0 or LIMIT_MAX_BYTES > 0
    local LIMITED = USAGE_LIMITED or LIMIT_OPS_PER_S > 0

    -- the modes whose ops may create or grow an entry (the usage limits)
    local WRITES = { [UPDATE] = true, [UPDATE_GET] = true, [MODE.CLAIM] = true, [MODE.OWNER] = true }

    local function apply_counted(u, mode, st, sidx, op, key, rk, arg, ctx)
        local new = op ~= 'clear' and usage_admit(u, rk) -- deleting is never refused
        -- an op may create its entry and then fail (an alert not recorded): counted all the same
        local ok, value = pcall_(apply, mode, st, sidx, op, key, rk, arg, ctx)
        if new then usage_count(u, rk, arg) end
        if not ok then error(value, 0) end
        return value
    end

    local function fail_reason(st, sidx)
        if st == nil then
            return 'UNKNOWN_STATE', 'no state with index ' .. cogs.show(sidx) .. ' in catalog ' .. CATALOG_DIGEST
        elseif st.broken then
            return 'UNKNOWN_STATE', st.broken
        end
        return 'BAD_KEY', KEY_RULE
    end

    local function batch(_, args)
        bind()
        local bad = header(args)
        if bad then
            return redis.error_reply(bad)
        end
        local session, seq, rec, bk, use = args[5], args[6], nil, nil, nil
        if LIMITED then
            local now = now_ms() -- one TIME per batch: the slot map's age and the bucket's refill
            local ok, tag = pcall_(node_tag, now)
            if ok and LIMIT_OPS_PER_S > 0 then
                ok, bk = pcall_(bucket_read, tag, now)
                tag = ok and tag or bk
            end
            if ok and USAGE_LIMITED then
                ok, use = pcall_(usage_read, tag)
                tag = ok and tag or use
            end
            if not ok then
                forget_tag() -- the slot map may have changed: read it again next time
                local code, msg = classify(tag)
                -- NOPERM: the NF's users predate usage limits (cogs acl apply gives them the read)
                return redis.error_reply((code == 'NOPERM' and 'NOPERM ' or 'UNAVAILABLE ') .. msg)
            end
        end
        if session then
            local early
            rec, early = cogs.once.begin(args[2], session, seq, args[7], args[8])
            if early then
                return early -- a re-send's stored reply, or the channel's refusal
            end
        else
            -- a cluster that is down or loading fails this first call, before any op
            local ok, e = pcall_(R, 'EXISTS', args[2])
            if not ok then
                local _, msg = classify(e)
                return redis.error_reply('UNAVAILABLE ' .. msg)
            end
        end
        local ok, ops = pcall_(decode, args[3])
        local total = ok and type(ops) == 'table' and #ops or -1
        local nops = total >= 0 and byte(args[3]) == 91 and frame_ok(ops, total)
        if not nops then
            local bad = redis.error_reply('BAD_FRAME ops must be a flat JSON array of runs: mode, state, op, n, n x (key, arg)')
            if rec then
                cogs.once.record(rec, seq, bad) -- the batch's outcome: its number is spent
            end
            return bad
        end
        if bk and nops > 0 and not bucket_charge(bk, nops) then
            local over = redis.error_reply('LIMIT NF ' .. NF .. ' is over its limit of ' .. LIMIT_OPS_PER_S
                .. ' ops/s on this node: ' .. nops .. ' op(s) refused, none applied (the limit holds per primary: '
                .. '[limits] ops_per_s in its catalog)')
            if rec then
                cogs.once.record(rec, seq, over) -- refused for good: a re-send gets the same answer
            end
            return over
        end
        local ctx = { stream = args[2], pid = args[4], discards = {} }
        local errs, res, failed = {}, {}, 0
        local at = {}
        local base = 0 -- 0-based index of the run's first op
        local i = 1
        local function refuse(idx, st, key, op, code, msg)
            failed = failed + 1
            errs[#errs + 1] = idx
            errs[#errs + 1] = code .. describe(st, key, op) .. msg
        end
        while i <= total do
            local mode, sidx, op, n = ops[i], ops[i + 1], ops[i + 2], ops[i + 3]
            local st = STATES[sidx]
            local usable = st ~= nil and not st.broken
            local fn = usable and mode == UPDATE and not use and st.update and st.update[op]
            local first, last = i + 4, i + 2 + 2 * n
            if fn then
                local j = first
                while j <= last do
                    local ok, e = pcall_(trigger_run, fn, st, sidx, ops, j, last, ctx, at)
                    if ok then break end
                    local code, msg = classify(e)
                    if code == 'ALERT' then failed = failed - 1 end -- applied; only the alert failed
                    refuse(base + (at.j - first) / 2, st, ops[at.j], op, code, msg)
                    j = at.j + 2
                end
            else
                for j = first, last, 2 do
                    local key, idx = ops[j], base + (j - first) / 2
                    if not usable or type(key) ~= 'string' or key == '' or #key > MAX_KEY or byte(key) == 125 then
                        refuse(idx, st, key, op, fail_reason(st, sidx))
                    else
                        local ok, value
                        if use and WRITES[mode] then
                            ok, value = pcall_(apply_counted, use, mode, st, sidx, op, key, st.prefix .. key .. '}',
                                ops[j + 1], ctx)
                        else
                            ok, value = pcall_(apply, mode, st, sidx, op, key, st.prefix .. key .. '}', ops[j + 1], ctx)
                        end
                        if not ok then
                            local code, msg = classify(value)
                            if code == 'ALERT' then failed = failed - 1 end
                            refuse(idx, st, key, op, code, msg)
                        elseif mode ~= UPDATE then
                            res[#res + 1] = idx
                            if value == nil then value = false end
                            res[#res + 1] = value
                        end
                    end
                end
            end
            base = base + n
            i = i + 4 + 2 * n
        end
        if use then usage_write(use) end
        replica.publish(ctx, encode)
        local reply = { base - failed, errs, res }
        if rec then
            cogs.once.record(rec, seq, reply)
        end
        return reply
    end

    local function info()
        bind()
        -- names a key of this NF's namespace: Redis checks it against the caller before
        -- anything else, so another NF's users get NOPERM instead of this NF's catalog
        -- (its detectors' thresholds, its NAT's address pools); that the key is on
        -- another node (the check that comes next) does not matter
        local ok, e = pcall_(R, 'EXISTS', PREFIX .. 'info')
        if not ok then
            local msg = type(e) == 'table' and tostring(e.err) or tostring(e)
            if not find(msg, 'non local key', 1, true) then
                return redis.error_reply(msg)
            end
        end
        local types = {}
        for name, T in pairs(cogs.types) do
            local t = { update = {}, retrieve = {}, check = {}, whole = T.whole }
            for _, kind in ipairs({ 'update', 'retrieve', 'check' }) do
                for op, _ in pairs(T[kind]) do t[kind][#t[kind] + 1] = op end
                table.sort(t[kind])
            end
            types[name] = t
        end
        local checkers = {}
        for name, _ in pairs(cogs.checkers) do checkers[#checkers + 1] = name end
        table.sort(checkers)
        return encode({
            version = LIB_VERSION,
            catalog_digest = CATALOG_DIGEST,
            catalog_json = CATALOG_JSON, -- verbatim: a decode/encode round trip would reformat numbers
            nf = NF,
            -- absent when there is none (cjson cannot tell an empty object from an empty array)
            limits = (LIMIT_OPS_PER_S > 0 or LIMIT_MAX_KEYS > 0 or LIMIT_MAX_BYTES > 0) and {
                ops_per_s = LIMIT_OPS_PER_S > 0 and LIMIT_OPS_PER_S or nil,
                max_keys = LIMIT_MAX_KEYS > 0 and LIMIT_MAX_KEYS or nil,
                -- as a string: cjson writes numbers with 14 digits (2^49 bytes would come back rounded)
                max_memory = LIMIT_MAX_BYTES > 0 and string.format('%d', LIMIT_MAX_BYTES) or nil,
            } or nil,
            types = types,
            checkers = checkers,
        })
    end

    redis.register_function({ function_name = FN_BATCH, callback = batch, flags = { 'allow-cross-slot-keys' } })
    local function release(_, args)
        bind()
        local stream, pid, run = args[1], args[2], args[3]
        if type(stream) ~= 'string' or sub(stream, 1, #ALERTS_STREAM_PREFIX) ~= ALERTS_STREAM_PREFIX
            or type(pid) ~= 'string' or #pid > MAX_PROXY_ID or not find(pid, '^[%w_.:-]+$')
            or (run ~= nil and (#run > 64 or not find(run, '^%x+$'))) then
            return redis.error_reply('BAD_FRAME usage: ' .. FN_RELEASE .. ' 0 <alert stream> <proxy id> [<run: hex>]')
        end
        return replica.release_all(stream, pid, run)
    end

    redis.register_function({ function_name = FN_RELEASE, callback = release, flags = { 'allow-cross-slot-keys' } })
    -- a proxy's heartbeat, kept by the process whose run token it carries (registry.lua)
    local function beat(keys, args)
        bind()
        return cogs.registry.beat(keys, args)
    end
    redis.register_function({ function_name = FN_BEAT, callback = beat })
    redis.register_function({ function_name = FN_INFO, callback = info, flags = { 'no-writes' } })
end
