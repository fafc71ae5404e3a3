//! Upstream's `duration.HumanDuration`: the ages and durations of every table.

use jiff::SignedDuration;

/// A duration with two or three significant figures, as upstream prints ages: `45s`, `119s`,
/// `3m10s`, `70m`, `3h1m`, `47h`, `2d1h`, `8d`, `2y1d`, `8y`.
///
/// Up to two seconds in the future still prints `0s`, tolerating clock skew between machines;
/// further in the future is `<invalid>`.
pub fn human_duration(d: SignedDuration) -> String {
    // Whole units truncate towards zero, as Go's integer conversions and divisions do.
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        let years = hours / 24 / 365;
        return if days == 0 { format!("{years}y") } else { format!("{years}y{days}d") };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::human_duration;
    use jiff::SignedDuration;

    const SECOND: i64 = 1;
    const MINUTE: i64 = 60;
    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;
    const YEAR: i64 = 365 * DAY;

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    /// `s` seconds minus one millisecond.
    fn just_under(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s) - SignedDuration::from_millis(1)
    }

    #[test]
    fn formats_upstream_examples() {
        let cases = [
            (secs(SECOND), "1s"),
            (secs(70 * SECOND), "70s"),
            (secs(190 * SECOND), "3m10s"),
            (secs(70 * MINUTE), "70m"),
            (secs(47 * HOUR), "47h"),
            (secs(49 * HOUR), "2d1h"),
            (secs((8 * 24 + 2) * HOUR), "8d"),
            (secs(367 * DAY), "367d"),
            (secs(2 * YEAR + 25 * HOUR), "2y1d"),
            (secs(8 * YEAR + 2 * HOUR), "8y"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn switches_precision_exactly_at_upstream_boundaries() {
        let cases = [
            (secs(-2), "<invalid>"),
            (secs(-2) + SignedDuration::from_nanos(1), "0s"),
            (secs(0), "0s"),
            (just_under(1), "0s"),
            (just_under(2 * MINUTE), "119s"),
            (secs(2 * MINUTE), "2m"),
            (secs(2 * MINUTE + 1), "2m1s"),
            (just_under(10 * MINUTE), "9m59s"),
            (secs(10 * MINUTE), "10m"),
            (secs(10 * MINUTE + 1), "10m"),
            (just_under(3 * HOUR), "179m"),
            (secs(3 * HOUR), "3h"),
            (secs(3 * HOUR + MINUTE), "3h1m"),
            (just_under(8 * HOUR), "7h59m"),
            (secs(8 * HOUR), "8h"),
            (secs(8 * HOUR + 59 * MINUTE), "8h"),
            (just_under(2 * DAY), "47h"),
            (secs(2 * DAY), "2d"),
            (secs(2 * DAY + HOUR), "2d1h"),
            (just_under(8 * DAY), "7d23h"),
            (secs(8 * DAY), "8d"),
            (secs(8 * DAY + 23 * HOUR), "8d"),
            (just_under(2 * YEAR), "729d"),
            (secs(2 * YEAR), "2y"),
            (secs(2 * YEAR + 23 * HOUR + 59 * MINUTE), "2y"),
            (just_under(2 * YEAR + DAY), "2y"),
            (secs(2 * YEAR + DAY), "2y1d"),
            (secs(3 * YEAR), "3y"),
            (secs(7 * YEAR), "7y"),
            (just_under(8 * YEAR), "7y364d"),
            (secs(8 * YEAR), "8y"),
            (secs(8 * YEAR + 364 * DAY), "8y"),
            (secs(9 * YEAR), "9y"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }
}
