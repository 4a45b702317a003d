//! The `simplebank.v1.SimpleBank` service: sign-up and verification, sign-in and sessions,
//! account updates.

use opentelemetry::context::FutureExt as _;
use simplebank_core::{
    domain::{FieldViolation, NewUser, Password, UserUpdate, Username, ValidationError},
    outbox,
    password::HashPool,
    secret::{SECRET_CODE_LEN, Secret},
    store::{
        SessionLimits, SessionOrigin, Store, User,
        outbox::OutboxLease,
        sessions::{is_refresh_token, new_refresh_token},
    },
    tasks::SendVerifyEmail,
};
use simplebank_observability::propagation;
use simplebank_queue::{Publisher, Task};
use time::OffsetDateTime;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    auth,
    pb::{self, simple_bank_server::SimpleBank},
    status,
    throttle::{LoginThrottle, Verdict},
    tokens::{AccessClaims, TokenMaker},
};

#[derive(Debug, Clone)]
pub struct SimpleBankService {
    store: Store,
    publisher: Publisher,
    /// argon2 runs on one thread per core (bounded CPU and memory), never on the executor.
    hashing: HashPool,
    /// The publishes spawned after commit, so shutdown can wait for them.
    publishes: TaskTracker,
    tokens: TokenMaker,
    sessions: SessionLimits,
    throttle: LoginThrottle,
}

/// What sign-in, sessions and account updates need.
#[derive(Debug, Clone)]
pub struct Auth {
    pub tokens: TokenMaker,
    pub sessions: SessionLimits,
    pub throttle: LoginThrottle,
}

/// The one answer for an unknown user and a wrong password: nothing tells them apart.
const BAD_CREDENTIALS: &str = "incorrect username or password";

impl SimpleBankService {
    /// `publishes` tracks the publish spawned after each commit that wrote a task; each is
    /// bounded by [`outbox::PUBLISH_GRACE`], so waiting for them at shutdown is bounded too.
    pub fn new(
        store: Store,
        publisher: Publisher,
        publishes: TaskTracker,
        hashing: HashPool,
        auth: Auth,
    ) -> Self {
        Self {
            store,
            publisher,
            hashing,
            publishes,
            tokens: auth.tokens,
            sessions: auth.sessions,
            throttle: auth.throttle,
        }
    }

    /// A `send_verify_email` task for `username`, in this call's trace, with its id as its
    /// uniqueness lock: a row published twice (a lease that ran out, an XADD that timed out
    /// on a hung Redis but ran when it woke) adds one entry, not two.
    fn verify_email_task(username: &str) -> Result<Task, Status> {
        let task = Task::new(&SendVerifyEmail {
            username: username.to_owned(),
        })
        .map_err(|e| status::internal(&e))?;
        let id = task.id().to_owned();
        let task = task.with_task_id(id).map_err(|e| status::internal(&e))?;
        // The task belongs to this call's trace, wherever and whenever it is published.
        Ok(task.with_current_trace())
    }

    /// Publishes committed outbox row `row` in the background, holding no database
    /// connection while Redis is called. If Redis is down or hung the row stays in the outbox
    /// and the relay publishes it later.
    fn publish_after_commit(&self, row: OutboxLease, task: Task) {
        let (store, publisher) = (self.store.clone(), self.publisher.clone());
        // The row's DELETE is a span of the call's trace (not a trace of its own), without
        // the call's span kept open by this task.
        let call = propagation::otel_context(&tracing::Span::current());
        self.publishes.spawn(
            async move {
                // (The publish span continues the call's trace through the task's traceparent.)
                // Bounded by the row's grace: past it, the relay owns the row anyway.
                let published = tokio::time::timeout(
                    outbox::PUBLISH_GRACE,
                    outbox::publish_row(&store, &publisher, row, &task),
                )
                .await;
                match published {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(
                        task_id = %task.id(),
                        error = %status::chain(&err),
                        "task left in the outbox; the relay will publish it"
                    ),
                    Err(_) => tracing::warn!(
                        task_id = %task.id(),
                        "publishing the task was cut off; the relay will publish it"
                    ),
                }
            }
            .with_context(call),
        );
    }

    /// The caller's access token, decrypted, checked, and its session live.
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<AccessClaims, Status> {
        let token = auth::bearer(metadata)?;
        let claims = self.tokens.check(token).map_err(|err| {
            tracing::info!(reason = %err, "access token refused");
            auth::unauthenticated()
        })?;
        let live = self
            .store
            .session_is_live(claims.session_id, &claims.username)
            .await
            .map_err(status::from_store)?;
        if !live {
            tracing::info!(session_id = %claims.session_id, "access token of an ended session");
            return Err(auth::unauthenticated());
        }
        Ok(claims)
    }

    /// The credentials of `username` if `password` is theirs. An unknown user's password is
    /// checked against a dummy hash: the same work, the same answer, as a wrong password.
    async fn check_password(
        &self,
        username: &str,
        password: Secret<String>,
    ) -> Result<Option<simplebank_core::store::Credentials>, Status> {
        let credentials = self
            .store
            .credentials(username)
            .await
            .map_err(status::from_store)?;
        let matched = self
            .hashing
            .verify(
                password,
                credentials.as_ref().map(|c| c.hashed_password.clone()),
            )
            .instrument(tracing::info_span!(
                "verify password",
                otel.kind = "internal"
            ))
            .await
            .map_err(|e| status::internal(&e))?;
        Ok(credentials.filter(|_| matched))
    }

    /// [`Self::check_password`] under the sign-in throttle, for LoginUser and for UpdateUser's
    /// `current_password` alike: a token holder cannot guess faster than signing in allows.
    /// Before any password is checked the attempt is counted (reserved), so concurrent attempts
    /// cannot all pass the limit, and a throttled one costs no hashing and says nothing about
    /// the password. `None` for a wrong password, which stays counted.
    async fn check_password_throttled(
        &self,
        username: &str,
        password: Secret<String>,
        address: &std::net::IpAddr,
    ) -> Result<Option<simplebank_core::store::Credentials>, Status> {
        let attempt = match self.throttle.reserve(username, address).await {
            Verdict::Allowed(attempt) => attempt,
            Verdict::Throttled(retry_after) => {
                tracing::info!(%username, %address, "sign-in throttled");
                return Err(status::throttled(retry_after));
            }
        };
        match self.check_password(username, password).await {
            Ok(Some(credentials)) => {
                self.throttle.succeeded(attempt).await;
                Ok(Some(credentials))
            }
            // A failure keeps its reservation: it is the failure's record.
            Ok(None) => {
                attempt.failed();
                Ok(None)
            }
            Err(status) => {
                self.throttle.abandoned(attempt).await;
                Err(status)
            }
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
        let task = Self::verify_email_task(new_user.username.as_str())?;

        let (user, outbox) = self
            .store
            .create_user(&new_user, &hashed_password, &task)
            .await
            .map_err(status::from_store)?;

        // Committed: answer now, publish in the background.
        self.publish_after_commit(outbox, task);
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

    async fn login_user(
        &self,
        request: Request<pb::LoginUserRequest>,
    ) -> Result<Response<pb::LoginUserResponse>, Status> {
        let address = auth::client_ip(&request);
        let origin = SessionOrigin {
            user_agent: auth::user_agent(request.metadata()),
            client_ip: address.to_string(),
        };
        let request = request.into_inner();
        let username = Username::parse(&request.username);
        let password = Password::presented("password", request.password);
        let (username, password) = match (username, password) {
            (Ok(username), Ok(password)) => (username, password),
            (username, password) => {
                return Err(status::invalid_argument(ValidationError {
                    violations: [username.err(), password.err()]
                        .into_iter()
                        .flatten()
                        .collect(),
                }));
            }
        };
        let username = username.as_str();

        let credentials = self
            .check_password_throttled(username, password, &address)
            .await?
            .ok_or_else(|| Status::unauthenticated(BAD_CREDENTIALS))?;

        let refresh_token = new_refresh_token();
        // Only while the password is still the one just checked: a change in between must
        // not leave a session behind it.
        let Some(session) = self
            .store
            .create_session(
                username,
                &credentials.hashed_password,
                &refresh_token,
                &origin,
                self.sessions,
            )
            .await
            .map_err(status::from_store)?
        else {
            tracing::info!(%username, "password changed during sign-in; no session started");
            return Err(Status::unauthenticated(BAD_CREDENTIALS));
        };
        let access = self
            .tokens
            .make(username, session.id)
            .map_err(|e| status::internal(&e))?;
        tracing::info!(%username, session_id = %session.id, "user signed in");
        Ok(Response::new(pb::LoginUserResponse {
            user: Some(to_pb(credentials.user)),
            session_id: session.id.to_string(),
            access_token: expose(access.token),
            refresh_token: expose(refresh_token),
            access_token_expires_at: Some(timestamp(access.expires_at)),
            refresh_token_expires_at: Some(timestamp(session.refresh_token_expires_at)),
        }))
    }

    async fn renew_access_token(
        &self,
        request: Request<pb::RenewAccessTokenRequest>,
    ) -> Result<Response<pb::RenewAccessTokenResponse>, Status> {
        let presented = request.into_inner().refresh_token;
        if !is_refresh_token(&presented) {
            return Err(status::bad_refresh_token());
        }
        let next = new_refresh_token();
        let session = self
            .store
            .rotate_refresh_token(&presented, &next, self.sessions.refresh_token)
            .await
            .map_err(status::from_session)?;
        let access = self
            .tokens
            .make(&session.username, session.id)
            .map_err(|e| status::internal(&e))?;
        Ok(Response::new(pb::RenewAccessTokenResponse {
            access_token: expose(access.token),
            access_token_expires_at: Some(timestamp(access.expires_at)),
            refresh_token: expose(next),
            refresh_token_expires_at: Some(timestamp(session.refresh_token_expires_at)),
        }))
    }

    async fn logout_user(
        &self,
        request: Request<pb::LogoutUserRequest>,
    ) -> Result<Response<pb::LogoutUserResponse>, Status> {
        let request = request.into_inner();
        if !is_refresh_token(&request.refresh_token) {
            return Err(status::bad_refresh_token());
        }
        let ended = self
            .store
            .end_sessions(&request.refresh_token, request.all_sessions)
            .await
            .map_err(status::from_session)?;
        tracing::info!(sessions = ended, all = request.all_sessions, "signed out");
        Ok(Response::new(pb::LogoutUserResponse {}))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let claims = self.authenticate(request.metadata()).await?;
        let address = auth::client_ip(&request);
        let request = request.into_inner();
        if request.username != claims.username {
            return Err(Status::permission_denied(
                "you may update only your own account",
            ));
        }
        let credentials_change = request.email.is_some() || request.password.is_some();
        let update = UserUpdate::parse(
            request.full_name.as_deref(),
            request.email.as_deref(),
            request.password,
        )
        .ok_or_else(|| {
            Status::invalid_argument("nothing to update: set full_name, email or password")
        })?;
        let current = Password::current(request.current_password, credentials_change);
        let (update, current) = match (update, current) {
            (Ok(update), Ok(current)) => (update, current),
            (update, current) => {
                let mut violations = update.err().map(|e| e.violations).unwrap_or_default();
                violations.extend(current.err());
                return Err(status::invalid_argument(ValidationError { violations }));
            }
        };
        // The stored hash it matched, which the update requires to be still in force.
        let confirmed = match current {
            Some(current) => Some(
                self.check_password_throttled(&claims.username, current, &address)
                    .await?
                    .ok_or_else(|| {
                        Status::permission_denied("current_password is not the account's password")
                    })?
                    .hashed_password,
            ),
            None => None,
        };
        let hashed_password = match &update.password {
            Some(password) => Some(
                self.hash(password.clone())
                    .instrument(tracing::info_span!("hash password", otel.kind = "internal"))
                    .await?,
            ),
            None => None,
        };
        // Written only if the address changes, in the update's transaction.
        let task = Self::verify_email_task(&claims.username)?;
        let updated = self
            .store
            .update_user(
                &claims.username,
                &update,
                hashed_password.as_ref(),
                confirmed.as_ref(),
                &task,
                claims.session_id,
            )
            .await
            .map_err(status::from_store)?
            // The session ended while the password was hashed (a password change from another
            // session, a sign-out): as if it had ended before the call.
            .ok_or_else(auth::unauthenticated)?;
        if let Some(row) = updated.outbox {
            self.publish_after_commit(row, task);
        }
        tracing::info!(
            username = %claims.username,
            email_changed = updated.outbox.is_some(),
            password_changed = hashed_password.is_some(),
            other_sessions_ended = updated.sessions_ended,
            "user updated"
        );
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(to_pb(updated.user)),
        }))
    }
}

/// A secret handed to its owner, the client, and to no one else.
fn expose(secret: Secret<String>) -> String {
    secret.expose().clone()
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
