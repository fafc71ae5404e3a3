//! Merging an applied configuration into a live object, and removing fields from an object by
//! a field set (upstream's `TypedValue.Merge` and `RemoveItems`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::{Map, Value};

use super::fieldpath::{PathElement, Set};
use super::typed::{Atom, ListKind, Schema};
use super::walk::item_element;

/// Merges `rhs` (the configuration) into `lhs` (the live object): leaves, atomic lists and
/// atomic maps take `rhs`'s value; granular maps and structs merge per key; associative lists
/// merge per item, ordered as `rhs` orders them with `lhs`-only items kept in place.
pub(crate) fn merge<'s>(schema: Schema<'s>, lhs: &Value, rhs: &Value, atom: &Atom<'s>) -> Value {
    match atom {
        Atom::Struct { atomic: false, .. } | Atom::Map { atomic: false, .. } | Atom::Deduced => {
            match (lhs, rhs) {
                (Value::Object(l), Value::Object(r)) if !(l.is_empty() && r.is_empty()) => {
                    Value::Object(merge_maps(schema, l, r, atom))
                }
                // A null configuration has no opinion about the fields of a granular map.
                (Value::Object(l), Value::Null) if !l.is_empty() => lhs.clone(),
                _ => rhs.clone(),
            }
        }
        Atom::List { items, kind } if *kind != ListKind::Atomic => match (lhs, rhs) {
            (Value::Array(l), Value::Array(r)) if !(l.is_empty() && r.is_empty()) => {
                Value::Array(merge_lists(schema, l, r, items, kind))
            }
            (Value::Array(l), Value::Null) if !l.is_empty() => lhs.clone(),
            _ => rhs.clone(),
        },
        _ => rhs.clone(),
    }
}

fn child_atom<'s>(schema: Schema<'s>, atom: &Atom<'s>, key: &str) -> Atom<'s> {
    match atom {
        Atom::Struct { properties, .. } => schema.field(properties, key).unwrap_or(Atom::Deduced),
        Atom::Map { values, .. } => schema.resolve(values),
        _ => Atom::Deduced,
    }
}

fn merge_maps<'s>(
    schema: Schema<'s>,
    lhs: &Map<String, Value>,
    rhs: &Map<String, Value>,
    atom: &Atom<'s>,
) -> Map<String, Value> {
    let mut out = Map::with_capacity(lhs.len().max(rhs.len()));
    for (key, l) in lhs {
        let merged = match rhs.get(key) {
            Some(r) => merge(schema, l, r, &child_atom(schema, atom, key)),
            None => l.clone(),
        };
        out.insert(key.clone(), merged);
    }
    for (key, r) in rhs {
        if !lhs.contains_key(key) {
            out.insert(key.clone(), r.clone());
        }
    }
    out
}

/// Upstream's item order: walk both lists; items of both are emitted in `rhs`'s order, items
/// only in `lhs` stay where they were relative to the shared ones, new items come where `rhs`
/// puts them.
fn merge_lists<'s>(
    schema: Schema<'s>,
    lhs: &[Value],
    rhs: &[Value],
    items: &'s Value,
    kind: &ListKind<'s>,
) -> Vec<Value> {
    let items_definition = schema.items_definition(items);
    let item_atom = schema.resolve(items);
    let index = |list: &[Value]| -> Vec<(PathElement, usize)> {
        list.iter()
            .enumerate()
            .filter_map(|(i, item)| item_element(kind, items_definition, item).ok().map(|pe| (pe, i)))
            .collect()
    };
    let lhs_pes = index(lhs);
    let rhs_pes = index(rhs);
    // Duplicated lhs items are not merged with their rhs counterpart (upstream merges them as
    // if absent).
    let mut lhs_by_pe: BTreeMap<&PathElement, Option<&Value>> = BTreeMap::new();
    for (pe, i) in &lhs_pes {
        lhs_by_pe.entry(pe).and_modify(|v| *v = None).or_insert(Some(&lhs[*i]));
    }
    let rhs_by_pe: BTreeMap<&PathElement, &Value> = rhs_pes.iter().map(|(pe, i)| (pe, &rhs[*i])).collect();
    let mut shared: VecDeque<&PathElement> =
        rhs_pes.iter().map(|(pe, _)| pe).filter(|pe| lhs_by_pe.contains_key(pe)).collect();
    let mut next_shared = shared.pop_front();
    let mut merged_rhs: BTreeSet<&PathElement> = BTreeSet::new();
    let merge_item = |l: Option<&Value>, r: &Value| match l {
        Some(l) => merge(schema, l, r, &item_atom),
        None => r.clone(),
    };

    let mut out = Vec::with_capacity(lhs.len().max(rhs.len()));
    let (mut li, mut ri) = (0, 0);
    while li < lhs_pes.len() || ri < rhs_pes.len() {
        if li < lhs_pes.len() && ri < rhs_pes.len() {
            let pe = &lhs_pes[li].0;
            if *pe == rhs_pes[ri].0 {
                merged_rhs.insert(pe);
                out.push(merge_item(lhs_by_pe[pe], rhs_by_pe[pe]));
                li += 1;
                ri += 1;
                next_shared = shared.pop_front();
                continue;
            }
            if rhs_by_pe.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                // A shared item, but not the one due next: it is emitted when rhs reaches it.
                li += 1;
                continue;
            }
        }
        if li < lhs_pes.len() {
            let (pe, i) = &lhs_pes[li];
            if !rhs_by_pe.contains_key(pe) {
                out.push(lhs[*i].clone());
                li += 1;
                continue;
            } else if merged_rhs.contains(pe) {
                li += 1;
            }
        }
        if ri < rhs_pes.len() {
            let pe = &rhs_pes[ri].0;
            merged_rhs.insert(pe);
            out.push(merge_item(lhs_by_pe.get(pe).copied().flatten(), rhs_by_pe[pe]));
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.pop_front();
            }
        }
    }
    out
}

/// Removes from `value` every field and item whose path is a member of `set`, with everything
/// under it. A map or list left with nothing becomes null, as upstream leaves it.
pub(crate) fn remove_items<'s>(schema: Schema<'s>, value: &Value, set: &Set, atom: &Atom<'s>) -> Value {
    if set.is_empty() {
        return value.clone();
    }
    match (atom, value) {
        (
            Atom::Struct { atomic: false, .. } | Atom::Map { atomic: false, .. } | Atom::Deduced,
            Value::Object(object),
        ) if !object.is_empty() => {
            let mut out = Map::with_capacity(object.len());
            for (key, v) in object {
                let pe = PathElement::Field(key.clone());
                if set.has_member(&pe) {
                    continue;
                }
                let kept = match set.child(&pe) {
                    Some(sub) => remove_items(schema, v, sub, &child_atom(schema, atom, key)),
                    None => v.clone(),
                };
                out.insert(key.clone(), kept);
            }
            if out.is_empty() { Value::Null } else { Value::Object(out) }
        }
        (Atom::List { items, kind }, Value::Array(list)) if *kind != ListKind::Atomic && !list.is_empty() => {
            let items_definition = schema.items_definition(items);
            let item_atom = schema.resolve(items);
            let mut out = Vec::with_capacity(list.len());
            for item in list {
                let Ok(pe) = item_element(kind, items_definition, item) else {
                    out.push(item.clone());
                    continue;
                };
                if set.has_member(&pe) {
                    continue;
                }
                out.push(match set.child(&pe) {
                    Some(sub) => remove_items(schema, item, sub, &item_atom),
                    None => item.clone(),
                });
            }
            if out.is_empty() { Value::Null } else { Value::Array(out) }
        }
        _ => value.clone(),
    }
}
