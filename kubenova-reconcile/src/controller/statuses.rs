//! The Nova objects' statuses, kept **outside** the Nova stores.
//!
//! The status, with its three conditions, was about half of each stored Nova object. The
//! watch that feeds a Nova store takes `status` out of every object before the store sees
//! it ([`Statuses::strip`]) and keeps it here, compact: a status this operator wrote (the
//! three conditions exactly as [`Verdict::conditions`] spells them, which is every status
//! unless someone else edited it) is kept as its phase, reason, message, generation,
//! namespaces and the three `lastTransitionTime`s, with interned strings (converged
//! objects say the same); any other status is kept whole. Either way, [`Statuses::get`]
//! gives back exactly the status the watch delivered, so [`next_status`](crate::next_status)
//! decides as it would on the full object (no second write of the same verdict, a
//! condition whose status did not change keeps its `lastTransitionTime`).
//!
//! The table is keyed by the 64-bit hash of `Kind/namespace/name`
//! ([`object_key`](super::object_key)); a delete removes the entry and a relist drops the
//! entries of objects it no longer lists, as the store does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;
use kubenova_api::crd::{NovaPhase, NovaStatus};

use super::cache::{Sym, intern, key_hash};
use super::object_key;
use super::stored::{Nova, Stored};
use crate::status::Verdict;

/// A status as [`Verdict::conditions`] spells it (what this operator writes).
#[derive(Debug)]
struct Ours {
    phase: NovaPhase,
    generation: Option<i64>,
    reason: Sym,
    message: Sym,
    namespaces: Box<[Sym]>,
    /// `lastTransitionTime` of `Ready`, `Reconciling`, `Degraded`.
    since: [Timestamp; 3],
}

/// What the table keeps of one status.
#[derive(Debug)]
enum Kept {
    Ours(Box<Ours>),
    /// Anything else (edited by someone else, other conditions): kept whole.
    Other(Box<NovaStatus>),
}

impl Ours {
    fn expand(&self) -> NovaStatus {
        let verdict = Verdict::new(self.phase, &self.reason, self.message.as_ref());
        let mut conditions = verdict.conditions(self.generation, &Time(self.since[0]));
        for (c, t) in conditions.iter_mut().zip(self.since) {
            c.last_transition_time = Time(t);
        }
        NovaStatus {
            phase: Some(self.phase),
            conditions,
            observed_generation: self.generation,
            namespaces: self.namespaces.iter().map(|n| n.to_string()).collect(),
            message: (!self.message.is_empty()).then(|| self.message.to_string()),
        }
    }
}

impl Kept {
    fn new(status: NovaStatus) -> Kept {
        if let Some(phase) = status.phase
            && let [ready, reconciling, degraded] = status.conditions.as_slice()
        {
            let ours = Ours {
                phase,
                generation: status.observed_generation,
                reason: intern(&ready.reason),
                message: intern(status.message.as_deref().unwrap_or_default()),
                namespaces: status.namespaces.iter().map(|n| intern(n)).collect(),
                since: [
                    ready.last_transition_time.0,
                    reconciling.last_transition_time.0,
                    degraded.last_transition_time.0,
                ],
            };
            // Kept compact only when that gives back exactly the same status.
            if ours.expand() == status {
                return Kept::Ours(Box::new(ours));
            }
        }
        Kept::Other(Box::new(status))
    }

    fn expand(&self) -> NovaStatus {
        match self {
            Kept::Ours(o) => o.expand(),
            Kept::Other(s) => NovaStatus::clone(s),
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<u64, Kept>,
    /// Keys listed so far by a relist in progress.
    relisted: Option<HashSet<u64>>,
}

/// The statuses of the Nova objects in the stores (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Statuses(Arc<Mutex<Table>>);

fn key<K: Nova>(obj: &Stored<K>) -> u64 {
    key_hash(&object_key(obj))
}

impl Statuses {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the status out of the object of a watch event into the table (a delete
    /// removes its entry; a relist drops, when done, the entries it did not list).
    pub(crate) fn strip<K: Nova>(&self, event: &mut Event<Stored<K>>) {
        match event {
            Event::Apply(o) => {
                self.keep(o);
            }
            Event::InitApply(o) => {
                let k = self.keep(o);
                self.table()
                    .relisted
                    .get_or_insert_with(HashSet::new)
                    .insert(k);
            }
            Event::Delete(o) => {
                o.take_status();
                self.table().by_key.remove(&key(o));
            }
            Event::Init => self.table().relisted = Some(HashSet::new()),
            Event::InitDone => {
                let mut t = self.table();
                let listed = t.relisted.take().unwrap_or_default();
                t.by_key.retain(|k, _| listed.contains(k));
                t.by_key.shrink_to_fit();
            }
        }
    }

    fn keep<K: Nova>(&self, obj: &mut Stored<K>) -> u64 {
        let k = key(obj);
        let kept = obj.take_status().map(Kept::new);
        let mut t = self.table();
        match kept {
            Some(s) => t.by_key.insert(k, s),
            None => t.by_key.remove(&k),
        };
        k
    }

    /// The status the watch delivered last for `obj`.
    pub(crate) fn get<K: Nova>(&self, obj: &Stored<K>) -> Option<NovaStatus> {
        self.table().by_key.get(&key(obj)).map(Kept::expand)
    }

    /// Number of statuses kept whole (not as this operator writes them).
    #[cfg(test)]
    fn others(&self) -> usize {
        self.table()
            .by_key
            .values()
            .filter(|k| matches!(k, Kept::Other(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::status::{next_status, tenant_verdict};
    use kubenova_api::crd::NovaTenant;
    use serde_json::json;

    /// The NovaTenant `acme` as the watch delivers it.
    fn tenant(status: Option<&NovaStatus>) -> Stored<NovaTenant> {
        serde_json::from_value(json!({
            "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
            "metadata": {"name": "acme", "generation": 2},
            "spec": {"plan": "gold", "owners": ["user:a@b.c"]},
            "status": status,
        }))
        .unwrap()
    }

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    /// The status the operator writes after `old` for `verdict` at `now`, as the watch
    /// then delivers it: stripped into the table; returns what the table gives back.
    fn written_and_watched(
        statuses: &Statuses,
        old: Option<&NovaStatus>,
        verdict: &Verdict,
        now: i64,
    ) -> Option<NovaStatus> {
        let next = next_status(old, verdict, Some(2), vec!["acme-owner".into()], &at(now))?;
        let mut ev = Event::Apply(tenant(Some(&next)));
        statuses.strip(&mut ev);
        let Event::Apply(mut stored) = ev else {
            panic!("not an apply")
        };
        assert!(stored.take_status().is_none(), "the store gets no status");
        let got = stored.expand(statuses).unwrap().status.unwrap();
        assert_eq!(got, next, "the table gives back exactly what was written");
        Some(got)
    }

    #[test]
    fn stripped_statuses_keep_change_detection() {
        let statuses = Statuses::default();
        let reconciling = tenant_verdict(None);
        let ready = tenant_verdict(Some(&json!({
            "metadata": {"generation": 1},
            "status": {"state": "Active", "observedGeneration": 1,
                       "conditions": [{"type": "Ready", "status": "True"}]}
        })));
        let first = written_and_watched(&statuses, None, &reconciling, 100).unwrap();
        assert_eq!(statuses.others(), 0, "kept compact");
        // The same verdict again, later: nothing to write (no loop, no timestamp churn).
        let old = tenant(None).expand(&statuses).unwrap().status;
        assert_eq!(old.as_ref(), Some(&first));
        assert!(
            next_status(
                old.as_ref(),
                &reconciling,
                Some(2),
                vec!["acme-owner".into()],
                &at(200)
            )
            .is_none()
        );
        // Ready: Ready and Reconciling flip (new time), Degraded stays False (old time).
        let second = written_and_watched(&statuses, Some(&first), &ready, 300).unwrap();
        let since = |s: &NovaStatus, t: &str| s.condition(t).unwrap().last_transition_time.0;
        assert_eq!(since(&second, "Ready"), at(300).0);
        assert_eq!(since(&second, "Reconciling"), at(300).0);
        assert_eq!(since(&second, "Degraded"), at(100).0);
        assert!(written_and_watched(&statuses, Some(&second), &ready, 400).is_none());
        assert_eq!(statuses.others(), 0);
    }

    #[test]
    fn other_statuses_are_kept_whole_and_entries_follow_the_watch() {
        let statuses = Statuses::default();
        let mut edited =
            next_status(None, &tenant_verdict(None), Some(2), vec![], &at(100)).unwrap();
        edited.conditions[2].message = "edited by hand".into();
        edited.conditions.push(edited.conditions[0].clone());
        edited.conditions[3].type_ = "Custom".into();
        statuses.strip(&mut Event::Apply(tenant(Some(&edited))));
        assert_eq!(statuses.others(), 1);
        let status = |s: &Statuses| tenant(None).expand(s).unwrap().status;
        assert_eq!(status(&statuses), Some(edited.clone()));
        // An object whose status was not stripped keeps its own.
        let own = NovaStatus::default();
        assert_eq!(
            tenant(Some(&own)).expand(&statuses).unwrap().status,
            Some(own)
        );
        // Delete: gone. Relist: only what it lists stays.
        statuses.strip(&mut Event::Delete(tenant(None)));
        assert_eq!(status(&statuses), None);
        statuses.strip(&mut Event::Apply(tenant(Some(&edited))));
        statuses.strip(&mut Event::<Stored<NovaTenant>>::Init);
        assert!(status(&statuses).is_some(), "kept while relisting");
        statuses.strip(&mut Event::<Stored<NovaTenant>>::InitDone);
        assert_eq!(status(&statuses), None);
        statuses.strip(&mut Event::Apply(tenant(Some(&edited))));
        statuses.strip(&mut Event::<Stored<NovaTenant>>::Init);
        statuses.strip(&mut Event::InitApply(tenant(Some(&edited))));
        statuses.strip(&mut Event::<Stored<NovaTenant>>::InitDone);
        assert_eq!(status(&statuses), Some(edited));
    }
}
