//! Sign-in throttling: failed sign-ins are counted per username and per client address in
//! Redis sorted sets (a sliding window; keys in `simplebank_core::keys`). An attempt
//! first reserves its place in both counts, atomically (one script: under both limits, add a
//! member to each; else refuse), before any password is checked: concurrent attempts cannot
//! all pass one check. A failure keeps its reservation (it is the failure's record); a success
//! removes it and forgets the username's failures; one its client gave up on before the
//! verdict keeps only the address's place (`Outcome::GivenUp`).
//!
//! IPv4 clients are counted per address, IPv6 clients per /64 (one host usually holds a whole
//! /64, so counting single IPv6 addresses would not limit anyone).
//!
//! Every Redis call is bounded by [`REDIS_TIMEOUT`]. When Redis is down or hung, throttling
//! fails open (sign-in keeps working, unthrottled): refusing every sign-in because the counter
//! store is away would turn a Redis outage into a login outage. After a timeout Redis is not
//! asked again for [`LoginLimits::outage_pause`], so a hung Redis does not slow every sign-in.
//! The outage is logged once, and its end once.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use redis::Script;
use simplebank_core::redis_client::Connection;
use simplebank_core::{keys::LoginFailureKeys, report::chain};
use simplebank_queue::Keys;

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
    /// How long Redis is left alone after it timed out (5 s): sign-in goes on unthrottled
    /// meanwhile instead of waiting out a timeout on every call.
    pub outage_pause: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_username: 5,
            per_address: 50,
            window: Duration::from_secs(15 * 60),
            outage_pause: Duration::from_secs(5),
        }
    }
}

/// KEYS: username key, address key. ARGV: window ms, username limit, address limit, member.
/// Drops failures older than the window; when both counts are under their limits, adds the
/// member to both (the attempt's reservation) and returns 0, else returns the ms until enough
/// failures leave the window for the next attempt to be allowed.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
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
if wait > 0 then
  if wait < 1 then wait = 1 end
  return math.ceil(wait)
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('PEXPIRE', key, window)
end
return 0
",
    )
});

/// KEYS: username key, address key. ARGV: member, [`Outcome::arg`]. Removes the reservation
/// from the username's count (a success forgets the whole count), and from the address's
/// unless the attempt was given up on. Once only: a second release of the same member (an
/// attempt dropped while its release was under way sends it again) finds it gone and does
/// nothing, so a success's repeat cannot forget failures counted since.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if ARGV[2] ~= 'given_up' then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[2] == 'succeeded' then
  redis.call('DEL', KEYS[1])
end
return 1
",
    )
});

/// How an attempt without a failure ended, for its release.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Signed in: both places go, and the username's failures are forgotten.
    Succeeded,
    /// An internal error, the server's doing: both places go.
    Abandoned,
    /// Its client gave up before the verdict: the username's place goes (a client's deadline
    /// must not lock its user out), the address's stays, so that abandoning calls is no free
    /// way to read a username's count or to make the server hash.
    GivenUp,
}

impl Outcome {
    fn arg(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Abandoned => "abandoned",
            Self::GivenUp => "given_up",
        }
    }
}

/// A sign-in attempt's place in the counts: kept on failure ([`Attempt::failed`]), released
/// otherwise. One dropped without a verdict (its call cancelled or past its deadline while
/// the password was being checked, or while the reservation itself was being made) is
/// released from the username's count in the background (`Outcome::GivenUp`): a client
/// giving up is not a wrong password.
#[derive(Debug)]
pub struct Attempt {
    keys: [String; 2],
    /// `None` when Redis was not asked (an outage) or the attempt has its verdict: nothing
    /// left to release on drop.
    member: Option<String>,
    /// For the release on drop.
    throttle: LoginThrottle,
    /// The release under way, if any, which a drop during it finishes.
    settling: Option<Outcome>,
}

impl Attempt {
    /// The password was wrong: the reservation stays, as the failure's record.
    pub fn failed(mut self) {
        self.member = None;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(member) = self.member.take() else {
            return;
        };
        // Outside a runtime (never so in the server) the reservation stays: counted, not lost.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (throttle, keys) = (self.throttle.clone(), std::mem::take(&mut self.keys));
            // A panic unwinding through the check is the server's fault, not the client's.
            let outcome = self.settling.unwrap_or(if std::thread::panicking() {
                Outcome::Abandoned
            } else {
                Outcome::GivenUp
            });
            runtime.spawn(async move { throttle.release(&keys, &member, outcome).await });
        }
    }
}

/// The verdict on a sign-in attempt.
#[derive(Debug)]
pub enum Verdict {
    Allowed(Attempt),
    /// Too many failures: try again after this long.
    Throttled(Duration),
}

#[derive(Debug, Clone)]
pub struct LoginThrottle {
    redis: Connection,
    keys: Keys,
    limits: LoginLimits,
    /// Whether the last call failed: the outage is logged when this turns on, and its end
    /// when it turns off, not on every call.
    degraded: Arc<AtomicBool>,
    /// Set by a timeout: until then Redis is not asked.
    paused_until: Arc<Mutex<Option<Instant>>>,
}

impl LoginThrottle {
    pub fn new(redis: impl Into<Connection>, keys: Keys, limits: LoginLimits) -> Self {
        Self {
            redis: redis.into(),
            keys,
            limits,
            degraded: Arc::default(),
            paused_until: Arc::default(),
        }
    }

    fn keys_of(&self, username: &str, address: &IpAddr) -> [String; 2] {
        [
            self.keys.login_failures_username(username),
            self.keys.login_failures_address(&counted_address(address)),
        ]
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.limits.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Reserves an attempt for `username` from `address`, or says how long to wait.
    pub async fn reserve(&self, username: &str, address: &IpAddr) -> Verdict {
        let keys = self.keys_of(username, address);
        let member = uuid::Uuid::new_v4().to_string();
        let mut invocation = RESERVE.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation
            .arg(self.window_ms())
            .arg(self.limits.per_username)
            .arg(self.limits.per_address)
            .arg(&member);
        // Armed before Redis is asked: a call dropped while the script runs releases what it
        // may have added (commands on the one connection keep their order).
        let mut attempt = Attempt {
            keys,
            member: Some(member),
            throttle: self.clone(),
            settling: None,
        };
        let mut redis = self.redis.clone();
        let waited: Option<u64> = self.bounded(invocation.invoke_async(&mut redis)).await;
        match waited {
            Some(ms) if ms > 0 => {
                attempt.member = None;
                Verdict::Throttled(Duration::from_millis(ms))
            }
            Some(_) => Verdict::Allowed(attempt),
            None => {
                attempt.member = None;
                Verdict::Allowed(attempt)
            }
        }
    }

    /// The attempt signed in: its reservation goes and the username's failures are forgotten
    /// (the address keeps its count).
    pub async fn succeeded(&self, attempt: Attempt) {
        self.settle(attempt, Outcome::Succeeded).await;
    }

    /// The attempt ended without a verdict on the password (an internal error): it does not
    /// count as a failure.
    pub async fn abandoned(&self, attempt: Attempt) {
        self.settle(attempt, Outcome::Abandoned).await;
    }

    /// Releases `attempt`'s reservation; dropped before the release is done, the attempt
    /// finishes it in the background.
    async fn settle(&self, mut attempt: Attempt, outcome: Outcome) {
        attempt.settling = Some(outcome);
        if let Some(member) = &attempt.member {
            self.release(&attempt.keys, member, outcome).await;
        }
        attempt.member = None;
    }

    async fn release(&self, keys: &[String; 2], member: &str, outcome: Outcome) {
        let mut invocation = RELEASE.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(member).arg(outcome.arg());
        let mut redis = self.redis.clone();
        let _: Option<i64> = self.bounded(invocation.invoke_async(&mut redis)).await;
    }

    /// `call` within [`REDIS_TIMEOUT`]; `None` (and the outage logged once) if it failed.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        if self.paused() {
            return None;
        }
        let failure = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("login throttling is back: Redis answers again");
                }
                return Some(value);
            }
            Ok(Err(err)) => chain(&err),
            Err(_) => {
                self.pause();
                format!("Redis did not answer within {REDIS_TIMEOUT:?}")
            }
        };
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %failure,
                "login throttling is off until Redis answers again; sign-ins are not limited"
            );
        }
        None
    }

    /// Whether Redis is being left alone after a timeout.
    fn paused(&self) -> bool {
        let until = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    fn pause(&self) {
        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.limits.outage_pause);
    }
}

/// What failures from `address` are counted under: an IPv4 address itself (also when it comes
/// IPv4-mapped), an IPv6 address's /64.
pub fn counted_address(address: &IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => *address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(*v6) & !(u64::MAX as u128))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use redis::aio::MultiplexedConnection;
    use simplebank_core::{keys::LoginFailureKeys as _, testing::TestRedis};

    use super::{Outcome, RELEASE, counted_address};

    async fn add(conn: &mut MultiplexedConnection, key: &str, member: &str) {
        let _: i64 = redis::cmd("ZADD")
            .arg(key)
            .arg(1)
            .arg(member)
            .query_async(conn)
            .await
            .expect("ZADD");
    }

    async fn members(conn: &mut MultiplexedConnection, key: &str) -> Vec<String> {
        redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .expect("ZRANGE")
    }

    async fn release(
        conn: &mut MultiplexedConnection,
        keys: &[String; 2],
        member: &str,
        outcome: Outcome,
    ) -> i64 {
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .key(&keys[0])
            .key(&keys[1])
            .arg(member)
            .arg(outcome.arg());
        invocation.invoke_async(conn).await.expect("release")
    }

    /// RELEASE's outcomes, and a second release of one member doing nothing.
    #[tokio::test]
    async fn each_outcome_releases_its_places_once() {
        let redis = TestRedis::new();
        let conn = &mut redis.conn().await;
        let address: IpAddr = "203.0.113.7".parse().expect("address");
        let keys = [
            redis.keys().login_failures_username("alice"),
            redis.keys().login_failures_address(&address),
        ];
        add(conn, &keys[0], "earlier failure").await;
        for member in ["given up", "signed in"] {
            add(conn, &keys[0], member).await;
            add(conn, &keys[1], member).await;
        }

        assert_eq!(release(conn, &keys, "given up", Outcome::GivenUp).await, 1);
        assert_eq!(
            members(conn, &keys[1]).await,
            ["given up", "signed in"],
            "the address keeps a given-up place"
        );
        assert_eq!(
            release(conn, &keys, "signed in", Outcome::Succeeded).await,
            1
        );
        assert!(
            members(conn, &keys[0]).await.is_empty(),
            "a success forgets the username's failures"
        );
        // A failure counted since, then the same success released again.
        add(conn, &keys[0], "later failure").await;
        assert_eq!(
            release(conn, &keys, "signed in", Outcome::Succeeded).await,
            0
        );
        assert_eq!(members(conn, &keys[0]).await, ["later failure"]);
    }

    fn counted(address: &str) -> String {
        counted_address(&address.parse::<IpAddr>().expect("an address")).to_string()
    }

    #[test]
    fn ipv4_is_counted_per_address_and_ipv6_per_64() {
        assert_eq!(counted("203.0.113.7"), "203.0.113.7");
        assert_eq!(counted("203.0.113.8"), "203.0.113.8");
        assert_eq!(counted("::ffff:203.0.113.7"), "203.0.113.7");
        // A whole /64 is one client; the next /64 is another.
        for address in [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:db8:1:2:dead:beef:0:1",
        ] {
            assert_eq!(counted(address), "2001:db8:1:2::", "{address}");
        }
        assert_eq!(counted("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(counted("::1"), "::");
    }
}
