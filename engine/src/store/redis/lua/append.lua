-- append: journal entries + summary patch under the lease. Fenced.
-- A: id, worker, epoch, patch ({ delta, cur?, total? }), entries
local h = fenced(A.id, A.worker, A.epoch)
if not h then return reply({ r = 'LOST' }) end
local seqs = append_entries(A.id, A.entries)
apply_patch(A.id, A.patch, now_ms(), h)
return reply({ r = 'OK', seqs = seqs, cancel = h[5] == '1', pause = h[7] == '1' })
