//! The skeleton every PostgreSQL store shares, so that copies cannot drift:
//!
//! * [`PgStore`]: a store names its env prefix, pool component, migrations and how it
//!   wraps a pool; it is given `from_env`, `from_lookup`, `new`, `migrate` and
//!   `swap_dsn` (the shape of object_store's `GetClient` + `GetClientExt`).
//! * [`PgChangeFeed`]: the store's side of the [change feed](crate::feed): a LISTEN
//!   connection started lazily by the first subscription, that follows the primary
//!   ([`Listener`]), publishes every newer position, resyncs its subscribers after
//!   every (re)connect — the moment a promoted replica's history may have lost the
//!   newest positions — and records whether push works.

use super::hub;
use super::listen::{ListenEvent, ListenOptions};
use super::migrate::{migrate, Migration, MigrationReport};
use super::pool::PgPool;
use super::settings::PgSettings;
use crate::errors::{ConfigError, DbError};
use crate::feed::{ChangeFeed, FeedSource, FeedSubscription, PushStatus};
use crate::position::{Position, Positioned};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;

/// A PostgreSQL store: what it is made of. Implement this and the constructors,
/// migrations and DSN swap come with [`PgStore`]'s provided methods.
pub trait PgStore: Sized + Send + Sync {
    /// The env prefix of the store's settings, e.g. `TRADEPULSE_KILL_SWITCH`
    /// (variables `TRADEPULSE_KILL_SWITCH_POSTGRES__DSN`, …).
    const ENV_PREFIX: &'static str;
    /// The pool's component: metrics label and `application_name`, spelled like the
    /// health component (`kill_switch`, `symbol_mode`, `fencing`).
    const COMPONENT: &'static str;
    /// The key under which the store's migrations are recorded.
    const MIGRATION_SET: &'static str;
    /// The store's embedded migrations.
    const MIGRATIONS: &'static [Migration];
    /// The store's error type.
    type Error: From<ConfigError> + From<DbError> + Send;

    /// A store over an existing pool (shared with other stores of the process).
    fn from_pool(pool: PgPool) -> Self;

    /// The store's pool.
    fn pool(&self) -> &PgPool;

    /// A store with settings from `<ENV_PREFIX>_POSTGRES__*`, each key the prefix does
    /// not set read from `TRADEPULSE_POSTGRES__*` (one DSN for every store).
    fn from_env() -> Result<Self, Self::Error> {
        Self::new(PgSettings::from_env(Self::ENV_PREFIX)?)
    }

    /// Like [`from_env`](Self::from_env) with a custom lookup of the same variable
    /// names (a config map, a secret store, tests).
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Self::Error> {
        Self::new(PgSettings::from_lookup(Self::ENV_PREFIX, lookup)?)
    }

    /// A store with these settings. Does not connect; the first call does.
    fn new(settings: PgSettings) -> Result<Self, Self::Error> {
        Ok(Self::from_pool(PgPool::new(Self::COMPONENT, settings)?))
    }

    /// Applies the embedded migrations (idempotent, safe under concurrent start).
    fn migrate(&self) -> impl Future<Output = Result<MigrationReport, Self::Error>> + Send {
        async move { Ok(migrate(self.pool(), Self::MIGRATION_SET, Self::MIGRATIONS).await?) }
    }

    /// Points the store at another DSN (a promoted replica) without a restart; the
    /// store's LISTEN connection follows.
    fn swap_dsn(&self, dsn: &str) -> Result<(), Self::Error> {
        Ok(self.pool().swap_dsn(dsn)?)
    }
}

/// The PostgreSQL glue of a control's store with a change feed, written once: its
/// [`PgStore`] (settings prefix, health component, migrations, error), the inherent
/// constructors of [`pg_store_inherent!`](crate::pg_store_inherent), and its
/// [`PgFeedStore`]. The store is a struct with the fields `pool: PgPool` and
/// `changes: PgChangeFeed<Item>` (plus any `extra` fields and their initial values);
/// `reload` is an `async fn(&PgPool) -> Result<Item, DbError>` giving the newest
/// change (what a reconnected listener publishes), `interpret` a
/// `fn(&str, Position) -> Notified<Item>` reading a notification (see
/// [`interpret_payload`]).
///
/// ```text
/// tradepulse_failover_core::pg_feed_store!(PostgresScopeStore {
///     env_prefix: crate::postgres::ENV_PREFIX,
///     component: COMPONENT,
///     migrations: "killswitch" => crate::postgres::MIGRATIONS,
///     error: Error,
///     item: ScopeChange,
///     channel: CHANNEL,
///     events_table: "scope_events",
///     reload: current,
///     interpret: interpret,
/// });
/// ```
#[macro_export]
macro_rules! pg_feed_store {
    (
        $store:ty {
            env_prefix: $env:expr,
            component: $component:expr,
            migrations: $set:literal => $migrations:expr,
            error: $error:ty,
            item: $item:ty,
            channel: $channel:expr,
            events_table: $events:literal,
            reload: $reload:path,
            interpret: $interpret:path
            $(, extra: { $($field:ident : $value:expr),* $(,)? })?
            $(,)?
        }
    ) => {
        impl $crate::postgres::PgStore for $store {
            const ENV_PREFIX: &'static str = $env;
            const COMPONENT: &'static str = $component;
            const MIGRATION_SET: &'static str = $set;
            const MIGRATIONS: &'static [$crate::postgres::Migration] = $migrations;
            type Error = $error;

            fn from_pool(pool: $crate::postgres::PgPool) -> Self {
                let reload: $crate::postgres::Reload<$item> = ::std::sync::Arc::new(|pool| {
                    ::std::boxed::Box::pin(async move { $reload(&pool).await })
                });
                Self {
                    pool,
                    changes: $crate::postgres::PgChangeFeed::new(
                        $channel,
                        $events,
                        reload,
                        ::std::sync::Arc::new($interpret),
                    ),
                    $($($field: $value,)*)?
                }
            }

            fn pool(&self) -> &$crate::postgres::PgPool {
                &self.pool
            }
        }

        $crate::pg_store_inherent!($store);

        impl $crate::postgres::PgFeedStore for $store {
            type Item = $item;

            fn changes(&self) -> &$crate::postgres::PgChangeFeed<$item> {
                &self.changes
            }
        }
    };
}

/// Gives a [`PgStore`] its constructors, migrations, DSN swap and pool as inherent
/// methods, so that a user builds the store without importing the trait:
/// `PostgresKillSwitchStore::from_env()?.migrate().await?`. Every store of the family
/// expands it once, right after its `impl PgStore`.
#[macro_export]
macro_rules! pg_store_inherent {
    ($store:ty) => {
        impl $store {
            /// A store with settings from its `<PREFIX>_POSTGRES__*` variables, each key
            /// the prefix does not set read from `TRADEPULSE_POSTGRES__*` (one DSN for
            /// every store).
            pub fn from_env(
            ) -> ::std::result::Result<Self, <Self as $crate::postgres::PgStore>::Error> {
                <Self as $crate::postgres::PgStore>::from_env()
            }

            /// Like [`from_env`](Self::from_env) with a custom lookup of the same
            /// variable names (a config map, a secret store, tests).
            pub fn from_lookup(
                lookup: impl Fn(&str) -> Option<String>,
            ) -> ::std::result::Result<Self, <Self as $crate::postgres::PgStore>::Error> {
                <Self as $crate::postgres::PgStore>::from_lookup(lookup)
            }

            /// A store with these settings. Does not connect; the first call does.
            pub fn new(
                settings: $crate::postgres::PgSettings,
            ) -> ::std::result::Result<Self, <Self as $crate::postgres::PgStore>::Error> {
                <Self as $crate::postgres::PgStore>::new(settings)
            }

            /// A store over an existing pool (shared with other stores of the process).
            pub fn from_pool(pool: $crate::postgres::PgPool) -> Self {
                <Self as $crate::postgres::PgStore>::from_pool(pool)
            }

            /// Applies the embedded migrations (idempotent, safe under concurrent
            /// start).
            pub async fn migrate(
                &self,
            ) -> ::std::result::Result<
                $crate::postgres::MigrationReport,
                <Self as $crate::postgres::PgStore>::Error,
            > {
                <Self as $crate::postgres::PgStore>::migrate(self).await
            }

            /// Points the store at another DSN (a promoted replica) without a restart;
            /// its LISTEN connection follows.
            pub fn swap_dsn(
                &self,
                dsn: &str,
            ) -> ::std::result::Result<(), <Self as $crate::postgres::PgStore>::Error> {
                <Self as $crate::postgres::PgStore>::swap_dsn(self, dsn)
            }

            /// The store's pool (settings, which server answered, `pg_pool_*` gauges).
            pub fn pool(&self) -> &$crate::postgres::PgPool {
                <Self as $crate::postgres::PgStore>::pool(self)
            }
        }
    };
}

/// A PostgreSQL store with a change feed: name the feed and its audit table, and
/// [`FeedSource`] — subscribe, contains, unreachable, retry budget — comes with it.
pub trait PgFeedStore: PgStore {
    /// What the store's feed carries.
    type Item: Positioned + Clone + Send + Sync + 'static;
    /// The store's change feed.
    fn changes(&self) -> &PgChangeFeed<Self::Item>;
}

#[async_trait::async_trait]
impl<T> FeedSource for T
where
    T: PgFeedStore,
    <T as PgStore>::Error: std::fmt::Display + 'static,
{
    type Item = <T as PgFeedStore>::Item;
    type Error = <T as PgStore>::Error;

    async fn subscribe(&self) -> Result<FeedSubscription<Self::Item>, Self::Error> {
        Ok(self.changes().subscribe(self.pool()).await?)
    }

    async fn contains(&self, position: Position) -> Result<bool, Self::Error> {
        Ok(self.changes().contains(self.pool(), position).await?)
    }

    fn unreachable(&self) -> Option<String> {
        self.pool().unreachable()
    }

    fn retry_budget(&self) -> Option<Duration> {
        Some(self.pool().settings().retry_policy().budget)
    }
}

/// What a notification's payload means to a store.
#[derive(Debug)]
pub enum Notified<T> {
    /// The payload carries the item itself: publish it.
    Item(T),
    /// Something newer than the feed holds: read the store and publish.
    Reload,
    /// Nothing new.
    Skip,
}

/// Reads the store's current item (after a reconnect, or when a payload is not enough).
pub type Reload<T> = Arc<dyn Fn(PgPool) -> BoxFuture<'static, Result<T, DbError>> + Send + Sync>;
/// Interprets a payload, given the feed's current position.
pub type Interpret<T> = Arc<dyn Fn(&str, Position) -> Notified<T> + Send + Sync>;

/// A store's change feed over LISTEN/NOTIFY (see the module docs).
pub struct PgChangeFeed<T> {
    feed: ChangeFeed<T>,
    channel: &'static str,
    contains_sql: String,
    options: ListenOptions,
    reload: Reload<T>,
    interpret: Interpret<T>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<T> std::fmt::Debug for PgChangeFeed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeFeed")
            .field("channel", &self.channel)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for PgChangeFeed<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// The payload as a position (`NOTIFY channel, '<position>'`): reload when newer.
pub fn reload_when_newer<T>(payload: &str, held: Position) -> Notified<T> {
    match payload.parse::<u64>() {
        Ok(p) if Position(p) <= held => Notified::Skip,
        _ => Notified::Reload,
    }
}

/// How a control reads its notification: `decode` turns a payload carrying the
/// change (JSON) into the item, published when newer than `held` and skipped
/// otherwise; a bare position (`'<position>'`) is skipped when not newer, else
/// `bare(position)` (a marker item "newer: read it"), or a reload when `bare` gives
/// none; anything else is a reload.
pub fn interpret_payload<T: Positioned>(
    payload: &str,
    held: Position,
    decode: impl FnOnce(&str) -> Option<T>,
    bare: impl FnOnce(Position) -> Option<T>,
) -> Notified<T> {
    if let Some(item) = decode(payload) {
        return if item.position() <= held {
            Notified::Skip
        } else {
            Notified::Item(item)
        };
    }
    match payload.parse::<u64>() {
        Ok(p) if Position(p) <= held => Notified::Skip,
        Ok(p) => bare(Position(p)).map_or(Notified::Reload, Notified::Item),
        Err(_) => Notified::Reload,
    }
}

impl<T: Positioned + Clone + Send + Sync + 'static> PgChangeFeed<T> {
    /// A feed over `channel` whose changes are the rows of `audit_table` (identified
    /// by its `position` column); nothing starts until the first subscription.
    pub fn new(
        channel: &'static str,
        audit_table: &'static str,
        reload: Reload<T>,
        interpret: Interpret<T>,
    ) -> Self {
        let feed = ChangeFeed::new();
        feed.set_push_status(PushStatus::Unavailable("not listening yet".into()));
        Self {
            feed,
            channel,
            contains_sql: format!(
                "SELECT EXISTS (SELECT 1 FROM {audit_table} WHERE position = $1)"
            ),
            options: ListenOptions::default(),
            reload,
            interpret,
            task: Mutex::new(None),
        }
    }

    /// Sets how the LISTEN connection probes and reconnects.
    pub fn set_listen_options(&mut self, options: ListenOptions) {
        self.options = options;
    }

    /// The feed (publish what the store itself wrote or read).
    pub fn feed(&self) -> &ChangeFeed<T> {
        &self.feed
    }

    /// Whether the audit table holds the change at `position` (and true for
    /// [`Position::ZERO`]).
    pub async fn contains(&self, pool: &PgPool, position: Position) -> Result<bool, DbError> {
        if position == Position::ZERO {
            return Ok(true);
        }
        let row = pool
            .query_one(
                "feed.contains",
                &self.contains_sql,
                &[(&position.as_i64(), Type::INT8)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Starts listening (once), subscribes, and reads the current item so that the
    /// subscription starts from the store's state.
    pub async fn subscribe(&self, pool: &PgPool) -> Result<FeedSubscription<T>, DbError> {
        self.ensure_started(pool);
        let subscription = self.feed.subscribe();
        let item = (self.reload)(pool.clone()).await?;
        self.feed.publish(item);
        Ok(subscription)
    }

    fn ensure_started(&self, pool: &PgPool) {
        let mut slot = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        // One LISTEN connection per database per process, shared by every store.
        let mut listener = hub::subscribe(pool, self.channel, &self.options);
        let (pool, feed) = (pool.clone(), self.feed.clone());
        let (reload, interpret) = (self.reload.clone(), self.interpret.clone());
        *slot = Some(tokio::spawn(async move {
            while let Some(event) = listener.recv().await {
                match event {
                    ListenEvent::Connected | ListenEvent::Joined { .. } => {
                        // Notifications were missed, and the server may be a promoted
                        // replica whose history lost the newest positions: every
                        // subscriber re-reads, whatever the position.
                        match reload_bounded(&reload, &pool).await {
                            Ok(item) => {
                                feed.resync(item);
                                feed.set_push_status(PushStatus::Working);
                            }
                            Err(error) => feed.set_push_status(PushStatus::Unavailable(format!(
                                "reading the store after reconnecting failed: {error}"
                            ))),
                        }
                    }
                    ListenEvent::Notification { payload, .. } => {
                        match interpret(&payload, feed.position()) {
                            Notified::Item(item) => {
                                feed.publish(item);
                            }
                            Notified::Reload => match reload(pool.clone()).await {
                                Ok(item) => {
                                    feed.publish(item);
                                }
                                Err(error) => {
                                    tracing::debug!(%error, "reading the store after a notification failed; polling catches up")
                                }
                            },
                            Notified::Skip => {}
                        }
                    }
                    ListenEvent::Disconnected { error } => {
                        feed.set_push_status(PushStatus::Unavailable(format!(
                            "LISTEN connection lost: {error}"
                        )));
                    }
                }
            }
        }));
    }
}

/// A reload after a reconnect, retried a few times: the new primary may still be
/// settling.
async fn reload_bounded<T>(reload: &Reload<T>, pool: &PgPool) -> Result<T, DbError> {
    let mut wait = Duration::from_millis(50);
    let mut last = None;
    for _ in 0..4 {
        match reload(pool.clone()).await {
            Ok(item) => return Ok(item),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    Err(last.expect("at least one attempt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(p: &str) -> Option<Position> {
        p.strip_prefix("{\"position\":")?
            .strip_suffix('}')?
            .parse()
            .ok()
            .map(Position)
    }

    fn kind(n: Notified<Position>) -> String {
        match n {
            Notified::Skip => "skip".into(),
            Notified::Reload => "reload".into(),
            Notified::Item(p) => format!("item {}", p.0),
        }
    }

    /// A carried change newer than the held one is published, an older one skipped;
    /// a bare position is a marker item only where the control has one, else a
    /// reload; anything unreadable is a reload, never an item.
    #[test]
    fn a_payload_is_published_skipped_or_reloaded() {
        let held = Position(5);
        let marker = |p: Position| Some(p);
        let cases = [
            ("{\"position\":7}", true, "item 7"),
            ("{\"position\":5}", true, "skip"),
            ("7", true, "item 7"),
            ("7", false, "reload"),
            ("4", false, "skip"),
            ("{\"position\":x}", true, "reload"),
            ("", true, "reload"),
        ];
        for (payload, with_marker, want) in cases {
            let got = if with_marker {
                interpret_payload(payload, held, decode, marker)
            } else {
                interpret_payload(payload, held, decode, |_| None)
            };
            assert_eq!(kind(got), want, "{payload:?} (marker {with_marker})");
        }
    }
}
