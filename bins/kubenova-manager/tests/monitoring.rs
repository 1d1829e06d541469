//! `deploy/monitoring/`: the Prometheus recording and alerting rules of the SLOs and the
//! Grafana dashboards are generated here (one source for selectors, windows and
//! thresholds), committed, and this test fails when the committed files drift
//! (`KUBENOVA_BLESS=1` rewrites them). `promtool check rules` and `promtool test rules`
//! (the unit tests in `deploy/monitoring/tests/`) run on them, and every dashboard
//! expression is parsed by promtool too. Debian's `prometheus` package ships promtool;
//! without it the promtool tests skip loudly, and fail when `CI=true`.
//!
//! That every metric name used exists in a running manager and operator, and that a real
//! Prometheus evaluates the rules, is `examples/demo/tests/monitoring.rs`.
#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring")
}

const RUNBOOK_BASE: &str = "https://kubenova.example/docs/runbooks";

// ---- SLO definitions ----------------------------------------------------------------

/// Route classes of the API SLOs: (class, label matchers of `kubenova_http_*`).
const CLASSES: [(&str, &str); 3] = [
    (
        "read",
        r#"route!~"/api/v1/agent/.*|/api/v1/healthz|/api/v1/readyz|/metrics|unmatched",method=~"GET|HEAD""#,
    ),
    (
        "write",
        r#"route!~"/api/v1/agent/.*|unmatched",method=~"POST|PUT|PATCH|DELETE""#,
    ),
    ("agent", r#"route=~"/api/v1/agent/.*""#),
];

/// Latency SLO thresholds per class (a bucket bound of the request histogram); the agent
/// routes are long-polls and have none.
const LATENCY_LE: [(&str, &str); 2] = [("read", "0.256"), ("write", "1.024")];

/// Availability objective of every class (error budget 0.1%).
const AVAILABILITY_BUDGET: f64 = 0.001;
/// Latency objective: 99% of requests under the class threshold.
const LATENCY_BUDGET: f64 = 0.01;
/// Sync lag objective: 99% of writes ready within 60 s.
const SYNC_LAG_BUDGET: f64 = 0.01;
/// The sync lag threshold (a bucket bound of `kubenova_agent_sync_lag_seconds`).
const SYNC_LAG_LE: &str = "60.0";

/// Windows of the recorded ratios (multi-window, multi-burn-rate alerts).
const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// (severity, long window, short window, burn rate, for): the page and ticket pairs of
/// the Google SRE workbook for a 30-day objective.
const BURNS: [(&str, &str, &str, f64, &str); 4] = [
    ("page", "1h", "5m", 14.4, "2m"),
    ("page", "6h", "30m", 6.0, "15m"),
    ("ticket", "1d", "2h", 3.0, "1h"),
    ("ticket", "3d", "6h", 1.0, "3h"),
];

fn record(name: &str, expr: String, labels: Value) -> Value {
    let mut r = json!({"record": name, "expr": expr});
    if labels.as_object().is_some_and(|o| !o.is_empty()) {
        r["labels"] = labels;
    }
    r
}

fn runbook(alert: &str) -> String {
    format!("{RUNBOOK_BASE}/{}.html", kebab(alert))
}

/// `KubeNovaAPIAvailabilityBudgetBurn` → `api-availability-budget-burn`.
fn kebab(alert: &str) -> String {
    let name = alert.trim_start_matches("KubeNova");
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev_lower = chars[i - 1].is_lowercase();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev_lower || (chars[i - 1].is_uppercase() && next_lower) {
                out.push('-');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn alert(
    name: &str,
    expr: String,
    for_: &str,
    severity: &str,
    summary: &str,
    description: &str,
) -> Value {
    json!({
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": runbook(name),
        },
    })
}

/// Burn-rate alerts of one ratio: one rule per severity (page: 1h/5m at 14.4 or 6h/30m at
/// 6; ticket: 1d/2h at 3 or 3d/6h at 1).
fn burn_alerts(name: &str, ratio: &str, budget: f64, what: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for severity in ["page", "ticket"] {
        let pairs: Vec<String> = BURNS
            .iter()
            .filter(|b| b.0 == severity)
            .map(|(_, long, short, burn, _)| {
                let t = burn * budget;
                format!("({ratio}:rate{long} > {t} and {ratio}:rate{short} > {t})")
            })
            .collect();
        let for_ = BURNS.iter().find(|b| b.0 == severity).unwrap().4;
        out.push(alert(
            name,
            pairs.join(" or "),
            for_,
            severity,
            &format!("{what}: error budget burning too fast"),
            &format!(
                "{what} is spending its 30-day error budget ({budget}) at {} the sustainable rate or more.",
                if severity == "page" { "6 to 14.4 times" } else { "1 to 3 times" }
            ),
        ));
    }
    out
}

/// The rule groups of `deploy/monitoring/rules/kubenova.rules.yaml`.
fn rules() -> Value {
    let mut api = Vec::new();
    for (class, sel) in CLASSES {
        for w in WINDOWS {
            api.push(record(
                &format!("kubenova:http_error_ratio:rate{w}"),
                format!(
                    "(sum(rate(kubenova_http_requests_total{{{sel},status=~\"5..\"}}[{w}])) or vector(0)) / sum(rate(kubenova_http_requests_total{{{sel}}}[{w}]))"
                ),
                json!({"class": class}),
            ));
        }
    }
    for (class, le) in LATENCY_LE {
        let sel = CLASSES.iter().find(|c| c.0 == class).unwrap().1;
        for w in WINDOWS {
            api.push(record(
                &format!("kubenova:http_slow_ratio:rate{w}"),
                format!(
                    "1 - sum(rate(kubenova_http_request_duration_seconds_bucket{{{sel},le=\"{le}\"}}[{w}])) / sum(rate(kubenova_http_request_duration_seconds_count{{{sel}}}[{w}]))"
                ),
                json!({"class": class}),
            ));
        }
    }
    for (class, sel) in CLASSES {
        api.push(record(
            "kubenova:http_request_duration_seconds:p99_5m",
            format!(
                "histogram_quantile(0.99, sum by (le) (rate(kubenova_http_request_duration_seconds_bucket{{{sel}}}[5m])))"
            ),
            json!({"class": class}),
        ));
        api.push(record(
            "kubenova:http_requests:rate5m",
            format!("sum(rate(kubenova_http_requests_total{{{sel}}}[5m]))"),
            json!({"class": class}),
        ));
    }
    let mut agent = Vec::new();
    for w in WINDOWS {
        agent.push(record(
            &format!("kubenova:agent_sync_slow_ratio:rate{w}"),
            format!(
                "1 - sum(rate(kubenova_agent_sync_lag_seconds_bucket{{le=\"{SYNC_LAG_LE}\"}}[{w}])) / sum(rate(kubenova_agent_sync_lag_seconds_count[{w}]))"
            ),
            json!({}),
        ));
    }
    agent.push(record(
        "kubenova:agent_sync_lag_seconds:p99_5m",
        "histogram_quantile(0.99, sum by (le, kind) (rate(kubenova_agent_sync_lag_seconds_bucket[5m])))"
            .into(),
        json!({}),
    ));
    agent.push(record(
        "kubenova:reconcile_error_ratio:rate15m",
        "(sum by (controller) (rate(kubenova_reconcile_total{result=\"error\"}[15m])) or 0 * sum by (controller) (rate(kubenova_reconcile_total[15m]))) / sum by (controller) (rate(kubenova_reconcile_total[15m]))"
            .into(),
        json!({}),
    ));
    agent.push(record(
        "kubenova:store_error_ratio:rate5m",
        "(sum(rate(kubenova_store_errors_total[5m])) or vector(0)) / sum(rate(kubenova_store_operation_duration_seconds_count[5m]))"
            .into(),
        json!({}),
    ));

    let mut alerts = Vec::new();
    alerts.extend(burn_alerts(
        "KubeNovaAPIAvailabilityBudgetBurn",
        "kubenova:http_error_ratio",
        AVAILABILITY_BUDGET,
        "API availability (99.9% of requests without a 5xx)",
    ));
    alerts.extend(burn_alerts(
        "KubeNovaAPILatencyBudgetBurn",
        "kubenova:http_slow_ratio",
        LATENCY_BUDGET,
        "API latency (99% of reads under 256 ms, of writes under 1.024 s)",
    ));
    alerts.extend(burn_alerts(
        "KubeNovaAgentSyncLagBudgetBurn",
        "kubenova:agent_sync_slow_ratio",
        SYNC_LAG_BUDGET,
        "Agent sync lag (99% of writes ready within 60 s)",
    ));
    alerts.push(alert(
        "KubeNovaReconcileErrors",
        "kubenova:reconcile_error_ratio:rate15m > 0.1".into(),
        "15m",
        "ticket",
        "Operator reconciles failing ({{ $labels.controller }})",
        "More than 10% of the {{ $labels.controller }} reconciles failed over 15 minutes.",
    ));
    alerts.push(alert(
        "KubeNovaClustersStale",
        "max(kubenova_clusters{status=\"stale\"}) > 0".into(),
        "5m",
        "page",
        "Clusters stopped heartbeating",
        "Clusters are stale: their operator missed three heartbeats. Desired-state changes are not applied there.",
    ));
    alerts.push(alert(
        "KubeNovaRecordCacheDisabledOnPostgres",
        "kubenova_store_cache_enabled == 0 and on (instance, job) kubenova_store_backend_info{backend=\"postgres\"} == 1".into(),
        "5m",
        "ticket",
        "Record cache off on {{ $labels.instance }}",
        "The Postgres change listener of {{ $labels.instance }} is not connected: every read goes to the database and agents are woken by polling only.",
    ));
    alerts.push(alert(
        "KubeNovaSigningKeyOld",
        "max(kubenova_signing_key_age_seconds) > 90 * 86400".into(),
        "1h",
        "ticket",
        "The kubeconfig signing key is older than 90 days",
        "Rotate the kubeconfig signing key (POST /api/v1/signing-keys:rotate).",
    ));
    alerts.push(alert(
        "KubeNovaSigningKeysUnreadable",
        "kubenova_signing_keys_readable == 0".into(),
        "2m",
        "page",
        "{{ $labels.instance }} cannot read the kubeconfig signing keys",
        "The signing keys are missing from the store or cannot be decrypted: kubeconfig issuance and token verification fail.",
    ));
    alerts.push(alert(
        "KubeNovaDatabaseErrors",
        "kubenova:store_error_ratio:rate5m > 0.01".into(),
        "5m",
        "page",
        "Database errors on the manager",
        "More than 1% of store operations failed in the database over 5 minutes.",
    ));
    alerts.push(alert(
        "KubeNovaUsageReportsMissing",
        "min by (cluster_id, name) (kubenova_cluster_usage_upload_age_seconds) > 3 * 3600".into(),
        "15m",
        "ticket",
        "No usage from cluster {{ $labels.name }} for 3 hours",
        "Connected cluster {{ $labels.name }} ({{ $labels.cluster_id }}) has not uploaded hourly usage for 3 hours: billing is missing hours.",
    ));
    alerts.push(alert(
        "KubeNovaManagerDown",
        "up{job=\"kubenova-manager\"} == 0 or absent(up{job=\"kubenova-manager\"})".into(),
        "5m",
        "page",
        "A KubeNova manager cannot be scraped",
        "Prometheus cannot scrape a manager (or has no manager target): it is down or unreachable.",
    ));
    alerts.push(alert(
        "KubeNovaClusterSweepStalled",
        "time() - max(kubenova_cluster_sweep_timestamp_seconds) > 600".into(),
        "5m",
        "ticket",
        "The manager's periodic sweep has not run for 10 minutes",
        "Stale marking and the cluster, signing key and store metrics are not updated.",
    ));
    json!({"groups": [
        {"name": "kubenova-slo-api", "rules": api},
        {"name": "kubenova-slo-agent", "rules": agent},
        {"name": "kubenova-alerts", "rules": alerts},
    ]})
}

/// Every alert name of [`rules`].
fn alert_names(rules: &Value) -> Vec<String> {
    let mut names: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    names.dedup();
    names
}

// ---- dashboards -----------------------------------------------------------------------

struct Panel {
    title: &'static str,
    unit: &'static str,
    exprs: Vec<(String, String)>,
}

fn panel(title: &'static str, unit: &'static str, exprs: &[(&str, &str)]) -> Panel {
    Panel {
        title,
        unit,
        exprs: exprs
            .iter()
            .map(|(e, l)| (e.to_string(), l.to_string()))
            .collect(),
    }
}

fn dashboard(uid: &str, title: &str, variables: Value, panels: Vec<Panel>) -> Value {
    let panels: Vec<Value> = panels
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": p.exprs.iter().enumerate().map(|(j, (expr, legend))| json!({
                    "refId": char::from(b'A' + j as u8).to_string(),
                    "expr": expr,
                    "legendFormat": legend,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut list = vec![json!({
        "name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
    })];
    list.extend(variables.as_array().cloned().unwrap_or_default());
    json!({
        "uid": uid,
        "title": title,
        "tags": ["kubenova"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": false,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": list},
        "panels": panels,
    })
}

/// The operator series of the tenant dashboard: the operators of the jobs chosen.
const OPERATOR_SELECTOR: &str = r#"job=~"$job""#;
/// The tenant gauges of the tenants chosen, on the operators of the jobs chosen.
const TENANT_SELECTOR: &str = r#"job=~"$job",tenant=~"$tenant""#;
/// The tenant gauge the tenant dashboard's variables list the jobs and tenants of (one
/// series per tenant, whatever it uses).
const TENANT_VARIABLE_METRIC: &str = "kubenova_tenant_usage_sample_timestamp_seconds";

/// A tenant gauge of the tenants chosen, by job and tenant (and `by`, when not empty):
/// tenants of two clusters may have the same name. `max`, not `sum`: while the Lease
/// moves, the old and the new leader of one operator may both expose a tenant for a
/// scrape or two.
fn per_tenant(metric: &str, by: &str) -> String {
    let by = if by.is_empty() {
        "job, tenant".to_string()
    } else {
        format!("job, tenant, {by}")
    };
    format!("max by ({by}) ({metric}{{{TENANT_SELECTOR}}})")
}

/// A Grafana query variable over the dashboard's data source (every value, several at
/// once, all by default).
fn query_variable(name: &str, label: &str, query: &str) -> Value {
    json!({
        "name": name, "type": "query", "label": label,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": true,
        "multi": true,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    })
}

fn dashboards() -> Vec<(&'static str, Value)> {
    let manager = dashboard(
        "kubenova-manager",
        "KubeNova / Manager",
        json!([]),
        vec![
            panel(
                "Requests by route class",
                "reqps",
                &[("kubenova:http_requests:rate5m", "{{class}}")],
            ),
            panel(
                "Error ratio (5xx) by class, 1h",
                "percentunit",
                &[("kubenova:http_error_ratio:rate1h", "{{class}}")],
            ),
            panel(
                "p99 latency by class",
                "s",
                &[("kubenova:http_request_duration_seconds:p99_5m", "{{class}}")],
            ),
            panel(
                "Slow ratio by class, 1h",
                "percentunit",
                &[("kubenova:http_slow_ratio:rate1h", "{{class}}")],
            ),
            panel(
                "Requests by route (top 10)",
                "reqps",
                &[(
                    "topk(10, sum by (route, method) (rate(kubenova_http_requests_total[5m])))",
                    "{{method}} {{route}}",
                )],
            ),
            panel(
                "In-flight requests",
                "short",
                &[(
                    "sum by (instance) (kubenova_http_requests_in_flight)",
                    "{{instance}}",
                )],
            ),
            panel(
                "Store errors by operation",
                "ops",
                &[(
                    "sum by (operation) (rate(kubenova_store_errors_total[5m]))",
                    "{{operation}}",
                )],
            ),
            panel(
                "Store p99 latency by operation (top 10)",
                "s",
                &[(
                    "topk(10, histogram_quantile(0.99, sum by (le, operation) (rate(kubenova_store_operation_duration_seconds_bucket[5m]))))",
                    "{{operation}}",
                )],
            ),
            panel(
                "Record cache",
                "short",
                &[
                    ("kubenova_store_cache_enabled", "enabled {{instance}}"),
                    ("kubenova_store_backend_info", "backend {{backend}}"),
                    (
                        "rate(kubenova_store_cache_hits_total[5m])",
                        "hits/s {{instance}}",
                    ),
                    (
                        "rate(kubenova_store_cache_misses_total[5m])",
                        "misses/s {{instance}}",
                    ),
                ],
            ),
            panel(
                "Clusters by status",
                "short",
                &[("max by (status) (kubenova_clusters)", "{{status}}")],
            ),
            panel(
                "Heartbeat age by cluster",
                "s",
                &[(
                    "max by (name) (kubenova_cluster_heartbeat_age_seconds)",
                    "{{name}}",
                )],
            ),
            panel(
                "Signing key age",
                "s",
                &[
                    ("max(kubenova_signing_key_age_seconds)", "active key age"),
                    ("min(kubenova_signing_keys_readable)", "readable"),
                ],
            ),
            panel(
                "Rate limited and unauthenticated",
                "reqps",
                &[
                    (
                        "sum by (scope) (rate(kubenova_rate_limited_total[5m]))",
                        "429 {{scope}}",
                    ),
                    (
                        "sum by (reason) (rate(kubenova_http_unauthenticated_total[5m]))",
                        "401 {{reason}}",
                    ),
                ],
            ),
            panel(
                "Audit write failures",
                "ops",
                &[(
                    "sum(rate(kubenova_audit_write_failures_total[5m]))",
                    "failures/s",
                )],
            ),
        ],
    );
    let operator = dashboard(
        "kubenova-operator",
        "KubeNova / Operator",
        json!([]),
        vec![
            panel(
                "Reconciles by controller and result",
                "ops",
                &[(
                    "sum by (controller, result) (rate(kubenova_reconcile_total[5m]))",
                    "{{controller}} {{result}}",
                )],
            ),
            panel(
                "Reconcile error ratio, 15m",
                "percentunit",
                &[("kubenova:reconcile_error_ratio:rate15m", "{{controller}}")],
            ),
            panel(
                "Reconcile errors by reason",
                "ops",
                &[(
                    "sum by (controller, reason) (rate(kubenova_reconcile_errors_total[5m]))",
                    "{{controller}} {{reason}}",
                )],
            ),
            panel(
                "Reconcile p99 duration",
                "s",
                &[(
                    "histogram_quantile(0.99, sum by (le, controller) (rate(kubenova_reconcile_duration_seconds_bucket[5m])))",
                    "{{controller}}",
                )],
            ),
            panel(
                "Agent requests to the manager",
                "reqps",
                &[(
                    "sum by (route, result) (rate(kubenova_agent_requests_total[5m]))",
                    "{{route}} {{result}}",
                )],
            ),
            panel(
                "Applies and deletes from the desired state",
                "ops",
                &[
                    (
                        "sum by (kind, result) (rate(kubenova_agent_applies_total[5m]))",
                        "apply {{kind}} {{result}}",
                    ),
                    (
                        "sum by (kind, reason) (rate(kubenova_agent_deletes_total[5m]))",
                        "delete {{kind}} {{reason}}",
                    ),
                ],
            ),
            panel(
                "Status reports accepted",
                "ops",
                &[("sum(rate(kubenova_agent_reports_total[5m]))", "reports/s")],
            ),
            panel(
                "Agent sync lag p99 (write to ready)",
                "s",
                &[("kubenova:agent_sync_lag_seconds:p99_5m", "{{kind}}")],
            ),
            panel(
                "Sync lag over 60 s, ratio 1h",
                "percentunit",
                &[("kubenova:agent_sync_slow_ratio:rate1h", "ratio")],
            ),
            panel("Leader", "short", &[("kubenova_leader", "{{instance}}")]),
        ],
    );
    let cluster = dashboard(
        "kubenova-cluster",
        "KubeNova / Cluster",
        json!([{
            "name": "cluster", "type": "query", "label": "Cluster",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": "label_values(kubenova_cluster_heartbeat_age_seconds, name)", "refId": "cluster"},
            "definition": "label_values(kubenova_cluster_heartbeat_age_seconds, name)",
            "refresh": 2,
        }]),
        vec![
            panel(
                "Heartbeat age",
                "s",
                &[(
                    "max by (name) (kubenova_cluster_heartbeat_age_seconds{name=~\"$cluster\"})",
                    "{{name}}",
                )],
            ),
            panel(
                "Time since the last usage upload",
                "s",
                &[(
                    "min by (name) (kubenova_cluster_usage_upload_age_seconds{name=~\"$cluster\"})",
                    "{{name}}",
                )],
            ),
            panel(
                "Agent sync lag p99 by kind (all clusters)",
                "s",
                &[("kubenova:agent_sync_lag_seconds:p99_5m", "{{kind}}")],
            ),
            panel(
                "Tenant API requests by route (all clusters)",
                "reqps",
                &[(
                    "sum by (route) (rate(kubenova_http_requests_total{route=~\".*/tenants/.*\"}[5m]))",
                    "{{route}}",
                )],
            ),
            panel(
                "Tenant API 5xx by route (all clusters)",
                "reqps",
                &[(
                    "sum by (route) (rate(kubenova_http_requests_total{route=~\".*/tenants/.*\",status=~\"5..\"}[5m]))",
                    "{{route}}",
                )],
            ),
            panel(
                "Kubeconfig issuance p99 (all clusters)",
                "s",
                &[(
                    "histogram_quantile(0.99, sum by (le) (rate(kubenova_http_request_duration_seconds_bucket{route=~\".*/tenants/.*/kubeconfig\"}[5m])))",
                    "p99",
                )],
            ),
        ],
    );
    let tenant = dashboard(
        "kubenova-tenant",
        "KubeNova / Tenant",
        json!([
            query_variable(
                "job",
                "Operator job",
                &format!("label_values({TENANT_VARIABLE_METRIC}, job)"),
            ),
            query_variable(
                "tenant",
                "Tenant",
                &format!("label_values({TENANT_VARIABLE_METRIC}{{job=~\"$job\"}}, tenant)"),
            ),
        ]),
        vec![
            panel(
                "CPU requests and limits (cores, latest sample)",
                "short",
                &[
                    (
                        &per_tenant("kubenova_tenant_cpu_requests_cores", ""),
                        "requests {{job}}/{{tenant}}",
                    ),
                    (
                        &per_tenant("kubenova_tenant_cpu_limits_cores", ""),
                        "limits {{job}}/{{tenant}}",
                    ),
                ],
            ),
            panel(
                "Memory requests and limits (latest sample)",
                "bytes",
                &[
                    (
                        &per_tenant("kubenova_tenant_memory_requests_bytes", ""),
                        "requests {{job}}/{{tenant}}",
                    ),
                    (
                        &per_tenant("kubenova_tenant_memory_limits_bytes", ""),
                        "limits {{job}}/{{tenant}}",
                    ),
                ],
            ),
            panel(
                "Tenant and projects by phase",
                "short",
                &[(
                    &per_tenant("kubenova_tenant_objects", "kind, phase"),
                    "{{job}}/{{tenant}} {{kind}} {{phase}}",
                )],
            ),
            panel(
                "Quota use: fullest ResourceQuota per resource",
                "percentunit",
                &[(
                    &per_tenant("kubenova_tenant_quota_used_ratio", "resource"),
                    "{{job}}/{{tenant}} {{resource}}",
                )],
            ),
            panel(
                "ResourceQuota entries over their hard limit",
                "short",
                &[(
                    &per_tenant("kubenova_tenant_quotas_exceeded", ""),
                    "{{job}}/{{tenant}}",
                )],
            ),
            panel(
                "Storage of Bound PVCs by class",
                "bytes",
                &[(
                    &per_tenant("kubenova_tenant_storage_bytes", "storage_class"),
                    "{{job}}/{{tenant}} {{storage_class}}",
                )],
            ),
            panel(
                "Pods (not terminated)",
                "short",
                &[(
                    &per_tenant("kubenova_tenant_pods", ""),
                    "{{job}}/{{tenant}}",
                )],
            ),
            panel(
                "Apps, namespaces and LoadBalancers",
                "short",
                &[
                    (
                        &per_tenant("kubenova_tenant_apps", ""),
                        "apps {{job}}/{{tenant}}",
                    ),
                    (
                        &per_tenant("kubenova_tenant_namespaces", ""),
                        "namespaces {{job}}/{{tenant}}",
                    ),
                    (
                        &per_tenant("kubenova_tenant_load_balancers", ""),
                        "LoadBalancers {{job}}/{{tenant}}",
                    ),
                ],
            ),
            panel(
                "Age of the latest usage sample",
                "s",
                &[(
                    &format!(
                        "time() - {}",
                        per_tenant("kubenova_tenant_usage_sample_timestamp_seconds", "")
                    ),
                    "{{job}}/{{tenant}}",
                )],
            ),
            panel(
                "Reconciles on the tenant's operator by controller and result",
                "ops",
                &[(
                    &format!(
                        "sum by (controller, result) (rate(kubenova_reconcile_total{{{OPERATOR_SELECTOR}}}[5m]))"
                    ),
                    "{{controller}} {{result}}",
                )],
            ),
            panel(
                "Usage samples, and records dropped, on the tenant's operator",
                "ops",
                &[
                    (
                        &format!(
                            "sum(rate(kubenova_agent_usage_samples_total{{{OPERATOR_SELECTOR}}}[5m]))"
                        ),
                        "samples/s",
                    ),
                    (
                        &format!(
                            "sum(rate(kubenova_agent_usage_dropped_total{{{OPERATOR_SELECTOR}}}[1h]))"
                        ),
                        "dropped/s",
                    ),
                ],
            ),
            panel(
                "Agent sync lag p99 by kind (all clusters)",
                "s",
                &[("kubenova:agent_sync_lag_seconds:p99_5m", "{{kind}}")],
            ),
        ],
    );
    vec![
        ("kubenova-manager.json", manager),
        ("kubenova-operator.json", operator),
        ("kubenova-cluster.json", cluster),
        ("kubenova-tenant.json", tenant),
    ]
}

// ---- promtool unit tests ---------------------------------------------------------------

/// One alert unit test: input series (1 minute apart), the evaluation time, and the label
/// sets (besides `alertname`) expected to fire then; annotations are rendered from the rule.
struct Case {
    alert: &'static str,
    series: &'static [(&'static str, &'static str)],
    eval: &'static str,
    firing: &'static [&'static [(&'static str, &'static str)]],
}

const CASES: &[Case] = &[
    Case {
        alert: "KubeNovaAPIAvailabilityBudgetBurn",
        series: &[
            (
                r#"kubenova_http_requests_total{route="/api/v1/tenants",method="GET",status="200"}"#,
                "0+100x100",
            ),
            (
                r#"kubenova_http_requests_total{route="/api/v1/tenants",method="GET",status="500"}"#,
                "0+10x100",
            ),
            (
                r#"kubenova_http_requests_total{route="/api/v1/tenants",method="POST",status="201"}"#,
                "0+100x100",
            ),
            (
                r#"kubenova_http_requests_total{route="/api/v1/readyz",method="GET",status="503"}"#,
                "0+100x100",
            ),
        ],
        eval: "70m",
        firing: &[
            &[("class", "read"), ("severity", "page")],
            &[("class", "read"), ("severity", "ticket")],
        ],
    },
    Case {
        alert: "KubeNovaAPIAvailabilityBudgetBurn",
        series: &[
            (
                r#"kubenova_http_requests_total{route="/api/v1/tenants",method="GET",status="200"}"#,
                "0+1000x100",
            ),
            (
                r#"kubenova_http_requests_total{route="/api/v1/tenants",method="GET",status="500"}"#,
                "0+0x100",
            ),
            (
                r#"kubenova_http_requests_total{route="/api/v1/agent/desired",method="GET",status="200"}"#,
                "0+1000x100",
            ),
        ],
        eval: "70m",
        firing: &[],
    },
    Case {
        alert: "KubeNovaAPILatencyBudgetBurn",
        series: &[
            (
                r#"kubenova_http_request_duration_seconds_bucket{route="/api/v1/tenants",method="GET",le="0.256"}"#,
                "0+50x100",
            ),
            (
                r#"kubenova_http_request_duration_seconds_count{route="/api/v1/tenants",method="GET"}"#,
                "0+100x100",
            ),
            (
                r#"kubenova_http_request_duration_seconds_bucket{route="/api/v1/tenants",method="POST",le="1.024"}"#,
                "0+100x100",
            ),
            (
                r#"kubenova_http_request_duration_seconds_count{route="/api/v1/tenants",method="POST"}"#,
                "0+100x100",
            ),
        ],
        eval: "70m",
        firing: &[
            &[("class", "read"), ("severity", "page")],
            &[("class", "read"), ("severity", "ticket")],
        ],
    },
    Case {
        alert: "KubeNovaAgentSyncLagBudgetBurn",
        series: &[
            (
                r#"kubenova_agent_sync_lag_seconds_bucket{kind="tenant",le="60.0"}"#,
                "0+1x100",
            ),
            (
                r#"kubenova_agent_sync_lag_seconds_count{kind="tenant"}"#,
                "0+2x100",
            ),
        ],
        eval: "70m",
        firing: &[&[("severity", "page")], &[("severity", "ticket")]],
    },
    Case {
        alert: "KubeNovaReconcileErrors",
        series: &[
            (
                r#"kubenova_reconcile_total{controller="novatenant",result="error"}"#,
                "0+5x40",
            ),
            (
                r#"kubenova_reconcile_total{controller="novatenant",result="ok"}"#,
                "0+5x40",
            ),
            (
                r#"kubenova_reconcile_total{controller="novaapp",result="ok"}"#,
                "0+5x40",
            ),
        ],
        eval: "35m",
        firing: &[&[("controller", "novatenant"), ("severity", "ticket")]],
    },
    Case {
        alert: "KubeNovaClustersStale",
        series: &[
            (r#"kubenova_clusters{status="stale",instance="m1"}"#, "2x20"),
            (r#"kubenova_clusters{status="stale",instance="m2"}"#, "1x20"),
        ],
        eval: "10m",
        firing: &[&[("severity", "page")]],
    },
    Case {
        alert: "KubeNovaClustersStale",
        series: &[(r#"kubenova_clusters{status="stale",instance="m1"}"#, "0x20")],
        eval: "10m",
        firing: &[],
    },
    Case {
        alert: "KubeNovaRecordCacheDisabledOnPostgres",
        series: &[
            (
                r#"kubenova_store_cache_enabled{instance="m1",job="kubenova-manager"}"#,
                "0x20",
            ),
            (
                r#"kubenova_store_backend_info{backend="postgres",instance="m1",job="kubenova-manager"}"#,
                "1x20",
            ),
            (
                r#"kubenova_store_cache_enabled{instance="m2",job="kubenova-manager"}"#,
                "0x20",
            ),
            (
                r#"kubenova_store_backend_info{backend="sqlite",instance="m2",job="kubenova-manager"}"#,
                "1x20",
            ),
            (
                r#"kubenova_store_cache_enabled{instance="m3",job="kubenova-manager"}"#,
                "1x20",
            ),
            (
                r#"kubenova_store_backend_info{backend="postgres",instance="m3",job="kubenova-manager"}"#,
                "1x20",
            ),
        ],
        eval: "10m",
        firing: &[&[
            ("instance", "m1"),
            ("job", "kubenova-manager"),
            ("severity", "ticket"),
        ]],
    },
    Case {
        alert: "KubeNovaSigningKeyOld",
        series: &[(
            r#"kubenova_signing_key_age_seconds{instance="m1"}"#,
            "7776000+60x100",
        )],
        eval: "70m",
        firing: &[&[("severity", "ticket")]],
    },
    Case {
        alert: "KubeNovaSigningKeyOld",
        series: &[(
            r#"kubenova_signing_key_age_seconds{instance="m1"}"#,
            "86400+60x100",
        )],
        eval: "70m",
        firing: &[],
    },
    Case {
        alert: "KubeNovaSigningKeysUnreadable",
        series: &[
            (
                r#"kubenova_signing_keys_readable{instance="m1",job="kubenova-manager"}"#,
                "0x10",
            ),
            (
                r#"kubenova_signing_keys_readable{instance="m2",job="kubenova-manager"}"#,
                "1x10",
            ),
        ],
        eval: "5m",
        firing: &[&[
            ("instance", "m1"),
            ("job", "kubenova-manager"),
            ("severity", "page"),
        ]],
    },
    Case {
        alert: "KubeNovaDatabaseErrors",
        series: &[
            (
                r#"kubenova_store_errors_total{operation="get_tenant"}"#,
                "0+10x20",
            ),
            (
                r#"kubenova_store_operation_duration_seconds_count{operation="get_tenant"}"#,
                "0+100x20",
            ),
        ],
        eval: "15m",
        firing: &[&[("severity", "page")]],
    },
    Case {
        alert: "KubeNovaUsageReportsMissing",
        series: &[
            (
                r#"kubenova_cluster_usage_upload_age_seconds{cluster_id="c1",name="east",instance="m1"}"#,
                "11000+60x30",
            ),
            (
                r#"kubenova_cluster_usage_upload_age_seconds{cluster_id="c1",name="east",instance="m2"}"#,
                "100+60x30",
            ),
            (
                r#"kubenova_cluster_usage_upload_age_seconds{cluster_id="c2",name="west",instance="m1"}"#,
                "11000+60x30",
            ),
        ],
        eval: "20m",
        firing: &[&[
            ("cluster_id", "c2"),
            ("name", "west"),
            ("severity", "ticket"),
        ]],
    },
    Case {
        alert: "KubeNovaManagerDown",
        series: &[
            (r#"up{job="kubenova-manager",instance="m1"}"#, "0x10"),
            (r#"up{job="kubenova-manager",instance="m2"}"#, "1x10"),
        ],
        eval: "6m",
        firing: &[&[
            ("instance", "m1"),
            ("job", "kubenova-manager"),
            ("severity", "page"),
        ]],
    },
    Case {
        alert: "KubeNovaManagerDown",
        series: &[(r#"up{job="kubenova-operator",instance="o1"}"#, "1x10")],
        eval: "6m",
        firing: &[&[("job", "kubenova-manager"), ("severity", "page")]],
    },
    Case {
        alert: "KubeNovaClusterSweepStalled",
        series: &[(
            r#"kubenova_cluster_sweep_timestamp_seconds{instance="m1"}"#,
            "0x30",
        )],
        eval: "20m",
        firing: &[&[("severity", "ticket")]],
    },
    Case {
        alert: "KubeNovaClusterSweepStalled",
        series: &[(
            r#"kubenova_cluster_sweep_timestamp_seconds{instance="m1"}"#,
            "0+60x30",
        )],
        eval: "20m",
        firing: &[],
    },
];

/// `{{ $labels.x }}` replaced by the label's value.
fn render(template: &str, labels: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in labels {
        out = out.replace(&format!("{{{{ $labels.{k} }}}}"), v);
    }
    out
}

fn unit_tests(rules: &Value) -> Value {
    let all: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let tests: Vec<Value> = CASES
        .iter()
        .map(|c| {
            let exp: Vec<Value> = c
                .firing
                .iter()
                .map(|labels| {
                    let severity = labels.iter().find(|l| l.0 == "severity").unwrap().1;
                    let rule = all
                        .iter()
                        .find(|r| r["alert"] == c.alert && r["labels"]["severity"] == severity)
                        .unwrap_or_else(|| panic!("no {} rule of severity {severity}", c.alert));
                    let ann = &rule["annotations"];
                    json!({
                        "exp_labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                        "exp_annotations": {
                            "summary": render(ann["summary"].as_str().unwrap(), labels),
                            "description": render(ann["description"].as_str().unwrap(), labels),
                            "runbook_url": ann["runbook_url"],
                        },
                    })
                })
                .collect();
            json!({
                "interval": "1m",
                "input_series": c.series.iter().map(|(s, v)| json!({"series": s, "values": v})).collect::<Vec<_>>(),
                "alert_rule_test": [{"eval_time": c.eval, "alertname": c.alert, "exp_alerts": exp}],
            })
        })
        .collect();
    let mut tests = tests;
    // The error ratios are 0, not absent, when nothing failed (no error series exist).
    tests.push(json!({
        "interval": "1m",
        "input_series": [
            {"series": r#"kubenova_http_requests_total{route="/api/v1/tenants",method="GET",status="200"}"#, "values": "0+60x20"},
            {"series": r#"kubenova_store_operation_duration_seconds_count{operation="get_tenant"}"#, "values": "0+60x20"},
            {"series": r#"kubenova_reconcile_total{controller="novatenant",result="ok"}"#, "values": "0+60x20"},
        ],
        "promql_expr_test": [
            {"expr": r#"kubenova:http_error_ratio:rate5m{class="read"}"#, "eval_time": "10m",
             "exp_samples": [{"labels": r#"kubenova:http_error_ratio:rate5m{class="read"}"#, "value": 0}]},
            {"expr": "kubenova:store_error_ratio:rate5m", "eval_time": "10m",
             "exp_samples": [{"labels": "kubenova:store_error_ratio:rate5m", "value": 0}]},
            {"expr": "kubenova:reconcile_error_ratio:rate15m", "eval_time": "10m",
             "exp_samples": [{"labels": r#"kubenova:reconcile_error_ratio:rate15m{controller="novatenant"}"#, "value": 0}]},
            {"expr": r#"kubenova:http_requests:rate5m{class="read"}"#, "eval_time": "10m",
             "exp_samples": [{"labels": r#"kubenova:http_requests:rate5m{class="read"}"#, "value": 1}]},
        ],
    }));
    json!({
        "rule_files": ["../rules/kubenova.rules.yaml"],
        "evaluation_interval": "1m",
        "tests": tests,
    })
}

// ---- drift ----------------------------------------------------------------------------

fn rules_yaml() -> String {
    format!(
        "# Generated by bins/kubenova-manager/tests/monitoring.rs; regenerate with\n# KUBENOVA_BLESS=1 cargo test -p kubenova-manager --test monitoring. Do not edit.\n{}",
        serde_saphyr::to_string(&rules()).unwrap()
    )
}

fn generated() -> Vec<(PathBuf, String)> {
    let dir = monitoring_dir();
    let header = "# Generated by bins/kubenova-manager/tests/monitoring.rs; regenerate with\n# KUBENOVA_BLESS=1 cargo test -p kubenova-manager --test monitoring. Do not edit.\n";
    let mut files = vec![
        (dir.join("rules/kubenova.rules.yaml"), rules_yaml()),
        (
            dir.join("tests/alerts.yaml"),
            format!(
                "{header}{}",
                serde_saphyr::to_string(&unit_tests(&rules())).unwrap()
            ),
        ),
    ];
    for (name, d) in dashboards() {
        files.push((
            dir.join("dashboards").join(name),
            serde_json::to_string_pretty(&d).unwrap() + "\n",
        ));
    }
    files
}

#[test]
fn generated_rules_and_dashboards_are_committed() {
    let bless = std::env::var("KUBENOVA_BLESS").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (path, text) in generated() {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != text {
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated monitoring files differ from the committed ones: {stale:?}; run KUBENOVA_BLESS=1 cargo test -p kubenova-manager --test monitoring and commit"
    );
}

#[test]
fn every_alert_links_an_existing_runbook_and_has_a_unit_test() {
    let rules = rules();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/src");
    let summary = std::fs::read_to_string(docs.join("SUMMARY.md")).unwrap();
    let mut tests = String::new();
    for e in std::fs::read_dir(monitoring_dir().join("tests")).unwrap() {
        tests += &std::fs::read_to_string(e.unwrap().path()).unwrap();
    }
    for name in alert_names(&rules) {
        let page = format!("runbooks/{}.md", kebab(&name));
        let text = std::fs::read_to_string(docs.join(&page))
            .unwrap_or_else(|_| panic!("{name}: docs/src/{page} is missing"));
        for section in ["## Meaning", "## Confirm", "## Mitigate"] {
            assert!(text.contains(section), "{page} has no {section:?}");
        }
        assert!(text.contains(&name), "{page} does not name {name}");
        assert!(summary.contains(&page), "SUMMARY.md does not list {page}");
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no promtool unit test in deploy/monitoring/tests/ covers {name}"
        );
    }
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            if let Some(name) = r["alert"].as_str() {
                assert_eq!(r["annotations"]["runbook_url"], runbook(name));
            }
        }
    }
}

#[test]
fn runbook_slugs() {
    assert_eq!(
        kebab("KubeNovaAPIAvailabilityBudgetBurn"),
        "api-availability-budget-burn"
    );
    assert_eq!(kebab("KubeNovaClustersStale"), "clusters-stale");
}

// ---- promtool -------------------------------------------------------------------------

/// promtool, or `None` (loudly) when it is not installed; a failure when `CI=true`.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but promtool is not installed (Debian package `prometheus`; .ci/run installs it)"
        );
        eprintln!(
            "!!! PROMTOOL NOT INSTALLED: the rule checks and unit tests are SKIPPED (apt-get install prometheus) !!!"
        );
    }
    found
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = monitoring_dir();
    let out = run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(dir.join("rules/kubenova.rules.yaml")));
    assert!(out.contains("SUCCESS"), "{out}");
    let mut tests: Vec<PathBuf> = std::fs::read_dir(dir.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty());
    let out = run(Command::new(&promtool)
        .current_dir(dir.join("tests"))
        .arg("test")
        .arg("rules")
        .args(&tests));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The Grafana variables (`$name`) an expression uses.
fn variables_used(expr: &str) -> Vec<String> {
    expr.split('$')
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// `expr` as Grafana sends it with every variable set to All (`.*`; the variables are
/// only used in regex matchers).
fn with_variables_matching_all(expr: &str) -> String {
    let mut out = expr.to_string();
    for var in variables_used(expr) {
        out = out.replace(&format!("${var}"), ".*");
    }
    out
}

#[test]
fn grafana_variables_are_found_and_substituted() {
    let expr =
        r#"max by (tenant) (m{job=~"$job",tenant=~"$tenant"}) and on () n{name=~"$cluster"}"#;
    assert_eq!(variables_used(expr), ["job", "tenant", "cluster"]);
    assert_eq!(
        with_variables_matching_all(expr),
        r#"max by (tenant) (m{job=~".*",tenant=~".*"}) and on () n{name=~".*"}"#
    );
}

#[test]
fn promtool_parses_every_dashboard_expression() {
    let Some(promtool) = promtool() else { return };
    let mut rules = Vec::new();
    for (name, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                // Grafana's variables are substituted before the query is sent.
                let expr = with_variables_matching_all(t["expr"].as_str().unwrap());
                rules.push(json!({"record": format!("dashboard:{}:{}", name.trim_end_matches(".json").replace('-', "_"), rules.len()), "expr": expr}));
            }
        }
    }
    assert!(rules.len() > 20);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboards.rules.yaml");
    std::fs::write(
        &file,
        serde_saphyr::to_string(&json!({"groups": [{"name": "dashboards", "rules": rules}]}))
            .unwrap(),
    )
    .unwrap();
    let out = run(Command::new(&promtool).arg("check").arg("rules").arg(&file));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn dashboards_are_well_formed() {
    let mut uids = std::collections::BTreeSet::new();
    for (name, d) in dashboards() {
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{name}: uid reused"
        );
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(
            vars.contains(&"datasource"),
            "{name}: no datasource variable"
        );
        let mut ids = std::collections::BTreeSet::new();
        let mut cells = std::collections::BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: panel id reused"
            );
            let g = &p["gridPos"];
            assert!(
                cells.insert((g["x"].as_u64().unwrap(), g["y"].as_u64().unwrap())),
                "{name}: panels overlap"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}");
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {} has no query", p["title"]);
            let refs: std::collections::BTreeSet<&str> = targets
                .iter()
                .map(|t| t["refId"].as_str().unwrap())
                .collect();
            assert_eq!(refs.len(), targets.len(), "{name}: refId reused");
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                assert!(!expr.trim().is_empty());
                for var in variables_used(expr) {
                    assert!(
                        vars.contains(&var.as_str()),
                        "{name}: {expr} uses ${var}, not a variable of the dashboard"
                    );
                }
            }
        }
    }
}
