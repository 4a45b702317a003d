//! `task:send_verify_email`: create the user's verification record and email the link.
//!
//! Idempotent by task id: the record is keyed by it, so a redelivery finds the record (and
//! code) of the first delivery, and the email gets the same message id.

use std::sync::Arc;

use simplebank_core::{
    secret::{Secret, random_code},
    store::Store,
    task::Task,
    tasks::SendVerifyEmail,
};

use crate::{
    handler::{BoxFuture, Handler, HandlerError},
    mail::{Email, Mailer},
};

/// Length of the secret code: 32 characters of `[A-Za-z0-9]`, over 190 random bits.
pub const SECRET_CODE_LEN: usize = 32;

#[derive(Clone)]
pub struct SendVerifyEmailHandler {
    store: Store,
    mailer: Arc<dyn Mailer>,
    sender: String,
    verify_url: String,
}

impl std::fmt::Debug for SendVerifyEmailHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendVerifyEmailHandler")
            .field("verify_url", &self.verify_url)
            .finish_non_exhaustive()
    }
}

impl SendVerifyEmailHandler {
    pub fn new(store: Store, mailer: Arc<dyn Mailer>, sender: String, verify_url: String) -> Self {
        Self {
            store,
            mailer,
            sender,
            verify_url,
        }
    }

    async fn run(&self, task: &Task) -> Result<(), HandlerError> {
        let payload: SendVerifyEmail = task.payload().map_err(HandlerError::new)?;
        let user = self
            .store
            .get_user(&payload.username)
            .await
            .map_err(HandlerError::new)?;
        let record = self
            .store
            .create_verify_email(
                &task.id,
                &user.username,
                &user.email,
                &random_code(SECRET_CODE_LEN),
            )
            .await
            .map_err(HandlerError::new)?;
        let link = Secret::new(format!(
            "{}?email_id={}&secret_code={}",
            self.verify_url, record.id, record.secret_code
        ));
        let email = Email {
            message_id: format!("verify-email-{}@simplebank", record.id),
            from: self.sender.clone(),
            to: user.email.clone(),
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
        self.mailer.send(&email).await.map_err(HandlerError::new)?;
        tracing::info!(
            task_id = %task.id,
            username = %user.username,
            verify_email_id = record.id,
            "sent verification email"
        );
        Ok(())
    }
}

impl Handler for SendVerifyEmailHandler {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self.run(task))
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
