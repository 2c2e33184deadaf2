//! Session stores for the demo app: SQLite and Redis (shared), and process memory (the wrong twin).
//!
//! A session is a user name, a counter and a cart (a list of items). Every
//! operation on a session id that the store does not know (never created,
//! logged out, or older than [`SESSION_TTL`]) reports "no session", which the
//! app turns into a 401. A store that cannot be reached reports a
//! [`StoreError`] naming the store, which the app turns into a 503.
//!
//! Sizes are bounded: user names, items and carts have maximum lengths, and the
//! memory store keeps at most [`MEMORY_MAX_SESSIONS`] sessions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

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

    /// Creates a session for `user` under the id `sid`.
    pub async fn create(&self, sid: &str, user: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.create(sid, user);
                Ok(())
            }
            Store::Sqlite(s) => s.create(sid, user).await,
            Store::Redis(r) => r.create(sid, user).await,
        }
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
        match self {
            Store::Memory(m) => Ok(m.add_to_cart(sid, item)),
            Store::Sqlite(s) => s.add_to_cart(sid, item).await,
            Store::Redis(r) => r.add_to_cart(sid, item).await,
        }
    }

    /// Increments the session's counter; the new value, or `None` without a session.
    pub async fn bump(&self, sid: &str) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.bump(sid)),
            Store::Sqlite(s) => s.bump(sid).await,
            Store::Redis(r) => r.bump(sid).await,
        }
    }

    /// Forgets the session (no error if it was unknown).
    pub async fn delete(&self, sid: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.delete(sid);
                Ok(())
            }
            Store::Sqlite(s) => s.delete(sid).await,
            Store::Redis(r) => r.delete(sid).await,
        }
    }
}

// === memory ===

/// Sessions in this process's memory: each instance has its own, and a
/// restart loses them. The deliberately wrong twin.
#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<String, MemorySession>>,
}

struct MemorySession {
    session: Session,
    created: Instant,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemorySession>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(&self, sid: &str, user: &str) {
        let mut map = self.lock();
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

    fn with<T>(&self, sid: &str, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        let mut map = self.lock();
        match map.get_mut(sid) {
            Some(s) if s.created.elapsed() < SESSION_TTL => Some(f(&mut s.session)),
            Some(_) => {
                map.remove(sid);
                None
            }
            None => None,
        }
    }

    fn get(&self, sid: &str) -> Option<Session> {
        self.with(sid, |s| s.clone())
    }

    fn add_to_cart(&self, sid: &str, item: &str) -> CartAdd {
        self.with(sid, |s| {
            if s.cart.len() >= MAX_CART_ITEMS {
                CartAdd::Full
            } else {
                s.cart.push(item.to_owned());
                CartAdd::Added(s.cart.len())
            }
        })
        .unwrap_or(CartAdd::NoSession)
    }

    fn bump(&self, sid: &str) -> Option<i64> {
        self.with(sid, |s| {
            s.counter += 1;
            s.counter
        })
    }

    fn delete(&self, sid: &str) {
        self.lock().remove(sid);
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

    async fn create(&self, sid: &str, user: &str) -> Result<(), StoreError> {
        let (sid, user) = (sid.to_owned(), user.to_owned());
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM sessions WHERE created < ?1", [live_since()])?;
            tx.execute(
                "INSERT OR REPLACE INTO sessions (id, user, counter, created) VALUES (?1, ?2, 0, ?3)",
                params![sid, user, unix_now()],
            )?;
            tx.commit()
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

    async fn add_to_cart(&self, sid: &str, item: &str) -> Result<CartAdd, StoreError> {
        let (sid, item) = (sid.to_owned(), item.to_owned());
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = ?1 AND created >= ?2)",
                params![sid, live_since()],
                |r| r.get(0),
            )?;
            if !live {
                return Ok(CartAdd::NoSession);
            }
            let n: i64 = tx.query_row(
                "SELECT count(*) FROM cart WHERE session = ?1",
                [&sid],
                |r| r.get(0),
            )?;
            if n as usize >= MAX_CART_ITEMS {
                return Ok(CartAdd::Full);
            }
            tx.execute(
                "INSERT INTO cart (session, item) VALUES (?1, ?2)",
                params![sid, item],
            )?;
            tx.commit()?;
            Ok(CartAdd::Added(n as usize + 1))
        })
        .await
    }

    async fn bump(&self, sid: &str) -> Result<Option<i64>, StoreError> {
        let sid = sid.to_owned();
        self.run(move |c| {
            c.query_row(
                "UPDATE sessions SET counter = counter + 1 WHERE id = ?1 AND created >= ?2 RETURNING counter",
                params![sid, live_since()],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    async fn delete(&self, sid: &str) -> Result<(), StoreError> {
        let sid = sid.to_owned();
        self.run(move |c| {
            c.execute("DELETE FROM sessions WHERE id = ?1", [sid])
                .map(|_| ())
        })
        .await
    }
}

// === redis ===

/// Sessions in Redis: a hash `unstick-demo:s:SID` (user, counter) and a list
/// `unstick-demo:c:SID` (the cart), both expiring after [`SESSION_TTL`].
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

/// Adds to the cart only if the session exists and the cart has room.
const REDIS_ADD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[2]) then return -2 end
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return n
";

/// Increments the counter only if the session exists.
const REDIS_BUMP: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], 'counter', 1)
";

fn session_key(sid: &str) -> String {
    format!("unstick-demo:s:{sid}")
}

fn cart_key(sid: &str) -> String {
    format!("unstick-demo:c:{sid}")
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

    async fn create(&self, sid: &str, user: &str) -> Result<(), StoreError> {
        let key = session_key(sid);
        let ttl = SESSION_TTL.as_secs() as i64;
        self.run(async |c| {
            redis::pipe()
                .atomic()
                .del(&key)
                .del(cart_key(sid))
                .hset_multiple(&key, &[("user", user), ("counter", "0")])
                .expire(&key, ttl)
                .query_async::<()>(c)
                .await
        })
        .await
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

    async fn add_to_cart(&self, sid: &str, item: &str) -> Result<CartAdd, StoreError> {
        let script = redis::Script::new(REDIS_ADD);
        let n: i64 = self
            .run(async |c| {
                script
                    .key(session_key(sid))
                    .key(cart_key(sid))
                    .arg(item)
                    .arg(MAX_CART_ITEMS)
                    .arg(SESSION_TTL.as_secs())
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok(match n {
            -1 => CartAdd::NoSession,
            -2 => CartAdd::Full,
            n => CartAdd::Added(n.max(0) as usize),
        })
    }

    async fn bump(&self, sid: &str) -> Result<Option<i64>, StoreError> {
        let script = redis::Script::new(REDIS_BUMP);
        self.run(async |c| script.key(session_key(sid)).invoke_async(c).await)
            .await
    }

    async fn delete(&self, sid: &str) -> Result<(), StoreError> {
        let keys = [session_key(sid), cart_key(sid)];
        self.run(async |c| redis::cmd("DEL").arg(&keys).query_async::<()>(c).await)
            .await
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

    #[tokio::test]
    async fn memory_store_works() {
        exercise(&Store::open(&StoreSpec::Memory).unwrap()).await;
    }

    #[tokio::test]
    async fn sqlite_store_works_and_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::Sqlite(dir.path().join("s.db"));
        let a = Store::open(&spec).unwrap();
        exercise(&a).await;
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
