//! Integration tests of the queue, on the real Redis: one binary, one module per subject.

// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod cluster;
mod dead;
mod embedded;
mod helpers;
mod hygiene;
mod layout;
mod migrate;
mod odd_entries;
mod pause;
mod reconnect;
mod retention;
mod spans;
mod stats;
