//! A fleet in one process: 100 kill-switch handles, each with its own store and pool,
//! on one primary. Every handle converges on every change by push alone (polling at
//! 1 h), the primary sees one LISTEN connection for all of them, and a change costs
//! one NOTIFY (the payload carries the state: no handle reads it back).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tradepulse_killswitch::{
    Audit, KillSwitch, KillSwitchConfig, KillSwitchStore, PostgresKillSwitchStore,
};
use tradepulse_testkit::{fast_settings, own_primary, wait_until, Cluster};

const HANDLES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_handles_converge_on_every_change_over_one_push_connection() {
    // Room for a pool connection per handle (a fleet's primary is sized for it).
    let cluster = Cluster::builder()
        .setting("max_connections", "250")
        .start()
        .await
        .expect("cluster");
    let db = cluster.create_database().await.expect("database");
    let dsn = cluster.primary().dsn(&db);
    let writer = PostgresKillSwitchStore::new(fast_settings(&dsn).build().unwrap()).unwrap();
    writer.migrate().await.unwrap();
    let config = KillSwitchConfig::default()
        .with_poll_interval(Duration::from_secs(3600))
        .with_staleness_window(Duration::from_secs(7200));
    let handles: Vec<KillSwitch> = (0..HANDLES)
        .map(|_| {
            let settings = fast_settings(&dsn).with_pool_size(1).build().unwrap();
            let store = PostgresKillSwitchStore::new(settings).unwrap();
            KillSwitch::spawn(Arc::new(store), config.clone())
        })
        .collect();
    wait_until(
        "every handle loaded and listening",
        Duration::from_secs(30),
        || {
            handles
                .iter()
                .all(|h| h.health().status == failover_core::ComponentStatus::Operational)
        },
    )
    .await;

    let listen = cluster
        .primary()
        .query(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%\\_listen'",
        )
        .await
        .unwrap();
    assert_eq!(
        listen[0][0].as_deref(),
        Some("1"),
        "one push connection for {HANDLES} handles"
    );

    for round in 0..3 {
        let started = Instant::now();
        let state = writer
            .engage(&Audit::new("ops", format!("halt {round}")))
            .await
            .unwrap();
        wait_until("every handle halted", Duration::from_secs(5), || {
            handles.iter().all(|h| h.is_halted())
        })
        .await;
        let halted = started.elapsed();
        assert!(handles
            .iter()
            .all(|h| h.status().state.unwrap().position == state.position));
        let started = Instant::now();
        writer
            .disengage(&Audit::new("ops", format!("resume {round}")).with_ticket("CHG-7"))
            .await
            .unwrap();
        wait_until("every handle allowed", Duration::from_secs(5), || {
            handles.iter().all(|h| !h.is_halted())
        })
        .await;
        eprintln!(
            "round {round}: {HANDLES} handles halted within {halted:?}, allowed within {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_first_load_that_fails_is_retried_long_before_the_poll_interval() {
    let (cluster, db) = own_primary().await.expect("cluster");
    let dsn = cluster.primary().dsn(&db);
    let store = PostgresKillSwitchStore::new(fast_settings(&dsn).build().unwrap()).unwrap();
    store.migrate().await.unwrap();
    cluster.primary().stop_immediate().await.unwrap();
    let switch = KillSwitch::spawn(
        Arc::new(store),
        KillSwitchConfig::default()
            .with_poll_interval(Duration::from_secs(3600))
            .with_staleness_window(Duration::from_secs(7200)),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(switch.is_halted(), "not loaded: halted");
    cluster.primary().start().await.unwrap();
    let started = Instant::now();
    wait_until("loaded after the restart", Duration::from_secs(10), || {
        !switch.is_halted()
    })
    .await;
    eprintln!(
        "first load succeeded {:?} after the restart",
        started.elapsed()
    );
}

/// Counts the reads a handle makes of the store it watches.
#[derive(Debug)]
struct Counting {
    inner: PostgresKillSwitchStore,
    loads: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl tradepulse_killswitch::FeedSource for Counting {
    type Item = tradepulse_killswitch::KillSwitchState;
    type Error = tradepulse_killswitch::Error;
    async fn subscribe(
        &self,
    ) -> Result<tradepulse_killswitch::Subscription, tradepulse_killswitch::Error> {
        self.inner.subscribe().await
    }
    async fn contains(
        &self,
        p: tradepulse_killswitch::Position,
    ) -> Result<bool, tradepulse_killswitch::Error> {
        self.inner.contains(p).await
    }
}

#[async_trait::async_trait]
impl KillSwitchStore for Counting {
    async fn load(
        &self,
    ) -> Result<tradepulse_killswitch::KillSwitchState, tradepulse_killswitch::Error> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.load().await
    }
    async fn engage(
        &self,
        a: &Audit,
    ) -> Result<
        tradepulse_killswitch::Applied<tradepulse_killswitch::KillSwitchState>,
        tradepulse_killswitch::Error,
    > {
        self.inner.engage(a).await
    }
    async fn disengage(
        &self,
        a: &Audit,
    ) -> Result<
        tradepulse_killswitch::Applied<tradepulse_killswitch::KillSwitchState>,
        tradepulse_killswitch::Error,
    > {
        self.inner.disengage(a).await
    }
    async fn history(
        &self,
        n: usize,
    ) -> Result<Vec<tradepulse_killswitch::KillSwitchEvent>, tradepulse_killswitch::Error> {
        self.inner.history(n).await
    }
}

#[tokio::test]
async fn a_change_reaches_a_handle_in_the_notification_without_a_read() {
    use std::sync::atomic::Ordering;
    let (cluster, db) = own_primary().await.expect("cluster");
    let dsn = cluster.primary().dsn(&db);
    let writer = PostgresKillSwitchStore::new(fast_settings(&dsn).build().unwrap()).unwrap();
    writer.migrate().await.unwrap();
    let reader = Arc::new(Counting {
        inner: PostgresKillSwitchStore::new(fast_settings(&dsn).build().unwrap()).unwrap(),
        loads: Default::default(),
    });
    let switch = KillSwitch::spawn(
        reader.clone(),
        KillSwitchConfig::default()
            .with_poll_interval(Duration::from_secs(3600))
            .with_staleness_window(Duration::from_secs(7200)),
    );
    wait_until("operational", Duration::from_secs(10), || {
        switch.health().status == failover_core::ComponentStatus::Operational
    })
    .await;
    let loads = reader.loads.load(Ordering::SeqCst);
    for round in 0..3 {
        let s = writer
            .engage(&Audit::new("ops", format!("halt {round}")))
            .await
            .unwrap()
            .into_inner();
        wait_until("halted", Duration::from_secs(5), || switch.is_halted()).await;
        assert_eq!(
            switch.status().state.unwrap(),
            s,
            "the notified state is the stored one"
        );
        let audit = Audit::new("ops", format!("resume {round}")).with_ticket("CHG-8");
        writer.disengage(&audit).await.unwrap();
        wait_until("allowed", Duration::from_secs(5), || !switch.is_halted()).await;
    }
    assert_eq!(
        reader.loads.load(Ordering::SeqCst),
        loads,
        "no read per change"
    );
}
