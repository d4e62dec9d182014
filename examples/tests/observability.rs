//! The shipped Grafana dashboard (`observability/dashboards/`) and Prometheus alert
//! rules (`observability/alerts/`) cannot drift from the code: every metric and every
//! label their PromQL uses must be exported on `/metrics` by the admin example running
//! on real PostgreSQL, after a failed authentication, an engage, a replay, a row-lock
//! timeout and a lossy failover have made the event counters appear. The dashboard must
//! import as-is (uid, title, schemaVersion, a `${datasource}` variable on every panel
//! and target) and every alert must link a README section that exists.

mod support;

use killswitch::{Audit, KillSwitch, KillSwitchConfig, KillSwitchStore, MemoryKillSwitchStore};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tradepulse_testkit::{shared_primary, Held};

/// Labels Prometheus adds to every series it scrapes (the target's), so a rule may
/// group or match on them although `/metrics` does not carry them.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Counters the code creates at their first event (not registered at zero) that this
/// test cannot cause on demand: a retried attempt (a connection lost between the
/// pool's check and the statement; a hung server spends the whole budget on one
/// attempt). Their names and labels are checked against the `metrics::` macro call
/// that records them in the library sources instead of the scrape.
const CREATED_ON_FIRST_EVENT: &[&str] = &["failover_pg_retries_total"];

/// Operators and keywords of PromQL: identifiers that are never a metric name.
const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "atan2",
    "inf",
    "nan",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the examples crate sits in the workspace")
        .to_owned()
}

/// `path` as written from the workspace root, for messages.
fn relative(path: &Path) -> String {
    let root = workspace();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn rule_files() -> Vec<(String, RuleFile)> {
    let dir = workspace().join("observability/alerts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".rules.yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.rules.yml in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed: RuleFile = serde_yaml_ng::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not a rules file: {e}", path.display()));
            (relative(&path), parsed)
        })
        .collect()
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = workspace().join("observability/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            (relative(&path), parsed)
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every PromQL expression shipped: `(where, expr)`.
fn shipped_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, rules) in rule_files() {
        for group in &rules.groups {
            for rule in &group.rules {
                let name = rule.alert.as_ref().or(rule.record.as_ref()).unwrap();
                out.push((format!("{file}: {}/{name}", group.name), rule.expr.clone()));
            }
        }
    }
    for (file, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let title = panel["title"].as_str().unwrap_or("?");
                    out.push((format!("{file}: panel {title:?}"), expr.to_owned()));
                }
            }
        }
    }
    out
}

/// One metric selector of an expression and every label it must carry: those of its
/// matchers and those of the `by`/`without`/`on`/`ignoring` lists around it.
#[derive(Debug, PartialEq)]
struct Use {
    metric: String,
    labels: BTreeSet<String>,
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str,
    Num,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Other,
}

fn lex(expr: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                if i >= chars.len() {
                    return Err(format!("unterminated string in {expr:?}"));
                }
                i += 1;
                out.push(Tok::Str);
            }
            // A range or subquery: `[5m]`, `[$__rate_interval]`, `[1h:1m]`.
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                // A Grafana variable outside brackets: `$x`, `${x}`.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Num);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            _ => {
                out.push(match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    ',' => Tok::Comma,
                    _ => Tok::Other,
                });
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The label names of a `( a, b )` list starting at `toks[*i]`; `*i` ends past `)`.
fn label_list(toks: &[Tok], i: &mut usize) -> Result<Vec<String>, String> {
    let mut labels = Vec::new();
    if toks.get(*i) != Some(&Tok::LParen) {
        return Ok(labels);
    }
    *i += 1;
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(l)) => labels.push(l.clone()),
            Some(Tok::Comma) => {}
            Some(Tok::RParen) => break,
            other => return Err(format!("unexpected {other:?} in a label list")),
        }
        *i += 1;
    }
    *i += 1;
    Ok(labels)
}

/// The metrics an expression selects and the labels each must carry.
fn uses(expr: &str) -> Result<Vec<Use>, String> {
    let toks = lex(expr)?;
    // Paren groups: the labels a grouping clause attaches to everything inside.
    let mut group_labels: Vec<Vec<String>> = vec![Vec::new()]; // 0: the whole expression
    let mut open: Vec<usize> = vec![0];
    let mut pending: Option<Vec<String>> = None;
    let mut last_closed: Option<usize> = None;
    let mut selectors: Vec<(String, Vec<String>, Vec<usize>)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let after_rparen = i > 0 && toks[i - 1] == Tok::RParen;
        match &toks[i] {
            Tok::Ident(word) if word == "by" || word == "without" => {
                i += 1;
                let labels = label_list(&toks, &mut i)?;
                match last_closed.filter(|_| after_rparen) {
                    // `sum(x) by (l)`
                    Some(g) => group_labels[g].extend(labels),
                    // `sum by (l) (x)`
                    None => pending = Some(labels),
                }
                continue;
            }
            Tok::Ident(word)
                if ["on", "ignoring", "group_left", "group_right"].contains(&word.as_str()) =>
            {
                i += 1;
                let labels = label_list(&toks, &mut i)?;
                let g = *open.last().unwrap();
                group_labels[g].extend(labels);
                continue;
            }
            Tok::Ident(word)
                if PROMQL_WORDS.contains(&word.as_str())
                    || toks.get(i + 1) == Some(&Tok::LParen) => {}
            Tok::Ident(metric) => {
                let mut labels = Vec::new();
                if toks.get(i + 1) == Some(&Tok::LBrace) {
                    i += 2;
                    loop {
                        match toks.get(i) {
                            Some(Tok::Ident(l)) => {
                                labels.push(l.clone());
                                // the operator, then the value
                                while !matches!(toks.get(i), Some(Tok::Str) | None) {
                                    i += 1;
                                }
                            }
                            Some(Tok::Comma) => {}
                            Some(Tok::RBrace) => break,
                            other => {
                                return Err(format!(
                                    "unexpected {other:?} in the matchers of {metric}"
                                ))
                            }
                        }
                        i += 1;
                    }
                }
                selectors.push((metric.clone(), labels, open.clone()));
            }
            Tok::LBrace => return Err(format!("a selector without a metric name in {expr:?}")),
            Tok::LParen => {
                group_labels.push(pending.take().unwrap_or_default());
                open.push(group_labels.len() - 1);
            }
            Tok::RParen => {
                if open.len() == 1 {
                    return Err(format!("unbalanced ')' in {expr:?}"));
                }
                last_closed = open.pop();
            }
            _ => {}
        }
        i += 1;
    }
    if open.len() != 1 {
        return Err(format!("unbalanced '(' in {expr:?}"));
    }
    Ok(selectors
        .into_iter()
        .map(|(metric, matchers, groups)| {
            let mut labels: BTreeSet<String> = matchers.into_iter().collect();
            for g in groups {
                labels.extend(group_labels[g].iter().cloned());
            }
            Use { metric, labels }
        })
        .collect())
}

/// Series names on a Prometheus text page and the label names each carries.
fn exported(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let mut rest = line[end + 1..].chars().peekable();
            loop {
                let name: String = rest.by_ref().take_while(|c| *c != '=').collect();
                let name = name.trim_start_matches(',').trim();
                if name.is_empty() || name.starts_with('}') {
                    break;
                }
                labels.insert(name.to_owned());
                // The quoted value, with its escapes.
                assert_eq!(rest.next(), Some('"'), "a label value in {line:?}");
                while let Some(c) = rest.next() {
                    match c {
                        '\\' => {
                            rest.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                if rest.peek() == Some(&'}') {
                    break;
                }
            }
        }
    }
    out
}

/// The label keys of the `metrics::` macro call that records `metric`, from the
/// library crates' sources (`None`: no such call).
fn recorded_in_source(metric: &str) -> Option<BTreeSet<String>> {
    fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rs_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for krate in ["failover-core", "killswitch", "symbol-mode", "fencing"] {
        rs_files(&workspace().join(krate).join("src"), &mut files);
    }
    let call = format!("!(\"{metric}\"");
    let mut found: Option<BTreeSet<String>> = None;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices(&call) {
            let args = &text[at + call.len()..];
            let args = &args[..args.find(')').unwrap_or(args.len())];
            let labels = found.get_or_insert_with(BTreeSet::new);
            for (arrow, _) in args.match_indices("=>") {
                let key = args[..arrow].trim_end().trim_end_matches('"');
                let key = &key[key.rfind('"').map_or(0, |q| q + 1)..];
                labels.insert(key.to_owned());
            }
        }
    }
    found
}

/// What the shipped expressions use that the code does not export.
fn drift(scrape: &BTreeMap<String, BTreeSet<String>>, exprs: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (site, expr) in exprs {
        let used = match uses(expr) {
            Ok(used) => used,
            Err(e) => {
                problems.push(format!("{site}: {e}"));
                continue;
            }
        };
        if used.is_empty() {
            problems.push(format!("{site}: no metric in {expr:?}"));
        }
        for Use { metric, labels } in used {
            let have = match scrape.get(&metric) {
                Some(have) => have.clone(),
                None if CREATED_ON_FIRST_EVENT.contains(&metric.as_str()) => {
                    match recorded_in_source(&metric) {
                        Some(have) => have,
                        None => {
                            problems.push(format!(
                                "{site}: {metric} is recorded nowhere in the library crates"
                            ));
                            continue;
                        }
                    }
                }
                None => {
                    problems.push(format!(
                        "{site}: {metric} is not exported on /metrics (a typo, a renamed metric, or a histogram without _bucket/_sum/_count?)"
                    ));
                    continue;
                }
            };
            for label in labels {
                if !have.contains(&label) && !TARGET_LABELS.contains(&label.as_str()) {
                    problems.push(format!(
                        "{site}: {metric} has no label {label:?} (it has {have:?})"
                    ));
                }
            }
        }
    }
    problems
}

/// Runs the admin example on PostgreSQL, makes the event counters appear, and checks
/// every metric and label of every shipped expression against its `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_dashboard_and_alerts_use_is_exported() {
    let (cluster, db) = shared_primary().await.unwrap();
    let dsn = cluster.primary().dsn(&db);
    let s = start_all(&dsn, Duration::from_secs(300)).await;

    // A failed authentication.
    let (status, _) = s
        .api
        .send(
            reqwest::Method::GET,
            "/admin/kill-switch",
            None,
            Some("not-a-token"),
        )
        .await;
    assert_eq!(status, 401);
    // An engage, then its replay.
    let engage = format!(
        r#"{{"reason":"observability test","request_id":"{}"}}"#,
        uuid::Uuid::new_v4()
    );
    for replayed in [false, true] {
        let (status, body) = s
            .api
            .post(OPERATOR, "/admin/kill-switch/engage", &engage)
            .await;
        assert_eq!(
            (status, body["replayed"].as_bool()),
            (200, Some(replayed)),
            "{body}"
        );
    }
    // A symbol throttled: the handle exports its limit and its refusals by symbol.
    let (status, body) = s
        .api
        .put(
            OPERATOR,
            "/admin/symbols/BTC-USD",
            r#"{"reason":"listing"}"#,
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let (status, body) = s
        .api
        .put(
            OPERATOR,
            "/admin/symbols/BTC-USD/throttle",
            r#"{"per_second":5,"burst":5,"reason":"settlement lag"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "the throttle reaches the admin's handle",
        Duration::from_secs(5),
        async || {
            s.api
                .text("/metrics")
                .await
                .contains("symbol_mode_throttle_per_second{symbol=\"BTC-USD\"} 5")
        },
    )
    .await;
    // A change refused because another session holds the row.
    let held = Held::begin(
        &dsn,
        "SELECT * FROM symbol_mode_state WHERE id = 1 FOR UPDATE",
    )
    .await;
    let (status, body) = s
        .api
        .put(
            OPERATOR,
            "/admin/global-mode",
            r#"{"mode":"HARD_HALT","reason":"halt"}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (423, Some("locked")),
        "{body}"
    );
    held.rollback().await;
    // A lossy failover under a running handle (the process-wide recorder counts it):
    // an in-memory store loses the disengage the handle held.
    let memory = Arc::new(MemoryKillSwitchStore::new());
    memory
        .engage(&Audit::new("ops:test", "incident"))
        .await
        .unwrap();
    let store: Arc<dyn KillSwitchStore> = memory.clone();
    let switch = KillSwitch::spawn(store, KillSwitchConfig::default());
    switch.ready(Duration::from_secs(5)).await;
    memory
        .disengage(&Audit::new("ops:test", "resolved").with_ticket("INC-1"))
        .await
        .unwrap();
    eventually(
        "the disengage reaches the handle",
        Duration::from_secs(5),
        async || switch.check().is_ok(),
    )
    .await;
    memory.simulate_lossy_failover(1);
    eventually(
        "the handle reports the divergence",
        Duration::from_secs(5),
        async || {
            switch
                .health()
                .details
                .is_some_and(|d| d.contains("diverged"))
        },
    )
    .await;

    // A hung server: the operation times out.
    cluster.primary().freeze().unwrap();
    // The store's retry budget (0.6 s here) bounds the request: it answers while the
    // server is still frozen.
    let (status, body) = s
        .api
        .put(
            OPERATOR,
            "/admin/global-mode",
            r#"{"mode":"SOFT_HALT","reason":"hung server"}"#,
        )
        .await;
    cluster.primary().thaw().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );

    let scrape = exported(&s.api.text("/metrics").await);
    for must in [
        "pg_pool_waiting",
        "failover_pg_lock_timeouts_total",
        "failover_history_diverged_total",
        "failover_pg_timeouts_total",
    ] {
        assert!(
            scrape.contains_key(must),
            "the scrape shows {must}: {scrape:?}"
        );
    }
    let exprs = shipped_exprs();
    assert!(exprs.len() >= 20, "{} expressions found", exprs.len());
    let problems = drift(&scrape, &exprs);
    assert!(
        problems.is_empty(),
        "the dashboard or alert rules use what the code does not export:\n{}",
        problems.join("\n")
    );
}

/// The drift check itself: a metric or label the scrape lacks is named; one it has
/// passes; grouping and matching labels are required of the metrics inside them.
#[test]
fn the_drift_check_names_what_is_not_exported() {
    let scrape = exported(
        "# TYPE up gauge\nhealth_status{component=\"kill_switch\"} 0\nx_bucket{op=\"a,b\",le=\"+Inf\"} 1\nplain 3\n",
    );
    let check = |expr: &str| drift(&scrape, &[("t".into(), expr.into())]);
    assert_eq!(
        check("max by (instance, component) (health_status) == 2"),
        Vec::<String>::new()
    );
    assert_eq!(
        check("histogram_quantile(0.9, sum(rate(x_bucket{op=~\"a\"}[5m])) by (le, op))"),
        Vec::<String>::new()
    );
    assert_eq!(
        check("plain > 0 unless on (instance) health_status"),
        Vec::<String>::new()
    );
    assert_eq!(check("rate(bogus_total[5m]) > 0").len(), 1);
    assert_eq!(check("sum by (store) (health_status)").len(), 1);
    assert_eq!(check("health_status{reason=\"x\"}").len(), 1);
    assert_eq!(
        check("plain and on (component) health_status").len(),
        1,
        "plain lacks component"
    );
    assert_eq!(
        check("failover_pg_retries_total{op=\"x\"}"),
        Vec::<String>::new()
    );
    assert_eq!(check("failover_pg_retries_total{store=\"x\"}").len(), 1);
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every alert carries a summary, a description and a runbook link to a README
/// section that exists in this repository; the runbooks' alert name is among them.
#[test]
fn every_alert_links_an_existing_readme_section() {
    let manifest = read("Cargo.toml");
    let repository = manifest
        .lines()
        .find_map(|l| l.strip_prefix("repository = "))
        .expect("the workspace names its repository")
        .trim_matches('"')
        .to_owned();
    let readme = read("README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let prefix = format!("{repository}/blob/main/README.md#");
    let mut names = BTreeSet::new();
    for (file, rules) in rule_files() {
        for rule in rules.groups.iter().flat_map(|g| &g.rules) {
            let Some(name) = &rule.alert else { continue };
            names.insert(name.clone());
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    rule.annotations
                        .get(key)
                        .is_some_and(|v| !v.trim().is_empty()),
                    "{file}: {name} has no {key} annotation"
                );
            }
            let url = &rule.annotations["runbook_url"];
            let section = url.strip_prefix(&prefix).unwrap_or_else(|| {
                panic!("{file}: {name}: runbook_url {url} is not under {prefix}")
            });
            assert!(
                anchors.contains(section),
                "{file}: {name}: README.md has no section #{section} (sections: {anchors:?})"
            );
        }
    }
    assert!(names.contains("DashDatabaseConnectionFailed"), "{names:?}");
}

/// The dashboard imports as-is into Grafana: uid, title, schemaVersion, a Prometheus
/// data source variable, and that variable (never a hard-coded uid) on every panel and
/// every target.
#[test]
fn the_dashboard_imports_on_any_prometheus_data_source() {
    let all = dashboards();
    assert!(
        all.iter()
            .any(|(f, _)| f.ends_with("tradepulse-overview.json")),
        "observability/dashboards/tradepulse-overview.json is shipped"
    );
    for (file, d) in all {
        assert!(
            d["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty() && u.len() <= 40),
            "{file}: uid"
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}: schemaVersion"
        );
        let variable = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{file}: no `datasource` templating variable"));
        assert_eq!(
            (variable["type"].as_str(), variable["query"].as_str()),
            (Some("datasource"), Some("prometheus")),
            "{file}: {variable}"
        );
        let ours = |v: &Value| v["uid"] == "${datasource}" && v["type"] == "prometheus";
        let mut ids = BTreeSet::new();
        let mut targets = 0;
        for panel in panels(&d) {
            let title = panel["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(panel["id"].as_u64().expect("panel id")),
                "{file}: duplicate id of {title}"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert!(
                ours(&panel["datasource"]),
                "{file}: panel {title:?} datasource {}",
                panel["datasource"]
            );
            let list = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: {title:?} has no targets"));
            assert!(!list.is_empty(), "{file}: {title:?} has no targets");
            for target in list {
                assert!(
                    ours(&target["datasource"]),
                    "{file}: a target of {title:?}: {target}"
                );
                assert!(
                    target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                    "{file}: {title:?}"
                );
                targets += 1;
            }
        }
        assert!(targets > 0, "{file}: no targets");
    }
}
