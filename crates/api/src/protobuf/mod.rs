//! Kubernetes protobuf request bodies, decoded into the JSON the API works on.
//!
//! kubectl 1.32 and later sends built-in types as `application/vnd.kubernetes.protobuf` (for
//! `kubectl create configmap|secret|namespace|deployment ...`) and does not retry with JSON when
//! the server answers 415. The API server works on `serde_json::Value`s shaped as the Kubernetes
//! JSON encoding, so this module turns such a body into the very `Value` a JSON client would have
//! sent for the same Go object.
//!
//! A body is upstream's envelope (`k8s.io/apimachinery/pkg/runtime/serializer/protobuf`): the
//! four bytes `k8s\0`, then a `runtime.Unknown` message whose `typeMeta` names the apiVersion and
//! kind and whose `raw` holds the object's own message. The object is decoded by a generic reader
//! of the protobuf wire format (`wire`) driven by a table of every message of the served groups
//! (`table`, data in `messages.txt`). The JSON follows what Go's `encoding/json` writes for the
//! decoded Go struct:
//!
//! - fields are named and ordered as the Go struct's json tags say; embedded `json:",inline"`
//!   structs (a `Volume`'s `VolumeSource`, a `Probe`'s handler) join their parent's object;
//! - every field present on the wire is written, including zero values of pointer fields
//!   (`replicas: 0`), except zero values of non-pointer scalars tagged `omitempty`, which
//!   upstream always writes to the wire and `encoding/json` always leaves out
//!   (`namespace: ""`, `generation: 0`); repeated fields and maps absent from the wire are absent;
//! - `bytes` become base64 strings, map keys are sorted, and the types with their own JSON form
//!   (`Time`, `MicroTime`, `Duration`, `Quantity`, `IntOrString`, `RawExtension`, `Unknown`,
//!   `FieldsV1`) are written as their Go `MarshalJSON` writes them (`well_known`).
//!
//! Fields the table does not know are skipped, as upstream's generated code skips them. Nothing
//! here panics on any input: every read is bounds-checked and nesting is limited. Only decoding
//! is here: responses stay JSON, which every client accepts.

mod decode;
mod envelope;
mod table;
mod well_known;

pub use well_known::go_duration;
mod wire;

#[cfg(test)]
mod tests;

use serde_json::Value;

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Whether a `Content-Type` header names a Kubernetes protobuf body. Parameters are ignored and
/// the media type is compared case-insensitively, as media types are. The streaming variant
/// (`;stream=watch`) is a protobuf body too, though clients only receive it.
pub fn is_protobuf_content_type(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case(CONTENT_TYPE)
}

/// Decodes a protobuf request body into the JSON object a JSON client would have sent: `kind` and
/// `apiVersion` first, from the envelope, then the object's fields.
pub fn decode_request_body(body: &[u8]) -> Result<Value, ProtobufError> {
    envelope::decode(table::table(), body, 0)
}

/// Why a protobuf body could not be decoded. Messages follow upstream's (the serializer's, the
/// scheme's and the generated `Unmarshal` code's), with the JSON path of the field at fault
/// appended where there is one (`at spec.template.spec.containers[0].ports[0]`). Upstream's
/// handlers answer every body that fails to decode with 400 `BadRequest`.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("empty data")]
    EmptyData,
    #[error("provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]")]
    MissingPrefix,
    #[error("empty body")]
    EmptyBody,
    #[error("Object 'Kind' is missing in 'runtime.TypeMeta{{APIVersion:{api_version:?}, Kind:\"\"}}'")]
    MissingKind { api_version: String },
    #[error("Object 'apiVersion' is missing in 'runtime.TypeMeta{{APIVersion:\"\", Kind:{kind:?}}}'")]
    MissingApiVersion { kind: String },
    /// The envelope names a kind that no served group version has.
    #[error("no kind {kind:?} is registered for version {api_version:?}")]
    NotRegistered { api_version: String, kind: String },
    #[error("unexpected EOF{}", at(.path))]
    UnexpectedEof { path: String },
    #[error("proto: integer overflow{}", at(.path))]
    IntegerOverflow { path: String },
    #[error("proto: illegal wireType {wire_type}{}", at(.path))]
    IllegalWireType { wire_type: u8, path: String },
    #[error("proto: {message}: illegal tag {tag} (wire type {wire_type}){}", at(.path))]
    IllegalTag { message: String, tag: u64, wire_type: u8, path: String },
    #[error("proto: wiretype end group for non-group{}", at(.path))]
    UnexpectedEndGroup { path: String },
    /// A known field arrived with a wire type its declared type never has.
    #[error("proto: wrong wireType = {wire_type} for field {field}{}", at(.path))]
    WrongWireType { field: String, wire_type: u8, path: String },
    #[error("impossible IntOrString.Type {value}{}", at(.path))]
    ImpossibleIntOrStringType { value: i64, path: String },
    #[error("Time.MarshalJSON: year outside of range [0,9999]: {seconds} seconds{}", at(.path))]
    TimeOutOfRange { seconds: i64, path: String },
    /// A `RawExtension`, `FieldsV1` or `Unknown` whose bytes should be JSON and are not.
    #[error("failed to parse {type_name} bytes as JSON{}: {source}", at(.path))]
    EmbeddedJson { type_name: &'static str, path: String, source: serde_json::Error },
    /// Embedded bytes in an encoding other than JSON or Kubernetes protobuf (e.g. CBOR).
    #[error("cannot convert {type_name} with unrecognized content type {content_type:?} to unstructured{}", at(.path))]
    EmbeddedContentType { type_name: &'static str, content_type: String, path: String },
    #[error("object nesting exceeds {limit} levels{}", at(.path))]
    TooDeep { limit: usize, path: String },
}

fn at(path: &str) -> String {
    if path.is_empty() { String::new() } else { format!(" at {path}") }
}

impl ProtobufError {
    fn path_mut(&mut self) -> Option<&mut String> {
        match self {
            Self::UnexpectedEof { path }
            | Self::IntegerOverflow { path }
            | Self::IllegalWireType { path, .. }
            | Self::IllegalTag { path, .. }
            | Self::UnexpectedEndGroup { path }
            | Self::WrongWireType { path, .. }
            | Self::ImpossibleIntOrStringType { path, .. }
            | Self::TimeOutOfRange { path, .. }
            | Self::EmbeddedJson { path, .. }
            | Self::EmbeddedContentType { path, .. }
            | Self::TooDeep { path, .. } => Some(path),
            Self::EmptyData
            | Self::MissingPrefix
            | Self::EmptyBody
            | Self::MissingKind { .. }
            | Self::MissingApiVersion { .. }
            | Self::NotRegistered { .. } => None,
        }
    }

    /// Prefixes the error's path with the segment it was found under: a field name, or an index
    /// or map key in brackets. Errors are built innermost first and gain segments on the way out,
    /// so the path costs nothing unless decoding fails.
    pub(crate) fn within(mut self, segment: &str) -> Self {
        if let Some(path) = self.path_mut() {
            let separator = if path.is_empty() || path.starts_with('[') { "" } else { "." };
            *path = format!("{segment}{separator}{path}");
        }
        self
    }
}
