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
//! listener, 2 s with a connected one), so a lost notification only delays a change.
//!
//! **While a Postgres listener is down** (lost, or not connected yet), every waiter has to
//! poll the database, and hundreds of waiting agents must not turn that into a query
//! storm. So, only in that state:
//!
//! - each waiter backs off: its fallback polls come after 200 ms, 400 ms, … up to
//!   [`LOST_POLL_MAX`], each drawn at random between half and all of that interval;
//! - the polls of all waiters of the notifier are paced to at most
//!   [`LOST_POLLS_PER_SECOND`] a second, and at most [`LOST_POLL_CONCURRENCY`] of them read
//!   the database at once (a [`Woken::Poll`] holds a permit until the waiter waits again
//!   or drops its subscription);
//! - a change therefore reaches its waiter within about [`LOST_POLL_MAX`] plus the waiters
//!   divided by [`LOST_POLLS_PER_SECOND`] seconds (under 8 s with 200 waiters, 15 s with
//!   1,000), instead of 200 ms, and the database sees a bounded poll rate;
//! - losing the connection wakes nobody (each waiter notices on its next poll), and once
//!   the listener is back the waiters are woken in batches of [`RECONNECT_WAKE_BATCH`]
//!   keys every [`RECONNECT_WAKE_STEP`], not all at once, to re-read what they may have
//!   missed.
//!
//! Without any listener (SQLite) waiters keep the plain 200 ms poll.
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
use rand::Rng as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
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
/// Longest backoff of one waiter's fallback polls while the Postgres listener is down.
pub const LOST_POLL_MAX: Duration = Duration::from_secs(5);
/// Most fallback polls a second of all waiters of one notifier while the Postgres
/// listener is down (each poll is about two store queries).
pub const LOST_POLLS_PER_SECOND: u32 = 100;
/// Most fallback polls of one notifier's waiters reading the database at once while the
/// Postgres listener is down.
pub const LOST_POLL_CONCURRENCY: usize = 8;
/// Waiter keys (a cluster, or a request) woken per step after the listener (re)connects.
pub const RECONNECT_WAKE_BATCH: usize = 32;
/// The pause between two batches of wake-ups after the listener (re)connects.
pub const RECONNECT_WAKE_STEP: Duration = Duration::from_millis(50);

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
#[derive(Debug)]
pub struct ChangeNotifier {
    clusters: Mutex<HashMap<(Topic, Uuid), watch::Sender<u64>>>,
    listening: AtomicBool,
    /// A Postgres listener was started: while it is not connected, waiters back off and
    /// their polls are paced (see the module docs).
    has_listener: AtomicBool,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    rows: Mutex<Option<Arc<RowCache>>>,
    /// The earliest time the next paced poll may start.
    next_poll: Mutex<Option<Instant>>,
    /// Permits of the polls reading the database at once.
    polls: Arc<Semaphore>,
}

impl Default for ChangeNotifier {
    fn default() -> Self {
        Self {
            clusters: Mutex::default(),
            listening: AtomicBool::new(false),
            has_listener: AtomicBool::new(false),
            listener: Mutex::default(),
            rows: Mutex::default(),
            next_poll: Mutex::default(),
            polls: Arc::new(Semaphore::new(LOST_POLL_CONCURRENCY)),
        }
    }
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
            lost_polls: 0,
            permit: None,
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

    /// Wakes every waiter at once.
    pub fn notify_all(&self) {
        for tx in self.senders().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every waiter, [`RECONNECT_WAKE_BATCH`] keys every [`RECONNECT_WAKE_STEP`]
    /// (after the listener (re)connects, notifications may have been missed; each woken
    /// waiter re-reads the database, so they must not all do it at once). Returns at once;
    /// the later batches are woken by a task (inside a Tokio runtime).
    pub fn notify_all_spread(self: &Arc<Self>) {
        let keys: Vec<(Topic, Uuid)> = self.senders().keys().copied().collect();
        let mut batches = keys.chunks(RECONNECT_WAKE_BATCH).map(<[_]>::to_vec);
        let Some(first) = batches.next() else { return };
        for key in first {
            self.wake(key);
        }
        let rest: Vec<Vec<(Topic, Uuid)>> = batches.collect();
        if rest.is_empty() {
            return;
        }
        let notifier = Arc::downgrade(self);
        tokio::spawn(async move {
            for batch in rest {
                tokio::time::sleep(RECONNECT_WAKE_STEP).await;
                let Some(n) = notifier.upgrade() else { return };
                for key in batch {
                    n.wake(key);
                }
            }
        });
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
        self.has_listener.store(true, Ordering::Relaxed);
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

    /// Whether a Postgres listener was started but is not connected (lost, or not yet
    /// connected): waiters then back off and their polls are paced (see the module docs).
    pub fn is_listener_down(&self) -> bool {
        self.has_listener.load(Ordering::Relaxed) && !self.is_listening()
    }

    /// Reserves the start of a paced poll: the earliest slot at most
    /// [`LOST_POLLS_PER_SECOND`] a second allow, or `None` when it would come after
    /// `deadline` (nothing is reserved then).
    fn reserve_poll(&self, deadline: Instant) -> Option<Instant> {
        let step = Duration::from_secs(1) / LOST_POLLS_PER_SECOND;
        let now = Instant::now();
        let mut next = match self.next_poll.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let slot = next.map_or(now, |n| n.max(now));
        if slot >= deadline {
            return None;
        }
        *next = Some(slot + step);
        Some(slot)
    }

    /// How long a waiter sleeps before re-reading the store without a notification
    /// (while a listener is down, the first of its backed-off intervals).
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
    /// Fallback polls in a row while the listener is down (the backoff step).
    lost_polls: u32,
    /// The permit of the poll the caller is doing (held until the next wait).
    permit: Option<OwnedSemaphorePermit>,
}

impl ChangeSubscription {
    /// Waits for a notification, the fallback poll interval, or `deadline`, whichever
    /// comes first. A notification sent after [`ChangeNotifier::subscribe`] and before this
    /// call is not lost: it returns at once.
    ///
    /// While the notifier's Postgres listener is down, the fallback polls back off, are
    /// paced across all waiters, and a [`Woken::Poll`] holds one of
    /// [`LOST_POLL_CONCURRENCY`] permits until the next call (see the module docs).
    pub async fn wait(&mut self, deadline: Instant) -> Woken {
        // The database reads of the previous poll are done.
        self.permit = None;
        let now = Instant::now();
        if now >= deadline {
            return Woken::Deadline;
        }
        let down = self.notifier.is_listener_down();
        let interval = if down {
            self.backoff()
        } else {
            self.lost_polls = 0;
            self.notifier.fallback_poll()
        };
        let poll_at = now + interval;
        if poll_at >= deadline {
            return self.notified_before(deadline, Woken::Deadline).await;
        }
        if self.notified_before(poll_at, Woken::Poll).await == Woken::Notified {
            self.lost_polls = 0;
            return Woken::Notified;
        }
        // Checked again: a listener lost during this wait must not let every waiter that
        // started waiting while it was connected poll at once.
        if !self.notifier.is_listener_down() {
            return Woken::Poll;
        }
        self.lost_polls = self.lost_polls.saturating_add(1);
        // Paced: wait for this poll's slot, then for a permit to read the database.
        let Some(slot) = self.notifier.reserve_poll(deadline) else {
            return self.notified_before(deadline, Woken::Deadline).await;
        };
        if self.notified_before(slot, Woken::Poll).await == Woken::Notified {
            self.lost_polls = 0;
            return Woken::Notified;
        }
        let polls = Arc::clone(&self.notifier.polls);
        tokio::select! {
            changed = self.rx.changed() => match changed {
                Ok(()) => {
                    self.lost_polls = 0;
                    Woken::Notified
                }
                Err(_) => Woken::Poll,
            },
            permit = polls.acquire_owned() => {
                // The semaphore is never closed; without a permit the poll goes ahead.
                self.permit = permit.ok();
                Woken::Poll
            }
            _ = tokio::time::sleep_until(deadline) => Woken::Deadline,
        }
    }

    /// The next backed-off interval while the listener is down: 200 ms doubled per poll
    /// in a row, at most [`LOST_POLL_MAX`], drawn between half and all of it.
    fn backoff(&self) -> Duration {
        let full = LOCAL_POLL
            .saturating_mul(1 << self.lost_polls.min(8))
            .min(LOST_POLL_MAX);
        full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// `Notified` if a notification arrives before `until`, else `on_timeout` at `until`.
    async fn notified_before(&mut self, until: Instant, on_timeout: Woken) -> Woken {
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
                    // Changes made while we were not listening: let every waiter re-read,
                    // a batch at a time.
                    n.notify_all_spread();
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
                            // Meanwhile waiters poll, backed off and paced.
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
        // Nobody is woken here: each waiter notices on its next poll (waking them all
        // would make every one of them query the database at once).
        n.set_listening(false);
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

    /// A listener that cannot connect (nothing listens on port 1): the state of a lost one.
    fn with_listener_down() -> Arc<ChangeNotifier> {
        let n = ChangeNotifier::new();
        n.listen_postgres("postgres://postgres@127.0.0.1:1/nothing".into());
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn polls_back_off_and_are_paced_while_the_listener_is_down() {
        let n = with_listener_down();
        const WAITERS: usize = 200;
        let window = Duration::from_millis(1500);
        let end = Instant::now() + window;
        let tasks: Vec<_> = (0..WAITERS)
            .map(|_| {
                let mut sub = n.subscribe(ClusterId::new());
                tokio::spawn(async move {
                    let mut polls = 0u32;
                    while sub.wait(end).await == Woken::Poll {
                        polls += 1;
                    }
                    polls
                })
            })
            .collect();
        let mut polls = 0;
        for t in tasks {
            polls += t.await.unwrap();
        }
        // Unpaced, each waiter polls every 200 ms: about 1,400 polls.
        let bound = u32::try_from(window.as_millis()).unwrap() * LOST_POLLS_PER_SECOND / 1000 + 1;
        assert!(
            polls <= bound,
            "{polls} polls of {WAITERS} waiters in {window:?} (bound {bound})"
        );
        assert!(polls > 0);
        assert!(!n.is_listening() && n.is_listener_down());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn few_polls_read_the_database_at_once_while_the_listener_is_down() {
        let n = with_listener_down();
        let deadline = Instant::now() + Duration::from_secs(3);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tasks: Vec<_> = (0..3 * LOST_POLL_CONCURRENCY)
            .map(|_| {
                let mut sub = n.subscribe(ClusterId::new());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let woken = sub.wait(deadline).await;
                    let _ = tx.send(woken);
                    // Still "reading the database": the permit is held until the next wait.
                    tokio::time::sleep_until(deadline).await;
                    drop(sub);
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut polls = 0;
        while let Ok(w) = rx.try_recv() {
            assert_eq!(w, Woken::Poll);
            polls += 1;
        }
        assert_eq!(
            polls, LOST_POLL_CONCURRENCY,
            "polls holding a permit at once"
        );
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn wake_ups_after_a_reconnect_are_spread() {
        let n = ChangeNotifier::new();
        let subs: Vec<_> = (0..5 * RECONNECT_WAKE_BATCH)
            .map(|_| n.subscribe(ClusterId::new()))
            .collect();
        let woken = |subs: &[ChangeSubscription]| {
            subs.iter()
                .filter(|s| s.rx.has_changed().unwrap_or(false))
                .count()
        };
        n.notify_all_spread();
        assert_eq!(woken(&subs), RECONNECT_WAKE_BATCH);
        let deadline = Instant::now() + Duration::from_secs(5);
        while woken(&subs) < subs.len() {
            assert!(Instant::now() < deadline, "{} woken", woken(&subs));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
