-- Shared by every script (prepended at load time). KEYS[1] is always the
-- partition prefix (`{<namespace>:<p>}`, from keys.rs): every key a script
-- touches starts with it, so it lives in the partition's one Cluster slot, and
-- KEYS[1] routes the script there. Key names here must match keys.rs (checked
-- by a test).
local P = KEYS[1]
local GROUP = 'keel'

local function k_run(id) return P .. ':run:' .. id end
local function k_journal(id) return P .. ':run:' .. id .. ':journal' end
local function k_lease(id) return P .. ':run:' .. id .. ':lease' end
local function k_watch(id) return P .. ':run:' .. id .. ':watch' end
local K_NOTIFY = P .. ':notify'
local K_RECONCILE = P .. ':reconcile'
local function k_queue(wf) return P .. ':queue:' .. wf end
local function k_runs_wf(wf) return P .. ':runs:wf:' .. wf end
local function k_runs_status(st) return P .. ':runs:status:' .. st end
local function k_runs_wf_status(wf, st) return P .. ':runs:wf:' .. wf .. ':status:' .. st end
local function k_parked(wf) return P .. ':parked:' .. wf end
local function k_runs_label(name, value) return P .. ':runs:label:' .. name .. '=' .. value end
local function k_waiters(key) return P .. ':waiters:' .. key end
local function k_events(key) return P .. ':events:' .. key end
local function k_idem(key) return P .. ':idem:' .. key end
local K_RUNS = P .. ':runs'
local K_TIMERS = P .. ':timers'
local K_RETENTION = P .. ':retention'
local K_DEAD = P .. ':dead'
local K_HOOKS = P .. ':hooks'
local K_OUTBOX = P .. ':outbox'
local K_HOOK_JOBS = P .. ':webhook-jobs'
local K_STATS = P .. ':stats'
local K_RELAY = P .. ':relay'

-- Integers as decimal text (tostring would switch to exponent form past 14 digits).
local function n2s(x) return string.format('%.0f', x) end

-- Server time: lease deadlines and timers never depend on a worker's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local FINAL = { completed = true, failed = true, cancelled = true }

-- HOOKS (journal type -> webhook event), STATS (journal type -> counter) and
-- STEP_MS_BUCKETS come before this prelude, generated from the Rust tables
-- (JOURNAL_HOOKS, JOURNAL_STATS, STEP_MS_BUCKETS in store/mod.rs).

-- Whether any webhook subscription exists (the partition's flag), read once per script.
local HOOKS_EXIST = nil
local function hooks_exist()
  if HOOKS_EXIST == nil then HOOKS_EXIST = redis.call('EXISTS', K_HOOKS) == 1 end
  return HOOKS_EXIST
end

-- Append one journal entry. When anyone listens (a webhook subscription exists,
-- or the run has a callback URL) and it is a webhook event, it also goes to the
-- outbox, in the same atomic step. (Entries are serialized `{"v":N,"type":...`.)
-- Counters for /metrics, per workflow (`<workflow>|<stat>`), and a histogram of
-- step durations (`step_ms|<upper bound>`, `step_ms|sum`).

-- The workflow of each run touched by this script, read once.
local WORKFLOW_OF = {}

local function count_stats(id, kind, entry)
  local stat = STATS[kind]
  if not stat then return end
  local wf = WORKFLOW_OF[id]
  if not wf then
    wf = redis.call('HGET', k_run(id), 'wf') or '?'
    WORKFLOW_OF[id] = wf
  end
  redis.call('HINCRBY', K_STATS, wf .. '|' .. stat, 1)
  -- duration_ms is the entry's last field: anchored at the end, a step's own
  -- output can not fake it.
  local ms = kind == 'step_completed' and tonumber(string.match(entry, ',"duration_ms":(%d+)}$'))
  if ms then
    local bucket = '+Inf'
    for _, bound in ipairs(STEP_MS_BUCKETS) do
      if ms <= bound then bucket = tostring(bound); break end
    end
    redis.call('HINCRBY', K_STATS, 'step_ms|' .. bucket, 1)
    redis.call('HINCRBY', K_STATS, 'step_ms|sum', ms)
  end
end

-- Somebody long-polls this run or streams its journal (its watch key lives
-- while they do): tell the servers, whose one subscriber connection wakes the
-- waiters in process: `j:<id>` when the journal grew (journal streams wake),
-- `e:<id>` when the run ended (long-polls wake too). Runs nobody watches pay
-- one EXISTS per script.
local WATCHED = {}
local function notify_watchers(id, what)
  if WATCHED[id] == nil then WATCHED[id] = redis.call('EXISTS', k_watch(id)) == 1 end
  if WATCHED[id] then redis.call('PUBLISH', K_NOTIFY, what .. ':' .. id) end
end

local function journal_add(id, entry)
  local seq = redis.call('XADD', k_journal(id), '*', 'e', entry)
  notify_watchers(id, 'j')
  local kind = string.match(entry, '^{"v":%d+,"type":"([a-z_]+)"') or ''
  count_stats(id, kind, entry)
  local hook = HOOKS[kind]
  if hook and (hooks_exist() or redis.call('HEXISTS', k_run(id), 'cb') == 1) then
    redis.call('XADD', K_OUTBOX, '*', 'run_id', id, 'seq', seq, 'type', hook)
  end
  return seq
end

-- Moves the run between the status indexes (all runs, and its workflow's).
local function set_status(id, old, new, created)
  if old ~= new then
    local wf = WORKFLOW_OF[id] or redis.call('HGET', k_run(id), 'wf')
    WORKFLOW_OF[id] = wf
    if old then
      redis.call('ZREM', k_runs_status(old), id)
      redis.call('ZREM', k_runs_wf_status(wf, old), id)
    end
    redis.call('ZADD', k_runs_status(new), created, id)
    redis.call('ZADD', k_runs_wf_status(wf, new), created, id)
    redis.call('HSET', k_run(id), 'st', new)
  end
end

-- Labels are an index each (`name=value`), written at the start, removed at expiry.
local function index_labels(id, labels_json, created, add)
  if labels_json == nil or labels_json == false or labels_json == '' then return end
  for name, value in pairs(cjson.decode(labels_json)) do
    if add then
      redis.call('ZADD', k_runs_label(name, value), created, id)
    else
      redis.call('ZREM', k_runs_label(name, value), id)
    end
  end
end

local function enqueue(id, wf)
  local tid = redis.call('XADD', k_queue(wf), '*', 'v', '1', 'run_id', id)
  redis.call('HSET', k_run(id), 'task', tid)
  return tid
end

-- Ack and delete a task entry: an acked task never stays in the stream, so the
-- queue's length is exactly the work not yet finished.
local function ack(wf, tid)
  if tid and tid ~= '' then
    -- NOGROUP (Redis lost the group) is not an error here: nobody holds the entry.
    redis.pcall('XACK', k_queue(wf), GROUP, tid)
    redis.call('XDEL', k_queue(wf), tid)
  end
end

local function split_lines(s)
  local out = {}
  if s then
    for part in string.gmatch(s, '[^\n]+') do out[#out + 1] = part end
  end
  return out
end

local function clear_wait(id, wk)
  for _, key in ipairs(split_lines(wk)) do redis.call('SREM', k_waiters(key), id) end
  redis.call('ZREM', K_TIMERS, id)
  redis.call('HDEL', k_run(id), 'wake', 'wk', 'ws')
end

-- A suspended run becomes runnable: one task, exactly. (A run asked to pause
-- becomes paused instead, with no task, until resumed.)
-- A run no worker holds becomes runnable (one task), or paused (no task) when a
-- pause was asked for.
local function runnable(id, wf, st, created, paused)
  WORKFLOW_OF[id] = wf
  if paused then
    set_status(id, st, 'paused', created)
    journal_add(id, RUN_PAUSED)
  else
    set_status(id, st, 'pending', created)
    enqueue(id, wf)
  end
end

local function wake(id, wf, st, created, wk)
  clear_wait(id, wk)
  runnable(id, wf, st, created, redis.call('HGET', k_run(id), 'pz') == '1')
end

local function finalize(id, st, new, created, now, retention_ms)
  set_status(id, st, new, created)
  redis.call('HSET', k_run(id), 'fa', n2s(now), 'ua', n2s(now), 'task', '')
  redis.call('HDEL', k_run(id), 'cr', 'pz', 'blk')
  redis.call('DEL', k_lease(id))
  redis.call('ZADD', K_RETENTION, now + retention_ms, id)
  notify_watchers(id, 'e')
end

-- The fence: the caller's epoch must still be the run's and the run still running.
-- A lease key that expired without a takeover (epoch unchanged) still counts: no
-- other writer can exist until a claim bumps the epoch.
local function fenced(id, worker, epoch)
  local h = redis.call('HMGET', k_run(id), 'ep', 'st', 'wf', 'ca', 'cr', 'task', 'pz')
  if h[1] ~= epoch or h[2] ~= 'running' then return nil end
  WORKFLOW_OF[id] = h[3]
  local holder = redis.call('GET', k_lease(id))
  if holder and holder ~= worker .. ':' .. epoch then return nil end
  return h
end

-- Append pre-encoded journal entries ARGV[from .. from+n-1]; returns their ids.
local function append_events(id, from, n)
  local seqs = {}
  for i = 0, n - 1 do
    seqs[#seqs + 1] = journal_add(id, ARGV[from + i])
  end
  return seqs
end

local function apply_patch(id, delta, cur, total, now)
  if delta ~= '0' then redis.call('HINCRBY', k_run(id), 'cs', delta) end
  local fields = { 'ua', n2s(now) }
  if cur ~= '' then fields[#fields + 1] = 'cur'; fields[#fields + 1] = cur end
  if total ~= '' then fields[#fields + 1] = 'ts'; fields[#fields + 1] = total end
  redis.call('HSET', k_run(id), unpack(fields))
end

local function parse_id(s)
  local ms, seq = string.match(s, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_gt(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am > bm or (am == bm and as > bs)
end

-- The event key on which a child run's outcome reaches its parent.
local function child_key(id) return 'keel.child:' .. id end

-- An event_received entry: keel-proto's template (EVENT_RECEIVED, generated)
-- filled with the values only this script knows.
local function event_received_json(step, key, eid, data)
  local p = EVENT_RECEIVED
  return p[1] .. cjson.encode(step) .. p[2] .. cjson.encode(key) .. p[3] .. cjson.encode(eid) .. p[4] .. data .. p[5]
end

-- Keep an event for the lookback window and wake every run waiting on its key,
-- each exactly once (its waiter entries go in the same step). An event goes
-- into every partition: the first gives it its id (its stream id there), the
-- others keep that id beside their own stream id (field `g`), so journals say
-- the same id everywhere; `evf` floors stay local stream ids.
local function deliver(key, data, lookback_ms, max_len, gid)
  local sid
  if gid and gid ~= '' then
    sid = redis.call('XADD', k_events(key), 'MAXLEN', '~', max_len, '*', 'd', data, 'g', gid)
  else
    sid = redis.call('XADD', k_events(key), 'MAXLEN', '~', max_len, '*', 'd', data)
    gid = sid
  end
  local eid = gid
  redis.call('PEXPIRE', k_events(key), lookback_ms)
  local now = n2s(now_ms())
  local woken = {}
  for _, id in ipairs(redis.call('SMEMBERS', k_waiters(key))) do
    local h = redis.call('HMGET', k_run(id), 'st', 'wf', 'ca', 'wk', 'ws')
    -- The step waiting on this key (the first, if several wait on it).
    local step
    local steps = split_lines(h[5])
    for i, k in ipairs(split_lines(h[4])) do if k == key and not step then step = steps[i] end end
    if h[1] == 'waiting' and step then
      journal_add(id, event_received_json(step, key, eid, data))
      redis.call('HINCRBY', k_run(id), 'cs', 1)
      redis.call('HSET', k_run(id), 'evf:' .. key, sid, 'cur', step, 'ua', now)
      wake(id, h[2], h[1], h[3], h[4])
      woken[#woken + 1] = id
    else
      redis.call('SREM', k_waiters(key), id)
    end
  end
  return eid, woken
end

-- A finished child run tells its parent (if it has one) how it ended: here when
-- the parent is in this partition, else through this partition's relay stream,
-- which the timer duty forwards to the parent's partition (partitions.rs).
local function notify_parent(id, outcome, lookback_ms, max_len)
  if outcome == '' then return end
  local h = redis.call('HMGET', k_run(id), 'par', 'pp')
  if not h[1] then return end
  if h[2] and h[2] ~= P then
    redis.call('XADD', K_RELAY, '*', 'to', h[2], 'k', child_key(id), 'd', outcome)
  else
    deliver(child_key(id), outcome, lookback_ms, max_len)
  end
end

-- A claimer's versions: 'wf=1,2' lines -> { wf = { ['1'] = true, ['2'] = true } };
-- nil (any version) for ''.
local function parse_versions(text)
  if text == nil or text == '' then return nil end
  local out = {}
  for line in string.gmatch(text, '[^\n]+') do
    local wf, list = string.match(line, '^(.-)=(.*)$')
    if wf then
      local set = {}
      for v in string.gmatch(list, '[^,]+') do set[v] = true end
      out[wf] = set
    end
  end
  return out
end

-- Turn one delivered queue entry into a lease with a new epoch, and hand back
-- what replay needs (summary + journal). `c` holds the claim's settings:
-- worker, lease_ms, max_deliveries, reason, failed_entry, error, retention,
-- child_outcome, lookback, lookback_max.
local function claim_one(c, wf, tid, id)
  local q = k_queue(wf)
  -- The delivery must be ours: a reclaimer may have taken it since, or the holder
  -- taken it back with a heartbeat.
  local pend = redis.call('XPENDING', q, GROUP, tid, tid, 1)
  if #pend == 0 then return { 'SKIP', 'task already finished' } end
  if pend[1][2] ~= c.worker then return { 'BUSY', 'task delivered to another worker' } end
  local deliveries = tonumber(pend[1][4])

  local h = redis.call('HMGET', k_run(id), 'st', 'task', 'ca', 'wf', 'ver')
  if not h[1] then ack(wf, tid); return { 'SKIP', 'run no longer exists' } end
  local st = h[1]
  WORKFLOW_OF[id] = h[4]
  if FINAL[st] then ack(wf, tid); return { 'SKIP', 'run is ' .. st } end
  if h[2] ~= tid then ack(wf, tid); return { 'SKIP', 'not the run\'s current task (duplicate)' } end
  if redis.call('EXISTS', k_lease(id)) == 1 then
    -- Its holder is alive (it heartbeated after the reclaimer picked the entry).
    return { 'BUSY', 'lease still held' }
  end

  -- A version the claimer does not run: set the run aside (no lease, no epoch)
  -- until a worker that has it registers (unpark.lua), instead of handing it out.
  local allowed = c.versions and c.versions[wf]
  if allowed and not allowed[h[5]] then
    ack(wf, tid)
    redis.call('HSET', k_run(id), 'task', '', 'blk', 'no live worker has ' .. wf .. ' v' .. h[5])
    set_status(id, st, 'pending', h[3])
    redis.call('ZADD', k_parked(wf), h[5], id)
    return { 'PARKED', h[5] }
  end

  local now = now_ms()
  if deliveries > tonumber(c.max_deliveries) then
    redis.call('XADD', K_DEAD, 'MAXLEN', '~', '10000', '*', 'run_id', id, 'workflow', wf, 'task_id', tid,
      'deliveries', deliveries, 'reason', c.reason)
    journal_add(id, c.failed_entry)
    redis.call('HSET', k_run(id), 'err', c.error)
    finalize(id, st, 'failed', h[3], now, tonumber(c.retention))
    ack(wf, tid)
    notify_parent(id, c.child_outcome, c.lookback, c.lookback_max)
    return { 'DEAD', c.reason }
  end

  local epoch = redis.call('HINCRBY', k_run(id), 'ep', 1)
  redis.call('SET', k_lease(id), c.worker .. ':' .. epoch, 'PX', c.lease_ms)
  set_status(id, st, 'running', h[3])
  redis.call('HSET', k_run(id), 'ua', n2s(now))
  return { 'CLAIMED', epoch, deliveries, n2s(now), redis.call('HGETALL', k_run(id)),
    redis.call('XRANGE', k_journal(id), '-', '+'), id, tid, wf }
end
