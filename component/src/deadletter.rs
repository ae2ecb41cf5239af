//! The dead-letter file: lines a server refused for good, kept beside the
//! backlog as replayable line protocol so nothing disappears unseen.
//!
//! `rejected.lp` grows to `max_rejected_bytes`; then it becomes
//! `rejected.lp.1` (replacing the older one) and a new file starts, so the
//! two take at most twice the bound.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::policy::DeadLetter;

pub const FILE_NAME: &str = "rejected.lp";

pub struct DeadLetterFile {
    path: PathBuf,
    older: PathBuf,
    max_bytes: u64,
}

impl DeadLetterFile {
    pub fn new(dir: &Path, max_bytes: u64) -> Self {
        DeadLetterFile {
            path: dir.join(FILE_NAME),
            older: dir.join(format!("{FILE_NAME}.1")),
            max_bytes,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one refusal: a comment line (time, output, reason,
    /// precision) and the refused lines.
    pub fn append(
        &self,
        output: &str,
        wall_ns: i64,
        precision: &str,
        letter: &DeadLetter,
    ) -> io::Result<()> {
        let reason = letter.reason.replace(['\n', '\r'], " ");
        let mut text = format!(
            "# {} [{output}] {} point(s) refused for good, precision={precision}: {reason}\n",
            crate::timefmt::rfc3339_millis(wall_ns),
            letter.points
        )
        .into_bytes();
        text.extend_from_slice(&letter.lines);
        let size = fs::metadata(&self.path).map_or(0, |m| m.len());
        if size > 0 && size + text.len() as u64 > self.max_bytes {
            fs::rename(&self.path, &self.older)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(lines: &str) -> DeadLetter {
        DeadLetter {
            reason: "HTTP 400: partial write:\nfield type conflict".into(),
            lines: lines.as_bytes().to_vec(),
            points: lines.lines().count() as u64,
        }
    }

    #[test]
    fn appends_replayable_line_protocol_with_a_comment() {
        let dir = tempfile::tempdir().unwrap();
        let f = DeadLetterFile::new(dir.path(), 1 << 20);
        f.append("out", 0, "ns", &letter("m v=\"x\" 1\n")).unwrap();
        f.append("out", 0, "ns", &letter("m v=\"y\" 2\n")).unwrap();
        let text = fs::read_to_string(f.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("# 1970-01-01T00:00:00.000Z [out] 1 point(s)"));
        assert!(lines[0].ends_with("partial write: field type conflict"));
        assert_eq!(lines[1], "m v=\"x\" 1");
        assert_eq!(lines[3], "m v=\"y\" 2");
    }

    #[test]
    fn is_bounded_to_two_generations() {
        let dir = tempfile::tempdir().unwrap();
        let f = DeadLetterFile::new(dir.path(), 4096);
        let line = format!("m v=\"{}\" 1\n", "x".repeat(500));
        for _ in 0..100 {
            f.append("out", 0, "ns", &letter(&line)).unwrap();
        }
        let now = fs::metadata(f.path()).unwrap().len();
        let older = fs::metadata(dir.path().join("rejected.lp.1"))
            .unwrap()
            .len();
        assert!(now <= 4096 && older <= 4096, "{now} {older}");
        assert!(now > 0 && older > 3000);
    }
}
