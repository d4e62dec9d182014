//! The in-memory lease store and fence run the whole conformance suites.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tradepulse_fencing::conformance::FencedLog;
use tradepulse_fencing::{Error, LeaseFencer, MemoryFence, MemoryLeaseFencer};

async fn setup() -> (Arc<dyn LeaseFencer>, ()) {
    (Arc::new(MemoryLeaseFencer::new()), ())
}

tradepulse_fencing::conformance_tests!(setup);

/// A log in memory whose appends go through a `MemoryFence`.
#[derive(Default)]
struct MemoryLog {
    fence: MemoryFence,
    entries: Mutex<HashMap<String, Vec<(u64, String)>>>,
}

/// Why a fenced write did not happen.
enum Refused {
    Fence(Error),
    Aborted,
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Self::Fence(e)
    }
}

#[async_trait::async_trait]
impl FencedLog for MemoryLog {
    async fn append(&self, resource: &str, token: u64, entry: &str) -> Result<(), Error> {
        self.fence.write(resource, token, || {
            let mut entries = self.entries.lock().unwrap();
            entries
                .entry(resource.to_owned())
                .or_default()
                .push((token, entry.to_owned()));
            Ok(())
        })
    }

    async fn append_then_abort(
        &self,
        resource: &str,
        token: u64,
        _entry: &str,
    ) -> Result<(), Error> {
        match self
            .fence
            .write(resource, token, || Err::<(), _>(Refused::Aborted))
        {
            Err(Refused::Aborted) => Ok(()),
            Err(Refused::Fence(e)) => Err(e),
            Ok(()) => unreachable!("the write aborts"),
        }
    }

    async fn entries(&self, resource: &str) -> Vec<(u64, String)> {
        self.entries
            .lock()
            .unwrap()
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }
}

async fn log_setup() -> (Arc<dyn FencedLog>, ()) {
    (Arc::new(MemoryLog::default()), ())
}

tradepulse_fencing::fence_conformance_tests!(log_setup);
