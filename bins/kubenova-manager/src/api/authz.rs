//! Who may do what: roles, tenant/project scope, and the checks every route makes.
//!
//! The policy (also documented in `docs/src/authorization.md`):
//!
//! | role | clusters | tenants | projects & apps | plans, policysets | audit, tokens |
//! |---|---|---|---|---|---|
//! | `admin` | read/write | read/write | read/write | read | read / issue |
//! | `ops` | read/write | read/write | read/write | read | – |
//! | `tenantOwner` | – | read own tenants | read/write in own tenants | read | – |
//! | `projectDev` | – | – | read own projects; read/write their apps | read | – |
//! | `readOnly` | read | read (within scope if scoped) | read (within scope) | read | – |
//!
//! A resource outside the caller's scope is reported as **KN-404**, exactly as if it did
//! not exist, so scope never leaks existence. A resource inside the scope that the role
//! may not change is **KN-403**.

use super::error::ApiError;
use kubenova_api::identity::{Grants, Identity};
use kubenova_api::ids::{ProjectId, TenantId};
use kubenova_api::model::{AccessRole, Project, Tenant};
use serde::{Deserialize, Serialize};

/// A role carried in a token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Role {
    /// Everything, including tokens and audit.
    #[serde(rename = "admin")]
    Admin,
    /// Platform operations: clusters, tenants, projects, apps.
    #[serde(rename = "ops")]
    Ops,
    /// Owner of the tenants in the `tenants` claim.
    #[serde(rename = "tenantOwner")]
    TenantOwner,
    /// Developer in the projects of the `projects` claim.
    #[serde(rename = "projectDev")]
    ProjectDev,
    /// Read-only; scoped when the token carries `tenants`/`projects`.
    #[serde(rename = "readOnly")]
    ReadOnly,
}

impl Role {
    /// Parses a claim value.
    pub fn parse(s: &str) -> Option<Role> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// Wire spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ops => "ops",
            Role::TenantOwner => "tenantOwner",
            Role::ProjectDev => "projectDev",
            Role::ReadOnly => "readOnly",
        }
    }
}

/// What a call does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read.
    Read,
    /// Create, change or delete.
    Write,
}

/// The authenticated caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// `sub` claim (for an identity provider's token: as its issuer maps it).
    pub subject: String,
    /// Roles (for an identity provider's token: the platform roles its groups grant).
    pub roles: Vec<Role>,
    /// Tenant scope (`tenants` claim).
    pub tenants: Vec<TenantId>,
    /// Project scope (`projects` claim).
    pub projects: Vec<ProjectId>,
    /// Groups, from an identity provider's token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The identity provider that signed the caller in (absent for tokens this manager
    /// minted). Only such callers get rights derived from the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// What tenants' `owners` and projects' `access` grant the caller (derived per request
    /// for an identity provider's callers; empty for minted tokens).
    #[serde(skip)]
    #[schema(ignore)]
    pub grants: Grants,
    /// The API key the caller authenticated with (a machine identity; its rights are in
    /// `grants`, see `api::apikeys`), else `None`.
    #[serde(skip)]
    #[schema(ignore)]
    pub api_key: Option<uuid::Uuid>,
}

impl Principal {
    /// True if the caller has the role.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// True for admin or ops: unscoped platform staff.
    pub fn is_platform(&self) -> bool {
        self.has(Role::Admin) || self.has(Role::Ops)
    }

    /// The caller as an identity whose rights the model grants (signed in with an
    /// identity provider), else `None`.
    pub fn identity(&self) -> Option<Identity> {
        self.issuer.as_ref().map(|_| Identity {
            subject: self.subject.clone(),
            groups: self.groups.clone(),
        })
    }

    /// Owner of the tenant: by a `tenantOwner` token scoped to it, or named in its
    /// `owners` (directly or by a group).
    pub fn owns_tenant(&self, tenant: TenantId) -> bool {
        (self.has(Role::TenantOwner) && self.tenants.contains(&tenant)) || self.grants.owns(tenant)
    }

    /// The tenants in the caller's scope: a token's `tenants` and the tenants it owns by
    /// the model (sorted, once each).
    pub fn scoped_tenants(&self) -> Vec<TenantId> {
        let mut ids: Vec<TenantId> = self.tenants.clone();
        ids.extend(self.grants.tenants.keys().copied());
        ids.sort();
        ids.dedup();
        ids
    }

    /// The projects in the caller's scope: a token's `projects` and those whose access
    /// entries name it (sorted, once each).
    pub fn scoped_projects(&self) -> Vec<ProjectId> {
        let mut ids: Vec<ProjectId> = self.projects.clone();
        ids.extend(self.grants.projects.keys().copied());
        ids.sort();
        ids.dedup();
        ids
    }

    /// The role the project's `access` entries give the caller (an identity provider's).
    fn project_grant(&self, project: ProjectId) -> Option<AccessRole> {
        self.grants.project_role(project)
    }

    /// A digest (SHA-256, hex) of the caller's roles and tenant and project scope, in a
    /// canonical order (the order and repetitions of the claims do not matter), and of
    /// the API key it authenticated with, if any.
    /// Idempotency records are kept per subject **and** this digest, so a token with
    /// other roles or another scope under the same subject never gets another token's
    /// stored response, nor a key another key's of the same name (revoked since).
    ///
    /// ```
    /// use kubenova_api::ids::TenantId;
    /// use kubenova_manager::api::authz::{Principal, Role};
    /// let t = TenantId::new();
    /// let p = |roles: &[Role], tenants: &[TenantId]| Principal {
    ///     subject: "alice".into(),
    ///     roles: roles.to_vec(),
    ///     tenants: tenants.to_vec(),
    ///     ..Principal::default()
    /// };
    /// let owner = p(&[Role::TenantOwner, Role::ReadOnly], &[t]);
    /// assert_eq!(owner.scope_digest(), p(&[Role::ReadOnly, Role::TenantOwner], &[t, t]).scope_digest());
    /// assert_ne!(owner.scope_digest(), p(&[Role::ReadOnly], &[t]).scope_digest());
    /// assert_ne!(owner.scope_digest(), p(&[Role::TenantOwner, Role::ReadOnly], &[]).scope_digest());
    /// ```
    pub fn scope_digest(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut roles: Vec<&str> = self.roles.iter().map(Role::as_str).collect();
        roles.sort_unstable();
        roles.dedup();
        let mut tenants: Vec<String> = self.tenants.iter().map(|t| t.to_string()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut projects: Vec<String> = self.projects.iter().map(|p| p.to_string()).collect();
        projects.sort_unstable();
        projects.dedup();
        let mut h = Sha256::new();
        for (name, values) in [
            ("roles", roles.join(",")),
            ("tenants", tenants.join(",")),
            ("projects", projects.join(",")),
        ] {
            h.update(name.as_bytes());
            h.update(b"=");
            h.update(values.as_bytes());
            h.update(b"\n");
        }
        if let Some(key) = self.api_key {
            h.update(b"apiKey=");
            h.update(key.to_string().as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    /// Requires one of the roles (KN-403 otherwise).
    pub fn require_any(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.has(*r)) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this operation needs one of the roles {}",
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }

    /// Cluster-level resources (clusters, capabilities, bootstrap).
    pub fn check_clusters(&self, access: Access) -> Result<(), ApiError> {
        match access {
            Access::Read
                if self.is_platform() || (self.has(Role::ReadOnly) && !self.is_scoped()) =>
            {
                Ok(())
            }
            Access::Read => Err(ApiError::forbidden(
                "reading clusters needs admin, ops or unscoped readOnly",
            )),
            Access::Write => self.require_any(&[Role::Admin, Role::Ops]),
        }
    }

    fn is_scoped(&self) -> bool {
        !self.tenants.is_empty() || !self.projects.is_empty()
    }

    /// May the caller see this tenant at all? (`false` → report KN-404.)
    pub fn sees_tenant(&self, tenant: TenantId) -> bool {
        self.is_platform()
            || (self.has(Role::ReadOnly) && !self.is_scoped())
            || self.tenants.contains(&tenant)
            || self.grants.owns(tenant)
    }

    /// Tenant-level operations: reading it, or changing it (owners, quotas, plan, delete).
    pub fn check_tenant(&self, tenant: &Tenant, access: Access) -> Result<(), ApiError> {
        if !self.sees_tenant(tenant.id) && !self.sees_any_project_of(tenant.id) {
            return Err(ApiError::not_found("tenant", tenant.id));
        }
        match access {
            Access::Read => Ok(()),
            Access::Write => self.require_any(&[Role::Admin, Role::Ops]),
        }
    }

    fn sees_any_project_of(&self, _tenant: TenantId) -> bool {
        // Project-scoped callers learn the tenant id from their project; reading the tenant
        // record itself stays reserved to tenant-level scope.
        false
    }

    /// Creating a project in a tenant (or listing its projects).
    pub fn check_tenant_projects(&self, tenant: &Tenant, access: Access) -> Result<(), ApiError> {
        if self.is_platform() {
            return Ok(());
        }
        if self.grants.owns(tenant.id) {
            return Ok(());
        }
        if self.tenants.contains(&tenant.id) {
            return match access {
                Access::Read => Ok(()),
                Access::Write => self.require_any(&[Role::TenantOwner]),
            };
        }
        if self.has(Role::ReadOnly) && !self.is_scoped() {
            return match access {
                Access::Read => Ok(()),
                Access::Write => Err(ApiError::forbidden("readOnly may not change anything")),
            };
        }
        if access == Access::Read
            && ((self.has(Role::ProjectDev) && !self.projects.is_empty())
                || self.grants.in_tenant(tenant.id))
        {
            // Listing filters to the caller's projects.
            return Ok(());
        }
        Err(ApiError::not_found("tenant", tenant.id))
    }

    /// May the caller see this project? (`false` → KN-404.)
    pub fn sees_project(&self, project: &Project) -> bool {
        self.sees_tenant(project.tenant_id)
            || self.projects.contains(&project.id)
            || self.project_grant(project.id).is_some()
    }

    /// Project-level operations (the project record itself, its access list, delete).
    pub fn check_project(&self, project: &Project, access: Access) -> Result<(), ApiError> {
        if !self.sees_project(project) {
            return Err(ApiError::not_found("project", project.id));
        }
        match access {
            Access::Read => Ok(()),
            Access::Write if self.is_platform() => Ok(()),
            Access::Write if self.owns_tenant(project.tenant_id) => Ok(()),
            Access::Write if self.project_grant(project.id) == Some(AccessRole::Owner) => Ok(()),
            Access::Write => Err(ApiError::forbidden(
                "changing a project needs admin, ops, its tenant's owner or an owner: entry in its access",
            )),
        }
    }

    /// App-level operations inside a project (create/update/delete/actions on apps).
    pub fn check_apps(&self, project: &Project, access: Access) -> Result<(), ApiError> {
        if !self.sees_project(project) {
            return Err(ApiError::not_found("project", project.id));
        }
        match access {
            Access::Read => Ok(()),
            Access::Write if self.is_platform() => Ok(()),
            Access::Write if self.owns_tenant(project.tenant_id) => Ok(()),
            Access::Write if self.projects.contains(&project.id) && self.has(Role::ProjectDev) => {
                Ok(())
            }
            Access::Write
                if matches!(
                    self.project_grant(project.id),
                    Some(AccessRole::Owner | AccessRole::Developer)
                ) =>
            {
                Ok(())
            }
            Access::Write => Err(ApiError::forbidden(
                "changing apps needs admin, ops, the tenant's owner or a developer of the project",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(roles: &[Role], tenants: &[TenantId], projects: &[ProjectId]) -> Principal {
        Principal {
            subject: "s".into(),
            roles: roles.to_vec(),
            tenants: tenants.to_vec(),
            projects: projects.to_vec(),
            ..Principal::default()
        }
    }

    #[test]
    fn role_wire_names() {
        for r in [
            Role::Admin,
            Role::Ops,
            Role::TenantOwner,
            Role::ProjectDev,
            Role::ReadOnly,
        ] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn scoped_readonly_cannot_read_clusters() {
        let t = TenantId::new();
        assert!(
            p(&[Role::ReadOnly], &[t], &[])
                .check_clusters(Access::Read)
                .is_err()
        );
        assert!(
            p(&[Role::ReadOnly], &[], &[])
                .check_clusters(Access::Read)
                .is_ok()
        );
        assert!(
            p(&[Role::ReadOnly], &[], &[])
                .check_clusters(Access::Write)
                .is_err()
        );
        assert!(
            p(&[Role::Ops], &[], &[])
                .check_clusters(Access::Write)
                .is_ok()
        );
    }
}
