//! Symbol validation: the one rule set every store applies before touching state.

/// Longest accepted symbol, in characters.
pub const MAX_SYMBOL_CHARS: usize = 64;

/// Why a symbol was refused. Nothing was changed.
///
/// A symbol is an opaque, case-sensitive identifier (`BTC-USD`, `ETH/USDT`,
/// `o'brien;--` …): any printable text without white space, at most
/// [`MAX_SYMBOL_CHARS`] characters. Quotes, semicolons and SQL keywords are legal and
/// stored verbatim (the Postgres store only ever binds parameters).
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
    /// The symbol contains white space (a space, tab, no-break space …).
    #[error("symbol contains white space at position {position}; symbols are single tokens such as \"BTC-USD\" (trim the input)")]
    Whitespace {
        /// Character index of the first offending character.
        position: usize,
    },
    /// The symbol contains a control character (NUL, escape, newline …).
    #[error("symbol contains a control character at position {position}; use printable text")]
    ControlCharacter {
        /// Character index of the first offending character.
        position: usize,
    },
}

/// Checks `symbol`: non-empty, at most [`MAX_SYMBOL_CHARS`] characters, no white space
/// and no control characters.
pub fn validate_symbol(symbol: &str) -> Result<(), SymbolError> {
    if symbol.is_empty() {
        return Err(SymbolError::Empty);
    }
    let mut len = 0;
    for (position, c) in symbol.chars().enumerate() {
        // Control before white space: "\n" is both, and "control character" says more.
        if c.is_control() {
            return Err(SymbolError::ControlCharacter { position });
        }
        if c.is_whitespace() {
            return Err(SymbolError::Whitespace { position });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_and_odd_but_printable_symbols_are_accepted() {
        for s in [
            "BTC-USD",
            "ETH/USDT",
            "o'brien",
            "\"quoted\"",
            "a;DROP_TABLE_symbol_modes;--",
            "SELECT",
            "Ünïcode-€",
            &"x".repeat(MAX_SYMBOL_CHARS),
        ] {
            assert_eq!(validate_symbol(s), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn empty_blank_control_and_oversized_symbols_are_refused() {
        assert_eq!(validate_symbol(""), Err(SymbolError::Empty));
        assert_eq!(
            validate_symbol(" BTC"),
            Err(SymbolError::Whitespace { position: 0 })
        );
        assert_eq!(
            validate_symbol("BTC USD"),
            Err(SymbolError::Whitespace { position: 3 })
        );
        assert_eq!(
            validate_symbol("BTC\u{a0}"),
            Err(SymbolError::Whitespace { position: 3 })
        );
        assert_eq!(
            validate_symbol("BTC\n"),
            Err(SymbolError::ControlCharacter { position: 3 })
        );
        assert_eq!(
            validate_symbol("\u{0}"),
            Err(SymbolError::ControlCharacter { position: 0 })
        );
        assert_eq!(
            validate_symbol("\u{1b}[31m"),
            Err(SymbolError::ControlCharacter { position: 0 })
        );
        let long = "x".repeat(MAX_SYMBOL_CHARS + 1);
        let err = validate_symbol(&long).unwrap_err();
        assert_eq!(err, SymbolError::TooLong { len: 65, max: 64 });
        assert!(err.to_string().contains("at most 64"), "{err}");
        // Characters, not bytes: 64 two-byte characters are fine.
        assert_eq!(validate_symbol(&"é".repeat(MAX_SYMBOL_CHARS)), Ok(()));
    }
}
