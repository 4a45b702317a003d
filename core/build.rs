//! Rebuilds the crate when a file in `migrations/` changes: `sqlx::migrate!` embeds the folder
//! in `MIGRATOR`, but on stable Rust a proc macro cannot tell Cargo what it read, so without
//! this a new migration is silently missing from the binary until something else changes.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
