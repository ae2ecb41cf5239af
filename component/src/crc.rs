//! CRC-32C (backlog records and cursor slots) and CRC-32 (gzip trailers),
//! slice-by-8. The 8 KiB tables are built on first use instead of being
//! stored in the component, which ships to small devices. Natively,
//! CRC-32C uses the CPU's instructions through the `crc32c` crate; the
//! tests check that both give the same values.

use std::sync::OnceLock;

/// Reversed polynomials.
#[cfg(any(target_arch = "wasm32", test))]
const CASTAGNOLI: u32 = 0x82f6_3b78;
const IEEE: u32 = 0xedb8_8320;

struct Table([[u32; 256]; 8]);

impl Table {
    fn new(poly: u32) -> Box<Table> {
        let mut t = Box::new(Table([[0; 256]; 8]));
        for n in 0..256 {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
            }
            t.0[0][n] = c;
        }
        for n in 0..256 {
            for k in 1..8 {
                let prev = t.0[k - 1][n];
                t.0[k][n] = t.0[0][(prev & 0xff) as usize] ^ (prev >> 8);
            }
        }
        t
    }

    fn checksum(&self, data: &[u8]) -> u32 {
        let t = &self.0;
        let at = |k: usize, x: u32| t[k][(x & 0xff) as usize];
        let mut crc = !0u32;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            crc = at(7, lo)
                ^ at(6, lo >> 8)
                ^ at(5, lo >> 16)
                ^ at(4, lo >> 24)
                ^ at(3, hi)
                ^ at(2, hi >> 8)
                ^ at(1, hi >> 16)
                ^ at(0, hi >> 24);
        }
        for &b in chunks.remainder() {
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

    proptest! {
        #[test]
        fn software_crc32c_matches_the_crate(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let sw = table(&CASTAGNOLI_TABLE, CASTAGNOLI).checksum(&data);
            prop_assert_eq!(sw, crc32c::crc32c(&data));
            prop_assert_eq!(crc32c(&data), sw);
        }
    }
}
