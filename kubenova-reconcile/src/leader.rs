//! Leader election on a `coordination.k8s.io/v1` [`Lease`], so that of several operator
//! replicas exactly one runs the controllers.
//!
//! The algorithm is client-go's `leaderelection` with a `LeaseLock`:
//!
//! - **acquire**: create the Lease (holder = us), or take over one whose holder is empty
//!   (released) or expired, with a `replace` carrying the `resourceVersion` it read
//!   (optimistic concurrency: of two candidates racing for it, exactly one wins; the other
//!   gets `409 Conflict`);
//! - **expiry** is judged on the local clock: a record (holder, renew time) is expired
//!   once it has not changed for `leaseDurationSeconds` since **we first observed** it, so
//!   clock skew between nodes does not matter;
//! - **renew** every [`LeaseConfig::retry_period`]; a leader that has not renewed
//!   successfully for [`LeaseConfig::renew_deadline`] (shorter than the lease duration)
//!   steps down **before** anyone else may take over, and a leader that sees another holder
//!   in the Lease steps down at once;
//! - **release** on shutdown: the holder is cleared and the duration set to 1 s, so a
//!   standby takes over within one retry period instead of a whole lease duration.
//!
//! [`LeaderElector::run`] publishes whether we lead on a `watch` channel
//! ([`LeaderElector::subscribe`]).
//!
//! ```no_run
//! # async fn demo(client: kube::Client) {
//! use kubenova_reconcile::leader::{LeaderElector, LeaseConfig};
//! let elector = LeaderElector::new(client, LeaseConfig::new("kubenova-system", "kubenova-operator", "pod-a"));
//! let mut leading = elector.subscribe();
//! let (stop_tx, stop) = tokio::sync::watch::channel(false);
//! let task = tokio::spawn(elector.run(stop));
//! leading.wait_for(|l| *l).await.unwrap();
//! // ... run the controllers until `leading` turns false or we shut down ...
//! stop_tx.send(true).unwrap();
//! task.await.unwrap();
//! # }
//! ```

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// Timing and identity of a [`LeaderElector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Our identity (unique per replica, e.g. the pod name).
    pub identity: String,
    /// How long a holder's claim lasts without renewal (default 15 s).
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down (default 10 s; must be
    /// shorter than the lease duration).
    pub renew_deadline: Duration,
    /// Interval between attempts to acquire or renew (default 2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A configuration with the default timings (15 s / 10 s / 2 s, as client-go).
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Scales the three timings from one lease duration: renew deadline 2/3 of it, retry
    /// period 2/15 of it (client-go's ratios). A Lease states its duration in whole seconds,
    /// so a fractional duration is rounded **up** (1.5 s becomes 2 s) before scaling: the
    /// other replicas wait what the Lease says, never less than what we assume.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kubenova_reconcile::leader::LeaseConfig;
    /// let c = LeaseConfig::new("ns", "lease", "me").with_lease_duration(Duration::from_millis(1500));
    /// assert_eq!(c.lease_duration, Duration::from_secs(2));
    /// assert!(c.renew_deadline < c.lease_duration);
    /// ```
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> LeaseConfig {
        let lease_duration = whole_seconds(lease_duration);
        self.lease_duration = lease_duration;
        self.renew_deadline = lease_duration * 2 / 3;
        self.retry_period = (lease_duration * 2 / 15).max(Duration::from_millis(50));
        self
    }

    fn checked(mut self) -> LeaseConfig {
        self.lease_duration = whole_seconds(self.lease_duration);
        if self.renew_deadline >= self.lease_duration {
            self.renew_deadline = self.lease_duration * 2 / 3;
        }
        if self.retry_period >= self.renew_deadline {
            self.retry_period = self.renew_deadline / 2;
        }
        self
    }
}

/// `d` rounded up to whole seconds, at least one (what `leaseDurationSeconds` can say).
fn whole_seconds(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

/// What one [`LeaderElector::step`] observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// We hold the Lease (acquired or renewed just now).
    Leading,
    /// Someone else holds it (their identity) and it has not expired.
    Following(String),
    /// We tried to take it over and another candidate won the race (409).
    LostRace,
}

/// A Lease record as far as expiry goes: holder and renew time.
type Record = (Option<String>, Option<String>);

/// A Lease-based leader elector (see the [module docs](self)).
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    /// The record (holder, renew time) last seen and when we first saw it.
    observed: Option<(Record, Instant)>,
    last_renew: Option<Instant>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// An elector for `config.namespace/config.name` (nothing is contacted yet).
    pub fn new(client: Client, config: LeaseConfig) -> LeaderElector {
        let api = Api::namespaced(client, &config.namespace);
        let (leading, _) = watch::channel(false);
        LeaderElector {
            api,
            config: config.checked(),
            leading,
            observed: None,
            last_renew: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// `true` while we lead. Turns `false` when we step down (renew deadline passed,
    /// another holder seen, or shutdown).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Whether we lead right now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    fn set_leading(&self, yes: bool) {
        self.leading.send_if_modified(|l| {
            let changed = *l != yes;
            *l = yes;
            changed
        });
    }

    fn desired_spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            // Whole seconds already (see `LeaseConfig::checked`).
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: acquire,
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew the Lease. Errors are API errors other than the
    /// expected conflicts; [`run`](Self::run) retries them.
    pub async fn step(&mut self) -> Result<Observed, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.desired_spec(0, Some(now()))),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Observed::Leading),
                Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 409) => {
                    Ok(Observed::LostRace)
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let now_local = Instant::now();
        let first_seen = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record, now_local));
                now_local
            }
        };
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15).max(1)).unwrap_or(15),
        );
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        let expired = now_local.duration_since(first_seen) >= duration;
        if let Some(h) = &holder
            && !ours
            && !expired
        {
            return Ok(Observed::Following(h.clone()));
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            // Renew: keep acquire time and transitions.
            LeaseSpec {
                renew_time: Some(now()),
                lease_duration_seconds: self.desired_spec(0, None).lease_duration_seconds,
                ..spec
            }
        } else {
            self.desired_spec(transitions.saturating_add(1), Some(now()))
        });
        // `replace` carries the resourceVersion we read: a concurrent writer makes it 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Observed::Leading),
            Err(e) if is_conflict(&e) => Ok(Observed::LostRace),
            Err(e) => Err(e),
        }
    }

    /// Clears the holder if it is us (best effort), so a standby takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        self.set_leading(false);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        spec.acquire_time = None;
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies one step's outcome to the published state; returns whether we lead.
    /// `started` is when the attempt began: the renewal counts from then, not from when
    /// its answer arrived, so the renew deadline never runs late by a slow response.
    fn settle(&mut self, outcome: Result<Observed, kube::Error>, started: Instant) -> bool {
        let leading = self.is_leader();
        match outcome {
            Ok(Observed::Leading) => {
                self.last_renew = Some(started);
                if !leading {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                }
                self.set_leading(true);
            }
            Ok(other) => {
                if leading {
                    tracing::warn!(lease = %self.config.name, observed = ?other, "lost leadership");
                }
                self.set_leading(false);
            }
            Err(e) => {
                let within = self
                    .last_renew
                    .is_some_and(|t| t.elapsed() < self.config.renew_deadline);
                if leading && !within {
                    tracing::warn!(lease = %self.config.name, error = %e, "could not renew before the deadline; stepping down");
                    self.set_leading(false);
                } else {
                    tracing::debug!(lease = %self.config.name, error = %e, "lease attempt failed");
                }
            }
        }
        self.is_leader()
    }

    /// When we must have stepped down if no renewal succeeds: the last successful renewal
    /// plus the renew deadline (`None` while we do not lead).
    fn step_down_at(&self) -> Option<tokio::time::Instant> {
        match self.last_renew {
            Some(t) if self.is_leader() => Some((t + self.config.renew_deadline).into()),
            _ => None,
        }
    }

    /// Steps down because the renew deadline passed without a successful renewal.
    fn deadline_passed(&self) {
        tracing::warn!(lease = %self.config.name, "could not renew before the deadline; stepping down");
        self.set_leading(false);
    }

    /// Acquires and renews until `shutdown` becomes `true`, then releases the Lease.
    /// The leadership is published on [`subscribe`](Self::subscribe).
    ///
    /// The renew deadline is a timer of its own, raced against every attempt and every
    /// pause: a leader steps down the moment it passes, however slow or hung the API
    /// requests are, so it is never still leading when another replica may take over.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let deadline = self.step_down_at();
            let started = Instant::now();
            // Bound each attempt so a hanging request does not stall the loop either.
            let attempt = tokio::time::timeout(
                self.config.retry_period.max(Duration::from_secs(1)),
                self.step(),
            );
            let outcome = tokio::select! {
                r = attempt => Some(r.unwrap_or_else(|_| Err(kube::Error::Service("lease request timed out".into())))),
                () = sleep_until(deadline) => None,
                _ = shutdown.changed() => break,
            };
            match outcome {
                Some(outcome) => {
                    self.settle(outcome, started);
                }
                // The attempt is dropped; if its write landed anyway, the next step sees
                // the Lease as ours and renews it (we only ever lead less, never more).
                None => self.deadline_passed(),
            }
            let deadline = self.step_down_at();
            tokio::select! {
                () = tokio::time::sleep(self.config.retry_period) => {}
                () = sleep_until(deadline) => self.deadline_passed(),
                _ = shutdown.changed() => break,
            }
        }
        let was_leader = self.is_leader();
        self.set_leading(false);
        if was_leader && let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the lease");
        }
    }
}

/// A write fence for leader-only work: closed once this replica must not write any more
/// (leadership lost, or the work told to stop). Leader-only code checks it immediately
/// before every write ([`Fence::check`]) and races its long operations against
/// [`Fence::closed`], so a deposed leader sends no new write after the step-down.
///
/// A fence cannot recall a request that is already on the wire: such a write may still
/// land after the step-down. It was sent while we led, and the elector steps down at the
/// renew deadline, before the lease expires for the other replicas
/// ([`LeaseConfig::renew_deadline`] < [`LeaseConfig::lease_duration`]), so it lands
/// before a new leader starts writing unless it spends longer than that margin
/// (5 s with the defaults) in transit.
///
/// ```
/// use kubenova_reconcile::leader::Fence;
/// let (leading_tx, leading) = tokio::sync::watch::channel(true);
/// let fence = Fence::leading(leading);
/// assert!(fence.check().is_ok());
/// leading_tx.send(false).unwrap();
/// assert!(fence.check().is_err());
/// assert!(Fence::open().check().is_ok());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Fence {
    /// Must stay `true` (the elector's [`LeaderElector::subscribe`]).
    leading: Option<watch::Receiver<bool>>,
    /// Must stay `false` (a shutdown or term signal).
    stop: Option<watch::Receiver<bool>>,
}

/// The error of a write refused by a closed [`Fence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "write fenced: this replica is no longer the leader (or is stopping); the current leader makes the change"
)]
pub struct Fenced;

impl Fence {
    /// A fence that never closes (leader election off: this replica is the only writer).
    pub fn open() -> Fence {
        Fence::default()
    }

    /// Closed once `leading` turns `false` (or its elector is gone).
    pub fn leading(leading: watch::Receiver<bool>) -> Fence {
        Fence {
            leading: Some(leading),
            stop: None,
        }
    }

    /// This fence, also closed once `stop` turns `true` (or its sender is gone).
    #[must_use]
    pub fn or_stopped(mut self, stop: watch::Receiver<bool>) -> Fence {
        self.stop = Some(stop);
        self
    }

    /// Whether writes are still allowed.
    pub fn is_open(&self) -> bool {
        let leads = self
            .leading
            .as_ref()
            .is_none_or(|l| *l.borrow() && l.has_changed().is_ok());
        let runs = self
            .stop
            .as_ref()
            .is_none_or(|s| !*s.borrow() && s.has_changed().is_ok());
        leads && runs
    }

    /// `Ok` while writes are allowed; call it immediately before each write.
    pub fn check(&self) -> Result<(), Fenced> {
        if self.is_open() { Ok(()) } else { Err(Fenced) }
    }

    /// Resolves once the fence is closed (never for [`Fence::open`]).
    pub async fn closed(&self) {
        let mut leading = self.leading.clone();
        let mut stop = self.stop.clone();
        let lost = async {
            match &mut leading {
                Some(l) => {
                    let _ = l.wait_for(|l| !*l).await;
                }
                None => std::future::pending().await,
            }
        };
        let stopped = async {
            match &mut stop {
                Some(s) => {
                    let _ = s.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = lost => {}
            () = stopped => {}
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn fences_close_on_step_down_on_stop_and_when_the_sender_is_gone() {
        let (leading_tx, leading) = watch::channel(true);
        let (stop_tx, stop) = watch::channel(false);
        let fence = Fence::leading(leading).or_stopped(stop);
        assert!(fence.is_open());
        stop_tx.send(true).unwrap();
        assert_eq!(fence.check(), Err(Fenced));
        fence.closed().await;
        let fence = Fence::leading(leading_tx.subscribe());
        assert!(fence.is_open());
        leading_tx.send(false).unwrap();
        assert!(!fence.is_open());
        fence.closed().await;
        let (tx, rx) = watch::channel(true);
        let fence = Fence::leading(rx);
        drop(tx);
        assert!(!fence.is_open(), "no elector: not leading");
        fence.closed().await;
        assert!(Fence::open().is_open());
    }

    #[test]
    fn timings_are_consistent() {
        let c = LeaseConfig::new("ns", "l", "me").with_lease_duration(Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        let mut c = LeaseConfig::new("ns", "l", "me");
        c.renew_deadline = Duration::from_secs(30);
        c.retry_period = Duration::from_secs(30);
        let c = c.checked();
        assert!(c.renew_deadline < c.lease_duration);
        assert!(c.retry_period < c.renew_deadline);
    }

    #[test]
    fn fractional_lease_durations_round_up() {
        // The Lease can only say whole seconds: truncating 1.5 s to 1 s would let another
        // replica take over (after 1 s) while we still lead (until the 1 s deadline + a retry).
        let mut c = LeaseConfig::new("ns", "l", "me");
        c.lease_duration = Duration::from_millis(1500);
        c.renew_deadline = Duration::from_millis(1000);
        let c = c.checked();
        assert_eq!(c.lease_duration, Duration::from_secs(2));
        assert_eq!(c.renew_deadline, Duration::from_millis(1000));
        let c = LeaseConfig::new("ns", "l", "me").with_lease_duration(Duration::from_millis(10));
        assert_eq!(c.lease_duration, Duration::from_secs(1));
        assert!(c.retry_period < c.renew_deadline && c.renew_deadline < c.lease_duration);
    }
}
