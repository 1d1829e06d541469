//! What a tenant's plan lets its apps do: the rules the manager checks when an app is
//! written and the operator checks (and applies) when it turns a NovaApp into a KubeVela
//! Application.
//!
//! An app is a KubeVela Application, and KubeVela applies whatever its definitions render.
//! So the tenant boundary around apps has three layers, and this module is the first two:
//!
//! 1. **Definition types** come from the plan's allow-list ([`AllowedDefinitions`]): a
//!    component, trait, policy or workflow-step type the plan does not list is refused
//!    with KN-422 naming the field.
//! 2. **No retargeting**: properties never name another namespace or cluster (keys such
//!    as `namespace`, `cluster`, `clusters`, `clusterLabelSelector`, anywhere in any
//!    properties; see [`RETARGETING_KEYS`]), whatever the definition.
//! 3. (In the cluster.) KubeVela runs with application authentication and every
//!    Application is applied as its project's own ServiceAccount, so even an allowed
//!    definition cannot write outside the project namespace.
//!
//! The plan's policysets add to this: `velaTrait` and `velaPolicy` rules are added to
//! every app ([`AppRules::plan_traits`], [`AppRules::plan_policies`]) and
//! `imageRegistries` rules restrict every image an app names.
//!
//! ```
//! use kubenova_api::apprules::AppRules;
//! use kubenova_api::catalog::Catalog;
//! use kubenova_api::model::AppSpec;
//!
//! let catalog = Catalog::builtin();
//! let gold = catalog.plan("gold").unwrap();
//! let rules = AppRules::resolve(&catalog, "gold", &gold.policysets).unwrap();
//!
//! let web: AppSpec = serde_json::from_value(serde_json::json!({
//!     "name": "web", "image": "nginx:1.27"}))?;
//! assert!(rules.check(&web).is_ok());
//!
//! let raw: AppSpec = serde_json::from_value(serde_json::json!({
//!     "name": "escape", "components": [{"name": "x", "type": "k8s-objects",
//!     "properties": {"objects": []}}]}))?;
//! let err = rules.check(&raw).unwrap_err();
//! assert_eq!(err.violations[0].field, "components[0].type");
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde_json::Value;

use crate::catalog::{AllowedDefinitions, Catalog, DefinitionKind, PolicyRule};
use crate::model::AppSpec;
use crate::validate::{ValidationError, Validator, quote_key};

/// Property keys that would send what an app renders to another namespace or cluster
/// (KubeVela's `topology`, `override`, `apply-object`, `ref-objects`, `read-object`,
/// `envbinding`, raw objects' `metadata.namespace`, pod affinity across namespaces...).
/// Refused anywhere in any properties.
pub const RETARGETING_KEYS: &[&str] = &[
    "namespace",
    "namespaces",
    "namespaceSelector",
    "cluster",
    "clusters",
    "clusterSelector",
    "clusterLabelSelector",
    "placement",
    "placements",
];

/// Prefix of the names KubeNova gives the policies and workflow steps it adds to an
/// Application; apps may not use it.
pub const RESERVED_NAME_PREFIX: &str = "kubenova-";

/// The first retargeting key in `props` (depth first, in key order), with its path below
/// `props` (`objects[0].metadata.namespace`).
///
/// ```
/// use kubenova_api::apprules::retargeting_key;
/// let props = serde_json::json!({"objects": [{"metadata": {"namespace": "kube-system"}}]});
/// assert_eq!(retargeting_key(&props).unwrap(), "objects[0].metadata.namespace");
/// assert!(retargeting_key(&serde_json::json!({"image": "nginx"})).is_none());
/// ```
pub fn retargeting_key(props: &Value) -> Option<String> {
    match props {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if RETARGETING_KEYS.contains(&k.as_str()) {
                Some(quote_key(k))
            } else {
                retargeting_key(v).map(|rest| join(&quote_key(k), &rest))
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| retargeting_key(v).map(|rest| join(&format!("[{i}]"), &rest))),
        _ => None,
    }
}

fn join(head: &str, rest: &str) -> String {
    if rest.starts_with('[') {
        format!("{head}{rest}")
    } else {
        format!("{head}.{rest}")
    }
}

/// Why properties at `field` are refused because they retarget, if they do.
pub(crate) fn retargeting_problem(field: &str, props: &Value) -> Option<(String, String)> {
    let path = retargeting_key(props)?;
    let key = path.rsplit(['.', ']']).next().unwrap_or(&path).to_owned();
    Some((
        format!("{field}.{path}"),
        format!(
            "{key:?} would send objects to another namespace or cluster; an app always deploys \
             into its project's namespace in its own cluster, so remove it"
        ),
    ))
}

/// The canonical location of a container image: registry host and repository path,
/// without tag or digest (`nginx:1.27` → `docker.io/library/nginx`), as container
/// runtimes resolve it.
///
/// ```
/// use kubenova_api::apprules::image_location;
/// assert_eq!(image_location("nginx:1.27").unwrap(), "docker.io/library/nginx");
/// assert_eq!(image_location("ghcr.io/acme/web@sha256:abc").unwrap(), "ghcr.io/acme/web");
/// assert_eq!(image_location("localhost:5000/x").unwrap(), "localhost:5000/x");
/// assert!(image_location("Not An Image").is_err());
/// ```
pub fn image_location(image: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "{image:?} is not a container image reference: {why}"
        ))
    };
    if image.is_empty() || image.len() > 512 {
        return bad("it must be 1-512 characters");
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it must not contain whitespace");
    }
    let name = image.split_once('@').map_or(image, |(n, _)| n);
    // A tag is a ':' in the last path component (a ':' in the first one is a port).
    let name = match name.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((repo, _tag)) => format!("{head}/{repo}"),
            None => name.to_owned(),
        },
        None => name.split_once(':').map_or(name, |(n, _)| n).to_owned(),
    };
    let (host, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_ascii_lowercase(), rest.to_owned())
        }
        _ if name.contains('/') => ("docker.io".to_owned(), name.clone()),
        _ => ("docker.io".to_owned(), format!("library/{name}")),
    };
    let host = if host == "index.docker.io" {
        "docker.io".to_owned()
    } else {
        host
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.as_bytes()[0].is_ascii_alphanumeric()
    };
    if path.is_empty() || !path.split('/').all(component_ok) {
        return bad("its repository path must be lower-case letters, digits, '.', '_' and '-'");
    }
    Ok(format!("{host}/{path}"))
}

/// Why `entry` is not a valid `imageRegistries` entry (a registry host with an optional
/// port and repository prefix, e.g. `docker.io`, `registry.example.com:5000`,
/// `ghcr.io/acme`), if it is not.
pub fn registry_entry_problem(entry: &str) -> Option<String> {
    if entry.contains("://") {
        return Some(format!("{entry:?}: give the registry without a scheme"));
    }
    let tagged = entry
        .split_once('/')
        .is_some_and(|(_, path)| path.rsplit('/').next().is_some_and(|l| l.contains(':')));
    if entry.contains('@') || tagged {
        return Some(format!(
            "{entry:?}: give a registry or repository prefix without tag or digest"
        ));
    }
    let (host, path) = entry.split_once('/').unwrap_or((entry, ""));
    let host_ok = !host.is_empty()
        && host == host.to_ascii_lowercase()
        && (host.contains('.') || host.contains(':') || host == "localhost")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if !host_ok {
        return Some(format!(
            "{entry:?}: must start with a registry host such as docker.io, ghcr.io or registry.example.com:5000"
        ));
    }
    if !path.is_empty() && image_location(&format!("{host}/{path}")).is_err() {
        return Some(format!(
            "{entry:?}: the repository prefix must be lower-case letters, digits, '.', '_', '-' and '/'"
        ));
    }
    None
}

/// Whether an image location ([`image_location`]) is under an allowed registry or prefix.
pub fn image_allowed(location: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|entry| {
        let entry = entry.strip_prefix("index.docker.io").map_or_else(
            || entry.trim_end_matches('/').to_owned(),
            |rest| format!("docker.io{}", rest.trim_end_matches('/')),
        );
        location == entry
            || location
                .strip_prefix(entry.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// A trait a policyset adds to the components of every app.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanTrait {
    /// The policyset it comes from.
    pub policyset: String,
    /// TraitDefinition name.
    pub type_: String,
    /// Properties.
    pub properties: Value,
    /// Component types it applies to; empty: every component.
    pub component_types: Vec<String>,
}

/// A policy a policyset adds to every app.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanPolicy {
    /// The policyset it comes from.
    pub policyset: String,
    /// Name in the Application: `kubenova-<type>`.
    pub name: String,
    /// PolicyDefinition name.
    pub type_: String,
    /// Properties.
    pub properties: Value,
}

/// The app rules of one tenant: its plan's allowed definitions and what its policysets
/// add or restrict. Built with [`AppRules::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct AppRules {
    plan: String,
    definitions: AllowedDefinitions,
    traits: Vec<PlanTrait>,
    policies: Vec<PlanPolicy>,
    registries: Vec<(String, Vec<String>)>,
}

/// The name of the policy a `velaPolicy` rule adds: `kubenova-<policyType>` (at most 63
/// characters).
pub fn plan_policy_name(policy_type: &str) -> String {
    let mut name = format!("{RESERVED_NAME_PREFIX}{policy_type}");
    name.truncate(63);
    name.trim_end_matches(['-', '.']).replace('.', "-")
}

impl AppRules {
    /// The rules of a tenant on `plan` with the effective `policysets`. Fails, naming the
    /// policyset and rule, when a policyset is unknown or adds a definition type that the
    /// plan does not allow (a catalog checks this for its plans' own policysets; a tenant
    /// can name others).
    pub fn resolve(
        catalog: &Catalog,
        plan: &str,
        policysets: &[String],
    ) -> Result<AppRules, String> {
        let p = catalog.plan(plan).ok_or_else(|| {
            format!(
                "unknown plan {plan:?} (known: {})",
                catalog
                    .plans()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let mut rules = AppRules {
            plan: plan.to_owned(),
            definitions: p.definitions.clone(),
            traits: Vec::new(),
            policies: Vec::new(),
            registries: Vec::new(),
        };
        for name in policysets {
            let ps = catalog
                .policyset(name)
                .ok_or_else(|| format!("unknown policyset {name:?}"))?;
            if let Some(problem) = rule_problems(&p.definitions, plan, &ps.name, &ps.rules)
                .into_iter()
                .next()
            {
                return Err(problem);
            }
            for rule in &ps.rules {
                match rule {
                    PolicyRule::VelaTrait {
                        trait_type,
                        spec,
                        component_types,
                    } => rules.traits.push(PlanTrait {
                        policyset: ps.name.clone(),
                        type_: trait_type.clone(),
                        properties: spec.clone(),
                        component_types: component_types.clone(),
                    }),
                    PolicyRule::VelaPolicy { policy_type, spec } => {
                        let name = plan_policy_name(policy_type);
                        if !rules.policies.iter().any(|x| x.name == name) {
                            rules.policies.push(PlanPolicy {
                                policyset: ps.name.clone(),
                                name,
                                type_: policy_type.clone(),
                                properties: spec.clone(),
                            });
                        }
                    }
                    PolicyRule::ImageRegistries { allowed } => {
                        rules.registries.push((ps.name.clone(), allowed.clone()));
                    }
                    PolicyRule::NetworkIsolation { .. } | PolicyRule::PodSecurity { .. } => {}
                }
            }
        }
        Ok(rules)
    }

    /// The plan these rules come from.
    pub fn plan(&self) -> &str {
        &self.plan
    }

    /// The plan's allowed definitions.
    pub fn definitions(&self) -> &AllowedDefinitions {
        &self.definitions
    }

    /// The traits policysets add to a component of type `component_type` (in policyset
    /// order; the first of a type wins).
    pub fn plan_traits<'a>(
        &'a self,
        component_type: &'a str,
    ) -> impl Iterator<Item = &'a PlanTrait> + 'a {
        self.traits.iter().enumerate().filter_map(move |(i, t)| {
            let applies = t.component_types.is_empty()
                || t.component_types.iter().any(|c| c == component_type);
            let first = !self.traits[..i].iter().any(|o| {
                o.type_ == t.type_
                    && (o.component_types.is_empty()
                        || o.component_types.iter().any(|c| c == component_type))
            });
            (applies && first).then_some(t)
        })
    }

    /// The policies policysets add to every app.
    pub fn plan_policies(&self) -> &[PlanPolicy] {
        &self.policies
    }

    /// The image registry rules: `(policyset, allowed)`.
    pub fn image_registries(&self) -> &[(String, Vec<String>)] {
        &self.registries
    }

    /// Checks an app against these rules: every definition type allowed by the plan,
    /// every image from the allowed registries, no reserved names. Every violation names
    /// its field (`components[0].type`, `image`, `components[1].traits[0].properties.image`).
    /// Properties are also checked by [`AppSpec`]'s own validation (no retargeting).
    pub fn check(&self, spec: &AppSpec) -> Result<(), ValidationError> {
        let mut v = Validator::new();
        if spec.components.is_empty() {
            // The shorthand names its own fields: `component`, `image`, `spec`.
            for c in spec.effective_components() {
                self.allowed(&mut v, "component", DefinitionKind::Component, &c.type_);
                if let Some(p) = &c.properties {
                    self.images(&mut v, "spec", p, true);
                }
            }
        }
        for (i, c) in spec.components.iter().enumerate() {
            let f = format!("components[{i}]");
            self.item(
                &mut v,
                &f,
                DefinitionKind::Component,
                &c.type_,
                c.properties.as_ref(),
            );
            for (j, t) in c.traits.iter().enumerate() {
                let f = format!("{f}.traits[{j}]");
                self.item(
                    &mut v,
                    &f,
                    DefinitionKind::Trait,
                    &t.type_,
                    t.properties.as_ref(),
                );
            }
        }
        for (j, t) in spec.traits.iter().enumerate() {
            let f = format!("traits[{j}]");
            self.item(
                &mut v,
                &f,
                DefinitionKind::Trait,
                &t.type_,
                t.properties.as_ref(),
            );
        }
        for (i, p) in spec.policies.iter().enumerate() {
            let f = format!("policies[{i}]");
            self.item(
                &mut v,
                &f,
                DefinitionKind::Policy,
                &p.type_,
                p.properties.as_ref(),
            );
            if let Some(props) = &p.properties {
                self.nested_types(&mut v, &format!("{f}.properties"), props);
            }
        }
        for (i, s) in spec
            .workflow
            .iter()
            .flat_map(|w| w.steps.iter())
            .enumerate()
        {
            let f = format!("workflow.steps[{i}]");
            self.item(
                &mut v,
                &f,
                DefinitionKind::WorkflowStep,
                &s.type_,
                s.properties.as_ref(),
            );
        }
        v.finish()
    }

    /// One component, trait, policy or step at `field`: its type, and the images in its
    /// properties.
    fn item(
        &self,
        v: &mut Validator,
        field: &str,
        kind: DefinitionKind,
        type_: &str,
        props: Option<&Value>,
    ) {
        self.allowed(v, &format!("{field}.type"), kind, type_);
        if let Some(p) = props {
            self.images(v, &format!("{field}.properties"), p, false);
        }
    }

    fn allowed(&self, v: &mut Validator, field: &str, kind: DefinitionKind, name: &str) {
        if !self.definitions.allows(kind, name) {
            v.push(
                field,
                format!(
                    "{name:?} is not an allowed {} on plan {:?} (allowed: {}); ask a platform \
                     admin to allow it in the plan's definitions.{}",
                    kind.noun(),
                    self.plan,
                    self.definitions.of(kind).join(", "),
                    kind.list_name()
                ),
            );
        }
    }

    /// Component and trait types named inside policy properties (KubeVela's `override`
    /// policy can change a component's type and traits).
    fn nested_types(&self, v: &mut Validator, field: &str, props: &Value) {
        let Some(components) = props.get("components").and_then(Value::as_array) else {
            return;
        };
        for (k, c) in components.iter().enumerate() {
            let f = format!("{field}.components[{k}]");
            if let Some(t) = c.get("type").and_then(Value::as_str) {
                self.allowed(v, &format!("{f}.type"), DefinitionKind::Component, t);
            }
            for (j, t) in c
                .get("traits")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(t) = t.get("type").and_then(Value::as_str) {
                    self.allowed(
                        v,
                        &format!("{f}.traits[{j}].type"),
                        DefinitionKind::Trait,
                        t,
                    );
                }
            }
        }
    }

    /// Every value under an `image` key in `props` must come from the allowed registries.
    fn images(&self, v: &mut Validator, field: &str, props: &Value, shorthand: bool) {
        if self.registries.is_empty() {
            return;
        }
        let mut found = Vec::new();
        collect_images(props, String::new(), &mut found);
        for (path, value) in found {
            let field = if shorthand && path == "image" {
                "image".to_owned()
            } else {
                format!("{field}.{path}")
            };
            let Some(image) = value.as_str() else {
                v.push(field, "must be a container image reference (a string)");
                continue;
            };
            let location = match image_location(image) {
                Ok(l) => l,
                Err(e) => {
                    v.push(field, e);
                    continue;
                }
            };
            for (policyset, allowed) in &self.registries {
                if !image_allowed(&location, allowed) {
                    v.push(
                        field.clone(),
                        format!(
                            "{image:?} ({location}) is not from a registry that policyset \
                             {policyset:?} of plan {:?} allows ({})",
                            self.plan,
                            allowed.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

fn collect_images<'a>(value: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    quote_key(k)
                } else {
                    format!("{path}.{}", quote_key(k))
                };
                if k == "image" {
                    out.push((p, v));
                } else {
                    collect_images(v, p, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_images(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Problems with a policyset's KubeVela rules for a plan with `definitions`: a type the
/// plan does not allow, a trait for a component type the plan does not allow.
pub(crate) fn rule_problems(
    definitions: &AllowedDefinitions,
    plan: &str,
    policyset: &str,
    rules: &[PolicyRule],
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!(
            "plan {plan:?}: policyset {policyset:?} rules[{i}] ({})",
            rule.kind()
        );
        match rule {
            PolicyRule::VelaPolicy { policy_type, .. }
                if !definitions.allows(DefinitionKind::Policy, policy_type) =>
            {
                out.push(format!(
                    "{at} adds policy type {policy_type:?}, which the plan does not allow \
                     (definitions.policies: {}); allow it in the plan or remove the rule",
                    definitions.policies.join(", ")
                ));
            }
            PolicyRule::VelaTrait {
                trait_type,
                component_types,
                ..
            } => {
                if !definitions.allows(DefinitionKind::Trait, trait_type) {
                    out.push(format!(
                        "{at} adds trait type {trait_type:?}, which the plan does not allow \
                         (definitions.traits: {}); allow it in the plan or remove the rule",
                        definitions.traits.join(", ")
                    ));
                }
                for c in component_types {
                    if !definitions.allows(DefinitionKind::Component, c) {
                        out.push(format!(
                            "{at}: componentTypes names {c:?}, which the plan does not allow \
                             (definitions.components: {})",
                            definitions.components.join(", ")
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::validate::Validate;
    use serde_json::json;

    fn app(v: Value) -> AppSpec {
        serde_json::from_value(v).expect("app spec")
    }

    fn gold() -> AppRules {
        let c = Catalog::builtin_ref();
        AppRules::resolve(c, "gold", &c.plan("gold").unwrap().policysets).unwrap()
    }

    fn fields(err: ValidationError) -> Vec<String> {
        err.violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn every_kind_of_definition_is_checked_against_the_plan() {
        let spec = app(json!({"name": "a",
            "components": [{"name": "c", "type": "k8s-objects", "properties": {"objects": []},
                            "traits": [{"type": "service-account", "properties": {"name": "x"}}]}],
            "traits": [{"type": "json-patch", "properties": {}}],
            "policies": [{"name": "t", "type": "take-over"},
                         {"name": "o", "type": "override", "properties": {"components": [{"type": "raw", "traits": [{"type": "json-merge-patch"}]}]}}],
            "workflow": {"steps": [{"name": "s", "type": "apply-object", "properties": {"value": {}}}]}}));
        spec.validate().expect("well-formed");
        let err = gold().check(&spec).unwrap_err();
        assert_eq!(
            fields(err.clone()),
            [
                "components[0].type",
                "components[0].traits[0].type",
                "traits[0].type",
                "policies[0].type",
                "policies[1].type",
                "policies[1].properties.components[0].type",
                "policies[1].properties.components[0].traits[0].type",
                "workflow.steps[0].type"
            ]
        );
        assert!(
            err.violations[0].reason.starts_with(
                "\"k8s-objects\" is not an allowed component type on plan \"gold\" (allowed: cron-task, task, webservice, worker)"
            ),
            "{}",
            err.violations[0].reason
        );
        // The shorthand names its own field.
        let err = gold()
            .check(&app(
                json!({"name": "a", "component": "raw", "image": "nginx"}),
            ))
            .unwrap_err();
        assert_eq!(fields(err), ["component"]);
    }

    #[test]
    fn allowed_apps_pass() {
        let spec = app(json!({"name": "a",
            "components": [{"name": "web", "type": "webservice", "properties": {"image": "ghcr.io/acme/web:1"},
                            "traits": [{"type": "gateway", "properties": {"domain": "a.example.com", "http": {"/": 80}}},
                                       {"type": "sidecar", "properties": {"name": "log", "image": "quay.io/fluent/fluent-bit:3"}}]},
                           {"name": "job", "type": "cron-task", "properties": {"image": "busybox", "schedule": "* * * * *"}}],
            "policies": [{"name": "gc", "type": "garbage-collect", "properties": {"keepLegacyResource": false}}],
            "workflow": {"steps": [{"name": "d", "type": "deploy", "properties": {"policies": []}}]}}));
        spec.validate().unwrap();
        gold().check(&spec).unwrap();
    }

    #[test]
    fn images_come_from_the_allowed_registries_everywhere_they_are_named() {
        let spec = app(json!({"name": "a",
            "components": [{"name": "web", "type": "webservice", "properties": {"image": "evil.example.com/miner:1"},
                            "traits": [{"type": "init-container", "properties": {"name": "i", "image": "evil.example.com/i"}}]}],
            "traits": [{"type": "container-image", "properties": {"containers": [{"containerName": "web", "image": "docker.io/library/nginx"}, {"containerName": "x", "image": 7}]}}]}));
        let err = gold().check(&spec).unwrap_err();
        assert_eq!(
            fields(err.clone()),
            [
                "components[0].properties.image",
                "components[0].traits[0].properties.image",
                "traits[0].properties.containers[1].image"
            ]
        );
        assert!(
            err.violations[0]
                .reason
                .contains("policyset \"baseline-security\""),
            "{err}"
        );
        let err = gold()
            .check(&app(json!({"name": "a", "image": "registry.evil.io/x"})))
            .unwrap_err();
        assert_eq!(fields(err), ["image"]);
        // Baseline has no registry rule.
        let c = Catalog::builtin_ref();
        let baseline =
            AppRules::resolve(c, "baseline", &c.plan("baseline").unwrap().policysets).unwrap();
        baseline
            .check(&app(json!({"name": "a", "image": "registry.evil.io/x"})))
            .unwrap();
    }

    #[test]
    fn image_locations_follow_the_container_runtime_rules() {
        for (image, want) in [
            ("nginx", "docker.io/library/nginx"),
            ("nginx:1.27", "docker.io/library/nginx"),
            ("library/nginx@sha256:0123", "docker.io/library/nginx"),
            ("bitnami/redis:7", "docker.io/bitnami/redis"),
            ("index.docker.io/bitnami/redis", "docker.io/bitnami/redis"),
            (
                "Registry.Example.com:5000/team/app:v1",
                "registry.example.com:5000/team/app",
            ),
            ("localhost/app", "localhost/app"),
        ] {
            assert_eq!(image_location(image).unwrap(), want, "{image}");
        }
        for bad in ["", "a b", "UPPER/case", "ghcr.io/", "ghcr.io//x"] {
            assert!(image_location(bad).is_err(), "{bad:?}");
        }
        let allowed = vec!["ghcr.io/acme".to_owned(), "docker.io".to_owned()];
        assert!(image_allowed("ghcr.io/acme/web", &allowed));
        assert!(image_allowed("ghcr.io/acme", &allowed));
        assert!(!image_allowed("ghcr.io/acme-evil/web", &allowed));
        assert!(!image_allowed("ghcr.io/other/web", &allowed));
        assert!(image_allowed("docker.io/library/nginx", &allowed));
        assert!(!image_allowed("docker.io.evil.com/x", &allowed));
    }

    #[test]
    fn retargeting_properties_are_refused_by_the_model_itself() {
        let cases = [
            (
                json!({"name": "a", "components": [{"name": "c", "type": "webservice", "properties": {"image": "nginx", "objects": [{"metadata": {"namespace": "kube-system"}}]}}]}),
                "components[0].properties.objects[0].metadata.namespace",
            ),
            (
                json!({"name": "a", "components": [{"name": "c", "type": "webservice"}], "policies": [{"name": "t", "type": "topology", "properties": {"clusters": ["prod"]}}]}),
                "policies[0].properties.clusters",
            ),
            (
                json!({"name": "a", "components": [{"name": "c", "type": "webservice"}], "policies": [{"name": "t", "type": "topology", "properties": {"clusterLabelSelector": {}}}]}),
                "policies[0].properties.clusterLabelSelector",
            ),
            (
                json!({"name": "a", "components": [{"name": "c", "type": "webservice", "traits": [{"type": "affinity", "properties": {"podAffinity": {"required": [{"namespaceSelector": {}}]}}}]}]}),
                "components[0].traits[0].properties.podAffinity.required[0].namespaceSelector",
            ),
            (
                json!({"name": "a", "components": [{"name": "c", "type": "webservice"}], "workflow": {"steps": [{"name": "s", "type": "apply-component", "properties": {"component": "c", "cluster": "prod"}}]}}),
                "workflow.steps[0].properties.cluster",
            ),
            (
                json!({"name": "a", "image": "nginx", "spec": {"namespace": "other"}}),
                "spec.namespace",
            ),
        ];
        for (spec, field) in cases {
            let err = app(spec).validate().unwrap_err();
            assert_eq!(err.violations[0].field, field, "{err}");
            assert!(
                err.violations[0]
                    .reason
                    .contains("another namespace or cluster"),
                "{err}"
            );
        }
    }

    #[test]
    fn kubenova_names_are_reserved() {
        let err = app(json!({"name": "a", "image": "nginx",
            "policies": [{"type": "garbage-collect", "name": "kubenova-garbage-collect"}],
            "workflow": {"steps": [{"name": "kubenova-x", "type": "deploy"}]}}))
        .validate()
        .unwrap_err();
        assert_eq!(fields(err), ["policies[0].name", "workflow.steps[0].name"]);
    }

    #[test]
    fn policyset_rules_become_traits_and_policies_of_every_app() {
        let rules = gold();
        let web: Vec<_> = rules
            .plan_traits("webservice")
            .map(|t| t.type_.as_str())
            .collect();
        assert_eq!(
            web,
            [
                "securitycontext",
                "scaler",
                "annotations",
                "k8s-update-strategy"
            ]
        );
        let cron: Vec<_> = rules
            .plan_traits("cron-task")
            .map(|t| t.type_.as_str())
            .collect();
        assert!(cron.is_empty(), "{cron:?}");
        assert!(rules.plan_policies().is_empty());
        let custom = Catalog::builtin()
            .merged_with(
                crate::catalog::CatalogFile::from_str_with_format(
                    r#"{"policysets": [{"name": "gc", "rules": [{"kind": "velaPolicy", "policyType": "garbage-collect", "spec": {"keepLegacyResource": true}}]}]}"#,
                    crate::catalog::Format::Json,
                )
                .unwrap(),
            )
            .unwrap();
        let rules = AppRules::resolve(&custom, "baseline", &["gc".to_owned()]).unwrap();
        assert_eq!(rules.plan_policies()[0].name, "kubenova-garbage-collect");
        assert_eq!(
            rules.plan_policies()[0].properties,
            json!({"keepLegacyResource": true})
        );
    }

    #[test]
    fn a_tenant_cannot_name_a_policyset_its_plan_does_not_allow() {
        let custom = Catalog::builtin()
            .merged_with(
                crate::catalog::CatalogFile::from_str_with_format(
                    r#"{"policysets": [{"name": "raw", "rules": [{"kind": "velaTrait", "traitType": "json-patch", "spec": {}}]}]}"#,
                    crate::catalog::Format::Json,
                )
                .unwrap(),
            )
            .unwrap();
        let err = AppRules::resolve(&custom, "gold", &["raw".to_owned()]).unwrap_err();
        assert!(
            err.contains("adds trait type \"json-patch\", which the plan does not allow"),
            "{err}"
        );
        let err = AppRules::resolve(&custom, "gold", &["nope".to_owned()]).unwrap_err();
        assert_eq!(err, "unknown policyset \"nope\"");
        assert!(
            AppRules::resolve(&custom, "diamond", &[])
                .unwrap_err()
                .starts_with("unknown plan \"diamond\"")
        );
    }
}
