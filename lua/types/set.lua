-- type: set
-- update: add remove
-- retrieve: members card contains
-- check: contains
-- measure: card
-- whole: members
-- coalesce: add=union remove=union
-- about: a set of strings. add/remove take one member or an array of members (a
--   coalesced batch of inserts is one op). max_items bounds the cardinality (DEFAULT_MAX_ITEMS when the
--   state declares none): an add that would exceed it fails whole and leaves the set
--   untouched; members refuses a stored set over it, or with a member over
--   max_member_bytes (written outside cogs), rather than hand it to a proxy.
-- args: add/remove take a string or an array of strings; contains takes a string.
local R, strlist, str = nil, cogs.strlist, cogs.str
cogs.on_bind(function() R = redis.call end)

cogs.register_type('set', {
    update = {
        add = function(rk, d, st)
            if type(d) == 'string' and #d <= st.max_member then
                -- one member: no list to build (the trigger hot path); the bound is checked
                -- after the add, which is taken back when over it
                local added = R('SADD', rk, d)
                if added == 0 then return false, nil, nil end
                local card = R('SCARD', rk)
                if card > st.max_items then
                    R('SREM', rk, d)
                    cogs.fail('OVERSIZE', 'the state would hold ' .. card .. ' members, limit ' .. st.max_items)
                end
                return true, card, card == 1
            end
            local ms = strlist(d, st, 'member')
            cogs.check_room(rk, st, ms, 1, 'SCARD', 'SISMEMBER', 'members')
            local added = cogs.chunked('SADD', rk, ms)
            if added > 0 and (st.window or st.checker) then
                -- one SCARD serves the checker (hint) and the window (new key?)
                local card = R('SCARD', rk)
                return true, card, card == added
            end
            return added > 0, nil, nil
        end,
        remove = function(rk, d, st)
            return cogs.chunked('SREM', rk, strlist(d, st, 'member')) > 0, nil, false
        end,
    },
    retrieve = {
        members = function(rk, _, st)
            local n = R('SCARD', rk)
            if n > st.max_items then cogs.stored_over('has', n .. ' members', 'max_items ' .. st.max_items) end
            local ms = R('SMEMBERS', rk)
            cogs.check_sizes(ms, 1, 1, st.max_member, 'max_member_bytes', 'member')
            return ms
        end,
        card = function(rk) return R('SCARD', rk) end,
        contains = function(rk, arg, st) return R('SISMEMBER', rk, str(arg, st, 'member')) end,
    },
    check = {
        contains = function(rk, arg, st) return R('SISMEMBER', rk, str(arg, st, 'member')) == 1 end,
    },
    measure = {
        card = function(rk, hint) return hint or R('SCARD', rk) end,
    },
    whole = 'members',
})
