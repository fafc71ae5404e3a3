//! JSON patch (RFC 6902), applied as the API server applies `application/json-patch+json`.
//!
//! Upstream applies JSON patches with `gopkg.in/evanphx/json-patch.v4`, whose behaviour
//! differs from the RFC in ways clients have come to rely on, so it is followed here:
//!
//! - `replace` of a missing object member adds it (only a missing array element is an error);
//! - array indices may be negative, counting from the end (`-1` is the last element; for `add`,
//!   `-1` appends), and are parsed like Go's `strconv.Atoi` (`+1` and `01` are accepted);
//! - `null` and absent are the same thing: `test` of a missing member against `null` passes,
//!   an `add` without `value` adds `null`, and `copy` from a missing member copies `null`;
//! - a path whose parent is missing, null or a scalar "does not apply"; `add` and `remove` at
//!   the root (`""`) do not apply either, while `replace` and `test` at the root work on the whole
//!   document (a root replacement must be an object or array);
//! - anything before a path's first `/` is ignored (`a/b` addresses `/b`);
//! - a `null` patch is an empty patch; copies may add at most [`MAX_COPY_BYTES`] in total.
//!
//! Error messages are upstream's, because kubectl prints them; each error also carries the
//! index of the failing operation. [`JsonPatchError::upstream_status_code`] says which HTTP
//! status upstream answers with.

use std::fmt;

use serde_json::{Map, Value};

/// Upstream rejects longer patches with 413 Request Entity Too Large.
pub const MAX_OPERATIONS: usize = 10_000;

/// Upstream's default `--json-patch-max-copy-bytes`: the most that `copy` operations may add to
/// a document, counted as the JSON size of the copied values.
pub const MAX_COPY_BYTES: usize = 3 * 1024 * 1024;

/// The six RFC 6902 operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OperationKind::Add => "add",
            OperationKind::Remove => "remove",
            OperationKind::Replace => "replace",
            OperationKind::Move => "move",
            OperationKind::Copy => "copy",
            OperationKind::Test => "test",
        })
    }
}

/// Which pointer of an operation an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Path,
    From,
}

/// The type of a JSON value, named as Go's JSON decoder names it in its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    fn of(value: &Value) -> Self {
        match value {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Bool,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::Array,
            Value::Object(_) => JsonType::Object,
        }
    }
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonType::Null => "null",
            JsonType::Bool => "bool",
            JsonType::Number => "number",
            JsonType::String => "string",
            JsonType::Array => "array",
            JsonType::Object => "object",
        })
    }
}

/// An array index token that is not an integer, reported as Go's `strconv.Atoi` reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("strconv.Atoi: parsing {token:?}: {}", if *.out_of_range { "value out of range" } else { "invalid syntax" })]
pub struct IndexSyntaxError {
    pub token: String,
    pub out_of_range: bool,
}

/// Why an operation could not act on the object or array its pointer leads to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("Unable to remove nonexistent key: {key}: missing value")]
    NonexistentKey { key: String },
    #[error("Unable to access invalid index: {index}: invalid index referenced")]
    InvalidIndex { index: i64 },
    #[error(transparent)]
    NotAnIndex(IndexSyntaxError),
    /// `add` words a bad index differently from the other operations.
    #[error("value was not a proper array index: '{}': {}", .0.token, .0)]
    NotAnInsertIndex(IndexSyntaxError),
}

/// Why a JSON patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPatchError {
    /// The patch is neither an array nor null.
    #[error("json: cannot unmarshal {found} into Go value of type jsonpatch.Patch")]
    NotAnArray { found: JsonType },
    /// An element of the patch is neither an object nor null.
    #[error("json: cannot unmarshal {found} into Go value of type jsonpatch.Operation")]
    OperationNotAnObject { index: usize, found: JsonType },
    #[error("The allowed maximum operations in a JSON patch is {max}, got {got}")]
    TooManyOperations { max: usize, got: usize },
    /// `op` is missing, not a string, or not one of the six operations.
    #[error("Unexpected kind: {op}")]
    UnknownOperation { index: usize, op: String },
    /// `path` or `from` is missing, null or not a string (`found`).
    #[error("{}", bad_member_message(*.op, *.member, *.found))]
    BadMember { index: usize, op: OperationKind, member: Member, found: Option<JsonType> },
    /// The parent of the pointer does not exist or is not an object or array.
    #[error("{}", missing_path_message(*.op, *.member, .path))]
    MissingPath { index: usize, op: OperationKind, member: Member, path: String },
    /// `replace` of an array element that does not exist.
    #[error("replace operation does not apply: doc is missing key: {path}: missing value")]
    MissingKey { index: usize, path: String },
    /// The parent exists but the member or index is unusable; `at` is what upstream names.
    #[error("{}", location_message(*.op, *.member, .at, .reason))]
    Location { index: usize, op: OperationKind, member: Member, at: String, reason: LocationError },
    /// `replace` of the whole document with something other than an object or array.
    #[error("replace operation value must be object or array")]
    RootNotContainer { index: usize },
    #[error("testing value {path} failed: test failed")]
    TestFailed { index: usize, path: String },
    #[error(
        "Unable to complete the copy, the accumulated size increase of copy is {accumulated}, exceeding the limit {limit}"
    )]
    CopyTooLarge { index: usize, accumulated: usize, limit: usize },
}

impl JsonPatchError {
    /// The index of the operation that failed, when one did.
    pub fn operation_index(&self) -> Option<usize> {
        match self {
            JsonPatchError::NotAnArray { .. } | JsonPatchError::TooManyOperations { .. } => None,
            JsonPatchError::OperationNotAnObject { index, .. }
            | JsonPatchError::UnknownOperation { index, .. }
            | JsonPatchError::BadMember { index, .. }
            | JsonPatchError::MissingPath { index, .. }
            | JsonPatchError::MissingKey { index, .. }
            | JsonPatchError::Location { index, .. }
            | JsonPatchError::RootNotContainer { index }
            | JsonPatchError::TestFailed { index, .. }
            | JsonPatchError::CopyTooLarge { index, .. } => Some(*index),
        }
    }

    /// Upstream's answer: 400 Bad Request for a patch that does not decode, 413 for too many
    /// operations, 422 Unprocessable Entity for a patch that does not apply.
    pub fn upstream_status_code(&self) -> u16 {
        match self {
            JsonPatchError::NotAnArray { .. } | JsonPatchError::OperationNotAnObject { .. } => 400,
            JsonPatchError::TooManyOperations { .. } => 413,
            _ => 422,
        }
    }
}

fn bad_member_message(op: OperationKind, member: Member, found: Option<JsonType>) -> String {
    let name = match member {
        Member::Path => "path",
        Member::From => "from",
    };
    // Upstream's add, remove and copy drop the decoder's reason for a bad `path`.
    if member == Member::Path && matches!(op, OperationKind::Add | OperationKind::Remove | OperationKind::Copy) {
        return format!("{op} operation failed to decode path: missing value");
    }
    let reason = match (found, member) {
        (Some(found), _) => format!("json: cannot unmarshal {found} into Go value of type string"),
        (None, Member::Path) => "operation missing path field: missing value".into(),
        (None, Member::From) => "operation, missing from field: missing value".into(),
    };
    format!("{op} operation failed to decode {name}: {reason}")
}

fn missing_path_message(op: OperationKind, member: Member, path: &str) -> String {
    match (op, member) {
        (OperationKind::Add | OperationKind::Remove, _) => {
            format!("{op} operation does not apply: doc is missing path: \"{path}\": missing value")
        }
        (OperationKind::Test, _) => {
            format!("test operation does not apply: is missing path: {path}: missing value")
        }
        (OperationKind::Move | OperationKind::Copy, Member::From) => {
            format!("{op} operation does not apply: doc is missing from path: {path}: missing value")
        }
        (OperationKind::Move | OperationKind::Copy, Member::Path) => {
            format!("{op} operation does not apply: doc is missing destination path: {path}: missing value")
        }
        (OperationKind::Replace, _) => {
            format!("replace operation does not apply: doc is missing path: {path}: missing value")
        }
    }
}

fn location_message(op: OperationKind, member: Member, at: &str, reason: &LocationError) -> String {
    match (op, member) {
        (OperationKind::Copy, Member::From) => format!("error in copy for from: '{at}': {reason}"),
        (OperationKind::Copy, Member::Path) => {
            format!("error while adding value during copy: {reason}")
        }
        _ => format!("error in {op} for path: '{at}': {reason}"),
    }
}

/// Applies an RFC 6902 patch (a JSON array of operations) to a copy of `doc`.
pub fn apply_json_patch(doc: &Value, patch: &Value) -> Result<Value, JsonPatchError> {
    let operations: &[Value] = match patch {
        Value::Null => &[],
        Value::Array(operations) => operations,
        other => {
            return Err(JsonPatchError::NotAnArray { found: JsonType::of(other) });
        }
    };
    // Upstream decodes the whole patch before applying any of it.
    for (index, operation) in operations.iter().enumerate() {
        if !matches!(operation, Value::Object(_) | Value::Null) {
            return Err(JsonPatchError::OperationNotAnObject { index, found: JsonType::of(operation) });
        }
    }
    if operations.len() > MAX_OPERATIONS {
        return Err(JsonPatchError::TooManyOperations { max: MAX_OPERATIONS, got: operations.len() });
    }
    let mut doc = doc.clone();
    let mut copied_bytes = 0;
    for (index, operation) in operations.iter().enumerate() {
        let operation = Operation::read(index, operation.as_object())?;
        operation.apply(&mut doc, &mut copied_bytes)?;
    }
    Ok(doc)
}

struct Operation<'p> {
    index: usize,
    kind: OperationKind,
    fields: Option<&'p Map<String, Value>>,
}

impl<'p> Operation<'p> {
    fn read(index: usize, fields: Option<&'p Map<String, Value>>) -> Result<Self, JsonPatchError> {
        let op = fields.and_then(|f| f.get("op")).and_then(Value::as_str);
        let kind = match op {
            Some("add") => OperationKind::Add,
            Some("remove") => OperationKind::Remove,
            Some("replace") => OperationKind::Replace,
            Some("move") => OperationKind::Move,
            Some("copy") => OperationKind::Copy,
            Some("test") => OperationKind::Test,
            other => {
                let op = other.unwrap_or("unknown").to_owned();
                return Err(JsonPatchError::UnknownOperation { index, op });
            }
        };
        Ok(Operation { index, kind, fields })
    }

    fn pointer(&self, member: Member) -> Result<&'p str, JsonPatchError> {
        let name = if member == Member::Path { "path" } else { "from" };
        match self.fields.and_then(|f| f.get(name)) {
            Some(Value::String(pointer)) => Ok(pointer),
            None | Some(Value::Null) => Err(self.bad_member(member, None)),
            Some(other) => Err(self.bad_member(member, Some(JsonType::of(other)))),
        }
    }

    fn bad_member(&self, member: Member, found: Option<JsonType>) -> JsonPatchError {
        JsonPatchError::BadMember { index: self.index, op: self.kind, member, found }
    }

    /// The operation's `value`; absent reads as null.
    fn value(&self) -> &'p Value {
        const NULL: &Value = &Value::Null;
        self.fields.and_then(|f| f.get("value")).unwrap_or(NULL)
    }

    fn missing_path(&self, member: Member, path: &str) -> JsonPatchError {
        JsonPatchError::MissingPath { index: self.index, op: self.kind, member, path: path.into() }
    }

    fn location(&self, member: Member, at: &str, reason: LocationError) -> JsonPatchError {
        JsonPatchError::Location { index: self.index, op: self.kind, member, at: at.into(), reason }
    }

    /// The parent container of `path` and the last token, or MissingPath.
    fn parent<'d>(
        &self,
        doc: &'d mut Value,
        member: Member,
        path: &str,
    ) -> Result<(Parent<'d>, String), JsonPatchError> {
        locate(doc, path).ok_or_else(|| self.missing_path(member, path))
    }

    fn apply(&self, doc: &mut Value, copied_bytes: &mut usize) -> Result<(), JsonPatchError> {
        match self.kind {
            OperationKind::Add => {
                let path = self.pointer(Member::Path)?;
                let (mut parent, key) = self.parent(doc, Member::Path, path)?;
                parent.insert(&key, self.value().clone()).map_err(|e| self.location(Member::Path, path, e))
            }
            OperationKind::Remove => {
                let path = self.pointer(Member::Path)?;
                let (mut parent, key) = self.parent(doc, Member::Path, path)?;
                parent.remove(&key).map(drop).map_err(|e| self.location(Member::Path, path, e))
            }
            OperationKind::Replace => {
                let path = self.pointer(Member::Path)?;
                if path.is_empty() {
                    let value = self.value();
                    if !(value.is_object() || value.is_array()) {
                        return Err(JsonPatchError::RootNotContainer { index: self.index });
                    }
                    *doc = value.clone();
                    return Ok(());
                }
                let (parent, key) = self.parent(doc, Member::Path, path)?;
                match parent {
                    Parent::Object(members) => {
                        members.insert(key, self.value().clone());
                    }
                    Parent::Array(items) => {
                        let at = resolve_index(items.len(), &key)
                            .map_err(|_| JsonPatchError::MissingKey { index: self.index, path: path.into() })?;
                        items[at] = self.value().clone();
                    }
                }
                Ok(())
            }
            OperationKind::Move => {
                let from = self.pointer(Member::From)?;
                let (mut parent, key) = self.parent(doc, Member::From, from)?;
                // Upstream names the last token here, not the whole pointer.
                let value = parent.take(&key).map_err(|e| self.location(Member::From, &key, e))?;
                let path = self.pointer(Member::Path)?;
                let (mut parent, key) = self.parent(doc, Member::Path, path)?;
                parent.insert(&key, value).map_err(|e| self.location(Member::Path, path, e))
            }
            OperationKind::Copy => {
                let from = self.pointer(Member::From)?;
                let (parent, key) = self.parent(doc, Member::From, from)?;
                let value =
                    parent.get(&key).map_err(|e| self.location(Member::From, from, e))?.cloned().unwrap_or(Value::Null);
                let path = self.pointer(Member::Path)?;
                let (mut parent, key) = self.parent(doc, Member::Path, path)?;
                if !value.is_null() {
                    *copied_bytes += value.to_string().len();
                }
                if *copied_bytes > MAX_COPY_BYTES {
                    return Err(JsonPatchError::CopyTooLarge {
                        index: self.index,
                        accumulated: *copied_bytes,
                        limit: MAX_COPY_BYTES,
                    });
                }
                parent.insert(&key, value).map_err(|e| self.location(Member::Path, path, e))
            }
            OperationKind::Test => {
                let path = self.pointer(Member::Path)?;
                let expected = non_null(Some(self.value()));
                let passed = if path.is_empty() {
                    expected == Some(&*doc)
                } else {
                    let (parent, key) = self.parent(doc, Member::Path, path)?;
                    let actual = parent.get(&key).map_err(|e| self.location(Member::Path, path, e))?;
                    non_null(actual) == expected
                };
                if passed { Ok(()) } else { Err(JsonPatchError::TestFailed { index: self.index, path: path.into() }) }
            }
        }
    }
}

fn non_null(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// Finds the object or array that holds the target of `path`, and the target's token.
fn locate<'d>(doc: &'d mut Value, path: &str) -> Option<(Parent<'d>, String)> {
    let mut tokens: Vec<&str> = path.split('/').collect();
    if tokens.len() < 2 {
        return None;
    }
    let key = decode_token(tokens.pop()?);
    let mut current = doc;
    // Upstream skips the first segment unread, so text before the first '/' is ignored.
    for token in &tokens[1..] {
        current = match current {
            Value::Object(members) => members.get_mut(&decode_token(token))?,
            Value::Array(items) => {
                let at = resolve_index(items.len(), &decode_token(token)).ok()?;
                &mut items[at]
            }
            _ => return None,
        };
    }
    match current {
        Value::Object(members) => Some((Parent::Object(members), key)),
        Value::Array(items) => Some((Parent::Array(items), key)),
        _ => None,
    }
}

/// RFC 6901 unescaping: `~1` is `/`, `~0` is `~`, read left to right.
fn decode_token(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    let mut rest = token;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("~1") {
            out.push('/');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("~0") {
            out.push('~');
            rest = after;
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn parse_index(token: &str) -> Result<i64, IndexSyntaxError> {
    token.parse::<i64>().map_err(|e| IndexSyntaxError {
        token: token.into(),
        out_of_range: matches!(e.kind(), std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow),
    })
}

/// An existing element's position; negative indices count from the end.
fn resolve_index(len: usize, token: &str) -> Result<usize, LocationError> {
    let len = len as i64;
    let mut index = parse_index(token).map_err(LocationError::NotAnIndex)?;
    if index < 0 {
        if index < -len {
            return Err(LocationError::InvalidIndex { index });
        }
        index += len;
    }
    if index >= len {
        return Err(LocationError::InvalidIndex { index });
    }
    Ok(index as usize)
}

/// A position below `bound` for `add` and `remove`, negative counting from `bound`. Unlike
/// [`resolve_index`], upstream checks the upper bound first, so an error names the index given.
fn within(index: i64, bound: usize) -> Result<usize, LocationError> {
    let bound = bound as i64;
    if index >= bound || index < -bound {
        return Err(LocationError::InvalidIndex { index });
    }
    Ok(if index < 0 { index + bound } else { index } as usize)
}

/// The object or array holding an operation's target.
enum Parent<'d> {
    Object(&'d mut Map<String, Value>),
    Array(&'d mut Vec<Value>),
}

impl Parent<'_> {
    /// A member (absent is not an error) or an existing element.
    fn get(&self, key: &str) -> Result<Option<&Value>, LocationError> {
        match self {
            Parent::Object(members) => Ok(members.get(key)),
            Parent::Array(items) => Ok(Some(&items[resolve_index(items.len(), key)?])),
        }
    }

    /// Adds or overwrites a member (in place), or inserts an element; `-` appends.
    fn insert(&mut self, key: &str, value: Value) -> Result<(), LocationError> {
        match self {
            Parent::Object(members) => {
                members.insert(key.to_owned(), value);
            }
            Parent::Array(items) if key == "-" => items.push(value),
            Parent::Array(items) => {
                let index = parse_index(key).map_err(LocationError::NotAnInsertIndex)?;
                items.insert(within(index, items.len() + 1)?, value);
            }
        }
        Ok(())
    }

    /// Removes a member or element, keeping the order of the rest.
    fn remove(&mut self, key: &str) -> Result<Value, LocationError> {
        match self {
            Parent::Object(members) => {
                members.shift_remove(key).ok_or_else(|| LocationError::NonexistentKey { key: key.into() })
            }
            Parent::Array(items) => {
                let index = parse_index(key).map_err(LocationError::NotAnIndex)?;
                Ok(items.remove(within(index, items.len())?))
            }
        }
    }

    /// What `move` does at its source: read, then remove, with the read's errors first.
    fn take(&mut self, key: &str) -> Result<Value, LocationError> {
        if let Parent::Array(items) = self {
            let at = resolve_index(items.len(), key)?;
            return Ok(items.remove(at));
        }
        self.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Applies a case written as `doc | patch`, both JSON text.
    fn run(case: &str) -> Result<Value, JsonPatchError> {
        let (doc, patch) = case.split_once(" | ").expect("case is `doc | patch`");
        let parse = |text: &str| serde_json::from_str::<Value>(text).expect("case is valid JSON");
        apply_json_patch(&parse(doc), &parse(patch))
    }

    /// Each case is `doc | patch | result`.
    fn assert_results(cases: &[&str]) {
        for case in cases {
            let (input, want) = case.rsplit_once(" | ").expect("case is `doc | patch | result`");
            let want: Value = serde_json::from_str(want).expect("result is valid JSON");
            let got = run(input).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(got, want, "{case}");
        }
    }

    /// Each case is `doc | patch => upstream's message`.
    fn assert_messages(cases: &[&str]) {
        for case in cases {
            let (input, want) = case.split_once(" => ").expect("case is `doc | patch => message`");
            assert_eq!(run(input).map_err(|e| e.to_string()), Err(want.to_string()), "{case}");
        }
    }

    #[test]
    fn rfc6902_appendix_a_examples_apply() {
        assert_results(&[
            r#"{"foo":"bar"} | [{"op":"add","path":"/baz","value":"qux"}] | {"baz":"qux","foo":"bar"}"#,
            r#"{"foo":["bar","baz"]} | [{"op":"add","path":"/foo/1","value":"qux"}] | {"foo":["bar","qux","baz"]}"#,
            r#"{"baz":"qux","foo":"bar"} | [{"op":"remove","path":"/baz"}] | {"foo":"bar"}"#,
            r#"{"foo":["bar","qux","baz"]} | [{"op":"remove","path":"/foo/1"}] | {"foo":["bar","baz"]}"#,
            r#"{"baz":"qux","foo":"bar"} | [{"op":"replace","path":"/baz","value":"boo"}] | {"baz":"boo","foo":"bar"}"#,
            r#"{"foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"}} | [{"op":"move","from":"/foo/waldo","path":"/qux/thud"}] | {"foo":{"bar":"baz"},"qux":{"corge":"grault","thud":"fred"}}"#,
            r#"{"foo":["all","grass","cows","eat"]} | [{"op":"move","from":"/foo/1","path":"/foo/3"}] | {"foo":["all","cows","eat","grass"]}"#,
            r#"{"baz":"qux","foo":["a",2,"c"]} | [{"op":"test","path":"/baz","value":"qux"},{"op":"test","path":"/foo/1","value":2}] | {"baz":"qux","foo":["a",2,"c"]}"#,
            r#"{"foo":"bar"} | [{"op":"add","path":"/child","value":{"grandchild":{}}}] | {"foo":"bar","child":{"grandchild":{}}}"#,
            r#"{"foo":"bar"} | [{"op":"add","path":"/baz","value":"qux","xyz":123}] | {"foo":"bar","baz":"qux"}"#,
            r#"{"/":9,"~1":10} | [{"op":"test","path":"/~01","value":10}] | {"/":9,"~1":10}"#,
            r#"{"foo":["bar"]} | [{"op":"add","path":"/foo/-","value":["abc","def"]}] | {"foo":["bar",["abc","def"]]}"#,
        ]);
    }

    #[test]
    fn rfc6902_appendix_a_failures_fail() {
        assert!(matches!(
            run(r#"{"baz":"qux"} | [{"op":"test","path":"/baz","value":"bar"}]"#),
            Err(JsonPatchError::TestFailed { index: 0, .. })
        ));
        assert!(matches!(
            run(r#"{"foo":"bar"} | [{"op":"add","path":"/baz/bat","value":"qux"}]"#),
            Err(JsonPatchError::MissingPath { op: OperationKind::Add, .. })
        ));
        assert!(run(r#"{"/":9,"~1":10} | [{"op":"test","path":"/~01","value":"10"}]"#).is_err());
    }

    #[test]
    fn operations_apply_in_order_and_the_input_is_untouched() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}});
        let patch = json!([
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "copy", "from": "/metadata/labels/b", "path": "/metadata/labels/c"},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "test", "path": "/metadata/labels", "value": {"c": "2", "b": "2"}},
        ]);
        let want = json!({"metadata": {"labels": {"b": "2", "c": "2"}}});
        assert_eq!(apply_json_patch(&doc, &patch).unwrap(), want);
        assert_eq!(doc, json!({"metadata": {"labels": {"a": "1"}}}));
    }

    #[test]
    fn member_order_is_kept_on_replace_and_remove() {
        let out = run(r#"{"a":1,"b":2,"c":3} | [{"op":"replace","path":"/a","value":9},{"op":"remove","path":"/b"}]"#);
        assert_eq!(out.unwrap().as_object().unwrap().keys().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn replace_of_a_missing_member_adds_it_as_upstream_does() {
        assert_results(&[r#"{} | [{"op":"replace","path":"/x","value":1}] | {"x":1}"#]);
    }

    #[test]
    fn replace_of_a_missing_element_is_an_error() {
        assert_messages(&[
            r#"{"a":[1]} | [{"op":"replace","path":"/a/1","value":2}] => replace operation does not apply: doc is missing key: /a/1: missing value"#,
        ]);
    }

    #[test]
    fn negative_indices_count_from_the_end() {
        assert_results(&[
            r#"{"a":[1,2,3]} | [{"op":"remove","path":"/a/-1"}] | {"a":[1,2]}"#,
            r#"{"a":[1,2,3]} | [{"op":"replace","path":"/a/-3","value":0}] | {"a":[0,2,3]}"#,
            r#"{"a":[1,2,3]} | [{"op":"add","path":"/a/-1","value":4}] | {"a":[1,2,3,4]}"#,
            r#"{"a":[1,2,3]} | [{"op":"add","path":"/a/-4","value":0}] | {"a":[0,1,2,3]}"#,
            r#"{"a":[1,2,3]} | [{"op":"test","path":"/a/-2","value":2}] | {"a":[1,2,3]}"#,
            r#"{"a":[1,2,3]} | [{"op":"move","from":"/a/-1","path":"/a/0"}] | {"a":[3,1,2]}"#,
        ]);
        assert_messages(&[
            r#"{"a":[1,2,3]} | [{"op":"remove","path":"/a/-4"}] => error in remove for path: '/a/-4': Unable to access invalid index: -4: invalid index referenced"#,
            r#"{"a":[1,2,3]} | [{"op":"add","path":"/a/-5","value":0}] => error in add for path: '/a/-5': Unable to access invalid index: -5: invalid index referenced"#,
        ]);
    }

    #[test]
    fn array_indices_parse_like_go_atoi() {
        assert_results(&[
            r#"{"a":[1,2]} | [{"op":"remove","path":"/a/+1"}] | {"a":[1]}"#,
            r#"{"a":[1,2]} | [{"op":"remove","path":"/a/01"}] | {"a":[1]}"#,
        ]);
        assert_messages(&[
            r#"{"a":[1,2]} | [{"op":"add","path":"/a/x","value":0}] => error in add for path: '/a/x': value was not a proper array index: 'x': strconv.Atoi: parsing "x": invalid syntax"#,
            r#"{"a":[1,2]} | [{"op":"remove","path":"/a/-"}] => error in remove for path: '/a/-': strconv.Atoi: parsing "-": invalid syntax"#,
            r#"{"a":[1,2]} | [{"op":"test","path":"/a/99999999999999999999","value":1}] => error in test for path: '/a/99999999999999999999': strconv.Atoi: parsing "99999999999999999999": value out of range"#,
        ]);
    }

    #[test]
    fn add_past_the_end_is_an_error_but_at_the_end_appends() {
        assert_results(&[r#"{"a":[1]} | [{"op":"add","path":"/a/1","value":2}] | {"a":[1,2]}"#]);
        assert_messages(&[
            r#"{"a":[1]} | [{"op":"add","path":"/a/2","value":2}] => error in add for path: '/a/2': Unable to access invalid index: 2: invalid index referenced"#,
        ]);
    }

    #[test]
    fn null_and_absent_are_the_same_to_test() {
        for ok in [
            r#"{"a":null} | [{"op":"test","path":"/missing","value":null}]"#,
            r#"{"a":null} | [{"op":"test","path":"/missing"}]"#,
            r#"{"a":null} | [{"op":"test","path":"/a"}]"#,
        ] {
            assert!(run(ok).is_ok(), "{ok}");
        }
        assert!(run(r#"{"b":1} | [{"op":"test","path":"/b"}]"#).is_err());
        assert_messages(&[
            r#"{"a":null} | [{"op":"test","path":"/a","value":1}] => testing value /a failed: test failed"#,
        ]);
    }

    #[test]
    fn test_compares_structurally_and_numbers_by_representation() {
        let doc = r#"{"o":{"x":1,"y":[true,null]},"n":1}"#;
        assert!(run(&format!(r#"{doc} | [{{"op":"test","path":"/o","value":{{"y":[true,null],"x":1}}}}]"#)).is_ok());
        assert!(run(&format!(r#"{doc} | [{{"op":"test","path":"/o","value":{{"x":1}}}}]"#)).is_err());
        assert!(run(&format!(r#"{doc} | [{{"op":"test","path":"/n","value":1.0}}]"#)).is_err());
    }

    #[test]
    fn whole_document_can_be_tested_and_replaced() {
        assert_results(&[
            r#"{"a":1} | [{"op":"test","path":"","value":{"a":1}}] | {"a":1}"#,
            r#"{"a":1} | [{"op":"replace","path":"","value":{"b":2}}] | {"b":2}"#,
        ]);
        assert_messages(&[
            r#"{"a":1} | [{"op":"test","path":"","value":{"a":2}}] => testing value  failed: test failed"#,
            r#"{"a":1} | [{"op":"replace","path":"","value":3}] => replace operation value must be object or array"#,
            r#"{"a":1} | [{"op":"add","path":"","value":{}}] => add operation does not apply: doc is missing path: "": missing value"#,
        ]);
    }

    #[test]
    fn add_without_value_adds_null() {
        assert_results(&[r#"{} | [{"op":"add","path":"/a"}] | {"a":null}"#]);
    }

    #[test]
    fn pointer_tokens_are_unescaped() {
        assert_results(&[
            r#"{} | [{"op":"add","path":"/metadata~1labels~0x","value":1}] | {"metadata/labels~x":1}"#,
            r#"{} | [{"op":"add","path":"/","value":1}] | {"":1}"#,
        ]);
        assert_eq!(decode_token("~01"), "~1");
        assert_eq!(decode_token("~2é"), "~2é");
    }

    #[test]
    fn text_before_the_first_slash_is_ignored_as_upstream() {
        assert_results(&[r#"{} | [{"op":"add","path":"x/y","value":1}] | {"y":1}"#]);
    }

    #[test]
    fn missing_or_scalar_parents_do_not_apply() {
        assert_messages(&[
            r#"{"a":null,"s":"text"} | [{"op":"add","path":"/a/b","value":1}] => add operation does not apply: doc is missing path: "/a/b": missing value"#,
            r#"{"a":null,"s":"text"} | [{"op":"remove","path":"/s/0"}] => remove operation does not apply: doc is missing path: "/s/0": missing value"#,
            r#"{"a":null,"s":"text"} | [{"op":"replace","path":"/x/y","value":1}] => replace operation does not apply: doc is missing path: /x/y: missing value"#,
            r#"{"a":null,"s":"text"} | [{"op":"test","path":"/x/y","value":1}] => test operation does not apply: is missing path: /x/y: missing value"#,
            r#"{"a":null,"s":"text"} | [{"op":"move","from":"/x/y","path":"/z"}] => move operation does not apply: doc is missing from path: /x/y: missing value"#,
            r#"{"a":null,"s":"text"} | [{"op":"copy","from":"/s","path":"/x/y"}] => copy operation does not apply: doc is missing destination path: /x/y: missing value"#,
        ]);
    }

    #[test]
    fn removing_a_missing_member_is_an_error() {
        assert_messages(&[
            r#"{"a":1} | [{"op":"remove","path":"/b"}] => error in remove for path: '/b': Unable to remove nonexistent key: b: missing value"#,
        ]);
        assert_results(&[r#"{"a":null} | [{"op":"remove","path":"/a"}] | {}"#]);
    }

    #[test]
    fn move_reports_its_source_by_last_token() {
        assert_messages(&[
            r#"{"a":{}} | [{"op":"move","from":"/a/b","path":"/c"}] => error in move for path: 'b': Unable to remove nonexistent key: b: missing value"#,
            r#"{"a":[1]} | [{"op":"move","from":"/a/3","path":"/c"}] => error in move for path: '3': Unable to access invalid index: 3: invalid index referenced"#,
        ]);
    }

    #[test]
    fn move_into_its_own_child_does_not_apply() {
        assert_messages(&[
            r#"{"a":{"b":1}} | [{"op":"move","from":"/a","path":"/a/c"}] => move operation does not apply: doc is missing destination path: /a/c: missing value"#,
        ]);
    }

    #[test]
    fn copy_duplicates_deeply_and_copies_null_from_missing_members() {
        assert_results(&[
            r#"{"a":{"b":[1]}} | [{"op":"copy","from":"/a","path":"/c"},{"op":"add","path":"/c/b/-","value":2},{"op":"copy","from":"/missing","path":"/d"}] | {"a":{"b":[1]},"c":{"b":[1,2]},"d":null}"#,
        ]);
        assert_messages(&[
            r#"{"a":[1]} | [{"op":"copy","from":"/a/5","path":"/b"}] => error in copy for from: '/a/5': Unable to access invalid index: 5: invalid index referenced"#,
            r#"{"a":[1],"b":[]} | [{"op":"copy","from":"/a","path":"/b/7"}] => error while adding value during copy: Unable to access invalid index: 7: invalid index referenced"#,
        ]);
    }

    #[test]
    fn copies_are_limited_in_total_size() {
        let doc = json!({ "big": "x".repeat(MAX_COPY_BYTES / 2) });
        let copy = |to: &str| json!({"op": "copy", "from": "/big", "path": to});
        assert!(apply_json_patch(&doc, &json!([copy("/c1")])).is_ok());
        let err = apply_json_patch(&doc, &json!([copy("/c1"), copy("/c2")])).unwrap_err();
        let accumulated = 2 * (MAX_COPY_BYTES / 2 + 2);
        assert_eq!(err, JsonPatchError::CopyTooLarge { index: 1, accumulated, limit: MAX_COPY_BYTES });
        assert_eq!(err.upstream_status_code(), 422);
    }

    #[test]
    fn a_patch_must_be_an_array_of_objects() {
        assert_messages(&[
            r#"{} | {"op":"add"} => json: cannot unmarshal object into Go value of type jsonpatch.Patch"#,
            r#"{} | true => json: cannot unmarshal bool into Go value of type jsonpatch.Patch"#,
            r#"{} | [{"op":"add","path":"/a","value":1},"remove"] => json: cannot unmarshal string into Go value of type jsonpatch.Operation"#,
        ]);
        let err = run(r#"{} | 1"#).unwrap_err();
        assert_eq!((err.upstream_status_code(), err.operation_index()), (400, None));
        let err = run(r#"{} | [{"op":"add","path":"/a","value":1},"remove"]"#).unwrap_err();
        assert_eq!(err, JsonPatchError::OperationNotAnObject { index: 1, found: JsonType::String });
        assert_eq!(err.upstream_status_code(), 400);
    }

    #[test]
    fn a_null_or_empty_patch_changes_nothing() {
        assert_results(&[r#"{"a":1} | null | {"a":1}"#, r#"{"a":1} | [] | {"a":1}"#]);
    }

    #[test]
    fn unknown_or_missing_operations_are_rejected() {
        assert_messages(&[
            r#"{} | [{"op":"ADD","path":"/a"}] => Unexpected kind: ADD"#,
            r#"{} | [{"path":"/a"}] => Unexpected kind: unknown"#,
            r#"{} | [{"op":1}] => Unexpected kind: unknown"#,
        ]);
        let err = run(r#"{} | [{"op":"test","path":"","value":{}},null]"#).unwrap_err();
        assert_eq!(err, JsonPatchError::UnknownOperation { index: 1, op: "unknown".into() });
        assert_eq!((err.upstream_status_code(), err.operation_index()), (422, Some(1)));
    }

    #[test]
    fn missing_or_malformed_pointers_are_reported_per_operation() {
        assert_messages(&[
            r#"{"x":1} | [{"op":"add","value":1}] => add operation failed to decode path: missing value"#,
            r#"{"x":1} | [{"op":"remove","path":5}] => remove operation failed to decode path: missing value"#,
            r#"{"x":1} | [{"op":"replace","value":1}] => replace operation failed to decode path: operation missing path field: missing value"#,
            r#"{"x":1} | [{"op":"test","path":5}] => test operation failed to decode path: json: cannot unmarshal number into Go value of type string"#,
            r#"{"x":1} | [{"op":"move","path":"/a"}] => move operation failed to decode from: operation, missing from field: missing value"#,
            r#"{"x":1} | [{"op":"copy","from":null,"path":"/a"}] => copy operation failed to decode from: operation, missing from field: missing value"#,
            r#"{"x":1} | [{"op":"copy","from":"/x"}] => copy operation failed to decode path: missing value"#,
            r#"{"x":1} | [{"op":"move","from":"/x","path":["/a"]}] => move operation failed to decode path: json: cannot unmarshal array into Go value of type string"#,
        ]);
    }

    #[test]
    fn too_many_operations_are_rejected_before_applying() {
        let operation = json!({"op": "test", "path": "", "value": {}});
        let patch = Value::Array(vec![operation; MAX_OPERATIONS + 1]);
        let err = apply_json_patch(&json!({}), &patch).unwrap_err();
        let want = "The allowed maximum operations in a JSON patch is 10000, got 10001";
        assert_eq!((err.to_string().as_str(), err.upstream_status_code()), (want, 413));
    }

    #[test]
    fn errors_carry_the_index_of_the_failing_operation() {
        let err = run(r#"{"a":1} | [{"op":"test","path":"/a","value":1},{"op":"remove","path":"/b"}]"#);
        let err = err.unwrap_err();
        assert_eq!(err.operation_index(), Some(1));
        assert!(matches!(err, JsonPatchError::Location { op: OperationKind::Remove, member: Member::Path, .. }));
    }
}
