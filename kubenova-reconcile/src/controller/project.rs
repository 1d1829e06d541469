//! NovaProject controller: project namespace, the app ServiceAccount, RoleBindings,
//! optional ResourceQuota.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kubenova_api::crd::{NovaPhase, NovaProject};

use super::{
    Ctx, Error, FINALIZER, clash, delete_if_ours, find_clash, instrumented, ours, refused,
    requeue_after, write_status,
};
use crate::project::PROJECT_QUOTA_NAME;
use crate::status::{Verdict, project_verdict};
use crate::{project_namespace, tenant_pod_security, translate_project};

const CONTROLLER: &str = "novaproject";

/// Reconciles one NovaProject (see the [module docs](super)).
pub async fn reconcile_project(np: Arc<NovaProject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<NovaProject> =
        Api::namespaced(ctx.client.clone(), &np.namespace().unwrap_or_default());
    instrumented(CONTROLLER, np.as_ref(), &ctx, async {
        finalizer(&api, FINALIZER, np.clone(), |event| async {
            match event {
                Event::Apply(np) => apply_project(&np, &ctx, &api).await,
                Event::Cleanup(np) => cleanup_project(&np, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    })
    .await
}

async fn apply_project(
    np: &NovaProject,
    ctx: &Ctx,
    api: &Api<NovaProject>,
) -> Result<Action, Error> {
    let old = np.status.as_ref();
    let tenant = &np.spec.tenant;
    // The project namespace enforces its tenant's Pod Security level, derived from the
    // NovaTenant exactly as the tenant translation does (from the store: no API call).
    let nova_tenant = ctx.nova_tenant(tenant).await?;
    let pod_security = nova_tenant
        .as_ref()
        .map(|nt| tenant_pod_security(nt, &ctx.catalog));
    let level = match &pod_security {
        Some(Ok(psa)) => psa.as_ref(),
        _ => None,
    };
    let objects = match translate_project(np, level) {
        Ok(o) => o,
        Err(e) => {
            tracing::info!(error = %e, "refusing invalid NovaProject");
            write_status(ctx, CONTROLLER, api, np, old, &refused(&e), vec![]).await?;
            return Ok(Action::await_change());
        }
    };
    let name = np.name_any();
    let verdict = match pod_security {
        None => Some(Verdict::new(
            NovaPhase::Degraded,
            "TenantNotFound",
            format!("NovaTenant {tenant} does not exist; nothing was created"),
        )),
        Some(Err(e)) => Some(Verdict::new(
            NovaPhase::Degraded,
            "InvalidTenant",
            format!(
                "NovaTenant {tenant} cannot be translated ({e}); the project namespace takes its Pod Security level from it, so nothing was created or changed"
            ),
        )),
        Some(Ok(_)) => None,
    };
    if let Some(verdict) = verdict {
        write_status(ctx, CONTROLLER, api, np, old, &verdict, vec![]).await?;
        return Ok(Action::requeue(std::time::Duration::from_secs(60)));
    }
    let labels = ours(tenant, Some(&name));
    let ns = project_namespace(tenant, &name);
    let owner = format!("NovaProject {}/{name}", np.namespace().unwrap_or_default());
    if let Some(msg) = find_clash(ctx, &[("Namespace", None, &ns)], &labels, &owner).await? {
        write_status(ctx, CONTROLLER, api, np, old, &clash(msg), vec![]).await?;
        return Ok(Action::await_change());
    }

    let live_ns = ctx
        .apply(&serde_json::to_value(&objects.namespace)?)
        .await?;
    ctx.apply(&serde_json::to_value(&objects.service_account)?)
        .await?;
    for rb in &objects.role_bindings {
        ctx.apply(&serde_json::to_value(rb)?).await?;
    }
    match &objects.resource_quota {
        Some(rq) => {
            ctx.apply(&serde_json::to_value(rq)?).await?;
        }
        None if ctx
            .lookup("ResourceQuota", Some(&ns), PROJECT_QUOTA_NAME)
            .await?
            .is_none() => {}
        None => {
            delete_if_ours(ctx, "ResourceQuota", Some(&ns), PROJECT_QUOTA_NAME, &labels).await?;
        }
    }
    let verdict = project_verdict(Some(&live_ns));
    write_status(ctx, CONTROLLER, api, np, old, &verdict, vec![ns]).await?;
    Ok(requeue_after(&verdict))
}

async fn cleanup_project(np: &NovaProject, ctx: &Ctx) -> Result<Action, Error> {
    let name = np.name_any();
    let tenant = &np.spec.tenant;
    let ns = project_namespace(tenant, &name);
    // The ServiceAccount, the RoleBindings, the quota and the NovaApps live in the
    // namespace.
    delete_if_ours(ctx, "Namespace", None, &ns, &ours(tenant, Some(&name))).await?;
    Ok(Action::await_change())
}
