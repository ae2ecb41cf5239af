//! Full batches waiting to be sent while the server is up, with running
//! totals: `room` and `stats` are asked after every write, so they must not
//! walk thousands of points.

use std::collections::VecDeque;

use crate::point::Point;

#[derive(Default)]
pub struct Ready {
    batches: VecDeque<Vec<Point>>,
    points: usize,
    /// In-memory size of those points (`Point::mem_size`).
    bytes: usize,
}

impl Ready {
    pub fn push_back(&mut self, batch: Vec<Point>) {
        self.points += batch.len();
        self.bytes += batch.iter().map(Point::mem_size).sum::<usize>();
        self.batches.push_back(batch);
    }

    pub fn pop_front(&mut self) -> Option<Vec<Point>> {
        let batch = self.batches.pop_front()?;
        self.points -= batch.len();
        self.bytes -= batch.iter().map(Point::mem_size).sum::<usize>();
        Some(batch)
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn points(&self) -> usize {
        self.points
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The points, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Point> {
        self.batches.iter().flatten()
    }
}
