-- Schedules (schedules.rs): every change to one in one script, on global keys
-- only (no partition), so a pause, a replace and a tick's move never interleave.
-- KEYS[1]: specs (hash id -> spec JSON), KEYS[2]: states (hash id -> state JSON),
-- KEYS[3]: due (zset id by next tick ms), KEYS[4]: paused (set of ids).
-- ARGV[1]: the operation, ARGV[2]: the schedule id, then per operation:
--   put: spec JSON, next ms ('' = never), the most schedules
--                                              -> 1 when new, 0 replaced, -1 full
--   delete                                     -> 1 when it existed
--   pause: '1' to pause or '0' to resume, next ms ('' = never) -> 0 when unknown
--   advance: from tick ms, next ms ('' = never), state JSON
--                                              -> 1 when it was still due at that tick
local specs, states, due, paused = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, id = ARGV[1], ARGV[2]

local function set_next(next)
  if next == '' then redis.call('ZREM', due, id) else redis.call('ZADD', due, next, id) end
end

if op == 'put' then
  if redis.call('HEXISTS', specs, id) == 0 and redis.call('HLEN', specs) >= tonumber(ARGV[5]) then return -1 end
  local new = redis.call('HSET', specs, id, ARGV[3])
  if redis.call('SISMEMBER', paused, id) == 0 then set_next(ARGV[4]) end
  return new
elseif op == 'delete' then
  local existed = redis.call('HDEL', specs, id)
  redis.call('HDEL', states, id)
  redis.call('ZREM', due, id)
  redis.call('SREM', paused, id)
  return existed
elseif op == 'pause' then
  if redis.call('HEXISTS', specs, id) == 0 then return 0 end
  if ARGV[3] == '1' then
    redis.call('SADD', paused, id)
    redis.call('ZREM', due, id)
  else
    redis.call('SREM', paused, id)
    set_next(ARGV[4])
  end
  return 1
elseif op == 'advance' then
  local score = redis.call('ZSCORE', due, id)
  if not score or tonumber(score) ~= tonumber(ARGV[3]) then return 0 end
  redis.call('HSET', states, id, ARGV[5])
  set_next(ARGV[4])
  return 1
end
return redis.error_reply('schedules: unknown op ' .. tostring(op))
