//! The one place where errors become `tonic::Status`. Clients get a code and a message meant
//! for them; causes are logged here and never sent.

use std::error::Error;

pub use simplebank_core::report::chain;
use std::time::Duration;

use simplebank_core::{
    domain::ValidationError,
    store::{SessionError, StoreError, VerifyError},
};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT with one `google.rpc.BadRequest` field violation per bad field.
pub fn invalid_argument(err: ValidationError) -> Status {
    let mut details = ErrorDetails::new();
    for violation in &err.violations {
        details.add_bad_request_violation(violation.field, &violation.description);
    }
    Status::with_error_details(Code::InvalidArgument, err.to_string(), details)
}

/// ALREADY_EXISTS naming the field, UNAVAILABLE when the database is unreachable, INTERNAL
/// (opaque, cause logged) for the rest.
pub fn from_store(err: StoreError) -> Status {
    match err {
        StoreError::AlreadyExists { field } => {
            Status::already_exists(format!("{field} already exists"))
        }
        StoreError::NotFound => Status::not_found("not found"),
        StoreError::PasswordChanged => {
            Status::permission_denied("current_password is no longer the account's password")
        }
        // One text for both limits: which one says whether others used the address lately.
        StoreError::TooManyEmailChanges { retry_after, .. } => Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "email: too many address changes; try again in {} s",
                retry_after.as_millis().div_ceil(1000).max(1)
            ),
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
        err if err.is_unavailable() => {
            tracing::warn!(error = %chain(&err), "database unavailable");
            Status::unavailable("the database is unavailable; try again later")
        }
        other => internal(&other),
    }
}

/// VerifyEmail's outcomes: one NOT_FOUND for an unknown id and a wrong code (ids cannot be
/// probed), FAILED_PRECONDITION naming why a right code no longer works.
pub fn from_verify(err: VerifyError) -> Status {
    match err {
        VerifyError::NotFound => Status::not_found("no verification with this id and code"),
        VerifyError::Expired => Status::failed_precondition("the code has expired"),
        VerifyError::AlreadyUsed => Status::failed_precondition("the code was already used"),
        VerifyError::AddressChanged => {
            Status::failed_precondition("the code was sent to an address the user no longer has")
        }
        VerifyError::Store(err) => from_store(err),
    }
}

/// The one answer for a refresh token that is malformed, unknown, expired or ended.
pub fn bad_refresh_token() -> Status {
    Status::unauthenticated("invalid, expired or ended refresh token")
}

/// UNAUTHENTICATED for every refresh token that cannot be used; a replayed one (whose session
/// is now ended) is logged as the warning it is.
pub fn from_session(err: SessionError) -> Status {
    match err {
        SessionError::Invalid => bad_refresh_token(),
        SessionError::Reused { session_id } => {
            tracing::warn!(
                %session_id,
                "an already exchanged refresh token was presented again: session ended"
            );
            Status::unauthenticated(
                "this refresh token was already used: the session has been ended; sign in again",
            )
        }
        SessionError::Store(err) => from_store(err),
    }
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` saying when to try again.
pub fn throttled(retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "too many failed sign-ins; try again in {} s",
            retry_after.as_millis().div_ceil(1000).max(1)
        ),
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// INTERNAL with an opaque message; the cause goes to the log only.
pub fn internal(err: &dyn Error) -> Status {
    tracing::error!(error = %chain(err), "internal error");
    Status::internal("internal error")
}

/// INVALID_ARGUMENT with one `google.rpc.BadRequest` violation naming `field`.
pub fn bad_field(field: &str, description: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, description);
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
}

/// The admin operations' outcomes: NOT_FOUND for an unknown queue or task, INVALID_ARGUMENT
/// naming `page_token`, UNAVAILABLE when Redis is down or does not answer in time, INTERNAL
/// (logged) for the rest.
pub fn from_admin(err: simplebank_queue::admin::AdminError) -> Status {
    use simplebank_queue::admin::AdminError;
    match err {
        AdminError::QueueNotFound(queue) => Status::not_found(format!("queue {queue} not found")),
        AdminError::TaskNotFound => Status::not_found("task not found"),
        AdminError::PageToken => bad_field(
            "page_token",
            "is not a token this server issued for this queue and state",
        ),
        err @ (AdminError::Unavailable(_) | AdminError::TimedOut(_)) => {
            tracing::warn!(error = %chain(&err), "admin call: Redis unavailable");
            Status::unavailable("Redis is unavailable; try again later")
        }
        other => internal(&other),
    }
}
