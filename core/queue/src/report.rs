//! Turning an error and its causes into one log-friendly line.

use std::error::Error;

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
    use super::chain;

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
