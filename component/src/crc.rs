//! CRC-32C (backlog records and cursor slots) and CRC-32 (gzip trailers),
//! slice-by-16: sixteen independent lookups per step, where slice-by-8's
//! step waits on the previous one twice as often (wasm has no carry-less
//! multiply to do better). The 16 KiB tables are built on first use
//! instead of being stored in the component, which ships to small devices.
//! Natively, CRC-32C uses the CPU's instructions through the `crc32c`
//! crate; the tests check that both give the same values.

use std::sync::OnceLock;

/// Reversed polynomials.
#[cfg(any(target_arch = "wasm32", test))]
const CASTAGNOLI: u32 = 0x82f6_3b78;
const IEEE: u32 = 0xedb8_8320;

/// Bytes per step.
const SLICES: usize = 16;

struct Table([[u32; 256]; SLICES]);

impl Table {
    fn new(poly: u32) -> Box<Table> {
        let mut t = Box::new(Table([[0; 256]; SLICES]));
        for n in 0..256 {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
            }
            t.0[0][n] = c;
        }
        for n in 0..256 {
            for k in 1..SLICES {
                let prev = t.0[k - 1][n];
                t.0[k][n] = t.0[0][(prev & 0xff) as usize] ^ (prev >> 8);
            }
        }
        t
    }

    fn checksum(&self, data: &[u8]) -> u32 {
        let t = &self.0;
        let at = |k: usize, x: u32| t[k][(x & 0xff) as usize];
        // The four bytes of `x` as the last of a step `k` bytes from its end.
        let four = |k: usize, x: u32| {
            at(k, x >> 24) ^ at(k + 1, x >> 16) ^ at(k + 2, x >> 8) ^ at(k + 3, x)
        };
        let le = |c: &[u8], i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
        let mut crc = !0u32;
        let mut chunks = data.chunks_exact(SLICES);
        for c in &mut chunks {
            crc = four(12, crc ^ le(c, 0))
                ^ four(8, le(c, 4))
                ^ four(4, le(c, 8))
                ^ four(0, le(c, 12));
        }
        let mut rest = chunks.remainder();
        if rest.len() >= 8 {
            crc = four(4, crc ^ le(rest, 0)) ^ four(0, le(rest, 4));
            rest = &rest[8..];
        }
        for &b in rest {
            crc = at(0, crc ^ u32::from(b)) ^ (crc >> 8);
        }
        !crc
    }
}

fn table(cell: &'static OnceLock<Box<Table>>, poly: u32) -> &'static Table {
    cell.get_or_init(|| Table::new(poly))
}

#[cfg(any(target_arch = "wasm32", test))]
static CASTAGNOLI_TABLE: OnceLock<Box<Table>> = OnceLock::new();
static IEEE_TABLE: OnceLock<Box<Table>> = OnceLock::new();

/// CRC-32C (Castagnoli).
#[cfg(target_arch = "wasm32")]
pub fn crc32c(data: &[u8]) -> u32 {
    table(&CASTAGNOLI_TABLE, CASTAGNOLI).checksum(data)
}

/// CRC-32C (Castagnoli), with the CPU's instructions where it has them.
#[cfg(not(target_arch = "wasm32"))]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// CRC-32 (IEEE 802.3), as the gzip trailer needs.
pub fn crc32(data: &[u8]) -> u32 {
    table(&IEEE_TABLE, IEEE).checksum(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn check_values() {
        // The standard check inputs of both CRCs.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            table(&CASTAGNOLI_TABLE, CASTAGNOLI).checksum(b"123456789"),
            0xe306_9283
        );
        assert_eq!(crc32(b""), 0);
    }

    /// Bit by bit, as the definition goes.
    fn bitwise(poly: u32, data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    poly ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn every_length_and_alignment_matches_the_definition() {
        let data: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..16 {
            for len in 0..64 {
                let d = &data[start..start + len];
                assert_eq!(crc32(d), bitwise(IEEE, d), "crc32 at {start}, {len} bytes");
                assert_eq!(
                    table(&CASTAGNOLI_TABLE, CASTAGNOLI).checksum(d),
                    bitwise(CASTAGNOLI, d),
                    "crc32c at {start}, {len} bytes"
                );
            }
        }
        // Long inputs: many steps, then every kind of rest.
        for len in [1000, 1007, 1008, 1015, 1016, 1017] {
            let d = &data.repeat(6)[3..3 + len];
            assert_eq!(crc32(d), bitwise(IEEE, d), "{len} bytes");
        }
    }

    proptest! {
        #[test]
        fn crc32_matches_the_definition(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(crc32(&data), bitwise(IEEE, &data));
        }

        #[test]
        fn software_crc32c_matches_the_crate(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let sw = table(&CASTAGNOLI_TABLE, CASTAGNOLI).checksum(&data);
            prop_assert_eq!(sw, crc32c::crc32c(&data));
            prop_assert_eq!(crc32c(&data), sw);
        }
    }
}
