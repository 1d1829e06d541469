//! The operator's ValidatingAdmissionPolicy, evaluated for real: the testkit stores
//! policies but runs no CEL, so this test evaluates the policy's matchConditions,
//! variables, validations and messageExpressions (exactly as
//! `kubenova_reconcile::manifests::operator_manifests` generates them) with the
//! `cel-interpreter` crate, the way the API server does:
//!
//! - the request must match a `matchConstraints.resourceRules` entry and every
//!   matchCondition, else the policy does not apply;
//! - variables are evaluated in order and read as `variables.<name>`; one that fails to
//!   evaluate is absent, so every expression using it fails;
//! - a validation that is `false` denies with its messageExpression (its message when that
//!   fails); one that fails to evaluate, or is not a bool, denies too (`failurePolicy: Fail`).
//!
//! The objects the operator writes (tenant and project namespaces, the project
//! RoleBindings from `translate_project`, the app identity ServiceAccount and its two
//! RoleBindings) are allowed to be created, updated and deleted; writes it must never
//! make are denied, each by the rule that says why.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;

use cel_interpreter::{Context, Program, Value as Cel, to_value};
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaProject, NovaTenant};
use kubenova_reconcile::manifests::{
    ADMISSION_POLICY_NAME, APP_DEPLOYER_ROLE, APP_SERVICE_ACCOUNT, OperatorParams,
    operator_manifests, operator_username, platform_namespaces,
};
use kubenova_reconcile::{
    project_namespace, tenant_pod_security, translate_project, translate_tenant,
};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "kubenova-system";

/// Why a validation denied.
#[derive(Debug, Clone, PartialEq)]
enum Cause {
    /// The expression was `false`.
    False,
    /// The expression could not be evaluated (or was not a bool).
    Error(String),
}

#[derive(Debug, Clone)]
struct Refusal {
    message: String,
    /// The message came from the messageExpression (not the static fallback).
    from_expression: bool,
    cause: Cause,
}

#[derive(Debug)]
enum Decision {
    /// The policy does not apply to the request.
    NotMatched,
    Allowed,
    Refused(Vec<Refusal>),
}

impl Decision {
    fn refusals(&self) -> &[Refusal] {
        match self {
            Decision::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// One admission request.
#[derive(Debug, Clone)]
struct Req {
    operation: &'static str,
    group: &'static str,
    resource: &'static str,
    user: String,
    object: Option<Value>,
    old_object: Option<Value>,
}

fn eval(ctx: &Context<'_>, expression: &str) -> Result<Cel, String> {
    let program = Program::compile(expression).map_err(|e| format!("compile: {e}"))?;
    program.execute(ctx).map_err(|e| e.to_string())
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The policy's decision on `req`; `namespaces` are the cluster's Namespaces (for
/// `namespaceObject`).
fn admit(policy: &Value, namespaces: &HashMap<String, Value>, req: &Req) -> Decision {
    let spec = &policy["spec"];
    let matches = spec["matchConstraints"]["resourceRules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| {
            strings(&r["apiGroups"]).contains(&req.group)
                && strings(&r["apiVersions"]).contains(&"v1")
                && strings(&r["operations"]).contains(&req.operation)
                && strings(&r["resources"]).contains(&req.resource)
        });
    if !matches {
        return Decision::NotMatched;
    }
    let subject = req.object.as_ref().or(req.old_object.as_ref()).unwrap();
    let name = subject["metadata"]["name"].clone();
    let namespace = subject["metadata"]["namespace"].as_str();
    let request = json!({
        "operation": req.operation,
        "name": name,
        "namespace": namespace.unwrap_or_default(),
        "resource": {"group": req.group, "version": "v1", "resource": req.resource},
        "userInfo": {"username": req.user, "groups": ["system:authenticated"]},
        "dryRun": false,
    });
    let namespace_object = namespace
        .map(|n| namespaces.get(n).cloned().unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let mut ctx = Context::default();
    let mut bind = |name: &str, v: &Value| ctx.add_variable(name, to_value(v).unwrap()).unwrap();
    bind("request", &request);
    bind("object", req.object.as_ref().unwrap_or(&Value::Null));
    bind("oldObject", req.old_object.as_ref().unwrap_or(&Value::Null));
    bind("namespaceObject", &namespace_object);
    bind("params", &Value::Null);
    let fail_closed = spec["failurePolicy"] == "Fail";

    for condition in spec["matchConditions"].as_array().into_iter().flatten() {
        match eval(&ctx, condition["expression"].as_str().unwrap()) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => return Decision::NotMatched,
            other => {
                assert!(fail_closed);
                return Decision::Refused(vec![Refusal {
                    message: format!("matchCondition {}: {other:?}", condition["name"]),
                    from_expression: false,
                    cause: Cause::Error(format!("{other:?}")),
                }]);
            }
        }
    }

    let mut variables: HashMap<String, Cel> = HashMap::new();
    for v in spec["variables"].as_array().into_iter().flatten() {
        ctx.add_variable_from_value("variables", variables.clone());
        if let Ok(value) = eval(&ctx, v["expression"].as_str().unwrap()) {
            variables.insert(v["name"].as_str().unwrap().to_owned(), value);
        }
    }
    ctx.add_variable_from_value("variables", variables);

    let mut refusals = Vec::new();
    for v in spec["validations"].as_array().unwrap() {
        let cause = match eval(&ctx, v["expression"].as_str().unwrap()) {
            Ok(Cel::Bool(true)) => continue,
            Ok(Cel::Bool(false)) => Cause::False,
            Ok(other) => Cause::Error(format!("not a bool: {other:?}")),
            Err(e) => Cause::Error(e),
        };
        assert!(fail_closed, "an error must deny");
        let (message, from_expression) =
            match v["messageExpression"].as_str().map(|e| eval(&ctx, e)) {
                Some(Ok(Cel::String(s))) if !s.is_empty() => (s.to_string(), true),
                _ => (v["message"].as_str().unwrap().to_owned(), false),
            };
        refusals.push(Refusal {
            message,
            from_expression,
            cause,
        });
    }
    if refusals.is_empty() {
        Decision::Allowed
    } else {
        Decision::Refused(refusals)
    }
}

/// The generated policy for the operator in `ns` (and a check of its binding).
fn policy_for(ns: &str) -> Value {
    let m = operator_manifests(&OperatorParams {
        namespace: ns.into(),
        ..OperatorParams::default()
    });
    let binding = serde_json::to_value(&m.admission_policy_binding).unwrap();
    assert_eq!(binding["spec"]["policyName"], ADMISSION_POLICY_NAME);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    serde_json::to_value(&m.admission_policy).unwrap()
}

fn operator() -> String {
    operator_username(OPERATOR_NS)
}

fn namespace(name: &str, labels: Value, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "annotations": annotations}})
}

fn nova_tenant(tenant: &str) -> NovaTenant {
    serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
        "metadata": {"name": tenant},
        "spec": {"plan": "gold", "owners": ["alice@example.com"]}
    }))
    .unwrap()
}

/// A tenant namespace as the operator writes it (`role`: `owner` or `apps`), from the real
/// tenant translation; other roles give the owner namespace renamed and relabelled (a
/// disguise for the refusal cases).
fn tenant_namespace(tenant: &str, role: &str) -> Value {
    let objects = translate_tenant(&nova_tenant(tenant), Catalog::builtin_ref()).unwrap();
    let wanted = if role == "apps" { "apps" } else { "owner" };
    let ns = objects
        .namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(&format!("{tenant}-{wanted}")))
        .unwrap();
    let mut v = serde_json::to_value(ns).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Namespace");
    v["metadata"]["name"] = json!(format!("{tenant}-{role}"));
    v["metadata"]["labels"]["kubenova.io/namespace-role"] = json!(role);
    v
}

/// What the operator writes for project `web` of tenant `acme` (from the real
/// translation): its namespace, its access RoleBindings, and the app identity (its
/// ServiceAccount and the two RoleBindings naming it).
struct Project {
    namespace: Value,
    role_bindings: Vec<Value>,
    service_account: Value,
    app_bindings: Vec<Value>,
}

fn project(tenant: &str, name: &str) -> Project {
    let np: NovaProject = serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
        "metadata": {"name": name, "namespace": format!("{tenant}-owner")},
        "spec": {"tenant": tenant, "access": [
            "owner:alice@example.com",
            "developer:group:web-devs",
            "developer:serviceaccount:ci:deployer",
            "viewer:bob@example.com",
        ]}
    }))
    .unwrap();
    let psa = tenant_pod_security(&nova_tenant(tenant), Catalog::builtin_ref()).unwrap();
    let objects = translate_project(&np, psa.as_ref()).unwrap();
    let mut namespace = serde_json::to_value(&objects.namespace).unwrap();
    namespace["apiVersion"] = json!("v1");
    namespace["kind"] = json!("Namespace");
    let (app_bindings, role_bindings): (Vec<Value>, Vec<Value>) = objects
        .role_bindings
        .iter()
        .map(|rb| {
            let mut v = serde_json::to_value(rb).unwrap();
            v["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
            v["kind"] = json!("RoleBinding");
            v
        })
        .partition(|rb| {
            [APP_SERVICE_ACCOUNT, APP_DEPLOYER_ROLE]
                .contains(&rb["metadata"]["name"].as_str().unwrap())
        });
    assert_eq!(app_bindings.len(), 2, "the app identity's two bindings");
    let mut service_account = serde_json::to_value(&objects.service_account).unwrap();
    service_account["apiVersion"] = json!("v1");
    service_account["kind"] = json!("ServiceAccount");
    Project {
        namespace,
        service_account,
        app_bindings,
        role_bindings,
    }
}

/// The cluster's namespaces: platform ones (unlabelled), tenant `acme`'s, one project of
/// `acme`, one of `globex`, and a namespace nobody manages.
fn cluster(p: &Project, other: &Project) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for n in platform_namespaces(OPERATOR_NS) {
        out.insert(n.clone(), namespace(&n, json!({}), json!({})));
    }
    for ns in [
        tenant_namespace("acme", "owner"),
        tenant_namespace("acme", "apps"),
        p.namespace.clone(),
        other.namespace.clone(),
        namespace("team-x", json!({"team": "x"}), json!({})),
    ] {
        out.insert(ns["metadata"]["name"].as_str().unwrap().to_owned(), ns);
    }
    out
}

fn kind_of(obj: &Value) -> (&'static str, &'static str) {
    match obj["kind"].as_str().unwrap() {
        "Namespace" => ("", "namespaces"),
        "ServiceAccount" => ("", "serviceaccounts"),
        "RoleBinding" => ("rbac.authorization.k8s.io", "rolebindings"),
        other => panic!("unexpected kind {other}"),
    }
}

fn create(obj: &Value) -> Req {
    let (group, resource) = kind_of(obj);
    Req {
        operation: "CREATE",
        group,
        resource,
        user: operator(),
        object: Some(obj.clone()),
        old_object: None,
    }
}

fn update(old: &Value, new: &Value) -> Req {
    Req {
        operation: "UPDATE",
        old_object: Some(old.clone()),
        ..create(new)
    }
}

fn delete(obj: &Value) -> Req {
    Req {
        operation: "DELETE",
        object: None,
        old_object: Some(obj.clone()),
        ..create(obj)
    }
}

/// Asserts that `req` is refused, among others by a validation that evaluated to
/// `false` with a message (from its messageExpression) containing `why`, and returns
/// the refusals.
#[track_caller]
fn assert_refused(
    policy: &Value,
    namespaces: &HashMap<String, Value>,
    req: &Req,
    why: &str,
) -> Vec<Refusal> {
    let d = admit(policy, namespaces, req);
    let refusals = d.refusals().to_vec();
    let name = req.object.as_ref().or(req.old_object.as_ref()).unwrap()["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        refusals.iter().any(|r| r.cause == Cause::False
            && r.from_expression
            && r.message.contains(why)
            && r.message.contains(&name)),
        "{} {} {name}: no refusal saying {why:?}: {refusals:#?}",
        req.operation,
        req.resource
    );
    refusals
}

#[track_caller]
fn assert_allowed(policy: &Value, namespaces: &HashMap<String, Value>, req: &Req) {
    let d = admit(policy, namespaces, req);
    assert!(
        matches!(d, Decision::Allowed),
        "{} {} {}: {d:#?}",
        req.operation,
        req.resource,
        req.object.as_ref().or(req.old_object.as_ref()).unwrap()["metadata"]["name"]
    );
}

/// Every expression of the policy parses, and the policy has the shape the API server
/// needs to enforce it fail-closed.
#[test]
fn the_policy_is_complete_and_every_expression_parses() {
    let policy = policy_for(OPERATOR_NS);
    let spec = &policy["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    assert_eq!(
        spec["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:kubenova-system:kubenova-operator'"
    );
    let mut expressions: Vec<&str> = Vec::new();
    for key in ["matchConditions", "variables"] {
        for e in spec[key].as_array().unwrap() {
            expressions.push(e["expression"].as_str().unwrap());
        }
    }
    for v in spec["validations"].as_array().unwrap() {
        expressions.push(v["expression"].as_str().unwrap());
        expressions.push(v["messageExpression"].as_str().unwrap());
        assert!(!v["message"].as_str().unwrap().is_empty());
        assert_eq!(v["reason"], "Forbidden");
    }
    assert!(expressions.len() > 20);
    for e in expressions {
        Program::compile(e).unwrap_or_else(|err| panic!("{e}: {err}"));
    }
}

/// Everything the operator writes, created, updated (re-applied) and deleted, is allowed.
#[test]
fn what_the_operator_writes_is_allowed() {
    let policy = policy_for(OPERATOR_NS);
    let p = project("acme", "web");
    let other = project("globex", "shop");
    let namespaces = cluster(&p, &other);
    let mut objects = vec![
        tenant_namespace("acme", "owner"),
        tenant_namespace("acme", "apps"),
        p.namespace.clone(),
        p.service_account.clone(),
    ];
    objects.extend(p.role_bindings.iter().cloned());
    objects.extend(p.app_bindings.iter().cloned());
    assert_eq!(objects.len(), 9);
    // A project whose access list binds a ServiceAccount of another namespace to `edit`.
    assert!(p.role_bindings.iter().any(|rb| {
        rb["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["namespace"] == "ci")
    }));
    for obj in &objects {
        assert_allowed(&policy, &namespaces, &create(obj));
        assert_allowed(&policy, &namespaces, &update(obj, obj));
        assert_allowed(&policy, &namespaces, &delete(obj));
    }
    // A project RoleBinding whose subjects change.
    let mut changed = p.role_bindings[1].clone();
    changed["subjects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "User", "name": "carol@example.com", "apiGroup": "rbac.authorization.k8s.io"}));
    assert_allowed(&policy, &namespaces, &update(&p.role_bindings[1], &changed));
    // Tenant namespaces written before the owner annotation existed can be updated (the
    // annotation is added) and deleted.
    let mut before = tenant_namespace("acme", "owner");
    before["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_allowed(
        &policy,
        &namespaces,
        &update(&before, &tenant_namespace("acme", "owner")),
    );
    assert_allowed(&policy, &namespaces, &delete(&before));
}

/// The policy applies to the operator's ServiceAccount only, and to Namespaces,
/// ServiceAccounts and RoleBindings only.
#[test]
fn only_the_operators_writes_are_checked() {
    let policy = policy_for(OPERATOR_NS);
    let p = project("acme", "web");
    let other = project("globex", "shop");
    let namespaces = cluster(&p, &other);
    let kube_system = namespaces["kube-system"].clone();
    let mut admin_binding = p.role_bindings[0].clone();
    admin_binding["metadata"]["namespace"] = json!("kube-system");
    admin_binding["roleRef"]["name"] = json!("cluster-admin");
    for user in [
        "kubernetes-admin".to_owned(),
        "system:serviceaccount:kube-system:namespace-controller".to_owned(),
        // The same ServiceAccount name in another namespace is not the operator.
        "system:serviceaccount:default:kubenova-operator".to_owned(),
        // Nor is the app identity the operator impersonates.
        format!(
            "system:serviceaccount:{}:kubenova-app",
            project_namespace("acme", "web")
        ),
    ] {
        for req in [delete(&kube_system), create(&admin_binding)] {
            let req = Req {
                user: user.clone(),
                ..req
            };
            assert!(
                matches!(admit(&policy, &namespaces, &req), Decision::NotMatched),
                "{user}"
            );
        }
    }
    // Other kinds are not matched, even from the operator.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kubenova-capsule-proxy", "namespace": OPERATOR_NS}});
    let req = Req {
        group: "",
        resource: "configmaps",
        ..create(&p.namespace)
    };
    let req = Req {
        object: Some(cm),
        ..req
    };
    assert!(matches!(
        admit(&policy, &namespaces, &req),
        Decision::NotMatched
    ));

    // The policy follows the configured namespace: an operator in `ops` is matched by
    // its own policy, which also protects `ops`.
    let ops = policy_for("ops");
    let ops_user = "system:serviceaccount:ops:kubenova-operator".to_owned();
    let req = Req {
        user: ops_user.clone(),
        ..create(&tenant_namespace("acme", "owner"))
    };
    assert_allowed(&ops, &namespaces, &req);
    assert!(matches!(
        admit(&policy, &namespaces, &req),
        Decision::NotMatched
    ));
    let mut ops_ns = tenant_namespace("ops", "owner");
    ops_ns["metadata"]["name"] = json!("ops");
    let req = Req {
        user: ops_user,
        ..delete(&ops_ns)
    };
    assert_refused(&ops, &namespaces, &req, "system or platform namespace");
}

/// Namespaces: never a platform one, never another tenant's or an unmanaged one, never
/// adopted or moved, always with a consistent owner annotation.
#[test]
fn forbidden_namespace_writes_are_denied() {
    let policy = policy_for(OPERATOR_NS);
    let p = project("acme", "web");
    let other = project("globex", "shop");
    let namespaces = cluster(&p, &other);

    // System and platform namespaces, even labelled as a tenant's.
    for n in [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "default",
        OPERATOR_NS,
        "capsule-system",
        "vela-system",
        "cert-manager",
    ] {
        let real = namespaces[n].clone();
        let (tenant, role) = n.split_once('-').unwrap_or((n, "owner"));
        let mut disguised = tenant_namespace(tenant, role);
        disguised["metadata"]["name"] = json!(n);
        for req in [
            create(&disguised),
            update(&real, &disguised),
            update(&disguised, &disguised),
            delete(&real),
            delete(&disguised),
        ] {
            assert_refused(&policy, &namespaces, &req, "system or platform namespace");
        }
    }

    // Another tenant's namespace name.
    let mut globex = tenant_namespace("acme", "owner");
    globex["metadata"]["name"] = json!("globex-owner");
    assert_refused(
        &policy,
        &namespaces,
        &create(&globex),
        "does not fit tenant",
    );
    // A project namespace whose name has no hash, or lacks the project label.
    let mut no_hash = p.namespace.clone();
    no_hash["metadata"]["name"] = json!("acme-web");
    assert_refused(
        &policy,
        &namespaces,
        &create(&no_hash),
        "does not fit tenant",
    );
    let mut no_project = p.namespace.clone();
    no_project["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("kubenova.io/project");
    assert_refused(
        &policy,
        &namespaces,
        &create(&no_project),
        "does not fit tenant",
    );

    // Not labelled as managed, or tenant labels that disagree.
    let mut unmanaged = tenant_namespace("acme", "owner");
    unmanaged["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("app.kubernetes.io/managed-by");
    assert_refused(&policy, &namespaces, &create(&unmanaged), "is not labelled");
    let mut split = tenant_namespace("acme", "owner");
    split["metadata"]["labels"]["capsule.clastix.io/tenant"] = json!("globex");
    assert_refused(&policy, &namespaces, &create(&split), "is not labelled");
    assert_refused(
        &policy,
        &namespaces,
        &delete(&namespaces["team-x"]),
        "is not labelled",
    );

    // Relabelling a namespace nobody gave the operator: no adoption.
    let taken = namespace("acme-owner", json!({}), json!({}));
    let refusals = assert_refused(
        &policy,
        &namespaces,
        &update(&taken, &tenant_namespace("acme", "owner")),
        "not already managed",
    );
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    let mut team_x = namespaces["team-x"].clone();
    team_x["metadata"]["labels"] = tenant_namespace("team", "x")["metadata"]["labels"].clone();
    assert_refused(
        &policy,
        &namespaces,
        &update(&namespaces["team-x"], &team_x),
        "not already managed",
    );
    // Moving a namespace to another tenant.
    let mut was_globex = tenant_namespace("globex", "owner");
    was_globex["metadata"]["name"] = json!("acme-owner");
    let refusals = assert_refused(
        &policy,
        &namespaces,
        &update(&was_globex, &tenant_namespace("acme", "owner")),
        "not already managed",
    );
    assert_eq!(refusals.len(), 1, "{refusals:#?}");

    // The owner annotation: present and naming the namespace's own owner.
    let mut missing = tenant_namespace("acme", "owner");
    missing["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_refused(
        &policy,
        &namespaces,
        &create(&missing),
        "novatenants.kubenova.io/acme",
    );
    let mut foreign = tenant_namespace("acme", "apps");
    foreign["metadata"]["annotations"]["kubenova.io/owner"] =
        json!("novatenants.kubenova.io/globex");
    assert_refused(
        &policy,
        &namespaces,
        &create(&foreign),
        "novatenants.kubenova.io/acme",
    );
    let mut as_tenant = p.namespace.clone();
    as_tenant["metadata"]["annotations"]["kubenova.io/owner"] =
        json!("novatenants.kubenova.io/acme");
    assert_refused(
        &policy,
        &namespaces,
        &update(&p.namespace, &as_tenant),
        "novaprojects.kubenova.io/acme-owner/web",
    );
}

/// RoleBindings: only in project namespaces the operator manages, only `kubenova-*`,
/// only to admin/edit/view/kubenova-app-deployer, never for system users or groups, and
/// the app identity bindings exactly as the operator makes them.
#[test]
fn forbidden_role_bindings_are_denied() {
    let policy = policy_for(OPERATOR_NS);
    let p = project("acme", "web");
    let other = project("globex", "shop");
    let namespaces = cluster(&p, &other);
    let owner = &p.role_bindings[0];
    assert_eq!(owner["metadata"]["name"], "kubenova-owner");

    let mut cluster_admin = owner.clone();
    cluster_admin["roleRef"]["name"] = json!("cluster-admin");
    assert_refused(
        &policy,
        &namespaces,
        &create(&cluster_admin),
        "cluster-admin",
    );
    assert_refused(
        &policy,
        &namespaces,
        &update(owner, &cluster_admin),
        "may only bind the ClusterRoles admin, edit, view, kubenova-app-deployer",
    );
    let mut namespaced_role = owner.clone();
    namespaced_role["roleRef"]["kind"] = json!("Role");
    assert_refused(
        &policy,
        &namespaces,
        &create(&namespaced_role),
        "refers to Role admin",
    );

    for (kind, name) in [
        ("Group", "system:authenticated"),
        ("Group", "system:unauthenticated"),
        ("Group", "system:masters"),
        ("Group", "system:serviceaccounts"),
        ("Group", "system:serviceaccounts:kube-system"),
        ("Group", "system:nodes"),
        ("User", "system:anonymous"),
        ("User", "system:kube-controller-manager"),
    ] {
        let mut everyone = owner.clone();
        everyone["subjects"]
            .as_array_mut()
            .unwrap()
            .push(json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name}));
        assert_refused(&policy, &namespaces, &create(&everyone), name);
        assert_refused(&policy, &namespaces, &update(owner, &everyone), name);
    }

    // Outside the project namespaces it manages.
    for ns in [
        "team-x",
        "acme-owner",
        "acme-apps",
        "kube-system",
        OPERATOR_NS,
    ] {
        let mut elsewhere = owner.clone();
        elsewhere["metadata"]["namespace"] = json!(ns);
        for req in [
            create(&elsewhere),
            update(&elsewhere, &elsewhere),
            delete(&elsewhere),
        ] {
            assert_refused(&policy, &namespaces, &req, "is not a project namespace");
        }
    }
    // Named outside `kubenova-`.
    let mut renamed = owner.clone();
    renamed["metadata"]["name"] = json!("admin-binding");
    for req in [create(&renamed), delete(&renamed)] {
        assert_refused(&policy, &namespaces, &req, "does not start with kubenova-");
    }
    // Not labelled as the operator's (or labelled for another tenant), and adoption of a
    // RoleBinding someone else made.
    let mut theirs = owner.clone();
    theirs["metadata"].as_object_mut().unwrap().remove("labels");
    assert_refused(&policy, &namespaces, &delete(&theirs), "must be labelled");
    assert_refused(&policy, &namespaces, &update(&theirs, owner), "no adoption");
    let mut foreign = owner.clone();
    foreign["metadata"]["labels"]["kubenova.io/tenant"] = json!("globex");
    assert_refused(
        &policy,
        &namespaces,
        &create(&foreign),
        "kubenova.io/tenant=acme",
    );

    // The app identity bindings.
    let deployer = &p.app_bindings[1];
    let other_sa = json!({"kind": "ServiceAccount", "name": APP_SERVICE_ACCOUNT,
        "namespace": other.namespace["metadata"]["name"]});
    let mut cross = deployer.clone();
    cross["subjects"] = json!([other_sa]);
    assert_refused(&policy, &namespaces, &create(&cross), "only subject");
    let mut extra = deployer.clone();
    extra["subjects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}));
    assert_refused(
        &policy,
        &namespaces,
        &update(deployer, &extra),
        "only subject",
    );
    let mut user = deployer.clone();
    user["subjects"] = json!([{"kind": "User", "name": "mallory@example.com", "apiGroup": "rbac.authorization.k8s.io"}]);
    assert_refused(&policy, &namespaces, &create(&user), "only subject");
    let mut via_developer = owner.clone();
    via_developer["metadata"]["name"] = json!("kubenova-developer");
    via_developer["roleRef"]["name"] = json!(APP_DEPLOYER_ROLE);
    assert_refused(
        &policy,
        &namespaces,
        &create(&via_developer),
        "only subject",
    );
    let mut app_admin = p.app_bindings[0].clone();
    app_admin["roleRef"]["name"] = json!("admin");
    assert_refused(&policy, &namespaces, &create(&app_admin), "only subject");
}

/// ServiceAccounts: only `kubenova-app`, only in project namespaces the operator manages.
#[test]
fn forbidden_service_accounts_are_denied() {
    let policy = policy_for(OPERATOR_NS);
    let p = project("acme", "web");
    let other = project("globex", "shop");
    let namespaces = cluster(&p, &other);
    let sa = &p.service_account;
    for ns in ["kube-system", "team-x", "acme-apps", OPERATOR_NS] {
        let mut elsewhere = sa.clone();
        elsewhere["metadata"]["namespace"] = json!(ns);
        for req in [
            create(&elsewhere),
            update(&elsewhere, &elsewhere),
            delete(&elsewhere),
        ] {
            assert_refused(&policy, &namespaces, &req, "is not a project namespace");
        }
    }
    let mut builder = sa.clone();
    builder["metadata"]["name"] = json!("builder");
    for req in [create(&builder), delete(&builder)] {
        assert_refused(&policy, &namespaces, &req, "the only ServiceAccount");
    }
    let mut unlabelled = sa.clone();
    unlabelled["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    assert_refused(
        &policy,
        &namespaces,
        &update(&unlabelled, sa),
        "no adoption",
    );
    assert_refused(
        &policy,
        &namespaces,
        &create(&unlabelled),
        "must be labelled",
    );
}

/// An expression that cannot be evaluated denies (`failurePolicy: Fail`): a Namespace
/// without a name, a RoleBinding without a roleRef.
#[test]
fn evaluation_errors_deny() {
    let policy = policy_for(OPERATOR_NS);
    let p = project("acme", "web");
    let other = project("globex", "shop");
    let namespaces = cluster(&p, &other);
    let mut nameless = tenant_namespace("acme", "owner");
    nameless["metadata"].as_object_mut().unwrap().remove("name");
    let refusals = admit(&policy, &namespaces, &create(&nameless))
        .refusals()
        .to_vec();
    assert!(
        refusals.iter().any(|r| matches!(r.cause, Cause::Error(_))),
        "{refusals:#?}"
    );
    // The static message stands in when the messageExpression cannot be evaluated.
    assert!(refusals.iter().all(|r| !r.message.is_empty()));
    assert!(refusals.iter().any(|r| !r.from_expression));

    let mut no_role_ref = p.role_bindings[0].clone();
    no_role_ref.as_object_mut().unwrap().remove("roleRef");
    let refusals = admit(&policy, &namespaces, &create(&no_role_ref))
        .refusals()
        .to_vec();
    assert!(
        refusals.iter().any(|r| matches!(r.cause, Cause::Error(_))),
        "{refusals:#?}"
    );

    let mut req = create(&tenant_namespace("acme", "owner"));
    req.user = String::new();
    assert!(matches!(
        admit(&policy, &namespaces, &req),
        Decision::NotMatched
    ));
}
