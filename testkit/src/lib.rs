//! Throw-away PostgreSQL clusters for tests, and the shared PostgreSQL store suite of
//! the safety-controls crates ([`suite`]).
//!
//! A [`Cluster`] is a primary and optionally one streaming replica (asynchronous or
//! synchronous, optionally with TLS), built from the system's PostgreSQL binaries
//! ([`PgBinaries::discover`]) in a temporary directory, on free ports of 127.0.0.1, with
//! `trust` authentication for user `postgres`. Run as root, the servers run as the
//! `postgres` OS user. Dropping the cluster stops the servers and removes the directory.
//!
//! Each [`Node`] can suffer the faults the failover code must survive: `kill -9` of the
//! whole server ([`Node::kill9`]), immediate or fast shutdown, SIGSTOP/SIGCONT
//! ([`Node::freeze`], [`Node::thaw`]), termination of every client backend, turning
//! read-only like a demoted primary ([`Node::set_read_only`]), and promotion of the replica
//! ([`Node::promote`]). [`Cluster::create_database`] gives each test a fresh database.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tradepulse_testkit::TestkitError> {
//! use tradepulse_testkit::Cluster;
//!
//! let cluster = Cluster::start_with_replica().await?;
//! let db = cluster.create_database().await?;
//! cluster.primary().execute(&db, "CREATE TABLE t (x int)").await?;
//! cluster.primary().kill9().await?;
//! cluster.replica().expect("replica").promote().await?;
//! # Ok(()) }
//! ```

mod binaries;
mod cluster;
mod error;
mod fixtures;
mod held;
mod node;
mod pgbouncer;
mod process;
pub mod suite;
mod tls;

pub use binaries::PgBinaries;
pub use cluster::{Cluster, ClusterBuilder};
pub use error::TestkitError;
pub use fixtures::{fast_settings, own_primary, shared_primary, wait_until, wait_until_seeing};
pub use held::Held;
pub use node::Node;
pub use pgbouncer::{PgBouncer, PoolMode};
pub use tls::generate_ca_file;
