//! Status mapping back from Capsule / KubeVela / Kubernetes to the Nova objects, and
//! condition merging without timestamp churn.
//!
//! ```
//! use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
//! use k8s_openapi::jiff::Timestamp;
//! use kubenova_reconcile::status::{Verdict, app_verdict, next_status};
//! use serde_json::json;
//!
//! let t0 = Time(Timestamp::from_second(1_700_000_000).unwrap());
//! let t1 = Time(Timestamp::from_second(1_700_000_600).unwrap());
//! let app = json!({"status": {"status": "running"}});
//! let first = next_status(None, &app_verdict(Some(&app)), Some(1), vec![], &t0).unwrap();
//! // Same observation later: nothing to write, so no timestamp churn and no reconcile loop.
//! assert!(next_status(Some(&first), &app_verdict(Some(&app)), Some(1), vec![], &t1).is_none());
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kubenova_api::agent::{MAX_STATUS_MESSAGE_BYTES, bound_text};
use kubenova_api::crd::{
    CONDITION_DEGRADED, CONDITION_READY, CONDITION_RECONCILING, NovaPhase, NovaStatus,
};
use serde_json::Value;

use crate::error::TranslateError;

/// What an observation means for a Nova object: a phase with a reason and a message.
/// [`Verdict::conditions`] spells it as the three standard conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Phase.
    pub phase: NovaPhase,
    /// CamelCase reason, used on the condition that is `True` (and on `Ready`).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Verdict {
    /// A verdict; a message longer than [`MAX_STATUS_MESSAGE_BYTES`] is cut (an app
    /// with many unhealthy services must not write an unbounded status).
    pub fn new(phase: NovaPhase, reason: &str, message: impl Into<String>) -> Verdict {
        let message = message.into();
        Verdict {
            phase,
            reason: reason.to_owned(),
            message: if message.len() > MAX_STATUS_MESSAGE_BYTES {
                bound_text(&message, MAX_STATUS_MESSAGE_BYTES)
            } else {
                message
            },
        }
    }

    /// `Degraded` for an object that cannot be translated (nothing was created).
    pub fn from_error(err: &TranslateError) -> Verdict {
        Verdict::new(NovaPhase::Degraded, err.reason(), err.to_string())
    }

    /// `Ready`, `Reconciling` and `Degraded`, all with `observedGeneration`.
    ///
    /// | phase | Ready | Reconciling | Degraded |
    /// |---|---|---|---|
    /// | Ready | True | False | False |
    /// | Reconciling, Pending, Deleting | False (Unknown if Pending) | True | False |
    /// | Degraded | False | False | True |
    /// | Suspended | False (reason `Suspended`) | False | False |
    pub fn conditions(&self, generation: Option<i64>, now: &Time) -> Vec<Condition> {
        let (ready, reconciling, degraded) = match self.phase {
            NovaPhase::Ready => ("True", "False", "False"),
            NovaPhase::Pending => ("Unknown", "True", "False"),
            NovaPhase::Reconciling | NovaPhase::Deleting => ("False", "True", "False"),
            NovaPhase::Degraded => ("False", "False", "True"),
            NovaPhase::Suspended => ("False", "False", "False"),
        };
        let cond = |type_: &str, status: &str| {
            let active = status == "True" || type_ == CONDITION_READY;
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: self.reason.clone(),
                message: if active {
                    self.message.clone()
                } else {
                    String::new()
                },
                last_transition_time: now.clone(),
                observed_generation: generation,
            }
        };
        vec![
            cond(CONDITION_READY, ready),
            cond(CONDITION_RECONCILING, reconciling),
            cond(CONDITION_DEGRADED, degraded),
        ]
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn find_condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

/// NovaTenant verdict from its Capsule Tenant (`None` = not created yet).
///
/// Ready needs `status.state == Active` **and** condition `Ready=True` for the Tenant's
/// current generation; `Cordoned` and a failed `Ready` are `Degraded`.
pub fn tenant_verdict(capsule_tenant: Option<&Value>) -> Verdict {
    let Some(t) = capsule_tenant else {
        return Verdict::new(
            NovaPhase::Reconciling,
            "TenantPending",
            "waiting for the Capsule Tenant to be created",
        );
    };
    if t.pointer("/metadata/deletionTimestamp").is_some() {
        return Verdict::new(
            NovaPhase::Deleting,
            "TenantTerminating",
            "the Capsule Tenant is being deleted",
        );
    }
    let generation = t.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = t
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    let state = s(t, "/status/state");
    let ready = find_condition(t, "Ready");
    let ready_status = ready.map(|c| s(c, "/status")).unwrap_or_default();
    let ready_msg = ready.map(|c| s(c, "/message")).unwrap_or_default();
    match state {
        "Cordoned" => Verdict::new(
            NovaPhase::Degraded,
            "TenantCordoned",
            "the Capsule Tenant is cordoned",
        ),
        "Terminating" => Verdict::new(
            NovaPhase::Deleting,
            "TenantTerminating",
            "the Capsule Tenant is terminating",
        ),
        _ if generation.is_some() && observed.is_some() && observed < generation => Verdict::new(
            NovaPhase::Reconciling,
            "TenantReconciling",
            format!(
                "Capsule has observed generation {} of {}",
                observed.unwrap_or_default(),
                generation.unwrap_or_default()
            ),
        ),
        "Active" if ready_status == "True" => Verdict::new(
            NovaPhase::Ready,
            "TenantActive",
            "the Capsule Tenant is active",
        ),
        _ if ready_status == "False" && ready.map(|c| s(c, "/reason")) == Some("Failed") => {
            Verdict::new(
                NovaPhase::Degraded,
                "TenantFailed",
                format!("Capsule: {ready_msg}"),
            )
        }
        _ => Verdict::new(
            NovaPhase::Reconciling,
            "TenantReconciling",
            "waiting for Capsule to report the Tenant ready",
        ),
    }
}

/// NovaProject verdict from its namespace (`None` = not created yet).
pub fn project_verdict(namespace: Option<&Value>) -> Verdict {
    match namespace.map(|n| s(n, "/status/phase")) {
        None => Verdict::new(
            NovaPhase::Reconciling,
            "NamespacePending",
            "waiting for the project namespace",
        ),
        Some("Terminating") => Verdict::new(
            NovaPhase::Deleting,
            "NamespaceTerminating",
            "the project namespace is terminating",
        ),
        Some(_) => Verdict::new(
            NovaPhase::Ready,
            "NamespaceActive",
            "the project namespace and its RoleBindings are applied",
        ),
    }
}

/// NovaApp verdict from its KubeVela Application (`None` = not created yet), by
/// `status.status`:
///
/// | KubeVela | phase / reason |
/// |---|---|
/// | `running` | Ready / `Running` |
/// | `starting`, `rendering`, `generatingPolicy`, `runningWorkflow`, absent | Reconciling |
/// | `workflowSuspending` | Suspended (Ready=False, reason `Suspended`) |
/// | `workflowFailed`, `workflowTerminated`, `unhealthy` | Degraded |
/// | `deleting` | Deleting |
pub fn app_verdict(application: Option<&Value>) -> Verdict {
    let Some(app) = application else {
        return Verdict::new(
            NovaPhase::Reconciling,
            "ApplicationPending",
            "waiting for the KubeVela Application to be created",
        );
    };
    let generation = app.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = app
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    let phase = s(app, "/status/status");
    let detail = {
        let wf = s(app, "/status/workflow/message");
        let unhealthy: Vec<String> = app
            .pointer("/status/services")
            .and_then(Value::as_array)
            .map(|svcs| {
                svcs.iter()
                    .filter(|c| c.get("healthy").and_then(Value::as_bool) == Some(false))
                    .map(|c| format!("{}: {}", s(c, "/name"), s(c, "/message")))
                    .collect()
            })
            .unwrap_or_default();
        let mut parts: Vec<String> = Vec::new();
        if !wf.is_empty() {
            parts.push(wf.to_owned());
        }
        parts.extend(unhealthy);
        parts.join("; ")
    };
    let with = |base: &str| {
        if detail.is_empty() {
            base.to_owned()
        } else {
            format!("{base}: {detail}")
        }
    };
    if phase == "running" && generation.is_some() && observed.is_some() && observed < generation {
        return Verdict::new(
            NovaPhase::Reconciling,
            "ApplicationReconciling",
            "KubeVela has not observed the latest spec yet",
        );
    }
    match phase {
        "running" => Verdict::new(NovaPhase::Ready, "Running", "the application is running"),
        "workflowSuspending" => Verdict::new(
            NovaPhase::Suspended,
            "Suspended",
            with("the workflow is suspended"),
        ),
        "workflowFailed" => Verdict::new(
            NovaPhase::Degraded,
            "WorkflowFailed",
            with("the workflow failed"),
        ),
        "workflowTerminated" => Verdict::new(
            NovaPhase::Degraded,
            "WorkflowTerminated",
            with("the workflow was terminated"),
        ),
        "unhealthy" => Verdict::new(
            NovaPhase::Degraded,
            "Unhealthy",
            with("the application is unhealthy"),
        ),
        "deleting" => Verdict::new(
            NovaPhase::Deleting,
            "Deleting",
            "the application is being deleted",
        ),
        "" => Verdict::new(
            NovaPhase::Reconciling,
            "ApplicationPending",
            "waiting for KubeVela to report",
        ),
        other => {
            // starting, rendering, generatingPolicy, runningWorkflow and future phases.
            let reason = match other {
                "starting" => "Starting",
                "rendering" => "Rendering",
                "generatingPolicy" => "GeneratingPolicy",
                "runningWorkflow" => "RunningWorkflow",
                _ => "Reconciling",
            };
            Verdict::new(
                NovaPhase::Reconciling,
                reason,
                with(&format!("KubeVela phase {other}")),
            )
        }
    }
}

fn same_except_time(a: &Condition, b: &Condition) -> bool {
    a.type_ == b.type_
        && a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.observed_generation == b.observed_generation
}

/// Merges `new` conditions into `old`: a condition whose `status` did not change keeps
/// its old `lastTransitionTime`; conditions of other types in `old` are kept as they
/// are. Returns the merged list and whether anything but timestamps changed.
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> (Vec<Condition>, bool) {
    let mut changed = false;
    let mut out: Vec<Condition> = Vec::with_capacity(old.len().max(new.len()));
    for mut c in new {
        match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) => {
                if o.status == c.status {
                    c.last_transition_time = o.last_transition_time.clone();
                }
                if !same_except_time(o, &c) || o.last_transition_time != c.last_transition_time {
                    changed = true;
                }
            }
            None => changed = true,
        }
        out.push(c);
    }
    for o in old {
        if !out.iter().any(|c| c.type_ == o.type_) {
            out.push(o.clone());
        }
    }
    (out, changed)
}

/// The status to write, or `None` when `old` already says the same (no write, no
/// timestamp churn, no reconcile loop).
pub fn next_status(
    old: Option<&NovaStatus>,
    verdict: &Verdict,
    generation: Option<i64>,
    namespaces: Vec<String>,
    now: &Time,
) -> Option<NovaStatus> {
    let old_conditions = old.map(|o| o.conditions.as_slice()).unwrap_or_default();
    let (conditions, changed) =
        merge_conditions(old_conditions, verdict.conditions(generation, now));
    let next = NovaStatus {
        phase: Some(verdict.phase),
        conditions,
        observed_generation: generation,
        namespaces,
        message: (!verdict.message.is_empty()).then(|| verdict.message.clone()),
    };
    let same = old.is_some_and(|o| {
        o.phase == next.phase
            && o.observed_generation == next.observed_generation
            && o.namespaces == next.namespaces
            && o.message == next.message
    });
    if same && !changed { None } else { Some(next) }
}
