//! # kubenova-manager
//!
//! The global KubeNova manager. This library holds everything the binary does, so it
//! can be embedded and tested in-process; `main.rs` only parses the command line.
//!
//! It opens the store (SQLite by default, Postgres when `DATABASE_URL` says so), applies
//! migrations, rotates the key-encryption keys, mints a recovery admin token on the
//! manager host ([`admin_token`]), and serves the REST API (`serve`): see
//! [`build_state`], [`api::router`] and [`serve`].

pub mod admin_token;
pub mod api;

use api::AppState;
use clap::{Args, Parser, Subcommand};
use kubenova_api::catalog::Catalog;
use kubenova_store::crypto::Keyring;
use kubenova_store::{DEFAULT_DATABASE_URL, Store, StoreError};
use std::path::PathBuf;
use std::sync::Arc;

/// Command line of the `kubenova-manager` binary.
#[derive(Debug, Parser)]
#[command(
    name = "kubenova-manager",
    version,
    about = "KubeNova manager: the multi-cluster control plane API"
)]
pub struct Cli {
    /// Store options shared by every command (global: before or after the subcommand).
    #[command(flatten)]
    pub store: StoreArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Logging (`--log-format`; `KUBENOVA_LOG`, `KUBENOVA_LOG_FORMAT`).
    #[command(flatten)]
    pub log: kubenova_telemetry::LogArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (if needed) and migrate the database, then print its health as JSON.
    Migrate,
    /// Add a fresh key-encryption key to the key file and re-wrap every stored data key under it.
    RotateKeys,
    /// Rotate the kubeconfig token signing keys: a new ES256 key signs from now on; the
    /// previous key stays in the JWKS and verifies until every token it signed has expired
    /// (`--max-kubeconfig-ttl` + `--clock-skew` after the rotation), then it is retired.
    RotateSigningKeys(RotateSigningKeysArgs),
    /// Mint a fresh admin token on the manager host (the bootstrap token expired or is
    /// lost): written to `<data-dir>/admin.token` (mode 0600), or printed with `--print`,
    /// and audited as `token.admin-recovery`. On SQLite while the manager is stopped.
    AdminToken(admin_token::AdminTokenArgs),
    /// Serve the REST API (`/api/v1`) until SIGTERM or Ctrl-C.
    Serve(Box<api::config::ServerConfig>),
}

impl Command {
    /// The subcommand as typed (`migrate`, `serve`, …), for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Migrate => "migrate",
            Command::RotateKeys => "rotate-keys",
            Command::RotateSigningKeys(_) => "rotate-signing-keys",
            Command::AdminToken(_) => "admin-token",
            Command::Serve(_) => "serve",
        }
    }
}

/// Options of `rotate-signing-keys` (same variables as `serve`).
#[derive(Debug, Clone, Args)]
pub struct RotateSigningKeysArgs {
    /// Longest TTL of an issued kubeconfig token (the overlap of a rotated-out key).
    #[arg(long, env = "KUBENOVA_MAX_KUBECONFIG_TTL", default_value = "24h", value_parser = api::config::parse_duration)]
    pub max_kubeconfig_ttl: std::time::Duration,
    /// Clock skew the API servers tolerate (added to the overlap).
    #[arg(long, env = "KUBENOVA_CLOCK_SKEW", default_value = "60s", value_parser = api::config::parse_duration)]
    pub clock_skew: std::time::Duration,
}

/// Where the data lives and which keys protect it. Every command takes these options,
/// before or after the subcommand (`kubenova-manager --data-dir D migrate` and
/// `kubenova-manager migrate --data-dir D` mean the same).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Store options (every command, before or after it)")]
pub struct StoreArgs {
    /// Database URL: `sqlite://path.db` (created on first use) or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,
    /// Directory for generated local state (the key file of the embedded default).
    #[arg(
        long,
        env = "KUBENOVA_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Key-encryption keys as `kid:base64key[,kid:base64key…]` (last is active). Overrides the key file.
    #[arg(long, env = "KUBENOVA_KEKS", hide_env_values = true, global = true)]
    pub keks: Option<String>,
    /// Key file with one `kid:base64key` per line (mode 0600). Default: `<data-dir>/kek.keys`,
    /// generated on first start.
    #[arg(long, env = "KUBENOVA_KEK_FILE", global = true)]
    pub kek_file: Option<PathBuf>,
}

/// Errors of the manager's commands.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] kubenova_store::crypto::CryptoError),
    /// Rotation needs a key file to append to.
    #[error(
        "key rotation needs a key file: KUBENOVA_KEKS is set, so add the new key to it yourself and restart"
    )]
    RotationNeedsFile,
    /// A server option is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Authentication could not be set up.
    #[error(transparent)]
    Auth(#[from] api::auth::AuthSetupError),
    /// The kubeconfig signing keys could not be loaded, created or rotated.
    #[error(transparent)]
    SigningKeys(#[from] api::kubeconfigs::SigningKeyError),
    /// The listener could not be bound or the server failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// A maintenance command found its SQLite database held by another process.
    #[error(
        "the SQLite database {database} is in use by {holder}: an SQLite database is opened by one process at a time; {advice}"
    )]
    InUse {
        /// The database (URL without password).
        database: String,
        /// The process holding it.
        holder: kubenova_store::SqliteHolder,
        /// What to do instead.
        advice: &'static str,
    },
}

impl StoreArgs {
    fn key_file(&self) -> PathBuf {
        self.kek_file.clone().unwrap_or_else(|| {
            self.data_dir
                .join(kubenova_store::crypto::DEFAULT_KEY_FILE_NAME)
        })
    }

    /// Loads the keyring: `--keks`, else the key file, else a key generated into the data dir.
    pub fn keyring(&self) -> Result<Keyring, ManagerError> {
        if let Some(v) = &self.keks {
            return Ok(Keyring::from_env_value(v)?);
        }
        if let Some(f) = &self.kek_file {
            return Ok(Keyring::from_file(f)?);
        }
        Ok(Keyring::load_or_generate(&self.data_dir)?)
    }

    /// Opens the store and applies migrations.
    pub async fn open(&self) -> Result<Arc<dyn Store>, ManagerError> {
        let keys = self.keyring()?;
        let database = kubenova_store::redact_url(&self.database_url);
        let active_kek = keys.active_kid().to_string();
        tracing::debug!(%database, "opening store");
        let store = kubenova_store::connect(&self.database_url, keys).await?;
        tracing::info!(%database, %active_kek, "store opened");
        Ok(store)
    }

    /// For a maintenance command: refuses at once, with `advice`, when another process
    /// (a serving manager) holds the SQLite database, before touching keys or files.
    pub fn refuse_if_held(&self, advice: &'static str) -> Result<(), ManagerError> {
        match kubenova_store::sqlite_holder(&self.database_url) {
            Some(holder) => Err(ManagerError::InUse {
                database: kubenova_store::redact_url(&self.database_url),
                holder,
                advice,
            }),
            None => Ok(()),
        }
    }
}

/// What `migrate` says when a manager serves the SQLite database.
const MIGRATE_WHILE_SERVED: &str =
    "`serve` applied the migrations when it started; to run migrate, stop it first";
/// What `rotate-keys` says when a manager serves the SQLite database.
const ROTATE_KEYS_WHILE_SERVED: &str =
    "key rotation has no API: stop it, run rotate-keys, then start it again";
/// What `rotate-signing-keys` says when a manager serves the SQLite database.
const ROTATE_SIGNING_KEYS_WHILE_SERVED: &str = "rotate through the running manager instead (POST /api/v1/signing-keys:rotate with an admin token), or stop it first";

/// What a command prints on stdout.
#[derive(Debug)]
pub enum Output {
    /// A JSON document (pretty-printed).
    Json(serde_json::Value),
    /// One line of text as is (`admin-token --print`: the token).
    Line(String),
}

/// Runs one command; returns what it prints.
pub async fn run(cli: Cli) -> Result<Output, ManagerError> {
    match cli.command {
        Command::Migrate => {
            cli.store.refuse_if_held(MIGRATE_WHILE_SERVED)?;
            let store = cli.store.open().await?;
            let health = store.ping().await?;
            Ok(Output::Json(serde_json::json!({
                "status": if health.migrations_current { "ok" } else { "migrations pending" },
                "database": kubenova_store::redact_url(&cli.store.database_url),
                "store": health,
            })))
        }
        Command::RotateKeys => {
            if cli.store.keks.is_some() {
                return Err(ManagerError::RotationNeedsFile);
            }
            cli.store.refuse_if_held(ROTATE_KEYS_WHILE_SERVED)?;
            let store = cli.store.open().await?;
            let file = cli.store.key_file();
            let keys = Keyring::generate_into(&file)?;
            let active = keys.active_kid().to_string();
            // An SQLite file is held by one open store at a time: let go of it first.
            store.close().await;
            drop(store);
            let reconnect = kubenova_store::connect(&cli.store.database_url, keys).await?;
            let rewrapped = reconnect.rotate_keys().await?;
            Ok(Output::Json(
                serde_json::json!({"activeKek": active, "rewrapped": rewrapped}),
            ))
        }
        Command::RotateSigningKeys(args) => {
            cli.store.refuse_if_held(ROTATE_SIGNING_KEYS_WHILE_SERVED)?;
            let store = cli.store.open().await?;
            let overlap = time::Duration::try_from(args.max_kubeconfig_ttl + args.clock_skew)
                .map_err(|e| ManagerError::Config(format!("overlap: {e}")))?;
            let report = api::kubeconfigs::rotate_signing_keys(store.as_ref(), overlap).await?;
            Ok(Output::Json(
                serde_json::to_value(&report).unwrap_or_default(),
            ))
        }
        Command::AdminToken(args) => Ok(match admin_token::run(&cli.store, &args).await? {
            admin_token::Issued::Printed(token) => Output::Line(token),
            admin_token::Issued::Written(doc) => Output::Json(doc),
        }),
        Command::Serve(cfg) => {
            let state = build_state(&cli.store, *cfg).await?;
            serve(state, shutdown_signal()).await?;
            Ok(Output::Json(serde_json::json!({"status": "stopped"})))
        }
    }
}

/// Loads the catalog of a configuration (built-in, or with the overlay file) and checks
/// that the default plan exists.
pub fn load_catalog(cfg: &api::config::ServerConfig) -> Result<Catalog, ManagerError> {
    let catalog = match &cfg.catalog_file {
        Some(path) => Catalog::builtin_with_overlay_file(path)
            .map_err(|e| ManagerError::Config(format!("catalog file {}: {e}", path.display())))?,
        None => Catalog::builtin(),
    };
    if catalog.plan(&cfg.default_plan).is_none() {
        let plans: Vec<&str> = catalog.plans().map(|p| p.name.as_str()).collect();
        return Err(ManagerError::Config(format!(
            "the default plan {:?} is not in the catalog (plans: {})",
            cfg.default_plan,
            plans.join(", ")
        )));
    }
    Ok(catalog)
}

/// Records each catalog plan's prices as a new price-table version from `now` on when they
/// differ from the version last recorded for the plan, so that a price change in the
/// catalog prices only the hours after it (usage keeps the prices in force at each hour).
pub async fn record_catalog_prices(
    store: &dyn kubenova_store::Store,
    catalog: &Catalog,
    now: time::OffsetDateTime,
) -> Result<(), ManagerError> {
    for plan in catalog.plans() {
        let prices = serde_json::to_string(&plan.prices)
            .map_err(|e| ManagerError::Config(format!("plan {:?}: prices: {e}", plan.name)))?;
        if store.record_plan_prices(&plan.name, &prices, now).await? {
            tracing::info!(plan = %plan.name, %prices, "new price-table version recorded");
        }
    }
    Ok(())
}

/// Builds the application state for `serve`: validates the options, loads the catalog,
/// opens the store, sets up authentication (generating the HS256 secret and the bootstrap
/// admin token on first start) and the metrics and rate limiters.
pub async fn build_state(
    store_args: &StoreArgs,
    cfg: api::config::ServerConfig,
) -> Result<AppState, ManagerError> {
    cfg.validate().map_err(ManagerError::Config)?;
    let catalog = load_catalog(&cfg)?;
    let store = store_args.open().await?;
    record_catalog_prices(store.as_ref(), &catalog, time::OffsetDateTime::now_utc()).await?;
    let auth = api::auth::Authenticator::from_config(&cfg, &store_args.data_dir)?;
    if let Some(oidc) = auth.identity_providers() {
        // Fetched in the background: until an issuer's keys are in, `/api/v1/readyz` says so and
        // its people's tokens are refused with the reason.
        tracing::info!(issuers = ?oidc.issuer_urls(), "signing people in with identity providers");
        drop(oidc.spawn_refresher());
    }
    if auth.is_disabled() {
        tracing::warn!(
            "AUTHENTICATION IS DISABLED (--insecure-dev-no-auth): every request is the admin \"dev\"; never use this outside local development"
        );
    } else {
        auth.ensure_bootstrap_admin(store.as_ref(), &store_args.data_dir)
            .await?;
    }
    // Load (or create on first start) the kubeconfig signing keys now, so a broken key
    // store fails the start rather than the first issuance.
    let keys = api::kubeconfigs::load_or_create_signing_keys(store.as_ref()).await?;
    tracing::info!(kid = %keys.active().kid(), previous = keys.previous().len(), "kubeconfig signing keys loaded");
    auth.kubeconfig_keys().set(Arc::new(keys));
    if cfg.issuer_url().is_none() {
        tracing::warn!(
            "no --external-url: kubeconfig issuance and /.well-known/openid-configuration answer KN-503 until it is set"
        );
    }
    let state = assemble_state(store, catalog, cfg, auth);
    if store_args.database_url.starts_with("postgres://")
        || store_args.database_url.starts_with("postgresql://")
    {
        listen_postgres(&state, &store_args.database_url);
    }
    Ok(state)
}

/// Starts the state's Postgres listener (call inside a Tokio runtime, once): wake-ups of
/// agents long-polling on this replica for changes written through any replica
/// (migration 0003), and the invalidations that keep the store's record cache correct
/// (migration 0005; the cache answers only while this listener is connected, see
/// [`kubenova_store::cache`]).
pub fn listen_postgres(state: &AppState, database_url: &str) {
    if let Some(cache) = state.store.row_cache() {
        state.changes.set_row_cache(cache);
    }
    state.changes.listen_postgres(database_url.to_string());
}

/// Puts a state together from its parts (no I/O).
pub fn assemble_state(
    store: Arc<dyn Store>,
    catalog: Catalog,
    cfg: api::config::ServerConfig,
    auth: api::auth::Authenticator,
) -> AppState {
    let runtime = Arc::new(api::middleware::Runtime::new(&cfg));
    // Every store call is timed and counted in /metrics.
    let store: Arc<dyn Store> =
        Arc::new(api::metered::MeteredStore::new(store, Arc::clone(&runtime)));
    AppState {
        store,
        catalog: Arc::new(catalog),
        config: Arc::new(cfg),
        auth: Arc::new(auth),
        runtime,
        changes: kubenova_store::notify::ChangeNotifier::new(),
    }
}

/// A state for in-process tests: the built-in catalog and HS256 with `secret`; adjust
/// `cfg` for limits. Mint tokens with `state.auth.mint(...)`.
pub fn test_state(
    store: Arc<dyn Store>,
    cfg: api::config::ServerConfig,
    secret: &[u8],
) -> AppState {
    let auth = if cfg.insecure_dev_no_auth {
        api::auth::Authenticator::insecure_dev(cfg.max_token_ttl)
    } else {
        api::auth::Authenticator::hs256(
            secret,
            &cfg.jwt_issuer,
            &cfg.jwt_audience,
            cfg.clock_skew,
            cfg.max_token_ttl,
        )
    };
    assemble_state(store, Catalog::builtin(), cfg, auth)
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: finishing in-flight requests");
}

/// Serves the API on the configured address until `shutdown` completes, then finishes
/// in-flight requests. Also purges expired idempotency records every 10 minutes.
pub async fn serve(
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ManagerError> {
    let listener = tokio::net::TcpListener::bind(state.config.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, auth = state.auth.mode().as_str(), "listening");
    let purge_store = state.store.clone();
    let purge = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            tick.tick().await;
            match purge_store
                .purge_idempotency(time::OffsetDateTime::now_utc())
                .await
            {
                Ok(n) if n > 0 => tracing::info!(purged = n, "purged expired idempotency records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging idempotency records failed"),
            }
        }
    });
    let stale = api::agent::spawn_stale_task(state.clone());
    let runtime = state.runtime.clone();
    let shutdown = async move {
        shutdown.await;
        // Ends the followed audit streams so they do not hold the graceful shutdown.
        runtime.shutdown.send_replace(true);
    };
    let app = api::router(state);
    let res = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    purge.abort();
    stale.abort();
    tracing::info!("server stopped");
    Ok(res?)
}
