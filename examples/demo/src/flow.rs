//! The runbook of `ROADMAP.md` as steps over the REST API, shared by the demo and the
//! end-to-end test.

use crate::{Binaries, Manager, Proc, Rest, Testkit, start_operator_from_deployment, wait_for};
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a step may take before the flow fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Heartbeat interval the flow's managers use (short, so `stale` shows quickly).
pub const HEARTBEAT_SECONDS: u64 = 1;

/// Everything the flow runs.
pub struct Flow {
    /// Binaries.
    pub bins: Binaries,
    /// Scratch folder (kubeconfig, manager data).
    pub dir: PathBuf,
    /// The emulated cluster.
    pub testkit: Testkit,
    /// The manager.
    pub manager: Manager,
    /// Port the manager listens on (kept across restarts: the operator's Secret names it).
    pub manager_port: u16,
    /// Database URL of the manager.
    pub database_url: String,
    /// The operator, once started.
    pub operator: Option<Proc>,
    /// The operator's `--listen` address (`/metrics`, `POST /usage/collect`), once started.
    pub operator_listen: Option<String>,
    /// The registered cluster's id.
    pub cluster: String,
    /// More environment for the manager and operator processes (e.g. `OTEL_*`).
    pub env: Vec<(&'static str, String)>,
}

/// Environment of the flow's managers.
pub fn manager_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "KUBENOVA_AGENT_HEARTBEAT_INTERVAL",
            format!("{HEARTBEAT_SECONDS}s"),
        ),
        (
            "KUBENOVA_AGENT_MANAGER_URL",
            format!("http://127.0.0.1:{port}"),
        ),
        ("KUBENOVA_EXTERNAL_URL", format!("http://127.0.0.1:{port}")),
    ]
}

impl Flow {
    /// Starts the testkit and the manager; registers the cluster (status `pending_bootstrap`).
    pub async fn start(bins: Binaries, dir: &Path, database_url: &str) -> anyhow::Result<Flow> {
        Flow::start_with(bins, dir, database_url, Vec::new()).await
    }

    /// [`Flow::start`], with `env` added to the environment of the manager (now and on
    /// restarts) and of the operator.
    pub async fn start_with(
        bins: Binaries,
        dir: &Path,
        database_url: &str,
        env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Flow> {
        let testkit = Testkit::start(&bins.testkit, dir).await?;
        let manager_port = crate::free_port()?;
        let data = dir.join("manager-data");
        let manager = Manager::start(
            &bins.manager,
            database_url,
            &data,
            manager_port,
            &[manager_env(manager_port), env.clone()].concat(),
        )
        .await?;
        let api = manager.api();
        let kubeconfig = testkit.kubeconfig_yaml()?;
        let cluster = api
            .post(
                "/api/v1/clusters",
                &json!({"name": "demo", "datacenter": "local", "labels": {"env": "demo"}, "kubeconfig": kubeconfig}),
            )
            .await?;
        if cluster["status"] != "pending_bootstrap" {
            bail!("a new cluster should be pending_bootstrap: {cluster}");
        }
        let cluster = cluster["id"].as_str().context("cluster id")?.to_string();
        Ok(Flow {
            bins,
            dir: dir.to_path_buf(),
            testkit,
            manager,
            manager_port,
            database_url: database_url.into(),
            operator: None,
            operator_listen: None,
            cluster,
            env,
        })
    }

    /// REST client with the admin token.
    pub fn api(&self) -> Rest {
        self.manager.api()
    }

    /// `/api/v1/clusters/{id}` + `rest`.
    pub fn cluster_path(&self, rest: &str) -> String {
        format!("/api/v1/clusters/{}{rest}", self.cluster)
    }

    /// Bootstraps the operator; returns the cluster as the manager reports it.
    pub async fn bootstrap(&self) -> anyhow::Result<Value> {
        let (s, v) = self
            .api()
            .call(
                "POST",
                &self.cluster_path("/bootstrap/operator"),
                Some(&json!({})),
            )
            .await?;
        if !s.is_success() {
            bail!("bootstrap failed: {s} {v}");
        }
        Ok(v)
    }

    /// Starts the operator from the bootstrap Deployment (with the simulated component driver).
    pub async fn start_operator(&mut self) -> anyhow::Result<()> {
        let crds =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kubenova-testkit/upstream");
        let listen = format!("127.0.0.1:{}", crate::free_port()?);
        let env = [
            vec![
                ("KUBENOVA_COMPONENT_DRIVER", "simulated".into()),
                ("KUBENOVA_SIMULATED_CRDS_DIR", crds.display().to_string()),
                ("KUBENOVA_LISTEN", listen.clone()),
                ("KUBENOVA_LEADER_ELECTION", "false".into()),
            ],
            self.env.clone(),
        ]
        .concat();
        let proc = start_operator_from_deployment(
            &self.bins.operator,
            &self.testkit.client,
            &self.testkit.kubeconfig,
            &env,
        )
        .await?;
        self.operator = Some(proc);
        self.operator_listen = Some(listen);
        Ok(())
    }

    /// Waits until the cluster's status is `status`.
    pub async fn wait_cluster_status(
        &self,
        status: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let api = self.api();
        let path = self.cluster_path("");
        wait_for(&format!("cluster status {status}"), timeout, || {
            let api = api.clone();
            let path = path.clone();
            async move {
                let c = api.get(&path).await?;
                Ok((c["status"] == status).then_some(c))
            }
        })
        .await
        .with_context(|| self.diagnostics())
    }

    /// Requests every component and waits until the capabilities say all are there.
    pub async fn install_components(&self) -> anyhow::Result<Value> {
        for c in ["cert-manager", "capsule", "capsule-proxy", "kubevela"] {
            self.api()
                .ok(
                    "POST",
                    &self.cluster_path(&format!("/bootstrap/{c}")),
                    Some(&json!({})),
                )
                .await?;
        }
        let api = self.api();
        let path = self.cluster_path("/capabilities");
        wait_for("all capabilities", STEP_TIMEOUT, || {
            let api = api.clone();
            let path = path.clone();
            async move {
                let c = api.get(&path).await?;
                let caps = if c.get("capabilities").is_some() {
                    &c["capabilities"]
                } else {
                    &c
                };
                let all = ["certManager", "capsule", "capsuleProxy", "kubeVela"]
                    .iter()
                    .all(|k| caps[k] == true);
                Ok(all.then_some(c))
            }
        })
        .await
        .with_context(|| self.diagnostics())
    }

    /// Waits until the record at `path` has `status.phase == phase`.
    pub async fn wait_phase(&self, path: &str, phase: &str) -> anyhow::Result<Value> {
        let api = self.api();
        let p = path.to_string();
        wait_for(&format!("{path} to be {phase}"), STEP_TIMEOUT, || {
            let api = api.clone();
            let p = p.clone();
            async move {
                let v = api.get(&p).await?;
                Ok((v["status"]["phase"] == phase).then_some(v))
            }
        })
        .await
        .with_context(|| self.diagnostics())
    }

    /// Runs the app's workload in the project namespace as KubeVela's Deployment would (the
    /// emulated cluster runs no workload controllers): two running pods of component `web`
    /// requesting 250m CPU and 256Mi each, and a LoadBalancer Service. Then asks the
    /// operator to collect usage now (`POST /usage/collect`) and waits until the manager
    /// has the tenant's hour with those pods (the hour so far: the time-weighted mean of
    /// the operator's samples since it started); returns
    /// `GET /tenants/{id}/usage?granularity=hour`.
    pub async fn measure_usage(&self, t: &Tenancy) -> anyhow::Result<Value> {
        use k8s_openapi::api::core::v1::{Pod, Service};
        use kube::api::{Api as KubeApi, PostParams};
        let project = self.api().get(&t.project_path).await?;
        let ns = project["namespace"]
            .as_str()
            .context("the project's namespace")?
            .to_string();
        let pods: KubeApi<Pod> = KubeApi::namespaced(self.testkit.client.clone(), &ns);
        for i in 0..2 {
            let name = format!("site-web-{i}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app.oam.dev/name": "site", "app.oam.dev/component": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}}]}
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
            pods.patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"status": {"phase": "Running"}})),
            )
            .await?;
        }
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "site-web"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app.oam.dev/component": "web"}}
        }))?;
        KubeApi::<Service>::namespaced(self.testkit.client.clone(), &ns)
            .create(&PostParams::default(), &svc)
            .await?;
        let listen = self
            .operator_listen
            .clone()
            .context("the operator is not running")?;
        let http = reqwest::Client::new();
        let tenant_id = t
            .tenant_path
            .rsplit('/')
            .next()
            .context("tenant id")?
            .to_string();
        let api = self.api();
        let path = format!("/api/v1/tenants/{tenant_id}/usage?granularity=hour");
        wait_for("the operator's usage report", STEP_TIMEOUT, || {
            let (api, http, path, listen) =
                (api.clone(), http.clone(), path.clone(), listen.clone());
            async move {
                // Polled: a request within the operator's minimum interval is 429 (the
                // collection it asked for already happened or runs); only read again then.
                let r = http
                    .post(format!("http://{listen}/usage/collect"))
                    .send()
                    .await?;
                if r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    r.error_for_status()?;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let v = api.get(&path).await?;
                let measured = v["records"]
                    .as_array()
                    .and_then(|r| r.last())
                    .is_some_and(|r| r["pods"].as_i64() >= Some(1) && r["loadBalancers"] == 1);
                Ok(measured.then_some(v))
            }
        })
        .await
        .with_context(|| self.diagnostics())
    }

    /// Waits until `GET path` answers 404.
    pub async fn wait_gone(&self, path: &str) -> anyhow::Result<()> {
        let api = self.api();
        let p = path.to_string();
        wait_for(&format!("{path} to be gone"), STEP_TIMEOUT, || {
            let api = api.clone();
            let p = p.clone();
            async move {
                let (s, _) = api.call("GET", &p, None).await?;
                Ok((s == reqwest::StatusCode::NOT_FOUND).then_some(()))
            }
        })
        .await
    }

    /// The tail of every process's log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = format!(
            "--- manager ---\n{}\n--- testkit ---\n{}\n",
            self.manager.proc.log_tail(60),
            self.testkit.proc.log_tail(10)
        );
        if let Some(o) = &self.operator {
            out.push_str(&format!("--- operator ---\n{}\n", o.log_tail(80)));
        }
        out
    }

    /// Stops everything it started, each with SIGTERM (waiting for it to finish): the
    /// operator, the manager, then the emulated cluster. Blocks.
    pub fn shutdown(&mut self) {
        if let Some(o) = self.operator.as_mut() {
            o.stop();
        }
        self.manager.proc.stop();
        self.testkit.proc.stop();
    }

    /// Stops the manager (SIGTERM).
    pub fn stop_manager(&mut self) {
        self.manager.proc.stop();
    }

    /// Starts the manager again on the same port, database and data folder.
    pub async fn restart_manager(&mut self) -> anyhow::Result<()> {
        self.manager = Manager::start(
            &self.bins.manager,
            &self.database_url,
            &self.dir.join("manager-data"),
            self.manager_port,
            &[manager_env(self.manager_port), self.env.clone()].concat(),
        )
        .await?;
        Ok(())
    }
}

/// Ids of the records [`create_tenancy`] makes.
#[derive(Debug, Clone)]
pub struct Tenancy {
    /// `/api/v1/clusters/{c}/tenants/{t}`.
    pub tenant_path: String,
    /// `.../projects/{p}`.
    pub project_path: String,
    /// `.../apps/{a}`.
    pub app_path: String,
    /// Tenant name.
    pub tenant: String,
}

/// Creates tenant `name` (plan gold) with project `web` and app `site`.
pub async fn create_tenancy(flow: &Flow, name: &str) -> anyhow::Result<Tenancy> {
    let api = flow.api();
    let t = api
        .post(
            &flow.cluster_path("/tenants"),
            &json!({"name": name, "plan": "gold", "owners": [format!("owner@{name}.example")]}),
        )
        .await?;
    let tenant_path = flow.cluster_path(&format!(
        "/tenants/{}",
        t["id"].as_str().context("tenant id")?
    ));
    let p = api
        .post(
            &format!("{tenant_path}/projects"),
            &json!({"name": "web", "access": [format!("developer:dev@{name}.example")]}),
        )
        .await?;
    let project_path = format!(
        "{tenant_path}/projects/{}",
        p["id"].as_str().context("project id")?
    );
    let a = api
        .post(
            &format!("{project_path}/apps"),
            &json!({"name": "site", "image": "nginx:1.27", "spec": {"ports": [{"port": 80, "expose": true}]}}),
        )
        .await?;
    let app_path = format!(
        "{project_path}/apps/{}",
        a["id"].as_str().context("app id")?
    );
    Ok(Tenancy {
        tenant_path,
        project_path,
        app_path,
        tenant: name.into(),
    })
}
