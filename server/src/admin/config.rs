//! The admin listener's settings: `ADMIN_GRPC_ADDRESS` and `ADMIN_TOKEN`, checked together at
//! start. The token is a secret: it is never printed, and no error names its value.

use std::net::SocketAddr;

use simplebank_core::{config::ConfigError, secret::Secret};

/// Default `ADMIN_GRPC_ADDRESS`: loopback only.
pub const DEFAULT_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9091);

/// The value of `ADMIN_GRPC_ADDRESS` that turns the admin listener off.
pub const OFF: &str = "off";

/// The shortest `ADMIN_TOKEN` accepted, in characters (`openssl rand -hex 32` gives 64).
pub const MIN_TOKEN_LEN: usize = 32;
/// The longest `ADMIN_TOKEN` accepted, in characters.
pub const MAX_TOKEN_LEN: usize = 512;

/// The admin listener.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// `ADMIN_GRPC_ADDRESS`, default `127.0.0.1:9091`; `None` when set to `off`.
    pub address: Option<SocketAddr>,
    /// `ADMIN_TOKEN`: when set, every call on the admin listener needs
    /// `authorization: bearer <token>`. Required when the address is not loopback.
    pub token: Option<Secret<String>>,
}

impl AdminConfig {
    /// No admin listener (tests that do not use it).
    pub fn off() -> Self {
        Self::default()
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        const ADDRESS: &str = "ADMIN_GRPC_ADDRESS";
        let address = match std::env::var_os(ADDRESS) {
            None => Some(DEFAULT_ADDRESS),
            Some(raw) => parse_address(
                raw.to_str()
                    .ok_or_else(|| ConfigError::new(ADDRESS, "the value is not valid UTF-8"))?,
            )?,
        };
        let token = match std::env::var_os("ADMIN_TOKEN") {
            None => None,
            Some(raw) => Some(parse_token(raw.to_str().ok_or_else(|| {
                ConfigError::new("ADMIN_TOKEN", "the value is not valid UTF-8")
            })?)?),
        };
        Self { address, token }.validate()
    }

    /// A listener that other machines can reach must ask for a token.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if let Some(address) = self.address
            && !address.ip().to_canonical().is_loopback()
            && self.token.is_none()
        {
            return Err(ConfigError::new(
                "ADMIN_GRPC_ADDRESS",
                format!(
                    "{address} is not a loopback address, so ADMIN_TOKEN must be set (at least \
                     {MIN_TOKEN_LEN} characters; e.g. `openssl rand -hex 32`), or set \
                     ADMIN_GRPC_ADDRESS to a loopback address or `{OFF}`"
                ),
            ));
        }
        Ok(self)
    }
}

fn parse_address(raw: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let trimmed = raw.trim();
    if trimmed.eq_ignore_ascii_case(OFF) {
        return Ok(None);
    }
    if trimmed.is_empty() {
        // An empty value is a template not filled in: neither the default nor off.
        return Err(ConfigError::new(
            "ADMIN_GRPC_ADDRESS",
            format!("is empty: set an address (ip:port) or `{OFF}`"),
        ));
    }
    trimmed.parse().map(Some).map_err(|_| {
        ConfigError::new(
            "ADMIN_GRPC_ADDRESS",
            format!("expected ip:port or `{OFF}` (got {trimmed:?})"),
        )
    })
}

/// 32-512 visible ASCII characters (no space or control character: it travels in a header).
/// The messages say what is wrong, never what the value is.
fn parse_token(raw: &str) -> Result<Secret<String>, ConfigError> {
    const VAR: &str = "ADMIN_TOKEN";
    if raw.is_empty() {
        return Err(ConfigError::new(
            VAR,
            "is set but empty: set a token or unset the variable",
        ));
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            VAR,
            "must be visible ASCII characters only (no spaces, control or non-ASCII characters)",
        ));
    }
    if raw.len() < MIN_TOKEN_LEN || raw.len() > MAX_TOKEN_LEN {
        return Err(ConfigError::new(
            VAR,
            format!(
                "must be {MIN_TOKEN_LEN}-{MAX_TOKEN_LEN} characters (got {}); e.g. `openssl rand \
                 -hex 32`",
                raw.len()
            ),
        ));
    }
    Ok(Secret::new(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn with(address: &str, token: Option<&str>) -> Result<AdminConfig, ConfigError> {
        AdminConfig {
            address: parse_address(address)?,
            token: token.map(parse_token).transpose()?,
        }
        .validate()
    }

    #[test]
    fn addresses() {
        assert_eq!(
            with("127.0.0.1:9091", None).unwrap().address,
            Some(DEFAULT_ADDRESS)
        );
        assert!(with("[::1]:9091", None).is_ok());
        assert!(with("[::ffff:127.0.0.1]:9091", None).is_ok());
        for off in ["off", "OFF", " off "] {
            assert_eq!(with(off, None).unwrap().address, None);
        }
        for bad in ["", "  ", "localhost", "9091", "127.0.0.1", "x:1"] {
            let err = with(bad, None).unwrap_err();
            assert_eq!(err.var, "ADMIN_GRPC_ADDRESS", "{bad:?}");
        }
    }

    #[test]
    fn a_reachable_address_needs_a_token() {
        for reachable in ["0.0.0.0:9091", "[::]:9091", "10.0.0.1:9091"] {
            let err = with(reachable, None).unwrap_err();
            assert_eq!(err.var, "ADMIN_GRPC_ADDRESS");
            assert!(err.reason.contains("ADMIN_TOKEN"), "{}", err.reason);
            assert!(with(reachable, Some(TOKEN)).is_ok());
        }
    }

    #[test]
    fn tokens() {
        assert!(parse_token(TOKEN).is_ok());
        assert!(parse_token(&"x".repeat(MAX_TOKEN_LEN)).is_ok());
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        let bad = [
            "",
            "short",
            &TOKEN[1..],
            &long,
            "0123456789abcdef 0123456789abcdef",
            "0123456789abcdef\r\n0123456789abcdef",
            "0123456789abcdef\u{0}0123456789abcdef",
            "0123456789abcdef\u{202e}0123456789abcdef",
            "0123456789abcdefé0123456789abcdef",
        ];
        for bad in bad {
            let err = parse_token(bad).unwrap_err();
            assert_eq!(err.var, "ADMIN_TOKEN");
            assert!(
                bad.len() < 8 || !err.to_string().contains(&bad[..8]),
                "the message shows the value: {err}"
            );
        }
    }
}
