//! The browsable API reference at `/api/v1/docs`: Scalar, served entirely by the manager.
//!
//! The page, its script and its configuration come from the manager itself: the Scalar
//! bundle is the one the `scalar_api_reference` crate embeds at build time (nothing is
//! downloaded at run time, so the page works in an air-gapped cluster), and every response
//! carries a strict Content-Security-Policy that lets the page load and call nothing but
//! the manager's own origin (no third-party code on the control plane's origin, no fonts,
//! telemetry or proxy calls to Scalar's servers).

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::LazyLock;

/// Path of the page.
pub const DOCS_PATH: &str = "/api/v1/docs";
/// Path of the embedded Scalar bundle.
pub const SCRIPT_PATH: &str = "/api/v1/docs/scalar.js";
/// Path of the script that starts Scalar on the page.
pub const INIT_PATH: &str = "/api/v1/docs/init.js";

/// What the page may load: scripts only from the manager (no inline script), styles from
/// the manager and the ones Scalar sets inline, images and fonts from the manager or
/// `data:` URLs, requests only to the manager (the OpenAPI document, and the calls a user
/// sends from the page), nothing framed, no form posts, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = r#"<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>KubeNova API</title>
  </head>
  <body>
    <noscript>The KubeNova API reference needs JavaScript; the OpenAPI document is at /api/v1/openapi.json.</noscript>
    <div id="app"></div>
    <script src="/api/v1/docs/scalar.js"></script>
    <script src="/api/v1/docs/init.js"></script>
  </body>
</html>
"#;

/// Starts Scalar on the OpenAPI document the manager serves, with everything that would
/// reach Scalar's servers switched off (default fonts, telemetry, the request proxy, the
/// AI agent).
const INIT: &str = r#"Scalar.createApiReference('#app', {
  url: '/api/v1/openapi.json',
  withDefaultFonts: false,
  telemetry: false,
  agent: { disabled: true },
  showDeveloperTools: 'never',
  hideClientButton: true,
  metaData: { title: 'KubeNova API' }
});
"#;

static SCALAR_JS: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(scalar_api_reference::get_asset("scalar.js").unwrap_or_default()));

fn with_headers(content_type: &'static str, cache: &'static str, body: Bytes) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

/// The routes of the reference: the page, the Scalar bundle and its start script.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            DOCS_PATH,
            get(|| async {
                with_headers(
                    "text/html; charset=utf-8",
                    "no-cache",
                    Bytes::from_static(PAGE.as_bytes()),
                )
            }),
        )
        .route(
            INIT_PATH,
            get(|| async {
                with_headers(
                    "text/javascript; charset=utf-8",
                    "no-cache",
                    Bytes::from_static(INIT.as_bytes()),
                )
            }),
        )
        .route(
            SCRIPT_PATH,
            get(|| async {
                with_headers(
                    "text/javascript; charset=utf-8",
                    "public, max-age=86400",
                    SCALAR_JS.clone(),
                )
            }),
        )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_bundle_is_embedded_and_the_page_has_no_inline_script_or_remote_url() {
        assert!(SCALAR_JS.len() > 1_000_000, "the Scalar bundle is embedded");
        assert!(
            std::str::from_utf8(&SCALAR_JS[..100]).is_ok(),
            "JavaScript text"
        );
        for (name, text) in [("page", PAGE), ("init", INIT)] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{name}"
            );
        }
        // Every <script> of the page has a src on the manager: no inline script, so the
        // policy needs no 'unsafe-inline' for scripts.
        for tag in PAGE.split("<script").skip(1) {
            assert!(tag.trim_start().starts_with("src=\"/api/v1/docs/"), "{tag}");
            assert!(tag.contains("></script>"), "{tag}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("script-src 'self' 'unsafe"));
    }
}
