-- append: journal entries + summary patch under the lease. Fenced.
-- ARGV: P, run id, worker id, epoch, completed delta, current step or '',
--       total steps or '', n, entries...
local id = ARGV[2]
local h = fenced(id, ARGV[3], ARGV[4])
if not h then return { 'LOST' } end
local seqs = append_events(id, 9, tonumber(ARGV[8]))
apply_patch(id, ARGV[5], ARGV[6], ARGV[7], now_ms())
return { 'OK', h[5] or '', seqs, h[7] or '' }
