//! The three controllers, run in-process against a `kubenova-testkit` cluster with the
//! unmodified upstream Capsule/KubeVela CRDs, the committed Nova CRDs and the simulated
//! Capsule and KubeVela controllers.
#![allow(clippy::unwrap_used, missing_docs)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{CONDITION_DEGRADED, NovaApp, NovaPhase, NovaProject, NovaTenant};
use kubenova_reconcile::controller::{self, Backoff, Ctx, Metrics, RunOptions};
use kubenova_reconcile::project_namespace;
use kubenova_testkit::TestCluster;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Env {
    cluster: Option<TestCluster>,
    client: Client,
    ctx: Arc<Ctx>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Env {
    async fn start() -> Env {
        Env::start_with(true).await
    }

    /// With `capsule == false`, no simulated Capsule: nothing but the operator labels
    /// namespaces (Capsule Tenants then never become ready).
    async fn start_with(capsule: bool) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cluster = TestCluster::builder()
            .with_upstream_crds(true)
            .simulate_capsule(capsule)
            .simulate_kubevela(true)
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
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(controller::run(
            ctx.clone(),
            RunOptions { concurrency: 4 },
            rx,
        ));
        Env {
            cluster: Some(cluster),
            client,
            ctx,
            stop,
            task: Some(task),
        }
    }

    /// Stops the controllers and starts them again with a fresh context (empty caches,
    /// nothing applied by this process yet), as an operator restart does.
    async fn restart(&mut self) {
        self.stop.send(true).unwrap();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("controllers stop on shutdown")
                .unwrap();
        }
        self.ctx = Arc::new(Ctx::new(
            self.client.clone(),
            Arc::new(Catalog::builtin()),
            Arc::new(Metrics::default()),
        ));
        let (stop, rx) = tokio::sync::watch::channel(false);
        self.stop = stop;
        self.task = Some(tokio::spawn(controller::run(
            self.ctx.clone(),
            RunOptions { concurrency: 4 },
            rx,
        )));
    }

    async fn stop(mut self) {
        self.stop.send(true).unwrap();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("controllers stop on shutdown")
                .unwrap();
        }
        if let Some(c) = self.cluster.take() {
            c.shutdown().await;
        }
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

    async fn capsule_tenant(&self, name: &str) -> Option<Value> {
        self.dynamic("Tenant", None)
            .get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    async fn namespace_exists(&self, name: &str) -> bool {
        Api::<Namespace>::all(self.client.clone())
            .get_opt(name)
            .await
            .unwrap()
            .is_some()
    }

    async fn create_tenant(&self, name: &str, spec: Value) -> NovaTenant {
        let nt: NovaTenant = serde_json::from_value(json!({
            "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        Api::<NovaTenant>::all(self.client.clone())
            .create(&PostParams::default(), &nt)
            .await
            .unwrap()
    }

    async fn create_project(&self, tenant: &str, name: &str, spec: Value) -> NovaProject {
        let mut spec = spec;
        spec["tenant"] = json!(tenant);
        let ns = format!("{tenant}-owner");
        let np: NovaProject = serde_json::from_value(json!({
            "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
            "metadata": {"name": name, "namespace": ns}, "spec": spec
        }))
        .unwrap();
        Api::<NovaProject>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &np)
            .await
            .unwrap()
    }

    async fn tenant(&self, name: &str) -> Option<NovaTenant> {
        Api::<NovaTenant>::all(self.client.clone())
            .get_opt(name)
            .await
            .unwrap()
    }

    async fn project(&self, tenant: &str, name: &str) -> Option<NovaProject> {
        Api::<NovaProject>::namespaced(self.client.clone(), &format!("{tenant}-owner"))
            .get_opt(name)
            .await
            .unwrap()
    }

    async fn tenant_ready(&self, name: &str) -> bool {
        self.tenant(name)
            .await
            .and_then(|t| t.status)
            .and_then(|s| s.phase)
            == Some(NovaPhase::Ready)
    }
}

/// Polls `check` until it returns true, or panics after [`TIMEOUT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
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
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hard(tenant: &Value) -> Value {
    tenant
        .pointer("/spec/resourceQuotas/items/0/hard")
        .cloned()
        .unwrap_or(Value::Null)
}

fn plan_quotas(plan: &str) -> Value {
    let p = Catalog::builtin().plan(plan).unwrap().clone();
    Value::Object(
        p.tenant_quotas
            .iter()
            .map(|(k, v)| (k.clone(), json!(v.as_str())))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_lifecycle() {
    let env = Env::start().await;
    // An unrelated namespace that must survive everything below.
    Api::<Namespace>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "keep-me"}})).unwrap(),
        )
        .await
        .unwrap();

    env.create_tenant(
        "acme",
        json!({"plan": "gold", "owners": ["alice@example.com", "group:acme-admins"]}),
    )
    .await;
    eventually("Capsule Tenant acme", || async {
        env.capsule_tenant("acme").await.is_some()
    })
    .await;
    eventually("tenant namespaces", || async {
        env.namespace_exists("acme-owner").await && env.namespace_exists("acme-apps").await
    })
    .await;
    eventually("NovaTenant acme Ready", || env.tenant_ready("acme")).await;
    let nt = env.tenant("acme").await.unwrap();
    assert!(nt.finalizers().iter().any(|f| f == controller::FINALIZER));
    let status = nt.status.unwrap();
    assert_eq!(status.namespaces, vec!["acme-owner", "acme-apps"]);
    assert_eq!(status.observed_generation, nt.metadata.generation);
    let ct = env.capsule_tenant("acme").await.unwrap();
    assert_eq!(hard(&ct), plan_quotas("gold"));
    assert_eq!(
        ct.pointer("/metadata/ownerReferences/0/kind"),
        Some(&json!("NovaTenant"))
    );

    // Project with access entries.
    env.create_project(
        "acme",
        "web",
        json!({"access": ["owner:alice@example.com", "viewer:group:auditors"], "quota": {"pods": 10}}),
    )
    .await;
    let pns = project_namespace("acme", "web");
    eventually("project namespace", || env.namespace_exists(&pns)).await;
    let rbs: Api<RoleBinding> = Api::namespaced(env.client.clone(), &pns);
    eventually("project RoleBindings", || async {
        let names: Vec<String> = rbs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| r.name_any())
            .collect();
        [
            "kubenova-owner",
            "kubenova-developer",
            "kubenova-viewer",
            "kubenova-app",
            "kubenova-app-deployer",
        ]
        .iter()
        .all(|n| names.iter().any(|x| x == n))
    })
    .await;
    let sa = Api::<ServiceAccount>::namespaced(env.client.clone(), &pns)
        .get("kubenova-app")
        .await
        .unwrap();
    assert_eq!(sa.automount_service_account_token, Some(false));
    let deployer = rbs.get("kubenova-app-deployer").await.unwrap();
    assert_eq!(deployer.role_ref.name, "kubenova-app-deployer");
    assert_eq!(
        deployer
            .subjects
            .unwrap()
            .iter()
            .map(|s| (s.kind.clone(), s.name.clone(), s.namespace.clone()))
            .collect::<Vec<_>>(),
        [(
            "ServiceAccount".to_owned(),
            "kubenova-app".to_owned(),
            Some(pns.clone())
        )]
    );
    eventually("NovaProject Ready", || async {
        env.project("acme", "web")
            .await
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            == Some(NovaPhase::Ready)
    })
    .await;
    let viewer = rbs.get("kubenova-viewer").await.unwrap();
    assert_eq!(viewer.role_ref.name, "view");
    assert!(
        viewer
            .subjects
            .unwrap()
            .iter()
            .any(|s| s.kind == "Group" && s.name == "auditors")
    );

    // App.
    let apps: Api<NovaApp> = Api::namespaced(env.client.clone(), &pns);
    let na: NovaApp = serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
        "metadata": {"name": "shop", "namespace": pns},
        "spec": {"tenant": "acme", "project": "web",
                 "components": [{"name": "web", "type": "webservice", "properties": {"image": "nginx:1.27"}}]}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &na).await.unwrap();
    let vela = env.dynamic("Application", Some(&pns));
    eventually("KubeVela Application", || async {
        vela.get_opt("shop").await.unwrap().is_some()
    })
    .await;
    eventually("NovaApp Ready", || async {
        apps.get("shop").await.unwrap().status.and_then(|s| s.phase) == Some(NovaPhase::Ready)
    })
    .await;

    // Applied as the project's own ServiceAccount (KubeVela's webhook records the writer,
    // and KubeVela deploys with its rights), with the gold plan's traits added.
    let application = vela.get("shop").await.unwrap();
    assert_eq!(
        application.annotations().get("app.oam.dev/username"),
        Some(&format!("system:serviceaccount:{pns}:kubenova-app"))
    );
    assert_eq!(
        application.data["spec"]["components"][0]["traits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "securitycontext",
            "scaler",
            "annotations",
            "k8s-update-strategy"
        ]
    );
    let app_writes = env
        .cluster
        .as_ref()
        .unwrap()
        .faults()
        .counts_for(&format!("system:serviceaccount:{pns}:kubenova-app"));
    assert!(app_writes.total >= 1, "{app_writes:?}");

    // Update the plan: the quotas follow.
    Api::<NovaTenant>::all(env.client.clone())
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"plan": "platinum"}})),
        )
        .await
        .unwrap();
    eventually("platinum quotas on the Capsule Tenant", || async {
        env.capsule_tenant("acme")
            .await
            .is_some_and(|t| hard(&t) == plan_quotas("platinum"))
    })
    .await;
    assert_ne!(plan_quotas("gold"), plan_quotas("platinum"));
    eventually("NovaTenant Ready at generation 2", || async {
        let t = env.tenant("acme").await.unwrap();
        t.status.as_ref().and_then(|s| s.phase) == Some(NovaPhase::Ready)
            && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
            && t.metadata.generation == Some(2)
    })
    .await;

    // Delete the app, then the project, then the tenant: everything created is gone.
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    eventually("Application deleted", || async {
        vela.get_opt("shop").await.unwrap().is_none()
            && apps.get_opt("shop").await.unwrap().is_none()
    })
    .await;
    Api::<NovaProject>::namespaced(env.client.clone(), "acme-owner")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("project namespace deleted", || async {
        !env.namespace_exists(&pns).await && env.project("acme", "web").await.is_none()
    })
    .await;
    Api::<NovaTenant>::all(env.client.clone())
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    eventually("tenant objects deleted", || async {
        env.capsule_tenant("acme").await.is_none()
            && !env.namespace_exists("acme-owner").await
            && !env.namespace_exists("acme-apps").await
            && env.tenant("acme").await.is_none()
    })
    .await;
    assert!(
        env.namespace_exists("keep-me").await,
        "unrelated namespace kept"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_removes_its_projects_and_apps() {
    let env = Env::start().await;
    env.create_tenant("initech", json!({"plan": "baseline"}))
        .await;
    eventually("Ready", || env.tenant_ready("initech")).await;
    env.create_project("initech", "api", json!({})).await;
    let pns = project_namespace("initech", "api");
    eventually("project namespace", || env.namespace_exists(&pns)).await;
    Api::<NovaTenant>::all(env.client.clone())
        .delete("initech", &DeleteParams::default())
        .await
        .unwrap();
    eventually("everything gone", || async {
        env.capsule_tenant("initech").await.is_none()
            && !env.namespace_exists("initech-owner").await
            && !env.namespace_exists("initech-apps").await
            && !env.namespace_exists(&pns).await
            && env.tenant("initech").await.is_none()
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired() {
    let env = Env::start().await;
    env.create_tenant("globex", json!({"plan": "gold"})).await;
    eventually("Ready", || env.tenant_ready("globex")).await;
    env.create_project("globex", "web", json!({})).await;
    let pns = project_namespace("globex", "web");
    let rbs: Api<RoleBinding> = Api::namespaced(env.client.clone(), &pns);
    eventually("RoleBinding", || async {
        rbs.get_opt("kubenova-viewer").await.unwrap().is_some()
    })
    .await;

    // Someone deletes a generated RoleBinding: it comes back.
    let before = rbs.get("kubenova-viewer").await.unwrap();
    rbs.delete("kubenova-viewer", &DeleteParams::default())
        .await
        .unwrap();
    eventually("RoleBinding recreated", || async {
        rbs.get_opt("kubenova-viewer")
            .await
            .unwrap()
            .is_some_and(|r| r.metadata.uid != before.metadata.uid)
    })
    .await;

    // Someone deletes the app's ServiceAccount: it comes back.
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &pns);
    eventually("app ServiceAccount", || async {
        sas.get_opt("kubenova-app").await.unwrap().is_some()
    })
    .await;
    let before = sas.get("kubenova-app").await.unwrap();
    sas.delete("kubenova-app", &DeleteParams::default())
        .await
        .unwrap();
    eventually("app ServiceAccount recreated", || async {
        sas.get_opt("kubenova-app")
            .await
            .unwrap()
            .is_some_and(|s| s.metadata.uid != before.metadata.uid)
    })
    .await;

    // Someone edits the Capsule Tenant's quota: it is restored.
    let tenants = env.dynamic("Tenant", None);
    tenants
        .patch(
            "globex",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"resourceQuotas": {"items": [{"hard": {"pods": "100000"}}]}}}),
            ),
        )
        .await
        .unwrap();
    eventually("quota restored", || async {
        env.capsule_tenant("globex")
            .await
            .is_some_and(|t| hard(&t) == plan_quotas("gold"))
    })
    .await;

    // Someone deletes a tenant namespace: it comes back.
    Api::<Namespace>::all(env.client.clone())
        .delete("globex-apps", &DeleteParams::default())
        .await
        .unwrap();
    eventually("namespace recreated", || {
        env.namespace_exists("globex-apps")
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_project_name_in_two_tenants_stays_isolated() {
    let env = Env::start().await;
    for t in ["alpha", "beta"] {
        env.create_tenant(t, json!({"plan": "baseline"})).await;
    }
    for t in ["alpha", "beta"] {
        eventually("Ready", || env.tenant_ready(t)).await;
    }
    env.create_project("alpha", "web", json!({"access": ["viewer:user:ann"]}))
        .await;
    env.create_project("beta", "web", json!({"access": ["viewer:user:bob"]}))
        .await;
    let (a, b) = (
        project_namespace("alpha", "web"),
        project_namespace("beta", "web"),
    );
    assert_ne!(a, b);
    for ns in [&a, &b] {
        eventually("viewer binding", || async {
            Api::<RoleBinding>::namespaced(env.client.clone(), ns)
                .get_opt("kubenova-viewer")
                .await
                .unwrap()
                .is_some()
        })
        .await;
    }
    let subjects = |ns: String| {
        let client = env.client.clone();
        async move {
            Api::<RoleBinding>::namespaced(client, &ns)
                .get("kubenova-viewer")
                .await
                .unwrap()
                .subjects
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
        }
    };
    let sa = subjects(a.clone()).await;
    let sb = subjects(b.clone()).await;
    assert!(sa.contains(&"ann".to_owned()) && !sa.contains(&"bob".to_owned()));
    assert!(sb.contains(&"bob".to_owned()) && !sb.contains(&"ann".to_owned()));
    assert!(sa.contains(&"kubenova:project:alpha:web:viewer".to_owned()));

    // Deleting alpha's project leaves beta's alone.
    Api::<NovaProject>::namespaced(env.client.clone(), "alpha-owner")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("alpha/web gone", || async {
        !env.namespace_exists(&a).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.namespace_exists(&b).await);
    assert_eq!(
        env.project("beta", "web")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase),
        Some(NovaPhase::Ready)
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_degraded_and_create_nothing() {
    let env = Env::start().await;

    // Unknown plan.
    env.create_tenant("bogus", json!({"plan": "diamond"})).await;
    eventually("Degraded UnknownPlan", || async {
        env.tenant("bogus")
            .await
            .and_then(|t| t.status)
            .is_some_and(|s| {
                s.phase == Some(NovaPhase::Degraded)
                    && s.condition(CONDITION_DEGRADED).is_some_and(|c| {
                        c.status == "True"
                            && c.reason == "UnknownPlan"
                            && c.message.contains("diamond")
                    })
            })
    })
    .await;
    assert!(env.capsule_tenant("bogus").await.is_none());
    assert!(!env.namespace_exists("bogus-owner").await);
    assert!(!env.namespace_exists("bogus-apps").await);

    // A Warning Event says why.
    let events: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
            "events",
        ),
    );
    eventually("UnknownPlan event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| e.data.get("reason") == Some(&json!("UnknownPlan")))
    })
    .await;

    // Name clash: a namespace the tenant needs already exists and is not ours.
    Api::<Namespace>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "clash-apps"}})).unwrap(),
        )
        .await
        .unwrap();
    env.create_tenant("clash", json!({"plan": "baseline"}))
        .await;
    eventually("Degraded NameClash", || async {
        env.tenant("clash")
            .await
            .and_then(|t| t.status)
            .is_some_and(|s| {
                s.phase == Some(NovaPhase::Degraded)
                    && s.condition(CONDITION_DEGRADED).is_some_and(|c| {
                        c.reason == "NameClash" && c.message.contains("clash-apps")
                    })
            })
    })
    .await;
    assert!(env.capsule_tenant("clash").await.is_none());
    assert!(!env.namespace_exists("clash-owner").await);
    // Deleting it deletes nothing else.
    Api::<NovaTenant>::all(env.client.clone())
        .delete("clash", &DeleteParams::default())
        .await
        .unwrap();
    eventually("clash deleted", || async {
        env.tenant("clash").await.is_none()
    })
    .await;
    assert!(env.namespace_exists("clash-apps").await);

    // Wrong namespace: a NovaProject of tenant `ok` outside `ok-owner`.
    env.create_tenant("ok", json!({"plan": "baseline"})).await;
    eventually("Ready", || env.tenant_ready("ok")).await;
    let np: NovaProject = serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
        "metadata": {"name": "web", "namespace": "ok-apps"}, "spec": {"tenant": "ok"}
    }))
    .unwrap();
    let projects: Api<NovaProject> = Api::namespaced(env.client.clone(), "ok-apps");
    projects.create(&PostParams::default(), &np).await.unwrap();
    eventually("Degraded WrongNamespace", || async {
        projects.get("web").await.unwrap().status.is_some_and(|s| {
            s.condition(CONDITION_DEGRADED)
                .is_some_and(|c| c.reason == "WrongNamespace")
        })
    })
    .await;
    assert!(!env.namespace_exists(&project_namespace("ok", "web")).await);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_not_rewritten_when_nothing_changed() {
    let owned = Env::start().await;
    let env = &owned;
    env.create_tenant("calm", json!({"plan": "gold"})).await;
    eventually("Ready", || env.tenant_ready("calm")).await;
    env.create_tenant("sad", json!({"plan": "nope"})).await;
    eventually("Degraded", || async {
        env.tenant("sad")
            .await
            .and_then(|t| t.status)
            .and_then(|s| s.phase)
            == Some(NovaPhase::Degraded)
    })
    .await;
    // Let in-flight events (Capsule status, namespace labels) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rv = |n: &'static str| async move { env.tenant(n).await.unwrap().resource_version() };
    let (calm, sad) = (rv("calm").await, rv("sad").await);
    let ct = env.capsule_tenant("calm").await.unwrap();
    let reconciles = || {
        let ok = vec![
            ("controller".to_owned(), "novatenant".to_owned()),
            ("result".to_owned(), "ok".to_owned()),
        ];
        env.ctx.metrics.reconciles.get_or_create(&ok).get()
    };
    let before = reconciles();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // No reconcile loop: nothing happens while nothing changes.
    assert!(
        reconciles() - before <= 2,
        "reconcile loop: {} reconciles in 3 s",
        reconciles() - before
    );
    assert_eq!(rv("calm").await, calm, "Ready NovaTenant rewritten");
    assert_eq!(rv("sad").await, sad, "Degraded NovaTenant rewritten");
    assert_eq!(
        env.capsule_tenant("calm").await.unwrap()["metadata"]["resourceVersion"],
        ct["metadata"]["resourceVersion"],
        "Capsule Tenant rewritten"
    );
    // No failed reconciles along the way.
    assert_eq!(env.ctx.attempts("NovaTenant//calm"), 0);

    // Ready → an unknown plan: Degraded, the stale namespace list is removed from the
    // status, and what was applied before stays as it was.
    Api::<NovaTenant>::all(env.client.clone())
        .patch(
            "calm",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"plan": "nope"}})),
        )
        .await
        .unwrap();
    eventually("calm Degraded without namespaces", || async {
        env.tenant("calm")
            .await
            .and_then(|t| t.status)
            .is_some_and(|s| s.phase == Some(NovaPhase::Degraded) && s.namespaces.is_empty())
    })
    .await;
    assert_eq!(
        hard(&env.capsule_tenant("calm").await.unwrap()),
        plan_quotas("gold")
    );
    owned.stop().await;
}

/// The phase and `Degraded` reason of a NovaProject.
async fn project_state(env: &Env, tenant: &str, name: &str) -> Option<(NovaPhase, String)> {
    let s = env.project(tenant, name).await?.status?;
    let reason = s
        .condition(CONDITION_DEGRADED)
        .filter(|c| c.status == "True")
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    Some((s.phase?, reason))
}

async fn namespace_labels(env: &Env, name: &str) -> std::collections::BTreeMap<String, String> {
    Api::<Namespace>::all(env.client.clone())
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|n| n.metadata.labels)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_objects_with_reserved_labels_create_nothing() {
    // Created directly in the cluster (no manager in between; the testkit does not
    // evaluate the CRDs' CEL rules, as a cluster without them would not).
    let env = Env::start().await;
    let privileged = json!({"pod-security.kubernetes.io/enforce": "privileged"});
    env.create_tenant("evil", json!({"plan": "gold", "labels": privileged}))
        .await;
    eventually("NovaTenant evil Degraded InvalidSpec", || async {
        env.tenant("evil")
            .await
            .and_then(|t| t.status)
            .is_some_and(|s| {
                s.phase == Some(NovaPhase::Degraded)
                    && s.condition(CONDITION_DEGRADED).is_some_and(|c| {
                        c.reason == "InvalidSpec"
                            && c.message.contains("pod-security.kubernetes.io/enforce")
                            && c.message.contains("reserved")
                    })
            })
    })
    .await;
    assert!(env.capsule_tenant("evil").await.is_none());
    assert!(!env.namespace_exists("evil-owner").await);
    assert!(!env.namespace_exists("evil-apps").await);

    env.create_tenant("good", json!({"plan": "gold"})).await;
    eventually("Ready", || env.tenant_ready("good")).await;
    env.create_project("good", "web", json!({"labels": privileged}))
        .await;
    eventually("NovaProject Degraded InvalidSpec", || async {
        project_state(&env, "good", "web").await
            == Some((NovaPhase::Degraded, "InvalidSpec".to_owned()))
    })
    .await;
    assert!(
        !env.namespace_exists(&project_namespace("good", "web"))
            .await
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_namespaces_enforce_the_tenant_pod_security_level() {
    // No Capsule: only the operator sets the level (Capsule's additionalMetadata does not
    // reach a project namespace it does not know yet, and never replaces ours).
    let env = Env::start_with(false).await;
    env.create_tenant("acme", json!({"plan": "gold"})).await;
    eventually("tenant namespaces", || env.namespace_exists("acme-owner")).await;
    env.create_project("acme", "web", json!({})).await;
    let pns = project_namespace("acme", "web");
    let level = |ns: String| {
        let env = &env;
        async move {
            namespace_labels(env, &ns)
                .await
                .get("pod-security.kubernetes.io/enforce")
                .cloned()
        }
    };
    eventually("baseline on the project namespace", || async {
        level(pns.clone()).await.as_deref() == Some("baseline")
    })
    .await;
    assert_eq!(
        level("acme-apps".to_owned()).await.as_deref(),
        Some("baseline")
    );
    assert_eq!(
        namespace_labels(&env, &pns).await["pod-security.kubernetes.io/enforce-version"],
        "latest"
    );

    // The tenant moves to a stricter plan: every namespace follows, projects included.
    Api::<NovaTenant>::all(env.client.clone())
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"plan": "platinum"}})),
        )
        .await
        .unwrap();
    eventually("restricted on the project namespace", || async {
        level(pns.clone()).await.as_deref() == Some("restricted")
    })
    .await;
    assert_eq!(
        level("acme-owner".to_owned()).await.as_deref(),
        Some("restricted")
    );

    // Someone lowers it by hand: the operator puts it back.
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &pns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})),
        )
        .await
        .unwrap();
    eventually("restricted again", || async {
        level(pns.clone()).await.as_deref() == Some("restricted")
    })
    .await;

    // A tenant the operator cannot translate gives its projects no level to enforce:
    // the project is Degraded and its namespace is left as it is.
    Api::<NovaTenant>::all(env.client.clone())
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policysets": ["nope"]}})),
        )
        .await
        .unwrap();
    Api::<NovaProject>::namespaced(env.client.clone(), "acme-owner")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"description": "touched"}})),
        )
        .await
        .unwrap();
    eventually("project Degraded InvalidTenant", || async {
        project_state(&env, "acme", "web").await
            == Some((NovaPhase::Degraded, "InvalidTenant".to_owned()))
    })
    .await;
    assert_eq!(level(pns.clone()).await.as_deref(), Some("restricted"));
    env.stop().await;
}

/// Creates a namespace as someone else would (field manager `manager`), with `labels`
/// and `annotations`.
async fn squat(
    env: &Env,
    name: &str,
    labels: Value,
    annotations: Value,
    manager: &str,
) -> Namespace {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations}
    }))
    .unwrap();
    let pp = PostParams {
        field_manager: Some(manager.to_owned()),
        ..PostParams::default()
    };
    Api::<Namespace>::all(env.client.clone())
        .create(&pp, &ns)
        .await
        .unwrap()
}

async fn live_namespace(env: &Env, name: &str) -> Namespace {
    Api::<Namespace>::all(env.client.clone())
        .get(name)
        .await
        .unwrap()
}

/// What a squatter may not change hands on: labels, annotations, owner references.
fn metadata_of(ns: &Namespace) -> Value {
    json!([
        ns.metadata.labels,
        ns.metadata.annotations,
        ns.metadata.owner_references
    ])
}

async fn tenant_clash(env: &Env, name: &str, needle: &str) -> bool {
    env.tenant(name)
        .await
        .and_then(|t| t.status)
        .is_some_and(|s| {
            s.phase == Some(NovaPhase::Degraded)
                && s.condition(CONDITION_DEGRADED)
                    .is_some_and(|c| c.reason == "NameClash" && c.message.contains(needle))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_not_adopted_by_their_labels() {
    let env = Env::start().await;
    // Every label the operator would put on squat-apps, and even the owner annotation,
    // but written by another field manager: the operator did not create it.
    let labels = json!({
        "app.kubernetes.io/managed-by": "kubenova-operator",
        "kubenova.io/tenant": "squat",
        "kubenova.io/namespace-role": "apps",
        "capsule.clastix.io/tenant": "squat"
    });
    let before = squat(
        &env,
        "squat-apps",
        labels,
        json!({"kubenova.io/owner": "novatenants.kubenova.io/squat"}),
        "intruder",
    )
    .await;
    env.create_tenant("squat", json!({"plan": "gold"})).await;
    eventually("NovaTenant squat Degraded NameClash", || {
        tenant_clash(&env, "squat", "squat-apps")
    })
    .await;
    assert!(
        env.capsule_tenant("squat").await.is_none(),
        "nothing created"
    );
    assert!(
        !env.namespace_exists("squat-owner").await,
        "nothing created"
    );
    assert_eq!(
        metadata_of(&live_namespace(&env, "squat-apps").await),
        metadata_of(&before),
        "nothing changed"
    );
    // Deleting the NovaTenant does not delete what it never owned.
    Api::<NovaTenant>::all(env.client.clone())
        .delete("squat", &DeleteParams::default())
        .await
        .unwrap();
    eventually("squat deleted", || async {
        env.tenant("squat").await.is_none()
    })
    .await;
    assert!(env.namespace_exists("squat-apps").await);

    // The same for a project namespace.
    env.create_tenant("host", json!({"plan": "gold"})).await;
    eventually("Ready", || env.tenant_ready("host")).await;
    let pns = project_namespace("host", "web");
    let before = squat(
        &env,
        &pns,
        json!({
            "app.kubernetes.io/managed-by": "kubenova-operator",
            "kubenova.io/tenant": "host",
            "kubenova.io/project": "web",
            "kubenova.io/namespace-role": "project"
        }),
        json!({"kubenova.io/owner": "novaprojects.kubenova.io/host-owner/web"}),
        "intruder",
    )
    .await;
    env.create_project("host", "web", json!({"access": ["bob@example.com"]}))
        .await;
    eventually("NovaProject Degraded NameClash", || async {
        project_state(&env, "host", "web").await
            == Some((NovaPhase::Degraded, "NameClash".to_owned()))
    })
    .await;
    let rbs: Api<RoleBinding> = Api::namespaced(env.client.clone(), &pns);
    assert!(
        rbs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        metadata_of(&live_namespace(&env, &pns).await),
        metadata_of(&before)
    );
    Api::<NovaProject>::namespaced(env.client.clone(), "host-owner")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("project deleted", || async {
        env.project("host", "web").await.is_none()
    })
    .await;
    assert!(env.namespace_exists(&pns).await, "not ours: not deleted");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_of_another_capsule_tenant_are_not_adopted() {
    let env = Env::start().await;
    env.create_tenant("other", json!({"plan": "gold"})).await;
    eventually("Ready", || env.tenant_ready("other")).await;
    // A namespace of Capsule Tenant `other` (Capsule owns it) that carries everything
    // KubeNova writes on victim-apps, the owner annotation included, even applied under
    // the operator's own field manager.
    squat(
        &env,
        "victim-apps",
        json!({"capsule.clastix.io/tenant": "other"}),
        json!({}),
        "tenant-owner",
    )
    .await;
    eventually("Capsule owns victim-apps", || async {
        live_namespace(&env, "victim-apps")
            .await
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|r| r.kind == "Tenant" && r.name == "other")
    })
    .await;
    Api::<Namespace>::all(env.client.clone())
        .patch(
            "victim-apps",
            &PatchParams::apply("kubenova-operator").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "victim-apps",
                    "labels": {"app.kubernetes.io/managed-by": "kubenova-operator", "kubenova.io/tenant": "victim"},
                    "annotations": {"kubenova.io/owner": "novatenants.kubenova.io/victim"}}
            })),
        )
        .await
        .unwrap();
    // Capsule puts its tenant's metadata back (`kubenova.io/tenant: other`, from the
    // Tenant's additionalMetadata); the namespace is compared from then on.
    eventually("Capsule's metadata back on victim-apps", || async {
        live_namespace(&env, "victim-apps")
            .await
            .metadata
            .labels
            .unwrap_or_default()
            .get("kubenova.io/tenant")
            .map(String::as_str)
            == Some("other")
    })
    .await;
    let before = live_namespace(&env, "victim-apps").await;
    env.create_tenant("victim", json!({"plan": "gold"})).await;
    eventually("NovaTenant victim Degraded NameClash", || {
        tenant_clash(&env, "victim", "other")
    })
    .await;
    assert!(
        env.capsule_tenant("victim").await.is_none(),
        "nothing created"
    );
    assert!(
        !env.namespace_exists("victim-owner").await,
        "nothing created"
    );
    assert_eq!(
        metadata_of(&live_namespace(&env, "victim-apps").await),
        metadata_of(&before),
        "nothing changed"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_namespaces_converge_after_a_restart() {
    let mut env = Env::start().await;
    env.create_tenant("acme", json!({"plan": "gold"})).await;
    eventually("Ready", || env.tenant_ready("acme")).await;
    env.create_project("acme", "web", json!({})).await;
    let pns = project_namespace("acme", "web");
    let project_ready = || async {
        project_state(&env, "acme", "web").await == Some((NovaPhase::Ready, String::new()))
    };
    eventually("NovaProject Ready", project_ready).await;
    let ns = live_namespace(&env, "acme-apps").await;
    assert_eq!(
        ns.annotations()
            .get("kubenova.io/owner")
            .map(String::as_str),
        Some("novatenants.kubenova.io/acme")
    );

    // A new operator process (empty caches) reconciles everything again and adopts its
    // own namespaces: edits still reach them.
    env.restart().await;
    Api::<NovaTenant>::all(env.client.clone())
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    Api::<NovaProject>::namespaced(env.client.clone(), "acme-owner")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"labels": {"team": "w"}}})),
        )
        .await
        .unwrap();
    eventually("labels applied after the restart", || async {
        namespace_labels(&env, "acme-apps")
            .await
            .get("team")
            .map(String::as_str)
            == Some("a")
            && namespace_labels(&env, &pns)
                .await
                .get("team")
                .map(String::as_str)
                == Some("w")
    })
    .await;
    eventually("still Ready", || async {
        env.tenant_ready("acme").await
            && project_state(&env, "acme", "web").await == Some((NovaPhase::Ready, String::new()))
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_beyond_their_plan_are_refused_in_the_cluster() {
    // A NovaApp written directly into the cluster (not through the manager) that asks for
    // raw objects, another namespace, or an image from another registry: Degraded with the
    // reason, and no KubeVela Application is created.
    let env = Env::start().await;
    env.create_tenant(
        "acme",
        json!({"plan": "gold", "owners": ["alice@example.com"]}),
    )
    .await;
    eventually("tenant namespaces", || env.namespace_exists("acme-owner")).await;
    env.create_project("acme", "web", json!({})).await;
    let pns = project_namespace("acme", "web");
    eventually("project namespace", || env.namespace_exists(&pns)).await;
    let apps: Api<NovaApp> = Api::namespaced(env.client.clone(), &pns);
    let cases = [
        (
            "raw",
            json!([{"name": "x", "type": "k8s-objects", "properties": {"objects": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "pwn"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"kind": "Group", "name": "system:authenticated"}]}]}}]),
            "NotAllowedByPlan",
        ),
        (
            "elsewhere",
            json!([{"name": "x", "type": "webservice", "properties": {"image": "nginx",
            "objects": [{"metadata": {"namespace": "kube-system"}}]}}]),
            "InvalidSpec",
        ),
        (
            "miner",
            json!([{"name": "x", "type": "webservice", "properties": {"image": "evil.example.com/miner"}}]),
            "NotAllowedByPlan",
        ),
    ];
    for (name, components, _) in &cases {
        let na: NovaApp = serde_json::from_value(json!({
            "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
            "metadata": {"name": name, "namespace": pns},
            "spec": {"tenant": "acme", "project": "web", "components": components}
        }))
        .unwrap();
        apps.create(&PostParams::default(), &na).await.unwrap();
    }
    for (name, _, reason) in &cases {
        eventually(
            &format!("NovaApp {name} Degraded with {reason}"),
            || async {
                apps.get(name)
                    .await
                    .unwrap()
                    .status
                    .and_then(|s| s.condition(CONDITION_DEGRADED).cloned())
                    .is_some_and(|c| c.status == "True" && c.reason == *reason)
            },
        )
        .await;
    }
    let vela = env.dynamic("Application", Some(&pns));
    assert!(
        vela.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    env.stop().await;
}

/// The retry bookkeeping forgets objects that stopped failing without a success (deleted
/// while failing): it is bounded by the objects failing now, not by every object that
/// ever failed.
#[tokio::test]
async fn retry_bookkeeping_forgets_objects_that_stopped_failing() {
    let cluster = TestCluster::builder().start().await.unwrap();
    let ctx = Ctx::new(
        cluster.client().unwrap(),
        Arc::new(Catalog::builtin()),
        Arc::new(Metrics::default()),
    )
    .with_backoff(Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(200),
    });
    // 5,000 objects fail once each and are then deleted (never reconciled again).
    for i in 0..5000 {
        ctx.backoff(&format!("NovaApp/ns/gone-{i}"));
    }
    // Longer than twice the largest backoff: an object still failing would have retried.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Objects failing now keep their count; the deleted ones are pruned as the table grows.
    for round in 1..=3u32 {
        for i in 0..2000 {
            ctx.backoff(&format!("NovaApp/ns/failing-{i}"));
        }
        assert_eq!(ctx.attempts("NovaApp/ns/failing-0"), round);
    }
    assert!(
        ctx.failing_objects() == 2000,
        "{} entries for 2,000 failing objects",
        ctx.failing_objects()
    );
    assert_eq!(ctx.attempts("NovaApp/ns/gone-0"), 0);
}
