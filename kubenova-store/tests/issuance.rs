//! The kubeconfig issuance fast paths (`issuance_context`, `record_credentials`) on
//! SQLite and Postgres: the same answers as the individual calls, and all-or-nothing.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kubenova_api::ids::*;
use kubenova_api::model::*;
use kubenova_store::*;

fn credential(tenant: TenantId, cluster: ClusterId, subject: &str) -> IssuedCredential {
    let at = now();
    IssuedCredential {
        jti: uuid::Uuid::now_v7(),
        tenant_id: tenant,
        project_id: None,
        cluster_id: cluster,
        subject: subject.into(),
        role: AccessRole::Developer,
        mode: CredentialMode::Token,
        issued_by: subject.into(),
        issued_at: at,
        expires_at: at + time::Duration::hours(1),
        revoked_at: None,
        revoked_by: None,
    }
}

fn event(c: &IssuedCredential) -> AuditEvent {
    AuditEvent {
        id: AuditId::new(),
        at: now(),
        actor: c.subject.clone(),
        roles: vec!["tenantOwner".into()],
        action: "kubeconfig.issue".into(),
        resource_kind: "credential".into(),
        resource_id: c.jti.to_string(),
        outcome: AuditOutcome::Success,
        http_status: Some(200),
        request_id: "r".into(),
        source_ip: "127.0.0.1".into(),
        details: None,
    }
}

async fn context_and_group_commit(h: &Harness) {
    let s = &h.store;
    let c = cluster("ctx");
    s.create_cluster(&c, b"apiVersion: v1\n", &WriteOptions::default())
        .await
        .unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &WriteOptions::default()).await.unwrap();

    // One read = the three individual reads.
    let read = s.issuance_context(t.id, "alice").await.unwrap();
    assert_eq!(read.tenant, s.get_tenant(t.id).await.unwrap());
    assert_eq!(read.cluster, s.get_cluster(c.id).await.unwrap());
    assert!(read.revocation.is_none());
    s.revoke_subject(t.id, "alice", "admin", now(), &WriteOptions::default())
        .await
        .unwrap();
    let read = s.issuance_context(t.id, "alice").await.unwrap();
    let rev = read.revocation.unwrap();
    assert_eq!(rev.revoked_by, "admin");
    assert_eq!(
        Some(rev),
        s.subject_revocation(t.id, "alice").await.unwrap()
    );
    assert!(
        s.issuance_context(t.id, "bob")
            .await
            .unwrap()
            .revocation
            .is_none()
    );
    match s.issuance_context(TenantId::new(), "alice").await {
        Err(StoreError::NotFound { kind: "tenant", .. }) => {}
        other => panic!("expected tenant NotFound, got {other:?}"),
    }

    // A batch: every credential row and audit event, in one transaction.
    let items: Vec<_> = (0..5)
        .map(|i| {
            let cr = credential(t.id, c.id, &format!("user{i}"));
            let ev = event(&cr);
            (cr, ev)
        })
        .collect();
    s.record_credentials(&items).await.unwrap();
    for (cr, _) in &items {
        assert_eq!(&s.get_credential(cr.jti).await.unwrap(), cr);
    }
    let audited = s
        .query_audit(&AuditQuery {
            resource_kind: Some("credential".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.items.len(), 5);

    // All or nothing: a duplicate jti fails the batch and writes none of it.
    let fresh = credential(t.id, c.id, "carol");
    let batch = vec![
        (fresh.clone(), event(&fresh)),
        (items[0].0.clone(), event(&items[0].0)),
    ];
    assert!(s.record_credentials(&batch).await.is_err());
    assert!(matches!(
        s.get_credential(fresh.jti).await,
        Err(StoreError::NotFound { .. })
    ));
    let audited = s
        .query_audit(&AuditQuery {
            resource_kind: Some("credential".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.items.len(), 5);
    s.record_credentials(&[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_context_and_group_commit() {
    let h = sqlite_with(keyring(&[("k1", 1)])).await;
    context_and_group_commit(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_context_and_group_commit() {
    let Some(h) = postgres_with(keyring(&[("k1", 1)])).await else {
        return;
    };
    context_and_group_commit(&h).await;
    h.cleanup().await;
}
