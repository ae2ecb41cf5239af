//! Eight bytes at a time in a `u64` (SWAR), for the scans of line protocol
//! and of the deflate encoder. Wasm32 has 64-bit integers but core's
//! byte searches step by `usize`, four bytes there.

pub(crate) const LOW_BITS: u64 = 0x0101_0101_0101_0101;
pub(crate) const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The eight bytes at `i`, little-endian. (A fixed-size copy: at
/// opt-level "s" `copy_from_slice` stays a call to memcpy.)
#[inline(always)]
pub(crate) fn word(data: &[u8], i: usize) -> u64 {
    let w: [u8; 8] = data[i..i + 8].try_into().unwrap_or_default();
    u64::from_le_bytes(w)
}

/// High bit set in each byte of `w` equal to `c`. The lowest set bit is
/// exact; bits above it may be spurious (borrow), which is all the scans
/// use.
#[inline(always)]
pub(crate) fn bytes_equal(w: u64, c: u8) -> u64 {
    let x = w ^ (LOW_BITS * u64::from(c));
    x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS
}

/// High bit set in each byte of `w` below `n` (≤ 128); as with
/// [`bytes_equal`], only the lowest set bit is always right.
#[inline(always)]
pub(crate) fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(LOW_BITS * u64::from(n)) & !w & HIGH_BITS
}

/// Index of the byte a nonzero mask from the functions above points at.
#[inline(always)]
pub(crate) fn first(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}

/// First `c` at or after `i` in `b`, or `b.len()`.
#[inline(always)]
pub(crate) fn find_byte(b: &[u8], mut i: usize, c: u8) -> usize {
    while i + 8 <= b.len() {
        let m = bytes_equal(word(b, i), c);
        if m != 0 {
            return i + first(m);
        }
        i += 8;
    }
    while i < b.len() && b[i] != c {
        i += 1;
    }
    i
}

/// The value of eight ASCII digits, the first in the lowest byte of `w`
/// (three multiplies instead of eight).
#[inline(always)]
pub(crate) fn parse_eight_digits(w: u64) -> u64 {
    let v = w.wrapping_sub(LOW_BITS * u64::from(b'0'));
    let v = (v.wrapping_mul(10) + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_ffff_0000_ffff;
    (v.wrapping_mul(10_000) + (v >> 32)) & 0xffff_ffff
}

/// `v` (< 10^8) as eight ASCII digits with leading zeros, the first in
/// the lowest byte: lanes split in halves by reciprocal multiplies, with no
/// division.
#[inline(always)]
pub(crate) fn eight_digits(v: u32) -> u64 {
    debug_assert!(v < 100_000_000);
    // Two 32-bit lanes of four digits each, the high ones in the low lane.
    let x = u64::from(v / 10_000) | u64::from(v % 10_000) << 32;
    // Each lane (< 10^4) into 16-bit lanes (< 100): x / 100 is exactly
    // x * 10486 >> 20 there.
    let hundreds = ((x * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let x = hundreds | (x - hundreds * 100) << 16;
    // Each 16-bit lane (< 100) into bytes: x / 10 is x * 103 >> 10 there.
    let tens = ((x * 103) >> 10) & 0x000f_000f_000f_000f;
    let x = tens | (x - tens * 10) << 8;
    x | (LOW_BITS * u64::from(b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_digits_both_ways() {
        let mut values: Vec<u32> = (0..200_000).collect();
        values.extend((0..100_000_000u32).step_by(9_973));
        values.extend(99_999_000..100_000_000);
        for v in values {
            let text = format!("{v:08}");
            assert_eq!(eight_digits(v).to_le_bytes(), text.as_bytes(), "{v}");
            let w = u64::from_le_bytes(text.as_bytes().try_into().unwrap());
            assert_eq!(parse_eight_digits(w), u64::from(v), "{text}");
        }
    }

    #[test]
    fn find_byte_agrees_with_a_plain_search() {
        // Both searches: eight bytes per step here, sixteen in simd.rs.
        let hay = b"ab\ncdefghij\nklmnopqrstuvwxyz0123456789\n\nABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
        for find in [find_byte, crate::simd::find_byte] {
            for from in 0..=hay.len() {
                let want = hay[from..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(hay.len(), |j| from + j);
                assert_eq!(find(hay, from, b'\n'), want, "from {from}");
            }
            assert_eq!(find(b"no newline here at all", 0, b'\n'), 22);
        }
    }

    #[test]
    fn masks_point_at_the_first_match() {
        let w = word(b"a=b,c d\xff", 0);
        assert_eq!(first(bytes_equal(w, b',')), 3);
        assert_eq!(first(bytes_equal(w, b'=')), 1);
        assert_eq!(first(bytes_below(w, b'-')), 3);
        assert_eq!(bytes_equal(w, b'\n'), 0);
    }
}
