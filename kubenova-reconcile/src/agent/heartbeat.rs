//! The heartbeat loop: versions, capabilities, components and the Capsule Proxy
//! endpoint (with how it was discovered, or why not), with the ConfigMap fallback.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kubenova_api::agent::{AGENT_FIELD_MANAGER, Heartbeat, PROXY_CONFIGMAP, ProxyDiscovery};
use kubenova_api::model::{Capabilities, ComponentPhase, ComponentState, ProxyEndpoint};
use serde_json::json;
use tokio::sync::watch;

use super::desired::log_error;
use super::{
    ANNOTATION_PROXY_URL, CAPSULE_PROXY_NAMESPACE, CAPSULE_PROXY_PORT, CAPSULE_PROXY_SECRET,
    CAPSULE_PROXY_SERVICE, RetryClass, Shared,
};
use crate::components::{PINNED, component_present};
use crate::meta::{LABEL_MANAGED_BY, MANAGED_BY};

/// Keys of the proxy ConfigMap ([`PROXY_CONFIGMAP`]): the URL and the base64 PEM CA,
/// as in [`ProxyEndpoint`].
pub const PROXY_CONFIGMAP_URL_KEY: &str = "url";
/// See [`PROXY_CONFIGMAP_URL_KEY`].
pub const PROXY_CONFIGMAP_CA_KEY: &str = "caData";

/// The Capsule Proxy endpoint as found in the cluster, with how it was found or why not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyFound {
    /// The endpoint to report: its URL, and its CA when found. `None` without a Service
    /// or when Capsule Proxy does not serve TLS.
    pub endpoint: Option<ProxyEndpoint>,
    /// Where the URL and the CA came from, or exactly why they were not found.
    pub discovery: ProxyDiscovery,
}

/// The keys of a serving-certificate Secret that hold the CA: `ca.crt` (cert-manager,
/// the chart's default) and `ca` (the chart's certgen job).
const CA_KEYS: [(&str, &str); 2] = [
    ("ca.crt", "cert-manager"),
    ("ca", "the chart's certgen job"),
];

/// Where Capsule Proxy's serving certificate lives, read from its Deployment.
enum ServingCert {
    /// TLS, with the certificate in this Secret; the text says how it was found.
    Secret(String, String),
    /// `--enable-ssl=false`: plain HTTP.
    PlainHttp,
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// The Secret Capsule Proxy serves its certificate from: the Deployment's volume mounted
/// at the directory of `--ssl-cert-path` (the chart's volume `certs`), else the chart's
/// default name [`CAPSULE_PROXY_SECRET`].
async fn serving_cert(client: &Client) -> ServingCert {
    let ns = CAPSULE_PROXY_NAMESPACE;
    let default = || {
        ServingCert::Secret(
            CAPSULE_PROXY_SECRET.to_owned(),
            format!("the chart's default Secret {ns}/{CAPSULE_PROXY_SECRET}"),
        )
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let Ok(Some(d)) = deployments.get_opt(CAPSULE_PROXY_SERVICE).await else {
        return default();
    };
    let Some(pod) = d.spec.and_then(|s| s.template.spec) else {
        return default();
    };
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == CAPSULE_PROXY_SERVICE)
        .or_else(|| pod.containers.first());
    let args = container.and_then(|c| c.args.clone()).unwrap_or_default();
    if flag(&args, "--enable-ssl").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return ServingCert::PlainHttp;
    }
    let dir = flag(&args, "--ssl-cert-path")
        .and_then(|p| p.rsplit_once('/'))
        .map(|(dir, _)| dir.to_owned());
    let mounted = container
        .and_then(|c| c.volume_mounts.as_ref())
        .and_then(|mounts| match &dir {
            Some(dir) => mounts
                .iter()
                .find(|m| m.mount_path.trim_end_matches('/') == dir),
            None => mounts.iter().find(|m| m.name == "certs"),
        })
        .map(|m| m.name.clone());
    let secret = mounted.and_then(|volume| {
        pod.volumes
            .as_ref()?
            .iter()
            .find(|v| v.name == volume)?
            .secret
            .as_ref()?
            .secret_name
            .clone()
    });
    match secret {
        Some(name) => {
            let how = format!(
                "Secret {ns}/{name}, mounted by Deployment {ns}/{CAPSULE_PROXY_SERVICE} for its serving certificate"
            );
            ServingCert::Secret(name, how)
        }
        None => default(),
    }
}

/// The CA of Capsule Proxy's serving certificate (base64 of the PEM) and where it came
/// from, or why there is none.
async fn serving_ca(client: &Client) -> Result<(String, String), String> {
    let ns = CAPSULE_PROXY_NAMESPACE;
    let (name, how) = match serving_cert(client).await {
        ServingCert::PlainHttp => {
            return Err(format!(
                "Capsule Proxy serves plain HTTP (--enable-ssl=false on Deployment {ns}/{CAPSULE_PROXY_SERVICE}): kubeconfigs need its TLS endpoint; \
                 install it with options.enableSSL=true (the chart's default)"
            ));
        }
        ServingCert::Secret(name, how) => (name, how),
    };
    if name != CAPSULE_PROXY_SECRET {
        return Err(format!(
            "Capsule Proxy serves the certificate of {how}, but the operator may read only Secret {ns}/{CAPSULE_PROXY_SECRET} \
             (least privilege): install Capsule Proxy without options.certificateVolumeName, so that its certificate Secret has the chart's default name"
        ));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match secrets.get_opt(&name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(format!(
                "{how} does not exist (yet): the chart creates it with cert-manager (certManager.generateCertificates, the default) \
                 or its certgen job (options.generateCertificates); wait for it, or check that cert-manager issued the Certificate"
            ));
        }
        Err(e) => return Err(format!("reading {how}: {e}")),
    };
    let data = secret.data.unwrap_or_default();
    for (key, writer) in CA_KEYS {
        if let Some(b) = data.get(key).filter(|b| !b.0.is_empty()) {
            return Ok((
                base64::engine::general_purpose::STANDARD.encode(&b.0),
                format!("{how}, key {key} (written by {writer})"),
            ));
        }
    }
    Err(format!(
        "{how} holds no CA (neither ca.crt, written by cert-manager, nor ca, written by the chart's certgen job): \
         kubeconfigs embed the CA that signs Capsule Proxy's certificate, so issue that certificate from a CA \
         (the chart's default cert-manager Issuer does)"
    ))
}

/// The first host of the Ingress `capsule-system/capsule-proxy` (the chart's
/// `ingress.enabled`), if any.
async fn ingress_host(client: &Client) -> Option<String> {
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), CAPSULE_PROXY_NAMESPACE);
    let ing = match ingresses.get_opt(CAPSULE_PROXY_SERVICE).await {
        Ok(i) => i?,
        Err(e) => {
            tracing::debug!(error = %e, "reading the Capsule Proxy Ingress");
            return None;
        }
    };
    ing.spec?
        .rules?
        .into_iter()
        .filter_map(|r| r.host)
        .find(|h| !h.trim().is_empty() && !h.starts_with('*'))
}

/// Finds the Capsule Proxy endpoint the way the docs say (`docs/src/agent.md`, "Capsule
/// Proxy discovery").
///
/// Without the Service `capsule-system/capsule-proxy` there is none. The URL is, in
/// order: `url_override` (the operator's `KUBENOVA_CAPSULE_PROXY_URL`), the Service
/// annotation [`ANNOTATION_PROXY_URL`], the first host of the Ingress
/// `capsule-system/capsule-proxy` (`https://<host>`), the address of a `LoadBalancer`
/// Service (`https://<address>:<port>`), else the in-cluster
/// `https://capsule-proxy.capsule-system.svc:<port>` (the port named `proxy`, else the
/// first, else 9001), reachable from inside the cluster only. The CA is the one of the
/// certificate Capsule Proxy serves: the Secret its Deployment mounts for
/// `--ssl-cert-path` (the chart's `capsule-proxy`), key `ca.crt` (cert-manager) or `ca`
/// (the chart's certgen job). Whatever is missing is said in
/// [`ProxyDiscovery::problem`].
pub async fn discover_proxy(client: &Client, url_override: Option<&str>) -> ProxyFound {
    let ns = CAPSULE_PROXY_NAMESPACE;
    let name = CAPSULE_PROXY_SERVICE;
    let mut discovery = ProxyDiscovery::default();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = match services.get_opt(name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            discovery.problem = Some(format!(
                "Service {ns}/{name} not found: Capsule Proxy is not installed (POST /api/v1/clusters/{{id}}/bootstrap/capsule-proxy installs it)"
            ));
            return ProxyFound {
                endpoint: None,
                discovery,
            };
        }
        Err(e) => {
            discovery.problem = Some(format!("reading Service {ns}/{name}: {e}"));
            return ProxyFound {
                endpoint: None,
                discovery,
            };
        }
    };
    let ca = serving_ca(client).await;
    if let Err(problem) = &ca
        && problem.contains("--enable-ssl=false")
    {
        discovery.problem = Some(problem.clone());
        return ProxyFound {
            endpoint: None,
            discovery,
        };
    }
    let annotated = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_PROXY_URL))
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty());
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("proxy"))
        .or_else(|| ports.first())
        .map_or(CAPSULE_PROXY_PORT, |p| p.port);
    let load_balancer = (spec.type_.as_deref() == Some("LoadBalancer"))
        .then(|| {
            svc.status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .iter()
                .find_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
        })
        .flatten();
    let url = if let Some(u) = url_override.map(str::trim).filter(|u| !u.is_empty()) {
        discovery.url_source = Some("the operator's KUBENOVA_CAPSULE_PROXY_URL".into());
        u.to_owned()
    } else if let Some(u) = annotated {
        discovery.url_source = Some(format!(
            "annotation {ANNOTATION_PROXY_URL} of Service {ns}/{name}"
        ));
        u
    } else if let Some(host) = ingress_host(client).await {
        discovery.url_source = Some(format!("Ingress {ns}/{name} (host {host})"));
        discovery.note = Some(format!(
            "kubectl checks the certificate served at https://{host} against the CA of Capsule Proxy's own certificate: \
             the Ingress must pass TLS through to Capsule Proxy (the chart puts the Ingress hosts into that certificate)"
        ));
        format!("https://{host}")
    } else if let Some(addr) = load_balancer {
        discovery.url_source = Some(format!("the load balancer address of Service {ns}/{name}"));
        let host = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr
        };
        format!("https://{host}:{port}")
    } else {
        discovery.url_source = Some(format!("the in-cluster name of Service {ns}/{name}"));
        discovery.note = Some(format!(
            "https://{name}.{ns}.svc:{port} is reachable from inside the cluster only: to use kubeconfigs from elsewhere, \
             expose Capsule Proxy with an Ingress (the chart's ingress.enabled, with TLS passed through) or a LoadBalancer Service, \
             or set the annotation {ANNOTATION_PROXY_URL} on the Service"
        ));
        format!("https://{name}.{ns}.svc:{port}")
    };
    let ca_data = match ca {
        Ok((data, source)) => {
            discovery.ca_source = Some(source);
            Some(data)
        }
        Err(problem) => {
            discovery.problem = Some(problem);
            None
        }
    };
    ProxyFound {
        endpoint: Some(ProxyEndpoint { url, ca_data }),
        discovery,
    }
}

/// Capabilities and component states as observed now. A flag is set only when the
/// component's CRDs are served and its Deployments available ([`component_present`]);
/// Capsule Proxy also needs its endpoint. Installing / failed / requested states from
/// the installer ([`super::ComponentStates`]) win over observation.
async fn observe(sh: &Shared, proxy_known: bool) -> (Capabilities, Vec<ComponentState>) {
    let mut caps = Capabilities::default();
    let mut states = Vec::new();
    for c in PINNED {
        let present = match component_present(&sh.kube, c).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(component = c.name, error = %e, "observing component");
                false
            }
        };
        match c.name {
            "cert-manager" => caps.cert_manager = present,
            "capsule" => caps.capsule = present,
            "capsule-proxy" => caps.capsule_proxy = present && proxy_known,
            "kubevela" => caps.kube_vela = present,
            _ => {}
        }
        let reported = sh.config.component_states.get(c.name);
        let state = match reported {
            Some(s)
                if matches!(
                    s.phase,
                    ComponentPhase::Requested | ComponentPhase::Installing | ComponentPhase::Failed
                ) =>
            {
                s
            }
            other => ComponentState {
                name: c.name.into(),
                version: if present {
                    other.and_then(|s| s.version)
                } else {
                    None
                },
                phase: if present {
                    ComponentPhase::Ready
                } else {
                    ComponentPhase::Absent
                },
                message: String::new(),
                request_id: None,
            },
        };
        states.push(state);
    }
    states.push(ComponentState {
        name: "operator".into(),
        version: Some(sh.config.operator_version.clone()),
        phase: ComponentPhase::Ready,
        message: String::new(),
        request_id: None,
    });
    (caps, states)
}

async fn build(sh: &Shared) -> Heartbeat {
    let kubernetes_version = match sh.kube.apiserver_version().await {
        Ok(v) => Some(v.git_version),
        Err(e) => {
            tracing::debug!(error = %e, "reading the Kubernetes version");
            None
        }
    };
    let found = discover_proxy(&sh.kube, sh.config.proxy_url.as_deref()).await;
    if let Some(problem) = &found.discovery.problem {
        tracing::debug!(problem = %problem, "Capsule Proxy discovery");
    }
    // Acks are read before observing: a request is acknowledged only after its state
    // was recorded, so the states observed below already reflect every ack sent.
    let acknowledged = sh.config.component_states.acknowledged();
    let (capabilities, components) = observe(sh, found.endpoint.is_some()).await;
    Heartbeat {
        acknowledged_requests: Some(acknowledged),
        operator_version: sh.config.operator_version.clone(),
        kubernetes_version,
        capabilities,
        components,
        proxy: found.endpoint,
        proxy_discovery: Some(found.discovery),
        applied_revision: sh.applied_revision(),
    }
}

/// Writes the proxy endpoint to the ConfigMap [`PROXY_CONFIGMAP`] in the operator's
/// namespace (server-side apply, idempotent).
async fn publish_configmap(sh: &Shared, proxy: &ProxyEndpoint) -> Result<(), kube::Error> {
    let ns = &sh.config.namespace;
    let mut data = serde_json::Map::new();
    data.insert(PROXY_CONFIGMAP_URL_KEY.into(), json!(proxy.url));
    if let Some(ca) = &proxy.ca_data {
        data.insert(PROXY_CONFIGMAP_CA_KEY.into(), json!(ca));
    }
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": PROXY_CONFIGMAP, "namespace": ns, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
        "data": data,
    });
    // A deposed leader leaves the ConfigMap to the new one.
    sh.config
        .fence
        .check()
        .map_err(|f| kube::Error::Service(Box::new(f)))?;
    Api::<ConfigMap>::namespaced(sh.kube.clone(), ns)
        .patch(
            PROXY_CONFIGMAP,
            &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
    Ok(())
}

/// The heartbeat loop.
pub(super) async fn run(sh: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = sh.config.heartbeat_interval;
    let mut attempt: u32 = 0;
    let mut hello = true;
    let mut published: Option<ProxyEndpoint> = None;
    loop {
        let hb = build(&sh).await;
        let res = sh.client.heartbeat(&hb).await;
        sh.metrics().request("heartbeat", &res);
        let delay = match res {
            Ok(reply) => {
                if hello {
                    tracing::info!(cluster = %reply.cluster_id, status = reply.status.as_str(), "hello: connected to the manager");
                    hello = false;
                } else if attempt > 0 {
                    tracing::info!(cluster = %reply.cluster_id, "manager reachable again");
                }
                sh.set_cluster_id(reply.cluster_id);
                sh.manager_reached(true);
                attempt = 0;
                interval = Duration::from_secs(u64::from(reply.interval_seconds.clamp(1, 3600)));
                interval
            }
            Err(e) => {
                log_error("heartbeat", &e);
                if e.manager_down() {
                    sh.manager_reached(false);
                }
                if let Some(p) = &hb.proxy
                    && published.as_ref() != Some(p)
                {
                    match publish_configmap(&sh, p).await {
                        Ok(()) => {
                            tracing::info!(configmap = PROXY_CONFIGMAP, namespace = %sh.config.namespace, url = %p.url, "manager unreachable: Capsule Proxy endpoint published in the ConfigMap");
                            published = Some(p.clone());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "publishing the Capsule Proxy endpoint in the ConfigMap")
                        }
                    }
                }
                attempt = attempt.saturating_add(1);
                let d = sh.config.retry_delay(e.class(), attempt);
                if e.class() == RetryClass::Credential {
                    d
                } else {
                    d.min(interval)
                }
            }
        };
        if super::sleep_or_stop(delay, &mut shutdown).await {
            return;
        }
    }
}
