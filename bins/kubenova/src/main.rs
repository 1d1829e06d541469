//! `kubenova`: the command-line companion of KubeNova kubeconfigs.
//!
//! `kubenova auth token --manager URL --tenant T [--project P] --role R [--cluster C]`
//! asks the manager (`POST /api/v1/tenants/{T}/token`, authenticated by the user's
//! manager token from `--token-file` or `KUBENOVA_TOKEN`) for a fresh short-lived token and
//! prints it as a `client.authentication.k8s.io/v1` `ExecCredential` on stdout, which is
//! what kubectl's exec credential plugin protocol expects. Errors go to stderr with the
//! manager's KN code, and the exit status is non-zero. TLS is verified normally (system
//! web PKI roots plus `--ca-file`); `http://` is accepted only for loopback managers.

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
    /// File holding the manager bearer token (default: the KUBENOVA_TOKEN variable).
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

fn manager_base(raw: &str) -> Result<String, Failure> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| Failure(format!("--manager {raw:?} is not a URL: {e}")))?;
    let loopback = matches!(
        url.host_str(),
        Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
    );
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
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
    Ok(raw.trim_end_matches('/').to_string())
}

fn bearer(args: &TokenArgs) -> Result<String, Failure> {
    let raw = match &args.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| Failure(format!("cannot read --token-file {}: {e}", f.display())))?,
        None => std::env::var("KUBENOVA_TOKEN").map_err(|_| {
            Failure(
                "no manager token: set KUBENOVA_TOKEN or pass --token-file (a token from POST /api/v1/tokens or your identity provider)".into(),
            )
        })?,
    };
    let token = raw.trim().to_string();
    if token.is_empty() {
        return Err(Failure("the manager token is empty".into()));
    }
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
    let bearer = bearer(&args)?;
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_seconds))
        .https_only(!base.starts_with("http://"));
    if let Some(ca) = &args.ca_file {
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
    let client = builder.build()?;
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
    let resp = client
        .post(&url)
        .bearer_auth(bearer)
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
        return Err(Failure(format!("{code}: {message}")));
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
    }
}
