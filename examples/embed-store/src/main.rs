//! Embedding example: use `kubenova-store` on an SQLite file from your own platform code.
//!
//! Run with `cargo run -p kubenova-example-embed-store -- /tmp/demo.db`.

use kubenova_api::ids::{ClusterId, TenantId};
use kubenova_api::model::{
    Capabilities, Cluster, ClusterStatus, ObjectStatus, Tenant, TenantOverrides, tenant_namespaces,
};
use kubenova_api::validate::Validate;
use kubenova_store::crypto::Keyring;
use kubenova_store::{ListParams, WriteOptions};
use time::OffsetDateTime;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "embed-demo.db".into());
    let dir = std::path::Path::new(&path)
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let keys = Keyring::load_or_generate(&dir.join("embed-demo-keys"))?;
    let store = kubenova_store::connect(&format!("sqlite://{path}"), keys).await?;

    let now = OffsetDateTime::now_utc();
    let cluster = Cluster {
        id: ClusterId::new(),
        name: format!("demo-{}", now.unix_timestamp()),
        datacenter: "local".into(),
        labels: Default::default(),
        status: ClusterStatus::PendingBootstrap,
        capabilities: Capabilities::default(),
        components: vec![],
        proxy: None,
        conditions: vec![],
        last_heartbeat_at: None,
        operator_version: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    store
        .create_cluster(
            &cluster,
            b"apiVersion: v1\nkind: Config\n",
            &WriteOptions::default(),
        )
        .await?;

    let spec: kubenova_api::model::TenantSpec = serde_json::from_value(
        serde_json::json!({"name": "acme", "owners": ["alice@example.com"]}),
    )?;
    spec.validate()?;
    let (owner_ns, apps_ns) = tenant_namespaces(&spec.name);
    let tenant = Tenant {
        id: TenantId::new(),
        cluster_id: cluster.id,
        name: spec.name.clone(),
        owners: spec.owners.clone(),
        plan: "baseline".into(),
        labels: spec.labels.clone(),
        quotas: Default::default(),
        limits: Default::default(),
        network_policies: vec![],
        owner_namespace: owner_ns,
        apps_namespace: apps_ns,
        overrides: TenantOverrides::default(),
        status: ObjectStatus::default(),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    store
        .create_tenant(&tenant, &WriteOptions::default())
        .await?;

    let page = store
        .list_tenants(Some(cluster.id), &ListParams::default())
        .await?;
    let revision = store.cluster_revision(cluster.id).await?;
    let health = store.ping().await?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "cluster {} has {} tenant(s) at desired-state revision {revision}",
            cluster.name,
            page.items.len()
        );
        println!("store: {health:?}");
    }
    Ok(())
}
