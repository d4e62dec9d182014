//! The testkit's error type.

/// Everything that can go wrong while building, faulting or querying a throw-away cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// The PostgreSQL server binaries could not be found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl, pg_basebackup) not found \
         (looked in: {searched}); install Debian's `postgresql` package \
         (apt-get install -y postgresql) or set PG_BIN to the directory that holds them"
    )]
    BinariesMissing {
        /// The places that were searched, in order.
        searched: String,
    },
    /// A file-system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external command (initdb, pg_ctl, pg_basebackup, the server itself) failed.
    #[error("{what} failed: {output}")]
    Command {
        /// What was being run.
        what: String,
        /// Its exit status and output, or the tail of the server log.
        output: String,
    },
    /// A bounded wait ran out of time.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
    },
    /// A connection or a query failed.
    #[error("{what}: {}", failover_core::postgres::describe_error(source))]
    Postgres {
        /// What was being done.
        what: String,
        /// The driver's error (carries the SQLSTATE for a server error).
        #[source]
        source: tokio_postgres::Error,
    },
    /// Generating a TLS certificate failed.
    #[error("generating a TLS certificate: {source}")]
    Certificate {
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The environment or the cluster is not in a usable state (missing OS user, node not
    /// running, unexpected answer from the server, ...).
    #[error("{message}")]
    Setup {
        /// What is wrong.
        message: String,
    },
}

impl TestkitError {
    /// The SQLSTATE of a server error (e.g. `"25006"` for a write in a read-only
    /// transaction), when this error carries one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Postgres { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn setup(message: impl Into<String>) -> Self {
        Self::Setup {
            message: message.into(),
        }
    }

    pub(crate) fn pg(what: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Self::Postgres {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn timeout(what: impl Into<String>) -> Self {
        Self::Timeout { what: what.into() }
    }
}
