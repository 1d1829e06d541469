//! Usage ingestion: hourly records, idempotent per (cluster, tenant, project, hour).
//!
//! `GET /api/v1/tenants/{id}/usage` lives in [`super::tenants`]; the project usage read in
//! the projects module.

use super::AppState;
use super::authz::Role;
use super::clusters::to_bytes;
use super::error::ApiResult;
use super::extract::{Ctx, KnJson, bytes_response};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kubenova_api::ErrorBody;
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_api::model::UsageRecord;
use kubenova_api::validate::{Validate, ValidationError, Validator};
use kubenova_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most records accepted in one batch.
pub const MAX_BATCH: usize = 5000;

/// A batch of hourly usage records.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"records": [{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222",
    "hour": "2026-01-01T10:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64,
    "loadBalancers": 1, "namespaces": 3, "pods": 12, "apps": 2}]}))]
pub struct UsageBatch {
    /// Records; a re-sent (cluster, tenant, project, hour) replaces the earlier one.
    pub records: Vec<UsageRecord>,
}

/// Result of an ingestion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"accepted": 1}))]
pub struct UsageAccepted {
    /// Records stored (inserted or replaced).
    pub accepted: usize,
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest_usage, export_usage))
}

/// Default page size of the export.
const EXPORT_PAGE: u32 = 1000;
/// Largest page of the export.
const EXPORT_PAGE_MAX: u32 = 10_000;
/// Longest range of the export.
const EXPORT_MAX_RANGE: time::Duration = time::Duration::days(366);

/// `GET /usage` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportParams {
    /// First hour, RFC 3339 (inclusive). Default: 24 hours before `to`.
    pub from: Option<String>,
    /// End, RFC 3339 (exclusive). Default: now. At most 366 days after `from`.
    pub to: Option<String>,
    /// Only this cluster (UUID).
    pub cluster_id: Option<String>,
    /// Only this tenant (UUID; its projects' records included).
    pub tenant_id: Option<String>,
    /// `json` (default) or `csv` (the next page's cursor in the `KN-Next-Cursor` header).
    pub format: Option<String>,
    /// Page size (default 1000, at most 10000).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page (with `stream=true`: start after that record,
    /// e.g. to resume a broken stream).
    pub cursor: Option<String>,
    /// `true`: the whole range in one response, written as it is read (no `limit`, no
    /// paging): `application/x-ndjson` (one record per line) or, with `format=csv`,
    /// `text/csv`. A read error mid-stream aborts the response, so a cut-off body never
    /// looks complete.
    pub stream: Option<bool>,
}

/// One page of the usage export.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageExportPage {
    /// Records ordered by hour, cluster, tenant and project.
    pub items: Vec<UsageRecord>,
    /// Cursor of the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

fn export_cursor(r: &UsageRecord) -> String {
    kubenova_store::encode_cursor(format!(
        "{}|{}|{}|{}",
        r.hour.unix_timestamp(),
        r.cluster_id,
        r.tenant_id,
        r.project_id.map(|p| p.0).unwrap_or_default()
    ))
}

fn parse_export_cursor(
    raw: &str,
) -> ApiResult<(time::OffsetDateTime, ClusterId, TenantId, uuid::Uuid)> {
    use base64::Engine as _;
    let bad = || {
        super::error::ApiError::invalid(
            "cursor",
            "is not a cursor of this export: pass nextCursor as returned",
        )
    };
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = text.split('|');
    let (Some(h), Some(c), Some(t), Some(p), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let hour = h
        .parse::<i64>()
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(bad)?;
    let id = |v: &str| uuid::Uuid::try_parse(v).map_err(|_| bad());
    Ok((hour, ClusterId(id(c)?), TenantId(id(t)?), id(p)?))
}

/// Exports every tenant's hourly usage records of a range for billing systems (admin,
/// ops): JSON or CSV, paged with a cursor, filtered by cluster and tenant.
#[utoipa::path(
    get,
    path = "/api/v1/usage",
    tag = "usage",
    operation_id = "exportUsage",
    params(ExportParams),
    responses(
        (status = 200, description = "One page of records; `format=csv` returns text/csv with the next cursor in the KN-Next-Cursor header. \
            With `stream=true` the whole range: `application/x-ndjson` (a record per line) or `text/csv`", content(
            (UsageExportPage = "application/json",
            example = json!({"items": [{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222",
                "hour": "2026-01-01T10:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64,
                "loadBalancers": 1, "namespaces": 3, "pods": 12, "apps": 2, "cpuLimitMillicores": 3000, "memoryLimitBytes": 4294967296_i64}],
                "nextCursor": null})),
            (String = "application/x-ndjson", example = "{\"clusterId\":\"11111111-1111-1111-1111-111111111111\",\"tenantId\":\"22222222-2222-2222-2222-222222222222\",\"hour\":\"2026-01-01T10:00:00Z\",\"cpuMillicores\":1500,\"memoryBytes\":2147483648,\"storageBytes\":0,\"loadBalancers\":0,\"namespaces\":1,\"pods\":3,\"apps\":1,\"cpuLimitMillicores\":3000,\"memoryLimitBytes\":4294967296}\n"),
            (String = "text/csv", example = "hour,clusterId,tenantId,projectId,cpuMillicores,memoryBytes,storageBytes,loadBalancers,namespaces,pods,apps,cpuLimitMillicores,memoryLimitBytes\n2026-01-01T10:00:00Z,11111111-1111-1111-1111-111111111111,22222222-2222-2222-2222-222222222222,,1500,2147483648,0,0,1,3,1,3000,4294967296\n"),
        )),
        (status = 400, description = "An unknown query parameter", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "unknown query parameter \"tenant\""})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops export usage", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 422, description = "A malformed timestamp, id or cursor, from not before to, a range over 366 days, an unknown format, a limit out of range or with stream=true", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: from: must be before to",
                "details": {"violations": [{"field": "from", "reason": "must be before to"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn export_usage(
    State(st): State<AppState>,
    ctx: Ctx,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin, Role::Ops])?;
    let q: ExportParams = super::clusters::query(&uri)?;
    let to = match &q.to {
        Some(v) => super::tenants::usage_time("to", v)?,
        None => time::OffsetDateTime::now_utc(),
    };
    let from = match &q.from {
        Some(v) => super::tenants::usage_time("from", v)?,
        None => to - time::Duration::hours(24),
    };
    if from >= to {
        return Err(super::error::ApiError::invalid("from", "must be before to"));
    }
    if to - from > EXPORT_MAX_RANGE {
        return Err(super::error::ApiError::invalid(
            "from",
            "the range may span at most 366 days: export longer periods range by range",
        ));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(super::error::ApiError::invalid(
                "format",
                format!("{other:?} is not a format: use json or csv"),
            ));
        }
    };
    let limit = q.limit.unwrap_or(EXPORT_PAGE);
    if !(1..=EXPORT_PAGE_MAX).contains(&limit) {
        return Err(super::error::ApiError::invalid(
            "limit",
            format!("must be between 1 and {EXPORT_PAGE_MAX} (got {limit})"),
        ));
    }
    let uuid_of = |field: &str, v: &Option<String>| -> ApiResult<Option<uuid::Uuid>> {
        v.as_deref()
            .map(|s| {
                uuid::Uuid::try_parse(s).map_err(|_| {
                    super::error::ApiError::invalid(field, format!("{s:?} is not a UUID"))
                })
            })
            .transpose()
    };
    let cluster = uuid_of("clusterId", &q.cluster_id)?.map(ClusterId);
    let tenant = uuid_of("tenantId", &q.tenant_id)?.map(TenantId);
    let after = q.cursor.as_deref().map(parse_export_cursor).transpose()?;
    if q.stream == Some(true) {
        if q.limit.is_some() {
            return Err(super::error::ApiError::invalid(
                "limit",
                "a stream carries the whole range: leave out limit with stream=true",
            ));
        }
        let export = kubenova_store::UsageExport {
            cluster,
            tenant,
            from,
            to,
            after,
            limit: EXPORT_PAGE_MAX,
        };
        return Ok(stream_export(st, export, csv));
    }
    let items = st
        .store
        .export_usage(&kubenova_store::UsageExport {
            cluster,
            tenant,
            from,
            to,
            after,
            limit,
        })
        .await?;
    let next_cursor = if items.len() == limit as usize {
        items.last().map(export_cursor)
    } else {
        None
    };
    if csv {
        let mut resp = UsageRecord::to_csv(&items).into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        if let Some(c) = next_cursor.as_deref().and_then(|c| c.parse().ok()) {
            resp.headers_mut().insert("kn-next-cursor", c);
        }
        return Ok(resp);
    }
    let body = UsageExportPage { items, next_cursor };
    Ok(super::extract::json_response(
        StatusCode::OK,
        &body,
        None,
        None,
        false,
    ))
}

/// The whole export range as one streamed body: pages of [`EXPORT_PAGE_MAX`] records
/// read one after another (keyset, so memory stays at one page), each written as soon as
/// it is read. A read error ends the body with an error, which aborts the response.
fn stream_export(st: AppState, export: kubenova_store::UsageExport, csv: bool) -> Response {
    struct Page {
        st: AppState,
        export: kubenova_store::UsageExport,
        header: bool,
        done: bool,
    }
    let state = Page {
        st,
        export,
        header: csv,
        done: false,
    };
    let body = futures::stream::unfold(state, move |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = String::new();
        if std::mem::take(&mut s.header) {
            out.push_str(UsageRecord::CSV_HEADER);
        }
        let items = match s.st.store.export_usage(&s.export).await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "a streamed usage export failed mid-way; the response is aborted");
                s.done = true;
                return Some((Err(std::io::Error::other(e.to_string())), s));
            }
        };
        s.done = items.len() < s.export.limit as usize;
        if let Some(last) = items.last() {
            s.export.after = Some((
                last.hour,
                last.cluster_id,
                last.tenant_id,
                last.project_id.map(|p| p.0).unwrap_or_default(),
            ));
        }
        for r in &items {
            if csv {
                r.write_csv_row(&mut out);
            } else {
                // A record always serializes; the line is skipped (and logged) if not.
                match serde_json::to_string(r) {
                    Ok(line) => {
                        out.push_str(&line);
                        out.push('\n');
                    }
                    Err(e) => tracing::error!(error = %e, "a usage record does not serialize"),
                }
            }
        }
        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(out)), s))
    });
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Checks every record and that its tenant (and project) exist in its cluster.
pub(crate) async fn check_batch(st: &AppState, records: &[UsageRecord]) -> ApiResult<()> {
    let mut v = Validator::new();
    if records.is_empty() {
        v.push("records", "must contain at least one record");
    }
    if records.len() > MAX_BATCH {
        v.push(
            "records",
            format!(
                "must contain at most {MAX_BATCH} records (got {})",
                records.len()
            ),
        );
        return Err(v
            .finish()
            .err()
            .unwrap_or_else(|| ValidationError::single("records", "too many"))
            .into());
    }
    let mut tenants: BTreeMap<TenantId, Option<ClusterId>> = BTreeMap::new();
    let mut projects: BTreeMap<ProjectId, Option<TenantId>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    // The hour that has started last: a later one has not happened yet.
    let now = time::OffsetDateTime::now_utc();
    let current_hour = now
        - time::Duration::seconds(i64::from(now.minute()) * 60 + i64::from(now.second()))
        - time::Duration::nanoseconds(i64::from(now.nanosecond()));
    for (i, r) in records.iter().enumerate() {
        if let Err(e) = r.validate() {
            for viol in e.violations {
                v.push(format!("records[{i}].{}", viol.field), viol.reason);
            }
        }
        if r.hour > current_hour {
            v.push(
                format!("records[{i}].hour"),
                format!(
                    "{} is in the future: only hours that have started can be reported (check the clock of the reporter)",
                    r.hour
                ),
            );
        }
        if !seen.insert((r.cluster_id, r.tenant_id, r.project_id, r.hour)) {
            v.push(
                format!("records[{i}]"),
                "repeats the cluster, tenant, project and hour of an earlier record",
            );
        }
        let cluster = match tenants.get(&r.tenant_id) {
            Some(c) => *c,
            None => {
                let c = match st.store.get_tenant(r.tenant_id).await {
                    Ok(t) => Some(t.cluster_id),
                    Err(StoreError::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                };
                tenants.insert(r.tenant_id, c);
                c
            }
        };
        if cluster != Some(r.cluster_id) {
            v.push(
                format!("records[{i}].tenantId"),
                format!(
                    "tenant {} does not exist in cluster {}",
                    r.tenant_id, r.cluster_id
                ),
            );
            continue;
        }
        if let Some(p) = r.project_id {
            let owner = match projects.get(&p) {
                Some(o) => *o,
                None => {
                    let o = match st.store.get_project(p).await {
                        Ok(proj) => Some(proj.tenant_id),
                        Err(StoreError::NotFound { .. }) => None,
                        Err(e) => return Err(e.into()),
                    };
                    projects.insert(p, o);
                    o
                }
            };
            if owner != Some(r.tenant_id) {
                v.push(
                    format!("records[{i}].projectId"),
                    format!("project {p} does not exist in tenant {}", r.tenant_id),
                );
            }
        }
    }
    if let Err(e) = v.finish() {
        tracing::warn!(
            records = records.len(),
            violations = e.violations.len(),
            first = %e.violations.first().map(|x| format!("{}: {}", x.field, x.reason)).unwrap_or_default(),
            "usage batch refused as a whole; nothing stored"
        );
        return Err(e.into());
    }
    Ok(())
}

/// Ingests hourly usage records as admin or ops (operators upload theirs through `POST /api/v1/agent/usage`).
#[utoipa::path(
    post,
    path = "/api/v1/usage",
    tag = "usage",
    operation_id = "ingestUsage",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first response")),
    request_body(content = UsageBatch, description = "Hourly records; idempotent per (cluster, tenant, project, hour)",
        example = json!({"records": [{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222",
            "hour": "2026-01-01T10:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64,
            "loadBalancers": 1, "namespaces": 3, "pods": 12, "apps": 2}]})),
    responses(
        (status = 202, description = "Stored (inserted or replaced)", body = UsageAccepted, example = json!({"accepted": 1})),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing a list at line 1 column 12"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops ingest usage", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 413, description = "Body over the size limit", body = ErrorBody,
            example = json!({"code": "KN-413", "message": "the request body exceeds the size limit"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Invalid records, unknown tenant/project, hours not whole", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: records[0].hour: must be the start of an hour (minutes, seconds and fractions zero)",
                "details": {"violations": [{"field": "records[0].hour", "reason": "must be the start of an hour (minutes, seconds and fractions zero)"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn ingest_usage(
    State(st): State<AppState>,
    ctx: Ctx,
    KnJson(batch): KnJson<UsageBatch>,
) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin, Role::Ops])?;
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    check_batch(&st, &batch.records).await?;
    st.store.upsert_usage(&batch.records).await?;
    let body = UsageAccepted {
        accepted: batch.records.len(),
    };
    let bytes = to_bytes(&body)?;
    let clusters: BTreeSet<ClusterId> = batch.records.iter().map(|r| r.cluster_id).collect();
    let mut audit = ctx.audit("usage.ingest", "usage", "batch", 202);
    audit.details = Some(json!({"records": batch.records.len(), "clusters": clusters}));
    st.store.append_audit(&audit).await?;
    if let Some(rec) = ctx.idempotency_record(202, &bytes) {
        match st.store.put_idempotency(&rec).await {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(bytes_response(
        StatusCode::ACCEPTED,
        bytes,
        None,
        None,
        true,
    ))
}

// ---------------------------------------------------------------------------------
// Series by hour, day or month, priced at the plan in force
// ---------------------------------------------------------------------------------

/// Size of the periods of a usage series (UTC; calendar months).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One period per hour.
    Hour,
    /// One period per UTC day.
    Day,
    /// One period per calendar month (UTC).
    Month,
}

impl Granularity {
    /// Whether the periods are read as the database's day sums rather
    /// than from every hour: days and months.
    pub fn summed_by_day(self) -> bool {
        matches!(self, Granularity::Day | Granularity::Month)
    }

    /// Parses `hour`, `day` or `month`; anything else is KN-422 naming `granularity`.
    pub fn parse(v: &str) -> ApiResult<Granularity> {
        match v {
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            "month" => Ok(Granularity::Month),
            other => Err(super::error::ApiError::invalid(
                "granularity",
                format!("{other:?} is not a granularity: use hour, day or month"),
            )),
        }
    }

    /// The start of the period holding `t`.
    pub fn start(self, t: time::OffsetDateTime) -> time::OffsetDateTime {
        let t = t.to_offset(time::UtcOffset::UTC);
        let day = t.replace_time(time::Time::MIDNIGHT);
        match self {
            Granularity::Hour => day + time::Duration::hours(i64::from(t.hour())),
            Granularity::Day => day,
            Granularity::Month => day.replace_day(1).unwrap_or(day),
        }
    }

    /// The end (exclusive) of the period starting at `start`.
    pub fn end(self, start: time::OffsetDateTime) -> time::OffsetDateTime {
        match self {
            Granularity::Hour => start + time::Duration::hours(1),
            Granularity::Day => start + time::Duration::days(1),
            Granularity::Month => {
                let (y, m) = match start.month() {
                    time::Month::December => (start.year() + 1, time::Month::January),
                    m => (start.year(), m.next()),
                };
                time::Date::from_calendar_date(y, m, 1)
                    .map(|d| d.midnight().assume_utc())
                    .unwrap_or(start + time::Duration::days(31))
            }
        }
    }
}

/// The cost of the hours of one period that one plan priced.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanCost {
    /// Plan in force during these hours.
    pub plan: String,
    /// Hours with a report priced at this plan.
    pub hours: i64,
    /// ISO 4217 currency (absent when the plan left the catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Exact decimal cost (absent when the plan left the catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    /// The price-table version that priced these hours: the time from which the plan's
    /// recorded prices were in force (absent when no version was recorded: the catalog's
    /// current prices applied).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub prices_since: Option<time::OffsetDateTime>,
    /// The prices that priced these hours (absent when the plan left the catalog and no
    /// version was recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prices: Option<kubenova_api::catalog::Prices>,
}

/// One period of a usage series: resource-hours and their cost at the plans in force.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z", "hours": 24,
    "cpuMillicoreHours": 36000, "memoryByteHours": 51539607552_i64, "storageByteHours": 0, "loadBalancerHours": 24, "podHours": 48,
    "currency": "USD", "cost": "2.160000", "plans": [{"plan": "baseline", "hours": 24, "currency": "USD", "cost": "2.160000"}]}))]
pub struct UsageBucket {
    /// Period start (inclusive).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: time::OffsetDateTime,
    /// Period end (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub end: time::OffsetDateTime,
    /// Hours with a report.
    pub hours: i64,
    /// Σ CPU requests (millicore-hours).
    pub cpu_millicore_hours: i64,
    /// Σ memory requests (byte-hours).
    pub memory_byte_hours: i64,
    /// Σ PVC capacity (byte-hours).
    pub storage_byte_hours: i64,
    /// Σ LoadBalancer services (LoadBalancer-hours).
    pub load_balancer_hours: i64,
    /// Σ pods (pod-hours).
    pub pod_hours: i64,
    /// Currency of `cost` (absent when the plans disagree or left the catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Exact decimal cost of the period: the sum of `plans` (absent when a plan left the
    /// catalog or the plans' currencies differ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    /// The plans in force during the period, with their hours and cost.
    pub plans: Vec<PlanCost>,
}

/// The plan in force at `hour`: the last change at or before it; before the first
/// recorded change, the first recorded plan; with no history, `current`.
pub fn plan_at<'a>(
    history: &'a [kubenova_store::PlanChange],
    current: &'a str,
    hour: time::OffsetDateTime,
) -> &'a str {
    match history.iter().rev().find(|c| c.since <= hour) {
        Some(c) => &c.plan,
        None => history.first().map_or(current, |c| c.plan.as_str()),
    }
}

/// The price-table version of `plan` in force at `hour`: the last recorded version at or
/// before it; before the first recorded version, the first; none recorded, `None` (the
/// catalog's current prices apply).
pub fn prices_at<'a>(
    versions: &'a [kubenova_store::PlanPrices],
    plan: &str,
    hour: time::OffsetDateTime,
) -> Option<&'a kubenova_store::PlanPrices> {
    let mut of_plan = versions.iter().filter(|v| v.plan == plan);
    let first = of_plan.clone().next();
    of_plan.rfind(|v| v.since <= hour).or(first)
}

/// What prices an hour: its plan and the price-table version in force.
type PriceKey = (String, Option<time::OffsetDateTime>);

fn price_key(
    history: &[kubenova_store::PlanChange],
    versions: &[kubenova_store::PlanPrices],
    current: &str,
    hour: time::OffsetDateTime,
) -> PriceKey {
    let plan = plan_at(history, current, hour);
    (
        plan.to_owned(),
        prices_at(versions, plan, hour).map(|v| v.since),
    )
}

/// Resource-hours of a group of hours.
#[derive(Default, Clone, Copy)]
pub(crate) struct Sums {
    hours: i64,
    cpu: i64,
    mem: i64,
    sto: i64,
    lb: i64,
    pods: i64,
}

impl Sums {
    /// One record: one hour.
    fn of(r: &UsageRecord) -> Sums {
        Sums {
            hours: 1,
            cpu: r.cpu_millicores,
            mem: r.memory_bytes,
            sto: r.storage_bytes,
            lb: r.load_balancers,
            pods: r.pods,
        }
    }

    /// Sums computed by the store.
    fn of_store(s: &kubenova_store::UsageSums) -> Sums {
        Sums {
            hours: s.records,
            cpu: s.cpu_millicore_hours,
            mem: s.memory_byte_hours,
            sto: s.storage_byte_hours,
            lb: s.load_balancer_hours,
            pods: s.pod_hours,
        }
    }

    fn add(&mut self, o: &Sums) {
        self.hours = self.hours.saturating_add(o.hours);
        self.cpu = self.cpu.saturating_add(o.cpu);
        self.mem = self.mem.saturating_add(o.mem);
        self.sto = self.sto.saturating_add(o.sto);
        self.lb = self.lb.saturating_add(o.lb);
        self.pods = self.pods.saturating_add(o.pods);
    }

    fn totals(&self) -> super::tenants::UsageTotals {
        super::tenants::UsageTotals {
            hours: self.hours,
            cpu_millicore_hours: self.cpu,
            memory_byte_hours: self.mem,
            storage_byte_hours: self.sto,
            load_balancer_hours: self.lb,
            pod_hours: self.pods,
        }
    }
}

/// Prices each group of `by_key` (one scope: a tenant's or a project's hours, grouped by
/// plan and price-table version in force) at the recorded version's prices, or the
/// catalog's current prices when none was recorded; returns the per-group costs and their
/// sum (when all share a currency).
fn price(
    catalog: &kubenova_api::catalog::Catalog,
    versions: &[kubenova_store::PlanPrices],
    by_key: &BTreeMap<PriceKey, Sums>,
) -> (Vec<PlanCost>, Option<(String, i128)>) {
    let mut plans = Vec::new();
    let mut total: Option<(String, i128)> = None;
    let mut priced_all = true;
    for ((plan, since), sums) in by_key {
        let prices: Option<kubenova_api::catalog::Prices> = match since {
            Some(since) => versions
                .iter()
                .find(|v| &v.plan == plan && v.since == *since)
                .and_then(|v| serde_json::from_str(&v.prices).ok()),
            None => catalog.plan(plan).map(|p| p.prices.clone()),
        };
        let cost = prices
            .as_ref()
            .and_then(|p| super::tenants::cost_micros_at(p, &sums.totals()));
        match &cost {
            Some((cur, micros)) => {
                total = match total {
                    None if priced_all => Some((cur.clone(), *micros)),
                    Some((c, t)) if &c == cur => Some((c, t + micros)),
                    _ => {
                        priced_all = false;
                        None
                    }
                };
            }
            None => {
                priced_all = false;
                total = None;
            }
        }
        plans.push(PlanCost {
            plan: plan.clone(),
            hours: sums.hours,
            currency: cost.as_ref().map(|(c, _)| c.clone()),
            cost: cost.map(|(_, m)| super::tenants::micros_str(m)),
            prices_since: *since,
            prices,
        });
    }
    (plans, total.filter(|_| priced_all))
}

/// What a usage read hands to the pricing: hours of one scope, each group with an hour
/// that decides its period and its price key (every hour of a group shares both).
type Priced = (time::OffsetDateTime, Sums);

/// The instants at which an hour's price key ([`plan_at`], [`prices_at`]) can change: the
/// plan changes and the price-table versions, sorted. Between two of them every hour is
/// priced alike, so the store may sum them ([`kubenova_store::Store::usage_day_sums`]).
pub fn price_bounds(
    history: &[kubenova_store::PlanChange],
    versions: &[kubenova_store::PlanPrices],
) -> Vec<time::OffsetDateTime> {
    let mut b: Vec<time::OffsetDateTime> = history
        .iter()
        .map(|c| c.since)
        .chain(versions.iter().map(|v| v.since))
        .collect();
    b.sort();
    b.dedup();
    b
}

/// The hours of `records`, one group each.
pub(crate) fn priced_records(records: &[UsageRecord]) -> Vec<Priced> {
    priced_records_of(records.iter())
}

/// [`priced_records`] of borrowed records.
pub(crate) fn priced_records_of<'a>(records: impl Iterator<Item = &'a UsageRecord>) -> Vec<Priced> {
    records.map(|r| (r.hour, Sums::of(r))).collect()
}

/// How many of the newest records a day- or month-grouped usage read searches for the
/// latest figures and the quota use (records of current operators carry it whenever the
/// tenant has quotas).
pub(crate) const QUOTA_LOOKBACK: u32 = 48;

/// What a day- or month-grouped usage read takes from the store instead of the hours.
pub(crate) struct DayUsage {
    /// The database's sums per UTC day and pricing span ([`price_bounds`]).
    pub days: Vec<kubenova_store::UsageDaySums>,
    /// The newest [`QUOTA_LOOKBACK`] records, newest first.
    pub recent: Vec<UsageRecord>,
}

/// Reads [`DayUsage`] of `query`, split at the pricing changes of `history` and `versions`.
pub(crate) async fn day_usage(
    st: &AppState,
    query: &kubenova_store::UsageQuery,
    history: &[kubenova_store::PlanChange],
    versions: &[kubenova_store::PlanPrices],
) -> ApiResult<DayUsage> {
    let days = st
        .store
        .usage_day_sums(query, &price_bounds(history, versions))
        .await?;
    let recent = st.store.latest_usage(query, QUOTA_LOOKBACK).await?;
    Ok(DayUsage { days, recent })
}

/// The sums of all `days` (saturating, as the store's sums are).
pub(crate) fn sum_days(days: &[kubenova_store::UsageDaySums]) -> kubenova_store::UsageSums {
    days.iter()
        .fold(kubenova_store::UsageSums::default(), |mut a, d| {
            a.records = a.records.saturating_add(d.sums.records);
            a.cpu_millicore_hours = a
                .cpu_millicore_hours
                .saturating_add(d.sums.cpu_millicore_hours);
            a.memory_byte_hours = a.memory_byte_hours.saturating_add(d.sums.memory_byte_hours);
            a.storage_byte_hours = a
                .storage_byte_hours
                .saturating_add(d.sums.storage_byte_hours);
            a.load_balancer_hours = a
                .load_balancer_hours
                .saturating_add(d.sums.load_balancer_hours);
            a.pod_hours = a.pod_hours.saturating_add(d.sums.pod_hours);
            a
        })
}

/// The day sums of the store, one group each.
pub(crate) fn priced_days(days: &[kubenova_store::UsageDaySums]) -> Vec<Priced> {
    days.iter()
        .map(|d| (d.first_hour, Sums::of_store(&d.sums)))
        .collect()
}

/// The usage series of one scope's hours (`groups`: see [`priced_records`],
/// [`priced_days`]; day groups serve day and month periods) at `granularity`, each hour
/// priced at the plan in force ([`plan_at`]) with the prices then in force
/// ([`prices_at`]); periods without a record are left out.
pub(crate) fn series(
    catalog: &kubenova_api::catalog::Catalog,
    history: &[kubenova_store::PlanChange],
    versions: &[kubenova_store::PlanPrices],
    current_plan: &str,
    groups: &[Priced],
    granularity: Granularity,
) -> Vec<UsageBucket> {
    let mut buckets: BTreeMap<time::OffsetDateTime, (Sums, BTreeMap<PriceKey, Sums>)> =
        BTreeMap::new();
    for (hour, sums) in groups {
        let (all, by_plan) = buckets.entry(granularity.start(*hour)).or_default();
        all.add(sums);
        by_plan
            .entry(price_key(history, versions, current_plan, *hour))
            .or_default()
            .add(sums);
    }
    buckets
        .into_iter()
        .map(|(start, (all, by_plan))| {
            let (plans, total) = price(catalog, versions, &by_plan);
            UsageBucket {
                start,
                end: granularity.end(start),
                hours: all.hours,
                cpu_millicore_hours: all.cpu,
                memory_byte_hours: all.mem,
                storage_byte_hours: all.sto,
                load_balancer_hours: all.lb,
                pod_hours: all.pods,
                currency: total.as_ref().map(|(c, _)| c.clone()),
                cost: total.map(|(_, m)| super::tenants::micros_str(m)),
                plans,
            }
        })
        .collect()
}

/// The cost of one scope's hours (`groups`) over the whole range at the plans and prices
/// in force: the per-plan costs and their sum (absent when a plan left the catalog or
/// currencies differ).
pub(crate) fn range_cost(
    catalog: &kubenova_api::catalog::Catalog,
    history: &[kubenova_store::PlanChange],
    versions: &[kubenova_store::PlanPrices],
    current_plan: &str,
    groups: &[Priced],
) -> (Vec<PlanCost>, Option<(String, String)>) {
    let mut by_plan: BTreeMap<PriceKey, Sums> = BTreeMap::new();
    for (hour, sums) in groups {
        by_plan
            .entry(price_key(history, versions, current_plan, *hour))
            .or_default()
            .add(sums);
    }
    let (plans, total) = price(catalog, versions, &by_plan);
    (
        plans,
        total.map(|(c, m)| (c, super::tenants::micros_str(m))),
    )
}

#[cfg(test)]
mod series_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kubenova_api::catalog::Catalog;
    use kubenova_api::ids::{ClusterId, TenantId};
    use time::macros::datetime;

    fn rec(hour: time::OffsetDateTime) -> UsageRecord {
        UsageRecord {
            cluster_id: ClusterId::new(),
            tenant_id: TenantId::new(),
            project_id: None,
            hour,
            cpu_millicores: 1000,
            memory_bytes: 1 << 30,
            storage_bytes: 0,
            load_balancers: 1,
            namespaces: 2,
            pods: 2,
            apps: 1,
            cpu_limit_millicores: 0,
            memory_limit_bytes: 0,
            storage_by_class: BTreeMap::new(),
            quotas: Vec::new(),
            cluster_capacity: None,
        }
    }

    #[test]
    fn granularity_bounds_are_utc_calendar_periods() {
        let t = datetime!(2024-02-29 23:00 UTC);
        assert_eq!(Granularity::Day.start(t), datetime!(2024-02-29 00:00 UTC));
        assert_eq!(Granularity::Month.start(t), datetime!(2024-02-01 00:00 UTC));
        assert_eq!(
            Granularity::Month.end(datetime!(2024-02-01 00:00 UTC)),
            datetime!(2024-03-01 00:00 UTC)
        );
        assert_eq!(
            Granularity::Month.end(datetime!(2026-12-01 00:00 UTC)),
            datetime!(2027-01-01 00:00 UTC)
        );
        assert_eq!(
            Granularity::Hour.start(datetime!(2026-01-01 10:00 UTC)),
            datetime!(2026-01-01 10:00 UTC)
        );
        assert!(Granularity::parse("week").is_err());
    }

    #[test]
    fn a_plan_change_mid_month_prices_each_hour_at_the_plan_in_force() {
        let catalog = Catalog::builtin();
        let history = vec![
            kubenova_store::PlanChange {
                since: datetime!(2026-01-10 00:00 UTC),
                plan: "baseline".into(),
            },
            kubenova_store::PlanChange {
                since: datetime!(2026-01-31 23:30 UTC),
                plan: "gold".into(),
            },
        ];
        // The last hour of January (started before the change: baseline), then the first of February (gold).
        let records = [
            rec(datetime!(2026-01-31 22:00 UTC)),
            rec(datetime!(2026-01-31 23:00 UTC)),
            rec(datetime!(2026-02-01 00:00 UTC)),
        ];
        let months = series(
            &catalog,
            &history,
            &[],
            "gold",
            &priced_records(&records),
            Granularity::Month,
        );
        assert_eq!(months.len(), 2);
        assert_eq!(
            (months[0].start, months[0].end),
            (
                datetime!(2026-01-01 00:00 UTC),
                datetime!(2026-02-01 00:00 UTC)
            )
        );
        assert_eq!(months[0].hours, 2);
        assert_eq!(months[0].plans.len(), 1);
        assert_eq!(months[0].plans[0].plan, "baseline");
        assert_eq!(months[1].plans[0].plan, "gold");
        let one = |plan: &str| {
            super::super::tenants::cost_micros(
                &catalog,
                plan,
                &super::super::tenants::UsageTotals {
                    hours: 1,
                    cpu_millicore_hours: 1000,
                    memory_byte_hours: 1 << 30,
                    storage_byte_hours: 0,
                    load_balancer_hours: 1,
                    pod_hours: 2,
                },
            )
            .unwrap()
            .1
        };
        assert_ne!(
            one("baseline"),
            one("gold"),
            "the fixture needs different prices"
        );
        assert_eq!(
            months[0].cost.as_deref(),
            Some(super::super::tenants::micros_str(2 * one("baseline")).as_str())
        );
        assert_eq!(
            months[1].cost.as_deref(),
            Some(super::super::tenants::micros_str(one("gold")).as_str())
        );
        let (plans, total) = range_cost(&catalog, &history, &[], "gold", &priced_records(&records));
        assert_eq!(plans.len(), 2);
        assert_eq!(
            total.unwrap().1,
            super::super::tenants::micros_str(2 * one("baseline") + one("gold"))
        );
        // Hours before the first recorded change: the first recorded plan; no history: the current plan.
        assert_eq!(
            plan_at(&history, "gold", datetime!(2026-01-01 00:00 UTC)),
            "baseline"
        );
        assert_eq!(
            plan_at(&[], "gold", datetime!(2026-01-01 00:00 UTC)),
            "gold"
        );
        let days = series(
            &catalog,
            &history,
            &[],
            "gold",
            &priced_records(&records),
            Granularity::Day,
        );
        assert_eq!(days.iter().map(|d| d.hours).collect::<Vec<_>>(), [2, 1]);
        let hours = series(
            &catalog,
            &history,
            &[],
            "gold",
            &priced_records(&records),
            Granularity::Hour,
        );
        assert_eq!(hours.len(), 3);
    }
}
