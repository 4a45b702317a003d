use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use super::{FieldViolation, check_text};

const FIELD: &str = "full_name";

/// Combining marks allowed on one letter: enough for any script's accents (Vietnamese stacks
/// two), not enough to draw over the neighbouring lines ("Zalgo" text).
const MAX_MARKS_PER_LETTER: usize = 3;

/// 3-100 characters: words of letters (any script, with their combining marks) joined by
/// single spaces, apostrophes or hyphens; it starts and ends with a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

impl FullName {
    /// Checks `value` against the rules above; the name is kept as given.
    pub fn parse(value: &str) -> Result<Self, FieldViolation> {
        check_text(FIELD, value, 3, 100)?;
        let mut previous = None;
        let mut marks = 0;
        for c in value.chars() {
            let kind = Kind::of(c).ok_or_else(|| {
                FieldViolation::new(
                    FIELD,
                    "must contain only letters, spaces, apostrophes or hyphens",
                )
            })?;
            match (previous, kind) {
                (None | Some(Kind::Joiner), Kind::Mark) => {
                    return Err(FieldViolation::new(
                        FIELD,
                        "must have a letter before each combining mark",
                    ));
                }
                (None, Kind::Joiner) | (Some(Kind::Joiner), Kind::Joiner) => {
                    return Err(FieldViolation::new(
                        FIELD,
                        "must start with a letter and have letters between spaces, \
                         apostrophes and hyphens",
                    ));
                }
                _ => {}
            }
            marks = if kind == Kind::Mark { marks + 1 } else { 0 };
            if marks > MAX_MARKS_PER_LETTER {
                return Err(FieldViolation::new(
                    FIELD,
                    format!("must have at most {MAX_MARKS_PER_LETTER} combining marks on a letter"),
                ));
            }
            previous = Some(kind);
        }
        if previous == Some(Kind::Joiner) {
            return Err(FieldViolation::new(FIELD, "must end with a letter"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Letter,
    /// A combining mark (Mn, Mc, Me): part of the letter before it.
    Mark,
    /// A space, an apostrophe or a hyphen: between two words.
    Joiner,
}

impl Kind {
    fn of(c: char) -> Option<Self> {
        match c.general_category_group() {
            GeneralCategoryGroup::Letter => Some(Self::Letter),
            GeneralCategoryGroup::Mark => Some(Self::Mark),
            _ if matches!(c, ' ' | '\'' | '-') => Some(Self::Joiner),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FullName;

    #[test]
    fn rules() {
        for good in [
            "Ann",
            "Jean-Luc Picard",
            "O'Brien",
            "Zoë Ñúñez",
            "Zoe\u{308} Nu\u{301}n\u{303}ez",
            "Nguyễn Văn A",
            "Nguye\u{302}\u{303}n Van",
            "山田太郎",
            "Ахмед",
        ] {
            assert!(FullName::parse(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "Al",
            "R2D2",
            "a_b",
            "John!",
            "   ",
            "--'",
            " Ann",
            "Ann ",
            "Ann  Lee",
            "Ann -Lee",
            "\u{345}\u{345}\u{345}",
            "\u{301}Ann",
            "\u{2160}\u{2161}\u{2162}",
        ] {
            assert!(FullName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(FullName::parse(&"a".repeat(101)).is_err());
    }

    #[test]
    fn stacked_marks_are_refused() {
        assert!(FullName::parse("Zo\u{363}\u{364}\u{365}e").is_ok());
        let zalgo = format!("Z{}oe", "\u{363}".repeat(60));
        let err = FullName::parse(&zalgo).expect_err("zalgo accepted");
        assert!(err.description.contains("combining marks"));
    }

    #[test]
    fn fillers_that_look_empty_are_refused() {
        for bad in [
            "\u{3164}\u{3164}\u{3164}",
            "Ann\u{FFA0}Lee",
            "\u{115F}\u{1160}\u{3164}",
        ] {
            assert!(FullName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
