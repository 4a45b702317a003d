//! Log lines. Development: human-readable; production: one JSON object per line. Inside a
//! span, every line carries the OpenTelemetry `trace_id` and `span_id`, so a log line leads to
//! its trace in Jaeger and back.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
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
/// forged a second log line, an ESC a terminal sequence. JSON escapes control characters itself.
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
        let ids = ctx.lookup_current().and_then(|_| {
            let context = tracing::Span::current().context();
            let span = context.span();
            let span_context = span.span_context();
            span_context.is_valid().then(|| {
                (
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                )
            })
        });
        let body = line.strip_suffix('\n').unwrap_or(&line);
        let body = if self.json {
            std::borrow::Cow::Borrowed(body)
        } else {
            escape_controls(body)
        };
        let Some((trace_id, span_id)) = ids else {
            return writeln!(writer, "{body}");
        };
        if self.json && body.ends_with('}') {
            let body = &body[..body.len() - 1];
            writeln!(
                writer,
                r#"{body},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#
            )
        } else {
            writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
        }
    }
}

/// Whether `c` must not reach a log line as it is: C0 and C1 controls (CR, LF, ESC, NUL...) and
/// the characters that reorder how a terminal or viewer shows the text around them.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `line` with every character [`must_escape`] names written as `\n`, `\r`, `\t` or `\u{..}`.
fn escape_controls(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains(must_escape) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut escaped = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        match c {
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
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, emit: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::registry().with(layer_to(format, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    const FORGED: &str =
        "t1\r\n2026-01-01T00:00:00Z ERROR forged: \u{1b}[2J\u{0}\u{202e}gpj.exe\u{85}";

    #[test]
    fn a_pretty_line_cannot_be_split_or_carry_terminal_sequences() {
        let out = logged(LogFormat::Pretty, || {
            tracing::warn!(task_id = %FORGED, "dead-lettered {}", FORGED);
            tracing::info!("plain");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out:?}");
        assert!(
            !out.contains(['\r', '\u{1b}', '\0', '\u{202e}', '\u{85}']),
            "{out:?}"
        );
        assert!(lines[0].contains("task_id=t1\\r\\n2026-01-01T00:00:00Z ERROR forged: \\u{1b}[2J\\u{0}\\u{202e}gpj.exe\\u{85}"), "{out:?}");
        assert!(lines[0].contains("dead-lettered t1\\r\\n"), "{out:?}");
        assert!(lines[1].ends_with("plain"), "{out:?}");
    }

    #[test]
    fn a_json_line_stays_one_object_with_its_text_intact() {
        let out = logged(LogFormat::Json, || tracing::warn!(task_id = %FORGED, "x"));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(!out.contains(['\r', '\u{1b}', '\0']), "{out:?}");
        assert!(lines[0].contains(r#""task_id":"t1\r\n2026"#), "{out:?}");
    }
}
