//! The requests loop: the logs and Kubernetes Events of apps, read in the cluster for the
//! manager (`GET /api/v1/agent/requests`, `POST /api/v1/agent/answers`).
//!
//! Every request names the app (its NovaApp, KubeVela Application and workloads share its
//! name), its record id and its project namespace, all from the manager's records. Before
//! reading anything the operator checks that the namespace holds the app's NovaApp, with
//! the app's id in [`LABEL_ID`] and a namespace that is the project namespace of the
//! NovaApp's tenant and project; otherwise nothing is read. Then only that namespace is
//! read:
//!
//! - **logs**: the pods labelled `app.oam.dev/name=<app>,app.oam.dev/component=<component>`
//!   (KubeVela's labels on its workloads' pods), the oldest [`MAX_LOG_PODS`] of them, each
//!   through `pods/log` with the request's `tailLines`, `sinceSeconds`, `previous`, the
//!   container asked for (else the pod's `kubectl.kubernetes.io/default-container`, else
//!   its first container) and timestamps;
//! - **events**: the namespace's core Events about the app's pods, the owners of those
//!   pods, its Deployments (labelled `app.oam.dev/name=<app>`) and their ReplicaSets, the
//!   workloads named after its components, its KubeVela Application and its NovaApp.
//!
//! Everything is bounded at the source: each line and message is cut
//! ([`kubenova_api::agent::bound_text`]), a long line is never held whole in memory, at
//! most [`MAX_ANSWER_LINES`] lines and [`MAX_EVENTS`] events are kept (the newest), and
//! an answer's serialized size stays under [`MAX_ANSWER_BYTES`]. A followed log streams
//! chunks of new lines (every 250 ms) for `followSeconds` at most, asks whether it is
//! still wanted when it has nothing to send, and stops as soon as the manager says the
//! request is gone or full. At most 8 requests are read at once, plus 8 followed logs.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncBufRead, AsyncBufReadExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ListParams, LogParams};
use kubenova_api::agent::{
    AgentAnswer, AgentRequest, AgentRequestKind, AnswerError, FOLLOW_SECONDS, FollowEnd, LABEL_ID,
    LogQuery, MAX_ANSWER_BYTES, MAX_ANSWER_LINES, MAX_ANSWER_TEXT_BYTES, MAX_EVENT_MESSAGE_BYTES,
    MAX_EVENTS, MAX_LOG_LINE_BYTES, MAX_LOG_PODS, MAX_NAME_BYTES, bound_parts, bound_text,
};
use kubenova_api::crd::NovaApp;
use kubenova_api::model::{AppEvent, EventObject, LogLine, PodLog, project_namespace};
use kubenova_api::validate::dns_label_problem;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{AgentError, Shared, sleep_or_stop, stopped};

/// Label KubeVela puts on every workload (and pod template) of an Application: its name.
pub const LABEL_APP_NAME: &str = "app.oam.dev/name";
/// Label KubeVela puts on every workload (and pod template) of a component: its name.
pub const LABEL_APP_COMPONENT: &str = "app.oam.dev/component";
/// Annotation naming a pod's default container (as `kubectl logs` reads it).
pub const ANNOTATION_DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// Requests read at once (followed logs apart).
const MAX_CONCURRENT: usize = 8;
/// Followed logs at once.
const MAX_FOLLOWS: usize = 8;
/// How often a followed log's new lines are sent.
const FOLLOW_FLUSH: Duration = Duration::from_millis(250);
/// A followed log with nothing new asks whether it is still wanted this often.
const FOLLOW_PROBE: Duration = Duration::from_secs(5);
/// Most bytes read from one pod's log for one answer (`limitBytes`).
const READ_LIMIT_BYTES: i64 = 16 * 1024 * 1024;
/// Room for the timestamp the API server puts before each line.
const TIMESTAMP_ROOM: usize = 64;
/// Most Events read from a namespace for one answer.
const MAX_EVENTS_SCANNED: usize = 5000;
/// Page size of the lists.
const LIST_PAGE: u32 = 500;
/// Room kept in an answer for everything but its lines or events.
const ANSWER_SLACK: usize = 16 * 1024;
/// Longest a request is read before it is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Workload kinds KubeVela names after their component.
const WORKLOAD_KINDS: [&str; 5] = ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"];

/// Polls for requests and answers each in its own task, until shutdown.
pub(super) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let follows = Arc::new(Semaphore::new(MAX_FOLLOWS));
    let mut tasks = JoinSet::new();
    let mut attempt = 0u32;
    let mut told_unsupported = false;
    let wait = shared
        .config
        .poll_wait
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        while tasks.try_join_next().is_some() {}
        let res = tokio::select! {
            r = shared.client.requests(wait) => r,
            _ = stopped(&mut shutdown) => break,
        };
        shared.metrics().request("requests", &res);
        match res {
            Ok(batch) => {
                attempt = 0;
                for req in batch.requests {
                    tasks.spawn(handle(
                        shared.clone(),
                        req,
                        slots.clone(),
                        follows.clone(),
                        shutdown.clone(),
                    ));
                }
            }
            Err(e) => {
                let delay = if e.status() == Some(404) {
                    if !told_unsupported {
                        tracing::warn!(
                            "the manager does not serve logs and events requests (an older version?); asking again from time to time"
                        );
                        told_unsupported = true;
                    }
                    shared.config.backoff_max
                } else {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "polling for logs and events requests failed");
                    shared.config.retry_delay(e.class(), attempt)
                };
                if sleep_or_stop(delay, &mut shutdown).await {
                    break;
                }
            }
        }
    }
    // Followed logs end on the same shutdown signal; give them a moment to say so.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

async fn handle(
    shared: Arc<Shared>,
    req: AgentRequest,
    slots: Arc<Semaphore>,
    follows: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) {
    tracing::debug!(request_id = %req.id, kind = req.kind.as_str(), app = %req.app, namespace = %req.namespace, "answering a request");
    let follow = req.kind == AgentRequestKind::Logs && req.logs.as_ref().is_some_and(|l| l.follow);
    if follow {
        match follows.try_acquire_owned() {
            Ok(_permit) => follow_log(&shared, &req, shutdown).await,
            Err(_) => {
                let mut a = AgentAnswer::new(req.id, 0);
                a.done = true;
                a.error = Some(AnswerError {
                    field: None,
                    message: format!(
                        "the operator follows {MAX_FOLLOWS} logs already, the most it follows at once; retry when one ends"
                    ),
                });
                post(&shared, &a).await;
            }
        }
        return;
    }
    let Ok(_slot) = slots.acquire_owned().await else {
        return;
    };
    let answer = answer_request(&shared.kube, &req).await;
    post(&shared, &answer).await;
}

/// What became of a posted answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posted {
    /// Accepted: go on.
    Go,
    /// The request is gone, full, or the manager keeps failing: stop.
    Stop,
}

/// Posts an answer, retrying a failing manager a few times.
async fn post(shared: &Shared, a: &AgentAnswer) -> Posted {
    for attempt in 1..=3u32 {
        let res = shared.client.answer(a).await;
        shared.metrics().request("answers", &res);
        match res {
            Ok(reply) if reply.stop => return Posted::Stop,
            Ok(_) => return Posted::Go,
            Err(e) if e.status() == Some(404) => {
                tracing::debug!(request_id = %a.request_id, "the manager no longer waits for this answer");
                return Posted::Stop;
            }
            Err(e @ (AgentError::Unreachable(_) | AgentError::Server { .. })) if attempt < 3 => {
                tracing::debug!(request_id = %a.request_id, error = %e, attempt, "posting an answer failed; retrying");
                tokio::time::sleep(shared.config.retry_delay(e.class(), attempt)).await;
            }
            Err(e) => {
                tracing::warn!(request_id = %a.request_id, error = %e, "posting an answer failed");
                return Posted::Stop;
            }
        }
    }
    Posted::Stop
}

// ---------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------

/// Reads what `request` asks for (logs that are not followed, or events) and returns its
/// complete answer (`done`), within the bounds of the agent channel. A failure to read
/// is in the answer's `error`, never a reason not to answer.
///
/// ```no_run
/// # async fn demo(client: kube::Client, request: kubenova_api::agent::AgentRequest) {
/// let answer = kubenova_reconcile::agent::answer_request(&client, &request).await;
/// assert!(answer.done);
/// assert!(answer.check().is_ok());
/// # }
/// ```
pub async fn answer_request(kube: &Client, request: &AgentRequest) -> AgentAnswer {
    let mut a = AgentAnswer::new(request.id, 0);
    a.done = true;
    let read = async {
        match request.kind {
            AgentRequestKind::Logs => read_logs(kube, request, &mut a).await,
            AgentRequestKind::Events => read_events(kube, request, &mut a).await,
        }
    };
    let res = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(failure(format!(
            "reading the cluster took more than {} s",
            READ_TIMEOUT.as_secs()
        ))),
    };
    if let Err(e) = res {
        a = AgentAnswer::new(request.id, 0);
        a.done = true;
        a.error = Some(e);
    }
    a
}

fn failure(message: String) -> AnswerError {
    AnswerError {
        field: None,
        message: bound_text(&message, MAX_ANSWER_TEXT_BYTES),
    }
}

/// The API server's words for a failed call, bounded.
fn kube_message(what: &str, e: &kube::Error) -> String {
    let detail = match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    };
    bound_text(&format!("{what}: {detail}"), MAX_ANSWER_TEXT_BYTES)
}

/// Checks that the request names the app's NovaApp in its project namespace. `Ok(None)`:
/// read on; `Ok(Some(remark))`: nothing to read (the app is not in the cluster yet).
async fn check_scope(kube: &Client, req: &AgentRequest) -> Result<Option<String>, AnswerError> {
    for (field, v) in [("app", &req.app), ("namespace", &req.namespace)] {
        if let Some(p) = dns_label_problem(v) {
            return Err(failure(format!("the request's {field} {v:?}: {p}")));
        }
    }
    let apps: Api<NovaApp> = Api::namespaced(kube.clone(), &req.namespace);
    let na = apps.get_opt(&req.app).await.map_err(|e| {
        failure(kube_message(
            &format!("reading NovaApp {}/{}", req.namespace, req.app),
            &e,
        ))
    })?;
    let Some(na) = na else {
        return Ok(Some(format!(
            "app {} is not in namespace {} of the cluster yet; nothing to read",
            req.app, req.namespace
        )));
    };
    let id = na
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ID))
        .cloned()
        .unwrap_or_default();
    if id != req.app_id.to_string() {
        return Err(failure(format!(
            "NovaApp {}/{} is not app {} (its {LABEL_ID} is {id:?}); nothing was read",
            req.namespace, req.app, req.app_id
        )));
    }
    let home = project_namespace(&na.spec.tenant, &na.spec.project);
    if home != req.namespace {
        return Err(failure(format!(
            "namespace {} is not the project namespace of app {} ({home}); nothing was read",
            req.namespace, req.app
        )));
    }
    Ok(None)
}

/// The pods of the app (of one component), oldest first: at most [`MAX_LOG_PODS`] and
/// whether there were more.
async fn app_pods(
    kube: &Client,
    req: &AgentRequest,
    component: Option<&str>,
    max: usize,
) -> Result<(Vec<Pod>, bool), AnswerError> {
    let mut selector = format!("{LABEL_APP_NAME}={}", req.app);
    if let Some(c) = component {
        selector.push_str(&format!(",{LABEL_APP_COMPONENT}={c}"));
    }
    let api: Api<Pod> = Api::namespaced(kube.clone(), &req.namespace);
    let mut lp = ListParams::default().labels(&selector).limit(LIST_PAGE);
    let mut pods = Vec::new();
    loop {
        let page = api
            .list(&lp)
            .await
            .map_err(|e| failure(kube_message(&format!("listing pods {selector}"), &e)))?;
        pods.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() && pods.len() < 10 * LIST_PAGE as usize => {
                lp.continue_token = Some(c)
            }
            _ => break,
        }
    }
    pods.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let more = pods.len() > max;
    pods.truncate(max);
    Ok((pods, more))
}

fn containers_of(pod: &Pod) -> Vec<String> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .map(|c| c.name.clone())
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| c.name.clone()),
        )
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| c.name.clone()),
        )
        .collect()
}

/// The container to read in `pod`: the one asked for, else the pod's default container,
/// else its first.
fn container_for(pod: &Pod, wanted: Option<&str>) -> Result<String, String> {
    let all = containers_of(pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Some(w) = wanted {
        return if all.iter().any(|c| c == w) {
            Ok(w.to_string())
        } else {
            Err(format!(
                "pod {name} has no container {w}; its containers: {}",
                all.join(", ")
            ))
        };
    }
    let default = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_DEFAULT_CONTAINER))
        .filter(|d| all.contains(d));
    match default {
        Some(d) => Ok(d.clone()),
        None => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone())
            .ok_or_else(|| format!("pod {name} has no containers")),
    }
}

/// The pods to read and the containers to read in them, or why there is nothing to read.
struct Targets {
    /// `(pod, container)` to read.
    read: Vec<(String, String)>,
    /// Every pod chosen, with its container or why it cannot be read.
    pods: Vec<PodLog>,
    /// More pods than [`MAX_LOG_PODS`].
    more: bool,
    /// A remark for the user.
    message: String,
}

async fn log_targets(
    kube: &Client,
    req: &AgentRequest,
    q: &LogQuery,
) -> Result<Targets, AnswerError> {
    if let Some(p) = dns_label_problem(&q.component) {
        return Err(failure(format!(
            "the request's component {:?}: {p}",
            q.component
        )));
    }
    if let Some(c) = &q.container
        && let Some(p) = dns_label_problem(c)
    {
        return Err(AnswerError {
            field: Some("container".into()),
            message: p,
        });
    }
    let mut t = Targets {
        read: Vec::new(),
        pods: Vec::new(),
        more: false,
        message: String::new(),
    };
    if let Some(remark) = check_scope(kube, req).await? {
        t.message = remark;
        return Ok(t);
    }
    let (pods, more) = app_pods(kube, req, Some(&q.component), MAX_LOG_PODS).await?;
    t.more = more;
    if pods.is_empty() {
        t.message = format!(
            "component {} has no pods in namespace {} (labels {LABEL_APP_NAME}={}, {LABEL_APP_COMPONENT}={}); see the app's events",
            q.component, req.namespace, req.app, q.component
        );
        return Ok(t);
    }
    if let Some(c) = &q.container
        && !pods.iter().any(|p| containers_of(p).contains(c))
    {
        let all: BTreeSet<String> = pods.iter().flat_map(containers_of).collect();
        return Err(AnswerError {
            field: Some("container".into()),
            message: format!(
                "the pods of component {} have no container {c:?}; their containers: {}",
                q.component,
                all.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    for p in &pods {
        let pod = p.metadata.name.clone().unwrap_or_default();
        match container_for(p, q.container.as_deref()) {
            Ok(c) => {
                t.read.push((pod.clone(), c.clone()));
                t.pods.push(PodLog {
                    pod,
                    container: c,
                    lines: 0,
                    error: None,
                });
            }
            Err(e) => t.pods.push(PodLog {
                pod,
                container: q.container.clone().unwrap_or_default(),
                lines: 0,
                error: Some(e),
            }),
        }
    }
    if more {
        t.message = format!(
            "component {} has more than {MAX_LOG_PODS} pods; the oldest {MAX_LOG_PODS} were read",
            q.component
        );
    }
    Ok(t)
}

fn log_params(q: &LogQuery, container: &str, follow: bool) -> LogParams {
    LogParams {
        container: Some(container.to_string()),
        follow,
        limit_bytes: (!follow).then_some(READ_LIMIT_BYTES),
        pretty: false,
        previous: q.previous,
        since_seconds: q
            .since_seconds
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        since_time: None,
        tail_lines: q.tail_lines.map(i64::from),
        timestamps: true,
    }
}

async fn read_logs(
    kube: &Client,
    req: &AgentRequest,
    a: &mut AgentAnswer,
) -> Result<(), AnswerError> {
    let q = req
        .logs
        .as_ref()
        .ok_or_else(|| failure("a logs request without its query".into()))?;
    let mut t = log_targets(kube, req, q).await?;
    a.message = t.message.clone();
    a.truncated = t.more;
    let api: Api<Pod> = Api::namespaced(kube.clone(), &req.namespace);
    let reads = t.read.iter().map(|(pod, container)| {
        let api = api.clone();
        async move { read_pod(&api, pod, container, q).await }
    });
    let results = futures::future::join_all(reads).await;
    let mut lines = Vec::new();
    for ((pod, _), r) in t.read.iter().zip(results) {
        match r {
            Ok((l, cut)) => {
                lines.extend(l);
                a.truncated |= cut;
            }
            Err(e) => {
                if let Some(p) = t.pods.iter_mut().find(|p| &p.pod == pod) {
                    p.error = Some(e);
                }
            }
        }
    }
    // Oldest first across pods (each pod's lines stay in their order).
    lines.sort_by_key(|l| l.time);
    a.pods = Some(std::mem::take(&mut t.pods));
    a.lines = lines;
    fit_lines(a);
    Ok(())
}

/// The newest lines of one pod's log, within the bounds of one answer.
#[derive(Default)]
struct Tail {
    lines: VecDeque<LogLine>,
    bytes: usize,
    dropped: bool,
}

fn cost(l: &LogLine) -> usize {
    serde_json::to_vec(l).map_or(usize::MAX / 2, |v| v.len() + 1)
}

impl Tail {
    fn push(&mut self, l: LogLine) {
        self.bytes += cost(&l);
        self.lines.push_back(l);
        while self.bytes > MAX_ANSWER_BYTES || self.lines.len() > MAX_ANSWER_LINES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= cost(&old),
                None => break,
            }
            self.dropped = true;
        }
    }
}

async fn read_pod(
    api: &Api<Pod>,
    pod: &str,
    container: &str,
    q: &LogQuery,
) -> Result<(Vec<LogLine>, bool), String> {
    let stream = api
        .log_stream(pod, &log_params(q, container, false))
        .await
        .map_err(|e| kube_message(&format!("reading the log of {pod}/{container}"), &e))?;
    let mut reader = BoundedLines::new(stream, MAX_LOG_LINE_BYTES + TIMESTAMP_ROOM);
    let mut tail = Tail::default();
    let mut read = 0usize;
    while let Some((head, total)) = reader.next().await.map_err(|e| {
        bound_text(
            &format!("reading the log of {pod}/{container}: {e}"),
            MAX_ANSWER_TEXT_BYTES,
        )
    })? {
        read = read.saturating_add(total + 1);
        tail.push(log_line(&head, total, pod, container));
    }
    let cut = tail.dropped || i64::try_from(read).unwrap_or(i64::MAX) >= READ_LIMIT_BYTES;
    Ok((tail.lines.into(), cut))
}

/// A line as the API server sent it (`<RFC 3339 time> <text>`, of which `head` is the
/// beginning and `total` the length), bounded.
pub(crate) fn log_line(head: &[u8], total: usize, pod: &str, container: &str) -> LogLine {
    let s = String::from_utf8_lossy(head);
    let s = s.strip_suffix('\r').unwrap_or(&s);
    let stamped = s.split_once(' ').and_then(|(ts, rest)| {
        OffsetDateTime::parse(ts, &Rfc3339)
            .ok()
            .map(|t| (t, ts.len(), rest))
    });
    let (time, text, text_total) = match stamped {
        Some((t, ts_len, rest)) => (Some(t), rest, total.saturating_sub(ts_len + 1)),
        None => match OffsetDateTime::parse(s, &Rfc3339) {
            // An empty line with its timestamp.
            Ok(t) => (Some(t), "", 0),
            Err(_) => (None, s, total),
        },
    };
    LogLine {
        time,
        pod: bound_text(pod, MAX_NAME_BYTES),
        container: bound_text(container, MAX_NAME_BYTES),
        text: bound_parts(text, text_total, MAX_LOG_LINE_BYTES),
    }
}

/// Keeps the newest lines of an answer that fit its bounds; sets `truncated` when some
/// were dropped, and each pod's line count.
fn fit_lines(a: &mut AgentAnswer) {
    let lines = std::mem::take(&mut a.lines);
    let base = serde_json::to_vec(a).map_or(0, |v| v.len()) + ANSWER_SLACK;
    let mut room = MAX_ANSWER_BYTES.saturating_sub(base);
    let mut keep = 0;
    for l in lines.iter().rev() {
        let c = cost(l);
        if c > room || keep == MAX_ANSWER_LINES {
            break;
        }
        room -= c;
        keep += 1;
    }
    if keep < lines.len() {
        a.truncated = true;
    }
    a.lines = lines.into_iter().rev().take(keep).collect();
    a.lines.reverse();
    if let Some(pods) = &mut a.pods {
        for p in pods.iter_mut() {
            p.lines = a
                .lines
                .iter()
                .filter(|l| l.pod == p.pod && l.container == p.container)
                .count() as u32;
        }
    }
}

/// Reads lines from an [`AsyncBufRead`] without ever holding more than `max` bytes of one
/// line: each line comes as its first `max` bytes and its whole length.
pub(crate) struct BoundedLines<R> {
    inner: R,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> BoundedLines<R> {
    pub(crate) fn new(inner: R, max: usize) -> Self {
        Self { inner, max }
    }

    /// The next line (without its newline): its head and its length; `None` at the end.
    pub(crate) async fn next(&mut self) -> std::io::Result<Option<(Vec<u8>, usize)>> {
        let mut head = Vec::new();
        let mut total = 0usize;
        let mut any = false;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return Ok(any.then_some((head, total)));
            }
            any = true;
            let (part, used, end) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            let room = self.max.saturating_sub(head.len());
            head.extend_from_slice(&part[..part.len().min(room)]);
            total = total.saturating_add(part.len());
            self.inner.consume_unpin(used);
            if end {
                return Ok(Some((head, total)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Followed logs
// ---------------------------------------------------------------------------------

/// What a followed pod's reader sends.
enum Followed {
    Line(LogLine),
    Failed(String),
}

async fn follow_log(shared: &Shared, req: &AgentRequest, mut shutdown: watch::Receiver<bool>) {
    let Some(q) = req.logs.as_ref() else {
        return;
    };
    let seconds = q.follow_seconds.clamp(1, FOLLOW_SECONDS);
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds));
    let mut seq = 0u32;
    let mut first = AgentAnswer::new(req.id, seq);
    let targets = match log_targets(&shared.kube, req, q).await {
        Ok(t) => t,
        Err(e) => {
            first.done = true;
            first.error = Some(e);
            post(shared, &first).await;
            return;
        }
    };
    first.pods = Some(targets.pods.clone());
    first.message = targets.message.clone();
    first.truncated = targets.more;
    if targets.read.is_empty() {
        first.done = true;
        first.end = Some(FollowEnd::Ended);
        post(shared, &first).await;
        return;
    }
    if post(shared, &first).await == Posted::Stop {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Followed>(1024);
    let mut readers = JoinSet::new();
    let api: Api<Pod> = Api::namespaced(shared.kube.clone(), &req.namespace);
    for (pod, container) in targets.read {
        let (api, tx, q) = (api.clone(), tx.clone(), q.clone());
        readers.spawn(async move {
            let res = async {
                let stream = api
                    .log_stream(&pod, &log_params(&q, &container, true))
                    .await
                    .map_err(|e| {
                        kube_message(&format!("following the log of {pod}/{container}"), &e)
                    })?;
                let mut reader = BoundedLines::new(stream, MAX_LOG_LINE_BYTES + TIMESTAMP_ROOM);
                while let Some((head, total)) = reader
                    .next()
                    .await
                    .map_err(|e| format!("following the log of {pod}/{container}: {e}"))?
                {
                    if tx
                        .send(Followed::Line(log_line(&head, total, &pod, &container)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = res {
                let _ = tx
                    .send(Followed::Failed(bound_text(&e, MAX_ANSWER_TEXT_BYTES)))
                    .await;
            }
        });
    }
    drop(tx);
    let mut batch: Vec<LogLine> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut last_post = Instant::now();
    let mut tick = tokio::time::interval(FOLLOW_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (end, end_message) = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break (FollowEnd::Deadline, String::new()),
            _ = stopped(&mut shutdown) => break (FollowEnd::Error, "the operator is shutting down".to_string()),
            msg = rx.recv() => match msg {
                None => break (FollowEnd::Ended, "every followed container stopped".to_string()),
                Some(Followed::Line(l)) => {
                    batch.push(l);
                    if batch.len() >= MAX_ANSWER_LINES {
                        if send_lines(shared, req.id, &mut seq, &mut batch, &mut failures).await == Posted::Stop {
                            return;
                        }
                        last_post = Instant::now();
                    }
                }
                Some(Followed::Failed(e)) => failures.push(e),
            },
            _ = tick.tick() => {
                if !batch.is_empty() || !failures.is_empty() {
                    if send_lines(shared, req.id, &mut seq, &mut batch, &mut failures).await == Posted::Stop {
                        return;
                    }
                    last_post = Instant::now();
                } else if last_post.elapsed() >= FOLLOW_PROBE {
                    seq += 1;
                    if post(shared, &AgentAnswer::new(req.id, seq)).await == Posted::Stop {
                        return;
                    }
                    last_post = Instant::now();
                }
            }
        }
    };
    readers.abort_all();
    if (!batch.is_empty() || !failures.is_empty())
        && send_lines(shared, req.id, &mut seq, &mut batch, &mut failures).await == Posted::Stop
    {
        return;
    }
    seq += 1;
    let mut last = AgentAnswer::new(req.id, seq);
    last.done = true;
    last.end = Some(end);
    last.message = end_message;
    post(shared, &last).await;
}

/// Sends the collected lines (and the readers' failures) as chunks that fit one answer.
async fn send_lines(
    shared: &Shared,
    id: uuid::Uuid,
    seq: &mut u32,
    batch: &mut Vec<LogLine>,
    failures: &mut Vec<String>,
) -> Posted {
    let mut lines: VecDeque<LogLine> = std::mem::take(batch).into();
    let mut message = bound_text(&failures.join("; "), MAX_ANSWER_TEXT_BYTES);
    failures.clear();
    loop {
        *seq += 1;
        let mut a = AgentAnswer::new(id, *seq);
        a.message = std::mem::take(&mut message);
        let mut room = MAX_ANSWER_BYTES - ANSWER_SLACK;
        while let Some(l) = lines.front() {
            let c = cost(l);
            if c > room || a.lines.len() == MAX_ANSWER_LINES {
                break;
            }
            room -= c;
            if let Some(l) = lines.pop_front() {
                a.lines.push(l);
            }
        }
        if post(shared, &a).await == Posted::Stop {
            return Posted::Stop;
        }
        if lines.is_empty() {
            return Posted::Go;
        }
    }
}

// ---------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------

/// The objects whose Events belong to an app.
#[derive(Debug, Default)]
struct AppObjects {
    /// `(kind, name)` of every object.
    named: BTreeSet<(String, String)>,
    /// Deployments: their ReplicaSets are `<deployment>-<pod template hash>`.
    deployments: BTreeSet<String>,
}

impl AppObjects {
    fn add(&mut self, kind: &str, name: &str) {
        self.named.insert((kind.to_string(), name.to_string()));
    }

    fn matches(&self, kind: &str, name: &str) -> bool {
        if self.named.contains(&(kind.to_string(), name.to_string())) {
            return true;
        }
        kind == "ReplicaSet"
            && self.deployments.iter().any(|d| {
                name.strip_prefix(d.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| {
                        !hash.is_empty() && hash.chars().all(|c| c.is_ascii_alphanumeric())
                    })
            })
    }
}

async fn app_objects(kube: &Client, req: &AgentRequest) -> Result<AppObjects, AnswerError> {
    let mut o = AppObjects::default();
    o.add("Application", &req.app);
    o.add("NovaApp", &req.app);
    for c in &req.components {
        if dns_label_problem(c).is_some() {
            continue;
        }
        for kind in WORKLOAD_KINDS {
            o.add(kind, c);
        }
        o.deployments.insert(c.clone());
    }
    let (pods, _) = app_pods(kube, req, None, usize::MAX).await?;
    for p in &pods {
        if let Some(n) = &p.metadata.name {
            o.add("Pod", n);
        }
        for owner in p.metadata.owner_references.iter().flatten() {
            o.add(&owner.kind, &owner.name);
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &req.namespace);
    let selector = format!("{LABEL_APP_NAME}={}", req.app);
    let listed = deployments
        .list(&ListParams::default().labels(&selector).limit(LIST_PAGE))
        .await
        .map_err(|e| failure(kube_message(&format!("listing deployments {selector}"), &e)))?;
    for d in listed.items {
        if let Some(n) = d.metadata.name {
            o.add("Deployment", &n);
            o.deployments.insert(n);
        }
    }
    Ok(o)
}

fn time_of(t: &Time) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(t.0.as_nanosecond()).ok()
}

fn app_event(e: &Event) -> AppEvent {
    let last = e
        .last_timestamp
        .as_ref()
        .and_then(time_of)
        .or_else(|| {
            e.event_time
                .as_ref()
                .and_then(|t| OffsetDateTime::from_unix_timestamp_nanos(t.0.as_nanosecond()).ok())
        })
        .or_else(|| e.first_timestamp.as_ref().and_then(time_of))
        .or_else(|| e.metadata.creation_timestamp.as_ref().and_then(time_of));
    let first = e.first_timestamp.as_ref().and_then(time_of).or(last);
    let count = e
        .series
        .as_ref()
        .and_then(|s| s.count)
        .or(e.count)
        .unwrap_or(1);
    let source = e
        .source
        .as_ref()
        .and_then(|s| s.component.clone())
        .or_else(|| e.reporting_component.clone())
        .unwrap_or_default();
    let short = |s: &Option<String>| bound_text(s.as_deref().unwrap_or_default(), MAX_NAME_BYTES);
    AppEvent {
        type_: short(&e.type_),
        reason: short(&e.reason),
        message: bound_text(
            e.message.as_deref().unwrap_or_default(),
            MAX_EVENT_MESSAGE_BYTES,
        ),
        object: EventObject {
            kind: short(&e.involved_object.kind),
            name: short(&e.involved_object.name),
        },
        count: u32::try_from(count).unwrap_or(0),
        first_time: first,
        last_time: last,
        source: bound_text(&source, MAX_NAME_BYTES),
    }
}

async fn read_events(
    kube: &Client,
    req: &AgentRequest,
    a: &mut AgentAnswer,
) -> Result<(), AnswerError> {
    if let Some(remark) = check_scope(kube, req).await? {
        a.message = remark;
        a.events = Some(Vec::new());
        return Ok(());
    }
    let objects = app_objects(kube, req).await?;
    let api: Api<Event> = Api::namespaced(kube.clone(), &req.namespace);
    let mut lp = ListParams::default().limit(LIST_PAGE);
    let mut events = Vec::new();
    let mut scanned = 0usize;
    loop {
        let page = api.list(&lp).await.map_err(|e| {
            failure(kube_message(
                &format!("listing the events of namespace {}", req.namespace),
                &e,
            ))
        })?;
        scanned += page.items.len();
        events.extend(
            page.items
                .iter()
                .filter(|e| {
                    let o = &e.involved_object;
                    objects.matches(
                        o.kind.as_deref().unwrap_or_default(),
                        o.name.as_deref().unwrap_or_default(),
                    )
                })
                .map(app_event),
        );
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() && scanned < MAX_EVENTS_SCANNED => lp.continue_token = Some(c),
            Some(c) if !c.is_empty() => {
                a.truncated = true;
                a.message = format!(
                    "namespace {} has more than {MAX_EVENTS_SCANNED} events; the first {scanned} were read",
                    req.namespace
                );
                break;
            }
            _ => break,
        }
    }
    events.sort_by_key(|e| e.last_time);
    a.events = Some(events);
    fit_events(a);
    Ok(())
}

/// Keeps the newest events that fit an answer's bounds.
fn fit_events(a: &mut AgentAnswer) {
    let events = a.events.take().unwrap_or_default();
    a.events = Some(Vec::new());
    let base = serde_json::to_vec(a).map_or(0, |v| v.len()) + ANSWER_SLACK;
    let mut room = MAX_ANSWER_BYTES.saturating_sub(base);
    let mut keep = 0;
    for e in events.iter().rev() {
        let c = serde_json::to_vec(e).map_or(usize::MAX / 2, |v| v.len() + 1);
        if c > room || keep == MAX_EVENTS {
            break;
        }
        room -= c;
        keep += 1;
    }
    if keep < events.len() {
        a.truncated = true;
    }
    let skip = events.len() - keep;
    a.events = Some(events.into_iter().skip(skip).collect());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn long_lines_are_never_held_whole() {
        let mut input = Vec::new();
        input.extend_from_slice(b"short\n\n");
        input.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        input.extend_from_slice(b"\nlast without newline");
        let mut r = BoundedLines::new(futures::io::Cursor::new(input), 100);
        assert_eq!(r.next().await.unwrap(), Some((b"short".to_vec(), 5)));
        assert_eq!(r.next().await.unwrap(), Some((Vec::new(), 0)));
        let (head, total) = r.next().await.unwrap().unwrap();
        assert_eq!((head.len(), total), (100, 10 * 1024 * 1024));
        assert_eq!(
            r.next().await.unwrap(),
            Some((b"last without newline".to_vec(), 20))
        );
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[test]
    fn lines_keep_their_time_and_are_cut_at_the_source() {
        let l = log_line(
            b"2026-01-01T00:00:01.5Z listening on :8080\r",
            42,
            "web-1",
            "web",
        );
        assert_eq!(l.text, "listening on :8080");
        assert_eq!(
            l.time,
            Some(OffsetDateTime::parse("2026-01-01T00:00:01.5Z", &Rfc3339).unwrap())
        );
        let empty = log_line(b"2026-01-01T00:00:01Z", 20, "p", "c");
        assert_eq!((empty.text.as_str(), empty.time.is_some()), ("", true));
        let plain = log_line(b"no stamp here", 13, "p", "c");
        assert_eq!((plain.text.as_str(), plain.time), ("no stamp here", None));
        // A runaway line: only its head was read; the text says how much was cut.
        let head = format!(
            "2026-01-01T00:00:01Z {}",
            "y".repeat(MAX_LOG_LINE_BYTES + 40)
        );
        let l = log_line(head.as_bytes(), 5_000_000, "p", "c");
        assert!(l.text.len() <= MAX_LOG_LINE_BYTES);
        assert!(
            l.text.ends_with("bytes cut]"),
            "{}",
            &l.text[l.text.len() - 40..]
        );
    }

    fn line(i: usize, text: &str) -> LogLine {
        LogLine {
            time: None,
            pod: format!("web-{}", i % 3),
            container: "web".into(),
            text: text.into(),
        }
    }

    #[test]
    fn answers_keep_the_newest_lines_that_fit() {
        let mut a = AgentAnswer::new(uuid::Uuid::nil(), 0);
        a.done = true;
        a.pods = Some(
            (0..3)
                .map(|i| PodLog {
                    pod: format!("web-{i}"),
                    container: "web".into(),
                    lines: 0,
                    error: None,
                })
                .collect(),
        );
        // Control characters take six bytes each in JSON: the serialized size decides.
        let nasty = "\u{1}".repeat(MAX_LOG_LINE_BYTES - 4);
        a.lines = (0..400)
            .map(|i| line(i, &format!("{i:04}{nasty}")))
            .collect();
        fit_lines(&mut a);
        assert!(a.truncated);
        assert!(serde_json::to_vec(&a).unwrap().len() <= MAX_ANSWER_BYTES);
        assert!(a.check().is_ok());
        assert!(
            a.lines.last().unwrap().text.starts_with("0399"),
            "the newest stay"
        );
        let counted: u32 = a.pods.as_ref().unwrap().iter().map(|p| p.lines).sum();
        assert_eq!(counted as usize, a.lines.len());

        let mut many = AgentAnswer::new(uuid::Uuid::nil(), 0);
        many.lines = (0..MAX_ANSWER_LINES + 10).map(|i| line(i, "x")).collect();
        fit_lines(&mut many);
        assert_eq!(many.lines.len(), MAX_ANSWER_LINES);
        assert!(many.truncated);
        let mut few = AgentAnswer::new(uuid::Uuid::nil(), 0);
        few.lines = (0..10).map(|i| line(i, "x")).collect();
        fit_lines(&mut few);
        assert!(!few.truncated && few.lines.len() == 10);
    }

    #[test]
    fn a_pods_tail_stays_within_one_answer() {
        let mut t = Tail::default();
        for i in 0..(MAX_ANSWER_LINES + 100) {
            t.push(line(i, &"z".repeat(200)));
        }
        assert!(t.dropped);
        assert!(t.bytes <= MAX_ANSWER_BYTES);
        assert!(t.lines.len() <= MAX_ANSWER_LINES);
    }

    #[test]
    fn events_belong_to_the_apps_objects() {
        let mut o = AppObjects::default();
        o.add("Pod", "web-6d8f7c9b5-x2x7q");
        o.deployments.insert("web".into());
        assert!(o.matches("Pod", "web-6d8f7c9b5-x2x7q"));
        assert!(o.matches("ReplicaSet", "web-6d8f7c9b5"));
        assert!(
            !o.matches("ReplicaSet", "web-api-6d8f7c9b5"),
            "another component's"
        );
        assert!(!o.matches("ReplicaSet", "web-"));
        assert!(!o.matches("Pod", "other"));
        assert!(!o.matches("Deployment", "web"), "only what was added");
    }

    #[test]
    fn event_texts_are_cut_at_the_source() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e1", "namespace": "ns"},
            "involvedObject": {"kind": "Pod", "name": "web-1"},
            "reason": "BackOff",
            "message": "m".repeat(100_000),
            "type": "Warning",
            "count": 7,
            "lastTimestamp": "2026-01-01T00:03:00Z",
            "source": {"component": "kubelet"},
        }))
        .unwrap();
        let a = app_event(&e);
        assert!(a.message.len() <= MAX_EVENT_MESSAGE_BYTES);
        assert_eq!((a.count, a.source.as_str()), (7, "kubelet"));
        assert_eq!(a.first_time, a.last_time, "no first time: the last");
        let mut answer = AgentAnswer::new(uuid::Uuid::nil(), 0);
        answer.events = Some(vec![a; MAX_EVENTS + 50]);
        fit_events(&mut answer);
        assert!(answer.truncated);
        assert!(answer.check().is_ok());
        assert!(serde_json::to_vec(&answer).unwrap().len() <= MAX_ANSWER_BYTES);
    }
}
