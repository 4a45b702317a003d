//! Turning an error and its causes into one log-friendly line, and a value read from a task
//! into a bounded one.

use std::{borrow::Cow, error::Error};

/// At most this much of a value read from a task goes into a log line or a dead letter's reason.
const EXCERPT_BYTES: usize = 256;

/// `text` as it is, or its first 256 bytes (cut at a character) and how long it was. A task's
/// id and type are whatever its entry holds: one written to the stream by hand with a type of
/// 3 MB made a 6 MB log line, and its dead letter's reason quoted it whole.
pub fn excerpt(text: &str) -> Cow<'_, str> {
    if text.len() <= EXCERPT_BYTES {
        return Cow::Borrowed(text);
    }
    let mut end = EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &text[..end], text.len()))
}

/// `err` and its sources, joined with ": ". A cause whose text is already in the line is left
/// out: many errors (sqlx's, for one) print their source in their own message too, and the
/// line would otherwise say the same thing two or three times.
pub fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{chain, excerpt};

    #[test]
    fn an_excerpt_is_the_text_up_to_256_bytes_then_its_start_and_length() {
        assert_eq!(excerpt("task:send_verify_email"), "task:send_verify_email");
        let exact = "x".repeat(256);
        assert_eq!(excerpt(&exact), exact);
        let long = format!("{}{}", "a".repeat(255), "é".repeat(1_000_000));
        let cut = excerpt(&long);
        // 255 bytes, then a character of two that would pass 256: cut before it.
        assert_eq!(cut, format!("{}... (2000255 bytes)", "a".repeat(255)));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("database \"x\" does not exist")]
    struct Root;

    /// Prints its source in its own message, as sqlx's errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("error returned from database: {0}")]
    struct Echoing(#[source] Root);

    #[derive(Debug, thiserror::Error)]
    #[error("migration failed")]
    struct Outer(#[source] Echoing);

    #[test]
    fn each_cause_is_said_once() {
        assert_eq!(
            chain(&Outer(Echoing(Root))),
            "migration failed: error returned from database: database \"x\" does not exist"
        );
    }
}
