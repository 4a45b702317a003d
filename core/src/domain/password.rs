//! A new password: 8-128 characters (NIST SP 800-63B's floor, and a ceiling that bounds the
//! work handed to argon2), and not one of the most common passwords.

use std::{collections::HashSet, sync::LazyLock};

use crate::secret::Secret;

use super::{FieldViolation, check_text};

const FIELD: &str = "password";
/// UpdateUser's field for the password in force.
const CURRENT: &str = "current_password";

/// The shortest new password, in characters.
pub const MIN_LEN: usize = 8;
/// The longest password, in characters.
pub const MAX_LEN: usize = 128;

/// Django's list of the 20,000 most common passwords, lower case (source, version and licence:
/// `core/data/README.md`).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// Whether `password`, in any case, is on the common-password list.
pub fn is_common(password: &str) -> bool {
    COMMON.contains(password.to_lowercase().as_str())
}

/// A new password that passed the rules. Never printed: `Debug` shows `[redacted]`.
#[derive(Debug, Clone)]
pub struct Password(Secret<String>);

impl Password {
    /// The rules for a new password (sign-up, change): characters, length, not common.
    pub fn parse(value: String) -> Result<Self, FieldViolation> {
        check_text(FIELD, &value, MIN_LEN, MAX_LEN)?;
        if is_common(&value) {
            return Err(FieldViolation::new(
                FIELD,
                "is one of the most commonly used passwords; choose another",
            ));
        }
        Ok(Self(Secret::new(value)))
    }

    /// A password presented to sign in. It is checked against the stored hash, not the rules
    /// for new ones (accounts from before them keep working): only the character rule and a
    /// length bound (1 to [`MAX_LEN`]) apply.
    pub fn presented(field: &'static str, value: String) -> Result<Secret<String>, FieldViolation> {
        check_text(field, &value, 1, MAX_LEN)?;
        Ok(Secret::new(value))
    }

    /// UpdateUser's `current_password`: required (`needed`) to change the email or the
    /// password, so that an access token alone cannot take an account over; read as
    /// [`Password::presented`] whenever given, to be checked against the stored hash.
    pub fn current(
        value: Option<String>,
        needed: bool,
    ) -> Result<Option<Secret<String>>, FieldViolation> {
        match value {
            Some(value) => Self::presented(CURRENT, value).map(Some),
            None if needed => Err(FieldViolation::new(
                CURRENT,
                "is required to change the email or the password",
            )),
            None => Ok(None),
        }
    }

    /// The password itself, for hashing: each use is visible in review.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The password as a plain [`Secret`], for code that takes one.
    pub fn into_secret(self) -> Secret<String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length() {
        assert!(Password::parse("Correct horse 9".into()).is_ok());
        assert!(Password::parse("kx7#Qw2".into()).is_err(), "7 characters");
        assert!(Password::parse("kx7#Qw2z".into()).is_ok(), "8 characters");
        assert!(
            Password::parse("é".repeat(MAX_LEN)).is_ok(),
            "characters, not bytes"
        );
        let err = Password::parse("x".repeat(MAX_LEN + 1)).unwrap_err();
        assert_eq!(err.field, "password");
        assert!(
            err.description.contains("from 8 to 128"),
            "{}",
            err.description
        );
    }

    #[test]
    fn the_common_list_is_shipped_whole_and_looked_up_in_any_case() {
        assert!(COMMON.len() >= 19_000, "{}", COMMON.len());
        for common in [
            "password",
            "PASSWORD",
            "Password1",
            "iloveyou",
            "12345678",
            "QwErTyUiOp",
        ] {
            let err = Password::parse(common.into()).expect_err(common);
            assert!(err.description.contains("most commonly used"), "{common}");
            assert!(
                !err.description.contains("iloveyou"),
                "no value in the message"
            );
        }
        assert!(Password::parse("plum-tractor-galaxy".into()).is_ok());
    }

    #[test]
    fn control_characters_are_refused_before_anything_else() {
        for bad in ["abcdefgh\0", "abcdefgh\r\n", "abc\u{202E}defgh"] {
            assert!(Password::parse(bad.into()).is_err(), "{bad:?}");
            assert!(
                Password::presented("password", bad.into()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_current_password_is_needed_for_a_credential_change_and_read_whenever_given() {
        let missing = Password::current(None, true).unwrap_err();
        assert_eq!(missing.field, "current_password");
        assert!(missing.description.contains("required"), "{missing:?}");
        assert!(Password::current(None, false).unwrap().is_none());
        for needed in [true, false] {
            let given = Password::current(Some("old secret".into()), needed).unwrap();
            assert_eq!(given.expect("kept").expose(), "old secret");
            for bad in [String::new(), "abc\r\ndef".into(), "x".repeat(MAX_LEN + 1)] {
                let err = Password::current(Some(bad.clone()), needed).unwrap_err();
                assert_eq!(err.field, "current_password", "{bad:?}");
                assert!(!err.description.contains("abc"), "no value in the message");
            }
        }
    }

    #[test]
    fn a_presented_password_follows_only_the_character_and_length_bounds() {
        assert!(Password::presented("password", "secret".into()).is_ok());
        assert!(Password::presented("password", String::new()).is_err());
        assert!(Password::presented("password", "x".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn never_printed() {
        let password = Password::parse("hunter22-and-more".into()).unwrap();
        assert!(!format!("{password:?}").contains("hunter22"));
    }
}
