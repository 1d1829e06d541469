//! `GET /api/v1/audit/stream` in-process (`oneshot` against `api::router`) on a fresh SQLite
//! store per test: events written after a follower connected reach it in order with their
//! cursors as ids, `Last-Event-ID` resumes without gaps or duplicates, filters and the admin-only
//! authorization of `GET /audit` hold, bad parameters are refused before streaming, and the
//! stream ends when the server shuts down.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::ids::AuditId;
use kubenova_api::model::{AuditEvent, AuditOutcome};
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use serde_json::Value;
use std::time::Duration;
use time::OffsetDateTime;
use tower::ServiceExt;

const SECRET: &[u8] = b"audit-stream-test-secret-0123456789abcdef";

/// How long a test waits for an event (the follower polls every second and holds back 2 s).
const WAIT: Duration = Duration::from_secs(20);

struct App {
    state: AppState,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

async fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(vec![Kek::new("k1", &[7u8; 32]).unwrap()]).unwrap();
    let store = kubenova_store::connect(
        &format!("sqlite://{}", dir.path().join("kn.db").display()),
        keys,
    )
    .await
    .unwrap();
    let cfg = ServerConfig {
        rate_limit_subject_rps: 100_000,
        rate_limit_subject_burst: 100_000,
        rate_limit_ip_rps: 100_000,
        rate_limit_ip_burst: 100_000,
        ..ServerConfig::default()
    };
    let state = kubenova_manager::test_state(store, cfg, SECRET);
    let router = kubenova_manager::api::router(state.clone());
    App {
        state,
        router,
        _dir: dir,
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// An open stream: its body, and the text not yet parsed.
struct Stream {
    body: Body,
    buf: String,
}

impl Stream {
    /// The next event (comments skipped), `None` when the stream ended; panics after [`WAIT`].
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut ev = Sse {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut seen = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().into();
                        seen = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().into());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data = serde_json::from_str(v.trim()).unwrap();
                        seen = true;
                    }
                }
                if seen {
                    return Some(ev);
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("no event within the wait");
            match frame {
                None => return None,
                Some(f) => {
                    if let Ok(d) = f.unwrap().into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&d));
                    }
                }
            }
        }
    }

    /// The next `n` audit events.
    async fn audit(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = self.next().await.expect("the stream ended early");
            assert_eq!(e.event, "audit", "unexpected event {e:?}");
            out.push(e);
        }
        out
    }

    /// Every event up to the end of the stream.
    async fn rest(&mut self) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

impl App {
    fn token(&self, subject: &str, roles: &[Role]) -> String {
        self.state
            .auth
            .mint(subject, roles, &[], &[], Duration::from_secs(600))
            .unwrap()
            .token
    }

    /// Opens `uri`; the stream when 200, else the status and the JSON body.
    async fn open(
        &self,
        uri: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<Stream, (StatusCode, Value)> {
        let mut b = Request::builder().uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(l) = last_event_id {
            b = b.header("last-event-id", l);
        }
        let resp = self
            .router
            .clone()
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        if status != StatusCode::OK {
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            return Err((status, serde_json::from_slice(&bytes).unwrap()));
        }
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE].to_str().unwrap(),
            "text/event-stream"
        );
        Ok(Stream {
            body: resp.into_body(),
            buf: String::new(),
        })
    }

    async fn follow(&self, uri: &str, last_event_id: Option<&str>) -> Stream {
        let admin = self.token("admin", &[Role::Admin]);
        match self.open(uri, Some(&admin), last_event_id).await {
            Ok(s) => s,
            Err((s, b)) => panic!("{uri}: {s} {b}"),
        }
    }

    /// Writes an audit event now and returns it.
    async fn write(&self, actor: &str, action: &str) -> AuditEvent {
        let e = AuditEvent {
            id: AuditId::new(),
            at: OffsetDateTime::now_utc(),
            actor: actor.into(),
            roles: vec!["admin".into()],
            action: action.into(),
            resource_kind: "tenant".into(),
            resource_id: "t-1".into(),
            outcome: AuditOutcome::Success,
            http_status: Some(201),
            request_id: format!("req-{action}"),
            source_ip: "127.0.0.1".into(),
            details: None,
        };
        self.state.store.append_audit(&e).await.unwrap();
        e
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn actions(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "audit")
        .map(|e| e.data["action"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_follower_receives_new_events_in_order_and_resumes_without_gaps_or_duplicates() {
    let app = app().await;
    let before = app.write("alice", "a.0").await;
    let mut s = app.follow("/api/v1/audit/stream", None).await;
    // The event written before connecting comes first (no cursor: from the start).
    let first = s.audit(1).await;
    assert_eq!(first[0].data["action"], "a.0");
    assert_eq!(first[0].data["id"], before.id.to_string());

    let mut written = Vec::new();
    for i in 1..=4 {
        written.push(app.write("alice", &format!("a.{i}")).await);
    }
    let got = s.audit(4).await;
    assert_eq!(actions(&got), ["a.1", "a.2", "a.3", "a.4"]);
    for (e, w) in got.iter().zip(&written) {
        assert_eq!(e.data["id"], w.id.to_string());
        // The id is the event's cursor: the same a page of GET /audit continues after.
        assert_eq!(
            e.id.as_deref(),
            Some(kubenova_store::encode_cursor(w.id).as_str())
        );
    }
    drop(s);

    // The client lost the connection after a.2; more events are written meanwhile.
    let resume_after = got[1].id.clone().unwrap();
    app.write("alice", "a.5").await;
    let to = rfc3339(OffsetDateTime::now_utc() + Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.write("alice", "a.6-after-to").await;
    let mut s = app
        .follow(
            &format!("/api/v1/audit/stream?to={to}"),
            Some(&resume_after),
        )
        .await;
    let rest = s.rest().await;
    assert_eq!(actions(&rest), ["a.3", "a.4", "a.5"]);
    let end = rest.last().unwrap();
    assert_eq!(
        (end.event.as_str(), &end.data["reason"]),
        ("end", &"to".into())
    );

    // The cursor parameter resumes the same way; Last-Event-ID takes its place when both come.
    let mut s = app
        .follow(
            &format!(
                "/api/v1/audit/stream?to={to}&cursor={}",
                first[0].id.as_deref().unwrap()
            ),
            Some(&resume_after),
        )
        .await;
    assert_eq!(actions(&s.rest().await), ["a.3", "a.4", "a.5"]);
    let mut s = app
        .follow(
            &format!(
                "/api/v1/audit/stream?to={to}&cursor={}",
                first[0].id.as_deref().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(
        actions(&s.rest().await),
        ["a.1", "a.2", "a.3", "a.4", "a.5"]
    );
}

#[tokio::test]
async fn filters_and_authorization_are_those_of_get_audit() {
    let app = app().await;
    // Only admin reads the audit log, streamed or paged.
    for (sub, role) in [
        ("ops", Role::Ops),
        ("owner", Role::TenantOwner),
        ("dev", Role::ProjectDev),
        ("ro", Role::ReadOnly),
    ] {
        let t = app.token(sub, &[role]);
        let Err((status, body)) = app.open("/api/v1/audit/stream", Some(&t), None).await else {
            panic!("{sub} may follow the audit log");
        };
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("KN-403"))
        );
    }
    let Err((status, body)) = app.open("/api/v1/audit/stream", None, None).await else {
        panic!("followed without a token");
    };
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("KN-401"))
    );

    // A follower filtering by actor never receives the others' events.
    let mut s = app.follow("/api/v1/audit/stream?actor=alice", None).await;
    app.write("bob", "b.1").await;
    app.write("alice", "a.1").await;
    app.write("bob", "b.2").await;
    app.write("alice", "a.2").await;
    let got = s.audit(2).await;
    assert_eq!(actions(&got), ["a.1", "a.2"]);
    app.write("bob", "b.3").await;
    app.write("alice", "a.3").await;
    let got = s.audit(1).await;
    assert_eq!(actions(&got), ["a.3"]);
    for e in got {
        assert_eq!(e.data["actor"], "alice");
    }
    // The denied callers' own calls are audited, and not to them: nothing else came.
    let to = rfc3339(OffsetDateTime::now_utc());
    let mut all = app
        .follow(&format!("/api/v1/audit/stream?to={to}&actor=bob"), None)
        .await;
    assert_eq!(actions(&all.rest().await), ["b.1", "b.2", "b.3"]);
}

#[tokio::test]
async fn bad_parameters_are_refused_before_streaming() {
    let app = app().await;
    let admin = app.token("admin", &[Role::Admin]);
    for (uri, last, status, code) in [
        (
            "/api/v1/audit/stream?cursor=not-a-cursor",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "KN-422",
        ),
        (
            "/api/v1/audit/stream",
            Some("not-a-cursor"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "KN-422",
        ),
        (
            "/api/v1/audit/stream?actor=a%01b",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "KN-422",
        ),
        (
            "/api/v1/audit/stream?from=yesterday",
            None,
            StatusCode::BAD_REQUEST,
            "KN-400",
        ),
        (
            "/api/v1/audit/stream?limit=5",
            None,
            StatusCode::BAD_REQUEST,
            "KN-400",
        ),
    ] {
        let Err((s, body)) = app.open(uri, Some(&admin), last).await else {
            panic!("{uri} {last:?} was streamed");
        };
        assert_eq!(
            (s, body["code"].as_str()),
            (status, Some(code)),
            "{uri} {last:?}: {body}"
        );
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_stream_ends_when_the_server_shuts_down() {
    let app = app().await;
    let mut s = app.follow("/api/v1/audit/stream", None).await;
    app.write("alice", "a.1").await;
    assert_eq!(actions(&s.audit(1).await), ["a.1"]);
    let t0 = std::time::Instant::now();
    app.state.runtime.shutdown.send_replace(true);
    let rest = s.rest().await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].event, "end");
    assert_eq!(rest[0].data["reason"], "shutdown");
}
