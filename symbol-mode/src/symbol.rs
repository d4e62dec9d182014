//! Symbol validation: the one rule set every store applies before touching state.

use std::fmt;

/// Longest accepted symbol, in characters.
pub const MAX_SYMBOL_CHARS: usize = 64;

/// The punctuation a symbol may contain besides ASCII letters and digits.
pub const SYMBOL_PUNCTUATION: &[char] = &['-', '_', '.', '/', ':'];

/// Why a symbol was refused. Nothing was changed.
///
/// See [`validate_symbol`] for the charset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SymbolError {
    /// The symbol is empty.
    #[error("symbol is empty: name the instrument, e.g. \"BTC-USD\"")]
    Empty,
    /// The symbol is longer than [`MAX_SYMBOL_CHARS`].
    #[error("symbol is {len} characters long; at most {max} are accepted")]
    TooLong {
        /// Its length in characters.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The symbol contains a character outside the charset (white space, a control or
    /// invisible format character, a quote, a non-ASCII letter …).
    #[error(
        "symbol contains {} at position {position}; a symbol uses only ASCII letters, digits and - _ . / : (e.g. \"BTC-USD\")",
        CharName(*character)
    )]
    InvalidCharacter {
        /// The first offending character.
        character: char,
        /// Its index, in characters from 0.
        position: usize,
    },
}

/// Whether `c` belongs to the symbol charset (see [`validate_symbol`]).
pub fn is_symbol_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || SYMBOL_PUNCTUATION.contains(&c)
}

/// Checks `symbol` against the charset and the length bound.
///
/// # Charset
///
/// A symbol is a case-sensitive identifier of 1 to [`MAX_SYMBOL_CHARS`] characters, each
/// one of
///
/// * ASCII letters `A`–`Z`, `a`–`z`,
/// * ASCII digits `0`–`9`,
/// * `-` `_` `.` `/` `:`.
///
/// That covers the usual venue spellings (`BTC-USD`, `ETH/USDT`, `BRK.B`, `ES:Z25`,
/// `btc_usd_perp`) and nothing else: no white space, no control characters, no quotes,
/// and no non-ASCII letters, so that no two distinct symbols can look alike
/// (`"BTC\u{200B}-USD"` with a zero-width space, a Cyrillic `С` in place of a Latin `C`,
/// a right-to-left override …). Everything else is refused with
/// [`SymbolError::InvalidCharacter`], which names the character as `U+XXXX` and its
/// position.
pub fn validate_symbol(symbol: &str) -> Result<(), SymbolError> {
    if symbol.is_empty() {
        return Err(SymbolError::Empty);
    }
    let mut len = 0;
    for (position, character) in symbol.chars().enumerate() {
        if !is_symbol_char(character) {
            return Err(SymbolError::InvalidCharacter {
                character,
                position,
            });
        }
        len += 1;
    }
    if len > MAX_SYMBOL_CHARS {
        return Err(SymbolError::TooLong {
            len,
            max: MAX_SYMBOL_CHARS,
        });
    }
    Ok(())
}

/// `U+200B (invisible)`, `U+0027 '''`: the code point always, the glyph only when it
/// is visible, so an error message cannot itself hide or reorder text.
struct CharName(char);

impl fmt::Display for CharName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(f, "U+{:04X}", u32::from(c))?;
        if c.is_whitespace() {
            f.write_str(" (white space)")
        } else if c.is_control() {
            f.write_str(" (a control character)")
        } else if c.is_ascii_graphic() || (c.is_alphanumeric() && !c.is_ascii()) {
            write!(f, " '{c}'")
        } else {
            f.write_str(" (an invisible or special character)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_within_the_charset_are_accepted() {
        for s in [
            "BTC-USD",
            "ETH/USDT",
            "BRK.B",
            "ES:Z25",
            "btc_usd_perp",
            "SELECT",
            "0",
            &"x".repeat(MAX_SYMBOL_CHARS),
        ] {
            assert_eq!(validate_symbol(s), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn every_character_outside_the_charset_is_refused_with_its_code_point_and_position() {
        let cases = [
            (" BTC", ' ', 0),
            ("BTC USD", ' ', 3),
            ("BTC\u{a0}", '\u{a0}', 3),
            ("BTC\n", '\n', 3),
            ("\u{0}", '\u{0}', 0),
            ("\u{1b}[31m", '\u{1b}', 0),
            // Look-alikes of BTC-USD: zero-width space, right-to-left override, BOM,
            // soft hyphen, word joiner, Cyrillic С, fullwidth hyphen.
            ("BTC\u{200B}-USD", '\u{200B}', 3),
            ("\u{202E}BTC-USD", '\u{202E}', 0),
            ("\u{FEFF}BTC-USD", '\u{FEFF}', 0),
            ("BTC\u{AD}-USD", '\u{AD}', 3),
            ("BTC-\u{2060}USD", '\u{2060}', 4),
            ("BT\u{0421}-USD", '\u{0421}', 2),
            ("BTC\u{FF0D}USD", '\u{FF0D}', 3),
            // Printable ASCII outside the charset.
            ("o'brien", '\'', 1),
            ("a;b", ';', 1),
            ("\"BTC\"", '"', 0),
            ("BTC*", '*', 3),
            ("Ünï", 'Ü', 0),
        ];
        for (symbol, character, position) in cases {
            let err = validate_symbol(symbol).unwrap_err();
            assert_eq!(
                err,
                SymbolError::InvalidCharacter {
                    character,
                    position
                },
                "{symbol:?}"
            );
            let message = err.to_string();
            let code = format!("U+{:04X}", u32::from(character));
            assert!(message.contains(&code), "{message}");
            assert!(
                message.contains(&format!("position {position}")),
                "{message}"
            );
        }
    }

    #[test]
    fn messages_show_invisible_characters_only_by_code_point() {
        let message = validate_symbol("BTC\u{202E}USD").unwrap_err().to_string();
        assert!(
            message.starts_with(
                "symbol contains U+202E (an invisible or special character) at position 3"
            ),
            "{message}"
        );
        assert!(!message.contains('\u{202E}'), "{message}");
        let message = validate_symbol("o'brien").unwrap_err().to_string();
        assert!(message.contains("U+0027 '''"), "{message}");
        let message = validate_symbol("a b").unwrap_err().to_string();
        assert!(message.contains("U+0020 (white space)"), "{message}");
    }

    #[test]
    fn empty_and_oversized_symbols_are_refused() {
        assert_eq!(validate_symbol(""), Err(SymbolError::Empty));
        let long = "x".repeat(MAX_SYMBOL_CHARS + 1);
        let err = validate_symbol(&long).unwrap_err();
        assert_eq!(err, SymbolError::TooLong { len: 65, max: 64 });
        assert!(err.to_string().contains("at most 64"), "{err}");
    }
}

/// The folded key of a symbol: upper case, without the punctuation `-_./:`. Two
/// symbols with one folded key are one instrument spelled twice (`eth-usd`,
/// `ETH_USD`, `ETHUSD`); the registry keeps one of them. The database computes the
/// same key (`symbol_fold`).
pub fn fold_symbol(symbol: &str) -> String {
    symbol
        .chars()
        .filter(|c| !SYMBOL_PUNCTUATION.contains(c))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The registered symbol `symbol` was most likely meant as: the one with the same
/// folded key, else the closest within two edits of the folded keys (`ETH-UDS` →
/// `ETH-USD`). `None` when nothing is close.
pub fn near_match<'a>(
    symbol: &str,
    registered: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    failover_core::names::nearest(symbol, registered, fold_symbol).map(str::to_owned)
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn folding_ignores_case_and_punctuation() {
        assert_eq!(fold_symbol("eth-usd"), "ETHUSD");
        assert_eq!(fold_symbol("ETH_USD"), fold_symbol("eth.usd"));
        assert_eq!(fold_symbol("ES:Z25"), "ESZ25");
        assert_ne!(fold_symbol("ETH-USD"), fold_symbol("ETH-USDT"));
    }

    #[test]
    fn near_matches() {
        let known = ["BTC-USD", "ETH-USD", "SOL-USD"];
        assert_eq!(near_match("eth-usd", known).as_deref(), Some("ETH-USD"));
        assert_eq!(near_match("ETH-UDS", known).as_deref(), Some("ETH-USD"));
        assert_eq!(near_match("ETHUSD", known).as_deref(), Some("ETH-USD"));
        assert_eq!(near_match("NOPE-USD", known), None);
        assert_eq!(near_match("../../etc/passwd", known), None);
    }
}
