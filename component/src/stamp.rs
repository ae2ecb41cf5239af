//! Timestamps for points that arrive without one.
//!
//! InfluxDB keys a point by series and time: two readings of one series
//! stamped with the same time overwrite each other. Lines parsed in one
//! call share one wall-clock reading, so a device's untimestamped lines
//! would collapse into one point. The stamper gives each such point the
//! acceptance time, rounded down to the write precision, but never a time
//! its series already got: it moves one precision unit past the series'
//! last stamp instead. Its clock never runs backwards (a clock set back
//! keeps the highest time seen), so a series' stamps only grow, and a
//! series whose last stamp is behind that clock needs no record at all.

use std::collections::HashMap;

/// The timestamp a parser gives a line that has none, for the stamper to
/// replace (InfluxDB reserves it: no explicit timestamp can be it).
pub const UNSTAMPED: i64 = i64::MIN;

/// Series remembered before the ones the clock has passed are forgotten.
const PRUNE_AT: usize = 1024;

/// A point as the stamper sees it: its series key and its timestamp.
pub trait Stampable {
    fn series_and_time(&mut self) -> (&str, &mut i64);
}

impl Stampable for crate::point::Point {
    fn series_and_time(&mut self) -> (&str, &mut i64) {
        (&self.line[..self.series_len as usize], &mut self.timestamp)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamper {
    /// The highest (rounded) wall-clock time seen.
    clock: i64,
    /// Series whose last stamp is at or ahead of `clock`, with that stamp.
    last: HashMap<String, i64>,
}

impl Stamper {
    /// Stamp every `UNSTAMPED` point's timestamp. `series(p)` is its
    /// series key; `unit` the write precision in ns (stamps are multiples
    /// of it, so rounding on the wire cannot merge two of them).
    pub fn stamp<P: Stampable>(&mut self, points: &mut [P], wall: i64, unit: i64) {
        let unit = unit.max(1);
        let now = wall.div_euclid(unit) * unit;
        if now > self.clock {
            self.clock = now;
            if self.last.len() >= PRUNE_AT {
                let clock = self.clock;
                self.last.retain(|_, t| *t >= clock);
            }
        }
        for p in points.iter_mut() {
            let (series, ts) = p.series_and_time();
            if *ts != UNSTAMPED {
                continue;
            }
            let t = match self.last.get_mut(series) {
                Some(last) => {
                    *last = (*last + unit).max(self.clock);
                    *last
                }
                None => {
                    self.last.insert(series.to_string(), self.clock);
                    self.clock
                }
            };
            *ts = t;
        }
    }

    /// Series stamps ahead of the clock (a fast series at a coarse
    /// precision), for the log and tests.
    pub fn ahead(&self) -> usize {
        self.last.values().filter(|t| **t > self.clock).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Stampable for (String, i64) {
        fn series_and_time(&mut self) -> (&str, &mut i64) {
            (&self.0, &mut self.1)
        }
    }

    fn run(s: &mut Stamper, pts: &mut [(String, i64)], wall: i64, unit: i64) {
        s.stamp(pts, wall, unit);
    }

    fn unstamped(series: &[&str]) -> Vec<(String, i64)> {
        series.iter().map(|s| (s.to_string(), UNSTAMPED)).collect()
    }

    #[test]
    fn one_series_in_one_call_gets_distinct_times() {
        let mut s = Stamper::default();
        let mut p = unstamped(&["a"; 5]);
        run(&mut s, &mut p, 1_000, 1);
        let t: Vec<i64> = p.iter().map(|p| p.1).collect();
        assert_eq!(t, [1_000, 1_001, 1_002, 1_003, 1_004]);
    }

    #[test]
    fn series_are_stamped_independently() {
        let mut s = Stamper::default();
        let mut p = unstamped(&["a", "b", "a", "b"]);
        run(&mut s, &mut p, 7_000, 1_000);
        let t: Vec<i64> = p.iter().map(|p| p.1).collect();
        assert_eq!(t, [7_000, 7_000, 8_000, 8_000]);
    }

    #[test]
    fn explicit_timestamps_are_kept() {
        let mut s = Stamper::default();
        let mut p = vec![("a".to_string(), 5), ("a".to_string(), UNSTAMPED)];
        run(&mut s, &mut p, 9, 1);
        assert_eq!((p[0].1, p[1].1), (5, 9));
    }

    #[test]
    fn later_calls_never_reuse_a_time_even_when_the_clock_goes_back() {
        let mut s = Stamper::default();
        let mut seen = std::collections::HashSet::new();
        for wall in [100, 100, 50, 101, 100] {
            let mut p = unstamped(&["a", "a"]);
            run(&mut s, &mut p, wall, 1);
            for (_, t) in p {
                assert!(seen.insert(t), "time {t} given twice");
            }
        }
    }

    #[test]
    fn coarse_precision_rounds_down_and_moves_a_unit() {
        let mut s = Stamper::default();
        let mut p = unstamped(&["a", "a"]);
        run(&mut s, &mut p, 1_999_999_999, 1_000_000_000);
        assert_eq!((p[0].1, p[1].1), (1_000_000_000, 2_000_000_000));
        assert_eq!(s.ahead(), 1);
    }

    #[test]
    fn forgets_series_the_clock_has_passed() {
        let mut s = Stamper::default();
        let names: Vec<String> = (0..PRUNE_AT + 10).map(|i| format!("s{i}")).collect();
        let mut p: Vec<(String, i64)> = names.iter().map(|n| (n.clone(), UNSTAMPED)).collect();
        run(&mut s, &mut p, 10, 1);
        assert_eq!(s.last.len(), PRUNE_AT + 10);
        let mut q = unstamped(&["s0"]);
        run(&mut s, &mut q, 20, 1);
        assert_eq!(q[0].1, 20);
        assert_eq!(
            s.last.len(),
            1,
            "only the series stamped at the new clock stays"
        );
    }
}
