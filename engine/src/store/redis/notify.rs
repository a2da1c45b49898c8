//! One subscriber connection per store for every long-poll and journal stream
//! in this process.
//!
//! A waiter marks its run watched in Redis (a key with a TTL, `watch.lua`);
//! while it is, the run's scripts `PUBLISH` its id on the namespace's notify
//! channel. One task here holds the only subscriber connection and wakes the
//! local waiters of that run, who then read what changed over the shared
//! multiplexed connection. Ten thousand long-polls cost one connection, not ten
//! thousand.
//!
//! Messages can be missed (the subscriber reconnecting): each (re)subscription
//! wakes every waiter to re-check, and waiters re-check on their own every few
//! seconds anyway. The task ends (and its connection closes) when nobody has
//! waited for a while; the next waiter starts it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::Client;
use tokio::sync::watch;

/// How long the subscriber stays connected with nobody waiting.
const IDLE: Duration = Duration::from_secs(30);

/// What wakes a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// A journal entry (journal streams).
    Entry,
    /// The run's end (long-polls for the result): not every step.
    End,
}

/// Per run: counters bumped on each entry and on the end, and how many wait.
struct Signals {
    entry: watch::Sender<u64>,
    end: watch::Sender<u64>,
    waiting: usize,
}

#[derive(Default)]
struct Registry {
    runs: HashMap<String, Signals>,
    /// Whether the subscriber task is running.
    running: bool,
    /// The subscriber task (a runtime that shut down may have dropped it).
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The waiters of this store, by run id.
pub(super) struct Notifier {
    /// Nodes to subscribe through, tried in turn (any node of a cluster hears
    /// every PUBLISH).
    clients: Vec<Client>,
    /// The notify channel of every partition.
    channels: Vec<String>,
    registry: Arc<Mutex<Registry>>,
}

/// A registered waiter: `changed()` returns after the next notification for
/// its run (or a reconnect). Unregisters when dropped.
pub(super) struct Waiter {
    run_id: String,
    rx: watch::Receiver<u64>,
    registry: Arc<Mutex<Registry>>,
}

impl Waiter {
    /// Wait for a notification, at most `limit`. A notification that came after
    /// registration and before this call counts.
    pub async fn changed(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.rx.changed()).await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut registry = lock(&self.registry);
        if let Some(signals) = registry.runs.get_mut(&self.run_id) {
            signals.waiting -= 1;
            if signals.waiting == 0 {
                registry.runs.remove(&self.run_id);
            }
        }
    }
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

impl Notifier {
    pub fn new(clients: Vec<Client>, channels: Vec<String>) -> Self {
        Self { clients, channels, registry: Arc::default() }
    }

    /// Register interest in `run_id` (before checking its state, so nothing
    /// published after the check is missed), starting the subscriber if needed.
    pub fn wait_on(&self, run_id: &str, wake: Wake) -> Waiter {
        let mut registry = lock(&self.registry);
        let signals = registry.runs.entry(run_id.to_owned()).or_insert_with(|| Signals {
            entry: watch::Sender::new(0),
            end: watch::Sender::new(0),
            waiting: 0,
        });
        signals.waiting += 1;
        let rx = match wake {
            Wake::Entry => signals.entry.subscribe(),
            Wake::End => signals.end.subscribe(),
        };
        let gone = registry.task.as_ref().is_none_or(tokio::task::JoinHandle::is_finished);
        if !registry.running || gone {
            registry.running = true;
            let task = subscriber(self.clients.clone(), self.channels.clone(), Arc::downgrade(&self.registry));
            registry.task = Some(tokio::spawn(task));
        }
        Waiter { run_id: run_id.to_owned(), rx, registry: self.registry.clone() }
    }
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|n| *n = n.wrapping_add(1));
}

fn bump_all(signals: &Signals) {
    bump(&signals.entry);
    bump(&signals.end);
}

/// Hold the subscription while anybody waits; wake waiters on messages.
async fn subscriber(clients: Vec<Client>, channels: Vec<String>, registry: Weak<Mutex<Registry>>) {
    let mut failures = 0u32;
    for attempt in 0usize.. {
        // After a failure, the next node.
        let client = &clients[attempt % clients.len().max(1)];
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channels).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_secs(5), connected).await {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                failures += 1;
                if failures.is_power_of_two() {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(%error, "subscribing to run notifications failed; waiters poll until it works");
                }
                if !stay(&registry) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(failures.min(5)))).await;
                continue;
            }
        };
        failures = 0;
        // Anything published while we were not subscribed is lost: everybody re-checks.
        {
            let Some(registry) = registry.upgrade() else { return };
            lock(&registry).runs.values().for_each(bump_all);
        }
        let mut messages = pubsub.into_on_message();
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Some(registry) = registry.upgrade() else { return };
            let mut registry = lock(&registry);
            match next {
                // `j:<run id>`: an entry; `e:<run id>`: the end.
                Ok(Some(message)) => {
                    if let Ok(text) = std::str::from_utf8(message.get_payload_bytes())
                        && let Some((what, run_id)) = text.split_once(':')
                        && let Some(signals) = registry.runs.get(run_id)
                    {
                        match what {
                            "e" => bump_all(signals),
                            _ => bump(&signals.entry),
                        }
                    }
                }
                // The connection ended: reconnect.
                Ok(None) => break,
                Err(_) => {}
            }
            if registry.runs.is_empty() {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= IDLE {
                    // Stop while holding the lock: a new waiter either saw us
                    // running (and we re-check it below) or starts a new task.
                    registry.running = false;
                    return;
                }
            } else {
                idle_since = None;
            }
        }
    }
}

/// Whether the subscriber should keep trying (somebody still waits).
fn stay(registry: &Weak<Mutex<Registry>>) -> bool {
    let Some(registry) = registry.upgrade() else { return false };
    let mut registry = lock(&registry);
    if registry.runs.is_empty() {
        registry.running = false;
        return false;
    }
    true
}
