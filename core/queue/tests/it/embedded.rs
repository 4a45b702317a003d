//! Runs the embedding example (`examples/embedded.rs`) against the real Redis, as a reader
//! would, and checks what it says: two tasks welcomed (one after a retry), one dead letter.

use std::process::Command;

use simplebank_queue::testing::TestRedis;

#[test]
fn the_embedding_example_runs_a_retry_and_a_dead_letter() {
    let redis = TestRedis::new();
    // `cargo test` builds the examples next to the test binaries' folder.
    let exe = std::env::current_exe().expect("test binary path");
    let example = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>")
        .join("examples")
        .join("embedded");
    let output = Command::new(&example)
        .env("REDIS_ADDRESS", &redis.address)
        .env("QUEUE_NAMESPACE", redis.namespace.as_str())
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "run {} (built by `cargo build --examples`, as make test does): {err}",
                example.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "dead letter: address is on the block list after 1 attempt(s)",
            "welcomed alice (attempt 1)",
            "welcomed bob (attempt 2)",
        ]
    );
}
