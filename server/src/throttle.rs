//! Sign-in throttling: failed sign-ins are counted per username and per client address in
//! Redis sorted sets (a sliding window; keys in `simplebank_core::task::Keys`), and a sign-in
//! past either limit is refused before any password is checked, whatever the password.
//!
//! Every Redis call is bounded by [`REDIS_TIMEOUT`]. When Redis is down or hung, throttling
//! fails open (sign-in keeps working, unthrottled): refusing every sign-in because the counter
//! store is away would turn a Redis outage into a login outage. The outage is logged once,
//! and its end once.

use std::{
    net::IpAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};
use simplebank_core::{report::chain, task::Keys};

/// How long one throttling call may wait on Redis before sign-in goes on without it.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// The limits (see the README's configuration table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// `LOGIN_MAX_FAILURES_PER_USERNAME`, default 5.
    pub per_username: u32,
    /// `LOGIN_MAX_FAILURES_PER_ADDRESS`, default 50 (many users may share an address).
    pub per_address: u32,
    /// `LOGIN_FAILURE_WINDOW`, default 15m.
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_username: 5,
            per_address: 50,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// KEYS: username key, address key. ARGV: window ms, username limit, address limit.
/// Drops failures older than the window; returns 0 when both counts are under their limits,
/// else the ms until enough failures leave the window for the next attempt to be allowed.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  if n >= limit then
    local oldest = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now
    if w > wait then wait = w end
  end
end
if wait > 0 and wait < 1 then wait = 1 end
return math.ceil(wait)
",
    )
});

/// KEYS: username key, address key. ARGV: window ms, member. Notes one failure in each.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tonumber(ARGV[1]))
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, ARGV[1])
end
return 1
",
    )
});

/// The verdict on a sign-in attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Too many failures: try again after this long.
    Throttled(Duration),
}

#[derive(Debug, Clone)]
pub struct LoginThrottle {
    redis: ConnectionManager,
    keys: Keys,
    limits: LoginLimits,
    /// Whether the last call failed: the outage is logged when this turns on, and its end
    /// when it turns off, not on every call.
    degraded: Arc<AtomicBool>,
}

impl LoginThrottle {
    pub fn new(redis: ConnectionManager, keys: Keys, limits: LoginLimits) -> Self {
        Self {
            redis,
            keys,
            limits,
            degraded: Arc::default(),
        }
    }

    fn keys_of(&self, username: &str, address: &IpAddr) -> [String; 2] {
        [
            self.keys.login_failures_username(username),
            self.keys.login_failures_address(address),
        ]
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.limits.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `username` may try to sign in from `address` now.
    pub async fn check(&self, username: &str, address: &IpAddr) -> Verdict {
        let mut invocation = CHECK.prepare_invoke();
        for key in self.keys_of(username, address) {
            invocation.key(key);
        }
        invocation
            .arg(self.window_ms())
            .arg(self.limits.per_username)
            .arg(self.limits.per_address);
        let mut redis = self.redis.clone();
        let waited: Option<u64> = self.bounded(invocation.invoke_async(&mut redis)).await;
        match waited {
            Some(ms) if ms > 0 => Verdict::Throttled(Duration::from_millis(ms)),
            _ => Verdict::Allowed,
        }
    }

    /// Notes a failed sign-in for `username` and for `address`.
    pub async fn record_failure(&self, username: &str, address: &IpAddr) {
        let mut invocation = RECORD.prepare_invoke();
        for key in self.keys_of(username, address) {
            invocation.key(key);
        }
        invocation
            .arg(self.window_ms())
            .arg(uuid::Uuid::new_v4().to_string());
        let mut redis = self.redis.clone();
        let _: Option<i64> = self.bounded(invocation.invoke_async(&mut redis)).await;
    }

    /// Forgets the failures of `username` (it just signed in); the address keeps its count.
    pub async fn reset(&self, username: &str) {
        let mut redis = self.redis.clone();
        let key = self.keys.login_failures_username(username);
        let _: Option<i64> = self
            .bounded(redis::cmd("DEL").arg(key).query_async(&mut redis))
            .await;
    }

    /// `call` within [`REDIS_TIMEOUT`]; `None` (and the outage logged once) if it failed.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let failure = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("login throttling is back: Redis answers again");
                }
                return Some(value);
            }
            Ok(Err(err)) => chain(&err),
            Err(_) => format!("Redis did not answer within {REDIS_TIMEOUT:?}"),
        };
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %failure,
                "login throttling is off until Redis answers again; sign-ins are not limited"
            );
        }
        None
    }
}
