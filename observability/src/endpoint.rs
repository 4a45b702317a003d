//! The OTLP endpoint of each signal, read from the environment and checked at start: its own
//! variable (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) when
//! set, else `OTEL_EXPORTER_OTLP_ENDPOINT`. The exporters are then given the checked value, so
//! the variable an error names is the one in use. A bad value stops the program at start; left
//! to the exporter, `ftp://` or port 99999 failed at every export instead. Messages never
//! contain the value: an endpoint may carry `user:password@` (refused: gRPC would send it in
//! clear).

use crate::InitError;

/// The common variable, for both signals.
pub const COMMON_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Traces only.
pub const TRACES_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Metrics only.
pub const METRICS_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";

/// A checked endpoint and the variable it came from.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub variable: &'static str,
    pub url: String,
}

/// The endpoint of the signal whose own variable is `signal_var`, if any is set (blank is
/// unset), checked.
pub(crate) fn for_signal(signal_var: &'static str) -> Result<Option<Endpoint>, InitError> {
    let Some((variable, value)) = first_set([signal_var, COMMON_VAR])? else {
        return Ok(None);
    };
    let url = value.trim();
    check(url).map_err(|message| invalid(variable, message))?;
    Ok(Some(Endpoint {
        variable,
        url: url.to_owned(),
    }))
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

/// Whether `url` is an `http://host:port` URL with a port in 1-65535 (a trailing `/` allowed);
/// the reason if not, without the value. The port is required (without one the exporter
/// dials 80, not 4317), and a path is refused (the gRPC exporter drops it, so a collector
/// behind a path-routing proxy would silently get nothing).
fn check(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "must be an http:// URL of an OTLP/gRPC collector, such as {EXAMPLE}"
        ));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "https endpoints are not supported by this build (its OTLP exporter has no TLS); \
             use a collector on loopback or plain http, such as {EXAMPLE}"
        ));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "must be an http:// URL of an OTLP/gRPC collector, such as {EXAMPLE}; the scheme is not http"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let (authority, after) = rest
        .find(['/', '?', '#'])
        .map_or((rest, ""), |at| rest.split_at(at));
    if !after.is_empty() && after != "/" {
        return Err(
            "has a path, query or fragment, which the OTLP/gRPC exporter ignores: give only \
             http://host:port"
                .into(),
        );
    }
    // OTLP/gRPC has no use for `user:password@`: the gRPC client would send it in clear in
    // the `:authority` header (which RFC 9113 forbids), where proxies and collectors log it.
    if authority.contains('@') {
        return Err(
            "has user information (user:password@), which gRPC would send in clear as part of \
             the :authority header; give credentials in OTEL_EXPORTER_OTLP_HEADERS instead \
             (authorization=Basic%20...)"
                .into(),
        );
    }
    let host_port = authority;
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err("has an IPv6 address without its closing `]`".into());
        };
        // A zone (`%25eth0`) follows the address.
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
        return Err(format!("has no host; it must look like {EXAMPLE}"));
    }
    let Some(port) = port else {
        return Err(format!(
            "has no port (the exporter would dial 80; OTLP/gRPC is 4317), such as {EXAMPLE}"
        ));
    };
    if !port.parse::<u16>().is_ok_and(|port| port != 0) {
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
            assert_eq!(check(good), Ok(()), "{good}");
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
        ] {
            let err = check(bad).expect_err(bad);
            assert!(
                !err.contains(bad) || EXAMPLE.contains(bad),
                "the value is never shown: {bad:?}: {err}"
            );
        }
        assert!(
            check("https://x")
                .unwrap_err()
                .contains("https endpoints are not supported by this build")
        );
    }
}
