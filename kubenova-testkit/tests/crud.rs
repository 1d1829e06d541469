//! CRUD, selectors, pagination, patches, status/generation, finalizers, GC and error shapes
//! through the real `kube::Client` over HTTPS.
#![allow(clippy::unwrap_used, missing_docs)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::core::Status;
use kube::{Client, Discovery};
use kubenova_testkit::TestCluster;
use serde_json::json;

fn api_err(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

trait IntoErr {
    fn api_error(self) -> Status;
}

impl<T: std::fmt::Debug> IntoErr for Result<T, kube::Error> {
    fn api_error(self) -> Status {
        api_err(self.expect_err("expected an error"))
    }
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}
    }))
    .unwrap()
}

async fn ns(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &n).await.unwrap();
}

#[tokio::test]
async fn crud_roundtrip_and_errors() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    ns(&client, "team-a").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    let created = cms
        .create(&PostParams::default(), &cm("one", json!({"app": "x"})))
        .await
        .unwrap();
    let md = &created.metadata;
    assert!(md.uid.is_some() && md.creation_timestamp.is_some());
    assert_eq!(md.generation, Some(1));
    let rv1 = md.resource_version.clone().unwrap();

    // AlreadyExists
    let e = cms
        .create(&PostParams::default(), &cm("one", json!({})))
        .await
        .api_error();
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    // get + replace with stale rv -> Conflict; nothing changed.
    let mut got = cms.get("one").await.unwrap();
    got.data = Some([("k".to_owned(), "w".to_owned())].into());
    let updated = cms
        .replace("one", &PostParams::default(), &got)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    let e = cms
        .replace("one", &PostParams::default(), &got)
        .await
        .api_error();
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert_eq!(cms.get("one").await.unwrap().data.unwrap()["k"], "w");

    // NotFound with details.
    let e = cms.get("missing").await.api_error();
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.message, "configmaps \"missing\" not found");

    // Namespace must exist.
    let nope: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let e = nope
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .api_error();
    assert_eq!(e.code, 404);
    assert!(
        e.message.contains("namespaces \"nope\" not found"),
        "{}",
        e.message
    );

    // generateName
    let mut g = cm("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let gen_obj = cms.create(&PostParams::default(), &g).await.unwrap();
    assert!(gen_obj.metadata.name.unwrap().starts_with("gen-"));

    // Invalid name -> 422 with cause on metadata.name
    let e = cms
        .create(&PostParams::default(), &cm("Bad_Name", json!({})))
        .await
        .api_error();
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));

    // Unknown metadata fields are rejected too.
    let req = http::Request::post("/api/v1/namespaces/team-a/configmaps")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m", "labelz": {}}})).unwrap())
        .unwrap();
    let e = client.request::<serde_json::Value>(req).await.api_error();
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    assert!(e.message.contains("metadata.labelz"), "{}", e.message);

    // dryRun creates nothing.
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    cms.create(&pp, &cm("dry", json!({}))).await.unwrap();
    assert_eq!(cms.get_opt("dry").await.unwrap(), None);

    // delete
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("one").await.unwrap().is_none());
    cluster.shutdown().await;
}

#[tokio::test]
async fn raw_http_errors_are_status_objects() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    // Malformed JSON -> 400 BadRequest Status.
    let req = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap();
    let e = client.request::<serde_json::Value>(req).await.api_error();
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    // Unknown resource -> 404.
    let req = http::Request::get("/apis/example.com/v1/widgets")
        .body(vec![])
        .unwrap();
    let e = client.request::<serde_json::Value>(req).await.api_error();
    assert_eq!(e.code, 404);
    // Unsupported patch type on a CRD-less builtin path with a bogus content type -> 415.
    let req = http::Request::patch("/api/v1/namespaces/default")
        .header("content-type", "text/plain")
        .body(b"x".to_vec())
        .unwrap();
    let e = client.request::<serde_json::Value>(req).await.api_error();
    assert_eq!((e.code, e.reason.as_str()), (415, "UnsupportedMediaType"));
    // Method not allowed.
    let req = http::Request::put("/api/v1/namespaces/default/configmaps")
        .body(b"{}".to_vec())
        .unwrap();
    let e = client.request::<serde_json::Value>(req).await.api_error();
    assert_eq!((e.code, e.reason.as_str()), (405, "MethodNotAllowed"));
    // No token -> 401.
    let anon = cluster.client_with_token("garbage").unwrap();
    let e = Api::<Namespace>::all(anon)
        .list(&ListParams::default())
        .await
        .api_error();
    assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));
}

#[tokio::test]
async fn selectors_and_pagination() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    ns(&client, "sel").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "sel");
    for i in 0..10 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        let labels = if i == 9 {
            json!({"tier": tier})
        } else {
            json!({"tier": tier, "env": format!("e{}", i % 3)})
        };
        cms.create(&PostParams::default(), &cm(&format!("cm-{i}"), labels))
            .await
            .unwrap();
    }
    let count = |lp: ListParams| {
        let cms = cms.clone();
        async move { cms.list(&lp).await.unwrap().items.len() }
    };
    assert_eq!(count(ListParams::default().labels("tier=web")).await, 5);
    assert_eq!(count(ListParams::default().labels("tier!=web")).await, 5);
    assert_eq!(
        count(ListParams::default().labels("env in (e0,e1)")).await,
        6
    );
    assert_eq!(
        count(ListParams::default().labels("env notin (e0)")).await,
        7
    );
    assert_eq!(count(ListParams::default().labels("env")).await, 9);
    assert_eq!(count(ListParams::default().labels("!env")).await, 1);
    assert_eq!(
        count(ListParams::default().labels("tier=web,env=e0")).await,
        2
    );
    assert_eq!(
        count(ListParams::default().fields("metadata.name=cm-3")).await,
        1
    );
    assert_eq!(
        count(ListParams::default().fields("metadata.name!=cm-3")).await,
        9
    );
    let e = cms
        .list(&ListParams::default().fields("spec.foo=1"))
        .await
        .api_error();
    assert_eq!(e.code, 400);

    // Pagination.
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = cms.list(&lp).await.unwrap();
        assert!(page.items.len() <= 3);
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names.len(), 10);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 10);

    // Cluster-wide list.
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        10
    );
}

#[tokio::test]
async fn merge_json_patch_and_ssa() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("p", json!({})))
        .await
        .unwrap();
    let out = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "1", "k": null}})),
        )
        .await
        .unwrap();
    let data = out.data.unwrap();
    assert_eq!(data.get("a").map(String::as_str), Some("1"));
    assert!(!data.contains_key("k"));
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/a", "value": "3"}
    ]))
    .unwrap();
    let out = cms
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(out.data.unwrap()["a"], "3");
    // A patch that does not apply -> error, nothing changes.
    let bad: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/data/zzz"}])).unwrap();
    let before = cms.get("p").await.unwrap();
    let e = cms
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(bad))
        .await
        .api_error();
    assert_eq!(e.code, 422);
    let test_fail: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/a", "value": "nope"}]))
            .unwrap();
    assert!(
        cms.patch("p", &PatchParams::default(), &Patch::<()>::Json(test_fail))
            .await
            .is_err()
    );
    assert_eq!(
        cms.get("p").await.unwrap().metadata.resource_version,
        before.metadata.resource_version
    );

    // Server-side apply: create, ownership, conflict, force.
    let ssa = |mgr: &str, force: bool| {
        let mut pp = PatchParams::apply(mgr);
        pp.force = force;
        pp
    };
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"owned": "alice"}});
    let out = cms
        .patch("s", &ssa("alice", false), &Patch::Apply(&applied))
        .await
        .unwrap();
    let mf = out.metadata.managed_fields.unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let bob = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"owned": "bob"}});
    let e = cms
        .patch("s", &ssa("bob", false), &Patch::Apply(&bob))
        .await
        .api_error();
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("conflict with \"alice\""),
        "{}",
        e.message
    );
    assert_eq!(cms.get("s").await.unwrap().data.unwrap()["owned"], "alice");
    let out = cms
        .patch("s", &ssa("bob", true), &Patch::Apply(&bob))
        .await
        .unwrap();
    assert_eq!(out.data.unwrap()["owned"], "bob");
    let managers: Vec<String> = out
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["bob".to_owned()]);
    // Apply without fieldManager is rejected.
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps/s")
        .header("content-type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&bob).unwrap())
        .unwrap();
    assert_eq!(
        client
            .request::<serde_json::Value>(req)
            .await
            .api_error()
            .code,
        422
    );
    // Apply bodies in YAML proper: block style, and a flow mapping that is not JSON.
    for (name, body) in [
        (
            "y1",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y1\ndata:\n  enabled: \"on\"\n",
        ),
        (
            "y2",
            "{apiVersion: v1, kind: ConfigMap, metadata: {name: y2}, data: {enabled: \"on\"}}",
        ),
    ] {
        let req = http::Request::patch(format!(
            "/api/v1/namespaces/default/configmaps/{name}?fieldManager=yaml"
        ))
        .header("content-type", "application/apply-patch+yaml")
        .body(body.as_bytes().to_vec())
        .unwrap();
        let got: serde_json::Value = client.request(req).await.unwrap();
        assert_eq!(got["data"]["enabled"], "on", "{name}");
    }
    // Update-operation ownership then apply conflict against it.
    let upd = cms
        .patch(
            "s",
            &PatchParams {
                field_manager: Some("editor".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"owned": "editor"}})),
        )
        .await
        .unwrap();
    assert!(
        upd.metadata
            .managed_fields
            .unwrap()
            .iter()
            .any(|m| m.manager.as_deref() == Some("editor"))
    );
    let e = cms
        .patch("s", &ssa("bob", false), &Patch::Apply(&bob))
        .await
        .api_error();
    assert!(e.message.contains("editor"), "{}", e.message);
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
        "status": {"replicas": 99}
    }))
    .unwrap();
    let created = deps.create(&PostParams::default(), &d).await.unwrap();
    assert!(created.status.is_none(), "status is dropped on create");
    assert_eq!(created.metadata.generation, Some(1));
    // Metadata-only change: no generation bump.
    let out = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(out.metadata.generation, Some(1));
    // Status write through main resource is ignored.
    let out = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert!(out.status.is_none());
    // Status subresource changes only status, no generation bump.
    let out = deps
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"replicas": 7}, "status": {"replicas": 1, "readyReplicas": 1}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(out.status.unwrap().ready_replicas, Some(1));
    assert_eq!(out.spec.unwrap().replicas, Some(1));
    assert_eq!(out.metadata.generation, Some(1));
    // Spec change bumps generation and keeps status.
    let out = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(out.metadata.generation, Some(2));
    assert_eq!(out.status.unwrap().ready_replicas, Some(1));
    // Builtin strict validation: unknown field -> 400 with causes, wrong type -> 422.
    let e = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicaz": 3}})),
        )
        .await
        .api_error();
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    assert!(
        e.message.contains("unknown field \"spec.replicaz\""),
        "{}",
        e.message
    );
    let e = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": "three"}})),
        )
        .await
        .api_error();
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let bad: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"a": "b"}}))
            .unwrap();
    secrets.create(&PostParams::default(), &bad).await.unwrap();
    let req = http::Request::post("/api/v1/namespaces/default/secrets")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}, "dataa": {}})).unwrap())
        .unwrap();
    let e = client.request::<serde_json::Value>(req).await.api_error();
    assert_eq!(e.code, 400);
}

#[tokio::test]
async fn finalizers_gc_and_namespace_deletion() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    ns(&client, "fin").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "fin");
    let mut f = cm("guarded", json!({}));
    f.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    cms.create(&PostParams::default(), &f).await.unwrap();
    cms.delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    let marked = cms.get("guarded").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    cms.patch(
        "guarded",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("guarded").await.unwrap().is_none());

    // Owner references: background GC and orphaning.
    let owner = cms
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await
        .unwrap();
    let oref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.clone().unwrap()}]);
    for n in ["dep1", "dep2"] {
        let mut d = cm(n, json!({}));
        d.metadata.owner_references = Some(serde_json::from_value(oref.clone()).unwrap());
        cms.create(&PostParams::default(), &d).await.unwrap();
    }
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("dep1").await.unwrap().is_none());
    assert!(cms.get_opt("dep2").await.unwrap().is_none());
    let owner = cms
        .create(&PostParams::default(), &cm("owner2", json!({})))
        .await
        .unwrap();
    let mut d = cm("orphan", json!({}));
    d.metadata.owner_references = Some(serde_json::from_value(json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.metadata.uid.unwrap()}])).unwrap());
    cms.create(&PostParams::default(), &d).await.unwrap();
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    cms.delete("owner2", &dp).await.unwrap();
    let orphan = cms.get("orphan").await.unwrap();
    assert!(
        orphan
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Namespace deletion removes its contents and then the namespace.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete("fin", &DeleteParams::default()).await.unwrap();
    assert!(nss.get_opt("fin").await.unwrap().is_none());
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert!(
        all.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn discovery_lists_builtins() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let d = Discovery::new(client.clone()).run().await.unwrap();
    let apps = d.get("apps").unwrap();
    let (ar, caps) = apps.recommended_kind("Deployment").unwrap();
    assert_eq!(ar.plural, "deployments");
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "deployments/status" || s.plural == "status")
    );
    assert!(d.get("coordination.k8s.io").is_some());
    assert!(d.get("rbac.authorization.k8s.io").is_some());
    let req = http::Request::get("/api/v1").body(vec![]).unwrap();
    let list: serde_json::Value = client.request(req).await.unwrap();
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for n in [
        "namespaces",
        "serviceaccounts",
        "serviceaccounts/token",
        "secrets",
        "configmaps",
        "pods",
        "namespaces/status",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
}

#[tokio::test]
async fn preconditions_dry_run_patch_and_delete_collection() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = cms
        .create(&PostParams::default(), &cm("a", json!({"grp": "x"})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("b", json!({"grp": "x"})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("c", json!({"grp": "y"})))
        .await
        .unwrap();
    // dryRun patch changes nothing.
    let pp = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let preview = cms
        .patch("a", &pp, &Patch::Merge(json!({"data": {"k": "dry"}})))
        .await
        .unwrap();
    assert_eq!(preview.data.unwrap()["k"], "dry");
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "v");
    // Delete preconditions.
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..Default::default()
    };
    let e = cms.delete("a", &dp).await.api_error();
    assert_eq!(e.code, 409);
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: None,
            uid: a.metadata.uid.clone(),
        }),
        ..Default::default()
    };
    cms.delete("a", &dp).await.unwrap();
    // deletecollection with a selector.
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("grp=x"),
    )
    .await
    .unwrap();
    let left: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(left, vec!["c".to_owned()]);
    // resourceVersion in a merge patch is an optimistic-concurrency precondition.
    let e = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"k": "z"}})),
        )
        .await
        .api_error();
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn server_side_apply_on_status_subresource() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                 "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    });
    let created = deps
        .patch("api", &PatchParams::apply("operator"), &Patch::Apply(&d))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let st = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"}, "status": {"readyReplicas": 2}});
    let out = deps
        .patch_status(
            "api",
            &PatchParams::apply("status-writer"),
            &Patch::Apply(&st),
        )
        .await
        .unwrap();
    assert_eq!(out.status.unwrap().ready_replicas, Some(2));
    let mf = out.metadata.managed_fields.unwrap();
    assert!(
        mf.iter()
            .any(|m| m.manager.as_deref() == Some("status-writer")
                && m.subresource.as_deref() == Some("status"))
    );
    // Re-applying the same config is a no-op (resourceVersion unchanged).
    let again = deps
        .patch("api", &PatchParams::apply("operator"), &Patch::Apply(&d))
        .await
        .unwrap();
    let rv_before = deps.get("api").await.unwrap().metadata.resource_version;
    assert_eq!(again.metadata.resource_version, rv_before);
}

/// ValidatingAdmissionPolicies and their bindings (`admissionregistration.k8s.io/v1`,
/// cluster-scoped) are stored and validated against the upstream strict definitions, like
/// the other built-ins. They are not enforced (no CEL runs here).
#[tokio::test]
async fn validating_admission_policies_are_stored_and_validated() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let d = Discovery::new(client.clone()).run().await.unwrap();
    let group = d.get("admissionregistration.k8s.io").unwrap();
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        let (ar, caps) = group.recommended_kind(kind).unwrap();
        assert_eq!(ar.version, "v1");
        assert_eq!(caps.scope, kube::discovery::Scope::Cluster, "{kind}");
    }

    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "demo"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["configmaps"]
            }]},
            "matchConditions": [{"name": "one-user", "expression": "request.userInfo.username == 'x'"}],
            "variables": [{"name": "n", "expression": "object.metadata.name"}],
            "validations": [{"expression": "variables.n != 'forbidden'", "message": "no", "reason": "Forbidden"}]
        }
    });
    let pp = PatchParams::apply("test");
    let out = policies
        .patch("demo", &pp, &Patch::Apply(&policy))
        .await
        .unwrap();
    assert_eq!(
        out.spec.unwrap().validations.unwrap()[0].expression,
        "variables.n != 'forbidden'"
    );
    // Strict: a misspelt field and a wrong type are refused.
    let mut bad = policy.clone();
    bad["spec"]["validations"][0]["expresion"] = json!("true");
    let e = policies
        .patch("demo", &pp, &Patch::Apply(&bad))
        .await
        .api_error();
    assert_eq!(e.code, 400, "{}", e.message);
    assert!(e.message.contains("expresion"), "{}", e.message);
    let mut bad = policy.clone();
    bad["spec"]["failurePolicy"] = json!(["Fail"]);
    assert_eq!(
        policies
            .patch("demo", &pp, &Patch::Apply(&bad))
            .await
            .api_error()
            .code,
        422
    );

    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "demo"},
        "spec": {"policyName": "demo", "validationActions": ["Deny"]}
    });
    bindings
        .patch("demo", &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
    let mut bad = binding.clone();
    bad["spec"]["validationAction"] = json!(["Deny"]);
    assert_eq!(
        bindings
            .patch("demo", &pp, &Patch::Apply(&bad))
            .await
            .api_error()
            .code,
        400
    );
    assert_eq!(
        bindings
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    cluster.shutdown().await;
}
