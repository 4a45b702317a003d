//! Log lines. Development: human-readable; production: one JSON object per line. Inside a
//! span, every line carries the OpenTelemetry `trace_id` and `span_id`, so a log line leads to
//! its trace in Jaeger and back.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    Layer,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Which log format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Coloured lines for a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The formatting layer for `format`, writing to stderr.
pub fn layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    layer_to(format, std::io::stderr)
}

fn layer_to<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format(),
                json: false,
            })
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
                json: true,
            })
            .boxed(),
    }
}

/// Formats with `inner`, then adds the current span's trace and span ids. A pretty line has its
/// control and bidirectional-override characters escaped: fields written with `%` (a task's id
/// or type read from Redis, an error's text) are written as they are, and a CR or LF in one
/// forged a second log line, an ESC a terminal sequence. JSON escapes only C0 controls itself:
/// the rest (C1 controls such as NEL, the line and paragraph separators some viewers break
/// lines on, bidirectional overrides) are written there as `\uXXXX`, which decodes to the same
/// text.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The attached OpenTelemetry context: the current `tracing` span's (tracing-opentelemetry
        // attaches it while the span is entered) or, inside a task's handler, the queue's
        // `process` span's, which is not a `tracing` span (`simplebank_queue::trace`).
        let context = opentelemetry::Context::current();
        let span = context.span();
        let span_context = span.span_context();
        let ids = span_context.is_valid().then(|| {
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        });
        writer.write_str(&finish(&line, self.json, ids))
    }
}

/// `line` (one formatted event, with or without its newline) escaped for its format, with the
/// span's `(trace_id, span_id)` added when there are ids, and one newline.
fn finish(line: &str, json: bool, ids: Option<(String, String)>) -> String {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let body = if json {
        escape_json_extras(body)
    } else {
        escape_controls(body)
    };
    match ids {
        None => format!("{body}\n"),
        Some((trace_id, span_id)) if json && body.ends_with('}') => {
            let body = &body[..body.len() - 1];
            format!(r#"{body},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#) + "\n"
        }
        Some((trace_id, span_id)) => format!("{body} trace_id={trace_id} span_id={span_id}\n"),
    }
}

/// Whether `c` must not reach a log line as it is: C0 and C1 controls (CR, LF, ESC, NUL...) and
/// the characters that reorder how a terminal or viewer shows the text around them.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// A JSON line with every character [`must_escape`] names that serde_json leaves as it is
/// written as a `\uXXXX` escape (a pair of them, UTF-16, past the Basic Multilingual Plane),
/// only ever inside strings: the rest of a JSON line is ASCII.
fn escape_json_extras(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains(must_escape) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut escaped = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if must_escape(c) {
            use std::fmt::Write as _;
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(escaped, "\\u{unit:04x}");
            }
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// `line` with every character [`must_escape`] names written as `\n`, `\r`, `\t` or `\u{..}`,
/// and then a backslash as two, so that in a line with escapes text spelling one (`\r\n` typed
/// out) cannot pass for an escaped character. A line with nothing to escape is left as it is:
/// doubling there turned every `\"` of a `?`-formatted value into `\\"`.
fn escape_controls(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains(must_escape) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut escaped = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if must_escape(c) => {
                use std::fmt::Write as _;
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        /// What was written so far.
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub(crate) fn logged(format: LogFormat, emit: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::registry().with(layer_to(format, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        captured.text()
    }

    const FORGED: &str = "t1\r\n2026-01-01T00:00:00Z ERROR forged: \u{1b}[2J\u{0}\u{202e}gpj.exe\u{85}\u{2028}x\u{61c}\u{200b}\u{feff}\u{ad}\u{e0041}";

    /// Characters no line may carry as they are.
    const RAW: [char; 12] = [
        '\u{ad}',
        '\u{e0041}',
        '\u{200b}',
        '\u{feff}',
        '\r',
        '\u{1b}',
        '\0',
        '\u{202e}',
        '\u{85}',
        '\u{2028}',
        '\u{61c}',
        '\t',
    ];

    #[test]
    fn a_pretty_line_cannot_be_split_or_carry_terminal_sequences() {
        let out = logged(LogFormat::Pretty, || {
            tracing::warn!(task_id = %FORGED, "dead-lettered {}\t{}", FORGED, 1);
            tracing::info!("plain");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out:?}");
        assert!(!out.contains(RAW), "{out:?}");
        assert!(
            lines[0].contains(
                "task_id=t1\\r\\n2026-01-01T00:00:00Z ERROR forged: \\u{1b}[2J\\u{0}\\u{202e}gpj.exe\\u{85}\\u{2028}x\\u{61c}\\u{200b}\\u{feff}\\u{ad}\\u{e0041}"
            ),
            "{out:?}"
        );
        assert!(lines[0].contains("dead-lettered t1\\r\\n"), "{out:?}");
        assert!(lines[0].contains("\\t1"), "{out:?}");
        assert!(lines[1].ends_with("plain"), "{out:?}");
        // In a line with escapes, text that spells one stays distinguishable from it; a line
        // without is left as it is (a `?` value's quotes stay `\"`).
        let spelled = logged(LogFormat::Pretty, || {
            tracing::warn!(task_id = %"c\\r\\n\r\n", "x");
            tracing::warn!(reason = ?"field \"attempt\"", "y");
        });
        assert!(spelled.contains(r"task_id=c\\r\\n\r\n"), "{spelled:?}");
        assert!(
            spelled.contains(r#"reason="field \"attempt\"""#),
            "{spelled:?}"
        );
    }

    #[test]
    fn a_json_line_stays_one_object_with_its_text_intact() {
        let out = logged(LogFormat::Json, || tracing::warn!(task_id = %FORGED, "x"));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(!out.contains(RAW), "{out:?}");
        let json: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(json["task_id"], FORGED, "{out:?}");
    }

    /// A line logged where an OpenTelemetry span is attached, with no `tracing` span (a
    /// handler inside the queue's `process` span), carries that span's ids.
    #[test]
    fn a_line_carries_the_ids_of_the_attached_span() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let out = logged(LogFormat::Json, || {
            let _attached = opentelemetry::Context::new()
                .with_remote_span_context(span)
                .attach();
            tracing::warn!("inside");
        });
        let json: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(
            json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{out}"
        );
        assert_eq!(json["span_id"], "00f067aa0ba902b7", "{out}");
        let outside = logged(LogFormat::Pretty, || tracing::warn!("outside"));
        assert!(!outside.contains("trace_id"), "{outside}");
    }

    /// Inside a span the ids follow the escaped line, once, at its end (JSON: as two members).
    #[test]
    fn the_trace_ids_follow_the_escaped_line() {
        let ids = || {
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into(),
            ))
        };
        let pretty = finish("WARN x: a\r\nb\u{2028}\n", false, ids());
        assert_eq!(
            pretty,
            "WARN x: a\\r\\nb\\u{2028} trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7\n"
        );
        let json = finish("{\"message\":\"a\u{202e}b\"}\n", true, ids());
        assert_eq!(
            json,
            "{\"message\":\"a\\u202eb\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"span_id\":\"00f067aa0ba902b7\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["message"], "a\u{202e}b");
        assert_eq!(finish("plain\n", false, None), "plain\n");
    }
}
