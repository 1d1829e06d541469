//! `kubenova-manager admin-token`: recovers admin access on the manager host.
//!
//! The bootstrap admin token is minted once, on the first start, and expires after
//! `--max-token-ttl` (24 h by default). When it has expired or is lost and no other admin
//! token exists, `admin-token` mints a fresh one offline, with the manager's own signing
//! key (from its data directory, or the same variables as `serve`), writes it where the
//! bootstrap token goes (`<data-dir>/admin.token`, mode 0600) or prints it (`--print`),
//! and records the audit event `token.admin-recovery` in the store (actor
//! `local:<account>`, the operating-system account that ran it).
//!
//! On SQLite it runs while the manager is stopped (a serving manager holds the file, and
//! `admin-token` is refused at once saying so); on Postgres also while it runs.

use crate::api::auth::{ADMIN_TOKEN_FILE, Authenticator, BOOTSTRAP_MARKER, write_private_file};
use crate::api::authz::Role;
use crate::api::config::{ServerConfig, parse_duration};
use crate::{ManagerError, StoreArgs};
use clap::Args;
use kubenova_store::StoreError;
use std::path::PathBuf;
use std::time::Duration;

/// Subject of the tokens `admin-token` mints.
pub const RECOVERY_SUBJECT: &str = "recovery-admin";
/// Audit action of an `admin-token` issuance.
pub const RECOVERY_ACTION: &str = "token.admin-recovery";

/// What `admin-token` says when a manager serves the SQLite database.
pub(crate) const WHILE_SERVED: &str = "mint a token through the running manager instead (POST /api/v1/tokens with an admin token), or stop it, run admin-token, then start it again";

/// Options of `admin-token`. The signing options read the same variables as `serve`, so
/// that the token verifies on the manager.
#[derive(Debug, Clone, Args)]
pub struct AdminTokenArgs {
    /// Lifetime of the token; default and maximum: `--max-token-ttl`, as the bootstrap
    /// token's. At least `1m`.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Print the token on stdout instead of writing it to `<data-dir>/admin.token`.
    #[arg(long)]
    pub print: bool,
    /// The manager's longest token TTL (as for `serve`).
    #[arg(long, env = "KUBENOVA_MAX_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_token_ttl: Duration,
    /// `iss` of the manager's tokens (as for `serve`).
    #[arg(long, env = "KUBENOVA_JWT_ISSUER", default_value = "kubenova")]
    pub jwt_issuer: String,
    /// `aud` of the manager's tokens (as for `serve`).
    #[arg(long, env = "KUBENOVA_JWT_AUDIENCE", default_value = "kubenova-api")]
    pub jwt_audience: String,
    /// The manager's HS256 secret, when it is not `<data-dir>/jwt.secret` (as for `serve`).
    #[arg(long, env = "KUBENOVA_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The manager's ES256 public key (as for `serve`).
    #[arg(long, env = "KUBENOVA_JWT_ES256_PUBLIC_KEY")]
    pub jwt_es256_public_key: Option<PathBuf>,
    /// The manager's ES256 private key (as for `serve`); needed to mint with ES256.
    #[arg(long, env = "KUBENOVA_JWT_ES256_PRIVATE_KEY")]
    pub jwt_es256_private_key: Option<PathBuf>,
}

/// What `admin-token` produced.
#[derive(Debug)]
pub enum Issued {
    /// `--print`: the token, for stdout.
    Printed(String),
    /// Written to a file: where, and about the token (never the token itself).
    Written(serde_json::Value),
}

/// `30s`, `90m`, `24h`: a duration the way the options take it.
fn show(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() > 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{s}s")
    }
}

/// The operating-system account running this command, as the audit actor `local:<name>`
/// (`local` when unknown or unusable).
pub fn local_actor() -> String {
    let name = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|n| n.trim().to_string())
        .find(|n| !n.is_empty() && n.len() <= 64 && !n.chars().any(char::is_control));
    match name {
        Some(n) => format!("local:{n}"),
        None => "local".into(),
    }
}

/// Checks the options and finds the manager's signing configuration before anything is
/// opened or written.
fn server_config(args: &AdminTokenArgs) -> Result<(ServerConfig, Duration), ManagerError> {
    let max = args.max_token_ttl;
    if max < Duration::from_secs(60) {
        return Err(ManagerError::Config(
            "--max-token-ttl must be at least 1m".into(),
        ));
    }
    let ttl = args.ttl.unwrap_or(max);
    if ttl < Duration::from_secs(60) {
        return Err(ManagerError::Config(format!(
            "--ttl {} is too short: at least 1m",
            show(ttl)
        )));
    }
    if ttl > max {
        return Err(ManagerError::Config(format!(
            "--ttl {} is too long: an admin token lives at most --max-token-ttl ({}), like the bootstrap token",
            show(ttl),
            show(max)
        )));
    }
    let cfg = ServerConfig {
        jwt_issuer: args.jwt_issuer.clone(),
        jwt_audience: args.jwt_audience.clone(),
        jwt_secret: args.jwt_secret.clone(),
        jwt_es256_public_key: args.jwt_es256_public_key.clone(),
        jwt_es256_private_key: args.jwt_es256_private_key.clone(),
        max_token_ttl: max,
        ..ServerConfig::default()
    };
    cfg.validate().map_err(ManagerError::Config)?;
    if cfg.jwt_es256_public_key.is_some() && cfg.jwt_es256_private_key.is_none() {
        return Err(ManagerError::Config(
            "this manager verifies ES256 tokens and admin-token has no private key to sign with: pass --jwt-es256-private-key (KUBENOVA_JWT_ES256_PRIVATE_KEY), or mint an admin token with your own key or identity provider".into(),
        ));
    }
    Ok((cfg, ttl))
}

/// Runs `admin-token` (see the module documentation). Refuses, changing nothing, when a
/// serving manager holds the SQLite database, when an option is out of bounds, or when
/// the data directory or database are not a manager's (no signing secret, no key file, no
/// database, or a database that was never served).
pub async fn run(store_args: &StoreArgs, args: &AdminTokenArgs) -> Result<Issued, ManagerError> {
    store_args.refuse_if_held(WHILE_SERVED)?;
    let (cfg, ttl) = server_config(args)?;
    let data_dir = &store_args.data_dir;
    let manager_dir = "point --data-dir (KUBENOVA_DATA_DIR) at the manager's data directory";
    if cfg.jwt_secret.is_none() && cfg.jwt_es256_public_key.is_none() {
        let secret = data_dir.join(crate::api::auth::JWT_SECRET_FILE);
        if !secret.exists() {
            return Err(ManagerError::Config(format!(
                "no token signing secret at {}: {manager_dir}, or set KUBENOVA_JWT_SECRET as the manager has it",
                secret.display()
            )));
        }
    }
    if store_args.keks.is_none() && store_args.kek_file.is_none() {
        let keys = data_dir.join(kubenova_store::crypto::DEFAULT_KEY_FILE_NAME);
        if !keys.exists() {
            return Err(ManagerError::Config(format!(
                "no key file at {}: {manager_dir}, or set KUBENOVA_KEKS / KUBENOVA_KEK_FILE as the manager has them",
                keys.display()
            )));
        }
    }
    if let Some(file) = kubenova_store::sqlite_file(&store_args.database_url)
        && !file.exists()
    {
        return Err(ManagerError::Config(format!(
            "no SQLite database at {}: point --database-url (DATABASE_URL) at the manager's database",
            file.display()
        )));
    }
    let auth = Authenticator::from_config(&cfg, data_dir)?;
    let store = store_args.open().await?;
    let issued = issue(store.as_ref(), &auth, store_args, args, ttl).await;
    store.close().await;
    issued
}

async fn issue(
    store: &dyn kubenova_store::Store,
    auth: &Authenticator,
    store_args: &StoreArgs,
    args: &AdminTokenArgs,
    ttl: Duration,
) -> Result<Issued, ManagerError> {
    match store.get_secret(uuid::Uuid::nil(), BOOTSTRAP_MARKER).await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => {
            return Err(ManagerError::Config(format!(
                "this database was never served by a manager that mints tokens (no bootstrap admin token was issued): point --database-url (DATABASE_URL) at the manager's database, or start `kubenova-manager serve` once, which writes {}",
                store_args.data_dir.join(ADMIN_TOKEN_FILE).display()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let minted = auth
        .mint(RECOVERY_SUBJECT, &[Role::Admin], &[], &[], ttl)
        .map_err(|e| ManagerError::Config(e.error.message))?;
    let path = store_args.data_dir.join(ADMIN_TOKEN_FILE);
    let expires_at = crate::api::auth::rfc3339(minted.expires_at);
    let actor = local_actor();
    let delivery = if args.print { "stdout" } else { "file" };
    let mut details = serde_json::json!({
        "subject": RECOVERY_SUBJECT, "roles": ["admin"], "jti": minted.jti,
        "expiresAt": expires_at, "delivery": delivery,
    });
    if !args.print {
        details["path"] = serde_json::json!(path.display().to_string());
    }
    // Audited before the token leaves this process: no recovery without its record.
    store
        .append_audit(&kubenova_api::model::AuditEvent {
            id: kubenova_api::ids::AuditId::new(),
            at: time::OffsetDateTime::now_utc(),
            actor: actor.clone(),
            roles: vec![],
            action: RECOVERY_ACTION.into(),
            resource_kind: "token".into(),
            resource_id: minted.jti.clone(),
            outcome: kubenova_api::model::AuditOutcome::Success,
            http_status: None,
            request_id: String::new(),
            source_ip: String::new(),
            details: Some(details),
        })
        .await?;
    if args.print {
        tracing::info!(%actor, jti = %minted.jti, %expires_at, "minted a recovery admin token (printed on stdout)");
        return Ok(Issued::Printed(minted.token));
    }
    write_private_file(&path, format!("{}\n", minted.token).as_bytes(), true)?;
    tracing::info!(%actor, jti = %minted.jti, %expires_at, path = %path.display(), "wrote a recovery admin token (mode 0600)");
    Ok(Issued::Written(serde_json::json!({
        "path": path.display().to_string(),
        "subject": RECOVERY_SUBJECT,
        "jti": minted.jti,
        "expiresAt": expires_at,
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_show_as_typed() {
        assert_eq!(show(Duration::from_secs(86400)), "24h");
        assert_eq!(show(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(show(Duration::from_secs(45)), "45s");
        assert_eq!(show(Duration::ZERO), "0ms");
    }
}
