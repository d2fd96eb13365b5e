//! Per-partition offset watermark: which offset is safe to commit when work completes
//! out of order.
//!
//! Pure data structure, no I/O. Invariant: the watermark (the next offset to consume,
//! Kafka's committed-offset meaning) never passes an offset that was tracked but not yet
//! completed. Offsets never seen (compaction gaps, transaction markers) never hold it back.

use std::collections::BTreeSet;

/// What [`PartitionTracker::track`] made of an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// A new offset, now in flight.
    New,
    /// An offset at or below one already seen (a re-fetch): it is, or was, handled.
    Duplicate,
}

/// Tracks in-flight offsets of one partition in one assignment generation.
#[derive(Debug, Default, Clone)]
pub struct PartitionTracker {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset tracked so far.
    next: Option<i64>,
    /// Last watermark returned by [`complete`](Self::complete), or the first offset
    /// tracked when nothing has completed yet.
    published: Option<i64>,
}

impl PartitionTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start tracking `offset` (offsets arrive in increasing order per partition).
    pub fn track(&mut self, offset: i64) -> Tracked {
        if self.next.is_some_and(|n| offset < n) {
            return Tracked::Duplicate;
        }
        self.in_flight.insert(offset);
        self.next = Some(offset + 1);
        // Before anything completes, the safe position is the first offset seen.
        self.published.get_or_insert(offset);
        Tracked::New
    }

    /// Mark `offset` done. Returns the new watermark when it advanced.
    pub fn complete(&mut self, offset: i64) -> Option<i64> {
        if !self.in_flight.remove(&offset) {
            return None;
        }
        let wm = self.watermark()?;
        if self.published.is_some_and(|p| wm <= p) {
            return None;
        }
        self.published = Some(wm);
        Some(wm)
    }

    /// The next offset to consume: the lowest in-flight offset, or one past the highest
    /// tracked offset when nothing is in flight. `None` before anything was tracked.
    pub fn watermark(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next)
    }

    /// The watermark last returned by `complete` (what has been stored), or the first
    /// tracked offset. Always safe to commit.
    pub fn published(&self) -> Option<i64> {
        self.published
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Lowest offset still in flight (the head that holds the watermark back).
    pub fn oldest(&self) -> Option<i64> {
        self.in_flight.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_completion_waits_for_the_head() {
        let mut t = PartitionTracker::new();
        for o in 10..15 {
            assert_eq!(t.track(o), Tracked::New);
        }
        assert_eq!(t.complete(12), None);
        assert_eq!(t.complete(11), None);
        assert_eq!(t.complete(10), Some(13));
        assert_eq!(t.complete(14), None);
        assert_eq!(t.complete(13), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_do_not_hold_the_watermark() {
        let mut t = PartitionTracker::new();
        t.track(3);
        t.track(7); // 4..6 compacted away
        assert_eq!(t.complete(3), Some(7));
        assert_eq!(t.complete(7), Some(8));
    }

    #[test]
    fn refetched_offsets_are_duplicates_and_unknown_completions_ignored() {
        let mut t = PartitionTracker::new();
        t.track(5);
        assert_eq!(t.track(5), Tracked::Duplicate);
        assert_eq!(t.track(4), Tracked::Duplicate);
        assert_eq!(t.complete(99), None);
        assert_eq!(t.complete(5), Some(6));
        assert_eq!(t.complete(5), None);
    }

    proptest! {
        /// Whatever the completion order, the published watermark only grows, never passes
        /// an incomplete offset, and ends one past the last offset.
        #[test]
        fn watermark_is_monotone_and_safe(
            start in 0i64..1_000,
            steps in prop::collection::vec(1i64..4, 1..200),
            seed in any::<u64>(),
        ) {
            let mut offsets = Vec::new();
            let mut o = start;
            for s in steps { offsets.push(o); o += s; }
            let last = *offsets.last().unwrap();

            let mut t = PartitionTracker::new();
            for &o in &offsets { prop_assert_eq!(t.track(o), Tracked::New); }

            // Deterministic shuffle from the seed.
            let mut order = offsets.clone();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }

            let mut done = BTreeSet::new();
            let mut prev = None;
            for o in order {
                done.insert(o);
                if let Some(wm) = t.complete(o) {
                    prop_assert!(prev.is_none_or(|p| wm > p), "watermark went back");
                    // Every tracked offset below the watermark is complete.
                    for &x in offsets.iter().filter(|&&x| x < wm) {
                        prop_assert!(done.contains(&x), "watermark {} passed incomplete {}", wm, x);
                    }
                    prev = Some(wm);
                }
            }
            prop_assert_eq!(prev, Some(last + 1));
            prop_assert_eq!(t.in_flight(), 0);
        }

        /// Interleaving tracking with completion keeps the same safety property.
        #[test]
        fn interleaved_track_and_complete_is_safe(ops in prop::collection::vec(any::<bool>(), 1..300)) {
            let mut t = PartitionTracker::new();
            let mut next = 0i64;
            let mut open: Vec<i64> = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                if op || open.is_empty() {
                    t.track(next); open.push(next); next += 1;
                } else {
                    let o = open.remove(i % open.len());
                    if let Some(wm) = t.complete(o) {
                        prop_assert!(open.iter().all(|&x| x >= wm));
                    }
                }
            }
        }
    }
}
