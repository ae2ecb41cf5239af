//! UTC timestamps for log lines and decimal seconds for settings, without
//! a date library or float parsing (whose code and tables take 17 KB of
//! the component).

const NS_PER_S: u64 = 1_000_000_000;

/// `5`, `5.0`, `0.25` or `.5` (a decimal as the gateway writes seconds)
/// in units of 10^-9, so `0.2` is 200_000_000; digits past the ninth
/// decimal are cut. None for anything else, or from 10^10 (317 years) on.
pub fn parse_decimal_nanos(v: &str) -> Option<u64> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |d: &str| d.bytes().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) || whole.len() > 10
    {
        return None;
    }
    let whole = whole.bytes().fold(0, |a, c| a * 10 + u64::from(c - b'0'));
    let frac = (0..9).fold(0, |a, i| {
        a * 10 + frac.as_bytes().get(i).map_or(0, |c| u64::from(c - b'0'))
    });
    Some(whole * NS_PER_S + frac)
}

/// `2024-01-15T10:30:00.123Z` for nanoseconds since the Unix epoch.
pub fn rfc3339_millis(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let millis = ns.rem_euclid(1_000_000_000) / 1_000_000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Inverse of `civil_from_days`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 IMF-fixdate) as
/// nanoseconds since the Unix epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let mut it = s.split_ascii_whitespace().skip(1);
    let day: u32 = it.next()?.parse().ok()?;
    let month = it.next()?;
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|n| n.parse::<i64>().ok());
    let (h, mi, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|n| *n == month)? as u32 + 1;
    let secs = days_from_civil(year, m, day) * 86_400 + h * 3600 + mi * 60 + sec;
    secs.checked_mul(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_as_gateway_configs_write_them() {
        assert_eq!(parse_decimal_nanos("5"), Some(5 * NS_PER_S));
        assert_eq!(parse_decimal_nanos("5.0"), Some(5 * NS_PER_S));
        assert_eq!(parse_decimal_nanos("0.25"), Some(250_000_000));
        assert_eq!(parse_decimal_nanos(".5"), Some(500_000_000));
        assert_eq!(parse_decimal_nanos("7."), Some(7 * NS_PER_S));
        assert_eq!(parse_decimal_nanos("0.0000000019"), Some(1));
        assert_eq!(
            parse_decimal_nanos("9999999999.999999999"),
            Some(9_999_999_999 * NS_PER_S + 999_999_999)
        );
        for bad in [
            "",
            ".",
            "-1",
            "+1",
            "1e3",
            "1.2.3",
            " 1",
            "inf",
            "nan",
            "1_0",
            "10000000000",
        ] {
            assert_eq!(parse_decimal_nanos(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            super::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000_000_000)
        );
        assert_eq!(
            super::parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(951_782_400_000_000_000)
        );
        for bad in [
            "",
            "120",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(super::parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn known_instants() {
        assert_eq!(super::rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_millis(1_705_314_600_123_000_000),
            "2024-01-15T10:30:00.123Z"
        );
        assert_eq!(
            super::rfc3339_millis(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
