-- Flow control (flow_control.rs): one key's slots, window and waiters, changed
-- only here. All five keys share the key's own hash tag (one Cluster slot).
-- KEYS[1]: conf (hash: p, r, pm = the server's limits; rp, rr, rpm = the
--          limits the last step asked for; z = '1' when paused; lu = last use ms)
-- KEYS[2]: slots (zset holder -> lease deadline ms): steps executing now
-- KEYS[3]: starts (zset '<holder>@<ms>' -> start ms): the rate's window
-- KEYS[4]: queue (zset holder -> arrival ms): who waits, in arrival order
-- KEYS[5]: alive (zset holder -> ms): until when a waiter keeps its place
-- A holder is '<run id>/<step id>'. ARGV[1]: the operation, then per operation:
--   acquire: holder, parallelism, rate, period ms (the step's own: '' = none),
--            lease ms, grace ms (how long past its retry time a waiter keeps
--            its place), releases ('\n'-joined holders, released first)
--        -> { ok = true } or { wait = retry at ms, why = text }, and wake
--           (holders now at the head of the queue with room for them)
--   release: holders ('\n'-joined) -> { wake }
--   renew: holders, lease ms -> {}
--   limits: parallelism, rate, period ms ('' each: none; all '': clear) -> {}
--   pause: '1' or '0' -> { wake }
--   status: -> { in_flight, waiting, starts, paused, p? r? pm? (the server's
--            limits), rp? rr? rpm? (what steps asked for), lu? }
-- Replies are JSON.
local conf, slots, starts, queue, alive = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local DAY = 86400000
-- How often a waiter for a slot looks again when no release wakes it first.
local POLL_MS = 2000

local function num(s) if s == nil or s == false or s == '' then return nil end return tonumber(s) end
local function n2s(x) return string.format('%.0f', x) end
local function split(s)
  local out = {}
  for part in string.gmatch(s or '', '[^\n]+') do out[#out + 1] = part end
  return out
end

-- ZREM of many members, in chunks (unpack has a limit).
local function zrem_all(key, members)
  for i = 1, #members, 500 do
    redis.call('ZREM', key, unpack(members, i, math.min(i + 499, #members)))
  end
end

-- Forget what lapsed: slots of dead holders, starts out of the window, waiters
-- that did not come back in time.
local function purge(period_ms)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if period_ms then redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - period_ms) end
  local gone = redis.call('ZRANGEBYSCORE', alive, '-inf', now)
  if #gone > 0 then
    zrem_all(queue, gone)
    redis.call('ZREMRANGEBYSCORE', alive, '-inf', now)
  end
end

-- The limits the last step asked for.
local function requested()
  local c = redis.call('HMGET', conf, 'rp', 'rr', 'rpm')
  return num(c[1]), num(c[2]), num(c[3])
end

-- The limits in force: the server's when set, else the step's own.
local function limits(own_p, own_r, own_pm)
  local c = redis.call('HMGET', conf, 'p', 'r', 'pm', 'z')
  local paused = c[4] == '1'
  if c[1] or c[2] then return num(c[1]), num(c[2]), num(c[3]) or 1000, paused end
  return own_p, own_r, own_pm or 1000, paused
end

-- Room now: slots free and starts left in the window (nil: unlimited).
local function room(p, r)
  local free
  if p then free = p - redis.call('ZCARD', slots) end
  if r then
    local left = r - redis.call('ZCARD', starts)
    if free == nil or left < free then free = left end
  end
  return free
end

-- The waiters at the head of the queue that the room lets go on.
local function heads(free)
  if free == nil then return redis.call('ZRANGE', queue, 0, -1) end
  if free <= 0 then return {} end
  return redis.call('ZRANGE', queue, 0, free - 1)
end

local function expire_all(lease_ms, period_ms, grace_ms)
  if lease_ms then redis.call('PEXPIRE', slots, lease_ms * 2) end
  if period_ms then redis.call('PEXPIRE', starts, period_ms + 1000) end
  if grace_ms then
    redis.call('PEXPIRE', queue, grace_ms * 2)
    redis.call('PEXPIRE', alive, grace_ms * 2)
  end
end

if op == 'acquire' then
  -- The uncontended path (room, nobody waiting) is kept short: it runs
  -- before every step of every run under a key.
  local holder = ARGV[2]
  local own_p, own_r, own_pm = num(ARGV[3]), num(ARGV[4]), num(ARGV[5])
  local lease_ms, grace_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
  if ARGV[8] ~= '' then
    zrem_all(slots, split(ARGV[8]))
  end
  local c = redis.call('HMGET', conf, 'p', 'r', 'pm', 'z', 'rp', 'rr', 'rpm', 'lu')
  local paused = c[4] == '1'
  local p, r, pm
  if c[1] or c[2] then p, r, pm = num(c[1]), num(c[2]), num(c[3]) or 1000
  else p, r, pm = own_p, own_r, own_pm or 1000 end
  -- What the step asked for (for GET /v1/flow-control) when it changed, and
  -- the key's last use at most once a second.
  if c[5] ~= ARGV[3] or c[6] ~= ARGV[4] or c[7] ~= ARGV[5] or (num(c[8]) or 0) + 1000 <= now then
    redis.call('HSET', conf, 'rp', ARGV[3], 'rr', ARGV[4], 'rpm', ARGV[5], 'lu', n2s(now))
    if not (c[1] or c[2] or paused) then redis.call('PEXPIRE', conf, DAY) end
  end
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if r then redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - pm) end
  local queued = redis.call('ZCARD', queue)
  if queued > 0 then
    local gone = redis.call('ZRANGEBYSCORE', alive, '-inf', now)
    if #gone > 0 then
      zrem_all(queue, gone)
      redis.call('ZREMRANGEBYSCORE', alive, '-inf', now)
      queued = redis.call('ZCARD', queue)
    end
  end
  -- Already holding (a replay after its worker died, within the lease): keep it.
  if p and redis.call('ZSCORE', slots, holder) then
    redis.call('ZADD', slots, now + lease_ms, holder)
    return cjson.encode({ ok = true, wake = {} })
  end
  local free = room(p, r)
  local place = queued
  if queued > 0 then place = redis.call('ZRANK', queue, holder) or queued end
  if not paused and (free == nil or place < free) then
    if p then
      redis.call('ZADD', slots, now + lease_ms, holder)
      redis.call('PEXPIRE', slots, lease_ms * 2)
    end
    if r then
      redis.call('ZADD', starts, now, holder .. '@' .. n2s(now))
      redis.call('PEXPIRE', starts, pm + 1000)
    end
    local wake = {}
    if queued > 0 then
      redis.call('ZREM', queue, holder)
      redis.call('ZREM', alive, holder)
      if free ~= nil then wake = heads(free - 1) else wake = heads(nil) end
    end
    return cjson.encode({ ok = true, wake = wake })
  end
  -- Wait: in arrival order, for as long as it comes back in time.
  if not redis.call('ZSCORE', queue, holder) then redis.call('ZADD', queue, now, holder) end
  local retry, why
  if paused then
    retry, why = now + POLL_MS, 'paused'
  else
    retry = now + POLL_MS
    if r and redis.call('ZCARD', starts) >= r then
      local oldest = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
      if oldest[2] then retry = math.max(now + 1, tonumber(oldest[2]) + pm) end
    end
    if p and redis.call('ZCARD', slots) >= p then
      local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
      if first[2] then retry = math.min(retry, tonumber(first[2])) end
    end
    why = 'full'
  end
  redis.call('ZADD', alive, retry + grace_ms, holder)
  expire_all(nil, nil, (retry - now) + grace_ms)
  local wake = {}
  if not paused then wake = heads(free) end
  return cjson.encode({ wait = retry, why = why, wake = wake })
elseif op == 'release' then
  zrem_all(slots, split(ARGV[2]))
  local p, r, pm, paused = limits(requested())
  purge(pm)
  if paused then return cjson.encode({ wake = {} }) end
  return cjson.encode({ wake = heads(room(p, r)) })
elseif op == 'renew' then
  local lease_ms = tonumber(ARGV[3])
  for _, h in ipairs(split(ARGV[2])) do
    if redis.call('ZSCORE', slots, h) then redis.call('ZADD', slots, now + lease_ms, h) end
  end
  redis.call('PEXPIRE', slots, lease_ms * 2)
  return cjson.encode({})
elseif op == 'limits' then
  if ARGV[2] == '' and ARGV[3] == '' then
    redis.call('HDEL', conf, 'p', 'r', 'pm')
    if redis.call('HGET', conf, 'z') ~= '1' then redis.call('PEXPIRE', conf, DAY) end
  else
    redis.call('HDEL', conf, 'p', 'r', 'pm')
    if ARGV[2] ~= '' then redis.call('HSET', conf, 'p', ARGV[2]) end
    if ARGV[3] ~= '' then redis.call('HSET', conf, 'r', ARGV[3], 'pm', ARGV[4]) end
    redis.call('PERSIST', conf)
  end
  return cjson.encode({})
elseif op == 'pause' then
  if ARGV[2] == '1' then
    redis.call('HSET', conf, 'z', '1')
    redis.call('PERSIST', conf)
    return cjson.encode({ wake = {} })
  end
  redis.call('HDEL', conf, 'z')
  local p, r, pm = limits(requested())
  purge(pm)
  return cjson.encode({ wake = heads(room(p, r)) })
elseif op == 'status' then
  local c = redis.call('HMGET', conf, 'p', 'r', 'pm', 'rp', 'rr', 'rpm', 'z', 'lu')
  local pm = num(c[3]) or num(c[6]) or 1000
  local out = {
    in_flight = redis.call('ZCOUNT', slots, '(' .. n2s(now), '+inf'),
    waiting = redis.call('ZCOUNT', alive, '(' .. n2s(now), '+inf'),
    starts = redis.call('ZCOUNT', starts, '(' .. n2s(now - pm), '+inf'),
    paused = c[7] == '1',
    p = num(c[1]), r = num(c[2]), pm = num(c[3]),
    rp = num(c[4]), rr = num(c[5]), rpm = num(c[6]),
    lu = num(c[8]),
  }
  return cjson.encode(out)
end
return redis.error_reply('unknown flow-control operation ' .. tostring(op))
