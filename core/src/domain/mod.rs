//! Validated input. Each type has private fields and a `parse` that returns a
//! [`FieldViolation`], so a value that got past the edge is known to be valid. Every `parse`
//! starts with `text::check_text`: no control or format character gets into any field.

mod email;
mod full_name;
mod password;
mod text;
mod username;

use text::check_text;
pub use text::{has_refused_chars, is_refused_char};

pub use email::{Email, mask};
pub use full_name::FullName;
pub use password::Password;
pub use username::Username;

/// One bad field: which one, and what is wrong with it (never the value itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field's name, as the API spells it (`username`, `email`, ...).
    pub field: &'static str,
    /// What is wrong with it, for the client to show.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`, described by `description`.
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

/// All the bad fields of one request, in request order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {}", self.fields().join(", "))]
pub struct ValidationError {
    /// The bad fields, at least one.
    pub violations: Vec<FieldViolation>,
}

impl ValidationError {
    /// The names of the bad fields, in request order.
    pub fn fields(&self) -> Vec<&'static str> {
        self.violations.iter().map(|v| v.field).collect()
    }
}

/// A sign-up request that passed validation.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The account's name and primary key.
    pub username: Username,
    /// The person's full name.
    pub full_name: FullName,
    /// The address to verify and mail to.
    pub email: Email,
    /// The new password, to be hashed before it is stored.
    pub password: Password,
}

impl NewUser {
    /// Validates every field and reports every bad one, not just the first.
    ///
    /// ```
    /// use simplebank_core::domain::NewUser;
    ///
    /// let password = String::from("plum-tractor-galaxy");
    /// let user = NewUser::parse("alice_1", "Alice Liddell", "alice@example.com", password.clone())
    ///     .expect("a valid request");
    /// assert_eq!(user.email.as_str(), "alice@example.com");
    ///
    /// let err = NewUser::parse("Alice!", "Alice Liddell", "not-an-email", password).unwrap_err();
    /// assert_eq!(err.fields(), ["username", "email"]);
    /// ```
    pub fn parse(
        username: &str,
        full_name: &str,
        email: &str,
        password: String,
    ) -> Result<Self, ValidationError> {
        let username = Username::parse(username);
        let full_name = FullName::parse(full_name);
        let email = Email::parse(email);
        let password = Password::parse(password);
        match (username, full_name, email, password) {
            (Ok(username), Ok(full_name), Ok(email), Ok(password)) => Ok(Self {
                username,
                full_name,
                email,
                password,
            }),
            (username, full_name, email, password) => Err(ValidationError {
                violations: [username.err(), full_name.err(), email.err(), password.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            }),
        }
    }
}

/// A validated UpdateUser request: the fields to change (at least one is set).
#[derive(Debug, Clone)]
pub struct UserUpdate {
    /// The new full name, if it changes.
    pub full_name: Option<FullName>,
    /// The new address, if it changes (it then needs verifying again).
    pub email: Option<Email>,
    /// The new password, if it changes.
    pub password: Option<Password>,
}

impl UserUpdate {
    /// Validates every field given, by the same rules as sign-up, and reports every bad one.
    /// `None` when no field is set.
    pub fn parse(
        full_name: Option<&str>,
        email: Option<&str>,
        password: Option<String>,
    ) -> Option<Result<Self, ValidationError>> {
        if full_name.is_none() && email.is_none() && password.is_none() {
            return None;
        }
        let full_name = full_name.map(FullName::parse).transpose();
        let email = email.map(Email::parse).transpose();
        let password = password.map(Password::parse).transpose();
        Some(match (full_name, email, password) {
            (Ok(full_name), Ok(email), Ok(password)) => Ok(Self {
                full_name,
                email,
                password,
            }),
            (full_name, email, password) => Err(ValidationError {
                violations: [full_name.err(), email.err(), password.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_bad_field_in_order() {
        let err = NewUser::parse("A!", "x", "not-an-email", "123".into()).unwrap_err();
        assert_eq!(err.fields(), ["username", "full_name", "email", "password"]);
        assert!(!err.to_string().contains("123"), "no value in the message");
    }

    #[test]
    fn accepts_a_good_request() {
        let user = NewUser::parse(
            "alice_1",
            "Alice O'Neil",
            "alice@example.com",
            "plum-tractor-galaxy".into(),
        )
        .unwrap();
        assert_eq!(user.username.as_str(), "alice_1");
    }

    #[test]
    fn an_update_validates_only_the_fields_it_sets() {
        assert!(UserUpdate::parse(None, None, None).is_none());
        let update = UserUpdate::parse(Some("Alice Smith"), None, None)
            .unwrap()
            .unwrap();
        assert!(update.email.is_none() && update.password.is_none());
        let err = UserUpdate::parse(
            Some("x"),
            Some("bad\r\n@example.com"),
            Some("password".into()),
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(err.fields(), ["full_name", "email", "password"]);
    }
}
