//! Scope paths: the canonical name of a node in one of the firm's trees.

use serde::{Deserialize, Serialize};

/// Most segments a path may have.
pub const MAX_SEGMENTS: usize = 8;
/// Longest segment, in characters.
pub const MAX_SEGMENT_CHARS: usize = 64;

/// A scope's path, canonical: 1 to [`MAX_SEGMENTS`] segments joined by `/`, each 1
/// to [`MAX_SEGMENT_CHARS`] characters of `[a-z0-9]` followed by `[a-z0-9._-]*`
/// (`acme/equities/mm-1/acct-42`). The first segment names the tree; the root of
/// every tree is the global kill switch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ScopePath(String);

/// Why a text is not a scope path. Each message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Nothing was given.
    #[error("the scope path is empty: write segments joined by /, e.g. acme/equities/mm-1")]
    Empty,
    /// Upper case letters; the canonical spelling is given.
    #[error("scope paths are lower case: write {canonical}")]
    NotCanonical {
        /// The same path in lower case.
        canonical: String,
    },
    /// A leading, trailing or doubled `/`.
    #[error("the scope path {path:?} has an empty segment (a leading, trailing or doubled /): write {suggestion}")]
    EmptySegment {
        /// The text given.
        path: String,
        /// The path without empty segments.
        suggestion: String,
    },
    /// White space, a control or an invisible character.
    #[error("the scope path {path:?} contains U+{:04X} at position {position} (white space or an invisible character, often pasted along with copied text): remove it", u32::from(*character))]
    InvisibleCharacter {
        /// The text given (debug-escaped in the message).
        path: String,
        /// The first offending character.
        character: char,
        /// Its index, in characters from 0.
        position: usize,
    },
    /// A character outside `[a-z0-9._-]`, or a segment that starts with `.`, `_` or `-`.
    #[error("the scope path segment {segment:?} is not valid: a segment starts with a-z or 0-9 and goes on with a-z, 0-9, '.', '_' or '-'")]
    InvalidSegment {
        /// The segment.
        segment: String,
    },
    /// A segment longer than [`MAX_SEGMENT_CHARS`].
    #[error("the scope path segment {segment:?} is {len} characters long; at most {MAX_SEGMENT_CHARS} are accepted: shorten it")]
    SegmentTooLong {
        /// The segment.
        segment: String,
        /// Its length in characters.
        len: usize,
    },
    /// More than [`MAX_SEGMENTS`] segments.
    #[error("the scope path has {segments} segments; at most {MAX_SEGMENTS} are accepted: attach the scope higher in its tree")]
    TooDeep {
        /// How many were given.
        segments: usize,
    },
}

fn is_first(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_rest(c: char) -> bool {
    is_first(c) || matches!(c, '.' | '_' | '-')
}

impl ScopePath {
    /// Parses a canonical path; see [`PathError`] for what is refused.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        if text.is_empty() {
            return Err(PathError::Empty);
        }
        for (position, character) in text.chars().enumerate() {
            if character.is_whitespace()
                || character.is_control()
                || !(character.is_ascii() || character.is_alphanumeric())
            {
                return Err(PathError::InvisibleCharacter {
                    path: text.to_owned(),
                    character,
                    position,
                });
            }
        }
        if text.chars().any(|c| c.is_uppercase()) {
            let canonical = text.to_lowercase();
            if Self::parse(&canonical).is_ok() {
                return Err(PathError::NotCanonical { canonical });
            }
        }
        let segments: Vec<&str> = text.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            let kept: Vec<&str> = segments.iter().copied().filter(|s| !s.is_empty()).collect();
            if kept.is_empty() {
                return Err(PathError::Empty);
            }
            return Err(PathError::EmptySegment {
                path: text.to_owned(),
                suggestion: kept.join("/"),
            });
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(PathError::TooDeep {
                segments: segments.len(),
            });
        }
        for segment in &segments {
            let mut chars = segment.chars();
            let valid = chars.next().is_some_and(is_first) && chars.all(is_rest);
            if !valid {
                return Err(PathError::InvalidSegment {
                    segment: (*segment).to_owned(),
                });
            }
            let len = segment.chars().count();
            if len > MAX_SEGMENT_CHARS {
                return Err(PathError::SegmentTooLong {
                    segment: (*segment).to_owned(),
                    len,
                });
            }
        }
        Ok(Self(text.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its segments, root-most first.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split('/')
    }

    /// How many segments (1 for a tree's first node).
    pub fn depth(&self) -> usize {
        self.segments().count()
    }

    /// The first segment: the tree the scope belongs to.
    pub fn tree(&self) -> &str {
        self.segments().next().unwrap_or(&self.0)
    }

    /// The parent node; `None` for a tree's first node (whose parent is the kill switch).
    pub fn parent(&self) -> Option<ScopePath> {
        self.0.rfind('/').map(|i| Self(self.0[..i].to_owned()))
    }

    /// Every ancestor, root-most first, without `self`.
    pub fn ancestors(&self) -> Vec<ScopePath> {
        self.0
            .match_indices('/')
            .map(|(i, _)| Self(self.0[..i].to_owned()))
            .collect()
    }

    /// True when `other` lies strictly below this path.
    pub fn is_ancestor_of(&self, other: &ScopePath) -> bool {
        other.0.len() > self.0.len()
            && other.0.starts_with(&self.0)
            && other.0.as_bytes()[self.0.len()] == b'/'
    }

    /// True when `other` is this path or lies below it.
    pub fn contains(&self, other: &ScopePath) -> bool {
        self == other || self.is_ancestor_of(other)
    }

    /// The key two paths that read alike share: lower case, with `-`, `_` and `.`
    /// treated as one character.
    pub fn fold(text: &str) -> String {
        text.chars()
            .map(|c| match c {
                '_' | '.' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect()
    }

    /// The known path `text` was most likely meant as: one that folds to the same
    /// key ([`ScopePath::fold`]), else the closest within two edits of the folded
    /// keys. `None` when nothing is close (or `text` itself is known).
    pub fn near_miss<'a>(
        text: &str,
        known: impl IntoIterator<Item = &'a ScopePath>,
    ) -> Option<ScopePath> {
        let key = Self::fold(text);
        let mut best: Option<(usize, &ScopePath)> = None;
        for candidate in known {
            if candidate.as_str() == text {
                return None;
            }
            let distance = edit_distance(&key, &Self::fold(candidate.as_str()));
            if distance <= 2 && best.is_none_or(|(d, _)| distance < d) {
                best = Some((distance, candidate));
            }
        }
        best.map(|(_, p)| p.clone())
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

impl std::fmt::Display for ScopePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ScopePath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, PathError> {
        Self::parse(s)
    }
}

impl AsRef<str> for ScopePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Deserialization validates: a stored or received path is canonical.
impl<'de> Deserialize<'de> for ScopePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_parse_and_navigate() {
        let p = ScopePath::parse("acme/equities/mm-1/acct_42.x").unwrap();
        assert_eq!(p.depth(), 4);
        assert_eq!(p.tree(), "acme");
        assert_eq!(p.parent().unwrap().as_str(), "acme/equities/mm-1");
        let ancestors: Vec<String> = p.ancestors().iter().map(|a| a.to_string()).collect();
        assert_eq!(ancestors, ["acme", "acme/equities", "acme/equities/mm-1"]);
        assert!(ScopePath::parse("acme").unwrap().is_ancestor_of(&p));
        assert!(!ScopePath::parse("acm").unwrap().is_ancestor_of(&p));
        assert!(!p.is_ancestor_of(&p));
        assert_eq!(ScopePath::parse("acme").unwrap().parent(), None);
    }

    #[test]
    fn refusals_say_what_to_write() {
        assert_eq!(ScopePath::parse(""), Err(PathError::Empty));
        let upper = ScopePath::parse("Acme/EQ").unwrap_err();
        assert_eq!(
            upper.to_string(),
            "scope paths are lower case: write acme/eq"
        );
        assert!(matches!(
            ScopePath::parse("a//b"),
            Err(PathError::EmptySegment { suggestion, .. }) if suggestion == "a/b"
        ));
        assert!(matches!(
            ScopePath::parse("a/b c"),
            Err(PathError::InvisibleCharacter {
                character: ' ',
                position: 3,
                ..
            })
        ));
        assert!(matches!(
            ScopePath::parse("a\u{200B}b"),
            Err(PathError::InvisibleCharacter {
                character: '\u{200B}',
                ..
            })
        ));
        assert!(matches!(
            ScopePath::parse("a/b/c/d/e/f/g/h/i"),
            Err(PathError::TooDeep { segments: 9 })
        ));
        assert!(matches!(
            ScopePath::parse("a/-b"),
            Err(PathError::InvalidSegment { .. })
        ));
        assert!(matches!(
            ScopePath::parse(&"x".repeat(65)),
            Err(PathError::SegmentTooLong { len: 65, .. })
        ));
        assert!(ScopePath::parse(&"x".repeat(64)).is_ok());
        let json: Result<ScopePath, _> = serde_json::from_str("\"a//b\"");
        assert!(json.is_err());
    }

    #[test]
    fn near_misses_fold_separators() {
        let known = [
            ScopePath::parse("acme/eq-desk").unwrap(),
            ScopePath::parse("acme/fx").unwrap(),
        ];
        assert_eq!(
            ScopePath::near_miss("acme/eq_desk", &known),
            Some(known[0].clone())
        );
        assert_eq!(ScopePath::near_miss("acme/eq-desk", &known), None);
        assert_eq!(ScopePath::near_miss("zzz/qqqq", &known), None);
    }
}
