//! The `simplebank.v1.SimpleBank` service.

use simplebank_core::{
    domain::{FieldViolation, NewUser, ValidationError},
    outbox,
    password::HashPool,
    secret::SECRET_CODE_LEN,
    store::{Store, User},
    task::{Publisher, Task},
    tasks::SendVerifyEmail,
};
use simplebank_observability::propagation::context_of;
use time::OffsetDateTime;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    pb::{self, simple_bank_server::SimpleBank},
    status,
};

#[derive(Debug, Clone)]
pub struct SimpleBankService {
    store: Store,
    publisher: Publisher,
    /// argon2 runs on one thread per core (bounded CPU and memory), never on the executor.
    hashing: HashPool,
    /// The publishes spawned after commit, so shutdown can wait for them.
    publishes: TaskTracker,
}

impl SimpleBankService {
    /// `publishes` tracks the publish spawned after each sign-up's commit; each is bounded by
    /// [`outbox::PUBLISH_GRACE`], so waiting for them at shutdown is bounded too.
    pub fn new(store: Store, publisher: Publisher, publishes: TaskTracker) -> Self {
        Self {
            store,
            publisher,
            hashing: HashPool::per_core(),
            publishes,
        }
    }

    async fn hash(
        &self,
        password: simplebank_core::domain::Password,
    ) -> Result<simplebank_core::secret::Secret<String>, Status> {
        self.hashing
            .hash(password)
            .await
            .map_err(|e| status::internal(&e))?
            .map_err(|e| status::internal(&e))
    }
}

#[tonic::async_trait]
impl SimpleBank for SimpleBankService {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let request = request.into_inner();
        let new_user = NewUser::parse(
            &request.username,
            &request.full_name,
            &request.email,
            request.password,
        )
        .map_err(status::invalid_argument)?;
        // Its own span: in a trace, the hash (and any wait for a hashing thread) is most of
        // the call.
        let hashed_password = self
            .hash(new_user.password.clone())
            .instrument(tracing::info_span!("hash password", otel.kind = "internal"))
            .await?;
        let mut task = Task::new(&SendVerifyEmail {
            username: new_user.username.as_str().to_owned(),
        })
        .map_err(|e| status::internal(&e))?;
        // The id as a uniqueness lock: a row published twice (a lease that ran out, an XADD
        // that timed out on a hung Redis but ran when it woke) adds one entry, not two.
        let id = task.id.clone();
        task = task.with_task_id(id).map_err(|e| status::internal(&e))?;
        // The task belongs to this call's trace, wherever and whenever it is published.
        task.set_trace(context_of(&tracing::Span::current()));

        let (user, outbox_id) = self
            .store
            .create_user(&new_user, &hashed_password, &task)
            .await
            .map_err(status::from_store)?;

        // Committed: answer now, publish in the background, holding no database connection
        // while Redis is called. If Redis is down or hung the row stays in the outbox and the
        // relay publishes it later.
        let (store, publisher) = (self.store.clone(), self.publisher.clone());
        self.publishes.spawn(async move {
            // (The publish span continues the call's trace through the task's traceparent.)
            // Bounded by the row's grace: past it, the relay owns the row anyway.
            let published = tokio::time::timeout(
                outbox::PUBLISH_GRACE,
                outbox::publish_row(&store, &publisher, outbox_id, &task),
            )
            .await;
            match published {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(
                    task_id = %task.id,
                    error = %status::chain(&err),
                    "task left in the outbox; the relay will publish it"
                ),
                Err(_) => tracing::warn!(
                    task_id = %task.id,
                    "publishing the task was cut off; the relay will publish it"
                ),
            }
        });
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(to_pb(user)),
        }))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Vec::new();
        if request.email_id <= 0 {
            violations.push(FieldViolation::new("email_id", "must be a positive number"));
        }
        let code = &request.secret_code;
        if code.len() != SECRET_CODE_LEN || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
            violations.push(FieldViolation::new(
                "secret_code",
                format!("must be {SECRET_CODE_LEN} letters and digits"),
            ));
        }
        if !violations.is_empty() {
            return Err(status::invalid_argument(ValidationError { violations }));
        }
        self.store
            .verify_email(request.email_id, code)
            .await
            .map_err(status::from_verify)?;
        Ok(Response::new(pb::VerifyEmailResponse { is_verified: true }))
    }
}

fn to_pb(user: User) -> pb::User {
    pb::User {
        username: user.username,
        full_name: user.full_name,
        email: user.email,
        password_changed_at: Some(timestamp(user.password_changed_at)),
        created_at: Some(timestamp(user.created_at)),
        is_email_verified: user.is_email_verified,
    }
}

fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}
