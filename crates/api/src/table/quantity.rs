//! Quantities as upstream prints them: `resource.Quantity.String()` after `ParseQuantity`.
//!
//! Upstream stores parsed quantities, so tables show their canonical form (`1024Mi` prints as
//! `1Gi`, `1.5` as `1500m`, `1000` as `1k`) whatever the client sent. Objects here are JSON as
//! written, so the printers canonicalize the strings themselves.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

/// A quantity string split as upstream's `parseQuantityString` does.
struct Parts<'a> {
    negative: bool,
    /// The integer digits without leading zeros (`"0"` when there are none).
    num: &'a str,
    denom: &'a str,
    suffix: &'a str,
}

fn split(s: &str) -> Option<Parts<'_>> {
    let b = s.as_bytes();
    let end = b.len();
    let mut pos = 0;
    let mut negative = false;
    match b.first() {
        Some(b'-') => {
            negative = true;
            pos += 1;
        }
        Some(b'+') => pos += 1,
        _ => {}
    }
    while pos < end && b[pos] == b'0' {
        pos += 1;
    }
    let done = |num, denom, suffix| Some(Parts { negative, num, denom, suffix });
    if pos >= end {
        return done("0", "", "");
    }
    let start = pos;
    while pos < end && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let num = if pos == start { "0" } else { &s[start..pos] };
    if pos >= end {
        return done(num, "", "");
    }
    let mut denom = "";
    if b[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < end && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[start..pos];
        if pos >= end {
            return done(num, denom, "");
        }
    }
    let suffix_start = pos;
    while pos < end && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < end && (b[pos] == b'-' || b[pos] == b'+') {
        pos += 1;
    }
    while pos < end && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < end {
        return None;
    }
    done(num, denom, &s[suffix_start..])
}

/// The base, exponent and format a suffix stands for (upstream's `quantitySuffixer`).
fn interpret(suffix: &str) -> Option<(u32, i32, Format)> {
    let decimal = |e| Some((10, e, Format::DecimalSi));
    let binary = |e| Some((2, e, Format::BinarySi));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        s if s.len() > 1 && s.starts_with(['e', 'E']) => {
            let exponent: i32 = s[1..].parse().ok()?;
            Some((10, exponent, Format::DecimalExponent))
        }
        _ => None,
    }
}

fn pow10(k: u32) -> Option<i128> {
    10i128.checked_pow(k)
}

/// The canonical form of a quantity string, or `None` if upstream would not parse it.
///
/// Strings already in canonical form print as given, as upstream keeps the original text
/// when its fast parser sees no need to normalise it.
pub fn canonical_quantity(quantity: &str) -> Option<String> {
    if quantity.is_empty() {
        return None;
    }
    if quantity == "0" {
        return Some("0".into());
    }
    let parts = split(quantity)?;
    let (base, exponent, mut format) = interpret(parts.suffix)?;
    let digits = format!("{}{}", parts.num, parts.denom);
    let denom_len = i32::try_from(parts.denom.len()).ok()?;
    let num_len = i32::try_from(parts.num.len()).ok()?;

    // Upstream's fast path keeps the caller's string when it looks canonical.
    match format {
        Format::DecimalSi | Format::DecimalExponent => {
            let scale = exponent - denom_len;
            let precision = 18 - (num_len + denom_len);
            if precision >= 0 && scale >= -9 && scale % 3 == 0 && !digits.ends_with("000") && !digits.starts_with('0') {
                return Some(quantity.into());
            }
        }
        Format::BinarySi => {
            // Upstream's estimate of the decimal digits left for the fast path.
            let precision = 15 - num_len - exponent * 3 / 10 - 1;
            if parts.denom.is_empty() && precision >= 0 {
                let value: i64 = parts.num.parse().ok()?;
                let fits = value.checked_mul(1i64 << exponent).is_some();
                if fits && exponent % 10 == 0 && value & 0x07 != 0 {
                    return Some(quantity.into());
                }
            }
        }
    }

    // The exact value, magnitude * 10^scale.
    let mut magnitude: i128 = digits.parse().ok()?;
    let mut scale = if base == 10 {
        exponent - denom_len
    } else {
        magnitude = magnitude.checked_mul(1i128 << exponent)?;
        -denom_len
    };
    // Non-zero amounts below a nano round up to one nano: asking for some gets some.
    if magnitude != 0 && scale < -9 {
        let divisor = pow10(u32::try_from(-9 - scale).ok()?);
        magnitude = match divisor {
            Some(d) => magnitude.div_euclid(d) + i128::from(magnitude % d != 0),
            None => 1,
        };
        scale = -9;
    }
    // 10^-scale for fractional amounts: the magnitude of one whole unit.
    let unit_of = |scale: i32| pow10(u32::try_from(-scale.min(0)).ok()?);
    if format == Format::BinarySi {
        // Binary quantities are capped at the largest int64, and fractions print in decimal.
        let max = i128::from(i64::MAX).checked_mul(unit_of(scale)?);
        if max.is_some_and(|max| magnitude > max) {
            magnitude = i128::from(i64::MAX);
            scale = 0;
        }
        if magnitude > 0 && magnitude < unit_of(scale)? {
            format = Format::DecimalSi;
        }
    }
    let unit = unit_of(scale)?;
    if magnitude == 0 {
        return Some("0".into());
    }
    let sign = if parts.negative { "-" } else { "" };

    if format == Format::BinarySi {
        let below_1024 = magnitude < 1024 * unit;
        let integral = scale >= 0 || magnitude % unit == 0;
        if !below_1024 && integral {
            let mut value =
                if scale >= 0 { magnitude.checked_mul(pow10(u32::try_from(scale).ok()?)?)? } else { magnitude / unit };
            let mut times = 0;
            while value >= 1024 && value % 1024 == 0 {
                value /= 1024;
                times += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].get(times).copied().unwrap_or("");
            return Some(format!("{sign}{value}{suffix}"));
        }
        format = Format::DecimalSi;
    }

    let mut exponent = scale;
    while magnitude >= 10 && magnitude % 10 == 0 {
        magnitude /= 10;
        exponent += 1;
    }
    while exponent % 3 != 0 {
        magnitude = magnitude.checked_mul(10)?;
        exponent -= 1;
    }
    let suffix = match (format, exponent) {
        (Format::DecimalExponent, 0) => String::new(),
        (Format::DecimalExponent, e) => format!("e{e}"),
        // Upstream has no decimal suffix beyond these and then prints none.
        (_, e) => match e {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => "",
        }
        .to_string(),
    };
    Some(format!("{sign}{magnitude}{suffix}"))
}

/// A quantity field as upstream's `Quantity.String()`: the zero quantity `0` when absent, the
/// raw text when it is not a quantity.
pub(super) fn quantity_cell(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => canonical_quantity(s).unwrap_or_else(|| s.clone()),
        Some(Value::Number(n)) => {
            let s = n.to_string();
            canonical_quantity(&s).unwrap_or(s)
        }
        _ => "0".into(),
    }
}

/// A `*resource.Quantity` as upstream prints it: `<nil>` when absent.
pub(super) fn quantity_ptr_cell(value: Option<&Value>) -> String {
    match value {
        Some(v) if !v.is_null() => quantity_cell(Some(v)),
        _ => "<nil>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_quantity;

    fn canon(s: &str) -> String {
        canonical_quantity(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn binary_quantities_fold_into_the_largest_exact_suffix() {
        assert_eq!(canon("1Gi"), "1Gi");
        assert_eq!(canon("1024Mi"), "1Gi");
        assert_eq!(canon("1.5Gi"), "1536Mi");
        assert_eq!(canon("0.5Gi"), "512Mi");
        assert_eq!(canon("512Ki"), "512Ki");
        assert_eq!(canon("2048Ki"), "2Mi");
        assert_eq!(canon("1.5Ki"), "1536");
        assert_eq!(canon("-1Gi"), "-1Gi");
    }

    #[test]
    fn decimal_quantities_use_exponents_that_are_multiples_of_three() {
        assert_eq!(canon("500m"), "500m");
        assert_eq!(canon("1000m"), "1");
        assert_eq!(canon("1.5"), "1500m");
        assert_eq!(canon("1000"), "1k");
        assert_eq!(canon("2e3"), "2e3");
        assert_eq!(canon("12000e3"), "12e6");
        assert_eq!(canon("100Mi"), "100Mi");
        assert_eq!(canon("10G"), "10G");
        assert_eq!(canon("0.1n"), "1n");
    }

    #[test]
    fn zero_and_canonical_looking_strings_keep_upstream_quirks() {
        assert_eq!(canon("0"), "0");
        assert_eq!(canon("0Gi"), "0");
        assert_eq!(canon("0.0"), "0");
        // Upstream's fast path returns these strings as written.
        assert_eq!(canon("1.500"), "1.500");
        assert_eq!(canon("+5"), "+5");
    }

    #[test]
    fn rejects_what_upstream_cannot_parse() {
        assert_eq!(canonical_quantity(""), None);
        assert_eq!(canonical_quantity("1Gb"), None);
        assert_eq!(canonical_quantity("abc"), None);
        assert_eq!(canonical_quantity("1K"), None);
    }
}
