//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for.
//!
//! A client that sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` gets rows of
//! cells instead of objects. For built-in kinds the columns and the computation of every cell
//! are those of upstream's printers (`pkg/printers/internalversion`); every other kind gets
//! upstream's default table convertor (`Name`, `Created At`). Like upstream's server, the
//! cells always include the wide columns (priority 1): kubectl drops them itself unless
//! `-o wide`, so a row always has one cell per column definition.
//!
//! Objects are JSON in any served version of their kind. Upstream prints its internal objects,
//! which carry the defaults of the API; the printers here read fields by their JSON names and
//! supply the same defaults where a field is absent, so that an object stored before
//! defaulting prints as it would upstream.
//!
//! Kinds are named by API group (`""` for the core group) and kind, whatever the version:
//! upstream prints every version of a kind alike. Custom resources have tables of their own
//! ([`custom_table`]): their columns come from the CRD's `additionalPrinterColumns`, read with a
//! JSONPath subset ([`JsonPath`]).
//!
//! [`human_duration`] is upstream's `duration.HumanDuration`, the `5m2s` / `2d5h` format of
//! every AGE column; clients show it verbatim.
//!
//! `?tableOptions` with `noHeaders` (which upstream honours by leaving `columnDefinitions`
//! null) is left to the caller: replace the field of the returned table.

mod cluster;
mod core;
mod custom;
mod docs;
mod duration;
mod format;
mod jsonpath;
mod networking;
mod object;
mod pod;
mod policy;
mod quantity;
mod storage;
mod workloads;

use std::cmp::Ordering;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

pub use custom::{CustomColumn, custom_table};
pub use duration::human_duration;
pub use jsonpath::{JsonPath, JsonPathError};
pub use quantity::canonical_quantity;

/// Errors of table requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The `includeObject` query parameter has a value upstream does not know; the API server
    /// answers 400 Bad Request with this message.
    #[error("unrecognized includeObject value: {value:?}")]
    UnrecognizedIncludeObject { value: String },
}

/// What each row carries besides its cells (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object: `"object": null`.
    None,
    /// The object's metadata as a `meta.k8s.io/v1` `PartialObjectMetadata`; kubectl's default,
    /// and what an absent parameter means.
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter; the empty string means the default.
    pub fn parse(value: &str) -> Result<Self, TableError> {
        match value {
            "None" => Ok(IncludeObject::None),
            "Metadata" | "" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            other => Err(TableError::UnrecognizedIncludeObject { value: other.to_string() }),
        }
    }
}

/// One column of a printer, as upstream's `metav1.TableColumnDefinition`.
#[derive(Debug, Clone, Copy)]
struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: i32,
}

impl Column {
    const fn new(name: &'static str, kind: &'static str, description: &'static str) -> Self {
        Column { name, kind, format: "", description, priority: 0 }
    }

    const fn string(name: &'static str, description: &'static str) -> Self {
        Self::new(name, "string", description)
    }

    const fn integer(name: &'static str, description: &'static str) -> Self {
        Self::new(name, "integer", description)
    }

    const fn boolean(name: &'static str, description: &'static str) -> Self {
        Self::new(name, "boolean", description)
    }

    /// Shown by kubectl only with `-o wide`.
    const fn wide(self) -> Self {
        Column { priority: 1, ..self }
    }

    /// Marks the column holding the object's name (kubectl uses it for `-o name`-like output).
    const fn named(self) -> Self {
        Column { format: "name", ..self }
    }

    fn to_json(self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// The `Name` column every printer starts with.
const NAME: Column = Column::string("Name", docs::META_NAME).named();
/// The `Age` column: the object's `creationTimestamp` as a human duration.
const AGE: Column = Column::string("Age", docs::META_CREATION);
/// The wide `Containers` column of workload printers.
const CONTAINERS: Column = Column::string("Containers", "Names of each container in the template.").wide();
/// The wide `Images` column of workload printers.
const IMAGES: Column = Column::string("Images", "Images referenced by each container in the template.").wide();

/// The printer of one kind: its columns and how one object becomes one row.
struct Printer {
    group: &'static str,
    kind: &'static str,
    columns: &'static [Column],
    cells: fn(&Value, Timestamp) -> Vec<Value>,
    /// The row's `conditions` (only pods have any).
    conditions: Option<fn(&Value) -> Vec<Value>>,
    /// The order of a list's rows when upstream sorts them (only flow schemas are sorted).
    order: Option<fn(&Value, &Value) -> Ordering>,
}

impl Printer {
    const fn new(
        group: &'static str,
        kind: &'static str,
        columns: &'static [Column],
        cells: fn(&Value, Timestamp) -> Vec<Value>,
    ) -> Self {
        Printer { group, kind, columns, cells, conditions: None, order: None }
    }
}

/// Every printer, by module. Kinds absent here get the default convertor.
const PRINTERS: &[&[Printer]] = &[
    pod::PRINTERS,
    self::core::PRINTERS,
    workloads::PRINTERS,
    networking::PRINTERS,
    storage::PRINTERS,
    policy::PRINTERS,
    cluster::PRINTERS,
];

fn printer(group: &str, kind: &str) -> Option<&'static Printer> {
    PRINTERS.iter().flat_map(|printers| printers.iter()).find(|p| p.group == group && p.kind == kind)
}

/// Whether upstream has a dedicated printer for the kind (otherwise it prints `Name` and
/// `Created At`).
pub fn has_printer(group: &str, kind: &str) -> bool {
    printer(group, kind).is_some()
}

/// The default convertor's columns: upstream's `rest.NewDefaultTableConvertor`.
const DEFAULT_COLUMNS: &[Column] = &[NAME, Column::new("Created At", "date", docs::META_CREATION)];

/// The `columnDefinitions` of a kind's table, wide columns included.
pub fn column_definitions(group: &str, kind: &str) -> Vec<Value> {
    let columns = printer(group, kind).map_or(DEFAULT_COLUMNS, |p| p.columns);
    columns.iter().map(|c| c.to_json()).collect()
}

/// The cells of one object's row, one per column definition, computed at `now`.
pub fn row_cells(group: &str, kind: &str, obj: &Value, now: Timestamp) -> Vec<Value> {
    match printer(group, kind) {
        Some(p) => (p.cells)(obj, now),
        None => default_cells(obj),
    }
}

/// The default convertor prints the creation time itself (RFC 3339, UTC, whole seconds); a
/// missing one is Go's zero time.
fn default_cells(obj: &Value) -> Vec<Value> {
    let created = object::timestamp(obj, "/metadata/creationTimestamp")
        .map_or_else(|| "0001-01-01T00:00:00Z".to_string(), |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    vec![object::name(obj).into(), created.into()]
}

/// The whole `Table` for `objects` (one object for a GET, the items for a LIST).
///
/// `list_meta` is the list's (or the object's) metadata: its `resourceVersion`, `continue` and
/// `remainingItemCount` become the table's.
pub fn table(
    group: &str,
    kind: &str,
    objects: &[Value],
    list_meta: &Value,
    include_object: IncludeObject,
    now: Timestamp,
) -> Value {
    let printer = printer(group, kind);
    let mut ordered: Vec<&Value> = objects.iter().collect();
    if let Some(order) = printer.and_then(|p| p.order) {
        ordered.sort_by(|a, b| order(a, b));
    }
    let rows: Vec<Value> = ordered
        .into_iter()
        .map(|obj| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(row_cells(group, kind, obj, now)));
            let conditions = printer.and_then(|p| p.conditions).map(|f| f(obj)).unwrap_or_default();
            if !conditions.is_empty() {
                row.insert("conditions".into(), Value::Array(conditions));
            }
            row.insert("object".into(), row_object(obj, include_object));
            Value::Object(row)
        })
        .collect();
    // Upstream's printers return an empty slice for an empty list, the default convertor a nil
    // one; clients see `[]` and `null` respectively.
    let rows = if rows.is_empty() && printer.is_none() { Value::Null } else { Value::Array(rows) };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": table_metadata(list_meta),
        "columnDefinitions": column_definitions(group, kind),
        "rows": rows,
    })
}

/// The part of a list's metadata a table keeps (upstream copies exactly these three).
fn table_metadata(list_meta: &Value) -> Value {
    let mut meta = Map::new();
    for key in ["resourceVersion", "continue"] {
        if let Some(value) = list_meta.get(key).and_then(Value::as_str).filter(|v| !v.is_empty()) {
            meta.insert(key.into(), value.into());
        }
    }
    if let Some(count) = list_meta.get("remainingItemCount").filter(|v| v.is_number()) {
        meta.insert("remainingItemCount".into(), count.clone());
    }
    Value::Object(meta)
}

fn row_object(obj: &Value, include_object: IncludeObject) -> Value {
    match include_object {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn include_object_parses_upstream_values_and_rejects_others() {
        assert_eq!(IncludeObject::parse(""), Ok(IncludeObject::Metadata));
        assert_eq!(IncludeObject::parse("None"), Ok(IncludeObject::None));
        assert_eq!(IncludeObject::parse("Object"), Ok(IncludeObject::Object));
        let err = IncludeObject::parse("all").unwrap_err();
        assert_eq!(err.to_string(), r#"unrecognized includeObject value: "all""#);
    }

    #[test]
    fn kinds_without_printer_get_name_and_created_at() {
        let columns = column_definitions("rbac.authorization.k8s.io", "Role");
        assert_eq!(columns.len(), 2);
        assert_eq!(columns[0]["name"], "Name");
        assert_eq!(columns[0]["format"], "name");
        assert!(columns[0]["description"].as_str().unwrap().starts_with("Name must be unique within a namespace."));
        assert_eq!(columns[1]["name"], "Created At");
        assert_eq!(columns[1]["type"], "date");
        assert_eq!(columns[1]["priority"], 0);
        let role = json!({"metadata": {"name": "reader", "creationTimestamp": "2024-04-30T10:00:00Z"}});
        assert_eq!(
            row_cells("rbac.authorization.k8s.io", "Role", &role, now()),
            vec![json!("reader"), json!("2024-04-30T10:00:00Z")]
        );
        let no_time = json!({"metadata": {"name": "x"}});
        assert_eq!(row_cells("", "LimitRange", &no_time, now())[1], "0001-01-01T00:00:00Z");
    }

    #[test]
    fn column_definitions_serialize_every_field_in_upstream_order() {
        let columns = column_definitions("", "Pod");
        let first = columns[0].as_object().unwrap();
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "type", "format", "description", "priority"]);
        let names: Vec<&str> = columns.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
        );
        let wide: Vec<i64> = columns.iter().map(|c| c["priority"].as_i64().unwrap()).collect();
        assert_eq!(wide, [0, 0, 0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn every_printer_row_has_one_cell_per_column() {
        let empty = json!({"metadata": {"name": "x"}});
        for printer in PRINTERS.iter().flat_map(|p| p.iter()) {
            let cells = (printer.cells)(&empty, now());
            // Upstream's IPAddress printer adds an age cell its columns do not declare.
            let extra = usize::from(printer.kind == "IPAddress");
            assert_eq!(cells.len(), printer.columns.len() + extra, "{}/{}", printer.group, printer.kind);
        }
    }

    #[test]
    fn no_kind_has_two_printers() {
        let all: Vec<(&str, &str)> = PRINTERS.iter().flat_map(|p| p.iter()).map(|p| (p.group, p.kind)).collect();
        for (i, key) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(key), "duplicate printer {key:?}");
        }
    }

    #[test]
    fn table_carries_list_metadata_and_partial_object_metadata_by_default() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "creationTimestamp": "2024-05-01T11:59:00Z"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Pending"},
        });
        let list_meta = json!({"resourceVersion": "42", "continue": "", "remainingItemCount": 3, "selfLink": "/x"});
        let t = table("", "Pod", std::slice::from_ref(&pod), &list_meta, IncludeObject::default(), now());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({"resourceVersion": "42", "remainingItemCount": 3}));
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        let row = &t["rows"][0];
        assert_eq!(row["cells"][0], "web");
        assert_eq!(row["cells"][4], "60s");
        assert_eq!(
            row["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pod["metadata"]})
        );
        assert!(row.get("conditions").is_none());
    }

    #[test]
    fn table_rows_hold_the_full_object_or_null_as_asked() {
        let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}});
        let objects = std::slice::from_ref(&cm);
        let full = table("", "ConfigMap", objects, &json!({}), IncludeObject::Object, now());
        assert_eq!(full["rows"][0]["object"], cm);
        let none = table("", "ConfigMap", objects, &json!({}), IncludeObject::None, now());
        assert_eq!(none["rows"][0]["object"], Value::Null);
        assert_eq!(none["metadata"], json!({}));
    }

    #[test]
    fn empty_lists_print_empty_rows_or_null_for_the_default_convertor() {
        let printed = table("", "Pod", &[], &json!({"resourceVersion": "7"}), IncludeObject::None, now());
        assert_eq!(printed["rows"], json!([]));
        let default = table("", "LimitRange", &[], &json!({}), IncludeObject::None, now());
        assert_eq!(default["rows"], Value::Null);
    }

    #[test]
    fn finished_pods_carry_the_completed_row_condition() {
        let pod = json!({"metadata": {"name": "job-abc"}, "status": {"phase": "Succeeded"}});
        let t = table("", "Pod", &[pod], &json!({}), IncludeObject::None, now());
        assert_eq!(
            t["rows"][0]["conditions"],
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}])
        );
    }
}
