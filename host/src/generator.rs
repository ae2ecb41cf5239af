//! A synthetic source for the demo and benchmarks: points like a solar
//! gateway's, at a set rate.

use influx_sink_component::ini::Section;
use influx_sink_component::sim::INVERTER_FIELDS;

#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorSpec {
    /// Points per second; 0 = as fast as the sinks take them.
    pub rate: f64,
    /// Points in all; 0 = until stopped.
    pub count: u64,
    /// Fields per point (the first is the integer `seq`).
    pub fields: u32,
    pub series: u32,
    pub measurement: String,
}

impl Default for GeneratorSpec {
    fn default() -> Self {
        GeneratorSpec {
            rate: 1000.0,
            count: 0,
            fields: 20,
            series: 10,
            measurement: "device_data".into(),
        }
    }
}

impl GeneratorSpec {
    pub fn from_section(section: &Section) -> Result<Self, String> {
        let mut g = GeneratorSpec::default();
        for e in &section.entries {
            let bad = |expected: &str| {
                format!(
                    "line {}: [{}] {} = `{}`: expected {expected}",
                    e.line, section.name, e.key, e.value
                )
            };
            match e.key.as_str() {
                "transport" => {}
                "rate" => {
                    g.rate = e
                        .value
                        .parse()
                        .ok()
                        .filter(|r: &f64| r.is_finite() && *r >= 0.0)
                        .ok_or_else(|| bad("points per second, 0 or more"))?
                }
                "count" => {
                    g.count = e
                        .value
                        .parse()
                        .map_err(|_| bad("a whole number of points (0 = unlimited)"))?
                }
                "fields" => {
                    g.fields = e
                        .value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| bad("1 to 1000"))?
                }
                "series" => {
                    g.series = e
                        .value
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad("at least 1"))?
                }
                "measurement" if !e.value.is_empty() => g.measurement = e.value.clone(),
                _ => {
                    return Err(bad(
                        "a generator key: rate, count, fields, series, measurement",
                    ))
                }
            }
        }
        Ok(g)
    }
}

/// Renders generated points as line protocol. Point `i` has tags
/// `device=inverter-<i % series>`, `model`, `site`, integer field `seq=<i>i`,
/// float fields with an inverter's names, and the unique timestamp
/// `start_ns + i`, so re-sends overwrite rather than add.
pub struct Generator {
    spec: GeneratorSpec,
    start_ns: i64,
    next: u64,
}

impl Generator {
    pub fn new(spec: GeneratorSpec, start_ns: i64) -> Self {
        Generator {
            spec,
            start_ns,
            next: 0,
        }
    }

    pub fn produced(&self) -> u64 {
        self.next
    }

    pub fn finished(&self) -> bool {
        self.spec.count > 0 && self.next >= self.spec.count
    }

    /// Append up to `n` more points to `out`; returns how many.
    pub fn fill(&mut self, n: u64, out: &mut Vec<u8>) -> u64 {
        use std::io::Write;
        let n = if self.spec.count > 0 {
            n.min(self.spec.count - self.next)
        } else {
            n
        };
        for _ in 0..n {
            let i = self.next;
            let device = i % self.spec.series as u64;
            let _ = write!(
                out,
                "{},device=inverter-{device:03},model=sun2000-10ktl-m1,site=plant-{:02} seq={i}i",
                self.spec.measurement,
                device % 7
            );
            for k in 1..self.spec.fields as u64 {
                let v = (i.wrapping_mul(2654435761).wrapping_add(k * 7919)) % 100_000;
                match INVERTER_FIELDS.get(k as usize - 1) {
                    Some(name) => write!(out, ",{name}={}.{:02}", v / 100, v % 100),
                    None => write!(out, ",f{k}={}.{:02}", v / 100, v % 100),
                }
                .ok();
            }
            let _ = writeln!(out, " {}", self.start_ns + i as i64);
            self.next += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_valid_and_distinct() {
        let spec = GeneratorSpec {
            count: 5,
            fields: 3,
            series: 2,
            ..Default::default()
        };
        let mut g = Generator::new(spec, 1_000);
        let mut out = Vec::new();
        assert_eq!(g.fill(10, &mut out), 5);
        assert!(g.finished());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(
            lines[1].starts_with(
                "device_data,device=inverter-001,model=sun2000-10ktl-m1,site=plant-01 seq=1i,pv1_voltage_v="
            ),
            "{}",
            lines[1]
        );
        assert!(lines[4].ends_with(" 1004"));
        let mut full = Vec::new();
        Generator::new(GeneratorSpec::default(), 1_700_000_000_000_000_000).fill(1, &mut full);
        assert!(
            (540..620).contains(&full.len()),
            "a 20-field point is {} bytes",
            full.len()
        );
        let (points, errors) =
            influx_sink_component::line_protocol::parse_lines(text.as_bytes(), 0);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(points.len(), 5);
    }
}
