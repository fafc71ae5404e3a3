//! Tables of custom resources: a `Name` column followed by the CustomResourceDefinition
//! version's `additionalPrinterColumns` (or, when it has none, an `Age` column), each cell read
//! with a JSONPath, as upstream's CRD table convertor does.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::IncludeObject;
use super::docs::{META_CREATION, META_NAME};
use super::jsonpath::{JsonPath, JsonPathError};
use super::object::{self, since};

/// One printer column of a custom resource.
#[derive(Debug, Clone)]
pub struct CustomColumn {
    pub name: String,
    /// `integer`, `number`, `string`, `boolean` or `date`.
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
    path: JsonPath,
}

impl CustomColumn {
    /// A column from a CRD's `additionalPrinterColumns` entry.
    pub fn new(
        name: &str,
        type_: &str,
        format: Option<&str>,
        description: Option<&str>,
        priority: Option<i32>,
        json_path: &str,
    ) -> Result<CustomColumn, JsonPathError> {
        Ok(CustomColumn {
            name: name.to_string(),
            type_: type_.to_string(),
            format: format.unwrap_or("").to_string(),
            description: description.filter(|d| !d.is_empty()).map_or_else(
                || format!("Custom resource definition column (in JSONPath format): {json_path}"),
                str::to_string,
            ),
            priority: priority.unwrap_or(0),
            path: JsonPath::parse(json_path)?,
        })
    }

    /// The column a version without printer columns gets: `Age`, from the creation time.
    pub fn age() -> CustomColumn {
        CustomColumn {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            description: META_CREATION.into(),
            priority: 0,
            path: JsonPath::parse(".metadata.creationTimestamp").expect("static path parses"),
        }
    }

    fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.type_,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }

    fn cell(&self, obj: &Value, now: Timestamp) -> Value {
        let Some(value) = self.path.find(obj).into_iter().next() else { return Value::Null };
        match (self.type_.as_str(), value) {
            (_, Value::Null) => Value::Null,
            ("string", v) => Value::String(go_print(v)),
            ("integer", Value::Number(n)) => {
                n.as_i64().map_or_else(|| json!(n.as_f64().unwrap_or(0.0) as i64), |i| json!(i))
            }
            ("number", Value::Number(n)) => json!(n.as_f64().unwrap_or(0.0)),
            ("boolean", Value::Bool(b)) => json!(b),
            ("date", Value::String(s)) => match s.parse::<Timestamp>() {
                Ok(t) => Value::String(since(Some(t), now)),
                Err(_) => Value::String("<invalid>".into()),
            },
            _ => Value::Null,
        }
    }
}

/// A JSON value as Go's `fmt.Print` shows the decoded value (what JSONPath printing does).
fn go_print(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => crate::custom::go_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(go_print).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys.into_iter().map(|k| format!("{k}:{}", go_print(&m[k]))).collect();
            format!("map[{}]", parts.join(" "))
        }
    }
}

/// The `Table` of custom resources with these columns (after the `Name` column).
pub fn custom_table(
    columns: &[CustomColumn],
    objects: &[Value],
    list_meta: &Value,
    include_object: IncludeObject,
    now: Timestamp,
) -> Value {
    let mut definitions = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": META_NAME,
        "priority": 0,
    })];
    definitions.extend(columns.iter().map(CustomColumn::definition));
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![Value::String(object::name(obj).to_string())];
            cells.extend(columns.iter().map(|c| c.cell(obj, now)));
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells));
            row.insert("object".into(), super::row_object(obj, include_object));
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": super::table_metadata(list_meta),
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_columns_read_json_paths_and_type_cells() {
        let columns = vec![
            CustomColumn::new("Spec", "string", None, None, None, ".spec.cronSpec").unwrap(),
            CustomColumn::new("Replicas", "integer", None, None, Some(1), ".spec.replicas").unwrap(),
            CustomColumn::new("Ready", "string", None, None, None, r#".status.conditions[?(@.type=="Ready")].status"#)
                .unwrap(),
            CustomColumn::new("Missing", "string", None, None, None, ".spec.nothing").unwrap(),
            CustomColumn::age(),
        ];
        let obj = json!({
            "metadata": {"name": "c1", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"cronSpec": "* * * * */5", "replicas": 3},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        let t = custom_table(&columns, &[obj], &json!({"resourceVersion": "7"}), IncludeObject::None, now);
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["columnDefinitions"][2]["priority"], 1);
        assert_eq!(
            t["columnDefinitions"][1]["description"],
            "Custom resource definition column (in JSONPath format): .spec.cronSpec"
        );
        assert_eq!(t["rows"][0]["cells"], json!(["c1", "* * * * */5", 3, "True", null, "60m"]));
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn empty_lists_have_empty_rows() {
        let t = custom_table(&[CustomColumn::age()], &[], &json!({}), IncludeObject::Metadata, Timestamp::UNIX_EPOCH);
        assert_eq!(t["rows"], json!([]));
        assert_eq!(t["columnDefinitions"][1]["name"], "Age");
    }

    #[test]
    fn non_string_values_print_as_go_does() {
        assert_eq!(go_print(&json!({"b": 1, "a": [true, 2.5]})), "map[a:[true 2.5] b:1]");
    }
}
