//! `safetyctl audit export --format jsonl`, `audit verify` and `audit checkpoint`: the
//! tamper-evident audit log exported with its leaf hashes and tree head, verified
//! offline (no database), and pinned by signed checkpoints kept outside the database.
//! The work is `failover_core::audit_log`'s; this is the command line around it.

use crate::cli::Failure;
use failover_core::audit_log::{
    self, check_extends, first_difference, hex, read_entries, signing_key_from_pem,
    verify_checkpoint, verify_export, verifying_key_from_pem, Checkpoint, ExportLine, NotExtended,
    Verified,
};
use failover_core::postgres::PgPool;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Exit code of `audit verify` when the export or the checkpoint does not verify.
pub const EXIT_VERIFY_FAILED: i32 = 5;

/// A progress bar with rate and ETA on stderr when it is a terminal and the output is
/// for people (no `--json`, no `--quiet`); hidden otherwise.
pub fn progress_bar(total: u64, unit: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = if unit == "bytes" {
        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
    } else if unit == "steps" {
        "{bar:40} {pos}/{len} steps, {elapsed} so far, ETA {eta}"
    } else {
        "{bar:40} {human_pos}/{human_len} entries {per_sec} ETA {eta}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn failed(message: String) -> Failure {
    Failure {
        code: crate::cli::EXIT_FAILED,
        message,
    }
}

fn refused(message: String) -> Failure {
    Failure {
        code: crate::cli::EXIT_REFUSED,
        message,
    }
}

fn verify_failed(message: String) -> Failure {
    Failure {
        code: EXIT_VERIFY_FAILED,
        message,
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where an export is written, with the SHA-256 of the bytes written. A regular file
/// (or a name not yet taken) is written beside its name as a hidden `.NAME.partial` and
/// renamed over it by [`finish`](Self::finish) once complete, so a failed export
/// leaves no partial file under the name, and dropping an unfinished target removes
/// the partial file; a device or pipe (`/dev/null`, a FIFO) is written to directly,
/// never replaced by a rename; without a path, stdout.
pub(crate) struct ExportTarget {
    writer: Hashing<std::io::BufWriter<Box<dyn Write + Send>>>,
    /// The partial file and the name it is renamed to, while unfinished.
    partial: Option<(PathBuf, PathBuf)>,
    /// The output's name as printed: the path, or `-` for stdout.
    pub(crate) name: String,
}

impl ExportTarget {
    /// Opens `out` (stdout when `None`); `default_name` names the partial file of a
    /// path without a file name.
    pub(crate) fn open(out: Option<&Path>, default_name: &str) -> Result<Self, Failure> {
        let unwritable = |path: &Path, e: std::io::Error| {
            failed(format!(
                "writing {}: {e}; give a writable --out path",
                path.display()
            ))
        };
        let (inner, partial): (Box<dyn Write + Send>, _) = match out {
            None => (Box::new(std::io::stdout()), None),
            Some(path) if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| unwritable(path, e))?;
                (Box::new(file), None)
            }
            Some(path) => {
                let partial = path.with_file_name(format!(
                    ".{}.partial",
                    path.file_name()
                        .map_or(default_name.into(), |n| n.to_string_lossy())
                ));
                let file = std::fs::File::create(&partial).map_err(|e| unwritable(&partial, e))?;
                (Box::new(file), Some((partial, path.to_path_buf())))
            }
        };
        Ok(Self {
            writer: Hashing {
                inner: std::io::BufWriter::with_capacity(1 << 20, inner),
                sha: Sha256::new(),
            },
            partial,
            name: out.map_or("-".to_owned(), |p| p.display().to_string()),
        })
    }

    /// The writer: what passes through it is hashed.
    pub(crate) fn writer(&mut self) -> &mut impl Write {
        &mut self.writer
    }

    /// Flushes, renames a partial file over its name, and returns the SHA-256 (hex) of
    /// the bytes written.
    pub(crate) fn finish(mut self) -> Result<String, Failure> {
        self.writer.flush().map_err(|e| {
            failed(format!(
                "writing {}: {e}; give a writable --out path",
                self.name
            ))
        })?;
        if let Some((partial, path)) = self.partial.take() {
            if let Err(e) = std::fs::rename(&partial, &path) {
                let _ = std::fs::remove_file(&partial);
                return Err(failed(format!(
                    "renaming {} to {}: {e}; give a writable --out path",
                    partial.display(),
                    path.display()
                )));
            }
        }
        Ok(hex(&std::mem::take(&mut self.writer.sha).finalize()))
    }
}

impl Drop for ExportTarget {
    fn drop(&mut self) {
        if let Some((partial, _)) = self.partial.take() {
            let _ = std::fs::remove_file(partial);
        }
    }
}

/// Writes the log export (the header, one line per entry, then the tree head) to
/// `out` or stdout as it is read, batch by batch, through an `ExportTarget`, and
/// prints its SHA-256 like the CSV export. `controls` are those configured (the log
/// holds every control whose events live in the database).
pub async fn export_log(
    pool: &PgPool,
    controls: &[&str],
    json: bool,
    quiet: bool,
    out: Option<PathBuf>,
) -> Result<(), Failure> {
    let bar = progress_bar(0, "entries", quiet || json);
    let progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let mut target = ExportTarget::open(out.as_deref(), "audit.jsonl")?;
    let head = audit_log::write_log(pool, target.writer(), progress)
        .await
        .map_err(|e| failed(format!("exporting the audit log: {e}")))?;
    let target_name = target.name.clone();
    let sha256 = target.finish()?;
    bar.finish_and_clear();
    let target = target_name;
    let n = head.size;
    let root = hex(&head.root);
    if out.is_none() {
        eprintln!("sha256 {sha256}  {target}  ({n} entries, root {root})");
    } else if json {
        println!(
            "{}",
            serde_json::json!({"sha256": sha256, "entries": n, "events": n, "root": root, "controls": controls, "out": target})
        );
    } else {
        println!("sha256 {sha256}  {target}  ({n} entries, root {root}; `safetyctl audit verify {target}` checks it)");
    }
    Ok(())
}

fn open(path: &Path, what: &str) -> Result<(BufReader<std::fs::File>, u64), Failure> {
    let file = std::fs::File::open(path).map_err(|e| {
        refused(format!(
            "reading {what} {}: {e}; give a readable file",
            path.display()
        ))
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((BufReader::with_capacity(1 << 20, file), len))
}

fn read_to_string(path: &Path, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        refused(format!(
            "reading {what} {}: {e}; give a readable file",
            path.display()
        ))
    })
}

fn verify_file(path: &Path, quiet: bool) -> Result<Verified, Failure> {
    let (reader, len) = open(path, "the export")?;
    let bar = progress_bar(len, "bytes", quiet);
    let verified = verify_export(reader, |done| bar.set_position(done));
    bar.finish_and_clear();
    verified.map_err(|f| verify_failed(format!("{} does not verify: {f}", path.display())))
}

/// What `audit verify` checks besides the export itself.
#[derive(Debug, Default)]
pub struct VerifyArgs {
    /// A signed checkpoint the export must extend.
    pub checkpoint: Option<PathBuf>,
    /// The public key the checkpoint must be signed by.
    pub public_key: Option<PathBuf>,
    /// An export taken with or before the checkpoint, to name what a new export lacks.
    pub previous: Option<PathBuf>,
}

/// `safetyctl audit verify FILE`: no database involved.
pub fn verify(file: &Path, args: VerifyArgs, json: bool, quiet: bool) -> Result<(), Failure> {
    let checkpoint = match (&args.checkpoint, &args.public_key) {
        (Some(note), Some(key)) => {
            let key = verifying_key_from_pem(&read_to_string(key, "the public key")?)
                .map_err(|e| refused(format!("{}: {e}", key.display())))?;
            let text = read_to_string(note, "the checkpoint")?;
            Some(verify_checkpoint(&text, &key).map_err(|e| {
                verify_failed(format!("checkpoint {} refused: {e}", note.display()))
            })?)
        }
        (None, None) => None,
        _ => {
            return Err(refused(
                "--checkpoint and --public-key go together: give both, or neither".into(),
            ))
        }
    };
    let verified = verify_file(file, quiet || json)?;
    let root = hex(&verified.head.root);
    let n = verified.head.size;
    let mut text = format!("ok: {n} entries, root {root}");
    let mut value = serde_json::json!({"ok": true, "entries": n, "root": root});
    if let Some(cp) = &checkpoint {
        if let Err(not) = check_extends(&verified, cp) {
            return Err(verify_failed(not_extended(
                file, cp, &verified, &not, &args,
            )?));
        }
        text.push_str(&format!(
            "\nextends checkpoint {} of {} entries (root {})",
            cp.origin,
            cp.size,
            hex(&cp.root)
        ));
        value["checkpoint"] =
            serde_json::json!({"origin": cp.origin, "size": cp.size, "root": hex(&cp.root)});
    }
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Says how `file` fails to extend `cp`; with `--previous`, the first index at which
/// they differ and the checkpointed entries the new export lacks.
fn not_extended(
    file: &Path,
    cp: &Checkpoint,
    new: &Verified,
    not: &NotExtended,
    args: &VerifyArgs,
) -> Result<String, Failure> {
    let mut message = format!(
        "{} does not verify against checkpoint {} ({} entries): {not}",
        file.display(),
        cp.origin,
        cp.size
    );
    let Some(previous) = &args.previous else {
        message.push_str("; give --previous OLD-export.jsonl (taken with or before the checkpoint) to name the first differing index and the entries lost");
        return Ok(message);
    };
    let old = verify_file(previous, true)?;
    if check_extends(&old, cp).is_err() {
        message.push_str(&format!(
            "; the previous export {} does not match the checkpoint either, so it cannot name what was lost",
            previous.display()
        ));
        return Ok(message);
    }
    let Some(first) = first_difference(&old.leaves, &new.leaves, cp.size) else {
        return Ok(message);
    };
    message.push_str(&format!("; first differing index {first}"));
    let (reader, _) = open(file, "the export")?;
    // An entry is present when the new export holds the same entry (its leaf hash),
    // at whatever index: the same position with other content is another event.
    let present: HashSet<String> = read_entries(reader)
        .map_err(|f| verify_failed(f.to_string()))?
        .into_iter()
        .map(|l| l.leaf)
        .collect();
    let (reader, _) = open(previous, "the previous export")?;
    let lost: Vec<ExportLine> = read_entries(reader)
        .map_err(|f| verify_failed(f.to_string()))?
        .into_iter()
        .filter(|l| l.index >= first && l.index < cp.size)
        .filter(|l| !present.contains(&l.leaf))
        .collect();
    if !lost.is_empty() {
        message.push_str(&format!(
            "; {} checkpointed entr{} missing from the new export:",
            lost.len(),
            if lost.len() == 1 { "y is" } else { "ies are" }
        ));
        for l in lost.iter().take(50) {
            match &l.record {
                Some(r) => message.push_str(&format!(
                    "\n  index {} {} {} by {} at {} (position {})",
                    l.index, r.control, r.action, r.actor, r.at, r.position
                )),
                None => message.push_str(&format!(
                    "\n  index {} {} position {} (its event row was gone when that export was taken)",
                    l.index, l.control, l.position
                )),
            }
        }
        if lost.len() > 50 {
            message.push_str(&format!("\n  … and {} more", lost.len() - 50));
        }
    }
    Ok(message)
}

/// `safetyctl audit checkpoint`: the current tree head as a signed note.
pub async fn checkpoint(
    pool: &PgPool,
    key: &Path,
    out: Option<PathBuf>,
    origin: Option<String>,
    key_name: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let signing = signing_key_from_pem(&read_to_string(key, "the private key")?)
        .map_err(|e| refused(format!("{}: {e}", key.display())))?;
    let origin = match origin {
        Some(o) => o,
        None => {
            let db: String = pool
                .query_one(
                    "audit.checkpoint.origin",
                    "SELECT current_database()::TEXT",
                    &[],
                )
                .await
                .map_err(|e| failed(format!("reading the database name: {e}")))?
                .get(0);
            let host = pool.current_host().unwrap_or_else(|| "localhost".into());
            format!("tradepulse/{host}/{db}")
        }
    };
    let key_name = key_name.unwrap_or_else(|| origin.clone());
    let note = audit_log::publish_checkpoint(pool, &origin, &key_name, &signing)
        .await
        .map_err(|e| failed(format!("{e}")))?;
    let cp =
        failover_core::audit_log::Checkpoint::parse(&note).map_err(|e| failed(e.to_string()))?;
    match &out {
        Some(path) => {
            std::fs::write(path, &note).map_err(|e| {
                failed(format!(
                    "writing {}: {e}; give a writable --out path",
                    path.display()
                ))
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"origin": cp.origin, "size": cp.size, "root": hex(&cp.root), "out": path.display().to_string()})
                );
            } else {
                println!(
                    "checkpoint {} at {} entries (root {}) written to {}; keep it outside the database",
                    cp.origin,
                    cp.size,
                    hex(&cp.root),
                    path.display()
                );
            }
        }
        None => print!("{note}"),
    }
    Ok(())
}
