//! Signing in with the organisation's identity provider: the OAuth 2.0 device
//! authorization grant (RFC 8628) for terminals, the authorization code grant with PKCE
//! (RFC 7636) and a loopback redirect (RFC 8252) for browsers, refresh, and revocation
//! (RFC 7009) at logout.
//!
//! The protocol side is the `oauth2` crate (its requests, PKCE, device polling with
//! `slow_down`, revocation), over the same reqwest/rustls client as every other request
//! of the CLI. The client is public: no secret, or the non-confidential secret of an
//! installed-app or device client that providers such as Google issue and require. Such
//! a secret is sent in the request body (`client_secret_post`, RFC 6749 section 2.3.1)
//! on the device authorization request, every token request and revocation. The bearer
//! sent to the manager is the provider's ID token, whose `aud` is the client id the
//! manager trusts.

use crate::cache::Login;
use crate::{Failure, clean, is_loopback};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, ExtraTokenFields, PkceCodeChallenge, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardDeviceAuthorizationResponse, StandardRevocableToken,
    StandardTokenResponse, TokenResponse as _, TokenUrl,
};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Refresh when the ID token expires within this.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// The largest redirect request the loopback listener reads.
const MAX_REDIRECT_REQUEST: usize = 16 * 1024;

/// The `id_token` of a token response (OpenID Connect Core, section 3.1.3.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdTokenField {
    /// The ID token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

/// A token response with the ID token.
pub type Tokens = StandardTokenResponse<IdTokenField, BasicTokenType>;

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

/// A provider to sign in with, as the manager lists it (`GET /api/v1/auth/providers`).
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    /// Issuer URL.
    pub issuer: String,
    /// Public client id.
    pub client_id: String,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Shown to people.
    #[serde(default)]
    pub display_name: String,
    /// The installed-app or device client's secret, when the provider issues one (not
    /// confidential by the provider's design, but sent; never printed).
    #[serde(default)]
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the client secret.
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("display_name", &self.display_name)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    issuer: String,
    token_endpoint: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
    #[serde(default)]
    revocation_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// Refuses anything but `https://` (or `http://` on a loopback address), user info and
/// fragments.
pub fn check_url(what: &str, raw: &str) -> Result<reqwest::Url, Failure> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| Failure(format!("{what} {:?} is not a URL: {e}", clean(raw))))?;
    let ok = match url.scheme() {
        "https" => true,
        "http" => is_loopback(&url),
        _ => false,
    };
    if !ok {
        return Err(Failure(format!(
            "{what} {:?} must be an https:// URL (http:// only on a loopback address)",
            clean(raw)
        )));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(Failure(format!(
            "{what} {:?} must not carry user info or a fragment",
            clean(raw)
        )));
    }
    Ok(url)
}

/// The providers the manager at `base` offers.
pub async fn providers(http: &reqwest::Client, base: &str) -> Result<Vec<Provider>, Failure> {
    #[derive(Deserialize)]
    struct List {
        providers: Vec<Provider>,
    }
    let url = format!("{base}/api/v1/auth/providers");
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| Failure(format!("cannot reach the manager at {base}: {e}")))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(Failure(format!(
            "the manager at {base} does not offer sign-in (no /api/v1/auth/providers): upgrade it, or pass --issuer and --client-id"
        )));
    }
    if !status.is_success() {
        return Err(Failure(format!("GET {url}: HTTP {}", status.as_u16())));
    }
    let list: List = resp
        .json()
        .await
        .map_err(|e| Failure(format!("GET {url}: not a list of providers: {e}")))?;
    Ok(list.providers)
}

/// Reads the provider's discovery document and checks its endpoints.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Endpoints, Failure> {
    check_url("the issuer", issuer)?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| Failure(format!("cannot reach the identity provider at {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(Failure(format!(
            "GET {url}: HTTP {}",
            resp.status().as_u16()
        )));
    }
    let e: Endpoints = resp.json().await.map_err(|e| {
        Failure(format!(
            "{url}: not an OpenID Connect discovery document: {e}"
        ))
    })?;
    if e.issuer != issuer {
        return Err(Failure(format!(
            "{url} names the issuer {:?}, not {issuer:?}",
            clean(&e.issuer)
        )));
    }
    check_url("the token endpoint", &e.token_endpoint)?;
    for (what, u) in [
        ("the authorization endpoint", &e.authorization_endpoint),
        (
            "the device authorization endpoint",
            &e.device_authorization_endpoint,
        ),
        ("the revocation endpoint", &e.revocation_endpoint),
    ] {
        if let Some(u) = u {
            check_url(what, u)?;
        }
    }
    Ok(e)
}

/// The OAuth client: public, or with its installed-app secret sent in the request body
/// (`client_secret_post`; the crate's default, HTTP Basic, form-encodes the id and secret
/// first, which some providers decode differently).
fn client(client_id: &str, client_secret: Option<&str>) -> OAuthClient {
    let c =
        OAuthClient::new(ClientId::new(client_id.to_string())).set_auth_type(AuthType::RequestBody);
    match client_secret {
        Some(s) => c.set_client_secret(ClientSecret::new(s.to_string())),
        None => c,
    }
}

fn token_url(raw: &str) -> Result<TokenUrl, Failure> {
    TokenUrl::new(raw.to_string()).map_err(|e| Failure(format!("token endpoint: {e}")))
}

/// A readable account of an OAuth failure: the provider's error code and description
/// (never a response body, which may hold tokens).
fn oauth_failure<RE, T>(what: &str, e: RequestTokenError<RE, T>) -> Failure
where
    RE: std::error::Error + 'static,
    T: oauth2::ErrorResponse + serde::Serialize + 'static,
{
    match e {
        RequestTokenError::ServerResponse(r) => {
            let v = serde_json::to_value(&r).unwrap_or_default();
            let code = v["error"].as_str().unwrap_or("error");
            let mut msg = match v["error_description"].as_str() {
                Some(d) => format!("{what}: {} ({})", clean(code), clean(d)),
                None => format!("{what}: {}", clean(code)),
            };
            if code == "invalid_client" {
                msg.push_str(INVALID_CLIENT_HINT);
            }
            Failure(msg)
        }
        RequestTokenError::Request(e) => {
            let mut msg = format!("{what}: request failed: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Failure(msg)
        }
        RequestTokenError::Parse(e, _body) => Failure(format!(
            "{what}: the provider's answer does not parse ({})",
            e.path()
        )),
        RequestTokenError::Other(m) => Failure(format!("{what}: {}", clean(&m))),
    }
}

/// What to do when the provider does not accept the client.
const INVALID_CLIENT_HINT: &str = ": the provider does not accept the client as sent; if it issued a client secret for this installed-app or device client (Google does), the issuer's `login.clientSecret` in the manager's --oidc-config must hold it (or pass --client-secret-file with --client-id), and `kubenova login` must be run again";

/// The time now, in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The `exp` of a JWT, read without verifying it (the manager verifies; this only says
/// when to refresh).
pub fn jwt_exp(token: &str) -> Option<i64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

/// A login from a token response; `previous` keeps the refresh token when the provider
/// does not rotate it.
fn login_from(
    tokens: &Tokens,
    provider: &Provider,
    endpoints: (&str, Option<&str>),
    previous_refresh: Option<&str>,
) -> Result<Login, Failure> {
    let id_token = tokens
        .extra_fields()
        .id_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Failure(format!(
                "{} answered no ID token: the login's scopes must hold openid",
                provider.issuer
            ))
        })?;
    let expires_at = jwt_exp(&id_token)
        .or_else(|| tokens.expires_in().map(|d| now() + d.as_secs() as i64))
        .unwrap_or_else(now);
    Ok(Login {
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        client_secret: provider.client_secret.clone(),
        scopes: provider.scopes.clone(),
        token_endpoint: endpoints.0.to_string(),
        revocation_endpoint: endpoints.1.map(str::to_string),
        id_token,
        expires_at,
        refresh_token: tokens
            .refresh_token()
            .map(|r| r.secret().clone())
            .or_else(|| previous_refresh.map(str::to_string)),
        subject: String::new(),
    })
}

/// Tells the person where to go, on stderr.
fn say(msg: &str) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{msg}");
    let _ = err.flush();
}

/// The device authorization grant: prints where to go and the code, then polls the token
/// endpoint (honouring `interval` and `slow_down`) until the person decides or the code
/// expires.
pub async fn device_flow(
    http: &reqwest::Client,
    provider: &Provider,
    e: &Endpoints,
) -> Result<Login, Failure> {
    let device_url = e.device_authorization_endpoint.as_deref().ok_or_else(|| {
        Failure(format!(
            "{} has no device authorization endpoint: sign in with --browser, or enable the device flow for the client",
            provider.issuer
        ))
    })?;
    let client = client(&provider.client_id, provider.client_secret.as_deref())
        .set_device_authorization_url(
            DeviceAuthorizationUrl::new(device_url.to_string())
                .map_err(|e| Failure(format!("device authorization endpoint: {e}")))?,
        )
        .set_token_uri(token_url(&e.token_endpoint)?);
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(provider.scopes.iter().cloned().map(Scope::new))
        .request_async(http)
        .await
        .map_err(|e| oauth_failure("the device authorization request failed", e))?;
    let mut msg = format!(
        "To sign in to {}, open {} and enter the code {}",
        clean(&provider.display_name),
        clean(details.verification_uri()),
        clean(details.user_code().secret()),
    );
    if let Some(c) = details.verification_uri_complete() {
        msg.push_str(&format!("\n(or open {})", clean(c.secret())));
    }
    msg.push_str("\nWaiting for you to approve the request…");
    say(&msg);
    let tokens = client
        .exchange_device_access_token(&details)
        .request_async(http, tokio::time::sleep, None)
        .await
        .map_err(|err| match &err {
            RequestTokenError::ServerResponse(r) => match r.error() {
                oauth2::DeviceCodeErrorResponseType::AccessDenied => Failure(format!(
                    "the sign-in request was denied at {}",
                    provider.issuer
                )),
                oauth2::DeviceCodeErrorResponseType::ExpiredToken => Failure(
                    "the code expired before the request was approved: run `kubenova login` again"
                        .into(),
                ),
                _ => oauth_failure("signing in failed", err),
            },
            _ => oauth_failure("signing in failed", err),
        })?;
    login_from(
        &tokens,
        provider,
        (&e.token_endpoint, e.revocation_endpoint.as_deref()),
        None,
    )
}

/// Opens `url` with `xdg-open` or `open` when one is on the PATH (and never waits for it).
fn open_browser(url: &str) {
    let Some(path) = std::env::var_os("PATH") else {
        return;
    };
    for opener in ["xdg-open", "open"] {
        if let Some(exe) = std::env::split_paths(&path)
            .map(|d| d.join(opener))
            .find(|p| p.is_file())
        {
            let spawned = std::process::Command::new(exe)
                .arg(url)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            if let Ok(mut child) = spawned {
                // Reaped in the background; its outcome does not matter (the URL is printed).
                std::thread::spawn(move || child.wait());
            }
            return;
        }
    }
}

/// What the browser brought back to the loopback listener.
enum Redirect {
    Code(String),
    Error(String),
}

/// Answers the browser with a small page.
async fn answer(stream: &mut tokio::net::TcpStream, status: &str, text: &str) {
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>kubenova</title><p>{}</p>",
        text.replace('&', "&amp;").replace('<', "&lt;")
    );
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads one request head (bounded in size and time); its request target.
async fn request_target(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(());
            }
            if buf.len() > MAX_REDIRECT_REQUEST {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next()?.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Some(target.to_string()),
        _ => None,
    }
}

/// Waits for the redirect to `/callback` and checks its `state`.
async fn wait_for_redirect(
    listener: &tokio::net::TcpListener,
    state: &str,
) -> Result<Redirect, Failure> {
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|e| Failure(format!("the loopback listener failed: {e}")))?;
        let Some(target) = request_target(&mut stream).await else {
            answer(&mut stream, "400 Bad Request", "Not a sign-in redirect.").await;
            continue;
        };
        let Ok(url) = reqwest::Url::parse(&format!("http://127.0.0.1{target}")) else {
            answer(&mut stream, "400 Bad Request", "Not a sign-in redirect.").await;
            continue;
        };
        if url.path() != "/callback" {
            // A browser also asks for /favicon.ico and the like.
            answer(&mut stream, "404 Not Found", "Not found.").await;
            continue;
        }
        let mut got_state = None;
        let mut code = None;
        let mut error = None;
        let mut description = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "state" => got_state = Some(v.into_owned()),
                "code" => code = Some(v.into_owned()),
                "error" => error = Some(v.into_owned()),
                "error_description" => description = Some(v.into_owned()),
                _ => {}
            }
        }
        // Constant-time enough for a one-time random value that never leaves this machine;
        // what matters is that a redirect not answering our request is refused.
        if got_state.as_deref() != Some(state) {
            answer(
                &mut stream,
                "400 Bad Request",
                "Sign-in refused: this redirect does not answer the request kubenova made (state mismatch).",
            )
            .await;
            return Err(Failure(
                "sign-in refused: the redirect's state does not match the request (was the sign-in page opened by someone else?); run `kubenova login --browser` again".into(),
            ));
        }
        if let Some(e) = error {
            answer(&mut stream, "200 OK", "Sign-in failed; see the terminal.").await;
            let d = description
                .map(|d| format!(" ({})", clean(&d)))
                .unwrap_or_default();
            return Ok(Redirect::Error(format!("{}{d}", clean(&e))));
        }
        let Some(code) = code else {
            answer(
                &mut stream,
                "400 Bad Request",
                "The redirect holds no code.",
            )
            .await;
            return Err(Failure("the redirect holds no authorization code".into()));
        };
        answer(
            &mut stream,
            "200 OK",
            "Signed in to kubenova. You may close this window.",
        )
        .await;
        return Ok(Redirect::Code(code));
    }
}

/// The authorization code grant with PKCE (S256) and a loopback redirect
/// (`http://127.0.0.1:<port>/callback`).
pub async fn browser_flow(
    http: &reqwest::Client,
    provider: &Provider,
    e: &Endpoints,
    wait: Duration,
) -> Result<Login, Failure> {
    let auth_url = e.authorization_endpoint.as_deref().ok_or_else(|| {
        Failure(format!(
            "{} has no authorization endpoint: sign in without --browser (device flow)",
            provider.issuer
        ))
    })?;
    if let Some(methods) = &e.code_challenge_methods_supported
        && !methods.iter().any(|m| m == "S256")
    {
        return Err(Failure(format!(
            "{} does not support PKCE with S256: sign in without --browser (device flow)",
            provider.issuer
        )));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Failure(format!("cannot listen on 127.0.0.1 for the redirect: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Failure(format!("the loopback listener: {e}")))?
        .port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let client = client(&provider.client_id, provider.client_secret.as_deref())
        .set_auth_uri(
            AuthUrl::new(auth_url.to_string())
                .map_err(|e| Failure(format!("authorization endpoint: {e}")))?,
        )
        .set_token_uri(token_url(&e.token_endpoint)?)
        .set_redirect_uri(
            RedirectUrl::new(redirect.clone()).map_err(|e| Failure(format!("redirect: {e}")))?,
        );
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(provider.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        .url();
    say(&format!(
        "To sign in to {}, open this URL in a browser:\n  {url}\nWaiting for the browser (redirect to {redirect})…",
        clean(&provider.display_name)
    ));
    open_browser(url.as_str());
    let got = tokio::time::timeout(wait, wait_for_redirect(&listener, state.secret()))
        .await
        .map_err(|_| {
            Failure(format!(
                "no sign-in within {} s: run `kubenova login --browser` again (or sign in without --browser)",
                wait.as_secs()
            ))
        })??;
    drop(listener);
    let code = match got {
        Redirect::Code(c) => c,
        Redirect::Error(e) => {
            return Err(Failure(format!(
                "the identity provider refused the sign-in: {e}"
            )));
        }
    };
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(|e| oauth_failure("exchanging the authorization code failed", e))?;
    login_from(
        &tokens,
        provider,
        (&e.token_endpoint, e.revocation_endpoint.as_deref()),
        None,
    )
}

/// A fresh ID token for `login` with its refresh token (the rotated refresh token, when
/// the provider rotates it, is in the answer).
pub async fn refresh(http: &reqwest::Client, login: &Login) -> Result<Login, Failure> {
    let rt = login
        .refresh_token
        .as_deref()
        .ok_or_else(|| Failure("the login has no refresh token".into()))?;
    check_url("the token endpoint", &login.token_endpoint)?;
    let client = client(&login.client_id, login.client_secret.as_deref())
        .set_token_uri(token_url(&login.token_endpoint)?);
    let tokens = client
        .exchange_refresh_token(&RefreshToken::new(rt.to_string()))
        .request_async(http)
        .await
        .map_err(|e| oauth_failure("refreshing the sign-in failed", e))?;
    let provider = Provider {
        issuer: login.issuer.clone(),
        client_id: login.client_id.clone(),
        scopes: login.scopes.clone(),
        display_name: String::new(),
        client_secret: login.client_secret.clone(),
    };
    let mut fresh = login_from(
        &tokens,
        &provider,
        (&login.token_endpoint, login.revocation_endpoint.as_deref()),
        Some(rt),
    )?;
    fresh.subject = login.subject.clone();
    Ok(fresh)
}

/// Revokes the login's refresh token at the provider (RFC 7009). Sent directly rather
/// than through `oauth2`, which refuses `http://` revocation endpoints even on loopback.
pub async fn revoke(http: &reqwest::Client, login: &Login) -> Result<(), Failure> {
    let Some(rt) = &login.refresh_token else {
        return Ok(());
    };
    let Some(url) = &login.revocation_endpoint else {
        return Err(Failure(format!(
            "{} has no revocation endpoint: the refresh token stays valid until it expires",
            login.issuer
        )));
    };
    let url = check_url("the revocation endpoint", url)?;
    let mut form = vec![
        ("token", rt.as_str()),
        ("token_type_hint", "refresh_token"),
        ("client_id", login.client_id.as_str()),
    ];
    if let Some(secret) = &login.client_secret {
        form.push(("client_secret", secret.as_str()));
    }
    let resp = http
        .post(url.clone())
        .form(&form)
        .send()
        .await
        .map_err(|e| {
            Failure(format!(
                "cannot reach the revocation endpoint {url}: {}",
                e.without_url()
            ))
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body["error"].as_str().map(clean).unwrap_or_default();
    let hint = if code == "invalid_client" {
        INVALID_CLIENT_HINT
    } else {
        ""
    };
    Err(Failure(format!(
        "revoking the refresh token at {url} failed: HTTP {} {code}{hint}",
        status.as_u16()
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_must_be_https_or_loopback() {
        assert!(check_url("x", "https://idp.example.com").is_ok());
        assert!(check_url("x", "http://127.0.0.1:5556/dex").is_ok());
        assert!(check_url("x", "http://[::1]:8080").is_ok());
        assert!(check_url("x", "http://idp.example.com").is_err());
        assert!(check_url("x", "https://u:p@idp.example.com").is_err());
        assert!(check_url("x", "ftp://idp.example.com").is_err());
    }

    #[test]
    fn jwt_exp_is_read_without_verification() {
        use base64::Engine as _;
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let t = format!("{}.{}.sig", b("{}"), b(r#"{"exp": 1700000000}"#));
        assert_eq!(jwt_exp(&t), Some(1_700_000_000));
        assert_eq!(jwt_exp("opaque"), None);
    }
}
