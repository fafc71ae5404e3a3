//! The schedule arithmetic of upstream's CronJob controller (`pkg/controller/cronjob/utils.go`):
//! which scheduled time is due, how many were missed, and the names and timestamps derived
//! from a scheduled time.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use tug_api::cron::Schedule;

/// More missed start times than this are reported as a warning (upstream's 100).
pub const TOO_MANY_MISSED: i64 = 100;

/// The most recent scheduled time that is due, and roughly how many were missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub time: Timestamp,
    pub missed: i64,
}

/// Why no due time could be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("time difference between two schedules is less than 1 second")]
    TooClose,
}

/// Upstream's `mostRecentScheduleTime`: the latest activation of `schedule` in `(earliest,
/// now]`, where `earliest` is the last scheduled time (or the creation time) moved up to `now -
/// startingDeadlineSeconds` when that is later. The count of missed times is estimated from the
/// first two activations, as upstream does, so that a clock off by years costs nothing.
pub fn most_recent(
    schedule: &Schedule,
    zone: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
    starting_deadline_seconds: Option<i64>,
) -> Result<Option<Due>, ScheduleError> {
    let mut earliest = earliest;
    if let Some(sds) = starting_deadline_seconds
        && let Ok(deadline) = now.checked_sub(SignedDuration::from_secs(sds))
        && deadline > earliest
    {
        earliest = deadline;
    }
    if earliest > now {
        return Ok(None);
    }
    let Some(t1) = schedule.next(earliest, zone).filter(|t| *t <= now) else { return Ok(None) };
    let Some(t2) = schedule.next(t1, zone).filter(|t| *t <= now) else { return Ok(Some(Due { time: t1, missed: 1 })) };
    let between = t2.duration_since(t1).round(jiff::Unit::Second).unwrap_or_default().as_secs();
    if between < 1 {
        return Err(ScheduleError::TooClose);
    }
    let elapsed = now.duration_since(t1).as_secs();
    let missed = elapsed / between + 1;
    // Start one interval before the estimate and let the schedule find the exact time (the
    // interval is only an estimate for irregular schedules such as `30 6-16/4 * * 1-5`).
    let start = t1.checked_add(SignedDuration::from_secs((missed - 2).max(0) * between)).unwrap_or(t1);
    let mut latest = t1;
    let mut t = schedule.next(start, zone);
    while let Some(cur) = t.filter(|c| *c <= now) {
        latest = latest.max(cur);
        t = schedule.next(cur, zone);
    }
    Ok(Some(Due { time: latest, missed }))
}

/// The Job name for a scheduled time: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// The scheduled time as RFC 3339 in `zone` (UTC without a `timeZone`), as Go formats it
/// (`Z` for a zero offset).
pub fn scheduled_timestamp(scheduled: Timestamp, zone: &TimeZone) -> String {
    let z = scheduled.to_zoned(zone.clone());
    if z.offset().seconds() == 0 {
        z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn due(spec: &str, earliest: &str, now: &str, sds: Option<i64>) -> Option<Due> {
        most_recent(&Schedule::parse(spec).unwrap(), &TimeZone::UTC, ts(earliest), ts(now), sds).unwrap()
    }

    #[test]
    fn nothing_is_due_before_the_first_activation() {
        assert_eq!(due("0 * * * *", "2024-01-01T10:00:00Z", "2024-01-01T10:59:59Z", None), None);
    }

    #[test]
    fn one_activation_due() {
        let d = due("0 * * * *", "2024-01-01T10:00:00Z", "2024-01-01T11:00:30Z", None).unwrap();
        assert_eq!(d, Due { time: ts("2024-01-01T11:00:00Z"), missed: 1 });
    }

    #[test]
    fn the_most_recent_of_many_missed_activations() {
        let d = due("*/5 * * * *", "2024-01-01T10:00:00Z", "2024-01-01T10:31:00Z", None).unwrap();
        assert_eq!(d.time, ts("2024-01-01T10:30:00Z"));
        assert_eq!(d.missed, 6);
    }

    #[test]
    fn a_clock_years_off_is_counted_without_walking_every_minute() {
        let d = due("* * * * *", "2000-01-01T00:00:00Z", "2024-01-01T00:00:30Z", None).unwrap();
        assert_eq!(d.time, ts("2024-01-01T00:00:00Z"));
        assert!(d.missed > TOO_MANY_MISSED);
    }

    #[test]
    fn a_starting_deadline_limits_how_far_back_to_look() {
        // Missed for hours, but only the last 10 minutes count: still the latest activation,
        // and only a handful missed.
        let d = due("*/5 * * * *", "2024-01-01T00:00:00Z", "2024-01-01T10:31:00Z", Some(600)).unwrap();
        assert_eq!(d.time, ts("2024-01-01T10:30:00Z"));
        assert_eq!(d.missed, 2);
        // Nothing within the deadline.
        assert_eq!(due("0 * * * *", "2024-01-01T00:00:00Z", "2024-01-01T10:31:00Z", Some(60)), None);
    }

    #[test]
    fn irregular_schedules_find_the_exact_time() {
        // Weekdays 06:30, 10:30, 14:30; 2024-01-05 is a Friday, the 8th a Monday.
        let d = due("30 6-16/4 * * 1-5", "2024-01-05T07:00:00Z", "2024-01-08T11:00:00Z", None).unwrap();
        assert_eq!(d.time, ts("2024-01-08T10:30:00Z"));
    }

    #[test]
    fn time_zones_move_the_due_time() {
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let s = Schedule::parse("0 9 * * *").unwrap();
        let d = most_recent(&s, &tokyo, ts("2023-12-31T20:00:00Z"), ts("2024-01-01T01:00:00Z"), None).unwrap();
        assert_eq!(d.unwrap().time, ts("2024-01-01T00:00:00Z"));
    }

    #[test]
    fn job_names_count_minutes_since_the_epoch() {
        assert_eq!(job_name("hello", ts("2024-01-01T00:00:00Z")), "hello-28401120");
    }

    #[test]
    fn scheduled_timestamps_are_rfc3339_in_the_zone() {
        let t = ts("2024-01-01T00:00:00Z");
        assert_eq!(scheduled_timestamp(t, &TimeZone::UTC), "2024-01-01T00:00:00Z");
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        assert_eq!(scheduled_timestamp(t, &tokyo), "2024-01-01T09:00:00+09:00");
    }
}
