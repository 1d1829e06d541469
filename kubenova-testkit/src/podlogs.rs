//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: container logs for tests.
//!
//! Nothing runs in the testkit, so a test gives a container its log through an
//! **annotation on the Pod**, written with any client (a `kube::Client`, `kubectl`, the
//! testkit binary's API):
//!
//! | annotation | what it holds |
//! |---|---|
//! | `logs.testkit.kubenova.io/<container>` | the log of the running container |
//! | `previous-logs.testkit.kubenova.io/<container>` | the log of its previous (terminated) instance |
//!
//! The value is the log text, one line per `\n`. A line may start with an RFC 3339
//! timestamp and a space (`2026-01-01T00:00:01.5Z listening`): that is when the line was
//! written; a line without one was written when the Pod was created. Appending lines to
//! the annotation (a patch) is how a running container writes more; followers
//! (`follow=true`) get the appended lines as they come.
//!
//! The query behaves like the real API server's as far as tests need:
//! - `container`: required when the Pod has more than one container (400 `a container
//!   name must be specified for pod …, choose one of: [...]`); one that is not in
//!   `spec.containers`, `spec.initContainers` or `spec.ephemeralContainers` is 400
//!   `container … is not valid for pod …`; a container whose status says it is waiting is
//!   400 `container "…" in pod "…" is waiting to start: <reason>`.
//! - `previous=true` reads the previous instance; without one, 400 `previous terminated
//!   container "…" in pod "…" not found`.
//! - `tailLines` (≥ 0) keeps the last lines, then `sinceSeconds` (≥ 1) or `sinceTime`
//!   (RFC 3339; not both) drops older ones, then `limitBytes` (≥ 1) cuts the output;
//!   `timestamps=true` prefixes every line with its RFC 3339 time (nanoseconds) and a
//!   space. Out-of-range values are 422 `Invalid`, unparsable ones 400.
//! - `follow=true` streams: the lines above, then every line appended to the
//!   annotation, until the Pod is deleted, the container's status says it terminated,
//!   `limitBytes` is reached, or the client leaves.
//!
//! The response is `text/plain`, as from the real API server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{broadcast, mpsc};

use crate::error::{ApiError, ApiResult, Cause};
use crate::registry::ResourceType;
use crate::server::App;

/// Prefix of the annotation holding a container's log (`<prefix><container>`).
pub const LOG_ANNOTATION_PREFIX: &str = "logs.testkit.kubenova.io/";
/// Prefix of the annotation holding the log of a container's previous instance.
pub const PREVIOUS_LOG_ANNOTATION_PREFIX: &str = "previous-logs.testkit.kubenova.io/";

/// The parameters of a log request (`PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// `container`.
    pub container: Option<String>,
    /// `tailLines`.
    pub tail_lines: Option<usize>,
    /// `sinceSeconds`.
    pub since_seconds: Option<i64>,
    /// `sinceTime`.
    pub since_time: Option<OffsetDateTime>,
    /// `timestamps`.
    pub timestamps: bool,
    /// `previous`.
    pub previous: bool,
    /// `follow`.
    pub follow: bool,
    /// `limitBytes`.
    pub limit_bytes: Option<usize>,
}

fn flag(query: &HashMap<String, String>, key: &str) -> ApiResult<bool> {
    match query.get(key).map(String::as_str) {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid value {other:?} for {key}: expected true or false"
        ))),
    }
}

fn integer(query: &HashMap<String, String>, key: &str) -> ApiResult<Option<i64>> {
    query
        .get(key)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("invalid value {v:?} for {key}: not an integer"))
            })
        })
        .transpose()
}

impl LogOptions {
    /// Parses and validates the query of a log request, as the API server does.
    pub fn parse(query: &HashMap<String, String>, pod: &str) -> ApiResult<LogOptions> {
        let tail = integer(query, "tailLines")?;
        let since = integer(query, "sinceSeconds")?;
        let limit = integer(query, "limitBytes")?;
        let since_time = query
            .get("sinceTime")
            .map(|v| {
                OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid value {v:?} for sinceTime: not an RFC 3339 time"
                    ))
                })
            })
            .transpose()?;
        let mut causes = Vec::new();
        if let Some(t) = tail
            && t < 0
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                format!("Invalid value: {t}: must be greater than or equal to 0"),
                "tailLines",
            ));
        }
        if let Some(s) = since
            && s < 1
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                format!("Invalid value: {s}: must be greater than 0"),
                "sinceSeconds",
            ));
        }
        if let Some(l) = limit
            && l < 1
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                format!("Invalid value: {l}: must be greater than 0"),
                "limitBytes",
            ));
        }
        if since.is_some() && since_time.is_some() {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified",
                "",
            ));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("", "PodLogOptions", pod, causes));
        }
        Ok(LogOptions {
            container: query.get("container").filter(|c| !c.is_empty()).cloned(),
            tail_lines: tail.map(|t| usize::try_from(t).unwrap_or(usize::MAX)),
            since_seconds: since,
            since_time,
            timestamps: flag(query, "timestamps")?,
            previous: flag(query, "previous")?,
            follow: flag(query, "follow")?,
            limit_bytes: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
        })
    }

    /// The oldest time a line may have, if the options name one.
    fn since(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.since_time
            .or_else(|| self.since_seconds.map(|s| now - time::Duration::seconds(s)))
    }
}

/// One line of a container log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When it was written.
    pub time: OffsetDateTime,
    /// The text, without the newline.
    pub text: String,
}

/// Parses an annotation's log text: one line per `\n`, each optionally starting with an
/// RFC 3339 time and a space; lines without one get `default_time`.
pub fn parse_log(text: &str, default_time: OffsetDateTime) -> Vec<LogLine> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Vec::new();
    }
    text.split('\n')
        .map(|l| {
            if let Some((head, rest)) = l.split_once(' ')
                && let Ok(t) = OffsetDateTime::parse(head, &Rfc3339)
            {
                return LogLine {
                    time: t,
                    text: rest.to_owned(),
                };
            }
            LogLine {
                time: default_time,
                text: l.to_owned(),
            }
        })
        .collect()
}

fn strings(v: Option<&Value>, key: &str) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get(key).and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The container a request reads, checked against the Pod as the API server does.
pub fn container_of(pod: &Value, name: &str, opts: &LogOptions) -> ApiResult<String> {
    let spec = pod.get("spec");
    let containers = strings(spec.and_then(|s| s.get("containers")), "name");
    let init = strings(spec.and_then(|s| s.get("initContainers")), "name");
    let ephemeral = strings(spec.and_then(|s| s.get("ephemeralContainers")), "name");
    let container = match &opts.container {
        Some(c) => {
            if !containers.contains(c) && !init.contains(c) && !ephemeral.contains(c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.clone()
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            let mut m = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                m.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            return Err(ApiError::bad_request(m));
        }
    };
    if !opts.previous {
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(
                pod.pointer("/status/initContainerStatuses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
        for s in statuses {
            if s.get("name").and_then(Value::as_str) == Some(container.as_str())
                && let Some(w) = s.pointer("/state/waiting")
            {
                let reason = w
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("ContainerCreating");
                return Err(ApiError::bad_request(format!(
                    "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
                )));
            }
        }
    }
    Ok(container)
}

/// Every line of the container's log (or of its previous instance) in `pod`.
pub fn lines_of(
    pod: &Value,
    name: &str,
    container: &str,
    previous: bool,
) -> ApiResult<Vec<LogLine>> {
    let created = pod
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let prefix = if previous {
        PREVIOUS_LOG_ANNOTATION_PREFIX
    } else {
        LOG_ANNOTATION_PREFIX
    };
    let text = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(format!("{prefix}{container}")))
        .and_then(Value::as_str);
    match (text, previous) {
        (Some(t), _) => Ok(parse_log(t, created)),
        (None, false) => Ok(Vec::new()),
        (None, true) => Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        ))),
    }
}

/// One line as sent: with its time first when `timestamps`.
fn render_line(l: &LogLine, timestamps: bool) -> String {
    if timestamps {
        let t = l
            .time
            .format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
        format!("{t} {}\n", l.text)
    } else {
        format!("{}\n", l.text)
    }
}

/// The lines a request returns (before `limitBytes`): the last `tailLines`, then those
/// not older than `sinceSeconds` / `sinceTime`.
pub fn select(lines: &[LogLine], opts: &LogOptions, now: OffsetDateTime) -> Vec<LogLine> {
    let start = opts.tail_lines.map_or(0, |t| lines.len().saturating_sub(t));
    let since = opts.since(now);
    lines[start..]
        .iter()
        .filter(|l| since.is_none_or(|s| l.time >= s))
        .cloned()
        .collect()
}

/// Appends `line` to `out` within the byte budget; returns whether the budget is used up.
fn push_bounded(out: &mut Vec<u8>, line: &str, budget: &mut Option<usize>) -> bool {
    match budget {
        None => {
            out.extend_from_slice(line.as_bytes());
            false
        }
        Some(left) => {
            let take = line.len().min(*left);
            out.extend_from_slice(&line.as_bytes()[..take]);
            *left -= take;
            *left == 0
        }
    }
}

fn terminated(pod: &Value, container: &str) -> bool {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|s| {
            s.get("name").and_then(Value::as_str) == Some(container)
                && s.pointer("/state/terminated").is_some()
        })
}

/// Answers `GET …/pods/{name}/log` (the Pod type is `pods`).
pub fn respond(
    app: &Arc<App>,
    pods: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let opts = LogOptions::parse(query, name)?;
    // Subscribe before reading, so that a follower misses no change.
    let start = app.store.watch(pods, Some(ns), None)?;
    let pod = start
        .initial
        .iter()
        .find(|p| p.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
        .cloned()
        .ok_or_else(|| ApiError::not_found("", "pods", name))?;
    let container = container_of(&pod, name, &opts)?;
    let all = lines_of(&pod, name, &container, opts.previous)?;
    let now = OffsetDateTime::now_utc();
    let mut budget = opts.limit_bytes;
    let mut body = Vec::new();
    let mut full = false;
    for l in select(&all, &opts, now) {
        if push_bounded(&mut body, &render_line(&l, opts.timestamps), &mut budget) {
            full = true;
            break;
        }
    }
    let text_plain = [(header::CONTENT_TYPE, "text/plain")];
    if !opts.follow || opts.previous || full || terminated(&pod, &container) {
        return Ok((StatusCode::OK, text_plain, body).into_response());
    }
    // Follow: the lines so far, then what is appended to the annotation.
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let (ns, name) = (ns.to_owned(), name.to_owned());
    let mut live = start.rx;
    let start_rv = start.current_rv;
    tokio::spawn(async move {
        if !body.is_empty() && tx.send(Bytes::from(body)).await.is_err() {
            return;
        }
        let mut seen = all.len();
        loop {
            let ev = tokio::select! {
                _ = tx.closed() => return,
                r = live.recv() => match r {
                    Ok(ev) => ev,
                    // Fell behind the store's events: re-read the Pod below.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if ev.rv <= start_rv
                || !ev.group.is_empty()
                || ev.plural != "pods"
                || ev.namespace != ns
                || ev.object.pointer("/metadata/name").and_then(Value::as_str)
                    != Some(name.as_str())
            {
                continue;
            }
            if ev.etype == "DELETED" {
                return;
            }
            let Ok(lines) = lines_of(&ev.object, &name, &container, false) else {
                return;
            };
            let mut chunk = Vec::new();
            let mut full = false;
            for l in lines.iter().skip(seen) {
                if push_bounded(&mut chunk, &render_line(l, opts.timestamps), &mut budget) {
                    full = true;
                    break;
                }
            }
            seen = seen.max(lines.len());
            if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
            if full || terminated(&ev.object, &container) {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(format!("building the log stream: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    #[test]
    fn lines_take_their_time_or_the_pods() {
        let created = t("2026-01-01T00:00:00Z");
        let lines = parse_log(
            "2026-01-01T00:00:05.25Z first\nno time here\n2026-01-01T00:01:00Z  two spaces\n",
            created,
        );
        assert_eq!(
            lines,
            [
                LogLine {
                    time: t("2026-01-01T00:00:05.25Z"),
                    text: "first".into()
                },
                LogLine {
                    time: created,
                    text: "no time here".into()
                },
                LogLine {
                    time: t("2026-01-01T00:01:00Z"),
                    text: " two spaces".into()
                },
            ]
        );
        assert!(parse_log("", created).is_empty());
    }

    #[test]
    fn tail_then_since_then_bytes() {
        let lines = parse_log(
            "2026-01-01T00:00:00Z a\n2026-01-01T00:00:10Z b\n2026-01-01T00:00:20Z c\n2026-01-01T00:00:30Z d",
            OffsetDateTime::UNIX_EPOCH,
        );
        let now = t("2026-01-01T00:00:35Z");
        let q = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            LogOptions::parse(&m, "p").unwrap()
        };
        let texts = |o: &LogOptions| -> Vec<String> {
            select(&lines, o, now).into_iter().map(|l| l.text).collect()
        };
        assert_eq!(texts(&q(&[])), ["a", "b", "c", "d"]);
        assert_eq!(texts(&q(&[("tailLines", "2")])), ["c", "d"]);
        assert_eq!(texts(&q(&[("tailLines", "0")])), Vec::<String>::new());
        assert_eq!(texts(&q(&[("sinceSeconds", "20")])), ["c", "d"]);
        assert_eq!(
            texts(&q(&[("tailLines", "3"), ("sinceSeconds", "30")])),
            ["b", "c", "d"]
        );
        assert_eq!(texts(&q(&[("sinceTime", "2026-01-01T00:00:30Z")])), ["d"]);
        let mut out = Vec::new();
        let mut budget = Some(3);
        assert!(!push_bounded(&mut out, "ab", &mut budget));
        assert!(push_bounded(&mut out, "cdef", &mut budget));
        assert_eq!(out, b"abc");
        assert_eq!(render_line(&lines[0], true), "2026-01-01T00:00:00Z a\n");
    }

    #[test]
    fn bad_options_are_refused_like_the_api_server() {
        let q = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            LogOptions::parse(&m, "p")
        };
        assert_eq!(q(&[("tailLines", "-1")]).unwrap_err().code, 422);
        assert_eq!(q(&[("sinceSeconds", "0")]).unwrap_err().code, 422);
        assert_eq!(q(&[("limitBytes", "0")]).unwrap_err().code, 422);
        assert_eq!(
            q(&[("sinceSeconds", "5"), ("sinceTime", "2026-01-01T00:00:00Z")])
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(q(&[("tailLines", "x")]).unwrap_err().code, 400);
        assert_eq!(q(&[("follow", "yes")]).unwrap_err().code, 400);
        assert_eq!(q(&[("sinceTime", "yesterday")]).unwrap_err().code, 400);
    }

    #[test]
    fn containers_are_chosen_like_the_api_server() {
        let pod = json!({
            "metadata": {"name": "p", "annotations": {"logs.testkit.kubenova.io/web": "hi"}},
            "spec": {"containers": [{"name": "web"}, {"name": "proxy"}], "initContainers": [{"name": "init"}]},
            "status": {"containerStatuses": [{"name": "proxy", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]},
        });
        let opts = |c: Option<&str>| LogOptions {
            container: c.map(str::to_owned),
            ..LogOptions::default()
        };
        let e = container_of(&pod, "p", &opts(None)).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [web proxy] or one of the init containers: [init]"
        );
        assert_eq!(container_of(&pod, "p", &opts(Some("web"))).unwrap(), "web");
        assert_eq!(
            container_of(&pod, "p", &opts(Some("init"))).unwrap(),
            "init"
        );
        assert_eq!(
            container_of(&pod, "p", &opts(Some("db")))
                .unwrap_err()
                .message,
            "container db is not valid for pod p"
        );
        assert_eq!(
            container_of(&pod, "p", &opts(Some("proxy")))
                .unwrap_err()
                .message,
            "container \"proxy\" in pod \"p\" is waiting to start: ImagePullBackOff"
        );
        assert_eq!(lines_of(&pod, "p", "web", false).unwrap().len(), 1);
        assert!(lines_of(&pod, "p", "proxy", false).unwrap().is_empty());
        assert_eq!(
            lines_of(&pod, "p", "web", true).unwrap_err().message,
            "previous terminated container \"web\" in pod \"p\" not found"
        );
    }
}
