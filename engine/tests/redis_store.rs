//! What only the Redis store has: the bytes it stores must match the committed
//! wire schemas, its Lua key names must match keys.rs, and its scripts must
//! survive a SCRIPT FLUSH (NOSCRIPT -> reload).

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

use keel_engine::{RegistryStore, RunStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use keel_engine::keys::Keys;
use keel_engine::proto::{JournalEvent, RunId, RunStatus};
use keel_engine::testing::RedisServer;
use keel_engine::{Claim, CreateRun, EventWait, Finish, Finished, RedisStore, RunQuery, StoreConfig, Suspension};
use serde_json::{Value, json};

fn validator(name: &str) -> jsonschema::Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto-schemas/json-schema").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::validator_for(&serde_json::from_str(&text).expect("schema is JSON")).expect("schema compiles")
}

fn claim_req(worker: &str) -> Claim {
    Claim {
        workflows: vec!["wire".into()],
        worker_id: worker.into(),
        lease: Duration::from_secs(30),
        max: 1,
        block: Duration::from_secs(2),
        versions: Default::default(),
    }
}

async fn connect(server: &RedisServer) -> (RedisStore, redis::aio::MultiplexedConnection) {
    let store = RedisStore::connect(&server.url(), StoreConfig::with_namespace(RedisServer::unique_namespace("wire")))
        .await
        .expect("connect");
    let raw = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    (store, raw)
}

async fn raw_journal(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<Value> {
    let entries: Vec<(String, BTreeMap<String, String>)> =
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(raw).await.expect("XRANGE");
    entries
        .into_iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 1, "a journal entry is one field `e`: {fields:?}");
            serde_json::from_str(&fields["e"]).expect("journal entries are JSON")
        })
        .collect()
}

#[tokio::test]
async fn stored_messages_match_the_committed_wire_schemas() {
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    let entry_schema = validator("journal-entry.json");
    let task_schema = validator("task.json");

    let parent = RunId::new("parent-run").unwrap();
    let id = store
        .create_run(CreateRun {
            workflow: "wire".into(),
            version: 3,
            input: json!({"goal": "everything"}),
            labels: [("team".to_owned(), "core".to_owned())].into(),
            parent: Some(keel_engine::proto::ParentRef { run_id: parent, step_id: "sub".into() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .run_id;

    // The task as it sits in the queue stream (stream field values are strings).
    let tasks: Vec<(String, BTreeMap<String, String>)> =
        redis::cmd("XRANGE").arg(store.keys().queue("wire")).arg("-").arg("+").query_async(&mut raw).await.unwrap();
    assert_eq!(tasks.len(), 1);
    let fields = &tasks[0].1;
    let task = json!({"v": fields["v"].parse::<u32>().unwrap(), "run_id": fields["run_id"]});
    assert!(task_schema.is_valid(&task), "task {task} matches task.json");
    assert_eq!(fields.len(), 2, "a task has exactly the fields of task.json: {fields:?}");

    let task = store.claim(&claim_req("w1")).await.unwrap().remove(0);
    store
        .append(
            &task.lease,
            &[
                JournalEvent::ProgressDeclared { total_steps: 3 },
                JournalEvent::StepStarted { step_id: "plan".into(), attempt: 1, pos: None },
                JournalEvent::StepCompleted {
                    step_id: "plan".into(),
                    attempt: 1,
                    output: json!({"steps": ["a"]}),
                    pos: None,
                    duration_ms: None,
                },
            ],
        )
        .await
        .unwrap();
    // event_received is built by Lua in two places: on delivery to a waiter...
    store
        .finish(
            &task.lease,
            &[JournalEvent::WaitStarted {
                step_id: "ok/1".into(),
                event_keys: vec!["go\"key".into()],
                timeout_at_ms: None,
                pos: None,
            }],
            Finish::Suspend(Suspension {
                wake_at_ms: None,
                waits: vec![EventWait { step_id: "ok/1".into(), keys: vec!["go\"key".into()], since_ms: task.now_ms }],
                blocked: None,
            }),
        )
        .await
        .unwrap();
    store.deliver_event("go\"key", &json!({"unicode": "é✓", "n": 1.5})).await.unwrap();
    // ...and when a wait finds its event in the lookback.
    let task = store.claim(&claim_req("w1")).await.unwrap().remove(0);
    store.deliver_event("early", &json!([1, 2, 3])).await.unwrap();
    let outcome = store
        .finish(
            &task.lease,
            &[],
            Finish::Suspend(Suspension {
                wake_at_ms: Some(task.now_ms + 60_000),
                waits: vec![EventWait { step_id: "early".into(), keys: vec!["early".into()], since_ms: task.now_ms }],
                blocked: None,
            }),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Finished::EventArrived(_)));
    store.request_cancel(&id, Some("enough")).await.unwrap();
    store.finish(&task.lease, &[], Finish::Cancel { reason: Some("enough".into()) }).await.unwrap();

    let journal = raw_journal(&mut raw, &store.keys().journal(&id)).await;
    let types: Vec<&str> = journal.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "run_started",
            "progress_declared",
            "step_started",
            "step_completed",
            "wait_started",
            "event_received",
            "event_received",
            "cancel_requested",
            "run_cancelled"
        ]
    );
    for entry in &journal {
        if let Err(e) = entry_schema.validate(entry) {
            panic!("stored entry {entry} does not match journal-entry.json: {e}");
        }
    }
    assert_eq!(journal[5]["step_id"], "ok/1", "Lua's JSON escaping round-trips");
    assert_eq!(journal[5]["event_key"], "go\"key");
    assert_eq!(journal[5]["data"], json!({"unicode": "é✓", "n": 1.5}));
    assert_eq!(journal[6]["data"], json!([1, 2, 3]));

    let summary = serde_json::to_value(store.get_run(&id).await.unwrap().unwrap()).unwrap();
    assert!(validator("run-summary.json").is_valid(&summary), "{summary}");
    assert_eq!(summary["status"], "cancelled");
    let page = serde_json::to_value(store.list_runs(&RunQuery::default()).await.unwrap()).unwrap();
    assert!(validator("run-page.json").is_valid(&page), "{page}");
    let info = keel_engine::WorkerInfo {
        worker_id: "w1".into(),
        workflows: [("wire".to_owned(), vec![3])].into(),
        input_schemas: Default::default(),
        started_at_ms: 1,
        heartbeat_at_ms: 0,
    };
    store.register_worker(&info, Duration::from_secs(10)).await.unwrap();
    let stored: String = redis::cmd("GET").arg(store.keys().worker("w1")).query_async(&mut raw).await.unwrap();
    assert!(validator("worker-info.json").is_valid(&serde_json::from_str(&stored).unwrap()), "{stored}");
}

/// Without FUNCTION, the EVALSHA scripts are loaded again on NOSCRIPT.
#[tokio::test]
async fn scripts_are_reloaded_after_a_script_flush() {
    let server = RedisServer::start();
    let mut raw = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL").arg("SETUSER").arg("default").arg("-function").query_async(&mut raw).await.unwrap();
    let (store, mut raw) = connect(&server).await;
    assert!(!store.uses_functions());
    store.create_run(CreateRun { workflow: "wire".into(), input: json!(1), ..Default::default() }).await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
    let created =
        store.create_run(CreateRun { workflow: "wire".into(), input: json!(2), ..Default::default() }).await.unwrap();
    assert!(created.created, "create works after NOSCRIPT");
    let task = store.claim(&claim_req("w")).await.unwrap();
    assert_eq!(task.len(), 1);
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut raw).await.unwrap();
    assert!(info.contains("number_of_cached_scripts:3"), "create, read and claim were reloaded by SHA: {info}");
}

/// Retry an operation while the store reconnects to a restarted Redis (bounded).
async fn eventually<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = keel_engine::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what} still failing after Redis restarted: {e}"),
        }
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_a_redis_kill_with_appendfsync_always() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let (store, _) = connect(&server).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let req = CreateRun {
            workflow: "wire".into(),
            input: json!(i),
            idempotency_key: Some(format!("key-{i}")),
            ..Default::default()
        };
        ids.push(store.create_run(req).await.unwrap().run_id);
    }
    let task = store.claim(&claim_req("w1")).await.unwrap().remove(0);
    let step = JournalEvent::StepCompleted {
        step_id: "a".into(),
        attempt: 1,
        output: json!("kept"),
        pos: None,
        duration_ms: None,
    };
    store.append(&task.lease, std::slice::from_ref(&step)).await.unwrap();
    let done = store.claim(&claim_req("w1")).await.unwrap().remove(0);
    store.finish(&done.lease, &[], Finish::Complete { output: json!("done") }).await.unwrap();

    server.kill();
    server.restart();

    // The same store object reconnects by itself.
    let run = eventually("get_run", || store.get_run(&task.lease.run_id)).await.expect("run survived");
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.completed_steps, 1);
    let journal = store.read_journal(&task.lease.run_id, None, 10).await.unwrap();
    assert_eq!(journal.last().unwrap().entry.event, step, "the acknowledged step result survived");
    let finished = store.get_run(&done.lease.run_id).await.unwrap().unwrap();
    assert_eq!((finished.status, finished.output), (RunStatus::Completed, Some(json!("done"))));
    // Idempotency keys survived too: a repeated start is the same run.
    let again = store
        .create_run(CreateRun {
            workflow: "wire".into(),
            input: json!(4),
            idempotency_key: Some("key-4".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((again.run_id, again.created), (ids[4].clone(), false));
    // The lease and the queue (with its consumer group) survived: the holder goes on,
    // and the three untouched runs are still claimable, each once.
    store.append(&task.lease, &[]).await.expect("lease survived the restart");
    let mut rest = Vec::new();
    let req = claim_req("w2");
    for _ in 0..3 {
        rest.push(eventually("claim", || store.claim(&req)).await.remove(0).lease.run_id);
    }
    rest.sort();
    let mut expected: Vec<RunId> =
        ids.iter().filter(|id| **id != task.lease.run_id && **id != done.lease.run_id).cloned().collect();
    expected.sort();
    assert_eq!(rest, expected);
    let mut none = claim_req("w2");
    none.block = Duration::ZERO;
    assert!(store.claim(&none).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_long_blocking_read_after_a_short_one_does_not_time_out() {
    // Regression: pooled blocking connections kept the response timeout of the
    // call that created them, so a 10 s watch on a connection made for a 1 s
    // claim failed with "timed out" after 4 s.
    let server = RedisServer::start();
    let (store, _) = connect(&server).await;
    let id = store
        .create_run(CreateRun { workflow: "wire".into(), input: json!(1), ..Default::default() })
        .await
        .unwrap()
        .run_id;
    let mut short = claim_req("w");
    short.block = Duration::from_millis(50);
    store.claim(&short).await.unwrap();
    store.claim(&short).await.unwrap(); // blocks 50 ms on the pooled connection
    let seen = store.read_journal(&id, None, 10).await.unwrap();
    let began = std::time::Instant::now();
    let more = store.watch_journal(&id, Some(&seen[0].seq), Duration::from_millis(3500)).await;
    assert!(more.unwrap().is_empty(), "nothing new, and no timeout error");
    assert!(began.elapsed() >= Duration::from_millis(3400));
}

async fn client_count(raw: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(raw).await.expect("CLIENT LIST");
    list.lines().count()
}

/// Regression: every long-poll and journal stream used to take a Redis
/// connection of its own and keep it. Now they share one subscriber connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_share_a_few_connections_and_all_wake() {
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    let store = std::sync::Arc::new(store);
    let baseline = client_count(&mut raw).await;
    let mut runs = Vec::new();
    for i in 0..50 {
        runs.push(
            store
                .create_run(CreateRun { workflow: "wire".into(), version: 1, input: json!(i), ..Default::default() })
                .await
                .unwrap()
                .run_id,
        );
    }
    let mut polls = tokio::task::JoinSet::new();
    for i in 0..800 {
        let (store, id) = (store.clone(), runs[i % runs.len()].clone());
        polls.spawn(async move { store.wait_finished(&id, Duration::from_secs(30)).await.unwrap().unwrap().status });
    }
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (store, id) = (store.clone(), runs[i % runs.len()].clone());
        streams.spawn(async move {
            // Wait for entries after run_started, as an SSE stream resumed there does.
            let first = store.read_journal(&id, None, 1).await.unwrap();
            let after = first[0].seq.clone();
            store.watch_journal(&id, Some(&after), Duration::from_secs(30)).await.unwrap()
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = client_count(&mut raw).await;
    assert!(during <= baseline + 4, "1,000 waiters took {} connections (baseline {baseline})", during - baseline);
    assert!(polls.len() == 800 && streams.len() == 200, "nobody answered before the runs moved");

    for _ in 0..runs.len() {
        let task = store.claim(&claim_req("w")).await.unwrap().pop().expect("a task");
        store.finish(&task.lease, &[], Finish::Complete { output: json!("ok") }).await.unwrap();
    }
    let mut woken = 0;
    while let Some(status) = tokio::time::timeout(Duration::from_secs(10), polls.join_next()).await.expect("polls wake")
    {
        assert_eq!(status.unwrap(), RunStatus::Completed);
        woken += 1;
    }
    while let Some(records) =
        tokio::time::timeout(Duration::from_secs(10), streams.join_next()).await.expect("streams wake")
    {
        assert!(records.unwrap().iter().any(|r| r.entry.event.is_final()), "the stream saw the final entry");
        woken += 1;
    }
    assert_eq!(woken, 1000);
}

/// Regression: one task that does not decode failed the whole claim batch,
/// stranding the tasks the same script had leased until their leases lapsed.
#[tokio::test]
async fn an_undecodable_task_does_not_strand_the_rest_of_its_batch() {
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let req = CreateRun { workflow: "wire".into(), version: 1, input: json!(i), ..Default::default() };
        ids.push(store.create_run(req).await.unwrap().run_id);
    }
    let _: () = redis::cmd("HSET")
        .arg(store.keys().run(&ids[1]))
        .arg("lab")
        .arg("{not json")
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut req = claim_req("w");
    req.max = 10;
    let claimed = store.claim(&req).await.expect("the batch is not failed by one bad task");
    let mut got: Vec<RunId> = claimed.into_iter().map(|t| t.lease.run_id).collect();
    got.sort();
    let mut want = vec![ids[0].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_namespace_written_with_another_key_layout_is_refused() {
    let server = RedisServer::start();
    let mut raw = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let url = server.url();
    let connect = |namespace: &str| RedisStore::connect(&url, StoreConfig::with_namespace(namespace));

    // The first layout's runs index (`<ns>:runs`, no hash tags).
    let _: () = redis::cmd("ZADD").arg("old:runs").arg(1).arg("r-1").query_async(&mut raw).await.unwrap();
    let refused = connect("old").await.expect_err("old layout refused");
    assert!(refused.to_string().contains("first key layout"), "{refused}");

    // The partition count is recorded at first start; later processes adopt
    // it, and one configured with another count is refused.
    let with = |namespace: &str, partitions: Option<u16>| {
        let config = StoreConfig { partitions, ..StoreConfig::with_namespace(namespace) };
        RedisStore::connect(&url, config)
    };
    assert_eq!(with("fresh", Some(16)).await.expect("records 16").partitions(), 16);
    let recorded: BTreeMap<String, String> =
        redis::cmd("HGETALL").arg("{fresh}:layout").query_async(&mut raw).await.unwrap();
    assert_eq!(recorded, BTreeMap::from([("version".into(), "2".into()), ("partitions".into(), "16".into())]));
    assert_eq!(connect("fresh").await.expect("adopts the recorded count").partitions(), 16);
    let refused = with("fresh", Some(4)).await.expect_err("another partition count refused");
    assert!(refused.to_string().contains("16 partition(s), not 4"), "{refused}");
    assert!(with("zero", Some(0)).await.is_err(), "0 partitions is refused");

    let braces = connect("a{b}").await.expect_err("a brace in the namespace is refused");
    assert!(braces.to_string().contains("hash tag"), "{braces}");
}

#[tokio::test]
async fn partition_tags_land_evenly_on_a_clusters_masters() {
    let cluster = tokio::task::spawn_blocking(|| keel_engine::testing::RedisCluster::start(3, 0)).await.unwrap();
    let mut node =
        redis::Client::open(cluster.nodes[0].url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let parts: Vec<Keys> = (0..16).map(|p| Keys::partition("keel", p, 16)).collect();
    let mut per_master = [0u32; 3];
    for (p, keys) in parts.iter().enumerate() {
        // Redis computes the slot itself: the tag's salt put it in this partition's share.
        let slot: u32 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(keys.run(&RunId::new("x").unwrap()))
            .query_async(&mut node)
            .await
            .unwrap();
        assert!((p as u32 * 1024..(p as u32 + 1) * 1024).contains(&slot), "{} in slot {slot}", keys.prefix());
        assert_eq!(slot, u32::from(keel_engine::keys::slot(keys.prefix())));
        // redis-cli splits the slots evenly: 0-5460, 5461-10922, 10923-16383.
        per_master[if slot <= 5460 {
            0
        } else if slot <= 10922 {
            1
        } else {
            2
        }] += 1;
    }
    assert!(per_master.iter().all(|&n| (4..=7).contains(&n)), "{per_master:?}");
}

#[tokio::test]
async fn a_redis_that_refuses_scripting_fails_the_start_saying_why() {
    let server = RedisServer::start();
    let mut raw = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // As a managed service might: the default user may not run scripts.
    let _: () = redis::cmd("ACL").arg("SETUSER").arg("default").arg("-@scripting").query_async(&mut raw).await.unwrap();
    let refused = RedisStore::connect(&server.url(), StoreConfig::with_namespace("acl")).await.expect_err("refused");
    let message = refused.to_string();
    assert!(message.contains("scripting") && message.contains("README"), "{message}");
}

#[tokio::test]
async fn with_wait_replicas_a_write_counts_only_once_a_replica_has_it() {
    let master = RedisServer::start();
    let config = StoreConfig { wait_replicas: 1, ..StoreConfig::with_namespace("durable") };
    let store = RedisStore::connect(&master.url(), config).await.expect("connect");
    let start = || CreateRun { workflow: "wire".into(), input: json!(1), ..Default::default() };

    // No replica: the write is made but not acknowledged as durable.
    let refused = store.create_run(start()).await.expect_err("no replica acknowledged");
    assert!(matches!(refused, keel_engine::Error::NotReplicated { wanted: 1, acked: 0 }), "{refused:?}");
    assert!(refused.is_transient(), "a client may try again");

    // With a replica: acknowledged, and the replica has it.
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let mut raw = redis::Client::open(replica.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let created = loop {
        match store.create_run(start()).await {
            Ok(created) => break created,
            Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let on_replica: bool = redis::cmd("EXISTS")
        .arg(store.keys_of(&created.run_id).run(&created.run_id))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(on_replica, "the replica had the run when its start was acknowledged");
}

/// The key check the conformance suite runs every script under: a key a script
/// touches without having it in KEYS fails the script (the prelude's check);
/// on a cluster, a key of another slot fails it too (Redis's own check for
/// `#!lua` scripts). Without the check, the same undeclared read goes through.
#[tokio::test]
async fn scripts_touching_an_undeclared_key_fail_under_the_key_check() {
    let cluster = tokio::task::spawn_blocking(|| keel_engine::testing::RedisCluster::start(3, 0)).await.unwrap();
    let namespace = RedisServer::unique_namespace("check");
    let checked = StoreConfig { check_keys: true, ..StoreConfig::with_namespace(namespace.clone()) };
    let store = RedisStore::connect(&cluster.url(), checked).await.unwrap();
    let keys = store.keys().clone();
    let same_slot = keys.run(&RunId::new("probe").unwrap());
    assert_eq!(store.probe_key(&same_slot, true).await.unwrap(), None, "a declared key is read");
    let refused = store.probe_key(&same_slot, false).await.expect_err("an undeclared key fails the script");
    assert!(refused.to_string().contains("undeclared key"), "{refused}");
    // A key of another partition (another slot), even declared: Redis refuses it.
    let other = Keys::partition(namespace.clone(), 5, 8).run(&RunId::new("probe").unwrap());
    assert_ne!(keel_engine::keys::slot(&other), keel_engine::keys::slot(&same_slot));
    let refused = store.probe_key(&other, true).await.expect_err("another slot's key fails the script");
    assert!(refused.to_string().to_lowercase().contains("slot"), "{refused}");

    let unchecked = RedisStore::connect(&cluster.url(), StoreConfig::with_namespace(namespace)).await.unwrap();
    assert_eq!(unchecked.probe_key(&same_slot, false).await.unwrap(), None, "no check: the read goes through");
}

/// The operations run as a Redis Functions library where Redis has FUNCTION
/// (7.0 and later), loaded again when Redis lost it; where FUNCTION is refused
/// (an older Redis, or a managed one that does not allow it) they run as
/// EVALSHA scripts, with the same results.
#[tokio::test]
async fn operations_run_as_functions_and_fall_back_to_evalsha() {
    async fn one_run(store: &RedisStore) {
        let req = CreateRun { workflow: "wire".into(), version: 1, input: json!(1), ..Default::default() };
        let id = store.create_run(req).await.unwrap().run_id;
        let task = store.claim(&claim_req("w")).await.unwrap().pop().expect("claimed");
        let done = Finish::Complete { output: json!("done") };
        assert!(matches!(store.finish(&task.lease, &[], done).await.unwrap(), Finished::Done));
        let run = store.get_run(&id).await.unwrap().unwrap();
        assert_eq!((run.status, run.output), (RunStatus::Completed, Some(json!("done"))));
    }
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    assert!(store.uses_functions(), "Redis 7 has FUNCTION");
    one_run(&store).await;
    // Redis lost the library (FUNCTION FLUSH, as after an empty restart): loaded again.
    let _: () = redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut raw).await.unwrap();
    one_run(&store).await;

    let _: () = redis::cmd("ACL").arg("SETUSER").arg("default").arg("-function").query_async(&mut raw).await.unwrap();
    let store = RedisStore::connect(&server.url(), StoreConfig::with_namespace(RedisServer::unique_namespace("eval")))
        .await
        .expect("connect without FUNCTION");
    assert!(!store.uses_functions(), "FUNCTION refused: EVALSHA");
    one_run(&store).await;
}

/// Regression (found by `keel chaos`): reconcile reads its batch before its
/// script runs; a run that finished in between was moved back to pending and
/// given a task by the status it had been read under. A run whose status is not
/// the index's is left alone, and the stale index entry goes.
#[tokio::test]
async fn reconcile_leaves_alone_a_run_that_moved_since_it_was_read() {
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    let req = CreateRun { workflow: "wire".into(), version: 1, input: json!(1), ..Default::default() };
    let id = store.create_run(req).await.unwrap().run_id;
    let task = store.claim(&claim_req("w")).await.unwrap().pop().expect("claimed");
    store.finish(&task.lease, &[], Finish::Complete { output: json!(1) }).await.unwrap();
    let keys = store.keys().clone();
    // As if reconcile had read the run in the pending and running indexes
    // before it completed.
    for status in [RunStatus::Pending, RunStatus::Running] {
        for index in [keys.runs_by_status(status), keys.runs_by_workflow_status("wire", status)] {
            let _: () = redis::cmd("ZADD").arg(&index).arg(1).arg(id.as_str()).query_async(&mut raw).await.unwrap();
        }
    }
    let fixed = store.reconcile(100).await.unwrap();
    assert!(fixed.is_empty(), "{fixed:?}");
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    let task: Option<String> = redis::cmd("HGET").arg(keys.run(&id)).arg("task").query_async(&mut raw).await.unwrap();
    assert_eq!(task.as_deref(), Some(""), "no task for a finished run");
    let queued: u64 = redis::cmd("XLEN").arg(keys.queue("wire")).query_async(&mut raw).await.unwrap();
    assert_eq!(queued, 0);
    for status in [RunStatus::Pending, RunStatus::Running] {
        let listed = store.list_runs(&RunQuery { status: Some(status), ..Default::default() }).await.unwrap();
        assert!(listed.runs.is_empty(), "the stale {status} entry went: {:?}", listed.runs);
    }
}

/// A deployment that kept one signing key under the older layout (a string)
/// keeps it: the first offer after the upgrade adopts it as key `k1` instead of
/// the offer, so receivers holding its public key go on verifying.
#[tokio::test]
async fn a_signing_key_of_the_older_layout_becomes_the_first_of_the_ring() {
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    let _: () =
        redis::cmd("SET").arg(store.keys().signing_key()).arg("older-secret").query_async(&mut raw).await.unwrap();
    let ring = store.signing_keys(Some("offered-secret")).await.unwrap();
    assert_eq!(ring.len(), 1);
    assert_eq!((ring[0].id.as_str(), ring[0].secret.as_str()), ("k1", "older-secret"));
    assert_eq!(store.signing_keys(Some("another")).await.unwrap(), ring);
}

/// The commands a connection watching with MONITOR saw, each as its words
/// (MONITOR quotes them the way Redis's `sdscatrepr` does). A thread reads.
struct Monitor {
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    fn start(server: &RedisServer) -> Self {
        use std::io::{BufRead, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
        stream.write_all(b"MONITOR\r\n").expect("MONITOR");
        let mut reader = std::io::BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR answers");
        assert_eq!(ok.trim_end(), "+OK");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { lines }
    }

    /// The next command whose first word is FCALL or EVALSHA and whose
    /// arguments mention `needle` (bounded: 10 s).
    fn next_script_call(&mut self, needle: &str) -> Vec<Vec<u8>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no script call mentioning {needle} within 10 s"));
            let words = monitor_words(&line);
            let first = words.first().map(|w| String::from_utf8_lossy(w).to_uppercase());
            if matches!(first.as_deref(), Some("FCALL" | "EVALSHA"))
                && words.iter().any(|w| String::from_utf8_lossy(w).contains(needle))
            {
                return words;
            }
        }
    }
}

/// The quoted words of one MONITOR line (`+<time> [<db> <addr>] "w" "w" …`).
fn monitor_words(line: &str) -> Vec<Vec<u8>> {
    let Some(start) = line.find("] ") else { return Vec::new() };
    let bytes = &line.as_bytes()[start + 2..];
    let (mut words, mut i) = (Vec::new(), 0);
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let mut word = Vec::new();
        i += 1;
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' {
                i += 1;
                match bytes[i] {
                    b'n' => word.push(b'\n'),
                    b'r' => word.push(b'\r'),
                    b't' => word.push(b'\t'),
                    b'a' => word.push(7),
                    b'b' => word.push(8),
                    b'x' => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                        word.push(u8::from_str_radix(hex, 16).expect("hex digits"));
                        i += 2;
                    }
                    other => word.push(other),
                }
            } else {
                word.push(bytes[i]);
            }
            i += 1;
        }
        words.push(word);
        i += 1;
    }
    words
}

/// Send `words` again, as a cluster client does after the connection that
/// carried them dropped: the script's text answer.
async fn resend(raw: &mut redis::aio::MultiplexedConnection, words: &[Vec<u8>]) -> String {
    let mut cmd = redis::cmd(std::str::from_utf8(&words[0]).unwrap());
    for word in &words[1..] {
        cmd.arg(word.as_slice());
    }
    cmd.query_async(raw).await.expect("the re-sent script answers")
}

/// Regression (found by `keel chaos` on a cluster with a master failover: one
/// step journaled twice): the cluster client re-sends a script whose
/// connection dropped, though the script may have run. A lease's writes carry
/// a token; the same write again answers what it answered and journals
/// nothing more, the run's end included.
#[tokio::test]
async fn a_lease_write_sent_twice_is_journaled_once() {
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    let req = CreateRun { workflow: "wire".into(), version: 1, input: json!(1), ..Default::default() };
    let id = store.create_run(req).await.unwrap().run_id;
    let task = store.claim(&claim_req("w")).await.unwrap().pop().expect("claimed");
    let journal_key = store.keys().journal(&id);
    let mut monitor = Monitor::start(&server);

    let step = |name: &str| JournalEvent::StepCompleted {
        step_id: name.into(),
        attempt: 1,
        output: json!(name),
        pos: None,
        duration_ms: None,
    };
    let first = store.append(&task.lease, &[step("a")]).await.unwrap();
    let sent = monitor.next_script_call("step_completed");
    let before = raw_journal(&mut raw, &journal_key).await;
    let again: Value = serde_json::from_str(resend(&mut raw, &sent).await.lines().next().unwrap()).unwrap();
    assert_eq!(again["r"], "OK", "{again}");
    assert_eq!(again["seqs"], json!(first.seqs), "the first answer again");
    assert_eq!(raw_journal(&mut raw, &journal_key).await, before, "nothing journaled twice");

    // Several entries in one write: the same answer again too.
    let several = store.append(&task.lease, &[step("x1"), step("x2")]).await.unwrap();
    let sent = monitor.next_script_call("x2");
    let again: Value = serde_json::from_str(resend(&mut raw, &sent).await.lines().next().unwrap()).unwrap();
    assert_eq!(again["seqs"], json!(several.seqs));

    // The lease's next write is a new one (three entries: answered in short,
    // so the run hash stays a compact listpack).
    store.append(&task.lease, &[step("b"), step("b2"), step("b3")]).await.unwrap();
    let encoding: String =
        redis::cmd("OBJECT").arg("ENCODING").arg(store.keys().run(&id)).query_async(&mut raw).await.unwrap();
    assert_eq!(encoding, "listpack", "a write's kept answer keeps the run hash compact");
    let steps = |journal: &[Value]| journal.iter().filter(|e| e["type"] == "step_completed").count();
    assert_eq!(steps(&raw_journal(&mut raw, &journal_key).await), 6);

    // The run's end, sent twice: the second answers DONE too, not LOST.
    let done = store.finish(&task.lease, &[step("c")], Finish::Complete { output: json!("out") }).await.unwrap();
    assert!(matches!(done, Finished::Done));
    let sent = monitor.next_script_call("run_completed");
    let before = raw_journal(&mut raw, &journal_key).await;
    let again: Value = serde_json::from_str(resend(&mut raw, &sent).await.lines().next().unwrap()).unwrap();
    assert_eq!(again["r"], "DONE", "{again}");
    let after = raw_journal(&mut raw, &journal_key).await;
    assert_eq!(after, before);
    assert_eq!(steps(&after), 7);
    assert_eq!(after.iter().filter(|e| e["type"] == "run_completed").count(), 1);
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!((run.status, run.completed_steps), (RunStatus::Completed, 7));
    // A finished run keeps the token of its end, not a write's answer.
    let kept: (Option<String>, Option<String>) =
        redis::cmd("HMGET").arg(store.keys().run(&id)).arg("lw").arg("lr").query_async(&mut raw).await.unwrap();
    assert!(kept.0.is_some() && kept.1.is_none(), "{kept:?}");
}

/// The same for an event: a delivery sent twice (a cluster client's re-send
/// after a dropped connection) is added to the key's stream once and wakes
/// once, and the second send answers what the first did. (A duplicate left
/// in the stream would be taken by the run's next wait on the key.)
#[tokio::test]
async fn an_event_delivery_sent_twice_is_added_once() {
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    let req = CreateRun { workflow: "wire".into(), version: 1, input: json!(1), ..Default::default() };
    let id = store.create_run(req).await.unwrap().run_id;
    let task = store.claim(&claim_req("w")).await.unwrap().pop().expect("claimed");
    let wait = EventWait { step_id: "approve".into(), keys: vec!["approval".into()], since_ms: task.now_ms };
    let suspended = store
        .finish(&task.lease, &[], Finish::Suspend(Suspension { wake_at_ms: None, waits: vec![wait], blocked: None }))
        .await
        .unwrap();
    assert!(matches!(suspended, Finished::Done), "{suspended:?}");
    let mut monitor = Monitor::start(&server);
    let first = store.deliver("approval", &json!({"resend": "me"}), None).await.unwrap();
    assert_eq!(first.woken, vec![id.clone()]);
    let sent = monitor.next_script_call("resend");
    let again: Value = serde_json::from_str(resend(&mut raw, &sent).await.lines().next().unwrap()).unwrap();
    assert_eq!(again["r"], "OK", "{again}");
    assert_eq!(again["id"], first.event_id.as_str());
    assert_eq!(again["woken"], json!([id.as_str()]), "the first answer again");
    assert_eq!(again["duplicate"], false);
    let keys = store.keys().clone();
    let kept: u64 = redis::cmd("XLEN").arg(keys.events("approval")).query_async(&mut raw).await.unwrap();
    assert_eq!(kept, 1, "the event is in the lookback stream once");
    let journal = raw_journal(&mut raw, &keys.journal(&id)).await;
    assert_eq!(journal.iter().filter(|e| e["type"] == "event_received").count(), 1);
    // A client's repeat (its own event id) is still answered as a duplicate.
    let keyed = store.deliver("approval", &json!(2), Some("evt-1")).await.unwrap();
    let repeat = store.deliver("approval", &json!(2), Some("evt-1")).await.unwrap();
    assert!(!keyed.duplicate && repeat.duplicate && repeat.event_id == keyed.event_id);
}

/// A suspension that found its event already there (finish answers EVENT,
/// and the lease goes on), sent twice: the same event, taken once.
#[tokio::test]
async fn a_suspension_that_took_an_event_sent_twice_takes_it_once() {
    let server = RedisServer::start();
    let (store, mut raw) = connect(&server).await;
    let req = CreateRun { workflow: "wire".into(), version: 1, input: json!(1), ..Default::default() };
    let id = store.create_run(req).await.unwrap().run_id;
    let task = store.claim(&claim_req("w")).await.unwrap().pop().expect("claimed");
    store.deliver_event("early-bird", &json!({"worm": 1})).await.unwrap();
    let mut monitor = Monitor::start(&server);
    let wait = EventWait { step_id: "early".into(), keys: vec!["early-bird".into()], since_ms: task.now_ms };
    let suspension = Suspension { wake_at_ms: None, waits: vec![wait], blocked: None };
    let Finished::EventArrived(record) = store.finish(&task.lease, &[], Finish::Suspend(suspension)).await.unwrap()
    else {
        panic!("the event was there");
    };
    let sent = monitor.next_script_call("early-bird");
    let again: Value = serde_json::from_str(resend(&mut raw, &sent).await.lines().next().unwrap()).unwrap();
    assert_eq!((again["r"].as_str(), again["seq"].as_str()), (Some("EVENT"), Some(record.seq.as_str())), "{again}");
    let entry: Value = serde_json::from_str(again["entry"].as_str().unwrap()).unwrap();
    assert_eq!(entry["data"], json!({"worm": 1}), "{entry}");
    let journal = raw_journal(&mut raw, &store.keys().journal(&id)).await;
    assert_eq!(journal.iter().filter(|e| e["type"] == "event_received").count(), 1, "taken once");
}
