//! The record cache across two "replicas" (two `PgStore`s on one Postgres schema, each
//! with its own listener): reads are answered from memory only while the listener is
//! connected, a write through one replica reaches the other's reads within a second, and a
//! write through a replica is visible to its own next read at once, and the uncached reads
//! answer the committed record even before an invalidation arrives. On SQLite, which one
//! process holds exclusively, the cache answers from the start.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kubenova_api::model::*;
use kubenova_store::notify::ChangeNotifier;
use kubenova_store::*;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

async fn replica(schema: &str) -> (PgStore, Arc<ChangeNotifier>) {
    let url = pg_url().unwrap();
    let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema)]);
    let store = PgStore::connect_with(opts, 4, keyring(&[("k1", 1)]))
        .await
        .unwrap();
    let notifier = ChangeNotifier::new();
    notifier.set_row_cache(store.row_cache().unwrap());
    notifier.listen_postgres(url);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.row_cache().unwrap().is_enabled() {
        assert!(
            Instant::now() < deadline,
            "the listener never enabled the cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (store, notifier)
}

/// Polls `read` until `ok` holds (at most 1 s: the cross-replica bound).
async fn within_a_second<T, F, Fut>(mut read: F, ok: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let v = read().await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "change not visible within 1 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads the cluster, tenant and project twice each through `store`: the first reads go to
/// the database (3 misses), the second come from memory (3 hits).
/// Creates a cluster `cache` with tenant `acme` and its project `web` through `store`.
async fn cluster_tenant_project(store: &dyn Store) -> (Cluster, Tenant, Project) {
    let none = WriteOptions::default();
    let c = cluster("cache");
    store
        .create_cluster(&c, b"apiVersion: v1\n", &none)
        .await
        .unwrap();
    let t = tenant(c.id, "acme");
    store.create_tenant(&t, &none).await.unwrap();
    let p = project(&t, "web");
    store.create_project(&p, &none).await.unwrap();
    (c, t, p)
}

async fn read_twice_from_memory_once(store: &dyn Store, c: &Cluster, t: &Tenant, p: &Project) {
    let cache = store.row_cache().unwrap();
    let before = cache.stats();
    for _ in 0..2 {
        assert_eq!(&store.get_tenant(t.id).await.unwrap(), t);
        assert_eq!(&store.get_project(p.id).await.unwrap(), p);
        assert_eq!(&store.get_cluster(c.id).await.unwrap(), c);
    }
    let after = cache.stats();
    assert_eq!(after.misses - before.misses, 3);
    assert_eq!(after.hits - before.hits, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_share_a_consistent_cache() {
    let Some(h) = postgres_with(keyring(&[("k1", 1)])).await else {
        return;
    };
    let schema = h.pg_schema.clone().unwrap();
    let (a, _na) = replica(&schema).await;
    let (b, nb) = replica(&schema).await;
    let none = WriteOptions::default();

    let (c, t, p) = cluster_tenant_project(&a).await;

    // B reads from the database once, then from memory.
    let cache_b = b.row_cache().unwrap();
    read_twice_from_memory_once(&b, &c, &t, &p).await;

    // A write through A reaches B's cached reads within a second.
    let mut t2 = t.clone();
    t2.labels.insert("team".into(), "blue".into());
    t2.version += 1;
    a.update_tenant(&t2, t.version, &none).await.unwrap();
    let seen = within_a_second(
        || b.get_tenant(t.id),
        |r| r.as_ref().unwrap().version == t2.version,
    )
    .await;
    assert_eq!(seen.unwrap(), t2);

    // Operator-observed status (no desired-state change) too.
    let status = ObjectStatus {
        phase: Phase::Ready,
        ..Default::default()
    };
    a.set_project_status(p.id, &status).await.unwrap();
    let seen = within_a_second(
        || b.get_project(p.id),
        |r| r.as_ref().unwrap().status == status,
    )
    .await;
    assert_eq!(seen.unwrap().status.phase, Phase::Ready);

    let mut c2 = b.get_cluster(c.id).await.unwrap();
    c2.labels.insert("region".into(), "eu".into());
    c2.version += 1;
    a.update_cluster(&c2, c.version, &none).await.unwrap();
    let seen = within_a_second(
        || b.get_cluster(c.id),
        |r| r.as_ref().unwrap().labels.contains_key("region"),
    )
    .await;
    assert_eq!(seen.unwrap(), c2);

    // A replica's own write is visible to its next read at once (no notification needed).
    let t3 = {
        let mut t3 = b.get_tenant(t.id).await.unwrap();
        t3.labels.insert("team".into(), "red".into());
        t3.version += 1;
        t3
    };
    b.update_tenant(&t3, t2.version, &none).await.unwrap();
    assert_eq!(b.get_tenant(t.id).await.unwrap(), t3);

    // Deletes: gone on the other replica within a second.
    assert_eq!(b.get_project(p.id).await.unwrap().id, p.id);
    a.delete_project(p.id, true, &none).await.unwrap();
    let seen = within_a_second(
        || b.get_project(p.id),
        |r| matches!(r, Err(StoreError::NotFound { .. })),
    )
    .await;
    assert!(seen.is_err());

    // Without its listener, B answers from the database only.
    drop(nb);
    assert!(!cache_b.is_enabled());
    assert!(cache_b.is_empty());
    let before = cache_b.stats();
    b.get_tenant(t.id).await.unwrap();
    b.get_tenant(t.id).await.unwrap();
    assert_eq!(cache_b.stats(), before);

    a.pool().close().await;
    b.pool().close().await;
    h.cleanup().await;
}

/// Uncached reads answer the committed record while the cache still holds an older one:
/// replica B's cache is enabled as if its listener were connected, but no listener runs,
/// so B never receives the invalidation of A's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncached_reads_see_writes_whose_invalidation_has_not_arrived() {
    let Some(h) = postgres_with(keyring(&[("k1", 1)])).await else {
        return;
    };
    let schema = h.pg_schema.clone().unwrap();
    let opts = sqlx::postgres::PgConnectOptions::from_str(&pg_url().unwrap())
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let a = PgStore::connect_with(opts.clone(), 2, keyring(&[("k1", 1)]))
        .await
        .unwrap();
    let b = PgStore::connect_with(opts, 2, keyring(&[("k1", 1)]))
        .await
        .unwrap();
    b.row_cache().unwrap().enable();
    let none = WriteOptions::default();
    let (c, t, p) = cluster_tenant_project(&a).await;
    read_twice_from_memory_once(&b, &c, &t, &p).await;

    let mut t2 = t.clone();
    t2.owners = vec!["bob@example.com".into()];
    t2.version += 1;
    a.update_tenant(&t2, t.version, &none).await.unwrap();
    let mut p2 = p.clone();
    p2.labels.insert("team".into(), "blue".into());
    p2.version += 1;
    a.update_project(&p2, p.version, &none).await.unwrap();
    let mut c2 = c.clone();
    c2.labels.insert("region".into(), "eu".into());
    c2.version += 1;
    a.update_cluster(&c2, c.version, &none).await.unwrap();

    // The cache still answers the old records; the uncached reads the committed ones.
    assert_eq!(b.get_tenant(t.id).await.unwrap(), t);
    assert_eq!(b.get_tenant_uncached(t.id).await.unwrap(), t2);
    assert_eq!(b.get_project(p.id).await.unwrap(), p);
    assert_eq!(b.get_project_uncached(p.id).await.unwrap(), p2);
    assert_eq!(b.get_cluster(c.id).await.unwrap(), c);
    assert_eq!(b.get_cluster_uncached(c.id).await.unwrap(), c2);

    a.delete_tenant(t.id, true, &none).await.unwrap();
    assert!(matches!(
        b.get_tenant_uncached(t.id).await,
        Err(StoreError::NotFound { .. })
    ));
    a.close().await;
    b.close().await;
    h.cleanup().await;
}

/// SQLite holds its file exclusively, so the cache answers from the start: hits after
/// the first read, every write through the store visible at once (cascades included), and
/// a second process-level open of the same file refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_caches_while_it_holds_the_file() {
    let h = sqlite_with(keyring(&[("k1", 1)])).await;
    let s = &h.store;
    let cache = s.row_cache().unwrap();
    assert!(cache.is_enabled(), "an open SQLite store owns its file");
    let none = WriteOptions::default();
    let (c, t, p) = cluster_tenant_project(s.as_ref()).await;

    read_twice_from_memory_once(s.as_ref(), &c, &t, &p).await;

    // Writes (desired state and observed status) are read back at once.
    let mut t2 = t.clone();
    t2.labels.insert("team".into(), "blue".into());
    t2.version += 1;
    s.update_tenant(&t2, t.version, &none).await.unwrap();
    assert_eq!(s.get_tenant(t.id).await.unwrap(), t2);
    let status = ObjectStatus {
        phase: Phase::Ready,
        ..Default::default()
    };
    s.set_project_status(p.id, &status).await.unwrap();
    assert_eq!(
        s.get_project(p.id).await.unwrap().status.phase,
        Phase::Ready
    );

    // A cascading delete takes the cached tenant and project with it.
    s.delete_cluster(c.id, true, &none).await.unwrap();
    for r in [
        s.get_tenant(t.id).await.map(|_| ()),
        s.get_project(p.id).await.map(|_| ()),
        s.get_cluster(c.id).await.map(|_| ()),
    ] {
        assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    }

    // Another open of the same file is refused, saying why, and writes nothing.
    let url = format!("sqlite://{}", h.sqlite_path.as_ref().unwrap().display());
    let started = Instant::now();
    let err = match SqliteStore::connect(&url, keyring(&[("k1", 1)])).await {
        Ok(_) => panic!("a second store opened a file the first one holds"),
        Err(e) => e,
    };
    eprintln!("second open refused after {:?}: {err}", started.elapsed());
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    // The first store is unaffected.
    assert!(
        s.list_clusters(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    h.cleanup().await;
}

/// Closing the store lets go of the file: it opens again, with its data, and caches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_opens_again_once_closed() {
    let h = sqlite_with(keyring(&[("k1", 1)])).await;
    let c = cluster("kept");
    h.store
        .create_cluster(&c, b"apiVersion: v1\n", &WriteOptions::default())
        .await
        .unwrap();
    h.store.close().await;
    let url = format!("sqlite://{}", h.sqlite_path.as_ref().unwrap().display());
    let started = Instant::now();
    let reopened = SqliteStore::connect(&url, keyring(&[("k1", 1)]))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "reopen after close failed after {:?}: {e:?}",
                started.elapsed()
            )
        });
    assert!(reopened.row_cache().unwrap().is_enabled());
    assert_eq!(reopened.get_cluster(c.id).await.unwrap().name, "kept");
    reopened.close().await;
    h.cleanup().await;
}
