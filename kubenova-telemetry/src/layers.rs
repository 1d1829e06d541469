//! The traces-on subscriber's two adapters: one global filter for logs and traces, and
//! the trace layer limited to the units of work sampled in.
//!
//! A per-layer filter (`Layer::with_filter`) on the log layer and the trace layer would
//! offer every span and event to both filters and look up each span's per-layer state on
//! every enter, exit and record, whatever the sampling; with one global filter an
//! unsampled request costs what it costs with traces off, plus the sampling decision.

use crate::propagation;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Whether the current unit of work is traced: its sampling decision, and `true` outside
/// any unit (background work is traced by the trace filter alone).
fn sampled_in() -> bool {
    propagation::scoped_decision().unwrap_or(true)
}

/// The global filter: what the log filter enables, plus the spans the trace filter wants
/// inside units of work sampled in (e.g. `debug` store spans of a traced request, which
/// the log filter at `info` leaves out). Events follow the log filter only.
pub(crate) struct Gate {
    pub(crate) log: EnvFilter,
    pub(crate) trace: Targets,
}

impl Gate {
    fn traced_span(&self, meta: &Metadata<'_>) -> bool {
        meta.is_span() && self.trace.would_enable(meta.target(), meta.level())
    }
}

impl<S> Layer<S> for Gate
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        let log = <EnvFilter as Layer<S>>::register_callsite(&self.log, meta);
        if !log.is_always() && self.traced_span(meta) {
            // Asked at every span: the answer depends on the unit's sampling.
            Interest::sometimes()
        } else {
            log
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, cx: Context<'_, S>) -> bool {
        <EnvFilter as Layer<S>>::enabled(&self.log, meta, cx)
            || (self.traced_span(meta) && sampled_in())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let log = <EnvFilter as Layer<S>>::max_level_hint(&self.log);
        let trace = <Targets as Layer<S>>::max_level_hint(&self.trace);
        match (log, trace) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        }
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        self.log.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        self.log.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        self.log.on_enter(id, cx);
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        self.log.on_exit(id, cx);
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        self.log.on_close(id, cx);
    }
}

/// The trace layer, told only of what the trace filter wants inside units of work sampled
/// in: a span of an unsampled unit never reaches it (so it holds no trace data), and
/// neither do the enters, exits, records and events of such a unit.
pub(crate) struct SampledOnly<L> {
    pub(crate) inner: L,
    pub(crate) trace: Targets,
}

impl<S, L> Layer<S> for SampledOnly<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        let meta = attrs.metadata();
        if sampled_in() && self.trace.would_enable(meta.target(), meta.level()) {
            self.inner.on_new_span(attrs, id, cx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        if sampled_in() {
            self.inner.on_record(id, values, cx);
        }
    }

    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, cx: Context<'_, S>) {
        if sampled_in() {
            self.inner.on_follows_from(span, follows, cx);
        }
    }

    fn on_event(&self, event: &Event<'_>, cx: Context<'_, S>) {
        let meta = event.metadata();
        if sampled_in() && self.trace.would_enable(meta.target(), meta.level()) {
            self.inner.on_event(event, cx);
        }
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        if sampled_in() {
            self.inner.on_enter(id, cx);
        }
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        if sampled_in() {
            self.inner.on_exit(id, cx);
        }
    }

    // Always: a span carries its trace data until closed, wherever it is closed.
    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        self.inner.on_close(id, cx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, cx: Context<'_, S>) {
        self.inner.on_id_change(old, new, cx);
    }

    // The trace layer answers the downcast through which `OpenTelemetrySpanExt` finds a
    // span's trace context; a wrapper that did not forward it would hide every context.
    #[allow(unsafe_code)]
    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: the wrapped layer's own answer for its own type ids, unchanged (as
        // `tracing-subscriber`'s wrapping layers forward it).
        unsafe { self.inner.downcast_raw(id) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Stands for the trace layer: the names of the spans and events it was told of.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("span {}", attrs.metadata().name()));
        }
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("event {}", event.metadata().target()));
        }
    }

    /// The log lines written.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn unsampled_units_reach_only_the_log_and_sampled_ones_the_trace_layer_too() {
        let seen = Seen::default();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(Gate {
                log: EnvFilter::new("info"),
                trace: crate::trace_filter(),
            })
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || writer.clone()),
            )
            .with(SampledOnly {
                inner: seen.clone(),
                trace: crate::trace_filter(),
            });
        let dispatch = tracing::Dispatch::new(subscriber);
        let _scope = tracing::dispatcher::set_default(&dispatch);
        // The wrapped layer stays reachable by downcast (how span contexts are found).
        assert!(dispatch.downcast_ref::<Seen>().is_some());
        let unit = || {
            let request = tracing::info_span!("request");
            let _r = request.enter();
            let store = tracing::debug_span!(target: "kubenova::store", "store");
            let _s = store.enter();
            tracing::debug!(target: "kubenova::store", "not a log line at info");
            tracing::info!(target: "kubenova::access", "logged");
        };
        crate::propagation::in_unit(Some(false), unit);
        assert!(seen.0.lock().unwrap().is_empty(), "{:?}", seen.0);
        crate::propagation::in_unit(Some(true), unit);
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["span request", "span store", "event kubenova::access"],
        );
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains("not a log line"), "{text}");
        // Outside any unit (background work) the trace filter alone decides.
        seen.0.lock().unwrap().clear();
        let _bg = tracing::info_span!("background").entered();
        let _hidden = tracing::trace_span!("too fine").entered();
        assert_eq!(*seen.0.lock().unwrap(), ["span background"]);
    }
}
