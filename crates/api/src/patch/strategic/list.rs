//! Merging lists: by merge key for lists of objects, as ordered sets for lists of scalars, and
//! the order of the result (`$setElementOrder`, else upstream's best effort).
//!
//! The order rules are upstream's: elements the patch names come in the patch's order (or the
//! `$setElementOrder` list's), elements only the original has keep theirs, and the two runs are
//! interleaved by the original's order where both are known to it. An element new to the list
//! is unknown to the original's order, so it lands before the remaining original elements.

use serde_json::{Map, Value};

use super::{
    Kind, PATCH_DIRECTIVE, Patcher, Path, Position, SET_ELEMENT_ORDER, StrategicPatchError, directive_field, kind_name,
    scalar_kind, without_directives,
};

impl<'s> Patcher<'s> {
    /// Merges a list whose strategy is `merge` (or that lists scalars to delete).
    pub(super) fn merge_list(
        &self,
        original: Vec<Value>,
        patch: Vec<Value>,
        merge_key: Option<&str>,
        items: &Position<'s>,
        deletes_from_list: bool,
        path: Path<'_>,
    ) -> Result<Vec<Value>, StrategicPatchError> {
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let kind = element_kind(&[&original, &patch], path)?;
        if kind != Kind::Map {
            if deletes_from_list {
                return Ok(original.into_iter().filter(|value| !patch.contains(value)).collect());
            }
            let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
            for value in original.iter().chain(&patch) {
                if !merged.contains(value) {
                    merged.push(value.clone());
                }
            }
            let (named, server_only) = partition(merged, &patch, merge_key, path)?;
            return normalize_element_order(named, server_only, &patch, &original, merge_key, kind, path);
        }

        let Some(key) = merge_key else {
            return Err(StrategicPatchError::NoMergeKey { path: path.render() });
        };
        let (original, patch) = apply_element_directives(original, patch, key, path)?;
        let mut merged = original.clone();
        for element in &patch {
            let Value::Object(element) = element else {
                unreachable!("element_kind checked that every element is an object");
            };
            let value = merge_key_value(element, key, path)?;
            match merged.iter().position(|candidate| candidate.get(key) == Some(value)) {
                Some(index) => {
                    let segment = format!("[{key:?}={value}]");
                    let current = match std::mem::take(&mut merged[index]) {
                        Value::Object(current) => current,
                        _ => unreachable!("element_kind checked that every element is an object"),
                    };
                    merged[index] =
                        Value::Object(self.merge_objects(current, element.clone(), items, path.child(&segment))?);
                }
                None => merged.push(Value::Object(element.clone())),
            }
        }
        let (named, server_only) = partition(merged, &patch, Some(key), path)?;
        normalize_element_order(named, server_only, &patch, &original, Some(key), kind, path)
    }

    /// `$setElementOrder/<field>`: merges the field's list (if the patch has one) and orders the
    /// result by the directive.
    pub(super) fn apply_set_element_order(
        &self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
        position: &Position<'s>,
        path: Path<'_>,
    ) -> Result<(), StrategicPatchError> {
        let directives: Vec<String> = patch.keys().filter(|key| key.starts_with(SET_ELEMENT_ORDER)).cloned().collect();
        for directive in directives {
            let Some(order) = patch.shift_remove(&directive) else {
                continue;
            };
            let Value::Array(order) = order else {
                return Err(unexpected_type(path, "list", &order));
            };
            let field = directive_field(&directive, SET_ELEMENT_ORDER)
                .ok_or_else(|| StrategicPatchError::InvalidSetElementOrder {
                    path: path.render(),
                    key: directive.clone(),
                })?
                .to_owned();
            let field_path = path.child(&field);
            let original_list = list_at(original, &field, field_path)?;
            let patch_list = list_at(patch, &field, field_path)?;
            let plan = self.list_field(position, &field, path)?;
            validate_order(patch_list.as_deref().unwrap_or_default(), &order, plan.merge_key, field_path)?;
            let merged = match (&original_list, patch_list.clone()) {
                (Some(original_list), None) => original_list.clone(),
                (None, Some(patch_list)) => patch_list.into_iter().filter_map(without_directives).collect(),
                (Some(original_list), Some(patch_list)) => {
                    self.merge_list_field(original_list.clone(), patch_list, &plan, false, field_path)?
                }
                (None, None) => continue,
            };
            let (named, server_only) = partition(merged, &order, plan.merge_key, field_path)?;
            let original_list = original_list.unwrap_or_default();
            let kind = element_kind(&[&original_list, patch_list.as_deref().unwrap_or_default()], field_path)?;
            let ordered =
                normalize_element_order(named, server_only, &order, &original_list, plan.merge_key, kind, field_path)?;
            original.insert(field.clone(), Value::Array(ordered));
            patch.shift_remove(&field);
        }
        Ok(())
    }
}

/// The list a field holds, if any.
fn list_at(
    object: &Map<String, Value>,
    field: &str,
    path: Path<'_>,
) -> Result<Option<Vec<Value>>, StrategicPatchError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items.clone())),
        Some(other) => Err(unexpected_type(path, "list", other)),
    }
}

/// The one kind all elements of the lists share.
fn element_kind(lists: &[&[Value]], path: Path<'_>) -> Result<Kind, StrategicPatchError> {
    let mut found = None;
    for value in lists.iter().flat_map(|list| list.iter()) {
        let kind = scalar_kind(value);
        match found {
            None if kind == Kind::List => {
                return Err(StrategicPatchError::ListOfLists { path: path.render() });
            }
            None => found = Some(kind),
            Some(first) if first != kind => {
                return Err(StrategicPatchError::MixedElementTypes { path: path.render() });
            }
            Some(_) => {}
        }
    }
    found.ok_or_else(|| StrategicPatchError::NoElements { path: path.render() })
}

/// Element directives in a merged list of objects: `$patch: delete` removes the original's
/// elements with the same key, `$patch: replace` makes the patch's other elements the list.
/// Returns the original and the patch's plain elements.
fn apply_element_directives(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
    path: Path<'_>,
) -> Result<(Vec<Value>, Vec<Value>), StrategicPatchError> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for element in patch {
        let Some(directive) = element.get(PATCH_DIRECTIVE) else {
            plain.push(element);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(value) = element.get(key) else {
                    return Err(missing_merge_key(path, key, &element));
                };
                original.retain(|candidate| candidate.get(key) != Some(value));
            }
            // Other elements may still carry directives, so keep scanning.
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(StrategicPatchError::MergeDirectiveInList { path: path.render() });
            }
            _ => {
                return Err(StrategicPatchError::UnknownPatchType { path: path.render(), value: directive.clone() });
            }
        }
    }
    if replace { Ok((plain, Vec::new())) } else { Ok((original, plain)) }
}

/// Splits `merged` into the elements `by` names (by merge key, or by value for scalars) and the
/// others, each keeping `merged`'s order.
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: Option<&str>,
    path: Path<'_>,
) -> Result<(Vec<Value>, Vec<Value>), StrategicPatchError> {
    let mut named = Vec::with_capacity(merged.len());
    let mut others = Vec::new();
    for value in merged {
        let is_named = match merge_key {
            None => by.contains(&value),
            Some(key) => {
                let Value::Object(element) = &value else {
                    return Err(unexpected_type(path, "map", &value));
                };
                let wanted = merge_key_value(element, key, path)?;
                let mut found = false;
                for candidate in by {
                    let Value::Object(candidate) = candidate else {
                        return Err(unexpected_type(path, "map", candidate));
                    };
                    if candidate.get(key) == Some(wanted) {
                        found = true;
                        break;
                    }
                }
                found
            }
        };
        if is_named {
            named.push(value);
        } else {
            others.push(value);
        }
    }
    Ok((named, others))
}

/// Orders the patch's elements by `patch_order` and the original's by `server_order`, then
/// interleaves them.
fn normalize_element_order(
    named: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
    kind: Kind,
    path: Path<'_>,
) -> Result<Vec<Value>, StrategicPatchError> {
    let named = sort_by_order(named, patch_order, merge_key, kind, path)?;
    let server_only = sort_by_order(server_only, server_order, merge_key, kind, path)?;
    Ok(interleave(server_only, named, server_order, merge_key, kind))
}

/// Stable-sorts `values` by their position in `order`; elements deleting by `$patch` go last.
fn sort_by_order(
    values: Vec<Value>,
    order: &[Value],
    merge_key: Option<&str>,
    kind: Kind,
    path: Path<'_>,
) -> Result<Vec<Value>, StrategicPatchError> {
    let (mut kept, deleting): (Vec<Value>, Vec<Value>) = if kind == Kind::Map {
        let key = merge_key.unwrap_or_default();
        for value in values.iter().chain(order) {
            let Value::Object(element) = value else {
                return Err(unexpected_type(path, "map", value));
            };
            merge_key_value(element, key, path)?;
        }
        values.into_iter().partition(|value| value.get(PATCH_DIRECTIVE).and_then(Value::as_str) != Some("delete"))
    } else {
        (values, Vec::new())
    };
    // Every element is in `order` when called from a merge; one that is not keeps its relative
    // place after those that are.
    kept.sort_by_key(|value| index_in(order, value, merge_key, kind).unwrap_or(usize::MAX));
    kept.extend(deleting);
    Ok(kept)
}

/// Merges two ordered runs: an original-only element goes first when the original's order puts
/// it before the next patch element; otherwise the patch element goes first.
fn interleave(
    server_only: Vec<Value>,
    named: Vec<Value>,
    server_order: &[Value],
    merge_key: Option<&str>,
    kind: Kind,
) -> Vec<Value> {
    let mut merged = Vec::with_capacity(server_only.len() + named.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = named.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                match (index_in(server_order, l, merge_key, kind), index_in(server_order, r, merge_key, kind)) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                }
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        merged.extend(next);
    }
    merged
}

/// Where `value` is in `list`: by merge key for objects, by value for scalars.
fn index_in(list: &[Value], value: &Value, merge_key: Option<&str>, kind: Kind) -> Option<usize> {
    if kind == Kind::Map {
        let key = merge_key.unwrap_or_default();
        let wanted = value.get(key);
        list.iter().position(|candidate| candidate.get(key) == wanted)
    } else {
        list.iter().position(|candidate| candidate == value)
    }
}

/// Checks that the patch list's elements appear in the `$setElementOrder` list, in its order.
fn validate_order(
    patch_list: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
    path: Path<'_>,
) -> Result<(), StrategicPatchError> {
    if patch_list.is_empty() || order.is_empty() {
        return Ok(());
    }
    let mut elements = Vec::with_capacity(patch_list.len());
    for value in patch_list {
        if merge_key.is_some() {
            let Value::Object(element) = value else {
                return Err(unexpected_type(path, "map", value));
            };
            if element.get(PATCH_DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                continue;
            }
        }
        elements.push(value);
    }
    let (mut next_element, mut next_order) = (0, 0);
    while next_element < elements.len() && next_order < order.len() {
        let element = elements[next_element];
        if element.get(PATCH_DIRECTIVE).is_some() {
            next_element += 1;
            continue;
        }
        let same = match merge_key {
            None => *element == order[next_order],
            Some(key) => {
                let (Value::Object(left), Value::Object(right)) = (element, &order[next_order]) else {
                    let odd = if element.is_object() { &order[next_order] } else { element };
                    return Err(unexpected_type(path, "map", odd));
                };
                merge_key_value(left, key, path)? == merge_key_value(right, key, path)?
            }
        };
        if same {
            next_element += 1;
        }
        next_order += 1;
    }
    if next_element < elements.len() && next_order >= order.len() {
        return Err(StrategicPatchError::SetElementOrderMismatch { path: path.render() });
    }
    Ok(())
}

fn merge_key_value<'v>(
    element: &'v Map<String, Value>,
    key: &str,
    path: Path<'_>,
) -> Result<&'v Value, StrategicPatchError> {
    element.get(key).ok_or_else(|| StrategicPatchError::MissingMergeKey {
        path: path.render(),
        merge_key: key.to_owned(),
        element: Value::Object(element.clone()),
    })
}

fn missing_merge_key(path: Path<'_>, key: &str, element: &Value) -> StrategicPatchError {
    StrategicPatchError::MissingMergeKey { path: path.render(), merge_key: key.to_owned(), element: element.clone() }
}

fn unexpected_type(path: Path<'_>, expected: &'static str, actual: &Value) -> StrategicPatchError {
    StrategicPatchError::UnexpectedType { path: path.render(), expected, actual: kind_name(actual) }
}
