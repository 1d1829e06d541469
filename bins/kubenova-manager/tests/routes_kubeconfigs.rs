//! In-process tests (`oneshot` against `api::router`) of kubeconfig issuance, exec
//! tokens, revocation, discovery/JWKS and signing-key rotation, on a fresh SQLite store.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use http_body_util::BodyExt;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{AuditQuery, CredentialQuery, WriteOptions};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

const SECRET: &[u8] = b"routes-kubeconfigs-test-secret-0123456789";
const ISSUER: &str = "https://kubenova.example.com";
const PROXY: &str = "https://capsule-proxy.example.com:9001";
const CA: &str = include_str!("../../../kubenova-kubeconfig/tests/fixtures/proxy-ca.pem");

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
    fn fields(&self) -> Vec<String> {
        self.json()["details"]["violations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v["field"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Two tenants (A with project pa, B with project pb) on a cluster whose proxy is reported.
struct T {
    st: AppState,
    router: axum::Router,
    dir: tempfile::TempDir,
    cluster: ClusterId,
    a: TenantId,
    b: TenantId,
    pa: ProjectId,
    pb: ProjectId,
}

async fn setup_with(cfg: ServerConfig, with_proxy: bool) -> T {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(vec![Kek::new("k1", &[9u8; 32]).unwrap()]).unwrap();
    let store = kubenova_store::connect(
        &format!("sqlite://{}", dir.path().join("kn.db").display()),
        keys,
    )
    .await
    .unwrap();
    let st = kubenova_manager::test_state(store, cfg, SECRET);
    let router = kubenova_manager::api::router(st.clone());
    let mut t = T {
        st,
        router,
        dir,
        cluster: ClusterId::new(),
        a: TenantId::new(),
        b: TenantId::new(),
        pa: ProjectId::new(),
        pb: ProjectId::new(),
    };
    let admin = t.admin();
    let c = t
        .post(
            "/api/v1/clusters",
            &admin,
            json!({"name": "prod-eu", "kubeconfig": KUBECONFIG}),
        )
        .await;
    c.expect(StatusCode::CREATED);
    t.cluster = c.json()["id"].as_str().unwrap().parse().unwrap();
    if with_proxy {
        t.set_proxy(Some(json!({"url": PROXY,
            "caData": base64::engine::general_purpose::STANDARD.encode(CA)})))
            .await;
    }
    for (name, pname) in [("acme", "web"), ("beta", "api")] {
        let r = t
            .post(
                &format!("/api/v1/clusters/{}/tenants", t.cluster),
                &admin,
                json!({"name": name, "owners": ["alice@example.com"]}),
            )
            .await;
        r.expect(StatusCode::CREATED);
        let tid: TenantId = r.json()["id"].as_str().unwrap().parse().unwrap();
        let r = t
            .post(
                &format!("/api/v1/clusters/{}/tenants/{tid}/projects", t.cluster),
                &admin,
                json!({"name": pname}),
            )
            .await;
        r.expect(StatusCode::CREATED);
        let pid: ProjectId = r.json()["id"].as_str().unwrap().parse().unwrap();
        if name == "acme" {
            (t.a, t.pa) = (tid, pid);
        } else {
            (t.b, t.pb) = (tid, pid);
        }
    }
    t
}

fn cfg() -> ServerConfig {
    ServerConfig {
        external_url: Some(ISSUER.into()),
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    }
}

async fn setup() -> T {
    setup_with(cfg(), true).await
}

impl T {
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
    async fn set_proxy(&self, proxy: Option<Value>) {
        let mut c = self.st.store.get_cluster(self.cluster).await.unwrap();
        let expected = c.version;
        c.version += 1;
        c.proxy = proxy.map(|p| serde_json::from_value(p).unwrap());
        self.st
            .store
            .update_cluster(&c, expected, &WriteOptions::default())
            .await
            .unwrap();
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
    fn tenant_url(&self, t: TenantId) -> String {
        format!("/api/v1/tenants/{t}/kubeconfig")
    }
    fn project_url(&self, t: TenantId, p: ProjectId) -> String {
        format!(
            "/api/v1/clusters/{}/tenants/{t}/projects/{p}/kubeconfig",
            self.cluster
        )
    }
    async fn credentials(&self, t: TenantId) -> Vec<kubenova_store::IssuedCredential> {
        self.st
            .store
            .list_credentials(t, &CredentialQuery::default())
            .await
            .unwrap()
            .items
    }
    async fn jwks(&self) -> JwkSet {
        let r = self
            .send(Method::GET, "/.well-known/jwks.json", None, None, &[])
            .await;
        r.expect(StatusCode::OK);
        serde_json::from_str(&r.text).unwrap()
    }
}

/// Verifies a token against the served JWKS with jsonwebtoken (not the crate's KeySet).
fn verify(jwks: &JwkSet, token: &str, aud: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let kid = jsonwebtoken::decode_header(token)?.kid.unwrap();
    let jwk = jwks.find(&kid).expect("kid in the JWKS");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[ISSUER]);
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v).map(|d| d.claims)
}

fn embedded_token(kubeconfig_yaml: &str) -> String {
    let kc: Value = serde_saphyr::from_str(kubeconfig_yaml).unwrap();
    kc["users"][0]["user"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn audience(c: ClusterId) -> String {
    format!("kubenova:cluster:{c}")
}

// ---------------------------------------------------------------------------------
// Roles × scopes
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn every_role_and_scope() {
    let t = setup().await;
    let jwks = t.jwks().await;
    let callers: Vec<(&str, String)> = vec![
        ("admin", t.admin()),
        ("ops", t.token("ops", &[Role::Ops], &[], &[])),
        ("owner", t.token("alice", &[Role::TenantOwner], &[t.a], &[])),
        ("dev", t.token("dave", &[Role::ProjectDev], &[], &[t.pa])),
        ("ro", t.token("rita", &[Role::ReadOnly], &[t.a], &[])),
        (
            "ro-unscoped",
            t.token("ursula", &[Role::ReadOnly], &[], &[]),
        ),
        ("owner-b", t.token("bob", &[Role::TenantOwner], &[t.b], &[])),
    ];
    // Expected status per (caller, scope, role) for targets in tenant A.
    let expect = |who: &str, project: bool, role: &str| -> StatusCode {
        match (who, project, role) {
            ("admin" | "ops" | "owner", _, _) => StatusCode::OK,
            ("dev", false, _) => StatusCode::NOT_FOUND,
            ("dev", true, "owner") => StatusCode::FORBIDDEN,
            ("dev", true, _) => StatusCode::OK,
            ("ro" | "ro-unscoped", _, "viewer") => StatusCode::OK,
            ("ro" | "ro-unscoped", _, _) => StatusCode::FORBIDDEN,
            ("owner-b", _, _) => StatusCode::NOT_FOUND,
            _ => unreachable!(),
        }
    };
    for (who, tok) in &callers {
        for project in [false, true] {
            for role in ["owner", "developer", "viewer"] {
                let base = if project {
                    t.project_url(t.a, t.pa)
                } else {
                    t.tenant_url(t.a)
                };
                let r = t.get(&format!("{base}?role={role}"), tok).await;
                let want = expect(who, project, role);
                assert_eq!(r.status, want, "{who} {role} project={project}: {}", r.text);
                // The POST form agrees with the GET form.
                let p = t.post(&base, tok, json!({"role": role})).await;
                assert_eq!(p.status, want, "POST {who} {role}: {}", p.text);
                if want != StatusCode::OK {
                    assert!(!r.text.contains("apiVersion"), "{}", r.text);
                    continue;
                }
                let body = r.json();
                let token = embedded_token(body["kubeconfig"].as_str().unwrap());
                let claims = verify(&jwks, &token, &audience(t.cluster)).unwrap();
                let group = if project {
                    format!("kubenova:project:acme:web:{role}")
                } else {
                    format!("kubenova:tenant:acme:{role}")
                };
                assert_eq!(claims["groups"], json!([group]));
                assert_eq!(claims["jti"], body["jti"]);
                for f in ["name", "namespace"] {
                    assert!(
                        !body[f].as_str().unwrap().contains("beta"),
                        "A's kubeconfig names B: {body}"
                    );
                }
            }
        }
    }
    // A tenant owner of A never obtains anything of B, whatever the path or method.
    let owner_a = &callers[2].1;
    for uri in [t.tenant_url(t.b), t.project_url(t.b, t.pb)] {
        for role in ["owner", "viewer"] {
            t.get(&format!("{uri}?role={role}"), owner_a)
                .await
                .expect_kn(StatusCode::NOT_FOUND, "KN-404");
        }
    }
    t.post(
        &format!("/api/v1/tenants/{}/token", t.b),
        owner_a,
        json!({"role": "viewer"}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    // A project of another tenant, on A's path: 404.
    t.get(&t.project_url(t.a, t.pb), &t.admin())
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    t.post(
        &format!("/api/v1/tenants/{}/token", t.a),
        &t.admin(),
        json!({"role": "viewer", "project": t.pb.to_string()}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    // No token at all.
    t.send(Method::GET, &t.tenant_url(t.a), None, None, &[])
        .await
        .expect_kn(StatusCode::UNAUTHORIZED, "KN-401");
}

#[tokio::test]
async fn kubeconfig_content_yaml_and_json() {
    let t = setup().await;
    let owner = t.token("alice@example.com", &[Role::TenantOwner], &[t.a], &[]);
    // JSON (default): metadata plus the YAML text.
    let r = t
        .get(
            &format!("{}?role=developer", t.project_url(t.a, t.pa)),
            &owner,
        )
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let j = r.json();
    assert_eq!(j["name"], "prod-eu-acme-web-developer");
    assert_eq!(j["server"], PROXY);
    assert_eq!(j["mode"], "token");
    assert_eq!(j["role"], "developer");
    assert_eq!(
        r.headers["x-kubenova-credential-id"].to_str().unwrap(),
        j["jti"].as_str().unwrap()
    );
    let kc: Value = serde_saphyr::from_str(j["kubeconfig"].as_str().unwrap()).unwrap();
    assert_eq!(kc["current-context"], "prod-eu-acme-web-developer");
    assert_eq!(kc["clusters"][0]["cluster"]["server"], PROXY);
    let ca = kc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(ca)
            .unwrap(),
        CA.as_bytes()
    );
    assert!(
        kc["clusters"][0]["cluster"]
            .get("insecure-skip-tls-verify")
            .is_none()
    );
    let project = t.st.store.get_project(t.pa).await.unwrap();
    assert_eq!(kc["contexts"][0]["context"]["namespace"], project.namespace);
    // YAML with Accept.
    let r = t
        .send(
            Method::GET,
            &t.tenant_url(t.a),
            Some(&owner),
            None,
            &[("accept", "application/yaml")],
        )
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/yaml");
    let kc: kubenova_kubeconfig::Kubeconfig = serde_saphyr::from_str(&r.text).unwrap();
    assert_eq!(kc.current_context.as_deref(), Some("prod-eu-acme-viewer"));
    let tenant = t.st.store.get_tenant(t.a).await.unwrap();
    assert_eq!(
        kc.contexts[0]
            .context
            .as_ref()
            .unwrap()
            .namespace
            .as_deref(),
        Some(tenant.apps_namespace.as_str())
    );
    let r = t
        .send(
            Method::POST,
            &t.tenant_url(t.a),
            Some(&owner),
            Some(json!({"role": "owner", "ttl": 600})),
            &[("accept", "text/yaml")],
        )
        .await;
    r.expect(StatusCode::OK);
    let claims = verify(
        &t.jwks().await,
        &embedded_token(&r.text),
        &audience(t.cluster),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    assert_eq!(claims["sub"], "alice@example.com");
    assert_eq!(claims["iss"], ISSUER);
}

// ---------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn ttl_role_and_mode_bounds() {
    let t = setup().await;
    let admin = t.admin();
    let url = t.tenant_url(t.a);
    let jwks = t.jwks().await;
    // Default TTL 1h; exactly the maximum is fine.
    for (q, want) in [("", 3600), ("?ttl=86400", 86400), ("?ttl=90m", 5400)] {
        let r = t.get(&format!("{url}{q}"), &admin).await;
        r.expect(StatusCode::OK);
        let c = verify(
            &jwks,
            &embedded_token(r.json()["kubeconfig"].as_str().unwrap()),
            &audience(t.cluster),
        )
        .unwrap();
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            want
        );
    }
    for q in ["ttl=0", "ttl=-5", "ttl=86401", "ttl=25h", "ttl=soon"] {
        let r = t.get(&format!("{url}?{q}"), &admin).await;
        r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
        assert_eq!(r.fields(), ["ttl"], "{q}: {}", r.text);
    }
    for body in [json!({"ttl": 0}), json!({"ttl": -1}), json!({"ttl": "48h"})] {
        let r = t.post(&url, &admin, body.clone()).await;
        r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
        assert_eq!(r.fields(), ["ttl"], "{body}");
    }
    let r = t.get(&format!("{url}?role=admin&mode=ssh"), &admin).await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert_eq!(r.fields(), ["role", "mode"]);
    t.post(&url, &admin, json!({"role": "root"}))
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    t.post(&url, &admin, json!({"role": "viewer", "extra": 1}))
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    // A smaller configured maximum.
    let small = setup_with(
        ServerConfig {
            max_kubeconfig_ttl: Duration::from_secs(600),
            exec_token_ttl: Duration::from_secs(300),
            ..cfg()
        },
        true,
    )
    .await;
    let r = small
        .get(
            &format!("{}?ttl=601", small.tenant_url(small.a)),
            &small.admin(),
        )
        .await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert!(r.text.contains("600s"), "{}", r.text);
    // The default 1h is over that maximum too.
    small
        .get(&small.tenant_url(small.a), &small.admin())
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    // None of these minted anything.
    assert!(t.credentials(t.a).await.len() == 3);
    assert!(small.credentials(small.a).await.is_empty());
}

#[tokio::test]
async fn no_proxy_is_409_and_mints_nothing() {
    let t = setup_with(cfg(), false).await;
    let admin = t.admin();
    for uri in [t.tenant_url(t.a), t.project_url(t.a, t.pa)] {
        let r = t.get(&uri, &admin).await;
        r.expect_kn(StatusCode::CONFLICT, "KN-409");
        assert!(r.text.contains("not reported yet"), "{}", r.text);
    }
    // A proxy without a CA, or over plain HTTP, is refused too.
    t.set_proxy(Some(json!({"url": PROXY}))).await;
    let r = t.get(&t.tenant_url(t.a), &admin).await;
    r.expect_kn(StatusCode::CONFLICT, "KN-409");
    assert!(r.text.contains("CA"), "{}", r.text);
    t.set_proxy(Some(json!({"url": "http://proxy.example.com",
        "caData": base64::engine::general_purpose::STANDARD.encode(CA)})))
        .await;
    t.get(&t.tenant_url(t.a), &admin)
        .await
        .expect_kn(StatusCode::CONFLICT, "KN-409");
    assert!(t.credentials(t.a).await.is_empty());
}

#[tokio::test]
async fn no_external_url_is_503() {
    let t = setup_with(
        ServerConfig {
            external_url: None,
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..cfg()
        },
        true,
    )
    .await;
    let r = t.get(&t.tenant_url(t.a), &t.admin()).await;
    r.expect_kn(StatusCode::SERVICE_UNAVAILABLE, "KN-503");
    assert!(r.text.contains("--external-url"));
    t.send(
        Method::GET,
        "/.well-known/openid-configuration",
        None,
        None,
        &[],
    )
    .await
    .expect_kn(StatusCode::SERVICE_UNAVAILABLE, "KN-503");
}

#[tokio::test]
async fn deleted_tenant_gets_nothing() {
    let t = setup().await;
    let owner = t.token("alice", &[Role::TenantOwner], &[t.a], &[]);
    t.get(&t.tenant_url(t.a), &owner)
        .await
        .expect(StatusCode::OK);
    t.delete(
        &format!(
            "/api/v1/clusters/{}/tenants/{}?cascade=true",
            t.cluster, t.a
        ),
        &t.admin(),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    t.get(&t.tenant_url(t.a), &owner)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    t.get(&t.project_url(t.a, t.pa), &owner)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    t.post(
        &format!("/api/v1/tenants/{}/token", t.a),
        &owner,
        json!({"role": "viewer"}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    assert_eq!(t.credentials(t.a).await.len(), 1);
}

// ---------------------------------------------------------------------------------
// Audit, listing, storage
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn audit_and_listing_never_hold_the_token() {
    let t = setup().await;
    let owner = t.token("alice@example.com", &[Role::TenantOwner], &[t.a], &[]);
    let r = t
        .get(
            &format!("{}?role=viewer&ttl=15m", t.project_url(t.a, t.pa)),
            &owner,
        )
        .await;
    r.expect(StatusCode::OK);
    let j = r.json();
    let jti = j["jti"].as_str().unwrap().to_string();
    let token = embedded_token(j["kubeconfig"].as_str().unwrap());
    assert!(token.len() > 100);
    // The audit event: who, for whom, scope, role, ttl, jti.
    let ev =
        t.st.store
            .query_audit(&AuditQuery {
                resource_kind: Some("credential".into()),
                resource_id: Some(jti.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
    assert_eq!(ev.len(), 1);
    let e = &ev[0];
    assert_eq!(e.action, "kubeconfig.issue");
    assert_eq!(e.actor, "alice@example.com");
    let d = e.details.as_ref().unwrap();
    assert_eq!(d["subject"], "alice@example.com");
    assert_eq!(d["tenantId"], t.a.to_string());
    assert_eq!(d["projectId"], t.pa.to_string());
    assert_eq!(d["project"], "web");
    assert_eq!(d["role"], "viewer");
    assert_eq!(d["ttlSeconds"], 900);
    assert_eq!(d["jti"], jti);
    assert_eq!(d["mode"], "token");
    // Listing: metadata only.
    let l = t
        .get(&format!("/api/v1/tenants/{}/credentials", t.a), &owner)
        .await;
    l.expect(StatusCode::OK);
    let items = l.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["jti"], jti);
    assert_eq!(items[0]["state"], "active");
    assert_eq!(items[0]["role"], "viewer");
    assert!(
        !l.text.contains(&token) && !l.text.contains("eyJ"),
        "{}",
        l.text
    );
    // Paginated and filtered.
    for _ in 0..2 {
        t.get(&t.tenant_url(t.a), &t.admin())
            .await
            .expect(StatusCode::OK);
    }
    let p1 = t
        .get(
            &format!("/api/v1/tenants/{}/credentials?limit=2", t.a),
            &owner,
        )
        .await;
    let cursor = p1.json()["nextCursor"].as_str().unwrap().to_string();
    let p2 = t
        .get(
            &format!(
                "/api/v1/tenants/{}/credentials?limit=2&cursor={cursor}",
                t.a
            ),
            &owner,
        )
        .await;
    assert_eq!(p2.json()["items"].as_array().unwrap().len(), 1);
    let only = t
        .get(
            &format!(
                "/api/v1/tenants/{}/credentials?subject=alice@example.com",
                t.a
            ),
            &owner,
        )
        .await;
    assert_eq!(only.json()["items"].as_array().unwrap().len(), 1);
    // Scope: a projectDev or another tenant's owner sees no list.
    let dev = t.token("dave", &[Role::ProjectDev], &[], &[t.pa]);
    t.get(&format!("/api/v1/tenants/{}/credentials", t.a), &dev)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    // The token is nowhere in the database files (store, WAL), nor in the audit.
    for entry in std::fs::read_dir(t.dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "token found in a store file"
        );
    }
}

// ---------------------------------------------------------------------------------
// Revocation and exec refresh
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn revocation_by_jti_subject_and_tenant() {
    let t = setup().await;
    let admin = t.admin();
    let owner = t.token("alice", &[Role::TenantOwner], &[t.a], &[]);
    let dev = t.token("dave", &[Role::ProjectDev], &[], &[t.pa]);
    let ro = t.token("rita", &[Role::ReadOnly], &[t.a], &[]);
    let issue = |tok: String, uri: String| {
        let t = &t;
        async move {
            let r = t.get(&uri, &tok).await;
            r.expect(StatusCode::OK);
            r.json()["jti"].as_str().unwrap().to_string()
        }
    };
    let j1 = issue(owner.clone(), t.tenant_url(t.a)).await;
    let j2 = issue(dev.clone(), t.project_url(t.a, t.pa)).await;
    let j3 = issue(
        dev.clone(),
        format!("{}?role=developer", t.project_url(t.a, t.pa)),
    )
    .await;
    let _j4 = issue(ro.clone(), t.tenant_url(t.a)).await;
    let jb = issue(admin.clone(), t.tenant_url(t.b)).await;
    let creds = format!("/api/v1/tenants/{}/credentials", t.a);

    // Who may revoke: not a projectDev (404, no tenant scope), not readOnly (403),
    // not another tenant's owner (404).
    t.delete(&format!("{creds}?jti={j1}"), &dev)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    t.delete(&format!("{creds}?jti={j1}"), &ro)
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    let owner_b = t.token("bob", &[Role::TenantOwner], &[t.b], &[]);
    t.delete(&format!("{creds}?jti={j1}"), &owner_b)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    // One credential.
    let r = t.delete(&format!("{creds}?jti={j1}"), &owner).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["revoked"], 1);
    assert_eq!(
        t.delete(&format!("{creds}?jti={j1}"), &owner).await.json()["revoked"],
        0
    );
    // B's credential is not A's to revoke.
    t.delete(&format!("{creds}?jti={jb}"), &owner)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    t.delete(&format!("{creds}?jti=nope"), &owner)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    t.delete(&format!("{creds}?jti={j1}&subject=dave"), &owner)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    // A subject: both of dave's, and dave gets nothing new (no token minted, no row).
    let r = t.delete(&format!("{creds}?subject=dave"), &owner).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["revoked"], 2);
    let before = t.credentials(t.a).await.len();
    let r = t.get(&t.project_url(t.a, t.pa), &dev).await;
    r.expect_kn(StatusCode::FORBIDDEN, "KN-403");
    assert!(r.text.contains("revoked"), "{}", r.text);
    assert!(!r.text.contains("apiVersion"));
    let r = t
        .post(
            &format!("/api/v1/tenants/{}/token", t.a),
            &dev,
            json!({"role": "viewer", "project": t.pa.to_string()}),
        )
        .await;
    r.expect_kn(StatusCode::FORBIDDEN, "KN-403");
    assert_eq!(t.credentials(t.a).await.len(), before);
    // The refusal is audited as denied.
    let denied =
        t.st.store
            .query_audit(&AuditQuery {
                actor: Some("dave".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
    assert!(
        denied
            .iter()
            .any(|e| e.outcome == kubenova_api::model::AuditOutcome::Denied
                && e.action == "kubeconfig.issue")
    );
    // Listed, then lifted by the owner.
    let l = t
        .get(&format!("/api/v1/tenants/{}/revoked-subjects", t.a), &owner)
        .await;
    assert_eq!(l.json()["items"][0]["subject"], "dave");
    let r = t
        .post(
            &format!("/api/v1/tenants/{}/revoked-subjects:lift", t.a),
            &owner,
            json!({"subject": "dave"}),
        )
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["lifted"], true);
    t.get(&t.project_url(t.a, t.pa), &dev)
        .await
        .expect(StatusCode::OK);
    // The whole tenant.
    let r = t.delete(&creds, &admin).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["scope"], "tenant");
    let states: Vec<_> = t
        .credentials(t.a)
        .await
        .into_iter()
        .map(|c| (c.jti.to_string(), c.revoked_at.is_some()))
        .collect();
    assert!(states.iter().all(|(_, revoked)| *revoked), "{states:?}");
    assert!(states.iter().any(|(j, _)| *j == j2) && states.iter().any(|(j, _)| *j == j3));
    // B untouched.
    assert!(t.credentials(t.b).await[0].revoked_at.is_none());
    let listed = t.get(&creds, &owner).await;
    assert!(
        listed.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "revoked")
    );
}

#[tokio::test]
async fn exec_kubeconfig_and_refresh() {
    let t = setup().await;
    let dev = t.token("dave", &[Role::ProjectDev], &[], &[t.pa]);
    let r = t
        .get(
            &format!("{}?role=developer&mode=exec", t.project_url(t.a, t.pa)),
            &dev,
        )
        .await;
    r.expect(StatusCode::OK);
    let j = r.json();
    assert_eq!(j["mode"], "exec");
    assert!(j.get("jti").is_none());
    let kc: Value = serde_saphyr::from_str(j["kubeconfig"].as_str().unwrap()).unwrap();
    let user = &kc["users"][0]["user"];
    assert!(user.get("token").is_none());
    assert_eq!(user["exec"]["command"], "kubenova");
    assert_eq!(
        user["exec"]["apiVersion"],
        "client.authentication.k8s.io/v1"
    );
    let args: Vec<String> = serde_json::from_value(user["exec"]["args"].clone()).unwrap();
    assert_eq!(
        args,
        [
            "auth",
            "token",
            "--manager",
            ISSUER,
            "--tenant",
            &t.a.to_string(),
            "--project",
            &t.pa.to_string(),
            "--role",
            "developer",
            "--cluster",
            &t.cluster.to_string()
        ]
    );
    // No credential for the exec kubeconfig itself; an audit event.
    assert!(t.credentials(t.a).await.is_empty());
    // The refresh the plugin makes.
    let r = t
        .post(
            &format!("/api/v1/tenants/{}/token", t.a),
            &dev,
            json!({"role": "developer", "project": t.pa.to_string(), "cluster": t.cluster.to_string()}),
        )
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let ec = r.json();
    assert_eq!(ec["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(ec["kind"], "ExecCredential");
    let token = ec["status"]["token"].as_str().unwrap();
    let claims = verify(&t.jwks().await, token, &audience(t.cluster)).unwrap();
    assert_eq!(
        claims["groups"],
        json!(["kubenova:project:acme:web:developer"])
    );
    // Default exec TTL: 15 minutes.
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    let creds = t.credentials(t.a).await;
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].mode, kubenova_store::CredentialMode::Exec);
    // The dev may not refresh owner, nor a tenant-level token, nor on another cluster.
    t.post(
        &format!("/api/v1/tenants/{}/token", t.a),
        &dev,
        json!({"role": "owner", "project": t.pa.to_string()}),
    )
    .await
    .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    t.post(
        &format!("/api/v1/tenants/{}/token", t.a),
        &dev,
        json!({"role": "viewer"}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    t.post(
        &format!("/api/v1/tenants/{}/token", t.a),
        &dev,
        json!({"role": "viewer", "project": t.pa.to_string(), "cluster": ClusterId::new().to_string()}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    t.post(
        &format!("/api/v1/tenants/{}/token", t.a),
        &dev,
        json!({"role": "viewer", "project": "web"}),
    )
    .await
    .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
}

// ---------------------------------------------------------------------------------
// Discovery, JWKS, audiences, expiry, rotation
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn discovery_jwks_audience_expiry_and_rotation() {
    let t = setup().await;
    // Public: no token needed.
    let d = t
        .send(
            Method::GET,
            "/.well-known/openid-configuration",
            None,
            None,
            &[],
        )
        .await;
    d.expect(StatusCode::OK);
    let d = d.json();
    assert_eq!(d["issuer"], ISSUER);
    assert_eq!(d["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
    let jwks = t.jwks().await;
    assert_eq!(jwks.keys.len(), 1);

    let admin = t.admin();
    let r = t.get(&t.tenant_url(t.a), &admin).await;
    let old_token = embedded_token(r.json()["kubeconfig"].as_str().unwrap());
    verify(&jwks, &old_token, &audience(t.cluster)).unwrap();
    // Another cluster's audience does not accept it.
    let other = verify(&jwks, &old_token, &audience(ClusterId::new())).unwrap_err();
    assert_eq!(
        *other.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidAudience
    );
    // An expired token (signed by the manager's own key) fails.
    let keys = kubenova_manager::api::kubeconfigs::load_or_create_signing_keys(t.st.store.as_ref())
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = kubenova_kubeconfig::Claims {
        iss: ISSUER.into(),
        aud: audience(t.cluster),
        sub: "admin@example.com".into(),
        groups: vec!["kubenova:tenant:acme:viewer".into()],
        iat: now - 7200,
        nbf: now - 7200,
        exp: now - 3600,
        jti: uuid::Uuid::now_v7().to_string(),
    };
    let expired = keys.issue(&expired).unwrap();
    let e = verify(&jwks, &expired, &audience(t.cluster)).unwrap_err();
    assert_eq!(*e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature);

    // Rotation: admin only; the old key keeps verifying, new tokens use the new key.
    t.post(
        "/api/v1/signing-keys:rotate",
        &t.token("o", &[Role::Ops], &[], &[]),
        json!({}),
    )
    .await
    .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    let r = t
        .send(
            Method::POST,
            "/api/v1/signing-keys:rotate",
            Some(&admin),
            None,
            &[],
        )
        .await;
    r.expect(StatusCode::OK);
    let new_kid = r.json()["activeKid"].as_str().unwrap().to_string();
    let jwks2 = t.jwks().await;
    assert_eq!(jwks2.keys.len(), 2);
    assert_eq!(
        jwks2.keys[0].common.key_id.as_deref(),
        Some(new_kid.as_str())
    );
    verify(&jwks2, &old_token, &audience(t.cluster)).unwrap();
    let r = t.get(&t.tenant_url(t.a), &admin).await;
    let new_token = embedded_token(r.json()["kubeconfig"].as_str().unwrap());
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .as_deref(),
        Some(new_kid.as_str())
    );
    verify(&jwks2, &new_token, &audience(t.cluster)).unwrap();
    // A key past its overlap is retired by a later rotation.
    let report = kubenova_manager::api::kubeconfigs::rotate_signing_keys(
        t.st.store.as_ref(),
        time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(report.retired_kids.len(), 2);
    assert!(report.verifying_kids.is_empty());
}
