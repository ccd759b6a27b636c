-- cogs core: the registries and helpers that types, checkers and the API share.
--
-- The assembler (cogs/library.py) builds ONE Redis Functions library:
--   #!lua name=cogs
--   generated header: LIB_VERSION, CATALOG_DIGEST, CATALOG_JSON (the state catalog)
--   lua/core.lua, lua/types/*.lua, checkers/*.lua, lua/api.lua
-- Each file is wrapped in `do ... end` so its locals stay private.
--
-- FUNCTION LOAD runs this chunk in a sandbox where only redis.register_function
-- exists: `string`, `cjson` and even redis.call are missing at load time. So
-- nothing here touches them before the first FCALL; files register a bind hook
-- (cogs.on_bind) that caches what they need as upvalues on the first call.
--
-- Errors: an op fails by raising the string "CODE|message" (cogs.fail). The API
-- catches it per op, so one bad op never aborts the batch or touches state.
-- Codes: UNKNOWN_STATE UNKNOWN_OP BAD_KEY BAD_DELTA OVERSIZE WRONGTYPE MOVED
--        OVERFLOW BAD_FRAME OUTDATED NOT_OWNER REDIS

local cogs = { types = {}, checkers = {}, hooks = {} }

function cogs.register_type(name, t)
    t.name = name
    cogs.types[name] = t
end

function cogs.register_checker(name, c)
    c.name = name
    cogs.checkers[name] = c
end

function cogs.on_bind(fn)
    cogs.hooks[#cogs.hooks + 1] = fn
end

-- Hot helpers, bound on first call.
local find, fmt, tonum, floor, typ, tostr

function cogs.fail(code, msg)
    error(code .. '|' .. msg, 0)
end

-- An integer delta: a JSON number that is integral, or a decimal string.
-- Lua numbers are doubles, so anything beyond 2^53 would silently round.
local MAX_INT = 9007199254740991
function cogs.int(v, what)
    local n
    if typ(v) == 'number' then
        n = v
    elseif typ(v) == 'string' and #v <= 17 and find(v, '^%-?%d+$') then
        n = tonum(v)
    else
        cogs.fail('BAD_DELTA', (what or 'delta') .. ' must be an integer, got ' .. cogs.show(v))
    end
    if n ~= floor(n) or n > MAX_INT or n < -MAX_INT then
        cogs.fail('BAD_DELTA', (what or 'delta') .. ' must be an integer within +/-2^53, got ' .. cogs.show(v))
    end
    return n
end

-- An integer argument for a Redis command, as a string: Redis converts a Lua number
-- argument with "%.17g" (slow and lossy), while a decimal string passes through and
-- Redis itself validates it as a 64-bit integer.
function cogs.intarg(v, what)
    if typ(v) == 'string' and #v <= 20 then
        return v
    end
    return fmt('%d', cogs.int(v, what))
end

function cogs.number(v, what)
    local n = typ(v) == 'number' and v or (typ(v) == 'string' and tonum(v))
    if not n or n ~= n then
        cogs.fail('BAD_DELTA', (what or 'delta') .. ' must be a number, got ' .. cogs.show(v))
    end
    return n
end

-- A string value, bounded by the state's max_bytes; a member or field (of a set, a
-- map) by its max_member_bytes.
local SMALL = { member = true, field = true }
function cogs.str(v, st, what)
    local t = typ(v)
    if t == 'number' then
        v = cogs.num2s(v)
    elseif t ~= 'string' then
        cogs.fail('BAD_DELTA', (what or 'value') .. ' must be a string, got ' .. cogs.show(v))
    end
    local limit = SMALL[what] and st.max_member or st.max_bytes
    if #v > limit then
        cogs.fail('OVERSIZE', (what or 'value') .. ' is ' .. #v .. ' bytes, limit ' .. limit)
    end
    return v
end

-- Reads are bounded like writes: before a value is read for a caller, its size is
-- checked (O(1): STRLEN, SCARD, HLEN, HSTRLEN) against the bounds cogs' own writes
-- respect. A key over them was written outside cogs (anyone with the NF's proxy
-- credentials can SET any of its keys): the op fails alone and nothing of the value
-- reaches a proxy (nor its replica cache).
function cogs.stored_over(what, n, limit)
    cogs.fail('OVERSIZE', 'the stored value ' .. what .. ' ' .. n .. ', over its ' .. limit
        .. ': written outside cogs, refused unread')
end

-- A string of a stored collection (a member, a field, a value) read along with the
-- rest: its count was checked before the read, each size is checked before it leaves.
function cogs.check_sizes(list, first, step, limit, name, what)
    for i = first, #list, step do
        local n = #list[i]
        if n > limit then
            cogs.fail('OVERSIZE', 'the stored value has a ' .. what .. ' of ' .. n .. ' bytes, over its '
                .. name .. ' ' .. limit .. ': written outside cogs, refused')
        end
    end
end

-- A list of strings: one string, or a JSON array of strings (coalesced inserts).
function cogs.strlist(v, st, what)
    if typ(v) ~= 'table' then
        return { cogs.str(v, st, what) }
    end
    if #v == 0 then
        cogs.fail('BAD_DELTA', (what or 'value') .. ' list is empty')
    end
    for i = 1, #v do
        v[i] = cogs.str(v[i], st, what)
    end
    return v
end

function cogs.num2s(n)
    if n == floor(n) and n <= MAX_INT and n >= -MAX_INT then
        return fmt('%d', n)
    end
    return tostr(n)
end

-- Short, safe rendering of a bad input for an error message.
function cogs.show(v)
    local t = typ(v)
    if t == 'string' then
        if #v > 40 then
            -- cut at a character boundary: never half of a UTF-8 sequence in a message
            local n = 40
            while n > 1 and v:byte(n + 1) and v:byte(n + 1) >= 128 and v:byte(n + 1) < 192 do
                n = n - 1
            end
            return fmt('%q', v:sub(1, n)) .. '... (' .. #v .. ' bytes)'
        end
        return fmt('%q', v)
    elseif t == 'number' then
        return tostr(v)
    elseif t == 'table' then
        return 'a JSON ' .. (v[1] ~= nil and 'array' or 'object')
    end
    return t == 'userdata' and 'null' or t
end

-- Redis replies for missing keys / fields become Lua false.
function cogs.tonum(v)
    return v and tonum(v) or 0
end

-- Members of a map delta: either a JSON object {field: value, ...} or a flat
-- [field, value, ...] array. Returns a flat array of validated strings.
function cogs.pairs_list(v, st, value_fn)
    if typ(v) ~= 'table' then
        cogs.fail('BAD_DELTA', 'delta must be a JSON object or a [field, value, ...] array, got ' .. cogs.show(v))
    end
    local out = {}
    if v[1] ~= nil then
        if #v % 2 ~= 0 then
            cogs.fail('BAD_DELTA', 'field/value array has an odd length ' .. #v)
        end
        for i = 1, #v, 2 do
            out[#out + 1] = cogs.str(v[i], st, 'field')
            out[#out + 1] = value_fn(v[i + 1])
        end
    else
        for f, x in pairs(v) do
            out[#out + 1] = cogs.str(f, st, 'field')
            out[#out + 1] = value_fn(x)
        end
    end
    if #out == 0 then
        cogs.fail('BAD_DELTA', 'delta has no fields')
    end
    return out
end

-- Large arrays must not be unpacked onto the Lua stack in one go.
local CHUNK = 1000
function cogs.chunked(cmd, key, list)
    local total = 0
    local n = #list
    if n <= CHUNK then
        return redis.call(cmd, key, unpack(list))
    end
    for i = 1, n, CHUNK do
        total = total + redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, n)))
    end
    return total
end

-- max_items: refuse (before anything is written) an add that would take the state
-- past its limit. `list` holds the items every `step` entries (fields of a flat
-- field/value list have step 2); only those not present yet count.
function cogs.check_room(rk, st, list, step, count_cmd, has_cmd, what)
    if not st.max_items then return end
    local n = redis.call(count_cmd, rk)
    if n + #list / step <= st.max_items then return end
    local new = 0
    for i = 1, #list, step do
        if redis.call(has_cmd, rk, list[i]) == 0 then new = new + 1 end
    end
    if n + new > st.max_items then
        cogs.fail('OVERSIZE', 'the state would hold ' .. (n + new) .. ' ' .. what .. ', limit ' .. st.max_items)
    end
end

-- Classify any error caught around an op into (code, message).
function cogs.classify(e)
    if typ(e) == 'userdata' then
        -- fakeredis surfaces Redis errors as Python exceptions: "('MSG', N)"
        e = tostr(e)
        e = e:match("^%('(.*)', %d+%)$") or e
    elseif typ(e) == 'table' then
        e = e.err or tostr(e)
    end
    local bar = find(e, '|', 1, true)
    if bar and find(e, '^[A-Z_]+|') then
        return e:sub(1, bar - 1), e:sub(bar + 1)
    end
    if find(e, 'WRONGTYPE', 1, true) then
        return 'WRONGTYPE', 'the key holds a value of another type (written outside cogs?)'
    elseif find(e, 'non local key', 1, true) or find(e, 'MOVED', 1, true) or find(e, 'ASK', 1, true) then
        return 'MOVED', 'key is not served by this node: ' .. e
    elseif find(e, 'overflow', 1, true) then
        return 'OVERFLOW', e
    elseif find(e, 'not an integer', 1, true) then
        return 'BAD_DELTA', 'delta (or the stored value) is not a 64-bit integer (' .. e .. ')'
    end
    return 'REDIS', e
end

function cogs.bind()
    find, fmt, tonum, floor, typ, tostr = string.find, string.format, tonumber, math.floor, type, tostring
    for i = 1, #cogs.hooks do
        cogs.hooks[i]()
    end
end
