//! Traces across the agent channel, received by real OTLP receivers: the manager and the
//! operator (real processes) export over OTLP/HTTP, the `kubenova` CLI over OTLP/gRPC; the
//! receivers decode the export requests with the protocol's own types.
//!
//! One write (a tenant created with the caller's `traceparent`) must be one trace: the
//! manager's request and store spans, the operator's apply of the NovaTenant, its
//! reconcile and that reconcile's Kubernetes calls, with the status report linking back;
//! and no secret in any attribute.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{database, drop_database};
use kubenova_demo::flow::{Flow, STEP_TIMEOUT};
use kubenova_demo::wait_for;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received span with its resource's service name.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    span: opentelemetry_proto::tonic::trace::v1::Span,
}

impl Got {
    fn trace(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    fn id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .map(text)
    }
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Everything a receiver got: the spans, and every attribute (resource, span, event,
/// link) as `key=value` for the secret scan.
#[derive(Default)]
struct Received {
    spans: Vec<Got>,
    attributes: Vec<String>,
}

type Sink = Arc<Mutex<Received>>;

fn keep(into: &Sink, req: ExportTraceServiceRequest) {
    let mut r = into.lock().unwrap();
    let mut note = |kvs: &[KeyValue]| {
        for kv in kvs {
            let v = kv.value.as_ref().map(text).unwrap_or_default();
            r.attributes.push(format!("{}={v}", kv.key));
        }
    };
    let mut got = Vec::new();
    for rs in req.resource_spans {
        let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
        note(&attrs);
        let service = attrs
            .iter()
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                note(&s.attributes);
                for e in &s.events {
                    note(&e.attributes);
                }
                for l in &s.links {
                    note(&l.attributes);
                }
                got.push(Got {
                    service: service.clone(),
                    span: s,
                });
            }
        }
    }
    r.spans.extend(got);
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf); returns its base URL.
async fn http_receiver(sink: Sink) -> String {
    async fn export(State(sink): State<Sink>, body: Bytes) -> Result<Vec<u8>, String> {
        let req = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
        keep(&sink, req);
        Ok(ExportTraceServiceResponse::default().encode_to_vec())
    }
    let app = axum::Router::new()
        .route("/v1/traces", post(export))
        .with_state(sink);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

struct Grpc(Sink);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver; returns its URL.
async fn grpc_receiver(sink: Sink) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(sink)))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

fn spans_of(sink: &Sink, trace: &str) -> Vec<Got> {
    let r = sink.lock().unwrap();
    r.spans
        .iter()
        .filter(|g| g.trace() == trace)
        .cloned()
        .collect()
}

fn named<'a>(spans: &'a [Got], service: &str, name: &str) -> Option<&'a Got> {
    spans
        .iter()
        .find(|g| g.service == service && g.span.name == name)
}

/// Creates tenant `name` (plan gold) as part of the caller's trace `traceparent`; its id
/// and path.
async fn create_tenant(flow: &Flow, name: &str, traceparent: &str) -> (String, String) {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}{}",
            flow.manager.url,
            flow.cluster_path("/tenants")
        ))
        .bearer_auth(&flow.manager.token)
        .header("traceparent", traceparent)
        .json(&json!({"name": name, "plan": "gold", "owners": [format!("owner@{name}.example")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let tenant: serde_json::Value = resp.json().await.unwrap();
    let id = tenant["id"].as_str().unwrap().to_string();
    let path = flow.cluster_path(&format!("/tenants/{id}"));
    (id, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_is_one_trace_across_manager_and_operator() {
    let Some(bins) = common::binaries() else {
        return;
    };
    let cli = bins.manager.with_file_name("kubenova");
    let (db, pg) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let http_sink = Sink::default();
    let grpc_sink = Sink::default();
    let http = http_receiver(http_sink.clone()).await;
    let grpc = grpc_receiver(grpc_sink.clone()).await;
    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", http.clone()),
        // Export every 100 ms instead of 5 s, so the test does not wait.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let mut flow = Flow::start_with(bins, dir.path(), &db, otel).await.unwrap();
    flow.bootstrap().await.unwrap();
    flow.start_operator().await.unwrap();
    flow.wait_cluster_status("connected", STEP_TIMEOUT)
        .await
        .unwrap();

    // A first write: the agent's first answer is a snapshot of the whole desired state
    // (a young cluster's, so it carries the writes' traces too); later ones are deltas.
    let first_trace = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let first_tp = format!("00-{first_trace}-00f067aa0ba902b7-01");
    let (warmup_id, warmup_path) = create_tenant(&flow, "warmup", &first_tp).await;
    assert!(!warmup_id.is_empty());
    flow.wait_phase(&warmup_path, "ready").await.unwrap();

    // The write, as part of the caller's trace.
    let trace = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let caller = format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0);
    let (tenant_id, tenant_path) =
        create_tenant(&flow, "traced", &format!("00-{trace}-{caller}-01")).await;
    flow.wait_phase(&tenant_path, "ready").await.unwrap();

    // Wait until the operator's reconcile and its report's link have been exported.
    let spans = wait_for("the trace's spans", Duration::from_secs(30), || {
        let sink = http_sink.clone();
        let trace = trace.clone();
        async move {
            let spans = spans_of(&sink, &trace);
            let linked = sink.lock().unwrap().spans.iter().any(|g| {
                g.service == "kubenova-operator"
                    && g.span
                        .links
                        .iter()
                        .any(|l| hex::encode(&l.trace_id) == trace)
            });
            Ok((linked
                && named(&spans, "kubenova-operator", "reconcile NovaTenant").is_some()
                && named(&spans, "kubenova-operator", "agent apply NovaTenant").is_some())
            .then_some(spans))
        }
    })
    .await
    .unwrap_or_else(|e| {
        let r = http_sink.lock().unwrap();
        let ours: Vec<String> = r
            .spans
            .iter()
            .filter(|g| g.trace() == trace)
            .map(|g| format!("{} {} {} <- {}", g.service, g.span.name, g.id(), g.parent()))
            .collect();
        let mut names: Vec<String> = r
            .spans
            .iter()
            .map(|g| format!("{} {}", g.service, g.span.name))
            .collect();
        names.sort();
        names.dedup();
        panic!(
            "{e}\nthe trace: {ours:#?}\nall names: {names:#?}\n{}",
            flow.diagnostics()
        )
    });

    // The first write came through a snapshot, and its reconcile is in its trace too.
    let first = wait_for(
        "the first write's reconcile",
        Duration::from_secs(15),
        || {
            let sink = http_sink.clone();
            let first_trace = first_trace.clone();
            async move {
                let spans = spans_of(&sink, &first_trace);
                Ok(named(&spans, "kubenova-operator", "reconcile NovaTenant")
                    .is_some()
                    .then_some(spans))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        named(&first, "kubenova-operator", "reconcile NovaTenant")
            .unwrap()
            .attr("name")
            .as_deref(),
        Some("warmup")
    );

    // The manager's request span is the child of the caller's span.
    let route = "POST /api/v1/clusters/{clusterID}/tenants";
    let server = named(&spans, "kubenova-manager", route)
        .unwrap_or_else(|| panic!("no manager span {route:?} in {spans:#?}"));
    assert_eq!(server.parent(), caller);
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(server.attr("status").as_deref(), Some("201"));
    // The store call that wrote the tenant (and its desired-state revision) is its child.
    let store = named(&spans, "kubenova-manager", "store create_tenant").unwrap();
    assert_eq!(store.parent(), server.id());
    assert_eq!(
        store.attr("db.operation.name").as_deref(),
        Some("create_tenant")
    );
    // The operator continues the trace of that write: its apply and its reconcile.
    let apply = named(&spans, "kubenova-operator", "agent apply NovaTenant").unwrap();
    assert_eq!(apply.parent(), store.id());
    assert_eq!(apply.attr("id").as_deref(), Some(tenant_id.as_str()));
    let reconcile = named(&spans, "kubenova-operator", "reconcile NovaTenant").unwrap();
    assert_eq!(reconcile.parent(), store.id());
    assert_eq!(reconcile.attr("name").as_deref(), Some("traced"));
    // ... and the reconcile's Kubernetes API calls are its children.
    let kube_calls: Vec<&Got> = spans
        .iter()
        .filter(|g| g.parent() == reconcile.id() && g.span.kind == SpanKind::Client as i32)
        .collect();
    assert!(
        !kube_calls.is_empty(),
        "no Kubernetes client span under the reconcile: {spans:#?}"
    );
    assert!(
        kube_calls
            .iter()
            .any(|g| g.attr("http.url").is_some_and(|u| u.contains("/apis/"))),
        "{kube_calls:#?}"
    );
    // Every span's parent is the caller or another span of the trace.
    let ids: Vec<String> = spans.iter().map(Got::id).collect();
    for g in &spans {
        assert!(
            g.parent() == caller || ids.contains(&g.parent()),
            "span {:?} of {} has a parent outside the trace",
            g.span.name,
            g.service
        );
    }
    // The status report that carried the tenant's state back links to the trace; the
    // manager's handling of that report is its child.
    // (The manager's span may come in a later export batch than the operator's: waited for.)
    let report_and_handled = |sink: &Sink| {
        let r = sink.lock().unwrap();
        let report = r
            .spans
            .iter()
            .find(|g| {
                g.service == "kubenova-operator"
                    && g.span.name == "agent report"
                    && g.span
                        .links
                        .iter()
                        .any(|l| hex::encode(&l.trace_id) == trace)
            })
            .cloned()?;
        let sent = r
            .spans
            .iter()
            .find(|g| g.parent() == report.id() && g.span.name == "POST /api/v1/agent/status")
            .cloned();
        let handled = sent.and_then(|sent| {
            r.spans
                .iter()
                .find(|g| g.service == "kubenova-manager" && g.parent() == sent.id())
                .cloned()
        });
        Some((report, handled))
    };
    let handled = wait_for(
        "the manager's handling of the status report",
        Duration::from_secs(15),
        || {
            let found = report_and_handled(&http_sink).and_then(|(_, h)| h);
            async move { Ok(found) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", report_and_handled(&http_sink)));
    assert_eq!(handled.span.name, "POST /api/v1/agent/status");

    // The manager's log line of the request carries the trace and span ids.
    let log = flow.manager.proc.log();
    assert!(
        log.lines().any(|l| l.contains("\"request\"")
            && l.contains(&format!("\"trace_id\":\"{trace}\""))
            && l.contains(&format!("\"span_id\":\"{}\"", server.id()))),
        "no log line with the trace id:\n{}",
        flow.manager.proc.log_tail(30)
    );

    // The CLI over OTLP/gRPC: its span is the parent of the manager's handling.
    let out = std::process::Command::new(&cli)
        .args([
            "auth",
            "token",
            "--manager",
            &flow.manager.url,
            "--tenant",
            &tenant_id,
            "--role",
            "viewer",
        ])
        .env("KUBENOVA_TOKEN", &flow.manager.token)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &grpc)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    let cli_span = {
        let r = grpc_sink.lock().unwrap();
        r.spans
            .iter()
            .find(|g| g.service == "kubenova" && g.span.name == "kubenova auth token")
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "the CLI exported nothing over gRPC: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    let handled = wait_for(
        "the manager's span of the CLI call",
        Duration::from_secs(15),
        || {
            let sink = http_sink.clone();
            let (trace, id) = (cli_span.trace(), cli_span.id());
            async move {
                Ok(spans_of(&sink, &trace)
                    .into_iter()
                    .find(|g| g.service == "kubenova-manager" && g.parent() == id))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(handled.span.name, "POST /api/v1/tenants/{tenantID}/token");

    // No secret in any attribute of any span either receiver got.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(flow.testkit.client.clone(), "kubenova-system");
    let agent_secret = secrets.get("kubenova-agent").await.unwrap();
    let agent_token = String::from_utf8(agent_secret.data.unwrap()["token"].0.clone()).unwrap();
    assert!(agent_token.starts_with("kna_"));
    for sink in [&http_sink, &grpc_sink] {
        let r = sink.lock().unwrap();
        assert!(!r.attributes.is_empty());
        for a in &r.attributes {
            for secret in [
                flow.manager.token.as_str(),
                agent_token.as_str(),
                "Bearer ",
                "-----BEGIN",
                "client-key-data",
                "eyJ",
            ] {
                assert!(!a.contains(secret), "a span attribute holds a secret: {a}");
            }
        }
    }
    flow.shutdown();
    drop_database(pg).await;
}
