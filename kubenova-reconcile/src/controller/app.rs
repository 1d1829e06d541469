//! NovaApp controller: KubeVela Application.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kubenova_api::crd::{NovaApp, NovaPhase};

use super::{
    Ctx, Error, FINALIZER, clash, delete_if_ours, find_clash, instrumented, ours, refused,
    requeue_after, write_status,
};
use crate::app::{app_identity, app_rules};
use crate::meta::LABEL_APP;
use crate::status::{Verdict, app_verdict};
use crate::translate_app;

const CONTROLLER: &str = "novaapp";

/// Reconciles one NovaApp (see the [module docs](super)).
pub async fn reconcile_app(na: Arc<NovaApp>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<NovaApp> =
        Api::namespaced(ctx.client.clone(), &na.namespace().unwrap_or_default());
    instrumented(CONTROLLER, na.as_ref(), &ctx, async {
        finalizer(&api, FINALIZER, na.clone(), |event| async {
            match event {
                Event::Apply(na) => apply_app(&na, &ctx, &api).await,
                Event::Cleanup(na) => cleanup_app(&na, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    })
    .await
}

fn app_labels(na: &NovaApp) -> std::collections::BTreeMap<&'static str, String> {
    let mut labels = ours(&na.spec.tenant, Some(&na.spec.project));
    labels.insert(LABEL_APP, na.name_any());
    labels
}

async fn apply_app(na: &NovaApp, ctx: &Ctx, api: &Api<NovaApp>) -> Result<Action, Error> {
    let old = na.status.as_ref();
    let tenant = &na.spec.tenant;
    let Some(nova_tenant) = ctx.nova_tenant(tenant).await? else {
        let verdict = Verdict::new(
            NovaPhase::Degraded,
            "TenantNotFound",
            format!("NovaTenant {tenant} does not exist; nothing was created"),
        );
        write_status(ctx, CONTROLLER, api, na, old, &verdict, vec![]).await?;
        return Ok(Action::requeue(std::time::Duration::from_secs(60)));
    };
    let translated =
        app_rules(&nova_tenant.spec, &ctx.catalog).and_then(|rules| translate_app(na, &rules));
    let application = match translated {
        Ok(o) => o,
        Err(e) => {
            tracing::info!(error = %e, "refusing invalid NovaApp");
            write_status(ctx, CONTROLLER, api, na, old, &refused(&e), vec![]).await?;
            return Ok(Action::await_change());
        }
    };
    let name = na.name_any();
    let ns = na.namespace().unwrap_or_default();
    let owner = format!("NovaApp {ns}/{name}");
    let targets = [("Application", Some(ns.as_str()), name.as_str())];
    if let Some(msg) = find_clash(ctx, &targets, &app_labels(na), &owner).await? {
        write_status(ctx, CONTROLLER, api, na, old, &clash(msg), vec![]).await?;
        return Ok(Action::await_change());
    }
    // Applied as the project's app identity: KubeVela deploys it with exactly that
    // ServiceAccount's rights in the project namespace.
    let live = ctx
        .apply_impersonating(&application, &app_identity(&ns))
        .await?;
    let verdict = app_verdict(Some(&live));
    write_status(ctx, CONTROLLER, api, na, old, &verdict, vec![]).await?;
    Ok(requeue_after(&verdict))
}

async fn cleanup_app(na: &NovaApp, ctx: &Ctx) -> Result<Action, Error> {
    let ns = na.namespace().unwrap_or_default();
    delete_if_ours(
        ctx,
        "Application",
        Some(&ns),
        &na.name_any(),
        &app_labels(na),
    )
    .await?;
    Ok(Action::await_change())
}
