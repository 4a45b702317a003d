//! `ADMIN_TOKEN` on the admin listener, as a tower layer in front of every service there
//! (QueueAdmin, reflection, health): a call without `authorization: bearer <ADMIN_TOKEN>` is
//! answered UNAUTHENTICATED before its body is read. A missing, malformed and wrong token get
//! the same message, so a caller learns nothing about which it was.
//!
//! The comparison takes the same time whatever the token sent: both sides are hashed with
//! SHA-256 (so the length of the expected token does not show either) and the digests are
//! compared in constant time (`subtle`). The token is never logged.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sha2::{Digest, Sha256};
use simplebank_core::secret::Secret;
use subtle::ConstantTimeEq;
use tonic::{Status, codegen::http};
use tower::{Layer, Service};

use crate::auth::bearer_header;

/// The one answer to a call without the right token.
pub fn unauthenticated() -> Status {
    Status::unauthenticated("missing or invalid admin token")
}

/// Checks `ADMIN_TOKEN` on every call; `None` lets every call through (a loopback listener
/// without a token).
#[derive(Clone)]
pub struct AdminAuthLayer {
    expected: Option<Arc<[u8; 32]>>,
}

impl std::fmt::Debug for AdminAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuthLayer")
            .field("token", &self.expected.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl AdminAuthLayer {
    pub fn new(token: Option<&Secret<String>>) -> Self {
        Self {
            expected: token.map(|token| Arc::new(digest(token.expose().as_bytes()))),
        }
    }

    /// Whether `headers` carry the token (always true without one configured).
    fn allows(&self, headers: &http::HeaderMap) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        // A missing header is compared too, against a digest no token has: the same work.
        let sent = digest(bearer_header(headers).unwrap_or_default().as_bytes());
        bool::from(sent.ct_eq(expected.as_ref())) && bearer_header(headers).is_some()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl<S> Layer<S> for AdminAuthLayer {
    type Service = AdminAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdminAuth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminAuth<S> {
    inner: S,
    layer: AdminAuthLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AdminAuth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if !self.layer.allows(request.headers()) {
            return Box::pin(async { Ok(unauthenticated().into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = value {
            headers.insert("authorization", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn only_the_token_passes() {
        let token = Secret::new("0123456789abcdef0123456789abcdef".to_owned());
        let layer = AdminAuthLayer::new(Some(&token));
        assert!(layer.allows(&headers(Some("bearer 0123456789abcdef0123456789abcdef"))));
        assert!(layer.allows(&headers(Some("Bearer 0123456789abcdef0123456789abcdef"))));
        for bad in [
            None,
            Some(""),
            Some("bearer"),
            Some("bearer "),
            Some("0123456789abcdef0123456789abcdef"),
            Some("basic 0123456789abcdef0123456789abcdef"),
            Some("bearer 0123456789abcdef0123456789abcde"),
            Some("bearer 0123456789abcdef0123456789abcdef0"),
            Some("bearer 0123456789abcdef0123456789abcdeF"),
        ] {
            assert!(!layer.allows(&headers(bad)), "{bad:?}");
        }
        // The token beside a second header, before or after it.
        for second in ["bearer x", "basic x"] {
            let mut both = headers(Some("bearer 0123456789abcdef0123456789abcdef"));
            both.append("authorization", second.parse().unwrap());
            assert!(!layer.allows(&both), "{second:?} after");
            let mut both = headers(Some(second));
            both.append(
                "authorization",
                "bearer 0123456789abcdef0123456789abcdef".parse().unwrap(),
            );
            assert!(!layer.allows(&both), "{second:?} before");
        }
        assert!(AdminAuthLayer::new(None).allows(&headers(None)));
        assert!(!format!("{layer:?}").contains("0123"));
    }
}
