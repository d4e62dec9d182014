//! Symbols that look alike must not be different symbols: everything outside the
//! documented charset (ASCII letters, digits and `-_./:`) is refused, by the validator
//! and by every store command, with the character's code point and position.

use tradepulse_symbol_mode::{
    validate_symbol, Audit, Error, MemorySymbolModeStore, SymbolMode, SymbolModeStore,
    SymbolRefusal,
};

const LOOK_ALIKES: [(&str, &str, usize); 6] = [
    ("BTC\u{200B}-USD", "U+200B", 3), // zero-width space
    ("\u{202E}BTC-USD", "U+202E", 0), // right-to-left override
    ("\u{FEFF}BTC-USD", "U+FEFF", 0), // byte order mark
    ("BTC\u{AD}-USD", "U+00AD", 3),   // soft hyphen
    ("B\u{0422}C-USD", "U+0422", 1),  // Cyrillic Т
    ("BTC-USD ", "U+0020", 7),        // trailing space
];

#[test]
fn look_alike_symbols_are_refused_naming_the_character_and_position() {
    for (symbol, code, position) in LOOK_ALIKES {
        let message = validate_symbol(symbol).expect_err(symbol).to_string();
        assert!(message.contains(code), "{symbol:?}: {message}");
        assert!(
            message.contains(&format!("position {position}")),
            "{symbol:?}: {message}"
        );
    }
    assert!(validate_symbol("o'brien;--").is_err());
    for symbol in ["BTC-USD", "ETH/USDT", "BRK.B", "ES:Z25", "btc_usd_perp"] {
        assert!(validate_symbol(symbol).is_ok(), "{symbol}");
    }
}

#[tokio::test]
async fn the_store_refuses_a_look_alike_of_an_existing_symbol() {
    let store = MemorySymbolModeStore::new();
    let audit = Audit::new("ops:alice", "halt").with_ticket("INC-1");
    store
        .register_symbol("BTC-USD", &Audit::new("ops:alice", "listing"))
        .await
        .expect("register");
    store
        .set_symbol_mode("BTC-USD", SymbolMode::HardHalt, &audit)
        .await
        .expect("the real symbol");
    for (symbol, code, _) in LOOK_ALIKES {
        let err = store
            .set_symbol_mode(symbol, SymbolMode::Normal, &audit)
            .await
            .expect_err(symbol);
        assert!(
            matches!(err, Error::Control(SymbolRefusal::InvalidSymbol(_))),
            "{symbol:?}: {err:?}"
        );
        assert!(err.to_string().contains(code), "{symbol:?}: {err}");
    }
}
