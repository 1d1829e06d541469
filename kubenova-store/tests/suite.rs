//! One behavioural suite, run against SQLite and Postgres.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kubenova_api::ids::*;
use kubenova_api::model::*;
use kubenova_store::*;
use std::collections::HashSet;
use std::sync::Arc;

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
    ping_reports_current_migrations,
    cluster_crud_and_unique_names,
    tenant_project_app_lifecycle,
    uniqueness_scopes,
    optimistic_concurrency,
    pagination_is_stable_and_complete,
    cascade_rules,
    desired_state_revisions_and_changes,
    app_revisions_and_runs,
    usage_upsert_and_query,
    audit_append_and_query,
    idempotency_records,
    write_options_are_atomic,
    secrets_encrypted_and_rotated,
    concurrent_writers_lose_nothing,
    status_updates_do_not_bump_revision,
    older_status_never_overwrites_newer,
    issued_credentials_and_revocations,
    secret_if_absent_keeps_the_first,
    secret_replace_is_conditional_on_the_version,
    active_workflow_runs_and_retention,
    usage_queries_never_drop_rows_silently,
    usage_day_sums_split_days_at_pricing_bounds,
    usage_ingest_is_idempotent_per_hour,
    tenant_plan_history_records_each_change,
    plan_prices_are_versioned_only_on_change,
    usage_export_pages_across_tenants,
    cluster_kubeconfig_is_replaced_with_the_record,
    heartbeats_keep_the_cluster_version,
    agent_requests_are_relayed_once_and_bounded,
    agent_answers_belong_to_their_cluster_and_come_in_order,
    agent_requests_expire_and_go_with_their_app,
    agent_requests_and_answers_are_announced_across_replicas,
    memberships_follow_owners_and_access,
    memberships_go_with_their_tenant_project_or_cluster,
    membership_lookups_are_bounded,
    memberships_are_backfilled_once,
    derived_credentials_follow_the_owners,
    derived_credentials_follow_the_project_access,
    derived_credentials_go_with_their_project_tenant_or_cluster,
    issuance_on_derived_rights_checks_the_memberships,
);

async fn ping_reports_current_migrations(h: &Harness) {
    let health = h.store.ping().await.unwrap();
    assert!(health.migrations_current, "{health:?}");
    assert_eq!(health.applied_migration, health.expected_migration);
    assert!(health.expected_migration >= 1);
}

async fn cluster_crud_and_unique_names(h: &Harness) {
    let s = &h.store;
    let c = cluster("prod-1");
    s.create_cluster(
        &c,
        b"apiVersion: v1\nkind: Config\n",
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(s.get_cluster(c.id).await.unwrap(), c);
    let dup = cluster("prod-1");
    let err = s
        .create_cluster(&dup, b"x", &WriteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("prod-1")),
        "{err}"
    );
    assert!(matches!(
        s.get_cluster(dup.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        &s.cluster_kubeconfig(c.id).await.unwrap()[..],
        b"apiVersion: v1\nkind: Config\n"
    );

    let mut upd = c.clone();
    upd.status = ClusterStatus::Bootstrapping;
    upd.version = 2;
    s.update_cluster(&upd, 1, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        s.get_cluster(c.id).await.unwrap().status,
        ClusterStatus::Bootstrapping
    );

    s.delete_cluster(c.id, false, &WriteOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        s.get_cluster(c.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.cluster_kubeconfig(c.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete_cluster(c.id, false, &WriteOptions::default())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn tenant_project_app_lifecycle(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c1");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    assert_eq!(s.get_tenant(t.id).await.unwrap(), t);
    let p = project(&t, "payments");
    s.create_project(&p, &w).await.unwrap();
    assert_eq!(s.get_project(p.id).await.unwrap(), p);
    let (a, r) = app(&p, "web");
    s.create_app(&a, &r, &w).await.unwrap();
    assert_eq!(s.get_app(a.id).await.unwrap(), a);
    assert_eq!(
        s.list_apps(p.id, &ListParams::default())
            .await
            .unwrap()
            .items,
        vec![a.clone()]
    );
    assert_eq!(
        s.list_projects(t.id, &ListParams::default())
            .await
            .unwrap()
            .items,
        vec![p.clone()]
    );
    assert_eq!(
        s.list_tenants(Some(c.id), &ListParams::default())
            .await
            .unwrap()
            .items,
        vec![t.clone()]
    );
    assert_eq!(
        s.list_tenants(None, &ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Parents must exist and match.
    let orphan = tenant(ClusterId::new(), "orphan");
    assert!(matches!(
        s.create_tenant(&orphan, &w).await,
        Err(StoreError::NotFound {
            kind: "cluster",
            ..
        })
    ));
    let mut wrong = project(&t, "x");
    wrong.tenant_id = TenantId::new();
    assert!(matches!(
        s.create_project(&wrong, &w).await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
    let (mut wrong_app, rr) = app(&p, "y");
    wrong_app.tenant_id = TenantId::new();
    assert!(matches!(
        s.create_app(&wrong_app, &rr, &w).await,
        Err(StoreError::NotFound {
            kind: "project",
            ..
        })
    ));
    // Nothing half-written by the failures.
    assert_eq!(
        s.list_apps(p.id, &ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    s.delete_app(a.id, &w).await.unwrap();
    s.delete_project(p.id, false, &w).await.unwrap();
    s.delete_tenant(t.id, false, &w).await.unwrap();
    assert!(matches!(
        s.get_tenant(t.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn uniqueness_scopes(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c1 = cluster("c1");
    let c2 = cluster("c2");
    s.create_cluster(&c1, b"k", &w).await.unwrap();
    s.create_cluster(&c2, b"k", &w).await.unwrap();
    let t1 = tenant(c1.id, "acme");
    s.create_tenant(&t1, &w).await.unwrap();
    // Same tenant name in another cluster is fine; in the same cluster it is not.
    s.create_tenant(&tenant(c2.id, "acme"), &w).await.unwrap();
    let err = s
        .create_tenant(&tenant(c1.id, "acme"), &w)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("acme")),
        "{err}"
    );
    let t2 = tenant(c1.id, "globex");
    s.create_tenant(&t2, &w).await.unwrap();
    // Same project name in two tenants is fine, twice in one is not.
    let p1 = project(&t1, "web");
    s.create_project(&p1, &w).await.unwrap();
    s.create_project(&project(&t2, "web"), &w).await.unwrap();
    assert!(matches!(
        s.create_project(&project(&t1, "web"), &w).await,
        Err(StoreError::Conflict(_))
    ));
    let (a, r) = app(&p1, "api");
    s.create_app(&a, &r, &w).await.unwrap();
    let (a2, r2) = app(&p1, "api");
    assert!(matches!(
        s.create_app(&a2, &r2, &w).await,
        Err(StoreError::Conflict(_))
    ));
    // Renaming onto a taken name is a conflict too.
    let mut renamed = t2.clone();
    renamed.name = "acme".into();
    renamed.version = 2;
    assert!(matches!(
        s.update_tenant(&renamed, 1, &w).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn optimistic_concurrency(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let mut a = t.clone();
    a.owners.push("bob@example.com".into());
    a.version = 2;
    s.update_tenant(&a, 1, &w).await.unwrap();
    let mut b = t.clone();
    b.owners.push("carol@example.com".into());
    b.version = 2;
    let err = s.update_tenant(&b, 1, &w).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::PreconditionFailed {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.get_tenant(t.id).await.unwrap().owners, a.owners);
    // Version must advance by one.
    let mut bad = a.clone();
    bad.version = 9;
    assert!(matches!(
        s.update_tenant(&bad, 2, &w).await,
        Err(StoreError::Validation(_))
    ));
    // Missing record is 404, not 412.
    let ghost = tenant(c.id, "ghost");
    let mut g2 = ghost.clone();
    g2.version = 2;
    assert!(matches!(
        s.update_tenant(&g2, 1, &w).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn pagination_is_stable_and_complete(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut want = vec![];
    for i in 0..23 {
        let t = tenant(c.id, &format!("t{i:02}"));
        s.create_tenant(&t, &w).await.unwrap();
        want.push(t.id);
    }
    let mut got = vec![];
    let mut params = ListParams::first(5);
    let mut pages = 0;
    loop {
        let page = s.list_tenants(Some(c.id), &params).await.unwrap();
        pages += 1;
        got.extend(page.items.iter().map(|t| t.id));
        match page.next_cursor {
            Some(cur) => params.cursor = Some(cur),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(got, want, "ids come in creation order, each once");
    let bad = ListParams {
        limit: Some(5),
        cursor: Some("garbage!".into()),
    };
    assert!(matches!(
        s.list_tenants(Some(c.id), &bad).await,
        Err(StoreError::Validation(_))
    ));
    assert!(matches!(
        s.list_tenants(None, &ListParams::first(0)).await,
        Err(StoreError::Validation(_))
    ));
}

async fn cascade_rules(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    let (a, r) = app(&p, "api");
    s.create_app(&a, &r, &w).await.unwrap();

    let err = s.delete_project(p.id, false, &w).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("1 app")),
        "{err}"
    );
    let err = s.delete_tenant(t.id, false, &w).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("1 project")),
        "{err}"
    );
    let err = s.delete_cluster(c.id, false, &w).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("1 tenant")),
        "{err}"
    );
    assert!(
        s.get_app(a.id).await.is_ok(),
        "refused deletes change nothing"
    );

    s.delete_tenant(t.id, true, &w).await.unwrap();
    assert!(matches!(
        s.get_app(a.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_project(p.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_app_revision(a.id, 1).await,
        Err(StoreError::NotFound { .. })
    ));

    let t2 = tenant(c.id, "again");
    s.create_tenant(&t2, &w).await.unwrap();
    s.delete_cluster(c.id, true, &w).await.unwrap();
    assert!(matches!(
        s.get_tenant(t2.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn desired_state_revisions_and_changes(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    let other = cluster("other");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    s.create_cluster(&other, b"k", &w).await.unwrap();
    assert_eq!(s.cluster_revision(c.id).await.unwrap(), 0);
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    let (a, r) = app(&p, "api");
    s.create_app(&a, &r, &w).await.unwrap();
    s.create_tenant(&tenant(other.id, "x"), &w).await.unwrap();
    assert_eq!(s.cluster_revision(c.id).await.unwrap(), 3);
    assert_eq!(
        s.cluster_revision(other.id).await.unwrap(),
        1,
        "revisions are per cluster"
    );

    // A failed write does not bump.
    assert!(s.create_tenant(&tenant(c.id, "acme"), &w).await.is_err());
    assert_eq!(s.cluster_revision(c.id).await.unwrap(), 3);

    let ch = s.changes_since(c.id, 1, 100).await.unwrap().unwrap();
    assert_eq!(
        ch.iter()
            .map(|c| (c.revision, c.kind, c.object_id, c.deleted))
            .collect::<Vec<_>>(),
        vec![
            (2, ObjectKind::Project, p.id.0, false),
            (3, ObjectKind::App, a.id.0, false)
        ]
    );
    s.delete_tenant(t.id, true, &w).await.unwrap();
    let ch = s.changes_since(c.id, 3, 100).await.unwrap().unwrap();
    assert_eq!(
        ch.iter()
            .map(|c| (c.kind, c.object_id, c.deleted))
            .collect::<Vec<_>>(),
        vec![
            (ObjectKind::App, a.id.0, true),
            (ObjectKind::Project, p.id.0, true),
            (ObjectKind::Tenant, t.id.0, true)
        ]
    );
    assert_eq!(
        s.changes_since(c.id, 6, 100).await.unwrap().unwrap(),
        vec![]
    );
    // Compaction: cursors at or below the compacted revision need a snapshot.
    s.compact_changes(c.id, 4).await.unwrap();
    assert_eq!(s.changes_since(c.id, 2, 100).await.unwrap(), None);
    assert_eq!(
        s.changes_since(c.id, 4, 100).await.unwrap().unwrap().len(),
        2
    );
    assert!(matches!(
        s.cluster_revision(ClusterId::new()).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn app_revisions_and_runs(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    let (mut a, r1) = app(&p, "api");
    s.create_app(&a, &r1, &w).await.unwrap();
    for n in 2..=4 {
        let spec = app_spec("api", &format!("nginx:1.{n}"));
        let rev = AppRevision {
            number: n,
            spec: spec.clone(),
            created_by: "bob".into(),
            created_at: now(),
        };
        let expected = a.version;
        a.spec = spec;
        a.revision = n;
        a.version += 1;
        s.update_app(&a, expected, Some(&rev), &w).await.unwrap();
    }
    let page = s
        .list_app_revisions(a.id, &ListParams::first(3))
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|r| r.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let next = s
        .list_app_revisions(
            a.id,
            &ListParams {
                limit: Some(3),
                cursor: page.next_cursor,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        next.items.iter().map(|r| r.number).collect::<Vec<_>>(),
        vec![4]
    );
    assert!(next.next_cursor.is_none());
    assert_eq!(
        s.get_app_revision(a.id, 3)
            .await
            .unwrap()
            .spec
            .image
            .as_deref(),
        Some("nginx:1.3")
    );
    assert!(matches!(
        s.get_app_revision(a.id, 9).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.list_app_revisions(AppId::new(), &ListParams::default())
            .await,
        Err(StoreError::NotFound { .. })
    ));

    let mut run = WorkflowRun {
        id: RunId::new(),
        app_id: a.id,
        status: RunStatus::Requested,
        inputs: serde_json::json!({"image": "x"}),
        result: None,
        started_at: now(),
        ended_at: None,
    };
    s.create_workflow_run(&run, &w).await.unwrap();
    run.status = RunStatus::Succeeded;
    run.ended_at = Some(now());
    s.update_workflow_run(&run).await.unwrap();
    assert_eq!(s.get_workflow_run(run.id).await.unwrap(), run);
    assert_eq!(
        s.list_workflow_runs(a.id, &ListParams::default())
            .await
            .unwrap()
            .items,
        vec![run.clone()]
    );
    let mut orphan = run.clone();
    orphan.id = RunId::new();
    orphan.app_id = AppId::new();
    assert!(matches!(
        s.create_workflow_run(&orphan, &w).await,
        Err(StoreError::NotFound { .. })
    ));

    // An app change and the run it requests commit together: a run that cannot be
    // written (its id is taken) leaves the app, its revisions and the audit unchanged.
    let before = s.get_app(a.id).await.unwrap();
    let mut deployed = before.clone();
    deployed.spec = app_spec("api", "nginx:1.5");
    deployed.revision = 5;
    deployed.deployed_revision = Some(5);
    deployed.version += 1;
    let rev5 = AppRevision {
        number: 5,
        spec: deployed.spec.clone(),
        created_by: "bob".into(),
        created_at: now(),
    };
    let deploy_audit = audit("bob", "app", &a.id.to_string());
    let opts = WriteOptions {
        audit: Some(&deploy_audit),
        idempotency: None,
    };
    let taken = WorkflowRun {
        inputs: serde_json::json!({"action": "deploy", "revision": 5}),
        ..run.clone()
    };
    let err = s
        .update_app_with_run(&deployed, before.version, Some(&rev5), &taken, &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("already exists")),
        "{err:?}"
    );
    assert_eq!(s.get_app(a.id).await.unwrap(), before);
    assert!(matches!(
        s.get_app_revision(a.id, 5).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        s.query_audit(&AuditQuery {
            actor: Some("bob".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .is_empty()
    );
    // A run of another app is refused before anything is written.
    let foreign = WorkflowRun {
        id: RunId::new(),
        app_id: AppId::new(),
        ..taken.clone()
    };
    assert!(matches!(
        s.update_app_with_run(&deployed, before.version, Some(&rev5), &foreign, &opts)
            .await,
        Err(StoreError::Validation(_))
    ));
    assert_eq!(s.get_app(a.id).await.unwrap(), before);
    // With a fresh run id both are written.
    let fresh = WorkflowRun {
        id: RunId::new(),
        ..taken
    };
    s.update_app_with_run(&deployed, before.version, Some(&rev5), &fresh, &opts)
        .await
        .unwrap();
    assert_eq!(s.get_app(a.id).await.unwrap(), deployed);
    assert_eq!(s.get_workflow_run(fresh.id).await.unwrap(), fresh);
    assert_eq!(s.get_app_revision(a.id, 5).await.unwrap(), rev5);
    // A stale version writes neither.
    let stale = WorkflowRun {
        id: RunId::new(),
        ..fresh
    };
    assert!(matches!(
        s.update_app_with_run(&deployed, before.version, None, &stale, &opts)
            .await,
        Err(StoreError::PreconditionFailed { .. })
    ));
    assert!(matches!(
        s.get_workflow_run(stale.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn usage_upsert_and_query(h: &Harness) {
    let s = &h.store;
    let c = ClusterId::new();
    let t = TenantId::new();
    let p = ProjectId::new();
    let hour = |hh: u8| {
        time::macros::datetime!(2026-03-01 00:00 UTC)
            .replace_hour(hh)
            .unwrap()
    };
    let rec = |project: Option<ProjectId>, hh: u8, cpu: i64| UsageRecord {
        cluster_id: c,
        tenant_id: t,
        project_id: project,
        hour: hour(hh),
        cpu_millicores: cpu,
        memory_bytes: 1 << 30,
        storage_bytes: 0,
        load_balancers: 1,
        namespaces: 2,
        pods: 3,
        apps: 1,
        cpu_limit_millicores: 2 * cpu,
        memory_limit_bytes: 2 << 30,
        storage_by_class: Default::default(),
        quotas: vec![QuotaUse {
            namespace: "acme-apps".into(),
            name: "compute".into(),
            resource: "requests.cpu".into(),
            used: kubenova_api::quantity::Quantity::from_nanos(i128::from(cpu) * 1_000_000),
            hard: "1".parse().unwrap(),
        }],
        cluster_capacity: None,
    };
    s.upsert_usage(&[rec(None, 1, 100), rec(None, 2, 200), rec(Some(p), 1, 50)])
        .await
        .unwrap();
    // Re-sending an hour replaces it: idempotent, no double counting.
    s.upsert_usage(&[rec(None, 1, 150)]).await.unwrap();
    let q = UsageQuery {
        tenant: t,
        cluster: None,
        project: None,
        all_projects: false,
        from: hour(0),
        to: hour(23),
        max_records: DEFAULT_USAGE_MAX_RECORDS,
    };
    let got = s.query_usage(&q).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|r| (r.hour, r.cpu_millicores))
            .collect::<Vec<_>>(),
        vec![(hour(1), 150), (hour(2), 200)]
    );
    let got = s
        .query_usage(&UsageQuery {
            project: Some(p),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(got, vec![rec(Some(p), 1, 50)]);
    assert_eq!(
        s.query_usage(&UsageQuery {
            all_projects: true,
            ..q.clone()
        })
        .await
        .unwrap()
        .len(),
        3
    );
    assert_eq!(
        s.query_usage(&UsageQuery {
            from: hour(2),
            ..q.clone()
        })
        .await
        .unwrap()
        .len(),
        1
    );
    // Invalid records are refused whole.
    let mut bad = rec(None, 5, 1);
    bad.hour = bad.hour.replace_minute(30).unwrap();
    assert!(matches!(
        s.upsert_usage(&[rec(None, 4, 1), bad]).await,
        Err(StoreError::Validation(_))
    ));
    assert_eq!(
        s.query_usage(&UsageQuery { from: hour(4), ..q })
            .await
            .unwrap()
            .len(),
        0
    );
}

fn audit(actor: &str, kind: &str, id: &str) -> AuditEvent {
    AuditEvent {
        id: AuditId::new(),
        at: now(),
        actor: actor.into(),
        roles: vec!["admin".into()],
        action: format!("{kind}.create"),
        resource_kind: kind.into(),
        resource_id: id.into(),
        outcome: AuditOutcome::Success,
        http_status: Some(201),
        request_id: "r".into(),
        source_ip: "127.0.0.1".into(),
        details: None,
    }
}

async fn audit_append_and_query(h: &Harness) {
    let s = &h.store;
    let start = now();
    for i in 0..7 {
        s.append_audit(&audit(
            if i % 2 == 0 { "alice" } else { "bob" },
            "tenant",
            &format!("t{i}"),
        ))
        .await
        .unwrap();
    }
    s.append_audit(&audit("alice", "cluster", "c1"))
        .await
        .unwrap();
    let all = s
        .query_audit(&AuditQuery {
            from: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.items.len(), 8);
    let alice = s
        .query_audit(&AuditQuery {
            actor: Some("alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.items.len(), 5);
    let res = s
        .query_audit(&AuditQuery {
            resource_kind: Some("tenant".into()),
            resource_id: Some("t3".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(res.items.len(), 1);
    assert_eq!(res.items[0].actor, "bob");
    let first = s
        .query_audit(&AuditQuery {
            page: ListParams::first(3),
            ..Default::default()
        })
        .await
        .unwrap();
    let second = s
        .query_audit(&AuditQuery {
            page: ListParams {
                limit: Some(3),
                cursor: first.next_cursor.clone(),
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: HashSet<_> = first
        .items
        .iter()
        .chain(second.items.iter())
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 6);
    // Filters with characters no database column holds are refused, not a server error.
    let nul = s
        .query_audit(&AuditQuery {
            resource_id: Some("a\u{0}b".into()),
            ..Default::default()
        })
        .await;
    assert!(matches!(nul, Err(StoreError::Validation(_))), "{nul:?}");
    let future = s
        .query_audit(&AuditQuery {
            from: Some(now() + time::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(future.items.is_empty());
}

async fn idempotency_records(h: &Harness) {
    let s = &h.store;
    let t0 = now();
    let rec = IdempotencyRecord {
        subject: "alice".into(),
        scope: "owner-of-acme".into(),
        key: "k-1".into(),
        request_hash: "h1".into(),
        status: 201,
        body: b"{\"id\":1}".to_vec(),
        created_at: t0,
        expires_at: t0 + time::Duration::hours(24),
    };
    s.put_idempotency(&rec).await.unwrap();
    assert_eq!(
        s.get_idempotency("alice", "owner-of-acme", "k-1", t0)
            .await
            .unwrap(),
        Some(rec.clone())
    );
    assert_eq!(
        s.get_idempotency("bob", "owner-of-acme", "k-1", t0)
            .await
            .unwrap(),
        None,
        "keys are per subject"
    );
    assert_eq!(
        s.get_idempotency("alice", "reader-of-acme", "k-1", t0)
            .await
            .unwrap(),
        None,
        "keys are per scope"
    );
    assert!(matches!(
        s.put_idempotency(&rec).await,
        Err(StoreError::Conflict(_))
    ));
    // The same subject and key under another scope is another record.
    let other_scope = IdempotencyRecord {
        scope: "reader-of-acme".into(),
        request_hash: "h-reader".into(),
        ..rec.clone()
    };
    s.put_idempotency(&other_scope).await.unwrap();
    assert_eq!(
        s.get_idempotency("alice", "reader-of-acme", "k-1", t0)
            .await
            .unwrap(),
        Some(other_scope)
    );
    assert_eq!(
        s.get_idempotency("alice", "owner-of-acme", "k-1", t0)
            .await
            .unwrap(),
        Some(rec.clone())
    );
    let later = t0 + time::Duration::hours(25);
    assert_eq!(
        s.get_idempotency("alice", "owner-of-acme", "k-1", later)
            .await
            .unwrap(),
        None,
        "expired"
    );
    // An expired key may be reused.
    let mut again = rec.clone();
    again.created_at = later;
    again.expires_at = later + time::Duration::hours(24);
    again.request_hash = "h2".into();
    s.put_idempotency(&again).await.unwrap();
    assert_eq!(
        s.purge_idempotency(later + time::Duration::hours(48))
            .await
            .unwrap(),
        2
    );
}

async fn write_options_are_atomic(h: &Harness) {
    let s = &h.store;
    let c = cluster("c");
    s.create_cluster(&c, b"k", &WriteOptions::default())
        .await
        .unwrap();
    let t = tenant(c.id, "acme");
    let ev = audit("alice", "tenant", &t.id.to_string());
    let t0 = now();
    let idem = IdempotencyRecord {
        subject: "alice".into(),
        scope: "admin".into(),
        key: "create-acme".into(),
        request_hash: "h".into(),
        status: 201,
        body: serde_json::to_vec(&t).unwrap(),
        created_at: t0,
        expires_at: t0 + time::Duration::hours(1),
    };
    s.create_tenant(
        &t,
        &WriteOptions {
            audit: Some(&ev),
            idempotency: Some(&idem),
        },
    )
    .await
    .unwrap();
    assert!(
        s.get_idempotency("alice", "admin", "create-acme", t0)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.query_audit(&AuditQuery::default()).await.unwrap().items,
        vec![ev.clone()]
    );
    // A failing write stores neither its audit event nor its idempotency record...
    let dup = tenant(c.id, "acme");
    let ev2 = audit("alice", "tenant", &dup.id.to_string());
    let idem2 = IdempotencyRecord {
        key: "create-acme-2".into(),
        ..idem.clone()
    };
    assert!(
        s.create_tenant(
            &dup,
            &WriteOptions {
                audit: Some(&ev2),
                idempotency: Some(&idem2)
            }
        )
        .await
        .is_err()
    );
    assert!(
        s.get_idempotency("alice", "admin", "create-acme-2", t0)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.query_audit(&AuditQuery::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // ...and a taken idempotency key rolls the write back.
    let other = tenant(c.id, "other");
    assert!(matches!(
        s.create_tenant(
            &other,
            &WriteOptions {
                audit: None,
                idempotency: Some(&idem)
            }
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.get_tenant(other.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn secrets_encrypted_and_rotated(h: &Harness) {
    let s = &h.store;
    let marker = b"client-key-data: SUPER-SECRET-MARKER-0123456789";
    let c = cluster("c");
    s.create_cluster(&c, marker, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(&s.cluster_kubeconfig(c.id).await.unwrap()[..], marker);

    // No plaintext at rest.
    if let Some(path) = &h.sqlite_path {
        if let Some(sq) = &h.sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(sq.pool())
                .await
                .unwrap();
        }
        let mut bytes = std::fs::read(path).unwrap();
        let wal = path.with_extension("db-wal");
        if let Ok(w) = std::fs::read(wal) {
            bytes.extend(w);
        }
        assert!(
            !contains(&bytes, b"SUPER-SECRET-MARKER"),
            "plaintext kubeconfig in the SQLite file"
        );
        assert!(
            contains(&bytes, b"pending_bootstrap"),
            "sanity: the file holds the cluster record"
        );
    }
    if let Some(pg) = &h.pg {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT t::text FROM (SELECT * FROM secrets) t UNION ALL SELECT t::text FROM (SELECT * FROM clusters) t",
        )
        .fetch_all(pg.pool())
        .await
        .unwrap();
        assert!(rows.len() >= 2);
        for (r,) in rows {
            assert!(
                !r.contains("SUPER-SECRET-MARKER"),
                "plaintext in Postgres: {r}"
            );
            // bytea is rendered as hex in text output: check that too.
            assert!(!r.contains(&hex::encode(b"SUPER-SECRET-MARKER")));
        }
    }

    // Tampering is detected.
    let tamper = "UPDATE secrets SET ciphertext = $1";
    let ct: Vec<u8> = match (&h.sqlite, &h.pg) {
        (Some(sq), _) => sqlx::query_scalar("SELECT ciphertext FROM secrets")
            .fetch_one(sq.pool())
            .await
            .unwrap(),
        (_, Some(pg)) => sqlx::query_scalar("SELECT ciphertext FROM secrets")
            .fetch_one(pg.pool())
            .await
            .unwrap(),
        _ => unreachable!(),
    };
    let mut bad = ct.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    exec(h, tamper, bad).await;
    assert!(matches!(
        s.cluster_kubeconfig(c.id).await,
        Err(StoreError::Crypto(_))
    ));
    exec(h, tamper, ct).await;
    assert_eq!(&s.cluster_kubeconfig(c.id).await.unwrap()[..], marker);

    // Rotation: add k2, re-wrap, then k1 can be retired.
    s.put_secret(c.id.0, "agent-credential", b"hash-abc")
        .await
        .unwrap();
    set_keys(h, keyring(&[("k1", 1), ("k2", 2)]));
    assert_eq!(s.rotate_keys().await.unwrap(), 2);
    assert_eq!(s.rotate_keys().await.unwrap(), 0, "idempotent");
    set_keys(h, keyring(&[("k2", 2)]));
    assert_eq!(&s.cluster_kubeconfig(c.id).await.unwrap()[..], marker);
    assert_eq!(
        &s.get_secret(c.id.0, "agent-credential").await.unwrap()[..],
        b"hash-abc"
    );
    set_keys(h, keyring(&[("k3", 3)]));
    assert!(matches!(
        s.cluster_kubeconfig(c.id).await,
        Err(StoreError::Crypto(_))
    ));
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn set_keys(h: &Harness, k: kubenova_store::crypto::Keyring) {
    if let Some(sq) = &h.sqlite {
        sq.set_keyring(k);
    } else if let Some(pg) = &h.pg {
        pg.set_keyring(k);
    }
}

async fn exec(h: &Harness, sql: &str, bytes: Vec<u8>) {
    if let Some(sq) = &h.sqlite {
        sqlx::query(sql)
            .bind(bytes)
            .execute(sq.pool())
            .await
            .unwrap();
    } else if let Some(pg) = &h.pg {
        sqlx::query(sql)
            .bind(bytes)
            .execute(pg.pool())
            .await
            .unwrap();
    }
}

async fn concurrent_writers_lose_nothing(h: &Harness) {
    let s = Arc::clone(&h.store);
    let c = cluster("c");
    s.create_cluster(&c, b"k", &WriteOptions::default())
        .await
        .unwrap();
    let shared = tenant(c.id, "shared");
    s.create_tenant(&shared, &WriteOptions::default())
        .await
        .unwrap();
    let mut tasks = vec![];
    for i in 0..50 {
        let s = Arc::clone(&s);
        let cid = c.id;
        let tid = shared.id;
        tasks.push(tokio::spawn(async move {
            // Everyone also races to create the same name: exactly one wins.
            let dup = s
                .create_tenant(&tenant(cid, "contested"), &WriteOptions::default())
                .await
                .is_ok();
            s.create_tenant(&tenant(cid, &format!("t{i}")), &WriteOptions::default())
                .await
                .unwrap();
            // Read-modify-write with retry on 412: no update may be lost.
            loop {
                let mut t = s.get_tenant(tid).await.unwrap();
                let expected = t.version;
                t.owners.push(format!("user{i}@example.com"));
                t.version += 1;
                match s
                    .update_tenant(&t, expected, &WriteOptions::default())
                    .await
                {
                    Ok(()) => break,
                    Err(StoreError::PreconditionFailed { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            dup
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one 'contested' tenant");
    let t = s.get_tenant(shared.id).await.unwrap();
    assert_eq!(t.owners.len(), 51, "every concurrent update kept");
    assert_eq!(t.version, 51);
    let all = s
        .list_tenants(Some(c.id), &ListParams::first(500))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 52);
    // 1 shared + 50 + 1 contested creates + 50 updates.
    assert_eq!(s.cluster_revision(c.id).await.unwrap(), 102);
}

async fn status_updates_do_not_bump_revision(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let rev = s.cluster_revision(c.id).await.unwrap();
    let st = ObjectStatus {
        phase: Phase::Ready,
        conditions: vec![],
        observed_revision: Some(rev),
        message: String::new(),
    };
    let got = s.set_tenant_status(t.id, &st).await.unwrap();
    assert_eq!(got.status, st);
    assert_eq!(got.version, 2);
    // Same status again: no write, no version churn.
    assert_eq!(s.set_tenant_status(t.id, &st).await.unwrap().version, 2);
    assert_eq!(s.cluster_revision(c.id).await.unwrap(), rev);
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    assert_eq!(
        s.set_project_status(p.id, &st).await.unwrap().status.phase,
        Phase::Ready
    );
    let (a, r) = app(&p, "api");
    s.create_app(&a, &r, &w).await.unwrap();
    let got = s.set_app_status(a.id, &st, Some("running")).await.unwrap();
    assert_eq!(got.vela_phase.as_deref(), Some("running"));
    assert!(matches!(
        s.set_tenant_status(TenantId::new(), &st).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// A status report older than the stored one (lower `observedRevision`) is refused inside
/// the conditional write: sequentially, and when old and new reports race.
async fn older_status_never_overwrites_newer(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    let (a, r) = app(&p, "api");
    s.create_app(&a, &r, &w).await.unwrap();
    let at = |phase: Phase, rev: i64| ObjectStatus {
        phase,
        conditions: vec![],
        observed_revision: Some(rev),
        message: format!("at {rev}"),
    };
    let new = at(Phase::Ready, 5);
    let old = at(Phase::Degraded, 4);

    assert_eq!(s.set_tenant_status(t.id, &new).await.unwrap().status, new);
    let got = s.set_tenant_status(t.id, &old).await.unwrap();
    assert_eq!(got.status, new, "an older report replaced a newer one");
    assert_eq!(s.get_tenant(t.id).await.unwrap().status, new);
    // The same revision moves on (the phase changes within one revision).
    let same = at(Phase::Degraded, 5);
    assert_eq!(s.set_tenant_status(t.id, &same).await.unwrap().status, same);

    assert_eq!(s.set_project_status(p.id, &new).await.unwrap().status, new);
    assert_eq!(s.set_project_status(p.id, &old).await.unwrap().status, new);
    assert_eq!(s.get_project(p.id).await.unwrap().status, new);

    let got = s.set_app_status(a.id, &new, Some("running")).await.unwrap();
    assert_eq!(
        (got.status, got.vela_phase.as_deref()),
        (new.clone(), Some("running"))
    );
    let got = s
        .set_app_status(a.id, &old, Some("workflowFailed"))
        .await
        .unwrap();
    assert_eq!(
        (got.status, got.vela_phase.as_deref()),
        (new.clone(), Some("running")),
        "an older report replaced the status or the KubeVela phase"
    );

    // Reports of revisions 1..=24 racing, in any order: the newest stays.
    let store = h.store.clone();
    let mut tasks = vec![];
    for rev in (1..=24).rev().chain(1..=24) {
        let store = store.clone();
        let st = at(Phase::Ready, 100 + rev);
        let (tid, pid, aid) = (t.id, p.id, a.id);
        tasks.push(tokio::spawn(async move {
            store.set_tenant_status(tid, &st).await.unwrap();
            store.set_project_status(pid, &st).await.unwrap();
            store.set_app_status(aid, &st, None).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let newest = Some(124);
    assert_eq!(
        s.get_tenant(t.id).await.unwrap().status.observed_revision,
        newest
    );
    assert_eq!(
        s.get_project(p.id).await.unwrap().status.observed_revision,
        newest
    );
    assert_eq!(
        s.get_app(a.id).await.unwrap().status.observed_revision,
        newest
    );
}

fn credential(
    tenant: TenantId,
    cluster: ClusterId,
    subject: &str,
    expires_in: time::Duration,
) -> IssuedCredential {
    let at = now();
    IssuedCredential {
        jti: uuid::Uuid::now_v7(),
        tenant_id: tenant,
        project_id: None,
        cluster_id: cluster,
        subject: subject.into(),
        role: AccessRole::Viewer,
        mode: CredentialMode::Token,
        issued_by: subject.into(),
        issued_at: at,
        expires_at: at + expires_in,
        revoked_at: None,
        revoked_by: None,
        revoked_reason: None,
        derived_from: None,
    }
}

async fn issued_credentials_and_revocations(h: &Harness) {
    let s = &h.store;
    let (t, other, c) = (TenantId::new(), TenantId::new(), ClusterId::new());
    let hour = time::Duration::hours(1);
    // Recorded with its audit event in one transaction.
    let mut alice = Vec::new();
    for _ in 0..3 {
        let cr = credential(t, c, "alice@example.com", hour);
        let ev = audit("alice@example.com", "credential", &cr.jti.to_string());
        s.record_credential(
            &cr,
            &WriteOptions {
                audit: Some(&ev),
                idempotency: None,
            },
        )
        .await
        .unwrap();
        alice.push(cr);
    }
    let mut bob = credential(t, c, "bob", hour);
    bob.project_id = Some(ProjectId::new());
    bob.role = AccessRole::Developer;
    bob.mode = CredentialMode::Exec;
    s.record_credential(&bob, &WriteOptions::default())
        .await
        .unwrap();
    let expired = credential(t, c, "bob", time::Duration::seconds(-10));
    s.record_credential(&expired, &WriteOptions::default())
        .await
        .unwrap();
    s.record_credential(
        &credential(other, c, "alice@example.com", hour),
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    // Duplicate jti is a conflict.
    assert!(matches!(
        s.record_credential(&bob, &WriteOptions::default()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_credential(bob.jti).await.unwrap(), bob);
    let audit_rows = s
        .query_audit(&AuditQuery {
            resource_kind: Some("credential".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit_rows.items.len(), 3);

    // Listing: per tenant, paginated in jti (issue) order, filtered by subject.
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_credentials(
                t,
                &CredentialQuery {
                    subject: None,
                    page: ListParams {
                        limit: Some(2),
                        cursor: cursor.take(),
                    },
                },
            )
            .await
            .unwrap();
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(all.len(), 5);
    let mut sorted = all.clone();
    sorted.sort_by_key(|c| c.jti);
    assert_eq!(all, sorted);
    let only_bob = s
        .list_credentials(
            t,
            &CredentialQuery {
                subject: Some("bob".into()),
                page: ListParams::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(only_bob.items.len(), 2);

    // Revocation by jti: once, then a no-op; unknown jti is NotFound.
    let at = now();
    let w = WriteOptions::default();
    assert!(
        s.revoke_credential(alice[0].jti, "admin", at, &w)
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_credential(alice[0].jti, "admin", at, &w)
            .await
            .unwrap()
    );
    let got = s.get_credential(alice[0].jti).await.unwrap();
    assert_eq!(got.revoked_at, Some(at));
    assert_eq!(got.revoked_by.as_deref(), Some("admin"));
    assert!(matches!(
        s.revoke_credential(uuid::Uuid::now_v7(), "admin", at, &w)
            .await,
        Err(StoreError::NotFound { .. })
    ));

    // Subject revocation: recorded, marks the unexpired unrevoked credentials of that
    // subject in that tenant only.
    assert_eq!(
        s.subject_revocation(t, "alice@example.com").await.unwrap(),
        None
    );
    let n = s
        .revoke_subject(t, "alice@example.com", "owner", false, at, &w)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let rev = s
        .subject_revocation(t, "alice@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            rev.revoked_at,
            rev.revoked_by.as_str(),
            rev.revoked_by_platform
        ),
        (at, "owner", false)
    );
    assert_eq!(
        s.subject_revocation(other, "alice@example.com")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.get_credential(alice[0].jti)
            .await
            .unwrap()
            .revoked_by
            .as_deref(),
        Some("admin")
    );
    assert!(
        s.get_credential(alice[2].jti)
            .await
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert!(
        s.get_credential(bob.jti)
            .await
            .unwrap()
            .revoked_at
            .is_none()
    );
    // Revoking again updates the record, marks nothing new.
    assert_eq!(
        s.revoke_subject(t, "alice@example.com", "admin", true, at, &w)
            .await
            .unwrap(),
        0
    );
    let rev = s
        .subject_revocation(t, "alice@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rev.revoked_by.as_str(), rev.revoked_by_platform),
        ("admin", true)
    );
    // ... but a revocation without a platform role never replaces a platform one.
    s.revoke_subject(t, "alice@example.com", "bob", false, at, &w)
        .await
        .unwrap();
    let rev = s
        .subject_revocation(t, "alice@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rev.revoked_by.as_str(), rev.revoked_by_platform),
        ("admin", true)
    );
    s.revoke_subject(t, "carol", "admin", true, at, &w)
        .await
        .unwrap();
    let page = s
        .list_subject_revocations(t, &ListParams::first(1))
        .await
        .unwrap();
    assert_eq!(page.items[0].subject, "alice@example.com");
    let page2 = s
        .list_subject_revocations(
            t,
            &ListParams {
                limit: Some(1),
                cursor: page.next_cursor,
            },
        )
        .await
        .unwrap();
    assert_eq!(page2.items[0].subject, "carol");
    assert!(page2.next_cursor.is_none());

    // Tenant-wide: the rest (not the expired one, not other tenants).
    assert_eq!(
        s.revoke_tenant_credentials(t, "admin", at, &w)
            .await
            .unwrap(),
        1
    );
    assert!(
        s.get_credential(bob.jti)
            .await
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert!(
        s.get_credential(expired.jti)
            .await
            .unwrap()
            .revoked_at
            .is_none()
    );
    let other_page = s
        .list_credentials(other, &CredentialQuery::default())
        .await
        .unwrap();
    assert!(other_page.items[0].revoked_at.is_none());

    // Lifting: a platform revocation only by a platform role (nothing changes otherwise,
    // the audit event of the refused lift is not written either).
    let lift_audit = audit("bob", "tenant", &t.to_string());
    let refused = s
        .lift_subject_revocation(
            t,
            "carol",
            false,
            &WriteOptions {
                audit: Some(&lift_audit),
                idempotency: None,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&refused, LiftOutcome::PlatformRevocation(r) if r.revoked_by == "admin" && r.revoked_by_platform),
        "{refused:?}"
    );
    assert!(s.subject_revocation(t, "carol").await.unwrap().is_some());
    assert!(
        s.query_audit(&AuditQuery {
            actor: Some("bob".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .is_empty()
    );
    assert_eq!(
        s.lift_subject_revocation(t, "carol", true, &w)
            .await
            .unwrap(),
        LiftOutcome::Lifted
    );
    assert_eq!(
        s.lift_subject_revocation(t, "carol", true, &w)
            .await
            .unwrap(),
        LiftOutcome::NotRevoked
    );
    assert_eq!(s.subject_revocation(t, "carol").await.unwrap(), None);
    // A revocation without a platform role is lifted without one.
    s.revoke_subject(t, "dave", "alice@example.com", false, at, &w)
        .await
        .unwrap();
    assert_eq!(
        s.lift_subject_revocation(t, "dave", false, &w)
            .await
            .unwrap(),
        LiftOutcome::Lifted
    );
}

async fn secret_if_absent_keeps_the_first(h: &Harness) {
    let s = &h.store;
    let owner = uuid::Uuid::nil();
    assert!(
        s.put_secret_if_absent(owner, "signing", b"first")
            .await
            .unwrap()
    );
    assert!(
        !s.put_secret_if_absent(owner, "signing", b"second")
            .await
            .unwrap()
    );
    assert_eq!(&s.get_secret(owner, "signing").await.unwrap()[..], b"first");
    s.put_secret(owner, "signing", b"third").await.unwrap();
    assert_eq!(&s.get_secret(owner, "signing").await.unwrap()[..], b"third");
}

async fn secret_replace_is_conditional_on_the_version(h: &Harness) {
    let s = &h.store;
    let owner = uuid::Uuid::nil();
    assert!(matches!(
        s.get_secret_versioned(owner, "keys").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.replace_secret(owner, "keys", b"x", 1).await,
        Err(StoreError::NotFound { .. })
    ));
    s.put_secret_if_absent(owner, "keys", b"v1").await.unwrap();
    let (v1, read) = s.get_secret_versioned(owner, "keys").await.unwrap();
    assert_eq!(&v1[..], b"v1");
    // Two writers read the same version: the first wins, the second is told.
    let won = s.replace_secret(owner, "keys", b"v2", read).await.unwrap();
    assert_eq!(won, read + 1);
    match s.replace_secret(owner, "keys", b"lost", read).await {
        Err(StoreError::PreconditionFailed {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (read, won)),
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    let (now, version) = s.get_secret_versioned(owner, "keys").await.unwrap();
    assert_eq!((&now[..], version), (&b"v2"[..], won));
    // A re-wrap under a new KEK is a change too.
    set_keys(h, keyring(&[("k1", 1), ("k2", 2)]));
    assert_eq!(s.rotate_keys().await.unwrap(), 1);
    assert!(matches!(
        s.replace_secret(owner, "keys", b"stale", won).await,
        Err(StoreError::PreconditionFailed { .. })
    ));
    let (still, _) = s.get_secret_versioned(owner, "keys").await.unwrap();
    assert_eq!(&still[..], b"v2");
}

async fn active_workflow_runs_and_retention(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    let (a, r1) = app(&p, "api");
    s.create_app(&a, &r1, &w).await.unwrap();
    let (other, r1) = app(&p, "other");
    s.create_app(&other, &r1, &w).await.unwrap();
    let run = |app: AppId, status: RunStatus| WorkflowRun {
        id: RunId::new(),
        app_id: app,
        status,
        inputs: serde_json::json!({}),
        result: None,
        started_at: now(),
        ended_at: None,
    };
    // Interleaved: finished, waiting, and another app's.
    let mut runs = Vec::new();
    for (n, status) in [
        RunStatus::Succeeded,
        RunStatus::Requested,
        RunStatus::Failed,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Requested,
        RunStatus::Succeeded,
    ]
    .into_iter()
    .enumerate()
    {
        let r = run(a.id, status);
        s.create_workflow_run(&r, &w).await.unwrap();
        runs.push(r);
        s.create_workflow_run(&run(other.id, RunStatus::Succeeded), &w)
            .await
            .unwrap();
        if n == 3 {
            // A run that finishes after it was written is no longer active.
            let mut done = runs[1].clone();
            done.status = RunStatus::Failed;
            s.update_workflow_run(&done).await.unwrap();
            runs[1] = done;
        }
    }
    let active_ids = |page: &Page<WorkflowRun>| page.items.iter().map(|r| r.id).collect::<Vec<_>>();
    let first = s
        .list_active_workflow_runs(a.id, &ListParams::first(1))
        .await
        .unwrap();
    assert_eq!(active_ids(&first), [runs[3].id]);
    let rest = s
        .list_active_workflow_runs(
            a.id,
            &ListParams {
                limit: Some(1),
                cursor: first.next_cursor.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(active_ids(&rest), [runs[5].id]);
    assert!(rest.next_cursor.is_none());
    assert_eq!(rest.items[0], runs[5]);

    // Keep the newest two finished runs of the app; the waiting ones and the other
    // app's runs stay.
    assert_eq!(s.prune_workflow_runs(a.id, 2).await.unwrap(), 3);
    let left: Vec<RunId> = s
        .list_workflow_runs(a.id, &ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, [runs[3].id, runs[4].id, runs[5].id, runs[6].id]);
    assert_eq!(s.prune_workflow_runs(a.id, 2).await.unwrap(), 0);
    assert_eq!(
        s.list_workflow_runs(other.id, &ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        7
    );
    assert_eq!(s.prune_workflow_runs(other.id, 1).await.unwrap(), 6);
}

async fn usage_queries_never_drop_rows_silently(h: &Harness) {
    let s = &h.store;
    let c = ClusterId::new();
    let t = TenantId::new();
    let p = ProjectId::new();
    let start = time::macros::datetime!(2026-01-01 00:00 UTC);
    let rec = |project: Option<ProjectId>, n: i64| UsageRecord {
        cluster_id: c,
        tenant_id: t,
        project_id: project,
        hour: start + time::Duration::hours(n),
        cpu_millicores: 1000 + n,
        memory_bytes: (1 << 33) + n,
        storage_bytes: 7 * n,
        load_balancers: n % 2,
        namespaces: 1,
        pods: n,
        apps: 0,
        cpu_limit_millicores: 0,
        memory_limit_bytes: 0,
        storage_by_class: Default::default(),
        quotas: Vec::new(),
        cluster_capacity: None,
    };
    const TENANT_LEVEL: i64 = 25;
    let mut records: Vec<UsageRecord> = (0..TENANT_LEVEL).map(|n| rec(None, n)).collect();
    records.extend((0..5).map(|n| rec(Some(p), n)));
    s.upsert_usage(&records).await.unwrap();
    let q = UsageQuery {
        tenant: t,
        cluster: Some(c),
        project: None,
        all_projects: false,
        from: start,
        to: start + time::Duration::days(2),
        max_records: 10,
    };
    // More matching records than the bound: a clear error, never a truncated list.
    match s.query_usage(&q).await {
        Err(StoreError::Validation(v)) => {
            assert_eq!(v.violations[0].field, "to");
            assert!(v.violations[0].reason.contains("more than 10"), "{v:?}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    // The totals cover every record, whatever the bound.
    let tenant_level = &records[..TENANT_LEVEL as usize];
    let expected = |rs: &[UsageRecord]| UsageSums {
        records: rs.len() as i64,
        cpu_millicore_hours: rs.iter().map(|r| r.cpu_millicores).sum(),
        memory_byte_hours: rs.iter().map(|r| r.memory_bytes).sum(),
        storage_byte_hours: rs.iter().map(|r| r.storage_bytes).sum(),
        load_balancer_hours: rs.iter().map(|r| r.load_balancers).sum(),
        pod_hours: rs.iter().map(|r| r.pods).sum(),
    };
    assert_eq!(s.usage_totals(&q).await.unwrap(), expected(tenant_level));
    let all = UsageQuery {
        all_projects: true,
        ..q.clone()
    };
    assert_eq!(s.usage_totals(&all).await.unwrap(), expected(&records));
    // At the bound, everything is returned.
    let exact = UsageQuery {
        max_records: TENANT_LEVEL as u32,
        ..q.clone()
    };
    assert_eq!(s.query_usage(&exact).await.unwrap(), tenant_level);
    // Nothing matched: zeros.
    let none = UsageQuery {
        tenant: TenantId::new(),
        ..q.clone()
    };
    assert_eq!(s.usage_totals(&none).await.unwrap(), UsageSums::default());
    // Sums past i64::MAX saturate instead of failing or wrapping.
    let big = |n: i64| UsageRecord {
        tenant_id: none.tenant,
        memory_bytes: USAGE_BYTES_MAX,
        ..rec(None, n)
    };
    let bigs: Vec<_> = (0..9).map(big).collect();
    s.upsert_usage(&bigs).await.unwrap();
    let sums = s.usage_totals(&none).await.unwrap();
    assert_eq!(sums.records, 9);
    assert_eq!(sums.memory_byte_hours, i64::MAX);
    assert_eq!(sums.cpu_millicore_hours, (1000..1009).sum::<i64>());
}

/// Day sums: one entry per UTC day and span between pricing bounds, summed exactly as
/// the hours would be, ordered by first hour; the latest records come newest first.
async fn usage_day_sums_split_days_at_pricing_bounds(h: &Harness) {
    let s = &h.store;
    let c = ClusterId::new();
    let t = TenantId::new();
    let p = ProjectId::new();
    let start = time::macros::datetime!(2026-01-01 00:00 UTC);
    let rec = |project: Option<ProjectId>, n: i64| UsageRecord {
        cluster_id: c,
        tenant_id: t,
        project_id: project,
        hour: start + time::Duration::hours(n),
        cpu_millicores: 1000 + n,
        memory_bytes: USAGE_BYTES_MAX - n,
        storage_bytes: 7 * n,
        load_balancers: n % 2,
        namespaces: 1,
        pods: n,
        apps: 0,
        cpu_limit_millicores: 0,
        memory_limit_bytes: 0,
        storage_by_class: Default::default(),
        quotas: Vec::new(),
        cluster_capacity: None,
    };
    // 60 hours: two and a half days; a project's hours must not count.
    let mut records: Vec<UsageRecord> = (0..60).map(|n| rec(None, n)).collect();
    records.extend((0..10).map(|n| rec(Some(p), n)));
    s.upsert_usage(&records).await.unwrap();
    let q = UsageQuery {
        tenant: t,
        cluster: Some(c),
        project: None,
        all_projects: false,
        from: start,
        to: start + time::Duration::days(3),
        max_records: 1,
    };
    // Bounds at 10:00 on day one and 13:00 on day two (plus one before the range).
    let bounds = [
        start - time::Duration::days(30),
        start + time::Duration::hours(10),
        start + time::Duration::hours(37),
    ];
    let days = s.usage_day_sums(&q, &bounds).await.unwrap();
    let groups: [(i64, i64); 5] = [(0, 10), (10, 24), (24, 37), (37, 48), (48, 60)];
    assert_eq!(days.len(), groups.len(), "{days:?}");
    for (d, (a, b)) in days.iter().zip(groups) {
        let hours = &records[a as usize..b as usize];
        assert_eq!(d.first_hour, start + time::Duration::hours(a));
        assert_eq!(d.sums.records, b - a);
        assert_eq!(
            d.sums.cpu_millicore_hours,
            hours.iter().map(|r| r.cpu_millicores).sum::<i64>()
        );
        assert_eq!(d.sums.pod_hours, hours.iter().map(|r| r.pods).sum::<i64>());
        assert_eq!(
            d.sums.storage_byte_hours,
            hours.iter().map(|r| r.storage_bytes).sum::<i64>()
        );
        assert_eq!(
            d.sums.load_balancer_hours,
            hours.iter().map(|r| r.load_balancers).sum::<i64>()
        );
        // Far past i64::MAX: saturated, not wrapped.
        assert_eq!(d.sums.memory_byte_hours, i64::MAX);
    }
    // Without bounds: one entry per day; the range bounds apply.
    let plain = s
        .usage_day_sums(
            &UsageQuery {
                from: start + time::Duration::hours(5),
                ..q.clone()
            },
            &[],
        )
        .await
        .unwrap();
    let counts: Vec<i64> = plain.iter().map(|d| d.sums.records).collect();
    assert_eq!(counts, [19, 24, 12]);
    // Projects' hours count only when asked for.
    let all = s
        .usage_day_sums(
            &UsageQuery {
                all_projects: true,
                ..q.clone()
            },
            &[],
        )
        .await
        .unwrap();
    assert_eq!(all[0].sums.records, 24 + 10);
    // The latest records, newest first, whatever max_records says.
    let latest = s.latest_usage(&q, 3).await.unwrap();
    let hours: Vec<_> = latest.iter().map(|r| r.hour).collect();
    assert_eq!(
        hours,
        [59, 58, 57].map(|n| start + time::Duration::hours(n))
    );
    assert!(latest.iter().all(|r| r.project_id.is_none()));
    assert!(
        s.latest_usage(
            &UsageQuery {
                tenant: TenantId::new(),
                ..q.clone()
            },
            3
        )
        .await
        .unwrap()
        .is_empty()
    );
}

/// Retries never double count: the same batch three times, hours out of order, a late
/// correction of a past hour, and a batch with one bad record stores nothing.
async fn usage_ingest_is_idempotent_per_hour(h: &Harness) {
    let s = &h.store;
    let c = ClusterId::new();
    let t = TenantId::new();
    let start = time::macros::datetime!(2026-01-31 22:00 UTC);
    let rec = |n: i64, cpu: i64| UsageRecord {
        cluster_id: c,
        tenant_id: t,
        project_id: None,
        hour: start + time::Duration::hours(n),
        cpu_millicores: cpu,
        memory_bytes: 1 << 30,
        storage_bytes: 30 << 30,
        load_balancers: 1,
        namespaces: 2,
        pods: 4,
        apps: 1,
        cpu_limit_millicores: cpu * 2,
        memory_limit_bytes: 2 << 30,
        storage_by_class: [("fast".to_string(), 10 << 30), (String::new(), 20 << 30)].into(),
        quotas: Vec::new(),
        cluster_capacity: None,
    };
    // Hours out of order, across a month boundary.
    let batch = vec![rec(3, 400), rec(0, 100), rec(2, 300), rec(1, 200)];
    for _ in 0..3 {
        s.upsert_usage(&batch).await.unwrap();
    }
    let q = UsageQuery {
        tenant: t,
        cluster: Some(c),
        project: None,
        all_projects: false,
        from: start,
        to: start + time::Duration::days(1),
        max_records: DEFAULT_USAGE_MAX_RECORDS,
    };
    let got = s.query_usage(&q).await.unwrap();
    assert_eq!(
        got,
        vec![rec(0, 100), rec(1, 200), rec(2, 300), rec(3, 400)]
    );
    assert_eq!(s.usage_totals(&q).await.unwrap().cpu_millicore_hours, 1000);
    // A late report for a past hour replaces it, never adds to it.
    s.upsert_usage(&[rec(1, 250)]).await.unwrap();
    let sums = s.usage_totals(&q).await.unwrap();
    assert_eq!((sums.records, sums.cpu_millicore_hours), (4, 1050));
    assert_eq!(s.query_usage(&q).await.unwrap()[1], rec(1, 250));
    // February only: the calendar month boundary is a plain hour bound.
    let feb = UsageQuery {
        from: time::macros::datetime!(2026-02-01 00:00 UTC),
        ..q.clone()
    };
    let sums = s.usage_totals(&feb).await.unwrap();
    assert_eq!((sums.records, sums.cpu_millicore_hours), (2, 700));
    // One bad record refuses the whole batch: nothing partial is stored.
    let mut bad = rec(5, 1);
    bad.storage_bytes += 1;
    assert!(matches!(
        s.upsert_usage(&[rec(4, 999), rec(1, 1), bad]).await,
        Err(StoreError::Validation(_))
    ));
    let sums = s.usage_totals(&q).await.unwrap();
    assert_eq!((sums.records, sums.cpu_millicore_hours), (4, 1050));
    // Within one call the last record of an hour wins.
    s.upsert_usage(&[rec(1, 7), rec(1, 260)]).await.unwrap();
    assert_eq!(s.query_usage(&q).await.unwrap()[1], rec(1, 260));
    // Large batches (several statements) are written whole.
    let many: Vec<UsageRecord> = (0..2500)
        .map(|n| UsageRecord {
            tenant_id: TenantId(uuid::Uuid::from_u128(n)),
            ..rec(0, 1)
        })
        .collect();
    s.upsert_usage(&many).await.unwrap();
    s.upsert_usage(&many).await.unwrap();
    let q0 = UsageQuery {
        tenant: TenantId(uuid::Uuid::from_u128(2499)),
        ..q.clone()
    };
    assert_eq!(s.usage_totals(&q0).await.unwrap().records, 1);
}

/// The kubeconfig is replaced together with the cluster record and its audit event, under
/// the record's version: a stale version replaces nothing and writes no audit event.
async fn heartbeats_keep_the_cluster_version(h: &Harness) {
    let s = &h.store;
    let c = cluster("beating");
    s.create_cluster(&c, b"kubeconfig", &WriteOptions::default())
        .await
        .unwrap();
    let t1 = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let t0 = t1 - time::Duration::seconds(30);
    let created = s.get_cluster(c.id).await.unwrap();
    s.record_cluster_heartbeat(c.id, t1).await.unwrap();
    let read = s.get_cluster(c.id).await.unwrap();
    assert_eq!(read.last_heartbeat_at, Some(t1));
    assert_eq!(
        (read.version, read.updated_at),
        (created.version, created.updated_at)
    );
    // An older heartbeat (a delayed request) never moves the time back.
    s.record_cluster_heartbeat(c.id, t0).await.unwrap();
    assert_eq!(
        s.get_cluster(c.id).await.unwrap().last_heartbeat_at,
        Some(t1)
    );
    // A versioned write after it keeps the recorded time and moves the version.
    let mut next = s.get_cluster(c.id).await.unwrap();
    next.version += 1;
    next.labels.insert("env".into(), "prod".into());
    s.update_cluster(&next, c.version, &WriteOptions::default())
        .await
        .unwrap();
    let read = s.get_cluster(c.id).await.unwrap();
    assert_eq!(read.version, c.version + 1);
    assert_eq!(read.last_heartbeat_at, Some(t1));
    assert!(matches!(
        s.record_cluster_heartbeat(ClusterId::new(), t1).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn cluster_kubeconfig_is_replaced_with_the_record(h: &Harness) {
    let s = &h.store;
    let c = cluster("rotated");
    s.create_cluster(&c, b"old kubeconfig", &WriteOptions::default())
        .await
        .unwrap();
    let mut next = c.clone();
    next.version = 2;
    let ev = audit("alice", "cluster", &c.id.to_string());
    s.update_cluster_kubeconfig(
        &next,
        1,
        b"new kubeconfig",
        &WriteOptions {
            audit: Some(&ev),
            idempotency: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        &s.cluster_kubeconfig(c.id).await.unwrap()[..],
        b"new kubeconfig"
    );
    assert_eq!(s.get_cluster(c.id).await.unwrap().version, 2);
    assert_eq!(
        s.query_audit(&AuditQuery::default()).await.unwrap().items,
        vec![ev]
    );

    // Stale: neither the record, nor the kubeconfig, nor the audit log changes.
    let stale = next.clone();
    let ev2 = audit("mallory", "cluster", &c.id.to_string());
    let err = s
        .update_cluster_kubeconfig(
            &stale,
            1,
            b"stale kubeconfig",
            &WriteOptions {
                audit: Some(&ev2),
                idempotency: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::PreconditionFailed {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        &s.cluster_kubeconfig(c.id).await.unwrap()[..],
        b"new kubeconfig"
    );
    assert_eq!(s.get_cluster(c.id).await.unwrap().version, 2);
    assert_eq!(
        s.query_audit(&AuditQuery::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // A cluster that does not exist.
    let mut ghost = cluster("ghost");
    ghost.version = 2;
    assert!(matches!(
        s.update_cluster_kubeconfig(&ghost, 1, b"x", &WriteOptions::default())
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.cluster_kubeconfig(ghost.id).await,
        Err(StoreError::NotFound { .. })
    ));
}
fn agent_request(
    c: &Cluster,
    a: &App,
    created: time::OffsetDateTime,
    ttl: time::Duration,
) -> AgentRequestRecord {
    let id = uuid::Uuid::new_v4();
    AgentRequestRecord {
        id,
        cluster_id: c.id,
        app_id: a.id,
        kind: "logs".into(),
        doc: serde_json::json!({"id": id, "kind": "logs", "app": a.name}),
        created_at: created,
        expires_at: created + ttl,
    }
}

/// A cluster with one app, ready for agent requests.
async fn app_of_new_cluster(s: &Arc<dyn Store>, name: &str) -> (Cluster, App) {
    let w = WriteOptions::default();
    let c = cluster(name);
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    let (a, r) = app(&p, "api");
    s.create_app(&a, &r, &w).await.unwrap();
    (c, a)
}

fn chunk(id: uuid::Uuid, seq: i64, body: &[u8], done: bool) -> AnswerChunk<'_> {
    AnswerChunk {
        request_id: id,
        seq,
        body,
        done,
        probe: false,
    }
}

async fn agent_requests_are_relayed_once_and_bounded(h: &Harness) {
    let s = &h.store;
    let (c, a) = app_of_new_cluster(s, "c").await;
    let (other, other_app) = app_of_new_cluster(s, "other").await;
    let t0 = now();
    let minute = time::Duration::minutes(1);
    let reqs: Vec<_> = (0..3)
        .map(|i| agent_request(&c, &a, t0 + time::Duration::milliseconds(i), minute))
        .collect();
    for r in &reqs {
        assert!(s.create_agent_request(r, 3).await.unwrap());
    }
    // The cluster's bound of open requests: the fourth is refused and not stored.
    let fourth = agent_request(&c, &a, t0 + time::Duration::milliseconds(5), minute);
    assert!(!s.create_agent_request(&fourth, 3).await.unwrap());
    // Another cluster's bound is its own.
    let elsewhere = agent_request(&other, &other_app, t0, minute);
    assert!(s.create_agent_request(&elsewhere, 3).await.unwrap());

    // Handed over oldest first, each once, only to its cluster.
    let first = s.claim_agent_requests(c.id, t0, 2).await.unwrap();
    assert_eq!(first, [reqs[0].doc.clone(), reqs[1].doc.clone()]);
    let second = s.claim_agent_requests(c.id, t0, 10).await.unwrap();
    assert_eq!(second, std::slice::from_ref(&reqs[2].doc));
    assert!(
        s.claim_agent_requests(c.id, t0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.claim_agent_requests(other.id, t0, 10).await.unwrap(),
        std::slice::from_ref(&elsewhere.doc)
    );
    // A deleted request makes room for a new one.
    s.delete_agent_request(reqs[0].id).await.unwrap();
    s.delete_agent_request(reqs[0].id).await.unwrap();
    assert!(s.create_agent_request(&fourth, 3).await.unwrap());
    assert!(matches!(
        s.take_agent_answers(reqs[0].id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn agent_answers_belong_to_their_cluster_and_come_in_order(h: &Harness) {
    let s = &h.store;
    let (c, a) = app_of_new_cluster(s, "c").await;
    let (other, _) = app_of_new_cluster(s, "other").await;
    let t0 = now();
    let r = agent_request(&c, &a, t0, time::Duration::minutes(1));
    assert!(s.create_agent_request(&r, 10).await.unwrap());
    let max = 100;

    // Not delivered yet: nobody may answer it.
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 0, b"early", false), max, t0)
            .await
            .unwrap(),
        AnswerOutcome::Gone
    );
    s.claim_agent_requests(c.id, t0, 10).await.unwrap();
    // Another cluster's agent, or a request that does not exist: gone, nothing stored.
    assert_eq!(
        s.append_agent_answer(other.id, &chunk(r.id, 0, b"theirs", false), max, t0)
            .await
            .unwrap(),
        AnswerOutcome::Gone
    );
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(uuid::Uuid::new_v4(), 0, b"x", false), max, t0)
            .await
            .unwrap(),
        AnswerOutcome::Gone
    );
    assert_eq!(
        s.take_agent_answers(r.id).await.unwrap(),
        TakenAnswers::default()
    );

    // In order; a retry is a duplicate; a gap is refused.
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 1, b"one", false), max, t0)
            .await
            .unwrap(),
        AnswerOutcome::OutOfOrder { expected: 0 }
    );
    let ok = AnswerOutcome::Accepted;
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 0, b"zero", false), max, t0)
            .await
            .unwrap(),
        ok
    );
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 0, b"zero", false), max, t0)
            .await
            .unwrap(),
        AnswerOutcome::Duplicate
    );
    // A probe is counted, not stored, and costs no bytes.
    let probe = AnswerChunk {
        probe: true,
        ..chunk(r.id, 1, b"{}", false)
    };
    assert_eq!(
        s.append_agent_answer(c.id, &probe, max, t0).await.unwrap(),
        ok
    );
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 2, b"two", false), max, t0)
            .await
            .unwrap(),
        ok
    );
    let taken = s.take_agent_answers(r.id).await.unwrap();
    assert_eq!(
        taken,
        TakenAnswers {
            chunks: vec![(0, b"zero".to_vec()), (2, b"two".to_vec())],
            done: false
        }
    );
    // Taken chunks are gone: their reader consumed them.
    assert!(s.take_agent_answers(r.id).await.unwrap().chunks.is_empty());

    // The byte bound counts every stored chunk: one that passes it is refused whole.
    let big = vec![b'x'; 94];
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 3, &big, false), max, t0)
            .await
            .unwrap(),
        AnswerOutcome::Full
    );
    assert!(s.take_agent_answers(r.id).await.unwrap().chunks.is_empty());
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 3, b"last", true), max, t0)
            .await
            .unwrap(),
        ok
    );
    // Nothing after the last chunk.
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 4, b"more", false), max, t0)
            .await
            .unwrap(),
        AnswerOutcome::Gone
    );
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(r.id, 3, b"last", true), max, t0)
            .await
            .unwrap(),
        AnswerOutcome::Duplicate
    );
    assert_eq!(
        s.take_agent_answers(r.id).await.unwrap(),
        TakenAnswers {
            chunks: vec![(3, b"last".to_vec())],
            done: true
        }
    );
}

async fn agent_requests_expire_and_go_with_their_app(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let (c, a) = app_of_new_cluster(s, "c").await;
    let t0 = now();
    let short = agent_request(&c, &a, t0, time::Duration::seconds(5));
    let long = agent_request(&c, &a, t0, time::Duration::minutes(5));
    assert!(s.create_agent_request(&short, 10).await.unwrap());
    assert!(s.create_agent_request(&long, 10).await.unwrap());
    let later = t0 + time::Duration::seconds(10);
    // Expired: not handed over, not answerable, and expired requests do not count
    // against the cluster's bound.
    assert_eq!(
        s.claim_agent_requests(c.id, later, 10).await.unwrap(),
        std::slice::from_ref(&long.doc)
    );
    let r3 = agent_request(&c, &a, later, time::Duration::minutes(1));
    assert!(s.create_agent_request(&r3, 2).await.unwrap());
    assert_eq!(
        s.append_agent_answer(
            c.id,
            &chunk(long.id, 0, b"a", false),
            100,
            t0 + time::Duration::minutes(6)
        )
        .await
        .unwrap(),
        AnswerOutcome::Gone
    );
    assert_eq!(s.purge_agent_requests(later).await.unwrap(), 1);
    assert!(matches!(
        s.take_agent_answers(short.id).await,
        Err(StoreError::NotFound { .. })
    ));
    // Deleting the app takes its requests and their answers along.
    assert_eq!(
        s.append_agent_answer(c.id, &chunk(long.id, 0, b"a", false), 100, later)
            .await
            .unwrap(),
        AnswerOutcome::Accepted
    );
    s.delete_app(a.id, &w).await.unwrap();
    for id in [long.id, r3.id] {
        assert!(matches!(
            s.take_agent_answers(id).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    // A request for an app that is gone is not stored.
    let gone = agent_request(&c, &a, later, time::Duration::minutes(1));
    assert!(matches!(
        s.create_agent_request(&gone, 10).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        s.purge_agent_requests(later + time::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
}

/// Postgres: a new request and a new answer chunk are announced (NOTIFY at commit) to
/// every manager's listener, which wakes the operator's long-poll and the waiting call.
async fn agent_requests_and_answers_are_announced_across_replicas(h: &Harness) {
    use kubenova_store::notify::{ChangeNotifier, Woken};
    if h.pg.is_none() {
        return; // SQLite: one process, woken in-process by the manager.
    }
    let s = &h.store;
    let (c, a) = app_of_new_cluster(s, "c").await;
    let notifier = ChangeNotifier::new();
    notifier.listen_postgres(pg_url().unwrap());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !notifier.is_listening() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Woken by the notification itself, not by a fallback poll (those say `Poll`).
    async fn notified(sub: &mut kubenova_store::notify::ChangeSubscription) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match sub.wait(deadline).await {
                Woken::Notified => return,
                Woken::Poll => continue,
                Woken::Deadline => panic!("no notification"),
            }
        }
    }
    let mut requests = notifier.subscribe_requests(c.id);
    let r = agent_request(&c, &a, now(), time::Duration::minutes(1));
    let mut answers = notifier.subscribe_answers(r.id);
    assert!(s.create_agent_request(&r, 10).await.unwrap());
    notified(&mut requests).await;
    s.claim_agent_requests(c.id, now(), 10).await.unwrap();
    s.append_agent_answer(c.id, &chunk(r.id, 0, b"x", true), 100, now())
        .await
        .unwrap();
    notified(&mut answers).await;
}

/// Every plan a tenant was on is kept, from when: creation, then each update that changes
/// the plan (an update keeping the plan adds nothing, a failed update nothing either).
async fn tenant_plan_history_records_each_change(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("billing");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut t = tenant(c.id, "acme");
    t.created_at = time::macros::datetime!(2026-01-01 00:00 UTC);
    t.updated_at = t.created_at;
    s.create_tenant(&t, &w).await.unwrap();
    let step = |t: &mut Tenant, plan: &str, at: time::OffsetDateTime| {
        t.plan = plan.into();
        t.version += 1;
        t.updated_at = at;
    };
    step(
        &mut t,
        "gold",
        time::macros::datetime!(2026-01-15 12:30 UTC),
    );
    s.update_tenant(&t, t.version - 1, &w).await.unwrap();
    t.owners.push("bob@example.com".into());
    step(
        &mut t,
        "gold",
        time::macros::datetime!(2026-01-20 00:00 UTC),
    );
    s.update_tenant(&t, t.version - 1, &w).await.unwrap();
    let mut stale = t.clone();
    step(
        &mut stale,
        "platinum",
        time::macros::datetime!(2026-01-21 00:00 UTC),
    );
    assert!(s.update_tenant(&stale, 1, &w).await.is_err());
    step(
        &mut t,
        "platinum",
        time::macros::datetime!(2026-02-01 00:00 UTC),
    );
    s.update_tenant(&t, t.version - 1, &w).await.unwrap();
    let got: Vec<_> = s
        .tenant_plan_history(t.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.since, p.plan))
        .collect();
    assert_eq!(
        got,
        [
            (
                time::macros::datetime!(2026-01-01 00:00 UTC),
                "baseline".to_string()
            ),
            (
                time::macros::datetime!(2026-01-15 12:30 UTC),
                "gold".to_string()
            ),
            (
                time::macros::datetime!(2026-02-01 00:00 UTC),
                "platinum".to_string()
            ),
        ]
    );
    assert!(
        s.tenant_plan_history(TenantId::new())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A plan's price table gets a new version only when its prices change; the same prices
/// recorded again (every manager start) add nothing, and each plan has its own versions.
async fn plan_prices_are_versioned_only_on_change(h: &Harness) {
    let s = &h.store;
    let d1 = time::macros::datetime!(2026-01-01 00:00 UTC);
    let d2 = time::macros::datetime!(2026-01-10 00:00 UTC);
    let d3 = time::macros::datetime!(2026-01-20 00:00 UTC);
    let old = r#"{"cpuCoreHour":"0.04"}"#;
    let new = r#"{"cpuCoreHour":"0.05"}"#;
    assert!(s.record_plan_prices("baseline", old, d1).await.unwrap());
    assert!(s.record_plan_prices("gold", old, d1).await.unwrap());
    assert!(!s.record_plan_prices("baseline", old, d2).await.unwrap());
    assert!(s.record_plan_prices("baseline", new, d3).await.unwrap());
    assert!(!s.record_plan_prices("baseline", new, d3).await.unwrap());
    let got: Vec<_> = s
        .plan_price_history()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.plan, p.since, p.prices))
        .collect();
    assert_eq!(
        got,
        [
            ("baseline".to_string(), d1, old.to_string()),
            ("baseline".to_string(), d3, new.to_string()),
            ("gold".to_string(), d1, old.to_string()),
        ]
    );
}

/// The export walks every tenant's records of a range in pages, with filters.
async fn usage_export_pages_across_tenants(h: &Harness) {
    let s = &h.store;
    let (c1, c2) = (ClusterId::new(), ClusterId::new());
    let (t1, t2, t3) = (TenantId::new(), TenantId::new(), TenantId::new());
    let p = ProjectId::new();
    let start = time::macros::datetime!(2031-05-01 00:00 UTC);
    let rec = |c: ClusterId, t: TenantId, project: Option<ProjectId>, n: i64| UsageRecord {
        cluster_id: c,
        tenant_id: t,
        project_id: project,
        hour: start + time::Duration::hours(n),
        cpu_millicores: n,
        memory_bytes: 0,
        storage_bytes: 0,
        load_balancers: 0,
        namespaces: 1,
        pods: 0,
        apps: 0,
        cpu_limit_millicores: 0,
        memory_limit_bytes: 0,
        storage_by_class: Default::default(),
        quotas: Vec::new(),
        cluster_capacity: None,
    };
    let mut all = Vec::new();
    for n in 0..5 {
        all.push(rec(c1, t1, None, n));
        all.push(rec(c1, t1, Some(p), n));
        all.push(rec(c1, t2, None, n));
        all.push(rec(c2, t3, None, n));
    }
    s.upsert_usage(&all).await.unwrap();
    let export = UsageExport {
        cluster: None,
        tenant: None,
        from: start,
        to: start + time::Duration::hours(5),
        after: None,
        limit: 3,
    };
    let mut pages = Vec::new();
    let mut e = export.clone();
    loop {
        let page = s.export_usage(&e).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        e.after = Some((
            last.hour,
            last.cluster_id,
            last.tenant_id,
            last.project_id.map(|p| p.0).unwrap_or_default(),
        ));
        pages.extend(page);
    }
    assert_eq!(pages.len(), 20, "every record once");
    assert!(pages.windows(2).all(|w| w[0].hour <= w[1].hour));
    let mut keys: Vec<_> = pages
        .iter()
        .map(|r| (r.hour, r.tenant_id, r.project_id))
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), 20);
    let only = |e: UsageExport| async move { s.export_usage(&e).await.unwrap() };
    let c2_only = only(UsageExport {
        cluster: Some(c2),
        limit: 100,
        ..export.clone()
    })
    .await;
    assert_eq!(c2_only.len(), 5);
    assert!(c2_only.iter().all(|r| r.tenant_id == t3));
    let t1_only = only(UsageExport {
        tenant: Some(t1),
        limit: 100,
        ..export.clone()
    })
    .await;
    assert_eq!(t1_only.len(), 10, "the tenant's projects included");
    let late = only(UsageExport {
        from: start + time::Duration::hours(4),
        limit: 100,
        ..export
    })
    .await;
    assert_eq!(late.len(), 4);
}

/// The memberships of `keys`, as (key, tenant, project, role) for comparison.
async fn members(
    h: &Harness,
    keys: &[&str],
) -> Vec<(String, TenantId, Option<ProjectId>, AccessRole)> {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let rows = h.store.memberships_of(&keys).await.unwrap();
    rows.into_iter()
        .map(|m| (m.key, m.tenant, m.project, m.role))
        .collect()
}

fn row(
    key: &str,
    tenant: TenantId,
    project: Option<ProjectId>,
    role: AccessRole,
) -> (String, TenantId, Option<ProjectId>, AccessRole) {
    (key.to_string(), tenant, project, role)
}

/// Runs a statement without parameters on the harness's backend.
async fn raw(h: &Harness, sql: &str) {
    if let Some(sq) = &h.sqlite {
        sqlx::query(sql).execute(sq.pool()).await.unwrap();
    } else if let Some(pg) = &h.pg {
        sqlx::query(sql).execute(pg.pool()).await.unwrap();
    }
}

/// The number of rows of the membership index (all keys).
async fn membership_rows(h: &Harness) -> i64 {
    let sql = "SELECT COUNT(*) FROM memberships";
    match (&h.sqlite, &h.pg) {
        (Some(sq), _) => sqlx::query_scalar(sql).fetch_one(sq.pool()).await.unwrap(),
        (_, Some(pg)) => sqlx::query_scalar(sql).fetch_one(pg.pool()).await.unwrap(),
        _ => unreachable!(),
    }
}

/// Cluster `c`, its tenant `acme` owned by alice and the ops group, and the tenant's
/// project `web` with bob as viewer and the ops group as developers.
async fn acme_with_members(h: &Harness) -> (Cluster, Tenant, Project) {
    let (s, w) = (&h.store, WriteOptions::default());
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut t = tenant(c.id, "acme");
    t.owners = vec!["alice@example.com".into(), "group:ops".into()];
    s.create_tenant(&t, &w).await.unwrap();
    let mut p = project(&t, "web");
    p.access = vec!["viewer:bob".into(), "developer:group:ops".into()];
    s.create_project(&p, &w).await.unwrap();
    (c, t, p)
}

async fn memberships_follow_owners_and_access(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let (c, t, p) = acme_with_members(h).await;
    // A tenant nobody here is named in.
    let mut other = tenant(c.id, "other");
    other.owners = vec![];
    s.create_tenant(&other, &w).await.unwrap();

    use AccessRole::*;
    assert_eq!(
        members(h, &["user:alice@example.com"]).await,
        [row("user:alice@example.com", t.id, None, Owner)]
    );
    assert_eq!(
        members(h, &["group:ops"]).await,
        [
            row("group:ops", t.id, None, Owner),
            row("group:ops", t.id, Some(p.id), Developer)
        ]
    );
    assert_eq!(
        members(h, &["user:bob"]).await,
        [row("user:bob", t.id, Some(p.id), Viewer)]
    );
    // A person and their groups in one lookup; the cluster comes along.
    let bob = kubenova_api::identity::Identity {
        subject: "bob".into(),
        groups: vec!["ops".into()],
    };
    let rows = s.memberships_of(&bob.keys()).await.unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|m| m.cluster == c.id && m.tenant == t.id));
    let grants = kubenova_api::identity::Grants::of(&bob, &rows);
    assert!(grants.owns(t.id) && !grants.owns(other.id));
    assert_eq!(grants.project_role(p.id), Some(Developer));
    assert!(members(h, &[]).await.is_empty());
    assert!(
        members(h, &["user:nobody", "alice@example.com"])
            .await
            .is_empty()
    );

    // Updates replace the scope's rows: a removed person is named in nothing.
    let mut t2 = t.clone();
    t2.owners = vec!["group:ops".into(), "carol".into()];
    t2.version = 2;
    s.update_tenant(&t2, 1, &w).await.unwrap();
    assert!(members(h, &["user:alice@example.com"]).await.is_empty());
    assert_eq!(
        members(h, &["user:carol", "group:ops"]).await,
        [
            row("group:ops", t.id, None, Owner),
            row("user:carol", t.id, None, Owner),
            row("group:ops", t.id, Some(p.id), Developer)
        ]
    );
    let mut p2 = p.clone();
    p2.access = vec!["owner:bob".into(), "viewer:user:bob".into()];
    p2.version = 2;
    s.update_project(&p2, 1, &w).await.unwrap();
    assert_eq!(
        members(h, &["user:bob", "group:ops"]).await,
        [
            row("group:ops", t.id, None, Owner),
            row("user:bob", t.id, Some(p.id), Owner)
        ],
        "the project's rows were rewritten, the tenant's kept"
    );

    // A failed update leaves the rows as they were: a stale version, a taken name.
    let before = members(h, &["user:bob", "user:carol", "group:ops", "user:mallory"]).await;
    let mut stale = t2.clone();
    stale.owners = vec!["mallory".into()];
    let err = s.update_tenant(&stale, 1, &w).await.unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    let mut stale = p2.clone();
    stale.access = vec!["owner:mallory".into()];
    let err = s.update_project(&stale, 1, &w).await.unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    let mut taken = t2.clone();
    taken.owners = vec!["mallory".into()];
    taken.name = "other".into();
    taken.version = 3;
    let err = s.update_tenant(&taken, 2, &w).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // A project whose tenant is not in its cluster is refused before anything is written.
    let mut stray = project(&t, "stray");
    stray.cluster_id = ClusterId::new();
    stray.access = vec!["owner:mallory".into()];
    assert!(s.create_project(&stray, &w).await.is_err());
    assert_eq!(
        members(h, &["user:bob", "user:carol", "group:ops", "user:mallory"]).await,
        before
    );
}

async fn memberships_go_with_their_tenant_project_or_cluster(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let (c, t, p) = acme_with_members(h).await;
    let mut q = project(&t, "api");
    q.access = vec!["bob".into()];
    s.create_project(&q, &w).await.unwrap();
    let (a, r) = app(&q, "svc");
    s.create_app(&a, &r, &w).await.unwrap();
    assert_eq!(membership_rows(h).await, 5);

    // A project delete takes its rows only.
    s.delete_project(p.id, false, &w).await.unwrap();
    assert_eq!(
        members(h, &["user:bob", "group:ops"]).await,
        [
            row("group:ops", t.id, None, AccessRole::Owner),
            row("user:bob", t.id, Some(q.id), AccessRole::Developer)
        ]
    );
    // A tenant delete (its projects and apps with it) takes every row of the tenant.
    s.delete_tenant(t.id, true, &w).await.unwrap();
    assert!(
        members(h, &["user:alice@example.com", "user:bob", "group:ops"])
            .await
            .is_empty()
    );
    assert_eq!(membership_rows(h).await, 0);

    // So does a cluster delete with cascade.
    let mut t = tenant(c.id, "beta");
    t.owners = vec!["group:ops".into()];
    s.create_tenant(&t, &w).await.unwrap();
    let mut p = project(&t, "web");
    p.access = vec!["viewer:bob".into()];
    s.create_project(&p, &w).await.unwrap();
    assert_eq!(membership_rows(h).await, 2);
    s.delete_cluster(c.id, true, &w).await.unwrap();
    assert_eq!(membership_rows(h).await, 0);
}

async fn membership_lookups_are_bounded(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut t = tenant(c.id, "acme");
    t.owners = vec!["group:g200".into()];
    s.create_tenant(&t, &w).await.unwrap();

    let mut keys: Vec<String> = (0..MAX_MEMBERSHIP_KEYS)
        .map(|i| format!("group:g{i}"))
        .collect();
    let rows = s.memberships_of(&keys).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].tenant, t.id);
    keys.push("user:one-too-many".into());
    let err = s.memberships_of(&keys).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Validation(_)) && err.to_string().contains("at most 256 keys"),
        "{err}"
    );
    // Keys no subject can have match nothing (Postgres could not even receive the NUL).
    let odd = vec![
        "user:a\0b".to_string(),
        format!("user:{}", "x".repeat(4096)),
        "group:g200".to_string(),
        "group:g200".to_string(),
    ];
    let rows = s.memberships_of(&odd).await.unwrap();
    assert_eq!(rows.len(), 1, "duplicates count once: {rows:?}");
    assert!(s.memberships_of(&odd[..2]).await.unwrap().is_empty());
    // Every placeholder bucket size answers the same.
    for n in [1, 2, 3, 5, 17, 200] {
        let ks: Vec<String> = (200 - n + 1..=200).map(|i| format!("group:g{i}")).collect();
        assert_eq!(s.memberships_of(&ks).await.unwrap().len(), 1, "{n} keys");
    }
}

async fn memberships_are_backfilled_once(h: &Harness) {
    let s = &h.store;
    let w = WriteOptions::default();
    let (c, _, _) = acme_with_members(h).await;
    let mut quiet = tenant(c.id, "quiet");
    quiet.owners = vec![];
    s.create_tenant(&quiet, &w).await.unwrap();
    let keys = ["user:alice@example.com", "group:ops", "user:bob"];
    let want = members(h, &keys).await;
    assert_eq!(want.len(), 4);
    assert_eq!(membership_rows(h).await, 4);

    // A store written before the index existed: no rows, no marker.
    raw(h, "DELETE FROM memberships").await;
    raw(h, "DELETE FROM store_markers").await;
    assert!(members(h, &keys).await.is_empty());
    // Two starts at once (two replicas): one fills the index, the other finds it done.
    let migrate = || async {
        match (&h.sqlite, &h.pg) {
            (Some(sq), _) => sq.migrate().await,
            (_, Some(pg)) => pg.migrate().await,
            _ => unreachable!(),
        }
    };
    let (a, b) = tokio::join!(migrate(), migrate());
    a.unwrap();
    b.unwrap();
    assert_eq!(members(h, &keys).await, want);
    assert_eq!(membership_rows(h).await, 4, "filled once, not twice");

    // Once per database: a later start leaves the index to the writes.
    raw(h, "DELETE FROM memberships").await;
    migrate().await.unwrap();
    assert_eq!(membership_rows(h).await, 0);
}

/// A credential of `subject` for the tenant (or `project`) with `role`, issued on the
/// rights the membership `keys` derive (none: on a token role), expiring in an hour.
fn derived(
    t: &Tenant,
    project: Option<ProjectId>,
    subject: &str,
    role: AccessRole,
    keys: Option<&[&str]>,
) -> IssuedCredential {
    let mut c = credential(t.id, t.cluster_id, subject, time::Duration::hours(1));
    c.project_id = project;
    c.role = role;
    c.derived_from = keys.map(|k| k.iter().map(|k| k.to_string()).collect());
    c
}

/// Records credentials (through the group commit, as the manager does); all must pass.
async fn issue(h: &Harness, creds: &[&IssuedCredential]) {
    let items: Vec<(IssuedCredential, AuditEvent)> = creds
        .iter()
        .map(|c| ((*c).clone(), audit_event("kubeconfig.issue", &c.subject)))
        .collect();
    let outcomes = h.store.record_credentials(&items).await.unwrap();
    assert_eq!(outcomes, vec![CredentialOutcome::Recorded; creds.len()]);
}

fn audit_event(action: &str, actor: &str) -> AuditEvent {
    AuditEvent {
        id: AuditId::new(),
        at: now(),
        actor: actor.into(),
        roles: vec![],
        action: action.into(),
        resource_kind: "tenant".into(),
        resource_id: "x".into(),
        outcome: AuditOutcome::Success,
        http_status: Some(200),
        request_id: "r".into(),
        source_ip: "127.0.0.1".into(),
        details: None,
    }
}

/// The revocation state of each credential: `None` while active, else (by, reason).
async fn states(h: &Harness, creds: &[&IssuedCredential]) -> Vec<Option<(String, Option<String>)>> {
    let mut out = Vec::new();
    for c in creds {
        let got = h.store.get_credential(c.jti).await.unwrap();
        assert_eq!(got.derived_from, c.derived_from, "derived_from round trip");
        out.push(
            got.revoked_at
                .map(|_| (got.revoked_by.unwrap_or_default(), got.revoked_reason)),
        );
    }
    out
}

fn by(actor: &str, reason: &str) -> Option<(String, Option<String>)> {
    Some((actor.to_string(), Some(reason.to_string())))
}

async fn derived_credentials_follow_the_owners(h: &Harness) {
    use AccessRole::*;
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut t = tenant(c.id, "acme");
    t.owners = vec![
        "alice@example.com".into(),
        "user:dave".into(),
        "group:admins".into(),
    ];
    s.create_tenant(&t, &w).await.unwrap();
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    // Another tenant owned the same way: never touched by acme's writes.
    let mut beta = tenant(c.id, "beta");
    beta.owners = vec!["group:admins".into()];
    s.create_tenant(&beta, &w).await.unwrap();

    // alice by her own entry; dave by his entry and the group; erin by the group only.
    let alice = derived(
        &t,
        None,
        "alice@example.com",
        Owner,
        Some(&["user:alice@example.com", "group:qa"]),
    );
    let dave = derived(
        &t,
        None,
        "dave",
        Viewer,
        Some(&["user:dave", "group:admins"]),
    );
    let erin = derived(
        &t,
        None,
        "erin",
        Developer,
        Some(&["user:erin", "group:admins"]),
    );
    let erin_web = derived(
        &t,
        Some(p.id),
        "erin",
        Owner,
        Some(&["user:erin", "group:admins"]),
    );
    let erin_beta = derived(
        &beta,
        None,
        "erin",
        Owner,
        Some(&["user:erin", "group:admins"]),
    );
    // Issued on a token role (a minted tenantOwner): memberships never revoke it.
    let token_role = derived(&t, None, "alice@example.com", Owner, None);
    // An expired derived credential stays as it was (expired, not revoked).
    let mut expired = derived(
        &t,
        None,
        "alice@example.com",
        Owner,
        Some(&["user:alice@example.com"]),
    );
    expired.issued_at = now() - time::Duration::hours(2);
    expired.expires_at = now() - time::Duration::hours(1);
    s.record_credential(&expired, &w).await.unwrap();
    let all = [
        &alice,
        &dave,
        &erin,
        &erin_web,
        &erin_beta,
        &token_role,
        &expired,
    ];
    issue(h, &all[..6]).await;
    assert_eq!(states(h, &all).await, vec![None; 7]);

    // A write that keeps the owners revokes nothing.
    let mut t2 = t.clone();
    t2.version = 2;
    t2.labels.insert("team".into(), "a".into());
    s.update_tenant(&t2, 1, &w).await.unwrap();
    assert_eq!(states(h, &all).await, vec![None; 7]);

    // The group entry goes: erin's (tenant and project) are revoked, by the writer;
    // dave is still entitled by his own entry and keeps his.
    let root = audit_event("tenant.update", "root@example.com");
    t2.owners = vec!["alice@example.com".into(), "user:dave".into()];
    t2.version = 3;
    s.update_tenant(
        &t2,
        2,
        &WriteOptions {
            audit: Some(&root),
            idempotency: None,
        },
    )
    .await
    .unwrap();
    let removed = by("root@example.com", REVOKED_MEMBERSHIP_REMOVED);
    assert_eq!(
        states(h, &all).await,
        [
            None,
            None,
            removed.clone(),
            removed.clone(),
            None,
            None,
            None
        ]
    );

    // The user entry goes: alice's derived credential is revoked, not the one issued on
    // her token role, nor the expired one; a write without an audit event is the
    // manager's own.
    t2.owners = vec!["user:dave".into()];
    t2.version = 4;
    s.update_tenant(&t2, 3, &w).await.unwrap();
    let st = states(h, &all).await;
    assert_eq!(st[0], by("kubenova", REVOKED_MEMBERSHIP_REMOVED));
    assert_eq!(st[1..], [None, removed.clone(), removed, None, None, None]);

    // Naming erin again does not bring revoked credentials back.
    t2.owners = vec!["user:dave".into(), "erin".into()];
    t2.version = 5;
    s.update_tenant(&t2, 4, &w).await.unwrap();
    assert!(states(h, &all).await[2].is_some());

    // The listing shows why.
    let listed = s
        .list_credentials(t.id, &CredentialQuery::default())
        .await
        .unwrap()
        .items;
    let erin_listed = listed.iter().find(|c| c.jti == erin.jti).unwrap();
    assert_eq!(
        erin_listed.revoked_reason.as_deref(),
        Some(REVOKED_MEMBERSHIP_REMOVED)
    );
    assert!(erin_listed.revoked_at.is_some());
}

async fn derived_credentials_follow_the_project_access(h: &Harness) {
    use AccessRole::*;
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut t = tenant(c.id, "acme");
    t.owners = vec!["group:ops".into()];
    s.create_tenant(&t, &w).await.unwrap();
    let mut p = project(&t, "web");
    p.access = vec![
        "owner:bob".into(),
        "viewer:group:qa".into(),
        "developer:dan".into(),
    ];
    s.create_project(&p, &w).await.unwrap();
    let mut q = project(&t, "api");
    q.access = vec!["owner:bob".into()];
    s.create_project(&q, &w).await.unwrap();

    let bob_owner = derived(&t, Some(p.id), "bob", Owner, Some(&["user:bob"]));
    let bob_dev = derived(&t, Some(p.id), "bob", Developer, Some(&["user:bob"]));
    let bob_viewer = derived(&t, Some(p.id), "bob", Viewer, Some(&["user:bob"]));
    let bob_api = derived(&t, Some(q.id), "bob", Owner, Some(&["user:bob"]));
    let carol = derived(
        &t,
        Some(p.id),
        "carol",
        Viewer,
        Some(&["user:carol", "group:qa"]),
    );
    let dan = derived(&t, Some(p.id), "dan", Developer, Some(&["user:dan"]));
    // A tenant owner's project credential: entitled by the tenant's owners.
    let frank = derived(
        &t,
        Some(p.id),
        "frank",
        Owner,
        Some(&["user:frank", "group:ops"]),
    );
    let all = [
        &bob_owner,
        &bob_dev,
        &bob_viewer,
        &bob_api,
        &carol,
        &dan,
        &frank,
    ];
    issue(h, &all).await;

    // bob's entry goes from owner to viewer: his owner and developer credentials of that
    // project are revoked, his viewer one and those of the other project are not; dan's
    // developer entry becomes viewer too.
    let mut p2 = p.clone();
    p2.access = vec![
        "viewer:bob".into(),
        "viewer:group:qa".into(),
        "viewer:dan".into(),
    ];
    p2.version = 2;
    s.update_project(
        &p2,
        1,
        &WriteOptions {
            audit: Some(&audit_event("write", "root@example.com")),
            idempotency: None,
        },
    )
    .await
    .unwrap();
    let removed = by("root@example.com", REVOKED_MEMBERSHIP_REMOVED);
    assert_eq!(
        states(h, &all).await,
        [
            removed.clone(),
            removed.clone(),
            None,
            None,
            None,
            removed.clone(),
            None
        ]
    );

    // The group entry goes: carol's is revoked. The tenant owners' credential stays.
    p2.access = vec!["viewer:bob".into()];
    p2.version = 3;
    s.update_project(
        &p2,
        2,
        &WriteOptions {
            audit: Some(&audit_event("write", "root@example.com")),
            idempotency: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        states(h, &all).await,
        [
            removed.clone(),
            removed.clone(),
            None,
            None,
            removed.clone(),
            removed.clone(),
            None
        ]
    );

    // The tenant's owners change: frank's (by the group) goes; bob's (by his access
    // entry) stay.
    let mut t2 = t.clone();
    t2.owners = vec!["alice@example.com".into()];
    t2.version = 2;
    s.update_tenant(
        &t2,
        1,
        &WriteOptions {
            audit: Some(&audit_event("write", "root@example.com")),
            idempotency: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        states(h, &all).await,
        [
            removed.clone(),
            removed.clone(),
            None,
            None,
            removed.clone(),
            removed.clone(),
            removed
        ]
    );
}

async fn derived_credentials_go_with_their_project_tenant_or_cluster(h: &Harness) {
    use AccessRole::*;
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut t = tenant(c.id, "acme");
    t.owners = vec!["group:ops".into()];
    s.create_tenant(&t, &w).await.unwrap();
    let mut p = project(&t, "web");
    p.access = vec!["owner:bob".into()];
    s.create_project(&p, &w).await.unwrap();

    let bob = derived(&t, Some(p.id), "bob", Owner, Some(&["user:bob"]));
    // Still entitled by the tenant's owners, but the project is gone.
    let frank_web = derived(&t, Some(p.id), "frank", Owner, Some(&["group:ops"]));
    let frank = derived(&t, None, "frank", Owner, Some(&["group:ops"]));
    let token_web = derived(&t, Some(p.id), "root", Owner, None);
    let all = [&bob, &frank_web, &frank, &token_web];
    issue(h, &all).await;

    let root = audit_event("project.delete", "root@example.com");
    s.delete_project(
        p.id,
        true,
        &WriteOptions {
            audit: Some(&root),
            idempotency: None,
        },
    )
    .await
    .unwrap();
    let gone = by("root@example.com", REVOKED_PROJECT_DELETED);
    assert_eq!(
        states(h, &all).await,
        [gone.clone(), gone.clone(), None, None]
    );

    s.delete_tenant(t.id, true, &w).await.unwrap();
    assert_eq!(
        states(h, &all).await,
        [
            gone.clone(),
            gone,
            by("kubenova", REVOKED_TENANT_DELETED),
            None
        ]
    );

    // A cluster deleted with its tenants: theirs go too.
    let mut beta = tenant(c.id, "beta");
    beta.owners = vec!["group:ops".into()];
    s.create_tenant(&beta, &w).await.unwrap();
    let mut web = project(&beta, "web");
    web.access = vec!["viewer:bob".into()];
    s.create_project(&web, &w).await.unwrap();
    let owner = derived(&beta, None, "frank", Owner, Some(&["group:ops"]));
    let viewer = derived(&beta, Some(web.id), "bob", Viewer, Some(&["user:bob"]));
    let token = derived(&beta, None, "root", Owner, None);
    issue(h, &[&owner, &viewer, &token]).await;
    s.delete_cluster(c.id, true, &w).await.unwrap();
    let deleted = by("kubenova", REVOKED_TENANT_DELETED);
    assert_eq!(
        states(h, &[&owner, &viewer, &token]).await,
        [deleted.clone(), deleted, None]
    );
}

async fn issuance_on_derived_rights_checks_the_memberships(h: &Harness) {
    use AccessRole::*;
    let s = &h.store;
    let w = WriteOptions::default();
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let mut t = tenant(c.id, "acme");
    t.owners = vec!["group:ops".into()];
    s.create_tenant(&t, &w).await.unwrap();
    let mut p = project(&t, "web");
    p.access = vec!["developer:bob".into()];
    s.create_project(&p, &w).await.unwrap();
    let other = tenant(c.id, "other");
    s.create_tenant(&other, &w).await.unwrap();

    // Entitled: recorded with its keys. A key no member can have (a control character,
    // a NUL) is left out of the record, not an error.
    let ok_owner = derived(
        &t,
        None,
        "frank",
        Owner,
        Some(&["user:frank", "group:ops", "group:x\u{0}y", "group:a\nb"]),
    );
    let ok_dev = derived(&t, Some(p.id), "bob", Developer, Some(&["user:bob"]));
    let ok_by_owner = derived(&t, Some(p.id), "frank", Owner, Some(&["group:ops"]));
    // Not entitled: the role is above the entry, the keys name nobody there, a project
    // entry gives no tenant credential, another tenant's owners, no keys at all.
    let too_high = derived(&t, Some(p.id), "bob", Owner, Some(&["user:bob"]));
    let nobody = derived(
        &t,
        None,
        "mallory",
        Viewer,
        Some(&["user:mallory", "group:qa"]),
    );
    let tenant_by_project = derived(&t, None, "bob", Viewer, Some(&["user:bob"]));
    let elsewhere = derived(&other, None, "frank", Viewer, Some(&["group:ops"]));
    let no_keys = derived(&t, None, "frank", Viewer, Some(&[]));
    let token = derived(&other, None, "root", Owner, None);
    let batch = [
        &ok_owner,
        &too_high,
        &ok_dev,
        &nobody,
        &tenant_by_project,
        &ok_by_owner,
        &elsewhere,
        &no_keys,
        &token,
    ];
    let items: Vec<(IssuedCredential, AuditEvent)> = batch
        .iter()
        .map(|c| ((*c).clone(), audit_event("kubeconfig.issue", &c.subject)))
        .collect();
    let outcomes = s.record_credentials(&items).await.unwrap();
    use CredentialOutcome::{NotEntitled, Recorded};
    assert_eq!(
        outcomes,
        [
            Recorded,
            NotEntitled,
            Recorded,
            NotEntitled,
            NotEntitled,
            Recorded,
            NotEntitled,
            NotEntitled,
            Recorded
        ]
    );
    let got = s.get_credential(ok_owner.jti).await.unwrap();
    assert_eq!(
        got.derived_from.as_deref(),
        Some(&["user:frank".to_string(), "group:ops".to_string()][..])
    );
    assert_eq!(s.get_credential(ok_dev.jti).await.unwrap(), ok_dev);
    for refused in [&too_high, &nobody, &tenant_by_project, &elsewhere, &no_keys] {
        assert!(matches!(
            s.get_credential(refused.jti).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    // Too many keys to record: refused as invalid, nothing written.
    let many: Vec<String> = (0..=MAX_MEMBERSHIP_KEYS)
        .map(|i| format!("group:g{i}"))
        .collect();
    let mut huge = derived(&t, None, "frank", Owner, None);
    huge.derived_from = Some(many);
    let err = s
        .record_credentials(&[(huge.clone(), audit_event("kubeconfig.issue", "frank"))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Validation(_)), "{err}");
    // One by one (record_credential) keeps the keys too.
    let single = derived(&t, None, "frank", Viewer, Some(&["group:ops"]));
    s.record_credential(&single, &w).await.unwrap();
    assert_eq!(s.get_credential(single.jti).await.unwrap(), single);
}
