//! The admin API under abuse, on real loopback servers: failed authentication is
//! throttled per client address (429 with `Retry-After`, other addresses unaffected,
//! counted in `/metrics`), a client trickling its headers is disconnected, a body that
//! does not arrive in time is answered 408, oversized bodies 413, bodies that are not
//! JSON 415, and line/paragraph separators in an audit reason 422.

use axum::Router;
use failover_core::http::auth::token_sha256_hex;
use failover_core::http::{serve, Authenticator, ServeLimits};
use failover_core::HealthRegistry;
use fencing::LeaseFencer;
use killswitch::{KillSwitch, KillSwitchConfig, KillSwitchStore, MemoryKillSwitchStore};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use symbol_mode::{MemorySymbolModeStore, SymbolModeStore, SymbolModes, SymbolModesConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tradepulse_examples::admin_http::{prometheus, router, AdminState, EXPIRY_SWEEP};

const VIEWER: &str = "viewer-token-abuse";
const OPERATOR: &str = "operator-token-abuse";

const CLIENT_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const CLIENT_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn authenticator() -> Authenticator {
    Authenticator::from_text(&format!(
        "viewer ops:carol {}\noperator ops:alice {}",
        token_sha256_hex(VIEWER),
        token_sha256_hex(OPERATOR)
    ))
}

/// The example's router over in-memory stores.
fn app(auth: Authenticator) -> (Router, Arc<dyn KillSwitchStore>) {
    let prometheus = prometheus();
    let kill_store: Arc<dyn KillSwitchStore> = Arc::new(MemoryKillSwitchStore::new());
    let kill_switch = KillSwitch::spawn(kill_store.clone(), KillSwitchConfig::default());
    let mode_store: Arc<dyn SymbolModeStore> = Arc::new(MemorySymbolModeStore::new());
    let modes = SymbolModes::spawn(mode_store.clone(), SymbolModesConfig::default());
    let health = HealthRegistry::new();
    health.register(killswitch::HEALTH_COMPONENT, kill_switch.health_source());
    health.register(symbol_mode::HEALTH_COMPONENT, modes.health_source());
    let fencer: Arc<dyn LeaseFencer> = Arc::new(fencing::MemoryLeaseFencer::new());
    let app = router(AdminState {
        kill_store: kill_store.clone(),
        kill_switch,
        mode_store,
        modes,
        leases: Some((fencer, None)),
        health,
        prometheus,
        auth,
        pools: Vec::new(),
        expiry_sweep: EXPIRY_SWEEP,
    });
    (app, kill_store)
}

struct Server {
    addr: SocketAddr,
    base: String,
    kill_store: Arc<dyn KillSwitchStore>,
    _task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The example's app served by `failover_core::http::serve` on a loopback port.
async fn start(limits: ServeLimits) -> Server {
    let (app, kill_store) = app(authenticator());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, app, limits));
    Server {
        addr,
        base: format!("http://{addr}"),
        kill_store,
        _task: task,
    }
}

/// A client whose connections come from `from`.
fn client(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    client.get(url).bearer_auth(token).send().await.unwrap()
}

/// Sends `head` (and then `body` from another task, so that an early answer is read
/// while the body is still being written) on a raw connection and returns the status
/// line and the rest of what the server sent before closing.
async fn raw_exchange(addr: SocketAddr, head: String, body: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            write.write_all(chunk).await?;
        }
        write.flush().await?;
        // Keep the write half open: the server decides when the exchange ends.
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, std::io::Error>(())
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let read_all = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the server neither answered nor closed the connection within 20 s");
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

fn json_of(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_throttled_per_client_address_and_counted() {
    let server = start(ServeLimits::default()).await;
    let (a, b) = (client(CLIENT_A), client(CLIENT_B));
    let state = format!("{}/admin/kill-switch", server.base);

    // 100 wrong tokens from 127.0.0.1: the first 20 (the burst) are 401, and from the
    // 21st on the address is throttled (one more failure is allowed every 3 s).
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..100 {
        statuses.push(
            get(&a, &state, &format!("wrong-{i}"))
                .await
                .status()
                .as_u16(),
        );
    }
    let spent = started.elapsed();
    assert!(
        statuses[..20].iter().all(|s| *s == 401),
        "the burst is answered 401: {statuses:?}"
    );
    // The 21st failure is refused unless a slow machine took 3 s (one refill) or more.
    let refills = (spent.as_secs_f64() / 3.0).ceil() as usize;
    let first_refused = statuses.iter().position(|s| *s == 429);
    assert!(
        first_refused.is_some_and(|i| i <= 20 + refills),
        "first refused at {first_refused:?} in {spent:?}: {statuses:?}"
    );
    let unauthenticated = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        unauthenticated <= 20 + refills,
        "{unauthenticated} answered 401 in {spent:?}: {statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429));

    // The next request from 127.0.0.1 is refused even with a valid token (a throttled
    // guesser must not learn which guess was right), with Retry-After and the error shape.
    let r = get(&a, &state, VIEWER).await;
    assert_eq!(r.status().as_u16(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "auth_throttled", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("retry in {retry_after} s")),
        "{message}"
    );

    // A valid caller from another address is not affected.
    let r = get(&b, &state, VIEWER).await;
    assert_eq!(r.status().as_u16(), 200);
    // Probes and metrics stay open to the throttled address.
    let metrics = a
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(
        counter(&metrics, "auth_fail_total{reason=\"unknown_token\"}") >= 100.0,
        "{metrics}"
    );
    assert!(
        counter(&metrics, "auth_throttled_total") >= 1.0,
        "{metrics}"
    );
    for help in [
        "# HELP auth_fail_total",
        "# HELP auth_throttled_total",
        "# HELP replay_detect_total",
    ] {
        assert!(metrics.contains(help), "{help} missing:\n{metrics}");
    }
    for outcome in ["replayed", "superseded", "request_reused"] {
        counter(
            &metrics,
            &format!("replay_detect_total{{outcome=\"{outcome}\"}}"),
        );
    }

    // Once Retry-After has passed, the valid caller from 127.0.0.1 is answered again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(get(&a, &state, VIEWER).await.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throttle_keys_on_connect_info_and_shares_one_key_when_no_address_is_known() {
    // Served by axum with connect info: each address has its own budget.
    let (app_with_addresses, _) = app(authenticator().with_failure_limit(1, 3));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/admin/kill-switch",
        listener.local_addr().unwrap()
    );
    let _with = tokio::spawn(async move {
        axum::serve(
            listener,
            app_with_addresses.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let (a, b) = (client(CLIENT_A), client(CLIENT_B));
    for _ in 0..3 {
        assert_eq!(get(&a, &url, "wrong").await.status().as_u16(), 401);
    }
    assert_eq!(get(&a, &url, "wrong").await.status().as_u16(), 429);
    assert_eq!(get(&a, &url, VIEWER).await.status().as_u16(), 429);
    assert_eq!(get(&b, &url, VIEWER).await.status().as_u16(), 200);

    // Served without connect info: every client shares one budget, not none.
    let (app_without, _) = app(authenticator().with_failure_limit(1, 3));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/admin/kill-switch",
        listener.local_addr().unwrap()
    );
    let _without = tokio::spawn(async move { axum::serve(listener, app_without).await });
    for _ in 0..3 {
        assert_eq!(get(&a, &url, "wrong").await.status().as_u16(), 401);
    }
    assert_eq!(get(&a, &url, "wrong").await.status().as_u16(), 429);
    assert_eq!(
        get(&b, &url, VIEWER).await.status().as_u16(),
        429,
        "without an address the throttle is shared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_disconnected_within_the_default_header_timeout() {
    let server = start(ServeLimits::default()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    write
        .write_all(b"GET /admin/kill-switch HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // One header line every 5 s, never the blank line that ends the headers.
    let trickle = tokio::spawn(async move {
        for n in 0..10 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if write
                .write_all(format!("X-Slow-{n}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(
        closed.is_ok(),
        "the connection was still open after 20 s of trickled headers"
    );
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed <= Duration::from_secs(15),
        "closed after {elapsed:?}; the header timeout is 10 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_not_received_within_the_body_timeout_is_answered_408_and_changes_nothing() {
    let server = start(ServeLimits::default().with_body(Duration::from_secs(1))).await;
    // Content-Length promises 100 bytes; 10 arrive.
    let head = format!(
        "POST /admin/kill-switch/engage HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {OPERATOR}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    let started = Instant::now();
    let answer = raw_exchange(server.addr, head, br#"{"reason":"#.to_vec()).await;
    let elapsed = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        json_of(&answer)["error"]["code"],
        "request_timeout",
        "{answer}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "answered and closed after {elapsed:?}; the body timeout is 1 s"
    );
    assert!(!server.kill_store.load().await.unwrap().engaged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_non_json_bodies_are_refused_413_and_415_and_change_nothing() {
    let server = start(ServeLimits::default()).await;
    let engage = format!("{}/admin/kill-switch/engage", server.base);

    // 10 MB of JSON: 413 after reading at most the limit.
    let mut body = br#"{"reason":""#.to_vec();
    body.resize(10 * 1024 * 1024 - 2, b'x');
    body.extend_from_slice(br#""}"#);
    let head = format!(
        "POST /admin/kill-switch/engage HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {OPERATOR}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let answer = raw_exchange(server.addr, head, body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        json_of(&answer)["error"]["code"],
        "payload_too_large",
        "{answer}"
    );

    let c = client(CLIENT_A);
    let json = r#"{"reason":"runaway algo"}"#;
    for content_type in [Some("text/plain"), None] {
        let mut r = c.post(&engage).bearer_auth(OPERATOR).body(json);
        if let Some(t) = content_type {
            r = r.header("content-type", t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 415, "{content_type:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "unsupported_media_type",
            "{content_type:?}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Content-Type: application/json"),
            "{body}"
        );
    }
    assert!(!server.kill_store.load().await.unwrap().engaged);
    assert!(server.kill_store.history(10).await.unwrap().is_empty());

    // A body within the limits is applied.
    let r = c
        .post(&engage)
        .bearer_auth(OPERATOR)
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(server.kill_store.load().await.unwrap().engaged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_and_paragraph_separators_in_a_reason_are_refused_422() {
    let server = start(ServeLimits::default()).await;
    let c = client(CLIENT_A);
    for (separator, code) in [('\u{2028}', "U+2028"), ('\u{2029}', "U+2029")] {
        let body = serde_json::json!({ "reason": format!("runaway{separator}algo") });
        let r = c
            .post(format!("{}/admin/kill-switch/engage", server.base))
            .bearer_auth(OPERATOR)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 422, "{code}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_audit", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{code} at position 7")),
            "{message}"
        );
    }
    assert!(!server.kill_store.load().await.unwrap().engaged);
    assert!(server.kill_store.history(10).await.unwrap().is_empty());
}
