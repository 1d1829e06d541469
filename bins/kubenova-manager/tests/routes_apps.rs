//! In-process tests of the project and app routes through the full router (middleware,
//! auth, URI rewrite of `:action`), each over its own SQLite store.

#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_api::model::{Cluster, Tenant, UsageRecord};
use kubenova_manager::api::auth::Authenticator;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::middleware::Runtime;
use kubenova_manager::api::{AppState, router};
use kubenova_store::WriteOptions;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

struct T {
    app: axum::Router,
    st: AppState,
    admin: String,
    cluster: ClusterId,
    tenant_a: TenantId,
    tenant_b: TenantId,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

fn cluster_record(name: &str) -> Cluster {
    serde_json::from_value(json!({
        "id": ClusterId::new(), "name": name, "status": "connected", "version": 1,
        "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

fn tenant_record(cluster: ClusterId, name: &str) -> Tenant {
    serde_json::from_value(json!({
        "id": TenantId::new(), "clusterId": cluster, "name": name, "owners": ["alice@example.com"],
        "plan": "baseline", "labels": {}, "quotas": {}, "limits": {}, "networkPolicies": [],
        "ownerNamespace": format!("{name}-owner"), "appsNamespace": format!("{name}-apps"),
        "version": 1, "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

impl T {
    async fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        let keys = kubenova_store::crypto::Keyring::load_or_generate(dir.path()).unwrap();
        let url = format!("sqlite://{}", dir.path().join("kn.db").display());
        let store = kubenova_store::connect(&url, keys).await.unwrap();
        let config = ServerConfig {
            rate_limit_subject_rps: 0,
            rate_limit_ip_rps: 0,
            ..ServerConfig::default()
        };
        let auth = Authenticator::hs256(
            b"0123456789abcdef0123456789abcdef",
            &config.jwt_issuer,
            &config.jwt_audience,
            Duration::from_secs(60),
            Duration::from_secs(3600),
        );
        let st = AppState {
            store: store.clone(),
            catalog: Arc::new(kubenova_api::catalog::Catalog::builtin()),
            runtime: Arc::new(Runtime::new(&config)),
            config: Arc::new(config),
            auth: Arc::new(auth),
            changes: kubenova_store::notify::ChangeNotifier::new(),
        };
        let c = cluster_record("c1");
        store
            .create_cluster(
                &c,
                b"apiVersion: v1\nkind: Config\n",
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        let a = tenant_record(c.id, "acme");
        let b = tenant_record(c.id, "beta");
        store
            .create_tenant(&a, &WriteOptions::default())
            .await
            .unwrap();
        store
            .create_tenant(&b, &WriteOptions::default())
            .await
            .unwrap();
        let mut t = T {
            app: router(st.clone()),
            st,
            admin: String::new(),
            cluster: c.id,
            tenant_a: a.id,
            tenant_b: b.id,
            _dir: dir,
        };
        t.admin = t.token("admin", &[Role::Admin], &[], &[]);
        t
    }

    fn token(
        &self,
        sub: &str,
        roles: &[Role],
        tenants: &[TenantId],
        projects: &[ProjectId],
    ) -> String {
        self.st
            .auth
            .mint(sub, roles, tenants, projects, Duration::from_secs(600))
            .unwrap()
            .token
    }

    async fn req(
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
                .body(Body::from(serde_json::to_vec(&v).unwrap())),
            None => b.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    async fn get(&self, uri: &str, token: &str) -> Resp {
        self.req(Method::GET, uri, Some(token), None, &[]).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> Resp {
        self.req(Method::POST, uri, Some(token), Some(body), &[])
            .await
    }

    async fn put(&self, uri: &str, token: &str, body: Value) -> Resp {
        self.req(Method::PUT, uri, Some(token), Some(body), &[])
            .await
    }

    fn projects(&self, tenant: TenantId) -> String {
        format!(
            "/api/v1/clusters/{}/tenants/{tenant}/projects",
            self.cluster
        )
    }

    /// Creates a project as admin; returns (id, url).
    async fn project(&self, tenant: TenantId, name: &str) -> (ProjectId, String) {
        let r = self
            .post(&self.projects(tenant), &self.admin, json!({"name": name}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let id: ProjectId = r.body["id"].as_str().unwrap().parse().unwrap();
        (id, format!("{}/{id}", self.projects(tenant)))
    }

    /// Creates an app in a project URL as admin; returns its URL.
    async fn app(&self, project_url: &str, name: &str, image: &str) -> String {
        let r = self
            .post(
                &format!("{project_url}/apps"),
                &self.admin,
                json!({"name": name, "image": image}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.headers[header::LOCATION].to_str().unwrap().to_string()
    }
}

// ---------------------------------------------------------------------------------
// Projects
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn project_crud_with_etags_and_errors() {
    let t = T::new().await;
    let url = t.projects(t.tenant_a);
    let r = t.post(&url, &t.admin, json!({"name": "payments", "description": "pay", "access": ["alice@example.com", "viewer:group:qa"]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let loc = r.headers[header::LOCATION].to_str().unwrap().to_string();
    assert_eq!(loc, format!("{url}/{id}"));
    assert_eq!(r.headers[header::ETAG], "\"1\"");
    assert_eq!(
        r.body["namespace"].as_str().unwrap(),
        kubenova_api::model::project_namespace("acme", "payments")
    );
    assert_eq!(r.body["status"]["phase"], "pending");

    let g = t.get(&loc, &t.admin).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.headers[header::ETAG], "\"1\"");
    assert_eq!(g.body["name"], "payments");

    let l = t.get(&url, &t.admin).await;
    assert_eq!(l.status, StatusCode::OK);
    assert_eq!(l.body["items"].as_array().unwrap().len(), 1);
    assert!(l.body["nextCursor"].is_null());

    // Duplicate name → 409; invalid → 422; unknown field → 422; malformed → 400; no JSON → 415.
    assert_eq!(
        t.post(&url, &t.admin, json!({"name": "payments"}))
            .await
            .status,
        StatusCode::CONFLICT
    );
    let bad = t.post(&url, &t.admin, json!({"name": "Bad_Name"})).await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "KN-422")
    );
    assert_eq!(bad.body["details"]["violations"][0]["field"], "name");
    assert_eq!(
        t.post(&url, &t.admin, json!({"name": "x", "nmae": 1}))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let raw = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(header::AUTHORIZATION, format!("Bearer {}", t.admin))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\":"))
        .unwrap();
    assert_eq!(
        t.app.clone().oneshot(raw).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let no_ct = t.req(Method::POST, &url, Some(&t.admin), None, &[]).await;
    assert_eq!(no_ct.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // PUT: rename refused, update ok, stale If-Match → 412.
    let rn = t.put(&loc, &t.admin, json!({"name": "other"})).await;
    assert_eq!(
        (rn.status, rn.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "KN-422")
    );
    let up = t
        .req(
            Method::PUT,
            &loc,
            Some(&t.admin),
            Some(json!({"name": "payments", "description": "new", "labels": {"env": "prod"}})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.text);
    assert_eq!(up.body["description"], "new");
    assert_eq!(up.body["access"], json!([]));
    assert_eq!(up.headers[header::ETAG], "\"2\"");
    let stale = t
        .req(
            Method::PUT,
            &loc,
            Some(&t.admin),
            Some(json!({"name": "payments"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::PRECONDITION_FAILED, "KN-412")
    );

    // Access list.
    let acc = t
        .put(
            &format!("{loc}/access"),
            &t.admin,
            json!({"access": ["bob@example.com", "owner:carol@example.com"]}),
        )
        .await;
    assert_eq!(acc.status, StatusCode::OK, "{}", acc.text);
    assert_eq!(
        acc.body["access"],
        json!(["bob@example.com", "owner:carol@example.com"])
    );
    assert_eq!(acc.body["version"], 3);
    let dup = t
        .put(
            &format!("{loc}/access"),
            &t.admin,
            json!({"access": ["bob@example.com", "viewer:bob@example.com"]}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::UNPROCESSABLE_ENTITY);
    let stale = t
        .req(
            Method::PUT,
            &format!("{loc}/access"),
            Some(&t.admin),
            Some(json!({"access": []})),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);

    // Delete: refused while apps exist, cascade deletes.
    t.app(&loc, "web", "nginx:1").await;
    let d = t.req(Method::DELETE, &loc, Some(&t.admin), None, &[]).await;
    assert_eq!((d.status, d.code()), (StatusCode::CONFLICT, "KN-409"));
    let d = t
        .req(
            Method::DELETE,
            &loc,
            Some(&t.admin),
            None,
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(d.status, StatusCode::PRECONDITION_FAILED);
    let d = t
        .req(
            Method::DELETE,
            &format!("{loc}?cascade=true"),
            Some(&t.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(d.status, StatusCode::NO_CONTENT, "{}", d.text);
    assert_eq!(t.get(&loc, &t.admin).await.status, StatusCode::NOT_FOUND);
    let (_, empty) = t.project(t.tenant_a, "empty").await;
    assert_eq!(
        t.req(Method::DELETE, &empty, Some(&t.admin), None, &[])
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    // The audit trail has the changes.
    let events =
        t.st.store
            .query_audit(&kubenova_store::AuditQuery {
                resource_id: Some(id),
                ..Default::default()
            })
            .await
            .unwrap();
    let actions: Vec<_> = events.items.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"project.create")
            && actions.contains(&"project.update")
            && actions.contains(&"project.access"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn path_chain_and_ids_are_checked() {
    let t = T::new().await;
    let (p, purl) = t.project(t.tenant_a, "p1").await;
    let aurl = t.app(&purl, "web", "nginx:1").await;
    let app_id = aurl.rsplit('/').next().unwrap().to_string();
    // Non-UUID ids → 400 naming the parameter.
    let r = t
        .get(
            &format!("/api/v1/clusters/{}/tenants/acme/projects", t.cluster),
            &t.admin,
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "KN-400"));
    assert!(r.body["message"].as_str().unwrap().contains("tenantID"));
    assert_eq!(
        t.get(&format!("{}/p1", t.projects(t.tenant_a)), &t.admin)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        t.get(&format!("{purl}/apps/web"), &t.admin).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        t.get("/api/v1/projects/nope/usage", &t.admin).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        t.get("/api/v1/apps/runs/nope", &t.admin).await.status,
        StatusCode::BAD_REQUEST
    );
    // The project under the wrong tenant, the tenant under the wrong cluster → 404.
    let wrong_tenant = format!("{}/{p}", t.projects(t.tenant_b));
    assert_eq!(
        t.get(&wrong_tenant, &t.admin).await.status,
        StatusCode::NOT_FOUND
    );
    let wrong_cluster = format!(
        "/api/v1/clusters/{}/tenants/{}/projects/{p}",
        ClusterId::new(),
        t.tenant_a
    );
    let r = t.get(&wrong_cluster, &t.admin).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "KN-404"));
    let r = t
        .get(
            &format!(
                "/api/v1/clusters/{}/tenants/{}/projects",
                ClusterId::new(),
                t.tenant_a
            ),
            &t.admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The app under another project → 404.
    let (_, other) = t.project(t.tenant_a, "p2").await;
    let r = t.get(&format!("{other}/apps/{app_id}"), &t.admin).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "KN-404"));
    assert_eq!(
        t.get(&format!("{purl}/apps/{}", ProjectId::new()), &t.admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // No token → 401.
    let r = t.req(Method::GET, &purl, None, None, &[]).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "KN-401"));
    let r = t
        .req(
            Method::POST,
            &format!("{purl}/apps"),
            Some("garbage"),
            Some(json!({"name": "x", "image": "y"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn roles_and_scopes_on_projects_and_apps() {
    let t = T::new().await;
    let (p1, p1url) = t.project(t.tenant_a, "p1").await;
    let (p2, p2url) = t.project(t.tenant_a, "p2").await;
    let (_, b1url) = t.project(t.tenant_b, "b1").await;
    let app1 = t.app(&p1url, "web", "nginx:1").await;
    let app2 = t.app(&p2url, "web", "nginx:1").await;
    let bapp = t.app(&b1url, "web", "nginx:1").await;

    // tenantOwner of A: full control in A, 404 on everything of B.
    let owner = t.token("alice", &[Role::TenantOwner], &[t.tenant_a], &[]);
    assert_eq!(
        t.get(&t.projects(t.tenant_a), &owner).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        t.post(&t.projects(t.tenant_a), &owner, json!({"name": "p3"}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        t.put(&p1url, &owner, json!({"name": "p1", "description": "mine"}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        t.post(
            &format!("{p1url}/apps"),
            &owner,
            json!({"name": "api", "image": "x:1"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    for (m, u) in [
        (Method::GET, t.projects(t.tenant_b)),
        (Method::GET, b1url.clone()),
        (Method::GET, format!("{b1url}/apps")),
        (Method::GET, bapp.clone()),
        (Method::DELETE, b1url.clone()),
    ] {
        let r = t.req(m.clone(), &u, Some(&owner), None, &[]).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "KN-404"),
            "{m} {u}: {}",
            r.text
        );
    }
    let r = t
        .post(&t.projects(t.tenant_b), &owner, json!({"name": "evil"}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t.post(&format!("{bapp}:deploy"), &owner, json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // projectDev of P1: reads P1, writes its apps, 404 on P2, cannot change the project.
    let dev = t.token("dave", &[Role::ProjectDev], &[], &[p1]);
    let l = t.get(&t.projects(t.tenant_a), &dev).await;
    assert_eq!(l.status, StatusCode::OK, "{}", l.text);
    let ids: Vec<_> = l.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![p1.to_string()]);
    assert_eq!(
        t.get(&t.projects(t.tenant_b), &dev).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(t.get(&p1url, &dev).await.status, StatusCode::OK);
    assert_eq!(t.get(&p2url, &dev).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&app2, &dev).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.get(&format!("{p2url}/apps"), &dev).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.post(&format!("{app2}:deploy"), &dev, json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.get(&format!("/api/v1/projects/{p2}/usage"), &dev)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = t.put(&p1url, &dev, json!({"name": "p1"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "KN-403"));
    assert_eq!(
        t.put(&format!("{p1url}/access"), &dev, json!({"access": []}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        t.req(Method::DELETE, &p1url, Some(&dev), None, &[])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        t.post(
            &format!("{p1url}/apps"),
            &dev,
            json!({"name": "job", "image": "x:1"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(
        t.put(&app1, &dev, json!({"image": "nginx:2"})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        t.post(&format!("{app1}:deploy"), &dev, json!({}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert!(matches!(
        t.post(&t.projects(t.tenant_a), &dev, json!({"name": "x"}))
            .await
            .status,
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    ));

    // Unscoped readOnly: reads everything, changes nothing (403).
    let ro = t.token("rita", &[Role::ReadOnly], &[], &[]);
    assert_eq!(t.get(&app2, &ro).await.status, StatusCode::OK);
    assert_eq!(
        t.get(&format!("{app2}/revisions"), &ro).await.status,
        StatusCode::OK
    );
    for (m, u, b) in [
        (
            Method::POST,
            t.projects(t.tenant_a),
            Some(json!({"name": "x"})),
        ),
        (Method::PUT, p2url.clone(), Some(json!({"name": "p2"}))),
        (
            Method::POST,
            format!("{p2url}/apps"),
            Some(json!({"name": "x", "image": "y"})),
        ),
        (Method::PUT, app2.clone(), Some(json!({"image": "y"}))),
        (Method::POST, format!("{app2}:deploy"), None),
        (Method::POST, format!("{app2}:suspend"), None),
        (Method::PUT, format!("{app2}/traits"), Some(json!([]))),
        (
            Method::POST,
            format!("{app2}/workflow/run"),
            Some(json!({})),
        ),
        (Method::DELETE, app2.clone(), None),
    ] {
        let r = t.req(m.clone(), &u, Some(&ro), b, &[]).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "KN-403"),
            "{m} {u}: {}",
            r.text
        );
    }
    // Scoped readOnly of tenant B: 404 on A.
    let rob = t.token("rob", &[Role::ReadOnly], &[t.tenant_b], &[]);
    assert_eq!(t.get(&app1, &rob).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&bapp, &rob).await.status, StatusCode::OK);
    // ops may do anything.
    let ops = t.token("otto", &[Role::Ops], &[], &[]);
    assert_eq!(
        t.post(&format!("{bapp}:suspend"), &ops, json!({}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn project_kubeconfig_is_honest() {
    let t = T::new().await;
    let (_, purl) = t.project(t.tenant_a, "p1").await;
    let r = t.get(&format!("{purl}/kubeconfig"), &t.admin).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "KN-409"),
        "{}",
        r.text
    );
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("Capsule Proxy")
    );
    let mut c = t.st.store.get_cluster(t.cluster).await.unwrap();
    let expected = c.version;
    c.version += 1;
    c.proxy = Some(serde_json::from_value(json!({"url": "https://proxy.example.com"})).unwrap());
    t.st.store
        .update_cluster(&c, expected, &WriteOptions::default())
        .await
        .unwrap();
    // A reported proxy without its CA: still no kubeconfig (issuance is tested in
    // routes_kubeconfigs.rs), never one that skips TLS verification.
    let r = t.get(&format!("{purl}/kubeconfig"), &t.admin).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "KN-409"));
    assert!(r.text.contains("CA"), "{}", r.text);
    assert!(!r.text.contains("apiVersion"));
    let other = t.token("x", &[Role::TenantOwner], &[t.tenant_b], &[]);
    assert_eq!(
        t.get(&format!("{purl}/kubeconfig"), &other).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn project_usage_from_stored_records() {
    let t = T::new().await;
    let (p, _) = t.project(t.tenant_a, "p1").await;
    let now = time::OffsetDateTime::now_utc();
    let hour = now
        .replace_minute(0)
        .unwrap()
        .replace_second(0)
        .unwrap()
        .replace_nanosecond(0)
        .unwrap();
    let rec = |h: time::OffsetDateTime, cpu: i64, project: Option<ProjectId>| UsageRecord {
        cluster_id: t.cluster,
        tenant_id: t.tenant_a,
        project_id: project,
        hour: h,
        cpu_millicores: cpu,
        memory_bytes: 2 * 1024 * 1024 * 1024,
        storage_bytes: 0,
        load_balancers: 0,
        namespaces: 1,
        pods: 3,
        apps: 1,
        cpu_limit_millicores: 0,
        memory_limit_bytes: 0,
        storage_by_class: Default::default(),
        quotas: Vec::new(),
        cluster_capacity: None,
    };
    let url = format!("/api/v1/projects/{p}/usage");
    let empty = t.get(&url, &t.admin).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.text);
    assert_eq!(empty.body["cpuRequests"], "0");
    assert!(empty.body.get("lastReportedAt").is_none());
    t.st.store
        .upsert_usage(&[
            rec(hour - time::Duration::hours(2), 500, Some(p)),
            rec(hour - time::Duration::hours(1), 1500, Some(p)),
            rec(hour - time::Duration::hours(1), 9000, None),
            rec(hour - time::Duration::hours(48), 7000, Some(p)),
        ])
        .await
        .unwrap();
    let r = t.get(&url, &t.admin).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["cpuRequests"], "1500m");
    assert_eq!(r.body["memoryRequests"], "2Gi");
    assert_eq!(r.body["pods"], 3);
    assert_eq!(r.body["totals"]["hours"], 2);
    assert_eq!(r.body["totals"]["cpuMillicoreHours"], 2000);
    assert_eq!(r.body["records"].as_array().unwrap().len(), 2);
    let from = (hour - time::Duration::hours(72))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = t.get(&format!("{url}?from={from}"), &t.admin).await;
    assert_eq!(r.body["totals"]["hours"], 3);
    // By day and month the database sums the periods: the same totals, latest figures and
    // series as from the hours, without the hours.
    let hourly = t
        .get(&format!("{url}?from={from}&granularity=hour"), &t.admin)
        .await;
    for g in ["day", "month"] {
        let r = t
            .get(&format!("{url}?from={from}&granularity={g}"), &t.admin)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["records"], serde_json::json!([]), "{g}");
        for key in ["totals", "cpuRequests", "lastReportedAt", "pods", "quota"] {
            assert_eq!(r.body[key], hourly.body[key], "{g}: {key}");
        }
        let hours: i64 = r.body["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["hours"].as_i64().unwrap())
            .sum();
        assert_eq!(hours, 3, "{g}: {}", r.text);
        let cost = |v: &serde_json::Value| -> i64 {
            v["series"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    b["cost"]
                        .as_str()
                        .unwrap()
                        .replace('.', "")
                        .parse::<i64>()
                        .unwrap()
                })
                .sum()
        };
        assert_eq!(cost(&r.body), cost(&hourly.body), "{g}");
    }
    let csv = t.get(&format!("{url}?format=csv"), &t.admin).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(csv.text.lines().count(), 3);
    assert!(csv.text.starts_with("hour,clusterId"));
    for (q, field) in [
        ("format=xml", "format"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("granularity=week", "granularity"),
    ] {
        let r = t.get(&format!("{url}?{q}"), &t.admin).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{q}: {}",
            r.text
        );
        assert_eq!(r.body["details"]["violations"][0]["field"], field, "{q}");
    }
    let r = t
        .get(
            &format!("{url}?from=2030-01-01T00:00:00Z&to=2029-01-01T00:00:00Z"),
            &t.admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        t.get(
            &format!("/api/v1/projects/{}/usage", ProjectId::new()),
            &t.admin
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let dev = t.token("dave", &[Role::ProjectDev], &[], &[p]);
    assert_eq!(t.get(&url, &dev).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------
// Apps
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn app_crud_revisions_and_diff() {
    let t = T::new().await;
    let (_, purl) = t.project(t.tenant_a, "p1").await;
    let apps = format!("{purl}/apps");
    let r = t.post(&apps, &t.admin, json!({"name": "web", "component": "webservice", "image": "nginx:1.26", "spec": {"port": 80}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["revision"], 1);
    assert!(r.body.get("deployedRevision").is_none());
    assert_eq!(r.body["status"]["phase"], "pending");
    let url = r.headers[header::LOCATION].to_str().unwrap().to_string();
    assert_eq!(
        t.post(&apps, &t.admin, json!({"name": "web", "image": "x:1"}))
            .await
            .status,
        StatusCode::CONFLICT
    );
    let bad = t.post(&apps, &t.admin, json!({"name": "api"})).await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "KN-422")
    );
    assert_eq!(
        t.post(
            &apps,
            &t.admin,
            json!({"name": "api", "image": "x", "colour": 1})
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let g = t.get(&url, &t.admin).await;
    assert_eq!(g.headers[header::ETAG], "\"1\"");
    let l = t.get(&apps, &t.admin).await;
    assert_eq!(l.body["items"].as_array().unwrap().len(), 1);

    // Unchanged spec: no revision (the name may be omitted).
    let same = t
        .put(
            &url,
            &t.admin,
            json!({"component": "webservice", "image": "nginx:1.26", "spec": {"port": 80}}),
        )
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    assert_eq!(same.body["revision"], 1);
    // Changed spec: revision 2.
    let up = t
        .req(Method::PUT, &url, Some(&t.admin), Some(json!({"name": "web", "component": "webservice", "image": "nginx:1.27", "spec": {"port": 8080}})), &[("if-match", same.headers[header::ETAG].to_str().unwrap())])
        .await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.text);
    assert_eq!(up.body["revision"], 2);
    let stale = t
        .req(
            Method::PUT,
            &url,
            Some(&t.admin),
            Some(json!({"image": "nginx:9"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::PRECONDITION_FAILED, "KN-412")
    );
    let rn = t
        .put(&url, &t.admin, json!({"name": "api", "image": "nginx:9"}))
        .await;
    assert_eq!(rn.status, StatusCode::UNPROCESSABLE_ENTITY);
    let invalid = t.put(&url, &t.admin, json!({"image": "has space"})).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Revisions, paginated.
    let revs = t.get(&format!("{url}/revisions"), &t.admin).await;
    assert_eq!(revs.status, StatusCode::OK);
    let nums: Vec<_> = revs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_i64().unwrap())
        .collect();
    assert_eq!(nums, vec![1, 2]);
    assert_eq!(revs.body["items"][1]["createdBy"], "admin");
    let page = t.get(&format!("{url}/revisions?limit=1"), &t.admin).await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    let cursor = page.body["nextCursor"].as_str().unwrap().to_string();
    let page2 = t
        .get(
            &format!("{url}/revisions?limit=1&cursor={cursor}"),
            &t.admin,
        )
        .await;
    assert_eq!(page2.body["items"][0]["number"], 2);
    assert_eq!(
        t.get(&format!("{url}/revisions?limit=0"), &t.admin)
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        t.get(&format!("{url}/revisions?limit=abc"), &t.admin)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // A real structured diff.
    let d = t.get(&format!("{url}/diff/1/2"), &t.admin).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    assert_eq!(d.body["from"], 1);
    assert_eq!(d.body["to"], 2);
    assert_eq!(
        d.body["changes"],
        json!([
            {"path": "/image", "op": "changed", "from": "nginx:1.26", "to": "nginx:1.27"},
            {"path": "/spec/port", "op": "changed", "from": 80, "to": 8080}
        ])
    );
    assert_eq!(
        t.get(&format!("{url}/diff/2/2"), &t.admin).await.body["changes"],
        json!([])
    );
    let back = t.get(&format!("{url}/diff/2/1"), &t.admin).await;
    assert_eq!(back.body["changes"][0]["from"], "nginx:1.27");
    assert_eq!(
        t.get(&format!("{url}/diff/1/9"), &t.admin).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.get(&format!("{url}/diff/one/2"), &t.admin).await.status,
        StatusCode::BAD_REQUEST
    );

    // Status is honest: pending until the operator reports.
    let s = t.get(&format!("{url}/status"), &t.admin).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body["phase"], "pending");
    assert_eq!(s.body["status"], "pending");
    assert_eq!(s.body["revision"], 2);
    assert!(s.body.get("velaPhase").is_none());

    // Logs: unknown component 404, known component 503 while the cluster's operator is
    // not connected (logs travel through it; no invented lines).
    let lg = t.get(&format!("{url}/logs/web"), &t.admin).await;
    assert_eq!(
        (lg.status, lg.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "KN-503"),
        "{}",
        lg.text
    );
    assert!(
        lg.body["message"]
            .as_str()
            .unwrap()
            .contains("its operator, which is not connected"),
        "{}",
        lg.text
    );
    assert!(lg.body.get("lines").is_none());
    assert_eq!(
        t.get(&format!("{url}/logs/worker"), &t.admin).await.status,
        StatusCode::NOT_FOUND
    );

    // Delete with a stale ETag, then for real.
    assert_eq!(
        t.req(
            Method::DELETE,
            &url,
            Some(&t.admin),
            None,
            &[("if-match", "\"1\"")]
        )
        .await
        .status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        t.req(Method::DELETE, &url, Some(&t.admin), None, &[])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.get(&url, &t.admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.get(&format!("{url}/revisions"), &t.admin).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn colon_actions_deploy_suspend_resume_rollback_delete() {
    let t = T::new().await;
    let (_, purl) = t.project(t.tenant_a, "p1").await;
    let url = t.app(&purl, "web", "nginx:1").await;
    assert_eq!(
        t.put(&url, &t.admin, json!({"image": "nginx:2"}))
            .await
            .body["revision"],
        2
    );

    // Deploy through the 0.1.3 colon path (rewritten by the middleware).
    let d = t
        .req(
            Method::POST,
            &format!("{url}:deploy"),
            Some(&t.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(d.status, StatusCode::ACCEPTED, "{}", d.text);
    assert_eq!(d.body["deployedRevision"], 2);
    let run_url = d.headers[header::LOCATION].to_str().unwrap().to_string();
    assert!(run_url.starts_with("/api/v1/apps/runs/"));
    let run = t.get(&run_url, &t.admin).await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.text);
    assert_eq!(run.body["status"], "requested");
    assert_eq!(
        run.body["inputs"],
        json!({"action": "deploy", "revision": 2})
    );
    // The /actions/ form works too.
    assert_eq!(
        t.req(
            Method::POST,
            &format!("{url}/actions/deploy"),
            Some(&t.admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        t.req(
            Method::POST,
            &format!("{url}%3Adeploy"),
            Some(&t.admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );

    let s = t
        .req(
            Method::POST,
            &format!("{url}:suspend"),
            Some(&t.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(s.status, StatusCode::ACCEPTED);
    assert_eq!(s.body["suspended"], true);
    let r = t
        .req(
            Method::POST,
            &format!("{url}:resume"),
            Some(&t.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["suspended"], false);
    let stale = t
        .req(
            Method::POST,
            &format!("{url}:suspend"),
            Some(&t.admin),
            None,
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);

    // Rollback without a body: the revision before the deployed one (1), as revision 3, deployed.
    let rb = t
        .req(
            Method::POST,
            &format!("{url}:rollback"),
            Some(&t.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(rb.status, StatusCode::OK, "{}", rb.text);
    assert_eq!(rb.body["revision"], 3);
    assert_eq!(rb.body["deployedRevision"], 3);
    assert_eq!(rb.body["spec"]["image"], "nginx:1");
    let rev3 = t.get(&format!("{url}/revisions"), &t.admin).await;
    assert_eq!(rev3.body["items"][2]["spec"]["image"], "nginx:1");
    assert_eq!(
        t.get(&format!("{url}/diff/1/3"), &t.admin).await.body["changes"],
        json!([])
    );
    // Explicit revision.
    let rb = t
        .post(&format!("{url}:rollback"), &t.admin, json!({"revision": 2}))
        .await;
    assert_eq!(rb.status, StatusCode::OK);
    assert_eq!(
        (
            rb.body["revision"].as_i64(),
            rb.body["spec"]["image"].as_str()
        ),
        (Some(4), Some("nginx:2"))
    );
    let unknown = t
        .post(
            &format!("{url}:rollback"),
            &t.admin,
            json!({"revision": 42}),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "KN-422")
    );
    assert_eq!(
        t.post(&format!("{url}:rollback"), &t.admin, json!({"rev": 1}))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let null = t
        .post(&format!("{url}:rollback"), &t.admin, Value::Null)
        .await;
    assert_eq!(null.status, StatusCode::OK, "{}", null.text);
    let plain = t
        .req(
            Method::POST,
            &format!("{url}:rollback"),
            Some(&t.admin),
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(
        plain.status,
        StatusCode::OK,
        "an empty body needs no content type"
    );

    // The runs: deploy ×3 and rollback ×3.
    let runs = t.get(&format!("{url}/workflow/runs"), &t.admin).await;
    assert_eq!(runs.status, StatusCode::OK);
    let actions: Vec<_> = runs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["inputs"]["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions,
        [
            "deploy", "deploy", "deploy", "rollback", "rollback", "rollback", "rollback"
        ]
    );

    // A fresh app has nothing to roll back to.
    let fresh = t.app(&purl, "fresh", "nginx:1").await;
    assert_eq!(
        t.req(
            Method::POST,
            &format!("{fresh}:rollback"),
            Some(&t.admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Unknown action → 404; delete action → 202 and gone.
    assert_eq!(
        t.req(
            Method::POST,
            &format!("{url}:explode"),
            Some(&t.admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let del = t
        .req(
            Method::POST,
            &format!("{url}:delete"),
            Some(&t.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, StatusCode::ACCEPTED, "{}", del.text);
    assert_eq!(del.body["status"], "deleting");
    assert_eq!(t.get(&url, &t.admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.get(&run_url, &t.admin).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.req(
            Method::POST,
            &format!("{url}:deploy"),
            Some(&t.admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn traits_policies_and_workflow_runs() {
    let t = T::new().await;
    let (p1, purl) = t.project(t.tenant_a, "p1").await;
    let url = t.app(&purl, "web", "nginx:1").await;
    // 0.1.3 shape: an array.
    let tr = t
        .put(
            &format!("{url}/traits"),
            &t.admin,
            json!([{"type": "scaler", "properties": {"replicas": 2}}]),
        )
        .await;
    assert_eq!(tr.status, StatusCode::OK, "{}", tr.text);
    assert_eq!(tr.body["revision"], 2);
    assert_eq!(tr.body["spec"]["traits"][0]["type"], "scaler");
    // Same traits in the object form: no new revision.
    let same = t
        .put(
            &format!("{url}/traits"),
            &t.admin,
            json!({"traits": [{"type": "scaler", "properties": {"replicas": 2}}]}),
        )
        .await;
    assert_eq!(same.body["revision"], 2);
    let bad = t
        .put(
            &format!("{url}/traits"),
            &t.admin,
            json!([{"type": "Bad Type"}]),
        )
        .await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "KN-422")
    );
    assert_eq!(
        t.put(
            &format!("{url}/traits"),
            &t.admin,
            json!([{"type": "x", "extra": 1}])
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        t.put(&format!("{url}/traits"), &t.admin, json!("scaler"))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let stale = t
        .req(
            Method::PUT,
            &format!("{url}/traits"),
            Some(&t.admin),
            Some(json!([])),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);

    let po = t
        .put(
            &format!("{url}/policies"),
            &t.admin,
            json!([{"name": "gc", "type": "garbage-collect", "properties": {"keepLegacyResource": true}}]),
        )
        .await;
    assert_eq!(po.status, StatusCode::OK, "{}", po.text);
    assert_eq!(po.body["revision"], 3);
    let po = t
        .put(
            &format!("{url}/policies"),
            &t.admin,
            json!({"policies": []}),
        )
        .await;
    assert_eq!(po.body["revision"], 4);
    assert_eq!(
        t.put(
            &format!("{url}/policies"),
            &t.admin,
            json!([{"type": "t", "properties": 3}])
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let d = t.get(&format!("{url}/diff/2/3"), &t.admin).await;
    assert_eq!(
        d.body["changes"],
        json!([{"path": "/policies/0", "op": "added", "to": {"name": "gc", "type": "garbage-collect", "properties": {"keepLegacyResource": true}}}])
    );

    // Workflow runs.
    let run = t
        .post(
            &format!("{url}/workflow/run"),
            &t.admin,
            json!({"inputs": {"image": "nginx:3"}}),
        )
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.text);
    assert_eq!(run.body["status"], "requested");
    let run_url = run.headers[header::LOCATION].to_str().unwrap().to_string();
    assert_eq!(
        t.get(&run_url, &t.admin).await.body["inputs"]["image"],
        "nginx:3"
    );
    assert_eq!(
        t.post(&format!("{url}/workflow/run"), &t.admin, json!({}))
            .await
            .body["inputs"],
        json!({})
    );
    let bad = t
        .post(
            &format!("{url}/workflow/run"),
            &t.admin,
            json!({"inputs": [1]}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        t.post(
            &format!("{url}/workflow/run"),
            &t.admin,
            json!({"input": {}})
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let runs = t
        .get(&format!("{url}/workflow/runs?limit=1"), &t.admin)
        .await;
    assert_eq!(runs.body["items"].as_array().unwrap().len(), 1);
    assert!(runs.body["nextCursor"].is_string());
    assert_eq!(
        t.get(&format!("/api/v1/apps/runs/{}", ProjectId::new()), &t.admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Run visibility follows the app's project.
    let dev1 = t.token("d1", &[Role::ProjectDev], &[], &[p1]);
    assert_eq!(t.get(&run_url, &dev1).await.status, StatusCode::OK);
    let (p2, _) = t.project(t.tenant_a, "p2").await;
    let dev2 = t.token("d2", &[Role::ProjectDev], &[], &[p2]);
    let r = t.get(&run_url, &dev2).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "KN-404"));
    let owner_b = t.token("ob", &[Role::TenantOwner], &[t.tenant_b], &[]);
    assert_eq!(
        t.get(&run_url, &owner_b).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn idempotent_app_creation() {
    let t = T::new().await;
    let (_, purl) = t.project(t.tenant_a, "p1").await;
    let apps = format!("{purl}/apps");
    let body = json!({"name": "web", "image": "nginx:1"});
    let first = t
        .req(
            Method::POST,
            &apps,
            Some(&t.admin),
            Some(body.clone()),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = t
        .req(
            Method::POST,
            &apps,
            Some(&t.admin),
            Some(body),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body["id"], first.body["id"]);
    let other = t
        .req(
            Method::POST,
            &apps,
            Some(&t.admin),
            Some(json!({"name": "api", "image": "x:1"})),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        t.get(&apps, &t.admin).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn openapi_has_the_project_and_app_operations_of_0_1_3() {
    let api = kubenova_manager::api::openapi();
    let doc = serde_json::to_value(&api).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let base = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects";
    let app = format!("{base}/{{projectID}}/apps/{{appID}}");
    let want: Vec<(String, &str, &str)> = vec![
        (base.to_string(), "get", "listProjects"),
        (base.to_string(), "post", "createProject"),
        (format!("{base}/{{projectID}}"), "get", "getProject"),
        (format!("{base}/{{projectID}}"), "put", "updateProject"),
        (format!("{base}/{{projectID}}"), "delete", "deleteProject"),
        (
            format!("{base}/{{projectID}}/access"),
            "put",
            "updateProjectAccess",
        ),
        (
            format!("{base}/{{projectID}}/kubeconfig"),
            "get",
            "getProjectKubeconfig",
        ),
        (
            "/api/v1/projects/{projectID}/usage".to_string(),
            "get",
            "getProjectUsage",
        ),
        (format!("{base}/{{projectID}}/apps"), "get", "listApps"),
        (format!("{base}/{{projectID}}/apps"), "post", "createApp"),
        (app.clone(), "get", "getApp"),
        (app.clone(), "put", "updateApp"),
        (app.clone(), "delete", "deleteApp"),
        (format!("{app}:deploy"), "post", "deployApp"),
        (format!("{app}:suspend"), "post", "suspendApp"),
        (format!("{app}:resume"), "post", "resumeApp"),
        (format!("{app}:rollback"), "post", "rollbackApp"),
        (format!("{app}:delete"), "post", "deleteAppAction"),
        (format!("{app}/status"), "get", "getAppStatus"),
        (format!("{app}/revisions"), "get", "listAppRevisions"),
        (
            format!("{app}/diff/{{revA}}/{{revB}}"),
            "get",
            "diffAppRevisions",
        ),
        (format!("{app}/logs/{{component}}"), "get", "getAppLogs"),
        (format!("{app}/traits"), "put", "updateAppTraits"),
        (format!("{app}/policies"), "put", "updateAppPolicies"),
        (format!("{app}/workflow/run"), "post", "runAppWorkflow"),
        (format!("{app}/workflow/runs"), "get", "listAppWorkflowRuns"),
        (
            "/api/v1/apps/runs/{runID}".to_string(),
            "get",
            "getWorkflowRun",
        ),
    ];
    for (p, m, id) in &want {
        let op = &paths.get(p).unwrap_or_else(|| panic!("{p} missing"))[*m];
        assert_eq!(op["operationId"], *id, "{m} {p}");
        assert_eq!(op["security"], json!([{"bearerAuth": []}]), "{id}");
        assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{id}");
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.contains_key("401") && responses.contains_key("404"),
            "{id}"
        );
        let ok = responses.keys().find(|k| k.starts_with('2')).unwrap();
        let ok = &responses[ok];
        assert!(
            ok.get("content").is_none_or(|c| c
                .as_object()
                .unwrap()
                .values()
                .all(|v| v.get("example").is_some())),
            "{id}: success example"
        );
        for (code, r) in responses.iter().filter(|(k, _)| !k.starts_with('2')) {
            assert!(
                r["content"]["application/json"]["example"]["code"]
                    .as_str()
                    .is_some_and(|c| c == format!("KN-{code}")),
                "{id} {code}"
            );
        }
        if let Some(rb) = op.get("requestBody") {
            assert!(
                rb["content"]["application/json"].get("example").is_some(),
                "{id}: request example"
            );
        }
    }
    assert!(
        !paths.keys().any(|p| p.contains("/actions/")),
        "the /actions/ form is internal"
    );
}

#[tokio::test]
async fn concurrent_updates_never_lose_a_revision() {
    let t = T::new().await;
    let (_, purl) = t.project(t.tenant_a, "p1").await;
    let url = t.app(&purl, "web", "nginx:0").await;
    let calls = (1..=8).map(|i| {
        let (t, url) = (&t, url.clone());
        async move {
            t.put(&url, &t.admin, json!({"image": format!("nginx:{i}")}))
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count() as i64;
    for r in &results {
        assert!(
            r.status == StatusCode::OK
                || (r.status == StatusCode::PRECONDITION_FAILED && r.code() == "KN-412"),
            "{}: {}",
            r.status,
            r.text
        );
    }
    assert!(ok >= 1);
    let app = t.get(&url, &t.admin).await;
    assert_eq!(app.body["revision"].as_i64(), Some(1 + ok));
    let revs = t.get(&format!("{url}/revisions"), &t.admin).await;
    assert_eq!(revs.body["items"].as_array().unwrap().len() as i64, 1 + ok);
}

// ---------------------------------------------------------------------------------
// The tenant boundary around apps
// ---------------------------------------------------------------------------------

/// What a developer can ask KubeVela to do through an app is bounded by the tenant's plan:
/// every definition type the plan does not allow, every property that would send objects
/// to another namespace or cluster and every image from a registry the policysets do not
/// allow is KN-422 naming the field, and nothing is stored.
#[tokio::test]
async fn apps_cannot_leave_their_plan() {
    let t = T::new().await;
    let (pid, purl) = t.project(t.tenant_a, "web").await;
    let dev = t.token("dev@example.com", &[Role::ProjectDev], &[], &[pid]);
    let apps = format!("{purl}/apps");
    let cases = [
        (
            json!({"name": "pwn", "components": [{"name": "x", "type": "k8s-objects", "properties": {"objects": [
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "pwn"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                 "subjects": [{"kind": "User", "name": "dev@example.com"}]}]}}]}),
            "components[0].type",
        ),
        (
            json!({"name": "away", "image": "nginx",
                   "policies": [{"name": "t", "type": "topology", "properties": {"clusters": ["prod-eu-2"], "namespace": "beta-apps"}}]}),
            "policies[0].properties.clusters",
        ),
        (
            json!({"name": "over", "image": "nginx",
                   "policies": [{"name": "o", "type": "override", "properties": {"components": [{"name": "over", "type": "k8s-objects"}]}}]}),
            "policies[0].type",
        ),
        (
            json!({"name": "obj", "image": "nginx",
                   "workflow": {"steps": [{"name": "s", "type": "apply-object", "properties": {"value": {"kind": "Secret"}}}]}}),
            "workflow.steps[0].type",
        ),
        (
            json!({"name": "sa", "components": [{"name": "sa", "type": "webservice", "properties": {"image": "nginx"},
                   "traits": [{"type": "service-account", "properties": {"name": "root", "create": true}}]}]}),
            "components[0].traits[0].type",
        ),
        (
            json!({"name": "ref", "component": "ref-objects", "spec": {"objects": [{"resource": "secret", "name": "x"}]}}),
            "component",
        ),
        (
            json!({"name": "ns", "image": "nginx", "spec": {"namespace": "kube-system"}}),
            "spec.namespace",
        ),
        (
            json!({"name": "reserved", "image": "nginx", "policies": [{"name": "kubenova-gc", "type": "garbage-collect"}]}),
            "policies[0].name",
        ),
    ];
    for (body, field) in cases {
        let r = t.post(&apps, &dev, body.clone()).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "KN-422"),
            "{body}: {}",
            r.text
        );
        assert_eq!(
            r.body["details"]["violations"][0]["field"], field,
            "{}",
            r.text
        );
    }
    let l = t.get(&apps, &dev).await;
    assert_eq!(l.body["items"], json!([]), "nothing was stored");

    // The same through PUT …/traits, PUT …/policies and PUT of the app: refused, the app
    // unchanged.
    let app = t.app(&purl, "web", "nginx:1.27").await;
    for (method_uri, body, field) in [
        (
            format!("{app}/traits"),
            json!([{"type": "json-patch", "properties": {"operations": []}}]),
            "traits[0].type",
        ),
        (
            format!("{app}/policies"),
            json!([{"name": "t", "type": "take-over"}]),
            "policies[0].type",
        ),
        (
            app.clone(),
            json!({"components": [{"name": "web", "type": "raw", "properties": {}}]}),
            "components[0].type",
        ),
    ] {
        let r = t.put(&method_uri, &dev, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(
            r.body["details"]["violations"][0]["field"], field,
            "{}",
            r.text
        );
    }
    let g = t.get(&app, &dev).await;
    assert_eq!(g.body["revision"], 1);
}

/// Images come from the registries the tenant's policysets allow, and the check follows
/// the tenant's policysets as they are now (deploy and rollback re-check).
#[tokio::test]
async fn images_follow_the_tenants_registry_policy() {
    let t = T::new().await;
    let (_, purl) = t.project(t.tenant_a, "web").await;
    // Tenant a has no registry rule: any well-formed image is accepted.
    let app = t.app(&purl, "web", "registry.evil.io/miner:1").await;
    // The platform puts the tenant under the built-in registry allow-list.
    let tenant_url = format!("/api/v1/clusters/{}/tenants/{}", t.cluster, t.tenant_a);
    let r = t
        .put(
            &format!("{tenant_url}/network-policies"),
            &t.admin,
            json!({"policies": ["tenant-isolation", "baseline-security"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Deploying the existing revision is now refused, naming the image.
    let r = t.post(&format!("{app}:deploy"), &t.admin, json!({})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["details"]["violations"][0]["field"], "image");
    assert!(
        r.text.contains("registry.evil.io/miner") && r.text.contains("baseline-security"),
        "{}",
        r.text
    );
    // A new app from an allowed registry is fine; one from elsewhere is not, wherever
    // the image is named.
    t.app(&purl, "ok", "ghcr.io/acme/web:2").await;
    let r = t
        .post(
            &format!("{purl}/apps"),
            &t.admin,
            json!({"name": "side", "components": [{"name": "side", "type": "webservice", "properties": {"image": "nginx"},
                   "traits": [{"type": "sidecar", "properties": {"name": "s", "image": "evil.example.com/s"}}]}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(
        r.body["details"]["violations"][0]["field"],
        "components[0].traits[0].properties.image"
    );
}
