//! A [`Task`] as the fields of one Redis Stream entry, and back.
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
//!
//! The queue is not a field: it is the stream the entry is in.

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

/// The entry fields of `task`, in the order of the table above.
pub fn encode(task: &Task) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", task.id.clone()),
        ("type", task.kind.clone()),
        ("payload", task.payload.clone()),
        ("attempt", task.attempt.to_string()),
        ("max_retry", task.max_retry.to_string()),
        ("timeout_ms", task.timeout_ms.to_string()),
        ("enqueued_at", task.enqueued_at.to_string()),
    ];
    if let Some(traceparent) = &task.traceparent {
        fields.push(("traceparent", traceparent.clone()));
    }
    if let Some(tracestate) = &task.tracestate {
        fields.push(("tracestate", tracestate.clone()));
    }
    fields
}

/// The task held by an entry of the stream of `queue`.
pub fn decode(queue: QueueName, map: &HashMap<String, Value>) -> Result<Task, DecodeError> {
    Ok(Task {
        id: required(map, "id")?,
        kind: required(map, "type")?,
        payload: required(map, "payload")?,
        queue,
        max_retry: number(map, "max_retry")?,
        attempt: number(map, "attempt")?,
        timeout_ms: number(map, "timeout_ms")?,
        enqueued_at: number(map, "enqueued_at")?,
        traceparent: optional(map, "traceparent")?,
        tracestate: optional(map, "tracestate")?,
    })
}

fn optional(
    map: &HashMap<String, Value>,
    name: &'static str,
) -> Result<Option<String>, DecodeError> {
    map.get(name)
        .map(|value| redis::from_redis_value_ref(value).map_err(|_| DecodeError::Invalid(name)))
        .transpose()
}

fn required(map: &HashMap<String, Value>, name: &'static str) -> Result<String, DecodeError> {
    optional(map, name)?.ok_or(DecodeError::Missing(name))
}

fn number<T: std::str::FromStr>(
    map: &HashMap<String, Value>,
    name: &'static str,
) -> Result<T, DecodeError> {
    required(map, name)?
        .parse()
        .map_err(|_| DecodeError::Invalid(name))
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
        let decoded = decode(task.queue.clone(), &as_map(encode(&task))).unwrap();
        assert_eq!(decoded, task);
    }

    #[test]
    fn names_the_bad_field() {
        let task = Task::new(&SendVerifyEmail {
            username: "alice".into(),
        })
        .unwrap();
        let mut map = as_map(encode(&task));
        map.remove("type");
        assert_eq!(
            decode(task.queue.clone(), &map),
            Err(DecodeError::Missing("type"))
        );
        map.insert("type".into(), Value::BulkString(b"x".to_vec()));
        map.insert("attempt".into(), Value::BulkString(b"one".to_vec()));
        assert_eq!(
            decode(task.queue.clone(), &map),
            Err(DecodeError::Invalid("attempt"))
        );
    }
}
