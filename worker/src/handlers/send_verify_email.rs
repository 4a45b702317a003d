//! `task:send_verify_email`: create the user's verification record and email the link.
//!
//! Idempotent by task id: the record is keyed by it, so a redelivery finds the record of the
//! first delivery; once its email is marked sent, a redelivery sends nothing. The code is an
//! HMAC of the task id under `VERIFY_EMAIL_KEY`, so every delivery of a task (a stalled worker
//! and the one that took over, say) sends the same code, and every email sent carries a code
//! that verifies; the database keeps only its hash. Mail failures follow the retry rules: a
//! permanent rejection (5xx) is dead-lettered at once, a transient one is retried with backoff.
//! A database that cannot be reached is not the task's fault: the task is retried without
//! using up an attempt, so an outage of any length loses no verification email.

use std::{sync::Arc, time::Duration};

use simplebank_core::{
    secret::{SECRET_CODE_LEN, Secret, derive_code},
    store::{Store, StoreError},
    tasks::SendVerifyEmail,
};
use simplebank_queue::{Handler, HandlerError, TaskContext};

use crate::mail::{Email, Mailer};

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
            Err(err) => return Err(store_failure(err)),
        };
        let code = derive_code(
            &self.code_key,
            &format!("send_verify_email:{}", task.id()),
            SECRET_CODE_LEN,
        );
        let (record, _created) = self
            .store
            .create_verify_email(task.id(), &user.username, &user.email, &code, self.expiry)
            .await
            .map_err(store_failure)?;
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
            // No name of the user's: whoever signs up or changes an address chooses what it
            // says, and the address is not verified yet, so the name would put the sender's
            // text in a Simple Bank email to anyone ("claim your prize at ...").
            text: format!(
                "Hello,\r\n\r\nThank you for registering with us!\r\n\
                 Please verify your email address by opening this link:\r\n{link}\r\n",
                link = link.expose()
            ),
            html: format!(
                "<p>Hello,</p><p>Thank you for registering with us!</p>\
                 <p>Please <a href=\"{link}\">click here</a> to verify your email address.</p>",
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
            .map_err(store_failure)?;
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

/// A database that cannot be reached (refused, down, hung) is retried without counting the
/// attempt (backoff at the current attempt's delay); any other database error is a failed attempt.
fn store_failure(err: StoreError) -> HandlerError {
    if err.is_unavailable() {
        HandlerError::not_a_failure(err)
    } else {
        HandlerError::new(err)
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
