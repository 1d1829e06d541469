//! `cargo run -p kubenova-demo`: the whole KubeNova flow against an emulated cluster,
//! narrated. Uses SQLite unless `DATABASE_URL` names a Postgres database.
#![allow(clippy::print_stdout)]

use kubenova_demo::Binaries;
use kubenova_demo::flow::{Flow, STEP_TIMEOUT, create_tenancy};

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bins = match Binaries::locate() {
        Ok(b) => b,
        Err(_) => {
            println!("building the manager, operator and testkit binaries first ...");
            let status = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .args([
                "build",
                "-q",
                "-p",
                "kubenova-manager",
                "-p",
                "kubenova-operator",
                "-p",
                "kubenova-testkit",
            ])
            .status()?;
            anyhow::ensure!(status.success(), "cargo build failed");
            Binaries::locate()?
        }
    };
    let dir = tempfile::tempdir()?;
    let db = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("kubenova.db").display()));

    step(
        1,
        "start an emulated cluster and the manager, register the cluster with its kubeconfig",
    );
    let mut flow = Flow::start(bins, dir.path(), &db).await?;
    println!(
        "    manager {} · cluster {} is pending_bootstrap",
        flow.manager.url, flow.cluster
    );
    println!(
        "    admin token in {}",
        dir.path().join("manager-data/admin.token").display()
    );

    step(
        2,
        "bootstrap: the manager applies namespace, CRDs, RBAC, agent Secret and operator Deployment",
    );
    let c = flow.bootstrap().await?;
    println!("    cluster status: {}", c["clusterStatus"]);

    step(
        3,
        "start the operator from the Deployment the bootstrap applied; wait for its hello",
    );
    flow.start_operator().await?;
    flow.wait_cluster_status("connected", STEP_TIMEOUT).await?;
    println!("    cluster status: connected");

    step(
        4,
        "install cert-manager, Capsule, Capsule Proxy and KubeVela through the agent channel",
    );
    let caps = flow.install_components().await?;
    println!("    capabilities: {caps}");

    step(
        5,
        "create tenant acme → project web → app site through the REST API",
    );
    let t = create_tenancy(&flow, "acme").await?;
    for (what, path) in [
        ("tenant", &t.tenant_path),
        ("project", &t.project_path),
        ("app", &t.app_path),
    ] {
        let v = flow.wait_phase(path, "ready").await?;
        println!("    {what} is ready: {}", v["status"]["conditions"]);
    }

    step(6, "delete the tenant; everything it had leaves the cluster");
    flow.api()
        .ok("DELETE", &format!("{}?cascade=true", t.tenant_path), None)
        .await?;
    flow.wait_gone(&t.tenant_path).await?;
    let tenants: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(
        flow.testkit.client.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("capsule.clastix.io", "v1beta2", "Tenant"),
            "tenants",
        ),
    );
    kubenova_demo::wait_for(
        "the Capsule Tenant to leave the cluster",
        STEP_TIMEOUT,
        || {
            let tenants = tenants.clone();
            async move { Ok(tenants.get_opt("acme").await?.is_none().then_some(())) }
        },
    )
    .await?;
    println!(
        "    the Capsule Tenant, its namespaces and the Application are gone; stopping everything."
    );
    Ok(())
}
