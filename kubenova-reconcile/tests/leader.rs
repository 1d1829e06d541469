//! Lease leader election against the testkit: exactly one of two electors leads; when the
//! leader releases (shutdown) or dies (no release) the other takes over within the lease
//! duration; a leader that cannot renew steps down before anyone else takes over.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use kubenova_reconcile::leader::{LeaderElector, LeaseConfig, Observed};
use kubenova_testkit::{Fault, TestCluster};
use serde_json::json;
use tokio::sync::watch;

const NS: &str = "kubenova-system";
const LEASE: &str = "kubenova-operator";

/// Lease duration 2 s, so the renew deadline is 1.33 s and the retry period 267 ms.
const LEASE_MS: u64 = 2000;
const RETRY_MS: u64 = 267;

fn config(identity: &str) -> LeaseConfig {
    let c =
        LeaseConfig::new(NS, LEASE, identity).with_lease_duration(Duration::from_millis(LEASE_MS));
    assert!(c.retry_period <= Duration::from_millis(RETRY_MS));
    c
}

async fn cluster() -> (TestCluster, Client) {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    (cluster, client)
}

/// A client authenticated as ServiceAccount `name` (so faults can target one elector).
async fn sa_client(cluster: &TestCluster, admin: &Client, name: &str) -> Client {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let req: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": []}})).unwrap();
    let token = sas
        .create_token_request(name, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    cluster.client_with_token(&token.unwrap()).unwrap()
}

struct Running {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn(client: Client, identity: &str) -> Running {
    let elector = LeaderElector::new(client, config(identity));
    let leading = elector.subscribe();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(elector.run(rx));
    Running {
        leading,
        stop,
        task,
    }
}

async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Samples both electors every 10 ms for `d`; panics if both lead at once. Returns how
/// many samples each led.
async fn never_both(a: &Running, b: &Running, d: Duration) -> (u32, u32) {
    let end = Instant::now() + d;
    let (mut na, mut nb) = (0, 0);
    while Instant::now() < end {
        let (la, lb) = (*a.leading.borrow(), *b.leading.borrow());
        assert!(!(la && lb), "two leaders at once");
        na += u32::from(la);
        nb += u32::from(lb);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (na, nb)
}

async fn wait_leading(r: &mut Running, within: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(within, r.leading.wait_for(|l| *l))
        .await
        .unwrap_or_else(|_| panic!("no leadership within {within:?}"))
        .unwrap();
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_acquires_follows_and_takes_over_expired() {
    let (cluster, client) = cluster().await;
    let mut a = LeaderElector::new(client.clone(), config("a"));
    let mut b = LeaderElector::new(client.clone(), config("b"));
    assert_eq!(a.step().await.unwrap(), Observed::Leading);
    assert_eq!(b.step().await.unwrap(), Observed::Following("a".into()));
    assert_eq!(a.step().await.unwrap(), Observed::Leading, "renew");
    assert_eq!(holder(&client).await.as_deref(), Some("a"));
    // `a` stops renewing: `b` waits a whole lease duration from when it first saw the
    // current record, then takes over.
    let seen = Instant::now();
    assert_eq!(b.step().await.unwrap(), Observed::Following("a".into()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(b.step().await.unwrap(), Observed::Following("a".into()));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(seen.elapsed() >= Duration::from_millis(LEASE_MS));
    assert_eq!(b.step().await.unwrap(), Observed::Leading);
    let lease = Api::<Lease>::namespaced(client.clone(), NS)
        .get(LEASE)
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
    // `a` comes back: it is not the holder any more and must not renew over `b`.
    assert_eq!(a.step().await.unwrap(), Observed::Following("b".into()));
    // Release hands it over at once.
    b.release().await.unwrap();
    assert_eq!(holder(&client).await, None);
    assert_eq!(a.step().await.unwrap(), Observed::Leading);
    cluster.shutdown().await;
}

/// Two candidates that both see an expired Lease: the resourceVersion makes exactly one
/// `replace` win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_candidates_one_wins() {
    let (cluster, client) = cluster().await;
    for round in 0..5 {
        let mut a = LeaderElector::new(client.clone(), config(&format!("a{round}")));
        let mut b = LeaderElector::new(client.clone(), config(&format!("b{round}")));
        let (ra, rb) = tokio::join!(a.step(), b.step());
        let winners = [ra.unwrap(), rb.unwrap()]
            .iter()
            .filter(|o| **o == Observed::Leading)
            .count();
        assert_eq!(winners, 1, "round {round}");
        // Hand over for the next round.
        a.release().await.unwrap();
        b.release().await.unwrap();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leads_and_the_other_takes_over() {
    let (cluster, client) = cluster().await;
    let mut a = spawn(client.clone(), "a");
    wait_leading(&mut a, Duration::from_secs(5)).await;
    let mut b = spawn(client.clone(), "b");
    let (na, nb) = never_both(&a, &b, Duration::from_secs(3)).await;
    assert!(na > 0 && nb == 0, "a led {na} samples, b {nb}");
    assert_eq!(holder(&client).await.as_deref(), Some("a"));

    // Graceful stop: `a` releases, `b` takes over within one retry period or so.
    a.stop.send(true).unwrap();
    a.task.await.unwrap();
    assert!(!*a.leading.borrow());
    let took = wait_leading(&mut b, Duration::from_millis(1500)).await;
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(holder(&client).await.as_deref(), Some("b"));

    // Crash (no release): a new candidate takes over within lease duration + a retry.
    let mut c = spawn(client.clone(), "c");
    never_both(&b, &c, Duration::from_millis(500)).await;
    b.task.abort();
    let _ = b.task.await;
    let took = wait_leading(&mut c, Duration::from_secs(4)).await;
    assert!(
        took <= Duration::from_millis(LEASE_MS + 2 * RETRY_MS + 500),
        "took {took:?}"
    );
    assert_eq!(holder(&client).await.as_deref(), Some("c"));
    c.stop.send(true).unwrap();
    c.task.await.unwrap();
    cluster.shutdown().await;
}

/// The leader's Lease updates fail (API trouble for it only): it steps down after the
/// renew deadline, and only then (after the lease duration) does the other take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down_first() {
    let (cluster, admin) = cluster().await;
    let ca = sa_client(&cluster, &admin, "replica-a").await;
    let cb = sa_client(&cluster, &admin, "replica-b").await;
    let mut a = spawn(ca, "a");
    wait_leading(&mut a, Duration::from_secs(5)).await;
    let b = spawn(cb, "b");
    never_both(&a, &b, Duration::from_millis(500)).await;

    let faults = cluster.faults();
    faults.inject(
        Fault::any()
            .resource("leases")
            .user("system:serviceaccount:kubenova-system:replica-a"),
    );
    let broke = Instant::now();
    let mut a_lost = None;
    let mut b_won = None;
    while b_won.is_none() {
        assert!(broke.elapsed() < Duration::from_secs(6), "no takeover");
        let (la, lb) = (*a.leading.borrow(), *b.leading.borrow());
        assert!(!(la && lb), "two leaders at once");
        if !la && a_lost.is_none() {
            a_lost = Some(broke.elapsed());
        }
        if lb {
            b_won = Some(broke.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (a_lost, b_won) = (a_lost.unwrap(), b_won.unwrap());
    // Renew deadline 1.33 s (from a's last renewal, up to one retry before the fault),
    // lease duration 2 s.
    assert!(
        a_lost >= Duration::from_millis(1333 - RETRY_MS - 100),
        "stepped down at {a_lost:?}"
    );
    assert!(
        a_lost < b_won,
        "a stepped down at {a_lost:?}, b took over at {b_won:?}"
    );
    assert!(faults.injected() > 0);
    faults.clear();
    never_both(&a, &b, Duration::from_millis(800)).await;
    assert!(*b.leading.borrow());
    for r in [a, b] {
        r.stop.send(true).unwrap();
        r.task.await.unwrap();
    }
    assert_eq!(holder(&admin).await, None, "released on shutdown");
    cluster.shutdown().await;
}
