//! NovaApp → KubeVela `Application`.

use kubenova_api::apprules::AppRules;
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaApp, NovaAppTrait, NovaTenantSpec};
use kubenova_api::model::{
    AppComponent, AppPolicy, AppSpec, AppTrait, Workflow, WorkflowStep, project_namespace,
};
use kubenova_api::validate::Validate;
use serde_json::{Map, Value, json};

use crate::error::TranslateError;
use crate::manifests::APP_SERVICE_ACCOUNT;
use crate::meta::*;

const KIND: &str = "NovaApp";

/// Name of the step prepended to the workflow of a suspended app.
pub const SUSPEND_STEP: &str = "kubenova-suspend";

/// The user the Applications of the project namespace `namespace` are applied as (the
/// project's [`APP_SERVICE_ACCOUNT`], which KubeVela then deploys them as):
/// `system:serviceaccount:<namespace>:kubenova-app`.
pub fn app_identity(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{APP_SERVICE_ACCOUNT}")
}

/// The app rules of a tenant: its plan's allowed definitions and its effective policysets
/// (the spec's, or the plan's).
pub fn app_rules(tenant: &NovaTenantSpec, catalog: &Catalog) -> Result<AppRules, TranslateError> {
    let plan = catalog
        .plan(&tenant.plan)
        .ok_or_else(|| TranslateError::UnknownPlan {
            plan: tenant.plan.clone(),
            known: catalog
                .plans()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let policysets = tenant.policysets.as_ref().unwrap_or(&plan.policysets);
    AppRules::resolve(catalog, &tenant.plan, policysets).map_err(|message| {
        TranslateError::NotAllowed {
            kind: "NovaTenant",
            name: tenant.plan.clone(),
            message,
        }
    })
}

fn to_model_trait(t: &NovaAppTrait) -> AppTrait {
    AppTrait {
        type_: t.type_.clone(),
        properties: t.properties.clone(),
    }
}

fn vela_trait(t: &NovaAppTrait) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(t.type_));
    if let Some(p) = &t.properties {
        m.insert("properties".into(), p.clone());
    }
    Value::Object(m)
}

/// Translates a NovaApp into a KubeVela Application of the same name and namespace,
/// under the app rules of its tenant (`rules`, from the tenant's plan and policysets; see
/// [`AppRules`]).
///
/// - An app that uses a definition type or image the rules do not allow is refused
///   ([`TranslateError::NotAllowed`]); properties that would retarget another namespace or
///   cluster are refused as invalid.
/// - App-level `traits` are added to every component that has no trait of that type; then
///   the policysets' traits likewise ([`AppRules::plan_traits`]).
/// - The policysets' policies are added as `kubenova-<type>` ([`AppRules::plan_policies`]).
/// - Policies without a name are named after their type.
/// - `revision` → annotations `kubenova.io/revision` and `app.oam.dev/publishVersion`
///   (KubeVela re-runs the workflow only when the publish version changes).
/// - `suspended` → a `suspend` step named [`SUSPEND_STEP`] is prepended to the workflow
///   (KubeVela's built-in step; the app waits in `workflowSuspending` and keeps what is
///   already deployed). Without an explicit workflow, the steps after it are one `deploy`
///   step over the app's `topology`/`override` policies, which is what KubeVela would
///   generate. Resuming = setting `suspended: false`, which removes the step.
pub fn translate_app(na: &NovaApp, rules: &AppRules) -> Result<Value, TranslateError> {
    let name = na
        .metadata
        .name
        .clone()
        .ok_or(TranslateError::MissingName { kind: KIND })?;
    let spec = &na.spec;
    let invalid = |message: String| TranslateError::InvalidSpec {
        kind: KIND,
        name: name.clone(),
        message,
    };
    for (field, v) in [("tenant", &spec.tenant), ("project", &spec.project)] {
        if let Some(p) = kubenova_api::validate::dns_label_problem(v) {
            return Err(invalid(format!("{field}: {p}")));
        }
    }
    let ns = project_namespace(&spec.tenant, &spec.project);
    let actual = na.metadata.namespace.clone().unwrap_or_default();
    if actual != ns {
        return Err(TranslateError::WrongNamespace {
            kind: KIND,
            name,
            expected: ns,
            actual,
        });
    }
    let model = AppSpec {
        name: name.clone(),
        description: spec.description.clone(),
        components: spec
            .components
            .iter()
            .map(|c| AppComponent {
                name: c.name.clone(),
                type_: c.type_.clone(),
                properties: c.properties.clone(),
                traits: c.traits.iter().map(to_model_trait).collect(),
                depends_on: c.depends_on.clone(),
            })
            .collect(),
        traits: spec.traits.iter().map(to_model_trait).collect(),
        policies: spec
            .policies
            .iter()
            .map(|p| AppPolicy {
                name: p.name.clone(),
                type_: p.type_.clone(),
                properties: p.properties.clone(),
            })
            .collect(),
        workflow: spec.workflow.as_ref().map(|w| Workflow {
            steps: w
                .steps
                .iter()
                .map(|s| WorkflowStep {
                    name: s.name.clone(),
                    type_: s.type_.clone(),
                    properties: s.properties.clone(),
                })
                .collect(),
        }),
        ..AppSpec::default()
    };
    model.validate().map_err(|e| invalid(e.to_string()))?;
    rules
        .check(&model)
        .map_err(|e| TranslateError::NotAllowed {
            kind: KIND,
            name: name.clone(),
            message: e.to_string(),
        })?;
    if spec.suspended
        && spec
            .workflow
            .as_ref()
            .is_some_and(|w| w.steps.iter().any(|s| s.name == SUSPEND_STEP))
    {
        return Err(invalid(format!(
            "workflow.steps: the step name {SUSPEND_STEP:?} is reserved"
        )));
    }

    let components: Vec<Value> = spec
        .components
        .iter()
        .map(|c| {
            let mut traits: Vec<Value> = c.traits.iter().map(vela_trait).collect();
            for t in &spec.traits {
                if !c.traits.iter().any(|own| own.type_ == t.type_) {
                    traits.push(vela_trait(t));
                }
            }
            for t in rules.plan_traits(&c.type_) {
                if !traits.iter().any(|own| own["type"] == t.type_.as_str()) {
                    traits.push(json!({"type": t.type_, "properties": t.properties}));
                }
            }
            let mut m = Map::new();
            m.insert("name".into(), json!(c.name));
            m.insert("type".into(), json!(c.type_));
            if let Some(p) = &c.properties {
                m.insert("properties".into(), p.clone());
            }
            if !traits.is_empty() {
                m.insert("traits".into(), Value::Array(traits));
            }
            if !c.depends_on.is_empty() {
                m.insert("dependsOn".into(), json!(c.depends_on));
            }
            Value::Object(m)
        })
        .collect();
    let mut policies: Vec<Value> = spec
        .policies
        .iter()
        .map(|p| {
            let mut m = Map::new();
            m.insert(
                "name".into(),
                json!(p.name.clone().unwrap_or_else(|| p.type_.clone())),
            );
            m.insert("type".into(), json!(p.type_));
            if let Some(props) = &p.properties {
                m.insert("properties".into(), props.clone());
            }
            Value::Object(m)
        })
        .collect();
    policies.extend(
        rules
            .plan_policies()
            .iter()
            .map(|p| json!({"name": p.name, "type": p.type_, "properties": p.properties})),
    );
    let mut steps: Vec<Value> = spec
        .workflow
        .iter()
        .flat_map(|w| w.steps.iter())
        .map(|s| {
            let mut m = Map::new();
            m.insert("name".into(), json!(s.name));
            m.insert("type".into(), json!(s.type_));
            if let Some(p) = &s.properties {
                m.insert("properties".into(), p.clone());
            }
            Value::Object(m)
        })
        .collect();
    if spec.suspended {
        if steps.is_empty() {
            let placement: Vec<Value> = spec
                .policies
                .iter()
                .filter(|p| p.type_ == "topology" || p.type_ == "override")
                .map(|p| json!(p.name.clone().unwrap_or_else(|| p.type_.clone())))
                .collect();
            let mut deploy = json!({"name": "deploy", "type": "deploy"});
            if !placement.is_empty() {
                deploy["properties"] = json!({"policies": placement});
            }
            steps.push(deploy);
        }
        steps.insert(0, json!({"name": SUSPEND_STEP, "type": "suspend"}));
    }

    let mut vspec = Map::new();
    vspec.insert("components".into(), Value::Array(components));
    if !policies.is_empty() {
        vspec.insert("policies".into(), Value::Array(policies));
    }
    if !steps.is_empty() {
        vspec.insert("workflow".into(), json!({"steps": steps}));
    }
    let mut annotations = Map::new();
    if let Some(r) = spec.revision {
        annotations.insert(ANNOTATION_REVISION.into(), json!(r.to_string()));
        annotations.insert(
            ANNOTATION_VELA_PUBLISH_VERSION.into(),
            json!(format!("r{r}")),
        );
    }
    if spec.suspended {
        annotations.insert(ANNOTATION_SUSPENDED.into(), json!("true"));
    }
    let mut meta = json!({
        "name": name,
        "namespace": ns,
        "labels": {
            LABEL_TENANT: spec.tenant,
            LABEL_PROJECT: spec.project,
            LABEL_APP: name,
            LABEL_MANAGED_BY: MANAGED_BY,
        },
    });
    if !annotations.is_empty() {
        meta["annotations"] = Value::Object(annotations);
    }
    if let Some(r) = owner_ref(na, true) {
        meta["ownerReferences"] = json!([r]);
    }
    Ok(json!({
        "apiVersion": "core.oam.dev/v1beta1",
        "kind": "Application",
        "metadata": meta,
        "spec": vspec,
    }))
}
