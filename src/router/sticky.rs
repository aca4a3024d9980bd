//! Sticky escalations: a conversation once sent above the light tier stays there (the vendor's
//! prompt cache stays warm, and the answer quality does not drop mid-conversation).
//!
//! Bounded in memory and time: each of 16 shards keeps two generations of at most
//! `capacity / 32` entries; when the young generation fills up, the old one is dropped and the
//! young one becomes old (a hit in the old generation is promoted). Entries also expire after
//! the TTL. Every operation is O(1) under a short per-shard lock, never held across an await.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Clone, Copy)]
struct Entry {
    tier: u8,
    expires: Instant,
}

#[derive(Default)]
struct Shard {
    young: HashMap<u64, Entry>,
    old: HashMap<u64, Entry>,
}

pub struct StickyMap {
    shards: Vec<Mutex<Shard>>,
    per_generation: usize,
    ttl: Duration,
}

impl StickyMap {
    /// At most about `capacity` conversations, each remembered for `ttl` after its last use.
    /// A capacity of 0 disables stickiness.
    pub fn new(capacity: usize, ttl: Duration) -> StickyMap {
        StickyMap {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_generation: capacity / (2 * SHARDS),
            ttl,
        }
    }

    fn shard(&self, key: u64) -> Option<std::sync::MutexGuard<'_, Shard>> {
        let s = self.shards.get((key as usize) % SHARDS)?;
        // A poisoned lock only means another thread panicked mid-update of a cache: use it.
        Some(s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The tier index a conversation was escalated to, if it is remembered and not expired.
    /// A hit refreshes the TTL.
    pub fn get(&self, key: u64, now: Instant) -> Option<u8> {
        if self.per_generation == 0 {
            return None;
        }
        let mut s = self.shard(key)?;
        let hit = match s.young.get_mut(&key) {
            Some(e) if e.expires > now => {
                e.expires = now + self.ttl;
                return Some(e.tier);
            }
            Some(_) => {
                s.young.remove(&key);
                return None;
            }
            None => s.old.remove(&key),
        };
        match hit {
            Some(e) if e.expires > now => {
                let tier = e.tier;
                Self::insert_young(&mut s, key, tier, now + self.ttl, self.per_generation);
                Some(tier)
            }
            _ => None,
        }
    }

    /// Remember that a conversation went to `tier` (a higher tier than before replaces it).
    pub fn escalate(&self, key: u64, tier: u8, now: Instant) {
        if self.per_generation == 0 {
            return;
        }
        let Some(mut s) = self.shard(key) else {
            return;
        };
        let tier = match s.young.get(&key).or_else(|| s.old.get(&key)) {
            Some(e) if e.expires > now => e.tier.max(tier),
            _ => tier,
        };
        s.old.remove(&key);
        Self::insert_young(&mut s, key, tier, now + self.ttl, self.per_generation);
    }

    fn insert_young(s: &mut Shard, key: u64, tier: u8, expires: Instant, cap: usize) {
        if s.young.len() >= cap && !s.young.contains_key(&key) {
            s.old = std::mem::take(&mut s.young);
        }
        s.young.insert(key, Entry { tier, expires });
    }

    /// Entries held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| {
                let s = m.lock().unwrap_or_else(|p| p.into_inner());
                s.young.len() + s.old.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let m = StickyMap::new(320, Duration::from_secs(60)); // 10 per generation per shard
        m.escalate(7, 1, t0);
        assert_eq!(m.get(7, t0 + Duration::from_secs(30)), Some(1));
        // The hit refreshed the TTL.
        assert_eq!(m.get(7, t0 + Duration::from_secs(80)), Some(1));
        assert_eq!(m.get(7, t0 + Duration::from_secs(200)), None);
        // Escalation only goes up.
        m.escalate(9, 2, t0);
        m.escalate(9, 1, t0);
        assert_eq!(m.get(9, t0), Some(2));
        for k in 0..100_000u64 {
            m.escalate(k, 1, t0);
        }
        assert!(m.len() <= 320, "{}", m.len());
        // Recent keys survive.
        assert_eq!(m.get(99_999, t0), Some(1));
        let off = StickyMap::new(0, Duration::from_secs(1));
        off.escalate(1, 1, t0);
        assert_eq!(off.get(1, t0), None);
    }
}
