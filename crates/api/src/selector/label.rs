//! Label selectors: requirements on an object's `metadata.labels`, ANDed together.
//!
//! A selector comes either from the `?labelSelector=` string syntax ([`LabelSelector::parse`],
//! in `label_parse`) or from a `metav1.LabelSelector` in an object's spec
//! ([`LabelSelector::from_label_selector`]). Both build the same requirements with the same
//! validation as upstream's `labels.NewRequirement`, keep them sorted by key, and print them in
//! upstream's canonical string form, which clients compare and show.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;

use super::invalid::{BadValue, InvalidValue, InvalidValues, go_quote};
use super::syntax::{validate_label_key, validate_label_value};

/// Why a label selector could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector string has an unexpected token between requirements, e.g. `x=a b`.
    #[error("found '{found}'{expected}")]
    UnexpectedToken { found: String, expected: Expected },
    /// The selector string has an unexpected token inside one requirement, e.g. `x in a`.
    #[error("unable to parse requirement: found '{found}'{expected}")]
    RequirementUnexpectedToken { found: String, expected: Expected },
    /// A requirement in the selector string has an invalid key or values.
    #[error("unable to parse requirement: {errors}")]
    RequirementInvalid { errors: InvalidValues },
    /// A `matchExpressions` entry has an operator other than In, NotIn, Exists, DoesNotExist.
    #[error("{} is not a valid label selector operator", go_quote(.operator))]
    UnknownOperator { operator: String },
    /// A `matchLabels` or `matchExpressions` entry has an invalid key or values.
    #[error("{errors}")]
    Invalid { errors: InvalidValues },
}

/// What the parser expected where it found something else; displays as the tail of
/// upstream's message, punctuation included (one upstream message lacks its comma).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// At the start of the selector or of a requirement after `,`.
    RequirementStart,
    IdentifierAfterComma,
    CommaOrEnd,
    Identifier,
    Operator,
    OpenParen,
    ValueOrCloseParen,
    CommaOrCloseParen,
    CommaOrIdentifier,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::RequirementStart => ", expected: !, identifier, or 'end of string'",
            Expected::IdentifierAfterComma => ", expected: identifier after ','",
            Expected::CommaOrEnd => ", expected: ',' or 'end of string'",
            Expected::Identifier => ", expected: identifier",
            Expected::Operator => ", expected: in, notin, =, ==, !=, gt, lt",
            Expected::OpenParen => " expected: '('",
            Expected::ValueOrCloseParen => ", expected: ',', ')' or identifier",
            Expected::CommaOrCloseParen => ", expected: ',' or ')'",
            Expected::CommaOrIdentifier => ", expected: ',', or identifier",
        })
    }
}

/// How a requirement relates a label to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

impl Operator {
    /// Upstream's `selection.Operator` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

/// One condition on one label key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// Validates as upstream's `NewRequirement`: the key must be a label key; In and NotIn
    /// need at least one value, the equality operators and Gt/Lt exactly one (an integer for
    /// Gt/Lt), Exists and DoesNotExist none; every value must be a label value. All problems
    /// are reported together.
    pub fn new(key: impl Into<String>, operator: Operator, values: Vec<String>) -> Result<Self, InvalidValues> {
        let key = key.into();
        let mut errors = Vec::new();
        let key_errors = validate_label_key(&key);
        if !key_errors.is_empty() {
            errors.push(InvalidValue {
                field: "key".into(),
                value: BadValue::String(key.clone()),
                detail: key_errors.join("; "),
            });
        }
        let values_error = |detail: &str| InvalidValue {
            field: "values".into(),
            value: BadValue::List(values.clone()),
            detail: detail.into(),
        };
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                errors.push(values_error("for 'in', 'notin' operators, values set can't be empty"));
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals if values.len() != 1 => {
                errors.push(values_error("exact-match compatibility requires one single value"));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                errors.push(values_error("values set must be empty for exists and does not exist"));
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errors.push(values_error("for 'Gt', 'Lt' operators, exactly one value is required"));
                }
                for (i, value) in values.iter().enumerate() {
                    if value.parse::<i64>().is_err() {
                        errors.push(InvalidValue {
                            field: format!("values[{i}]"),
                            value: BadValue::String(value.clone()),
                            detail: "for 'Gt', 'Lt' operators, the value must be an integer".into(),
                        });
                    }
                }
            }
            _ => {}
        }
        for (i, value) in values.iter().enumerate() {
            let value_errors = validate_label_value(value);
            if !value_errors.is_empty() {
                errors.push(InvalidValue {
                    field: format!("values[{i}][{key}]"),
                    value: BadValue::String(value.clone()),
                    detail: value_errors.join("; "),
                });
            }
        }
        if errors.is_empty() { Ok(Requirement { key, operator, values }) } else { Err(InvalidValues(errors)) }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values in the order given (the parser gives them sorted and without duplicates).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    fn matches(&self, labels: &impl Labels) -> bool {
        let has_value = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => labels.lookup(&self.key).is_some_and(has_value),
            Operator::NotIn | Operator::NotEquals => !labels.lookup(&self.key).is_some_and(has_value),
            Operator::Exists => labels.lookup(&self.key).is_some(),
            Operator::DoesNotExist => labels.lookup(&self.key).is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                // A label that is not an integer never satisfies an inequality.
                let Some(actual) = labels.lookup(&self.key).and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let [bound] = self.values.as_slice() else {
                    return false;
                };
                let Ok(bound) = bound.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan { actual > bound } else { actual < bound }
            }
        }
    }
}

impl fmt::Display for Requirement {
    /// Upstream's canonical form: `!k`, `k`, `k=v`, `k==v`, `k!=v`, `k>1`, `k<1`,
    /// `k in (a,b)`, `k notin (a,b)`, with several values sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let (op, parens) = match self.operator {
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
            Operator::Equals => ("=", false),
            Operator::DoubleEquals => ("==", false),
            Operator::NotEquals => ("!=", false),
            Operator::GreaterThan => (">", false),
            Operator::LessThan => ("<", false),
            Operator::In => (" in ", true),
            Operator::NotIn => (" notin ", true),
        };
        f.write_str(op)?;
        if parens {
            f.write_str("(")?;
        }
        let mut values: Vec<&str> = self.values.iter().map(String::as_str).collect();
        values.sort_unstable();
        f.write_str(&values.join(","))?;
        if parens {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Requirements on labels, all of which must hold.
///
/// The default selector is empty and matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// Upstream's `labels.Nothing()`: what an absent (nil) `metav1.LabelSelector` selects.
    nothing: bool,
}

impl LabelSelector {
    /// The selector with no requirements, matching every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector matching no object, as upstream converts a missing selector field; it
    /// prints as the empty string and is not [`is_empty`](Self::is_empty).
    pub fn nothing() -> Self {
        LabelSelector { requirements: Vec::new(), nothing: true }
    }

    /// Parses the `?labelSelector=` syntax exactly as upstream's `labels.Parse` does; the
    /// empty string selects everything.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        super::label_parse::parse(selector).map(Self::from_requirements)
    }

    /// Converts an API object's selector as upstream's `LabelSelectorAsSelector`: an empty
    /// selector matches everything; `matchLabels` entries become `key=value`;
    /// `matchExpressions` accept the operators In, NotIn, Exists and DoesNotExist.
    pub fn from_label_selector(selector: &metav1::LabelSelector) -> Result<Self, SelectorError> {
        let labels = selector.match_labels.iter().flatten();
        let expressions = selector.match_expressions.iter().flatten();
        let mut requirements = Vec::new();
        for (key, value) in labels {
            let requirement = Requirement::new(key.clone(), Operator::Equals, vec![value.clone()])
                .map_err(|errors| SelectorError::Invalid { errors })?;
            requirements.push(requirement);
        }
        for expression in expressions {
            let operator = match expression.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::UnknownOperator { operator: other.into() });
                }
            };
            let values = expression.values.clone().unwrap_or_default();
            let requirement = Requirement::new(expression.key.clone(), operator, values)
                .map_err(|errors| SelectorError::Invalid { errors })?;
            requirements.push(requirement);
        }
        Ok(Self::from_requirements(requirements))
    }

    /// A selector of the given requirements, kept sorted by key (stably) as upstream does.
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector { requirements, nothing: false }
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector places no restriction (selects everything).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Matches an object's `metadata.labels` value. A missing or non-object value has no
    /// labels; a label whose value is not a string (invalid in the API) counts as absent.
    pub fn matches_json(&self, labels: Option<&Value>) -> bool {
        match labels.and_then(Value::as_object) {
            Some(map) => self.matches_labels(map),
            None => self.matches_labels(&NoLabels),
        }
    }

    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_labels(labels)
    }

    fn matches_labels(&self, labels: &impl Labels) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A set of labels to match against, whatever its representation.
trait Labels {
    fn lookup(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn lookup(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for serde_json::Map<String, Value> {
    fn lookup(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

struct NoLabels;

impl Labels for NoLabels {
    fn lookup(&self, _key: &str) -> Option<&str> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector).unwrap().matches_map(&labels(pairs))
    }

    fn expression(key: &str, operator: &str, values: Option<&[&str]>) -> metav1::LabelSelectorRequirement {
        metav1::LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn equality_requirements_match_like_upstream() {
        assert!(matches("", &[("x", "y")]));
        assert!(matches("x=y", &[("x", "y")]));
        assert!(matches("x==y", &[("x", "y")]));
        assert!(matches("x=y,z=w", &[("x", "y"), ("z", "w")]));
        assert!(matches("x!=y,z!=w", &[("x", "z"), ("z", "a")]));
        assert!(matches("notin=in", &[("notin", "in")]));
        assert!(!matches("x=z", &[]));
        assert!(!matches("x=y", &[("x", "z")]));
        assert!(!matches("x=y,z=w", &[("x", "w"), ("z", "w")]));
        assert!(!matches("x!=y,z!=w", &[("x", "z"), ("z", "w")]));
        assert!(matches("x!=y", &[]), "a missing label is not equal to anything");
        assert!(matches("x=", &[("x", "")]));
        assert!(!matches("x=", &[]));
    }

    #[test]
    fn set_requirements_match_like_upstream() {
        assert!(matches("x in (a,b)", &[("x", "b")]));
        assert!(!matches("x in (a,b)", &[("x", "c")]));
        assert!(!matches("x in (a,b)", &[]));
        assert!(matches("x notin (a,b)", &[("x", "c")]));
        assert!(matches("x notin (a,b)", &[]), "notin matches a missing label");
        assert!(!matches("x notin (a,b)", &[("x", "a")]));
        assert!(matches("x in ()", &[("x", "")]));
    }

    #[test]
    fn existence_requirements_match_like_upstream() {
        assert!(matches("x", &[("x", "z")]));
        assert!(matches("x", &[("x", "")]));
        assert!(!matches("x", &[("y", "z")]));
        assert!(matches("!x", &[("y", "z")]));
        assert!(!matches("!x", &[("x", "z")]));
    }

    #[test]
    fn inequalities_compare_integers_and_never_match_non_integers() {
        assert!(matches("x>1", &[("x", "2")]));
        assert!(!matches("x>1", &[("x", "1")]));
        assert!(matches("x<1", &[("x", "0")]));
        assert!(!matches("x<1", &[("x", "2")]));
        assert!(!matches("x>1", &[("x", "two")]));
        assert!(!matches("x>1", &[]));
        assert!(!matches("x<1", &[]));
        assert!(matches("x>9", &[("x", "10")]), "numeric, not lexical, comparison");
    }

    #[test]
    fn all_requirements_must_hold() {
        let set = [("foo", "bar"), ("baz", "blah")];
        assert!(matches("foo=bar,baz=blah", &set));
        assert!(!matches("foo=bar,foobar=bar,baz=blah", &set));
        assert!(!matches("foo=blah", &set));
    }

    #[test]
    fn json_labels_match_like_a_map() {
        let selector = LabelSelector::parse("app=web,tier in (fe,be),!canary").unwrap();
        assert!(selector.matches_json(Some(&json!({"app": "web", "tier": "fe"}))));
        assert!(!selector.matches_json(Some(&json!({"app": "web", "tier": "fe", "canary": "1"}))));
        assert!(!selector.matches_json(Some(&json!({"app": "web", "tier": 1}))));
        assert!(!selector.matches_json(None));
        assert!(LabelSelector::parse("!x").unwrap().matches_json(None));
        assert!(LabelSelector::everything().matches_json(None));
        assert!(LabelSelector::everything().matches_json(Some(&json!("not an object"))));
    }

    #[test]
    fn requirements_are_sorted_by_key_and_print_canonically() {
        let selector = LabelSelector::parse(" z = 1 , a in ( y , x , x ) ,!b, c notin (q), d>5,e<6").unwrap();
        assert_eq!(selector.to_string(), "a in (x,y),!b,c notin (q),d>5,e<6,z=1");
        assert_eq!(
            LabelSelector::parse("x=a,a=x").unwrap().to_string(),
            LabelSelector::parse("a=x,x=a").unwrap().to_string()
        );
    }

    #[test]
    fn empty_selector_is_everything() {
        let selector = LabelSelector::parse("").unwrap();
        assert!(selector.is_empty());
        assert_eq!(selector, LabelSelector::everything());
        assert_eq!(selector.to_string(), "");
        assert!(selector.matches_map(&labels(&[("x", "y")])));
        assert!("x".parse::<LabelSelector>().is_ok_and(|s| !s.is_empty()));
    }

    #[test]
    fn nothing_matches_no_labels_and_is_not_empty() {
        let nothing = LabelSelector::nothing();
        assert!(!nothing.is_empty());
        assert!(!nothing.matches_map(&BTreeMap::new()));
        assert!(!nothing.matches_json(None));
        assert_eq!(nothing.to_string(), "");
    }

    #[test]
    fn empty_api_selector_matches_everything() {
        let empty = metav1::LabelSelector::default();
        let selector = LabelSelector::from_label_selector(&empty).unwrap();
        assert!(selector.is_empty());
        let explicit_empty =
            metav1::LabelSelector { match_labels: Some(BTreeMap::new()), match_expressions: Some(vec![]) };
        assert!(LabelSelector::from_label_selector(&explicit_empty).unwrap().is_empty());
    }

    #[test]
    fn api_selector_converts_labels_and_expressions() {
        let api = metav1::LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                expression("tier", "In", Some(&["fe", "be"])),
                expression("env", "NotIn", Some(&["prod"])),
                expression("canary", "DoesNotExist", None),
                expression("owner", "Exists", Some(&[])),
            ]),
        };
        let selector = LabelSelector::from_label_selector(&api).unwrap();
        assert_eq!(selector.to_string(), "app=web,!canary,env notin (prod),owner,tier in (be,fe)");
        assert_eq!(selector.requirements()[4].values(), ["fe", "be"], "values keep their given order");
        assert!(selector.matches_map(&labels(&[("app", "web"), ("tier", "be"), ("owner", "me")])));
        assert!(!selector.matches_map(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn api_selector_rejects_unknown_operators() {
        let api = metav1::LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![expression("x", "Gt", Some(&["1"]))]),
        };
        let err = LabelSelector::from_label_selector(&api).unwrap_err();
        assert_eq!(err, SelectorError::UnknownOperator { operator: "Gt".into() });
        assert_eq!(err.to_string(), r#""Gt" is not a valid label selector operator"#);
    }

    #[test]
    fn api_selector_reports_invalid_values_as_upstream() {
        let in_without_values =
            metav1::LabelSelector { match_labels: None, match_expressions: Some(vec![expression("x", "In", None)]) };
        assert_eq!(
            LabelSelector::from_label_selector(&in_without_values).unwrap_err().to_string(),
            "values: Invalid value: null: for 'in', 'notin' operators, values set can't be empty"
        );
        let exists_with_values = metav1::LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![expression("x", "Exists", Some(&["a"]))]),
        };
        assert_eq!(
            LabelSelector::from_label_selector(&exists_with_values).unwrap_err().to_string(),
            r#"values: Invalid value: ["a"]: values set must be empty for exists and does not exist"#
        );
        let bad_label_value =
            metav1::LabelSelector { match_labels: Some(labels(&[("app", "a b")])), match_expressions: None };
        assert!(matches!(LabelSelector::from_label_selector(&bad_label_value), Err(SelectorError::Invalid { .. })));
        assert!(
            LabelSelector::from_label_selector(&bad_label_value)
                .unwrap_err()
                .to_string()
                .starts_with(r#"values[0][app]: Invalid value: "a b": a valid label must be"#)
        );
    }

    #[test]
    fn new_requirement_reports_every_problem_at_once() {
        let err = Requirement::new("-x", Operator::In, vec![]).unwrap_err();
        assert_eq!(err.0.len(), 2);
        let text = err.to_string();
        assert!(text.starts_with(r#"[key: Invalid value: "-x": name part must consist of"#), "{text}");
        assert!(
            text.ends_with(", values: Invalid value: null: for 'in', 'notin' operators, values set can't be empty]"),
            "{text}"
        );
    }

    #[test]
    fn new_requirement_checks_value_counts_per_operator() {
        let detail = |op, values: &[&str]| {
            Requirement::new("x", op, values.iter().map(|s| s.to_string()).collect()).unwrap_err().0[0].detail.clone()
        };
        assert_eq!(detail(Operator::Equals, &["a", "b"]), "exact-match compatibility requires one single value");
        assert_eq!(detail(Operator::NotEquals, &[]), "exact-match compatibility requires one single value");
        assert_eq!(detail(Operator::DoesNotExist, &["a"]), "values set must be empty for exists and does not exist");
        assert_eq!(detail(Operator::GreaterThan, &[]), "for 'Gt', 'Lt' operators, exactly one value is required");
        assert_eq!(detail(Operator::LessThan, &["a"]), "for 'Gt', 'Lt' operators, the value must be an integer");
        assert!(Requirement::new("x", Operator::GreaterThan, vec!["1".into()]).is_ok());
        assert!(Requirement::new("x", Operator::In, vec!["".into()]).is_ok());
    }

    #[test]
    fn new_requirement_rejects_overlong_keys_and_values() {
        let long_key = Requirement::new("a".repeat(254), Operator::Exists, vec![]).unwrap_err();
        assert_eq!(long_key.0[0].field, "key");
        let long_value = Requirement::new("x", Operator::Equals, vec!["a".repeat(64)]).unwrap_err();
        assert_eq!(
            long_value.to_string(),
            format!(r#"values[0][x]: Invalid value: "{}": must be no more than 63 bytes"#, "a".repeat(64))
        );
    }

    #[test]
    fn requirements_print_in_upstream_form() {
        let req = |op, values: &[&str]| {
            Requirement::new("k", op, values.iter().map(|s| s.to_string()).collect()).unwrap().to_string()
        };
        assert_eq!(req(Operator::Exists, &[]), "k");
        assert_eq!(req(Operator::DoesNotExist, &[]), "!k");
        assert_eq!(req(Operator::Equals, &["v"]), "k=v");
        assert_eq!(req(Operator::DoubleEquals, &["v"]), "k==v");
        assert_eq!(req(Operator::NotEquals, &[""]), "k!=");
        assert_eq!(req(Operator::GreaterThan, &["1"]), "k>1");
        assert_eq!(req(Operator::LessThan, &["1"]), "k<1");
        assert_eq!(req(Operator::In, &["b", "a"]), "k in (a,b)");
        assert_eq!(req(Operator::NotIn, &["a"]), "k notin (a)");
    }

    #[test]
    fn from_requirements_sorts_stably_by_key() {
        let a = Requirement::new("b", Operator::Equals, vec!["2".into()]).unwrap();
        let b = Requirement::new("a", Operator::Exists, vec![]).unwrap();
        let c = Requirement::new("b", Operator::Equals, vec!["1".into()]).unwrap();
        assert_eq!(LabelSelector::from_requirements(vec![a, b, c]).to_string(), "a,b=2,b=1");
    }

    #[test]
    fn operators_have_upstream_spellings() {
        assert_eq!(Operator::Exists.as_str(), "exists");
        assert_eq!(Operator::DoesNotExist.as_str(), "!");
        assert_eq!(Operator::GreaterThan.as_str(), "gt");
        assert_eq!(Operator::NotIn.as_str(), "notin");
    }
}
