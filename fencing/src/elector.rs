//! Leader election on a [`LeaseFencer`]: campaign, renew, step down, release.

use crate::{check_name, check_ttl, Error, Lease, LeaseFencer, LostReason};
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// This process's role, as published by a [`LeaderElector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This process holds the lease: write with `token`, and only before `deadline`.
    Leader {
        /// The fencing token to attach to every write.
        token: u64,
        /// The local instant at which the lease may no longer be relied on (the
        /// elector steps down there unless a renewal moved it).
        deadline: Instant,
    },
    /// This process must not act as the leader.
    Follower {
        /// Why.
        reason: FollowerReason,
    },
}

impl Leadership {
    /// Leader with a deadline still ahead (reads the clock). Check it right before
    /// every write: a process paused past its deadline sees `false` on waking.
    pub fn is_leader(&self) -> bool {
        matches!(self, Self::Leader { deadline, .. } if Instant::now() < *deadline)
    }

    /// The token while [`is_leader`](Self::is_leader).
    pub fn token(&self) -> Option<u64> {
        match self {
            Self::Leader { token, .. } if self.is_leader() => Some(*token),
            _ => None,
        }
    }
}

/// Why an elector is a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FollowerReason {
    /// No campaign has been answered yet.
    Starting,
    /// Another process holds the lease.
    HeldBy {
        /// The leader.
        holder: String,
        /// Its token.
        token: u64,
    },
    /// The lease was lost: a renewal found a newer token, or the lease expired.
    LeaseLost(LostReason),
    /// Renewals failed (store unreachable or too slow) until the local deadline.
    DeadlineReached,
    /// A campaign could not reach the store; it is retried.
    StoreUnavailable,
    /// The elector was shut down (the lease is released).
    ShutDown,
}

/// What a [`LeaderElector`] campaigns for, and how often.
///
/// Deserializes from `resource`, `holder` and `ttl` (required), `renew_interval`,
/// `retry_interval` (defaults derived from the ttl as in [`ElectorConfig::new`]) and
/// `jitter`, durations as `humantime` strings:
///
/// ```
/// let config: tradepulse_fencing::ElectorConfig = serde_json::from_str(
///     r#"{"resource": "matching-engine", "holder": "host-a:4711", "ttl": "3s"}"#,
/// ).unwrap();
/// assert_eq!(config.resource(), "matching-engine");
/// ```
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(from = "ElectorConfigFields", into = "ElectorConfigFields")]
pub struct ElectorConfig {
    resource: String,
    holder: String,
    ttl: Duration,
    renew_interval: Duration,
    retry_interval: Duration,
    jitter: f64,
}

/// The serialized form of [`ElectorConfig`].
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ElectorConfigFields {
    resource: String,
    holder: String,
    #[serde(with = "failover_core::time::humantime")]
    ttl: Duration,
    #[serde(default, with = "failover_core::time::humantime_option")]
    renew_interval: Option<Duration>,
    #[serde(default, with = "failover_core::time::humantime_option")]
    retry_interval: Option<Duration>,
    #[serde(default)]
    jitter: Option<f64>,
}

impl From<ElectorConfigFields> for ElectorConfig {
    fn from(fields: ElectorConfigFields) -> Self {
        let mut config = Self::new(fields.resource, fields.holder, fields.ttl);
        if let Some(interval) = fields.renew_interval {
            config = config.with_renew_interval(interval);
        }
        if let Some(interval) = fields.retry_interval {
            config = config.with_retry_interval(interval);
        }
        if let Some(jitter) = fields.jitter {
            config = config.with_jitter(jitter);
        }
        config
    }
}

impl From<ElectorConfig> for ElectorConfigFields {
    fn from(config: ElectorConfig) -> Self {
        Self {
            resource: config.resource,
            holder: config.holder,
            ttl: config.ttl,
            renew_interval: Some(config.renew_interval),
            retry_interval: Some(config.retry_interval),
            jitter: Some(config.jitter),
        }
    }
}

impl ElectorConfig {
    /// Campaign for `resource` as `holder` with leases of `ttl`; renew every `ttl / 3`,
    /// retry a campaign every `ttl / 2` (sooner when the holder's lease ends sooner),
    /// each spread by ±20 % jitter. `holder` names this process: make it unique per
    /// process (e.g. host and pid), since a holder re-acquiring supersedes its own lease.
    pub fn new(resource: impl Into<String>, holder: impl Into<String>, ttl: Duration) -> Self {
        Self {
            resource: resource.into(),
            holder: holder.into(),
            ttl,
            renew_interval: ttl / 3,
            retry_interval: ttl / 2,
            jitter: 0.2,
        }
    }

    /// Sets how long after a grant or renewal the lease is renewed (must be shorter
    /// than the ttl).
    #[must_use]
    pub fn with_renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = interval;
        self
    }

    /// Sets how often a follower campaigns again.
    #[must_use]
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// Sets the random spread of every wait, 0.0 (none) to 0.5 (±50 %).
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 0.5)
        };
        self
    }

    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The holder name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn validate(&self) -> Result<(), Error> {
        check_name("resource", &self.resource)?;
        check_name("holder", &self.holder)?;
        check_ttl(self.ttl)?;
        if self.renew_interval.is_zero() || self.renew_interval >= self.ttl {
            return Err(Error::Invalid {
                what: "renew interval",
                problem: format!(
                    "{:?} must be above zero and below the ttl {:?}: use about a third of the ttl",
                    self.renew_interval, self.ttl
                ),
            });
        }
        if self.retry_interval.is_zero() {
            return Err(Error::Invalid {
                what: "retry interval",
                problem: "is zero: use about half the ttl".to_owned(),
            });
        }
        Ok(())
    }

    fn jittered(&self, d: Duration) -> Duration {
        if self.jitter == 0.0 {
            return d;
        }
        let factor = rand::thread_rng().gen_range(1.0 - self.jitter..=1.0 + self.jitter);
        d.mul_f64(factor)
    }
}

/// Campaigns for a resource in a background task and publishes this process's
/// [`Leadership`] on a `watch`.
///
/// * **Campaign**: a follower calls `acquire` every retry interval (jittered, and as
///   soon as the current holder's lease runs out).
/// * **Renew**: a leader renews every renew interval (jittered). A renewal still
///   unanswered at the lease's local deadline (instant read before the request + ttl
///   − safety margin) is abandoned and the elector steps down there
///   ([`FollowerReason::DeadlineReached`]), before the store can have expired the
///   lease. A renewal answered with "lease lost" steps down at once
///   ([`FollowerReason::LeaseLost`]).
/// * **Shutdown**: [`shutdown`](Self::shutdown) (or dropping the elector) publishes
///   [`FollowerReason::ShutDown`] at once, then releases the lease in the background
///   task. Dropping the `shutdown` future does not stop the release: the task owns
///   the lease, so shutdown is cancellation-safe. An acquire already sent is let
///   finish (bounded by the store's retry budget) so that a lease granted at that
///   moment is released rather than left to expire.
///
/// ```
/// # use std::sync::Arc; use std::time::Duration;
/// # use tradepulse_fencing::{ElectorConfig, LeaderElector, MemoryLeaseFencer};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tradepulse_fencing::Error> {
/// let store = Arc::new(MemoryLeaseFencer::new());
/// let elector = LeaderElector::try_spawn(store, ElectorConfig::new("btc-usd", "engine-a", Duration::from_secs(2)))?;
/// let mut role = elector.watch();
/// role.wait_for(|r| r.is_leader()).await.unwrap();
/// let token = elector.leadership().token().expect("leader"); // attach to every write
/// # let _ = token;
/// elector.shutdown().await?; // steps down, then releases
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LeaderElector {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

#[derive(Debug)]
struct Shared {
    role: watch::Sender<Leadership>,
    stopping: AtomicBool,
}

impl Shared {
    /// Publishes `role` unless it is already current, and never `Leader` once
    /// stopping: the check runs under the watch's lock, the same lock `stop` takes to
    /// publish `ShutDown`, so a renewal finishing during shutdown cannot re-publish
    /// leadership.
    fn publish(&self, role: Leadership) {
        self.role.send_if_modified(|current| {
            if *current == role
                || (self.stopping.load(Ordering::SeqCst)
                    && matches!(role, Leadership::Leader { .. }))
            {
                return false;
            }
            let to = match &role {
                Leadership::Leader { .. } => "leader",
                Leadership::Follower { .. } => "follower",
            };
            if std::mem::discriminant(current) != std::mem::discriminant(&role) {
                metrics::counter!("fencing_elector_transitions_total", "to" => to).increment(1);
                tracing::info!(?role, "leadership changed");
            }
            *current = role;
            true
        });
    }

    fn stop(&self) {
        self.role.send_modify(|current| {
            self.stopping.store(true, Ordering::SeqCst);
            *current = Leadership::Follower {
                reason: FollowerReason::ShutDown,
            };
        });
    }
}

impl LeaderElector {
    /// Starts campaigning on the current tokio runtime.
    ///
    /// # Panics
    /// When `config` contradicts itself (see [`try_spawn`](Self::try_spawn)): a
    /// configuration defect, refused at start-up rather than run unsafely — the same
    /// rule as every handle of the family (`KillSwitch::spawn`, `SymbolModes::spawn`).
    pub fn spawn(fencer: Arc<dyn LeaseFencer>, config: ElectorConfig) -> Self {
        match Self::try_spawn(fencer, config) {
            Ok(elector) => elector,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`spawn`](Self::spawn), returning the refusal of a `config` that
    /// contradicts itself.
    pub fn try_spawn(fencer: Arc<dyn LeaseFencer>, config: ElectorConfig) -> Result<Self, Error> {
        config.validate()?;
        let (role, _) = watch::channel(Leadership::Follower {
            reason: FollowerReason::Starting,
        });
        let shared = Arc::new(Shared {
            role,
            stopping: AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(fencer, config, shared.clone(), stop_rx));
        Ok(Self {
            shared,
            stop,
            task: Some(task),
        })
    }

    /// A receiver of every change of role (each renewal moves a leader's deadline).
    pub fn watch(&self) -> watch::Receiver<Leadership> {
        self.shared.role.subscribe()
    }

    /// The role right now.
    pub fn leadership(&self) -> Leadership {
        self.shared.role.borrow().clone()
    }

    /// Leader with a deadline still ahead.
    pub fn is_leader(&self) -> bool {
        self.shared.role.borrow().is_leader()
    }

    /// Steps down at once, then releases the lease and waits for the background task.
    /// Returns the release's error, if any (the lease then expires on its own).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.signal_stop();
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }

    fn signal_stop(&self) {
        self.shared.stop();
        self.stop.send_replace(true);
    }
}

impl Drop for LeaderElector {
    /// Steps down and lets the background task release the lease.
    fn drop(&mut self) {
        if self.task.is_some() {
            self.signal_stop();
        }
    }
}

/// Sleeps until `at`, or returns `true` early when stop is requested (or the handle
/// is gone).
async fn stopped_before(stop: &mut watch::Receiver<bool>, at: Instant) -> bool {
    let woken = tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        _ = tokio::time::sleep_until(at) => false,
    };
    woken || *stop.borrow()
}

/// How a renewal ended.
enum Renewal {
    Stopped,
    Answered(Result<Lease, Error>),
    DeadlineReached,
}

async fn run(
    fencer: Arc<dyn LeaseFencer>,
    config: ElectorConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut lease: Option<Lease> = None;
    // After a failed renewal, try again sooner than the renew interval.
    let mut renew_failed = false;
    while !*stop.borrow() {
        let Some(current) = lease.take() else {
            // Not cancelled by stop: see the type's docs.
            let wait = match fencer
                .acquire(&config.resource, &config.holder, config.ttl)
                .await
            {
                Ok(granted) => {
                    lease = Some(granted);
                    renew_failed = false;
                    continue;
                }
                Err(Error::Held {
                    holder,
                    token,
                    expires_in,
                    ..
                }) => {
                    shared.publish(Leadership::Follower {
                        reason: FollowerReason::HeldBy { holder, token },
                    });
                    config
                        .retry_interval
                        .min(expires_in + Duration::from_millis(1))
                }
                Err(error) => {
                    tracing::warn!(%error, resource = %config.resource, "campaign failed");
                    shared.publish(Leadership::Follower {
                        reason: FollowerReason::StoreUnavailable,
                    });
                    config.retry_interval
                }
            };
            if stopped_before(&mut stop, Instant::now() + config.jittered(wait)).await {
                break;
            }
            continue;
        };

        let deadline = current.deadline();
        let renew_at = if current.is_live() {
            shared.publish(Leadership::Leader {
                token: current.token(),
                deadline,
            });
            let interval = if renew_failed {
                config.renew_interval / 4
            } else {
                config.renew_interval
            };
            (Instant::now() + config.jittered(interval)).min(deadline)
        } else {
            // Granted or renewed too late to use: renew at once for a fresh deadline.
            Instant::now()
        };
        if stopped_before(&mut stop, renew_at).await {
            lease = Some(current);
            break;
        }
        let outcome = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => Renewal::Stopped,
            renewed = fencer.renew(&current) => Renewal::Answered(renewed),
            _ = tokio::time::sleep_until(deadline) => Renewal::DeadlineReached,
        };
        match outcome {
            Renewal::Stopped => {
                lease = Some(current);
                break;
            }
            Renewal::Answered(Ok(next)) => {
                lease = Some(next);
                renew_failed = false;
            }
            Renewal::Answered(Err(Error::LeaseLost { reason, .. })) => {
                tracing::warn!(resource = %config.resource, token = current.token(), %reason, "lease lost");
                shared.publish(Leadership::Follower {
                    reason: FollowerReason::LeaseLost(reason),
                });
                // Someone else most likely holds it now: campaign after the retry
                // interval, like any follower (and leave the notice up meanwhile).
                let wait = config.jittered(config.retry_interval);
                if stopped_before(&mut stop, Instant::now() + wait).await {
                    break;
                }
            }
            Renewal::Answered(Err(error)) => {
                tracing::warn!(%error, resource = %config.resource, "renewal failed; retrying until the deadline");
                lease = Some(current);
                renew_failed = true;
            }
            Renewal::DeadlineReached => {
                tracing::warn!(resource = %config.resource, token = current.token(), "no renewal before the local deadline; stepping down");
                shared.publish(Leadership::Follower {
                    reason: FollowerReason::DeadlineReached,
                });
            }
        }
    }
    // `stop` already published ShutDown; give the lease back.
    match lease {
        Some(held) => fencer.release(&held).await.inspect_err(|error| {
            tracing::warn!(%error, resource = %config.resource, "release on shutdown failed; the lease will expire");
        }),
        None => Ok(()),
    }
}
