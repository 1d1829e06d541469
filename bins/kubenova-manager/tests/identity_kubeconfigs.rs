//! Kubeconfigs follow identity: people signed in with an identity provider (the test kit's
//! OIDC provider, discovery and JWKS over HTTP) obtain kubeconfigs and exec tokens on the
//! rights the model derives (a tenant's `owners`, a project's `access`), the tokens carry
//! their subject and identity-provider groups (never a `system:` or `kubenova:` one), and
//! removing them from the owners or access revokes what they were issued and refuses
//! their next exec refresh. The manager's real router on SQLite, a cluster whose Capsule
//! Proxy is reported; and two replicas (each its own pool and caches) on one Postgres
//! database, where a removal through one revokes at once on the other. API keys obtain
//! kubeconfigs within their grants.
#![allow(clippy::unwrap_used, missing_docs)]

use base64::Engine as _;
use hyper::{Method, StatusCode};
use kubenova_api::ids::ClusterId;
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::oidc::{IssuerConfig, Oidc, OidcConfig, PlatformRoles};
use kubenova_store::WriteOptions;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_testkit::oidc::Provider;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

mod common;

const SECRET: &[u8] = b"identity-kubeconfigs-hs256-secret-0123456789";
const AUDIENCE: &str = "kubenova-ui";
const EXTERNAL_URL: &str = "https://kubenova.example.com";
const PROXY: &str = "https://capsule-proxy.example.com:9001";
const CA: &str = include_str!("../../../kubenova-kubeconfig/tests/fixtures/proxy-ca.pem");
const KUBECONFIG: &str = include_str!("fixtures/cluster.kubeconfig");

struct Manager {
    app: axum::Router,
    st: AppState,
    admin: String,
    idp: Provider,
    _dir: tempfile::TempDir,
}

/// A manager on its own SQLite store trusting a new identity provider whose groups get
/// `groups_prefix`.
async fn manager(groups_prefix: &str) -> Manager {
    let idp = Provider::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    manager_on(&url, idp, groups_prefix, dir).await
}

/// A manager (one replica: its own pool, record cache and credential writer) on the
/// store at `url`, trusting `idp`.
async fn manager_on(
    url: &str,
    idp: Provider,
    groups_prefix: &str,
    dir: tempfile::TempDir,
) -> Manager {
    let keyring = Keyring::new(vec![Kek::new("k", &[9; 32]).unwrap()]).unwrap();
    let store = kubenova_store::connect(url, keyring).await.unwrap();
    let cfg = ServerConfig {
        external_url: Some(EXTERNAL_URL.into()),
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
                issuer: idp.issuer().to_string(),
                audience: AUDIENCE.into(),
                subject_claim: "email".into(),
                groups_claim: "groups".into(),
                subject_prefix: String::new(),
                groups_prefix: groups_prefix.into(),
                jwks_file: None,
                role_claims: false,
                login: None,
            }],
            platform_roles: PlatformRoles::default(),
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
    let admin = auth
        .mint(
            "root@example.com",
            &[Role::Admin],
            &[],
            &[],
            Duration::from_secs(600),
        )
        .unwrap()
        .token;
    let st = kubenova_manager::assemble_state(
        store,
        kubenova_api::catalog::Catalog::builtin(),
        cfg,
        auth,
    );
    Manager {
        app: kubenova_manager::api::router(st.clone()),
        st,
        admin,
        idp,
        _dir: dir,
    }
}

impl Manager {
    /// A token of the identity provider for `email` in `groups`.
    fn person(&self, email: &str, groups: &[&str]) -> String {
        self.idp.sign(json!({
            "iss": self.idp.issuer(), "aud": AUDIENCE, "sub": format!("id-{email}"),
            "email": email, "groups": groups,
        }))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        common::call(&self.app, method, path, token, body).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }
}

/// The tenant `acme` (owned by `owners`) with the project `web` (with `access`), on a
/// cluster whose Capsule Proxy is reported.
struct World {
    cluster: String,
    acme: String,
    web: String,
}

impl World {
    fn tenant_kubeconfig(&self) -> String {
        format!("/api/v1/tenants/{}/kubeconfig", self.acme)
    }
    fn project_kubeconfig(&self) -> String {
        format!(
            "/api/v1/clusters/{}/tenants/{}/projects/{}/kubeconfig",
            self.cluster, self.acme, self.web
        )
    }
    fn token(&self) -> String {
        format!("/api/v1/tenants/{}/token", self.acme)
    }
    fn credentials(&self) -> String {
        format!("/api/v1/tenants/{}/credentials", self.acme)
    }
    fn owners(&self) -> String {
        format!(
            "/api/v1/clusters/{}/tenants/{}/owners",
            self.cluster, self.acme
        )
    }
    fn access(&self) -> String {
        format!(
            "/api/v1/clusters/{}/tenants/{}/projects/{}/access",
            self.cluster, self.acme, self.web
        )
    }
}

async fn world(m: &Manager, owners: Value, access: Value) -> World {
    let (s, c) = m
        .post(
            "/api/v1/clusters",
            &m.admin,
            json!({"name": "prod", "kubeconfig": KUBECONFIG}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let cluster = c["id"].as_str().unwrap().to_string();
    let id: ClusterId = cluster.parse().unwrap();
    let mut rec = m.st.store.get_cluster(id).await.unwrap();
    let expected = rec.version;
    rec.version += 1;
    rec.proxy = Some(
        serde_json::from_value(json!({"url": PROXY,
            "caData": base64::engine::general_purpose::STANDARD.encode(CA)}))
        .unwrap(),
    );
    m.st.store
        .update_cluster(&rec, expected, &WriteOptions::default())
        .await
        .unwrap();
    let tenants = format!("/api/v1/clusters/{cluster}/tenants");
    let (s, t) = m
        .post(
            &tenants,
            &m.admin,
            json!({"name": "acme", "owners": owners}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let acme = t["id"].as_str().unwrap().to_string();
    let (s, p) = m
        .post(
            &format!("{tenants}/{acme}/projects"),
            &m.admin,
            json!({"name": "web", "access": access}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    World {
        cluster,
        acme,
        web: p["id"].as_str().unwrap().to_string(),
    }
}

/// The claims of a token (its signature is checked by the kubeconfig tests).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// The token embedded in an issued kubeconfig (JSON answer).
fn embedded_token(issued: &Value) -> String {
    let kc: Value = serde_saphyr::from_str(issued["kubeconfig"].as_str().unwrap()).unwrap();
    kc["users"][0]["user"]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The listed credential `jti`.
async fn listed(m: &Manager, w: &World, jti: &str) -> Value {
    let (s, list) = m.call(Method::GET, &w.credentials(), &m.admin, None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["jti"] == jti)
        .unwrap_or_else(|| panic!("credential {jti} not listed: {list}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_owner_gets_kubeconfigs_carrying_her_identity_until_the_group_is_removed() {
    let m = manager("").await;
    let w = world(
        &m,
        json!(["group:acme-admins", "bob@example.com"]),
        json!(["viewer:carol@example.com"]),
    )
    .await;
    // alice owns acme through her group; the provider also names groups that must never
    // reach a cluster as hers.
    let alice = m.person(
        "alice@example.com",
        &[
            "acme-admins",
            "qa",
            "system:masters",
            "kubenova:tenant:victim:owner",
            "KubeNova:project:victim:web:owner",
        ],
    );
    let (s, issued) = m
        .post(&w.tenant_kubeconfig(), &alice, json!({"role": "owner"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{issued}");
    let c = claims(&embedded_token(&issued));
    assert_eq!(c["sub"], "alice@example.com");
    assert_eq!(
        c["groups"],
        json!(["kubenova:tenant:acme:owner", "acme-admins", "qa"]),
        "the scope group, then her groups without the reserved ones"
    );
    let token_jti = issued["jti"].as_str().unwrap().to_string();
    let cred = listed(&m, &w, &token_jti).await;
    assert_eq!(cred["state"], "active");
    assert_eq!(cred["derivedFrom"], json!(["group:acme-admins"]), "{cred}");
    assert_eq!(cred["subject"], "alice@example.com");

    // As a tenant owner she may have any role of its projects, also as exec tokens.
    let (s, exec) = m
        .post(
            &w.token(),
            &alice,
            json!({"role": "developer", "project": w.web}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{exec}");
    let c = claims(exec["status"]["token"].as_str().unwrap());
    assert_eq!(c["sub"], "alice@example.com");
    assert_eq!(
        c["groups"],
        json!(["kubenova:project:acme:web:developer", "acme-admins", "qa"])
    );
    let exec_jti = c["jti"].as_str().unwrap().to_string();
    // She lists the tenant's credentials, like a tenantOwner.
    let (s, _) = m.call(Method::GET, &w.credentials(), &alice, None).await;
    assert_eq!(s, StatusCode::OK);

    // bob owns acme by his own entry and by the group.
    let bob = m.person("bob@example.com", &["acme-admins"]);
    let (s, bobs) = m
        .post(&w.tenant_kubeconfig(), &bob, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{bobs}");
    let bob_jti = bobs["jti"].as_str().unwrap().to_string();
    let mut keys: Vec<String> =
        serde_json::from_value(listed(&m, &w, &bob_jti).await["derivedFrom"].clone()).unwrap();
    keys.sort();
    assert_eq!(keys, ["group:acme-admins", "user:bob@example.com"]);
    // Issued on admin's token role: never revoked by the owners.
    let (s, admins) = m
        .post(&w.tenant_kubeconfig(), &m.admin, json!({"role": "owner"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{admins}");
    let admin_jti = admins["jti"].as_str().unwrap().to_string();
    assert!(
        listed(&m, &w, &admin_jti)
            .await
            .get("derivedFrom")
            .is_none()
    );

    // The group leaves the owners.
    let (s, body) = m
        .call(
            Method::PUT,
            &w.owners(),
            &m.admin,
            Some(json!(["bob@example.com"])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for jti in [&token_jti, &exec_jti] {
        let cred = listed(&m, &w, jti).await;
        assert_eq!(cred["state"], "revoked", "{cred}");
        assert_eq!(cred["revokedBy"], "root@example.com", "{cred}");
        assert_eq!(cred["revokedReason"], "membership removed", "{cred}");
    }
    // bob is still an owner by his own entry; admin's is issued on a role.
    assert_eq!(listed(&m, &w, &bob_jti).await["state"], "active");
    assert_eq!(listed(&m, &w, &admin_jti).await["state"], "active");
    // Her next exec refresh (rights read again, the same token) is refused, and so is a
    // new kubeconfig: acme is no longer hers to see.
    let (s, body) = m
        .post(
            &w.token(),
            &alice,
            json!({"role": "developer", "project": w.web}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "KN-404");
    let (s, _) = m
        .post(&w.tenant_kubeconfig(), &alice, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = m.call(Method::GET, &w.credentials(), &alice, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // bob still refreshes.
    let (s, body) = m.post(&w.token(), &bob, json!({"role": "owner"})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_access_roles_bound_what_people_obtain_and_a_downgrade_revokes() {
    let m = manager("").await;
    let w = world(
        &m,
        json!(["alice@example.com"]),
        json!([
            "viewer:carol@example.com",
            "developer:group:web-devs",
            "owner:erin@example.com"
        ]),
    )
    .await;
    // carol (viewer:) gets viewer kubeconfigs of web only.
    let carol = m.person("carol@example.com", &[]);
    let (s, body) = m
        .post(&w.project_kubeconfig(), &carol, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        claims(&embedded_token(&body))["groups"],
        json!(["kubenova:project:acme:web:viewer"])
    );
    let (s, body) = m
        .post(
            &w.project_kubeconfig(),
            &carol,
            json!({"role": "developer"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("a viewer of project \"web\"") && msg.contains("not developer"),
        "{msg}"
    );
    // No tenant scope: the tenant's kubeconfigs and credentials stay hidden.
    let (s, _) = m
        .post(&w.tenant_kubeconfig(), &carol, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = m.call(Method::GET, &w.credentials(), &carol, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // dave develops through his group: developer and viewer, not owner.
    let dave = m.person("dave@example.com", &["web-devs"]);
    let (s, dev) = m
        .post(
            &w.token(),
            &dave,
            json!({"role": "developer", "project": w.web}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{dev}");
    let dev_jti = claims(dev["status"]["token"].as_str().unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        claims(dev["status"]["token"].as_str().unwrap())["groups"],
        json!(["kubenova:project:acme:web:developer", "web-devs"])
    );
    let (s, view) = m
        .post(&w.project_kubeconfig(), &dave, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let view_jti = view["jti"].as_str().unwrap().to_string();
    let (s, body) = m
        .post(&w.project_kubeconfig(), &dave, json!({"role": "owner"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("a developer may obtain developer or viewer kubeconfigs, not owner"),
        "{body}"
    );
    // erin (owner:) gets any role of the project.
    let erin = m.person("erin@example.com", &[]);
    let (s, owner) = m
        .post(&w.project_kubeconfig(), &erin, json!({"role": "owner"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{owner}");
    let owner_jti = owner["jti"].as_str().unwrap().to_string();

    // The group's entry goes from developer to viewer, erin's from owner to viewer: the
    // developer and owner credentials are revoked, dave's viewer one stays.
    let (s, body) = m
        .call(
            Method::PUT,
            &w.access(),
            &m.admin,
            Some(json!({"access": [
                "viewer:carol@example.com", "viewer:group:web-devs", "viewer:erin@example.com"
            ]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for jti in [&dev_jti, &owner_jti] {
        let cred = listed(&m, &w, jti).await;
        assert_eq!(cred["state"], "revoked", "{cred}");
        assert_eq!(cred["revokedReason"], "membership removed");
    }
    assert_eq!(listed(&m, &w, &view_jti).await["state"], "active");
    // dave's next developer refresh is refused (he is a viewer now), a viewer one works.
    let (s, body) = m
        .post(
            &w.token(),
            &dave,
            json!({"role": "developer", "project": w.web}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = m
        .post(
            &w.token(),
            &dave,
            json!({"role": "viewer", "project": w.web}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_by_the_model_revokes_and_lifts_like_a_tenant_owner() {
    let m = manager("").await;
    let w = world(
        &m,
        json!(["group:acme-admins"]),
        json!(["viewer:carol@example.com"]),
    )
    .await;
    let alice = m.person("alice@example.com", &["acme-admins"]);
    let carol = m.person("carol@example.com", &[]);
    let (s, body) = m
        .post(&w.project_kubeconfig(), &carol, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // alice revokes carol's credentials and refuses her new ones.
    let (s, body) = m
        .call(
            Method::DELETE,
            &format!("{}?subject=carol@example.com", w.credentials()),
            &alice,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["revoked"], 1);
    let (s, _) = m
        .post(&w.project_kubeconfig(), &carol, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // ... and lifts it again (revoked by a tenant owner).
    let lift = format!("/api/v1/tenants/{}/revoked-subjects:lift", w.acme);
    let (s, body) = m
        .post(&lift, &alice, json!({"subject": "carol@example.com"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["lifted"], true);
    // Not a revocation admin made, nor her own.
    let (s, _) = m
        .call(
            Method::DELETE,
            &format!("{}?subject=mallory@example.com", w.credentials()),
            &m.admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = m
        .post(&lift, &alice, json!({"subject": "mallory@example.com"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = m
        .post(&lift, &alice, json!({"subject": "alice@example.com"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // carol (a viewer of a project) may neither revoke nor lift: no tenant scope.
    let (s, _) = m.call(Method::DELETE, &w.credentials(), &carol, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = m
        .post(&lift, &carol, json!({"subject": "mallory@example.com"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_the_groups_as_mapped_and_bounded() {
    // The issuer's groups prefix applies: an IdP group spelled like a scope group becomes
    // a harmless prefixed name.
    let m = manager("kc:").await;
    let w = world(&m, json!(["group:kc:acme-admins"]), json!([])).await;
    let mut groups: Vec<String> = vec!["acme-admins".into(), "kubenova:tenant:victim:owner".into()];
    groups.extend((0..100).map(|i| format!("team-{i:03}")));
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    let alice = m.person("alice@example.com", &refs);
    let (s, issued) = m
        .post(&w.tenant_kubeconfig(), &alice, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{issued}");
    let token = embedded_token(&issued);
    let c = claims(&token);
    let got: Vec<String> = serde_json::from_value(c["groups"].clone()).unwrap();
    assert_eq!(got.len(), 1 + kubenova_kubeconfig::MAX_EXTRA_GROUPS);
    assert_eq!(
        got[..4],
        [
            "kubenova:tenant:acme:viewer",
            "kc:acme-admins",
            "kc:kubenova:tenant:victim:owner",
            "kc:team-000"
        ]
    );
    assert!(got[1..].iter().all(|g| g.starts_with("kc:")));
    assert!(token.len() < 8 * 1024, "token of {} bytes", token.len());
    // The audit event says how many were carried and left out.
    let audit =
        m.st.store
            .query_audit(&kubenova_store::AuditQuery {
                resource_kind: Some("credential".into()),
                ..Default::default()
            })
            .await
            .unwrap();
    let ev = audit
        .items
        .iter()
        .find(|e| e.action == "kubeconfig.issue" && e.actor == "alice@example.com")
        .unwrap();
    let details = ev.details.clone().unwrap();
    assert_eq!(
        details["groupsCarried"],
        kubenova_kubeconfig::MAX_EXTRA_GROUPS,
        "{details}"
    );
    assert_eq!(
        details["groupsLeftOut"],
        102 - kubenova_kubeconfig::MAX_EXTRA_GROUPS
    );
    assert_eq!(details["derivedFrom"], json!(["group:kc:acme-admins"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_obtain_kubeconfigs_within_their_grants() {
    let m = manager("").await;
    let w = world(
        &m,
        json!(["alice@example.com"]),
        json!(["viewer:carol@example.com"]),
    )
    .await;
    let keys = format!("/api/v1/tenants/{}/api-keys", w.acme);
    let (s, owner) = m
        .post(&keys, &m.admin, json!({"name": "ci", "role": "owner"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{owner}");
    let owner_key = owner["key"].as_str().unwrap().to_string();
    let (s, viewer) = m
        .post(
            &keys,
            &m.admin,
            json!({"name": "view", "project": w.web, "role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{viewer}");
    let viewer_key = viewer["key"].as_str().unwrap().to_string();

    // A tenant key: any role, tenant or project, as a tenant owner; its subject, no other
    // group; not tied to the owners (a key belongs to the tenant).
    let (s, issued) = m
        .post(&w.tenant_kubeconfig(), &owner_key, json!({"role": "owner"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{issued}");
    let c = claims(&embedded_token(&issued));
    assert_eq!(c["sub"], format!("apikey:{}/ci", w.acme));
    assert_eq!(c["groups"], json!(["kubenova:tenant:acme:owner"]));
    let jti = issued["jti"].as_str().unwrap().to_string();
    assert!(listed(&m, &w, &jti).await.get("derivedFrom").is_none());
    let (s, body) = m
        .post(
            &w.token(),
            &owner_key,
            json!({"role": "developer", "project": w.web}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = m
        .call(
            Method::PUT,
            &w.owners(),
            &m.admin,
            Some(json!(["bob@example.com"])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(listed(&m, &w, &jti).await["state"], "active");

    // A project viewer key: viewer kubeconfigs of its project only.
    let (s, body) = m
        .post(
            &w.project_kubeconfig(),
            &viewer_key,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = m
        .post(
            &w.project_kubeconfig(),
            &viewer_key,
            json!({"role": "developer"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, _) = m
        .post(
            &w.tenant_kubeconfig(),
            &viewer_key,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_through_one_replica_revokes_at_once_on_the_other() {
    let Some(pg) = common::pg_url() else { return };
    let (url, db) = common::create_database(&pg, "kn_kcident").await;
    let idp = Provider::start().await.unwrap();
    let one = manager_on(&url, idp.clone(), "", tempfile::tempdir().unwrap()).await;
    let two = manager_on(&url, idp, "", tempfile::tempdir().unwrap()).await;
    let w = world(&one, json!(["group:acme-admins"]), json!([])).await;
    let alice = one.person("alice@example.com", &["acme-admins"]);
    // Issued through one; refreshed and listed through the other (its caches warm).
    let (s, body) = one
        .post(&w.tenant_kubeconfig(), &alice, json!({"role": "owner"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let jti = body["jti"].as_str().unwrap().to_string();
    let (s, body) = two.post(&w.token(), &alice, json!({"role": "owner"})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let exec_jti = claims(body["status"]["token"].as_str().unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(listed(&two, &w, &jti).await["state"], "active");

    // The group leaves the owners through one replica ...
    let (s, body) = one
        .call(
            Method::PUT,
            &w.owners(),
            &one.admin,
            Some(json!(["bob@example.com"])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // ... and the other sees both credentials revoked and refuses the refresh at once.
    for j in [&jti, &exec_jti] {
        let cred = listed(&two, &w, j).await;
        assert_eq!(cred["state"], "revoked", "{cred}");
        assert_eq!(cred["revokedReason"], "membership removed");
    }
    let (s, body) = two.post(&w.token(), &alice, json!({"role": "owner"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    drop((one, two));
    common::drop_database(&pg, &db).await;
}
