//! The agent channel: the routes the in-cluster operator calls, outbound from the
//! cluster (wire types in [`kubenova_api::agent`]).
//!
//! **Credential.** Bootstrap mints `kna_<cluster id>_<43 random base64url characters>`
//! ([`mint_credential`]) and stores only its SHA-256, envelope-encrypted, in the cluster's
//! secret [`CREDENTIAL_PURPOSE`], **staged** next to the current one before the Secret is
//! applied ([`stage_credential`]): the running operator keeps working with the current
//! credential, also when the apply fails, and the first request with the staged one
//! makes it current, which revokes the previous one. The [`Agent`] extractor parses the
//! cluster id out of the bearer credential, reads the stored hashes and compares in
//! constant time. Agent routes
//! accept nothing else (a user JWT is KN-401 here) and user routes never accept an agent
//! credential (it is not a JWT). The credential alone decides the cluster: no agent route
//! takes a cluster id, and every record an agent names is checked to be of its cluster.
//!
//! **Routes.** `POST /api/v1/agent/heartbeat` (hello and heartbeat: status `connected`,
//! versions, capabilities, components, Capsule Proxy endpoint); `GET
//! /api/v1/agent/desired` (long-poll of the desired state with a revision cursor:
//! snapshot for cursor 0 or a compacted cursor, deltas with deletions otherwise, returns
//! early on a change or a new component request, bounded wait); `POST
//! /api/v1/agent/status` (per-object observed status; older or duplicate reports are
//! ignored); `POST /api/v1/agent/usage` (hourly usage of the agent's cluster); `GET
//! /api/v1/agent/requests` (long-poll of the logs and events requests of the agent's
//! cluster) and `POST /api/v1/agent/answers` (their answers, of the agent's own cluster's
//! requests only).
//!
//! **Relayed requests.** A user's logs or events call becomes a bounded request in the
//! store (`Relay::open`): at most [`MAX_OPEN_REQUESTS`] unexpired ones per cluster, each
//! expiring shortly after its caller stops waiting, and deleted when the caller is done
//! (answered, timed out, or gone). A new request wakes the operator's requests long-poll
//! (in-process, and across replicas through Postgres `NOTIFY`); an answer chunk wakes the
//! caller the same way, whichever replica it waits on. Expired requests are purged every
//! heartbeat interval ([`spawn_stale_task`]).
//!
//! **Heartbeats.** A heartbeat that changes nothing but its time records the time without
//! a new version (users' `If-Match` stays valid); it also compacts the cluster's change
//! log up to [`KEPT_CHANGES`] behind the revision the agent says it applied.
//!
//! **Replicas.** The long-poll is woken by the desired-state notification of a write
//! through any replica, which can arrive before this replica's record-cache invalidation
//! of the written record. So the agent channel reads tenants, projects and clusters past
//! the record cache (deltas, status reports, component requests; snapshots and apps are
//! read by queries the cache never answers): the agent always gets the committed content
//! of the revision it is told. While the Postgres listener is down, waiting polls back
//! off and are paced (see [`kubenova_store::notify`]).
//!
//! **Stale clusters.** [`mark_stale`] (run every heartbeat interval by [`spawn_stale_task`])
//! moves `connected` clusters whose last heartbeat is older than three intervals to
//! `stale`, with an optimistic version check, so several replicas may run it; reads also
//! show such a cluster as `stale` at once ([`present`]). The next heartbeat reconnects it.

use super::AppState;
use super::clusters::upsert_condition;
use super::error::{ApiError, ApiResult};
use super::extract::{KnJson, json_response};
use axum::extract::{FromRequestParts, State};
use axum::http::{StatusCode, Uri, header, request::Parts};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kubenova_api::ErrorBody;
use kubenova_api::agent::{
    AGENT_TOKEN_PREFIX, AgentAnswer, AgentRequest, AgentRequestKind, AgentRequests, AnswerReply,
    ComponentRequest, DesiredObject, DesiredState, FOLLOW_SECONDS, FollowEnd, Heartbeat,
    HeartbeatReply, LogQuery, MAX_ANSWER_BYTES, MAX_FOLLOW_BYTES, MAX_STATUS_MESSAGE_BYTES,
    ObjectKind, ObjectRef, ObjectReport, StatusReply, StatusReport, bound_text, nova_app,
    nova_project, nova_tenant, parse_agent_token,
};
use kubenova_api::error::{ErrorCode, KnError};
use kubenova_api::ids::{AppId, ClusterId, ProjectId, TenantId};
use kubenova_api::model::{
    App, COMPONENTS, Cluster, ClusterStatus, ComponentPhase, ComponentState, Condition,
    ConditionStatus, ObjectStatus, Phase, Project, RunStatus, Tenant, UsageRecord,
};
use kubenova_api::validate::Validator;
use kubenova_store::notify::{ChangeSubscription, Woken};
use kubenova_store::{
    AgentRequestRecord, AnswerChunk, AnswerOutcome, ListParams, Store, StoreError, WriteOptions,
};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

/// Store secret purpose holding the SHA-256 of a cluster's agent credential.
pub const CREDENTIAL_PURPOSE: &str = "agent-credential";
/// Path of the desired-state long-poll.
pub const DESIRED_PATH: &str = "/api/v1/agent/desired";
/// Default wait of the long-poll.
pub const DEFAULT_WAIT_SECONDS: u64 = 30;
/// Longest wait of the long-poll.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// Most reports in one status batch.
pub const MAX_REPORTS: usize = 1000;
/// Most changes in one delta (the agent continues from the returned revision).
pub const MAX_DELTA_CHANGES: u32 = 1000;
/// Heartbeats missed before a connected cluster becomes `stale`.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Change records kept behind the revision an agent says it applied: a cursor older than
/// that gets a snapshot instead of a delta.
pub const KEPT_CHANGES: i64 = 256;
/// Path of the logs and events requests long-poll.
pub const REQUESTS_PATH: &str = "/api/v1/agent/requests";
/// Most requests one poll of [`REQUESTS_PATH`] hands over.
pub const MAX_REQUESTS_PER_POLL: u32 = 16;
/// Most unexpired logs and events requests a cluster may have at once (further calls
/// are KN-503 with `Retry-After` until some finish).
pub const MAX_OPEN_REQUESTS: u32 = 32;
/// How long a request outlives the wait of its caller: an operator that answers a little
/// late is told the request is gone, and a request whose caller crashed is purged.
const REQUEST_GRACE: Duration = Duration::from_secs(5);
/// How far the wall clock may step forward (NTP, a virtual machine resumed from a pause)
/// without cutting off requests in flight. Callers wait on the monotonic clock and delete
/// their request when they stop waiting; the stored `expires_at` is only the backstop for
/// requests whose manager died, so it is judged this much late.
const WALL_CLOCK_STEP: time::Duration = time::Duration::minutes(1);

/// "Now" for judging a stored request's `expires_at`: see [`WALL_CLOCK_STEP`].
fn expiry_now() -> OffsetDateTime {
    OffsetDateTime::now_utc() - WALL_CLOCK_STEP
}

// ---------------------------------------------------------------------------------
// Credential
// ---------------------------------------------------------------------------------

/// Mints a fresh agent credential for `cluster`: `kna_<id (simple)>_<43 base64url chars>`
/// from 32 bytes of OS randomness. Returns the credential (a secret) and its SHA-256.
pub fn mint_credential(cluster: ClusterId) -> (Zeroizing<String>, [u8; 32]) {
    use rand::RngCore as _;
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut());
    let token = Zeroizing::new(format!(
        "{AGENT_TOKEN_PREFIX}{}_{}",
        cluster.0.simple(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.as_ref())
    ));
    let hash = credential_hash(&token);
    (token, hash)
}

/// SHA-256 of a credential.
pub fn credential_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Mints a credential for `cluster` and makes it the only valid one at once (replacing,
/// i.e. revoking, the current one and any staged one). Returns the credential, to be
/// written only into the cluster's Secret. Bootstrap uses [`stage_credential`] instead.
pub async fn rotate_credential(
    store: &dyn Store,
    cluster: ClusterId,
) -> Result<Zeroizing<String>, StoreError> {
    let (token, hash) = mint_credential(cluster);
    let only = Credentials {
        current: Some(hash),
        staged: Vec::new(),
    };
    store
        .put_secret(cluster.0, CREDENTIAL_PURPOSE, &only.encode())
        .await?;
    Ok(token)
}

/// Most staged credentials kept per cluster (bootstraps whose operator has not used its
/// credential yet); staging another drops the oldest.
pub const MAX_STAGED_CREDENTIALS: usize = 4;

/// Attempts of a conditional write of a cluster's credentials that keeps losing races.
const CREDENTIAL_WRITE_ATTEMPTS: usize = 32;

/// The stored credentials of a cluster (hashes only): the current one, and the ones
/// bootstraps staged, oldest first. Stored as 32 bytes per hash, the current one first
/// (32 zero bytes before a first bootstrap's credential was used): a store written
/// before staging existed holds the current hash alone and reads the same.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Credentials {
    current: Option<[u8; 32]>,
    staged: Vec<[u8; 32]>,
}

impl Credentials {
    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(32) {
            return Err(StoreError::Internal(format!(
                "the stored agent credential has {} bytes, not a multiple of 32",
                bytes.len()
            )));
        }
        let mut hashes = bytes.chunks_exact(32).map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        });
        let current = hashes.next().filter(|h| h.iter().any(|b| *b != 0));
        Ok(Self {
            current,
            staged: hashes.collect(),
        })
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(32 * (1 + self.staged.len())));
        out.extend_from_slice(&self.current.unwrap_or([0u8; 32]));
        for h in &self.staged {
            out.extend_from_slice(h);
        }
        out
    }

    /// Whether `hash` is the current credential.
    fn is_current(&self, hash: &[u8; 32]) -> bool {
        self.current.is_some_and(|c| constant_time_eq(&c, hash))
    }

    /// The position of `hash` among the staged credentials (every one is compared).
    fn staged_position(&self, hash: &[u8; 32]) -> Option<usize> {
        let mut found = None;
        for (i, s) in self.staged.iter().enumerate() {
            if constant_time_eq(s, hash) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

/// Mints a credential for `cluster` and stages its hash: the current credential stays
/// valid, and the staged one becomes current (revoking the previous one) at its first
/// use by an agent. A bootstrap stages the credential **before** it applies the Secret,
/// so the Secret never holds a credential the manager does not know, and an apply that
/// fails (before or after the Secret) never locks the running operator out. Returns the
/// credential, to be written only into the cluster's Secret.
pub async fn stage_credential(
    store: &dyn Store,
    cluster: ClusterId,
) -> Result<Zeroizing<String>, StoreError> {
    let (token, hash) = mint_credential(cluster);
    for _ in 0..CREDENTIAL_WRITE_ATTEMPTS {
        match store
            .get_secret_versioned(cluster.0, CREDENTIAL_PURPOSE)
            .await
        {
            Ok((bytes, version)) => {
                let mut creds = Credentials::decode(&bytes)?;
                creds.staged.push(hash);
                if creds.staged.len() > MAX_STAGED_CREDENTIALS {
                    creds.staged.remove(0);
                }
                match store
                    .replace_secret(cluster.0, CREDENTIAL_PURPOSE, &creds.encode(), version)
                    .await
                {
                    Ok(_) => return Ok(token),
                    Err(StoreError::PreconditionFailed { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(StoreError::NotFound { .. }) => {
                let first = Credentials {
                    current: None,
                    staged: vec![hash],
                };
                if store
                    .put_secret_if_absent(cluster.0, CREDENTIAL_PURPOSE, &first.encode())
                    .await?
                {
                    return Ok(token);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict(format!(
        "the agent credentials of cluster {cluster} kept changing while a new one was staged; retry the bootstrap"
    )))
}

/// Makes the staged credential `hash` current (dropping it and every older staged one,
/// keeping newer ones) after an agent used it. `false` when it is no longer staged (a
/// newer credential was made current meanwhile: this one is revoked).
async fn promote_credential(
    store: &dyn Store,
    cluster: ClusterId,
    hash: &[u8; 32],
) -> Result<bool, StoreError> {
    for _ in 0..CREDENTIAL_WRITE_ATTEMPTS {
        let (bytes, version) = store
            .get_secret_versioned(cluster.0, CREDENTIAL_PURPOSE)
            .await?;
        let creds = Credentials::decode(&bytes)?;
        if creds.is_current(hash) {
            return Ok(true);
        }
        let Some(i) = creds.staged_position(hash) else {
            return Ok(false);
        };
        let promoted = Credentials {
            current: Some(*hash),
            staged: creds.staged[i + 1..].to_vec(),
        };
        match store
            .replace_secret(cluster.0, CREDENTIAL_PURPOSE, &promoted.encode(), version)
            .await
        {
            Ok(_) => {
                tracing::info!(cluster_id = %cluster, "the operator uses its new agent credential; the previous one is revoked");
                return Ok(true);
            }
            Err(StoreError::PreconditionFailed { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict(format!(
        "the agent credentials of cluster {cluster} kept changing; retry"
    )))
}

/// Whether two byte strings are equal, in time that depends on their length only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An authenticated agent: the cluster its credential belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agent {
    /// The agent's cluster.
    pub cluster: ClusterId,
}

const INVALID_CREDENTIAL: &str = "the agent credential is not valid (a new bootstrap rotated it, or the cluster was deleted); \
     use the token of the kubenova-agent Secret in kubenova-system, or bootstrap the cluster again";

impl Agent {
    /// Verifies an `Authorization` header value (KN-401 on any failure).
    pub async fn verify(store: &dyn Store, authorization: Option<&str>) -> ApiResult<Agent> {
        let Some(h) = authorization else {
            return Err(ApiError::unauthenticated(
                "agent routes need the cluster's agent credential: Authorization: Bearer kna_…",
            ));
        };
        let token = match h.trim().split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => {
                return Err(ApiError::unauthenticated(
                    "the Authorization header must use the Bearer scheme: Authorization: Bearer kna_…",
                ));
            }
        };
        let Some(cluster) = parse_agent_token(token) else {
            return Err(ApiError::unauthenticated(
                "agent routes accept only agent credentials (kna_…), not user tokens; \
                 use the token of the kubenova-agent Secret in kubenova-system",
            ));
        };
        let stored = match store.get_secret(cluster, CREDENTIAL_PURPOSE).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::unauthenticated(INVALID_CREDENTIAL));
            }
            Err(e) => return Err(e.into()),
        };
        let creds = Credentials::decode(&stored)?;
        let hash = credential_hash(token);
        let cluster = ClusterId(cluster);
        if creds.is_current(&hash) {
            return Ok(Agent { cluster });
        }
        // A credential staged by a bootstrap: its first use makes it current.
        if creds.staged_position(&hash).is_some()
            && promote_credential(store, cluster, &hash).await?
        {
            return Ok(Agent { cluster });
        }
        Err(ApiError::unauthenticated(INVALID_CREDENTIAL))
    }
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The middleware verified the credential already (and rate limited its cluster).
        if let Some(agent) = parts.extensions.get::<Agent>() {
            return Ok(*agent);
        }
        let h = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Agent::verify(state.store.as_ref(), h).await
    }
}

// ---------------------------------------------------------------------------------
// Cluster record helpers
// ---------------------------------------------------------------------------------

/// Read-modify-write of a cluster with optimistic retries (heartbeats, stale marking,
/// component deliveries and bootstrap outcomes may race). `change` returns false when
/// there is nothing to write.
pub(crate) async fn update_cluster_with(
    store: &dyn Store,
    id: ClusterId,
    opts: &WriteOptions<'_>,
    mut change: impl FnMut(&mut Cluster) -> bool,
) -> Result<Cluster, StoreError> {
    let mut attempts = 0;
    loop {
        // Past the record cache: a stale copy could make `change` see nothing to do
        // (e.g. miss a component request written through another replica).
        let mut c = store.get_cluster_uncached(id).await?;
        if !change(&mut c) {
            return Ok(c);
        }
        let expected = c.version;
        c.version = expected + 1;
        c.updated_at = OffsetDateTime::now_utc();
        match store.update_cluster(&c, expected, opts).await {
            Ok(()) => return Ok(c),
            Err(StoreError::PreconditionFailed { .. }) if attempts < 10 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// What a request's change to a cluster writes in the same transaction.
pub(crate) struct ClusterWrite<R> {
    /// The caller's result (e.g. the serialized response).
    pub result: R,
    /// The request's audit event.
    pub audit: kubenova_api::model::AuditEvent,
    /// The idempotency record of the response, if the request had a key.
    pub idempotency: Option<kubenova_store::IdempotencyRecord>,
}

/// Read-modify-write of a cluster on behalf of a request. `change` gets the freshly read
/// cluster, already at the next version and time, and the version that was read (for an
/// `If-Match` check); the cluster is written with the returned audit event and
/// idempotency record. A concurrent writer (a heartbeat, the stale task) makes it re-read
/// and apply `change` again, up to 10 times, unless `pinned` (the client sent `If-Match`,
/// so a newer version is the client's conflict: KN-412).
pub(crate) async fn write_cluster_for_request<R>(
    store: &dyn Store,
    id: ClusterId,
    pinned: bool,
    mut change: impl FnMut(&mut Cluster, i64) -> ApiResult<ClusterWrite<R>>,
) -> ApiResult<(Cluster, R)> {
    let mut attempts = 0;
    loop {
        let mut c = store.get_cluster(id).await?;
        let read = c.version;
        c.version = read + 1;
        c.updated_at = OffsetDateTime::now_utc();
        let w = change(&mut c, read)?;
        let opts = WriteOptions {
            audit: Some(&w.audit),
            idempotency: w.idempotency.as_ref(),
        };
        match store.update_cluster(&c, read, &opts).await {
            Ok(()) => return Ok((c, w.result)),
            Err(StoreError::PreconditionFailed { .. }) if !pinned && attempts < 10 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

fn stale_after(interval: Duration) -> time::Duration {
    time::Duration::try_from(interval * MISSED_HEARTBEATS).unwrap_or(time::Duration::minutes(3))
}

fn is_overdue(c: &Cluster, interval: Duration, now: OffsetDateTime) -> bool {
    c.status == ClusterStatus::Connected
        && c.last_heartbeat_at
            .is_none_or(|t| now - t > stale_after(interval))
}

/// The cluster as clients should see it: `connected` with heartbeats overdue by three
/// intervals is shown `stale` even before the background task records it.
pub fn present(mut c: Cluster, interval: Duration) -> Cluster {
    if is_overdue(&c, interval, OffsetDateTime::now_utc()) {
        c.status = ClusterStatus::Stale;
    }
    c
}

fn condition(type_: &str, status: ConditionStatus, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        last_transition_time: OffsetDateTime::now_utc(),
        observed_generation: None,
    }
}

/// Sets a condition, keeping its transition time when its status did not change.
fn set_condition(conds: &mut Vec<Condition>, mut cond: Condition) {
    if let Some(old) = conds.iter().find(|c| c.type_ == cond.type_)
        && old.status == cond.status
    {
        cond.last_transition_time = old.last_transition_time;
    }
    upsert_condition(conds, cond);
}

fn component_order(name: &str) -> usize {
    COMPONENTS
        .iter()
        .position(|n| *n == name)
        .unwrap_or(usize::MAX)
}

/// Marks `connected` clusters whose last heartbeat is older than three intervals as
/// `stale`; returns how many changed. Safe to run on several replicas at once.
pub async fn mark_stale(store: &dyn Store, interval: Duration) -> Result<usize, StoreError> {
    Ok(sweep_clusters(store, interval).await?.0)
}

/// [`mark_stale`], also returning every cluster as clients see it after the sweep (the
/// census of the `kubenova_clusters` and per-cluster metrics, see [`super::slo`]).
pub async fn sweep_clusters(
    store: &dyn Store,
    interval: Duration,
) -> Result<(usize, Vec<Cluster>), StoreError> {
    let mut params = ListParams::first(kubenova_store::MAX_PAGE_SIZE);
    let mut changed = 0;
    let mut all = Vec::new();
    loop {
        let page = store.list_clusters(&params).await?;
        let now = OffsetDateTime::now_utc();
        all.extend(page.items.iter().map(|c| present(c.clone(), interval)));
        for c in page.items.iter().filter(|c| is_overdue(c, interval, now)) {
            let mut did = false;
            let res = update_cluster_with(store, c.id, &WriteOptions::default(), |c| {
                if !is_overdue(c, interval, OffsetDateTime::now_utc()) {
                    return false;
                }
                c.status = ClusterStatus::Stale;
                let last = c
                    .last_heartbeat_at
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_else(|| "never".into());
                set_condition(
                    &mut c.conditions,
                    condition(
                        "AgentConnected",
                        ConditionStatus::False,
                        "HeartbeatsMissed",
                        format!(
                            "no heartbeat for {MISSED_HEARTBEATS} intervals of {} ms (last: {last}); the operator or its network is down",
                            interval.as_millis()
                        ),
                    ),
                );
                did = true;
                true
            })
            .await;
            match res {
                Ok(_) if did => {
                    tracing::warn!(cluster_id = %c.id, name = %c.name, "cluster heartbeats stopped: status stale");
                    changed += 1;
                }
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match page.next_cursor {
            Some(cursor) => params.cursor = Some(cursor),
            None => return Ok((changed, all)),
        }
    }
}

/// Runs [`mark_stale`] every heartbeat interval until aborted, sets the SLO metrics of
/// [`super::slo`] from what it read (cluster census, store backend, signing key age), and
/// deletes the expired logs and events requests (with their answers) at the same pace.
pub fn spawn_stale_task(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = state.config.agent_heartbeat_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep_clusters(state.store.as_ref(), interval).await {
                Ok((_, clusters)) => state
                    .runtime
                    .slo
                    .observe_clusters(&clusters, OffsetDateTime::now_utc()),
                Err(e) => tracing::warn!(error = %e, "marking stale clusters failed"),
            }
            super::slo::observe_store(&state).await;
            match state.store.purge_agent_requests(expiry_now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "deleted expired agent requests"),
                Err(e) => tracing::warn!(error = %e, "purging expired agent requests failed"),
            }
        }
    })
}

// ---------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(heartbeat))
        .routes(routes!(desired))
        .routes(routes!(report_status))
        .routes(routes!(upload_usage))
        .routes(routes!(requests))
        .routes(routes!(answer))
}

fn interval_seconds(d: Duration) -> u32 {
    u32::try_from(d.as_millis().div_ceil(1000))
        .unwrap_or(u32::MAX)
        .max(1)
}

fn check_heartbeat(hb: &Heartbeat) -> ApiResult<()> {
    let mut v = Validator::new();
    if hb.operator_version.trim().is_empty() {
        v.push("operatorVersion", "must not be empty");
    }
    v.max_len("operatorVersion", &hb.operator_version, 128);
    if let Some(k) = &hb.kubernetes_version {
        v.max_len("kubernetesVersion", k, 128);
    }
    let mut seen = BTreeSet::new();
    for (i, c) in hb.components.iter().enumerate() {
        if !COMPONENTS.contains(&c.name.as_str()) {
            v.push(
                format!("components[{i}].name"),
                format!("unknown component; use one of {}", COMPONENTS.join(", ")),
            );
        } else if !seen.insert(c.name.as_str()) {
            v.push(format!("components[{i}].name"), "is reported twice");
        }
        if let Some(ver) = &c.version {
            v.max_len(&format!("components[{i}].version"), ver, 128);
        }
    }
    if let Some(p) = &hb.proxy {
        if !p.url.starts_with("https://") || p.url.len() <= "https://".len() {
            v.push("proxy.url", "must be an https:// URL");
        }
        v.max_len("proxy.url", &p.url, 2048);
        if let Some(ca) = &p.ca_data {
            v.max_len("proxy.caData", ca, 64 * 1024);
            if base64::engine::general_purpose::STANDARD
                .decode(ca.trim())
                .is_err()
            {
                v.push("proxy.caData", "must be base64 PEM");
            }
        }
    }
    if let Some(d) = &hb.proxy_discovery {
        for (field, text) in [
            ("proxyDiscovery.urlSource", &d.url_source),
            ("proxyDiscovery.caSource", &d.ca_source),
            ("proxyDiscovery.problem", &d.problem),
            ("proxyDiscovery.note", &d.note),
        ] {
            if let Some(t) = text {
                v.max_len(field, t, 4096);
            }
        }
    }
    if hb.applied_revision < 0 {
        v.push("appliedRevision", "must not be negative");
    }
    Ok(v.finish()?)
}

/// The `CapsuleProxyDiscovered` condition from what the operator reports: `True` when it
/// found the endpoint and its CA (the message says where from, and any caveat), `False`
/// with its explanation otherwise (reason `EndpointNotFound` or `CaNotFound`).
fn proxy_condition(
    proxy: Option<&kubenova_api::model::ProxyEndpoint>,
    d: &kubenova_api::agent::ProxyDiscovery,
) -> Condition {
    let source = |s: &Option<String>| s.clone().unwrap_or_else(|| "unknown".into());
    match proxy {
        Some(p) if p.ca_data.is_some() && d.problem.is_none() => condition(
            super::kubeconfigs::PROXY_CONDITION,
            ConditionStatus::True,
            "Discovered",
            format!(
                "Capsule Proxy at {} (URL from {}; CA from {}){}",
                p.url,
                source(&d.url_source),
                source(&d.ca_source),
                d.note
                    .as_ref()
                    .map(|n| format!("; {n}"))
                    .unwrap_or_default()
            ),
        ),
        found => condition(
            super::kubeconfigs::PROXY_CONDITION,
            ConditionStatus::False,
            if found.is_some() {
                "CaNotFound"
            } else {
                "EndpointNotFound"
            },
            d.problem
                .clone()
                .unwrap_or_else(|| "the operator found no Capsule Proxy endpoint with a CA".into()),
        ),
    }
}

/// Merges reported component states over the stored ones. A request the operator has
/// not acknowledged survives: one never delivered (phase `requested`) always, and one
/// delivered (phase `installing`, carrying its request id) until the heartbeat lists its
/// id in `acknowledged` — so a failed apply, an operator restart or a lost leadership
/// cannot let a report (`absent`) overwrite it. An operator that does not acknowledge
/// (`acknowledged` is `None`) has its report replace a delivered request.
fn merge_components(
    stored: &[ComponentState],
    reported: &[ComponentState],
    acknowledged: Option<&[uuid::Uuid]>,
) -> Vec<ComponentState> {
    let mut out: Vec<ComponentState> = reported.to_vec();
    for o in &mut out {
        // Request ids are the manager's: a report never sets one.
        o.request_id = None;
    }
    for s in stored.iter().filter(|s| {
        s.phase == ComponentPhase::Requested
            || match (s.request_id, acknowledged) {
                (Some(id), Some(acks)) => {
                    s.phase == ComponentPhase::Installing && !acks.contains(&id)
                }
                _ => false,
            }
    }) {
        match out.iter_mut().find(|o| o.name == s.name) {
            Some(o) => *o = s.clone(),
            None => out.push(s.clone()),
        }
    }
    out.sort_by_key(|s| component_order(&s.name));
    out
}

/// The operator's hello and heartbeat.
#[utoipa::path(
    post,
    path = "/api/v1/agent/heartbeat",
    tag = "agent",
    operation_id = "agentHeartbeat",
    request_body(content = Heartbeat, description = "Versions, observed capabilities, component states and the Capsule Proxy endpoint",
        example = json!({"operatorVersion": "0.1.0", "kubernetesVersion": "v1.36.0",
            "capabilities": {"certManager": true, "capsule": true, "capsuleProxy": true, "kubeVela": true},
            "components": [{"name": "capsule", "version": "0.14.0", "phase": "ready"}],
            "proxy": {"url": "https://capsule-proxy.example.com:9001", "caData": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="},
            "appliedRevision": 12})),
    responses(
        (status = 200, description = "Recorded; the cluster is `connected`", body = HeartbeatReply,
            example = json!({"clusterId": "11111111-1111-1111-1111-111111111111", "status": "connected", "intervalSeconds": 30, "revision": 12})),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing an object at line 1 column 20"})),
        (status = 401, description = "No agent credential, a user token, or a rotated credential", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "agent routes accept only agent credentials (kna_…), not user tokens; use the token of the kubenova-agent Secret in kubenova-system"})),
        (status = 422, description = "Invalid fields (unknown component, proxy URL not https)", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: proxy.url: must be an https:// URL",
                "details": {"violations": [{"field": "proxy.url", "reason": "must be an https:// URL"}]}})),
    ),
    security(("agentCredential" = []))
)]
async fn heartbeat(
    State(st): State<AppState>,
    agent: Agent,
    KnJson(mut hb): KnJson<Heartbeat>,
) -> ApiResult<Response> {
    // A component's message is fed from installer output: cut, never refused, so a
    // verbose failure cannot keep the cluster's heartbeats out.
    for c in &mut hb.components {
        if c.message.len() > MAX_STATUS_MESSAGE_BYTES {
            c.message = bound_text(&c.message, MAX_STATUS_MESSAGE_BYTES);
        }
    }
    check_heartbeat(&hb)?;
    let mut previous = ClusterStatus::Connected;
    let mut changed = false;
    let now = OffsetDateTime::now_utc();
    let c = update_cluster_with(
        st.store.as_ref(),
        agent.cluster,
        &WriteOptions::default(),
        |c| {
            let before = c.clone();
            previous = c.status;
            c.status = ClusterStatus::Connected;
            c.last_heartbeat_at = Some(now);
            c.operator_version = Some(hb.operator_version.clone());
            c.capabilities = hb.capabilities;
            c.components = merge_components(
                &c.components,
                &hb.components,
                hb.acknowledged_requests.as_deref(),
            );
            if let Some(p) = &hb.proxy {
                c.proxy = Some(p.clone());
            }
            if let Some(d) = &hb.proxy_discovery {
                set_condition(&mut c.conditions, proxy_condition(hb.proxy.as_ref(), d));
            }
            let k8s = hb
                .kubernetes_version
                .as_deref()
                .map(|k| format!(" on Kubernetes {k}"))
                .unwrap_or_default();
            set_condition(
                &mut c.conditions,
                condition(
                    "AgentConnected",
                    ConditionStatus::True,
                    "Heartbeat",
                    format!("operator {}{k8s} is heartbeating", hb.operator_version),
                ),
            );
            if c.conditions
                .iter()
                .any(|x| x.type_ == "Bootstrapped" && x.status != ConditionStatus::True)
            {
                set_condition(
                    &mut c.conditions,
                    condition(
                        "Bootstrapped",
                        ConditionStatus::True,
                        "OperatorConnected",
                        "the operator is running and connected".into(),
                    ),
                );
            }
            // Only a change of what the cluster says is a new version; the heartbeat
            // time alone is recorded below without one.
            let mut unchanged = c.clone();
            unchanged.last_heartbeat_at = before.last_heartbeat_at;
            changed = unchanged != before;
            changed
        },
    )
    .await?;
    if !changed {
        st.store
            .record_cluster_heartbeat(agent.cluster, now)
            .await?;
    }
    // The change log only grows with writes; the agent's applied revision says what it no
    // longer needs. Compaction is always safe (an older cursor gets a snapshot), so a
    // failure here only delays it to the next heartbeat.
    if hb.applied_revision > KEPT_CHANGES
        && let Err(e) = st
            .store
            .compact_changes(agent.cluster, hb.applied_revision - KEPT_CHANGES)
            .await
    {
        tracing::warn!(cluster_id = %agent.cluster, error = %e, "compacting the change log failed");
    }
    if previous != ClusterStatus::Connected {
        tracing::info!(cluster_id = %c.id, name = %c.name, from = previous.as_str(), operator_version = %hb.operator_version, "agent connected");
    }
    let revision = st.store.cluster_revision(agent.cluster).await?;
    Ok(json_response(
        StatusCode::OK,
        &HeartbeatReply {
            cluster_id: agent.cluster.0,
            status: c.status,
            interval_seconds: interval_seconds(st.config.agent_heartbeat_interval),
            revision,
        },
        None,
        None,
        false,
    ))
}

/// `?cursor=&waitSeconds=` of the long-poll.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct DesiredQuery {
    /// The revision of the agent's last answer (0 or absent: a full snapshot).
    pub cursor: Option<i64>,
    /// How long to wait for a change when there is none (default 30, at most 60).
    pub wait_seconds: Option<u64>,
}

async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, StoreError>
where
    F: FnMut(ListParams) -> Fut,
    Fut: std::future::Future<Output = Result<kubenova_store::Page<T>, StoreError>>,
{
    let mut out = Vec::new();
    let mut params = ListParams::first(kubenova_store::MAX_PAGE_SIZE);
    loop {
        let page = fetch(params.clone()).await?;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => params.cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// The complete desired set of a cluster at `revision` (read after taking the revision,
/// so nothing older is missed; newer changes show up again as deltas, harmlessly).
///
/// Three batched, paged reads (tenants, then projects, then apps of the cluster) instead
/// of one query per tenant and per project, assembled in memory in the same order as a
/// per-parent walk: tenants by id; projects by tenant, then id; apps by tenant, project,
/// then id. Lists never go through the record cache, so a snapshot is always committed
/// content. A project or app whose parent was created after that parent's list was read
/// is left out, as the per-parent walk would: its creation is newer than `revision` and
/// comes as a delta.
async fn snapshot(st: &AppState, cluster: ClusterId, revision: i64) -> ApiResult<DesiredState> {
    let store = st.store.as_ref();
    let tenants = all_pages(|p| async move { store.list_tenants(Some(cluster), &p).await }).await?;
    let all_projects =
        all_pages(|p| async move { store.list_cluster_projects(cluster, &p).await }).await?;
    let all_apps = all_pages(|p| async move { store.list_cluster_apps(cluster, &p).await }).await?;

    // Children grouped by parent, each group in id order (as listed).
    let mut projects_of: HashMap<TenantId, Vec<Project>> = HashMap::new();
    for p in all_projects {
        projects_of.entry(p.tenant_id).or_default().push(p);
    }
    let mut apps_of: HashMap<ProjectId, Vec<App>> = HashMap::new();
    for a in all_apps {
        apps_of.entry(a.project_id).or_default().push(a);
    }

    let mut objects = Vec::with_capacity(tenants.len());
    let mut projects = Vec::new();
    let mut apps = Vec::new();
    for t in &tenants {
        objects.push(DesiredObject::Tenant {
            id: t.id.0,
            object: Box::new(nova_tenant(t, &st.catalog)),
        });
        for p in projects_of.remove(&t.id).unwrap_or_default() {
            for a in apps_of.remove(&p.id).unwrap_or_default() {
                apps.push(DesiredObject::App {
                    id: a.id.0,
                    object: Box::new(nova_app(&a, &p, t)),
                });
            }
            projects.push(DesiredObject::Project {
                id: p.id.0,
                object: Box::new(nova_project(&p, t)),
            });
        }
    }
    objects.reserve(projects.len() + apps.len());
    objects.extend(projects);
    objects.extend(apps);
    if kubenova_telemetry::propagation::is_active() {
        // The trace of each object's latest write, when the change log still holds the
        // cluster's whole history (a young cluster's first answer): one bounded read.
        if let Some(changes) = st
            .store
            .changes_since(cluster, 0, MAX_DELTA_CHANGES)
            .await?
            .filter(|c| c.len() < MAX_DELTA_CHANGES as usize)
        {
            let mut latest: HashMap<uuid::Uuid, Option<&str>> = HashMap::new();
            for ch in &changes {
                latest.insert(ch.object_id, ch.trace_parent.as_deref());
            }
            for o in &mut objects {
                if let Some(Some(tp)) = latest.get(&o.object_ref().id) {
                    o.set_traceparent(tp);
                }
            }
        }
    }
    Ok(DesiredState {
        revision,
        snapshot: true,
        objects,
        deleted: Vec::new(),
        components: Vec::new(),
    })
}

/// Reads records by id with a per-call cache; `None` when gone or of another cluster.
/// Reads go past the store's record cache: a desired-state notification from another
/// replica can arrive before this replica's cache invalidation, and the agent must get
/// the committed content of the revision it is told.
struct Reader<'a> {
    store: &'a dyn Store,
    cluster: ClusterId,
    tenants: HashMap<TenantId, Option<Tenant>>,
    projects: HashMap<ProjectId, Option<Project>>,
}

fn gone<T>(r: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Reader<'_> {
    async fn tenant(&mut self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        if let Some(t) = self.tenants.get(&id) {
            return Ok(t.clone());
        }
        let t = gone(self.store.get_tenant_uncached(id).await)?
            .filter(|t| t.cluster_id == self.cluster);
        self.tenants.insert(id, t.clone());
        Ok(t)
    }

    async fn project(&mut self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        if let Some(p) = self.projects.get(&id) {
            return Ok(p.clone());
        }
        let p = gone(self.store.get_project_uncached(id).await)?
            .filter(|p| p.cluster_id == self.cluster);
        self.projects.insert(id, p.clone());
        Ok(p)
    }
}

/// The changes after `cursor` as objects to apply and deletions; `None` when the cursor
/// was compacted away (the caller answers with a snapshot).
async fn delta(st: &AppState, cluster: ClusterId, cursor: i64) -> ApiResult<Option<DesiredState>> {
    let Some(changes) = st
        .store
        .changes_since(cluster, cursor, MAX_DELTA_CHANGES)
        .await?
    else {
        return Ok(None);
    };
    // Called when the revision is past the cursor; no change record means the records
    // are not there to answer from: a snapshot answers instead.
    let Some(last) = changes.last() else {
        return Ok(None);
    };
    let revision = last.revision;
    // The last change of each object decides (and carries the trace of its write).
    let mut latest: BTreeMap<(ObjectKind, uuid::Uuid), (bool, Option<&str>)> = BTreeMap::new();
    for ch in &changes {
        let kind = match ch.kind {
            kubenova_store::ObjectKind::Tenant => ObjectKind::Tenant,
            kubenova_store::ObjectKind::Project => ObjectKind::Project,
            kubenova_store::ObjectKind::App => ObjectKind::App,
        };
        latest.insert(
            (kind, ch.object_id),
            (ch.deleted, ch.trace_parent.as_deref()),
        );
    }
    let mut r = Reader {
        store: st.store.as_ref(),
        cluster,
        tenants: HashMap::new(),
        projects: HashMap::new(),
    };
    let mut objects = Vec::new();
    let mut deleted = Vec::new();
    // BTreeMap order: tenants, then projects, then apps.
    for ((kind, id), (was_deleted, trace_parent)) in latest {
        let obj = if was_deleted {
            None
        } else {
            match kind {
                ObjectKind::Tenant => {
                    r.tenant(TenantId(id))
                        .await?
                        .map(|t| DesiredObject::Tenant {
                            id,
                            object: Box::new(nova_tenant(&t, &st.catalog)),
                        })
                }
                ObjectKind::Project => match r.project(ProjectId(id)).await? {
                    Some(p) => r
                        .tenant(p.tenant_id)
                        .await?
                        .map(|t| DesiredObject::Project {
                            id,
                            object: Box::new(nova_project(&p, &t)),
                        }),
                    None => None,
                },
                ObjectKind::App => {
                    match gone(st.store.get_app(AppId(id)).await)?
                        .filter(|a| a.cluster_id == cluster)
                    {
                        Some(a) => {
                            match (r.project(a.project_id).await?, r.tenant(a.tenant_id).await?) {
                                (Some(p), Some(t)) => Some(DesiredObject::App {
                                    id,
                                    object: Box::new(nova_app(&a, &p, &t)),
                                }),
                                _ => None,
                            }
                        }
                        None => None,
                    }
                }
            }
        };
        match obj {
            Some(mut o) => {
                if let Some(tp) = trace_parent {
                    o.set_traceparent(tp);
                }
                objects.push(o)
            }
            // Deleted (or deleted since the change was recorded): prune it.
            None => deleted.push(ObjectRef { kind, id }),
        }
    }
    Ok(Some(DesiredState {
        revision,
        snapshot: false,
        objects,
        deleted,
        components: Vec::new(),
    }))
}

/// The component requests the operator has not acknowledged: those not yet delivered
/// (phase `requested`, marked `installing` — "delivered; waiting for the operator" — on
/// the way out) and those delivered whose id no heartbeat has acknowledged yet. Each is
/// sent on every desired answer until acknowledged; the operator skips ids it has taken.
async fn deliver_components(st: &AppState, cluster: ClusterId) -> ApiResult<Vec<ComponentRequest>> {
    let mut out = Vec::new();
    update_cluster_with(st.store.as_ref(), cluster, &WriteOptions::default(), |c| {
        out.clear();
        let mut changed = false;
        let now = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        for s in c.components.iter_mut().filter(|s| {
            s.phase == ComponentPhase::Requested
                || (s.phase == ComponentPhase::Installing && s.request_id.is_some())
        }) {
            out.push(ComponentRequest {
                component: s.name.clone(),
                version: s.version.clone(),
                id: s.request_id,
            });
            if s.phase == ComponentPhase::Requested {
                s.phase = ComponentPhase::Installing;
                s.message = format!(
                    "request delivered to the operator at {now}; waiting for its acknowledgement and report"
                );
                changed = true;
            }
        }
        changed
    })
    .await?;
    Ok(out)
}

fn has_pending_requests(c: &Cluster) -> bool {
    c.components
        .iter()
        .any(|s| s.phase == ComponentPhase::Requested)
}

/// Long-poll of the cluster's desired state.
#[utoipa::path(
    get,
    path = "/api/v1/agent/desired",
    tag = "agent",
    operation_id = "agentDesiredState",
    params(DesiredQuery),
    responses(
        (status = 200, description = "A snapshot (cursor 0 or compacted), the changes after the cursor, or — after the wait without a change — \
            the same revision with no objects. Component (re)install requests ride along and make a waiting poll return.", body = DesiredState,
            example = json!({"revision": 13, "snapshot": false, "objects": [],
                "deleted": [{"kind": "tenant", "id": "22222222-2222-2222-2222-222222222222"}], "components": []})),
        (status = 400, description = "A malformed query parameter", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "bad query parameter: Failed to deserialize query string: cursor: invalid digit found in string"})),
        (status = 401, description = "No agent credential, a user token, or a rotated credential", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "agent routes need the cluster's agent credential: Authorization: Bearer kna_…"})),
        (status = 422, description = "cursor negative or waitSeconds above 60", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: waitSeconds: must be at most 60 (got 120)",
                "details": {"violations": [{"field": "waitSeconds", "reason": "must be at most 60 (got 120)"}]}})),
    ),
    security(("agentCredential" = []))
)]
async fn desired(State(st): State<AppState>, agent: Agent, uri: Uri) -> ApiResult<Response> {
    let q: DesiredQuery = super::clusters::query(&uri)?;
    let cursor = q.cursor.unwrap_or(0);
    let wait = q.wait_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    if cursor < 0 {
        return Err(ApiError::invalid("cursor", "must not be negative"));
    }
    if wait > MAX_WAIT_SECONDS {
        return Err(ApiError::invalid(
            "waitSeconds",
            format!("must be at most {MAX_WAIT_SECONDS} (got {wait})"),
        ));
    }
    let cluster = agent.cluster;
    // Subscribe before the first read so no change between read and wait is missed.
    let mut sub = st.changes.subscribe(cluster);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut state = loop {
        let revision = st.store.cluster_revision(cluster).await?;
        // Cursor 0 asks for a snapshot; while the cluster has no change at all (revision
        // 0) the empty snapshot is sent only after the wait, so an idle agent does not spin.
        if (cursor == 0 && revision > 0) || cursor > revision {
            break snapshot(&st, cluster, revision).await?;
        }
        if revision > cursor {
            match delta(&st, cluster, cursor).await? {
                Some(d) => break d,
                None => break snapshot(&st, cluster, revision).await?,
            }
        }
        if has_pending_requests(&st.store.get_cluster_uncached(cluster).await?)
            || sub.wait(deadline).await == kubenova_store::notify::Woken::Deadline
        {
            // Nothing changed after the cursor (for cursor 0: the complete, empty set).
            break DesiredState {
                revision: cursor,
                snapshot: cursor == 0,
                ..DesiredState::default()
            };
        }
    };
    state.components = deliver_components(&st, cluster).await?;
    Ok(json_response(StatusCode::OK, &state, None, None, false))
}

/// Whether a report may replace the stored status: not older, and different (checked
/// again by the store inside its write, see [`kubenova_store::older_report`]).
fn is_news(stored: &ObjectStatus, reported: &ObjectStatus) -> bool {
    !kubenova_store::older_report(stored, reported) && reported != stored
}

/// Whether the app record has not changed after `observed` (so a report at `observed`
/// describes its current spec); unknown (compacted) counts as not current.
async fn reflects_current(st: &AppState, app: &App, observed: i64) -> Result<bool, StoreError> {
    covers_latest_write(st, app.cluster_id, app.id.0, observed).await
}

/// Whether no write of `object` bumped the cluster's revision after `observed` (a report
/// at `observed` covers the object's latest write); unknown (compacted) counts as not.
async fn covers_latest_write(
    st: &AppState,
    cluster: ClusterId,
    object: uuid::Uuid,
    observed: i64,
) -> Result<bool, StoreError> {
    Ok(matches!(
        last_write_after(st, cluster, object, observed).await?,
        Some(None)
    ))
}

/// The revision of the newest write of `object` after revision `since`: `Some(None)`
/// when there is none, `None` when unknown (the log was compacted past `since`).
async fn last_write_after(
    st: &AppState,
    cluster: ClusterId,
    object: uuid::Uuid,
    mut since: i64,
) -> Result<Option<Option<i64>>, StoreError> {
    let mut last = None;
    loop {
        let Some(changes) = st
            .store
            .changes_since(cluster, since, MAX_DELTA_CHANGES)
            .await?
        else {
            return Ok(None);
        };
        if let Some(c) = changes.iter().rev().find(|c| c.object_id == object) {
            last = Some(c.revision);
        }
        match changes.last() {
            Some(l) if changes.len() == MAX_DELTA_CHANGES as usize => since = l.revision,
            _ => return Ok(Some(last)),
        }
    }
}

/// Moves the app's deploy/rollback runs of the deployed revision along with a report.
async fn advance_runs(st: &AppState, app: &App, report: &ObjectReport) -> Result<(), StoreError> {
    let Some(deployed) = app.deployed_revision else {
        return Ok(());
    };
    let failed = report.vela_phase.as_deref() == Some("workflowFailed");
    let target = match (report.status.phase, failed) {
        (_, true) => RunStatus::Failed,
        (Phase::Ready, false) => RunStatus::Succeeded,
        (Phase::Reconciling, false) => RunStatus::Running,
        _ => return Ok(()),
    };
    let store = st.store.as_ref();
    let app_id = app.id;
    // Only the runs still waiting, never the app's finished history.
    let runs =
        all_pages(|p| async move { store.list_active_workflow_runs(app_id, &p).await }).await?;
    let pending: Vec<_> = runs
        .into_iter()
        .filter(|r| matches!(r.status, RunStatus::Requested | RunStatus::Running))
        .filter(|r| {
            matches!(r.inputs["action"].as_str(), Some("deploy" | "rollback"))
                && r.inputs["revision"].as_i64() == Some(deployed)
        })
        .filter(|r| !(r.status == RunStatus::Running && target == RunStatus::Running))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let observed = report.status.observed_revision.unwrap_or(0);
    if !reflects_current(st, app, observed).await? {
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    for mut run in pending {
        run.status = target;
        if matches!(target, RunStatus::Succeeded | RunStatus::Failed) {
            run.ended_at = Some(now);
            run.result = Some(json!({
                "phase": report.status.phase,
                "velaPhase": report.vela_phase,
                "observedRevision": observed,
                "message": report.status.message,
            }));
        }
        match store.update_workflow_run(&run).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if matches!(target, RunStatus::Succeeded | RunStatus::Failed) {
        // Runs finished: keep the newest finished ones only.
        let pruned = store
            .prune_workflow_runs(app_id, st.config.workflow_run_retention)
            .await?;
        if pruned > 0 {
            tracing::debug!(app_id = %app_id, pruned, "deleted the oldest finished workflow runs");
        }
    }
    Ok(())
}

/// Records `kubenova_agent_sync_lag_seconds` for a report about to be stored: when it
/// is `ready` and covers the object's latest write while the stored status did not (so
/// each write is measured once, and a resync re-reporting an unchanged object is not),
/// the lag is the time since the object's last API write (`written_at`, its `updatedAt`:
/// status reports never change it). Store errors only skip the sample.
async fn observe_sync_lag(
    st: &AppState,
    cluster: ClusterId,
    item: &ObjectReport,
    stored: &ObjectStatus,
    written_at: OffsetDateTime,
) {
    let (Phase::Ready, Some(observed)) = (item.status.phase, item.status.observed_revision) else {
        return;
    };
    // One pass over the log: from the stored report's revision when it was ready (did it
    // already cover the latest write?), else from the reported one.
    let prev = match (stored.phase, stored.observed_revision) {
        (Phase::Ready, Some(prev)) if prev <= observed => Some(prev),
        _ => None,
    };
    let Ok(Some(last)) = last_write_after(st, cluster, item.id, prev.unwrap_or(observed)).await
    else {
        return;
    };
    let measure = match (prev, last) {
        // Ready before, and nothing written since: a resync, not a new sync.
        (Some(_), None) => false,
        (Some(_), Some(last)) => last <= observed,
        (None, last) => last.is_none(),
    };
    if measure {
        let kind = match item.kind {
            ObjectKind::Tenant => "tenant",
            ObjectKind::Project => "project",
            ObjectKind::App => "app",
        };
        st.runtime.slo.observe_sync_lag(kind, written_at);
    }
}

/// Stores one report if it is news. Tenants and projects are read past the record cache:
/// judged on a stale copy (another replica's write whose invalidation has not arrived),
/// a report that differs from the committed status could be ignored as unchanged.
async fn apply_report(st: &AppState, cluster: ClusterId, item: &ObjectReport) -> ApiResult<bool> {
    let store = st.store.as_ref();
    match item.kind {
        ObjectKind::Tenant => {
            let id = TenantId(item.id);
            let Some(t) = gone(store.get_tenant_uncached(id).await)? else {
                return Ok(false);
            };
            if t.cluster_id != cluster || !is_news(&t.status, &item.status) {
                return Ok(false);
            }
            // The store compares again inside its conditional write: a newer report that
            // landed since the read above wins, and this one is ignored.
            match gone(store.set_tenant_status(id, &item.status).await)? {
                Some(stored) if stored.status == item.status => {}
                _ => return Ok(false),
            }
            observe_sync_lag(st, cluster, item, &t.status, t.updated_at).await;
        }
        ObjectKind::Project => {
            let id = ProjectId(item.id);
            let Some(p) = gone(store.get_project_uncached(id).await)? else {
                return Ok(false);
            };
            if p.cluster_id != cluster || !is_news(&p.status, &item.status) {
                return Ok(false);
            }
            match gone(store.set_project_status(id, &item.status).await)? {
                Some(stored) if stored.status == item.status => {}
                _ => return Ok(false),
            }
            observe_sync_lag(st, cluster, item, &p.status, p.updated_at).await;
        }
        ObjectKind::App => {
            let id = AppId(item.id);
            let Some(a) = gone(store.get_app(id).await)? else {
                return Ok(false);
            };
            let phase_changed = item.vela_phase.is_some() && a.vela_phase != item.vela_phase;
            let newer = item.status.observed_revision.unwrap_or(0)
                >= a.status.observed_revision.unwrap_or(0);
            if a.cluster_id != cluster
                || !(is_news(&a.status, &item.status) || (newer && phase_changed))
            {
                return Ok(false);
            }
            let vela = item.vela_phase.as_deref().or(a.vela_phase.as_deref());
            let updated = match gone(store.set_app_status(id, &item.status, vela).await)? {
                Some(stored)
                    if stored.status == item.status && stored.vela_phase.as_deref() == vela =>
                {
                    stored
                }
                _ => return Ok(false),
            };
            observe_sync_lag(st, cluster, item, &a.status, a.updated_at).await;
            advance_runs(st, &updated, item).await?;
        }
    }
    Ok(true)
}

/// Per-object observed status from the operator.
#[utoipa::path(
    post,
    path = "/api/v1/agent/status",
    tag = "agent",
    operation_id = "agentReportStatus",
    request_body(content = StatusReport, description = "Observed status of tenants, projects and apps of the agent's cluster (at most 1000)",
        example = json!({"items": [{"kind": "tenant", "id": "22222222-2222-2222-2222-222222222222",
            "status": {"phase": "ready", "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}], "observedRevision": 12}}]})),
    responses(
        (status = 200, description = "Stored reports and ignored ones (unchanged, older than stored, or for records not of this cluster or gone); \
            messages longer than 4096 bytes are stored cut, ending with `… [N bytes cut]`", body = StatusReply,
            example = json!({"applied": 1, "ignored": 0})),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing an object at line 1 column 9"})),
        (status = 401, description = "No agent credential, a user token, or a rotated credential", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "agent routes need the cluster's agent credential: Authorization: Bearer kna_…"})),
        (status = 422, description = "More than 1000 reports (over-long messages, reasons and condition lists are cut to their bounds, not refused)", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: items: must contain at most 1000 reports (got 1001)",
                "details": {"violations": [{"field": "items", "reason": "must contain at most 1000 reports (got 1001)"}]}})),
    ),
    security(("agentCredential" = []))
)]
async fn report_status(
    State(st): State<AppState>,
    agent: Agent,
    KnJson(mut report): KnJson<StatusReport>,
) -> ApiResult<Response> {
    if report.items.len() > MAX_REPORTS {
        return Err(ApiError::invalid(
            "items",
            format!(
                "must contain at most {MAX_REPORTS} reports (got {})",
                report.items.len()
            ),
        ));
    }
    // Over-long text is cut item by item, never refused for the whole batch: one
    // verbose object must not hold back the status of every other object of the cluster.
    for item in &mut report.items {
        if item.bound() {
            tracing::debug!(cluster_id = %agent.cluster, kind = ?item.kind, id = %item.id,
                "status report cut to the stored bounds");
        }
    }
    let mut reply = StatusReply::default();
    for item in &report.items {
        if apply_report(&st, agent.cluster, item).await? {
            reply.applied += 1;
        } else {
            reply.ignored += 1;
        }
    }
    Ok(json_response(StatusCode::OK, &reply, None, None, false))
}

/// Hourly usage of the agent's cluster; idempotent per (cluster, tenant, project, hour).
#[utoipa::path(
    post,
    path = "/api/v1/agent/usage",
    tag = "agent",
    operation_id = "agentUploadUsage",
    request_body(content = Vec<UsageRecord>, description = "Hourly records, all of the agent's cluster",
        example = json!([{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222",
            "hour": "2026-01-01T10:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64,
            "loadBalancers": 1, "namespaces": 3, "pods": 12, "apps": 2}])),
    responses(
        (status = 204, description = "Stored (inserted or replaced)"),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing a list at line 1 column 1"})),
        (status = 401, description = "No agent credential, a user token, or a rotated credential", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "agent routes need the cluster's agent credential: Authorization: Bearer kna_…"})),
        (status = 403, description = "A record names another cluster", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "records[0].clusterId: an agent uploads usage of its own cluster only"})),
        (status = 422, description = "Invalid records, unknown tenant/project of this cluster, hours not whole or in the future, requests beyond the reported clusterCapacity", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: records[0].tenantId: tenant 22222222-2222-2222-2222-222222222222 does not exist in cluster 11111111-1111-1111-1111-111111111111",
                "details": {"violations": [{"field": "records[0].tenantId", "reason": "tenant 22222222-2222-2222-2222-222222222222 does not exist in cluster 11111111-1111-1111-1111-111111111111"}]}})),
    ),
    security(("agentCredential" = []))
)]
async fn upload_usage(
    State(st): State<AppState>,
    agent: Agent,
    KnJson(records): KnJson<Vec<UsageRecord>>,
) -> ApiResult<Response> {
    if let Some(i) = records.iter().position(|r| r.cluster_id != agent.cluster) {
        return Err(ApiError::forbidden(format!(
            "records[{i}].clusterId: an agent uploads usage of its own cluster only"
        )));
    }
    super::usage::check_batch(&st, &records).await?;
    st.store.upsert_usage(&records).await?;
    st.runtime.slo.record_usage_upload(agent.cluster);
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------
// Logs and events: the relay through the channel
// ---------------------------------------------------------------------------------

/// `?waitSeconds=` of the requests long-poll.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct RequestsQuery {
    /// How long to wait for a request when there is none (default 30, at most 60).
    pub wait_seconds: Option<u64>,
}

/// Long-poll of the logs and events requests of the agent's cluster.
#[utoipa::path(
    get,
    path = "/api/v1/agent/requests",
    tag = "agent",
    operation_id = "agentRequests",
    params(RequestsQuery),
    responses(
        (status = 200, description = "The requests not handed over yet (each once, oldest first, at most 16), as soon as there is one; \
            none after the wait. The namespace of each is the app's project namespace, from the manager's records.", body = AgentRequests,
            example = json!({"requests": [{"id": "77777777-7777-4777-8777-777777777777", "kind": "logs",
                "appId": "44444444-4444-4444-4444-444444444444", "app": "web", "namespace": "acme-shop-1a2b3c4d",
                "components": ["web"], "logs": {"component": "web", "tailLines": 100, "previous": false, "follow": false, "followSeconds": 0}}]})),
        (status = 400, description = "A malformed query parameter", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "bad query parameter: Failed to deserialize query string: waitSeconds: invalid digit found in string"})),
        (status = 401, description = "No agent credential, a user token, or a rotated credential", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "agent routes need the cluster's agent credential: Authorization: Bearer kna_…"})),
        (status = 422, description = "waitSeconds above 60", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: waitSeconds: must be at most 60 (got 120)",
                "details": {"violations": [{"field": "waitSeconds", "reason": "must be at most 60 (got 120)"}]}})),
    ),
    security(("agentCredential" = []))
)]
async fn requests(State(st): State<AppState>, agent: Agent, uri: Uri) -> ApiResult<Response> {
    let q: RequestsQuery = super::clusters::query(&uri)?;
    let wait = q.wait_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    if wait > MAX_WAIT_SECONDS {
        return Err(ApiError::invalid(
            "waitSeconds",
            format!("must be at most {MAX_WAIT_SECONDS} (got {wait})"),
        ));
    }
    let cluster = agent.cluster;
    // Subscribe before the first read so that no request between read and wait is missed.
    let mut sub = st.changes.subscribe_requests(cluster);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let docs = st
            .store
            .claim_agent_requests(cluster, expiry_now(), MAX_REQUESTS_PER_POLL)
            .await?;
        if !docs.is_empty() {
            let requests = docs
                .into_iter()
                .filter_map(|d| match serde_json::from_value::<AgentRequest>(d) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(cluster_id = %cluster, error = %e, "a stored agent request does not decode; dropped");
                        None
                    }
                })
                .collect();
            return Ok(json_response(
                StatusCode::OK,
                &AgentRequests { requests },
                None,
                None,
                false,
            ));
        }
        if sub.wait(deadline).await == Woken::Deadline {
            return Ok(json_response(
                StatusCode::OK,
                &AgentRequests::default(),
                None,
                None,
                false,
            ));
        }
    }
}

fn request_gone(id: uuid::Uuid) -> ApiError {
    KnError::new(
        ErrorCode::NotFound,
        format!(
            "agent request {id} not found for this cluster: it does not exist, belongs to another cluster, expired, \
             or its caller stopped waiting; stop answering it"
        ),
    )
    .into()
}

/// An answer (or one chunk of a followed log) to a request of the agent's cluster.
#[utoipa::path(
    post,
    path = "/api/v1/agent/answers",
    tag = "agent",
    operation_id = "agentAnswer",
    request_body(content = AgentAnswer, description = "The answer, or the next chunk of a followed log (chunks numbered from 0, the last one `done`)",
        example = json!({"requestId": "77777777-7777-4777-8777-777777777777", "seq": 0, "done": true,
            "pods": [{"pod": "web-6d8f7c9b5-x2x7q", "container": "web", "lines": 1}],
            "lines": [{"time": "2026-01-01T00:00:01.5Z", "pod": "web-6d8f7c9b5-x2x7q", "container": "web", "text": "listening on :8080"}],
            "truncated": false})),
    responses(
        (status = 200, description = "Accepted; `stored: false` for a chunk sent again or a probe; `stop: true` when a followed log reached its byte bound (stop following)", body = AnswerReply,
            example = json!({"stored": true, "stop": false})),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing an object at line 1 column 9"})),
        (status = 401, description = "No agent credential, a user token, or a rotated credential", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "agent routes need the cluster's agent credential: Authorization: Bearer kna_…"})),
        (status = 404, description = "No such request of this cluster waiting for an answer (unknown, another cluster's, expired, answered, or its caller left): stop answering it", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "agent request 77777777-7777-4777-8777-777777777777 not found for this cluster: it does not exist, belongs to another cluster, expired, or its caller stopped waiting; stop answering it"})),
        (status = 409, description = "A chunk out of order", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "chunk 3 of agent request 77777777-7777-4777-8777-777777777777 is out of order: chunk 2 comes next"})),
        (status = 413, description = "The body exceeds the size limit", body = ErrorBody,
            example = json!({"code": "KN-413", "message": "the request body exceeds the size limit"})),
        (status = 422, description = "An answer out of bounds (too many lines, a line or message too long, too many pods or events, too large): nothing is stored", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: lines[0].text: must be at most 8192 bytes (got 9000)",
                "details": {"violations": [{"field": "lines[0].text", "reason": "must be at most 8192 bytes (got 9000)"}]}})),
    ),
    security(("agentCredential" = []))
)]
async fn answer(
    State(st): State<AppState>,
    agent: Agent,
    KnJson(a): KnJson<AgentAnswer>,
) -> ApiResult<Response> {
    a.check()?;
    let body = serde_json::to_vec(&a)
        .map_err(|e| ApiError::from(KnError::internal(format!("encoding the answer: {e}"))))?;
    if body.len() > MAX_ANSWER_BYTES {
        return Err(ApiError::invalid(
            "lines",
            format!(
                "the answer is {} bytes, more than the {MAX_ANSWER_BYTES} one answer may carry; send fewer lines",
                body.len()
            ),
        ));
    }
    let probe = a.is_probe();
    let chunk = AnswerChunk {
        request_id: a.request_id,
        seq: i64::from(a.seq),
        body: &body,
        done: a.done,
        probe,
    };
    // Judges the request's expiry (a chunk's stored time is informational only).
    let now = expiry_now();
    let max = i64::try_from(MAX_FOLLOW_BYTES).unwrap_or(i64::MAX);
    let reply = match st
        .store
        .append_agent_answer(agent.cluster, &chunk, max, now)
        .await?
    {
        AnswerOutcome::Accepted => {
            if !probe {
                st.changes.notify_answers(a.request_id);
            }
            AnswerReply {
                stored: !probe,
                stop: false,
            }
        }
        AnswerOutcome::Duplicate => AnswerReply {
            stored: false,
            stop: false,
        },
        AnswerOutcome::OutOfOrder { expected } => {
            return Err(ApiError::conflict(format!(
                "chunk {} of agent request {} is out of order: chunk {expected} comes next",
                a.seq, a.request_id
            )));
        }
        AnswerOutcome::Full => {
            // The followed log reached its bound: end it with a chunk that says so.
            let mut end = AgentAnswer::new(a.request_id, a.seq);
            end.done = true;
            end.truncated = true;
            end.end = Some(FollowEnd::Limit);
            end.message = format!(
                "the followed log reached {} MiB, the most one follow carries; follow again to continue",
                MAX_FOLLOW_BYTES / (1024 * 1024)
            );
            let body = serde_json::to_vec(&end).map_err(|e| {
                ApiError::from(KnError::internal(format!("encoding the answer: {e}")))
            })?;
            let last = AnswerChunk {
                request_id: a.request_id,
                seq: i64::from(a.seq),
                body: &body,
                done: true,
                probe: false,
            };
            match st
                .store
                .append_agent_answer(agent.cluster, &last, i64::MAX, now)
                .await?
            {
                AnswerOutcome::Accepted => st.changes.notify_answers(a.request_id),
                AnswerOutcome::Gone => return Err(request_gone(a.request_id)),
                _ => {}
            }
            AnswerReply {
                stored: false,
                stop: true,
            }
        }
        AnswerOutcome::Gone => return Err(request_gone(a.request_id)),
    };
    Ok(json_response(StatusCode::OK, &reply, None, None, false))
}

/// A logs or events request relayed to a cluster's operator, on behalf of one call.
/// Dropping it deletes the request and its answers (the caller got its answer, gave up,
/// or left), so nothing stays behind the call.
pub(crate) struct Relay {
    st: AppState,
    id: uuid::Uuid,
    cluster: Cluster,
    sub: ChangeSubscription,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let store = std::sync::Arc::clone(&self.st.store);
        let id = self.id;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.delete_agent_request(id).await {
                    tracing::debug!(request_id = %id, error = %e, "deleting an agent request failed; it expires on its own");
                }
            });
        }
    }
}

/// The cluster of an app, refused (KN-503 with `Retry-After`) unless its operator is
/// connected: logs and events travel through it.
pub(crate) async fn connected_cluster(st: &AppState, cluster: ClusterId) -> ApiResult<Cluster> {
    let interval = st.config.agent_heartbeat_interval;
    let c = present(st.store.get_cluster(cluster).await?, interval);
    if c.status == ClusterStatus::Connected {
        return Ok(c);
    }
    let last = c
        .last_heartbeat_at
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map(|t| format!("last heartbeat {t}"))
        .unwrap_or_else(|| "no heartbeat yet".into());
    Err(ApiError {
        error: KnError::unavailable(
            "cluster-agent",
            format!(
                "cluster {} is {} ({last}): logs and events travel through its operator, which is not connected; \
                 retry once the cluster is connected",
                c.name,
                c.status.as_str()
            ),
        ),
        retry_after: Some(u64::from(interval_seconds(interval)).min(60)),
    })
}

impl Relay {
    /// Records a request for the operator of `cluster` (connected, see
    /// [`connected_cluster`]) and wakes its requests long-poll. The namespace is the
    /// project's, from its record. KN-503 when the cluster has
    /// [`MAX_OPEN_REQUESTS`] requests open already.
    pub(crate) async fn open(
        st: &AppState,
        cluster: Cluster,
        app: &App,
        project: &Project,
        kind: AgentRequestKind,
        logs: Option<LogQuery>,
    ) -> ApiResult<Relay> {
        let id = uuid::Uuid::new_v4();
        let follow = logs.as_ref().is_some_and(|l| l.follow);
        let request = AgentRequest {
            id,
            kind,
            app_id: app.id.0,
            app: app.name.clone(),
            namespace: project.namespace.clone(),
            components: app
                .spec
                .effective_components()
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            logs,
        };
        let doc = serde_json::to_value(&request)
            .map_err(|e| ApiError::from(KnError::internal(format!("encoding the request: {e}"))))?;
        let mut lifetime = st.config.agent_answer_timeout + REQUEST_GRACE;
        if follow {
            lifetime += Duration::from_secs(u64::from(FOLLOW_SECONDS));
        }
        let now = OffsetDateTime::now_utc();
        let record = AgentRequestRecord {
            id,
            cluster_id: cluster.id,
            app_id: app.id,
            kind: kind.as_str().to_string(),
            doc,
            created_at: now,
            expires_at: now + time::Duration::try_from(lifetime).unwrap_or(time::Duration::MINUTE),
        };
        // Subscribe before the request exists, so that no answer is missed.
        let sub = st.changes.subscribe_answers(id);
        match st
            .store
            .create_agent_request(&record, MAX_OPEN_REQUESTS)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(ApiError {
                    error: KnError::unavailable(
                        "cluster-agent",
                        format!(
                            "cluster {} has {MAX_OPEN_REQUESTS} logs and events requests in flight, the most it takes at once; retry in a few seconds",
                            cluster.name
                        ),
                    ),
                    retry_after: Some(2),
                });
            }
            Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found("app", app.id)),
            Err(e) => return Err(e.into()),
        }
        st.changes.notify_requests(cluster.id);
        Ok(Relay {
            st: st.clone(),
            id,
            cluster,
            sub,
        })
    }

    /// How long the caller waits for the operator's first answer.
    pub(crate) fn answer_timeout(&self) -> Duration {
        self.st.config.agent_answer_timeout
    }

    /// The answer chunks that arrived, in order, waiting for at least one until
    /// `deadline`; `None` when none came by then. The bool says whether the last chunk
    /// arrived (nothing more will come).
    pub(crate) async fn next(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> ApiResult<Option<(Vec<AgentAnswer>, bool)>> {
        loop {
            let taken = match self.st.store.take_agent_answers(self.id).await {
                Ok(t) => t,
                Err(StoreError::NotFound { .. }) => {
                    tracing::warn!(request_id = %self.id, cluster = %self.cluster.name,
                        "an agent request disappeared while its caller waited (purged as expired, or its app or cluster deleted)");
                    return Err(ApiError {
                        error: KnError::unavailable(
                            "cluster-agent",
                            format!(
                                "the request to cluster {} expired before its answer arrived; retry",
                                self.cluster.name
                            ),
                        ),
                        retry_after: Some(5),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if !taken.chunks.is_empty() || taken.done {
                let mut answers = Vec::with_capacity(taken.chunks.len());
                for (seq, body) in taken.chunks {
                    match serde_json::from_slice::<AgentAnswer>(&body) {
                        Ok(a) => answers.push(a),
                        Err(e) => {
                            tracing::error!(request_id = %self.id, seq, error = %e, "a stored answer does not decode; skipped")
                        }
                    }
                }
                return Ok(Some((answers, taken.done)));
            }
            if self.sub.wait(deadline).await == Woken::Deadline {
                return Ok(None);
            }
        }
    }

    /// The first answer chunk, waiting at most `--agent-answer-timeout`: KN-503 with
    /// `Retry-After` when the operator does not answer in time, KN-422 when it found the
    /// request's parameters wrong (e.g. a container the pods do not have), KN-503 when it
    /// could not read the cluster.
    pub(crate) async fn first(&mut self) -> ApiResult<(Vec<AgentAnswer>, bool)> {
        let timeout = self.st.config.agent_answer_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let Some((answers, done)) = self.next(deadline).await? else {
            return Err(ApiError {
                error: KnError::unavailable(
                    "cluster-agent",
                    format!(
                        "cluster {} did not answer within {} ms: its operator may be busy, restarting or cut off from the manager; retry",
                        self.cluster.name,
                        timeout.as_millis()
                    ),
                ),
                retry_after: Some(5),
            });
        };
        if let Some(e) = answers.iter().find_map(|a| a.error.as_ref()) {
            return Err(match &e.field {
                Some(field) => ApiError::invalid(field, e.message.clone()),
                None => ApiError {
                    error: KnError::unavailable(
                        "cluster-agent",
                        format!(
                            "cluster {} could not answer: {}",
                            self.cluster.name, e.message
                        ),
                    ),
                    retry_after: Some(5),
                },
            });
        }
        Ok((answers, done))
    }

    /// Every chunk of an answer that is not followed: [`Relay::first`], then what follows
    /// until the last chunk, within the same answer timeout (KN-503 otherwise).
    pub(crate) async fn complete(&mut self) -> ApiResult<Vec<AgentAnswer>> {
        let deadline = tokio::time::Instant::now() + self.st.config.agent_answer_timeout;
        let (mut answers, mut done) = self.first().await?;
        while !done {
            match self.next(deadline).await? {
                Some((more, last)) => {
                    answers.extend(more);
                    done = last;
                }
                None => {
                    return Err(ApiError {
                        error: KnError::unavailable(
                            "cluster-agent",
                            format!(
                                "cluster {} did not finish its answer within {} ms; retry",
                                self.cluster.name,
                                self.st.config.agent_answer_timeout.as_millis()
                            ),
                        ),
                        retry_after: Some(5),
                    });
                }
            }
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stored_credentials_read_the_format_before_staging() {
        let h = |b: u8| [b; 32];
        // Written before staging existed: the current hash alone.
        assert_eq!(
            Credentials::decode(&h(7)).unwrap(),
            Credentials {
                current: Some(h(7)),
                staged: vec![]
            }
        );
        let first_bootstrap = Credentials {
            current: None,
            staged: vec![h(1), h(2)],
        };
        assert_eq!(
            Credentials::decode(&first_bootstrap.encode()).unwrap(),
            first_bootstrap
        );
        assert!(Credentials::decode(&[]).is_err());
        assert!(Credentials::decode(&[1u8; 33]).is_err());
        let c = Credentials::decode(&first_bootstrap.encode()).unwrap();
        assert_eq!(c.staged_position(&h(2)), Some(1));
        assert!(
            !c.is_current(&h(0)),
            "the all-zero placeholder matches nothing"
        );
    }

    #[tokio::test]
    async fn staged_credentials_become_current_at_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let keys = kubenova_store::crypto::Keyring::load_or_generate(dir.path()).unwrap();
        let store = kubenova_store::connect(
            &format!("sqlite://{}", dir.path().join("kn.db").display()),
            keys,
        )
        .await
        .unwrap();
        let store = store.as_ref();
        let id = ClusterId::new();
        let ok = |token: &Zeroizing<String>| {
            let h = format!("Bearer {}", token.as_str());
            async move { Agent::verify(store, Some(&h)).await.is_ok() }
        };
        // A first bootstrap: nothing current yet, the staged credential works.
        let t1 = stage_credential(store, id).await.unwrap();
        assert!(ok(&t1).await);
        // Five more bootstraps whose operator never connected: the oldest is dropped.
        let mut staged = Vec::new();
        for _ in 0..=MAX_STAGED_CREDENTIALS {
            staged.push(stage_credential(store, id).await.unwrap());
        }
        assert!(ok(&t1).await, "the current credential stays valid");
        assert!(
            !ok(&staged[0]).await,
            "dropped: more than the staged maximum"
        );
        // Using the third one makes it current: the current one and the older staged one
        // are revoked, the newer staged ones stay valid.
        assert!(ok(&staged[2]).await);
        assert!(!ok(&t1).await);
        assert!(!ok(&staged[1]).await);
        assert!(ok(&staged[4]).await);
        assert!(!ok(&staged[2]).await);
        assert!(!ok(&staged[3]).await);
        assert!(ok(&staged[4]).await);
        // An immediate rotation revokes everything else.
        let only = rotate_credential(store, id).await.unwrap();
        assert!(ok(&only).await);
        assert!(!ok(&staged[4]).await);
    }

    #[test]
    fn credentials_have_the_parsed_shape_and_differ() {
        let id = ClusterId::new();
        let (a, ha) = mint_credential(id);
        let (b, _) = mint_credential(id);
        assert_ne!(*a, *b);
        assert_eq!(parse_agent_token(&a), Some(id.0));
        assert!(a.len() >= 4 + 32 + 1 + 43);
        assert_eq!(credential_hash(&a), ha);
        assert!(constant_time_eq(&ha, &credential_hash(&a)));
        assert!(!constant_time_eq(&ha, &credential_hash(&b)));
        assert!(!constant_time_eq(&ha, &ha[..31]));
    }

    #[test]
    fn requests_survive_reports_until_delivered() {
        let st = |name: &str, phase| ComponentState {
            name: name.into(),
            version: None,
            phase,
            message: String::new(),
            request_id: None,
        };
        let stored = vec![
            st("capsule", ComponentPhase::Requested),
            st("kubevela", ComponentPhase::Installing),
        ];
        let reported = vec![
            st("kubevela", ComponentPhase::Ready),
            st("capsule", ComponentPhase::Ready),
            st("cert-manager", ComponentPhase::Ready),
        ];
        let merged = merge_components(&stored, &reported, None);
        let phases: Vec<_> = merged.iter().map(|s| (s.name.as_str(), s.phase)).collect();
        assert_eq!(
            phases,
            [
                ("cert-manager", ComponentPhase::Ready),
                ("capsule", ComponentPhase::Requested),
                ("kubevela", ComponentPhase::Ready)
            ]
        );

        // A delivered request with an id survives until that id is acknowledged.
        let id = uuid::Uuid::new_v4();
        let mut delivered = st("kubevela", ComponentPhase::Installing);
        delivered.request_id = Some(id);
        let stored = vec![delivered];
        let reported = vec![st("kubevela", ComponentPhase::Absent)];
        let other = [uuid::Uuid::new_v4()];
        let kept = merge_components(&stored, &reported, Some(&other));
        assert_eq!(kept[0].phase, ComponentPhase::Installing);
        assert_eq!(kept[0].request_id, Some(id));
        let acked = merge_components(&stored, &reported, Some(&[id]));
        assert_eq!(acked[0].phase, ComponentPhase::Absent);
        assert_eq!(acked[0].request_id, None);
    }

    #[test]
    fn reports_must_be_newer_and_different() {
        let s = |rev: Option<i64>, phase| ObjectStatus {
            phase,
            conditions: vec![],
            observed_revision: rev,
            message: String::new(),
        };
        assert!(is_news(
            &s(Some(3), Phase::Pending),
            &s(Some(3), Phase::Ready)
        ));
        assert!(!is_news(
            &s(Some(3), Phase::Ready),
            &s(Some(3), Phase::Ready)
        ));
        assert!(!is_news(
            &s(Some(4), Phase::Pending),
            &s(Some(3), Phase::Ready)
        ));
        assert!(is_news(&s(None, Phase::Pending), &s(Some(1), Phase::Ready)));
        assert_eq!(interval_seconds(Duration::from_millis(200)), 1);
        assert_eq!(interval_seconds(Duration::from_secs(30)), 30);
    }
}
