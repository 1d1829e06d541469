//! # kubenova-telemetry
//!
//! One logging convention for every KubeNova binary (`kubenova-manager`,
//! `kubenova-operator`, `kubenova`, `kubenova-testkit`, `kubenova-demo`): each calls
//! [`init`] once at start, with the [`LogArgs`] it flattens into its command line.
//!
//! - **Where**: stderr (stdout is the command's output).
//! - **Format**: `--log-format json|text`, else `KUBENOVA_LOG_FORMAT=json|text`, else
//!   human-readable text when stderr is a terminal and JSON lines when it is not (a file,
//!   a pipe, a container's log).
//! - **Colours**: ANSI escape codes only in text on a terminal, and never when `NO_COLOR`
//!   is set to a non-empty value.
//! - **Timestamps**: RFC 3339 in UTC with microseconds, `2026-01-31T12:00:00.123456Z`.
//! - **Filter**: `KUBENOVA_LOG` (a `tracing` filter such as `info` or
//!   `info,kubenova::access=warn`); when it is unset or empty, `RUST_LOG`; else the
//!   binary's default. An invalid filter or format is an error naming the variable.
//!
//! A JSON line is `{"timestamp","level","fields":{"message",…},"target","span"?,"spans"?}`
//! (the `tracing-subscriber` JSON shape; tools such as the demo find a line by
//! `fields.message`).
//!
//! **Traces**: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set, spans are also exported over OTLP (see [`traces`]); log lines written inside a
//! span then carry its `trace_id` and `span_id` (JSON: two more keys; text: two more
//! `key=value` pairs at the end). Without an endpoint nothing of OpenTelemetry is installed.
//!
//! Libraries log through `tracing` only; they may use [`propagation`] (without this
//! crate's default features) to carry trace context across processes.
//!
//! ```
//! use kubenova_telemetry::{Environment, LogFormat, LogSettings};
//! // What a binary whose stderr is a pipe does without any variable set:
//! let env = Environment { stderr_is_terminal: false, ..Environment::default() };
//! let s = LogSettings::decide(None, &env, "info").unwrap();
//! assert_eq!((s.format, s.ansi, s.filter.as_str()), (LogFormat::Json, false, "info"));
//! ```

#[cfg(feature = "otlp")]
mod layers;
pub mod propagation;
#[cfg(feature = "test-support")]
pub mod test_support;
#[cfg(feature = "otlp")]
pub mod traces;

use std::fmt;
use std::io::IsTerminal as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The variable holding the log filter.
pub const FILTER_VAR: &str = "KUBENOVA_LOG";
/// The filter variable honoured when [`FILTER_VAR`] is unset or empty.
pub const FALLBACK_FILTER_VAR: &str = "RUST_LOG";
/// The variable choosing the log format (`json` or `text`).
pub const FORMAT_VAR: &str = "KUBENOVA_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: `2026-01-31T12:00:00.123456Z  INFO target: message key=value`.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `json` or `text` (any case, surrounding spaces ignored).
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => None,
        }
    }

    /// `json` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The logging option every binary flattens into its command line (global: it may stand
/// before or after a subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log format on stderr: `text` or `json` (one object per line). Default:
    /// `KUBENOVA_LOG_FORMAT`, else text on a terminal and JSON otherwise. The filter is
    /// `KUBENOVA_LOG` (else `RUST_LOG`), e.g. `info,kubenova::access=warn`.
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
}

/// A logging variable with an unusable value.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The format variable is neither `json` nor `text`.
    #[error("{var}={value:?} is not a log format: use json or text")]
    Format {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The filter does not parse.
    #[error(
        "{var}={value:?} is not a log filter ({reason}); write e.g. info, warn or info,kubenova::access=warn"
    )]
    Filter {
        /// The variable (or `default` for the binary's own default).
        var: &'static str,
        /// Its value.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// An `OTEL_*` variable with a value the trace export cannot use.
    #[error("{var}={value:?}: {reason}")]
    Otel {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
}

/// The inputs of the decision: the logging variables and whether stderr is a terminal.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `KUBENOVA_LOG`.
    pub kubenova_log: Option<String>,
    /// `RUST_LOG`.
    pub rust_log: Option<String>,
    /// `KUBENOVA_LOG_FORMAT`.
    pub log_format: Option<String>,
    /// `NO_COLOR` set to a non-empty value.
    pub no_color: bool,
    /// Whether stderr is a terminal.
    pub stderr_is_terminal: bool,
    /// The `OTEL_*` variables (the trace export; see [`traces`]).
    pub otel: std::collections::BTreeMap<String, String>,
}

impl Environment {
    /// This process's variables and stderr.
    pub fn current() -> Environment {
        let var = |name: &str| std::env::var(name).ok();
        Environment {
            kubenova_log: var(FILTER_VAR),
            rust_log: var(FALLBACK_FILTER_VAR),
            log_format: var(FORMAT_VAR),
            no_color: var("NO_COLOR").is_some_and(|v| !v.is_empty()),
            stderr_is_terminal: std::io::stderr().is_terminal(),
            otel: std::env::vars()
                .filter(|(k, _)| k.starts_with("OTEL_"))
                .collect(),
        }
    }
}

/// What [`init`] installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The format.
    pub format: LogFormat,
    /// Whether ANSI escape codes (colours) are written.
    pub ansi: bool,
    /// The filter.
    pub filter: String,
    /// Where the filter came from: [`FILTER_VAR`], [`FALLBACK_FILTER_VAR`] or `default`.
    pub filter_source: &'static str,
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl LogSettings {
    /// Decides format, colours and filter (see the crate documentation): the flag wins over
    /// `KUBENOVA_LOG_FORMAT`, which wins over the terminal test; `KUBENOVA_LOG` wins over
    /// `RUST_LOG`, which wins over `default_filter`.
    pub fn decide(
        flag: Option<LogFormat>,
        env: &Environment,
        default_filter: &str,
    ) -> Result<LogSettings, TelemetryError> {
        let format = match (flag, non_empty(&env.log_format)) {
            (Some(f), _) => f,
            (None, Some(v)) => LogFormat::parse(v).ok_or_else(|| TelemetryError::Format {
                var: FORMAT_VAR,
                value: v.to_string(),
            })?,
            (None, None) if env.stderr_is_terminal => LogFormat::Text,
            (None, None) => LogFormat::Json,
        };
        let (filter, filter_source) = match (non_empty(&env.kubenova_log), non_empty(&env.rust_log))
        {
            (Some(f), _) => (f, FILTER_VAR),
            (None, Some(f)) => (f, FALLBACK_FILTER_VAR),
            (None, None) => (default_filter, "default"),
        };
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(filter) {
            return Err(TelemetryError::Filter {
                var: filter_source,
                value: filter.to_string(),
                reason: e.to_string(),
            });
        }
        Ok(LogSettings {
            format,
            ansi: format == LogFormat::Text && env.stderr_is_terminal && !env.no_color,
            filter: filter.to_string(),
            filter_source,
        })
    }
}

/// RFC 3339 timestamps in UTC with microseconds: `2026-01-31T12:00:00.123456Z`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rfc3339Utc;

impl FormatTime for Rfc3339Utc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str(&rfc3339_utc(time::OffsetDateTime::now_utc()))
    }
}

/// `at` in UTC as RFC 3339 with microseconds (the timestamp of every log line; also the
/// way to log a time as a field).
pub fn rfc3339_utc(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    at.format(&format).unwrap_or_else(|_| at.to_string())
}

/// What [`init`] installed; keep it until the binary ends: dropping it (or
/// [`Telemetry::shutdown`]) exports the spans still buffered.
#[must_use = "dropping the guard stops the trace export"]
pub struct Telemetry {
    /// The logging decision.
    pub settings: LogSettings,
    /// The trace export, when the `OTEL_*` variables ask for one.
    #[cfg(feature = "otlp")]
    pub traces: Option<traces::TraceSettings>,
    #[cfg(feature = "otlp")]
    exporter: Option<traces::Exporter>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Telemetry");
        d.field("settings", &self.settings);
        #[cfg(feature = "otlp")]
        d.field("traces", &self.traces);
        d.finish()
    }
}

impl Telemetry {
    /// Exports the spans still buffered and stops the export (waits at most the OTLP
    /// timeout). Logging stays as it is.
    pub fn shutdown(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(mut e) = self.exporter.take() {
            e.shutdown();
        }
    }
}

/// Installs the global subscriber of a binary by the convention (see the crate
/// documentation); `default_filter` applies when neither `KUBENOVA_LOG` nor `RUST_LOG` is
/// set, and `service` is the trace service name unless `OTEL_SERVICE_NAME` says otherwise.
/// Returns what it installed. A second call (a subscriber is already set) installs
/// nothing.
pub fn init(
    args: &LogArgs,
    default_filter: &str,
    service: &str,
) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (dispatch, telemetry) = build(
        args,
        default_filter,
        service,
        &Environment::current(),
        std::io::stderr,
    )?;
    let _already_set = dispatch.try_init();
    Ok(telemetry)
}

/// What [`init`] installs, without installing it: the subscriber writing to `writer`
/// (stderr for the binaries), decided from `env` (whose `otel` map holds the `OTEL_*`
/// variables that turn traces on; [`Environment::current`] reads this process's). For
/// benchmarks and for embedders that scope a subscriber (`tracing::dispatcher::set_default`).
///
/// ```
/// use kubenova_telemetry::{Environment, LogArgs, build};
/// let (dispatch, telemetry) =
///     build(&LogArgs::default(), "info", "example", &Environment::default(), std::io::sink).unwrap();
/// let _scope = tracing::dispatcher::set_default(&dispatch);
/// tracing::info!("written to the sink");
/// # drop(telemetry);
/// ```
pub fn build<W>(
    args: &LogArgs,
    default_filter: &str,
    service: &str,
    env: &Environment,
    writer: W,
) -> Result<(tracing::Dispatch, Telemetry), TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let settings = LogSettings::decide(args.log_format, env, default_filter)?;
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&settings.filter)
        .map_err(|e| TelemetryError::Filter {
            var: settings.filter_source,
            value: settings.filter.clone(),
            reason: e.to_string(),
        })?;
    #[cfg(feature = "otlp")]
    let trace_settings = traces::TraceSettings::from_vars(|k| env.otel.get(k).cloned(), service)?;
    #[cfg(not(feature = "otlp"))]
    let _ = service;
    #[cfg(feature = "otlp")]
    let exporter = trace_settings
        .as_ref()
        .map(traces::Exporter::start)
        .transpose()?;
    #[cfg(feature = "otlp")]
    let tracer = exporter.as_ref().map(traces::Exporter::tracer);
    let (format, ansi) = (settings.format, settings.ansi);
    let telemetry = Telemetry {
        settings,
        #[cfg(feature = "otlp")]
        traces: trace_settings,
        #[cfg(feature = "otlp")]
        exporter,
    };
    #[cfg(feature = "otlp")]
    let Some(tracer) = tracer else {
        return Ok((plain(filter, format, ansi, writer), telemetry));
    };
    #[cfg(not(feature = "otlp"))]
    return Ok((plain(filter, format, ansi, writer), telemetry));
    #[cfg(feature = "otlp")]
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        // One global filter (the log filter, plus the trace filter's spans inside sampled
        // units), the log layer unfiltered behind it, and the trace layer told only of
        // sampled units (see `layers`). Per-span attributes are what the spans' fields
        // say: no busy/idle times, thread or source location.
        let gate = layers::Gate {
            log: filter,
            trace: trace_filter(),
        };
        let base = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_timer(Rfc3339Utc);
        let fmt_layer = match format {
            LogFormat::Json => {
                let format = tracing_subscriber::fmt::format()
                    .json()
                    .with_timer(Rfc3339Utc);
                tracing_subscriber::Layer::boxed(base.json().with_ansi(false).event_format(
                    ids::WithTraceIds {
                        inner: format,
                        json: true,
                    },
                ))
            }
            LogFormat::Text => {
                let format = tracing_subscriber::fmt::format()
                    .with_timer(Rfc3339Utc)
                    .with_ansi(ansi);
                tracing_subscriber::Layer::boxed(base.with_ansi(ansi).event_format(
                    ids::WithTraceIds {
                        inner: format,
                        json: false,
                    },
                ))
            }
        };
        let otel_layer = layers::SampledOnly {
            inner: tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_location(false)
                .with_target(false),
            trace: trace_filter(),
        };
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::registry()
                .with(gate)
                .with(fmt_layer)
                .with(otel_layer),
        );
        Ok((dispatch, telemetry))
    }
}

/// The subscriber while traces are off: the plain one, one global filter, nothing else
/// on the path.
fn plain<W>(
    filter: tracing_subscriber::EnvFilter,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> tracing::Dispatch
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(Rfc3339Utc);
    match format {
        LogFormat::Json => tracing::Dispatch::new(builder.json().with_ansi(false).finish()),
        LogFormat::Text => tracing::Dispatch::new(builder.with_ansi(ansi).finish()),
    }
}

/// What becomes a span in the exported traces, whatever the log filter says: the
/// binaries' own spans (request, agent channel, reconcile: `info`; store calls: `debug`
/// under `kubenova::store`) and the Kubernetes client's request spans (`debug` under
/// `kube_client`); `info` log lines inside a span become its events (SQL statements do
/// not: `sqlx` at `warn`).
#[cfg(feature = "otlp")]
fn trace_filter() -> tracing_subscriber::filter::Targets {
    use tracing::Level;
    tracing_subscriber::filter::Targets::new()
        .with_default(Level::INFO)
        .with_target("kubenova::store", Level::DEBUG)
        .with_target("kube_client", Level::DEBUG)
        .with_target("sqlx", Level::WARN)
}

#[cfg(feature = "otlp")]
mod ids {
    //! Trace and span ids on log lines written inside an exported span.
    use std::fmt;
    use tracing::{Event, Subscriber};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    /// Used only while traces are exported (otherwise spans hold no OpenTelemetry data).
    pub(crate) struct WithTraceIds<F> {
        pub(crate) inner: F,
        pub(crate) json: bool,
    }

    impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            // An unsampled unit's spans hold no trace data: no lookup.
            let ids = (crate::propagation::scoped_decision() != Some(false))
                .then(|| ctx.lookup_current())
                .flatten()
                .and_then(|span| {
                    let ext = span.extensions();
                    let data = ext.get::<tracing_opentelemetry::OtelData>()?;
                    Some((data.trace_id()?, data.span_id()?))
                });
            let Some((trace, span)) = ids.filter(|(t, _)| *t != opentelemetry::TraceId::INVALID)
            else {
                return self.inner.format_event(ctx, writer, event);
            };
            let mut line = String::new();
            // The text format carries its own colour setting (`Format::with_ansi`).
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            let body = line.trim_end_matches('\n');
            match body.strip_suffix('}') {
                Some(open) if self.json => {
                    writeln!(
                        writer,
                        "{open},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}"
                    )
                }
                _ => writeln!(writer, "{body} trace_id={trace} span_id={span}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(terminal: bool) -> Environment {
        Environment {
            stderr_is_terminal: terminal,
            ..Environment::default()
        }
    }

    #[test]
    fn text_with_colours_on_a_terminal_json_elsewhere() {
        let s = LogSettings::decide(None, &env(true), "info").unwrap();
        assert_eq!((s.format, s.ansi), (LogFormat::Text, true));
        let s = LogSettings::decide(None, &env(false), "info").unwrap();
        assert_eq!((s.format, s.ansi), (LogFormat::Json, false));
    }

    #[test]
    fn the_flag_wins_over_the_variable_which_wins_over_the_terminal() {
        let mut e = env(true);
        e.log_format = Some("JSON".into());
        let s = LogSettings::decide(None, &e, "info").unwrap();
        assert_eq!((s.format, s.ansi), (LogFormat::Json, false));
        let s = LogSettings::decide(Some(LogFormat::Text), &e, "info").unwrap();
        assert_eq!((s.format, s.ansi), (LogFormat::Text, true));
        // Text asked for where stderr is not a terminal: no escape codes.
        let mut e = env(false);
        e.log_format = Some("text".into());
        let s = LogSettings::decide(None, &e, "info").unwrap();
        assert_eq!((s.format, s.ansi), (LogFormat::Text, false));
    }

    #[test]
    fn no_color_turns_colours_off() {
        let mut e = env(true);
        e.no_color = true;
        let s = LogSettings::decide(None, &e, "info").unwrap();
        assert_eq!((s.format, s.ansi), (LogFormat::Text, false));
    }

    #[test]
    fn kubenova_log_then_rust_log_then_the_default() {
        let mut e = env(false);
        assert_eq!(
            LogSettings::decide(None, &e, "warn").unwrap().filter_source,
            "default"
        );
        e.rust_log = Some("debug".into());
        let s = LogSettings::decide(None, &e, "warn").unwrap();
        assert_eq!((s.filter.as_str(), s.filter_source), ("debug", "RUST_LOG"));
        e.kubenova_log = Some("info,kubenova::access=warn".into());
        let s = LogSettings::decide(None, &e, "warn").unwrap();
        assert_eq!(
            (s.filter.as_str(), s.filter_source),
            ("info,kubenova::access=warn", "KUBENOVA_LOG")
        );
        // Empty counts as unset.
        e.kubenova_log = Some(" ".into());
        assert_eq!(
            LogSettings::decide(None, &e, "warn").unwrap().filter_source,
            "RUST_LOG"
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        let mut e = env(false);
        e.log_format = Some("xml".into());
        let err = LogSettings::decide(None, &e, "info")
            .unwrap_err()
            .to_string();
        assert!(err.contains("KUBENOVA_LOG_FORMAT=\"xml\""), "{err}");
        assert!(err.contains("json or text"), "{err}");
        let mut e = env(false);
        e.kubenova_log = Some("info,[".into());
        let err = LogSettings::decide(None, &e, "info")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("KUBENOVA_LOG=\"info,[\""), "{err}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = time::macros::datetime!(2026-12-08 7:19:27.5 +02:00);
        assert_eq!(rfc3339_utc(at), "2026-12-08T05:19:27.500000Z");
        let parsed = time::OffsetDateTime::parse(
            &rfc3339_utc(at),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(parsed, at);
    }
}
