//! # kubenova-manager
//!
//! The global KubeNova manager. This library holds everything the binary does, so it
//! can be embedded and tested in-process; `main.rs` only parses the command line.
//!
//! Today it opens the store (SQLite by default, Postgres when `DATABASE_URL` says so),
//! applies migrations, reports health and rotates the key-encryption keys.

use clap::{Args, Parser, Subcommand};
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
    /// Store options shared by every command.
    #[command(flatten)]
    pub store: StoreArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (if needed) and migrate the database, then print its health as JSON.
    Migrate,
    /// Add a fresh key-encryption key to the key file and re-wrap every stored data key under it.
    RotateKeys,
}

/// Where the data lives and which keys protect it.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Database URL: `sqlite://path.db` (created on first use) or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Directory for generated local state (the key file of the embedded default).
    #[arg(long, env = "KUBENOVA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Key-encryption keys as `kid:base64key[,kid:base64key…]` (last is active). Overrides the key file.
    #[arg(long, env = "KUBENOVA_KEKS", hide_env_values = true)]
    pub keks: Option<String>,
    /// Key file with one `kid:base64key` per line (mode 0600). Default: `<data-dir>/kek.keys`,
    /// generated on first start.
    #[arg(long, env = "KUBENOVA_KEK_FILE")]
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
        tracing::info!(database = %kubenova_store::redact_url(&self.database_url), active_kek = keys.active_kid(), "opening store");
        Ok(kubenova_store::connect(&self.database_url, keys).await?)
    }
}

/// Runs one command; returns the JSON document it prints.
pub async fn run(cli: Cli) -> Result<serde_json::Value, ManagerError> {
    match cli.command {
        Command::Migrate => {
            let store = cli.store.open().await?;
            let health = store.ping().await?;
            Ok(serde_json::json!({
                "status": if health.migrations_current { "ok" } else { "migrations pending" },
                "database": kubenova_store::redact_url(&cli.store.database_url),
                "store": health,
            }))
        }
        Command::RotateKeys => {
            if cli.store.keks.is_some() {
                return Err(ManagerError::RotationNeedsFile);
            }
            let store = cli.store.open().await?;
            let file = cli.store.key_file();
            let keys = Keyring::generate_into(&file)?;
            let active = keys.active_kid().to_string();
            let reconnect = kubenova_store::connect(&cli.store.database_url, keys).await?;
            drop(store);
            let rewrapped = reconnect.rotate_keys().await?;
            Ok(serde_json::json!({"activeKek": active, "rewrapped": rewrapped}))
        }
    }
}
