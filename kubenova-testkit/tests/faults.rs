//! Fault injection and request counters through the real `kube::Client` over HTTPS.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubenova_testkit::{Fault, TestCluster};
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

#[tokio::test]
async fn failed_requests_change_nothing_and_are_counted() {
    let cluster = TestCluster::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().unwrap(), "default");
    let before = cluster.faults().counts();
    cluster.faults().inject(
        Fault::verb("create")
            .resource("configmaps")
            .times(2)
            .status(500),
    );
    for _ in 0..2 {
        match cms.create(&PostParams::default(), &cm("a")).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
                assert!(s.message.contains("injected fault"), "{}", s.message);
            }
            other => panic!("expected a 500, got {other:?}"),
        }
        assert!(cms.get_opt("a").await.unwrap().is_none(), "nothing stored");
    }
    // The rule is spent.
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    assert_eq!(cluster.faults().injected(), 2);
    assert_eq!(cluster.faults().active(), 0);
    let used = cluster.faults().counts().since(&before);
    assert_eq!(used.get("create", "configmaps"), 3);
    assert_eq!(used.get("get", "configmaps"), 2);
    assert_eq!(used.writes(), 3);
    assert_eq!(used.total, 5);
    cluster.shutdown().await;
}

#[tokio::test]
async fn writes_rejected_for_a_while_reads_still_work() {
    let cluster = TestCluster::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().unwrap(), "default");
    cms.create(&PostParams::default(), &cm("b")).await.unwrap();
    cluster.faults().inject(
        Fault::writes()
            .for_duration(Duration::from_millis(300))
            .status(500),
    );
    let patch = Patch::Merge(json!({"data": {"k": "w"}}));
    let err = cms.patch("b", &PatchParams::default(), &patch).await;
    assert!(matches!(err, Err(kube::Error::Api(s)) if s.code == 500));
    assert_eq!(cms.get("b").await.unwrap().data.unwrap()["k"], "v");
    tokio::time::sleep(Duration::from_millis(350)).await;
    cms.patch("b", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(cms.get("b").await.unwrap().data.unwrap()["k"], "w");
    cluster.shutdown().await;
}

/// kube's default client retries 429/503/504 by itself (honouring `Retry-After`), so a
/// short burst of 429s is invisible to the caller, except for the time it takes.
#[tokio::test]
async fn too_many_requests_carries_retry_after_and_is_retried_by_kube() {
    let cluster = TestCluster::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().unwrap(), "default");
    cluster.faults().inject(
        Fault::verb("get")
            .resource("configmaps")
            .name("c")
            .times(1)
            .status(429)
            .retry_after(1),
    );
    let start = Instant::now();
    assert!(cms.get_opt("c").await.unwrap().is_none());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    assert_eq!(cluster.faults().injected(), 1);
    assert_eq!(cluster.faults().counts().get("get", "configmaps"), 2);
    cluster.shutdown().await;
}
