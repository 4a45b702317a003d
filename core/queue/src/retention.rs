//! The bounds of the dead letters. Each queue's dead stream keeps at most
//! `dead_letter_max` letters (the oldest are trimmed first) and none older than
//! `dead_letter_retention` (by the time in its entry id, when it died). KILL trims exactly, in
//! the same step as it adds a letter; the promoter trims each of its queues every minute, so
//! letters age out of a queue that stopped killing too. Task streams are never trimmed.
//!
//! Every trim goes through [`report_trim`], the one place that logs it (and counts it).

use crate::{keys::QueueName, metrics::ConsumerMetrics, scripts::Trimmed};

/// Why letters were trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrimReason {
    /// The stream had more than `dead_letter_max` letters.
    MaxLen,
    /// They were older than `dead_letter_retention`.
    Age,
}

impl TrimReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::MaxLen => "more dead letters than DEAD_LETTER_MAX",
            Self::Age => "older than DEAD_LETTER_RETENTION",
        }
    }

    /// The metrics' `simplebank.trim.reason`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::MaxLen => "max_len",
            Self::Age => "retention",
        }
    }
}

/// Logs and counts (`simplebank.queue.dead.trimmed`) one trim of `queue`'s dead letters:
/// `count` letters, for `reason`.
pub(crate) fn report_trim(
    queue: &QueueName,
    count: u64,
    reason: TrimReason,
    metrics: &ConsumerMetrics,
) {
    if count == 0 {
        return;
    }
    tracing::warn!(
        queue = %queue,
        count,
        reason = reason.as_str(),
        "dead letters trimmed"
    );
    metrics.dead_trimmed(queue, reason, count);
}

/// [`report_trim`] for each reason of `trimmed`.
pub(crate) fn report(queue: &QueueName, trimmed: Trimmed, metrics: &ConsumerMetrics) {
    report_trim(queue, trimmed.by_max_len, TrimReason::MaxLen, metrics);
    report_trim(queue, trimmed.by_age, TrimReason::Age, metrics);
}
