-- finish: the last entries of a lease, then complete / fail / cancel / suspend /
-- release the run, and ack its task, together. Fenced.
-- KEYS[1]: partition prefix. ARGV: run id, worker id, epoch, completed delta, current step or '',
--       total steps or '', how, retention ms, final entry json or '',
--       payload (output / error json) or '', cancelled entry json,
--       wake at ms or '', wait steps, wait keys, wait sinces (one line per
--       waited key, '\n'-joined, aligned), lookback ms, n, parent note (child outcome json) or '',
--       lookback max entries, entries...
local id = ARGV[1]
local h = fenced(id, ARGV[2], ARGV[3])
if not h then return { 'LOST' } end
local st, wf, created, cr, tid = h[2], h[3], h[4], h[5], h[6]
local how = ARGV[7]
local retention = tonumber(ARGV[8])
local now = now_ms()
append_events(id, 20, tonumber(ARGV[17]))
apply_patch(id, ARGV[4], ARGV[5], ARGV[6], now)

local function final(status, field)
  journal_add(id, ARGV[9])
  if field then redis.call('HSET', k_run(id), field, ARGV[10]) end
  finalize(id, st, status, created, now, retention)
  ack(wf, tid)
  notify_parent(id, ARGV[18], ARGV[16], ARGV[19])
  return { 'DONE' }
end

if how == 'complete' then return final('completed', 'out') end
if how == 'fail' then return final('failed', 'err') end
if how == 'cancel' then return final('cancelled', nil) end

if how == 'release' then
  ack(wf, tid)
  redis.call('DEL', k_lease(id))
  redis.call('HSET', k_run(id), 'task', '')
  -- Handed back at a step boundary: paused there if a pause was asked for.
  runnable(id, wf, st, created, h[7] == '1')
  return { 'DONE' }
end

-- suspend
if cr == '1' then
  journal_add(id, ARGV[11])
  finalize(id, st, 'cancelled', created, now, retention)
  ack(wf, tid)
  notify_parent(id, '{"status":"cancelled"}', ARGV[16], ARGV[19])
  return { 'CANCELLED' }
end

-- Waits, flattened one line per key: steps ARGV[13], keys ARGV[14], sinces ARGV[15].
local steps, keys, sinces = split_lines(ARGV[13]), split_lines(ARGV[14]), split_lines(ARGV[15])
if #keys > 0 then
  -- The lookback: an event delivered shortly before a wait began still counts,
  -- but never one this run already consumed on that key. (Stream ids of
  -- different keys' streams are not comparable, so the floor is per key.)
  local best, best_i, best_data, best_gid
  for i, key in ipairs(keys) do
    local from = n2s(math.max(0, tonumber(sinces[i]) - tonumber(ARGV[16])))
    local start = from
    local floor = redis.call('HGET', k_run(id), 'evf:' .. key)
    if floor and id_gt(floor, from .. '-0') then start = '(' .. floor end
    local found = redis.call('XRANGE', k_events(key), start, '+', 'COUNT', 1)
    if #found > 0 and (not best or id_gt(best, found[1][1])) then
      local f = found[1][2]
      best, best_i, best_data, best_gid = found[1][1], i, f[2], f[3] == 'g' and f[4] or found[1][1]
    end
  end
  if best then
    local entry = event_received_json(steps[best_i], keys[best_i], best_gid, best_data)
    local seq = journal_add(id, entry)
    redis.call('HINCRBY', k_run(id), 'cs', 1)
    redis.call('HSET', k_run(id), 'evf:' .. keys[best_i], best, 'cur', steps[best_i])
    return { 'EVENT', seq, entry }
  end
  for _, key in ipairs(keys) do redis.call('SADD', k_waiters(key), id) end
  redis.call('HSET', k_run(id), 'wk', ARGV[14], 'ws', ARGV[13])
end
if ARGV[12] ~= '' then
  redis.call('HSET', k_run(id), 'wake', ARGV[12])
  redis.call('ZADD', K_TIMERS, ARGV[12], id)
end
ack(wf, tid)
redis.call('HSET', k_run(id), 'task', '')
redis.call('DEL', k_lease(id))
if #keys > 0 then set_status(id, st, 'waiting', created) else set_status(id, st, 'sleeping', created) end
return { 'DONE' }
