//! NovaTenant controller: Capsule Tenant + owner/apps namespaces.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Resource, ResourceExt};
use kubenova_api::crd::NovaTenant;
use serde_json::{Value, json};

use super::{
    Ctx, Error, FINALIZER, clash, delete_if_ours, find_clash, instrumented, ours, refused,
    requeue_after, write_status,
};
use crate::meta::{LABEL_PSA_ENFORCE, LABEL_PSA_ENFORCE_VERSION};
use crate::status::tenant_verdict;
use crate::{tenant_namespaces, translate_tenant};

const CONTROLLER: &str = "novatenant";

/// Reconciles one NovaTenant (see the [module docs](super)).
pub async fn reconcile_tenant(nt: Arc<NovaTenant>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<NovaTenant> = Api::all(ctx.client.clone());
    instrumented(CONTROLLER, nt.as_ref(), &ctx, async {
        finalizer(&api, FINALIZER, nt.clone(), |event| async {
            match event {
                Event::Apply(nt) => apply_tenant(&nt, &ctx, &api).await,
                Event::Cleanup(nt) => cleanup_tenant(&nt, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    })
    .await
}

async fn apply_tenant(nt: &NovaTenant, ctx: &Ctx, api: &Api<NovaTenant>) -> Result<Action, Error> {
    let old = nt.status.as_ref();
    let objects = match translate_tenant(nt, &ctx.catalog) {
        Ok(o) => o,
        Err(e) => {
            tracing::info!(error = %e, "refusing invalid NovaTenant");
            write_status(ctx, CONTROLLER, api, nt, old, &refused(&e), vec![]).await?;
            return Ok(Action::await_change());
        }
    };
    let name = nt.name_any();
    let labels = ours(&name, None);
    let (owner_ns, apps_ns) = tenant_namespaces(&name);
    let owner = format!("NovaTenant {name}");
    let targets = [
        ("Tenant", None, name.as_str()),
        ("Namespace", None, owner_ns.as_str()),
        ("Namespace", None, apps_ns.as_str()),
    ];
    if let Some(msg) = find_clash(ctx, &targets, &labels, &owner).await? {
        let verdict = clash(msg);
        write_status(ctx, CONTROLLER, api, nt, old, &verdict, vec![]).await?;
        return Ok(Action::await_change());
    }
    // The project namespaces enforce the tenant's Pod Security level too: when it changes
    // (seen on the live owner namespace, read before anything is applied), the project
    // controller relabels them.
    let level_changed = match ctx.lookup("Namespace", None, &owner_ns).await? {
        Some(live) => objects.namespaces.first().is_some_and(|ns| {
            [LABEL_PSA_ENFORCE, LABEL_PSA_ENFORCE_VERSION]
                .iter()
                .any(|k| {
                    live.pointer("/metadata/labels")
                        .and_then(|l| l.get(*k))
                        .and_then(Value::as_str)
                        != ns
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(*k))
                            .map(String::as_str)
                })
        }),
        None => false,
    };

    let tenant = ctx.apply(&objects.tenant).await?;
    for ns in &objects.namespaces {
        let ours = serde_json::to_value(ns)?;
        let mut desired = ours.clone();
        merge_owner_refs(ctx, &mut desired).await?;
        ctx.apply_as(&ours, &desired).await?;
    }
    if level_changed {
        ctx.requeue_projects(&name);
    }
    let verdict = tenant_verdict(Some(&tenant));
    write_status(
        ctx,
        CONTROLLER,
        api,
        nt,
        old,
        &verdict,
        vec![owner_ns, apps_ns],
    )
    .await?;
    Ok(requeue_after(&verdict))
}

/// Capsule adds its own (controller) owner reference to tenant namespaces. The list is
/// applied as a whole, so keep the live references next to ours: otherwise every apply
/// would remove Capsule's and Capsule would add it back, forever.
async fn merge_owner_refs(ctx: &Ctx, desired: &mut Value) -> Result<(), Error> {
    let name = desired
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(live) = ctx.lookup("Namespace", None, &name).await? else {
        return Ok(());
    };
    let mut refs: Vec<Value> = live
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours: Vec<Value> = desired
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in ours {
        let uid = r.get("uid").cloned();
        if let Some(existing) = refs.iter_mut().find(|x| x.get("uid") == uid.as_ref()) {
            *existing = r;
        } else {
            refs.push(r);
        }
    }
    if !refs.is_empty() {
        desired["metadata"]["ownerReferences"] = json!(refs);
    }
    Ok(())
}

async fn cleanup_tenant(nt: &NovaTenant, ctx: &Ctx) -> Result<Action, Error> {
    let name = nt.name_any();
    let labels = ours(&name, None);
    let (owner_ns, apps_ns) = tenant_namespaces(&name);
    // Namespaces first (their contents, including NovaProjects, go with them), then the
    // Capsule Tenant.
    for ns in [&owner_ns, &apps_ns] {
        delete_if_ours(ctx, "Namespace", None, ns, &labels).await?;
    }
    delete_if_ours(ctx, "Tenant", None, &name, &labels).await?;
    tracing::info!(uid = ?nt.meta().uid, "cleaned up");
    Ok(Action::await_change())
}
