-- Indirect-retrieval states: the values live on proxies; the coordinator keeps the
-- state reference table (paper: key -> locator of the owning proxy).
--   <rk>    hash {owner = proxy id, inc = the owner's incarnation (one per start)}
--   <rk>:v  version (replica.lua); <rk>:r  replica holders, in replica mode
-- A proxy restarting with the same id has a new incarnation, so locators it held
-- before are recognisably dead and never come back to life.
--
-- Modes of cogs_batch for indirect states (MODE.*, op names in brackets):
--   LOCATE [locate]  -> {owner, inc, version, pttl}, or nil when nobody owns the key;
--                  in replica mode the caller is recorded as a holder (it will cache)
--   CLAIM [claim]   arg {inc = "...", dead = "owner:inc"?}: become the owner when nobody
--                  is, or when the named dead owner still is -> {1, version, pttl}
--                  (also when the caller already is: a claim may be repeated);
--                  otherwise -> {0, owner, inc, version, pttl} (use the owner's value;
--                  with arg.read = 1 in replica mode the caller is recorded as a holder:
--                  one call both finds a key and, when nobody has it, takes it to load)
--   OWNER [owner]   arg {inc = "...", op = "set"|"delete"}: only the owner, after it
--                  changed its value: new version, discards to the holders -> version
--   FORGET [forget]  arg "owner:inc": drop that locator if it is still there (its owner
--                  is gone) -> 1, else 0
do
    local R, typ
    cogs.on_bind(function() R, typ = redis.call, type end)
    local I = {}
    cogs.indirect = I

    -- what a locator's fields may hold (claim writes a proxy id and an incarnation of
    -- at most 64 bytes); longer ones were written outside cogs and are not read
    local MAX_INC = 64

    local function locator(rk)
        local no, ni = R('HSTRLEN', rk, 'owner'), R('HSTRLEN', rk, 'inc')
        if no > MAX_PROXY_ID or ni > MAX_INC then
            cogs.stored_over('(a locator) has an owner of', no .. ' bytes and an incarnation of ' .. ni,
                'bounds ' .. MAX_PROXY_ID .. ' and ' .. MAX_INC)
        end
        local v = R('HMGET', rk, 'owner', 'inc')
        if v[1] then
            return v[1], v[2]
        end
        return nil, nil
    end

    local function inc_of(arg)
        local inc = typ(arg) == 'table' and arg.inc
        if typ(inc) ~= 'string' or inc == '' or #inc > MAX_INC then
            cogs.fail('BAD_DELTA', 'the argument needs the caller\'s incarnation {inc = "..."}')
        end
        return inc
    end

    function I.apply(mode, st, sidx, key, rk, arg, ctx)
        if not ctx.pid then
            cogs.fail('BAD_FRAME', 'indirect states need the proxy id argument')
        end
        local replica = cogs.replica
        if mode == MODE.LOCATE then
            local owner, inc = locator(rk)
            if not owner then
                return nil
            end
            local version = st.replica and replica.register(st, rk, ctx) or replica.version(rk)
            return { owner, inc, version, R('PTTL', rk) }
        elseif mode == MODE.CLAIM then
            local inc = inc_of(arg)
            local owner, oinc = locator(rk)
            if owner == ctx.pid and oinc == inc then -- a repeated claim (a re-sent batch): still ours
                return { 1, replica.version(rk), R('PTTL', rk) }
            end
            if owner and not (typ(arg.dead) == 'string' and arg.dead == owner .. ':' .. oinc) then
                -- a reader's claim (read = 1) that lost reads the owner's value: a holder, as locate
                local version = (arg.read == 1 and st.replica) and replica.register(st, rk, ctx)
                    or replica.version(rk)
                return { 0, owner, oinc, version, R('PTTL', rk) }
            end
            replica.guard(rk) -- nothing written before it (replica.lua)
            R('HSET', rk, 'owner', ctx.pid, 'inc', inc)
            if st.ttl then R('PEXPIRE', rk, st.ttl) end
            -- a new owner's value: whatever a dead owner's readers cached is stale
            return { 1, replica.bump(st, sidx, key, rk, ctx), R('PTTL', rk) }
        elseif mode == MODE.OWNER then
            local inc = inc_of(arg)
            local owner, oinc = locator(rk)
            if owner ~= ctx.pid or oinc ~= inc then
                cogs.fail('NOT_OWNER', 'only the owning proxy changes an indirect state (owner: '
                    .. tostring(owner) .. ')')
            end
            replica.guard(rk)
            local version = replica.bump(st, sidx, key, rk, ctx)
            if arg.op == 'delete' then
                R('DEL', rk)
            elseif st.ttl then
                R('PEXPIRE', rk, st.ttl)
            end
            return version
        elseif mode == MODE.FORGET then
            local owner, oinc = locator(rk)
            if owner and arg == owner .. ':' .. oinc then
                replica.guard(rk)
                R('DEL', rk)
                replica.bump(st, sidx, key, rk, ctx)
                return 1
            end
            return 0
        end
        cogs.fail('BAD_FRAME', 'indirect states take the locator modes (locate, claim, owner, forget), not '
            .. cogs.show(mode))
    end
end
