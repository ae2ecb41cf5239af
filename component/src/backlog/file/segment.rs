//! Segment files: their names, the 16-byte header (magic and format
//! version), and [`parse_segment_bytes`], which splits a segment's bytes
//! into intact records and damage the way recovery at open reads them.

use std::io;
use std::path::Path;

use super::record::{frame_at, frame_checked, parse_header, FRAME_LEN, RECORD_VERSION};
use super::u32_at;

const SEG_MAGIC: &[u8; 8] = b"INFXSEG\0";
const SEG_VERSION: u16 = 1;
pub(super) const SEG_HEADER_LEN: u64 = 16;

/// A segment file kept in the directory.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) id: u64,
    pub(super) size: u64,
}

pub(super) fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

pub(super) fn segment_header() -> [u8; SEG_HEADER_LEN as usize] {
    let mut h = [0u8; SEG_HEADER_LEN as usize];
    h[..8].copy_from_slice(SEG_MAGIC);
    h[8..10].copy_from_slice(&SEG_VERSION.to_le_bytes());
    h
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The ids of the segment files in `dir`, oldest first.
pub(super) fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            ids.push(id);
        }
    }
    crate::sort::sort(&mut ids);
    Ok(ids)
}

/// The first offset at or after `from` where a record with a good checksum
/// and a sound header starts: where reading resumes after damage.
fn next_record(data: &[u8], from: usize) -> Option<usize> {
    let last = data.len().checked_sub(FRAME_LEN as usize + 1)?;
    (from..=last).find(|&at| {
        // Cheap test first: a payload starts with the record version.
        data[at + FRAME_LEN as usize] == RECORD_VERSION
            && frame_at(data, at).is_some_and(|len| {
                let start = at + FRAME_LEN as usize;
                parse_header(&data[start..start + len]).is_ok()
            })
    })
}

/// What the 16-byte header of a segment file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentHeader {
    /// The magic and the format version this code writes.
    Valid,
    /// The file is shorter than a header. `prefix`: its bytes are the start
    /// of a valid header (a creation interrupted by a crash).
    Short { len: u64, prefix: bool },
    /// Not `INFXSEG\0`.
    WrongMagic,
    /// A format version this code does not know.
    UnknownVersion(u16),
}

/// One stretch of a segment file after its header; see
/// [`parse_segment_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentItem {
    /// A record with a good checksum and a sound header (its body is not
    /// decoded). `len` is the payload length.
    Record {
        offset: u64,
        len: u32,
        first_seq: u64,
        count: u32,
        stored_at: i64,
    },
    /// A frame with a good checksum whose record header is unusable.
    BadHeader { offset: u64, len: u32, why: String },
    /// Damaged bytes followed by a readable record. `one_record`: the length
    /// field of the damaged frame leads exactly there (its payload or
    /// checksum was hit: one record lost); otherwise the length was hit too
    /// and reading resumed at the next record found by its checksum.
    Damaged {
        offset: u64,
        bytes: u64,
        one_record: bool,
    },
    /// Damaged bytes up to the end of the file: no readable record follows.
    Tail {
        offset: u64,
        bytes: u64,
        kind: TailKind,
    },
}

impl SegmentItem {
    /// Where the item starts in the file.
    pub fn offset(&self) -> u64 {
        match *self {
            SegmentItem::Record { offset, .. }
            | SegmentItem::BadHeader { offset, .. }
            | SegmentItem::Damaged { offset, .. }
            | SegmentItem::Tail { offset, .. } => offset,
        }
    }

    /// How many bytes of the file it covers.
    pub fn bytes(&self) -> u64 {
        match *self {
            SegmentItem::Record { len, .. } | SegmentItem::BadHeader { len, .. } => {
                FRAME_LEN + u64::from(len)
            }
            SegmentItem::Damaged { bytes, .. } | SegmentItem::Tail { bytes, .. } => bytes,
        }
    }
}

/// What the damaged end of a segment file looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailKind {
    /// One whole frame: its length reaches exactly the end of the file, but
    /// its checksum fails.
    Record,
    /// An append cut short: fewer bytes than a frame header, a length past
    /// the end of the file, or only zeros.
    Torn,
    /// Anything else: a length field that is garbage.
    Garbage,
}

/// A segment file's bytes, parsed; see [`parse_segment_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSegment {
    pub header: SegmentHeader,
    /// The bytes after the header, in order: each item starts where the
    /// previous one ended, the first at the header's end, the last ends at
    /// the end of the data. Empty for a file shorter than a header.
    pub items: Vec<SegmentItem>,
}

/// Parse one segment file's bytes, as recovery at open does: records are
/// found by their length fields and checked by their CRC32C and header
/// (their bodies are not decoded: the checksum already vouches for them);
/// after damage, reading resumes at the next offset where a record with a
/// good checksum and a sound header starts, so one damaged record never
/// hides the intact ones after it. The records after a bad header are read
/// too (recovery counts what a quarantined segment holds).
///
/// Pure and total: any input gives an answer, never a panic.
pub fn parse_segment_bytes(data: &[u8]) -> ParsedSegment {
    parse_segment_checked(data, true)
}

/// `parse_segment_bytes`, comparing record checksums only if `verify`
/// (record headers and lengths are always checked).
pub(super) fn parse_segment_checked(data: &[u8], verify: bool) -> ParsedSegment {
    let hlen = SEG_HEADER_LEN as usize;
    if data.len() < hlen {
        return ParsedSegment {
            header: SegmentHeader::Short {
                len: data.len() as u64,
                prefix: segment_header().starts_with(data),
            },
            items: Vec::new(),
        };
    }
    let header = if &data[..8] != SEG_MAGIC {
        SegmentHeader::WrongMagic
    } else {
        match u16::from_le_bytes([data[8], data[9]]) {
            SEG_VERSION => SegmentHeader::Valid,
            v => SegmentHeader::UnknownVersion(v),
        }
    };
    let n = data.len();
    let mut items = Vec::new();
    let mut off = hlen;
    while off < n {
        if let Some(len) = frame_checked(data, off, verify) {
            let start = off + FRAME_LEN as usize;
            let len32 = len as u32;
            items.push(match parse_header(&data[start..start + len]) {
                Ok(h) => SegmentItem::Record {
                    offset: off as u64,
                    len: len32,
                    first_seq: h.first_seq,
                    count: h.count,
                    stored_at: h.stored_at,
                },
                Err(why) => SegmentItem::BadHeader {
                    offset: off as u64,
                    len: len32,
                    why,
                },
            });
            off = start + len;
            continue;
        }
        let rem = n - off;
        // Where the damaged frame's own length field says it ends.
        let (len, claimed_end) = if rem >= FRAME_LEN as usize {
            let len = u32_at(data, off);
            (len, off as u64 + FRAME_LEN + u64::from(len))
        } else {
            (0, u64::MAX)
        };
        match next_record(data, off + 1) {
            Some(next) => {
                items.push(SegmentItem::Damaged {
                    offset: off as u64,
                    bytes: (next - off) as u64,
                    one_record: claimed_end == next as u64,
                });
                off = next;
            }
            None => {
                let kind = if len > 0 && claimed_end == n as u64 {
                    TailKind::Record
                } else if rem < FRAME_LEN as usize
                    || claimed_end > n as u64
                    || (len == 0 && data[off..].iter().all(|&b| b == 0))
                {
                    TailKind::Torn
                } else {
                    TailKind::Garbage
                };
                items.push(SegmentItem::Tail {
                    offset: off as u64,
                    bytes: rem as u64,
                    kind,
                });
                break;
            }
        }
    }
    ParsedSegment { header, items }
}
