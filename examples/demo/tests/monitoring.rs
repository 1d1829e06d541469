//! The monitoring of `deploy/monitoring/` against the real binaries: the testkit cluster,
//! `kubenova-manager serve` and the bootstrapped `kubenova-operator` run as processes,
//! and Debian's Prometheus (`/usr/bin/prometheus`) scrapes the manager and the operator
//! with the committed rules loaded.
//!
//! - Every metric name used by a rule or a dashboard expression is exposed by the running
//!   manager or operator (their `/metrics`, scraped here: sample and `# TYPE` lines, so a
//!   counter family with no series yet counts), or is a recording rule of the file, or
//!   Prometheus' own `up`.
//! - Every dashboard expression parses (Prometheus answers it), and every rule evaluates
//!   without error.
//! - After a short workload (a tenant, project and app to ready, reads, writes), the SLO
//!   series exist with sane values: request rates above zero, error ratios zero, sync lag
//!   under the objective, one connected cluster, readable signing keys.
//!
//! Without Prometheus the test skips loudly, and fails when `CI=true`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use anyhow::{Context as _, bail};
use common::{database, drop_database};
use k8s_openapi::api::core::v1::ResourceQuota;
use kubenova_demo::flow::{Flow, STEP_TIMEOUT, create_tenancy};
use kubenova_demo::{Proc, free_port, start_operator_from_deployment, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring")
}

fn prometheus_bin() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but prometheus is not installed (Debian package `prometheus`; .ci/run installs it)"
        );
        eprintln!(
            "!!! PROMETHEUS NOT INSTALLED: the monitoring e2e test is SKIPPED (apt-get install prometheus) !!!"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_binaries_and_evaluates_the_slo_rules() {
    let Some(prometheus) = prometheus_bin() else {
        return;
    };
    let Some(bins) = common::binaries() else {
        return;
    };
    let (url, pg) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut flow = Flow::start(bins, dir.path(), &url).await.unwrap();
    let mut prom = None;
    let result = run(&mut flow, &prometheus, dir.path(), &mut prom).await;
    let diagnostics = match (&result, &prom) {
        (Err(_), Some(p)) => format!(
            "{}\nprometheus log:\n{}",
            flow.diagnostics(),
            p.log_tail(40)
        ),
        (Err(_), None) => flow.diagnostics(),
        _ => String::new(),
    };
    drop(prom);
    flow.shutdown();
    drop_database(pg).await;
    if let Err(e) = result {
        panic!("{e:?}\n{diagnostics}");
    }
}

/// Metric names of a `/metrics` text: samples, and the series names of every `# TYPE`
/// (counter `_total`, histogram `_bucket`/`_sum`/`_count`), so families without series yet count.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The metric names a PromQL expression selects (a lexical scan of an expression that
/// Prometheus parsed): identifiers outside label matchers, ranges and strings, that are
/// not functions (followed by `(`), aggregations, keywords, or the label lists of
/// `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
fn selected_metrics(expr: &str) -> BTreeSet<String> {
    // Keywords, and the aggregations (which may be followed by `by (...)` before their `(`).
    const KEYWORDS: [&str; 17] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let (mut braces, mut brackets) = (0i32, 0i32);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' => {
                braces += 1;
                i += 1;
            }
            '}' => {
                braces -= 1;
                i += 1;
            }
            '[' => {
                brackets += 1;
                i += 1;
            }
            ']' => {
                brackets -= 1;
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = chars.get(j) == Some(&'(');
                if braces > 0 || brackets > 0 || KEYWORDS.contains(&ident.as_str()) {
                    continue;
                }
                if LABEL_LISTS.contains(&ident.as_str()) {
                    if call {
                        // Skip the label list.
                        while j < chars.len() && chars[j] != ')' {
                            j += 1;
                        }
                        i = j + 1;
                    }
                    continue;
                }
                if !call {
                    out.insert(ident);
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// `expr` as Grafana sends it with every variable (`$name`, only used in regex
/// matchers) set to All: `.*`.
fn with_variables_matching_all(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        out.push_str(if end == 0 { "$" } else { ".*" });
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

async fn get_text(url: &str) -> anyhow::Result<String> {
    let resp = reqwest::get(url).await?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    Ok(resp.text().await?)
}

/// A Prometheus HTTP API query; the result vector.
async fn query(prom: &str, q: &str) -> anyhow::Result<Vec<Value>> {
    let resp = reqwest::Client::new()
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() || v["status"] != "success" {
        bail!("query {q:?}: {status} {v}");
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Waits until `q` returns series and `ok` accepts every value; returns them.
async fn wait_series(
    prom: &str,
    q: &str,
    what: &str,
    ok: impl Fn(f64) -> bool + Clone,
) -> anyhow::Result<Vec<Value>> {
    let prom = prom.to_string();
    let q = q.to_string();
    let last = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    wait_for(&format!("{q} ({what})"), Duration::from_secs(60), || {
        let (prom, q, ok, last) = (prom.clone(), q.clone(), ok.clone(), last.clone());
        async move {
            let r = query(&prom, &q).await?;
            *last.lock().unwrap() = r.clone();
            Ok((!r.is_empty() && r.iter().all(|s| ok(value(s)))).then_some(r))
        }
    })
    .await
    .with_context(|| {
        format!(
            "{q} never had series with {what}; last answer: {}",
            json!(*last.lock().unwrap())
        )
    })
}

async fn run(
    flow: &mut Flow,
    prometheus: &Path,
    dir: &Path,
    prom_slot: &mut Option<Proc>,
) -> anyhow::Result<()> {
    // The operator, with its /metrics on a known port.
    flow.bootstrap().await?;
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kubenova-testkit/upstream");
    let operator_addr = format!("127.0.0.1:{}", free_port()?);
    let proc = start_operator_from_deployment(
        &flow.bins.operator,
        &flow.testkit.client,
        &flow.testkit.kubeconfig,
        &[
            ("KUBENOVA_COMPONENT_DRIVER", "simulated".into()),
            ("KUBENOVA_SIMULATED_CRDS_DIR", crds.display().to_string()),
            ("KUBENOVA_LISTEN", operator_addr.clone()),
            ("KUBENOVA_LEADER_ELECTION", "false".into()),
            // A usage sample every second, so the tenant gauges show the workload's tenant.
            ("KUBENOVA_USAGE_SAMPLE_INTERVAL", "1".into()),
        ],
    )
    .await?;
    flow.operator = Some(proc);
    flow.wait_cluster_status("connected", STEP_TIMEOUT).await?;
    flow.install_components().await?;
    let manager_addr = flow.manager.url.trim_start_matches("http://").to_string();

    // Prometheus, scraping both every second, with the committed rules.
    let rules = monitoring_dir().join("rules/kubenova.rules.yaml");
    let prom_port = free_port()?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: kubenova-manager\n    static_configs:\n      - targets: ['{manager_addr}']\n  - job_name: kubenova-operator\n    static_configs:\n      - targets: ['{operator_addr}']\n",
            rules.display()
        ),
    )?;
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--log.level=warn");
    *prom_slot = Some(Proc::spawn("prometheus", cmd, |_| {})?);
    let prom = format!("http://127.0.0.1:{prom_port}");
    wait_for("prometheus ready", Duration::from_secs(60), || {
        let url = format!("{prom}/-/ready");
        async move { Ok(get_text(&url).await.ok().map(|_| ())) }
    })
    .await?;

    // Both targets up.
    for job in ["kubenova-manager", "kubenova-operator"] {
        wait_series(&prom, &format!("up{{job=\"{job}\"}}"), "value 1", |v| {
            v == 1.0
        })
        .await?;
    }

    // The workload, while Prometheus scrapes: a tenant, project and app to ready (writes
    // and the agent's sync), and reads.
    let t = create_tenancy(flow, "obs").await?;
    flow.wait_phase(&t.tenant_path, "ready").await?;
    flow.wait_phase(&t.project_path, "ready").await?;
    flow.wait_phase(&t.app_path, "ready").await?;
    // Reads and writes spread over several scrapes: `rate()` counts the increments a
    // series shows after Prometheus first saw it.
    let api = flow.api();
    for i in 0..12 {
        api.get(&t.tenant_path).await?;
        api.get(&flow.cluster_path("/tenants")).await?;
        api.ok(
            "PUT",
            &format!("{}/quotas", t.tenant_path),
            Some(&json!({"requests.cpu": format!("{}", 2 + i % 2)})),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    flow.wait_phase(&t.tenant_path, "ready").await?;
    // What the operator's tenant gauges must show: a ResourceQuota in the project's
    // namespace, then two pods (250m and 256Mi requested, twice that as limits) and a
    // LoadBalancer there, measured and uploaded.
    let ns = api.get(&t.project_path).await?["namespace"]
        .as_str()
        .context("the project's namespace")?
        .to_string();
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "obs-check"},
        "spec": {"hard": {"pods": "4", "requests.cpu": "1"}},
    }))?;
    kube::Api::<ResourceQuota>::namespaced(flow.testkit.client.clone(), &ns)
        .create(&kube::api::PostParams::default(), &quota)
        .await?;
    flow.operator_listen = Some(operator_addr.clone());
    flow.measure_usage(&t).await?;

    // Every metric name in the rules and the dashboards is exposed by a running binary.
    let mut exposed = exposed_names(&get_text(&format!("{}/metrics", flow.manager.url)).await?);
    exposed.extend(exposed_names(
        &get_text(&format!("http://{operator_addr}/metrics")).await?,
    ));
    exposed.insert("up".into());
    let rules_api: Value = reqwest::get(format!("{prom}/api/v1/rules"))
        .await?
        .json()
        .await?;
    let groups = rules_api["data"]["groups"]
        .as_array()
        .context("rules API")?
        .clone();
    if groups.len() != 3 {
        bail!(
            "Prometheus loaded {} rule groups, expected 3: {rules_api}",
            groups.len()
        );
    }
    let mut exprs: Vec<(String, String)> = Vec::new();
    for g in &groups {
        for r in g["rules"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap().to_string();
            if r["type"] == "recording" {
                exposed.insert(name.clone());
            }
            exprs.push((name, r["query"].as_str().unwrap().to_string()));
        }
    }
    let mut dashboard_exprs = 0;
    for e in std::fs::read_dir(monitoring_dir().join("dashboards"))? {
        let path = e?.path();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        for p in d["panels"].as_array().context("panels")? {
            for t in p["targets"].as_array().context("targets")? {
                let expr = with_variables_matching_all(t["expr"].as_str().context("expr")?);
                // Prometheus parses it (a parse error is a 400).
                query(&prom, &expr)
                    .await
                    .with_context(|| format!("dashboard {}", path.display()))?;
                exprs.push((format!("{} / {}", path.display(), p["title"]), expr));
                dashboard_exprs += 1;
            }
        }
    }
    if dashboard_exprs < 20 {
        bail!("only {dashboard_exprs} dashboard expressions found");
    }
    let mut unknown = Vec::new();
    for (name, expr) in &exprs {
        for m in selected_metrics(expr) {
            if !exposed.contains(&m) {
                unknown.push(format!("{name}: {m}"));
            }
        }
    }
    if !unknown.is_empty() {
        bail!(
            "metric names not exposed by the running manager or operator: {unknown:#?}\nexposed: {exposed:?}"
        );
    }

    // The SLO series exist with sane values.
    for class in ["read", "write", "agent"] {
        wait_series(
            &prom,
            &format!("kubenova:http_requests:rate5m{{class=\"{class}\"}}"),
            "a rate above 0",
            |v| v > 0.0,
        )
        .await?;
        wait_series(
            &prom,
            &format!("kubenova:http_error_ratio:rate5m{{class=\"{class}\"}}"),
            "no 5xx",
            |v| v == 0.0,
        )
        .await?;
    }
    for class in ["read", "write"] {
        wait_series(
            &prom,
            &format!("kubenova:http_slow_ratio:rate5m{{class=\"{class}\"}}"),
            "a ratio in [0, 1)",
            |v| (0.0..1.0).contains(&v),
        )
        .await?;
        wait_series(
            &prom,
            &format!("kubenova:http_request_duration_seconds:p99_5m{{class=\"{class}\"}}"),
            "a p99 under 8 s",
            |v| v > 0.0 && v < 8.2,
        )
        .await?;
    }
    wait_series(
        &prom,
        "kubenova:agent_sync_slow_ratio:rate5m",
        "no write slower than 60 s",
        |v| v == 0.0,
    )
    .await?;
    // Tenants were written repeatedly: their p99 is defined and within the objective.
    wait_series(
        &prom,
        "kubenova:agent_sync_lag_seconds:p99_5m{kind=\"tenant\"}",
        "a p99 sync lag under 60 s",
        |v| v > 0.0 && v <= 60.0,
    )
    .await?;
    // The project and the app were written once each: measured once.
    let counts = wait_series(
        &prom,
        "kubenova_agent_sync_lag_seconds_count",
        "at least one sample",
        |v| v >= 1.0,
    )
    .await?;
    let kinds: BTreeSet<&str> = counts
        .iter()
        .filter_map(|s| s["metric"]["kind"].as_str())
        .collect();
    if kinds != BTreeSet::from(["app", "project", "tenant"]) {
        bail!("sync lag measured for {kinds:?}, expected app, project, tenant: {counts:?}");
    }
    wait_series(
        &prom,
        // The tenant controller reconciled during the workload (the others may be idle: NaN).
        "kubenova:reconcile_error_ratio:rate15m{controller=\"novatenant\"}",
        "a ratio in [0, 1]",
        |v| (0.0..=1.0).contains(&v),
    )
    .await?;
    wait_series(
        &prom,
        "kubenova:store_error_ratio:rate5m",
        "no store errors",
        |v| v == 0.0,
    )
    .await?;
    wait_series(
        &prom,
        "kubenova_clusters{status=\"connected\"}",
        "one connected cluster",
        |v| v == 1.0,
    )
    .await?;
    wait_series(
        &prom,
        "kubenova_clusters{status=\"stale\"}",
        "no stale cluster",
        |v| v == 0.0,
    )
    .await?;
    wait_series(
        &prom,
        "kubenova_cluster_heartbeat_age_seconds{name=\"demo\"}",
        "a heartbeat within 10 s",
        |v| (0.0..10.0).contains(&v),
    )
    .await?;
    wait_series(
        &prom,
        "kubenova_signing_keys_readable",
        "readable keys",
        |v| v == 1.0,
    )
    .await?;
    wait_series(
        &prom,
        "kubenova_signing_key_age_seconds",
        "a key younger than the test",
        |v| (0.0..600.0).contains(&v),
    )
    .await?;
    // The operator's tenant gauges, labelled with the tenant's name in the API, are the
    // latest sample: its owner, apps and project namespaces, its app, the pods,
    // LoadBalancer and quota made above, and the tenant and its project ready.
    for (series, what, expected) in [
        ("kubenova_tenant_namespaces", "three namespaces", 3.0),
        ("kubenova_tenant_apps", "one app", 1.0),
        ("kubenova_tenant_pods", "two pods", 2.0),
        ("kubenova_tenant_load_balancers", "one LoadBalancer", 1.0),
        (
            "kubenova_tenant_cpu_requests_cores",
            "2 × 250m requested",
            0.5,
        ),
        ("kubenova_tenant_cpu_limits_cores", "2 × 500m limits", 1.0),
        (
            "kubenova_tenant_memory_requests_bytes",
            "2 × 256Mi requested",
            f64::from(512u32 << 20),
        ),
        (
            "kubenova_tenant_memory_limits_bytes",
            "2 × 512Mi limits",
            f64::from(1u32 << 30),
        ),
        (
            "kubenova_tenant_quota_used_ratio{resource=\"pods\"}",
            "2 of 4 pods",
            0.5,
        ),
        (
            "kubenova_tenant_quota_used_ratio{resource=\"requests.cpu\"}",
            "500m of 1 CPU",
            0.5,
        ),
        ("kubenova_tenant_quotas_exceeded", "no quota exceeded", 0.0),
        (
            "kubenova_tenant_objects{kind=\"tenant\",phase=\"ready\"}",
            "the tenant ready",
            1.0,
        ),
        (
            "kubenova_tenant_objects{kind=\"project\",phase=\"ready\"}",
            "its project ready",
            1.0,
        ),
    ] {
        let q = match series.split_once('{') {
            Some((name, rest)) => {
                format!("{name}{{job=\"kubenova-operator\",tenant=\"obs\",{rest}")
            }
            None => format!("{series}{{job=\"kubenova-operator\",tenant=\"obs\"}}"),
        };
        wait_series(&prom, &q, what, move |v| v == expected).await?;
    }
    wait_series(
        &prom,
        "time() - kubenova_tenant_usage_sample_timestamp_seconds{tenant=\"obs\"}",
        "a recent sample",
        |v| v < 30.0,
    )
    .await?;
    let backend = if flow.database_url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    wait_series(
        &prom,
        &format!("kubenova_store_backend_info{{backend=\"{backend}\"}}"),
        "the backend in use",
        |v| v == 1.0,
    )
    .await?;
    wait_series(
        &prom,
        "time() - kubenova_cluster_sweep_timestamp_seconds",
        "a recent sweep",
        |v| v < 30.0,
    )
    .await?;

    // Every recording rule and every dashboard expression has series after the workload,
    // except those that only have some when something fails (5xx, errors, limits) or that
    // the workload does not exercise (kubeconfig issuance, deletes): a wrong selector or
    // label value would leave a panel empty forever.
    // The workload's tenant has no volumes, so no storage class either.
    const MAY_BE_EMPTY: [&str; 8] = [
        "kubenova_tenant_storage_bytes",
        "5..",
        "errors",
        "rate_limited",
        "unauthenticated",
        "audit_write_failures",
        "deletes",
        "kubeconfig",
    ];
    for g in &groups {
        for r in g["rules"].as_array().unwrap() {
            if r["type"] == "recording" {
                let name = r["name"].as_str().unwrap();
                wait_series(&prom, name, "any value", |_| true).await?;
            }
        }
    }
    for (name, expr) in exprs.iter().filter(|(n, _)| n.contains(".json")) {
        if MAY_BE_EMPTY.iter().any(|m| expr.contains(m)) {
            continue;
        }
        if query(&prom, expr).await?.is_empty() {
            bail!("dashboard panel {name} has no series: {expr}");
        }
    }

    // Every rule evaluates without error.
    let rules_api: Value = reqwest::get(format!("{prom}/api/v1/rules"))
        .await?
        .json()
        .await?;
    for g in rules_api["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            if r["health"] != "ok" {
                bail!("rule {} is not healthy: {r}", r["name"]);
            }
        }
    }
    // The alerts about faults this system does not have are not even pending (the
    // latency and reconcile ones may be, on a slow machine at start).
    let active = query(
        &prom,
        "ALERTS{alertname=~\"KubeNovaClustersStale|KubeNovaSigningKeysUnreadable|KubeNovaDatabaseErrors|KubeNovaManagerDown|KubeNovaRecordCacheDisabledOnPostgres|KubeNovaClusterSweepStalled|KubeNovaSigningKeyOld|KubeNovaUsageReportsMissing\"}",
    )
    .await?;
    if !active.is_empty() {
        bail!("alerts active on a healthy system: {}", json!(active));
    }
    Ok(())
}

#[test]
fn selected_metrics_skips_functions_labels_and_keywords() {
    let m = selected_metrics(
        r#"sum by (le, kind) (rate(kubenova_agent_sync_lag_seconds_bucket{le="60.0",route=~"a|b"}[5m])) / on (instance) group_left (x) kubenova:http_requests:rate5m > bool 0.5 and time() - up offset 1m"#,
    );
    assert_eq!(
        m,
        BTreeSet::from([
            "kubenova_agent_sync_lag_seconds_bucket".to_string(),
            "kubenova:http_requests:rate5m".to_string(),
            "up".to_string(),
        ])
    );
    assert_eq!(
        with_variables_matching_all(r#"m{job=~"$job",tenant=~"$tenant"} > $ 1"#),
        r#"m{job=~".*",tenant=~".*"} > $ 1"#
    );
    let text = "# TYPE kubenova_store_errors counter\n# TYPE kubenova_x histogram\nkubenova_clusters{status=\"stale\"} 0\n# EOF\n";
    let n = exposed_names(text);
    assert!(n.contains("kubenova_store_errors_total"));
    assert!(n.contains("kubenova_x_bucket"));
    assert!(n.contains("kubenova_clusters"));
}
