//! The tamper-evident audit log: one Merkle tree (RFC 9162 hashing) over every
//! control's audit events, exports that verify offline, and signed checkpoints.
//!
//! The database appends each event's canonical entry ([`AuditRecord::canonical`],
//! encoding `tp-audit-v1`) to `audit_log` when the event is inserted and keeps the
//! tree's right edge in `audit_log_head`. An export (format [`EXPORT_FORMAT`]: a
//! header, an [`ExportLine`] per entry, then a [`TreeHead`]; written in batches by
//! `write_log`) carries each event's canonical entry as the event's row is now, and
//! the leaf hash recorded at append time: [`verify_export`] finds an event changed since
//! (`edited`), an entry removed (`missing`), entries moved (`reordered`) or a head that
//! does not match (`wrong root`). A [`Checkpoint`] signed with a key kept outside the
//! database ([`sign_note`], [`publish_checkpoint`]) pins a tree head: a later export
//! must extend it ([`check_extends`], [`consistency_proof`], [`verify_consistency`]).

mod entry;
mod export;
mod merkle;
mod note;
#[cfg(feature = "postgres")]
mod postgres;

pub use entry::{format_time, AuditRecord, ENCODING_VERSION};
pub use export::{
    header_line, hex, parse_hex, read_entries, verify_export, ExportLine, Finding, Problem,
    TreeHead, Verified, EXPORT_FORMAT,
};
pub use merkle::{
    consistency_proof, empty_root, leaf_hash, node_hash, root, verify_consistency, Hash,
    ProofError, RightEdge,
};
pub use note::{
    key_id, sign_note, signing_key_from_pem, verify_checkpoint, verifying_key_from_pem, Checkpoint,
    NoteError,
};
#[cfg(feature = "postgres")]
pub use postgres::{
    for_each_entry, publish_checkpoint, tree_head, write_log, CheckpointError, ExportError,
    EXPORT_BATCH,
};

/// How an export stands against a checkpoint it should extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotExtended {
    /// The export has fewer entries than the checkpoint.
    Shorter {
        /// The checkpoint's size.
        checkpoint: u64,
        /// The export's size.
        export: u64,
    },
    /// The export's first `size` entries hash to another root.
    Differs {
        /// The checkpoint's size.
        size: u64,
        /// The root the export's first `size` leaves hash to.
        found: Hash,
    },
}

impl std::fmt::Display for NotExtended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotExtended::Shorter { checkpoint, export } => write!(
                f,
                "the export does not extend the checkpoint: the checkpoint has {checkpoint} entries, the export only {export} (entries from index {export} on are gone, e.g. lost in a failover)"
            ),
            NotExtended::Differs { size, found } => write!(
                f,
                "the export does not extend the checkpoint: its first {size} entries hash to {}, not to the checkpoint's root (history was rewritten or lost)",
                hex(found)
            ),
        }
    }
}

/// Checks that the verified export extends `checkpoint`: the root of its first
/// `checkpoint.size` leaves is the checkpoint's root, and an RFC 9162 consistency
/// proof built from the leaves leads from the checkpoint's root to the export's.
pub fn check_extends(export: &Verified, checkpoint: &Checkpoint) -> Result<(), NotExtended> {
    let m = checkpoint.size;
    let n = export.head.size;
    if m > n {
        return Err(NotExtended::Shorter {
            checkpoint: m,
            export: n,
        });
    }
    let prefix = root(&export.leaves[..m as usize]);
    if prefix != checkpoint.root {
        return Err(NotExtended::Differs {
            size: m,
            found: prefix,
        });
    }
    let proof = consistency_proof(&export.leaves, m as usize).unwrap_or_default();
    verify_consistency(m, n, &checkpoint.root, &export.head.root, &proof).map_err(|_| {
        NotExtended::Differs {
            size: m,
            found: prefix,
        }
    })
}

/// The first index at which two exports' leaves differ, up to `limit` entries; `None`
/// when the first `limit` agree.
pub fn first_difference(old: &[Hash], new: &[Hash], limit: u64) -> Option<u64> {
    let limit = limit as usize;
    (0..limit.min(old.len()))
        .find(|&i| new.get(i) != Some(&old[i]))
        .map(|i| i as u64)
        .or_else(|| (old.len() < limit).then_some(old.len() as u64))
}

/// `# HELP` of the audit log's metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "audit_checkpoint_last_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time of the last signed checkpoint of the audit log; alert when it stops advancing."
    );
    metrics::describe_gauge!(
        "audit_checkpoint_size",
        "Tree size (entries) of the last signed checkpoint of the audit log."
    );
}
