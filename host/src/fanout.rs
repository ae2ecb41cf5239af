//! Hands each piece of input to every sink's bounded queue.
//!
//! A replayable source (stdin, a generator running as fast as it can) waits
//! for a full queue: nothing is lost, reading just slows to the slowest sink.
//! A live source (a generator with a rate) cannot wait without falling
//! behind real time, so a sink whose queue is full misses that piece: it is
//! counted in that sink's `dropped` and logged once per episode, while the
//! source and the other sinks go on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::log;

/// A piece of input: whole lines, and the 1-based number of its first line.
pub struct Chunk {
    pub bytes: Arc<Vec<u8>>,
    /// This chunk's lines are `bytes[start..end]` (a chunk is written in
    /// parts when the sink has room for only some of it).
    pub start: usize,
    pub end: usize,
    pub first_line: u64,
}

impl Chunk {
    /// The lines of this chunk.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Cut after the first `lines` lines (at least one): those, and the
    /// rest if any.
    pub fn split_lines(self, lines: u64) -> (Chunk, Option<Chunk>) {
        let cut = memchr::memchr_iter(b'\n', self.data())
            .nth(lines.max(1) as usize - 1)
            .map(|i| self.start + i + 1)
            .filter(|&at| at < self.end);
        let Some(at) = cut else {
            return (self, None);
        };
        let rest = Chunk {
            bytes: self.bytes.clone(),
            start: at,
            end: self.end,
            first_line: self.first_line + lines.max(1),
        };
        let head = Chunk { end: at, ..self };
        (head, Some(rest))
    }
}

/// The receiving end one sink task holds.
pub struct Inlet {
    pub rx: mpsc::Receiver<Chunk>,
    /// Points this sink missed because its queue was full.
    pub missed: Arc<AtomicU64>,
}

struct Outlet {
    name: String,
    tx: mpsc::Sender<Chunk>,
    missed: Arc<AtomicU64>,
    overflowing: bool,
}

pub struct Fanout {
    outlets: Vec<Outlet>,
    live: bool,
}

impl Fanout {
    pub fn new(live: bool) -> Self {
        Fanout {
            outlets: Vec::new(),
            live,
        }
    }

    /// Add a sink with a queue of `capacity` chunks.
    pub fn add(&mut self, name: &str, capacity: usize) -> Inlet {
        let (tx, rx) = mpsc::channel(capacity);
        let missed = Arc::new(AtomicU64::new(0));
        self.outlets.push(Outlet {
            name: name.to_string(),
            tx,
            missed: missed.clone(),
            overflowing: false,
        });
        Inlet { rx, missed }
    }

    pub fn set_live(&mut self, live: bool) {
        self.live = live;
    }

    /// Give `bytes` (holding `points` lines, starting at `first_line`) to
    /// every sink.
    pub async fn send(&mut self, bytes: Vec<u8>, first_line: u64, points: u64) {
        let bytes = Arc::new(bytes);
        for o in &mut self.outlets {
            let chunk = Chunk {
                bytes: bytes.clone(),
                start: 0,
                end: bytes.len(),
                first_line,
            };
            if !self.live {
                let _ = o.tx.send(chunk).await; // Err: the sink has ended
                continue;
            }
            match o.tx.try_send(chunk) {
                Ok(()) => o.overflowing = false,
                Err(TrySendError::Full(_)) => {
                    o.missed.fetch_add(points, Ordering::Relaxed);
                    if !o.overflowing {
                        o.overflowing = true;
                        log::warn(
                            &o.name,
                            "Not keeping up with the live source: input queue full, \
                             dropping points until it catches up (counted in dropped)",
                        );
                    }
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn live_source_skips_a_full_sink_and_counts_it() {
        let mut f = Fanout::new(true);
        let mut fast = f.add("fast", 1);
        let slow = f.add("slow", 1);
        f.send(b"a 1\n".to_vec(), 1, 1).await;
        fast.rx.recv().await.unwrap();
        f.send(b"b 1\nc 1\n".to_vec(), 2, 2).await; // slow's queue is full
        assert_eq!(
            fast.rx.recv().await.unwrap().first_line,
            2,
            "fast sink missed input"
        );
        assert_eq!(slow.missed.load(Ordering::Relaxed), 2);
        assert_eq!(fast.missed.load(Ordering::Relaxed), 0);
    }

    fn chunk(text: &[u8]) -> Chunk {
        Chunk {
            bytes: Arc::new(text.to_vec()),
            start: 0,
            end: text.len(),
            first_line: 10,
        }
    }

    #[test]
    fn split_lines_cuts_after_whole_lines() {
        let (head, rest) = chunk(b"a 1\nb 1\nc 1\n").split_lines(2);
        assert_eq!(head.data(), b"a 1\nb 1\n");
        assert_eq!(head.first_line, 10);
        let rest = rest.unwrap();
        assert_eq!((rest.data(), rest.first_line), (&b"c 1\n"[..], 12));
        let (again, none) = rest.split_lines(5);
        assert_eq!(again.data(), b"c 1\n");
        assert!(none.is_none());
        // A last line without its newline stays with the rest.
        let (head, rest) = chunk(b"a 1\nb 1").split_lines(1);
        assert_eq!(head.data(), b"a 1\n");
        assert_eq!(rest.unwrap().data(), b"b 1");
    }

    #[tokio::test]
    async fn replayable_source_waits_and_loses_nothing() {
        let mut f = Fanout::new(false);
        let mut inlet = f.add("s", 1);
        let reader = tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(c) = inlet.rx.recv().await {
                lines.push(c.first_line);
            }
            (lines, inlet.missed.load(Ordering::Relaxed))
        });
        for i in 0..50 {
            f.send(b"m v=1\n".to_vec(), i, 1).await;
        }
        drop(f);
        let (lines, missed) = reader.await.unwrap();
        assert_eq!(lines, (0..50).collect::<Vec<_>>());
        assert_eq!(missed, 0);
    }
}
