-- deliver_event: see `deliver` in prelude.lua. With a client's event id, a
-- repeat of the id is answered with the first delivery's event id and delivered
-- to nobody. (The id's key is built in keys.rs: an id, not a name, is hashed in.)
-- KEYS[1]: partition prefix. ARGV: event key, data json, lookback ms, lookback max entries,
--       client id key or '', its ttl ms, the event's id when another partition
--       already gave it one (else '': this partition's stream id is the id)
if ARGV[5] ~= '' then
  local first = redis.call('GET', ARGV[5])
  if first then return { first, {}, 1 } end
end
local eid, woken = deliver(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[7])
if ARGV[5] ~= '' then redis.call('SET', ARGV[5], eid, 'PX', ARGV[6]) end
return { eid, woken, 0 }
