-- A run's inbox (keys.rs `inbox`): KEYS[1] the messages (a list), KEYS[2]
-- its state (a hash: `closed`, `n` = how many were ever pushed). One script,
-- so a push never lands after the close that refuses it.
--   push  <open_ttl_ms> <max> <close 0|1> <message>...  -> "closed" | "full" | <position of the last>
--   read  <open_ttl_ms> <after> <limit>                 -> {n, closed, message...} | "lost"
--   close <keep_ms>                                     -> "ok"
--   keys  <current> <next> <replace 0|1>  (KEYS[1]: the global key hash) -> {current, next}
--   dlq-delete <keep_ms> <run>...  (KEYS[1]: the global DLQ-deleted zset) -> how many were new
--   dlq-deleted <run>...           (KEYS[1]: the same) -> {0|1, ...}
local op = ARGV[1]
if op == 'dlq-delete' or op == 'dlq-deleted' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if op == 'dlq-deleted' then
    local out = {}
    for i = 2, #ARGV do
      local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[i])
      out[#out + 1] = (until_ms and tonumber(until_ms) > now) and 1 or 0
    end
    return out
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local added = 0
  for i = 3, #ARGV do
    added = added + redis.call('ZADD', KEYS[1], 'NX', now + tonumber(ARGV[2]), ARGV[i])
  end
  return added
end
if op == 'keys' then
  if ARGV[4] == '1' or not redis.call('HGET', KEYS[1], 'current') then
    redis.call('HSET', KEYS[1], 'current', ARGV[2], 'next', ARGV[3])
  end
  return redis.call('HMGET', KEYS[1], 'current', 'next')
end
local list, state = KEYS[1], KEYS[2]
if op == 'push' then
  if redis.call('HGET', state, 'closed') then return 'closed' end
  local n = tonumber(redis.call('HGET', state, 'n') or '0')
  local count = #ARGV - 4
  if n + count > tonumber(ARGV[3]) then return 'full' end
  -- In chunks: unpack() of thousands of values overflows Lua's stack.
  for first = 5, #ARGV, 1000 do
    redis.call('RPUSH', list, unpack(ARGV, first, math.min(first + 999, #ARGV)))
  end
  n = n + count
  redis.call('HSET', state, 'n', n)
  if ARGV[4] == '1' then redis.call('HSET', state, 'closed', '1') end
  -- Open, an inbox lives as long as it is used; a closed one was given its
  -- time to live by the close and keeps it.
  if ARGV[4] == '1' or not redis.call('HGET', state, 'keep') then
    redis.call('PEXPIRE', list, ARGV[2])
    redis.call('PEXPIRE', state, ARGV[2])
  end
  return n
elseif op == 'read' then
  local n = tonumber(redis.call('HGET', state, 'n') or '0')
  local after = tonumber(ARGV[3])
  if n == 0 and after > 0 then return 'lost' end
  local out = {n, redis.call('HGET', state, 'closed') and 1 or 0}
  if after < n then
    local items = redis.call('LRANGE', list, after, after + tonumber(ARGV[4]) - 1)
    for _, m in ipairs(items) do out[#out + 1] = m end
  end
  if not redis.call('HGET', state, 'keep') and n > 0 then
    redis.call('PEXPIRE', list, ARGV[2])
    redis.call('PEXPIRE', state, ARGV[2])
  end
  return out
elseif op == 'close' then
  redis.call('HSET', state, 'closed', '1', 'keep', ARGV[2])
  redis.call('PEXPIRE', list, ARGV[2])
  redis.call('PEXPIRE', state, ARGV[2])
  return 'ok'
end
return redis.error_reply('inbox.lua: unknown op ' .. tostring(op))
