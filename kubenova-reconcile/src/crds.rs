//! The generated CRD manifests (`deploy/crds/`), one file per CRD.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kubenova_api::crd::{NovaApp, NovaProject, NovaTenant};

/// Header of every generated file.
pub const HEADER: &str = "# Generated from kubenova_api::crd by kubenova-reconcile. Do not edit:\n# regenerate with `KUBENOVA_BLESS=1 cargo test -p kubenova-reconcile`.\n";

/// The three Nova CRDs.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![NovaTenant::crd(), NovaProject::crd(), NovaApp::crd()]
}

/// `(file name, YAML)` of each CRD, e.g. `("novatenants.kubenova.io.yaml", ...)`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((
                format!("{name}.yaml"),
                format!("{HEADER}{}", crate::manifests::yaml_text(&crd)?),
            ))
        })
        .collect()
}
