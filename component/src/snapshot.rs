//! The live state handed from one component instance (or version) to the
//! next: versioned postcard bytes.
//!
//! Layout: `version: u16 LE`, `min_reader: u16 LE`, then the version-1
//! base (postcard), then each later version's extension (postcard), in
//! order. A version that only *adds* what older builds may ignore keeps
//! `min_reader` where it was, so a swap back to an older build works; one
//! that changes meaning raises it, and older builds refuse the state
//! rather than misread it (the scheme of SQLite's read/write versions and
//! ext4's incompatible features).
//!
//! State version 2 adds the stamper (the last time each fast series was
//! stamped with), so a swap cannot give a series a time twice, and a
//! setting to the base, so version 1 builds may not read it.
//!
//! The `next` feature builds the live-upgrade test's "version 3": another
//! version string and state version 3, which adds `lineage` (the builds the
//! state went through).

use serde::{Deserialize, Serialize};

use crate::backlog::file::IndexHint;
use crate::config::Settings;
use crate::point::Point;
use crate::policy::Carried;
use crate::stamp::Stamper;

#[cfg(not(feature = "next"))]
pub const STATE_VERSION: u16 = 2;
#[cfg(feature = "next")]
pub const STATE_VERSION: u16 = 3;

/// The oldest build (by state version) that may read what this one writes:
/// version 2 changed the settings in the base (`max_requests_in_flight`).
const MIN_READER: u16 = 2;

/// This build's version string.
#[cfg(not(feature = "next"))]
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "next")]
pub const BUILD_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-next");

/// What a snapshot holds, in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub settings: Settings,
    pub carried: Carried,
    pub backlog_hint: Option<IndexHint>,
    /// Per-series stamps ahead of the clock (state version 2; empty from
    /// a version 1 writer).
    pub stamper: Stamper,
    /// Builds this state went through, oldest first (state version 3; empty
    /// when the writer or the reader is older).
    pub lineage: Vec<String>,
}

/// State version 1 on the wire (written from borrowed parts, read owned).
#[derive(Serialize, Deserialize)]
struct Base<S, P, H> {
    settings: S,
    carried: Carried<P>,
    /// The predecessor's backlog index (a hint; see `IndexHint`).
    backlog_hint: Option<H>,
}

/// What state version 2 adds.
#[derive(Serialize, Deserialize)]
struct Ext2<T> {
    stamper: T,
}

/// What state version 3 adds.
#[cfg(feature = "next")]
#[derive(Serialize, Deserialize)]
struct Ext3 {
    lineage: Vec<String>,
}

/// Encode a state from its parts, without copying the points first: the
/// buffer is sized once (a snapshot of big batches must fit the memory cap).
pub fn encode(
    settings: &Settings,
    carried: &Carried<&Point>,
    backlog_hint: Option<&IndexHint>,
    stamper: &Stamper,
    lineage: &[String],
) -> Vec<u8> {
    let base = Base {
        settings,
        carried: carried.clone(),
        backlog_hint,
    };
    // Sized first, then written in place: a byte-wise writer costs several
    // ms per MB inside the swap pause.
    let size = postcard::experimental::serialized_size(&base).expect("state encodes");
    let mut out = vec![0u8; 4 + size];
    out[..2].copy_from_slice(&STATE_VERSION.to_le_bytes());
    out[2..4].copy_from_slice(&MIN_READER.to_le_bytes());
    postcard::to_slice(&base, &mut out[4..]).expect("state encodes");
    let out = postcard::to_extend(&Ext2 { stamper }, out).expect("state encodes");
    #[cfg(feature = "next")]
    let out = postcard::to_extend(
        &Ext3 {
            lineage: lineage.to_vec(),
        },
        out,
    )
    .expect("state encodes");
    let _ = lineage;
    out
}

pub fn decode(bytes: &[u8]) -> Result<State, String> {
    if bytes.len() < 4 {
        return Err("snapshot is empty or truncated".into());
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    let min_reader = u16::from_le_bytes([bytes[2], bytes[3]]);
    if min_reader > STATE_VERSION || version == 0 {
        return Err(format!(
            "snapshot state version {version} needs a build that reads state version {min_reader}; \
             this build ({BUILD_VERSION}) reads up to {STATE_VERSION}: refused"
        ));
    }
    let damaged =
        |e: postcard::Error| format!("snapshot (state version {version}) is damaged: {e}");
    let (base, rest): (Base<Settings, Point, IndexHint>, &[u8]) =
        postcard::take_from_bytes(&bytes[4..]).map_err(damaged)?;
    #[allow(unused_mut)]
    let mut state = State {
        settings: base.settings,
        carried: base.carried,
        backlog_hint: base.backlog_hint,
        stamper: Stamper::default(),
        lineage: Vec::new(),
    };
    let mut rest = rest;
    if version >= 2 {
        let (ext, more): (Ext2<Stamper>, &[u8]) =
            postcard::take_from_bytes(rest).map_err(damaged)?;
        state.stamper = ext.stamper;
        rest = more;
    }
    #[cfg(feature = "next")]
    if version >= 3 {
        let (ext, _): (Ext3, &[u8]) = postcard::take_from_bytes(rest).map_err(damaged)?;
        state.lineage = ext.lineage;
    }
    // Extensions of versions this build does not know are skipped: their
    // writer said (by `min_reader`) that they may be.
    let _ = rest;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backlog::memory::MemoryBacklog;
    use crate::policy::Policy;

    fn state() -> State {
        let mut p = Policy::new(Settings::defaults("o"), MemoryBacklog::new(), 0, 0);
        let point = |timestamp| Point {
            line: "m f=1".into(),
            series_len: 1,
            timestamp,
        };
        p.write(vec![point(5), point(crate::stamp::UNSTAMPED)], 0, 7);
        State {
            settings: Settings::defaults("o"),
            carried: p.carry(0).to_owned(),
            backlog_hint: Some(IndexHint {
                segments: vec![(3, 100, vec![(8, 50, 10, 5, 77)])],
            }),
            stamper: p.stamper().clone(),
            lineage: Vec::new(),
        }
    }

    fn bytes(s: &State) -> Vec<u8> {
        encode(
            &s.settings,
            &s.carried.as_refs(),
            s.backlog_hint.as_ref(),
            &s.stamper,
            &s.lineage,
        )
    }

    #[test]
    fn round_trip_and_version_check() {
        let s = state();
        let bytes = bytes(&s);
        assert_eq!(decode(&bytes).unwrap(), s);
        assert_eq!(decode(&bytes).unwrap().carried.points.len(), 2);
        assert_ne!(s.stamper, Stamper::default(), "the stamper travels too");
        // A state that only builds reading version 9 may read: refused.
        let mut newer = bytes.clone();
        newer[0] = 9;
        newer[2] = 9;
        assert!(decode(&newer).unwrap_err().contains("refused"));
        // A newer version that older builds may read: read, extension skipped.
        let mut compatible = bytes.clone();
        compatible[0] = 9;
        compatible.extend([3, 1, 2, 3]);
        assert_eq!(decode(&compatible).unwrap().carried, s.carried);
        assert!(decode(&bytes[..3]).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[cfg(feature = "next")]
    #[test]
    fn next_keeps_its_extra_field() {
        let mut s = state();
        s.lineage = vec!["0.1.0".into()];
        assert_eq!(decode(&bytes(&s)).unwrap().lineage, s.lineage);
    }
}
