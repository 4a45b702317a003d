//! A wrapper for values that must never be printed: passwords, connection strings with
//! credentials, secret codes.

use std::fmt;

/// Holds a secret value. `Debug` and `Display` print `[redacted]`; the value is read with
/// [`Secret::expose`], which makes each use visible in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

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

#[cfg(test)]
mod tests {
    use super::{Secret, random_code};

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
