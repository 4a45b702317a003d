//! A [`Task`] as the fields of one Redis Stream entry, and back. Two fields:
//!
//! | field     | value                                                                |
//! |-----------|----------------------------------------------------------------------|
//! | `task`    | the envelope, a JSON object (below)                                  |
//! | `payload` | the payload, JSON text                                               |
//!
//! The envelope:
//!
//! | key           | value                                                    |
//! |---------------|----------------------------------------------------------|
//! | `id`          | task id (UUID unless the producer chose one)             |
//! | `type`        | task type, e.g. `task:send_verify_email`                 |
//! | `attempt`     | 1 for the first attempt                                  |
//! | `max_retry`   | retries allowed after the first attempt                  |
//! | `timeout_ms`  | how long one attempt may run                             |
//! | `enqueued_at` | creation time, ms since the Unix epoch                   |
//! | `traceparent` | W3C trace context of the producer (absent when none)     |
//! | `tracestate`  | W3C trace state (absent when none)                       |
//! | `deadline`    | no attempt starts after it, ms since the epoch (optional)|
//! | `unique`      | the lock held, `{ns}:unique:<unique>` (optional)         |
//! | `first_failed_at` | end of the first failed attempt, ms (after a failure)|
//! | `last_error`  | error of the last failed attempt (after a failure)       |
//!
//! Why one JSON field rather than a stream field each: a worker parses every field of every
//! entry it reads, and with thirteen fields that parsing was the largest part of its CPU when
//! draining (perf, see BENCHMARKS.md). `XRANGE` still shows the envelope readably.
//!
//! The queue is not a field: it is the stream the entry is in. A delayed task waits in the
//! scheduled set as [`scheduled_member`]: the same fields plus its queue, as JSON.

use std::borrow::Cow;
use std::collections::HashMap;

use redis::Value;

use super::{QueueName, Task};

/// Why a stream entry is not a task. Names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("missing field {0:?}")]
    Missing(&'static str),
    #[error("field {0:?} is not valid")]
    Invalid(&'static str),
}

/// The envelope of a task, as stored in the `task` field.
#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    attempt: u32,
    max_retry: u32,
    timeout_ms: u64,
    enqueued_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unique: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_failed_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<Cow<'a, str>>,
}

/// The entry fields of `task`: `task` (the envelope) and `payload`.
pub fn encode(task: &Task) -> Vec<(&'static str, String)> {
    let envelope = Envelope {
        id: Cow::Borrowed(&task.id),
        kind: Cow::Borrowed(&task.kind),
        attempt: task.attempt,
        max_retry: task.max_retry,
        timeout_ms: task.timeout_ms,
        enqueued_at: task.enqueued_at,
        traceparent: task.traceparent.as_deref().map(Cow::Borrowed),
        tracestate: task.tracestate.as_deref().map(Cow::Borrowed),
        deadline: task.deadline,
        unique: task.unique.as_deref().map(Cow::Borrowed),
        first_failed_at: task.first_failed_at,
        last_error: task.last_error.as_deref().map(Cow::Borrowed),
    };
    // Serializing strings and integers cannot fail.
    let envelope = serde_json::to_string(&envelope).unwrap_or_default();
    vec![("task", envelope), ("payload", task.payload.clone())]
}

/// The scheduled-set member for `task`: `{"queue": ..., "fields": [name, value, ...]}`. It
/// holds the task id and attempt, so two retries of one task are two members.
pub fn scheduled_member(task: &Task) -> String {
    let fields: Vec<String> = encode(task)
        .into_iter()
        .flat_map(|(name, value)| [name.to_owned(), value])
        .collect();
    serde_json::json!({ "queue": task.queue.as_str(), "fields": fields }).to_string()
}

/// One stream entry as read: its id and its fields, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
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

/// The task held by an entry of the stream of `queue`.
pub fn decode_entry(queue: QueueName, entry: &Entry) -> Result<Task, DecodeError> {
    decode_with(queue, &|name| entry.get(name))
}

/// The task held by the fields `map` of an entry of the stream of `queue`.
pub fn decode(queue: QueueName, map: &HashMap<String, Value>) -> Result<Task, DecodeError> {
    decode_with(queue, &|name| map.get(name))
}

/// Looks a field up by name.
type Lookup<'a> = dyn Fn(&str) -> Option<&'a Value> + 'a;

fn decode_with<'a>(queue: QueueName, map: &Lookup<'a>) -> Result<Task, DecodeError> {
    let envelope: Envelope<'_> =
        serde_json::from_slice(bytes(map, "task")?).map_err(|_| DecodeError::Invalid("task"))?;
    let payload =
        std::str::from_utf8(bytes(map, "payload")?).map_err(|_| DecodeError::Invalid("payload"))?;
    Ok(Task {
        id: envelope.id.into_owned(),
        kind: envelope.kind.into_owned(),
        payload: payload.to_owned(),
        queue,
        max_retry: envelope.max_retry,
        attempt: envelope.attempt,
        timeout_ms: envelope.timeout_ms,
        enqueued_at: envelope.enqueued_at,
        traceparent: envelope.traceparent.map(Cow::into_owned),
        tracestate: envelope.tracestate.map(Cow::into_owned),
        deadline: envelope.deadline,
        unique: envelope.unique.map(Cow::into_owned),
        first_failed_at: envelope.first_failed_at,
        last_error: envelope.last_error.map(Cow::into_owned),
        schedule: None,
        unique_ttl_ms: None,
    })
}

/// The bytes of field `name`.
fn bytes<'a>(map: &Lookup<'a>, name: &'static str) -> Result<&'a [u8], DecodeError> {
    match map(name) {
        Some(Value::BulkString(bytes)) => Ok(bytes),
        Some(Value::SimpleString(text)) => Ok(text.as_bytes()),
        Some(_) => Err(DecodeError::Invalid(name)),
        None => Err(DecodeError::Missing(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::SendVerifyEmail;

    fn as_map(fields: Vec<(&'static str, String)>) -> HashMap<String, Value> {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
            .collect()
    }

    #[test]
    fn round_trip() {
        let mut task = Task::new(&SendVerifyEmail {
            username: "alice".into(),
        })
        .unwrap();
        task.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        task.first_failed_at = Some(1_700_000_000_000);
        task.last_error = Some("boom".into());
        let task = task.with_task_id("fixed-id").unwrap();
        let decoded = decode(task.queue.clone(), &as_map(encode(&task))).unwrap();
        assert_eq!(decoded, task);
        let entry = Entry {
            id: "1-0".into(),
            fields: as_map(encode(&task)).into_iter().collect(),
        };
        assert_eq!(decode_entry(task.queue.clone(), &entry).unwrap(), task);
    }

    #[test]
    fn names_the_bad_field() {
        let task = Task::new(&SendVerifyEmail {
            username: "alice".into(),
        })
        .unwrap();
        let mut map = as_map(encode(&task));
        map.remove("payload");
        assert_eq!(
            decode(task.queue.clone(), &map),
            Err(DecodeError::Missing("payload"))
        );
        map.remove("task");
        assert_eq!(
            decode(task.queue.clone(), &map),
            Err(DecodeError::Missing("task"))
        );
        map.insert("payload".into(), Value::BulkString(b"{}".to_vec()));
        map.insert(
            "task".into(),
            Value::BulkString(br#"{"id":"x","type":"t","attempt":"one"}"#.to_vec()),
        );
        assert_eq!(
            decode(task.queue.clone(), &map),
            Err(DecodeError::Invalid("task"))
        );
    }

    #[test]
    fn an_entry_is_two_fields_with_a_readable_envelope() {
        let task = Task::new(&SendVerifyEmail {
            username: "alice".into(),
        })
        .unwrap();
        let fields = encode(&task);
        let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["task", "payload"]);
        let envelope: serde_json::Value = serde_json::from_str(&fields[0].1).unwrap();
        assert_eq!(envelope["type"], "task:send_verify_email");
        assert_eq!(envelope["attempt"], 1);
        assert!(
            envelope.get("last_error").is_none(),
            "unset options are left out"
        );
        assert_eq!(fields[1].1, r#"{"username":"alice"}"#);
    }
}
