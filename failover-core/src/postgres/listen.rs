//! LISTEN/NOTIFY with automatic reconnect, for push propagation.
//!
//! A [`Listener`] keeps one dedicated connection (outside the pool) to the writable
//! server, LISTENs on its channels and forwards notifications. When the connection
//! dies (server killed, backend terminated, failover) or a heartbeat gets no answer
//! in time (hung server), it reports [`ListenEvent::Disconnected`], reconnects with
//! backoff through the pool's current settings (so a DSN swap applies) and reports
//! [`ListenEvent::Connected`] again. Notifications sent while disconnected are lost
//! by PostgreSQL's design, so a consumer must reload its state on every `Connected`.

use super::pool::PgPool;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What a [`Listener`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenEvent {
    /// (Re)connected and listening: reload state, notifications may have been missed.
    Connected,
    /// A notification.
    Notification {
        /// The channel.
        channel: String,
        /// The payload.
        payload: String,
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
    /// How often an idle connection is probed (an empty query); a probe that gets no
    /// answer within the pool's operation timeout counts as a lost connection.
    pub heartbeat: Duration,
    /// First wait before reconnecting.
    pub reconnect_initial: Duration,
    /// Longest wait before reconnecting.
    pub reconnect_max: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            reconnect_initial: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
        }
    }
}

/// A running LISTEN loop. Dropping it stops the loop and closes its connection.
#[derive(Debug)]
pub struct Listener {
    events: mpsc::Receiver<ListenEvent>,
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
        let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        let (tx, events) = mpsc::channel(1024);
        let task = tokio::spawn(run(pool, sql, options, tx));
        Self { events, task }
    }

    /// The next event; `None` only after the listener stopped.
    pub async fn recv(&mut self) -> Option<ListenEvent> {
        self.events.recv().await
    }
}

async fn run(
    pool: PgPool,
    listen_sql: String,
    options: ListenOptions,
    tx: mpsc::Sender<ListenEvent>,
) {
    let mut wait = options.reconnect_initial;
    loop {
        let error = match session(&pool, &listen_sql, &options, &tx).await {
            Session::Closed => return,
            Session::Lost {
                error,
                was_connected,
            } => {
                if was_connected {
                    wait = options.reconnect_initial;
                }
                error
            }
        };
        tracing::debug!(component = pool.component(), %error, "LISTEN connection lost");
        if tx.send(ListenEvent::Disconnected { error }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
        wait = (wait * 2).min(options.reconnect_max);
    }
}

enum Session {
    Closed,
    Lost { error: String, was_connected: bool },
}

async fn session(
    pool: &PgPool,
    listen_sql: &str,
    options: &ListenOptions,
    tx: &mpsc::Sender<ListenEvent>,
) -> Session {
    let lost = |error: String, was_connected| Session::Lost {
        error,
        was_connected,
    };
    let (client, mut stream) = match pool.connect_dedicated().await {
        Ok(pair) => pair,
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
    match tokio::time::timeout(bound, client.batch_execute(listen_sql)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return lost(super::error::describe(&e), false),
        Err(_) => return lost(format!("LISTEN got no answer within {bound:?}"), false),
    }
    if tx.send(ListenEvent::Connected).await.is_err() {
        return Session::Closed;
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
                match tokio::time::timeout(bound, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return lost(super::error::describe(&e), true),
                    Err(_) => return lost(format!("heartbeat got no answer within {bound:?} (server hung?)"), true),
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
