//! The store's periodic duties, safe to run in every process at once: move due
//! timers to their queues, re-queue runs that lost their task (reconcile),
//! expire finished runs past retention, start the runs of due schedules, and
//! (for a worker) refresh its registration. `keel server` and every worker run them.

use std::time::Duration;

use keel_proto::WorkerInfo;

use crate::Store;

/// What to run and how often.
#[derive(Debug, Clone)]
pub struct Duties {
    /// How often due timers are fired (the latency of sleeps and back-offs).
    pub timer_tick: Duration,
    pub reconcile_every: Duration,
    pub expire_every: Duration,
    /// A worker's registration, refreshed every 10 s with a 30 s time to live.
    pub registration: Option<WorkerInfo>,
    /// Start the runs of due schedules (every 200 ms; safe in every process).
    pub schedules: bool,
}

impl Default for Duties {
    fn default() -> Self {
        Self {
            timer_tick: Duration::from_millis(100),
            reconcile_every: Duration::from_secs(30),
            expire_every: Duration::from_secs(60),
            registration: None,
            schedules: true,
        }
    }
}

/// Run the duties until `stop` completes.
pub async fn run_duties(store: &dyn Store, duties: Duties, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let tick_ms = duties.timer_tick.as_millis().max(1);
    let every = |period: Duration| (period.as_millis() / tick_ms).max(1) as u64;
    let (register, reconcile, expire) =
        (every(Duration::from_secs(10)), every(duties.reconcile_every), every(duties.expire_every));
    let unpark = every(Duration::from_secs(1));
    let schedules = every(Duration::from_millis(200));
    let mut tick = tokio::time::interval(duties.timer_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! { biased; _ = &mut stop => return, _ = tick.tick() => {} }
        if let Err(e) = store.fire_due_timers(500).await {
            tracing::warn!(error = %e, "firing due timers failed");
        }
        if duties.schedules
            && n.is_multiple_of(schedules)
            && let Err(e) = crate::schedules::fire_due(store, store.wall_ms(), 100).await
        {
            tracing::warn!(error = %e, "firing due schedules failed");
        }
        if let Some(info) = &duties.registration
            && n.is_multiple_of(register)
            && let Err(e) = store.register_worker(info, Duration::from_secs(30)).await
        {
            tracing::warn!(error = %e, "worker registration failed");
        }
        // Runs parked for want of a worker with these versions go on (at start,
        // then every second: a run another worker set aside waits that long).
        if let Some(info) = &duties.registration
            && n.is_multiple_of(unpark)
        {
            for (workflow, versions) in &info.workflows {
                match store.unpark(workflow, versions).await {
                    Ok(runs) if !runs.is_empty() => {
                        tracing::info!(%workflow, ?runs, "queued parked runs again: their version is live")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, %workflow, "unparking runs failed"),
                }
            }
        }
        if n % reconcile == reconcile / 2 {
            match store.reconcile(500).await {
                Ok(fixed) if !fixed.is_empty() => {
                    tracing::warn!(runs = ?fixed, "re-queued runs that had lost their task")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reconciling failed"),
            }
        }
        if n % expire == expire / 3
            && let Err(e) = store.expire_finished(1000).await
        {
            tracing::warn!(error = %e, "expiring finished runs failed");
        }
        n += 1;
    }
}
