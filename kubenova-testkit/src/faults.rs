//! Fault injection and request accounting for the HTTP front end.
//!
//! A [`Faults`] handle (from [`TestCluster::faults`](crate::TestCluster::faults)) holds rules
//! ([`Fault`]) that make the server fail matching resource requests **before** they reach the
//! store, so a failed request never changes anything, exactly like a real API server that
//! answers 500/503/429 or times out in front of etcd. It also counts every resource request by
//! verb and resource ([`RequestCounts`]), which tests and benchmarks use to measure how many
//! round trips a client needs.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use kubenova_testkit::{Fault, TestCluster};
//!
//! let cluster = TestCluster::start().await?;
//! // The next 3 server-side applies to namespaces fail with 500.
//! cluster.faults().inject(Fault::verb("patch").resource("namespaces").times(3).status(500));
//! // Every write fails with 503 for the next two seconds.
//! cluster.faults().inject(Fault::writes().for_duration(Duration::from_secs(2)).status(503));
//! // One request in five fails with 429 and `Retry-After: 1`.
//! cluster.faults().inject(Fault::any().probability(0.2).status(429));
//! // ...
//! cluster.faults().clear();
//! println!("{} requests failed on purpose", cluster.faults().injected());
//! println!("{} PATCH namespaces", cluster.faults().counts().get("patch", "namespaces"));
//! # Ok(()) }
//! ```
//!
//! A rule can also **hold** matching requests instead of failing them ([`Faults::hold`]): a
//! held request is counted on arrival and waits in front of the store until the test
//! releases it ([`Hold::release`]), which makes "slow writes" deterministic: the test
//! knows exactly which requests were on the wire at a given moment.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use kubenova_testkit::{Fault, TestCluster};
//!
//! let cluster = TestCluster::start().await?;
//! let hold = cluster.faults().hold(Fault::verb("patch").resource("novatenants"));
//! // ... start a client that patches NovaTenants ...
//! hold.wait_held(3).await; // three patches arrived and wait
//! hold.release(); // they (and later ones) go through
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// The verbs a write rule ([`Fault::writes`]) matches.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// What the server knows about a resource request when it checks the fault rules.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`.
    pub verb: &'a str,
    /// API group (`""` for the core group).
    pub group: &'a str,
    /// Plural resource name, e.g. `namespaces`.
    pub resource: &'a str,
    /// Subresource (`status`, `token`, ...) or `""`.
    pub subresource: &'a str,
    /// Namespace of the request, if any.
    pub namespace: Option<&'a str>,
    /// Object name, if any.
    pub name: Option<&'a str>,
    /// Authenticated user name: `system:serviceaccount:<ns>:<name>` for service-account
    /// tokens, `kubernetes-admin` for the admin token.
    pub user: &'a str,
}

/// One fault rule. Build it with [`Fault::verb`], [`Fault::writes`] or [`Fault::any`] and
/// narrow it with the other methods; every condition must hold for a request to match.
///
/// By default a rule fails **every** matching request with `500 InternalError` until it is
/// removed; limit it with [`times`](Fault::times), [`for_duration`](Fault::for_duration) or
/// [`probability`](Fault::probability).
#[derive(Debug, Clone)]
pub struct Fault {
    verbs: Vec<String>,
    group: Option<String>,
    resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    user: Option<String>,
    skip: u64,
    times: Option<u64>,
    probability: f64,
    duration: Option<Duration>,
    code: u16,
    retry_after: u64,
}

impl Fault {
    fn with_verbs(verbs: Vec<String>) -> Fault {
        Fault {
            verbs,
            group: None,
            resource: None,
            namespace: None,
            name: None,
            user: None,
            skip: 0,
            times: None,
            probability: 1.0,
            duration: None,
            code: 500,
            retry_after: 1,
        }
    }

    /// Matches requests of one Kubernetes verb (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`, `deletecollection`; `*` = any).
    pub fn verb(verb: &str) -> Fault {
        if verb == "*" {
            return Fault::any();
        }
        Fault::with_verbs(vec![verb.to_ascii_lowercase()])
    }

    /// Matches every write: `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub fn writes() -> Fault {
        Fault::with_verbs(WRITE_VERBS.iter().map(|v| (*v).to_owned()).collect())
    }

    /// Matches every resource request (discovery, `/version` and the health endpoints are
    /// never failed).
    pub fn any() -> Fault {
        Fault::with_verbs(Vec::new())
    }

    /// Only this resource: a plural (`namespaces`, matching the subresources too) or
    /// `plural/subresource` (`novatenants/status`).
    pub fn resource(mut self, resource: &str) -> Fault {
        self.resource = Some(resource.to_owned());
        self
    }

    /// Only this API group (`""` = core).
    pub fn group(mut self, group: &str) -> Fault {
        self.group = Some(group.to_owned());
        self
    }

    /// Only requests in this namespace.
    pub fn namespace(mut self, namespace: &str) -> Fault {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Only requests for the object of this name.
    pub fn name(mut self, name: &str) -> Fault {
        self.name = Some(name.to_owned());
        self
    }

    /// Only requests authenticated as this user, e.g.
    /// `system:serviceaccount:kubenova-system:kubenova-operator` (a client built with
    /// [`TestCluster::client_with_token`](crate::TestCluster::client_with_token) from a
    /// TokenRequest token). Lets a test fail the component under test while its own
    /// admin client keeps working.
    pub fn user(mut self, user: &str) -> Fault {
        self.user = Some(user.to_owned());
        self
    }

    /// Lets the first `n` matching requests through before failing any.
    pub fn after(mut self, n: u64) -> Fault {
        self.skip = n;
        self
    }

    /// Fails at most `n` requests, then the rule is spent and removed.
    pub fn times(mut self, n: u64) -> Fault {
        self.times = Some(n);
        self
    }

    /// Fails each matching request with probability `p` (0.0 ..= 1.0).
    pub fn probability(mut self, p: f64) -> Fault {
        self.probability = p.clamp(0.0, 1.0);
        self
    }

    /// The rule expires this long after it was injected.
    pub fn for_duration(mut self, d: Duration) -> Fault {
        self.duration = Some(d);
        self
    }

    /// HTTP status to answer with: 500 (default, `InternalError`), 503
    /// (`ServiceUnavailable`), 429 (`TooManyRequests`, with `Retry-After`), 504 (`Timeout`),
    /// or any other code (reason `InternalError`).
    pub fn status(mut self, code: u16) -> Fault {
        self.code = code;
        self
    }

    /// Seconds sent in `Retry-After` (and `details.retryAfterSeconds`) with 429 and 503
    /// (default 1).
    pub fn retry_after(mut self, secs: u64) -> Fault {
        self.retry_after = secs;
        self
    }

    fn matches(&self, r: &RequestInfo<'_>) -> bool {
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == r.verb) {
            return false;
        }
        if self.group.as_deref().is_some_and(|g| g != r.group) {
            return false;
        }
        if let Some(want) = &self.resource {
            let ok = match want.split_once('/') {
                Some((plural, sub)) => plural == r.resource && sub == r.subresource,
                None => want == r.resource,
            };
            if !ok {
                return false;
            }
        }
        if self.namespace.is_some() && self.namespace.as_deref() != r.namespace {
            return false;
        }
        if self.name.is_some() && self.name.as_deref() != r.name {
            return false;
        }
        if self.user.as_deref().is_some_and(|u| u != r.user) {
            return false;
        }
        true
    }

    fn error(&self, r: &RequestInfo<'_>) -> ApiError {
        let what = format!(
            "{} {}{}{}",
            r.verb,
            crate::error::qualified(r.resource, r.group),
            if r.subresource.is_empty() {
                String::new()
            } else {
                format!("/{}", r.subresource)
            },
            r.name.map(|n| format!(" {n:?}")).unwrap_or_default()
        );
        let (reason, message) = match self.code {
            429 => (
                "TooManyRequests",
                format!("injected fault: too many requests, please try again later ({what})"),
            ),
            503 => (
                "ServiceUnavailable",
                format!(
                    "injected fault: the server is currently unable to handle the request ({what})"
                ),
            ),
            504 => (
                "Timeout",
                format!(
                    "injected fault: the server was unable to return a response in the time allotted ({what})"
                ),
            ),
            _ => (
                "InternalError",
                format!(
                    "injected fault: an error on the server has prevented the request from succeeding ({what})"
                ),
            ),
        };
        let mut e = ApiError::new(self.code, reason, message);
        if matches!(self.code, 429 | 503) {
            e.retry_after = Some(self.retry_after);
        }
        e
    }
}

#[derive(Debug)]
struct Active {
    id: u64,
    fault: Fault,
    seen: u64,
    failed: u64,
    expires: Option<Instant>,
}

/// A hold rule: matching requests wait until `open` turns `true`.
#[derive(Debug)]
struct HoldRule {
    id: u64,
    fault: Fault,
    open: tokio::sync::watch::Sender<bool>,
    /// Requests that arrived (held or let through once released).
    arrived: Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    rules: Vec<Active>,
    holds: Vec<HoldRule>,
    injected: u64,
    rng: u64,
    counts: BTreeMap<(String, String), u64>,
    total: u64,
    by_user: BTreeMap<String, RequestCounts>,
}

impl State {
    /// xorshift64*: deterministic per cluster, good enough for fault probabilities.
    fn next_f64(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Handle to the fault rules and the request counters of one cluster (shared by all
/// connections; cheap to call from tests at any time).
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::with_seed(0x9E37_79B9_7F4A_7C15)
    }
}

/// A rule injected with [`Faults::inject`]; pass it to [`Faults::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultId(u64);

impl Faults {
    /// Faults whose probabilities draw from a generator seeded with `seed` (reproducible).
    pub fn with_seed(seed: u64) -> Faults {
        Faults {
            state: Mutex::new(State {
                rng: seed.max(1),
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a rule; it applies to requests that arrive from now on.
    pub fn inject(&self, fault: Fault) -> FaultId {
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        let expires = fault.duration.map(|d| Instant::now() + d);
        s.rules.push(Active {
            id,
            fault,
            seen: 0,
            failed: 0,
            expires,
        });
        FaultId(id)
    }

    /// Removes one rule (no-op when it is already spent or expired).
    pub fn remove(&self, id: FaultId) {
        self.lock().rules.retain(|r| r.id != id.0);
    }

    /// Removes every rule (the counters are kept). Requests still held are released.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.rules.clear();
        for h in s.holds.drain(..) {
            h.open.send_replace(true);
        }
    }

    /// Holds every request matching `fault` (its verb, resource, namespace, name and user
    /// conditions; the failure settings are ignored) in front of the store until
    /// [`Hold::release`]. Requests are counted when they arrive, before they wait; a held
    /// request that a [`check`](Self::check) rule fails is failed at once instead.
    pub fn hold(self: &Arc<Self>, fault: Fault) -> Hold {
        let (open, _) = tokio::sync::watch::channel(false);
        let (arrived, _) = tokio::sync::watch::channel(0);
        let arrived = Arc::new(arrived);
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.holds.push(HoldRule {
            id,
            fault,
            open: open.clone(),
            arrived: arrived.clone(),
        });
        Hold {
            faults: self.clone(),
            id,
            open,
            arrived,
        }
    }

    /// The gates a request must pass (one per matching hold rule), counting it as arrived
    /// at each. Called by the server after [`check`](Self::check) let the request through.
    pub fn holds_for(&self, r: &RequestInfo<'_>) -> Vec<tokio::sync::watch::Receiver<bool>> {
        let s = self.lock();
        s.holds
            .iter()
            .filter(|h| h.fault.matches(r))
            .map(|h| {
                h.arrived.send_modify(|n| *n += 1);
                h.open.subscribe()
            })
            .collect()
    }

    /// Rules still active (neither spent nor expired).
    pub fn active(&self) -> usize {
        let mut s = self.lock();
        let now = Instant::now();
        s.rules.retain(|r| r.expires.is_none_or(|e| e > now));
        s.rules.len()
    }

    /// Requests failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Snapshot of the request counters.
    pub fn counts(&self) -> RequestCounts {
        let s = self.lock();
        RequestCounts {
            by_verb_resource: s.counts.clone(),
            total: s.total,
        }
    }

    /// Snapshot of the request counters of one authenticated user (see
    /// [`Fault::user`] for the names).
    pub fn counts_for(&self, user: &str) -> RequestCounts {
        self.lock().by_user.get(user).cloned().unwrap_or_default()
    }

    /// Resets the request counters to zero.
    pub fn reset_counts(&self) {
        let mut s = self.lock();
        s.counts.clear();
        s.total = 0;
        s.by_user.clear();
    }

    /// Counts the request and returns the error to answer with when a rule fails it.
    /// Called by the server for every authenticated resource request.
    pub fn check(&self, r: &RequestInfo<'_>) -> Option<ApiError> {
        let mut s = self.lock();
        s.total += 1;
        let resource = if r.subresource.is_empty() {
            crate::error::qualified(r.resource, r.group)
        } else {
            format!(
                "{}/{}",
                crate::error::qualified(r.resource, r.group),
                r.subresource
            )
        };
        let key = (r.verb.to_owned(), resource);
        let user = s.by_user.entry(r.user.to_owned()).or_default();
        user.total += 1;
        *user.by_verb_resource.entry(key.clone()).or_insert(0) += 1;
        *s.counts.entry(key).or_insert(0) += 1;
        if s.rules.is_empty() {
            return None;
        }
        let now = Instant::now();
        s.rules.retain(|a| a.expires.is_none_or(|e| e > now));
        let mut hit = None;
        for i in 0..s.rules.len() {
            if !s.rules[i].fault.matches(r) {
                continue;
            }
            s.rules[i].seen += 1;
            if s.rules[i].seen <= s.rules[i].fault.skip {
                continue;
            }
            let p = s.rules[i].fault.probability;
            if p < 1.0 && s.next_f64() >= p {
                continue;
            }
            hit = Some(i);
            break;
        }
        let i = hit?;
        s.injected += 1;
        let rule = &mut s.rules[i];
        rule.failed += 1;
        let err = rule.fault.error(r);
        if rule.fault.times.is_some_and(|t| rule.failed >= t) {
            s.rules.remove(i);
        }
        Some(err)
    }
}

/// A hold rule injected with [`Faults::hold`]. Dropping it releases the held requests
/// and removes the rule.
#[derive(Debug)]
pub struct Hold {
    faults: Arc<Faults>,
    id: u64,
    open: tokio::sync::watch::Sender<bool>,
    arrived: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Hold {
    /// Requests that matched the rule so far (held now, or let through after release).
    pub fn arrived(&self) -> u64 {
        *self.arrived.borrow()
    }

    /// Waits until at least `n` requests arrived at the rule.
    pub async fn wait_held(&self, n: u64) {
        let mut rx = self.arrived.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|a| *a >= n).await;
    }

    /// Lets the held requests, and every later matching one, through.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.open.send_replace(true);
        self.faults.lock().holds.retain(|h| h.id != self.id);
    }
}

/// Request counters: how many resource requests the server answered (or failed on
/// purpose), by Kubernetes verb and resource (`plural.group[/subresource]`, core group
/// without a suffix: `namespaces`, `tenants.capsule.clastix.io`,
/// `novatenants.kubenova.io/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `(verb, resource)` → count.
    pub by_verb_resource: BTreeMap<(String, String), u64>,
    /// All resource requests.
    pub total: u64,
}

impl RequestCounts {
    /// Requests of `verb` on `resource` (as in the map keys; `*` = any verb).
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.by_verb_resource
            .iter()
            .filter(|((v, r), _)| (verb == "*" || v == verb) && r == resource)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `verb` on any resource.
    pub fn verb(&self, verb: &str) -> u64 {
        self.by_verb_resource
            .iter()
            .filter(|((v, _), _)| v == verb)
            .map(|(_, n)| n)
            .sum()
    }

    /// Write requests (see [`WRITE_VERBS`]).
    pub fn writes(&self) -> u64 {
        WRITE_VERBS.iter().map(|v| self.verb(v)).sum()
    }

    /// The difference `self - earlier`, per key (for measuring one phase).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        let mut out = BTreeMap::new();
        for (k, n) in &self.by_verb_resource {
            let before = earlier.by_verb_resource.get(k).copied().unwrap_or(0);
            if *n > before {
                out.insert(k.clone(), n - before);
            }
        }
        RequestCounts {
            by_verb_resource: out,
            total: self.total.saturating_sub(earlier.total),
        }
    }
}

impl std::fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for ((verb, resource), n) in &self.by_verb_resource {
            writeln!(f, "{n:>8} {verb} {resource}")?;
        }
        write!(f, "{:>8} total", self.total)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req<'a>(verb: &'a str, resource: &'a str, name: Option<&'a str>) -> RequestInfo<'a> {
        RequestInfo {
            verb,
            group: "",
            resource,
            subresource: "",
            namespace: None,
            name,
            user: "admin",
        }
    }

    #[test]
    fn times_and_after() {
        let f = Faults::default();
        f.inject(
            Fault::verb("patch")
                .resource("namespaces")
                .after(1)
                .times(2),
        );
        assert!(f.check(&req("get", "namespaces", Some("a"))).is_none());
        assert!(f.check(&req("patch", "secrets", Some("a"))).is_none());
        assert!(f.check(&req("patch", "namespaces", Some("a"))).is_none()); // skipped
        assert_eq!(
            f.check(&req("patch", "namespaces", Some("a")))
                .map(|e| e.code),
            Some(500)
        );
        assert!(f.check(&req("patch", "namespaces", Some("b"))).is_some());
        assert!(f.check(&req("patch", "namespaces", Some("c"))).is_none()); // spent
        assert_eq!(f.injected(), 2);
        assert_eq!(f.active(), 0);
        let c = f.counts();
        assert_eq!(c.get("patch", "namespaces"), 4);
        assert_eq!(c.total, 6);
        assert_eq!(c.writes(), 5);
    }

    #[tokio::test]
    async fn holds_wait_until_released_and_count_arrivals() {
        let f = Arc::new(Faults::default());
        let hold = f.hold(Fault::verb("patch").resource("namespaces"));
        assert!(f.holds_for(&req("get", "namespaces", Some("a"))).is_empty());
        let mut gates = f.holds_for(&req("patch", "namespaces", Some("a")));
        assert_eq!((gates.len(), hold.arrived()), (1, 1));
        assert!(!*gates[0].borrow());
        hold.wait_held(1).await;
        hold.release();
        gates[0].wait_for(|o| *o).await.unwrap();
        drop(hold);
        assert!(
            f.holds_for(&req("patch", "namespaces", Some("b")))
                .is_empty()
        );
    }

    #[test]
    fn writes_only_for_a_while() {
        let f = Faults::default();
        f.inject(
            Fault::writes()
                .status(503)
                .for_duration(Duration::from_millis(50)),
        );
        assert!(f.check(&req("list", "namespaces", None)).is_none());
        let e = f.check(&req("delete", "namespaces", Some("x"))).unwrap();
        assert_eq!((e.code, e.reason.as_str()), (503, "ServiceUnavailable"));
        assert_eq!(e.retry_after, Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert!(f.check(&req("delete", "namespaces", Some("x"))).is_none());
        assert_eq!(f.active(), 0);
    }

    #[test]
    fn subresource_and_probability() {
        let f = Faults::default();
        f.inject(Fault::any().resource("novatenants/status").status(429));
        let mut r = req("patch", "novatenants", Some("a"));
        assert!(f.check(&r).is_none());
        r.subresource = "status";
        assert_eq!(f.check(&r).map(|e| e.code), Some(429));
        f.clear();
        f.inject(Fault::any().probability(0.25));
        let failed = (0..4000)
            .filter(|_| f.check(&req("get", "pods", Some("p"))).is_some())
            .count();
        assert!((800..1200).contains(&failed), "{failed}");
        f.clear();
        f.inject(Fault::any().probability(0.0));
        assert!(f.check(&req("get", "pods", Some("p"))).is_none());
        f.clear();
        f.inject(Fault::any().user("system:serviceaccount:ops:op"));
        assert!(f.check(&req("get", "pods", Some("p"))).is_none());
        let mut r = req("get", "pods", Some("p"));
        r.user = "system:serviceaccount:ops:op";
        assert!(f.check(&r).is_some());
        let op = f.counts_for("system:serviceaccount:ops:op");
        assert_eq!((op.total, op.get("get", "pods")), (1, 1));
        assert!(f.counts().total > 1);
    }
}
