//! Field-level "Invalid value" errors printed the way upstream prints them.
//!
//! Upstream reports a bad label selector requirement as a `field.ErrorList` aggregate, for
//! example `values[0][tier]: Invalid value: "a b": a valid label must be ...`; clients show
//! that text to users, so it is reproduced here: Go's `%q` quoting for a string value, JSON for
//! a list of values, and `[a, b]` around an aggregate of more than one distinct message.

use std::fmt;

/// The offending value of an [`InvalidValue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadValue {
    /// One string, printed Go-quoted: `"a b"`.
    String(String),
    /// A list of values, printed as JSON; an empty list prints as `null`, as upstream's nil
    /// slice does.
    List(Vec<String>),
}

/// One invalid field of a requirement, e.g. `key: Invalid value: "-x": name part must ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: Invalid value: {value}: {detail}")]
pub struct InvalidValue {
    /// Upstream's field path (`key`, `values`, `values[0][tier]`), or `<nil>` when upstream
    /// reports the error with no path.
    pub field: String,
    pub value: BadValue,
    pub detail: String,
}

/// Every problem found in one requirement, in upstream's order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidValues(pub Vec<InvalidValue>);

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadValue::String(s) => f.write_str(&go_quote(s)),
            BadValue::List(items) if items.is_empty() => f.write_str("null"),
            BadValue::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&go_json_string(item))?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Display for InvalidValues {
    /// Upstream's aggregate: one message alone, several distinct ones as `[a, b]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut seen: Vec<String> = Vec::new();
        for err in &self.0 {
            let msg = err.to_string();
            if !seen.contains(&msg) {
                seen.push(msg);
            }
        }
        match seen.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "[{}]", many.join(", ")),
        }
    }
}

/// Go's `strconv.Quote` for the characters that occur in practice: printable text is kept,
/// quotes and backslashes are escaped, control characters use Go's escapes.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON string as Go's `encoding/json` writes it, which escapes `<`, `>` and `&` for HTML.
fn go_json_string(s: &str) -> String {
    let json = serde_json::Value::String(s.to_owned()).to_string();
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(field: &str, value: BadValue, detail: &str) -> InvalidValue {
        InvalidValue { field: field.into(), value, detail: detail.into() }
    }

    #[test]
    fn string_values_are_go_quoted() {
        assert_eq!(go_quote("a b"), r#""a b""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\t\n\u{1}é"), "\"\\t\\n\\x01é\"");
    }

    #[test]
    fn list_values_print_as_go_json_and_empty_as_null() {
        assert_eq!(BadValue::List(vec!["a".into(), "<b>".into()]).to_string(), r#"["a","\u003cb\u003e"]"#);
        assert_eq!(BadValue::List(vec![]).to_string(), "null");
    }

    #[test]
    fn one_error_prints_alone_and_several_in_brackets() {
        let a = invalid("key", BadValue::String("-".into()), "bad key");
        let b = invalid("values", BadValue::List(vec![]), "bad values");
        assert_eq!(InvalidValues(vec![a.clone()]).to_string(), r#"key: Invalid value: "-": bad key"#);
        assert_eq!(
            InvalidValues(vec![a.clone(), b]).to_string(),
            r#"[key: Invalid value: "-": bad key, values: Invalid value: null: bad values]"#
        );
        assert_eq!(InvalidValues(vec![a.clone(), a]).to_string(), r#"key: Invalid value: "-": bad key"#);
    }
}
