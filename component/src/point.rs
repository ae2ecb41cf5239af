//! The in-memory form of one accepted point.

/// One validated point: a canonical line-protocol line without its
/// timestamp (`series fields`), plus the timestamp the sink fixed for it.
///
/// Keeping the line as text makes the hot path (accept, batch, send) a copy;
/// only the backlog codec looks inside it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Point {
    /// `measurement[,tag=value...] field=value[,field=value...]`, escaped as
    /// line protocol, tags sorted by key.
    pub line: String,
    /// Byte length of the series key (`measurement[,tags]`) at the start of
    /// `line`; `line[series_len]` is the space before the fields.
    pub series_len: u32,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
}

impl Point {
    /// The series key: measurement and sorted tags.
    pub fn series(&self) -> &str {
        &self.line[..self.series_len as usize]
    }

    /// The field set, `k=v[,k=v...]`.
    pub fn fields(&self) -> &str {
        &self.line[self.series_len as usize + 1..]
    }

    /// Append `line timestamp\n` to an HTTP body.
    pub fn write_line_protocol(&self, out: &mut Vec<u8>) {
        self.write_line_protocol_in(out, 1);
    }

    /// Same, with the timestamp in units of `unit_ns` nanoseconds (the
    /// write precision), rounded down.
    pub fn write_line_protocol_in(&self, out: &mut Vec<u8>, unit_ns: i64) {
        out.extend_from_slice(self.line.as_bytes());
        out.push(b' ');
        let ts = self.timestamp.div_euclid(unit_ns);
        crate::codec::push_integer(out, ts < 0, ts.unsigned_abs(), b'\n');
    }

    /// Bytes this point occupies in memory (for bounds and stats).
    pub fn mem_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.line.capacity()
    }
}
