//! An [`Envelope`] (a task and its delivery state) as the fields of one Redis Stream entry,
//! and back.
//!
//! | field         | value                                                    |
//! |---------------|----------------------------------------------------------|
//! | `id`          | task id (UUID unless the producer chose one)             |
//! | `type`        | task type, e.g. `task:send_verify_email`                 |
//! | `payload`     | JSON text                                                |
//! | `attempt`     | 1 for the first attempt                                  |
//! | `max_retry`   | retries allowed after the first attempt                  |
//! | `timeout_ms`  | how long one attempt may run                             |
//! | `enqueued_at` | creation time, ms since the Unix epoch                   |
//! | `traceparent` | W3C trace context of the producer (absent when none)     |
//! | `tracestate`  | W3C trace state (absent when none)                       |
//! | `deadline`    | no attempt starts after it, ms since the epoch (optional)|
//! | `unique`      | the lock held, `{ns:q}:unique:<unique>` (optional)       |
//! | `sensitive`   | `1` when the payload must never be shown (optional)      |
//! | `first_failed_at` | end of the first failed attempt, ms (after a failure)|
//! | `last_error`  | error of the last failed attempt (after a failure)       |
//!
//! The queue is not a field: it is the stream the entry is in. A delayed task waits in the
//! scheduled set as [`scheduled_member`]: the same fields plus its queue, as JSON.

use std::{collections::HashMap, fmt};

use redis::Value;

use crate::{
    keys::QueueName,
    task::{Envelope, Task},
    trace::{self, Remote},
};

/// Why a stream entry is not a task. Names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("missing field {0:?}")]
    Missing(&'static str),
    #[error("field {0:?} is not valid")]
    Invalid(&'static str),
}

/// The entry fields of `envelope`, in the order of the table above.
pub(crate) fn encode(envelope: &Envelope) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    each_field(
        &envelope.task,
        envelope.task.remote_trace(),
        envelope.attempt,
        envelope.first_failed_at,
        envelope.last_error.as_deref(),
        |name, value| fields.push((name.text, value.to_string())),
    );
    fields
}

/// `XADD stream * <fields>`: the entry of `task` on its first attempt (what a publisher
/// writes). The command's buffers are sized up front: growing them argument by argument took
/// a sixth of a publish (BENCHMARKS.md, end to end).
pub(crate) fn xadd(stream: &str, task: &Task, trace: Remote<'_>) -> redis::Cmd {
    // "XADD", the stream, "*", and at most 12 fields (a first attempt has no failure yet).
    const ARGS: usize = 3 + 2 * 12;
    // Their names (94 bytes in all) and numbers (72 at most), with room to spare.
    const FIXED: usize = 4 + 1 + 256;
    let text = [trace.traceparent, trace.tracestate, task.unique.as_deref()]
        .into_iter()
        .flatten()
        .map(str::len)
        .sum::<usize>();
    let bytes = FIXED + stream.len() + task.id.len() + task.kind.len() + task.payload.len() + text;
    let mut cmd = redis::Cmd::with_capacity(ARGS, bytes);
    cmd.arg("XADD").arg(stream).arg("*");
    write_new(&mut cmd, task, trace);
    cmd
}

/// The same command as [`xadd`] (`redis::cmd("XADD")` with its arguments), already in the
/// protocol's bytes (what is written to the socket), without a `redis::Cmd` between: for the
/// publishers' own connection (`connection::writer`), where encoding through `Cmd` took a
/// sixth of a publish.
pub(crate) fn xadd_packed(stream: &str, task: &Task, trace: Remote<'_>) -> Vec<u8> {
    let mut args: u64 = 3;
    let mut bytes = 64 + stream.len();
    each_field(task, trace, 1, None, None, |name, value| {
        args += 2;
        bytes += 16 + name.bulk().len();
        bytes += if let Field::Text(text) = value {
            text.len()
        } else {
            20
        };
    });
    let mut out = Vec::with_capacity(bytes);
    out.push(b'*');
    out.extend_from_slice(digits(args, &mut [0; 20]));
    out.extend_from_slice(b"\r\n$4\r\nXADD\r\n");
    bulk(&mut out, stream.as_bytes());
    out.extend_from_slice(b"$1\r\n*\r\n");
    each_field(task, trace, 1, None, None, |name, value| {
        out.extend_from_slice(name.bulk());
        let mut buffer = [0; 20];
        let number = match value {
            Field::Text(text) => return bulk(&mut out, text.as_bytes()),
            Field::Int(n) => signed(n, &mut buffer),
            Field::UInt(n) => digits(n, &mut buffer),
        };
        bulk(&mut out, number);
    });
    out
}

/// A bulk string: `$<length>\r\n<bytes>\r\n`. Its header is put together first and copied
/// in one piece: a publish writes a dozen of them (BENCHMARKS.md, "Numbers written two digits
/// at a time").
fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    // `$`, at most 20 digits, CR/LF.
    let mut head = [0; 23];
    let length = digits(bytes.len() as u64, &mut head[1..21]);
    let start = 20 - length.len();
    head[start] = b'$';
    head[21..].copy_from_slice(b"\r\n");
    out.extend_from_slice(&head[start..]);
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal digits, written at the end of `buffer` (20 bytes hold any), two at a time
/// from a table.
fn digits(mut n: u64, buffer: &mut [u8]) -> &[u8] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut at = buffer.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buffer[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        buffer[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buffer[at] = b'0' + n as u8;
    }
    &buffer[at..]
}

/// `n` in decimal digits with its sign, written at the end of `buffer` (`i64::MIN` takes all
/// 20 bytes).
fn signed(n: i64, buffer: &mut [u8; 20]) -> &[u8] {
    let start = buffer.len() - digits(n.unsigned_abs(), buffer).len();
    if n >= 0 {
        return &buffer[start..];
    }
    buffer[start - 1] = b'-';
    &buffer[start - 1..]
}

/// Appends the entry fields of `task` on its first attempt (what a publisher writes) to
/// `cmd`, as [`encode`] would give them, without building a string for each.
fn write_new(cmd: &mut redis::Cmd, task: &Task, trace: Remote<'_>) {
    each_field(task, trace, 1, None, None, |name, value| {
        cmd.arg(name.text);
        match value {
            Field::Text(text) => cmd.arg(text),
            Field::Int(n) => cmd.arg(n),
            Field::UInt(n) => cmd.arg(n),
        };
    });
}

/// A field's value: text, or a number written in decimal.
enum Field<'a> {
    Text(&'a str),
    Int(i64),
    UInt(u64),
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Int(n) => write!(f, "{n}"),
            Self::UInt(n) => write!(f, "{n}"),
        }
    }
}

/// A field's name, and the same as a bulk string of the protocol (`$<length>\r\n<name>\r\n`,
/// written by [`xadd_packed`] as is).
struct Name {
    text: &'static str,
    bulk: [u8; NAME_BULK],
    bulk_len: usize,
}

/// Room for a name's bulk string: `$`, two digits, two CR/LF and the name.
const NAME_BULK: usize = 24;

impl Name {
    const fn new(text: &'static str) -> Self {
        let name = text.as_bytes();
        assert!(
            name.len() <= NAME_BULK - 7,
            "a field name is at most 17 bytes"
        );
        let mut bulk = [0; NAME_BULK];
        bulk[0] = b'$';
        let mut at = 1;
        if name.len() >= 10 {
            bulk[at] = b'0' + (name.len() / 10) as u8;
            at += 1;
        }
        bulk[at] = b'0' + (name.len() % 10) as u8;
        bulk[at + 1] = b'\r';
        bulk[at + 2] = b'\n';
        at += 3;
        let mut i = 0;
        while i < name.len() {
            bulk[at] = name[i];
            at += 1;
            i += 1;
        }
        bulk[at] = b'\r';
        bulk[at + 1] = b'\n';
        Self {
            text,
            bulk,
            bulk_len: at + 2,
        }
    }

    fn bulk(&self) -> &[u8] {
        &self.bulk[..self.bulk_len]
    }
}

const ID: Name = Name::new("id");
const TYPE: Name = Name::new("type");
const PAYLOAD: Name = Name::new("payload");
const ATTEMPT: Name = Name::new("attempt");
const MAX_RETRY: Name = Name::new("max_retry");
const TIMEOUT_MS: Name = Name::new("timeout_ms");
const ENQUEUED_AT: Name = Name::new("enqueued_at");
const TRACEPARENT: Name = Name::new("traceparent");
const TRACESTATE: Name = Name::new("tracestate");
const DEADLINE: Name = Name::new("deadline");
const UNIQUE: Name = Name::new("unique");
const SENSITIVE: Name = Name::new("sensitive");
const FIRST_FAILED_AT: Name = Name::new("first_failed_at");
const LAST_ERROR: Name = Name::new("last_error");

/// Calls `field` with each field of the entry of `task` at `attempt`, in the order of the
/// table above; the optional ones only when present.
fn each_field<'a>(
    task: &'a Task,
    trace: Remote<'a>,
    attempt: u32,
    first_failed_at: Option<i64>,
    last_error: Option<&'a str>,
    mut field: impl FnMut(&'static Name, Field<'a>),
) {
    field(&ID, Field::Text(&task.id));
    field(&TYPE, Field::Text(&task.kind));
    field(&PAYLOAD, Field::Text(&task.payload));
    field(&ATTEMPT, Field::UInt(attempt.into()));
    field(&MAX_RETRY, Field::UInt(task.max_retry.into()));
    field(&TIMEOUT_MS, Field::UInt(task.timeout_ms));
    field(&ENQUEUED_AT, Field::Int(task.enqueued_at));
    let optional = [
        (&TRACEPARENT, trace.traceparent.map(Field::Text)),
        (&TRACESTATE, trace.tracestate.map(Field::Text)),
        (&DEADLINE, task.deadline.map(Field::Int)),
        (&UNIQUE, task.unique.as_deref().map(Field::Text)),
        (&SENSITIVE, task.sensitive.then_some(Field::Text("1"))),
        (&FIRST_FAILED_AT, first_failed_at.map(Field::Int)),
        (&LAST_ERROR, last_error.map(Field::Text)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            field(name, value);
        }
    }
}

/// The scheduled-set member for `task`: `{"queue": ..., "fields": [name, value, ...]}`. It
/// holds the task id and attempt, so two retries of one task are two members.
pub(crate) fn scheduled_member(envelope: &Envelope) -> String {
    let fields: Vec<String> = encode(envelope)
        .into_iter()
        .flat_map(|(name, value)| [name.to_owned(), value])
        .collect();
    serde_json::json!({ "queue": envelope.task.queue.as_str(), "fields": fields }).to_string()
}

/// The task held by a scheduled-set member of `queue` (see [`scheduled_member`]).
pub(crate) fn decode_member(queue: QueueName, member: &str) -> Result<Envelope, DecodeError> {
    let fields = member_fields(member)?;
    decode_with(queue, &|name| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| FieldValue::of(value))
    })
}

/// The task id of a scheduled-set member, without decoding the rest.
pub(crate) fn decode_member_id(member: &str) -> Option<String> {
    member_text(member)
        .ok()?
        .chunks_exact(2)
        .find(|pair| pair[0] == "id")
        .map(|pair| pair[1].clone())
}

/// The `fields` of a member: name, value, name, value...
fn member_text(member: &str) -> Result<Vec<String>, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Member {
        fields: Vec<String>,
    }
    serde_json::from_str::<Member>(member)
        .map(|member| member.fields)
        .map_err(|_| DecodeError::Invalid("fields"))
}

/// The `fields` of a member as (name, value) pairs.
fn member_fields(member: &str) -> Result<Vec<(String, Value)>, DecodeError> {
    Ok(member_text(member)?
        .chunks_exact(2)
        .map(|pair| {
            (
                pair[0].clone(),
                Value::BulkString(pair[1].clone().into_bytes()),
            )
        })
        .collect())
}

/// One stream entry as read: its id and its fields, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Entry {
    pub id: String,
    pub fields: Vec<(String, Value)>,
}

impl From<redis::streams::StreamId> for Entry {
    fn from(entry: redis::streams::StreamId) -> Self {
        Self {
            id: entry.id,
            fields: entry.map.into_iter().collect(),
        }
    }
}

impl Entry {
    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value)
    }
}

/// An entry as the consumer hands it on to run: decoded as it was read (the reader's
/// replies, see `consumer::fetch`), or its fields as read, decoded when it runs (the redis
/// crate's replies, and an entry that does not decode, which is dead-lettered with them).
#[derive(Debug)]
pub(crate) enum Delivered {
    Task { id: String, task: Box<Envelope> },
    Fields(Entry),
}

impl Delivered {
    /// The entry's id.
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::Task { id, .. } => id,
            Self::Fields(entry) => &entry.id,
        }
    }
}

/// The task held by an entry of the stream of `queue`.
pub(crate) fn decode_entry(queue: QueueName, entry: &Entry) -> Result<Envelope, DecodeError> {
    decode_with(queue, &|name| entry.get(name).map(FieldValue::of))
}

/// The task held by the fields `map` of an entry of the stream of `queue`.
pub(crate) fn decode(
    queue: QueueName,
    map: &HashMap<String, Value>,
) -> Result<Envelope, DecodeError> {
    decode_with(queue, &|name| map.get(name).map(FieldValue::of))
}

/// The task held by an entry of the stream of `queue` whose fields, names and values, are
/// still the bytes of the reply they came in (the first of a name counts, as in
/// [`Entry::get`]): nothing is copied but the task's own text.
pub(crate) fn decode_raw(
    queue: QueueName,
    fields: &[(&[u8], &[u8])],
) -> Result<Envelope, DecodeError> {
    decode_with(queue, &|name| {
        (fields.iter())
            .find(|(field, _)| *field == name.as_bytes())
            .map(|(_, value)| FieldValue::Bytes(value))
    })
}

/// A field's value: the bytes of a bulk string (what every stream field is), or another
/// kind of reply, converted as the redis crate converts it.
#[derive(Clone, Copy)]
enum FieldValue<'a> {
    Bytes(&'a [u8]),
    Other(&'a Value),
}

impl<'a> FieldValue<'a> {
    fn of(value: &'a Value) -> Self {
        match value {
            Value::BulkString(bytes) => Self::Bytes(bytes),
            other => Self::Other(other),
        }
    }
}

/// Looks a field up by name.
type Lookup<'a> = dyn Fn(&str) -> Option<FieldValue<'a>> + 'a;

fn decode_with<'a>(queue: QueueName, map: &Lookup<'a>) -> Result<Envelope, DecodeError> {
    // A trace field that is not text (bytes that are not UTF-8, a nil) is dropped rather than
    // failing the task it rides on, and what is carried on is bounded (found by an outside
    // attack: a byte 0xff there dead-lettered a valid task, and a 400 KB `tracestate` went
    // whole into its dead letter).
    let text = |name| optional(map, name).ok().flatten();
    let (traceparent, tracestate) = trace::carried(text("traceparent"), text("tracestate"));
    let task = Task {
        id: required(map, "id")?,
        kind: required(map, "type")?,
        payload: required(map, "payload")?,
        queue,
        max_retry: number(map, "max_retry")?,
        // As the builder and the JSON form: an attempt with no time at all is refused.
        timeout_ms: positive(map, "timeout_ms")?,
        enqueued_at: number(map, "enqueued_at")?,
        traceparent,
        tracestate,
        deadline: optional_number(map, "deadline")?,
        unique: optional(map, "unique")?,
        schedule: None,
        unique_ttl_ms: None,
        // Any value but absent counts: a reader must err on the side of not showing.
        sensitive: map("sensitive").is_some(),
    };
    Ok(Envelope {
        task,
        // Attempts count from 1: 0 is no attempt the engine wrote.
        attempt: positive(map, "attempt")?,
        first_failed_at: optional_number(map, "first_failed_at")?,
        last_error: optional(map, "last_error")?,
    })
}

fn optional(map: &Lookup<'_>, name: &'static str) -> Result<Option<String>, DecodeError> {
    let text = match map(name) {
        None => return Ok(None),
        Some(FieldValue::Bytes(bytes)) => std::str::from_utf8(bytes).ok().map(str::to_owned),
        Some(FieldValue::Other(value)) => redis::from_redis_value_ref(value).ok(),
    };
    text.map(Some).ok_or(DecodeError::Invalid(name))
}

fn required(map: &Lookup<'_>, name: &'static str) -> Result<String, DecodeError> {
    optional(map, name)?.ok_or(DecodeError::Missing(name))
}

/// A number field, parsed in place (a stream field is a bulk string: no copy of it is made).
fn optional_number<T: std::str::FromStr>(
    map: &Lookup<'_>,
    name: &'static str,
) -> Result<Option<T>, DecodeError> {
    let parsed = match map(name) {
        None => return Ok(None),
        Some(FieldValue::Bytes(bytes)) => {
            std::str::from_utf8(bytes).ok().and_then(|t| t.parse().ok())
        }
        Some(FieldValue::Other(other)) => redis::from_redis_value_ref::<String>(other)
            .ok()
            .and_then(|t| t.parse().ok()),
    };
    parsed.map(Some).ok_or(DecodeError::Invalid(name))
}

fn number<T: std::str::FromStr>(map: &Lookup<'_>, name: &'static str) -> Result<T, DecodeError> {
    optional_number(map, name)?.ok_or(DecodeError::Missing(name))
}

/// A number field that must not be 0.
fn positive<T: std::str::FromStr + Default + PartialEq>(
    map: &Lookup<'_>,
    name: &'static str,
) -> Result<T, DecodeError> {
    match number(map, name)? {
        zero if zero == T::default() => Err(DecodeError::Invalid(name)),
        value => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskPayload;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Welcome {
        username: String,
    }

    impl TaskPayload for Welcome {
        const TYPE: &'static str = "test:welcome";
    }

    fn as_map(fields: Vec<(&'static str, String)>) -> HashMap<String, Value> {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
            .collect()
    }

    /// A trace field that is not text is dropped, not the task: bytes that are not UTF-8, a
    /// nil; a `traceparent` over 512 characters is dropped (its `tracestate` with it), a long
    /// `tracestate` cut to 512 characters (found by an outside attack).
    #[test]
    fn odd_trace_fields_are_dropped_not_the_task() {
        let task = Task::new(&Welcome {
            username: "alice".into(),
        })
        .unwrap();
        let queue = task.queue.clone();
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let with = |traceparent: Value, tracestate: &str| {
            let mut map = as_map(encode(&Envelope::first(task.clone())));
            map.insert("traceparent".into(), traceparent);
            map.insert("tracestate".into(), Value::BulkString(tracestate.into()));
            decode(queue.clone(), &map).expect("the task decodes").task
        };
        let carried = |task: Task| (task.traceparent, task.tracestate);
        assert_eq!(
            carried(with(Value::BulkString(b"\xff".to_vec()), "a=1")),
            (None, None)
        );
        assert_eq!(carried(with(Value::Nil, "a=1")), (None, None));
        let later = format!("cc{}-{}", &valid[2..], "x".repeat(600)).into_bytes();
        assert_eq!(carried(with(Value::BulkString(later), "a=1")), (None, None));
        let (traceparent, tracestate) = carried(with(
            Value::BulkString(valid.into()),
            &(0..100)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","),
        ));
        assert_eq!(traceparent.as_deref(), Some(valid));
        assert!(tracestate.is_some_and(|state| state.len() <= 512));
        assert_eq!(
            carried(with(Value::BulkString(valid.into()), "a=1")),
            (Some(valid.to_owned()), Some("a=1".to_owned()))
        );
    }

    #[test]
    fn round_trip() {
        let mut task = Task::new(&Welcome {
            username: "alice".into(),
        })
        .unwrap()
        .with_task_id("fixed-id")
        .unwrap();
        task.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        task.tracestate = Some("vendor=1".into());
        task.deadline = Some(1_800_000_000_000);
        task.unique = Some("lock".into());
        task.sensitive = true;
        let task = Envelope {
            task,
            attempt: 2,
            first_failed_at: Some(1_700_000_000_000),
            last_error: Some("boom: cause".into()),
        };
        let queue = task.task.queue.clone();
        let decoded = decode(queue.clone(), &as_map(encode(&task))).unwrap();
        assert_eq!(decoded, task);
        let entry = Entry {
            id: "1-0".into(),
            fields: as_map(encode(&task)).into_iter().collect(),
        };
        assert_eq!(decode_entry(queue.clone(), &entry).unwrap(), task);
        // From the bytes of a reply (the worker's reader): every field is read.
        let encoded = encode(&task);
        assert_eq!(encoded.len(), 14, "every field a task is read from is set");
        let raw: Vec<(&[u8], &[u8])> = (encoded.iter())
            .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
            .collect();
        assert_eq!(decode_raw(queue, &raw).unwrap(), task);
    }

    /// A publish writes its fields straight into the XADD: the same names and values, in the
    /// same order, as the entry [`encode`] gives for a first attempt, optional fields included.
    #[test]
    fn a_publish_writes_the_fields_encode_gives() {
        let mut task = Task::new(&Reset { token: "t".into() })
            .unwrap()
            .with_task_id("fixed-id")
            .unwrap();
        task.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        task.tracestate = Some("vendor=1".into());
        task.deadline = Some(-1);
        task.enqueued_at = i64::MAX;
        task.max_retry = u32::MAX;
        task.timeout_ms = u64::MAX;
        let cmd = xadd("{ns:default}:stream", &task, task.remote_trace());
        let written: Vec<String> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                _ => panic!("not a plain argument"),
            })
            .collect();
        let encoded: Vec<String> = encode(&Envelope::first(task.clone()))
            .into_iter()
            .flat_map(|(name, value)| [name.to_owned(), value])
            .collect();
        assert_eq!(written[..3], ["XADD", "{ns:default}:stream", "*"]);
        assert_eq!(written[3..], encoded);
        // The layout of the table above, spelled out (both go through `each_field`).
        let expected = [
            ("id", "fixed-id"),
            ("type", "test:reset"),
            ("payload", r#"{"token":"t"}"#),
            ("attempt", "1"),
            ("max_retry", "4294967295"),
            ("timeout_ms", "18446744073709551615"),
            ("enqueued_at", "9223372036854775807"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "vendor=1"),
            ("deadline", "-1"),
            ("unique", "id:fixed-id"),
            ("sensitive", "1"),
        ]
        .into_iter()
        .flat_map(|(name, value)| [name.to_owned(), value.to_owned()])
        .collect::<Vec<_>>();
        assert_eq!(written[3..], expected);
        // The publishers' own connection sends the same bytes.
        assert_eq!(
            xadd_packed("{ns:default}:stream", &task, task.remote_trace()),
            cmd.get_packed_command()
        );
    }

    /// Every field name's bulk string, worked out at compile time, is the protocol's
    /// `$<length>\r\n<name>\r\n`, for the names of retried entries too (which no packed XADD
    /// writes yet).
    #[test]
    fn each_field_names_bulk_string_is_its_encoding() {
        let names = [
            &ID,
            &TYPE,
            &PAYLOAD,
            &ATTEMPT,
            &MAX_RETRY,
            &TIMEOUT_MS,
            &ENQUEUED_AT,
            &TRACEPARENT,
            &TRACESTATE,
            &DEADLINE,
            &UNIQUE,
            &SENSITIVE,
            &FIRST_FAILED_AT,
            &LAST_ERROR,
        ];
        for name in names {
            let text = name.text;
            assert_eq!(
                name.bulk(),
                format!("${}\r\n{text}\r\n", text.len()).as_bytes(),
                "{text}"
            );
        }
        // Lengths of one digit and of two.
        assert_eq!(Name::new("a").bulk(), b"$1\r\na\r\n");
        assert_eq!(
            Name::new("seventeen_letters").bulk(),
            b"$17\r\nseventeen_letters\r\n"
        );
        // Every field a retried task's entry has, by name, each once.
        let mut task = Task::new(&Reset { token: "t".into() }).unwrap();
        task.deadline = Some(1);
        task.unique = Some("id:x".into());
        task.set_trace(crate::trace::TraceContext {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("a=1".into()),
        });
        let mut retried = Envelope::first(task);
        retried.attempt = 2;
        retried.first_failed_at = Some(1);
        retried.last_error = Some("e".into());
        let written: Vec<&str> = encode(&retried).into_iter().map(|(name, _)| name).collect();
        assert_eq!(written, names.map(|name| name.text));
    }

    /// The packed XADD is the redis crate's encoding of the same command, whatever the
    /// values hold: CR/LF, NUL, bidi and look-alike characters, long text, extreme numbers.
    #[test]
    fn the_packed_xadd_is_the_redis_crates_encoding() {
        let long = "x".repeat(70_000);
        for payload in [
            "\"\\r\\n\\u0000\"",
            "\"\u{202e}\u{430}\u{ff21}\"",
            "\"\"",
            &format!("\"{long}\""),
        ] {
            for (deadline, enqueued_at) in [(None, 0), (Some(i64::MIN), i64::MIN), (Some(-1), 9)] {
                let mut task = Task::new(&Reset { token: "t".into() }).unwrap();
                task.payload = payload.into();
                task.kind = "k\r\n:\0".into();
                task.deadline = deadline;
                task.enqueued_at = enqueued_at;
                task.sensitive = deadline.is_some();
                let stream = "{ns:q\r\n}:stream";
                assert_eq!(
                    xadd_packed(stream, &task, task.remote_trace()),
                    xadd(stream, &task, task.remote_trace()).get_packed_command(),
                    "{deadline:?} {enqueued_at}"
                );
            }
        }
    }

    /// Numbers are written as `format!` writes them: each count of digits, each pair of
    /// digits at each place, the extremes.
    #[test]
    fn numbers_are_written_in_decimal() {
        let mut unsigned = vec![0, u64::MAX, u64::MAX - 1];
        let mut power = 1u64;
        while let Some(next) = power.checked_mul(10) {
            unsigned.extend([power - 1, power, power + 1, next - power]);
            power = next;
        }
        unsigned.extend([power - 1, power, power + 1]);
        unsigned.extend((0..10_000).map(|n| n * 7_919));
        for n in unsigned {
            assert_eq!(digits(n, &mut [0; 20]), n.to_string().as_bytes());
            let mut out = Vec::new();
            let text = n.to_string();
            bulk(&mut out, text.as_bytes());
            assert_eq!(out, format!("${}\r\n{text}\r\n", text.len()).as_bytes());
            if let Ok(n) = i64::try_from(n) {
                assert_eq!(signed(n, &mut [0; 20]), n.to_string().as_bytes());
                assert_eq!(signed(-n, &mut [0; 20]), (-n).to_string().as_bytes());
            }
        }
        assert_eq!(
            signed(i64::MIN, &mut [0; 20]),
            i64::MIN.to_string().as_bytes()
        );
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Reset {
        token: String,
    }

    impl TaskPayload for Reset {
        const TYPE: &'static str = "test:reset";
        const SENSITIVE: bool = true;
    }

    #[test]
    fn the_sensitive_mark_travels_with_the_task() {
        let plain = Envelope::first(
            Task::new(&Welcome {
                username: "a".into(),
            })
            .unwrap(),
        );
        assert!(!encode(&plain).iter().any(|(name, _)| *name == "sensitive"));
        let secret = Envelope::first(Task::new(&Reset { token: "t".into() }).unwrap());
        assert!(secret.task.is_sensitive());
        let queue = secret.task.queue.clone();
        let decoded = decode(queue, &as_map(encode(&secret))).unwrap();
        assert!(decoded.task.is_sensitive());
        // Through the outbox's JSON form too.
        let json = serde_json::to_string(&secret.task).unwrap();
        assert!(serde_json::from_str::<Task>(&json).unwrap().is_sensitive());
    }

    #[test]
    fn members_decode() {
        let task = Task::new(&Welcome {
            username: "alice".into(),
        })
        .unwrap();
        let envelope = Envelope {
            task,
            attempt: 3,
            first_failed_at: Some(5),
            last_error: Some("boom".into()),
        };
        let member = scheduled_member(&envelope);
        let queue = envelope.task.queue.clone();
        assert_eq!(decode_member(queue.clone(), &member).unwrap(), envelope);
        assert_eq!(
            decode_member_id(&member).as_deref(),
            Some(envelope.task.id())
        );
        assert!(decode_member(queue, "{").is_err());
        assert_eq!(decode_member_id("[]"), None);
    }

    #[test]
    fn names_the_bad_field() {
        let task = Task::new(&Welcome {
            username: "alice".into(),
        })
        .unwrap();
        let task = Envelope::first(task);
        let mut map = as_map(encode(&task));
        map.remove("type");
        assert_eq!(
            decode(task.task.queue.clone(), &map),
            Err(DecodeError::Missing("type"))
        );
        map.insert("type".into(), Value::BulkString(b"x".to_vec()));
        // Numbers are parsed in place: bad text, bytes that are not UTF-8 and other reply
        // types are invalid, a missing one is missing.
        for bad in [
            Value::BulkString(b"one".to_vec()),
            Value::BulkString(b"1\xff".to_vec()),
            Value::BulkString(b" 1".to_vec()),
            Value::Nil,
        ] {
            map.insert("attempt".into(), bad);
            assert_eq!(
                decode(task.task.queue.clone(), &map),
                Err(DecodeError::Invalid("attempt"))
            );
        }
        map.insert("attempt".into(), Value::SimpleString("2".into()));
        assert_eq!(decode(task.task.queue.clone(), &map).unwrap().attempt, 2);
        // Attempts count from 1, and an attempt has some time: 0 is refused for both.
        for name in ["attempt", "timeout_ms"] {
            let mut zero = map.clone();
            zero.insert(name.into(), Value::BulkString(b"0".to_vec()));
            assert_eq!(
                decode(task.task.queue.clone(), &zero),
                Err(DecodeError::Invalid(name))
            );
        }
        map.remove("max_retry");
        assert_eq!(
            decode(task.task.queue.clone(), &map),
            Err(DecodeError::Missing("max_retry"))
        );
    }
}
