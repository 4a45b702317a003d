//! The Redis keys simplebank keeps beside the queue's (the queue's own are documented on
//! `simplebank_queue::Keys`). They are namespace-wide keys, under the `{ns}:` hash tag
//! (`Keys::namespaced`), never touched by a queue's script.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:login_failures:username:<username>` | zset | failed sign-ins for a username in the sliding window; score = time (ms, Redis clock), member = a random id; expires one window after the last failure |
//! | `{ns}:login_failures:address:<ip>` | zset | the same, per client IP address |

use simplebank_queue::Keys;

/// The sign-in throttle's keys, on the queue's [`Keys`] of a namespace.
pub trait LoginFailureKeys {
    /// `{ns}:login_failures:username:<username>` (a validated username: `[a-z0-9_]`).
    fn login_failures_username(&self, username: &str) -> String;
    /// `{ns}:login_failures:address:<ip>`.
    fn login_failures_address(&self, ip: &std::net::IpAddr) -> String;
}

impl LoginFailureKeys for Keys {
    fn login_failures_username(&self, username: &str) -> String {
        self.namespaced(&format!("login_failures:username:{username}"))
    }

    fn login_failures_address(&self, ip: &std::net::IpAddr) -> String {
        self.namespaced(&format!("login_failures:address:{ip}"))
    }
}
