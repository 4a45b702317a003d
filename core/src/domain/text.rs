//! The one character rule every text field obeys, whatever else it allows: no control or
//! format characters anywhere. They are invisible or reorder what a reader sees (bidi
//! overrides, zero-width joiners), end lines in headers and logs (CR, LF, U+2028), or are cut
//! short by C and PostgreSQL (NUL). Every newtype's `parse` starts with [`check_text`], so a
//! new field gets the rule by being written like the others.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::FieldViolation;

/// A kind of character no field accepts. The message names the kind, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Cc: C0 (NUL, TAB, CR, LF, ...), DEL and C1.
    Control,
    /// Zl and Zp: U+2028, U+2029.
    Separator,
    /// The bidi controls of Cf: they reorder how the rest of the text is displayed.
    Bidi,
    /// The rest of Cf: zero-width characters, U+FEFF, the soft hyphen, tags, ...
    Format,
    /// Default-ignorable characters outside Cf that render as nothing (Hangul fillers,
    /// variation selectors, U+034F), private-use and unassigned code points: a value made of
    /// them looks empty, or different on every system.
    Invisible,
}

impl Refused {
    fn of(c: char) -> Option<Self> {
        match c.general_category() {
            GeneralCategory::Control => Some(Self::Control),
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
                Some(Self::Separator)
            }
            GeneralCategory::Format if is_bidi_control(c) => Some(Self::Bidi),
            GeneralCategory::Format => Some(Self::Format),
            GeneralCategory::PrivateUse | GeneralCategory::Unassigned => Some(Self::Invisible),
            _ if is_invisible(c) => Some(Self::Invisible),
            _ => None,
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::Control => "must not contain control characters (such as NUL, TAB, CR or LF)",
            Self::Separator => "must not contain line or paragraph separator characters",
            Self::Bidi => "must not contain bidirectional control characters (such as U+202E)",
            Self::Format => {
                "must not contain invisible format characters (such as zero-width spaces)"
            }
            Self::Invisible => {
                "must not contain invisible, private-use or unassigned characters (such as \
                 U+3164 or variation selectors)"
            }
        }
    }
}

/// The Bidi_Control characters of Unicode (all of them category Cf).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The Default_Ignorable_Code_Points of Unicode that are not Cf (letters and marks that
/// display as nothing).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180D}' | '\u{180F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
        | '\u{FFA0}' | '\u{E0100}'..='\u{E01EF}')
}

/// Whether no field accepts `c`: for text that reaches headers, logs or rows other than
/// through a field's `parse` (user agents, rows written by other programs).
pub fn is_refused_char(c: char) -> bool {
    Refused::of(c).is_some()
}

/// Whether `text` holds a character no field accepts (see [`is_refused_char`]).
pub fn has_refused_chars(text: &str) -> bool {
    text.chars().any(is_refused_char)
}

/// Refuses control and format characters, then checks the length in characters (not bytes)
/// against an inclusive range.
pub(super) fn check_text(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), FieldViolation> {
    if let Some(refused) = value.chars().find_map(Refused::of) {
        return Err(FieldViolation::new(field, refused.description()));
    }
    let len = value.chars().count();
    if len < min || len > max {
        return Err(FieldViolation::new(
            field,
            format!("must contain from {min} to {max} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_text, has_refused_chars};

    #[test]
    fn text_made_otherwise_is_judged_by_the_same_rule() {
        for bad in [
            "\r", "\n", "\0", "\u{7f}", "\u{85}", "\u{2028}", "\u{2029}", "\u{202E}", "\u{2066}",
            "\u{200B}", "\u{FEFF}", "\u{00AD}", "\u{3164}",
        ] {
            assert!(has_refused_chars(&format!("Alice{bad}Liddell")), "{bad:?}");
        }
        assert!(!has_refused_chars("Zoë O'Brien-Smith 李"));
    }

    fn refusal(value: &str) -> String {
        check_text("field", value, 0, 1000)
            .expect_err("refused")
            .description
    }

    #[test]
    fn c0_del_and_c1_are_control_characters() {
        for c in ('\0'..='\u{1f}')
            .chain(['\u{7f}'])
            .chain('\u{80}'..='\u{9f}')
        {
            let text = refusal(&format!("ab{c}cd"));
            assert!(text.contains("control characters"), "{c:?}: {text}");
        }
    }

    #[test]
    fn line_and_paragraph_separators() {
        for c in ['\u{2028}', '\u{2029}'] {
            assert!(refusal(&format!("a{c}")).contains("separator"), "{c:?}");
        }
    }

    #[test]
    fn bidi_controls() {
        let bidi = ['\u{061C}', '\u{200E}', '\u{200F}'];
        for c in bidi
            .into_iter()
            .chain('\u{202A}'..='\u{202E}')
            .chain('\u{2066}'..='\u{2069}')
        {
            assert!(
                refusal(&format!("{c}abc")).contains("bidirectional"),
                "{c:?}"
            );
        }
    }

    #[test]
    fn zero_width_and_other_format_characters() {
        for c in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{180E}',
            '\u{E0041}',
            '\u{FFF9}',
        ] {
            assert!(
                refusal(&format!("abc{c}")).contains("invisible format"),
                "{c:?}"
            );
        }
    }

    #[test]
    fn fillers_variation_selectors_private_use_and_unassigned() {
        for c in [
            '\u{3164}',
            '\u{FFA0}',
            '\u{115F}',
            '\u{1160}',
            '\u{034F}',
            '\u{FE0F}',
            '\u{E0100}',
            '\u{E000}',
            '\u{10FFFD}',
            '\u{0378}',
        ] {
            assert!(
                refusal(&format!("ab{c}")).contains("invisible, private-use"),
                "{c:?}"
            );
        }
    }

    #[test]
    fn the_message_never_carries_the_value() {
        let err = check_text("password", "hunter2\0secret", 0, 100).expect_err("refused");
        assert_eq!(err.field, "password");
        assert!(!err.description.contains("hunter2"));
    }

    #[test]
    fn ordinary_text_of_any_script_passes_and_length_is_in_characters() {
        for good in [
            "Zoë Ñúñez",
            "山田太郎",
            "O'Brien",
            "a b",
            "🙂🙂🙂",
            "\u{301}é",
        ] {
            assert!(check_text("f", good, 1, 100).is_ok(), "{good:?}");
        }
        assert!(check_text("f", "ééé", 3, 3).is_ok());
        assert!(check_text("f", "éé", 3, 3).is_err());
        assert!(check_text("f", "éééé", 3, 3).is_err());
    }
}
