//! Group commit of issued credentials (`record_credentials`) on SQLite and Postgres:
//! all-or-nothing, and the revocation/existence checks made in the transaction that
//! records, also against a racing revocation or a racing removal from a tenant's owners.
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
        revoked_reason: None,
        derived_from: None,
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

async fn group_commit_and_checks(h: &Harness) {
    let s = &h.store;
    let c = cluster("ctx");
    s.create_cluster(&c, b"apiVersion: v1\n", &WriteOptions::default())
        .await
        .unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &WriteOptions::default()).await.unwrap();

    // alice is revoked for this tenant (used by the commit-time checks below).
    s.revoke_subject(
        t.id,
        "alice",
        "admin",
        true,
        now(),
        &WriteOptions::default(),
    )
    .await
    .unwrap();

    // A batch: every credential row and audit event, in one transaction.
    let items: Vec<_> = (0..5)
        .map(|i| {
            let cr = credential(t.id, c.id, &format!("user{i}"));
            let ev = event(&cr);
            (cr, ev)
        })
        .collect();
    let outcomes = s.record_credentials(&items).await.unwrap();
    assert_eq!(outcomes, vec![CredentialOutcome::Recorded; 5]);
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
    assert!(s.record_credentials(&[]).await.unwrap().is_empty());

    // The checks run at commit: a revoked subject, a deleted tenant and a project of
    // another tenant are refused and write nothing; the rest of the batch is recorded.
    let other = tenant(c.id, "other");
    s.create_tenant(&other, &WriteOptions::default())
        .await
        .unwrap();
    let foreign = project(&other, "web");
    s.create_project(&foreign, &WriteOptions::default())
        .await
        .unwrap();
    let revoked = credential(t.id, c.id, "alice");
    let gone = credential(TenantId::new(), c.id, "dave");
    let mut misplaced = credential(t.id, c.id, "erin");
    misplaced.project_id = Some(foreign.id);
    let fine = credential(other.id, c.id, "alice");
    let batch: Vec<_> = [&revoked, &gone, &misplaced, &fine]
        .into_iter()
        .map(|c| (c.clone(), event(c)))
        .collect();
    let outcomes = s.record_credentials(&batch).await.unwrap();
    assert!(
        matches!(&outcomes[0], CredentialOutcome::SubjectRevoked(r) if r.subject == "alice" && r.tenant_id == t.id),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[1..],
        [
            CredentialOutcome::TenantGone,
            CredentialOutcome::ProjectGone,
            CredentialOutcome::Recorded
        ]
    );
    for refused in [&revoked, &gone, &misplaced] {
        assert!(matches!(
            s.get_credential(refused.jti).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    assert_eq!(&s.get_credential(fine.jti).await.unwrap(), &fine);
    let audited = s
        .query_audit(&AuditQuery {
            resource_kind: Some("credential".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        audited.items.len(),
        6,
        "only the recorded issuance is audited here"
    );
}

/// Issuance batches racing a subject revocation: whatever the interleaving, once the
/// revocation has returned no credential of that subject is left unrevoked (either the
/// batch saw the revocation and wrote nothing, or the revocation marked its rows).
async fn revocation_never_misses_a_racing_issuance(h: &Harness) {
    let s = std::sync::Arc::clone(&h.store);
    let c = cluster("race");
    s.create_cluster(&c, b"apiVersion: v1\n", &WriteOptions::default())
        .await
        .unwrap();
    let t = tenant(c.id, "acme");
    s.create_tenant(&t, &WriteOptions::default()).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (s, stop) = (std::sync::Arc::clone(&s), std::sync::Arc::clone(&stop));
        let (tid, cid) = (t.id, c.id);
        tasks.push(tokio::spawn(async move {
            let mut recorded = Vec::new();
            let mut refused = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<_> = (0..4)
                    .map(|_| {
                        let cr = credential(tid, cid, "mallory");
                        let ev = event(&cr);
                        (cr, ev)
                    })
                    .collect();
                let outcomes = s.record_credentials(&batch).await.unwrap();
                for ((cr, _), o) in batch.iter().zip(outcomes) {
                    match o {
                        CredentialOutcome::Recorded => recorded.push(cr.jti),
                        CredentialOutcome::SubjectRevoked(_) => refused += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            (recorded, refused)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    s.revoke_subject(
        t.id,
        "mallory",
        "admin",
        true,
        now(),
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut recorded, mut refused) = (Vec::new(), 0);
    for task in tasks {
        let (r, n) = task.await.unwrap();
        recorded.extend(r);
        refused += n;
    }
    assert!(
        !recorded.is_empty() && refused > 0,
        "{} recorded, {refused} refused",
        recorded.len()
    );
    for jti in recorded {
        let cr = s.get_credential(jti).await.unwrap();
        assert!(
            cr.revoked_at.is_some(),
            "credential {jti} issued around the revocation is not revoked"
        );
    }
}

/// Issuance batches on derived rights racing the removal of the owners entry they rely
/// on: once the tenant write has returned, no credential issued on that entry is left
/// active (the batch saw the removal and wrote nothing, or the write revoked its rows);
/// those issued on a token role are never revoked.
async fn owner_removal_never_misses_a_racing_issuance(h: &Harness) {
    let s = std::sync::Arc::clone(&h.store);
    let c = cluster("race");
    s.create_cluster(&c, b"apiVersion: v1\n", &WriteOptions::default())
        .await
        .unwrap();
    let mut t = tenant(c.id, "acme");
    t.owners = vec!["group:admins".into()];
    s.create_tenant(&t, &WriteOptions::default()).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (s, stop) = (std::sync::Arc::clone(&s), std::sync::Arc::clone(&stop));
        let (tid, cid) = (t.id, c.id);
        tasks.push(tokio::spawn(async move {
            let (mut derived, mut token_role) = (Vec::new(), Vec::new());
            let mut refused = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<_> = (0..4)
                    .map(|i| {
                        let mut cr = credential(tid, cid, "mallory");
                        if i > 0 {
                            cr.derived_from =
                                Some(vec!["user:mallory".into(), "group:admins".into()]);
                        }
                        let ev = event(&cr);
                        (cr, ev)
                    })
                    .collect();
                let outcomes = s.record_credentials(&batch).await.unwrap();
                for ((cr, _), o) in batch.iter().zip(outcomes) {
                    match (o, cr.derived_from.is_some()) {
                        (CredentialOutcome::Recorded, true) => derived.push(cr.jti),
                        (CredentialOutcome::Recorded, false) => token_role.push(cr.jti),
                        (CredentialOutcome::NotEntitled, true) => refused += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            (derived, token_role, refused)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let mut t2 = t.clone();
    t2.owners = vec!["alice@example.com".into()];
    t2.version = 2;
    s.update_tenant(&t2, 1, &WriteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut derived, mut token_role, mut refused) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (d, tr, n) = task.await.unwrap();
        derived.extend(d);
        token_role.extend(tr);
        refused += n;
    }
    assert!(
        !derived.is_empty() && refused > 0,
        "{} recorded, {refused} refused",
        derived.len()
    );
    for jti in derived {
        let cr = s.get_credential(jti).await.unwrap();
        assert!(
            cr.revoked_at.is_some(),
            "credential {jti} issued around the removal is not revoked"
        );
    }
    for jti in token_role {
        assert!(s.get_credential(jti).await.unwrap().revoked_at.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_owner_removal_never_misses_a_racing_issuance() {
    let h = sqlite_with(keyring(&[("k1", 1)])).await;
    owner_removal_never_misses_a_racing_issuance(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_owner_removal_never_misses_a_racing_issuance() {
    let Some(h) = postgres_with(keyring(&[("k1", 1)])).await else {
        return;
    };
    owner_removal_never_misses_a_racing_issuance(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_revocation_never_misses_a_racing_issuance() {
    let h = sqlite_with(keyring(&[("k1", 1)])).await;
    revocation_never_misses_a_racing_issuance(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_revocation_never_misses_a_racing_issuance() {
    let Some(h) = postgres_with(keyring(&[("k1", 1)])).await else {
        return;
    };
    revocation_never_misses_a_racing_issuance(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_group_commit_and_checks() {
    let h = sqlite_with(keyring(&[("k1", 1)])).await;
    group_commit_and_checks(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_group_commit_and_checks() {
    let Some(h) = postgres_with(keyring(&[("k1", 1)])).await else {
        return;
    };
    group_commit_and_checks(&h).await;
    h.cleanup().await;
}
