//! Page tokens of `list_tasks`: a position, not an offset, so a page starts right after the
//! last task shown however many tasks moved meanwhile.
//!
//! - streams (pending, active, dead): the last entry id shown; the next page reads after it;
//! - sets (scheduled, retry): the last due time shown and a [`Tie`] naming the last member
//!   shown; Redis orders members of one score by their bytes, so the next page is the members
//!   with a later score, or the same score and bytes after that member.
//!
//! The token is `v1`, the state, the queue and the position, hex-encoded: opaque to clients,
//! checked when it comes back (a token of another queue or state, or one that does not parse,
//! is [`AdminError::PageToken`]; so is a stream position after the largest entry id, which
//! no page can end at). A task's tie ends at its task id, before the payload; only an
//! undecodable member (which has no task id to end at) is carried whole, up to
//! [`MAX_MEMBER_TIE`] bytes.

use std::fmt::Write as _;

use super::{AdminError, TaskState};
use crate::keys::{EntryId, QueueName};

/// The longest token accepted, in characters.
const MAX_TOKEN: usize = 2048;

/// The longest undecodable member carried whole as a tie, in bytes: a token stays well under
/// [`MAX_TOKEN`]. A longer one is cut (at a character boundary).
pub(super) const MAX_MEMBER_TIE: usize = 384;

/// Where the previous page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Position {
    /// After this stream entry.
    Entry(EntryId),
    /// After the member `tie` names among the members of this score.
    Scored { score: i64, tie: Tie },
}

/// The last member shown of a due time, as a page token keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tie {
    /// A task's member up to and including its task id (`{"fields":["id","<id>"`): the
    /// members shown are those up to it in byte order, and those that start with it (the same
    /// task id; the rest of that member, its payload, is not kept).
    Task(String),
    /// An undecodable member, whole; or its first [`MAX_MEMBER_TIE`] bytes when longer. The
    /// members shown are those up to it in byte order. A cut member is a prefix of the member
    /// shown, so that member and any other starting with the prefix are shown again on the
    /// next page: a repeat, never a task hidden.
    Member(String),
}

impl Tie {
    /// Whether `member`, of the tie's due time, was on the page that ended at this tie.
    pub fn shown(&self, member: &str) -> bool {
        match self {
            Self::Task(tie) => member.as_bytes() <= tie.as_bytes() || member.starts_with(tie),
            Self::Member(tie) => member.as_bytes() <= tie.as_bytes(),
        }
    }

    /// The tie of an undecodable `member`: whole, or cut to [`MAX_MEMBER_TIE`] bytes.
    pub fn member(member: &str) -> Self {
        let mut end = member.len().min(MAX_MEMBER_TIE);
        while !member.is_char_boundary(end) {
            end -= 1;
        }
        Self::Member(member[..end].to_owned())
    }
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
            Position::Scored {
                score,
                tie: Tie::Task(tie),
            } => format!("v1:{}:{queue}:s:{score}:{tie}", state.as_str()),
            Position::Scored {
                score,
                tie: Tie::Member(tie),
            } => format!("v1:{}:{queue}:m:{score}:{tie}", state.as_str()),
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
                // No page ends at the largest id (a later entry is needed for a next page),
                // and Redis refuses a range starting after it.
                let id = EntryId::parse(rest).filter(|id| *id != EntryId::MAX)?;
                Position::Entry(id)
            }
            (form @ ("s" | "m"), TaskState::Scheduled | TaskState::Retry) => {
                let (score, tie) = rest.split_once(':')?;
                if tie.is_empty() {
                    return None;
                }
                let tie = if form == "s" {
                    Tie::Task(tie.to_owned())
                } else {
                    Tie::Member(tie.to_owned())
                };
                Position::Scored {
                    score: score.parse().ok()?,
                    tie,
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
            (
                TaskState::Dead,
                Position::Entry(EntryId(u64::MAX - 1, u64::MAX)),
            ),
            (TaskState::Dead, Position::Entry(EntryId(0, 1))),
            (
                TaskState::Scheduled,
                Position::Scored {
                    score: 1_700_000_000_000,
                    tie: Tie::Task(r#"{"fields":["id","a:b\"c"#.into()),
                },
            ),
            (
                TaskState::Scheduled,
                Position::Scored {
                    score: 7,
                    tie: Tie::member(&"{\u{e9}".repeat(MAX_MEMBER_TIE)),
                },
            ),
            (
                TaskState::Retry,
                Position::Scored {
                    score: -5,
                    tie: Tie::Member("x".into()),
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
            hex(&format!("v1:pending:default:e:{0}-{0}", u64::MAX)),
            hex("v1:pending:default:e:18446744073709551616-0"),
            hex("v1:pending:default:m:1:tie"),
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

#[cfg(test)]
mod tie_tests {
    use super::*;

    #[test]
    fn a_member_tie_shows_only_the_members_up_to_it() {
        let tie = Tie::member("{\"fields\":[!x");
        assert!(tie.shown("{\"fields\":[!x"));
        assert!(tie.shown("{\"fields\":[!"));
        // Longer members that start with it come after it: not shown yet.
        assert!(!tie.shown("{\"fields\":[!xy"));
        assert!(!tie.shown("{\"fields\":[\"id\",\"a\""));
        // A task tie also covers the rest of its own member.
        let task = Tie::Task("{\"fields\":[\"id\",\"a\"".into());
        assert!(task.shown("{\"fields\":[\"id\",\"a\",\"type\""));
        assert!(!task.shown("{\"fields\":[\"id\",\"b\""));
    }

    #[test]
    fn a_long_member_tie_is_cut_at_a_character_boundary() {
        let member = "\u{e9}".repeat(MAX_MEMBER_TIE);
        let Tie::Member(cut) = Tie::member(&member) else {
            panic!("a member tie");
        };
        assert!(cut.len() <= MAX_MEMBER_TIE && member.starts_with(&cut));
        // The cut member itself is shown again, never skipped.
        assert!(!Tie::Member(cut).shown(&member));
    }
}
