//! Cron schedules as upstream's CronJob controller reads them (robfig/cron v3's
//! `ParseStandard`): five fields (minute, hour, day of month, month, day of week) with `*`, `?`,
//! lists, ranges, steps and month/day names, the `@yearly`-style descriptors, `@every
//! <duration>`, and an optional `TZ=`/`CRON_TZ=` prefix naming the time zone.
//!
//! A field written as `*` or `?` (without a step above 1) is "starred": when either day field
//! is starred a day must match both, otherwise either (cron's traditional rule).
//!
//! Next activation times are found by walking absolute time in the schedule's zone, as robfig
//! does: on a spring-forward day the skipped local times never fire; in a fall-back hour a
//! matching local time fires each time it occurs.
//!
//! Both the API's CronJob validation (`spec.schedule`, with robfig's messages) and the CronJob
//! controller use this one parser, so what the API accepts is exactly what can be scheduled.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

/// Set in a field's bits when it was written as `*` or `?`.
const STAR: u64 = 1 << 63;

/// Why a schedule could not be parsed (the messages follow robfig's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty spec string")]
    Empty,
    #[error("expected exactly 5 fields, found {found}: {spec}")]
    FieldCount { found: usize, spec: String },
    #[error("unrecognized descriptor: {spec}")]
    Descriptor { spec: String },
    #[error("failed to parse int from {value}")]
    Number { value: String },
    #[error("too many hyphens: {expr}")]
    Hyphens { expr: String },
    #[error("too many slashes: {expr}")]
    Slashes { expr: String },
    #[error("beginning of range ({start}) below minimum ({min}): {expr}")]
    BelowMin { start: u32, min: u32, expr: String },
    #[error("end of range ({end}) above maximum ({max}): {expr}")]
    AboveMax { end: u32, max: u32, expr: String },
    #[error("beginning of range ({start}) beyond end of range ({end}): {expr}")]
    Reversed { start: u32, end: u32, expr: String },
    #[error("step of range should be a positive number: {expr}")]
    Step { expr: String },
    #[error("failed to parse duration {value}")]
    Duration { value: String },
    #[error("provided bad location {name}")]
    Location { name: String },
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    /// The zone of a `TZ=`/`CRON_TZ=` prefix, which overrides the caller's.
    zone: Option<TimeZone>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Fields(Fields),
    /// `@every <duration>`: a constant delay, in whole seconds (at least one).
    Every(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTES: Bounds = Bounds { min: 0, max: 59, names: &[] };
const HOURS: Bounds = Bounds { min: 0, max: 23, names: &[] };
const DOM: Bounds = Bounds { min: 1, max: 31, names: &[] };
/// Month names, from 1.
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
/// Day names, from 0 (Sunday).
const DOW: Bounds = Bounds { min: 0, max: 6, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

/// Whether `spec` starts with a `TZ=`/`CRON_TZ=` prefix (upstream rejects it when
/// `spec.timeZone` is set).
pub fn has_zone_prefix(spec: &str) -> bool {
    let s = spec.trim();
    s.starts_with("TZ=") || s.starts_with("CRON_TZ=")
}

impl Schedule {
    /// Parses `spec` as robfig/cron's standard parser does.
    pub fn parse(spec: &str) -> Result<Self, ParseError> {
        let mut s = spec.trim();
        if s.is_empty() {
            return Err(ParseError::Empty);
        }
        let mut zone = None;
        if has_zone_prefix(s) {
            let (prefix, rest) = s.split_once(' ').unwrap_or((s, ""));
            let name = prefix.split_once('=').map(|(_, n)| n).unwrap_or_default();
            zone = Some(TimeZone::get(name).map_err(|_| ParseError::Location { name: name.into() })?);
            s = rest.trim();
        }
        let kind = if s.starts_with('@') { descriptor(s)? } else { Kind::Fields(fields(s)?) };
        Ok(Self { kind, zone })
    }

    /// The first activation strictly after `after`, in the prefix's zone or else `zone`; `None`
    /// when nothing matches within five years (e.g. the 30th of February).
    pub fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(secs) => {
                let t = Timestamp::from_second(after.as_second()).ok()?;
                t.checked_add(SignedDuration::from_secs(*secs)).ok()
            }
            Kind::Fields(f) => f.next(after, self.zone.as_ref().unwrap_or(zone)),
        }
    }
}

fn descriptor(s: &str) -> Result<Kind, ParseError> {
    let all = |b: &Bounds| bits(b.min, b.max, 1) | STAR;
    let at = |minute: u32, hour: u32, dom: Option<u32>, month: Option<u32>, dow: Option<u32>| Fields {
        minute: 1 << minute,
        hour: 1 << hour,
        dom: dom.map_or(all(&DOM), |d| 1 << d),
        month: month.map_or(all(&MONTHS), |m| 1 << m),
        dow: dow.map_or(all(&DOW), |d| 1 << d),
    };
    let fields = match s {
        "@yearly" | "@annually" => at(0, 0, Some(1), Some(1), None),
        "@monthly" => at(0, 0, Some(1), None, None),
        "@weekly" => at(0, 0, None, None, Some(0)),
        "@daily" | "@midnight" => at(0, 0, None, None, None),
        "@hourly" => Fields { hour: all(&HOURS), ..at(0, 0, None, None, None) },
        _ => {
            let Some(d) = s.strip_prefix("@every ") else {
                return Err(ParseError::Descriptor { spec: s.into() });
            };
            let secs = go_duration_seconds(d.trim()).ok_or_else(|| ParseError::Duration { value: d.into() })?;
            // robfig's `Every` rounds down to whole seconds, at least one.
            return Ok(Kind::Every(secs.max(1)));
        }
    };
    Ok(Kind::Fields(fields))
}

/// A Go duration (`1h30m`, `90s`, `1.5h`, `500ms`) in whole seconds, rounded down.
fn go_duration_seconds(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Some(total.floor() as i64)
}

fn fields(s: &str) -> Result<Fields, ParseError> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 5 {
        return Err(ParseError::FieldCount { found: parts.len(), spec: s.into() });
    }
    Ok(Fields {
        minute: field(parts[0], &MINUTES)?,
        hour: field(parts[1], &HOURS)?,
        dom: field(parts[2], &DOM)?,
        month: field(parts[3], &MONTHS)?,
        dow: field(parts[4], &DOW)?,
    })
}

/// One field: a comma-separated list of ranges.
fn field(s: &str, b: &Bounds) -> Result<u64, ParseError> {
    s.split(',').try_fold(0, |acc, expr| Ok(acc | range(expr, b)?))
}

/// `*`, `?`, `N`, `N-M`, each optionally `/step`; `N/step` means `N-max/step`.
fn range(expr: &str, b: &Bounds) -> Result<u64, ParseError> {
    let (range_part, step) = match expr.split('/').collect::<Vec<_>>()[..] {
        [r] => (r, None),
        [r, step] => (r, Some(step)),
        _ => return Err(ParseError::Slashes { expr: expr.into() }),
    };
    let low_high: Vec<&str> = range_part.split('-').collect();
    let mut extra = 0;
    let (start, mut end) = if matches!(low_high[0], "*" | "?") {
        if low_high.len() > 1 {
            return Err(ParseError::Hyphens { expr: expr.into() });
        }
        extra = STAR;
        (b.min, b.max)
    } else {
        let start = value(low_high[0], b)?;
        match low_high[..] {
            [_] => (start, start),
            [_, high] => (start, value(high, b)?),
            _ => return Err(ParseError::Hyphens { expr: expr.into() }),
        }
    };
    let step = match step {
        None => 1,
        Some(step) => {
            let n = number(step)?;
            if low_high.len() == 1 && extra == 0 {
                end = b.max;
            }
            if n > 1 {
                extra = 0;
            }
            n
        }
    };
    if start < b.min {
        return Err(ParseError::BelowMin { start, min: b.min, expr: expr.into() });
    }
    if end > b.max {
        return Err(ParseError::AboveMax { end, max: b.max, expr: expr.into() });
    }
    if start > end {
        return Err(ParseError::Reversed { start, end, expr: expr.into() });
    }
    if step == 0 {
        return Err(ParseError::Step { expr: expr.into() });
    }
    Ok(bits(start, end, step) | extra)
}

fn value(s: &str, b: &Bounds) -> Result<u32, ParseError> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + b.min);
    }
    number(s)
}

fn number(s: &str) -> Result<u32, ParseError> {
    s.parse::<u32>().map_err(|_| ParseError::Number { value: s.into() })
}

fn bits(min: u32, max: u32, step: u32) -> u64 {
    (min..=max).step_by(step as usize).fold(0, |acc, i| acc | (1 << i))
}

fn has(set: u64, i: i8) -> bool {
    set & (1 << i) != 0
}

impl Fields {
    fn day_matches(&self, date: Date) -> bool {
        let dom = has(self.dom, date.day());
        let dow = has(self.dow, date.weekday().to_sunday_zero_offset());
        if self.dom & STAR != 0 || self.dow & STAR != 0 { dom && dow } else { dom || dow }
    }

    fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let secs = after.as_second();
        let mut t = Timestamp::from_second(secs - secs.rem_euclid(60) + 60).ok()?;
        let limit = t.checked_add(SignedDuration::from_hours(5 * 366 * 24)).ok()?;
        // Local midnight of `date` (the later instant when midnight is skipped).
        let midnight =
            |date: Date| zone.to_ambiguous_zoned(date.to_datetime(jiff::civil::Time::midnight())).compatible();
        while t < limit {
            let local = t.to_zoned(zone.clone());
            let dt = local.datetime();
            let candidate = if !has(self.month, dt.month()) {
                midnight(dt.date().first_of_month().checked_add(1.month()).ok()?).ok()?.timestamp()
            } else if !self.day_matches(dt.date()) {
                midnight(dt.date().tomorrow().ok()?).ok()?.timestamp()
            } else if !has(self.hour, dt.hour()) {
                t.checked_add(SignedDuration::from_mins(60 - i64::from(dt.minute()))).ok()?
            } else if !has(self.minute, dt.minute()) {
                t.checked_add(SignedDuration::from_mins(1)).ok()?
            } else {
                return Some(t);
            };
            // Never step backwards, whatever the zone's transitions.
            t = if candidate > t { candidate } else { t.checked_add(SignedDuration::from_mins(1)).ok()? };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next_utc(spec: &str, after: &str) -> String {
        Schedule::parse(spec).unwrap().next(ts(after), &TimeZone::UTC).unwrap().to_string()
    }

    #[test]
    fn every_minute_fires_at_the_next_whole_minute() {
        assert_eq!(next_utc("*/1 * * * *", "2024-03-01T10:00:00Z"), "2024-03-01T10:01:00Z");
        assert_eq!(next_utc("* * * * *", "2024-03-01T10:00:59.5Z"), "2024-03-01T10:01:00Z");
    }

    #[test]
    fn steps_ranges_and_lists() {
        assert_eq!(next_utc("*/15 * * * *", "2024-03-01T10:16:00Z"), "2024-03-01T10:30:00Z");
        assert_eq!(next_utc("5/20 * * * *", "2024-03-01T10:46:00Z"), "2024-03-01T11:05:00Z");
        assert_eq!(next_utc("0 9-17/4 * * *", "2024-03-01T13:00:00Z"), "2024-03-01T17:00:00Z");
        assert_eq!(next_utc("0 1,13 * * *", "2024-03-01T02:00:00Z"), "2024-03-01T13:00:00Z");
    }

    #[test]
    fn month_and_day_names_are_case_insensitive() {
        // 2024-03-01 is a Friday.
        assert_eq!(next_utc("0 0 * * MON-fri", "2024-03-01T12:00:00Z"), "2024-03-04T00:00:00Z");
        assert_eq!(next_utc("0 0 1 Jun *", "2024-03-01T12:00:00Z"), "2024-06-01T00:00:00Z");
    }

    #[test]
    fn restricted_day_fields_match_either_day() {
        // The 15th, or any Monday: Monday the 4th comes first.
        assert_eq!(next_utc("0 0 15 * 1", "2024-03-01T12:00:00Z"), "2024-03-04T00:00:00Z");
        // A starred day of month: only Mondays.
        assert_eq!(next_utc("0 0 * * 1", "2024-03-04T12:00:00Z"), "2024-03-11T00:00:00Z");
        // `*/1` stays starred (a step of 1), so only the 15th... that is a Friday here.
        assert_eq!(next_utc("0 0 15 * */1", "2024-03-04T12:00:00Z"), "2024-03-15T00:00:00Z");
    }

    #[test]
    fn descriptors() {
        assert_eq!(next_utc("@hourly", "2024-03-01T10:30:00Z"), "2024-03-01T11:00:00Z");
        assert_eq!(next_utc("@daily", "2024-03-01T10:30:00Z"), "2024-03-02T00:00:00Z");
        assert_eq!(next_utc("@weekly", "2024-03-01T10:30:00Z"), "2024-03-03T00:00:00Z");
        assert_eq!(next_utc("@monthly", "2024-03-01T10:30:00Z"), "2024-04-01T00:00:00Z");
        assert_eq!(next_utc("@yearly", "2024-03-01T10:30:00Z"), "2025-01-01T00:00:00Z");
        assert_eq!(next_utc("@every 1h30m", "2024-03-01T10:30:00.7Z"), "2024-03-01T12:00:00Z");
    }

    #[test]
    fn leap_days_are_found_years_ahead() {
        assert_eq!(next_utc("0 0 29 2 *", "2024-03-01T00:00:00Z"), "2028-02-29T00:00:00Z");
    }

    #[test]
    fn impossible_dates_never_fire() {
        let s = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(s.next(ts("2024-01-01T00:00:00Z"), &TimeZone::UTC), None);
    }

    #[test]
    fn bad_schedules_are_rejected() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "5-1 * * * *",
            "*/0 * * * *",
            "a * * * *",
            "1-2-3 * * * *",
            "1/2/3 * * * *",
            "@sometimes",
            "@every x",
            "TZ=Nowhere/Special * * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(Schedule::parse("61 * * * *").unwrap_err().to_string(), "end of range (61) above maximum (59): 61");
    }

    #[test]
    fn the_zone_of_the_caller_is_used() {
        let ny = TimeZone::get("America/New_York").unwrap();
        let s = Schedule::parse("0 9 * * *").unwrap();
        // 09:00 in New York in winter is 14:00 UTC.
        assert_eq!(s.next(ts("2024-01-10T00:00:00Z"), &ny).unwrap().to_string(), "2024-01-10T14:00:00Z");
    }

    #[test]
    fn a_zone_prefix_overrides_the_callers_zone() {
        let s = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *").unwrap();
        assert_eq!(s.next(ts("2024-01-10T01:00:00Z"), &TimeZone::UTC).unwrap().to_string(), "2024-01-11T00:00:00Z");
        assert!(has_zone_prefix("TZ=UTC * * * * *"));
        assert!(!has_zone_prefix("* * * * *"));
    }

    #[test]
    fn spring_forward_skips_the_missing_hour() {
        // New York skipped 02:00-03:00 on 2024-03-10.
        let ny = TimeZone::get("America/New_York").unwrap();
        let s = Schedule::parse("30 2 * * *").unwrap();
        let next = s.next(ts("2024-03-10T05:00:00Z"), &ny).unwrap();
        assert_eq!(next.to_zoned(ny.clone()).datetime().to_string(), "2024-03-11T02:30:00");
        // An hourly schedule goes from 01:00 EST straight to 03:00 EDT, one hour later.
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let one = ts("2024-03-10T06:00:00Z"); // 01:00 EST
        assert_eq!(hourly.next(one, &ny).unwrap().to_string(), "2024-03-10T07:00:00Z");
    }

    #[test]
    fn fall_back_repeats_the_doubled_hour() {
        // New York went from 02:00 EDT back to 01:00 EST on 2024-11-03.
        let ny = TimeZone::get("America/New_York").unwrap();
        let s = Schedule::parse("30 1 * * *").unwrap();
        let first = s.next(ts("2024-11-03T04:00:00Z"), &ny).unwrap();
        assert_eq!(first.to_string(), "2024-11-03T05:30:00Z");
        let second = s.next(first, &ny).unwrap();
        assert_eq!(second.to_string(), "2024-11-03T06:30:00Z");
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_seconds("1h30m"), Some(5400));
        assert_eq!(go_duration_seconds("1.5h"), Some(5400));
        assert_eq!(go_duration_seconds("500ms"), Some(0));
        assert_eq!(go_duration_seconds("10"), None);
        assert_eq!(go_duration_seconds("1d"), None);
    }
}
