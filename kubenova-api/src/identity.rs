//! People's rights derived from the model: who a person is (a subject and groups, as the
//! organisation's identity provider says) and what tenants' `owners` and projects'
//! `access` entries grant them.
//!
//! Every owner and access entry names a subject (`alice@example.com`, `user:bob`,
//! `group:ops`, `serviceaccount:<ns>:<name>`); its **key** is the kind and the name
//! (`user:alice@example.com`, `group:ops`, `serviceaccount:system:serviceaccount:ns:name`),
//! so `alice@example.com` and `user:alice@example.com` are the same person. A
//! [`Membership`] is one key's role in one tenant (an owner) or one project (an access
//! entry); [`Grants`] folds a person's memberships into what they may do.
//!
//! ```
//! use kubenova_api::identity::{Grants, Identity, Membership};
//! use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
//! use kubenova_api::model::AccessRole;
//! let (cluster, tenant, project) = (ClusterId::new(), TenantId::new(), ProjectId::new());
//! // What `owners: ["group:acme-admins"]` and `access: ["viewer:alice@example.com"]` define
//! // (see `tenant_members` and `project_members`):
//! let rows = [
//!     Membership { key: "group:acme-admins".into(), cluster, tenant, project: None, role: AccessRole::Owner },
//!     Membership { key: "user:alice@example.com".into(), cluster, tenant, project: Some(project), role: AccessRole::Viewer },
//! ];
//! let alice = Identity { subject: "alice@example.com".into(), groups: vec!["qa".into()] };
//! let grants = Grants::of(&alice, &rows);
//! assert!(!grants.owns(tenant));
//! assert_eq!(grants.project_role(project), Some(AccessRole::Viewer));
//!
//! let bob = Identity { subject: "bob".into(), groups: vec!["acme-admins".into()] };
//! assert!(Grants::of(&bob, &rows).owns(tenant));
//! ```

use crate::ids::{ClusterId, ProjectId, TenantId};
use crate::model::{AccessEntry, AccessRole, Project, Subject, SubjectKind, Tenant};

use std::collections::BTreeMap;

/// A person (or machine) as an identity provider describes them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The subject (after the issuer's claim mapping and prefix).
    pub subject: String,
    /// The groups (after the issuer's claim mapping and prefix).
    pub groups: Vec<String>,
}

impl Identity {
    /// The membership keys that name this identity: the subject as a user and each group.
    ///
    /// ```
    /// use kubenova_api::identity::Identity;
    /// let id = Identity { subject: "alice@example.com".into(), groups: vec!["ops".into()] };
    /// assert_eq!(id.keys(), ["user:alice@example.com", "group:ops"]);
    /// ```
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(1 + self.groups.len());
        keys.push(format!("user:{}", self.subject));
        for g in &self.groups {
            let key = format!("group:{g}");
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

/// The key of a subject: its kind and name.
pub fn subject_key(s: &Subject) -> String {
    let kind = match s.kind {
        SubjectKind::User => "user",
        SubjectKind::Group => "group",
        SubjectKind::ServiceAccount => "serviceaccount",
    };
    format!("{kind}:{}", s.name)
}

/// One key's role in a tenant (an owner: `project` is `None`, role
/// [`AccessRole::Owner`]) or in one of its projects (an access entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Membership {
    /// The subject's key (see the module documentation).
    pub key: String,
    /// The tenant's cluster.
    pub cluster: ClusterId,
    /// The tenant.
    pub tenant: TenantId,
    /// The project, for an access entry.
    pub project: Option<ProjectId>,
    /// The role.
    pub role: AccessRole,
}

impl Membership {
    /// Whether this membership alone entitles its key to a `role` credential (kubeconfig
    /// or token) of the tenant (`project` is `None`) or of one of its projects: a tenant's
    /// owner to any role of the tenant and of its projects; a project's `owner:` entry to
    /// any role of that project, `developer:` to developer or viewer, `viewer:` to viewer.
    ///
    /// ```
    /// use kubenova_api::identity::Membership;
    /// use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
    /// use kubenova_api::model::AccessRole;
    /// let (cluster, tenant, web) = (ClusterId::new(), TenantId::new(), ProjectId::new());
    /// let dev = Membership { key: "user:bob".into(), cluster, tenant, project: Some(web), role: AccessRole::Developer };
    /// assert!(dev.entitles(tenant, Some(web), AccessRole::Viewer));
    /// assert!(!dev.entitles(tenant, Some(web), AccessRole::Owner));
    /// assert!(!dev.entitles(tenant, None, AccessRole::Viewer)); // no tenant credential
    /// let owner = Membership { project: None, role: AccessRole::Owner, ..dev };
    /// assert!(owner.entitles(tenant, Some(web), AccessRole::Owner));
    /// assert!(owner.entitles(tenant, None, AccessRole::Owner));
    /// ```
    pub fn entitles(&self, tenant: TenantId, project: Option<ProjectId>, role: AccessRole) -> bool {
        if self.tenant != tenant {
            return false;
        }
        match self.project {
            // A tenant's owners (the index holds only owners at tenant level).
            None => self.role == AccessRole::Owner,
            Some(p) => project == Some(p) && rank(self.role) >= rank(role),
        }
    }
}

/// The memberships a tenant's `owners` define (entries that do not parse grant nothing;
/// the API refuses them at write).
pub fn tenant_members(t: &Tenant) -> Vec<Membership> {
    let mut out: Vec<Membership> = t
        .owners
        .iter()
        .filter_map(|o| Subject::parse(o).ok())
        .map(|s| Membership {
            key: subject_key(&s),
            cluster: t.cluster_id,
            tenant: t.id,
            project: None,
            role: AccessRole::Owner,
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup();
    out
}

/// The memberships a project's `access` entries define (the strongest role where a subject
/// is listed twice; entries that do not parse grant nothing).
pub fn project_members(p: &Project) -> Vec<Membership> {
    let mut by_key: BTreeMap<String, AccessRole> = BTreeMap::new();
    for e in p.access.iter().filter_map(|a| AccessEntry::parse(a).ok()) {
        let role = by_key.entry(subject_key(&e.subject)).or_insert(e.role);
        *role = stronger(*role, e.role);
    }
    by_key
        .into_iter()
        .map(|(key, role)| Membership {
            key,
            cluster: p.cluster_id,
            tenant: p.tenant_id,
            project: Some(p.id),
            role,
        })
        .collect()
}

fn rank(r: AccessRole) -> u8 {
    match r {
        AccessRole::Viewer => 0,
        AccessRole::Developer => 1,
        AccessRole::Owner => 2,
    }
}

fn stronger(a: AccessRole, b: AccessRole) -> AccessRole {
    if rank(b) > rank(a) { b } else { a }
}

/// What an identity's memberships grant: the tenants it owns and its role in each project
/// it is named in (a tenant's owners own its projects too).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// Owned tenants, with their cluster.
    pub tenants: BTreeMap<TenantId, ClusterId>,
    /// Projects named in, with their cluster, tenant and the strongest role.
    pub projects: BTreeMap<ProjectId, (ClusterId, TenantId, AccessRole)>,
}

impl Grants {
    /// Folds the memberships that name `who` (others in `rows` are ignored).
    pub fn of(who: &Identity, rows: &[Membership]) -> Grants {
        let keys = who.keys();
        let mut g = Grants::default();
        for m in rows.iter().filter(|m| keys.contains(&m.key)) {
            match m.project {
                None => {
                    g.tenants.insert(m.tenant, m.cluster);
                }
                Some(p) => {
                    let slot = g.projects.entry(p).or_insert((m.cluster, m.tenant, m.role));
                    slot.2 = stronger(slot.2, m.role);
                }
            }
        }
        g
    }

    /// True when nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.projects.is_empty()
    }

    /// Whether the identity owns the tenant.
    pub fn owns(&self, tenant: TenantId) -> bool {
        self.tenants.contains_key(&tenant)
    }

    /// The identity's own role in the project (from its access entries; a tenant owner's
    /// rights over the project come from [`Grants::owns`]).
    pub fn project_role(&self, project: ProjectId) -> Option<AccessRole> {
        self.projects.get(&project).map(|(_, _, r)| *r)
    }

    /// Whether the identity is named in any project of the tenant.
    pub fn in_tenant(&self, tenant: TenantId) -> bool {
        self.projects.values().any(|(_, t, _)| *t == tenant)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tenant(owners: &[&str]) -> Tenant {
        serde_json::from_value(serde_json::json!({
            "id": TenantId::new(), "clusterId": ClusterId::new(), "name": "acme",
            "owners": owners, "plan": "baseline", "labels": {}, "quotas": {}, "limits": {},
            "networkPolicies": [], "ownerNamespace": "acme-owner",
            "appsNamespace": "acme-apps", "version": 1,
            "createdAt": "2026-12-07T00:00:00Z", "updatedAt": "2026-12-07T00:00:00Z",
        }))
        .unwrap()
    }

    fn project(t: &Tenant, access: &[&str]) -> Project {
        serde_json::from_value(serde_json::json!({
            "id": ProjectId::new(), "clusterId": t.cluster_id, "tenantId": t.id,
            "name": "web", "description": "", "labels": {}, "access": access, "namespace": "acme-web-1234", "version": 1,
            "createdAt": "2026-12-07T00:00:00Z", "updatedAt": "2026-12-07T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn a_bare_email_and_the_user_prefix_are_the_same_person() {
        let t = tenant(&["alice@example.com", "user:alice@example.com", "group:ops"]);
        let rows = tenant_members(&t);
        assert_eq!(
            rows.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            ["group:ops", "user:alice@example.com"]
        );
        let alice = Identity {
            subject: "alice@example.com".into(),
            groups: vec![],
        };
        assert!(Grants::of(&alice, &rows).owns(t.id));
        // A subject that merely looks like a group is not one.
        let impostor = Identity {
            subject: "group:ops".into(),
            groups: vec![],
        };
        assert!(!Grants::of(&impostor, &rows).owns(t.id));
    }

    #[test]
    fn the_strongest_role_wins_across_entries_and_groups() {
        let t = tenant(&[]);
        let p = project(
            &t,
            &["viewer:group:qa", "developer:bob", "owner:group:leads"],
        );
        let rows = project_members(&p);
        let bob = Identity {
            subject: "bob".into(),
            groups: vec!["qa".into(), "leads".into()],
        };
        let g = Grants::of(&bob, &rows);
        assert_eq!(g.project_role(p.id), Some(AccessRole::Owner));
        assert!(g.in_tenant(t.id) && !g.owns(t.id));
        let carol = Identity {
            subject: "carol".into(),
            groups: vec!["qa".into()],
        };
        assert_eq!(
            Grants::of(&carol, &rows).project_role(p.id),
            Some(AccessRole::Viewer)
        );
        let nobody = Identity {
            subject: "dave".into(),
            groups: vec![],
        };
        assert!(Grants::of(&nobody, &rows).is_empty());
    }
}
