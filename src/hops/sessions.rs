//! The bounded map of session values seen issued: a keyed hash of each value -> who issued it, in least-recently-used shards.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hashlink::LruCache;

/// Shards of the map: a lock is held per shard, for one lookup or update.
const SHARDS: usize = 16;

/// The entry is no longer judged: its session ended (logged out, cleared,
/// replaced by a new value, or its issuer no longer knows it).
pub const ENDED: u8 = 1;

/// What is remembered of one session value (never the value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The backend that issued it (an index in `Backends`).
    pub issuer: u16,
    /// The cookie name (an index in `Names`).
    pub name: u8,
    /// [`ENDED`].
    pub flags: u8,
    /// When it was last issued or answered without a sign of a lost
    /// session: seconds since the watch started.
    pub active: u32,
}

impl Entry {
    pub fn ended(&self) -> bool {
        self.flags & ENDED != 0
    }
}

/// Keys are already keyed hashes (SipHash): the table uses them as they are.
#[derive(Default)]
pub struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = LruCache<u64, Entry, BuildHasherDefault<AsIs>>;

/// At most `capacity` entries in all; the least recently used goes first.
pub struct Sessions {
    shards: Box<[Mutex<Shard>]>,
    evicted: AtomicU64,
}

impl Sessions {
    pub fn new(capacity: usize) -> Sessions {
        let per = per_shard(capacity);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(LruCache::with_hasher(per, BuildHasherDefault::default())))
            .collect();
        Sessions {
            shards,
            evicted: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The low bits pick the table's bucket: the shard comes from the top.
        let i = (key >> 60) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry for `key`, marked as recently used.
    pub fn get(&self, key: u64) -> Option<Entry> {
        self.shard(key).get(&key).copied()
    }

    /// Records `key` as issued: a new entry (the least recently used one
    /// leaves if the shard is full), or, if known, one issued again: active
    /// now, the issuer kept. Returns whether it was new.
    pub fn issue(&self, key: u64, entry: Entry) -> bool {
        let mut shard = self.shard(key);
        if let Some(e) = shard.get_mut(&key) {
            e.active = entry.active;
            e.flags &= !ENDED;
            return false;
        }
        if shard.len() >= shard.capacity() && shard.remove_lru().is_some() {
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        shard.insert(key, entry);
        true
    }

    /// Changes the entry for `key`, if it is still there.
    pub fn update(&self, key: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.shard(key).peek_mut(&key) {
            f(e);
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries held at once.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).capacity()).sum()
    }

    /// Entries dropped to make room.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// A new bound; entries past it leave, least recently used first.
    pub fn set_capacity(&self, capacity: usize) {
        let per = per_shard(capacity);
        for s in self.shards.iter() {
            let mut s = lock(s);
            if s.capacity() == per {
                continue;
            }
            let dropped = s.len().saturating_sub(per);
            s.set_capacity(per);
            self.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
}

/// Each shard's bound: their sum never exceeds `capacity`.
fn per_shard(capacity: usize) -> usize {
    (capacity / SHARDS).max(1)
}

fn lock(s: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(active: u32) -> Entry {
        Entry {
            issuer: 1,
            name: 0,
            flags: 0,
            active,
        }
    }

    #[test]
    fn issued_again_keeps_the_issuer_and_clears_ended() {
        let s = Sessions::new(1000);
        assert!(s.issue(7 << 60 | 1, entry(1)));
        s.update(7 << 60 | 1, |e| e.flags |= ENDED);
        let mut again = entry(5);
        again.issuer = 2;
        assert!(!s.issue(7 << 60 | 1, again));
        let e = s.get(7 << 60 | 1).unwrap();
        assert_eq!((e.issuer, e.active, e.ended()), (1, 5, false));
    }

    #[test]
    fn the_least_recently_used_leaves_first() {
        let s = Sessions::new(SHARDS * 2);
        let key = |i: u64| 3 << 60 | i;
        s.issue(key(1), entry(1));
        s.issue(key(2), entry(2));
        assert!(s.get(key(1)).is_some()); // 1 is now the most recent
        s.issue(key(3), entry(3));
        assert!(s.get(key(2)).is_none());
        assert!(s.get(key(1)).is_some() && s.get(key(3)).is_some());
        assert_eq!(s.evicted(), 1);
        s.set_capacity(SHARDS);
        assert_eq!(s.len(), 1);
        assert_eq!(s.evicted(), 2);
    }
}
