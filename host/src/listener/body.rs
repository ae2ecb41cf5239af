//! Request bodies, bounded: read within a deadline and a size limit, and
//! gzip inflated with the same limit on the inflated size.
//!
//! Inflation reads at most `limit + 1` bytes out of the decoder, so a gzip
//! bomb costs at most `limit` bytes of memory and the time to inflate that
//! much, never its full size.

use std::io::Read;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// After a body is over the limit, this much more is read and dropped so
/// that closing the connection does not reset it before the client reads
/// the `413` (as Go's server does).
const DRAIN_AFTER_LIMIT: usize = 256 * 1024;

/// Why a body could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit, as sent or inflated.
    TooLarge,
    /// Not all of it arrived within the read timeout.
    Timeout,
    /// The connection failed, or the gzip stream is corrupt.
    Broken(String),
}

/// The whole body, if it is at most `limit` bytes and arrives within
/// `timeout`.
pub async fn read_limited<B>(body: B, limit: usize, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let hint = body.size_hint().lower().min(limit as u64) as usize;
    let read = async move {
        let mut body = std::pin::pin!(body);
        let mut buf = BytesMut::with_capacity(hint);
        let mut over = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if over > 0 || buf.len() + data.len() > limit {
                over += data.len();
                if over > DRAIN_AFTER_LIMIT {
                    break;
                }
                continue;
            }
            buf.extend_from_slice(&data);
        }
        if over > 0 {
            Err(BodyError::TooLarge)
        } else {
            Ok(buf.freeze())
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// Inflate a gzip body (one or more members) to at most `limit` bytes.
/// CPU-bound: call it off the async threads.
pub fn gunzip_limited(raw: &[u8], limit: usize) -> Result<Bytes, BodyError> {
    let decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    match decoder.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(BodyError::TooLarge),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(BodyError::Broken(format!("gzip: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gunzip_inflates_up_to_the_limit_and_not_beyond() {
        let data = b"cpu value=1 1\n".repeat(100);
        let z = gzip(&data);
        assert_eq!(gunzip_limited(&z, data.len()).unwrap(), &data[..]);
        assert_eq!(gunzip_limited(&z, data.len() - 1), Err(BodyError::TooLarge));
    }

    #[test]
    fn gunzip_takes_concatenated_members() {
        let mut z = gzip(b"a x=1\n");
        z.extend(gzip(b"b x=2\n"));
        assert_eq!(gunzip_limited(&z, 100).unwrap(), &b"a x=1\nb x=2\n"[..]);
    }

    #[test]
    fn gunzip_refuses_corrupt_input_without_panicking() {
        let z = gzip(&b"cpu value=1\n".repeat(50));
        assert!(matches!(
            gunzip_limited(b"not gzip", 100),
            Err(BodyError::Broken(_))
        ));
        assert!(matches!(
            gunzip_limited(&z[..z.len() / 2], 1000),
            Err(BodyError::Broken(_))
        ));
        let mut flipped = z.clone();
        let n = flipped.len();
        flipped[n - 6] ^= 0xff; // the CRC
        assert!(matches!(
            gunzip_limited(&flipped, 1000),
            Err(BodyError::Broken(_))
        ));
        // Every prefix and a byte flipped at every position: never a panic.
        for i in 0..z.len() {
            let _ = gunzip_limited(&z[..i], 1000);
            let mut b = z.clone();
            b[i] = b[i].wrapping_add(1);
            let _ = gunzip_limited(&b, 1000);
        }
    }

    #[tokio::test]
    async fn read_limited_reads_stops_at_the_limit_and_times_out() {
        let full = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        let got = read_limited(full.clone(), 10, Duration::from_secs(1)).await;
        assert_eq!(got.unwrap(), &b"0123456789"[..]);
        let got = read_limited(full, 9, Duration::from_secs(1)).await;
        assert_eq!(got, Err(BodyError::TooLarge));
        let got = read_limited(Never, 10, Duration::from_millis(50)).await;
        assert_eq!(got, Err(BodyError::Timeout));
    }

    /// A body whose data never comes.
    struct Never;

    impl Body for Never {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }
}
