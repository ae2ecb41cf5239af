//! URL query strings (`db=telegraf&rp=autogen`), decoded as Go's
//! `url.Values.Get` does: the first value of a key wins, `+` is a space,
//! `%XX` a byte. A malformed escape is kept as written rather than
//! failing the request; bytes that are not UTF-8 become U+FFFD.

/// The decoded `key=value` pairs of a query string, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let Some(raw) = raw else {
            return Query::default();
        };
        Query(
            raw.split(['&', ';'])
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (unescape(k), unescape(v))
                })
                .collect(),
        )
    }

    /// The first value of `key`, if given (possibly empty).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `key`, `None` when absent or empty.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(c: &u8) -> Option<u8> {
    let c = *c;
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_as_go_does() {
        let q = Query::parse(Some("db=my+db&rp=a%2Fb&precision=s&db=second&empty=&flag"));
        assert_eq!(q.get("db"), Some("my db"));
        assert_eq!(q.get("rp"), Some("a/b"));
        assert_eq!(q.get("precision"), Some("s"));
        assert_eq!(q.get("empty"), Some(""));
        assert_eq!(q.non_empty("empty"), None);
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
        assert_eq!(Query::parse(None).get("db"), None);
    }

    #[test]
    fn malformed_input_is_kept_not_fatal() {
        let q = Query::parse(Some("a=%&b=%4&c=%zz&d=%e2%82%ac&e=%ff&%64b=x&&=v"));
        assert_eq!(q.get("a"), Some("%"));
        assert_eq!(q.get("b"), Some("%4"));
        assert_eq!(q.get("c"), Some("%zz"));
        assert_eq!(q.get("d"), Some("€"));
        assert_eq!(q.get("e"), Some("\u{fffd}"));
        assert_eq!(q.get("db"), Some("x"));
        assert_eq!(q.get(""), Some("v"));
    }
}
