//! Health model: component status, details, and a registry that aggregates
//! components into one readiness answer (the JSON body of a `/healthz` endpoint).
//!
//! ```
//! use tradepulse_failover_core::health::{ComponentHealth, ComponentStatus, HealthRegistry};
//! let registry = HealthRegistry::new();
//! registry.register_fn("kill_switch", || ComponentHealth::new("kill_switch", ComponentStatus::Operational));
//! let readiness = registry.readiness();
//! assert_eq!(readiness.status, ComponentStatus::Operational);
//! assert!(readiness.to_json().contains(r#""status":"operational""#));
//! ```

use crate::handle::lock;
use serde::{Serialize, Serializer};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// How a component is doing. Serialised lower-case: `operational | degraded | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentStatus {
    /// Working and fresh.
    Operational,
    /// Working on last known state; the last refresh failed (details say why).
    Degraded,
    /// Not usable: stale past its window, never loaded, or down.
    Failed,
}

impl ComponentStatus {
    /// The lower-case word used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operational => "operational",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ComponentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentHealth {
    /// Component name, e.g. `kill_switch`.
    pub name: String,
    /// Its status.
    pub status: ComponentStatus,
    /// Human-readable details, e.g. the last error ("connection refused").
    pub details: Option<String>,
    /// Wall-clock time of the last successful refresh (RFC 3339 in JSON).
    #[serde(serialize_with = "ser_opt_time")]
    pub last_success: Option<SystemTime>,
    /// Wall-clock time this answer was produced (RFC 3339 in JSON).
    #[serde(serialize_with = "ser_time")]
    pub checked_at: SystemTime,
    /// Whether changes arrive by push (a LISTEN connection that works) rather than
    /// by polling alone; `None` for a component without a change feed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<bool>,
}

impl ComponentHealth {
    /// A component answer checked now, without details.
    pub fn new(name: impl Into<String>, status: ComponentStatus) -> Self {
        Self {
            name: name.into(),
            status,
            details: None,
            last_success: None,
            checked_at: SystemTime::now(),
            push: None,
        }
    }

    /// With details.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// With the time of the last success.
    #[must_use]
    pub fn with_last_success(mut self, at: Option<SystemTime>) -> Self {
        self.last_success = at;
        self
    }
}

fn ser_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn ser_opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

/// Anything that can report its health.
pub trait HealthSource: Send + Sync + 'static {
    /// The current health. Must be cheap and must not block: it is called from
    /// readiness probes.
    fn health(&self) -> ComponentHealth;
}

struct FnSource<F>(F);

impl<F> HealthSource for FnSource<F>
where
    F: Fn() -> ComponentHealth + Send + Sync + 'static,
{
    fn health(&self) -> ComponentHealth {
        (self.0)()
    }
}

/// The aggregated readiness answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    /// The worst status of all components (`operational` when there are none).
    pub status: ComponentStatus,
    /// Every component, in registration order.
    pub components: Vec<ComponentHealth>,
}

impl Readiness {
    /// True when every component is operational or degraded (still serving).
    pub fn is_ready(&self) -> bool {
        self.status != ComponentStatus::Failed
    }

    /// The component with this name.
    pub fn component(&self, name: &str) -> Option<&ComponentHealth> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The JSON body for `/healthz`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("readiness always serialises")
    }
}

/// A registered component: its name and source.
type Named = (String, Arc<dyn HealthSource>);

/// A set of components whose worst status is the readiness answer. Cheap to clone.
#[derive(Clone, Default)]
pub struct HealthRegistry {
    sources: Arc<Mutex<Vec<Named>>>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = lock(&self.sources).iter().map(|(n, _)| n.clone()).collect();
        f.debug_struct("HealthRegistry")
            .field("components", &names)
            .finish()
    }
}

impl HealthRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces, by name) a component.
    pub fn register(&self, name: impl Into<String>, source: Arc<dyn HealthSource>) {
        let name = name.into();
        let mut sources = lock(&self.sources);
        match sources.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = source,
            None => sources.push((name, source)),
        }
    }

    /// Adds a component from a closure.
    pub fn register_fn<F>(&self, name: impl Into<String>, f: F)
    where
        F: Fn() -> ComponentHealth + Send + Sync + 'static,
    {
        self.register(name, Arc::new(FnSource(f)));
    }

    /// Asks every component and aggregates: the worst status wins.
    pub fn readiness(&self) -> Readiness {
        let sources: Vec<Arc<dyn HealthSource>> =
            lock(&self.sources).iter().map(|(_, s)| s.clone()).collect();
        let components: Vec<ComponentHealth> = sources.iter().map(|s| s.health()).collect();
        let status = components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(ComponentStatus::Operational);
        Readiness { status, components }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_component_decides_and_json_uses_lower_case_words() {
        let registry = HealthRegistry::new();
        registry.register_fn("a", || {
            ComponentHealth::new("a", ComponentStatus::Operational)
        });
        registry.register_fn("kill_switch", || {
            ComponentHealth::new("kill_switch", ComponentStatus::Degraded)
                .with_details("connection refused")
        });
        let r = registry.readiness();
        assert_eq!(r.status, ComponentStatus::Degraded);
        assert!(r.is_ready());
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["components"][1]["name"], "kill_switch");
        assert_eq!(json["components"][1]["details"], "connection refused");

        registry.register_fn("a", || ComponentHealth::new("a", ComponentStatus::Failed));
        let r = registry.readiness();
        assert_eq!(r.components.len(), 2, "re-registering replaces by name");
        assert_eq!(r.status, ComponentStatus::Failed);
        assert!(!r.is_ready());
    }
}
