//! Sending email. [`Mailer`] is the seam; [`FileMailer`] (the default, `EMAIL_MAILER=file`)
//! writes each message as an `.eml` file, so development needs no mail server;
//! [`smtp::SmtpMailer`] (`EMAIL_MAILER=smtp`) delivers through an SMTP server.

pub mod smtp;

use std::{fmt, path::PathBuf};

use simplebank_core::domain::mask;
use tracing::Instrument;

use crate::handler::BoxFuture;

/// One message. Bodies may hold secrets (a verification link): `Debug` shows neither them nor
/// the full address.
#[derive(Clone)]
pub struct Email {
    /// Stable per logical message (a redelivered task produces the same id).
    pub message_id: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
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

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("could not write the email file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The message could not be built (a malformed sender or recipient address).
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
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>>;
}

/// Writes each email to `<dir>/<message id>.eml` (RFC 5322, multipart/alternative). The same
/// message id overwrites the same file, atomically (write, then rename).
#[derive(Debug, Clone)]
pub struct FileMailer {
    dir: PathBuf,
}

impl FileMailer {
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
}

impl Mailer for FileMailer {
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>> {
        let span = tracing::info_span!(
            "send email",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            email.transport = "file",
            email.message_id = %email.message_id,
        );
        Box::pin(
            async move {
                let path = self.dir.join(Self::file_name(&email.message_id));
                let temp = path.with_extension("eml.tmp");
                let fail = |source| MailError::File {
                    path: path.clone(),
                    source,
                };
                tokio::fs::create_dir_all(&self.dir).await.map_err(fail)?;
                tokio::fs::write(&temp, render(email)).await.map_err(fail)?;
                tokio::fs::rename(&temp, &path).await.map_err(fail)?;
                Ok(())
            }
            .instrument(span),
        )
    }
}

/// The message in RFC 5322 form with a text and an HTML part.
pub fn render(email: &Email) -> String {
    let boundary = format!("=_{}", email.message_id.replace(['<', '>', '@'], "_"));
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    format!(
        "Message-ID: <{id}>\r\nDate: {date}\r\nFrom: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
         --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n\
         --{boundary}--\r\n",
        id = email.message_id,
        from = email.from,
        to = email.to,
        subject = email.subject,
        text = email.text,
        html = email.html,
    )
}
