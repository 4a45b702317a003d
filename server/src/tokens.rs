//! Access tokens: PASETO v4.local (XChaCha20 + BLAKE2b, from the `pasetors` crate), encrypted
//! and authenticated with the server's 32-byte symmetric key. A token carries its session id
//! (`sid`), the username (`sub`), issued-at, not-before, expiry and a token id (`jti`); nothing
//! in it is readable without the key. A token is honoured only while its session is live
//! (checked in the database by `crate::auth`), so logout and a password change end it early.

use std::time::Duration;

use pasetors::{
    Local,
    claims::{Claims, ClaimsValidationRules},
    keys::SymmetricKey,
    local,
    token::UntrustedToken,
    version4::V4,
};
use simplebank_core::secret::Secret;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

/// Length of `TOKEN_SYMMETRIC_KEY`, in bytes.
pub const KEY_LEN: usize = 32;

/// The development `TOKEN_SYMMETRIC_KEY` committed in app.env: public, so refused in
/// production (anyone could mint access tokens with it).
pub const DEVELOPMENT_KEY: &str = "dev-only-key-0123456789abcdefghi";

/// Bound into every token (authenticated, not stored in it): a token made for another purpose
/// with the same key is refused.
const IMPLICIT_ASSERTION: &[u8] = b"simplebank.v1 access token";

/// An access token's claims, once the token was decrypted and its times checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub session_id: Uuid,
    pub username: String,
    pub token_id: Uuid,
    pub expires_at: OffsetDateTime,
}

/// Why a token was refused (for logs; clients get one UNAUTHENTICATED for all of them).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed, forged, made with another key, or expired")]
    Invalid,
    #[error("the token lacks a claim: {0}")]
    MissingClaim(&'static str),
    #[error("the token could not be made")]
    Make,
}

/// Makes and checks access tokens. The key is held in a [`Secret`], so printing a maker
/// prints no key.
#[derive(Debug, Clone)]
pub struct TokenMaker {
    key: Secret<[u8; KEY_LEN]>,
    duration: Duration,
}

/// A new access token and when it expires.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret<String>,
    pub expires_at: OffsetDateTime,
}

impl TokenMaker {
    pub fn new(key: Secret<[u8; KEY_LEN]>, duration: Duration) -> Self {
        Self { key, duration }
    }

    fn key(&self) -> Result<SymmetricKey<V4>, TokenError> {
        SymmetricKey::from(self.key.expose()).map_err(|_| TokenError::Make)
    }

    /// A token for `username` in session `session_id`, valid for the maker's duration.
    pub fn make(&self, username: &str, session_id: Uuid) -> Result<AccessToken, TokenError> {
        let mut claims = Claims::new_expires_in(&self.duration).map_err(|_| TokenError::Make)?;
        claims.subject(username).map_err(|_| TokenError::Make)?;
        claims
            .token_identifier(&Uuid::new_v4().to_string())
            .map_err(|_| TokenError::Make)?;
        claims
            .add_additional("sid", session_id.to_string())
            .map_err(|_| TokenError::Make)?;
        let expires_at = claim_time(&claims, "exp").ok_or(TokenError::Make)?;
        let token = local::encrypt(&self.key()?, &claims, None, Some(IMPLICIT_ASSERTION))
            .map_err(|_| TokenError::Make)?;
        Ok(AccessToken {
            token: Secret::new(token),
            expires_at,
        })
    }

    /// Decrypts `token` and checks its times (`exp`, `nbf`, `iat`).
    pub fn check(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let untrusted =
            UntrustedToken::<Local, V4>::try_from(token).map_err(|_| TokenError::Invalid)?;
        let trusted = local::decrypt(
            &self.key()?,
            &untrusted,
            &ClaimsValidationRules::new(),
            None,
            Some(IMPLICIT_ASSERTION),
        )
        .map_err(|_| TokenError::Invalid)?;
        let claims = trusted
            .payload_claims()
            .ok_or(TokenError::MissingClaim("payload"))?;
        let text = |name: &'static str| {
            claims
                .get_claim(name)
                .and_then(|v| v.as_str())
                .ok_or(TokenError::MissingClaim(name))
        };
        let uuid = |name: &'static str| {
            text(name)?
                .parse::<Uuid>()
                .map_err(|_| TokenError::MissingClaim(name))
        };
        Ok(AccessClaims {
            session_id: uuid("sid")?,
            username: text("sub")?.to_owned(),
            token_id: uuid("jti")?,
            expires_at: claim_time(claims, "exp").ok_or(TokenError::MissingClaim("exp"))?,
        })
    }
}

fn claim_time(claims: &Claims, name: &str) -> Option<OffsetDateTime> {
    let raw = claims.get_claim(name)?.as_str()?;
    OffsetDateTime::parse(raw, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    /// The refused key is the one app.env really holds.
    #[test]
    fn the_development_key_is_app_envs() {
        let app_env = include_str!("../../app.env");
        assert!(
            app_env
                .lines()
                .any(|l| l == format!("TOKEN_SYMMETRIC_KEY={}", super::DEVELOPMENT_KEY)),
            "app.env and DEVELOPMENT_KEY differ"
        );
    }

    use super::*;

    fn maker(key: u8, duration: Duration) -> TokenMaker {
        TokenMaker::new(Secret::new([key; KEY_LEN]), duration)
    }

    #[test]
    fn a_token_round_trips_and_reveals_nothing_in_clear() {
        let maker = maker(7, Duration::from_secs(60));
        let session = Uuid::new_v4();
        let made = maker.make("alice", session).unwrap();
        assert!(made.token.expose().starts_with("v4.local."));
        assert!(!made.token.expose().contains("alice"));
        let claims = maker.check(made.token.expose()).unwrap();
        assert_eq!(claims.username, "alice");
        assert_eq!(claims.session_id, session);
        assert_eq!(claims.expires_at, made.expires_at);
        let again = maker.make("alice", session).unwrap();
        assert_ne!(
            maker.check(again.token.expose()).unwrap().token_id,
            claims.token_id
        );
    }

    #[test]
    fn another_key_a_changed_byte_or_garbage_is_refused() {
        let made = maker(7, Duration::from_secs(60))
            .make("alice", Uuid::new_v4())
            .unwrap();
        assert!(
            maker(8, Duration::from_secs(60))
                .check(made.token.expose())
                .is_err()
        );
        let mut tampered = made.token.expose().clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let maker = maker(7, Duration::from_secs(60));
        assert!(maker.check(&tampered).is_err());
        for garbage in [
            "",
            "v4.local.",
            "v4.public.abc",
            "v2.local.abc",
            "bearer",
            "\0\r\n",
        ] {
            assert!(maker.check(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn an_expired_token_is_refused() {
        let maker = maker(7, Duration::from_millis(1));
        let made = maker.make("alice", Uuid::new_v4()).unwrap();
        // Past its expiry (1 ms) by far: the expiry claim is checked to the nanosecond.
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(
            maker.check(made.token.expose()),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn the_key_is_never_printed() {
        let maker = maker(0x41, Duration::from_secs(60));
        assert!(!format!("{maker:?}").contains("65"));
        assert!(!format!("{maker:?}").contains("AAAA"));
    }
}
