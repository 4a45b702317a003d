//! Sending email. [`Mailer`] is the seam; [`FileMailer`] (the default, `EMAIL_MAILER=file`)
//! writes each message as an `.eml` file, so development needs no mail server;
//! [`smtp::SmtpMailer`] (`EMAIL_MAILER=smtp`) delivers through an SMTP server. Both send what
//! [`build_message`] builds: headers are written by lettre, never by string concatenation, and
//! text that could break out of a header or the body is refused before that.

pub mod redact;
pub mod smtp;

use std::{
    fmt,
    io::Write,
    path::{Path, PathBuf},
};

use lettre::{
    Address, Message,
    message::{Mailbox, MultiPart},
};
use simplebank_core::{
    domain::{has_refused_chars, mask},
    secret::random_code,
};
use tracing::Instrument;

/// A boxed, sendable future (what a [`Mailer`] returns).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message. Bodies may hold secrets (a verification link): `Debug` shows neither them nor
/// the full address.
#[derive(Clone)]
pub struct Email {
    /// Stable per logical message (a redelivered task produces the same id).
    pub message_id: String,
    /// The `From` header.
    pub from: String,
    /// The one recipient.
    pub to: String,
    /// The `Subject` header.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body.
    pub html: String,
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("message_id", &self.message_id)
            .field("to", &mask(&self.to))
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Why an email was not sent. The texts are masked (no full address, no code).
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The OS error is part of the message (not a `source`): the worker logs and dead-letters
    /// a failure's message, and this is the one detail an operator needs.
    #[error("could not write the email file {path}: {cause}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The message could not be built (a malformed sender or recipient address, or text with
    /// control characters): permanent.
    #[error("invalid email: {0}")]
    Invalid(String),
    /// The SMTP server refused for good (5xx, e.g. 550 on RCPT): retrying cannot help.
    #[error("SMTP server rejected the message permanently: {0}")]
    Rejected(String),
    /// Connection refused, timeout, 4xx: worth retrying.
    #[error("SMTP delivery failed (transient): {0}")]
    Transient(String),
}

impl MailError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::Rejected(_))
    }
}

/// Delivers emails.
pub trait Mailer: Send + Sync + 'static {
    /// Sends `email`.
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>>;
}

/// Writes each email to `<dir>/<message id>.eml` (RFC 5322, multipart/alternative). The same
/// message id overwrites the same file, atomically (write a temporary file, then rename). The
/// folder is created 0700 and the files are 0600: they hold live verification codes.
#[derive(Debug, Clone)]
pub struct FileMailer {
    dir: PathBuf,
}

impl FileMailer {
    /// Writes into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn file_name(message_id: &str) -> String {
        let safe: String = message_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{safe}.eml")
    }

    /// Writes `content` to `path` through a temporary file of its own (two deliveries of one
    /// task may write at once) that is removed on any failure.
    fn write(dir: &Path, path: &Path, content: &[u8]) -> Result<(), MailError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

        let fail = |cause| MailError::File {
            path: path.to_owned(),
            cause,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let temp = dir.join(format!(".{name}.{}.tmp", random_code(8).expose()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(fail)?;
        let written = file
            .write_all(content)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&temp, path));
        drop(file);
        written.map_err(|cause| {
            let _ = std::fs::remove_file(&temp);
            fail(cause)
        })
    }
}

impl Mailer for FileMailer {
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>> {
        let span = tracing::info_span!(
            "send email",
            otel.kind = "client",
            email.transport = "file",
            email.message_id = %email.message_id,
        );
        in_span(span, async move {
            let content = build_message(email)?.formatted();
            let dir = self.dir.clone();
            let path = dir.join(Self::file_name(&email.message_id));
            // Blocking file calls (create, write, fsync, rename) in one trip off the executor.
            tokio::task::spawn_blocking(move || Self::write(&dir, &path, &content))
                .await
                .map_err(|err| MailError::Transient(format!("the file writer failed: {err}")))?
        })
    }
}

/// Runs a mailer's `send` inside its `send email` span, and marks the span failed (status
/// ERROR, with the error's text, masked by the mailer) when the email is not sent: the
/// trace shows which attempt's mail failed, not only that its `process` span did.
pub(crate) fn in_span<'a>(
    span: tracing::Span,
    send: impl Future<Output = Result<(), MailError>> + Send + 'a,
) -> BoxFuture<'a, Result<(), MailError>> {
    let marked = span.clone();
    Box::pin(
        async move {
            let sent = send.await;
            if let Err(err) = &sent {
                simplebank_queue::trace::record_error(&marked, &err.to_string());
            }
            sent
        }
        .instrument(span),
    )
}

/// The message both mailers send: text and HTML parts, headers built by lettre. The recipient
/// must be a bare address (no display name); the recipient, subject and message id must hold
/// no control or format characters. Anything else is [`MailError::Invalid`] (permanent).
pub fn build_message(email: &Email) -> Result<Message, MailError> {
    let invalid = |what: &str| MailError::Invalid(format!("bad {what}"));
    for (what, text) in [
        ("recipient address", &email.to),
        ("subject", &email.subject),
        ("message id", &email.message_id),
        ("sender address", &email.from),
    ] {
        if has_refused_chars(text) {
            return Err(invalid(what));
        }
    }
    if !email
        .message_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
    {
        return Err(invalid("message id"));
    }
    let to: Address = email.to.parse().map_err(|_| invalid("recipient address"))?;
    Message::builder()
        .message_id(Some(format!("<{}>", email.message_id)))
        .from(
            email
                .from
                .parse::<Mailbox>()
                .map_err(|_| invalid("sender address"))?,
        )
        .to(Mailbox::new(None, to))
        .subject(&email.subject)
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| MailError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email {
            message_id: "verify-email-0b7e@simplebank".into(),
            from: "Simple Bank <no-reply@simplebank.test>".into(),
            to: "alice@example.com".into(),
            subject: "Welcome".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
        }
    }

    #[test]
    fn builds_a_multipart_message_with_bare_recipient_and_message_id() {
        let formatted = String::from_utf8(build_message(&email()).unwrap().formatted()).unwrap();
        assert!(formatted.contains("Message-ID: <verify-email-0b7e@simplebank>\r\n"));
        assert!(formatted.contains("\r\nTo: alice@example.com\r\n"));
        assert!(formatted.contains("\r\nDate: "));
        assert!(formatted.contains("multipart/alternative"));
    }

    #[test]
    fn header_text_is_encoded_by_lettre() {
        let mut accented = email();
        accented.subject = "Bienvenue à Simple Bank".into();
        accented.from = "Banque Élan <no-reply@simplebank.test>".into();
        let formatted = String::from_utf8(build_message(&accented).unwrap().formatted()).unwrap();
        let headers = formatted.split("\r\n\r\n").next().unwrap();
        assert!(headers.is_ascii(), "{headers}");
        assert!(
            headers.contains("Subject: Bienvenue =?utf-8?b?"),
            "{headers}"
        );
        assert!(headers.contains("From: =?utf-8?"), "{headers}");
    }

    #[test]
    fn refuses_what_could_inject_a_header() {
        type Spoil = fn(&mut Email);
        let cases: [(&str, Spoil); 9] = [
            ("crlf in to", |e| {
                e.to = "x\r\nBcc: attacker@evil.example\r\nX-A: y <v@example.com>".into()
            }),
            ("display name", |e| e.to = "Other <dup@example.com>".into()),
            ("comment", |e| e.to = "dup@example.com (x)".into()),
            ("lf only", |e| {
                e.to = "a@example.com\nBcc: b@evil.example".into()
            }),
            ("nul", |e| e.to = "a\0@example.com".into()),
            ("bidi", |e| e.to = "a\u{202E}@example.com".into()),
            ("line separator", |e| e.subject = "Hi\u{2028}Bcc: x".into()),
            ("crlf in subject", |e| {
                e.subject = "Hi\r\nBcc: x@evil.example".into()
            }),
            ("message id", |e| e.message_id = "a>\r\nBcc: x".into()),
        ];
        for (what, spoil) in cases {
            let mut bad = email();
            spoil(&mut bad);
            let err = build_message(&bad).expect_err(what);
            assert!(err.is_permanent(), "{what}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private_and_a_failed_write_leaves_nothing() {
        use std::os::unix::fs::PermissionsExt;

        let root = std::env::temp_dir().join(format!("mail-test-{}", random_code(8).expose()));
        let dir = root.join("mail");
        let path = dir.join("a.eml");
        FileMailer::write(&dir, &path, b"hello").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        // Renaming onto a folder fails after the temporary file was written: it is removed,
        // and the OS reason is in the message.
        std::fs::create_dir(dir.join("b.eml")).unwrap();
        let err = FileMailer::write(&dir, &dir.join("b.eml"), b"x").unwrap_err();
        assert!(err.to_string().contains("os error"), "{err}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
