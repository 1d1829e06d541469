//! `cargo run -p kubenova-demo`: the whole KubeNova flow against an emulated cluster,
//! narrated on stdout. Uses SQLite unless `--database-url` / `DATABASE_URL` names a
//! Postgres database. `--keep` leaves everything running for exploring until Ctrl-C.
#![allow(clippy::print_stdout)]

use clap::Parser;
use kubenova_demo::Binaries;
use kubenova_demo::flow::{Flow, STEP_TIMEOUT, create_tenancy};
use std::process::ExitCode;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "kubenova-demo",
    version,
    about = "The whole KubeNova flow in one command: an emulated cluster, the manager, the operator it bootstraps, and a tenant → project → app until Ready"
)]
struct Cli {
    /// Leave the stack running after the tenant is Ready (the tenant, its project and app
    /// stay): print the manager URL, an admin token and the emulated cluster's
    /// kubeconfig, and wait for Ctrl-C, then stop everything.
    #[arg(long)]
    keep: bool,
    /// The manager's database; default: an SQLite file in the demo's scratch folder.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Logging (`--log-format`; `KUBENOVA_LOG`, default `warn`; `KUBENOVA_LOG_FORMAT`).
    #[command(flatten)]
    log: kubenova_telemetry::LogArgs,
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout: its own log stays quiet unless asked.
    let _telemetry = match kubenova_telemetry::init(&cli.log, "warn", "kubenova-demo") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kubenova-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let run = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubenova-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn binaries() -> anyhow::Result<Binaries> {
    if let Ok(b) = Binaries::locate() {
        return Ok(b);
    }
    println!("building the manager, operator and testkit binaries first ...");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
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
    Binaries::locate()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let bins = binaries()?;
    let dir = tempfile::tempdir()?;
    let db = cli
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("kubenova.db").display()));

    step(
        1,
        "start an emulated cluster and the manager, register the cluster with its kubeconfig",
    );
    let mut flow = Flow::start(bins, dir.path(), &db).await?;
    let result = narrate(&mut flow, &cli).await;
    // Stop the operator, the manager and the emulated cluster (SIGTERM, each finishing
    // what it does), also after a failed step.
    tokio::task::block_in_place(|| flow.shutdown());
    result?;
    println!("    stopped.");
    Ok(())
}

async fn narrate(flow: &mut Flow, cli: &Cli) -> anyhow::Result<()> {
    let token_file = flow.dir.join("manager-data/admin.token");
    println!(
        "    manager {} · cluster {} is pending_bootstrap",
        flow.manager.url, flow.cluster
    );
    println!("    admin token in {}", token_file.display());

    step(
        2,
        "bootstrap: the manager applies namespace, CRDs, RBAC, agent Secret and operator Deployment",
    );
    let c = flow.bootstrap().await?;
    println!(
        "    cluster status: {}",
        c["clusterStatus"].as_str().unwrap_or("?")
    );

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
    for line in kubenova_demo::component_lines(&caps) {
        println!("    {line}");
    }

    step(
        5,
        "create tenant acme → project web → app site through the REST API",
    );
    let t = create_tenancy(flow, "acme").await?;
    for (what, path) in [
        ("tenant acme", &t.tenant_path),
        ("project web", &t.project_path),
        ("app site", &t.app_path),
    ] {
        let v = flow.wait_phase(path, "ready").await?;
        println!("    {what} is ready:");
        for line in kubenova_demo::condition_lines(&v["status"]["conditions"]) {
            println!("      {line}");
        }
    }

    step(
        6,
        "the app runs two pods; the operator measures usage and the manager prices it",
    );
    let usage = flow.measure_usage(&t).await?;
    for line in kubenova_demo::usage_lines(&usage) {
        println!("    {line}");
    }

    if cli.keep {
        return keep(flow, &token_file, &t.tenant_path).await;
    }

    step(7, "delete the tenant; everything it had leaves the cluster");
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

/// `--keep`: prints how to reach everything, then waits for Ctrl-C (or SIGTERM).
async fn keep(flow: &Flow, token_file: &std::path::Path, tenant_path: &str) -> anyhow::Result<()> {
    // The token printed is the one the demo just used: it exists and works.
    let me = flow.api().get("/api/v1/me").await?;
    let url = &flow.manager.url;
    let token = &flow.manager.token;
    let kubeconfig = flow.testkit.kubeconfig.display();
    step(
        7,
        "keep everything running (--keep): tenant acme, project web and app site stay",
    );
    println!("    manager:     {url}  (API reference: {url}/api/v1/docs)");
    println!(
        "    admin token: {token}  (subject {}, also in {})",
        me["subject"].as_str().unwrap_or("?"),
        token_file.display()
    );
    println!("    kubeconfig:  {kubeconfig}  (the emulated cluster, as its admin)");
    println!("    for example:");
    println!("      export TOKEN=$(cat {})", token_file.display());
    println!("      curl -s -H \"Authorization: Bearer $TOKEN\" {url}{tenant_path}");
    println!("      kubectl --kubeconfig {kubeconfig} get tenants.capsule.clastix.io,namespaces");
    println!("    press Ctrl-C to stop everything");
    wait_for_signal().await?;
    println!("\n[7] stopping the operator, the manager and the emulated cluster");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
