//! The receipt: did a change reach every running process?
//!
//! Every hot-path handle reports the position it has applied to a process-wide
//! [`Receipts`] reporter. A handle's [`Reporter`] (or [`Receipts::report`]) only
//! stores its newest position in a small map: no I/O, no waiting, never on the
//! order path. When several handles of one `(component, target)` run in a process,
//! the process reports what its **slowest** handle applied: it confirms a change
//! only once every one of its handles has it. A background task flushes the entries that
//! changed every [`flush_interval`](ReceiptsBuilder::flush_interval) (default 50 ms)
//! in one statement, and every entry every [`heartbeat`](ReceiptsBuilder::heartbeat)
//! (default 1 s), so a reader knows which processes are alive. Each flush is bounded
//! by a timeout; a failed flush is retried at the next tick with the newest positions
//! (the map holds one entry per handle, so nothing queues up).
//!
//! [`Receipts::receipt`] (or [`read`] over a pool) answers "who applied `position`":
//! the live processes that confirmed it, the live ones that have not (with what they
//! hold and when they were last heard of), and those not heard of within
//! `live_within` (default 5 s), listed apart and not counted.
//!
//! PostgreSQL keeps the reports in table `handle_receipts`, written only through
//! `tradepulse_report_receipts`, which never moves a position backwards.
//! [`Receipts::memory`] keeps them in a shared in-memory table for tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tradepulse_failover_core::receipt::{Receipts, DEFAULT_LIVE_WITHIN};
//! use tradepulse_failover_core::Position;
//!
//! let receipts = Receipts::memory();
//! let reporter = receipts.reporter("kill_switch", "");
//! reporter.report(Position::new(1, 7)); // where the handle publishes a new state
//! receipts.flush_now().await.unwrap();
//! let receipt = receipts
//!     .receipt("kill_switch", "", Position::new(1, 7), DEFAULT_LIVE_WITHIN)
//!     .await
//!     .unwrap();
//! assert_eq!((receipt.confirmed.len(), receipt.live()), (1, 1));
//! # }
//! ```

use crate::errors::{DbError, DbErrorKind};
use crate::handle::lock;
use crate::position::Position;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// How often changed positions are flushed by default.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// How often every position is re-reported (the liveness heartbeat) by default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one flush may take by default.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// A process not heard of for longer than this is aged out: listed, not counted.
pub const DEFAULT_LIVE_WITHIN: Duration = Duration::from_secs(5);
/// At most this many `(component, target)` entries per process: reports for further
/// targets are dropped (and logged) rather than growing the map without bound.
pub const MAX_ENTRIES: usize = 100_000;

/// Who reports: one identity per process (a random id, so a restarted process with
/// the same pid is a new one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Random per process.
    pub process_id: Uuid,
    /// The host name.
    pub host: String,
    /// The OS process id.
    pub pid: u32,
    /// The program's name (from `argv[0]`, or set by the builder).
    pub process_name: String,
}

impl ProcessIdentity {
    /// This process: a new random id, the host name, the pid and `argv[0]`'s file name.
    pub fn current() -> Self {
        let process_name = std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| String::from("unknown"));
        Self {
            process_id: Uuid::new_v4(),
            host: whoami::hostname().unwrap_or_else(|_| String::from("unknown")),
            pid: std::process::id(),
            process_name,
        }
    }
}

/// One process's report for one `(component, target)`, as a receipt lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessReceipt {
    /// The process.
    #[serde(flatten)]
    pub process: ProcessIdentity,
    /// The newest position it applied.
    pub position: Position,
    /// When it applied it (the process's clock).
    #[serde(with = "crate::time::rfc3339")]
    pub applied_at: SystemTime,
    /// When it was last heard of (the store's clock).
    #[serde(with = "crate::time::rfc3339")]
    pub last_seen: SystemTime,
    /// How long ago that was, when the receipt was read.
    #[serde(with = "crate::time::humantime")]
    pub last_seen_ago: Duration,
}

/// Who applied a position of one `(component, target)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The control, e.g. `kill_switch`.
    pub component: String,
    /// What the handles watch (`""` for a global control).
    pub target: String,
    /// The position asked about.
    pub position: Position,
    /// Processes not heard of for longer than this are aged out.
    #[serde(with = "crate::time::humantime")]
    pub live_within: Duration,
    /// Live processes that applied `position` or a later one.
    pub confirmed: Vec<ProcessReceipt>,
    /// Live processes that have not applied it yet.
    pub pending: Vec<ProcessReceipt>,
    /// Processes not heard of within `live_within`: listed, not counted.
    pub aged_out: Vec<ProcessReceipt>,
}

impl Receipt {
    /// Live processes: confirmed and pending.
    pub fn live(&self) -> usize {
        self.confirmed.len() + self.pending.len()
    }

    /// True when every live process confirmed (and at least one is live).
    pub fn complete(&self) -> bool {
        self.pending.is_empty() && !self.confirmed.is_empty()
    }

    /// Sorts the reports of `(component, target)` into a receipt for `position`, by
    /// [`Position`] order. Each report carries how long ago it was last seen.
    pub fn classify(
        component: &str,
        target: &str,
        position: Position,
        live_within: Duration,
        reports: impl IntoIterator<Item = ProcessReceipt>,
    ) -> Self {
        let mut receipt = Self {
            component: component.to_owned(),
            target: target.to_owned(),
            position,
            live_within,
            confirmed: Vec::new(),
            pending: Vec::new(),
            aged_out: Vec::new(),
        };
        for report in reports {
            if report.last_seen_ago > live_within {
                receipt.aged_out.push(report);
            } else if report.position >= position {
                receipt.confirmed.push(report);
            } else {
                receipt.pending.push(report);
            }
        }
        let key =
            |r: &ProcessReceipt| (r.process.host.clone(), r.process.pid, r.process.process_id);
        receipt.confirmed.sort_by_key(key);
        receipt.pending.sort_by_key(key);
        receipt.aged_out.sort_by_key(|r| r.last_seen_ago);
        receipt
    }
}

/// Parses a position as the CLI and the routes accept it: the number
/// (`1099511627777`) or `timeline/counter` (`1/1`).
pub fn parse_position(text: &str) -> Result<Position, String> {
    let text = text.trim();
    let parsed = match text.split_once('/') {
        Some((timeline, counter)) => timeline
            .parse::<u64>()
            .ok()
            .zip(counter.parse::<u64>().ok())
            .filter(|(t, c)| *t < (1 << 23) && *c < (1 << crate::position::COUNTER_BITS))
            .map(|(t, c)| Position::new(t, c)),
        None => text.parse::<u64>().ok().map(Position),
    };
    parsed.ok_or_else(|| {
        format!("'{text}' is not a position: give the number a change answered (e.g. 1099511627777) or timeline/counter (e.g. 1/1)")
    })
}

/// The position one `(component, target)` reports, and whether it still has to be
/// flushed.
#[derive(Debug)]
struct Slot {
    /// What the process reports: the lowest of its handles' positions; `None` until
    /// every handle applied a state (position 0 included: a control never changed is
    /// a state a live handle confirms).
    position: Option<Position>,
    applied_at: SystemTime,
    dirty: bool,
    /// Each holding reporter's newest position, by reporter id. The entry is
    /// forgotten when the last one is dropped.
    holders: HashMap<u64, Option<Position>>,
    /// What [`Receipts::report`] reported without a reporter (newest wins).
    unheld: Option<Position>,
}

impl Slot {
    /// Re-derives the reported position: the slowest holder decides; without
    /// holders, the unheld report. It never moves backwards (a handle that joins
    /// later does not withdraw what the process confirmed).
    fn settle(&mut self) {
        let lowest = if self.holders.is_empty() {
            self.unheld
        } else {
            self.holders
                .values()
                .try_fold(Position(u64::MAX), |low, p| p.map(|p| low.min(p)))
        };
        if let Some(lowest) = lowest {
            if self.position.is_none_or(|held| lowest > held) {
                self.position = Some(lowest);
                self.applied_at = SystemTime::now();
                self.dirty = true;
            }
        }
    }
}

/// One row of a flush.
#[derive(Debug, Clone, Serialize)]
struct Row {
    component: String,
    target: String,
    position: Position,
    #[serde(with = "crate::time::rfc3339")]
    applied_at: SystemTime,
}

type Entries = HashMap<String, HashMap<String, Slot>>;

struct Inner {
    identity: ProcessIdentity,
    backend: Backend,
    entries: Mutex<Entries>,
    count: AtomicU64,
    dropped: AtomicU64,
    next_reporter: AtomicU64,
    flush_timeout: Duration,
}

#[derive(Clone)]
enum Backend {
    Memory(MemoryReceipts),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PgPool),
}

/// The process-wide reporter. Cheap to clone; the flushing task stops when the last
/// clone is dropped. See the [module docs](self).
#[derive(Clone)]
pub struct Receipts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipts")
            .field("identity", &self.inner.identity)
            .field("entries", &self.inner.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Receipts`]: process name, flush interval, heartbeat, flush timeout.
#[derive(Debug, Clone)]
pub struct ReceiptsBuilder {
    process_name: Option<String>,
    flush_interval: Duration,
    heartbeat: Duration,
    flush_timeout: Duration,
}

impl Default for ReceiptsBuilder {
    fn default() -> Self {
        Self {
            process_name: None,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            heartbeat: DEFAULT_HEARTBEAT,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        }
    }
}

impl ReceiptsBuilder {
    /// The name receipts list this process under (default: `argv[0]`'s file name).
    #[must_use]
    pub fn process_name(mut self, name: impl Into<String>) -> Self {
        self.process_name = Some(name.into());
        self
    }

    /// How often changed positions are flushed (default 50 ms, at least 1 ms).
    #[must_use]
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often every position is re-reported to prove the process alive (default
    /// 1 s). Keep it well below the readers' `live_within` (default 5 s).
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// How long one flush may take (default 2 s); a flush that takes longer is
    /// abandoned and retried at the next tick.
    #[must_use]
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// A reporter into PostgreSQL (`handle_receipts`, created by failover-core's
    /// migrations, which every store's `migrate` applies).
    ///
    /// # Panics
    /// Outside a tokio runtime (the flushing task is spawned on it).
    #[cfg(feature = "postgres")]
    pub fn postgres(self, pool: crate::postgres::PgPool) -> Receipts {
        self.build(Backend::Postgres(pool))
    }

    /// A reporter into the in-memory `table` (shared by every reporter given it, like
    /// processes sharing a database).
    ///
    /// # Panics
    /// Outside a tokio runtime (the flushing task is spawned on it).
    pub fn memory(self, table: MemoryReceipts) -> Receipts {
        self.build(Backend::Memory(table))
    }

    fn build(self, backend: Backend) -> Receipts {
        let mut identity = ProcessIdentity::current();
        if let Some(name) = self.process_name {
            identity.process_name = name;
        }
        let inner = Arc::new(Inner {
            identity,
            backend,
            entries: Mutex::new(HashMap::new()),
            count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            next_reporter: AtomicU64::new(0),
            flush_timeout: self.flush_timeout,
        });
        tokio::spawn(flush_loop(
            Arc::downgrade(&inner),
            self.flush_interval,
            self.heartbeat,
        ));
        Receipts { inner }
    }
}

impl Receipts {
    /// Settings other than the defaults.
    pub fn builder() -> ReceiptsBuilder {
        ReceiptsBuilder::default()
    }

    /// A reporter into PostgreSQL with the default settings.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[cfg(feature = "postgres")]
    pub fn postgres(pool: crate::postgres::PgPool) -> Self {
        Self::builder().postgres(pool)
    }

    /// A reporter into a new in-memory table ([`memory_table`](Self::memory_table)
    /// shares it with other reporters) with the default settings.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn memory() -> Self {
        Self::builder().memory(MemoryReceipts::default())
    }

    /// The in-memory table, for a reporter made by [`memory`](Self::memory).
    pub fn memory_table(&self) -> Option<MemoryReceipts> {
        match &self.inner.backend {
            Backend::Memory(table) => Some(table.clone()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => None,
        }
    }

    /// This process as receipts list it.
    pub fn identity(&self) -> &ProcessIdentity {
        &self.inner.identity
    }

    /// Records that `(component, target)` applied `position`. Cheap and never waits
    /// for I/O: one short lock of a small map. A lower position than the one held is
    /// ignored. Without a [`reporter`](Self::reporter) holding the entry, it is
    /// reported until the process ends.
    pub fn report(&self, component: &str, target: &str, position: Position) {
        self.inner.report(component, target, None, Some(position));
    }

    /// A handle's own reporter for `(component, target)`: the entry lives as long as a
    /// reporter holds it, so a dropped handle stops being reported (and ages out).
    /// With several reporters of one entry, the process reports the lowest of their
    /// positions, and nothing until each has reported once.
    pub fn reporter(&self, component: &str, target: &str) -> Reporter {
        let id = self.inner.next_reporter.fetch_add(1, Ordering::Relaxed);
        self.inner.report(component, target, Some(id), None);
        Reporter {
            inner: Arc::new(ReporterInner {
                receipts: self.inner.clone(),
                component: component.to_owned(),
                target: target.to_owned(),
                id,
            }),
        }
    }

    /// How many `(component, target)` entries this process reports.
    pub fn entries(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed) as usize
    }

    /// Flushes every entry now (not waiting for the next tick), bounded by the flush
    /// timeout: for a graceful shutdown, and tests.
    pub async fn flush_now(&self) -> Result<(), DbError> {
        self.inner.flush(true).await
    }

    /// Who applied `position` of `(component, target)`: see [`Receipt`].
    pub async fn receipt(
        &self,
        component: &str,
        target: &str,
        position: Position,
        live_within: Duration,
    ) -> Result<Receipt, DbError> {
        match &self.inner.backend {
            Backend::Memory(table) => Ok(table.receipt(component, target, position, live_within)),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => read(pool, component, target, position, live_within).await,
        }
    }
}

impl Inner {
    fn slot<'a>(
        &self,
        entries: &'a mut Entries,
        component: &str,
        target: &str,
    ) -> Option<&'a mut Slot> {
        // Looked up by &str first: no allocation once the entry exists.
        let exists = entries
            .get(component)
            .is_some_and(|m| m.contains_key(target));
        if !exists {
            if self.count.load(Ordering::Relaxed) as usize >= MAX_ENTRIES {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(
                        component,
                        target,
                        max = MAX_ENTRIES,
                        "receipts: too many reported targets in this process; further ones are not reported"
                    );
                }
                return None;
            }
            self.count.fetch_add(1, Ordering::Relaxed);
            entries.entry(component.to_owned()).or_default().insert(
                target.to_owned(),
                Slot {
                    position: None,
                    applied_at: SystemTime::now(),
                    dirty: false,
                    holders: HashMap::new(),
                    unheld: None,
                },
            );
        }
        entries.get_mut(component).and_then(|m| m.get_mut(target))
    }

    /// Records `position` for reporter `id` (or unheld); a reporter's first call
    /// (`position` `None`) holds the entry without claiming that anything was applied.
    fn report(&self, component: &str, target: &str, id: Option<u64>, position: Option<Position>) {
        let mut entries = lock(&self.entries);
        if let Some(slot) = self.slot(&mut entries, component, target) {
            let newest = match id {
                Some(id) => slot.holders.entry(id).or_insert(None),
                None => &mut slot.unheld,
            };
            if let Some(position) = position {
                if newest.is_none_or(|held| position > held) {
                    *newest = Some(position);
                }
            }
            slot.settle();
        }
    }

    fn release(&self, component: &str, target: &str, id: u64) {
        let mut entries = lock(&self.entries);
        let Some(targets) = entries.get_mut(component) else {
            return;
        };
        let forget = match targets.get_mut(target) {
            Some(slot) => {
                slot.holders.remove(&id);
                // The slowest handle may be the one gone.
                slot.settle();
                slot.holders.is_empty() && slot.unheld.is_none()
            }
            None => false,
        };
        if forget {
            targets.remove(target);
            self.count.fetch_sub(1, Ordering::Relaxed);
            if targets.is_empty() {
                entries.remove(component);
            }
        }
    }

    /// The rows to flush (every entry when `all`), marked clean. Entries of handles
    /// that applied nothing yet are left out.
    fn take(&self, all: bool) -> Vec<Row> {
        let mut entries = lock(&self.entries);
        let mut rows = Vec::new();
        for (component, targets) in entries.iter_mut() {
            for (target, slot) in targets.iter_mut() {
                let Some(position) = slot.position else {
                    continue;
                };
                if slot.dirty || all {
                    slot.dirty = false;
                    rows.push(Row {
                        component: component.clone(),
                        target: target.clone(),
                        position,
                        applied_at: slot.applied_at,
                    });
                }
            }
        }
        rows
    }

    /// A failed flush: its rows are flushed again at the next tick.
    fn unflushed(&self, rows: &[Row]) {
        let mut entries = lock(&self.entries);
        for row in rows {
            if let Some(slot) = entries
                .get_mut(&row.component)
                .and_then(|m| m.get_mut(&row.target))
            {
                slot.dirty = true;
            }
        }
    }

    async fn flush(&self, all: bool) -> Result<(), DbError> {
        let rows = self.take(all);
        if rows.is_empty() {
            return Ok(());
        }
        let written = match tokio::time::timeout(self.flush_timeout, self.write(&rows)).await {
            Ok(result) => result,
            Err(_) => Err(DbError::new(
                DbErrorKind::Unavailable,
                "receipts.report",
                None,
                format!(
                    "reporting {} receipt(s) took longer than {:?}; retried at the next tick",
                    rows.len(),
                    self.flush_timeout
                ),
            )),
        };
        if written.is_err() {
            self.unflushed(&rows);
        }
        written
    }

    async fn write(&self, rows: &[Row]) -> Result<(), DbError> {
        match &self.backend {
            Backend::Memory(table) => {
                table.write(&self.identity, rows);
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                use tokio_postgres::types::Type;
                let batch = serde_json::to_string(rows).map_err(|e| {
                    DbError::new(
                        DbErrorKind::Permanent,
                        "receipts.report",
                        None,
                        format!("encoding receipts: {e}"),
                    )
                })?;
                let id = self.identity.process_id;
                let pid = i32::try_from(self.identity.pid).unwrap_or(i32::MAX);
                pool.execute(
                    "receipts.report",
                    "SELECT tradepulse_report_receipts($1, $2, $3, $4, $5::text::jsonb)",
                    &[
                        (&id, Type::UUID),
                        (&self.identity.host, Type::TEXT),
                        (&pid, Type::INT4),
                        (&self.identity.process_name, Type::TEXT),
                        (&batch, Type::TEXT),
                    ],
                )
                .await
                .map_err(schema_hint)?;
                Ok(())
            }
        }
    }
}

/// Flushes changed entries every `interval` and all of them every `heartbeat`, until
/// the last [`Receipts`] clone is dropped.
async fn flush_loop(inner: Weak<Inner>, interval: Duration, heartbeat: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full: Option<tokio::time::Instant> = None;
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let all = last_full.is_none_or(|at| at.elapsed() >= heartbeat);
        match inner.flush(all).await {
            Ok(()) => {
                if all {
                    last_full = Some(tokio::time::Instant::now());
                }
                if failing {
                    tracing::info!("receipts: reporting again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "receipts: reporting failed; retrying at every tick (operators' --wait shows this process as pending or aged out meanwhile)");
                    failing = true;
                }
            }
        }
    }
}

struct ReporterInner {
    receipts: Arc<Inner>,
    component: String,
    target: String,
    id: u64,
}

impl Drop for ReporterInner {
    fn drop(&mut self) {
        self.receipts
            .release(&self.component, &self.target, self.id);
    }
}

/// One handle's hook into [`Receipts`] for its `(component, target)`: call
/// [`report`](Self::report) where the handle publishes a new state (never on the
/// order path). Cheap to clone; the entry is forgotten when the last clone is dropped.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<ReporterInner>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("component", &self.inner.component)
            .field("target", &self.inner.target)
            .finish()
    }
}

impl Reporter {
    /// Records that the handle applied `position` (no I/O; see [`Receipts::report`]).
    pub fn report(&self, position: Position) {
        let inner = &self.inner;
        inner.receipts.report(
            &inner.component,
            &inner.target,
            Some(inner.id),
            Some(position),
        );
    }
}

/// The slot a handle keeps for its reporter: set once (before or after the watcher
/// started), read where the handle publishes. When set after states were already
/// published, the newest one is reported at once.
#[derive(Debug, Default)]
pub struct ReceiptHook {
    reporter: std::sync::OnceLock<Reporter>,
}

impl ReceiptHook {
    /// Installs `receipts` for `(component, target)`, then reports what `held` says
    /// the handle holds now (read after the hook is in place, so a state published
    /// meanwhile is reported either way). A second call only reports: a handle
    /// reports to one process-wide reporter.
    pub fn install(
        &self,
        receipts: &Receipts,
        component: &str,
        target: &str,
        held: impl FnOnce() -> Option<Position>,
    ) {
        let reporter = self
            .reporter
            .get_or_init(|| receipts.reporter(component, target));
        if let Some(position) = held() {
            reporter.report(position);
        }
    }

    /// Reports `position` when a reporter is installed.
    pub fn report(&self, position: Position) {
        if let Some(reporter) = self.reporter.get() {
            reporter.report(position);
        }
    }
}

/// The in-memory `handle_receipts` table: shared by every [`Receipts`] given it.
#[derive(Debug, Clone, Default)]
pub struct MemoryReceipts {
    inner: Arc<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    rows: Mutex<HashMap<(Uuid, String, String), ProcessReceipt>>,
    flushes: AtomicU64,
}

impl MemoryReceipts {
    /// How many flushes (statements) were written.
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// The rows of `(component, target)`, with `last_seen_ago` as of now.
    pub fn rows(&self, component: &str, target: &str) -> Vec<ProcessReceipt> {
        let now = SystemTime::now();
        lock(&self.inner.rows)
            .iter()
            .filter(|((_, c, t), _)| c == component && t == target)
            .map(|(_, r)| {
                let mut r = r.clone();
                r.last_seen_ago = now.duration_since(r.last_seen).unwrap_or_default();
                r
            })
            .collect()
    }

    /// Marks `process_id`'s rows as last seen `ago` earlier than recorded: a test's
    /// way of letting a process age out without waiting.
    pub fn backdate(&self, process_id: Uuid, ago: Duration) {
        for ((id, _, _), row) in lock(&self.inner.rows).iter_mut() {
            if *id == process_id {
                row.last_seen = row.last_seen.checked_sub(ago).unwrap_or(row.last_seen);
            }
        }
    }

    fn write(&self, identity: &ProcessIdentity, rows: &[Row]) {
        let now = crate::time::now_micros();
        let mut table = lock(&self.inner.rows);
        for row in rows {
            let key = (
                identity.process_id,
                row.component.clone(),
                row.target.clone(),
            );
            let entry = table.entry(key).or_insert_with(|| ProcessReceipt {
                process: identity.clone(),
                position: Position::ZERO,
                applied_at: row.applied_at,
                last_seen: now,
                last_seen_ago: Duration::ZERO,
            });
            if row.position >= entry.position {
                entry.position = row.position;
                entry.applied_at = row.applied_at;
            }
            entry.last_seen = now;
        }
        self.inner.flushes.fetch_add(1, Ordering::Relaxed);
    }

    fn receipt(
        &self,
        component: &str,
        target: &str,
        position: Position,
        live_within: Duration,
    ) -> Receipt {
        Receipt::classify(
            component,
            target,
            position,
            live_within,
            self.rows(component, target),
        )
    }
}

/// Says what to do when the table or function is missing (migrations not applied).
#[cfg(feature = "postgres")]
fn schema_hint(e: DbError) -> DbError {
    if e.kind() == DbErrorKind::SchemaMissing || matches!(e.sqlstate(), Some("42P01" | "42883")) {
        DbError::new(
            DbErrorKind::SchemaMissing,
            "receipts",
            e.sqlstate().map(str::to_owned),
            format!("{e}; table handle_receipts or function tradepulse_report_receipts is missing: run the migrations (safetyctl migrate)"),
        )
    } else {
        e
    }
}

/// Who applied `position` of `(component, target)`, read from PostgreSQL (one
/// statement, bounded by the pool's retry policy). Ages are measured on the
/// database's clock.
#[cfg(feature = "postgres")]
pub async fn read(
    pool: &crate::postgres::PgPool,
    component: &str,
    target: &str,
    position: Position,
    live_within: Duration,
) -> Result<Receipt, DbError> {
    use tokio_postgres::types::Type;
    let component_owned = component.to_owned();
    let target_owned = target.to_owned();
    let rows = pool
        .query(
            "receipts.read",
            "SELECT process_id, host, pid, process_name, applied_position, applied_at, reported_at,
                    greatest(extract(epoch FROM clock_timestamp() - reported_at), 0)::float8
               FROM handle_receipts
              WHERE component = $1 AND target = $2",
            &[(&component_owned, Type::TEXT), (&target_owned, Type::TEXT)],
        )
        .await
        .map_err(schema_hint)?;
    let reports = rows.iter().map(|row| ProcessReceipt {
        process: ProcessIdentity {
            process_id: row.get(0),
            host: row.get(1),
            pid: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
            process_name: row.get(3),
        },
        position: Position::from_i64(row.get(4)),
        applied_at: row.get(5),
        last_seen: row.get(6),
        last_seen_ago: Duration::try_from_secs_f64(row.get::<_, f64>(7)).unwrap_or_default(),
    });
    Ok(Receipt::classify(
        component,
        target,
        position,
        live_within,
        reports,
    ))
}

/// The admin route of a control's receipt (feature `http`).
#[cfg(feature = "http")]
pub mod http {
    use super::{parse_position, Receipts, DEFAULT_LIVE_WITHIN};
    use crate::http::{ApiError, Caller, Role};
    use axum::extract::rejection::QueryRejection;
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::Router;
    use std::sync::Arc;

    /// Query of a receipt route: `?position=…&live_within=5s`.
    #[derive(Debug, Clone, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ReceiptQuery {
        /// The position a change answered: the number or `timeline/counter`.
        pub position: String,
        /// Processes not heard of for longer are aged out (default 5 s).
        #[serde(default)]
        pub live_within: Option<String>,
    }

    struct Route {
        receipts: Receipts,
        component: &'static str,
        target: &'static str,
        what: &'static str,
    }

    /// `GET <path>?position=…` (viewer role): the receipt of `(component, target)` as
    /// JSON ([`Receipt`](super::Receipt)); 400 `invalid_query` naming the problem, 503
    /// `store_unavailable` when the receipts cannot be read. Merge it into a control's
    /// router; `what` names the control in refusals ("the kill switch").
    pub fn router(
        path: &'static str,
        receipts: Receipts,
        component: &'static str,
        target: &'static str,
        what: &'static str,
    ) -> Router {
        Router::new()
            .route(path, get(receipt))
            .with_state(Arc::new(Route {
                receipts,
                component,
                target,
                what,
            }))
    }

    async fn receipt(
        State(route): State<Arc<Route>>,
        caller: Caller,
        query: Result<Query<ReceiptQuery>, QueryRejection>,
    ) -> Result<Response, ApiError> {
        caller.require(Role::Viewer, &format!("read the receipt of {}", route.what))?;
        let Query(query) = query.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{e}; give ?position=<the position the change answered>, optionally &live_within=5s"),
            )
        })?;
        let position = parse_position(&query.position)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e))?;
        let live_within = match &query.live_within {
            Some(text) => crate::time::humantime::parse(text)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e))?,
            None => DEFAULT_LIVE_WITHIN,
        };
        let receipt = route
            .receipts
            .receipt(route.component, route.target, position, live_within)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("reading the receipt of {}: {e}", route.what),
                )
            })?;
        Ok(axum::Json(receipt).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_reports_is_one_flush_with_the_newest_and_the_heartbeat_reports_again() {
        let receipts = Receipts::memory();
        let table = receipts.memory_table().unwrap();
        let reporter = receipts.reporter("kill_switch", "");
        // Let the flushing task take its first (immediate) tick: nothing to flush yet.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(table.flushes(), 0, "nothing applied, nothing written");
        for i in 1..=1_000 {
            reporter.report(Position::new(1, i));
        }
        tokio::time::sleep(DEFAULT_FLUSH_INTERVAL).await;
        assert_eq!(table.flushes(), 1, "1,000 reports are one flush");
        let rows = table.rows("kill_switch", "");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].position, Position::new(1, 1_000), "the newest");
        assert_eq!(rows[0].process, *receipts.identity());
        // Nothing changed: no flush until the heartbeat.
        tokio::time::sleep(DEFAULT_HEARTBEAT / 2).await;
        assert_eq!(table.flushes(), 1, "an idle tick writes nothing");
        tokio::time::sleep(DEFAULT_HEARTBEAT).await;
        assert_eq!(table.flushes(), 2, "the heartbeat re-reports every entry");
        assert_eq!(
            table.rows("kill_switch", "")[0].position,
            Position::new(1, 1_000)
        );
        // A lower position never moves the receipt back.
        reporter.report(Position::new(1, 3));
        receipts.flush_now().await.unwrap();
        assert_eq!(
            table.rows("kill_switch", "")[0].position,
            Position::new(1, 1_000)
        );
    }

    #[tokio::test]
    async fn a_receipt_counts_live_processes_and_lists_aged_out_ones_apart() {
        let a = Receipts::memory();
        let table = a.memory_table().unwrap();
        let b = Receipts::builder()
            .process_name("engine-b")
            .memory(table.clone());
        let c = Receipts::builder()
            .process_name("engine-c")
            .memory(table.clone());
        a.report("kill_switch", "", Position::new(1, 5));
        b.report("kill_switch", "", Position::new(1, 4));
        c.report("kill_switch", "", Position::new(1, 5));
        for r in [&a, &b, &c] {
            r.flush_now().await.unwrap();
        }
        table.backdate(c.identity().process_id, Duration::from_secs(60));
        let receipt = a
            .receipt("kill_switch", "", Position::new(1, 5), DEFAULT_LIVE_WITHIN)
            .await
            .unwrap();
        assert_eq!(receipt.confirmed.len(), 1);
        assert_eq!(receipt.confirmed[0].process, *a.identity());
        assert_eq!(receipt.pending.len(), 1);
        assert_eq!(receipt.pending[0].process.process_name, "engine-b");
        assert_eq!(receipt.pending[0].position, Position::new(1, 4));
        assert_eq!(receipt.aged_out.len(), 1, "listed");
        assert_eq!(receipt.live(), 2, "not counted");
        assert!(!receipt.complete());
    }

    #[tokio::test]
    async fn a_handle_on_a_control_never_changed_is_live_and_pending_until_it_applies_a_change() {
        let receipts = Receipts::memory();
        let reporter = receipts.reporter("kill_switch", "");
        reporter.report(Position::ZERO);
        receipts.flush_now().await.unwrap();
        let receipt = receipts
            .receipt("kill_switch", "", Position::new(1, 1), DEFAULT_LIVE_WITHIN)
            .await
            .unwrap();
        assert_eq!((receipt.pending.len(), receipt.live()), (1, 1));
        reporter.report(Position::new(1, 1));
        receipts.flush_now().await.unwrap();
        let receipt = receipts
            .receipt("kill_switch", "", Position::new(1, 1), DEFAULT_LIVE_WITHIN)
            .await
            .unwrap();
        assert!(receipt.complete());
    }

    #[tokio::test]
    async fn a_target_is_forgotten_when_its_last_reporter_is_dropped() {
        let receipts = Receipts::memory();
        let one = receipts.reporter("symbol_mode", "");
        let two = receipts.reporter("symbol_mode", "");
        assert_eq!(receipts.entries(), 1, "two handles of one target share it");
        drop(one);
        assert_eq!(receipts.entries(), 1);
        drop(two);
        assert_eq!(receipts.entries(), 0, "the last holder forgets it");
    }

    /// Two handles of one control in a process: the process confirms a change only
    /// once the slower one applied it — and again when the slow one is dropped.
    #[tokio::test]
    async fn a_process_confirms_only_what_its_slowest_handle_applied() {
        let receipts = Receipts::memory();
        let fast = receipts.reporter("scope", "");
        let slow = receipts.reporter("scope", "");
        let confirmed = |p: u64| {
            let receipts = receipts.clone();
            async move {
                receipts.flush_now().await.unwrap();
                receipts
                    .receipt("scope", "", Position::new(1, p), DEFAULT_LIVE_WITHIN)
                    .await
                    .unwrap()
                    .confirmed
                    .len()
            }
        };
        fast.report(Position::new(1, 5));
        assert_eq!(confirmed(5).await, 0, "the slow handle has applied nothing");
        slow.report(Position::new(1, 4));
        assert_eq!(confirmed(4).await, 1);
        assert_eq!(confirmed(5).await, 0, "the slow handle holds 4");
        slow.report(Position::new(1, 6));
        assert_eq!(confirmed(5).await, 1, "both hold 5 or more");
        assert_eq!(confirmed(6).await, 0, "the fast one holds 5");
        drop(fast);
        assert_eq!(confirmed(6).await, 1, "the one left holds 6");
    }

    #[cfg(feature = "http")]
    #[tokio::test]
    async fn the_receipt_route_answers_a_viewer_with_the_receipt_and_names_a_bad_query() {
        use crate::http::{Authenticator, Role};
        use axum::body::Body;
        use axum::extract::ConnectInfo;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;

        let receipts = Receipts::memory();
        let reporter = receipts.reporter("kill_switch", "");
        reporter.report(Position::new(1, 5));
        receipts.flush_now().await.unwrap();
        let (auth, token) = Authenticator::development(Role::Viewer, "alice");
        let app = auth.protect(http::router(
            "/admin/kill-switch/receipt",
            receipts.clone(),
            "kill_switch",
            "",
            "the kill switch",
        ));
        let get = |uri: &str| {
            let mut req = Request::get(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 9))));
            app.clone().oneshot(req)
        };
        let body = |r: axum::response::Response| async move {
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };

        let r = get("/admin/kill-switch/receipt?position=1/5")
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let receipt: Receipt = serde_json::from_value(body(r).await).unwrap();
        assert_eq!(receipt.confirmed.len(), 1);
        assert_eq!(receipt.confirmed[0].process, *receipts.identity());

        let later = Position::new(1, 6).0;
        let r = get(&format!(
            "/admin/kill-switch/receipt?position={later}&live_within=2s"
        ))
        .await
        .unwrap();
        let receipt: Receipt = serde_json::from_value(body(r).await).unwrap();
        assert_eq!((receipt.confirmed.len(), receipt.pending.len()), (0, 1));
        assert_eq!(receipt.live_within, Duration::from_secs(2));

        let r = get("/admin/kill-switch/receipt").await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let error = body(r).await;
        assert_eq!(error["error"]["code"], "invalid_query", "{error}");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("position"));
    }

    #[test]
    fn positions_parse_as_numbers_or_timeline_slash_counter() {
        assert_eq!(parse_position("1/7"), Ok(Position::new(1, 7)));
        assert_eq!(
            parse_position(&Position::new(2, 3).0.to_string()),
            Ok(Position::new(2, 3))
        );
        assert!(parse_position("seven")
            .unwrap_err()
            .contains("timeline/counter"));
    }
}
