//! Wake-ups for agents long-polling a cluster's desired state, and for the relay of logs
//! and events through the agent channel.
//!
//! A manager holds one [`ChangeNotifier`]: waiters [`subscribe`](ChangeNotifier::subscribe)
//! to a cluster and are woken by [`notify`](ChangeNotifier::notify). Two more kinds of
//! wake-ups work the same way: a cluster's operator waiting for logs and events requests
//! ([`subscribe_requests`](ChangeNotifier::subscribe_requests) /
//! [`notify_requests`](ChangeNotifier::notify_requests), Postgres channel
//! [`REQUESTS_CHANNEL`]) and a user's call waiting for the answer to its request
//! ([`subscribe_answers`](ChangeNotifier::subscribe_answers) /
//! [`notify_answers`](ChangeNotifier::notify_answers), Postgres channel
//! [`ANSWERS_CHANNEL`], payload the request id). Who calls `notify`:
//!
//! - **Postgres** (several replicas on one database): migration `0003_notify` makes every
//!   desired-state change (and every change of a cluster's component requests) send
//!   `NOTIFY kubenova_changes, '<cluster id>'` at commit; a listener per manager
//!   ([`ChangeNotifier::listen_postgres`]) `LISTEN`s and fans the notifications out to the local waiters, so a write
//!   through replica 2 wakes an agent waiting on replica 1. The listener reconnects with
//!   backoff on its own.
//! - **SQLite** (one process): nothing announces changes across processes; waiters rely on
//!   the short fallback poll, and writers of the same process may call `notify` directly.
//!
//! Notifications are hints, never the source of truth: a woken waiter re-reads the store,
//! and every wait also wakes up after [`ChangeNotifier::fallback_poll`] (200 ms without a
//! connected listener, 2 s with one), so a lost notification only delays a change.
//!
//! ```
//! # async fn demo() {
//! use kubenova_store::notify::{ChangeNotifier, Woken};
//! use kubenova_api::ids::ClusterId;
//! let notifier = ChangeNotifier::new();
//! let cluster = ClusterId::new();
//! let mut sub = notifier.subscribe(cluster);
//! notifier.notify(cluster);
//! let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
//! assert_eq!(sub.wait(deadline).await, Woken::Notified);
//! # }
//! ```

use crate::cache::{ROWS_CHANNEL, RowCache};
use kubenova_api::ids::ClusterId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

/// The Postgres notification channel (see migration `0003_notify.sql`).
pub const CHANNEL: &str = "kubenova_changes";
/// The Postgres channel announcing a new agent request (payload: the cluster id; see
/// migration `0010_agent_requests.sql`).
pub const REQUESTS_CHANNEL: &str = "kubenova_agent_requests";
/// The Postgres channel announcing a new answer chunk (payload: the request id).
pub const ANSWERS_CHANNEL: &str = "kubenova_agent_answers";
/// Fallback poll interval while no listener delivers notifications (SQLite, or a
/// Postgres listener that is reconnecting).
pub const LOCAL_POLL: Duration = Duration::from_millis(200);
/// Fallback poll interval while a Postgres listener is connected.
pub const LISTENING_POLL: Duration = Duration::from_secs(2);

/// What a waiter waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Topic {
    /// A cluster's desired state or component requests changed.
    Desired,
    /// A cluster has a new agent request.
    Requests,
    /// An agent request has a new answer chunk (keyed by the request id).
    Answers,
}

/// Per-cluster (and per-request) wake-up fan-out inside one manager process.
#[derive(Debug, Default)]
pub struct ChangeNotifier {
    clusters: Mutex<HashMap<(Topic, Uuid), watch::Sender<u64>>>,
    listening: AtomicBool,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    rows: Mutex<Option<Arc<RowCache>>>,
}

impl Drop for ChangeNotifier {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listener.lock()
            && let Some(task) = l.take()
        {
            task.abort();
        }
        // Nobody invalidates the record cache any more.
        if let Some(cache) = self.row_cache() {
            cache.disable();
        }
    }
}

/// Why [`ChangeSubscription::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A notification for the cluster (or for every cluster) arrived.
    Notified,
    /// The fallback poll interval elapsed: re-read the store anyway.
    Poll,
    /// The deadline passed.
    Deadline,
}

impl ChangeNotifier {
    /// A notifier without a listener (fallback poll [`LOCAL_POLL`]).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn senders(&self) -> std::sync::MutexGuard<'_, HashMap<(Topic, Uuid), watch::Sender<u64>>> {
        match self.clusters.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn subscribe_to(self: &Arc<Self>, key: (Topic, Uuid)) -> ChangeSubscription {
        let mut map = self.senders();
        // Forget what nobody waits for any more.
        map.retain(|_, tx| tx.receiver_count() > 0);
        let rx = map
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        ChangeSubscription {
            rx,
            notifier: Arc::clone(self),
        }
    }

    fn wake(&self, key: (Topic, Uuid)) {
        if let Some(tx) = self.senders().get(&key) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Subscribes to the changes of one cluster. Subscriptions are cheap; drop it when done.
    pub fn subscribe(self: &Arc<Self>, cluster: ClusterId) -> ChangeSubscription {
        self.subscribe_to((Topic::Desired, cluster.0))
    }

    /// Wakes the waiters of `cluster` (a no-op when nobody waits).
    pub fn notify(&self, cluster: ClusterId) {
        self.wake((Topic::Desired, cluster.0));
    }

    /// Subscribes to the new agent requests of one cluster (its operator's long-poll).
    pub fn subscribe_requests(self: &Arc<Self>, cluster: ClusterId) -> ChangeSubscription {
        self.subscribe_to((Topic::Requests, cluster.0))
    }

    /// Wakes the operator long-polls of `cluster` waiting for requests.
    pub fn notify_requests(&self, cluster: ClusterId) {
        self.wake((Topic::Requests, cluster.0));
    }

    /// Subscribes to the answers to one agent request (the call waiting for them).
    pub fn subscribe_answers(self: &Arc<Self>, request: Uuid) -> ChangeSubscription {
        self.subscribe_to((Topic::Answers, request))
    }

    /// Wakes the call waiting for the answers to `request`.
    pub fn notify_answers(&self, request: Uuid) {
        self.wake((Topic::Answers, request));
    }

    /// Wakes every waiter (after a listener (re)connects, notifications may have been missed).
    pub fn notify_all(&self) {
        for tx in self.senders().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Starts a background task that `LISTEN`s on [`CHANNEL`] of the Postgres database at
    /// `url` and wakes this notifier's waiters; it reconnects with backoff (up to 30 s)
    /// on errors, never logs the URL, and stops when the notifier is dropped. Must be
    /// called inside a Tokio runtime; a second call replaces the first listener.
    pub fn listen_postgres(self: &Arc<Self>, url: String) {
        let mut slot = match self.listener.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(old) = slot.take() {
            old.abort();
            // The new listener enables the cache again once it listens.
            if let Some(cache) = self.row_cache() {
                cache.disable();
            }
        }
        *slot = Some(tokio::spawn(listen_loop(url, Arc::downgrade(self))));
    }

    /// Lets the Postgres listener drive a store's record cache: it also `LISTEN`s on
    /// [`ROWS_CHANNEL`], enables the cache once listening and disables (empties) it
    /// whenever the connection is lost (see [`crate::cache`]). Call before
    /// [`listen_postgres`](Self::listen_postgres).
    pub fn set_row_cache(&self, cache: Arc<RowCache>) {
        let mut slot = match self.rows.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(cache);
    }

    fn row_cache(&self) -> Option<Arc<RowCache>> {
        match self.rows.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records whether a listener currently delivers notifications (it shortens or
    /// lengthens the fallback poll).
    pub fn set_listening(&self, yes: bool) {
        self.listening.store(yes, Ordering::Relaxed);
    }

    /// Whether a listener currently delivers notifications.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// How long a waiter sleeps before re-reading the store without a notification.
    pub fn fallback_poll(&self) -> Duration {
        if self.is_listening() {
            LISTENING_POLL
        } else {
            LOCAL_POLL
        }
    }
}

/// A waiter on one cluster's changes.
#[derive(Debug)]
pub struct ChangeSubscription {
    rx: watch::Receiver<u64>,
    notifier: Arc<ChangeNotifier>,
}

impl ChangeSubscription {
    /// Waits for a notification, the fallback poll interval, or `deadline`, whichever
    /// comes first. A notification sent after [`ChangeNotifier::subscribe`] and before this
    /// call is not lost: it returns at once.
    pub async fn wait(&mut self, deadline: Instant) -> Woken {
        let now = Instant::now();
        if now >= deadline {
            return Woken::Deadline;
        }
        let poll_at = now + self.notifier.fallback_poll();
        let (until, on_timeout) = if poll_at < deadline {
            (poll_at, Woken::Poll)
        } else {
            (deadline, Woken::Deadline)
        };
        tokio::select! {
            changed = self.rx.changed() => match changed {
                Ok(()) => Woken::Notified,
                // The notifier is gone (cannot happen while we hold an Arc); poll.
                Err(_) => {
                    tokio::time::sleep_until(until).await;
                    on_timeout
                }
            },
            _ = tokio::time::sleep_until(until) => on_timeout,
        }
    }
}

fn parse_payload(payload: &str) -> Option<ClusterId> {
    Uuid::try_parse(payload.trim()).ok().map(ClusterId)
}

async fn listen_loop(url: String, notifier: Weak<ChangeNotifier>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => match listener
                .listen_all([CHANNEL, ROWS_CHANNEL, REQUESTS_CHANNEL, ANSWERS_CHANNEL])
                .await
            {
                Ok(()) => {
                    tracing::info!(channel = CHANNEL, "listening for desired-state changes");
                    let Some(n) = notifier.upgrade() else { return };
                    n.set_listening(true);
                    // Row notifications flow from here on: the record cache may answer.
                    let rows = n.row_cache();
                    if let Some(cache) = &rows {
                        cache.enable();
                    }
                    // Changes made while we were not listening: let every waiter re-read.
                    n.notify_all();
                    drop(n);
                    backoff = Duration::from_millis(500);
                    loop {
                        let received = listener.try_recv().await;
                        let Some(n) = notifier.upgrade() else { return };
                        match received {
                            Ok(Some(msg)) if msg.channel() == ROWS_CHANNEL => {
                                if let Some(cache) = &rows {
                                    cache.on_notification(msg.payload());
                                }
                            }
                            Ok(Some(msg)) => {
                                n.set_listening(true);
                                let topic = match msg.channel() {
                                    REQUESTS_CHANNEL => Topic::Requests,
                                    ANSWERS_CHANNEL => Topic::Answers,
                                    _ => Topic::Desired,
                                };
                                match parse_payload(msg.payload()) {
                                    Some(id) => n.wake((topic, id.0)),
                                    None => n.notify_all(),
                                }
                            }
                            // The connection dropped: reconnect from scratch below (the
                            // cache stays disabled until LISTEN is in effect again).
                            // Meanwhile waiters poll fast.
                            Ok(None) => {
                                tracing::warn!("change listener lost its connection; reconnecting");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "change listener failed; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "LISTEN {CHANNEL} failed; retrying"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "change listener cannot connect to Postgres; retrying")
            }
        }
        let Some(n) = notifier.upgrade() else { return };
        if let Some(cache) = n.row_cache() {
            cache.disable();
        }
        n.set_listening(false);
        n.notify_all();
        drop(n);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn notifications_wake_only_their_cluster() {
        let n = ChangeNotifier::new();
        let (a, b) = (ClusterId::new(), ClusterId::new());
        let mut sa = n.subscribe(a);
        let mut sb = n.subscribe(b);
        n.notify(a);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(sa.wait(soon).await, Woken::Notified);
        assert_eq!(sb.wait(soon).await, Woken::Deadline);
        n.notify_all();
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(sb.wait(later).await, Woken::Notified);
    }

    #[tokio::test]
    async fn requests_and_answers_wake_only_their_waiters() {
        let n = ChangeNotifier::new();
        let c = ClusterId::new();
        let request = Uuid::new_v4();
        let mut desired = n.subscribe(c);
        let mut requests = n.subscribe_requests(c);
        let mut answers = n.subscribe_answers(request);
        let mut other = n.subscribe_answers(Uuid::new_v4());
        n.notify_requests(c);
        n.notify_answers(request);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(requests.wait(soon).await, Woken::Notified);
        assert_eq!(answers.wait(soon).await, Woken::Notified);
        assert_eq!(desired.wait(soon).await, Woken::Deadline);
        assert_eq!(other.wait(soon).await, Woken::Deadline);
        n.notify_all();
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(other.wait(later).await, Woken::Notified);
    }

    #[tokio::test]
    async fn waits_fall_back_to_polling() {
        let n = ChangeNotifier::new();
        let mut s = n.subscribe(ClusterId::new());
        let started = Instant::now();
        assert_eq!(s.wait(started + Duration::from_secs(5)).await, Woken::Poll);
        assert!(started.elapsed() < Duration::from_secs(1));
        n.set_listening(true);
        assert_eq!(n.fallback_poll(), LISTENING_POLL);
    }

    #[test]
    fn dropped_subscriptions_are_forgotten() {
        let n = ChangeNotifier::new();
        for _ in 0..10 {
            drop(n.subscribe(ClusterId::new()));
        }
        let _keep = n.subscribe(ClusterId::new());
        assert_eq!(n.senders().len(), 1);
        drop(n.subscribe_answers(Uuid::new_v4()));
        let _also = n.subscribe_requests(ClusterId::new());
        assert_eq!(n.senders().len(), 2);
        assert_eq!(
            parse_payload(&Uuid::nil().to_string()),
            Some(ClusterId(Uuid::nil()))
        );
        assert_eq!(parse_payload("nope"), None);
    }
}
