//! The scoped-controls handle: leaf gates follow their scopes, their ancestors and the
//! kill switch; fail closed as HALTED; tell subscribers; re-derive only what changed.
//! First with the in-memory stores, then with PostgreSQL (another process told by
//! push only, and a lossy failover).

use failover_core::{ComponentStatus, DbError, DbErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tradepulse_killswitch::scope::{
    self, DecidedBy, EffectiveScope, GateCause, MemoryScopeStore, OrderIntent, ScopeChange,
    ScopeDelta, ScopeEvent, ScopeGate, ScopeMode, ScopeModes, ScopeModesConfig, ScopePath,
    ScopeState, ScopeStore,
};
use tradepulse_killswitch::{
    Applied, Audit, FeedSource, KillSwitch, KillSwitchConfig, KillSwitchStore,
    MemoryKillSwitchStore, Position,
};
use tradepulse_testkit::wait_until;

const WAIT: Duration = Duration::from_secs(10);

fn path(p: &str) -> ScopePath {
    ScopePath::parse(p).expect("canonical")
}

async fn create(store: &dyn ScopeStore, paths: &[&str]) {
    for p in paths {
        store
            .create_scope(&path(p), &Audit::new("ops:alice", format!("register {p}")))
            .await
            .expect("create");
    }
}

async fn set(store: &dyn ScopeStore, p: &str, mode: ScopeMode) -> ScopeState {
    store
        .set_scope_mode(
            p,
            mode,
            &Audit::new("ops:bob", format!("{p} to {mode}")).with_ticket("INC-7"),
        )
        .await
        .expect("set")
        .into_inner()
}

const TREE: &[&str] = &[
    "acme",
    "acme/eq",
    "acme/eq/mm-1",
    "acme/eq/mm-1/acct-42",
    "acme/fx",
    "venue",
    "venue/xnys",
];

struct Fixture {
    root: Arc<MemoryKillSwitchStore>,
    store: Arc<MemoryScopeStore>,
    modes: ScopeModes,
}

async fn fixture() -> Fixture {
    let root = Arc::new(MemoryKillSwitchStore::new());
    let store = Arc::new(MemoryScopeStore::new(root.clone()));
    create(&*store, TREE).await;
    let switch = KillSwitch::spawn(root.clone(), KillSwitchConfig::default());
    let modes = ScopeModes::spawn(store.clone(), switch, ScopeModesConfig::default());
    assert!(modes.ready(WAIT).await, "{:?}", modes.health());
    Fixture { root, store, modes }
}

async fn wait_mode(gate: &ScopeGate, mode: ScopeMode) {
    wait_until(&format!("gate {:?} at {mode}", gate.leaves()), WAIT, || {
        gate.mode() == mode
    })
    .await;
}

#[tokio::test]
async fn a_leaf_follows_its_ancestors_strictest_mode_and_a_sibling_tree_stays_normal() {
    let f = fixture().await;
    let leaf = f
        .modes
        .gate(&["acme/eq/mm-1/acct-42", "venue/xnys"])
        .unwrap();
    let fx = f.modes.gate(&["acme/fx"]).unwrap();
    assert_eq!(leaf.mode(), ScopeMode::Normal);
    assert_eq!(leaf.check(OrderIntent::Open), Ok(()));

    set(&*f.store, "acme/eq", ScopeMode::Halted).await;
    wait_mode(&leaf, ScopeMode::Halted).await;
    assert_eq!(fx.mode(), ScopeMode::Normal, "acme/fx is not under acme/eq");
    assert!(fx.allows(OrderIntent::Open));
    assert!(leaf.allows(OrderIntent::Cancel), "cancels always allowed");
    // Who, when and why are read off the order path: the refusal names them soon.
    wait_until("the refusal names who set acme/eq", WAIT, || {
        leaf.check(OrderIntent::Open)
            .err()
            .is_some_and(|r| r.change.is_some())
    })
    .await;
    let refusal = leaf.check(OrderIntent::Reduce).unwrap_err();
    assert_eq!(
        refusal.cause,
        GateCause::Decided(DecidedBy::Scope(path("acme/eq")))
    );
    assert_eq!(refusal.mode, ScopeMode::Halted);
    assert_eq!(refusal.change.as_ref().unwrap().actor, "ops:bob");
    assert_eq!(refusal.reason.as_deref(), Some("acme/eq to HALTED"));
    let text = refusal.to_string();
    assert!(
        text.contains("acme/eq") && text.contains("ops:bob") && text.contains("HALTED"),
        "{text}"
    );

    // A stricter own mode below cannot make the leaf less strict than HALTED.
    set(&*f.store, "acme/eq/mm-1", ScopeMode::CancelOnly).await;
    let version = f.store.changes_since(0).await.unwrap().version;
    assert!(f.modes.wait_for_version(version, WAIT).await);
    assert_eq!(leaf.mode(), ScopeMode::Halted);
    assert_eq!(
        leaf.check(OrderIntent::Open).unwrap_err().decided_by(),
        Some(&DecidedBy::Scope(path("acme/eq")))
    );

    // Relaxing acme/eq one step: the highest node with the strictest mode decides.
    set(&*f.store, "acme/eq", ScopeMode::CancelOnly).await;
    wait_mode(&leaf, ScopeMode::CancelOnly).await;
    assert_eq!(
        leaf.check(OrderIntent::Open).unwrap_err().decided_by(),
        Some(&DecidedBy::Scope(path("acme/eq")))
    );
    set(&*f.store, "acme/eq", ScopeMode::Normal).await;
    let version = f.store.changes_since(0).await.unwrap().version;
    assert!(f.modes.wait_for_version(version, WAIT).await);
    assert_eq!(leaf.mode(), ScopeMode::CancelOnly, "mm-1 still CANCEL_ONLY");
    assert_eq!(
        leaf.check(OrderIntent::Open).unwrap_err().decided_by(),
        Some(&DecidedBy::Scope(path("acme/eq/mm-1")))
    );
    // The other tree of the same order counts as well.
    set(&*f.store, "venue/xnys", ScopeMode::Halted).await;
    wait_mode(&leaf, ScopeMode::Halted).await;
    assert_eq!(
        f.modes.mode("acme/eq/mm-1/acct-42"),
        Some(ScopeMode::CancelOnly)
    );
    assert_eq!(f.modes.health().name, "scope");
    assert_eq!(f.modes.health().status, ComponentStatus::Operational);
}

#[tokio::test]
async fn unknown_and_non_canonical_leaves_are_refused_with_what_to_write() {
    let f = fixture().await;
    match f.modes.gate(&["acme/eqq"]).unwrap_err() {
        scope::Error::Control(scope::ScopeRefusal::UnknownScope {
            path: p,
            did_you_mean,
        }) => {
            assert_eq!(p, "acme/eqq");
            assert_eq!(did_you_mean, Some(path("acme/eq")));
        }
        other => panic!("{other}"),
    }
    let err = f.modes.gate(&["nope/x"]).unwrap_err();
    assert!(err.to_string().contains("create it first"), "{err}");
    let err = f.modes.gate(&["Acme/eq"]).unwrap_err();
    assert!(
        matches!(
            err,
            scope::Error::Control(scope::ScopeRefusal::InvalidPath(_))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("acme/eq"), "{err}");
}

#[tokio::test]
async fn engaging_the_kill_switch_halts_every_gate_and_disengaging_restores_them() {
    let f = fixture().await;
    set(&*f.store, "acme/eq/mm-1", ScopeMode::ReduceOnly).await;
    let leaf = f.modes.gate(&["acme/eq/mm-1/acct-42"]).unwrap();
    let fx = f.modes.gate(&["acme/fx"]).unwrap();
    wait_mode(&leaf, ScopeMode::ReduceOnly).await;
    f.root
        .engage(&Audit::new("ops:carol", "runaway strategy"))
        .await
        .unwrap();
    wait_mode(&leaf, ScopeMode::Halted).await;
    wait_mode(&fx, ScopeMode::Halted).await;
    let refusal = fx.check(OrderIntent::Open).unwrap_err();
    assert_eq!(refusal.cause, GateCause::Decided(DecidedBy::Root));
    assert_eq!(refusal.change.as_ref().unwrap().actor, "ops:carol");
    assert_eq!(refusal.reason.as_deref(), Some("runaway strategy"));
    f.root
        .disengage(&Audit::new("ops:carol", "resolved").with_ticket("INC-9"))
        .await
        .unwrap();
    wait_mode(&fx, ScopeMode::Normal).await;
    wait_mode(&leaf, ScopeMode::ReduceOnly).await;
    assert!(leaf.allows(OrderIntent::Reduce));
    assert!(!leaf.allows(OrderIntent::Open));
}

#[tokio::test]
async fn subscribers_are_told_when_their_scope_halts_and_when_it_resumes() {
    let f = fixture().await;
    let leaf = f.modes.gate(&["acme/eq/mm-1/acct-42"]).unwrap();
    let fx = f.modes.gate(&["acme/fx"]).unwrap();
    let mut notices = leaf.subscribe();
    let fx_notices = fx.subscribe();
    assert_eq!(*notices.borrow_and_update(), ScopeMode::Normal);
    set(&*f.store, "acme", ScopeMode::Halted).await;
    tokio::time::timeout(WAIT, notices.wait_for(|m| *m == ScopeMode::Halted))
        .await
        .expect("told within the bound")
        .unwrap();
    assert_eq!(
        *fx_notices.borrow(),
        ScopeMode::Halted,
        "acme/fx is under acme"
    );
    set(&*f.store, "acme", ScopeMode::CancelOnly).await;
    tokio::time::timeout(WAIT, notices.wait_for(|m| *m == ScopeMode::CancelOnly))
        .await
        .expect("told within the bound")
        .unwrap();
    // A venue change does not concern acme's gates: no notice.
    set(&*f.store, "venue", ScopeMode::Halted).await;
    let version = f.store.changes_since(0).await.unwrap().version;
    assert!(f.modes.wait_for_version(version, WAIT).await);
    assert!(!notices.has_changed().unwrap());
}

#[tokio::test]
async fn one_root_change_re_derives_100_000_gates_and_one_scope_change_only_its_own() {
    let root = Arc::new(MemoryKillSwitchStore::new());
    let store = Arc::new(MemoryScopeStore::new(root.clone()));
    create(&*store, &["acme", "acme/eq"]).await;
    let accounts: Vec<String> = (0..100).map(|i| format!("acme/eq/acct-{i}")).collect();
    for a in &accounts {
        create(&*store, &[a.as_str()]).await;
    }
    let switch = KillSwitch::spawn(root.clone(), KillSwitchConfig::default());
    let modes = ScopeModes::spawn(store.clone(), switch, ScopeModesConfig::default());
    assert!(modes.ready(WAIT).await);
    let gates: Vec<ScopeGate> = (0..100_000)
        .map(|i| modes.gate(&[accounts[i % 100].as_str()]).unwrap())
        .collect();
    assert_eq!(modes.status().gates, 100_000);
    assert!(gates.iter().all(|g| g.mode() == ScopeMode::Normal));

    root.engage(&Audit::new("ops", "halt all")).await.unwrap();
    wait_until("every gate HALTED", WAIT, || {
        gates.iter().all(|g| g.mode() == ScopeMode::Halted)
    })
    .await;
    root.disengage(&Audit::new("ops", "resume").with_ticket("INC-1"))
        .await
        .unwrap();
    wait_until("every gate NORMAL", WAIT, || {
        gates.iter().all(|g| g.mode() == ScopeMode::Normal)
    })
    .await;

    set(&*store, "acme/eq/acct-7", ScopeMode::Halted).await;
    let version = store.changes_since(0).await.unwrap().version;
    assert!(modes.wait_for_version(version, WAIT).await);
    let halted = gates
        .iter()
        .enumerate()
        .filter(|(_, g)| g.mode() == ScopeMode::Halted)
        .map(|(i, _)| i % 100)
        .collect::<Vec<_>>();
    assert_eq!(halted.len(), 1_000);
    assert!(halted.iter().all(|&a| a == 7));
    // Dropped gates are forgotten.
    drop(gates);
    assert_eq!(modes.status().gates, 0);
}

#[tokio::test]
async fn a_relaxation_lost_in_a_failover_returns_the_gate_to_the_stricter_mode() {
    let f = fixture().await;
    let leaf = f.modes.gate(&["acme/eq/mm-1/acct-42"]).unwrap();
    set(&*f.store, "acme/eq", ScopeMode::Halted).await;
    wait_mode(&leaf, ScopeMode::Halted).await;
    set(&*f.store, "acme/eq", ScopeMode::CancelOnly).await;
    wait_mode(&leaf, ScopeMode::CancelOnly).await;
    let lost = f.store.simulate_lossy_failover(1);
    assert_eq!(lost.len(), 1);
    wait_mode(&leaf, ScopeMode::Halted).await;
    // And the handle goes on from the promoted history.
    set(&*f.store, "acme/eq", ScopeMode::CancelOnly).await;
    wait_mode(&leaf, ScopeMode::CancelOnly).await;
}

#[tokio::test]
async fn a_scope_whose_creation_was_lost_halts_its_gates_until_created_again() {
    let f = fixture().await;
    create(&*f.store, &["acme/eq/mm-2"]).await;
    let version = f.store.changes_since(0).await.unwrap().version;
    assert!(f.modes.wait_for_version(version, WAIT).await);
    let gate = f.modes.gate(&["acme/eq/mm-2"]).unwrap();
    assert_eq!(gate.mode(), ScopeMode::Normal);
    f.store.simulate_lossy_failover(1);
    wait_mode(&gate, ScopeMode::Halted).await;
    assert!(matches!(
        f.modes.gate(&["acme/eq/mm-2"]),
        Err(scope::Error::Control(
            scope::ScopeRefusal::UnknownScope { .. }
        ))
    ));
    create(&*f.store, &["acme/eq/mm-2"]).await;
    wait_mode(&gate, ScopeMode::Normal).await;
}

/// The in-memory store behind a switch that makes it unreachable, like a dead database.
#[derive(Debug)]
struct Unreachable {
    inner: Arc<MemoryScopeStore>,
    down: AtomicBool,
}

impl Unreachable {
    fn check(&self) -> Result<(), scope::Error> {
        if self.down.load(Ordering::SeqCst) {
            let source = DbError::new(
                DbErrorKind::Unavailable,
                "scope.read",
                None,
                "error connecting to server: Connection refused (os error 111)".into(),
            );
            return Err(scope::Error::Unavailable { source });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl FeedSource for Unreachable {
    type Item = ScopeChange;
    type Error = scope::Error;
    async fn subscribe(&self) -> Result<scope::Subscription, scope::Error> {
        self.check()?;
        self.inner.subscribe().await
    }
    async fn contains(&self, position: Position) -> Result<bool, scope::Error> {
        self.check()?;
        self.inner.contains(position).await
    }
    fn unreachable(&self) -> Option<String> {
        self.down
            .load(Ordering::SeqCst)
            .then(|| "connection refused: 127.0.0.1:5432".to_owned())
    }
}

#[async_trait::async_trait]
impl ScopeStore for Unreachable {
    async fn create_scope(
        &self,
        path: &ScopePath,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, scope::Error> {
        self.check()?;
        self.inner.create_scope(path, audit).await
    }
    async fn set_scope_mode(
        &self,
        path: &str,
        mode: ScopeMode,
        audit: &Audit,
    ) -> Result<Applied<ScopeState>, scope::Error> {
        self.check()?;
        self.inner.set_scope_mode(path, mode, audit).await
    }
    async fn scope(&self, path: &str) -> Result<Option<ScopeState>, scope::Error> {
        self.check()?;
        self.inner.scope(path).await
    }
    async fn scopes(&self, under: Option<&ScopePath>) -> Result<Vec<ScopeState>, scope::Error> {
        self.check()?;
        self.inner.scopes(under).await
    }
    async fn effective(&self, path: &str) -> Result<EffectiveScope, scope::Error> {
        self.check()?;
        self.inner.effective(path).await
    }
    async fn changes_since(&self, since: u64) -> Result<ScopeDelta, scope::Error> {
        self.check()?;
        self.inner.changes_since(since).await
    }
    async fn scope_history(
        &self,
        path: Option<&ScopePath>,
        limit: usize,
    ) -> Result<Vec<ScopeEvent>, scope::Error> {
        self.check()?;
        self.inner.scope_history(path, limit).await
    }
}

#[tokio::test(start_paused = true)]
async fn before_the_first_load_and_once_stale_every_gate_is_halted() {
    let root = Arc::new(MemoryKillSwitchStore::new());
    let inner = Arc::new(MemoryScopeStore::new(root.clone()));
    create(&*inner, TREE).await;
    let store = Arc::new(Unreachable {
        inner: inner.clone(),
        down: AtomicBool::new(true),
    });
    let switch = KillSwitch::spawn(root.clone(), KillSwitchConfig::default());
    let config = ScopeModesConfig::default().with_staleness_window(Duration::from_secs(60));
    let modes = ScopeModes::spawn(store.clone(), switch, config);
    assert!(!modes.ready(Duration::from_secs(5)).await, "store down");
    let err = modes.gate(&["acme/fx"]).unwrap_err();
    assert!(err.to_string().contains("ready"), "{err}");
    let health = modes.health();
    assert_eq!(health.status, ComponentStatus::Failed);
    assert!(
        health.details.unwrap().contains("connection refused"),
        "health names the cause"
    );

    store.down.store(false, Ordering::SeqCst);
    assert!(modes.ready(Duration::from_secs(10)).await);
    let fx = modes.gate(&["acme/fx"]).unwrap();
    let mut notices = fx.subscribe();
    assert_eq!(fx.mode(), ScopeMode::Normal);

    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(fx.mode(), ScopeMode::Normal, "serving within the window");
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(fx.mode(), ScopeMode::Halted, "stale: fail closed");
    assert!(notices.has_changed().unwrap(), "subscribers told");
    assert_eq!(*notices.borrow_and_update(), ScopeMode::Halted);
    let refusal = fx.check(OrderIntent::Open).unwrap_err();
    assert_eq!(refusal.cause, GateCause::Stale);
    assert!(refusal.to_string().contains("stale"), "{refusal}");
    assert!(fx.allows(OrderIntent::Cancel));

    store.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fx.mode(), ScopeMode::Normal, "fresh again");
}

// ---------------------------------------------------------------------------------
// PostgreSQL: push to a handle in another process, and the shared handle suite
// (another pool, a dead primary, lossy failovers, a switchover).
// ---------------------------------------------------------------------------------

use tradepulse_killswitch::scope::PostgresScopeStore;
use tradepulse_testkit::fast_settings;

/// Set in the child process: the DSN its handle connects to.
const CHILD_DSN: &str = "TRADEPULSE_SCOPE_CHILD_DSN";
const CHILD_TEST: &str = "pg_a_handle_in_another_process_is_halted_by_push";
const LEAF: &str = "acme/eq/mm-1/acct-42";

/// Polling at 1 h: only push can tell the handle within the test.
fn push_only() -> ScopeModesConfig {
    ScopeModesConfig::default()
        .with_poll_interval(Duration::from_secs(3600))
        .with_staleness_window(Duration::from_secs(7200))
}

async fn pg_scope_store(dsn: &str) -> PostgresScopeStore {
    let store =
        PostgresScopeStore::new(fast_settings(dsn).build().expect("settings")).expect("store");
    store.migrate().await.expect("migrate");
    store
}

/// A handle over its own pool, as a separate engine has. Its root is an in-memory
/// kill switch: what is under test here is the scope feed alone (one LISTEN channel
/// on the process's shared connection).
async fn pg_handle(dsn: &str, config: ScopeModesConfig) -> ScopeModes {
    let switch = KillSwitch::spawn(
        Arc::new(MemoryKillSwitchStore::new()),
        KillSwitchConfig::default(),
    );
    ScopeModes::spawn(Arc::new(pg_scope_store(dsn).await), switch, config)
}

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same test binary runs this test in two roles: without [`CHILD_DSN`] it is the
/// parent (a database, the scopes, the write); with it, the other process (a handle
/// on its own pool that only push can reach, reporting on stdout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_handle_in_another_process_is_halted_by_push() {
    if let Ok(dsn) = std::env::var(CHILD_DSN) {
        return child(&dsn).await;
    }
    use std::io::BufRead;
    let (cluster, db) = tradepulse_testkit::shared_primary().await.expect("cluster");
    let dsn = cluster.primary().dsn(&db);
    let store = pg_scope_store(&dsn).await;
    create(&store, TREE).await;

    let mut child = Child(
        std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_DSN, &dsn)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the other process"),
    );
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut expect = async |word: &str, bound: Duration| -> String {
        let found = tokio::time::timeout(bound, async {
            while let Some(line) = lines.recv().await {
                // libtest may have written "test … ... " on the same line first.
                if let Some(at) = line.find(word) {
                    return Some(line[at + word.len()..].to_owned());
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(rest)) => rest,
            Ok(None) => panic!("the other process ended without saying {word}"),
            Err(_) => panic!("the other process did not say {word} within {bound:?}"),
        }
    };
    expect("SCOPE-CHILD READY", Duration::from_secs(30)).await;

    set(&store, "acme/eq", ScopeMode::Halted).await;
    let took = expect("SCOPE-CHILD HALTED", Duration::from_secs(15)).await;
    eprintln!("the other process's gate halted{took} after the write");
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .expect("wait");
    assert!(status.success(), "the other process failed: {status}");
}

/// The other process: a gate on the leaf, told by push only.
async fn child(dsn: &str) {
    // Its warnings go to the parent's stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter("warn")
        .try_init();
    let modes = pg_handle(dsn, push_only()).await;
    assert!(
        modes.ready(Duration::from_secs(20)).await,
        "{:?}",
        modes.health()
    );
    wait_until("listening", WAIT, || {
        modes.health().status == ComponentStatus::Operational
    })
    .await;
    let gate = modes.gate(&[LEAF]).expect("gate");
    assert_eq!(gate.mode(), ScopeMode::Normal);
    let mut notices = gate.subscribe();
    println!("SCOPE-CHILD READY");
    tokio::time::timeout(
        Duration::from_secs(10),
        notices.wait_for(|m| *m == ScopeMode::Halted),
    )
    .await
    .expect("halted by push within 10 s")
    .expect("handle alive");
    let started = std::time::Instant::now();
    let refusal = gate.check(OrderIntent::Open).unwrap_err();
    assert_eq!(
        refusal.decided_by(),
        Some(&DecidedBy::Scope(path("acme/eq")))
    );
    println!(
        "SCOPE-CHILD HALTED (refusal built in {:?})",
        started.elapsed()
    );
}

mod suite {
    //! failover-core's shared PostgreSQL handle suite, run by the scope handle: a gate
    //! on `acme/eq` that "halts" when `acme/eq` is HALTED.
    use super::*;
    use failover_core::{ComponentHealth, WatchConfig};
    use tradepulse_testkit::suite::{SuiteHandle, SuiteHandleStore, SuiteStore};

    struct ScopeSuite;

    async fn ensure_tree(store: &PostgresScopeStore) -> Result<(), scope::Error> {
        for p in ["acme", "acme/eq"] {
            if store.scope(p).await?.is_none() {
                store
                    .create_scope(&path(p), &Audit::new("suite:ops", format!("register {p}")))
                    .await?;
            }
        }
        Ok(())
    }

    #[async_trait::async_trait]
    impl SuiteStore for ScopeSuite {
        type Store = PostgresScopeStore;
        type Error = scope::Error;
        const AUDIT_TABLE: &'static str = "scope_events";

        async fn tighten(store: &Self::Store, n: u32) -> Result<Position, scope::Error> {
            ensure_tree(store).await?;
            let audit = Audit::new("suite:ops", format!("halt {n}"));
            Ok(store
                .set_scope_mode("acme/eq", ScopeMode::Halted, &audit)
                .await?
                .position)
        }

        async fn relax(store: &Self::Store, n: u32) -> Result<Position, scope::Error> {
            ensure_tree(store).await?;
            // One step from HALTED; to NORMAL from anything else.
            let to = match store.scope("acme/eq").await?.map(|s| s.mode) {
                Some(ScopeMode::Halted) => ScopeMode::CancelOnly,
                _ => ScopeMode::Normal,
            };
            let audit = Audit::new("suite:ops", format!("resume {n}")).with_ticket("CHG-1");
            Ok(store.set_scope_mode("acme/eq", to, &audit).await?.position)
        }

        fn is_schema_missing(error: &scope::Error) -> bool {
            matches!(error, scope::Error::SchemaMissing { .. })
        }

        fn is_unavailable(error: &scope::Error) -> bool {
            matches!(error, scope::Error::Unavailable { .. })
        }
    }

    /// The handle and a gate on `acme/eq`, made once the handle holds that scope
    /// (until then a gate on the root alone: the kill switch and freshness).
    struct Handle {
        modes: ScopeModes,
        root_gate: std::sync::OnceLock<ScopeGate>,
        gate: std::sync::OnceLock<ScopeGate>,
    }

    impl Handle {
        fn mode(&self) -> ScopeMode {
            if self.gate.get().is_none() {
                if let Ok(gate) = self.modes.gate(&["acme/eq"]) {
                    let _ = self.gate.set(gate);
                }
            }
            match self.gate.get() {
                Some(gate) => gate.mode(),
                None => match self.root_gate.get() {
                    Some(gate) => gate.mode(),
                    None => match self.modes.gate(&[]) {
                        Ok(gate) => self.root_gate.get_or_init(|| gate).mode(),
                        Err(_) => ScopeMode::Halted,
                    },
                },
            }
        }
    }

    impl SuiteHandle for Handle {
        fn halted(&self) -> bool {
            self.mode() == ScopeMode::Halted
        }
        fn health(&self) -> ComponentHealth {
            self.modes.health()
        }
        fn position(&self) -> Option<Position> {
            let status = self.modes.status();
            (status.state != scope::ScopeSnapshotState::NotLoaded).then_some(status.position)
        }
    }

    impl SuiteHandleStore for ScopeSuite {
        fn handle(store: Arc<Self::Store>, config: WatchConfig) -> Box<dyn SuiteHandle> {
            // The root in memory: the scope feed alone is under test.
            let switch = KillSwitch::spawn(
                Arc::new(MemoryKillSwitchStore::new()),
                KillSwitchConfig::default(),
            );
            Box::new(Handle {
                modes: ScopeModes::spawn(store, switch, config),
                root_gate: std::sync::OnceLock::new(),
                gate: std::sync::OnceLock::new(),
            })
        }
    }

    // Of failover-core's handle suite, what concerns the gate beyond the store's own
    // suite: push to another pool, and a lost relaxation undone by the failover.
    #[tokio::test]
    async fn suite_push_reaches_another_pool() {
        tradepulse_testkit::suite::push_reaches_another_pool::<ScopeSuite>(
            tradepulse_testkit::suite::Route::Direct,
        )
        .await;
    }

    #[tokio::test]
    async fn suite_lossy_failover_lost_relaxation_halts_the_running_handle() {
        tradepulse_testkit::suite::lossy_failover_lost_relaxation_halts_the_running_handle::<
            ScopeSuite,
        >()
        .await;
    }
}
