//! The Postgres and SQLite backends. Both run the same SQL (positional `$N`
//! parameters, `ON CONFLICT`, `RETURNING` work in both), so the implementation is
//! written once in [`sql_backend!`] and instantiated per driver; each backend has its
//! own migrations because column types differ (UUID/JSONB/BYTEA vs BLOB/TEXT).

use crate::Store;
use crate::cache::{Cacheable, RowCache};
use crate::crypto::{Keyring, SealedSecret};
use crate::error::{Result, StoreError};
use crate::types::*;
use async_trait::async_trait;
use kubenova_api::identity::{Membership, project_members, tenant_members};
use kubenova_api::ids::{AppId, ClusterId, ProjectId, RunId, TenantId};
use kubenova_api::model::{
    AccessRole, App, AppRevision, AuditEvent, Cluster, ObjectStatus, Project, RunStatus, Tenant,
    UsageRecord, WorkflowRun,
};
use kubenova_api::validate::{Validate, ValidationError};
use sqlx::Row;
use sqlx::types::Json;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// The advisory-lock class of tenant issuance locks (Postgres, `pg_advisory_xact_lock`
/// two-key form: class "KN" and a 32-bit key per tenant).
const ISSUANCE_LOCK_CLASS: i32 = 0x4b4e;

/// The 32-bit advisory-lock key of a tenant. Two tenants that share a key only serialize
/// their issuance against each other's revocations; correctness does not depend on it.
fn issuance_lock_key(tenant: Uuid) -> i32 {
    let b = tenant.as_bytes();
    i32::from_le_bytes([b[12] ^ b[4], b[13] ^ b[5], b[14] ^ b[6], b[15] ^ b[7]])
}

/// Records held by each store's [`RowCache`].
const ROW_CACHE_CAPACITY: usize = 16_384;

/// Drops cached records when a write returns, whatever its outcome.
struct Invalidate<'a>(&'a RowCache, Option<Uuid>);

impl<'a> Invalidate<'a> {
    fn row(cache: &'a RowCache, id: Uuid) -> Self {
        Self(cache, Some(id))
    }
    /// Cascading deletes: everything (they are rare).
    fn all(cache: &'a RowCache) -> Self {
        Self(cache, None)
    }
}

impl Drop for Invalidate<'_> {
    fn drop(&mut self) {
        match self.1 {
            Some(id) => self.0.invalidate(id),
            None => self.0.clear(),
        }
    }
}

static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

fn now_micros() -> i64 {
    to_micros(OffsetDateTime::now_utc())
}

fn check_next_version(kind: &str, version: i64, expected: i64) -> Result<()> {
    if version != expected + 1 {
        return Err(StoreError::Validation(ValidationError::single(
            "version",
            format!(
                "a {kind} written at version {expected} must carry version {} (got {version})",
                expected + 1
            ),
        )));
    }
    Ok(())
}

fn unique(e: StoreError, message: impl FnOnce() -> String) -> StoreError {
    match e {
        StoreError::Conflict(_) => StoreError::Conflict(message()),
        other => other,
    }
}

/// Query filters are compared with stored text: bounded, and free of control characters
/// (Postgres cannot even receive a NUL).
fn check_filter_text(filters: &[(&str, Option<&str>)]) -> Result<()> {
    let mut v = kubenova_api::validate::Validator::new();
    for (field, value) in filters {
        if let Some(value) = value {
            if value.chars().any(char::is_control) {
                v.push(*field, "must not contain control characters");
            } else {
                v.max_len(field, value, 512);
            }
        }
    }
    Ok(v.finish()?)
}

/// Records whose observed status the operator updates.
trait Observed: serde::Serialize + serde::de::DeserializeOwned + Send + Sync {
    fn version(&self) -> i64;
    /// Advances the version and the change time.
    fn touch(&mut self, now: OffsetDateTime);
}

macro_rules! observed {
    ($($t:ty),*) => {$(
        impl Observed for $t {
            fn version(&self) -> i64 {
                self.version
            }
            fn touch(&mut self, now: OffsetDateTime) {
                self.version += 1;
                self.updated_at = now;
            }
        }
    )*};
}

observed!(Tenant, Project, App);

/// The summed columns of [`Store::usage_totals`].
const USAGE_SUM_COLUMNS: [&str; 5] = [
    "cpu_millicores",
    "memory_bytes",
    "storage_bytes",
    "load_balancers",
    "pods",
];

/// The columns of a usage record (read by `usage_row`), up to the filter.
const USAGE_SELECT: &str = "SELECT cluster_id, tenant_id, project_key, hour, cpu_millicores, memory_bytes, storage_bytes, load_balancers, \
     namespaces, pods, apps, cpu_limit_millicores, memory_limit_bytes, detail FROM usage_hours WHERE ";

/// Appends `COUNT(*) AS n` and the summed columns (read by `usage_sums_row`). Each column
/// is summed in two parts, the multiples of 2^32 and the rest (usage values are never
/// negative), so that neither sum can overflow a BIGINT however many rows match; the
/// parts are joined in 128 bits when read.
fn push_usage_sums<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<'_, DB>) {
    qb.push("COUNT(*) AS n");
    for col in USAGE_SUM_COLUMNS {
        qb.push(format!(
            ", CAST(COALESCE(SUM({col} / 4294967296), 0) AS BIGINT) AS {col}_hi, \
             CAST(COALESCE(SUM({col} % 4294967296), 0) AS BIGINT) AS {col}_lo"
        ));
    }
}

/// The `detail` column of `usage_hours`: the parts of a usage record that are not summed.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageDetail {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    storage_by_class: std::collections::BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quotas: Vec<kubenova_api::model::QuotaUse>,
}

impl UsageDetail {
    /// The detail of `r`, or `None` when it has none (the column stays NULL).
    fn of(r: &UsageRecord) -> Option<UsageDetail> {
        if r.storage_by_class.is_empty() && r.quotas.is_empty() {
            return None;
        }
        Some(UsageDetail {
            storage_by_class: r.storage_by_class.clone(),
            quotas: r.quotas.clone(),
        })
    }
}

/// The stored spelling of a run's status (the `workflow_runs.status` column).
fn run_status(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Requested => "requested",
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
    }
}

fn secret_id(owner: Uuid, purpose: &str) -> String {
    format!("{purpose}/{owner}")
}

/// The marker (a row of `store_markers`) of the membership index's one-time backfill.
const MEMBERSHIPS_BACKFILL: &str = "memberships-backfill";

/// Records read per round trip by the membership backfill.
const BACKFILL_PAGE: i64 = 500;

/// The longest key a stored membership can have: a subject (at most
/// [`SUBJECT_MAX`](kubenova_api::model::SUBJECT_MAX) bytes as written) with its kind
/// (`user:` for a bare name; `serviceaccount:system:serviceaccount:` for a service account
/// written `serviceaccount:<ns>:<name>`).
const MEMBERSHIP_KEY_MAX: usize = kubenova_api::model::SUBJECT_MAX + 32;

/// Whether `key` could be the key of a stored membership (subjects are bounded and free
/// of control characters); other keys match nothing, so a lookup leaves them out (and
/// Postgres could not even receive a NUL).
fn could_be_member_key(key: &str) -> bool {
    key.len() <= MEMBERSHIP_KEY_MAX && !key.chars().any(char::is_control)
}

/// A role as stored in `memberships.role` ([`AccessRole::as_str`]).
fn stored_role(role: &str) -> Result<AccessRole> {
    [AccessRole::Owner, AccessRole::Developer, AccessRole::Viewer]
        .into_iter()
        .find(|r| r.as_str() == role)
        .ok_or_else(|| {
            StoreError::Internal(format!("unknown membership role {role:?} in the store"))
        })
}

/// The SQL condition "a membership of one of the keys recorded with the credential `c`
/// (a row of `issued_credentials`) entitles its role at its scope": the same rule as
/// [`Membership::entitles`] (a tenant's owner: any role of the tenant and its projects; a
/// project's `owner:` entry any role of it, `developer:` developer or viewer, `viewer:`
/// viewer). `backend` picks how the JSON array of keys is read.
fn entitled_sql(backend: &str, c: &str) -> String {
    let keys = if backend == "postgres" {
        format!("SELECT json_array_elements_text({c}.derived_from::json)")
    } else {
        format!("SELECT value FROM json_each({c}.derived_from)")
    };
    format!(
        "EXISTS (SELECT 1 FROM memberships m WHERE m.tenant_id = {c}.tenant_id AND m.key IN ({keys}) \
         AND ((m.project_id IS NULL AND m.role = 'owner') OR (m.project_id = {c}.project_id \
         AND (m.role = 'owner' OR {c}.role = 'viewer' OR (m.role = 'developer' AND {c}.role = 'developer')))))"
    )
}

/// The stored form of [`IssuedCredential::derived_from`]: a JSON array of the keys that
/// could be a stored membership's (others can never entitle anything, and a NUL could not
/// even be read back by Postgres' JSON functions), or `NULL`.
fn derived_from_json(c: &IssuedCredential) -> Result<Option<String>> {
    let Some(keys) = &c.derived_from else {
        return Ok(None);
    };
    if keys.len() > MAX_MEMBERSHIP_KEYS {
        return Err(StoreError::Validation(ValidationError::single(
            "derivedFrom",
            format!(
                "a credential records at most {MAX_MEMBERSHIP_KEYS} membership keys (got {})",
                keys.len()
            ),
        )));
    }
    let kept: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| could_be_member_key(k))
        .collect();
    Ok(Some(serde_json::to_string(&kept)?))
}

/// Who revokes credentials in a write's transaction: the actor of its audit event.
fn writer<'a>(opts: &'a WriteOptions<'_>) -> &'a str {
    opts.audit.map(|e| e.actor.as_str()).unwrap_or("kubenova")
}

macro_rules! sql_backend {
    ($Store:ident, $Db:ty, $backend:literal, $migrator:expr) => {
        impl $Store {
            /// Wraps an existing pool (migrations are not run; see [`Self::migrate`]).
            pub fn from_pool(pool: sqlx::Pool<$Db>, keyring: Keyring) -> Self {
                Self::with_cache(pool, keyring, RowCache::new(ROW_CACHE_CAPACITY))
            }

            fn with_cache(pool: sqlx::Pool<$Db>, keyring: Keyring, cache: Arc<RowCache>) -> Self {
                Self {
                    pool,
                    keyring: Arc::new(RwLock::new(Arc::new(keyring))),
                    cache,
                }
            }

            /// A point read through the record cache.
            async fn cached_doc<T: Cacheable + serde::de::DeserializeOwned>(
                &self,
                table: &str,
                kind: &'static str,
                id: Uuid,
            ) -> Result<T> {
                if let Some(v) = self.cache.get::<T>(id) {
                    return Ok(v);
                }
                let ticket = self.cache.ticket(id);
                let v: T = self.fetch_doc(table, kind, id).await?;
                if let Some(t) = ticket {
                    self.cache.fill(t, &v);
                }
                Ok(v)
            }

            /// The underlying connection pool (for benchmarks and embedders' own tables).
            pub fn pool(&self) -> &sqlx::Pool<$Db> {
                &self.pool
            }

            /// Applies pending migrations, then the one-time data steps they call for (the
            /// backfill of the membership index from the tenants and projects stored before
            /// it existed; done once per database, by the first store to connect).
            pub async fn migrate(&self) -> Result<()> {
                $migrator.run(&self.pool).await.map_err(|e| match e {
                    sqlx::migrate::MigrateError::Execute(e) => StoreError::from(e),
                    other => StoreError::Internal(format!("migration failed: {other}")),
                })?;
                self.backfill_memberships().await?;
                Ok(())
            }

            /// Fills the membership index (migration `0014`) from the stored tenants and
            /// projects, once per database; returns whether this call did it.
            ///
            /// One transaction that starts by inserting the marker `memberships-backfill`
            /// into `store_markers`: a replica starting at the same time waits on that key
            /// until this transaction ends, then finds the marker and leaves the index
            /// alone (or, when this one failed, does the backfill itself). Each tenant's
            /// and project's rows are replaced, so rows already present are not doubled.
            /// Every later write keeps the index current (see [`Self::write_members`]).
            async fn backfill_memberships(&self) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                let marked = sqlx::query("INSERT INTO store_markers (name, at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(MEMBERSHIPS_BACKFILL)
                    .bind(now_micros())
                    .execute(&mut *tx)
                    .await?;
                if marked.rows_affected() == 0 {
                    return Ok(false);
                }
                let tenants = Self::backfill_table(&mut *tx, "tenants", |t: &Tenant| (t.id, None, tenant_members(t))).await?;
                let projects = Self::backfill_table(&mut *tx, "projects", |p: &Project| (p.tenant_id, Some(p.id), project_members(p))).await?;
                tx.commit().await?;
                tracing::info!(tenants, projects, "membership index filled from the stored tenants and projects");
                Ok(true)
            }

            /// Writes the memberships of every record of `table` (by id, a page per round
            /// trip) on `conn`; returns how many records were read.
            async fn backfill_table<T: serde::de::DeserializeOwned>(
                conn: &mut <$Db as sqlx::Database>::Connection,
                table: &str,
                members: impl Fn(&T) -> (TenantId, Option<ProjectId>, Vec<Membership>) + Send + Sync,
            ) -> Result<usize> {
                let sql = format!("SELECT id, doc FROM {table} WHERE id > $1 ORDER BY id LIMIT $2");
                let mut after = Uuid::nil();
                let mut read = 0;
                loop {
                    let rows = sqlx::query(&sql).bind(after).bind(BACKFILL_PAGE).fetch_all(&mut *conn).await?;
                    for row in &rows {
                        after = row.try_get("id")?;
                        let rec: T = row.try_get::<Json<T>, _>("doc")?.0;
                        let (tenant, project, rows) = members(&rec);
                        Self::write_members(&mut *conn, tenant, project, &rows).await?;
                    }
                    read += rows.len();
                    if rows.len() < BACKFILL_PAGE as usize {
                        return Ok(read);
                    }
                }
            }

            /// Replaces the membership rows of one scope on `conn`: a tenant's own (its
            /// owners; `project` is `None`) or one project's (its access entries), with
            /// `rows` (from [`tenant_members`] or [`project_members`]).
            async fn write_members(
                conn: &mut <$Db as sqlx::Database>::Connection,
                tenant: TenantId,
                project: Option<ProjectId>,
                rows: &[Membership],
            ) -> Result<()> {
                match project {
                    None => sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND project_id IS NULL").bind(tenant.0),
                    Some(p) => sqlx::query("DELETE FROM memberships WHERE project_id = $1").bind(p.0),
                }
                .execute(&mut *conn)
                .await?;
                for m in rows {
                    sqlx::query("INSERT INTO memberships (key, cluster_id, tenant_id, project_id, role) VALUES ($1, $2, $3, $4, $5)")
                        .bind(&m.key)
                        .bind(m.cluster.0)
                        .bind(m.tenant.0)
                        .bind(m.project.map(|p| p.0))
                        .bind(m.role.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            /// Replaces the keyring (e.g. after adding a KEK); follow with
            /// [`Store::rotate_keys`] to re-wrap existing data keys. No downtime: old KEKs
            /// keep decrypting until rotation finishes.
            pub fn set_keyring(&self, keyring: Keyring) {
                if let Ok(mut k) = self.keyring.write() {
                    *k = Arc::new(keyring);
                }
            }

            fn keys(&self) -> Arc<Keyring> {
                match self.keyring.read() {
                    Ok(k) => Arc::clone(&k),
                    Err(poisoned) => Arc::clone(&poisoned.into_inner()),
                }
            }

            /// Read-modify-write of operator-observed fields with an optimistic version
            /// check, retried on a concurrent change; no desired-state revision bump.
            /// `change` returns false when there is nothing to write (no version churn).
            async fn update_observed<T: Observed>(
                &self,
                table: &str,
                kind: &'static str,
                id: Uuid,
                change: impl Fn(&mut T) -> bool + Send + Sync,
            ) -> Result<T> {
                let sql = format!("UPDATE {table} SET doc = $1, version = $2, updated_at = $3 WHERE id = $4 AND version = $5");
                loop {
                    let mut rec: T = self.fetch_doc(table, kind, id).await?;
                    if !change(&mut rec) {
                        return Ok(rec);
                    }
                    let expected = rec.version();
                    let now = OffsetDateTime::now_utc();
                    rec.touch(now);
                    let res = sqlx::query(&sql)
                        .bind(Json(&rec))
                        .bind(expected + 1)
                        .bind(to_micros(now))
                        .bind(id)
                        .bind(expected)
                        .execute(&self.pool)
                        .await?;
                    if res.rows_affected() == 1 {
                        return Ok(rec);
                    }
                }
            }

            async fn bump(
                conn: &mut <$Db as sqlx::Database>::Connection,
                cluster: ClusterId,
                kind: ObjectKind,
                object: Uuid,
                deleted: bool,
            ) -> Result<i64> {
                let row = sqlx::query(
                    "UPDATE cluster_revisions SET revision = revision + 1 WHERE cluster_id = $1 RETURNING revision",
                )
                .bind(cluster.0)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound { kind: "cluster", id: cluster.to_string() });
                };
                let revision: i64 = row.try_get("revision")?;
                // The trace of the write, when traces are exported (see `Change::trace_parent`).
                let trace_parent = kubenova_telemetry::propagation::current_traceparent();
                sqlx::query(
                    "INSERT INTO desired_changes (cluster_id, revision, kind, object_id, deleted, trace_parent) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(cluster.0)
                .bind(revision)
                .bind(kind.as_str())
                .bind(object)
                .bind(deleted)
                .bind(trace_parent)
                .execute(&mut *conn)
                .await?;
                Ok(revision)
            }

            async fn apply_opts(
                conn: &mut <$Db as sqlx::Database>::Connection,
                opts: &WriteOptions<'_>,
            ) -> Result<()> {
                if let Some(ev) = opts.audit {
                    Self::insert_audit(&mut *conn, ev).await?;
                }
                if let Some(rec) = opts.idempotency {
                    Self::insert_idempotency(&mut *conn, rec).await?;
                }
                Ok(())
            }

            async fn insert_audit(
                conn: &mut <$Db as sqlx::Database>::Connection,
                ev: &AuditEvent,
            ) -> Result<()> {
                let outcome = serde_json::to_value(ev.outcome)?;
                // The document goes in as text: `json` on Postgres (migration 0006), `TEXT`
                // on SQLite.
                let insert = if $backend == "postgres" {
                    "INSERT INTO audit_events (id, at, actor, action, resource_kind, resource_id, outcome, doc) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json)"
                } else {
                    "INSERT INTO audit_events (id, at, actor, action, resource_kind, resource_id, outcome, doc) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                };
                sqlx::query(insert)
                .bind(ev.id.0)
                .bind(to_micros(ev.at))
                .bind(&ev.actor)
                .bind(&ev.action)
                .bind(&ev.resource_kind)
                .bind(&ev.resource_id)
                .bind(outcome.as_str().unwrap_or_default())
                .bind(serde_json::to_string(ev)?)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            async fn insert_idempotency(
                conn: &mut <$Db as sqlx::Database>::Connection,
                rec: &IdempotencyRecord,
            ) -> Result<()> {
                sqlx::query("DELETE FROM idempotency_keys WHERE subject = $1 AND scope = $2 AND key = $3 AND expires_at <= $4")
                    .bind(&rec.subject)
                    .bind(&rec.scope)
                    .bind(&rec.key)
                    .bind(to_micros(rec.created_at))
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "INSERT INTO idempotency_keys (subject, scope, key, request_hash, status, body, created_at, expires_at) \
                     VALUES ($1, $8, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&rec.subject)
                .bind(&rec.key)
                .bind(&rec.request_hash)
                .bind(i32::from(rec.status))
                .bind(&rec.body)
                .bind(to_micros(rec.created_at))
                .bind(to_micros(rec.expires_at))
                .bind(&rec.scope)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e.into(), || format!("idempotency key {:?} is already in use", rec.key)))?;
                Ok(())
            }

            async fn version_error(
                conn: &mut <$Db as sqlx::Database>::Connection,
                table: &str,
                kind: &'static str,
                id: Uuid,
                expected: i64,
            ) -> StoreError {
                let sql = format!("SELECT version FROM {table} WHERE id = $1");
                match sqlx::query(&sql).bind(id).fetch_optional(&mut *conn).await {
                    Ok(Some(row)) => match row.try_get::<i64, _>("version") {
                        Ok(actual) => StoreError::PreconditionFailed { kind, id: id.to_string(), expected, actual },
                        Err(e) => e.into(),
                    },
                    Ok(None) => StoreError::NotFound { kind, id: id.to_string() },
                    Err(e) => e.into(),
                }
            }

            /// Replaces a cluster at `expected` and, with `kubeconfig`, its stored
            /// kubeconfig, in one transaction with the audit event and idempotency record.
            async fn update_cluster_sealing(
                &self,
                c: &Cluster,
                expected: i64,
                kubeconfig: Option<&[u8]>,
                opts: &WriteOptions<'_>,
            ) -> Result<()> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::row(&self.cache, c.id.0);
                check_next_version("cluster", c.version, expected)?;
                let keys = self.keys();
                let mut tx = self.pool.begin().await?;
                let res = sqlx::query(
                    "UPDATE clusters SET name = $1, doc = $2, version = $3, updated_at = $4 WHERE id = $5 AND version = $6",
                )
                .bind(&c.name)
                .bind(Json(c))
                .bind(c.version)
                .bind(to_micros(c.updated_at))
                .bind(c.id.0)
                .bind(expected)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!("a cluster named {:?} already exists", c.name)))?;
                if res.rows_affected() == 0 {
                    return Err(Self::version_error(&mut *tx, "clusters", "cluster", c.id.0, expected).await);
                }
                if let Some(kubeconfig) = kubeconfig {
                    Self::seal_into(&mut *tx, &keys, c.id.0, "cluster-kubeconfig", kubeconfig).await?;
                }
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn seal_into(
                conn: &mut <$Db as sqlx::Database>::Connection,
                keys: &Keyring,
                owner: Uuid,
                purpose: &str,
                plaintext: &[u8],
            ) -> Result<()> {
                let id = secret_id(owner, purpose);
                let sealed = keys.seal(plaintext, id.as_bytes())?;
                sqlx::query(
                    "INSERT INTO secrets (id, owner_id, kek_id, wrapped_dek, ciphertext, version, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 1, $6) \
                     ON CONFLICT (id) DO UPDATE SET kek_id = excluded.kek_id, wrapped_dek = excluded.wrapped_dek, \
                     ciphertext = excluded.ciphertext, version = secrets.version + 1, updated_at = excluded.updated_at",
                )
                .bind(&id)
                .bind(owner)
                .bind(&sealed.kek_id)
                .bind(&sealed.wrapped_dek)
                .bind(&sealed.ciphertext)
                .bind(now_micros())
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            async fn fetch_doc<T: serde::de::DeserializeOwned>(
                &self,
                table: &str,
                kind: &'static str,
                id: Uuid,
            ) -> Result<T> {
                let sql = format!("SELECT doc FROM {table} WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
                match row {
                    Some(row) => Ok(row.try_get::<Json<T>, _>("doc")?.0),
                    None => Err(StoreError::NotFound { kind, id: id.to_string() }),
                }
            }

            async fn list_docs<T: serde::de::DeserializeOwned>(
                &self,
                table: &str,
                filter: Option<(&str, Uuid)>,
                params: &ListParams,
            ) -> Result<Page<T>> {
                self.list_docs_matching(table, filter, &ListFilter::default(), params).await
            }

            /// [`list_docs`](Self::list_docs) of the records that pass `matching`: the
            /// name compared with the `name` column (indexed), each label requirement
            /// with the document's `labels` (see [`push_label`](Self::push_label)), all
            /// in the query (bound parameters only), so the keyset pages stay full and
            /// their cursors continue after the last match.
            async fn list_docs_matching<T: serde::de::DeserializeOwned>(
                &self,
                table: &str,
                filter: Option<(&str, Uuid)>,
                matching: &ListFilter,
                params: &ListParams,
            ) -> Result<Page<T>> {
                let limit = params.page_size()?;
                let after = params.cursor_uuid()?;
                matching.check()?;
                let mut qb = sqlx::QueryBuilder::<$Db>::new(format!("SELECT id, doc FROM {table} WHERE 1 = 1"));
                if let Some((col, val)) = filter {
                    qb.push(format!(" AND {col} = ")).push_bind(val);
                }
                if let Some(name) = &matching.name {
                    qb.push(" AND name = ").push_bind(name.clone());
                }
                for r in matching.labels.requirements() {
                    qb.push(" AND ");
                    Self::push_requirement(&mut qb, r);
                }
                if let Some(a) = after {
                    qb.push(" AND id > ").push_bind(a);
                }
                qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit) + 1);
                let rows = qb.build().fetch_all(&self.pool).await?;
                let mut items = Vec::with_capacity(rows.len());
                let mut last = None;
                for row in rows.iter().take(limit as usize) {
                    last = Some(row.try_get::<Uuid, _>("id")?);
                    items.push(row.try_get::<Json<T>, _>("doc")?.0);
                }
                let next_cursor = if rows.len() > limit as usize { last.map(encode_cursor) } else { None };
                Ok(Page { items, next_cursor })
            }

            /// The text value of the label `key` in the row's document, `NULL` when the
            /// record has no such label: `doc -> 'labels' ->> key` on Postgres (JSONB),
            /// `json_extract(doc, '$.labels."key"')` on SQLite (a JSON text document; label
            /// keys hold no `"`, so quoting the key makes a path of exactly that key). The
            /// key, or the path, is a bound parameter.
            fn push_label(qb: &mut sqlx::QueryBuilder<'_, $Db>, key: &str) {
                if $backend == "postgres" {
                    qb.push("(doc -> 'labels' ->> ").push_bind(key.to_owned()).push(")");
                } else {
                    qb.push("json_extract(doc, ").push_bind(format!("$.labels.\"{key}\"")).push(")");
                }
            }

            /// One label requirement as a condition, with Kubernetes semantics: `!=` and
            /// `notin` also hold when the label is absent (the comparison is `NULL`, taken
            /// as true).
            fn push_requirement(qb: &mut sqlx::QueryBuilder<'_, $Db>, r: &kubenova_api::selector::Requirement) {
                use kubenova_api::selector::Operator;
                let values = |qb: &mut sqlx::QueryBuilder<'_, $Db>| {
                    qb.push(" (");
                    let mut list = qb.separated(", ");
                    for v in r.values() {
                        list.push_bind(v.clone());
                    }
                    qb.push(")");
                };
                match r.operator() {
                    Operator::Equals | Operator::In => {
                        Self::push_label(qb, r.key());
                        qb.push(" IN");
                        values(qb);
                    }
                    Operator::NotEquals | Operator::NotIn => {
                        qb.push("COALESCE(");
                        Self::push_label(qb, r.key());
                        qb.push(" NOT IN");
                        values(qb);
                        qb.push(", TRUE)");
                    }
                    Operator::Exists => {
                        Self::push_label(qb, r.key());
                        qb.push(" IS NOT NULL");
                    }
                    Operator::DoesNotExist => {
                        Self::push_label(qb, r.key());
                        qb.push(" IS NULL");
                    }
                }
            }

            async fn count(
                conn: &mut <$Db as sqlx::Database>::Connection,
                table: &str,
                col: &str,
                id: Uuid,
            ) -> Result<i64> {
                let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {col} = $1");
                let row = sqlx::query(&sql).bind(id).fetch_one(&mut *conn).await?;
                Ok(row.try_get::<i64, _>("n")?)
            }

            async fn ids(
                conn: &mut <$Db as sqlx::Database>::Connection,
                table: &str,
                col: &str,
                id: Uuid,
            ) -> Result<Vec<Uuid>> {
                let sql = format!("SELECT id FROM {table} WHERE {col} = $1 ORDER BY id");
                let rows = sqlx::query(&sql).bind(id).fetch_all(&mut *conn).await?;
                rows.iter().map(|r| r.try_get::<Uuid, _>("id").map_err(StoreError::from)).collect()
            }

            async fn parent_ids(
                conn: &mut <$Db as sqlx::Database>::Connection,
                table: &str,
                kind: &'static str,
                id: Uuid,
            ) -> Result<(Uuid, Uuid)> {
                let sql = format!("SELECT cluster_id, {} FROM {table} WHERE id = $1", if table == "projects" { "tenant_id AS parent" } else { "id AS parent" });
                let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *conn).await?;
                match row {
                    Some(r) => Ok((r.try_get::<Uuid, _>("cluster_id")?, r.try_get::<Uuid, _>("parent")?)),
                    None => Err(StoreError::NotFound { kind, id: id.to_string() }),
                }
            }

            async fn delete_apps_of(
                conn: &mut <$Db as sqlx::Database>::Connection,
                cluster: ClusterId,
                col: &str,
                id: Uuid,
                record: bool,
            ) -> Result<()> {
                for app in Self::ids(&mut *conn, "apps", col, id).await? {
                    if record {
                        Self::bump(&mut *conn, cluster, ObjectKind::App, app, true).await?;
                    }
                    sqlx::query("DELETE FROM apps WHERE id = $1").bind(app).execute(&mut *conn).await?;
                }
                Ok(())
            }

            async fn delete_projects_of(
                conn: &mut <$Db as sqlx::Database>::Connection,
                cluster: ClusterId,
                col: &str,
                id: Uuid,
                record: bool,
            ) -> Result<()> {
                for p in Self::ids(&mut *conn, "projects", col, id).await? {
                    if record {
                        Self::bump(&mut *conn, cluster, ObjectKind::Project, p, true).await?;
                    }
                    sqlx::query("DELETE FROM projects WHERE id = $1").bind(p).execute(&mut *conn).await?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl Store for $Store {
            fn row_cache(&self) -> Option<Arc<RowCache>> {
                Some(Arc::clone(&self.cache))
            }

            async fn close(&self) {
                // `Pool::close` can miss a connection that was still on its way back to
                // the pool when it looked (it is then left idle in the closed pool, and an
                // SQLite file stays held; sqlx issue #3217); repeat until no connection
                // is left.
                loop {
                    self.pool.close().await;
                    if self.pool.size() == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }

            async fn ping(&self) -> Result<Health> {
                let expected = $migrator.iter().map(|m| m.version).max().unwrap_or(0);
                let row = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success")
                    .fetch_one(&self.pool)
                    .await?;
                let applied: Option<i64> = row.try_get("v")?;
                let applied = applied.unwrap_or(0);
                Ok(Health {
                    backend: $backend,
                    expected_migration: expected,
                    applied_migration: applied,
                    migrations_current: applied >= expected,
                })
            }

            async fn create_cluster(&self, c: &Cluster, kubeconfig: &[u8], opts: &WriteOptions<'_>) -> Result<()> {
                let keys = self.keys();
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO clusters (id, name, doc, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(c.id.0)
                .bind(&c.name)
                .bind(Json(c))
                .bind(c.version)
                .bind(to_micros(c.created_at))
                .bind(to_micros(c.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!("a cluster named {:?} already exists", c.name)))?;
                sqlx::query("INSERT INTO cluster_revisions (cluster_id, revision, compacted) VALUES ($1, 0, 0)")
                    .bind(c.id.0)
                    .execute(&mut *tx)
                    .await?;
                Self::seal_into(&mut *tx, &keys, c.id.0, "cluster-kubeconfig", kubeconfig).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_cluster(&self, id: ClusterId) -> Result<Cluster> {
                self.cached_doc("clusters", "cluster", id.0).await
            }

            async fn get_cluster_uncached(&self, id: ClusterId) -> Result<Cluster> {
                self.fetch_doc("clusters", "cluster", id.0).await
            }

            async fn list_clusters(&self, params: &ListParams) -> Result<Page<Cluster>> {
                self.list_docs("clusters", None, params).await
            }

            async fn list_clusters_matching(&self, filter: &ListFilter, params: &ListParams) -> Result<Page<Cluster>> {
                self.list_docs_matching("clusters", None, filter, params).await
            }

            async fn update_cluster(&self, c: &Cluster, expected: i64, opts: &WriteOptions<'_>) -> Result<()> {
                self.update_cluster_sealing(c, expected, None, opts).await
            }

            async fn record_cluster_heartbeat(&self, id: ClusterId, at: OffsetDateTime) -> Result<()> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::row(&self.cache, id.0);
                loop {
                    let mut c: Cluster = self.fetch_doc("clusters", "cluster", id.0).await?;
                    if c.last_heartbeat_at.is_some_and(|t| t >= at) {
                        return Ok(());
                    }
                    c.last_heartbeat_at = Some(at);
                    // Same version: only a concurrent versioned write makes this re-read.
                    let res = sqlx::query("UPDATE clusters SET doc = $1 WHERE id = $2 AND version = $3")
                        .bind(Json(&c))
                        .bind(id.0)
                        .bind(c.version)
                        .execute(&self.pool)
                        .await?;
                    if res.rows_affected() == 1 {
                        return Ok(());
                    }
                }
            }

            async fn update_cluster_kubeconfig(
                &self,
                c: &Cluster,
                expected: i64,
                kubeconfig: &[u8],
                opts: &WriteOptions<'_>,
            ) -> Result<()> {
                self.update_cluster_sealing(c, expected, Some(kubeconfig), opts).await
            }

            async fn delete_cluster(&self, id: ClusterId, cascade: bool, opts: &WriteOptions<'_>) -> Result<()> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::all(&self.cache);
                let mut tx = self.pool.begin().await?;
                let tenants = Self::count(&mut *tx, "tenants", "cluster_id", id.0).await?;
                if tenants > 0 && !cascade {
                    return Err(StoreError::Conflict(format!(
                        "cluster {id} still has {tenants} tenant(s); delete them first or delete with cascade=true"
                    )));
                }
                if cascade {
                    let tenant_ids = Self::ids(&mut *tx, "tenants", "cluster_id", id.0).await?;
                    Self::delete_apps_of(&mut *tx, id, "cluster_id", id.0, false).await?;
                    Self::delete_projects_of(&mut *tx, id, "cluster_id", id.0, false).await?;
                    sqlx::query("DELETE FROM tenants WHERE cluster_id = $1").bind(id.0).execute(&mut *tx).await?;
                    for t in tenant_ids {
                        Self::revoke_unentitled(&mut *tx, TenantId(t), None, true, writer(opts), REVOKED_TENANT_DELETED).await?;
                    }
                }
                sqlx::query("DELETE FROM secrets WHERE owner_id = $1").bind(id.0).execute(&mut *tx).await?;
                let res = sqlx::query("DELETE FROM clusters WHERE id = $1").bind(id.0).execute(&mut *tx).await
                    .map_err(|e| unique(e.into(), || format!("cluster {id} still has tenants")))?;
                if res.rows_affected() == 0 {
                    return Err(StoreError::NotFound { kind: "cluster", id: id.to_string() });
                }
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn cluster_kubeconfig(&self, id: ClusterId) -> Result<zeroize::Zeroizing<Vec<u8>>> {
                self.get_secret(id.0, "cluster-kubeconfig").await.map_err(|e| match e {
                    StoreError::NotFound { .. } => StoreError::NotFound { kind: "cluster", id: id.to_string() },
                    other => other,
                })
            }

            async fn put_secret(&self, owner: Uuid, purpose: &str, plaintext: &[u8]) -> Result<()> {
                let keys = self.keys();
                let mut conn = self.pool.acquire().await?;
                Self::seal_into(&mut conn, &keys, owner, purpose, plaintext).await
            }

            async fn put_secret_if_absent(&self, owner: Uuid, purpose: &str, plaintext: &[u8]) -> Result<bool> {
                let keys = self.keys();
                let id = secret_id(owner, purpose);
                let sealed = keys.seal(plaintext, id.as_bytes())?;
                let res = sqlx::query(
                    "INSERT INTO secrets (id, owner_id, kek_id, wrapped_dek, ciphertext, version, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 1, $6) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&id)
                .bind(owner)
                .bind(&sealed.kek_id)
                .bind(&sealed.wrapped_dek)
                .bind(&sealed.ciphertext)
                .bind(now_micros())
                .execute(&self.pool)
                .await?;
                Ok(res.rows_affected() == 1)
            }

            async fn get_secret(&self, owner: Uuid, purpose: &str) -> Result<zeroize::Zeroizing<Vec<u8>>> {
                let id = secret_id(owner, purpose);
                let row = sqlx::query("SELECT kek_id, wrapped_dek, ciphertext FROM secrets WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound { kind: "secret", id: purpose.to_string() });
                };
                let sealed = SealedSecret {
                    kek_id: row.try_get("kek_id")?,
                    wrapped_dek: row.try_get("wrapped_dek")?,
                    ciphertext: row.try_get("ciphertext")?,
                };
                Ok(self.keys().open(&sealed, id.as_bytes())?)
            }

            async fn get_secret_versioned(&self, owner: Uuid, purpose: &str) -> Result<(zeroize::Zeroizing<Vec<u8>>, i64)> {
                let id = secret_id(owner, purpose);
                let row = sqlx::query("SELECT kek_id, wrapped_dek, ciphertext, version FROM secrets WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound { kind: "secret", id: purpose.to_string() });
                };
                let sealed = SealedSecret {
                    kek_id: row.try_get("kek_id")?,
                    wrapped_dek: row.try_get("wrapped_dek")?,
                    ciphertext: row.try_get("ciphertext")?,
                };
                let version: i64 = row.try_get("version")?;
                Ok((self.keys().open(&sealed, id.as_bytes())?, version))
            }

            async fn replace_secret(&self, owner: Uuid, purpose: &str, plaintext: &[u8], expected: i64) -> Result<i64> {
                let keys = self.keys();
                let id = secret_id(owner, purpose);
                let sealed = keys.seal(plaintext, id.as_bytes())?;
                let row = sqlx::query(
                    "UPDATE secrets SET kek_id = $1, wrapped_dek = $2, ciphertext = $3, version = version + 1, updated_at = $4 \
                     WHERE id = $5 AND version = $6 RETURNING version",
                )
                .bind(&sealed.kek_id)
                .bind(&sealed.wrapped_dek)
                .bind(&sealed.ciphertext)
                .bind(now_micros())
                .bind(&id)
                .bind(expected)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(row) = row {
                    return Ok(row.try_get("version")?);
                }
                let current = sqlx::query("SELECT version FROM secrets WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&self.pool)
                    .await?;
                match current {
                    Some(r) => Err(StoreError::PreconditionFailed {
                        kind: "secret",
                        id: purpose.to_string(),
                        expected,
                        actual: r.try_get("version")?,
                    }),
                    None => Err(StoreError::NotFound { kind: "secret", id: purpose.to_string() }),
                }
            }

            async fn rotate_keys(&self) -> Result<usize> {
                let keys = self.keys();
                let active = keys.active_kid().to_string();
                let rows = sqlx::query("SELECT id, kek_id, wrapped_dek, ciphertext, version FROM secrets WHERE kek_id <> $1")
                    .bind(&active)
                    .fetch_all(&self.pool)
                    .await?;
                let mut changed = 0;
                for row in rows {
                    let id: String = row.try_get("id")?;
                    let version: i64 = row.try_get("version")?;
                    let sealed = SealedSecret {
                        kek_id: row.try_get("kek_id")?,
                        wrapped_dek: row.try_get("wrapped_dek")?,
                        ciphertext: row.try_get("ciphertext")?,
                    };
                    if let Some(new) = keys.rewrap(&sealed, id.as_bytes())? {
                        // A concurrent write re-sealed it with the active key already: skip.
                        let res = sqlx::query(
                            "UPDATE secrets SET kek_id = $1, wrapped_dek = $2, version = version + 1, updated_at = $3 \
                             WHERE id = $4 AND version = $5",
                        )
                        .bind(&new.kek_id)
                        .bind(&new.wrapped_dek)
                        .bind(now_micros())
                        .bind(&id)
                        .bind(version)
                        .execute(&self.pool)
                        .await?;
                        changed += res.rows_affected() as usize;
                    }
                }
                tracing::info!(rewrapped = changed, active_kek = %active, "key rotation finished");
                Ok(changed)
            }

            async fn create_tenant(&self, t: &Tenant, opts: &WriteOptions<'_>) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                Self::bump(&mut *tx, t.cluster_id, ObjectKind::Tenant, t.id.0, false).await?;
                sqlx::query(
                    "INSERT INTO tenants (id, cluster_id, name, doc, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(t.id.0)
                .bind(t.cluster_id.0)
                .bind(&t.name)
                .bind(Json(t))
                .bind(t.version)
                .bind(to_micros(t.created_at))
                .bind(to_micros(t.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!("a tenant named {:?} already exists in cluster {}", t.name, t.cluster_id)))?;
                Self::write_members(&mut *tx, t.id, None, &tenant_members(t)).await?;
                Self::record_plan(&mut *tx, t, t.created_at).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn tenant_plan_history(&self, id: TenantId) -> Result<Vec<PlanChange>> {
                let rows = sqlx::query("SELECT since, plan FROM tenant_plans WHERE tenant_id = $1 ORDER BY since")
                    .bind(id.0)
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(PlanChange {
                        since: from_micros(r.try_get("since")?),
                        plan: r.try_get("plan")?,
                    });
                }
                Ok(out)
            }

            async fn record_plan_prices(&self, plan: &str, prices: &str, since: OffsetDateTime) -> Result<bool> {
                let done = sqlx::query(
                    "INSERT INTO plan_prices (plan, since, prices) SELECT $1, $2, $3 \
                     WHERE COALESCE((SELECT prices FROM plan_prices WHERE plan = $1 ORDER BY since DESC LIMIT 1), '') <> $3 \
                     ON CONFLICT (plan, since) DO UPDATE SET prices = excluded.prices",
                )
                .bind(plan)
                .bind(to_micros(since))
                .bind(prices)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn plan_price_history(&self) -> Result<Vec<PlanPrices>> {
                let rows = sqlx::query("SELECT plan, since, prices FROM plan_prices ORDER BY plan, since")
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(PlanPrices {
                        plan: r.try_get("plan")?,
                        since: from_micros(r.try_get("since")?),
                        prices: r.try_get("prices")?,
                    });
                }
                Ok(out)
            }

            async fn memberships_of(&self, keys: &[String]) -> Result<Vec<Membership>> {
                if keys.len() > MAX_MEMBERSHIP_KEYS {
                    return Err(StoreError::Validation(ValidationError::single(
                        "keys",
                        format!(
                            "a membership lookup takes at most {MAX_MEMBERSHIP_KEYS} keys (got {}); look the keys up in batches",
                            keys.len()
                        ),
                    )));
                }
                let mut wanted: Vec<&str> = keys.iter().map(String::as_str).filter(|k| could_be_member_key(k)).collect();
                wanted.sort_unstable();
                wanted.dedup();
                let Some(&first) = wanted.first() else {
                    return Ok(Vec::new());
                };
                // As many placeholders as the next power of two (the first key repeated):
                // at most nine statement texts, whatever the number of keys.
                let mut qb = sqlx::QueryBuilder::<$Db>::new(
                    "SELECT key, cluster_id, tenant_id, project_id, role FROM memberships WHERE key IN (",
                );
                let mut list = qb.separated(", ");
                for k in wanted.iter().copied().chain(std::iter::repeat(first)).take(wanted.len().next_power_of_two()) {
                    list.push_bind(k);
                }
                qb.push(")");
                let rows = qb.build().fetch_all(&self.pool).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(Membership {
                        key: r.try_get("key")?,
                        cluster: ClusterId(r.try_get("cluster_id")?),
                        tenant: TenantId(r.try_get("tenant_id")?),
                        project: r.try_get::<Option<Uuid>, _>("project_id")?.map(ProjectId),
                        role: stored_role(r.try_get("role")?)?,
                    });
                }
                out.sort_by(|a, b| (a.tenant, a.project, &a.key).cmp(&(b.tenant, b.project, &b.key)));
                Ok(out)
            }

            async fn get_tenant(&self, id: TenantId) -> Result<Tenant> {
                self.cached_doc("tenants", "tenant", id.0).await
            }

            async fn get_tenant_uncached(&self, id: TenantId) -> Result<Tenant> {
                self.fetch_doc("tenants", "tenant", id.0).await
            }

            async fn list_tenants(&self, cluster: Option<ClusterId>, params: &ListParams) -> Result<Page<Tenant>> {
                self.list_docs("tenants", cluster.map(|c| ("cluster_id", c.0)), params).await
            }

            async fn list_tenants_matching(&self, cluster: Option<ClusterId>, filter: &ListFilter, params: &ListParams) -> Result<Page<Tenant>> {
                self.list_docs_matching("tenants", cluster.map(|c| ("cluster_id", c.0)), filter, params).await
            }

            async fn update_tenant(&self, t: &Tenant, expected: i64, opts: &WriteOptions<'_>) -> Result<()> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::row(&self.cache, t.id.0);
                check_next_version("tenant", t.version, expected)?;
                let mut tx = self.pool.begin().await?;
                // The owners may change: no issuance of the tenant interleaves with the
                // re-evaluation of its credentials below.
                Self::lock_tenant_for_revocation(&mut *tx, t.id).await?;
                Self::bump(&mut *tx, t.cluster_id, ObjectKind::Tenant, t.id.0, false).await?;
                let res = sqlx::query(
                    "UPDATE tenants SET name = $1, doc = $2, version = $3, updated_at = $4 WHERE id = $5 AND version = $6 AND cluster_id = $7",
                )
                .bind(&t.name)
                .bind(Json(t))
                .bind(t.version)
                .bind(to_micros(t.updated_at))
                .bind(t.id.0)
                .bind(expected)
                .bind(t.cluster_id.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!("a tenant named {:?} already exists in cluster {}", t.name, t.cluster_id)))?;
                if res.rows_affected() == 0 {
                    return Err(Self::version_error(&mut *tx, "tenants", "tenant", t.id.0, expected).await);
                }
                Self::write_members(&mut *tx, t.id, None, &tenant_members(t)).await?;
                Self::revoke_unentitled(&mut *tx, t.id, None, false, writer(opts), REVOKED_MEMBERSHIP_REMOVED).await?;
                Self::record_plan(&mut *tx, t, t.updated_at).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn set_tenant_status(&self, id: TenantId, status: &ObjectStatus) -> Result<Tenant> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::row(&self.cache, id.0);
                self.update_observed("tenants", "tenant", id.0, |t: &mut Tenant| {
                    // Compared on the record this write is conditional on (its version):
                    // a report older than the stored one never replaces it.
                    if &t.status == status || crate::older_report(&t.status, status) {
                        return false;
                    }
                    t.status = status.clone();
                    true
                })
                .await
            }

            async fn delete_tenant(&self, id: TenantId, cascade: bool, opts: &WriteOptions<'_>) -> Result<()> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::all(&self.cache);
                let mut tx = self.pool.begin().await?;
                Self::lock_tenant_for_revocation(&mut *tx, id).await?;
                let row = sqlx::query("SELECT cluster_id FROM tenants WHERE id = $1").bind(id.0).fetch_optional(&mut *tx).await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound { kind: "tenant", id: id.to_string() });
                };
                let cluster = ClusterId(row.try_get::<Uuid, _>("cluster_id")?);
                let projects = Self::count(&mut *tx, "projects", "tenant_id", id.0).await?;
                if projects > 0 && !cascade {
                    return Err(StoreError::Conflict(format!(
                        "tenant {id} still has {projects} project(s); delete them first or delete with cascade=true"
                    )));
                }
                Self::delete_apps_of(&mut *tx, cluster, "tenant_id", id.0, true).await?;
                Self::delete_projects_of(&mut *tx, cluster, "tenant_id", id.0, true).await?;
                Self::bump(&mut *tx, cluster, ObjectKind::Tenant, id.0, true).await?;
                sqlx::query("DELETE FROM tenants WHERE id = $1").bind(id.0).execute(&mut *tx).await
                    .map_err(|e| unique(e.into(), || format!("tenant {id} still has projects")))?;
                Self::revoke_unentitled(&mut *tx, id, None, true, writer(opts), REVOKED_TENANT_DELETED).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_project(&self, p: &Project, opts: &WriteOptions<'_>) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                Self::bump(&mut *tx, p.cluster_id, ObjectKind::Project, p.id.0, false).await?;
                let (cluster, _) = Self::parent_ids(&mut *tx, "tenants", "tenant", p.tenant_id.0).await?;
                if cluster != p.cluster_id.0 {
                    return Err(StoreError::NotFound { kind: "tenant", id: p.tenant_id.to_string() });
                }
                sqlx::query(
                    "INSERT INTO projects (id, cluster_id, tenant_id, name, doc, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(p.id.0)
                .bind(p.cluster_id.0)
                .bind(p.tenant_id.0)
                .bind(&p.name)
                .bind(Json(p))
                .bind(p.version)
                .bind(to_micros(p.created_at))
                .bind(to_micros(p.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!("a project named {:?} already exists in tenant {}", p.name, p.tenant_id)))?;
                Self::write_members(&mut *tx, p.tenant_id, Some(p.id), &project_members(p)).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_project(&self, id: ProjectId) -> Result<Project> {
                self.cached_doc("projects", "project", id.0).await
            }

            async fn get_project_uncached(&self, id: ProjectId) -> Result<Project> {
                self.fetch_doc("projects", "project", id.0).await
            }

            async fn list_projects(&self, tenant: TenantId, params: &ListParams) -> Result<Page<Project>> {
                self.list_docs("projects", Some(("tenant_id", tenant.0)), params).await
            }

            async fn list_projects_matching(&self, tenant: TenantId, filter: &ListFilter, params: &ListParams) -> Result<Page<Project>> {
                self.list_docs_matching("projects", Some(("tenant_id", tenant.0)), filter, params).await
            }

            async fn list_cluster_projects(&self, cluster: ClusterId, params: &ListParams) -> Result<Page<Project>> {
                self.list_docs("projects", Some(("cluster_id", cluster.0)), params).await
            }

            async fn update_project(&self, p: &Project, expected: i64, opts: &WriteOptions<'_>) -> Result<()> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::row(&self.cache, p.id.0);
                check_next_version("project", p.version, expected)?;
                let mut tx = self.pool.begin().await?;
                // The access entries may change (see update_tenant).
                Self::lock_tenant_for_revocation(&mut *tx, p.tenant_id).await?;
                Self::bump(&mut *tx, p.cluster_id, ObjectKind::Project, p.id.0, false).await?;
                let res = sqlx::query(
                    "UPDATE projects SET name = $1, doc = $2, version = $3, updated_at = $4 WHERE id = $5 AND version = $6 AND tenant_id = $7",
                )
                .bind(&p.name)
                .bind(Json(p))
                .bind(p.version)
                .bind(to_micros(p.updated_at))
                .bind(p.id.0)
                .bind(expected)
                .bind(p.tenant_id.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!("a project named {:?} already exists in tenant {}", p.name, p.tenant_id)))?;
                if res.rows_affected() == 0 {
                    return Err(Self::version_error(&mut *tx, "projects", "project", p.id.0, expected).await);
                }
                Self::write_members(&mut *tx, p.tenant_id, Some(p.id), &project_members(p)).await?;
                Self::revoke_unentitled(&mut *tx, p.tenant_id, Some(p.id), false, writer(opts), REVOKED_MEMBERSHIP_REMOVED).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn set_project_status(&self, id: ProjectId, status: &ObjectStatus) -> Result<Project> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::row(&self.cache, id.0);
                self.update_observed("projects", "project", id.0, |p: &mut Project| {
                    // Compared on the record this write is conditional on (its version):
                    // a report older than the stored one never replaces it.
                    if &p.status == status || crate::older_report(&p.status, status) {
                        return false;
                    }
                    p.status = status.clone();
                    true
                })
                .await
            }

            async fn delete_project(&self, id: ProjectId, cascade: bool, opts: &WriteOptions<'_>) -> Result<()> {
                // Drops the cached record when this returns (after the commit, or on failure).
                let _invalidate = Invalidate::row(&self.cache, id.0);
                let mut tx = self.pool.begin().await?;
                let (cluster, tenant) = Self::parent_ids(&mut *tx, "projects", "project", id.0).await?;
                let (cluster, tenant) = (ClusterId(cluster), TenantId(tenant));
                Self::lock_tenant_for_revocation(&mut *tx, tenant).await?;
                let apps = Self::count(&mut *tx, "apps", "project_id", id.0).await?;
                if apps > 0 && !cascade {
                    return Err(StoreError::Conflict(format!(
                        "project {id} still has {apps} app(s); delete them first or delete with cascade=true"
                    )));
                }
                Self::delete_apps_of(&mut *tx, cluster, "project_id", id.0, true).await?;
                Self::bump(&mut *tx, cluster, ObjectKind::Project, id.0, true).await?;
                sqlx::query("DELETE FROM projects WHERE id = $1").bind(id.0).execute(&mut *tx).await
                    .map_err(|e| unique(e.into(), || format!("project {id} still has apps")))?;
                Self::revoke_unentitled(&mut *tx, tenant, Some(id), true, writer(opts), REVOKED_PROJECT_DELETED).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_app(&self, a: &App, first: &AppRevision, opts: &WriteOptions<'_>) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                Self::bump(&mut *tx, a.cluster_id, ObjectKind::App, a.id.0, false).await?;
                let (cluster, tenant) = Self::parent_ids(&mut *tx, "projects", "project", a.project_id.0).await?;
                if cluster != a.cluster_id.0 || tenant != a.tenant_id.0 {
                    return Err(StoreError::NotFound { kind: "project", id: a.project_id.to_string() });
                }
                sqlx::query(
                    "INSERT INTO apps (id, cluster_id, tenant_id, project_id, name, doc, version, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(a.id.0)
                .bind(a.cluster_id.0)
                .bind(a.tenant_id.0)
                .bind(a.project_id.0)
                .bind(&a.name)
                .bind(Json(a))
                .bind(a.version)
                .bind(to_micros(a.created_at))
                .bind(to_micros(a.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!("an app named {:?} already exists in project {}", a.name, a.project_id)))?;
                Self::insert_revision(&mut *tx, a.id, first).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_app(&self, id: AppId) -> Result<App> {
                self.fetch_doc("apps", "app", id.0).await
            }

            async fn list_apps(&self, project: ProjectId, params: &ListParams) -> Result<Page<App>> {
                self.list_docs("apps", Some(("project_id", project.0)), params).await
            }

            async fn list_apps_matching(&self, project: ProjectId, filter: &ListFilter, params: &ListParams) -> Result<Page<App>> {
                if !filter.labels.is_empty() {
                    return Err(StoreError::Validation(ValidationError::single(
                        kubenova_api::selector::SELECTOR_FIELD,
                        "apps have no labels; filter apps by name",
                    )));
                }
                self.list_docs_matching("apps", Some(("project_id", project.0)), filter, params).await
            }

            async fn list_cluster_apps(&self, cluster: ClusterId, params: &ListParams) -> Result<Page<App>> {
                self.list_docs("apps", Some(("cluster_id", cluster.0)), params).await
            }

            async fn update_app(&self, a: &App, expected: i64, new_revision: Option<&AppRevision>, opts: &WriteOptions<'_>) -> Result<()> {
                check_next_version("app", a.version, expected)?;
                let mut tx = self.pool.begin().await?;
                Self::write_app(&mut *tx, a, expected, new_revision).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn update_app_with_run(
                &self,
                a: &App,
                expected: i64,
                new_revision: Option<&AppRevision>,
                run: &WorkflowRun,
                opts: &WriteOptions<'_>,
            ) -> Result<()> {
                check_next_version("app", a.version, expected)?;
                if run.app_id != a.id {
                    return Err(StoreError::Validation(ValidationError::single(
                        "run.appId",
                        format!("the run belongs to app {}, not to the updated app {}", run.app_id, a.id),
                    )));
                }
                let mut tx = self.pool.begin().await?;
                Self::write_app(&mut *tx, a, expected, new_revision).await?;
                Self::insert_run(&mut *tx, run).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }
            async fn set_app_status(&self, id: AppId, status: &ObjectStatus, vela_phase: Option<&str>) -> Result<App> {
                self.update_observed("apps", "app", id.0, |a: &mut App| {
                    if (&a.status == status && a.vela_phase.as_deref() == vela_phase)
                        || crate::older_report(&a.status, status)
                    {
                        return false;
                    }
                    a.status = status.clone();
                    a.vela_phase = vela_phase.map(str::to_string);
                    true
                })
                .await
            }

            async fn delete_app(&self, id: AppId, opts: &WriteOptions<'_>) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query("SELECT cluster_id FROM apps WHERE id = $1").bind(id.0).fetch_optional(&mut *tx).await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound { kind: "app", id: id.to_string() });
                };
                let cluster = ClusterId(row.try_get::<Uuid, _>("cluster_id")?);
                Self::bump(&mut *tx, cluster, ObjectKind::App, id.0, true).await?;
                sqlx::query("DELETE FROM apps WHERE id = $1").bind(id.0).execute(&mut *tx).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_app_revisions(&self, id: AppId, params: &ListParams) -> Result<Page<AppRevision>> {
                let limit = params.page_size()?;
                let after = params.cursor_i64()?.unwrap_or(0);
                let exists = sqlx::query("SELECT id FROM apps WHERE id = $1").bind(id.0).fetch_optional(&self.pool).await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound { kind: "app", id: id.to_string() });
                }
                let rows = sqlx::query("SELECT number, doc FROM app_revisions WHERE app_id = $1 AND number > $2 ORDER BY number LIMIT $3")
                    .bind(id.0)
                    .bind(after)
                    .bind(i64::from(limit) + 1)
                    .fetch_all(&self.pool)
                    .await?;
                let mut items = Vec::new();
                for row in rows.iter().take(limit as usize) {
                    items.push(row.try_get::<Json<AppRevision>, _>("doc")?.0);
                }
                let next_cursor = if rows.len() > limit as usize { items.last().map(|r| encode_cursor(r.number)) } else { None };
                Ok(Page { items, next_cursor })
            }

            async fn get_app_revision(&self, id: AppId, number: i64) -> Result<AppRevision> {
                let row = sqlx::query("SELECT doc FROM app_revisions WHERE app_id = $1 AND number = $2")
                    .bind(id.0)
                    .bind(number)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(r) => Ok(r.try_get::<Json<AppRevision>, _>("doc")?.0),
                    None => Err(StoreError::NotFound { kind: "app revision", id: format!("{id}@{number}") }),
                }
            }

            async fn create_workflow_run(&self, run: &WorkflowRun, opts: &WriteOptions<'_>) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                Self::insert_run(&mut *tx, run).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn update_workflow_run(&self, run: &WorkflowRun) -> Result<()> {
                let res = sqlx::query("UPDATE workflow_runs SET doc = $1, status = $4, version = version + 1 WHERE id = $2 AND app_id = $3")
                    .bind(Json(run))
                    .bind(run.id.0)
                    .bind(run.app_id.0)
                    .bind(run_status(run.status))
                    .execute(&self.pool)
                    .await?;
                if res.rows_affected() == 0 {
                    return Err(StoreError::NotFound { kind: "workflow run", id: run.id.to_string() });
                }
                Ok(())
            }

            async fn get_workflow_run(&self, id: RunId) -> Result<WorkflowRun> {
                self.fetch_doc("workflow_runs", "workflow run", id.0).await
            }

            async fn list_workflow_runs(&self, app: AppId, params: &ListParams) -> Result<Page<WorkflowRun>> {
                self.list_docs("workflow_runs", Some(("app_id", app.0)), params).await
            }

            async fn list_active_workflow_runs(&self, app: AppId, params: &ListParams) -> Result<Page<WorkflowRun>> {
                let limit = params.page_size()?;
                let after = params.cursor_uuid()?;
                let mut qb = sqlx::QueryBuilder::<$Db>::new(
                    "SELECT id, doc FROM workflow_runs WHERE status IN ('requested', 'running') AND app_id = ",
                );
                qb.push_bind(app.0);
                if let Some(a) = after {
                    qb.push(" AND id > ").push_bind(a);
                }
                qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit) + 1);
                let rows = qb.build().fetch_all(&self.pool).await?;
                let mut items = Vec::with_capacity(rows.len().min(limit as usize));
                let mut last = None;
                for row in rows.iter().take(limit as usize) {
                    last = Some(row.try_get::<Uuid, _>("id")?);
                    items.push(row.try_get::<Json<WorkflowRun>, _>("doc")?.0);
                }
                let next_cursor = if rows.len() > limit as usize { last.map(encode_cursor) } else { None };
                Ok(Page { items, next_cursor })
            }

            async fn prune_workflow_runs(&self, app: AppId, keep: u32) -> Result<u64> {
                let res = sqlx::query(
                    "DELETE FROM workflow_runs WHERE app_id = $1 AND status IN ('succeeded', 'failed') AND id NOT IN \
                     (SELECT id FROM workflow_runs WHERE app_id = $1 AND status IN ('succeeded', 'failed') ORDER BY id DESC LIMIT $2)",
                )
                .bind(app.0)
                .bind(i64::from(keep))
                .execute(&self.pool)
                .await?;
                Ok(res.rows_affected())
            }

            async fn cluster_revision(&self, id: ClusterId) -> Result<i64> {
                let row = sqlx::query("SELECT revision FROM cluster_revisions WHERE cluster_id = $1")
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(r) => Ok(r.try_get("revision")?),
                    None => Err(StoreError::NotFound { kind: "cluster", id: id.to_string() }),
                }
            }

            async fn changes_since(&self, id: ClusterId, since: i64, limit: u32) -> Result<Option<Vec<Change>>> {
                let row = sqlx::query("SELECT revision, compacted FROM cluster_revisions WHERE cluster_id = $1")
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound { kind: "cluster", id: id.to_string() });
                };
                let compacted: i64 = row.try_get("compacted")?;
                if since < compacted || since < 0 {
                    return Ok(None);
                }
                let rows = sqlx::query(
                    "SELECT revision, kind, object_id, deleted, trace_parent FROM desired_changes WHERE cluster_id = $1 AND revision > $2 ORDER BY revision LIMIT $3",
                )
                .bind(id.0)
                .bind(since)
                .bind(i64::from(limit.max(1)))
                .fetch_all(&self.pool)
                .await?;
                // A compaction committed between the two reads may have deleted rows after
                // `since`: read the mark again (it commits with the deletion) and answer
                // "compacted" instead of a delta with holes.
                let compacted: i64 = sqlx::query_scalar("SELECT compacted FROM cluster_revisions WHERE cluster_id = $1")
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?
                    .unwrap_or(i64::MAX);
                if since < compacted {
                    return Ok(None);
                }
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let kind: String = r.try_get("kind")?;
                    out.push(Change {
                        revision: r.try_get("revision")?,
                        kind: ObjectKind::parse(&kind).ok_or_else(|| StoreError::Internal(format!("unknown change kind {kind}")))?,
                        object_id: r.try_get("object_id")?,
                        deleted: r.try_get("deleted")?,
                        trace_parent: r.try_get("trace_parent")?,
                    });
                }
                Ok(Some(out))
            }

            async fn compact_changes(&self, id: ClusterId, up_to: i64) -> Result<u64> {
                let mut tx = self.pool.begin().await?;
                let res = sqlx::query("UPDATE cluster_revisions SET compacted = $2 WHERE cluster_id = $1 AND compacted < $2 AND revision >= $2")
                    .bind(id.0)
                    .bind(up_to)
                    .execute(&mut *tx)
                    .await?;
                if res.rows_affected() == 0 {
                    return Ok(0);
                }
                let del = sqlx::query("DELETE FROM desired_changes WHERE cluster_id = $1 AND revision <= $2")
                    .bind(id.0)
                    .bind(up_to)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(del.rows_affected())
            }

            async fn create_agent_request(&self, r: &AgentRequestRecord, max_open: u32) -> Result<bool> {
                let res = sqlx::query(
                    "INSERT INTO agent_requests (id, cluster_id, app_id, kind, doc, created_at, expires_at, delivered, next_seq, bytes, done) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, FALSE, 0, 0, FALSE \
                     WHERE (SELECT COUNT(*) FROM agent_requests WHERE cluster_id = $2 AND expires_at > $6) < $8",
                )
                .bind(r.id)
                .bind(r.cluster_id.0)
                .bind(r.app_id.0)
                .bind(&r.kind)
                .bind(Json(&r.doc))
                .bind(to_micros(r.created_at))
                .bind(to_micros(r.expires_at))
                .bind(i64::from(max_open))
                .execute(&self.pool)
                .await
                .map_err(|e| match StoreError::from(e) {
                    // The app (or its cluster) went away meanwhile.
                    StoreError::Conflict(_) => StoreError::NotFound { kind: "app", id: r.app_id.to_string() },
                    other => other,
                })?;
                Ok(res.rows_affected() == 1)
            }

            async fn claim_agent_requests(&self, cluster: ClusterId, now: OffsetDateTime, limit: u32) -> Result<Vec<serde_json::Value>> {
                let rows = sqlx::query(
                    "UPDATE agent_requests SET delivered = TRUE WHERE delivered = FALSE AND id IN \
                     (SELECT id FROM agent_requests WHERE cluster_id = $1 AND delivered = FALSE AND expires_at > $2 \
                      ORDER BY created_at, id LIMIT $3) \
                     RETURNING created_at, id, doc",
                )
                .bind(cluster.0)
                .bind(to_micros(now))
                .bind(i64::from(limit.max(1)))
                .fetch_all(&self.pool)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let at: i64 = r.try_get("created_at")?;
                    let id: Uuid = r.try_get("id")?;
                    out.push((at, id, r.try_get::<Json<serde_json::Value>, _>("doc")?.0));
                }
                // RETURNING has no order: oldest first.
                out.sort_by_key(|(at, id, _)| (*at, *id));
                Ok(out.into_iter().map(|(_, _, doc)| doc).collect())
            }

            async fn append_agent_answer(&self, cluster: ClusterId, c: &AnswerChunk<'_>, max_bytes: i64, now: OffsetDateTime) -> Result<AnswerOutcome> {
                let mut tx = self.pool.begin().await?;
                // Postgres: the row lock orders concurrent chunks of one request. SQLite has a
                // single writer connection.
                let select = if $backend == "postgres" {
                    "SELECT cluster_id, delivered, next_seq, bytes, done, expires_at FROM agent_requests WHERE id = $1 FOR UPDATE"
                } else {
                    "SELECT cluster_id, delivered, next_seq, bytes, done, expires_at FROM agent_requests WHERE id = $1"
                };
                let row = sqlx::query(select).bind(c.request_id).fetch_optional(&mut *tx).await?;
                let Some(row) = row else {
                    return Ok(AnswerOutcome::Gone);
                };
                let owner: Uuid = row.try_get("cluster_id")?;
                let delivered: bool = row.try_get("delivered")?;
                let next: i64 = row.try_get("next_seq")?;
                let bytes: i64 = row.try_get("bytes")?;
                let done: bool = row.try_get("done")?;
                let expires: i64 = row.try_get("expires_at")?;
                if owner != cluster.0 || !delivered || expires <= to_micros(now) {
                    return Ok(AnswerOutcome::Gone);
                }
                if c.seq < next {
                    return Ok(AnswerOutcome::Duplicate);
                }
                if done {
                    return Ok(AnswerOutcome::Gone);
                }
                if c.seq > next {
                    return Ok(AnswerOutcome::OutOfOrder { expected: next });
                }
                let len = i64::try_from(c.body.len()).unwrap_or(i64::MAX);
                if bytes.saturating_add(len) > max_bytes {
                    return Ok(AnswerOutcome::Full);
                }
                if !c.probe {
                    sqlx::query("INSERT INTO agent_answers (request_id, seq, body, created_at) VALUES ($1, $2, $3, $4)")
                        .bind(c.request_id)
                        .bind(c.seq)
                        .bind(c.body)
                        .bind(to_micros(now))
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("UPDATE agent_requests SET next_seq = next_seq + 1, bytes = bytes + $2, done = $3 WHERE id = $1")
                    .bind(c.request_id)
                    .bind(if c.probe { 0 } else { len })
                    .bind(c.done)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(AnswerOutcome::Accepted)
            }

            async fn take_agent_answers(&self, id: Uuid) -> Result<TakenAnswers> {
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query("SELECT done FROM agent_requests WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound { kind: "agent request", id: id.to_string() });
                };
                let done: bool = row.try_get("done")?;
                let rows = sqlx::query("DELETE FROM agent_answers WHERE request_id = $1 RETURNING seq, body")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                let mut chunks = Vec::with_capacity(rows.len());
                for r in rows {
                    chunks.push((r.try_get::<i64, _>("seq")?, r.try_get::<Vec<u8>, _>("body")?));
                }
                chunks.sort_by_key(|(seq, _)| *seq);
                Ok(TakenAnswers { chunks, done })
            }

            async fn delete_agent_request(&self, id: Uuid) -> Result<()> {
                sqlx::query("DELETE FROM agent_requests WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn purge_agent_requests(&self, now: OffsetDateTime) -> Result<u64> {
                let res = sqlx::query("DELETE FROM agent_requests WHERE expires_at <= $1")
                    .bind(to_micros(now))
                    .execute(&self.pool)
                    .await?;
                Ok(res.rows_affected())
            }

            async fn upsert_usage(&self, records: &[UsageRecord]) -> Result<()> {
                for r in records {
                    r.validate()?;
                }
                // The last record of a (cluster, tenant, project, hour) wins, as if each
                // were written in turn (one multi-row statement may not touch a row twice).
                let mut seen = std::collections::HashSet::with_capacity(records.len());
                let rows: Vec<&UsageRecord> = records
                    .iter()
                    .rev()
                    .filter(|r| seen.insert((r.cluster_id, r.tenant_id, r.project_id, r.hour)))
                    .collect();
                let mut tx = self.pool.begin().await?;
                let now = now_micros();
                // 15 parameters a row: 1,000 rows stay under both backends' limits.
                for chunk in rows.chunks(1000) {
                    let mut qb = sqlx::QueryBuilder::<$Db>::new(
                        "INSERT INTO usage_hours (cluster_id, tenant_id, project_key, hour, cpu_millicores, memory_bytes, storage_bytes, \
                         load_balancers, namespaces, pods, apps, reported_at, cpu_limit_millicores, memory_limit_bytes, detail) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.cluster_id.0)
                            .push_bind(r.tenant_id.0)
                            .push_bind(r.project_id.map(|p| p.0).unwrap_or(Uuid::nil()))
                            .push_bind(to_micros(r.hour))
                            .push_bind(r.cpu_millicores)
                            .push_bind(r.memory_bytes)
                            .push_bind(r.storage_bytes)
                            .push_bind(r.load_balancers)
                            .push_bind(r.namespaces)
                            .push_bind(r.pods)
                            .push_bind(r.apps)
                            .push_bind(now)
                            .push_bind(r.cpu_limit_millicores)
                            .push_bind(r.memory_limit_bytes)
                            .push_bind(UsageDetail::of(r).map(Json));
                    });
                    qb.push(
                        " ON CONFLICT (cluster_id, tenant_id, project_key, hour) DO UPDATE SET \
                         cpu_millicores = excluded.cpu_millicores, memory_bytes = excluded.memory_bytes, \
                         storage_bytes = excluded.storage_bytes, load_balancers = excluded.load_balancers, \
                         namespaces = excluded.namespaces, pods = excluded.pods, apps = excluded.apps, reported_at = excluded.reported_at, \
                         cpu_limit_millicores = excluded.cpu_limit_millicores, memory_limit_bytes = excluded.memory_limit_bytes, \
                         detail = excluded.detail",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn export_usage(&self, e: &UsageExport) -> Result<Vec<UsageRecord>> {
                let mut qb = sqlx::QueryBuilder::<$Db>::new(USAGE_SELECT);
                qb.push("hour >= ");
                qb.push_bind(to_micros(e.from));
                qb.push(" AND hour < ").push_bind(to_micros(e.to));
                if let Some(c) = e.cluster {
                    qb.push(" AND cluster_id = ").push_bind(c.0);
                }
                if let Some(t) = e.tenant {
                    qb.push(" AND tenant_id = ").push_bind(t.0);
                }
                if let Some((hour, c, t, p)) = e.after {
                    qb.push(" AND (hour, cluster_id, tenant_id, project_key) > (")
                        .push_bind(to_micros(hour))
                        .push(", ")
                        .push_bind(c.0)
                        .push(", ")
                        .push_bind(t.0)
                        .push(", ")
                        .push_bind(p)
                        .push(")");
                }
                qb.push(" ORDER BY hour, cluster_id, tenant_id, project_key LIMIT ")
                    .push_bind(i64::from(e.limit));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(Self::usage_row).collect()
            }

            async fn query_usage(&self, q: &UsageQuery) -> Result<Vec<UsageRecord>> {
                let mut qb = sqlx::QueryBuilder::<$Db>::new(USAGE_SELECT);
                qb.push("tenant_id = ");
                Self::push_usage_filter(&mut qb, q);
                qb.push(" ORDER BY hour, cluster_id, project_key LIMIT ")
                    .push_bind(i64::from(q.max_records) + 1);
                let rows = qb.build().fetch_all(&self.pool).await?;
                if rows.len() > q.max_records as usize {
                    return Err(StoreError::Validation(ValidationError::single(
                        "to",
                        format!(
                            "the range holds more than {} usage records, the most one answer carries; ask for a shorter range (from, to)",
                            q.max_records
                        ),
                    )));
                }
                rows.iter().map(Self::usage_row).collect()
            }

            async fn usage_totals(&self, q: &UsageQuery) -> Result<UsageSums> {
                let mut qb = sqlx::QueryBuilder::<$Db>::new("SELECT ");
                push_usage_sums(&mut qb);
                qb.push(" FROM usage_hours WHERE tenant_id = ");
                Self::push_usage_filter(&mut qb, q);
                let row = qb.build().fetch_one(&self.pool).await?;
                Self::usage_sums_row(&row)
            }

            async fn usage_day_sums(&self, q: &UsageQuery, bounds: &[OffsetDateTime]) -> Result<Vec<UsageDaySums>> {
                // Hours are unix microseconds: the integer division is the UTC day.
                let mut qb = sqlx::QueryBuilder::<$Db>::new("SELECT hour / 86400000000 AS day_index, ");
                if bounds.is_empty() {
                    qb.push("0");
                } else {
                    qb.push("CASE");
                    for (i, b) in bounds.iter().enumerate() {
                        qb.push(" WHEN hour < ").push_bind(to_micros(*b)).push(format!(" THEN {i}"));
                    }
                    qb.push(format!(" ELSE {} END", bounds.len()));
                }
                qb.push(" AS span, MIN(hour) AS first_hour, ");
                push_usage_sums(&mut qb);
                qb.push(" FROM usage_hours WHERE tenant_id = ");
                Self::push_usage_filter(&mut qb, q);
                qb.push(" GROUP BY day_index, span ORDER BY first_hour");
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(UsageDaySums {
                            first_hour: from_micros(row.try_get("first_hour")?),
                            sums: Self::usage_sums_row(row)?,
                        })
                    })
                    .collect()
            }

            async fn latest_usage(&self, q: &UsageQuery, n: u32) -> Result<Vec<UsageRecord>> {
                let mut qb = sqlx::QueryBuilder::<$Db>::new(USAGE_SELECT);
                qb.push("tenant_id = ");
                Self::push_usage_filter(&mut qb, q);
                qb.push(" ORDER BY hour DESC, cluster_id DESC, project_key DESC LIMIT ")
                    .push_bind(i64::from(n));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(Self::usage_row).collect()
            }

            async fn append_audit(&self, event: &AuditEvent) -> Result<()> {
                let mut conn = self.pool.acquire().await?;
                Self::insert_audit(&mut conn, event).await
            }

            async fn query_audit(&self, q: &AuditQuery) -> Result<Page<AuditEvent>> {
                let limit = q.page.page_size()?;
                let after = q.page.cursor_uuid()?;
                check_filter_text(&[
                    ("actor", q.actor.as_deref()),
                    ("resourceKind", q.resource_kind.as_deref()),
                    ("resourceId", q.resource_id.as_deref()),
                ])?;
                let mut qb = sqlx::QueryBuilder::<$Db>::new("SELECT id, doc FROM audit_events WHERE 1 = 1");
                if let Some(f) = q.from {
                    qb.push(" AND at >= ").push_bind(to_micros(f));
                }
                if let Some(t) = q.to {
                    qb.push(" AND at < ").push_bind(to_micros(t));
                }
                if let Some(a) = &q.actor {
                    qb.push(" AND actor = ").push_bind(a.clone());
                }
                if let Some(k) = &q.resource_kind {
                    qb.push(" AND resource_kind = ").push_bind(k.clone());
                }
                if let Some(r) = &q.resource_id {
                    qb.push(" AND resource_id = ").push_bind(r.clone());
                }
                if let Some(a) = after {
                    qb.push(" AND id > ").push_bind(a);
                }
                qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit) + 1);
                let rows = qb.build().fetch_all(&self.pool).await?;
                let mut items = Vec::new();
                let mut last = None;
                for row in rows.iter().take(limit as usize) {
                    last = Some(row.try_get::<Uuid, _>("id")?);
                    items.push(row.try_get::<Json<AuditEvent>, _>("doc")?.0);
                }
                let next_cursor = if rows.len() > limit as usize { last.map(encode_cursor) } else { None };
                Ok(Page { items, next_cursor })
            }

            async fn get_idempotency(&self, subject: &str, scope: &str, key: &str, now: OffsetDateTime) -> Result<Option<IdempotencyRecord>> {
                let row = sqlx::query(
                    "SELECT request_hash, status, body, created_at, expires_at FROM idempotency_keys \
                     WHERE subject = $1 AND scope = $4 AND key = $2 AND expires_at > $3",
                )
                .bind(subject)
                .bind(key)
                .bind(to_micros(now))
                .bind(scope)
                .fetch_optional(&self.pool)
                .await?;
                let Some(r) = row else { return Ok(None) };
                let status: i32 = r.try_get("status")?;
                Ok(Some(IdempotencyRecord {
                    subject: subject.to_string(),
                    scope: scope.to_string(),
                    key: key.to_string(),
                    request_hash: r.try_get("request_hash")?,
                    status: u16::try_from(status).map_err(|_| StoreError::Internal(format!("bad stored status {status}")))?,
                    body: r.try_get("body")?,
                    created_at: from_micros(r.try_get("created_at")?),
                    expires_at: from_micros(r.try_get("expires_at")?),
                }))
            }

            async fn put_idempotency(&self, record: &IdempotencyRecord) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                Self::insert_idempotency(&mut *tx, record).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn purge_idempotency(&self, now: OffsetDateTime) -> Result<u64> {
                let res = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
                    .bind(to_micros(now))
                    .execute(&self.pool)
                    .await?;
                Ok(res.rows_affected())
            }

            async fn record_credential(&self, c: &IssuedCredential, opts: &WriteOptions<'_>) -> Result<()> {
                check_filter_text(&[("subject", Some(&c.subject)), ("issuedBy", Some(&c.issued_by))])?;
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO issued_credentials (jti, tenant_id, project_id, cluster_id, subject, role, mode, issued_by, \
                     issued_at, expires_at, revoked_at, revoked_by, revoked_reason, derived_from) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(c.jti)
                .bind(c.tenant_id.0)
                .bind(c.project_id.map(|p| p.0))
                .bind(c.cluster_id.0)
                .bind(&c.subject)
                .bind(c.role.as_str())
                .bind(c.mode.as_str())
                .bind(&c.issued_by)
                .bind(to_micros(c.issued_at))
                .bind(to_micros(c.expires_at))
                .bind(c.revoked_at.map(to_micros))
                .bind(&c.revoked_by)
                .bind(&c.revoked_reason)
                .bind(derived_from_json(c)?)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!("a credential with jti {} already exists", c.jti)))?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_credential(&self, jti: Uuid) -> Result<IssuedCredential> {
                let row = sqlx::query("SELECT * FROM issued_credentials WHERE jti = $1")
                    .bind(jti)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(r) => Self::credential_of(&r),
                    None => Err(StoreError::NotFound { kind: "credential", id: jti.to_string() }),
                }
            }

            async fn list_credentials(&self, tenant: TenantId, q: &CredentialQuery) -> Result<Page<IssuedCredential>> {
                let limit = q.page.page_size()?;
                let after = q.page.cursor_uuid()?;
                check_filter_text(&[("subject", q.subject.as_deref())])?;
                let mut qb = sqlx::QueryBuilder::<$Db>::new("SELECT * FROM issued_credentials WHERE tenant_id = ");
                qb.push_bind(tenant.0);
                if let Some(s) = &q.subject {
                    qb.push(" AND subject = ").push_bind(s.clone());
                }
                if let Some(a) = after {
                    qb.push(" AND jti > ").push_bind(a);
                }
                qb.push(" ORDER BY jti LIMIT ").push_bind(i64::from(limit) + 1);
                let rows = qb.build().fetch_all(&self.pool).await?;
                let mut items = Vec::with_capacity(rows.len().min(limit as usize));
                for row in rows.iter().take(limit as usize) {
                    items.push(Self::credential_of(row)?);
                }
                let next_cursor = if rows.len() > limit as usize { items.last().map(|c| encode_cursor(c.jti)) } else { None };
                Ok(Page { items, next_cursor })
            }

            async fn revoke_credential(&self, jti: Uuid, by: &str, at: OffsetDateTime, opts: &WriteOptions<'_>) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                let exists = sqlx::query("SELECT revoked_at FROM issued_credentials WHERE jti = $1")
                    .bind(jti)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = exists else {
                    return Err(StoreError::NotFound { kind: "credential", id: jti.to_string() });
                };
                if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
                    return Ok(false);
                }
                sqlx::query("UPDATE issued_credentials SET revoked_at = $1, revoked_by = $2 WHERE jti = $3 AND revoked_at IS NULL")
                    .bind(to_micros(at))
                    .bind(by)
                    .bind(jti)
                    .execute(&mut *tx)
                    .await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn revoke_subject(&self, tenant: TenantId, subject: &str, by: &str, by_platform: bool, at: OffsetDateTime, opts: &WriteOptions<'_>) -> Result<u64> {
                check_filter_text(&[("subject", Some(subject)), ("revokedBy", Some(by))])?;
                let mut tx = self.pool.begin().await?;
                Self::lock_tenant_for_revocation(&mut *tx, tenant).await?;
                // A revocation without a platform role never replaces one made by a
                // platform role (it would make it liftable by tenant owners).
                sqlx::query(
                    "INSERT INTO revoked_subjects (tenant_id, subject, revoked_at, revoked_by, revoked_by_platform) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (tenant_id, subject) DO UPDATE SET revoked_at = excluded.revoked_at, revoked_by = excluded.revoked_by, \
                     revoked_by_platform = excluded.revoked_by_platform \
                     WHERE excluded.revoked_by_platform OR NOT revoked_subjects.revoked_by_platform",
                )
                .bind(tenant.0)
                .bind(subject)
                .bind(to_micros(at))
                .bind(by)
                .bind(by_platform)
                .execute(&mut *tx)
                .await?;
                let n = Self::mark_revoked(&mut *tx, tenant, Some(subject), by, at).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn revoke_tenant_credentials(&self, tenant: TenantId, by: &str, at: OffsetDateTime, opts: &WriteOptions<'_>) -> Result<u64> {
                let mut tx = self.pool.begin().await?;
                Self::lock_tenant_for_revocation(&mut *tx, tenant).await?;
                let n = Self::mark_revoked(&mut *tx, tenant, None, by, at).await?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn subject_revocation(&self, tenant: TenantId, subject: &str) -> Result<Option<SubjectRevocation>> {
                check_filter_text(&[("subject", Some(subject))])?;
                let row = sqlx::query(
                    "SELECT revoked_at, revoked_by, revoked_by_platform FROM revoked_subjects WHERE tenant_id = $1 AND subject = $2",
                )
                .bind(tenant.0)
                .bind(subject)
                .fetch_optional(&self.pool)
                .await?;
                let Some(r) = row else { return Ok(None) };
                Ok(Some(SubjectRevocation {
                    tenant_id: tenant,
                    subject: subject.to_string(),
                    revoked_at: from_micros(r.try_get("revoked_at")?),
                    revoked_by: r.try_get("revoked_by")?,
                    revoked_by_platform: r.try_get("revoked_by_platform")?,
                }))
            }

            async fn record_credentials(&self, items: &[(IssuedCredential, AuditEvent)]) -> Result<Vec<CredentialOutcome>> {
                if items.is_empty() {
                    return Ok(Vec::new());
                }
                for (c, _) in items {
                    check_filter_text(&[("subject", Some(&c.subject)), ("issuedBy", Some(&c.issued_by))])?;
                }
                self.record_credential_batch(items).await
            }

            async fn list_subject_revocations(&self, tenant: TenantId, params: &ListParams) -> Result<Page<SubjectRevocation>> {
                let limit = params.page_size()?;
                let after = params.cursor_text()?;
                let mut qb = sqlx::QueryBuilder::<$Db>::new(
                    "SELECT subject, revoked_at, revoked_by, revoked_by_platform FROM revoked_subjects WHERE tenant_id = ",
                );
                qb.push_bind(tenant.0);
                if let Some(a) = after {
                    qb.push(" AND subject > ").push_bind(a);
                }
                qb.push(" ORDER BY subject LIMIT ").push_bind(i64::from(limit) + 1);
                let rows = qb.build().fetch_all(&self.pool).await?;
                let mut items = Vec::new();
                for r in rows.iter().take(limit as usize) {
                    items.push(SubjectRevocation {
                        tenant_id: tenant,
                        subject: r.try_get("subject")?,
                        revoked_at: from_micros(r.try_get("revoked_at")?),
                        revoked_by: r.try_get("revoked_by")?,
                        revoked_by_platform: r.try_get("revoked_by_platform")?,
                    });
                }
                let next_cursor = if rows.len() > limit as usize { items.last().map(|s| encode_cursor(&s.subject)) } else { None };
                Ok(Page { items, next_cursor })
            }

            async fn lift_subject_revocation(&self, tenant: TenantId, subject: &str, by_platform: bool, opts: &WriteOptions<'_>) -> Result<LiftOutcome> {
                check_filter_text(&[("subject", Some(subject))])?;
                let mut tx = self.pool.begin().await?;
                let res = sqlx::query(
                    "DELETE FROM revoked_subjects WHERE tenant_id = $1 AND subject = $2 AND (NOT revoked_by_platform OR $3)",
                )
                .bind(tenant.0)
                .bind(subject)
                .bind(by_platform)
                .execute(&mut *tx)
                .await?;
                if res.rows_affected() == 0 {
                    // Either not revoked, or revoked by a platform role and kept.
                    let kept = sqlx::query("SELECT revoked_at, revoked_by FROM revoked_subjects WHERE tenant_id = $1 AND subject = $2")
                        .bind(tenant.0)
                        .bind(subject)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return Ok(match kept {
                        Some(r) => LiftOutcome::PlatformRevocation(SubjectRevocation {
                            tenant_id: tenant,
                            subject: subject.to_string(),
                            revoked_at: from_micros(r.try_get("revoked_at")?),
                            revoked_by: r.try_get("revoked_by")?,
                            revoked_by_platform: true,
                        }),
                        None => LiftOutcome::NotRevoked,
                    });
                }
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(LiftOutcome::Lifted)
            }

            async fn create_api_key(&self, k: &ApiKey, opts: &WriteOptions<'_>) -> Result<()> {
                check_filter_text(&[("name", Some(&k.name)), ("createdBy", Some(&k.created_by))])?;
                if k.description.contains('\0') {
                    return Err(StoreError::Validation(ValidationError::single("description", "must not contain NUL characters")));
                }
                let mut tx = self.pool.begin().await?;
                let tenant = sqlx::query("SELECT cluster_id FROM tenants WHERE id = $1")
                    .bind(k.tenant_id.0)
                    .fetch_optional(&mut *tx)
                    .await?;
                match tenant {
                    Some(r) if r.try_get::<Uuid, _>("cluster_id")? == k.cluster_id.0 => {}
                    _ => return Err(StoreError::NotFound { kind: "tenant", id: k.tenant_id.to_string() }),
                }
                if let Some(p) = k.project_id {
                    let project = sqlx::query("SELECT tenant_id FROM projects WHERE id = $1")
                        .bind(p.0)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match project {
                        Some(r) if r.try_get::<Uuid, _>("tenant_id")? == k.tenant_id.0 => {}
                        _ => return Err(StoreError::NotFound { kind: "project", id: p.to_string() }),
                    }
                }
                sqlx::query(
                    "INSERT INTO api_keys (id, tenant_id, project_id, name, description, role, secret_hash, created_by, \
                     created_at, expires_at, last_used_at, revoked_at, revoked_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(k.id)
                .bind(k.tenant_id.0)
                .bind(k.project_id.map(|p| p.0))
                .bind(&k.name)
                .bind(&k.description)
                .bind(k.role.as_str())
                .bind(k.secret_hash.to_vec())
                .bind(&k.created_by)
                .bind(to_micros(k.created_at))
                .bind(to_micros(k.expires_at))
                .bind(k.last_used_at.map(to_micros))
                .bind(k.revoked_at.map(to_micros))
                .bind(&k.revoked_by)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique(e.into(), || format!(
                    "tenant {} already has an API key named {:?} (revoke it first, or choose another name)",
                    k.tenant_id, k.name
                )))?;
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_api_key(&self, id: Uuid) -> Result<ApiKey> {
                let row = sqlx::query(
                    "SELECT k.*, t.cluster_id FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(r) => Self::api_key_of(&r),
                    None => Err(StoreError::NotFound { kind: "apiKey", id: id.to_string() }),
                }
            }

            async fn list_api_keys(&self, tenant: TenantId, q: &ApiKeyQuery) -> Result<Page<ApiKey>> {
                let limit = q.page.page_size()?;
                let after = q.page.cursor_uuid()?;
                if let Some(projects) = &q.projects {
                    if projects.len() > MAX_API_KEY_PROJECT_FILTER {
                        return Err(StoreError::Validation(ValidationError::single(
                            "projects",
                            format!("at most {MAX_API_KEY_PROJECT_FILTER} projects (got {})", projects.len()),
                        )));
                    }
                    if projects.is_empty() {
                        return Ok(Page { items: Vec::new(), next_cursor: None });
                    }
                }
                let mut qb = sqlx::QueryBuilder::<$Db>::new(
                    "SELECT k.*, t.cluster_id FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.tenant_id = ",
                );
                qb.push_bind(tenant.0);
                if let Some(projects) = &q.projects {
                    qb.push(" AND k.project_id IN (");
                    let mut list = qb.separated(", ");
                    for p in projects {
                        list.push_bind(p.0);
                    }
                    qb.push(")");
                }
                if let Some(a) = after {
                    qb.push(" AND k.id > ").push_bind(a);
                }
                qb.push(" ORDER BY k.id LIMIT ").push_bind(i64::from(limit) + 1);
                let rows = qb.build().fetch_all(&self.pool).await?;
                let mut items = Vec::with_capacity(rows.len().min(limit as usize));
                for row in rows.iter().take(limit as usize) {
                    items.push(Self::api_key_of(row)?);
                }
                let next_cursor = if rows.len() > limit as usize { items.last().map(|k| encode_cursor(k.id)) } else { None };
                Ok(Page { items, next_cursor })
            }

            async fn revoke_api_key(&self, id: Uuid, by: &str, at: OffsetDateTime, opts: &WriteOptions<'_>) -> Result<bool> {
                check_filter_text(&[("revokedBy", Some(by))])?;
                let mut tx = self.pool.begin().await?;
                let res = sqlx::query("UPDATE api_keys SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL")
                    .bind(to_micros(at))
                    .bind(by)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if res.rows_affected() == 0 {
                    let exists = sqlx::query("SELECT id FROM api_keys WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return match exists {
                        Some(_) => Ok(false),
                        None => Err(StoreError::NotFound { kind: "apiKey", id: id.to_string() }),
                    };
                }
                Self::apply_opts(&mut *tx, opts).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn touch_api_key(&self, id: Uuid, at: OffsetDateTime) -> Result<()> {
                let at = to_micros(at);
                sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }

        impl $Store {
            /// Postgres: takes the tenant's issuance lock (a transaction-scoped advisory
            /// lock) exclusively; issuance batches hold it in share mode
            /// ([`Store::record_credentials`]), so a revocation or delete and an issuance of
            /// the same tenant never interleave. Advisory locks live in shared memory: unlike
            /// a row lock they write nothing, so concurrent issuances of one hot tenant cost
            /// no WAL and no MultiXact. SQLite transactions never interleave anyway.
            async fn lock_tenant_for_revocation(
                conn: &mut <$Db as sqlx::Database>::Connection,
                tenant: TenantId,
            ) -> Result<()> {
                if $backend == "postgres" {
                    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                        .bind(ISSUANCE_LOCK_CLASS)
                        .bind(issuance_lock_key(tenant.0))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            fn api_key_of(r: &<$Db as sqlx::Database>::Row) -> Result<ApiKey> {
                let hash: Vec<u8> = r.try_get("secret_hash")?;
                let secret_hash: [u8; 32] = hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Internal(format!("a stored API key hash has {} bytes, not 32", hash.len())))?;
                Ok(ApiKey {
                    id: r.try_get("id")?,
                    tenant_id: TenantId(r.try_get("tenant_id")?),
                    cluster_id: ClusterId(r.try_get("cluster_id")?),
                    project_id: r.try_get::<Option<Uuid>, _>("project_id")?.map(ProjectId),
                    name: r.try_get("name")?,
                    description: r.try_get("description")?,
                    role: stored_role(r.try_get("role")?)?,
                    secret_hash,
                    created_by: r.try_get("created_by")?,
                    created_at: from_micros(r.try_get("created_at")?),
                    expires_at: from_micros(r.try_get("expires_at")?),
                    last_used_at: r.try_get::<Option<i64>, _>("last_used_at")?.map(from_micros),
                    revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(from_micros),
                    revoked_by: r.try_get("revoked_by")?,
                })
            }

            fn credential_of(r: &<$Db as sqlx::Database>::Row) -> Result<IssuedCredential> {
                let role: String = r.try_get("role")?;
                let mode: String = r.try_get("mode")?;
                Ok(IssuedCredential {
                    jti: r.try_get("jti")?,
                    tenant_id: TenantId(r.try_get("tenant_id")?),
                    project_id: r.try_get::<Option<Uuid>, _>("project_id")?.map(ProjectId),
                    cluster_id: ClusterId(r.try_get("cluster_id")?),
                    subject: r.try_get("subject")?,
                    role: serde_json::from_value(serde_json::Value::String(role.clone()))
                        .map_err(|_| StoreError::Internal(format!("unknown stored credential role {role:?}")))?,
                    mode: CredentialMode::parse(&mode)
                        .ok_or_else(|| StoreError::Internal(format!("unknown stored credential mode {mode:?}")))?,
                    issued_by: r.try_get("issued_by")?,
                    issued_at: from_micros(r.try_get("issued_at")?),
                    expires_at: from_micros(r.try_get("expires_at")?),
                    revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(from_micros),
                    revoked_by: r.try_get("revoked_by")?,
                    revoked_reason: r.try_get("revoked_reason")?,
                    derived_from: match r.try_get::<Option<String>, _>("derived_from")? {
                        Some(text) => Some(serde_json::from_str(&text)?),
                        None => None,
                    },
                })
            }

            /// Revokes, on `conn`, the tenant's (with `project`: that project's) active
            /// credentials on derived rights ([`IssuedCredential::derived_from`]) that no
            /// membership of their keys entitles any more, or all of them with `all` (a
            /// deleted project: its memberships are gone, but the tenant's owners' would
            /// still entitle). Returns how many.
            async fn revoke_unentitled(
                conn: &mut <$Db as sqlx::Database>::Connection,
                tenant: TenantId,
                project: Option<ProjectId>,
                all: bool,
                by: &str,
                reason: &str,
            ) -> Result<u64> {
                let now = now_micros();
                let mut qb = sqlx::QueryBuilder::<$Db>::new("UPDATE issued_credentials SET revoked_at = ");
                qb.push_bind(now);
                qb.push(", revoked_by = ").push_bind(by.to_string());
                qb.push(", revoked_reason = ").push_bind(reason.to_string());
                qb.push(" WHERE tenant_id = ").push_bind(tenant.0);
                qb.push(" AND derived_from IS NOT NULL AND revoked_at IS NULL AND expires_at > ").push_bind(now);
                if let Some(p) = project {
                    qb.push(" AND project_id = ").push_bind(p.0);
                }
                if !all {
                    qb.push(" AND NOT ").push(entitled_sql($backend, "issued_credentials"));
                }
                let n = qb.build().execute(&mut *conn).await?.rows_affected();
                if n > 0 {
                    tracing::info!(%tenant, project = ?project, revoked = n, by, reason, "credentials on derived rights revoked");
                }
                Ok(n)
            }

            async fn mark_revoked(
                conn: &mut <$Db as sqlx::Database>::Connection,
                tenant: TenantId,
                subject: Option<&str>,
                by: &str,
                at: OffsetDateTime,
            ) -> Result<u64> {
                let mut qb = sqlx::QueryBuilder::<$Db>::new("UPDATE issued_credentials SET revoked_at = ");
                qb.push_bind(to_micros(at));
                qb.push(", revoked_by = ").push_bind(by.to_string());
                qb.push(" WHERE tenant_id = ").push_bind(tenant.0);
                qb.push(" AND revoked_at IS NULL AND expires_at > ").push_bind(to_micros(at));
                if let Some(s) = subject {
                    qb.push(" AND subject = ").push_bind(s.to_string());
                }
                Ok(qb.build().execute(&mut *conn).await?.rows_affected())
            }

            /// The sums appended by [`push_usage_sums`], joined and saturated at `i64::MAX`.
            fn usage_sums_row(row: &<$Db as sqlx::Database>::Row) -> Result<UsageSums> {
                let sum = |col: &str| -> Result<i64> {
                    let hi: i64 = row.try_get(format!("{col}_hi").as_str())?;
                    let lo: i64 = row.try_get(format!("{col}_lo").as_str())?;
                    let total = (i128::from(hi) << 32) + i128::from(lo);
                    Ok(i64::try_from(total).unwrap_or(i64::MAX))
                };
                Ok(UsageSums {
                    records: row.try_get("n")?,
                    cpu_millicore_hours: sum("cpu_millicores")?,
                    memory_byte_hours: sum("memory_bytes")?,
                    storage_byte_hours: sum("storage_bytes")?,
                    load_balancer_hours: sum("load_balancers")?,
                    pod_hours: sum("pods")?,
                })
            }

            /// A `usage_hours` row as a record.
            fn usage_row(r: &<$Db as sqlx::Database>::Row) -> Result<UsageRecord> {
                let project: Uuid = r.try_get("project_key")?;
                let detail: Option<Json<UsageDetail>> = r.try_get("detail")?;
                let detail = detail.map(|d| d.0).unwrap_or_default();
                Ok(UsageRecord {
                    cluster_id: ClusterId(r.try_get("cluster_id")?),
                    tenant_id: TenantId(r.try_get("tenant_id")?),
                    project_id: if project.is_nil() { None } else { Some(ProjectId(project)) },
                    hour: from_micros(r.try_get("hour")?),
                    cpu_millicores: r.try_get("cpu_millicores")?,
                    memory_bytes: r.try_get("memory_bytes")?,
                    storage_bytes: r.try_get("storage_bytes")?,
                    load_balancers: r.try_get("load_balancers")?,
                    namespaces: r.try_get("namespaces")?,
                    pods: r.try_get("pods")?,
                    apps: r.try_get("apps")?,
                    cpu_limit_millicores: r.try_get("cpu_limit_millicores")?,
                    memory_limit_bytes: r.try_get("memory_limit_bytes")?,
                    storage_by_class: detail.storage_by_class,
                    quotas: detail.quotas,
                    cluster_capacity: None,
                })
            }

            /// Records `t`'s plan from `since` on, unless it is the plan last recorded.
            async fn record_plan(
                conn: &mut <$Db as sqlx::Database>::Connection,
                t: &Tenant,
                since: OffsetDateTime,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO tenant_plans (tenant_id, since, plan) SELECT $1, $2, $3 \
                     WHERE COALESCE((SELECT plan FROM tenant_plans WHERE tenant_id = $1 ORDER BY since DESC LIMIT 1), '') <> $3 \
                     ON CONFLICT (tenant_id, since) DO UPDATE SET plan = excluded.plan",
                )
                .bind(t.id.0)
                .bind(to_micros(since))
                .bind(&t.plan)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// The conditions of a usage query, after `… WHERE tenant_id = `.
            fn push_usage_filter(qb: &mut sqlx::QueryBuilder<'_, $Db>, q: &UsageQuery) {
                qb.push_bind(q.tenant.0);
                qb.push(" AND hour >= ").push_bind(to_micros(q.from));
                qb.push(" AND hour < ").push_bind(to_micros(q.to));
                if let Some(c) = q.cluster {
                    qb.push(" AND cluster_id = ").push_bind(c.0);
                }
                if !q.all_projects {
                    qb.push(" AND project_key = ").push_bind(q.project.map(|p| p.0).unwrap_or(Uuid::nil()));
                }
            }

            /// The app part of [`Store::update_app`]: bumps the cluster revision, replaces
            /// the app at `expected` and appends the new revision, on `conn`.
            async fn write_app(
                conn: &mut <$Db as sqlx::Database>::Connection,
                a: &App,
                expected: i64,
                new_revision: Option<&AppRevision>,
            ) -> Result<()> {
                Self::bump(&mut *conn, a.cluster_id, ObjectKind::App, a.id.0, false).await?;
                let res = sqlx::query(
                    "UPDATE apps SET name = $1, doc = $2, version = $3, updated_at = $4 WHERE id = $5 AND version = $6 AND project_id = $7",
                )
                .bind(&a.name)
                .bind(Json(a))
                .bind(a.version)
                .bind(to_micros(a.updated_at))
                .bind(a.id.0)
                .bind(expected)
                .bind(a.project_id.0)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique(e.into(), || format!("an app named {:?} already exists in project {}", a.name, a.project_id)))?;
                if res.rows_affected() == 0 {
                    return Err(Self::version_error(&mut *conn, "apps", "app", a.id.0, expected).await);
                }
                if let Some(r) = new_revision {
                    Self::insert_revision(&mut *conn, a.id, r).await?;
                }
                Ok(())
            }

            /// Inserts a workflow run on `conn` (its app must exist).
            async fn insert_run(
                conn: &mut <$Db as sqlx::Database>::Connection,
                run: &WorkflowRun,
            ) -> Result<()> {
                sqlx::query("INSERT INTO workflow_runs (id, app_id, doc, version, created_at, status) VALUES ($1, $2, $3, 1, $4, $5)")
                    .bind(run.id.0)
                    .bind(run.app_id.0)
                    .bind(Json(run))
                    .bind(to_micros(run.started_at))
                    .bind(run_status(run.status))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| {
                        let taken = matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation());
                        match StoreError::from(e) {
                            StoreError::Conflict(_) if taken => {
                                StoreError::Conflict(format!("a workflow run with id {} already exists", run.id))
                            }
                            StoreError::Conflict(_) => StoreError::NotFound { kind: "app", id: run.app_id.to_string() },
                            other => other,
                        }
                    })?;
                Ok(())
            }

            async fn insert_revision(
                conn: &mut <$Db as sqlx::Database>::Connection,
                app: AppId,
                r: &AppRevision,
            ) -> Result<()> {
                sqlx::query("INSERT INTO app_revisions (app_id, number, doc, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(app.0)
                    .bind(r.number)
                    .bind(Json(r))
                    .bind(to_micros(r.created_at))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| unique(e.into(), || format!("revision {} of app {app} already exists", r.number)))?;
                Ok(())
            }
        }
    };
}

/// The Postgres backend (production).
#[derive(Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
    keyring: Arc<RwLock<Arc<Keyring>>>,
    cache: Arc<RowCache>,
}

/// The SQLite backend (embedded default; one writer connection, WAL journal).
#[derive(Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    keyring: Arc<RwLock<Arc<Keyring>>>,
    cache: Arc<RowCache>,
}

sql_backend!(PgStore, sqlx::Postgres, "postgres", PG_MIGRATOR);
sql_backend!(SqliteStore, sqlx::Sqlite, "sqlite", SQLITE_MIGRATOR);

impl PgStore {
    /// Connects with a pool of `max_connections` (default from
    /// `KUBENOVA_DB_MAX_CONNECTIONS`, else 16) and applies migrations.
    pub async fn connect(url: &str, keyring: Keyring) -> Result<Self> {
        let opts = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Validation(ValidationError::single(
                "DATABASE_URL",
                format!("not a Postgres URL: {e}"),
            ))
        })?;
        Self::connect_with(opts, default_pool_size(), keyring).await
    }

    /// Connects with explicit options (e.g. a `search_path` per test) and applies migrations.
    pub async fn connect_with(
        opts: sqlx::postgres::PgConnectOptions,
        max_connections: u32,
        keyring: Keyring,
    ) -> Result<Self> {
        // No ping before every checkout (it doubles the round trips of a point read);
        // idle and old connections are recycled instead, and a connection that broke while
        // idle fails its one query with KN-503 rather than being replaced silently.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .idle_timeout(Some(Duration::from_secs(60)))
            .max_lifetime(Some(Duration::from_secs(30 * 60)))
            .connect_with(opts)
            .await?;
        let store = Self::from_pool(pool, keyring);
        store.migrate().await?;
        Ok(store)
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the SQLite database at `url`, applies migrations and
    /// takes the file for this process.
    ///
    /// The database is held **exclusively** (`locking_mode=EXCLUSIVE`) for as long as the
    /// store is open: every write then goes through this store, so its record cache
    /// ([`crate::cache`]) is correct without notifications, and is enabled at once. A
    /// second process that opens the same file (another manager, or a `kubenova-manager`
    /// command while one serves) gets [`StoreError::Unavailable`] saying the file is in
    /// use, at once when the kernel tells which process holds the file
    /// ([`crate::sqlite_holder`]), else after the busy timeout; several replicas need
    /// Postgres.
    pub async fn connect(url: &str, keyring: Keyring) -> Result<Self> {
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Validation(ValidationError::single(
                    "DATABASE_URL",
                    format!("not an SQLite URL: {e}"),
                ))
            })?
            .create_if_missing(true)
            // Before the journal mode: in exclusive mode, WAL keeps its index in this
            // process's memory and no other process can attach.
            .locking_mode(sqlx::sqlite::SqliteLockingMode::Exclusive)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            // FULL: the WAL is synced at every commit, so an acknowledged write survives
            // a power loss or an OS crash too (NORMAL only survives a process crash).
            // Issuances are group-committed, so this is one sync per batch.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .foreign_keys(true)
            // Long enough for a predecessor in this process to finish closing the file.
            .busy_timeout(Duration::from_secs(5));
        let path = opts.get_filename().display().to_string();
        let in_use_by = |holder: &str| {
            StoreError::Unavailable(format!(
                "the SQLite database {path} is in use by {holder}: \
                 an SQLite database is opened by one process at a time; stop that process first, \
                 or use Postgres (DATABASE_URL=postgres://...) to run several"
            ))
        };
        // Another process holds the file: say which, at once (without waiting for the
        // busy timeout, meant for a store of this process that is still closing it).
        if let Some(holder) = crate::holder_of_file(opts.get_filename()) {
            return Err(in_use_by(&holder.to_string()));
        }
        let in_use = |e: StoreError| match &e {
            StoreError::Unavailable(m) | StoreError::Internal(m)
                if m.contains("database is locked") =>
            {
                in_use_by("another process (a running kubenova-manager?)")
            }
            _ => e,
        };
        // One connection: SQLite has a single writer anyway, and this rules out
        // SQLITE_BUSY between our own transactions. No ping before each checkout: the
        // connection is in-process (nothing between us and the file can drop it), and a
        // ping is one more hop to sqlx's connection thread and back per query.
        // The connection is kept (no idle or age recycling), so the lock is never let go
        // while the store is open; should sqlx ever have to reopen it (after an I/O
        // error), the cache is emptied, as another process might have written meanwhile.
        let cache = RowCache::new(ROW_CACHE_CAPACITY);
        let on_connect = Arc::clone(&cache);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .after_connect(move |_, _| {
                on_connect.clear();
                Box::pin(async { Ok(()) })
            })
            .connect_with(opts)
            .await
            .map_err(|e| in_use(e.into()))?;
        let store = Self::with_cache(pool, keyring, cache);
        // Take the exclusive lock now (held until the connection closes), even when no
        // migration had to write; only then may the cache answer.
        let ready = async {
            store.migrate().await?;
            sqlx::raw_sql("BEGIN EXCLUSIVE; COMMIT;")
                .execute(&store.pool)
                .await?;
            Ok::<_, StoreError>(())
        };
        if let Err(e) = ready.await {
            // Let go of the file before answering, so a retry does not find it held.
            Store::close(&store).await;
            return Err(in_use(e));
        }
        store.cache.enable();
        Ok(store)
    }
}

/// The Postgres statement of [`PgStore::record_credential_batch`]: checks every issuance of
/// the batch (tenant and project exist, subject not revoked) and writes the credential row
/// and audit event of each one that passes, in one statement with one plan (prepared once
/// per connection: the batch travels as arrays, so the text does not depend on its size).
/// Answers one row per input, in input order.
static RECORD_CREDENTIALS_PG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "\
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::text[],
                         $13::uuid[], $14::int8[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[],
                         $20::text[], $21::text[])
        WITH ORDINALITY AS i(jti, tenant_id, project_id, cluster_id, subject, role, mode,
                             issued_by, issued_at, expires_at, revoked_at, revoked_by,
                             audit_id, audit_at, actor, action, resource_kind, resource_id, outcome,
                             doc, derived_from, n)
), c AS (
    SELECT i.*, t.id IS NULL AS tenant_gone,
           i.derived_from IS NOT NULL AND NOT {entitled} AS not_entitled,
           i.project_id IS NOT NULL AND p.id IS NULL AS project_gone,
           r.revoked_at AS subject_revoked_at, r.revoked_by AS subject_revoked_by,
           r.revoked_by_platform AS subject_revoked_by_platform
    FROM i
    LEFT JOIN tenants t ON t.id = i.tenant_id
    LEFT JOIN projects p ON p.id = i.project_id AND p.tenant_id = i.tenant_id
    LEFT JOIN revoked_subjects r ON r.tenant_id = i.tenant_id AND r.subject = i.subject
), ok AS (
    SELECT * FROM c WHERE NOT tenant_gone AND NOT project_gone AND subject_revoked_at IS NULL
                      AND NOT not_entitled
), creds AS (
    INSERT INTO issued_credentials (jti, tenant_id, project_id, cluster_id, subject, role, mode,
                                    issued_by, issued_at, expires_at, revoked_at, revoked_by,
                                    derived_from)
    SELECT jti, tenant_id, project_id, cluster_id, subject, role, mode,
           issued_by, issued_at, expires_at, revoked_at, revoked_by, derived_from FROM ok
), audits AS (
    INSERT INTO audit_events (id, at, actor, action, resource_kind, resource_id, outcome, doc)
    SELECT audit_id, audit_at, actor, action, resource_kind, resource_id, outcome, doc::json FROM ok
)
SELECT tenant_gone, project_gone, subject_revoked_at, subject_revoked_by, subject_revoked_by_platform,
       not_entitled FROM c ORDER BY n",
        entitled = entitled_sql("postgres", "i")
    )
});

impl PgStore {
    /// [`Store::record_credentials`] on Postgres in three round trips: `BEGIN` with the
    /// tenants' issuance locks (share mode, one simple query), the one statement
    /// [`RECORD_CREDENTIALS_PG`] that checks and writes, and `COMMIT`.
    ///
    /// The locks are taken by a statement of their own, before the checking statement:
    /// a statement reads the snapshot taken when it starts, so a revocation that commits
    /// while the locks are awaited is seen only by a later statement. A revocation or
    /// tenant delete takes its tenant's lock exclusively, so it commits either before the
    /// checks read or after this commit.
    async fn record_credential_batch(
        &self,
        items: &[(IssuedCredential, AuditEvent)],
    ) -> Result<Vec<CredentialOutcome>> {
        let mut keys: Vec<i32> = items
            .iter()
            .map(|(c, _)| issuance_lock_key(c.tenant_id.0))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        // Only integers are formatted into this text (the lock class and keys).
        let mut begin = String::from("BEGIN; SELECT ");
        for (n, k) in keys.iter().enumerate() {
            if n > 0 {
                begin.push_str(", ");
            }
            begin.push_str(&format!(
                "pg_advisory_xact_lock_shared({ISSUANCE_LOCK_CLASS}, {k})"
            ));
        }
        let mut tx = self.pool.begin_with(begin).await?;
        let mut docs = Vec::with_capacity(items.len());
        let mut outcomes = Vec::with_capacity(items.len());
        for (_, ev) in items {
            docs.push(serde_json::to_string(ev)?);
            outcomes.push(
                serde_json::to_value(ev.outcome)?
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        let col = |f: fn(&IssuedCredential, &AuditEvent) -> Option<Uuid>| -> Vec<Option<Uuid>> {
            items.iter().map(|(c, e)| f(c, e)).collect()
        };
        let text = |f: fn(&IssuedCredential, &AuditEvent) -> String| -> Vec<String> {
            items.iter().map(|(c, e)| f(c, e)).collect()
        };
        let mut derived = Vec::with_capacity(items.len());
        for (c, _) in items {
            derived.push(derived_from_json(c)?);
        }
        let rows = sqlx::query(RECORD_CREDENTIALS_PG.as_str())
            .bind(col(|c, _| Some(c.jti)))
            .bind(col(|c, _| Some(c.tenant_id.0)))
            .bind(col(|c, _| c.project_id.map(|p| p.0)))
            .bind(col(|c, _| Some(c.cluster_id.0)))
            .bind(text(|c, _| c.subject.clone()))
            .bind(text(|c, _| c.role.as_str().to_string()))
            .bind(text(|c, _| c.mode.as_str().to_string()))
            .bind(text(|c, _| c.issued_by.clone()))
            .bind(
                items
                    .iter()
                    .map(|(c, _)| to_micros(c.issued_at))
                    .collect::<Vec<i64>>(),
            )
            .bind(
                items
                    .iter()
                    .map(|(c, _)| to_micros(c.expires_at))
                    .collect::<Vec<i64>>(),
            )
            .bind(
                items
                    .iter()
                    .map(|(c, _)| c.revoked_at.map(to_micros))
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(
                items
                    .iter()
                    .map(|(c, _)| c.revoked_by.clone())
                    .collect::<Vec<Option<String>>>(),
            )
            .bind(col(|_, e| Some(e.id.0)))
            .bind(
                items
                    .iter()
                    .map(|(_, e)| to_micros(e.at))
                    .collect::<Vec<i64>>(),
            )
            .bind(text(|_, e| e.actor.clone()))
            .bind(text(|_, e| e.action.clone()))
            .bind(text(|_, e| e.resource_kind.clone()))
            .bind(text(|_, e| e.resource_id.clone()))
            .bind(outcomes)
            .bind(docs)
            .bind(derived)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| {
                unique(e.into(), || {
                    "a credential with one of these jtis already exists".to_string()
                })
            })?;
        if rows.len() != items.len() {
            return Err(StoreError::Internal(format!(
                "the issuance statement answered {} rows for {} issuances",
                rows.len(),
                items.len()
            )));
        }
        let mut answers = Vec::with_capacity(items.len());
        for ((c, _), r) in items.iter().zip(&rows) {
            let outcome = if r.try_get::<bool, _>("tenant_gone")? {
                CredentialOutcome::TenantGone
            } else if r.try_get::<bool, _>("project_gone")? {
                CredentialOutcome::ProjectGone
            } else if let Some(at) = r.try_get::<Option<i64>, _>("subject_revoked_at")? {
                CredentialOutcome::SubjectRevoked(SubjectRevocation {
                    tenant_id: c.tenant_id,
                    subject: c.subject.clone(),
                    revoked_at: from_micros(at),
                    revoked_by: r
                        .try_get::<Option<String>, _>("subject_revoked_by")?
                        .unwrap_or_default(),
                    revoked_by_platform: r
                        .try_get::<Option<bool>, _>("subject_revoked_by_platform")?
                        .unwrap_or(true),
                })
            } else if r.try_get::<bool, _>("not_entitled")? {
                CredentialOutcome::NotEntitled
            } else {
                CredentialOutcome::Recorded
            };
            answers.push(outcome);
        }
        tx.commit().await?;
        Ok(answers)
    }
}

impl SqliteStore {
    /// [`Store::record_credentials`] on SQLite: reads the tenants, projects and
    /// revocations of the batch, then writes the rows of the issuances that pass.
    async fn record_credential_batch(
        &self,
        items: &[(IssuedCredential, AuditEvent)],
    ) -> Result<Vec<CredentialOutcome>> {
        let mut tx = self.pool.begin().await?;
        // The checks run in the transaction that writes; SQLite transactions never
        // interleave (one connection), so a revocation or tenant delete commits
        // either before these reads or after this commit.
        let mut tenant_ids: Vec<Uuid> = items.iter().map(|(c, _)| c.tenant_id.0).collect();
        tenant_ids.sort_unstable();
        tenant_ids.dedup();
        // ... the tenants that still exist ...
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT id FROM tenants WHERE id IN (");
        let mut list = q.separated(", ");
        for id in &tenant_ids {
            list.push_bind(*id);
        }
        q.push(")");
        let live: std::collections::HashSet<Uuid> = q
            .build()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<Uuid, _>("id"))
            .collect::<std::result::Result<_, _>>()?;
        // ... the projects that still exist, with their tenant ...
        let mut project_ids: Vec<Uuid> = items
            .iter()
            .filter_map(|(c, _)| c.project_id.map(|p| p.0))
            .collect();
        project_ids.sort_unstable();
        project_ids.dedup();
        let mut projects: HashMap<Uuid, Uuid> = HashMap::new();
        if !project_ids.is_empty() {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT id, tenant_id FROM projects WHERE id IN (",
            );
            let mut list = q.separated(", ");
            for id in &project_ids {
                list.push_bind(*id);
            }
            q.push(")");
            for r in q.build().persistent(false).fetch_all(&mut *tx).await? {
                projects.insert(r.try_get("id")?, r.try_get("tenant_id")?);
            }
        }
        // ... and the revocations of the batch's (tenant, subject) pairs, read after
        // the lock, so a revocation committed before it is seen.
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT tenant_id, subject, revoked_at, revoked_by, revoked_by_platform FROM revoked_subjects WHERE tenant_id IN (",
        );
        let mut list = q.separated(", ");
        for id in &tenant_ids {
            list.push_bind(*id);
        }
        q.push(") AND subject IN (");
        let mut subjects: Vec<&str> = items.iter().map(|(c, _)| c.subject.as_str()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        let mut list = q.separated(", ");
        for s in &subjects {
            list.push_bind(*s);
        }
        q.push(")");
        let mut revoked: HashMap<(Uuid, String), SubjectRevocation> = HashMap::new();
        for r in q.build().persistent(false).fetch_all(&mut *tx).await? {
            let tenant: Uuid = r.try_get("tenant_id")?;
            let subject: String = r.try_get("subject")?;
            revoked.insert(
                (tenant, subject.clone()),
                SubjectRevocation {
                    tenant_id: TenantId(tenant),
                    subject,
                    revoked_at: from_micros(r.try_get("revoked_at")?),
                    revoked_by: r.try_get("revoked_by")?,
                    revoked_by_platform: r.try_get("revoked_by_platform")?,
                },
            );
        }
        let mut outcomes = Vec::with_capacity(items.len());
        let mut derived = Vec::with_capacity(items.len());
        for (c, _) in items {
            let keys = derived_from_json(c)?;
            let outcome = if !live.contains(&c.tenant_id.0) {
                CredentialOutcome::TenantGone
            } else if c
                .project_id
                .is_some_and(|p| projects.get(&p.0) != Some(&c.tenant_id.0))
            {
                CredentialOutcome::ProjectGone
            } else if let Some(rev) = revoked.get(&(c.tenant_id.0, c.subject.clone())) {
                CredentialOutcome::SubjectRevoked(rev.clone())
            } else if keys.is_some()
                && !Self::entitled(&mut tx, c, keys.as_deref().unwrap_or("[]")).await?
            {
                CredentialOutcome::NotEntitled
            } else {
                CredentialOutcome::Recorded
            };
            outcomes.push(outcome);
            derived.push(keys);
        }
        let items: Vec<(&(IssuedCredential, AuditEvent), Option<String>)> = items
            .iter()
            .zip(&outcomes)
            .zip(derived)
            .filter(|((_, o), _)| **o == CredentialOutcome::Recorded)
            .map(|((item, _), keys)| (item, keys))
            .collect();
        if items.is_empty() {
            tx.commit().await?;
            return Ok(outcomes);
        }
        let mut audit_outcomes = Vec::with_capacity(items.len());
        for ((_, ev), _) in &items {
            audit_outcomes.push(serde_json::to_value(ev.outcome)?);
        }
        let mut creds = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO issued_credentials (jti, tenant_id, project_id, cluster_id, subject, role, mode, issued_by, \
             issued_at, expires_at, revoked_at, revoked_by, derived_from) ",
        );
        creds.push_values(&items, |mut b, ((c, _), keys)| {
            b.push_bind(c.jti)
                .push_bind(c.tenant_id.0)
                .push_bind(c.project_id.map(|p| p.0))
                .push_bind(c.cluster_id.0)
                .push_bind(&c.subject)
                .push_bind(c.role.as_str())
                .push_bind(c.mode.as_str())
                .push_bind(&c.issued_by)
                .push_bind(to_micros(c.issued_at))
                .push_bind(to_micros(c.expires_at))
                .push_bind(c.revoked_at.map(to_micros))
                .push_bind(&c.revoked_by)
                .push_bind(keys.clone());
        });
        creds
            .build()
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                unique(e.into(), || {
                    "a credential with one of these jtis already exists".to_string()
                })
            })?;
        let mut audits = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO audit_events (id, at, actor, action, resource_kind, resource_id, outcome, doc) ",
        );
        audits.push_values(
            items.iter().zip(&audit_outcomes),
            |mut b, (((_, ev), _), outcome)| {
                b.push_bind(ev.id.0)
                    .push_bind(to_micros(ev.at))
                    .push_bind(&ev.actor)
                    .push_bind(&ev.action)
                    .push_bind(&ev.resource_kind)
                    .push_bind(&ev.resource_id)
                    .push_bind(outcome.as_str().unwrap_or_default())
                    .push_bind(Json(ev));
            },
        );
        audits.build().persistent(false).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Whether a membership of one of `keys` (a JSON array) entitles the credential `c`
    /// ([`Membership::entitles`]), read on `conn`.
    async fn entitled(
        conn: &mut sqlx::SqliteConnection,
        c: &IssuedCredential,
        keys: &str,
    ) -> Result<bool> {
        let rows = sqlx::query(
            "SELECT key, cluster_id, tenant_id, project_id, role FROM memberships \
             WHERE tenant_id = $1 AND key IN (SELECT value FROM json_each($2))",
        )
        .bind(c.tenant_id.0)
        .bind(keys)
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            let m = Membership {
                key: r.try_get("key")?,
                cluster: ClusterId(r.try_get("cluster_id")?),
                tenant: TenantId(r.try_get("tenant_id")?),
                project: r.try_get::<Option<Uuid>, _>("project_id")?.map(ProjectId),
                role: stored_role(r.try_get("role")?)?,
            };
            if m.entitles(c.tenant_id, c.project_id, c.role) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn default_pool_size() -> u32 {
    std::env::var("KUBENOVA_DB_MAX_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}
