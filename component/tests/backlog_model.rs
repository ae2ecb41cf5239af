//! Property test: random sequences of append (1 to ~300 points), peek,
//! consume, enforce_size, enforce_age, sync, reopen and crash-reopen, on
//! `FileBacklog` (small segments, so records roll over and segments are
//! deleted) and on `MemoryBacklog`, against a `VecDeque` of points: after
//! every step the same `len`, the same peeked points, the same
//! `oldest_stored_at`, the same counts dropped by the limits.
//!
//! Reopen: `FileBacklog` is dropped and opened again (the open must be
//! clean); `MemoryBacklog` has nothing to reopen (a sync). Crash-reopen:
//! `FileBacklog` is dropped without a sync (its writes are in the page
//! cache, so nothing may be lost); `MemoryBacklog::crash` loses the appends
//! since the last sync, and so does the model.

use std::collections::VecDeque;
use std::path::Path;

use influx_sink_component::backlog::file::{FileBacklog, SyncMode};
use influx_sink_component::backlog::memory::MemoryBacklog;
use influx_sink_component::backlog::Backlog;
use influx_sink_component::point::Point;
use proptest::collection::vec;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// `n` points, stored `dt` after the previous append (may go back).
    Append {
        n: u64,
        dt: i64,
    },
    Peek(usize),
    Consume(u64),
    EnforceSize(u64),
    /// Cutoff `age` before the time of the last append.
    EnforceAge(i64),
    Sync,
    Reopen,
    CrashReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u64..40, -2i64..6).prop_map(|(n, dt)| Op::Append { n, dt }),
        1 => (40u64..300, 0i64..3).prop_map(|(n, dt)| Op::Append { n, dt }),
        5 => (0usize..150).prop_map(Op::Peek),
        5 => (0u64..150).prop_map(Op::Consume),
        1 => (0u64..400).prop_map(Op::EnforceSize),
        1 => (-2i64..25).prop_map(Op::EnforceAge),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashReopen),
    ]
}

/// Point `seq`: its content varies with `seq` (series, field types and
/// count), so records differ in size and encoding.
fn point(seq: u64) -> Point {
    let series = format!("m{},host=h{}", seq % 3, seq % 7);
    let mut fields = vec![format!("seq={seq}i")];
    for k in 0..seq % 5 {
        fields.push(match (seq + k) % 4 {
            0 => format!("f{k}={}.{}", seq % 1000, k),
            1 => format!("f{k}=\"s{}\"", "x".repeat((seq % 13) as usize)),
            2 => format!("f{k}={}", seq.is_multiple_of(2)),
            _ => format!("f{k}={}u", seq * 31),
        });
    }
    Point {
        series_len: series.len() as u32,
        line: format!("{series} {}", fields.join(",")),
        timestamp: 1_700_000_000_000_000_000 + seq as i64,
    }
}

/// The model: every live point with its stored_at, and whether it was
/// appended before the last sync.
#[derive(Default)]
struct Model {
    q: VecDeque<(i64, Point, bool)>,
}

impl Model {
    fn len(&self) -> u64 {
        self.q.len() as u64
    }
    fn drop_front(&mut self, n: u64) -> u64 {
        let n = n.min(self.len());
        self.q.drain(..n as usize);
        n
    }
    fn peek(&self, n: usize) -> Vec<Point> {
        self.q.iter().take(n).map(|(_, p, _)| p.clone()).collect()
    }
    fn oldest(&self) -> Option<i64> {
        self.q.front().map(|x| x.0)
    }
}

/// The backlog under test.
enum Subject {
    File {
        dir: tempfile::TempDir,
        segment_bytes: u64,
        b: Option<FileBacklog>,
    },
    Memory(MemoryBacklog),
}

fn open_file(dir: &Path, segment_bytes: u64, expect_len: u64) -> Result<FileBacklog, String> {
    let (mut b, r) = FileBacklog::open(dir, SyncMode::Batch).map_err(|e| e.0)?;
    if !r.warnings.is_empty() || r.points != expect_len || r.lost_points != 0 {
        return Err(format!(
            "open was not clean ({expect_len} points expected): {r:?}"
        ));
    }
    b.set_segment_bytes(segment_bytes);
    Ok(b)
}

impl Subject {
    fn backlog(&mut self) -> &mut dyn Backlog {
        match self {
            Subject::File { b, .. } => b.as_mut().expect("open"),
            Subject::Memory(m) => m,
        }
    }

    fn reopen(&mut self, crash: bool, model: &mut Model) -> Result<(), String> {
        match self {
            Subject::File {
                dir,
                segment_bytes,
                b,
            } => {
                let mut old = b.take().expect("open");
                if !crash {
                    old.sync().map_err(|e| e.0)?;
                }
                drop(old);
                *b = Some(open_file(dir.path(), *segment_bytes, model.len())?);
            }
            Subject::Memory(m) => {
                if crash {
                    m.crash();
                    model.q.retain(|x| x.2);
                } else {
                    m.sync().map_err(|e| e.0)?;
                    model.q.iter_mut().for_each(|x| x.2 = true);
                }
            }
        }
        Ok(())
    }

    /// Files on disk agree with `bytes()`.
    fn check_disk(&mut self) -> Result<(), String> {
        if let Subject::File { dir, b, .. } = self {
            let on_disk: u64 = std::fs::read_dir(dir.path())
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum();
            let bytes = b.as_ref().expect("open").bytes();
            if on_disk != bytes {
                return Err(format!("bytes() {bytes} but {on_disk} on disk"));
            }
        }
        Ok(())
    }
}

fn run(mut s: Subject, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    let (mut seq, mut now) = (0u64, 1_000i64);
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step} ({op:?})");
        match *op {
            Op::Append { n, dt } => {
                now += dt;
                let points: Vec<Point> = (seq..seq + n).map(point).collect();
                s.backlog().append(&points, now).map_err(|e| fail(&at, e))?;
                m.q.extend(points.into_iter().map(|p| (now, p, false)));
                seq += n;
            }
            Op::Peek(n) => {
                let got = s.backlog().peek(n).map_err(|e| fail(&at, e))?;
                prop_assert!(got == m.peek(n), "{at}: peeked points differ");
            }
            Op::Consume(n) => {
                s.backlog().consume(n).map_err(|e| fail(&at, e))?;
                m.drop_front(n);
            }
            Op::EnforceSize(max) => {
                let got = s.backlog().enforce_size(max).map_err(|e| fail(&at, e))?;
                let want = m.drop_front(m.len().saturating_sub(max));
                prop_assert_eq!(got, want, "{}: dropped by enforce_size", at);
            }
            Op::EnforceAge(age) => {
                let cutoff = now - age;
                let got = s.backlog().enforce_age(cutoff).map_err(|e| fail(&at, e))?;
                let old = m.q.iter().take_while(|x| x.0 < cutoff).count() as u64;
                let want = m.drop_front(old);
                prop_assert_eq!(got, want, "{}: dropped by enforce_age", at);
            }
            Op::Sync => {
                s.backlog().sync().map_err(|e| fail(&at, e))?;
                m.q.iter_mut().for_each(|x| x.2 = true);
            }
            Op::Reopen => s.reopen(false, &mut m).map_err(|e| fail(&at, e))?,
            Op::CrashReopen => s.reopen(true, &mut m).map_err(|e| fail(&at, e))?,
        }
        let b = s.backlog();
        prop_assert_eq!(b.len(), m.len(), "{}: len", at);
        prop_assert_eq!(b.is_empty(), m.q.is_empty(), "{}: is_empty", at);
        prop_assert_eq!(b.oldest_stored_at(), m.oldest(), "{}: oldest_stored_at", at);
        s.check_disk().map_err(|e| fail(&at, e))?;
    }
    // Everything left drains in order.
    let all = s
        .backlog()
        .peek(usize::MAX)
        .map_err(|e| fail("final peek", e))?;
    prop_assert!(all == m.peek(usize::MAX), "final contents differ");
    s.reopen(false, &mut m)
        .map_err(|e| fail("final reopen", e))?;
    let all = s
        .backlog()
        .peek(usize::MAX)
        .map_err(|e| fail("peek after reopen", e))?;
    prop_assert!(
        all == m.peek(usize::MAX),
        "contents differ after the final reopen"
    );
    Ok(())
}

fn fail(at: &str, e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{at}: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn file_backlog_matches_model(segment_bytes in 150u64..6000, ops in vec(op(), 1..150)) {
        let dir = tempfile::Builder::new().prefix("backlog-model-").tempdir().expect("temp dir");
        let b = open_file(dir.path(), segment_bytes, 0).map_err(|e| fail("open", e))?;
        run(Subject::File { dir, segment_bytes, b: Some(b) }, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn memory_backlog_matches_model(ops in vec(op(), 1..200)) {
        run(Subject::Memory(MemoryBacklog::new()), &ops)?;
    }
}
