//! W3C trace context across process boundaries: into and out of HTTP headers, and as a
//! single `traceparent` string (how the manager's desired-state log and the Nova objects'
//! annotation carry the trace of the write that caused them).
//!
//! Everything goes through the global propagator, which [`crate::init`] sets to W3C Trace
//! Context when traces are exported. Without it (traces off, or a library used without
//! the binaries' set-up) nothing is injected and nothing extracted: these calls are then a
//! few branches and never allocate.
//!
//! ```
//! use kubenova_telemetry::propagation;
//! // Traces are off in this example: no header is added, no context is found.
//! let mut headers = http::HeaderMap::new();
//! propagation::inject_current(&mut headers);
//! assert!(headers.is_empty());
//! assert_eq!(propagation::current_traceparent(), None);
//! ```

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, global};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header (and map key) holding the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Set once the binary installed the W3C propagator (traces exported).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The configured sampler: whether a remote parent's decision is followed, and the ratio
/// of the rest (as `f64` bits).
static PARENT_BASED: AtomicBool = AtomicBool::new(true);
static RATIO_BITS: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000); // 1.0

tokio::task_local! {
    /// The sampling decision of the unit of work this task runs (a request, an apply, a
    /// reconcile), taken once where the work enters the process.
    static SAMPLED: bool;
}

/// Marks propagation as active (called by [`crate::init`] after it set the global
/// propagator; tests that install their own propagator call it too).
pub fn activate() {
    ACTIVE.store(true, Ordering::Release);
}

/// Sets the sampler [`decide`] follows: `parent_based` (a remote parent's decision wins)
/// and the ratio of traces started here (1 for `always_on`, 0 for `always_off`). Called by
/// [`crate::init`] from `OTEL_TRACES_SAMPLER`.
pub fn configure_sampling(parent_based: bool, ratio: f64) {
    PARENT_BASED.store(parent_based, Ordering::Release);
    RATIO_BITS.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Release);
}

/// The sampling decision for a unit of work that continues `remote` (a caller's or an
/// object's trace context) or starts a trace: the remote decision under a parent-based
/// sampler, else a draw at the configured ratio. `false` while traces are off.
pub fn decide(remote: Option<&Context>) -> bool {
    if !is_active() {
        return false;
    }
    if PARENT_BASED.load(Ordering::Acquire)
        && let Some(cx) = remote
    {
        return cx.span().span_context().is_sampled();
    }
    let ratio = f64::from_bits(RATIO_BITS.load(Ordering::Acquire));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// The decision of the unit of work this task runs, if it is inside one.
pub fn scoped_decision() -> Option<bool> {
    SAMPLED.try_with(|d| *d).ok()
}

/// Runs `f` (which creates the unit of work's spans) under `sampled`: spans of an
/// unsampled unit are not traced at all, so they cost what a log-only span costs.
fn sync_scope<R>(sampled: bool, f: impl FnOnce() -> R) -> R {
    SAMPLED.sync_scope(sampled, f)
}

/// Runs `fut` (the unit of work) under `sampled`, like [`sync_scope`].
async fn scope<F: std::future::Future>(sampled: bool, fut: F) -> F::Output {
    SAMPLED.scope(sampled, fut).await
}

/// The span of a unit of work entering this process (a request, an apply, a reconcile):
/// `make` creates it under the sampling decision for `remote` (the trace it continues, if
/// any), which becomes its parent when sampled. Returns the span and the decision, to run
/// the work with [`run_unit`]; the decision is `None` while traces are off.
pub fn unit_span(
    remote: Option<Context>,
    make: impl FnOnce() -> tracing::Span,
) -> (tracing::Span, Option<bool>) {
    if !is_active() {
        return (make(), None);
    }
    let sampled = decide(remote.as_ref());
    let span = sync_scope(sampled, make);
    if sampled && let Some(cx) = remote {
        let _ = span.set_parent(cx);
    }
    (span, Some(sampled))
}

/// Runs `f` (e.g. a unit's last log line, written after its future ended) under the
/// decision [`unit_span`] took.
pub fn in_unit<R>(decision: Option<bool>, f: impl FnOnce() -> R) -> R {
    match decision {
        Some(sampled) => sync_scope(sampled, f),
        None => f(),
    }
}

/// Runs the unit of work `fut` under the decision [`unit_span`] took.
pub async fn run_unit<F: std::future::Future>(decision: Option<bool>, fut: F) -> F::Output {
    match decision {
        Some(sampled) => scope(sampled, fut).await,
        None => fut.await,
    }
}

/// Whether trace context is carried at all in this process.
pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// One `traceparent` value, as a carrier.
struct One<'a>(Option<&'a str>);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

struct Capture(Option<String>);

impl Injector for Capture {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// Adds the current span's trace context (`traceparent`, `tracestate`) to `headers`.
pub fn inject_current(headers: &mut http::HeaderMap) {
    if !is_active() {
        return;
    }
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// The trace context a caller sent in `headers` (an empty context when there is none or it
/// does not parse).
pub fn extract(headers: &http::HeaderMap) -> Option<Context> {
    // Most requests carry no trace context: no propagator call for them.
    if !is_active() || !headers.contains_key(TRACEPARENT) {
        return None;
    }
    let cx = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The current span's context as one `traceparent` value, when traces are on and the
/// span belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    if !is_active() {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Capture(None);
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut out));
    out.0
}

/// The context a `traceparent` value names; `None` when traces are off or the value is
/// not a valid W3C `traceparent` (nothing else is accepted, so a value from outside cannot
/// do more than name a trace).
pub fn context_from_traceparent(traceparent: &str) -> Option<Context> {
    if !is_active() || traceparent.len() > 128 {
        return None;
    }
    let cx = global::get_text_map_propagator(|p| p.extract(&One(Some(traceparent))));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Adds a link from `span` to the span `traceparent` names. Returns whether it did.
pub fn link_to(span: &tracing::Span, traceparent: &str) -> bool {
    match context_from_traceparent(traceparent) {
        Some(cx) => {
            span.add_link(cx.span().span_context().clone());
            true
        }
        None => false,
    }
}

/// Renames `span` in the exported trace (e.g. a request span once its route is known; a
/// name given as `otel.name` at creation needs no rename).
pub fn rename(span: &tracing::Span, name: String) {
    if is_active() {
        span.context().span().update_name(name);
    }
}

#[cfg(all(test, feature = "otlp"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// One test: the sampler settings are process-wide.
    #[test]
    fn units_follow_the_remote_decision_or_the_ratio() {
        global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        activate();
        let sampled =
            context_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap();
        let unsampled =
            context_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap();
        assert!(context_from_traceparent("00-zz-00f067aa0ba902b7-01").is_none());
        // parentbased_traceidratio at 0: only what a caller sampled is traced.
        configure_sampling(true, 0.0);
        assert!(decide(Some(&sampled)));
        assert!(!decide(Some(&unsampled)));
        assert!(!decide(None));
        // always_on: everything, whatever the caller said.
        configure_sampling(false, 1.0);
        assert!(decide(Some(&unsampled)));
        assert!(decide(None));
        // A ratio draws: about 1 in 10 of 20,000.
        configure_sampling(true, 0.1);
        let n = (0..20_000).filter(|_| decide(None)).count();
        assert!((1_500..2_500).contains(&n), "{n}");
        // A unit's decision holds for everything it runs, and only there.
        assert_eq!(scoped_decision(), None);
        assert_eq!(sync_scope(false, scoped_decision), Some(false));
        configure_sampling(true, 1.0);
    }
}
