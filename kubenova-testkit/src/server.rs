//! The HTTPS front end: TLS, bearer auth, discovery and the REST verbs over the [`Store`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;
use crate::schema;
use crate::selector::{FieldSelector, LabelSelector, labels_of};
use crate::store::{DeleteOpts, Event, PatchKind, Store, WriteOpts, present};
use crate::tokens::{self, TokenSigner, UserInfo};

/// Shared server state.
#[derive(Debug)]
pub struct App {
    /// The object store.
    pub store: Arc<Store>,
    /// The admin bearer token.
    pub admin_token: String,
    /// Service-account token signer.
    pub signer: TokenSigner,
    /// Interval between watch BOOKMARK events.
    pub bookmark_interval: Duration,
    /// Fault rules and request counters, checked for every resource request.
    pub faults: Arc<crate::faults::Faults>,
    /// Emulate KubeVela's Application mutating webhook with application authentication
    /// on: every create or update of a `core.oam.dev` Application records the requesting
    /// user in the annotation [`KUBEVELA_USERNAME_ANNOTATION`] (KubeVela then deploys as
    /// that user).
    pub kubevela_webhook: bool,
}

/// The annotation in which KubeVela's webhook records who wrote an Application.
pub const KUBEVELA_USERNAME_ANNOTATION: &str = "app.oam.dev/username";

/// The `Impersonate-User` header: the request acts as this user. (A real API server first
/// checks that the caller may `impersonate` that user; the testkit has no RBAC and only
/// records the impersonated name, for request counters, faults and the KubeVela webhook.)
const IMPERSONATE_USER: &str = "impersonate-user";

/// TLS material generated at start.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// rustls server config.
    pub server_config: Arc<rustls::ServerConfig>,
}

/// Generates a CA and a server certificate for `localhost` / `127.0.0.1`.
pub fn generate_tls() -> anyhow::Result<TlsMaterial> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kubenova-testkit-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let srv_key = KeyPair::generate()?;
    let mut srv_params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ])?;
    srv_params
        .distinguished_name
        .push(DnType::CommonName, "kubenova-testkit-apiserver");
    srv_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    srv_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let srv_cert = srv_params.signed_by(&srv_key, &ca_cert, &ca_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(srv_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![srv_cert.der().clone(), ca_cert.der().clone()], key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(cfg),
    })
}

/// Builds the axum router.
pub fn router(app: Arc<App>) -> axum::Router {
    // kube-apiserver accepts request bodies up to 3 MiB.
    axum::Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(3 * 1024 * 1024))
        .with_state(app)
}

/// Serves TLS connections from `listener` until `shutdown` flips to true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = router(app);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let router = router.clone();
                let mut conn_shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper_util::service::TowerToHyperService::new(router);
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_shutdown.changed() => {}
                    }
                });
            }
        }
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn authenticate(app: &App, headers: &HeaderMap) -> Option<UserInfo> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    authenticate_token(app, token)
}

/// Resolves a bearer token to a user: the admin token or a live service-account token.
pub fn authenticate_token(app: &App, token: &str) -> Option<UserInfo> {
    if !app.admin_token.is_empty() && token == app.admin_token {
        return Some(tokens::admin_user());
    }
    let claims = app.signer.verify(token)?;
    let sa_type = app.store.resolve("", "v1", "serviceaccounts")?;
    let sa = app
        .store
        .get(&sa_type, Some(&claims.namespace), &claims.name)
        .ok()?;
    if sa.pointer("/metadata/uid").and_then(Value::as_str) != Some(claims.uid.as_str()) {
        return None;
    }
    Some(tokens::sa_user(&claims))
}

async fn handle(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_matches('/').to_owned();
    let segs: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let public = matches!(
        segs.as_slice(),
        ["version"] | ["healthz"] | ["livez"] | ["readyz"]
    );
    let user = authenticate(&app, &headers);
    if !public && user.is_none() {
        return ApiError::unauthorized().into_response();
    }
    let username = match (user, headers.get(IMPERSONATE_USER)) {
        (Some(_), Some(imp)) => match imp.to_str() {
            Ok(name) if !name.is_empty() => name.to_owned(),
            _ => {
                return ApiError::bad_request("invalid Impersonate-User header").into_response();
            }
        },
        (user, _) => user.map(|u| u.username).unwrap_or_default(),
    };
    match route(&app, &method, &segs, &query, &headers, body, &username).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "36",
        "emulationMajor": "1",
        "emulationMinor": "36",
        "gitVersion": "v1.36.0-kubenova-testkit",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Kubernetes version priority: GA > beta > alpha, then higher numbers first.
fn version_priority(v: &str) -> (i32, i32, i32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (-1, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse::<i32>().unwrap_or(-1);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (level, num) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (-1, 0, 0);
    };
    (level, major, num.parse::<i32>().unwrap_or(-1))
}

const AUTHN_GROUP: &str = "authentication.k8s.io";

fn group_discovery(name: &str, versions: &[String]) -> Value {
    let mut vs = versions.to_vec();
    vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    let gv: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": gv,
        "preferredVersion": gv.first().cloned().unwrap_or_else(|| json!({})),
    })
}

fn all_groups(app: &App) -> Vec<(String, Vec<String>)> {
    let mut groups = app.store.registry().groups();
    groups.push((AUTHN_GROUP.to_owned(), vec!["v1".to_owned()]));
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

fn resource_list(app: &App, group: &str, version: &str) -> ApiResult<Value> {
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    if group == AUTHN_GROUP && version == "v1" {
        resources.push(json!({"name": "tokenreviews", "singularName": "tokenreview", "namespaced": false, "kind": "TokenReview", "verbs": ["create"]}));
    } else {
        let reg = app.store.registry();
        if !reg.has_group_version(group, version) {
            return Err(ApiError::not_found_path(format!(
                "the server could not find the requested resource (group version {gv:?} is not served)"
            )));
        }
        for t in reg.resources(group, version) {
            let mut r = json!({
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": t.verbs(),
            });
            if !t.short_names.is_empty() {
                r["shortNames"] = json!(t.short_names);
            }
            // `kubectl get all`: the built-in kinds a real server puts in the category.
            let builtin_all = !t.custom
                && matches!(
                    (t.group.as_str(), t.plural.as_str()),
                    ("", "pods" | "services")
                        | ("apps", "deployments" | "replicasets" | "statefulsets")
                        | ("batch", "jobs")
                        | ("autoscaling", "horizontalpodautoscalers")
                );
            if t.custom || builtin_all {
                r["categories"] = json!(["all"]);
            }
            resources.push(r);
            if t.status_subresource {
                resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
            }
            if t.group.is_empty() && t.plural == "serviceaccounts" {
                resources.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": AUTHN_GROUP, "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
            }
            if has_scale(&t) {
                resources.push(json!({"name": format!("{}/scale", t.plural), "singularName": "", "namespaced": true, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
            }
            if t.group.is_empty() && t.plural == "pods" {
                resources.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
            }
        }
    }
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

#[allow(clippy::too_many_arguments)]
async fn route(
    app: &Arc<App>,
    method: &Method,
    segs: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    user: &str,
) -> ApiResult<Response> {
    match segs {
        ["version"] => Ok(ok(&version_info())),
        ["healthz"] | ["livez"] | ["readyz"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => Ok(ok(&json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }))),
        ["api", "v1"] => Ok(ok(&resource_list(app, "", "v1")?)),
        ["openapi", "v2"] => {
            openapi_accept(headers)?;
            Ok(ok(&crate::openapi::v2_document(&app.store.registry())))
        }
        ["openapi", "v3"] => {
            openapi_accept(headers)?;
            Ok(ok(&crate::openapi::v3_index(&app.store.registry())))
        }
        ["openapi", "v3", gv @ ..] => {
            openapi_accept(headers)?;
            let path = gv.join("/");
            let doc = crate::openapi::v3_document(&app.store.registry(), &path).ok_or_else(|| {
                ApiError::not_found_path(format!(
                    "the server could not find the requested resource (no OpenAPI v3 document for {path:?})"
                ))
            })?;
            Ok(ok(&doc))
        }
        ["apis"] => {
            let groups: Vec<Value> = all_groups(app)
                .iter()
                .map(|(g, vs)| group_discovery(g, vs))
                .collect();
            Ok(ok(
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        ["apis", g] => {
            let groups = all_groups(app);
            let (name, vs) = groups.iter().find(|(n, _)| n == g).ok_or_else(|| {
                ApiError::not_found_path(format!(
                    "the server could not find the requested resource (group {g:?})"
                ))
            })?;
            let mut v = group_discovery(name, vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            Ok(ok(&v))
        }
        ["apis", g, v] => Ok(ok(&resource_list(app, g, v)?)),
        ["apis", AUTHN_GROUP, "v1", "tokenreviews"] => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed(format!(
                    "{method} is not supported on tokenreviews"
                )));
            }
            token_review(app, headers, &body)
        }
        ["api", "v1", rest @ ..] => {
            resource(app, method, "", "v1", rest, query, headers, body, user).await
        }
        ["apis", g, v, rest @ ..] => {
            resource(app, method, g, v, rest, query, headers, body, user).await
        }
        _ => Err(ApiError::not_found_path(
            "the server could not find the requested resource",
        )),
    }
}

/// OpenAPI documents are served as JSON only: a client that accepts nothing but the
/// protobuf form gets 406, as from a server that cannot produce it.
fn openapi_accept(headers: &HeaderMap) -> ApiResult<()> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match crate::openapi::negotiate(accept) {
        crate::openapi::Negotiated::Json => Ok(()),
        crate::openapi::Negotiated::NotAcceptable => Err(ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json; got {:?}",
                accept.unwrap_or_default()
            ),
        )),
    }
}

/// A YAML body (JSON is YAML: clients such as kube-rs send apply patches as JSON under
/// the YAML media type, and are decoded as JSON, as the API server does).
fn yaml_or_json(body: &[u8]) -> Result<Value, String> {
    if body.trim_ascii_start().first() == Some(&b'{')
        && let Ok(v) = serde_json::from_slice(body)
    {
        return Ok(v);
    }
    // Not JSON (`{a: 1}` is a YAML flow mapping but not JSON): YAML.
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    serde_saphyr::from_str_with_options(text, crate::yaml_options()).map_err(|e| e.to_string())
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let ct = content_type(headers);
    let v: Value = if crate::protobuf::is_protobuf(&ct) {
        crate::protobuf::decode(body).map_err(|e| match e {
            crate::protobuf::DecodeError::UnknownKind { .. } => {
                ApiError::new(415, "UnsupportedMediaType", e.to_string())
            }
            crate::protobuf::DecodeError::Malformed(_) => ApiError::bad_request(e.to_string()),
        })?
    } else if ct == "application/cbor" || ct.starts_with("application/vnd.") {
        // What a server without CBOR answers: client-go then retries in JSON.
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got {ct:?}"
            ),
        ));
    } else if ct.contains("yaml") {
        yaml_or_json(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; yaml parse error: {e}"))
        })?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "couldn't get version/kind; json parse error: expected an object, got {}",
            match v {
                Value::Array(_) => "an array",
                Value::Null => "null",
                _ => "a scalar",
            }
        )));
    }
    Ok(v)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn write_opts(query: &HashMap<String, String>, headers: &HeaderMap) -> ApiResult<WriteOpts> {
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other:?}: supported values: \"All\""
            )));
        }
    };
    let strict = match query.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Strict") => true,
        Some("Ignore") | Some("Warn") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            )));
        }
    };
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.clone(),
        None => headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_owned(),
    };
    Ok(WriteOpts {
        dry_run,
        manager,
        strict,
    })
}

fn truthy(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true" || v == "1")
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    app: &Arc<App>,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    user: &str,
) -> ApiResult<Response> {
    let (ns, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !matches!(tail, [] | ["status" | "finalize"]) => {
            (Some(*ns), tail)
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => {
            return Err(ApiError::not_found_path(
                "the server could not find the requested resource",
            ));
        }
    };
    let t = app.store.resolve(group, version, plural).ok_or_else(|| {
        ApiError::not_found_path(format!(
            "the server could not find the requested resource (no resource {plural:?} in group version \"{}\")",
            if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") }
        ))
    })?;
    if ns.is_some() && !t.namespaced {
        return Err(ApiError::not_found_path(format!(
            "the server could not find the requested resource ({} is cluster-scoped)",
            t.plural
        )));
    }
    if let Some(n) = name
        && n.is_empty()
    {
        return Err(ApiError::not_found_path(
            "the server could not find the requested resource",
        ));
    }
    match sub {
        None | Some("status") => {}
        Some("token") if t.group.is_empty() && t.plural == "serviceaccounts" => {}
        Some("log") if t.group.is_empty() && t.plural == "pods" => {}
        Some("finalize") if t.group.is_empty() && t.plural == "namespaces" => {}
        Some("scale") if has_scale(&t) => {}
        Some(other) => {
            return Err(ApiError::not_found_path(format!(
                "the server could not find the requested resource (subresource {other:?} of {})",
                t.plural
            )));
        }
    }
    let sub = match sub {
        Some("status") if !t.status_subresource => {
            return Err(ApiError::not_found_path(format!(
                "the server could not find the requested resource ({} has no status subresource)",
                t.plural
            )));
        }
        Some("finalize") => "",
        Some(s) => s,
        None => "",
    };
    let verb = match (method.clone(), name) {
        (Method::GET, None) if truthy(query, "watch") => "watch",
        (Method::GET, None) => "list",
        (Method::GET, Some(_)) => "get",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, None) => "deletecollection",
        (Method::DELETE, Some(_)) => "delete",
        _ => "unknown",
    };
    let info = crate::faults::RequestInfo {
        verb,
        group,
        resource: &t.plural,
        subresource: match rest {
            [_, _, s] => s,
            _ => "",
        },
        namespace: ns,
        name,
        user,
    };
    if let Some(e) = app.faults.check(&info) {
        tracing::debug!(verb, resource = %t.plural, code = e.code, "injected fault");
        return Err(e);
    }
    for mut gate in app.faults.holds_for(&info) {
        // A dropped rule counts as released (`Hold` releases on drop).
        let _ = gate.wait_for(|open| *open).await;
    }
    let store = &app.store;
    let labels = LabelSelector::parse(
        query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    let fields = FieldSelector::parse(
        query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )?;
    match (method.clone(), name) {
        (Method::GET, None) => {
            if truthy(query, "watch") {
                return Ok(watch_response(app, t, ns, query, labels, fields));
            }
            let limit = query
                .get("limit")
                .map(|l| {
                    l.parse::<usize>()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))
                })
                .transpose()?;
            Ok(ok(&store.list(
                &t,
                ns,
                &labels,
                &fields,
                limit,
                query.get("continue").map(String::as_str),
            )?))
        }
        (Method::POST, None) => {
            if t.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "POST on {} requires a namespace in the path",
                    t.plural
                )));
            }
            let mut obj = parse_body(headers, &body)?;
            kubevela_webhook(app, &t, sub, &mut obj, user);
            let opts = write_opts(query, headers)?;
            let created = store.create(&t, ns, obj, &opts)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::DELETE, None) => {
            let opts = delete_opts(query, headers, &body)?;
            Ok(ok(
                &store.delete_collection(&t, ns, &labels, &fields, &opts)?
            ))
        }
        (_, None) => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on a collection"
        ))),
        (m, Some(_)) if t.namespaced && ns.is_none() => Err(ApiError::not_found_path(format!(
            "the server could not find the requested resource ({m} on namespaced {} without a namespace)",
            t.plural
        ))),
        (Method::POST, Some(n)) if sub == "token" => token_request(app, &t, ns, n, headers, &body),
        (m, Some(n)) if sub == "scale" => scale(app, &t, ns, n, &m, query, headers, &body),
        (Method::GET, Some(n)) if sub == "log" => {
            crate::podlogs::respond(app, &t, ns.unwrap_or_default(), n, query)
        }
        (m, Some(_)) if sub == "log" => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on pods/log (only get)"
        ))),
        (m, Some(_)) if sub == "token" => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on serviceaccounts/token (only create)"
        ))),
        (Method::GET, Some(n)) => Ok(ok(&store.get(&t, ns, n)?)),
        (Method::PUT, Some(n)) => {
            let mut obj = parse_body(headers, &body)?;
            kubevela_webhook(app, &t, sub, &mut obj, user);
            let opts = write_opts(query, headers)?;
            Ok(ok(&store.replace(&t, ns, n, obj, &opts, sub)?))
        }
        (Method::PATCH, Some(n)) => {
            let ct = content_type(headers);
            let kind = match ct.as_str() {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/json-patch+json" => PatchKind::Json,
                "application/apply-patch+yaml" | "application/apply-patch+json" => {
                    PatchKind::Apply {
                        force: truthy(query, "force"),
                    }
                }
                "application/strategic-merge-patch+json" if !t.custom => PatchKind::Strategic,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let mut patch: Value = match kind {
                PatchKind::Apply { .. } => yaml_or_json(&body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
                _ => serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
            };
            if !matches!(kind, PatchKind::Json) {
                kubevela_webhook(app, &t, sub, &mut patch, user);
            }
            let mut opts = write_opts(query, headers)?;
            if let PatchKind::Apply { .. } = kind {
                match query.get("fieldManager").filter(|m| !m.is_empty()) {
                    Some(m) => opts.manager = m.clone(),
                    None => {
                        return Err(ApiError::invalid(
                            "meta.k8s.io",
                            "PatchOptions",
                            "",
                            vec![crate::error::Cause::new(
                                "FieldValueRequired",
                                "Required value: is required for apply patch",
                                "fieldManager",
                            )],
                        ));
                    }
                }
                if query.contains_key("force")
                    && !truthy(query, "force")
                    && query.get("force").is_some_and(|f| f != "false")
                {
                    return Err(ApiError::bad_request("invalid force value"));
                }
            } else if truthy(query, "force") {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "PatchOptions",
                    "",
                    vec![crate::error::Cause::new(
                        "FieldValueForbidden",
                        "Forbidden: may not be specified for non-apply patch",
                        "force",
                    )],
                ));
            }
            let out = store.patch(&t, ns, n, kind, patch, &opts, sub)?;
            Ok(ok(&out))
        }
        (Method::DELETE, Some(n)) => {
            let opts = delete_opts(query, headers, &body)?;
            Ok(ok(&store.delete(&t, ns, n, &opts)?))
        }
        (m, Some(_)) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on {}",
            t.plural
        ))),
    }
}

/// Kinds with a `scale` subresource (`kubectl scale`, HPAs).
fn has_scale(t: &ResourceType) -> bool {
    t.group == "apps"
        && matches!(
            t.plural.as_str(),
            "deployments" | "statefulsets" | "replicasets"
        )
}

/// The `autoscaling/v1` Scale of a workload.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let md = |k: &str| {
        obj.pointer(&format!("/metadata/{k}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": md("name"), "namespace": md("namespace"), "uid": md("uid"),
                     "resourceVersion": md("resourceVersion"), "creationTimestamp": md("creationTimestamp")},
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
                   "selector": selector},
    })
}

/// GET, PUT and PATCH (merge, JSON or strategic) of `<workload>/scale`: the Scale's
/// `spec.replicas` is written to the workload's `spec.replicas`.
#[allow(clippy::too_many_arguments)]
fn scale(
    app: &App,
    t: &ResourceType,
    ns: Option<&str>,
    name: &str,
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let store = &app.store;
    let current = scale_of(&store.get(t, ns, name)?);
    let wanted = match *method {
        Method::GET => return Ok(ok(&current)),
        Method::PUT => parse_body(headers, body)?,
        Method::PATCH => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            match content_type(headers).as_str() {
                "application/json-patch+json" => {
                    let p: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
                        ApiError::bad_request(format!("couldn't decode JSON patch: {e}"))
                    })?;
                    json_patch::patch(&mut doc, &p).map_err(|e| {
                        ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}"))
                    })?;
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    json_patch::merge(&mut doc, &patch);
                }
                other => return Err(ApiError::unsupported_media_type(other)),
            }
            doc
        }
        ref m => {
            return Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on {}/scale (get, update, patch)",
                t.plural
            )));
        }
    };
    let Some(replicas) = wanted.pointer("/spec/replicas").and_then(Value::as_i64) else {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            name,
            vec![crate::error::Cause::new(
                "FieldValueRequired",
                "Required value: spec.replicas must be an integer",
                "spec.replicas",
            )],
        ));
    };
    if replicas < 0 {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            name,
            vec![crate::error::Cause::new(
                "FieldValueInvalid",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                "spec.replicas",
            )],
        ));
    }
    let opts = write_opts(query, headers)?;
    let updated = store.patch(
        t,
        ns,
        name,
        PatchKind::Merge,
        json!({"spec": {"replicas": replicas}}),
        &opts,
        "",
    )?;
    Ok(ok(&scale_of(&updated)))
}

/// KubeVela's mutating webhook with application authentication on (see
/// [`App::kubevela_webhook`]): writes the requesting user into the Application (or into a
/// merge/apply patch of it, whose result then carries it, as a webhook's mutation would).
fn kubevela_webhook(app: &App, t: &ResourceType, sub: &str, obj: &mut Value, user: &str) {
    if !app.kubevela_webhook
        || !sub.is_empty()
        || t.group != "core.oam.dev"
        || t.plural != "applications"
        || !obj.is_object()
    {
        return;
    }
    let meta = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Value::Object(a) = annotations {
            a.insert(KUBEVELA_USERNAME_ANNOTATION.to_owned(), json!(user));
        }
    }
}

fn delete_opts(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<DeleteOpts> {
    let mut opts = DeleteOpts::default();
    if !body.is_empty() {
        let v: Value = if crate::protobuf::is_protobuf(&content_type(headers)) {
            parse_body(headers, body)?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("couldn't decode DeleteOptions: {e}")))?
        };
        opts.propagation = v
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_owned);
        opts.dry_run = v
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
        opts.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        opts.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    if let Some(p) = query.get("propagationPolicy") {
        opts.propagation = Some(p.clone());
    }
    if query.get("dryRun").is_some_and(|d| d == "All") {
        opts.dry_run = true;
    }
    if let Some(p) = &opts.propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    Ok(opts)
}

fn token_request(
    app: &App,
    sa_type: &ResourceType,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let mut req = parse_body(headers, body)?;
    let findings =
        schema::validate_builtin_object("tokenrequest-authentication-v1.json", &mut req, false)?;
    if !findings.unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: strict decoding error: unknown field \"{}\"",
            findings.unknown.join("\", unknown field \"")
        )));
    }
    if !findings.invalid.is_empty() {
        return Err(ApiError::invalid(
            AUTHN_GROUP,
            "TokenRequest",
            name,
            findings.invalid,
        ));
    }
    let sa = app.store.get(sa_type, ns, name)?;
    let exp = req
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if exp < 600 {
        return Err(ApiError::invalid(
            AUTHN_GROUP,
            "TokenRequest",
            name,
            vec![crate::error::Cause::new(
                "FieldValueInvalid",
                format!("Invalid value: {exp}: may not specify a duration less than 10 minutes"),
                "spec.expirationSeconds",
            )],
        ));
    }
    if exp > 1 << 32 {
        return Err(ApiError::invalid(
            AUTHN_GROUP,
            "TokenRequest",
            name,
            vec![crate::error::Cause::new(
                "FieldValueTooLong",
                format!(
                    "Invalid value: {exp}: may not specify a duration larger than 2^32 seconds"
                ),
                "spec.expirationSeconds",
            )],
        ));
    }
    let audiences: Vec<String> = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![tokens::ISSUER.to_owned()]);
    let uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ns = ns.unwrap_or_default();
    let (token, exp_ts) = app.signer.issue(ns, name, uid, &audiences, exp)?;
    let exp_time = time::OffsetDateTime::from_unix_timestamp(exp_ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut spec = req.get("spec").cloned().unwrap_or_else(|| json!({}));
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(exp);
    let out = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": crate::managed::now_rfc3339()},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": exp_time},
    });
    Ok(json_response(StatusCode::CREATED, &out))
}

fn token_review(app: &App, headers: &HeaderMap, body: &[u8]) -> ApiResult<Response> {
    let req = parse_body(headers, body)?;
    if req
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "TokenReview")
    {
        return Err(ApiError::bad_request(
            "the kind in the data does not match the expected kind (TokenReview)",
        ));
    }
    let token = req
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::invalid(
            AUTHN_GROUP,
            "TokenReview",
            "",
            vec![crate::error::Cause::new(
                "FieldValueRequired",
                "Required value: token must not be empty",
                "spec.token",
            )],
        ));
    }
    let wanted: Vec<String> = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut status = json!({"authenticated": false, "user": {}, "error": "invalid bearer token"});
    if let Some(user) = authenticate_token(app, token) {
        let token_aud = app
            .signer
            .verify(token)
            .map(|c| c.audiences)
            .unwrap_or_else(|| vec![tokens::ISSUER.to_owned()]);
        let aud_ok = wanted.is_empty() || wanted.iter().any(|w| token_aud.contains(w));
        if aud_ok {
            let audiences = if wanted.is_empty() {
                token_aud
            } else {
                wanted
                    .iter()
                    .filter(|w| token_aud.contains(w))
                    .cloned()
                    .collect()
            };
            status = json!({
                "authenticated": true,
                "user": {"username": user.username, "uid": user.uid, "groups": user.groups},
                "audiences": audiences,
            });
        } else {
            status = json!({"authenticated": false, "user": {}, "error": "token audiences do not intersect with the requested audiences"});
        }
    }
    let out = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": req.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": status,
    });
    Ok(json_response(StatusCode::CREATED, &out))
}

fn event_line(etype: &str, object: &Value) -> Bytes {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        etype: &'a str,
        object: &'a Value,
    }
    let mut buf = serde_json::to_vec(&Line { etype, object }).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}

fn bookmark(t: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut md = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": t.kind, "apiVersion": t.api_version(), "metadata": md}),
    )
}

fn watch_response(
    app: &Arc<App>,
    t: Arc<ResourceType>,
    ns: Option<&str>,
    query: &HashMap<String, String>,
    labels: LabelSelector,
    fields: FieldSelector,
) -> Response {
    // Small hand-off buffer: backpressure reaches the broadcast receiver, whose bounded
    // capacity decides when a slow watcher is dropped with 410.
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let bookmarks = truthy(query, "allowWatchBookmarks");
    let send_initial = truthy(query, "sendInitialEvents");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(1800);
    let rv = query.get("resourceVersion").cloned();
    let ns_owned = ns.map(str::to_owned);
    let start = app
        .store
        .watch(&t, ns, if send_initial { None } else { rv.as_deref() });
    let interval = app.bookmark_interval;
    tokio::spawn(async move {
        let matches = |o: &Value| labels.matches(&labels_of(o)) && fields.matches(o);
        let start = match start {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(event_line("ERROR", &e.to_status())).await;
                return;
            }
        };
        let mut last_rv = start.current_rv;
        for o in &start.initial {
            if matches(o) && tx.send(event_line("ADDED", o)).await.is_err() {
                return;
            }
        }
        if send_initial && bookmarks && tx.send(bookmark(&t, last_rv, true)).await.is_err() {
            return;
        }
        for ev in &start.backlog {
            if let Some(line) = render_event(&t, ev, &matches)
                && tx.send(line).await.is_err()
            {
                return;
            }
        }
        let start_rv = start.current_rv;
        let mut live = start.rx;
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    if bookmarks {
                        let _ = tx.send(bookmark(&t, last_rv, false)).await;
                    }
                    break;
                }
                _ = tick.tick(), if bookmarks => {
                    if tx.send(bookmark(&t, last_rv, false)).await.is_err() {
                        break;
                    }
                }
                _ = tx.closed() => break,
                r = live.recv() => match r {
                    Ok(ev) => {
                        if ev.rv <= start_rv {
                            continue;
                        }
                        last_rv = ev.rv;
                        if ev.group != t.group || ev.plural != t.plural {
                            continue;
                        }
                        if ns_owned.as_ref().is_some_and(|n| *n != ev.namespace) {
                            continue;
                        }
                        if let Some(line) = render_event(&t, &ev, &matches)
                            && tx.send(line).await.is_err() {
                                break;
                            }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let e = ApiError::expired(format!(
                            "too old resource version: {last_rv} (watcher fell {n} events behind and was dropped; relist required)"
                        ));
                        let _ = tx.send(event_line("ERROR", &e.to_status())).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| {
            ApiError::internal(format!("building watch response: {e}")).into_response()
        })
}

fn render_event(t: &ResourceType, ev: &Event, matches: &impl Fn(&Value) -> bool) -> Option<Bytes> {
    // Labels, name and namespace do not depend on the version, so match on the shared object.
    let now = matches(&ev.object);
    let etype = if ev.etype == "MODIFIED" {
        let before = ev.prev.as_ref().is_some_and(|p| matches(p));
        match (before, now) {
            (true, true) => "MODIFIED",
            (false, true) => "ADDED",
            (true, false) => "DELETED",
            (false, false) => return None,
        }
    } else if now {
        ev.etype
    } else {
        return None;
    };
    let same_version =
        ev.object.get("apiVersion").and_then(Value::as_str) == Some(t.api_version().as_str());
    if same_version {
        Some(event_line(etype, &ev.object))
    } else {
        Some(event_line(etype, &present(t, (*ev.object).clone())))
    }
}
