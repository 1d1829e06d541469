//! OpenTelemetry trace export over OTLP, configured by the standard `OTEL_*` variables.
//!
//! Traces are exported when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not `true`,
//! `OTEL_TRACES_EXPORTER` not `none`); otherwise nothing is installed and spans cost what a
//! disabled `tracing` span costs.
//!
//! | variable | meaning |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | where spans go, as is (`http://collector:4318/v1/traces`) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; HTTP appends `/v1/traces` |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (default) or `grpc` |
//! | `OTEL_SERVICE_NAME` | the service name (default: the binary's name) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | more resource attributes, `k=v,k2=v2` |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` (default), `always_on`, `always_off`, `traceidratio`, `parentbased_always_off`, `parentbased_traceidratio` |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*` | as the specification says |

use crate::TelemetryError;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (`http/protobuf`).
    HttpProtobuf,
    /// gRPC (`grpc`).
    Grpc,
}

/// The SDK's sampler: the decision a unit of work took where it entered the process
/// ([`crate::propagation::scope`]) wins, so a request sampled there is sampled whole and no
/// ratio is drawn twice; spans outside any unit (background work) follow the configured
/// sampler.
#[derive(Debug, Clone)]
struct ScopedSampler(Sampler);

impl opentelemetry_sdk::trace::ShouldSample for ScopedSampler {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry::trace::SamplingResult {
        use opentelemetry::trace::{SamplingDecision, SamplingResult, TraceContextExt as _};
        match crate::propagation::scoped_decision() {
            Some(sampled) => SamplingResult {
                decision: if sampled {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: parent_context
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            },
            None => {
                self.0
                    .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
            }
        }
    }
}

impl TraceSettings {
    /// Whether the sampler follows a remote parent's decision, and the ratio of traces
    /// started here.
    fn sampling(&self) -> (bool, f64) {
        let name = self.sampler.0.as_str();
        let base = name.strip_prefix("parentbased_").unwrap_or(name);
        let ratio = match base {
            "always_off" => 0.0,
            "traceidratio" => self.sampler.1,
            _ => 1.0,
        };
        (name.starts_with("parentbased_"), ratio)
    }

    /// The SDK sampler these settings name.
    /// (A ratio of 1 samples everything and 0 nothing, as `always_on` / `always_off`.)
    fn sdk_sampler(&self) -> Sampler {
        let (parent_based, ratio) = self.sampling();
        let base = Sampler::TraceIdRatioBased(ratio);
        if parent_based {
            Sampler::ParentBased(Box::new(base))
        } else {
            base
        }
    }

    /// The URL spans are sent to: the traces endpoint as given, or the base endpoint with
    /// `/v1/traces` appended for HTTP (gRPC takes the base as is), as the specification says.
    pub fn url(&self) -> String {
        match (self.endpoint.0, self.protocol) {
            ("OTEL_EXPORTER_OTLP_ENDPOINT", OtlpProtocol::HttpProtobuf) => {
                format!("{}/v1/traces", self.endpoint.1.trim_end_matches('/'))
            }
            _ => self.endpoint.1.clone(),
        }
    }
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The endpoint variable that is set, and its value.
    pub endpoint: (&'static str, String),
    /// The transport.
    pub protocol: OtlpProtocol,
    /// The service name.
    pub service_name: String,
    /// The sampler (`OTEL_TRACES_SAMPLER`, default `parentbased_always_on`) and its ratio
    /// (`OTEL_TRACES_SAMPLER_ARG`, default 1) for the ratio samplers.
    pub sampler: (String, f64),
}

const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

fn otel(var: &'static str, value: &str, reason: &str) -> TelemetryError {
    TelemetryError::Otel {
        var,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

impl TraceSettings {
    /// Reads the variables through `var`; `None` when traces are off. Values the
    /// specification does not allow (an unknown protocol or sampler, a sampler ratio that
    /// is not in 0..=1) are errors naming the variable, not silently replaced.
    ///
    /// ```
    /// use kubenova_telemetry::traces::{OtlpProtocol, TraceSettings};
    /// let env = |k: &str| match k {
    ///     "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4317".to_string()),
    ///     "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_string()),
    ///     _ => None,
    /// };
    /// let s = TraceSettings::from_vars(env, "kubenova-manager").unwrap().unwrap();
    /// assert_eq!((s.protocol, s.service_name.as_str()), (OtlpProtocol::Grpc, "kubenova-manager"));
    /// assert!(TraceSettings::from_vars(|_| None, "x").unwrap().is_none());
    /// ```
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<TraceSettings>, TelemetryError> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(v) = get("OTEL_TRACES_EXPORTER") {
            match v.as_str() {
                "none" => return Ok(None),
                "otlp" => {}
                _ => return Err(otel("OTEL_TRACES_EXPORTER", &v, "use otlp or none")),
            }
        }
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
            (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
            (None, None) => return Ok(None),
        };
        if !(endpoint.1.starts_with("http://") || endpoint.1.starts_with("https://")) {
            return Err(otel(
                endpoint.0,
                &endpoint.1,
                "not an http:// or https:// URL; write e.g. http://otel-collector:4318",
            ));
        }
        let protocol = match (
            get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v)),
            get("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v)),
        ) {
            (Some((name, v)), _) | (None, Some((name, v))) => match v.as_str() {
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                "grpc" => OtlpProtocol::Grpc,
                _ => {
                    return Err(otel(
                        name,
                        &v,
                        "use http/protobuf or grpc (http/json is not supported)",
                    ));
                }
            },
            (None, None) => OtlpProtocol::HttpProtobuf,
        };
        let sampler = get("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
        if !SAMPLERS.contains(&sampler.as_str()) {
            return Err(otel(
                "OTEL_TRACES_SAMPLER",
                &sampler,
                &format!("use one of {}", SAMPLERS.join(", ")),
            ));
        }
        let mut ratio = 1.0;
        if sampler.ends_with("traceidratio") {
            let arg = get("OTEL_TRACES_SAMPLER_ARG").unwrap_or_else(|| "1.0".into());
            ratio = match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    return Err(otel(
                        "OTEL_TRACES_SAMPLER_ARG",
                        &arg,
                        "the sampling ratio is a number from 0 to 1, e.g. 0.1",
                    ));
                }
            };
        }
        let service_name = get("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string());
        Ok(Some(TraceSettings {
            endpoint,
            protocol,
            service_name,
            sampler: (sampler, ratio),
        }))
    }
}

/// The installed exporter: flushes and stops when shut down or dropped.
pub(crate) struct Exporter {
    pub(crate) provider: SdkTracerProvider,
    /// The runtime the gRPC transport runs on (its own, so that it works whatever runtime,
    /// if any, the binary uses, and outlives the binary's runtime during the last flush).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporter {
    pub(crate) fn start(s: &TraceSettings) -> Result<Exporter, TelemetryError> {
        let failed = |e: &dyn std::fmt::Display| otel(s.endpoint.0, &s.endpoint.1, &e.to_string());
        let (exporter, runtime) = match s.protocol {
            OtlpProtocol::HttpProtobuf => (
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(s.url())
                    .build()
                    .map_err(|e| failed(&e))?,
                None,
            ),
            OtlpProtocol::Grpc => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otlp-grpc")
                    .enable_all()
                    .build()
                    .map_err(|e| failed(&e))?;
                let exporter = {
                    let _entered = rt.enter();
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(s.url())
                        .build()
                        .map_err(|e| failed(&e))?
                };
                (exporter, Some(rt))
            }
        };
        let resource = Resource::builder()
            .with_service_name(s.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_sampler(ScopedSampler(s.sdk_sampler()))
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let (parent_based, ratio) = s.sampling();
        crate::propagation::configure_sampling(parent_based, ratio);
        crate::propagation::activate();
        Ok(Exporter { provider, runtime })
    }

    pub(crate) fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("kubenova")
    }

    /// Exports what is buffered and stops (waits at most the exporter's timeout).
    pub(crate) fn shutdown(&mut self) {
        let _ = self.provider.shutdown();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(TraceSettings::from_vars(vars(&[]), "m").unwrap().is_none());
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        assert!(TraceSettings::from_vars(vars(&on), "m").unwrap().is_some());
        let mut off = on.to_vec();
        off.push(("OTEL_SDK_DISABLED", "TRUE"));
        assert!(TraceSettings::from_vars(vars(&off), "m").unwrap().is_none());
        let mut off = on.to_vec();
        off.push(("OTEL_TRACES_EXPORTER", "none"));
        assert!(TraceSettings::from_vars(vars(&off), "m").unwrap().is_none());
    }

    #[test]
    fn the_traces_variables_win_and_http_protobuf_is_the_default() {
        let s = TraceSettings::from_vars(
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://t:4318/v1/traces",
                ),
                ("OTEL_SERVICE_NAME", "edge-manager"),
            ]),
            "kubenova-manager",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.endpoint,
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://t:4318/v1/traces".to_string()
            )
        );
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.service_name, "edge-manager");
        assert_eq!(s.url(), "http://t:4318/v1/traces");
        let base = TraceSettings::from_vars(
            vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            "m",
        )
        .unwrap()
        .unwrap();
        assert_eq!(base.url(), "http://c:4318/v1/traces");
        let s = TraceSettings::from_vars(
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ]),
            "m",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        let err = |pairs: &[(&str, &str)]| {
            let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
            all.extend_from_slice(pairs);
            TraceSettings::from_vars(vars(&all), "m")
                .unwrap_err()
                .to_string()
        };
        let e = err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
        assert!(
            e.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\""),
            "{e}"
        );
        let e = err(&[("OTEL_TRACES_SAMPLER", "sometimes")]);
        assert!(e.contains("parentbased_always_on"), "{e}");
        let e = err(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert!(e.starts_with("OTEL_TRACES_SAMPLER_ARG=\"2\""), "{e}");
        let s = TraceSettings::from_vars(
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ]),
            "m",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.sampler, ("parentbased_traceidratio".to_string(), 0.01));
        assert!(format!("{:?}", s.sdk_sampler()).contains("TraceIdRatioBased(0.01)"));
        let e = err(&[("OTEL_TRACES_EXPORTER", "jaeger")]);
        assert!(e.contains("otlp or none"), "{e}");
        let e = TraceSettings::from_vars(
            vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
            "m",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("http://"), "{e}");
    }
}
