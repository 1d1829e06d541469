//! The groups a token carries are exactly the groups the operator binds: the Capsule
//! Tenant owner, the tenant RoleBindings and the project RoleBindings (kubenova-reconcile)
//! name the same strings as `tenant_group` / `project_group`.
#![allow(clippy::unwrap_used, missing_docs)]

use kubenova_api::model::AccessRole;

const ROLES: [AccessRole; 3] = [AccessRole::Owner, AccessRole::Developer, AccessRole::Viewer];

#[test]
fn tenant_and_project_groups_match_the_operator() {
    for role in ROLES {
        for (tenant, project) in [("acme", "web"), ("a", "b-c"), ("t-1", "p0")] {
            assert_eq!(
                kubenova_kubeconfig::tenant_group(tenant, role),
                kubenova_reconcile::tenant_group(tenant, role.as_str())
            );
            assert_eq!(
                kubenova_kubeconfig::project_group(tenant, project, role),
                kubenova_reconcile::project_group(tenant, project, role.as_str())
            );
        }
    }
}
