//! Waits between retries: a ceiling that doubles from `initial` up to `max`, with or
//! without jitter. Every retry loop in switchyard takes its waits from here.

use std::time::Duration;

use rand::Rng;

/// How a wait is drawn below its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The ceiling itself.
    None,
    /// Uniform in `[0, ceiling)` ("full jitter": spreads a herd of retries best).
    Full,
    /// Uniform in `[ceiling / 2, ceiling)`: spread, but never much shorter.
    Half,
}

/// A retry loop's waits, in order.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: Jitter,
    /// Retries so far.
    retries: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, jitter: Jitter) -> Self {
        Backoff {
            initial,
            max,
            jitter,
            retries: 0,
        }
    }

    /// The wait before the next retry.
    pub fn next_wait(&mut self) -> Duration {
        self.retries = self.retries.saturating_add(1);
        nth(self.initial, self.max, self.retries, self.jitter)
    }
}

/// The wait before retry `n` (1-based): `initial × 2^(n-1)`, capped at `max`, jittered.
pub fn nth(initial: Duration, max: Duration, n: u32, jitter: Jitter) -> Duration {
    let ceiling = initial
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
        .min(max);
    match jitter {
        Jitter::None => ceiling,
        Jitter::Full => ceiling.mul_f64(rand::rng().random::<f64>()),
        Jitter::Half => ceiling.mul_f64(rand::rng().random_range(0.5..1.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_to_the_cap_and_jitter_stays_below_them() {
        let ms = Duration::from_millis;
        let mut plain = Backoff::new(ms(100), ms(1000), Jitter::None);
        let waits: Vec<_> = (0..6).map(|_| plain.next_wait()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000].map(ms));
        for n in 1..10 {
            let ceiling = nth(ms(100), ms(1000), n, Jitter::None);
            for _ in 0..50 {
                assert!(nth(ms(100), ms(1000), n, Jitter::Full) < ceiling.max(ms(1)));
                let half = nth(ms(100), ms(1000), n, Jitter::Half);
                assert!(
                    half >= ceiling / 2 && half < ceiling,
                    "{half:?} of {ceiling:?}"
                );
            }
        }
        assert_eq!(
            nth(ms(100), ms(1000), u32::MAX, Jitter::None),
            ms(1000),
            "no overflow"
        );
    }
}
