//! Read-only access to a backlog directory, for inspection tools
//! (`influx-sink backlog stats|dump|verify`), next to
//! [`parse_segment_bytes`](super::parse_segment_bytes). Nothing here
//! writes, creates or repairs.

use std::path::Path;

use super::cursor::{read_cursor, CURSOR_FILE};
use super::record::{decode_payload, FRAME_LEN};
use super::recovery::QUARANTINE_DIR;
use super::segment::parse_segment_name;
use crate::backlog::RecoveryReport;
use crate::point::Point;

/// Bytes in front of a record's payload (u32 length, u32 CRC32C).
pub const RECORD_FRAME_LEN: u64 = FRAME_LEN;
/// Name of the cursor file in a backlog directory.
pub const CURSOR: &str = CURSOR_FILE;
/// Name of the quarantine subdirectory.
pub const QUARANTINE: &str = QUARANTINE_DIR;

/// The segment id of a file name `NNNNNNNNNNNNNNNN.seg`, if it is one.
pub fn segment_id(file_name: &str) -> Option<u64> {
    parse_segment_name(file_name)
}

/// Decode a whole record payload (header and body): the points.
pub fn decode_record(payload: &[u8]) -> Result<Vec<Point>, String> {
    decode_payload(payload).map(|(_, points)| points)
}

/// The stored cursor of the backlog in `dir` (sequence number of the
/// oldest live point), read without repairing, plus the warnings
/// [`super::FileBacklog::open`] would log about it.
pub fn cursor(dir: &Path, have_segments: bool) -> (Option<u64>, Vec<String>) {
    let mut report = RecoveryReport::default();
    let c = read_cursor(&dir.join(CURSOR_FILE), have_segments, &mut report);
    (c.map(|(_, seq)| seq), report.warnings)
}
