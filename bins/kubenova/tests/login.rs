//! `kubenova login`, `auth token` with the kept login, and `logout`, end to end: the real
//! binary as a process, a manager on loopback (its real router on SQLite, trusting the
//! test kit's identity provider, with a `login` section), and that provider (device
//! authorization grant, authorization code with PKCE, rotating refresh tokens,
//! revocation). The test plays the person: it approves or denies the user code at the
//! provider, and plays the browser by following the printed authorize URL to the CLI's
//! loopback listener.
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use base64::Engine as _;
use kubenova_api::ids::{ClusterId, TenantId};
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::oidc::{IssuerConfig, LoginConfig, Oidc, OidcConfig, PlatformRoles};
use kubenova_store::WriteOptions;
use kubenova_testkit::oidc::{DEVICE_CODE_GRANT, Provider};
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

const SECRET: &[u8] = b"kubenova-cli-login-secret-0123456789abcdef";
const CA: &str = include_str!("../../../kubenova-kubeconfig/tests/fixtures/proxy-ca.pem");
const CLIENT_ID: &str = "kubenova-cli";
/// How long the test waits for the CLI at most (a bound, not a measurement).
const PATIENCE: Duration = Duration::from_secs(120);

struct World {
    base: String,
    idp: Provider,
    state: kubenova_manager::api::AppState,
    tenant: TenantId,
    cluster: ClusterId,
    /// The person's home: `XDG_CONFIG_HOME` of every CLI run.
    home: tempfile::TempDir,
    /// An empty PATH directory: no `xdg-open`/`open` is found.
    empty_path: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

async fn api(base: &str, method: reqwest::Method, path: &str, token: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

impl World {
    async fn start() -> World {
        World::start_with(None).await
    }

    /// A world whose login section carries `client_secret`.
    async fn start_with(client_secret: Option<&str>) -> World {
        let idp = Provider::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let keys = kubenova_store::crypto::Keyring::load_or_generate(dir.path()).unwrap();
        let store = kubenova_store::connect(
            &format!("sqlite://{}", dir.path().join("kn.db").display()),
            keys,
        )
        .await
        .unwrap();
        let cfg = ServerConfig {
            listen: addr,
            external_url: Some(base.clone()),
            rate_limit_subject_rps: 0,
            rate_limit_ip_rps: 0,
            ..ServerConfig::default()
        };
        kubenova_manager::api::kubeconfigs::load_or_create_signing_keys(store.as_ref())
            .await
            .unwrap();
        let oidc = Arc::new(
            Oidc::new(OidcConfig {
                issuers: vec![IssuerConfig {
                    login: Some(LoginConfig {
                        client_id: None,
                        scopes: vec!["openid".into(), "email".into(), "offline_access".into()],
                        display_name: Some("Test SSO".into()),
                        client_secret: client_secret.map(str::to_string),
                    }),
                    role_claims: false,
                    ..IssuerConfig::with_role_claims(idp.issuer(), CLIENT_ID, None)
                }],
                platform_roles: PlatformRoles {
                    admin: vec!["platform-admins".into()],
                    ops: vec![],
                    read_only: vec![],
                },
            })
            .unwrap(),
        );
        drop(oidc.spawn_refresher());
        let auth = kubenova_manager::api::auth::Authenticator::hs256(
            SECRET,
            &cfg.jwt_issuer,
            &cfg.jwt_audience,
            cfg.clock_skew,
            cfg.max_token_ttl,
        )
        .with_identity_providers(oidc);
        let state = kubenova_manager::assemble_state(
            store,
            kubenova_api::catalog::Catalog::builtin(),
            cfg,
            auth,
        );
        let app = kubenova_manager::api::router(state.clone());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        let admin = state
            .auth
            .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(600))
            .unwrap()
            .token;
        let c = api(&base, reqwest::Method::POST, "/api/v1/clusters", &admin,
            json!({"name": "prod-eu", "kubeconfig": "apiVersion: v1\nkind: Config\nclusters:\n- name: p\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: TFMwdExTMUNSVWRKVGc9PQ==\ncontexts:\n- name: p\n  context:\n    cluster: p\n    user: a\ncurrent-context: p\nusers:\n- name: a\n  user:\n    token: x\n"})).await;
        let cluster: ClusterId = c["id"].as_str().unwrap().parse().unwrap();
        let mut rec = state.store.get_cluster(cluster).await.unwrap();
        let expected = rec.version;
        rec.version += 1;
        rec.proxy = Some(
            serde_json::from_value(json!({"url": "https://capsule-proxy.example.com:9001",
                "caData": base64::engine::general_purpose::STANDARD.encode(CA)}))
            .unwrap(),
        );
        state
            .store
            .update_cluster(&rec, expected, &WriteOptions::default())
            .await
            .unwrap();
        let t = api(
            &base,
            reqwest::Method::POST,
            &format!("/api/v1/clusters/{cluster}/tenants"),
            &admin,
            json!({"name": "acme"}),
        )
        .await;
        let tenant: TenantId = t["id"].as_str().unwrap().parse().unwrap();
        World {
            base,
            idp,
            state,
            tenant,
            cluster,
            home: tempfile::tempdir().unwrap(),
            empty_path: tempfile::tempdir().unwrap(),
            _dir: dir,
        }
    }

    /// The CLI with this world's home, no token in the environment and nothing to open a
    /// browser with.
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kubenova"));
        c.args(args)
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("HOME", self.home.path())
            .env("PATH", self.empty_path.path())
            .env_remove("KUBENOVA_TOKEN")
            .env_remove("KUBENOVA_TOKEN_FILE")
            .env_remove("KUBENOVA_CA_FILE")
            .env_remove("KUBENOVA_LOG")
            .env_remove("RUST_LOG");
        c
    }

    fn cache_path(&self) -> PathBuf {
        self.home.path().join("kubenova/logins.json")
    }

    fn cache(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.cache_path()).unwrap()).unwrap()
    }

    fn entry(&self) -> Value {
        self.cache()["logins"][&self.base].clone()
    }

    fn auth_token(&self) -> Command {
        self.cli(&[
            "auth",
            "token",
            "--manager",
            &self.base,
            "--tenant",
            &self.tenant.to_string(),
            "--role",
            "viewer",
            "--cluster",
            &self.cluster.to_string(),
        ])
    }
}

/// A running CLI whose stderr lines arrive on a channel while it runs.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line (from now) that satisfies `f`.
    fn line(&mut self, f: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("no such line; stderr so far: {:?}", self.seen));
            self.seen.push(l.clone());
            if f(&l) {
                return l;
            }
        }
    }

    /// Waits for the exit: (success, stdout, all of stderr).
    async fn finish(mut self) -> (bool, String, String) {
        let (status, stdout, rest) = tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let mut out = String::new();
            self.child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            let status = self.child.wait().unwrap();
            let rest: Vec<String> = self.lines.iter().collect();
            self.seen.extend(rest);
            (status, out, self.seen.join("\n"))
        })
        .await
        .unwrap();
        (status.success(), stdout, rest)
    }
}

async fn run(cmd: Command) -> std::process::Output {
    let mut cmd = cmd;
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The one pending user code at the provider, once the CLI asked for it.
async fn pending_user_code(idp: &Provider) -> String {
    for _ in 0..(PATIENCE.as_millis() / 50) {
        if let [code] = idp.pending_user_codes().as_slice() {
            return code.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the CLI never asked for a device code");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Asserts `out` is a valid ExecCredential of the manager for `sub`.
async fn assert_exec_credential(w: &World, out: &std::process::Output, sub: &str) {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ec["kind"], "ExecCredential");
    let token = ec["status"]["token"].as_str().unwrap();
    let keys =
        kubenova_manager::api::kubeconfigs::load_or_create_signing_keys(w.state.store.as_ref())
            .await
            .unwrap();
    let claims = keys
        .verify(token, &format!("kubenova:cluster:{}", w.cluster))
        .unwrap();
    assert_eq!(claims.sub, sub);
    // The scope group, then the person's groups (kubeconfigs follow identity).
    assert_eq!(
        claims.groups,
        ["kubenova:tenant:acme:viewer", "platform-admins"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_login_refresh_and_logout() {
    let w = World::start().await;
    // Before any login: the hint.
    let out = run(w.auth_token()).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("run `kubenova login --manager {}`", w.base)),
        "{err}"
    );

    // The person approves the code the CLI prints while it polls.
    let mut login = Running::spawn(w.cli(&["login", "--manager", &w.base]));
    let prompt = login.line(|l| l.contains("enter the code"));
    let code = pending_user_code(&w.idp).await;
    assert!(prompt.contains(&code), "{prompt}");
    assert!(
        prompt.contains(&format!("{}/device", w.idp.issuer())),
        "{prompt}"
    );
    assert!(
        w.idp
            .approve(&code, "alice@example.com", &["platform-admins"])
    );
    let (ok, stdout, stderr) = login.finish().await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "Signed in to {} as alice@example.com (groups: platform-admins) (platform roles: admin)",
            w.base
        )),
        "{stdout}"
    );
    assert_eq!(w.idp.grants(), [DEVICE_CODE_GRANT]);

    // The login is kept: 0600 in a 0700 directory, keyed by the manager URL.
    assert_eq!(mode(&w.cache_path()), 0o600);
    assert_eq!(mode(w.cache_path().parent().unwrap()), 0o700);
    let entry = w.entry();
    assert_eq!(entry["issuer"], w.idp.issuer());
    assert_eq!(entry["clientId"], CLIENT_ID);
    assert_eq!(entry["subject"], "alice@example.com");
    let id_token = entry["idToken"].as_str().unwrap().to_string();
    let rt1 = entry["refreshToken"].as_str().unwrap().to_string();
    assert!(w.idp.refresh_token_active(&rt1));
    // No token on the terminal.
    for secret in [&id_token, &rt1] {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }

    // The exec plugin needs no KUBENOVA_TOKEN now; the ID token is fresh: no refresh.
    let out = run(w.auth_token()).await;
    assert_exec_credential(&w, &out, "alice@example.com").await;
    assert_eq!(w.idp.grants().len(), 1);

    // Expiry: the kept ID token expires within a minute (as if time had passed); the
    // plugin refreshes, and keeps the rotated refresh token.
    w.idp.set_token_ttl(Duration::from_secs(30));
    let mut cache = w.cache();
    cache["logins"][&w.base]["expiresAt"] = json!(0);
    std::fs::write(w.cache_path(), cache.to_string()).unwrap();
    let out = run(w.auth_token()).await;
    assert_exec_credential(&w, &out, "alice@example.com").await;
    assert_eq!(w.idp.grants(), [DEVICE_CODE_GRANT, "refresh_token"]);
    let rt2 = w.entry()["refreshToken"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert!(!w.idp.refresh_token_active(&rt1));
    assert!(w.idp.refresh_token_active(&rt2));
    assert_eq!(mode(&w.cache_path()), 0o600);

    // kubectl may run the plugin several times at once. The new ID tokens live 30 s (less
    // than the refresh margin), so each run refreshes: one after the other under the
    // cache lock, each with the newest refresh token (a refresh token used twice would
    // make the provider revoke the whole chain, and the runs after it fail).
    let runs: Vec<_> = (0..4).map(|_| run(w.auth_token())).collect();
    for out in futures::future::join_all(runs).await {
        assert_exec_credential(&w, &out, "alice@example.com").await;
    }
    let refreshes = w
        .idp
        .grants()
        .iter()
        .filter(|g| *g == "refresh_token")
        .count();
    assert_eq!(refreshes, 5);
    let rt_last = w.entry()["refreshToken"].as_str().unwrap().to_string();
    assert!(w.idp.refresh_token_active(&rt_last));

    // Logout revokes the refresh token at the provider and deletes the login.
    let out = run(w.cli(&["logout", "--manager", &w.base])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("Signed out of {}.", w.base)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!w.idp.refresh_token_active(&rt_last));
    assert_eq!(w.idp.revocations(), 1);
    assert!(w.entry().is_null(), "{}", w.cache());
    assert_eq!(mode(&w.cache_path()), 0o600);
    let out = run(w.auth_token()).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("not signed in to {}", w.base))
            && err.contains(&format!("run `kubenova login --manager {}`", w.base)),
        "{err}"
    );
    // Logging out again is fine.
    let out = run(w.cli(&["logout", "--manager", &w.base])).await;
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_device_request_fails_clearly() {
    let w = World::start().await;
    let mut login = Running::spawn(w.cli(&["login", "--manager", &w.base]));
    login.line(|l| l.contains("enter the code"));
    let code = pending_user_code(&w.idp).await;
    assert!(w.idp.deny(&code));
    let (ok, stdout, stderr) = login.finish().await;
    assert!(!ok);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(&format!(
            "kubenova: the sign-in request was denied at {}",
            w.idp.issuer()
        )),
        "{stderr}"
    );
    assert!(!w.cache_path().exists() || w.entry().is_null());
}

/// Starts `kubenova login --browser` and returns it with the authorize URL it printed.
fn browser_login(w: &World) -> (Running, String) {
    let mut login = Running::spawn(w.cli(&["login", "--manager", &w.base, "--browser"]));
    let url = login.line(|l| {
        l.trim_start()
            .starts_with(&format!("{}/authorize?", w.idp.issuer()))
    });
    (login, url.trim().to_string())
}

/// The browser's first step: the provider's redirect (not followed).
async fn provider_redirect(authorize: &str) -> reqwest::Url {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http.get(authorize).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    reqwest::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_with_pkce() {
    let w = World::start().await;
    w.idp.set_signed_in("bob@example.com", &["platform-admins"]);
    let (login, authorize) = browser_login(&w);
    let q: std::collections::HashMap<_, _> = reqwest::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert!(q["redirect_uri"].starts_with("http://127.0.0.1:"));
    assert!(q["redirect_uri"].ends_with("/callback"));
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    // The browser follows the redirect to the CLI's loopback listener.
    let back = provider_redirect(&authorize).await;
    assert_eq!(back.host_str(), Some("127.0.0.1"));
    let page = reqwest::get(back.as_str()).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Signed in"));
    let (ok, stdout, stderr) = login.finish().await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(&format!("Signed in to {} as bob@example.com", w.base)),
        "{stdout}"
    );
    assert_eq!(w.idp.grants(), ["authorization_code"]);
    assert_eq!(mode(&w.cache_path()), 0o600);
    assert_eq!(w.entry()["subject"], "bob@example.com");
    let out = run(w.auth_token()).await;
    assert_exec_credential(&w, &out, "bob@example.com").await;

    // Logout while the provider is unreachable: a warning, and the login is deleted anyway.
    w.idp.shutdown();
    let out = run(w.cli(&["logout", "--manager", &w.base])).await;
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("kubenova: warning: cannot reach the revocation endpoint")
            && err.contains("the login is deleted from this machine anyway"),
        "{err}"
    );
    assert!(w.entry().is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_with_another_state_is_refused() {
    let w = World::start().await;
    w.idp.set_signed_in("bob@example.com", &["platform-admins"]);
    let (login, authorize) = browser_login(&w);
    let mut back = provider_redirect(&authorize).await;
    let forged: Vec<(String, String)> = back
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "state" {
                (k, "forged".into())
            } else {
                (k, v)
            }
        })
        .collect();
    back.query_pairs_mut().clear().extend_pairs(forged);
    let page = reqwest::get(back.as_str()).await.unwrap();
    assert_eq!(page.status(), 400);
    let (ok, stdout, stderr) = login.finish().await;
    assert!(!ok);
    assert!(stdout.is_empty());
    assert!(stderr.contains("state does not match"), "{stderr}");
    assert!(w.idp.grants().is_empty(), "the code was never exchanged");
    assert!(!w.cache_path().exists() || w.entry().is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_readable_by_others_is_refused() {
    let w = World::start().await;
    let dir = w.cache_path().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(w.cache_path(), r#"{"version": 1, "logins": {}}"#).unwrap();
    std::fs::set_permissions(w.cache_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let fix = format!("chmod 600 {}", w.cache_path().display());
    for cmd in [
        w.auth_token(),
        w.cli(&["login", "--manager", &w.base]),
        w.cli(&["logout", "--manager", &w.base]),
    ] {
        let out = run(cmd).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&fix) && err.contains("mode 644"), "{err}");
    }
    // Nothing was asked of the provider.
    assert!(w.idp.pending_user_codes().is_empty());
}

/// An installed-app client secret (not confidential, as Google's are, but required).
const CLIENT_SECRET: &str = "GOCSPX-installed-app+secret/=";

/// Runs a device login to completion, approving as alice.
async fn device_login(w: &World, cmd: Command) -> (bool, String, String) {
    let mut login = Running::spawn(cmd);
    login.line(|l| l.contains("enter the code"));
    let code = pending_user_code(&w.idp).await;
    assert!(
        w.idp
            .approve(&code, "alice@example.com", &["platform-admins"])
    );
    login.finish().await
}

/// Makes the kept ID token look expired, so the next `auth token` refreshes.
fn expire(w: &World) {
    let mut cache = w.cache();
    cache["logins"][&w.base]["expiresAt"] = json!(0);
    std::fs::write(w.cache_path(), cache.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_requiring_a_client_secret_gets_the_one_the_manager_publishes() {
    let w = World::start_with(Some(CLIENT_SECRET)).await;
    w.idp.require_client_secret(CLIENT_SECRET);
    let (ok, stdout, stderr) = device_login(&w, w.cli(&["login", "--manager", &w.base])).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(&format!("Signed in to {} as alice@example.com", w.base)),
        "{stdout}"
    );
    assert_eq!(w.idp.grants(), [DEVICE_CODE_GRANT]);
    // Kept (in the person's own 0600 file) to refresh and revoke; never printed.
    assert_eq!(w.entry()["clientSecret"], CLIENT_SECRET);
    assert_eq!(mode(&w.cache_path()), 0o600);
    assert!(!stdout.contains(CLIENT_SECRET) && !stderr.contains(CLIENT_SECRET));

    // Refresh sends it too.
    expire(&w);
    let out = run(w.auth_token()).await;
    assert_exec_credential(&w, &out, "alice@example.com").await;
    assert_eq!(w.idp.grants(), [DEVICE_CODE_GRANT, "refresh_token"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(CLIENT_SECRET));

    // And revocation.
    let rt = w.entry()["refreshToken"].as_str().unwrap().to_string();
    let out = run(w.cli(&["logout", "--manager", &w.base])).await;
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!w.idp.refresh_token_active(&rt));
    assert!(w.entry().is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_required_client_secret_login_and_refresh_fail_clearly() {
    // The manager's login section has no clientSecret; the provider requires one.
    let w = World::start().await;
    w.idp.require_client_secret(CLIENT_SECRET);
    let out = run(w.cli(&["login", "--manager", &w.base])).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the device authorization request failed: invalid_client")
            && err.contains("`login.clientSecret`"),
        "{err}"
    );
    assert!(w.idp.pending_user_codes().is_empty());
    assert!(!w.cache_path().exists() || w.entry().is_null());

    // Without the manager: --client-id with --client-secret-file.
    let file = w.home.path().join("client-secret");
    std::fs::write(&file, format!("{CLIENT_SECRET}\n")).unwrap();
    let (ok, stdout, stderr) = device_login(
        &w,
        w.cli(&[
            "login",
            "--manager",
            &w.base,
            "--issuer",
            w.idp.issuer(),
            "--client-id",
            CLIENT_ID,
            "--client-secret-file",
            file.to_str().unwrap(),
        ]),
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(!stdout.contains(CLIENT_SECRET) && !stderr.contains(CLIENT_SECRET));
    assert_eq!(w.entry()["clientSecret"], CLIENT_SECRET);

    // A login kept without the secret (signed in before the provider required one)
    // cannot refresh: a clear error.
    let mut cache = w.cache();
    cache["logins"][&w.base]
        .as_object_mut()
        .unwrap()
        .remove("clientSecret");
    std::fs::write(w.cache_path(), cache.to_string()).unwrap();
    expire(&w);
    let out = run(w.auth_token()).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refreshing the sign-in failed: invalid_client")
            && err.contains("`login.clientSecret`"),
        "{err}"
    );
    assert_eq!(w.idp.grants(), [DEVICE_CODE_GRANT]);

    // An empty secret file is refused before anything is asked of the provider.
    std::fs::write(&file, "\n").unwrap();
    let out = run(w.cli(&[
        "login",
        "--manager",
        &w.base,
        "--issuer",
        w.idp.issuer(),
        "--client-id",
        CLIENT_ID,
        "--client-secret-file",
        file.to_str().unwrap(),
    ]))
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--client-secret-file"), "{err}");
    assert!(w.idp.pending_user_codes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_sends_the_client_secret_with_the_code() {
    let w = World::start_with(Some(CLIENT_SECRET)).await;
    w.idp.require_client_secret(CLIENT_SECRET);
    w.idp.set_signed_in("bob@example.com", &["platform-admins"]);
    let (login, authorize) = browser_login(&w);
    // The secret goes to the token endpoint only, never into the browser's URL.
    assert!(!authorize.contains("client_secret"), "{authorize}");
    let back = provider_redirect(&authorize).await;
    let page = reqwest::get(back.as_str()).await.unwrap();
    assert_eq!(page.status(), 200);
    let (ok, stdout, stderr) = login.finish().await;
    assert!(ok, "{stderr}");
    assert!(!stdout.contains(CLIENT_SECRET) && !stderr.contains(CLIENT_SECRET));
    assert_eq!(w.idp.grants(), ["authorization_code"]);
    assert_eq!(w.entry()["clientSecret"], CLIENT_SECRET);
}
