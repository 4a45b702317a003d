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

use std::time::Duration;

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
    transport: AsyncSmtpTransport<Tokio1Executor>,
    timeout: Duration,
}

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
            transport: builder.build(),
            timeout: config.timeout,
        })
    }
}

impl SmtpMailer {
    /// Sends `message` on a thread with a runtime of its own. lettre parses a reply again with
    /// each of its lines (quadratic: a 2,000-line reply took 10 s of CPU), which on the
    /// worker's one runtime thread would stall every task and lease renewal, and let no
    /// timeout fire, for as long as a hostile server likes. Off it, `SMTP_TIMEOUT` ends the
    /// attempt on time; the thread finishes the parse on its own (lettre stops reading a reply
    /// at 100 KB) and exits. A thread of its own, not the runtime's blocking pool: the runtime
    /// would wait for it when the worker stops.
    async fn off_runtime(&self, message: lettre::Message) -> Result<Sent, MailError> {
        let (transport, timeout) = (self.transport.clone(), self.timeout);
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("smtp-send".into())
            .spawn(move || {
                let sent = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| {
                        MailError::Transient(format!("cannot start the SMTP send: {err}"))
                    })
                    .and_then(|runtime| {
                        // Bounds the thread's own wait on a server that stalls.
                        runtime
                            .block_on(async {
                                tokio::time::timeout(timeout, transport.send(message)).await
                            })
                            .map_err(|_| no_answer(timeout))
                    });
                let _ = done.send(sent);
            })
            .map_err(|err| MailError::Transient(format!("cannot start the SMTP send: {err}")))?;
        result
            .await
            .map_err(|_| MailError::Transient("the SMTP send ended without a result".into()))?
    }
}

/// What lettre made of one attempt.
type Sent = Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error>;

/// The error of an attempt cut off by `SMTP_TIMEOUT`.
fn no_answer(timeout: Duration) -> MailError {
    MailError::Transient(format!(
        "no answer from the SMTP server within SMTP_TIMEOUT ({timeout:?})"
    ))
}

/// `reply` without what it echoes of `email` (`raw`: the message as sent): pieces of its long
/// runs (the secret code), then addresses.
fn masked_reply(reply: &str, email: &Email, raw: &[u8]) -> String {
    let raw = String::from_utf8_lossy(raw);
    let mut masked = mask_addresses(&mask_echoes(reply, &[&email.text, &email.html, &raw]));
    // A reply may be 100 KB, and masking may double it: every retry, dead letter and admin
    // page would carry it.
    if let Some((cut, _)) = masked.char_indices().nth(MAX_REPLY_CHARS) {
        masked.truncate(cut);
        masked.push_str("...");
    }
    masked
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
            let sent = tokio::time::timeout(self.timeout, self.off_runtime(message)).await;
            // Servers echo the recipient in their replies, in any spelling, and content
            // filters quote the message (its link, with the secret code); errors end up in
            // logs, spans and dead letters, so both are masked.
            let masked =
                |err: lettre::transport::smtp::Error| masked_reply(&err.to_string(), email, &raw);
            match sent {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err(err))) if err.is_permanent() => Err(MailError::Rejected(masked(err))),
                Ok(Ok(Err(err))) => Err(MailError::Transient(masked(err))),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(no_answer(self.timeout)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

    use super::*;

    /// An SMTP server that takes the message, then answers it with `lines` lines.
    async fn long_winded_server(lines: usize) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read).lines();
            write.write_all(b"220 long-winded ESMTP\r\n").await?;
            while let Some(line) = read.next_line().await? {
                let command = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                let reply = match command.as_str() {
                    "EHLO" | "HELO" | "MAIL" | "RCPT" => "250 OK\r\n".to_owned(),
                    "DATA" => {
                        write.write_all(b"354 go on\r\n").await?;
                        while read.next_line().await?.is_some_and(|line| line != ".") {}
                        "554-5.7.1 refused\r\n".repeat(lines) + "554 5.7.1 end\r\n"
                    }
                    _ => "221 bye\r\n".to_owned(),
                };
                write.write_all(reply.as_bytes()).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        port
    }

    fn email() -> Email {
        Email {
            message_id: "verify-email-1@simplebank".into(),
            from: "Simple Bank <no-reply@simplebank.test>".into(),
            to: "alice@example.com".into(),
            subject: "Verify".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
        }
    }

    /// lettre takes seconds of CPU to parse a reply of a few thousand lines (10 s for this one
    /// in a debug build here, in one poll): off the caller's runtime, the attempt ends at
    /// `SMTP_TIMEOUT` meanwhile. On it, the parse held the thread, and every task and timer on
    /// it, until it was done. The bound is five timeouts, far below the parse.
    #[tokio::test]
    async fn a_reply_too_long_to_parse_in_time_ends_the_attempt_at_the_timeout() {
        let port = long_winded_server(2_000).await;
        let timeout = Duration::from_millis(500);
        let mailer = SmtpMailer::new(&SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            credentials: None,
            tls: TlsMode::None,
            timeout,
        })
        .expect("mailer");
        let started = std::time::Instant::now();
        let err = mailer.send(&email()).await.expect_err("refused");
        let took = started.elapsed();
        assert!(
            matches!(&err, MailError::Transient(message) if message.contains("SMTP_TIMEOUT")),
            "{err}"
        );
        assert!(took < 5 * timeout, "the attempt took {took:?}");
    }

    #[test]
    fn a_long_reply_is_cut() {
        let reply = format!("554 {}", "refused ".repeat(1_000));
        let masked = masked_reply(&reply, &email(), b"");
        assert_eq!(masked.chars().count(), MAX_REPLY_CHARS + 3);
        assert!(masked.starts_with("554 refused") && masked.ends_with("..."));
    }

    /// A reply quoting a base64 line of the message (lettre's choice for text mostly outside
    /// ASCII: a user's name in Thai, say) keeps none of it.
    #[test]
    fn a_reply_quoting_a_base64_line_of_the_message_keeps_none_of_it() {
        let link = "http://localhost:8080/v1/verify_email?email_id=7&secret_code=K3PvOKSFq9ZtW2mLx7RbY4nHc8JdA1eG";
        let name = "สมชาย".repeat(10);
        let email = Email {
            message_id: "verify-email-1@simplebank".into(),
            from: "Simple Bank <no-reply@simplebank.test>".into(),
            to: "alice@example.com".into(),
            subject: "Verify".into(),
            text: format!("สวัสดี {name}\n{link}\n"),
            html: format!("<p>สวัสดี {name}</p><a href=\"{link}\">{link}</a>"),
        };
        let raw = build_message(&email).expect("message").formatted();
        let formatted = String::from_utf8(raw.clone()).expect("ascii");
        assert!(
            formatted.contains("Content-Transfer-Encoding: base64"),
            "{formatted}"
        );
        let body_lines: Vec<&str> = formatted
            .split("\r\n")
            .filter(|line| line.len() > 40 && !line.starts_with("--") && !line.contains([':', ' ']))
            .collect();
        assert!(!body_lines.is_empty(), "{formatted}");
        for line in body_lines {
            let reply = format!("554 5.7.1 content refused: {line}");
            let masked = masked_reply(&reply, &email, &raw);
            // Base64's padding (`=`) is all that is left of the line.
            assert_eq!(
                masked.trim_end_matches('='),
                "554 5.7.1 content refused: ***",
                "{line}"
            );
        }
    }
}
