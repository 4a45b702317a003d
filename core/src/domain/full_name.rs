use super::{FieldViolation, check_text};

const FIELD: &str = "full_name";

/// 3-100 characters: letters of any script, spaces, apostrophes and hyphens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

impl FullName {
    pub fn parse(value: &str) -> Result<Self, FieldViolation> {
        check_text(FIELD, value, 3, 100)?;
        if !value
            .chars()
            .all(|c| c.is_alphabetic() || c == ' ' || c == '\'' || c == '-')
        {
            return Err(FieldViolation::new(
                FIELD,
                "must contain only letters, spaces, apostrophes or hyphens",
            ));
        }
        if !value.chars().any(char::is_alphabetic) {
            return Err(FieldViolation::new(FIELD, "must contain letters"));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::FullName;

    #[test]
    fn rules() {
        for good in ["Ann", "Jean-Luc Picard", "O'Brien", "Zoë Ñúñez", "山田太郎"] {
            assert!(FullName::parse(good).is_ok(), "{good:?} refused");
        }
        for bad in ["Al", "R2D2", "a_b", "John!", "   ", "--'"] {
            assert!(FullName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(FullName::parse(&"a".repeat(101)).is_err());
    }
}
