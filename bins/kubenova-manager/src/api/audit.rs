//! The audit log (admin only): every mutating call with actor, action, resource and outcome.

use super::AppState;
use super::authz::Role;
use super::clusters::{parse_time, query};
use super::error::ApiResult;
use super::extract::{Ctx, json_response};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kubenova_api::ErrorBody;
use kubenova_api::model::AuditEvent;
use kubenova_store::{AuditQuery, ListParams};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;
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
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(follow_audit))
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

/// How often a followed audit stream asks the store for new events.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// How long after its time an event becomes visible to a follower. An event's id (its
/// cursor) is taken when the request is handled and the row is committed a little later, so
/// a follower that moved past a newer id could otherwise skip an older event committed after
/// it; holding back the last seconds makes the order of what is streamed final.
pub const FOLLOW_SETTLE: Duration = Duration::from_secs(2);

/// Events read from the store per query of a followed stream (the most one connection holds
/// in memory).
pub const FOLLOW_BATCH: u32 = 100;

/// Filters of `GET /audit/stream`: those of `GET /audit` without the page size.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditStreamParams {
    /// From (inclusive), RFC 3339.
    pub from: Option<String>,
    /// To (exclusive), RFC 3339: the stream ends (`end` with reason `to`) once every event
    /// before it was sent.
    pub to: Option<String>,
    /// Only this actor (token subject).
    pub actor: Option<String>,
    /// Only this resource kind (`cluster`, `tenant`, `project`, `app`, `token`, `usage`).
    pub resource_kind: Option<String>,
    /// Only this resource id.
    pub resource_id: Option<String>,
    /// Start after this event: the `id:` of an event of an earlier stream, or a `nextCursor`
    /// of `GET /audit`. The `Last-Event-ID` header, when sent, takes its place.
    pub cursor: Option<String>,
}

/// The `id:` of an audit event in the stream: its cursor, as `GET /audit` pages with.
fn event_cursor(e: &AuditEvent) -> String {
    kubenova_store::encode_cursor(e.id)
}

/// Follows the audit log: server-sent events of the events after the cursor, then of the
/// new events as they are written (admin only, like `GET /audit`).
#[utoipa::path(
    get,
    path = "/api/v1/audit/stream",
    tag = "audit",
    operation_id = "followAuditEvents",
    params(AuditStreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "The `id:` of the last event received; the stream resumes right after it (sent by `EventSource` on reconnect)")),
    responses(
        (status = 200, description = "Server-sent events, oldest first: an `audit` event per audit event (`id:` is its cursor, `data:` the event as in `GET /audit`), \
            `: keep-alive` comments every 15 s, and `end` when the `to` time is reached, the server shuts down (reason `shutdown`: reconnect with `Last-Event-ID`) \
            or the store fails (reason `error`). New events are found by polling the store every second and are sent once 2 s old.",
            content((String = "text/event-stream", example = "event: audit\nid: NjY2NjY2NjYtNjY2Ni02NjY2LTY2NjYtNjY2NjY2NjY2NjY2\ndata: {\"id\":\"66666666-6666-6666-6666-666666666666\",\"at\":\"2026-01-01T00:05:00Z\",\"actor\":\"admin\",\"roles\":[\"admin\"],\"action\":\"tenant.create\",\"resourceKind\":\"tenant\",\"resourceId\":\"22222222-2222-2222-2222-222222222222\",\"outcome\":\"success\",\"httpStatus\":201,\"requestId\":\"req-1\",\"sourceIp\":\"127.0.0.1\"}\n\nevent: end\ndata: {\"reason\":\"shutdown\",\"message\":\"the manager is shutting down; reconnect with Last-Event-ID to resume\"}\n\n"))),
        (status = 400, description = "A bad query parameter", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "query parameter from=\"yesterday\" is not an RFC 3339 timestamp such as 2026-01-01T00:00:00Z"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin reads the audit log", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin"})),
        (status = 422, description = "Bad cursor, Last-Event-ID or filter (e.g. control characters)", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: cursor: is not a cursor returned by this API"})),
    ),
    security(("bearerAuth" = []))
)]
async fn follow_audit(
    State(st): State<AppState>,
    ctx: Ctx,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin])?;
    let q: AuditStreamParams = query(&uri)?;
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                super::error::ApiError::from(kubenova_api::validate::ValidationError::single(
                    "Last-Event-ID",
                    "must be the id: of an event of this stream (visible ASCII)",
                ))
            })
        })
        .transpose()?;
    let until = q.to.as_deref().map(|s| parse_time("to", s)).transpose()?;
    let mut aq = AuditQuery {
        from: q
            .from
            .as_deref()
            .map(|s| parse_time("from", s))
            .transpose()?,
        to: until,
        actor: q.actor,
        resource_kind: q.resource_kind,
        resource_id: q.resource_id,
        page: ListParams {
            limit: Some(FOLLOW_BATCH),
            cursor: last_event_id.or(q.cursor).filter(|c| !c.is_empty()),
        },
    };
    // The first batch is read before answering, so a bad cursor or filter is a KN-422
    // rather than a stream that ends at once.
    aq.to = visible_until(until);
    let first = st.store.query_audit(&aq).await?;
    let state = Follow {
        store: st.store.clone(),
        query: aq,
        until,
        more: first.next_cursor.is_some(),
        queue: first.items.into(),
        shutdown: st.runtime.shutdown.subscribe(),
        finished: false,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        s.next()
            .await
            .map(|e| (Ok::<Event, std::convert::Infallible>(e), s))
    });
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(resp)
}

/// The `to` of the next query of a follower: the requested `to`, but no later than
/// [`FOLLOW_SETTLE`] ago.
fn visible_until(until: Option<time::OffsetDateTime>) -> Option<time::OffsetDateTime> {
    let settled = time::OffsetDateTime::now_utc() - FOLLOW_SETTLE;
    Some(until.map_or(settled, |u| u.min(settled)))
}

/// The state of one followed audit stream.
struct Follow {
    store: std::sync::Arc<dyn kubenova_store::Store>,
    /// The filters, with the cursor of the last event sent.
    query: AuditQuery,
    /// The `to` the caller asked for.
    until: Option<time::OffsetDateTime>,
    /// Events read and not yet sent (at most [`FOLLOW_BATCH`]).
    queue: VecDeque<AuditEvent>,
    /// Whether the last query left events out (its page was full).
    more: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
    finished: bool,
}

impl Follow {
    /// The next server-sent event, or `None` once the stream has ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.finished {
                return None;
            }
            if *self.shutdown.borrow() {
                return Some(self.end(
                    "shutdown",
                    "the manager is shutting down; reconnect with Last-Event-ID to resume",
                ));
            }
            if let Some(e) = self.queue.pop_front() {
                let id = event_cursor(&e);
                self.query.page.cursor = Some(id.clone());
                return Some(
                    Event::default()
                        .event("audit")
                        .id(id)
                        .data(serde_json::to_string(&e).unwrap_or_else(|_| "null".into())),
                );
            }
            if let Some(u) = self.until
                && u <= time::OffsetDateTime::now_utc() - FOLLOW_SETTLE
                && self.query.to == Some(u)
                && !self.more
            {
                // The last query already covered everything before `to`, and found no more.
                return Some(self.end("to", "every event before `to` was sent"));
            }
            self.query.to = visible_until(self.until);
            match self.store.query_audit(&self.query).await {
                Ok(p) if !p.items.is_empty() => {
                    self.more = p.next_cursor.is_some();
                    self.queue = p.items.into();
                }
                Ok(_) => {
                    self.more = false;
                    if self.until.is_some() && self.query.to == self.until {
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(FOLLOW_POLL) => {}
                        _ = self.shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the audit log for a follower failed");
                    return Some(self.end(
                        "error",
                        "reading the audit log failed; reconnect with Last-Event-ID to resume",
                    ));
                }
            }
        }
    }

    /// The last event of the stream.
    fn end(&mut self, reason: &str, message: &str) -> Event {
        self.finished = true;
        Event::default()
            .event("end")
            .data(serde_json::json!({"reason": reason, "message": message}).to_string())
    }
}
