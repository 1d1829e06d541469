//! # kubenova-demo
//!
//! Runs the three real KubeNova binaries as processes and drives the whole flow of
//! `docs/src/demo.md`: an emulated cluster (`kubenova-testkit serve` with the upstream
//! Capsule/KubeVela CRDs and simulated controllers), the manager, cluster registration
//! and bootstrap, the operator started from the Deployment the bootstrap applied, the
//! components, and tenants → projects → apps until their REST status is Ready.
//!
//! The `kubenova-demo` binary narrates it; `tests/e2e.rs` runs the same steps with
//! assertions, restarts and outages. The building blocks are public so that other
//! end-to-end checks can reuse them.

pub mod flow;

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api as KubeApi;
use kube::config::{KubeConfigOptions, Kubeconfig};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Paths of the three binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kubenova-manager`.
    pub manager: PathBuf,
    /// `kubenova-operator`.
    pub operator: PathBuf,
    /// `kubenova-testkit`.
    pub testkit: PathBuf,
}

impl Binaries {
    /// Finds the binaries next to the running executable (`target/<profile>/`, also
    /// from `target/<profile>/deps/` where tests run). Build them with
    /// `cargo build -p kubenova-manager -p kubenova-operator -p kubenova-testkit`.
    pub fn locate() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe()?;
        let mut dirs = Vec::new();
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(p) = d.parent() {
                dirs.push(p.to_path_buf());
            }
        }
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
            dirs.iter()
                .map(|d| d.join(&file))
                .find(|p| p.exists())
                .ok_or_else(|| {
                    anyhow!(
                        "{name} is not built next to {}; run `cargo build -p kubenova-manager -p kubenova-operator -p kubenova-testkit` first",
                        exe.display()
                    )
                })
        };
        Ok(Binaries {
            manager: find("kubenova-manager")?,
            operator: find("kubenova-operator")?,
            testkit: find("kubenova-testkit")?,
        })
    }
}

/// A child process that is killed when dropped; its stderr is kept for diagnostics.
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` and collects its stderr; `on_line` sees each line (e.g. to find the
    /// listening address).
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        on_line: impl Fn(&str) + Send + 'static,
    ) -> anyhow::Result<Proc> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                on_line(&line);
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                    if l.len() > 4 << 20 {
                        let cut = l.len() - (2 << 20);
                        let cut = (cut..l.len()).find(|i| l.is_char_boundary(*i)).unwrap_or(0);
                        l.drain(..cut);
                    }
                }
            }
        });
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    /// The last `n` lines of its stderr.
    pub fn log_tail(&self, n: usize) -> String {
        let l = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whole stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM and waits up to 10 s, then kills it.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The conditions of a REST status (`status.conditions`) as readable lines, one per
/// condition: `Ready=True  Reconciled  all objects applied` (type=status, reason, message;
/// empty parts left out).
///
/// ```
/// let c = serde_json::json!([{"type": "Ready", "status": "True", "reason": "Reconciled",
///     "message": "all objects applied", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
/// assert_eq!(kubenova_demo::condition_lines(&c), ["Ready=True  Reconciled  all objects applied"]);
/// ```
pub fn condition_lines(conditions: &Value) -> Vec<String> {
    let Some(items) = conditions.as_array() else {
        return vec![];
    };
    items
        .iter()
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().trim().to_string();
            let mut parts = vec![format!("{}={}", text("type"), text("status"))];
            parts.extend(
                [text("reason"), text("message")]
                    .into_iter()
                    .filter(|p| !p.is_empty()),
            );
            parts.join("  ")
        })
        .collect()
}

/// The components of a cluster's capabilities (`GET …/capabilities`) as readable lines:
/// `capsule 0.14.6  ready`.
pub fn component_lines(capabilities: &Value) -> Vec<String> {
    capabilities["components"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|c| {
                    let text = |k: &str| c[k].as_str().unwrap_or("?").to_string();
                    format!("{} {}  {}", text("name"), text("version"), text("phase"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The emulated cluster (`kubenova-testkit serve`).
pub struct Testkit {
    /// The process.
    pub proc: Proc,
    /// Kubeconfig it wrote (admin credentials, its CA).
    pub kubeconfig: PathBuf,
    /// A client for it.
    pub client: kube::Client,
}

impl Testkit {
    /// Starts it with the upstream CRDs and the simulated Capsule and KubeVela controllers.
    pub async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Testkit> {
        let kubeconfig = dir.join("testkit.kubeconfig");
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--with-upstream-crds",
            "--simulate",
            "capsule,kubevela,quota",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .env("KUBENOVA_LOG", "warn");
        let proc = Proc::spawn("kubenova-testkit", cmd, |_| {})?;
        let kc = kubeconfig.clone();
        wait_for("the testkit kubeconfig", Duration::from_secs(30), || {
            let kc = kc.clone();
            async move { Ok(kc.exists().then_some(())) }
        })
        .await?;
        let client = client_from(&kubeconfig).await?;
        Ok(Testkit {
            proc,
            kubeconfig,
            client,
        })
    }

    /// The kubeconfig text (to register the cluster with).
    pub fn kubeconfig_yaml(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.kubeconfig)?)
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A running manager.
pub struct Manager {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The bootstrap admin token.
    pub token: String,
}

impl Manager {
    /// Starts `kubenova-manager serve` on a free loopback port with its data (keys,
    /// admin token) in `data_dir`; `env` adds options (e.g. `KUBENOVA_AGENT_HEARTBEAT_INTERVAL`).
    pub async fn start(
        bin: &Path,
        database_url: &str,
        data_dir: &Path,
        port: u16,
        env: &[(&str, String)],
    ) -> anyhow::Result<Manager> {
        let mut cmd = Command::new(bin);
        cmd.env_remove("KUBENOVA_INSECURE_DEV_NO_AUTH")
            .env("DATABASE_URL", database_url)
            .env("KUBENOVA_DATA_DIR", data_dir)
            .env("KUBENOVA_LOG", "info")
            // JSON lines, whatever the caller's environment says: the `listening` line
            // is found by its `fields.message`.
            .env("KUBENOVA_LOG_FORMAT", "json")
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let tx = Mutex::new(tx);
        let proc = Proc::spawn("kubenova-manager", cmd, move |line| {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && v["fields"]["message"] == "listening"
                && let Ok(tx) = tx.lock()
            {
                let _ = tx.send(
                    v["fields"]["address"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        })?;
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await?
            .map_err(|_| anyhow!("the manager did not start; log:\n{}", proc.log_tail(40)))?;
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .context("reading the bootstrap admin token")?
            .trim()
            .to_string();
        Ok(Manager {
            proc,
            url: format!("http://{addr}"),
            token,
        })
    }

    /// A REST client with the admin token.
    pub fn api(&self) -> Rest {
        Rest::new(&self.url, &self.token)
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Minimal JSON REST client of the manager.
#[derive(Clone)]
pub struct Rest {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Rest {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) sending `token`.
    pub fn new(base: &str, token: &str) -> Rest {
        Rest {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').into(),
            token: token.into(),
        }
    }

    /// One request; returns the status and the JSON body (`null` when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// `GET`, expecting 2xx.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.ok("GET", path, None).await
    }

    /// `POST`, expecting 2xx.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.ok("POST", path, Some(body)).await
    }

    /// Any method, expecting 2xx; the error carries the KN body.
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (s, v) = self.call(method, path, body).await?;
        if !s.is_success() {
            bail!("{method} {path} → {s}: {v}");
        }
        Ok(v)
    }
}

/// The operator started the way the bootstrap Deployment would start it: the binary
/// with the Deployment's container args and env (Secret references resolved from the
/// cluster), plus a kubeconfig for the emulated cluster instead of the in-cluster
/// service account, and `extra_env` (e.g. the simulated component driver).
pub async fn start_operator_from_deployment(
    bin: &Path,
    client: &kube::Client,
    kubeconfig: &Path,
    extra_env: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let deployments: KubeApi<Deployment> = KubeApi::namespaced(client.clone(), "kubenova-system");
    let d = deployments
        .get("kubenova-operator")
        .await
        .context("the bootstrap should have applied kubenova-system/kubenova-operator")?;
    let pod = d
        .spec
        .and_then(|s| s.template.spec)
        .context("deployment without a pod spec")?;
    let c = pod
        .containers
        .first()
        .context("deployment without containers")?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let secrets: KubeApi<Secret> = KubeApi::namespaced(client.clone(), "kubenova-system");
    for e in c.env.clone().unwrap_or_default() {
        if let Some(v) = e.value {
            env.insert(e.name, v);
        } else if let Some(r) = e.value_from.and_then(|f| f.secret_key_ref) {
            let s = secrets.get(&r.name).await?;
            let bytes = s
                .data
                .and_then(|d| d.get(&r.key).cloned())
                .with_context(|| format!("secret {} has no key {}", r.name, r.key))?;
            env.insert(e.name, String::from_utf8(bytes.0)?);
        }
    }
    let mut cmd = Command::new(bin);
    cmd.args(c.args.clone().unwrap_or_default())
        .envs(&env)
        .env("KUBENOVA_KUBECONFIG", kubeconfig)
        .env("KUBENOVA_LOG", "info");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Proc::spawn("kubenova-operator", cmd, |_| {})
}

/// The lines the demo prints about a tenant's usage (`GET /tenants/{id}/usage`): the
/// latest hour as measured, and its cost at the plan in force.
pub fn usage_lines(usage: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = usage["records"].as_array().and_then(|r| r.last()) {
        out.push(format!(
            "hour {}: {} pods, CPU requests {}m (limits {}m), memory {} MiB, {} LoadBalancer, {} namespaces, {} apps",
            r["hour"].as_str().unwrap_or("?"),
            r["pods"],
            r["cpuMillicores"],
            r["cpuLimitMillicores"],
            r["memoryBytes"].as_i64().unwrap_or(0) >> 20,
            r["loadBalancers"],
            r["namespaces"],
            r["apps"],
        ));
        out.push(
            "(the hour so far: the time-weighted mean of the operator's samples since it started)"
                .into(),
        );
    }
    for p in usage["costByPlan"].as_array().into_iter().flatten() {
        out.push(format!(
            "cost at plan {}: {} {} for {} hour(s)",
            p["plan"].as_str().unwrap_or("?"),
            p["cost"].as_str().unwrap_or("?"),
            p["currency"].as_str().unwrap_or(""),
            p["hours"],
        ));
    }
    if let Some(q) = usage["quota"].as_object() {
        out.push(format!(
            "quota use reported at {}: {} entries, {} over their hard limit",
            q["reportedAt"].as_str().unwrap_or("?"),
            q["items"].as_array().map_or(0, Vec::len),
            q["violations"]
        ));
    }
    out
}
