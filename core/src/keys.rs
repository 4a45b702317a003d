//! The Redis keys simplebank keeps beside the queue's (the queue's own are documented on
//! `simplebank_queue::Keys`). They are namespace-wide keys, under the `{ns}:` hash tag
//! (`Keys::namespaced`), never touched by a queue's script.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:login_failures:username:<username>` | zset | failed sign-ins for a username in the sliding window; score = time (ms, Redis clock), member = a random id; expires one window after the last failure |
//! | `{ns}:login_failures:address:<ip>` | zset | the same, per client IP address |
//!
//! [`APP_COMMANDS`] lists the Redis commands simplebank runs beside the queue's
//! (`simplebank_queue::acl::COMMANDS`); every new one goes there (a test reads the sources).

use simplebank_queue::{Keys, Namespace, acl};

/// The Redis commands simplebank's own code runs (the sign-in throttle's scripts), beyond the
/// queue's [`acl::COMMANDS`]. **Every command the server, the worker or this crate starts
/// running goes here or into the queue's list**; ARCHITECTURE.md shows both.
pub const APP_COMMANDS: &[&str] = &[
    "evalsha",
    "script|load",
    "time",
    "zremrangebyscore",
    "zcard",
    "zrange",
    "zadd",
    "zrem",
    "pexpire",
    "del",
];

/// The rules of the least-privilege ACL user of namespace `ns` (password not included): its
/// keys only, the queue's and simplebank's commands only. Production's line is
/// `ACL SETUSER <user> reset on ><password> ` followed by these (README, "Production deployment").
pub fn acl_setuser_rules(ns: &Namespace) -> Vec<String> {
    acl::setuser_rules(ns, acl::COMMANDS.iter().chain(APP_COMMANDS).copied())
}

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use simplebank_queue::{Namespace, acl};

    use super::{APP_COMMANDS, acl_setuser_rules};

    fn rust_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("source folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.file_name().is_some_and(|n| n != "testing.rs")
            {
                files.push(path);
            }
        }
    }

    #[test]
    fn every_command_in_the_applications_sources_is_listed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for crate_src in ["core/src", "server/src", "worker/src"] {
            rust_files(&root.join(crate_src), &mut files);
        }
        let mut missing = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).expect("read source");
            for command in acl::commands_in_source(&text) {
                if ![acl::COMMANDS, APP_COMMANDS, acl::OPTIONAL]
                    .iter()
                    .any(|list| acl::is_listed(&command, list))
                {
                    missing.push(format!("{command} ({})", path.display()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "add these to APP_COMMANDS (and ARCHITECTURE.md's list): {missing:?}"
        );
    }

    #[test]
    fn the_readme_shows_the_acl_user_of_the_code() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .expect("README.md");
        let line = format!(
            "ACL SETUSER simplebank reset on >CHANGE-ME {}",
            acl_setuser_rules(&Namespace::default()).join(" ")
        );
        assert!(
            readme.contains(&line),
            "README.md's production section must carry the ACL line of the code:\n{line}"
        );
    }
}
