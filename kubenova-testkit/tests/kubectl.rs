//! The real `kubectl` against a started testkit, through a kubeconfig file: create (sent as
//! protobuf), client-side apply (three-way strategic merge), server-side apply, patch
//! (strategic, merge and JSON), label, get with label selectors as JSON, watch, rollout
//! status, explain (OpenAPI v3) and delete.
//!
//! kubectl is found as `KUBENOVA_KUBECTL` or on the `PATH`. Without it the test is skipped
//! loudly; under `CI=true` (or `KUBENOVA_REQUIRE_KUBECTL=1`) a missing kubectl fails it
//! (`.ci/run` installs it).
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, PostParams};
use kubenova_testkit::TestCluster;
use serde_json::{Value, json};

fn find_kubectl() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KUBENOVA_KUBECTL") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    })
}

fn required() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("KUBENOVA_REQUIRE_KUBECTL").as_deref() == Ok("1")
}

#[derive(Clone)]
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            // No cached discovery or OpenAPI from another run.
            .env("KUBECACHEDIR", self.dir.join("cache"))
            .env("HOME", &self.dir)
            .current_dir(&self.dir);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs kubectl and returns its stdout; fails the test with stderr when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
}

fn names(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

const APP_V1: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
  labels: {app: web, tier: front}
data:
  color: blue
  size: large
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1
        ports: [{containerPort: 8080, name: http}]
        env:
        - {name: MODE, value: fast}
        - {name: DEBUG, value: "0"}
      - name: sidecar
        image: sidecar:1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// The same application, changed: a new image, one env var dropped and one added, the
/// sidecar replaced, a label and a ConfigMap key dropped, the Recreate strategy.
const APP_V2: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
  labels: {app: web}
data:
  color: green
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  strategy:
    type: Recreate
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:2
        ports: [{containerPort: 8080, name: http}]
        env:
        - {name: MODE, value: fast}
        - {name: TRACE, value: "1"}
      - name: proxy
        image: proxy:1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the widget is.
            properties:
              size: {type: integer, minimum: 1}
              tags: {type: array, items: {type: string}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kubectl_against_the_testkit() {
    let Some(bin) = find_kubectl() else {
        assert!(
            !required(),
            "kubectl is required (CI=true or KUBENOVA_REQUIRE_KUBECTL=1) but was not found on the PATH; install it (.ci/run does) or set KUBENOVA_KUBECTL"
        );
        eprintln!("!!! KUBECTL TEST SKIPPED: no kubectl on the PATH (set KUBENOVA_KUBECTL) !!!");
        return;
    };
    let cluster = TestCluster::builder()
        .simulate_workloads(true)
        .start()
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml()).unwrap();
    let k = Kubectl {
        bin,
        kubeconfig,
        dir: dir.path().to_path_buf(),
    };
    // kubectl runs as a blocking child process; the API server keeps running on the
    // runtime's worker threads.
    tokio::task::spawn_blocking(move || scenario(&k, &client))
        .await
        .unwrap();
    cluster.shutdown().await;
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

fn scenario(k: &Kubectl, client: &kube::Client) {
    let version = k.ok(&["version", "-o", "json"]);
    let v: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(v["serverVersion"]["minor"], "36", "{version}");

    // Typed create commands send protobuf bodies.
    k.ok(&["create", "namespace", "demo"]);
    let ns: Namespace = block(Api::<Namespace>::all(client.clone()).get("demo")).unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "demo"
    );
    k.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "demo",
        "--from-literal=user=admin",
        "--from-literal=pass=s3cr3t",
    ]);
    let secret: Secret =
        block(Api::<Secret>::namespaced(client.clone(), "demo").get("creds")).unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["user"].0, b"admin");
    assert_eq!(data["pass"].0, b"s3cr3t");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    k.ok(&[
        "create",
        "configmap",
        "extra",
        "-n",
        "demo",
        "--from-literal=k=v",
    ]);
    // More typed creates: a Deployment (nested messages, inlined structs, a zero that
    // matters), a ServiceAccount and a TokenRequest for it.
    k.ok(&[
        "create",
        "deployment",
        "probe",
        "-n",
        "demo",
        "--image=probe:1",
        "--replicas=0",
        "--port=8080",
    ]);
    let probe = block(Api::<Deployment>::namespaced(client.clone(), "demo").get("probe")).unwrap();
    let spec = probe.spec.unwrap();
    assert_eq!(spec.replicas, Some(0));
    let c = &spec.template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("probe:1"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
    k.ok(&["delete", "deployment", "probe", "-n", "demo"]);
    k.ok(&["create", "serviceaccount", "robot", "-n", "demo"]);
    let token = k.ok(&["create", "token", "robot", "-n", "demo", "--duration=1h"]);
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    // A typo is refused by server-side field validation (kubectl --validate=strict asks
    // the OpenAPI v3 document whether PATCH takes fieldValidation).
    let typo = k.write(
        "typo.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, namespace: demo}\ndata: {a: b}\ndatta: {c: d}\n",
    );
    let out = k.run(&["apply", "-f", &typo]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field") && err.contains("datta"),
        "{err}"
    );

    // Client-side apply, then a changed manifest: a three-way strategic merge.
    let v1 = k.write("app-v1.yaml", APP_V1);
    let out = k.ok(&["apply", "-f", &v1]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "demo");
    let d = block(deploys.get("web")).unwrap();
    assert!(
        d.metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );
    k.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "demo",
        "--timeout=30s",
    ]);
    // Someone else's change that the next apply must keep: an annotation on the pod
    // template (not in the manifest, so not in last-applied).
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "demo",
        "-p",
        r#"{"spec":{"template":{"metadata":{"annotations":{"restarted":"yes"}}}}}"#,
    ]);
    let v2 = k.write("app-v2.yaml", APP_V2);
    let out = k.ok(&["apply", "-f", &v2]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    let d = serde_json::to_value(block(deploys.get("web")).unwrap()).unwrap();
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["restarted"], "yes");
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let cnames: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cnames, ["web", "proxy"]);
    assert_eq!(containers[0]["image"], "web:2");
    assert_eq!(
        containers[0]["ports"],
        json!([{"containerPort": 8080, "name": "http"}])
    );
    assert_eq!(
        containers[0]["env"],
        json!([{"name": "MODE", "value": "fast"}, {"name": "TRACE", "value": "1"}])
    );
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    let cm = block(Api::<ConfigMap>::namespaced(client.clone(), "demo").get("settings")).unwrap();
    assert_eq!(
        serde_json::to_value(cm.data.unwrap()).unwrap(),
        json!({"color": "green"})
    );
    assert!(!cm.metadata.labels.unwrap().contains_key("tier"));
    k.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "demo",
        "--timeout=30s",
    ]);

    // Server-side apply: kubectl owns the fields it applies.
    let ssa = k.write(
        "ssa.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa, namespace: demo, labels: {tier: back}}\ndata: {owner: kubectl}\n",
    );
    let out = k.ok(&["apply", "--server-side", "-f", &ssa]);
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let got = k.json(&[
        "get",
        "configmap",
        "ssa",
        "-n",
        "demo",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let managers: Vec<(&str, &str)> = got["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(managers, [("kubectl", "Apply")]);
    // A second manager changing an owned field conflicts, and --force-conflicts takes it.
    let other = k.write(
        "ssa-other.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa, namespace: demo}\ndata: {owner: other}\n",
    );
    let out = k.run(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &other,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conflict"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &other,
    ]);
    let got = k.json(&["get", "configmap", "ssa", "-n", "demo", "-o", "json"]);
    assert_eq!(got["data"]["owner"], "other");

    // patch: strategic (default), merge and JSON.
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "demo",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ]);
    k.ok(&[
        "patch",
        "configmap",
        "extra",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"data":{"k":null,"n":"1"}}"#,
    ]);
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/shape","value":"round"}]"#,
    ]);
    let d = block(deploys.get("web")).unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    let extra = k.json(&["get", "configmap", "extra", "-n", "demo", "-o", "json"]);
    assert_eq!(extra["data"], json!({"n": "1"}));
    let settings = k.json(&["get", "configmap", "settings", "-n", "demo", "-o", "json"]);
    assert_eq!(
        settings["data"],
        json!({"color": "green", "shape": "round"})
    );
    k.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "demo",
        "--timeout=30s",
    ]);

    // scale goes through the Scale subresource.
    k.ok(&["scale", "deployment", "web", "-n", "demo", "--replicas=4"]);
    assert_eq!(
        block(deploys.get("web")).unwrap().spec.unwrap().replicas,
        Some(4)
    );
    let scale = k.json(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/demo/deployments/web/scale",
    ]);
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=web");
    k.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "demo",
        "--timeout=30s",
    ]);

    // label, then get with selectors as JSON.
    k.ok(&[
        "label",
        "configmap",
        "extra",
        "settings",
        "-n",
        "demo",
        "tier=front",
    ]);
    k.ok(&["label", "configmap", "settings", "-n", "demo", "app-"]);
    let front = k.json(&[
        "get",
        "configmaps",
        "-n",
        "demo",
        "-l",
        "tier=front",
        "-o",
        "json",
    ]);
    assert_eq!(names(&front), ["extra", "settings"]);
    let not_back = k.json(&[
        "get",
        "configmaps",
        "-n",
        "demo",
        "-l",
        "tier,tier!=back",
        "-o",
        "json",
    ]);
    assert_eq!(names(&not_back), ["extra", "settings"]);
    let web = k.json(&[
        "get",
        "configmaps",
        "-n",
        "demo",
        "-l",
        "app=web",
        "-o",
        "json",
    ]);
    assert_eq!(names(&web), Vec::<String>::new());
    let all = k.json(&[
        "get",
        "configmaps,secrets",
        "-n",
        "demo",
        "-l",
        "tier in (front,back)",
        "-o",
        "json",
    ]);
    assert_eq!(names(&all), ["extra", "settings", "ssa"]);

    // A CRD applied with kubectl, then its custom resources: client-side apply of a custom
    // resource is a JSON merge patch (the OpenAPI says it takes no strategic merge patch).
    let crd = k.write("crd.yaml", WIDGET_CRD);
    k.ok(&["apply", "-f", &crd]);
    let w1 = k.write(
        "widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: demo}\nspec: {size: 1, tags: [a, b]}\n",
    );
    k.ok(&["apply", "-f", &w1]);
    let w2 = k.write(
        "widget2.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: demo}\nspec: {size: 2}\n",
    );
    let out = k.ok(&["apply", "-f", &w2]);
    assert!(out.contains("widget.example.com/w1 configured"), "{out}");
    let w = k.json(&["get", "widgets", "w1", "-n", "demo", "-o", "json"]);
    assert_eq!(w["spec"], json!({"size": 2}));
    let w3 = k.write(
        "widget3.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: demo}\nspec: {size: 2, colour: red}\n",
    );
    let out = k.run(&["apply", "-f", &w3]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"spec.colour\""), "{err}");
    let explain = k.ok(&["explain", "widgets.spec"]);
    assert!(explain.contains("size"), "{explain}");
    k.ok(&["delete", "-f", &crd]);

    // explain reads the OpenAPI v3 document.
    let explain = k.ok(&["explain", "deployment.spec.strategy"]);
    assert!(explain.contains("rollingUpdate"), "{explain}");

    // watch: a ConfigMap created while kubectl watches arrives as an ADDED event.
    let mut child = k
        .cmd(&[
            "get",
            "configmaps",
            "-n",
            "demo",
            "--watch-only",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut buf = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            buf.push_str(&line);
            buf.push('\n');
            // kubectl prints each event as one JSON object, on one line (recent kubectl)
            // or indented over several (older ones).
            if serde_json::from_str::<Value>(&buf).is_ok()
                && tx.send(std::mem::take(&mut buf)).is_err()
            {
                break;
            }
        }
    });
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "demo");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    let mut n = 0;
    while seen.is_none() && std::time::Instant::now() < deadline {
        // The watch may start after the first create: create until one is seen.
        n += 1;
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("watched-{n}")}, "data": {"n": n.to_string()}}),
        )
        .unwrap();
        block(cms.create(&PostParams::default(), &cm)).unwrap();
        if let Ok(ev) = rx.recv_timeout(Duration::from_secs(2)) {
            seen = Some(ev);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    let ev: Value =
        serde_json::from_str(&seen.expect("kubectl --watch printed no event within 30 s")).unwrap();
    assert_eq!(ev["type"], "ADDED");
    assert!(
        ev["object"]["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("watched-"),
        "{ev}"
    );

    // delete: by file, by name, and the namespace with everything left in it.
    let out = k.ok(&["delete", "-f", &v2]);
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let left = k.json(&["get", "deployments,services", "-n", "demo", "-o", "json"]);
    assert_eq!(names(&left), Vec::<String>::new());
    k.ok(&["delete", "secret", "creds", "-n", "demo"]);
    assert!(
        block(Api::<Secret>::namespaced(client.clone(), "demo").get_opt("creds"))
            .unwrap()
            .is_none()
    );
    k.ok(&["delete", "namespace", "demo", "--timeout=30s"]);
    let out = k.run(&["get", "namespace", "demo"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
            || String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
