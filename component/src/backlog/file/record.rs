//! Records: the frame around each one (payload length and CRC32C), the
//! postcard [`RecordHeader`] at the start of its payload, encoding a batch
//! of points into a frame and decoding a payload back, and [`RecordMeta`],
//! what the index keeps of a record instead of its points.

use serde::{Deserialize, Serialize};

use super::u32_at;
use crate::codec::{decode_points, encode_points};
use crate::point::Point;

/// Length and CRC in front of every record payload.
pub(super) const FRAME_LEN: u64 = 8;
pub(super) const RECORD_VERSION: u8 = 1;
/// The longest postcard `RecordHeader`: a u8, then varints of at most
/// 10 (u64), 5 (u32) and 10 (zigzag i64) bytes.
pub(super) const MAX_HEADER_LEN: u64 = 1 + 10 + 5 + 10;

/// The postcard-encoded start of every record payload.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RecordHeader {
    pub(super) version: u8,
    pub(super) first_seq: u64,
    pub(super) count: u32,
    pub(super) stored_at: i64,
}

/// Where one live record is, and what it holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct RecordMeta {
    pub(super) seg: u64,
    /// Offset of the record's length field in the segment.
    pub(super) offset: u64,
    /// Payload length.
    pub(super) len: u32,
    pub(super) first_seq: u64,
    pub(super) count: u32,
    pub(super) stored_at: i64,
}

impl RecordMeta {
    pub(super) fn end(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }
}

/// Frame one record: room for the length and CRC in `frame` (its old
/// contents are dropped), the header and the codec body of `points`, then
/// the payload length and CRC32C filled in. Returns the frame and the
/// payload length; on failure, the message and the buffer back (empty if
/// the header could not be encoded).
pub(super) fn encode_frame(
    header: &RecordHeader,
    points: &[Point],
    mut frame: Vec<u8>,
) -> Result<(Vec<u8>, u32), (String, Vec<u8>)> {
    frame.clear();
    frame.extend_from_slice(&[0u8; FRAME_LEN as usize]);
    let mut frame = postcard::to_extend(header, frame).map_err(|e| {
        (
            format!("could not encode a backlog record header: {e}"),
            Vec::new(),
        )
    })?;
    encode_points(points, &mut frame);
    let len = frame.len() - FRAME_LEN as usize;
    let Ok(len32) = u32::try_from(len) else {
        return Err((
            format!(
                "could not append {} points to the backlog: the record would be {len} bytes",
                points.len()
            ),
            frame,
        ));
    };
    let crc = crate::crc::crc32c(&frame[8..]);
    frame[..4].copy_from_slice(&len32.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok((frame, len32))
}

/// Parse a record payload: header, then body.
pub(super) fn decode_payload(payload: &[u8]) -> Result<(RecordHeader, Vec<Point>), String> {
    let (h, body) = postcard::take_from_bytes::<RecordHeader>(payload)
        .map_err(|e| format!("undecodable record header: {e}"))?;
    check_header(&h)?;
    let points = decode_points(body).map_err(|e| e.to_string())?;
    if points.len() != h.count as usize {
        return Err(format!(
            "record header says {} points but the body holds {}",
            h.count,
            points.len()
        ));
    }
    Ok((h, points))
}

fn check_header(h: &RecordHeader) -> Result<(), String> {
    if h.version != RECORD_VERSION {
        return Err(format!("unknown record version {}", h.version));
    }
    if h.count == 0 {
        return Err("record holds no points".to_string());
    }
    if h.first_seq.checked_add(u64::from(h.count)).is_none() {
        return Err(format!("sequence number {} out of range", h.first_seq));
    }
    Ok(())
}

/// Parse and check the header at the start of a record payload.
pub(super) fn parse_header(payload: &[u8]) -> Result<RecordHeader, String> {
    let (h, _) = postcard::take_from_bytes::<RecordHeader>(payload)
        .map_err(|e| format!("undecodable record header: {e}"))?;
    check_header(&h)?;
    Ok(h)
}

/// The payload length of a complete frame with a good checksum at `at`.
pub(super) fn frame_at(data: &[u8], at: usize) -> Option<usize> {
    frame_checked(data, at, true)
}

/// A frame's payload length; its checksum is compared only if `verify`.
pub(super) fn frame_checked(data: &[u8], at: usize, verify: bool) -> Option<usize> {
    let rest = data.get(at..)?;
    if rest.len() < FRAME_LEN as usize {
        return None;
    }
    let len = u32_at(rest, 0) as usize;
    if len == 0 || len > rest.len() - FRAME_LEN as usize {
        return None;
    }
    if !verify {
        return Some(len);
    }
    let payload = &rest[FRAME_LEN as usize..FRAME_LEN as usize + len];
    (crate::crc::crc32c(payload) == u32_at(rest, 4)).then_some(len)
}
