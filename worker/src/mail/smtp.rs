//! SMTP delivery with lettre (async, Tokio, rustls). TLS: `none` (plain, for local relays and
//! tests), `starttls` (upgrade on the submission port, 587) or `tls` (implicit TLS, 465).
//!
//! Failures are sorted for the retry rules: a permanent rejection (5xx, such as 550 for an
//! unknown recipient) is [`MailError::Rejected`] and goes to the dead letters without burning
//! retries; anything else (connection refused, timeout, 4xx) is [`MailError::Transient`].
//! Addresses and quoted pieces of the message in the server's replies are masked
//! ([`super::redact`]) before they go anywhere.
//!
//! `SMTP_TIMEOUT` bounds each delivery attempt as a whole: connect, greeting, TLS, login and
//! every command and reply through the reply to DATA. lettre's own timeout covers only the TCP
//! connect in its async transport, so a server that stalls a reply would hold the attempt for
//! as long as it likes. Each attempt uses a connection of its own (lettre's pool is not
//! enabled), so an attempt cut off mid-dialogue leaves nothing behind to reuse.
//!
//! Each attempt runs on a thread of its own ([`run_off_runtime`]): lettre parses a reply again
//! with each of its lines (quadratic: 2,000 lines took 10 s of CPU in a debug build), which on
//! the worker's one runtime thread would hold every task, lease renewal and timer. At most
//! [`MAX_SEND_THREADS`] run at once; an attempt waits for one within its `SMTP_TIMEOUT`.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tracing::Instrument as _;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    transport::smtp::authentication::Credentials,
};
use simplebank_core::secret::Secret;

use super::BoxFuture;
use super::{
    Email, MailError, Mailer, build_message,
    redact::{mask_addresses, mask_echoes},
};

/// `SMTP_TLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain SMTP (`none`): for a local relay only.
    None,
    /// STARTTLS after connecting (`starttls`, the default).
    StartTls,
    /// TLS from the first byte (`tls`).
    Tls,
}

impl std::str::FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "tls" => Ok(Self::Tls),
            _ => Err("expected none, starttls or tls".into()),
        }
    }
}

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `SMTP_HOST`.
    pub host: String,
    /// `SMTP_PORT`, default by TLS mode: 25 (none), 587 (starttls), 465 (tls).
    pub port: u16,
    /// `SMTP_USERNAME` / `SMTP_PASSWORD`: both or neither.
    pub credentials: Option<(String, Secret<String>)>,
    /// `SMTP_TLS`, default `starttls`.
    pub tls: TlsMode,
    /// `SMTP_TIMEOUT`, default 10s: the whole of one delivery attempt (connect and every
    /// command and reply).
    pub timeout: Duration,
}

/// Delivers through an SMTP server, one connection per attempt.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: Arc<AsyncSmtpTransport<Tokio1Executor>>,
    timeout: Duration,
    /// One permit per attempt's thread, held until the thread ends.
    threads: Arc<Semaphore>,
}

/// The most attempts' threads at once. A hostile server can keep a thread parsing for
/// minutes after its attempt timed out: this bounds how many burn the worker's CPU.
pub const MAX_SEND_THREADS: usize = 8;

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer").finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// A mailer for `config`; connects on the first send.
    pub fn new(config: &SmtpConfig) -> Result<Self, MailError> {
        let builder = match config.tls {
            TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
            TlsMode::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .map_err(|e| MailError::Invalid(e.to_string()))?,
            TlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .map_err(|e| MailError::Invalid(e.to_string()))?,
        };
        let mut builder = builder.port(config.port).timeout(Some(config.timeout));
        if let Some((user, password)) = &config.credentials {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().clone()));
        }
        Ok(Self {
            transport: Arc::new(builder.build()),
            timeout: config.timeout,
            threads: Arc::new(Semaphore::new(MAX_SEND_THREADS)),
        })
    }
}

/// Runs the future `attempt` makes on a thread of its own, with a runtime of its own, inside
/// the caller's span, and gives its output; within `timeout` in all, the wait for a permit of
/// `threads` included (the thread holds it until it ends). When the caller stops waiting (the
/// timeout, or the worker stopping), the attempt is dropped the next time it waits on the
/// server, which closes its connection. What lettre does between two waits still runs: a long reply's
/// parse, and the commands it sends on replies already received (a server answering ahead of
/// the protocol can still be sent the message).
async fn run_off_runtime<T, F>(
    threads: &Arc<Semaphore>,
    timeout: Duration,
    attempt: impl FnOnce() -> F + Send + 'static,
) -> Result<T, MailError>
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let permit = tokio::time::timeout_at(deadline, Arc::clone(threads).acquire_owned())
        .await
        .map_err(|_| {
            MailError::Transient(format!(
                "no SMTP thread free within SMTP_TIMEOUT ({timeout:?}): all {MAX_SEND_THREADS} \
                 busy with earlier attempts"
            ))
        })?
        .map_err(|_| MailError::Transient("the SMTP sender has stopped".into()))?;
    let (done, result) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let started = std::thread::Builder::new()
        .name("smtp-send".into())
        .spawn(move || {
            let _permit = permit;
            let mut done = done;
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| MailError::Transient(format!("cannot start the SMTP send: {err}")))
                .and_then(|runtime| {
                    tracing::dispatcher::with_default(&dispatch, || {
                        runtime.block_on(async {
                            tokio::select! {
                                output = tokio::time::timeout_at(deadline, attempt()).instrument(span) => {
                                    output.map_err(|_| no_answer(timeout))
                                }
                                () = done.closed() => Err(no_answer(timeout)),
                            }
                        })
                    })
                });
            let _ = done.send(outcome);
        });
    started.map_err(|err| MailError::Transient(format!("cannot start the SMTP send: {err}")))?;
    tokio::time::timeout_at(deadline, result)
        .await
        .map_err(|_| no_answer(timeout))?
        .map_err(|_| MailError::Transient("the SMTP send ended without a result".into()))?
}

/// The error of an attempt cut off by `SMTP_TIMEOUT`.
fn no_answer(timeout: Duration) -> MailError {
    MailError::Transient(format!(
        "no answer from the SMTP server within SMTP_TIMEOUT ({timeout:?})"
    ))
}

/// `reply` without what it echoes of `email` (`raw`: the message as sent): pieces of its long
/// runs (the secret code), then addresses; cut to [`MAX_REPLY_CHARS`].
fn masked_reply(reply: &str, email: &Email, raw: &[u8]) -> String {
    let raw = String::from_utf8_lossy(raw);
    let body = encoded_body(&raw);
    let mut masked = mask_addresses(&mask_echoes(reply, &[&email.text, &email.html, &body]));
    // A reply may be 100 KB, and masking may double it: every retry, dead letter and admin
    // page would carry it.
    if let Some((cut, _)) = masked.char_indices().nth(MAX_REPLY_CHARS) {
        masked.truncate(cut);
        masked.push_str("...");
    }
    masked
}

/// The body of the message as sent (not its headers, whose long words are not the message's),
/// each run of base64 lines joined into one: a part's short last line is then part of a long
/// run, which a reply quoting it is matched against.
fn encoded_body(raw: &str) -> String {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let mut out = String::with_capacity(body.len());
    let mut in_base64 = false;
    for line in body.split("\r\n") {
        let base64 = !line.is_empty()
            && line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        if !(base64 && in_base64) {
            out.push('\n');
        }
        out.push_str(line);
        in_base64 = base64;
    }
    out
}

/// The most of a server's reply kept, in characters.
const MAX_REPLY_CHARS: usize = 1_000;

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>> {
        let span = tracing::info_span!(
            "send email",
            otel.kind = "client",
            email.transport = "smtp",
            email.message_id = %email.message_id,
        );
        super::in_span(span, async move {
            let message = build_message(email)?;
            // Kept to mask a reply that quotes the message as sent (lettre chooses each part's
            // encoding: quoted-printable, or base64 for text mostly outside ASCII).
            let raw = message.formatted();
            let transport = Arc::clone(&self.transport);
            let sent = run_off_runtime(&self.threads, self.timeout, move || async move {
                transport.send(message).await
            })
            .await;
            // Servers echo the recipient in their replies, in any spelling, and content
            // filters quote the message (its link, with the secret code); errors end up in
            // logs, spans and dead letters, so both are masked.
            let masked =
                |err: lettre::transport::smtp::Error| masked_reply(&err.to_string(), email, &raw);
            match sent? {
                Ok(_) => Ok(()),
                Err(err) if err.is_permanent() => Err(MailError::Rejected(masked(err))),
                Err(err) => Err(MailError::Transient(masked(err))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    fn email(text: String, html: String) -> Email {
        Email {
            message_id: "verify-email-1@simplebank".into(),
            from: "Simple Bank <no-reply@simplebank.test>".into(),
            to: "alice@example.com".into(),
            subject: "Verify".into(),
            text,
            html,
        }
    }

    /// Until `check` holds, polled for up to ten seconds.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..1_000 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 10 s: {what}");
    }

    /// An attempt that holds its thread (as lettre's parse of a long reply does) neither holds
    /// the caller's runtime nor its timeout; while it runs it keeps its permit, and a second
    /// attempt waits for one.
    #[tokio::test]
    async fn an_attempt_holding_its_thread_holds_neither_the_caller_nor_its_timeout() {
        let threads = Arc::new(Semaphore::new(1));
        let timeout = Duration::from_millis(200);
        let (release, held) = std::sync::mpsc::channel::<()>();
        // Should the attempt run on the caller's thread (the defect), it is released after
        // 5 s rather than hang the test.
        let fallback = release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(5));
            let _ = fallback.send(());
        });
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = Arc::clone(&ticks);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let outcome = run_off_runtime(
            &threads,
            timeout,
            move || async move { held.recv().is_ok() },
        )
        .await;
        assert!(
            matches!(&outcome, Err(MailError::Transient(message)) if message.contains("no answer")),
            "the caller waited for the attempt: {outcome:?}"
        );
        assert!(
            ticks.load(Ordering::Relaxed) > 0,
            "the caller's runtime stood still"
        );
        ticker.abort();

        assert_eq!(
            threads.available_permits(),
            0,
            "the held thread keeps its permit"
        );
        let second = run_off_runtime(&threads, timeout, || async {}).await;
        assert!(
            matches!(&second, Err(MailError::Transient(message)) if message.contains("no SMTP thread free")),
            "a second attempt ran beside the held one: {second:?}"
        );
        release.send(()).expect("release");
        eventually("the thread ends and gives its permit back", || {
            threads.available_permits() == 1
        })
        .await;
        let third = run_off_runtime(&threads, timeout, || async { 3 }).await;
        assert_eq!(third.expect("ran"), 3);
    }

    /// When the caller stops waiting before the deadline (the worker stopping), the attempt is
    /// dropped at its next await: nothing after it runs (an email would otherwise go out after
    /// its attempt was counted as failed).
    #[tokio::test]
    async fn an_attempt_the_caller_gave_up_on_goes_no_further() {
        let threads = Arc::new(Semaphore::new(1));
        let finished = Arc::new(AtomicBool::new(false));
        // The caller drops the attempt well before its own deadline, as a stopping worker does.
        let attempt = run_off_runtime(&threads, Duration::from_secs(30), {
            let finished = Arc::clone(&finished);
            move || async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), attempt)
                .await
                .is_err()
        );
        eventually("the abandoned attempt's thread ends", || {
            threads.available_permits() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the abandoned attempt went on"
        );
    }

    /// A reply quoting any base64 line of the message (lettre's choice for text mostly outside
    /// ASCII: a user's name in Thai, say), the short last one included, keeps none of it: for
    /// names of every length modulo 57 (the bytes of a base64 line).
    #[test]
    fn a_reply_quoting_a_base64_line_of_the_message_keeps_none_of_it() {
        let link = "http://localhost:8080/v1/verify_email?email_id=7&secret_code=K3PvOKSFq9ZtW2mLx7RbY4nHc8JdA1eG";
        let mut quoted = 0;
        for thai in 20..39 {
            for ascii in 0..3 {
                let name = "ส".repeat(thai) + &"a".repeat(ascii);
                let email = email(
                    format!("สวัสดี {name}\n{link}\n"),
                    format!("<p>สวัสดี {name}</p><a href=\"{link}\">{link}</a>"),
                );
                let raw = build_message(&email).expect("message").formatted();
                let formatted = String::from_utf8(raw.clone()).expect("ascii");
                assert!(formatted.contains("Content-Transfer-Encoding: base64"));
                // Base64 lines: its alphabet, `=` only as padding at the end.
                let base64_lines = formatted.split("\r\n").filter(|line| {
                    line.len() >= 6
                        && line
                            .trim_end_matches('=')
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+/".contains(&b))
                });
                for line in base64_lines {
                    let reply = format!("554 5.7.1 content refused: {line}");
                    let masked = masked_reply(&reply, &email, &raw);
                    // Base64's padding (`=`) is all that is left of the line.
                    assert_eq!(
                        masked.trim_end_matches('='),
                        "554 5.7.1 content refused: ***",
                        "{line}"
                    );
                    quoted += 1;
                }
            }
        }
        assert!(quoted > 100, "{quoted}");
    }

    /// With every thread held by earlier attempts, an attempt says so rather than blame a
    /// server it never reached.
    #[tokio::test]
    async fn an_attempt_with_no_thread_free_says_so() {
        let mailer = SmtpMailer::new(&SmtpConfig {
            host: "127.0.0.1".into(),
            port: 9,
            credentials: None,
            tls: TlsMode::None,
            timeout: Duration::from_millis(100),
        })
        .expect("mailer");
        let _held = Arc::clone(&mailer.threads)
            .acquire_many_owned(u32::try_from(MAX_SEND_THREADS).expect("few"))
            .await
            .expect("permits");
        let err = mailer
            .send(&email("text".into(), "html".into()))
            .await
            .expect_err("no thread");
        assert!(
            matches!(&err, MailError::Transient(message) if message.contains("no SMTP thread free")),
            "{err}"
        );
    }

    #[test]
    fn a_long_reply_is_cut() {
        let reply = format!("554 {}", "refused ".repeat(1_000));
        let masked = masked_reply(&reply, &email("text".into(), "html".into()), b"");
        assert_eq!(masked.chars().count(), MAX_REPLY_CHARS + 3);
        assert!(masked.starts_with("554 refused") && masked.ends_with("..."));
    }
}
