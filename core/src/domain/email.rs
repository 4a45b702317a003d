use std::str::FromStr;

use email_address::EmailAddress;

use super::{FieldViolation, check_length};

const FIELD: &str = "email";

/// 3-200 characters and a valid address (RFC 5322 addr-spec, as checked by `email_address`).
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(value: &str) -> Result<Self, FieldViolation> {
        check_length(FIELD, value, 3, 200)?;
        EmailAddress::from_str(value)
            .map_err(|_| FieldViolation::new(FIELD, "is not a valid email address"))?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address with the local part hidden (`a***@example.com`), safe for logs.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks the local part of an address for logs: `alice@example.com` -> `a***@example.com`.
pub fn mask(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Email({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn rules() {
        assert!(Email::parse("a@b.co").is_ok());
        for bad in [
            "ab",
            "plainaddress",
            "@example.com",
            "a@",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(190));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn debug_is_masked() {
        let email = Email::parse("alice@example.com").unwrap();
        assert_eq!(format!("{email:?}"), "Email(a***@example.com)");
    }
}
