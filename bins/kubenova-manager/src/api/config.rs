//! Server configuration: the options of `kubenova-manager serve`, each also read from a
//! `KUBENOVA_*` environment variable, each with a default (documented in
//! `docs/src/configuration.md`).

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default number of finished workflow runs kept per app.
pub const DEFAULT_WORKFLOW_RUN_RETENTION: u32 = 100;
/// Default request body limit (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Default operator image: the operator of the same release as this manager.
pub const DEFAULT_OPERATOR_IMAGE: &str = concat!(
    "ghcr.io/kubenova/kubenova-operator:",
    env!("CARGO_PKG_VERSION")
);

/// Parses a duration such as `30s`, `5m`, `24h`, `1d`, `250ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 30s, 5m, 24h, 1d or 250ms"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    };
    match unit.trim() {
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        "ms" => Ok(Duration::from_millis(n)),
        other => Err(format!(
            "unknown duration unit {other:?} in {s:?} (use ms, s, m, h or d)"
        )),
    }
}

/// Parses a size such as `1048576`, `512KiB`, `1MiB`, `2MB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use e.g. 1048576, 512KiB or 1MiB"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1024,
        "MiB" | "Mi" => 1024 * 1024,
        "KB" | "K" | "k" => 1000,
        "MB" | "M" => 1_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, KB or MB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Options of the HTTP server (`kubenova-manager serve`).
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on (`0.0.0.0:8080` for every interface; port 0 picks a free port).
    #[arg(long, env = "KUBENOVA_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Public base URL of this manager (used in links and kubeconfigs), e.g. `https://kubenova.example.com`.
    #[arg(long, env = "KUBENOVA_EXTERNAL_URL")]
    pub external_url: Option<String>,
    /// Plan applied to tenants created without one; must exist in the catalog.
    #[arg(long, env = "KUBENOVA_DEFAULT_PLAN", default_value = "baseline")]
    pub default_plan: String,
    /// Catalog overlay file (YAML or JSON) merged over the built-in plans and policysets.
    #[arg(long, env = "KUBENOVA_CATALOG_FILE")]
    pub catalog_file: Option<PathBuf>,
    /// Largest accepted request body (`1MiB`, `512KiB`, or bytes).
    #[arg(long, env = "KUBENOVA_BODY_LIMIT", default_value = "1MiB", value_parser = parse_size)]
    pub body_limit: usize,
    /// Time after which a request is abandoned with KN-408.
    #[arg(long, env = "KUBENOVA_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// `iss` of the tokens this manager mints and accepts.
    #[arg(long, env = "KUBENOVA_JWT_ISSUER", default_value = "kubenova")]
    pub jwt_issuer: String,
    /// `aud` of the tokens this manager mints and accepts.
    #[arg(long, env = "KUBENOVA_JWT_AUDIENCE", default_value = "kubenova-api")]
    pub jwt_audience: String,
    /// HS256 shared secret (at least 32 bytes). Without it and without an ES256 key, a random
    /// secret is generated into `<data-dir>/jwt.secret` (mode 0600) on first start.
    #[arg(long, env = "KUBENOVA_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// ES256 public key (PEM) verifying tokens; replaces HS256.
    #[arg(long, env = "KUBENOVA_JWT_ES256_PUBLIC_KEY")]
    pub jwt_es256_public_key: Option<PathBuf>,
    /// ES256 private key (PKCS#8 PEM) signing tokens minted here (`POST /tokens`, bootstrap admin).
    #[arg(long, env = "KUBENOVA_JWT_ES256_PRIVATE_KEY")]
    pub jwt_es256_private_key: Option<PathBuf>,
    /// Identity providers people sign in with (YAML or JSON: issuers, claim mapping,
    /// platform roles by group); their tenant and project rights come from tenants' owners
    /// and projects' access. See docs/src/identity.md.
    #[arg(long, env = "KUBENOVA_OIDC_CONFIG")]
    pub oidc_config: Option<PathBuf>,
    /// `iss` of one external OIDC issuer whose tokens carry KubeNova's own `roles`,
    /// `tenants` and `projects` claims (keys by discovery, or `--oidc-jwks-file`). For
    /// people signing in with their organisation's identity provider use `--oidc-config`.
    #[arg(long, env = "KUBENOVA_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// `aud` expected in the OIDC issuer's tokens (default: `--jwt-audience`).
    #[arg(long, env = "KUBENOVA_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The `--oidc-issuer`'s JWKS as a local JSON file instead of discovery (no network fetch).
    #[arg(long, env = "KUBENOVA_OIDC_JWKS_FILE")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "KUBENOVA_CLOCK_SKEW", default_value = "60s", value_parser = parse_duration)]
    pub clock_skew: Duration,
    /// Longest TTL of a minted token (`POST /tokens`, bootstrap admin token).
    #[arg(long, env = "KUBENOVA_MAX_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_token_ttl: Duration,
    /// Longest TTL of an issued kubeconfig token (`ttl` above it is KN-422). Also bounds how
    /// long a rotated-out signing key stays in the JWKS.
    #[arg(long, env = "KUBENOVA_MAX_KUBECONFIG_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_kubeconfig_ttl: Duration,
    /// Lifetime of the tokens `kubenova auth token` (exec kubeconfigs) obtains when the
    /// request names no `ttl`: how long access outlives a revocation at most.
    #[arg(long, env = "KUBENOVA_EXEC_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub exec_token_ttl: Duration,
    /// How long `Idempotency-Key` responses are kept for replay.
    #[arg(long, env = "KUBENOVA_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,
    /// Finished (succeeded or failed) workflow runs kept per app, newest first; older
    /// finished runs are deleted when a run finishes. Runs still requested or running are
    /// never deleted.
    #[arg(long, env = "KUBENOVA_WORKFLOW_RUN_RETENTION", default_value_t = DEFAULT_WORKFLOW_RUN_RETENTION)]
    pub workflow_run_retention: u32,
    /// Most usage records one usage read (`GET …/usage`) answers; a range holding more is
    /// KN-422 asking for a shorter range (never a truncated answer).
    #[arg(long, env = "KUBENOVA_USAGE_MAX_RECORDS", default_value_t = kubenova_store::DEFAULT_USAGE_MAX_RECORDS)]
    pub usage_max_records: u32,
    /// Sustained requests per second per authenticated subject, and per cluster on the
    /// agent routes (0 disables).
    #[arg(long, env = "KUBENOVA_RATE_LIMIT_SUBJECT_RPS", default_value_t = 50)]
    pub rate_limit_subject_rps: u32,
    /// Burst per authenticated subject.
    #[arg(long, env = "KUBENOVA_RATE_LIMIT_SUBJECT_BURST", default_value_t = 100)]
    pub rate_limit_subject_burst: u32,
    /// Sustained requests per second per source IP; on the agent routes only attempts
    /// without a valid agent credential count (0 disables).
    #[arg(long, env = "KUBENOVA_RATE_LIMIT_IP_RPS", default_value_t = 100)]
    pub rate_limit_ip_rps: u32,
    /// Burst per source IP.
    #[arg(long, env = "KUBENOVA_RATE_LIMIT_IP_BURST", default_value_t = 200)]
    pub rate_limit_ip_burst: u32,
    /// Audit events of unauthenticated (401) calls written per source IP and minute; the
    /// others are only counted (`kubenova_audit_unauthenticated_suppressed_total`). 0
    /// writes none.
    #[arg(
        long,
        env = "KUBENOVA_AUDIT_UNAUTHENTICATED_PER_SOURCE",
        default_value_t = 10
    )]
    pub audit_unauthenticated_per_source: u32,
    /// Audit events of unauthenticated (401) calls written per minute from all sources
    /// together (bounds the audit table's growth under a flood from many addresses). 0
    /// writes none.
    #[arg(
        long,
        env = "KUBENOVA_AUDIT_UNAUTHENTICATED_TOTAL",
        default_value_t = 300
    )]
    pub audit_unauthenticated_total: u32,
    /// DANGEROUS, local development only: no authentication, every caller is admin `dev`.
    #[arg(long, env = "KUBENOVA_INSECURE_DEV_NO_AUTH", default_value_t = false)]
    pub insecure_dev_no_auth: bool,
    /// Image of the operator Deployment that `POST /clusters/{id}/bootstrap/operator` applies.
    #[arg(long, env = "KUBENOVA_OPERATOR_IMAGE", default_value = DEFAULT_OPERATOR_IMAGE)]
    pub operator_image: String,
    /// Opt-in: bootstrap also creates the Helm installer identity (ServiceAccount
    /// `kubenova-installer` bound to `cluster-admin`, and a Role letting the operator
    /// request short-lived tokens for it only), and the operator runs `helm` as it. Off:
    /// the operator keeps only its least-privilege rights.
    #[arg(
        long,
        env = "KUBENOVA_OPERATOR_HELM_INSTALLER",
        default_value_t = false
    )]
    pub operator_helm_installer: bool,
    /// URL under which operators reach this manager (written into the agent Secret at
    /// bootstrap). Default: `--external-url`, else `http://<--listen>` when listening on
    /// loopback (an operator on this host only).
    #[arg(long, env = "KUBENOVA_AGENT_MANAGER_URL")]
    pub agent_manager_url: Option<String>,
    /// PEM file with the CA of this manager's serving certificate, written into the agent
    /// Secret at bootstrap when the certificate is not publicly trusted.
    #[arg(long, env = "KUBENOVA_AGENT_MANAGER_CA_FILE")]
    pub agent_manager_ca_file: Option<PathBuf>,
    /// Interval of agent heartbeats (sent to agents); a connected cluster whose last
    /// heartbeat is older than three intervals becomes `stale`.
    #[arg(long, env = "KUBENOVA_AGENT_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub agent_heartbeat_interval: Duration,
    /// How long a logs or events call waits for the cluster's operator to answer (the
    /// first lines of a followed log too) before it is KN-503 with `Retry-After`.
    #[arg(long, env = "KUBENOVA_AGENT_ANSWER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub agent_answer_timeout: Duration,
}

impl Default for ServerConfig {
    /// The documented defaults (what `serve` uses with no flags and no environment).
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            external_url: None,
            default_plan: "baseline".into(),
            catalog_file: None,
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: Duration::from_secs(30),
            jwt_issuer: "kubenova".into(),
            jwt_audience: "kubenova-api".into(),
            jwt_secret: None,
            jwt_es256_public_key: None,
            jwt_es256_private_key: None,
            oidc_config: None,
            oidc_issuer: None,
            oidc_audience: None,
            oidc_jwks_file: None,
            clock_skew: Duration::from_secs(60),
            max_token_ttl: Duration::from_secs(24 * 3600),
            max_kubeconfig_ttl: Duration::from_secs(24 * 3600),
            exec_token_ttl: Duration::from_secs(15 * 60),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            workflow_run_retention: DEFAULT_WORKFLOW_RUN_RETENTION,
            usage_max_records: kubenova_store::DEFAULT_USAGE_MAX_RECORDS,
            rate_limit_subject_rps: 50,
            rate_limit_subject_burst: 100,
            rate_limit_ip_rps: 100,
            rate_limit_ip_burst: 200,
            audit_unauthenticated_per_source: 10,
            audit_unauthenticated_total: 300,
            insecure_dev_no_auth: false,
            operator_image: DEFAULT_OPERATOR_IMAGE.into(),
            operator_helm_installer: false,
            agent_manager_url: None,
            agent_manager_ca_file: None,
            agent_heartbeat_interval: Duration::from_secs(30),
            agent_answer_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// The issuer URL of kubeconfig tokens (and the manager URL of exec kubeconfigs):
    /// `--external-url` without a trailing slash, else `http://<listen>` when listening on
    /// a loopback address (local development); `None` otherwise (issuance then says to
    /// set `--external-url`).
    pub fn issuer_url(&self) -> Option<String> {
        match &self.external_url {
            Some(u) => Some(u.trim_end_matches('/').to_string()),
            None if self.listen.ip().is_loopback() => Some(format!("http://{}", self.listen)),
            None => None,
        }
    }

    /// The URL operators use to reach this manager: `--agent-manager-url`, else
    /// `--external-url` (without a trailing slash).
    pub fn agent_manager_url(&self) -> Option<String> {
        self.agent_manager_url
            .as_ref()
            .or(self.external_url.as_ref())
            .map(|u| u.trim_end_matches('/').to_string())
    }

    /// Idempotency TTL as a `time::Duration`.
    pub fn idempotency_ttl_time(&self) -> time::Duration {
        time::Duration::try_from(self.idempotency_ttl).unwrap_or(time::Duration::hours(24))
    }

    /// Checks options that clap cannot: contradictions and bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.body_limit == 0 {
            return Err("--body-limit must be greater than 0".into());
        }
        if self.request_timeout.is_zero() {
            return Err("--request-timeout must be greater than 0".into());
        }
        if self.agent_heartbeat_interval < Duration::from_millis(100)
            || self.agent_heartbeat_interval > Duration::from_secs(3600)
        {
            return Err("--agent-heartbeat-interval must be between 100ms and 1h".into());
        }
        if self.agent_answer_timeout < Duration::from_millis(100)
            || self.agent_answer_timeout >= self.request_timeout
        {
            return Err(format!(
                "--agent-answer-timeout must be at least 100ms and shorter than --request-timeout ({} ms)",
                self.request_timeout.as_millis()
            ));
        }
        if let Some(u) = &self.agent_manager_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(format!(
                "--agent-manager-url {u:?} must start with http:// or https://"
            ));
        }
        if self.usage_max_records == 0 {
            return Err("--usage-max-records must be at least 1".into());
        }
        if self.workflow_run_retention == 0 {
            return Err("--workflow-run-retention must be at least 1".into());
        }
        if self.operator_image.trim().is_empty() {
            return Err("--operator-image must not be empty".into());
        }
        if self.max_token_ttl < Duration::from_secs(60) {
            return Err("--max-token-ttl must be at least 1m".into());
        }
        if self.max_kubeconfig_ttl < Duration::from_secs(60) {
            return Err("--max-kubeconfig-ttl must be at least 1m".into());
        }
        if self.exec_token_ttl.is_zero() || self.exec_token_ttl > self.max_kubeconfig_ttl {
            return Err(
                "--exec-token-ttl must be greater than 0 and at most --max-kubeconfig-ttl".into(),
            );
        }
        if self.jwt_secret.is_some()
            && (self.jwt_es256_public_key.is_some() || self.jwt_es256_private_key.is_some())
        {
            return Err("choose one signing method: --jwt-secret (HS256) or --jwt-es256-public-key (ES256), not both".into());
        }
        if self.jwt_es256_private_key.is_some() && self.jwt_es256_public_key.is_none() {
            return Err("--jwt-es256-private-key needs --jwt-es256-public-key too".into());
        }
        if self.oidc_jwks_file.is_some() && self.oidc_issuer.is_none() {
            return Err("--oidc-jwks-file needs --oidc-issuer".into());
        }
        if self.oidc_config.is_some()
            && (self.oidc_issuer.is_some() || self.oidc_jwks_file.is_some())
        {
            return Err("--oidc-config lists every issuer: leave --oidc-issuer and --oidc-jwks-file unset (an issuer with KubeNova's own claims is `roleClaims: true` in the file)".into());
        }
        if let Some(s) = &self.jwt_secret
            && s.len() < 32
        {
            return Err("--jwt-secret / KUBENOVA_JWT_SECRET must be at least 32 bytes".into());
        }
        if let Some(u) = &self.external_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(format!(
                "--external-url {u:?} must start with http:// or https://"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        c: ServerConfig,
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("10").unwrap(), 10);
        assert!(parse_size("1GiB").is_err());
    }

    #[test]
    fn clap_defaults_match_default_impl() {
        // Only meaningful when no KUBENOVA_* variable is set in the test environment.
        if std::env::vars().any(|(k, _)| k.starts_with("KUBENOVA_")) {
            return;
        }
        let parsed = Wrap::try_parse_from(["x"]).unwrap().c;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", ServerConfig::default())
        );
        assert!(parsed.validate().is_ok());
    }

    #[test]
    fn contradictions_are_rejected() {
        let c = ServerConfig {
            jwt_secret: Some("short".into()),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = ServerConfig {
            jwt_secret: Some("x".repeat(32)),
            jwt_es256_public_key: Some("k.pem".into()),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
