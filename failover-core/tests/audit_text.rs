//! Audit text is read by people: characters that hide or reorder text (Unicode
//! category Cf) are refused like control characters, naming the character and its
//! position; so are the line and paragraph separators (categories Zl and Zp), which
//! split one entry into several lines.

use tradepulse_failover_core::{Audit, Safety};

#[test]
fn invisible_format_characters_in_audit_text_are_refused() {
    let cases = [
        ("runaway\u{200B} algo", "U+200B", 7), // zero-width space
        ("\u{202E}ogla yawanur", "U+202E", 0), // right-to-left override
        ("\u{FEFF}runaway algo", "U+FEFF", 0), // byte order mark
        ("run\u{AD}away algo", "U+00AD", 3),   // soft hyphen
        ("runaway\u{2066} algo", "U+2066", 7), // left-to-right isolate
        ("runaway\u{2028}algo", "U+2028", 7),  // line separator (Zl)
        ("\u{2029}runaway algo", "U+2029", 0), // paragraph separator (Zp)
    ];
    for (reason, code, position) in cases {
        for audit in [
            Audit::new("ops:alice", reason),
            Audit::new(reason, "runaway algo"),
            Audit::new("ops:alice", "runaway algo").with_ticket(reason),
        ] {
            let message = audit
                .validate(Safety::Relax, "disengage the kill switch")
                .expect_err(reason)
                .to_string();
            assert!(message.contains(code), "{reason:?}: {message}");
            assert!(
                message.contains(&format!("position {position}")),
                "{reason:?}: {message}"
            );
        }
    }
}

#[test]
fn control_characters_are_still_refused_and_visible_text_accepted() {
    let err = Audit::new("ops:alice", "line\nbreak")
        .validate(Safety::Tighten, "engage")
        .unwrap_err();
    assert!(err.to_string().contains("U+000A"), "{err}");
    let audit = Audit::new("ops:zoë", "Überlast — 停止 💥").with_ticket("INC-7");
    assert!(audit.validate(Safety::Relax, "disengage").is_ok());
}
