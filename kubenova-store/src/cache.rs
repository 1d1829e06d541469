//! A read-through cache of cluster, tenant and project records, kept correct across
//! manager replicas by `LISTEN/NOTIFY` on Postgres, and by exclusive ownership of the file
//! on SQLite.
//!
//! Point reads of these records dominate the API's read traffic (every tenant-scoped
//! route loads its tenant; every kubeconfig issuance loads the tenant and its cluster), and
//! they change rarely. [`RowCache`] keeps recently read records in memory and answers
//! [`Store::get_cluster`](crate::Store::get_cluster),
//! [`get_tenant`](crate::Store::get_tenant) and [`get_project`](crate::Store::get_project)
//! from it.
//!
//! Correctness rules:
//!
//! - **Only while notifications flow.** The cache is disabled (every read goes to the
//!   database) until a listener has `LISTEN`ed on [`ROWS_CHANNEL`]
//!   ([`ChangeNotifier::listen_postgres`](crate::notify::ChangeNotifier::listen_postgres)
//!   with [`ChangeNotifier::set_row_cache`](crate::notify::ChangeNotifier::set_row_cache)),
//!   and it is emptied and disabled the moment that connection is lost, so a notification
//!   that could not be delivered can never leave a stale entry behind. Migration
//!   `0005_row_notify` makes every `UPDATE` and `DELETE` of these tables send
//!   `NOTIFY kubenova_rows, '<table>:<id>'` at commit.
//! - **Writes through this process** drop the entry as soon as the write returns (success
//!   or failure), so a client that writes and then reads through the same replica always
//!   sees its write; another replica sees it once the notification arrives (typically well
//!   under a millisecond on a local network).
//! - **No stale fill.** A read that missed takes a [`Ticket`] before it queries the
//!   database and may store its result only if no invalidation touched the entry's shard
//!   since; otherwise an older row read before a concurrent write could outlive the write's
//!   notification.
//! - Writers never read through the cache: read-modify-write paths and version checks use
//!   the database, and a stale `If-Match` still fails with KN-412 at the database.
//!
//! The SQLite store enables it as soon as it holds its database file: it opens the file in
//! `locking_mode=EXCLUSIVE`, so no other process can write it, and every write through the
//! store drops what it touches (the second rule), so there is nothing to be notified of. If
//! sqlx ever has to reopen the connection, the cache is emptied first.
//!
//! ```
//! use kubenova_store::cache::RowCache;
//! let cache = RowCache::new(1024);
//! let id = uuid::Uuid::new_v4();
//! // Disabled until a listener enables it: a miss may not fill.
//! assert!(cache.ticket(id).is_none());
//! cache.enable();
//! assert!(cache.ticket(id).is_some());
//! cache.on_notification(&format!("tenants:{id}"));
//! assert_eq!(cache.stats().invalidations, 1);
//! ```

use kubenova_api::model::{Cluster, Project, Tenant};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// The Postgres notification channel of row changes (see migration `0005_row_notify`).
pub const ROWS_CHANNEL: &str = "kubenova_rows";

const SHARDS: usize = 32;

/// A cached record.
#[derive(Clone)]
enum Row {
    Cluster(Arc<Cluster>),
    Tenant(Arc<Tenant>),
    Project(Arc<Project>),
}

/// Record types the cache holds.
pub trait Cacheable: Clone + Send + Sync + 'static {
    #[doc(hidden)]
    fn wrap(self) -> RowHandle;
    #[doc(hidden)]
    fn unwrap(row: &RowHandle) -> Option<Self>;
}

/// Opaque stored form of a [`Cacheable`] record.
#[derive(Clone)]
pub struct RowHandle(Row);

impl Cacheable for Cluster {
    fn wrap(self) -> RowHandle {
        RowHandle(Row::Cluster(Arc::new(self)))
    }
    fn unwrap(row: &RowHandle) -> Option<Self> {
        match &row.0 {
            Row::Cluster(c) => Some(Cluster::clone(c)),
            _ => None,
        }
    }
}

impl Cacheable for Tenant {
    fn wrap(self) -> RowHandle {
        RowHandle(Row::Tenant(Arc::new(self)))
    }
    fn unwrap(row: &RowHandle) -> Option<Self> {
        match &row.0 {
            Row::Tenant(t) => Some(Tenant::clone(t)),
            _ => None,
        }
    }
}

impl Cacheable for Project {
    fn wrap(self) -> RowHandle {
        RowHandle(Row::Project(Arc::new(self)))
    }
    fn unwrap(row: &RowHandle) -> Option<Self> {
        match &row.0 {
            Row::Project(p) => Some(Project::clone(p)),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Shard {
    /// Bumped by every invalidation of a key of this shard and by every clear.
    epoch: u64,
    rows: HashMap<Uuid, RowHandle>,
}

/// Permission to fill one entry after a miss (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    id: Uuid,
    shard: usize,
    epoch: u64,
}

/// Counters of a [`RowCache`] (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to the database while the cache was enabled.
    pub misses: u64,
    /// Entries dropped by writes and notifications.
    pub invalidations: u64,
}

/// The record cache; see the module docs for when it may answer.
pub struct RowCache {
    enabled: AtomicBool,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

impl std::fmt::Debug for RowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowCache")
            .field("enabled", &self.is_enabled())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RowCache {
    /// A disabled cache that holds at most about `capacity` records.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            enabled: AtomicBool::new(false),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        })
    }

    fn shard_of(id: &Uuid) -> usize {
        // UUIDs (v4 random bits, v7 random tail) are uniformly spread in their last byte.
        usize::from(id.as_bytes()[15]) % SHARDS
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        match self.shards[shard].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether reads may be answered from memory (a listener is connected).
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Starts answering from memory. Call only once `LISTEN` on [`ROWS_CHANNEL`] is in
    /// effect; everything cached before is dropped first.
    pub fn enable(&self) {
        self.clear();
        self.enabled.store(true, Ordering::Release);
    }

    /// Stops answering from memory and drops everything (the listener lost its
    /// connection, so notifications may be missed from now on).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
        self.clear();
    }

    /// Drops every entry and refuses fills of reads that started before.
    pub fn clear(&self) {
        for shard in 0..SHARDS {
            let mut s = self.lock(shard);
            s.epoch = s.epoch.wrapping_add(1);
            s.rows.clear();
        }
    }

    /// Drops the record `id` (of any table) and refuses fills of reads that started
    /// before.
    pub fn invalidate(&self, id: Uuid) {
        let shard = Self::shard_of(&id);
        let mut s = self.lock(shard);
        s.epoch = s.epoch.wrapping_add(1);
        s.rows.remove(&id);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Handles a [`ROWS_CHANNEL`] payload (`<table>:<id>`); anything unparsable clears
    /// the whole cache.
    pub fn on_notification(&self, payload: &str) {
        match payload
            .rsplit_once(':')
            .and_then(|(_, id)| Uuid::try_parse(id.trim()).ok())
        {
            Some(id) => self.invalidate(id),
            None => self.clear(),
        }
    }

    /// The cached record `id`, if enabled and present.
    pub fn get<T: Cacheable>(&self, id: Uuid) -> Option<T> {
        if !self.is_enabled() {
            return None;
        }
        let found = {
            let s = self.lock(Self::shard_of(&id));
            s.rows.get(&id).and_then(T::unwrap)
        };
        match found {
            Some(v) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(v)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Before a database read after a miss: `None` while disabled (do not fill).
    pub fn ticket(&self, id: Uuid) -> Option<Ticket> {
        if !self.is_enabled() {
            return None;
        }
        let shard = Self::shard_of(&id);
        let epoch = self.lock(shard).epoch;
        Some(Ticket { id, shard, epoch })
    }

    /// Stores what the read of `ticket` returned, unless the entry's shard saw an
    /// invalidation (or the cache was disabled) since the ticket was taken.
    pub fn fill<T: Cacheable>(&self, ticket: Ticket, value: &T) {
        if !self.is_enabled() {
            return;
        }
        let mut s = self.lock(ticket.shard);
        if s.epoch != ticket.epoch {
            return;
        }
        if s.rows.len() >= self.per_shard
            && !s.rows.contains_key(&ticket.id)
            && let Some(victim) = s.rows.keys().next().copied()
        {
            s.rows.remove(&victim);
        }
        s.rows.insert(ticket.id, value.clone().wrap());
    }

    /// Hit, miss and invalidation counts since start.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
        }
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).rows.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kubenova_api::ids::{ClusterId, TenantId};

    fn tenant(name: &str) -> Tenant {
        let now = time::OffsetDateTime::now_utc();
        Tenant {
            id: TenantId::new(),
            cluster_id: ClusterId::new(),
            name: name.to_string(),
            owners: Vec::new(),
            plan: "basic".into(),
            labels: Default::default(),
            quotas: Default::default(),
            limits: Default::default(),
            network_policies: Vec::new(),
            owner_namespace: format!("{name}-owner"),
            apps_namespace: format!("{name}-apps"),
            overrides: Default::default(),
            status: Default::default(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let c = RowCache::new(16);
        let t = tenant("a");
        assert!(c.ticket(t.id.0).is_none());
        c.enable();
        let ticket = c.ticket(t.id.0).unwrap();
        c.disable();
        c.fill(ticket, &t);
        c.enable();
        assert!(c.get::<Tenant>(t.id.0).is_none());
    }

    #[test]
    fn fills_answer_until_invalidated() {
        let c = RowCache::new(16);
        c.enable();
        let t = tenant("a");
        let ticket = c.ticket(t.id.0).unwrap();
        c.fill(ticket, &t);
        assert_eq!(c.get::<Tenant>(t.id.0).unwrap().name, "a");
        // A record of another type under the same id is not confused with it.
        assert!(c.get::<Project>(t.id.0).is_none());
        c.on_notification(&format!("tenants:{}", t.id));
        assert!(c.get::<Tenant>(t.id.0).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.invalidations), (1, 2, 1));
    }

    #[test]
    fn a_fill_racing_an_invalidation_is_refused() {
        let c = RowCache::new(16);
        c.enable();
        let t = tenant("old");
        let ticket = c.ticket(t.id.0).unwrap();
        c.invalidate(t.id.0);
        c.fill(ticket, &t);
        assert!(c.get::<Tenant>(t.id.0).is_none());
        // A clear (listener reconnect) refuses too.
        let ticket = c.ticket(t.id.0).unwrap();
        c.on_notification("garbage");
        c.fill(ticket, &t);
        assert!(c.is_empty());
    }

    #[test]
    fn capacity_is_bounded() {
        let c = RowCache::new(SHARDS);
        c.enable();
        for i in 0..1000 {
            let t = tenant(&format!("t{i}"));
            let ticket = c.ticket(t.id.0).unwrap();
            c.fill(ticket, &t);
        }
        assert!(c.len() <= SHARDS, "{} entries", c.len());
    }
}
