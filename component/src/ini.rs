//! INI files in the gateway's dialect (Python configparser): `[section]`,
//! `key = value` or `key: value`, `#`/`;` comment lines, inline ` # comments`
//! after values, case-insensitive keys, indented continuation lines.

/// One `key = value` as written, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub line: usize,
    pub entries: Vec<Entry>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }

    /// Key/value pairs, later duplicates overriding earlier ones.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for e in &self.entries {
            match out.iter_mut().find(|(k, _)| *k == e.key) {
                Some(slot) => slot.1 = e.value.clone(),
                None => out.push((e.key.clone(), e.value.clone())),
            }
        }
        out
    }
}

/// A syntax error: 1-based line and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for IniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Cut an inline comment: `#` or `;` preceded by whitespace.
fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for i in 1..bytes.len() {
        if (bytes[i] == b'#' || bytes[i] == b';') && bytes[i - 1].is_ascii_whitespace() {
            return value[..i].trim_end();
        }
    }
    value
}

pub fn parse(text: &str) -> Result<Vec<Section>, IniError> {
    let mut sections: Vec<Section> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        if indented {
            if let Some(entry) = sections.last_mut().and_then(|s| s.entries.last_mut()) {
                let more = strip_inline_comment(trimmed);
                if !entry.value.is_empty() {
                    entry.value.push('\n');
                }
                entry.value.push_str(more);
                continue;
            }
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| IniError {
                line,
                reason: format!("section header `{trimmed}` has no closing `]`"),
            })?;
            let name = name.trim();
            if name.is_empty() {
                return Err(IniError {
                    line,
                    reason: "empty section name `[]`".into(),
                });
            }
            if sections.iter().any(|s| s.name == name) {
                return Err(IniError {
                    line,
                    reason: format!("section [{name}] appears twice"),
                });
            }
            sections.push(Section {
                name: name.to_string(),
                line,
                entries: Vec::new(),
            });
            continue;
        }
        let split = trimmed.find(['=', ':']).ok_or_else(|| IniError {
            line,
            reason: format!("expected `key = value` or a `[section]`, found `{trimmed}`"),
        })?;
        let key = trimmed[..split].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(IniError {
                line,
                reason: format!("missing key before `=` in `{trimmed}`"),
            });
        }
        let value = strip_inline_comment(trimmed[split + 1..].trim()).to_string();
        let section = sections.last_mut().ok_or_else(|| IniError {
            line,
            reason: format!("`{key}` appears before any [section] header"),
        })?;
        section.entries.push(Entry { key, value, line });
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_style_with_inline_comments() {
        let text = "# top\n[influxdb_output]\ntransport = influxdb_out\nPort: 8086\nperiodic_reconnect_interval = 1800.0  # 30 minutes\n; note\nmax_backlog_age = 3600 ; 1 hour\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "influxdb_output");
        assert_eq!(s[0].get("port").unwrap().value, "8086");
        assert_eq!(
            s[0].get("periodic_reconnect_interval").unwrap().value,
            "1800.0"
        );
        assert_eq!(s[0].get("max_backlog_age").unwrap().value, "3600");
        assert_eq!(s[0].get("max_backlog_age").unwrap().line, 7);
    }

    #[test]
    fn hash_inside_a_value_is_kept() {
        let s = parse("[a]\npassword = se#cret\n").unwrap();
        assert_eq!(s[0].get("password").unwrap().value, "se#cret");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("[a]\nport 8086\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("port 8086"), "{e}");
        assert_eq!(parse("x = 1\n").unwrap_err().line, 1);
        assert_eq!(parse("[a\n").unwrap_err().line, 1);
        assert_eq!(parse("[a]\n[a]\n").unwrap_err().line, 2);
    }

    #[test]
    fn later_duplicate_key_wins_and_continuations_join() {
        let s = parse("[a]\nk = 1\nk = 2\nurls = x,\n  y\n").unwrap();
        assert_eq!(
            s[0].pairs(),
            vec![("k".into(), "2".into()), ("urls".into(), "x,\ny".into())]
        );
    }
}
