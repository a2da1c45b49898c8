-- read: hand this worker queued tasks of one partition, at most `max` in all,
-- reading the queues in the order given (the caller puts higher priorities
-- first). One command over every queue could not do it: XREADGROUP's COUNT
-- is per stream, so it would take up to `max` from each and hand the worker
-- more than it has room for. Reading only moves entries into this worker's
-- pending list; claim.lua then turns them into leases.
-- With `idle_ms`: instead of new entries, entries whose holder has been
-- silent that long (XAUTOCLAIM; a live holder's heartbeat keeps its entry
-- fresh). With `wait`: when nothing was read, also the last entry id of
-- each queue, for the caller's blocking XREAD (which wakes on anything newer).
-- A: worker, max, queues ({ wf, pr? } each, in order; keys declared), idle_ms?, wait?
-- Reply: tasks ({ q (index in queues), tid, id? } each), trimmed (pending
--   entries XAUTOCLAIM found deleted), last? (an id per queue)
local tasks, trimmed, left = {}, 0, A.max

-- An entry as XREADGROUP / XAUTOCLAIM give it: { id, { field, value, … } }.
local function take(qi, entry)
  local run_id
  local fields = entry[2] or {}
  for i = 1, #fields, 2 do
    if fields[i] == 'run_id' then run_id = fields[i + 1] end
  end
  tasks[#tasks + 1] = { q = qi, tid = entry[1], id = run_id }
  left = left - 1
end

-- A queue of another priority than the default exists only once a run of
-- that priority was queued (enqueue makes it and its group): until then a
-- read finds no group, and there is nothing to read. The default queue's
-- NOGROUP is an error the caller repairs (its groups were lost).
local function failed(reply, q)
  if type(reply) == 'table' and reply.err then
    if q.pr and tostring(q.pr) ~= DEFAULT_PRIORITY and string.find(reply.err, 'NOGROUP', 1, true) then return true end
    error(reply)
  end
  return false
end

for qi, q in ipairs(A.queues) do
  if left <= 0 then break end
  local key = k_queue(q.wf, q.pr)
  if A.idle_ms then
    local cursor = '0-0'
    -- Each call scans at most COUNT * 10 pending entries; a few cover a large
    -- backlog, and the next reclaim starts from the beginning again.
    for _ = 1, 8 do
      local r = pcall_('XAUTOCLAIM', key, GROUP, A.worker, A.idle_ms, cursor, 'COUNT', left)
      if failed(r, q) then break end
      cursor = r[1]
      for _, entry in ipairs(r[2]) do
        if type(entry) == 'table' and entry[2] then take(qi, entry) end
      end
      trimmed = trimmed + #(r[3] or {})
      if cursor == '0-0' or left <= 0 then break end
    end
  else
    local r = pcall_('XREADGROUP', 'GROUP', GROUP, A.worker, 'COUNT', left, 'STREAMS', key, '>')
    if r and not failed(r, q) then
      for _, entry in ipairs(r[1][2]) do take(qi, entry) end
    end
  end
end

local out = { tasks = tasks, trimmed = trimmed }
if A.wait and #tasks == 0 then
  local last = {}
  for i, q in ipairs(A.queues) do
    local newest = call('XREVRANGE', k_queue(q.wf, q.pr), '+', '-', 'COUNT', 1)
    last[i] = newest[1] and newest[1][1] or '0-0'
  end
  out.last = last
end
return reply(out)
