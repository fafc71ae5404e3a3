//! Field selectors: `?fieldSelector=` equality conditions on an object's fields.
//!
//! The syntax is upstream's `fields.ParseSelector`: comma-separated terms `field=value`,
//! `field==value` or `field!=value`. The field is taken verbatim up to the first operator (no
//! escaping, no trimming of blanks); in the value, `\,` `\=` and `\\` stand for `,` `=` and `\`,
//! any other backslash sequence is an error, and an unescaped `=` or `,` is an error. Terms are
//! sorted before parsing and matching, as upstream does, which fixes both the canonical form
//! and which error is reported first.
//!
//! Which fields a kind supports (`metadata.name`, `spec.nodeName`, ...) is the API server's
//! business: it reads [`FieldSelector::requirements`] and rejects others with upstream's
//! `field label not supported: <field>`.

use std::fmt;
use std::str::FromStr;

/// Why a field selector string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldSelectorError {
    /// A term has no `=`, `==` or `!=`.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    NoOperator { selector: String, term: String },
    /// A backslash in a value is followed by something other than `\`, `,` or `=`, or ends it.
    #[error("invalid field selector: invalid escape sequence: {sequence}")]
    InvalidEscapeSequence { sequence: String },
    /// A value contains an unescaped `=` or `,`; upstream prints the character's code point.
    #[error("invalid field selector: unescaped character in value: {}", u32::from(*.character))]
    UnescapedCharacter { character: char },
}

/// How a field is compared; `==` parses as [`FieldOperator::Equals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    Equals,
    NotEquals,
}

impl FieldOperator {
    /// Upstream's `selection.Operator` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldOperator::Equals => "=",
            FieldOperator::NotEquals => "!=",
        }
    }
}

/// One term of a field selector, with its value unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub operator: FieldOperator,
    pub value: String,
}

impl FieldRequirement {
    fn matches(&self, actual: &str) -> bool {
        match self.operator {
            FieldOperator::Equals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

/// Equality conditions on fields, all of which must hold. The default selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// The selector with no terms, matching every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the `?fieldSelector=` syntax as upstream's `fields.ParseSelector` does. Empty
    /// terms are ignored, and so are terms whose field and value are both empty (`=`, `!=`).
    pub fn parse(selector: &str) -> Result<Self, FieldSelectorError> {
        let mut terms = split_terms(selector);
        terms.sort_unstable();
        let mut requirements = Vec::new();
        for term in terms.into_iter().filter(|t| !t.is_empty()) {
            let Some((field, operator, raw_value)) = split_term(term) else {
                return Err(FieldSelectorError::NoOperator { selector: selector.into(), term: term.into() });
            };
            let value = unescape_value(raw_value)?;
            if field.is_empty() && value.is_empty() {
                continue;
            }
            requirements.push(FieldRequirement { field: field.into(), operator, value });
        }
        Ok(FieldSelector { requirements })
    }

    /// The terms, sorted as upstream sorts them, for the server to check the fields a kind
    /// supports and to translate field names.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value `field` must equal if the selector requires one (e.g. `metadata.name=x`),
    /// which lets the server narrow a list to one key.
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }

    /// Whether an object matches, given its field values; a field `get` does not know
    /// compares as the empty string, as upstream's `fields.Set` does.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| r.matches(&get(&r.field).unwrap_or_default()))
    }
}

impl fmt::Display for FieldSelector {
    /// The canonical form, values escaped: `metadata.name=a\,b,spec.nodeName!=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}{}{}", r.field, r.operator.as_str(), escape_value(&r.value))?;
        }
        Ok(())
    }
}

impl FromStr for FieldSelector {
    type Err = FieldSelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Escapes `\`, `,` and `=` so that any string can be used as a field selector value.
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits on commas that are not escaped; escapes stay in the terms.
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in selector.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits a term at the first operator; at one position `!=` wins over `==`, `==` over `=`.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    const OPERATORS: [(&str, FieldOperator); 3] =
        [("!=", FieldOperator::NotEquals), ("==", FieldOperator::Equals), ("=", FieldOperator::Equals)];
    term.char_indices().find_map(|(i, _)| {
        let rest = &term[i..];
        OPERATORS
            .iter()
            .find(|(op, _)| rest.starts_with(op))
            .map(|(op, operator)| (&term[..i], *operator, &rest[op.len()..]))
    })
}

fn unescape_value(raw: &str) -> Result<String, FieldSelectorError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('\\' | ',' | '=')) => out.push(escaped),
                Some(other) => {
                    return Err(FieldSelectorError::InvalidEscapeSequence { sequence: format!("\\{other}") });
                }
                None => {
                    return Err(FieldSelectorError::InvalidEscapeSequence { sequence: "\\".into() });
                }
            },
            ',' | '=' => return Err(FieldSelectorError::UnescapedCharacter { character: c }),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fields(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |field| map.get(field).cloned()
    }

    fn requirement(field: &str, operator: FieldOperator, value: &str) -> FieldRequirement {
        FieldRequirement { field: field.into(), operator, value: value.into() }
    }

    #[test]
    fn terms_parse_into_sorted_requirements() {
        let selector = FieldSelector::parse("status.phase!=Running,metadata.name==web,spec.nodeName=n1").unwrap();
        assert_eq!(
            selector.requirements(),
            [
                requirement("metadata.name", FieldOperator::Equals, "web"),
                requirement("spec.nodeName", FieldOperator::Equals, "n1"),
                requirement("status.phase", FieldOperator::NotEquals, "Running"),
            ]
        );
        assert_eq!(selector.to_string(), "metadata.name=web,spec.nodeName=n1,status.phase!=Running");
    }

    #[test]
    fn empty_selector_and_empty_terms_select_everything() {
        for input in ["", ",", ",,", "=", "!=", "==", "=,!="] {
            let selector = FieldSelector::parse(input).unwrap();
            assert!(selector.is_empty(), "{input:?}");
            assert!(selector.matches(fields(&[])));
        }
        assert_eq!(FieldSelector::parse("a=b,,").unwrap().requirements().len(), 1);
        assert_eq!(FieldSelector::everything().to_string(), "");
    }

    #[test]
    fn empty_values_and_fields_are_kept_when_the_other_is_set() {
        assert_eq!(
            FieldSelector::parse("spec.nodeName=").unwrap().requirements(),
            [requirement("spec.nodeName", FieldOperator::Equals, "")]
        );
        assert_eq!(FieldSelector::parse("=x").unwrap().requirements(), [requirement("", FieldOperator::Equals, "x")]);
    }

    #[test]
    fn blanks_are_part_of_fields_and_values() {
        assert_eq!(
            FieldSelector::parse("a = b").unwrap().requirements(),
            [requirement("a ", FieldOperator::Equals, " b")]
        );
    }

    #[test]
    fn the_first_operator_splits_the_term() {
        assert_eq!(
            FieldSelector::parse("a!b=c").unwrap().requirements(),
            [requirement("a!b", FieldOperator::Equals, "c")]
        );
        assert_eq!(
            FieldSelector::parse("a==!b").unwrap().requirements(),
            [requirement("a", FieldOperator::Equals, "!b")]
        );
        // `!=` is found first, leaving an unescaped `=` in the value.
        assert_eq!(
            FieldSelector::parse("a!==b").unwrap_err(),
            FieldSelectorError::UnescapedCharacter { character: '=' }
        );
    }

    #[test]
    fn escaped_values_are_unescaped_and_reescaped() {
        let selector = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert_eq!(selector.requirements(), [requirement("metadata.name", FieldOperator::Equals, r"a,b=c\d")]);
        assert_eq!(selector.to_string(), r"metadata.name=a\,b\=c\\d");
        assert_eq!(escape_value(r"x,y=z\"), r"x\,y\=z\\");
    }

    #[test]
    fn bad_escapes_and_unescaped_characters_are_errors() {
        assert_eq!(
            FieldSelector::parse(r"a=b\!").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \!"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            FieldSelector::parse("a==b=c").unwrap_err().to_string(),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            FieldSelector::parse("a===b").unwrap_err(),
            FieldSelectorError::UnescapedCharacter { character: '=' }
        );
    }

    #[test]
    fn a_term_without_operator_is_an_error_naming_the_selector() {
        assert_eq!(
            FieldSelector::parse("a=b,c").unwrap_err().to_string(),
            "invalid selector: 'a=b,c'; can't understand 'c'"
        );
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err().to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
    }

    #[test]
    fn errors_follow_the_sorted_term_order() {
        assert_eq!(
            FieldSelector::parse(r"z,a=\x").unwrap_err(),
            FieldSelectorError::InvalidEscapeSequence { sequence: r"\x".into() }
        );
    }

    #[test]
    fn missing_fields_compare_as_empty() {
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(fields(&[])));
        assert!(!FieldSelector::parse("spec.nodeName!=").unwrap().matches(fields(&[])));
        assert!(FieldSelector::parse("spec.nodeName!=").unwrap().matches(fields(&[("spec.nodeName", "n1")])));
        assert!(!FieldSelector::parse("metadata.name=x").unwrap().matches(fields(&[])));
    }

    #[test]
    fn all_terms_must_match() {
        let selector = FieldSelector::parse("metadata.name=web,metadata.namespace!=kube-system").unwrap();
        assert!(selector.matches(fields(&[("metadata.name", "web"), ("metadata.namespace", "default")])));
        assert!(!selector.matches(fields(&[("metadata.name", "web"), ("metadata.namespace", "kube-system")])));
        assert!(!selector.matches(fields(&[("metadata.name", "db"), ("metadata.namespace", "default")])));
    }

    #[test]
    fn exact_match_is_reported_only_for_equality() {
        let selector = FieldSelector::parse("metadata.name==web,spec.nodeName!=n1").unwrap();
        assert_eq!(selector.requires_exact_match("metadata.name"), Some("web"));
        assert_eq!(selector.requires_exact_match("spec.nodeName"), None);
        assert_eq!(selector.requires_exact_match("metadata.namespace"), None);
    }

    #[test]
    fn operators_have_upstream_spellings() {
        assert_eq!(FieldOperator::Equals.as_str(), "=");
        assert_eq!(FieldOperator::NotEquals.as_str(), "!=");
        assert!("a=b".parse::<FieldSelector>().is_ok());
    }
}
