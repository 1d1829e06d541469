//! The REST API: `/api/v1` over the store.
//!
//! Layout: [`error`] (KN envelope), [`authz`] (roles and scope), [`extract`] (bodies,
//! call context, pagination, ETags), [`auth`] (bearer JWT → [`authz::Principal`]),
//! [`middleware`] (request id, limits, metrics, rate limits, audit of failures,
//! idempotency replay, URI rewrite of `:action` suffixes), and one module per resource.

pub mod agent;
pub mod apikeys;
pub mod apps;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod catalog;
pub mod clusters;
pub mod config;
pub mod docs_ui;
pub mod error;
pub mod exchange;
pub mod extract;
pub mod kubeconfigs;
pub mod login;
pub mod metered;
pub mod middleware;
pub mod oidc;
pub mod ops;
pub mod projects;
pub mod slo;
pub mod tenants;
pub mod tokens;
pub mod usage;

use kubenova_api::catalog::Catalog;
use kubenova_store::Store;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Plans and policysets.
    pub catalog: Arc<Catalog>,
    /// Server configuration.
    pub config: Arc<config::ServerConfig>,
    /// Token verification and signing.
    pub auth: Arc<auth::Authenticator>,
    /// Metrics registry and rate limiters.
    pub runtime: Arc<middleware::Runtime>,
    /// Wake-ups of agents long-polling a cluster's desired state.
    pub changes: Arc<kubenova_store::notify::ChangeNotifier>,
}

/// OpenAPI document root; operations are added by each module's router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "KubeNova API",
        description = "Multi-tenant Kubernetes control plane. Every failure has the body {code, message, details, requestId}; see the KN error catalog.",
        license(name = "Apache-2.0")
    ),
    servers((url = "/", description = "this manager")),
    modifiers(&SecurityAddon),
    tags(
        (name = "system", description = "health, readiness, version, features"),
        (name = "auth", description = "tokens, API keys, token exchange and the current principal"),
        (name = "clusters", description = "registered clusters"),
        (name = "tenants", description = "tenants, their plans, quotas and owners"),
        (name = "projects", description = "projects of a tenant"),
        (name = "apps", description = "applications, revisions and workflow runs"),
        (name = "catalog", description = "plans and policysets"),
        (name = "usage", description = "hourly usage"),
        (name = "audit", description = "audit events"),
        (name = "kubeconfigs", description = "exec tokens, issued credentials, revocation, signing keys and OIDC discovery"),
        (name = "agent", description = "the in-cluster operator's channel (agent credential only)")
    )
)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "agentCredential",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("kna_<cluster id>_<secret>")
                    .description(Some(
                        "The per-cluster agent credential from the kubenova-agent Secret",
                    ))
                    .build(),
            ),
        );
    }
}

/// All routes with their OpenAPI operations.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::routes())
        .merge(tokens::routes())
        .merge(apikeys::routes())
        .merge(exchange::routes())
        .merge(login::routes())
        .merge(clusters::routes())
        .merge(tenants::routes())
        .merge(projects::routes())
        .merge(apps::routes())
        .merge(catalog::routes())
        .merge(usage::routes())
        .merge(audit::routes())
        .merge(kubeconfigs::routes())
        .merge(agent::routes())
}

/// The generated OpenAPI document (served at `/api/v1/openapi.json`, snapshot in `docs/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The complete HTTP application: routes, OpenAPI, docs page and every middleware.
pub fn router(state: AppState) -> axum::Router {
    let (routes, spec) = api_router().split_for_parts();
    middleware::apply(routes, spec, state)
}
