//! LISTEN/NOTIFY with automatic reconnect, for push propagation.
//!
//! A [`Listener`] keeps one dedicated connection (outside the pool) to the writable
//! server, LISTENs on its channels and forwards notifications.
//!
//! **It follows the primary.** A LISTEN connection that is merely alive is not
//! enough: after a planned switchover the old primary is read-only but still up, and
//! notifications of the new primary never reach it. So the connection is re-validated
//! as read-write (the pool's own check) right after LISTEN and on every heartbeat,
//! and it is dropped when its server is in recovery or read-only, when the pool has
//! moved to another host, or when the pool's DSN was swapped. It is dropped too when
//! it dies (server killed, backend terminated) or a heartbeat gets no answer in time
//! (hung server). Each time it reports [`ListenEvent::Disconnected`], reconnects with
//! backoff through the pool's current settings to the current primary and reports
//! [`ListenEvent::Connected`] again. Notifications sent while disconnected are lost
//! by PostgreSQL's design, so a consumer must reload its state on every `Connected`.
//!
//! A reconnect loop logs one warning per outage, then at most one a minute.

use super::pool::PgPool;
use crate::log::Throttle;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What a [`Listener`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenEvent {
    /// (Re)connected to a writable primary and listening: reload state,
    /// notifications may have been missed.
    Connected,
    /// A notification.
    Notification {
        /// The channel.
        channel: String,
        /// The payload.
        payload: String,
    },
    /// A channel added with [`Listener::listen`] is now listened on the live
    /// connection: its consumers reload (anything sent before was missed).
    Joined {
        /// The channel.
        channel: String,
    },
    /// The connection was lost or could not be made; a reconnect follows.
    Disconnected {
        /// Why, e.g. "connection refused".
        error: String,
    },
}

/// Options of a [`Listener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    /// How often the connection is probed: is the server still a writable primary,
    /// and still the pool's? A probe that gets no answer within the pool's operation
    /// timeout counts as a lost connection.
    pub heartbeat: Duration,
    /// First wait before reconnecting.
    pub reconnect_initial: Duration,
    /// Longest wait before reconnecting.
    pub reconnect_max: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
        }
    }
}

/// A running LISTEN loop. Dropping it stops the loop and closes its connection.
#[derive(Debug)]
pub struct Listener {
    events: mpsc::Receiver<ListenEvent>,
    channels: watch::Sender<Vec<String>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A channel name must be a plain identifier: lower-case letters, digits, `_`.
fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Listener {
    /// Starts listening on `channels` (plain lower-case identifiers).
    ///
    /// # Panics
    /// When a channel name is not a plain identifier: that is a programming error.
    pub fn start(pool: PgPool, channels: &[&str], options: ListenOptions) -> Self {
        for c in channels {
            assert!(
                valid_channel(c),
                "LISTEN channel '{c}' must match [a-z0-9_]{{1,63}}"
            );
        }
        let (channels, watched) = watch::channel(channels.iter().map(|c| c.to_string()).collect());
        let (tx, events) = mpsc::channel(1024);
        let task = tokio::spawn(run(pool, watched, options, tx));
        Self {
            events,
            channels,
            task,
        }
    }

    /// Listens on one more channel too (on the live connection at once, reported as
    /// [`ListenEvent::Joined`], and after every reconnect).
    ///
    /// # Panics
    /// When the channel name is not a plain identifier: that is a programming error.
    pub fn listen(&self, channel: &str) {
        self.channels().listen(channel);
    }

    /// A handle that adds channels, usable while another task receives events.
    pub fn channels(&self) -> Channels {
        Channels(self.channels.clone())
    }
}

/// Adds channels to a running [`Listener`].
#[derive(Debug, Clone)]
pub struct Channels(watch::Sender<Vec<String>>);

impl Channels {
    /// True when `channel` is among the listener's channels.
    pub fn is_listening(&self, channel: &str) -> bool {
        self.0.borrow().iter().any(|c| c == channel)
    }

    /// See [`Listener::listen`].
    ///
    /// # Panics
    /// When the channel name is not a plain identifier: that is a programming error.
    pub fn listen(&self, channel: &str) {
        assert!(
            valid_channel(channel),
            "LISTEN channel '{channel}' must match [a-z0-9_]{{1,63}}"
        );
        self.0.send_if_modified(|set| {
            if set.iter().any(|c| c == channel) {
                false
            } else {
                set.push(channel.to_owned());
                true
            }
        });
    }
}

impl Listener {
    /// The next event; `None` only after the listener stopped.
    pub async fn recv(&mut self) -> Option<ListenEvent> {
        self.events.recv().await
    }
}

fn listen_sql(channels: &[String]) -> String {
    channels.iter().map(|c| format!("LISTEN {c};")).collect()
}

async fn run(
    pool: PgPool,
    mut channels: watch::Receiver<Vec<String>>,
    options: ListenOptions,
    tx: mpsc::Sender<ListenEvent>,
) {
    let mut wait = options.reconnect_initial;
    let mut warnings = Throttle::default();
    // Probes in a row whose notification never arrived.
    let mut undelivered = 0u32;
    loop {
        let error = match session(&pool, &mut channels, &options, &tx, &mut warnings).await {
            Session::Closed => return,
            Session::Lost {
                error,
                was_connected,
                persistent,
            } => {
                if was_connected {
                    wait = options.reconnect_initial;
                }
                undelivered = if persistent { undelivered + 1 } else { 0 };
                // Once could be a failover between the probe's two sessions (its
                // notification sent through the pool to a server this connection
                // no longer shares); twice in a row is a pooler that will not change
                // soon. Every other failure — the server gone mid-probe included —
                // reconnects with the usual backoff.
                if undelivered >= PERSISTENT_AFTER {
                    wait = PERSISTENT_RETRY;
                }
                error
            }
        };
        if warnings.allow() {
            tracing::warn!(component = pool.component(), %error, "LISTEN connection lost; reconnecting to the current primary (logged once per outage, then at most once a minute)");
        } else {
            tracing::debug!(component = pool.component(), %error, "LISTEN connection lost");
        }
        if tx.send(ListenEvent::Disconnected { error }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
        // Jittered, so that a fleet does not reconnect to a new primary in lockstep.
        wait = crate::retry::jittered((wait * 2).min(options.reconnect_max));
    }
}

enum Session {
    Closed,
    Lost {
        error: String,
        was_connected: bool,
        /// A condition that reconnecting soon will not fix (a transaction pooler).
        persistent: bool,
    },
}

/// How long to wait before trying again after a persistent failure.
const PERSISTENT_RETRY: Duration = Duration::from_secs(30);
/// How many undelivered probes in a row make a failure persistent.
const PERSISTENT_AFTER: u32 = 2;

/// Why a probe failed: its notification never arrived on a working connection
/// (`Undelivered`: a transaction pooler, most likely), or anything else (`Failed`:
/// the connection or the server went away, which a reconnect may fix at once).
enum ProbeFailure {
    Undelivered(String),
    Failed(String),
}

static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

type Forwarded = Result<(String, String), String>;

/// Sends a notification from another session (through the pool) on a channel only
/// this connection listens on, and waits for it within `bound`. Notifications of
/// other channels that arrive meanwhile are kept in `early`.
async fn probe(
    pool: &PgPool,
    client: &tokio_postgres::Client,
    nrx: &mut mpsc::UnboundedReceiver<Forwarded>,
    early: &mut Vec<(String, String)>,
    bound: Duration,
) -> Result<(), ProbeFailure> {
    use ProbeFailure::{Failed, Undelivered};
    let channel = format!(
        "failover_probe_{}_{}",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let run = |sql: String| async move {
        match tokio::time::timeout(bound, client.batch_execute(&sql)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(super::error::describe(&e)),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(bound)
            )),
        }
    };
    run(format!("LISTEN {channel}")).await.map_err(Failed)?;
    let sent = tokio::time::timeout(
        bound,
        pool.execute(
            "listen.probe",
            "SELECT pg_notify($1, 'probe')",
            &[(&channel, tokio_postgres::types::Type::TEXT)],
        ),
    )
    .await;
    match sent {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(Failed(format!(
                "sending the push probe failed: {}",
                e.message()
            )))
        }
        Err(_) => return Err(Failed("sending the push probe got no answer".into())),
    }
    // Delivery takes milliseconds; a loaded machine gets some slack before push is
    // declared unavailable for a while.
    let deadline = tokio::time::Instant::now() + bound.max(Duration::from_secs(2));
    loop {
        match tokio::time::timeout_at(deadline, nrx.recv()).await {
            Ok(Some(Ok((c, payload)))) => {
                if c == channel {
                    break;
                }
                early.push((c, payload));
            }
            Ok(Some(Err(error))) => return Err(Failed(error)),
            Ok(None) => return Err(Failed("connection closed".into())),
            Err(_) => {
                return Err(Undelivered(format!(
                    "notifications do not reach this LISTEN connection (a transaction pooler such as pgbouncer in transaction mode?): set …_POSTGRES__LISTEN_DSN to the primary or to a session-mode pool; retrying, every {} once it fails twice in a row",
                    humantime::format_duration(PERSISTENT_RETRY)
                )))
            }
        }
    }
    run(format!("UNLISTEN {channel}")).await.map_err(Failed)
}

/// Fails when the server is a standby or read-only (a demoted primary).
const WRITABLE: &str =
    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'";

async fn session(
    pool: &PgPool,
    channels: &mut watch::Receiver<Vec<String>>,
    options: &ListenOptions,
    tx: &mpsc::Sender<ListenEvent>,
    warnings: &mut Throttle,
) -> Session {
    let lost = |error: String, was_connected| Session::Lost {
        error,
        was_connected,
        persistent: false,
    };
    let mut generation = pool.watch_generation();
    generation.borrow_and_update();
    let (client, mut stream, host) = match pool.connect_dedicated().await {
        Ok(connected) => connected,
        Err(e) => return lost(e.message().to_owned(), false),
    };
    let (ntx, mut nrx) = mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let forward = match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    Ok((n.channel().to_owned(), n.payload().to_owned()))
                }
                Ok(_) => continue,
                Err(e) => Err(super::error::describe(&e)),
            };
            let stop = forward.is_err();
            if ntx.send(forward).is_err() || stop {
                return;
            }
        }
    });
    let _pump = AbortOnDrop(pump);
    let bound = pool.settings().operation_timeout();
    // Is this still the pool's writable primary? `None` when it is.
    let check = || async {
        match tokio::time::timeout(bound, client.query_one(WRITABLE, &[])).await {
            Ok(Ok(row)) if row.get::<_, bool>(0) => Some(format!(
                "{host} is read-only or a standby now (switchover?)"
            )),
            Ok(Ok(_)) => match pool.current_host() {
                // With a listen DSN the pool's host (a pooler) is another address.
                Some(current) if current != host && !pool.has_listen_dsn() => {
                    Some(format!("the pool moved from {host} to {current}"))
                }
                _ => None,
            },
            Ok(Err(e)) => Some(super::error::describe(&e)),
            Err(_) => Some(format!(
                "heartbeat got no answer within {} (server hung?)",
                humantime::format_duration(bound)
            )),
        }
    };
    let mut listening: Vec<String> = channels.borrow_and_update().clone();
    // Named so that operators (and the fleet test) can tell push connections apart.
    let setup = format!(
        "SET application_name = '{}_listen';{}",
        pool.component(),
        listen_sql(&listening)
    );
    match tokio::time::timeout(bound, client.batch_execute(&setup)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return lost(super::error::describe(&e), false),
        Err(_) => {
            return lost(
                format!(
                    "LISTEN got no answer within {}",
                    humantime::format_duration(bound)
                ),
                false,
            )
        }
    }
    // LISTEN after the check would leave a window; the check after LISTEN proves that
    // this session listens on the primary.
    if let Some(error) = check().await {
        return lost(error, false);
    }
    // Does a notification sent from another session reach this one? Not through a
    // transaction pooler, which hands the backend that LISTENs to other clients.
    let mut early = Vec::new();
    match probe(pool, &client, &mut nrx, &mut early, bound).await {
        Ok(()) => {}
        Err(ProbeFailure::Undelivered(error)) => {
            return Session::Lost {
                error,
                was_connected: false,
                persistent: true,
            }
        }
        Err(ProbeFailure::Failed(error)) => return lost(error, false),
    }
    if warnings.reset() {
        tracing::info!(component = pool.component(), %host, "LISTEN connection back on the primary");
    }
    if tx.send(ListenEvent::Connected).await.is_err() {
        return Session::Closed;
    }
    for (channel, payload) in early {
        if tx
            .send(ListenEvent::Notification { channel, payload })
            .await
            .is_err()
        {
            return Session::Closed;
        }
    }
    let mut heartbeat = tokio::time::interval(options.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            message = nrx.recv() => match message {
                Some(Ok((channel, payload))) => {
                    if tx.send(ListenEvent::Notification { channel, payload }).await.is_err() {
                        return Session::Closed;
                    }
                }
                Some(Err(error)) => return lost(error, true),
                None => return lost("connection closed".into(), true),
            },
            _ = heartbeat.tick() => {
                if let Some(error) = check().await {
                    return lost(error, true);
                }
            }
            changed = generation.changed() => {
                if changed.is_ok() {
                    return lost("the pool's DSN was swapped".into(), true);
                }
            }
            changed = channels.changed() => {
                if changed.is_err() {
                    return Session::Closed;
                }
                let now: Vec<String> = channels.borrow_and_update().clone();
                let added: Vec<String> = now.iter().filter(|c| !listening.contains(c)).cloned().collect();
                match tokio::time::timeout(bound, client.batch_execute(&listen_sql(&added))).await {
                    Ok(Ok(())) => {
                        // Anything sent on a new channel before its LISTEN was missed.
                        for channel in added {
                            listening.push(channel.clone());
                            if tx.send(ListenEvent::Joined { channel }).await.is_err() {
                                return Session::Closed;
                            }
                        }
                    }
                    Ok(Err(e)) => return lost(super::error::describe(&e), true),
                    Err(_) => return lost(format!("LISTEN got no answer within {}", humantime::format_duration(bound)), true),
                }
            }
            _ = tx.closed() => return Session::Closed,
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_names_are_plain_identifiers() {
        assert!(super::valid_channel("kill_switch_changed"));
        assert!(!super::valid_channel("x; DROP TABLE y"));
        assert!(!super::valid_channel(""));
        assert!(!super::valid_channel("Upper"));
    }
}
