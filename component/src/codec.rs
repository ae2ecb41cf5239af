//! Compact encoding of a batch of points for the backlog (one record body).
//!
//! Layout (version 1):
//!
//! ```text
//! version: u8 = 1
//! header (postcard): series: [str], field_lists: [[str]], points: varint
//! point stream, per point:
//!   series:  varint  0 = raw point (varint series_len, varint len, line bytes)
//!                    s = series[s - 1]
//!   ts:      zigzag varint, delta from the previous point's timestamp (first: from 0)
//!   fields:  varint  0 = raw field set (varint len, bytes)
//!                    l = field_lists[l - 1], then one value per key:
//!     tag 0x00..=0x1F  decimal: bit 4 = minus sign, bits 0..=3 = digits after
//!                      the point; varint mantissa (`-12.50` = neg, 2, 1250)
//!     tag 0x20 integer `Ni`, zigzag varint      tag 0x21 unsigned `Nu`, varint
//!     tag 0x22 string: varint len, bytes between the quotes
//!     tag 0x23 raw text: varint len, bytes
//!     tag 0x24..=0x2D boolean, by spelling (see BOOLEANS)
//! ```
//!
//! A value is stored in a typed form only when decoding reproduces its text
//! exactly (`1.0`, `-0.5` are decimals; `1.`, `.5`, `1e3`, `007` are raw), so
//! `decode_points(encode_points(p)) == p` byte for byte. Points that are not
//! well-formed (`series_len` not followed by a space, unsplittable field
//! set) are stored raw.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::line_protocol::{scan, STOP_NAME, STOP_STRING, STOP_VALUE};
use crate::point::Point;

/// Version byte at the start of every body this module writes.
pub const CODEC_VERSION: u8 = 1;

/// Why a record body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "undecodable backlog record: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

const TAG_DECIMAL_NEG: u8 = 0x10;
const TAG_DECIMAL_MAX: u8 = 0x1F;
const TAG_INTEGER: u8 = 0x20;
const TAG_UNSIGNED: u8 = 0x21;
const TAG_STRING: u8 = 0x22;
const TAG_RAW: u8 = 0x23;
const TAG_BOOLEAN: u8 = 0x24;
const BOOLEANS: [&str; 10] = [
    "t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE",
];
/// Most digits after the point a decimal tag can hold.
const MAX_SCALE: usize = 15;
/// Most digits in a decimal mantissa (every 19-digit number fits in u64).
const MAX_DIGITS: usize = 19;
/// Fewest stream bytes any point takes (series, ts, fields).
const MIN_POINT_BYTES: usize = 3;

/// The dictionaries, written once per record.
#[derive(Serialize, Deserialize)]
struct Header<'a> {
    /// Distinct series keys, in order of first use.
    #[serde(borrow)]
    series: Seq<&'a str>,
    /// Distinct field-key lists (keys escaped as in the line).
    #[serde(borrow)]
    field_lists: Seq<Seq<&'a str>>,
    /// Points in the stream.
    points: u64,
}

/// A sequence that does not preallocate from the length the input claims:
/// memory grows only with elements actually read.
#[derive(Serialize)]
#[serde(transparent)]
struct Seq<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SeqVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
            type Value = Seq<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T>, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Seq(v))
            }
        }
        d.deserialize_seq(SeqVisitor(PhantomData))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Append the encoding of `points` to `out`.
pub fn encode_points(points: &[Point], out: &mut Vec<u8>) {
    let mut series: Vec<&str> = Vec::new();
    let mut series_index: HashMap<&str, u32> = HashMap::new();
    let mut lists: Vec<Vec<&str>> = Vec::new();
    let mut list_index: HashMap<Vec<&str>, u32> = HashMap::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut values: Vec<&str> = Vec::new();
    let mut stream = Vec::with_capacity(points.len().saturating_mul(96));
    let mut prev_ts = 0i64;
    let mut prev_series = usize::MAX;
    let mut prev_list = usize::MAX;

    for p in points {
        let line = p.line.as_str();
        let sl = p.series_len as usize;
        if sl >= line.len() || line.as_bytes()[sl] != b' ' {
            put_varint(&mut stream, 0);
            put_varint(&mut stream, u64::from(p.series_len));
            put_bytes(&mut stream, line.as_bytes());
            put_varint(&mut stream, zigzag(p.timestamp.wrapping_sub(prev_ts)));
            prev_ts = p.timestamp;
            continue;
        }
        // `line[sl]` is an ASCII space, so both slices are on char boundaries.
        let (key, fields) = (&line[..sl], &line[sl + 1..]);
        let s = if prev_series < series.len() && series[prev_series] == key {
            prev_series
        } else {
            let next = series.len() as u32;
            let s = *series_index.entry(key).or_insert(next) as usize;
            if s == series.len() {
                series.push(key);
            }
            s
        };
        prev_series = s;
        put_varint(&mut stream, s as u64 + 1);
        put_varint(&mut stream, zigzag(p.timestamp.wrapping_sub(prev_ts)));
        prev_ts = p.timestamp;

        if !split_fields(fields, &mut keys, &mut values) {
            put_varint(&mut stream, 0);
            put_bytes(&mut stream, fields.as_bytes());
            continue;
        }
        let l = if prev_list < lists.len() && lists[prev_list] == keys {
            prev_list
        } else if let Some(&l) = list_index.get(keys.as_slice()) {
            l as usize
        } else {
            let l = lists.len();
            list_index.insert(keys.clone(), l as u32);
            lists.push(keys.clone());
            l
        };
        prev_list = l;
        put_varint(&mut stream, l as u64 + 1);
        for v in &values {
            put_value(&mut stream, v.as_bytes());
        }
    }

    let header = Header {
        series: Seq(series),
        field_lists: Seq(lists.into_iter().map(Seq).collect()),
        points: points.len() as u64,
    };
    out.push(CODEC_VERSION);
    // Serialising strings and sequences into a Vec cannot fail.
    *out = postcard::to_extend(&header, std::mem::take(out))
        .expect("postcard cannot fail writing to a Vec");
    out.extend_from_slice(&stream);
}

/// Split `k=v[,k=v...]` into keys and value tokens (escape- and
/// quote-aware, as parse_line reads them). False when the text does not
/// have that shape; joining keys and values with `=` and `,` gives back
/// `fields` exactly when true.
fn split_fields<'a>(fields: &'a str, keys: &mut Vec<&'a str>, values: &mut Vec<&'a str>) -> bool {
    keys.clear();
    values.clear();
    let b = fields.as_bytes();
    let n = b.len();
    let mut i = 0;
    loop {
        let ks = i;
        loop {
            i = scan(b, i, STOP_NAME);
            if i >= n {
                return false;
            }
            match b[i] {
                b'\\' => i += 2,
                b'=' => break,
                _ => i += 1,
            }
        }
        keys.push(&fields[ks..i]);
        i += 1;
        let vs = i;
        if i < n && b[i] == b'"' {
            i += 1;
            loop {
                i = scan(b, i, STOP_STRING);
                if i >= n {
                    return false;
                }
                if b[i] == b'"' {
                    break;
                }
                i += 2;
            }
            i += 1;
            if i < n && b[i] != b',' {
                return false;
            }
        } else {
            loop {
                i = scan(b, i, STOP_VALUE);
                if i >= n || b[i] == b',' {
                    break;
                }
                i += 1;
            }
        }
        values.push(&fields[vs..i]);
        if i >= n {
            return true;
        }
        i += 1;
    }
}

/// Append a typed value: a number in canonical form (no leading zeros, no
/// `-0i`, decimals `-?(0|[1-9]\d*)(\.\d{1,15})?` of at most 19 digits), a
/// string, a boolean spelling; anything else as raw text.
fn put_value(out: &mut Vec<u8>, v: &[u8]) {
    let n = v.len();
    match v.first() {
        Some(b'-' | b'0'..=b'9') => {
            let neg = v[0] == b'-';
            let ds = usize::from(neg);
            let mut i = ds;
            // Wrapping: only used when there are at most 19 digits.
            let mut m: u64 = 0;
            while i < n && v[i].is_ascii_digit() {
                m = m.wrapping_mul(10).wrapping_add(u64::from(v[i] - b'0'));
                i += 1;
            }
            let int_len = i - ds;
            let canonical = int_len > 0 && int_len <= MAX_DIGITS && (v[ds] != b'0' || int_len == 1);
            if canonical {
                if i == n {
                    out.push(if neg { TAG_DECIMAL_NEG } else { 0 });
                    put_varint(out, m);
                    return;
                }
                match v[i] {
                    b'.' => {
                        i += 1;
                        let fs = i;
                        while i < n && v[i].is_ascii_digit() {
                            m = m.wrapping_mul(10).wrapping_add(u64::from(v[i] - b'0'));
                            i += 1;
                        }
                        let scale = i - fs;
                        if i == n
                            && scale > 0
                            && scale <= MAX_SCALE
                            && int_len + scale <= MAX_DIGITS
                        {
                            out.push(if neg { TAG_DECIMAL_NEG } else { 0 } | scale as u8);
                            put_varint(out, m);
                            return;
                        }
                    }
                    b'i' if i + 1 == n => {
                        let value = if neg {
                            // `-0i` would come back as `0i`.
                            (m != 0).then(|| 0i64.checked_sub_unsigned(m)).flatten()
                        } else {
                            i64::try_from(m).ok()
                        };
                        if let Some(x) = value {
                            out.push(TAG_INTEGER);
                            put_varint(out, zigzag(x));
                            return;
                        }
                    }
                    b'u' if i + 1 == n && !neg => {
                        out.push(TAG_UNSIGNED);
                        put_varint(out, m);
                        return;
                    }
                    _ => {}
                }
            }
        }
        Some(b'"') if n >= 2 && v[n - 1] == b'"' => {
            out.push(TAG_STRING);
            put_bytes(out, &v[1..n - 1]);
            return;
        }
        Some(b't' | b'T' | b'f' | b'F') => {
            if let Some(k) = BOOLEANS.iter().position(|s| s.as_bytes() == v) {
                out.push(TAG_BOOLEAN + k as u8);
                return;
            }
        }
        _ => {}
    }
    out.push(TAG_RAW);
    put_bytes(out, v);
}

/// Cursor over the point stream; errors are static and located by the caller.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

type ReadResult<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
    #[inline]
    fn byte(&mut self) -> ReadResult<u8> {
        let c = *self.b.get(self.pos).ok_or("unexpected end of data")?;
        self.pos += 1;
        Ok(c)
    }

    #[inline]
    fn varint(&mut self) -> ReadResult<u64> {
        let first = self.byte()?;
        if first < 0x80 {
            return Ok(u64::from(first));
        }
        let mut v = u64::from(first & 0x7F);
        let mut shift = 7;
        loop {
            let c = self.byte()?;
            if shift == 63 && c > 1 {
                return Err("varint overflows 64 bits");
            }
            v |= u64::from(c & 0x7F) << shift;
            if c < 0x80 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn bytes(&mut self) -> ReadResult<&'a [u8]> {
        let len = self.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|&end| end <= self.b.len())
            .ok_or("length runs past the end of data")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// Room for any number text: sign, 20 digits (or 16 with a 15-digit
/// fraction), point or suffix.
pub(crate) const NUM_BUF: usize = 24;

/// Append `NUM_BUF` bytes to `out` for `write` to fill, then keep the
/// `len` it returns. Writing in place avoids a copy out of a scratch buffer.
#[inline(always)]
fn push_number(out: &mut Vec<u8>, write: impl FnOnce(&mut [u8; NUM_BUF]) -> usize) {
    let start = out.len();
    out.extend_from_slice(&[0u8; NUM_BUF]);
    let buf: &mut [u8; NUM_BUF] = (&mut out[start..])
        .try_into()
        .expect("NUM_BUF bytes were just added");
    let len = write(buf);
    out.truncate(start + len);
}

fn decimal_digits(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Write the last `count` decimal digits of `v` ending before `buf[end]`;
/// returns what is left of `v`. Eight digits per step (one division, no
/// division per digit: wasm has no cheap one).
#[inline(always)]
fn write_digits(buf: &mut [u8; NUM_BUF], mut end: usize, mut v: u64, mut count: usize) -> u64 {
    while count >= 8 {
        let text = crate::swar::eight_digits((v % 100_000_000) as u32).to_le_bytes();
        let at: &mut [u8; 8] = (&mut buf[end - 8..end]).try_into().expect("8 bytes");
        *at = text;
        v /= 100_000_000;
        end -= 8;
        count -= 8;
    }
    if count > 0 {
        let unit = 10u64.pow(count as u32);
        let text = crate::swar::eight_digits((v % unit) as u32);
        v /= unit;
        for k in 0..count {
            buf[end - 1 - k] = (text >> (8 * (7 - k))) as u8;
        }
    }
    v
}

/// Append `[-]digits<suffix>`.
pub(crate) fn push_integer(out: &mut Vec<u8>, neg: bool, v: u64, suffix: u8) {
    push_number(out, |buf| {
        let sign = usize::from(neg);
        let digits = decimal_digits(v);
        buf[0] = b'-';
        write_digits(buf, sign + digits, v, digits);
        buf[sign + digits] = suffix;
        sign + digits + 1
    });
}

/// Append `[-]int[.frac]` with `scale` (at most 15) digits after the point.
fn push_decimal(out: &mut Vec<u8>, neg: bool, m: u64, scale: usize) {
    push_number(out, |buf| {
        let sign = usize::from(neg);
        let total = decimal_digits(m).max(scale + 1);
        buf[0] = b'-';
        if scale == 0 {
            write_digits(buf, sign + total, m, total);
            sign + total
        } else {
            let end = sign + total + 1;
            let int_part = write_digits(buf, end, m, scale);
            buf[end - scale - 1] = b'.';
            write_digits(buf, end - scale - 1, int_part, total - scale);
            end
        }
    });
}

fn read_value(r: &mut Reader<'_>, out: &mut Vec<u8>) -> ReadResult<()> {
    let tag = r.byte()?;
    match tag {
        0..=TAG_DECIMAL_MAX => {
            let m = r.varint()?;
            push_decimal(out, tag & TAG_DECIMAL_NEG != 0, m, usize::from(tag & 0x0F));
        }
        TAG_INTEGER => {
            let i = unzigzag(r.varint()?);
            push_integer(out, i < 0, i.unsigned_abs(), b'i');
        }
        TAG_UNSIGNED => push_integer(out, false, r.varint()?, b'u'),
        TAG_STRING => {
            out.push(b'"');
            out.extend_from_slice(r.bytes()?);
            out.push(b'"');
        }
        TAG_RAW => out.extend_from_slice(r.bytes()?),
        _ => {
            let spelling = BOOLEANS
                .get(usize::from(tag - TAG_BOOLEAN))
                .ok_or("unknown value tag")?;
            out.extend_from_slice(spelling.as_bytes());
        }
    }
    Ok(())
}

/// Decode what `encode_points` wrote.
pub fn decode_points(bytes: &[u8]) -> Result<Vec<Point>, CodecError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| CodecError("empty record body".into()))?;
    if version != CODEC_VERSION {
        return Err(CodecError(format!(
            "unknown codec version {version} (this build reads version {CODEC_VERSION})"
        )));
    }
    let (header, stream): (Header<'_>, &[u8]) = postcard::take_from_bytes(body)
        .map_err(|e| CodecError(format!("bad dictionary header: {e}")))?;
    let mut r = Reader { b: stream, pos: 0 };
    let stream_start = bytes.len() - stream.len();
    decode_stream(&header, &mut r)
        .map_err(|msg| CodecError(format!("{msg} at byte {}", stream_start + r.pos)))
}

fn decode_stream(header: &Header<'_>, r: &mut Reader<'_>) -> ReadResult<Vec<Point>> {
    let series = &header.series.0;
    let lists = &header.field_lists.0;
    let cap = usize::try_from(header.points)
        .unwrap_or(usize::MAX)
        .min(r.b.len() / MIN_POINT_BYTES);
    let mut points = Vec::with_capacity(cap);
    let mut scratch: Vec<u8> = Vec::new();
    let mut ts = 0i64;
    for _ in 0..header.points {
        let s = r.varint()?;
        if s == 0 {
            let series_len = u32::try_from(r.varint()?).map_err(|_| "series length too large")?;
            let line = std::str::from_utf8(r.bytes()?).map_err(|_| "line is not UTF-8")?;
            ts = ts.wrapping_add(unzigzag(r.varint()?));
            points.push(Point {
                line: line.to_owned(),
                series_len,
                timestamp: ts,
            });
            continue;
        }
        let key = usize::try_from(s - 1)
            .ok()
            .and_then(|s| series.get(s))
            .ok_or("series index out of range")?;
        ts = ts.wrapping_add(unzigzag(r.varint()?));
        scratch.clear();
        scratch.extend_from_slice(key.as_bytes());
        scratch.push(b' ');
        let l = r.varint()?;
        if l == 0 {
            scratch.extend_from_slice(r.bytes()?);
        } else {
            let keys = usize::try_from(l - 1)
                .ok()
                .and_then(|l| lists.get(l))
                .ok_or("field list index out of range")?;
            for (n, k) in keys.0.iter().enumerate() {
                if n > 0 {
                    scratch.push(b',');
                }
                scratch.extend_from_slice(k.as_bytes());
                scratch.push(b'=');
                read_value(r, &mut scratch)?;
            }
        }
        let line = String::from_utf8(scratch.clone()).map_err(|_| "line is not UTF-8")?;
        points.push(Point {
            line,
            series_len: u32::try_from(key.len()).map_err(|_| "series key too long")?,
            timestamp: ts,
        });
    }
    if r.pos != r.b.len() {
        return Err("unexpected bytes after the last point");
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line_protocol::parse_line;

    fn encode(points: &[Point]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_points(points, &mut out);
        out
    }

    fn round_trip(points: &[Point]) -> Vec<u8> {
        let bytes = encode(points);
        let back = decode_points(&bytes).expect("decodes");
        assert_eq!(back.len(), points.len());
        for (a, b) in back.iter().zip(points) {
            assert_eq!(a, b);
            assert_eq!(a.line.capacity(), a.line.len(), "exact capacity");
        }
        bytes
    }

    /// Small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// `n` points like a metrics agent sends: 3 tags, 20 fields (16 floats
    /// with 2 decimals, 4 integers), about 575 bytes of line protocol each.
    pub(crate) fn realistic_points(n: usize) -> Vec<Point> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let base = 1_700_000_000_000_000_000i64;
        (0..n)
            .map(|i| {
                let host = rng.below(20);
                let mut line = format!(
                    "system_metrics,datacenter=eu-west-1a,host=server-{host:03}.prod.example.com,rack=r{:02}",
                    host % 8
                );
                for f in 0..20 {
                    line.push(if f == 0 { ' ' } else { ',' });
                    if f % 5 == 4 {
                        let v = rng.below(100_000);
                        line.push_str(&format!("sensor_count_{f:02}={v}i"));
                    } else {
                        let v = rng.below(100_000) as f64 / 100.0;
                        line.push_str(&format!("sensor_value_{f:02}={v:.2}"));
                    }
                }
                let ts = base + i as i64 * 100_000_000 + rng.below(1_000_000) as i64;
                parse_line(&format!("{line} {ts}"), 0).expect("valid line")
            })
            .collect()
    }

    fn lp(line: &str) -> Point {
        parse_line(line, 0).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn varied_points() -> Vec<Point> {
        let mut points: Vec<Point> = [
            "cpu,host=a v=1 1",
            "cpu,host=a v=1.0,w=-0.0,x=0,y=-0,z=1e3 2",
            "cpu,host=b v=1.,w=.5,x=-.5,y=1E3,z=1.5e-3 -5",
            "cpu,host=b v=007,w=00.5,x=0.05,y=123456789.123456789,z=99999999999999999999 9223372036854775806",
            "cpu,host=b v=1.1234567890123456,w=12345678901234567890.5 -9223372036854775806",
            "cpu,host=b v=9223372036854775807i,w=-9223372036854775808i,x=0i,y=-0i,z=007i",
            "cpu,host=b v=18446744073709551615u,w=0u,x=01u",
            "cpu,host=b a=t,b=T,c=true,d=True,e=TRUE,f=f,g=F,h=false,i=False,j=FALSE",
            r#"my\ meas,tag\ key=va\,l\=ue s="say \"hi\", a=b \\",t="",u="ünï ✓ \\\\" 0"#,
            r#"ünï,tåg=✓ f\,k\=x\ y=1,g\\=2 17"#,
            "cpu,host=a v=2 3",
            "mem,host=a free=3i,used=4i",
        ]
        .iter()
        .map(|l| lp(l))
        .collect();
        // Hand-made points outside parse_line's output are kept too.
        let odd = |line: &str, series_len: u32, timestamp: i64| Point {
            line: line.to_string(),
            series_len,
            timestamp,
        };
        points.extend([
            odd("no_space_here", 3, i64::MIN),
            odd("m f=1", 40, i64::MAX),
            odd("m f=1", 0, 0),
            odd("m ", 1, 1),
            odd("m k", 1, 2),
            odd("m k=\"open", 1, 3),
            odd("m k=\"a\"b,c=1", 1, 4),
            odd("m k=1,", 1, 5),
            odd("m =,=\"\",x=", 1, 6),
            odd("", 0, 7),
            odd("m x=-,y=--1,z=1i5,w=-i,u=u,v=\"", 1, 8),
        ]);
        points
    }

    #[test]
    fn numbers_are_written_like_format() {
        let mut values: Vec<u64> = (0..=20)
            .flat_map(|e| {
                let p = 10u64.saturating_pow(e);
                [p.saturating_sub(1), p, p.saturating_add(1)]
            })
            .collect();
        values.extend([
            u64::MAX,
            i64::MAX as u64,
            1_700_000_000_123_456_789,
            12_345_678,
        ]);
        values.extend((0..100_000u64).map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (k % 64)));
        for v in values {
            for neg in [false, true] {
                let mut out = b"x".to_vec();
                push_integer(&mut out, neg, v, b'i');
                let sign = if neg { "-" } else { "" };
                assert_eq!(out, format!("x{sign}{v}i").as_bytes(), "{v}");
            }
            for scale in [1, 2, 7, 8, 9, 15] {
                let mut out = Vec::new();
                let m = v % 10u64.pow(16);
                push_decimal(&mut out, false, m, scale);
                let digits = format!("{m:0>width$}", width = scale + 1);
                let (int, frac) = digits.split_at(digits.len() - scale);
                assert_eq!(out, format!("{int}.{frac}").as_bytes(), "{m} scale {scale}");
            }
        }
    }

    #[test]
    fn exact_round_trip() {
        round_trip(&varied_points());
        round_trip(&realistic_points(50));
        round_trip(&[]);
        // Every pair order, to exercise dictionary reuse and ts deltas.
        let v = varied_points();
        let mut shuffled: Vec<Point> = v.iter().rev().cloned().collect();
        shuffled.extend(v.iter().cloned());
        round_trip(&shuffled);
    }

    #[test]
    fn values_take_their_compact_form_only_when_exact() {
        let cases: &[(&str, u8)] = &[
            ("231.47", 2),
            ("-0.5", TAG_DECIMAL_NEG | 1),
            ("12", 0),
            ("0", 0),
            ("-0", TAG_DECIMAL_NEG),
            ("1.0", 1),
            ("0.05", 2),
            ("9999999999999999999", 0),
            ("0.123456789012345", 15),
            ("42i", TAG_INTEGER),
            ("-9223372036854775808i", TAG_INTEGER),
            ("7u", TAG_UNSIGNED),
            ("\"x\"", TAG_STRING),
            ("True", TAG_BOOLEAN + 3),
            ("FALSE", TAG_BOOLEAN + 9),
            // Not reproducible from a typed form: kept as text.
            ("1.", TAG_RAW),
            (".5", TAG_RAW),
            ("1e3", TAG_RAW),
            ("007", TAG_RAW),
            ("00.5", TAG_RAW),
            ("-0i", TAG_RAW),
            ("01i", TAG_RAW),
            ("-1u", TAG_RAW),
            ("10000000000000000000", TAG_RAW),
            ("0.1234567890123456", TAG_RAW),
            ("9223372036854775808i", TAG_RAW),
            ("18446744073709551615u", TAG_RAW),
            ("tRUE", TAG_RAW),
            ("", TAG_RAW),
        ];
        for &(text, tag) in cases {
            let mut out = Vec::new();
            put_value(&mut out, text.as_bytes());
            assert_eq!(out[0], tag, "{text}");
            let mut back = Vec::new();
            read_value(&mut Reader { b: &out, pos: 0 }, &mut back).unwrap();
            assert_eq!(back, text.as_bytes());
        }
        let mut out = Vec::new();
        put_value(&mut out, b"231.47");
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn random_lines_parse_idempotently_and_round_trip() {
        let alphabet: Vec<char> = "ab ,=\\\".-1i5u0tTfe#\té✓".chars().collect();
        let mut rng = Rng(42);
        let mut accepted = Vec::new();
        let values = [
            "1", "-1.5", "1.", ".5", "1e3", "-0", "007", "12i", "-0i", "7u", "t", "FALSE", "\"\"",
            "\"a b\"", "1.2.3", "x",
        ];
        for k in 0..200_000 {
            let word = |rng: &mut Rng| -> String {
                let len = 1 + rng.below(4) as usize;
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                    .collect()
            };
            let line = if k % 2 == 0 {
                // Unstructured text.
                let len = 1 + rng.below(6) as usize;
                (0..len).map(|_| word(&mut rng)).collect()
            } else {
                // Line-shaped text with random pieces.
                let mut line = word(&mut rng);
                for _ in 0..rng.below(4) {
                    line += &format!(",{}={}", word(&mut rng), word(&mut rng));
                }
                for f in 0..1 + rng.below(3) {
                    let value = if rng.below(3) == 0 {
                        word(&mut rng)
                    } else {
                        values[rng.below(values.len() as u64) as usize].to_string()
                    };
                    let sep = if f == 0 { ' ' } else { ',' };
                    line += &format!("{sep}{}={value}", word(&mut rng));
                }
                if rng.below(2) == 0 {
                    line += &format!(" {}", rng.next() as i64 / 4);
                }
                line
            };
            let Ok(p) = parse_line(&line, 99) else {
                continue;
            };
            assert_eq!(p.line.as_bytes()[p.series_len as usize], b' ', "{line:?}");
            let again = parse_line(&format!("{} {}", p.line, p.timestamp), 0);
            assert_eq!(again.as_ref(), Ok(&p), "{line:?}");
            accepted.push(p);
        }
        assert!(accepted.len() > 5_000, "only {} accepted", accepted.len());
        round_trip(&accepted);
    }

    #[test]
    fn appends_to_existing_output() {
        let points = varied_points();
        let mut out = vec![0xAA, 0xBB];
        encode_points(&points, &mut out);
        assert_eq!(&out[..2], &[0xAA, 0xBB]);
        assert_eq!(decode_points(&out[2..]).unwrap(), points);
    }

    #[test]
    fn refuses_unknown_version_and_empty_body() {
        let mut bytes = encode(&varied_points());
        bytes[0] = 2;
        let e = decode_points(&bytes).unwrap_err();
        assert!(e.to_string().contains("unknown codec version 2"), "{e}");
        assert!(decode_points(&[]).unwrap_err().0.contains("empty"));
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = encode(&varied_points());
        bytes.push(0);
        assert!(decode_points(&bytes)
            .unwrap_err()
            .0
            .contains("after the last point"));
    }

    #[test]
    fn damaged_bodies_never_panic() {
        let mut points = varied_points();
        points.extend(realistic_points(3));
        let bytes = encode(&points);
        for len in 0..bytes.len() {
            assert!(
                decode_points(&bytes[..len]).is_err(),
                "prefix {len} decoded"
            );
        }
        let mut damaged = bytes.clone();
        for i in 0..bytes.len() {
            for bit in [0x01, 0x08, 0x40, 0x80] {
                damaged[i] ^= bit;
                let _ = decode_points(&damaged);
                damaged[i] ^= bit;
            }
            for b in [0x00, 0x7F, 0xFF] {
                damaged[i] = b;
                let _ = decode_points(&damaged);
                damaged[i] = bytes[i];
            }
        }
        let mut rng = Rng(7);
        for len in 0..2000 {
            let mut junk: Vec<u8> = (0..len % 64).map(|_| rng.next() as u8).collect();
            if let Some(first) = junk.first_mut() {
                *first = CODEC_VERSION;
            }
            let _ = decode_points(&junk);
        }
    }

    #[test]
    fn huge_claimed_counts_do_not_allocate() {
        // Header claiming 2^60 series/lists/points with no data behind it.
        for body in [
            vec![
                CODEC_VERSION,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x10,
            ],
            vec![
                CODEC_VERSION,
                0,
                0,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                0xFF,
                0x0F,
            ],
            vec![CODEC_VERSION, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 1, 0, 0],
        ] {
            assert!(decode_points(&body).is_err());
        }
    }

    #[test]
    fn bytes_per_point_of_realistic_batches() {
        let points = realistic_points(1000);
        let lp_bytes: usize = points.iter().map(|p| p.line.len() + 20).sum();
        let bytes = round_trip(&points);
        let per_point = bytes.len() as f64 / points.len() as f64;
        println!(
            "codec: {per_point:.1} bytes/point for 1000 realistic points ({:.0} bytes/point of line protocol)",
            lp_bytes as f64 / points.len() as f64
        );
        assert!(per_point <= 146.0, "{per_point} bytes/point");
    }

    /// Rough native speeds: `cargo test --release -p influx-sink-component
    /// --lib codec::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        use std::time::Instant;
        let points = realistic_points(1000);
        let mut text = Vec::new();
        for p in &points {
            p.write_line_protocol(&mut text);
        }
        let rounds = 200;
        let t = Instant::now();
        let mut n = 0;
        for _ in 0..rounds {
            n += crate::line_protocol::parse_lines(&text, 0).0.len();
        }
        let parse = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        let mut out = Vec::new();
        for _ in 0..rounds {
            out.clear();
            encode_points(&points, &mut out);
        }
        let enc = t.elapsed().as_nanos() as f64 / (rounds * points.len()) as f64;
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(decode_points(&out).unwrap());
        }
        let dec = t.elapsed().as_nanos() as f64 / (rounds * points.len()) as f64;
        println!(
            "{} B/line: parse_lines {parse:.0} ns/point, encode {enc:.0} ns/point ({:.2} M/s), decode {dec:.0} ns/point ({:.2} M/s)",
            text.len() / points.len(),
            1e3 / enc,
            1e3 / dec
        );
    }
}
