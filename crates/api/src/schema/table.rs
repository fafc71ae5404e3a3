//! The table of upstream's patch and list metadata, `patch_metadata.txt`.
//!
//! schemars only knows what k8s-openapi's types say, and k8s-openapi drops upstream's patch
//! strategies, merge keys and list types. They are facts of the API, so they live here as data
//! (derived from upstream's Go struct tags and markers, see the file's header) rather than as
//! code, and the tests below check the data against the schemas it decorates.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::extensions::{ListType, MapType, PatchStrategy, SchemaExtensions};

/// The embedded table text.
const TABLE_TEXT: &str = include_str!("patch_metadata.txt");

/// The parsed table, shared by every [`SchemaSet`](super::SchemaSet).
pub(crate) static PATCH_METADATA: LazyLock<PatchMetadataTable> = LazyLock::new(|| {
    // The text is compiled in and `embedded_table_parses` proves it parses, so a failure here is
    // a broken build, not a runtime condition.
    PatchMetadataTable::parse(TABLE_TEXT).expect("patch_metadata.txt is checked by its tests")
});

/// A line of the table that does not follow the format in its header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("line {line}: field line before any definition line")]
    FieldBeforeDefinition { line: usize },
    #[error("line {line}: attribute {attribute:?} is not key=value")]
    MalformedAttribute { line: usize, attribute: String },
    #[error("line {line}: unknown attribute {key:?}")]
    UnknownAttribute { line: usize, key: String },
    #[error("line {line}: invalid value {value:?} for {key}")]
    InvalidValue { line: usize, key: &'static str, value: String },
    #[error("line {line}: {key} given twice")]
    DuplicateAttribute { line: usize, key: &'static str },
    #[error("line {line}: field {field:?} of {definition} has no attributes")]
    FieldWithoutAttributes { line: usize, definition: String, field: String },
    #[error("line {line}: {definition} listed twice")]
    DuplicateDefinition { line: usize, definition: String },
    #[error("line {line}: field {field:?} of {definition} listed twice")]
    DuplicateField { line: usize, definition: String, field: String },
}

/// The metadata of one definition: its own (a struct's map type) and its fields'.
#[derive(Debug, Default)]
pub(crate) struct DefinitionMetadata {
    pub(crate) own: SchemaExtensions<'static>,
    pub(crate) fields: Vec<(&'static str, SchemaExtensions<'static>)>,
}

/// The table, by definition name.
#[derive(Debug, Default)]
pub(crate) struct PatchMetadataTable {
    definitions: HashMap<&'static str, DefinitionMetadata>,
}

impl PatchMetadataTable {
    /// Parses the table format described in `patch_metadata.txt`.
    pub(crate) fn parse(text: &'static str) -> Result<Self, TableError> {
        let mut table = Self::default();
        let mut current: Option<&'static str> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or_default();
            if content.trim().is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let Some(name) = words.next() else { continue };
            if !raw.starts_with(char::is_whitespace) {
                let own = parse_attributes(line, words)?;
                if table.definitions.insert(name, DefinitionMetadata { own, fields: Vec::new() }).is_some() {
                    return Err(TableError::DuplicateDefinition { line, definition: name.to_owned() });
                }
                current = Some(name);
                continue;
            }
            let definition = current.ok_or(TableError::FieldBeforeDefinition { line })?;
            let extensions = parse_attributes(line, words)?;
            if extensions.is_empty() {
                return Err(TableError::FieldWithoutAttributes {
                    line,
                    definition: definition.to_owned(),
                    field: name.to_owned(),
                });
            }
            let entry = table.definitions.entry(definition).or_default();
            if entry.fields.iter().any(|(field, _)| *field == name) {
                return Err(TableError::DuplicateField {
                    line,
                    definition: definition.to_owned(),
                    field: name.to_owned(),
                });
            }
            entry.fields.push((name, extensions));
        }
        Ok(table)
    }

    /// The metadata of a definition, if the table lists it.
    pub(crate) fn definition(&self, name: &str) -> Option<&DefinitionMetadata> {
        self.definitions.get(name)
    }

    /// Every listed definition with its metadata.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &DefinitionMetadata)> {
        self.definitions.iter().map(|(name, metadata)| (*name, metadata))
    }
}

fn parse_attributes<'t>(line: usize, words: impl Iterator<Item = &'t str>) -> Result<SchemaExtensions<'t>, TableError> {
    let mut extensions = SchemaExtensions::default();
    for attribute in words {
        let (key, value) = attribute
            .split_once('=')
            .ok_or_else(|| TableError::MalformedAttribute { line, attribute: attribute.to_owned() })?;
        match key {
            "patch-strategy" => set_once(
                line,
                "patch-strategy",
                &mut extensions.patch_strategy,
                parse_value(line, "patch-strategy", value, PatchStrategy::parse)?,
            )?,
            "patch-merge-key" => set_once(
                line,
                "patch-merge-key",
                &mut extensions.patch_merge_key,
                parse_value(line, "patch-merge-key", value, |v| (!v.is_empty()).then_some(v))?,
            )?,
            "list-type" => set_once(
                line,
                "list-type",
                &mut extensions.list_type,
                parse_value(line, "list-type", value, ListType::parse)?,
            )?,
            "map-type" => set_once(
                line,
                "map-type",
                &mut extensions.map_type,
                parse_value(line, "map-type", value, MapType::parse)?,
            )?,
            "list-map-keys" => {
                if !extensions.list_map_keys.is_empty() {
                    return Err(TableError::DuplicateAttribute { line, key: "list-map-keys" });
                }
                let keys: Vec<&str> = value.split(',').collect();
                if keys.iter().any(|k| k.is_empty()) {
                    return Err(TableError::InvalidValue { line, key: "list-map-keys", value: value.to_owned() });
                }
                extensions.list_map_keys = keys;
            }
            _ => {
                return Err(TableError::UnknownAttribute { line, key: key.to_owned() });
            }
        }
    }
    Ok(extensions)
}

fn parse_value<'t, T>(
    line: usize,
    key: &'static str,
    value: &'t str,
    parse: impl FnOnce(&'t str) -> Option<T>,
) -> Result<T, TableError> {
    parse(value).ok_or_else(|| TableError::InvalidValue { line, key, value: value.to_owned() })
}

fn set_once<T>(line: usize, key: &'static str, slot: &mut Option<T>, value: T) -> Result<(), TableError> {
    if slot.replace(value).is_some() {
        return Err(TableError::DuplicateAttribute { line, key });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'t>(table: &'t PatchMetadataTable, definition: &str, field: &str) -> &'t SchemaExtensions<'static> {
        let metadata = table.definition(definition).unwrap_or_else(|| panic!("{definition} is not in the table"));
        metadata
            .fields
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, extensions)| extensions)
            .unwrap_or_else(|| panic!("{definition}.{field} is not in the table"))
    }

    #[test]
    fn embedded_table_parses() {
        PatchMetadataTable::parse(TABLE_TEXT).unwrap();
    }

    #[test]
    fn embedded_table_has_every_entry_derived_from_upstream() {
        // 250 definitions, 407 field entries and 36 struct-level entries were extracted from
        // upstream v1.36; a change to these counts must be a deliberate change to the data.
        let table = &*PATCH_METADATA;
        let definitions = table.iter().count();
        let fields: usize = table.iter().map(|(_, m)| m.fields.len()).sum();
        let own = table.iter().filter(|(_, m)| !m.own.is_empty()).count();
        assert_eq!((definitions, fields, own), (250, 407, 36));
    }

    #[test]
    fn object_meta_merges_owner_references_by_uid_and_finalizers_as_a_set() {
        let table = &*PATCH_METADATA;
        let meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
        let owners = field(table, meta, "ownerReferences");
        assert_eq!(owners.patch_strategy, Some(PatchStrategy::Merge));
        assert_eq!(owners.patch_merge_key, Some("uid"));
        assert_eq!(owners.list_type, Some(ListType::Map));
        assert_eq!(owners.list_map_keys, vec!["uid"]);
        let finalizers = field(table, meta, "finalizers");
        assert_eq!(finalizers.patch_strategy, Some(PatchStrategy::Merge));
        assert_eq!(finalizers.patch_merge_key, None);
        assert_eq!(finalizers.list_type, Some(ListType::Set));
        assert_eq!(field(table, meta, "managedFields").list_type, Some(ListType::Atomic));
    }

    #[test]
    fn pod_spec_lists_carry_upstream_merge_keys() {
        let table = &*PATCH_METADATA;
        let pod = "io.k8s.api.core.v1.PodSpec";
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            assert_eq!(field(table, pod, list).patch_merge_key, Some("name"));
        }
        let volumes = field(table, pod, "volumes");
        assert_eq!(volumes.patch_strategy, Some(PatchStrategy::MergeAndRetainKeys));
        assert_eq!(volumes.patch_merge_key, Some("name"));
        let tolerations = field(table, pod, "tolerations");
        assert_eq!(tolerations.patch_strategy, None);
        assert_eq!(tolerations.list_type, Some(ListType::Atomic));
        assert_eq!(field(table, pod, "nodeSelector").map_type, Some(MapType::Atomic));
    }

    #[test]
    fn container_ports_merge_by_container_port_but_are_keyed_with_protocol() {
        let ports = field(&PATCH_METADATA, "io.k8s.api.core.v1.Container", "ports");
        assert_eq!(ports.patch_merge_key, Some("containerPort"));
        assert_eq!(ports.list_map_keys, vec!["containerPort", "protocol"]);
        let service_ports = field(&PATCH_METADATA, "io.k8s.api.core.v1.ServiceSpec", "ports");
        assert_eq!(service_ports.patch_merge_key, Some("port"));
        assert_eq!(service_ports.list_map_keys, vec!["port", "protocol"]);
    }

    #[test]
    fn inlined_structs_contribute_their_fields() {
        // EphemeralContainer inlines EphemeralContainerCommon, as the published schema does.
        let env = field(&PATCH_METADATA, "io.k8s.api.core.v1.EphemeralContainer", "env");
        assert_eq!(env.patch_merge_key, Some("name"));
    }

    #[test]
    fn deployment_strategy_retains_keys_and_selectors_are_atomic_structs() {
        let strategy = field(&PATCH_METADATA, "io.k8s.api.apps.v1.DeploymentSpec", "strategy");
        assert_eq!(strategy.patch_strategy, Some(PatchStrategy::RetainKeys));
        let selector = PATCH_METADATA.definition("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector").unwrap();
        assert_eq!(selector.own.map_type, Some(MapType::Atomic));
        let pdb = field(&PATCH_METADATA, "io.k8s.api.policy.v1.PodDisruptionBudgetSpec", "selector");
        assert_eq!(pdb.patch_strategy, Some(PatchStrategy::Replace));
    }

    #[test]
    fn every_map_list_names_its_keys_and_every_merge_list_of_objects_its_merge_key() {
        for (definition, metadata) in PATCH_METADATA.iter() {
            for (field, extensions) in &metadata.fields {
                assert_eq!(
                    extensions.list_type == Some(ListType::Map),
                    !extensions.list_map_keys.is_empty(),
                    "{definition}.{field}"
                );
                if let Some(key) = extensions.patch_merge_key {
                    assert!(
                        extensions.list_map_keys.is_empty() || extensions.list_map_keys.contains(&key),
                        "{definition}.{field}: merge key {key} is not a list map key"
                    );
                }
            }
        }
    }

    #[test]
    fn malformed_lines_are_reported_with_their_line_number() {
        assert_eq!(
            PatchMetadataTable::parse("    containers list-type=map").unwrap_err(),
            TableError::FieldBeforeDefinition { line: 1 }
        );
        assert_eq!(
            PatchMetadataTable::parse("a.B\n    f list-type=bag").unwrap_err(),
            TableError::InvalidValue { line: 2, key: "list-type", value: "bag".into() }
        );
        assert_eq!(
            PatchMetadataTable::parse("a.B\n    f list-type").unwrap_err(),
            TableError::MalformedAttribute { line: 2, attribute: "list-type".into() }
        );
        assert_eq!(
            PatchMetadataTable::parse("a.B\n    f colour=red").unwrap_err(),
            TableError::UnknownAttribute { line: 2, key: "colour".into() }
        );
        assert_eq!(
            PatchMetadataTable::parse("a.B\n    f list-type=set list-type=map").unwrap_err(),
            TableError::DuplicateAttribute { line: 2, key: "list-type" }
        );
        assert!(matches!(
            PatchMetadataTable::parse("a.B\n    f\n").unwrap_err(),
            TableError::FieldWithoutAttributes { line: 2, .. }
        ));
        assert!(matches!(
            PatchMetadataTable::parse("a.B\n    f list-type=set\n    f list-type=set").unwrap_err(),
            TableError::DuplicateField { line: 3, .. }
        ));
        assert!(matches!(
            PatchMetadataTable::parse("a.B\na.B").unwrap_err(),
            TableError::DuplicateDefinition { line: 2, .. }
        ));
    }
}
