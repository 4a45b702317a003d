//! The benchmarks' task, shared by `bench`, `bench_producer` and `bench_worker` (the
//! end-to-end run puts one program's tasks into the other's queue): a no-op carrying its send
//! time, so the handler can tell how long it waited.

use simplebank_queue::TaskPayload;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Ping {
    /// When the producer sent it, µs since the Unix epoch.
    pub sent_us: u64,
}

impl TaskPayload for Ping {
    const TYPE: &'static str = "bench:ping";
}

/// Now, µs since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
