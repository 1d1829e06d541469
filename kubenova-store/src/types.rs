//! Parameter and result types of the [`Store`](crate::Store) trait.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kubenova_api::ids::{AppId, ClusterId, ProjectId, TenantId};
use kubenova_api::model::AuditEvent;
use kubenova_api::selector::Selector;
use kubenova_api::validate::{FieldViolation, ValidationError, dns_label_problem};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// Default page size of every list.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size a caller may ask for.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Most keys one [`Store::memberships_of`](crate::Store::memberships_of) lookup takes (a
/// person's subject and groups).
pub const MAX_MEMBERSHIP_KEYS: usize = 256;

/// Result of [`Store::ping`](crate::Store::ping).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// Newest migration embedded in this build.
    pub expected_migration: i64,
    /// Newest migration applied to the database.
    pub applied_migration: i64,
    /// True when every embedded migration is applied.
    pub migrations_current: bool,
}

/// Cursor pagination: up to `limit` items after the opaque `cursor` of the previous page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ListParams {
    /// Page size (default 100, at most 500).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListParams {
    /// The first page of `limit` items.
    pub fn first(limit: u32) -> Self {
        Self {
            limit: Some(limit),
            cursor: None,
        }
    }

    /// The effective page size, or a validation error when out of range.
    pub fn page_size(&self) -> Result<u32, ValidationError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE_SIZE),
            Some(0) => Err(ValidationError::single("limit", "must be at least 1")),
            Some(n) if n > MAX_PAGE_SIZE => Err(ValidationError::single(
                "limit",
                format!("must be at most {MAX_PAGE_SIZE} (got {n})"),
            )),
            Some(n) => Ok(n),
        }
    }

    /// Decodes the cursor as a UUID position.
    pub fn cursor_uuid(&self) -> Result<Option<Uuid>, ValidationError> {
        self.cursor
            .as_deref()
            .map(|c| {
                decode_cursor(c)
                    .and_then(|s| Uuid::parse_str(&s).ok())
                    .ok_or_else(bad_cursor)
            })
            .transpose()
    }

    /// Decodes the cursor as an integer position.
    pub fn cursor_i64(&self) -> Result<Option<i64>, ValidationError> {
        self.cursor
            .as_deref()
            .map(|c| {
                decode_cursor(c)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad_cursor)
            })
            .transpose()
    }

    /// Decodes the cursor as a text position (e.g. a subject name).
    pub fn cursor_text(&self) -> Result<Option<String>, ValidationError> {
        self.cursor
            .as_deref()
            .map(|c| decode_cursor(c).ok_or_else(bad_cursor))
            .transpose()
    }
}

fn bad_cursor() -> ValidationError {
    ValidationError::single(
        "cursor",
        "is not a cursor returned by this list; start again without it",
    )
}

fn decode_cursor(c: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// Encodes a position as an opaque cursor.
pub fn encode_cursor(position: impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(position.to_string())
}

/// Narrows a list to the records with an exact name and whose labels match a
/// [`Selector`]; applied in the query, so pages of filtered results are full and their
/// cursors continue correctly. The default filter keeps everything.
///
/// ```
/// use kubenova_store::ListFilter;
/// use std::collections::BTreeMap;
/// let f = ListFilter::parse(Some("acme"), Some("tier in (gold,silver)")).unwrap();
/// let labels = BTreeMap::from([("tier".to_string(), "gold".to_string())]);
/// assert!(f.matches("acme", &labels));
/// assert!(!f.matches("globex", &labels));
///
/// let err = ListFilter::parse(Some("Acme"), Some("tier in gold")).unwrap_err();
/// assert_eq!(err.violations[0].field, "name");
/// assert_eq!(err.violations[1].field, "labelSelector");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only the record with this name (a DNS-1123 label, as every record name).
    pub name: Option<String>,
    /// Only records whose labels match (empty: all).
    pub labels: Selector,
}

impl ListFilter {
    /// The filter of the `name` and `labelSelector` query parameters: both checked, every
    /// violation reported (KN-422 naming `name` and `labelSelector`). An empty selector
    /// keeps everything.
    pub fn parse(name: Option<&str>, selector: Option<&str>) -> Result<Self, ValidationError> {
        let mut violations = Vec::new();
        if let Some(problem) = name.and_then(dns_label_problem) {
            violations.push(FieldViolation {
                field: "name".into(),
                reason: problem,
            });
        }
        let labels = match selector.map(Selector::parse).transpose() {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                violations.extend(ValidationError::from(e).violations);
                Selector::default()
            }
        };
        if violations.is_empty() {
            Ok(Self {
                name: name.map(str::to_owned),
                labels,
            })
        } else {
            Err(ValidationError { violations })
        }
    }

    /// Only the record named `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            labels: Selector::default(),
        }
    }

    /// True when the filter keeps everything.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.labels.is_empty()
    }

    /// Whether a record with this name and these labels passes: the same test as the
    /// store's query, for lists assembled record by record.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.name.as_deref().is_none_or(|n| n == name) && self.labels.matches(labels)
    }

    /// The name checked again (the store is also called directly, not only through
    /// [`ListFilter::parse`]): a [`StoreError::Validation`](crate::StoreError::Validation)
    /// naming `name` when it is not a DNS-1123 label.
    pub fn check(&self) -> Result<(), ValidationError> {
        match self.name.as_deref().and_then(dns_label_problem) {
            Some(problem) => Err(ValidationError::single("name", problem)),
            None => Ok(()),
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items, in stable order.
    pub items: Vec<T>,
    /// Cursor of the next page, `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Records written in the same transaction as a mutation.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions<'a> {
    /// The audit event of the call.
    pub audit: Option<&'a AuditEvent>,
    /// The idempotency record holding the response of the call.
    pub idempotency: Option<&'a IdempotencyRecord>,
}

/// A stored response for an `Idempotency-Key`, keyed by (`subject`, `scope`, `key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Authenticated subject that sent the key.
    pub subject: String,
    /// The caller's roles and tenant/project scope, as a digest: a caller with the same
    /// subject but other roles or another scope has other keys.
    pub scope: String,
    /// The client's key.
    pub key: String,
    /// Hash of method, path and body of the original request.
    pub request_hash: String,
    /// HTTP status of the stored response.
    pub status: u16,
    /// Body of the stored response.
    pub body: Vec<u8>,
    /// When stored.
    pub created_at: OffsetDateTime,
    /// When it may be forgotten.
    pub expires_at: OffsetDateTime,
}

/// Kind of a desired-state object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectKind {
    /// A tenant.
    Tenant,
    /// A project.
    Project,
    /// An app.
    App,
}

impl ObjectKind {
    /// Stored spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectKind::Tenant => "tenant",
            ObjectKind::Project => "project",
            ObjectKind::App => "app",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tenant" => Some(ObjectKind::Tenant),
            "project" => Some(ObjectKind::Project),
            "app" => Some(ObjectKind::App),
            _ => None,
        }
    }
}

/// One change of a cluster's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The cluster revision this change produced.
    pub revision: i64,
    /// Kind of object.
    pub kind: ObjectKind,
    /// Object id.
    pub object_id: Uuid,
    /// True when the object was deleted.
    pub deleted: bool,
    /// The W3C `traceparent` of the span that wrote this revision, when traces are
    /// exported (`kubenova_telemetry::propagation`); the manager hands it to the operator so
    /// that applying and reconciling the object continue the same trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

/// A tenant's plan from a time on ([`Store::tenant_plan_history`](crate::Store::tenant_plan_history)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanChange {
    /// From when.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Plan name.
    pub plan: String,
}

/// A version of a plan's price table: the prices in force for `plan` from `since` on
/// ([`Store::plan_price_history`](crate::Store::plan_price_history)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanPrices {
    /// Plan name.
    pub plan: String,
    /// From when (the version's identity together with `plan`).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The catalog's `prices` object of the plan, as JSON.
    pub prices: String,
}

/// Filter and page of [`Store::export_usage`](crate::Store::export_usage): every
/// tenant's records of a range, ordered by hour, cluster, tenant and project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageExport {
    /// Only this cluster.
    pub cluster: Option<ClusterId>,
    /// Only this tenant (its projects' records included).
    pub tenant: Option<TenantId>,
    /// First hour (inclusive).
    pub from: OffsetDateTime,
    /// Last hour (exclusive).
    pub to: OffsetDateTime,
    /// Records after this one (the last of the previous page): hour, cluster, tenant and
    /// project (nil for tenant-level records).
    pub after: Option<(OffsetDateTime, ClusterId, TenantId, Uuid)>,
    /// Page size.
    pub limit: u32,
}

/// Default of [`UsageQuery::max_records`].
pub const DEFAULT_USAGE_MAX_RECORDS: u32 = 100_000;

/// Filter for [`Store::query_usage`](crate::Store::query_usage) and
/// [`Store::usage_totals`](crate::Store::usage_totals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// Tenant.
    pub tenant: TenantId,
    /// Restrict to a cluster.
    pub cluster: Option<ClusterId>,
    /// `None`: tenant-level records only; `Some(p)`: that project's records.
    pub project: Option<ProjectId>,
    /// Include projects' records too (ignores `project`).
    pub all_projects: bool,
    /// First hour (inclusive).
    pub from: OffsetDateTime,
    /// Last hour (exclusive).
    pub to: OffsetDateTime,
    /// Most records [`Store::query_usage`](crate::Store::query_usage) returns: a query
    /// matching more fails with [`StoreError::Validation`](crate::StoreError::Validation)
    /// instead of answering a truncated list ([`DEFAULT_USAGE_MAX_RECORDS`] unless the
    /// caller bounds it otherwise). Totals are never limited: see
    /// [`Store::usage_totals`](crate::Store::usage_totals).
    pub max_records: u32,
}

/// Sums over every usage record a [`UsageQuery`] matches, computed by the database
/// ([`Store::usage_totals`](crate::Store::usage_totals)). A sum that would exceed
/// `i64::MAX` is `i64::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSums {
    /// Records matched (hours with a report, per cluster and project).
    pub records: i64,
    /// Σ `cpuMillicores` (millicore-hours).
    pub cpu_millicore_hours: i64,
    /// Σ `memoryBytes` (byte-hours).
    pub memory_byte_hours: i64,
    /// Σ `storageBytes` (byte-hours).
    pub storage_byte_hours: i64,
    /// Σ `loadBalancers` (LoadBalancer-hours).
    pub load_balancer_hours: i64,
    /// Σ `pods` (pod-hours).
    pub pod_hours: i64,
}

/// Sums of the usage records of one UTC day within one span of constant pricing
/// ([`Store::usage_day_sums`](crate::Store::usage_day_sums)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDaySums {
    /// The first hour of the group (its day is the group's day; any hour of the group is
    /// in the same span between two bounds).
    pub first_hour: OffsetDateTime,
    /// The sums (`records`: the hours of the group).
    pub sums: UsageSums,
}

/// Filter for [`Store::query_audit`](crate::Store::query_audit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// From (inclusive).
    pub from: Option<OffsetDateTime>,
    /// To (exclusive).
    pub to: Option<OffsetDateTime>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this resource kind.
    pub resource_kind: Option<String>,
    /// Only this resource id.
    pub resource_id: Option<String>,
    /// Pagination.
    pub page: ListParams,
}

/// How an issued credential authenticates: an embedded token or an exec-plugin refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialMode {
    /// A token embedded in a downloaded kubeconfig.
    Token,
    /// A short-lived token minted for the `kubenova auth token` exec plugin.
    Exec,
}

impl CredentialMode {
    /// Stored spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialMode::Token => "token",
            CredentialMode::Exec => "exec",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "token" => Some(CredentialMode::Token),
            "exec" => Some(CredentialMode::Exec),
            _ => None,
        }
    }
}

/// Metadata of a credential (a manager-signed kubeconfig token) the manager issued.
///
/// Never holds the token: only what identifies it (`jti`), whom and what it is for, and
/// its lifetime and revocation state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCredential {
    /// The token's `jti`.
    pub jti: Uuid,
    /// Tenant the credential is scoped to.
    pub tenant_id: TenantId,
    /// Project, for project-scoped credentials.
    pub project_id: Option<ProjectId>,
    /// Cluster whose audience the token carries.
    pub cluster_id: ClusterId,
    /// `sub` of the token.
    pub subject: String,
    /// Role (`owner`, `developer`, `viewer`).
    pub role: kubenova_api::model::AccessRole,
    /// Embedded token or exec refresh.
    pub mode: CredentialMode,
    /// Who asked for it (the authenticated caller).
    pub issued_by: String,
    /// `iat`.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// `exp`.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Why it was revoked, when not through the API: `membership removed` (the owners or
    /// access entries that entitled it changed), `tenant deleted`, `project deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// For a credential issued on rights derived from the model (a tenant's `owners`, a
    /// project's `access`): the membership keys it relied on (`user:<subject>`,
    /// `group:<group>`, see [`kubenova_api::identity`]). It stays active only while a
    /// membership of one of these keys entitles its role at its scope
    /// ([`Membership::entitles`](kubenova_api::identity::Membership::entitles)): the writes
    /// of tenants and projects revoke it otherwise, and it is recorded only if one does
    /// ([`CredentialOutcome::NotEntitled`]). `None` for a credential issued on a token
    /// role (admin, ops, a minted `tenantOwner` ...), which memberships never revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<Vec<String>>,
}

/// Why credentials are revoked when the memberships that entitled them go away.
pub const REVOKED_MEMBERSHIP_REMOVED: &str = "membership removed";
/// Why a deleted tenant's derived credentials are revoked.
pub const REVOKED_TENANT_DELETED: &str = "tenant deleted";
/// Why a deleted project's derived credentials are revoked.
pub const REVOKED_PROJECT_DELETED: &str = "project deleted";

/// "Subject X may obtain no credentials of tenant T since S": blocks new issuance and
/// exec refreshes until lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectRevocation {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Revoked subject.
    pub subject: String,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    /// Who revoked it.
    pub revoked_by: String,
    /// True when a platform role (admin, ops) revoked it: then only a platform role may
    /// lift it.
    #[serde(default)]
    pub revoked_by_platform: bool,
}

/// What [`Store::lift_subject_revocation`](crate::Store::lift_subject_revocation) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiftOutcome {
    /// The revocation is gone: the subject may obtain credentials again.
    Lifted,
    /// The subject was not revoked for the tenant (nothing changed).
    NotRevoked,
    /// Refused, nothing changed: a platform role made this revocation and the caller is
    /// not one.
    PlatformRevocation(SubjectRevocation),
}

/// Filter for [`Store::list_credentials`](crate::Store::list_credentials).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialQuery {
    /// Only this subject's credentials.
    pub subject: Option<String>,
    /// Pagination (by `jti`, which is a UUIDv7: issue order).
    pub page: ListParams,
}

/// A request the manager relays to a cluster's operator through the agent channel (the
/// logs or events of an app; see [`Store::create_agent_request`](crate::Store::create_agent_request)).
/// The store keeps its document opaque: the manager writes and the operator reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRequestRecord {
    /// Request id (random: the operator names it in its answers).
    pub id: Uuid,
    /// The cluster whose operator answers it.
    pub cluster_id: ClusterId,
    /// The app it is about (the request goes when the app goes).
    pub app_id: AppId,
    /// What it asks for (`logs`, `events`).
    pub kind: String,
    /// The request as delivered to the operator.
    pub doc: serde_json::Value,
    /// When recorded.
    pub created_at: OffsetDateTime,
    /// When it stops being delivered and answered, and may be purged.
    pub expires_at: OffsetDateTime,
}

/// One answer chunk of an operator to an [`AgentRequestRecord`] (see
/// [`Store::append_agent_answer`](crate::Store::append_agent_answer)).
#[derive(Debug, Clone, Copy)]
pub struct AnswerChunk<'a> {
    /// The request answered.
    pub request_id: Uuid,
    /// Chunk number: 0, 1, 2, … with no gap.
    pub seq: i64,
    /// The chunk as the operator sent it.
    pub body: &'a [u8],
    /// Whether it is the last chunk.
    pub done: bool,
    /// Whether it only asks if the request is still wanted: acknowledged and counted,
    /// never stored.
    pub probe: bool,
}

/// What [`Store::append_agent_answer`](crate::Store::append_agent_answer) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOutcome {
    /// Stored (or, for a probe, counted).
    Accepted,
    /// A chunk already accepted (a retry): nothing changed.
    Duplicate,
    /// Not the next chunk: `expected` is.
    OutOfOrder {
        /// The chunk number expected next.
        expected: i64,
    },
    /// Storing it would pass the request's byte bound: nothing stored.
    Full,
    /// No such request of this cluster that is delivered, unexpired and not finished
    /// (unknown, another cluster's, expired, answered, or given up by its caller).
    Gone,
}

/// The answer chunks [`Store::take_agent_answers`](crate::Store::take_agent_answers)
/// removed, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakenAnswers {
    /// `(seq, body)` of each chunk, by `seq`.
    pub chunks: Vec<(i64, Vec<u8>)>,
    /// Whether the last chunk was accepted (nothing more will come).
    pub done: bool,
}

/// Unix microseconds of a timestamp (the stored form).
pub fn to_micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// Timestamp from unix microseconds.
pub fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn page_sizes_and_cursors() {
        assert_eq!(
            ListParams::default().page_size().unwrap(),
            DEFAULT_PAGE_SIZE
        );
        assert!(ListParams::first(0).page_size().is_err());
        assert!(ListParams::first(501).page_size().is_err());
        let id = Uuid::now_v7();
        let p = ListParams {
            limit: None,
            cursor: Some(encode_cursor(id)),
        };
        assert_eq!(p.cursor_uuid().unwrap(), Some(id));
        let bad = ListParams {
            limit: None,
            cursor: Some("!!".into()),
        };
        assert!(bad.cursor_uuid().is_err());
        let t = time::macros::datetime!(2026-01-01 10:00:00.123456 UTC);
        assert_eq!(from_micros(to_micros(t)), t);
    }
}

/// What [`crate::Store::record_credentials`] did with one issuance. Only
/// [`Recorded`](Self::Recorded) issuances may hand out their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialOutcome {
    /// The credential row and its audit event are committed.
    Recorded,
    /// Refused: the subject is revoked for the tenant (nothing was written).
    SubjectRevoked(SubjectRevocation),
    /// Refused: the tenant no longer exists (nothing was written).
    TenantGone,
    /// Refused: the project no longer exists or is not the tenant's (nothing was written).
    ProjectGone,
    /// Refused: a credential on derived rights ([`IssuedCredential::derived_from`]) that no
    /// membership of its keys entitles any more (removed from the owners or access since
    /// the request's rights were read; nothing was written).
    NotEntitled,
}

/// Most projects one [`ApiKeyQuery::projects`] filter names.
pub const MAX_API_KEY_PROJECT_FILTER: usize = 500;

/// An API key: a machine identity of a tenant, or of one of its projects (see
/// [`Store::create_api_key`](crate::Store::create_api_key)).
///
/// Never holds the key: only the SHA-256 of it (`secret_hash`), what it is for and its
/// lifetime, use and revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Key id (a UUIDv7: creation order); also the first part of the key.
    pub id: Uuid,
    /// The tenant the key belongs to.
    pub tenant_id: TenantId,
    /// The tenant's cluster (read from the tenant; a create naming another cluster is
    /// refused as a missing tenant).
    pub cluster_id: ClusterId,
    /// The project, for a project key.
    pub project_id: Option<ProjectId>,
    /// Name: unique per tenant among the keys not revoked.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The role in the tenant (tenant keys) or the project (project keys).
    pub role: kubenova_api::model::AccessRole,
    /// SHA-256 of the key (the key itself is never stored).
    pub secret_hash: [u8; 32],
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: OffsetDateTime,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// When it was last used (recorded at most about once a minute per replica).
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// Filter for [`Store::list_api_keys`](crate::Store::list_api_keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeyQuery {
    /// Only the keys of these projects (`None`: every key of the tenant, tenant keys
    /// included). At most [`MAX_API_KEY_PROJECT_FILTER`].
    pub projects: Option<Vec<ProjectId>>,
    /// Pagination (by id, a UUIDv7: creation order).
    pub page: ListParams,
}
