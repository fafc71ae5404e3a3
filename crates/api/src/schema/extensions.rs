//! The `x-kubernetes-*` OpenAPI extensions that say how a field is patched and merged.
//!
//! kubectl reads them from `/openapi/v3` to build strategic merge patches, the server reads them
//! to apply those patches, and server-side apply reads the list and map types. One typed view
//! serves all three, so the JSON we publish and the behaviour we implement cannot drift apart.

use serde_json::{Map, Value};

/// `x-kubernetes-patch-strategy`: how a strategic merge patch treats the field.
pub const PATCH_STRATEGY: &str = "x-kubernetes-patch-strategy";
/// `x-kubernetes-patch-merge-key`: the field of list elements that identifies them.
pub const PATCH_MERGE_KEY: &str = "x-kubernetes-patch-merge-key";
/// `x-kubernetes-list-type`: atomic, set or map.
pub const LIST_TYPE: &str = "x-kubernetes-list-type";
/// `x-kubernetes-list-map-keys`: the fields that together identify elements of a map list.
pub const LIST_MAP_KEYS: &str = "x-kubernetes-list-map-keys";
/// `x-kubernetes-map-type`: whether a map or struct is replaced whole or merged per key.
pub const MAP_TYPE: &str = "x-kubernetes-map-type";
/// `x-kubernetes-group-version-kind`: the kinds a top-level definition is served as.
pub const GROUP_VERSION_KIND: &str = "x-kubernetes-group-version-kind";

/// A malformed `x-kubernetes-*` extension value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid value {value} for {extension}")]
pub struct ExtensionError {
    /// The extension's key, e.g. `x-kubernetes-list-type`.
    pub extension: &'static str,
    /// The value found, as JSON text.
    pub value: String,
}

/// The patch strategies upstream uses. `retainKeys` only changes how clients compute patches
/// (they send a `$retainKeys` directive); applying a patch honours the directive wherever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchStrategy {
    /// Lists are merged (by merge key for lists of objects, as a set for lists of primitives).
    Merge,
    /// Clients send `$retainKeys` listing the fields to keep, e.g. `Deployment.spec.strategy`.
    RetainKeys,
    /// Both, e.g. `PodSpec.volumes` (merged by name, each volume keeps only one source).
    MergeAndRetainKeys,
    /// The value is replaced whole, e.g. `PodDisruptionBudgetSpec.selector`.
    Replace,
}

impl PatchStrategy {
    /// Parses the extension's value; upstream accepts the two strategies in either order.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "merge" => Some(Self::Merge),
            "retainKeys" => Some(Self::RetainKeys),
            "merge,retainKeys" | "retainKeys,merge" => Some(Self::MergeAndRetainKeys),
            "replace" => Some(Self::Replace),
            _ => None,
        }
    }

    /// The value as upstream publishes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Merge => "merge",
            Self::RetainKeys => "retainKeys",
            Self::MergeAndRetainKeys => "merge,retainKeys",
            Self::Replace => "replace",
        }
    }

    /// Whether lists under this strategy are merged rather than replaced.
    pub fn merges(self) -> bool {
        matches!(self, Self::Merge | Self::MergeAndRetainKeys)
    }

    /// Whether clients send `$retainKeys` for values under this strategy.
    pub fn retains_keys(self) -> bool {
        matches!(self, Self::RetainKeys | Self::MergeAndRetainKeys)
    }
}

/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListType {
    /// The list is one value, replaced whole.
    Atomic,
    /// Elements are unique scalars.
    Set,
    /// Elements are objects identified by the list map keys.
    Map,
}

impl ListType {
    /// Parses the extension's value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "atomic" => Some(Self::Atomic),
            "set" => Some(Self::Set),
            "map" => Some(Self::Map),
            _ => None,
        }
    }

    /// The value as upstream publishes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Atomic => "atomic",
            Self::Set => "set",
            Self::Map => "map",
        }
    }
}

/// `x-kubernetes-map-type`, on map fields and on struct definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    /// The map or struct is one value, replaced whole.
    Atomic,
    /// Each key is owned and merged separately.
    Granular,
}

impl MapType {
    /// Parses the extension's value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "atomic" => Some(Self::Atomic),
            "granular" => Some(Self::Granular),
            _ => None,
        }
    }

    /// The value as upstream publishes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Atomic => "atomic",
            Self::Granular => "granular",
        }
    }
}

/// The patch and list extensions of one field (or, for `map_type`, of one definition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaExtensions<'a> {
    /// `x-kubernetes-patch-strategy`.
    pub patch_strategy: Option<PatchStrategy>,
    /// `x-kubernetes-patch-merge-key`.
    pub patch_merge_key: Option<&'a str>,
    /// `x-kubernetes-list-type`.
    pub list_type: Option<ListType>,
    /// `x-kubernetes-list-map-keys`; empty unless the list type is `map`.
    pub list_map_keys: Vec<&'a str>,
    /// `x-kubernetes-map-type`.
    pub map_type: Option<MapType>,
}

impl<'a> SchemaExtensions<'a> {
    /// Reads the extensions from a schema object (a property or a definition). A schema that is
    /// not an object has none.
    pub fn from_schema(schema: &'a Value) -> Result<Self, ExtensionError> {
        let Some(object) = schema.as_object() else {
            return Ok(Self::default());
        };
        Ok(Self {
            patch_strategy: parse_str(object, PATCH_STRATEGY, PatchStrategy::parse)?,
            patch_merge_key: parse_str(object, PATCH_MERGE_KEY, Some)?,
            list_type: parse_str(object, LIST_TYPE, ListType::parse)?,
            list_map_keys: match object.get(LIST_MAP_KEYS) {
                None => Vec::new(),
                Some(value) => value
                    .as_array()
                    .and_then(|keys| keys.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| ExtensionError { extension: LIST_MAP_KEYS, value: value.to_string() })?,
            },
            map_type: parse_str(object, MAP_TYPE, MapType::parse)?,
        })
    }

    /// Whether no extension is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Writes the extensions into a schema object, in upstream's JSON form (map keys as an
    /// array even when there is one). Extensions that are unset are left as they were.
    pub fn write_to(&self, schema: &mut Map<String, Value>) {
        if let Some(strategy) = self.patch_strategy {
            schema.insert(PATCH_STRATEGY.into(), strategy.as_str().into());
        }
        if let Some(key) = self.patch_merge_key {
            schema.insert(PATCH_MERGE_KEY.into(), key.into());
        }
        if let Some(list_type) = self.list_type {
            schema.insert(LIST_TYPE.into(), list_type.as_str().into());
        }
        if !self.list_map_keys.is_empty() {
            schema.insert(LIST_MAP_KEYS.into(), self.list_map_keys.clone().into());
        }
        if let Some(map_type) = self.map_type {
            schema.insert(MAP_TYPE.into(), map_type.as_str().into());
        }
    }
}

fn parse_str<'a, T>(
    object: &'a Map<String, Value>,
    extension: &'static str,
    parse: impl FnOnce(&'a str) -> Option<T>,
) -> Result<Option<T>, ExtensionError> {
    let Some(value) = object.get(extension) else {
        return Ok(None);
    };
    value.as_str().and_then(parse).map(Some).ok_or_else(|| ExtensionError { extension, value: value.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extensions_round_trip_through_json_in_upstream_form() {
        let extensions = SchemaExtensions {
            patch_strategy: Some(PatchStrategy::MergeAndRetainKeys),
            patch_merge_key: Some("name"),
            list_type: Some(ListType::Map),
            list_map_keys: vec!["name"],
            map_type: None,
        };
        let mut schema = Map::new();
        extensions.write_to(&mut schema);
        let schema = Value::Object(schema);
        assert_eq!(
            schema,
            json!({
                "x-kubernetes-patch-strategy": "merge,retainKeys",
                "x-kubernetes-patch-merge-key": "name",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            })
        );
        assert_eq!(SchemaExtensions::from_schema(&schema).unwrap(), extensions);
    }

    #[test]
    fn retain_keys_may_come_first_in_the_strategy() {
        assert_eq!(PatchStrategy::parse("retainKeys,merge"), Some(PatchStrategy::MergeAndRetainKeys));
        assert!(PatchStrategy::MergeAndRetainKeys.merges());
        assert!(PatchStrategy::MergeAndRetainKeys.retains_keys());
        assert!(!PatchStrategy::RetainKeys.merges());
        assert!(!PatchStrategy::Replace.merges());
    }

    #[test]
    fn unknown_extension_values_are_errors() {
        let error = SchemaExtensions::from_schema(&json!({"x-kubernetes-list-type": "bag"})).unwrap_err();
        assert_eq!(error.extension, LIST_TYPE);
        let error = SchemaExtensions::from_schema(&json!({"x-kubernetes-list-map-keys": "name"})).unwrap_err();
        assert_eq!(error.extension, LIST_MAP_KEYS);
    }

    #[test]
    fn schema_without_extensions_has_none() {
        let string = json!({"type": "string"});
        assert!(SchemaExtensions::from_schema(&string).unwrap().is_empty());
        assert!(SchemaExtensions::from_schema(&json!(true)).unwrap().is_empty());
    }
}
