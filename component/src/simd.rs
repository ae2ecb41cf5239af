//! Sixteen bytes at a time, for the scans of line protocol: wasm SIMD128
//! in the component (built with `+simd128`, see `.cargo/config.toml`),
//! SSE2 natively on x86_64, and a plain stand-in with the same results
//! elsewhere (a wasm build without the feature, other CPUs).
//!
//! Why not just SWAR (`swar.rs`): in the component every loop iteration
//! pays wasmtime's epoch check besides its work, and most keys and values
//! of line protocol fit in one 16-byte step, where eight bytes would take
//! two or three.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod imp {
    use core::arch::wasm32::*;

    #[derive(Clone, Copy)]
    pub(crate) struct Bytes16(v128);

    impl Bytes16 {
        #[inline(always)]
        pub(crate) fn load(chunk: &[u8; 16]) -> Self {
            // SAFETY: `chunk` is 16 readable bytes; v128.load needs no
            // alignment.
            Bytes16(unsafe { v128_load(chunk.as_ptr().cast()) })
        }

        /// Lanes equal to `c`, as a vector of all-ones / all-zeros lanes.
        #[inline(always)]
        pub(crate) fn eq(self, c: u8) -> Lanes {
            Lanes(u8x16_eq(self.0, u8x16_splat(c)))
        }

        /// Lanes holding an ASCII digit.
        #[inline(always)]
        pub(crate) fn digits(self) -> Lanes {
            Lanes(u8x16_lt(
                u8x16_sub(self.0, u8x16_splat(b'0')),
                u8x16_splat(10),
            ))
        }

        /// Whether any lane has its high bit set (a byte outside ASCII).
        #[inline(always)]
        pub(crate) fn any_high(self) -> bool {
            u8x16_bitmask(self.0) != 0
        }

        #[inline(always)]
        pub(crate) fn or(self, other: Self) -> Self {
            Bytes16(v128_or(self.0, other.0))
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Lanes(v128);

    impl Lanes {
        #[inline(always)]
        pub(crate) fn or(self, other: Lanes) -> Lanes {
            Lanes(v128_or(self.0, other.0))
        }

        /// Bit k set for lane k.
        #[inline(always)]
        pub(crate) fn mask(self) -> u32 {
            u32::from(u8x16_bitmask(self.0))
        }
    }
}

/// Natively on x86_64, SSE2 (always there), so native tests and benches
/// measure the same kind of code as the component runs.
#[cfg(target_arch = "x86_64")]
mod imp {
    use core::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct Bytes16(__m128i);

    impl Bytes16 {
        #[inline(always)]
        pub(crate) fn load(chunk: &[u8; 16]) -> Self {
            // SAFETY: `chunk` is 16 readable bytes; loadu needs no
            // alignment, and SSE2 is part of x86_64.
            Bytes16(unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) })
        }

        #[inline(always)]
        pub(crate) fn eq(self, c: u8) -> Lanes {
            // SAFETY: SSE2 is part of x86_64.
            Lanes(unsafe { _mm_cmpeq_epi8(self.0, _mm_set1_epi8(c as i8)) })
        }

        #[inline(always)]
        pub(crate) fn digits(self) -> Lanes {
            // SAFETY: SSE2 is part of x86_64. A byte is a digit when
            // byte - '0' (wrapping) is at most 9: min(x, 9) == x.
            Lanes(unsafe {
                let x = _mm_sub_epi8(self.0, _mm_set1_epi8(b'0' as i8));
                _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(9)), x)
            })
        }

        #[inline(always)]
        pub(crate) fn any_high(self) -> bool {
            // SAFETY: SSE2 is part of x86_64.
            unsafe { _mm_movemask_epi8(self.0) != 0 }
        }

        #[inline(always)]
        pub(crate) fn or(self, other: Self) -> Self {
            // SAFETY: SSE2 is part of x86_64.
            Bytes16(unsafe { _mm_or_si128(self.0, other.0) })
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Lanes(__m128i);

    impl Lanes {
        #[inline(always)]
        pub(crate) fn or(self, other: Lanes) -> Lanes {
            // SAFETY: SSE2 is part of x86_64.
            Lanes(unsafe { _mm_or_si128(self.0, other.0) })
        }

        #[inline(always)]
        pub(crate) fn mask(self) -> u32 {
            // SAFETY: SSE2 is part of x86_64.
            unsafe { _mm_movemask_epi8(self.0) as u32 }
        }
    }
}

/// The plain stand-in: always built, so the tests check it against the
/// same expectations as the SIMD code.
#[allow(dead_code)]
mod portable {
    #[derive(Clone, Copy)]
    pub(crate) struct Bytes16([u8; 16]);

    impl Bytes16 {
        #[inline(always)]
        pub(crate) fn load(chunk: &[u8; 16]) -> Self {
            Bytes16(*chunk)
        }

        #[inline(always)]
        pub(crate) fn eq(self, c: u8) -> Lanes {
            Lanes(self.0.map(|b| b == c))
        }

        #[inline(always)]
        pub(crate) fn digits(self) -> Lanes {
            Lanes(self.0.map(|b| b.is_ascii_digit()))
        }

        #[inline(always)]
        pub(crate) fn any_high(self) -> bool {
            self.0.iter().any(|&b| b >= 0x80)
        }

        #[inline(always)]
        pub(crate) fn or(self, other: Self) -> Self {
            let mut out = self.0;
            for (o, b) in out.iter_mut().zip(other.0) {
                *o |= b;
            }
            Bytes16(out)
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Lanes([bool; 16]);

    impl Lanes {
        #[inline(always)]
        pub(crate) fn or(self, other: Lanes) -> Lanes {
            let mut out = self.0;
            for (o, b) in out.iter_mut().zip(other.0) {
                *o |= b;
            }
            Lanes(out)
        }

        #[inline(always)]
        pub(crate) fn mask(self) -> u32 {
            self.0
                .iter()
                .enumerate()
                .fold(0, |m, (k, &on)| m | u32::from(on) << k)
        }
    }
}

#[cfg(not(any(
    all(target_arch = "wasm32", target_feature = "simd128"),
    target_arch = "x86_64"
)))]
use portable as imp;

pub(crate) use imp::Bytes16;

/// The 16 bytes at `i`, if `b` has that many there.
#[inline(always)]
pub(crate) fn at(b: &[u8], i: usize) -> Option<Bytes16> {
    let chunk: &[u8; 16] = b.get(i..i.checked_add(16)?)?.try_into().ok()?;
    Some(Bytes16::load(chunk))
}

/// First `c` at or after `i` in `b`, or `b.len()`.
#[inline(always)]
pub(crate) fn find_byte(b: &[u8], mut i: usize, c: u8) -> usize {
    while let Some(v) = at(b, i) {
        let m = v.eq(c).mask();
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    crate::swar::find_byte(b, i, c)
}

/// Whether every byte of `b` is ASCII, 64 bytes per step.
pub(crate) fn is_ascii(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    for block in &mut blocks {
        let part = |k: usize| at(block, 16 * k).expect("16 of 64 bytes");
        if part(0).or(part(1)).or(part(2).or(part(3))).any_high() {
            return false;
        }
    }
    blocks.remainder().is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_mark_exactly_the_lanes() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        for i in 0..=bytes.len() - 16 {
            let v = at(&bytes, i).unwrap();
            let want = |f: &dyn Fn(u8) -> bool| {
                (0..16).fold(0u32, |m, k| m | u32::from(f(bytes[i + k])) << k)
            };
            assert_eq!(v.eq(b',').mask(), want(&|b| b == b','));
            assert_eq!(v.digits().mask(), want(&|b| b.is_ascii_digit()));
            assert_eq!(
                v.eq(b'=').or(v.eq(b' ')).mask(),
                want(&|b| b == b'=' || b == b' ')
            );
            assert_eq!(v.any_high(), want(&|b| b >= 0x80) != 0);
            let chunk: &[u8; 16] = bytes[i..i + 16].try_into().unwrap();
            let p = portable::Bytes16::load(chunk);
            assert_eq!(p.eq(b',').mask(), want(&|b| b == b','));
            assert_eq!(p.digits().mask(), want(&|b| b.is_ascii_digit()));
            assert_eq!(
                p.eq(b'=').or(p.eq(b' ')).mask(),
                want(&|b| b == b'=' || b == b' ')
            );
            assert_eq!(p.any_high(), want(&|b| b >= 0x80) != 0);
            assert_eq!(p.or(p).eq(b'a').mask(), want(&|b| b == b'a'));
        }
        assert!(at(&bytes, 241).is_none());
        assert!(at(&bytes, usize::MAX).is_none());
    }

    #[test]
    fn ascii_check_agrees_with_core() {
        let mut text = b"device_data,device=inverter-000 seq=0i 1\n".repeat(9);
        for len in [0, 1, 15, 16, 63, 64, 65, 200, text.len()] {
            let part = &text[..len];
            assert_eq!(is_ascii(part), part.is_ascii(), "{len} bytes");
        }
        for at in [0, 17, 63, 64, 127, 128, text.len() - 1] {
            let saved = text[at];
            text[at] = 0xc3;
            assert!(!is_ascii(&text), "high byte at {at}");
            text[at] = saved;
        }
    }
}
