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
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header (and map key) holding the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Set once the binary installed the W3C propagator (traces exported).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Marks propagation as active (called by [`crate::init`] after it set the global
/// propagator; tests that install their own propagator call it too).
pub fn activate() {
    ACTIVE.store(true, Ordering::Release);
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
    if !is_active() {
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

/// Makes the trace of `traceparent` the parent of `span` (which must not have been
/// entered yet). Returns whether it did.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) -> bool {
    match context_from_traceparent(traceparent) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
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

/// Makes the context `headers` carry the parent of `span` (which must not have been
/// entered yet). Returns whether there was one.
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) -> bool {
    match extract(headers) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
}
