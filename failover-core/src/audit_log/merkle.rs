//! RFC 9162 (RFC 6962) Merkle tree hashing: leaves, nodes, roots kept as a right edge,
//! and consistency proofs between two sizes of one tree.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf's, a node's or a tree's root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The hash of a leaf: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A tree kept as its right edge: the roots of its perfect subtrees, largest first
/// (one per set bit of the size, like a binary counter). Appending costs at most
/// log2(size) hashes; the root folds the edge from the right. The database keeps the
/// same state in `audit_log_head`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RightEdge {
    size: u64,
    edge: Vec<Hash>,
}

impl RightEdge {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of `size` leaves from its edge, as `audit_log_head` stores it; `None`
    /// when the edge does not have one hash per set bit of `size`.
    pub fn from_parts(size: u64, edge: Vec<Hash>) -> Option<Self> {
        (edge.len() == size.count_ones() as usize).then_some(Self { size, edge })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the perfect subtrees, largest first.
    pub fn edge(&self) -> &[Hash] {
        &self.edge
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut carry = leaf;
        let mut n = self.size;
        while n & 1 == 1 {
            let left = self.edge.pop().expect("one edge hash per set bit");
            carry = node_hash(&left, &carry);
            n >>= 1;
        }
        self.edge.push(carry);
        self.size += 1;
    }

    /// The tree's root (RFC 9162 MTH).
    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// The root of the tree over `leaves` (leaf hashes in index order).
pub fn root(leaves: &[Hash]) -> Hash {
    let mut tree = RightEdge::new();
    for leaf in leaves {
        tree.push(*leaf);
    }
    tree.root()
}

/// The largest power of two below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH by the RFC's recursive definition (for proofs over sub-ranges).
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// The RFC 9162 (section 2.1.4.1) consistency proof that the tree of the first `m`
/// leaves is a prefix of the tree over all `leaves`. Empty when `m` is 0 or the whole
/// tree; `None` when `m` exceeds the tree.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Option<Vec<Hash>> {
    if m > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof(m, leaves, true, &mut proof);
    }
    Some(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(mth(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(mth(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(mth(&leaves[..k]));
    }
}

/// Why a consistency proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The old size is above the new one.
    #[error(
        "the old tree ({old} entries) is larger than the new one ({new}): a tree never shrinks"
    )]
    Shrunk {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// The proof does not lead to both roots.
    #[error("the consistency proof does not lead from the old root ({old} entries) to the new root ({new} entries): the new tree does not extend the old one")]
    Inconsistent {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
}

/// Verifies an RFC 9162 (section 2.1.4.2) consistency proof between the tree of
/// `old_size` leaves with root `old_root` and the tree of `new_size` leaves with root
/// `new_root`: Ok when the new tree extends the old one.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    let bad = ProofError::Inconsistent {
        old: old_size,
        new: new_size,
    };
    if old_size > new_size {
        return Err(ProofError::Shrunk {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(bad)
        };
    }
    if old_size == 0 {
        return if proof.is_empty() { Ok(()) } else { Err(bad) };
    }
    if proof.is_empty() {
        return Err(bad);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if snode == 0 {
            return Err(bad);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if fr == *old_root && sr == *new_root && snode == 0 {
        Ok(())
    } else {
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn the_right_edge_root_is_the_rfc_tree_hash_at_every_size() {
        let all = leaves(130);
        let mut tree = RightEdge::new();
        assert_eq!(tree.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            tree.push(*leaf);
            assert_eq!(tree.root(), mth(&all[..=i]), "size {}", i + 1);
            assert_eq!(tree.edge().len(), (i + 1).count_ones() as usize);
        }
        let again = RightEdge::from_parts(tree.size(), tree.edge().to_vec()).unwrap();
        assert_eq!(again.root(), tree.root());
        assert!(RightEdge::from_parts(3, vec![[0; 32]]).is_none());
    }

    #[test]
    fn known_answer_of_rfc_6962_hashing() {
        // The empty tree and a one-leaf tree over the empty entry, as every RFC 6962
        // implementation computes them.
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn consistency_proofs_verify_for_every_pair_of_sizes_up_to_64() {
        let all = leaves(64);
        for n in 1..=64usize {
            let new_root = mth(&all[..n]);
            for m in 1..=n {
                let old_root = mth(&all[..m]);
                let proof = consistency_proof(&all[..n], m).unwrap();
                assert_eq!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof),
                    Ok(()),
                    "m {m} n {n}"
                );
                if m == n {
                    continue;
                }
                // Any altered hash of the proof, or a wrong root, is refused.
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 1;
                    assert!(
                        verify_consistency(m as u64, n as u64, &old_root, &new_root, &bad).is_err(),
                        "m {m} n {n} altered {i}"
                    );
                }
                let mut other = old_root;
                other[31] ^= 1;
                assert!(verify_consistency(m as u64, n as u64, &other, &new_root, &proof).is_err());
                assert!(verify_consistency(m as u64, n as u64, &old_root, &other, &proof).is_err());
                // A proof for another old size does not pass for this one.
                if m > 1 {
                    assert!(verify_consistency(
                        m as u64 - 1,
                        n as u64,
                        &mth(&all[..m - 1]),
                        &new_root,
                        &proof
                    )
                    .is_err());
                }
                // A history that differs in one old leaf is not an extension.
                let mut forked = all[..n].to_vec();
                forked[m - 1][0] ^= 1;
                let forked_root = mth(&forked);
                let forked_proof = consistency_proof(&forked, m).unwrap();
                assert!(verify_consistency(
                    m as u64,
                    n as u64,
                    &old_root,
                    &forked_root,
                    &forked_proof
                )
                .is_err());
            }
        }
    }

    #[test]
    fn proofs_of_rfc_9162_shape() {
        // RFC 9162 2.1.5's example tree of 7 leaves (d0…d6): PROOF(3) = [c, d, g, l],
        // PROOF(4) = [l], PROOF(6) = [i, j, k].
        let d = leaves(7);
        let (a, b, c, dd) = (d[0], d[1], d[2], d[3]);
        let (e, f, j) = (d[4], d[5], d[6]);
        let g = node_hash(&a, &b);
        let h = node_hash(&c, &dd);
        let i = node_hash(&e, &f);
        let k = node_hash(&g, &h);
        let l = node_hash(&i, &j);
        assert_eq!(consistency_proof(&d, 3).unwrap(), vec![c, dd, g, l]);
        assert_eq!(consistency_proof(&d, 4).unwrap(), vec![l]);
        assert_eq!(consistency_proof(&d, 6).unwrap(), vec![i, j, k]);
        assert_eq!(
            verify_consistency(5, 4, &mth(&d[..5]), &mth(&d[..4]), &[]),
            Err(ProofError::Shrunk { old: 5, new: 4 })
        );
    }
}
