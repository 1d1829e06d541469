use thiserror::Error;

/// Why a Nova object cannot be translated. Nothing is produced for an object that fails:
/// the operator reports the error as the `Degraded` condition (reason [`TranslateError::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// `metadata.name` is missing.
    #[error("{kind} has no metadata.name")]
    MissingName {
        /// Kind of the object.
        kind: &'static str,
    },
    /// The spec names a plan the catalog does not have.
    #[error("unknown plan {plan:?} (known: {known})")]
    UnknownPlan {
        /// The plan asked for.
        plan: String,
        /// Comma-separated plan names of the catalog.
        known: String,
    },
    /// A policyset named by the spec or the plan is not in the catalog.
    #[error("unknown policyset {0:?}")]
    UnknownPolicyset(String),
    /// A field is invalid (the schema could not say it, e.g. a subject that does not parse).
    #[error("invalid {kind} {name:?}: {message}")]
    InvalidSpec {
        /// Kind of the object.
        kind: &'static str,
        /// Object name.
        name: String,
        /// What is wrong, with field paths.
        message: String,
    },
    /// The object uses something its tenant's plan does not allow (a KubeVela definition
    /// type, an image registry): refused so an app cannot go beyond its plan.
    #[error("{kind} {name:?} is not allowed by its tenant's plan: {message}")]
    NotAllowed {
        /// Kind of the object.
        kind: &'static str,
        /// Object name.
        name: String,
        /// What is not allowed, with field paths.
        message: String,
    },
    /// The object is not in the namespace its spec implies (e.g. a NovaProject of tenant
    /// `acme` outside `acme-owner`): refused so one tenant cannot write into another.
    #[error("{kind} {name:?} must be in namespace {expected:?} (it is in {actual:?})")]
    WrongNamespace {
        /// Kind of the object.
        kind: &'static str,
        /// Object name.
        name: String,
        /// Where it must be.
        expected: String,
        /// Where it is (empty if unset).
        actual: String,
    },
}

impl TranslateError {
    /// CamelCase reason for the `Degraded` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            TranslateError::MissingName { .. } => "MissingName",
            TranslateError::UnknownPlan { .. } => "UnknownPlan",
            TranslateError::UnknownPolicyset(_) => "UnknownPolicyset",
            TranslateError::InvalidSpec { .. } => "InvalidSpec",
            TranslateError::WrongNamespace { .. } => "WrongNamespace",
            TranslateError::NotAllowed { .. } => "NotAllowedByPlan",
        }
    }
}
