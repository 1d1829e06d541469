//! A [`Store`] decorator that records the latency and errors of every store call in the
//! manager's Prometheus metrics (`kubenova_store_*`, labelled by operation), and wraps
//! each call in a `store <operation>` trace span (target `kubenova::store`, level debug).

use super::middleware::Runtime;
use async_trait::async_trait;
use kubenova_api::ids::{AppId, ClusterId, ProjectId, RunId, TenantId};
use kubenova_api::model::{
    App, AppRevision, AuditEvent, Cluster, ObjectStatus, Project, Tenant, UsageRecord, WorkflowRun,
};
use kubenova_store::{
    AgentRequestRecord, AnswerChunk, AnswerOutcome, AuditQuery, Change, CredentialOutcome,
    CredentialQuery, Health, IdempotencyRecord, IssuedCredential, LiftOutcome, ListFilter,
    ListParams, Page, PlanChange, PlanPrices, Result, Store, SubjectRevocation, TakenAnswers,
    UsageDaySums, UsageExport, UsageQuery, UsageSums, WriteOptions,
};
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use tracing::Instrument as _;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Wraps a store and times each call.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    runtime: Arc<Runtime>,
}

impl MeteredStore {
    /// Wraps `inner`, reporting to `runtime`'s metrics.
    pub fn new(inner: Arc<dyn Store>, runtime: Arc<Runtime>) -> Self {
        Self { inner, runtime }
    }
}

/// Whether a store result is a failure of the database or its keys, counted in
/// `kubenova_store_errors_total`; answers such as not found, a conflict, a stale
/// version or invalid input are the store working as it should.
fn is_failure<T>(res: &Result<T>) -> bool {
    matches!(
        res,
        Err(kubenova_store::StoreError::Unavailable(_)
            | kubenova_store::StoreError::Crypto(_)
            | kubenova_store::StoreError::Internal(_))
    )
}

macro_rules! metered {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        #[async_trait]
        impl Store for MeteredStore {
            fn row_cache(&self) -> Option<Arc<kubenova_store::cache::RowCache>> {
                self.inner.row_cache()
            }

            async fn close(&self) {
                self.inner.close().await
            }

            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    // A trace span per call, named by the operation (never its values).
                    let span = tracing::debug_span!(
                        target: "kubenova::store",
                        "store",
                        otel.name = concat!("store ", stringify!($name)),
                        otel.kind = "client",
                        db.operation.name = stringify!($name),
                        otel.status_code = tracing::field::Empty,
                    );
                    let started = Instant::now();
                    let res = self.inner.$name($($arg),*).instrument(span.clone()).await;
                    let ok = !is_failure(&res);
                    self.runtime.observe_store(stringify!($name), started, ok);
                    if !ok {
                        span.record("otel.status_code", "ERROR");
                    }
                    res
                }
            )*
        }
    };
}

metered! {
    fn ping(&self) -> Result<Health>;
    fn create_cluster(&self, cluster: &Cluster, kubeconfig: &[u8], opts: &WriteOptions<'_>) -> Result<()>;
    fn get_cluster(&self, id: ClusterId) -> Result<Cluster>;
    fn get_cluster_uncached(&self, id: ClusterId) -> Result<Cluster>;
    fn list_clusters(&self, params: &ListParams) -> Result<Page<Cluster>>;
    fn list_clusters_matching(&self, filter: &ListFilter, params: &ListParams) -> Result<Page<Cluster>>;
    fn update_cluster(&self, cluster: &Cluster, expected_version: i64, opts: &WriteOptions<'_>) -> Result<()>;
    fn record_cluster_heartbeat(&self, id: ClusterId, at: OffsetDateTime) -> Result<()>;
    fn update_cluster_kubeconfig(&self, cluster: &Cluster, expected_version: i64, kubeconfig: &[u8], opts: &WriteOptions<'_>) -> Result<()>;
    fn delete_cluster(&self, id: ClusterId, cascade: bool, opts: &WriteOptions<'_>) -> Result<()>;
    fn cluster_kubeconfig(&self, id: ClusterId) -> Result<Zeroizing<Vec<u8>>>;
    fn put_secret(&self, owner: Uuid, purpose: &str, plaintext: &[u8]) -> Result<()>;
    fn get_secret(&self, owner: Uuid, purpose: &str) -> Result<Zeroizing<Vec<u8>>>;
    fn put_secret_if_absent(&self, owner: Uuid, purpose: &str, plaintext: &[u8]) -> Result<bool>;
    fn get_secret_versioned(&self, owner: Uuid, purpose: &str) -> Result<(Zeroizing<Vec<u8>>, i64)>;
    fn replace_secret(&self, owner: Uuid, purpose: &str, plaintext: &[u8], expected_version: i64) -> Result<i64>;
    fn rotate_keys(&self) -> Result<usize>;
    fn create_tenant(&self, tenant: &Tenant, opts: &WriteOptions<'_>) -> Result<()>;
    fn get_tenant(&self, id: TenantId) -> Result<Tenant>;
    fn get_tenant_uncached(&self, id: TenantId) -> Result<Tenant>;
    fn list_tenants(&self, cluster: Option<ClusterId>, params: &ListParams) -> Result<Page<Tenant>>;
    fn list_tenants_matching(&self, cluster: Option<ClusterId>, filter: &ListFilter, params: &ListParams) -> Result<Page<Tenant>>;
    fn update_tenant(&self, tenant: &Tenant, expected_version: i64, opts: &WriteOptions<'_>) -> Result<()>;
    fn set_tenant_status(&self, id: TenantId, status: &ObjectStatus) -> Result<Tenant>;
    fn delete_tenant(&self, id: TenantId, cascade: bool, opts: &WriteOptions<'_>) -> Result<()>;
    fn memberships_of(&self, keys: &[String]) -> Result<Vec<kubenova_api::identity::Membership>>;
    fn create_project(&self, project: &Project, opts: &WriteOptions<'_>) -> Result<()>;
    fn get_project(&self, id: ProjectId) -> Result<Project>;
    fn get_project_uncached(&self, id: ProjectId) -> Result<Project>;
    fn list_projects(&self, tenant: TenantId, params: &ListParams) -> Result<Page<Project>>;
    fn list_projects_matching(&self, tenant: TenantId, filter: &ListFilter, params: &ListParams) -> Result<Page<Project>>;
    fn list_cluster_projects(&self, cluster: ClusterId, params: &ListParams) -> Result<Page<Project>>;
    fn update_project(&self, project: &Project, expected_version: i64, opts: &WriteOptions<'_>) -> Result<()>;
    fn set_project_status(&self, id: ProjectId, status: &ObjectStatus) -> Result<Project>;
    fn delete_project(&self, id: ProjectId, cascade: bool, opts: &WriteOptions<'_>) -> Result<()>;
    fn create_app(&self, app: &App, first: &AppRevision, opts: &WriteOptions<'_>) -> Result<()>;
    fn get_app(&self, id: AppId) -> Result<App>;
    fn list_apps(&self, project: ProjectId, params: &ListParams) -> Result<Page<App>>;
    fn list_apps_matching(&self, project: ProjectId, filter: &ListFilter, params: &ListParams) -> Result<Page<App>>;
    fn list_cluster_apps(&self, cluster: ClusterId, params: &ListParams) -> Result<Page<App>>;
    fn update_app(&self, app: &App, expected_version: i64, new_revision: Option<&AppRevision>, opts: &WriteOptions<'_>) -> Result<()>;
    fn update_app_with_run(&self, app: &App, expected_version: i64, new_revision: Option<&AppRevision>, run: &WorkflowRun, opts: &WriteOptions<'_>) -> Result<()>;
    fn set_app_status(&self, id: AppId, status: &ObjectStatus, vela_phase: Option<&str>) -> Result<App>;
    fn delete_app(&self, id: AppId, opts: &WriteOptions<'_>) -> Result<()>;
    fn list_app_revisions(&self, id: AppId, params: &ListParams) -> Result<Page<AppRevision>>;
    fn get_app_revision(&self, id: AppId, number: i64) -> Result<AppRevision>;
    fn create_workflow_run(&self, run: &WorkflowRun, opts: &WriteOptions<'_>) -> Result<()>;
    fn update_workflow_run(&self, run: &WorkflowRun) -> Result<()>;
    fn get_workflow_run(&self, id: RunId) -> Result<WorkflowRun>;
    fn list_workflow_runs(&self, app: AppId, params: &ListParams) -> Result<Page<WorkflowRun>>;
    fn list_active_workflow_runs(&self, app: AppId, params: &ListParams) -> Result<Page<WorkflowRun>>;
    fn prune_workflow_runs(&self, app: AppId, keep: u32) -> Result<u64>;
    fn cluster_revision(&self, id: ClusterId) -> Result<i64>;
    fn changes_since(&self, id: ClusterId, since: i64, limit: u32) -> Result<Option<Vec<Change>>>;
    fn compact_changes(&self, id: ClusterId, up_to: i64) -> Result<u64>;
    fn create_agent_request(&self, request: &AgentRequestRecord, max_open: u32) -> Result<bool>;
    fn claim_agent_requests(&self, cluster: ClusterId, now: OffsetDateTime, limit: u32) -> Result<Vec<serde_json::Value>>;
    fn append_agent_answer(&self, cluster: ClusterId, chunk: &AnswerChunk<'_>, max_bytes: i64, now: OffsetDateTime) -> Result<AnswerOutcome>;
    fn take_agent_answers(&self, id: Uuid) -> Result<TakenAnswers>;
    fn delete_agent_request(&self, id: Uuid) -> Result<()>;
    fn purge_agent_requests(&self, now: OffsetDateTime) -> Result<u64>;
    fn tenant_plan_history(&self, tenant: TenantId) -> Result<Vec<PlanChange>>;
    fn record_plan_prices(&self, plan: &str, prices: &str, since: OffsetDateTime) -> Result<bool>;
    fn plan_price_history(&self) -> Result<Vec<PlanPrices>>;
    fn export_usage(&self, export: &UsageExport) -> Result<Vec<UsageRecord>>;
    fn upsert_usage(&self, records: &[UsageRecord]) -> Result<()>;
    fn query_usage(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>>;
    fn usage_totals(&self, query: &UsageQuery) -> Result<UsageSums>;
    fn usage_day_sums(&self, query: &UsageQuery, bounds: &[OffsetDateTime]) -> Result<Vec<UsageDaySums>>;
    fn latest_usage(&self, query: &UsageQuery, n: u32) -> Result<Vec<UsageRecord>>;
    fn append_audit(&self, event: &AuditEvent) -> Result<()>;
    fn query_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>>;
    fn get_idempotency(&self, subject: &str, scope: &str, key: &str, now: OffsetDateTime) -> Result<Option<IdempotencyRecord>>;
    fn put_idempotency(&self, record: &IdempotencyRecord) -> Result<()>;
    fn purge_idempotency(&self, now: OffsetDateTime) -> Result<u64>;
    fn record_credential(&self, credential: &IssuedCredential, opts: &WriteOptions<'_>) -> Result<()>;
    fn get_credential(&self, jti: Uuid) -> Result<IssuedCredential>;
    fn list_credentials(&self, tenant: TenantId, query: &CredentialQuery) -> Result<Page<IssuedCredential>>;
    fn revoke_credential(&self, jti: Uuid, by: &str, at: OffsetDateTime, opts: &WriteOptions<'_>) -> Result<bool>;
    fn revoke_subject(&self, tenant: TenantId, subject: &str, by: &str, by_platform: bool, at: OffsetDateTime, opts: &WriteOptions<'_>) -> Result<u64>;
    fn revoke_tenant_credentials(&self, tenant: TenantId, by: &str, at: OffsetDateTime, opts: &WriteOptions<'_>) -> Result<u64>;
    fn subject_revocation(&self, tenant: TenantId, subject: &str) -> Result<Option<SubjectRevocation>>;
    fn list_subject_revocations(&self, tenant: TenantId, params: &ListParams) -> Result<Page<SubjectRevocation>>;
    fn lift_subject_revocation(&self, tenant: TenantId, subject: &str, by_platform: bool, opts: &WriteOptions<'_>) -> Result<LiftOutcome>;
    fn record_credentials(&self, items: &[(IssuedCredential, AuditEvent)]) -> Result<Vec<CredentialOutcome>>;
    fn create_api_key(&self, key: &kubenova_store::ApiKey, opts: &WriteOptions<'_>) -> Result<()>;
    fn get_api_key(&self, id: Uuid) -> Result<kubenova_store::ApiKey>;
    fn list_api_keys(&self, tenant: TenantId, query: &kubenova_store::ApiKeyQuery) -> Result<Page<kubenova_store::ApiKey>>;
    fn revoke_api_key(&self, id: Uuid, by: &str, at: OffsetDateTime, opts: &WriteOptions<'_>) -> Result<bool>;
    fn touch_api_key(&self, id: Uuid, at: OffsetDateTime) -> Result<()>;
}
