//! The scheduler on the memory store with a movable clock: ticks in a time zone
//! through daylight-saving changes, overlap and catch-up, and the cron
//! arithmetic itself. (The store operations are conformance cases; several
//! servers at once is tests/api.rs.)

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{TimeZone as _, Utc};
use keel_engine::proto::{CatchUp, Overlap, RunStatus, ScheduleSpec, WorkerInfo};
use keel_engine::schedules::{Cadence, fire_due, start_tick};
use keel_engine::{ManualClock, MemoryStore, RegistryStore, RunStore, ScheduleStore, Store, StoreConfig};
use serde_json::json;

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap().timestamp_millis() as u64
}

fn spec(id: &str, cron: &str, tz: &str) -> ScheduleSpec {
    serde_json::from_value(json!({"id": id, "workflow": "report", "cron": cron, "timezone": tz, "input": {"n": 1}}))
        .unwrap()
}

/// A store whose clock is set to `at` (and moves on from there), with a live worker for `report`.
async fn store_at(at: u64) -> (Arc<MemoryStore>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let store = Arc::new(MemoryStore::with_clock(StoreConfig::default(), clock.clone()));
    clock.advance_ms(at - store.wall_ms());
    let worker = WorkerInfo {
        worker_id: "w1".into(),
        workflows: BTreeMap::from([("report".to_owned(), vec![1, 2])]),
        input_schemas: BTreeMap::new(),
        started_at_ms: at,
        heartbeat_at_ms: 0,
    };
    store.register_worker(&worker, std::time::Duration::from_secs(3600 * 24 * 400)).await.unwrap();
    (store, clock)
}

/// Move the clock to `at` (never back).
fn set(store: &MemoryStore, clock: &ManualClock, at: u64) {
    let now = store.wall_ms();
    assert!(at >= now, "the clock only moves forward");
    clock.advance_ms(at - now);
}

async fn put(store: &MemoryStore, spec: &ScheduleSpec) {
    let next = Cadence::of(spec).unwrap().next_after(store.wall_ms());
    store.put_schedule(spec, next).await.unwrap();
}

#[test]
fn ticks_follow_the_time_zone_through_daylight_saving_changes() {
    // 09:00 in Lisbon: 09:00 UTC in winter, 08:00 UTC in summer (from 2027-03-28).
    let daily = Cadence::parse("0 9 * * *", "Europe/Lisbon").unwrap();
    assert_eq!(daily.next_after(ms(2027, 3, 27, 0, 0, 0)), Some(ms(2027, 3, 27, 9, 0, 0)));
    assert_eq!(daily.next_after(ms(2027, 3, 27, 9, 0, 0)), Some(ms(2027, 3, 28, 8, 0, 0)));
    // 01:30 does not exist on 2027-03-28 (01:00 -> 02:00): it fires once, at
    // the first instant after the gap, and the day after as usual.
    let gap = Cadence::parse("30 1 * * *", "Europe/Lisbon").unwrap();
    let on_the_day = gap.next_after(ms(2027, 3, 27, 23, 0, 0)).unwrap();
    assert_eq!(on_the_day, ms(2027, 3, 28, 1, 0, 0), "02:00 local, just after the gap");
    assert_eq!(gap.next_after(on_the_day), Some(ms(2027, 3, 29, 0, 30, 0)));
    // 01:30 happens twice on 2027-10-31 (02:00 -> 01:00): it fires once.
    let first = gap.next_after(ms(2027, 10, 30, 23, 0, 0)).unwrap();
    assert_eq!(first, ms(2027, 10, 31, 0, 30, 0), "the first 01:30 (summer time)");
    assert_eq!(gap.next_after(first), Some(ms(2027, 11, 1, 1, 30, 0)), "not again an hour later");
    // Six fields: seconds first.
    let every_two = Cadence::parse("*/2 * * * * *", "UTC").unwrap();
    assert_eq!(every_two.upcoming(ms(2027, 1, 1, 0, 0, 1), 3), [2, 4, 6].map(|s| ms(2027, 1, 1, 0, 0, s)));
    assert_eq!(every_two.latest_at_or_before(ms(2027, 1, 1, 0, 0, 5) + 500), Some(ms(2027, 1, 1, 0, 0, 4)));
}

#[test]
fn bad_crons_and_zones_are_refused_saying_why() {
    let zone = Cadence::parse("0 9 * * *", "Mars/Olympus").unwrap_err().to_string();
    assert!(zone.contains("IANA time zone"), "{zone}");
    let cron = Cadence::parse("0 25 * * *", "UTC").unwrap_err().to_string();
    assert!(cron.contains("cron"), "{cron}");
    assert!(Cadence::parse("every day", "UTC").is_err());
}

#[tokio::test]
async fn a_daily_schedule_starts_one_run_per_local_day_across_the_change() {
    let (store, clock) = store_at(ms(2027, 3, 27, 8, 59, 0)).await;
    put(&store, &spec("daily", "0 9 * * *", "Europe/Lisbon")).await;
    assert!(fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap().is_empty(), "not due yet");

    set(&store, &clock, ms(2027, 3, 27, 9, 0, 0) + 300);
    let first = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].as_str(), format!("sched-daily-{}", ms(2027, 3, 27, 9, 0, 0)));
    let run = store.get_run(&first[0]).await.unwrap().unwrap();
    assert_eq!(run.labels.get("schedule").map(String::as_str), Some("daily"));
    assert_eq!(run.version, 2, "the newest live version");
    assert!(fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap().is_empty(), "one run per tick");

    // The next day's 09:00 local is 08:00 UTC: summer time began overnight.
    let stored = store.get_schedule("daily").await.unwrap().unwrap();
    assert_eq!(stored.next_ms, Some(ms(2027, 3, 28, 8, 0, 0)));
    store.request_cancel(&first[0], None).await.unwrap();
    set(&store, &clock, ms(2027, 3, 28, 8, 0, 0) + 300);
    let second = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].as_str(), format!("sched-daily-{}", ms(2027, 3, 28, 8, 0, 0)));
}

#[tokio::test]
async fn overlap_skip_starts_nothing_while_the_last_run_is_live() {
    let (store, clock) = store_at(ms(2027, 5, 1, 12, 0, 0) + 100).await;
    put(&store, &spec("every-second", "* * * * * *", "UTC")).await;
    set(&store, &clock, ms(2027, 5, 1, 12, 0, 1) + 300);
    let first = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    assert_eq!(first.len(), 1);

    // The run is still pending (nobody works on it): the next tick skips.
    set(&store, &clock, ms(2027, 5, 1, 12, 0, 2) + 300);
    assert!(fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap().is_empty());
    let stored = store.get_schedule("every-second").await.unwrap().unwrap();
    assert!(stored.state.last_skip.as_deref().unwrap().contains("still live"), "{stored:?}");
    assert_eq!(stored.state.last_run_id.as_ref(), Some(&first[0]));
    assert_eq!(stored.next_ms, Some(ms(2027, 5, 1, 12, 0, 3)), "moved on past the skipped tick");

    // Once it ended, the next tick starts a run again.
    store.request_cancel(&first[0], None).await.unwrap();
    assert_eq!(store.get_run(&first[0]).await.unwrap().unwrap().status, RunStatus::Cancelled);
    set(&store, &clock, ms(2027, 5, 1, 12, 0, 3) + 300);
    let third = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    assert_eq!(third[0].as_str(), format!("sched-every-second-{}", ms(2027, 5, 1, 12, 0, 3)));
}

#[tokio::test]
async fn overlap_buffer_one_runs_the_waiting_tick_when_the_live_run_ends() {
    let (store, clock) = store_at(ms(2027, 5, 1, 12, 0, 0) + 100).await;
    let mut buffered = spec("buffered", "* * * * * *", "UTC");
    buffered.overlap = Overlap::BufferOne;
    put(&store, &buffered).await;
    set(&store, &clock, ms(2027, 5, 1, 12, 0, 1) + 300);
    let first = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    // Three more ticks pass while it is live: one waits, the rest are dropped.
    for s in 2..=4 {
        set(&store, &clock, ms(2027, 5, 1, 12, 0, s) + 300);
        assert!(fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap().is_empty());
    }
    store.request_cancel(&first[0], None).await.unwrap();
    let waited = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    assert_eq!(waited[0].as_str(), format!("sched-buffered-{}", ms(2027, 5, 1, 12, 0, 2)), "the first waiting tick");
    let stored = store.get_schedule("buffered").await.unwrap().unwrap();
    assert_eq!(stored.next_ms, Some(ms(2027, 5, 1, 12, 0, 5)), "on from now");
}

#[tokio::test]
async fn missed_ticks_are_skipped_or_run_once_as_catch_up_says() {
    let start = ms(2027, 6, 1, 0, 0, 0) + 100;
    let (store, clock) = store_at(start).await;
    let mut once = spec("once", "*/10 * * * * *", "UTC");
    once.catch_up = CatchUp::RunOnce;
    put(&store, &once).await;
    put(&store, &spec("skipping", "*/10 * * * * *", "UTC")).await;
    // Downtime: nothing ran for a minute.
    set(&store, &clock, ms(2027, 6, 1, 0, 1, 5));
    let started = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].as_str(), format!("sched-once-{}", ms(2027, 6, 1, 0, 1, 0)), "the latest missed tick");
    let skipping = store.get_schedule("skipping").await.unwrap().unwrap();
    assert!(skipping.state.last_skip.as_deref().unwrap().contains("missed"), "{skipping:?}");
    for id in ["once", "skipping"] {
        let s = store.get_schedule(id).await.unwrap().unwrap();
        assert_eq!(s.next_ms, Some(ms(2027, 6, 1, 0, 1, 10)), "{id} goes on from now");
    }
}

#[tokio::test]
async fn schedules_are_bounded_in_number_and_input_size() {
    let (store, _clock) = store_at(ms(2027, 1, 1, 0, 0, 0)).await;
    for i in 0..keel_engine::schedules::MAX_SCHEDULES {
        put(&store, &spec(&format!("s{i}"), "0 * * * *", "UTC")).await;
    }
    let extra = spec("one-too-many", "0 * * * *", "UTC");
    let err = store.put_schedule(&extra, Some(1)).await.unwrap_err();
    assert!(err.to_string().contains("at most 1000 schedules"), "{err}");
    put(&store, &spec("s0", "*/5 * * * *", "UTC")).await; // a replace is not a new one
    let mut big = spec("big", "0 * * * *", "UTC");
    big.input = json!("x".repeat(70 * 1024));
    let err = keel_engine::schedules::validate(&big, &StoreConfig::default()).unwrap_err();
    assert!(err.to_string().contains("schedule's input"), "{err}");
}

/// A server that started a tick's run and died before moving the schedule on:
/// the next pass takes that run as the tick's (recorded as the last run, not
/// skipped because the run before it is still live), and starts nothing twice.
#[tokio::test]
async fn a_crash_between_starting_a_ticks_run_and_moving_on_loses_and_duplicates_nothing() {
    let (store, clock) = store_at(ms(2027, 5, 1, 12, 0, 0) + 100).await;
    let every = spec("every-second", "* * * * * *", "UTC");
    put(&store, &every).await;
    set(&store, &clock, ms(2027, 5, 1, 12, 0, 1) + 300);
    let first = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    assert_eq!(first.len(), 1, "the first tick's run, still pending (live)");

    // The next tick: a server creates its run, then dies before `advance`.
    let tick = ms(2027, 5, 1, 12, 0, 2);
    set(&store, &clock, tick + 300);
    let orphan = start_tick(store.as_ref(), &every, tick).await.unwrap().unwrap();
    let before = store.list_runs(&Default::default()).await.unwrap().runs.len();

    let again = fire_due(store.as_ref(), store.wall_ms(), 10).await.unwrap();
    assert_eq!(again, std::slice::from_ref(&orphan), "the orphan is the tick's run");
    assert_eq!(store.list_runs(&Default::default()).await.unwrap().runs.len(), before, "no second run");
    let stored = store.get_schedule("every-second").await.unwrap().unwrap();
    assert_eq!(stored.state.last_run_id.as_ref(), Some(&orphan));
    assert_eq!(stored.state.last_skip, None);
    assert_eq!(stored.next_ms, Some(ms(2027, 5, 1, 12, 0, 3)));
}
