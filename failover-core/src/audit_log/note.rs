//! Checkpoints (C2SP tlog-checkpoint) as signed notes (C2SP signed-note) with Ed25519
//! keys.
//!
//! A checkpoint's body is three lines: the origin (which log: e.g.
//! `tradepulse/db.example/trading`), the tree size in decimal, and the root hash in
//! standard base64. A signed note is the body, one blank line, and one signature line
//! per signer: `— <key name> <base64(key id ‖ signature)>`, where the key id is the
//! first four bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key) and the signature
//! is Ed25519 over the body's bytes.

use super::merkle::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature-type byte of Ed25519 keys in note key ids.
const ED25519: u8 = 0x01;
/// What starts every signature line: an em dash and a space.
const DASH: &str = "\u{2014} ";

/// A tree head as a checkpoint states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Which log (one database's audit log), e.g. `tradepulse/db.example/trading`.
    pub origin: String,
    /// The number of entries.
    pub size: u64,
    /// The root of the tree of those entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The note body: origin, size and base64 root, one per line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// The checkpoint of a note body.
    pub fn parse(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.lines();
        let bad = |what: &str| NoteError::Malformed(format!("the checkpoint's {what}"));
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("origin line is missing"))?;
        let size = lines
            .next()
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| bad("second line is not a tree size"))?;
        let root = lines
            .next()
            .and_then(|l| B64.decode(l).ok())
            .and_then(|b| <Hash>::try_from(b.as_slice()).ok())
            .ok_or_else(|| bad("third line is not a base64 SHA-256 root"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// Why a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a signed note or not a checkpoint.
    #[error("not a signed checkpoint note: {0}")]
    Malformed(String),
    /// No signature line is by the given key.
    #[error("the note is not signed by the given public key (key id {wanted}); it is signed by {found}: give the public key of the key that signed it")]
    OtherKey {
        /// The given key's id (hex), under the names the note uses.
        wanted: String,
        /// The note's signers: `name (key id)`.
        found: String,
    },
    /// A signature line by the given key does not verify: the body was altered.
    #[error("the signature of {name} does not verify: the note's body was altered after signing")]
    BadSignature {
        /// The signer's key name.
        name: String,
    },
    /// A key file could not be read.
    #[error("{0}")]
    Key(String),
}

/// The note key id of an Ed25519 public key under `name`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Signs `body` (which must end with a newline) as a note by `name`.
pub fn sign_note(body: &str, name: &str, key: &SigningKey) -> Result<String, NoteError> {
    if !body.ends_with('\n') || body.contains("\n\n") {
        return Err(NoteError::Malformed(
            "a note body ends with a newline and has no blank line".into(),
        ));
    }
    if name.is_empty() || name.contains([' ', '+', '\n']) {
        return Err(NoteError::Malformed(format!(
            "key name {name:?}: a note key name is non-empty, without spaces or '+'"
        )));
    }
    let sig = key.sign(body.as_bytes());
    let mut blob = key_id(name, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&sig.to_bytes());
    Ok(format!("{body}\n{DASH}{name} {}\n", B64.encode(blob)))
}

/// Verifies a signed checkpoint note against `key`: Ok with the checkpoint when one
/// signature line is by `key` (under the name it gives) and verifies.
pub fn verify_checkpoint(note: &str, key: &VerifyingKey) -> Result<Checkpoint, NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
    let body = &note[..=split];
    let mut found = Vec::new();
    for line in note[split + 2..].lines().filter(|l| !l.is_empty()) {
        let rest = line.strip_prefix(DASH).ok_or_else(|| {
            NoteError::Malformed(format!("signature line {line:?} does not start with '— '"))
        })?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or_else(|| NoteError::Malformed(format!("signature line {line:?}")))?;
        let blob = B64
            .decode(blob)
            .map_err(|_| NoteError::Malformed(format!("signature line {line:?}: not base64")))?;
        if blob.len() < 4 {
            return Err(NoteError::Malformed(format!("signature line {line:?}")));
        }
        let id = &blob[..4];
        found.push(format!("{name} ({})", hex(id)));
        if id != key_id(name, key) {
            continue;
        }
        let sig = ed25519_dalek::Signature::from_slice(&blob[4..]).map_err(|_| {
            NoteError::BadSignature {
                name: name.to_owned(),
            }
        })?;
        key.verify(body.as_bytes(), &sig)
            .map_err(|_| NoteError::BadSignature {
                name: name.to_owned(),
            })?;
        return Checkpoint::parse(body);
    }
    Err(NoteError::OtherKey {
        wanted: hex(key.as_bytes()),
        found: if found.is_empty() {
            "nobody".into()
        } else {
            found.join(", ")
        },
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Ed25519 private key from a PKCS#8 PEM file's text (what `openssl genpkey
/// -algorithm ed25519` writes).
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, NoteError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| {
        NoteError::Key(format!(
            "not an Ed25519 private key in PKCS#8 PEM ({e}); make one with `openssl genpkey -algorithm ed25519 -out key.pem`"
        ))
    })
}

/// An Ed25519 public key from a PEM file's text (what `openssl pkey -in key.pem
/// -pubout` writes).
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, NoteError> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| {
        NoteError::Key(format!(
            "not an Ed25519 public key in PEM ({e}); derive it with `openssl pkey -in key.pem -pubout -out pub.pem`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_its_key_only() {
        let cp = Checkpoint {
            origin: "tradepulse/db/trading".into(),
            size: 12,
            root: [7; 32],
        };
        let note = sign_note(&cp.body(), "tradepulse/db/trading", &key(1)).unwrap();
        assert!(note.starts_with("tradepulse/db/trading\n12\nBwcH"));
        assert!(note.contains("\n\n\u{2014} tradepulse/db/trading "));
        assert_eq!(verify_checkpoint(&note, &key(1).verifying_key()), Ok(cp));
        assert!(matches!(
            verify_checkpoint(&note, &key(2).verifying_key()),
            Err(NoteError::OtherKey { .. })
        ));
        let altered = note.replacen("\n12\n", "\n13\n", 1);
        assert!(matches!(
            verify_checkpoint(&altered, &key(1).verifying_key()),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn key_ids_follow_the_signed_note_rule() {
        // SHA-256("name" ‖ 0x0A ‖ 0x01 ‖ key)[..4], computed by hand.
        let k = key(3).verifying_key();
        let mut input = b"name\n\x01".to_vec();
        input.extend_from_slice(k.as_bytes());
        let d = Sha256::digest(&input);
        assert_eq!(key_id("name", &k), [d[0], d[1], d[2], d[3]]);
    }

    #[test]
    fn pem_keys_round_trip() {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let k = key(4);
        let pem = k.to_pkcs8_pem(Default::default()).unwrap();
        let public = k
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        assert_eq!(signing_key_from_pem(&pem).unwrap().to_bytes(), k.to_bytes());
        assert_eq!(verifying_key_from_pem(&public).unwrap(), k.verifying_key());
        assert!(signing_key_from_pem(&public).is_err());
    }
}
