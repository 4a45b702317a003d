//! The one place where errors become `tonic::Status`. Clients get a code and a message meant
//! for them; causes are logged here and never sent.

use std::error::Error;

pub use simplebank_core::report::chain;
use simplebank_core::{domain::ValidationError, store::StoreError};
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
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %chain(&err), "database unavailable");
            Status::unavailable("the database is unavailable; try again later")
        }
        other => internal(&other),
    }
}

/// INTERNAL with an opaque message; the cause goes to the log only.
pub fn internal(err: &dyn Error) -> Status {
    tracing::error!(error = %chain(err), "internal error");
    Status::internal("internal error")
}
