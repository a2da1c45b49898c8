-- append: journal entries + summary patch under the lease. Fenced.
-- KEYS[1]: partition prefix. ARGV: run id, worker id, epoch, completed delta, current step or '',
--       total steps or '', n, entries...
local id = ARGV[1]
local h = fenced(id, ARGV[2], ARGV[3])
if not h then return { 'LOST' } end
local seqs = append_events(id, 8, tonumber(ARGV[7]))
apply_patch(id, ARGV[4], ARGV[5], ARGV[6], now_ms())
return { 'OK', h[5] or '', seqs, h[7] or '' }
