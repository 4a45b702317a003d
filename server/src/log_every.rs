//! One log line per period at most for an event any client can repeat many times a second
//! (a connection past its address's limit, a call to a method that does not exist): the first
//! is logged, then at most one per period, with the count of those left out since.

use std::time::Duration;

use tokio::time::Instant;

/// The period of every such line.
pub const EVERY: Duration = Duration::from_secs(10);

/// When the last line was written, and how many were left out since.
#[derive(Debug, Default)]
pub struct LogEvery {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogEvery {
    /// `Some(how many were left out since the last line)` when this one is to be written.
    pub fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::{EVERY, LogEvery};

    #[tokio::test(start_paused = true)]
    async fn the_first_then_one_a_period_with_the_count_left_out() {
        let mut log = LogEvery::default();
        assert_eq!(log.due(), Some(0));
        assert_eq!(log.due(), None);
        assert_eq!(log.due(), None);
        tokio::time::advance(EVERY).await;
        assert_eq!(log.due(), Some(2));
        assert_eq!(log.due(), None);
    }
}
