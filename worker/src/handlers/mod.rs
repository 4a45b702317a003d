//! The handlers of this project's task types.

pub mod send_verify_email;

pub use send_verify_email::SendVerifyEmailHandler;
