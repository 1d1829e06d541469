//! The audit log (admin only): every mutating call with actor, action, resource and outcome.

use super::AppState;
use super::authz::Role;
use super::clusters::{parse_time, query};
use super::error::ApiResult;
use super::extract::{Ctx, json_response};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use kubenova_api::ErrorBody;
use kubenova_api::model::AuditEvent;
use kubenova_store::{AuditQuery, ListParams};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Filters of `GET /audit`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditParams {
    /// From (inclusive), RFC 3339.
    pub from: Option<String>,
    /// To (exclusive), RFC 3339.
    pub to: Option<String>,
    /// Only this actor (token subject).
    pub actor: Option<String>,
    /// Only this resource kind (`cluster`, `tenant`, `project`, `app`, `token`, `usage`).
    pub resource_kind: Option<String>,
    /// Only this resource id.
    pub resource_id: Option<String>,
    /// Page size (default 100, max 500).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of audit events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditList {
    /// Events, oldest first.
    pub items: Vec<AuditEvent>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// Lists audit events, oldest first, with filters.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    operation_id = "listAuditEvents",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of events", body = AuditList,
            example = json!({"items": [{"id": "66666666-6666-6666-6666-666666666666", "at": "2026-01-01T00:05:00Z", "actor": "admin", "roles": ["admin"],
                "action": "tenant.create", "resourceKind": "tenant", "resourceId": "22222222-2222-2222-2222-222222222222", "outcome": "success",
                "httpStatus": 201, "requestId": "req-1", "sourceIp": "127.0.0.1"}], "nextCursor": null})),
        (status = 400, description = "A bad query parameter", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "query parameter from=\"yesterday\" is not an RFC 3339 timestamp such as 2026-01-01T00:00:00Z"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin reads the audit log", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin"})),
        (status = 422, description = "Bad limit, cursor or filter (e.g. control characters)", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: limit: must be at most 500 (got 1000)"})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_audit(State(st): State<AppState>, ctx: Ctx, uri: Uri) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin])?;
    let q: AuditParams = query(&uri)?;
    let page = ListParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    page.page_size()?;
    let aq = AuditQuery {
        from: q
            .from
            .as_deref()
            .map(|s| parse_time("from", s))
            .transpose()?,
        to: q.to.as_deref().map(|s| parse_time("to", s)).transpose()?,
        actor: q.actor,
        resource_kind: q.resource_kind,
        resource_id: q.resource_id,
        page,
    };
    let p = st.store.query_audit(&aq).await?;
    Ok(json_response(
        StatusCode::OK,
        &AuditList {
            items: p.items,
            next_cursor: p.next_cursor,
        },
        None,
        None,
        false,
    ))
}
