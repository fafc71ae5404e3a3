//! The part of kubectl's JSONPath (client-go `util/jsonpath`) that CustomResourceDefinitions'
//! `additionalPrinterColumns` use: `.spec.replicas`, `.metadata.labels['app.kubernetes.io/name']`,
//! `.spec.items[0].name`, `.spec.items[*].name`, `.spec.items[1:3]` and filters such as
//! `.status.conditions[?(@.type=="Ready")].status`.
//!
//! A path is evaluated to every value it reaches, in document order; missing keys yield nothing
//! (upstream's columns allow missing keys).

use serde_json::Value;

/// A parsed path.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    /// `*`: every value of an object or list.
    Wildcard,
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    /// `..name`: the field at any depth.
    Descend(String),
    Filter(Filter),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    path: Vec<String>,
    /// The comparison, or only that the path exists.
    test: Option<(Op, Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Why a path does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unrecognized column definition {path:?}")]
pub struct JsonPathError {
    pub path: String,
}

impl JsonPath {
    /// Parses a path as written in a CRD (`.spec.x`), with or without the enclosing braces.
    pub fn parse(text: &str) -> Result<JsonPath, JsonPathError> {
        let err = || JsonPathError { path: text.to_string() };
        let body = text.trim();
        let body = body.strip_prefix('{').and_then(|b| b.strip_suffix('}')).unwrap_or(body);
        let chars: Vec<char> = body.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        // `$` names the root, as `@` does inside filters.
        if chars.first() == Some(&'$') {
            i = 1;
        }
        while i < chars.len() {
            match chars[i] {
                '.' if chars.get(i + 1) == Some(&'.') => {
                    let (name, next) = read_name(&chars, i + 2);
                    if name.is_empty() {
                        return Err(err());
                    }
                    steps.push(Step::Descend(name));
                    i = next;
                }
                '.' => {
                    let (name, next) = read_name(&chars, i + 1);
                    match name.as_str() {
                        "" if next >= chars.len() => {}
                        "" => return Err(err()),
                        "*" => steps.push(Step::Wildcard),
                        _ => steps.push(Step::Field(name)),
                    }
                    i = next;
                }
                '[' => {
                    let close = find_close(&chars, i).ok_or_else(err)?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    steps.push(parse_bracket(inner.trim()).ok_or_else(err)?);
                    i = close + 1;
                }
                c if i == 0 && !c.is_whitespace() => {
                    let (name, next) = read_name(&chars, i);
                    steps.push(Step::Field(name));
                    i = next;
                }
                _ => return Err(err()),
            }
        }
        Ok(JsonPath(steps))
    }

    /// Every value the path reaches in `root`.
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in current {
                apply(step, v, &mut next);
            }
            current = next;
        }
        current
    }
}

fn read_name(chars: &[char], start: usize) -> (String, usize) {
    let mut end = start;
    while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
        end += 1;
    }
    (chars[start..end].iter().collect(), end)
}

/// The `]` closing the bracket at `open`, skipping quoted text and nested brackets.
fn find_close(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, &c) in chars.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<String> {
    let s = s.trim();
    let q = s.chars().next()?;
    if (q == '\'' || q == '"') && s.len() >= 2 && s.ends_with(q) { Some(s[1..s.len() - 1].to_string()) } else { None }
}

fn parse_bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::Wildcard);
    }
    if let Some(name) = unquote(inner) {
        return Some(Step::Field(name));
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        return parse_filter(filter.trim()).map(Step::Filter);
    }
    if let Some((a, b)) = inner.split_once(':') {
        let bound = |s: &str| if s.trim().is_empty() { Some(None) } else { s.trim().parse().ok().map(Some) };
        let b = b.split(':').next().unwrap_or("");
        return Some(Step::Slice(bound(a)?, bound(b)?));
    }
    inner.parse().ok().map(Step::Index)
}

fn parse_filter(text: &str) -> Option<Filter> {
    const OPS: [(&str, Op); 6] =
        [("==", Op::Eq), ("!=", Op::Ne), ("<=", Op::Le), (">=", Op::Ge), ("<", Op::Lt), (">", Op::Gt)];
    let split = OPS.iter().find_map(|(sym, op)| text.split_once(sym).map(|(l, r)| (l, *op, r)));
    let (lhs, test) = match split {
        Some((l, op, r)) => {
            let r = r.trim();
            let literal = match unquote(r) {
                Some(s) => Value::String(s),
                None => serde_json::from_str(r).ok()?,
            };
            (l.trim(), Some((op, literal)))
        }
        None => (text, None),
    };
    let path = lhs.strip_prefix('@')?;
    let path = path.split('.').filter(|p| !p.is_empty()).map(str::to_string).collect();
    Some(Filter { path, test })
}

fn apply<'a>(step: &Step, v: &'a Value, out: &mut Vec<&'a Value>) {
    match step {
        Step::Field(name) => {
            if let Some(child) = v.get(name) {
                out.push(child);
            }
        }
        Step::Wildcard => match v {
            Value::Object(m) => out.extend(m.values()),
            Value::Array(a) => out.extend(a.iter()),
            _ => {}
        },
        Step::Index(i) => {
            if let Value::Array(a) = v {
                let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                if let Some(item) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                    out.push(item);
                }
            }
        }
        Step::Slice(start, end) => {
            if let Value::Array(a) = v {
                let len = a.len() as i64;
                let clamp = |x: i64| if x < 0 { (len + x).max(0) } else { x.min(len) };
                let s = clamp(start.unwrap_or(0)) as usize;
                let e = clamp(end.unwrap_or(len)) as usize;
                if s < e {
                    out.extend(&a[s..e]);
                }
            }
        }
        Step::Descend(name) => descend(name, v, out),
        Step::Filter(f) => {
            let candidates: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                Value::Object(m) => m.values().collect(),
                _ => Vec::new(),
            };
            out.extend(candidates.into_iter().filter(|c| f.matches(c)));
        }
    }
}

fn descend<'a>(name: &str, v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if let Some(child) = m.get(name) {
                out.push(child);
            }
            for child in m.values() {
                descend(name, child, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| descend(name, c, out)),
        _ => {}
    }
}

impl Filter {
    fn matches(&self, item: &Value) -> bool {
        let mut cur = item;
        for part in &self.path {
            match cur.get(part) {
                Some(next) => cur = next,
                None => return false,
            }
        }
        let Some((op, literal)) = &self.test else { return true };
        let ordering = match (cur, literal) {
            (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (a, b) if matches!(op, Op::Eq | Op::Ne) => return (a == b) == (*op == Op::Eq),
            _ => None,
        };
        let Some(ordering) = ordering else { return false };
        use std::cmp::Ordering::*;
        match op {
            Op::Eq => ordering == Equal,
            Op::Ne => ordering != Equal,
            Op::Lt => ordering == Less,
            Op::Le => ordering != Greater,
            Op::Gt => ordering == Greater,
            Op::Ge => ordering != Less,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn first(path: &str, obj: &Value) -> Option<Value> {
        JsonPath::parse(path).unwrap().find(obj).first().map(|v| (*v).clone())
    }

    #[test]
    fn fields_indexes_and_quoted_keys() {
        let obj = json!({"spec": {"replicas": 3, "items": [{"name": "a"}, {"name": "b"}]}, "metadata": {"labels": {"app.kubernetes.io/name": "web"}}});
        assert_eq!(first(".spec.replicas", &obj), Some(json!(3)));
        assert_eq!(first(".spec.items[1].name", &obj), Some(json!("b")));
        assert_eq!(first(".spec.items[-1].name", &obj), Some(json!("b")));
        assert_eq!(first(".metadata.labels['app.kubernetes.io/name']", &obj), Some(json!("web")));
        assert_eq!(first("{.spec.missing}", &obj), None);
        let all = JsonPath::parse(".spec.items[*].name").unwrap();
        assert_eq!(all.find(&obj), vec![&json!("a"), &json!("b")]);
        assert_eq!(JsonPath::parse(".spec.items[0:1]").unwrap().find(&obj).len(), 1);
    }

    #[test]
    fn filters_select_list_items() {
        let obj = json!({"status": {"conditions": [
            {"type": "Synced", "status": "False"},
            {"type": "Ready", "status": "True", "observedGeneration": 2},
        ]}});
        assert_eq!(first(r#".status.conditions[?(@.type=="Ready")].status"#, &obj), Some(json!("True")));
        assert_eq!(first(".status.conditions[?(@.type=='Synced')].status", &obj), Some(json!("False")));
        assert_eq!(first(".status.conditions[?(@.observedGeneration>1)].type", &obj), Some(json!("Ready")));
        assert_eq!(first(".status.conditions[?(@.observedGeneration)].type", &obj), Some(json!("Ready")));
        assert_eq!(first("..status", &obj), Some(obj["status"].clone()));
    }

    #[test]
    fn malformed_paths_are_rejected() {
        assert!(JsonPath::parse(".spec[").is_err());
        assert!(JsonPath::parse(".spec[?(type=='x')]").is_err());
    }
}
