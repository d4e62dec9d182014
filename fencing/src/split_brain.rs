//! Split-brain detection over what nodes report having made durable, and the choice
//! of the authoritative node for recovery ("highest durable seq and valid fencing
//! token").
//!
//! Each node reports `(node, seq, token, state hash)` once `seq` is durable on it: the
//! leader as it writes, standbys as they apply. In a healthy history a seq has one
//! token and one hash everywhere, and tokens never fall as seqs rise. The detector
//! flags:
//! * [`Anomaly::DuplicateSeq`]: one seq produced under two tokens — two leaders;
//! * [`Anomaly::DivergentHash`]: one seq with two state hashes — diverged state;
//! * [`Anomaly::StaleToken`]: a seq above one produced under a newer token, yet
//!   produced under an older token — a stale leader wrote on.
//!
//! ```
//! use tradepulse_fencing::{Observation, SplitBrainDetector};
//! let mut detector = SplitBrainDetector::new();
//! detector.observe(Observation::new("engine-a", 100, 5, 0xa1));
//! detector.observe(Observation::new("engine-b", 95, 6, 0xb2));   // new leader resumed lower
//! assert!(!detector.is_clean());
//! // The lease store's current token is 6: engine-a's seq 100 is under a stale token.
//! let chosen = detector.choose_authoritative(6).unwrap();
//! assert_eq!(chosen.node, "engine-b");
//! ```

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What a node reports: `seq` is durable on it, was produced under fencing `token`,
/// and leaves the state with hash `state_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Observation {
    /// The reporting node.
    pub node: String,
    /// The sequence number made durable.
    pub seq: u64,
    /// The fencing token it was produced under.
    pub token: u64,
    /// The hash of the state after applying `seq`.
    pub state_hash: u64,
}

impl Observation {
    /// An observation.
    pub fn new(node: impl Into<String>, seq: u64, token: u64, state_hash: u64) -> Self {
        Self {
            node: node.into(),
            seq,
            token,
            state_hash,
        }
    }
}

/// A sign of split brain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Anomaly {
    /// The same seq was produced under two tokens: two leaders assigned it.
    DuplicateSeq {
        /// The seq.
        seq: u64,
        /// The first observation of it.
        first: Observation,
        /// The one under another token.
        second: Observation,
    },
    /// The same seq left two different states.
    DivergentHash {
        /// The seq.
        seq: u64,
        /// The first observation of it.
        first: Observation,
        /// The one with another hash.
        second: Observation,
    },
    /// `stale` was produced under an older token than `newer`, at a higher seq: a
    /// leader kept writing after a newer one had started. Reported once per pair of
    /// tokens.
    StaleToken {
        /// The seq under the older token.
        stale: Observation,
        /// The lower seq under the newer token.
        newer: Observation,
    },
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DuplicateSeq { seq, first, second } => write!(
                f,
                "duplicate seq {seq}: token {} on {} and token {} on {}",
                first.token, first.node, second.token, second.node
            ),
            Self::DivergentHash { seq, first, second } => write!(
                f,
                "divergent state at seq {seq}: hash {:#x} on {} and {:#x} on {}",
                first.state_hash, first.node, second.state_hash, second.node
            ),
            Self::StaleToken { stale, newer } => write!(
                f,
                "stale token: seq {} on {} under token {} is above seq {} on {} under newer token {}",
                stale.seq, stale.node, stale.token, newer.seq, newer.node, newer.token
            ),
        }
    }
}

/// Lowest and highest seq seen under one token.
#[derive(Debug)]
struct Span {
    lowest: Observation,
    highest: Observation,
}

/// Watches reports from every node for split brain. Not thread-safe by itself: feed it
/// from one task, or wrap it in a mutex.
#[derive(Debug)]
pub struct SplitBrainDetector {
    /// Distinct (token, hash) variants per seq, oldest seqs pruned beyond `retain`.
    seqs: BTreeMap<u64, Vec<Observation>>,
    tokens: BTreeMap<u64, Span>,
    heads: HashMap<String, Observation>,
    stale_pairs: HashSet<(u64, u64)>,
    anomalies: Vec<Anomaly>,
    retain: usize,
}

impl Default for SplitBrainDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl SplitBrainDetector {
    /// Seqs kept for duplicate and divergence checks by default.
    pub const DEFAULT_RETENTION: usize = 100_000;

    /// A detector that remembers the latest [`DEFAULT_RETENTION`](Self::DEFAULT_RETENTION) seqs.
    pub fn new() -> Self {
        Self::with_retention(Self::DEFAULT_RETENTION)
    }

    /// A detector that remembers the latest `seqs` seqs (at least 1) for duplicate and
    /// divergence checks; token spans and node heads are always kept.
    pub fn with_retention(seqs: usize) -> Self {
        Self {
            seqs: BTreeMap::new(),
            tokens: BTreeMap::new(),
            heads: HashMap::new(),
            stale_pairs: HashSet::new(),
            anomalies: Vec::new(),
            retain: seqs.max(1),
        }
    }

    /// Records `observation`; returns the anomalies it reveals (also kept in
    /// [`anomalies`](Self::anomalies)). A repeat of a known (seq, token, hash) reveals
    /// nothing new.
    pub fn observe(&mut self, observation: Observation) -> Vec<Anomaly> {
        let mut found = Vec::new();
        let head = self.heads.entry(observation.node.clone());
        match head {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if observation.seq > e.get().seq {
                    e.insert(observation.clone());
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(observation.clone());
            }
        }

        let variants = self.seqs.entry(observation.seq).or_default();
        if variants
            .iter()
            .any(|v| v.token == observation.token && v.state_hash == observation.state_hash)
        {
            return found;
        }
        for known in variants.iter() {
            if known.token != observation.token {
                found.push(Anomaly::DuplicateSeq {
                    seq: observation.seq,
                    first: known.clone(),
                    second: observation.clone(),
                });
            }
            if known.state_hash != observation.state_hash {
                found.push(Anomaly::DivergentHash {
                    seq: observation.seq,
                    first: known.clone(),
                    second: observation.clone(),
                });
            }
        }
        variants.push(observation.clone());
        while self.seqs.len() > self.retain {
            self.seqs.pop_first();
        }

        // Newer tokens that started below this seq make this one stale …
        for (&newer, span) in self.tokens.range(observation.token + 1..) {
            if span.lowest.seq < observation.seq
                && self.stale_pairs.insert((observation.token, newer))
            {
                found.push(Anomaly::StaleToken {
                    stale: observation.clone(),
                    newer: span.lowest.clone(),
                });
            }
        }
        // … and older tokens that reached above it are stale.
        for (&older, span) in self.tokens.range(..observation.token) {
            if span.highest.seq > observation.seq
                && self.stale_pairs.insert((older, observation.token))
            {
                found.push(Anomaly::StaleToken {
                    stale: span.highest.clone(),
                    newer: observation.clone(),
                });
            }
        }
        self.tokens
            .entry(observation.token)
            .and_modify(|span| {
                if observation.seq < span.lowest.seq {
                    span.lowest = observation.clone();
                }
                if observation.seq > span.highest.seq {
                    span.highest = observation.clone();
                }
            })
            .or_insert_with(|| Span {
                lowest: observation.clone(),
                highest: observation.clone(),
            });

        for anomaly in &found {
            tracing::error!(%anomaly, "split brain suspected");
            metrics::counter!("fencing_split_brain_anomalies_total").increment(1);
        }
        self.anomalies.extend(found.iter().cloned());
        found
    }

    /// Every anomaly found so far, in the order found.
    pub fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }

    /// No anomaly so far.
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// Each node's highest durable seq (the observation that reported it).
    pub fn heads(&self) -> impl Iterator<Item = &Observation> {
        self.heads.values()
    }

    /// The newest token any node reported.
    pub fn highest_token(&self) -> Option<u64> {
        self.tokens.keys().next_back().copied()
    }

    /// [`choose_authoritative`] over each node's highest durable seq.
    pub fn choose_authoritative(&self, valid_from: u64) -> Option<&Observation> {
        choose_authoritative(self.heads(), valid_from)
    }
}

/// The node to recover from: among `heads` (each node's highest durable seq) whose
/// token is valid — `token >= valid_from`, where `valid_from` is the token of the
/// lease store's current holder or the resource's highest accepted token — the one
/// with the highest seq.
///
/// Nodes tied at that seq with the same token and hash are equivalent (a leader and a
/// caught-up standby); the first by node name is returned. `None` when no head has a
/// valid token, or when the tied heads disagree on token or hash: then there is no
/// authoritative node and recovery is manual.
pub fn choose_authoritative<'a>(
    heads: impl IntoIterator<Item = &'a Observation>,
    valid_from: u64,
) -> Option<&'a Observation> {
    let valid: Vec<&Observation> = heads
        .into_iter()
        .filter(|h| h.token >= valid_from)
        .collect();
    let best_seq = valid.iter().map(|h| h.seq).max()?;
    let mut tied: Vec<&Observation> = valid.into_iter().filter(|h| h.seq == best_seq).collect();
    tied.sort_by(|a, b| a.node.cmp(&b.node));
    let first = tied[0];
    tied.iter()
        .all(|h| h.token == first.token && h.state_hash == first.state_hash)
        .then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(node: &str, seq: u64, token: u64, hash: u64) -> Observation {
        Observation::new(node, seq, token, hash)
    }

    /// A leader and a standby applying the same seqs, then a clean failover.
    #[test]
    fn clean_history_has_no_anomaly_and_the_newest_leader_is_chosen() {
        let mut d = SplitBrainDetector::new();
        for seq in 1..=50 {
            assert!(d.observe(obs("a", seq, 5, seq * 7)).is_empty());
            if seq <= 48 {
                assert!(d.observe(obs("b", seq, 5, seq * 7)).is_empty());
            }
        }
        // a dies at 50; b took over at token 6, caught up to 50 and goes on.
        for seq in 49..=60 {
            let token = if seq <= 50 { 5 } else { 6 };
            assert!(d.observe(obs("b", seq, token, seq * 7)).is_empty());
        }
        // A repeated report is not news.
        assert!(d.observe(obs("b", 60, 6, 420)).is_empty());
        assert!(d.is_clean(), "{:?}", d.anomalies());
        assert_eq!(d.highest_token(), Some(6));
        assert_eq!(d.choose_authoritative(6).unwrap().node, "b");
        assert_eq!(d.choose_authoritative(6).unwrap().seq, 60);
        // With an older valid floor, still the highest seq.
        assert_eq!(d.choose_authoritative(5).unwrap().node, "b");
        assert!(d.choose_authoritative(7).is_none(), "no node holds token 7");
    }

    #[test]
    fn a_duplicate_seq_under_two_tokens_is_flagged() {
        let mut d = SplitBrainDetector::new();
        d.observe(obs("a", 10, 5, 100));
        let found = d.observe(obs("b", 10, 6, 100));
        assert_eq!(found.len(), 1, "{found:?}");
        match &found[0] {
            Anomaly::DuplicateSeq { seq, first, second } => {
                assert_eq!(*seq, 10);
                assert_eq!((first.node.as_str(), first.token), ("a", 5));
                assert_eq!((second.node.as_str(), second.token), ("b", 6));
            }
            other => panic!("{other:?}"),
        }
        assert!(found[0].to_string().contains("duplicate seq 10"));
        assert!(!d.is_clean());
    }

    #[test]
    fn a_divergent_hash_is_flagged_even_under_one_token() {
        let mut d = SplitBrainDetector::new();
        d.observe(obs("leader", 7, 3, 0xaaaa));
        let found = d.observe(obs("standby", 7, 3, 0xbbbb));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(matches!(&found[0], Anomaly::DivergentHash { seq: 7, .. }));
        assert!(found[0].to_string().contains("0xaaaa"), "{}", found[0]);
        // Both heads sit at seq 7 with token 3 but disagree: no authority.
        assert!(d.choose_authoritative(3).is_none());
        // Two tokens and two hashes at one seq: both flags.
        let both = d.observe(obs("other", 7, 4, 0xcccc));
        assert_eq!(
            both.iter()
                .filter(|a| matches!(a, Anomaly::DuplicateSeq { .. }))
                .count(),
            2
        );
        assert_eq!(
            both.iter()
                .filter(|a| matches!(a, Anomaly::DivergentHash { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn a_stale_token_holding_the_highest_seq_is_flagged_and_not_chosen() {
        let mut d = SplitBrainDetector::new();
        for seq in 1..=90 {
            d.observe(obs("a", seq, 5, seq));
            d.observe(obs("b", seq, 5, seq));
        }
        // b became leader with token 6 and went on from 91 …
        for seq in 91..=95 {
            assert!(d.observe(obs("b", seq, 6, seq + 1000)).is_empty());
        }
        // … while a, paused past its lease, woke and wrote on under token 5.
        let found = d.observe(obs("a", 96, 5, 96));
        assert_eq!(found.len(), 1, "{found:?}");
        match &found[0] {
            Anomaly::StaleToken { stale, newer } => {
                assert_eq!((stale.node.as_str(), stale.seq, stale.token), ("a", 96, 5));
                assert_eq!((newer.node.as_str(), newer.seq, newer.token), ("b", 91, 6));
            }
            other => panic!("{other:?}"),
        }
        // Further stale seqs of the same pair of tokens are not reported again.
        for seq in 97..=100 {
            assert!(d.observe(obs("a", seq, 5, seq)).is_empty());
        }
        // a holds the highest seq (100) but under a stale token; b is authoritative.
        let chosen = d.choose_authoritative(6).unwrap();
        assert_eq!((chosen.node.as_str(), chosen.seq), ("b", 95));
        // Without the lease store's word, a floor of the newest token reported does it.
        assert_eq!(
            d.choose_authoritative(d.highest_token().unwrap())
                .unwrap()
                .node,
            "b"
        );
    }

    #[test]
    fn the_stale_token_is_found_whatever_order_reports_arrive_in() {
        let mut d = SplitBrainDetector::new();
        d.observe(obs("a", 100, 5, 1));
        let found = d.observe(obs("b", 95, 6, 2));
        assert!(
            matches!(&found[..], [Anomaly::StaleToken { stale, newer }] if stale.seq == 100 && newer.seq == 95),
            "{found:?}"
        );
    }

    #[test]
    fn the_free_function_ignores_invalid_tokens_and_breaks_ties_by_name() {
        let heads = [obs("c", 10, 6, 1), obs("b", 10, 6, 1), obs("a", 12, 5, 9)];
        assert_eq!(choose_authoritative(&heads, 6).unwrap().node, "b");
        assert_eq!(choose_authoritative(&heads, 5).unwrap().node, "a");
        assert!(choose_authoritative(&[], 1).is_none());
    }

    #[test]
    fn retention_bounds_memory_but_keeps_heads() {
        let mut d = SplitBrainDetector::with_retention(10);
        for seq in 1..=1000 {
            d.observe(obs("a", seq, 1, seq));
        }
        assert_eq!(d.seqs.len(), 10);
        assert_eq!(d.heads().next().unwrap().seq, 1000);
    }
}
