-- unpark: a worker running some versions of a workflow is live; queue again the
-- runs a claim parked for want of one (`claim_one` in prelude.lua).
-- KEYS[1]: partition prefix. ARGV: workflow, versions...
local wf = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local v = ARGV[i]
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k_parked(wf), v, v)) do
    redis.call('ZREM', k_parked(wf), id)
    local h = redis.call('HMGET', k_run(id), 'st', 'blk', 'ca', 'pz')
    if h[1] and h[2] and not FINAL[h[1]] then
      redis.call('HDEL', k_run(id), 'blk')
      runnable(id, wf, h[1], h[3], h[4] == '1')
      out[#out + 1] = id
    end
  end
end
return out
