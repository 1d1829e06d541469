//! API keys (machine identities) on SQLite and Postgres: recorded as a hash with their
//! audit event, names unique per tenant among live keys, listed in creation order (also by
//! project), revoked once, last use recorded forward only, and gone with their tenant,
//! project or cluster.
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
    api_keys_are_recorded_listed_and_revoked,
    api_key_names_are_unique_among_live_keys,
    api_keys_need_their_tenant_and_project,
    api_keys_go_with_their_tenant_project_or_cluster,
);

fn key(t: &Tenant, project: Option<ProjectId>, name: &str, role: AccessRole) -> ApiKey {
    let at = now();
    ApiKey {
        id: uuid::Uuid::now_v7(),
        tenant_id: t.id,
        cluster_id: t.cluster_id,
        project_id: project,
        name: name.into(),
        description: format!("the {name} key"),
        role,
        secret_hash: [name.len() as u8; 32],
        created_by: "alice@example.com".into(),
        created_at: at,
        expires_at: at + time::Duration::days(90),
        last_used_at: None,
        revoked_at: None,
        revoked_by: None,
    }
}

async fn acme(h: &Harness) -> (Cluster, Tenant, Project) {
    let (s, w) = (&h.store, WriteOptions::default());
    let c = cluster("c");
    s.create_cluster(&c, b"k", &w).await.unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &w).await.unwrap();
    let p = project(&t, "web");
    s.create_project(&p, &w).await.unwrap();
    (c, t, p)
}

fn audit(action: &str, id: uuid::Uuid) -> AuditEvent {
    AuditEvent {
        id: AuditId::new(),
        at: now(),
        actor: "alice@example.com".into(),
        roles: vec![],
        action: action.into(),
        resource_kind: "apiKey".into(),
        resource_id: id.to_string(),
        outcome: AuditOutcome::Success,
        http_status: Some(201),
        request_id: String::new(),
        source_ip: String::new(),
        details: None,
    }
}

async fn audited(h: &Harness, id: uuid::Uuid) -> Vec<String> {
    h.store
        .query_audit(&AuditQuery {
            resource_id: Some(id.to_string()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.action)
        .collect()
}

async fn api_keys_are_recorded_listed_and_revoked(h: &Harness) {
    let s = &h.store;
    let (_, t, p) = acme(h).await;
    let ci = key(&t, None, "ci", AccessRole::Owner);
    let ev = audit("apikey.create", ci.id);
    s.create_api_key(
        &ci,
        &WriteOptions {
            audit: Some(&ev),
            idempotency: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(s.get_api_key(ci.id).await.unwrap(), ci);
    assert_eq!(audited(h, ci.id).await, ["apikey.create"]);
    let deploy = key(&t, Some(p.id), "deploy", AccessRole::Developer);
    s.create_api_key(&deploy, &WriteOptions::default())
        .await
        .unwrap();

    // Creation order, pages, and the project filter.
    let all = s
        .list_api_keys(t.id, &ApiKeyQuery::default())
        .await
        .unwrap();
    assert_eq!(all.items, [ci.clone(), deploy.clone()]);
    assert!(all.next_cursor.is_none());
    let first = s
        .list_api_keys(
            t.id,
            &ApiKeyQuery {
                projects: None,
                page: ListParams::first(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items, std::slice::from_ref(&ci));
    let second = s
        .list_api_keys(
            t.id,
            &ApiKeyQuery {
                projects: None,
                page: ListParams {
                    limit: Some(1),
                    cursor: first.next_cursor,
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(second.items, std::slice::from_ref(&deploy));
    assert!(second.next_cursor.is_none());
    let of_web = s
        .list_api_keys(
            t.id,
            &ApiKeyQuery {
                projects: Some(vec![p.id]),
                page: ListParams::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(of_web.items, std::slice::from_ref(&deploy));
    let of_none = s
        .list_api_keys(
            t.id,
            &ApiKeyQuery {
                projects: Some(vec![]),
                page: ListParams::default(),
            },
        )
        .await
        .unwrap();
    assert!(of_none.items.is_empty());
    let too_many = ApiKeyQuery {
        projects: Some(vec![p.id; MAX_API_KEY_PROJECT_FILTER + 1]),
        page: ListParams::default(),
    };
    assert!(matches!(
        s.list_api_keys(t.id, &too_many).await,
        Err(StoreError::Validation(_))
    ));
    // Another tenant's list holds none of them.
    let other = tenant(t.cluster_id, "other");
    s.create_tenant(&other, &WriteOptions::default())
        .await
        .unwrap();
    assert!(
        s.list_api_keys(other.id, &ApiKeyQuery::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Last use only moves forward; a key that is gone is no error.
    let used = now();
    s.touch_api_key(ci.id, used).await.unwrap();
    s.touch_api_key(ci.id, used - time::Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(s.get_api_key(ci.id).await.unwrap().last_used_at, Some(used));
    s.touch_api_key(uuid::Uuid::now_v7(), used).await.unwrap();

    // Revoked once, with its audit event; the second time changes nothing.
    let at = now();
    let ev = audit("apikey.revoke", ci.id);
    let opts = WriteOptions {
        audit: Some(&ev),
        idempotency: None,
    };
    assert!(s.revoke_api_key(ci.id, "bob", at, &opts).await.unwrap());
    let ev2 = audit("apikey.revoke", ci.id);
    assert!(
        !s.revoke_api_key(
            ci.id,
            "carol",
            now(),
            &WriteOptions {
                audit: Some(&ev2),
                idempotency: None
            }
        )
        .await
        .unwrap()
    );
    let revoked = s.get_api_key(ci.id).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
    assert_eq!(revoked.revoked_by.as_deref(), Some("bob"));
    assert_eq!(audited(h, ci.id).await, ["apikey.create", "apikey.revoke"]);
    assert!(matches!(
        s.revoke_api_key(uuid::Uuid::now_v7(), "bob", at, &WriteOptions::default())
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_api_key(uuid::Uuid::now_v7()).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn api_key_names_are_unique_among_live_keys(h: &Harness) {
    let (s, w) = (&h.store, WriteOptions::default());
    let (_, t, p) = acme(h).await;
    let first = key(&t, None, "ci", AccessRole::Owner);
    s.create_api_key(&first, &w).await.unwrap();
    // Taken in the tenant, for tenant and project keys alike; the audit event of a refused
    // create is not written.
    let again = key(&t, Some(p.id), "ci", AccessRole::Viewer);
    let ev = audit("apikey.create", again.id);
    let err = s
        .create_api_key(
            &again,
            &WriteOptions {
                audit: Some(&ev),
                idempotency: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("\"ci\"")),
        "{err:?}"
    );
    assert!(audited(h, again.id).await.is_empty());
    // The same name in another tenant is another key.
    let other = tenant(t.cluster_id, "other");
    s.create_tenant(&other, &w).await.unwrap();
    s.create_api_key(&key(&other, None, "ci", AccessRole::Owner), &w)
        .await
        .unwrap();
    // A revoked key frees its name.
    s.revoke_api_key(first.id, "alice", now(), &w)
        .await
        .unwrap();
    s.create_api_key(&again, &w).await.unwrap();
    let names: Vec<(String, bool)> = s
        .list_api_keys(t.id, &ApiKeyQuery::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|k| (k.name, k.revoked_at.is_some()))
        .collect();
    assert_eq!(names, [("ci".into(), true), ("ci".into(), false)]);
    // A name with control characters is refused before the database sees it.
    let bad = key(&t, None, "a\0b", AccessRole::Owner);
    assert!(matches!(
        s.create_api_key(&bad, &w).await,
        Err(StoreError::Validation(_))
    ));
}

async fn api_keys_need_their_tenant_and_project(h: &Harness) {
    let (s, w) = (&h.store, WriteOptions::default());
    let (_, t, _) = acme(h).await;
    let missing = TenantId::new();
    let mut k = key(&t, None, "ci", AccessRole::Owner);
    k.tenant_id = missing;
    assert!(matches!(
        s.create_api_key(&k, &w).await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
    // The tenant exists, but not in that cluster.
    let mut k = key(&t, None, "ci", AccessRole::Owner);
    k.cluster_id = ClusterId::new();
    assert!(matches!(
        s.create_api_key(&k, &w).await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
    // A project of another tenant, and a project that does not exist.
    let other = tenant(t.cluster_id, "other");
    s.create_tenant(&other, &w).await.unwrap();
    let theirs = project(&other, "web");
    s.create_project(&theirs, &w).await.unwrap();
    for p in [theirs.id, ProjectId::new()] {
        let k = key(&t, Some(p), "ci", AccessRole::Viewer);
        assert!(matches!(
            s.create_api_key(&k, &w).await,
            Err(StoreError::NotFound {
                kind: "project",
                ..
            })
        ));
    }
    assert!(
        s.list_api_keys(t.id, &ApiKeyQuery::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn api_keys_go_with_their_tenant_project_or_cluster(h: &Harness) {
    let (s, w) = (&h.store, WriteOptions::default());
    let (c, t, p) = acme(h).await;
    let tenant_key = key(&t, None, "ci", AccessRole::Owner);
    let project_key = key(&t, Some(p.id), "deploy", AccessRole::Developer);
    s.create_api_key(&tenant_key, &w).await.unwrap();
    s.create_api_key(&project_key, &w).await.unwrap();
    // A project delete takes the project's keys only.
    s.delete_project(p.id, false, &w).await.unwrap();
    assert!(matches!(
        s.get_api_key(project_key.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get_api_key(tenant_key.id).await.unwrap(), tenant_key);
    // A tenant delete takes the rest.
    let p = project(&t, "api");
    s.create_project(&p, &w).await.unwrap();
    let project_key = key(&t, Some(p.id), "deploy", AccessRole::Viewer);
    s.create_api_key(&project_key, &w).await.unwrap();
    s.delete_tenant(t.id, true, &w).await.unwrap();
    for id in [tenant_key.id, project_key.id] {
        assert!(matches!(
            s.get_api_key(id).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    // So does a cluster delete with cascade.
    let t = tenant(c.id, "beta");
    s.create_tenant(&t, &w).await.unwrap();
    let k = key(&t, None, "ci", AccessRole::Owner);
    s.create_api_key(&k, &w).await.unwrap();
    s.delete_cluster(c.id, true, &w).await.unwrap();
    assert!(matches!(
        s.get_api_key(k.id).await,
        Err(StoreError::NotFound { .. })
    ));
}
