//! Password hashing with argon2id. CPU-heavy by design: call it from a blocking thread
//! (`tokio::task::spawn_blocking`), never on the async executor.

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};

use crate::{domain::Password, secret::Secret};

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(argon2::password_hash::Error);

/// Hashes `password` with argon2id (the crate's default parameters: 19 MiB, 2 passes) and a
/// random salt, in PHC string format.
pub fn hash(password: &Password) -> Result<Secret<String>, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|hash| Secret::new(hash.to_string()))
        .map_err(HashError)
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_with_argon2id_and_verifies() {
        let password = Password::parse("secret1".into()).unwrap();
        let hashed = hash(&password).unwrap();
        assert!(hashed.expose().starts_with("$argon2id$"));
        assert!(verify("secret1", hashed.expose()));
        assert!(!verify("secret2", hashed.expose()));
        assert_ne!(hash(&password).unwrap().expose(), hashed.expose(), "salted");
    }
}
