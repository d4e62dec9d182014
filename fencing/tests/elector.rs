//! The leader elector on the in-memory store, in virtual time (`start_paused`): the
//! logic is ours, so time is too. The Postgres behaviour (a stopped server, a
//! failover, frozen processes) is in the Postgres test files.

use futures_util::FutureExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};
use tradepulse_fencing::{
    ElectorConfig, Error, FollowerReason, LeaderElector, Leadership, Lease, LeaseFencer,
    LostReason, ManualClock, MemoryLeaseFencer,
};

const TTL: Duration = Duration::from_secs(1);

fn config(holder: &str) -> ElectorConfig {
    ElectorConfig::new("btc-usd", holder, TTL)
}

async fn leader_token(elector: &LeaderElector) -> u64 {
    let mut role = elector.watch();
    timeout(Duration::from_secs(10), role.wait_for(|r| r.is_leader()))
        .await
        .expect("leader in time")
        .expect("elector alive");
    elector.leadership().token().expect("leader")
}

/// A store whose calls hang while `hang` is set: a server that stopped answering.
#[derive(Debug)]
struct Hanging {
    inner: MemoryLeaseFencer,
    hang: AtomicBool,
}

impl Hanging {
    async fn gate(&self) {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait::async_trait]
impl LeaseFencer for Hanging {
    async fn acquire(&self, resource: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        self.gate().await;
        self.inner.acquire(resource, holder, ttl).await
    }
    async fn renew(&self, lease: &Lease) -> Result<Lease, Error> {
        self.gate().await;
        self.inner.renew(lease).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.gate().await;
        self.inner.release(lease).await
    }
    async fn current(
        &self,
        resource: &str,
    ) -> Result<Option<tradepulse_fencing::CurrentLease>, Error> {
        self.inner.current(resource).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lone_elector_leads_and_keeps_its_token_through_many_renewals() {
    let store = Arc::new(MemoryLeaseFencer::new());
    let elector = LeaderElector::try_spawn(store.clone(), config("engine-a")).unwrap();
    let token = leader_token(&elector).await;
    let mut role = elector.watch();
    let mut renewals = 0;
    let until = Instant::now() + TTL * 20;
    while Instant::now() < until {
        role.changed().await.unwrap();
        let now = role.borrow_and_update().clone();
        match now {
            Leadership::Leader { token: t, deadline } => {
                assert_eq!(t, token, "a renewal keeps the token");
                assert!(deadline > Instant::now());
                renewals += 1;
            }
            other => panic!("stepped down: {other:?}"),
        }
    }
    assert!(renewals >= 40, "renewed {renewals} times in 20 ttls");
    let current = store.current("btc-usd").await.unwrap().unwrap();
    assert_eq!(
        (current.holder.as_str(), current.token),
        ("engine-a", token)
    );
    elector.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn of_two_electors_one_leads_and_shutdown_releases_to_the_other() {
    let store = Arc::new(MemoryLeaseFencer::new());
    let a = LeaderElector::try_spawn(store.clone(), config("engine-a")).unwrap();
    let first = leader_token(&a).await;
    let b = LeaderElector::try_spawn(store.clone(), config("engine-b")).unwrap();
    let mut b_role = b.watch();
    b_role
        .wait_for(|r| matches!(r, Leadership::Follower { reason: FollowerReason::HeldBy { holder, token } } if holder == "engine-a" && *token == first))
        .await
        .unwrap();
    sleep(TTL * 5).await;
    assert!(a.is_leader() && !b.is_leader(), "exactly one leader");

    let mut a_role = a.watch();
    a.shutdown().await.unwrap();
    assert_eq!(
        *a_role.borrow_and_update(),
        Leadership::Follower {
            reason: FollowerReason::ShutDown
        }
    );
    // Released, not left to expire: the resource is free at once.
    let current = store.current("btc-usd").await.unwrap();
    assert!(
        current.as_ref().is_none_or(|c| c.holder == "engine-b"),
        "{current:?}"
    );
    let second = leader_token(&b).await;
    assert!(second > first);
    b.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_store_stops_answering_steps_down_at_its_deadline_before_the_store_expires_it(
) {
    let store = Arc::new(Hanging {
        inner: MemoryLeaseFencer::new(),
        hang: AtomicBool::new(false),
    });
    let elector = LeaderElector::try_spawn(store.clone(), config("engine-a")).unwrap();
    leader_token(&elector).await;
    sleep(TTL * 3).await;
    store.hang.store(true, Ordering::SeqCst);
    let mut role = elector.watch();
    let mut deadline = None;
    let stepped_down = loop {
        if let Leadership::Leader { deadline: d, .. } = &*role.borrow_and_update() {
            deadline = Some(*d);
        }
        role.changed().await.unwrap();
        if let Leadership::Follower { reason } = &*role.borrow() {
            break (reason.clone(), Instant::now());
        }
    };
    let deadline = deadline.expect("was leader");
    assert_eq!(stepped_down.0, FollowerReason::DeadlineReached);
    assert!(stepped_down.1 >= deadline);
    assert!(stepped_down.1 <= deadline + Duration::from_millis(5));
    // The store (judging by the same clock here) still has the lease: the holder
    // stopped before anyone else could have been granted the resource.
    let current = store
        .current("btc-usd")
        .await
        .unwrap()
        .expect("still leased");
    assert!(current.expires_in >= TTL / 20, "{:?}", current.expires_in);
    drop(elector);
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_over_meanwhile_is_reported_lost_at_the_next_renewal() {
    // The store's clock runs ahead of the holder's (a paused holder, say): the lease
    // expires in the store while the holder's deadline is still ahead.
    let clock = Arc::new(ManualClock::new());
    let store = Arc::new(MemoryLeaseFencer::new().with_clock(clock.clone()));
    let a = LeaderElector::try_spawn(store.clone(), config("engine-a")).unwrap();
    let first = leader_token(&a).await;
    clock.advance(TTL * 2);
    let b = store
        .acquire("btc-usd", "engine-b", TTL * 30)
        .await
        .expect("expired in the store");
    let mut role = a.watch();
    let reason = timeout(TTL, role.wait_for(|r| !r.is_leader()))
        .await
        .expect("stepped down within a renew interval")
        .unwrap()
        .clone();
    assert_eq!(
        reason,
        Leadership::Follower {
            reason: FollowerReason::LeaseLost(LostReason::Superseded { token: b.token() })
        }
    );
    assert!(b.token() > first);
    role.wait_for(|r| matches!(r, Leadership::Follower { reason: FollowerReason::HeldBy { holder, .. } } if holder == "engine-b"))
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    let current = store.current("btc-usd").await.unwrap().unwrap();
    assert_eq!(
        current.holder, "engine-b",
        "a follower's shutdown releases nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_shutdown_future_still_releases_the_lease() {
    let store = Arc::new(MemoryLeaseFencer::new());
    let elector = LeaderElector::try_spawn(store.clone(), config("engine-a")).unwrap();
    leader_token(&elector).await;
    let role = elector.watch();
    // Polled once, then abandoned (the caller was cancelled).
    assert!(elector.shutdown().now_or_never().is_none());
    assert!(!role.borrow().is_leader(), "stepped down at once");
    timeout(Duration::from_secs(1), async {
        while store.current("btc-usd").await.unwrap().is_some() {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("released by the background task");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_elector_steps_down_and_releases() {
    let store = Arc::new(MemoryLeaseFencer::new());
    let elector = LeaderElector::try_spawn(store.clone(), config("engine-a")).unwrap();
    leader_token(&elector).await;
    let role = elector.watch();
    drop(elector);
    assert_eq!(
        *role.borrow(),
        Leadership::Follower {
            reason: FollowerReason::ShutDown
        }
    );
    timeout(Duration::from_secs(1), async {
        while store.current("btc-usd").await.unwrap().is_some() {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("released");
}

#[tokio::test(start_paused = true)]
async fn a_published_leadership_expires_on_its_own_when_the_elector_cannot_run() {
    let store = Arc::new(MemoryLeaseFencer::new());
    let elector = LeaderElector::try_spawn(store, config("engine-a")).unwrap();
    let token = leader_token(&elector).await;
    let seen = elector.leadership();
    assert_eq!(seen.token(), Some(token));
    // A process paused past the deadline wakes up holding this value: it must not
    // read it as leadership.
    let Leadership::Leader { deadline, .. } = seen else {
        panic!("leader")
    };
    tokio::time::advance(deadline - Instant::now()).await;
    assert!(!seen.is_leader());
    assert_eq!(seen.token(), None);
    elector.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_settings_are_refused_before_campaigning() {
    let store: Arc<dyn LeaseFencer> = Arc::new(MemoryLeaseFencer::new());
    for (config, what) in [
        (ElectorConfig::new("", "engine-a", TTL), "resource"),
        (ElectorConfig::new("btc-usd", "engine a\n", TTL), "holder"),
        (
            ElectorConfig::new("btc-usd", "engine-a", Duration::ZERO),
            "ttl",
        ),
        (
            config("engine-a").with_renew_interval(TTL),
            "renew interval",
        ),
        (
            config("engine-a").with_retry_interval(Duration::ZERO),
            "retry interval",
        ),
    ] {
        let err = LeaderElector::try_spawn(store.clone(), config).expect_err("invalid");
        assert!(
            matches!(err, Error::Invalid { what: w, .. } if w == what),
            "{err:?}"
        );
    }
    assert!(store.current("btc-usd").await.unwrap().is_none());
}
