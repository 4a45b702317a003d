//! Page tokens of `list_tasks`: a position, not an offset, so a page starts right after the
//! last task shown however many tasks moved meanwhile.
//!
//! - streams (pending, active, dead): the last entry id shown; the next page reads after it;
//! - sets (scheduled, retry): the last due time shown and the start of that member up to its
//!   task id (`tie`); Redis orders members of one score by their bytes, so the next page is
//!   the members with a later score, or the same score and bytes after the tie.
//!
//! The token is `v1`, the state, the queue and the position, hex-encoded: opaque to clients,
//! checked when it comes back (a token of another queue or state, or one that does not parse,
//! is [`AdminError::PageToken`]). It holds nothing secret: a tie ends at the task id, before
//! the payload.

use std::fmt::Write as _;

use super::{AdminError, TaskState};
use crate::keys::QueueName;

/// The longest token accepted, in characters.
const MAX_TOKEN: usize = 2048;

/// A stream entry id, `<ms>-<seq>`, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct EntryId(pub u64, pub u64);

impl EntryId {
    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// Where the previous page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Position {
    /// After this stream entry.
    Entry(EntryId),
    /// After the member of this score that starts with `tie`.
    Scored { score: i64, tie: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    pub position: Position,
}

impl Cursor {
    /// The token for `position` in `queue`'s `state` listing.
    pub fn token(queue: &QueueName, state: TaskState, position: &Position) -> String {
        let text = match position {
            Position::Entry(id) => format!("v1:{}:{queue}:e:{id}", state.as_str()),
            Position::Scored { score, tie } => {
                format!("v1:{}:{queue}:s:{score}:{tie}", state.as_str())
            }
        };
        text.bytes()
            .fold(String::with_capacity(text.len() * 2), |mut hex, b| {
                let _ = write!(hex, "{b:02x}");
                hex
            })
    }

    /// The position in `token`, which must be one issued for `queue` and `state`.
    pub fn parse(token: &str, queue: &QueueName, state: TaskState) -> Result<Self, AdminError> {
        Self::decode(token, queue, state).ok_or(AdminError::PageToken)
    }

    fn decode(token: &str, queue: &QueueName, state: TaskState) -> Option<Self> {
        if token.len() > MAX_TOKEN || !token.len().is_multiple_of(2) {
            return None;
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(5, ':');
        let (version, kind, name, form, rest) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if version != "v1" || kind != state.as_str() || name != queue.as_str() {
            return None;
        }
        let position = match (form, state) {
            ("e", TaskState::Pending | TaskState::Active | TaskState::Dead) => {
                Position::Entry(EntryId::parse(rest)?)
            }
            ("s", TaskState::Scheduled | TaskState::Retry) => {
                let (score, tie) = rest.split_once(':')?;
                if tie.is_empty() {
                    return None;
                }
                Position::Scored {
                    score: score.parse().ok()?,
                    tie: tie.to_owned(),
                }
            }
            _ => return None,
        };
        Some(Self { position })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> QueueName {
        QueueName::parse(name).unwrap()
    }

    #[test]
    fn round_trip() {
        let q = queue("default");
        for (state, position) in [
            (TaskState::Pending, Position::Entry(EntryId(1, 2))),
            (TaskState::Active, Position::Entry(EntryId(u64::MAX, 0))),
            (TaskState::Dead, Position::Entry(EntryId(0, 1))),
            (
                TaskState::Scheduled,
                Position::Scored {
                    score: 1_700_000_000_000,
                    tie: r#"{"fields":["id","a:b\"c"#.into(),
                },
            ),
            (
                TaskState::Retry,
                Position::Scored {
                    score: -5,
                    tie: "x".into(),
                },
            ),
        ] {
            let token = Cursor::token(&q, state, &position);
            assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
            assert_eq!(Cursor::parse(&token, &q, state).unwrap().position, position);
        }
    }

    #[test]
    fn refuses_what_it_did_not_issue() {
        let q = queue("default");
        let entry = Position::Entry(EntryId(1, 2));
        let token = Cursor::token(&q, TaskState::Pending, &entry);
        let hex = |text: &str| text.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let bad = [
            String::new(),
            "zz".into(),
            "abc".into(),
            token[..token.len() - 2].to_owned(),
            "00".repeat(MAX_TOKEN),
            hex("v2:pending:default:e:1-2"),
            hex("v1:pending:default:e:1"),
            hex("v1:pending:default:e:x-2"),
            hex("v1:pending:default:s:1:tie"),
            hex("v1:scheduled:default:s:1:"),
            hex("v1:pending:default:e:1-2\r\n"),
            hex("v1:pending:default:e:-1-2"),
            "ff".repeat(10),
        ];
        for bad in &bad {
            assert!(
                matches!(
                    Cursor::parse(bad, &q, TaskState::Pending),
                    Err(AdminError::PageToken)
                ),
                "{bad:?}"
            );
        }
        // Another queue's or state's token.
        assert!(Cursor::parse(&token, &queue("low"), TaskState::Pending).is_err());
        assert!(Cursor::parse(&token, &q, TaskState::Active).is_err());
        assert!(Cursor::parse(&token, &q, TaskState::Pending).is_ok());
    }
}
