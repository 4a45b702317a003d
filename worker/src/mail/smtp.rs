//! SMTP delivery with lettre (async, Tokio, rustls). TLS: `none` (plain, for local relays and
//! tests), `starttls` (upgrade on the submission port, 587) or `tls` (implicit TLS, 465).
//!
//! Failures are sorted for the retry rules: a permanent rejection (5xx, such as 550 for an
//! unknown recipient) is [`MailError::Rejected`] and goes to the dead letters without burning
//! retries; anything else (connection refused, timeout, 4xx) is [`MailError::Transient`].

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::MultiPart,
    transport::smtp::authentication::Credentials,
};
use simplebank_core::{domain::mask, secret::Secret};
use tracing::Instrument;

use super::{Email, MailError, Mailer};
use crate::handler::BoxFuture;

/// `SMTP_TLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
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
    /// `SMTP_TIMEOUT`, default 10s: connect and each command.
    pub timeout: Duration,
}

/// Delivers through an SMTP server, reusing connections (lettre's pool).
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer").finish_non_exhaustive()
    }
}

impl SmtpMailer {
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
        })
    }
}

fn message(email: &Email) -> Result<Message, MailError> {
    let invalid = |what: &str| MailError::Invalid(format!("bad {what} address"));
    Message::builder()
        .message_id(Some(format!("<{}>", email.message_id)))
        .from(email.from.parse().map_err(|_| invalid("sender"))?)
        .to(email.to.parse().map_err(|_| invalid("recipient"))?)
        .subject(&email.subject)
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| MailError::Invalid(e.to_string()))
}

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>> {
        let span = tracing::info_span!(
            "send email",
            otel.kind = "client",
            email.transport = "smtp",
            email.message_id = %email.message_id,
        );
        Box::pin(
            async move {
                let message = message(email)?;
                // Servers often echo the recipient in their replies; errors end up in logs,
                // spans and dead letters, so the address is masked there.
                let describe = |err: &lettre::transport::smtp::Error| {
                    err.to_string().replace(&email.to, &mask(&email.to))
                };
                match self.transport.send(message).await {
                    Ok(_) => Ok(()),
                    Err(err) if err.is_permanent() => Err(MailError::Rejected(describe(&err))),
                    Err(err) => Err(MailError::Transient(describe(&err))),
                }
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_multipart_message_with_its_message_id() {
        let email = Email {
            message_id: "verify-email-7@simplebank".into(),
            from: "Simple Bank <no-reply@simplebank.test>".into(),
            to: "alice@example.com".into(),
            subject: "Welcome".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
        };
        let formatted = String::from_utf8(message(&email).unwrap().formatted()).unwrap();
        assert!(formatted.contains("Message-ID: <verify-email-7@simplebank>"));
        assert!(formatted.contains("multipart/alternative"));
        let bad = Email {
            to: "not an address".into(),
            ..email
        };
        assert!(message(&bad).unwrap_err().is_permanent());
    }
}
