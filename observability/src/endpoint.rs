//! The OTLP endpoint and protocol of each signal, read from the environment and checked at
//! start: its own variable (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) when set, else `OTEL_EXPORTER_OTLP_ENDPOINT`; the
//! protocol likewise (`..._PROTOCOL`: `grpc`, the default, or `http/protobuf`). The exporters
//! are then given the checked value, so the variable an error names is the one in use. A bad
//! value stops the program at start; left to the exporter, `ftp://` or port 99999 failed at
//! every export instead. Messages never contain the value: an endpoint may carry
//! `user:password@` (refused: it would be sent in clear).

use crate::InitError;

/// The common variable, for both signals.
pub const COMMON_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Traces only.
pub const TRACES_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Metrics only.
pub const METRICS_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";

/// One signal's variables: its endpoint's, its protocol's and the path OTLP/HTTP appends to
/// the common endpoint for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignalVars {
    pub endpoint: &'static str,
    pub protocol: &'static str,
    pub http_path: &'static str,
}

/// Traces'.
pub(crate) const TRACES: SignalVars = SignalVars {
    endpoint: TRACES_VAR,
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    http_path: "v1/traces",
};

/// Metrics'.
pub(crate) const METRICS: SignalVars = SignalVars {
    endpoint: METRICS_VAR,
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    http_path: "v1/metrics",
};

/// The common protocol variable.
pub const COMMON_PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";

/// How a signal is sent to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (port 4317 by convention): the default, as before this setting existed.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, `POST /v1/traces`): one HTTP/1.1 request a
    /// batch, which cost the exporting process less CPU than HTTP/2's framing
    /// (BENCHMARKS.md, scenario 7).
    HttpProtobuf,
}

/// A checked endpoint, the variable it came from and the protocol it is spoken with. For
/// OTLP/HTTP `url` is the whole URL requests go to: the signal's own variable as given, or the
/// common one with the signal's path (`v1/traces`) appended, as the specification says.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub variable: &'static str,
    pub url: String,
    pub protocol: Protocol,
}

/// The endpoint of `signal`, if any is set (blank is unset), and its protocol, checked.
pub(crate) fn for_signal(signal: SignalVars) -> Result<Option<Endpoint>, InitError> {
    // The protocol is checked whether an endpoint is set or not: a bad value stops the program.
    let protocol = protocol(signal)?;
    let Some((variable, value)) = first_set([signal.endpoint, COMMON_VAR])? else {
        return Ok(None);
    };
    let url = value.trim();
    check(url, protocol).map_err(|message| invalid(variable, message))?;
    Ok(Some(Endpoint {
        variable,
        url: request_url(
            url,
            protocol,
            (variable == COMMON_VAR).then_some(signal.http_path),
        ),
        protocol,
    }))
}

/// The URL a checked `url` is used as: for OTLP/HTTP from the common variable, with the
/// signal's path `common_path` appended to whatever path it has (the specification's rule); as
/// given otherwise.
fn request_url(url: &str, protocol: Protocol, common_path: Option<&str>) -> String {
    match (protocol, common_path) {
        (Protocol::HttpProtobuf, Some(path)) => format!("{}/{path}", url.trim_end_matches('/')),
        _ => url.to_owned(),
    }
}

/// The protocol `signal` is exported with: its own variable, else the common one, else gRPC.
/// Values are case-insensitive (enumerations in the configuration specification).
pub(crate) fn protocol(signal: SignalVars) -> Result<Protocol, InitError> {
    let Some((variable, value)) = first_set([signal.protocol, COMMON_PROTOCOL_VAR])? else {
        return Ok(Protocol::Grpc);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err(invalid(
            variable,
            "http/json is not supported by this build: use http/protobuf or grpc".into(),
        )),
        _ => Err(invalid(variable, "must be grpc or http/protobuf".into())),
    }
}

/// The first of `vars` (a signal's own variable, then the common one) set to something other
/// than blanks, with its name; an `OTEL_EXPORTER_OTLP_*` setting's lookup.
pub(crate) fn first_set(
    vars: [&'static str; 2],
) -> Result<Option<(&'static str, String)>, InitError> {
    for variable in vars {
        match std::env::var(variable) {
            Ok(value) if value.trim().is_empty() => {}
            Ok(value) => return Ok(Some((variable, value))),
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(invalid(variable, "is not valid UTF-8".into()));
            }
        }
    }
    Ok(None)
}

pub(crate) fn invalid(variable: &'static str, message: String) -> InitError {
    InitError::Setting { variable, message }
}

const EXAMPLE: &str = "http://localhost:4317";
const HTTP_EXAMPLE: &str = "http://localhost:4318";

/// Whether `url` is an `http://host:port` URL with a port in 1-65535 (a trailing `/` allowed);
/// the reason if not, without the value. The port is required (without one the exporter
/// dials 80, not 4317 or 4318). For gRPC a path is refused (the gRPC exporter drops it, so a
/// collector behind a path-routing proxy would silently get nothing); for OTLP/HTTP a path is
/// part of the URL, a query or fragment is refused.
fn check(url: &str, protocol: Protocol) -> Result<(), String> {
    let (kind, example) = match protocol {
        Protocol::Grpc => ("OTLP/gRPC", EXAMPLE),
        Protocol::HttpProtobuf => ("OTLP/HTTP", HTTP_EXAMPLE),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "must be an http:// URL of an {kind} collector, such as {example}"
        ));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "https endpoints are not supported by this build (its OTLP exporter has no TLS); \
             use a collector on loopback or plain http, such as {example}"
        ));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "must be an http:// URL of an {kind} collector, such as {example}; the scheme is not http"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let (authority, after) = rest
        .find(['/', '?', '#'])
        .map_or((rest, ""), |at| rest.split_at(at));
    match protocol {
        Protocol::Grpc if !after.is_empty() && after != "/" => {
            return Err(
                "has a path, query or fragment, which the OTLP/gRPC exporter ignores: give only \
                 http://host:port"
                    .into(),
            );
        }
        Protocol::HttpProtobuf if after.contains(['?', '#']) => {
            return Err("has a query or fragment: give http://host:port or a path".into());
        }
        Protocol::HttpProtobuf if !after.is_ascii() => {
            return Err("has a path with characters beyond ASCII: percent-encode them".into());
        }
        // What a request line cannot carry (`<`, `>`, a backtick...).
        Protocol::HttpProtobuf if !after.is_empty() && after.parse::<hyper::Uri>().is_err() => {
            return Err(
                "has a path with characters a request cannot carry: percent-encode them".into(),
            );
        }
        _ => {}
    }
    // OTLP has no use for `user:password@`: the client would send it in clear (gRPC in the
    // `:authority` header, which RFC 9113 forbids), where proxies and collectors log it.
    if authority.contains('@') {
        return Err(
            "has user information (user:password@), which would be sent in clear as part of \
             the request; give credentials in OTEL_EXPORTER_OTLP_HEADERS instead \
             (authorization=Basic%20...)"
                .into(),
        );
    }
    let host_port = authority;
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err("has an IPv6 address without its closing `]`".into());
        };
        // A zone (`%25eth0`) follows the address: the gRPC client dials it, the HTTP one
        // would not find it.
        if protocol == Protocol::HttpProtobuf && ip.contains('%') {
            return Err(
                "has an IPv6 zone (%25...), which OTLP/HTTP does not dial: give the address alone"
                    .into(),
            );
        }
        let address = ip.split('%').next().unwrap_or_default();
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("has brackets that do not hold an IPv6 address".into());
        }
        let port = match after {
            "" => None,
            after => Some(
                after
                    .strip_prefix(':')
                    .ok_or("has text after the IPv6 address's `]` that is not a port")?,
            ),
        };
        (ip, port)
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!("has no host; it must look like {example}"));
    }
    if !host.is_ascii() {
        return Err(
            "has a host with characters beyond ASCII: give its ASCII form (xn--...)".into(),
        );
    }
    // A name or an IPv4 address (an IPv6 one is in brackets, checked above): no `%`-escape,
    // no `:` (`http://::1:4318` would be dialled as `[::1]` and sent as another host).
    if !host_port.starts_with('[')
        && !host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_'))
    {
        return Err(
            "has a host that is not a name or an address (an IPv6 address goes in brackets: \
             http://[::1]:4318)"
                .into(),
        );
    }
    let Some(port) = port else {
        return Err(format!(
            "has no port (the exporter would dial 80; OTLP/gRPC is 4317, OTLP/HTTP 4318), such \
             as {example}"
        ));
    };
    if !port.bytes().all(|byte| byte.is_ascii_digit())
        || !port.parse::<u16>().is_ok_and(|port| port != 0)
    {
        return Err("has a port that is not a number from 1 to 65535".into());
    }
    Ok(())
}

/// The exporter's own error, for a message: without `url`, which it may quote.
pub(crate) fn redacted(err: &opentelemetry_otlp::ExporterBuildError, url: &str) -> String {
    let text = err.to_string();
    if url.is_empty() {
        text
    } else {
        text.replace(url, "<the endpoint>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host_and_a_valid_port_pass() {
        for good in [
            "http://localhost:4317",
            "HTTP://127.0.0.1:4317",
            "http://[::1]:4317",
            "http://[fe80::1%25eth0]:4317",
            "http://collector:4317/",
        ] {
            assert_eq!(check(good, Protocol::Grpc), Ok(()), "{good}");
        }
        for bad in [
            "collector:4317",
            "https://user:secret@collector:4317",
            "ftp://collector:4317",
            "unix:///tmp/otlp.sock",
            "http://[::1",
            "http://[::1]x",
            "http://[::1]",
            "http://collector",
            "http://[S3CR3T]:4317",
            "http://user:secret@collector:4317/prefix",
            "http://user:secret@collector:4317",
            "http://user@collector:4317",
            "http://collector:4317?x=1",
            "http://collector:99999",
            "http://collector:0",
            "http://collector:",
            "http://collector:abc",
            "http://",
            "http://:4317",
            "http://user:pw@:4317",
            "http://coll ector:4317",
            "http://collector:4317\r\n",
            "http://collector:+4317",
            "http://c\u{f6}llector:4317",
            "http://a:S3CR3T:4317",
            "http://coll%41ector:4317",
            "http://::1:4317",
        ] {
            let err = check(bad, Protocol::Grpc).expect_err(bad);
            assert!(
                !err.contains(bad) || EXAMPLE.contains(bad),
                "the value is never shown: {bad:?}: {err}"
            );
        }
        assert!(
            check("https://x", Protocol::Grpc)
                .unwrap_err()
                .contains("https endpoints are not supported by this build")
        );
    }

    #[test]
    fn otlp_http_takes_a_path_and_appends_the_signals_to_the_common_endpoint() {
        for good in [
            "http://localhost:4318",
            "http://collector:4318/",
            "http://collector:4318/otlp/v1/traces",
            "http://[::1]:4318/v1/traces",
            "http://collector:4318/a%20b",
        ] {
            assert_eq!(check(good, Protocol::HttpProtobuf), Ok(()), "{good}");
        }
        for bad in [
            "http://collector:4318/v1/traces?key=S3CR3T",
            "http://collector:4318/v1/traces#S3CR3T",
            "http://user:S3CR3T@collector:4318/v1/traces",
            "http://collector/v1/traces",
            "https://collector:4318",
            "http://collector:4318/v1/tr\u{e4}ces",
            "http://collector:4318/v1/traces\r\nX: S3CR3T",
            "http://collector:4318/\u{202e}S3CR3T",
            "http://collector:4318/v1/<S3CR3T>",
            "http://collector:4318/v1/`S3CR3T`",
            "http://[::1%25S3CR3T]:4318",
            "http://S3CR3T\u{f6}:4318",
            "http://collector:+4318",
            "http://S3CR3T:b:4318",
            "http://S3CR3T%41:4318",
            "http://::1:4318",
        ] {
            let err = check(bad, Protocol::HttpProtobuf).expect_err(bad);
            assert!(
                !err.contains("S3CR3T"),
                "the value is never shown: {bad:?}: {err}"
            );
        }
        // A gRPC endpoint still refuses a path.
        assert!(check("http://collector:4317/v1/traces", Protocol::Grpc).is_err());
        // The specification's rule: the common endpoint gets the signal's path, a signal's own
        // endpoint is used as given.
        let http = Protocol::HttpProtobuf;
        for (url, expected) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("http://c:4318/otlp/", "http://c:4318/otlp/v1/traces"),
        ] {
            assert_eq!(request_url(url, http, Some("v1/traces")), expected);
        }
        assert_eq!(
            request_url("http://c:4318/in", http, None),
            "http://c:4318/in"
        );
        assert_eq!(
            request_url("http://c:4317", Protocol::Grpc, Some("v1/traces")),
            "http://c:4317"
        );
    }
}
