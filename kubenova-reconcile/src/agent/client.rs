//! The typed HTTP client of the agent routes.

use std::fmt;
use std::time::Duration;

use kubenova_api::agent::{
    AgentAnswer, AgentRequests, AnswerReply, DesiredState, Heartbeat, HeartbeatReply, StatusReply,
    StatusReport,
};
use kubenova_api::model::UsageRecord;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tracing::Instrument as _;

/// Timeout of the short agent requests (heartbeat, status report).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Extra time the client allows a long-poll beyond its `waitSeconds`.
pub const LONG_POLL_GRACE: Duration = Duration::from_secs(15);
/// Connect timeout of every agent request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What an agent request failed with, classified for the retry policy
/// ([`AgentError::class`]).
///
/// The token is never part of an error (nor of any log line).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration cannot work (bad URL, plain `http://` to a non-loopback host,
    /// unreadable CA, missing Secret key). Not retried by [`AgentClient`]; fix the Secret.
    #[error("agent configuration: {0}")]
    Config(String),
    /// The manager could not be reached (DNS, connect, TLS, timeout, connection reset).
    #[error("manager unreachable: {0}")]
    Unreachable(String),
    /// The manager answered 5xx or 429: retried with backoff.
    #[error("manager error {status}: {code} {message}{}", request_id_suffix(.request_id))]
    Server {
        /// HTTP status.
        status: u16,
        /// KN code, e.g. `KN-503`.
        code: String,
        /// What the manager said.
        message: String,
        /// The manager's request id, for its logs.
        request_id: Option<String>,
    },
    /// 401/403: the agent credential is missing, wrong, rotated or revoked. Retried
    /// slowly; re-run the bootstrap to mint a new credential.
    #[error(
        "manager refused the agent credential ({status} {code}: {message}); re-run the operator bootstrap to rotate the credential in Secret kubenova-system/kubenova-agent{}",
        request_id_suffix(.request_id)
    )]
    Unauthorized {
        /// HTTP status (401 or 403).
        status: u16,
        /// KN code, e.g. `KN-401`.
        code: String,
        /// What the manager said.
        message: String,
        /// The manager's request id.
        request_id: Option<String>,
    },
    /// Any other 4xx: the request itself is wrong (a bug or a version skew between the
    /// operator and the manager).
    #[error("manager rejected the request {status}: {code} {message}{}", request_id_suffix(.request_id))]
    Rejected {
        /// HTTP status.
        status: u16,
        /// KN code.
        code: String,
        /// What the manager said.
        message: String,
        /// The manager's request id.
        request_id: Option<String>,
    },
    /// A success answer that is not the expected JSON (version skew).
    #[error("manager answer could not be decoded: {0}")]
    Decode(String),
}

fn request_id_suffix(id: &Option<String>) -> String {
    id.as_deref()
        .map(|r| format!(" (requestId {r})"))
        .unwrap_or_default()
}

/// How a failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Unreachable / 5xx / 429: exponential backoff with jitter.
    Transient,
    /// 401 / 403: a credential problem; retried slowly.
    Credential,
    /// Other 4xx, undecodable answers, configuration: a bug; retried at the backoff cap.
    Permanent,
}

impl AgentError {
    /// The retry class of this error.
    ///
    /// ```
    /// use kubenova_reconcile::agent::{AgentError, RetryClass};
    /// let e = AgentError::Unreachable("connection refused".into());
    /// assert_eq!(e.class(), RetryClass::Transient);
    /// ```
    pub fn class(&self) -> RetryClass {
        match self {
            AgentError::Unreachable(_) | AgentError::Server { .. } => RetryClass::Transient,
            AgentError::Unauthorized { .. } => RetryClass::Credential,
            AgentError::Config(_) | AgentError::Rejected { .. } | AgentError::Decode(_) => {
                RetryClass::Permanent
            }
        }
    }

    /// Short label for metrics and logs: `unreachable`, `server`, `unauthorized`,
    /// `rejected`, `decode`, `config`.
    pub fn label(&self) -> &'static str {
        match self {
            AgentError::Config(_) => "config",
            AgentError::Unreachable(_) => "unreachable",
            AgentError::Server { .. } => "server",
            AgentError::Unauthorized { .. } => "unauthorized",
            AgentError::Rejected { .. } => "rejected",
            AgentError::Decode(_) => "decode",
        }
    }

    /// The HTTP status the manager answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AgentError::Server { status, .. }
            | AgentError::Unauthorized { status, .. }
            | AgentError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the manager could not be reached at all or failed (unreachable / 5xx):
    /// the cases in which the operator falls back to publishing through the cluster.
    pub fn manager_down(&self) -> bool {
        self.class() == RetryClass::Transient
    }
}

/// The KN error body of the manager.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    request_id: Option<String>,
}

/// HTTP client of the agent routes (`/api/v1/agent/*`), authenticated with the
/// per-cluster agent credential.
///
/// TLS is verified against the public web PKI roots plus the optional CA of the agent
/// Secret; plain `http://` is accepted only for loopback addresses (tests, port
/// forwards). There is no way to skip verification.
///
/// ```
/// use kubenova_reconcile::agent::AgentClient;
/// let c = AgentClient::new("https://manager.example.com", "kna_secret", None).unwrap();
/// assert_eq!(c.base_url(), "https://manager.example.com/");
/// assert!(!format!("{c:?}").contains("kna_secret"));
/// assert!(AgentClient::new("http://manager.example.com", "t", None).is_err());
/// assert!(AgentClient::new("http://127.0.0.1:8080", "t", None).is_ok());
/// ```
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: Url,
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl AgentClient {
    /// A client for the manager at `manager_url` (a base URL, possibly with a path
    /// prefix), authenticating with `token`; `ca_pem` adds a CA bundle to the trusted
    /// roots.
    pub fn new(manager_url: &str, token: &str, ca_pem: Option<&str>) -> Result<Self, AgentError> {
        let mut base = Url::parse(manager_url.trim()).map_err(|e| {
            AgentError::Config(format!(
                "manager URL {manager_url:?} is not a URL ({e}); expected https://host[:port]"
            ))
        })?;
        match base.scheme() {
            "https" => {}
            "http" if is_loopback(&base) => {}
            "http" => {
                return Err(AgentError::Config(format!(
                    "manager URL {manager_url:?} is plain http to a non-loopback host; use https://"
                )));
            }
            other => {
                return Err(AgentError::Config(format!(
                    "manager URL {manager_url:?} has scheme {other:?}; use https://"
                )));
            }
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        if token.trim().is_empty() {
            return Err(AgentError::Config(
                "the agent token is empty; re-run the operator bootstrap".into(),
            ));
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                AgentError::Config(
                    "the agent token contains characters not allowed in a header".into(),
                )
            })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("kubenova-operator/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem.filter(|p| !p.trim().is_empty()) {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                AgentError::Config(format!("the manager CA is not a PEM bundle: {e}"))
            })?;
            if certs.is_empty() {
                return Err(AgentError::Config(
                    "the manager CA holds no PEM certificate".into(),
                ));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| AgentError::Config(format!("building the HTTP client: {e}")))?;
        Ok(AgentClient { http, base })
    }

    /// The manager base URL (always ending in `/`).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    fn url(&self, path: &str) -> Result<Url, AgentError> {
        self.base
            .join(path)
            .map_err(|e| AgentError::Config(format!("joining {path}: {e}")))
    }

    /// `POST /api/v1/agent/heartbeat` (the first one after start is the hello).
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, AgentError> {
        let req = self
            .http
            .post(self.url("api/v1/agent/heartbeat")?)
            .timeout(REQUEST_TIMEOUT)
            .json(hb);
        send("POST /api/v1/agent/heartbeat", req).await
    }

    /// `GET /api/v1/agent/desired?cursor=N&waitSeconds=S`: the long-poll of the desired
    /// state. Returns early when the desired state changes after `cursor`.
    pub async fn desired(&self, cursor: i64, wait: Duration) -> Result<DesiredState, AgentError> {
        let mut url = self.url("api/v1/agent/desired")?;
        url.query_pairs_mut()
            .append_pair("cursor", &cursor.to_string())
            .append_pair("waitSeconds", &wait.as_secs().to_string());
        let req = self.http.get(url).timeout(wait + LONG_POLL_GRACE);
        send("GET /api/v1/agent/desired", req).await
    }

    /// `GET /api/v1/agent/requests?waitSeconds=S`: the long-poll of the logs and events
    /// requests of this cluster. Returns as soon as there is one, or empty after `wait`.
    pub async fn requests(&self, wait: Duration) -> Result<AgentRequests, AgentError> {
        let mut url = self.url("api/v1/agent/requests")?;
        url.query_pairs_mut()
            .append_pair("waitSeconds", &wait.as_secs().to_string());
        let req = self.http.get(url).timeout(wait + LONG_POLL_GRACE);
        send("GET /api/v1/agent/requests", req).await
    }

    /// `POST /api/v1/agent/answers`: an answer, or one chunk of a followed log. A request
    /// the manager no longer waits for is [`AgentError::Rejected`] with status 404.
    pub async fn answer(&self, answer: &AgentAnswer) -> Result<AnswerReply, AgentError> {
        let req = self
            .http
            .post(self.url("api/v1/agent/answers")?)
            .timeout(REQUEST_TIMEOUT)
            .json(answer);
        send("POST /api/v1/agent/answers", req).await
    }

    /// `POST /api/v1/agent/status`: one batch of per-object reports (at most 1000).
    pub async fn report_status(&self, report: &StatusReport) -> Result<StatusReply, AgentError> {
        let req = self
            .http
            .post(self.url("api/v1/agent/status")?)
            .timeout(REQUEST_TIMEOUT)
            .json(report);
        send("POST /api/v1/agent/status", req).await
    }
}

impl AgentClient {
    /// `POST /api/v1/agent/usage`: one batch of hourly usage records of this cluster
    /// (204). Idempotent per (cluster, tenant, project, hour): a re-sent hour replaces the
    /// stored one.
    pub async fn upload_usage(&self, records: &[UsageRecord]) -> Result<(), AgentError> {
        let req = self
            .http
            .post(self.url("api/v1/agent/usage")?)
            .timeout(REQUEST_TIMEOUT)
            .json(records);
        exchange("POST /api/v1/agent/usage", req).await.map(|_| ())
    }
}

fn error_body(status: StatusCode, bytes: &[u8]) -> ErrorBody {
    serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
        code: format!("HTTP-{}", status.as_u16()),
        message: String::from_utf8_lossy(bytes).chars().take(300).collect(),
        request_id: None,
    })
}

async fn send<T: DeserializeOwned>(
    route: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<T, AgentError> {
    let bytes = exchange(route, req).await?;
    serde_json::from_slice(&bytes).map_err(|e| AgentError::Decode(e.to_string()))
}

/// Sends `req` in a client span named by its route, with the span's trace context in the
/// `traceparent` header (the manager's handling continues the trace); the body of a
/// success, else the classified error.
async fn exchange(
    route: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<bytes::Bytes, AgentError> {
    let span = tracing::info_span!(
        "agent request",
        otel.name = route,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
    );
    let run = async {
        let mut trace = HeaderMap::new();
        kubenova_telemetry::propagation::inject_current(&mut trace);
        let resp = req.headers(trace).send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_success() {
            return resp.bytes().await.map_err(transport);
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        Err(classify(status, error_body(status, &bytes)))
    };
    let res = run.instrument(span.clone()).await;
    if res.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    res
}

fn classify(status: StatusCode, body: ErrorBody) -> AgentError {
    let (status, code, message, request_id) =
        (status.as_u16(), body.code, body.message, body.request_id);
    match status {
        401 | 403 => AgentError::Unauthorized {
            status,
            code,
            message,
            request_id,
        },
        429 | 500..=599 => AgentError::Server {
            status,
            code,
            message,
            request_id,
        },
        _ => AgentError::Rejected {
            status,
            code,
            message,
            request_id,
        },
    }
}

fn transport(e: reqwest::Error) -> AgentError {
    // `without_url` keeps query strings out of logs; the token is a header and never
    // part of a reqwest error.
    let e = e.without_url();
    if e.is_decode() {
        AgentError::Decode(e.to_string())
    } else if e.is_builder() {
        AgentError::Config(e.to_string())
    } else {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        AgentError::Unreachable(msg)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let b = || ErrorBody::default();
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, b()).class(),
            RetryClass::Credential
        );
        assert_eq!(
            classify(StatusCode::FORBIDDEN, b()).class(),
            RetryClass::Credential
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, b()).class(),
            RetryClass::Transient
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, b()).class(),
            RetryClass::Transient
        );
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, b()).class(),
            RetryClass::Permanent
        );
    }

    #[test]
    fn urls_are_checked() {
        for bad in [
            "ftp://x",
            "http://10.0.0.1",
            "not a url",
            "http://manager.svc:80",
        ] {
            assert!(
                matches!(AgentClient::new(bad, "t", None), Err(AgentError::Config(_))),
                "{bad}"
            );
        }
        for good in [
            "https://m.example.com/prefix",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            assert!(AgentClient::new(good, "t", None).is_ok(), "{good}");
        }
        let c = AgentClient::new("https://m.example.com/prefix", "t", None).unwrap();
        assert_eq!(
            c.url("api/v1/agent/heartbeat").unwrap().as_str(),
            "https://m.example.com/prefix/api/v1/agent/heartbeat"
        );
        assert!(matches!(
            AgentClient::new("https://m", "t", Some("not pem")),
            Err(AgentError::Config(_))
        ));
        assert!(matches!(
            AgentClient::new("https://m", " ", None),
            Err(AgentError::Config(_))
        ));
    }
}
