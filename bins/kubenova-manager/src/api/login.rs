//! How people sign in (`GET /api/v1/auth/providers`, public): the identity providers the
//! `kubenova` CLI may use for `kubenova login`, from the `login` sections of
//! `--oidc-config` (see [`super::oidc::LoginConfig`]). It holds no confidential secret: the
//! clients are public, as the device and PKCE flows on people's machines require; a
//! provider's installed-app or device client secret, which such providers (Google)
//! publish with every copy of an application by design, is passed on when configured.

use super::AppState;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The public path listing the identity providers people sign in with.
pub const PROVIDERS_PATH: &str = "/api/v1/auth/providers";

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(providers))
}

/// An identity provider people sign in with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginProvider {
    /// The issuer URL (its discovery document is `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The public OAuth client id to sign in with.
    pub client_id: String,
    /// The scopes to ask for.
    pub scopes: Vec<String>,
    /// A name to show (the issuer URL unless configured).
    pub display_name: String,
    /// The client secret of an installed-app or device client, which is not confidential
    /// by the provider's design but must be sent (Google); absent for a public client
    /// without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// The identity providers of this manager that offer sign-in.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginProviders {
    /// In configuration order; empty when none offers sign-in.
    pub providers: Vec<LoginProvider>,
}

/// The identity providers people sign in with from the `kubenova` CLI (no token needed).
#[utoipa::path(
    get,
    path = "/api/v1/auth/providers",
    tag = "auth",
    operation_id = "listLoginProviders",
    responses(
        (status = 200, description = "The identity providers offering sign-in", body = LoginProviders,
            example = json!({"providers": [{"issuer": "https://keycloak.example.com/realms/platform",
                "clientId": "kubenova", "scopes": ["openid", "email", "profile", "offline_access"],
                "displayName": "Example SSO"}]})),
    )
)]
async fn providers(State(st): State<AppState>) -> axum::Json<LoginProviders> {
    let providers = st
        .auth
        .identity_providers()
        .map(|oidc| {
            oidc.login_issuers()
                .map(|(issuer, login)| LoginProvider {
                    issuer: issuer.issuer.clone(),
                    client_id: login.client_id(issuer).to_string(),
                    scopes: login.scopes.clone(),
                    display_name: login
                        .display_name
                        .clone()
                        .unwrap_or_else(|| issuer.issuer.clone()),
                    client_secret: login.client_secret.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    axum::Json(LoginProviders { providers })
}
