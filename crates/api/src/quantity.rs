//! Resource quantities (`100m`, `1Gi`, `2e3`) as upstream's `resource.Quantity` parses them.
//!
//! The API needs their numeric value to compare requests with limits and for the scheduler's
//! arithmetic; canonical re-serialisation is not done here.

/// The value of a quantity string, or `None` if it is not one upstream would accept.
pub fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let num_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0)))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(num_end);
    if number.is_empty() || number == "+" || number == "-" || number.matches('.').count() > 1 {
        return None;
    }
    let base: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(base * factor)
}

/// A quantity held exactly, in billionths of its unit, for sums and comparisons that must not
/// drift (quota usage, limit ranges); prints in canonical form as upstream's `Quantity.String()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Exact {
    nanos: i128,
    /// Upstream keeps the format of the first operand of a sum: binary (`Mi`) or decimal.
    binary: bool,
}

const NANOS: i128 = 1_000_000_000;

impl Exact {
    pub const ZERO: Exact = Exact { nanos: 0, binary: false };

    /// The quantity a string stands for; amounts below a nano round up to one, as upstream.
    pub fn parse(s: &str) -> Option<Exact> {
        parse(s)?;
        let s = s.trim();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, suffix) = s.split_at(end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        let digits: i128 = format!("{int}{frac}").trim_start_matches('0').parse().unwrap_or(0);
        let frac_len = i32::try_from(frac.len()).ok()?;
        let (binary, shift, exp10) = match suffix {
            "Ki" => (true, 10, 0),
            "Mi" => (true, 20, 0),
            "Gi" => (true, 30, 0),
            "Ti" => (true, 40, 0),
            "Pi" => (true, 50, 0),
            "Ei" => (true, 60, 0),
            "n" => (false, 0, -9),
            "u" => (false, 0, -6),
            "m" => (false, 0, -3),
            "" => (false, 0, 0),
            "k" => (false, 0, 3),
            "M" => (false, 0, 6),
            "G" => (false, 0, 9),
            "T" => (false, 0, 12),
            "P" => (false, 0, 15),
            "E" => (false, 0, 18),
            e => (false, 0, e[1..].parse::<i32>().ok()?),
        };
        let mut value = digits.checked_mul(1i128 << shift)?;
        let scale = exp10 + 9 - frac_len;
        if scale >= 0 {
            value = value.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?;
        } else {
            let d = 10i128.checked_pow(u32::try_from(-scale).ok()?).unwrap_or(i128::MAX);
            value = value / d + i128::from(value % d != 0);
        }
        Some(Exact { nanos: if negative { -value } else { value }, binary })
    }

    /// A whole number of units, printed in decimal.
    pub fn from_int(n: i64) -> Exact {
        Exact { nanos: i128::from(n) * NANOS, binary: false }
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The value in thousandths, rounded up (upstream's `MilliValue`).
    pub fn milli_value(&self) -> i128 {
        let d = NANOS / 1000;
        self.nanos.div_euclid(d) + i128::from(self.nanos.rem_euclid(d) != 0)
    }

    /// Rounded up to a whole unit, format kept (upstream's `RoundUp(0)`).
    pub fn ceil(self) -> Exact {
        Exact { nanos: self.value().saturating_mul(NANOS), binary: self.binary }
    }

    /// The value rounded up to a whole unit (upstream's `Value`).
    pub fn value(&self) -> i128 {
        self.nanos.div_euclid(NANOS) + i128::from(self.nanos.rem_euclid(NANOS) != 0)
    }
}

impl std::ops::Add for Exact {
    type Output = Exact;

    /// The sum, in the format of `self` (upstream's `Quantity.Add`).
    fn add(self, other: Exact) -> Exact {
        Exact {
            nanos: self.nanos.saturating_add(other.nanos),
            binary: if self.nanos == 0 { other.binary } else { self.binary },
        }
    }
}

impl std::ops::Sub for Exact {
    type Output = Exact;

    fn sub(self, other: Exact) -> Exact {
        Exact { nanos: self.nanos.saturating_sub(other.nanos), binary: self.binary }
    }
}

impl PartialOrd for Exact {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Exact {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl std::fmt::Display for Exact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = self.nanos % NANOS == 0;
        if self.binary && whole && self.nanos.abs() >= 1024 * NANOS {
            let mut value = self.nanos / NANOS;
            let mut times = 0;
            while value % 1024 == 0 && times < 6 {
                value /= 1024;
                times += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][times];
            return write!(f, "{value}{suffix}");
        }
        let text = format!("{}n", self.nanos);
        match crate::table::canonical_quantity(&text) {
            Some(c) => f.write_str(&c),
            None => f.write_str(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_decimal_binary_and_exponent_suffixes() {
        assert_eq!(parse("100m"), Some(0.1));
        assert_eq!(parse("1Gi"), Some(1073741824.0));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("1.5"), Some(1.5));
        assert_eq!(parse("1Gb"), None);
        assert_eq!(parse("abc"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn exact_quantities_sum_and_print_as_upstream() {
        use super::Exact;
        let q = |s: &str| Exact::parse(s).unwrap();
        assert_eq!((q("100m") + q("200m")).to_string(), "300m");
        assert_eq!((q("500m") + q("500m")).to_string(), "1");
        assert_eq!((q("64Mi") + q("64Mi")).to_string(), "128Mi");
        assert_eq!(q("1Gi").to_string(), "1Gi");
        assert_eq!(q("1.5").to_string(), "1500m");
        assert_eq!(Exact::ZERO.to_string(), "0");
        assert_eq!(Exact::from_int(2).to_string(), "2");
        assert!(q("1") > q("500m"));
        assert_eq!((q("1") - q("250m")).to_string(), "750m");
        assert_eq!((q("1Gi") + q("1")).to_string(), "1073741825");
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("2e3").value(), 2000);
    }
}
