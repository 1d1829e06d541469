//! `kubenova`: the command-line companion of KubeNova kubeconfigs.
//!
//! - `kubenova login --manager URL [--browser]` signs the person in with the identity
//!   provider the manager names (`GET /api/v1/auth/providers`): the OAuth 2.0 device
//!   authorization grant by default (a code to enter on any device), or the authorization
//!   code grant with PKCE and a loopback redirect (`--browser`). The tokens are kept in the
//!   user's own login cache (see [`cache`]), one entry per manager.
//! - `kubenova auth token --manager URL --tenant T [--project P] --role R [--cluster C]`
//!   asks the manager (`POST /api/v1/tenants/{T}/token`, authenticated by the user's
//!   manager token from `--token-file`, `KUBENOVA_TOKEN`, or else the login for the
//!   manager, refreshed when its ID token expires within a minute) for a fresh short-lived
//!   token and prints it as a `client.authentication.k8s.io/v1` `ExecCredential` on stdout,
//!   which is what kubectl's exec credential plugin protocol expects.
//! - `kubenova logout --manager URL` revokes the login's refresh token at the provider and
//!   deletes the login.
//!
//! Errors go to stderr (with the manager's KN code), and the exit status is non-zero. TLS
//! is verified normally (system web PKI roots plus `--ca-file`); `http://` is accepted only
//! for loopback managers and providers. Tokens are never printed, except the
//! `ExecCredential` of `auth token`.

mod cache;
mod login;

use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing::Instrument as _;

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "kubenova", version, about = "KubeNova command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Top,
    /// Logging (`--log-format`; `KUBENOVA_LOG`, default `warn`; `KUBENOVA_LOG_FORMAT`).
    #[command(flatten)]
    log: kubenova_telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Authentication helpers.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Sign in with your identity provider (device code, or --browser) and keep the login.
    Login(LoginArgs),
    /// Revoke and delete the login for a manager.
    Logout(LogoutArgs),
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// The manager's URL, e.g. `https://kubenova.example.com`.
    #[arg(long)]
    manager: String,
    /// The identity provider's issuer URL (default: the one the manager offers; needed
    /// when it offers several).
    #[arg(long)]
    issuer: Option<String>,
    /// The OAuth client id (with --issuer: sign in without asking the manager).
    #[arg(long, requires = "issuer")]
    client_id: Option<String>,
    /// A file holding the client secret of an installed-app or device client, for a
    /// provider that issues one and requires it although it is not confidential (Google's
    /// "TVs and Limited Input devices" and "Desktop app" clients); with --client-id.
    #[arg(long, requires = "client_id")]
    client_secret_file: Option<PathBuf>,
    /// A scope to ask for, repeatable (with --client-id; default openid, email, profile,
    /// offline_access).
    #[arg(long = "scope", requires = "client_id")]
    scopes: Vec<String>,
    /// Sign in in a browser (authorization code with PKCE, redirect to 127.0.0.1) instead
    /// of with a device code.
    #[arg(long)]
    browser: bool,
    /// How long to wait for the sign-in (browser redirect; the device code's own expiry
    /// bounds the device flow).
    #[arg(long, default_value_t = 300)]
    login_timeout_seconds: u64,
    /// Extra CA certificate (PEM) trusted for the manager's and the provider's TLS.
    #[arg(long, env = "KUBENOVA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Request timeout.
    #[arg(long, default_value_t = 30)]
    timeout_seconds: u64,
}

#[derive(Debug, Args)]
struct LogoutArgs {
    /// The manager's URL, as given to `kubenova login`.
    #[arg(long)]
    manager: String,
    /// Extra CA certificate (PEM) trusted for the provider's TLS.
    #[arg(long, env = "KUBENOVA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Request timeout.
    #[arg(long, default_value_t = 30)]
    timeout_seconds: u64,
}

#[derive(Debug, Subcommand)]
enum AuthCmd {
    /// Print a fresh ExecCredential for kubectl (the exec plugin of KubeNova kubeconfigs).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The manager's URL, e.g. `https://kubenova.example.com`.
    #[arg(long)]
    manager: String,
    /// Tenant id.
    #[arg(long)]
    tenant: String,
    /// Project id, for a project-scoped token.
    #[arg(long)]
    project: Option<String>,
    /// owner, developer or viewer.
    #[arg(long)]
    role: String,
    /// Cluster id (must be the tenant's cluster).
    #[arg(long)]
    cluster: Option<String>,
    /// Token lifetime, e.g. 10m (default: the manager's --exec-token-ttl).
    #[arg(long)]
    ttl: Option<String>,
    /// File holding the manager bearer token (default: the KUBENOVA_TOKEN variable, else
    /// the login of `kubenova login`).
    #[arg(long, env = "KUBENOVA_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) trusted for the manager's TLS certificate.
    #[arg(long, env = "KUBENOVA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Request timeout.
    #[arg(long, default_value_t = 30)]
    timeout_seconds: u64,
}

/// A failure with the message printed to stderr.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// True for `localhost` and loopback addresses.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// `s` without control characters (text from a server, before it reaches a terminal).
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn manager_base(raw: &str) -> Result<String, Failure> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| Failure(format!("--manager {raw:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        _ => {
            return Err(Failure(format!(
                "--manager {raw:?} must be an https:// URL (http:// only for localhost): the request carries your token"
            )));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Failure(
            "--manager must not carry user info; pass the token with --token-file or KUBENOVA_TOKEN".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Failure(format!(
            "--manager {raw:?} must not carry a query or fragment"
        )));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// The HTTP client of every request: TLS verified (system roots plus `ca_file`), no
/// redirects followed (a redirect must not carry a token or code elsewhere).
fn http_client(
    ca_file: Option<&PathBuf>,
    timeout_seconds: u64,
) -> Result<reqwest::Client, Failure> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_seconds))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| Failure(format!("cannot read --ca-file {}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            Failure(format!(
                "--ca-file {} is not a PEM certificate: {e}",
                ca.display()
            ))
        })?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

/// Where the manager token comes from.
enum Bearer {
    /// `--token-file` or `KUBENOVA_TOKEN`.
    Given(String),
    /// The login of `kubenova login`.
    Login(String),
}

impl Bearer {
    fn token(&self) -> &str {
        match self {
            Bearer::Given(t) | Bearer::Login(t) => t,
        }
    }
}

fn given_bearer(args: &TokenArgs) -> Result<Option<String>, Failure> {
    let raw = match &args.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| Failure(format!("cannot read --token-file {}: {e}", f.display())))?,
        None => match std::env::var("KUBENOVA_TOKEN") {
            Ok(t) => t,
            Err(_) => return Ok(None),
        },
    };
    let token = raw.trim().to_string();
    if token.is_empty() {
        return Err(Failure("the manager token is empty".into()));
    }
    Ok(Some(token))
}

/// The hint of every failure that a new login fixes.
fn login_hint(base: &str) -> String {
    format!("run `kubenova login --manager {base}` (or set KUBENOVA_TOKEN or --token-file)")
}

/// The ID token of the login for `base`, refreshed (and the rotated refresh token saved)
/// when it expires within [`login::REFRESH_BEFORE`]. Several `kubenova` processes may
/// refresh at once (kubectl runs plugins in parallel): the refresh happens under the cache
/// lock, after reading the cache again, so only the first one refreshes.
async fn login_bearer(http: &reqwest::Client, base: &str) -> Result<String, Failure> {
    let cache = cache::Cache::locate()?;
    let fresh =
        |l: &cache::Login| l.expires_at - login::now() > login::REFRESH_BEFORE.as_secs() as i64;
    let Some(found) = cache.read()?.logins.remove(base) else {
        return Err(Failure(format!(
            "not signed in to {base}: {}",
            login_hint(base)
        )));
    };
    if fresh(&found) {
        return Ok(found.id_token);
    }
    let lock = cache.lock()?;
    let mut all = cache.read()?;
    let Some(current) = all.logins.get(base).cloned() else {
        return Err(Failure(format!(
            "not signed in to {base}: {}",
            login_hint(base)
        )));
    };
    if fresh(&current) {
        return Ok(current.id_token);
    }
    if current.refresh_token.is_none() {
        return Err(Failure(format!(
            "the sign-in to {base} has expired (no refresh token): {}",
            login_hint(base)
        )));
    }
    tracing::debug!(issuer = %current.issuer, "refreshing the sign-in");
    let renewed = login::refresh(http, &current).await.map_err(|Failure(e)| {
        Failure(format!(
            "the sign-in to {base} has expired and could not be refreshed ({e}): {}",
            login_hint(base)
        ))
    })?;
    let token = renewed.id_token.clone();
    all.logins.insert(base.to_string(), renewed);
    cache.write(&lock, &all)?;
    Ok(token)
}

fn is_uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

async fn token(args: TokenArgs) -> Result<String, Failure> {
    let base = manager_base(&args.manager)?;
    if !is_uuid_like(&args.tenant) {
        return Err(Failure(format!(
            "--tenant {:?} must be the tenant id (a UUID, as written by the manager into the kubeconfig)",
            args.tenant
        )));
    }
    let http = http_client(args.ca_file.as_ref(), args.timeout_seconds)?;
    let bearer = match given_bearer(&args)? {
        Some(t) => Bearer::Given(t),
        None => Bearer::Login(login_bearer(&http, &base).await?),
    };
    let mut body = serde_json::json!({"role": args.role});
    if let Some(p) = &args.project {
        body["project"] = serde_json::json!(p);
    }
    if let Some(c) = &args.cluster {
        body["cluster"] = serde_json::json!(c);
    }
    if let Some(t) = &args.ttl {
        body["ttl"] = serde_json::json!(t);
    }
    let url = format!("{base}/api/v1/tenants/{}/token", args.tenant);
    tracing::debug!(%url, role = %args.role, project = ?args.project, cluster = ?args.cluster, "requesting a token");
    // The caller's trace continues in the manager (when traces are exported).
    let mut trace = reqwest::header::HeaderMap::new();
    kubenova_telemetry::propagation::inject_current(&mut trace);
    let resp = http
        .post(&url)
        .bearer_auth(bearer.token())
        .headers(trace)
        .json(&body)
        .send()
        .await
        .map_err(|e| Failure(format!("cannot reach the manager at {base}: {e}")))?;
    let status = resp.status();
    tracing::debug!(%status, "the manager answered");
    let text = resp.text().await?;
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let code = json["code"].as_str().unwrap_or("KN-???");
        let message = json["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        if status == reqwest::StatusCode::UNAUTHORIZED && matches!(bearer, Bearer::Login(_)) {
            return Err(Failure(format!(
                "{code}: {}: {}",
                clean(&message),
                login_hint(&base)
            )));
        }
        return Err(Failure(format!("{code}: {}", clean(&message))));
    }
    let ok = json["apiVersion"] == "client.authentication.k8s.io/v1"
        && json["kind"] == "ExecCredential"
        && json["status"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        && json["status"]["expirationTimestamp"].as_str().is_some();
    if !ok {
        return Err(Failure(
            "the manager's answer is not a client.authentication.k8s.io/v1 ExecCredential".into(),
        ));
    }
    Ok(text)
}

/// Most characters of a client secret read from `--client-secret-file`.
const MAX_CLIENT_SECRET: usize = 256;

/// The client secret in `path`, without its trailing line break (never repeated in errors).
fn read_client_secret(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure(format!("--client-secret-file {}: {e}", path.display())))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty()
        || secret.chars().count() > MAX_CLIENT_SECRET
        || secret.chars().any(char::is_control)
    {
        return Err(Failure(format!(
            "--client-secret-file {}: the client secret must be one line of 1 to {MAX_CLIENT_SECRET} characters without control characters",
            path.display()
        )));
    }
    Ok(secret.to_string())
}

/// `kubenova login`: picks the provider, signs in, checks the token with the manager
/// (`GET /api/v1/me`) and saves the login; the line for stdout.
async fn login_cmd(args: LoginArgs) -> Result<String, Failure> {
    let base = manager_base(&args.manager)?;
    let http = http_client(args.ca_file.as_ref(), args.timeout_seconds)?;
    // A cache that cannot be used is refused before anyone signs in.
    let cache = cache::Cache::locate()?;
    cache.read()?;
    let provider = match (&args.issuer, &args.client_id) {
        (Some(issuer), Some(client_id)) => login::Provider {
            issuer: issuer.clone(),
            client_id: client_id.clone(),
            client_secret: args
                .client_secret_file
                .as_deref()
                .map(read_client_secret)
                .transpose()?,
            scopes: if args.scopes.is_empty() {
                ["openid", "email", "profile", "offline_access"]
                    .map(String::from)
                    .to_vec()
            } else {
                args.scopes.clone()
            },
            display_name: issuer.clone(),
        },
        (issuer, _) => {
            let offered = login::providers(&http, &base).await?;
            let names = || {
                offered
                    .iter()
                    .map(|p| clean(&p.issuer))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match issuer {
                Some(i) => offered
                    .iter()
                    .find(|p| &p.issuer == i)
                    .cloned()
                    .ok_or_else(|| {
                        Failure(format!(
                            "the manager at {base} offers no sign-in with {i:?}; it offers: [{}]",
                            names()
                        ))
                    })?,
                None if offered.len() == 1 => offered[0].clone(),
                None if offered.is_empty() => {
                    return Err(Failure(format!(
                        "the manager at {base} offers no sign-in: its identity providers have no `login` section (docs: identity, \"Signing in from a terminal\")"
                    )));
                }
                None => {
                    return Err(Failure(format!(
                        "the manager at {base} offers several identity providers: pass --issuer, one of [{}]",
                        names()
                    )));
                }
            }
        }
    };
    let mut provider = provider;
    if provider.display_name.is_empty() {
        provider.display_name = provider.issuer.clone();
    }
    let endpoints = login::discover(&http, &provider.issuer).await?;
    let mut signed_in = if args.browser {
        login::browser_flow(
            &http,
            &provider,
            &endpoints,
            Duration::from_secs(args.login_timeout_seconds),
        )
        .await?
    } else {
        login::device_flow(&http, &provider, &endpoints).await?
    };
    // The token must work with the manager before it is kept.
    let me = http
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(&signed_in.id_token)
        .send()
        .await
        .map_err(|e| Failure(format!("cannot reach the manager at {base}: {e}")))?;
    let status = me.status();
    let json: serde_json::Value = me.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let code = json["code"].as_str().unwrap_or("KN-???");
        let message = json["message"]
            .as_str()
            .map(clean)
            .unwrap_or_else(|| format!("HTTP {status}"));
        return Err(Failure(format!(
            "signed in at {}, but the manager refuses the token: {code}: {message}",
            provider.issuer
        )));
    }
    signed_in.subject = json["subject"].as_str().map(clean).unwrap_or_default();
    let lock = cache.lock()?;
    let mut all = cache.read()?;
    all.logins.insert(base.clone(), signed_in.clone());
    cache.write(&lock, &all)?;
    drop(lock);
    // The strings of a list in the manager's answer, made safe for the terminal.
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).map(clean).collect())
            .unwrap_or_default()
    };
    let groups = strings(&json["groups"]);
    let roles = strings(&json["roles"]);
    let mut line = format!("Signed in to {base} as {}", signed_in.subject);
    if !groups.is_empty() {
        line.push_str(&format!(" (groups: {})", groups.join(", ")));
    }
    if !roles.is_empty() {
        line.push_str(&format!(" (platform roles: {})", roles.join(", ")));
    }
    line.push_str(&format!(
        ".\nThe login is kept in {} and refreshed as needed.",
        cache.path().display()
    ));
    Ok(line)
}

/// `kubenova logout`: revokes the refresh token (a warning when that fails) and deletes
/// the login either way.
async fn logout_cmd(args: LogoutArgs) -> Result<String, Failure> {
    let base = manager_base(&args.manager)?;
    let http = http_client(args.ca_file.as_ref(), args.timeout_seconds)?;
    let cache = cache::Cache::locate()?;
    let lock = cache.lock()?;
    let mut all = cache.read()?;
    let Some(gone) = all.logins.remove(&base) else {
        return Ok(format!("Not signed in to {base}."));
    };
    if let Err(Failure(e)) = login::revoke(&http, &gone).await {
        let _ = writeln!(
            std::io::stderr(),
            "kubenova: warning: {e}; the login is deleted from this machine anyway"
        );
    }
    cache.write(&lock, &all)?;
    Ok(format!("Signed out of {base}."))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet by default: kubectl shows an exec plugin's stderr to its user.
    let mut telemetry = match kubenova_telemetry::init(&cli.log, "warn", "kubenova") {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "kubenova: {e}");
            return ExitCode::from(2);
        }
    };
    let res = match cli.command {
        Top::Auth(AuthCmd::Token(args)) => {
            let span = tracing::info_span!("kubenova auth token", otel.kind = "client");
            token(args).instrument(span).await
        }
        Top::Login(args) => {
            let span = tracing::info_span!("kubenova login", otel.kind = "client");
            login_cmd(args).instrument(span).await
        }
        Top::Logout(args) => {
            let span = tracing::info_span!("kubenova logout", otel.kind = "client");
            logout_cmd(args).instrument(span).await
        }
    };
    telemetry.shutdown();
    match res {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(out.as_bytes())
                .and_then(|_| stdout.write_all(b"\n"))
                .is_err()
            {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(Failure(m)) => {
            let _ = writeln!(std::io::stderr(), "kubenova: {m}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_urls() {
        assert!(manager_base("https://kubenova.example.com/").is_ok());
        assert!(manager_base("http://127.0.0.1:8080").is_ok());
        assert!(manager_base("http://localhost:8080").is_ok());
        assert!(manager_base("http://kubenova.example.com").is_err());
        assert!(manager_base("https://u:p@kubenova.example.com").is_err());
        assert!(manager_base("kubenova.example.com").is_err());
        assert!(manager_base("http://[::1]:8080").is_ok());
        assert!(manager_base("http://127.0.0.2:8080").is_ok());
        assert!(manager_base("https://kubenova.example.com/?x=1").is_err());
    }
}
