//! NovaProject → namespace, the app identity (ServiceAccount), RoleBindings, optional
//! ResourceQuota.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, ResourceQuotaSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject as RbacSubject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubenova_api::crd::NovaProject;
use kubenova_api::model::{
    AccessEntry, AccessRole, ProjectSpec, project_namespace, tenant_namespaces,
};
use kubenova_api::validate::Validate;

use crate::error::TranslateError;
use crate::manifests::{APP_DEPLOYER_ROLE, APP_SERVICE_ACCOUNT};
use crate::meta::*;
use crate::tenant::{PodSecurity, rbac_subject};

const KIND: &str = "NovaProject";

/// Name of the per-project ResourceQuota.
pub const PROJECT_QUOTA_NAME: &str = "kubenova-project";

/// What a [`NovaProject`] translates into. A namespaced NovaProject cannot own a
/// cluster-scoped Namespace (nor objects in another namespace), so these carry the
/// [`ANNOTATION_OWNER`] annotation and labels instead of owner references; the Capsule
/// Tenant owns the namespace, and the operator's finalizer removes it with the project.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectObjects {
    /// The project namespace ([`project_namespace`]).
    pub namespace: Namespace,
    /// `kubenova-owner` (admin), `kubenova-developer` (edit), `kubenova-viewer` (view),
    /// then the app identity's `kubenova-app` (edit) and `kubenova-app-deployer`
    /// ([`APP_DEPLOYER_ROLE`]), whose only subject is [`APP_SERVICE_ACCOUNT`].
    pub role_bindings: Vec<RoleBinding>,
    /// `kubenova-project` when `spec.quota` is set.
    pub resource_quota: Option<ResourceQuota>,
    /// The app identity [`APP_SERVICE_ACCOUNT`] (no automounted token).
    pub service_account: ServiceAccount,
}

impl ProjectObjects {
    /// Every object as JSON, in apply order (namespace first, then the ServiceAccount the
    /// bindings name).
    pub fn to_values(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = Vec::new();
        out.extend(serde_json::to_value(&self.namespace).ok());
        out.extend(serde_json::to_value(&self.service_account).ok());
        out.extend(
            self.role_bindings
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok()),
        );
        out.extend(
            self.resource_quota
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok()),
        );
        out
    }
}

/// The ClusterRole a project role is bound to.
pub fn cluster_role(role: AccessRole) -> &'static str {
    match role {
        AccessRole::Owner => "admin",
        AccessRole::Developer => "edit",
        AccessRole::Viewer => "view",
    }
}

/// Translates a NovaProject. It must live in its tenant's owner namespace.
///
/// `pod_security` is the level of the project's tenant ([`tenant_pod_security`]): the
/// project namespace enforces it like the tenant's own namespaces. `None` when the tenant
/// has no `podSecurity` policyset, or is not known (an offline render of a project
/// without its NovaTenant): then the namespace gets no Pod Security label from KubeNova.
///
/// [`tenant_pod_security`]: crate::tenant_pod_security
pub fn translate_project(
    np: &NovaProject,
    pod_security: Option<&PodSecurity>,
) -> Result<ProjectObjects, TranslateError> {
    let name = np
        .metadata
        .name
        .clone()
        .ok_or(TranslateError::MissingName { kind: KIND })?;
    let spec = &np.spec;
    let invalid = |message: String| TranslateError::InvalidSpec {
        kind: KIND,
        name: name.clone(),
        message,
    };
    if let Some(p) = kubenova_api::validate::dns_label_problem(&spec.tenant) {
        return Err(invalid(format!("tenant: {p}")));
    }
    let (owner_ns, _) = tenant_namespaces(&spec.tenant);
    let actual = np.metadata.namespace.clone().unwrap_or_default();
    if actual != owner_ns {
        return Err(TranslateError::WrongNamespace {
            kind: KIND,
            name,
            expected: owner_ns,
            actual,
        });
    }
    let model = ProjectSpec {
        name: name.clone(),
        description: spec.description.clone(),
        labels: spec.labels.clone(),
        access: spec.access.clone(),
    };
    model.validate().map_err(|e| invalid(e.to_string()))?;
    let mut entries = Vec::new();
    for (i, a) in spec.access.iter().enumerate() {
        entries
            .push(AccessEntry::parse(a).map_err(|e| invalid(format!("access[{i}]: {a:?}: {e}")))?);
    }
    if let Some(q) = &spec.quota
        && q.len() > 64
    {
        return Err(invalid("quota: must have at most 64 entries".into()));
    }

    let tenant = &spec.tenant;
    let ns = project_namespace(tenant, &name);
    let owner = project_owner_annotation(tenant, &name);
    let labels: BTreeMap<String, String> = BTreeMap::from([
        (LABEL_TENANT.to_owned(), tenant.clone()),
        (LABEL_PROJECT.to_owned(), name.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ]);
    let meta = |n: &str, namespace: Option<&str>| ObjectMeta {
        name: Some(n.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels.clone()),
        annotations: Some(BTreeMap::from([(
            ANNOTATION_OWNER.to_owned(),
            owner.clone(),
        )])),
        ..ObjectMeta::default()
    };
    let mut role_bindings: Vec<RoleBinding> =
        [AccessRole::Owner, AccessRole::Developer, AccessRole::Viewer]
            .into_iter()
            .map(|role| {
                let mut subjects = vec![RbacSubject {
                    api_group: Some(RBAC_GROUP.into()),
                    kind: "Group".into(),
                    name: project_group(tenant, &name, role.as_str()),
                    namespace: None,
                }];
                for e in entries.iter().filter(|e| e.role == role) {
                    // rbac_subject builds a valid rbac/v1 Subject.
                    if let Ok(s) = serde_json::from_value::<RbacSubject>(rbac_subject(&e.subject))
                        && !subjects.contains(&s)
                    {
                        subjects.push(s);
                    }
                }
                RoleBinding {
                    metadata: meta(&format!("kubenova-{}", role.as_str()), Some(&ns)),
                    role_ref: RoleRef {
                        api_group: Some(RBAC_GROUP.into()),
                        kind: "ClusterRole".into(),
                        name: cluster_role(role).into(),
                    },
                    subjects: Some(subjects),
                }
            })
            .collect();
    // The app identity: apps are applied as this ServiceAccount, which can do no more
    // than `edit` plus the deployer role, in this namespace only.
    let app_subject = RbacSubject {
        api_group: None,
        kind: "ServiceAccount".into(),
        name: APP_SERVICE_ACCOUNT.into(),
        namespace: Some(ns.clone()),
    };
    for (binding, role) in [
        (APP_SERVICE_ACCOUNT, "edit"),
        (APP_DEPLOYER_ROLE, APP_DEPLOYER_ROLE),
    ] {
        role_bindings.push(RoleBinding {
            metadata: meta(binding, Some(&ns)),
            role_ref: RoleRef {
                api_group: Some(RBAC_GROUP.into()),
                kind: "ClusterRole".into(),
                name: role.into(),
            },
            subjects: Some(vec![app_subject.clone()]),
        });
    }
    let service_account = ServiceAccount {
        metadata: meta(APP_SERVICE_ACCOUNT, Some(&ns)),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let resource_quota = spec
        .quota
        .as_ref()
        .filter(|q| !q.is_empty())
        .map(|q| ResourceQuota {
            metadata: meta(PROJECT_QUOTA_NAME, Some(&ns)),
            spec: Some(ResourceQuotaSpec {
                hard: Some(
                    q.iter()
                        .map(|(k, v)| (k.clone(), K8sQuantity(v.as_str().to_owned())))
                        .collect(),
                ),
                ..ResourceQuotaSpec::default()
            }),
            ..ResourceQuota::default()
        });
    // User labels are never reserved (validated above), and ours are written last. The
    // Pod Security level is set here too, not left to Capsule's additionalMetadata.
    let mut ns_labels = spec.labels.clone();
    ns_labels.extend(labels.clone());
    ns_labels.insert(LABEL_CAPSULE_TENANT.to_owned(), tenant.clone());
    ns_labels.insert(LABEL_NAMESPACE_ROLE.to_owned(), "project".to_owned());
    if let Some(psa) = pod_security {
        ns_labels.extend(psa.labels());
    }
    let mut ns_meta = meta(&ns, None);
    ns_meta.labels = Some(ns_labels);
    Ok(ProjectObjects {
        namespace: Namespace {
            metadata: ns_meta,
            ..Namespace::default()
        },
        role_bindings,
        resource_quota,
        service_account,
    })
}
