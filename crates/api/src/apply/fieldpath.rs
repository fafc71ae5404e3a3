//! Field paths and sets of them: which fields of an object a manager owns.
//!
//! A path is a list of elements, each naming a struct field or map key (`f:name`), a list item by
//! its key fields (`k:{"name":"nginx"}`), a set item by its value (`v:"a"`) or, rarely, a list
//! item by its position (`i:0`). A [`Set`] is a tree of them, serialized as upstream's `FieldsV1`:
//! every node is a JSON object whose keys are serialized path elements, `{}` marks a member with
//! no children, and `".": {}` marks a node that is a member and also has children.
//!
//! Path elements are ordered as upstream orders them (field names before keys before values
//! before indices; key fields pairwise; values by upstream's total order of JSON values), so
//! serialized sets and conflict lists come out in upstream's order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// A malformed `FieldsV1` document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FieldsError {
    #[error("FieldsV1 must be a JSON object at {path:?}")]
    NotAnObject { path: String },
    #[error("invalid path element {element:?}: {reason}")]
    InvalidElement { element: String, reason: String },
}

/// One step of a path.
#[derive(Debug, Clone)]
pub enum PathElement {
    /// A struct field or a map key.
    Field(String),
    /// A list item identified by its key fields, sorted by field name.
    Key(Vec<(String, Value)>),
    /// A set item (an element of a list of scalars).
    Value(Value),
    /// A list item by position.
    Index(usize),
}

impl PathElement {
    fn rank(&self) -> u8 {
        match self {
            Self::Field(_) => 0,
            Self::Key(_) => 1,
            Self::Value(_) => 2,
            Self::Index(_) => 3,
        }
    }

    /// The `FieldsV1` key of this element: `f:name`, `k:{...}`, `v:...`, `i:N`.
    pub fn serialize(&self) -> String {
        match self {
            Self::Field(name) => format!("f:{name}"),
            Self::Key(fields) => {
                let object: Map<String, Value> = fields.iter().cloned().collect();
                format!("k:{}", Value::Object(object))
            }
            Self::Value(v) => format!("v:{v}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `FieldsV1` key; `None` for element types this version does not know, which
    /// upstream drops rather than rejects.
    pub fn parse(text: &str) -> Result<Option<Self>, FieldsError> {
        let invalid =
            |reason: &str| FieldsError::InvalidElement { element: text.to_owned(), reason: reason.to_owned() };
        let bytes = text.as_bytes();
        if bytes.len() < 2 {
            return Err(invalid("key must be 2 characters long"));
        }
        if bytes[1] != b':' {
            return Err(invalid("missing colon"));
        }
        let rest = &text[2..];
        Ok(Some(match bytes[0] {
            b'f' => Self::Field(rest.to_owned()),
            b'v' => Self::Value(serde_json::from_str(rest).map_err(|e| invalid(&e.to_string()))?),
            b'k' => {
                let object: Map<String, Value> = serde_json::from_str(rest).map_err(|e| invalid(&e.to_string()))?;
                let mut fields: Vec<(String, Value)> = object.into_iter().collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                Self::Key(fields)
            }
            b'i' => Self::Index(rest.parse().map_err(|_| invalid("index is not a number"))?),
            _ => return Ok(None),
        }))
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Field(a), Self::Field(b)) => a.cmp(b),
            (Self::Key(a), Self::Key(b)) => {
                for ((an, av), (bn, bv)) in a.iter().zip(b) {
                    let c = an.cmp(bn).then_with(|| compare_values(av, bv));
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                a.len().cmp(&b.len())
            }
            (Self::Value(a), Self::Value(b)) => compare_values(a, b),
            (Self::Index(a), Self::Index(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for PathElement {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PathElement {}

/// As upstream prints elements in conflict messages: `.name`, `[name="nginx"]`, `[="a"]`, `[0]`.
impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(name) => write!(f, ".{name}"),
            Self::Key(fields) => {
                let parts: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={}", value_to_string(v))).collect();
                write!(f, "[{}]", parts.join(","))
            }
            Self::Value(v) => write!(f, "[={}]", value_to_string(v)),
            Self::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// Upstream's `value.ToString`: strings quoted, maps as `k=v` pairs run together.
fn value_to_string(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("[{}]", items.iter().map(value_to_string).collect::<Vec<_>>().join(",")),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", value_to_string(v))).collect(),
        other => other.to_string(),
    }
}

/// Upstream's total order of JSON values: numbers (compared numerically), then strings,
/// booleans, lists, maps and null.
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x.as_f64().unwrap_or(0.0).total_cmp(&y.as_f64().unwrap_or(0.0)),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (a, b) in x.iter().zip(y) {
                let c = compare_values(a, b);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|a, b| a.0.cmp(b.0));
            ys.sort_by(|a, b| a.0.cmp(b.0));
            for ((ka, va), (kb, vb)) in xs.iter().zip(&ys) {
                let c = ka.cmp(kb).then_with(|| compare_values(va, vb));
                if c != Ordering::Equal {
                    return c;
                }
            }
            xs.len().cmp(&ys.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Deep equality of JSON values with numbers compared numerically (`1 == 1.0`), as upstream
/// compares values.
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_equal(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

/// A path from the root of an object, printed as upstream prints it (`.spec.replicas`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Path(pub Vec<PathElement>);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for element in &self.0 {
            write!(f, "{element}")?;
        }
        Ok(())
    }
}

impl Path {
    /// Builds a path of field names, e.g. `Path::fields(&["spec", "replicas"])`.
    pub fn fields(names: &[&str]) -> Self {
        Path(names.iter().map(|n| PathElement::Field((*n).to_owned())).collect())
    }
}

/// A set of paths, as a tree: `members` are the paths ending at this node's children, and
/// `children` holds the subtrees of paths going deeper. A child subtree is never empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, Set>,
}

impl Set {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds a path (the empty path is ignored: the root is never a member).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// Whether a path is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// Whether an element is a member of this node.
    pub fn has_member(&self, pe: &PathElement) -> bool {
        self.members.contains(pe)
    }

    /// The paths under `pe`, relative to it (upstream's `WithPrefix`).
    pub fn child(&self, pe: &PathElement) -> Option<&Set> {
        self.children.get(pe)
    }

    /// This node's members, without the deeper paths.
    pub(crate) fn members_only(&self) -> Set {
        Set { members: self.members.clone(), children: BTreeMap::new() }
    }

    /// Marks `pe` a member of this node.
    pub(crate) fn insert_member(&mut self, pe: PathElement) {
        self.members.insert(pe);
    }

    /// The children subtrees, for walks alongside a value.
    pub(crate) fn children(&self) -> impl Iterator<Item = (&PathElement, &Set)> {
        self.children.iter()
    }

    /// Sets the subtree under `pe` (dropping it when empty).
    pub(crate) fn set_child(&mut self, pe: PathElement, child: Set) {
        if child.is_empty() {
            self.children.remove(&pe);
        } else {
            self.children.insert(pe, child);
        }
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.union_with(other);
        out
    }

    pub fn union_with(&mut self, other: &Set) {
        self.members.extend(other.members.iter().cloned());
        for (pe, child) in &other.children {
            match self.children.get_mut(pe) {
                Some(mine) => mine.union_with(child),
                None => {
                    self.children.insert(pe.clone(), child.clone());
                }
            }
        }
    }

    /// Removes one path, leaving deeper paths under it alone.
    pub fn remove(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = self.children.get_mut(first) {
                    child.remove(rest);
                    if child.is_empty() {
                        self.children.remove(first);
                    }
                }
            }
        }
    }

    /// Keeps only `pe` and the paths under it.
    pub(crate) fn retain_only(&mut self, pe: &PathElement) {
        self.members.retain(|m| m == pe);
        self.children.retain(|c, _| c == pe);
    }

    /// Removes `pe` and every path under it.
    pub(crate) fn remove_subtree(&mut self, pe: &PathElement) {
        self.members.remove(pe);
        self.children.remove(pe);
    }

    /// The paths of `self` that are not in `other`.
    pub fn difference(&self, other: &Set) -> Set {
        let members = self.members.difference(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            match other.children.get(pe) {
                Some(theirs) => {
                    let diff = child.difference(theirs);
                    if !diff.is_empty() {
                        children.insert(pe.clone(), diff);
                    }
                }
                None => {
                    children.insert(pe.clone(), child.clone());
                }
            }
        }
        Set { members, children }
    }

    /// The paths in both sets.
    pub fn intersection(&self, other: &Set) -> Set {
        let members = self.members.intersection(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    children.insert(pe.clone(), both);
                }
            }
        }
        Set { members, children }
    }

    /// The paths of `self` that are neither in `other` nor under a member of `other`.
    pub fn recursive_difference(&self, other: &Set) -> Set {
        let members = self.members.difference(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, child) in &self.children {
            if other.members.contains(pe) {
                continue;
            }
            match other.children.get(pe) {
                Some(theirs) => {
                    let diff = child.recursive_difference(theirs);
                    if !diff.is_empty() {
                        children.insert(pe.clone(), diff);
                    }
                }
                None => {
                    children.insert(pe.clone(), child.clone());
                }
            }
        }
        Set { members, children }
    }

    /// Every member path in upstream's order: a node's members, then its children's paths.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Path>) {
        for member in &self.members {
            prefix.push(member.clone());
            out.push(Path(prefix.clone()));
            prefix.pop();
        }
        for (pe, child) in &self.children {
            prefix.push(pe.clone());
            child.collect_paths(prefix, out);
            prefix.pop();
        }
    }

    /// The number of member paths.
    pub fn len(&self) -> usize {
        self.members.len() + self.children.values().map(Set::len).sum::<usize>()
    }

    /// The set as a `FieldsV1` JSON object.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.fields_v1_contents(false))
    }

    fn fields_v1_contents(&self, include_self: bool) -> Map<String, Value> {
        let mut out = Map::new();
        if include_self {
            out.insert(".".into(), Value::Object(Map::new()));
        }
        // Members and children interleave in element order; a member with children is written
        // once, as a child with a "." entry.
        let mut members = self.members.iter().peekable();
        let mut children = self.children.iter().peekable();
        loop {
            let next_member = members.peek().copied();
            let next_child = children.peek().map(|(pe, _)| *pe);
            match (next_member, next_child) {
                (None, None) => break,
                (Some(m), c) if c.is_none_or(|c| m < c) => {
                    out.insert(m.serialize(), Value::Object(Map::new()));
                    members.next();
                }
                (m, Some(c)) => {
                    let is_member = m.is_some_and(|m| m == c);
                    if is_member {
                        members.next();
                    }
                    let (_, child) = children.next().expect("peeked");
                    out.insert(c.serialize(), Value::Object(child.fields_v1_contents(is_member)));
                }
                (Some(_), None) => unreachable!("handled by the guard above"),
            }
        }
        out
    }

    /// Parses a `FieldsV1` JSON object.
    pub fn from_fields_v1(fields: &Value) -> Result<Set, FieldsError> {
        let Value::Object(object) = fields else {
            return Err(FieldsError::NotAnObject { path: String::new() });
        };
        Ok(Self::read_node(object, "")?.0.unwrap_or_default())
    }

    /// Reads one node: its subtree (if it has children) and whether it is itself a member.
    fn read_node(object: &Map<String, Value>, at: &str) -> Result<(Option<Set>, bool), FieldsError> {
        let mut set: Option<Set> = None;
        let mut is_member = false;
        for (key, value) in object {
            if key == "." {
                is_member = true;
                continue;
            }
            let Some(pe) = PathElement::parse(key)? else {
                continue;
            };
            let Value::Object(inner) = value else {
                return Err(FieldsError::NotAnObject { path: format!("{at}{key}") });
            };
            let (grandchildren, child_is_member) = Self::read_node(inner, &format!("{at}{key}."))?;
            let node = set.get_or_insert_with(Set::default);
            if child_is_member {
                node.members.insert(pe.clone());
            }
            if let Some(g) = grandchildren {
                node.children.entry(pe).or_default().union_with(&g);
            }
        }
        if set.is_none() {
            is_member = true;
        }
        Ok((set, is_member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(n: &str) -> PathElement {
        PathElement::Field(n.into())
    }

    fn key(n: &str, v: Value) -> PathElement {
        PathElement::Key(vec![(n.into(), v)])
    }

    #[test]
    fn fields_v1_round_trips_with_dot_for_members_that_have_children() {
        let doc = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}, "f:replicas": {}},
        });
        let set = Set::from_fields_v1(&doc).unwrap();
        assert!(set.has(&[field("metadata"), field("labels")]));
        assert!(set.has(&[field("metadata"), field("labels"), field("app")]));
        assert!(!set.has(&[field("metadata")]));
        assert!(set.has(&[field("spec"), field("containers"), key("name", json!("nginx"))]));
        assert_eq!(set.to_fields_v1(), doc);
        assert_eq!(serde_json::to_string(&set.to_fields_v1()).unwrap(), serde_json::to_string(&doc).unwrap());
    }

    #[test]
    fn elements_sort_fields_before_keys_before_values() {
        let mut set = Set::new();
        set.insert(&[PathElement::Value(json!("b"))]);
        set.insert(&[key("name", json!("a"))]);
        set.insert(&[field("z")]);
        set.insert(&[PathElement::Value(json!(1))]);
        let keys: Vec<String> = set.to_fields_v1().as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["f:z", "k:{\"name\":\"a\"}", "v:1", "v:\"b\""]);
    }

    #[test]
    fn paths_print_as_upstream_conflict_fields() {
        let path = Path(vec![
            field("spec"),
            field("containers"),
            PathElement::Key(vec![("containerPort".into(), json!(80)), ("protocol".into(), json!("TCP"))]),
            field("name"),
        ]);
        assert_eq!(path.to_string(), ".spec.containers[containerPort=80,protocol=\"TCP\"].name");
        assert_eq!(Path(vec![field("finalizers"), PathElement::Value(json!("x"))]).to_string(), ".finalizers[=\"x\"]");
    }

    #[test]
    fn set_algebra_is_per_path() {
        let mut a = Set::new();
        a.insert(&[field("spec"), field("replicas")]);
        a.insert(&[field("spec"), field("paused")]);
        let mut b = Set::new();
        b.insert(&[field("spec"), field("replicas")]);
        b.insert(&[field("spec")]);
        assert_eq!(a.difference(&b).paths(), vec![Path::fields(&["spec", "paused"])]);
        assert_eq!(a.intersection(&b).paths(), vec![Path::fields(&["spec", "replicas"])]);
        assert!(a.recursive_difference(&b).is_empty());
        assert_eq!(a.union(&b).len(), 3);
    }

    #[test]
    fn unknown_element_types_are_dropped_and_bad_ones_rejected() {
        let set = Set::from_fields_v1(&json!({"x:future": {}, "f:a": {}})).unwrap();
        assert_eq!(set.paths(), vec![Path::fields(&["a"])]);
        assert!(Set::from_fields_v1(&json!({"k:{not json": {}})).is_err());
        assert!(Set::from_fields_v1(&json!({"f:a": 1})).is_err());
    }
}
