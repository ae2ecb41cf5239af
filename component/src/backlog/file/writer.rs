//! The append path: framing a batch into a record, writing it to the
//! active segment, rolling to a new segment past the size limit, and the
//! fsyncs each [`SyncMode`] asks for.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use super::record::{encode_frame, RecordHeader, RecordMeta, RECORD_VERSION};
use super::segment::{segment_header, segment_name, Segment, SEG_HEADER_LEN};
use super::{err, FileBacklog};
use crate::backlog::BacklogError;
use crate::point::Point;

/// Default size after which the writer rolls to a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;

/// When appended records are forced to stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync the segment after every append, and the cursor after every move.
    Always,
    /// fsync only in [`Backlog::sync`](crate::backlog::Backlog::sync), which
    /// the policy calls after a group of appends.
    #[default]
    Batch,
    /// Never fsync; the OS writes back when it likes. A killed process loses
    /// nothing, a power cut may lose the recent tail.
    Never,
}

/// The segment being appended to (always the last of `segments`).
#[derive(Debug)]
pub(super) struct Active {
    pub(super) id: u64,
    pub(super) file: File,
    /// Written since the last fsync.
    pub(super) dirty: bool,
}

/// fsync a directory so new entries in it survive a power cut. Best effort:
/// not every platform (or WASI host) lets a directory be opened or synced.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl FileBacklog {
    /// Stop appending to the active segment (fsyncing it first in Batch
    /// mode, since `sync()` only reaches the active one).
    pub(super) fn retire_active(&mut self) -> Result<(), BacklogError> {
        if let Some(a) = &mut self.active {
            if a.dirty && self.sync_mode == SyncMode::Batch {
                a.file.sync_data().map_err(|e| {
                    err(format!(
                        "could not sync backlog segment {}: {e}",
                        self.dir.join(segment_name(a.id)).display()
                    ))
                })?;
            }
        }
        self.active = None;
        Ok(())
    }

    pub(super) fn create_segment(&mut self) -> Result<(), BacklogError> {
        let (id, path, mut file) = loop {
            let id = self.next_segment_id;
            self.next_segment_id += 1;
            let path = self.segment_path(id);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (id, path, f),
                // A file we could not quarantine or remove holds this id.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(err(format!(
                        "could not create backlog segment {}: {e}",
                        path.display()
                    )));
                }
            }
        };
        let always = self.sync_mode == SyncMode::Always;
        let written = file.write_all(&segment_header()).and_then(|()| {
            if always {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(err(format!(
                "could not write the header of backlog segment {}: {e}",
                path.display()
            )));
        }
        if always {
            sync_dir(&self.dir);
        } else {
            self.dir_dirty = true;
        }
        self.segments.push_back(Segment {
            id,
            size: SEG_HEADER_LEN,
        });
        self.active = Some(Active {
            id,
            file,
            dirty: true,
        });
        Ok(())
    }

    /// Write one framed record to the active segment; returns (segment,
    /// offset). On error the segment is cut back to its previous length.
    pub(super) fn write_frame(&mut self, frame: &[u8]) -> Result<(u64, u64), BacklogError> {
        let need = frame.len() as u64;
        if self.active.is_some() {
            let size = self.segments.back().map_or(0, |s| s.size);
            if size > SEG_HEADER_LEN && size + need > self.segment_bytes {
                self.retire_active()?;
            }
        }
        if self.active.is_none() {
            self.create_segment()?;
        }
        let always = self.sync_mode == SyncMode::Always;
        let a = self.active.as_mut().expect("an active segment");
        let seg = self
            .segments
            .back_mut()
            .expect("the active segment is listed");
        let offset = seg.size;
        let written =
            a.file
                .write_all(frame)
                .and_then(|()| if always { a.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                seg.size += need;
                a.dirty = true;
                Ok((a.id, offset))
            }
            Err(e) => {
                let path = self.dir.join(segment_name(a.id));
                // Best effort: take back whatever part of the record landed.
                let undone = a
                    .file
                    .set_len(offset)
                    .and_then(|()| a.file.seek(SeekFrom::Start(offset)));
                if undone.is_err() {
                    // The tail is unknown: never append behind it again.
                    if let Ok(m) = fs::metadata(&path) {
                        seg.size = m.len();
                    }
                    if self.sync_mode == SyncMode::Batch {
                        // `sync()` will not reach this file any more.
                        let _ = a.file.sync_data();
                    }
                    self.active = None;
                }
                Err(err(format!(
                    "could not append to backlog segment {}: {e}",
                    path.display()
                )))
            }
        }
    }

    /// Append `points` as one record, numbered from `next_seq` on.
    pub(super) fn append_record(
        &mut self,
        points: &[Point],
        stored_at: i64,
    ) -> Result<(), BacklogError> {
        if points.is_empty() {
            return Ok(());
        }
        let count = u32::try_from(points.len()).map_err(|_| {
            err(format!(
                "could not append {} points to the backlog: batch too large",
                points.len()
            ))
        })?;
        let header = RecordHeader {
            version: RECORD_VERSION,
            first_seq: self.next_seq,
            count,
            stored_at,
        };
        let (frame, len32) = match encode_frame(&header, points, std::mem::take(&mut self.buf)) {
            Ok(f) => f,
            Err((msg, buf)) => {
                self.buf = buf;
                return Err(err(msg));
            }
        };
        let written = self.write_frame(&frame);
        self.buf = frame;
        let (seg, offset) = written?;
        self.index.push_back(RecordMeta {
            seg,
            offset,
            len: len32,
            first_seq: self.next_seq,
            count,
            stored_at,
        });
        self.next_seq += u64::from(count);
        self.indexed_points += u64::from(count);
        Ok(())
    }

    /// fsync the active segment and the directory if written since (Batch
    /// mode only: the other modes have nothing to catch up on).
    pub(super) fn sync_batch(&mut self) -> Result<(), BacklogError> {
        if self.sync_mode != SyncMode::Batch {
            return Ok(());
        }
        self.sync_active()
    }

    /// The same in Never mode too, for a durable acknowledgement: the
    /// active segment holds the record just appended (older segments are
    /// not reached; in Never mode they stay the OS's business). Always
    /// mode synced every write already.
    pub(super) fn sync_forced(&mut self) -> Result<(), BacklogError> {
        if self.sync_mode == SyncMode::Always {
            return Ok(());
        }
        self.sync_active()
    }

    /// fsync the active segment and the directory if written since.
    fn sync_active(&mut self) -> Result<(), BacklogError> {
        if let Some(a) = &mut self.active {
            if a.dirty {
                a.file.sync_data().map_err(|e| {
                    err(format!(
                        "could not sync backlog segment {}: {e}",
                        self.dir.join(segment_name(a.id)).display()
                    ))
                })?;
                a.dirty = false;
            }
        }
        if self.dir_dirty {
            sync_dir(&self.dir);
            self.dir_dirty = false;
        }
        Ok(())
    }
}
