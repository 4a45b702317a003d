use crate::secret::Secret;

use super::{FieldViolation, check_text};

const FIELD: &str = "password";

/// 6-100 characters. Never printed: `Debug` shows `[redacted]`.
#[derive(Debug, Clone)]
pub struct Password(Secret<String>);

impl Password {
    pub fn parse(value: String) -> Result<Self, FieldViolation> {
        check_text(FIELD, &value, 6, 100)?;
        Ok(Self(Secret::new(value)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::Password;

    #[test]
    fn rules() {
        assert!(Password::parse("123456".into()).is_ok());
        assert!(Password::parse("12345".into()).is_err());
        assert!(Password::parse("x".repeat(101)).is_err());
        let password = Password::parse("hunter22".into()).unwrap();
        assert!(!format!("{password:?}").contains("hunter22"));
    }
}
