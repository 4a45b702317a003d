//! Turning an error and its causes into one log-friendly line (the queue's, shared).

pub use simplebank_queue::report::chain;
