//! Session stores for the demo app: SQLite and Redis (shared), and process memory (the wrong twin).
//!
//! A session is a user name, a counter and a cart (a list of items). Every
//! operation on a session id that the store does not know (never created,
//! logged out, or older than [`SESSION_TTL`]) reports "no session", which the
//! app turns into a 401. A store that cannot be reached reports a
//! [`StoreError`] naming the store, which the app turns into a 503.
//!
//! Every change ([`Change`]: login, logout, cart, counter) goes through
//! [`Store::apply`], which makes it atomically (one SQLite transaction, one
//! Redis script, one lock) together with the request's `Idempotency-Key`
//! record when it has one (see [`super::idempotency`]): a key seen before
//! gets its stored response back and changes nothing.
//!
//! Sizes are bounded: user names, items and carts have maximum lengths, and the
//! memory store keeps at most [`MEMORY_MAX_SESSIONS`] sessions (and as many
//! idempotency records).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::idempotency::{Draft, Keyed, StoredReply};

/// How long a session lives after login.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest user name, in characters.
pub const MAX_USER_CHARS: usize = 64;
/// Longest cart item, in characters.
pub const MAX_ITEM_CHARS: usize = 100;
/// Most items in one cart.
pub const MAX_CART_ITEMS: usize = 1000;
/// Most sessions the memory store keeps (the oldest go first).
pub const MEMORY_MAX_SESSIONS: usize = 10_000;
/// How long SQLite waits for another process's lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on any one Redis operation, reconnects included.
const REDIS_OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Which store, as written on the command line: `memory`, `sqlite:PATH` or `redis://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In this process's memory: lost on restart, not shared between instances.
    Memory,
    /// A SQLite file that every instance on the machine opens (WAL mode).
    Sqlite(PathBuf),
    /// A Redis server, given as a `redis://` URL.
    Redis(String),
}

// === impl StoreSpec ===

impl StoreSpec {
    /// Parses `memory`, `sqlite:PATH` or `redis://[USER:PASS@]HOST:PORT[/DB]`.
    pub fn parse(text: &str) -> Result<StoreSpec, String> {
        let t = text.trim();
        if t == "memory" {
            return Ok(StoreSpec::Memory);
        }
        if let Some(path) = t.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("`sqlite:` needs a file path, e.g. `sqlite:/tmp/sessions.db`".into());
            }
            return Ok(StoreSpec::Sqlite(PathBuf::from(path)));
        }
        if t.starts_with("rediss://") {
            return Err(format!(
                "`{}`: TLS to Redis is not supported by the demo app; use `redis://`",
                redact(t)
            ));
        }
        if t.starts_with("redis://") {
            redis::Client::open(t).map_err(|e| format!("`{}`: {e}", redact(t)))?;
            return Ok(StoreSpec::Redis(t.to_owned()));
        }
        Err(format!(
            "unknown store `{}`: use `memory`, `sqlite:PATH` or `redis://HOST:PORT`",
            redact(t)
        ))
    }

    /// The store as it is named in messages (a Redis password is hidden).
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Memory => "memory".into(),
            StoreSpec::Sqlite(p) => format!("sqlite:{}", p.display()),
            StoreSpec::Redis(url) => redact(url),
        }
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Hides the user and password of a URL: `redis://***@host:6379`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The store could not be reached or failed; names the store.
#[derive(Debug, Clone, thiserror::Error)]
#[error("session store {store} is unavailable: {message}")]
pub struct StoreError {
    /// The store, as [`StoreSpec::describe`] names it.
    pub store: String,
    pub message: String,
}

/// One session's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub counter: i64,
    pub cart: Vec<String>,
}

/// What adding an item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartAdd {
    /// Added; the cart now holds this many items.
    Added(usize),
    /// No such session.
    NoSession,
    /// The cart already holds [`MAX_CART_ITEMS`].
    Full,
}

/// A change to the sessions, made atomically by [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new session `sid` for `user`.
    Login { sid: String, user: String },
    /// The session forgotten (no error if it was unknown).
    Logout { sid: String },
    /// `item` appended to the session's cart.
    AddToCart { sid: String, item: String },
    /// The session's counter incremented.
    Bump { sid: String },
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// Made; the number it produced (the cart's size, the counter; 0 for a
    /// login or logout).
    Done(i64),
    /// No such session: nothing changed.
    NoSession,
    /// The cart already holds [`MAX_CART_ITEMS`]: nothing changed.
    Full,
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The change was tried now (and, keyed and made, recorded).
    Fresh(Changed),
    /// The key was seen before with the same request: its stored response;
    /// nothing changed.
    Replayed(StoredReply),
    /// The key was seen before with another request: nothing changed.
    KeyReused,
}

/// A keyed change: the record it is checked against and stored under, and
/// the response to store with it.
pub type KeyedDraft<'a> = (&'a Keyed, &'a Draft);

/// A session store; every instance of the app opens the same one (except `memory`).
pub enum Store {
    Memory(MemoryStore),
    Sqlite(SqliteStore),
    /// Boxed: a Redis client and its config are large.
    Redis(Box<RedisStore>),
}

// === impl Store ===

impl Store {
    /// Opens the store lazily: nothing is connected yet, so an app starts even
    /// while its store is down (and answers 503 until it is back).
    pub fn open(spec: &StoreSpec) -> Result<Store, StoreError> {
        Ok(match spec {
            StoreSpec::Memory => Store::Memory(MemoryStore::default()),
            StoreSpec::Sqlite(path) => Store::Sqlite(SqliteStore::new(path)),
            StoreSpec::Redis(url) => Store::Redis(Box::new(RedisStore::new(url)?)),
        })
    }

    /// The store's name in messages.
    pub fn describe(&self) -> String {
        match self {
            Store::Memory(_) => "memory".into(),
            Store::Sqlite(s) => s.name.clone(),
            Store::Redis(r) => r.name.clone(),
        }
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Sqlite(s) => s.run(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await,
            Store::Redis(r) => r.ping().await,
        }
    }

    /// Makes `change`. With `keyed`, first looks the key up (a known key
    /// changes nothing: its response, or [`Applied::KeyReused`]), and stores
    /// the finished draft under the key in the same transaction as the change.
    pub async fn apply(
        &self,
        change: &Change,
        keyed: Option<KeyedDraft<'_>>,
    ) -> Result<Applied, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.apply(change, keyed)),
            Store::Sqlite(s) => s.apply(change, keyed).await,
            Store::Redis(r) => r.apply(change, keyed).await,
        }
    }

    /// A change without a key.
    async fn change(&self, change: Change) -> Result<Changed, StoreError> {
        match self.apply(&change, None).await? {
            Applied::Fresh(c) => Ok(c),
            other => unreachable!("an unkeyed change is always fresh: {other:?}"),
        }
    }

    /// Creates a session for `user` under the id `sid`.
    pub async fn create(&self, sid: &str, user: &str) -> Result<(), StoreError> {
        self.change(Change::Login {
            sid: sid.to_owned(),
            user: user.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// The session `sid`, or `None` if the store does not know it.
    pub async fn get(&self, sid: &str) -> Result<Option<Session>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.get(sid)),
            Store::Sqlite(s) => s.get(sid).await,
            Store::Redis(r) => r.get(sid).await,
        }
    }

    /// Appends `item` to the session's cart.
    pub async fn add_to_cart(&self, sid: &str, item: &str) -> Result<CartAdd, StoreError> {
        let change = Change::AddToCart {
            sid: sid.to_owned(),
            item: item.to_owned(),
        };
        Ok(match self.change(change).await? {
            Changed::Done(n) => CartAdd::Added(n.max(0) as usize),
            Changed::NoSession => CartAdd::NoSession,
            Changed::Full => CartAdd::Full,
        })
    }

    /// Increments the session's counter; the new value, or `None` without a session.
    pub async fn bump(&self, sid: &str) -> Result<Option<i64>, StoreError> {
        let change = Change::Bump {
            sid: sid.to_owned(),
        };
        Ok(match self.change(change).await? {
            Changed::Done(n) => Some(n),
            _ => None,
        })
    }

    /// Forgets the session (no error if it was unknown).
    pub async fn delete(&self, sid: &str) -> Result<(), StoreError> {
        let change = Change::Logout {
            sid: sid.to_owned(),
        };
        self.change(change).await.map(|_| ())
    }
}

/// The record's TTL in whole seconds (at least 1).
fn ttl_secs(k: &Keyed) -> i64 {
    k.ttl.as_secs().clamp(1, i64::MAX as u64) as i64
}

// === memory ===

/// Sessions in this process's memory: each instance has its own, and a
/// restart loses them. The deliberately wrong twin.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    sessions: HashMap<String, MemorySession>,
    records: HashMap<String, MemoryRecord>,
}

struct MemorySession {
    session: Session,
    created: Instant,
}

struct MemoryRecord {
    fingerprint: String,
    reply: StoredReply,
    expires: Instant,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, change: &Change, keyed: Option<KeyedDraft<'_>>) -> Applied {
        let mut state = self.lock();
        if let Some((k, _)) = keyed {
            match state.records.get(&k.id) {
                Some(r) if r.expires > Instant::now() => {
                    return if r.fingerprint == k.fingerprint {
                        Applied::Replayed(r.reply.clone())
                    } else {
                        Applied::KeyReused
                    };
                }
                _ => {}
            }
        }
        let changed = state.change(change);
        if let (Changed::Done(n), Some((k, draft))) = (changed, keyed) {
            state.record(k, draft.finish(n));
        }
        Applied::Fresh(changed)
    }

    fn get(&self, sid: &str) -> Option<Session> {
        self.lock().with(sid, |s| s.clone())
    }
}

impl MemoryState {
    fn change(&mut self, change: &Change) -> Changed {
        match change {
            Change::Login { sid, user } => {
                self.create(sid, user);
                Changed::Done(0)
            }
            Change::Logout { sid } => {
                self.sessions.remove(sid);
                Changed::Done(0)
            }
            Change::AddToCart { sid, item } => self
                .with(sid, |s| {
                    if s.cart.len() >= MAX_CART_ITEMS {
                        Changed::Full
                    } else {
                        s.cart.push(item.to_owned());
                        Changed::Done(s.cart.len() as i64)
                    }
                })
                .unwrap_or(Changed::NoSession),
            Change::Bump { sid } => self
                .with(sid, |s| {
                    s.counter += 1;
                    Changed::Done(s.counter)
                })
                .unwrap_or(Changed::NoSession),
        }
    }

    fn create(&mut self, sid: &str, user: &str) {
        let map = &mut self.sessions;
        if map.len() >= MEMORY_MAX_SESSIONS {
            map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        }
        if map.len() >= MEMORY_MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            sid.to_owned(),
            MemorySession {
                session: Session {
                    user: user.to_owned(),
                    counter: 0,
                    cart: Vec::new(),
                },
                created: Instant::now(),
            },
        );
    }

    /// Keeps a record, dropping expired ones (then the oldest) when full.
    fn record(&mut self, k: &Keyed, reply: StoredReply) {
        let now = Instant::now();
        let map = &mut self.records;
        if map.len() >= MEMORY_MAX_SESSIONS {
            map.retain(|_, r| r.expires > now);
        }
        if map.len() >= MEMORY_MAX_SESSIONS {
            if let Some(first) = map
                .iter()
                .min_by_key(|(_, r)| r.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&first);
            }
        }
        map.insert(
            k.id.clone(),
            MemoryRecord {
                fingerprint: k.fingerprint.clone(),
                reply,
                expires: now + k.ttl,
            },
        );
    }

    fn with<T>(&mut self, sid: &str, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        match self.sessions.get_mut(sid) {
            Some(s) if s.created.elapsed() < SESSION_TTL => Some(f(&mut s.session)),
            Some(_) => {
                self.sessions.remove(sid);
                None
            }
            None => None,
        }
    }
}

// === sqlite ===

/// Sessions in a SQLite file shared by every instance on the machine. WAL
/// mode lets readers and one writer work at once; a writer that finds the
/// file locked by another process waits (busy timeout) rather than failing.
pub struct SqliteStore {
    path: PathBuf,
    name: String,
    /// Opened on first use, and again after an error that may have broken it.
    conn: Arc<Mutex<Option<Connection>>>,
}

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id      TEXT PRIMARY KEY,
    user    TEXT NOT NULL,
    counter INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_created ON sessions(created);
CREATE TABLE IF NOT EXISTS cart (
    id      INTEGER PRIMARY KEY,
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    item    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cart_session ON cart(session, id);
CREATE TABLE IF NOT EXISTS idempotency (
    id          TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    head        TEXT NOT NULL,
    body        TEXT NOT NULL,
    expires     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency(expires);
";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The oldest `created` time a live session may have.
fn live_since() -> i64 {
    unix_now() - SESSION_TTL.as_secs() as i64
}

impl SqliteStore {
    fn new(path: &Path) -> SqliteStore {
        SqliteStore {
            path: path.to_owned(),
            name: format!("sqlite:{}", path.display()),
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Opens (creating if needed) the file, switches it to WAL and creates
    /// the tables. The demo calls this once before starting instances.
    pub fn init(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite refused WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SQLITE_SCHEMA)?;
        Ok(conn)
    }

    /// Runs `f` on the connection in a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = Some(Self::init(&path)?);
            }
            let c = guard.as_mut().expect("opened above");
            let r = f(c);
            if let Err(e) = &r {
                // Open again next time unless the error was about this
                // statement only (a lock held by another process, a constraint).
                let keep = matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy)
                        | Some(rusqlite::ErrorCode::DatabaseLocked)
                        | Some(rusqlite::ErrorCode::ConstraintViolation)
                );
                if !keep {
                    *guard = None;
                }
            }
            r
        })
        .await;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(e.to_string())),
            Err(e) => Err(self.error(format!("worker failed: {e}"))),
        }
    }

    fn error(&self, message: String) -> StoreError {
        StoreError {
            store: self.name.clone(),
            message,
        }
    }

    /// One immediate transaction: the key looked up, the change made, the
    /// response recorded.
    async fn apply(
        &self,
        change: &Change,
        keyed: Option<KeyedDraft<'_>>,
    ) -> Result<Applied, StoreError> {
        let change = change.clone();
        let keyed = keyed.map(|(k, d)| (k.clone(), d.clone()));
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some((k, _)) = &keyed {
                if let Some(found) = sqlite_recorded(&tx, k)? {
                    return Ok(found);
                }
            }
            let changed = sqlite_change(&tx, &change)?;
            if let (Changed::Done(n), Some((k, draft))) = (changed, &keyed) {
                sqlite_record(&tx, k, &draft.finish(n))?;
            }
            tx.commit()?;
            Ok(Applied::Fresh(changed))
        })
        .await
    }

    async fn get(&self, sid: &str) -> Result<Option<Session>, StoreError> {
        let sid = sid.to_owned();
        self.run(move |c| {
            let tx = c.transaction()?;
            let head: Option<(String, i64)> = tx
                .query_row(
                    "SELECT user, counter FROM sessions WHERE id = ?1 AND created >= ?2",
                    params![sid, live_since()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((user, counter)) = head else {
                return Ok(None);
            };
            let mut stmt =
                tx.prepare_cached("SELECT item FROM cart WHERE session = ?1 ORDER BY id")?;
            let cart = stmt
                .query_map([&sid], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            drop(stmt);
            tx.finish()?;
            Ok(Some(Session {
                user,
                counter,
                cart,
            }))
        })
        .await
    }
}

/// The key's live record: its response, or [`Applied::KeyReused`].
fn sqlite_recorded(tx: &Transaction<'_>, k: &Keyed) -> rusqlite::Result<Option<Applied>> {
    let row: Option<(String, String, String)> = tx
        .query_row(
            "SELECT fingerprint, head, body FROM idempotency WHERE id = ?1 AND expires > ?2",
            params![k.id, unix_now()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(row.map(
        |(fingerprint, head, body)| match StoredReply::from_parts(&head, body) {
            Some(reply) if fingerprint == k.fingerprint => Applied::Replayed(reply),
            _ => Applied::KeyReused,
        },
    ))
}

fn sqlite_record(tx: &Transaction<'_>, k: &Keyed, reply: &StoredReply) -> rusqlite::Result<()> {
    let now = unix_now();
    tx.execute("DELETE FROM idempotency WHERE expires <= ?1", [now])?;
    tx.execute(
        "INSERT OR REPLACE INTO idempotency (id, fingerprint, head, body, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![k.id, k.fingerprint, reply.head_json(), reply.body, now.saturating_add(ttl_secs(k))],
    )?;
    Ok(())
}

fn sqlite_change(tx: &Transaction<'_>, change: &Change) -> rusqlite::Result<Changed> {
    match change {
        Change::Login { sid, user } => {
            tx.execute("DELETE FROM sessions WHERE created < ?1", [live_since()])?;
            tx.execute(
                "INSERT OR REPLACE INTO sessions (id, user, counter, created) VALUES (?1, ?2, 0, ?3)",
                params![sid, user, unix_now()],
            )?;
            Ok(Changed::Done(0))
        }
        Change::Logout { sid } => {
            tx.execute("DELETE FROM sessions WHERE id = ?1", [sid])?;
            Ok(Changed::Done(0))
        }
        Change::AddToCart { sid, item } => sqlite_add(tx, sid, item),
        Change::Bump { sid } => Ok(tx
            .query_row(
                "UPDATE sessions SET counter = counter + 1 WHERE id = ?1 AND created >= ?2 RETURNING counter",
                params![sid, live_since()],
                |r| r.get(0),
            )
            .optional()?
            .map_or(Changed::NoSession, Changed::Done)),
    }
}

fn sqlite_add(tx: &Transaction<'_>, sid: &str, item: &str) -> rusqlite::Result<Changed> {
    let live: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = ?1 AND created >= ?2)",
        params![sid, live_since()],
        |r| r.get(0),
    )?;
    if !live {
        return Ok(Changed::NoSession);
    }
    let n: i64 = tx.query_row("SELECT count(*) FROM cart WHERE session = ?1", [sid], |r| {
        r.get(0)
    })?;
    if n as usize >= MAX_CART_ITEMS {
        return Ok(Changed::Full);
    }
    tx.execute(
        "INSERT INTO cart (session, item) VALUES (?1, ?2)",
        params![sid, item],
    )?;
    Ok(Changed::Done(n + 1))
}

// === redis ===

/// Sessions in Redis: a hash `unstick-demo:s:SID` (user, counter) and a list
/// `unstick-demo:c:SID` (the cart), both expiring after [`SESSION_TTL`];
/// idempotency records in hashes `unstick-demo:k:ID` (fingerprint, head,
/// body) expiring after their TTL.
///
/// One multiplexed connection is shared by every request; it is made on
/// first use and made again after an error that broke it. The server's name
/// is resolved by [`crate::dns`] (a static binary has no `getaddrinfo`) on
/// every connect, so a Redis container that comes back elsewhere is found.
pub struct RedisStore {
    name: String,
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

/// Redis's name lookups, answered by [`crate::dns::Resolver`].
struct RedisDns(crate::dns::Resolver);

impl redis::io::AsyncDNSResolver for RedisDns {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let answer = self.0.lookup(host, port).await?;
            Ok(Box::new(answer.addrs.into_iter()) as Box<dyn Iterator<Item = _> + Send>)
        })
    }
}

/// Every change is one script: this, the change (which sets `n`: the number
/// it produced, or -1 without a session, -2 for a full cart), then
/// [`REDIS_END`]. KEYS: the session, its cart, the record. ARGV: keyed
/// (`1`/`0`), fingerprint, record TTL, head, body up to the number, the text
/// after the number, whether the body has a number (`1`/`0`), then the
/// change's own arguments.
const REDIS_BEGIN: &str = r"
local keyed = ARGV[1] == '1'
if keyed then
  local rec = redis.call('HMGET', KEYS[3], 'fp', 'head', 'body')
  if rec[1] then
    if rec[1] == ARGV[2] then return {'replay', rec[2], rec[3]} end
    return {'reused', '', ''}
  end
end
local n
";

const REDIS_END: &str = r"
if n >= 0 and keyed then
  local body = ARGV[5]
  if ARGV[7] == '1' then body = body .. n .. ARGV[6] end
  redis.call('HSET', KEYS[3], 'fp', ARGV[2], 'head', ARGV[4], 'body', body)
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return {'changed', tostring(n), ''}
";

/// ARGV[8] user, ARGV[9] session TTL.
const REDIS_LOGIN: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'user', ARGV[8], 'counter', '0')
redis.call('EXPIRE', KEYS[1], ARGV[9])
n = 0
";

const REDIS_LOGOUT: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
n = 0
";

/// ARGV[8] item, ARGV[9] most items, ARGV[10] session TTL.
const REDIS_ADD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then n = -1
elseif redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[9]) then n = -2
else
  n = redis.call('RPUSH', KEYS[2], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[10])
end
";

const REDIS_BUMP: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then n = -1
else n = redis.call('HINCRBY', KEYS[1], 'counter', 1) end
";

/// The four change scripts, whole.
static REDIS_SCRIPTS: std::sync::LazyLock<[redis::Script; 4]> = std::sync::LazyLock::new(|| {
    [REDIS_LOGIN, REDIS_LOGOUT, REDIS_ADD, REDIS_BUMP]
        .map(|body| redis::Script::new(&format!("{REDIS_BEGIN}{body}{REDIS_END}")))
});

fn session_key(sid: &str) -> String {
    format!("unstick-demo:s:{sid}")
}

fn cart_key(sid: &str) -> String {
    format!("unstick-demo:c:{sid}")
}

fn record_key(id: &str) -> String {
    format!("unstick-demo:k:{id}")
}

impl RedisStore {
    fn new(url: &str) -> Result<RedisStore, StoreError> {
        let name = redact(url);
        let client = redis::Client::open(url).map_err(|e| StoreError {
            store: name.clone(),
            message: e.to_string(),
        })?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_dns_resolver(RedisDns(crate::dns::Resolver::system()));
        Ok(RedisStore {
            name,
            client,
            config,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// Runs one operation, bounded by [`REDIS_OP_TIMEOUT`] (connecting included).
    async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut redis::aio::MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let op = async {
            let mut conn = self.connection().await?;
            let result = f(&mut conn).await;
            if let Err(e) = &result {
                if e.is_unrecoverable_error() || e.is_connection_dropped() {
                    *self.conn.lock().await = None;
                }
            }
            result
        };
        match tokio::time::timeout(REDIS_OP_TIMEOUT, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(e.to_string())),
            Err(_) => Err(self.error(format!("no answer within {REDIS_OP_TIMEOUT:?}"))),
        }
    }

    /// The shared connection, made now if there is none.
    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = &*slot {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn error(&self, message: String) -> StoreError {
        StoreError {
            store: self.name.clone(),
            message,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(async |c| redis::cmd("PING").query_async::<()>(c).await)
            .await
    }

    /// One script: the key looked up, the change made, the response recorded.
    async fn apply(
        &self,
        change: &Change,
        keyed: Option<KeyedDraft<'_>>,
    ) -> Result<Applied, StoreError> {
        let session_ttl = SESSION_TTL.as_secs().to_string();
        let (script, sid, own): (usize, &str, Vec<String>) = match change {
            Change::Login { sid, user } => (0, sid, vec![user.clone(), session_ttl]),
            Change::Logout { sid } => (1, sid, vec![]),
            Change::AddToCart { sid, item } => (
                2,
                sid,
                vec![item.clone(), MAX_CART_ITEMS.to_string(), session_ttl],
            ),
            Change::Bump { sid } => (3, sid, vec![]),
        };
        let script = &REDIS_SCRIPTS[script];
        let mut inv = script.key(session_key(sid));
        inv.key(cart_key(sid));
        match keyed {
            Some((k, d)) => inv
                .key(record_key(&k.id))
                .arg("1")
                .arg(&k.fingerprint)
                .arg(ttl_secs(k))
                .arg(d.reply.head_json())
                .arg(&d.reply.body)
                .arg(d.after_count.as_deref().unwrap_or_default())
                .arg(if d.after_count.is_some() { "1" } else { "0" }),
            None => inv
                .key(record_key("-"))
                .arg(vec!["0", "", "0", "", "", "", "0"]),
        };
        inv.arg(own);
        let (what, a, b): (String, String, String) =
            self.run(async |c| inv.invoke_async(c).await).await?;
        match what.as_str() {
            "replay" => StoredReply::from_parts(&a, b)
                .map(Applied::Replayed)
                .ok_or_else(|| self.error("an idempotency record is unreadable".into())),
            "reused" => Ok(Applied::KeyReused),
            _ => Ok(Applied::Fresh(match a.parse::<i64>() {
                Ok(-1) => Changed::NoSession,
                Ok(-2) => Changed::Full,
                Ok(n) => Changed::Done(n.max(0)),
                Err(_) => return Err(self.error(format!("a script answered {a:?}"))),
            })),
        }
    }

    async fn get(&self, sid: &str) -> Result<Option<Session>, StoreError> {
        let (skey, ckey) = (session_key(sid), cart_key(sid));
        let ((user, counter), cart): ((Option<String>, Option<i64>), Vec<String>) = self
            .run(async |c| {
                redis::pipe()
                    .atomic()
                    .hmget(&skey, &["user", "counter"])
                    .lrange(&ckey, 0, -1)
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(user.map(|user| Session {
            user,
            counter: counter.unwrap_or(0),
            cart,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_name_themselves() {
        assert_eq!(StoreSpec::parse("memory"), Ok(StoreSpec::Memory));
        assert_eq!(
            StoreSpec::parse("sqlite:/tmp/x.db"),
            Ok(StoreSpec::Sqlite("/tmp/x.db".into()))
        );
        let r = StoreSpec::parse("redis://:secret@127.0.0.1:6379").unwrap();
        assert_eq!(r.describe(), "redis://***@127.0.0.1:6379");
        assert!(StoreSpec::parse("sqlite:").is_err());
        assert!(StoreSpec::parse("postgres://x")
            .unwrap_err()
            .contains("unknown store"));
        assert!(StoreSpec::parse("rediss://h:1")
            .unwrap_err()
            .contains("TLS"));
    }

    async fn exercise(store: &Store) {
        assert_eq!(store.get("a").await.unwrap(), None);
        assert_eq!(store.bump("a").await.unwrap(), None);
        assert_eq!(
            store.add_to_cart("a", "x").await.unwrap(),
            CartAdd::NoSession
        );
        store.create("a", "ada").await.unwrap();
        assert_eq!(store.bump("a").await.unwrap(), Some(1));
        assert_eq!(store.bump("a").await.unwrap(), Some(2));
        assert_eq!(
            store.add_to_cart("a", "tea").await.unwrap(),
            CartAdd::Added(1)
        );
        assert_eq!(
            store.add_to_cart("a", "milk").await.unwrap(),
            CartAdd::Added(2)
        );
        let s = store.get("a").await.unwrap().unwrap();
        assert_eq!(
            s,
            Session {
                user: "ada".into(),
                counter: 2,
                cart: vec!["tea".into(), "milk".into()]
            }
        );
        for i in 2..MAX_CART_ITEMS {
            assert_eq!(
                store.add_to_cart("a", "x").await.unwrap(),
                CartAdd::Added(i + 1)
            );
        }
        assert_eq!(store.add_to_cart("a", "x").await.unwrap(), CartAdd::Full);
        store.delete("a").await.unwrap();
        assert_eq!(store.get("a").await.unwrap(), None);
        assert_eq!(store.bump("a").await.unwrap(), None);
    }

    /// A keyed change happens once; its key replays the response; another
    /// request under the key is refused; a refused change is not recorded.
    async fn exercise_keyed(store: &Store, sid: &str) {
        use crate::demo::idempotency::{keyed, Draft, StoredReply};
        let h = http::HeaderMap::new();
        let ttl = Duration::from_secs(60);
        let k = keyed(
            "k1",
            Some(sid),
            &http::Method::POST,
            "/counter",
            &h,
            b"",
            ttl,
        );
        let draft = Draft {
            reply: StoredReply {
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: "n=".into(),
            },
            after_count: Some("\n".into()),
        };
        let bump = Change::Bump {
            sid: sid.to_owned(),
        };
        let apply = || store.apply(&bump, Some((&k, &draft)));
        assert_eq!(apply().await.unwrap(), Applied::Fresh(Changed::NoSession));
        assert_eq!(apply().await.unwrap(), Applied::Fresh(Changed::NoSession));
        store.create(sid, "ada").await.unwrap();
        assert_eq!(apply().await.unwrap(), Applied::Fresh(Changed::Done(1)));
        let replayed = apply().await.unwrap();
        assert_eq!(replayed, Applied::Replayed(draft.finish(1)));
        let Applied::Replayed(r) = replayed else {
            unreachable!()
        };
        assert_eq!((r.status, r.body.as_str()), (200, "n=1\n"));
        assert_eq!(store.bump(sid).await.unwrap(), Some(2));
        let mut other = k.clone();
        other.fingerprint = "another request".into();
        let r = store.apply(&bump, Some((&other, &draft))).await.unwrap();
        assert_eq!(r, Applied::KeyReused);
        assert_eq!(store.get(sid).await.unwrap().unwrap().counter, 2);
        store.delete(sid).await.unwrap();
    }

    #[tokio::test]
    async fn memory_store_works() {
        exercise(&Store::open(&StoreSpec::Memory).unwrap()).await;
        exercise_keyed(&Store::open(&StoreSpec::Memory).unwrap(), "s").await;
    }

    #[tokio::test]
    async fn sqlite_store_works_and_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::Sqlite(dir.path().join("s.db"));
        let a = Store::open(&spec).unwrap();
        exercise(&a).await;
        exercise_keyed(&a, "keyed").await;
        // A second handle (as another instance would open) sees the first's writes.
        let b = Store::open(&spec).unwrap();
        a.create("shared", "bob").await.unwrap();
        assert_eq!(b.bump("shared").await.unwrap(), Some(1));
        assert_eq!(a.get("shared").await.unwrap().unwrap().counter, 1);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_error_naming_it() {
        let spec = StoreSpec::Sqlite("/nonexistent-dir/unstick/s.db".into());
        let err = Store::open(&spec).unwrap().ping().await.unwrap_err();
        assert!(
            err.to_string()
                .contains("sqlite:/nonexistent-dir/unstick/s.db"),
            "{err}"
        );
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = StoreSpec::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let err = Store::open(&spec).unwrap().get("x").await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("redis://127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn redis_store_works() {
        let Some(url) = std::env::var("UNSTICK_TEST_REDIS")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("skipped: needs redis (set UNSTICK_TEST_REDIS=redis://127.0.0.1:PORT)");
            return;
        };
        let store = Store::open(&StoreSpec::parse(&url).unwrap()).unwrap();
        // Session ids are random in the app; here a unique prefix keeps runs apart.
        let sid = format!("unit-{}", rand::random::<u64>());
        store.delete(&sid).await.unwrap();
        assert_eq!(store.get(&sid).await.unwrap(), None);
        store.create(&sid, "ada").await.unwrap();
        assert_eq!(store.bump(&sid).await.unwrap(), Some(1));
        assert_eq!(
            store.add_to_cart(&sid, "tea").await.unwrap(),
            CartAdd::Added(1)
        );
        let s = store.get(&sid).await.unwrap().unwrap();
        assert_eq!((s.user.as_str(), s.counter, s.cart.len()), ("ada", 1, 1));
        store.delete(&sid).await.unwrap();
        assert_eq!(store.bump(&sid).await.unwrap(), None);
        exercise_keyed(&store, &format!("{sid}-keyed")).await;
    }

    /// A connection the server closes is replaced: at most the request in
    /// flight on it fails, and the next one goes through a new connection.
    #[tokio::test]
    async fn redis_store_reconnects_after_the_server_drops_it() {
        let Some(url) = std::env::var("UNSTICK_TEST_REDIS")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("skipped: needs redis (set UNSTICK_TEST_REDIS=redis://127.0.0.1:PORT)");
            return;
        };
        let store = RedisStore::new(&url).unwrap();
        let client_id = async || {
            store
                .run(async |c| redis::cmd("CLIENT").arg("ID").query_async::<i64>(c).await)
                .await
        };
        let first = client_id().await.unwrap();
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(first)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        let _ = client_id().await; // may fail: it finds the connection closed
        let second = client_id().await.unwrap();
        assert_ne!(first, second, "a new connection");
        store.ping().await.unwrap();
    }
}
