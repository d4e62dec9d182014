//! How statements are sent: prepared once per connection and cached (the default),
//! or unnamed — parsed, bound and executed in one round trip — behind a transaction
//! pooler, where a prepared statement may live on another server connection. The
//! pool switches to unnamed statements by itself the first time the server says a
//! prepared statement is missing or exists already.

use super::{PgClient, PgPool};
use crate::errors::{DbError, DbErrorKind};
use crate::postgres::settings::StatementMode;
use std::sync::atomic::Ordering;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

/// A statement parameter with its PostgreSQL type, e.g. `(&id, Type::UUID)`: the type
/// lets the pool send the statement prepared or unnamed.
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// What a statement must return.
#[derive(Debug, Clone, Copy)]
enum Rows {
    All,
    One,
    AtMostOne,
    Count,
}

struct Output {
    rows: Vec<Row>,
    count: u64,
}

/// SQLSTATE 26000 (prepared statement does not exist) or 42P05 (already exists).
fn is_pooler_error(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("26000" | "42P05"))
}

/// Prepared once per connection (cached), then executed.
async fn prepared(
    client: &PgClient,
    sql: &str,
    types: &[Type],
    values: &[&(dyn ToSql + Sync)],
    want: Rows,
) -> Result<Output, tokio_postgres::Error> {
    let statement = client.prepare_typed_cached(sql, types).await?;
    if let Rows::Count = want {
        let count = client.execute(&statement, values).await?;
        return Ok(Output {
            rows: Vec::new(),
            count,
        });
    }
    let rows = client.query(&statement, values).await?;
    Ok(Output {
        count: rows.len() as u64,
        rows,
    })
}

/// Parsed, bound and executed unnamed in one round trip: nothing lives on the server
/// connection afterwards, so a transaction pooler may hand the next statement to
/// another one.
async fn unnamed(
    client: &PgClient,
    sql: &str,
    params: &[Param<'_>],
    want: Rows,
) -> Result<Output, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let stream = client
        .query_typed_raw(sql, params.iter().map(|(v, t)| (*v, t.clone())))
        .await?;
    futures_util::pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await? {
        rows.push(row);
    }
    let count = match want {
        Rows::Count => stream.rows_affected().unwrap_or(rows.len() as u64),
        _ => rows.len() as u64,
    };
    Ok(Output { rows, count })
}

impl PgPool {
    /// Runs `sql` under the retry policy and returns its rows. Parameters carry their
    /// types ([`Param`]), so the statement can be sent either way the pool runs:
    /// prepared once per connection and cached (the default), or — behind a
    /// transaction pooler such as pgbouncer in transaction mode, where a prepared
    /// statement may live on another server connection — unnamed, parsed and
    /// executed in one round trip ([`PgPool::unnamed_statements`]).
    pub async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        self.statement(op, sql, params, Rows::All)
            .await
            .map(|r| r.rows)
    }

    /// Like [`query`](Self::query), for exactly one row.
    pub async fn query_one(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Row, DbError> {
        let rows = self.statement(op, sql, params, Rows::One).await?.rows;
        rows.into_iter().next().ok_or_else(|| {
            DbError::new(
                DbErrorKind::Permanent,
                op,
                None,
                "the statement returned no row".into(),
            )
        })
    }

    /// Like [`query`](Self::query), for at most one row.
    pub async fn query_opt(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, DbError> {
        let rows = self.statement(op, sql, params, Rows::AtMostOne).await?.rows;
        Ok(rows.into_iter().next())
    }

    /// Like [`query`](Self::query), returning the number of rows affected.
    pub async fn execute(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<u64, DbError> {
        self.statement(op, sql, params, Rows::Count)
            .await
            .map(|r| r.count)
    }

    /// True once the pool sends unnamed statements: set by
    /// `…__STATEMENTS=unnamed`, or switched on by itself the first time the server
    /// says a prepared statement does not exist (or already exists) — the sign of a
    /// transaction pooler in between.
    pub fn unnamed_statements(&self) -> bool {
        self.inner.unnamed.load(Ordering::Relaxed)
            || self.inner.current.load().settings.statements() == StatementMode::Unnamed
    }

    /// Sends every later statement unnamed (see [`query`](Self::query)), unless the
    /// settings say `prepared`.
    pub fn use_unnamed_statements(&self) {
        self.switch_to_unnamed();
    }

    /// True when statements are now sent unnamed.
    fn switch_to_unnamed(&self) -> bool {
        if self.inner.current.load().settings.statements() == StatementMode::Prepared {
            return false;
        }
        if !self.inner.unnamed.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                component = self.inner.component,
                "prepared statements do not survive between transactions here (a transaction pooler?): sending unnamed statements from now on"
            );
        }
        true
    }

    async fn statement(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Param<'_>],
        want: Rows,
    ) -> Result<Output, DbError> {
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let (values, types) = (&values, &types);
        self.attempts(op, |client| {
            Box::pin(async move {
                let result = if self.unnamed_statements() {
                    unnamed(&client, sql, params, want).await
                } else {
                    match prepared(&client, sql, types, values, want).await {
                        // A prepared statement that is missing (or exists already) on
                        // the server connection: a transaction pooler in between.
                        // Switch to unnamed statements and send this one again.
                        Err(e) if is_pooler_error(&e) && self.switch_to_unnamed() => {
                            unnamed(&client, sql, params, want).await
                        }
                        other => other,
                    }
                };
                (client, result)
            })
        })
        .await
    }
}
