//! Test harness: a fresh store per test, on SQLite (temp file) or Postgres (own schema).
#![allow(dead_code, clippy::unwrap_used)]

use kubenova_api::ids::*;
use kubenova_api::model::*;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{PgStore, SqliteStore, Store};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use time::OffsetDateTime;

pub fn keyring(kids: &[(&str, u8)]) -> Keyring {
    Keyring::new(
        kids.iter()
            .map(|(kid, b)| Kek::new(*kid, &[*b; 32]).unwrap())
            .collect(),
    )
    .unwrap()
}

/// A fresh backend; `path` lets tests inspect the SQLite file.
pub struct Harness {
    pub store: Arc<dyn Store>,
    pub sqlite: Option<SqliteStore>,
    pub pg: Option<PgStore>,
    pub sqlite_path: Option<std::path::PathBuf>,
    pub pg_schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite_with(keys: Keyring) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kn.db");
    let s = SqliteStore::connect(&format!("sqlite://{}", path.display()), keys)
        .await
        .unwrap();
    Harness {
        store: Arc::new(s.clone()),
        sqlite: Some(s),
        pg: None,
        sqlite_path: Some(path),
        pg_schema: None,
        _dir: Some(dir),
    }
}

/// The Postgres URL for tests, or `None` (skipped loudly) unless Postgres is required.
pub fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run the Postgres suite !!!"
            );
            None
        }
    }
}

pub async fn postgres_with(keys: Keyring) -> Option<Harness> {
    let url = pg_url()?;
    let schema = format!("kn_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to KUBENOVA_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let s = PgStore::connect_with(opts, 8, keys).await.unwrap();
    Some(Harness {
        store: Arc::new(s.clone()),
        sqlite: None,
        pg: Some(s),
        sqlite_path: None,
        pg_schema: Some(schema),
        _dir: None,
    })
}

impl Harness {
    /// Drops the per-test Postgres schema.
    pub async fn cleanup(self) {
        if let (Some(schema), Some(url)) = (&self.pg_schema, pg_url()) {
            if let Some(pg) = &self.pg {
                pg.pool().close().await;
            }
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }
}

pub fn now() -> OffsetDateTime {
    // Microsecond precision, as stored.
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap()
}

pub fn cluster(name: &str) -> Cluster {
    let t = now();
    Cluster {
        id: ClusterId::new(),
        name: name.into(),
        datacenter: "dc1".into(),
        labels: BTreeMap::new(),
        status: ClusterStatus::PendingBootstrap,
        capabilities: Capabilities::default(),
        components: vec![],
        proxy: None,
        conditions: vec![],
        last_heartbeat_at: None,
        operator_version: None,
        version: 1,
        created_at: t,
        updated_at: t,
    }
}

pub fn tenant(cluster: ClusterId, name: &str) -> Tenant {
    let t = now();
    let (o, a) = tenant_namespaces(name);
    Tenant {
        id: TenantId::new(),
        cluster_id: cluster,
        name: name.into(),
        owners: vec!["alice@example.com".into()],
        plan: "baseline".into(),
        labels: BTreeMap::new(),
        quotas: [("requests.cpu".to_string(), "2".parse().unwrap())]
            .into_iter()
            .collect(),
        limits: BTreeMap::new(),
        network_policies: vec!["tenant-isolation".into()],
        owner_namespace: o,
        apps_namespace: a,
        overrides: TenantOverrides::default(),
        status: ObjectStatus::default(),
        version: 1,
        created_at: t,
        updated_at: t,
    }
}

pub fn project(t: &Tenant, name: &str) -> Project {
    let now = now();
    Project {
        id: ProjectId::new(),
        cluster_id: t.cluster_id,
        tenant_id: t.id,
        name: name.into(),
        description: String::new(),
        labels: BTreeMap::new(),
        access: vec![],
        namespace: project_namespace(&t.name, name),
        status: ObjectStatus::default(),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

pub fn app_spec(name: &str, image: &str) -> AppSpec {
    AppSpec {
        name: name.into(),
        image: Some(image.into()),
        ..Default::default()
    }
}

pub fn app(p: &Project, name: &str) -> (App, AppRevision) {
    let now = now();
    let spec = app_spec(name, "nginx:1.27");
    let app = App {
        id: AppId::new(),
        cluster_id: p.cluster_id,
        tenant_id: p.tenant_id,
        project_id: p.id,
        name: name.into(),
        spec: spec.clone(),
        revision: 1,
        deployed_revision: None,
        suspended: false,
        status: ObjectStatus::default(),
        vela_phase: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let rev = AppRevision {
        number: 1,
        spec,
        created_by: "test".into(),
        created_at: now,
    };
    (app, rev)
}
