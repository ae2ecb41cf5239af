//! The read path: `peek` decodes records from their segments, keeps the
//! last one touched (the usual `peek(n)` / `consume(n)` rhythm reads it
//! again), and drops a record that fails its checks when read, once.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use super::record::{decode_payload, RecordMeta, FRAME_LEN};
use super::{err, u32_at, FileBacklog};
use crate::backlog::{Backlog, BacklogError};
use crate::point::Point;

/// The last record `peek` decoded.
#[derive(Debug)]
pub(super) struct Cache {
    pub(super) first_seq: u64,
    pub(super) points: Vec<Point>,
}

/// Why a record could not be read back.
enum LoadError {
    /// The storage failed; retrying may help.
    Io(String),
    /// The record is damaged; it must be skipped.
    Corrupt(String),
    /// The whole segment file is gone; its records must be skipped.
    Missing(String),
}

impl FileBacklog {
    /// Reads from disk; only the last record touched is kept decoded. A
    /// record found damaged is dropped and reported as an error once, so the
    /// next call moves past it.
    pub(super) fn peek_points(&mut self, max: usize) -> Result<Vec<Point>, BacklogError> {
        let mut out = Vec::with_capacity(max.min(self.len() as usize));
        let mut i = 0;
        while out.len() < max && i < self.index.len() {
            let r = self.index[i];
            let skip = self.cursor.saturating_sub(r.first_seq) as usize;
            let want = (r.count as usize - skip).min(max - out.len());
            let last_touched = out.len() + want == max || i + 1 == self.index.len();
            match &self.cache {
                Some(c) if c.first_seq == r.first_seq => {
                    out.extend_from_slice(&c.points[skip..skip + want]);
                }
                _ => match self.load(&r) {
                    Ok(points) if last_touched => {
                        out.extend_from_slice(&points[skip..skip + want]);
                        self.cache = Some(Cache {
                            first_seq: r.first_seq,
                            points,
                        });
                    }
                    Ok(points) => out.extend(points.into_iter().skip(skip).take(want)),
                    Err(LoadError::Io(msg)) => return Err(err(msg)),
                    Err(LoadError::Corrupt(msg)) => {
                        let before = self.len();
                        self.drop_record(i);
                        self.skip_to_head();
                        self.read_losses += before.saturating_sub(self.len());
                        return Err(err(msg));
                    }
                    Err(LoadError::Missing(msg)) => {
                        let before = self.len();
                        self.forget_segment(r.seg);
                        self.skip_to_head();
                        self.read_losses += before.saturating_sub(self.len());
                        return Err(err(msg));
                    }
                },
            }
            i += 1;
        }
        Ok(out)
    }

    /// Read and decode one record from its segment.
    fn load(&mut self, r: &RecordMeta) -> Result<Vec<Point>, LoadError> {
        let path = self.segment_path(r.seg);
        let io_err = |e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                LoadError::Missing(format!(
                    "backlog segment {} disappeared; dropped the points it held",
                    path.display()
                ))
            } else {
                LoadError::Io(format!(
                    "could not read backlog segment {}: {e}",
                    path.display()
                ))
            }
        };
        if self.reader.as_ref().is_none_or(|(id, _)| *id != r.seg) {
            self.reader = None;
            let f = File::open(&path).map_err(io_err)?;
            self.reader = Some((r.seg, f));
        }
        let (_, file) = self.reader.as_mut().expect("reader just opened");
        let total = FRAME_LEN as usize + r.len as usize;
        self.buf.clear();
        self.buf.resize(total, 0);
        let read = file
            .seek(SeekFrom::Start(r.offset))
            .and_then(|_| file.read_exact(&mut self.buf));
        if let Err(e) = read {
            self.reader = None;
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Err(LoadError::Corrupt(format!(
                    "backlog segment {} was cut short before offset {}",
                    path.display(),
                    r.offset
                )));
            }
            return Err(io_err(e));
        }
        let corrupt = |why: String| {
            LoadError::Corrupt(format!(
                "backlog segment {}: the record at offset {} became unreadable ({why}); \
                 dropped its {} points",
                path.display(),
                r.offset,
                r.count
            ))
        };
        let payload = &self.buf[8..];
        if u32_at(&self.buf, 0) != r.len || crate::crc::crc32c(payload) != u32_at(&self.buf, 4) {
            return Err(corrupt("checksum mismatch".to_string()));
        }
        let (h, points) = decode_payload(payload).map_err(corrupt)?;
        if h.first_seq != r.first_seq || h.count != r.count {
            return Err(corrupt("record header changed".to_string()));
        }
        Ok(points)
    }

    /// Forget a segment file that vanished, with all its records.
    fn forget_segment(&mut self, id: u64) {
        self.index.retain(|x| x.seg != id);
        self.indexed_points = self.index.iter().map(|r| u64::from(r.count)).sum();
        self.segments.retain(|s| s.id != id);
        self.cache = None;
        self.reader = None;
        if self.active.as_ref().is_some_and(|a| a.id == id) {
            self.active = None;
        }
    }

    /// Forget index entry `i` (its record could not be read back).
    fn drop_record(&mut self, i: usize) {
        if let Some(r) = self.index.remove(i) {
            self.indexed_points -= u64::from(r.count);
            if self
                .cache
                .as_ref()
                .is_some_and(|c| c.first_seq == r.first_seq)
            {
                self.cache = None;
            }
        }
    }
}
