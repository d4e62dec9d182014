//! One LISTEN connection per database per process, however many stores and handles.
//!
//! LISTEN cannot pass a transaction pooler and every LISTEN connection is a backend on
//! the primary, so a fleet of processes, each with a few controls and many handles,
//! must not open one per store. [`subscribe`] hands out subscriptions to a channel over
//! a process-wide [`Listener`] per database (keyed by its redacted DSN and TLS mode):
//! the first subscription starts it, later ones add their channel to the live
//! connection, and it stops when the last subscription is dropped. Each subscription
//! sees `Connected` / `Disconnected` of the shared connection and the notifications
//! of its own channel; a subscriber that joins a live connection gets `Connected` at
//! once (it must read the store, as after any reconnect).

use super::listen::{Channels, ListenEvent, ListenOptions, Listener};
use super::pool::PgPool;
use crate::handle::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

static HUBS: Mutex<Option<HashMap<String, Weak<Hub>>>> = Mutex::new(None);

struct Sub {
    channel: String,
    tx: mpsc::UnboundedSender<ListenEvent>,
}

#[derive(Default)]
struct Shared {
    subs: Vec<Sub>,
    /// The last connection event, sent to every new subscriber.
    last: Option<ListenEvent>,
}

struct Hub {
    channels: Channels,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A subscription to one channel of the process's shared LISTEN connection.
pub struct HubSubscription {
    rx: mpsc::UnboundedReceiver<ListenEvent>,
    _hub: Arc<Hub>,
}

impl std::fmt::Debug for HubSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSubscription").finish_non_exhaustive()
    }
}

impl HubSubscription {
    /// The next event; `None` only when the shared listener stopped.
    pub async fn recv(&mut self) -> Option<ListenEvent> {
        self.rx.recv().await
    }
}

/// The key of a database: where LISTEN goes (the listen DSN, else the DSN; redacted:
/// hosts, ports, database, user) and the TLS mode.
fn key(pool: &PgPool) -> String {
    let settings = pool.settings();
    let target = settings
        .redacted_listen_dsn()
        .unwrap_or_else(|| settings.to_string());
    format!("{target}|{:?}", settings.tls().mode)
}

/// How many shared LISTEN connections this process holds (for tests and metrics).
pub fn connections() -> usize {
    lock(&HUBS)
        .as_ref()
        .map_or(0, |m| m.values().filter(|w| w.strong_count() > 0).count())
}

/// Subscribes to `channel` on the process's LISTEN connection to `pool`'s database,
/// starting it (with `options`) when there is none.
///
/// # Panics
/// When the channel name is not a plain identifier: that is a programming error.
pub fn subscribe(pool: &PgPool, channel: &str, options: &ListenOptions) -> HubSubscription {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut hubs = lock(&HUBS);
    let hubs = hubs.get_or_insert_with(HashMap::new);
    hubs.retain(|_, w| w.strong_count() > 0);
    let key = key(pool);
    let hub = match hubs.get(&key).and_then(Weak::upgrade) {
        Some(hub) => hub,
        None => {
            let hub = start(pool, options);
            hubs.insert(key, Arc::downgrade(&hub));
            hub
        }
    };
    {
        let mut shared = lock(&hub.shared);
        match &shared.last {
            // Joining a live connection that already listens on the channel: this
            // subscriber has missed everything so far, like after a reconnect. (A
            // channel new to the connection is reported once its LISTEN ran.)
            Some(ListenEvent::Connected) if hub.channels.is_listening(channel) => {
                let _ = tx.send(ListenEvent::Connected);
            }
            Some(event @ ListenEvent::Disconnected { .. }) => {
                let _ = tx.send(event.clone());
            }
            _ => {}
        }
        shared.subs.push(Sub {
            channel: channel.to_owned(),
            tx,
        });
    }
    hub.channels.listen(channel);
    HubSubscription { rx, _hub: hub }
}

fn start(pool: &PgPool, options: &ListenOptions) -> Arc<Hub> {
    let mut listener = Listener::start(pool.clone(), &[], options.clone());
    let channels = listener.channels();
    let shared: Arc<Mutex<Shared>> = Arc::default();
    let task = tokio::spawn({
        let shared = shared.clone();
        async move {
            while let Some(event) = listener.recv().await {
                let mut shared = lock(&shared);
                match &event {
                    ListenEvent::Notification { channel, .. } | ListenEvent::Joined { channel } => {
                        let forward = match &event {
                            ListenEvent::Joined { .. } => ListenEvent::Connected,
                            other => other.clone(),
                        };
                        shared.subs.retain(|s| {
                            s.channel != *channel || s.tx.send(forward.clone()).is_ok()
                        });
                    }
                    ListenEvent::Connected | ListenEvent::Disconnected { .. } => {
                        shared.last = Some(event.clone());
                        shared.subs.retain(|s| s.tx.send(event.clone()).is_ok());
                    }
                }
            }
        }
    });
    Arc::new(Hub {
        channels,
        shared,
        task,
    })
}
