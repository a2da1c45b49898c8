//! Flow control and priority through the worker runtime, on both stores: what
//! a service behind a key sees, what a rate allows, a paused key, and the
//! order priorities are served in.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, eventually, wait_final};
use keel_engine::CreateRun;
use keel_engine::proto::{FlowControl, FlowLimits, RunId, RunStatus};
use keel_worker::{CallRequest, Context, StepError, Worker, Workflow};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_stores!(
    a_key_with_parallelism_4_is_never_exceeded_across_two_workers,
    a_rate_of_20_per_second_holds_in_every_window,
    a_paused_key_holds_its_runs_until_resumed,
    higher_priorities_go_first_and_priority_1_still_completes_under_a_flood,
);

/// A local service that counts the requests it is serving at once (and the
/// most it ever served at once), taking `hold` over each.
async fn counting_service(hold: Duration) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/work", listener.local_addr().unwrap());
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), most.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (n, m) = (n.clone(), m.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let serving = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(serving, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                n.fetch_sub(1, Ordering::SeqCst);
                let body = "{\"ok\":true}";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    (url, now, most)
}

/// A worker whose calls may reach this machine's test services.
async fn worker(b: &Backend, workflows: Vec<Workflow>, concurrency: usize) -> common::Running {
    let mut builder = Worker::builder()
        .store(b.store.clone())
        .allow_private_targets(true)
        .concurrency(concurrency)
        .lease(Duration::from_secs(5))
        .timer_tick(Duration::from_millis(20))
        .shutdown_grace(Duration::from_millis(500));
    for workflow in workflows {
        builder = builder.register(workflow);
    }
    common::run_worker(builder).await
}

fn parallelism(key: &str, n: u32) -> FlowControl {
    FlowControl { key: key.into(), limits: FlowLimits { parallelism: Some(n), ..Default::default() } }
}

async fn start_with(b: &Backend, workflow: &str, input: Value, f: impl FnOnce(&mut CreateRun)) -> RunId {
    let mut req = CreateRun { workflow: workflow.into(), version: 1, input, ..Default::default() };
    f(&mut req);
    b.store.create_run(req).await.unwrap().run_id
}

async fn all_complete(b: &Backend, ids: &[RunId], within: Duration) {
    for id in ids {
        let run = wait_final(&b.store, id, within).await;
        assert_eq!(run.status, RunStatus::Completed, "{id}: {:?}", run.error);
    }
}

/// 100 runs × 3 calls under one key with parallelism 4, on two workers of 16
/// slots each: the service never serves more than 4 at once, and every run
/// completes.
async fn a_key_with_parallelism_4_is_never_exceeded_across_two_workers(b: Backend) {
    let (url, _, most) = counting_service(Duration::from_millis(15)).await;
    let three_calls = || {
        Workflow::new("three-calls", |ctx: Context, url: String| async move {
            for step in ["plan", "execute", "reflect"] {
                ctx.call(step, CallRequest::post(url.clone(), json!({ "step": step })).retry(3)).await?;
            }
            Ok(())
        })
    };
    let workers = [worker(&b, vec![three_calls()], 16).await, worker(&b, vec![three_calls()], 16).await];
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(start_with(&b, "three-calls", json!(url), |r| r.flow_control = Some(parallelism("svc", 4))).await);
    }
    all_complete(&b, &ids, Duration::from_secs(120)).await;
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 4, "the service saw {most} requests at once");
    assert!(most >= 2, "the key let work run in parallel ({most})");
    // The last give-backs go out just after their attempts end, not with the finishes.
    eventually(Duration::from_secs(10), "every slot back", || async {
        let status = b.store.flow_key("svc").await.unwrap().expect("the key is known");
        (status.in_flight == 0 && status.waiting == 0).then_some(())
    })
    .await;
    for w in workers {
        w.stop().await;
    }
}

/// 60 one-step runs, each step under a key of 20 starts per second: no window
/// of a second holds more than 20 starts. (Starts are taken where the step's
/// code begins, on this machine's clock; the key counts them on the store's
/// clock a moment earlier, so the windows checked are 950 ms long.)
async fn a_rate_of_20_per_second_holds_in_every_window(b: Backend) {
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let s = starts.clone();
    let limited = Workflow::new("limited", move |ctx: Context, _: Value| {
        let s = s.clone();
        async move {
            let rate = FlowLimits { rate: Some(20), period: Some("1s".into()), ..Default::default() };
            ctx.step("call")
                .flow_control("rate:20", rate)
                .run(move || async move {
                    s.lock().unwrap().push(Instant::now());
                    Ok::<_, StepError>(())
                })
                .await
        }
    });
    let w = worker(&b, vec![limited], 32).await;
    let began = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(start_with(&b, "limited", json!(null), |_| {}).await);
    }
    all_complete(&b, &ids, Duration::from_secs(60)).await;
    let mut times = starts.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), 60, "each step ran once");
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| u.duration_since(*t) < Duration::from_millis(950)).count();
        assert!(in_window <= 20, "{in_window} starts within 950 ms of start {i}");
    }
    assert!(began.elapsed() >= Duration::from_secs(2), "60 starts at 20/s take at least two more windows");
    w.stop().await;
}

/// A paused key starts nothing: its runs wait, saying why, until it is resumed.
async fn a_paused_key_holds_its_runs_until_resumed(b: Backend) {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let gated = Workflow::new("gated", move |ctx: Context, _: Value| {
        let r = r.clone();
        async move {
            ctx.step("only")
                .run(move || async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, StepError>(())
                })
                .await
        }
    });
    b.store.pause_flow_key("gate", true).await.unwrap();
    let w = worker(&b, vec![gated], 8).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(start_with(&b, "gated", json!(null), |r| r.flow_control = Some(parallelism("gate", 2))).await);
    }
    for id in &ids {
        let run = eventually(Duration::from_secs(10), "the run to wait for the key", || async {
            let run = b.store.get_run(id).await.unwrap().unwrap();
            (run.status == RunStatus::Waiting).then_some(run)
        })
        .await;
        assert_eq!(run.blocked.as_deref(), Some("waiting for flow-control key \"gate\" (paused)"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0, "nothing ran under a paused key");
    assert_eq!(b.store.flow_key("gate").await.unwrap().unwrap().waiting, 3);
    b.store.pause_flow_key("gate", false).await.unwrap();
    all_complete(&b, &ids, Duration::from_secs(20)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    w.stop().await;
}

/// Queued priority-5 runs go before queued priority-1 runs; and under a
/// steady supply of priority-5 runs, a priority-1 run still completes.
async fn higher_priorities_go_first_and_priority_1_still_completes_under_a_flood(b: Backend) {
    let order: Arc<Mutex<Vec<u8>>> = Arc::default();
    let o = order.clone();
    let noted = Workflow::new("noted", move |ctx: Context, priority: u8| {
        let o = o.clone();
        async move {
            ctx.step("note")
                .run(move || async move {
                    o.lock().unwrap().push(priority);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, StepError>(())
                })
                .await
        }
    });
    let mut queued = Vec::new();
    for priority in [1, 1, 1, 5, 5, 5] {
        queued.push(start_with(&b, "noted", json!(priority), |r| r.priority = Some(priority)).await);
    }
    let w = worker(&b, vec![noted], 1).await;
    all_complete(&b, &queued, Duration::from_secs(20)).await;
    assert_eq!(&order.lock().unwrap()[..3], [5, 5, 5], "priority 5 first: {:?}", order.lock().unwrap());

    // A flood: keep five priority-5 runs queued at all times, with one
    // priority-1 run among them; it completes while the flood goes on.
    let low = start_with(&b, "noted", json!(1), |r| r.priority = Some(1)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut flood = Vec::new();
    loop {
        let queued = b
            .store
            .list_runs(&keel_engine::RunQuery { status: Some(RunStatus::Pending), ..Default::default() })
            .await
            .unwrap()
            .runs
            .len();
        for _ in queued..6 {
            flood.push(start_with(&b, "noted", json!(5), |r| r.priority = Some(5)).await);
        }
        if b.store.get_run(&low).await.unwrap().unwrap().status == RunStatus::Completed {
            break;
        }
        assert!(Instant::now() < deadline, "priority 1 never got a turn under the flood");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It overtook priority-5 runs queued before it finished. (How many of the
    // flood went first depends on where the one-in-ten lowest-first claim
    // falls, which may be the very first: not a count to assert.)
    w.stop().await;
    let mut overtaken = 0;
    for id in &flood {
        if b.store.get_run(id).await.unwrap().unwrap().status != RunStatus::Completed {
            overtaken += 1;
        }
    }
    assert!(overtaken > 0, "priority 1 completed only once the flood had drained ({} runs)", flood.len());
}
