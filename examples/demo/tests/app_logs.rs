//! An app's logs and events through the three real binaries (`kubenova-testkit serve`,
//! `kubenova-manager serve` on Postgres, or SQLite when Postgres is not configured, and
//! the bootstrapped `kubenova-operator`): a developer of the app's project reads its logs
//! (JSON and `text/plain`) and events through the manager, follows its log as server-sent
//! events while the container writes, and another tenant's owner gets KN-404. The pods and
//! Events are created in the project namespace as KubeVela and the kubelet would (the
//! testkit runs nothing); container logs come from the testkit's Pod annotations.
//!
//! The binaries are found next to this test (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{database, drop_database};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubenova_demo::Rest;
use kubenova_demo::flow::{Flow, STEP_TIMEOUT, create_tenancy};
use serde_json::{Value, json};

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
async fn a_developer_reads_and_follows_logs_and_events() {
    let Some(bins) = common::binaries() else {
        return;
    };
    let (url, pg) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut flow = Flow::start(bins, dir.path(), &url).await.unwrap();
    let result = tokio::spawn(async move {
        let r = steps(&mut flow).await;
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

/// Reads server-sent events from a streaming response.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    /// The next event (name and JSON data), skipping keep-alive comments.
    async fn next(&mut self) -> anyhow::Result<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for l in block.lines() {
                    if let Some(e) = l.strip_prefix("event:") {
                        event = e.trim().to_string();
                    } else if let Some(d) = l.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if !event.is_empty() {
                    return Ok((event, serde_json::from_str(&data)?));
                }
                continue;
            }
            let chunk = tokio::time::timeout(STEP_TIMEOUT, self.resp.chunk())
                .await
                .map_err(|_| anyhow::anyhow!("no event within {STEP_TIMEOUT:?}"))??
                .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn steps(flow: &mut Flow) -> anyhow::Result<()> {
    flow.bootstrap().await?;
    flow.start_operator().await?;
    flow.wait_cluster_status("connected", STEP_TIMEOUT).await?;
    flow.install_components().await?;
    let acme = create_tenancy(flow, "acme").await?;
    let beta = create_tenancy(flow, "beta").await?;
    flow.wait_phase(&acme.app_path, "ready").await?;
    let project = flow.api().get(&acme.project_path).await?;
    let ns = project["namespace"].as_str().unwrap().to_string();

    // The app's pod and an event about it, as KubeVela's Deployment and the kubelet would
    // make them; the container's log is the testkit's annotation.
    let k = flow.testkit.client.clone();
    let pods: Api<Pod> = Api::namespaced(k.clone(), &ns);
    let log_key = "logs.testkit.kubenova.io/site";
    let first_log = "2026-01-01T00:00:01Z starting nginx\n2026-01-01T00:00:02Z listening on :80\n";
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "site-5d9f8c7b6-x2x7q",
                "labels": {"app.oam.dev/name": "site", "app.oam.dev/component": "site"},
                "annotations": {log_key: first_log}},
            "spec": {"containers": [{"name": "site", "image": "nginx:1.27"}]},
        }))?,
    )
    .await?;
    let events: Api<Event> = Api::namespaced(k.clone(), &ns);
    events
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "site-5d9f8c7b6-x2x7q.backoff"},
                "involvedObject": {"kind": "Pod", "name": "site-5d9f8c7b6-x2x7q", "namespace": ns},
                "reason": "BackOff", "type": "Warning", "count": 3,
                "message": "Back-off restarting failed container site in pod site-5d9f8c7b6-x2x7q",
                "lastTimestamp": "2026-01-01T00:03:00Z", "source": {"component": "kubelet"},
            }))?,
        )
        .await?;

    let dev_token = token(
        flow,
        "dev@acme.example",
        &["projectDev"],
        &[],
        &[id_of(&acme.project_path)],
    )
    .await;
    let dev = Rest::new(&flow.manager.url, &dev_token);
    let logs = format!("{}/logs/site", acme.app_path);

    // JSON.
    let got = dev.get(&logs).await?;
    let texts: Vec<&str> = got["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["starting nginx", "listening on :80"], "{got}");
    assert_eq!(got["pods"][0]["pod"], "site-5d9f8c7b6-x2x7q");
    assert_eq!(got["lines"][1]["time"], "2026-01-01T00:00:02Z");
    // text/plain, with a tail.
    let http = reqwest::Client::new();
    let text = http
        .get(format!("{}{logs}?tailLines=1", flow.manager.url))
        .bearer_auth(&dev_token)
        .header("accept", "text/plain")
        .send()
        .await?;
    assert_eq!(text.status(), 200);
    assert_eq!(text.text().await?, "listening on :80\n");
    // Events.
    let got = dev.get(&format!("{}/events", acme.app_path)).await?;
    let reasons: Vec<&str> = got["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"BackOff"), "{got}");

    // Followed: the tail, then what the container writes, as server-sent events.
    let resp = http
        .get(format!(
            "{}{logs}?follow=true&tailLines=1",
            flow.manager.url
        ))
        .bearer_auth(&dev_token)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = Events {
        resp,
        buf: String::new(),
    };
    let (event, data) = stream.next().await?;
    assert_eq!(event, "pods", "{data}");
    let (event, data) = stream.next().await?;
    assert_eq!(
        (event.as_str(), &data["text"]),
        ("line", &json!("listening on :80"))
    );
    pods.patch(
        "site-5d9f8c7b6-x2x7q",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            log_key: format!("{first_log}2026-01-01T00:00:03Z GET / 200\n")}}})),
    )
    .await?;
    let (event, data) = stream.next().await?;
    assert_eq!(
        (event.as_str(), &data["text"]),
        ("line", &json!("GET / 200"))
    );
    // The client leaves; the follow ends on both sides.
    drop(stream);

    // Another tenant's owner: KN-404, as for the app itself.
    let beta_owner = Rest::new(
        &flow.manager.url,
        &token(
            flow,
            "owner@beta.example",
            &["tenantOwner"],
            &[id_of(&beta.tenant_path)],
            &[],
        )
        .await,
    );
    for path in [logs.clone(), format!("{}/events", acme.app_path)] {
        let (status, body) = beta_owner.call("GET", &path, None).await?;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["code"], "KN-404");
    }
    // A developer of the other project of the same names in beta: KN-404 too.
    let beta_dev = Rest::new(
        &flow.manager.url,
        &token(
            flow,
            "dev@beta.example",
            &["projectDev"],
            &[],
            &[id_of(&beta.project_path)],
        )
        .await,
    );
    let (status, _) = beta_dev.call("GET", &logs, None).await?;
    assert_eq!(status, 404);

    // After the follow, reading works as before.
    let got = dev.get(&format!("{logs}?tailLines=1")).await?;
    assert_eq!(got["lines"][0]["text"], "GET / 200", "{got}");
    Ok(())
}
