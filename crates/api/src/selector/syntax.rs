//! The syntax of label keys and values, with upstream's error wording.
//!
//! Kubernetes v1.36 validates label keys and values with `k8s.io/apimachinery/pkg/api/validate/
//! content` (`IsLabelKey`, `IsLabelValue`, `IsDNS1123Subdomain`); `IsQualifiedName` is the same
//! check as `IsLabelKey`. Each function here returns the list of messages upstream returns, in
//! upstream's order and wording, because kubectl users read them verbatim: an empty list means
//! the input is valid. Since 1.35 upstream's length messages say "bytes", not "characters".
//! The regular expressions quoted in the messages are upstream's; the checks themselves are
//! written out by hand so that this crate needs no regex engine.

/// Maximum length of a label value and of the name part of a label key.
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;

/// Maximum length of a DNS (RFC 1123) subdomain, and so of a label key's prefix.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;

const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_ERR_MSG: &str =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_KEY_EXAMPLES: &[&str] = &["MyName", "my.name", "123-abc"];

const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_EXAMPLES: &[&str] = &["MyValue", "my_value", "12345"];

const DNS1123_SUBDOMAIN_FMT: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";

/// Checks a label key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// bytes of `[A-Za-z0-9._-]` that starts and ends with an alphanumeric character.
pub fn validate_label_key(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push(format!("prefix part {}", empty_error()));
            } else {
                errs.extend(validate_dns1123_subdomain(prefix).into_iter().map(|m| format!("prefix part {m}")));
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(LABEL_KEY_ERR_MSG, LABEL_KEY_FMT, LABEL_KEY_EXAMPLES)
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push(format!("name part {}", empty_error()));
    } else if name.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(format!("name part {}", max_len_error(LABEL_VALUE_MAX_LENGTH)));
    }
    if !is_label_name(name) {
        errs.push(format!("name part {}", regex_error(LABEL_KEY_ERR_MSG, LABEL_KEY_FMT, LABEL_KEY_EXAMPLES)));
    }
    errs
}

/// Checks what Kubernetes calls a "qualified name" (annotation keys, finalizers, condition
/// types, ...). Upstream defines it as exactly the label key syntax, messages included.
pub fn validate_qualified_name(name: &str) -> Vec<String> {
    validate_label_key(name)
}

/// Checks a label value: empty, or at most 63 bytes of `[A-Za-z0-9._-]` starting and ending
/// with an alphanumeric character.
pub fn validate_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !value.is_empty() && !is_label_name(value) {
        errs.push(regex_error(LABEL_VALUE_ERR_MSG, LABEL_VALUE_FMT, LABEL_VALUE_EXAMPLES));
    }
    errs
}

/// Checks a lowercase DNS (RFC 1123) subdomain such as `example.com`, at most 253 bytes.
pub fn validate_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !value.split('.').all(is_dns1123_label) {
        errs.push(regex_error(DNS1123_SUBDOMAIN_ERR_MSG, DNS1123_SUBDOMAIN_FMT, &["example.com"]));
    }
    errs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, anchored.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, anchored.
fn is_dns1123_label(s: &str) -> bool {
    let lower_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            lower_alnum(first) && lower_alnum(last) && bytes.iter().all(|b| lower_alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

fn empty_error() -> &'static str {
    "must be non-empty"
}

fn max_len_error(length: usize) -> String {
    format!("must be no more than {length} bytes")
}

/// Upstream's `RegexError`, including its doubled space before each " or ".
fn regex_error(msg: &str, re: &str, examples: &[&str]) -> String {
    let mut out = String::from(msg);
    if examples.is_empty() {
        out.push_str(&format!(" (regex used for validation is '{re}')"));
        return out;
    }
    out.push_str(" (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{re}')"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME_PART_REGEX: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    const VALUE_REGEX: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
    const PREFIX_REGEX: &str = r"prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

    #[test]
    fn label_keys_with_and_without_prefix_are_valid() {
        for key in [
            "a",
            "A",
            "1",
            "app",
            "my.name",
            "my_name-1",
            "MyName",
            "example.com/name",
            "app.kubernetes.io/managed-by",
            "a/b",
            &"a".repeat(63),
            &format!("{}/{}", "a".repeat(253), "b".repeat(63)),
        ] {
            assert_eq!(validate_label_key(key), Vec::<String>::new(), "key {key:?}");
        }
    }

    #[test]
    fn empty_label_key_reports_empty_and_pattern() {
        assert_eq!(
            validate_label_key(""),
            vec!["name part must be non-empty".to_string(), NAME_PART_REGEX.to_string()]
        );
    }

    #[test]
    fn label_key_name_longer_than_63_bytes_is_rejected() {
        assert_eq!(validate_label_key(&"a".repeat(64)), vec!["name part must be no more than 63 bytes".to_string()]);
    }

    #[test]
    fn label_key_name_must_start_and_end_alphanumeric() {
        for key in ["-a", "a-", ".a", "a_", "a b", "a$b", "é"] {
            assert_eq!(validate_label_key(key), vec![NAME_PART_REGEX.to_string()], "key {key:?}");
        }
    }

    #[test]
    fn label_key_prefix_must_be_lowercase_subdomain() {
        assert_eq!(validate_label_key("Example.com/a"), vec![PREFIX_REGEX.to_string()]);
        assert_eq!(validate_label_key("a..b/a"), vec![PREFIX_REGEX.to_string()]);
        assert_eq!(validate_label_key("/a"), vec!["prefix part must be non-empty".to_string()]);
        assert_eq!(
            validate_label_key(&format!("{}/a", "a".repeat(254))),
            vec!["prefix part must be no more than 253 bytes".to_string()]
        );
    }

    #[test]
    fn label_key_prefix_and_name_errors_are_both_reported() {
        assert_eq!(
            validate_label_key("/"),
            vec![
                "prefix part must be non-empty".to_string(),
                "name part must be non-empty".to_string(),
                NAME_PART_REGEX.to_string()
            ]
        );
    }

    #[test]
    fn label_key_with_two_slashes_gets_the_whole_key_message() {
        assert_eq!(
            validate_label_key("a/b/c"),
            vec!["a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".to_string()]
        );
    }

    #[test]
    fn qualified_name_is_the_label_key_syntax() {
        assert!(validate_qualified_name("kubernetes.io/pvc-protection").is_empty());
        assert_eq!(validate_qualified_name("-x"), validate_label_key("-x"));
    }

    #[test]
    fn label_values_may_be_empty_or_label_names() {
        for value in ["", "a", "1.0", "my_value", "MyValue", &"v".repeat(63)] {
            assert!(validate_label_value(value).is_empty(), "value {value:?}");
        }
    }

    #[test]
    fn invalid_label_values_report_upstream_messages() {
        assert_eq!(validate_label_value("-a"), vec![VALUE_REGEX.to_string()]);
        assert_eq!(validate_label_value("a/b"), vec![VALUE_REGEX.to_string()]);
        assert_eq!(validate_label_value(&"v".repeat(64)), vec!["must be no more than 63 bytes".to_string()]);
        assert_eq!(
            validate_label_value(&format!("{}-", "v".repeat(64))),
            vec!["must be no more than 63 bytes".to_string(), VALUE_REGEX.to_string()]
        );
    }

    #[test]
    fn dns_subdomains_are_lowercase_dot_separated_labels() {
        for ok in ["a", "example.com", "a-b.c-d", "0.1"] {
            assert!(validate_dns1123_subdomain(ok).is_empty(), "{ok:?}");
        }
        for bad in ["", ".", "a.", ".a", "A", "a_b", "-a", "a-"] {
            assert_eq!(validate_dns1123_subdomain(bad).len(), 1, "{bad:?}");
        }
    }
}
