//! API keys through the manager's real router on SQLite: created by the tenant's owner
//! (a person named in `owners`) or a project's owner, shown once, used as a bearer token
//! with exactly the key's rights, listed with their last use, revoked (refused at once),
//! refused when wrong, expired or of a deleted tenant or project, and never created by a
//! key or with more rights than the creator's. Two real manager processes on one Postgres
//! database show a revocation through one refused at once by the other.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt as _;
use hyper::{HeaderMap, Method, Request, StatusCode, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubenova_api::ids::TenantId;
use kubenova_api::model::AccessRole;
use kubenova_kubeconfig::SigningKey;
use kubenova_manager::api::apikeys::mint_key;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{ApiKey, SqliteStore, Store, WriteOptions};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

mod common;

const SECRET: &[u8] = b"api-keys-test-hs256-secret-0123456789abcdef";
const IDP: &str = "https://idp.example.com";
const AUDIENCE: &str = "kubenova-ui";
/// A registered cluster's kubeconfig (shared fixture; its token is a stand-in secret).
const KUBECONFIG: &str = include_str!("fixtures/cluster.kubeconfig");

struct Manager {
    app: axum::Router,
    store: Arc<dyn Store>,
    auth: kubenova_manager::api::auth::Authenticator,
    idp_key: SigningKey,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Manager {
    async fn start() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let keyring = Keyring::new(vec![Kek::new("k", &[7; 32]).unwrap()]).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url, keyring).await.unwrap());
        let cfg = ServerConfig {
            rate_limit_subject_rps: 0,
            rate_limit_ip_rps: 0,
            ..ServerConfig::default()
        };
        kubenova_manager::api::kubeconfigs::load_or_create_signing_keys(store.as_ref())
            .await
            .unwrap();
        // People sign in with an identity provider whose keys are given as a JWKS.
        let idp_key = SigningKey::generate(time::OffsetDateTime::now_utc()).unwrap();
        let jwks = json!({ "keys": [serde_json::to_value(idp_key.jwk()).unwrap()] }).to_string();
        let build = || {
            kubenova_manager::api::auth::Authenticator::hs256(
                SECRET,
                &cfg.jwt_issuer,
                &cfg.jwt_audience,
                cfg.clock_skew,
                cfg.max_token_ttl,
            )
            .with_oidc(IDP, AUDIENCE, &jwks)
            .unwrap()
        };
        let auth = build();
        let manager_auth = build();
        let admin = auth
            .mint("root", &[Role::Admin], &[], &[], Duration::from_secs(600))
            .unwrap()
            .token;
        let state = kubenova_manager::assemble_state(
            Arc::clone(&store),
            kubenova_api::catalog::Catalog::builtin(),
            cfg,
            manager_auth,
        );
        Manager {
            app: kubenova_manager::api::router(state),
            store,
            auth,
            idp_key,
            admin,
            _dir: dir,
        }
    }

    /// A person's token from the identity provider.
    fn person(&self, email: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims =
            json!({"iss": IDP, "aud": AUDIENCE, "sub": email, "iat": now, "exp": now + 300});
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.idp_key.kid().to_string());
        let enc = EncodingKey::from_ec_pem(self.idp_key.to_pkcs8_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &enc).unwrap()
    }

    /// A minted token with roles and tenant scope.
    fn token(&self, roles: &[Role], tenants: &[TenantId]) -> String {
        self.auth
            .mint("machine", roles, tenants, &[], Duration::from_secs(600))
            .unwrap()
            .token
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value, HeaderMap) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req
            .body(
                body.map(|b| Body::from(b.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
        )
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, v, _) = self.call_with(method, path, token, body, &[]).await;
        (s, v)
    }
}

struct World {
    cluster: String,
    acme: String,
    other: String,
    web: String,
    api: String,
}

impl World {
    fn tenant(&self, t: &str) -> String {
        format!("/api/v1/clusters/{}/tenants/{t}", self.cluster)
    }
    fn project(&self, p: &str) -> String {
        format!("{}/projects/{p}", self.tenant(&self.acme))
    }
    fn keys(&self, t: &str) -> String {
        format!("/api/v1/tenants/{t}/api-keys")
    }
}

/// Cluster `prod`; tenant `acme` owned by alice with projects `web` (paula its owner, dave
/// a developer) and `api`; tenant `other` owned by mallory.
async fn world(m: &Manager) -> World {
    let (s, c) = m
        .call(
            Method::POST,
            "/api/v1/clusters",
            &m.admin,
            Some(json!({"name": "prod", "kubeconfig": KUBECONFIG})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let cluster = c["id"].as_str().unwrap().to_string();
    let tenants = format!("/api/v1/clusters/{cluster}/tenants");
    let mut ids = vec![];
    for (name, owner) in [
        ("acme", "alice@example.com"),
        ("other", "mallory@example.com"),
    ] {
        let (s, t) = m
            .call(
                Method::POST,
                &tenants,
                &m.admin,
                Some(json!({"name": name, "owners": [owner]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let mut projects = vec![];
    for (name, access) in [
        (
            "web",
            json!(["owner:paula@example.com", "developer:dave@example.com"]),
        ),
        ("api", json!([])),
    ] {
        let (s, p) = m
            .call(
                Method::POST,
                &format!("{tenants}/{}/projects", ids[0]),
                &m.admin,
                Some(json!({"name": name, "access": access})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        projects.push(p["id"].as_str().unwrap().to_string());
    }
    World {
        cluster,
        acme: ids[0].clone(),
        other: ids[1].clone(),
        web: projects[0].clone(),
        api: projects[1].clone(),
    }
}

/// Creates a key as `token`; returns the key and its record.
async fn create(m: &Manager, tenant: &str, token: &str, body: Value) -> (String, Value) {
    let (s, v, h) = m
        .call_with(
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/api-keys"),
            token,
            Some(body),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    let id = v["apiKey"]["id"].as_str().unwrap();
    assert_eq!(
        h[header::LOCATION],
        format!("/api/v1/tenants/{tenant}/api-keys/{id}").as_str()
    );
    (v["key"].as_str().unwrap().to_string(), v["apiKey"].clone())
}

fn message(v: &Value) -> String {
    v["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_key_is_created_used_listed_and_revoked_at_once() {
    let m = Manager::start().await;
    let w = world(&m).await;
    let alice = m.person("alice@example.com");
    let (key, record) = create(
        &m,
        &w.acme,
        &alice,
        json!({"name": "ci", "description": "deploys from CI", "role": "owner"}),
    )
    .await;
    assert!(key.starts_with("knk_"), "{key}");
    assert_eq!(record["state"], "active");
    assert_eq!(record["createdBy"], "alice@example.com");
    assert_eq!(record["subject"], format!("apikey:{}/ci", w.acme));
    assert_eq!(record["lastUsedAt"], Value::Null);
    assert!(record.get("secretHash").is_none() && record.get("key").is_none());
    // 90 days by default.
    let created = time::OffsetDateTime::parse(
        record["createdAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expires = time::OffsetDateTime::parse(
        record["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires - created, time::Duration::days(90));

    // The key owns its tenant: reads it, creates a project there; another tenant does not
    // exist for it.
    let (s, body) = m.call(Method::GET, &w.tenant(&w.acme), &key, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = m
        .call(
            Method::POST,
            &format!("{}/projects", w.tenant(&w.acme)),
            &key,
            Some(json!({"name": "jobs"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    for path in [w.tenant(&w.other), w.keys(&w.other)] {
        let (s, body) = m.call(Method::GET, &path, &key, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (s, me) = m.call(Method::GET, "/api/v1/me", &key, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["subject"], format!("apikey:{}/ci", w.acme));
    assert_eq!(me["roles"], json!([]));
    // No platform rights, no tokens, no keys of its own (kubeconfigs and exec tokens it
    // obtains within its rights: tests/identity_kubeconfigs.rs).
    for (method, path, body) in [
        (Method::GET, "/api/v1/clusters".to_string(), None),
        (
            Method::POST,
            "/api/v1/tokens".to_string(),
            Some(json!({"subject": "x", "roles": ["admin"]})),
        ),
        (
            Method::POST,
            w.keys(&w.acme),
            Some(json!({"name": "child", "role": "owner"})),
        ),
    ] {
        let (s, body) = m.call(method, &path, &key, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {body}");
    }

    // Listed with its last use.
    let (s, list) = m.call(Method::GET, &w.keys(&w.acme), &alice, None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "ci");
    assert!(items[0]["lastUsedAt"].is_string(), "{list}");
    let id = items[0]["id"].as_str().unwrap().to_string();
    let (s, one) = m
        .call(
            Method::GET,
            &format!("{}/{id}", w.keys(&w.acme)),
            &key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(one["id"], id.as_str());

    // Revoked: refused at once, with a reason that does not contain the key.
    let (s, revoked) = m
        .call(
            Method::DELETE,
            &format!("{}/{id}", w.keys(&w.acme)),
            &alice,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revokedBy"], "alice@example.com");
    let (s, body, h) = m
        .call_with(Method::GET, &w.tenant(&w.acme), &key, None, &[])
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "KN-401");
    assert!(message(&body).contains("revoked"), "{body}");
    assert!(!body.to_string().contains(&key[40..]), "{body}");
    assert!(h.contains_key(header::WWW_AUTHENTICATE));
    // Again: nothing changes.
    let (s, again) = m
        .call(
            Method::DELETE,
            &format!("{}/{id}", w.keys(&w.acme)),
            &alice,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["revokedAt"], revoked["revokedAt"]);
    // The name is free again.
    create(&m, &w.acme, &alice, json!({"name": "ci", "role": "owner"})).await;

    // Audited, never with the key.
    let (s, audit) = m
        .call(
            Method::GET,
            &format!("/api/v1/audit?resourceId={id}"),
            &m.admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{audit}");
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["apikey.create", "apikey.revoke", "apikey.revoke"]);
    let (_, all) = m
        .call(Method::GET, "/api/v1/audit?limit=500", &m.admin, None)
        .await;
    assert!(!all.to_string().contains(&key[37..]));
}

#[tokio::test]
async fn wrong_expired_and_orphaned_keys_are_refused() {
    let m = Manager::start().await;
    let w = world(&m).await;
    let alice = m.person("alice@example.com");
    let (key, record) = create(&m, &w.acme, &alice, json!({"name": "ci", "role": "owner"})).await;

    // A wrong secret and an unknown id answer the same; a malformed key says so.
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    let (unknown, _) = mint_key(uuid::Uuid::now_v7());
    let mut reasons = vec![];
    for k in [wrong.as_str(), unknown.as_str()] {
        let (s, body) = m.call(Method::GET, &w.tenant(&w.acme), k, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
        assert!(!body.to_string().contains(&k[37..]), "{body}");
        reasons.push(message(&body));
    }
    assert_eq!(reasons[0], reasons[1]);
    let (s, body) = m
        .call(Method::GET, &w.tenant(&w.acme), "knk_nonsense", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(message(&body).contains("malformed"), "{body}");

    // Expired (written to the store directly: the API sets at least a day).
    let t: TenantId = w.acme.parse().unwrap();
    let tenant = m.store.get_tenant(t).await.unwrap();
    let id = uuid::Uuid::now_v7();
    let (old, hash) = mint_key(id);
    let now = time::OffsetDateTime::now_utc();
    m.store
        .create_api_key(
            &ApiKey {
                id,
                tenant_id: t,
                cluster_id: tenant.cluster_id,
                project_id: None,
                name: "old".into(),
                description: String::new(),
                role: AccessRole::Owner,
                secret_hash: hash,
                created_by: "alice@example.com".into(),
                created_at: now - time::Duration::days(2),
                expires_at: now - time::Duration::seconds(1),
                last_used_at: None,
                revoked_at: None,
                revoked_by: None,
            },
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let (s, body) = m.call(Method::GET, &w.tenant(&w.acme), &old, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(message(&body).contains("expired"), "{body}");
    let (_, list) = m.call(Method::GET, &w.keys(&w.acme), &alice, None).await;
    let states: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("ci", "active"), ("old", "expired")]);

    // A project key stops with its project; a tenant key with its tenant.
    let paula = m.person("paula@example.com");
    let (web_key, _) = create(
        &m,
        &w.acme,
        &paula,
        json!({"name": "web-ci", "project": w.web, "role": "developer"}),
    )
    .await;
    let (s, _) = m
        .call(Method::GET, &w.project(&w.web), &web_key, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = m
        .call(
            Method::DELETE,
            &format!("{}?cascade=true", w.project(&w.web)),
            &m.admin,
            None,
        )
        .await;
    assert!(s.is_success(), "{body}");
    let (s, _) = m.call(Method::GET, "/api/v1/me", &web_key, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = m.call(Method::GET, "/api/v1/me", &key, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = m
        .call(
            Method::DELETE,
            &format!("{}?cascade=true", w.tenant(&w.acme)),
            &m.admin,
            None,
        )
        .await;
    assert!(s.is_success(), "{body}");
    let (s, body) = m.call(Method::GET, "/api/v1/me", &key, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(record["id"].is_string());
}

#[tokio::test]
async fn nobody_creates_a_key_with_more_rights_than_their_own() {
    let m = Manager::start().await;
    let w = world(&m).await;
    let keys = w.keys(&w.acme);
    let paula = m.person("paula@example.com"); // owner of web
    let dave = m.person("dave@example.com"); // developer of web
    let mallory = m.person("mallory@example.com"); // owner of other
    let auditor = m.token(&[Role::ReadOnly], &[]);
    let other_owner = m.token(&[Role::TenantOwner], &[w.other.parse().unwrap()]);
    let web_key =
        |role: &str| json!({"name": format!("web-{role}"), "project": w.web, "role": role});
    let tenant_key = json!({"name": "all", "role": "owner"});
    let cases: Vec<(&str, &String, Value, StatusCode)> = vec![
        // A project owner: keys of their project only.
        (
            "paula tenant key",
            &paula,
            tenant_key.clone(),
            StatusCode::FORBIDDEN,
        ),
        (
            "paula key of a project she does not see",
            &paula,
            json!({"name": "x", "project": w.api, "role": "viewer"}),
            StatusCode::NOT_FOUND,
        ),
        // A developer or viewer manages no keys.
        (
            "dave web key",
            &dave,
            web_key("viewer"),
            StatusCode::FORBIDDEN,
        ),
        (
            "dave tenant key",
            &dave,
            tenant_key.clone(),
            StatusCode::NOT_FOUND,
        ),
        // Read-only callers read but create nothing.
        (
            "auditor",
            &auditor,
            tenant_key.clone(),
            StatusCode::FORBIDDEN,
        ),
        // Other tenants' owners do not see acme.
        (
            "mallory",
            &mallory,
            tenant_key.clone(),
            StatusCode::NOT_FOUND,
        ),
        (
            "other tenant's token",
            &other_owner,
            web_key("owner"),
            StatusCode::NOT_FOUND,
        ),
        // A tenant key is an owner key; bad input is KN-422.
        (
            "tenant viewer key",
            &m.admin,
            json!({"name": "v", "role": "viewer"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "admin viewer key of web",
            &m.admin,
            json!({"name": "v", "project": w.web, "role": "viewer"}),
            StatusCode::CREATED,
        ),
        (
            "too long",
            &m.admin,
            json!({"name": "long", "role": "owner", "expiresInDays": 366}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad name",
            &m.admin,
            json!({"name": "Not_A_Label", "role": "owner"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown role",
            &m.admin,
            json!({"name": "r", "role": "admin"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            &m.admin,
            json!({"name": "r", "role": "owner", "roles": ["admin"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (what, token, body, want) in cases {
        let (s, v) = m.call(Method::POST, &keys, token, Some(body)).await;
        assert_eq!(s, want, "{what}: {v}");
    }
    // The project of another tenant, named under acme, is not found.
    let (s, v) = m
        .call(
            Method::POST,
            &w.keys(&w.other),
            &m.admin,
            Some(json!({"name": "x", "project": w.web, "role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Paula creates keys of web, up to owner; they act in web only.
    let (dev, _) = create(&m, &w.acme, &paula, web_key("developer")).await;
    let (viewer, _) = create(&m, &w.acme, &paula, web_key("viewer")).await;
    let apps = format!("{}/apps", w.project(&w.web));
    let (s, body) = m
        .call(
            Method::POST,
            &apps,
            &dev,
            Some(json!({"name": "site", "image": "nginx:1.27"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, _) = m
        .call(
            Method::POST,
            &apps,
            &viewer,
            Some(json!({"name": "site2", "image": "nginx:1.27"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = m.call(Method::GET, &apps, &viewer, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = m
        .call(
            Method::PUT,
            &format!("{}/access", w.project(&w.web)),
            &dev,
            Some(json!([])),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for path in [w.project(&w.api), w.tenant(&w.acme), keys.clone()] {
        let (s, body) = m.call(Method::GET, &path, &dev, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
    }

    // What each caller lists: paula her project's keys, the auditor all, dave nothing.
    let (_, all) = create(
        &m,
        &w.acme,
        &m.person("alice@example.com"),
        tenant_key.clone(),
    )
    .await;
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, list) = m.call(Method::GET, &keys, &paula, None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(names(&list), ["v", "web-developer", "web-viewer"]);
    let (s, list) = m.call(Method::GET, &keys, &auditor, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(names(&list), ["v", "web-developer", "web-viewer", "all"]);
    let (s, _) = m.call(Method::GET, &keys, &dave, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let all_id = all["id"].as_str().unwrap();
    // Paula neither sees nor revokes the tenant key; the auditor sees it, may not revoke.
    for (token, want) in [
        (&paula, StatusCode::NOT_FOUND),
        (&auditor, StatusCode::FORBIDDEN),
    ] {
        let (s, body) = m
            .call(Method::DELETE, &format!("{keys}/{all_id}"), token, None)
            .await;
        assert_eq!(s, want, "{body}");
    }
    let (s, _) = m
        .call(Method::GET, &format!("{keys}/{all_id}"), &paula, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A key id of acme named under another tenant is not found there.
    let (s, _) = m
        .call(
            Method::GET,
            &format!("{}/{all_id}", w.keys(&w.other)),
            &m.admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Paula revokes her project's key; the key stops.
    let dev_id = names(&list);
    assert!(dev_id.contains(&"web-developer".to_string()));
    let dev_record = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "web-developer")
        .unwrap()
        .clone();
    let (s, body) = m
        .call(
            Method::DELETE,
            &format!("{keys}/{}", dev_record["id"].as_str().unwrap()),
            &paula,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _) = m.call(Method::GET, &apps, &dev, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_create_is_never_replayed_with_its_key() {
    let m = Manager::start().await;
    let w = world(&m).await;
    let body = json!({"name": "ci", "role": "owner"});
    let (s, first, h) = m
        .call_with(
            Method::POST,
            &w.keys(&w.acme),
            &m.admin,
            Some(body.clone()),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    // The retry is not answered from a stored response (which would hold the key): the
    // name is taken.
    let (s, again, h) = m
        .call_with(
            Method::POST,
            &w.keys(&w.acme),
            &m.admin,
            Some(body),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{again}");
    assert!(!h.contains_key("idempotent-replayed"));
    assert!(!again.to_string().contains(first["key"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_applies_at_once_on_every_replica() {
    let Some(url) = common::pg_url() else { return };
    let (db_url, db) = common::create_database(&url, "kn_apikeys").await;
    let result = tokio::spawn(two_replicas(db_url)).await;
    common::drop_database(&url, &db).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn two_replicas(db_url: String) {
    const JWT: &str = "api-keys-replicas-secret-0123456789abcdef";
    const KEKS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let replica_a = common::Manager::start(&db_url, &d1, JWT, KEKS, &[]);
    let replica_b = common::Manager::start(&db_url, &d2, JWT, KEKS, &[]);
    let (a, b) = (
        format!("http://{}", replica_a.addr),
        format!("http://{}", replica_b.addr),
    );
    let minter = kubenova_manager::api::auth::Authenticator::hs256(
        JWT.as_bytes(),
        "kubenova",
        "kubenova-api",
        Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    let admin = minter
        .mint("root", &[Role::Admin], &[], &[], Duration::from_secs(600))
        .unwrap()
        .token;
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, url: String, token: &str, body: Option<Value>| {
        common::send(&http, method, url, token, body)
    };
    let (s, c) = send(
        reqwest::Method::POST,
        format!("{a}/api/v1/clusters"),
        &admin,
        Some(json!({"name": "prod", "kubeconfig": KUBECONFIG})),
    )
    .await;
    assert_eq!(s, 201, "{c}");
    let tenants = format!("/api/v1/clusters/{}/tenants", c["id"].as_str().unwrap());
    let (s, t) = send(
        reqwest::Method::POST,
        format!("{a}{tenants}"),
        &admin,
        Some(json!({"name": "acme", "owners": ["alice@example.com"]})),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let tenant_id = t["id"].as_str().unwrap();
    let tenant = format!("{tenants}/{tenant_id}");
    let owner = minter
        .mint(
            "alice@example.com",
            &[Role::TenantOwner],
            &[tenant_id.parse().unwrap()],
            &[],
            Duration::from_secs(600),
        )
        .unwrap()
        .token;
    let keys = format!("/api/v1/tenants/{tenant_id}/api-keys");
    let (s, created) = send(
        reqwest::Method::POST,
        format!("{a}{keys}"),
        &owner,
        Some(json!({"name": "ci", "role": "owner"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["apiKey"]["id"].as_str().unwrap().to_string();
    // Works on both replicas (and, used on B, shows its last use on A).
    for base in [&a, &b] {
        let (s, body) = send(reqwest::Method::GET, format!("{base}{tenant}"), &key, None).await;
        assert_eq!(s, 200, "{base}: {body}");
    }
    let (_, one) = send(
        reqwest::Method::GET,
        format!("{a}{keys}/{id}"),
        &owner,
        None,
    )
    .await;
    assert!(one["lastUsedAt"].is_string(), "{one}");
    // Revoked through A: refused at once by B.
    let (s, body) = send(
        reqwest::Method::DELETE,
        format!("{a}{keys}/{id}"),
        &owner,
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = send(reqwest::Method::GET, format!("{b}{tenant}"), &key, None).await;
    assert_eq!(s, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    // The replicas never logged the key.
    for r in [&replica_a, &replica_b] {
        assert!(!r.log.lock().unwrap().contains(&key[37..]));
    }
}
