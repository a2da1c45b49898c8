-- append: journal entries + summary patch under the lease. Fenced.
-- A: id, worker, epoch, w (the write's token: see `fenced`), patch
--    ({ delta, cur?, total? }), entries
local h, again = fenced(A.id, A.worker, A.epoch)
if again then return again end
if not h then return reply({ r = 'LOST' }) end
local seqs = append_entries(A.id, A.entries)
local cancel, pause = h[5] == '1', h[7] == '1'
-- The summary, the token and the answer: one HSET.
local short = short_append(seqs, cancel, pause)
call('HSET', k_run(A.id), unpack(remember(patch_fields(A.patch, now_ms(), h), short)))
return reply({ r = 'OK', seqs = seqs, cancel = cancel, pause = pause })
