//! `task:send_verify_email`: create the user's verification record and email the link.
//!
//! Idempotent by task id: the record is keyed by it, so a redelivery finds the record of the
//! first delivery; once its email is marked sent, a redelivery sends nothing. The code is an
//! HMAC of the task id under `VERIFY_EMAIL_KEY`, so every delivery of a task (a stalled worker
//! and the one that took over, say) sends the same code, and every email sent carries a code
//! that verifies; the database keeps only its hash. Mail failures follow the retry rules: a
//! permanent rejection (5xx) is dead-lettered at once, a transient one is retried with backoff.

use std::{sync::Arc, time::Duration};

use simplebank_core::{
    domain::has_refused_chars,
    secret::{SECRET_CODE_LEN, Secret, derive_code},
    store::{Store, StoreError},
    tasks::SendVerifyEmail,
};
use simplebank_queue::{Handler, HandlerError, TaskContext};

use crate::mail::{Email, MailError, Mailer};

/// Runs `task:send_verify_email` ([`SendVerifyEmail`]).
#[derive(Clone)]
pub struct SendVerifyEmailHandler {
    store: Store,
    mailer: Arc<dyn Mailer>,
    sender: String,
    verify_url: String,
    expiry: Duration,
    code_key: Secret<Vec<u8>>,
}

impl std::fmt::Debug for SendVerifyEmailHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendVerifyEmailHandler")
            .field("verify_url", &self.verify_url)
            .finish_non_exhaustive()
    }
}

impl SendVerifyEmailHandler {
    /// A handler reading users from `store` and sending with `mailer`; codes are derived from
    /// `code_key` and expire after `expiry`; links start with `verify_url`.
    pub fn new(
        store: Store,
        mailer: Arc<dyn Mailer>,
        sender: String,
        verify_url: String,
        expiry: Duration,
        code_key: Secret<Vec<u8>>,
    ) -> Self {
        Self {
            store,
            mailer,
            sender,
            verify_url,
            expiry,
            code_key,
        }
    }

    async fn run(&self, payload: SendVerifyEmail, task: TaskContext) -> Result<(), HandlerError> {
        let user = match self.store.get_user(&payload.username).await {
            Ok(user) => user,
            // The outbox only holds tasks of committed users: a missing one was deleted since.
            Err(StoreError::NotFound) => {
                return Err(HandlerError::skip_retry("the user no longer exists"));
            }
            Err(err) => return Err(HandlerError::new(err)),
        };
        // The name goes into the body: a line break there could put text of the attacker's
        // at the top of the email. The edge refuses such names; this guards rows made otherwise.
        if has_refused_chars(&user.full_name) {
            return Err(HandlerError::skip_retry(MailError::Invalid(
                "the user's full_name holds control or format characters".into(),
            )));
        }
        let code = derive_code(
            &self.code_key,
            &format!("send_verify_email:{}", task.id()),
            SECRET_CODE_LEN,
        );
        let (record, _created) = self
            .store
            .create_verify_email(task.id(), &user.username, &user.email, &code, self.expiry)
            .await
            .map_err(HandlerError::new)?;
        if record.email_sent_at.is_some() {
            tracing::info!(
                task_id = %task.id(), verify_email_id = record.id,
                "verification email already sent for this task; not sending again"
            );
            return Ok(());
        }
        let link = Secret::new(format!(
            "{}?email_id={}&secret_code={}",
            self.verify_url,
            record.id,
            code.expose()
        ));
        let email = Email {
            // By task id: unique across database resets, the same for every delivery of a task.
            message_id: format!("verify-email-{}@simplebank", task.id()),
            from: self.sender.clone(),
            to: record.email.clone(),
            subject: "Welcome to Simple Bank".into(),
            text: format!(
                "Hello {name},\r\n\r\nThank you for registering with us!\r\n\
                 Please verify your email address by opening this link:\r\n{link}\r\n",
                name = user.full_name,
                link = link.expose()
            ),
            html: format!(
                "<p>Hello {name},</p><p>Thank you for registering with us!</p>\
                 <p>Please <a href=\"{link}\">click here</a> to verify your email address.</p>",
                name = html_escape(&user.full_name),
                link = html_escape(link.expose())
            ),
        };
        self.mailer.send(&email).await.map_err(|err| {
            if err.is_permanent() {
                HandlerError::skip_retry(err)
            } else {
                HandlerError::new(err)
            }
        })?;
        // A crash between the send and this line sends the email again on redelivery, with the
        // same code (its second use says "already used"): the one duplicate window.
        self.store
            .mark_verify_email_sent(record.id)
            .await
            .map_err(HandlerError::new)?;
        tracing::info!(
            task_id = %task.id(),
            username = %user.username,
            verify_email_id = record.id,
            "sent verification email"
        );
        Ok(())
    }
}

impl Handler<SendVerifyEmail> for SendVerifyEmailHandler {
    async fn handle(
        &self,
        payload: SendVerifyEmail,
        context: TaskContext,
    ) -> Result<(), HandlerError> {
        self.run(payload, context).await
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
