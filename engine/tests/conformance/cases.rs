//! The conformance cases. Each takes a fresh [`Fixture`] and asserts what a user
//! of the store relies on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keel_engine::proto::{ErrorInfo, JournalEvent, RunId, RunStatus, WorkerInfo};
use keel_engine::{
    CancelOutcome, Claim, ClaimOnCreate, ClaimedTask, CreateRun, Error, EventWait, Finish, Finished, RunQuery, Store,
    Suspension,
};
use serde_json::json;

use crate::fixture::{Fixture, Opts};
use keel_engine::flow::{FlowRule, Slot, SlotAnswer, SlotRequest};
use keel_engine::{InboxPage, InboxPush, MAX_INBOX_MESSAGES};

const WF: &str = "orders";

fn start(input: serde_json::Value) -> CreateRun {
    CreateRun { workflow: WF.into(), version: 1, input, ..Default::default() }
}

fn claim_req(worker: &str, lease_ms: u64, block_ms: u64) -> Claim {
    Claim {
        workflows: vec![WF.into()],
        worker_id: worker.into(),
        lease: Duration::from_millis(lease_ms),
        max: 10,
        block: Duration::from_millis(block_ms),
        versions: Default::default(),
    }
}

async fn claim_one(store: &dyn Store, worker: &str) -> ClaimedTask {
    let mut req = claim_req(worker, 30_000, 3_000);
    req.max = 1;
    let mut claimed = store.claim(&req).await.expect("claim");
    assert_eq!(claimed.len(), 1, "expected exactly one task for {worker}");
    claimed.remove(0)
}

/// Claim `id`'s task, handing back any other claimed on the way: a partitioned
/// store claims in order within a partition, not across partitions.
async fn claim_run(store: &dyn Store, worker: &str, id: &RunId) -> ClaimedTask {
    claim_run_of(store, &claim_req(worker, 30_000, 3_000), id).await
}

/// [`claim_run`] with these claim settings.
async fn claim_run_of(store: &dyn Store, req: &Claim, id: &RunId) -> ClaimedTask {
    let one = Claim { max: 1, ..req.clone() };
    for _ in 0..50 {
        let task = store.claim(&one).await.expect("claim").pop().expect("a task");
        if task.lease.run_id == *id {
            return task;
        }
        store.finish(&task.lease, &[], Finish::Release).await.expect("release");
    }
    panic!("the task of {id} was never claimed");
}

async fn nothing_to_claim(store: &dyn Store, worker: &str) {
    let claimed = store.claim(&claim_req(worker, 30_000, 0)).await.expect("claim");
    assert!(claimed.is_empty(), "expected no task, got {:?}", claimed.iter().map(|c| &c.lease).collect::<Vec<_>>());
}

async fn status(store: &dyn Store, id: &RunId) -> RunStatus {
    store.get_run(id).await.expect("get").expect("run exists").status
}

async fn journal_types(store: &dyn Store, id: &RunId) -> Vec<String> {
    store
        .read_journal(id, None, 1000)
        .await
        .expect("journal")
        .into_iter()
        .map(|r| serde_json::to_value(&r.entry).expect("json")["type"].as_str().expect("type").to_owned())
        .collect()
}

fn step_done(step: &str, output: serde_json::Value) -> JournalEvent {
    JournalEvent::StepCompleted { step_id: step.into(), attempt: 1, output, pos: None, duration_ms: None }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Server time now, as the store sees it (the claim reports it; a run's
/// `updated_at_ms` too). Used to place timers relative to the store's clock.
async fn store_now(store: &dyn Store) -> u64 {
    let probe = store.create_run(CreateRun { workflow: "clock".into(), ..start(json!(null)) }).await.expect("probe");
    store.get_run(&probe.run_id).await.expect("get").expect("probe run").created_at_ms
}

pub async fn create_writes_summary_journal_indexes_and_task(f: Fixture) {
    let s = f.store.as_ref();
    let labels = BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]);
    let created =
        s.create_run(CreateRun { labels: labels.clone(), ..start(json!({"order": 42})) }).await.expect("create");
    assert!(created.created);
    let run = s.get_run(&created.run_id).await.unwrap().expect("summary");
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(run.workflow, WF);
    assert_eq!(run.version, 1);
    assert_eq!(run.epoch, 0);
    assert_eq!(run.labels, labels);
    assert!(run.created_at_ms > 1_600_000_000_000, "server time in ms");
    // UUIDv7 ids sort by time.
    let second = s.create_run(start(json!({"order": 43}))).await.unwrap();
    assert!(second.run_id > created.run_id);

    let journal = s.read_journal(&created.run_id, None, 100).await.unwrap();
    assert_eq!(journal.len(), 1);
    match &journal[0].entry.event {
        JournalEvent::RunStarted { workflow, input, labels: l, .. } => {
            assert_eq!(workflow, WF);
            assert_eq!(input, &json!({"order": 42}));
            assert_eq!(l, &labels);
        }
        other => panic!("first entry must be run_started, got {other:?}"),
    }
    assert_eq!(journal[0].entry.v, 1);

    let page = s.list_runs(&RunQuery { status: Some(RunStatus::Pending), ..Default::default() }).await.unwrap();
    assert_eq!(page.runs.len(), 2);
    let task = claim_one(s, "w1").await;
    if f.claims_in_creation_order() {
        assert_eq!(task.lease.run_id, created.run_id, "tasks are claimed in order");
    }
}

pub async fn invalid_requests_are_refused_and_write_nothing(f: Fixture) {
    let s = f.store.as_ref();
    let bad_name = s.create_run(CreateRun { workflow: "no spaces".into(), ..start(json!(1)) }).await;
    assert!(matches!(bad_name, Err(Error::Id(_))), "{bad_name:?}");
    let bad_key = s.create_run(CreateRun { idempotency_key: Some("a b".into()), ..start(json!(1)) }).await;
    assert!(matches!(bad_key, Err(Error::Id(_))), "{bad_key:?}");
    let bad_event = s.deliver_event("", &json!(1)).await;
    assert!(bad_event.is_err());
    let bad_cursor = s.list_runs(&RunQuery { cursor: Some("nonsense".into()), ..Default::default() }).await;
    assert!(matches!(bad_cursor, Err(Error::BadCursor(_))));
    let bad_claim = s.claim(&Claim { workflows: vec![], ..claim_req("w", 1000, 0) }).await;
    assert!(matches!(bad_claim, Err(Error::Invalid(_))));
    assert!(s.list_runs(&RunQuery::default()).await.unwrap().runs.is_empty(), "nothing was written");
    if let Some(keys) = f.redis_keys_mentioning("").await {
        // (The layout record is written when the store connects.)
        let written: Vec<_> = keys.iter().filter(|k| !k.ends_with("}:layout")).collect();
        assert!(written.is_empty(), "Redis holds no keys after refused requests: {written:?}");
    }

    // A suspension that waits for nothing is refused and leaves the lease intact.
    s.create_run(start(json!(1))).await.unwrap();
    let task = claim_one(s, "w1").await;
    let refused = s.finish(&task.lease, &[], Finish::Suspend(Suspension::default())).await;
    assert!(matches!(refused, Err(Error::Invalid(_))));
    assert_eq!(status(s, &task.lease.run_id).await, RunStatus::Running);
    s.finish(&task.lease, &[], Finish::Complete { output: json!(null) }).await.expect("lease still held");
}

pub async fn idempotency_key_maps_to_one_run_and_refuses_other_input(f: Fixture) {
    let s = f.store.as_ref();
    let req = CreateRun { idempotency_key: Some("order-42".into()), ..start(json!({"a": 1, "b": 2})) };
    let first = s.create_run(req.clone()).await.unwrap();
    assert!(first.created);
    // The same input with keys in another order is the same input.
    let again = s
        .create_run(CreateRun { input: serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap(), ..req.clone() })
        .await
        .unwrap();
    assert_eq!(again, keel_engine::Created { run_id: first.run_id.clone(), created: false });
    let other = s.create_run(CreateRun { input: json!({"a": 2}), ..req.clone() }).await;
    match other {
        Err(Error::IdempotencyConflict { run_id, what }) => {
            assert_eq!(run_id, first.run_id);
            assert_eq!(what, "idempotency key");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let other_workflow = s.create_run(CreateRun { workflow: "refunds".into(), ..req }).await;
    assert!(matches!(other_workflow, Err(Error::IdempotencyConflict { .. })));
    assert_eq!(s.list_runs(&RunQuery::default()).await.unwrap().runs.len(), 1);
    assert_eq!(journal_types(s, &first.run_id).await, ["run_started"], "one run_started only");
    claim_one(s, "w").await;
    nothing_to_claim(s, "w").await;
}

pub async fn client_run_id_is_idempotent(f: Fixture) {
    let s = f.store.as_ref();
    let id = RunId::new("order-42.v1").unwrap();
    let req = CreateRun { run_id: Some(id.clone()), ..start(json!({"n": 1})) };
    assert!(s.create_run(req.clone()).await.unwrap().created);
    let again = s.create_run(req.clone()).await.unwrap();
    assert_eq!((again.run_id.clone(), again.created), (id.clone(), false));
    let conflict = s.create_run(CreateRun { input: json!({"n": 2}), ..req }).await;
    assert!(matches!(conflict, Err(Error::IdempotencyConflict { what: "run id", .. })), "{conflict:?}");
    claim_one(s, "w").await;
    nothing_to_claim(s, "w").await;
}

pub async fn hundred_concurrent_creates_with_one_key_make_one_run(f: Fixture) {
    let store = f.store.clone();
    let mut handles = Vec::new();
    for _ in 0..100 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .create_run(CreateRun { idempotency_key: Some("same".into()), ..start(json!({"x": 1})) })
                .await
                .expect("create")
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for h in handles {
        let c = h.await.unwrap();
        created += usize::from(c.created);
        ids.insert(c.run_id);
    }
    assert_eq!(ids.len(), 1, "one run id for all 100 starts");
    assert_eq!(created, 1, "exactly one start created it");
    assert_eq!(store.list_runs(&RunQuery::default()).await.unwrap().runs.len(), 1);
    claim_one(store.as_ref(), "w").await;
    nothing_to_claim(store.as_ref(), "w").await;
}

pub async fn claim_hands_out_a_lease_with_the_journal(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!({"goal": "x"}))).await.unwrap().run_id;
    let task = claim_one(s, "w1").await;
    assert_eq!(task.lease.run_id, id);
    assert_eq!(task.lease.epoch, 1);
    assert_eq!(task.lease.worker_id, "w1");
    assert_eq!(task.lease.workflow, WF);
    assert_eq!(task.deliveries, 1);
    assert_eq!(task.run.status, RunStatus::Running);
    assert_eq!(task.journal.len(), 1);
    assert!(task.now_ms >= task.run.created_at_ms);
    assert_eq!(status(s, &id).await, RunStatus::Running);
    if let Some(pending) = f.redis_pending(WF).await {
        assert_eq!(pending, 1, "the task stays pending until the lease ends");
    }
    nothing_to_claim(s, "w2").await;
}

pub async fn claim_blocks_until_a_task_arrives(f: Fixture) {
    let store = f.store.clone();
    let waiter = tokio::spawn(async move { store.claim(&claim_req("w1", 30_000, 5_000)).await });
    sleep_ms(200).await;
    let id = f.store.create_run(start(json!(1))).await.unwrap().run_id;
    let claimed = tokio::time::timeout(Duration::from_secs(4), waiter).await.expect("claim woke up").unwrap().unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease.run_id, id);
}

pub async fn two_claimers_racing_for_one_task_exactly_one_wins(f: Fixture) {
    // Racing on new deliveries (XREADGROUP)...
    f.store.create_run(start(json!(1))).await.unwrap();
    let (req_a, req_b) = (claim_req("a", 200, 300), claim_req("b", 200, 300));
    let (a, b) = tokio::join!(f.store.claim(&req_a), f.store.claim(&req_b));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 1, "exactly one claimer wins");
    let holder = if a.is_empty() { "b" } else { "a" };
    // ...and on reclaiming one expired lease (XAUTOCLAIM).
    sleep_ms(300).await;
    let (req_c, req_d) = (claim_req("c", 200, 0), claim_req("d", 200, 0));
    let (c, d) = tokio::join!(f.store.reclaim_expired(&req_c), f.store.reclaim_expired(&req_d));
    let (c, d) = (c.unwrap(), d.unwrap());
    assert_eq!(c.len() + d.len(), 1, "exactly one reclaimer wins after {holder}'s lease expired");
    let winner = c.into_iter().chain(d).next().unwrap();
    assert_eq!(winner.lease.epoch, 2);
    assert_eq!(winner.deliveries, 2);
}

pub async fn many_claimers_claim_each_task_exactly_once(f: Fixture) {
    let mut expected = HashSet::new();
    for i in 0..40 {
        expected.insert(f.store.create_run(start(json!(i))).await.unwrap().run_id);
    }
    let mut handles = Vec::new();
    for w in 0..4 {
        let store = f.store.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let mut req = claim_req(&format!("w{w}"), 30_000, 200);
                req.max = 3;
                let got = store.claim(&req).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                for task in got {
                    store.finish(&task.lease, &[], Finish::Complete { output: json!(w) }).await.unwrap();
                    mine.push(task.lease.run_id);
                }
            }
        }));
    }
    let mut seen = Vec::new();
    for h in handles {
        seen.extend(h.await.unwrap());
    }
    assert_eq!(seen.len(), 40, "every task claimed once, none twice");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
    let done =
        f.store.list_runs(&RunQuery { status: Some(RunStatus::Completed), limit: 100, ..Default::default() }).await;
    assert_eq!(done.unwrap().runs.len(), 40);
}

pub async fn renewed_lease_is_not_reclaimed(f: Fixture) {
    let s = f.store.as_ref();
    s.create_run(start(json!(1))).await.unwrap();
    let task = s.claim(&claim_req("w1", 1000, 2000)).await.unwrap().remove(0);
    for _ in 0..6 {
        sleep_ms(250).await;
        s.renew_lease(&task.lease, Duration::from_millis(1000)).await.expect("renew");
    }
    assert!(s.reclaim_expired(&claim_req("w2", 1000, 0)).await.unwrap().is_empty(), "a live lease is never taken");
    s.append(&task.lease, &[step_done("a", json!(1))]).await.expect("still ours after 1.5 s");
}

pub async fn reclaimable_after_lease_expiry_and_not_before(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let first = s.claim(&claim_req("w1", 1500, 2000)).await.unwrap().remove(0);
    assert!(s.reclaim_expired(&claim_req("w2", 1500, 0)).await.unwrap().is_empty(), "not before expiry");
    sleep_ms(500).await;
    assert!(s.reclaim_expired(&claim_req("w2", 1500, 0)).await.unwrap().is_empty(), "not before expiry");
    sleep_ms(1100).await;
    let taken = s.reclaim_expired(&claim_req("w2", 1500, 0)).await.unwrap();
    assert_eq!(taken.len(), 1, "reclaimable once the lease expired");
    let second = &taken[0];
    assert_eq!(second.lease.run_id, id);
    assert_eq!(second.lease.epoch, first.lease.epoch + 1);
    assert_eq!(second.lease.task_id, first.lease.task_id, "the same task, delivered again");
    assert_eq!(second.deliveries, 2);
    assert_eq!(second.run.epoch, 2);
}

pub async fn stale_lease_is_fenced_out_and_changes_nothing(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let zombie = s.claim(&claim_req("zombie", 200, 2000)).await.unwrap().remove(0);
    s.append(&zombie.lease, &[step_done("one", json!("zombie-1"))]).await.unwrap();
    sleep_ms(300).await;
    let fresh = s.reclaim_expired(&claim_req("fresh", 200, 0)).await.unwrap().remove(0);
    assert_eq!(fresh.lease.epoch, 2);
    s.renew_lease(&fresh.lease, Duration::from_secs(30)).await.unwrap();
    let before = s.read_journal(&id, None, 100).await.unwrap();
    let summary_before = s.get_run(&id).await.unwrap().unwrap();

    let lost = |r: Result<_, Error>| matches!(r, Err(Error::LeaseLost { epoch: 1, .. }));
    assert!(lost(s.append(&zombie.lease, &[step_done("two", json!("zombie-2"))]).await.map(|_| ())));
    assert!(lost(s.renew_lease(&zombie.lease, Duration::from_secs(30)).await));
    assert!(lost(s.finish(&zombie.lease, &[], Finish::Complete { output: json!("zombie") }).await.map(|_| ())));
    assert!(lost(s.finish(&zombie.lease, &[], Finish::Release).await.map(|_| ())));
    assert!(lost(
        s.finish(&zombie.lease, &[], Finish::Suspend(Suspension { wake_at_ms: Some(1), waits: vec![], blocked: None }))
            .await
            .map(|_| ())
    ));

    assert_eq!(s.read_journal(&id, None, 100).await.unwrap(), before, "journal unchanged");
    assert_eq!(s.get_run(&id).await.unwrap().unwrap(), summary_before, "summary unchanged");
    if let Some(pending) = f.redis_pending(WF).await {
        assert_eq!(pending, 1, "nothing was acked: the task is still pending, now the fresh worker's");
    }
    nothing_to_claim(s, "third").await;
    s.append(&fresh.lease, &[step_done("two", json!("fresh-2"))]).await.unwrap();
    s.finish(&fresh.lease, &[], Finish::Complete { output: json!("fresh") }).await.unwrap();
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.output, Some(json!("fresh")));
    assert_eq!(journal_types(s, &id).await, ["run_started", "step_completed", "step_completed", "run_completed"]);
    if let Some(pending) = f.redis_pending(WF).await {
        assert_eq!(pending, 0);
    }
}

pub async fn append_updates_the_summary(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    let appended = s
        .append(
            &task.lease,
            &[
                JournalEvent::ProgressDeclared { total_steps: 3 },
                JournalEvent::StepStarted { step_id: "plan".into(), attempt: 1, pos: None },
                step_done("plan", json!({"items": 2})),
                JournalEvent::StepStarted { step_id: "fetch-1".into(), attempt: 1, pos: None },
            ],
        )
        .await
        .unwrap();
    assert_eq!(appended.seqs.len(), 4);
    assert!(!appended.cancel_requested);
    let mut sorted = appended.seqs.clone();
    sorted.sort_by_key(|seq| {
        let (ms, n) = seq.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), n.parse::<u64>().unwrap())
    });
    assert_eq!(sorted, appended.seqs, "sequence numbers increase");
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.total_steps, Some(3));
    assert_eq!(run.completed_steps, 1);
    assert_eq!(run.current_step.as_deref(), Some("fetch-1"));
    let journal = s.read_journal(&id, None, 100).await.unwrap();
    assert_eq!(journal.len(), 5);
    assert_eq!(journal[3].entry.event, step_done("plan", json!({"items": 2})));
    assert_eq!(journal[3].seq, appended.seqs[2]);
}

pub async fn complete_fail_and_cancel_finish_the_run(f: Fixture) {
    let s = f.store.as_ref();
    let ids: Vec<RunId> = futures_ids(s, 3).await;
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(claim_one(s, "w").await);
    }
    leases.sort_by(|a, b| a.lease.run_id.cmp(&b.lease.run_id));
    let outcome = s
        .finish(&leases[0].lease, &[step_done("last", json!(3))], Finish::Complete { output: json!({"ok": true}) })
        .await
        .unwrap();
    assert_eq!(outcome, Finished::Done);
    let error = ErrorInfo::new("step_failed", "boom").in_step("charge");
    s.finish(&leases[1].lease, &[], Finish::Fail { error: error.clone() }).await.unwrap();
    s.finish(&leases[2].lease, &[], Finish::Cancel { reason: Some("user".into()) }).await.unwrap();

    let done = s.get_run(&ids[0]).await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.output, Some(json!({"ok": true})));
    assert_eq!(done.completed_steps, 1);
    assert!(done.finished_at_ms.is_some());
    assert_eq!(journal_types(s, &ids[0]).await, ["run_started", "step_completed", "run_completed"]);
    let failed = s.get_run(&ids[1]).await.unwrap().unwrap();
    assert_eq!((failed.status, failed.error), (RunStatus::Failed, Some(error)));
    assert_eq!(journal_types(s, &ids[1]).await, ["run_started", "run_failed"]);
    assert_eq!(status(s, &ids[2]).await, RunStatus::Cancelled);
    assert_eq!(journal_types(s, &ids[2]).await, ["run_started", "run_cancelled"]);
    // The tasks were acked with the finish: nothing to redeliver, nothing pending.
    nothing_to_claim(s, "w").await;
    assert!(s.reclaim_expired(&claim_req("w2", 10, 0)).await.unwrap().is_empty());
    if let Some(pending) = f.redis_pending(WF).await {
        assert_eq!(pending, 0);
    }
    // A finished lease is spent.
    assert!(matches!(s.append(&leases[0].lease, &[]).await, Err(Error::LeaseLost { .. })));
    for (st, n) in [(RunStatus::Completed, 1), (RunStatus::Failed, 1), (RunStatus::Running, 0)] {
        let listed = s.list_runs(&RunQuery { status: Some(st), ..Default::default() }).await.unwrap();
        assert_eq!(listed.runs.len(), n, "{st}");
    }
}

async fn futures_ids(s: &dyn Store, n: usize) -> Vec<RunId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(s.create_run(start(json!(i))).await.unwrap().run_id);
    }
    ids.sort();
    ids
}

pub async fn release_hands_the_run_back_at_once(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let first = claim_one(s, "leaving").await;
    s.finish(&first.lease, &[step_done("a", json!(1))], Finish::Release).await.unwrap();
    assert_eq!(status(s, &id).await, RunStatus::Pending);
    let second = claim_one(s, "staying").await;
    assert_eq!(second.lease.run_id, id);
    assert_eq!(second.lease.epoch, 2);
    assert_eq!(second.deliveries, 1, "a fresh task, not a redelivery");
    assert_eq!(second.journal.len(), 2, "the released worker's entries are kept");
}

pub async fn sleep_suspends_until_the_timer_fires(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    let wake = task.now_ms + 800;
    let sleep = JournalEvent::TimerScheduled { step_id: "cool-down".into(), fire_at_ms: wake, pos: None };
    let outcome = s
        .finish(
            &task.lease,
            &[sleep],
            Finish::Suspend(Suspension { wake_at_ms: Some(wake), waits: vec![], blocked: None }),
        )
        .await;
    assert_eq!(outcome.unwrap(), Finished::Done);
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!((run.status, run.wake_at_ms), (RunStatus::Sleeping, Some(wake)));
    nothing_to_claim(s, "w").await;
    assert!(s.fire_due_timers(100).await.unwrap().is_empty(), "not due yet");
    sleep_ms(900).await;
    assert_eq!(s.fire_due_timers(100).await.unwrap(), vec![id.clone()]);
    assert!(s.fire_due_timers(100).await.unwrap().is_empty(), "fired once");
    let resumed = claim_one(s, "w").await;
    assert_eq!(resumed.lease.run_id, id);
    assert!(resumed.now_ms >= wake, "store time has passed the timer");
    assert_eq!(resumed.run.wake_at_ms, None);
}

pub async fn due_timer_fires_exactly_once_with_two_schedulers(f: Fixture) {
    let s = f.store.as_ref();
    let mut ids = HashSet::new();
    for i in 0..20 {
        ids.insert(
            s.create_run(CreateRun { delay: Some(Duration::from_millis(100)), ..start(json!(i)) })
                .await
                .unwrap()
                .run_id,
        );
    }
    sleep_ms(250).await;
    let (a, b, c) = tokio::join!(s.fire_due_timers(7), s.fire_due_timers(7), s.fire_due_timers(100));
    let mut fired: Vec<RunId> = a.unwrap().into_iter().chain(b.unwrap()).chain(c.unwrap()).collect();
    fired.extend(s.fire_due_timers(100).await.unwrap());
    assert_eq!(fired.len(), 20, "each due timer fired by exactly one scheduler");
    assert_eq!(fired.into_iter().collect::<HashSet<_>>(), ids);
    let mut claimed = 0;
    loop {
        let got = s.claim(&claim_req("w", 30_000, 0)).await.unwrap();
        if got.is_empty() {
            break;
        }
        claimed += got.len();
    }
    assert_eq!(claimed, 20, "exactly one task per timer");
}

pub async fn delayed_start_waits_for_its_timer(f: Fixture) {
    let s = f.store.as_ref();
    let id =
        s.create_run(CreateRun { delay: Some(Duration::from_millis(800)), ..start(json!(1)) }).await.unwrap().run_id;
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Sleeping);
    assert!(run.wake_at_ms.unwrap() >= run.created_at_ms + 800);
    assert!(s.fire_due_timers(10).await.unwrap().is_empty());
    nothing_to_claim(s, "w").await;
    sleep_ms(900).await;
    assert_eq!(s.fire_due_timers(10).await.unwrap(), vec![id.clone()]);
    assert_eq!(claim_one(s, "w").await.lease.run_id, id);
}

async fn suspend_waiting(s: &dyn Store, task: &ClaimedTask, keys: &[&str], timeout_ms: Option<u64>) -> Finished {
    let wait = EventWait {
        step_id: "approval".into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        since_ms: task.now_ms,
    };
    let started = JournalEvent::WaitStarted {
        step_id: "approval".into(),
        event_keys: wait.keys.clone(),
        timeout_at_ms: timeout_ms.map(|t| task.now_ms + t),
        pos: None,
    };
    s.finish(
        &task.lease,
        &[started],
        Finish::Suspend(Suspension {
            wake_at_ms: timeout_ms.map(|t| task.now_ms + t),
            waits: vec![wait],
            blocked: None,
        }),
    )
    .await
    .expect("suspend")
}

pub async fn event_wakes_each_waiter_exactly_once(f: Fixture) {
    let s = f.store.as_ref();
    let a = s.create_run(start(json!("a"))).await.unwrap().run_id;
    let b = s.create_run(start(json!("b"))).await.unwrap().run_id;
    for _ in 0..2 {
        let task = claim_one(s, "w").await;
        assert_eq!(suspend_waiting(s, &task, &["order-42:paid"], None).await, Finished::Done);
    }
    let run = s.get_run(&a).await.unwrap().unwrap();
    assert_eq!((run.status, run.waiting_for.clone()), (RunStatus::Waiting, vec!["order-42:paid".to_owned()]));
    nothing_to_claim(s, "w").await;
    assert!(s.deliver_event("order-43:paid", &json!(0)).await.unwrap().woken.is_empty(), "other keys wake nobody");

    let delivered = s.deliver_event("order-42:paid", &json!({"amount": 10})).await.unwrap();
    let woken: HashSet<RunId> = delivered.woken.iter().cloned().collect();
    assert_eq!(woken, HashSet::from([a.clone(), b.clone()]));
    assert!(s.deliver_event("order-42:paid", &json!({"amount": 11})).await.unwrap().woken.is_empty(), "once only");
    for id in [&a, &b] {
        let journal = s.read_journal(id, None, 100).await.unwrap();
        let received: Vec<_> =
            journal.iter().filter(|r| matches!(r.entry.event, JournalEvent::EventReceived { .. })).collect();
        assert_eq!(received.len(), 1);
        assert_eq!(
            received[0].entry.event,
            JournalEvent::EventReceived {
                step_id: "approval".into(),
                event_key: "order-42:paid".into(),
                event_id: delivered.event_id.clone(),
                data: json!({"amount": 10}),
            }
        );
        let run = s.get_run(id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Pending);
        assert!(run.waiting_for.is_empty());
    }
    let mut claimed = HashSet::new();
    for _ in 0..2 {
        claimed.insert(claim_one(s, "w").await.lease.run_id);
    }
    assert_eq!(claimed, woken);
    nothing_to_claim(s, "w").await;
}

pub async fn wait_on_several_keys_takes_the_first_event(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    suspend_waiting(s, &task, &["approved", "rejected"], None).await;
    assert_eq!(s.deliver_event("rejected", &json!("no")).await.unwrap().woken, vec![id.clone()]);
    assert!(
        s.deliver_event("approved", &json!("yes")).await.unwrap().woken.is_empty(),
        "the other key no longer wakes it"
    );
    let journal = s.read_journal(&id, None, 100).await.unwrap();
    let last = &journal.last().unwrap().entry.event;
    assert!(matches!(last, JournalEvent::EventReceived { event_key, .. } if event_key == "rejected"));
    assert_eq!(claim_one(s, "w").await.lease.run_id, id);
    nothing_to_claim(s, "w").await;
}

pub async fn event_within_lookback_reaches_a_late_waiter(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    // The event arrives while the run is still busy before its wait.
    let delivered = s.deliver_event("doc-7:signed", &json!({"by": "ann"})).await.unwrap();
    assert!(delivered.woken.is_empty());
    let wait_began = task.now_ms + 50;
    let outcome = s
        .finish(
            &task.lease,
            &[],
            Finish::Suspend(Suspension {
                wake_at_ms: None,
                waits: vec![EventWait {
                    step_id: "sig".into(),
                    keys: vec!["doc-7:signed".into()],
                    since_ms: wait_began,
                }],
                blocked: None,
            }),
        )
        .await
        .unwrap();
    let Finished::EventArrived(record) = outcome else { panic!("expected the event, got {outcome:?}") };
    assert_eq!(
        record.entry.event,
        JournalEvent::EventReceived {
            step_id: "sig".into(),
            event_key: "doc-7:signed".into(),
            event_id: delivered.event_id,
            data: json!({"by": "ann"}),
        }
    );
    // The lease is still held: the worker goes on in-process.
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.completed_steps, 1);
    assert_eq!(s.read_journal(&id, None, 100).await.unwrap().last().unwrap(), &record);
    s.finish(&task.lease, &[], Finish::Complete { output: json!(null) }).await.unwrap();
}

pub async fn event_older_than_lookback_or_consumed_is_not_reused(f: Fixture) {
    let f = f.with(Opts { lookback: Some(Duration::from_millis(300)), ..Default::default() }).await;
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    s.deliver_event("k", &json!("first")).await.unwrap();
    // Consumed by the first wait...
    let outcome = suspend_waiting(s, &task, &["k"], None).await;
    assert!(matches!(outcome, Finished::EventArrived(_)));
    // ...and not again by a second wait on the same key.
    let again = suspend_waiting(s, &task, &["k"], None).await;
    assert_eq!(again, Finished::Done, "a consumed event is not delivered twice");
    assert_eq!(status(s, &id).await, RunStatus::Waiting);

    let other = s.create_run(start(json!(2))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    assert_eq!(task.lease.run_id, other);
    let stale = s.deliver_event("old", &json!("stale")).await.unwrap();
    let delivered_at: u64 = stale.event_id.split_once('-').unwrap().0.parse().unwrap();
    sleep_ms(450).await;

    // The wait began 450 ms after the event: outside the 300 ms lookback.

    let wait = EventWait { step_id: "s".into(), keys: vec!["old".into()], since_ms: delivered_at + 450 };
    let outcome = s
        .finish(&task.lease, &[], Finish::Suspend(Suspension { wake_at_ms: None, waits: vec![wait], blocked: None }))
        .await;
    assert_eq!(outcome.unwrap(), Finished::Done, "an event older than the lookback window does not count");
    assert_eq!(status(s, &other).await, RunStatus::Waiting);
}

pub async fn wait_times_out_by_timer(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    suspend_waiting(s, &task, &["never"], Some(300)).await;
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(run.wake_at_ms, Some(task.now_ms + 300));
    sleep_ms(400).await;
    assert_eq!(s.fire_due_timers(10).await.unwrap(), vec![id.clone()]);
    assert!(s.deliver_event("never", &json!(1)).await.unwrap().woken.is_empty(), "no longer waiting after timeout");
    let resumed = claim_one(s, "w").await;
    assert!(resumed.now_ms >= task.now_ms + 300);
    assert!(resumed.run.waiting_for.is_empty());
}

pub async fn cancel_depends_on_where_the_run_stands(f: Fixture) {
    let s = f.store.as_ref();
    // Pending: cancelled at once, its task withdrawn.
    let pending = s.create_run(start(json!("pending"))).await.unwrap().run_id;
    assert_eq!(s.request_cancel(&pending, Some("not needed")).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(status(s, &pending).await, RunStatus::Cancelled);
    assert_eq!(journal_types(s, &pending).await, ["run_started", "cancel_requested", "run_cancelled"]);
    nothing_to_claim(s, "w").await;
    // Final: refused.
    let again = s.request_cancel(&pending, None).await;
    assert!(matches!(again, Err(Error::RunFinal { status: RunStatus::Cancelled, .. })), "{again:?}");
    // Unknown: not found.
    let missing = s.request_cancel(&RunId::new("nope").unwrap(), None).await;
    assert!(matches!(missing, Err(Error::RunNotFound(_))));

    // Sleeping: cancelled at once, its timer gone.
    let sleeping = s.create_run(start(json!("sleeping"))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    s.finish(
        &task.lease,
        &[],
        Finish::Suspend(Suspension { wake_at_ms: Some(task.now_ms + 200), waits: vec![], blocked: None }),
    )
    .await
    .unwrap();
    assert_eq!(s.request_cancel(&sleeping, None).await.unwrap(), CancelOutcome::Cancelled);
    sleep_ms(300).await;
    assert!(s.fire_due_timers(10).await.unwrap().is_empty(), "the cancelled run's timer is gone");

    // Waiting: cancelled at once, no longer a waiter.
    let waiting = s.create_run(start(json!("waiting"))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    suspend_waiting(s, &task, &["go"], None).await;
    assert_eq!(s.request_cancel(&waiting, None).await.unwrap(), CancelOutcome::Cancelled);
    assert!(s.deliver_event("go", &json!(1)).await.unwrap().woken.is_empty());

    // Running: requested; the worker learns at its next append and stops.
    let running = s.create_run(start(json!("running"))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    assert_eq!(s.request_cancel(&running, Some("stop")).await.unwrap(), CancelOutcome::Requested);
    assert_eq!(s.request_cancel(&running, Some("stop")).await.unwrap(), CancelOutcome::Requested);
    let run = s.get_run(&running).await.unwrap().unwrap();
    assert!(run.cancel_requested);
    assert_eq!(run.status, RunStatus::Running);
    let appended = s.append(&task.lease, &[step_done("a", json!(1))]).await.unwrap();
    assert!(appended.cancel_requested);
    s.finish(&task.lease, &[], Finish::Cancel { reason: Some("stop".into()) }).await.unwrap();
    let run = s.get_run(&running).await.unwrap().unwrap();
    assert_eq!((run.status, run.cancel_requested), (RunStatus::Cancelled, false));
    assert_eq!(
        journal_types(s, &running).await,
        ["run_started", "cancel_requested", "step_completed", "run_cancelled"],
        "one cancel_requested however often it was asked"
    );
}

pub async fn suspend_after_cancel_request_cancels(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    s.request_cancel(&id, None).await.unwrap();
    let outcome = s
        .finish(
            &task.lease,
            &[],
            Finish::Suspend(Suspension { wake_at_ms: Some(task.now_ms + 100), waits: vec![], blocked: None }),
        )
        .await
        .unwrap();
    assert_eq!(outcome, Finished::Cancelled);
    assert_eq!(status(s, &id).await, RunStatus::Cancelled);
    sleep_ms(200).await;
    assert!(s.fire_due_timers(10).await.unwrap().is_empty());
    nothing_to_claim(s, "w").await;
}

pub async fn listing_pages_through_every_run_exactly_once(f: Fixture) {
    let s = f.store.as_ref();
    let mut created = Vec::new();
    for i in 0..25 {
        created.push(s.create_run(start(json!(i))).await.unwrap().run_id);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = s.list_runs(&RunQuery { limit: 7, cursor: cursor.clone(), ..Default::default() }).await.unwrap();
        pages += 1;
        assert!(page.runs.len() <= 7);
        seen.extend(page.runs.into_iter().map(|r| (r.created_at_ms, r.run_id)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "pagination terminates");
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 25, "every run exactly once");
    let ids: HashSet<RunId> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, created.iter().cloned().collect());
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, newest_first, "newest first");

    // A page boundary survives the run it points at going away.
    let first = s.list_runs(&RunQuery { limit: 5, ..Default::default() }).await.unwrap();
    let last_of_first = first.runs.last().unwrap().run_id.clone();
    let running = claim_one(s, "w").await; // the oldest run changes status, not position
    assert_ne!(running.lease.run_id, last_of_first);
    let rest = s.list_runs(&RunQuery { limit: 100, cursor: first.next_cursor, ..Default::default() }).await.unwrap();
    assert_eq!(rest.runs.len(), 20);
    assert!(rest.next_cursor.is_none());
}

pub async fn listing_filters_by_workflow_and_status(f: Fixture) {
    let s = f.store.as_ref();
    for i in 0..6 {
        let workflow = if i % 2 == 0 { WF } else { "refunds" };
        s.create_run(CreateRun { workflow: workflow.into(), ..start(json!(i)) }).await.unwrap();
    }
    let mut req = claim_req("w", 30_000, 1000);
    req.max = 1;
    let task = s.claim(&req).await.unwrap().remove(0);
    s.finish(&task.lease, &[], Finish::Complete { output: json!(1) }).await.unwrap();
    let list = |workflow: Option<&str>, status: Option<RunStatus>| {
        let query = RunQuery { workflow: workflow.map(str::to_owned), status, limit: 2, ..Default::default() };
        async move {
            let mut all = Vec::new();
            let mut query = query;
            loop {
                let page = s.list_runs(&query).await.unwrap();
                all.extend(page.runs);
                match page.next_cursor {
                    Some(c) => query.cursor = Some(c),
                    None => return all,
                }
            }
        }
    };
    let orders = list(Some(WF), None).await;
    assert_eq!(orders.len(), 3);
    assert!(orders.iter().all(|r| r.workflow == WF));
    assert_eq!(list(Some("refunds"), None).await.len(), 3);
    assert_eq!(list(None, Some(RunStatus::Completed)).await.len(), 1);
    assert_eq!(list(Some(WF), Some(RunStatus::Pending)).await.len(), 2);
    assert_eq!(list(Some("refunds"), Some(RunStatus::Completed)).await.len(), 0);
    assert_eq!(list(Some("nothing-here"), None).await.len(), 0);
}

pub async fn task_delivered_too_often_is_dead_lettered(f: Fixture) {
    let f = f.with(Opts { max_deliveries: Some(2), ..Default::default() }).await;
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let first = s.claim(&claim_req("crashy-1", 100, 1000)).await.unwrap();
    assert_eq!(first.len(), 1);
    sleep_ms(200).await;
    let second = s.reclaim_expired(&claim_req("crashy-2", 100, 0)).await.unwrap();
    assert_eq!(second[0].deliveries, 2);
    sleep_ms(200).await;
    let third = s.reclaim_expired(&claim_req("crashy-3", 100, 0)).await.unwrap();
    assert!(third.is_empty(), "the third delivery is dead-lettered, not handed out");
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_ref().map(|e| e.kind.as_str()), Some("dead_lettered"));
    assert_eq!(journal_types(s, &id).await.last().map(String::as_str), Some("run_failed"));
    let dead = s.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].run_id, id);
    assert_eq!(dead[0].deliveries, 3);
    assert_eq!(dead[0].task_id, first[0].lease.task_id);
    assert!(dead[0].reason.contains("more than 2 times"));
    sleep_ms(200).await;
    assert!(s.reclaim_expired(&claim_req("w", 100, 0)).await.unwrap().is_empty(), "the task is gone");
    if let Some(pending) = f.redis_pending(WF).await {
        assert_eq!(pending, 0);
    }
}

pub async fn expired_runs_leave_nothing_behind(f: Fixture) {
    let f = f.with(Opts { retention: Some(Duration::from_millis(1000)), ..Default::default() }).await;
    let s = f.store.as_ref();
    let id = s
        .create_run(CreateRun {
            run_id: Some(RunId::new("expiring-run").unwrap()),
            idempotency_key: Some("exp-key".into()),
            ..start(json!(1))
        })
        .await
        .unwrap()
        .run_id;
    let keep = s.create_run(start(json!("kept"))).await.unwrap().run_id;
    let task = claim_run(s, "w", &id).await;
    s.finish(&task.lease, &[step_done("a", json!(1))], Finish::Complete { output: json!(1) }).await.unwrap();
    assert_eq!(s.expire_finished(100).await.unwrap(), 0, "not before its retention");
    assert!(s.get_run(&id).await.unwrap().is_some());
    sleep_ms(1100).await;
    assert_eq!(s.expire_finished(100).await.unwrap(), 1);
    assert!(s.get_run(&id).await.unwrap().is_none());
    assert!(s.read_journal(&id, None, 10).await.unwrap().is_empty());
    let listed = s.list_runs(&RunQuery::default()).await.unwrap();
    assert_eq!(listed.runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(), vec![keep.clone()]);
    if let Some(keys) = f.redis_keys_mentioning("expiring-run").await {
        assert!(keys.is_empty(), "no key of the expired run is left: {keys:?}");
    }
    if let Some(keys) = f.redis_keys_mentioning("exp-key").await {
        assert!(keys.is_empty(), "its idempotency key went with it: {keys:?}");
    }
    if f.is_redis() {
        // And no index still names it.
        let all = f.redis_keys_mentioning("").await.unwrap();
        assert!(all.iter().all(|k| !k.contains(":retention")), "the retention index is empty: {all:?}");
    }
    // The key is free again: a new start makes a new run.
    let again = s.create_run(CreateRun { idempotency_key: Some("exp-key".into()), ..start(json!(1)) }).await.unwrap();
    assert!(again.created);
    assert!(s.get_run(&keep).await.unwrap().is_some(), "unfinished runs are never expired");
}

pub async fn reconcile_requeues_runs_that_lost_their_task(f: Fixture) {
    let s = f.store.as_ref();
    let healthy_holder = s.create_run(start(json!("held"))).await.unwrap().run_id;
    let held = claim_one(s, "w").await;
    assert_eq!(held.lease.run_id, healthy_holder);
    let lost = s.create_run(start(json!("lost"))).await.unwrap().run_id;
    assert!(s.reconcile(100).await.unwrap().is_empty(), "nothing to repair yet");
    f.lose_queued_tasks(WF).await;
    nothing_to_claim(s, "w").await;
    let fixed = s.reconcile(100).await.unwrap();
    assert_eq!(fixed, vec![lost.clone()], "the pending run without a task is re-queued; the held one is left alone");
    assert!(s.reconcile(100).await.unwrap().is_empty(), "idempotent");
    let task = claim_one(s, "w").await;
    assert_eq!(task.lease.run_id, lost);
    s.finish(&task.lease, &[], Finish::Complete { output: json!(1) }).await.unwrap();
    // The held run's lease still works (its task was lost with the queue).
    s.append(&held.lease, &[step_done("a", json!(1))]).await.unwrap();
}

pub async fn store_recovers_from_an_empty_restart(f: Fixture) {
    let s = f.store.as_ref();
    s.create_run(start(json!(1))).await.unwrap();
    let task = claim_one(s, "w").await;
    assert!(s.claim_outbox("d", 10, Duration::ZERO, Duration::from_secs(60)).await.unwrap().is_empty());
    f.wipe().await;
    assert!(matches!(s.append(&task.lease, &[]).await, Err(Error::LeaseLost { .. })));
    // The consumer group is gone; the next create and claim recreate it.
    let id = s.create_run(start(json!(2))).await.unwrap().run_id;
    let again = claim_one(s, "w").await;
    assert_eq!(again.lease.run_id, id);
    s.finish(&again.lease, &[], Finish::Complete { output: json!(2) }).await.unwrap();
    assert_eq!(status(s, &id).await, RunStatus::Completed);
    // The dispatchers' consumer group comes back too (regression: a cached
    // "group exists" made every dispatch round fail with NOGROUP for ever).
    let sub = keel_engine::proto::WebhookSubscription {
        id: "wh".into(),
        url: "https://example.com".into(),
        event_types: vec![],
        workflow: None,
        created_at_ms: 1,
        disabled: None,
    };
    s.put_webhook(&sub).await.unwrap();
    s.create_run(start(json!(3))).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got = s.claim_outbox("d", 10, Duration::ZERO, Duration::from_secs(60)).await.unwrap();
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1, "the run_started event reaches a dispatcher after the empty restart");
}

pub async fn journal_reads_resume_after_a_sequence_number(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    let events: Vec<JournalEvent> = (0..5).map(|i| step_done(&format!("s{i}"), json!(i))).collect();
    let seqs = s.append(&task.lease, &events).await.unwrap().seqs;
    let after = s.read_journal(&id, Some(&seqs[1]), 100).await.unwrap();
    assert_eq!(after.iter().map(|r| r.seq.clone()).collect::<Vec<_>>(), seqs[2..].to_vec());
    let limited = s.read_journal(&id, None, 2).await.unwrap();
    assert_eq!(limited.len(), 2);
    assert!(s.read_journal(&id, Some(seqs.last().unwrap()), 100).await.unwrap().is_empty());
    assert!(matches!(s.read_journal(&id, Some("x"), 1).await, Err(Error::Invalid(_))));
    assert!(s.read_journal(&RunId::new("unknown").unwrap(), None, 10).await.unwrap().is_empty());
    let now = store_now(s).await;
    assert!(limited[0].at_ms <= now && limited[0].at_ms + 60_000 > now, "at_ms is server time");
}

pub async fn workers_register_and_expire(f: Fixture) {
    let s = f.store.as_ref();
    let info = |id: &str| WorkerInfo {
        worker_id: id.into(),
        workflows: BTreeMap::from([(WF.to_owned(), vec![1, 2])]),
        input_schemas: BTreeMap::new(),
        started_at_ms: 1,
        heartbeat_at_ms: 0,
    };
    s.register_worker(&info("short"), Duration::from_millis(1000)).await.unwrap();
    s.register_worker(&info("long"), Duration::from_secs(30)).await.unwrap();
    let listed = s.list_workers().await.unwrap();
    assert_eq!(listed.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(), ["long", "short"]);
    assert!(listed[0].heartbeat_at_ms > 0);
    assert_eq!(listed[0].workflows, info("long").workflows);
    sleep_ms(1100).await;
    let listed = s.list_workers().await.unwrap();
    assert_eq!(listed.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(), ["long"]);
    // A heartbeat is a re-registration.
    s.register_worker(&info("long"), Duration::from_secs(30)).await.unwrap();
    assert_eq!(s.list_workers().await.unwrap().len(), 1);
}

#[allow(dead_code)]
fn _assert_store_is_object_safe(_: Arc<dyn Store>) {}

pub async fn consuming_one_key_does_not_hide_an_earlier_event_on_another(f: Fixture) {
    // Regression: a single "newest consumed event" floor across keys skipped an
    // event of another key whose stream id was not newer (ids of different
    // streams are not comparable). Here key B's event is older than key A's.
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    s.deliver_event("b", &json!("from b")).await.unwrap();
    s.deliver_event("a", &json!("from a")).await.unwrap();
    let wait = |key: &str| {
        Finish::Suspend(Suspension {
            wake_at_ms: None,
            waits: vec![EventWait { step_id: format!("on-{key}"), keys: vec![key.into()], since_ms: task.now_ms }],
            blocked: None,
        })
    };
    let got_a = s.finish(&task.lease, &[], wait("a")).await.unwrap();
    assert!(
        matches!(&got_a, Finished::EventArrived(r) if matches!(&r.entry.event, JournalEvent::EventReceived { data, .. } if data == &json!("from a")))
    );
    let got_b = s.finish(&task.lease, &[], wait("b")).await.unwrap();
    assert!(
        matches!(&got_b, Finished::EventArrived(r) if matches!(&r.entry.event, JournalEvent::EventReceived { data, .. } if data == &json!("from b"))),
        "the older event on b still counts: {got_b:?}"
    );
    assert_eq!(s.get_run(&id).await.unwrap().unwrap().completed_steps, 2);
}

pub async fn a_finished_child_wakes_its_waiting_parent(f: Fixture) {
    let s = f.store.as_ref();
    let parent = s.create_run(start(json!("parent"))).await.unwrap().run_id;
    let held = claim_one(s, "w").await;
    let mut children = Vec::new();
    for (i, step) in ["ok", "boom", "stop"].iter().enumerate() {
        let child = s
            .create_run(CreateRun {
                workflow: "child".into(),
                run_id: Some(RunId::new(format!("{parent}.{i}")).unwrap()),
                parent: Some(keel_engine::proto::ParentRef { run_id: parent.clone(), step_id: step.to_string() }),
                ..start(json!(i))
            })
            .await
            .unwrap()
            .run_id;
        children.push(child);
    }
    let wait_for = |child: &RunId, step: &str, since_ms| {
        Finish::Suspend(Suspension {
            wake_at_ms: None,
            waits: vec![EventWait { step_id: step.into(), keys: vec![keel_engine::child_event_key(child)], since_ms }],
            blocked: None,
        })
    };
    assert_eq!(s.finish(&held.lease, &[], wait_for(&children[0], "ok", held.now_ms)).await.unwrap(), Finished::Done);

    let child_req = Claim { workflows: vec!["child".into()], ..claim_req("cw", 30_000, 2000) };
    let child_tasks =
        [claim_run_of(s, &child_req, &children[0]).await, claim_run_of(s, &child_req, &children[1]).await];
    s.finish(&child_tasks[0].lease, &[], Finish::Complete { output: json!({"answer": 42}) }).await.unwrap();
    assert_eq!(last_event(s, &parent).await, ("ok".into(), json!({"status": "completed", "output": {"answer": 42}})));
    assert_eq!(status(s, &parent).await, RunStatus::Pending, "the parent was woken");

    // A failed child reaches the parent too (here through the lookback: it
    // finished before the parent began waiting).
    s.finish(&child_tasks[1].lease, &[], Finish::Fail { error: ErrorInfo::new("step_failed", "no") }).await.unwrap();
    let held = claim_one(s, "w").await;
    let got = s.finish(&held.lease, &[], wait_for(&children[1], "boom", held.now_ms)).await.unwrap();
    let Finished::EventArrived(record) = got else { panic!("expected the failure, got {got:?}") };
    assert!(matches!(&record.entry.event, JournalEvent::EventReceived { data, .. }
        if data == &json!({"status": "failed", "error": {"kind": "step_failed", "message": "no"}})));
    // And a cancelled one.
    assert_eq!(s.finish(&held.lease, &[], wait_for(&children[2], "stop", held.now_ms)).await.unwrap(), Finished::Done);
    assert_eq!(s.request_cancel(&children[2], None).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(last_event(s, &parent).await, ("stop".into(), json!({"status": "cancelled"})));
}

async fn last_event(s: &dyn Store, id: &RunId) -> (String, serde_json::Value) {
    let journal = s.read_journal(id, None, 100).await.unwrap();
    match &journal.last().unwrap().entry.event {
        JournalEvent::EventReceived { step_id, data, .. } => (step_id.clone(), data.clone()),
        other => panic!("expected the child's outcome, got {other:?}"),
    }
}

pub async fn parallel_waits_each_get_their_own_event(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    let both = |since_ms| {
        Finish::Suspend(Suspension {
            wake_at_ms: None,
            waits: vec![
                EventWait { step_id: "left".into(), keys: vec!["l".into()], since_ms },
                EventWait { step_id: "right".into(), keys: vec!["r1".into(), "r2".into()], since_ms },
            ],
            blocked: None,
        })
    };
    assert_eq!(s.finish(&task.lease, &[], both(task.now_ms)).await.unwrap(), Finished::Done);
    let mut waiting = s.get_run(&id).await.unwrap().unwrap().waiting_for;
    waiting.sort();
    assert_eq!(waiting, ["l", "r1", "r2"]);
    assert_eq!(s.deliver_event("r2", &json!("right!")).await.unwrap().woken, vec![id.clone()]);
    assert_eq!(last_event(s, &id).await, ("right".into(), json!("right!")));
    // Woken, the run replays and waits again for what it still needs; the event
    // for the other branch that arrived meanwhile is found in the lookback.
    assert!(s.deliver_event("l", &json!("left!")).await.unwrap().woken.is_empty(), "the run is not waiting now");
    let task = claim_one(s, "w").await;
    let left_only = Finish::Suspend(Suspension {
        wake_at_ms: None,
        waits: vec![EventWait { step_id: "left".into(), keys: vec!["l".into()], since_ms: task.now_ms - 1000 }],
        blocked: None,
    });
    let got = s.finish(&task.lease, &[], left_only).await.unwrap();
    assert!(
        matches!(&got, Finished::EventArrived(r) if matches!(&r.entry.event, JournalEvent::EventReceived { step_id, data, .. } if step_id == "left" && data == &json!("left!"))),
        "{got:?}"
    );
    assert_eq!(s.get_run(&id).await.unwrap().unwrap().completed_steps, 2);
}

pub async fn pause_holds_a_run_between_steps_until_resumed(f: Fixture) {
    use keel_engine::{PauseOutcome, ResumeOutcome};
    let s = f.store.as_ref();
    // Pending: paused at once, its task withdrawn.
    let pending = s.create_run(start(json!("pending"))).await.unwrap().run_id;
    assert_eq!(s.pause(&pending).await.unwrap(), PauseOutcome::Paused);
    assert_eq!(s.pause(&pending).await.unwrap(), PauseOutcome::Paused, "idempotent");
    assert_eq!(status(s, &pending).await, RunStatus::Paused);
    nothing_to_claim(s, "w").await;
    assert!(s.reconcile(100).await.unwrap().is_empty(), "a paused run is not stuck");
    assert_eq!(s.resume(&pending).await.unwrap(), ResumeOutcome::Resumed);
    assert_eq!(s.resume(&pending).await.unwrap(), ResumeOutcome::NotPaused);
    let task = claim_one(s, "w").await;
    assert_eq!(task.lease.run_id, pending);
    // Held: requested; the worker learns at its next append and hands the run back.
    assert_eq!(s.pause(&pending).await.unwrap(), PauseOutcome::Requested);
    assert!(s.get_run(&pending).await.unwrap().unwrap().pause_requested);
    let appended = s.append(&task.lease, &[step_done("a", json!(1))]).await.unwrap();
    assert!(appended.pause_requested && !appended.cancel_requested);
    s.finish(&task.lease, &[], Finish::Release).await.unwrap();
    assert_eq!(status(s, &pending).await, RunStatus::Paused);
    nothing_to_claim(s, "w").await;
    s.resume(&pending).await.unwrap();
    let again = claim_one(s, "w").await;
    assert!(!again.run.pause_requested);
    s.finish(&again.lease, &[], Finish::Complete { output: json!(1) }).await.unwrap();
    assert!(matches!(s.pause(&pending).await, Err(Error::RunFinal { .. })));
    assert_eq!(
        journal_types(s, &pending).await,
        ["run_started", "run_paused", "run_resumed", "step_completed", "run_paused", "run_resumed", "run_completed"]
    );

    // Sleeping: becomes paused when its timer fires, not runnable.
    let sleeper = s.create_run(start(json!("sleeping"))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    s.finish(
        &task.lease,
        &[],
        Finish::Suspend(Suspension { wake_at_ms: Some(task.now_ms + 100), waits: vec![], blocked: None }),
    )
    .await
    .unwrap();
    assert_eq!(s.pause(&sleeper).await.unwrap(), PauseOutcome::Requested);
    sleep_ms(200).await;
    assert_eq!(s.fire_due_timers(10).await.unwrap(), vec![sleeper.clone()]);
    assert_eq!(status(s, &sleeper).await, RunStatus::Paused);
    nothing_to_claim(s, "w").await;
    s.resume(&sleeper).await.unwrap();
    assert_eq!(claim_one(s, "w").await.lease.run_id, sleeper);
    assert!(matches!(s.pause(&RunId::new("nope").unwrap()).await, Err(Error::RunNotFound(_))));
}

pub async fn retry_runs_a_failed_run_again(f: Fixture) {
    let f = f.with(Opts { retention: Some(Duration::from_millis(1000)), ..Default::default() }).await;
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    s.finish(&task.lease, &[step_done("ok", json!(1))], Finish::Fail { error: ErrorInfo::new("step_failed", "boom") })
        .await
        .unwrap();
    assert!(matches!(s.retry(&RunId::new("nope").unwrap()).await, Err(Error::RunNotFound(_))));
    s.retry(&id).await.unwrap();
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!((run.status, run.error, run.finished_at_ms), (RunStatus::Pending, None, None));
    assert!(matches!(s.retry(&id).await, Err(Error::NotFailed { status: RunStatus::Pending, .. })));
    let again = claim_one(s, "w").await;
    assert_eq!(again.lease.epoch, 2);
    assert_eq!(journal_types(s, &id).await, ["run_started", "step_completed", "run_failed", "run_retried"]);
    // Its retention was withdrawn: a retried run does not expire while it runs.
    sleep_ms(1100).await;
    assert_eq!(s.expire_finished(10).await.unwrap(), 0);
    s.finish(&again.lease, &[], Finish::Complete { output: json!("second time") }).await.unwrap();
    assert_eq!(status(s, &id).await, RunStatus::Completed);
}

pub async fn watch_journal_waits_for_new_entries(f: Fixture) {
    let store = f.store.clone();
    let id = store.create_run(start(json!(1))).await.unwrap().run_id;
    let first = store.watch_journal(&id, None, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.len(), 1, "what is there already comes at once");
    let after = first[0].seq.clone();
    let began = std::time::Instant::now();
    assert!(store.watch_journal(&id, Some(&after), Duration::from_millis(300)).await.unwrap().is_empty());
    assert!(began.elapsed() >= Duration::from_millis(250), "it waited");
    let watcher = {
        let (store, id, after) = (store.clone(), id.clone(), after.clone());
        tokio::spawn(async move { store.watch_journal(&id, Some(&after), Duration::from_secs(5)).await })
    };
    sleep_ms(200).await;
    let task = claim_one(store.as_ref(), "w").await;
    store.append(&task.lease, &[step_done("a", json!(1))]).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(4), watcher).await.expect("the watcher woke").unwrap().unwrap();
    assert_eq!(woke.len(), 1);
    assert_eq!(woke[0].entry.event, step_done("a", json!(1)));
}

pub async fn listing_filters_by_label(f: Fixture) {
    let s = f.store.as_ref();
    for (i, tenant) in ["acme", "globex", "acme"].iter().enumerate() {
        let labels = BTreeMap::from([("tenant".to_owned(), tenant.to_string())]);
        s.create_run(CreateRun { labels, ..start(json!(i)) }).await.unwrap();
    }
    s.create_run(start(json!("unlabelled"))).await.unwrap();
    let query = |value: &str| RunQuery { label: Some(("tenant".into(), value.into())), limit: 1, ..Default::default() };
    let first = s.list_runs(&query("acme")).await.unwrap();
    assert_eq!(first.runs.len(), 1);
    let second = s.list_runs(&RunQuery { cursor: first.next_cursor, ..query("acme") }).await.unwrap();
    assert_eq!(second.runs.len(), 1);
    assert!(second.next_cursor.is_none());
    assert!([&first.runs[0], &second.runs[0]].iter().all(|r| r.labels["tenant"] == "acme"));
    assert!(s.list_runs(&query("initech")).await.unwrap().runs.is_empty());
}

pub async fn webhook_events_flow_from_outbox_to_jobs_and_logs(f: Fixture) {
    use keel_engine::proto::{DeliveryJob, DeliveryTarget, WebhookDelivery, WebhookEventType, WebhookSubscription};
    let s = f.store.as_ref();
    // Nobody listens: nothing goes to the outbox.
    let quiet = s.create_run(start(json!("quiet"))).await.unwrap().run_id;
    assert!(s.claim_outbox("d1", 10, Duration::ZERO, Duration::from_secs(60)).await.unwrap().is_empty());
    // A run with its own callback URL is listened to.
    let called = s
        .create_run(CreateRun { callback_url: Some("https://example.com/hook".into()), ..start(json!("cb")) })
        .await
        .unwrap()
        .run_id;
    assert_eq!(s.get_run(&called).await.unwrap().unwrap().callback_url.as_deref(), Some("https://example.com/hook"));
    let sub = WebhookSubscription {
        id: "wh_1".into(),
        url: "https://example.com/all".into(),
        event_types: vec![WebhookEventType::RunCompleted],
        workflow: None,
        created_at_ms: 1,
        disabled: None,
    };
    s.put_webhook(&sub).await.unwrap();
    assert_eq!(s.list_webhooks().await.unwrap(), vec![sub.clone()]);
    // Now every run is listened to.
    let task = claim_run(s, "w", &quiet).await;
    s.finish(&task.lease, &[step_done("a", json!(1))], Finish::Complete { output: json!("done") }).await.unwrap();

    let mut items = s.claim_outbox("d1", 10, Duration::from_secs(1), Duration::from_secs(60)).await.unwrap();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    let kinds: Vec<(RunId, WebhookEventType)> = items.iter().map(|i| (i.run_id.clone(), i.event_type)).collect();
    assert_eq!(
        kinds,
        [
            (called.clone(), WebhookEventType::RunStarted),
            (quiet.clone(), WebhookEventType::StepCompleted),
            (quiet.clone(), WebhookEventType::RunCompleted),
        ]
    );
    let journal = s.read_journal(&quiet, None, 10).await.unwrap();
    assert_eq!(items[2].sequence, journal.last().unwrap().seq, "the item points at its journal entry");
    assert!(
        s.claim_outbox("d2", 10, Duration::ZERO, Duration::from_secs(60)).await.unwrap().is_empty(),
        "claimed items are not handed out twice"
    );
    // A dispatcher that took events and died: they come back to another once stale.
    sleep_ms(400).await;
    let mut again = s.claim_outbox("d2", 10, Duration::ZERO, Duration::from_millis(300)).await.unwrap();
    again.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(again, items, "stale events are handed to another dispatcher");

    let job = DeliveryJob {
        webhook_id: format!("msg_{}_{}", quiet, items[2].sequence),
        run_id: quiet.clone(),
        sequence: items[2].sequence.clone(),
        event_type: WebhookEventType::RunCompleted,
        target: DeliveryTarget::Subscription("wh_1".into()),
        attempts: 0,
        first_due_ms: 1,
    };
    s.fan_out(&items[2], std::slice::from_ref(&job)).await.unwrap();
    s.fan_out(&items[2], std::slice::from_ref(&job)).await.unwrap();
    for item in &items[..2] {
        s.fan_out(item, &[]).await.unwrap();
    }
    let due = s.due_jobs(10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(due, vec![job.clone()], "one job, however often it was fanned out");
    assert!(s.due_jobs(10, Duration::from_millis(300)).await.unwrap().is_empty(), "taken for the visibility window");
    sleep_ms(400).await;
    assert_eq!(s.due_jobs(10, Duration::from_secs(30)).await.unwrap(), vec![job.clone()], "back when not finished");
    let next = DeliveryJob { attempts: 1, ..job.clone() };
    s.update_job(&job, Some((&next, Duration::from_millis(200)))).await.unwrap();
    assert!(s.due_jobs(10, Duration::from_secs(30)).await.unwrap().is_empty());
    sleep_ms(300).await;
    assert_eq!(s.due_jobs(10, Duration::from_secs(30)).await.unwrap(), vec![next.clone()]);
    s.update_job(&next, None).await.unwrap();
    sleep_ms(50).await;
    assert!(s.due_jobs(10, Duration::ZERO).await.unwrap().is_empty(), "done jobs are gone");

    let delivery = |attempt| WebhookDelivery {
        webhook_id: job.webhook_id.clone(),
        event_type: WebhookEventType::RunCompleted,
        run_id: quiet.clone(),
        url: sub.url.clone(),
        attempt,
        at_ms: 1,
        status: Some(500),
        outcome: "retrying".into(),
        error: None,
        next_attempt_at_ms: Some(2),
    };
    for attempt in 1..=3 {
        s.log_delivery("wh_1", &delivery(attempt)).await.unwrap();
    }
    let log = s.deliveries("wh_1", 2).await.unwrap();
    assert_eq!(log.iter().map(|d| d.attempt).collect::<Vec<_>>(), [3, 2], "newest first");
    assert!(s.delete_webhook("wh_1").await.unwrap());
    assert!(!s.delete_webhook("wh_1").await.unwrap());
    assert!(s.deliveries("wh_1", 10).await.unwrap().is_empty(), "its log went with it");
}

pub async fn stats_count_runs_steps_and_queues(f: Fixture) {
    let s = f.store.as_ref();
    let workflows = vec![WF.to_owned(), "idle".to_owned()];
    let empty = s.stats(&workflows).await.unwrap();
    assert!(empty.counters.is_empty());
    assert_eq!(empty.queued.get(WF), Some(&0));
    for i in 0..3 {
        s.create_run(start(json!(i))).await.unwrap();
    }
    let task = claim_one(s, "w").await;
    let done = JournalEvent::StepCompleted {
        step_id: "a".into(),
        attempt: 1,
        output: json!({"duration_ms": 1}),
        pos: Some(":0".into()),
        duration_ms: Some(42),
    };
    s.finish(&task.lease, &[done], Finish::Complete { output: json!(1) }).await.unwrap();
    let _held = claim_one(s, "w").await;
    let stats = s.stats(&workflows).await.unwrap();
    let count = |stat: &str| stats.counters.get(&(WF.to_owned(), stat.to_owned())).copied();
    assert_eq!((count("started"), count("completed"), count("steps_completed")), (Some(3), Some(1), Some(1)));
    assert_eq!(stats.step_ms_buckets.get(&Some(50)), Some(&1), "42 ms falls in the 50 ms bucket, not the output's 1");
    assert_eq!(stats.step_ms_sum, 42);
    assert_eq!((stats.queued.get(WF), stats.in_flight.get(WF)), (Some(&1), Some(&1)));
    assert_eq!(stats.runs_by_status.get(&RunStatus::Completed), Some(&1));
    assert_eq!(stats.runs_by_status.get(&RunStatus::Running), Some(&1));
    assert_eq!(stats.runs_by_status.get(&RunStatus::Pending), Some(&1));
    assert_eq!(stats.dead_letters, 0);
}

pub async fn wait_finished_wakes_when_the_run_ends(f: Fixture) {
    let store = f.store.clone();
    assert!(store.wait_finished(&RunId::new("nope").unwrap(), Duration::from_millis(50)).await.unwrap().is_none());
    let id = store.create_run(start(json!(1))).await.unwrap().run_id;
    let began = std::time::Instant::now();
    let pending = store.wait_finished(&id, Duration::from_millis(300)).await.unwrap().unwrap();
    assert_eq!(pending.status, RunStatus::Pending, "not finished within the wait");
    assert!(began.elapsed() >= Duration::from_millis(250));
    let waiter = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.wait_finished(&id, Duration::from_secs(10)).await })
    };
    let second_waiter = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.wait_finished(&id, Duration::from_secs(10)).await })
    };
    sleep_ms(200).await;
    let task = claim_one(store.as_ref(), "w").await;
    store.append(&task.lease, &[step_done("a", json!(1))]).await.unwrap();
    sleep_ms(100).await;
    assert!(!waiter.is_finished(), "a step does not wake the waiter; the end does");
    store.finish(&task.lease, &[], Finish::Complete { output: json!("done") }).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woke").unwrap().unwrap().unwrap();
    assert_eq!((done.status, done.output), (RunStatus::Completed, Some(json!("done"))));
    let second =
        tokio::time::timeout(Duration::from_secs(5), second_waiter).await.expect("both woke").unwrap().unwrap();
    assert_eq!(second.unwrap().status, RunStatus::Completed, "every waiter wakes, not just one");
    let again = store.wait_finished(&id, Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(again.status, RunStatus::Completed, "a finished run answers at once");

    // Regression: a run that failed, was waited for, and was retried must not be
    // reported as ended by the first end's signal.
    let failing = store.create_run(start(json!(2))).await.unwrap().run_id;
    let waiter = {
        let (store, id) = (store.clone(), failing.clone());
        tokio::spawn(async move { store.wait_finished(&id, Duration::from_secs(10)).await })
    };
    sleep_ms(100).await;
    let task = claim_one(store.as_ref(), "w").await;
    store.finish(&task.lease, &[], Finish::Fail { error: ErrorInfo::new("step_failed", "once") }).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().unwrap().status, RunStatus::Failed);
    store.retry(&failing).await.unwrap();
    let began = std::time::Instant::now();
    let retried = store.wait_finished(&failing, Duration::from_millis(400)).await.unwrap().unwrap();
    assert_eq!(retried.status, RunStatus::Pending, "still waiting: the old end signal does not count");
    assert!(began.elapsed() >= Duration::from_millis(350));
}

/// Every page of a filtered list, following the cursor to the end.
async fn list_all(s: &dyn Store, mut query: RunQuery) -> Vec<keel_engine::proto::RunSummary> {
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let page = s.list_runs(&query).await.unwrap();
        all.extend(page.runs);
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => return all,
        }
    }
    panic!("the cursor never ended");
}

/// Regression: a filter whose matches sit behind thousands of other runs used to
/// answer `[]` without a cursor. Every match comes back, page by page.
pub async fn filtered_lists_return_every_match_behind_thousands_of_runs(f: Fixture) {
    let s = f.store.as_ref();
    let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // The oldest runs match; 2,500 newer ones do not.
    let mut old = Vec::new();
    for i in 0..3 {
        let req = CreateRun {
            workflow: "refunds".into(),
            labels: labels(&[("team", "core"), ("bulk", "yes")]),
            ..start(json!(i))
        };
        old.push(s.create_run(req).await.unwrap().run_id);
    }
    let mut req = claim_req("w", 30_000, 1000);
    req.workflows = vec!["refunds".into()];
    for task in s.claim(&req).await.unwrap() {
        s.finish(&task.lease, &[], Finish::Complete { output: json!(1) }).await.unwrap();
    }
    for i in 0..2500 {
        s.create_run(CreateRun { labels: labels(&[("bulk", "yes")]), ..start(json!(i)) }).await.unwrap();
    }
    let query = |workflow: Option<&str>, status: Option<RunStatus>, label: Option<(&str, &str)>| RunQuery {
        workflow: workflow.map(str::to_owned),
        status,
        label: label.map(|(k, v)| (k.to_owned(), v.to_owned())),
        limit: 2,
        ..Default::default()
    };
    let ids = |runs: Vec<keel_engine::proto::RunSummary>| {
        let mut ids: Vec<RunId> = runs.into_iter().map(|r| r.run_id).collect();
        ids.sort();
        ids
    };
    let mut expected = old.clone();
    expected.sort();
    assert_eq!(ids(list_all(s, query(None, None, Some(("team", "core")))).await), expected);
    assert_eq!(ids(list_all(s, query(Some("refunds"), Some(RunStatus::Completed), None)).await), expected);
    assert_eq!(ids(list_all(s, query(None, Some(RunStatus::Completed), Some(("bulk", "yes")))).await), expected);
    assert_eq!(ids(list_all(s, query(Some("refunds"), None, Some(("bulk", "yes")))).await), expected);
    assert_eq!(list_all(s, query(Some(WF), Some(RunStatus::Completed), Some(("team", "core")))).await.len(), 0);
    let mut bulk = query(None, None, Some(("bulk", "yes")));
    bulk.limit = 1000;
    assert_eq!(list_all(s, bulk).await.len(), 2503);

    // At most 64 labels, names without '='.
    let many: BTreeMap<String, String> = (0..65).map(|i| (format!("l{i}"), "v".to_owned())).collect();
    assert!(matches!(s.create_run(CreateRun { labels: many, ..start(json!(0)) }).await, Err(Error::Invalid(_))));
    let eq = labels(&[("a=b", "c")]);
    assert!(matches!(s.create_run(CreateRun { labels: eq, ..start(json!(0)) }).await, Err(Error::Invalid(_))));
}

/// A claimer without the run's version sets it aside (no lease): it shows why,
/// reconcile leaves it alone, and unpark by a holder of the version queues it.
pub async fn a_run_of_a_version_nobody_claims_is_parked_until_unparked(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(CreateRun { version: 2, ..start(json!(1)) }).await.unwrap().run_id;
    let mut v1 = claim_req("old", 30_000, 200);
    v1.versions = [(WF.to_owned(), vec![1])].into();
    assert!(s.claim(&v1).await.unwrap().is_empty(), "a v1 worker is not handed a v2 run");
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.blocked.as_deref(), Some("no live worker has orders v2"));
    assert_eq!((run.status, run.epoch), (RunStatus::Pending, 0));
    assert!(s.reconcile(100).await.unwrap().is_empty(), "a parked run has no task on purpose");
    assert!(s.claim(&v1).await.unwrap().is_empty());
    assert_eq!(s.unpark(WF, &[1]).await.unwrap(), Vec::<RunId>::new(), "not for v1");
    assert_eq!(s.unpark(WF, &[2, 3]).await.unwrap(), vec![id.clone()]);
    assert_eq!(s.get_run(&id).await.unwrap().unwrap().blocked, None);
    let mut v2 = claim_req("new", 30_000, 1000);
    v2.versions = [(WF.to_owned(), vec![2])].into();
    let task = s.claim(&v2).await.unwrap().remove(0);
    assert_eq!((task.lease.run_id, task.lease.epoch), (id, 1));
}

/// Regression: reconcile only ever looked at the oldest 500 runs of a status.
/// With a small batch, repeated passes reach every run.
pub async fn reconcile_reaches_every_run_over_successive_passes(f: Fixture) {
    let s = f.store.as_ref();
    let mut lost = Vec::new();
    for i in 0..7 {
        lost.push(s.create_run(start(json!(i))).await.unwrap().run_id);
    }
    f.lose_queued_tasks(WF).await;
    let mut fixed = HashSet::new();
    for _ in 0..4 {
        fixed.extend(s.reconcile(3).await.unwrap());
    }
    assert_eq!(fixed, lost.into_iter().collect::<HashSet<_>>(), "every lost run re-queued within a few passes");
}

/// Regression: a repeated Idempotency-Key with other labels, delay or callback
/// URL silently dropped them. The whole request must match.
pub async fn a_repeated_key_must_repeat_the_whole_request(f: Fixture) {
    let s = f.store.as_ref();
    let base = || CreateRun {
        idempotency_key: Some("order-7".into()),
        labels: [("team".to_owned(), "core".to_owned())].into(),
        delay: Some(Duration::from_secs(60)),
        callback_url: Some("https://example.com/hook".into()),
        ..start(json!({"order": 7}))
    };
    let first = s.create_run(base()).await.unwrap();
    assert!(first.created);
    let again = s.create_run(base()).await.unwrap();
    assert_eq!((again.run_id.clone(), again.created), (first.run_id.clone(), false));
    let variants = [
        CreateRun { labels: [("team".to_owned(), "other".to_owned())].into(), ..base() },
        CreateRun { labels: BTreeMap::new(), ..base() },
        CreateRun { delay: Some(Duration::from_secs(61)), ..base() },
        CreateRun { delay: None, ..base() },
        CreateRun { callback_url: Some("https://example.com/other".into()), ..base() },
    ];
    for variant in variants {
        let refused = s.create_run(variant.clone()).await;
        assert!(matches!(refused, Err(Error::IdempotencyConflict { .. })), "{variant:?}: {refused:?}");
    }
}

/// Regression: two dispatchers fanning out the same outbox entry (a slow one and
/// the one that reclaimed it) made duplicate jobs, since job members differ in
/// `first_due_ms`. The second fan-out adds nothing.
pub async fn fanning_out_one_outbox_entry_twice_adds_its_jobs_once(f: Fixture) {
    use keel_engine::proto::{DeliveryJob, DeliveryTarget, WebhookEventType};
    let s = f.store.as_ref();
    s.create_run(CreateRun { callback_url: Some("https://example.com/hook".into()), ..start(json!(1)) }).await.unwrap();
    let item = s.claim_outbox("d1", 10, Duration::from_secs(1), Duration::from_secs(60)).await.unwrap().remove(0);
    let job = |first_due_ms| DeliveryJob {
        webhook_id: "msg_1".into(),
        run_id: item.run_id.clone(),
        sequence: item.sequence.clone(),
        event_type: WebhookEventType::RunStarted,
        target: DeliveryTarget::Callback("https://example.com/hook".into()),
        attempts: 0,
        first_due_ms,
    };
    s.fan_out(&item, &[job(1)]).await.unwrap();
    s.fan_out(&item, &[job(2)]).await.unwrap();
    let due = s.due_jobs(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].first_due_ms, 1, "the first fan-out's job");
}

/// The first process of a deployment decides its signing key; every later one,
/// whatever it offers, gets the same (so webhooks and signed calls from any
/// process verify against any server's published key).
pub async fn the_first_signing_key_offered_is_the_deployments(f: Fixture) {
    let s = f.store.clone();
    assert!(s.signing_keys(None).await.unwrap().is_empty(), "no key before the first offer");
    // Many processes starting at once: one key wins, and all agree on it.
    let offers = (0..20).map(|i| {
        let s = s.clone();
        tokio::spawn(async move { s.signing_keys(Some(&format!("key-{i}"))).await.unwrap() })
    });
    let mut got = Vec::new();
    for offer in offers {
        got.push(offer.await.unwrap());
    }
    assert!(got.iter().all(|ring| *ring == got[0]), "{got:?}");
    assert_eq!(got[0].len(), 1);
    assert!(got[0][0].secret.starts_with("key-"));
    assert_eq!(got[0][0].id, "k1");
    assert_eq!(s.signing_keys(Some("a-later-key")).await.unwrap(), got[0]);
    assert_eq!(s.signing_keys(None).await.unwrap(), got[0]);
    assert!(!format!("{:?}", got[0]).contains("key-"), "Debug shows no secret");
}

/// Rotation: a key is added as the newest, the oldest retired once the newest
/// has settled; never the last key, never more than the maximum, and ids are
/// never reused.
pub async fn signing_keys_rotate_and_retire_without_ever_leaving_none(f: Fixture) {
    let s = f.store.as_ref();
    let first = s.signing_keys(Some("secret-1")).await.unwrap();
    let err = s.retire_signing_key(None, Duration::ZERO).await.unwrap_err();
    assert!(err.to_string().contains("only signing key"), "{err}");

    let ring = s.add_signing_key("secret-2").await.unwrap();
    assert_eq!(ring.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(ring[0], first[0]);
    assert!(ring[1].since_ms >= ring[0].since_ms);
    // Too soon: processes may not have picked the new key up yet.
    let err = s.retire_signing_key(None, Duration::from_secs(3600)).await.unwrap_err();
    assert!(err.to_string().contains("ms ago"), "{err}");
    assert_eq!(s.signing_keys(None).await.unwrap().len(), 2, "a refused retirement changes nothing");

    let ring = s.add_signing_key("secret-3").await.unwrap();
    assert_eq!(ring.len(), keel_engine::MAX_SIGNING_KEYS);
    let err = s.add_signing_key("secret-4").await.unwrap_err();
    assert!(err.to_string().contains("retire one first"), "{err}");

    let err = s.retire_signing_key(Some("k9"), Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, keel_engine::Error::Invalid(_)), "{err}");
    // Without an id, the oldest goes; with one, that one.
    let ring = s.retire_signing_key(None, Duration::ZERO).await.unwrap();
    assert_eq!(ring.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["k2", "k3"]);
    let ring = s.retire_signing_key(Some("k3"), Duration::ZERO).await.unwrap();
    assert_eq!(ring.iter().map(|k| (k.id.as_str(), k.secret.as_str())).collect::<Vec<_>>(), [("k2", "secret-2")]);
    let ring = s.add_signing_key("secret-5").await.unwrap();
    assert_eq!(ring.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["k2", "k4"], "ids are not reused");
    // An offer never adds to a ring that exists.
    assert_eq!(s.signing_keys(Some("secret-6")).await.unwrap(), ring);
}

/// A start handed straight to a worker in the same process (`keel dev`): the
/// run is created leased, nobody else claims it, the lease works as a claimed
/// one does; when its worker dies, the lease lapses, reconciliation queues the
/// run for any worker, and that claim fences the first worker out.
pub async fn a_run_created_claimed_is_leased_and_outlives_its_worker(f: Fixture) {
    let s = f.store.as_ref();
    let id = RunId::new("handed-1").unwrap();
    let handed = CreateRun { run_id: Some(id.clone()), ..start(json!("handed")) };
    let local = ClaimOnCreate { worker_id: "local".into(), lease: Duration::from_millis(300) };
    let (created, task) = s.create_claimed(handed.clone(), &local).await.unwrap();
    let task = task.expect("created leased to the local worker");
    assert!(created.created);
    assert_eq!(created.run_id, id);
    assert_eq!((&task.lease.run_id, task.lease.epoch, task.deliveries), (&id, 1, 1));
    assert_eq!(task.lease.worker_id, "local");
    assert_eq!(task.run.status, RunStatus::Running);
    assert!(matches!(&task.journal[..], [r] if matches!(r.entry.event, JournalEvent::RunStarted { .. })));
    assert_eq!(status(s, &id).await, RunStatus::Running);
    nothing_to_claim(s, "other").await;
    s.append(&task.lease, &[step_done("a", json!(1))]).await.unwrap();

    // The same start again is the same run, and is not handed out twice.
    let (again, none) = s.create_claimed(handed, &local).await.unwrap();
    assert!(!again.created && none.is_none());
    // A delayed start is not claimed: it sleeps until its timer.
    let later = CreateRun { delay: Some(Duration::from_secs(60)), ..start(json!("later")) };
    let (later, none) = s.create_claimed(later, &local).await.unwrap();
    assert!(none.is_none());
    assert_eq!(status(s, &later.run_id).await, RunStatus::Sleeping);

    // The local worker dies: nothing is queued, so nothing to reclaim; once
    // the lease lapses, reconciliation queues the run.
    assert!(s.reconcile(100).await.unwrap().is_empty(), "a live lease is left alone");
    sleep_ms(500).await;
    assert!(s.reclaim_expired(&claim_req("other", 100, 0)).await.unwrap().is_empty());
    assert_eq!(s.reconcile(100).await.unwrap(), vec![id.clone()]);
    let taken = claim_one(s, "other").await;
    assert_eq!((&taken.lease.run_id, taken.lease.epoch), (&id, 2));
    assert_eq!(taken.journal.len(), 2, "the first worker's step is kept");
    assert!(matches!(s.append(&task.lease, &[]).await, Err(Error::LeaseLost { .. })), "fenced out");
    s.finish(&taken.lease, &[], Finish::Complete { output: json!("done") }).await.unwrap();
    assert_eq!(status(s, &id).await, RunStatus::Completed);
    if let Some(pending) = f.redis_pending(WF).await {
        assert_eq!(pending, 0);
    }
}

/// Schedules as the store keeps them: a put keeps pause and state, a pause
/// takes the schedule out of the due set, and moving a schedule on from a tick
/// happens once: a second server (or a pause) in between makes it a no-op.
pub async fn schedules_move_on_from_a_tick_once(f: Fixture) {
    let s = f.store.as_ref();
    let spec = |id: &str, cron: &str| -> keel_proto::ScheduleSpec {
        serde_json::from_value(json!({"id": id, "workflow": "report", "cron": cron})).unwrap()
    };
    assert!(s.put_schedule(&spec("b", "* * * * *"), Some(2_000)).await.unwrap(), "new");
    assert!(s.put_schedule(&spec("a", "* * * * *"), Some(1_000)).await.unwrap());
    assert!(!s.put_schedule(&spec("a", "*/5 * * * *"), Some(1_000)).await.unwrap(), "replaced");
    let a = s.get_schedule("a").await.unwrap().unwrap();
    assert_eq!((a.spec.cron.as_str(), a.next_ms, a.paused), ("*/5 * * * *", Some(1_000), false));
    assert_eq!(a.spec.timezone, "UTC", "the default zone");
    assert!(s.get_schedule("nope").await.unwrap().is_none());

    let due = s.due_schedules(1_500, 10).await.unwrap();
    assert_eq!(due.iter().map(|d| (d.spec.id.as_str(), d.tick_ms)).collect::<Vec<_>>(), [("a", 1_000)]);
    let due = s.due_schedules(5_000, 10).await.unwrap();
    assert_eq!(due.iter().map(|d| d.spec.id.as_str()).collect::<Vec<_>>(), ["a", "b"], "soonest first");

    let state = keel_proto::ScheduleState {
        last_tick_ms: Some(1_000),
        last_run_id: Some(RunId::new("sched-a-1000").unwrap()),
        last_skip: None,
    };
    assert!(s.advance_schedule("a", 1_000, Some(3_000), &state).await.unwrap());
    assert!(!s.advance_schedule("a", 1_000, Some(4_000), &state).await.unwrap(), "moved once");
    let a = s.get_schedule("a").await.unwrap().unwrap();
    assert_eq!((a.next_ms, &a.state), (Some(3_000), &state));

    // Paused: not due, not moved; a replace keeps it paused; resumed from a new tick.
    assert!(s.pause_schedule("a", true, None).await.unwrap());
    assert!(!s.pause_schedule("nope", true, None).await.unwrap());
    assert!(s.due_schedules(10_000, 10).await.unwrap().iter().all(|d| d.spec.id != "a"));
    assert!(!s.advance_schedule("a", 3_000, Some(5_000), &state).await.unwrap(), "a paused schedule does not move");
    s.put_schedule(&spec("a", "* * * * *"), Some(9_000)).await.unwrap();
    let a = s.get_schedule("a").await.unwrap().unwrap();
    assert!(a.paused && a.next_ms.is_none(), "{a:?}");
    assert_eq!(a.state, state, "a replace keeps the state");
    assert!(s.pause_schedule("a", false, Some(7_000)).await.unwrap());
    assert_eq!(s.get_schedule("a").await.unwrap().unwrap().next_ms, Some(7_000));

    let all = s.list_schedules().await.unwrap();
    assert_eq!(all.iter().map(|x| x.spec.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(s.delete_schedule("a").await.unwrap());
    assert!(!s.delete_schedule("a").await.unwrap());
    assert!(s.get_schedule("a").await.unwrap().is_none());
    assert_eq!(s.due_schedules(10_000, 10).await.unwrap().len(), 1);

    // A client cannot grow the schedules without bound.
    for i in 1..keel_engine::schedules::MAX_SCHEDULES {
        s.put_schedule(&spec(&format!("n{i}"), "* * * * *"), None).await.unwrap();
    }
    let err = s.put_schedule(&spec("one-more", "* * * * *"), None).await.unwrap_err();
    assert!(matches!(err, keel_engine::Error::Invalid(_)), "{err}");
    assert!(!s.put_schedule(&spec("b", "*/2 * * * *"), None).await.unwrap(), "a replace still goes");
}

/// Run ids that all live in one partition (a partitioned store orders claims
/// by priority within each partition: it takes from partitions in turn).
fn ids_in_one_partition(f: &Fixture, prefix: &str, n: usize) -> Vec<RunId> {
    let parts = f.partitions();
    let home = keel_engine::keys::partition_of("home", parts);
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| keel_engine::keys::partition_of(id, parts) == home)
        .take(n)
        .map(|id| RunId::new(id).unwrap())
        .collect()
}

pub async fn priorities_order_claims_and_the_lowest_still_gets_its_turn(f: Fixture) {
    let s = f.store.as_ref();
    for bad in [0, 6, 255] {
        let refused = s.create_run(CreateRun { priority: Some(bad), ..start(json!(1)) }).await;
        assert!(matches!(refused, Err(Error::Invalid(ref m)) if m.contains("priority must be 1 to 5")), "{refused:?}");
    }
    // Created interleaved: 1, 3 (the default), 5, 1, 3, 5, …
    let ids = ids_in_one_partition(&f, "prio", 9);
    let level = |i: usize| [Some(1), None, Some(5)][i % 3];
    for (i, id) in ids.iter().enumerate() {
        let req = CreateRun { run_id: Some(id.clone()), priority: level(i), ..start(json!(i)) };
        s.create_run(req).await.unwrap();
    }
    let summary = s.get_run(&ids[2]).await.unwrap().unwrap();
    assert_eq!(summary.priority, 5);
    assert_eq!(s.get_run(&ids[1]).await.unwrap().unwrap().priority, 3, "the default");
    let of_level = |p: u8| -> Vec<RunId> {
        ids.iter().enumerate().filter(|(i, _)| level(*i).unwrap_or(3) == p).map(|(_, id)| id.clone()).collect()
    };
    let claim3 = || Claim { max: 3, ..claim_req("w", 30_000, 0) };
    // Highest first; equal priorities in arrival order.
    let fives = s.claim(&claim3()).await.unwrap();
    let got: Vec<RunId> = fives.iter().map(|t| t.lease.run_id.clone()).collect();
    assert_eq!(got, of_level(5), "priority 5 first, in creation order");
    // A released priority-5 run goes back to its own queue: ahead of the rest again.
    s.finish(&fives[0].lease, &[], Finish::Release).await.unwrap();
    let again = s.claim(&Claim { max: 1, ..claim3() }).await.unwrap();
    assert_eq!(again[0].lease.run_id, ids[2], "released, it is still priority 5");
    let threes: Vec<RunId> = s.claim(&claim3()).await.unwrap().iter().map(|t| t.lease.run_id.clone()).collect();
    assert_eq!(threes, of_level(3));
    let ones: Vec<RunId> = s.claim(&claim3()).await.unwrap().iter().map(|t| t.lease.run_id.clone()).collect();
    assert_eq!(ones, of_level(1));

    // A steady supply of priority 5 cannot starve priority 1: with one run of
    // priority 1 queued behind ten of priority 5, it is claimed within ten
    // claims (one claim in ten serves the lowest priority first).
    let more = ids_in_one_partition(&f, "flood", 11);
    let refills = ids_in_one_partition(&f, "refill", 10);
    let low = more[10].clone();
    for id in &more[..10] {
        s.create_run(CreateRun { run_id: Some(id.clone()), priority: Some(5), ..start(json!(id.as_str())) })
            .await
            .unwrap();
    }
    s.create_run(CreateRun { run_id: Some(low.clone()), priority: Some(1), ..start(json!("low")) }).await.unwrap();
    let mut turn = None;
    for n in 1..=10 {
        let task = s.claim(&Claim { max: 1, ..claim3() }).await.unwrap().pop().expect("a task");
        if task.lease.run_id == low {
            turn = Some(n);
            break;
        }
        // Another priority-5 run arrives for each one taken: the flood never ebbs.
        let next = refills[n - 1].clone();
        s.create_run(CreateRun { run_id: Some(next), priority: Some(5), ..start(json!(n)) }).await.unwrap();
    }
    assert!(turn.is_some(), "priority 1 got no claim in ten under a flood of priority 5");
}

/// Every path that queues a run again (a timer, an event, resume, retry,
/// unpark) puts it in its own priority's queue, and a cancel withdraws it from
/// there: each time, a queued priority-1 run waits while it is taken first.
pub async fn a_runs_priority_holds_on_every_way_back_to_its_queue(f: Fixture) {
    let s = f.store.as_ref();
    let [low, high]: [RunId; 2] = ids_in_one_partition(&f, "way", 2).try_into().unwrap();
    s.create_run(CreateRun { run_id: Some(low.clone()), priority: Some(1), ..start(json!("low")) }).await.unwrap();
    s.create_run(CreateRun { run_id: Some(high.clone()), priority: Some(5), ..start(json!("high")) }).await.unwrap();
    let one = || Claim { max: 1, ..claim_req("w", 30_000, 0) };
    let next = || async { s.claim(&one()).await.unwrap().pop().expect("a task") };
    let task = next().await;
    assert_eq!(task.lease.run_id, high);

    // A timer.
    let sleep = Suspension { wake_at_ms: Some(task.now_ms), waits: vec![], blocked: None };
    s.finish(&task.lease, &[], Finish::Suspend(sleep)).await.unwrap();
    assert_eq!(s.fire_due_timers(10).await.unwrap(), vec![high.clone()]);
    let task = next().await;
    assert_eq!(task.lease.run_id, high, "woken by its timer");

    // An event.
    let wait = EventWait { step_id: "go".into(), keys: vec!["prio:go".into()], since_ms: task.now_ms };
    s.finish(&task.lease, &[], Finish::Suspend(Suspension { wake_at_ms: None, waits: vec![wait], blocked: None }))
        .await
        .unwrap();
    assert_eq!(s.deliver_event("prio:go", &json!(1)).await.unwrap().woken, vec![high.clone()]);
    let task = next().await;
    assert_eq!(task.lease.run_id, high, "woken by an event");

    // Pause while queued, resume.
    s.finish(&task.lease, &[], Finish::Release).await.unwrap();
    assert_eq!(s.pause(&high).await.unwrap(), keel_engine::PauseOutcome::Paused);
    assert_eq!(s.resume(&high).await.unwrap(), keel_engine::ResumeOutcome::Resumed);
    let task = next().await;
    assert_eq!(task.lease.run_id, high, "resumed");

    // Fail, retry.
    s.finish(&task.lease, &[], Finish::Fail { error: ErrorInfo::new("step_failed", "no") }).await.unwrap();
    s.retry(&high).await.unwrap();
    let task = next().await;
    assert_eq!(task.lease.run_id, high, "retried");

    // Parked for want of its version, unparked.
    s.finish(&task.lease, &[], Finish::Release).await.unwrap();
    let other_version = Claim { versions: [(WF.to_owned(), vec![2])].into(), max: 10, ..one() };
    assert!(s.claim(&other_version).await.unwrap().is_empty(), "both parked");
    let mut unparked = s.unpark(WF, &[1]).await.unwrap();
    unparked.sort();
    assert_eq!(unparked.len(), 2);
    let task = next().await;
    assert_eq!(task.lease.run_id, high, "unparked");

    // Its task lost (as after Redis lost its last writes), queued again by the repair.
    s.finish(&task.lease, &[], Finish::Release).await.unwrap();
    f.lose_queued_tasks(WF).await;
    let mut fixed = s.reconcile(100).await.unwrap();
    fixed.sort();
    assert!(fixed.contains(&high), "{fixed:?}");
    let task = next().await;
    assert_eq!(task.lease.run_id, high, "queued again by the repair");

    // Cancelled while queued: its task leaves its queue.
    s.finish(&task.lease, &[], Finish::Release).await.unwrap();
    assert_eq!(s.request_cancel(&high, None).await.unwrap(), CancelOutcome::Cancelled);
    let task = next().await;
    assert_eq!(task.lease.run_id, low, "only the priority-1 run is left");
    assert!(s.claim(&one()).await.unwrap().is_empty(), "nothing else queued");
}

fn slot_req<'a>(key: &'a str, holder: &'a str, rule: FlowRule, releases: &'a [String]) -> SlotRequest<'a> {
    SlotRequest { key, holder, rule, lease: Duration::from_secs(30), releases }
}

fn parallel(n: u32) -> FlowRule {
    FlowRule { parallelism: Some(n), rate: None, period_ms: 1000 }
}

/// Slots across holders, arrival order among waiters, a rate's window, the
/// server's limits winning, pause and resume, a dead holder's slot lapsing.
pub async fn flow_control_slots_windows_and_waiters(f: Fixture) {
    let s = f.store.as_ref();
    let acquired = |a: &SlotAnswer| a.slot == Slot::Acquired;
    let key = "llm:team-7";
    let run = |n: u32| RunId::new(format!("fc-{n}")).unwrap();
    let h = |n: u32| keel_engine::flow::holder(&run(n), "plan");
    assert!(acquired(&s.acquire_slot(&slot_req(key, &h(1), parallel(2), &[])).await.unwrap()));
    assert!(acquired(&s.acquire_slot(&slot_req(key, &h(2), parallel(2), &[])).await.unwrap()));
    let third = s.acquire_slot(&slot_req(key, &h(3), parallel(2), &[])).await.unwrap();
    let Slot::Wait { retry_at_ms, paused: false } = third.slot else { panic!("{third:?}") };
    assert!(retry_at_ms > 0);
    assert!(!acquired(&s.acquire_slot(&slot_req(key, &h(4), parallel(2), &[])).await.unwrap()));
    // Asking again while holding is no second slot (a replay after a crash).
    assert!(acquired(&s.acquire_slot(&slot_req(key, &h(1), parallel(2), &[])).await.unwrap()));
    let status = s.flow_key(key).await.unwrap().expect("known");
    assert_eq!((status.in_flight, status.waiting, status.paused), (2, 2, false));
    assert_eq!(status.requested.as_ref().and_then(|l| l.parallelism), Some(2));
    assert_eq!(status.limits, None);

    // A release makes room for the first waiter, not the one that came later.
    let woken = s.release_slots(key, &[h(1)]).await.unwrap();
    assert_eq!(woken, vec![run(3)], "the head of the queue is woken");
    assert!(!acquired(&s.acquire_slot(&slot_req(key, &h(4), parallel(2), &[])).await.unwrap()), "4 came after 3");
    assert!(acquired(&s.acquire_slot(&slot_req(key, &h(3), parallel(2), &[])).await.unwrap()));
    // A release riding on an ask: 2 gives back, 4 takes it in the same call.
    let both = s.acquire_slot(&slot_req(key, &h(4), parallel(2), &[h(2)])).await.unwrap();
    assert!(acquired(&both), "{both:?}");
    assert_eq!(s.flow_key(key).await.unwrap().unwrap().in_flight, 2);

    // The server's limits win over what steps ask for.
    s.set_flow_limits(key, Some(parallel(3))).await.unwrap();
    assert!(acquired(&s.acquire_slot(&slot_req(key, &h(5), parallel(2), &[])).await.unwrap()));
    assert!(!acquired(&s.acquire_slot(&slot_req(key, &h(6), parallel(100), &[])).await.unwrap()));
    let status = s.flow_key(key).await.unwrap().unwrap();
    assert_eq!(status.limits.as_ref().and_then(|l| l.parallelism), Some(3));
    assert!(s.flow_keys(false).await.unwrap().iter().any(|k| k.key == key));

    // Paused: nothing starts, even with room; resumed: the waiters with room are woken.
    s.release_slots(key, &[h(3), h(4), h(5)]).await.unwrap();
    s.pause_flow_key(key, true).await.unwrap();
    let paused = s.acquire_slot(&slot_req(key, &h(6), parallel(2), &[])).await.unwrap();
    assert!(matches!(paused.slot, Slot::Wait { paused: true, .. }), "{paused:?}");
    assert!(s.flow_key(key).await.unwrap().unwrap().paused);
    let woken = s.pause_flow_key(key, false).await.unwrap();
    assert_eq!(woken, vec![run(6)]);
    assert!(acquired(&s.acquire_slot(&slot_req(key, &h(6), parallel(2), &[])).await.unwrap()));
    s.set_flow_limits(key, None).await.unwrap();
    assert_eq!(s.flow_key(key).await.unwrap().unwrap().limits, None);

    // A rate: at most 3 starts in any second.
    let rate = FlowRule { parallelism: None, rate: Some(3), period_ms: 1000 };
    let mut starts = 0;
    let mut first_wait = None;
    for n in 10..15 {
        let a = s.acquire_slot(&slot_req("rate-key", &h(n), rate, &[])).await.unwrap();
        match a.slot {
            Slot::Acquired => starts += 1,
            Slot::Wait { retry_at_ms, .. } => {
                first_wait.get_or_insert(retry_at_ms);
            }
        }
    }
    assert_eq!(starts, 3);
    assert_eq!(s.flow_key("rate-key").await.unwrap().unwrap().starts_in_window, 3);
    sleep_ms(first_wait.unwrap().saturating_sub(now_wall_ms()) + 50).await;
    let next = s.acquire_slot(&slot_req("rate-key", &h(13), rate, &[])).await.unwrap();
    assert!(acquired(&next), "the window moved on: {next:?}");

    // A holder that died: its slot lapses with its lease.
    let dying = h(20);
    let short = SlotRequest { lease: Duration::from_millis(200), ..slot_req("lapse", &dying, parallel(1), &[]) };
    assert!(acquired(&s.acquire_slot(&short).await.unwrap()));
    assert!(!acquired(&s.acquire_slot(&slot_req("lapse", &h(21), parallel(1), &[])).await.unwrap()));
    sleep_ms(300).await;
    assert!(acquired(&s.acquire_slot(&slot_req("lapse", &h(21), parallel(1), &[])).await.unwrap()));

    // At most MAX_CONFIGURED_KEYS keys with server limits (each is a gauge).
    for n in 0..keel_engine::flow::MAX_CONFIGURED_KEYS {
        s.set_flow_limits(&format!("many-{n}"), Some(parallel(1))).await.unwrap();
    }
    let full = s.set_flow_limits("one-too-many", Some(parallel(1))).await;
    assert!(matches!(full, Err(Error::Invalid(ref m)) if m.contains("at most 1000")), "{full:?}");
    s.set_flow_limits("many-0", Some(parallel(2))).await.expect("changing a configured key is fine");
    assert_eq!(s.flow_keys(true).await.unwrap().len(), keel_engine::flow::MAX_CONFIGURED_KEYS);

    // A waiter that never comes back (its run was cancelled) loses its place
    // and holds nobody up.
    let (quick, gone, late) = (h(30), h(31), h(32));
    let short =
        |holder| SlotRequest { lease: Duration::from_millis(200), ..slot_req("stale", holder, parallel(1), &[]) };
    assert!(acquired(&s.acquire_slot(&short(&quick)).await.unwrap()));
    assert!(!acquired(&s.acquire_slot(&short(&gone)).await.unwrap()), "the key is full");
    sleep_ms(700).await;
    let next = s.acquire_slot(&slot_req("stale", &late, parallel(1), &[])).await.unwrap();
    assert!(acquired(&next), "the lapsed slot and the stale waiter are gone: {next:?}");
}

fn now_wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A run suspended for a slot shows why; waking it (what a release's caller
/// does) has its timer fire at once; a run waiting for something else is left be.
pub async fn a_run_waiting_for_a_flow_control_slot_is_woken_by_a_release(f: Fixture) {
    let s = f.store.as_ref();
    let id = s.create_run(start(json!(1))).await.unwrap().run_id;
    let task = claim_one(s, "w").await;
    let why = keel_engine::flow::waiting_reason("llm", false);
    let later = task.now_ms + 60_000;
    let wait = Suspension { wake_at_ms: Some(later), waits: vec![], blocked: Some(why.clone()) };
    s.finish(&task.lease, &[], Finish::Suspend(wait)).await.unwrap();
    let run = s.get_run(&id).await.unwrap().unwrap();
    assert_eq!((run.status, run.blocked.as_deref()), (RunStatus::Waiting, Some(why.as_str())));
    assert!(s.fire_due_timers(10).await.unwrap().is_empty(), "not due for a minute");
    s.wake_flow_waiter(&id).await.unwrap();
    assert_eq!(s.fire_due_timers(10).await.unwrap(), vec![id.clone()], "due now");
    let task = claim_one(s, "w").await;
    assert_eq!(task.run.blocked, None, "no longer waiting");

    // A plain sleep is not a flow-control wait: a wake leaves it asleep.
    s.finish(&task.lease, &[], Finish::Suspend(Suspension { wake_at_ms: Some(later), waits: vec![], blocked: None }))
        .await
        .unwrap();
    s.wake_flow_waiter(&id).await.unwrap();
    assert!(s.fire_due_timers(10).await.unwrap().is_empty());
    assert_eq!(status(s, &id).await, RunStatus::Sleeping);
}

/// A run's inbox (the QStash protocol's submissions): appended in order, read
/// by position, closed atomically with its last message, bounded; and the
/// QStash signing key pair, the first offer's unless replaced.
pub async fn a_runs_inbox_keeps_order_is_closed_once_and_is_bounded(f: Fixture) {
    let s = f.store.as_ref();
    let run = RunId::new("wfr_inbox-1").unwrap();
    assert_eq!(s.inbox_read(&run, 0, 10).await.unwrap(), InboxPage::default());
    assert_eq!(s.inbox_push(&run, &["a".into(), "b".into()], false).await.unwrap(), InboxPush::Added(2));
    assert_eq!(s.inbox_push(&run, &["c".into()], false).await.unwrap(), InboxPush::Added(3));
    let page = s.inbox_read(&run, 1, 10).await.unwrap();
    assert_eq!(page, InboxPage { messages: vec!["b".into(), "c".into()], total: 3, closed: false });
    assert_eq!(s.inbox_read(&run, 0, 2).await.unwrap().messages, ["a", "b"]);
    assert!(s.inbox_read(&run, 3, 10).await.unwrap().messages.is_empty());
    // The route's result closes the inbox with it; nothing comes after.
    assert_eq!(s.inbox_push(&run, &["finish".into()], true).await.unwrap(), InboxPush::Added(4));
    assert_eq!(s.inbox_push(&run, &["late".into()], false).await.unwrap(), InboxPush::Closed);
    let page = s.inbox_read(&run, 3, 10).await.unwrap();
    assert_eq!(page, InboxPage { messages: vec!["finish".into()], total: 4, closed: true });
    // A cancel closes an inbox too, kept for a while for late readers.
    let cancelled = RunId::new("wfr_inbox-2").unwrap();
    s.inbox_push(&cancelled, &["x".into()], false).await.unwrap();
    s.inbox_close(&cancelled, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.inbox_push(&cancelled, &["y".into()], false).await.unwrap(), InboxPush::Closed);
    assert_eq!(s.inbox_read(&cancelled, 0, 10).await.unwrap().messages, ["x"]);
    // A client cannot grow one without bound.
    let full = RunId::new("wfr_inbox-3").unwrap();
    let many: Vec<String> = (0..MAX_INBOX_MESSAGES).map(|i| i.to_string()).collect();
    assert_eq!(s.inbox_push(&full, &many, false).await.unwrap(), InboxPush::Added(MAX_INBOX_MESSAGES));
    assert!(matches!(s.inbox_push(&full, &["one more".into()], false).await, Err(Error::Invalid(_))));
    assert_eq!(s.inbox_read(&full, 0, 1).await.unwrap().total, MAX_INBOX_MESSAGES);
    // An inbox read past and gone is an error, never an empty page.
    assert!(s.inbox_read(&RunId::new("wfr_inbox-gone").unwrap(), 5, 10).await.is_err());

    assert_eq!(s.qstash_signing_keys(("c1", "n1"), false).await.unwrap(), ("c1".into(), "n1".into()));
    assert_eq!(s.qstash_signing_keys(("c2", "n2"), false).await.unwrap(), ("c1".into(), "n1".into()));
    assert_eq!(s.qstash_signing_keys(("c3", "n3"), true).await.unwrap(), ("c3".into(), "n3".into()));

    // The DLQ's deletions: remembered per run, counted once.
    let (a, b) = (RunId::new("wfr_dlq-a").unwrap(), RunId::new("wfr_dlq-b").unwrap());
    assert_eq!(s.dlq_deleted(&[a.clone(), b.clone()]).await.unwrap(), [false, false]);
    assert_eq!(s.dlq_delete(std::slice::from_ref(&a), Duration::from_secs(60)).await.unwrap(), 1);
    assert_eq!(s.dlq_delete(&[a.clone(), b.clone()], Duration::from_secs(60)).await.unwrap(), 1);
    assert_eq!(s.dlq_deleted(&[a, b, RunId::new("wfr_dlq-c").unwrap()]).await.unwrap(), [true, true, false]);
}

/// A creation-time range (after: inclusive, before: exclusive), alone and with
/// the other filters, pages through exactly the runs created in it.
pub async fn listing_filters_by_creation_time(f: Fixture) {
    let s = f.store.as_ref();
    let mut batches: Vec<Vec<keel_engine::proto::RunSummary>> = Vec::new();
    for batch in 0..3 {
        let mut runs = Vec::new();
        for i in 0..5 {
            let labels = [("batch".to_owned(), batch.to_string())].into_iter().collect();
            let id = s.create_run(CreateRun { labels, ..start(json!(i)) }).await.unwrap().run_id;
            runs.push(s.get_run(&id).await.unwrap().unwrap());
        }
        batches.push(runs);
        // The next batch starts on a later millisecond than this one ended.
        let last = batches[batch].iter().map(|r| r.created_at_ms).max().unwrap();
        while s.wall_ms() <= last + 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let from = batches[1].iter().map(|r| r.created_at_ms).min().unwrap();
    let to = batches[2].iter().map(|r| r.created_at_ms).min().unwrap();
    assert!(batches[0].iter().all(|r| r.created_at_ms < from) && batches[1].iter().all(|r| r.created_at_ms < to));
    let ids = |runs: &[keel_engine::proto::RunSummary]| {
        let mut ids: Vec<RunId> = runs.iter().map(|r| r.run_id.clone()).collect();
        ids.sort();
        ids
    };
    let range = RunQuery { created_after_ms: Some(from), created_before_ms: Some(to), limit: 2, ..Default::default() };
    let middle = list_all(s, range.clone()).await;
    assert_eq!(ids(&middle), ids(&batches[1]), "the middle batch, page by page");
    let mut newest_first = middle.iter().map(|r| (r.created_at_ms, r.run_id.clone())).collect::<Vec<_>>();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(middle.iter().map(|r| (r.created_at_ms, r.run_id.clone())).collect::<Vec<_>>(), newest_first);
    let since = list_all(s, RunQuery { created_after_ms: Some(from), limit: 4, ..Default::default() }).await;
    assert_eq!(ids(&since), ids(&[batches[1].clone(), batches[2].clone()].concat()));
    let until = list_all(s, RunQuery { created_before_ms: Some(from), limit: 3, ..Default::default() }).await;
    assert_eq!(ids(&until), ids(&batches[0]));
    // With the other filters: every index is ordered by creation time.
    let pending =
        list_all(s, RunQuery { status: Some(RunStatus::Pending), workflow: Some(WF.into()), ..range.clone() }).await;
    assert_eq!(ids(&pending), ids(&batches[1]));
    let labelled = list_all(s, RunQuery { label: Some(("batch".into(), "1".into())), ..range.clone() }).await;
    assert_eq!(ids(&labelled), ids(&batches[1]));
    let other = list_all(s, RunQuery { label: Some(("batch".into(), "0".into())), ..range }).await;
    assert!(other.is_empty(), "batch 0 is outside the range");
}
