//! Locating the PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::TestkitError;

/// The programs a cluster needs.
const REQUIRED: [&str; 4] = ["initdb", "postgres", "pg_ctl", "pg_basebackup"];

/// Debian's layout: one directory per major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Where the PostgreSQL server binaries (`initdb`, `postgres`, `pg_ctl`, `pg_basebackup`) are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    bindir: PathBuf,
}

impl PgBinaries {
    /// Finds initdb/postgres/pg_ctl/pg_basebackup: env `PG_BIN`, then `pg_config --bindir`,
    /// then the highest `/usr/lib/postgresql/*/bin`.
    ///
    /// When none is found: [`TestkitError::BinariesMissing`], whose message says to install
    /// Debian's `postgresql` package (`apt-get install -y postgresql`) or set `PG_BIN`.
    pub fn discover() -> Result<Self, TestkitError> {
        let mut searched = Vec::new();

        if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            if has_all(&dir) {
                return Ok(Self { bindir: dir });
            }
            searched.push(format!("PG_BIN={}", dir.display()));
        } else {
            searched.push("PG_BIN (unset)".to_owned());
        }

        match pg_config_bindir() {
            Some(dir) if has_all(&dir) => return Ok(Self { bindir: dir }),
            Some(dir) => searched.push(format!("pg_config --bindir={}", dir.display())),
            None => searched.push("pg_config (not found)".to_owned()),
        }

        for dir in debian_bindirs() {
            if has_all(&dir) {
                return Ok(Self { bindir: dir });
            }
        }
        searched.push(format!("{DEBIAN_ROOT}/*/bin"));

        Err(TestkitError::BinariesMissing {
            searched: searched.join(", "),
        })
    }

    /// Uses the binaries in `dir`, checking that all four programs are there.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self, TestkitError> {
        let dir = dir.into();
        if has_all(&dir) {
            Ok(Self { bindir: dir })
        } else {
            Err(TestkitError::BinariesMissing {
                searched: dir.display().to_string(),
            })
        }
    }

    /// The directory holding the binaries.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The full path of one program in [`bindir`](Self::bindir), e.g. `"psql"`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn has_all(dir: &Path) -> bool {
    REQUIRED.iter().all(|p| dir.join(p).is_file())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// `/usr/lib/postgresql/*/bin`, highest version first.
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(DEBIAN_ROOT) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_name_the_package_and_pg_bin() {
        let empty = tempfile::tempdir().expect("tempdir");
        let err = PgBinaries::from_dir(empty.path()).expect_err("no binaries there");
        assert!(matches!(err, TestkitError::BinariesMissing { .. }));
        let message = err.to_string();
        assert!(
            message.contains("apt-get install -y postgresql"),
            "{message}"
        );
        assert!(message.contains("PG_BIN"), "{message}");
    }

    #[test]
    fn a_found_directory_holds_every_program() {
        // Only meaningful where PostgreSQL is installed; elsewhere discovery must say so.
        match PgBinaries::discover() {
            Ok(found) => assert!(REQUIRED.iter().all(|p| found.program(p).is_file())),
            Err(e) => assert!(matches!(e, TestkitError::BinariesMissing { .. })),
        }
    }
}
