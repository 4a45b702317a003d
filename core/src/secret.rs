//! A wrapper for values that must never be printed: passwords, connection strings with
//! credentials, secret codes; and the making of secret codes (random, or derived from a key).

use std::fmt;

/// Holds a secret value. `Debug` and `Display` print `[redacted]`; the value is read with
/// [`Secret::expose`], which makes each use visible in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`, from now on printed as `[redacted]`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself. Named so that every read of a secret stands out in review.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Length of verification codes: 32 characters of `[A-Za-z0-9]`, over 190 random bits.
pub const SECRET_CODE_LEN: usize = 32;

/// A random code of `len` characters from `[A-Za-z0-9]`, drawn from the operating system's
/// CSPRNG (about 5.95 bits per character; 32 characters give over 190 bits).
pub fn random_code(len: usize) -> Secret<String> {
    use argon2::password_hash::rand_core::{OsRng, RngCore};

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 248 = 4 * 62: bytes at or above it are dropped so every character is equally likely.
    const LIMIT: u8 = 248;
    let mut code = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while code.len() < len {
        OsRng.fill_bytes(&mut buf);
        for byte in buf.iter().filter(|b| **b < LIMIT) {
            if code.len() == len {
                break;
            }
            code.push(char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]));
        }
    }
    Secret::new(code)
}

/// The least length of a key for [`derive_code`], in bytes (256 bits, HMAC-SHA256's strength).
pub const MIN_CODE_KEY_LEN: usize = 32;

/// The code of `subject` under `key`: HMAC-SHA256 of `subject`, encoded as `len` characters of
/// `[A-Za-z0-9]` (unbiased, as [`random_code`]). The same key and subject always give the same
/// code, so every process holding the key agrees on it; without the key it cannot be guessed.
pub fn derive_code(key: &Secret<Vec<u8>>, subject: &str, len: usize) -> Secret<String> {
    use hmac::{Hmac, Mac};

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const LIMIT: u8 = 248;
    let mut code = String::with_capacity(len);
    // Each block is one MAC over (counter, subject); about 31 of its 32 bytes are usable.
    let mut counter = 0u32;
    while code.len() < len {
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key.expose()) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(&counter.to_be_bytes());
        mac.update(subject.as_bytes());
        for byte in mac.finalize().into_bytes().iter().filter(|b| **b < LIMIT) {
            if code.len() == len {
                break;
            }
            code.push(char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]));
        }
        counter += 1;
    }
    Secret::new(code)
}

#[cfg(test)]
mod tests {
    use super::{Secret, derive_code, random_code};

    #[test]
    fn derived_codes_depend_on_key_and_subject_only() {
        let key = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec());
        let other = Secret::new(b"0123456789abcdef0123456789abcdeF".to_vec());
        let a = derive_code(&key, "task-1", 32);
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(a.expose(), derive_code(&key, "task-1", 32).expose());
        assert_ne!(a.expose(), derive_code(&key, "task-2", 32).expose());
        assert_ne!(a.expose(), derive_code(&other, "task-1", 32).expose());
        // Longer than one MAC block: the counter feeds more blocks.
        let long = derive_code(&key, "task-1", 100);
        assert_eq!(long.expose().len(), 100);
        assert!(long.expose().starts_with(a.expose().as_str()));
    }

    #[test]
    fn random_codes() {
        let a = random_code(32);
        let b = random_code(32);
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn never_printed() {
        let secret = Secret::new("hunter22".to_string());
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(secret.expose(), "hunter22");
    }
}
