//! Tenants: creation with **plan application** ([`resolve_tenant`]), reads, owners,
//! quota/limit/policyset overrides, plan changes, summary, usage and the tenant
//! kubeconfig routes (issuance itself is in [`super::kubeconfigs`]).
//!
//! A tenant stores what the client asked to override ([`TenantOverrides`]) next to the
//! effective values (plan ∪ overrides), so a plan change or a new override re-resolves
//! from the catalog and the record always holds what the operator will enforce.

use super::AppState;
use super::authz::{Access, Principal, Role};
use super::clusters::{CascadeQuery, no_content_audited, parse_id, query, to_bytes};
use super::error::{ApiError, ApiResult};
use super::extract::{
    Ctx, KnJson, KnList, LabeledListQuery, ListBody, bytes_response, check_if_match, json_response,
    split,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kubenova_api::ErrorBody;
use kubenova_api::apprules::AppRules;
use kubenova_api::catalog::Catalog;
use kubenova_api::ids::{ClusterId, TenantId};
use kubenova_api::model::{
    ObjectStatus, Phase, SUBJECTS_MAX, Subject, Tenant, TenantOverrides, TenantSpec, UsageRecord,
    tenant_namespaces,
};
use kubenova_api::quantity::Quantity;
use kubenova_api::validate::{Validate, ValidationError, Validator, quote_key};
use kubenova_store::{ListFilter, ListParams, StoreError, UsageQuery, WriteOptions, encode_cursor};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

// ---------------------------------------------------------------------------------
// Plan application (pure)
// ---------------------------------------------------------------------------------

/// The plan-derived settings of a tenant: exactly what the operator enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTenant {
    /// The plan applied.
    pub plan: String,
    /// Effective ResourceQuota `hard`: the plan's `tenantQuotas` overlaid by the overrides.
    pub quotas: BTreeMap<String, Quantity>,
    /// Effective container default limits: the plan's `limitRange.default` overlaid by the overrides.
    pub limits: BTreeMap<String, Quantity>,
    /// Effective policysets: the override list if given, else the plan's.
    pub network_policies: Vec<String>,
}

/// Resolves a tenant's effective quotas, limits and policysets from its plan (the
/// requested one, else `default_plan`) and its per-field overrides.
///
/// Every problem is reported at once: an unknown plan (field `plan`), negative
/// quantities, a limit override above the plan's per-container maximum or below its
/// default request (the LimitRange would be invalid), and unknown policysets
/// (`networkPolicies[i]`).
pub fn resolve_tenant(
    catalog: &Catalog,
    default_plan: &str,
    requested_plan: Option<&str>,
    overrides: &TenantOverrides,
) -> Result<ResolvedTenant, ValidationError> {
    let mut v = Validator::new();
    let plan_name = requested_plan.unwrap_or(default_plan);
    let known_plans = || {
        catalog
            .plans()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let plan = catalog.plan(plan_name);
    if plan.is_none() {
        let reason = if requested_plan.is_some() {
            format!(
                "unknown plan {plan_name:?}: the catalog has {}",
                known_plans()
            )
        } else {
            format!(
                "no plan given and the configured default plan {plan_name:?} is not in the catalog ({}); name a plan",
                known_plans()
            )
        };
        v.push("plan", reason);
    }
    for (k, q) in &overrides.quotas {
        if q.is_negative() {
            v.push(
                format!("quotas.{}", quote_key(k)),
                format!("must not be negative (got {q})"),
            );
        }
    }
    for (k, q) in &overrides.limits {
        let field = format!("limits.{}", quote_key(k));
        if q.is_negative() {
            v.push(field.clone(), format!("must not be negative (got {q})"));
            continue;
        }
        if let Some(p) = plan {
            if let Some(max) = p.limit_range.max.get(k)
                && q > max
            {
                v.push(
                    field.clone(),
                    format!(
                        "{q} exceeds the per-container maximum {max} of plan {:?}",
                        p.name
                    ),
                );
            }
            if let Some(req) = p.limit_range.default_request.get(k)
                && q < req
            {
                v.push(
                    field,
                    format!("{q} is below the default request {req} of plan {:?} (a LimitRange needs defaultRequest <= default)", p.name),
                );
            }
        }
    }
    let policysets: Vec<String> = match (&overrides.network_policies, plan) {
        (Some(list), _) => list.clone(),
        (None, Some(p)) => p.policysets.clone(),
        (None, None) => Vec::new(),
    };
    for (i, name) in policysets.iter().enumerate() {
        if catalog.policyset(name).is_some() {
            // Its KubeVela rules must be of types the plan allows, or no app of the
            // tenant could satisfy them.
            if let Some(p) = plan
                && let Err(why) = AppRules::resolve(catalog, &p.name, std::slice::from_ref(name))
            {
                v.push(format!("networkPolicies[{i}]"), why);
            }
        } else {
            v.push(
                format!("networkPolicies[{i}]"),
                format!(
                    "unknown policyset {name:?}: the catalog has {}",
                    catalog
                        .policysets()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    v.finish()?;
    let Some(plan) = plan else {
        // Unreachable: a missing plan is a violation above.
        return Err(ValidationError::single("plan", "unknown plan"));
    };
    let mut quotas = plan.tenant_quotas.clone();
    quotas.extend(overrides.quotas.iter().map(|(k, q)| (k.clone(), q.clone())));
    let mut limits = plan.limit_range.default.clone();
    limits.extend(overrides.limits.iter().map(|(k, q)| (k.clone(), q.clone())));
    Ok(ResolvedTenant {
        plan: plan.name.clone(),
        quotas,
        limits,
        network_policies: policysets,
    })
}

fn apply(t: &mut Tenant, r: ResolvedTenant) {
    t.plan = r.plan;
    t.quotas = r.quotas;
    t.limits = r.limits;
    t.network_policies = r.network_policies;
}

// ---------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------

/// A page of tenants.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantList {
    /// Tenants in creation order.
    pub items: Vec<Tenant>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `{"owners": [...]}` form of the `PUT .../owners` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"owners": ["alice@example.com", "group:acme-admins"]}))]
pub struct OwnersRequest {
    /// Owners: `alice@example.com`, `user:bob`, `group:ops`, `serviceaccount:ns:name`.
    pub owners: Vec<String>,
}

impl ListBody for OwnersRequest {
    const FIELD: &'static str = "owners";
}

/// Body of `PUT .../owners`: the complete new owner list, as an array or `{"owners": [...]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OwnersBody {
    /// An array of owners.
    List(Vec<String>),
    /// An object with `owners`.
    Object(OwnersRequest),
}

/// `{"policies": [...]}` form of the `PUT .../network-policies` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"policies": ["tenant-isolation", "pod-security-restricted"]}))]
pub struct NetworkPoliciesRequest {
    /// Policyset names from the catalog; `null` returns to the plan's policysets.
    pub policies: Option<Vec<String>>,
}

impl ListBody for NetworkPoliciesRequest {
    const FIELD: &'static str = "policies";
}

/// Body of `PUT .../network-policies`: the complete new policyset list, as an array or
/// `{"policies": [...]}` (`{"policies": null}` returns to the plan's policysets).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum NetworkPoliciesBody {
    /// An array of policyset names.
    List(Vec<String>),
    /// An object with `policies` (a list, or `null`).
    Object(NetworkPoliciesRequest),
}

/// `PUT /tenants/{id}/plan`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plan": "gold"}))]
pub struct PlanRequest {
    /// Plan name from the catalog.
    pub plan: String,
}

/// Counts of a tenant. Usage-derived numbers come from the latest usage report; when no
/// report exists they are 0 and `usageReported` is false.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"tenantId": "22222222-2222-2222-2222-222222222222", "clusterId": "11111111-1111-1111-1111-111111111111",
    "projects": 1, "apps": 1, "namespaces": 3, "loadBalancers": 0, "quotaViolations": 0, "exceededQuotas": [],
    "usageReported": false, "phase": "pending"}))]
pub struct TenantSummary {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Cluster.
    pub cluster_id: ClusterId,
    /// Projects in the store.
    pub projects: i64,
    /// Apps in the store, over all projects.
    pub apps: i64,
    /// Namespaces: the owner and apps namespaces plus one per project.
    pub namespaces: i64,
    /// LoadBalancer services in the latest usage report (0 when none).
    pub load_balancers: i64,
    /// Quotas the latest usage report exceeds (0 when none).
    pub quota_violations: i64,
    /// Which quotas are exceeded.
    pub exceeded_quotas: Vec<String>,
    /// True once the operator reported usage for this tenant.
    pub usage_reported: bool,
    /// Hour of the latest usage report.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_reported_at: Option<OffsetDateTime>,
    /// Phase reported by the operator.
    pub phase: Phase,
}

/// `GET /tenants/{id}/usage` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageParams {
    /// First hour, RFC 3339 (inclusive). Default: 24 hours before `to`.
    pub from: Option<String>,
    /// End, RFC 3339 (exclusive). Default: now.
    pub to: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// Also return the per-project records (default: tenant totals only).
    pub include_projects: Option<bool>,
    /// `hour`, `day` or `month` (UTC, calendar months): adds `series`, one entry per
    /// period with a report, priced at the plan in force at each hour. With `day` and
    /// `month` the database sums the periods and `records` is left empty.
    pub granularity: Option<String>,
}

/// Sums over the records of a range (tenant-level records only).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// Hours with a report.
    pub hours: i64,
    /// Σ CPU requests × hours, in millicore-hours.
    pub cpu_millicore_hours: i64,
    /// Σ memory requests × hours, in byte-hours.
    pub memory_byte_hours: i64,
    /// Σ PVC capacity × hours, in byte-hours.
    pub storage_byte_hours: i64,
    /// Σ LoadBalancer services × hours.
    pub load_balancer_hours: i64,
    /// Σ pods × hours.
    pub pod_hours: i64,
}

/// Cost of a range at the tenant's current plan prices (exact decimal arithmetic,
/// rounded to 6 decimal places).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageCost {
    /// Plan whose prices were used.
    pub plan: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// CPU part.
    pub cpu: String,
    /// Memory part.
    pub memory: String,
    /// Storage part.
    pub storage: String,
    /// LoadBalancer part.
    pub load_balancers: String,
    /// Sum.
    pub total: String,
}

/// Usage of a tenant over a range: the hourly records, totals, cost, and the latest
/// report in the 0.1.3 shape (`cpuRequests`, `memoryRequests`, ...; absent when no report).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantUsage {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Cluster.
    pub cluster_id: ClusterId,
    /// Range start.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub from: OffsetDateTime,
    /// Range end (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub to: OffsetDateTime,
    /// True when at least one record lies in the range.
    pub usage_reported: bool,
    /// Latest CPU requests (quantity), from the latest record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_requests: Option<String>,
    /// Latest memory requests (quantity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_requests: Option<String>,
    /// Latest PVC capacity (quantity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvc_storage: Option<String>,
    /// Latest LoadBalancer services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancers: Option<i64>,
    /// Latest pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<i64>,
    /// Latest namespaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<i64>,
    /// Latest apps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps: Option<i64>,
    /// Quotas the latest record exceeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_violations: Option<i64>,
    /// Hour of the latest record.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_reported_at: Option<OffsetDateTime>,
    /// Sums over the tenant-level records.
    pub totals: UsageTotals,
    /// Cost at the prices of the plan in force, with its parts, when one plan was in
    /// force for the whole range (absent otherwise, or if the plan left the catalog; see
    /// `costByPlan` and `totalCost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<UsageCost>,
    /// The cost of the range by plan in force (a plan change mid-range prices each hour at
    /// the plan in force at its start).
    pub cost_by_plan: Vec<super::usage::PlanCost>,
    /// Sum of `costByPlan` (absent when a plan left the catalog or the currencies differ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_cost: Option<String>,
    /// Currency of `totalCost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Quota use against the hard limits from the latest report that carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaReport>,
    /// Per period when `granularity` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<super::usage::UsageBucket>>,
    /// The hourly records, oldest first; empty with `granularity=day` or `month` (the
    /// periods are summed by the database: read the hours without a granularity, or with
    /// `granularity=hour`).
    pub records: Vec<UsageRecord>,
}

/// Quota use against the hard limits, as the operator read the ResourceQuotas' status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaReport {
    /// Hour of the report it comes from.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub reported_at: OffsetDateTime,
    /// Entries over their hard limit.
    pub violations: i64,
    /// Every entry.
    pub items: Vec<kubenova_api::model::QuotaUse>,
}

/// The totals of a usage answer from the store's sums.
pub(crate) fn usage_totals_of(sums: &kubenova_store::UsageSums) -> UsageTotals {
    UsageTotals {
        hours: sums.records,
        cpu_millicore_hours: sums.cpu_millicore_hours,
        memory_byte_hours: sums.memory_byte_hours,
        storage_byte_hours: sums.storage_byte_hours,
        load_balancer_hours: sums.load_balancer_hours,
        pod_hours: sums.pod_hours,
    }
}

/// The quota report of `r`, if it carries quota use.
pub(crate) fn quota_report(r: &UsageRecord) -> Option<QuotaReport> {
    if r.quotas.is_empty() {
        return None;
    }
    Some(QuotaReport {
        reported_at: r.hour,
        violations: r.quotas.iter().filter(|q| q.exceeded()).count() as i64,
        items: r.quotas.clone(),
    })
}

/// `GET /tenants` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllTenantsQuery {
    /// Only tenants of this cluster.
    pub cluster_id: Option<String>,
    /// Page size (default 100, max 500).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page (pass the same `name` and `labelSelector` again).
    pub cursor: Option<String>,
    /// Only tenants with exactly this name (a DNS-1123 label; one per cluster at most);
    /// what the caller may not see stays out of the list.
    #[param(example = "acme")]
    pub name: Option<String>,
    /// Only tenants whose labels match this Kubernetes label selector: comma-separated
    /// requirements that must all hold, each `key=value` (or `==`), `key!=value`,
    /// `key in (v1,v2)`, `key notin (v1,v2)`, `key` (has the label) or `!key` (has not).
    /// `!=` and `notin` also select tenants without the key. At most 1024 characters and
    /// 32 requirements; keys and values follow the Kubernetes label rules. URL-encode it.
    #[param(example = "tier in (gold,silver),!example.com/legacy")]
    pub label_selector: Option<String>,
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

fn sees_all_tenants(p: &Principal) -> bool {
    p.is_platform() || (p.has(Role::ReadOnly) && p.tenants.is_empty() && p.projects.is_empty())
}

/// The tenants the caller may see (all, or those of its scope), optionally of one
/// cluster, that pass `filter`: the filter only narrows what the caller sees.
async fn visible_tenants(
    st: &AppState,
    p: &Principal,
    cluster: Option<ClusterId>,
    filter: &ListFilter,
    params: &ListParams,
) -> ApiResult<TenantList> {
    if sees_all_tenants(p) {
        let page = st
            .store
            .list_tenants_matching(cluster, filter, params)
            .await?;
        return Ok(TenantList {
            items: page.items,
            next_cursor: page.next_cursor,
        });
    }
    let ids = p.scoped_tenants();
    if ids.is_empty() {
        return Err(ApiError::forbidden(
            "listing tenants needs admin, ops, readOnly, a tenant scope or ownership of a tenant",
        ));
    }
    let limit = params.page_size()? as usize;
    let after = params.cursor_uuid()?;
    let mut items = Vec::new();
    for id in ids.into_iter().filter(|id| after.is_none_or(|a| id.0 > a)) {
        match st.store.get_tenant(id).await {
            Ok(t)
                if cluster.is_none_or(|c| t.cluster_id == c)
                    && filter.matches(&t.name, &t.labels) =>
            {
                items.push(t)
            }
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if items.len() > limit {
            break;
        }
    }
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| encode_cursor(t.id))
    } else {
        None
    };
    Ok(TenantList { items, next_cursor })
}

/// Loads a tenant by path ids and checks the caller's access; out of scope is KN-404.
async fn load_tenant(
    st: &AppState,
    ctx: &Ctx,
    cluster_raw: Option<&str>,
    tenant_raw: &str,
    access: Access,
) -> ApiResult<Tenant> {
    let cluster: Option<ClusterId> = cluster_raw.map(|c| parse_id("cluster", c)).transpose()?;
    let id: TenantId = parse_id("tenant", tenant_raw)?;
    let t = match st.store.get_tenant(id).await {
        Ok(t) => t,
        Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found("tenant", id)),
        Err(e) => return Err(e.into()),
    };
    if cluster.is_some_and(|c| c != t.cluster_id) {
        return Err(ApiError::not_found("tenant", id));
    }
    ctx.principal.check_tenant(&t, access)?;
    Ok(t)
}

fn check_owners(owners: &[String]) -> Result<(), ValidationError> {
    let mut v = Validator::new();
    v.max_items("owners", owners, SUBJECTS_MAX);
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in owners.iter().enumerate() {
        match Subject::parse(s) {
            Ok(sub) => {
                if !seen.insert((sub.kind as u8, sub.name)) {
                    v.push(format!("owners[{i}]"), format!("duplicate subject {s:?}"));
                }
            }
            Err(e) => v.push(format!("owners[{i}]"), format!("{s:?}: {e}")),
        }
    }
    v.finish()
}

fn check_resource_keys(
    field: &str,
    map: &BTreeMap<String, Quantity>,
) -> Result<(), ValidationError> {
    let mut v = Validator::new();
    if map.len() > 64 {
        v.push(field, "must have at most 64 entries");
    }
    for k in map.keys() {
        v.label_key(&format!("{field}.{}", quote_key(k)), k);
    }
    v.finish()
}

/// Applies a change to a tenant (re-resolving its plan), with If-Match, audit and version check.
async fn update_tenant_with(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    cluster_raw: Option<&str>,
    tenant_raw: &str,
    action: &str,
    change: impl FnOnce(&mut Tenant) -> Result<(), ValidationError>,
) -> ApiResult<Response> {
    let mut t = load_tenant(st, ctx, cluster_raw, tenant_raw, Access::Write).await?;
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    check_if_match(headers, "tenant", t.id, t.version)?;
    let expected = t.version;
    change(&mut t)?;
    let resolved = resolve_tenant(
        &st.catalog,
        &st.config.default_plan,
        Some(&t.plan),
        &t.overrides,
    )?;
    apply(&mut t, resolved);
    t.version = expected + 1;
    t.updated_at = OffsetDateTime::now_utc();
    let bytes = to_bytes(&t)?;
    let audit = ctx.audit(action, "tenant", t.id, 200);
    let idem = ctx.idempotency_record(200, &bytes);
    st.store
        .update_tenant(
            &t,
            expected,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: idem.as_ref(),
            },
        )
        .await?;
    Ok(bytes_response(
        StatusCode::OK,
        bytes,
        Some(t.version),
        None,
        true,
    ))
}

// ---------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, delete_tenant))
        .routes(routes!(put_owners))
        .routes(routes!(put_quotas))
        .routes(routes!(put_limits))
        .routes(routes!(put_network_policies))
        .routes(routes!(tenant_summary))
        .routes(routes!(tenant_kubeconfig, issue_tenant_kubeconfig))
        .routes(routes!(tenant_usage))
        .routes(routes!(put_plan))
        .routes(routes!(list_all_tenants))
}

const TENANT_EXAMPLE: &str = r#"{"id": "22222222-2222-2222-2222-222222222222", "clusterId": "11111111-1111-1111-1111-111111111111",
 "name": "acme", "owners": ["alice@example.com"], "plan": "baseline", "labels": {"tier": "gold"},
 "quotas": {"limits.cpu": "2", "limits.memory": "4Gi", "persistentvolumeclaims": "10", "pods": "50", "requests.cpu": "4",
   "requests.memory": "4Gi", "requests.storage": "20Gi", "services.loadbalancers": "1"},
 "limits": {"cpu": "500m", "memory": "512Mi"}, "networkPolicies": ["tenant-isolation", "pod-security-baseline", "baseline"],
 "ownerNamespace": "acme-owner", "appsNamespace": "acme-apps",
 "overrides": {"quotas": {"requests.cpu": "4"}, "limits": {}}, "status": {"phase": "pending", "conditions": []},
 "version": 1, "createdAt": "2026-01-01T00:05:00Z", "updatedAt": "2026-01-01T00:05:00Z"}"#;

fn tenant_example() -> serde_json::Value {
    serde_json::from_str(TENANT_EXAMPLE).unwrap_or_default()
}

/// Lists the tenants of a cluster that the caller may see.
///
/// `name` and `labelSelector` narrow the list to matching tenants among those the caller
/// may see (e.g. `?name=acme` or `?labelSelector=tier%3Dgold`).
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants",
    tag = "tenants",
    operation_id = "listTenants",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), LabeledListQuery),
    responses(
        (status = 200, description = "A page of tenants (tenant owners see only their own)", body = TenantList,
            example = json!({"items": [tenant_example()], "nextCursor": null})),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "The caller has no tenant visibility", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "listing tenants needs admin, ops, readOnly or a tenant scope"})),
        (status = 404, description = "No such cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"11111111-1111-1111-1111-111111111111\" not found"})),
        (status = 422, description = "Bad limit, cursor, name or labelSelector", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: name: \"Acme\" is not a DNS-1123 label: use lower-case letters, digits and '-', starting and ending with a letter or digit"})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_tenants(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(cluster): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let cid: ClusterId = parse_id("cluster", &cluster)?;
    let (params, filter) = query::<LabeledListQuery>(&uri)?.split()?;
    if !sees_all_tenants(&ctx.principal) && ctx.principal.scoped_tenants().is_empty() {
        return Err(ApiError::forbidden(
            "listing tenants needs admin, ops, readOnly, a tenant scope or ownership of a tenant",
        ));
    }
    st.store.get_cluster(cid).await?;
    let list = visible_tenants(&st, &ctx.principal, Some(cid), &filter, &params).await?;
    Ok(json_response(StatusCode::OK, &list, None, None, false))
}

/// Creates a tenant and applies its plan: the named plan (or the configured default),
/// overlaid per field by `quotas`, `limits` and `networkPolicies`.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants",
    tag = "tenants",
    operation_id = "createTenant",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first response")),
    request_body(content = TenantSpec, description = "Name, owners, plan (default: the configured default plan) and per-field overrides",
        example = json!({"name": "acme", "owners": ["alice@example.com"], "plan": "baseline", "labels": {"tier": "gold"}, "quotas": {"requests.cpu": "4"}})),
    responses(
        (status = 201, description = "Created with effective quotas, limits and policysets", body = Tenant,
            headers(("Location" = String, description = "URL of the tenant"), ("ETag" = String, description = "Record version")),
            example = json!(tenant_example())),
        (status = 400, description = "Malformed JSON or a non-UUID id", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops create tenants", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"11111111-1111-1111-1111-111111111111\" not found"})),
        (status = 409, description = "The name is taken in this cluster", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "a tenant named \"acme\" already exists in cluster 11111111-1111-1111-1111-111111111111"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Invalid name, owners, quantities, unknown plan or policyset, unknown fields", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: plan: unknown plan \"diamond\": the catalog has baseline, gold, platinum",
                "details": {"violations": [{"field": "plan", "reason": "unknown plan \"diamond\": the catalog has baseline, gold, platinum"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn create_tenant(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(cluster): Path<String>,
    KnJson(spec): KnJson<TenantSpec>,
) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin, Role::Ops])?;
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    let cid: ClusterId = parse_id("cluster", &cluster)?;
    st.store.get_cluster(cid).await?;
    spec.validate()?;
    let overrides = TenantOverrides {
        quotas: spec.quotas,
        limits: spec.limits,
        network_policies: spec.network_policies,
    };
    let resolved = resolve_tenant(
        &st.catalog,
        &st.config.default_plan,
        spec.plan.as_deref(),
        &overrides,
    )?;
    let (owner_namespace, apps_namespace) = tenant_namespaces(&spec.name);
    let now = OffsetDateTime::now_utc();
    let mut t = Tenant {
        id: TenantId::new(),
        cluster_id: cid,
        name: spec.name,
        owners: spec.owners,
        plan: String::new(),
        labels: spec.labels,
        quotas: BTreeMap::new(),
        limits: BTreeMap::new(),
        network_policies: Vec::new(),
        owner_namespace,
        apps_namespace,
        overrides,
        status: ObjectStatus::default(),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    apply(&mut t, resolved);
    let bytes = to_bytes(&t)?;
    let mut audit = ctx.audit("tenant.create", "tenant", t.id, 201);
    audit.details = Some(json!({"clusterId": cid, "name": t.name, "plan": t.plan}));
    let idem = ctx.idempotency_record(201, &bytes);
    st.store
        .create_tenant(
            &t,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: idem.as_ref(),
            },
        )
        .await?;
    Ok(bytes_response(
        StatusCode::CREATED,
        bytes,
        Some(t.version),
        Some(format!("/api/v1/clusters/{cid}/tenants/{}", t.id)),
        true,
    ))
}

/// Reads one tenant.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}",
    tag = "tenants",
    operation_id = "getTenant",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), ("tenantID" = String, Path, description = "Tenant id (UUID)")),
    responses(
        (status = 200, description = "The tenant; `ETag` is its version", body = Tenant,
            headers(("ETag" = String, description = "Record version")), example = json!(tenant_example())),
        (status = 400, description = "An id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such tenant in this cluster, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
async fn get_tenant(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((c, t)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = load_tenant(&st, &ctx, Some(&c), &t, Access::Read).await?;
    Ok(json_response(
        StatusCode::OK,
        &t,
        Some(t.version),
        None,
        false,
    ))
}

/// Deletes a tenant. Refuses while it has projects unless `cascade=true`.
#[utoipa::path(
    delete,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}",
    tag = "tenants",
    operation_id = "deleteTenant",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), ("tenantID" = String, Path, description = "Tenant id (UUID)"),
        CascadeQuery, ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "An id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops delete tenants", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 409, description = "The tenant still has projects", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "tenant 22222222-2222-2222-2222-222222222222 still has 1 project(s); delete them first or delete with cascade=true"})),
        (status = 412, description = "If-Match is stale", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "tenant \"22222222-2222-2222-2222-222222222222\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
    ),
    security(("bearerAuth" = []))
)]
async fn delete_tenant(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((c, t)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q: CascadeQuery = query(&uri)?;
    let t = load_tenant(&st, &ctx, Some(&c), &t, Access::Write).await?;
    check_if_match(&headers, "tenant", t.id, t.version)?;
    let cascade = q.cascade.unwrap_or(false);
    let mut audit = ctx.audit("tenant.delete", "tenant", t.id, 204);
    audit.details = Some(json!({"cascade": cascade, "name": t.name, "clusterId": t.cluster_id}));
    st.store
        .delete_tenant(
            t.id,
            cascade,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: None,
            },
        )
        .await?;
    Ok(no_content_audited())
}

/// Replaces a tenant's owners.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/owners",
    tag = "tenants",
    operation_id = "putTenantOwners",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), ("tenantID" = String, Path, description = "Tenant id (UUID)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    request_body(content = OwnersBody, description = "The complete new owner list: an array or `{\"owners\": [...]}`",
        example = json!({"owners": ["alice@example.com", "group:acme-admins"]})),
    responses(
        (status = 200, description = "The updated tenant", body = Tenant, example = json!(tenant_example())),
        (status = 400, description = "Malformed JSON or a non-UUID id", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops change tenants", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 412, description = "If-Match is stale, or a concurrent change", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "tenant \"22222222-2222-2222-2222-222222222222\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Invalid or duplicate subjects", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: owners[1]: \"group:\": group name must not be empty",
                "details": {"violations": [{"field": "owners[1]", "reason": "\"group:\": group name must not be empty"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn put_owners(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((c, t)): Path<(String, String)>,
    KnList(body): KnList<OwnersRequest>,
) -> ApiResult<Response> {
    update_tenant_with(
        &st,
        &ctx,
        &headers,
        Some(&c),
        &t,
        "tenant.owners.update",
        |t| {
            check_owners(&body.owners)?;
            t.owners = body.owners;
            Ok(())
        },
    )
    .await
}

/// Replaces the tenant's quota overrides; effective quotas = plan ∪ overrides.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/quotas",
    tag = "tenants",
    operation_id = "putTenantQuotas",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), ("tenantID" = String, Path, description = "Tenant id (UUID)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    request_body(content = BTreeMap<String, String>, description = "ResourceQuota `hard` overrides (resource → quantity); replaces the previous overrides",
        example = json!({"requests.cpu": "4", "requests.memory": "8Gi"})),
    responses(
        (status = 200, description = "The updated tenant with effective quotas", body = Tenant, example = json!(tenant_example())),
        (status = 400, description = "Malformed JSON or a non-UUID id", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops change tenants", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 412, description = "If-Match is stale, or a concurrent change", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "tenant \"22222222-2222-2222-2222-222222222222\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Invalid resource name or quantity", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: requests.cpu: invalid quantity \"4 cores\"",
                "details": {"violations": [{"field": "requests.cpu", "reason": "invalid quantity \"4 cores\": must not contain whitespace"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn put_quotas(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((c, t)): Path<(String, String)>,
    KnJson(body): KnJson<BTreeMap<String, Quantity>>,
) -> ApiResult<Response> {
    update_tenant_with(
        &st,
        &ctx,
        &headers,
        Some(&c),
        &t,
        "tenant.quotas.update",
        |t| {
            check_resource_keys("quotas", &body)?;
            t.overrides.quotas = body;
            Ok(())
        },
    )
    .await
}

/// Replaces the tenant's container default-limit overrides; effective = plan defaults ∪ overrides.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/limits",
    tag = "tenants",
    operation_id = "putTenantLimits",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), ("tenantID" = String, Path, description = "Tenant id (UUID)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    request_body(content = BTreeMap<String, String>, description = "LimitRange default-limit overrides (container resource → quantity); replaces the previous overrides. \
        Must stay within the plan's per-container maximum and at or above its default request.",
        example = json!({"cpu": "1", "memory": "1Gi"})),
    responses(
        (status = 200, description = "The updated tenant with effective limits", body = Tenant, example = json!(tenant_example())),
        (status = 400, description = "Malformed JSON or a non-UUID id", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops change tenants", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 412, description = "If-Match is stale, or a concurrent change", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "tenant \"22222222-2222-2222-2222-222222222222\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Invalid name or quantity, or outside the plan's LimitRange", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: limits.cpu: 8 exceeds the per-container maximum 2 of plan \"baseline\"",
                "details": {"violations": [{"field": "limits.cpu", "reason": "8 exceeds the per-container maximum 2 of plan \"baseline\""}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn put_limits(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((c, t)): Path<(String, String)>,
    KnJson(body): KnJson<BTreeMap<String, Quantity>>,
) -> ApiResult<Response> {
    update_tenant_with(
        &st,
        &ctx,
        &headers,
        Some(&c),
        &t,
        "tenant.limits.update",
        |t| {
            check_resource_keys("limits", &body)?;
            t.overrides.limits = body;
            Ok(())
        },
    )
    .await
}

/// Sets the tenant's policysets (`null` returns to the plan's).
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/network-policies",
    tag = "tenants",
    operation_id = "putTenantNetworkPolicies",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), ("tenantID" = String, Path, description = "Tenant id (UUID)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    request_body(content = NetworkPoliciesBody, description = "The complete new policyset list: an array or `{\"policies\": [...]}`; `{\"policies\": null}` returns to the plan's",
        example = json!({"policies": ["tenant-isolation", "pod-security-restricted"]})),
    responses(
        (status = 200, description = "The updated tenant", body = Tenant, example = json!(tenant_example())),
        (status = 400, description = "Malformed JSON or a non-UUID id", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops change tenants", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 412, description = "If-Match is stale, or a concurrent change", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "tenant \"22222222-2222-2222-2222-222222222222\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Unknown policyset", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: policies[0]: unknown policyset \"deny-all\"",
                "details": {"violations": [{"field": "policies[0]", "reason": "unknown policyset \"deny-all\": the catalog has baseline, gold-tier, pod-security-baseline, tenant-isolation"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn put_network_policies(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((c, t)): Path<(String, String)>,
    KnList(body): KnList<NetworkPoliciesRequest>,
) -> ApiResult<Response> {
    let catalog = st.catalog.clone();
    update_tenant_with(
        &st,
        &ctx,
        &headers,
        Some(&c),
        &t,
        "tenant.network-policies.update",
        |t| {
            if let Some(list) = &body.policies {
                let mut v = Validator::new();
                v.max_items("policies", list, 64);
                for (i, name) in list.iter().enumerate() {
                    if v.dns_label(&format!("policies[{i}]"), name)
                        && catalog.policyset(name).is_none()
                    {
                        v.push(
                            format!("policies[{i}]"),
                            format!(
                                "unknown policyset {name:?}: the catalog has {}",
                                catalog
                                    .policysets()
                                    .map(|p| p.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                    }
                }
                v.finish()?;
            }
            t.overrides.network_policies = body.policies;
            Ok(())
        },
    )
    .await
}

async fn count_children(st: &AppState, tenant: TenantId) -> ApiResult<(i64, i64)> {
    let (mut projects, mut apps) = (0i64, 0i64);
    let mut cursor = None;
    loop {
        let page = st
            .store
            .list_projects(
                tenant,
                &ListParams {
                    limit: Some(500),
                    cursor: cursor.take(),
                },
            )
            .await?;
        for p in &page.items {
            projects += 1;
            let mut ac = None;
            loop {
                let ap = st
                    .store
                    .list_apps(
                        p.id,
                        &ListParams {
                            limit: Some(500),
                            cursor: ac.take(),
                        },
                    )
                    .await?;
                apps += ap.items.len() as i64;
                match ap.next_cursor {
                    Some(c) => ac = Some(c),
                    None => break,
                }
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok((projects, apps))
}

/// The quotas a usage record exceeds: from the ResourceQuotas' status the operator
/// reported (the resources over their hard limit), or for records without it, the
/// tenant's quotas compared with the record's sums.
fn exceeded_quotas(t: &Tenant, r: &UsageRecord) -> Vec<String> {
    if !r.quotas.is_empty() {
        let mut out: Vec<String> = r
            .quotas
            .iter()
            .filter(|q| q.exceeded())
            .map(|q| q.resource.clone())
            .collect();
        out.sort();
        out.dedup();
        return out;
    }
    let checks: [(&str, i128); 5] = [
        ("requests.cpu", i128::from(r.cpu_millicores)),
        ("requests.memory", i128::from(r.memory_bytes)),
        ("requests.storage", i128::from(r.storage_bytes)),
        ("services.loadbalancers", i128::from(r.load_balancers)),
        ("pods", i128::from(r.pods)),
    ];
    checks
        .iter()
        .filter(|(k, used)| {
            t.quotas.get(*k).is_some_and(|q| {
                let limit = if *k == "requests.cpu" {
                    q.milli_value()
                } else {
                    q.value()
                };
                *used > limit
            })
        })
        .map(|(k, _)| (*k).to_string())
        .collect()
}

/// The tenant's latest tenant-level record of the last seven days.
async fn latest_usage(st: &AppState, t: &Tenant) -> ApiResult<Option<UsageRecord>> {
    let now = OffsetDateTime::now_utc();
    let recs = st
        .store
        .latest_usage(
            &UsageQuery {
                tenant: t.id,
                cluster: Some(t.cluster_id),
                project: None,
                all_projects: false,
                from: now - time::Duration::days(7),
                to: now + time::Duration::hours(1),
                max_records: st.config.usage_max_records,
            },
            1,
        )
        .await?;
    Ok(recs.into_iter().next())
}

/// Real counts of a tenant; usage-derived numbers only from reported usage.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/summary",
    tag = "tenants",
    operation_id = "getTenantSummary",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), ("tenantID" = String, Path, description = "Tenant id (UUID)")),
    responses(
        (status = 200, description = "Counts from the store; loadBalancers and quotaViolations from the latest usage report (0 with usageReported=false when none)",
            body = TenantSummary),
        (status = 400, description = "An id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
async fn tenant_summary(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((c, t)): Path<(String, String)>,
) -> ApiResult<Response> {
    let t = load_tenant(&st, &ctx, Some(&c), &t, Access::Read).await?;
    let (projects, apps) = count_children(&st, t.id).await?;
    let latest = latest_usage(&st, &t).await?;
    let exceeded = latest
        .as_ref()
        .map(|r| exceeded_quotas(&t, r))
        .unwrap_or_default();
    let body = TenantSummary {
        tenant_id: t.id,
        cluster_id: t.cluster_id,
        projects,
        apps,
        namespaces: 2 + projects,
        load_balancers: latest.as_ref().map(|r| r.load_balancers).unwrap_or(0),
        quota_violations: exceeded.len() as i64,
        exceeded_quotas: exceeded,
        usage_reported: latest.is_some(),
        last_reported_at: latest.as_ref().map(|r| r.hour),
        phase: t.status.phase,
    };
    Ok(json_response(StatusCode::OK, &body, None, None, false))
}

const KUBECONFIG_RESPONSE_EXAMPLE: &str = r#"{"name": "prod-eu-acme-developer", "tenantId": "22222222-2222-2222-2222-222222222222",
 "clusterId": "11111111-1111-1111-1111-111111111111", "role": "developer", "mode": "token", "namespace": "acme-apps",
 "server": "https://capsule-proxy.prod-eu.example.com:9001", "jti": "01936f4e-8a2b-7c3d-9e4f-5a6b7c8d9e0f",
 "expiresAt": "2026-01-01T11:00:00Z", "kubeconfig": "apiVersion: v1\nkind: Config\nclusters:\n- name: prod-eu-acme-developer\n  cluster:\n    server: https://capsule-proxy.prod-eu.example.com:9001\n    certificate-authority-data: LS0tLS1CRUdJTi...\n..."}"#;

pub(crate) fn kubeconfig_response_example() -> serde_json::Value {
    serde_json::from_str(KUBECONFIG_RESPONSE_EXAMPLE).unwrap_or_default()
}

/// Issues a tenant-scoped kubeconfig for the caller (query parameters `role`, `ttl`, `mode`).
///
/// The cluster entry is the cluster's Capsule Proxy with its CA; the user is a
/// manager-signed ES256 token (`mode=token`, default) or the `kubenova auth token` exec
/// plugin (`mode=exec`). `Accept: application/yaml` returns the kubeconfig itself.
/// tenantOwner: any role of its tenant; readOnly: viewer only; admin, ops: any.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenantID}/kubeconfig",
    tag = "tenants",
    operation_id = "getTenantKubeconfig",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"), super::kubeconfigs::KubeconfigQuery),
    responses(
        (status = 200, description = "The kubeconfig (JSON with metadata, or YAML with Accept: application/yaml; Cache-Control: no-store)",
            content(
                (super::kubeconfigs::IssuedKubeconfig = "application/json", example = json!(kubeconfig_response_example())),
                (String = "application/yaml", example = json!("apiVersion: v1\nkind: Config\n..."))
            )),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "The role is not allowed for the caller, or the subject is revoked", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "readOnly may obtain only viewer kubeconfigs, not owner"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 409, description = "The cluster has not reported a Capsule Proxy endpoint (or its CA)", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "the Capsule Proxy endpoint of the cluster is not reported yet: kubeconfigs go through Capsule Proxy; retry once the operator reports it",
                "details": {"clusterId": "11111111-1111-1111-1111-111111111111", "clusterStatus": "pending_bootstrap"}})),
        (status = 422, description = "Unknown role or mode, TTL not positive or over the maximum", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: ttl: must be greater than 0s and at most 86400s (--max-kubeconfig-ttl); got 90000s",
                "details": {"violations": [{"field": "ttl", "reason": "must be greater than 0s and at most 86400s (--max-kubeconfig-ttl); got 90000s"}]}})),
        (status = 503, description = "No external URL configured for the token issuer", body = ErrorBody,
            example = json!({"code": "KN-503", "message": "the manager has no external URL to put in tokens and exec kubeconfigs: set --external-url / KUBENOVA_EXTERNAL_URL"})),
    ),
    security(("bearerAuth" = []))
)]
async fn tenant_kubeconfig(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let tenant = super::kubeconfigs::tenant_by_id(&st, &t).await?;
    let q: super::kubeconfigs::KubeconfigQuery = query(&uri)?;
    let params = q.params(&st)?;
    super::kubeconfigs::issue(&st, &ctx, &headers, tenant, None, params).await
}

/// Issues a tenant-scoped kubeconfig for the caller (JSON body `role`, `ttl`, `mode`).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenantID}/kubeconfig",
    tag = "tenants",
    operation_id = "issueTenantKubeconfig",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)")),
    request_body(content = super::kubeconfigs::KubeconfigBody, example = json!({"role": "viewer", "ttl": "1h", "mode": "token"})),
    responses(
        (status = 200, description = "The kubeconfig (JSON with metadata, or YAML with Accept: application/yaml; Cache-Control: no-store)",
            content(
                (super::kubeconfigs::IssuedKubeconfig = "application/json", example = json!(kubeconfig_response_example())),
                (String = "application/yaml", example = json!("apiVersion: v1\nkind: Config\n..."))
            )),
        (status = 400, description = "Malformed JSON or a non-UUID id", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "The role is not allowed for the caller, or the subject is revoked", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "readOnly may obtain only viewer kubeconfigs, not owner"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 409, description = "The cluster has not reported a Capsule Proxy endpoint (or its CA)", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "the Capsule Proxy endpoint of the cluster is not reported yet: kubeconfigs go through Capsule Proxy; retry once the operator reports it"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Unknown role or mode, TTL not positive or over the maximum", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: role: unknown role \"admin\": use owner, developer or viewer"})),
        (status = 503, description = "No external URL configured for the token issuer", body = ErrorBody,
            example = json!({"code": "KN-503", "message": "the manager has no external URL to put in tokens and exec kubeconfigs: set --external-url / KUBENOVA_EXTERNAL_URL"})),
    ),
    security(("bearerAuth" = []))
)]
async fn issue_tenant_kubeconfig(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    headers: HeaderMap,
    KnJson(body): KnJson<super::kubeconfigs::KubeconfigBody>,
) -> ApiResult<Response> {
    let tenant = super::kubeconfigs::tenant_by_id(&st, &t).await?;
    let params = body.params(&st)?;
    super::kubeconfigs::issue(&st, &ctx, &headers, tenant, None, params).await
}

/// Exact `units × price / divisor` rounded half-up to 6 decimals, as a decimal string.
fn cost_part(units: i128, price: &str, divisor: i128) -> Option<i128> {
    let (int, frac) = price.split_once('.').unwrap_or((price, ""));
    let scale = u32::try_from(frac.len()).ok()?;
    let mantissa: i128 = format!("{int}{frac}").parse().ok()?;
    let num = units.checked_mul(mantissa)?.checked_mul(1_000_000)?;
    let den = divisor.checked_mul(10i128.checked_pow(scale)?)?;
    if den == 0 {
        return None;
    }
    Some((num + den / 2) / den)
}

/// Micro-units as a decimal string with 6 places (`1.500000`).
pub(crate) fn micros_str(v: i128) -> String {
    format!("{}.{:06}", v / 1_000_000, v % 1_000_000)
}

/// The cost of `totals` at `plan`'s prices: its currency and the amount in micro-units.
#[cfg(test)]
pub(crate) fn cost_micros(
    catalog: &Catalog,
    plan: &str,
    totals: &UsageTotals,
) -> Option<(String, i128)> {
    let c = usage_cost(catalog, plan, totals)?;
    let micros = |s: &str| -> Option<i128> {
        let (i, f) = s.split_once('.')?;
        Some(i.parse::<i128>().ok()? * 1_000_000 + f.parse::<i128>().ok()?)
    };
    Some((c.currency, micros(&c.total)?))
}

/// The cost of `totals` at `prices`: its currency and the amount in micro-units.
pub(crate) fn cost_micros_at(
    prices: &kubenova_api::catalog::Prices,
    totals: &UsageTotals,
) -> Option<(String, i128)> {
    let c = prices_cost(prices, "", totals)?;
    let micros = |s: &str| -> Option<i128> {
        let (i, f) = s.split_once('.')?;
        Some(i.parse::<i128>().ok()? * 1_000_000 + f.parse::<i128>().ok()?)
    };
    Some((c.currency, micros(&c.total)?))
}

#[cfg(test)]
fn usage_cost(catalog: &Catalog, plan: &str, totals: &UsageTotals) -> Option<UsageCost> {
    let p = catalog.plan(plan)?;
    prices_cost(&p.prices, &p.name, totals)
}

fn prices_cost(
    prices: &kubenova_api::catalog::Prices,
    plan: &str,
    totals: &UsageTotals,
) -> Option<UsageCost> {
    const GIB: i128 = 1 << 30;
    let cpu = cost_part(
        i128::from(totals.cpu_millicore_hours),
        &prices.cpu_core_hour.to_string(),
        1000,
    )?;
    let mem = cost_part(
        i128::from(totals.memory_byte_hours),
        &prices.memory_gib_hour.to_string(),
        GIB,
    )?;
    let sto = cost_part(
        i128::from(totals.storage_byte_hours),
        &prices.storage_gib_hour.to_string(),
        GIB,
    )?;
    let lb = cost_part(
        i128::from(totals.load_balancer_hours),
        &prices.load_balancer_hour.to_string(),
        1,
    )?;
    Some(UsageCost {
        plan: plan.to_owned(),
        currency: prices.currency.clone(),
        cpu: micros_str(cpu),
        memory: micros_str(mem),
        storage: micros_str(sto),
        load_balancers: micros_str(lb),
        total: micros_str(cpu + mem + sto + lb),
    })
}

fn bytes_quantity(bytes: i64) -> String {
    if bytes % 1024 == 0
        && let Ok(q) = Quantity::parse(&format!("{}Ki", bytes / 1024))
    {
        return q.to_string();
    }
    Quantity::from_nanos(i128::from(bytes) * 1_000_000_000).to_string()
}

/// A usage range bound: an RFC 3339 timestamp, else KN-422 naming the parameter.
pub(crate) fn usage_time(field: &str, raw: &str) -> ApiResult<OffsetDateTime> {
    OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).map_err(|_| {
        ApiError::invalid(
            field,
            format!("{raw:?} is not an RFC 3339 timestamp such as 2026-01-01T00:00:00Z"),
        )
    })
}

/// Hourly usage of a tenant over a range (default: the last 24 hours), as JSON or CSV.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenantID}/usage",
    tag = "tenants",
    operation_id = "getTenantUsage",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"), UsageParams),
    responses(
        (status = 200, description = "Records, totals and cost; the latest record in the 0.1.3 shape. `format=csv` returns text/csv.", body = TenantUsage,
            example = json!({"tenantId": "22222222-2222-2222-2222-222222222222", "clusterId": "11111111-1111-1111-1111-111111111111",
                "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "usageReported": true,
                "cpuRequests": "1500m", "memoryRequests": "2Gi", "pvcStorage": "10Gi", "loadBalancers": 1, "pods": 12, "namespaces": 3, "apps": 2,
                "quotaViolations": 0, "lastReportedAt": "2026-01-01T10:00:00Z",
                "totals": {"hours": 1, "cpuMillicoreHours": 1500, "memoryByteHours": 2147483648_i64, "storageByteHours": 10737418240_i64, "loadBalancerHours": 1, "podHours": 12},
                "cost": {"plan": "baseline", "currency": "USD", "cpu": "0.060000", "memory": "0.010000", "storage": "0.001400", "loadBalancers": "0.025000", "total": "0.096400"},
                "records": [{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "hour": "2026-01-01T10:00:00Z",
                    "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64, "loadBalancers": 1, "namespaces": 3, "pods": 12, "apps": 2}]})),
        (status = 400, description = "A non-UUID id or an unknown query parameter", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 422, description = "A malformed timestamp, an empty or too long range, an unknown format or granularity, or a range holding more records than one answer carries (--usage-max-records): ask for a shorter range", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: to: must be after from"})),
    ),
    security(("bearerAuth" = []))
)]
async fn tenant_usage(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let q: UsageParams = query(&uri)?;
    let t = load_tenant(&st, &ctx, None, &t, Access::Read).await?;
    let to = match &q.to {
        Some(s) => usage_time("to", s)?,
        None => OffsetDateTime::now_utc(),
    };
    let from = match &q.from {
        Some(s) => usage_time("from", s)?,
        None => to - time::Duration::hours(24),
    };
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "format",
                format!("{other:?} is not a format: use json or csv"),
            ));
        }
    };
    if to <= from {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    if to - from > time::Duration::days(366) {
        return Err(ApiError::invalid(
            "from",
            "the range may span at most 366 days",
        ));
    }
    let granularity = q
        .granularity
        .as_deref()
        .map(super::usage::Granularity::parse)
        .transpose()?;
    let include_projects = q.include_projects.unwrap_or(false);
    let tenant_level = UsageQuery {
        tenant: t.id,
        cluster: Some(t.cluster_id),
        project: None,
        all_projects: false,
        from,
        to,
        max_records: st.config.usage_max_records,
    };
    let history = st.store.tenant_plan_history(t.id).await?;
    let versions = st.store.plan_price_history().await?;
    // Day and month periods are summed by the database per day and pricing span (a year is
    // about 365 rows instead of 8,760 hours); that answer leaves the hourly records out.
    let by_days = !csv && granularity.is_some_and(super::usage::Granularity::summed_by_day);
    let (records, groups, latest, quota, totals, usage_reported) = if by_days {
        let super::usage::DayUsage { days, recent } =
            super::usage::day_usage(&st, &tenant_level, &history, &versions).await?;
        let totals = usage_totals_of(&super::usage::sum_days(&days));
        let reported = !days.is_empty()
            || (include_projects
                && st
                    .store
                    .usage_totals(&UsageQuery {
                        all_projects: true,
                        ..tenant_level.clone()
                    })
                    .await?
                    .records
                    > 0);
        (
            Vec::new(),
            super::usage::priced_days(&days),
            recent.first().cloned(),
            recent.iter().find_map(quota_report),
            totals,
            reported,
        )
    } else {
        // More records than a response carries is KN-422 (never a truncated list).
        let records = st
            .store
            .query_usage(&UsageQuery {
                all_projects: include_projects,
                ..tenant_level.clone()
            })
            .await?;
        if csv {
            let mut resp = UsageRecord::to_csv(&records).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            return Ok(resp);
        }
        // Summed by the database over every tenant-level record of the range.
        let totals = usage_totals_of(&st.store.usage_totals(&tenant_level).await?);
        let own: Vec<&UsageRecord> = records.iter().filter(|r| r.project_id.is_none()).collect();
        let groups = super::usage::priced_records_of(own.iter().copied());
        let latest = own.last().map(|r| (*r).clone());
        let quota = own.iter().rev().find_map(|r| quota_report(r));
        let reported = !records.is_empty();
        (records, groups, latest, quota, totals, reported)
    };
    let latest = latest.as_ref();
    let (cost_by_plan, total) =
        super::usage::range_cost(&st.catalog, &history, &versions, &t.plan, &groups);
    // One plan and price-table version in force over the range: its prices, with parts.
    let single_prices = match cost_by_plan.as_slice() {
        [one] => one.prices.clone().map(|p| (one.plan.clone(), p)),
        [] => {
            let plan = super::usage::plan_at(&history, &t.plan, to);
            match super::usage::prices_at(&versions, plan, to) {
                Some(v) => serde_json::from_str(&v.prices).ok(),
                None => st.catalog.plan(plan).map(|p| p.prices.clone()),
            }
            .map(|p| (plan.to_owned(), p))
        }
        _ => None,
    };
    let series = granularity
        .map(|g| super::usage::series(&st.catalog, &history, &versions, &t.plan, &groups, g));
    let body = TenantUsage {
        tenant_id: t.id,
        cluster_id: t.cluster_id,
        from,
        to,
        usage_reported,
        cpu_requests: latest
            .map(|r| Quantity::from_nanos(i128::from(r.cpu_millicores) * 1_000_000).to_string()),
        memory_requests: latest.map(|r| bytes_quantity(r.memory_bytes)),
        pvc_storage: latest.map(|r| bytes_quantity(r.storage_bytes)),
        load_balancers: latest.map(|r| r.load_balancers),
        pods: latest.map(|r| r.pods),
        namespaces: latest.map(|r| r.namespaces),
        apps: latest.map(|r| r.apps),
        quota_violations: latest.map(|r| exceeded_quotas(&t, r).len() as i64),
        last_reported_at: latest.map(|r| r.hour),
        cost: single_prices.and_then(|(plan, p)| prices_cost(&p, &plan, &totals)),
        cost_by_plan,
        currency: total.as_ref().map(|(c, _)| c.clone()),
        total_cost: total.map(|(_, v)| v),
        quota,
        series,
        totals,
        records,
    };
    Ok(json_response(StatusCode::OK, &body, None, None, false))
}

/// Moves a tenant to another plan; effective quotas, limits and policysets re-resolve from it and the tenant's overrides.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenantID}/plan",
    tag = "tenants",
    operation_id = "putTenantPlan",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    request_body(content = PlanRequest, example = json!({"plan": "gold"})),
    responses(
        (status = 200, description = "The tenant with its new plan applied", body = Tenant, example = json!(tenant_example())),
        (status = 400, description = "Malformed JSON or a non-UUID id", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops change plans", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 412, description = "If-Match is stale, or a concurrent change", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "tenant \"22222222-2222-2222-2222-222222222222\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Unknown plan, or the tenant's overrides do not fit the new plan", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: plan: unknown plan \"diamond\": the catalog has baseline, gold, platinum",
                "details": {"violations": [{"field": "plan", "reason": "unknown plan \"diamond\": the catalog has baseline, gold, platinum"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn put_plan(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(t): Path<String>,
    KnJson(body): KnJson<PlanRequest>,
) -> ApiResult<Response> {
    update_tenant_with(&st, &ctx, &headers, None, &t, "tenant.plan.update", |t| {
        t.plan = body.plan;
        Ok(())
    })
    .await
}

/// Lists every tenant the caller may see, optionally of one cluster.
///
/// `name` and `labelSelector` narrow the list like on `listTenants`: `?name=acme` finds
/// the tenants named `acme` the caller may use, in every cluster.
#[utoipa::path(
    get,
    path = "/api/v1/tenants",
    tag = "tenants",
    operation_id = "listAllTenants",
    params(AllTenantsQuery),
    responses(
        (status = 200, description = "A page of tenants (tenant owners see only their own)", body = TenantList,
            example = json!({"items": [tenant_example()], "nextCursor": null})),
        (status = 400, description = "clusterId is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "The caller has no tenant visibility", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "listing tenants needs admin, ops, readOnly or a tenant scope"})),
        (status = 422, description = "Bad limit, cursor, name or labelSelector", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: labelSelector: requirement 1: the operator '>' at character 5 is not supported; use =, ==, !=, in, notin, 'key' or '!key'"})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_all_tenants(State(st): State<AppState>, ctx: Ctx, uri: Uri) -> ApiResult<Response> {
    let q: AllTenantsQuery = query(&uri)?;
    let cluster: Option<ClusterId> = q
        .cluster_id
        .as_deref()
        .map(|c| parse_id("cluster", c))
        .transpose()?;
    let (params, filter) = split(
        q.limit,
        q.cursor,
        q.name.as_deref(),
        q.label_selector.as_deref(),
    )?;
    let list = visible_tenants(&st, &ctx.principal, cluster, &filter, &params).await?;
    Ok(json_response(StatusCode::OK, &list, None, None, false))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    fn overrides(
        quotas: &[(&str, &str)],
        limits: &[(&str, &str)],
        np: Option<&[&str]>,
    ) -> TenantOverrides {
        TenantOverrides {
            quotas: quotas.iter().map(|(k, v)| (k.to_string(), q(v))).collect(),
            limits: limits.iter().map(|(k, v)| (k.to_string(), q(v))).collect(),
            network_policies: np.map(|l| l.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn default_plan_applies_when_none_is_named() {
        let c = Catalog::builtin();
        let r = resolve_tenant(&c, "baseline", None, &TenantOverrides::default()).unwrap();
        let plan = c.plan("baseline").unwrap();
        assert_eq!(r.plan, "baseline");
        assert_eq!(r.quotas, plan.tenant_quotas);
        assert_eq!(r.limits, plan.limit_range.default);
        assert_eq!(r.network_policies, plan.policysets);
    }

    #[test]
    fn a_tenant_cannot_take_a_policyset_whose_kubevela_rules_its_plan_forbids() {
        // A policyset can add raw-object traits for a plan that allows them; a tenant on
        // another plan cannot opt into it (its apps would carry a type its plan forbids).
        let c = Catalog::builtin()
            .merged_with(
                kubenova_api::catalog::CatalogFile::from_str_with_format(
                    r#"{"policysets": [{"name": "patchy", "rules": [{"kind": "velaTrait", "traitType": "json-patch", "spec": {}}]}]}"#,
                    kubenova_api::catalog::Format::Json,
                )
                .unwrap(),
            )
            .unwrap();
        let o = overrides(&[], &[], Some(&["tenant-isolation", "patchy"]));
        let e = resolve_tenant(&c, "baseline", Some("gold"), &o).unwrap_err();
        assert_eq!(e.violations.len(), 1, "{e}");
        assert_eq!(e.violations[0].field, "networkPolicies[1]");
        assert!(
            e.violations[0]
                .reason
                .contains("adds trait type \"json-patch\", which the plan does not allow"),
            "{e}"
        );
    }

    #[test]
    fn named_plan_wins_over_default() {
        let c = Catalog::builtin();
        let r = resolve_tenant(&c, "baseline", Some("gold"), &TenantOverrides::default()).unwrap();
        assert_eq!(r.plan, "gold");
        assert_eq!(r.quotas["requests.cpu"], q("6"));
        assert_eq!(r.limits["cpu"], q("1"));
    }

    #[test]
    fn overrides_overlay_per_field() {
        let c = Catalog::builtin();
        let o = overrides(
            &[("requests.cpu", "4"), ("count/deployments.apps", "10")],
            &[("cpu", "1")],
            Some(&["tenant-isolation"]),
        );
        let r = resolve_tenant(&c, "baseline", None, &o).unwrap();
        assert_eq!(r.quotas["requests.cpu"], q("4"));
        assert_eq!(r.quotas["count/deployments.apps"], q("10"));
        assert_eq!(r.quotas["pods"], q("50"), "untouched plan quotas stay");
        assert_eq!(r.limits["cpu"], q("1"));
        assert_eq!(r.limits["memory"], q("512Mi"));
        assert_eq!(r.network_policies, ["tenant-isolation"]);
    }

    #[test]
    fn unknown_plan_and_policysets_are_violations() {
        let c = Catalog::builtin();
        let e = resolve_tenant(&c, "baseline", Some("diamond"), &TenantOverrides::default())
            .unwrap_err();
        assert_eq!(e.violations[0].field, "plan");
        assert!(e.violations[0].reason.contains("baseline, gold, platinum"));
        let e = resolve_tenant(&c, "nope", None, &TenantOverrides::default()).unwrap_err();
        assert!(e.violations[0].reason.contains("configured default plan"));
        let o = overrides(&[], &[], Some(&["tenant-isolation", "deny-all"]));
        let e = resolve_tenant(&c, "baseline", None, &o).unwrap_err();
        assert_eq!(e.violations.len(), 1);
        assert_eq!(e.violations[0].field, "networkPolicies[1]");
    }

    #[test]
    fn limits_must_fit_the_plan_limit_range() {
        let c = Catalog::builtin();
        let o = overrides(&[("pods", "-1")], &[("cpu", "8"), ("memory", "1Mi")], None);
        let e = resolve_tenant(&c, "baseline", None, &o).unwrap_err();
        let fields: Vec<_> = e.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["quotas.pods", "limits.cpu", "limits.memory"]);
    }

    #[test]
    fn cost_is_exact() {
        assert_eq!(cost_part(1500, "0.040", 1000), Some(60_000));
        assert_eq!(cost_part(1 << 31, "0.0050", 1 << 30), Some(10_000));
        assert_eq!(micros_str(96_400), "0.096400");
        assert_eq!(bytes_quantity(2147483648), "2Gi");
        assert_eq!(bytes_quantity(1000), "1k");
    }
}
