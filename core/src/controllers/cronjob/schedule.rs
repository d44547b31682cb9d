//! A CronJob's schedule: five-field cron syntax or a macro (`@hourly`, `@daily`, `@weekly`,
//! `@monthly`, `@yearly`/`@annually`), evaluated in the CronJob's IANA time zone.
//!
//! Parsing and evaluation are croner's (vixie-cron semantics: when both day-of-month and
//! day-of-week are restricted, either matching is enough); time zones come from jiff, which
//! reads the system's zoneinfo and falls back to a bundled copy of the tz database.

use std::time::SystemTime;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Why a schedule or time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `spec.schedule` is not a five-field cron expression or a known macro.
    #[error("unparseable schedule {schedule:?}: {message}")]
    Unparseable {
        /// The schedule as written.
        schedule: String,
        /// What is wrong with it.
        message: String,
    },
    /// `spec.timeZone` is not a time zone of the tz database.
    #[error("unknown time zone {zone:?}: {message}")]
    UnknownTimeZone {
        /// The zone as written.
        zone: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A parsed schedule in its time zone.
///
/// ```
/// # use std::time::{Duration, SystemTime};
/// # use wharf_core::controllers::cronjob::Schedule;
/// let daily = Schedule::parse("@daily", Some("Europe/Paris")).unwrap();
/// // 2027-01-15 08:00 UTC is 09:00 in Paris; the next Paris midnight is 23:00 UTC.
/// let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// let next = daily.next_after(t).unwrap();
/// assert_eq!(daily.format_rfc3339(next), "2027-01-16T00:00:00+01:00");
/// assert!(Schedule::parse("0 0 * *", None).is_err());
/// assert!(Schedule::parse("@daily", Some("Mars/Olympus")).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

impl Schedule {
    /// Parses `schedule` for `time_zone` (UTC when `None`).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => parse_zone(name)?,
        };
        let unparseable = |message: String| ScheduleError::Unparseable {
            schedule: schedule.to_string(),
            message,
        };
        let trimmed = schedule.trim();
        if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
            return Err(unparseable(
                "a time zone inside the schedule is not supported: set spec.timeZone".into(),
            ));
        }
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && fields != 5 {
            return Err(unparseable(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| unparseable(e.to_string()))?;
        Ok(Schedule { cron, zone })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let from = self.zoned(t)?;
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        Some(SystemTime::from(next.timestamp()))
    }

    /// The last scheduled time at or before `t`.
    pub fn latest_at_or_before(&self, t: SystemTime) -> Option<SystemTime> {
        let from = self.zoned(t)?;
        let previous = self.cron.find_previous_occurrence(&from, true).ok()?;
        Some(SystemTime::from(previous.timestamp()))
    }

    /// How many scheduled times fall in `(after, until]`, counting no further than `limit`.
    pub fn count_between(&self, after: SystemTime, until: SystemTime, limit: usize) -> usize {
        let Some(from) = self.zoned(after) else {
            return 0;
        };
        self.cron
            .iter_after(from)
            .take(limit)
            .take_while(|z| SystemTime::from(z.timestamp()) <= until)
            .count()
    }

    /// `t` as RFC 3339 in the schedule's time zone (`Z` for UTC), as Kubernetes writes the
    /// `batch.kubernetes.io/cronjob-scheduled-timestamp` annotation.
    pub fn format_rfc3339(&self, t: SystemTime) -> String {
        let Some(zoned) = self.zoned(t) else {
            return String::new();
        };
        if zoned.offset().seconds() == 0 {
            zoned.timestamp().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        } else {
            zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
        }
    }

    fn zoned(&self, t: SystemTime) -> Option<Zoned> {
        let ts = Timestamp::try_from(t).ok()?;
        Some(Zoned::new(ts, self.zone.clone()))
    }
}

fn parse_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    let unknown = |message: String| ScheduleError::UnknownTimeZone {
        zone: name.to_string(),
        message,
    };
    // Kubernetes refuses "Local" (it would depend on the controller's host) and empty names.
    if name.is_empty() || name.eq_ignore_ascii_case("local") {
        return Err(unknown(
            "must be an explicit IANA time zone such as Europe/Paris or Etc/UTC".into(),
        ));
    }
    TimeZone::get(name).map_err(|e| unknown(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    // 1_800_000_000 is 2027-01-15T08:00:00Z, a Friday.
    const T: u64 = 1_800_000_000;

    #[test]
    fn macros_match_their_five_field_forms() {
        let cases = [
            ("@hourly", "0 * * * *"),
            ("@daily", "0 0 * * *"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
        ];
        for (short, long) in cases {
            let a = Schedule::parse(short, None).unwrap();
            let b = Schedule::parse(long, None).unwrap();
            assert_eq!(a.next_after(at(T)), b.next_after(at(T)), "{short}");
        }
    }

    #[test]
    fn next_and_latest_and_counts() {
        let every_15 = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(every_15.next_after(at(T)), Some(at(T + 900)));
        assert_eq!(every_15.latest_at_or_before(at(T)), Some(at(T)));
        assert_eq!(every_15.latest_at_or_before(at(T + 899)), Some(at(T)));
        assert_eq!(every_15.count_between(at(T), at(T + 3600), 100), 4);
        assert_eq!(every_15.count_between(at(T), at(T + 86_400), 10), 10);
    }

    #[test]
    fn time_zone_shifts_the_schedule_and_the_annotation() {
        let ny = Schedule::parse("0 9 * * *", Some("America/New_York")).unwrap();
        // 09:00 in New York in January is 14:00 UTC.
        let next = ny.next_after(at(T)).unwrap();
        assert_eq!(next, at(T + 6 * 3600));
        assert_eq!(ny.format_rfc3339(next), "2027-01-15T09:00:00-05:00");
        let utc = Schedule::parse("0 9 * * *", None).unwrap();
        assert_eq!(utc.format_rfc3339(at(T)), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        for bad in [
            "",
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "@sometimes",
            "TZ=UTC 0 * * * *",
        ] {
            assert!(
                matches!(
                    Schedule::parse(bad, None),
                    Err(ScheduleError::Unparseable { .. })
                ),
                "{bad:?}"
            );
        }
        for zone in ["Local", "", "Nowhere/Special"] {
            assert!(
                matches!(
                    Schedule::parse("@daily", Some(zone)),
                    Err(ScheduleError::UnknownTimeZone { .. })
                ),
                "{zone:?}"
            );
        }
    }
}
