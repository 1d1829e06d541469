//! The agent loop against a fake manager (an axum server on 127.0.0.1 implementing the
//! four agent routes over in-memory state) and a `kubenova-testkit` cluster with the
//! upstream CRDs, the Nova CRDs, the simulated Capsule/KubeVela and the real controllers.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use kubenova_api::agent::{
    ComponentRequest, DesiredObject, DesiredState, Heartbeat, HeartbeatReply, LABEL_ID,
    LABEL_SOURCE, ObjectKind, ObjectRef, ObjectReport, PROXY_CONFIGMAP, StatusReply, StatusReport,
};
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaApp, NovaProject, NovaTenant};
use kubenova_api::model::{ClusterCapacity, ClusterStatus, ComponentPhase, Phase, UsageRecord};
use kubenova_reconcile::agent::{self, ANNOTATION_DESIRED_REVISION, AgentConfig, AgentMetrics};
use kubenova_reconcile::controller::{self, Backoff, Ctx, Metrics, RunOptions};
use kubenova_reconcile::project_namespace;
use kubenova_testkit::{Fault, TestCluster};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(20);
const TOKEN: &str = "kna_test_agent_credential_0123456789abcdef";

// ---------------------------------------------------------------------------------
// The fake manager
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct FakeState {
    revision: i64,
    /// Current desired objects and the revision at which each last changed.
    objects: BTreeMap<ObjectRef, (i64, DesiredObject)>,
    deleted: Vec<(i64, ObjectRef)>,
    /// Component (re)installs asked for, by revision.
    components: Vec<(i64, ComponentRequest)>,
    /// Cursors below this get a snapshot.
    compacted: i64,
    /// Answer 503 to everything.
    down: bool,
    cluster_id: Uuid,
    heartbeats: Vec<Heartbeat>,
    status_requests: usize,
    /// Every accepted report, in order.
    reports: Vec<ObjectReport>,
    latest: HashMap<ObjectRef, ObjectReport>,
    unauthorized: usize,
    snapshots_served: usize,
    /// Every accepted usage batch, in order.
    usage_batches: Vec<Vec<UsageRecord>>,
    /// The latest accepted record per (tenant, project, hour), as the manager stores them.
    usage: BTreeMap<(Uuid, Option<Uuid>, time::OffsetDateTime), UsageRecord>,
    /// Usage batches naming this tenant are refused (422), as the manager refuses a
    /// tenant the cluster does not host.
    refuse_usage_of: Option<Uuid>,
}

struct Fake {
    state: Mutex<FakeState>,
    rev: watch::Sender<i64>,
}

type FakeRef = Arc<Fake>;

fn kn_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message, "details": {}, "requestId": "req-test"})),
    )
        .into_response()
}

impl Fake {
    fn gate(&self, headers: &HeaderMap) -> Option<Response> {
        let mut st = self.state.lock().unwrap();
        if st.down {
            return Some(kn_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "KN-503",
                "manager down (test)",
            ));
        }
        let ok = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {TOKEN}"));
        if !ok {
            st.unauthorized += 1;
            return Some(kn_error(
                StatusCode::UNAUTHORIZED,
                "KN-401",
                "invalid agent credential",
            ));
        }
        None
    }

    fn bump(&self, st: &mut FakeState) -> i64 {
        st.revision += 1;
        self.rev.send_replace(st.revision);
        st.revision
    }

    /// Creates or updates a desired object; returns the new revision.
    fn put(&self, o: DesiredObject) -> i64 {
        let mut st = self.state.lock().unwrap();
        let rev = st.revision + 1;
        st.objects.insert(o.object_ref(), (rev, o));
        self.bump(&mut st)
    }

    /// Deletes a desired object (recorded as a deletion); returns the new revision.
    fn delete(&self, r: ObjectRef) -> i64 {
        let mut st = self.state.lock().unwrap();
        let rev = st.revision + 1;
        st.objects.remove(&r);
        st.deleted.push((rev, r));
        self.bump(&mut st)
    }

    /// Drops an object without recording the deletion and compacts the history: the
    /// next poll of any cursor gets a snapshot.
    fn forget_and_compact(&self, r: ObjectRef) -> i64 {
        let mut st = self.state.lock().unwrap();
        st.objects.remove(&r);
        st.deleted.clear();
        let rev = self.bump(&mut st);
        st.compacted = rev;
        rev
    }

    /// Asks for a component (re)install; returns the new revision.
    fn request_component(&self, name: &str) -> i64 {
        self.request_component_id(name, None)
    }

    /// Asks for a component (re)install under request `id` (sending the same id again
    /// is what the manager does until the request is acknowledged); returns the new
    /// revision.
    fn request_component_id(&self, name: &str, id: Option<Uuid>) -> i64 {
        let mut st = self.state.lock().unwrap();
        let rev = st.revision + 1;
        st.components.push((
            rev,
            ComponentRequest {
                component: name.into(),
                version: None,
                id,
            },
        ));
        self.bump(&mut st)
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn latest(&self, r: ObjectRef) -> Option<ObjectReport> {
        self.state.lock().unwrap().latest.get(&r).cloned()
    }

    fn reports_for(&self, r: ObjectRef) -> Vec<ObjectReport> {
        let st = self.state.lock().unwrap();
        st.reports
            .iter()
            .filter(|x| x.kind == r.kind && x.id == r.id)
            .cloned()
            .collect()
    }

    fn status_requests(&self) -> usize {
        self.state.lock().unwrap().status_requests
    }

    fn last_heartbeat(&self) -> Option<Heartbeat> {
        self.state.lock().unwrap().heartbeats.last().cloned()
    }

    fn heartbeats(&self) -> usize {
        self.state.lock().unwrap().heartbeats.len()
    }

    /// Whether the latest report of `r` is `phase` at `revision`.
    fn reported(&self, r: ObjectRef, phase: Phase, revision: i64) -> bool {
        self.latest(r).is_some_and(|x| {
            x.status.phase == phase && x.status.observed_revision == Some(revision)
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DesiredQuery {
    cursor: i64,
    wait_seconds: u64,
}

async fn heartbeat(
    State(f): State<FakeRef>,
    headers: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> Response {
    if let Some(r) = f.gate(&headers) {
        return r;
    }
    let mut st = f.state.lock().unwrap();
    st.heartbeats.push(hb);
    Json(HeartbeatReply {
        cluster_id: st.cluster_id,
        status: ClusterStatus::Connected,
        interval_seconds: 1,
        revision: st.revision,
    })
    .into_response()
}

async fn desired(
    State(f): State<FakeRef>,
    headers: HeaderMap,
    Query(q): Query<DesiredQuery>,
) -> Response {
    if let Some(r) = f.gate(&headers) {
        return r;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait_seconds.min(5));
    let mut rx = f.rev.subscribe();
    loop {
        {
            let mut st = f.state.lock().unwrap();
            if st.down {
                return kn_error(StatusCode::SERVICE_UNAVAILABLE, "KN-503", "down");
            }
            let mut objects: Vec<(i64, DesiredObject)> = st.objects.values().cloned().collect();
            objects.sort_by_key(|(_, o)| o.object_ref().kind);
            if q.cursor == 0 || q.cursor < st.compacted {
                st.snapshots_served += 1;
                return Json(DesiredState {
                    revision: st.revision,
                    snapshot: true,
                    objects: objects.into_iter().map(|(_, o)| o).collect(),
                    ..Default::default()
                })
                .into_response();
            }
            if st.revision > q.cursor {
                return Json(DesiredState {
                    revision: st.revision,
                    snapshot: false,
                    objects: objects
                        .into_iter()
                        .filter(|(rev, _)| *rev > q.cursor)
                        .map(|(_, o)| o)
                        .collect(),
                    deleted: st
                        .deleted
                        .iter()
                        .filter(|(rev, _)| *rev > q.cursor)
                        .map(|(_, r)| *r)
                        .collect(),
                    components: st
                        .components
                        .iter()
                        .filter(|(rev, _)| *rev > q.cursor)
                        .map(|(_, c)| c.clone())
                        .collect(),
                })
                .into_response();
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return Json(DesiredState {
                revision: q.cursor,
                ..Default::default()
            })
            .into_response();
        }
    }
}

async fn status(
    State(f): State<FakeRef>,
    headers: HeaderMap,
    Json(rep): Json<StatusReport>,
) -> Response {
    if let Some(r) = f.gate(&headers) {
        return r;
    }
    assert!(rep.items.len() <= 1000, "batches are at most 1000");
    let mut st = f.state.lock().unwrap();
    st.status_requests += 1;
    let n = rep.items.len() as u32;
    for item in rep.items {
        st.latest.insert(
            ObjectRef {
                kind: item.kind,
                id: item.id,
            },
            item.clone(),
        );
        st.reports.push(item);
    }
    Json(StatusReply {
        applied: n,
        ignored: 0,
    })
    .into_response()
}

async fn usage(
    State(f): State<FakeRef>,
    headers: HeaderMap,
    Json(records): Json<Vec<UsageRecord>>,
) -> Response {
    if let Some(r) = f.gate(&headers) {
        return r;
    }
    assert!(
        !records.is_empty() && records.len() <= agent::USAGE_BATCH,
        "batches hold 1 to {} records",
        agent::USAGE_BATCH
    );
    let mut st = f.state.lock().unwrap();
    if records.iter().any(|r| r.cluster_id.0 != st.cluster_id) {
        return kn_error(
            StatusCode::FORBIDDEN,
            "KN-403",
            "an agent uploads usage of its own cluster only",
        );
    }
    if let Some(t) = st.refuse_usage_of
        && records.iter().any(|r| r.tenant_id.0 == t)
    {
        return kn_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "KN-422",
            "tenant does not exist in this cluster",
        );
    }
    for r in &records {
        st.usage.insert(
            (r.tenant_id.0, r.project_id.map(|p| p.0), r.hour),
            r.clone(),
        );
    }
    st.usage_batches.push(records);
    StatusCode::NO_CONTENT.into_response()
}

struct FakeManager {
    fake: FakeRef,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeManager {
    async fn start() -> FakeManager {
        let (rev, _) = watch::channel(0);
        let fake = Arc::new(Fake {
            state: Mutex::new(FakeState {
                cluster_id: Uuid::now_v7(),
                ..Default::default()
            }),
            rev,
        });
        let mut m = FakeManager {
            fake,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stop: None,
            task: None,
        };
        m.serve().await;
        m
    }

    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/api/v1/agent/heartbeat", post(heartbeat))
            .route("/api/v1/agent/desired", get(desired))
            .route("/api/v1/agent/status", post(status))
            .route("/api/v1/agent/usage", post(usage))
            .with_state(self.fake.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        }));
    }

    /// Stops the server (connections refused until [`FakeManager::serve`]).
    async fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap();
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// ---------------------------------------------------------------------------------
// Desired objects
// ---------------------------------------------------------------------------------

fn tenant(id: Uuid, name: &str, plan: &str) -> DesiredObject {
    DesiredObject::Tenant {
        id,
        object: Box::new(
            serde_json::from_value(json!({
                "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
                "metadata": {"name": name, "labels": {LABEL_ID: id.to_string(), LABEL_SOURCE: "manager"}},
                "spec": {"plan": plan, "owners": ["alice@example.com"]}
            }))
            .unwrap(),
        ),
    }
}

fn project(id: Uuid, tenant: &str, name: &str) -> DesiredObject {
    DesiredObject::Project {
        id,
        object: Box::new(
            serde_json::from_value(json!({
                "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
                "metadata": {"name": name, "namespace": format!("{tenant}-owner"),
                             "labels": {LABEL_ID: id.to_string(), LABEL_SOURCE: "manager"}},
                "spec": {"tenant": tenant, "access": ["viewer:group:auditors"]}
            }))
            .unwrap(),
        ),
    }
}

fn app(id: Uuid, tenant: &str, project: &str, name: &str) -> DesiredObject {
    DesiredObject::App {
        id,
        object: Box::new(
            serde_json::from_value(json!({
                "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
                "metadata": {"name": name, "namespace": project_namespace(tenant, project),
                             "labels": {LABEL_ID: id.to_string(), LABEL_SOURCE: "manager"}},
                "spec": {"tenant": tenant, "project": project,
                         "components": [{"name": "web", "type": "webservice", "properties": {"image": "nginx:1.27"}}]}
            }))
            .unwrap(),
        ),
    }
}

fn r(kind: ObjectKind, id: Uuid) -> ObjectRef {
    ObjectRef { kind, id }
}

// ---------------------------------------------------------------------------------
// The environment
// ---------------------------------------------------------------------------------

struct Env {
    cluster: Option<TestCluster>,
    client: Client,
    manager: FakeManager,
    stop_controllers: watch::Sender<bool>,
    controllers: Option<tokio::task::JoinHandle<()>>,
    agent: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    metrics: Arc<AgentMetrics>,
}

impl Env {
    /// Cluster + Nova CRDs + controllers + fake manager; the agent is not started.
    async fn start() -> Env {
        Env::start_on(TestCluster::builder()).await
    }

    /// [`Env::start`] on a cluster from `builder` (e.g. with Nodes).
    async fn start_on(builder: kubenova_testkit::TestClusterBuilder) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cluster = builder
            .with_upstream_crds(true)
            .simulate_capsule(true)
            .simulate_kubevela(true)
            .simulate_quota(true)
            .start()
            .await
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        for entry in std::fs::read_dir(dir).unwrap() {
            cluster
                .register_crd_yaml(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                .unwrap();
        }
        let client = cluster.client().unwrap();
        create_namespace(&client, agent::DEFAULT_NAMESPACE).await;
        let ctx = Arc::new(
            Ctx::new(
                client.clone(),
                Arc::new(Catalog::builtin()),
                Arc::new(Metrics::default()),
            )
            .with_backoff(Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(2),
            }),
        );
        let (stop_controllers, rx) = watch::channel(false);
        let controllers = tokio::spawn(controller::run(ctx, RunOptions { concurrency: 4 }, rx));
        Env {
            cluster: Some(cluster),
            client,
            manager: FakeManager::start().await,
            stop_controllers,
            controllers: Some(controllers),
            agent: None,
            metrics: Arc::new(AgentMetrics::default()),
        }
    }

    fn config(&self, token: &str) -> AgentConfig {
        let mut c = AgentConfig::new(self.manager.url(), token);
        c.poll_wait = Duration::from_secs(2);
        c.backoff_min = Duration::from_millis(50);
        c.backoff_max = Duration::from_millis(400);
        c.auth_retry = Duration::from_millis(300);
        c.heartbeat_interval = Duration::from_secs(1);
        c.status_debounce = Duration::from_millis(100);
        c.pending_retry = Duration::from_millis(100);
        c.operator_version = "0.1.0-test".into();
        c.metrics = self.metrics.clone();
        // One sample at start; more only on demand (the usage tests trigger them).
        c.usage_sample_interval = Duration::from_secs(3600);
        c
    }

    fn start_agent_with(&mut self, config: AgentConfig) {
        let (tx, rx) = watch::channel(false);
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            agent::run(client, config, rx).await.unwrap();
        });
        self.agent = Some((tx, task));
    }

    fn start_agent(&mut self) {
        let c = self.config(TOKEN);
        self.start_agent_with(c);
    }

    async fn stop_agent(&mut self) {
        if let Some((tx, task)) = self.agent.take() {
            tx.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the agent stops on shutdown")
                .unwrap();
        }
    }

    async fn stop(mut self) {
        self.stop_agent().await;
        self.manager.halt().await;
        self.stop_controllers.send(true).unwrap();
        if let Some(t) = self.controllers.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap();
        }
        if let Some(c) = self.cluster.take() {
            c.shutdown().await;
        }
    }

    fn fake(&self) -> &Fake {
        &self.manager.fake
    }

    fn dynamic(&self, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let (group, version, plural) = match kind {
            "Tenant" => ("capsule.clastix.io", "v1beta2", "tenants"),
            "Application" => ("core.oam.dev", "v1beta1", "applications"),
            other => panic!("{other}"),
        };
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    async fn nova_tenant(&self, name: &str) -> Option<NovaTenant> {
        Api::<NovaTenant>::all(self.client.clone())
            .get_opt(name)
            .await
            .unwrap()
    }

    async fn nova_project(&self, tenant: &str, name: &str) -> Option<NovaProject> {
        Api::<NovaProject>::namespaced(self.client.clone(), &format!("{tenant}-owner"))
            .get_opt(name)
            .await
            .unwrap()
    }

    async fn nova_app(&self, tenant: &str, project: &str, name: &str) -> Option<NovaApp> {
        Api::<NovaApp>::namespaced(self.client.clone(), &project_namespace(tenant, project))
            .get_opt(name)
            .await
            .unwrap()
    }

    async fn exists(&self, kind: &str, ns: Option<&str>, name: &str) -> bool {
        self.dynamic(kind, ns)
            .get_opt(name)
            .await
            .unwrap()
            .is_some()
    }

    async fn namespace_exists(&self, name: &str) -> bool {
        Api::<Namespace>::all(self.client.clone())
            .get_opt(name)
            .await
            .unwrap()
            .is_some()
    }

    /// Names of the NovaTenants carrying `kubenova.io/id=<id>`.
    async fn tenants_with_id(&self, id: Uuid) -> Vec<String> {
        Api::<NovaTenant>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("{LABEL_ID}={id}")))
            .await
            .unwrap()
            .items
            .iter()
            .map(|t| t.name_any())
            .collect()
    }

    fn applies(&self, kind: &str, result: &str) -> u64 {
        self.metrics
            .applies
            .get_or_create(&vec![
                ("kind".to_owned(), kind.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .get()
    }
}

async fn create_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
}

/// Polls `check` until it returns true, or panics after [`TIMEOUT`].
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_or(what, check, String::new).await
}

/// [`eventually`], with `context` in the panic message.
async fn eventually_or<F, Fut>(what: &str, mut check: F, context: impl Fn() -> String)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}; {}", context());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn annotation(t: &impl ResourceExt, key: &str) -> Option<String> {
    t.annotations().get(key).cloned()
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_applies_reports_ready_then_deltas_update_and_delete() {
    let mut env = Env::start().await;
    let (t, p, a) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    env.fake().put(tenant(t, "acme", "gold"));
    env.fake().put(project(p, "acme", "web"));
    let rev = env.fake().put(app(a, "acme", "web", "shop"));
    assert_eq!(rev, 3);
    env.start_agent();

    // The Nova objects appear, and through the controllers the generated objects.
    let pns = project_namespace("acme", "web");
    eventually("NovaTenant, NovaProject, NovaApp applied", || async {
        env.nova_tenant("acme").await.is_some()
            && env.nova_project("acme", "web").await.is_some()
            && env.nova_app("acme", "web", "shop").await.is_some()
    })
    .await;
    let nt = env.nova_tenant("acme").await.unwrap();
    assert_eq!(nt.labels().get(LABEL_ID), Some(&t.to_string()));
    assert_eq!(
        nt.labels().get(LABEL_SOURCE).map(String::as_str),
        Some("manager")
    );
    assert_eq!(
        annotation(&nt, ANNOTATION_DESIRED_REVISION).as_deref(),
        Some("3")
    );
    assert!(
        nt.managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some(kubenova_api::agent::AGENT_FIELD_MANAGER)),
        "applied with the agent's field manager"
    );
    eventually("Capsule Tenant, namespaces, Application", || async {
        env.exists("Tenant", None, "acme").await
            && env.namespace_exists("acme-owner").await
            && env.namespace_exists(&pns).await
            && env.exists("Application", Some(&pns), "shop").await
    })
    .await;

    // Ready is reported back at revision 3, with KubeVela's phase for the app.
    eventually("Ready reported for all three at revision 3", || async {
        let f = env.fake();
        f.reported(r(ObjectKind::Tenant, t), Phase::Ready, 3)
            && f.reported(r(ObjectKind::Project, p), Phase::Ready, 3)
            && f.reported(r(ObjectKind::App, a), Phase::Ready, 3)
    })
    .await;
    let app_report = env.fake().latest(r(ObjectKind::App, a)).unwrap();
    assert_eq!(app_report.vela_phase.as_deref(), Some("running"));
    assert!(
        app_report
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready")
    );
    eventually("heartbeat reports applied revision 3", || async {
        env.fake()
            .last_heartbeat()
            .is_some_and(|h| h.applied_revision == 3)
    })
    .await;

    // Delta: the tenant's plan changes.
    let rev = env.fake().put(tenant(t, "acme", "platinum"));
    eventually("NovaTenant updated by the delta", || async {
        env.nova_tenant("acme").await.is_some_and(|nt| {
            nt.spec.plan == "platinum"
                && annotation(&nt, ANNOTATION_DESIRED_REVISION) == Some(rev.to_string())
        })
    })
    .await;
    eventually("Ready reported at the new revision", || async {
        env.fake()
            .reported(r(ObjectKind::Tenant, t), Phase::Ready, rev)
    })
    .await;

    // Delta: the app is deleted, then the project.
    env.fake().delete(r(ObjectKind::App, a));
    eventually("NovaApp and its Application deleted", || async {
        env.nova_app("acme", "web", "shop").await.is_none()
            && !env.exists("Application", Some(&pns), "shop").await
    })
    .await;
    env.fake().delete(r(ObjectKind::Project, p));
    eventually("NovaProject deleted", || async {
        env.nova_project("acme", "web").await.is_none()
    })
    .await;
    assert!(env.nova_tenant("acme").await.is_some());
    assert_eq!(env.tenants_with_id(t).await, vec!["acme"]);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_waits_for_its_namespace_without_failing_the_batch() {
    let mut env = Env::start().await;
    let (t, p) = (Uuid::now_v7(), Uuid::now_v7());
    // Revision 1: only the project; its tenant (and so `globex-owner`) does not exist.
    env.fake().put(project(p, "globex", "api"));
    let (tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
    let mut config = env.config(TOKEN);
    config.component_requests = Some(tx);
    let component_states = config.component_states.clone();
    env.start_agent_with(config);
    eventually("the project is pending", || async {
        env.applies("project", "pending") >= 2
    })
    .await;
    assert!(env.nova_project("globex", "api").await.is_none());
    assert_eq!(
        env.fake().last_heartbeat().map(|h| h.applied_revision),
        Some(0),
        "a revision with pending objects is not fully applied"
    );
    // Revision 2: the tenant arrives; the controller creates the owner namespace and
    // the pending project follows.
    env.fake().put(tenant(t, "globex", "baseline"));
    eventually("the pending project is applied", || async {
        env.nova_project("globex", "api").await.is_some()
    })
    .await;
    let np = env.nova_project("globex", "api").await.unwrap();
    assert_eq!(
        annotation(&np, ANNOTATION_DESIRED_REVISION).as_deref(),
        Some("1"),
        "the project carries the revision it came with"
    );
    eventually("project Ready reported, applied revision 2", || async {
        env.fake()
            .reported(r(ObjectKind::Project, p), Phase::Ready, 1)
            && env
                .fake()
                .last_heartbeat()
                .is_some_and(|h| h.applied_revision == 2)
    })
    .await;

    // A component install request travels to the installer's channel.
    let rev = env.fake().request_component("kubevela");
    let got = tokio::time::timeout(TIMEOUT, requests.recv())
        .await
        .expect("component request forwarded")
        .unwrap();
    assert_eq!(got.component, "kubevela");
    eventually("applied revision follows", || async {
        env.fake()
            .last_heartbeat()
            .is_some_and(|h| h.applied_revision == rev)
    })
    .await;

    // A request with an id is queued once, however often the manager re-sends it, and
    // is acknowledged only once the installer has taken it.
    let id = Uuid::now_v7();
    env.fake().request_component_id("capsule", Some(id));
    let got = tokio::time::timeout(TIMEOUT, requests.recv())
        .await
        .expect("component request forwarded")
        .unwrap();
    assert_eq!(got.id, Some(id));
    let rev = env.fake().request_component_id("capsule", Some(id));
    eventually("the re-sent request's revision is applied", || async {
        env.fake()
            .last_heartbeat()
            .is_some_and(|h| h.applied_revision == rev)
    })
    .await;
    assert!(
        requests.try_recv().is_err(),
        "a re-sent request is not queued twice"
    );
    assert!(
        env.fake()
            .last_heartbeat()
            .and_then(|h| h.acknowledged_requests)
            .is_some_and(|a| !a.contains(&id)),
        "not acknowledged before the installer took it"
    );
    component_states.acknowledge(id);
    eventually("the heartbeat acknowledges the request", || async {
        env.fake()
            .last_heartbeat()
            .and_then(|h| h.acknowledged_requests)
            .is_some_and(|a| a.contains(&id))
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_prune_only_manager_objects() {
    let mut env = Env::start().await;
    let nova = Api::<NovaTenant>::all(env.client.clone());
    // A NovaTenant created by hand (no source label) and a manager-sourced leftover the
    // manager does not know anymore.
    for (name, labels) in [
        ("local", json!({})),
        (
            "orphan",
            json!({LABEL_SOURCE: "manager", LABEL_ID: Uuid::now_v7().to_string()}),
        ),
        (
            "gitops",
            json!({LABEL_SOURCE: "gitops", LABEL_ID: Uuid::now_v7().to_string()}),
        ),
    ] {
        let t: NovaTenant = serde_json::from_value(json!({
            "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
            "metadata": {"name": name, "labels": labels},
            "spec": {"plan": "baseline"}
        }))
        .unwrap();
        nova.create(&PostParams::default(), &t).await.unwrap();
    }
    let (acme, beta) = (Uuid::now_v7(), Uuid::now_v7());
    env.fake().put(tenant(acme, "acme", "gold"));
    env.start_agent();
    eventually("acme applied and the orphan pruned", || async {
        env.nova_tenant("acme").await.is_some() && env.nova_tenant("orphan").await.is_none()
    })
    .await;
    eventually("acme Ready reported", || async {
        env.fake()
            .reported(r(ObjectKind::Tenant, acme), Phase::Ready, 1)
    })
    .await;

    // A compacted history: the next answer is a snapshot without acme, with beta.
    env.fake().put(tenant(beta, "beta", "baseline"));
    env.fake().forget_and_compact(r(ObjectKind::Tenant, acme));
    eventually("acme pruned by the snapshot, beta applied", || async {
        env.nova_tenant("acme").await.is_none() && env.nova_tenant("beta").await.is_some()
    })
    .await;
    assert!(env.fake().state.lock().unwrap().snapshots_served >= 2);
    for name in ["local", "gitops"] {
        assert!(
            env.nova_tenant(name).await.is_some(),
            "{name} has no kubenova.io/source=manager label and is never pruned"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_sent_only_on_change_and_once_after_a_restart() {
    let mut env = Env::start().await;
    let t = Uuid::now_v7();
    let tr = r(ObjectKind::Tenant, t);
    env.fake().put(tenant(t, "acme", "gold"));
    env.start_agent();
    eventually("Ready reported", || async {
        env.fake().reported(tr, Phase::Ready, 1)
    })
    .await;

    // Nothing the report carries changes: no status request for 3 s (heartbeats and
    // polls go on), although the object is touched (watch events without a change).
    let requests = env.fake().status_requests();
    let hb = env.fake().heartbeats();
    for i in 0..3 {
        Api::<NovaTenant>::all(env.client.clone())
            .patch(
                "acme",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"example.com/touched": i.to_string()}}}),
                ),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        env.fake().status_requests(),
        requests,
        "no report without a change"
    );
    assert!(env.fake().heartbeats() >= hb + 2, "heartbeats go on");

    // A change is reported.
    let rev = env.fake().put(tenant(t, "acme", "platinum"));
    eventually("Ready at the new revision", || async {
        env.fake().reported(tr, Phase::Ready, rev)
    })
    .await;
    let reports = env.fake().reports_for(tr);
    for pair in reports.windows(2) {
        assert_ne!(pair[0], pair[1], "the same report was sent twice in a row");
    }

    // After a restart the current state is sent once, and only once; the snapshot
    // re-applies nothing (no write to the unchanged object).
    env.stop_agent().await;
    let rv = env.nova_tenant("acme").await.unwrap().resource_version();
    let unchanged = env.applies("tenant", "unchanged");
    let before = env.fake().reports_for(tr).len();
    env.start_agent();
    eventually("the current state is re-sent after the restart", || async {
        env.fake().reports_for(tr).len() > before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = env.fake().reports_for(tr);
    assert_eq!(
        after.len(),
        before + 1,
        "sent exactly once after the restart"
    );
    assert_eq!(after.last().unwrap().status.phase, Phase::Ready);
    assert_eq!(after.last().unwrap().status.observed_revision, Some(rev));
    assert_eq!(env.tenants_with_id(t).await, vec!["acme"]);
    assert_eq!(env.applies("tenant", "unchanged"), unchanged + 1);
    assert_eq!(
        env.nova_tenant("acme").await.unwrap().resource_version(),
        rv,
        "the restart's snapshot wrote nothing"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_resync_repairs_drift_and_writes_nothing_else() {
    let mut env = Env::start().await;
    let (t, p) = (Uuid::now_v7(), Uuid::now_v7());
    env.fake().put(tenant(t, "acme", "gold"));
    env.fake().put(project(p, "acme", "web"));
    let mut config = env.config(TOKEN);
    config.resync_interval = Duration::from_millis(500);
    env.start_agent_with(config);
    eventually("Ready reported", || async {
        env.fake()
            .reported(r(ObjectKind::Project, p), Phase::Ready, 2)
    })
    .await;
    let snapshots = env.fake().state.lock().unwrap().snapshots_served;
    let project_rv = env
        .nova_project("acme", "web")
        .await
        .unwrap()
        .resource_version();
    // Drift: the tenant's plan edited by hand.
    Api::<NovaTenant>::all(env.client.clone())
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"plan": "platinum"}})),
        )
        .await
        .unwrap();
    eventually("the resync restores the desired plan", || async {
        env.nova_tenant("acme")
            .await
            .is_some_and(|nt| nt.spec.plan == "gold")
    })
    .await;
    eventually("more resyncs", || async {
        env.fake().state.lock().unwrap().snapshots_served >= snapshots + 2
    })
    .await;
    assert_eq!(
        env.nova_project("acme", "web")
            .await
            .unwrap()
            .resource_version(),
        project_rv,
        "an unchanged object is not rewritten by a resync"
    );
    env.stop().await;
}

/// Capsule Proxy's Service and CA Secret, and available controller Deployments for
/// Capsule, Capsule Proxy and KubeVela (the testkit runs no workload controllers, so
/// their status is written here, as the simulated component driver does).
async fn install_components(client: &Client) -> String {
    let ca = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n".to_string();
    for ns in ["capsule-system", "vela-system"] {
        create_namespace(client, ns).await;
    }
    let pp = PatchParams::apply("test").force();
    let deployments = [
        ("capsule-system", "capsule-controller-manager"),
        ("capsule-system", "capsule-proxy"),
        ("vela-system", "kubevela-vela-core"),
    ];
    for (ns, name) in deployments {
        let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), ns);
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "manager", "image": "example/manager:1"}]}}}
        });
        api.patch(name, &pp, &Patch::Apply(&d)).await.unwrap();
        let s = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}});
        api.patch_status(name, &pp, &Patch::Apply(&s))
            .await
            .unwrap();
    }
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "capsule-proxy", "namespace": "capsule-system"},
        "spec": {"ports": [{"name": "proxy", "port": 9001, "targetPort": 9001}]}});
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "capsule-system")
        .patch("capsule-proxy", &pp, &Patch::Apply(&svc))
        .await
        .unwrap();
    // `data`, not `stringData`: the testkit does not convert `stringData`.
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "capsule-proxy", "namespace": "capsule-system"},
        "data": {"ca": b64(&ca)}});
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "capsule-system")
        .patch("capsule-proxy", &pp, &Patch::Apply(&secret))
        .await
        .unwrap();
    ca
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_reports_capabilities_and_the_proxy_endpoint() {
    let mut env = Env::start().await;
    env.start_agent();
    eventually("hello", || async { env.fake().last_heartbeat().is_some() }).await;
    let hello = env.fake().last_heartbeat().unwrap();
    assert_eq!(hello.operator_version, "0.1.0-test");
    assert!(hello.kubernetes_version.is_some());
    assert!(hello.proxy.is_none(), "no Capsule Proxy yet");
    assert!(!hello.capabilities.capsule, "nothing is assumed");

    let ca = install_components(&env.client).await;
    eventually_or(
        "capabilities and proxy in the heartbeat",
        || async {
            env.fake().last_heartbeat().is_some_and(|h| {
                h.capabilities.capsule
                    && h.capabilities.kube_vela
                    && h.capabilities.capsule_proxy
                    && h.proxy.as_ref().is_some_and(|p| {
                        p.url == "https://capsule-proxy.capsule-system.svc:9001"
                            && p.ca_data.as_deref() == Some(b64(&ca).as_str())
                    })
            })
        },
        || format!("last heartbeat: {:?}", env.fake().last_heartbeat()),
    )
    .await;
    let hb = env.fake().last_heartbeat().unwrap();
    assert!(!hb.capabilities.cert_manager, "cert-manager is not served");
    let phase = |name: &str| {
        hb.components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.phase)
    };
    assert_eq!(phase("capsule"), Some(ComponentPhase::Ready));
    assert_eq!(phase("cert-manager"), Some(ComponentPhase::Absent));
    assert_eq!(phase("operator"), Some(ComponentPhase::Ready));

    // An externally reachable URL on the Service wins over the in-cluster one.
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(env.client.clone(), "capsule-system")
        .patch(
            "capsule-proxy",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {agent::ANNOTATION_PROXY_URL: "https://proxy.example.com:9001"}}})),
        )
        .await
        .unwrap();
    eventually("annotated proxy URL", || async {
        env.fake().last_heartbeat().is_some_and(|h| {
            h.proxy
                .is_some_and(|p| p.url == "https://proxy.example.com:9001")
        })
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), agent::DEFAULT_NAMESPACE);
    assert!(
        cms.get_opt(PROXY_CONFIGMAP).await.unwrap().is_none(),
        "no fallback while the manager is reachable"
    );

    // The manager goes away: the endpoint is published in the ConfigMap.
    env.fake().set_down(true);
    eventually("proxy ConfigMap", || async {
        cms.get_opt(PROXY_CONFIGMAP)
            .await
            .unwrap()
            .is_some_and(|cm| {
                let data = cm.data.unwrap_or_default();
                data.get("url").map(String::as_str) == Some("https://proxy.example.com:9001")
                    && data.get("caData") == Some(&b64(&ca))
            })
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_outage_keeps_reconciling_then_resyncs_without_duplicates() {
    let mut env = Env::start().await;
    install_components(&env.client).await;
    let mut config = env.config(TOKEN);
    config.proxy_url = Some("https://proxy.example.com".into());
    env.start_agent_with(config);
    let (t, p, beta) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    env.fake().put(tenant(t, "acme", "gold"));
    env.fake().put(project(p, "acme", "web"));
    eventually("Ready reported before the outage", || async {
        env.fake()
            .reported(r(ObjectKind::Tenant, t), Phase::Ready, 2)
            && env
                .fake()
                .reported(r(ObjectKind::Project, p), Phase::Ready, 2)
    })
    .await;

    // Outage, first as 503s, then as a stopped server.
    env.fake().set_down(true);
    let desired_before = env.fake().put(tenant(beta, "beta", "baseline"));
    // Drift while the manager is down: the controllers repair it.
    env.dynamic("Tenant", None)
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    eventually("Capsule Tenant recreated by the controller", || async {
        env.exists("Tenant", None, "acme").await
    })
    .await;
    // A status change during the outage (spec edited by hand to an unknown plan).
    Api::<NovaTenant>::all(env.client.clone())
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"plan": "no-such-plan"}})),
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), agent::DEFAULT_NAMESPACE);
    eventually("proxy ConfigMap written during the outage", || async {
        cms.get_opt(PROXY_CONFIGMAP).await.unwrap().is_some()
    })
    .await;
    env.manager.halt().await;
    env.fake().set_down(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Nothing was deleted because the manager was unreachable.
    assert!(env.nova_tenant("acme").await.is_some());
    assert!(env.nova_project("acme", "web").await.is_some());
    assert!(env.nova_tenant("beta").await.is_none());
    assert!(
        env.fake()
            .latest(r(ObjectKind::Tenant, t))
            .is_some_and(|x| x.status.phase == Phase::Ready),
        "the manager has not heard of the Degraded state yet"
    );

    // The manager returns on the same address.
    env.manager.serve().await;
    eventually("beta applied after the reconnect", || async {
        env.nova_tenant("beta").await.is_some()
    })
    .await;
    eventually(
        "buffered Degraded report and beta Ready delivered",
        || async {
            env.fake()
                .latest(r(ObjectKind::Tenant, t))
                .is_some_and(|x| x.status.phase == Phase::Degraded)
                && env
                    .fake()
                    .reported(r(ObjectKind::Tenant, beta), Phase::Ready, desired_before)
        },
    )
    .await;
    // No duplicates: one NovaTenant per id, one NovaProject.
    assert_eq!(env.tenants_with_id(t).await, vec!["acme"]);
    assert_eq!(env.tenants_with_id(beta).await, vec!["beta"]);
    let all: Vec<String> = Api::<NovaTenant>::all(env.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|t| t.name_any())
        .collect();
    assert_eq!(all.len(), 2, "{all:?}");
    let projects = Api::<NovaProject>::all(env.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(projects.len(), 1);
    eventually("heartbeats again", || async {
        env.fake()
            .last_heartbeat()
            .is_some_and(|h| h.applied_revision == desired_before)
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_applies_nothing_and_retries_slowly() {
    let mut env = Env::start().await;
    env.fake().put(tenant(Uuid::now_v7(), "acme", "gold"));
    let config = env.config("kna_wrong_credential");
    env.start_agent_with(config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = env.fake().state.lock().unwrap().unauthorized;
    // Three loops, one request each per ~300 ms (auth_retry with jitter) at most.
    assert!(refused >= 3, "retried: {refused}");
    assert!(refused <= 3 * 8, "slowly: {refused}");
    assert!(env.nova_tenant("acme").await.is_none());
    assert!(env.fake().last_heartbeat().is_none());
    env.stop().await;
}

/// Holds `shop`'s NovaApp in `Terminating` with a foreign finalizer, the way a slow
/// cleanup would.
async fn hold_app(env: &Env, pns: &str, hold: bool) {
    let finalizers: Vec<String> = if hold {
        let live = env.nova_app("acme", "web", "shop").await.unwrap();
        let mut f = live.finalizers().to_vec();
        f.push("example.com/hold".into());
        f
    } else {
        env.nova_app("acme", "web", "shop")
            .await
            .map(|a| {
                a.finalizers()
                    .iter()
                    .filter(|f| *f != "example.com/hold")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    Api::<NovaApp>::namespaced(env.client.clone(), pns)
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
        )
        .await
        .unwrap();
}

/// An app deleted and re-created under the same name while the old object still
/// finalizes is applied once the old one is gone, never onto it (where it would vanish
/// with it until the next resync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_recreated_while_the_old_object_finalizes_is_not_lost() {
    let mut env = Env::start().await;
    let (t, p, old) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    env.fake().put(tenant(t, "acme", "gold"));
    env.fake().put(project(p, "acme", "web"));
    let rev = env.fake().put(app(old, "acme", "web", "shop"));
    env.start_agent();
    eventually("the first app Ready", || async {
        env.fake()
            .reported(r(ObjectKind::App, old), Phase::Ready, rev)
    })
    .await;
    let pns = project_namespace("acme", "web");
    hold_app(&env, &pns, true).await;

    env.fake().delete(r(ObjectKind::App, old));
    eventually("the old NovaApp terminating", || async {
        env.nova_app("acme", "web", "shop")
            .await
            .is_some_and(|a| a.metadata.deletion_timestamp.is_some())
    })
    .await;
    let new = Uuid::now_v7();
    let rev = env.fake().put(app(new, "acme", "web", "shop"));
    // The agent sees the new record while the old object is still there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hold_app(&env, &pns, false).await;

    eventually("the new app created afresh and Ready", || async {
        env.fake()
            .reported(r(ObjectKind::App, new), Phase::Ready, rev)
    })
    .await;
    let live = env.nova_app("acme", "web", "shop").await.unwrap();
    assert_eq!(live.labels().get(LABEL_ID), Some(&new.to_string()));
    assert!(live.metadata.deletion_timestamp.is_none());
    assert!(env.exists("Application", Some(&pns), "shop").await);
    env.stop().await;
}

/// A record deleted and re-created under the same name while the operator was away
/// comes back in a snapshot: the apply takes the old object over, and the prune (from a
/// list read after the applies) leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_recreated_while_the_operator_was_away_survives_the_snapshot() {
    let mut env = Env::start().await;
    let (t, p, old) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    env.fake().put(tenant(t, "acme", "gold"));
    env.fake().put(project(p, "acme", "web"));
    let rev = env.fake().put(app(old, "acme", "web", "shop"));
    env.start_agent();
    eventually("the first app Ready", || async {
        env.fake()
            .reported(r(ObjectKind::App, old), Phase::Ready, rev)
    })
    .await;
    env.stop_agent().await;

    // Away: the record is deleted and re-created; the history is compacted, so the
    // agent gets a snapshot when it is back.
    env.fake().forget_and_compact(r(ObjectKind::App, old));
    let new = Uuid::now_v7();
    let rev = env.fake().put(app(new, "acme", "web", "shop"));
    env.start_agent();
    eventually("the new app Ready", || async {
        env.fake()
            .reported(r(ObjectKind::App, new), Phase::Ready, rev)
    })
    .await;
    // And it stays: nothing prunes it afterwards.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = env.nova_app("acme", "web", "shop").await.unwrap();
    assert_eq!(live.labels().get(LABEL_ID), Some(&new.to_string()));
    assert!(live.metadata.deletion_timestamp.is_none());
    env.stop().await;
}

// ---------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------

async fn create<K>(client: &Client, ns: &str, v: serde_json::Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap()
}

async fn set_status<K>(client: &Client, ns: &str, name: &str, status: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
}

/// Tenant `acme` with project `web` (and an app) applied through a first agent run
/// without usage; then real workload objects in their namespaces: in `web`, a running
/// pod (2 × 250m/64Mi requests, 2 × 500m/128Mi limits), a finished pod, a bound 5Gi PVC
/// of class `fast`, a LoadBalancer Service and a ResourceQuota (pods 1, requests.cpu
/// 400m, so the CPU quota is exceeded); in `acme-apps`, a pod requesting 1 CPU.
async fn usage_fixture(env: &mut Env) -> (Uuid, Uuid) {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceQuota, Service};
    let (t, p, a) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    env.fake().put(tenant(t, "acme", "gold"));
    env.fake().put(project(p, "acme", "web"));
    env.fake().put(app(a, "acme", "web", "site"));
    let mut config = env.config(TOKEN);
    config.usage_sample_interval = Duration::ZERO;
    env.start_agent_with(config);
    let web = project_namespace("acme", "web");
    eventually("namespaces and the Application", || async {
        env.namespace_exists(&web).await
            && env.namespace_exists("acme-apps").await
            && env.exists("Application", Some(&web), "site").await
    })
    .await;
    env.stop_agent().await;
    let c = &env.client;
    let container = |name: &str| {
        json!({"name": name, "image": "nginx",
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}})
    };
    create::<Pod>(c, &web, json!({"metadata": {"name": "web-0"}, "spec": {"containers": [container("a"), container("b")]}})).await;
    set_status::<Pod>(c, &web, "web-0", json!({"phase": "Running"})).await;
    create::<Pod>(
        c,
        &web,
        json!({"metadata": {"name": "job"}, "spec": {"containers": [container("a")]}}),
    )
    .await;
    set_status::<Pod>(c, &web, "job", json!({"phase": "Succeeded"})).await;
    create::<PersistentVolumeClaim>(c, &web, json!({"metadata": {"name": "data"},
        "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}})).await;
    set_status::<PersistentVolumeClaim>(
        c,
        &web,
        "data",
        json!({"phase": "Bound", "capacity": {"storage": "5Gi"}}),
    )
    .await;
    create::<Service>(c, &web, json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})).await;
    create::<ResourceQuota>(c, &web, json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "1", "requests.cpu": "400m"}}})).await;
    create::<Pod>(c, "acme-apps", json!({"metadata": {"name": "worker"},
        "spec": {"containers": [{"name": "w", "image": "busybox", "resources": {"requests": {"cpu": "1"}}}]}})).await;
    eventually("the quota controller fills status.used", || async {
        Api::<ResourceQuota>::namespaced(c.clone(), &web)
            .get("compute")
            .await
            .unwrap()
            .status
            .and_then(|s| s.used)
            .is_some_and(|u| u.get("requests.cpu").is_some_and(|q| q.0 == "500m"))
    })
    .await;
    (t, p)
}

fn usage_of(env: &Env, t: Uuid, p: Option<Uuid>) -> Option<UsageRecord> {
    let st = env.fake().state.lock().unwrap();
    st.usage
        .iter()
        .filter(|((tt, pp, _), _)| *tt == t && *pp == p)
        .map(|(_, r)| r.clone())
        .next_back()
}

/// The capacity comes with every record: the Nodes' allocatable and the requests of the
/// pods not running on a listed Node (pending, or on a Node that is not listed), so that
/// the manager can refuse a record claiming more than the cluster can hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_the_cluster_capacity_from_its_nodes() {
    use k8s_openapi::api::core::v1::Pod;
    let mut env = Env::start_on(
        TestCluster::builder()
            .node("node-a", "4", "16Gi")
            .node("node-b", "2500m", "8Gi"),
    )
    .await;
    let (t, p) = usage_fixture(&mut env).await;
    // On node-a, running: within its allocatable. The fixture's `web-0` (500m, 128Mi;
    // Running on no Node) and `worker` (1 CPU; not running) count as pending.
    let c = env.client.clone();
    let container = json!({"name": "main", "image": "nginx",
        "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}});
    create::<Pod>(
        &c,
        "acme-apps",
        json!({"metadata": {"name": "placed"},
        "spec": {"nodeName": "node-a", "containers": [container.clone()]}}),
    )
    .await;
    set_status::<Pod>(&c, "acme-apps", "placed", json!({"phase": "Running"})).await;
    // On a Node that is gone: pending too.
    create::<Pod>(
        &c,
        "acme-apps",
        json!({"metadata": {"name": "orphan"},
        "spec": {"nodeName": "node-gone", "containers": [container]}}),
    )
    .await;
    set_status::<Pod>(&c, "acme-apps", "orphan", json!({"phase": "Running"})).await;
    let config = env.config(TOKEN);
    let trigger = config.usage_trigger.clone();
    env.start_agent_with(config);
    trigger.collect_now();
    eventually("the tenant's hour with its pods reported", || async {
        usage_of(&env, t, None).is_some_and(|r| r.pods == 4) && usage_of(&env, t, Some(p)).is_some()
    })
    .await;
    let tenant_rec = usage_of(&env, t, None).unwrap();
    assert_eq!(tenant_rec.cpu_millicores, 1500 + 2000 + 2000);
    let expected = ClusterCapacity {
        nodes: 2,
        cpu_millicores: 6500,
        memory_bytes: 24 << 30,
        pending_cpu_millicores: 500 + 1000 + 2000,
        pending_memory_bytes: (128 << 20) + (1 << 30),
    };
    assert_eq!(
        tenant_rec.cluster_capacity,
        Some(expected),
        "{tenant_rec:?}"
    );
    assert_eq!(
        usage_of(&env, t, Some(p)).unwrap().cluster_capacity,
        Some(expected)
    );
    kubenova_api::validate::Validate::validate(&tenant_rec).unwrap();
    env.stop().await;
}

/// Without Nodes to list, the records carry a capacity of zero Nodes in which every
/// pod counts as pending: never a refusal of what was measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_measured_from_the_cluster_and_uploaded_idempotently() {
    let mut env = Env::start().await;
    let (t, p) = usage_fixture(&mut env).await;
    let config = env.config(TOKEN);
    let trigger = config.usage_trigger.clone();
    env.start_agent_with(config);
    trigger.collect_now();
    eventually("the tenant's and the project's hour reported", || async {
        usage_of(&env, t, None).is_some() && usage_of(&env, t, Some(p)).is_some()
    })
    .await;
    let cluster = env.fake().state.lock().unwrap().cluster_id;
    let tenant_rec = usage_of(&env, t, None).unwrap();
    assert_eq!(tenant_rec.cluster_id.0, cluster);
    assert_eq!(tenant_rec.hour.minute(), 0);
    assert_eq!(tenant_rec.namespaces, 3, "{tenant_rec:?}");
    assert_eq!(tenant_rec.pods, 2, "the finished pod does not count");
    assert_eq!(tenant_rec.cpu_millicores, 1500);
    let capacity = tenant_rec.cluster_capacity.unwrap();
    assert_eq!(
        (
            capacity.nodes,
            capacity.cpu_millicores,
            capacity.pending_cpu_millicores
        ),
        (0, 0, 1500),
        "{capacity:?}"
    );
    kubenova_api::validate::Validate::validate(&tenant_rec).unwrap();
    assert_eq!(tenant_rec.cpu_limit_millicores, 1000);
    assert_eq!(tenant_rec.memory_bytes, 128 << 20);
    assert_eq!(tenant_rec.memory_limit_bytes, 256 << 20);
    assert_eq!(tenant_rec.storage_bytes, 5 << 30);
    assert_eq!(
        tenant_rec.storage_by_class,
        BTreeMap::from([("fast".to_string(), 5 << 30)])
    );
    assert_eq!((tenant_rec.load_balancers, tenant_rec.apps), (1, 1));
    let exceeded: Vec<_> = tenant_rec
        .quotas
        .iter()
        .filter(|q| q.exceeded())
        .map(|q| (q.resource.as_str(), q.used.to_string(), q.hard.to_string()))
        .collect();
    assert_eq!(
        exceeded,
        [("requests.cpu", "500m".to_string(), "400m".to_string())]
    );
    assert_eq!(tenant_rec.quotas.len(), 2, "{:?}", tenant_rec.quotas);
    let project_rec = usage_of(&env, t, Some(p)).unwrap();
    assert_eq!(
        (
            project_rec.namespaces,
            project_rec.pods,
            project_rec.cpu_millicores,
            project_rec.load_balancers,
            project_rec.apps
        ),
        (1, 1, 500, 1, 1)
    );
    // On demand again: the same hour is re-sent and replaces itself (no new keys).
    let batches = env.fake().state.lock().unwrap().usage_batches.len();
    let keys = env.fake().state.lock().unwrap().usage.len();
    trigger.collect_now();
    eventually("a second report", || async {
        env.fake().state.lock().unwrap().usage_batches.len() > batches
    })
    .await;
    let (stored, hours) = {
        let st = env.fake().state.lock().unwrap();
        let hours: std::collections::BTreeSet<_> = st.usage.keys().map(|k| k.2).collect();
        (st.usage.len(), hours.len())
    };
    // (Unless the hour turned meanwhile, the keys are the same.)
    assert_eq!(stored, keys * hours);
    assert_eq!(usage_of(&env, t, None).unwrap().cpu_millicores, 1500);
    env.stop().await;
}

/// The series of the tenant gauges on a registry, with their values.
fn tenant_series(registry: &prometheus_client::registry::Registry) -> BTreeMap<String, f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with("kubenova_tenant_"))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The usage loop's samples set the tenant gauges, labelled with the NovaTenant's name,
/// and the agent's stop removes every series (a replica that no longer samples exposes
/// none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_samples_set_the_tenant_gauges_until_the_agent_stops() {
    let mut env = Env::start().await;
    usage_fixture(&mut env).await;
    let mut registry = prometheus_client::registry::Registry::default();
    env.metrics.register(&mut registry);
    assert!(tenant_series(&registry).is_empty());
    // One sample at start.
    env.start_agent();
    eventually("the tenant gauges of acme", || async {
        tenant_series(&registry).contains_key(r#"kubenova_tenant_pods{tenant="acme"}"#)
    })
    .await;
    let expected: BTreeMap<String, f64> = [
        ("kubenova_tenant_cpu_requests_cores", "", 1.5),
        ("kubenova_tenant_cpu_limits_cores", "", 1.0),
        (
            "kubenova_tenant_memory_requests_bytes",
            "",
            f64::from(128u32 << 20),
        ),
        (
            "kubenova_tenant_memory_limits_bytes",
            "",
            f64::from(256u32 << 20),
        ),
        (
            "kubenova_tenant_storage_bytes",
            r#",storage_class="fast""#,
            (5u64 << 30) as f64,
        ),
        ("kubenova_tenant_pods", "", 2.0),
        ("kubenova_tenant_apps", "", 1.0),
        ("kubenova_tenant_namespaces", "", 3.0),
        ("kubenova_tenant_load_balancers", "", 1.0),
        // The quota "compute" of the project: 1 of 1 pod, 500m of 400m CPU.
        (
            "kubenova_tenant_quota_used_ratio",
            r#",resource="pods""#,
            1.0,
        ),
        (
            "kubenova_tenant_quota_used_ratio",
            r#",resource="requests.cpu""#,
            1.25,
        ),
        ("kubenova_tenant_quotas_exceeded", "", 1.0),
    ]
    .into_iter()
    .map(|(m, extra, v)| (format!(r#"{m}{{tenant="acme"{extra}}}"#), v))
    .collect();
    let mut got = tenant_series(&registry);
    let sampled_at = got
        .remove(r#"kubenova_tenant_usage_sample_timestamp_seconds{tenant="acme"}"#)
        .unwrap();
    // Its NovaTenant and NovaProject, in whatever phase the controllers reached.
    let mut objects = BTreeMap::new();
    got.retain(|series, n| {
        let Some(labels) = series.strip_prefix(r#"kubenova_tenant_objects{tenant="acme",kind=""#)
        else {
            return true;
        };
        let kind = labels.split('"').next().unwrap().to_owned();
        *objects.entry(kind).or_insert(0.0) += *n;
        false
    });
    assert_eq!(
        objects,
        BTreeMap::from([("project".to_owned(), 1.0), ("tenant".to_owned(), 1.0)])
    );
    assert_eq!(got, expected);
    let age = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9 - sampled_at;
    assert!((0.0..60.0).contains(&age), "sampled {age} s ago");
    env.stop_agent().await;
    assert!(
        tenant_series(&registry).is_empty(),
        "{:?}",
        tenant_series(&registry)
    );
    // An agent aborted (as the operator does when its replica is deposed) too.
    env.start_agent();
    eventually("the tenant gauges again", || async {
        !tenant_series(&registry).is_empty()
    })
    .await;
    let (_, task) = env.agent.take().unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(
        tenant_series(&registry).is_empty(),
        "{:?}",
        tenant_series(&registry)
    );
    env.stop().await;
}

/// A collection keeps of each listed object only what the sample reads (at 10,000 pods
/// the objects as listed take hundreds of MiB at once), and samples the same as the
/// objects as listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_keeps_only_what_the_sample_reads() {
    use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, ResourceQuota, Service};
    use kubenova_reconcile::usage::{Inventory, sample};
    let mut env = Env::start().await;
    usage_fixture(&mut env).await;
    let c = &env.client;
    let web = project_namespace("acme", "web");
    // What a kubelet reports of a running pod, none of which the sample reads.
    let now = "2026-12-07T10:00:00Z";
    set_status::<Pod>(
        c,
        &web,
        "web-0",
        json!({
        "phase": "Running", "podIP": "10.244.0.7", "startTime": now,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": [{"name": "a", "image": "nginx", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {"startedAt": now}}}]}),
    )
    .await;

    let inv = agent::collect_inventory(c).await.unwrap();
    async fn all<K>(c: &Client) -> Vec<K>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::<K>::all(c.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }
    let vela = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "core.oam.dev",
        "v1beta1",
        "Application",
    ));
    let listed = Inventory {
        namespaces: all::<Namespace>(c).await,
        tenants: all::<NovaTenant>(c).await,
        projects: all::<NovaProject>(c).await,
        pods: all::<Pod>(c).await,
        pvcs: all::<PersistentVolumeClaim>(c).await,
        services: all::<Service>(c).await,
        quotas: all::<ResourceQuota>(c).await,
        applications: Api::<DynamicObject>::all_with(c.clone(), &vela)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|a| a.metadata)
            .collect(),
        nodes: Some(all::<Node>(c).await),
    };
    let s = sample(&inv);
    assert_eq!(s.scopes.len(), 2, "the tenant and its project");
    assert_eq!(s, sample(&listed));

    let web0 = |pods: &[Pod]| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some("web-0"))
            .cloned()
            .unwrap()
    };
    let (kept, as_listed) = (web0(&inv.pods), web0(&listed.pods));
    let (status, listed_status) = (kept.status.unwrap(), as_listed.status.unwrap());
    assert!(listed_status.container_statuses.is_some() && as_listed.metadata.uid.is_some());
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(
        (status.conditions, status.container_statuses, status.pod_ip),
        (None, None, None),
        "pod statuses are not kept"
    );
    assert_eq!(
        (kept.metadata.uid, kept.metadata.managed_fields),
        (None, None),
        "metadata other than name, namespace (and labels where attribution reads them) is not kept"
    );
    let spec = kept.spec.unwrap();
    assert_eq!(spec.containers.len(), 2);
    assert!(
        spec.containers
            .iter()
            .all(|c| c.image.is_none() && c.resources.is_some())
    );
    assert!(
        inv.services
            .iter()
            .all(|s| s.spec.as_ref().is_some_and(|s| s.ports.is_none()))
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_hours_survive_an_outage_and_a_restart() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let mut env = Env::start().await;
    let (t, p) = usage_fixture(&mut env).await;
    let config = env.config(TOKEN);
    let trigger = config.usage_trigger.clone();
    let heartbeats = env.fake().heartbeats();
    env.start_agent_with(config);
    eventually("connected (the cluster id is known)", || async {
        env.fake().heartbeats() > heartbeats
    })
    .await;
    env.fake().set_down(true);
    trigger.collect_now();
    let kube = env.client.clone();
    let buffer = || {
        let api = Api::<ConfigMap>::namespaced(kube.clone(), agent::DEFAULT_NAMESPACE);
        async move {
            api.get_opt(kubenova_api::agent::USAGE_CONFIGMAP)
                .await
                .unwrap()
                .and_then(|cm| cm.data)
                .and_then(|d| d.get(kubenova_api::agent::USAGE_CONFIGMAP_KEY).cloned())
                .unwrap_or_default()
        }
    };
    eventually("the unsent hour is kept in the ConfigMap", || async {
        buffer().await.contains(&t.to_string())
    })
    .await;
    let buffered: Vec<UsageRecord> = serde_json::from_str(&buffer().await).unwrap();
    assert_eq!(buffered.len(), 2, "the tenant and its project");
    assert!(env.fake().state.lock().unwrap().usage.is_empty());
    // Restart while the manager is still down, then it comes back.
    env.stop_agent().await;
    let config = env.config(TOKEN);
    env.start_agent_with(config);
    env.fake().set_down(false);
    eventually("the buffered hour arrives after the restart", || async {
        usage_of(&env, t, None).is_some() && usage_of(&env, t, Some(p)).is_some()
    })
    .await;
    for r in &buffered {
        let got = usage_of(&env, t, r.project_id.map(|p| p.0)).unwrap();
        assert_eq!(
            &got, r,
            "sent as buffered (no sample of the new run was reported)"
        );
    }
    eventually("the buffer is emptied", || async {
        buffer().await.is_empty()
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_manager_rejects_are_isolated_and_the_rest_delivered() {
    let mut env = Env::start().await;
    let (t, p) = usage_fixture(&mut env).await;
    // A second tenant that the manager refuses.
    let other = Uuid::now_v7();
    env.fake().put(tenant(other, "beta", "gold"));
    env.fake().state.lock().unwrap().refuse_usage_of = Some(other);
    let config = env.config(TOKEN);
    let trigger = config.usage_trigger.clone();
    env.start_agent_with(config);
    eventually("beta's namespaces", || async {
        env.namespace_exists("beta-apps").await
    })
    .await;
    trigger.collect_now();
    eventually("acme's records delivered", || async {
        usage_of(&env, t, None).is_some() && usage_of(&env, t, Some(p)).is_some()
    })
    .await;
    eventually("beta's record dropped", || async {
        env.metrics.usage_dropped.get() >= 1
    })
    .await;
    assert!(usage_of(&env, other, None).is_none());
    env.stop().await;
}

/// The operator stops the agent with its term signal when it loses leadership. An apply
/// in flight at that moment must stop writing at once: the new leader may already have
/// applied a newer snapshot, and the deposed replica's forced applies would revert it.
/// Applies are held by the testkit so that exactly the first wave of concurrent applies
/// is on the wire at the step-down, and nothing else can be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_agent_sends_no_write_after_the_step_down() {
    deposed_mid_apply(StepDown::TermSignal).await;
}

/// The same with the elector's own flag as the fence (what the operator passes): writes
/// stop on the step-down itself, before any term signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leadership_fence_stops_an_apply_in_flight() {
    deposed_mid_apply(StepDown::Fence).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StepDown {
    TermSignal,
    Fence,
}

async fn deposed_mid_apply(how: StepDown) {
    let mut env = Env::start().await;
    const TENANTS: usize = 20;
    // The agent applies up to 8 objects of a kind at once.
    const WAVE: u64 = 8;
    for i in 0..TENANTS {
        env.fake()
            .put(tenant(Uuid::now_v7(), &format!("fenced-{i:02}"), "gold"));
    }
    let hold = env
        .cluster
        .as_ref()
        .unwrap()
        .faults()
        .hold(Fault::verb("patch").resource("novatenants"));
    let (leading_tx, leading) = watch::channel(true);
    let mut config = env.config(TOKEN);
    if how == StepDown::Fence {
        config.fence = agent::Fence::leading(leading);
    }
    env.start_agent_with(config);
    tokio::time::timeout(TIMEOUT, hold.wait_held(WAVE))
        .await
        .expect("the first wave of applies reaches the API server");
    // Every apply the agent may run at once waits at the server: no other write is on
    // the wire (no NovaTenant exists yet, so the controllers patch none). Step down now.
    let (term, mut task) = env.agent.take().unwrap();
    let stopped_while_held = match how {
        StepDown::TermSignal => {
            term.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_ok()
        }
        StepDown::Fence => {
            leading_tx.send(false).unwrap();
            // The other loops of the agent run on (the operator aborts them); give the
            // desired loop time to send anything it still would.
            tokio::time::sleep(Duration::from_millis(300)).await;
            true
        }
    };
    let arrived_while_held = hold.arrived();
    // The held requests (sent while leading) may land now; nothing else may follow.
    hold.release();
    if !stopped_while_held {
        tokio::time::timeout(TIMEOUT, &mut task)
            .await
            .expect("the agent stops")
            .unwrap();
    }
    // Whatever the deposed agent still sends lands within this pause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written = Api::<NovaTenant>::all(env.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|t| t.name_any().starts_with("fenced-"))
        .count();
    assert!(
        written as u64 <= WAVE,
        "{written} of {TENANTS} NovaTenants applied: only the {WAVE} applies on the wire at \
         the step-down may land, the deposed agent sent more"
    );
    assert_eq!(
        (arrived_while_held, hold.arrived()),
        (WAVE, WAVE),
        "no apply sent after the step-down"
    );
    assert!(
        stopped_while_held,
        "the agent stops on step-down without waiting for its in-flight applies"
    );
    drop(hold);
    if !task.is_finished() {
        term.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the agent stops on shutdown")
            .unwrap();
    }
    env.stop().await;
}
