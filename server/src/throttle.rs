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
//! Every Redis call is bounded by [`REDIS_TIMEOUT`]. When Redis is down, hung or refuses the
//! scripts, the attempt is counted in this process's memory instead ([`LocalCounts`]: the
//! same keys, limits, window and rules), so sign-in keeps working and guessing stays limited.
//! Refusing every sign-in because the counter store is away would turn a Redis outage into a
//! login outage; letting every one through would let a password be guessed as fast as argon2
//! allows. The memory counts are used only while Redis cannot be: once it answers again its
//! counts decide (within one window a username gets its limit in Redis plus its limit in each
//! process's memory). A reservation that timed out is taken back behind it, so that a hung
//! Redis that wakes keeps no failure it did not judge. After a timeout Redis is not asked
//! again for [`LoginLimits::outage_pause`], so a hung Redis does not slow every sign-in. The
//! outage is logged once, and its end once.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
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

use crate::auth::counted_address;

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
    /// How long Redis is left alone after it timed out (5 s): sign-in goes on counted in
    /// memory meanwhile instead of waiting out a timeout on every call.
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
/// attempt dropped while its release was under way sends it again) finds both places gone
/// and does nothing, so a success's repeat cannot forget failures counted since. The
/// address's place alone decides for a success whose username count another success of the
/// same user has just forgotten (concurrent sign-ins): it still leaves the address's count.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local released = redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= 'given_up' then
  released = released + redis.call('ZREM', KEYS[2], ARGV[1])
end
if released == 0 then
  return 0
end
if ARGV[2] == 'succeeded' then
  redis.call('DEL', KEYS[1])
end
return 1
",
    )
});

/// `RELEASE` of `member` under `keys` for `outcome`.
fn release_call(
    keys: &[String; 2],
    member: &str,
    outcome: Outcome,
) -> redis::ScriptInvocation<'static> {
    let mut invocation = RELEASE.prepare_invoke();
    for key in keys {
        invocation.key(key);
    }
    invocation.arg(member).arg(outcome.arg());
    invocation
}

/// Why a throttling call to Redis got no answer.
#[derive(Debug, Clone, Copy)]
enum Unanswered {
    /// Redis is being left alone after a timeout, or another call is finding out whether it
    /// is back: not asked.
    Paused,
    /// Redis refused it, or the connection failed (it may have run all the same, if the
    /// connection failed after sending it).
    Failed,
    /// No answer in time: it may still run once Redis wakes.
    TimedOut,
}

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

/// Where an attempt's place in the counts was taken.
#[derive(Debug)]
enum Place {
    /// Its member in Redis's sorted sets.
    Redis(String),
    /// Its id in this process's [`LocalCounts`] (Redis could not be asked).
    Local(u64),
}

/// A sign-in attempt's place in the counts: kept on failure ([`Attempt::failed`]), released
/// otherwise. One dropped without a verdict (its call cancelled or past its deadline while
/// the password was being checked, or while the reservation itself was being made) is
/// released from the username's count (in the background for Redis; `Outcome::GivenUp`): a
/// client giving up is not a wrong password.
#[derive(Debug)]
pub struct Attempt {
    keys: [String; 2],
    /// `None` once the attempt has its verdict, or when it was counted nowhere: nothing left
    /// to release on drop.
    place: Option<Place>,
    /// For the release on drop.
    throttle: LoginThrottle,
    /// The release under way, if any, which a drop during it finishes.
    settling: Option<Outcome>,
}

impl Attempt {
    /// The password was wrong: the reservation stays, as the failure's record.
    pub fn failed(mut self) {
        if let Some(Place::Local(id)) = self.place.take() {
            let window = self.throttle.limits.window;
            self.throttle
                .local()
                .failed(&self.keys, id, window, Instant::now());
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(place) = self.place.take() else {
            return;
        };
        // A panic unwinding through the check is the server's fault, not the client's.
        let outcome = self.settling.unwrap_or(if std::thread::panicking() {
            Outcome::Abandoned
        } else {
            Outcome::GivenUp
        });
        match place {
            Place::Local(id) => self.throttle.local().release(&self.keys, id, outcome),
            Place::Redis(member) => {
                // Outside a runtime (never so in the server) the reservation stays: counted,
                // not lost.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (throttle, keys) = (self.throttle.clone(), std::mem::take(&mut self.keys));
                    runtime.spawn(async move { throttle.release(&keys, &member, outcome).await });
                }
            }
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

/// How many usernames, and how many addresses, [`LocalCounts`] holds at most: about 20 MB at
/// worst with the default limits (a username holds at most 5 places, an address 50), growing
/// with `LOGIN_MAX_FAILURES_PER_ADDRESS`. When one of the two is full and none of its keys
/// has left the window, the tenth of its keys with the fewest places (the least recent among
/// equals) goes at once, never the key of the attempt being counted. Usernames and addresses
/// are held apart because they cost a client differently: a new address key takes one call
/// given up on before its check (free), a username key keeps its place only with a password
/// check (argon2): a flood of cheap addresses cannot push out a username's failures, and
/// pushing one out takes a thousand password checks.
pub const LOCAL_KEYS_MAX: usize = 10_000;

/// When [`Places::add`] makes room for a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Before it is added (places past this window pruned first).
    Before(Duration),
    /// Later, by [`Places::trim`].
    After,
}

/// One kind of key's places (usernames', or addresses'): per key, the attempts' ids and
/// times, oldest first.
#[derive(Debug)]
struct Places {
    /// [`LOCAL_KEYS_MAX`], but in tests.
    max_keys: usize,
    keys: HashMap<String, VecDeque<(u64, Instant)>>,
    /// When every key was last pruned (done when the map is full, at most once a second).
    swept: Option<Instant>,
}

impl Places {
    fn new(max_keys: usize) -> Self {
        Self {
            max_keys,
            keys: HashMap::new(),
            swept: None,
        }
    }

    /// How long until `key` is under `limit` (zero if it is), its places past the window
    /// pruned. As the script: the place whose leaving brings the count under the limit.
    fn wait(&mut self, key: &str, limit: u32, window: Duration, now: Instant) -> Duration {
        let Some(places) = self.keys.get_mut(key) else {
            return Duration::ZERO;
        };
        while places
            .front()
            .is_some_and(|&(_, at)| age(at, now) >= window)
        {
            places.pop_front();
        }
        let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        if places.len() < limit {
            return Duration::ZERO;
        }
        let (_, oldest) = places[places.len() - limit];
        window.saturating_sub(age(oldest, now))
    }

    /// Adds the place `id` to `key`, first making room for a new key if `room` says so.
    fn add(&mut self, key: &str, id: u64, room: Room, pending: &HashSet<u64>, now: Instant) {
        if let Room::Before(window) = room
            && !self.keys.contains_key(key)
        {
            self.trim(key, 1, pending, window, now);
        }
        self.keys
            .entry(key.to_owned())
            .or_default()
            .push_back((id, now));
    }

    /// Makes room for `room` more keys within `max_keys`: when the map holds too many,
    /// every key is pruned (at most once a second), and if that is not enough the tenth of
    /// the keys other than `key` with the fewest places goes, of those with no place
    /// `pending` (an attempt still waiting for its check: it would not be counted when it
    /// fails).
    fn trim(
        &mut self,
        key: &str,
        room: usize,
        pending: &HashSet<u64>,
        window: Duration,
        now: Instant,
    ) {
        let over = |keys: &HashMap<_, _>| keys.len() + room > self.max_keys;
        if !over(&self.keys) {
            return;
        }
        if self
            .swept
            .is_none_or(|swept| age(swept, now) >= Duration::from_secs(1))
        {
            self.swept = Some(now);
            self.keys.retain(|_, places| {
                places.retain(|&(_, at)| age(at, now) < window);
                !places.is_empty()
            });
        }
        if !over(&self.keys) {
            return;
        }
        let mut candidates: Vec<_> = self
            .keys
            .iter()
            .filter(|(other, places)| {
                other.as_str() != key && !places.iter().any(|(id, _)| pending.contains(id))
            })
            .map(|(other, places)| (places.len(), places.back().map(|&(_, at)| at), other))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let evicted = (self.max_keys / 10).clamp(1, candidates.len());
        if evicted < candidates.len() {
            candidates.select_nth_unstable(evicted - 1);
        }
        let evicted: Vec<String> = candidates[..evicted]
            .iter()
            .map(|&(_, _, other)| other.clone())
            .collect();
        for other in evicted {
            self.keys.remove(&other);
        }
    }

    /// Removes the place `id` of `key`; whether it was there.
    fn remove(&mut self, key: &str, id: u64) -> bool {
        let Some(places) = self.keys.get_mut(key) else {
            return false;
        };
        let Some(at) = places.iter().position(|&(place, _)| place == id) else {
            return false;
        };
        places.remove(at);
        if places.is_empty() {
            self.keys.remove(key);
        }
        true
    }

    #[cfg(test)]
    fn count(&self, key: &str) -> usize {
        self.keys.get(key).map_or(0, VecDeque::len)
    }
}

/// Failed sign-ins counted in this process while Redis cannot be asked, with the rules of the
/// Redis scripts (`RESERVE`, `RELEASE`) on the same keys, limits and window. Consulted only
/// when Redis is not.
#[derive(Debug)]
struct LocalCounts {
    usernames: Places,
    addresses: Places,
    /// The places of attempts still waiting for their verdict: never pushed out.
    pending: HashSet<u64>,
    next_id: u64,
}

impl LocalCounts {
    fn new(max_keys: usize) -> Self {
        Self {
            usernames: Places::new(max_keys),
            addresses: Places::new(max_keys),
            pending: HashSet::new(),
            next_id: 0,
        }
    }

    /// Reserves a place under both keys if both counts are under their limits; else the wait
    /// until enough places leave the window.
    fn reserve(
        &mut self,
        [username, address]: &[String; 2],
        [per_username, per_address]: [u32; 2],
        window: Duration,
        now: Instant,
    ) -> Result<u64, Duration> {
        let wait = self
            .usernames
            .wait(username, per_username, window, now)
            .max(self.addresses.wait(address, per_address, window, now));
        if !wait.is_zero() {
            return Err(wait.max(Duration::from_millis(1)));
        }
        let id = self.next_id;
        self.next_id += 1;
        // A username's place is made room for only once it is a failure (`failed`): a place
        // taken by a call given up on before its check (free for a client) pushes nothing out.
        self.usernames
            .add(username, id, Room::After, &self.pending, now);
        self.addresses
            .add(address, id, Room::Before(window), &self.pending, now);
        self.pending.insert(id);
        Ok(id)
    }

    /// The attempt reserved under `keys` failed: its places stay, and the usernames are
    /// brought back within their bound (the few in flight beyond it were taken by attempts
    /// still waiting for their check).
    fn failed(&mut self, [username, _]: &[String; 2], id: u64, window: Duration, now: Instant) {
        self.pending.remove(&id);
        self.usernames.trim(username, 0, &self.pending, window, now);
    }

    /// `RELEASE`'s rules: once only (nothing if neither place is there any more); the
    /// address's place kept when given up on; a success forgets the username's count.
    fn release(&mut self, [username, address]: &[String; 2], id: u64, outcome: Outcome) {
        self.pending.remove(&id);
        let mut released = self.usernames.remove(username, id);
        if !matches!(outcome, Outcome::GivenUp) {
            released |= self.addresses.remove(address, id);
        }
        if released && matches!(outcome, Outcome::Succeeded) {
            self.forget(username);
        }
    }

    /// A success: the username's failures counted here are forgotten.
    fn forget(&mut self, username: &str) {
        self.usernames.keys.remove(username);
    }
}

/// How long ago `at` was (none if it is after `now`).
fn age(at: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(at)
}

#[derive(Debug, Clone)]
pub struct LoginThrottle {
    redis: Connection,
    keys: Keys,
    limits: LoginLimits,
    /// Whether Redis has failed since it last answered: the outage is logged when this turns
    /// on, and its end when it turns off, not on every call.
    degraded: Arc<AtomicBool>,
    /// Set by a timeout: until then Redis is not asked.
    paused_until: Arc<Mutex<Option<Instant>>>,
    /// Set while one call asks Redis during an outage: the others are counted in memory
    /// meanwhile instead of each waiting out a timeout.
    probing: Arc<AtomicBool>,
    /// The counts while Redis cannot be asked.
    local: Arc<Mutex<LocalCounts>>,
}

impl LoginThrottle {
    pub fn new(redis: impl Into<Connection>, keys: Keys, limits: LoginLimits) -> Self {
        Self {
            redis: redis.into(),
            keys,
            limits,
            degraded: Arc::default(),
            paused_until: Arc::default(),
            probing: Arc::default(),
            local: Arc::new(Mutex::new(LocalCounts::new(LOCAL_KEYS_MAX))),
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

    fn local(&self) -> std::sync::MutexGuard<'_, LocalCounts> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
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
            place: Some(Place::Redis(member)),
            throttle: self.clone(),
            settling: None,
        };
        let mut redis = self.redis.clone();
        let waited: Result<u64, Unanswered> =
            self.bounded(invocation.invoke_async(&mut redis)).await;
        match waited {
            Ok(ms) if ms > 0 => {
                attempt.place = None;
                Verdict::Throttled(Duration::from_millis(ms))
            }
            Ok(_) => Verdict::Allowed(attempt),
            Err(unanswered) => {
                let sent = !matches!(unanswered, Unanswered::Paused);
                if let (true, Some(Place::Redis(member))) = (sent, attempt.place.take()) {
                    self.take_back(&attempt.keys, &member);
                }
                let limits = [self.limits.per_username, self.limits.per_address];
                let reserved = {
                    let mut local = self.local();
                    let now = Instant::now();
                    local.reserve(&attempt.keys, limits, self.limits.window, now)
                };
                match reserved {
                    Ok(id) => {
                        attempt.place = Some(Place::Local(id));
                        Verdict::Allowed(attempt)
                    }
                    Err(wait) => {
                        attempt.place = None;
                        Verdict::Throttled(wait)
                    }
                }
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
        match &attempt.place {
            Some(Place::Redis(member)) => {
                if matches!(outcome, Outcome::Succeeded) {
                    // Failures counted in memory during an outage are forgotten too (once:
                    // not by a repeat of this release, which may follow failures since).
                    self.local().forget(&attempt.keys[0]);
                }
                self.release(&attempt.keys, member, outcome).await;
            }
            Some(Place::Local(id)) => self.local().release(&attempt.keys, *id, outcome),
            None => {}
        }
        attempt.place = None;
    }

    /// Releases a place in Redis: within [`REDIS_TIMEOUT`] when Redis may be asked, else
    /// sent all the same without waiting for it (see [`Self::send_behind`]): a release
    /// dropped would leave the place counted as a failure once Redis is back.
    async fn release(&self, keys: &[String; 2], member: &str, outcome: Outcome) {
        let invocation = release_call(keys, member, outcome);
        match self.gate() {
            Ok(_probe) => {
                let mut redis = self.redis.clone();
                let _ = self.timed(invocation.invoke_async::<i64>(&mut redis)).await;
            }
            Err(_) => self.send_behind(invocation),
        }
    }

    /// Takes back a reservation whose script got no answer (timed out, or failed after it may
    /// have been written), counted in memory instead: a hung Redis that wakes runs both and
    /// keeps no failure of an attempt it did not judge; a release of a place never made does
    /// nothing.
    fn take_back(&self, keys: &[String; 2], member: &str) {
        self.send_behind(release_call(keys, member, Outcome::Abandoned));
    }

    /// Sends `invocation` on the throttle's connection from a task of its own, whatever the
    /// pause, without waiting for it: queued behind what was sent before (the reservation it
    /// releases), it runs when Redis does. The connection's own response timeout ends the
    /// task; a broken connection loses it, as it lost what was before it.
    fn send_behind(&self, invocation: redis::ScriptInvocation<'static>) {
        let mut redis = self.redis.clone();
        tokio::spawn(async move {
            let _ = invocation.invoke_async::<i64>(&mut redis).await;
        });
    }

    /// `call` if Redis may be asked now ([`Self::gate`]), within [`REDIS_TIMEOUT`].
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unanswered> {
        let _probe = self.gate()?;
        self.timed(call).await
    }

    /// Whether Redis may be asked now: not while it is left alone after a timeout; during an
    /// outage by one call at a time (the probe, held until its call ends), which finds out
    /// whether Redis is back while the others are counted in memory.
    fn gate(&self) -> Result<Option<Probe<'_>>, Unanswered> {
        if self.paused() {
            return Err(Unanswered::Paused);
        }
        if !self.degraded.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return Err(Unanswered::Paused);
        }
        Ok(Some(Probe(&self.probing)))
    }

    /// `call` within [`REDIS_TIMEOUT`]; why not (and the outage logged once) if it failed. A
    /// timeout leaves Redis alone for [`LoginLimits::outage_pause`].
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unanswered> {
        let (failure, unanswered) = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("login throttling is back in Redis: Redis answers again");
                }
                return Ok(value);
            }
            Ok(Err(err)) => (chain(&err), Unanswered::Failed),
            Err(_) => {
                self.pause();
                (
                    format!("Redis did not answer within {REDIS_TIMEOUT:?}"),
                    Unanswered::TimedOut,
                )
            }
        };
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %failure,
                "login throttling counts failures in this process's memory until Redis answers again"
            );
        }
        Err(unanswered)
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

/// The one call asking Redis during an outage; the next may ask once it ends, also when the
/// call is dropped midway.
struct Probe<'a>(&'a AtomicBool);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use redis::aio::MultiplexedConnection;
    use simplebank_core::{keys::LoginFailureKeys as _, testing::TestRedis};
    use tokio::time::Instant;

    use super::{LocalCounts, Outcome, counted_address, release_call};

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
        release_call(keys, member, outcome)
            .invoke_async(conn)
            .await
            .expect("release")
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

        // Two sign-ins of alice at once: the second finds her count forgotten by the first,
        // and still leaves the address's.
        for member in ["one device", "another device"] {
            add(conn, &keys[0], member).await;
            add(conn, &keys[1], member).await;
        }
        for member in ["one device", "another device"] {
            assert_eq!(release(conn, &keys, member, Outcome::Succeeded).await, 1);
        }
        assert_eq!(members(conn, &keys[1]).await, ["given up"]);
    }

    const WINDOW: Duration = Duration::from_secs(60);

    fn local_keys(username: &str, address: &str) -> [String; 2] {
        [username.to_owned(), address.to_owned()]
    }

    /// The memory counts refuse as the script does: at either limit, with the wait until the
    /// place that brings the count under it leaves the window; places leave after the window.
    #[test]
    fn memory_counts_keep_both_limits_over_the_window() {
        let mut counts = LocalCounts::new(100);
        let start = Instant::now();
        let alice = local_keys("alice", "203.0.113.7");
        for second in 0..3 {
            let at = start + Duration::from_secs(second);
            assert!(counts.reserve(&alice, [3, 5], WINDOW, at).is_ok());
        }
        let now = start + Duration::from_secs(10);
        assert_eq!(
            counts.reserve(&alice, [3, 5], WINDOW, now),
            Err(Duration::from_secs(50)),
            "the username's oldest place leaves at 60 s"
        );
        // Another username from the address: 3 of 5 taken.
        let bob = local_keys("bob", "203.0.113.7");
        assert!(counts.reserve(&bob, [3, 5], WINDOW, now).is_ok());
        assert!(counts.reserve(&bob, [3, 5], WINDOW, now).is_ok());
        assert_eq!(
            counts.reserve(&bob, [3, 5], WINDOW, now),
            Err(Duration::from_secs(50)),
            "the address is at its limit"
        );
        assert_eq!(counts.usernames.count("bob"), 2, "a refusal takes no place");
        // The first place has left: one more for alice, the address back at its limit.
        let later = start + WINDOW;
        assert!(counts.reserve(&alice, [3, 5], WINDOW, later).is_ok());
        assert_eq!(
            counts.reserve(&alice, [3, 5], WINDOW, later),
            Err(Duration::from_secs(1))
        );
        assert_eq!(counts.addresses.count(&alice[1]), 5);
    }

    /// `RELEASE`'s rules in memory, as `each_outcome_releases_its_places_once` checks them in
    /// Redis.
    #[test]
    fn memory_counts_release_each_outcome_once() {
        let mut counts = LocalCounts::new(100);
        let now = Instant::now();
        let keys = local_keys("alice", "203.0.113.7");
        let limits = [5, 50];
        let mut place = || counts.reserve(&keys, limits, WINDOW, now).expect("place");
        let (_earlier, given_up, signed_in) = (place(), place(), place());

        counts.release(&keys, given_up, Outcome::GivenUp);
        assert_eq!(counts.usernames.count("alice"), 2);
        assert_eq!(
            counts.addresses.count(&keys[1]),
            3,
            "the address keeps a given-up place"
        );
        counts.release(&keys, signed_in, Outcome::Succeeded);
        assert_eq!(
            counts.usernames.count("alice"),
            0,
            "a success forgets the username's failures"
        );
        assert_eq!(counts.addresses.count(&keys[1]), 2);
        // A failure counted since, then the same success released again.
        let later = counts.reserve(&keys, limits, WINDOW, now).expect("place");
        counts.release(&keys, signed_in, Outcome::Succeeded);
        assert_eq!(counts.usernames.count("alice"), 1);
        counts.release(&keys, later, Outcome::Abandoned);
        assert_eq!(counts.usernames.count("alice"), 0);
        assert_eq!(
            counts.addresses.count(&keys[1]),
            2,
            "an abandoned place leaves both"
        );
        assert!(
            !counts.usernames.keys.contains_key("alice"),
            "an empty count is removed"
        );
        // Two sign-ins at once: the second finds alice's count forgotten by the first, and
        // still leaves the address's.
        let one = counts.reserve(&keys, limits, WINDOW, now).expect("place");
        let another = counts.reserve(&keys, limits, WINDOW, now).expect("place");
        counts.release(&keys, one, Outcome::Succeeded);
        counts.release(&keys, another, Outcome::Succeeded);
        assert_eq!(counts.addresses.count(&keys[1]), 2);
    }

    /// A wrong password for `keys` at `at`, counted in memory, unless refused.
    fn failure(
        counts: &mut LocalCounts,
        keys: &[String; 2],
        limits: [u32; 2],
        at: Instant,
    ) -> Result<u64, Duration> {
        let id = counts.reserve(keys, limits, WINDOW, at)?;
        counts.failed(keys, id, WINDOW, at);
        Ok(id)
    }

    /// However many usernames and addresses are tried, the memory holds at most `max_keys`
    /// of each; new ones push out keys with the fewest places, not a username with more;
    /// keys whose places have left the window make room first.
    #[test]
    fn memory_counts_hold_a_bounded_number_of_keys() {
        let mut counts = LocalCounts::new(100);
        let start = Instant::now();
        let limits = [3, 50];
        let target = local_keys("alice", "198.51.100.1");
        for _ in 0..2 {
            counts
                .reserve(&target, limits, WINDOW, start)
                .expect("place");
        }
        // A flood of new names, one failure each, newer than alice's.
        let later = start + Duration::from_secs(1);
        for n in 0..300 {
            let keys = local_keys(&format!("user{n}"), &format!("address{n}"));
            let at = later + Duration::from_millis(n);
            failure(&mut counts, &keys, limits, at).expect("place");
            assert!(counts.usernames.keys.len() <= 100 && counts.addresses.keys.len() <= 100);
        }
        assert_eq!(
            counts.usernames.count("alice"),
            2,
            "alice's failures stay counted"
        );
        assert_eq!(
            counts.usernames.count("user299"),
            1,
            "the newest is counted"
        );
        let other = local_keys("alice", "198.51.100.2");
        counts
            .reserve(&other, limits, WINDOW, later)
            .expect("place");
        assert!(counts.reserve(&other, limits, WINDOW, later).is_err());
        // Once the window has passed, the first overflow prunes every old key, not some.
        let after = start + WINDOW + Duration::from_secs(2);
        for n in 0..100 {
            let keys = local_keys(&format!("new{n}"), &format!("new{n}"));
            failure(&mut counts, &keys, limits, after).expect("place");
        }
        assert!(
            counts
                .usernames
                .keys
                .keys()
                .all(|key| key.starts_with("new")),
            "{:?}",
            counts.usernames.keys.keys()
        );
    }

    /// With the usernames full of keys holding more places, an attempt's own username (the
    /// fewest places of all) is never the one pushed out to make room for it; nor do new
    /// addresses, however many, push out a username: a username tried from a new address
    /// each time is still refused at its limit.
    #[test]
    fn new_addresses_never_push_out_a_usernames_failures() {
        let mut counts = LocalCounts::new(100);
        let start = Instant::now();
        // Fillers share one address, so each adds one username: the map can be filled exactly.
        let limits = [3, 10_000];
        let mut fillers = 0;
        let mut allowed = 0;
        for n in 0..30 {
            let at = start + Duration::from_millis(n);
            while counts.usernames.keys.len() < counts.usernames.max_keys {
                let keys = local_keys(&format!("user{fillers}"), "shared");
                fillers += 1;
                for _ in 0..2 {
                    failure(&mut counts, &keys, limits, at).expect("place");
                }
            }
            // Addresses given up on (no password checked: their username places released).
            for m in 0..200 {
                let keys = local_keys("mallory", &format!("flood-{n}-{m}"));
                let id = counts.reserve(&keys, limits, WINDOW, at).expect("place");
                counts.release(&keys, id, Outcome::GivenUp);
            }
            let keys = local_keys("alice", &format!("203.0.113.{n}"));
            allowed += usize::from(failure(&mut counts, &keys, limits, at).is_ok());
            assert!(counts.usernames.keys.len() <= 100 && counts.addresses.keys.len() <= 100);
        }
        assert_eq!(allowed, 3);
    }

    /// A place waiting for its check is never pushed out, however many calls in flight take
    /// new usernames past the bound: the guess is counted when it fails.
    #[test]
    fn a_place_waiting_for_its_check_is_never_pushed_out() {
        let mut counts = LocalCounts::new(100);
        let start = Instant::now();
        let limits = [5, 10_000];
        let alice = local_keys("alice", "shared");
        let guess = counts
            .reserve(&alice, limits, WINDOW, start)
            .expect("place");
        // Failures enough to fill the usernames, each newer than alice's place.
        let later = start + Duration::from_secs(1);
        for n in 0..counts.usernames.max_keys {
            let keys = local_keys(&format!("user{n}"), "shared");
            failure(&mut counts, &keys, limits, later).expect("place");
        }
        // Calls in flight for new usernames, past the bound, then given up on after a failure.
        let padding: Vec<_> = (0..50)
            .map(|n| {
                let keys = local_keys(&format!("pad{n}"), "shared");
                (
                    counts.reserve(&keys, limits, WINDOW, later).expect("place"),
                    keys,
                )
            })
            .collect();
        failure(&mut counts, &local_keys("mallory", "shared"), limits, later).expect("place");
        for (id, keys) in padding {
            counts.release(&keys, id, Outcome::GivenUp);
        }
        counts.failed(&alice, guess, WINDOW, later);
        assert_eq!(
            counts.usernames.count("alice"),
            1,
            "alice's guess is counted"
        );
        assert!(counts.usernames.keys.len() <= counts.usernames.max_keys);
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
