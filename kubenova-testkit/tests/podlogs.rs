//! `pods/log` through the real `kube::Client` over HTTPS: logs given by the Pod's
//! annotations, the query parameters, the API server's refusals, and following a log.
#![allow(clippy::unwrap_used, missing_docs)]

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use kubenova_testkit::podlogs::{LOG_ANNOTATION_PREFIX, PREVIOUS_LOG_ANNOTATION_PREFIX};
use kubenova_testkit::{Fault, TestCluster};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn api_err(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn ago(seconds: i64) -> String {
    (OffsetDateTime::now_utc() - time::Duration::seconds(seconds))
        .format(&Rfc3339)
        .unwrap()
}

async fn setup() -> (TestCluster, Api<Pod>) {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap(),
        )
        .await
        .unwrap();
    (cluster, Api::namespaced(client, "shop"))
}

async fn pod(pods: &Api<Pod>, name: &str, containers: &[&str], annotations: serde_json::Value) {
    let containers: Vec<_> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "nginx:1.27"}))
        .collect();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": containers},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn logs_come_from_the_pods_annotations() {
    let (cluster, pods) = setup().await;
    let old = ago(600);
    let recent = ago(5);
    pod(
        &pods,
        "web-1",
        &["web"],
        json!({
            format!("{LOG_ANNOTATION_PREFIX}web"): format!("{old} starting\n{old} ready\n{recent} GET /healthz 200\n"),
            format!("{PREVIOUS_LOG_ANNOTATION_PREFIX}web"): "panic: out of memory\n",
        }),
    )
    .await;

    // The only container is the default one.
    let all = pods.logs("web-1", &LogParams::default()).await.unwrap();
    assert_eq!(all, "starting\nready\nGET /healthz 200\n");
    let tail = LogParams {
        tail_lines: Some(2),
        ..LogParams::default()
    };
    assert_eq!(
        pods.logs("web-1", &tail).await.unwrap(),
        "ready\nGET /healthz 200\n"
    );
    let since = LogParams {
        since_seconds: Some(60),
        ..LogParams::default()
    };
    assert_eq!(
        pods.logs("web-1", &since).await.unwrap(),
        "GET /healthz 200\n"
    );
    let stamped = LogParams {
        tail_lines: Some(1),
        timestamps: true,
        container: Some("web".into()),
        ..LogParams::default()
    };
    assert_eq!(
        pods.logs("web-1", &stamped).await.unwrap(),
        format!("{recent} GET /healthz 200\n")
    );
    let limited = LogParams {
        limit_bytes: Some(12),
        ..LogParams::default()
    };
    assert_eq!(pods.logs("web-1", &limited).await.unwrap(), "starting\nrea");
    let previous = LogParams {
        previous: true,
        ..LogParams::default()
    };
    assert_eq!(
        pods.logs("web-1", &previous).await.unwrap(),
        "panic: out of memory\n"
    );

    // What the API server refuses.
    let bad = |lp: LogParams, name: &'static str| {
        let pods = pods.clone();
        async move { api_err(pods.logs(name, &lp).await.unwrap_err()) }
    };
    let e = bad(
        LogParams {
            container: Some("db".into()),
            ..LogParams::default()
        },
        "web-1",
    )
    .await;
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "container db is not valid for pod web-1")
    );
    let e = bad(LogParams::default(), "nope").await;
    assert_eq!(e.code, 404);
    pod(&pods, "two", &["web", "proxy"], json!({})).await;
    let e = bad(LogParams::default(), "two").await;
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains("choose one of: [web proxy]"),
        "{}",
        e.message
    );
    let e = bad(previous.clone(), "two").await;
    assert_eq!(e.code, 400);
    let e = bad(
        LogParams {
            container: Some("proxy".into()),
            previous: true,
            ..LogParams::default()
        },
        "two",
    )
    .await;
    assert_eq!(
        e.message,
        "previous terminated container \"proxy\" in pod \"two\" not found"
    );
    // A container without a log has an empty one.
    let proxy = LogParams {
        container: Some("proxy".into()),
        ..LogParams::default()
    };
    assert_eq!(pods.logs("two", &proxy).await.unwrap(), "");

    // Faults and counters see pods/log like any subresource.
    let before = cluster.faults().counts();
    cluster
        .faults()
        .inject(Fault::verb("get").resource("pods/log").times(1).status(500));
    assert_eq!(
        api_err(pods.logs("web-1", &LogParams::default()).await.unwrap_err()).code,
        500
    );
    pods.logs("web-1", &LogParams::default()).await.unwrap();
    assert_eq!(
        cluster
            .faults()
            .counts()
            .since(&before)
            .get("get", "pods/log"),
        2
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn followers_get_appended_lines_until_the_container_stops() {
    let (cluster, pods) = setup().await;
    let key = format!("{LOG_ANNOTATION_PREFIX}web");
    pod(&pods, "web-1", &["web"], json!({key.clone(): "one\ntwo\n"})).await;
    let follow = LogParams {
        follow: true,
        tail_lines: Some(1),
        ..LogParams::default()
    };
    let mut lines = pods.log_stream("web-1", &follow).await.unwrap().lines();
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("two"));

    // The container writes more: the annotation grows.
    let append = |text: &'static str| {
        let pods = pods.clone();
        let key = key.clone();
        async move {
            pods.patch(
                "web-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {key: text}}})),
            )
            .await
            .unwrap();
        }
    };
    append("one\ntwo\nthree\n").await;
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("three"));
    append("one\ntwo\nthree\nfour\nfive\n").await;
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("four"));
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("five"));

    // The container terminates: the stream ends.
    pods.patch_status(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"containerStatuses": [
            {"name": "web", "ready": false, "restartCount": 0, "image": "nginx:1.27", "imageID": "",
             "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}})),
    )
    .await
    .unwrap();
    assert_eq!(lines.try_next().await.unwrap(), None);

    // A deleted pod ends its followers too.
    pod(&pods, "web-2", &["web"], json!({key.clone(): "hello\n"})).await;
    let mut lines = pods.log_stream("web-2", &follow).await.unwrap().lines();
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("hello"));
    pods.delete("web-2", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(lines.try_next().await.unwrap(), None);
    cluster.shutdown().await;
}
