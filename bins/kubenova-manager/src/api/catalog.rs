//! The plans and policysets catalog (read-only; built in, overridable by a file at start).

use super::AppState;
use super::clusters::list_params;
use super::error::{ApiError, ApiResult};
use super::extract::{Ctx, ListQuery, json_response};
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use kubenova_api::ErrorBody;
use kubenova_api::catalog::{Plan, PolicySet};
use kubenova_api::validate::ValidationError;
use kubenova_store::{ListParams, encode_cursor};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// A page of plans.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanList {
    /// Plans sorted by name.
    pub items: Vec<Plan>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of policysets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySetList {
    /// Policysets sorted by name.
    pub items: Vec<PolicySet>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plans))
        .routes(routes!(get_plan))
        .routes(routes!(list_policysets))
        .routes(routes!(get_policyset))
}

/// One page of a name-sorted collection: items after the cursor's name.
fn page_by_name<'a, T: Clone + 'a>(
    items: impl Iterator<Item = (&'a str, &'a T)>,
    params: &ListParams,
) -> ApiResult<(Vec<T>, Option<String>)> {
    let limit = params.page_size()? as usize;
    let after = match &params.cursor {
        None => None,
        Some(c) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ValidationError::single(
                        "cursor",
                        "is not a cursor returned by this list; start again without it",
                    )
                })?,
        ),
    };
    let mut out: Vec<(&str, T)> = items
        .filter(|(name, _)| after.as_deref().is_none_or(|a| *name > a))
        .take(limit + 1)
        .map(|(n, t)| (n, t.clone()))
        .collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|(n, _)| encode_cursor(n))
    } else {
        None
    };
    Ok((out.into_iter().map(|(_, t)| t).collect(), next))
}

/// Lists the plans of the catalog.
#[utoipa::path(
    get,
    path = "/api/v1/plans",
    tag = "catalog",
    operation_id = "listPlans",
    params(ListQuery),
    responses(
        (status = 200, description = "Plans sorted by name", body = PlanList,
            example = json!({"items": [{"name": "baseline", "description": "Baseline plan",
                "tenantQuotas": {"requests.cpu": "2", "limits.cpu": "2", "requests.memory": "4Gi", "limits.memory": "4Gi", "pods": "50"},
                "namespaceQuota": 3,
                "limitRange": {"defaultRequest": {"cpu": "100m", "memory": "128Mi"}, "default": {"cpu": "500m", "memory": "512Mi"}, "max": {"cpu": "2", "memory": "4Gi"}},
                "prices": {"currency": "USD", "cpuCoreHour": "0.040", "memoryGibHour": "0.0050", "storageGibHour": "0.00014", "loadBalancerHour": "0.025"},
                "policysets": ["tenant-isolation", "pod-security-baseline", "baseline"]}], "nextCursor": null})),
        (status = 400, description = "A malformed query parameter (e.g. a limit that is not a number)", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "bad query parameter: Failed to deserialize query string: limit: invalid digit found in string"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 422, description = "Bad limit or cursor", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: limit: must be at most 500 (got 1000)"})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_plans(State(st): State<AppState>, _ctx: Ctx, uri: Uri) -> ApiResult<Response> {
    let params = list_params(&uri)?;
    let (items, next_cursor) = page_by_name(
        st.catalog.plans.iter().map(|(k, v)| (k.as_str(), v)),
        &params,
    )?;
    Ok(json_response(
        StatusCode::OK,
        &PlanList { items, next_cursor },
        None,
        None,
        false,
    ))
}

/// Reads one plan.
#[utoipa::path(
    get,
    path = "/api/v1/plans/{name}",
    tag = "catalog",
    operation_id = "getPlan",
    params(("name" = String, Path, description = "Plan name")),
    responses(
        (status = 200, description = "The plan", body = Plan),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such plan", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "plan \"diamond\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
async fn get_plan(
    State(st): State<AppState>,
    _ctx: Ctx,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let plan = st
        .catalog
        .plan(&name)
        .ok_or_else(|| ApiError::not_found("plan", &name))?;
    Ok(json_response(StatusCode::OK, plan, None, None, false))
}

/// Lists the policysets of the catalog.
#[utoipa::path(
    get,
    path = "/api/v1/policysets",
    tag = "catalog",
    operation_id = "listPolicysets",
    params(ListQuery),
    responses(
        (status = 200, description = "Policysets sorted by name", body = PolicySetList,
            example = json!({"items": [{"name": "tenant-isolation", "description": "Deny traffic from other tenants",
                "rules": [{"kind": "networkIsolation", "allowSameTenant": true, "allowDns": true, "allowFromNamespaceLabels": [], "denyEgressToInternet": false}]}],
                "nextCursor": null})),
        (status = 400, description = "A malformed query parameter (e.g. a limit that is not a number)", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "bad query parameter: Failed to deserialize query string: limit: invalid digit found in string"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 422, description = "Bad limit or cursor", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: cursor: is not a cursor returned by this list; start again without it"})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_policysets(State(st): State<AppState>, _ctx: Ctx, uri: Uri) -> ApiResult<Response> {
    let params = list_params(&uri)?;
    let (items, next_cursor) = page_by_name(
        st.catalog.policysets.iter().map(|(k, v)| (k.as_str(), v)),
        &params,
    )?;
    Ok(json_response(
        StatusCode::OK,
        &PolicySetList { items, next_cursor },
        None,
        None,
        false,
    ))
}

/// Reads one policyset.
#[utoipa::path(
    get,
    path = "/api/v1/policysets/{name}",
    tag = "catalog",
    operation_id = "getPolicyset",
    params(("name" = String, Path, description = "Policyset name")),
    responses(
        (status = 200, description = "The policyset", body = PolicySet),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such policyset", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "policyset \"deny-all\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
async fn get_policyset(
    State(st): State<AppState>,
    _ctx: Ctx,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let ps = st
        .catalog
        .policyset(&name)
        .ok_or_else(|| ApiError::not_found("policyset", &name))?;
    Ok(json_response(StatusCode::OK, ps, None, None, false))
}
