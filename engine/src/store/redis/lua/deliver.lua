-- deliver_event: see `deliver` in prelude.lua.
-- ARGV: P, event key, data json, lookback ms, lookback max entries
local eid, woken = deliver(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return { eid, woken }
