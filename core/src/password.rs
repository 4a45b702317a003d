//! Password hashing with argon2id. CPU-heavy (and 19 MiB per hash) by design: never run it on
//! the async executor. [`HashPool`] runs hashes on a fixed set of threads, one per core: the
//! number of hashes in flight and the memory they hold stay bounded however many requests
//! wait. (With `spawn_blocking`, each of the many pool threads that ever hashed keeps its own
//! malloc arena with a 19 MiB block in it: measured at over 800 MiB under load.)

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{domain::Password, secret::Secret};

/// argon2 could not hash a password (an error of its parameters, salt or output encoding).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(argon2::password_hash::Error);

/// Hashes `password` into a PHC string like [`hash`], using `memory` as argon2's working
/// memory (resized as needed and kept by the caller, so it is allocated once per thread).
pub fn hash_with_memory(
    password: &Password,
    memory: &mut Vec<argon2::Block>,
) -> Result<Secret<String>, HashError> {
    use argon2::password_hash::{Output, ParamsString};

    let argon2 = Argon2::default();
    let params = argon2.params().clone();
    memory.resize(params.block_count(), argon2::Block::default());
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(HashError)?;
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    argon2
        .hash_password_into_with_memory(
            password.expose().as_bytes(),
            raw_salt,
            &mut out,
            &mut memory[..],
        )
        .map_err(|e| HashError(e.into()))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(argon2::Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(HashError)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(HashError)?),
    };
    Ok(Secret::new(phc.to_string()))
}

/// Hashes `password` with argon2id (the crate's default parameters: 19 MiB, 2 passes) and a
/// random salt, in PHC string format.
pub fn hash(password: &Password) -> Result<Secret<String>, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|hash| Secret::new(hash.to_string()))
        .map_err(HashError)
}

/// Whether `password` matches the argon2 PHC string `hash`, computed in `memory` (resized as
/// needed, kept by the caller) with the hash's own parameters. The comparison is
/// constant-time. A hash that does not parse matches nothing.
pub fn verify_with_memory(password: &str, hash: &str, memory: &mut Vec<argon2::Block>) -> bool {
    run_argon2(password, hash, memory).unwrap_or(false)
}

/// [`verify_with_memory`], but `None` when argon2 never ran (a hash that does not parse), so
/// the pool counts only the verifications that did the work.
fn run_argon2(password: &str, hash: &str, memory: &mut Vec<argon2::Block>) -> Option<bool> {
    use subtle::ConstantTimeEq;

    let parsed = PasswordHash::new(hash).ok()?;
    let (salt, expected) = parsed.salt.zip(parsed.hash)?;
    let params = argon2::Params::try_from(&parsed).ok()?;
    let algorithm = argon2::Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed
        .version
        .and_then(|v| argon2::Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_bytes = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut salt_bytes).ok()?;
    let mut out = vec![0u8; expected.len()];
    memory.resize(params.block_count(), argon2::Block::default());
    let argon2 = Argon2::new(algorithm, version, params);
    argon2
        .hash_password_into_with_memory(password.as_bytes(), raw_salt, &mut out, &mut memory[..])
        .ok()?;
    Some(bool::from(out.as_slice().ct_eq(expected.as_bytes())))
}

/// What an unknown user's password is checked against, so that sign-in does the same work
/// whether or not the user exists. The hash of a random password nobody knows, with the same
/// parameters as every hash [`hash`] makes (a unit test keeps them equal).
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$\
    c2ltcGxlYmFuay1kdW1teQ$2dnQ9e6K4uJYFn2j3sSmKZp0mQ8oHcYwqVr6cLk0XbE";

/// Whether `password` matches the PHC string `hash`.
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Idle argon2 memory blocks, the last used on top.
type MemoryStack = std::sync::Arc<std::sync::Mutex<Vec<Vec<argon2::Block>>>>;

enum Job {
    Hash(
        Password,
        tokio::sync::oneshot::Sender<Result<Secret<String>, HashError>>,
    ),
    /// A presented password and the stored hash (`None`: [`DUMMY_HASH`], and no match).
    Verify(
        Secret<String>,
        Option<Secret<String>>,
        tokio::sync::oneshot::Sender<bool>,
    ),
}

impl Job {
    /// Runs the job, unless its caller has given up waiting (its call cancelled or past its
    /// deadline): argon2 for no one would let a client queue work by abandoning calls.
    fn run(self, memory: &mut Vec<argon2::Block>, verifications: &AtomicU64) {
        match self {
            Self::Hash(_, reply) if reply.is_closed() => {}
            Self::Verify(_, _, reply) if reply.is_closed() => {}
            Self::Hash(password, reply) => {
                let _ = reply.send(hash_with_memory(&password, memory));
            }
            Self::Verify(password, hash, reply) => {
                let stored = hash.as_ref().map_or(DUMMY_HASH, |h| h.expose().as_str());
                let matched = run_argon2(password.expose(), stored, memory);
                if matched.is_some() {
                    verifications.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(matched == Some(true) && hash.is_some());
            }
        }
    }
}

/// A fixed pool of hashing threads. Cheap to clone; the threads stop when the last clone drops.
#[derive(Debug, Clone)]
pub struct HashPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
    blocks: MemoryStack,
    /// Password verifications run to the end (argon2 computed), dummy ones included.
    verifications: Arc<AtomicU64>,
}

/// The [`HashPool`] could not run a job: its threads are gone (none started, or they
/// panicked) or the runtime is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the password hashing pool is gone")]
pub struct PoolGone;

impl HashPool {
    /// `threads` hashing threads (at least one), with room for 1,024 waiting jobs.
    ///
    /// The threads share their argon2 memory blocks (19 MiB each, at most one per thread) as a
    /// stack: a hash takes the block used last, still warm in the CPU cache. Below saturation
    /// the idle threads take turns, so per-thread blocks would start every hash from a cold
    /// cache (measured: about 2-3 ms more per 11 ms hash on the benchmark machine).
    pub fn new(threads: usize) -> Self {
        let (jobs, receiver) = std::sync::mpsc::sync_channel::<Job>(1024);
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        let blocks: MemoryStack = std::sync::Arc::default();
        let verifications = Arc::new(AtomicU64::new(0));
        for i in 0..threads.max(1) {
            let receiver = std::sync::Arc::clone(&receiver);
            let blocks = std::sync::Arc::clone(&blocks);
            let verifications = Arc::clone(&verifications);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let mut memory = blocks
                            .lock()
                            .ok()
                            .and_then(|mut stack| stack.pop())
                            .unwrap_or_default();
                        // The reply is sent from inside `run`, before the block is back on
                        // the stack: a caller's next request may find the stack one short and
                        // allocate (a cost, not an error).
                        job.run(&mut memory, &verifications);
                        if let Ok(mut stack) = blocks.lock() {
                            stack.push(memory);
                        }
                    }
                });
            if spawned.is_err() {
                tracing::error!("cannot start a password hashing thread");
            }
        }
        Self {
            jobs,
            blocks,
            verifications,
        }
    }

    /// How many password verifications the pool has run to the end, dummy ones included.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// How many argon2 memory blocks (19 MiB each) the pool holds while idle.
    pub fn idle_blocks(&self) -> usize {
        self.blocks.lock().map_or(0, |stack| stack.len())
    }

    /// One thread per core.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Hashes `password` on a pool thread.
    pub async fn hash(
        &self,
        password: Password,
    ) -> Result<Result<Secret<String>, HashError>, PoolGone> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::Hash(password, reply)).await?;
        answer.await.map_err(|_| PoolGone)
    }

    /// Whether `password` matches `hash`, checked on a pool thread. With no hash (an unknown
    /// user) the password is checked against [`DUMMY_HASH`] all the same, and never matches:
    /// the caller's answer and its cost do not tell whether the user exists.
    pub async fn verify(
        &self,
        password: Secret<String>,
        hash: Option<Secret<String>>,
    ) -> Result<bool, PoolGone> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::Verify(password, hash, reply)).await?;
        answer.await.map_err(|_| PoolGone)
    }

    async fn submit(&self, job: Job) -> Result<(), PoolGone> {
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                // A full queue blocks the sender: wait for room off the executor.
                let jobs = self.jobs.clone();
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|_| PoolGone)?
                    .map_err(|_| PoolGone)?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(PoolGone),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_request_at_a_time_reuses_one_memory_block_whichever_thread_hashes() {
        let pool = HashPool::new(2);
        for i in 0..4 {
            let password = Password::parse(format!("plum-tractor-{i}")).unwrap();
            let hashed = pool.hash(password).await.unwrap().unwrap();
            assert!(verify(&format!("plum-tractor-{i}"), hashed.expose()));
        }
        assert_eq!(pool.idle_blocks(), 1);
    }

    #[tokio::test]
    async fn the_pool_hashes_concurrent_requests() {
        let pool = HashPool::new(2);
        let hashes: Vec<_> = (0..6)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let password = Password::parse(format!("plum-tractor-{i}")).unwrap();
                    (i, pool.hash(password).await.unwrap().unwrap())
                })
            })
            .collect();
        for handle in hashes {
            let (i, hashed) = handle.await.unwrap();
            assert!(verify(&format!("plum-tractor-{i}"), hashed.expose()));
        }
    }

    #[test]
    fn hashing_with_reused_memory_gives_standard_verifiable_hashes() {
        let mut memory = Vec::new();
        for secret in ["plum-tractor-1", "another-secret"] {
            let password = Password::parse(secret.into()).unwrap();
            let hashed = hash_with_memory(&password, &mut memory).unwrap();
            assert!(
                hashed
                    .expose()
                    .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
                "{}",
                hashed.expose()
            );
            assert!(verify(secret, hashed.expose()));
            assert!(!verify("wrong", hashed.expose()));
        }
    }

    #[test]
    fn hashes_with_argon2id_and_verifies() {
        let password = Password::parse("plum-tractor-1".into()).unwrap();
        let hashed = hash(&password).unwrap();
        assert!(hashed.expose().starts_with("$argon2id$"));
        assert!(verify("plum-tractor-1", hashed.expose()));
        assert!(!verify("plum-tractor-2", hashed.expose()));
        assert_ne!(hash(&password).unwrap().expose(), hashed.expose(), "salted");
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let dummy = PasswordHash::new(DUMMY_HASH).expect("a PHC string");
        let real_hash = hash(&Password::parse("plum-tractor-1".into()).unwrap()).unwrap();
        let real = PasswordHash::new(real_hash.expose()).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(
            argon2::Params::try_from(&dummy).unwrap(),
            argon2::Params::try_from(&real).unwrap()
        );
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
    }

    #[test]
    fn verifying_with_reused_memory_agrees_with_the_library() {
        let mut memory = Vec::new();
        let hashed = hash(&Password::parse("plum-tractor-1".into()).unwrap()).unwrap();
        assert!(verify_with_memory(
            "plum-tractor-1",
            hashed.expose(),
            &mut memory
        ));
        assert!(!verify_with_memory(
            "plum-tractor-2",
            hashed.expose(),
            &mut memory
        ));
        assert!(!verify_with_memory(
            "plum-tractor-1",
            "not a hash",
            &mut memory
        ));
    }

    /// A job whose caller gave up before its turn is not run: abandoned calls queue no work.
    #[tokio::test]
    async fn a_job_its_caller_gave_up_on_is_skipped() {
        let pool = HashPool::new(1);
        let busy: Vec<_> = (0..4)
            .map(|i| {
                let pool = pool.clone();
                let password = Password::parse(format!("plum-tractor-{i}")).unwrap();
                tokio::spawn(async move { pool.hash(password).await })
            })
            .collect();
        // The spawned hashes submit their jobs (this runtime has one thread).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let presented = || Secret::new("plum-tractor-1".to_owned());
        // Queued behind the busy thread, then given up on.
        let given_up = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            pool.verify(presented(), None),
        )
        .await;
        assert!(given_up.is_err(), "answered within 1 ms behind four hashes");
        for job in busy {
            job.await.unwrap().unwrap().unwrap();
        }
        // Queued after it: when this one is answered, the other has had its turn.
        assert!(!pool.verify(presented(), None).await.unwrap());
        assert_eq!(pool.verifications(), 1, "the abandoned check was run");
    }

    #[tokio::test]
    async fn the_pool_counts_real_and_dummy_verifications_alike() {
        let pool = HashPool::new(1);
        let password = Password::parse("plum-tractor-1".into()).unwrap();
        let hashed = pool.hash(password).await.unwrap().unwrap();
        let presented = |p: &str| Secret::new(p.to_owned());
        assert!(
            pool.verify(presented("plum-tractor-1"), Some(hashed.clone()))
                .await
                .unwrap()
        );
        assert!(
            !pool
                .verify(presented("wrong-one-1"), Some(hashed))
                .await
                .unwrap()
        );
        // Even the dummy's own password would not match: no hash, no match.
        assert!(
            !pool
                .verify(presented("plum-tractor-1"), None)
                .await
                .unwrap()
        );
        assert_eq!(pool.verifications(), 3);
        // A stored hash that does not parse: no match, and no argon2 run to count.
        assert!(
            !pool
                .verify(presented("plum-tractor-1"), Some(presented("not a hash")))
                .await
                .unwrap()
        );
        assert_eq!(pool.verifications(), 3);
    }
}
