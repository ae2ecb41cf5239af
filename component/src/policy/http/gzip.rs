//! gzip (RFC 1952) request bodies: a deflate stream from our line-aware
//! encoder (`super::deflate`) in the gzip frame InfluxDB and
//! VictoriaMetrics accept as `Content-Encoding: gzip`.

pub fn compress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 4 + 64);
    // magic, CM=deflate, no flags, mtime 0, XFL 0, OS unknown
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    super::deflate::deflate(data, &mut out);
    out.extend_from_slice(&crate::crc::crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The data of a gzip stream made by `compress` (or any single-member
/// gzip without optional header fields); None if it is not one.
pub fn decompress(gz: &[u8]) -> Option<Vec<u8>> {
    if gz.len() < 18 || gz[..4] != [0x1f, 0x8b, 8, 0] {
        return None;
    }
    let data = miniz_oxide::inflate::decompress_to_vec(&gz[10..gz.len() - 8]).ok()?;
    let crc = u32::from_le_bytes(gz[gz.len() - 8..gz.len() - 4].try_into().ok()?);
    (crc == crate::crc::crc32(&data)).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_body_stands_alone() {
        // The second body is not a continuation of the first.
        let a = b"m,host=a v=1 1\n".repeat(3000);
        let b = b"n,host=b w=2i 2\n".repeat(10);
        let first = compress(&a);
        assert_eq!(decompress(&compress(&b)).unwrap(), b);
        assert_eq!(compress(&a), first, "same input, same output");
        assert_eq!(decompress(&compress(b"")).unwrap(), b"");
    }

    #[test]
    fn round_trips_through_inflate() {
        let data = b"m,host=a v=1 1\nm,host=a v=2 2\n".repeat(50);
        let gz = compress(&data);
        assert!(gz.len() < data.len() / 4);
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(decompress(&gz).unwrap(), data);
        let mut bad = gz.clone();
        bad[12] ^= 1;
        assert_eq!(decompress(&bad), None);
        let trailer = &gz[gz.len() - 8..];
        assert_eq!(trailer[..4], crate::crc::crc32(&data).to_le_bytes());
        assert_eq!(trailer[4..], (data.len() as u32).to_le_bytes());
    }
}
