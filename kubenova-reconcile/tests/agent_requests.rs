//! The logs and events of apps, read by the operator against a `kubenova-testkit` cluster
//! with real Pod, Deployment and Event objects (container logs given by the testkit's Pod
//! annotations): what is read, what is not (other apps, other namespaces, a namespace
//! that does not hold the app), the bounds at the source, and the requests loop against a
//! fake manager (one-shot answers, followed logs to their end).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubenova_api::agent::{
    AgentAnswer, AgentRequest, AgentRequestKind, AgentRequests, AnswerReply, FollowEnd, LABEL_ID,
    LogQuery, MAX_ANSWER_BYTES, MAX_LOG_LINE_BYTES,
};
use kubenova_api::crd::NovaApp;
use kubenova_reconcile::agent::{self, AgentConfig, answer_request};
use kubenova_reconcile::project_namespace;
use kubenova_testkit::TestCluster;
use kubenova_testkit::podlogs::{LOG_ANNOTATION_PREFIX, PREVIOUS_LOG_ANNOTATION_PREFIX};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(30);
const TOKEN: &str = "kna_test_agent_credential_0123456789abcdef";

fn ago(seconds: i64) -> String {
    (OffsetDateTime::now_utc() - time::Duration::seconds(seconds))
        .format(&Rfc3339)
        .unwrap()
}

/// A cluster with the Nova CRDs, app `web` (components `web` and `worker`) of project
/// `acme/shop`, its pods and events, and look-alikes that are not its.
struct World {
    cluster: TestCluster,
    client: Client,
    ns: String,
    app_id: Uuid,
}

async fn namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
}

async fn create<K>(client: &Client, ns: &str, v: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap();
}

fn pod(name: &str, app: &str, component: &str, containers: &[&str], annotations: Value) -> Value {
    let containers: Vec<_> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "nginx:1.27"}))
        .collect();
    json!({
        "metadata": {"name": name, "annotations": annotations,
            "labels": {"app.oam.dev/name": app, "app.oam.dev/component": component},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{component}-5d9f8c7b6"),
                "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]},
        "spec": {"containers": containers},
    })
}

fn event(name: &str, kind: &str, object: &str, reason: &str, last: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "involvedObject": {"kind": kind, "name": object},
        "reason": reason, "message": format!("{reason} of {kind} {object}"), "type": "Warning",
        "count": 2, "firstTimestamp": last, "lastTimestamp": last,
        "source": {"component": "test"},
    })
}

impl World {
    async fn start() -> World {
        let cluster = TestCluster::start().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        for entry in std::fs::read_dir(dir).unwrap() {
            cluster
                .register_crd_yaml(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                .unwrap();
        }
        let client = cluster.client().unwrap();
        let ns = project_namespace("acme", "shop");
        let other_ns = project_namespace("acme", "blog");
        for n in [&ns, &other_ns] {
            namespace(&client, n).await;
        }
        let app_id = Uuid::new_v4();
        create::<NovaApp>(
            &client,
            &ns,
            json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
                "metadata": {"name": "web", "labels": {LABEL_ID: app_id.to_string(), "kubenova.io/source": "manager"}},
                "spec": {"tenant": "acme", "project": "shop",
                    "components": [{"name": "web", "type": "webservice"}, {"name": "worker", "type": "worker"}]}}),
        )
        .await;
        let (old, recent) = (ago(600), ago(5));
        let log = |lines: &[(&str, &str)]| -> String {
            lines.iter().map(|(t, l)| format!("{t} {l}\n")).collect()
        };
        create::<Pod>(
            &client,
            &ns,
            pod(
                "web-5d9f8c7b6-aaaaa",
                "web",
                "web",
                &["web"],
                json!({format!("{LOG_ANNOTATION_PREFIX}web"): log(&[(&old, "a1 starting"), (&recent, "a2 ready")]),
                       format!("{PREVIOUS_LOG_ANNOTATION_PREFIX}web"): "panic: out of memory\n"}),
            ),
        )
        .await;
        create::<Pod>(
            &client,
            &ns,
            pod(
                "web-5d9f8c7b6-bbbbb",
                "web",
                "web",
                &["web", "proxy"],
                json!({format!("{LOG_ANNOTATION_PREFIX}web"): log(&[(&ago(300), "b1 starting")]),
                       format!("{LOG_ANNOTATION_PREFIX}proxy"): log(&[(&ago(299), "b-proxy up")])}),
            ),
        )
        .await;
        // Another component of the app, another app in the same namespace, the same labels
        // in another namespace: never read for component web of this app.
        create::<Pod>(
            &client,
            &ns,
            pod(
                "worker-5d9f8c7b6-ccccc",
                "web",
                "worker",
                &["worker"],
                json!({format!("{LOG_ANNOTATION_PREFIX}worker"): "worker line\n"}),
            ),
        )
        .await;
        create::<Pod>(
            &client,
            &ns,
            pod(
                "api-77b9c4d8f-ddddd",
                "api",
                "web",
                &["web"],
                json!({format!("{LOG_ANNOTATION_PREFIX}web"): "another app\n"}),
            ),
        )
        .await;
        create::<Pod>(
            &client,
            &other_ns,
            pod(
                "web-5d9f8c7b6-eeeee",
                "web",
                "web",
                &["web"],
                json!({format!("{LOG_ANNOTATION_PREFIX}web"): "another namespace\n"}),
            ),
        )
        .await;
        create::<Deployment>(
            &client,
            &ns,
            json!({"metadata": {"name": "web", "labels": {"app.oam.dev/name": "web", "app.oam.dev/component": "web"}},
                "spec": {"selector": {"matchLabels": {"app.oam.dev/component": "web"}},
                    "template": {"metadata": {"labels": {"app.oam.dev/component": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}),
        )
        .await;
        for (i, (kind, object, reason, minutes)) in [
            ("Pod", "web-5d9f8c7b6-aaaaa", "BackOff", 3),
            ("ReplicaSet", "web-5d9f8c7b6", "SuccessfulCreate", 9),
            ("ReplicaSet", "worker-7c8d9e0f1", "FailedCreate", 8),
            ("Deployment", "web", "ScalingReplicaSet", 10),
            ("Application", "web", "Rendered", 11),
            ("NovaApp", "web", "ReconcileFailed", 1),
            ("Pod", "api-77b9c4d8f-ddddd", "BackOff", 2),
            ("ReplicaSet", "web-api-5d9f8c7b6", "SuccessfulCreate", 2),
            ("Deployment", "api", "ScalingReplicaSet", 2),
            ("Application", "api", "Rendered", 2),
        ]
        .into_iter()
        .enumerate()
        {
            create::<Event>(
                &client,
                &ns,
                event(&format!("e{i}"), kind, object, reason, &ago(minutes * 60)),
            )
            .await;
        }
        create::<Event>(
            &client,
            &other_ns,
            event(
                "elsewhere",
                "Pod",
                "web-5d9f8c7b6-eeeee",
                "BackOff",
                &ago(60),
            ),
        )
        .await;
        World {
            cluster,
            client,
            ns,
            app_id,
        }
    }

    fn request(&self, kind: AgentRequestKind, logs: Option<LogQuery>) -> AgentRequest {
        AgentRequest {
            id: Uuid::new_v4(),
            kind,
            app_id: self.app_id,
            app: "web".into(),
            namespace: self.ns.clone(),
            components: vec!["web".into(), "worker".into()],
            logs,
        }
    }

    fn logs(&self, q: LogQuery) -> AgentRequest {
        self.request(
            AgentRequestKind::Logs,
            Some(LogQuery {
                component: "web".into(),
                ..q
            }),
        )
    }
}

fn texts(a: &AgentAnswer) -> Vec<&str> {
    a.lines.iter().map(|l| l.text.as_str()).collect()
}

#[tokio::test]
async fn logs_of_a_component_come_from_its_pods_only() {
    let w = World::start().await;
    let k = &w.client;

    let a = answer_request(k, &w.logs(LogQuery::default())).await;
    assert!(a.done && a.error.is_none(), "{a:?}");
    assert!(a.check().is_ok());
    // Both pods of component web (oldest lines first), each with its first container.
    assert_eq!(texts(&a), ["a1 starting", "b1 starting", "a2 ready"]);
    let pods: Vec<(&str, &str, u32)> = a
        .pods
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.pod.as_str(), p.container.as_str(), p.lines))
        .collect();
    assert_eq!(
        pods,
        [
            ("web-5d9f8c7b6-aaaaa", "web", 2),
            ("web-5d9f8c7b6-bbbbb", "web", 1)
        ]
    );
    assert!(a.lines.iter().all(|l| l.time.is_some()));
    assert!(!a.truncated);

    // tailLines (per pod) and sinceSeconds.
    let a = answer_request(
        k,
        &w.logs(LogQuery {
            tail_lines: Some(1),
            ..LogQuery::default()
        }),
    )
    .await;
    assert_eq!(texts(&a), ["b1 starting", "a2 ready"]);
    let a = answer_request(
        k,
        &w.logs(LogQuery {
            since_seconds: Some(60),
            ..LogQuery::default()
        }),
    )
    .await;
    assert_eq!(texts(&a), ["a2 ready"]);
    // A container only one pod has: the other says why it was not read.
    let a = answer_request(
        k,
        &w.logs(LogQuery {
            container: Some("proxy".into()),
            ..LogQuery::default()
        }),
    )
    .await;
    assert_eq!(texts(&a), ["b-proxy up"]);
    let errors: Vec<_> = a
        .pods
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|p| p.error.as_deref())
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("has no container proxy"), "{errors:?}");
    // previous: the API server's refusal for the pod without a previous instance.
    let a = answer_request(
        k,
        &w.logs(LogQuery {
            previous: true,
            ..LogQuery::default()
        }),
    )
    .await;
    assert_eq!(texts(&a), ["panic: out of memory"]);
    let b = &a.pods.as_ref().unwrap()[1];
    assert!(
        b.error
            .as_deref()
            .unwrap()
            .contains("previous terminated container"),
        "{b:?}"
    );
    // A container no pod has is the request's fault: the field is named.
    let a = answer_request(
        k,
        &w.logs(LogQuery {
            container: Some("sidecar".into()),
            ..LogQuery::default()
        }),
    )
    .await;
    let e = a.error.unwrap();
    assert_eq!(e.field.as_deref(), Some("container"));
    assert!(e.message.contains("proxy, web"), "{}", e.message);
    // A component without pods: a remark, no lines.
    let mut r = w.logs(LogQuery::default());
    r.logs.as_mut().unwrap().component = "cache".into();
    let a = answer_request(k, &r).await;
    assert!(a.error.is_none() && a.lines.is_empty());
    assert!(a.message.contains("has no pods"), "{}", a.message);
    w.cluster.shutdown().await;
}

#[tokio::test]
async fn nothing_is_read_outside_the_apps_project_namespace() {
    let w = World::start().await;
    let k = &w.client;
    let before = w.cluster.faults().counts();
    // Another app's id: the NovaApp in the namespace is not it.
    let mut r = w.logs(LogQuery::default());
    r.app_id = Uuid::new_v4();
    let a = answer_request(k, &r).await;
    let e = a.error.unwrap();
    assert!(e.field.is_none());
    assert!(e.message.contains("is not app"), "{}", e.message);
    // A namespace that does not hold the app (kube-system, another project).
    for ns in ["kube-system".to_string(), project_namespace("acme", "blog")] {
        let mut r = w.request(AgentRequestKind::Events, None);
        r.namespace = ns;
        let a = answer_request(k, &r).await;
        assert!(
            a.error.is_none() && a.events.as_ref().unwrap().is_empty(),
            "{a:?}"
        );
        assert!(a.message.contains("is not in namespace"), "{}", a.message);
    }
    // The NovaApp in a namespace that is not its project's.
    create::<NovaApp>(
        k,
        "default",
        json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
            "metadata": {"name": "web", "labels": {LABEL_ID: w.app_id.to_string()}},
            "spec": {"tenant": "acme", "project": "shop", "components": [{"name": "web", "type": "webservice"}]}}),
    )
    .await;
    let mut r = w.logs(LogQuery::default());
    r.namespace = "default".into();
    let a = answer_request(k, &r).await;
    assert!(
        a.error
            .unwrap()
            .message
            .contains("not the project namespace")
    );
    // A label selector cannot be smuggled in through the names.
    let mut r = w.logs(LogQuery::default());
    r.logs.as_mut().unwrap().component = "web,app.oam.dev/name!=x".into();
    assert!(answer_request(k, &r).await.error.is_some());
    // None of these read a pod, a log or an event.
    let used = w.cluster.faults().counts().since(&before);
    for (verb, resource) in [("list", "pods"), ("get", "pods/log"), ("list", "events")] {
        assert_eq!(used.get(verb, resource), 0, "{verb} {resource}");
    }
    w.cluster.shutdown().await;
}

#[tokio::test]
async fn events_are_those_of_the_apps_objects() {
    let w = World::start().await;
    let a = answer_request(&w.client, &w.request(AgentRequestKind::Events, None)).await;
    assert!(a.done && a.error.is_none(), "{a:?}");
    assert!(a.check().is_ok());
    let got: Vec<(String, String, String)> = a
        .events
        .unwrap()
        .into_iter()
        .map(|e| (e.object.kind, e.object.name, e.reason))
        .collect();
    // Oldest first; not another app's pod, ReplicaSet, Deployment or Application, nor
    // anything of another namespace.
    let want = [
        ("Application", "web", "Rendered"),
        ("Deployment", "web", "ScalingReplicaSet"),
        ("ReplicaSet", "web-5d9f8c7b6", "SuccessfulCreate"),
        ("ReplicaSet", "worker-7c8d9e0f1", "FailedCreate"),
        ("Pod", "web-5d9f8c7b6-aaaaa", "BackOff"),
        ("NovaApp", "web", "ReconcileFailed"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(k, n, r)| (k.to_string(), n.to_string(), r.to_string()))
        .collect();
    assert_eq!(got, want);
    w.cluster.shutdown().await;
}

#[tokio::test]
async fn runaway_logs_are_bounded_at_the_source() {
    let w = World::start().await;
    // 12,000 lines in one pod: the tail of 5000 alone is more than one answer carries.
    // (A request body, and so the annotation, is at most 3 MiB, as in Kubernetes.)
    let mut text = String::new();
    for i in 0..12_000 {
        text.push_str(&format!("{} line {i:05} {}\n", ago(50), "y".repeat(100)));
    }
    create::<Pod>(
        &w.client,
        &w.ns,
        pod(
            "noisy-1",
            "web",
            "noisy",
            &["noisy"],
            json!({format!("{LOG_ANNOTATION_PREFIX}noisy"): text}),
        ),
    )
    .await;
    let mut r = w.logs(LogQuery {
        tail_lines: Some(5000),
        ..LogQuery::default()
    });
    r.logs.as_mut().unwrap().component = "noisy".into();
    let a = answer_request(&w.client, &r).await;
    assert!(a.error.is_none(), "{a:?}");
    assert!(a.truncated);
    assert!(serde_json::to_vec(&a).unwrap().len() <= MAX_ANSWER_BYTES);
    assert!(a.check().is_ok());
    assert!(
        a.lines.last().unwrap().text.starts_with("line 11999"),
        "the newest stay"
    );
    assert!(a.lines.len() < 5000);
    // The long line itself, when it is in the tail, is cut to its bound.
    r.logs.as_mut().unwrap().tail_lines = None;
    r.logs.as_mut().unwrap().since_seconds = None;
    create::<Pod>(
        &w.client,
        &w.ns,
        pod(
            "noisy-2",
            "web",
            "long",
            &["long"],
            json!({format!("{LOG_ANNOTATION_PREFIX}long"): format!("{} {}\n", ago(10), "z".repeat(2 * 1024 * 1024))}),
        ),
    )
    .await;
    r.logs.as_mut().unwrap().component = "long".into();
    let a = answer_request(&w.client, &r).await;
    assert_eq!(a.lines.len(), 1);
    assert!(a.lines[0].text.len() <= MAX_LOG_LINE_BYTES);
    assert!(a.lines[0].text.ends_with("bytes cut]"));
    w.cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------
// The requests loop against a fake manager
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct Fake {
    queue: Mutex<Vec<AgentRequest>>,
    answers: Mutex<HashMap<Uuid, Vec<AgentAnswer>>>,
    /// Requests the manager no longer waits for (answers get 404).
    gone: Mutex<Vec<Uuid>>,
    /// Answers refused with 404.
    refused: Mutex<usize>,
    changed: Notify,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wait {
    wait_seconds: u64,
}

async fn requests(State(f): State<Arc<Fake>>, Query(q): Query<Wait>) -> Json<AgentRequests> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait_seconds.min(2));
    loop {
        let notified = f.changed.notified();
        let taken: Vec<AgentRequest> = std::mem::take(&mut *f.queue.lock().unwrap());
        if !taken.is_empty() {
            return Json(AgentRequests { requests: taken });
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Json(AgentRequests::default());
        }
    }
}

async fn answers(State(f): State<Arc<Fake>>, Json(a): Json<AgentAnswer>) -> Response {
    assert!(a.check().is_ok(), "an answer out of bounds: {a:?}");
    if f.gone.lock().unwrap().contains(&a.request_id) {
        *f.refused.lock().unwrap() += 1;
        f.changed.notify_waiters();
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"code": "KN-404", "message": "agent request not found"})),
        )
            .into_response();
    }
    let probe = a.is_probe();
    f.answers
        .lock()
        .unwrap()
        .entry(a.request_id)
        .or_default()
        .push(a);
    f.changed.notify_waiters();
    Json(AnswerReply {
        stored: !probe,
        stop: false,
    })
    .into_response()
}

async fn serve(fake: Arc<Fake>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/v1/agent/requests", get(requests))
        .route("/api/v1/agent/answers", post(answers))
        // The other loops are not under test here.
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"code": "KN-503", "message": "not in this test"})),
            )
        })
        .with_state(fake);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

impl Fake {
    fn ask(&self, r: AgentRequest) {
        self.queue.lock().unwrap().push(r);
        self.changed.notify_waiters();
    }

    /// Waits until the answers to `id` satisfy `done`.
    async fn until(
        &self,
        id: Uuid,
        what: &str,
        done: impl Fn(&[AgentAnswer]) -> bool,
    ) -> Vec<AgentAnswer> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            let got = self
                .answers
                .lock()
                .unwrap()
                .get(&id)
                .cloned()
                .unwrap_or_default();
            if done(&got) {
                return got;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "timed out waiting for {what}; answers so far: {got:?}"
            );
        }
    }
}

fn lines_of(answers: &[AgentAnswer]) -> Vec<String> {
    answers
        .iter()
        .flat_map(|a| a.lines.iter().map(|l| l.text.clone()))
        .collect()
}

#[tokio::test]
async fn the_loop_answers_and_follows_until_the_end() {
    let w = World::start().await;
    let fake = Arc::new(Fake::default());
    let addr = serve(fake.clone()).await;
    let mut config = AgentConfig::new(format!("http://{addr}"), TOKEN);
    config.poll_wait = Duration::from_secs(2);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(400);
    let (stop, shutdown) = watch::channel(false);
    let client = w.client.clone();
    let task = tokio::spawn(async move { agent::run(client, config, shutdown).await.unwrap() });

    // A logs request and an events request: one complete answer each.
    let logs = w.logs(LogQuery::default());
    let events = w.request(AgentRequestKind::Events, None);
    fake.ask(logs.clone());
    fake.ask(events.clone());
    let a = fake
        .until(logs.id, "the logs", |a| a.iter().any(|x| x.done))
        .await;
    assert_eq!(a.len(), 1);
    assert_eq!(lines_of(&a), ["a1 starting", "b1 starting", "a2 ready"]);
    let a = fake
        .until(events.id, "the events", |a| a.iter().any(|x| x.done))
        .await;
    assert_eq!(a[0].events.as_ref().unwrap().len(), 6);

    // A followed log: the pods first, then the tail and what the container writes, in
    // numbered chunks, until the container stops.
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), &w.ns);
    let follow = w.logs(LogQuery {
        tail_lines: Some(1),
        follow: true,
        follow_seconds: 120,
        ..LogQuery::default()
    });
    fake.ask(follow.clone());
    let got = fake
        .until(follow.id, "the tail", |a| lines_of(a).len() >= 2)
        .await;
    assert!(got[0].pods.is_some() && got[0].seq == 0);
    let mut tail = lines_of(&got);
    tail.sort();
    assert_eq!(tail, ["a2 ready", "b1 starting"]);
    let key = format!("{LOG_ANNOTATION_PREFIX}web");
    let a_log = format!(
        "{} a1 starting\n{} a2 ready\n{} a3 new\n",
        ago(600),
        ago(5),
        ago(0)
    );
    pods.patch(
        "web-5d9f8c7b6-aaaaa",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: a_log}}})),
    )
    .await
    .unwrap();
    fake.until(follow.id, "the new line", |a| {
        lines_of(a).contains(&"a3 new".to_string())
    })
    .await;
    for p in ["web-5d9f8c7b6-aaaaa", "web-5d9f8c7b6-bbbbb"] {
        pods.patch_status(
            p,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"containerStatuses": [
                {"name": "web", "ready": false, "restartCount": 0, "image": "nginx:1.27", "imageID": "",
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}})),
        )
        .await
        .unwrap();
    }
    let got = fake
        .until(follow.id, "the end", |a| a.iter().any(|x| x.done))
        .await;
    let last = got.last().unwrap();
    assert_eq!(last.end, Some(FollowEnd::Ended));
    let seqs: Vec<u32> = got.iter().map(|a| a.seq).collect();
    assert_eq!(
        seqs,
        (0..got.len() as u32).collect::<Vec<_>>(),
        "numbered without gaps"
    );

    // A follow whose time passes ends with `deadline`.
    let short = w.logs(LogQuery {
        follow: true,
        follow_seconds: 1,
        ..LogQuery::default()
    });
    let mut r = short.clone();
    r.logs.as_mut().unwrap().container = Some("proxy".into());
    fake.ask(r.clone());
    let got = fake
        .until(r.id, "the deadline", |a| a.iter().any(|x| x.done))
        .await;
    assert_eq!(got.last().unwrap().end, Some(FollowEnd::Deadline));

    // A follow the manager gave up before its first chunk: the operator stops at the
    // manager's 404 and never opens the pods' log streams.
    let before = w.cluster.faults().counts();
    let mut r = short;
    r.id = Uuid::new_v4();
    r.logs.as_mut().unwrap().follow_seconds = 120;
    fake.gone.lock().unwrap().push(r.id);
    fake.ask(r);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let notified = fake.changed.notified();
        if *fake.refused.lock().unwrap() > 0 {
            break;
        }
        assert!(
            tokio::time::timeout_at(deadline, notified).await.is_ok(),
            "no 404"
        );
    }
    // One more answer through the loop (two pods read) orders what came before.
    let again = w.logs(LogQuery::default());
    fake.ask(again.clone());
    fake.until(again.id, "another answer", |a| a.iter().any(|x| x.done))
        .await;
    assert_eq!(
        w.cluster
            .faults()
            .counts()
            .since(&before)
            .get("get", "pods/log"),
        2,
        "only the last request read logs"
    );
    assert_eq!(*fake.refused.lock().unwrap(), 1);

    stop.send(true).unwrap();
    tokio::time::timeout(TIMEOUT, task)
        .await
        .expect("the agent stops on shutdown")
        .unwrap();
    w.cluster.shutdown().await;
}
