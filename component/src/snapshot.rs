//! The live state handed from one component instance (or version) to the
//! next: versioned postcard bytes.

use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::point::Point;
use crate::policy::Counters;

/// Bumped whenever the layout below changes; a newer state than this build
/// understands is refused, never misread.
pub const STATE_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub settings: Settings,
    pub counters: Counters,
    /// Accepted points not yet in the backlog, oldest first.
    pub points: Vec<Point>,
}

pub fn encode(state: &State) -> Vec<u8> {
    let mut out = STATE_VERSION.to_le_bytes().to_vec();
    out.extend(postcard::to_allocvec(state).expect("state encodes"));
    out
}

pub fn decode(bytes: &[u8]) -> Result<State, String> {
    let (head, body) = bytes
        .split_at_checked(2)
        .ok_or("snapshot is empty or truncated")?;
    let version = u16::from_le_bytes([head[0], head[1]]);
    if version != STATE_VERSION {
        return Err(format!("snapshot state version {version} is not supported by this build (it reads version {STATE_VERSION})"));
    }
    postcard::from_bytes(body).map_err(|e| format!("snapshot is damaged: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let s = State {
            settings: Settings::defaults("o"),
            counters: Counters {
                accepted: 3,
                ..Default::default()
            },
            points: vec![Point {
                line: "m f=1".into(),
                series_len: 1,
                timestamp: 5,
            }],
        };
        let bytes = encode(&s);
        assert_eq!(decode(&bytes).unwrap(), s);
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert!(decode(&newer).unwrap_err().contains("version 2"));
        assert!(decode(&bytes[..1]).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
