//! Evidence files of a drill, archived under `reports/disaster-recovery/` with their
//! checksums so that an exercise can be shown later: `<UTC date>-<kind>.json`,
//! `<UTC date>-<kind>.md` and `<UTC date>-<kind>.sha256` (the two files' SHA-256 in
//! `sha256sum` format, so `sha256sum -c` verifies them). A second report of the same
//! kind on the same day gets a `-2`, `-3` … suffix: evidence is never overwritten.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The default evidence folder, relative to the working directory.
pub const DEFAULT_DIR: &str = "reports/disaster-recovery";

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The files written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The JSON report.
    pub json: PathBuf,
    /// The Markdown report.
    pub markdown: PathBuf,
    /// The checksum file.
    pub checksums: PathBuf,
    /// SHA-256 of the JSON report.
    pub json_sha256: String,
    /// SHA-256 of the Markdown report.
    pub markdown_sha256: String,
}

/// The UTC date `YYYY-MM-DD` of `at`.
pub fn utc_date(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
}

/// Writes the report pair and its checksum file into `dir` (created if missing).
pub fn write(
    dir: &Path,
    kind: &str,
    json: &serde_json::Value,
    markdown: &str,
) -> std::io::Result<Evidence> {
    std::fs::create_dir_all(dir)?;
    let date = utc_date(SystemTime::now());
    let mut stem = format!("{date}-{kind}");
    let mut n = 1;
    while dir.join(format!("{stem}.json")).exists() || dir.join(format!("{stem}.md")).exists() {
        n += 1;
        stem = format!("{date}-{kind}-{n}");
    }
    let json_text = serde_json::to_string_pretty(json).map_err(std::io::Error::other)? + "\n";
    let paths = (
        dir.join(format!("{stem}.json")),
        dir.join(format!("{stem}.md")),
        dir.join(format!("{stem}.sha256")),
    );
    std::fs::write(&paths.0, &json_text)?;
    std::fs::write(&paths.1, markdown)?;
    let (json_sha256, markdown_sha256) = (
        sha256_hex(json_text.as_bytes()),
        sha256_hex(markdown.as_bytes()),
    );
    std::fs::write(
        &paths.2,
        format!("{json_sha256}  {stem}.json\n{markdown_sha256}  {stem}.md\n"),
    )?;
    Ok(Evidence {
        json: paths.0,
        markdown: paths.1,
        checksums: paths.2,
        json_sha256,
        markdown_sha256,
    })
}
