//! Five-field cron expressions for `job.kat`'s `schedule` (minute hour day-of-month
//! month day-of-week), with `*`, lists, ranges, steps, month and weekday names, and the
//! `@hourly`-style shorthands. Parsing gives a [`CronSchedule`] of bit sets; the job
//! controller asks it for the next tick.

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    pub minutes: u64,
    pub hours: u32,
    pub days_of_month: u32,
    pub months: u16,
    /// Bit 0 is Sunday; `7` in the expression also means Sunday.
    pub days_of_week: u8,
    /// Both day fields restricted: a day matches if either matches (classic cron rule).
    pub day_or: bool,
}

impl CronSchedule {
    /// Whether the schedule fires at this minute. `day_of_week`: 0 = Sunday.
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, day_of_week: u32) -> bool {
        let bit = |set: u64, v: u32| set & (1u64 << v) != 0;
        let dom = bit(u64::from(self.days_of_month), day);
        let dow = bit(u64::from(self.days_of_week), day_of_week);
        let day_ok = if self.day_or { dom || dow } else { dom && dow };
        bit(self.minutes, minute)
            && bit(u64::from(self.hours), hour)
            && bit(u64::from(self.months), month)
            && day_ok
    }
}

/// Year, month (1-12), day (1-31) of the day `days` after 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's civil-from-days).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl CronSchedule {
    /// The first minute (Unix seconds, UTC) after `after` at which the schedule fires,
    /// looking at most five years ahead.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let mut t = after.div_euclid(60) * 60 + 60;
        let limit = after + 5 * 366 * 86_400;
        while t <= limit {
            let days = t.div_euclid(86_400);
            let (_, month, day) = civil(days);
            // 1970-01-01 was a Thursday.
            let weekday = u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0);
            let bit = |set: u64, v: u32| set & (1u64 << v) != 0;
            let dom = bit(u64::from(self.days_of_month), day);
            let dow = bit(u64::from(self.days_of_week), weekday);
            let day_ok = if self.day_or { dom || dow } else { dom && dow };
            if !(day_ok && bit(u64::from(self.months), month)) {
                t = (days + 1) * 86_400;
                continue;
            }
            let secs = t.rem_euclid(86_400);
            let hour = u32::try_from(secs / 3600).unwrap_or(0);
            if !bit(u64::from(self.hours), hour) {
                t = days * 86_400 + (i64::from(hour) + 1) * 3600;
                continue;
            }
            let minute = u32::try_from((secs % 3600) / 60).unwrap_or(0);
            if bit(self.minutes, minute) {
                return Some(t);
            }
            t += 60;
        }
        None
    }
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    FieldSpec {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    FieldSpec {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    FieldSpec {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
    },
    FieldSpec {
        name: "day of week",
        min: 0,
        max: 7,
        names: WEEKDAYS,
    },
];

/// Parses a cron expression; the error is the user-facing reason.
pub fn parse(expr: &str) -> Result<CronSchedule, String> {
    let expanded = match expr.trim() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other if other.starts_with('@') => {
            return Err(format!(
                "{other:?} is not a known shorthand (@yearly, @monthly, @weekly, @daily, @hourly)"
            ));
        }
        other => other,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "{expr:?} has {} fields; a schedule has 5: minute hour day-of-month month day-of-week",
            fields.len()
        ));
    }
    let mut sets = [0u64; 5];
    for (i, (text, spec)) in fields.iter().zip(FIELDS.iter()).enumerate() {
        sets[i] = parse_field(text, spec)
            .map_err(|why| format!("{expr:?}: {} field {text:?}: {why}", spec.name))?;
    }
    // Fold Sunday-as-7 onto 0.
    let mut dow = sets[4];
    if dow & (1 << 7) != 0 {
        dow = (dow | 1) & !(1 << 7);
    }
    let restricted = |field: &str| field != "*" && !field.starts_with("*/");
    let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(CronSchedule {
        minutes: sets[0],
        hours: narrow(sets[1]),
        days_of_month: narrow(sets[2]),
        months: u16::try_from(sets[3]).unwrap_or(u16::MAX),
        days_of_week: u8::try_from(dow).unwrap_or(u8::MAX),
        day_or: restricted(fields[2]) && restricted(fields[4]),
    })
}

fn parse_field(text: &str, spec: &FieldSpec) -> Result<u64, String> {
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("step {step:?} is not a number"))?;
                if step == 0 {
                    return Err("step must be at least 1".to_owned());
                }
                (range, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, spec)?, value(b, spec)?)
        } else {
            let v = value(range, spec)?;
            // "5/15" means from 5 to the end in steps of 15.
            if item.contains('/') {
                (v, spec.max)
            } else {
                (v, v)
            }
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} is backwards"));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1u64 << v;
            v += step;
        }
    }
    Ok(set)
}

fn value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    let upper = text.to_ascii_uppercase();
    if let Some(i) = spec.names.iter().position(|n| *n == upper) {
        let base = if spec.min == 1 { 1 } else { 0 };
        return Ok(u32::try_from(i).unwrap_or(0) + base);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if v < spec.min || v > spec.max {
        return Err(format!("{v} is outside {}-{}", spec.min, spec.max));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tick_is_found_across_hours_days_and_months() {
        // 2026-11-23 (a Monday) 17:05:30 UTC.
        let t = 1_795_453_530;
        assert_eq!(civil(t / 86_400), (2026, 11, 23));
        let every_6h = parse("0 */6 * * *").unwrap();
        assert_eq!(
            every_6h.next_after(t),
            Some(1_795_453_530 - 61_530 + 18 * 3600)
        );
        let every_minute = parse("* * * * *").unwrap();
        assert_eq!(every_minute.next_after(t), Some(t - 30 + 60));
        // The first of next month at 00:00.
        let monthly = parse("0 0 1 * *").unwrap();
        assert_eq!(monthly.next_after(t), Some(1_796_083_200));
        // Sundays at 12:30: 2026-11-29.
        let sundays = parse("30 12 * * SUN").unwrap();
        assert_eq!(
            sundays.next_after(t),
            Some(1_796_083_200 - 2 * 86_400 + 12 * 3600 + 1800)
        );
        // February 30th never comes.
        assert_eq!(parse("0 0 30 2 *").unwrap().next_after(t), None);
    }

    #[test]
    fn every_six_hours() {
        let s = parse("0 */6 * * *").unwrap();
        assert!(s.matches(0, 0, 1, 1, 0));
        assert!(s.matches(0, 18, 9, 5, 3));
        assert!(!s.matches(0, 5, 1, 1, 0));
        assert!(!s.matches(1, 6, 1, 1, 0));
    }

    #[test]
    fn names_ranges_lists_and_sunday_as_seven() {
        let s = parse("30 9-17 * JAN,jul mon-fri").unwrap();
        assert!(s.matches(30, 9, 3, 1, 1));
        assert!(!s.matches(30, 9, 3, 2, 1));
        assert!(!s.matches(30, 9, 3, 7, 0));
        let sunday = parse("0 0 * * 7").unwrap();
        assert_eq!(sunday.days_of_week, 1);
    }

    #[test]
    fn day_fields_combine_with_or_when_both_are_restricted() {
        let s = parse("0 0 1 * 1").unwrap();
        assert!(s.matches(0, 0, 1, 3, 4));
        assert!(s.matches(0, 0, 9, 3, 1));
        assert!(!s.matches(0, 0, 9, 3, 2));
    }

    #[test]
    fn shorthands() {
        assert_eq!(parse("@daily").unwrap(), parse("0 0 * * *").unwrap());
        assert!(
            parse("@fortnightly")
                .unwrap_err()
                .contains("not a known shorthand")
        );
    }

    #[test]
    fn bad_expressions_say_which_field() {
        for (expr, why) in [
            ("* * * *", "has 4 fields"),
            ("60 * * * *", "minute field \"60\": 60 is outside 0-59"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day of month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day of week field"),
            ("*/0 * * * *", "step must be at least 1"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "is not a number"),
        ] {
            let err = parse(expr).unwrap_err();
            assert!(err.contains(why), "{expr}: {err}");
        }
    }
}
