-- append: journal entries + summary patch under the lease. Fenced.
-- A: id, worker, epoch, w (the write's token: see `replayed`), patch
--    ({ delta, cur?, total? }), entries
local again = replayed(A.id)
if again then return again end
local h = fenced(A.id, A.worker, A.epoch)
if not h then return reply({ r = 'LOST' }) end
local seqs = append_entries(A.id, A.entries)
apply_patch(A.id, A.patch, now_ms(), h)
return remembered(A.id, reply({ r = 'OK', seqs = seqs, cancel = h[5] == '1', pause = h[7] == '1' }))
