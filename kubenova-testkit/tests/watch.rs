//! Watch semantics (resume, 410 Expired, bookmarks, lagging watchers) and kube::runtime
//! (watcher, reflector, Controller with the finalizer helper, Lease-based leader election).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use kubenova_testkit::TestCluster;
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn watch_events_resume_and_bookmarks() {
    let cluster = TestCluster::builder()
        .bookmark_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv0 = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "w"}})),
    )
    .await
    .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();

    // Resume from rv0: the whole history is replayed in order.
    let wp = WatchParams::default().timeout(5).disable_bookmarks();
    let mut stream = cms.watch(&wp, &rv0).await.unwrap().boxed();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);

    // Bookmarks arrive when allowed.
    let wp = WatchParams::default().timeout(5);
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    let ev = tokio::time::timeout(Duration::from_secs(3), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, WatchEvent::Bookmark(_)), "{ev:?}");

    // Label-selected watch only sees matching objects.
    let wp = WatchParams::default()
        .timeout(5)
        .labels("pick=yes")
        .disable_bookmarks();
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    cms.create(&PostParams::default(), &cm("skip"))
        .await
        .unwrap();
    let mut picked = cm("picked");
    picked.metadata.labels = Some([("pick".to_owned(), "yes".to_owned())].into());
    cms.create(&PostParams::default(), &picked).await.unwrap();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "picked"),
        other => panic!("unexpected {other:?}"),
    }
    // Starting to match is ADDED, ceasing to match is DELETED (as the real watch cache does).
    let label = |v: serde_json::Value| Patch::Merge(json!({"metadata": {"labels": {"pick": v}}}));
    cms.patch("skip", &PatchParams::default(), &label(json!("yes")))
        .await
        .unwrap();
    cms.patch("skip", &PatchParams::default(), &label(json!(null)))
        .await
        .unwrap();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "skip"),
        other => panic!("unexpected {other:?}"),
    }
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Deleted(o) => assert_eq!(o.name_any(), "skip"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn compacted_history_gives_410() {
    let cluster = TestCluster::builder()
        .event_history(5)
        .start()
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms.create(&PostParams::default(), &cm("c0")).await.unwrap();
    for i in 1..20 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}")))
            .await
            .unwrap();
    }
    let old_rv = first.metadata.resource_version.unwrap();
    let mut stream = cms
        .watch(
            &WatchParams::default().timeout(5).disable_bookmarks(),
            &old_rv,
        )
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // A continue token older than the history is also Expired.
    let page = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let token = page.metadata.continue_.unwrap();
    for i in 20..30 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}")))
            .await
            .unwrap();
    }
    let err = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("{other:?}"),
    }
    // kube's watcher recovers from 410 by relisting.
    let (reader, writer) = reflector::store::<ConfigMap>();
    let rf = reflector(writer, watcher(cms.clone(), watcher::Config::default()));
    let task = tokio::spawn(rf.applied_objects().for_each(|_| async {}));
    eventually("reflector to list 30 configmaps", || {
        let r = reader.clone();
        async move { r.state().len() == 30 }
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn lagging_watcher_is_expired() {
    let cluster = TestCluster::builder()
        .watch_buffer(16)
        .start()
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(30).disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    // Large objects so socket buffers cannot absorb the backlog while we do not read.
    let big = "x".repeat(200_000);
    for i in 0..150 {
        let mut c = cm(&format!("big{i}"));
        c.data = Some([("blob".to_owned(), big.clone())].into());
        cms.create(&PostParams::default(), &c).await.unwrap();
    }
    let mut saw_410 = false;
    while let Ok(Ok(Some(ev))) =
        tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await
    {
        if let WatchEvent::Error(e) = ev {
            assert_eq!(e.code, 410);
            saw_410 = true;
            break;
        }
    }
    assert!(saw_410, "a lagging watcher must get 410 Expired");
}

#[derive(Clone)]
struct Ctx {
    client: Client,
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

async fn reconcile(
    obj: Arc<ConfigMap>,
    ctx: Arc<Ctx>,
) -> Result<Action, kube::runtime::finalizer::Error<ReconcileError>> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap());
    let api2 = api.clone();
    finalizer(
        &api,
        "testkit.kubenova.io/cleanup",
        obj,
        |event| async move {
            match event {
                FinalizerEvent::Apply(o) => {
                    let patch = json!({"metadata": {"annotations": {"reconciled": "yes"}}});
                    api2.patch(&o.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                        .await?;
                    Ok(Action::await_change())
                }
                FinalizerEvent::Cleanup(_) => Ok(Action::await_change()),
            }
        },
    )
    .await
}

fn error_policy(
    _: Arc<ConfigMap>,
    _: &kube::runtime::finalizer::Error<ReconcileError>,
    _: Arc<Ctx>,
) -> Action {
    Action::requeue(Duration::from_millis(100))
}

#[tokio::test]
async fn controller_with_finalizer_helper() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    let ctrl = tokio::spawn(
        Controller::new(cms.clone(), watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {}),
    );
    cms.create(&PostParams::default(), &cm("managed"))
        .await
        .unwrap();
    eventually("finalizer + annotation", || {
        let cms = cms.clone();
        async move {
            let o = cms.get("managed").await.unwrap();
            o.finalizers()
                .iter()
                .any(|f| f == "testkit.kubenova.io/cleanup")
                && o.annotations().get("reconciled").map(String::as_str) == Some("yes")
        }
    })
    .await;
    cms.delete("managed", &DeleteParams::default())
        .await
        .unwrap();
    eventually("object removed after finalizer cleanup", || {
        let cms = cms.clone();
        async move { cms.get_opt("managed").await.unwrap().is_none() }
    })
    .await;
    ctrl.abort();
}

#[tokio::test]
async fn lease_leader_election_conflicts() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = |holder: &str| -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "kubenova-operator"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}
        }))
        .unwrap()
    };
    let won = leases
        .create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    // The second candidate loses the create race.
    match leases
        .create(&PostParams::default(), &lease("b"))
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => assert_eq!(s.reason, "AlreadyExists"),
        other => panic!("{other:?}"),
    }
    // Both try to take over with the same resourceVersion: exactly one wins.
    let mut for_a = won.clone();
    for_a.spec.as_mut().unwrap().lease_transitions = Some(1);
    let mut for_b = won.clone();
    for_b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("kubenova-operator", &PostParams::default(), &for_b)
        .await
        .unwrap();
    match leases
        .replace("kubenova-operator", &PostParams::default(), &for_a)
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("{other:?}"),
    }
    let now = leases.get("kubenova-operator").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("b"));
}

#[tokio::test]
async fn streaming_list_watcher() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("s{i}")))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store::<ConfigMap>();
    let cfg = watcher::Config::default().streaming_lists();
    let rf = reflector(writer, watcher(cms.clone(), cfg));
    let task = tokio::spawn(rf.applied_objects().for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    assert_eq!(reader.state().len(), 5);
    cms.create(&PostParams::default(), &cm("s5")).await.unwrap();
    eventually("streamed update", || {
        let r = reader.clone();
        async move { r.state().len() == 6 }
    })
    .await;
    task.abort();
}
