//! The fenced-write contract: first, equal and newer tokens pass the fence; an older
//! token is refused naming both; an aborted write leaves no trace; resources are
//! independent; invalid input is refused; concurrent writers never regress.

use crate::Error;
use std::sync::Arc;

/// A fenced resource as the fence suite sees it: an append-only log per resource
/// whose appends are fenced writes (memory: [`MemoryFence::write`](crate::MemoryFence::write);
/// PostgreSQL: [`fence`](crate::postgres::fence) and an INSERT in one transaction).
#[async_trait::async_trait]
pub trait FencedLog: Send + Sync + 'static {
    /// Appends `entry` under `token` as one fenced write.
    async fn append(&self, resource: &str, token: u64, entry: &str) -> Result<(), Error>;
    /// Passes the fence with `token`, writes `entry`, then abandons the write (rolls
    /// the transaction back).
    async fn append_then_abort(&self, resource: &str, token: u64, entry: &str)
        -> Result<(), Error>;
    /// The log of `resource`, oldest first, with the token of each entry.
    async fn entries(&self, resource: &str) -> Vec<(u64, String)>;
}

fn tokens_of(entries: &[(u64, String)]) -> Vec<u64> {
    entries.iter().map(|(t, _)| *t).collect()
}

/// The first token, the same token again and newer tokens are all accepted.
pub async fn fence_accepts_first_equal_and_newer_tokens(log: &dyn FencedLog) {
    for (token, entry) in [
        (5, "first"),
        (5, "same leader"),
        (9, "newer leader"),
        (9, "again"),
    ] {
        log.append("btc-usd", token, entry).await.expect("accepted");
    }
    let entries = log.entries("btc-usd").await;
    assert_eq!(tokens_of(&entries), [5, 5, 9, 9]);
    assert_eq!(entries[2].1, "newer leader");
}

/// A token older than the resource's highest is refused with `FENCING_TOKEN`, naming
/// the resource and both tokens; the write does not happen.
pub async fn fence_refuses_an_older_token_naming_both(log: &dyn FencedLog) {
    log.append("btc-usd", 42, "leader").await.expect("accepted");
    let err = log
        .append("btc-usd", 41, "stale leader")
        .await
        .expect_err("stale token");
    match &err {
        Error::FencingToken {
            resource,
            token,
            highest,
        } => {
            assert_eq!((resource.as_str(), *token, *highest), ("btc-usd", 41, 42));
        }
        other => panic!("expected FencingToken, got {other:?}"),
    }
    assert_eq!(err.code(), Some(crate::FENCING_TOKEN));
    assert_eq!(
        err.to_string(),
        "FENCING_TOKEN: token 41 is older than 42 for resource btc-usd"
    );
    assert_eq!(tokens_of(&log.entries("btc-usd").await), [42]);
    log.append("btc-usd", 42, "leader goes on")
        .await
        .expect("the current leader is unaffected");
}

/// A write abandoned after passing the fence leaves no trace: the highest token stays
/// where it was.
pub async fn fence_aborted_write_leaves_no_trace(log: &dyn FencedLog) {
    log.append("btc-usd", 10, "ten").await.expect("accepted");
    log.append_then_abort("btc-usd", 50, "abandoned")
        .await
        .expect("passes the fence, then rolls back");
    log.append("btc-usd", 20, "twenty")
        .await
        .expect("50 was never recorded");
    assert_eq!(tokens_of(&log.entries("btc-usd").await), [10, 20]);
}

/// Resources are fenced independently.
pub async fn fence_resources_are_independent(log: &dyn FencedLog) {
    log.append("btc-usd", 100, "btc").await.expect("accepted");
    log.append("eth-usd", 3, "eth")
        .await
        .expect("another resource");
    assert!(matches!(
        log.append("eth-usd", 2, "eth stale").await,
        Err(Error::FencingToken { highest: 3, .. })
    ));
    assert_eq!(tokens_of(&log.entries("btc-usd").await), [100]);
    assert_eq!(tokens_of(&log.entries("eth-usd").await), [3]);
}

/// A bad resource name or a token no store issues (0, above `i64::MAX`) is `Invalid`
/// and writes nothing.
pub async fn fence_invalid_input_is_refused(log: &dyn FencedLog) {
    for (resource, token, what) in [
        ("", 1, "resource"),
        ("btc-usd\n", 1, "resource"),
        ("btc-usd", 0, "token"),
        ("btc-usd", u64::MAX, "token"),
    ] {
        let err = log
            .append(resource, token, "bad")
            .await
            .expect_err("invalid");
        assert!(
            matches!(err, Error::Invalid { what: w, .. } if w == what),
            "{err:?}"
        );
    }
    assert!(log.entries("btc-usd").await.is_empty());
}

/// 24 writers with tokens 1..=24 racing: the log never goes back to an older token,
/// the newest token always gets in, and every refusal names a token that was in.
pub async fn fence_concurrent_writers_never_regress(log: Arc<dyn FencedLog>) {
    let tasks: Vec<_> = (1..=24u64)
        .rev()
        .map(|token| {
            let log = log.clone();
            tokio::spawn(async move {
                (
                    token,
                    log.append("btc-usd", token, &format!("w{token}")).await,
                )
            })
        })
        .collect();
    let mut refusals = Vec::new();
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("task") {
            (_, Ok(())) => accepted += 1,
            (token, Err(Error::FencingToken { highest, .. })) => {
                assert!(highest > token);
                refusals.push(highest);
            }
            (_, Err(other)) => panic!("unexpected {other:?}"),
        }
    }
    let tokens = tokens_of(&log.entries("btc-usd").await);
    assert_eq!(tokens.len(), accepted);
    assert!(tokens.windows(2).all(|w| w[0] <= w[1]), "{tokens:?}");
    assert!(tokens.contains(&24));
    assert!(refusals.iter().all(|h| tokens.contains(h)));
}

/// Expands into one named `#[tokio::test]` per behaviour of the fenced-write contract.
///
/// `$setup` is an async fn returning `(Arc<dyn FencedLog>, guard)`.
#[macro_export]
macro_rules! fence_conformance_tests {
    ($setup:path) => {
        $crate::fence_conformance_tests!(@tests $setup;
            fence_accepts_first_equal_and_newer_tokens,
            fence_refuses_an_older_token_naming_both,
            fence_aborted_write_leaves_no_trace,
            fence_resources_are_independent,
            fence_invalid_input_is_refused,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn fence_concurrent_writers_never_regress() {
            let (log, _guard) = $setup().await;
            $crate::conformance::fence_concurrent_writers_never_regress(log).await;
        }
    };
    (@tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (log, _guard) = $setup().await;
                $crate::conformance::$name(&*log).await;
            }
        )*
    };
}
