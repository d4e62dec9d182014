//! The lease-store contract: grants, refusals naming the holder, supersession,
//! release, expiry by the store's clock, renewal, the local deadline before the
//! store's expiry, invalid input, independent resources, rising tokens, verbatim
//! names, and exactly one grant among racing holders.

use crate::{Error, LeaseFencer, LostReason};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// A ttl that does not run out during a test.
const LONG: Duration = Duration::from_secs(30);
/// A ttl that runs out during a test.
const SHORT: Duration = Duration::from_millis(300);
/// Sleep past a `SHORT` lease, with room for scheduling noise.
const PAST_SHORT: Duration = Duration::from_millis(450);

fn expect_lost(result: Result<crate::Lease, Error>) -> LostReason {
    match result {
        Err(Error::LeaseLost { reason, .. }) => reason,
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

/// A free resource is granted with a positive token; `current` reports the holder.
pub async fn acquire_grants_a_free_resource(store: &dyn LeaseFencer) {
    assert_eq!(store.current("btc-usd").await.expect("current"), None);
    let lease = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("acquire");
    assert_eq!(lease.resource(), "btc-usd");
    assert_eq!(lease.holder(), "engine-a");
    assert_eq!(lease.ttl(), LONG);
    assert!(lease.token() > 0);
    assert!(lease.is_live());
    let current = store
        .current("btc-usd")
        .await
        .expect("current")
        .expect("held");
    assert_eq!(current.resource, "btc-usd");
    assert_eq!(current.holder, "engine-a");
    assert_eq!(current.token, lease.token());
    assert!(current.expires_in <= LONG && current.expires_in > LONG / 2);
}

/// A resource held by another holder is refused with `Held`, naming the holder and
/// its token; nothing changes.
pub async fn a_held_resource_is_refused_naming_the_holder(store: &dyn LeaseFencer) {
    let lease = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("acquire");
    let err = store
        .acquire("btc-usd", "engine-b", LONG)
        .await
        .expect_err("held by engine-a");
    match &err {
        Error::Held {
            resource,
            holder,
            token,
            expires_in,
        } => {
            assert_eq!(resource, "btc-usd");
            assert_eq!(holder, "engine-a");
            assert_eq!(*token, lease.token());
            assert!(*expires_in > LONG / 2 && *expires_in <= LONG);
        }
        other => panic!("expected Held, got {other:?}"),
    }
    assert!(err.to_string().contains("engine-a"), "{err}");
    let current = store.current("btc-usd").await.expect("current").unwrap();
    assert_eq!(
        (current.holder.as_str(), current.token),
        ("engine-a", lease.token())
    );
    store.renew(&lease).await.expect("the holder is unaffected");
}

/// The same holder acquiring again (a restarted process) gets a newer token; its old
/// lease is superseded: renewing it is `LeaseLost`, releasing it frees nothing.
pub async fn reacquire_by_the_same_holder_supersedes_its_lease(store: &dyn LeaseFencer) {
    let old = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("acquire");
    let new = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("re-acquire");
    assert!(new.token() > old.token());
    assert_eq!(
        expect_lost(store.renew(&old).await),
        LostReason::Superseded { token: new.token() }
    );
    store
        .release(&old)
        .await
        .expect("release of a superseded lease is a no-op");
    let current = store.current("btc-usd").await.expect("current").unwrap();
    assert_eq!(current.token, new.token());
    store.renew(&new).await.expect("the new lease is current");
}

/// Release frees the resource at once; the next grant has a higher token; renewing
/// the released lease is `LeaseLost(Released)`.
pub async fn release_frees_the_resource_and_tokens_keep_rising(store: &dyn LeaseFencer) {
    let first = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("acquire");
    store.release(&first).await.expect("release");
    assert_eq!(store.current("btc-usd").await.expect("current"), None);
    assert_eq!(expect_lost(store.renew(&first).await), LostReason::Released);
    let second = store
        .acquire("btc-usd", "engine-b", LONG)
        .await
        .expect("free after release");
    assert!(second.token() > first.token());
    assert_eq!(
        expect_lost(store.renew(&first).await),
        LostReason::Superseded {
            token: second.token()
        }
    );
}

/// Release is idempotent and never frees a newer holder's lease.
pub async fn release_is_idempotent_and_never_frees_a_newer_holder(store: &dyn LeaseFencer) {
    let a = store
        .acquire("btc-usd", "engine-a", SHORT)
        .await
        .expect("acquire");
    store.release(&a).await.expect("release");
    store.release(&a).await.expect("release again");
    let b = store
        .acquire("btc-usd", "engine-b", LONG)
        .await
        .expect("acquire");
    store.release(&a).await.expect("stale release");
    let current = store.current("btc-usd").await.expect("current").unwrap();
    assert_eq!(
        (current.holder.as_str(), current.token),
        ("engine-b", b.token())
    );
}

/// Expiry by the store's clock: after the ttl the resource is free, another holder
/// gets a higher token, and the old lease is superseded.
pub async fn an_expired_lease_can_be_taken_and_its_token_is_superseded(store: &dyn LeaseFencer) {
    let a = store
        .acquire("btc-usd", "engine-a", SHORT)
        .await
        .expect("acquire");
    assert!(matches!(
        store.acquire("btc-usd", "engine-b", LONG).await,
        Err(Error::Held { .. })
    ));
    sleep(PAST_SHORT).await;
    assert_eq!(store.current("btc-usd").await.expect("current"), None);
    let b = store
        .acquire("btc-usd", "engine-b", LONG)
        .await
        .expect("free after expiry");
    assert!(b.token() > a.token());
    assert_eq!(
        expect_lost(store.renew(&a).await),
        LostReason::Superseded { token: b.token() }
    );
}

/// Renewing an expired lease is `LeaseLost(Expired)` even when nobody took the
/// resource: expiry is final.
pub async fn renewing_an_expired_lease_is_lease_lost(store: &dyn LeaseFencer) {
    let a = store
        .acquire("btc-usd", "engine-a", SHORT)
        .await
        .expect("acquire");
    sleep(PAST_SHORT).await;
    assert_eq!(expect_lost(store.renew(&a).await), LostReason::Expired);
    let again = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("campaign again");
    assert!(again.token() > a.token());
}

/// Renewals keep a lease well past its first ttl, with the same token and a later
/// deadline; meanwhile others are refused.
pub async fn renew_extends_the_lease_and_keeps_the_token(store: &dyn LeaseFencer) {
    let mut lease = store
        .acquire("btc-usd", "engine-a", SHORT)
        .await
        .expect("acquire");
    let first = lease.clone();
    for _ in 0..5 {
        sleep(SHORT / 3).await;
        let renewed = store.renew(&lease).await.expect("renew");
        assert_eq!(renewed.token(), first.token());
        assert!(renewed.deadline() > lease.deadline());
        lease = renewed;
    }
    // 500 ms after the grant: the 300 ms lease lives on through the renewals.
    assert!(matches!(
        store.acquire("btc-usd", "engine-b", LONG).await,
        Err(Error::Held { ref holder, token, .. }) if holder == "engine-a" && token == first.token()
    ));
    let current = store.current("btc-usd").await.expect("current").unwrap();
    assert_eq!(current.token, first.token());
}

/// The lease's local deadline (instant before the request + ttl − margin) falls before
/// the store's own expiry.
pub async fn the_local_deadline_comes_before_the_store_expiry(store: &dyn LeaseFencer) {
    let before = Instant::now();
    let lease = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("acquire");
    let after = Instant::now();
    assert!(
        lease.deadline() <= after + LONG,
        "{:?}",
        lease.deadline() - before
    );
    assert!(lease.deadline() > before + LONG / 2);
    let read_at = Instant::now();
    let current = store.current("btc-usd").await.expect("current").unwrap();
    // The store expires no earlier than read_at + expires_in.
    assert!(
        lease.deadline() < read_at + current.expires_in,
        "deadline {:?} after the store's expiry {:?}",
        lease.deadline() - before,
        read_at + current.expires_in - before
    );
    let renewed = store.renew(&lease).await.expect("renew");
    let read_at = Instant::now();
    let current = store.current("btc-usd").await.expect("current").unwrap();
    assert!(renewed.deadline() < read_at + current.expires_in);
}

/// Bad names and ttls are `Invalid` and change nothing.
pub async fn invalid_input_is_refused_and_changes_nothing(store: &dyn LeaseFencer) {
    let held = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("acquire");
    let long = "x".repeat(crate::MAX_NAME_CHARS + 1);
    let bad_names = [
        "",
        "   ",
        " btc-usd",
        "btc-usd\n",
        "btc\u{0}usd",
        "tab\there",
        &long,
    ];
    for bad in bad_names {
        let err = store
            .acquire(bad, "engine-b", LONG)
            .await
            .expect_err("bad resource");
        assert!(
            matches!(
                err,
                Error::Invalid {
                    what: "resource",
                    ..
                }
            ),
            "{bad:?}: {err:?}"
        );
        let err = store
            .acquire("eth-usd", bad, LONG)
            .await
            .expect_err("bad holder");
        assert!(
            matches!(err, Error::Invalid { what: "holder", .. }),
            "{bad:?}: {err:?}"
        );
        assert!(matches!(
            store.current(bad).await,
            Err(Error::Invalid {
                what: "resource",
                ..
            })
        ));
    }
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        crate::MAX_TTL + Duration::from_secs(1),
    ] {
        let err = store
            .acquire("eth-usd", "engine-b", ttl)
            .await
            .expect_err("bad ttl");
        assert!(
            matches!(err, Error::Invalid { what: "ttl", .. }),
            "{ttl:?}: {err:?}"
        );
        assert!(
            err.to_string().starts_with("refused, nothing changed"),
            "{err}"
        );
    }
    assert_eq!(store.current("eth-usd").await.expect("current"), None);
    let current = store.current("btc-usd").await.expect("current").unwrap();
    assert_eq!(current.token, held.token());
    // Nothing was granted in between: the next token is the very next one.
    store.release(&held).await.expect("release");
    let next = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("acquire");
    assert_eq!(next.token(), held.token() + 1);
}

/// Resources are independent: holding one does not block another, and each has its
/// own tokens.
pub async fn resources_are_independent(store: &dyn LeaseFencer) {
    let btc = store
        .acquire("btc-usd", "engine-a", LONG)
        .await
        .expect("btc");
    let eth = store
        .acquire("eth-usd", "engine-b", LONG)
        .await
        .expect("eth");
    store.release(&btc).await.expect("release");
    assert_eq!(store.current("btc-usd").await.expect("current"), None);
    let current = store.current("eth-usd").await.expect("current").unwrap();
    assert_eq!(
        (current.holder.as_str(), current.token),
        ("engine-b", eth.token())
    );
    let btc2 = store
        .acquire("btc-usd", "engine-c", LONG)
        .await
        .expect("btc again");
    assert_eq!(btc2.token(), btc.token() + 1);
}

/// Tokens strictly increase over grants by several holders through release, expiry
/// and re-acquire.
pub async fn tokens_strictly_increase_over_many_grants(store: &dyn LeaseFencer) {
    let mut last = 0;
    for round in 0..12 {
        let holder = ["engine-a", "engine-b", "engine-c"][round % 3];
        let ttl = if round % 4 == 3 { SHORT } else { LONG };
        let lease = store
            .acquire("btc-usd", holder, ttl)
            .await
            .expect("acquire");
        assert!(
            lease.token() > last,
            "round {round}: {} after {last}",
            lease.token()
        );
        last = lease.token();
        match round % 4 {
            0 | 1 => store.release(&lease).await.expect("release"),
            2 => {
                // The same holder again, without releasing.
                let again = store.acquire("btc-usd", holder, LONG).await.expect("again");
                assert!(again.token() > last);
                last = again.token();
                store.release(&again).await.expect("release");
            }
            _ => sleep(PAST_SHORT).await,
        }
    }
}

/// Names with quotes, SQL and non-ASCII text are stored and returned verbatim.
pub async fn names_are_stored_verbatim(store: &dyn LeaseFencer) {
    let resource = "o'brien; DROP TABLE fencing_leases; -- \"perp\" 💥";
    let holder = "ünïcode $$ host:42/pid 7";
    let lease = store
        .acquire(resource, holder, LONG)
        .await
        .expect("acquire");
    assert_eq!((lease.resource(), lease.holder()), (resource, holder));
    let current = store.current(resource).await.expect("current").unwrap();
    assert_eq!(
        (current.resource.as_str(), current.holder.as_str()),
        (resource, holder)
    );
    store.renew(&lease).await.expect("renew");
    store.release(&lease).await.expect("release");
    assert_eq!(store.current(resource).await.expect("current"), None);
}

/// 16 holders racing for one free resource: exactly one is granted, the others are
/// told who holds it.
pub async fn concurrent_acquires_grant_exactly_one(store: Arc<dyn LeaseFencer>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(
                async move { store.acquire("btc-usd", &format!("engine-{i}"), LONG).await },
            )
        })
        .collect();
    let mut granted = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(lease) => granted.push(lease),
            Err(Error::Held { holder, token, .. }) => refused.push((holder, token)),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(granted.len(), 1, "granted: {granted:?}");
    assert_eq!(refused.len(), 15);
    let winner = &granted[0];
    assert!(refused
        .iter()
        .all(|(h, t)| h == winner.holder() && *t == winner.token()));
}

/// Expands into one named `#[tokio::test]` per behaviour of the lease contract.
///
/// `$setup` is an async fn returning `(Arc<dyn LeaseFencer>, guard)`, where the guard
/// keeps whatever the store needs alive (a database, say) until the test ends.
///
/// ```
/// use std::sync::Arc;
/// use tradepulse_fencing::{LeaseFencer, MemoryLeaseFencer};
/// async fn setup() -> (Arc<dyn LeaseFencer>, ()) {
///     (Arc::new(MemoryLeaseFencer::new()), ())
/// }
/// tradepulse_fencing::conformance_tests!(setup);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@tests $setup;
            acquire_grants_a_free_resource,
            a_held_resource_is_refused_naming_the_holder,
            reacquire_by_the_same_holder_supersedes_its_lease,
            release_frees_the_resource_and_tokens_keep_rising,
            release_is_idempotent_and_never_frees_a_newer_holder,
            an_expired_lease_can_be_taken_and_its_token_is_superseded,
            renewing_an_expired_lease_is_lease_lost,
            renew_extends_the_lease_and_keeps_the_token,
            the_local_deadline_comes_before_the_store_expiry,
            invalid_input_is_refused_and_changes_nothing,
            resources_are_independent,
            tokens_strictly_increase_over_many_grants,
            names_are_stored_verbatim,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_acquires_grant_exactly_one() {
            let (store, _guard) = $setup().await;
            $crate::conformance::concurrent_acquires_grant_exactly_one(store).await;
        }
    };
    (@tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $setup().await;
                $crate::conformance::$name(&*store).await;
            }
        )*
    };
}
