//! Audit context: who asked for a safety action, why, and under which ticket.
//!
//! Every state change of a safety control carries an [`Audit`]. The rules are the
//! same for every store, so they live here:
//!
//! * `actor` and `reason` are required, non-blank, bounded and free of control
//!   characters (category Cc: NUL, newline, escape …) and of Unicode format characters
//!   (category Cf: zero-width space U+200B, right-to-left override U+202E, byte order
//!   mark U+FEFF, soft hyphen U+00AD, word joiner U+2060 …), which would hide or
//!   reorder text in an audit trail that people read, and of the Unicode line and
//!   paragraph separators (categories Zl and Zp: U+2028, U+2029), which break a
//!   one-line audit entry into several lines in logs, terminals and JSON consumers;
//! * a `ticket` is **mandatory** for actions that relax safety ([`Safety::Relax`]:
//!   disengage the kill switch, de-escalate a mode, lift a halt) and optional for
//!   those that tighten it ([`Safety::Tighten`]): an emergency stop is never blocked
//!   by paperwork;
//! * each `Audit` carries a request id, generated once at construction. Stores use
//!   it to make writes idempotent: submitting the same `Audit` again (for example a
//!   retry after a lost COMMIT acknowledgement) is applied once.

use crate::authority::{Authority, Precondition};
use serde::{Deserialize, Serialize};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use uuid::Uuid;

/// Longest accepted `actor`, in characters.
pub const MAX_ACTOR_CHARS: usize = 128;
/// Longest accepted `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 1024;
/// Longest accepted `ticket`, in characters.
pub const MAX_TICKET_CHARS: usize = 128;

/// Whether an action tightens or relaxes safety; decides whether a ticket is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Safety {
    /// Stops or restricts trading (engage, escalate a mode). Ticket optional.
    Tighten,
    /// Lifts a restriction (disengage, de-escalate, lift a halt). Ticket required.
    Relax,
}

/// Who, why and under which ticket a safety action was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    actor: String,
    reason: String,
    ticket: Option<String>,
    request_id: Uuid,
    #[serde(default = "full_authority")]
    authority: Authority,
    #[serde(default = "no_precondition")]
    precondition: Precondition,
    #[serde(default)]
    break_glass: bool,
}

fn full_authority() -> Authority {
    Authority::Supervisor
}

fn no_precondition() -> Precondition {
    Precondition::None
}

/// Why an [`Audit`] was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A required field is empty or only white space.
    #[error(
        "audit {field} is empty: say who/why (e.g. actor \"ops:alice\", reason \"runaway algo\")"
    )]
    Empty {
        /// `actor`, `reason` or `ticket`.
        field: &'static str,
    },
    /// A field is longer than its bound.
    #[error("audit {field} is {len} characters long; at most {max} are accepted")]
    TooLong {
        /// `actor`, `reason` or `ticket`.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A field contains a control character (newline, NUL, escape …).
    #[error(
        "audit {field} contains the control character U+{:04X} at position {position}; use printable text",
        u32::from(*character)
    )]
    ControlCharacter {
        /// `actor`, `reason` or `ticket`.
        field: &'static str,
        /// The first offending character.
        character: char,
        /// Its index, in characters from 0.
        position: usize,
    },
    /// A field contains an invisible Unicode format character (category Cf: U+200B
    /// zero-width space, U+202E right-to-left override, U+FEFF, U+00AD soft hyphen …),
    /// which would make the audit trail read differently from what was stored.
    #[error(
        "audit {field} contains the invisible format character U+{:04X} at position {position}; remove it (often pasted along with copied text)",
        u32::from(*character)
    )]
    FormatCharacter {
        /// `actor`, `reason` or `ticket`.
        field: &'static str,
        /// The first offending character.
        character: char,
        /// Its index, in characters from 0.
        position: usize,
    },
    /// A field contains a Unicode line or paragraph separator (U+2028 LINE SEPARATOR,
    /// category Zl; U+2029 PARAGRAPH SEPARATOR, category Zp): like a newline, it splits
    /// one audit entry into several lines where people read it.
    #[error(
        "audit {field} contains the {} U+{:04X} at position {position}; write the text on one line (replace it with a space)",
        separator_name(*character),
        u32::from(*character)
    )]
    LineSeparator {
        /// `actor`, `reason` or `ticket`.
        field: &'static str,
        /// The first offending character.
        character: char,
        /// Its index, in characters from 0.
        position: usize,
    },
    /// The action relaxes safety and no ticket was given.
    #[error("a ticket id is required to {action}: relaxing a safety control must be audited with reason + ticket id")]
    TicketRequired {
        /// What was attempted, e.g. `disengage the kill switch`.
        action: String,
    },
}

impl Audit {
    /// A new audit context with a fresh request id. Validation happens when a store
    /// uses it ([`Audit::validate`]), so that every refusal is a typed error.
    pub fn new(actor: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            reason: reason.into(),
            ticket: None,
            request_id: Uuid::new_v4(),
            authority: Authority::Supervisor,
            precondition: Precondition::None,
            break_glass: false,
        }
    }

    /// Breaks the glass: a relaxation whose action requires a second person's
    /// approval applies at once, marked in its audit event, counted, logged and
    /// listed for a second supervisor to acknowledge (see [`crate::approvals`]).
    /// Ignored by tightenings and where no approval is required.
    #[must_use]
    pub fn breaking_glass(mut self) -> Self {
        self.break_glass = true;
        self
    }

    /// True when the relaxation breaks the glass ([`Audit::breaking_glass`]).
    pub fn break_glass(&self) -> bool {
        self.break_glass
    }

    /// The authority the command is applied with. [`Audit::new`] gives the full
    /// authority of the code that builds it ([`Authority::Supervisor`]): a store
    /// called in-process trusts its caller, and PostgreSQL still caps it at what the
    /// database login holds. A front end that authenticated a person (the admin
    /// routes, the CLI) sets that person's authority.
    #[must_use]
    pub fn with_authority(mut self, authority: Authority) -> Self {
        self.authority = authority;
        self
    }

    /// Makes a relaxation conditional on its target still being at `position` (the
    /// state the caller saw); tightenings ignore it.
    #[must_use]
    pub fn expecting(mut self, position: crate::Position) -> Self {
        self.precondition = Precondition::At(position);
        self
    }

    /// Refuses a relaxation that does not name the state it relaxes (what an HTTP
    /// request without `If-Match` gets).
    #[must_use]
    pub fn requiring_precondition(mut self) -> Self {
        self.precondition = Precondition::Required;
        self
    }

    /// The authority the command is applied with.
    pub fn authority(&self) -> Authority {
        self.authority
    }

    /// What a relaxation is conditional on.
    pub fn precondition(&self) -> Precondition {
        self.precondition
    }

    /// Sets the ticket (incident or change id).
    #[must_use]
    pub fn with_ticket(mut self, ticket: impl Into<String>) -> Self {
        self.ticket = Some(ticket.into());
        self
    }

    /// Replaces the request id, for callers that carry their own idempotency key
    /// (for example one received from an admin API client).
    #[must_use]
    pub fn with_request_id(mut self, request_id: Uuid) -> Self {
        self.request_id = request_id;
        self
    }

    /// Who acted.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Under which ticket, if any.
    pub fn ticket(&self) -> Option<&str> {
        self.ticket.as_deref()
    }

    /// The idempotency key of this request.
    pub fn request_id(&self) -> Uuid {
        self.request_id
    }

    /// Checks the fields; `action` names the attempted action for the error message
    /// when `safety` is [`Safety::Relax`] and the ticket is missing.
    pub fn validate(&self, safety: Safety, action: &str) -> Result<(), AuditError> {
        check_text("actor", &self.actor, MAX_ACTOR_CHARS)?;
        check_text("reason", &self.reason, MAX_REASON_CHARS)?;
        match (&self.ticket, safety) {
            (Some(ticket), _) => check_text("ticket", ticket, MAX_TICKET_CHARS),
            (None, Safety::Tighten) => Ok(()),
            (None, Safety::Relax) => Err(AuditError::TicketRequired {
                action: action.to_owned(),
            }),
        }
    }
}

/// The name of a separator character for [`AuditError::LineSeparator`].
fn separator_name(character: char) -> &'static str {
    match character.general_category() {
        GeneralCategory::ParagraphSeparator => "paragraph separator",
        _ => "line separator",
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), AuditError> {
    if value.trim().is_empty() {
        return Err(AuditError::Empty { field });
    }
    for (position, character) in value.chars().enumerate() {
        if character.is_control() {
            return Err(AuditError::ControlCharacter {
                field,
                character,
                position,
            });
        }
        match character.general_category() {
            GeneralCategory::Format => {
                return Err(AuditError::FormatCharacter {
                    field,
                    character,
                    position,
                })
            }
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
                return Err(AuditError::LineSeparator {
                    field,
                    character,
                    position,
                })
            }
            _ => {}
        }
    }
    let len = value.chars().count();
    if len > max {
        return Err(AuditError::TooLong { field, len, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighten_needs_no_ticket_but_relax_does() {
        let audit = Audit::new("ops:alice", "runaway algo");
        assert_eq!(audit.validate(Safety::Tighten, "engage"), Ok(()));
        assert!(matches!(
            audit.validate(Safety::Relax, "disengage the kill switch"),
            Err(AuditError::TicketRequired { .. })
        ));
        let audit = audit.with_ticket("INC-7");
        assert_eq!(audit.validate(Safety::Relax, "disengage"), Ok(()));
    }

    #[test]
    fn blank_control_and_oversized_fields_are_refused() {
        let cases = [
            (Audit::new(" ", "r"), "actor"),
            (Audit::new("a", ""), "reason"),
            (Audit::new("a", "r").with_ticket("\t"), "ticket"),
        ];
        for (audit, field) in cases {
            match audit.validate(Safety::Tighten, "engage") {
                Err(AuditError::Empty { field: f }) => assert_eq!(f, field),
                other => panic!("expected Empty({field}), got {other:?}"),
            }
        }
        assert_eq!(
            Audit::new("a", "line\nbreak").validate(Safety::Tighten, "engage"),
            Err(AuditError::ControlCharacter {
                field: "reason",
                character: '\n',
                position: 4
            })
        );
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(matches!(
            Audit::new("a", long).validate(Safety::Tighten, "engage"),
            Err(AuditError::TooLong {
                field: "reason",
                ..
            })
        ));
    }

    #[test]
    fn invisible_format_characters_are_refused_with_code_point_and_position() {
        // Category Cf: zero-width space, right-to-left override, BOM, soft hyphen, word
        // joiner, invisible times, ZWNJ, left-to-right mark, LRE, first-strong isolate,
        // pop directional isolate, Arabic letter mark, Mongolian vowel separator.
        for c in [
            '\u{200B}', '\u{202E}', '\u{FEFF}', '\u{AD}', '\u{2060}', '\u{2062}', '\u{200C}',
            '\u{200E}', '\u{202A}', '\u{2068}', '\u{2069}', '\u{61C}', '\u{180E}',
        ] {
            let reason = format!("ab{c}c");
            for (field, audit) in [
                ("actor", Audit::new(reason.clone(), "r")),
                ("reason", Audit::new("a", reason.clone())),
                ("ticket", Audit::new("a", "r").with_ticket(reason.clone())),
            ] {
                let err = audit.validate(Safety::Relax, "disengage").unwrap_err();
                assert_eq!(
                    err,
                    AuditError::FormatCharacter {
                        field,
                        character: c,
                        position: 2
                    }
                );
                let message = err.to_string();
                assert!(
                    message.contains(&format!("U+{:04X} at position 2", u32::from(c))),
                    "{message}"
                );
                assert!(!message.contains(c), "{message}");
            }
        }
    }

    #[test]
    fn control_characters_are_named_by_code_point() {
        let err = Audit::new("a", "x\u{1b}[2J")
            .validate(Safety::Tighten, "engage")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("control character U+001B at position 1"),
            "{err}"
        );
    }

    #[test]
    fn line_and_paragraph_separators_are_refused_with_code_point_and_position() {
        for (c, code, name) in [
            ('\u{2028}', "U+2028", "line separator"),
            ('\u{2029}', "U+2029", "paragraph separator"),
        ] {
            let text = format!("run{c}away");
            for (field, audit) in [
                ("actor", Audit::new(text.clone(), "r")),
                ("reason", Audit::new("a", text.clone())),
                ("ticket", Audit::new("a", "r").with_ticket(text.clone())),
            ] {
                let err = audit.validate(Safety::Relax, "disengage").unwrap_err();
                assert_eq!(
                    err,
                    AuditError::LineSeparator {
                        field,
                        character: c,
                        position: 3
                    }
                );
                let message = err.to_string();
                assert!(
                    message.contains(&format!("{name} {code} at position 3")),
                    "{message}"
                );
                assert!(message.contains("on one line"), "{message}");
                assert!(!message.contains(c), "{message}");
            }
        }
        // Ordinary spaces (category Zs), including the no-break space, stay accepted.
        let audit = Audit::new("a", "runaway\u{A0}algo  now");
        assert_eq!(audit.validate(Safety::Tighten, "engage"), Ok(()));
    }

    #[test]
    fn visible_non_ascii_text_is_accepted() {
        let audit = Audit::new("ops:zoë", "Überlast, 停止 💥 — résumé").with_ticket("INC-ü");
        assert_eq!(audit.validate(Safety::Relax, "disengage"), Ok(()));
    }

    #[test]
    fn quotes_and_sql_keywords_are_ordinary_text() {
        let audit = Audit::new("o'brien", "'; DROP TABLE kill_switch_state; --");
        assert_eq!(audit.validate(Safety::Tighten, "engage"), Ok(()));
    }

    #[test]
    fn each_audit_has_its_own_request_id() {
        assert_ne!(
            Audit::new("a", "r").request_id(),
            Audit::new("a", "r").request_id()
        );
    }
}
