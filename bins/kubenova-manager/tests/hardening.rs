//! Attacks on the manager and its store, each refused: through the full router (middleware,
//! auth, handlers) over a real store, every test once on SQLite and once on Postgres
//! (`KUBENOVA_TEST_POSTGRES_URL`; skipped loudly without it, a failure with
//! `KUBENOVA_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_api::model::AuditOutcome;
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{AuditQuery, PgStore, SqliteStore, Store};
use serde_json::{Value, json};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const SECRET: &[u8] = b"hardening-test-secret-0123456789abcdef";

const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: TFMwdExTMUNSVWRKVGc9PQ==
contexts:
- name: prod
  context:
    cluster: prod
    user: admin
current-context: prod
users:
- name: admin
  user:
    token: cluster-admin-token
";

/// Runs each named scenario once per backend.
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::sqlite().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::Db::postgres().await else { return };
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )+
        }
    };
}

fn keyring() -> Keyring {
    Keyring::new(vec![Kek::new("k1", &[7u8; 32]).unwrap()]).unwrap()
}

fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run the hardening tests on Postgres !!!"
            );
            None
        }
    }
}

/// A fresh database: an SQLite file or a Postgres schema of its own.
struct Db {
    store: Arc<dyn Store>,
    sqlite: Option<SqliteStore>,
    pg: Option<PgStore>,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kn.db").display());
        let s = SqliteStore::connect(&url, keyring()).await.unwrap();
        Db {
            store: Arc::new(s.clone()),
            sqlite: Some(s),
            pg: None,
            schema: None,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Option<Db> {
        let url = pg_url()?;
        let schema = format!("kn_hardening_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("connect to KUBENOVA_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
            .unwrap()
            .options([("search_path", schema.as_str())]);
        let s = PgStore::connect_with(opts, 8, keyring()).await.unwrap();
        Some(Db {
            store: Arc::new(s.clone()),
            sqlite: None,
            pg: Some(s),
            schema: Some(schema),
            _dir: None,
        })
    }

    /// Runs SQL on the database directly (fault injection), in the backend's dialect.
    async fn exec(&self, sqlite: &str, postgres: &str) {
        if let Some(s) = &self.sqlite {
            sqlx::raw_sql(sqlite).execute(s.pool()).await.unwrap();
        }
        if let Some(p) = &self.pg {
            sqlx::raw_sql(postgres).execute(p.pool()).await.unwrap();
        }
    }

    /// Makes every insert into `table` fail (until [`Db::heal`]).
    async fn break_inserts(&self, table: &str) {
        self.exec(
            &format!(
                "CREATE TRIGGER injected_{table} BEFORE INSERT ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            ),
            &format!(
                "CREATE FUNCTION injected_{table}() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER injected_{table} BEFORE INSERT ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION injected_{table}();"
            ),
        )
        .await;
    }

    /// Undoes [`Db::break_inserts`].
    async fn heal(&self, table: &str) {
        self.exec(
            &format!("DROP TRIGGER injected_{table};"),
            &format!("DROP TRIGGER injected_{table} ON {table}; DROP FUNCTION injected_{table}();"),
        )
        .await;
    }

    async fn cleanup(self) {
        if let (Some(schema), Some(url)) = (&self.schema, pg_url()) {
            if let Some(pg) = &self.pg {
                pg.pool().close().await;
            }
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }
}

fn quiet() -> ServerConfig {
    ServerConfig {
        external_url: Some("https://kubenova.example.com".into()),
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
    #[track_caller]
    fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }
    #[track_caller]
    fn expect_kn(&self, status: StatusCode, code: &str) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.code(), code, "body: {}", self.text);
        self
    }
}

/// A manager over `db` with a cluster, a tenant `acme` (owners alice and bob) and its
/// project `web`.
struct World {
    st: AppState,
    router: axum::Router,
    cluster: ClusterId,
    tenant: TenantId,
    project: ProjectId,
}

impl World {
    async fn new(db: &Db, cfg: ServerConfig) -> World {
        let st = kubenova_manager::test_state(db.store.clone(), cfg, SECRET);
        let router = kubenova_manager::api::router(st.clone());
        let mut w = World {
            st,
            router,
            cluster: ClusterId::new(),
            tenant: TenantId::new(),
            project: ProjectId::new(),
        };
        let admin = w.admin();
        let c = w
            .post(
                "/api/v1/clusters",
                &admin,
                json!({"name": "prod-eu", "kubeconfig": KUBECONFIG}),
            )
            .await;
        c.expect(StatusCode::CREATED);
        w.cluster = c.json()["id"].as_str().unwrap().parse().unwrap();
        let r = w
            .post(
                &format!("/api/v1/clusters/{}/tenants", w.cluster),
                &admin,
                json!({"name": "acme", "owners": ["alice@example.com", "bob@example.com"]}),
            )
            .await;
        r.expect(StatusCode::CREATED);
        w.tenant = r.json()["id"].as_str().unwrap().parse().unwrap();
        let r = w
            .post(&w.projects_url(), &admin, json!({"name": "web"}))
            .await;
        r.expect(StatusCode::CREATED);
        w.project = r.json()["id"].as_str().unwrap().parse().unwrap();
        w
    }

    /// The same objects served by a manager with another configuration (same store,
    /// same token secret).
    fn with_config(&self, cfg: ServerConfig) -> World {
        let st = kubenova_manager::test_state(self.st.store.clone(), cfg, SECRET);
        World {
            router: kubenova_manager::api::router(st.clone()),
            st,
            cluster: self.cluster,
            tenant: self.tenant,
            project: self.project,
        }
    }

    fn token(&self, sub: &str, roles: &[Role], t: &[TenantId], p: &[ProjectId]) -> String {
        self.st
            .auth
            .mint(sub, roles, t, p, Duration::from_secs(600))
            .unwrap()
            .token
    }

    fn admin(&self) -> String {
        self.token("admin@example.com", &[Role::Admin], &[], &[])
    }

    fn owner(&self, sub: &str) -> String {
        self.token(sub, &[Role::TenantOwner], &[self.tenant], &[])
    }

    fn projects_url(&self) -> String {
        format!(
            "/api/v1/clusters/{}/tenants/{}/projects",
            self.cluster, self.tenant
        )
    }

    fn apps_url(&self) -> String {
        format!("{}/{}/apps", self.projects_url(), self.project)
    }

    /// Creates an app `name` (revision 1) and returns its URL.
    async fn app(&self, name: &str) -> String {
        let r = self
            .post(
                &self.apps_url(),
                &self.admin(),
                json!({"name": name, "image": "ghcr.io/acme/shop:1.0.0"}),
            )
            .await;
        r.expect(StatusCode::CREATED);
        format!("{}/{}", self.apps_url(), r.json()["id"].as_str().unwrap())
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, uri: &str, token: &str) -> Resp {
        self.send(Method::GET, uri, Some(token), None, &[]).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> Resp {
        self.send(Method::POST, uri, Some(token), Some(body), &[])
            .await
    }

    async fn delete(&self, uri: &str, token: &str) -> Resp {
        self.send(Method::DELETE, uri, Some(token), None, &[]).await
    }

    async fn audit_of(&self, actor: &str) -> Vec<kubenova_api::model::AuditEvent> {
        self.st
            .store
            .query_audit(&AuditQuery {
                actor: Some(actor.into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .items
    }
}

on_both_backends!(
    a_revoked_owner_cannot_lift_its_own_revocation,
    a_platform_revocation_is_lifted_only_by_admin_or_ops,
    concurrent_signing_key_rotations_lose_no_key,
    deploy_and_rollback_write_the_app_and_its_run_together,
    finished_workflow_runs_are_kept_to_the_retention,
    usage_reads_sum_in_the_database_and_never_truncate,
    usage_over_the_cluster_capacity_is_refused_whole,
    a_replay_needs_the_same_roles_and_scope,
    a_replay_needs_authorization_now,
    unauthenticated_floods_are_counted_and_sampled,
);

// ---------------------------------------------------------------------------------
// Lifting subject revocations
// ---------------------------------------------------------------------------------

async fn revoke(w: &World, token: &str, subject: &str) {
    w.delete(
        &format!("/api/v1/tenants/{}/credentials?subject={subject}", w.tenant),
        token,
    )
    .await
    .expect(StatusCode::OK);
}

async fn lift(w: &World, token: &str, subject: &str) -> Resp {
    w.post(
        &format!("/api/v1/tenants/{}/revoked-subjects:lift", w.tenant),
        token,
        json!({"subject": subject}),
    )
    .await
}

async fn revoked_subjects(w: &World) -> Vec<String> {
    w.st.store
        .list_subject_revocations(w.tenant, &Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.subject)
        .collect()
}

/// The attack: a tenant owner whose subject was revoked still holds a valid manager token
/// and lifts its own revocation with it.
async fn a_revoked_owner_cannot_lift_its_own_revocation(db: &Db) {
    let w = World::new(db, quiet()).await;
    let alice = w.owner("alice@example.com");
    let bob = w.owner("bob@example.com");
    // A co-owner revokes alice; alice's manager token is still valid.
    revoke(&w, &bob, "alice@example.com").await;
    let r = lift(&w, &alice, "alice@example.com").await;
    r.expect_kn(StatusCode::FORBIDDEN, "KN-403");
    assert!(r.text.contains("own subject"), "{}", r.text);
    assert_eq!(revoked_subjects(&w).await, ["alice@example.com"]);
    // The refusal is audited as denied, with the reason.
    let denied: Vec<_> = w
        .audit_of("alice@example.com")
        .await
        .into_iter()
        .filter(|e| e.action == "credential.lift-subject")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].outcome, AuditOutcome::Denied);
    assert_eq!(denied[0].http_status, Some(403));
    let details = denied[0].details.clone().unwrap_or_default();
    assert_eq!(details["subject"], "alice@example.com", "{details}");
    assert!(
        details["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("own"),
        "{details}"
    );
    // Nobody lifts their own revocation, not even an admin.
    let admin_sub = "admin@example.com";
    revoke(&w, &w.admin(), admin_sub).await;
    lift(&w, &w.admin(), admin_sub)
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    // Someone else may: the co-owner lifts alice's (an owner's) revocation.
    let r = lift(&w, &bob, "alice@example.com").await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["lifted"], true);
    assert_eq!(revoked_subjects(&w).await, [admin_sub]);
}

/// A revocation made by admin or ops stands until admin or ops lift it: a tenant owner
/// can neither lift it nor turn it into an owner's revocation by revoking again.
async fn a_platform_revocation_is_lifted_only_by_admin_or_ops(db: &Db) {
    let w = World::new(db, quiet()).await;
    let bob = w.owner("bob@example.com");
    let ops = w.token("ops@example.com", &[Role::Ops], &[], &[]);
    revoke(&w, &w.admin(), "alice@example.com").await;
    let r = lift(&w, &bob, "alice@example.com").await;
    r.expect_kn(StatusCode::FORBIDDEN, "KN-403");
    assert!(r.text.contains("admin or ops"), "{}", r.text);
    assert_eq!(revoked_subjects(&w).await, ["alice@example.com"]);
    let listed = w
        .get(
            &format!("/api/v1/tenants/{}/revoked-subjects", w.tenant),
            &bob,
        )
        .await;
    assert_eq!(listed.json()["items"][0]["revokedByPlatform"], true);
    let denied = w.audit_of("bob@example.com").await;
    assert!(
        denied
            .iter()
            .any(|e| e.action == "credential.lift-subject" && e.outcome == AuditOutcome::Denied),
        "{denied:?}"
    );
    // Revoking again as an owner does not downgrade the platform's revocation.
    revoke(&w, &bob, "alice@example.com").await;
    lift(&w, &bob, "alice@example.com")
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    assert_eq!(revoked_subjects(&w).await, ["alice@example.com"]);
    // ops lifts it.
    let r = lift(&w, &ops, "alice@example.com").await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["lifted"], true);
    assert!(revoked_subjects(&w).await.is_empty());
    // An owner's revocation is the owners' to lift.
    revoke(&w, &bob, "carol@example.com").await;
    let listed = w
        .get(
            &format!("/api/v1/tenants/{}/revoked-subjects", w.tenant),
            &bob,
        )
        .await;
    assert_eq!(listed.json()["items"][0]["revokedByPlatform"], false);
    lift(&w, &w.owner("alice@example.com"), "carol@example.com")
        .await
        .expect(StatusCode::OK);
}

// ---------------------------------------------------------------------------------
// Signing-key rotation
// ---------------------------------------------------------------------------------

/// Several rotations at once (replicas, the API and the `rotate-signing-keys` command):
/// each one's new key survives, and the reports form one history.
async fn concurrent_signing_key_rotations_lose_no_key(db: &Db) {
    use kubenova_manager::api::kubeconfigs::{load_or_create_signing_keys, rotate_signing_keys};
    let w = World::new(db, quiet()).await;
    let first = load_or_create_signing_keys(db.store.as_ref())
        .await
        .unwrap()
        .active()
        .kid()
        .to_string();
    // Nothing is old enough to retire during the test.
    let overlap = time::Duration::days(1);
    const DIRECT: usize = 5;
    let direct = (0..DIRECT).map(|_| {
        let store = db.store.clone();
        tokio::spawn(async move { rotate_signing_keys(store.as_ref(), overlap).await })
    });
    let admin = w.admin();
    let (direct, api) = tokio::join!(
        futures::future::join_all(direct),
        w.post("/api/v1/signing-keys:rotate", &admin, json!({}))
    );
    let mut reports: Vec<(String, Vec<String>)> = direct
        .into_iter()
        .map(|r| {
            let r = r.unwrap().unwrap();
            (r.active_kid, r.verifying_kids)
        })
        .collect();
    api.expect(StatusCode::OK);
    let a = api.json();
    reports.push((
        a["activeKid"].as_str().unwrap().to_string(),
        serde_json::from_value(a["verifyingKids"].clone()).unwrap(),
    ));
    let keys = load_or_create_signing_keys(db.store.as_ref())
        .await
        .unwrap();
    let mut stored: Vec<String> = keys
        .previous()
        .iter()
        .map(|k| k.kid().to_string())
        .collect();
    stored.push(keys.active().kid().to_string());
    // No key lost: the first key and every rotation's new key are stored.
    assert!(stored.contains(&first), "{first} lost: {stored:?}");
    for (kid, _) in &reports {
        assert!(
            stored.contains(kid),
            "the key {kid} of a rotation was lost: {stored:?}"
        );
    }
    assert_eq!(stored.len(), DIRECT + 2, "{stored:?}");
    // One history: each rotation saw exactly the keys of the rotations before it.
    reports.sort_by_key(|(_, verifying)| verifying.len());
    for (n, (kid, verifying)) in reports.iter().enumerate() {
        assert_eq!(verifying.len(), n + 1, "{reports:?}");
        assert!(verifying.contains(&first));
        for (earlier, _) in &reports[..n] {
            assert!(verifying.contains(earlier), "{reports:?}");
        }
        assert!(!verifying.contains(kid));
    }
    assert_eq!(keys.active().kid(), reports.last().unwrap().0);
}

// ---------------------------------------------------------------------------------
// Deploy and rollback: app and run in one transaction
// ---------------------------------------------------------------------------------

async fn runs_of(w: &World, app: &str) -> Vec<Value> {
    let r = w.get(&format!("{app}/workflow/runs"), &w.admin()).await;
    r.expect(StatusCode::OK);
    r.json()["items"].as_array().unwrap().clone()
}

/// A failure between the two writes (here: the run's insert fails) leaves neither: no
/// deployed revision without its run, no rollback revision without its run.
async fn deploy_and_rollback_write_the_app_and_its_run_together(db: &Db) {
    let w = World::new(db, quiet()).await;
    let admin = w.admin();
    let app = w.app("shop").await;
    // Revision 2, so that there is something to roll back to.
    w.send(
        Method::PUT,
        &app,
        Some(&admin),
        Some(json!({"image": "ghcr.io/acme/shop:2.0.0"})),
        &[],
    )
    .await
    .expect(StatusCode::OK);
    let before = w.get(&app, &admin).await.json();
    assert_eq!(before["revision"], 2);

    db.break_inserts("workflow_runs").await;
    let r = w.post(&format!("{app}:deploy"), &admin, json!({})).await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.text);
    let r = w
        .post(&format!("{app}:rollback"), &admin, json!({"revision": 1}))
        .await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.text);
    let after = w.get(&app, &admin).await.json();
    assert_eq!(after["version"], before["version"], "{after}");
    assert_eq!(after["revision"], 2, "no rollback revision without its run");
    assert!(
        after["deployedRevision"].is_null(),
        "no deployed revision without its run: {after}"
    );
    let revisions = w.get(&format!("{app}/revisions"), &admin).await.json();
    assert_eq!(
        revisions["items"].as_array().unwrap().len(),
        2,
        "{revisions}"
    );
    assert!(runs_of(&w, &app).await.is_empty());

    // Healed: both succeed, each with its run.
    db.heal("workflow_runs").await;
    w.post(&format!("{app}:deploy"), &admin, json!({}))
        .await
        .expect(StatusCode::ACCEPTED);
    w.post(&format!("{app}:rollback"), &admin, json!({"revision": 1}))
        .await
        .expect(StatusCode::OK);
    let after = w.get(&app, &admin).await.json();
    assert_eq!(after["revision"], 3);
    assert_eq!(after["deployedRevision"], 3);
    let runs = runs_of(&w, &app).await;
    let actions: Vec<(&str, i64)> = runs
        .iter()
        .map(|r| {
            (
                r["inputs"]["action"].as_str().unwrap(),
                r["inputs"]["revision"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("deploy", 2), ("rollback", 3)]);
}

// ---------------------------------------------------------------------------------
// Workflow run retention
// ---------------------------------------------------------------------------------

/// Deploys repeatedly, each deploy reported ready by the agent (which finishes its run):
/// only the newest `--workflow-run-retention` finished runs stay; runs still waiting are
/// never dropped.
async fn finished_workflow_runs_are_kept_to_the_retention(db: &Db) {
    let mut cfg = quiet();
    cfg.workflow_run_retention = 2;
    let w = World::new(db, cfg).await;
    let admin = w.admin();
    let agent = kubenova_manager::api::agent::rotate_credential(w.st.store.as_ref(), w.cluster)
        .await
        .unwrap();
    let app = w.app("shop").await;
    let app_id = app.rsplit('/').next().unwrap().to_string();
    // A run nobody finishes (a custom workflow run stays requested).
    let custom = w
        .post(
            &format!("{app}/workflow/run"),
            &admin,
            json!({"inputs": {"smoke": true}}),
        )
        .await;
    custom.expect(StatusCode::ACCEPTED);
    let custom = custom.json()["id"].as_str().unwrap().to_string();
    let mut deploys = Vec::new();
    for n in 0..5 {
        if n > 0 {
            w.send(
                Method::PUT,
                &app,
                Some(&admin),
                Some(json!({"image": format!("ghcr.io/acme/shop:1.{n}.0")})),
                &[],
            )
            .await
            .expect(StatusCode::OK);
        }
        w.post(&format!("{app}:deploy"), &admin, json!({}))
            .await
            .expect(StatusCode::ACCEPTED);
        let rev = w.st.store.cluster_revision(w.cluster).await.unwrap();
        let report = json!({"items": [{"kind": "app", "id": app_id, "velaPhase": "running",
            "status": {"phase": "ready", "observedRevision": rev, "conditions": []}}]});
        let r = w.post("/api/v1/agent/status", &agent, report).await;
        r.expect(StatusCode::OK);
        assert_eq!(r.json()["applied"], 1, "{}", r.text);
        let runs = runs_of(&w, &app).await;
        let last = runs.last().unwrap();
        assert_eq!(last["status"], "succeeded", "{runs:?}");
        deploys.push(last["id"].as_str().unwrap().to_string());
    }
    let runs = runs_of(&w, &app).await;
    let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [custom.as_str(), deploys[3].as_str(), deploys[4].as_str()],
        "{runs:?}"
    );
    assert_eq!(runs[0]["status"], "requested");
}

// ---------------------------------------------------------------------------------
// Usage reads
// ---------------------------------------------------------------------------------

/// A range with more records than a usage read answers is a clear KN-422, never a silently
/// shorter list; the totals are the database's sums over every record of the range.
async fn usage_reads_sum_in_the_database_and_never_truncate(db: &Db) {
    let mut cfg = quiet();
    cfg.usage_max_records = 8;
    let w = World::new(db, cfg).await;
    let admin = w.admin();
    let hour = |n: i64| time::macros::datetime!(2026-02-01 00:00 UTC) + time::Duration::hours(n);
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let record = |project: Option<ProjectId>, n: i64| {
        let mut r = json!({"clusterId": w.cluster, "tenantId": w.tenant, "hour": rfc(hour(n)),
            "cpuMillicores": 1000 + n, "memoryBytes": (1_i64 << 34) + n, "storageBytes": 3 * n,
            "loadBalancers": n % 2, "namespaces": 2, "pods": 10 + n, "apps": 1});
        if let Some(p) = project {
            r["projectId"] = json!(p);
        }
        r
    };
    let mut records: Vec<Value> = (0..8).map(|n| record(None, n)).collect();
    records.extend((0..3).map(|n| record(Some(w.project), n)));
    w.post("/api/v1/usage", &admin, json!({"records": records}))
        .await
        .expect(StatusCode::ACCEPTED);
    let range = format!("from={}&to={}", rfc(hour(0)), rfc(hour(24)));
    let usage = format!("/api/v1/tenants/{}/usage?{range}", w.tenant);

    // At the bound: every tenant-level record, and the sums of all of them.
    let r = w.get(&usage, &admin).await;
    r.expect(StatusCode::OK);
    let body = r.json();
    assert_eq!(body["records"].as_array().unwrap().len(), 8);
    let sum = |f: fn(i64) -> i64| (0..8).map(f).sum::<i64>();
    assert_eq!(
        body["totals"],
        json!({"hours": 8, "cpuMillicoreHours": sum(|n| 1000 + n),
            "memoryByteHours": sum(|n| (1 << 34) + n), "storageByteHours": sum(|n| 3 * n),
            "loadBalancerHours": sum(|n| n % 2), "podHours": sum(|n| 10 + n)}),
        "{body}"
    );
    // With the projects' records the range holds 11: refused, with what to do.
    let r = w
        .get(&format!("{usage}&includeProjects=true"), &admin)
        .await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert!(r.text.contains("more than 8"), "{}", r.text);
    assert!(r.text.contains("shorter range"), "{}", r.text);
    // A smaller bound: the tenant read is refused too, CSV included.
    let mut small = quiet();
    small.usage_max_records = 5;
    let w5 = w.with_config(small);
    w5.get(&usage, &admin)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    w5.get(&format!("{usage}&format=csv"), &admin)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    // The project read: its three records and their sums.
    let r = w5
        .get(
            &format!("/api/v1/projects/{}/usage?{range}", w.project),
            &admin,
        )
        .await;
    r.expect(StatusCode::OK);
    let body = r.json();
    assert_eq!(body["records"].as_array().unwrap().len(), 3);
    assert_eq!(body["totals"]["hours"], 3);
    assert_eq!(body["totals"]["cpuMillicoreHours"], 3003);
    assert_eq!(body["totals"]["podHours"], 33);
}

/// The attack (or the broken collector): an operator reports a tenant using more CPU than
/// the cluster it runs in can hold. With the capacity the operator measured at the same
/// samples, the whole batch is refused (KN-422 naming the record and field), nothing is
/// stored; limits are never checked against it (overcommit is normal), and a batch without
/// a capacity (an older operator) keeps the fixed bounds only.
async fn usage_over_the_cluster_capacity_is_refused_whole(db: &Db) {
    let w = World::new(db, quiet()).await;
    let admin = w.admin();
    let agent = kubenova_manager::api::agent::rotate_credential(w.st.store.as_ref(), w.cluster)
        .await
        .unwrap();
    // Two nodes of 4 CPUs and 16 GiB, 500m requested by pods not running on them.
    let capacity = json!({"nodes": 2, "cpuMillicores": 8000, "memoryBytes": 32_i64 << 30,
        "pendingCpuMillicores": 500, "pendingMemoryBytes": 0});
    let record = |hour: &str, project: Option<ProjectId>, cpu: i64, memory: i64| {
        let mut r = json!({"clusterId": w.cluster, "tenantId": w.tenant, "hour": hour,
            "cpuMillicores": cpu, "memoryBytes": memory, "storageBytes": 0,
            "loadBalancers": 0, "namespaces": 2, "pods": 4, "apps": 1,
            // Limits far over the capacity: overcommitted, never refused for it.
            "cpuLimitMillicores": 100_000, "memoryLimitBytes": 1_i64 << 40,
            "clusterCapacity": capacity});
        if let Some(p) = project {
            r["projectId"] = json!(p);
        }
        r
    };
    let (h10, h11) = ("2026-02-01T10:00:00Z", "2026-02-01T11:00:00Z");
    // The third record claims 9 CPUs for an hour: more than 8 + 0.5 (+5%).
    let batch = json!([
        record(h10, None, 2000, 4 << 30),
        record(h10, Some(w.project), 1000, 1 << 30),
        record(h11, None, 9000, 4 << 30),
    ]);
    let r = w.post("/api/v1/agent/usage", &agent, batch.clone()).await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    let violations = r.json()["details"]["violations"].clone();
    assert_eq!(
        violations.as_array().unwrap().len(),
        1,
        "only the record over capacity: {violations}"
    );
    assert_eq!(
        violations[0]["field"], "records[2].cpuMillicores",
        "{violations}"
    );
    let reason = violations[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("8000 allocatable on 2 nodes") && reason.contains("at most 8926"),
        "{reason}"
    );
    // The admin route checks the same.
    let r = w
        .post("/api/v1/usage", &admin, json!({"records": batch}))
        .await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert!(r.text.contains("records[2].cpuMillicores"), "{}", r.text);
    // Memory alike.
    let r = w
        .post(
            "/api/v1/agent/usage",
            &agent,
            json!([record(h10, None, 2000, 34 << 30)]),
        )
        .await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert!(r.text.contains("records[0].memoryBytes"), "{}", r.text);
    // Nothing of the refused batches was stored.
    let usage = format!(
        "/api/v1/tenants/{}/usage?from=2026-02-01T00:00:00Z&to=2026-02-02T00:00:00Z&includeProjects=true",
        w.tenant
    );
    let stored = |body: Value| body["records"].as_array().unwrap().len();
    assert_eq!(stored(w.get(&usage, &admin).await.json()), 0);

    // Within the capacity (its tolerance included), the batch is stored whole.
    let ok = json!([
        record(h10, None, 2000, 4 << 30),
        record(h10, Some(w.project), 1000, 1 << 30),
        record(h11, None, 8926, 32 << 30),
    ]);
    w.post("/api/v1/agent/usage", &agent, ok)
        .await
        .expect(StatusCode::NO_CONTENT);
    let body = w.get(&usage, &admin).await.json();
    assert_eq!(stored(body.clone()), 3, "{body}");
    // The capacity is a check, not a stored value.
    assert!(!body.to_string().contains("clusterCapacity"), "{body}");

    // Without a capacity (an operator that does not report one) the fixed bounds apply.
    let mut old = record(h11, None, 50_000, 4 << 30);
    old.as_object_mut().unwrap().remove("clusterCapacity");
    w.post("/api/v1/agent/usage", &agent, json!([old]))
        .await
        .expect(StatusCode::NO_CONTENT);
}

// ---------------------------------------------------------------------------------
// Idempotency-Key replay
// ---------------------------------------------------------------------------------

impl Resp {
    fn replayed(&self) -> bool {
        self.headers.get("idempotent-replayed").is_some()
    }
}

async fn post_with_key(w: &World, uri: &str, token: &str, body: Value, key: &str) -> Resp {
    w.send(
        Method::POST,
        uri,
        Some(token),
        Some(body),
        &[("Idempotency-Key", key)],
    )
    .await
}

async fn projects_named(w: &World, name: &str) -> usize {
    w.get(&w.projects_url(), &w.admin()).await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == name)
        .count()
}

/// The attack: another token of the same subject, with other roles or another scope,
/// retries a request with the first token's `Idempotency-Key` and gets its stored
/// response (here: a project of a tenant the second token may not even see).
async fn a_replay_needs_the_same_roles_and_scope(db: &Db) {
    let w = World::new(db, quiet()).await;
    let other = w
        .post(
            &format!("/api/v1/clusters/{}/tenants", w.cluster),
            &w.admin(),
            json!({"name": "beta"}),
        )
        .await;
    other.expect(StatusCode::CREATED);
    let beta: TenantId = other.json()["id"].as_str().unwrap().parse().unwrap();
    let owner = w.owner("alice@example.com");
    let body = json!({"name": "payments"});
    let first = post_with_key(&w, &w.projects_url(), &owner, body.clone(), "k-1").await;
    first.expect(StatusCode::CREATED);
    // The same subject as owner of another tenant: not its tenant, KN-404 as always.
    let elsewhere = w.token("alice@example.com", &[Role::TenantOwner], &[beta], &[]);
    let r = post_with_key(&w, &w.projects_url(), &elsewhere, body.clone(), "k-1").await;
    assert!(!r.replayed(), "replayed to another scope: {}", r.text);
    r.expect_kn(StatusCode::NOT_FOUND, "KN-404");
    // The same subject and tenant, as readOnly: may not create projects, KN-403.
    let reader = w.token("alice@example.com", &[Role::ReadOnly], &[w.tenant], &[]);
    let r = post_with_key(&w, &w.projects_url(), &reader, body.clone(), "k-1").await;
    assert!(!r.replayed(), "replayed to other roles: {}", r.text);
    r.expect_kn(StatusCode::FORBIDDEN, "KN-403");
    // The same subject with more roles: its own request, not the other token's
    // response (the name is taken by then: KN-409).
    let both = w.token(
        "alice@example.com",
        &[Role::TenantOwner, Role::ReadOnly],
        &[w.tenant],
        &[],
    );
    let r = post_with_key(&w, &w.projects_url(), &both, body.clone(), "k-1").await;
    assert!(!r.replayed(), "replayed to other roles: {}", r.text);
    r.expect_kn(StatusCode::CONFLICT, "KN-409");
    // The very same roles and scope (another token): the stored response, nothing new.
    let again = w.owner("alice@example.com");
    let r = post_with_key(&w, &w.projects_url(), &again, body, "k-1").await;
    r.expect(StatusCode::CREATED);
    assert!(r.replayed());
    assert_eq!(r.json(), first.json());
    assert_eq!(projects_named(&w, "payments").await, 1);
}

/// A stored response is served only to a request that is authorized now: after the
/// tenant is gone (the caller may no longer create projects there), a retry is KN-404,
/// not the stored 201; an app action is replayed before its `If-Match` check.
async fn a_replay_needs_authorization_now(db: &Db) {
    let w = World::new(db, quiet()).await;
    let admin = w.admin();
    let app = w.app("shop").await;
    let version = w.get(&app, &admin).await.json()["version"].to_string();
    let deploy = |key: &'static str| {
        let (w, app, admin, version) = (&w, app.clone(), admin.clone(), version.clone());
        async move {
            w.send(
                Method::POST,
                &format!("{app}:deploy"),
                Some(&admin),
                Some(json!({})),
                &[("Idempotency-Key", key), ("If-Match", &version)],
            )
            .await
        }
    };
    let first = deploy("d-1").await;
    first.expect(StatusCode::ACCEPTED);
    let retry = deploy("d-1").await;
    retry.expect(StatusCode::ACCEPTED);
    assert!(retry.replayed(), "{}", retry.text);
    assert_eq!(retry.json(), first.json());
    assert_eq!(runs_of(&w, &app).await.len(), 1);

    let owner = w.owner("alice@example.com");
    let body = json!({"name": "ledger"});
    post_with_key(&w, &w.projects_url(), &owner, body.clone(), "p-1")
        .await
        .expect(StatusCode::CREATED);
    w.send(
        Method::DELETE,
        &format!(
            "/api/v1/clusters/{}/tenants/{}?cascade=true",
            w.cluster, w.tenant
        ),
        Some(&admin),
        None,
        &[],
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let r = post_with_key(&w, &w.projects_url(), &owner, body, "p-1").await;
    assert!(!r.replayed(), "replayed without authorization: {}", r.text);
    r.expect_kn(StatusCode::NOT_FOUND, "KN-404");
}

// ---------------------------------------------------------------------------------
// Unauthenticated calls: counted, audit sampled
// ---------------------------------------------------------------------------------

impl World {
    /// A request from `source` (the connection's address, as the server sees it).
    async fn send_from(
        &self,
        source: [u8; 4],
        method: Method,
        uri: &str,
        authorization: Option<&str>,
    ) -> StatusCode {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(a) = authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        let mut req = b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                source, 40000,
            ))));
        self.router.clone().oneshot(req).await.unwrap().status()
    }

    async fn metric(&self, line_start: &str) -> f64 {
        let m = self
            .send(Method::GET, "/metrics", None, None, &[])
            .await
            .text;
        m.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

/// The attack: a flood of calls with bad or missing tokens, each of which wrote an audit
/// row, grows the audit table without bound. Every 401 is counted in a metric by reason;
/// audit rows are written for at most N per source and minute, the rest counted.
async fn unauthenticated_floods_are_counted_and_sampled(db: &Db) {
    let mut cfg = quiet();
    cfg.audit_unauthenticated_per_source = 3;
    cfg.audit_unauthenticated_total = 100;
    let w = World::new(db, cfg).await;
    let tenants = format!("/api/v1/clusters/{}/tenants", w.cluster);
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    for _ in 0..10 {
        let s = w
            .send_from(a, Method::POST, &tenants, Some("Bearer not-a-jwt"))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..2 {
        let s = w
            .send_from(b, Method::POST, &tenants, Some("Bearer not-a-jwt"))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..4 {
        let s = w.send_from(a, Method::GET, &tenants, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..5 {
        let s = w
            .send_from(a, Method::POST, &tenants, Some("Basic YWxpY2U6eA=="))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Agent routes: a bad agent credential is a 401 too.
    for _ in 0..4 {
        let s = w
            .send_from(
                b,
                Method::POST,
                "/api/v1/agent/heartbeat",
                Some("Bearer kna_nope"),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let rows = |actor: &'static str| {
        let w = &w;
        async move {
            w.audit_of(actor)
                .await
                .into_iter()
                .filter(|e| e.http_status == Some(401))
                .map(|e| e.source_ip)
                .collect::<Vec<_>>()
        }
    };
    let anonymous = rows("anonymous").await;
    let from = |ip: &str| anonymous.iter().filter(|s| *s == ip).count();
    // At most 3 per source: A sent 15 audited calls, B 2.
    assert_eq!(from("10.0.0.1"), 3, "{anonymous:?}");
    assert_eq!(from("10.0.0.2"), 2, "{anonymous:?}");
    let agent = rows("agent").await;
    assert_eq!(agent.len(), 1, "B's third audited call only: {agent:?}");
    // Every 401 is counted by reason, and what was not audited is counted too.
    assert_eq!(
        w.metric("kubenova_http_unauthenticated_total{reason=\"invalid_token\"} ")
            .await,
        12.0
    );
    assert_eq!(
        w.metric("kubenova_http_unauthenticated_total{reason=\"missing_token\"} ")
            .await,
        4.0
    );
    assert_eq!(
        w.metric("kubenova_http_unauthenticated_total{reason=\"not_bearer\"} ")
            .await,
        5.0
    );
    assert_eq!(
        w.metric("kubenova_http_unauthenticated_total{reason=\"agent_credential\"} ")
            .await,
        4.0
    );
    assert_eq!(
        w.metric("kubenova_audit_unauthenticated_suppressed_total ")
            .await,
        // A: 15 audited calls, 3 written; B: 2 + 4, 3 written.
        (15.0 - 3.0) + (6.0 - 3.0)
    );
}
