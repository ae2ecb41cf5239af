//! InfluxDB line protocol: validation and normalisation of incoming lines,
//! and construction of lines from typed parts.
//!
//! A line is `measurement[,tag=value...] field=value[,field=value...] [timestamp]`.
//! Parsing follows InfluxDB 1.x acceptance:
//!
//! * measurement: ends at an unescaped `,` or space; must not be empty; a
//!   line whose first non-blank character is `#` is a comment;
//! * tags: `key=value`, neither empty, no unescaped `=` in the value;
//! * fields: at least one `key=value`; values are floats (`1`, `-1.5`, `1.`,
//!   `.5`, `1e3`; finite only), integers (`12i`, within i64), unsigned
//!   integers (`12u`, within u64), booleans (`t T true True TRUE f F false
//!   False FALSE`) or double-quoted strings (`\"` and `\\` escapes);
//! * timestamp: optional signed integer (ns) within InfluxDB's range
//!   `[i64::MIN + 2, i64::MAX - 1]`; nothing but blanks may follow it.
//!
//! Outside strings a backslash escapes the byte after it (`\,`, `\ `, `\=`):
//! the pair never ends a token. Escapes are kept as written: the stored
//! line is the user's bytes, with tags reordered by key (byte order of the
//! escaped keys, stable) when they were not already sorted, and separators
//! between the series, the fields and the timestamp reduced to one space.

use std::fmt::{self, Write as _};

use crate::point::Point;
use crate::simd::{self, Bytes16};
use crate::swar::{self, bytes_equal, HIGH_BITS, LOW_BITS};

/// Why a line was refused, phrased for an operator (e.g. "field `temp` has an
/// unterminated string", "missing field set", "invalid timestamp `12x`").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for LineError {}

/// A typed field value for [`point_from_parts`].
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Integer(i64),
    Unsigned(u64),
    Text(String),
    Boolean(bool),
}

/// Smallest timestamp InfluxDB accepts (the two below are reserved).
const MIN_TIMESTAMP: i64 = i64::MIN + 2;
/// Largest timestamp InfluxDB accepts.
const MAX_TIMESTAMP: i64 = i64::MAX - 1;
/// Longest piece of user text quoted in an error.
const SNIPPET_MAX: usize = 64;
/// Tags sorted on the stack; lines with more unsorted tags use a Vec.
const STACK_TAGS: usize = 32;

fn err(reason: String) -> LineError {
    LineError { reason }
}

/// User text for an error message, cut to a readable length.
fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() <= SNIPPET_MAX {
        return s.into_owned();
    }
    let mut end = SNIPPET_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_blank(b[i]) {
        i += 1;
    }
    i
}

/// Bytes that end or escape a measurement, key or tag value.
pub(crate) const STOP_NAME: u8 = 1;
/// Bytes that end or escape a string field value.
pub(crate) const STOP_STRING: u8 = 2;
/// Bytes that end an unquoted field value.
pub(crate) const STOP_VALUE: u8 = 4;

/// Byte classes for the scanning loops.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'\\' as usize] = STOP_NAME | STOP_STRING;
    t[b'=' as usize] = STOP_NAME;
    t[b',' as usize] = STOP_NAME | STOP_VALUE;
    t[b' ' as usize] = STOP_NAME | STOP_VALUE;
    t[b'"' as usize] = STOP_STRING;
    t
};

/// Bytes of `w` (little-endian) whose class intersects `class`.
#[inline(always)]
fn class_mask(w: u64, class: u8) -> u64 {
    match class {
        STOP_NAME => {
            bytes_equal(w, b'\\')
                | bytes_equal(w, b'=')
                | bytes_equal(w, b',')
                | bytes_equal(w, b' ')
        }
        STOP_STRING => bytes_equal(w, b'\\') | bytes_equal(w, b'"'),
        _ => bytes_equal(w, b',') | bytes_equal(w, b' '),
    }
}

/// Lanes of `v` whose byte is in `class`.
#[inline(always)]
fn class_lanes(v: Bytes16, class: u8) -> u32 {
    match class {
        STOP_NAME => v.eq(b'\\').or(v.eq(b'=')).or(v.eq(b',').or(v.eq(b' '))),
        STOP_STRING => v.eq(b'\\').or(v.eq(b'"')),
        _ => v.eq(b',').or(v.eq(b' ')),
    }
    .mask()
}

// The scans below take their first steps outside any loop, and what is
// left in a function of its own: most names and values end within 32
// bytes, and inside the component each entry into a loop costs an epoch
// check (wasmtime's interruption point) and spills around it.

/// First index at or after `i` whose byte is in `class`, or `b.len()`.
/// Sixteen bytes at a time, then eight (SWAR), then byte by byte.
#[inline(always)]
pub(crate) fn scan(b: &[u8], i: usize, class: u8) -> usize {
    for step in [0, 16] {
        let Some(v) = simd::at(b, i + step) else {
            return scan_rest(b, i + step, class);
        };
        let m = class_lanes(v, class);
        if m != 0 {
            return i + step + m.trailing_zeros() as usize;
        }
    }
    scan_rest(b, i + 32, class)
}

#[inline(never)]
fn scan_rest(b: &[u8], mut i: usize, class: u8) -> usize {
    while let Some(v) = simd::at(b, i) {
        let m = class_lanes(v, class);
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let m = class_mask(w, class);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && CLASS[b[i] as usize] & class == 0 {
        i += 1;
    }
    i
}

/// Lanes of `v` that are not an ASCII digit.
#[inline(always)]
fn non_digit_lanes(v: Bytes16) -> u32 {
    !v.digits().mask() & 0xffff
}

/// First index at or after `i` that is not an ASCII digit, or `b.len()`.
#[inline(always)]
fn skip_digits(b: &[u8], i: usize) -> usize {
    let Some(v) = simd::at(b, i) else {
        return skip_digits_rest(b, i);
    };
    let not_digit = non_digit_lanes(v);
    if not_digit != 0 {
        return i + not_digit.trailing_zeros() as usize;
    }
    skip_digits_rest(b, i + 16)
}

#[inline(never)]
fn skip_digits_rest(b: &[u8], mut i: usize) -> usize {
    while let Some(v) = simd::at(b, i) {
        let not_digit = non_digit_lanes(v);
        if not_digit != 0 {
            return i + not_digit.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // Per byte, without carries between bytes: high bit of `ge` set iff
        // the low 7 bits are >= '0', of `gt` iff they are > '9'.
        let ge = (w | HIGH_BITS).wrapping_sub(LOW_BITS * 0x30);
        let gt = (w & !HIGH_BITS).wrapping_add(LOW_BITS * 0x46);
        let not_digit = (w | !ge | gt) & HIGH_BITS;
        if not_digit != 0 {
            return i + (not_digit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// The first byte at or after `i` that ends a name (`,`, space, and `=`
/// unless `eq_allowed`), skipping backslash escapes: its index, `>= b.len()`
/// if there is none. The common name without escapes takes no loop.
#[inline(always)]
fn name_end(b: &[u8], i: usize, eq_allowed: bool) -> usize {
    let j = scan(b, i, STOP_NAME);
    match b.get(j) {
        Some(b'\\') => name_end_escaped(b, j + 2, eq_allowed),
        Some(b'=') if eq_allowed => name_end_escaped(b, j + 1, eq_allowed),
        _ => j,
    }
}

#[inline(never)]
fn name_end_escaped(b: &[u8], mut i: usize, eq_allowed: bool) -> usize {
    loop {
        i = scan(b, i, STOP_NAME);
        match b.get(i) {
            Some(b'\\') => i += 2,
            Some(b'=') if eq_allowed => i += 1,
            _ => return i,
        }
    }
}

/// End of a plain number value starting at `i` (`-?digits+(.digits*)?` with
/// at most 300 integer digits, or `-?digits{1,18}i`) when it is followed by
/// a delimiter; these need no further check. None for anything else.
#[inline(always)]
fn plain_number_end(b: &[u8], i: usize) -> Option<usize> {
    let n = b.len();
    let ds = i + usize::from(b[i] == b'-');
    let mut j = skip_digits(b, ds);
    let int_digits = j - ds;
    if int_digits == 0 || int_digits > 300 {
        return None;
    }
    if j < n {
        match b[j] {
            b'.' => j = skip_digits(b, j + 1),
            b'i' if int_digits <= 18 => j += 1,
            _ => {}
        }
    }
    (j == n || CLASS[b[j] as usize] & STOP_VALUE != 0).then_some(j)
}

/// Parse one line (no trailing newline) into a Point. `default_ts` is used
/// when the line has no timestamp.
pub fn parse_line(line: &str, default_ts: i64) -> Result<Point, LineError> {
    let b = line.as_bytes();
    let n = b.len();
    let start = skip_blanks(b, 0);
    if start == n {
        return Err(err("empty line".into()));
    }
    if b[start] == b'#' {
        return Err(err("line is a comment, not a point".into()));
    }

    // Measurement: up to an unescaped comma or space (`=` is allowed).
    let meas_end = name_end(b, start, true).min(n);
    if meas_end == start {
        return Err(err("missing measurement".into()));
    }
    let mut i = meas_end;

    // Tags: `,key=value` until a space. Track whether keys are sorted.
    let mut sorted = true;
    let mut prev_key: &[u8] = &[];
    while i < n && b[i] == b',' {
        i += 1;
        let ks = i;
        i = name_end(b, i, false);
        if i >= n {
            return Err(tag_without_value(&b[ks..n]));
        }
        if b[i] != b'=' {
            return Err(tag_without_value(&b[ks..i]));
        }
        if i == ks {
            return Err(err("tag with an empty key".into()));
        }
        let key = &b[ks..i];
        i += 1;
        let vs = i;
        i = name_end(b, i, false);
        if i < n && b[i] == b'=' {
            return Err(err(format!(
                "tag `{}` has an unescaped `=` in its value",
                snippet(key)
            )));
        }
        i = i.min(n);
        if i == vs {
            return Err(err(format!("tag `{}` has an empty value", snippet(key))));
        }
        if sorted && key_before(key, prev_key) {
            sorted = false;
        }
        prev_key = key;
    }
    let series_end = i;

    // Field set.
    i = skip_blanks(b, i);
    if i >= n {
        return Err(err("missing field set".into()));
    }
    let fields_start = i;
    loop {
        let ks = i;
        i = name_end(b, i, false);
        if i >= n {
            return Err(field_without_value(&b[ks..n]));
        }
        if i == ks {
            return Err(err("field with an empty key".into()));
        }
        if b[i] != b'=' {
            return Err(field_without_value(&b[ks..i]));
        }
        let key_end = i;
        i += 1;
        if i >= n || CLASS[b[i] as usize] & STOP_VALUE != 0 {
            return Err(field_without_value(&b[ks..key_end]));
        }
        if b[i] == b'"' {
            i += 1;
            loop {
                i = scan(b, i, STOP_STRING);
                if i >= n {
                    return Err(err(format!(
                        "field `{}` has an unterminated string",
                        snippet(&b[ks..key_end])
                    )));
                }
                if b[i] == b'"' {
                    break;
                }
                i += 2;
            }
            i += 1;
            if i < n && CLASS[b[i] as usize] & STOP_VALUE == 0 {
                return Err(err(format!(
                    "field `{}` has text after its closing quote",
                    snippet(&b[ks..key_end])
                )));
            }
        } else if let Some(end) = plain_number_end(b, i) {
            i = end;
        } else {
            let vs = i;
            i = scan(b, i, STOP_VALUE);
            if let Err(e) = check_scalar(&b[vs..i]) {
                return Err(scalar_error(e, &b[ks..key_end], &b[vs..i]));
            }
        }
        if i >= n || b[i] == b' ' {
            break;
        }
        i += 1; // the comma
        if i >= n || b[i] == b' ' {
            return Err(err("field with an empty key (trailing comma)".into()));
        }
    }
    let fields_end = i;

    // Timestamp.
    i = skip_blanks(b, i);
    let timestamp = if i >= n {
        default_ts
    } else {
        let ts_start = i;
        while i < n && !is_blank(b[i]) {
            i += 1;
        }
        let ts = parse_timestamp(&b[ts_start..i])?;
        let rest = skip_blanks(b, i);
        if rest < n {
            return Err(err(format!(
                "unexpected text after the timestamp: `{}`",
                snippet(&b[rest..])
            )));
        }
        ts
    };

    let series_len = series_end - start;
    let series_len =
        u32::try_from(series_len).map_err(|_| err("series key longer than 4 GiB".into()))?;
    let mut out = String::with_capacity(series_len as usize + 1 + fields_end - fields_start);
    if sorted {
        out.push_str(&line[start..series_end]);
    } else {
        out.push_str(&line[start..meas_end]);
        push_sorted_tags(&mut out, line, meas_end, series_end);
    }
    out.push(' ');
    out.push_str(&line[fields_start..fields_end]);
    Ok(Point {
        line: out,
        series_len,
        timestamp,
    })
}

/// `a < b` in byte order; most keys differ in their first byte, which
/// spares a memcmp call.
#[inline(always)]
fn key_before(a: &[u8], b: &[u8]) -> bool {
    match (a.first(), b.first()) {
        (_, None) => false,
        (Some(x), Some(y)) if x != y => x < y,
        _ => a < b,
    }
}

fn tag_without_value(key: &[u8]) -> LineError {
    if key.is_empty() {
        err("tag with an empty key".into())
    } else {
        err(format!("tag `{}` has no `=value`", snippet(key)))
    }
}

fn field_without_value(key: &[u8]) -> LineError {
    err(format!("field `{}` has no value", snippet(key)))
}

/// One tag of an unsorted tag list: byte offsets of `key=value` (without
/// the leading comma) and of the `=`.
#[derive(Clone, Copy, Default)]
struct TagSpan {
    start: usize,
    eq: usize,
    end: usize,
}

/// Append `,tag` for the (already validated) tags in `line[from..to]`, which
/// starts with a comma, sorted by key.
fn push_sorted_tags(out: &mut String, line: &str, from: usize, to: usize) {
    let b = line.as_bytes();
    let mut stack = [TagSpan::default(); STACK_TAGS];
    let mut heap: Vec<TagSpan> = Vec::new();
    let mut count = 0usize;
    let mut i = from;
    while i < to {
        // b[i] is the comma before a tag.
        let start = i + 1;
        let mut eq = 0;
        i = start;
        while i < to {
            match b[i] {
                b'\\' => i += 2,
                b'=' if eq == 0 => {
                    eq = i;
                    i += 1
                }
                b',' => break,
                _ => i += 1,
            }
        }
        let end = i.min(to);
        let span = TagSpan { start, eq, end };
        if count < STACK_TAGS {
            stack[count] = span;
        } else {
            if heap.is_empty() {
                heap.extend_from_slice(&stack);
            }
            heap.push(span);
        }
        count += 1;
        i = end;
    }
    let key = |t: &TagSpan| &b[t.start..t.eq];
    let spans: &mut [TagSpan] = if count <= STACK_TAGS {
        let s = &mut stack[..count];
        // Insertion sort: stable, no allocation.
        for j in 1..s.len() {
            let mut k = j;
            while k > 0 && key(&s[k - 1]) > key(&s[k]) {
                s.swap(k - 1, k);
                k -= 1;
            }
        }
        s
    } else {
        // Equal keys keep their order: spans start at increasing offsets.
        crate::sort::sort_by(&mut heap, |x, y| (key(x), x.start) < (key(y), y.start));
        &mut heap
    };
    for t in spans.iter() {
        out.push(',');
        out.push_str(&line[t.start..t.end]);
    }
}

/// Why an unquoted field value is invalid.
enum ScalarError {
    Invalid,
    IntegerRange,
    UnsignedRange,
    FloatRange,
}

fn scalar_error(e: ScalarError, key: &[u8], value: &[u8]) -> LineError {
    let (key, value) = (snippet(key), snippet(value));
    err(match e {
        ScalarError::Invalid => format!("field `{key}` has an invalid value `{value}`"),
        ScalarError::IntegerRange => {
            format!("field `{key}` has an integer out of the 64-bit signed range `{value}`")
        }
        ScalarError::UnsignedRange => {
            format!("field `{key}` has an unsigned integer out of the 64-bit range `{value}`")
        }
        ScalarError::FloatRange => {
            format!("field `{key}` has a float that is not finite `{value}`")
        }
    })
}

/// Validate an unquoted field value: number or boolean.
fn check_scalar(v: &[u8]) -> Result<(), ScalarError> {
    match v[0] {
        b'-' | b'.' | b'0'..=b'9' => {}
        b't' | b'T' | b'f' | b'F' => {
            return match v {
                b"t" | b"T" | b"true" | b"True" | b"TRUE" | b"f" | b"F" | b"false" | b"False"
                | b"FALSE" => Ok(()),
                _ => Err(ScalarError::Invalid),
            }
        }
        _ => return Err(ScalarError::Invalid),
    }
    match v[v.len() - 1] {
        b'i' => {
            let body = &v[..v.len() - 1];
            let (neg, digits) = match body.split_first() {
                Some((b'-', rest)) => (true, rest),
                _ => (false, body),
            };
            let mag = parse_digits(digits).ok_or(ScalarError::Invalid)?;
            let limit = if neg {
                i64::MAX as u64 + 1
            } else {
                i64::MAX as u64
            };
            match mag {
                Some(m) if m <= limit => Ok(()),
                _ => Err(ScalarError::IntegerRange),
            }
        }
        b'u' => match parse_digits(&v[..v.len() - 1]) {
            None => Err(ScalarError::Invalid),
            Some(None) => Err(ScalarError::UnsignedRange),
            Some(Some(_)) => Ok(()),
        },
        _ => check_float(v),
    }
}

/// `digits+` as u64: `None` if not all digits (or empty), `Some(None)` on
/// overflow.
fn parse_digits(d: &[u8]) -> Option<Option<u64>> {
    if d.is_empty() {
        return None;
    }
    let mut acc: Option<u64> = Some(0);
    for &c in d {
        if !c.is_ascii_digit() {
            return None;
        }
        acc = acc
            .and_then(|a| a.checked_mul(10))
            .and_then(|a| a.checked_add(u64::from(c - b'0')));
    }
    Some(acc)
}

/// `-?(digits+ (. digits*)? | . digits+) ([eE] [+-]? digits+)?`, finite.
fn check_float(v: &[u8]) -> Result<(), ScalarError> {
    let n = v.len();
    let digits_from = |mut i: usize| {
        while i < n && v[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let int_start = usize::from(v[0] == b'-');
    let int_end = digits_from(int_start);
    let (frac_start, mut i) = (int_end + 1, int_end);
    if i < n && v[i] == b'.' {
        i = digits_from(frac_start);
    }
    let (int, frac) = (&v[int_start..int_end], &v[frac_start.min(i)..i]);
    if int.is_empty() && frac.is_empty() {
        return Err(ScalarError::Invalid);
    }
    let mut exp = None;
    if i < n && (v[i] == b'e' || v[i] == b'E') {
        i += 1;
        let neg = i < n && v[i] == b'-';
        if i < n && (v[i] == b'+' || v[i] == b'-') {
            i += 1;
        }
        let end = digits_from(i);
        if end == i {
            return Err(ScalarError::Invalid);
        }
        // Saturates far beyond any exponent that could matter.
        let e = v[i..end]
            .iter()
            .fold(0i64, |a, d| (a * 10 + i64::from(d - b'0')).min(1 << 40));
        exp = Some(if neg { -e } else { e });
        i = end;
    }
    if i != n {
        return Err(ScalarError::Invalid);
    }
    // Without an exponent, fewer than 309 integer digits cannot overflow.
    if (exp.is_some() || int.len() > 300) && rounds_to_infinity(int, frac, exp.unwrap_or(0)) {
        return Err(ScalarError::FloatRange);
    }
    Ok(())
}

/// 2^1024 - 2^970: halfway between `f64::MAX` and 2^1024. A decimal of at
/// least this magnitude rounds (to even) to infinity, which InfluxDB
/// refuses. Its digits, as 0.1797... x 10^309.
const F64_OVERFLOW: &[u8] = b"179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792";
const F64_OVERFLOW_SCALE: i64 = 309;

/// Whether `int.frac x 10^exp` parses to an infinite f64, decided on the
/// digits alone (no float parsing code in the component).
fn rounds_to_infinity(int: &[u8], frac: &[u8], exp: i64) -> bool {
    let all = || int.iter().chain(frac).copied();
    let zeros = all().take_while(|&d| d == b'0').count();
    let mut digits = all().skip(zeros).peekable();
    if digits.peek().is_none() {
        return false; // zero
    }
    // The value is 0.d1d2... x 10^scale, d1 being the first nonzero digit.
    let scale = int.len() as i64 - zeros as i64 + exp;
    match scale.cmp(&F64_OVERFLOW_SCALE) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => {
            for &t in F64_OVERFLOW {
                match digits.next() {
                    // The threshold still has a nonzero digit to come.
                    None => return false,
                    Some(d) if d != t => return d > t,
                    Some(_) => {}
                }
            }
            true
        }
    }
}

fn parse_timestamp(t: &[u8]) -> Result<i64, LineError> {
    let invalid = || err(format!("invalid timestamp `{}`", snippet(t)));
    let (neg, digits) = match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, t),
    };
    if digits.is_empty() || skip_digits(digits, 0) != digits.len() {
        return Err(invalid());
    }
    // Up to 19 digits fit in u64 without overflow checks.
    let mag = (digits.len() <= 19).then(|| digits_value(digits));
    let value = mag.and_then(|m| {
        if neg {
            0i64.checked_sub_unsigned(m)
        } else {
            i64::try_from(m).ok()
        }
    });
    match value {
        Some(ts) if (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&ts) => Ok(ts),
        _ => Err(err(format!(
            "timestamp `{}` is out of range (InfluxDB accepts {MIN_TIMESTAMP}..={MAX_TIMESTAMP} ns)",
            snippet(t)
        ))),
    }
}

/// The value of at most 19 ASCII digits: the leading ones one by one, the
/// rest eight at a time.
#[inline(always)]
fn digits_value(digits: &[u8]) -> u64 {
    let lead = digits.len() % 8;
    let mut v = digits[..lead]
        .iter()
        .fold(0u64, |acc, &c| acc * 10 + u64::from(c - b'0'));
    for i in (lead..digits.len()).step_by(8) {
        v = v * 100_000_000 + swar::parse_eight_digits(swar::word(digits, i));
    }
    v
}

/// Parse a buffer of newline-separated lines. Blank lines and lines starting
/// with '#' are skipped (not counted as points, not rejected). `\r\n`
/// accepted. Returns accepted points in order and, for each refused line,
/// (0-based line index within `buf`, error). Non-UTF-8 lines are refused
/// with a reason.
pub fn parse_lines(buf: &[u8], default_ts: i64) -> (Vec<Point>, Vec<(usize, LineError)>) {
    parse_lines_in(buf, default_ts, 1)
}

/// [`parse_lines`] for lines whose timestamps count `unit_ns` nanoseconds
/// (a client's write precision): they are converted to nanoseconds, and a
/// line whose time falls outside InfluxDB's range once converted is
/// refused.
pub fn parse_lines_in(
    buf: &[u8],
    default_ts: i64,
    unit_ns: i64,
) -> (Vec<Point>, Vec<(usize, LineError)>) {
    let unit = unit_ns.max(1);
    let mut points = Vec::new();
    let mut errors = Vec::new();
    if let Some(text) = as_text(buf) {
        let mut start = 0;
        for index in 0.. {
            let end = simd::find_byte(buf, start, b'\n');
            parse_one(
                index,
                &text[start..end],
                default_ts,
                unit,
                &mut points,
                &mut errors,
            );
            if end == buf.len() {
                break;
            }
            start = end + 1;
        }
    } else {
        for (index, raw) in buf.split(|&c| c == b'\n').enumerate() {
            match std::str::from_utf8(raw) {
                Ok(line) => parse_one(index, line, default_ts, unit, &mut points, &mut errors),
                Err(e) => errors.push((
                    index,
                    err(format!(
                        "line is not valid UTF-8 (bad byte at offset {})",
                        e.valid_up_to()
                    )),
                )),
            }
        }
    }
    (points, errors)
}

/// `buf` as text if it is valid UTF-8; ASCII, as line protocol nearly
/// always is, is recognised 64 bytes per step.
fn as_text(buf: &[u8]) -> Option<&str> {
    if simd::is_ascii(buf) {
        // SAFETY: ASCII is valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(buf) });
    }
    std::str::from_utf8(buf).ok()
}

/// parse_lines' handling of one line: skip blanks and comments.
fn parse_one(
    index: usize,
    line: &str,
    default_ts: i64,
    unit: i64,
    points: &mut Vec<Point>,
    errors: &mut Vec<(usize, LineError)>,
) {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let first = skip_blanks(line.as_bytes(), 0);
    if first == line.len() || line.as_bytes()[first] == b'#' {
        return;
    }
    match parse_line(line, default_ts) {
        Ok(p) if unit == 1 || p.timestamp == default_ts => points.push(p),
        Ok(mut p) => match p.timestamp.checked_mul(unit) {
            Some(ns) if (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&ns) => {
                p.timestamp = ns;
                points.push(p);
            }
            _ => errors.push((
                index,
                err(format!(
                    "timestamp {} at a precision of {unit} ns is out of range (InfluxDB accepts {MIN_TIMESTAMP}..={MAX_TIMESTAMP} ns)",
                    p.timestamp
                )),
            )),
        },
        Err(e) => errors.push((index, e)),
    }
}

/// What must be escaped with a backslash in a name.
#[derive(Clone, Copy)]
enum NameKind {
    /// Measurement: comma and space.
    Measurement,
    /// Tag key, tag value, field key: comma, equals sign and space.
    Key,
}

impl NameKind {
    fn special(self, c: char) -> bool {
        match self {
            NameKind::Measurement => c == ',' || c == ' ',
            NameKind::Key => c == ',' || c == ' ' || c == '=',
        }
    }
}

/// Append `name` escaped for line protocol. A backslash is written as is,
/// except when it precedes a special character, another backslash or the
/// end of the name, where it is doubled (`\\` reads back as one backslash).
fn push_escaped(out: &mut String, name: &str, kind: NameKind) {
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                None => out.push_str("\\\\"),
                Some(&next) if next == '\\' || kind.special(next) => out.push_str("\\\\"),
                Some(_) => out.push('\\'),
            }
        } else {
            if kind.special(c) {
                out.push('\\');
            }
            out.push(c);
        }
    }
}

fn check_name(what: &str, name: &str) -> Result<(), LineError> {
    if name.is_empty() {
        return Err(err(format!("{what} is empty")));
    }
    if name.contains('\n') {
        return Err(err(format!(
            "{what} `{}` contains a newline",
            snippet(name.as_bytes())
        )));
    }
    Ok(())
}

/// A tab cannot be escaped, and one at the start of the measurement or of
/// the field set would be read as a separator.
fn no_leading_tab(what: &str, name: &str) -> Result<(), LineError> {
    if name.starts_with('\t') {
        return Err(err(format!(
            "{what} `{}` starts with a tab",
            snippet(name.as_bytes())
        )));
    }
    Ok(())
}

/// Build a Point from typed parts (for the typed-record write path);
/// validates names (non-empty measurement, field keys, no tag with empty key
/// or value, at least one field, finite floats) and escapes properly.
pub fn point_from_parts(
    measurement: &str,
    tags: &[(String, String)],
    fields: &[(String, FieldValue)],
    timestamp: Option<i64>,
    default_ts: i64,
) -> Result<Point, LineError> {
    check_name("measurement", measurement)?;
    no_leading_tab("measurement", measurement)?;
    if measurement.starts_with('#') {
        return Err(err(format!(
            "measurement `{}` starts with `#` (the line would read as a comment)",
            snippet(measurement.as_bytes())
        )));
    }
    if fields.is_empty() {
        return Err(err("missing field set".into()));
    }
    let timestamp = match timestamp {
        None => default_ts,
        Some(ts) if (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&ts) => ts,
        Some(ts) => {
            return Err(err(format!(
                "timestamp `{ts}` is out of range (InfluxDB accepts {MIN_TIMESTAMP}..={MAX_TIMESTAMP} ns)"
            )))
        }
    };

    let mut out = String::with_capacity(
        measurement.len()
            + tags
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()
            + fields.iter().map(|(k, _)| k.len() + 12).sum::<usize>()
            + 1,
    );
    push_escaped(&mut out, measurement, NameKind::Measurement);

    if !tags.is_empty() {
        // Escape every tag once, then order them by escaped key (the order
        // parse_line keeps), stably.
        let mut text = String::new();
        let mut spans = Vec::with_capacity(tags.len());
        for (k, v) in tags {
            check_name("tag key", k)?;
            if v.is_empty() {
                return Err(err(format!(
                    "tag `{}` has an empty value",
                    snippet(k.as_bytes())
                )));
            }
            check_name("tag value", v)?;
            let start = text.len();
            push_escaped(&mut text, k, NameKind::Key);
            let eq = text.len();
            text.push('=');
            push_escaped(&mut text, v, NameKind::Key);
            spans.push(TagSpan {
                start,
                eq,
                end: text.len(),
            });
        }
        let tb = text.as_bytes();
        let key = |t: &TagSpan| (&tb[t.start..t.eq], t.start);
        crate::sort::sort_by(&mut spans, |x, y| key(x) < key(y));
        for t in &spans {
            out.push(',');
            out.push_str(&text[t.start..t.end]);
        }
    }

    let series_len =
        u32::try_from(out.len()).map_err(|_| err("series key longer than 4 GiB".into()))?;
    for (n, (k, v)) in fields.iter().enumerate() {
        check_name("field key", k)?;
        no_leading_tab("field key", k)?;
        out.push(if n == 0 { ' ' } else { ',' });
        push_escaped(&mut out, k, NameKind::Key);
        out.push('=');
        push_value(&mut out, k, v)?;
    }
    Ok(Point {
        line: out,
        series_len,
        timestamp,
    })
}

fn push_value(out: &mut String, key: &str, v: &FieldValue) -> Result<(), LineError> {
    // Writing to a String cannot fail.
    let _ = match v {
        FieldValue::Float(f) => {
            if !f.is_finite() {
                return Err(err(format!(
                    "field `{}` is not a finite number ({f})",
                    snippet(key.as_bytes())
                )));
            }
            let a = f.abs();
            if a == 0.0 || (1e-5..1e16).contains(&a) {
                write!(out, "{f}")
            } else {
                write!(out, "{f:e}")
            }
        }
        FieldValue::Integer(i) => write!(out, "{i}i"),
        FieldValue::Unsigned(u) => write!(out, "{u}u"),
        FieldValue::Boolean(b) => {
            out.push_str(if *b { "true" } else { "false" });
            Ok(())
        }
        FieldValue::Text(s) => {
            if s.contains('\n') {
                return Err(err(format!(
                    "field `{}` has a string containing a newline",
                    snippet(key.as_bytes())
                )));
            }
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            Ok(())
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TS: i64 = 1_700_000_000_000_000_000;

    fn ok(line: &str) -> Point {
        parse_line(line, TS).unwrap_or_else(|e| panic!("`{line}` refused: {e}"))
    }

    fn refused(line: &str) -> String {
        match parse_line(line, TS) {
            Ok(p) => panic!("`{line}` accepted as {p:?}"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn fast_scans_match_bytewise_scans() {
        // 40 bytes: 16-byte steps, then 8-byte ones, then single bytes.
        for c in 0..=255u8 {
            for pos in 0..40 {
                let mut buf = vec![b'7'; 40];
                buf[pos] = c;
                // Mix a letter that stops nothing before the probe.
                if pos > 2 {
                    buf[pos - 2] = b'a';
                }
                for from in 0..pos.min(3) {
                    let naive_digits = (from..buf.len())
                        .find(|&k| !buf[k].is_ascii_digit())
                        .unwrap_or(buf.len());
                    assert_eq!(skip_digits(&buf, from), naive_digits, "{c} at {pos}");
                    for class in [STOP_NAME, STOP_STRING, STOP_VALUE] {
                        let naive = (from..buf.len())
                            .find(|&k| CLASS[buf[k] as usize] & class != 0)
                            .unwrap_or(buf.len());
                        assert_eq!(scan(&buf, from, class), naive, "{c} at {pos}");
                    }
                }
            }
        }
    }

    #[test]
    fn minimal_line() {
        let p = ok("cpu value=1");
        assert_eq!(p.line, "cpu value=1");
        assert_eq!(p.series_len, 3);
        assert_eq!(p.series(), "cpu");
        assert_eq!(p.fields(), "value=1");
        assert_eq!(p.timestamp, TS);
    }

    #[test]
    fn sorted_line_is_copied() {
        let p = ok("cpu,host=a,region=eu usage=1.5,idle=2i 1600000000000000000");
        assert_eq!(p.line, "cpu,host=a,region=eu usage=1.5,idle=2i");
        assert_eq!(p.series(), "cpu,host=a,region=eu");
        assert_eq!(p.timestamp, 1_600_000_000_000_000_000);
    }

    #[test]
    fn tags_are_sorted_stably() {
        let p = ok("cpu,zone=a,host=b,dc=x v=1 5");
        assert_eq!(p.line, "cpu,dc=x,host=b,zone=a v=1");
        assert_eq!(p.series_len as usize, "cpu,dc=x,host=b,zone=a".len());
        // Equal keys keep their order.
        assert_eq!(ok("m,b=2,a=1,b=1 f=1").line, "m,a=1,b=2,b=1 f=1");
        // Byte order: uppercase before lowercase, prefix first.
        assert_eq!(ok("m,ab=1,a=2,B=3 f=1").line, "m,B=3,a=2,ab=1 f=1");
        // Many tags (beyond the stack buffer).
        let tags: Vec<String> = (0..40).rev().map(|i| format!("t{i:02}=v{i}")).collect();
        let p = ok(&format!("m,{} f=1", tags.join(",")));
        let mut sorted = tags.clone();
        sorted.sort();
        assert_eq!(p.line, format!("m,{} f=1", sorted.join(",")));
    }

    #[test]
    fn escapes_are_kept_as_written() {
        let line = r#"my\ meas\,x,tag\ key=va\,l\=ue\ x,z=1 f\,k\=x\ y=1,s="a \"q\" b\\" 7"#;
        let p = ok(line);
        assert_eq!(
            p.line,
            r#"my\ meas\,x,tag\ key=va\,l\=ue\ x,z=1 f\,k\=x\ y=1,s="a \"q\" b\\""#
        );
        assert_eq!(p.series(), r"my\ meas\,x,tag\ key=va\,l\=ue\ x,z=1");
        // Escaped tags are ordered by their escaped bytes.
        assert_eq!(ok(r"m,b\ x=1,b=2 f=1").line, r"m,b=2,b\ x=1 f=1");
        // `=` needs no escape in a measurement; strings hold anything.
        assert_eq!(ok("a=b f=1").series(), "a=b");
        assert_eq!(
            ok(r#"m s="x, y=z w",t="" 1"#).line,
            r#"m s="x, y=z w",t="""#
        );
        assert_eq!(ok("m s=\"ünï ✓\"").fields(), "s=\"ünï ✓\"");
    }

    #[test]
    fn field_value_types() {
        for v in [
            "1",
            "-1",
            "1.5",
            "-1.5",
            "1.",
            ".5",
            "-.5",
            "0",
            "-0.0",
            "1e3",
            "1E3",
            "1.5e-3",
            "-2E+10",
            "1.e5",
            "007",
            "1e308",
            "12i",
            "-12i",
            "0i",
            "9223372036854775807i",
            "-9223372036854775808i",
            "0u",
            "18446744073709551615u",
            "t",
            "T",
            "true",
            "True",
            "TRUE",
            "f",
            "F",
            "false",
            "False",
            "FALSE",
            "\"\"",
            "\"txt\"",
        ] {
            let p = ok(&format!("m f={v}"));
            assert_eq!(p.fields(), format!("f={v}"));
        }
        // Long plain decimals are fine while finite.
        ok(&format!("m f={}", "9".repeat(300)));
        ok(&format!("m f=0.{}", "1".repeat(400)));
    }

    #[test]
    fn invalid_field_values() {
        for v in [
            "1.2.3", "1e", "1e+", "-", ".", "-.", "1a", "+1", "1i5", "1.5i", "1e3i", "-i", "i",
            "-1u", "1.5u", "u", "NaN", "nan", "inf", "-inf", "Infinity", "tru", "yes", "TRue",
            "e5", ".e5", "0x10", "1_000",
        ] {
            let reason = refused(&format!("m f={v}"));
            assert!(reason.starts_with("field `f`"), "{v}: {reason}");
        }
        assert!(refused("m f=1e400").contains("not finite"));
        assert!(refused("m f=-1e400").contains("not finite"));
        assert!(refused(&format!("m f={}", "9".repeat(310))).contains("not finite"));
        assert!(refused("m f=9223372036854775808i").contains("out of"));
        assert!(refused("m f=-9223372036854775809i").contains("out of"));
        assert!(refused("m f=18446744073709551616u").contains("out of"));
        assert_eq!(refused("m f=12x"), "field `f` has an invalid value `12x`");
    }

    #[test]
    fn structural_errors() {
        assert_eq!(refused(""), "empty line");
        assert_eq!(refused("   "), "empty line");
        assert!(refused("# comment").contains("comment"));
        assert_eq!(refused(",t=1 f=1"), "missing measurement");
        assert_eq!(refused("cpu"), "missing field set");
        assert_eq!(refused("cpu "), "missing field set");
        assert_eq!(refused("cpu,t=1"), "missing field set");
        assert_eq!(refused("cpu,t=1 "), "missing field set");
        assert_eq!(refused(r"cpu\ f=1"), "missing field set");
        assert_eq!(refused("cpu,t f=1"), "tag `t` has no `=value`");
        assert_eq!(refused("cpu,t"), "tag `t` has no `=value`");
        assert_eq!(refused("cpu,=v f=1"), "tag with an empty key");
        assert_eq!(refused("cpu, f=1"), "tag with an empty key");
        assert_eq!(refused("cpu,t=1, f=1"), "tag with an empty key");
        assert_eq!(refused("cpu,t= f=1"), "tag `t` has an empty value");
        assert_eq!(refused("cpu,t=,u=1 f=1"), "tag `t` has an empty value");
        assert!(refused("cpu,t=a=b f=1").contains("unescaped `=`"));
        assert_eq!(refused("cpu f"), "field `f` has no value");
        assert_eq!(refused("cpu f="), "field `f` has no value");
        assert_eq!(refused("cpu f= 1"), "field `f` has no value");
        assert_eq!(refused("cpu f=,g=1"), "field `f` has no value");
        assert_eq!(refused("cpu f,g=1"), "field `f` has no value");
        assert_eq!(refused("cpu =1"), "field with an empty key");
        assert_eq!(refused("cpu f=1,,g=2"), "field with an empty key");
        assert!(refused("cpu f=1,").contains("empty key"));
        assert!(refused("cpu f=1, 5").contains("empty key"));
        assert_eq!(
            refused(r#"cpu temp="abc"#),
            "field `temp` has an unterminated string"
        );
        assert_eq!(
            refused(r#"cpu temp="abc\""#),
            "field `temp` has an unterminated string"
        );
        assert!(refused(r#"cpu s="a"b"#).contains("after its closing quote"));
    }

    #[test]
    fn timestamps_at_a_coarser_precision_are_converted_or_refused() {
        let buf = b"m v=1 1700000000\nm v=2\nm v=3 9300000000\nm v=4 -5";
        let (points, errors) = parse_lines_in(buf, -7, 1_000_000_000);
        let times: Vec<i64> = points.iter().map(|p| p.timestamp).collect();
        assert_eq!(times, [1_700_000_000_000_000_000, -7, -5_000_000_000]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 2);
        assert!(
            errors[0].1.reason.contains("out of range"),
            "{}",
            errors[0].1.reason
        );
    }

    #[test]
    fn timestamps_of_every_length_parse_exactly() {
        for len in 1..=19 {
            for lead in b'1'..=b'9' {
                let text: Vec<u8> = (0..len)
                    .map(|k| {
                        if k == 0 {
                            lead
                        } else {
                            b'0' + ((k * 7 + len) % 10) as u8
                        }
                    })
                    .collect();
                let want: u64 = std::str::from_utf8(&text).unwrap().parse().unwrap();
                assert_eq!(digits_value(&text), want, "{text:?}");
            }
        }
        assert_eq!(digits_value(b"0000000000000000001"), 1);
        assert_eq!(
            digits_value(b"9999999999999999999"),
            9_999_999_999_999_999_999
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(ok("m f=1 0").timestamp, 0);
        assert_eq!(ok("m f=1 -1").timestamp, -1);
        assert_eq!(ok("m f=1 123").timestamp, 123);
        assert_eq!(ok("m f=1 9223372036854775806").timestamp, i64::MAX - 1);
        assert_eq!(ok("m f=1 -9223372036854775806").timestamp, i64::MIN + 2);
        assert_eq!(refused("m f=1 12x"), "invalid timestamp `12x`");
        for t in ["1.5", "+1", "-", "1e9", "0x10"] {
            assert_eq!(
                refused(&format!("m f=1 {t}")),
                format!("invalid timestamp `{t}`")
            );
        }
        for t in [
            "9223372036854775807",
            "-9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(
                refused(&format!("m f=1 {t}")).contains("out of range"),
                "{t}"
            );
        }
        assert_eq!(
            refused("m f=1 123 456"),
            "unexpected text after the timestamp: `456`"
        );
        assert!(refused("m f=1 123 x").contains("after the timestamp"));
    }

    #[test]
    fn blanks_are_normalised() {
        let p = ok(" \tcpu,h=a   f=1,g=2  \t 42 \t ");
        assert_eq!(p.line, "cpu,h=a f=1,g=2");
        assert_eq!(p.timestamp, 42);
        assert_eq!(ok("cpu f=1   ").line, "cpu f=1");
        assert_eq!(ok("cpu f=1 \t7").timestamp, 7);
        // A tab inside a name is an ordinary character.
        assert_eq!(ok("c\tpu f=1").series(), "c\tpu");
    }

    #[test]
    fn parse_lines_indexes() {
        let buf = b"cpu f=1 1\r\n\n# comment\n  \t\r\ncpu f=x\r\n  # indented comment\nmem,h=b,a=c g=2i 2\n\xff\xfe f=1\ncpu f=3";
        let (points, errors) = parse_lines(buf, TS);
        let lines: Vec<&str> = points.iter().map(|p| p.line.as_str()).collect();
        assert_eq!(lines, ["cpu f=1", "mem,a=c,h=b g=2i", "cpu f=3"]);
        assert_eq!(
            points.iter().map(|p| p.timestamp).collect::<Vec<_>>(),
            [1, 2, TS]
        );
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].0, 4);
        assert!(errors[0].1.reason.contains("invalid value `x`"));
        assert_eq!(errors[1].0, 7);
        assert!(errors[1].1.reason.contains("UTF-8"), "{}", errors[1].1);

        // Valid UTF-8 buffer (fast path), trailing newline, CRLF everywhere.
        let (points, errors) = parse_lines(b"a f=1\r\nb f=\r\n\r\nc f=2\r\n", 9);
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].line, "c f=2");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 1);
        assert!(parse_lines(b"", 0).0.is_empty());
        assert!(parse_lines(b"\n\n", 0).1.is_empty());
    }

    #[test]
    fn point_from_parts_escapes_and_sorts() {
        let tags = vec![
            ("zone".to_string(), "eu west".to_string()),
            ("host name".to_string(), "a,b=c".to_string()),
            ("back".to_string(), r"x\y\".to_string()),
        ];
        let fields = vec![
            ("temp c".to_string(), FieldValue::Float(21.5)),
            ("n=1".to_string(), FieldValue::Integer(-3)),
            ("u".to_string(), FieldValue::Unsigned(7)),
            ("ok".to_string(), FieldValue::Boolean(true)),
            ("no".to_string(), FieldValue::Boolean(false)),
            (
                "s".to_string(),
                FieldValue::Text(r#"say "hi" \o/, ok"#.to_string()),
            ),
            ("big".to_string(), FieldValue::Float(1e300)),
            ("small".to_string(), FieldValue::Float(-2.5e-9)),
            ("zero".to_string(), FieldValue::Float(-0.0)),
            ("whole".to_string(), FieldValue::Float(3.0)),
        ];
        let p = point_from_parts("my meas,x", &tags, &fields, Some(42), TS).unwrap();
        assert_eq!(
            p.line,
            r#"my\ meas\,x,back=x\y\\,host\ name=a\,b\=c,zone=eu\ west temp\ c=21.5,n\=1=-3i,u=7u,ok=true,no=false,s="say \"hi\" \\o/, ok",big=1e300,small=-2.5e-9,zero=-0,whole=3"#
        );
        assert_eq!(
            p.series(),
            r"my\ meas\,x,back=x\y\\,host\ name=a\,b\=c,zone=eu\ west"
        );
        assert_eq!(p.timestamp, 42);
        // What point_from_parts builds, parse_line keeps as is.
        let again = ok(&format!("{} {}", p.line, p.timestamp));
        assert_eq!(again, p);

        let p =
            point_from_parts("m", &[], &[("f".into(), FieldValue::Float(0.1))], None, 5).unwrap();
        assert_eq!(
            (p.line.as_str(), p.series_len, p.timestamp),
            ("m f=0.1", 1, 5)
        );
    }

    #[test]
    fn point_from_parts_refusals() {
        let f = vec![("f".to_string(), FieldValue::Integer(1))];
        let t = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(point_from_parts("", &[], &f, None, 0).is_err());
        assert!(point_from_parts("#m", &[], &f, None, 0).is_err());
        assert!(point_from_parts("m\nx", &[], &f, None, 0).is_err());
        assert!(point_from_parts("\tm", &[], &f, None, 0).is_err());
        let tab_key = vec![("\tf".to_string(), FieldValue::Integer(1))];
        assert!(point_from_parts("m", &[], &tab_key, None, 0).is_err());
        // A tab elsewhere is an ordinary character.
        let p = point_from_parts("m\tx", &t("\tk", "v"), &f, None, 0).unwrap();
        assert_eq!(parse_line(&p.line, 0), Ok(p));
        assert_eq!(
            point_from_parts("m", &[], &[], None, 0).unwrap_err().reason,
            "missing field set"
        );
        assert!(point_from_parts("m", &t("", "v"), &f, None, 0).is_err());
        assert_eq!(
            point_from_parts("m", &t("k", ""), &f, None, 0)
                .unwrap_err()
                .reason,
            "tag `k` has an empty value"
        );
        assert!(
            point_from_parts("m", &[], &[("".into(), FieldValue::Integer(1))], None, 0).is_err()
        );
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = point_from_parts("m", &[], &[("x".into(), FieldValue::Float(x))], None, 0);
            assert!(e.unwrap_err().reason.contains("not a finite number"));
        }
        let s = vec![("s".to_string(), FieldValue::Text("a\nb".into()))];
        assert!(point_from_parts("m", &[], &s, None, 0).is_err());
        assert!(point_from_parts("m", &[], &f, Some(i64::MAX), 0).is_err());
        assert!(point_from_parts("m", &[], &f, Some(i64::MIN), 0).is_err());
    }

    /// What `str::parse::<f64>` says, the reference for the range check.
    fn parses_finite(text: &str) -> bool {
        text.parse::<f64>().unwrap().is_finite()
    }

    fn range_verdict(text: &str) -> bool {
        match check_float(text.as_bytes()) {
            Ok(()) => true,
            Err(ScalarError::FloatRange) => false,
            Err(_) => panic!("`{text}` should be a valid float"),
        }
    }

    #[test]
    fn float_range_is_decided_like_f64_parsing() {
        let t = std::str::from_utf8(F64_OVERFLOW).unwrap();
        let cases = [
            "1.7976931348623157e308".to_string(),
            "1.7976931348623158e308".into(),
            "1.797693134862315807937289714053e308".into(),
            "1.797693134862315807937289714054e308".into(),
            format!("0.{t}e309"),
            format!("0.{}e309", &t[..t.len() - 1]),
            format!("0.{}1e309", &t[..t.len() - 1]),
            format!("-0.{t}0000e309"),
            t.to_string(),
            t[..308].to_string(),
            format!("000{}.9999", &t[..308]),
            "1e309".into(),
            "-1e309".into(),
            "0.1e310".into(),
            "0.000001e314".into(),
            "1e-400".into(),
            "0e999999999999999".into(),
            ".5e308".into(),
            "1e99999999999999999999".into(),
            "1e-99999999999999999999".into(),
        ];
        for c in &cases {
            assert_eq!(range_verdict(c), parses_finite(c), "{c}");
        }
    }

    proptest! {
        /// Around the threshold: its digits cut, bumped or padded, with
        /// the decimal point and the exponent moved.
        #[test]
        fn float_range_matches_f64_parsing_near_the_limit(
            keep in 1usize..60,
            bump in 0u8..3,
            tail in "[0-9]{0,5}",
            zeros in 0usize..4,
            shift in 0usize..6,
            sign in proptest::bool::ANY,
        ) {
            let t = std::str::from_utf8(F64_OVERFLOW).unwrap();
            let mut digits: Vec<u8> = t.as_bytes()[..keep].to_vec();
            let last = digits.len() - 1;
            digits[last] = match bump {
                0 => digits[last],
                1 => digits[last].saturating_sub(1).max(b'0'),
                _ => (digits[last] + 1).min(b'9'),
            };
            let digits = format!("{}{}{}", "0".repeat(zeros), String::from_utf8(digits).unwrap(), tail);
            let point = zeros + shift.min(keep);
            let exp = 309 - shift.min(keep) as i64;
            let text = format!(
                "{}{}.{}e{exp}",
                if sign { "-" } else { "" },
                &digits[..point],
                &digits[point..]
            );
            prop_assert_eq!(range_verdict(&text), parses_finite(&text), "{}", text);
        }
    }

    #[test]
    fn point_from_parts_round_trips_floats() {
        for x in [
            0.0,
            1.0,
            -1.5,
            0.1,
            123.456,
            1e-5,
            9.99e-6,
            1e15,
            1e16,
            1e17,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            let p =
                point_from_parts("m", &[], &[("x".into(), FieldValue::Float(x))], None, 0).unwrap();
            let text = &p.fields()[2..];
            assert_eq!(text.parse::<f64>().unwrap(), x, "{text}");
            assert_eq!(parse_line(&p.line, 0), Ok(p));
        }
    }
}
