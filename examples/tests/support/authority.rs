//! The authority contract every control's admin routes answer, written once so that
//! the controls cannot drift apart:
//! * a supervisor's relaxation, decided on the `ETag` it read, racing a change held
//!   open in another transaction, waits on the row and is then refused naming that
//!   change; exactly one event more (the held one), nothing relaxed;
//! * a command sent again with its request id answers its original while it is the
//!   target's latest change (`Idempotent-Replayed: true`), is refused to another
//!   caller, and after a later change is 409 `superseded` naming it — never reported
//!   as in force, nothing written.
//!
//! Each control's test supplies its routes, bodies and the held SQL, and checks its
//! own state after each step.

use super::{assert_refused, Api, OPERATOR, SUPERVISOR};
use failover_core::postgres::tokio_postgres::{self, Client, NoTls};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;
use tradepulse_testkit::Held;

/// How long a held change waits for the request to queue behind it.
const WAIT: Duration = Duration::from_secs(10);

/// A request of a scenario: method, path and JSON body (without a request id; the
/// scenario adds one where it replays).
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: &'a str,
}

impl<'a> Call<'a> {
    pub fn post(path: &'a str, body: &'a str) -> Self {
        Self {
            method: Method::POST,
            path,
            body,
        }
    }

    pub fn put(path: &'a str, body: &'a str) -> Self {
        Self {
            method: Method::PUT,
            path,
            body,
        }
    }
}

/// The refusal a step must answer: status, error code, and what its message names.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    pub status: u16,
    pub code: &'a str,
    pub names: &'a str,
}

/// The replay scenario of one control (see
/// [`Control::replay_answers_the_original_only_while_in_force`]).
#[derive(Debug, Clone)]
pub struct Replay<'a> {
    /// The operator's tightening that is replayed.
    pub tighten: Call<'a>,
    /// An operator's change of another target, which must not supersede it.
    pub unrelated: Call<'a>,
    /// The supervisor's relaxation (with `If-Match`), also replayed.
    pub relax: Call<'a>,
    /// What the superseded tightening's refusal names: the relaxation.
    pub relax_supersedes: &'a str,
    /// A later tightening by the operator.
    pub tighten_again: Call<'a>,
    /// What the superseded relaxation's refusal names: the later tightening.
    pub tighten_supersedes: &'a str,
}

/// One control under test: the API, the route its state is read from (its `ETag` is
/// what a relaxation names), and its event table, counted from a session of its own
/// (as a DBA's psql would count it).
pub struct Control<'a> {
    pub api: &'a Api,
    pub state: &'a str,
    dsn: String,
    table: &'static str,
    observer: Client,
}

fn with_request_id(body: &str, id: uuid::Uuid) -> String {
    let mut body: Value = serde_json::from_str(body).expect("a JSON object body");
    body["request_id"] = Value::from(id.to_string());
    body.to_string()
}

impl<'a> Control<'a> {
    pub async fn new(api: &'a Api, dsn: &str, state: &'a str, table: &'static str) -> Self {
        let (observer, connection) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
        tokio::spawn(connection);
        Self {
            api,
            state,
            dsn: dsn.to_owned(),
            table,
            observer,
        }
    }

    /// How many events the control's table holds.
    pub async fn events(&self) -> i64 {
        self.observer
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Sends `call` as `token`, with extra headers: status, headers, body.
    async fn send(
        &self,
        call: &Call<'_>,
        body: &str,
        token: &str,
        headers: &[(&str, String)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.api
            .request(call.method.clone(), call.path, Some(body), token, headers)
            .await
    }

    /// A supervisor's relaxation, decided on the state's `ETag` read now, sent while
    /// `held` (another session's change) is open in its transaction: the change
    /// commits once the request waits on it, and the request must answer `refused`;
    /// exactly one event more, the held change's. The caller checks that nothing
    /// relaxed.
    pub async fn relaxation_racing_held_is_refused(
        &self,
        held: &str,
        relax: Call<'_>,
        refused: Refused<'_>,
    ) {
        let seen = self.api.etag(self.state).await;
        let before = self.events().await;
        let held = Held::begin(&self.dsn, held).await;
        let if_match = [("if-match", seen)];
        let request = self.send(&relax, relax.body, SUPERVISOR, &if_match);
        let ((status, _, body), ()) = tokio::join!(request, async {
            held.until_waited_on(WAIT).await;
            held.commit().await;
        });
        assert_refused(&(status, body), refused.status, refused.code, refused.names);
        assert_eq!(
            self.events().await,
            before + 1,
            "one event more: the held change's"
        );
    }

    /// The replay contract: `relaxed` checks the state after the relaxation (the
    /// replayed tightening must not be reported in force), `tightened_again` after
    /// the later tightening (the replayed relaxation relaxed nothing).
    pub async fn replay_answers_the_original_only_while_in_force(
        &self,
        r: Replay<'_>,
        relaxed: impl AsyncFn(),
        tightened_again: impl AsyncFn(),
    ) {
        let tighten = with_request_id(r.tighten.body, uuid::Uuid::new_v4());
        let (status, _, first) = self.send(&r.tighten, &tighten, OPERATOR, &[]).await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(first["replayed"], false, "{first}");
        let (status, _, body) = self
            .send(&r.unrelated, r.unrelated.body, OPERATOR, &[])
            .await;
        assert_eq!(status, 200, "{body}");
        let written = self.events().await;
        // While the tightening is the target's latest change, the replay answers it.
        let (status, headers, again) = self.send(&r.tighten, &tighten, OPERATOR, &[]).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["replayed"], true, "{again}");
        assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
        assert_eq!(again["position"], first["position"], "{again}");
        // Another caller with the same request id: refused.
        let (status, _, body) = self.send(&r.tighten, &tighten, SUPERVISOR, &[]).await;
        assert_refused(&(status, body), 409, "request_reused", "ops:alice");
        assert_eq!(self.events().await, written, "nothing written");

        // A supervisor relaxes; the replayed tightening is no longer in force.
        let relax = with_request_id(r.relax.body, uuid::Uuid::new_v4());
        let seen = self.api.etag(self.state).await;
        let if_match = [("if-match", seen)];
        let (status, _, body) = self.send(&r.relax, &relax, SUPERVISOR, &if_match).await;
        assert_eq!(status, 200, "{body}");
        let written = self.events().await;
        let (status, headers, body) = self.send(&r.tighten, &tighten, OPERATOR, &[]).await;
        assert_refused(&(status, body), 409, "superseded", r.relax_supersedes);
        assert!(headers.get("idempotent-replayed").is_none());
        relaxed().await;
        assert_eq!(self.events().await, written, "nothing written");

        // And the other way: after a later tightening, the replayed relaxation
        // relaxes nothing.
        let (status, _, body) = self
            .send(&r.tighten_again, r.tighten_again.body, OPERATOR, &[])
            .await;
        assert_eq!(status, 200, "{body}");
        let written = self.events().await;
        let (status, headers, body) = self.send(&r.relax, &relax, SUPERVISOR, &if_match).await;
        assert_refused(&(status, body), 409, "superseded", r.tighten_supersedes);
        assert!(headers.get("idempotent-replayed").is_none());
        tightened_again().await;
        assert_eq!(self.events().await, written, "nothing written");
    }
}
