//! The Redis commands the queue runs, for a least-privilege ACL user: [`COMMANDS`], the key
//! patterns of a namespace ([`key_patterns`]) and the `ACL SETUSER` rules made of both
//! ([`setuser_rules`]). An application that runs commands of its own adds them
//! (simplebank's are `simplebank_core::keys::APP_COMMANDS`).
//!
//! **Every command the queue starts running goes into [`COMMANDS`]**, in the same change:
//! direct calls (`redis::cmd("...")`, pipelines) and the commands inside Lua scripts alike
//! (Redis checks a script's calls against the user's ACL too). A unit test reads this crate's
//! sources and fails on a command that is not listed; the ACL tests then run the queue as a
//! user allowed exactly this list.

use crate::keys::Namespace;

/// The commands the queue runs, lower case as ACL rules name them; `a|b` is subcommand `b` of
/// `a`. Grouped by who runs them.
pub const COMMANDS: &[&str] = &[
    // Health (the server's readiness check) and the programs' start-up check.
    "ping",
    "exists",
    // Scripts: EVALSHA, and SCRIPT LOAD when Redis does not hold the script yet.
    "evalsha",
    "script|load",
    // Publishing, and the queue lengths a publisher reports.
    "xadd",
    "xlen",
    "zcard",
    // The consumer group, reading and taking over; the queue registry (`{ns}:queues`) each
    // worker writes at start.
    "xgroup|create",
    "xgroup|createconsumer",
    "hset",
    "xreadgroup",
    "xautoclaim",
    "xpending",
    "xclaim",
    // Inside the scripts (settle, retry, dead-letter, promote, renew, enqueue) and the dead
    // letters' reads and deletes.
    "time",
    "get",
    "set",
    "del",
    "xack",
    "xdel",
    "xrange",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    // Reading the queues' state (stats script, registry) and the dead letters newest first.
    "xinfo|groups",
    "hget",
    "hgetall",
    "hmget",
    "xrevrange",
    // Counters (`{ns:q}:stats`) and dead-letter retention, inside the scripts.
    "hincrby",
    "xtrim",
    // Publishing with REDIS_WAIT_REPLICAS: WAIT pipelined after the enqueue.
    "wait",
    // On a Redis Cluster, run by the redis crate's cluster client: the slot map (at start,
    // after MOVED and after a failover) and the ASK redirection of a slot being migrated.
    "cluster|slots",
    "asking",
    // `simplebank-worker migrate-redis`: finding and moving keys of the old layout.
    "scan",
    "pttl",
    "zscore",
    // The admin operations (`admin`): whether a queue is registered, its consumers, a task
    // looked up by id in a sorted set (and SCAN, XPENDING, XRANGE, ZRANGE above); deleting
    // all of a queue's dead letters is a MULTI/EXEC transaction (XLEN, DEL).
    "hexists",
    "xinfo|consumers",
    "zscan",
    "multi",
    "exec",
    // The metrics' reader election (`{ns}:metrics:leader`): SET NX PX, then renewed (and
    // released) by scripts that GET it first.
    "pexpire",
];

/// Commands the queue (or the redis crate under it) tries but does without when an ACL
/// refuses them, so they are left out of the least-privilege user: `CONFIG GET` (the worker's
/// warning about `maxmemory-policy` and AOF), `CLIENT SETINFO` (the client library's name,
/// sent on connect; its reply is ignored) and `INFO` (the start-up check that `REDIS_CLUSTER`
/// matches the server's `cluster_enabled`, and the server's warning about too few replicas
/// for `REDIS_WAIT_REPLICAS`; skipped when refused).
pub const OPTIONAL: &[&str] = &["config|get", "client|setinfo", "info"];

/// The login of a new connection, which the redis crate sends on its own connections and the
/// worker's reads send on theirs (`connection::reader`): AUTH, which every user may run, and
/// SELECT, only for a database other than 0 (a least-privilege user on another database needs
/// `+select`, whichever connection logs in). Not in the user's rules.
pub const LOGIN: &[&str] = &["auth", "select"];

/// The key patterns of namespace `ns`: `~{ns}*` (the namespace-wide `{ns}:...` keys) and
/// `~{ns:*` (each queue's `{ns:<queue>}:...` keys). Names never contain `:`, `{` or `}`, so
/// these match no other namespace's keys.
pub fn key_patterns(ns: &Namespace) -> [String; 2] {
    [
        format!("~{{{}}}*", ns.as_str()),
        format!("~{{{}:*", ns.as_str()),
    ]
}

/// The rules of an `ACL SETUSER <user> reset on ><password> <rules...>` line for a user that may run
/// `commands` (this crate's [`COMMANDS`] and the application's) on the keys of `ns` only, and
/// nothing else: no other key, no channel, no other command. The password is not part of it.
pub fn setuser_rules<'a>(
    ns: &Namespace,
    commands: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut rules = vec!["resetkeys".to_owned()];
    rules.extend(key_patterns(ns));
    rules.push("resetchannels".to_owned());
    rules.push("-@all".to_owned());
    let mut commands: Vec<&str> = commands.into_iter().collect();
    commands.sort_unstable();
    commands.dedup();
    rules.extend(commands.into_iter().map(|c| format!("+{c}")));
    rules
}

/// The commands named in the Rust and Lua sources `text` (`cmd("XADD")`, `redis.call('GET'`),
/// lower case; test code (after `#[cfg(test)]`) is left out. For the tests that keep
/// [`COMMANDS`] and an application's list complete.
#[doc(hidden)]
pub fn commands_in_source(text: &str) -> Vec<String> {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = Vec::new();
    for marker in [
        "cmd(\"",
        "redis.call('",
        "redis.pcall('",
        "redis.call(\"",
        "redis.pcall(\"",
    ] {
        for (at, _) in text.match_indices(marker) {
            let name: String = text[at + marker.len()..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            if !name.is_empty() {
                found.push(name.to_ascii_lowercase());
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// Whether `command` (a bare name) is allowed by `list`: listed as is, or with a subcommand.
#[doc(hidden)]
pub fn is_listed(command: &str, list: &[&str]) -> bool {
    list.iter()
        .any(|entry| *entry == command || entry.split('|').next() == Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_in_the_queue_sources_is_listed() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.clone()];
        let mut missing = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy();
            // The test helpers (`testing.rs` and `testing/`, feature `test-util`) run admin
            // commands on private servers: not the queue's.
            let helper = path.parent().is_some_and(|dir| dir.ends_with("testing"));
            if name == "testing.rs" || helper || name.ends_with("_tests.rs") || name == "acl.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for command in commands_in_source(&text) {
                if ![COMMANDS, OPTIONAL, LOGIN]
                    .iter()
                    .any(|list| is_listed(&command, list))
                {
                    missing.push(format!("{command} ({})", path.display()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "add these to acl::COMMANDS (and ARCHITECTURE.md's list): {missing:?}"
        );
    }

    #[test]
    fn finds_commands_in_rust_and_lua() {
        let text = "redis::cmd(\"XADD\") ... redis.call('ZADD', KEYS[1]) redis.pcall(\"get\", k)\n\
                    #[cfg(test)] cmd(\"FLUSHALL\")";
        assert_eq!(commands_in_source(text), ["get", "xadd", "zadd"]);
        assert!(is_listed("xgroup", COMMANDS));
        assert!(!is_listed("flushall", COMMANDS));
    }

    #[test]
    fn rules_cover_the_namespace_only() {
        let ns = Namespace::parse("bank").unwrap();
        assert_eq!(
            setuser_rules(&ns, ["xadd", "get", "xadd"]),
            [
                "resetkeys",
                "~{bank}*",
                "~{bank:*",
                "resetchannels",
                "-@all",
                "+get",
                "+xadd"
            ]
        );
    }
}
