//! The heartbeat loop: versions, capabilities, components and the Capsule Proxy
//! endpoint, with the ConfigMap fallback.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kubenova_api::agent::{AGENT_FIELD_MANAGER, Heartbeat, PROXY_CONFIGMAP};
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

/// The Capsule Proxy endpoint as served in this cluster, `None` while its Service
/// `capsule-system/capsule-proxy` does not exist.
///
/// The URL is, in order: `url_override` (configuration), the Service annotation
/// [`ANNOTATION_PROXY_URL`] (an externally reachable URL), or the in-cluster
/// `https://capsule-proxy.capsule-system.svc:<port>` (the port named `proxy`, else the
/// first, else 9001). The CA is the Secret `capsule-system/capsule-proxy` key `ca` (or
/// `ca.crt`), base64-encoded PEM.
pub async fn proxy_endpoint(
    client: &Client,
    url_override: Option<&str>,
) -> Result<Option<ProxyEndpoint>, kube::Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), CAPSULE_PROXY_NAMESPACE);
    let Some(svc) = services.get_opt(CAPSULE_PROXY_SERVICE).await? else {
        return Ok(None);
    };
    let annotated = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_PROXY_URL))
        .filter(|u| !u.trim().is_empty())
        .cloned();
    let url = match url_override.filter(|u| !u.trim().is_empty()) {
        Some(u) => u.trim().to_owned(),
        None => match annotated {
            Some(u) => u.trim().to_owned(),
            None => {
                let ports = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.clone())
                    .unwrap_or_default();
                let port = ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some("proxy"))
                    .or_else(|| ports.first())
                    .map_or(CAPSULE_PROXY_PORT, |p| p.port);
                format!("https://{CAPSULE_PROXY_SERVICE}.{CAPSULE_PROXY_NAMESPACE}.svc:{port}")
            }
        },
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), CAPSULE_PROXY_NAMESPACE);
    let ca_data = secrets
        .get_opt(CAPSULE_PROXY_SECRET)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get("ca").or_else(|| d.get("ca.crt")).cloned())
        .filter(|b| !b.0.is_empty())
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b.0));
    Ok(Some(ProxyEndpoint { url, ca_data }))
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
            },
        };
        states.push(state);
    }
    states.push(ComponentState {
        name: "operator".into(),
        version: Some(sh.config.operator_version.clone()),
        phase: ComponentPhase::Ready,
        message: String::new(),
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
    let proxy = match proxy_endpoint(&sh.kube, sh.config.proxy_url.as_deref()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "looking up the Capsule Proxy endpoint");
            None
        }
    };
    let (capabilities, components) = observe(sh, proxy.is_some()).await;
    Heartbeat {
        operator_version: sh.config.operator_version.clone(),
        kubernetes_version,
        capabilities,
        components,
        proxy,
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
