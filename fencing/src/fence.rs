//! Fenced writes in memory: the contract of PostgreSQL's `fencing_check`, for
//! resources that live in the process.

use crate::{check_name, check_token, Error};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The resource side of fencing, in memory: remembers the newest token each resource
/// has accepted and refuses a write carrying an older one.
///
/// Same contract as `tradepulse_fencing::postgres::fence`:
/// * a write with a token lower than the resource's highest is refused with
///   [`Error::FencingToken`] (code `FENCING_TOKEN`, naming the resource and both
///   tokens) and runs nothing;
/// * a write with a token equal to or above it runs, and once it succeeds the token
///   becomes the highest;
/// * a write that fails leaves the highest as it was (a rolled-back transaction);
/// * the check and the write are atomic: writes to one resource run one at a time.
///
/// ```
/// use tradepulse_fencing::{Error, MemoryFence};
/// let fence = MemoryFence::new();
/// let mut book = Vec::new();
/// fence.write("btc-usd", 42, || { book.push("new leader"); Ok::<_, Error>(()) }).unwrap();
/// let err = fence.write("btc-usd", 41, || { book.push("stale"); Ok::<_, Error>(()) }).unwrap_err();
/// assert_eq!(err.to_string(), "FENCING_TOKEN: token 41 is older than 42 for resource btc-usd");
/// assert_eq!(book, ["new leader"]);
/// ```
#[derive(Debug, Default)]
pub struct MemoryFence {
    resources: Mutex<HashMap<String, Arc<Mutex<u64>>>>,
}

impl MemoryFence {
    /// A fence that has seen no token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `write` if `token` is not older than the newest token `resource` has
    /// accepted, holding the resource's lock while it runs (keep it short and never
    /// block in it). On `Ok` the token becomes the resource's highest; on `Err` nothing
    /// changes.
    pub fn write<T, E: From<Error>>(
        &self,
        resource: &str,
        token: u64,
        write: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        check_name("resource", resource)?;
        check_token(token)?;
        let slot = {
            let mut resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
            // Allocate the key only the first time a resource is seen.
            match resources.get(resource) {
                Some(slot) => slot.clone(),
                None => resources.entry(resource.to_owned()).or_default().clone(),
            }
        };
        let mut highest = slot.lock().unwrap_or_else(|p| p.into_inner());
        if token < *highest {
            metrics::counter!("fencing_writes_refused_total").increment(1);
            return Err(Error::FencingToken {
                resource: resource.to_owned(),
                token,
                highest: *highest,
            }
            .into());
        }
        let value = write()?;
        *highest = token;
        Ok(value)
    }

    /// The newest token `resource` has accepted, if any.
    pub fn highest(&self, resource: &str) -> Option<u64> {
        let slot = self
            .resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(resource)
            .cloned()?;
        let highest = *slot.lock().unwrap_or_else(|p| p.into_inner());
        (highest > 0).then_some(highest)
    }
}
