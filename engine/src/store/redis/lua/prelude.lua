-- Shared by every operation (after the constants generated from Rust). The
-- same text runs two ways (scripts.rs): loaded once as a Redis Functions
-- library, each operation a registered function; or, where Redis has no
-- FUNCTION, prepended to each operation's EVALSHA script. Either way an
-- operation starts with `begin(keys, args)`. It gets one argument, args[1]: a
-- JSON object, decoded into `A`. Its keys come in KEYS, built by keys.rs (see
-- ops/mod.rs): `A.k` says where each one is, by kind and name, and Lua only
-- ever looks a declared key up; looking up one that was not declared is an
-- error. KEYS[1] is the partition prefix: every declared key shares its hash
-- tag, so an operation lives in one Cluster slot, and KEYS[1] routes it there.

-- One call's state (reset by `begin`).
local A, KI, P, KEYS_
-- The workflow of each run touched by this call, read once.
local WORKFLOW_OF
-- The priority of each run touched by this call (`pr`, absent for the
-- default), read once: which of its workflow's queues holds its task.
local PRIORITY_OF
-- Whether each run is watched (see notify_watchers), read once.
local WATCHED
-- Whether each run has a callback URL, read once.
local HAS_CALLBACK
-- Whether any webhook subscription exists (the partition's flag), read once.
local HOOKS_EXIST
-- `relayed`: a note for another run went into the relay (see notify_parent),
-- for the caller to forward at once.
local RELAYED
-- What this call counted for /metrics (see count_stats).
local COUNTS, HAS_COUNTS
-- With CHECK_KEYS: the keys this call declared.
local DECLARED

-- Every Redis call goes through `call`/`pcall_` (set by `begin`: a library
-- being loaded has no redis.call yet). With CHECK_KEYS (the test stores), each
-- key a command touches must be one of KEYS, or the call fails.
local call, pcall_
local checked_call, checked_pcall
if CHECK_KEYS then
  -- Which arguments of each command the operations use are keys.
  local FIRST = { GET = 1, SET = 1, HGET = 1, HSET = 1, HMGET = 1, HDEL = 1, HINCRBY = 1, HEXISTS = 1,
    HGETALL = 1, ZADD = 1, ZREM = 1, ZRANGE = 1, ZRANGEBYSCORE = 1, ZSCORE = 1, SADD = 1, SREM = 1,
    SMEMBERS = 1, XADD = 1, XACK = 1, XDEL = 1, XRANGE = 1, XPENDING = 1, XCLAIM = 1, XAUTOCLAIM = 1, XREVRANGE = 1,
    PEXPIRE = 1 }
  local ALL = { DEL = 1, EXISTS = 1 }
  -- XGROUP CREATE <key> …; XREADGROUP … STREAMS <keys…> <ids…>.
  local SECOND = { XGROUP = 1 }
  local NONE = { TIME = 1, PUBLISH = 1 }
  local function check(cmd, ...)
    local c = string.upper(cmd)
    if NONE[c] then return end
    local args = { ... }
    local last
    if c == 'XREADGROUP' then
      for i, a in ipairs(args) do
        if string.upper(a) == 'STREAMS' then
          local n = (#args - i) / 2
          for j = i + 1, i + n do
            if not DECLARED[args[j]] then error('keel key check: XREADGROUP touches undeclared key ' .. tostring(args[j])) end
          end
        end
      end
      return
    end
    local first = 1
    if FIRST[c] then last = 1 elseif ALL[c] then last = #args
    elseif SECOND[c] then first, last = 2, 2
    else error('keel key check: ' .. c .. ' is not a command the key check knows; add it') end
    for i = first, last do
      if not DECLARED[args[i]] then error('keel key check: ' .. c .. ' touches undeclared key ' .. tostring(args[i])) end
    end
  end
  checked_call = function(cmd, ...) check(cmd, ...); return redis.call(cmd, ...) end
  checked_pcall = function(cmd, ...) check(cmd, ...); return redis.pcall(cmd, ...) end
end

local function begin(keys, args)
  KEYS_, A = keys, cjson.decode(args[1])
  KI, P = A.k or {}, keys[1]
  WORKFLOW_OF, PRIORITY_OF, WATCHED, HAS_CALLBACK, HOOKS_EXIST, RELAYED = {}, {}, {}, {}, nil, false
  COUNTS, HAS_COUNTS = {}, false
  if CHECK_KEYS then
    call, pcall_ = checked_call, checked_pcall
    DECLARED = {}
    for _, key in ipairs(keys) do DECLARED[key] = true end
  else
    call, pcall_ = redis.call, redis.pcall
  end
end

local function undeclared(kind, name)
  error('keel: key ' .. kind .. ' ' .. tostring(name) .. ' was not declared by the caller')
end
-- A declared key: one of a kind (`timers`), or one per name (`run` per run id).
local function K(kind)
  local i = KI[kind]
  if type(i) ~= 'number' then undeclared(kind, '') end
  return KEYS_[i]
end
local function KN(kind, name)
  local t = KI[kind]
  local i = t and t[name]
  if type(i) ~= 'number' then undeclared(kind, name) end
  return KEYS_[i]
end
-- A run's own keys: named one by one, or as a run block (`rb`: the index of
-- its summary key, with its journal, lease and watch keys right after it).
local function k_own(kind, offset, id)
  local t = KI[kind]
  local i = t and t[id]
  if type(i) == 'number' then return KEYS_[i] end
  local rb = KI.rb
  i = rb and rb[id]
  if type(i) ~= 'number' then undeclared(kind, id) end
  return KEYS_[i + offset]
end
local function k_run(id) return k_own('run', 0, id) end
local function k_journal(id) return k_own('journal', 1, id) end
local function k_lease(id) return k_own('lease', 2, id) end
local function k_watch(id) return k_own('watch', 3, id) end
-- A workflow's queue of priority `pr` (a number or text; absent, false or
-- the default: the workflow's first queue), declared as `<wf>\n<pr>`.
local function k_queue(wf, pr)
  pr = pr and tostring(pr) or ''
  if pr == '' or pr == DEFAULT_PRIORITY then return KN('queue', wf) end
  return KN('queue', wf .. '\n' .. pr)
end
local function k_runs_wf(wf) return KN('runs_wf', wf) end
local function k_runs_status(st) return KN('status', st) end
local function k_runs_wf_status(wf, st) return KN('wf_status', wf .. '\n' .. st) end
local function k_parked(wf) return KN('parked', wf) end
local function k_runs_label(name, value) return KN('label', name .. '=' .. value) end
local function k_waiters(key) return KN('waiters', key) end
local function k_events(key) return KN('events', key) end
local function k_idem(key) return KN('idem', key) end

-- The reply: one JSON object (cjson writes an empty table as {}; the Rust
-- side reads {} as an empty list where it wants one).
local function reply(t)
  if RELAYED then t.relayed = true end
  -- The counts follow a newline (cjson escapes every newline inside JSON).
  if HAS_COUNTS then return cjson.encode(t) .. '\n' .. cjson.encode(COUNTS) end
  return cjson.encode(t)
end

-- Two optional texts are the same (Redis's missing field is false, JSON's is nil).
local function same(a, b) return (a or '') == (b or '') end

-- Integers as decimal text (tostring would switch to exponent form past 14 digits).
local function n2s(x) return string.format('%.0f', x) end

-- Server time: lease deadlines and timers never depend on a worker's clock.
local function now_ms()
  local t = call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local FINAL = { completed = true, failed = true, cancelled = true }

-- Whether a run has its own callback URL (`cb`), read once.
local function has_callback(id)
  if HAS_CALLBACK[id] == nil then HAS_CALLBACK[id] = call('HEXISTS', k_run(id), 'cb') == 1 end
  return HAS_CALLBACK[id]
end

local function hooks_exist()
  if HOOKS_EXIST == nil then HOOKS_EXIST = call('EXISTS', K('hooks')) == 1 end
  return HOOKS_EXIST
end

-- Counters for /metrics, per workflow (`<workflow>|<stat>`), and a histogram
-- of step durations (`step_ms|<upper bound>`, `step_ms|sum`). The entry's type
-- and duration come with it from Rust (see `journal_add`). Counted here, added
-- to the stats hash by the caller (redis/counters.rs), handed back with the
-- reply: no command per count inside the script.
local function count(field, n)
  COUNTS[field] = (COUNTS[field] or 0) + n
  HAS_COUNTS = true
end

local function count_stats(id, entry)
  local stat = STATS[entry.t]
  if not stat then return end
  local wf = WORKFLOW_OF[id]
  if not wf then
    wf = call('HGET', k_run(id), 'wf') or '?'
    WORKFLOW_OF[id] = wf
  end
  count(wf .. '|' .. stat, 1)
  local ms = entry.ms
  if ms then
    local bucket = '+Inf'
    for _, bound in ipairs(STEP_MS_BUCKETS) do
      if ms <= bound then bucket = tostring(bound); break end
    end
    count('step_ms|' .. bucket, 1)
    count('step_ms|sum', ms)
  end
end

-- Somebody long-polls this run or streams its journal (its watch key lives
-- while they do): tell the servers, whose one subscriber connection wakes the
-- waiters in process: `j:<id>` when the journal grew (journal streams wake),
-- `e:<id>` when the run ended (long-polls wake too). Runs nobody watches pay
-- one EXISTS per script.
local function notify_watchers(id, what)
  if WATCHED[id] == nil then
    -- Most runs are not watched and most partitions have no webhooks: one
    -- EXISTS over both answers both when neither is there.
    if HOOKS_EXIST == nil and KI.hooks and call('EXISTS', K('hooks'), k_watch(id)) == 0 then
      HOOKS_EXIST = false
      WATCHED[id] = false
    else
      WATCHED[id] = call('EXISTS', k_watch(id)) == 1
    end
  end
  if WATCHED[id] then call('PUBLISH', A.ch, what .. ':' .. id) end
end

-- Append one journal entry: `{ e = <the entry, serialized by keel-proto>,
-- t = <its type>, ms = <a step's duration, if any> }`. When anyone listens (a
-- webhook subscription exists, or the run has a callback URL) and it is a
-- webhook event, it also goes to the outbox, in the same atomic step.
local function journal_add(id, entry)
  local seq = call('XADD', k_journal(id), '*', 'e', entry.e)
  notify_watchers(id, 'j')
  count_stats(id, entry)
  local hook = HOOKS[entry.t]
  if hook and (hooks_exist() or has_callback(id)) then
    call('XADD', K('outbox'), '*', 'run_id', id, 'seq', seq, 'type', hook)
  end
  return seq
end

-- Moves the run between the status indexes (all runs, and its workflow's);
-- the caller writes `st` itself (in an HSET it makes anyway).
local function index_status(id, old, new, created)
  local wf = WORKFLOW_OF[id] or call('HGET', k_run(id), 'wf')
  WORKFLOW_OF[id] = wf
  if old then
    call('ZREM', k_runs_status(old), id)
    call('ZREM', k_runs_wf_status(wf, old), id)
  end
  call('ZADD', k_runs_status(new), created, id)
  call('ZADD', k_runs_wf_status(wf, new), created, id)
end

-- Moves the run to another status: indexes and `st`.
local function set_status(id, old, new, created)
  if old ~= new then
    index_status(id, old, new, created)
    call('HSET', k_run(id), 'st', new)
  end
end

-- Labels are an index each (`name=value`), written at the start, removed at expiry.
local function index_labels(id, labels_json, created, add)
  if labels_json == nil or labels_json == false or labels_json == '' then return end
  for name, value in pairs(cjson.decode(labels_json)) do
    if add then
      call('ZADD', k_runs_label(name, value), created, id)
    else
      call('ZREM', k_runs_label(name, value), id)
    end
  end
end

-- A run's priority (`pr`), read once per call unless the caller knew it.
local function priority_of(id)
  local pr = PRIORITY_OF[id]
  if pr == nil then
    pr = call('HGET', k_run(id), 'pr') or false
    PRIORITY_OF[id] = pr
  end
  return pr
end

local function enqueue(id, wf)
  local pr = priority_of(id)
  local q = k_queue(wf, pr)
  -- A queue of another priority than the default is made on first use: its
  -- consumer group too (workers create the default queues' groups).
  if pr and tostring(pr) ~= DEFAULT_PRIORITY then pcall_('XGROUP', 'CREATE', q, GROUP, '0', 'MKSTREAM') end
  local tid = call('XADD', q, '*', 'v', '1', 'run_id', id)
  call('HSET', k_run(id), 'task', tid)
  return tid
end

-- Ack and delete a task entry: an acked task never stays in the stream, so the
-- queue's length is exactly the work not yet finished.
-- `pr`: the priority of the queue the entry is in.
local function ack(wf, pr, tid)
  if tid and tid ~= '' then
    local q = k_queue(wf, pr)
    -- NOGROUP (Redis lost the group) is not an error here: nobody holds the entry.
    pcall_('XACK', q, GROUP, tid)
    call('XDEL', q, tid)
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
  for _, key in ipairs(split_lines(wk)) do call('SREM', k_waiters(key), id) end
  call('ZREM', K('timers'), id)
  call('HDEL', k_run(id), 'wake', 'wk', 'ws', 'blk')
end

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
  runnable(id, wf, st, created, call('HGET', k_run(id), 'pz') == '1')
end

-- `fields`: more of the run's fields to write in the same HSET (a field/value
-- list; finish passes its summary patch and the output or error).
local function finalize(id, st, new, created, now, fields)
  fields = fields or {}
  if st ~= new then
    index_status(id, st, new, created)
    fields[#fields + 1] = 'st'
    fields[#fields + 1] = new
  end
  fields[#fields + 1] = 'fa'
  fields[#fields + 1] = n2s(now)
  fields[#fields + 1] = 'ua'
  fields[#fields + 1] = n2s(now)
  fields[#fields + 1] = 'task'
  fields[#fields + 1] = ''
  call('HSET', k_run(id), unpack(fields))
  -- (`lr`: a finished run keeps no lease write's answer; see `fenced`.)
  call('HDEL', k_run(id), 'cr', 'pz', 'blk', 'lr')
  call('DEL', k_lease(id))
  call('ZADD', K('retention'), now + A.retention_ms, id)
  notify_watchers(id, 'e')
end

-- The fence: the caller's epoch must still be the run's and the run still running.
-- A lease key that expired without a takeover (epoch unchanged) still counts: no
-- other writer can exist until a claim bumps the epoch.
-- The lease key itself need not be read: only a claim sets a lease, and it
-- bumps the epoch in the same script, so a lease of this epoch is this
-- worker's (`worker` names the holder in the lease key, for operators).
--
-- A lease's write sent twice: a cluster client re-sends a script whose
-- connection dropped, and the first send may have run (and reached the
-- replica that is now master). Each fenced write carries a token (`A.w`: the
-- lease's epoch and the writer's count, so unique for the run); the run keeps
-- the last one (`lw`) and, while it runs, its answer in short (`lr`, see
-- `short_answer`; a run's end keeps only the token, and its answer is DONE).
-- The same token again: nil and that answer, and the caller changes nothing.
local answer_of
local function fenced(id, worker, epoch)
  local h = call('HMGET', k_run(id), 'ep', 'st', 'wf', 'ca', 'cr', 'task', 'pz', 'cb', 'cs', 'pr', 'lw', 'lr')
  if A.w and h[11] == A.w then return nil, answer_of(id, h[12] or 'D') end
  if h[1] ~= tostring(epoch) or h[2] ~= 'running' then return nil end
  WORKFLOW_OF[id] = h[3]
  PRIORITY_OF[id] = h[10]
  HAS_CALLBACK[id] = h[8] ~= false
  return h
end

-- A write's answer kept short: a run hash stays a compact listpack only
-- while every value is under 64 bytes (hash-max-listpack-value), and one
-- longer value would make every run that ever wrote one twice the size.
-- 'D' DONE, 'C' CANCELLED, 'E<seq>' EVENT (its entry is in the journal at
-- seq), 'A<cancel><pause>:<seqs>' an append's answer, its entry ids separated
-- by ';', an id of the same millisecond as the one before written `-<n>`.
local function short_append(seqs, cancel, pause)
  local out, last_ms = {}, nil
  for _, s in ipairs(seqs) do
    local ms, n = string.match(s, '^(%d+)%-(%d+)$')
    out[#out + 1] = ms == last_ms and ('-' .. n) or s
    last_ms = ms
  end
  return 'A' .. (cancel and '1' or '0') .. (pause and '1' or '0') .. ':' .. table.concat(out, ';')
end

answer_of = function(id, short)
  local kind = string.sub(short, 1, 1)
  if kind == 'C' then return reply({ r = 'CANCELLED' }) end
  if kind == 'E' then
    local seq = string.sub(short, 2)
    local found = call('XRANGE', k_journal(id), seq, seq)
    return reply({ r = 'EVENT', seq = seq, entry = found[1][2][2] })
  end
  if kind ~= 'A' then return reply({ r = 'DONE' }) end
  local seqs, last_ms = {}, nil
  for part in string.gmatch(string.sub(short, 5), '[^;]+') do
    if string.sub(part, 1, 1) == '-' then
      seqs[#seqs + 1] = last_ms .. part
    else
      seqs[#seqs + 1] = part
      last_ms = string.match(part, '^(%d+)')
    end
  end
  return reply({ r = 'OK', seqs = seqs, cancel = string.sub(short, 2, 2) == '1', pause = string.sub(short, 3, 3) == '1' })
end

-- This write's token, and its answer in short unless the run ends with it,
-- added to the run's field/value list (see `fenced`).
local function remember(fields, answer)
  if A.w then
    fields[#fields + 1] = 'lw'
    fields[#fields + 1] = A.w
    if answer then
      fields[#fields + 1] = 'lr'
      fields[#fields + 1] = answer
    end
  end
  return fields
end

-- `answer`, after keeping it in short with this write's token (see `fenced`).
local function remembered(id, answer, short)
  if A.w then call('HSET', k_run(id), unpack(remember({}, short))) end
  return answer
end

-- Append the entries Rust encoded; returns their ids.
local function append_entries(id, entries)
  local seqs = {}
  for _, entry in ipairs(entries or {}) do
    seqs[#seqs + 1] = journal_add(id, entry)
  end
  return seqs
end

-- The summary fields a lease's entries change (`SummaryPatch` in Rust), as a
-- field/value list. `h` is what `fenced` read: the completed-step count is
-- set from it.
local function patch_fields(patch, now, h)
  local fields = { 'ua', n2s(now) }
  if patch.delta and patch.delta ~= 0 then
    fields[#fields + 1] = 'cs'
    fields[#fields + 1] = n2s((tonumber(h[9]) or 0) + patch.delta)
  end
  if patch.cur then fields[#fields + 1] = 'cur'; fields[#fields + 1] = patch.cur end
  if patch.total then fields[#fields + 1] = 'ts'; fields[#fields + 1] = tostring(patch.total) end
  return fields
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

-- An event_received entry: keel-proto's template (EVENT_RECEIVED, generated)
-- filled with the values only this script knows.
local function event_received(step, key, eid, data)
  local p = EVENT_RECEIVED
  return { t = 'event_received',
    e = p[1] .. cjson.encode(step) .. p[2] .. cjson.encode(key) .. p[3] .. cjson.encode(eid) .. p[4] .. data .. p[5] }
end

-- A finished child run tells its parent (if it has one) how it ended, through
-- this partition's relay stream: the caller forwards it at once, the timer
-- duty whatever a crash left (partitions.rs), as an event in the parent's
-- partition.
local function notify_parent(id, outcome)
  if outcome == nil or outcome == '' then return end
  local h = call('HMGET', k_run(id), 'par', 'pp')
  if not h[1] then return end
  call('XADD', K('relay'), '*', 'to', h[2] or P, 'k', CHILD_KEY_PREFIX .. id, 'd', outcome)
  RELAYED = true
end
