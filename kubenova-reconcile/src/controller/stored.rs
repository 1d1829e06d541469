//! The Nova objects as the Nova stores keep them: [`Stored`], the object's metadata and
//! its spec as JSON text, without `status` (kept compact in the side table of
//! `statuses`).
//!
//! The three Nova stores hold every Nova object (30,000 at 10,000 tenants). A typed
//! `NovaTenant` is 816 bytes before any of its strings, most of it empty optional spec
//! fields and the status with its three conditions; a [`Stored`] is the 360 bytes of its
//! `ObjectMeta` and two pointers, and its spec text is the few dozen bytes the API server
//! sent. A reconcile rebuilds the typed object ([`Stored::expand`]): the same metadata,
//! the spec parsed back, the status from the side table.
//!
//! A spec is parsed into the typed spec when the watch delivers it (and written back as
//! JSON text), so an object the typed watch could not read is refused by this one too.

use std::borrow::Cow;
use std::fmt::Debug;
use std::marker::PhantomData;

use kube::Resource;
use kube::api::ObjectMeta;
use kubenova_api::crd::{
    NovaApp, NovaAppSpec, NovaProject, NovaProjectSpec, NovaStatus, NovaTenant, NovaTenantSpec,
};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

use super::statuses::Statuses;

/// A Nova kind: a typed object built from its parts.
pub(crate) trait Nova:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The typed spec.
    type Spec: DeserializeOwned + Serialize;
    /// The object with these parts.
    fn assemble(metadata: ObjectMeta, spec: Self::Spec, status: Option<NovaStatus>) -> Self;
    /// The status, if any.
    fn nova_status(&self) -> Option<&NovaStatus>;
}

macro_rules! nova {
    ($($k:ty => $spec:ty),*) => {$(
        impl Nova for $k {
            type Spec = $spec;
            fn assemble(metadata: ObjectMeta, spec: $spec, status: Option<NovaStatus>) -> Self {
                Self { metadata, spec, status }
            }
            fn nova_status(&self) -> Option<&NovaStatus> {
                self.status.as_ref()
            }
        }
    )*};
}
nova!(NovaTenant => NovaTenantSpec, NovaProject => NovaProjectSpec, NovaApp => NovaAppSpec);

/// A Nova object as its store keeps it (see the module docs). Its `status` is only set
/// between the watch and the side table ([`Statuses::strip`]).
pub(crate) struct Stored<K> {
    metadata: ObjectMeta,
    spec: Box<str>,
    status: Option<Box<NovaStatus>>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Stored<K> {
    fn clone(&self) -> Self {
        Stored {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: self.status.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Resource<DynamicType = ()>> Debug for Stored<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(&K::kind(&()))
            .field("metadata", &self.metadata)
            .field("spec", &self.spec)
            .field("status", &self.status)
            .finish()
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Stored<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de, K: Nova> Deserialize<'de> for Stored<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire<S> {
            #[serde(default)]
            metadata: ObjectMeta,
            spec: S,
            #[serde(default)]
            status: Option<NovaStatus>,
        }
        let wire = Wire::<K::Spec>::deserialize(d)?;
        let spec = serde_json::to_string(&wire.spec).map_err(D::Error::custom)?;
        Ok(Stored {
            metadata: wire.metadata,
            spec: spec.into(),
            status: wire.status.map(Box::new),
            kind: PhantomData,
        })
    }
}

impl<K: Nova> Stored<K> {
    /// Takes the status out (for the side table).
    pub(crate) fn take_status(&mut self) -> Option<NovaStatus> {
        self.status.take().map(|s| *s)
    }

    /// The typed object: this metadata, the spec parsed back, the status from `statuses`
    /// (or its own, before it was stripped).
    pub(crate) fn expand(&self, statuses: &Statuses) -> Result<K, serde_json::Error> {
        let spec = serde_json::from_str(&self.spec)?;
        let status = match &self.status {
            Some(s) => Some(NovaStatus::clone(s)),
            None => statuses.get(self),
        };
        Ok(K::assemble(self.metadata.clone(), spec, status))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_to_the_typed_object() {
        let app = json!({
            "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
            "metadata": {"name": "shop", "namespace": "t-acme-apps", "generation": 3,
                         "uid": "u-1", "finalizers": ["kubenova.io/cleanup"]},
            "spec": {"tenant": "acme", "project": "web",
                     "components": [{"name": "web", "type": "webservice",
                                     "properties": {"image": "nginx", "ports": [{"port": 80}]}}]},
            "status": {"phase": "Ready", "observedGeneration": 3}
        });
        let typed: NovaApp = serde_json::from_value(app.clone()).unwrap();
        let stored: Stored<NovaApp> = serde_json::from_value(app).unwrap();
        assert_eq!(Stored::<NovaApp>::kind(&()), "NovaApp");
        assert_eq!(Stored::<NovaApp>::plural(&()), "novaapps");
        assert_eq!(stored.expand(&Statuses::default()).unwrap(), typed);
        // A spec the typed object cannot read is refused by the watch, as before.
        let bad = json!({"metadata": {"name": "x"}, "spec": {"tenant": 1}});
        assert!(serde_json::from_value::<Stored<NovaApp>>(bad).is_err());
    }
}
