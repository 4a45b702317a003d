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

/// `reply` without what it echoes of `email` (`raw`: the message as sent): pieces of its long
/// runs (the secret code), then addresses.
fn masked_reply(reply: &str, email: &Email, raw: &[u8]) -> String {
    let raw = String::from_utf8_lossy(raw);
    mask_addresses(&mask_echoes(reply, &[&email.text, &email.html, &raw]))
}

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
            let sent = tokio::time::timeout(self.timeout, self.transport.send(message)).await;
            // Servers echo the recipient in their replies, in any spelling, and content
            // filters quote the message (its link, with the secret code); errors end up in
            // logs, spans and dead letters, so both are masked.
            let masked =
                |err: lettre::transport::smtp::Error| masked_reply(&err.to_string(), email, &raw);
            match sent {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) if err.is_permanent() => Err(MailError::Rejected(masked(err))),
                Ok(Err(err)) => Err(MailError::Transient(masked(err))),
                Err(_) => Err(MailError::Transient(format!(
                    "no answer from the SMTP server within SMTP_TIMEOUT ({:?})",
                    self.timeout
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
