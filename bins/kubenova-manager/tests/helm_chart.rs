//! The `kubenova-manager` Helm chart (`deploy/helm/kubenova-manager`), checked with the
//! real Helm engine (helm-python-sdk, `KUBENOVA_HELM_PYTHON`; skipped loudly without it,
//! a failure with `KUBENOVA_REQUIRE_HELM=1`): `helm lint --strict`, a value matrix that
//! sets every documented option, strict validation of every rendered built-in object
//! against the Kubernetes 1.36 schemas (kubernetes-validate), the restricted Pod Security
//! Standard, refusals (unknown values, SQLite with several replicas, ...) and the committed
//! rendering `deploy/helm/rendered/kubenova-manager.yaml`
//! (`KUBENOVA_BLESS=1 cargo test -p kubenova-manager --test helm_chart` rewrites it).
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

#[path = "../../../deploy/helm/tests/harness.rs"]
mod harness;

use clap::CommandFactory as _;
use serde_json::{Value, json};

const CHART: &str = "kubenova-manager";
const RELEASE: &str = "kn";
const NAMESPACE: &str = "kubenova";
const NS: &str = NAMESPACE;
/// Kinds of other projects' CRDs (Gateway API, cert-manager, Prometheus Operator): no
/// schema of theirs is vendored here, so they are checked field by field below instead.
const CRD_KINDS: [&str; 4] = [
    "HTTPRoute",
    "Certificate",
    "ServiceMonitor",
    "PrometheusRule",
];

/// The case with a catalog overlay, an OIDC issuer and the operator settings (run for real
/// by `the_rendered_pod_runs_the_real_manager`).
const CATALOG_CASE: &str = "catalog, OIDC, operator and URLs";
/// A JWKS with one EC P-256 public key.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"idp-1","use":"sig","alg":"ES256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fn matrix() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", json!({})),
        (
            "postgres with existing secrets, three replicas",
            json!({
                "replicaCount": 3,
                "database": {"type": "postgres", "postgres": {"existingSecret": "kubenova-db", "secretKey": "dsn"}},
                "keys": {
                    "kekSecret": "kubenova-kek", "kekSecretKey": "keys",
                    "jwt": {"secret": "kubenova-jwt", "secretKey": "hs256"},
                },
                "podDisruptionBudget": {"maxUnavailable": "50%"},
            }),
        ),
        (
            "es256 and the agent CA",
            json!({
                "keys": {"jwt": {
                    "algorithm": "es256", "es256Secret": "kubenova-es256",
                    "issuer": "https://kubenova.example.com", "audience": "platform",
                }},
                "agent": {"caSecret": "kubenova-ca", "caSecretKey": "ca.pem"},
                "oidc": {"config": {
                    "issuers": [{
                        "issuer": "https://keycloak.example.com/realms/platform", "audience": "kubenova",
                        "subjectClaim": "email", "groupsClaim": "groups", "subjectPrefix": "", "groupsPrefix": "kc:",
                        "roleClaims": false,
                        "login": {"scopes": ["openid", "email", "groups", "offline_access"], "displayName": "Example SSO"},
                    }, {
                        "issuer": "https://accounts.google.com", "audience": "1234-abc.apps.googleusercontent.com",
                        "subjectClaim": "email",
                        "login": {"clientSecret": "GOCSPX-installed-app-secret", "displayName": "Google"},
                    }],
                    "platformRoles": {"admin": ["kc:platform-admins"], "ops": ["kc:sre"], "readOnly": ["kc:auditors"]},
                    "tokenExchange": {
                        "issuers": [{"issuer": "https://token.actions.githubusercontent.com"}],
                        "policies": [{
                            "name": "acme-web-deploy", "issuer": "https://token.actions.githubusercontent.com",
                            "audience": "https://kubenova.example.com",
                            "conditions": {"repository": "acme/web", "ref": "refs/heads/*"},
                            "grant": {"tenant": "22222222-2222-2222-2222-222222222222", "project": "33333333-3333-3333-3333-333333333333", "role": "developer"},
                            "ttl": "15m",
                        }],
                    },
                }},
            }),
        ),
        (
            CATALOG_CASE,
            json!({
                "oidc": {"issuer": "https://login.example.com", "audience": "kubenova", "jwks": JWKS},
                "catalog": {"plans": [{
                    "name": "team", "description": "A team plan.",
                    "tenantQuotas": {"requests.cpu": "8", "limits.cpu": "8", "requests.memory": "16Gi", "limits.memory": "16Gi", "pods": "100"},
                    "namespaceQuota": 5,
                    "limitRange": {"defaultRequest": {"cpu": "100m", "memory": "128Mi"}, "default": {"cpu": "500m", "memory": "512Mi"}, "max": {"cpu": "4", "memory": "8Gi"}},
                    "prices": {"currency": "USD", "cpuCoreHour": "0.040", "memoryGibHour": "0.0050", "storageGibHour": "0.00014", "loadBalancerHour": "0.025"},
                    "policysets": ["tenant-isolation", "pod-security-baseline", "baseline"],
                }]},
                "defaultPlan": "team",
                "operator": {"image": "registry.example.com/kubenova/operator:0.1.0", "helmInstaller": true},
                "agent": {"managerUrl": "https://agents.kubenova.example.com"},
                "externalUrl": "https://kubenova.example.com",
                "logLevel": "debug",
                "extraEnv": [{"name": "KUBENOVA_MAX_KUBECONFIG_TTL", "value": "8h"}],
            }),
        ),
        (
            "ingress with cert-manager TLS, network policy, monitoring, placement",
            json!({
                "image": {
                    "repository": "registry.example.com/kubenova/manager", "tag": "0.1.0-rc1",
                    "digest": format!("sha256:{}", "a".repeat(64)), "pullPolicy": "Always",
                },
                "imagePullSecrets": [{"name": "regcred"}],
                "ingress": {
                    "enabled": true, "className": "nginx", "host": "kubenova.example.com", "path": "/api",
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "2m"},
                },
                "tls": {"certManager": {"enabled": true, "issuerRef": {"name": "letsencrypt", "kind": "Issuer"}}},
                "networkPolicy": {"enabled": true, "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]},
                "metrics": {
                    "serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prometheus"}},
                    "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"}},
                },
                "service": {"type": "LoadBalancer", "port": 8443, "annotations": {"example.com/lb": "internal"}},
                "serviceAccount": {"create": true, "name": "kubenova", "annotations": {"example.com/role": "manager"}},
                "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "4", "memory": "1Gi"}},
                "podAnnotations": {"example.com/team": "platform"},
                "podLabels": {"example.com/tier": "control-plane"},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "control-plane", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}
                ]}}},
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "kubenova-manager"}}}],
                "priorityClassName": "system-cluster-critical",
                "tests": {"image": "registry.example.com/mirror/busybox:1.37"},
                "database": {"sqlite": {"persistence": {"size": "5Gi", "storageClass": "fast", "accessModes": ["ReadWriteOncePod"], "keep": false}}},
            }),
        ),
        (
            "gateway API route, existing TLS secret and claim, autoscaling on Postgres",
            json!({
                "database": {
                    "type": "postgres",
                    "postgres": {"existingSecret": "kubenova-db"},
                    "sqlite": {"persistence": {"existingClaim": "unused-with-postgres"}},
                },
                "autoscaling": {"enabled": true, "minReplicas": 3, "maxReplicas": 9, "targetCPUUtilizationPercentage": 60},
                "httpRoute": {
                    "enabled": true, "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                    "hostnames": ["kubenova.example.com"], "annotations": {"example.com/route": "public"},
                },
                "ingress": {"enabled": true, "host": "kubenova.example.com"},
                "tls": {"secretName": "kubenova-tls"},
                "serviceAccount": {"create": false, "name": "existing-sa"},
                "podDisruptionBudget": {"enabled": false},
            }),
        ),
        (
            "sqlite on an existing claim",
            json!({"database": {"sqlite": {"persistence": {"existingClaim": "kubenova-data"}}}}),
        ),
    ]
}

fn objects(r: &[harness::Rendered]) -> Vec<Value> {
    r.iter().map(|r| r.object.clone()).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

fn env_of(deployment: &Value) -> Vec<Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone()
}

fn env_value(deployment: &Value, name: &str) -> Option<Value> {
    env_of(deployment).into_iter().find(|e| e["name"] == name)
}

/// Lint (strict) and render every case; every object validates strictly, every pod is
/// restricted, every documented option is exercised by some case.
#[test]
fn every_option_lints_renders_and_validates() {
    let Some(helm) = harness::helm() else { return };
    let chart = harness::chart(CHART);
    let defaults = harness::default_values(&chart);
    let matrix = matrix();
    assert_eq!(
        harness::uncovered_options(&defaults, &matrix),
        Vec::<String>::new(),
        "documented options no case of the matrix sets"
    );
    assert_eq!(
        harness::undocumented_keys(&chart),
        Vec::<String>::new(),
        "values.yaml keys without a comment"
    );
    let mut seen_kinds = std::collections::BTreeSet::new();
    for (case, values) in &matrix {
        let lint = helm.lint(&chart, values, NS);
        assert!(lint.is_empty(), "{case}: helm lint --strict: {lint:#?}");
        let (rendered, notes) = helm
            .render(&chart, values, RELEASE, NAMESPACE)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(notes.contains("admin token"), "{case}: NOTES: {notes}");
        let objects = objects(&rendered);
        let builtin: Vec<Value> = objects
            .iter()
            .filter(|o| !CRD_KINDS.contains(&o["kind"].as_str().unwrap()))
            .cloned()
            .collect();
        let failures = helm.validate(&builtin, "1.36.0");
        assert!(failures.is_empty(), "{case}: {failures:#?}");
        for o in &objects {
            seen_kinds.insert(o["kind"].as_str().unwrap().to_owned());
            assert!(o["metadata"]["labels"]["app.kubernetes.io/name"] == "kubenova-manager");
            if let Some(pod) = harness::pod_spec(o) {
                let v = harness::restricted_violations(&format!("{case}: {}", o["kind"]), pod);
                assert!(v.is_empty(), "{v:#?}");
            }
        }
        assert!(harness::wildcard_rules(&objects).is_empty());
        check_case(case, values, &objects);
    }
    for kind in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "Secret",
        "PersistentVolumeClaim",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Ingress",
        "HTTPRoute",
        "Certificate",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "Pod",
    ] {
        assert!(seen_kinds.contains(kind), "no case renders a {kind}");
    }
}

/// What each case must have produced.
fn check_case(case: &str, values: &Value, objects: &[Value]) {
    let d = find(objects, "Deployment").unwrap();
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    // The env the chart sets is what the manager reads.
    let cli: Vec<String> = kubenova_manager::Cli::command()
        .get_subcommands()
        .chain([&kubenova_manager::Cli::command()])
        .flat_map(|c| c.get_arguments().cloned().collect::<Vec<_>>())
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    // KUBENOVA_LOG and KUBENOVA_LOG_FORMAT are read by kubenova-telemetry (the logging
    // convention of every binary), POD_NAME only names the pod.
    let telemetry = [
        "POD_NAME",
        kubenova_telemetry::FILTER_VAR,
        kubenova_telemetry::FORMAT_VAR,
    ];
    for e in env_of(d) {
        let name = e["name"].as_str().unwrap();
        if !telemetry.contains(&name) {
            assert!(
                cli.iter().any(|c| c == name),
                "{case}: the manager does not read {name}"
            );
        }
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/api/v1/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/api/v1/readyz");
    let postgres = values["database"]["type"] == "postgres";
    let db = env_value(d, "DATABASE_URL").unwrap();
    if postgres {
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate", "{case}");
        assert_eq!(db["valueFrom"]["secretKeyRef"]["name"], "kubenova-db");
        assert!(find(objects, "PersistentVolumeClaim").is_none(), "{case}");
    } else {
        assert_eq!(d["spec"]["strategy"]["type"], "Recreate", "{case}");
        assert_eq!(d["spec"]["replicas"], 1);
        assert!(
            db["value"]
                .as_str()
                .unwrap()
                .starts_with("sqlite:///var/lib/kubenova/")
        );
        let claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap();
        match get_str(values, "database.sqlite.persistence.existingClaim") {
            Some(existing) => {
                assert_eq!(claim, existing);
                assert!(find(objects, "PersistentVolumeClaim").is_none(), "{case}");
            }
            None => {
                let pvc = find(objects, "PersistentVolumeClaim").unwrap();
                assert_eq!(pvc["metadata"]["name"], claim);
                let keep = values["database"]["sqlite"]["persistence"]["keep"] != false;
                assert_eq!(
                    pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
                    keep,
                    "{case}"
                );
            }
        }
    }
    // Keys: from the named Secrets, else from the generated one (kept on uninstall).
    let kek = env_value(d, "KUBENOVA_KEKS").unwrap();
    let keys_secret = objects
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "kn-kubenova-manager-keys");
    match get_str(values, "keys.kekSecret") {
        Some(s) => assert_eq!(kek["valueFrom"]["secretKeyRef"]["name"], s),
        None => {
            let secret = keys_secret.unwrap();
            assert_eq!(
                secret["metadata"]["annotations"]["helm.sh/resource-policy"],
                "keep"
            );
            let keks = decode(&secret["data"]["keks"]);
            let (kid, key) = keks.split_once(':').unwrap();
            assert_eq!(kid, "chart-1");
            assert_eq!(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key)
                    .unwrap()
                    .len(),
                32
            );
        }
    }
    if values["keys"]["jwt"]["algorithm"] == "es256" {
        assert!(env_value(d, "KUBENOVA_JWT_SECRET").is_none());
        assert_eq!(
            env_value(d, "KUBENOVA_JWT_ES256_PUBLIC_KEY").unwrap()["value"],
            "/etc/kubenova/jwt/public.pem"
        );
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "kubenova-es256")
        );
    } else if get_str(values, "keys.jwt.secret").is_none() {
        let secret = keys_secret.unwrap();
        assert!(decode(&secret["data"]["jwt-secret"]).len() >= 32);
    }
    if let Some(url) = get_str(values, "externalUrl") {
        assert_eq!(env_value(d, "KUBENOVA_EXTERNAL_URL").unwrap()["value"], url);
    }
    if values["tls"]["certManager"]["enabled"] == true {
        let cert = find(objects, "Certificate").unwrap();
        assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
        assert_eq!(cert["spec"]["issuerRef"]["name"], "letsencrypt");
        assert_eq!(cert["spec"]["dnsNames"], json!(["kubenova.example.com"]));
        let ingress = find(objects, "Ingress").unwrap();
        assert_eq!(
            ingress["spec"]["tls"][0]["secretName"],
            cert["spec"]["secretName"]
        );
        // The public URL follows from the TLS Ingress.
        assert_eq!(
            env_value(d, "KUBENOVA_EXTERNAL_URL").unwrap()["value"],
            "https://kubenova.example.com"
        );
    }
    if let Some(route) = find(objects, "HTTPRoute") {
        assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(route["spec"]["parentRefs"][0]["name"], "public");
        let backend = &route["spec"]["rules"][0]["backendRefs"][0];
        let svc = find(objects, "Service").unwrap();
        assert_eq!(backend["name"], svc["metadata"]["name"]);
        assert_eq!(backend["port"], svc["spec"]["ports"][0]["port"]);
    }
    if let Some(sm) = find(objects, "ServiceMonitor") {
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
        assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
        let rule = find(objects, "PrometheusRule").unwrap();
        let alerts = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
        assert!(
            alerts
                .iter()
                .all(|a| a["alert"].is_string() && a["expr"].is_string())
        );
    }
    if values["autoscaling"]["enabled"] == true {
        assert!(
            d["spec"]["replicas"].is_null(),
            "the HPA owns the replica count"
        );
        assert_eq!(
            find(objects, "HorizontalPodAutoscaler").unwrap()["spec"]["maxReplicas"],
            9
        );
    }
    if values["podDisruptionBudget"]["enabled"] == false {
        assert!(find(objects, "PodDisruptionBudget").is_none());
    }
    if values["serviceAccount"]["create"] == false {
        assert!(find(objects, "ServiceAccount").is_none());
        assert_eq!(pod["serviceAccountName"], "existing-sa");
    }
    if let Some(digest) = get_str(values, "image.digest") {
        assert_eq!(
            c["image"],
            format!("registry.example.com/kubenova/manager@{digest}")
        );
    } else if values["image"].is_null() {
        assert_eq!(
            c["image"],
            format!(
                "ghcr.io/kubenova/kubenova-manager:{}",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
    let operator_image = env_value(d, "KUBENOVA_OPERATOR_IMAGE").unwrap();
    match get_str(values, "operator.image") {
        Some(image) => assert_eq!(operator_image["value"], image),
        None => assert_eq!(
            operator_image["value"],
            format!(
                "ghcr.io/kubenova/kubenova-operator:{}",
                env!("CARGO_PKG_VERSION")
            )
        ),
    }
    // Identity providers: the document the manager reads, as the manager parses and checks it.
    if values["oidc"]["config"].is_object() {
        let cm = find(objects, "ConfigMap").unwrap();
        let text = cm["data"]["oidc.json"].as_str().unwrap();
        kubenova_manager::api::oidc::OidcDocument::parse(text).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            values["oidc"]["config"]
        );
        assert_eq!(
            env_value(d, "KUBENOVA_OIDC_CONFIG").unwrap()["value"],
            "/etc/kubenova/config/oidc.json"
        );
    } else {
        assert!(env_value(d, "KUBENOVA_OIDC_CONFIG").is_none(), "{case}");
    }
    if values["catalog"].is_object() {
        let cm = find(objects, "ConfigMap").unwrap();
        let catalog: Value =
            serde_json::from_str(cm["data"]["catalog.json"].as_str().unwrap()).unwrap();
        assert_eq!(catalog, values["catalog"]);
        assert!(
            d["spec"]["template"]["metadata"]["annotations"]["checksum/config"].is_string(),
            "a changed catalog rolls the pods"
        );
    }
}

fn get_str<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    harness::get_path(v, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn decode(v: &Value) -> String {
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        v.as_str().unwrap(),
    )
    .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// What cannot work is refused at render time, saying why and what to do.
#[test]
fn bad_values_are_refused_with_their_reason() {
    let Some(helm) = harness::helm() else { return };
    let chart = harness::chart(CHART);
    let cases = [
        (
            json!({"replicas": 2}),
            "additional properties 'replicas' not allowed",
        ),
        (
            json!({"image": {"tagg": "1"}}),
            "additional properties 'tagg' not allowed",
        ),
        (
            json!({"ingress": {"enabled": true, "hosts": ["a"]}}),
            "'hosts' not allowed",
        ),
        (json!({"database": {"type": "mysql"}}), "database"),
        (
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelecter": {}}]}),
            "'labelSelecter' not allowed",
        ),
        (json!({"replicaCount": "two"}), "replicaCount"),
        (
            json!({"replicaCount": 2}),
            "database.type=sqlite supports exactly one replica (replicaCount is 2)",
        ),
        (
            json!({"autoscaling": {"enabled": true}}),
            "database.type=sqlite supports exactly one replica, so autoscaling.enabled=true cannot work",
        ),
        (
            json!({"database": {"type": "postgres"}}),
            "database.type=postgres needs database.postgres.existingSecret",
        ),
        (
            json!({"keys": {"jwt": {"algorithm": "es256"}}}),
            "keys.jwt.algorithm=es256 needs keys.jwt.es256Secret",
        ),
        (
            json!({"ingress": {"enabled": true}}),
            "ingress.enabled=true needs ingress.host",
        ),
        (
            json!({"httpRoute": {"enabled": true}}),
            "httpRoute.enabled=true needs httpRoute.parentRefs",
        ),
        (
            json!({"tls": {"certManager": {"enabled": true, "issuerRef": {"name": "x"}}}}),
            "tls.certManager.enabled=true issues the Ingress certificate",
        ),
        (
            json!({"oidc": {"jwks": JWKS}}),
            "oidc.jwks needs oidc.issuer",
        ),
        (
            json!({"oidc": {"issuer": "https://login.example.com", "config": {"issuers": [{"issuer": "https://idp.example.com", "audience": "kubenova"}]}}}),
            "oidc.config lists every issuer",
        ),
        (
            json!({"oidc": {"config": {"issuers": [{"issuer": "https://idp.example.com"}]}}}),
            "audience",
        ),
        (
            json!({"oidc": {"config": {"tokenExchange": {"issuers": [{"issuer": "https://ci.example.com"}], "policies": [{
                "name": "p", "issuer": "https://ci.example.com", "audience": "a", "conditions": {},
                "grant": {"tenant": "22222222-2222-2222-2222-222222222222", "role": "owner"}}]}}}}),
            "conditions",
        ),
        (
            json!({"oidc": {"config": {"tokenExchange": {"issuers": [{"issuer": "https://ci.example.com"}], "policies": [{
                "name": "p", "issuer": "https://ci.example.com", "audience": "a", "conditions": {"repository": "acme/web"},
                "grant": {"tenant": "22222222-2222-2222-2222-222222222222", "role": "admin"}}]}}}}),
            "role",
        ),
        (
            json!({"oidc": {"config": {"issuers": [{"issuer": "https://idp.example.com", "audience": "kubenova",
                "login": {"clientSecret": ""}}]}}}),
            "clientSecret",
        ),
        (
            json!({"oidc": {"config": {"issuers": [{"issuer": "https://idp.example.com", "audience": "kubenova",
                "login": {"clientSecret": "a\nb"}}]}}}),
            "clientSecret",
        ),
        (
            json!({"externalUrl": "kubenova.example.com"}),
            "externalUrl",
        ),
    ];
    for (values, want) in cases {
        let err = helm
            .render(&chart, &values, RELEASE, NAMESPACE)
            .err()
            .unwrap_or_else(|| panic!("{values} was accepted"));
        assert!(err.contains(want), "{values}: {err}");
    }
    // Several replicas are fine on Postgres.
    helm.render(
        &chart,
        &json!({"replicaCount": 4, "database": {"type": "postgres", "postgres": {"existingSecret": "db"}}}),
        RELEASE,
        NAMESPACE,
    )
    .unwrap();
}

/// The committed rendering with default values is the chart's (drift test).
#[test]
fn committed_rendering_matches_the_chart() {
    let Some(helm) = harness::helm() else { return };
    let chart = harness::chart(CHART);
    let (rendered, _) = helm.render(&chart, &json!({}), RELEASE, NAMESPACE).unwrap();
    harness::check_rendered("kubenova-manager.yaml", &rendered, |o| {
        if o["kind"] == "Secret" {
            for v in o["data"].as_object_mut().unwrap().values_mut() {
                *v = json!("<generated once, kept across upgrades>");
            }
        }
    });
}

#[test]
fn chart_version_is_the_workspace_version() {
    let text = std::fs::read_to_string(harness::chart(CHART).join("Chart.yaml")).unwrap();
    let chart: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
}

/// The generated keys are made once: an upgrade's rendering (`lookup` against a cluster
/// holding the first install's Secret) reads them back instead of generating new ones,
/// even with other values; a rendering with nothing to look up generates fresh ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_keep_the_generated_keys() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};

    let Some(helm) = harness::helm() else { return };
    let chart = harness::chart(CHART);
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kubeconfig, client) = harness::release_cluster(dir.path(), NAMESPACE).await;
    let keys_of = |objects: &[harness::Rendered]| {
        objects
            .iter()
            .find(|r| r.object["kind"] == "Secret")
            .map(|r| r.object.clone())
            .unwrap()
    };
    let render = |values: Value| {
        let (helm_chart, kc) = (chart.clone(), kubeconfig.clone());
        let helm = harness::Helm::from_env();
        tokio::task::spawn_blocking(move || {
            helm.render_live(&helm_chart, &values, RELEASE, NAMESPACE, &kc)
                .unwrap()
        })
    };
    // The first install: nothing to look up, the keys are generated.
    let first = keys_of(&render(json!({})).await.unwrap());
    let (other, _) = helm.render(&chart, &json!({}), RELEASE, NAMESPACE).unwrap();
    assert_ne!(
        first["data"],
        keys_of(&other)["data"],
        "each first install generates its own keys"
    );
    // Helm created the Secret; the upgrade (other values too) renders the same keys.
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(first.clone()).unwrap(),
        )
        .await
        .unwrap();
    for values in [json!({}), json!({"logLevel": "debug", "replicaCount": 1})] {
        let upgrade = keys_of(&render(values).await.unwrap());
        assert_eq!(
            upgrade["data"], first["data"],
            "an upgrade regenerated the keys"
        );
        assert_eq!(
            upgrade["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
    cluster.shutdown().await;
}

/// A real install, upgrade and uninstall with Helm into an emulated cluster: the objects
/// exist; an upgrade with other values changes the Deployment but not the generated keys;
/// uninstall removes everything but what is meant to stay (the keys Secret and the SQLite
/// PVC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_upgrade_uninstall_in_the_testkit() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
    use kube::api::Api;

    let Some(_) = harness::helm() else { return };
    let chart = harness::chart(CHART);
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kubeconfig, client) = harness::release_cluster(dir.path(), NAMESPACE).await;
    let release = |action: &'static str, values: Value| {
        let (c, kc) = (chart.clone(), kubeconfig.clone());
        tokio::task::spawn_blocking(move || {
            harness::Helm::from_env().release(action, &c, &values, RELEASE, NAMESPACE, &kc)
        })
    };
    let name = "kn-kubenova-manager";
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);

    if let Err(e) = release("install", json!({})).await.unwrap() {
        if harness::testkit_lacks_openapi(&e) {
            cluster.shutdown().await;
            return;
        }
        panic!("helm install: {e}");
    }
    let d = deployments.get(name).await.unwrap();
    services.get(name).await.unwrap();
    claims.get(&format!("{name}-data")).await.unwrap();
    let keys = secrets.get(&format!("{name}-keys")).await.unwrap().data;
    assert!(keys.as_ref().is_some_and(|k| k.contains_key("keks")));
    let log = |d: &Deployment| {
        serde_json::to_value(d).unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "KUBENOVA_LOG")
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(log(&d), "info");

    release("upgrade", json!({"logLevel": "debug"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(log(&deployments.get(name).await.unwrap()), "debug");
    assert_eq!(
        secrets.get(&format!("{name}-keys")).await.unwrap().data,
        keys,
        "the upgrade regenerated the keys"
    );

    release("rollback", json!({})).await.unwrap().unwrap();
    assert_eq!(log(&deployments.get(name).await.unwrap()), "info");

    release("uninstall", json!({})).await.unwrap().unwrap();
    assert!(deployments.get_opt(name).await.unwrap().is_none());
    assert!(services.get_opt(name).await.unwrap().is_none());
    // Kept on purpose: the keys and the database.
    assert_eq!(
        secrets.get(&format!("{name}-keys")).await.unwrap().data,
        keys
    );
    claims.get(&format!("{name}-data")).await.unwrap();
    // And nothing else.
    assert_eq!(
        harness::namespaced_objects(&client, NAMESPACE).await,
        [
            format!("PersistentVolumeClaim/{name}-data"),
            format!("Secret/{name}-keys")
        ],
        "uninstall left more than the documented PVC and keys Secret"
    );
    cluster.shutdown().await;
}

/// Runs the real `kubenova-manager` with exactly what the chart's pod would get: the
/// container's args and environment (Secret references resolved from the rendered keys
/// Secret), and its volumes (ConfigMap files written out, the data volume a directory),
/// with the pod's paths under a temporary root. The startup, liveness and readiness probe
/// paths answer 200, and the bootstrap admin token is got the way NOTES.txt says (SQLite
/// and, with `KUBENOVA_TEST_POSTGRES_URL`, Postgres) and works.
#[tokio::test]
async fn the_rendered_pod_runs_the_real_manager() {
    let Some(helm) = harness::helm() else { return };
    let chart = harness::chart(CHART);
    for (case, values) in matrix()
        .into_iter()
        .filter(|(case, _)| ["defaults", CATALOG_CASE].contains(case))
    {
        let (rendered, notes) = helm.render(&chart, &values, RELEASE, NAMESPACE).unwrap();
        run_pod(case, &objects(&rendered), &notes).await;
    }
    // Postgres, with the Secrets the values name (made here as an operator would).
    let Some(url) = pg_url() else { return };
    let (case, values) = matrix().swap_remove(1);
    assert_eq!(values["database"]["type"], "postgres");
    let db = format!("kn_chart_{}", uuid_like());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let secret = |name: &str, key: &str, value: &str| json!({"kind": "Secret", "metadata": {"name": name}, "data": {key: b64(value)}});
    let (rendered, notes) = helm.render(&chart, &values, RELEASE, NAMESPACE).unwrap();
    let mut objects = objects(&rendered);
    objects.extend([
        secret("kubenova-db", "dsn", &format!("{base}/{db}")),
        secret(
            "kubenova-kek",
            "keys",
            &format!("chart-1:{}", b64(&"k".repeat(32))),
        ),
        secret("kubenova-jwt", "hs256", &"s".repeat(48)),
    ]);
    run_pod(case, &objects, &notes).await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

/// The Postgres URL for tests, or `None` (skipped loudly) unless Postgres is required.
fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run the chart's Postgres cases !!!"
            );
            None
        }
    }
}

fn rendered_data(objects: &[Value], kind: &str, name: &str) -> serde_json::Map<String, Value> {
    let o = objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} is not rendered"));
    let mut data = o["data"].as_object().unwrap().clone();
    if kind == "Secret" {
        for v in data.values_mut() {
            *v = json!(decode(v));
        }
    }
    data
}

async fn run_pod(case: &str, objects: &[Value], notes: &str) {
    let d = find(objects, "Deployment").unwrap();
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let root = tempfile::tempdir().unwrap();
    let local = |p: &str| format!("{}{p}", root.path().display());
    // Volumes.
    for m in c["volumeMounts"].as_array().unwrap() {
        let dir = local(m["mountPath"].as_str().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        if let Some(cm) = volume["configMap"]["name"].as_str() {
            for (file, text) in rendered_data(objects, "ConfigMap", cm) {
                std::fs::write(format!("{dir}/{file}"), text.as_str().unwrap()).unwrap();
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubenova-manager"));
    cmd.env_clear().kill_on_drop(true);
    for a in c["args"].as_array().unwrap() {
        cmd.arg(a.as_str().unwrap());
    }
    let mut env = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = if name == "KUBENOVA_LISTEN" {
            addr.to_string()
        } else if let Some(v) = e["value"].as_str() {
            if v.starts_with('/') {
                local(v)
            } else {
                v.replace(
                    "sqlite:///",
                    &format!("sqlite://{}/", root.path().display()),
                )
            }
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let data = rendered_data(objects, "Secret", r["name"].as_str().unwrap());
            data[r["key"].as_str().unwrap()]
                .as_str()
                .unwrap()
                .to_owned()
        } else {
            "manager-0".to_owned()
        };
        env.push((name.to_owned(), value));
    }
    cmd.envs(env.iter().cloned());
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let http = reqwest::Client::new();
    let probes: Vec<&str> = ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| c[*p]["httpGet"]["path"].as_str().unwrap())
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for path in probes {
        loop {
            let url = format!("http://{addr}{path}");
            if let Ok(r) = http.get(&url).send().await
                && r.status() == 200
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                use tokio::io::AsyncReadExt as _;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .await
                    .unwrap();
                panic!("{case}: the manager exited ({status}) with the chart's settings:\n{err}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{case}: {path} never answered 200"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    // NOTES.txt's way to the bootstrap admin token: on SQLite the file in the data
    // volume; on Postgres `admin-token --print` in a pod (here: with another replica's
    // empty data directory).
    let token_path = "/var/lib/kubenova/admin.token";
    let token = if notes.contains(&format!("-- cat {token_path})")) {
        std::fs::read_to_string(local(token_path)).unwrap()
    } else {
        assert!(
            notes.contains("-- kubenova-manager admin-token --print)"),
            "{case}: {notes}"
        );
        let other = tempfile::tempdir().unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubenova-manager"))
            .args(["admin-token", "--print"])
            .env_clear()
            .envs(env.iter().cloned())
            .env("KUBENOVA_DATA_DIR", other.path())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let me: Value = http
        .get(format!("http://{addr}/api/v1/me"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["roles"], json!(["admin"]), "{case}: {me}");
    if case == CATALOG_CASE {
        let plan: Value = http
            .get(format!("http://{addr}/api/v1/plans/team"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            plan["namespaceQuota"], 5,
            "{case}: the catalog overlay: {plan}"
        );
    }
    child.kill().await.unwrap();
}

/// With Postgres the chart runs several replicas that start together, each applying the
/// migrations as it starts: three real managers started at once on a fresh database all
/// become ready (none trips over another's half-applied migration), and every migration
/// is recorded as applied (sqlx's migrator holds Postgres's advisory lock). Needs `KUBENOVA_TEST_POSTGRES_URL` (skipped loudly without
/// it, a failure with `KUBENOVA_REQUIRE_POSTGRES=1`).
#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let Some(url) = pg_url() else { return };
    let db = format!("kn_replicas_{}", uuid_like());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let db_url = format!("{base}/{db}");
    let keks = format!(
        "chart-1:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for dir in &dirs {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        ports.push(port);
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_kubenova-manager"))
                .arg("serve")
                .env_clear()
                .env("DATABASE_URL", &db_url)
                .env("KUBENOVA_DATA_DIR", dir.path())
                .env("KUBENOVA_KEKS", &keks)
                .env("KUBENOVA_JWT_SECRET", "s".repeat(48))
                .env("KUBENOVA_LISTEN", format!("127.0.0.1:{port}"))
                .env("KUBENOVA_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for (port, child) in ports.iter().zip(children.iter_mut()) {
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/api/v1/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "a replica exited while the replicas migrated together"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "a replica never became ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let (applied, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE NOT success) FROM _sqlx_migrations",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let files = std::fs::read_dir(harness::repo().join("kubenova-store/migrations/postgres"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count();
    assert_eq!(
        (applied, failed),
        (files as i64, 0),
        "every migration applied once"
    );
    pool.close().await;
    for mut c in children {
        c.kill().await.unwrap();
    }
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}_{}", nanos, std::process::id())
}
