//! The ValidatingAdmissionPolicy that fences what the operator's own ServiceAccount may
//! write, whatever its RBAC allows: RBAC cannot say "only namespaces of KubeNova tenants"
//! or "only RoleBindings to these roles, never for `system:` groups", a policy can.
//!
//! What it matches and denies is described on [`admission_policy`].
//!
//! The expressions are tested for real (evaluated with a CEL interpreter against the
//! objects the operator writes and against the writes it must not make) in
//! `bins/kubenova-operator/tests/admission_policy.rs`.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{APP_DEPLOYER_ROLE, APP_SERVICE_ACCOUNT, OPERATOR_NAME, PROJECT_CLUSTER_ROLES};
use crate::meta::{
    ANNOTATION_OWNER, LABEL_CAPSULE_TENANT, LABEL_MANAGED_BY, LABEL_NAMESPACE_ROLE, LABEL_PROJECT,
    LABEL_TENANT, MANAGED_BY,
};

/// Name of the ValidatingAdmissionPolicy and of its ValidatingAdmissionPolicyBinding.
pub const ADMISSION_POLICY_NAME: &str = "kubenova-operator-writes";

/// Prefix of every RoleBinding the operator writes.
pub const ROLE_BINDING_PREFIX: &str = "kubenova-";

/// Namespaces of Kubernetes itself, never written by the operator.
const KUBERNETES_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The namespaces the operator never creates, changes or deletes whatever their labels:
/// Kubernetes' own (`default`, `kube-system`, `kube-public`, `kube-node-lease`), the
/// platform components' ([`crate::components::PINNED`]: `cert-manager`,
/// `capsule-system`, `vela-system`) and `operator_namespace`.
///
/// ```
/// use kubenova_reconcile::manifests::platform_namespaces;
/// let ns = platform_namespaces("kubenova-system");
/// for n in ["kube-system", "default", "capsule-system", "vela-system", "cert-manager", "kubenova-system"] {
///     assert!(ns.iter().any(|x| x == n), "{n}");
/// }
/// ```
pub fn platform_namespaces(operator_namespace: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let all = KUBERNETES_NAMESPACES
        .into_iter()
        .chain(crate::components::PINNED.iter().map(|c| c.namespace))
        .chain([operator_namespace]);
    for n in all {
        if !out.iter().any(|x| x == n) {
            out.push(n.to_owned());
        }
    }
    out
}

/// The username of the operator's ServiceAccount in `namespace`.
pub fn operator_username(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{OPERATOR_NAME}")
}

/// A CEL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A CEL list of string literals.
fn list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| lit(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// `key in map && map[key] == value` for a label key and a CEL value expression.
fn label_is(map: &str, key: &str, value: &str) -> String {
    format!("{k} in {map} && {map}[{k}] == {value}", k = lit(key))
}

/// `map[key]` if present, else `''`.
fn label_or_empty(map: &str, key: &str) -> String {
    format!("{k} in {map} ? {map}[{k}] : ''", k = lit(key))
}

fn variable(name: &str, expression: String) -> Variable {
    Variable {
        name: name.to_owned(),
        expression,
    }
}

fn validation(expression: String, message: String, message_expression: String) -> Validation {
    Validation {
        expression,
        message: Some(message),
        message_expression: Some(message_expression),
        reason: Some("Forbidden".to_owned()),
    }
}

/// The policy's variables (`variables.<name>` in the validations), in evaluation order.
fn variables() -> Vec<Variable> {
    let op = lit(MANAGED_BY);
    vec![
        // DELETE requests carry the object in oldObject only.
        variable(
            "obj",
            "request.operation == 'DELETE' ? oldObject : object".into(),
        ),
        variable(
            "verb",
            "request.operation == 'CREATE' ? 'create' : (request.operation == 'UPDATE' ? 'update' : 'delete')"
                .into(),
        ),
        variable("isNamespace", "request.resource.resource == 'namespaces'".into()),
        variable(
            "isRoleBinding",
            "request.resource.resource == 'rolebindings'".into(),
        ),
        variable(
            "isServiceAccount",
            "request.resource.resource == 'serviceaccounts'".into(),
        ),
        variable("name", "variables.obj.metadata.name".into()),
        variable(
            "labels",
            "has(variables.obj.metadata.labels) ? variables.obj.metadata.labels : {}".into(),
        ),
        variable(
            "annotations",
            "has(variables.obj.metadata.annotations) ? variables.obj.metadata.annotations : {}"
                .into(),
        ),
        variable(
            "managed",
            label_is("variables.labels", LABEL_MANAGED_BY, &op),
        ),
        variable("tenant", label_or_empty("variables.labels", LABEL_TENANT)),
        variable("role", label_or_empty("variables.labels", LABEL_NAMESPACE_ROLE)),
        variable("project", label_or_empty("variables.labels", LABEL_PROJECT)),
        // On UPDATE the stored object must already be the operator's, for the same tenant.
        variable(
            "oldManagedSameTenant",
            format!(
                "request.operation != 'UPDATE' || (has(oldObject.metadata.labels) && {} && {})",
                label_is("oldObject.metadata.labels", LABEL_MANAGED_BY, &op),
                label_is("oldObject.metadata.labels", LABEL_TENANT, "variables.tenant"),
            ),
        ),
        // The namespace of a namespaced object (namespaceObject is null for Namespaces).
        variable(
            "nsName",
            "variables.isNamespace ? '' : namespaceObject.metadata.name".into(),
        ),
        variable(
            "nsLabels",
            "!variables.isNamespace && has(namespaceObject.metadata.labels) ? namespaceObject.metadata.labels : {}"
                .into(),
        ),
        variable(
            "nsTenant",
            label_or_empty("variables.nsLabels", LABEL_TENANT),
        ),
        variable(
            "projectNamespace",
            format!(
                "{} && {} && variables.nsTenant != ''",
                label_is("variables.nsLabels", LABEL_MANAGED_BY, &op),
                label_is("variables.nsLabels", LABEL_NAMESPACE_ROLE, "'project'"),
            ),
        ),
    ]
}

/// `'<prefix> <Kind> <name>: '` for messages, with the namespace for namespaced kinds.
fn refused(kind: &str) -> String {
    if kind == "Namespace" {
        "'kubenova-operator may not ' + variables.verb + ' Namespace ' + variables.name + ': '"
            .to_owned()
    } else {
        format!(
            "'kubenova-operator may not ' + variables.verb + ' {kind} ' + variables.nsName + '/' + variables.name + ': '"
        )
    }
}

/// The policy's validations; each applies to one kind (the others pass it).
fn validations(operator_namespace: &str) -> Vec<Validation> {
    let platform = platform_namespaces(operator_namespace);
    let ns = refused("Namespace");
    let rb = refused("RoleBinding");
    let sa = refused("ServiceAccount");
    let platform_list = platform.join(", ");
    let managed_labels = format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY}, {LABEL_TENANT}=<tenant> and {LABEL_CAPSULE_TENANT}=<tenant>"
    );
    let project_ns = format!(
        "a project namespace managed by {MANAGED_BY} (labels {LABEL_MANAGED_BY}={MANAGED_BY}, {LABEL_NAMESPACE_ROLE}=project and {LABEL_TENANT})"
    );
    let app_bindings = format!(
        "the app identity RoleBindings are {APP_SERVICE_ACCOUNT} -> ClusterRole edit and {APP_DEPLOYER_ROLE} -> ClusterRole {APP_DEPLOYER_ROLE}, each with the ServiceAccount {APP_SERVICE_ACCOUNT} of its own namespace as its only subject"
    );
    vec![
        // ---- Namespaces ----
        validation(
            format!(
                "!variables.isNamespace || !(variables.name in {})",
                list(&platform)
            ),
            format!(
                "kubenova-operator may not write a system or platform namespace ({platform_list}): they never belong to a tenant"
            ),
            format!(
                "{ns} + 'it is a system or platform namespace ({platform_list}), which never belongs to a tenant'"
            ),
        ),
        validation(
            format!(
                "!variables.isNamespace || (variables.managed && variables.tenant != '' && {})",
                label_is("variables.labels", LABEL_CAPSULE_TENANT, "variables.tenant")
            ),
            format!(
                "kubenova-operator may only write namespaces labelled {managed_labels} (namespaces of KubeNova tenants)"
            ),
            format!(
                "{ns} + 'it is not labelled {managed_labels} with the same tenant, so it is not a namespace of a KubeNova tenant'"
            ),
        ),
        validation(
            "!variables.isNamespace || (variables.role == 'owner' && variables.name == variables.tenant + '-owner') || (variables.role == 'apps' && variables.name == variables.tenant + '-apps') || (variables.role == 'project' && variables.project != '' && variables.name.startsWith(variables.tenant + '-') && variables.name.matches('^[a-z0-9-]+-[0-9a-f]{8}$'))"
                .to_owned(),
            format!(
                "kubenova-operator may only write namespaces whose name fits their tenant and {LABEL_NAMESPACE_ROLE}: <tenant>-owner (owner), <tenant>-apps (apps) or <tenant>-<project>-<8 hex digits> with a {LABEL_PROJECT} label (project)"
            ),
            format!(
                "{ns} + 'its name does not fit tenant \"' + variables.tenant + '\" and {LABEL_NAMESPACE_ROLE} \"' + variables.role + '\" (owner: <tenant>-owner, apps: <tenant>-apps, project: <tenant>-<project>-<8 hex digits> with a {LABEL_PROJECT} label)'"
            ),
        ),
        validation(
            format!(
                "!variables.isNamespace || request.operation == 'DELETE' || ({owner} in variables.annotations && variables.annotations[{owner}] == (variables.role == 'project' ? 'novaprojects.kubenova.io/' + variables.tenant + '-owner/' + variables.project : 'novatenants.kubenova.io/' + variables.tenant))",
                owner = lit(ANNOTATION_OWNER)
            ),
            format!(
                "kubenova-operator may only write namespaces annotated {ANNOTATION_OWNER} with their owner: novatenants.kubenova.io/<tenant> (owner and apps namespaces) or novaprojects.kubenova.io/<tenant>-owner/<project> (project namespaces)"
            ),
            format!(
                "{ns} + 'its annotation {ANNOTATION_OWNER} must name its owner, ' + (variables.role == 'project' ? 'novaprojects.kubenova.io/' + variables.tenant + '-owner/' + variables.project : 'novatenants.kubenova.io/' + variables.tenant)"
            ),
        ),
        validation(
            "!variables.isNamespace || variables.oldManagedSameTenant".to_owned(),
            "kubenova-operator may only update namespaces it already manages for the same tenant (no adoption of another namespace, no move to another tenant)".to_owned(),
            format!(
                "{ns} + 'the namespace is not already managed by {MANAGED_BY} for tenant \"' + variables.tenant + '\" (no adoption of another namespace, no move to another tenant)'"
            ),
        ),
        // ---- RoleBindings and ServiceAccounts ----
        validation(
            "!(variables.isRoleBinding || variables.isServiceAccount) || variables.projectNamespace"
                .to_owned(),
            format!(
                "kubenova-operator may only write RoleBindings and ServiceAccounts in {project_ns}"
            ),
            format!(
                "'kubenova-operator may not ' + variables.verb + (variables.isRoleBinding ? ' RoleBinding ' : ' ServiceAccount ') + variables.nsName + '/' + variables.name + ': namespace ' + variables.nsName + ' is not {project_ns}'"
            ),
        ),
        validation(
            "!(variables.isRoleBinding || variables.isServiceAccount) || !variables.projectNamespace || (variables.managed && variables.tenant == variables.nsTenant)".to_owned(),
            format!(
                "kubenova-operator may only write RoleBindings and ServiceAccounts labelled {LABEL_MANAGED_BY}={MANAGED_BY} and {LABEL_TENANT}=<the tenant of their namespace>"
            ),
            format!(
                "'kubenova-operator may not ' + variables.verb + (variables.isRoleBinding ? ' RoleBinding ' : ' ServiceAccount ') + variables.nsName + '/' + variables.name + ': it must be labelled {LABEL_MANAGED_BY}={MANAGED_BY} and {LABEL_TENANT}=' + variables.nsTenant"
            ),
        ),
        validation(
            "!(variables.isRoleBinding || variables.isServiceAccount) || variables.oldManagedSameTenant"
                .to_owned(),
            "kubenova-operator may only update RoleBindings and ServiceAccounts it already manages for the same tenant".to_owned(),
            format!(
                "'kubenova-operator may not ' + variables.verb + (variables.isRoleBinding ? ' RoleBinding ' : ' ServiceAccount ') + variables.nsName + '/' + variables.name + ': the stored object is not already managed by {MANAGED_BY} for tenant \"' + variables.tenant + '\" (no adoption)'"
            ),
        ),
        // ---- RoleBindings ----
        validation(
            format!(
                "!variables.isRoleBinding || variables.name.startsWith({})",
                lit(ROLE_BINDING_PREFIX)
            ),
            format!(
                "kubenova-operator may only write RoleBindings named {ROLE_BINDING_PREFIX}*"
            ),
            format!("{rb} + 'its name does not start with {ROLE_BINDING_PREFIX}'"),
        ),
        validation(
            format!(
                "!variables.isRoleBinding || request.operation == 'DELETE' || (variables.obj.roleRef.apiGroup == 'rbac.authorization.k8s.io' && variables.obj.roleRef.kind == 'ClusterRole' && variables.obj.roleRef.name in {})",
                list(&PROJECT_CLUSTER_ROLES)
            ),
            format!(
                "kubenova-operator may only bind the ClusterRoles {}",
                PROJECT_CLUSTER_ROLES.join(", ")
            ),
            format!(
                "{rb} + 'it refers to ' + variables.obj.roleRef.kind + ' ' + variables.obj.roleRef.name + ', but the operator may only bind the ClusterRoles {}'",
                PROJECT_CLUSTER_ROLES.join(", ")
            ),
        ),
        validation(
            "!variables.isRoleBinding || request.operation == 'DELETE' || !has(variables.obj.subjects) || variables.obj.subjects.all(s, !((s.kind == 'Group' || s.kind == 'User') && s.name.startsWith('system:')))"
                .to_owned(),
            "kubenova-operator may not bind a system user or group (system:masters, system:authenticated, system:unauthenticated, system:serviceaccounts, system:serviceaccounts:<namespace>, system:nodes, any system:*)".to_owned(),
            format!(
                "{rb} + 'a subject is the system user or group ' + variables.obj.subjects.filter(s, (s.kind == 'Group' || s.kind == 'User') && s.name.startsWith('system:'))[0].name + ', which would grant the role to Kubernetes itself or to every authenticated or unauthenticated client'"
            ),
        ),
        validation(
            format!(
                "!variables.isRoleBinding || request.operation == 'DELETE' || !(variables.name in {names} || variables.obj.roleRef.name == {deployer}) || ((variables.name == {app} && variables.obj.roleRef.name == 'edit' || variables.name == {deployer} && variables.obj.roleRef.name == {deployer}) && has(variables.obj.subjects) && variables.obj.subjects.size() == 1 && variables.obj.subjects.all(s, s.kind == 'ServiceAccount' && s.name == {app} && has(s.namespace) && s.namespace == variables.nsName))",
                names = list(&[APP_SERVICE_ACCOUNT, APP_DEPLOYER_ROLE]),
                deployer = lit(APP_DEPLOYER_ROLE),
                app = lit(APP_SERVICE_ACCOUNT),
            ),
            format!("kubenova-operator may not write this RoleBinding: {app_bindings}"),
            format!("{rb} + '{app_bindings}'"),
        ),
        // ---- ServiceAccounts ----
        validation(
            format!(
                "!variables.isServiceAccount || variables.name == {}",
                lit(APP_SERVICE_ACCOUNT)
            ),
            format!(
                "kubenova-operator may only write the ServiceAccount {APP_SERVICE_ACCOUNT} (the project's app identity)"
            ),
            format!(
                "{sa} + 'the only ServiceAccount the operator writes is {APP_SERVICE_ACCOUNT}, the app identity of a project namespace'"
            ),
        ),
    ]
}

fn policy_meta() -> ObjectMeta {
    ObjectMeta {
        name: Some(ADMISSION_POLICY_NAME.to_owned()),
        labels: Some(BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                OPERATOR_NAME.to_owned(),
            ),
            (
                "app.kubernetes.io/part-of".to_owned(),
                "kubenova".to_owned(),
            ),
        ])),
        ..ObjectMeta::default()
    }
}

/// The ValidatingAdmissionPolicy fencing the writes of the operator installed in
/// `operator_namespace`.
///
/// It matches only requests whose user is the operator's ServiceAccount
/// (`system:serviceaccount:<operator namespace>:kubenova-operator`), on Namespaces,
/// ServiceAccounts and RoleBindings (CREATE, UPDATE, DELETE), and denies
/// (`failurePolicy: Fail`, binding `validationActions: [Deny]`, so an expression that
/// cannot be evaluated denies too):
///
/// - **Namespaces**: system and platform namespaces ([`platform_namespaces`]); any
///   namespace without `app.kubernetes.io/managed-by: kubenova-operator` and a tenant
///   label (`kubenova.io/tenant`, equal to `capsule.clastix.io/tenant`); a name that does
///   not fit its tenant and role (`<tenant>-owner`, `<tenant>-apps`, or
///   `<tenant>-<project…>-<8 hex>` with a `kubenova.io/project` label); on CREATE and
///   UPDATE, a missing or inconsistent `kubenova.io/owner` annotation
///   (`novatenants.kubenova.io/<tenant>`, or `novaprojects.kubenova.io/<tenant>-owner/<project>`);
///   on UPDATE, a namespace not already managed by the operator for the same tenant (no
///   adoption, no move to another tenant).
/// - **RoleBindings**: outside project namespaces managed by the operator (read from
///   `namespaceObject`), named outside `kubenova-`, not labelled as the operator's for the
///   namespace's tenant, a `roleRef` other than ClusterRole `admin`, `edit`, `view` or
///   [`APP_DEPLOYER_ROLE`], a `system:` user or group subject (`system:masters`,
///   `system:authenticated`, `system:serviceaccounts:*`, …), and app identity bindings
///   other than `kubenova-app` → `edit` and `kubenova-app-deployer` →
///   `kubenova-app-deployer` with the namespace's own [`APP_SERVICE_ACCOUNT`] as their only
///   subject.
/// - **ServiceAccounts**: anything but [`APP_SERVICE_ACCOUNT`] in such a project namespace,
///   labelled as the operator's.
///
/// ```
/// use kubenova_reconcile::manifests::admission_policy;
/// let policy = admission_policy("kubenova-system");
/// let spec = policy.spec.unwrap();
/// assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
/// assert!(spec.match_conditions.unwrap()[0].expression.contains("system:serviceaccount:kubenova-system:kubenova-operator"));
/// ```
pub fn admission_policy(operator_namespace: &str) -> ValidatingAdmissionPolicy {
    let ops = || {
        Some(vec![
            "CREATE".to_owned(),
            "UPDATE".to_owned(),
            "DELETE".to_owned(),
        ])
    };
    let rule = |group: &str, resources: &[&str]| NamedRuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec!["v1".to_owned()]),
        operations: ops(),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        ..NamedRuleWithOperations::default()
    };
    ValidatingAdmissionPolicy {
        metadata: policy_meta(),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".to_owned()),
            match_constraints: Some(MatchResources {
                match_policy: Some("Equivalent".to_owned()),
                resource_rules: Some(vec![
                    rule("", &["namespaces", "serviceaccounts"]),
                    rule("rbac.authorization.k8s.io", &["rolebindings"]),
                ]),
                ..MatchResources::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "operator-service-account".to_owned(),
                expression: format!(
                    "request.userInfo.username == {}",
                    lit(&operator_username(operator_namespace))
                ),
            }]),
            variables: Some(variables()),
            validations: Some(validations(operator_namespace)),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// The binding that puts [`admission_policy`] in force: every match is denied on
/// failure (`validationActions: [Deny]`).
pub fn admission_policy_binding() -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: policy_meta(),
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: ADMISSION_POLICY_NAME.to_owned(),
            validation_actions: vec!["Deny".to_owned()],
            ..ValidatingAdmissionPolicyBindingSpec::default()
        },
    }
}
