//! Reconnect delays: exponential backoff with jitter, sans-IO.
//!
//! This module owns [`Backoff`], which says how long a client waits before each reconnection
//! attempt, and its [`BackoffConfig`]. Attempt `n` (1-based) has the **ceiling**
//! `min(max, initial × multiplier^(n−1))`; the delay is then drawn under it according to the
//! [`Jitter`] mode, by default AWS's "full jitter" (`random_between(0, ceiling)`), which spreads
//! the reconnections of many clients that lost the same server instead of having them stampede
//! back in lockstep.
//!
//! Like the rest of the crate it reads no clock and owns no random number generator: the caller
//! passes a uniform random number in `[0, 1)` to [`Backoff::next_delay`] and sleeps for the
//! returned duration itself, so behaviour is exact and testable.
//!
//! ```
//! use std::time::Duration;
//! use framelink_proto::backoff::{Backoff, BackoffConfig, Jitter};
//!
//! let config = BackoffConfig { max_attempts: Some(4), ..BackoffConfig::default() };
//! let mut backoff = Backoff::new(config).unwrap();
//! let ms = Duration::from_millis;
//!
//! // Ceilings: 100 ms, 200 ms, 400 ms, 800 ms ... up to 30 s.
//! assert_eq!(backoff.ceiling(3), ms(400));
//! // The caller supplies the randomness (e.g. `rand::random::<f64>()`); full jitter scales the
//! // ceiling by it.
//! assert_eq!(backoff.next_delay(0.5), Some((1, ms(50))));
//! assert_eq!(backoff.next_delay(0.25), Some((2, ms(50))));
//! assert_eq!(backoff.next_delay(0.0), Some((3, Duration::ZERO)));
//! assert_eq!(backoff.next_delay(0.5), Some((4, ms(400))));
//! assert_eq!(backoff.next_delay(0.5), None); // max_attempts used up: give up
//!
//! // Connected again: the next failure starts from the beginning.
//! backoff.reset();
//! assert_eq!(backoff.attempt(), 0);
//! assert_eq!(backoff.next_delay(0.5), Some((1, ms(50))));
//! ```

use std::time::Duration;

use thiserror::Error;

/// How the delay is drawn under the attempt's ceiling, given the caller's random `r` in `[0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// `ceiling × r`: anywhere in `[0, ceiling)` ("full jitter", the AWS recommendation: the least
    /// contention between clients).
    #[default]
    Full,
    /// `ceiling / 2 + ceiling / 2 × r`: in `[ceiling / 2, ceiling)` ("equal jitter": never
    /// retries almost at once).
    Equal,
    /// The ceiling itself: plain exponential backoff, no randomness.
    None,
}

/// Parameters of a [`Backoff`]. Check them with [`validate`](Self::validate) (done by
/// [`Backoff::new`]).
///
/// ```
/// use std::time::Duration;
/// use framelink_proto::backoff::{BackoffConfig, Jitter};
/// let cfg = BackoffConfig::default();
/// assert_eq!((cfg.initial, cfg.max), (Duration::from_millis(100), Duration::from_secs(30)));
/// assert_eq!((cfg.multiplier, cfg.max_attempts, cfg.jitter), (2.0, None, Jitter::Full));
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Ceiling of the first attempt. Non-zero.
    pub initial: Duration,
    /// Largest ceiling: the exponential growth stops here. At least `initial`.
    pub max: Duration,
    /// Factor between consecutive ceilings. Finite, at least 1 (1 gives a constant ceiling).
    pub multiplier: f64,
    /// Give up after this many attempts; `None` retries forever.
    pub max_attempts: Option<u32>,
    /// How the delay is drawn under the ceiling.
    pub jitter: Jitter,
}

impl Default for BackoffConfig {
    /// 100 ms initial ceiling doubling up to 30 s, full jitter, retrying forever.
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: None,
            jitter: Jitter::Full,
        }
    }
}

impl BackoffConfig {
    /// Checks the configuration: `initial` non-zero and at most `max`, `multiplier` finite and
    /// at least 1.
    pub fn validate(&self) -> Result<(), BackoffConfigError> {
        if self.initial.is_zero() {
            return Err(BackoffConfigError::ZeroInitial);
        }
        if self.initial > self.max {
            return Err(BackoffConfigError::InitialAboveMax {
                initial: self.initial,
                max: self.max,
            });
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(BackoffConfigError::InvalidMultiplier {
                multiplier: self.multiplier,
            });
        }
        Ok(())
    }
}

/// An invalid [`BackoffConfig`].
///
/// ```
/// use std::time::Duration;
/// use framelink_proto::backoff::{BackoffConfig, BackoffConfigError};
/// let cfg = BackoffConfig { multiplier: 0.5, ..BackoffConfig::default() };
/// assert_eq!(cfg.validate(), Err(BackoffConfigError::InvalidMultiplier { multiplier: 0.5 }));
/// assert_eq!(cfg.validate().unwrap_err().to_string(),
///     "multiplier = 0.5 is out of range (finite, at least 1)");
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum BackoffConfigError {
    /// `initial` is zero.
    #[error("initial backoff must be greater than zero")]
    ZeroInitial,
    /// `initial` is larger than `max`.
    #[error("initial backoff {initial:?} exceeds the maximum {max:?}")]
    InitialAboveMax {
        /// The value given.
        initial: Duration,
        /// The maximum given.
        max: Duration,
    },
    /// `multiplier` is NaN, infinite or below 1.
    #[error("multiplier = {multiplier} is out of range (finite, at least 1)")]
    InvalidMultiplier {
        /// The value given.
        multiplier: f64,
    },
}

/// Exponential backoff state for one reconnecting client. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    /// Attempts handed out since creation or the last [`reset`](Self::reset).
    attempt: u32,
}

impl Backoff {
    /// A backoff with no attempt made yet.
    pub fn new(config: BackoffConfig) -> Result<Self, BackoffConfigError> {
        config.validate()?;
        Ok(Backoff { config, attempt: 0 })
    }

    /// The configuration.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Attempts handed out by [`next_delay`](Self::next_delay) since creation or the last
    /// [`reset`](Self::reset).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// True when [`max_attempts`](BackoffConfig::max_attempts) are used up.
    pub fn is_exhausted(&self) -> bool {
        self.config.max_attempts.is_some_and(|m| self.attempt >= m)
    }

    /// Starts over (call it after a successful connection): the next attempt is attempt 1.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next attempt's number (1-based) and how long to wait before making it, or `None` once
    /// [`max_attempts`](BackoffConfig::max_attempts) are used up.
    ///
    /// `random` should be uniform in `[0, 1)`; values outside `[0, 1]` (and NaN) are clamped
    /// (NaN counts as 0), so the delay is always within the [`Jitter`] mode's range under
    /// [`ceiling`](Self::ceiling).
    pub fn next_delay(&mut self, random: f64) -> Option<(u32, Duration)> {
        if self.is_exhausted() {
            return None;
        }
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.ceiling(self.attempt);
        let r = if random.is_nan() {
            0.0
        } else {
            random.clamp(0.0, 1.0)
        };
        let delay = match self.config.jitter {
            Jitter::Full => scale(ceiling, r),
            Jitter::Equal => {
                let half = ceiling / 2;
                // `ceiling - half` rather than `half` again, so an odd nanosecond count still
                // reaches the ceiling at r = 1.
                half.saturating_add(scale(ceiling.saturating_sub(half), r))
            }
            Jitter::None => ceiling,
        };
        Some((self.attempt, delay))
    }

    /// The un-jittered ceiling of attempt `attempt` (1-based; 0 counts as 1):
    /// `min(max, initial × multiplier^(attempt − 1))`. Saturates at `max` for any attempt count,
    /// without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let (initial, max) = (self.config.initial, self.config.max);
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        if exponent == 0 {
            return initial;
        }
        // In nanoseconds, where `initial × 2^k` stays exact for realistic values.
        let nanos = initial.as_nanos() as f64 * self.config.multiplier.powi(exponent);
        // Also catches an infinite product (NaN cannot occur: both factors are finite, >= 1).
        if nanos.is_nan() || nanos >= max.as_nanos() as f64 {
            return max;
        }
        // Beyond 2^53 ns (104 days) the product is rounded: keep it within [initial, max].
        from_nanos(nanos as u128).clamp(initial, max)
    }
}

/// `d × r` for `r` in `[0, 1]`, never above `d`.
fn scale(d: Duration, r: f64) -> Duration {
    from_nanos((d.as_nanos() as f64 * r) as u128).min(d)
}

/// A nanosecond count as a duration, saturating at [`Duration::MAX`].
fn from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits a u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::util::ms;
    use proptest::prelude::*;

    fn backoff(f: impl FnOnce(&mut BackoffConfig)) -> Backoff {
        let mut cfg = BackoffConfig::default();
        f(&mut cfg);
        Backoff::new(cfg).unwrap()
    }

    #[test]
    fn ceilings_double_then_saturate_at_max() {
        let b = backoff(|_| {});
        let expected = [
            100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000,
        ];
        for (i, &want) in expected.iter().enumerate() {
            assert_eq!(b.ceiling(i as u32 + 1), ms(want), "attempt {}", i + 1);
        }
        assert_eq!(b.ceiling(0), ms(100));
        assert_eq!(b.ceiling(1_000), ms(30_000));
        assert_eq!(b.ceiling(u32::MAX), ms(30_000));
        // A non-integer multiplier.
        let b = backoff(|c| c.multiplier = 1.5);
        assert_eq!(b.ceiling(2), ms(150));
        assert_eq!(b.ceiling(3), ms(225));
        // Multiplier 1: constant.
        let b = backoff(|c| c.multiplier = 1.0);
        assert_eq!(b.ceiling(u32::MAX), ms(100));
    }

    #[test]
    fn jitter_none_returns_the_ceilings() {
        let mut b = backoff(|c| c.jitter = Jitter::None);
        for n in 1..=12u32 {
            assert_eq!(b.next_delay(0.7), Some((n, b.ceiling(n))));
        }
    }

    #[test]
    fn full_jitter_scales_the_ceiling() {
        let mut b = backoff(|_| {});
        assert_eq!(b.next_delay(0.0), Some((1, Duration::ZERO)));
        assert_eq!(b.next_delay(0.5), Some((2, ms(100))));
        assert_eq!(
            b.next_delay(0.999),
            Some((3, Duration::from_micros(399_600)))
        );
        // Out-of-range inputs are clamped.
        assert_eq!(b.next_delay(7.0), Some((4, ms(800))));
        assert_eq!(b.next_delay(-1.0), Some((5, Duration::ZERO)));
        assert_eq!(b.next_delay(f64::NAN), Some((6, Duration::ZERO)));
        assert_eq!(b.next_delay(f64::INFINITY), Some((7, ms(6_400))));
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let mut b = backoff(|c| c.jitter = Jitter::Equal);
        assert_eq!(b.next_delay(0.0), Some((1, ms(50))));
        assert_eq!(b.next_delay(0.5), Some((2, ms(150))));
        assert_eq!(b.next_delay(1.0), Some((3, ms(400))));
        // An odd number of nanoseconds still spans the whole upper half.
        let mut b = backoff(|c| {
            c.initial = Duration::from_nanos(3);
            c.multiplier = 1.0;
            c.jitter = Jitter::Equal;
        });
        assert_eq!(b.next_delay(0.0), Some((1, Duration::from_nanos(1))));
        assert_eq!(b.next_delay(1.0), Some((2, Duration::from_nanos(3))));
    }

    #[test]
    fn max_attempts_then_none_and_reset_starts_over() {
        let mut b = backoff(|c| {
            c.max_attempts = Some(3);
            c.jitter = Jitter::None;
        });
        assert_eq!(b.next_delay(0.5), Some((1, ms(100))));
        assert_eq!(b.next_delay(0.5), Some((2, ms(200))));
        assert!(!b.is_exhausted());
        assert_eq!(b.next_delay(0.5), Some((3, ms(400))));
        assert!(b.is_exhausted());
        assert_eq!(b.next_delay(0.5), None);
        assert_eq!(b.next_delay(0.5), None);
        assert_eq!(b.attempt(), 3);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(0.5), Some((1, ms(100))));
        // Zero attempts: never retry.
        let mut b = backoff(|c| c.max_attempts = Some(0));
        assert!(b.is_exhausted());
        assert_eq!(b.next_delay(0.5), None);
    }

    #[test]
    fn forever_saturates_the_attempt_counter() {
        let mut b = backoff(|c| c.jitter = Jitter::None);
        b.attempt = u32::MAX - 1;
        assert_eq!(b.next_delay(0.5), Some((u32::MAX, ms(30_000))));
        assert_eq!(b.next_delay(0.5), Some((u32::MAX, ms(30_000))));
    }

    #[test]
    fn extreme_durations_do_not_overflow() {
        let b = backoff(|c| {
            c.initial = Duration::from_secs(1);
            c.max = Duration::MAX;
            c.multiplier = 10.0;
        });
        assert_eq!(b.ceiling(3), Duration::from_secs(100));
        assert_eq!(b.ceiling(u32::MAX), Duration::MAX);
        let mut b = backoff(|c| {
            c.initial = Duration::MAX;
            c.max = Duration::MAX;
        });
        assert_eq!(b.ceiling(1), Duration::MAX);
        let (_, d) = b.next_delay(0.999_999).unwrap();
        assert!(d <= Duration::MAX);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = |f: fn(&mut BackoffConfig)| {
            let mut cfg = BackoffConfig::default();
            f(&mut cfg);
            Backoff::new(cfg).unwrap_err()
        };
        assert_eq!(
            bad(|c| c.initial = Duration::ZERO),
            BackoffConfigError::ZeroInitial
        );
        assert_eq!(
            bad(|c| c.max = ms(50)),
            BackoffConfigError::InitialAboveMax {
                initial: ms(100),
                max: ms(50)
            }
        );
        assert_eq!(
            bad(|c| c.multiplier = 0.99),
            BackoffConfigError::InvalidMultiplier { multiplier: 0.99 }
        );
        assert!(matches!(
            bad(|c| c.multiplier = f64::NAN),
            BackoffConfigError::InvalidMultiplier { .. }
        ));
        assert_eq!(
            bad(|c| c.multiplier = f64::INFINITY),
            BackoffConfigError::InvalidMultiplier {
                multiplier: f64::INFINITY
            }
        );
        assert_eq!(
            bad(|c| c.max = ms(50)).to_string(),
            "initial backoff 100ms exceeds the maximum 50ms"
        );
        // initial == max is fine: a constant delay.
        assert!(BackoffConfig {
            max: ms(100),
            ..BackoffConfig::default()
        }
        .validate()
        .is_ok());
    }

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::None)]
    }

    proptest! {
        /// Any valid configuration, any attempt count, any random input: no panic, ceilings are
        /// monotonic and within `[initial, max]`, delays within the jitter mode's range.
        #[test]
        fn delays_stay_in_range_for_any_attempt(
            initial_ns in 1u64..u64::MAX,
            extra_ns in 0u64..u64::MAX,
            max_extra_secs in prop_oneof![Just(None), (0u64..u64::MAX).prop_map(Some)],
            multiplier in prop_oneof![1.0f64..1e6, Just(1.0), Just(2.0), Just(f64::MAX)],
            attempt in prop_oneof![0u32..100, Just(u32::MAX - 1), (0u32..u32::MAX)],
            random in prop_oneof![0.0f64..1.0, Just(0.0), Just(1.0), -10.0f64..10.0],
            jitter in jitter(),
        ) {
            let initial = Duration::from_nanos(initial_ns);
            let max = match max_extra_secs {
                None => Duration::MAX,
                Some(s) => initial.saturating_add(Duration::from_secs(s)),
            }
            .max(initial.saturating_add(Duration::from_nanos(extra_ns)));
            let config = BackoffConfig { initial, max, multiplier, max_attempts: None, jitter };
            let mut b = Backoff::new(config).unwrap();
            let c = b.ceiling(attempt);
            prop_assert!(c >= initial && c <= max);
            prop_assert!(b.ceiling(attempt.saturating_add(1)) >= c);
            b.attempt = attempt.saturating_sub(1);
            let (n, delay) = b.next_delay(random).unwrap();
            prop_assert_eq!(n, attempt.max(1));
            let c = b.ceiling(n);
            prop_assert!(delay <= c);
            match jitter {
                Jitter::Full => {}
                Jitter::Equal => prop_assert!(delay >= c / 2),
                Jitter::None => prop_assert_eq!(delay, c),
            }
        }
    }
}
