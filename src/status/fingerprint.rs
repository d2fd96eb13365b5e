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
pub type RunMap<V> = std::collections::HashMap<RunKey, V, Keyed>;

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
        let mut m = RunMap::default();
        m.insert(RunKey::of("a"), 1);
        assert_eq!(m.get(&RunKey::of("a")), Some(&1));
        assert_eq!(m.get(&RunKey::of("b")), None);
    }
}
