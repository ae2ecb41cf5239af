//! The cursor file: the sequence number of the oldest live point, kept in
//! two checksummed slots written alternately, so that a torn write of one
//! leaves the other to fall back on.

use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::writer::SyncMode;
use super::{err, u32_at, u64_at, FileBacklog};
use crate::backlog::{BacklogError, RecoveryReport};

pub(super) const CURSOR_FILE: &str = "cursor";
const CURSOR_MAGIC: &[u8; 8] = b"INFXCUR\0";
const CURSOR_SLOT_LEN: u64 = 32;

/// The newest valid slot of the cursor file.
#[derive(Clone, Copy, Debug)]
pub(super) struct StoredCursor {
    pub(super) generation: u64,
    pub(super) seq: u64,
    /// The other slot is valid too (older), or this is the first cursor
    /// ever written (generation 1; the other slot was never written): this
    /// is the newest cursor written. Otherwise the newest write may have
    /// been torn, and this one may lag behind points already deleted.
    pub(super) trusted: bool,
}

/// Read the cursor file: the (generation, seq) of the newest valid slot.
pub(super) fn read_cursor(
    path: &Path,
    have_segments: bool,
    report: &mut RecoveryReport,
) -> Option<(u64, u64)> {
    read_cursor_slots(path, have_segments, report).map(|s| (s.generation, s.seq))
}

/// Read the cursor file: its newest valid slot.
pub(super) fn read_cursor_slots(
    path: &Path,
    have_segments: bool,
    report: &mut RecoveryReport,
) -> Option<StoredCursor> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if have_segments {
                report.warnings.push(format!(
                    "backlog cursor {} is missing; starting from the oldest record \
                     (points already delivered may be sent again)",
                    path.display()
                ));
            }
            return None;
        }
        Err(e) => {
            report.warnings.push(format!(
                "could not read backlog cursor {}: {e}; starting from the oldest record \
                 (points already delivered may be sent again)",
                path.display()
            ));
            return None;
        }
    };
    let valid = |s: &[u8]| &s[..8] == CURSOR_MAGIC && crate::crc::crc32c(&s[..24]) == u32_at(s, 24);
    // A slot's content is its first 28 bytes (the rest is padding).
    let slots: Vec<&[u8]> = (0..2)
        .filter_map(|i| data.get(i * CURSOR_SLOT_LEN as usize..)?.get(..28))
        .collect();
    let best = slots
        .iter()
        .filter(|s| valid(s))
        .map(|s| (u64_at(s, 8), u64_at(s, 16)))
        .max_by_key(|&(generation, _)| generation);
    let Some((generation, seq)) = best else {
        report.warnings.push(format!(
            "backlog cursor {} has no valid slot; starting from the oldest record \
             (points already delivered may be sent again)",
            path.display()
        ));
        return None;
    };
    let trusted = slots.len() == 2
        && slots
            .iter()
            .all(|s| valid(s) || (generation == 1 && s.iter().all(|&b| b == 0)));
    Some(StoredCursor {
        generation,
        seq,
        trusted,
    })
}

impl FileBacklog {
    pub(super) fn cursor_path(&self) -> PathBuf {
        self.dir.join(CURSOR_FILE)
    }

    /// Persist `seq` as the head, in the slot the last write did not use.
    pub(super) fn write_cursor(&mut self, seq: u64) -> Result<(), BacklogError> {
        let generation = self.cursor_gen + 1;
        let mut slot = [0u8; CURSOR_SLOT_LEN as usize];
        slot[..8].copy_from_slice(CURSOR_MAGIC);
        slot[8..16].copy_from_slice(&generation.to_le_bytes());
        slot[16..24].copy_from_slice(&seq.to_le_bytes());
        let crc = crate::crc::crc32c(&slot[..24]);
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        let path = self.cursor_path();
        let always = self.sync_mode == SyncMode::Always;
        let file = match self.cursor_file.take() {
            Some(f) => Ok(f),
            None => OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path),
        };
        let result = file.and_then(|mut f| {
            f.seek(SeekFrom::Start((generation % 2) * CURSOR_SLOT_LEN))?;
            f.write_all(&slot)?;
            if always {
                f.sync_data()?;
            }
            Ok(f)
        });
        match result {
            Ok(f) => {
                self.cursor_file = Some(f);
                self.cursor_gen = generation;
                Ok(())
            }
            Err(e) => Err(err(format!(
                "could not write backlog cursor {}: {e}",
                path.display()
            ))),
        }
    }
}
