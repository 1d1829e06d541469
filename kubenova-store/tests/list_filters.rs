//! Lists filtered by name and label selector (`Store::list_*_matching`), run against
//! SQLite and Postgres: each selector operator selects what Kubernetes would, and
//! filtered pages are full and continue correctly.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kubenova_api::model::*;
use kubenova_store::*;
use std::collections::BTreeMap;

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
    each_operator_selects_like_kubernetes,
    names_are_exact_and_scoped_to_the_parent,
    filtered_pages_are_full_and_continue,
    bad_filters_are_validation_errors,
);

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn filter(selector: &str) -> ListFilter {
    ListFilter::parse(None, Some(selector)).unwrap()
}

/// Every page of a listing, following cursors; also the number of pages.
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
        assert!(page.items.len() <= limit as usize);
        if page.next_cursor.is_some() {
            assert_eq!(
                page.items.len(),
                limit as usize,
                "a page before the last is full"
            );
        }
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => params.cursor = Some(c),
            None => return (out, pages),
        }
    }
}

/// The label sets every test record gets one of (by name).
const RECORDS: &[(&str, &[(&str, &str)])] = &[
    ("gold-prod", &[("tier", "gold"), ("env", "prod")]),
    ("gold-dev", &[("tier", "gold"), ("env", "dev")]),
    ("silver", &[("tier", "silver")]),
    ("free-empty", &[("tier", "free"), ("env", "")]),
    ("plain", &[]),
    (
        "prefixed",
        &[
            ("example.com/team", "payments"),
            ("a.b", "1"),
            ("tier", "gold"),
        ],
    ),
];

/// Selectors and the records (of [`RECORDS`]) they select.
const CASES: &[(&str, &[&str])] = &[
    ("tier=gold", &["gold-prod", "gold-dev", "prefixed"]),
    ("tier==silver", &["silver"]),
    ("tier!=gold", &["silver", "free-empty", "plain"]),
    ("tier in (silver,free)", &["silver", "free-empty"]),
    ("tier notin (gold,free)", &["silver", "plain"]),
    ("env", &["gold-prod", "gold-dev", "free-empty"]),
    ("!env", &["silver", "plain", "prefixed"]),
    ("env=", &["free-empty"]),
    ("env in (prod,)", &["gold-prod", "free-empty"]),
    ("tier=gold,env!=dev", &["gold-prod", "prefixed"]),
    ("tier=gold,!env", &["prefixed"]),
    ("example.com/team=payments", &["prefixed"]),
    ("a.b=1", &["prefixed"]),
    ("a", &[]),
    (
        "zone notin (a)",
        &[
            "gold-prod",
            "gold-dev",
            "silver",
            "free-empty",
            "plain",
            "prefixed",
        ],
    ),
    (
        "",
        &[
            "gold-prod",
            "gold-dev",
            "silver",
            "free-empty",
            "plain",
            "prefixed",
        ],
    ),
    ("tier=gold,tier=silver", &[]),
];

fn names<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = items.into_iter().map(str::to_owned).collect();
    v.sort();
    v
}

async fn each_operator_selects_like_kubernetes(h: &Harness) {
    let s = &*h.store;
    let w = WriteOptions::default();
    let host = cluster("host");
    s.create_cluster(&host, b"k", &w).await.unwrap();
    let mut owner = tenant(host.id, "owner");
    owner.labels = labels(&[("tier", "gold")]);
    s.create_tenant(&owner, &w).await.unwrap();
    let mut all_labels = BTreeMap::new();
    for (name, pairs) in RECORDS {
        let mut c = cluster(name);
        c.labels = labels(pairs);
        s.create_cluster(&c, b"k", &w).await.unwrap();
        let mut t = tenant(host.id, name);
        t.labels = labels(pairs);
        s.create_tenant(&t, &w).await.unwrap();
        let mut p = project(&owner, name);
        p.labels = labels(pairs);
        s.create_project(&p, &w).await.unwrap();
        all_labels.insert(name.to_string(), labels(pairs));
    }
    // Another tenant's project with matching labels stays out of the owner's listing.
    let other = tenant(host.id, "other");
    s.create_tenant(&other, &w).await.unwrap();
    let mut stray = project(&other, "gold-prod");
    stray.labels = labels(&[("tier", "gold"), ("env", "prod")]);
    s.create_project(&stray, &w).await.unwrap();

    let (host_id, owner_id) = (host.id, owner.id);
    for (selector, want) in CASES {
        let f = filter(selector);
        let want = names(want.iter().copied());
        // The in-memory test (for lists assembled record by record) agrees.
        let by_matches = names(
            all_labels
                .iter()
                .filter(|(n, l)| f.matches(n, l))
                .map(|(n, _)| n.as_str()),
        );
        assert_eq!(by_matches, want, "ListFilter::matches {selector:?}");

        let (cs, _) = all(2, |p| {
            let f = f.clone();
            async move { s.list_clusters_matching(&f, &p).await }
        })
        .await;
        let got = names(cs.iter().map(|c| c.name.as_str()).filter(|n| *n != "host"));
        assert_eq!(got, want, "clusters {selector:?}");

        let (ts, _) = all(2, |p| {
            let f = f.clone();
            async move { s.list_tenants_matching(Some(host_id), &f, &p).await }
        })
        .await;
        let got = names(
            ts.iter()
                .map(|t| t.name.as_str())
                .filter(|n| !["owner", "other"].contains(n)),
        );
        assert_eq!(got, want, "tenants {selector:?}");

        let (ps, _) = all(2, |p| {
            let f = f.clone();
            async move { s.list_projects_matching(owner_id, &f, &p).await }
        })
        .await;
        assert!(ps.iter().all(|p| p.tenant_id == owner.id), "{selector:?}");
        let got = names(ps.iter().map(|p| p.name.as_str()));
        assert_eq!(got, want, "projects {selector:?}");
    }
}

async fn names_are_exact_and_scoped_to_the_parent(h: &Harness) {
    let s = &*h.store;
    let w = WriteOptions::default();
    let c1 = cluster("eu");
    let c2 = cluster("eu-2");
    s.create_cluster(&c1, b"k", &w).await.unwrap();
    s.create_cluster(&c2, b"k", &w).await.unwrap();
    let acme1 = tenant(c1.id, "acme");
    let acme2 = tenant(c2.id, "acme");
    let acme_corp = tenant(c1.id, "acme-corp");
    for t in [&acme1, &acme2, &acme_corp] {
        s.create_tenant(t, &w).await.unwrap();
    }
    let web = project(&acme1, "web");
    let web2 = project(&acme_corp, "web");
    s.create_project(&web, &w).await.unwrap();
    s.create_project(&web2, &w).await.unwrap();
    let (app_web, rev) = app(&web, "web");
    s.create_app(&app_web, &rev, &w).await.unwrap();
    let (app_api, rev) = app(&web, "api");
    s.create_app(&app_api, &rev, &w).await.unwrap();
    let p = ListParams::default();

    let named = |n: &str| ListFilter::named(n);
    let page = s.list_clusters_matching(&named("eu"), &p).await.unwrap();
    assert_eq!(page.items, vec![c1.clone()], "exact, not a prefix");
    assert_eq!(page.next_cursor, None);
    assert!(
        s.list_clusters_matching(&named("e"), &p)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let ids = |ts: Vec<Tenant>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let mut both = vec![acme1.id, acme2.id];
    both.sort();
    let all_acme = s
        .list_tenants_matching(None, &named("acme"), &p)
        .await
        .unwrap();
    assert_eq!(ids(all_acme.items), both, "one per cluster, by id");
    let in_c2 = s
        .list_tenants_matching(Some(c2.id), &named("acme"), &p)
        .await
        .unwrap();
    assert_eq!(ids(in_c2.items), vec![acme2.id]);
    assert!(
        s.list_tenants_matching(Some(c2.id), &named("acme-corp"), &p)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let ps = s
        .list_projects_matching(acme1.id, &named("web"), &p)
        .await
        .unwrap();
    assert_eq!(
        ps.items,
        vec![web.clone()],
        "not the other tenant's project"
    );

    let apps = s
        .list_apps_matching(web.id, &named("web"), &p)
        .await
        .unwrap();
    assert_eq!(apps.items.len(), 1);
    assert_eq!(apps.items[0].id, app_web.id);
    let apps = s
        .list_apps_matching(web.id, &ListFilter::default(), &p)
        .await
        .unwrap();
    assert_eq!(apps.items.len(), 2, "no filter: every app");

    // Name and selector together: both must hold.
    let mut gold = tenant(c1.id, "gold");
    gold.labels = labels(&[("tier", "gold")]);
    s.create_tenant(&gold, &w).await.unwrap();
    let both = ListFilter::parse(Some("gold"), Some("tier=gold")).unwrap();
    assert_eq!(
        ids(s
            .list_tenants_matching(None, &both, &p)
            .await
            .unwrap()
            .items),
        vec![gold.id]
    );
    let neither = ListFilter::parse(Some("acme"), Some("tier=gold")).unwrap();
    assert!(
        s.list_tenants_matching(None, &neither, &p)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn filtered_pages_are_full_and_continue(h: &Harness) {
    let s = &*h.store;
    let w = WriteOptions::default();
    let c = cluster("big");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut gold = Vec::new();
    for i in 0..40 {
        let mut t = tenant(c.id, &format!("t{i}"));
        // Every third tenant is gold, scattered among the others by id.
        if i % 3 == 0 {
            t.labels = labels(&[("tier", "gold")]);
            gold.push(t.id);
        } else {
            t.labels = labels(&[("tier", "silver")]);
        }
        s.create_tenant(&t, &w).await.unwrap();
    }
    gold.sort();
    assert_eq!(gold.len(), 14);
    let f = filter("tier=gold");
    let cid = c.id;
    for limit in [1, 3, 5, 13, 14, 15] {
        let (ts, pages) = all(limit, |p| {
            let f = f.clone();
            async move { s.list_tenants_matching(Some(cid), &f, &p).await }
        })
        .await;
        let got: Vec<_> = ts.iter().map(|t| t.id).collect();
        assert_eq!(got, gold, "limit {limit}: every match once, by id");
        assert_eq!(pages, 14usize.div_ceil(limit as usize), "limit {limit}");
        let (cs, _) = all(limit, |p| {
            let f = f.clone();
            async move { s.list_tenants_matching(None, &f, &p).await }
        })
        .await;
        assert_eq!(cs.len(), 14);
    }
    // The negation pages through the rest, likewise.
    let (rest, _) = all(4, |p| async move {
        s.list_tenants_matching(Some(cid), &filter("tier!=gold"), &p)
            .await
    })
    .await;
    assert_eq!(rest.len(), 26);
    assert!(rest.iter().all(|t| t.labels["tier"] == "silver"));
}

async fn bad_filters_are_validation_errors(h: &Harness) {
    let s = &*h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let pr = project(&t, "web");
    s.create_project(&pr, &w).await.unwrap();
    let p = ListParams::default();

    // A name that no record can have is refused, not sent to the database (Postgres
    // cannot even receive a NUL).
    for bad in ["Acme", "acme'; DROP TABLE tenants; --", "a\u{0}b", ""] {
        let f = ListFilter {
            name: Some(bad.into()),
            ..Default::default()
        };
        let e = s.list_tenants_matching(None, &f, &p).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Validation(v) if v.violations[0].field == "name"),
            "{bad:?}: {e}"
        );
        assert!(s.list_clusters_matching(&f, &p).await.is_err());
        assert!(s.list_projects_matching(t.id, &f, &p).await.is_err());
        assert!(s.list_apps_matching(pr.id, &f, &p).await.is_err());
    }
    assert_eq!(
        s.list_tenants(None, &p).await.unwrap().items,
        vec![t.clone()],
        "nothing changed"
    );

    let e = s
        .list_apps_matching(pr.id, &filter("tier=gold"), &p)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Validation(v) if v.violations[0].field == "labelSelector"
            && v.violations[0].reason.contains("apps have no labels")),
        "{e}"
    );

    // Bad paging is still refused with a filter.
    let e = s
        .list_tenants_matching(None, &filter("tier"), &ListParams::first(0))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Validation(_)), "{e}");
    let bad_cursor = ListParams {
        limit: None,
        cursor: Some("nope!".into()),
    };
    assert!(matches!(
        s.list_clusters_matching(&filter("tier"), &bad_cursor).await,
        Err(StoreError::Validation(_))
    ));
}
