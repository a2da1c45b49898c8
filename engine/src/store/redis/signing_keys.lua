-- The deployment's signing keys (signing_keys.rs). A script of its own, not
-- one of the operations library: it touches two global keys and no partition.
-- KEYS[1]: the ring, a hash: `k<n>` -> '<since ms> <secret>', `#n` -> the last n.
-- KEYS[2]: the single key of the older layout (a string), adopted once.
-- ARGV[1]: 'init' (ARGV[2]: the offered secret), 'add' (ARGV[2]: the secret,
-- ARGV[3]: the most keys), 'retire' (ARGV[2]: an id or '', ARGV[3]: settle ms).
-- Answers { 'OK', <the ring as HGETALL> } or { <refusal>, <detail> }.
local ring, older = KEYS[1], KEYS[2]
local op = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function add(secret)
  local n = redis.call('HINCRBY', ring, '#n', 1)
  redis.call('HSET', ring, 'k' .. n, string.format('%.0f', now_ms()) .. ' ' .. secret)
end

-- id -> since ms, for every key.
local function keys()
  local out = {}
  local all = redis.call('HGETALL', ring)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 1) == 'k' then out[all[i]] = tonumber(string.match(all[i + 1], '^(%d+) ')) end
  end
  return out
end

if op == 'init' then
  if redis.call('EXISTS', ring) == 0 then add(redis.call('GET', older) or ARGV[2]) end
elseif op == 'add' then
  local n = 0
  for _ in pairs(keys()) do n = n + 1 end
  if n >= tonumber(ARGV[3]) then return { 'FULL', tostring(n) } end
  add(ARGV[2])
elseif op == 'retire' then
  local all = keys()
  local id = ARGV[2]
  if id == '' then
    for k, since in pairs(all) do
      if id == '' or since < all[id] or (since == all[id] and k < id) then id = k end
    end
  end
  if not all[id] then return { 'UNKNOWN', id } end
  local newest, n = nil, 0
  for k, since in pairs(all) do
    n = n + 1
    if k ~= id and (newest == nil or since > newest) then newest = since end
  end
  if n <= 1 then return { 'LAST', id } end
  local age = now_ms() - newest
  if age < tonumber(ARGV[3]) then return { 'SOON', string.format('%.0f', age) } end
  redis.call('HDEL', ring, id)
else
  return redis.error_reply('signing_keys: unknown op ' .. tostring(op))
end
local out = redis.call('HGETALL', ring)
table.insert(out, 1, 'OK')
return out
