//! The table-driven decoder: one protobuf message into the JSON value Go's `encoding/json` writes
//! for the same Go struct.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::ProtobufError;
use super::table::{Field, FieldType, Message, Scalar, Shape, Table};
use super::well_known;
use super::wire::{Reader, WireValue, for_each_field, payload, wrong_wire_type};

/// How deep messages may nest. Built-in objects nest fewer than twenty levels (a deployment's
/// pod affinity terms, a pod template's projected volumes), a few more with a `RawExtension`
/// holding another object; the limit only guards the stack against hostile bodies.
pub(crate) const MAX_DEPTH: usize = 100;

/// What the wire said about one field while its message is read.
enum Slot<'a> {
    Absent,
    Scalar(Value),
    Repeated(Vec<Value>),
    Map(BTreeMap<String, Value>),
    /// Every occurrence of a singular message field. Protobuf merges repeated occurrences, and
    /// decoding their concatenation is that merge.
    Message(usize, Vec<&'a [u8]>),
}

/// Decodes a message into its JSON value: an object for ordinary messages, and whatever the Go
/// type's own `MarshalJSON` writes for the custom ones.
pub(crate) fn decode_message(
    table: &Table,
    message: &Message,
    data: &[u8],
    depth: usize,
) -> Result<Value, ProtobufError> {
    if let Some(custom) = message.custom {
        return well_known::decode(custom, table, data, depth);
    }
    let mut object = decode_object(table, message, data, depth)?;
    if message.is_list {
        // A named Go slice: the JSON is the bare array. Go would write `null` for an empty one;
        // an empty array is what typed readers of the JSON can take.
        return Ok(object.remove("items").unwrap_or_else(|| Value::Array(Vec::new())));
    }
    Ok(Value::Object(object))
}

/// Decodes an ordinary message into the fields of its JSON object, in Go struct order.
pub(crate) fn decode_object(
    table: &Table,
    message: &Message,
    data: &[u8],
    depth: usize,
) -> Result<Map<String, Value>, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep { limit: MAX_DEPTH, path: String::new() });
    }
    let mut slots: Vec<Slot<'_>> = message.fields.iter().map(|_| Slot::Absent).collect();
    let mut reader = Reader::new(data);
    while !reader.is_empty() {
        let (number, wire_type) = reader.tag(message.name)?;
        let Some(value) = reader.value(message.name, wire_type)? else {
            continue;
        };
        // Fields the table does not know (newer than v1.36, or of no served type) are skipped,
        // as upstream's generated code skips them.
        let Some((index, field)) = message.field(number) else {
            continue;
        };
        store(table, field, &mut slots[index], value, depth)
            .map_err(|e| if field.inline { e } else { e.within(field.json_name) })?;
    }

    let mut object = Map::new();
    for (field, slot) in message.fields.iter().zip(slots) {
        let value = match slot {
            Slot::Absent => continue,
            Slot::Scalar(value) if field.omit_empty && is_zero(&value) => continue,
            Slot::Scalar(value) => value,
            Slot::Repeated(values) => Value::Array(values),
            Slot::Map(entries) => Value::Object(entries.into_iter().collect()),
            Slot::Message(index, parts) => {
                let data: Cow<'_, [u8]> = match parts.as_slice() {
                    [one] => Cow::Borrowed(one),
                    many => Cow::Owned(many.concat()),
                };
                let value = decode_message(table, table.message_at(index), &data, depth + 1)
                    .map_err(|e| if field.inline { e } else { e.within(field.json_name) })?;
                if field.omit_zero && value.is_null() {
                    continue;
                }
                value
            }
        };
        if field.inline {
            // Go promotes an embedded struct's fields; the parent's own fields win a clash.
            if let Value::Object(inner) = value {
                for (key, value) in inner {
                    object.entry(key).or_insert(value);
                }
            }
        } else {
            object.insert(field.json_name.to_owned(), value);
        }
    }
    Ok(object)
}

/// Records one wire value of a field in its slot.
fn store<'a>(
    table: &Table,
    field: &Field,
    slot: &mut Slot<'a>,
    value: WireValue<'a>,
    depth: usize,
) -> Result<(), ProtobufError> {
    match (field.shape, field.ty) {
        (Shape::Single, FieldType::Scalar(scalar)) => {
            *slot = Slot::Scalar(scalar_value(field.json_name, scalar, value)?);
        }
        (Shape::Single, FieldType::Message(index)) => {
            let bytes = payload(field.json_name, value)?;
            match slot {
                Slot::Message(_, parts) => parts.push(bytes),
                _ => *slot = Slot::Message(index, vec![bytes]),
            }
        }
        (Shape::Repeated, ty) => {
            if !matches!(slot, Slot::Repeated(_)) {
                *slot = Slot::Repeated(Vec::new());
            }
            let Slot::Repeated(values) = slot else {
                return Ok(());
            };
            match (ty, value) {
                // Proto2 writes repeated numbers one by one, but readers accept them packed too.
                (FieldType::Scalar(scalar), WireValue::Bytes(packed)) if scalar.is_packable() => {
                    let mut reader = Reader::new(packed);
                    while !reader.is_empty() {
                        let number = reader.varint()?;
                        values.push(scalar_value(field.json_name, scalar, WireValue::Varint(number))?);
                    }
                }
                (FieldType::Scalar(scalar), value) => {
                    values.push(scalar_value(field.json_name, scalar, value)?);
                }
                (FieldType::Message(index), value) => {
                    let bytes = payload(field.json_name, value)?;
                    let item = decode_message(table, table.message_at(index), bytes, depth + 1)
                        .map_err(|e| e.within(&format!("[{}]", values.len())))?;
                    values.push(item);
                }
            }
        }
        (Shape::Map, ty) => {
            let entry = payload(field.json_name, value)?;
            let (key, value) = map_entry(table, ty, entry, depth)?;
            if !matches!(slot, Slot::Map(_)) {
                *slot = Slot::Map(BTreeMap::new());
            }
            if let Slot::Map(entries) = slot {
                entries.insert(key, value);
            }
        }
    }
    Ok(())
}

/// Decodes one map entry (`key = 1`, `value = 2`). A missing key or value is the zero value,
/// as in upstream's generated code.
fn map_entry(table: &Table, ty: FieldType, entry: &[u8], depth: usize) -> Result<(String, Value), ProtobufError> {
    let mut key = String::new();
    let mut value: Option<WireValue<'_>> = None;
    for_each_field("MapEntry", entry, |number, wire| {
        match number {
            1 => key = String::from_utf8_lossy(payload("key", wire)?).into_owned(),
            2 => value = Some(wire),
            _ => {}
        }
        Ok(())
    })?;
    let decoded = match (ty, value) {
        (FieldType::Scalar(scalar), Some(wire)) => scalar_value("value", scalar, wire),
        (FieldType::Scalar(scalar), None) => Ok(zero_value(scalar)),
        (FieldType::Message(index), wire) => {
            let bytes = match wire {
                Some(wire) => payload("value", wire)?,
                None => &[],
            };
            decode_message(table, table.message_at(index), bytes, depth + 1)
        }
    };
    let decoded = decoded.map_err(|e| e.within(&format!("[{key}]")))?;
    Ok((key, decoded))
}

/// The JSON form of a scalar, checking that the wire type fits its declared type.
fn scalar_value(field: &str, scalar: Scalar, value: WireValue<'_>) -> Result<Value, ProtobufError> {
    Ok(match (scalar, value) {
        // Go converts the 64-bit varint to int32 by truncation; so does `as`.
        (Scalar::Int32, WireValue::Varint(n)) => Value::from(n as i32),
        (Scalar::Int64, WireValue::Varint(n)) => Value::from(n as i64),
        (Scalar::Bool, WireValue::Varint(n)) => Value::Bool(n != 0),
        // Go strings may hold any bytes; encoding/json writes invalid UTF-8 as U+FFFD.
        (Scalar::String, WireValue::Bytes(bytes)) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        (Scalar::Bytes, WireValue::Bytes(bytes)) => Value::String(well_known::base64(bytes)),
        (_, other) => return Err(wrong_wire_type(field, other)),
    })
}

fn zero_value(scalar: Scalar) -> Value {
    match scalar {
        Scalar::String | Scalar::Bytes => Value::String(String::new()),
        Scalar::Int32 | Scalar::Int64 => Value::from(0),
        Scalar::Bool => Value::Bool(false),
    }
}

/// Whether a scalar's JSON is its Go zero value, which `omitempty` leaves out.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Null => true,
        Value::Array(_) | Value::Object(_) => false,
    }
}
