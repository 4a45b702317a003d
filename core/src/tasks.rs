//! The task types of this project. Each is a payload struct implementing [`TaskPayload`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use simplebank_queue::TaskPayload;

/// Create a verification record for a new user and email them the link.
/// Carries only the username: the worker reads the address from the database, so no personal
/// data sits in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendVerifyEmail {
    /// The user to verify.
    pub username: String,
}

impl TaskPayload for SendVerifyEmail {
    const TYPE: &'static str = "task:send_verify_email";
    const QUEUE: &'static str = "critical";
    const MAX_RETRY: u32 = 10;
    const TIMEOUT: Duration = Duration::from_secs(60);
}
