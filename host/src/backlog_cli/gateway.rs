//! The Python gateway's backlog points (dicts from its pickle file) turned
//! into our points.
//!
//! A gateway point is `{"measurement": str, "tags": {str: str}, "fields":
//! {str: int | float | str | bool}, "time": str | int | float,
//! "_backlog_time": float}`. `time` is an ISO 8601 / RFC 3339 string, an
//! integer of nanoseconds or a float of seconds; without it the point takes
//! `_backlog_time`, the wall-clock seconds when it entered the gateway's
//! backlog, which also becomes its `stored_at`.

use influx_sink_component::line_protocol::{point_from_parts, FieldValue};
use influx_sink_component::point::Point;

use super::pickle::{type_name, Pickle, Value};

/// A converted point larger than this is refused (a pickle can refer to one
/// big string many times; this keeps the output bounded per point).
pub const MAX_POINT_BYTES: usize = 1 << 20;

/// Convert one gateway point. Returns the point and its `stored_at` (ns);
/// `now_ns` is used when `_backlog_time` is missing.
pub fn convert(p: &Pickle, v: &Value, now_ns: i64) -> Result<(Point, i64), String> {
    if p.pairs(v).is_none() {
        return Err(format!("not a dict but a {}", type_name(v)));
    }
    let measurement = match p.get(v, "measurement") {
        Some(Value::Str(s)) => s.to_string(),
        None | Some(Value::None) => return Err("no `measurement`".into()),
        Some(other) => {
            return Err(format!(
                "`measurement` is a {}, not a string",
                type_name(other)
            ))
        }
    };
    let mut size = measurement.len();

    let mut tags: Vec<(String, String)> = Vec::new();
    match p.get(v, "tags") {
        None | Some(Value::None) => {}
        Some(t) => {
            let pairs = p
                .pairs(t)
                .ok_or_else(|| format!("`tags` is a {}, not a dict", type_name(t)))?;
            for (k, val) in dedup(pairs) {
                let key = key_text(k, "tag")?;
                let text = match val {
                    // The gateway's client left out tags without a value.
                    Value::None => continue,
                    Value::Str(s) if s.is_empty() => continue,
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                    Value::Float(f) => python_float(*f),
                    other => {
                        return Err(format!(
                            "tag `{key}` is a {}, not a string",
                            type_name(other)
                        ))
                    }
                };
                size += key.len() + text.len() + 2;
                tags.push((key, text));
            }
        }
    }

    let mut fields: Vec<(String, FieldValue)> = Vec::new();
    match p.get(v, "fields") {
        None | Some(Value::None) => {}
        Some(f) => {
            let pairs = p
                .pairs(f)
                .ok_or_else(|| format!("`fields` is a {}, not a dict", type_name(f)))?;
            for (k, val) in dedup(pairs) {
                let key = key_text(k, "field")?;
                let value = match val {
                    // The gateway's client left out fields without a value.
                    Value::None => continue,
                    Value::Bool(b) => FieldValue::Boolean(*b),
                    Value::Int(i) => FieldValue::Integer(*i),
                    Value::Float(x) => FieldValue::Float(*x),
                    Value::Str(s) => {
                        size += s.len();
                        FieldValue::Text(s.to_string())
                    }
                    Value::BigInt => {
                        return Err(format!(
                            "field `{key}` is an integer outside the 64-bit range"
                        ))
                    }
                    other => {
                        return Err(format!(
                            "field `{key}` is a {}, not a number, string or boolean",
                            type_name(other)
                        ))
                    }
                };
                size += key.len() + 24;
                fields.push((key, value));
            }
        }
    }
    if fields.is_empty() {
        return Err("no fields".into());
    }
    if size > MAX_POINT_BYTES {
        return Err(format!(
            "the point would take about {size} bytes (more than {MAX_POINT_BYTES})"
        ));
    }

    let backlog_time = match p.get(v, "_backlog_time") {
        None | Some(Value::None) => None,
        Some(t) => Some(seconds(t).map_err(|e| format!("`_backlog_time` {e}"))?),
    };
    let timestamp = match p.get(v, "time") {
        None | Some(Value::None) => backlog_time.ok_or("no `time` and no `_backlog_time`")?,
        Some(Value::Str(s)) => parse_time(s).map_err(|e| format!("`time` {e}"))?,
        Some(Value::Int(ns)) => *ns,
        Some(Value::Float(_)) => {
            seconds(p.get(v, "time").expect("present")).map_err(|e| format!("`time` {e}"))?
        }
        Some(Value::BigInt) => return Err("`time` is an integer outside the 64-bit range".into()),
        Some(other) => {
            return Err(format!(
                "`time` is a {}, not a string or a number",
                type_name(other)
            ))
        }
    };
    let point = point_from_parts(&measurement, &tags, &fields, Some(timestamp), timestamp)
        .map_err(|e| e.reason)?;
    Ok((point, backlog_time.unwrap_or(now_ns)))
}

/// Pairs of a dict with later duplicates of a key replacing the value in
/// the first one's place, as a Python dict keeps them.
fn dedup(pairs: &[(Value, Value)]) -> Vec<(&Value, &Value)> {
    let mut out: Vec<(&Value, &Value)> = Vec::with_capacity(pairs.len());
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (k, v) in pairs {
        if let Value::Str(s) = k {
            if let Some(&i) = seen.get(&**s) {
                out[i].1 = v;
                continue;
            }
            seen.insert(s, out.len());
        }
        out.push((k, v));
    }
    out
}

fn key_text(k: &Value, what: &str) -> Result<String, String> {
    match k {
        Value::Str(s) => Ok(s.to_string()),
        other => Err(format!(
            "a {what} key is a {}, not a string",
            type_name(other)
        )),
    }
}

/// Python's `str()` of a float, for a tag value.
fn python_float(f: f64) -> String {
    if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Seconds since the epoch (int or float) as nanoseconds, rounded to the
/// microsecond (a float holds no more at today's times), ties to even as
/// Python's `round` does, so a migrated point keeps the gateway's time.
fn seconds(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(s) => s
            .checked_mul(1_000_000_000)
            .ok_or_else(|| format!("{s} s is out of range")),
        Value::Float(s) => {
            let us = (s * 1e6).round_ties_even();
            if !us.is_finite() || us.abs() >= (i64::MAX / 1000) as f64 {
                return Err(format!("{s} s is out of range"));
            }
            Ok(us as i64 * 1000)
        }
        other => Err(format!("is a {}, not seconds", type_name(other))),
    }
}

/// An ISO 8601 / RFC 3339 date and time as nanoseconds since the epoch:
/// `2024-01-15T10:30:00Z`, `2024-01-15 10:30:00.123456+02:00`,
/// `2024-01-15T10:30`, `2024-01-15`. Without a zone it is UTC, as the
/// gateway's InfluxDB client read it.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("`{text}` is not an ISO 8601 time: {why}");
    let s = text.trim().as_bytes();
    let mut i = 0;
    let num = |i: &mut usize, n: usize, what: &str| -> Result<i64, String> {
        let d = s.get(*i..*i + n).ok_or_else(|| bad(what))?;
        if !d.iter().all(u8::is_ascii_digit) {
            return Err(bad(what));
        }
        *i += n;
        Ok(d.iter().fold(0, |a, &b| a * 10 + i64::from(b - b'0')))
    };
    let expect = |i: &mut usize, c: u8, what: &str| -> Result<(), String> {
        if s.get(*i) == Some(&c) {
            *i += 1;
            Ok(())
        } else {
            Err(bad(what))
        }
    };
    let year = num(&mut i, 4, "expected a four-digit year")?;
    expect(&mut i, b'-', "expected `-` after the year")?;
    let month = num(&mut i, 2, "expected a two-digit month")?;
    expect(&mut i, b'-', "expected `-` after the month")?;
    let day = num(&mut i, 2, "expected a two-digit day")?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    let (mut hour, mut minute, mut second, mut nanos, mut offset) = (0, 0, 0, 0i64, 0i64);
    if i < s.len() {
        if !matches!(s[i], b'T' | b't' | b' ') {
            return Err(bad("expected `T` between the date and the time"));
        }
        i += 1;
        hour = num(&mut i, 2, "expected a two-digit hour")?;
        expect(&mut i, b':', "expected `:` after the hour")?;
        minute = num(&mut i, 2, "expected two-digit minutes")?;
        if s.get(i) == Some(&b':') {
            i += 1;
            second = num(&mut i, 2, "expected two-digit seconds")?;
            if matches!(s.get(i), Some(b'.' | b',')) {
                i += 1;
                let start = i;
                while s.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                if i == start {
                    return Err(bad("expected digits after the decimal point"));
                }
                for k in 0..9 {
                    let d = s.get(start + k).filter(|_| start + k < i);
                    nanos = nanos * 10 + d.map_or(0, |&b| i64::from(b - b'0'));
                }
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(bad("no such time of day"));
        }
        match s.get(i) {
            None => {}
            Some(b'Z' | b'z') => i += 1,
            Some(&sign @ (b'+' | b'-')) => {
                i += 1;
                let oh = num(&mut i, 2, "expected a two-digit zone hour")?;
                let om = match s.get(i) {
                    Some(b':') => {
                        i += 1;
                        num(&mut i, 2, "expected two-digit zone minutes")?
                    }
                    Some(_) => num(&mut i, 2, "expected two-digit zone minutes")?,
                    None => 0,
                };
                if oh > 23 || om > 59 {
                    return Err(bad("no such zone offset"));
                }
                offset = (oh * 3600 + om * 60) * if sign == b'-' { -1 } else { 1 };
            }
            Some(_) => return Err(bad("unexpected text after the time")),
        }
        if i != s.len() {
            return Err(bad("unexpected text after the time"));
        }
    }
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    secs.checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(nanos))
        .ok_or_else(|| bad("out of range"))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's civil-to-days conversion (days since 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backlog_cli::pickle::parse;

    const T0: i64 = 1_705_314_600_000_000_000; // 2024-01-15T10:30:00Z

    #[test]
    fn iso_times() {
        for (text, ns) in [
            ("2024-01-15T10:30:00Z", T0),
            ("2024-01-15t10:30:00z", T0),
            ("2024-01-15T10:30:00", T0),
            ("2024-01-15 10:30:00", T0),
            ("2024-01-15T10:30Z", T0),
            ("2024-01-15T10:30:00.5Z", T0 + 500_000_000),
            ("2024-01-15T10:30:00,123456Z", T0 + 123_456_000),
            ("2024-01-15T10:30:00.123456789123Z", T0 + 123_456_789),
            ("2024-01-15T12:30:00+02:00", T0),
            ("2024-01-15T12:30:00+0200", T0),
            ("2024-01-15T12:30:00+02", T0),
            ("2024-01-15T05:00:00.000-05:30", T0),
            ("2024-01-15", T0 - 37_800_000_000_000),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59Z", -1_000_000_000),
            ("2000-02-29T00:00:00Z", 951_782_400_000_000_000),
        ] {
            assert_eq!(parse_time(text), Ok(ns), "{text}");
        }
        for text in [
            "",
            "2024",
            "2024-13-01",
            "2023-02-29",
            "2024-01-15T25:00:00Z",
            "2024-01-15T10:30:00Q",
            "2024-01-15T10:30:00.Z",
            "2024-01-15X10:30",
            "yesterday",
            "9999999-01-01",
        ] {
            assert!(parse_time(text).is_err(), "{text}");
        }
        assert_eq!(
            influx_sink_component::timefmt::rfc3339_millis(
                parse_time("2031-07-04T01:02:03.004Z").unwrap()
            ),
            "2031-07-04T01:02:03.004Z"
        );
    }

    fn convert_one(data: &[u8]) -> Result<(Point, i64), String> {
        let p = parse(data).unwrap();
        convert(&p, p.root(), 42)
    }

    #[test]
    fn gateway_points() {
        // pickle.dumps({"measurement": "device_data", "tags": {"device": "inv1", "none": None},
        //  "fields": {"power": 1234.5, "status": "ok", "n": 3, "on": True, "gone": None},
        //  "time": "2024-01-15T10:30:00Z", "_backlog_time": 1705314600.25}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x0b\x00\x00\x00measurementq\x01X\x0b\x00\x00\x00device_dataq\x02X\x04\x00\x00\x00tagsq\x03}q\x04(X\x06\x00\x00\x00deviceq\x05X\x04\x00\x00\x00inv1q\x06X\x04\x00\x00\x00noneq\x07NuX\x06\x00\x00\x00fieldsq\x08}q\t(X\x05\x00\x00\x00powerq\nG@\x93J\x00\x00\x00\x00\x00X\x06\x00\x00\x00statusq\x0bX\x02\x00\x00\x00okq\x0cX\x01\x00\x00\x00nq\rK\x03X\x02\x00\x00\x00onq\x0e\x88X\x04\x00\x00\x00goneq\x0fNuX\x04\x00\x00\x00timeq\x10X\x14\x00\x00\x002024-01-15T10:30:00Zq\x11X\r\x00\x00\x00_backlog_timeq\x12GA\xd9iBJ\x10\x00\x00u.";
        let (p, stored) = convert_one(data).unwrap();
        assert_eq!(
            p.line,
            "device_data,device=inv1 power=1234.5,status=\"ok\",n=3i,on=true"
        );
        assert_eq!(p.timestamp, T0);
        assert_eq!(stored, T0 + 250_000_000);
    }

    #[test]
    fn time_forms_and_refusals() {
        // {"measurement": "m", "fields": {"v": 1}, "time": X} for X an int (ns),
        // a float (s: 1705314600.1234567), missing with _backlog_time 0, missing without.
        let ns = b"\x80\x02}q\x00(X\x0b\x00\x00\x00measurementq\x01X\x01\x00\x00\x00mq\x02X\x06\x00\x00\x00fieldsq\x03}q\x04X\x01\x00\x00\x00vq\x05K\x01sX\x04\x00\x00\x00timeq\x06\x8a\x08\x00\x90I\xf3\x97~\xaa\x17u.";
        let (p, stored) = convert_one(ns).unwrap();
        assert_eq!((p.timestamp, stored), (T0, 42));
        let float = b"\x80\x02}q\x00(X\x0b\x00\x00\x00measurementq\x01X\x01\x00\x00\x00mq\x02X\x06\x00\x00\x00fieldsq\x03}q\x04X\x01\x00\x00\x00vq\x05K\x01sX\x04\x00\x00\x00timeq\x06GA\xd9iBJ\x07\xe6\xb7u.";
        assert_eq!(convert_one(float).unwrap().0.timestamp, T0 + 123_457_000);
        let backlog_only = b"\x80\x02}q\x00(X\x0b\x00\x00\x00measurementq\x01X\x01\x00\x00\x00mq\x02X\x06\x00\x00\x00fieldsq\x03}q\x04X\x01\x00\x00\x00vq\x05K\x01sX\r\x00\x00\x00_backlog_timeq\x06K\x00u.";
        assert_eq!(convert_one(backlog_only).unwrap(), {
            let (p, _) = convert_one(ns).unwrap();
            (Point { timestamp: 0, ..p }, 0)
        });
        let neither = b"\x80\x02}q\x00(X\x0b\x00\x00\x00measurementq\x01X\x01\x00\x00\x00mq\x02X\x06\x00\x00\x00fieldsq\x03}q\x04X\x01\x00\x00\x00vq\x05K\x01su.";
        assert!(convert_one(neither).unwrap_err().contains("no `time`"));
        // {"measurement": "m", "fields": {}, "time": 1}
        let no_fields = b"\x80\x02}q\x00(X\x0b\x00\x00\x00measurementq\x01X\x01\x00\x00\x00mq\x02X\x06\x00\x00\x00fieldsq\x03}q\x04X\x04\x00\x00\x00timeq\x05K\x01u.";
        assert_eq!(convert_one(no_fields).unwrap_err(), "no fields");
        // [1, 2]
        assert_eq!(
            convert_one(b"\x80\x02]q\x00(K\x01K\x02e.").unwrap_err(),
            "not a dict but a list"
        );
    }
}
