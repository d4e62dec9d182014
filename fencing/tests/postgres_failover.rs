//! Leases through database failures on real servers: a stopped server (the leader
//! steps down before its lease can have expired there) and kill -9 of the primary
//! with promotion of an asynchronous replica that never received the last grants
//! (the next token is still higher than every token issued before).

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{timeout, Instant};
use tradepulse_fencing::postgres::token_timeline;
use tradepulse_fencing::{
    ElectorConfig, FollowerReason, LeaderElector, Leadership, LeaseFencer, LostReason,
};
use tradepulse_testkit::Cluster;

const LONG: Duration = Duration::from_secs(30);

async fn leader_token(elector: &LeaderElector) -> u64 {
    let mut role = elector.watch();
    timeout(Duration::from_secs(15), role.wait_for(|r| r.is_leader()))
        .await
        .expect("leader in time")
        .expect("elector alive");
    elector.leadership().token().expect("leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_stopped_a_leader_steps_down_before_its_lease_could_expire_there() {
    let (cluster, db) = support::primary().await;
    let store = Arc::new(support::store(&cluster.primary().dsn(&db)).await);
    let ttl = Duration::from_secs(1);
    let margin = ttl.mul_f64(tradepulse_fencing::DEFAULT_SAFETY_MARGIN);
    let elector = LeaderElector::try_spawn(
        store.clone(),
        ElectorConfig::new("btc-usd", "engine-a", ttl),
    )
    .unwrap();
    let token = leader_token(&elector).await;
    tokio::time::sleep(ttl * 2).await; // a few renewals

    let mut role = elector.watch();
    let mut last_deadline = None;
    cluster.primary().stop_immediate().await.unwrap();
    let (reason, stepped_down_at, stepped_down_wall) = loop {
        match role.borrow_and_update().clone() {
            Leadership::Leader { token: t, deadline } => {
                assert_eq!(t, token);
                last_deadline = Some(deadline);
            }
            Leadership::Follower { reason } => {
                break (reason, Instant::now(), SystemTime::now());
            }
        }
        timeout(ttl * 3, role.changed())
            .await
            .expect("stepped down within a lease")
            .unwrap();
    };
    let deadline = last_deadline.expect("was leader when the server stopped");
    assert_eq!(reason, FollowerReason::DeadlineReached);
    assert!(stepped_down_at >= deadline);
    // The server granted or renewed no earlier than the request left, so its expiry
    // is at least deadline + margin.
    assert!(
        stepped_down_at < deadline + margin,
        "stepped down {:?} after the deadline (margin {margin:?})",
        stepped_down_at - deadline
    );
    let overrun = stepped_down_at - deadline;

    // No grant can land later: stop the elector (a campaign in flight ends within the
    // retry budget) before starting the server again. Having stepped down, it holds
    // nothing to release.
    timeout(Duration::from_secs(10), elector.shutdown())
        .await
        .expect("shutdown bounded by the retry budget")
        .expect("nothing to release");
    cluster.primary().start().await.unwrap();
    let rows = cluster
        .primary()
        .query(
            &db,
            "SELECT token, extract(epoch FROM expires_at)::text FROM fencing_leases \
             WHERE resource = 'btc-usd'",
        )
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some(token.to_string().as_str()));
    let expires_at: f64 = rows[0][1].as_deref().unwrap().parse().unwrap();
    let stepped_down: f64 = stepped_down_wall
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        stepped_down < expires_at,
        "stepped down {:.3}s after the server's expiry",
        stepped_down - expires_at
    );
    eprintln!(
        "stepped down {overrun:?} after the local deadline, {:.0} ms before the server's expiry",
        (expires_at - stepped_down) * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill9_and_promotion_of_an_async_replica_new_tokens_are_above_all_issued_before() {
    let cluster = Cluster::start_with_replica().await.unwrap();
    assert!(!cluster.is_synchronous());
    let db = cluster.create_database().await.unwrap();
    let store = Arc::new(support::store(&cluster.multi_host_dsn(&db)).await);
    let mut issued = Vec::new();
    for holder in ["engine-a", "engine-b", "engine-c"] {
        let lease = store.acquire("btc-usd", holder, LONG).await.unwrap();
        issued.push(lease.token());
        store.release(&lease).await.unwrap();
    }
    cluster
        .wait_replica_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    let replicated = *issued.last().unwrap();

    // The replica falls behind: the next grants exist on the primary only (an
    // asynchronous commit does not wait for it).
    let replica = cluster.replica().unwrap();
    replica.stop_immediate().await.unwrap();
    for holder in ["engine-a", "engine-b", "engine-c", "engine-a"] {
        let lease = store.acquire("btc-usd", holder, LONG).await.unwrap();
        issued.push(lease.token());
        store.release(&lease).await.unwrap();
    }
    let lost_leader = store.acquire("btc-usd", "engine-old", LONG).await.unwrap();
    issued.push(lost_leader.token());
    let newest_before = *issued.iter().max().unwrap();
    assert!(issued.windows(2).all(|w| w[0] < w[1]), "{issued:?}");

    cluster.primary().kill9().await.unwrap();
    replica.start().await.unwrap();
    replica.promote().await.unwrap();

    // The promoted replica never saw the last grants: a plain counter would issue
    // their tokens again.
    let rows = replica
        .query(
            &db,
            "SELECT token FROM fencing_leases WHERE resource = 'btc-usd'",
        )
        .await
        .unwrap();
    let on_replica: u64 = rows[0][0].as_deref().unwrap().parse().unwrap();
    assert_eq!(
        on_replica, replicated,
        "the replica has the grants it had replayed"
    );
    assert!(on_replica < newest_before);

    // The old leader, renewing through the same multi-host DSN, learns its lease is
    // unknown to the new primary.
    let err = store
        .renew(&lost_leader)
        .await
        .expect_err("lost in the failover");
    assert!(
        matches!(
            err,
            tradepulse_fencing::Error::LeaseLost {
                reason: LostReason::Unrecorded,
                ..
            }
        ),
        "{err:?}"
    );

    // A new leader on the same store object: no restart.
    let elector = LeaderElector::try_spawn(
        store.clone(),
        ElectorConfig::new("btc-usd", "engine-new", Duration::from_secs(1)),
    )
    .unwrap();
    let token = leader_token(&elector).await;
    assert!(
        token > newest_before,
        "new token {token} is not above {newest_before}"
    );
    assert!(token_timeline(token) > token_timeline(newest_before));

    // At the resource (here on the new primary too) the old leader's token is refused
    // once the new leader has written.
    let log = support::PgFencedLog::new(&replica.dsn(&db)).await;
    use tradepulse_fencing::conformance::FencedLog;
    log.append("btc-usd", token, "new leader").await.unwrap();
    let err = log
        .append("btc-usd", lost_leader.token(), "old leader")
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Some(tradepulse_fencing::FENCING_TOKEN));
    eprintln!(
        "issued before the failover up to {newest_before} (timeline {}), replica had {on_replica}, \
         first token after promotion {token} (timeline {})",
        token_timeline(newest_before),
        token_timeline(token)
    );
    elector.shutdown().await.unwrap();
}
