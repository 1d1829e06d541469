//! The authorization matrix: every operation of `api::openapi()` × every role (plus an
//! unscoped readOnly and a call without a token) × an in-scope and an out-of-scope target,
//! checked against the table in `docs/src/authorization.md`, which this test parses, so
//! the documentation and the code cannot drift apart.
//!
//! Outcome classes: `✓` allowed (anything but 401/403/404), `403` forbidden, `404` hidden,
//! `401` unauthenticated. A cell `in / out` gives the in-scope and the out-of-scope class;
//! a single value applies to both.
//!
//! Scope: tenantOwner and the scoped readOnly are scoped to the target's tenant (in scope)
//! or to another tenant (out of scope); projectDev likewise to the target's project. The
//! identity-provider callers (a person signed in, with rights derived from the model) are
//! named in the owners of the target's tenant, or with a role in the access of the
//! target's project (in scope), or in another chain's (out of scope). The API-key
//! callers are keys of the target's tenant (an owner key) or with a role in the target's
//! project (in scope), or of another chain's (out of scope). The
//! objects are created through the API as admin over a temporary SQLite store. Destructive
//! operations (DELETE, `:delete`, `cascade`) run on throwaway objects created for each
//! single check, so the checks do not depend on their order.
//!
//! `KUBENOVA_AUTHZ_MATRIX_PRINT=1` prints the observed table (to paste into the docs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::ids::{ProjectId, TenantId};
use kubenova_api::model::AccessRole;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::{AppState, openapi, router};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::ServiceExt;

const DOC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/src/authorization.md"
);
const BEGIN: &str = "<!-- authz-matrix:begin -->";
const END: &str = "<!-- authz-matrix:end -->";

// ---------------------------------------------------------------------------------
// Outcome classes and the documented table
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Allowed,
    Forbidden,
    Hidden,
    Unauthenticated,
}

impl Class {
    fn of(status: StatusCode) -> Class {
        match status.as_u16() {
            401 => Class::Unauthenticated,
            403 => Class::Forbidden,
            404 => Class::Hidden,
            _ => Class::Allowed,
        }
    }

    fn parse(s: &str) -> Option<Class> {
        match s.trim() {
            "✓" => Some(Class::Allowed),
            "403" => Some(Class::Forbidden),
            "404" => Some(Class::Hidden),
            "401" => Some(Class::Unauthenticated),
            _ => None,
        }
    }

    fn sym(self) -> &'static str {
        match self {
            Class::Allowed => "✓",
            Class::Forbidden => "403",
            Class::Hidden => "404",
            Class::Unauthenticated => "401",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    None,
    Tenant,
    Project,
    /// A person named in the home tenant's `owners` (an identity provider's token).
    Owners,
    /// A person with this role in the home project's `access`.
    Access(AccessRole),
    /// An API key of the home tenant (`None`: a tenant key, always an owner) or with this
    /// role in the home project.
    Key(Option<AccessRole>),
}

/// A caller of the matrix: one column of the table.
#[derive(Debug, Clone, Copy)]
struct Caller {
    column: &'static str,
    role: Option<Role>,
    scope: Scope,
}

const CALLERS: [Caller; 13] = [
    Caller {
        column: "admin",
        role: Some(Role::Admin),
        scope: Scope::None,
    },
    Caller {
        column: "ops",
        role: Some(Role::Ops),
        scope: Scope::None,
    },
    Caller {
        column: "tenantOwner",
        role: Some(Role::TenantOwner),
        scope: Scope::Tenant,
    },
    Caller {
        column: "projectDev",
        role: Some(Role::ProjectDev),
        scope: Scope::Project,
    },
    Caller {
        column: "readOnly",
        role: Some(Role::ReadOnly),
        scope: Scope::Tenant,
    },
    Caller {
        column: "readOnly unscoped",
        role: Some(Role::ReadOnly),
        scope: Scope::None,
    },
    Caller {
        column: "owners entry",
        role: None,
        scope: Scope::Owners,
    },
    Caller {
        column: "developer entry",
        role: None,
        scope: Scope::Access(AccessRole::Developer),
    },
    Caller {
        column: "viewer entry",
        role: None,
        scope: Scope::Access(AccessRole::Viewer),
    },
    Caller {
        column: "owner key",
        role: None,
        scope: Scope::Key(None),
    },
    Caller {
        column: "developer key",
        role: None,
        scope: Scope::Key(Some(AccessRole::Developer)),
    },
    Caller {
        column: "viewer key",
        role: None,
        scope: Scope::Key(Some(AccessRole::Viewer)),
    },
    Caller {
        column: "no token",
        role: None,
        scope: Scope::None,
    },
];

/// The identity provider of the people columns (its keys given to the manager directly).
const IDP: &str = "https://idp.example.com";
const IDP_AUDIENCE: &str = "kubenova-ui";

/// The owners of a chain's tenant: one of the people columns among them.
fn owners_of(o: &Objs) -> Value {
    json!(["alice@example.com", person(Scope::Owners, o).unwrap()])
}

/// The access entries of a chain's project: the developer and viewer people columns.
fn access_of(o: &Objs) -> Value {
    let entries: Vec<String> = [AccessRole::Developer, AccessRole::Viewer]
        .into_iter()
        .map(|r| format!("{}:{}", r.as_str(), person(Scope::Access(r), o).unwrap()))
        .collect();
    json!(entries)
}

/// The person a people column is, for the chain `home` (each chain names its own).
fn person(scope: Scope, home: &Objs) -> Option<String> {
    match scope {
        Scope::Owners => Some(format!("owner-{}@example.com", home.tenant_name)),
        Scope::Access(role) => Some(format!(
            "{}-{}@example.com",
            role.as_str(),
            home.project_name
        )),
        _ => None,
    }
}

type Cell = (Class, Class);

/// Parses the matrix of the docs: operation → column → (in-scope, out-of-scope).
fn documented() -> BTreeMap<String, BTreeMap<String, Cell>> {
    let text = std::fs::read_to_string(DOC).expect("docs/src/authorization.md");
    let start = text.find(BEGIN).expect("matrix begin marker in the docs") + BEGIN.len();
    let end = text.find(END).expect("matrix end marker in the docs");
    let rows: Vec<Vec<String>> = text[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').trim().to_string())
                .collect()
        })
        .collect();
    let header = &rows[0];
    assert_eq!(header[0], "operation", "first column of the matrix");
    let columns: Vec<&str> = CALLERS.iter().map(|c| c.column).collect();
    assert_eq!(
        &header[1..],
        &columns[..],
        "matrix columns must be exactly {columns:?}"
    );
    let mut out = BTreeMap::new();
    for row in &rows[2..] {
        assert_eq!(row.len(), header.len(), "matrix row {row:?}");
        let mut cells = BTreeMap::new();
        for (i, col) in columns.iter().enumerate() {
            let raw = &row[i + 1];
            let parts: Vec<&str> = raw.split('/').collect();
            let cell = match parts.as_slice() {
                [both] => {
                    let c = Class::parse(both).unwrap_or_else(|| panic!("bad cell {raw:?}"));
                    (c, c)
                }
                [a, b] => (
                    Class::parse(a).unwrap_or_else(|| panic!("bad cell {raw:?}")),
                    Class::parse(b).unwrap_or_else(|| panic!("bad cell {raw:?}")),
                ),
                _ => panic!("bad cell {raw:?} in row {}", row[0]),
            };
            cells.insert(col.to_string(), cell);
        }
        assert!(
            out.insert(row[0].clone(), cells).is_none(),
            "duplicate matrix row {}",
            row[0]
        );
    }
    out
}

fn fmt_cell((i, o): Cell) -> String {
    if i == o {
        i.sym().to_string()
    } else {
        format!("{} / {}", i.sym(), o.sym())
    }
}

// ---------------------------------------------------------------------------------
// The world: objects created through the API as admin
// ---------------------------------------------------------------------------------

/// One chain of objects a path can point at.
#[derive(Debug, Clone, Default)]
struct Objs {
    cluster: String,
    tenant: String,
    tenant_name: String,
    project: String,
    project_name: String,
    app: String,
    component: String,
    run: String,
    /// An API key of the chain (a viewer key of its project).
    key: String,
}

struct World {
    app: axum::Router,
    st: AppState,
    admin: String,
    a: Objs,
    b: Objs,
    policyset: String,
    seq: AtomicUsize,
    idp_key: kubenova_kubeconfig::SigningKey,
    /// The API keys of the key columns, by home tenant and column.
    api_keys: tokio::sync::Mutex<BTreeMap<(String, &'static str), String>>,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    body: Value,
    text: String,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let keys = kubenova_store::crypto::Keyring::load_or_generate(dir.path()).unwrap();
        let url = format!("sqlite://{}", dir.path().join("kn.db").display());
        let store = kubenova_store::connect(&url, keys).await.unwrap();
        let cfg = ServerConfig {
            rate_limit_subject_rps: 0,
            rate_limit_ip_rps: 0,
            ..ServerConfig::default()
        };
        let idp_key =
            kubenova_kubeconfig::SigningKey::generate(time::OffsetDateTime::now_utc()).unwrap();
        let auth = kubenova_manager::api::auth::Authenticator::hs256(
            b"0123456789abcdef0123456789abcdef",
            &cfg.jwt_issuer,
            &cfg.jwt_audience,
            cfg.clock_skew,
            cfg.max_token_ttl,
        )
        .with_identity_providers(std::sync::Arc::new(
            kubenova_manager::api::oidc::Oidc::from_issuers(
                vec![kubenova_manager::api::oidc::Issuer::with_keys(
                    kubenova_manager::api::oidc::IssuerConfig {
                        role_claims: false,
                        ..kubenova_manager::api::oidc::IssuerConfig::with_role_claims(
                            IDP,
                            IDP_AUDIENCE,
                            None,
                        )
                    },
                    jsonwebtoken::jwk::JwkSet {
                        keys: vec![idp_key.jwk()],
                    },
                )],
                kubenova_manager::api::oidc::PlatformRoles::default(),
            ),
        ));
        let st = kubenova_manager::assemble_state(
            store,
            kubenova_api::catalog::Catalog::builtin(),
            cfg,
            auth,
        );
        let mut w = World {
            app: router(st.clone()),
            st,
            admin: String::new(),
            a: Objs::default(),
            b: Objs::default(),
            policyset: String::new(),
            seq: AtomicUsize::new(0),
            idp_key,
            api_keys: Default::default(),
            _dir: dir,
        };
        w.admin = w.mint(&[Role::Admin], &[], &[]);
        let cluster = w.cluster().await;
        w.a = w.chain(&cluster, true).await;
        w.b = w.chain(&cluster, true).await;
        let ps = w
            .call(
                Method::GET,
                "/api/v1/policysets",
                Some(&w.admin.clone()),
                None,
            )
            .await;
        w.policyset = ps.body["items"][0]["name"]
            .as_str()
            .expect("a builtin policyset")
            .to_string();
        w
    }

    fn mint(&self, roles: &[Role], tenants: &[TenantId], projects: &[ProjectId]) -> String {
        self.st
            .auth
            .mint(
                "matrix",
                roles,
                tenants,
                projects,
                Duration::from_secs(3600),
            )
            .unwrap()
            .token
    }

    fn name(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap())),
            None => b.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        // A followed stream (server-sent events) does not end: its status is the answer.
        let streamed = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let bytes = if streamed {
            Default::default()
        } else {
            resp.into_body().collect().await.unwrap().to_bytes()
        };
        Resp {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).to_string(),
        }
    }

    async fn create(&self, uri: &str, body: Value) -> Value {
        let r = self
            .call(Method::POST, uri, Some(&self.admin), Some(body))
            .await;
        assert!(r.status.is_success(), "POST {uri}: {} {}", r.status, r.text);
        r.body
    }

    async fn cluster(&self) -> String {
        let mut body = example(&Method::POST, "/api/v1/clusters");
        body["name"] = json!(self.name("c"));
        self.create("/api/v1/clusters", body).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A tenant with a project and an app (with two revisions and a workflow run).
    async fn chain(&self, cluster: &str, full: bool) -> Objs {
        let tname = self.name("t");
        let pname = self.name("p");
        let names = Objs {
            tenant_name: tname.clone(),
            project_name: pname.clone(),
            ..Objs::default()
        };
        let t = self
            .create(
                &format!("/api/v1/clusters/{cluster}/tenants"),
                json!({"name": tname, "owners": owners_of(&names)}),
            )
            .await;
        let tenant = t["id"].as_str().unwrap().to_string();
        let p = self
            .create(
                &format!("/api/v1/clusters/{cluster}/tenants/{tenant}/projects"),
                json!({"name": pname, "access": access_of(&names)}),
            )
            .await;
        let project = p["id"].as_str().unwrap().to_string();
        let aname = self.name("a");
        let apps = format!("/api/v1/clusters/{cluster}/tenants/{tenant}/projects/{project}/apps");
        let a = self
            .create(
                &apps,
                json!({"name": aname, "image": "ghcr.io/acme/web:1.0.0"}),
            )
            .await;
        let app = a["id"].as_str().unwrap().to_string();
        let k = self
            .create(
                &format!("/api/v1/tenants/{tenant}/api-keys"),
                json!({"name": self.name("k"), "project": project, "role": "viewer"}),
            )
            .await;
        let key = k["apiKey"]["id"].as_str().unwrap().to_string();
        let mut o = Objs {
            cluster: cluster.to_string(),
            tenant,
            tenant_name: tname,
            project,
            project_name: pname,
            component: aname,
            app,
            run: String::new(),
            key,
        };
        if full {
            let r = self
                .call(
                    Method::PUT,
                    &format!("{apps}/{}", o.app),
                    Some(&self.admin),
                    Some(json!({"image": "ghcr.io/acme/web:1.0.1"})),
                )
                .await;
            assert!(r.status.is_success(), "second revision: {}", r.text);
            let run = self
                .create(&format!("{apps}/{}/workflow/run", o.app), json!({}))
                .await;
            o.run = run["id"]
                .as_str()
                .or(run["runId"].as_str())
                .unwrap_or_else(|| panic!("workflow run id in {run}"))
                .to_string();
        }
        o
    }

    /// The token of a caller whose scope is `home`.
    async fn token(&self, c: &Caller, home: &Objs) -> Option<String> {
        if let Some(sub) = person(c.scope, home) {
            return Some(self.idp_token(&sub));
        }
        if let Scope::Key(role) = c.scope {
            return Some(self.api_key(c.column, role, home).await);
        }
        let role = c.role?;
        let t: TenantId = home.tenant.parse().unwrap();
        let p: ProjectId = home.project.parse().unwrap();
        Some(match c.scope {
            Scope::None => self.mint(&[role], &[], &[]),
            Scope::Tenant => self.mint(&[role], &[t], &[]),
            Scope::Project => self.mint(&[role], &[], &[p]),
            Scope::Owners | Scope::Access(_) | Scope::Key(_) => {
                unreachable!("people and keys have no role claim")
            }
        })
    }

    /// The API key of a key column for `home` (created by admin once per home tenant).
    async fn api_key(&self, column: &'static str, role: Option<AccessRole>, home: &Objs) -> String {
        let mut keys = self.api_keys.lock().await;
        if let Some(k) = keys.get(&(home.tenant.clone(), column)) {
            return k.clone();
        }
        let body = match role {
            None => json!({"name": self.name("k"), "role": "owner"}),
            Some(r) => json!({"name": self.name("k"), "project": home.project, "role": r.as_str()}),
        };
        let created = self
            .create(&format!("/api/v1/tenants/{}/api-keys", home.tenant), body)
            .await;
        let key = created["key"].as_str().unwrap().to_string();
        keys.insert((home.tenant.clone(), column), key.clone());
        key
    }

    /// A token of the identity provider for `sub`.
    fn idp_token(&self, sub: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.idp_key.kid().to_string());
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(self.idp_key.to_pkcs8_pem().as_bytes()).unwrap();
        let claims = json!({"iss": IDP, "aud": IDP_AUDIENCE, "sub": sub, "exp": now + 3600});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

// ---------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------

fn spec() -> Value {
    serde_json::to_value(openapi()).unwrap()
}

/// Every (method, path template) of the OpenAPI document.
fn operations() -> Vec<(Method, String)> {
    let mut ops = Vec::new();
    for (path, item) in spec()["paths"].as_object().unwrap() {
        for m in ["get", "post", "put", "patch", "delete"] {
            if item.get(m).is_some() {
                ops.push((
                    Method::from_bytes(m.to_uppercase().as_bytes()).unwrap(),
                    path.clone(),
                ));
            }
        }
    }
    ops
}

fn key(m: &Method, path: &str) -> String {
    format!("{m} {path}")
}

/// The documented request example of an operation (`null` when it has no body).
fn example(m: &Method, path: &str) -> Value {
    let s = spec();
    let op = &s["paths"][path][m.as_str().to_lowercase()];
    let content = &op["requestBody"]["content"]["application/json"];
    if content.is_null() {
        return Value::Null;
    }
    let ex = content["example"].clone();
    assert!(!ex.is_null(), "{m} {path} documents no request example");
    ex
}

fn is_destructive(m: &Method, path: &str) -> bool {
    *m == Method::DELETE || path.ends_with(":delete")
}

/// Fills a path template with the ids of `o`.
fn fill(w: &World, path: &str, o: &Objs) -> String {
    let component = if path.contains("/bootstrap/") {
        "operator".to_string()
    } else {
        o.component.clone()
    };
    let name = if path.starts_with("/api/v1/plans/") {
        "baseline".to_string()
    } else {
        w.policyset.clone()
    };
    let mut p = path
        .replace("{clusterID}", &o.cluster)
        .replace("{tenantID}", &o.tenant)
        .replace("{projectID}", &o.project)
        .replace("{appID}", &o.app)
        .replace("{runID}", &o.run)
        .replace("{keyID}", &o.key)
        .replace("{revA}", "1")
        .replace("{revB}", "2")
        .replace("{component}", &component)
        .replace("{name}", &name);
    assert!(!p.contains('{'), "unfilled path parameter in {path}");
    // Deleting a tenant with its projects needs the cascade flag.
    if p.ends_with(&format!("/tenants/{}", o.tenant)) && path.ends_with("{tenantID}") {
        p.push_str("?cascade=true");
    }
    p
}

/// A minimal valid body for the operation against `o` (unique names for creations).
fn body(w: &World, m: &Method, path: &str, o: &Objs) -> Option<Value> {
    let mut b = example(m, path);
    if b.is_null() {
        return None;
    }
    let op = &spec()["paths"][path][m.as_str().to_lowercase()]["operationId"];
    match op.as_str().unwrap() {
        "createCluster" => b["name"] = json!(w.name("c")),
        "createTenant" => b["name"] = json!(w.name("t")),
        "createProject" => b["name"] = json!(w.name("p")),
        "createApp" => b["name"] = json!(w.name("a")),
        "createApiKey" => {
            b["name"] = json!(w.name("k"));
            b["project"] = json!(o.project);
        }
        // Owners and access keep naming the chain's people (later checks rely on them).
        "putTenantOwners" => b["owners"] = owners_of(o),
        "updateProjectAccess" => b["access"] = access_of(o),
        "updateProject" => {
            b["name"] = json!(o.project_name);
            b["access"] = access_of(o);
        }
        "ingestTelemetryEvent" => b["clusterId"] = json!(o.cluster),
        "ingestUsage" => {
            b["records"][0]["clusterId"] = json!(o.cluster);
            b["records"][0]["tenantId"] = json!(o.tenant);
        }
        _ => {}
    }
    Some(b)
}

/// Runs one check: the caller scoped to `home` calls the operation on `target`.
async fn check(
    w: &World,
    c: &Caller,
    m: &Method,
    path: &str,
    target: &Objs,
    home: &Objs,
) -> StatusCode {
    let token = w.token(c, home).await;
    let uri = fill(w, path, target);
    let r = w
        .call(m.clone(), &uri, token.as_deref(), body(w, m, path, target))
        .await;
    r.status
}

/// The target of a destructive check: fresh objects (a fresh empty cluster to delete one).
async fn throwaway(w: &World, path: &str) -> Objs {
    if path == "/api/v1/clusters/{clusterID}" {
        let cluster = w.cluster().await;
        return Objs {
            cluster,
            ..w.a.clone()
        };
    }
    w.chain(&w.a.cluster, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_matches_the_docs() {
    let w = World::new().await;
    let ops = operations();
    let print = std::env::var("KUBENOVA_AUTHZ_MATRIX_PRINT").is_ok();
    let doc = if print { BTreeMap::new() } else { documented() };

    if !print {
        let in_code: BTreeSet<String> = ops.iter().map(|(m, p)| key(m, p)).collect();
        let in_docs: BTreeSet<String> = doc.keys().cloned().collect();
        let missing: Vec<_> = in_code.difference(&in_docs).collect();
        let stale: Vec<_> = in_docs.difference(&in_code).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "the matrix in docs/src/authorization.md and api::openapi() differ:\n  \
             operations missing from the docs: {missing:#?}\n  rows for no operation: {stale:#?}"
        );
    }

    let mut observed: Vec<(String, Vec<Cell>)> = Vec::new();
    let mut failures = Vec::new();
    let mut admin_not_ok = Vec::new();
    for (m, path) in &ops {
        let k = key(m, path);
        let mut row = Vec::new();
        for c in &CALLERS {
            // In scope: the caller is scoped to the target. Out of scope: scoped to A, target B
            // (or a throwaway chain for destructive operations).
            let (in_target, out_target) = if is_destructive(m, path) {
                (throwaway(&w, path).await, throwaway(&w, path).await)
            } else {
                (w.a.clone(), w.b.clone())
            };
            let s_in = check(&w, c, m, path, &in_target, &in_target).await;
            let s_out = check(&w, c, m, path, &out_target, &w.a).await;
            let got = (Class::of(s_in), Class::of(s_out));
            // Agent routes accept only agent credentials: every user token is 401 there
            // (tests/agent_routes.rs covers the agents themselves). The OAuth token endpoint
            // takes no bearer token: its subject token decides (tests/token_exchange.rs).
            if c.column == "admin"
                && !path.starts_with("/api/v1/agent/")
                && path != "/api/v1/oauth/token"
            {
                // The bodies and ids are valid: admin gets a success, or the honest state of a
                // cluster that is not connected (kubeconfig 409/503, logs 503).
                for s in [s_in, s_out] {
                    if !(s.is_success() || s.as_u16() == 503 || s.as_u16() == 409) {
                        admin_not_ok.push(format!("{k}: admin got {s}"));
                    }
                }
            }
            if let Some(want) = doc.get(&k).and_then(|r| r.get(c.column))
                && *want != got
            {
                failures.push(format!(
                    "{k} as {}: docs say {}, got {} (in {s_in}, out {s_out})",
                    c.column,
                    fmt_cell(*want),
                    fmt_cell(got)
                ));
            }
            row.push(got);
        }
        observed.push((k, row));
    }

    if print {
        let cols: Vec<&str> = CALLERS.iter().map(|c| c.column).collect();
        println!("| operation | {} |", cols.join(" | "));
        println!("|---|{}", "---|".repeat(cols.len()));
        for (k, row) in &observed {
            let cells: Vec<String> = row.iter().map(|c| fmt_cell(*c)).collect();
            println!("| `{k}` | {} |", cells.join(" | "));
        }
    }
    assert!(
        admin_not_ok.is_empty(),
        "admin calls that did not succeed (bad fixture?):\n{}",
        admin_not_ok.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} authorization outcomes differ from docs/src/authorization.md:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
