//! Newtype identifiers. Every id is a UUID (version 7 when minted here, so ids sort
//! by creation time, which gives lists a stable order for cursor pagination).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $example:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid, example = $example)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Mints a new, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            pub fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

id_type!(
    /// Identifies a registered Kubernetes cluster.
    ClusterId,
    "11111111-1111-1111-1111-111111111111"
);
id_type!(
    /// Identifies a tenant (unique across clusters).
    TenantId,
    "22222222-2222-2222-2222-222222222222"
);
id_type!(
    /// Identifies a project inside a tenant.
    ProjectId,
    "33333333-3333-3333-3333-333333333333"
);
id_type!(
    /// Identifies an application inside a project.
    AppId,
    "44444444-4444-4444-4444-444444444444"
);
id_type!(
    /// Identifies a workflow run of an application.
    RunId,
    "55555555-5555-5555-5555-555555555555"
);
id_type!(
    /// Identifies an audit event.
    AuditId,
    "66666666-6666-6666-6666-666666666666"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_round_trip() {
        let a = TenantId::new();
        let b = TenantId::new();
        assert!(a < b, "UUIDv7 ids must sort by creation");
        let s = a.to_string();
        assert_eq!(s.parse::<TenantId>().ok(), Some(a));
        assert_eq!(serde_json::to_string(&a).ok(), Some(format!("\"{s}\"")));
        assert!("not-a-uuid".parse::<TenantId>().is_err());
    }
}
