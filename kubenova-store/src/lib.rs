//! # kubenova-store
//!
//! Persistence for the KubeNova manager: the [`Store`] trait and its Postgres
//! (production) and SQLite (embedded, zero-setup default) backends, each with its own
//! migrations; envelope encryption of secrets at rest ([`crypto`]); usage, audit and
//! idempotency tables; and the per-cluster desired-state revision the operator
//! long-polls on.
//!
//! Records are written whole by the caller (id, `version`, timestamps included), so a
//! response can be serialized before the write and stored, with its audit event and
//! idempotency record, in the same transaction ([`WriteOptions`]). Updates carry the
//! version the caller read; a stale one is [`StoreError::PreconditionFailed`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), kubenova_store::StoreError> {
//! use kubenova_store::{connect, crypto::Keyring, ListParams};
//! let keys = Keyring::load_or_generate(std::path::Path::new("./data"))?;
//! let store = connect("sqlite://kubenova.db", keys).await?;
//! let page = store.list_clusters(&ListParams::default()).await?;
//! println!("{} clusters", page.items.len());
//! # Ok(()) }
//! ```

pub mod cache;
pub mod crypto;
pub mod error;
mod holder;
pub mod notify;
mod sql;
mod types;

pub use error::{Result, StoreError};
pub use holder::{SqliteHolder, holder_of_file, sqlite_file, sqlite_holder};
pub use sql::{PgStore, SqliteStore};
pub use types::*;

use async_trait::async_trait;
use kubenova_api::ids::{AppId, ClusterId, ProjectId, RunId, TenantId};
use kubenova_api::model::{
    App, AppRevision, AuditEvent, Cluster, ObjectStatus, Project, Tenant, UsageRecord, WorkflowRun,
};
use std::sync::Arc;

/// The default database URL: an SQLite file in the working directory, created on first use.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://kubenova.db";

/// Persistence operations of KubeNova. Implemented by [`PgStore`] and [`SqliteStore`];
/// one behavioural test suite runs against both.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The record cache of point reads (see [`cache`]): on Postgres for a listener to
    /// enable and invalidate; on SQLite enabled while the store holds its file. `None`
    /// (the default) when the backend never caches.
    fn row_cache(&self) -> Option<Arc<cache::RowCache>> {
        None
    }

    /// Closes the store's connections and waits until they are closed (for SQLite: until
    /// the database file is let go, so it can be opened again at once). Calls after this
    /// fail. The default does nothing.
    async fn close(&self) {}

    /// Checks connectivity and that every migration is applied.
    async fn ping(&self) -> Result<Health>;

    // ---- clusters -------------------------------------------------------------------
    /// Inserts a cluster and its kubeconfig (encrypted with a fresh data key).
    async fn create_cluster(
        &self,
        cluster: &Cluster,
        kubeconfig: &[u8],
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Reads a cluster.
    async fn get_cluster(&self, id: ClusterId) -> Result<Cluster>;
    /// Reads a cluster from the database, past the record cache ([`cache`]): the
    /// committed record even when this replica has not yet received the invalidation of a
    /// write through another replica. For the agent channel, whose wake-up can arrive
    /// before that invalidation, and for read-modify-write paths.
    async fn get_cluster_uncached(&self, id: ClusterId) -> Result<Cluster>;
    /// Lists clusters by id (creation order).
    async fn list_clusters(&self, params: &ListParams) -> Result<Page<Cluster>>;
    /// Lists the clusters that pass `filter` (name, label selector), by id; paged like
    /// [`Store::list_clusters`], the filter applied in the query.
    ///
    /// ```no_run
    /// # async fn demo(store: &dyn kubenova_store::Store) -> Result<(), kubenova_store::StoreError> {
    /// use kubenova_store::{ListFilter, ListParams};
    /// let filter = ListFilter::parse(None, Some("env=prod,region in (eu,us)"))?;
    /// let page = store.list_clusters_matching(&filter, &ListParams::first(50)).await?;
    /// # Ok(()) }
    /// ```
    async fn list_clusters_matching(
        &self,
        filter: &ListFilter,
        params: &ListParams,
    ) -> Result<Page<Cluster>>;
    /// Replaces a cluster if it is still at `expected_version`; `cluster.version` must be the next one.
    async fn update_cluster(
        &self,
        cluster: &Cluster,
        expected_version: i64,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Records an operator heartbeat at `at` without changing the cluster's version or
    /// `updatedAt`: a heartbeat that changes nothing else must not invalidate the ETag
    /// users hold for `If-Match`. Never moves `lastHeartbeatAt` backwards.
    async fn record_cluster_heartbeat(&self, id: ClusterId, at: time::OffsetDateTime)
    -> Result<()>;
    /// Replaces a cluster like [`Store::update_cluster`] and its stored kubeconfig
    /// (re-encrypted under a fresh data key) in the same transaction, with the audit event:
    /// a stale `expected_version` changes neither.
    async fn update_cluster_kubeconfig(
        &self,
        cluster: &Cluster,
        expected_version: i64,
        kubeconfig: &[u8],
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Deletes a cluster; with `cascade` also its tenants, projects and apps, otherwise
    /// refuses ([`StoreError::Conflict`]) while it has tenants.
    async fn delete_cluster(
        &self,
        id: ClusterId,
        cascade: bool,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Decrypts the stored kubeconfig of a cluster.
    async fn cluster_kubeconfig(&self, id: ClusterId) -> Result<zeroize::Zeroizing<Vec<u8>>>;
    /// Stores (encrypts) or replaces a named secret owned by a cluster or other record,
    /// e.g. `("agent-credential", hash)`.
    async fn put_secret(&self, owner: uuid::Uuid, purpose: &str, plaintext: &[u8]) -> Result<()>;
    /// Reads and decrypts a named secret.
    async fn get_secret(
        &self,
        owner: uuid::Uuid,
        purpose: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>>;
    /// Stores (encrypts) a named secret only if none exists yet; returns whether it was
    /// stored. Lets concurrent starters agree on one generated secret (read it back after).
    async fn put_secret_if_absent(
        &self,
        owner: uuid::Uuid,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<bool>;
    /// Reads and decrypts a named secret with its version, for a conditional
    /// [`Store::replace_secret`] (read-modify-write without losing a concurrent write).
    async fn get_secret_versioned(
        &self,
        owner: uuid::Uuid,
        purpose: &str,
    ) -> Result<(zeroize::Zeroizing<Vec<u8>>, i64)>;
    /// Replaces (re-encrypts) a named secret only if it is still at `expected_version`, the
    /// version [`Store::get_secret_versioned`] read; returns the new version.
    /// [`StoreError::PreconditionFailed`] when it changed since (re-read, re-apply the
    /// change and retry), [`StoreError::NotFound`] when it does not exist.
    ///
    /// ```no_run
    /// # async fn demo(store: &dyn kubenova_store::Store) -> Result<(), kubenova_store::StoreError> {
    /// use kubenova_store::StoreError;
    /// let owner = uuid::Uuid::nil();
    /// loop {
    ///     let (current, version) = store.get_secret_versioned(owner, "counter").await?;
    ///     let next = [current.first().copied().unwrap_or(0).wrapping_add(1)];
    ///     match store.replace_secret(owner, "counter", &next, version).await {
    ///         Ok(_) => break,
    ///         Err(StoreError::PreconditionFailed { .. }) => continue,
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    async fn replace_secret(
        &self,
        owner: uuid::Uuid,
        purpose: &str,
        plaintext: &[u8],
        expected_version: i64,
    ) -> Result<i64>;
    /// Re-wraps every data key under the keyring's active KEK; returns how many changed.
    async fn rotate_keys(&self) -> Result<usize>;

    // ---- tenants --------------------------------------------------------------------
    /// Inserts a tenant (name unique per cluster) and bumps the cluster revision.
    async fn create_tenant(&self, tenant: &Tenant, opts: &WriteOptions<'_>) -> Result<()>;
    /// Reads a tenant.
    async fn get_tenant(&self, id: TenantId) -> Result<Tenant>;
    /// Reads a tenant past the record cache (see [`Store::get_cluster_uncached`]).
    async fn get_tenant_uncached(&self, id: TenantId) -> Result<Tenant>;
    /// Lists a cluster's tenants (or all tenants with `None`).
    async fn list_tenants(
        &self,
        cluster: Option<ClusterId>,
        params: &ListParams,
    ) -> Result<Page<Tenant>>;
    /// Lists the tenants of a cluster (or all with `None`) that pass `filter`, like
    /// [`Store::list_clusters_matching`].
    async fn list_tenants_matching(
        &self,
        cluster: Option<ClusterId>,
        filter: &ListFilter,
        params: &ListParams,
    ) -> Result<Page<Tenant>>;
    /// Replaces a tenant at `expected_version` and bumps the cluster revision.
    ///
    /// In the same transaction: the tenant's memberships follow its `owners`, and each of
    /// the tenant's active credentials on derived rights ([`IssuedCredential::derived_from`],
    /// tenant or project) that no membership of its keys entitles any more is revoked
    /// (`revoked_by` the write's audit actor, reason [`REVOKED_MEMBERSHIP_REMOVED`]).
    async fn update_tenant(
        &self,
        tenant: &Tenant,
        expected_version: i64,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Records the operator-observed status (no desired-state revision bump), unless the
    /// stored status has a higher `observedRevision` ([`older_report`]): compared on the
    /// record the write is conditional on, so a delayed older report never overwrites a
    /// newer one, however the two race. Returns the record as stored afterwards (its
    /// status is `status` when it was taken).
    async fn set_tenant_status(&self, id: TenantId, status: &ObjectStatus) -> Result<Tenant>;
    /// Deletes a tenant; with `cascade` also its projects and apps. Its active credentials
    /// on derived rights are revoked in the same transaction (reason
    /// [`REVOKED_TENANT_DELETED`]); those issued on token roles are left as they are.
    async fn delete_tenant(
        &self,
        id: TenantId,
        cascade: bool,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;

    // ---- memberships -----------------------------------------------------------------
    /// The memberships (tenant owners, project access entries) whose key is one of `keys`
    /// (see [`kubenova_api::identity`]): what a person or their groups are named in, by
    /// tenant, then project (a tenant's owners first), then key. One indexed query; the
    /// index is kept in the transaction of every tenant and project write.
    ///
    /// An empty `keys` finds nothing; more than [`MAX_MEMBERSHIP_KEYS`] is
    /// [`StoreError::Validation`]. Keys that no subject can have (too long, control
    /// characters) match nothing.
    ///
    /// ```no_run
    /// # async fn demo(store: &dyn kubenova_store::Store) -> Result<(), kubenova_store::StoreError> {
    /// use kubenova_api::identity::{Grants, Identity};
    /// let alice = Identity { subject: "alice@example.com".into(), groups: vec!["ops".into()] };
    /// let rows = store.memberships_of(&alice.keys()).await?;
    /// let grants = Grants::of(&alice, &rows);
    /// println!("owns {} tenant(s), named in {} project(s)", grants.tenants.len(), grants.projects.len());
    /// # Ok(()) }
    /// ```
    async fn memberships_of(
        &self,
        keys: &[String],
    ) -> Result<Vec<kubenova_api::identity::Membership>>;

    // ---- projects -------------------------------------------------------------------
    /// Inserts a project (name unique per tenant).
    async fn create_project(&self, project: &Project, opts: &WriteOptions<'_>) -> Result<()>;
    /// Reads a project.
    async fn get_project(&self, id: ProjectId) -> Result<Project>;
    /// Reads a project past the record cache (see [`Store::get_cluster_uncached`]).
    async fn get_project_uncached(&self, id: ProjectId) -> Result<Project>;
    /// Lists a tenant's projects.
    async fn list_projects(&self, tenant: TenantId, params: &ListParams) -> Result<Page<Project>>;
    /// Lists the projects of a tenant that pass `filter`, like
    /// [`Store::list_clusters_matching`].
    async fn list_projects_matching(
        &self,
        tenant: TenantId,
        filter: &ListFilter,
        params: &ListParams,
    ) -> Result<Page<Project>>;
    /// Lists the projects of every tenant of a cluster, by id: the batched read behind a
    /// desired-state snapshot (one query per page instead of one per tenant).
    ///
    /// ```no_run
    /// # async fn demo(store: &dyn kubenova_store::Store, c: kubenova_api::ids::ClusterId)
    /// # -> Result<(), kubenova_store::StoreError> {
    /// use kubenova_store::{ListParams, MAX_PAGE_SIZE};
    /// let mut params = ListParams::first(MAX_PAGE_SIZE);
    /// loop {
    ///     let page = store.list_cluster_projects(c, &params).await?;
    ///     // ... use page.items ...
    ///     match page.next_cursor {
    ///         Some(next) => params.cursor = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    async fn list_cluster_projects(
        &self,
        cluster: ClusterId,
        params: &ListParams,
    ) -> Result<Page<Project>>;
    /// Replaces a project at `expected_version`.
    ///
    /// In the same transaction: the project's memberships follow its `access`, and each of
    /// the project's active credentials on derived rights that no membership of its keys
    /// entitles any more (e.g. an `owner` credential after its entry became `viewer:`) is
    /// revoked (as by [`Store::update_tenant`]).
    async fn update_project(
        &self,
        project: &Project,
        expected_version: i64,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Records the operator-observed status, unless older than the stored one (as
    /// [`Store::set_tenant_status`]).
    async fn set_project_status(&self, id: ProjectId, status: &ObjectStatus) -> Result<Project>;
    /// Deletes a project; with `cascade` also its apps. Its active credentials on derived
    /// rights are revoked in the same transaction (reason [`REVOKED_PROJECT_DELETED`]).
    async fn delete_project(
        &self,
        id: ProjectId,
        cascade: bool,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;

    // ---- apps -----------------------------------------------------------------------
    /// Inserts an app and its first revision.
    async fn create_app(
        &self,
        app: &App,
        first: &AppRevision,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Reads an app.
    async fn get_app(&self, id: AppId) -> Result<App>;
    /// Lists a project's apps.
    async fn list_apps(&self, project: ProjectId, params: &ListParams) -> Result<Page<App>>;
    /// Lists the apps of a project that pass `filter`, like
    /// [`Store::list_clusters_matching`]. Apps have no labels: a filter with a label
    /// selector is [`StoreError::Validation`] naming `labelSelector`.
    async fn list_apps_matching(
        &self,
        project: ProjectId,
        filter: &ListFilter,
        params: &ListParams,
    ) -> Result<Page<App>>;
    /// Lists the apps of every project of a cluster, by id (paged like
    /// [`Store::list_cluster_projects`]).
    async fn list_cluster_apps(&self, cluster: ClusterId, params: &ListParams)
    -> Result<Page<App>>;
    /// Replaces an app at `expected_version`, appending `new_revision` when the spec changed.
    async fn update_app(
        &self,
        app: &App,
        expected_version: i64,
        new_revision: Option<&AppRevision>,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Replaces an app at `expected_version` like [`Store::update_app`] and records the
    /// workflow run the change requests (a deploy, a rollback) **in the same
    /// transaction**: either both are stored or neither is, so no deployed revision is
    /// ever without its run, and no run without its revision.
    async fn update_app_with_run(
        &self,
        app: &App,
        expected_version: i64,
        new_revision: Option<&AppRevision>,
        run: &WorkflowRun,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Records the operator-observed status and KubeVela phase, unless the status is older
    /// than the stored one (as [`Store::set_tenant_status`]; the phase is then kept too).
    async fn set_app_status(
        &self,
        id: AppId,
        status: &ObjectStatus,
        vela_phase: Option<&str>,
    ) -> Result<App>;
    /// Deletes an app with its revisions and runs.
    async fn delete_app(&self, id: AppId, opts: &WriteOptions<'_>) -> Result<()>;
    /// Revisions of an app, oldest first.
    async fn list_app_revisions(&self, id: AppId, params: &ListParams)
    -> Result<Page<AppRevision>>;
    /// One revision of an app.
    async fn get_app_revision(&self, id: AppId, number: i64) -> Result<AppRevision>;
    /// Records a workflow run.
    async fn create_workflow_run(&self, run: &WorkflowRun, opts: &WriteOptions<'_>) -> Result<()>;
    /// Updates a workflow run (status, result, end time).
    async fn update_workflow_run(&self, run: &WorkflowRun) -> Result<()>;
    /// Reads a workflow run.
    async fn get_workflow_run(&self, id: RunId) -> Result<WorkflowRun>;
    /// Lists an app's workflow runs, oldest first.
    async fn list_workflow_runs(
        &self,
        app: AppId,
        params: &ListParams,
    ) -> Result<Page<WorkflowRun>>;

    /// Lists an app's workflow runs that are still requested or running, oldest first
    /// (paged like [`Store::list_workflow_runs`]): what an agent's status report may
    /// advance, read without the app's finished history (a partial index serves it).
    async fn list_active_workflow_runs(
        &self,
        app: AppId,
        params: &ListParams,
    ) -> Result<Page<WorkflowRun>>;
    /// Deletes the app's finished (succeeded or failed) workflow runs except the newest
    /// `keep`; returns how many were deleted. Runs still requested or running are never
    /// deleted.
    async fn prune_workflow_runs(&self, app: AppId, keep: u32) -> Result<u64>;

    // ---- desired-state revisions --------------------------------------------------------
    /// The cluster's current desired-state revision (0 before any change).
    async fn cluster_revision(&self, id: ClusterId) -> Result<i64>;
    /// Changes after `since`, oldest first, at most `limit`; `None` if `since` was compacted away.
    async fn changes_since(
        &self,
        id: ClusterId,
        since: i64,
        limit: u32,
    ) -> Result<Option<Vec<Change>>>;
    /// Drops change records at or below `revision` (snapshots are needed for older cursors).
    async fn compact_changes(&self, id: ClusterId, up_to: i64) -> Result<u64>;

    // ---- agent requests (logs and events relayed through the agent channel) ----------
    /// Records a request for a cluster's operator, unless the cluster already has
    /// `max_open` unexpired requests (then nothing is stored and the answer is `false`).
    /// The check and the insert are one statement. Postgres announces the new request on
    /// the channel `kubenova_agent_requests` (see [`notify`]).
    async fn create_agent_request(
        &self,
        request: &AgentRequestRecord,
        max_open: u32,
    ) -> Result<bool>;
    /// Hands over up to `limit` requests of the cluster that are not delivered yet and
    /// not expired at `now`, oldest first, marking them delivered: each request is handed
    /// over once, also to concurrent callers. Returns their documents.
    async fn claim_agent_requests(
        &self,
        cluster: ClusterId,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<serde_json::Value>>;
    /// Accepts an answer chunk of `cluster`'s operator to one of its delivered, unexpired,
    /// unfinished requests, in order (chunk `seq` after `seq - 1`), storing it unless it
    /// is a probe and counting its bytes; a chunk that would bring the request's chunks
    /// past `max_bytes` is refused ([`AnswerOutcome::Full`]) and nothing is stored. The
    /// check and the write are one transaction. Postgres announces a stored chunk on the
    /// channel `kubenova_agent_answers`.
    ///
    /// ```no_run
    /// # async fn demo(store: &dyn kubenova_store::Store, cluster: kubenova_api::ids::ClusterId, id: uuid::Uuid)
    /// # -> Result<(), kubenova_store::StoreError> {
    /// use kubenova_store::{AnswerChunk, AnswerOutcome};
    /// let chunk = AnswerChunk { request_id: id, seq: 0, body: b"{}", done: true, probe: false };
    /// match store.append_agent_answer(cluster, &chunk, 1 << 20, time::OffsetDateTime::now_utc()).await? {
    ///     AnswerOutcome::Accepted | AnswerOutcome::Duplicate => {}
    ///     other => println!("refused: {other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    async fn append_agent_answer(
        &self,
        cluster: ClusterId,
        chunk: &AnswerChunk<'_>,
        max_bytes: i64,
        now: time::OffsetDateTime,
    ) -> Result<AnswerOutcome>;
    /// Removes and returns the answer chunks stored for a request so far (the caller
    /// waiting for them is their only reader), and whether the last one was accepted.
    /// [`StoreError::NotFound`] when the request is gone.
    async fn take_agent_answers(&self, id: uuid::Uuid) -> Result<TakenAnswers>;
    /// Deletes a request and its answers (its caller is done with it); deleting a request
    /// that is gone is not an error.
    async fn delete_agent_request(&self, id: uuid::Uuid) -> Result<()>;
    /// Deletes the requests (and their answers) expired at `now`; returns how many.
    async fn purge_agent_requests(&self, now: time::OffsetDateTime) -> Result<u64>;

    /// The plans `tenant` was on, oldest first: one entry per change (creation
    /// included), recorded by [`Store::create_tenant`] and [`Store::update_tenant`]. Tenants
    /// created before this history existed have none until their plan changes.
    async fn tenant_plan_history(&self, tenant: TenantId) -> Result<Vec<PlanChange>>;
    /// Records `prices` (a plan's price table, as JSON) as in force for `plan` from
    /// `since` on, unless they are the prices last recorded for it; returns whether a new
    /// version was recorded.
    async fn record_plan_prices(
        &self,
        plan: &str,
        prices: &str,
        since: time::OffsetDateTime,
    ) -> Result<bool>;
    /// Every recorded price-table version, by plan then oldest first.
    async fn plan_price_history(&self) -> Result<Vec<PlanPrices>>;

    // ---- usage ----------------------------------------------------------------------
    /// One page of every tenant's usage records in a range ([`UsageExport`]), for billing
    /// exports; the next page starts after the last record returned.
    async fn export_usage(&self, export: &UsageExport) -> Result<Vec<UsageRecord>>;
    /// Inserts or replaces hourly usage records (idempotent per cluster, tenant, project, hour).
    async fn upsert_usage(&self, records: &[UsageRecord]) -> Result<()>;
    /// Usage records matching the query, ordered by hour (then cluster and project). A
    /// query matching more than [`UsageQuery::max_records`] fails with
    /// [`StoreError::Validation`] naming the bound: the answer is never a silently
    /// truncated list.
    async fn query_usage(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>>;
    /// Sums over **every** record the query matches (its `max_records` does not apply),
    /// computed by the database.
    async fn usage_totals(&self, query: &UsageQuery) -> Result<UsageSums>;
    /// Sums of the records the query matches, grouped by UTC day and by the span between
    /// consecutive `bounds` (sorted instants where pricing changes: plan changes, price
    /// versions) that holds them: one entry per (day, span) with records, ordered by its
    /// first hour. Computed by the database (a year of hours comes back as about 365
    /// rows); `max_records` does not apply. Sums that would exceed `i64::MAX` are
    /// `i64::MAX`.
    async fn usage_day_sums(
        &self,
        query: &UsageQuery,
        bounds: &[time::OffsetDateTime],
    ) -> Result<Vec<UsageDaySums>>;
    /// The `n` latest records the query matches, newest first (`max_records` does not
    /// apply).
    async fn latest_usage(&self, query: &UsageQuery, n: u32) -> Result<Vec<UsageRecord>>;

    // ---- audit and idempotency --------------------------------------------------------
    /// Appends an audit event on its own (mutations pass theirs in [`WriteOptions`]).
    async fn append_audit(&self, event: &AuditEvent) -> Result<()>;
    /// Audit events matching the query, oldest first.
    async fn query_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>>;
    /// The stored response of an idempotency key of a caller (subject and scope, see
    /// [`IdempotencyRecord`]), if any and not expired.
    async fn get_idempotency(
        &self,
        subject: &str,
        scope: &str,
        key: &str,
        now: time::OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>>;
    /// Stores an idempotency record alone (mutations pass theirs in [`WriteOptions`]);
    /// [`StoreError::Conflict`] if the key is already taken.
    async fn put_idempotency(&self, record: &IdempotencyRecord) -> Result<()>;
    /// Deletes expired idempotency records; returns how many.
    async fn purge_idempotency(&self, now: time::OffsetDateTime) -> Result<u64>;

    // ---- issued credentials and revocations -------------------------------------------
    /// Records the metadata of an issued credential (never the token), with the
    /// issuance's audit event in the same transaction.
    async fn record_credential(
        &self,
        credential: &IssuedCredential,
        opts: &WriteOptions<'_>,
    ) -> Result<()>;
    /// Reads one issued credential by `jti`.
    async fn get_credential(&self, jti: uuid::Uuid) -> Result<IssuedCredential>;
    /// A tenant's issued credentials in `jti` (issue) order, optionally of one subject.
    async fn list_credentials(
        &self,
        tenant: TenantId,
        query: &CredentialQuery,
    ) -> Result<Page<IssuedCredential>>;
    /// Marks one credential revoked; `false` if it already was. [`StoreError::NotFound`]
    /// for an unknown `jti`.
    async fn revoke_credential(
        &self,
        jti: uuid::Uuid,
        by: &str,
        at: time::OffsetDateTime,
        opts: &WriteOptions<'_>,
    ) -> Result<bool>;
    /// Revokes a subject for a tenant: records the subject revocation (blocking new
    /// issuance until lifted) and marks the subject's unexpired credentials of the tenant
    /// revoked; returns how many credentials were marked. `by_platform` says that `by`
    /// holds a platform role (admin, ops): such a revocation may only be lifted by a
    /// platform role, and revoking again without one leaves it as it is (the
    /// credentials are still marked).
    async fn revoke_subject(
        &self,
        tenant: TenantId,
        subject: &str,
        by: &str,
        by_platform: bool,
        at: time::OffsetDateTime,
        opts: &WriteOptions<'_>,
    ) -> Result<u64>;
    /// Marks every unexpired, unrevoked credential of a tenant revoked; returns how many.
    async fn revoke_tenant_credentials(
        &self,
        tenant: TenantId,
        by: &str,
        at: time::OffsetDateTime,
        opts: &WriteOptions<'_>,
    ) -> Result<u64>;
    /// The subject's revocation for the tenant, if any.
    async fn subject_revocation(
        &self,
        tenant: TenantId,
        subject: &str,
    ) -> Result<Option<SubjectRevocation>>;
    /// A tenant's revoked subjects, ordered by subject.
    async fn list_subject_revocations(
        &self,
        tenant: TenantId,
        params: &ListParams,
    ) -> Result<Page<SubjectRevocation>>;
    /// Lifts a subject revocation, with `opts` in the same transaction. A revocation made
    /// by a platform role is lifted only when `by_platform` (the caller holds admin or
    /// ops); otherwise nothing changes and the answer is
    /// [`LiftOutcome::PlatformRevocation`]. The check and the delete are one statement, so
    /// a concurrent platform revocation is never lifted by a tenant owner.
    async fn lift_subject_revocation(
        &self,
        tenant: TenantId,
        subject: &str,
        by_platform: bool,
        opts: &WriteOptions<'_>,
    ) -> Result<LiftOutcome>;

    // ---- API keys (machine identities) ------------------------------------------------
    /// Records an API key (its hash, never the key), with `opts` in the same transaction.
    /// [`StoreError::NotFound`] when the tenant (of `key.cluster_id`) or the project (of
    /// the tenant) does not exist; [`StoreError::Conflict`] when the tenant has a key of
    /// that name that is not revoked.
    ///
    /// ```no_run
    /// # async fn demo(store: &dyn kubenova_store::Store, tenant: &kubenova_api::model::Tenant)
    /// # -> Result<(), kubenova_store::StoreError> {
    /// use kubenova_api::model::AccessRole;
    /// use kubenova_store::{ApiKey, WriteOptions};
    /// let now = time::OffsetDateTime::now_utc();
    /// let key = ApiKey {
    ///     id: uuid::Uuid::now_v7(), tenant_id: tenant.id, cluster_id: tenant.cluster_id,
    ///     project_id: None, name: "ci".into(), description: "deploys from CI".into(),
    ///     role: AccessRole::Owner, secret_hash: [0; 32], created_by: "alice".into(),
    ///     created_at: now, expires_at: now + time::Duration::days(90),
    ///     last_used_at: None, revoked_at: None, revoked_by: None,
    /// };
    /// store.create_api_key(&key, &WriteOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    async fn create_api_key(&self, key: &ApiKey, opts: &WriteOptions<'_>) -> Result<()>;
    /// Reads an API key by id, from the database (never a cache: a revocation through any
    /// replica is seen by the next read). [`StoreError::NotFound`] when there is none, also
    /// when its tenant or project was deleted (the key went with it).
    async fn get_api_key(&self, id: uuid::Uuid) -> Result<ApiKey>;
    /// A tenant's API keys (revoked and expired ones included) in id (creation) order,
    /// optionally only those of some projects.
    async fn list_api_keys(&self, tenant: TenantId, query: &ApiKeyQuery) -> Result<Page<ApiKey>>;
    /// Marks an API key revoked by `by` at `at`, with `opts` in the same transaction;
    /// `false` (and nothing written) if it already was. [`StoreError::NotFound`] for an
    /// unknown id.
    async fn revoke_api_key(
        &self,
        id: uuid::Uuid,
        by: &str,
        at: time::OffsetDateTime,
        opts: &WriteOptions<'_>,
    ) -> Result<bool>;
    /// Records that an API key was used at `at` (never moves `last_used_at` back); a key
    /// that is gone is not an error.
    async fn touch_api_key(&self, id: uuid::Uuid, at: time::OffsetDateTime) -> Result<()>;

    // ---- kubeconfig issuance ---------------------------------------------------------
    /// Records several issued credentials, each with its audit event (group commit of
    /// concurrent issuances), after checking **in the same transaction** that each
    /// credential's tenant (and project) still exists, that its subject is not revoked
    /// for the tenant and, for a credential on derived rights
    /// ([`IssuedCredential::derived_from`]), that a membership of one of its keys still
    /// entitles it. Refused items are not written; their [`CredentialOutcome`] says why.
    ///
    /// The SQL stores do it in **one** transaction: every `Recorded` item is durable when
    /// this returns `Ok`, nothing when it returns `Err`. On Postgres each tenant's issuance
    /// lock (a transaction-scoped advisory lock) is held in share mode for the check, and
    /// subject revocations, tenant deletes and the writes that change owners or access
    /// entries take it exclusively, so a revocation or a removal either is seen by the
    /// check or marks the new credential revoked: neither can slip between the two. The
    /// default implementation checks and records item by item (not atomic).
    async fn record_credentials(
        &self,
        items: &[(IssuedCredential, AuditEvent)],
    ) -> Result<Vec<CredentialOutcome>> {
        let mut outcomes = Vec::with_capacity(items.len());
        for (credential, audit) in items {
            let tenant = match self.get_tenant(credential.tenant_id).await {
                Ok(t) => t,
                Err(StoreError::NotFound { .. }) => {
                    outcomes.push(CredentialOutcome::TenantGone);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(project) = credential.project_id {
                match self.get_project(project).await {
                    Ok(p) if p.tenant_id == tenant.id => {}
                    Ok(_) | Err(StoreError::NotFound { .. }) => {
                        outcomes.push(CredentialOutcome::ProjectGone);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(rev) = self
                .subject_revocation(tenant.id, &credential.subject)
                .await?
            {
                outcomes.push(CredentialOutcome::SubjectRevoked(rev));
                continue;
            }
            if let Some(keys) = &credential.derived_from {
                let rows = self.memberships_of(keys).await?;
                if !rows
                    .iter()
                    .any(|m| m.entitles(tenant.id, credential.project_id, credential.role))
                {
                    outcomes.push(CredentialOutcome::NotEntitled);
                    continue;
                }
            }
            self.record_credential(
                credential,
                &WriteOptions {
                    audit: Some(audit),
                    idempotency: None,
                },
            )
            .await?;
            outcomes.push(CredentialOutcome::Recorded);
        }
        Ok(outcomes)
    }
}

/// Opens the store named by a `DATABASE_URL` (`postgres://…` or `sqlite://…`) and
/// applies pending migrations.
pub async fn connect(url: &str, keyring: crypto::Keyring) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, keyring).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, keyring).await?))
    } else {
        Err(StoreError::Validation(
            kubenova_api::validate::ValidationError::single(
                "DATABASE_URL",
                format!(
                    "unsupported scheme in {:?}: use postgres://user@host/db or sqlite://path/to/file.db",
                    redact_url(url)
                ),
            ),
        ))
    }
}

/// Whether an operator report describes an older desired-state revision than the stored
/// status (a lower `observedRevision`; none counts as 0). Such a report is never stored:
/// a batch delayed past its retry or a newer report must not take the status back. An
/// equal revision is not older (the object's phase moves on within one revision).
///
/// ```
/// use kubenova_api::model::{ObjectStatus, Phase};
/// let at = |rev| ObjectStatus { phase: Phase::Ready, conditions: vec![], observed_revision: rev, message: String::new() };
/// assert!(kubenova_store::older_report(&at(Some(5)), &at(Some(4))));
/// assert!(!kubenova_store::older_report(&at(Some(5)), &at(Some(5))));
/// assert!(!kubenova_store::older_report(&at(None), &at(Some(1))));
/// ```
pub fn older_report(stored: &ObjectStatus, reported: &ObjectStatus) -> bool {
    reported.observed_revision.unwrap_or(0) < stored.observed_revision.unwrap_or(0)
}

/// A URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}://{}:***{}", &url[..s], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
