use super::{FieldViolation, check_text};

const FIELD: &str = "username";

/// 3-100 characters of `[a-z0-9_]`. The primary key of a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    /// Checks `value` against the rules above.
    pub fn parse(value: &str) -> Result<Self, FieldViolation> {
        check_text(FIELD, value, 3, 100)?;
        if !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(FieldViolation::new(
                FIELD,
                "must contain only lowercase letters, digits, or underscore",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The username as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Username;

    #[test]
    fn rules() {
        assert!(Username::parse("abc").is_ok());
        assert!(Username::parse("a_1").is_ok());
        assert!(Username::parse(&"a".repeat(100)).is_ok());
        for bad in ["ab", "Abc", "ab c", "ab-c", "abé", ""] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Username::parse(&"a".repeat(101)).is_err());
    }
}
