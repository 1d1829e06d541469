//! Offline render: Nova YAML documents in, the translated objects out.

use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaApp, NovaProject, NovaTenant};
use kubenova_api::model::{project_namespace, tenant_namespaces};
use serde_json::Value;
use thiserror::Error;

use crate::error::TranslateError;

/// Why [`render`] failed; `doc` is the 1-based number of the document among the
/// non-empty ones.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RenderError {
    /// Not YAML.
    #[error("document {doc}: invalid YAML: {source}")]
    Yaml {
        /// Document number.
        doc: usize,
        /// Parser error (with its line and column).
        source: serde_saphyr::Error,
    },
    /// Not a NovaTenant, NovaProject or NovaApp of `kubenova.io/v1alpha1`.
    #[error(
        "document {doc}: expected kubenova.io/v1alpha1 NovaTenant, NovaProject or NovaApp, got {api_version} {kind}"
    )]
    UnknownKind {
        /// Document number.
        doc: usize,
        /// The document's apiVersion.
        api_version: String,
        /// The document's kind.
        kind: String,
    },
    /// The document does not match the CRD types (unknown field, wrong type...).
    #[error("document {doc}: {kind}: {source}")]
    Decode {
        /// Document number.
        doc: usize,
        /// Kind.
        kind: String,
        /// Decoder error.
        source: serde_json::Error,
    },
    /// The object cannot be translated.
    #[error("document {doc}: {source}")]
    Translate {
        /// Document number.
        doc: usize,
        /// Translation error.
        source: TranslateError,
    },
    /// A NovaApp whose NovaTenant is not in the same input: its tenant's plan says what the
    /// app may use, so it cannot be rendered alone.
    #[error(
        "document {doc}: NovaApp {app:?} belongs to tenant {tenant:?}: render it together with that NovaTenant (its plan decides what the app may use)"
    )]
    MissingTenant {
        /// Document number.
        doc: usize,
        /// The app.
        app: String,
        /// Its tenant.
        tenant: String,
    },
    /// The output could not be serialized.
    #[error("serializing the output: {0}")]
    Output(#[from] serde_saphyr::SerializeError),
}

/// Renders several NovaTenant / NovaProject / NovaApp YAML documents into the objects
/// they translate into, as multi-document YAML (apply order within each input).
///
/// A NovaProject or NovaApp without `metadata.namespace` is placed where it belongs
/// (`<tenant>-owner`, or the project namespace); one in another namespace is refused,
/// as the operator would. Offline objects have no uid, so no owner references are
/// rendered.
///
/// A project namespace gets its tenant's Pod Security labels when the project's
/// NovaTenant is among the documents (before or after the project), as the operator
/// derives them from the NovaTenant in the cluster; a NovaProject rendered without its
/// NovaTenant gets none. A NovaApp is rendered under the app rules of its NovaTenant
/// ([`crate::app_rules`]), which must be among the documents.
pub fn render(yaml_docs: &str, catalog: &Catalog) -> Result<String, RenderError> {
    enum Doc {
        Tenant(Box<NovaTenant>),
        Project(Box<NovaProject>),
        App(Box<NovaApp>),
    }
    let mut docs: Vec<(usize, Doc)> = Vec::new();
    let mut input = yaml_docs.as_bytes();
    let opts = crate::manifests::yaml_file_options();
    // Documents one at a time (empty ones are skipped by the reader).
    for (i, parsed) in serde_saphyr::read_with_options::<_, Value>(&mut input, opts).enumerate() {
        let doc = i + 1;
        let mut v = parsed.map_err(|source| RenderError::Yaml { doc, source })?;
        if v.is_null() {
            continue;
        }
        let api_version = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if api_version != kubenova_api::crd::API_VERSION {
            return Err(RenderError::UnknownKind {
                doc,
                api_version,
                kind,
            });
        }
        let spec_str = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let default_ns = match kind.as_str() {
            "NovaProject" => Some(tenant_namespaces(&spec_str("/spec/tenant")).0),
            "NovaApp" => Some(project_namespace(
                &spec_str("/spec/tenant"),
                &spec_str("/spec/project"),
            )),
            _ => None,
        };
        if let (Some(ns), Some(md)) = (
            default_ns,
            v.get_mut("metadata").and_then(Value::as_object_mut),
        ) && !md.contains_key("namespace")
        {
            md.insert("namespace".into(), Value::String(ns));
        }
        let decode = |source| RenderError::Decode {
            doc,
            kind: kind.clone(),
            source,
        };
        let parsed = match kind.as_str() {
            "NovaTenant" => Doc::Tenant(serde_json::from_value(v).map_err(decode)?),
            "NovaProject" => Doc::Project(serde_json::from_value(v).map_err(decode)?),
            "NovaApp" => Doc::App(serde_json::from_value(v).map_err(decode)?),
            _ => {
                return Err(RenderError::UnknownKind {
                    doc,
                    api_version,
                    kind,
                });
            }
        };
        docs.push((doc, parsed));
    }
    let tenant = |name: &str| {
        docs.iter().find_map(|(_, d)| match d {
            Doc::Tenant(nt) if nt.metadata.name.as_deref() == Some(name) => Some(nt.as_ref()),
            _ => None,
        })
    };
    let mut objects: Vec<Value> = Vec::new();
    for (doc, parsed) in &docs {
        let translate = |source| RenderError::Translate { doc: *doc, source };
        match parsed {
            Doc::Tenant(nt) => objects.extend(
                crate::translate_tenant(nt, catalog)
                    .map_err(translate)?
                    .to_values(),
            ),
            Doc::Project(np) => {
                let psa = match tenant(&np.spec.tenant) {
                    Some(nt) => crate::tenant_pod_security(nt, catalog).map_err(translate)?,
                    None => None,
                };
                objects.extend(
                    crate::translate_project(np, psa.as_ref())
                        .map_err(translate)?
                        .to_values(),
                );
            }
            Doc::App(na) => {
                let nt = tenant(&na.spec.tenant).ok_or_else(|| RenderError::MissingTenant {
                    doc: *doc,
                    app: na.metadata.name.clone().unwrap_or_default(),
                    tenant: na.spec.tenant.clone(),
                })?;
                let rules = crate::app_rules(&nt.spec, catalog).map_err(translate)?;
                objects.push(crate::translate_app(na, &rules).map_err(translate)?);
            }
        }
    }
    let mut out = String::new();
    for o in &objects {
        out.push_str("---\n");
        out.push_str(&crate::manifests::yaml_text(o)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TENANT: &str = "apiVersion: kubenova.io/v1alpha1\nkind: NovaTenant\nmetadata:\n  name: acme\nspec:\n  plan: gold\n  owners: [alice@example.com]\n";

    #[test]
    fn empty_documents_are_skipped_and_a_broken_one_is_named() {
        let out = render(&format!("---\n---\n{TENANT}---\n"), Catalog::builtin_ref()).unwrap();
        assert!(out.contains("kind: Tenant"), "{out}");
        let err = render(
            &format!("{TENANT}---\nkind: [unclosed\n"),
            Catalog::builtin_ref(),
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::Yaml { doc: 2, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("document 2: invalid YAML: "), "{msg}");
        assert!(msg.contains("line 9"), "{msg}");
    }
}
