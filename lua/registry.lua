-- The proxy registry's heartbeat keys, guarded by each process's run token.
--
-- A proxy's heartbeat key (<prefix>proxy:{<id>}) holds a JSON entry with a random
-- "run" token drawn at each process start. Two processes may carry one proxy id for
-- a while (a restart while the old process still runs, or a frozen one that wakes
-- up): the newest takes the key over, and the older one's late beats and its
-- unregister must not undo that.
--
-- FCALL <lib>_beat 1 <heartbeat key> <run> <mode> [<entry json> <ttl ms>]
--   mode 'take'   a process starting: store the entry whoever held the key -> 1
--   mode 'renew'  a later beat: store it only while the key is absent or carries
--                 this run -> 1; else 0 (another process took the id over)
--   mode 'drop'   a clean close: delete the key only if it carries this run -> 1;
--                 -1 when absent; 0 when another run holds it
do
    local R, decode, find
    cogs.on_bind(function() R, decode, find = redis.call, cjson.decode, string.find end)
    local registry = {}
    cogs.registry = registry
    local MAX_ENTRY = MAX_HEARTBEAT

    -- The run token of the stored entry: nil when absent or unreadable (not JSON, no
    -- run, a key of another type: written outside cogs, by anyone with the NF's proxy
    -- credentials). Such an entry is nobody's: a beat replaces it, rather than take it
    -- for another process's and stop beating for good.
    local function run_of(key)
        local got, raw = pcall(R, 'GET', key)
        if not got or not raw then return nil end
        local ok, v = pcall(decode, raw)
        if ok and type(v) == 'table' and type(v.run) == 'string' then return v.run end
        return nil
    end

    function registry.beat(keys, args)
        local key, run, mode, entry, ttl = keys[1], args[1], args[2], args[3], tonumber(args[4])
        if type(key) ~= 'string' or key:sub(1, #PREFIX + 7) ~= PREFIX .. 'proxy:{'
            or type(run) ~= 'string' or not find(run, '^%x+$') or #run > 64 then
            return redis.error_reply('BAD_FRAME usage: ' .. FN_BEAT
                .. ' 1 <heartbeat key> <run: hex> take|renew|drop [<entry json> <ttl ms>]')
        end
        if mode == 'drop' then
            local held = run_of(key)
            if held == nil then return -1 end
            if held ~= run then return 0 end
            R('DEL', key)
            return 1
        end
        if (mode ~= 'take' and mode ~= 'renew') or type(entry) ~= 'string' or #entry > MAX_ENTRY
            or not ttl or ttl < 1 or ttl > 86400000 or ttl ~= math.floor(ttl) then
            return redis.error_reply('BAD_FRAME usage: ' .. FN_BEAT
                .. ' 1 <heartbeat key> <run> take|renew <entry json of at most ' .. MAX_ENTRY
                .. ' bytes> <ttl ms: 1..86400000>')
        end
        if mode == 'renew' then
            local held = run_of(key)
            if held ~= nil and held ~= run then return 0 end
        end
        R('SET', key, entry, 'PX', ttl)
        return 1
    end
end
