//! simplebank-core: everything about a sign-up that is not transport.
//!
//! - [`domain`]: validated input types (`Username`, `Email`, ...); an invalid value cannot exist.
//! - [`store`]: PostgreSQL access with sqlx (users, the task outbox, verification records).
//! - [`tasks`]: the task types this project defines (`send_verify_email`), on the queue crate
//!   (`simplebank_queue`), which core depends on and never the other way round.
//! - [`keys`]: the Redis keys of this project's own, outside the queue's (sign-in throttling).
//! - [`outbox`]: publishing committed outbox rows to Redis under a lease (no connection held
//!   across Redis), at least once, safe with many servers.
//! - [`report`]: an error and its causes as one line, for logs.
//! - [`config`]: reading the environment (and `app.env`) with errors naming the variable.
//!
//! The crate is a library for embedding: the server and the worker are thin users of it.

#![warn(missing_docs)]

pub mod config;
pub mod domain;
pub mod keys;
pub mod outbox;
pub mod password;
pub mod redis_client;
pub mod report;
pub mod secret;
pub mod store;
pub mod tasks;

#[cfg(feature = "test-util")]
pub mod testing;

/// The migrations in `migrations/` at the workspace root, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[cfg(test)]
mod tests {
    use sqlx::migrate::MigrationType;

    /// Every file in `migrations/` is embedded: fails when the binary carries a stale set
    /// (the build script's `rerun-if-changed` is what keeps it fresh). It can only catch a
    /// missing `rerun-if-changed` in an incremental build; a clean build embeds every file.
    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).expect("read migrations/") {
            let name = entry.expect("dir entry").file_name();
            let name = name.to_str().expect("UTF-8 file name");
            let Some(stem) = name.strip_suffix(".sql") else {
                continue;
            };
            let (stem, kind) = if let Some(stem) = stem.strip_suffix(".up") {
                (stem, MigrationType::ReversibleUp)
            } else if let Some(stem) = stem.strip_suffix(".down") {
                (stem, MigrationType::ReversibleDown)
            } else {
                (stem, MigrationType::Simple)
            };
            let (version, description) = stem.split_once('_').expect("<version>_<name>.sql");
            let version: i64 = version.parse().expect("numeric version");
            let description = description.replace('_', " ");
            files += 1;
            assert!(
                super::MIGRATOR.iter().any(|m| m.version == version
                    && m.migration_type == kind
                    && m.description == description),
                "migrations/{name} is not embedded in MIGRATOR: the build is stale"
            );
        }
        assert!(files > 0, "no migration files found in {}", dir.display());
    }

    /// `make new_migration` refuses a name that is not letters, digits and underscores, and
    /// writes nothing (run on a copy of the Makefile in a folder of its own).
    #[test]
    fn new_migration_refuses_names_that_are_not_identifiers() {
        let root = crate::testing::TempDir::new();
        let makefile = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Makefile");
        std::fs::copy(makefile, root.0.join("Makefile")).expect("copy the Makefile");
        let migrations = root.0.join("migrations");
        std::fs::create_dir(&migrations).expect("migrations/");
        let make = |name: Option<&str>| {
            let mut command = std::process::Command::new("make");
            command
                .current_dir(&root.0)
                .env_remove("MAKEFLAGS")
                .env_remove("MFLAGS")
                .args(["-s", "new_migration"]);
            if let Some(name) = name {
                command.arg(format!("name={name}"));
            }
            command.output().expect("run make")
        };
        for name in [
            None,
            Some(""),
            Some("add accounts"),
            Some("../outside"),
            Some("a/b"),
            Some("x;touch pwned"),
            Some("x`touch pwned`"),
            Some("$(touch pwned)"),
            Some("a\nb"),
            Some("caf\u{e9}"),
            Some("a\u{202e}b"),
        ] {
            let output = make(name);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{name:?}: {stderr}");
            assert!(
                stderr.contains("usage: make new_migration"),
                "{name:?}: {stderr}"
            );
            let mut left: Vec<_> = std::fs::read_dir(&root.0)
                .expect("read the folder")
                .map(|e| e.expect("entry").file_name())
                .collect();
            left.sort();
            assert_eq!(left, ["Makefile", "migrations"], "{name:?} wrote files");
            assert_eq!(
                std::fs::read_dir(&migrations).expect("read").count(),
                0,
                "{name:?} wrote a migration"
            );
        }
        let output = make(Some("add_accounts"));
        assert!(output.status.success(), "{output:?}");
        let mut created: Vec<String> = std::fs::read_dir(&migrations)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        created.sort();
        assert_eq!(created.len(), 2, "{created:?}");
        assert!(
            created[0].ends_with("_add_accounts.down.sql"),
            "{created:?}"
        );
        assert!(created[1].ends_with("_add_accounts.up.sql"), "{created:?}");
    }
}
