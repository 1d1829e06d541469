//! Unit tests of the pure translations, the status mapping and render.
#![allow(clippy::unwrap_used, missing_docs)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaApp, NovaPhase, NovaProject, NovaTenant};
use kubenova_reconcile::status::{app_verdict, project_verdict, tenant_verdict};
use kubenova_reconcile::*;
use serde_json::{Value, json};

fn nt(name: &str, spec: Value) -> NovaTenant {
    serde_json::from_value(
        json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
        "metadata": {"name": name, "uid": "u-1"}, "spec": spec}),
    )
    .unwrap()
}

fn np(ns: &str, name: &str, spec: Value) -> NovaProject {
    serde_json::from_value(
        json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .unwrap()
}

fn na(ns: &str, name: &str, spec: Value) -> NovaApp {
    serde_json::from_value(
        json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
        "metadata": {"name": name, "namespace": ns, "uid": "u-app"}, "spec": spec}),
    )
    .unwrap()
}

/// Rules of a plan that allows what these tests use, with no policyset rules.
fn open_rules() -> kubenova_api::apprules::AppRules {
    let catalog = Catalog::from_str_with_format(
        r#"{"plans": [{"name": "open", "prices": {"currency": "USD", "cpuCoreHour": "0", "memoryGibHour": "0",
              "storageGibHour": "0", "loadBalancerHour": "0"},
            "definitions": {"components": ["webservice", "worker", "w"], "traits": ["scaler", "labels"],
                            "policies": ["override", "garbage-collect"], "workflowSteps": ["deploy"]}}]}"#,
        kubenova_api::catalog::Format::Json,
    )
    .unwrap();
    kubenova_api::apprules::AppRules::resolve(&catalog, "open", &[]).unwrap()
}

fn gold_rules() -> kubenova_api::apprules::AppRules {
    let c = Catalog::builtin_ref();
    kubenova_api::apprules::AppRules::resolve(c, "gold", &c.plan("gold").unwrap().policysets)
        .unwrap()
}

/// A project translated without its tenant (no Pod Security level known).
fn translate_project_offline(np: &NovaProject) -> Result<ProjectObjects, TranslateError> {
    translate_project(np, None)
}

fn time(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

#[test]
fn tenant_takes_the_plan_and_every_owner_kind() {
    let cat = Catalog::builtin_ref();
    let out = translate_tenant(
        &nt("acme", json!({"plan": "platinum", "owners": ["alice@example.com", "group:ops", "serviceaccount:ci:bot"], "viewers": ["serviceaccount:mon:prom"]})),
        cat,
    )
    .unwrap();
    let t = &out.tenant;
    assert_eq!(t["apiVersion"], "capsule.clastix.io/v1beta2");
    assert_eq!(
        t["spec"]["owners"],
        json!([
            {"kind": "User", "name": "alice@example.com"},
            {"kind": "Group", "name": "ops"},
            {"kind": "ServiceAccount", "name": "system:serviceaccount:ci:bot"},
            {"kind": "Group", "name": "kubenova:tenant:acme:owner"}
        ])
    );
    assert_eq!(t["spec"]["namespaceOptions"]["quota"], 50);
    assert_eq!(t["spec"]["resourceQuotas"]["scope"], "Tenant");
    assert_eq!(
        t["spec"]["resourceQuotas"]["items"][0]["hard"]["requests.cpu"],
        "32"
    );
    assert_eq!(
        t["spec"]["resourceQuotas"]["items"][0]["hard"]["requests.storage"],
        "2Ti"
    );
    let limit = &t["spec"]["limitRanges"]["items"][0]["limits"][0];
    assert_eq!(limit["type"], "Container");
    assert_eq!(limit["max"]["memory"], "64Gi");
    // platinum has pod-security-restricted: restricted wins.
    assert_eq!(
        t["spec"]["namespaceOptions"]["additionalMetadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let np = &t["spec"]["networkPolicies"]["items"];
    assert_eq!(np.as_array().unwrap().len(), 1);
    assert_eq!(
        np[0]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["capsule.clastix.io/tenant"],
        "acme"
    );
    assert_eq!(
        np[0]["egress"][1]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "kube-system"
    );
    let view = &t["spec"]["additionalRoleBindings"][1];
    assert_eq!(view["clusterRoleName"], "view");
    assert_eq!(
        view["subjects"][1],
        json!({"kind": "ServiceAccount", "name": "prom", "namespace": "mon"})
    );
    assert_eq!(t["metadata"]["ownerReferences"][0]["controller"], true);
    let names: Vec<_> = out
        .namespaces
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["acme-owner", "acme-apps"]);
    for n in &out.namespaces {
        let l = n.metadata.labels.as_ref().unwrap();
        assert_eq!(l["capsule.clastix.io/tenant"], "acme");
        assert_eq!(l["kubenova.io/tenant"], "acme");
        assert_eq!(l["pod-security.kubernetes.io/enforce"], "restricted");
        // Capsule is the controller owner of tenant namespaces; ours is a plain reference.
        assert_eq!(
            n.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(false)
        );
    }
}

#[test]
fn tenant_overrides_win_and_limits_stay_consistent() {
    let out = translate_tenant(
        &nt("t", json!({"plan": "gold", "quotas": {"pods": 5}, "policysets": ["pod-security-baseline"],
            "limits": {"defaultRequest": {"cpu": "2"}, "default": {"cpu": "1"}, "max": {"cpu": "500m"}},
            "namespaceQuota": 4, "nodeSelector": {"pool": "x"}, "ingressClasses": {"allowed": ["nginx"]}})),
        Catalog::builtin_ref(),
    )
    .unwrap();
    let s = &out.tenant["spec"];
    assert_eq!(
        s["resourceQuotas"]["items"][0]["hard"],
        json!({"pods": "5"})
    );
    assert!(s.get("networkPolicies").is_none());
    assert_eq!(s["namespaceOptions"]["quota"], 4);
    assert_eq!(s["nodeSelector"]["pool"], "x");
    assert_eq!(s["ingressOptions"]["allowedClasses"]["allowed"][0], "nginx");
    let l = &s["limitRanges"]["items"][0]["limits"][0];
    assert_eq!(
        (
            l["defaultRequest"]["cpu"].as_str(),
            l["default"]["cpu"].as_str(),
            l["max"]["cpu"].as_str()
        ),
        (Some("1"), Some("1"), Some("1"))
    );
}

#[test]
fn bad_tenants_produce_nothing() {
    let cat = Catalog::builtin_ref();
    let e = translate_tenant(&nt("t", json!({"plan": "diamond"})), cat).unwrap_err();
    assert_eq!(e.reason(), "UnknownPlan");
    assert!(e.to_string().contains("platinum"), "{e}");
    let e = translate_tenant(
        &nt("t", json!({"plan": "gold", "policysets": ["nope"]})),
        cat,
    )
    .unwrap_err();
    assert_eq!(e, TranslateError::UnknownPolicyset("nope".into()));
    let e = translate_tenant(
        &nt("t", json!({"plan": "gold", "owners": ["serviceaccount:x"]})),
        cat,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "InvalidSpec");
    assert!(e.to_string().contains("owners[0]"), "{e}");
    let e = translate_tenant(&nt(&"x".repeat(51), json!({"plan": "gold"})), cat).unwrap_err();
    assert!(e.to_string().contains("at most 50"), "{e}");
    assert_eq!(Verdict::from_error(&e).phase, NovaPhase::Degraded);
}

#[test]
fn project_gets_namespace_rolebindings_and_quota() {
    let out = translate_project_offline(&np("acme-owner", "web", json!({"tenant": "acme",
        "access": ["owner:alice@example.com", "bob", "viewer:group:qa", "developer:serviceaccount:ci:deployer"],
        "quota": {"pods": 10}, "labels": {"team": "w"}})))
    .unwrap();
    let ns = out.namespace.metadata.name.clone().unwrap();
    assert_eq!(ns, project_namespace("acme", "web"));
    let l = out.namespace.metadata.labels.as_ref().unwrap();
    assert_eq!(l["kubenova.io/tenant"], "acme");
    assert_eq!(l["capsule.clastix.io/tenant"], "acme");
    assert_eq!(l["kubenova.io/project"], "web");
    assert_eq!(l["team"], "w");
    let rb: Vec<(String, String, usize)> = out
        .role_bindings
        .iter()
        .map(|r| {
            (
                r.metadata.name.clone().unwrap(),
                r.role_ref.name.clone(),
                r.subjects.as_ref().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        rb,
        [
            ("kubenova-owner".into(), "admin".into(), 2),
            ("kubenova-developer".into(), "edit".into(), 3),
            ("kubenova-viewer".into(), "view".into(), 2),
            ("kubenova-app".into(), "edit".into(), 1),
            (
                "kubenova-app-deployer".into(),
                "kubenova-app-deployer".into(),
                1
            )
        ]
    );
    assert_eq!(
        out.role_bindings[0].subjects.as_ref().unwrap()[0].name,
        "kubenova:project:acme:web:owner"
    );
    let sa = &out.role_bindings[1].subjects.as_ref().unwrap()[2];
    assert_eq!(
        (sa.kind.as_str(), sa.name.as_str(), sa.namespace.as_deref()),
        ("ServiceAccount", "deployer", Some("ci"))
    );
    assert_eq!(
        out.resource_quota.unwrap().metadata.namespace.as_deref(),
        Some(ns.as_str())
    );
    assert!(
        translate_project_offline(&np("acme-owner", "web", json!({"tenant": "acme"})))
            .unwrap()
            .resource_quota
            .is_none()
    );
}

#[test]
fn projects_of_two_tenants_never_collide_and_stay_home() {
    let a = translate_project_offline(&np("a-owner", "b-c", json!({"tenant": "a"}))).unwrap();
    let b = translate_project_offline(&np("a-b-owner", "c", json!({"tenant": "a-b"}))).unwrap();
    assert_ne!(a.namespace.metadata.name, b.namespace.metadata.name);
    // A project of tenant "victim" created in attacker's owner namespace is refused.
    let e = translate_project_offline(&np("attacker-owner", "web", json!({"tenant": "victim"})))
        .unwrap_err();
    assert_eq!(e.reason(), "WrongNamespace");
    let e = translate_project_offline(&np(
        "acme-owner",
        "web",
        json!({"tenant": "acme", "access": ["bob", "developer:bob"]}),
    ))
    .unwrap_err();
    assert_eq!(e.reason(), "InvalidSpec");
}

#[test]
fn app_becomes_an_application() {
    let ns = project_namespace("acme", "web");
    let app = translate_app(&na(&ns, "shop", json!({"tenant": "acme", "project": "web", "revision": 4,
        "components": [
            {"name": "fe", "type": "webservice", "properties": {"image": "nginx"}, "traits": [{"type": "scaler", "properties": {"replicas": 5}}]},
            {"name": "be", "type": "worker", "dependsOn": ["fe"]}],
        "traits": [{"type": "scaler", "properties": {"replicas": 1}}, {"type": "labels", "properties": {"a": "b"}}],
        "policies": [{"type": "override", "properties": {"components": [{"name": "fe", "properties": {"image": "nginx:2"}}]}}],
        "workflow": {"steps": [{"name": "deploy", "type": "deploy", "properties": {"policies": ["override"]}}]}})), &open_rules())
    .unwrap();
    assert_eq!(app["apiVersion"], "core.oam.dev/v1beta1");
    assert_eq!(app["metadata"]["namespace"], ns.as_str());
    assert_eq!(app["metadata"]["annotations"]["kubenova.io/revision"], "4");
    assert_eq!(
        app["metadata"]["annotations"]["app.oam.dev/publishVersion"],
        "r4"
    );
    assert_eq!(app["metadata"]["ownerReferences"][0]["uid"], "u-app");
    let c = &app["spec"]["components"];
    // The component's own scaler wins over the app-level one; labels is added.
    assert_eq!(
        c[0]["traits"],
        json!([{"type": "scaler", "properties": {"replicas": 5}}, {"type": "labels", "properties": {"a": "b"}}])
    );
    assert_eq!(c[1]["traits"][0]["properties"]["replicas"], 1);
    assert_eq!(c[1]["dependsOn"], json!(["fe"]));
    assert_eq!(app["spec"]["policies"][0]["name"], "override");
    assert_eq!(app["spec"]["workflow"]["steps"][0]["type"], "deploy");
}

#[test]
fn suspended_app_waits_in_a_suspend_step() {
    let ns = project_namespace("acme", "web");
    let base = json!({"tenant": "acme", "project": "web", "suspended": true,
        "components": [{"name": "fe", "type": "webservice"}],
        "policies": [{"name": "here", "type": "override", "properties": {"components": [{"name": "fe"}]}}]});
    let app = translate_app(&na(&ns, "shop", base.clone()), &open_rules()).unwrap();
    assert_eq!(
        app["spec"]["workflow"]["steps"],
        json!([{"name": "kubenova-suspend", "type": "suspend"}, {"name": "deploy", "type": "deploy", "properties": {"policies": ["here"]}}])
    );
    assert_eq!(
        app["metadata"]["annotations"]["kubenova.io/suspended"],
        "true"
    );
    let mut running = base;
    running["suspended"] = json!(false);
    let app = translate_app(&na(&ns, "shop", running), &open_rules()).unwrap();
    assert!(app["spec"].get("workflow").is_none());
    assert!(app["metadata"].get("annotations").is_none());
}

#[test]
fn bad_apps_produce_nothing() {
    let ns = project_namespace("acme", "web");
    let rules = open_rules();
    let e = translate_app(
        &na(
            "acme-apps",
            "x",
            json!({"tenant": "acme", "project": "web", "components": [{"name": "a", "type": "w"}]}),
        ),
        &rules,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "WrongNamespace");
    let e = translate_app(
        &na(
            &ns,
            "x",
            json!({"tenant": "acme", "project": "web",
            "components": [{"name": "a", "type": "w", "dependsOn": ["zz"]}]}),
        ),
        &rules,
    )
    .unwrap_err();
    assert!(e.to_string().contains("dependsOn"), "{e}");
    let e = translate_app(
        &na(
            &ns,
            "x",
            json!({"tenant": "acme", "project": "web", "components": []}),
        ),
        &rules,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "InvalidSpec");
}

#[test]
fn apps_stay_within_their_plan() {
    // A NovaApp created directly in the cluster is held to its tenant's plan like one
    // written through the manager: raw objects, objects in other namespaces or clusters,
    // and images from other registries are refused, and nothing is produced.
    let ns = project_namespace("acme", "web");
    let rules = gold_rules();
    for (spec, reason, field) in [
        (
            json!({"components": [{"name": "a", "type": "k8s-objects", "properties": {"objects": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "pwn"}, "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}}]}}]}),
            "NotAllowedByPlan",
            "components[0].type",
        ),
        (
            json!({"components": [{"name": "a", "type": "webservice", "properties": {"image": "nginx"}}],
                "policies": [{"name": "t", "type": "topology", "properties": {"clusters": ["other"]}}]}),
            "InvalidSpec",
            "policies[0].properties.clusters",
        ),
        (
            json!({"components": [{"name": "a", "type": "webservice", "properties": {"image": "evil.example.com/x"}}]}),
            "NotAllowedByPlan",
            "components[0].properties.image",
        ),
        (
            json!({"components": [{"name": "a", "type": "webservice"}],
                "workflow": {"steps": [{"name": "s", "type": "apply-object", "properties": {"value": {}}}]}}),
            "NotAllowedByPlan",
            "workflow.steps[0].type",
        ),
    ] {
        let mut spec = spec;
        spec["tenant"] = json!("acme");
        spec["project"] = json!("web");
        let e = translate_app(&na(&ns, "x", spec), &rules).unwrap_err();
        assert_eq!(e.reason(), reason, "{e}");
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn policyset_traits_and_policies_are_added_to_every_app() {
    let ns = project_namespace("acme", "web");
    let app = translate_app(
        &na(
            &ns,
            "shop",
            json!({"tenant": "acme", "project": "web", "components": [
                {"name": "web", "type": "webservice", "properties": {"image": "nginx"},
                 "traits": [{"type": "scaler", "properties": {"replicas": 1}}]},
                {"name": "nightly", "type": "cron-task", "properties": {"image": "busybox", "schedule": "0 0 * * *"}}]}),
        ),
        &gold_rules(),
    )
    .unwrap();
    let web = &app["spec"]["components"][0]["traits"];
    // The app's own scaler wins; the plan's securitycontext, annotations and update
    // strategy are added; the cron task (a CronJob) gets none of them.
    assert_eq!(
        web.as_array()
            .unwrap()
            .iter()
            .map(|t| t["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "scaler",
            "securitycontext",
            "annotations",
            "k8s-update-strategy"
        ]
    );
    assert_eq!(web[0]["properties"]["replicas"], 1);
    assert_eq!(web[1]["properties"]["allowPrivilegeEscalation"], false);
    assert!(app["spec"]["components"][1].get("traits").is_none());

    let catalog = Catalog::builtin()
        .merged_with(
            kubenova_api::catalog::CatalogFile::from_str_with_format(
                r#"{"policysets": [{"name": "gc", "rules": [{"kind": "velaPolicy", "policyType": "garbage-collect", "spec": {"keepLegacyResource": true}}]}]}"#,
                kubenova_api::catalog::Format::Json,
            )
            .unwrap(),
        )
        .unwrap();
    let rules =
        kubenova_api::apprules::AppRules::resolve(&catalog, "baseline", &["gc".into()]).unwrap();
    let app = translate_app(
        &na(&ns, "shop", json!({"tenant": "acme", "project": "web", "components": [{"name": "web", "type": "webservice"}]})),
        &rules,
    )
    .unwrap();
    assert_eq!(
        app["spec"]["policies"],
        json!([{"name": "kubenova-garbage-collect", "type": "garbage-collect", "properties": {"keepLegacyResource": true}}])
    );
}

#[test]
fn capsule_status_maps_to_tenant_verdicts() {
    let t = |status: Value| json!({"metadata": {"generation": 2}, "status": status});
    assert_eq!(tenant_verdict(None).phase, NovaPhase::Reconciling);
    let ready = t(
        json!({"state": "Active", "observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}]}),
    );
    assert_eq!(tenant_verdict(Some(&ready)).phase, NovaPhase::Ready);
    let stale = t(
        json!({"state": "Active", "observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}),
    );
    assert_eq!(tenant_verdict(Some(&stale)).phase, NovaPhase::Reconciling);
    let not_ready = t(
        json!({"state": "Active", "conditions": [{"type": "Ready", "status": "False", "reason": "Reconciling"}]}),
    );
    assert_eq!(
        tenant_verdict(Some(&not_ready)).phase,
        NovaPhase::Reconciling
    );
    let failed = t(
        json!({"state": "Active", "conditions": [{"type": "Ready", "status": "False", "reason": "Failed", "message": "boom"}]}),
    );
    let v = tenant_verdict(Some(&failed));
    assert_eq!(
        (v.phase, v.message.as_str()),
        (NovaPhase::Degraded, "Capsule: boom")
    );
    let cordoned =
        t(json!({"state": "Cordoned", "conditions": [{"type": "Ready", "status": "True"}]}));
    assert_eq!(tenant_verdict(Some(&cordoned)).phase, NovaPhase::Degraded);
    assert_eq!(
        project_verdict(Some(&json!({"status": {"phase": "Active"}}))).phase,
        NovaPhase::Ready
    );
    assert_eq!(project_verdict(None).phase, NovaPhase::Reconciling);
}

#[test]
fn vela_status_maps_to_app_verdicts() {
    let cases = [
        ("running", NovaPhase::Ready, "Running"),
        ("runningWorkflow", NovaPhase::Reconciling, "RunningWorkflow"),
        ("rendering", NovaPhase::Reconciling, "Rendering"),
        ("starting", NovaPhase::Reconciling, "Starting"),
        (
            "generatingPolicy",
            NovaPhase::Reconciling,
            "GeneratingPolicy",
        ),
        ("workflowFailed", NovaPhase::Degraded, "WorkflowFailed"),
        ("unhealthy", NovaPhase::Degraded, "Unhealthy"),
        (
            "workflowTerminated",
            NovaPhase::Degraded,
            "WorkflowTerminated",
        ),
        ("workflowSuspending", NovaPhase::Suspended, "Suspended"),
        ("deleting", NovaPhase::Deleting, "Deleting"),
    ];
    for (vela, phase, reason) in cases {
        let v = app_verdict(Some(&json!({"status": {"status": vela}})));
        assert_eq!((v.phase, v.reason.as_str()), (phase, reason), "{vela}");
    }
    let v = app_verdict(Some(
        &json!({"status": {"status": "unhealthy", "services": [{"name": "fe", "healthy": false, "message": "CrashLoopBackOff"}]}}),
    ));
    assert!(v.message.contains("fe: CrashLoopBackOff"), "{}", v.message);
    let suspended = app_verdict(Some(&json!({"status": {"status": "workflowSuspending"}})));
    let conds = suspended.conditions(Some(3), &time(0));
    let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.observed_generation
        ),
        ("False", "Suspended", Some(3))
    );
    assert_eq!(app_verdict(None).phase, NovaPhase::Reconciling);
}

/// An app with hundreds of unhealthy services gets a bounded message: the status the
/// operator writes and reports stays within what the manager stores.
#[test]
fn app_messages_are_bounded_at_the_source() {
    let services: Vec<Value> = (0..500)
        .map(|i| json!({"name": format!("svc-{i}"), "healthy": false, "message": "Back-off restarting failed container ".repeat(4)}))
        .collect();
    let v = app_verdict(Some(
        &json!({"status": {"status": "unhealthy", "services": services}}),
    ));
    assert_eq!(v.phase, NovaPhase::Degraded);
    assert!(
        v.message.len() <= kubenova_api::agent::MAX_STATUS_MESSAGE_BYTES,
        "{}",
        v.message.len()
    );
    assert!(v.message.contains("svc-0: Back-off") && v.message.ends_with("bytes cut]"));
    let conds = v.conditions(Some(1), &time(0));
    assert!(conds.iter().all(|c| c.message.len() <= 4096));
}

#[test]
fn conditions_only_move_when_status_changes() {
    let running = app_verdict(Some(&json!({"status": {"status": "running"}})));
    let first = next_status(None, &running, Some(1), vec![], &time(100)).unwrap();
    assert_eq!(first.phase, Some(NovaPhase::Ready));
    assert_eq!(first.conditions.len(), 3);
    assert!(
        first
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
    // Same observation later: no write at all.
    assert!(next_status(Some(&first), &running, Some(1), vec![], &time(200)).is_none());
    // New generation, same status: written, but transition times are kept.
    let second = next_status(Some(&first), &running, Some(2), vec![], &time(300)).unwrap();
    assert!(
        second
            .conditions
            .iter()
            .all(|c| c.last_transition_time == time(100))
    );
    // Status flips: Ready and Degraded transition now, Reconciling (still False) keeps its time.
    let failed = app_verdict(Some(&json!({"status": {"status": "workflowFailed"}})));
    let third = next_status(Some(&second), &failed, Some(2), vec![], &time(400)).unwrap();
    let at = |t: &str| third.condition(t).unwrap().last_transition_time.clone();
    assert_eq!(
        (at("Ready"), at("Degraded"), at("Reconciling")),
        (time(400), time(400), time(100))
    );
    // Foreign conditions are preserved by merge_conditions.
    let mut foreign = third.conditions.clone();
    foreign[0].type_ = "Custom".into();
    let (merged, changed) = merge_conditions(&foreign, failed.conditions(Some(2), &time(500)));
    assert!(changed);
    assert_eq!(merged.len(), 4);
    let (_, changed) = merge_conditions(&third.conditions, failed.conditions(Some(2), &time(600)));
    assert!(!changed);
}

#[test]
fn render_reads_many_documents_and_reports_the_bad_one() {
    let cat = Catalog::builtin_ref();
    let yaml = "apiVersion: kubenova.io/v1alpha1\nkind: NovaTenant\nmetadata: {name: t1}\nspec: {plan: baseline}\n---\napiVersion: kubenova.io/v1alpha1\nkind: NovaProject\nmetadata: {name: p}\nspec: {tenant: t1}\n---\napiVersion: kubenova.io/v1alpha1\nkind: NovaApp\nmetadata: {name: a}\nspec: {tenant: t1, project: p, components: [{name: a, type: webservice}]}\n";
    let out = render(yaml, cat).unwrap();
    // Tenant + 2 namespaces; namespace, ServiceAccount, 5 RoleBindings; Application.
    assert_eq!(out.matches("---\n").count(), 3 + 7 + 1);
    assert!(
        !out.contains("ownerReferences"),
        "offline objects have no uid"
    );
    assert!(out.contains(&format!("namespace: {}", project_namespace("t1", "p"))));
    let bad = format!(
        "{yaml}---\napiVersion: kubenova.io/v1alpha1\nkind: NovaTenant\nmetadata: {{name: t2}}\nspec: {{plan: gold, plna: x}}\n"
    );
    let e = render(&bad, cat).unwrap_err();
    assert!(
        e.to_string().starts_with("document 4: NovaTenant:") && e.to_string().contains("plna"),
        "{e}"
    );
    let e = render("apiVersion: v1\nkind: ConfigMap\n", cat).unwrap_err();
    assert!(matches!(e, RenderError::UnknownKind { doc: 1, .. }), "{e}");
    let e = render("apiVersion: kubenova.io/v1alpha1\nkind: NovaTenant\nmetadata: {name: t}\nspec: {plan: nope}\n", cat).unwrap_err();
    assert!(e.to_string().contains("unknown plan"), "{e}");
    // An app is rendered under its tenant's plan, so the tenant must come first.
    let app_only = yaml.split("---\n").nth(2).unwrap();
    let e = render(app_only, cat).unwrap_err();
    assert!(
        matches!(&e, RenderError::MissingTenant { doc: 1, tenant, .. } if tenant == "t1"),
        "{e}"
    );
}

#[test]
fn reserved_labels_are_refused_by_the_translations() {
    // Created directly in the cluster (the CRD's CEL rule aside), such an object is
    // refused as a whole: nothing is produced.
    let cat = Catalog::builtin_ref();
    for key in [
        "pod-security.kubernetes.io/enforce",
        "capsule.clastix.io/tenant",
        "kubenova.io/tenant",
        "app.oam.dev/x",
    ] {
        let e = translate_tenant(
            &nt(
                "acme",
                json!({"plan": "gold", "labels": {key: "privileged"}}),
            ),
            cat,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "InvalidSpec", "{e}");
        assert!(
            e.to_string().contains(&format!("labels.{key:?}"))
                && e.to_string().contains("reserved"),
            "{e}"
        );
        let e = translate_project(
            &np(
                "acme-owner",
                "web",
                json!({"tenant": "acme", "labels": {key: "privileged"}}),
            ),
            None,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "InvalidSpec", "{e}");
        assert!(
            e.to_string().contains(&format!("labels.{key:?}"))
                && e.to_string().contains("reserved"),
            "{e}"
        );
    }
}

#[test]
fn capsule_forbids_reserved_namespace_metadata_to_tenant_owners() {
    let out =
        translate_tenant(&nt("acme", json!({"plan": "gold"})), Catalog::builtin_ref()).unwrap();
    let opts = &out.tenant["spec"]["namespaceOptions"];
    let pattern = kubenova_api::validate::reserved_key_pattern();
    assert_eq!(opts["forbiddenLabels"], json!({"deniedRegex": pattern}));
    assert_eq!(
        opts["forbiddenAnnotations"],
        json!({"deniedRegex": pattern})
    );
}

#[test]
fn every_namespace_gets_the_tenant_pod_security_level() {
    let cat = Catalog::builtin_ref();
    let psa = |plan: &str, extra: Value| {
        let mut spec = json!({"plan": plan});
        if let Value::Object(m) = extra {
            spec.as_object_mut().unwrap().extend(m);
        }
        tenant_pod_security(&nt("acme", spec), cat)
    };
    let restricted = psa("platinum", json!({})).unwrap().unwrap();
    assert_eq!(restricted.level.as_str(), "restricted");
    assert_eq!(
        psa("gold", json!({})).unwrap().unwrap().level.as_str(),
        "baseline"
    );
    // The strictest podSecurity rule of the effective policysets wins; none = no label.
    let both = psa(
        "gold",
        json!({"policysets": ["pod-security-baseline", "pod-security-restricted"]}),
    )
    .unwrap()
    .unwrap();
    assert_eq!(both, restricted);
    assert_eq!(
        psa("gold", json!({"policysets": ["tenant-isolation"]})).unwrap(),
        None
    );
    assert_eq!(
        psa("diamond", json!({})).unwrap_err().reason(),
        "UnknownPlan"
    );
    assert_eq!(
        psa("gold", json!({"policysets": ["nope"]}))
            .unwrap_err()
            .reason(),
        "UnknownPolicyset"
    );

    // Tenant namespaces and project namespaces carry the same level.
    let tenant = translate_tenant(&nt("acme", json!({"plan": "platinum"})), cat).unwrap();
    let project = translate_project(
        &np("acme-owner", "web", json!({"tenant": "acme"})),
        Some(&restricted),
    )
    .unwrap();
    let enforce = |labels: &std::collections::BTreeMap<String, String>| {
        (
            labels.get("pod-security.kubernetes.io/enforce").cloned(),
            labels
                .get("pod-security.kubernetes.io/enforce-version")
                .cloned(),
        )
    };
    let want = (
        Some("restricted".to_owned()),
        Some(restricted.version.clone()),
    );
    for ns in tenant.namespaces.iter().chain([&project.namespace]) {
        assert_eq!(
            enforce(ns.metadata.labels.as_ref().unwrap()),
            want,
            "{:?}",
            ns.metadata.name
        );
    }
    // Without the tenant (offline render of a lone project) there is no level to set.
    let lone =
        translate_project(&np("acme-owner", "web", json!({"tenant": "acme"})), None).unwrap();
    assert_eq!(
        enforce(lone.namespace.metadata.labels.as_ref().unwrap()),
        (None, None)
    );
}

#[test]
fn render_takes_the_project_level_from_a_tenant_in_the_same_input() {
    let cat = Catalog::builtin_ref();
    let project = "apiVersion: kubenova.io/v1alpha1\nkind: NovaProject\nmetadata: {name: p}\nspec: {tenant: t1}\n";
    let tenant = "apiVersion: kubenova.io/v1alpha1\nkind: NovaTenant\nmetadata: {name: t1}\nspec: {plan: platinum}\n";
    let pns = project_namespace("t1", "p");
    // The project may come before its tenant.
    let out = render(&format!("{project}---\n{tenant}"), cat).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&out).unwrap();
    let ns = docs
        .iter()
        .find(|d| d["kind"] == "Namespace" && d["metadata"]["name"] == pns.as_str())
        .unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // Alone, the project namespace has no level (the operator sets it from the tenant).
    let out = render(project, cat).unwrap();
    assert!(!out.contains("pod-security.kubernetes.io"), "{out}");
}

#[test]
fn project_gets_its_app_identity() {
    let out = translate_project(
        &np(
            "acme-owner",
            "web",
            json!({"tenant": "acme", "access": ["bob"]}),
        ),
        None,
    )
    .unwrap();
    let ns = project_namespace("acme", "web");
    let ours = |md: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let l = md.labels.as_ref().unwrap();
        assert_eq!(md.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(l["app.kubernetes.io/managed-by"], "kubenova-operator");
        assert_eq!(l["kubenova.io/tenant"], "acme");
        assert_eq!(l["kubenova.io/project"], "web");
        assert_eq!(
            md.annotations.as_ref().unwrap()["kubenova.io/owner"],
            "novaprojects.kubenova.io/acme-owner/web"
        );
    };
    assert_eq!(
        (APP_SERVICE_ACCOUNT, APP_DEPLOYER_ROLE),
        ("kubenova-app", "kubenova-app-deployer")
    );
    let sa = &out.service_account;
    assert_eq!(sa.metadata.name.as_deref(), Some(APP_SERVICE_ACCOUNT));
    assert_eq!(sa.automount_service_account_token, Some(false));
    ours(&sa.metadata);
    for (name, role) in [
        (APP_SERVICE_ACCOUNT, "edit"),
        (APP_DEPLOYER_ROLE, APP_DEPLOYER_ROLE),
    ] {
        let rb = out
            .role_bindings
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("RoleBinding {name}"));
        ours(&rb.metadata);
        assert_eq!(
            (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
            ("ClusterRole", role)
        );
        let subjects = rb.subjects.as_ref().unwrap();
        assert_eq!(subjects.len(), 1, "{name}: only the app's ServiceAccount");
        assert_eq!(
            (
                subjects[0].kind.as_str(),
                subjects[0].name.as_str(),
                subjects[0].namespace.as_deref()
            ),
            ("ServiceAccount", APP_SERVICE_ACCOUNT, Some(ns.as_str()))
        );
    }
    // Applied after the namespace, the ServiceAccount before the bindings naming it.
    let kinds: Vec<String> = out
        .to_values()
        .iter()
        .map(|v| {
            format!(
                "{}/{}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds[..3],
        [
            format!("Namespace/{ns}"),
            "ServiceAccount/kubenova-app".to_owned(),
            "RoleBinding/kubenova-owner".to_owned()
        ]
    );
}
