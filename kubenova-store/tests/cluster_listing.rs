//! Per-cluster listing of projects and apps (the batched desired-state snapshot reads),
//! run against SQLite and Postgres.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kubenova_api::ids::*;
use kubenova_api::model::*;
use kubenova_store::*;

macro_rules! suite {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::sqlite_with(super::keyring(&[("k1", 1)])).await;
                    super::$name(&h).await;
                    h.cleanup().await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = super::postgres_with(super::keyring(&[("k1", 1)])).await else { return };
                    super::$name(&h).await;
                    h.cleanup().await;
                }
            )+
        }
    };
}

suite!(
    lists_only_the_clusters_rows_by_id,
    pages_are_stable_and_complete,
    deleted_rows_are_gone,
    bad_params_are_validation_errors,
    matches_the_per_parent_listings,
);

/// Every page of a listing, following cursors.
async fn all<T, F, Fut>(limit: u32, mut fetch: F) -> (Vec<T>, usize)
where
    F: FnMut(ListParams) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>>>,
{
    let mut params = ListParams::first(limit);
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let page = fetch(params.clone()).await.unwrap();
        pages += 1;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => params.cursor = Some(c),
            None => return (out, pages),
        }
    }
}

/// A cluster with `tenants` tenants, each with `projects` projects of `apps` apps.
async fn populate(
    s: &dyn Store,
    name: &str,
    tenants: usize,
    projects: usize,
    apps: usize,
) -> (Cluster, Vec<Tenant>, Vec<Project>, Vec<App>) {
    let w = WriteOptions::default();
    let c = cluster(name);
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let (mut ts, mut ps, mut as_) = (vec![], vec![], vec![]);
    for i in 0..tenants {
        let t = tenant(c.id, &format!("{name}-t{i}"));
        s.create_tenant(&t, &w).await.unwrap();
        for j in 0..projects {
            let p = project(&t, &format!("p{j}"));
            s.create_project(&p, &w).await.unwrap();
            for k in 0..apps {
                let (a, r) = app(&p, &format!("a{k}"));
                s.create_app(&a, &r, &w).await.unwrap();
                as_.push(a);
            }
            ps.push(p);
        }
        ts.push(t);
    }
    (c, ts, ps, as_)
}

fn sorted_ids<T, K: Ord + Copy>(items: &[T], id: impl Fn(&T) -> K) -> Vec<K> {
    let mut ids: Vec<K> = items.iter().map(id).collect();
    ids.sort();
    ids
}

async fn lists_only_the_clusters_rows_by_id(h: &Harness) {
    let s = h.store.as_ref();
    let (c1, _, p1, a1) = populate(s, "one", 3, 2, 2).await;
    let (c2, _, p2, a2) = populate(s, "two", 2, 1, 3).await;
    let empty = cluster("empty");
    s.create_cluster(&empty, b"k", &WriteOptions::default())
        .await
        .unwrap();

    for (c, ps, as_) in [(c1.id, &p1, &a1), (c2.id, &p2, &a2)] {
        let (got, _) = all(500, |p| async move { s.list_cluster_projects(c, &p).await }).await;
        assert_eq!(
            got.iter().map(|p| p.id).collect::<Vec<_>>(),
            sorted_ids(ps, |p| p.id),
            "the cluster's projects, across tenants, by id"
        );
        for p in &got {
            let want = ps.iter().find(|x| x.id == p.id).unwrap();
            assert_eq!(p, want, "whole records");
        }
        let (got, _) = all(500, |p| async move { s.list_cluster_apps(c, &p).await }).await;
        assert_eq!(
            got.iter().map(|a| a.id).collect::<Vec<_>>(),
            sorted_ids(as_, |a| a.id),
            "the cluster's apps, across projects, by id"
        );
        for a in &got {
            assert_eq!(a, as_.iter().find(|x| x.id == a.id).unwrap());
        }
    }
    let page = s
        .list_cluster_projects(empty.id, &ListParams::default())
        .await
        .unwrap();
    assert!(page.items.is_empty() && page.next_cursor.is_none());
    let page = s
        .list_cluster_apps(empty.id, &ListParams::default())
        .await
        .unwrap();
    assert!(page.items.is_empty() && page.next_cursor.is_none());
    // An unknown cluster is an empty listing, like list_tenants(Some(unknown)).
    let page = s
        .list_cluster_apps(ClusterId::new(), &ListParams::default())
        .await
        .unwrap();
    assert!(page.items.is_empty());
}

async fn pages_are_stable_and_complete(h: &Harness) {
    let s = h.store.as_ref();
    let (c, _, ps, as_) = populate(s, "c", 4, 3, 2).await;
    let _other = populate(s, "noise", 2, 2, 2).await;
    let cid = c.id;
    // 12 projects in pages of 5: 5 + 5 + 2.
    let (got, pages) = all(5, |p| async move { s.list_cluster_projects(cid, &p).await }).await;
    assert_eq!(pages, 3);
    assert_eq!(
        got.iter().map(|p| p.id).collect::<Vec<_>>(),
        sorted_ids(&ps, |p| p.id),
        "each project once, in id order"
    );
    // 24 apps in pages of 8: exactly 3 full pages; the last has no cursor.
    let (got, pages) = all(8, |p| async move { s.list_cluster_apps(cid, &p).await }).await;
    assert_eq!(pages, 3);
    assert_eq!(
        got.iter().map(|a| a.id).collect::<Vec<_>>(),
        sorted_ids(&as_, |a| a.id)
    );
    // A row inserted behind the cursor does not disturb the rest of the walk.
    let first = s
        .list_cluster_apps(cid, &ListParams::first(10))
        .await
        .unwrap();
    let t = tenant(cid, "late");
    s.create_tenant(&t, &WriteOptions::default()).await.unwrap();
    let p = project(&t, "late");
    s.create_project(&p, &WriteOptions::default())
        .await
        .unwrap();
    let (late, r) = app(&p, "late");
    s.create_app(&late, &r, &WriteOptions::default())
        .await
        .unwrap();
    let mut rest = ListParams::first(500);
    rest.cursor = first.next_cursor;
    let rest = s.list_cluster_apps(cid, &rest).await.unwrap();
    let mut walked: Vec<AppId> = first.items.iter().map(|a| a.id).collect();
    walked.extend(rest.items.iter().map(|a| a.id));
    let mut want = sorted_ids(&as_, |a| a.id);
    want.push(late.id);
    want.sort();
    assert_eq!(walked, want);
}

async fn deleted_rows_are_gone(h: &Harness) {
    let s = h.store.as_ref();
    let w = WriteOptions::default();
    let (c, ts, ps, as_) = populate(s, "c", 2, 2, 2).await;
    s.delete_app(as_[0].id, &w).await.unwrap();
    s.delete_project(ps[1].id, true, &w).await.unwrap();
    s.delete_tenant(ts[1].id, true, &w).await.unwrap();
    let cid = c.id;
    let (projects, _) = all(
        500,
        |p| async move { s.list_cluster_projects(cid, &p).await },
    )
    .await;
    assert_eq!(
        projects.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![ps[0].id]
    );
    let (apps, _) = all(500, |p| async move { s.list_cluster_apps(cid, &p).await }).await;
    assert_eq!(
        apps.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![as_[1].id]
    );
}

async fn bad_params_are_validation_errors(h: &Harness) {
    let s = h.store.as_ref();
    let (c, ..) = populate(s, "c", 1, 1, 1).await;
    let bad = ListParams {
        limit: Some(5),
        cursor: Some("garbage!".into()),
    };
    assert!(matches!(
        s.list_cluster_projects(c.id, &bad).await,
        Err(StoreError::Validation(_))
    ));
    assert!(matches!(
        s.list_cluster_apps(c.id, &bad).await,
        Err(StoreError::Validation(_))
    ));
    for limit in [0, MAX_PAGE_SIZE + 1] {
        assert!(matches!(
            s.list_cluster_projects(c.id, &ListParams::first(limit))
                .await,
            Err(StoreError::Validation(_))
        ));
        assert!(matches!(
            s.list_cluster_apps(c.id, &ListParams::first(limit)).await,
            Err(StoreError::Validation(_))
        ));
    }
}

/// The batched reads return exactly what the per-tenant and per-project listings do, and
/// grouping them by parent (as the desired-state snapshot does) reproduces the order of a
/// per-parent walk even when children of different parents interleave by id.
async fn matches_the_per_parent_listings(h: &Harness) {
    use std::collections::HashMap;
    let s = h.store.as_ref();
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut tenants = vec![];
    for i in 0..3 {
        let t = tenant(c.id, &format!("t{i}"));
        s.create_tenant(&t, &w).await.unwrap();
        tenants.push(t);
    }
    // Round-robin over parents, so that ids interleave across them.
    let mut projects = vec![];
    for j in 0..3 {
        for t in &tenants {
            let p = project(t, &format!("p{j}"));
            s.create_project(&p, &w).await.unwrap();
            projects.push(p);
        }
    }
    for k in 0..2 {
        for p in projects.iter().rev() {
            let (a, r) = app(p, &format!("a{k}"));
            s.create_app(&a, &r, &w).await.unwrap();
        }
    }
    let cid = c.id;
    let (tenants, _) = all(500, |p| async move { s.list_tenants(Some(cid), &p).await }).await;
    let mut walk_projects = vec![];
    let mut walk_apps = vec![];
    for t in &tenants {
        let tid = t.id;
        let (ps, _) = all(500, |p| async move { s.list_projects(tid, &p).await }).await;
        for p in &ps {
            let pid = p.id;
            let (as_, _) = all(500, |q| async move { s.list_apps(pid, &q).await }).await;
            walk_apps.extend(as_);
        }
        walk_projects.extend(ps);
    }
    let (batched_p, _) = all(2, |p| async move { s.list_cluster_projects(cid, &p).await }).await;
    let (batched_a, _) = all(3, |p| async move { s.list_cluster_apps(cid, &p).await }).await;
    assert_eq!(batched_p.len(), 9);
    assert_eq!(batched_a.len(), 18);
    assert_ne!(
        batched_p, walk_projects,
        "the test must interleave children of different parents"
    );

    let mut projects_of: HashMap<TenantId, Vec<Project>> = HashMap::new();
    for p in batched_p {
        projects_of.entry(p.tenant_id).or_default().push(p);
    }
    let mut apps_of: HashMap<ProjectId, Vec<App>> = HashMap::new();
    for a in batched_a {
        apps_of.entry(a.project_id).or_default().push(a);
    }
    let mut grouped_projects = vec![];
    let mut grouped_apps = vec![];
    for t in &tenants {
        for p in projects_of.remove(&t.id).unwrap_or_default() {
            grouped_apps.extend(apps_of.remove(&p.id).unwrap_or_default());
            grouped_projects.push(p);
        }
    }
    assert_eq!(grouped_projects, walk_projects);
    assert_eq!(grouped_apps, walk_apps);
}
