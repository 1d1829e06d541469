//! Everything around the handlers.
//!
//! Order, outermost first:
//!
//! 1. **request** ([`request_layer`]): request id (`X-Request-Id` echoed when sane, else a
//!    UUIDv4) set as the [`REQUEST_ID`] task-local and on every response; a tracing span
//!    per request; the timeout (KN-408); the KN envelope on every error response that is
//!    not already one (axum's plain-text rejections, 404, 405 with `Allow`, 413, ...);
//!    Prometheus metrics; one structured access log line.
//! 2. **URI rewrite** ([`rewrite_action_uri`]): `…/apps/{id}:deploy` → `…/apps/{id}/actions/deploy`.
//! 3. the router, with per route ([`call_layer`]): source IP, per-IP rate limit,
//!    authentication ([`Principal`] in the request extensions), per-subject rate limit
//!    (agent routes: the agent credential, then a per-cluster rate limit; the per-IP
//!    limit applies only to attempts without a valid credential),
//!    the `Idempotency-Key` lookup (a mismatch is KN-422 here; a stored response goes to
//!    the handler, which replays it only after its own authorization checks), body limit,
//!    and the audit of mutating calls that the handler did not audit itself (failures,
//!    denials).
//!
//! The OAuth token endpoint ([`super::exchange::PATH`]) is rate limited per source IP but
//! takes no bearer token: the subject token in its body is the credential.
//!
//! Public (no token, no rate limit): `/api/v1/healthz`, `/api/v1/readyz`,
//! `/api/v1/version`, `/api/v1/openapi.json`, `/api/v1/docs`, `/metrics`,
//! `/api/v1/auth/providers`, `/.well-known/openid-configuration`, `/.well-known/jwks.json`.

use super::AppState;
use super::authz::Principal;
use super::config::ServerConfig;
use super::error::{ApiError, REQUEST_ID};
use super::extract::{Audited, IdempotencyKey, IdempotencyTtl, Replayed, SourceIp, StoredResponse};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use kubenova_api::error::{ErrorCode, KnError};
use kubenova_api::model::{AuditEvent, AuditOutcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sha2::{Digest as _, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use time::OffsetDateTime;
use tracing::Instrument as _;

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed`, set to `true` on a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Paths served without a token and without rate limits.
pub const PUBLIC_PATHS: &[&str] = &[
    "/api/v1/healthz",
    "/api/v1/readyz",
    "/api/v1/version",
    "/api/v1/openapi.json",
    "/api/v1/docs",
    super::docs_ui::SCRIPT_PATH,
    super::docs_ui::INIT_PATH,
    "/metrics",
    // Where people sign in (read by `kubenova login` before it has a token).
    super::login::PROVIDERS_PATH,
    // OIDC discovery and JWKS of the kubeconfig token issuer (API servers fetch them).
    "/.well-known/openid-configuration",
    "/.well-known/jwks.json",
];

/// True for the public paths (no authentication, no rate limit).
pub fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path)
}

/// Prefix of the agent routes: authenticated by the per-cluster agent credential in the
/// middleware ([`super::agent::Agent`]), never by user tokens; rate limited per cluster
/// (per source IP only when the credential is not valid), not
/// subject to `Idempotency-Key` replay, audited only when denied.
pub const AGENT_PREFIX: &str = "/api/v1/agent/";

/// True for the agent routes.
pub fn is_agent(path: &str) -> bool {
    path.starts_with(AGENT_PREFIX)
}

/// The agent long-polls (desired state, logs and events requests) hold requests up to
/// their own bound ([`super::agent::MAX_WAIT_SECONDS`]); the request timeout leaves them
/// room.
fn timeout_for(path: &str, configured: std::time::Duration) -> std::time::Duration {
    if path == super::agent::DESIRED_PATH || path == super::agent::REQUESTS_PATH {
        configured.max(std::time::Duration::from_secs(
            super::agent::MAX_WAIT_SECONDS + 5,
        ))
    } else {
        configured
    }
}

/// The route template of a response (`/api/v1/tenants/{tenantID}`); `None` is `unmatched`.
/// Holds axum's [`MatchedPath`] (a shared string: no copy per request).
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub Option<MatchedPath>);

impl RouteTemplate {
    /// The template, or `unmatched`.
    pub fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", |m| m.as_str())
    }
}

/// Labels of the HTTP request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// HTTP method.
    pub method: Cow<'static, str>,
    /// Route template.
    pub route: Cow<'static, str>,
    /// Status code.
    pub status: u16,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: Cow<'static, str>,
    /// Route template.
    pub route: Cow<'static, str>,
}

/// The label of a method: a static string for the standard ones (no allocation).
fn method_label(m: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return Cow::Owned(m.as_str().to_string()),
    })
}

/// Cached handles of one (method, status) of a route: they share their values with the
/// metric families, so updating them is updating `/metrics`.
struct RouteMetric {
    method: Method,
    status: u16,
    requests: Counter,
    latency: Histogram,
}

/// Most (method, status) handles cached per route (clients choose methods; beyond this
/// the families are updated directly).
const ROUTE_METRICS_MAX: usize = 64;

/// Labels of the rate-limit rejection counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `ip`, `subject` or `cluster` (agent routes).
    pub scope: String,
}

/// Labels of the unauthenticated-call counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnauthenticatedLabels {
    /// Why the call was not authenticated: `missing_token`, `not_bearer`,
    /// `invalid_token` (user routes) or `agent_credential` (agent routes).
    pub reason: Cow<'static, str>,
}

/// Labels of store metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// Store operation.
    pub operation: Cow<'static, str>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Metrics registry, metric families and rate limiters shared by every request.
pub struct Runtime {
    registry: Registry,
    /// `kubenova_http_requests_total{method,route,status}`.
    pub http_requests: Family<HttpLabels, Counter>,
    /// `kubenova_http_request_duration_seconds{method,route}`.
    pub http_latency: HistogramFamily<RouteLabels>,
    /// `kubenova_http_requests_in_flight`.
    pub in_flight: Gauge,
    /// `kubenova_rate_limited_total{scope}`.
    pub rate_limited: Family<LimitLabels, Counter>,
    /// `kubenova_store_operation_duration_seconds{operation}` (operations timed by the manager).
    pub store_latency: HistogramFamily<StoreLabels>,
    /// `kubenova_store_errors_total{operation}`.
    pub store_errors: Family<StoreLabels, Counter>,
    /// `kubenova_audit_write_failures_total`.
    pub audit_failures: Counter,
    /// `kubenova_http_unauthenticated_total{reason}`: every 401.
    pub unauthenticated: Family<UnauthenticatedLabels, Counter>,
    /// `kubenova_audit_unauthenticated_suppressed_total`: audit events of 401s not written
    /// ([`Runtime::sample_unauthenticated_audit`]).
    pub unauthenticated_audit_suppressed: Counter,
    /// Audit rows of 401s per source IP and minute.
    unauthenticated_audit_per_source: Option<DefaultKeyedRateLimiter<String>>,
    /// Audit rows of 401s per minute, all sources.
    unauthenticated_audit_total: Option<governor::DefaultDirectRateLimiter>,
    /// The store's record cache, read at each scrape ([`Runtime::observe_cache`]).
    cache: CacheMetrics,
    /// The metrics the SLOs and alerts are built on ([`super::slo`]).
    pub slo: super::slo::SloMetrics,
    /// Per-route handles of `http_requests` and `http_latency` (see [`Runtime::observe_http`]).
    route_metrics: std::sync::RwLock<HashMap<Box<str>, Vec<RouteMetric>>>,
    /// Group commit of issued kubeconfig credentials and their audit events.
    pub credential_writer: std::sync::Arc<super::kubeconfigs::CredentialWriter>,
    /// Validated Capsule Proxy CAs of the clusters kubeconfigs are issued for.
    pub proxy_cas: super::kubeconfigs::ProxyCaCache,
    /// When this replica last recorded each API key's use.
    pub api_key_uses: super::apikeys::LastUsed,
    /// Set to `true` when the server begins its graceful shutdown, so that long-lived
    /// streams (the followed audit log) end instead of holding the shutdown.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    subject_limiter: Option<DefaultKeyedRateLimiter<String>>,
    ip_limiter: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
    body_limit: usize,
}

/// `kubenova_store_cache_*`: the record cache, copied at each scrape.
#[derive(Default)]
struct CacheMetrics {
    enabled: Gauge,
    entries: Gauge,
    hits: Counter,
    misses: Counter,
    invalidations: Counter,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("subject_limit", &self.subject_limiter.is_some())
            .field("ip_limit", &self.ip_limiter.is_some())
            .finish_non_exhaustive()
    }
}

fn limiter(rps: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<String>> {
    let rps = NonZeroU32::new(rps)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rps);
    Some(governor::RateLimiter::keyed(
        Quota::per_second(rps).allow_burst(burst),
    ))
}

impl Runtime {
    /// Registers the metrics and builds the rate limiters of a configuration.
    pub fn new(cfg: &ServerConfig) -> Self {
        let mut registry = Registry::with_prefix("kubenova");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_latency: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        let rate_limited = Family::<LimitLabels, Counter>::default();
        let store_latency: HistogramFamily<StoreLabels> =
            Family::new_with_constructor(latency_histogram);
        let store_errors = Family::<StoreLabels, Counter>::default();
        let audit_failures = Counter::default();
        let unauthenticated = Family::<UnauthenticatedLabels, Counter>::default();
        let unauthenticated_audit_suppressed = Counter::default();
        registry.register(
            "http_unauthenticated",
            "Calls answered 401, by reason (missing_token, not_bearer, invalid_token, agent_credential)",
            unauthenticated.clone(),
        );
        registry.register(
            "audit_unauthenticated_suppressed",
            "Audit events of unauthenticated (401) calls not written, over the per-source or total budget per minute",
            unauthenticated_audit_suppressed.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route template and method",
            http_latency.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served",
            in_flight.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests rejected with KN-429 by rate-limit scope (ip, subject, cluster)",
            rate_limited.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Latency of store operations made by the middleware (readiness ping, idempotency lookup, audit)",
            store_latency.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed in the database or its keys (unavailable, decryption, internal; not answers such as not found or a conflict), by operation",
            store_errors.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit events that could not be written to the store",
            audit_failures.clone(),
        );
        let cache = CacheMetrics::default();
        registry.register(
            "store_cache_enabled",
            "1 while the record cache may answer reads (Postgres: change listener connected; SQLite: database file held), else 0",
            cache.enabled.clone(),
        );
        registry.register(
            "store_cache_entries",
            "Records held by the record cache",
            cache.entries.clone(),
        );
        registry.register(
            "store_cache_hits",
            "Point reads answered by the record cache",
            cache.hits.clone(),
        );
        registry.register(
            "store_cache_misses",
            "Point reads that went to the database while the record cache was enabled",
            cache.misses.clone(),
        );
        registry.register(
            "store_cache_invalidations",
            "Record cache entries dropped by writes and change notifications",
            cache.invalidations.clone(),
        );
        let slo = super::slo::SloMetrics::new(&mut registry);
        Self {
            registry,
            http_requests,
            http_latency,
            in_flight,
            rate_limited,
            store_latency,
            store_errors,
            audit_failures,
            unauthenticated,
            unauthenticated_audit_suppressed,
            unauthenticated_audit_per_source: NonZeroU32::new(cfg.audit_unauthenticated_per_source)
                .map(|n| governor::RateLimiter::keyed(Quota::per_minute(n))),
            unauthenticated_audit_total: NonZeroU32::new(cfg.audit_unauthenticated_total)
                .map(|n| governor::RateLimiter::direct(Quota::per_minute(n))),
            cache,
            slo,
            route_metrics: Default::default(),
            credential_writer: Default::default(),
            proxy_cas: Default::default(),
            api_key_uses: Default::default(),
            shutdown: tokio::sync::watch::channel(false).0,
            subject_limiter: limiter(cfg.rate_limit_subject_rps, cfg.rate_limit_subject_burst),
            ip_limiter: limiter(cfg.rate_limit_ip_rps, cfg.rate_limit_ip_burst),
            checks: AtomicU64::new(0),
            body_limit: cfg.body_limit,
        }
    }

    /// Copies the record cache's state into the `kubenova_store_cache_*` metrics
    /// (`None`: a store without one, e.g. SQLite: enabled 0).
    pub fn observe_cache(&self, cache: Option<&kubenova_store::cache::RowCache>) {
        let Some(cache) = cache else {
            self.cache.enabled.set(0);
            return;
        };
        let stats = cache.stats();
        self.cache.enabled.set(i64::from(cache.is_enabled()));
        self.cache
            .entries
            .set(i64::try_from(cache.len()).unwrap_or(i64::MAX));
        for (counter, value) in [
            (&self.cache.hits, stats.hits),
            (&self.cache.misses, stats.misses),
            (&self.cache.invalidations, stats.invalidations),
        ] {
            let seen = counter.get();
            if value > seen {
                counter.inc_by(value - seen);
            }
        }
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Records one HTTP response in `http_requests` and `http_latency`. The handles of a
    /// (route, method, status) are looked up once and then reused: no label allocation
    /// and no family lookup per request.
    pub fn observe_http(&self, method: &Method, route: &str, status: u16, seconds: f64) {
        {
            let cache = match self.route_metrics.read() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            if let Some(m) = cache
                .get(route)
                .and_then(|v| v.iter().find(|m| m.status == status && m.method == method))
            {
                m.requests.inc();
                m.latency.observe(seconds);
                return;
            }
        }
        let method_l = method_label(method);
        let route_l: Cow<'static, str> = Cow::Owned(route.to_string());
        let requests = self
            .http_requests
            .get_or_create(&HttpLabels {
                method: method_l.clone(),
                route: route_l.clone(),
                status,
            })
            .clone();
        let latency = self
            .http_latency
            .get_or_create(&RouteLabels {
                method: method_l,
                route: route_l,
            })
            .clone();
        requests.inc();
        latency.observe(seconds);
        let mut cache = match self.route_metrics.write() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let entries = cache.entry(route.into()).or_default();
        if entries.len() < ROUTE_METRICS_MAX
            && !entries
                .iter()
                .any(|m| m.status == status && m.method == method)
        {
            entries.push(RouteMetric {
                method: method.clone(),
                status,
                requests,
                latency,
            });
        }
    }

    /// Records one store operation's latency and outcome.
    pub fn observe_store(&self, operation: &'static str, started: Instant, ok: bool) {
        let labels = StoreLabels {
            operation: Cow::Borrowed(operation),
        };
        self.store_latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if !ok {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// Counts an unauthenticated (401) call in `kubenova_http_unauthenticated_total`.
    pub fn count_unauthenticated(&self, reason: &'static str) {
        self.unauthenticated
            .get_or_create(&UnauthenticatedLabels {
                reason: Cow::Borrowed(reason),
            })
            .inc();
    }

    /// Whether the audit event of an unauthenticated (401) call from `source_ip` may be
    /// written: at most `--audit-unauthenticated-per-source` per source and minute and
    /// `--audit-unauthenticated-total` per minute overall, so a flood of bad tokens cannot
    /// grow the audit table without bound. `false` counts it in
    /// `kubenova_audit_unauthenticated_suppressed_total` instead.
    pub fn sample_unauthenticated_audit(&self, source_ip: &str) -> bool {
        let per_source = match &self.unauthenticated_audit_per_source {
            Some(l) => {
                // Forget idle sources now and then so the map stays small.
                if self.checks.fetch_add(1, Ordering::Relaxed) % 8192 == 8191 {
                    l.retain_recent();
                }
                l.check_key(&source_ip.to_string()).is_ok()
            }
            None => false,
        };
        let write = per_source
            && self
                .unauthenticated_audit_total
                .as_ref()
                .is_some_and(|l| l.check().is_ok());
        if !write {
            self.unauthenticated_audit_suppressed.inc();
        }
        write
    }

    /// Checks a rate limit; `Err(seconds to wait)` when exceeded. `cluster` (an agent's
    /// cluster) uses the per-subject rates, with keys of its own.
    fn check(&self, scope: &'static str, key: &str) -> Result<(), u64> {
        let limiter = match scope {
            "ip" => &self.ip_limiter,
            _ => &self.subject_limiter,
        };
        let Some(l) = limiter else { return Ok(()) };
        // Forget idle keys now and then so the maps stay small.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 8192 == 8191 {
            l.retain_recent();
        }
        match l.check_key(&key.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                self.rate_limited
                    .get_or_create(&LimitLabels {
                        scope: scope.into(),
                    })
                    .inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        }
    }
}

/// Wraps the routes with the documentation endpoints, `/metrics`, the 404/405 fallbacks
/// and every middleware, and binds the state.
pub fn apply(
    routes: axum::Router<AppState>,
    spec: utoipa::openapi::OpenApi,
    state: AppState,
) -> axum::Router {
    let spec_json = Bytes::from(serde_json::to_vec(&spec).unwrap_or_default());
    // The middleware layers get the state behind one `Arc`: cloning it per request is one
    // reference count instead of one per field.
    let shared = Arc::new(state.clone());
    let docs: axum::Router<AppState> = super::docs_ui::routes();
    let inner = routes
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let body = spec_json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .merge(docs)
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            call_layer,
        ))
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state.clone());
    let svc = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(shared, request_layer))
        .map_request(rewrite_action_uri)
        .service(inner);
    axum::Router::new().fallback_service(svc)
}

async fn metrics(State(state): State<AppState>) -> Response {
    state
        .runtime
        .observe_cache(state.store.row_cache().as_deref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.runtime.encode_metrics(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {method} {}", uri.path()),
    )
}

// ---- URI rewrite -------------------------------------------------------------------

/// `…/apps/{id}:{action}` → `…/apps/{id}/actions/{action}` (also with `%3A`); `None` for
/// any other path.
pub fn rewrite_path(path: &str) -> Option<String> {
    let (head, last) = path.rsplit_once('/')?;
    if !head.ends_with("/apps") {
        return None;
    }
    let (id, action) = last
        .split_once(':')
        .or_else(|| last.split_once("%3A"))
        .or_else(|| last.split_once("%3a"))?;
    if id.is_empty() || action.is_empty() {
        return None;
    }
    Some(format!("{head}/{id}/actions/{action}"))
}

/// Rewrites the colon spelling of app actions before routing (axum cannot route a
/// parameter with a suffix in one segment).
pub fn rewrite_action_uri(mut req: Request) -> Request {
    if let Some(new_path) = rewrite_path(req.uri().path()) {
        let pq = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

// ---- request layer -------------------------------------------------------------------

fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?.trim();
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        }))
    .then(|| s.to_string())
}

/// Request id, span, timeout, KN envelope on errors, metrics and access log.
pub async fn request_layer(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(sane_request_id)
        .unwrap_or_else(|| {
            let mut buf = uuid::Uuid::encode_buffer();
            uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut buf)
                .to_owned()
        });
    let id_header =
        HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(X_REQUEST_ID, id_header.clone());
    let method = req.method().clone();
    // A shared copy of the URI (reference-counted bytes), not a new `String`.
    let uri = req.uri().clone();
    // While traces are exported, the request is sampled here, once: a caller's W3C
    // `traceparent` decides under a parent-based sampler, else the configured ratio. The
    // spans of an unsampled request are not traced at all (they cost what logging costs).
    let remote = kubenova_telemetry::propagation::extract(req.headers());
    let (span, unit) = kubenova_telemetry::propagation::unit_span(remote, || {
        tracing::info_span!(
            "request",
            method = %method,
            path = %uri.path(),
            request_id = %id,
            route = tracing::field::Empty,
            status = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    });
    let sampled = unit == Some(true);
    if sampled {
        span.record("otel.kind", "server");
    }
    let runtime = Arc::clone(&state.runtime);
    runtime.in_flight.inc();
    let timeout = timeout_for(uri.path(), state.config.request_timeout);
    // A body declared larger than the limit is refused at once, before any of it is read
    // (otherwise a slow sender holds the connection until the request timeout).
    let too_large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > state.config.body_limit as u64);
    drop(state);
    let (m2, u2) = (method.clone(), uri.clone());
    let fut = async move {
        let run = async {
            if too_large {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body exceeds the size limit",
                )
                .into_response()
            } else {
                next.run(req).await
            }
        };
        let resp = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(timeout_ms = timeout.as_millis() as u64, "request timed out");
                ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the request did not complete within {} ms",
                        timeout.as_millis()
                    ),
                )
                .into_response()
            }
        };
        ensure_envelope(resp, &m2, u2.path()).await
    };
    let fut = REQUEST_ID.scope(id.clone(), fut.instrument(span.clone()));
    let mut resp = kubenova_telemetry::propagation::run_unit(unit, fut).await;
    runtime.in_flight.dec();
    let route = resp
        .extensions_mut()
        .remove::<RouteTemplate>()
        .unwrap_or(RouteTemplate(None));
    let route = route.as_str();
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    runtime.observe_http(&method, route, status, elapsed.as_secs_f64());
    if !span.is_disabled() {
        span.record("route", route);
        span.record("status", status);
        if sampled {
            kubenova_telemetry::propagation::rename(&span, format!("{method} {route}"));
            if status >= 500 {
                span.record("otel.status_code", "ERROR");
            }
        }
    }
    // Under the request's sampling decision, like everything the request logged.
    kubenova_telemetry::propagation::in_unit(unit, || {
        span.in_scope(|| {
            tracing::info!(
                target: "kubenova::access",
                method = %method,
                route = %route,
                path = %uri.path(),
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = %id,
                "request"
            );
        })
    });
    resp.headers_mut().insert(X_REQUEST_ID, id_header);
    resp
}

fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 => ErrorCode::BadRequest,
        401 => ErrorCode::Unauthenticated,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::Timeout,
        409 => ErrorCode::Conflict,
        412 => ErrorCode::PreconditionFailed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        422 => ErrorCode::Validation,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Unavailable,
        s if s < 500 => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let m = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        })
        .unwrap_or(false)
}

/// Replaces a non-JSON error response (axum's rejections, 405, 413, ...) with the KN
/// envelope, keeping its status and headers such as `Allow` and `Retry-After`.
async fn ensure_envelope(resp: Response, method: &Method, path: &str) -> Response {
    let status = resp.status();
    if status.as_u16() < 400 || is_json(&resp) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = code_for_status(status);
    let message = match code {
        ErrorCode::MethodNotAllowed => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            format!("{method} is not allowed on {path}; allowed: {allow}")
        }
        ErrorCode::NotFound if text.is_empty() => format!("no route for {method} {path}"),
        ErrorCode::PayloadTooLarge => "the request body exceeds the size limit".to_string(),
        _ if status.is_server_error() => {
            if !text.is_empty() {
                tracing::error!(status = status.as_u16(), detail = %text, "server error");
            }
            "internal error; the server log has details under the request id".to_string()
        }
        _ if text.is_empty() => code.title().to_string(),
        _ => text,
    };
    let mut new = ApiError::from(KnError::new(code, message)).into_response();
    *new.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    new.extensions_mut().extend(parts.extensions);
    new
}

// ---- call layer ---------------------------------------------------------------------

fn is_mutating(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The `reason` label of a refused `Authorization` header (a fixed set: labels never
/// carry what the client sent).
fn unauthenticated_reason(authorization: Option<&str>) -> &'static str {
    match authorization.map(str::trim) {
        None | Some("") => "missing_token",
        Some(h) => match h.split_once(' ') {
            Some((scheme, rest))
                if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() =>
            {
                "invalid_token"
            }
            _ => "not_bearer",
        },
    }
}

fn too_many(scope: &str, secs: u64) -> Response {
    ApiError {
        error: KnError::new(
            ErrorCode::RateLimited,
            format!("rate limit per {scope} exceeded; retry in {secs} s"),
        ),
        retry_after: Some(secs),
    }
    .into_response()
}

/// Per-route middleware: source IP, rate limits, authentication, idempotency, audit.
pub async fn call_layer(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    // Public endpoints and unknown routes (a 404 needs no identity) skip auth, limits and
    // the call context.
    let public = matched.is_none() || is_public(req.uri().path());
    let mut resp = if public {
        next.run(req).await
    } else {
        let source_ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        req.extensions_mut().insert(SourceIp(source_ip.clone()));
        req.extensions_mut()
            .insert(IdempotencyTtl(state.config.idempotency_ttl_time()));
        let route = matched.as_ref().map_or("unmatched", |m| m.as_str());
        guarded(&state, req, next, route, source_ip).await
    };
    resp.extensions_mut().insert(RouteTemplate(matched));
    resp
}

struct CallInfo {
    method: Method,
    path: String,
    action: String,
    source_ip: String,
}

async fn guarded(
    state: &AppState,
    mut req: Request,
    next: Next,
    route: &str,
    source_ip: String,
) -> Response {
    let path = req.uri().path().to_string();
    let info = CallInfo {
        method: req.method().clone(),
        path,
        action: format!("{} {}", req.method(), route),
        source_ip,
    };
    if is_agent(&info.path) {
        return guarded_agent(state, req, next, route, info).await;
    }
    if let Err(secs) = state.runtime.check("ip", &info.source_ip) {
        tracing::warn!(source_ip = %info.source_ip, "per-IP rate limit exceeded");
        return too_many("source IP", secs);
    }
    // The OAuth token endpoint (token exchange): no bearer token (the subject token in
    // the body is the credential), no idempotency replay; it audits itself.
    if info.path == super::exchange::PATH {
        return next.run(req).await;
    }
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // An API key (`knk_…`) is verified against the store; anything else is a JWT.
    let authenticated = match super::apikeys::presented(authz) {
        Some(key) if !state.auth.is_disabled() => {
            match super::apikeys::authenticate(state, key).await {
                // The store could not answer: not an authentication failure.
                Err(e) if e.error.code != ErrorCode::Unauthenticated => return e.into_response(),
                other => other,
            }
        }
        _ => state.auth.authenticate_async(authz).await,
    };
    let principal = match authenticated {
        Ok(p) => p,
        Err(e) => {
            state
                .runtime
                .count_unauthenticated(unauthenticated_reason(authz));
            let mut resp = e.into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kubenova\", error=\"invalid_token\""),
            );
            if is_mutating(&info.method)
                && state.runtime.sample_unauthenticated_audit(&info.source_ip)
            {
                let anon = Principal {
                    subject: "anonymous".into(),
                    ..Principal::default()
                };
                audit_call(state, &anon, &info, route, resp.status()).await;
            }
            return resp;
        }
    };
    // A person signed in with an identity provider: their tenant and project rights, from
    // the model as it is now (so a change to owners or access applies to the next request).
    let mut principal = principal;
    if let Some(identity) = principal.identity() {
        match state.store.memberships_of(&identity.keys()).await {
            Ok(rows) => principal.grants = kubenova_api::identity::Grants::of(&identity, &rows),
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    req.extensions_mut().insert(principal.clone());
    if let Err(secs) = state.runtime.check("subject", &principal.subject) {
        tracing::warn!(subject = %principal.subject, "per-subject rate limit exceeded");
        return too_many("subject", secs);
    }
    let resp = match idempotency(state, &principal, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    if is_mutating(&info.method) {
        if resp.extensions().get::<Replayed>().is_some() {
            log_audit(&principal, &info, "replayed", resp.status().as_u16());
        } else if resp.extensions().get::<Audited>().is_none() {
            audit_call(state, &principal, &info, route, resp.status()).await;
        } else {
            log_audit(
                &principal,
                &info,
                outcome_of(resp.status()).0,
                resp.status().as_u16(),
            );
        }
    }
    resp
}

/// The agent routes: the agent credential is verified here (the handlers' [`Agent`]
/// extractor takes it from the request extensions), then the request is charged to its
/// cluster's bucket, never to its source IP: behind an ingress every cluster shares one
/// address. Only attempts without a valid credential are charged to the source IP (and
/// refused with KN-429 once its budget is spent).
///
/// [`Agent`]: super::agent::Agent
async fn guarded_agent(
    state: &AppState,
    mut req: Request,
    next: Next,
    route: &str,
    info: CallInfo,
) -> Response {
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let resp = match super::agent::Agent::verify(state.store.as_ref(), authz).await {
        Ok(agent) => {
            if let Err(secs) = state
                .runtime
                .check("cluster", &format!("agent-cluster:{}", agent.cluster))
            {
                tracing::warn!(cluster_id = %agent.cluster, "per-cluster agent rate limit exceeded");
                return too_many("cluster", secs);
            }
            req.extensions_mut().insert(agent);
            next.run(req).await
        }
        Err(e) => {
            if let Err(secs) = state.runtime.check("ip", &info.source_ip) {
                tracing::warn!(source_ip = %info.source_ip, "per-IP rate limit of unauthenticated agent calls exceeded");
                return too_many("source IP", secs);
            }
            e.into_response()
        }
    };
    let status = resp.status().as_u16();
    if status == 401 {
        state.runtime.count_unauthenticated("agent_credential");
    }
    if matches!(status, 401 | 403)
        && (status == 403 || state.runtime.sample_unauthenticated_audit(&info.source_ip))
    {
        let agent = Principal {
            subject: "agent".into(),
            ..Principal::default()
        };
        audit_call(state, &agent, &info, route, resp.status()).await;
    }
    resp
}

fn request_hash(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\n");
    h.update(path_and_query.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// Reads the `Idempotency-Key` of a POST and looks up the caller's stored response for it
/// (keyed by subject, roles and scope, see [`Principal::scope_digest`]). A stored response
/// of another request under the key is KN-422 here; a stored response of the same request
/// is **not** answered here but handed to the handler ([`IdempotencyKey::stored`]), which
/// answers it with [`super::extract::Ctx::replay`] only after its authorization checks
/// passed: a caller that may no longer make the request gets the refusal, not the stored
/// response.
async fn idempotency(
    state: &AppState,
    principal: &Principal,
    req: Request,
) -> Result<Request, ApiError> {
    if req.method() != Method::POST {
        return Ok(req);
    }
    let Some(raw) = req.headers().get(&IDEMPOTENCY_KEY) else {
        return Ok(req);
    };
    let key = raw
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            )
        })?
        .to_string();
    let limit = state.runtime.body_limit;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the request body exceeds the size limit",
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the request body exceeds the size limit",
        )
    })?;
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let hash = request_hash(&parts.method, pq, &bytes);
    let found = state
        .store
        .get_idempotency(
            &principal.subject,
            &principal.scope_digest(),
            &key,
            OffsetDateTime::now_utc(),
        )
        .await;
    let stored = match found? {
        Some(rec) if rec.request_hash == hash => Some(StoredResponse {
            status: rec.status,
            body: rec.body,
        }),
        Some(_) => {
            return Err(KnError::new(
                ErrorCode::Validation,
                "Idempotency-Key reused with a different request",
            )
            .with_details(serde_json::json!({"violations": [{
                "field": "Idempotency-Key",
                "reason": "this key was used with a different method, path or body; use a new key"
            }]}))
            .into());
        }
        None => None,
    };
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(IdempotencyKey {
        key,
        request_hash: hash,
        stored,
    });
    Ok(req)
}

fn outcome_of(status: StatusCode) -> (&'static str, AuditOutcome) {
    match status.as_u16() {
        401 | 403 => ("denied", AuditOutcome::Denied),
        s if (200..300).contains(&s) => ("success", AuditOutcome::Success),
        _ => ("failed", AuditOutcome::Failed),
    }
}

fn resource_kind(route: &str) -> String {
    route
        .split('/')
        .rfind(|s| !s.is_empty() && !s.starts_with('{') && !matches!(*s, "api" | "v1" | "actions"))
        .map(|s| s.strip_suffix('s').unwrap_or(s).to_string())
        .unwrap_or_default()
}

fn log_audit(principal: &Principal, info: &CallInfo, outcome: &str, status: u16) {
    let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
    tracing::info!(
        target: "kubenova::audit",
        actor = %principal.subject,
        roles = ?roles,
        action = %info.action,
        resource = %info.path,
        outcome,
        status,
        request_id = %super::error::current_request_id().unwrap_or_default(),
        source_ip = %info.source_ip,
        "audit"
    );
}

async fn audit_call(
    state: &AppState,
    principal: &Principal,
    info: &CallInfo,
    route: &str,
    status: StatusCode,
) {
    let (outcome_s, outcome) = outcome_of(status);
    log_audit(principal, info, outcome_s, status.as_u16());
    let event = AuditEvent {
        id: kubenova_api::ids::AuditId::new(),
        at: OffsetDateTime::now_utc(),
        actor: principal.subject.clone(),
        roles: principal
            .roles
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
        action: info.action.clone(),
        resource_kind: resource_kind(route),
        resource_id: info.path.clone(),
        outcome,
        http_status: Some(status.as_u16()),
        request_id: super::error::current_request_id().unwrap_or_default(),
        source_ip: info.source_ip.clone(),
        details: None,
    };
    let res = state.store.append_audit(&event).await;
    if let Err(e) = res {
        state.runtime.audit_failures.inc();
        tracing::error!(error = %e, action = %info.action, "could not write the audit event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_app_actions() {
        assert_eq!(
            rewrite_path("/api/v1/clusters/c/tenants/t/projects/p/apps/a:deploy").as_deref(),
            Some("/api/v1/clusters/c/tenants/t/projects/p/apps/a/actions/deploy")
        );
        assert_eq!(
            rewrite_path("/api/v1/clusters/c/tenants/t/projects/p/apps/a%3Asuspend").as_deref(),
            Some("/api/v1/clusters/c/tenants/t/projects/p/apps/a/actions/suspend")
        );
        assert_eq!(
            rewrite_path("/api/v1/clusters/c/tenants/t/projects/p/apps/a"),
            None
        );
        assert_eq!(rewrite_path("/api/v1/tenants/a:deploy"), None);
        assert_eq!(
            rewrite_path("/api/v1/clusters/c/tenants/t/projects/p/apps/:deploy"),
            None
        );
    }

    #[test]
    fn request_ids_are_sanitized() {
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("abc-123")).as_deref(),
            Some("abc-123")
        );
        assert_eq!(sane_request_id(&HeaderValue::from_static("a b")), None);
        assert_eq!(sane_request_id(&HeaderValue::from_static("")), None);
    }

    #[test]
    fn resource_kinds() {
        assert_eq!(
            resource_kind("/api/v1/clusters/{clusterID}/tenants/{tenantID}"),
            "tenant"
        );
        assert_eq!(resource_kind("/api/v1/tokens"), "token");
        assert_eq!(
            resource_kind(
                "/api/v1/clusters/{c}/tenants/{t}/projects/{p}/apps/{a}/actions/{action}"
            ),
            "app"
        );
    }
}
