//! What the listener hands to the rest of the program, and what it wants
//! back: one [`Write`] per accepted request, answered by an [`Accepted`].
//!
//! The listener does HTTP (routing, auth, limits, gzip) and nothing else;
//! parsing line protocol, routing to outputs and making points durable
//! are the [`Acceptor`]'s business. Keeping that seam a small trait lets
//! the HTTP front be tested without the pipeline, and the pipeline without
//! HTTP.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;

/// Where accepted writes go.
///
/// `accept` resolves only once the points are durable (or refused): the
/// HTTP client gets its `204` only then, so a client that saw success may
/// forget its data. It is called concurrently, once per request in flight.
pub trait Acceptor: Send + Sync + 'static {
    fn accept(&self, write: Write) -> impl Future<Output = Accepted> + Send;
}

/// One write request, authenticated and inflated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Which database or bucket the client named.
    pub target: Target,
    /// The unit of the lines' timestamps.
    pub precision: Precision,
    /// The request body as sent (gzip already inflated): line protocol,
    /// not checked in any way, not even for UTF-8.
    pub lines: Bytes,
    /// The client's address (for logs or per-client limits).
    pub peer: SocketAddr,
}

/// The destination as the client's API names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `POST /write?db=..&rp=..` (InfluxDB 1.x).
    V1 { db: String, rp: Option<String> },
    /// `POST /api/v2/write?org=..&bucket=..` (InfluxDB 2.x); `org` is the
    /// `org` parameter, else `orgID`, else `None`.
    V2 { org: Option<String>, bucket: String },
}

/// Timestamp precision of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    /// 1.x only (`m`).
    Minutes,
    /// 1.x only (`h`).
    Hours,
}

impl Precision {
    /// The 1.x `precision` parameter: `n`/`ns`, `u`/`us`/`µ`, `ms`, `s`,
    /// `m`, `h`; empty means nanoseconds. (InfluxDB 1.x reads any other
    /// value as nanoseconds; this listener refuses it instead, since a
    /// misread unit silently shifts every timestamp.)
    pub fn from_v1(s: &str) -> Option<Precision> {
        Some(match s {
            "" | "n" | "ns" => Precision::Nanoseconds,
            "u" | "us" | "µ" | "µs" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            _ => return None,
        })
    }

    /// The 2.x `precision` parameter: `ns`, `us`, `ms`, `s`; empty means
    /// nanoseconds.
    pub fn from_v2(s: &str) -> Option<Precision> {
        Some(match s {
            "" | "ns" => Precision::Nanoseconds,
            "us" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            _ => return None,
        })
    }

    /// Nanoseconds in one unit.
    pub fn nanos(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60_000_000_000,
            Precision::Hours => 3_600_000_000_000,
        }
    }

    /// The canonical short name (`ns`, `us`, `ms`, `s`, `m`, `h`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Nanoseconds => "ns",
            Precision::Microseconds => "us",
            Precision::Milliseconds => "ms",
            Precision::Seconds => "s",
            Precision::Minutes => "m",
            Precision::Hours => "h",
        }
    }
}

/// The acceptor's answer; the listener turns it into InfluxDB's status
/// code and body for the API the client used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// The kept points are durable. `rejected` lists the lines refused
    /// (bad line protocol, say); all others were kept. Empty: `204`.
    /// Otherwise `400` naming the refused lines ("partial write" when
    /// `accepted > 0`, as InfluxDB words it).
    Durable {
        accepted: usize,
        rejected: Vec<Rejected>,
    },
    /// No output takes this database/bucket: `404` (`database not found`
    /// / `bucket not found`, the words clients look for).
    Unroutable,
    /// Cannot take data now (backlog full, shutting down): `503` with
    /// `Retry-After`.
    Busy { retry_after_s: u64, why: String },
    /// The write can never be taken whole (more than an output's backlog
    /// holds): `413`.
    TooLarge(String),
    /// This client is over its rate: `429` with `Retry-After`.
    TooMany { retry_after_s: u64 },
    /// Anything else: `500`.
    Failed(String),
}

/// One refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 0-based index of the line in [`Write::lines`] split at `\n`
    /// (blank and comment lines count).
    pub line: usize,
    /// Why, as shown to the client after `unable to parse '<line>': `.
    pub reason: String,
}
