//! Password hashing with argon2id. CPU-heavy (and 19 MiB per hash) by design: never run it on
//! the async executor. [`HashPool`] runs hashes on a fixed set of threads, one per core: the
//! number of hashes in flight and the memory they hold stay bounded however many requests
//! wait. (With `spawn_blocking`, each of the many pool threads that ever hashed keeps its own
//! malloc arena with a 19 MiB block in it: measured at over 800 MiB under load.)

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};

use crate::{domain::Password, secret::Secret};

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

type Job = (
    Password,
    tokio::sync::oneshot::Sender<Result<Secret<String>, HashError>>,
);

/// A fixed pool of hashing threads. Cheap to clone; the threads stop when the last clone drops.
#[derive(Debug, Clone)]
pub struct HashPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
    blocks: MemoryStack,
}

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
        for i in 0..threads.max(1) {
            let receiver = std::sync::Arc::clone(&receiver);
            let blocks = std::sync::Arc::clone(&blocks);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        let Ok((password, reply)) = job else { return };
                        let mut memory = blocks
                            .lock()
                            .ok()
                            .and_then(|mut stack| stack.pop())
                            .unwrap_or_default();
                        let hashed = hash_with_memory(&password, &mut memory);
                        // Back on the stack before the reply, for the caller's next request.
                        if let Ok(mut stack) = blocks.lock() {
                            stack.push(memory);
                        }
                        let _ = reply.send(hashed);
                    }
                });
            if spawned.is_err() {
                tracing::error!("cannot start a password hashing thread");
            }
        }
        Self { jobs, blocks }
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
        match self.jobs.try_send((password, reply)) {
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
        answer.await.map_err(|_| PoolGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_request_at_a_time_reuses_one_memory_block_whichever_thread_hashes() {
        let pool = HashPool::new(2);
        for i in 0..4 {
            let password = Password::parse(format!("secret-{i}")).unwrap();
            let hashed = pool.hash(password).await.unwrap().unwrap();
            assert!(verify(&format!("secret-{i}"), hashed.expose()));
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
                    let password = Password::parse(format!("secret-{i}")).unwrap();
                    (i, pool.hash(password).await.unwrap().unwrap())
                })
            })
            .collect();
        for handle in hashes {
            let (i, hashed) = handle.await.unwrap();
            assert!(verify(&format!("secret-{i}"), hashed.expose()));
        }
    }

    #[test]
    fn hashing_with_reused_memory_gives_standard_verifiable_hashes() {
        let mut memory = Vec::new();
        for secret in ["secret1", "another-secret"] {
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
        let password = Password::parse("secret1".into()).unwrap();
        let hashed = hash(&password).unwrap();
        assert!(hashed.expose().starts_with("$argon2id$"));
        assert!(verify("secret1", hashed.expose()));
        assert!(!verify("secret2", hashed.expose()));
        assert_ne!(hash(&password).unwrap().expose(), hashed.expose(), "salted");
    }
}
