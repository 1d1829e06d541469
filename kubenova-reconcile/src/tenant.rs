//! NovaTenant → Capsule `Tenant` + owner/apps namespaces.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubenova_api::catalog::{Catalog, Plan, PodSecurityLevel, PolicyRule, PolicySet};
use kubenova_api::crd::{ClassSelection, ContainerLimits, NovaTenant, NovaTenantSpec};
use kubenova_api::model::{Subject, SubjectKind, TenantSpec, tenant_namespaces};
use kubenova_api::quantity::Quantity;
use kubenova_api::validate::Validate;
use serde_json::{Map, Value, json};

use crate::error::TranslateError;
use crate::meta::*;

const KIND: &str = "NovaTenant";

/// Private address ranges excluded from "internet" egress (pods and services of other
/// tenants live there).
const PRIVATE_RANGES: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// What a [`NovaTenant`] translates into.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantObjects {
    /// The owner and apps namespaces (create them after the Tenant so Capsule adopts them).
    pub namespaces: Vec<Namespace>,
    /// The Capsule `Tenant` (`capsule.clastix.io/v1beta2`).
    pub tenant: Value,
}

impl TenantObjects {
    /// Every object as JSON, in apply order (Tenant first, then namespaces).
    pub fn to_values(&self) -> Vec<Value> {
        let mut out = vec![self.tenant.clone()];
        out.extend(
            self.namespaces
                .iter()
                .filter_map(|n| serde_json::to_value(n).ok()),
        );
        out
    }
}

fn invalid(name: &str, message: impl Into<String>) -> TranslateError {
    TranslateError::InvalidSpec {
        kind: KIND,
        name: name.to_owned(),
        message: message.into(),
    }
}

fn quantities(map: &BTreeMap<String, Quantity>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.as_str().to_owned())))
            .collect(),
    )
}

/// An rbac/v1 subject for a parsed KubeNova subject.
pub(crate) fn rbac_subject(s: &Subject) -> Value {
    match s.kind {
        SubjectKind::User => json!({"kind": "User", "name": s.name, "apiGroup": RBAC_GROUP}),
        SubjectKind::Group => json!({"kind": "Group", "name": s.name, "apiGroup": RBAC_GROUP}),
        SubjectKind::ServiceAccount => {
            // `system:serviceaccount:<ns>:<name>`, checked by Subject::parse.
            let mut parts = s.name.rsplitn(2, ':');
            let name = parts.next().unwrap_or_default();
            let ns = parts
                .next()
                .and_then(|p| p.strip_prefix("system:serviceaccount:"))
                .unwrap_or_default();
            json!({"kind": "ServiceAccount", "name": name, "namespace": ns})
        }
    }
}

fn kind_str(k: SubjectKind) -> &'static str {
    match k {
        SubjectKind::User => "User",
        SubjectKind::Group => "Group",
        SubjectKind::ServiceAccount => "ServiceAccount",
    }
}

fn parse_subjects(
    name: &str,
    field: &str,
    items: &[String],
) -> Result<Vec<Subject>, TranslateError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Subject::parse(s).map_err(|e| invalid(name, format!("{field}[{i}]: {s:?}: {e}")))
        })
        .collect()
}

fn class_selection(c: &ClassSelection) -> Value {
    let mut m = Map::new();
    if !c.allowed.is_empty() {
        m.insert("allowed".into(), json!(c.allowed));
    }
    if let Some(d) = &c.default {
        m.insert("default".into(), json!(d));
    }
    Value::Object(m)
}

/// LimitRange `limits[0]` for containers, keeping `defaultRequest <= default <= max`
/// (a request above the default limit is lowered to it; a max below it is raised).
fn container_limit(l: &ContainerLimits) -> Option<Value> {
    if l.default.is_empty() && l.default_request.is_empty() && l.max.is_empty() {
        return None;
    }
    let mut request = l.default_request.clone();
    let mut max = l.max.clone();
    for (k, d) in &l.default {
        if let Some(r) = request.get_mut(k)
            && *r > *d
        {
            *r = d.clone();
        }
        if let Some(m) = max.get_mut(k)
            && *m < *d
        {
            *m = d.clone();
        }
    }
    let mut m = Map::new();
    m.insert("type".into(), json!("Container"));
    if !l.default.is_empty() {
        m.insert("default".into(), quantities(&l.default));
    }
    if !request.is_empty() {
        m.insert("defaultRequest".into(), quantities(&request));
    }
    if !max.is_empty() {
        m.insert("max".into(), quantities(&max));
    }
    Some(Value::Object(m))
}

fn network_policy(
    tenant: &str,
    allow_same_tenant: bool,
    allow_dns: bool,
    allow_from: &[BTreeMap<String, String>],
    deny_internet: bool,
) -> Value {
    let same = json!({"namespaceSelector": {"matchLabels": {LABEL_CAPSULE_TENANT: tenant}}});
    let mut from = Vec::new();
    if allow_same_tenant {
        from.push(same.clone());
    }
    for labels in allow_from {
        from.push(json!({"namespaceSelector": {"matchLabels": labels}}));
    }
    let mut egress = Vec::new();
    if allow_same_tenant {
        egress.push(json!({"to": [same]}));
    }
    if allow_dns {
        egress.push(json!({
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
        }));
    }
    if !deny_internet {
        egress.push(json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_RANGES}}]}));
    }
    let mut np = Map::new();
    np.insert("podSelector".into(), json!({}));
    np.insert("policyTypes".into(), json!(["Ingress", "Egress"]));
    // No rule of a type listed in policyTypes = deny everything of that type.
    if !from.is_empty() {
        np.insert("ingress".into(), json!([{"from": from}]));
    }
    if !egress.is_empty() {
        np.insert("egress".into(), Value::Array(egress));
    }
    Value::Object(np)
}

/// The Pod Security admission level enforced in every namespace of a tenant: its owner and
/// apps namespaces and its project namespaces (labels
/// [`LABEL_PSA_ENFORCE`] / [`LABEL_PSA_ENFORCE_VERSION`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSecurity {
    /// The enforced level.
    pub level: PodSecurityLevel,
    /// The version of the level (`latest` or `v1.N`).
    pub version: String,
}

impl PodSecurity {
    /// The two namespace labels that enforce it.
    ///
    /// ```
    /// use kubenova_api::catalog::PodSecurityLevel;
    /// use kubenova_reconcile::PodSecurity;
    /// let psa = PodSecurity { level: PodSecurityLevel::Restricted, version: "latest".into() };
    /// assert_eq!(psa.labels()[0], ("pod-security.kubernetes.io/enforce".to_owned(), "restricted".to_owned()));
    /// ```
    pub fn labels(&self) -> [(String, String); 2] {
        [
            (LABEL_PSA_ENFORCE.to_owned(), self.level.as_str().to_owned()),
            (LABEL_PSA_ENFORCE_VERSION.to_owned(), self.version.clone()),
        ]
    }
}

/// The tenant's plan in `catalog`, or [`TranslateError::UnknownPlan`].
fn plan_of<'c>(spec: &NovaTenantSpec, catalog: &'c Catalog) -> Result<&'c Plan, TranslateError> {
    catalog
        .plan(&spec.plan)
        .ok_or_else(|| TranslateError::UnknownPlan {
            plan: spec.plan.clone(),
            known: catalog
                .plans()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The effective policysets (the spec's, else the plan's), looked up in `catalog`.
fn policysets_of<'c>(
    names: &[String],
    catalog: &'c Catalog,
) -> Result<Vec<&'c PolicySet>, TranslateError> {
    names
        .iter()
        .map(|p| {
            catalog
                .policyset(p)
                .ok_or_else(|| TranslateError::UnknownPolicyset(p.clone()))
        })
        .collect()
}

/// The strictest `podSecurity` rule of `policysets` (the first of equals wins).
fn strictest_pod_security(policysets: &[&PolicySet]) -> Option<PodSecurity> {
    let mut psa: Option<PodSecurity> = None;
    for rule in policysets.iter().flat_map(|p| p.rules.iter()) {
        if let PolicyRule::PodSecurity { level, version } = rule
            && psa.as_ref().is_none_or(|p| *level > p.level)
        {
            psa = Some(PodSecurity {
                level: *level,
                version: version.clone(),
            });
        }
    }
    psa
}

/// The Pod Security level of a tenant: the strictest `podSecurity` rule of its effective
/// policysets (`spec.policysets`, else its plan's), or `None` when they have none. The
/// tenant translation labels the tenant's namespaces with it, and the project controller
/// labels every project namespace of the tenant with it, so both derive it here.
///
/// ```
/// use kubenova_api::catalog::Catalog;
/// use kubenova_api::crd::NovaTenant;
/// let nt: NovaTenant = serde_json::from_value(serde_json::json!({
///     "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
///     "metadata": {"name": "acme"}, "spec": {"plan": "platinum"}})).unwrap();
/// let psa = kubenova_reconcile::tenant_pod_security(&nt, Catalog::builtin_ref()).unwrap().unwrap();
/// assert_eq!(psa.level.as_str(), "restricted");
/// ```
pub fn tenant_pod_security(
    nt: &NovaTenant,
    catalog: &Catalog,
) -> Result<Option<PodSecurity>, TranslateError> {
    let plan = plan_of(&nt.spec, catalog)?;
    let names = nt.spec.policysets.as_ref().unwrap_or(&plan.policysets);
    Ok(strictest_pod_security(&policysets_of(names, catalog)?))
}

/// Translates a NovaTenant into a Capsule Tenant and its owner/apps namespaces.
///
/// Effective values come from the spec; absent ones from the plan in `catalog`
/// (`quotas` ← `tenantQuotas`, `limits` ← `limitRange`, `policysets`, `namespaceQuota`).
/// Policysets give NetworkPolicies (`networkIsolation`), Pod Security labels
/// (`podSecurity`, the strictest wins) and Capsule's container registry check
/// (`imageRegistries`: the registry hosts every rule allows); KubeVela rules are added to
/// the tenant's apps by [`crate::translate_app`].
pub fn translate_tenant(
    nt: &NovaTenant,
    catalog: &Catalog,
) -> Result<TenantObjects, TranslateError> {
    let name = nt
        .metadata
        .name
        .clone()
        .ok_or(TranslateError::MissingName { kind: KIND })?;
    let spec = &nt.spec;
    let plan = plan_of(spec, catalog)?;
    let quotas = spec
        .quotas
        .clone()
        .unwrap_or_else(|| plan.tenant_quotas.clone());
    let limits = spec
        .limits
        .clone()
        .unwrap_or_else(|| ContainerLimits::from(&plan.limit_range));
    let policyset_names = spec
        .policysets
        .clone()
        .unwrap_or_else(|| plan.policysets.clone());

    // Everything the schema cannot say, checked by the model's own validator.
    let model = TenantSpec {
        name: name.clone(),
        owners: spec.owners.clone(),
        plan: Some(spec.plan.clone()),
        labels: spec.labels.clone(),
        quotas: quotas.clone(),
        limits: limits.default.clone(),
        network_policies: Some(policyset_names.clone()),
    };
    model
        .validate()
        .map_err(|e| invalid(&name, e.to_string()))?;
    let owners = parse_subjects(&name, "owners", &spec.owners)?;
    let viewers = parse_subjects(&name, "viewers", &spec.viewers)?;
    let policysets = policysets_of(&policyset_names, catalog)?;
    let psa = strictest_pod_security(&policysets);

    let mut net_items: Vec<Value> = Vec::new();
    let mut registries: Option<Vec<String>> = None;
    for rule in policysets.iter().flat_map(|p| p.rules.iter()) {
        match rule {
            PolicyRule::NetworkIsolation {
                allow_same_tenant,
                allow_dns,
                allow_from_namespace_labels,
                deny_egress_to_internet,
            } => {
                let np = network_policy(
                    &name,
                    *allow_same_tenant,
                    *allow_dns,
                    allow_from_namespace_labels,
                    *deny_egress_to_internet,
                );
                if !net_items.contains(&np) {
                    net_items.push(np);
                }
            }
            PolicyRule::ImageRegistries { allowed } => {
                // Capsule checks the registry host of every pod's images; the repository
                // prefixes are checked on apps by the manager and the app translation.
                let hosts: Vec<String> = allowed
                    .iter()
                    .map(|e| e.split('/').next().unwrap_or(e).to_owned())
                    .collect();
                registries = Some(match registries {
                    None => hosts,
                    Some(prev) => prev.into_iter().filter(|h| hosts.contains(h)).collect(),
                });
            }
            // Pod Security: `strictest_pod_security` above; KubeVela rules are added to
            // the tenant's apps by the app translation.
            PolicyRule::PodSecurity { .. }
            | PolicyRule::VelaPolicy { .. }
            | PolicyRule::VelaTrait { .. } => {}
        }
    }
    let registries = registries.map(|mut hosts| {
        hosts.sort();
        hosts.dedup();
        hosts
    });

    // Labels every tenant namespace carries (also pushed by Capsule to namespaces
    // created later, e.g. project namespaces, through additionalMetadata).
    let mut common: BTreeMap<String, String> = spec.labels.clone();
    common.insert(LABEL_TENANT.into(), name.clone());
    common.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    if let Some(psa) = &psa {
        common.extend(psa.labels());
    }

    let mut capsule_owners: Vec<Value> = Vec::new();
    let mut push_owner = |kind: &str, n: &str| {
        let o = json!({"kind": kind, "name": n});
        if !capsule_owners.contains(&o) {
            capsule_owners.push(o);
        }
    };
    for o in &owners {
        push_owner(kind_str(o.kind), &o.name);
    }
    push_owner("Group", &tenant_group(&name, "owner"));

    let mut viewer_subjects = vec![
        json!({"kind": "Group", "name": tenant_group(&name, "viewer"), "apiGroup": RBAC_GROUP}),
    ];
    for v in &viewers {
        let s = rbac_subject(v);
        if !viewer_subjects.contains(&s) {
            viewer_subjects.push(s);
        }
    }

    let mut tspec = Map::new();
    tspec.insert("owners".into(), Value::Array(capsule_owners));
    let mut ns_opts = Map::new();
    if let Some(q) = spec
        .namespace_quota
        .or(plan.namespace_quota.map(|q| q as i32))
    {
        ns_opts.insert("quota".into(), json!(q));
    }
    let mut extra_labels = common.clone();
    extra_labels.remove(LABEL_MANAGED_BY);
    ns_opts.insert("additionalMetadata".into(), json!({"labels": extra_labels}));
    // Tenant owners may not set platform labels or annotations on their namespaces
    // themselves (e.g. lift the Pod Security level): Capsule's namespace webhook refuses
    // them, the same keys the manager and the CRDs refuse in user label maps.
    let reserved = json!({"deniedRegex": kubenova_api::validate::reserved_key_pattern()});
    ns_opts.insert("forbiddenLabels".into(), reserved.clone());
    ns_opts.insert("forbiddenAnnotations".into(), reserved);
    tspec.insert("namespaceOptions".into(), Value::Object(ns_opts));
    if !quotas.is_empty() {
        tspec.insert(
            "resourceQuotas".into(),
            json!({"scope": "Tenant", "items": [{"hard": quantities(&quotas)}]}),
        );
    }
    if let Some(limit) = container_limit(&limits) {
        tspec.insert(
            "limitRanges".into(),
            json!({"items": [{"limits": [limit]}]}),
        );
    }
    if !net_items.is_empty() {
        tspec.insert("networkPolicies".into(), json!({"items": net_items}));
    }
    tspec.insert(
        "additionalRoleBindings".into(),
        json!([
            {"clusterRoleName": "edit", "subjects": [{"kind": "Group", "name": tenant_group(&name, "developer"), "apiGroup": RBAC_GROUP}]},
            {"clusterRoleName": "view", "subjects": viewer_subjects}
        ]),
    );
    if let Some(hosts) = &registries {
        tspec.insert("containerRegistries".into(), json!({"allowed": hosts}));
    }
    if !spec.node_selector.is_empty() {
        tspec.insert("nodeSelector".into(), json!(spec.node_selector));
    }
    if let Some(sc) = &spec.storage_classes {
        tspec.insert("storageClasses".into(), class_selection(sc));
    }
    if let Some(ic) = &spec.ingress_classes {
        tspec.insert(
            "ingressOptions".into(),
            json!({"allowedClasses": class_selection(ic)}),
        );
    }

    let mut tmeta = json!({
        "name": name,
        "labels": {LABEL_TENANT: name, LABEL_MANAGED_BY: MANAGED_BY},
    });
    if let Some(r) = owner_ref(nt, true) {
        tmeta["ownerReferences"] = json!([r]);
    }
    let tenant = json!({
        "apiVersion": "capsule.clastix.io/v1beta2",
        "kind": "Tenant",
        "metadata": tmeta,
        "spec": tspec,
    });

    // Capsule makes itself the controller owner of tenant namespaces, so ours is a plain
    // (non-controller) reference: deleting the NovaTenant still garbage-collects them.
    let ns_ref = owner_ref(nt, false);
    let (owner_ns, apps_ns) = tenant_namespaces(&name);
    let namespaces = [(owner_ns, "owner"), (apps_ns, "apps")]
        .into_iter()
        .map(|(ns, role)| {
            let mut labels = common.clone();
            labels.insert(LABEL_CAPSULE_TENANT.into(), name.clone());
            labels.insert(LABEL_NAMESPACE_ROLE.into(), role.into());
            Namespace {
                metadata: ObjectMeta {
                    name: Some(ns),
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_OWNER.to_owned(),
                        tenant_owner_annotation(&name),
                    )])),
                    owner_references: ns_ref.clone().map(|r| vec![r]),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            }
        })
        .collect();
    Ok(TenantObjects { namespaces, tenant })
}
