//! What a call says about its caller: the bearer token in `authorization`, the client's
//! address and user agent. Values from the client are untrusted: a malformed header is
//! UNAUTHENTICATED, and what is stored is bounded and stripped of control characters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tonic::{Status, metadata::MetadataMap};

/// The longest user agent kept with a session, in characters.
pub const MAX_USER_AGENT: usize = 256;

/// The one answer for every missing, malformed, forged, expired or revoked access token.
pub fn unauthenticated() -> Status {
    Status::unauthenticated("missing, invalid or expired access token")
}

/// The token of `authorization: bearer <token>` (the scheme in any case).
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    bearer_header(metadata.as_ref()).ok_or_else(unauthenticated)
}

/// The token of an `authorization: bearer <token>` header (the scheme in any case), if there
/// is exactly one, well-formed. Two are refused, not one of them picked: a proxy and the
/// service could each take a different one.
pub fn bearer_header(headers: &tonic::codegen::http::HeaderMap) -> Option<&str> {
    let mut values = headers.get_all("authorization").iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The peer's IP address (the direct peer: forwarding headers are not trusted). Unknown
/// peers (none over TCP) share one throttling bucket.
pub fn client_ip<T>(request: &tonic::Request<T>) -> IpAddr {
    crate::connection::ConnInfo::of(request.extensions())
        .and_then(crate::connection::ConnInfo::remote_addr)
        .or_else(|| request.remote_addr())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| {
            addr.ip().to_canonical()
        })
}

/// What one client is counted as, by the sign-in throttle and the connection limit: an IPv4
/// address itself (also when it comes IPv4-mapped), an IPv6 address's /64 (a host is usually
/// given a whole /64, so counting single IPv6 addresses would bound nothing).
pub fn counted_address(address: &IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => *address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(*v6) & !(u64::MAX as u128))),
        },
    }
}

/// The `user-agent` the client sent, without control or format characters, at most
/// [`MAX_USER_AGENT`] characters.
pub fn user_agent(metadata: &MetadataMap) -> String {
    let raw = metadata
        .get("user-agent")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    raw.chars()
        .filter(|c| !simplebank_core::domain::is_refused_char(*c))
        .take(MAX_USER_AGENT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn with(name: &'static str, value: &[u8]) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Ok(value) = MetadataValue::try_from(value) {
            metadata.insert(name, value);
        }
        metadata
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            bearer(&with("authorization", b"bearer abc")).unwrap(),
            "abc"
        );
        assert_eq!(
            bearer(&with("authorization", b"Bearer abc")).unwrap(),
            "abc"
        );
        for bad in [&b"abc"[..], b"basic abc", b"bearer ", b"bearer", b""] {
            let err = bearer(&with("authorization", bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert!(bearer(&MetadataMap::new()).is_err());
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut metadata = with("authorization", b"bearer abc");
        metadata.append("authorization", MetadataValue::from_static("bearer def"));
        let err = bearer(&metadata).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // The same token twice is still two headers.
        let mut metadata = with("authorization", b"bearer abc");
        metadata.append("authorization", MetadataValue::from_static("bearer abc"));
        assert!(bearer(&metadata).is_err());
    }

    #[test]
    fn user_agents_are_bounded_and_clean() {
        let agent = user_agent(&with(
            "user-agent",
            "grpcurl\u{202E}/1.9\u{200B}\u{2028} (x\u{2029})".as_bytes(),
        ));
        assert_eq!(agent, "grpcurl/1.9 (x)");
        let long = "x".repeat(10_000);
        assert_eq!(
            user_agent(&with("user-agent", long.as_bytes())).len(),
            MAX_USER_AGENT
        );
        assert_eq!(user_agent(&MetadataMap::new()), "");
    }
}
