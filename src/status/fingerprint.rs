//! Fixed-size keys for the process's bounded maps of runs (the duplicate ledger, the
//! sequencer): a 128-bit fingerprint of the run id, so that their memory is a number of
//! bytes per run however long the ids are.
//!
//! The two 64-bit halves are SipHash-1-3 under two random keys drawn at start, so run ids
//! written by platforms and users cannot be chosen to collide. Two ids share a key with
//! probability about n² / 2¹²⁹: for the ledger's 200,000 runs, 6 × 10⁻²⁹.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::LazyLock;

/// A run id's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunKey([u64; 2]);

static KEYS: LazyLock<(RandomState, RandomState)> =
    LazyLock::new(|| (RandomState::new(), RandomState::new()));

impl RunKey {
    pub fn of(run_id: &str) -> Self {
        let (a, b) = &*KEYS;
        RunKey([a.hash_one(run_id), b.hash_one(run_id)])
    }
}

impl Hash for RunKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: the map uses its first half as is (see `Keyed`).
        state.write_u64(self.0[0]);
    }
}

/// The hasher of maps keyed by [`RunKey`]: the key's first half, unhashed again.
#[derive(Default, Clone, Copy)]
pub struct Keyed;

/// See [`Keyed`].
#[derive(Default)]
pub struct KeyedHasher(u64);

impl BuildHasher for Keyed {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher(0)
    }
}

impl Hasher for KeyedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `RunKey`; folded in, should another key type appear.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A map keyed by run fingerprints.
type RunMap<V> = std::collections::HashMap<RunKey, V, Keyed>;

/// The last `capacity` runs seen, by fingerprint, each with a value: the oldest is
/// forgotten first. The whole bound is allocated up front, so memory does not grow with
/// traffic and the map never stops to rehash under load (its pages are touched as runs
/// arrive). The duplicate ledger and the sequencer are both one of these.
pub struct RunWindow<V> {
    map: RunMap<V>,
    /// Runs in the order they were first inserted, for eviction.
    order: std::collections::VecDeque<RunKey>,
    capacity: usize,
}

impl<V> RunWindow<V> {
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RunWindow {
            map: RunMap::with_capacity_and_hasher(capacity, Keyed),
            order: std::collections::VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn get(&self, run: &RunKey) -> Option<&V> {
        self.map.get(run)
    }

    pub fn get_mut(&mut self, run: &RunKey) -> Option<&mut V> {
        self.map.get_mut(run)
    }

    /// Add `run`, which is not in the window, forgetting the oldest run when full.
    pub fn insert_new(&mut self, run: RunKey, value: V) {
        if self.map.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.map.insert(run, value);
        self.order.push_back(run);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of the slots allocated, used or not.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.map.capacity() * (std::mem::size_of::<(RunKey, V)>() + 1)
            + self.order.capacity() * std::mem::size_of::<RunKey>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_same_key_and_different_ids_differ() {
        assert_eq!(RunKey::of("r_1"), RunKey::of("r_1"));
        let keys: std::collections::HashSet<_> = (0..10_000)
            .map(|n| RunKey::of(&format!("r_{n}")).0)
            .collect();
        assert_eq!(keys.len(), 10_000);
        let mut w = RunWindow::with_capacity(2);
        w.insert_new(RunKey::of("a"), 1);
        assert_eq!(w.get(&RunKey::of("a")), Some(&1));
        assert_eq!(w.get(&RunKey::of("b")), None);
    }

    #[test]
    fn the_window_forgets_its_oldest_run_when_full() {
        let mut w = RunWindow::with_capacity(2);
        for (n, run) in ["a", "b", "c"].into_iter().enumerate() {
            w.insert_new(RunKey::of(run), n);
        }
        assert_eq!(w.len(), 2);
        assert_eq!(w.get(&RunKey::of("a")), None);
        assert_eq!(w.get(&RunKey::of("c")), Some(&2));
    }
}
