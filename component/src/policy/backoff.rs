//! The reconnect schedule: how long to wait before attempt n.

use crate::config::{Settings, NANOS};

/// Delay before reconnect attempt `n` (1-based), in nanoseconds, before
/// jitter. Exponential: `reconnect_delay × 2^(n-1)` capped at
/// `max_reconnect_delay`; fixed: `reconnect_delay`. Past
/// `reconnect_attempts` the sink keeps trying every `max_reconnect_delay`.
pub fn delay_ns(s: &Settings, n: u32) -> u64 {
    let n = n.max(1);
    let secs = if n > s.reconnect_attempts {
        s.max_reconnect_delay
    } else if s.use_exponential_backoff {
        let factor = 2f64.powi((n - 1).min(62) as i32);
        (s.reconnect_delay * factor).min(s.max_reconnect_delay)
    } else {
        s.reconnect_delay
    };
    (secs * NANOS) as u64
}

/// A small deterministic generator for jitter, so a simulation with the
/// same seed replays exactly.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter { state: seed | 1 }
    }

    /// Scale `ns` by a factor drawn uniformly from `[1 - fraction, 1 + fraction]`.
    pub fn apply(&mut self, ns: u64, fraction: f64) -> u64 {
        if fraction <= 0.0 {
            return ns;
        }
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        (ns as f64 * (1.0 + fraction * (2.0 * unit - 1.0))) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &Settings, n: u32) -> f64 {
        delay_ns(s, n) as f64 / NANOS
    }

    #[test]
    fn gateway_exponential_schedule() {
        let s = Settings::defaults("o");
        let got: Vec<f64> = (1..=7).map(|n| secs(&s, n)).collect();
        assert_eq!(got, vec![5.0, 10.0, 20.0, 40.0, 80.0, 300.0, 300.0]);
    }

    #[test]
    fn cap_applies_within_attempts() {
        let mut s = Settings::defaults("o");
        s.reconnect_attempts = 10;
        s.max_reconnect_delay = 60.0;
        assert_eq!(secs(&s, 4), 40.0);
        assert_eq!(secs(&s, 5), 60.0);
        assert_eq!(secs(&s, 10), 60.0);
    }

    #[test]
    fn fixed_delay_when_exponential_is_off() {
        let mut s = Settings::defaults("o");
        s.use_exponential_backoff = false;
        s.reconnect_delay = 2.0;
        s.reconnect_attempts = 3;
        assert_eq!(
            (1..=4).map(|n| secs(&s, n)).collect::<Vec<_>>(),
            vec![2.0, 2.0, 2.0, 300.0]
        );
    }

    #[test]
    fn jitter_stays_in_band_and_is_deterministic() {
        let mut a = Jitter::new(7);
        let mut b = Jitter::new(7);
        for _ in 0..1000 {
            let x = a.apply(1_000_000, 0.2);
            assert_eq!(x, b.apply(1_000_000, 0.2));
            assert!((800_000..=1_200_000).contains(&x), "{x}");
        }
        assert_eq!(Jitter::new(1).apply(5, 0.0), 5);
    }
}
