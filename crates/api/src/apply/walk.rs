//! Walks of one or two values alongside their schema: the set of fields a value sets
//! (upstream's `ToFieldSet`, which also validates an applied configuration), the comparison of
//! two values (`Compare`: fields added, modified and removed) and upstream's
//! `EnsureNamedFieldsAreMembers`.
//!
//! Sets are built bottom-up: each step returns the subtree of its value's children and whether
//! the value's own path is a member, and the parent files both under the child's path element.

use serde_json::{Map, Value};

use super::fieldpath::{PathElement, Set, values_equal};
use super::typed::{Atom, ListKind, ScalarKind, Schema, key_default, type_name};

/// `metadata.managedFields` is bookkeeping, never a field anyone owns or compares.
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

pub(crate) fn skipped(definition: &str, field: &str) -> bool {
    field == "managedFields" && definition == OBJECT_META
}

/// The path element of a list item, as upstream's `listItemToPathElement`.
pub(crate) fn item_element(kind: &ListKind<'_>, items_definition: &str, item: &Value) -> Result<PathElement, String> {
    match kind {
        ListKind::Atomic => Err("invalid indexing of non-associative list".into()),
        ListKind::Map(keys) => {
            let object = match item {
                Value::Null => {
                    return Err("associative list with keys may not have a null element".into());
                }
                Value::Object(o) => o,
                _ => return Err("associative list with keys may not have non-map elements".into()),
            };
            let mut fields: Vec<(String, Value)> = Vec::with_capacity(keys.len());
            for key in keys {
                match object.get(*key) {
                    Some(v) => fields.push(((*key).to_owned(), v.clone())),
                    None => {
                        if let Some(d) = key_default(items_definition, key) {
                            fields.push(((*key).to_owned(), d));
                        }
                    }
                }
            }
            if !keys.is_empty() && fields.is_empty() {
                return Err(format!(
                    "associative list with keys has an element that omits all key fields {keys:?} (and doesn't have default values for any key fields)"
                ));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(PathElement::Key(fields))
        }
        ListKind::Set => match item {
            Value::Object(_) => Err("associative list without keys has an element that's a map type".into()),
            Value::Array(_) => Err("not supported: associative list with lists as elements".into()),
            Value::Null => Err("associative list without keys has an element that's an explicit null".into()),
            scalar => Ok(PathElement::Value(scalar.clone())),
        },
    }
}

/// The field set of a value. With `validate`, also checks the value against the schema as
/// upstream checks an applied configuration, collecting `path: message` errors.
pub(crate) struct FieldSetWalk<'s> {
    schema: Schema<'s>,
    validate: bool,
    path: Vec<PathElement>,
    pub errors: Vec<String>,
}

impl<'s> FieldSetWalk<'s> {
    pub fn new(schema: Schema<'s>, validate: bool) -> Self {
        FieldSetWalk { schema, validate, path: Vec::new(), errors: Vec::new() }
    }

    /// The set of fields `value` sets.
    pub fn run(&mut self, value: &Value, atom: &Atom<'s>) -> Set {
        self.walk(value, atom).0
    }

    fn error(&mut self, message: impl Into<String>) {
        let path: String = self.path.iter().map(ToString::to_string).collect();
        let message = message.into();
        self.errors.push(if path.is_empty() { message } else { format!("{path}: {message}") });
    }

    fn descend(&mut self, pe: &PathElement) {
        if self.validate {
            self.path.push(pe.clone());
        }
    }

    fn ascend(&mut self) {
        if self.validate {
            self.path.pop();
        }
    }

    /// The subtree of `value`'s children, and whether `value`'s own path is a member.
    fn walk(&mut self, value: &Value, atom: &Atom<'s>) -> (Set, bool) {
        match atom {
            Atom::Scalar(kind) => {
                if self.validate {
                    self.check_scalar(*kind, value);
                }
                (Set::new(), true)
            }
            Atom::Struct { atomic: true, .. }
            | Atom::Map { atomic: true, .. }
            | Atom::List { kind: ListKind::Atomic, .. } => {
                if self.validate {
                    self.check_shape(atom, value);
                }
                (Set::new(), true)
            }
            Atom::Struct { definition, properties, .. } => match value {
                Value::Object(object) => (self.walk_struct(definition, properties, object), false),
                _ => {
                    self.check_shape(atom, value);
                    (Set::new(), false)
                }
            },
            Atom::Map { values, .. } => match value {
                Value::Object(object) => {
                    let child = self.schema.resolve(values);
                    (self.walk_map(object, |_| child.clone()), false)
                }
                _ => {
                    self.check_shape(atom, value);
                    (Set::new(), false)
                }
            },
            Atom::List { items, kind } => match value {
                Value::Array(list) => (self.walk_list(items, kind, list), false),
                _ => {
                    self.check_shape(atom, value);
                    (Set::new(), false)
                }
            },
            Atom::Deduced => match value {
                Value::Object(object) => (self.walk_map(object, |_| Atom::Deduced), false),
                _ => (Set::new(), true),
            },
        }
    }

    fn walk_struct(
        &mut self,
        definition: &str,
        properties: &'s Map<String, Value>,
        object: &Map<String, Value>,
    ) -> Set {
        let mut node = Set::new();
        for (key, v) in object {
            if skipped(definition, key) {
                continue;
            }
            let pe = PathElement::Field(key.clone());
            let declared = self.schema.field(properties, key);
            let child_atom = match &declared {
                Some(a) => a.clone(),
                None => {
                    if self.validate {
                        self.descend(&pe);
                        self.error("field not declared in schema");
                        self.ascend();
                    }
                    Atom::Deduced
                }
            };
            self.descend(&pe);
            let (child, member) = self.walk(v, &child_atom);
            self.ascend();
            if member || declared.is_none() || is_null_or_empty_map(v) {
                node.insert_member(pe.clone());
            }
            if !child.is_empty() {
                node.set_child(pe, child);
            }
        }
        node
    }

    fn walk_map(&mut self, object: &Map<String, Value>, child_atom: impl Fn(&str) -> Atom<'s>) -> Set {
        let mut node = Set::new();
        for (key, v) in object {
            let pe = PathElement::Field(key.clone());
            self.descend(&pe);
            let (child, _) = self.walk(v, &child_atom(key));
            self.ascend();
            // Map keys are always members, as undeclared fields are.
            node.insert_member(pe.clone());
            node.set_child(pe, child);
        }
        node
    }

    fn walk_list(&mut self, items: &'s Value, kind: &ListKind<'s>, list: &[Value]) -> Set {
        let items_definition = self.schema.items_definition(items);
        let item_atom = self.schema.resolve(items);
        let mut elements = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            match item_element(kind, items_definition, item) {
                Ok(pe) => elements.push(Some(pe)),
                Err(e) => {
                    if self.validate {
                        self.error(format!("element {i}: {e}"));
                    }
                    elements.push(None);
                }
            }
        }
        let mut node = Set::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut duplicates = std::collections::BTreeSet::new();
        for pe in elements.iter().flatten() {
            if !seen.insert(pe) && duplicates.insert(pe) {
                if self.validate {
                    self.error(format!("duplicate entries for key {pe}"));
                }
                node.insert_member(pe.clone());
            }
        }
        for (item, pe) in list.iter().zip(&elements) {
            let Some(pe) = pe else { continue };
            if duplicates.contains(pe) {
                continue;
            }
            self.descend(pe);
            let (child, _) = self.walk(item, &item_atom);
            self.ascend();
            node.insert_member(pe.clone());
            node.set_child(pe.clone(), child);
        }
        node
    }

    fn check_shape(&mut self, atom: &Atom<'s>, value: &Value) {
        if !self.validate || value.is_null() {
            return;
        }
        let (ok, expected) = match atom {
            Atom::Struct { .. } | Atom::Map { .. } => (value.is_object(), "map"),
            Atom::List { .. } => (value.is_array(), "list"),
            _ => (true, ""),
        };
        if !ok {
            self.error(format!("expected {expected}, got {} {value}", type_name(value)));
        }
    }

    fn check_scalar(&mut self, kind: ScalarKind, value: &Value) {
        let ok = match (kind, value) {
            (_, Value::Null) => true,
            (_, Value::Object(_) | Value::Array(_)) => false,
            (ScalarKind::String, v) => v.is_string(),
            (ScalarKind::Numeric, v) => v.is_number(),
            (ScalarKind::Boolean, v) => v.is_boolean(),
            (ScalarKind::Untyped, _) => true,
        };
        if !ok {
            let expected = match kind {
                ScalarKind::String => "string",
                ScalarKind::Numeric => "numeric (int or float)",
                ScalarKind::Boolean => "boolean",
                ScalarKind::Untyped => "scalar",
            };
            self.error(format!("expected {expected}, got {} {value}", type_name(value)));
        }
    }
}

fn is_null_or_empty_map(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

/// Fields added, modified and removed between two values.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    pub fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

/// One position's result: the subtrees of its children and whether its own path was added,
/// modified or removed.
#[derive(Default)]
struct Delta {
    children: Comparison,
    added: bool,
    modified: bool,
    removed: bool,
}

impl Delta {
    fn file_under(self, pe: &PathElement, into: &mut Comparison) {
        for (flag, set, child) in [
            (self.added, &mut into.added, self.children.added),
            (self.modified, &mut into.modified, self.children.modified),
            (self.removed, &mut into.removed, self.children.removed),
        ] {
            if flag {
                set.insert_member(pe.clone());
            }
            if !child.is_empty() {
                set.set_child(pe.clone(), child);
            }
        }
    }
}

/// Compares two values of one type (upstream's `Compare`).
///
/// One deliberate difference: upstream's live objects always hold Go's non-pointer structs
/// (`spec`, `metadata`, `template`...), so it never reports such a struct itself as added. The
/// schema does not say which structs are pointers, so no struct-typed field is reported added
/// by itself here (its fields are); list items and map entries are, as upstream reports them.
pub(crate) fn compare<'s>(schema: Schema<'s>, lhs: &Value, rhs: &Value, atom: &Atom<'s>) -> Comparison {
    CompareWalk { schema }.walk(Some(lhs), Some(rhs), atom, false).children
}

struct CompareWalk<'s> {
    schema: Schema<'s>,
}

impl<'s> CompareWalk<'s> {
    fn walk(&self, lhs: Option<&Value>, rhs: Option<&Value>, atom: &Atom<'s>, struct_field: bool) -> Delta {
        let granular_map = match atom {
            Atom::Struct { atomic, .. } | Atom::Map { atomic, .. } => !atomic,
            Atom::Deduced => matches!((lhs, rhs), (Some(Value::Object(_)), _) | (_, Some(Value::Object(_)))),
            _ => false,
        };
        let granular_list = matches!(atom, Atom::List { kind, .. } if *kind != ListKind::Atomic);
        let shape_ok = |v: Option<&Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::Object(_)) => granular_map,
            Some(Value::Array(_)) => granular_list,
            Some(_) => false,
        };
        let descend =
            (granular_map || granular_list) && shape_ok(lhs) && shape_ok(rhs) && !(is_empty(lhs) && is_empty(rhs));
        if !descend {
            return Delta {
                added: lhs.is_none(),
                removed: rhs.is_none(),
                modified: matches!((lhs, rhs), (Some(l), Some(r)) if !values_equal(l, r)),
                ..Delta::default()
            };
        }
        let mut delta = Delta::default();
        if granular_map {
            self.walk_map(lhs.and_then(Value::as_object), rhs.and_then(Value::as_object), atom, &mut delta.children);
        } else if let Atom::List { items, kind } = atom {
            self.walk_list(
                lhs.and_then(Value::as_array),
                rhs.and_then(Value::as_array),
                items,
                kind,
                &mut delta.children,
            );
        }
        let is_struct = matches!(atom, Atom::Struct { .. });
        delta.added = lhs.is_none() && !(is_struct && struct_field);
        delta.removed = rhs.is_none();
        delta
    }

    fn walk_map(
        &self,
        lhs: Option<&Map<String, Value>>,
        rhs: Option<&Map<String, Value>>,
        atom: &Atom<'s>,
        out: &mut Comparison,
    ) {
        let child_atom = |key: &str| -> (Atom<'s>, bool) {
            match atom {
                Atom::Struct { properties, .. } => match self.schema.field(properties, key) {
                    Some(a) => (a, true),
                    None => (Atom::Deduced, false),
                },
                Atom::Map { values, .. } => (self.schema.resolve(values), false),
                _ => (Atom::Deduced, false),
            }
        };
        let definition = match atom {
            Atom::Struct { definition, .. } => *definition,
            _ => "",
        };
        let mut visit = |key: &String, l: Option<&Value>, r: Option<&Value>| {
            if skipped(definition, key) {
                return;
            }
            let (a, is_field) = child_atom(key);
            let pe = PathElement::Field(key.clone());
            self.walk(l, r, &a, is_field).file_under(&pe, out);
        };
        if let Some(lhs) = lhs {
            for (key, l) in lhs {
                visit(key, Some(l), rhs.and_then(|r| r.get(key)));
            }
        }
        if let Some(rhs) = rhs {
            for (key, r) in rhs {
                if lhs.is_none_or(|l| !l.contains_key(key)) {
                    visit(key, None, Some(r));
                }
            }
        }
    }

    fn walk_list(
        &self,
        lhs: Option<&Vec<Value>>,
        rhs: Option<&Vec<Value>>,
        items: &'s Value,
        kind: &ListKind<'s>,
        out: &mut Comparison,
    ) {
        let items_definition = self.schema.items_definition(items);
        let item_atom = self.schema.resolve(items);
        // Items grouped by path element, in first-seen order (lhs first).
        let mut order: Vec<PathElement> = Vec::new();
        let mut groups: std::collections::BTreeMap<PathElement, (Vec<&Value>, Vec<&Value>)> = Default::default();
        for (side, list) in [(0, lhs), (1, rhs)] {
            for item in list.into_iter().flatten() {
                let Ok(pe) = item_element(kind, items_definition, item) else {
                    continue;
                };
                let entry = groups.entry(pe.clone()).or_insert_with(|| {
                    order.push(pe);
                    (Vec::new(), Vec::new())
                });
                if side == 0 { entry.0.push(item) } else { entry.1.push(item) }
            }
        }
        for pe in order {
            let (l, r) = &groups[&pe];
            match (l.len(), r.len()) {
                (0..=1, 0..=1) => {
                    self.walk(l.first().copied(), r.first().copied(), &item_atom, false).file_under(&pe, out)
                }
                (2.., 2..) => {
                    if l.len() != r.len() || l.iter().zip(r).any(|(a, b)| !values_equal(a, b)) {
                        out.modified.insert(std::slice::from_ref(&pe));
                    }
                }
                (2.., _) => {
                    if let Some(first) = r.first() {
                        self.walk(None, Some(first), &item_atom, false).file_under(&pe, out);
                    }
                    out.removed.insert(std::slice::from_ref(&pe));
                }
                (_, 2..) => {
                    if let Some(first) = l.first() {
                        self.walk(Some(first), None, &item_atom, false).file_under(&pe, out);
                    }
                    out.added.insert(std::slice::from_ref(&pe));
                }
            }
        }
    }
}

/// Upstream's `EnsureNamedFieldsAreMembers`: the set plus every declared struct field on the
/// way to its members, so that removing by this set can remove whole fields.
pub(crate) fn ensure_named_fields_are_members<'s>(schema: Schema<'s>, set: &Set, atom: &Atom<'s>) -> Set {
    let mut out = set.members_only();
    for (pe, child) in set.children() {
        let child_atom = match (pe, atom) {
            (PathElement::Field(name), Atom::Struct { properties, .. }) => match schema.field(properties, name) {
                Some(a) => {
                    out.insert_member(pe.clone());
                    a
                }
                None => Atom::Deduced,
            },
            (PathElement::Field(_), Atom::Map { values, .. }) => schema.resolve(values),
            (PathElement::Key(_), Atom::List { items, .. }) => schema.resolve(items),
            _ => Atom::Deduced,
        };
        out.set_child(pe.clone(), ensure_named_fields_are_members(schema, child, &child_atom));
    }
    out
}
