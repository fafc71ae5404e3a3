//! The message table: for every protobuf message of the served groups, its fields by number with
//! their JSON names, types and the JSON rules of the Go field behind them.
//!
//! The data lives in `messages.txt`, whose header documents the format and how it was derived
//! from upstream. It is parsed once, on first use; a parse failure is a bug in the embedded data,
//! which the tests below catch before it ships.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The embedded table, one message per line.
const MESSAGES: &str = include_str!("messages.txt");

/// The table, parsed on first use.
pub(crate) fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Table::parse(MESSAGES).expect("the embedded messages.txt parses; its tests check it"))
}

/// A defect in the table's text, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TableError {
    #[error("line {line}: {reason}: {token:?}")]
    Syntax { line: usize, token: String, reason: &'static str },
    #[error("line {line}: message {name} is defined twice")]
    DuplicateMessage { line: usize, name: String },
    #[error("line {line}: field type {name} names no message in the table")]
    UnknownType { line: usize, name: String },
}

/// Scalar types the Kubernetes protobuf schemas use (no float, no unsigned, no fixed-width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    String,
    Bytes,
    Int32,
    Int64,
    Bool,
}

impl Scalar {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "bytes" => Self::Bytes,
            "int32" => Self::Int32,
            "int64" => Self::Int64,
            "bool" => Self::Bool,
            _ => return None,
        })
    }

    /// Whether a repeated field of this type may arrive packed into one length-delimited value.
    pub(crate) fn is_packable(self) -> bool {
        matches!(self, Self::Int32 | Self::Int64 | Self::Bool)
    }
}

/// What one field (or one map value) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldType {
    Scalar(Scalar),
    /// An index into [`Table::message_at`].
    Message(usize),
}

/// How many values a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Single,
    Repeated,
    /// `map<string, V>`: repeated entries with the key as field 1 and the value as field 2.
    Map,
}

/// One field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) number: u32,
    /// The name in JSON. The protobuf name differs for a few upstream fields (`aPIGroup`,
    /// `uID`, `Webhooks`); the table carries the JSON one.
    pub(crate) json_name: &'static str,
    pub(crate) ty: FieldType,
    pub(crate) shape: Shape,
    /// A non-pointer Go scalar tagged `omitempty`. Upstream's generated code writes such fields
    /// even when zero, and `encoding/json` leaves them out, so a zero value is dropped.
    pub(crate) omit_empty: bool,
    /// Tagged `omitzero`: dropped when its value is the zero value (for `Time`, JSON `null`).
    pub(crate) omit_zero: bool,
    /// An embedded Go struct tagged `json:",inline"`: its fields join the parent's object.
    pub(crate) inline: bool,
}

/// Messages whose Go types marshal their own JSON rather than as an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CustomJson {
    Time,
    MicroTime,
    Duration,
    Quantity,
    IntOrString,
    RawExtension,
    Unknown,
    FieldsV1,
}

impl CustomJson {
    fn of(package: &str, name: &str) -> Option<Self> {
        Some(match (package, name) {
            ("meta.v1", "Time") => Self::Time,
            ("meta.v1", "MicroTime") => Self::MicroTime,
            ("meta.v1", "Duration") => Self::Duration,
            ("meta.v1", "FieldsV1") => Self::FieldsV1,
            ("api.resource", "Quantity" | "QuantityValue") => Self::Quantity,
            ("util.intstr", "IntOrString") => Self::IntOrString,
            ("runtime", "RawExtension") => Self::RawExtension,
            ("runtime", "Unknown") => Self::Unknown,
            _ => return None,
        })
    }
}

/// One message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The table's short package name, e.g. `apps.v1`.
    pub(crate) package: &'static str,
    pub(crate) name: &'static str,
    /// Registered in the scheme as a kind of its package's group version.
    pub(crate) is_kind: bool,
    /// A Go named slice (`ExtraValue`, `Verbs`): the message wraps `items`, the JSON is the array.
    pub(crate) is_list: bool,
    pub(crate) custom: Option<CustomJson>,
    /// Fields in Go struct order, which is the order `encoding/json` writes them in.
    pub(crate) fields: Vec<Field>,
    /// `(number, index into fields)`, sorted by number.
    by_number: Vec<(u32, usize)>,
}

impl Message {
    /// The field with a wire number, and its index in [`Message::fields`].
    pub(crate) fn field(&self, number: u32) -> Option<(usize, &Field)> {
        let at = self.by_number.binary_search_by_key(&number, |&(n, _)| n).ok()?;
        let index = self.by_number[at].1;
        Some((index, &self.fields[index]))
    }
}

/// A protobuf package of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Package {
    pub(crate) alias: &'static str,
    /// The package as `generated.proto` declares it, e.g. `k8s.io.api.apps.v1`.
    pub(crate) proto: &'static str,
    /// The group version it serves, e.g. `apps/v1`; `None` for packages of shared types only.
    pub(crate) api_version: Option<&'static str>,
}

/// Every message, looked up by name or by the kind it serves.
#[derive(Debug)]
pub(crate) struct Table {
    packages: Vec<Package>,
    messages: Vec<Message>,
    /// `"apps.v1.Deployment"` → message index.
    by_name: HashMap<String, usize>,
    /// apiVersion → kind → message index.
    kinds: HashMap<&'static str, HashMap<&'static str, usize>>,
}

/// The package whose kinds (`DeleteOptions`, `Status`, `WatchEvent`, ...) upstream registers in
/// every group version as well as its own.
const SHARED_KINDS_PACKAGE: &str = "meta.v1";

impl Table {
    pub(crate) fn parse(text: &'static str) -> Result<Self, TableError> {
        let mut table =
            Table { packages: Vec::new(), messages: Vec::new(), by_name: HashMap::new(), kinds: HashMap::new() };
        // Field types may name messages defined further down, so the first pass only names
        // every message (line number, package, the line) and the second reads their fields.
        // Both passes number the messages in file order, so `by_name` indexes `messages`.
        let mut lines: Vec<(usize, &'static str, &'static str)> = Vec::new();
        let mut package: Option<&'static str> = None;
        for (line_index, line) in text.lines().enumerate() {
            let line_no = line_index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("package ") {
                let parts: Vec<&'static str> = rest.split_ascii_whitespace().collect();
                let [alias, proto, api_version] = parts[..] else {
                    return Err(syntax(line_no, line, "a package line has three words"));
                };
                table.packages.push(Package { alias, proto, api_version: (api_version != "-").then_some(api_version) });
                package = Some(alias);
                continue;
            }
            let Some(package) = package else {
                return Err(syntax(line_no, line, "message before any package line"));
            };
            let name = line.split_ascii_whitespace().next().unwrap_or_default();
            let qualified = format!("{package}.{name}");
            if table.by_name.insert(qualified.clone(), lines.len()).is_some() {
                return Err(TableError::DuplicateMessage { line: line_no, name: qualified });
            }
            lines.push((line_no, package, line));
        }

        for (line_no, package, line) in lines {
            let message = parse_message(line_no, package, line, &table.by_name)?;
            if message.is_kind {
                let api_version = table
                    .packages
                    .iter()
                    .find(|p| p.alias == package)
                    .and_then(|p| p.api_version)
                    .ok_or_else(|| syntax(line_no, message.name, "a kind needs an apiVersion"))?;
                let index = table.messages.len();
                table.kinds.entry(api_version).or_default().insert(message.name, index);
            }
            table.messages.push(message);
        }
        Ok(table)
    }

    pub(crate) fn message_at(&self, index: usize) -> &Message {
        &self.messages[index]
    }

    #[cfg(test)]
    pub(crate) fn messages(&self) -> &[Message] {
        &self.messages
    }

    #[cfg(test)]
    pub(crate) fn packages(&self) -> &[Package] {
        &self.packages
    }

    #[cfg(test)]
    /// A message by the table's qualified name, e.g. `apps.v1.Deployment`.
    pub(crate) fn message(&self, qualified: &str) -> Option<&Message> {
        self.by_name.get(qualified).map(|&i| &self.messages[i])
    }

    /// The message that carries a kind of a group version, as the scheme would resolve it:
    /// the group version's own kinds first, then the meta kinds every group version serves.
    pub(crate) fn kind(&self, api_version: &str, kind: &str) -> Option<&Message> {
        let served = self.kinds.get(api_version)?;
        if let Some(&index) = served.get(kind) {
            return Some(&self.messages[index]);
        }
        let shared = self.packages.iter().find(|p| p.alias == SHARED_KINDS_PACKAGE)?;
        let &index = self.kinds.get(shared.api_version?)?.get(kind)?;
        Some(&self.messages[index])
    }
}

fn syntax(line: usize, token: &str, reason: &'static str) -> TableError {
    TableError::Syntax { line, token: token.to_owned(), reason }
}

/// Parses a message line: `Name [@kind] [@list] field field ...`.
fn parse_message(
    line: usize,
    package: &'static str,
    text: &'static str,
    by_name: &HashMap<String, usize>,
) -> Result<Message, TableError> {
    let mut tokens = text.split_ascii_whitespace();
    let name = tokens.next().unwrap_or_default();
    let mut message = Message {
        package,
        name,
        is_kind: false,
        is_list: false,
        custom: CustomJson::of(package, name),
        fields: Vec::new(),
        by_number: Vec::new(),
    };
    for token in tokens {
        match token {
            "@kind" => message.is_kind = true,
            "@list" => message.is_list = true,
            _ => message.fields.push(parse_field(line, package, token, by_name)?),
        }
    }
    message.by_number = message.fields.iter().enumerate().map(|(i, f)| (f.number, i)).collect();
    message.by_number.sort_unstable();
    if message.by_number.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(syntax(line, name, "a field number is used twice"));
    }
    Ok(message)
}

/// Parses `name=number:type[,flag...]`, resolving a message type (unqualified names are in the
/// same package) to its index.
fn parse_field(
    line: usize,
    package: &str,
    token: &'static str,
    by_name: &HashMap<String, usize>,
) -> Result<Field, TableError> {
    let malformed = || syntax(line, token, "expected name=number:type");
    let (json_name, rest) = token.split_once('=').ok_or_else(malformed)?;
    let (number, rest) = rest.split_once(':').ok_or_else(malformed)?;
    let number: u32 = number.parse().map_err(|_| syntax(line, token, "bad field number"))?;
    let mut parts = rest.split(',');
    let type_name = parts.next().unwrap_or_default();
    let (shape, type_name) = if let Some(inner) = type_name.strip_prefix("[]") {
        (Shape::Repeated, inner)
    } else if let Some(inner) = type_name.strip_prefix("map[string]") {
        (Shape::Map, inner)
    } else {
        (Shape::Single, type_name)
    };
    if type_name.is_empty() {
        return Err(syntax(line, token, "missing type"));
    }
    let ty = match Scalar::parse(type_name) {
        Some(scalar) => FieldType::Scalar(scalar),
        None => {
            let qualified =
                if type_name.contains('.') { type_name.to_owned() } else { format!("{package}.{type_name}") };
            let index = by_name.get(&qualified).ok_or(TableError::UnknownType { line, name: qualified })?;
            FieldType::Message(*index)
        }
    };
    let mut field = Field { number, json_name, ty, shape, omit_empty: false, omit_zero: false, inline: false };
    for flag in parts {
        match flag {
            "omitempty" => field.omit_empty = true,
            "omitzero" => field.omit_zero = true,
            "inline" => field.inline = true,
            _ => return Err(syntax(line, token, "unknown flag")),
        }
    }
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a>(message: &'a str, json_name: &str) -> &'a Field {
        let message = table().message(message).unwrap_or_else(|| panic!("no message {message}"));
        message.fields.iter().find(|f| f.json_name == json_name).unwrap()
    }

    fn message_name(ty: FieldType) -> String {
        let FieldType::Message(index) = ty else { panic!("not a message: {ty:?}") };
        let message = table().message_at(index);
        format!("{}.{}", message.package, message.name)
    }

    #[test]
    fn embedded_table_parses_with_every_type_resolved() {
        assert!(Table::parse(MESSAGES).is_ok());
    }

    #[test]
    fn table_counts_messages_and_kinds_of_the_served_groups() {
        let t = table();
        // 570 messages from the 23 generated.proto files of upstream v1.36.
        assert_eq!(t.packages().len(), 23);
        assert_eq!(t.messages().len(), 570);
        assert_eq!(t.messages().iter().map(|m| m.fields.len()).sum::<usize>(), 2058);
        assert_eq!(t.messages().iter().filter(|m| m.is_kind).count(), 146);
    }

    #[test]
    fn field_numbers_match_upstream_proto() {
        // k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto
        assert_eq!(field("meta.v1.ObjectMeta", "name").number, 1);
        assert_eq!(field("meta.v1.ObjectMeta", "labels").number, 11);
        assert_eq!(field("meta.v1.ObjectMeta", "managedFields").number, 17);
        // k8s.io/api/apps/v1/generated.proto: DeploymentSpec skips 8 (rollbackTo was removed).
        assert_eq!(field("apps.v1.DeploymentSpec", "replicas").number, 1);
        assert_eq!(field("apps.v1.DeploymentSpec", "progressDeadlineSeconds").number, 9);
        assert_eq!(field("apps.v1.DeploymentCondition", "lastUpdateTime").number, 6);
        // k8s.io/api/core/v1/generated.proto
        assert_eq!(field("core.v1.Secret", "data").number, 2);
        assert_eq!(field("core.v1.Secret", "type").number, 3);
        assert_eq!(field("core.v1.Container", "envFrom").number, 19);
        assert_eq!(field("core.v1.PodSpec", "containers").number, 2);
        assert_eq!(field("core.v1.ServicePort", "targetPort").number, 4);
        assert_eq!(field("util.intstr.IntOrString", "strVal").number, 3);
        assert_eq!(field("runtime.Unknown", "contentType").number, 4);
    }

    #[test]
    fn field_types_and_shapes_match_upstream_proto() {
        let data = field("core.v1.Secret", "data");
        assert_eq!((data.shape, data.ty), (Shape::Map, FieldType::Scalar(Scalar::Bytes)));
        let containers = field("core.v1.PodSpec", "containers");
        assert_eq!(containers.shape, Shape::Repeated);
        assert_eq!(message_name(containers.ty), "core.v1.Container");
        let limits = field("core.v1.ResourceRequirements", "limits");
        assert_eq!(limits.shape, Shape::Map);
        assert_eq!(message_name(limits.ty), "api.resource.Quantity");
        assert_eq!(message_name(field("apps.v1.DeploymentSpec", "template").ty), "core.v1.PodTemplateSpec");
        assert_eq!(message_name(field("apps.v1.RollingUpdateDeployment", "maxSurge").ty), "util.intstr.IntOrString");
        assert_eq!(field("apps.v1.DeploymentSpec", "replicas").ty, FieldType::Scalar(Scalar::Int32));
    }

    #[test]
    fn json_names_replace_the_proto_names_that_differ() {
        // generated.proto says aPIGroup, uID and Webhooks; the Go json tags say otherwise.
        assert_eq!(field("networking.v1.IngressClassParametersReference", "apiGroup").number, 1);
        assert_eq!(field("authentication.v1.BoundObjectReference", "uid").number, 4);
        assert_eq!(field("admissionregistration.v1.ValidatingWebhookConfiguration", "webhooks").number, 2);
    }

    #[test]
    fn go_json_rules_are_carried_as_flags() {
        // `Name string json:"name,omitempty"` vs `Replicas *int32 json:"replicas,omitempty"`.
        assert!(field("meta.v1.ObjectMeta", "namespace").omit_empty);
        assert!(!field("apps.v1.DeploymentSpec", "replicas").omit_empty);
        // `Name string json:"name"` has no omitempty: an empty name is still written.
        assert!(!field("core.v1.Container", "name").omit_empty);
        assert!(field("meta.v1.ObjectMeta", "creationTimestamp").omit_zero);
        assert!(field("core.v1.Volume", "volumeSource").inline);
        assert!(field("core.v1.SecretKeySelector", "localObjectReference").inline);
        assert!(field("core.v1.Probe", "handler").inline);
    }

    #[test]
    fn kinds_resolve_in_their_group_version_and_meta_kinds_in_every_one() {
        let t = table();
        assert_eq!(t.kind("apps/v1", "Deployment").map(|m| m.name), Some("Deployment"));
        assert_eq!(t.kind("v1", "ConfigMap").map(|m| m.package), Some("core.v1"));
        assert_eq!(t.kind("autoscaling/v2", "HorizontalPodAutoscaler").map(|m| m.package), Some("autoscaling.v2"));
        assert_eq!(t.kind("apps/v1", "DeleteOptions").map(|m| m.package), Some("meta.v1"));
        assert_eq!(t.kind("meta.k8s.io/v1", "PartialObjectMetadata").map(|m| m.name), Some("PartialObjectMetadata"));
        // A type that is not a kind, a kind of another group, and an unserved group version.
        assert!(t.kind("apps/v1", "DeploymentSpec").is_none());
        assert!(t.kind("apps/v1", "ConfigMap").is_none());
        assert!(t.kind("apps/v1beta1", "Deployment").is_none());
    }

    #[test]
    fn custom_json_and_list_types_are_recognised() {
        let t = table();
        assert_eq!(t.message("meta.v1.Time").unwrap().custom, Some(CustomJson::Time));
        assert_eq!(t.message("api.resource.Quantity").unwrap().custom, Some(CustomJson::Quantity));
        assert!(t.message("meta.v1.Verbs").unwrap().is_list);
        assert!(t.message("authentication.v1.ExtraValue").unwrap().is_list);
    }

    #[test]
    fn malformed_tables_are_rejected_with_their_line() {
        let unknown = Table::parse("package a.v1 k8s.io.a.v1 a/v1\nA b=1:Missing\n").unwrap_err();
        assert_eq!(unknown, TableError::UnknownType { line: 2, name: "a.v1.Missing".into() });
        assert!(matches!(Table::parse("A b=1:string\n"), Err(TableError::Syntax { line: 1, .. })));
        assert!(matches!(
            Table::parse("package a.v1 k8s.io.a.v1 a/v1\nA b=1:string c=1:int32\n"),
            Err(TableError::Syntax { line: 2, .. })
        ));
        assert!(matches!(
            Table::parse("package a.v1 k8s.io.a.v1 a/v1\nA b=1:string,weird\n"),
            Err(TableError::Syntax { line: 2, .. })
        ));
    }
}
