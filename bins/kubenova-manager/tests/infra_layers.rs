//! The middleware stack around custom routes: URI rewrite of `:action` suffixes before
//! routing, the KN-408 timeout, axum rejections mapped to the KN envelope.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use kubenova_manager::api::{self, AppState, authz::Role, config::ServerConfig, middleware};
use kubenova_store::crypto::{Kek, Keyring};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt as _;
use utoipa::OpenApi as _;

async fn router(cfg: ServerConfig) -> (axum::Router, AppState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let keys = Keyring::new(vec![Kek::new("k1", &[7u8; 32]).unwrap()]).unwrap();
    let store = kubenova_store::connect(&url, keys).await.unwrap();
    let state = kubenova_manager::test_state(store, cfg, b"layers-test-secret-layers-test-secret");
    let routes: axum::Router<AppState> = axum::Router::new()
        .route(
            "/api/v1/clusters/{c}/tenants/{t}/projects/{p}/apps/{a}/actions/{action}",
            post(|Path((c, t, p, a, action)): Path<(String, String, String, String, String)>| async move {
                axum::Json(json!({"c": c, "t": t, "p": p, "a": a, "action": action}))
            }),
        )
        .route(
            "/api/v1/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/api/v1/ids/{id}", get(|Path(id): Path<uuid::Uuid>| async move { id.to_string() }));
    (
        middleware::apply(routes, api::ApiDoc::openapi(), state.clone()),
        state,
        dir,
    )
}

async fn call(r: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = r.clone().oneshot(req).await.unwrap();
    let (s, h) = (resp.status(), resp.headers().clone());
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (s, h, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[tokio::test]
async fn colon_actions_are_rewritten_before_routing() {
    let (r, st, _d) = router(ServerConfig::default()).await;
    let t = st
        .auth
        .mint("a", &[Role::Admin], &[], &[], Duration::from_secs(60))
        .unwrap()
        .token;
    for (uri, action) in [
        (
            "/api/v1/clusters/c1/tenants/t1/projects/p1/apps/a1:deploy",
            "deploy",
        ),
        (
            "/api/v1/clusters/c1/tenants/t1/projects/p1/apps/a1%3Arollback?to=3",
            "rollback",
        ),
    ] {
        let (s, _, v) = call(
            &r,
            Request::post(uri)
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
        assert_eq!(
            v,
            json!({"c": "c1", "t": "t1", "p": "p1", "a": "a1", "action": action})
        );
    }
    // The metric carries the route template.
    let (_, _, _) = call(&r, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let resp = r
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(
            "route=\"/api/v1/clusters/{c}/tenants/{t}/projects/{p}/apps/{a}/actions/{action}\""
        ),
        "{text}"
    );
}

#[tokio::test]
async fn slow_requests_time_out_with_kn_408() {
    let (r, st, _d) = router(ServerConfig {
        request_timeout: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let t = st
        .auth
        .mint("a", &[Role::Admin], &[], &[], Duration::from_secs(60))
        .unwrap()
        .token;
    let (s, h, v) = call(
        &r,
        Request::get("/api/v1/slow")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(v["code"], "KN-408");
    assert_eq!(v["requestId"], h["x-request-id"].to_str().unwrap());
}

#[tokio::test]
async fn axum_rejections_become_kn_envelopes() {
    let (r, st, _d) = router(ServerConfig::default()).await;
    let t = st
        .auth
        .mint("a", &[Role::Admin], &[], &[], Duration::from_secs(60))
        .unwrap()
        .token;
    let (s, _, v) = call(
        &r,
        Request::get("/api/v1/ids/not-a-uuid")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "KN-400", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("UUID")
            || v["message"].as_str().unwrap().contains("parse"),
        "{v}"
    );
}
