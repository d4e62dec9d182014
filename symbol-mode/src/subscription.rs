//! Change streams: positions (for watchers) and `CancelAll` commands (for engines).

use crate::{CancelAllCommand, Error};
use std::collections::VecDeque;
use std::time::Duration;
/// A stream of store changes: every newer position in order (a slow reader skips to
/// the newest, which is what a watcher needs: it then applies the change's delta, or
/// reads the changes after its own snapshot), and after a reconnect the store's
/// position whatever it is (see [`failover_core::feed`]).
pub type Subscription = failover_core::FeedSubscription<crate::ModeChange>;

/// Where a [`CancelAllSubscription`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartAt {
    /// With the first `CancelAll` accepted after the subscription was made.
    Now,
    /// With the first `CancelAll` whose `seq` (its position) is greater than this one:
    /// pass the last `seq` you processed (persisted by the consumer) to resume after a
    /// restart without missing or repeating a command; `After(0)` replays every
    /// `CancelAll`. Positions never repeat, so a cursor taken before a lossy failover
    /// still lets every later `CancelAll` through.
    After(u64),
}

/// How a backend fetches and waits for `CancelAll` commands.
#[async_trait::async_trait]
pub(crate) trait CancelAllFeed: Send + std::fmt::Debug {
    /// Commands with `seq > after`, in order.
    async fn fetch_after(&self, after: u64) -> Result<Vec<CancelAllCommand>, Error>;
    /// Waits until something may have arrived (a notification, a reconnect, a poll
    /// tick). `false` when the store is gone.
    async fn wait(&mut self) -> bool;
}

/// `CancelAll` commands, each delivered exactly once to this subscription, in `seq`
/// order.
///
/// The subscription keeps the `seq` of the last command it returned. Whenever it may
/// have missed something — a notification, a (re)connect of its listening
/// connection, a poll tick — it fetches every command after that cursor from the
/// audit trail. So a command accepted while its connection was down is delivered
/// after the reconnect, and a command is never delivered twice. `next` is
/// cancel-safe: a dropped `next()` future loses nothing.
///
/// Across process restarts, persist [`cursor`](Self::cursor) after handling a
/// command and resume with [`StartAt::After`].
#[derive(Debug)]
pub struct CancelAllSubscription {
    feed: Box<dyn CancelAllFeed>,
    cursor: u64,
    buffer: VecDeque<CancelAllCommand>,
    dirty: bool,
}

impl CancelAllSubscription {
    pub(crate) fn new(feed: Box<dyn CancelAllFeed>, cursor: u64) -> Self {
        Self {
            feed,
            cursor,
            buffer: VecDeque::new(),
            dirty: true,
        }
    }

    /// The `seq` of the last command returned (or the start cursor).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next command. Store errors are retried (and logged) until the store
    /// answers; `None` only when the store is gone.
    pub async fn next(&mut self) -> Option<CancelAllCommand> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if let Some(command) = self.buffer.pop_front() {
                self.cursor = command.seq;
                return Some(command);
            }
            if self.dirty {
                match self.feed.fetch_after(self.cursor).await {
                    Ok(commands) => {
                        self.dirty = false;
                        backoff = Duration::from_millis(50);
                        // Never step back or repeat, whatever the feed returns.
                        let cursor = self.cursor;
                        self.buffer
                            .extend(commands.into_iter().filter(|c| c.seq > cursor));
                        continue;
                    }
                    Err(Error::Closed) => return None,
                    Err(error) => {
                        tracing::warn!(%error, cursor = self.cursor, "fetching CancelAll commands failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            if !self.feed.wait().await {
                return None;
            }
            self.dirty = true;
        }
    }
}
