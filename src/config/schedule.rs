//! `bandwidth.schedule`: a bandwidth timetable in rclone's `--bwlimit` form, so a workstation
//! can send slowly while people work and at full speed at night.
//!
//! Each entry is `[DAY-]HH:MM,RATE[:RATE]`: from that local time on, the first rate limits
//! uploads and the second downloads (one rate: both); `off` (or `0`, `unlimited`) is no limit.
//! An entry without a day applies every day. The entry in force is the last one at or before
//! the time, wrapping round the week: `["08:00,10MB/s", "19:00,off"]` limits uploads and
//! downloads to 10 MB/s from 8:00 to 19:00 every day.

use std::str::FromStr;

use super::Rate;

const MINUTES_PER_DAY: u32 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A time of the week, to the second: Monday 00:00:00 is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WeekTime(pub u32);

impl WeekTime {
    /// `day` 0 = Monday.
    pub fn new(day: u32, hour: u32, minute: u32, second: u32) -> WeekTime {
        WeekTime(((day * 24 + hour) * 60 + minute) * 60 + second)
    }

    /// Now, in the machine's time zone.
    pub fn now() -> WeekTime {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as libc::time_t;
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: `t` and `tm` are valid for the call; localtime_r is the thread-safe form.
        if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
            return WeekTime(0);
        }
        let day = (tm.tm_wday as u32 + 6) % 7; // tm_wday: 0 is Sunday
        WeekTime::new(
            day,
            tm.tm_hour as u32,
            tm.tm_min as u32,
            tm.tm_sec as u32 % 60,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Minute of the week it starts.
    at: u32,
    upload: Rate,
    download: Rate,
}

/// A parsed timetable, entries sorted by their minute of the week.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule(Vec<Entry>);

impl Schedule {
    /// Parses the entries; an error names the entry and what is wrong with it.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Schedule, String> {
        let mut all = Vec::new();
        for e in entries {
            let e = e.as_ref();
            let (days, at, upload, download) =
                parse_entry(e).map_err(|why| format!("{e:?}: {why}"))?;
            for day in days {
                all.push(Entry {
                    at: day * MINUTES_PER_DAY + at,
                    upload,
                    download,
                });
            }
        }
        // Stable: of two entries at one time, the later in the list wins (it comes last).
        all.sort_by_key(|e| e.at);
        Ok(Schedule(all))
    }

    /// The (upload, download) limits in force at `t`, or `None` without entries.
    pub fn in_force(&self, t: WeekTime) -> Option<(Rate, Rate)> {
        let minute = t.0 / 60;
        let e = self
            .0
            .iter()
            .rev()
            .find(|e| e.at <= minute)
            .or(self.0.last())?; // before the week's first entry: the last one still holds
        Some((e.upload, e.download))
    }

    /// Seconds from `t` until the next entry starts (at most a week).
    pub fn next_change(&self, t: WeekTime) -> Option<u32> {
        let minute = t.0 / 60;
        let next = match self.0.iter().find(|e| e.at > minute) {
            Some(e) => e.at,
            None => self.0.first()?.at + MINUTES_PER_WEEK,
        };
        Some(next * 60 - t.0)
    }
}

/// `[DAY-]HH:MM,RATE[:RATE]` → (the days it applies to, minute of the day, up, down).
fn parse_entry(e: &str) -> Result<(Vec<u32>, u32, Rate, Rate), String> {
    let (when, rates) = e
        .split_once(',')
        .ok_or("expected [DAY-]HH:MM,RATE[:RATE], e.g. \"08:00,10MB/s\" or \"Sat-00:00,off\"")?;
    let (days, time) = match when.trim().split_once('-') {
        Some((day, time)) => {
            let d = DAYS
                .iter()
                .position(|d| d.eq_ignore_ascii_case(day.trim()))
                .ok_or_else(|| {
                    format!("{day:?} is not a day: Mon, Tue, Wed, Thu, Fri, Sat or Sun")
                })?;
            (vec![d as u32], time)
        }
        None => ((0..7).collect(), when),
    };
    let (h, m) = time
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("{time:?} is not a time of day: HH:MM"))?;
    let (h, m): (u32, u32) = match (h.parse(), m.parse()) {
        (Ok(h), Ok(m)) if h < 24 && m < 60 => (h, m),
        _ => {
            return Err(format!(
                "{time:?} is not a time of day: HH:MM, 00:00 to 23:59"
            ));
        }
    };
    let (up, down) = parse_rates(rates)?;
    Ok((days, h * 60 + m, up, down))
}

/// `RATE[:RATE]` → (upload, download): one rate for both directions, or each its own; `off`
/// is unlimited. A timetable entry's rates, and `attache bwlimit`'s.
pub fn parse_rates(rates: &str) -> Result<(Rate, Rate), String> {
    let rate = |s: &str| -> Result<Rate, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(Rate::UNLIMITED);
        }
        Rate::from_str(s).map_err(|e| e.to_string())
    };
    Ok(match rates.split_once(':') {
        Some((up, down)) => (rate(up)?, rate(down)?),
        None => {
            let r = rate(rates)?;
            (r, r)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(n: u64) -> Rate {
        Rate(n * 1_000_000)
    }

    #[test]
    fn the_last_entry_at_or_before_the_time_is_in_force_round_the_week() {
        let s = Schedule::parse(&["08:00,10MB/s", "19:00,off", "Sat-08:00,1MB/s:2MB/s"]).unwrap();
        let wed = |h, m| WeekTime::new(2, h, m, 0);
        assert_eq!(
            s.in_force(wed(7, 59)),
            Some((Rate::UNLIMITED, Rate::UNLIMITED))
        );
        assert_eq!(s.in_force(wed(8, 0)), Some((mb(10), mb(10))));
        assert_eq!(s.in_force(wed(18, 59)), Some((mb(10), mb(10))));
        assert_eq!(
            s.in_force(wed(19, 0)),
            Some((Rate::UNLIMITED, Rate::UNLIMITED))
        );
        // Saturday 08:00 lists both the daily entry and the Saturday one: the later wins.
        assert_eq!(s.in_force(WeekTime::new(5, 9, 0, 0)), Some((mb(1), mb(2))));
        // Monday before 08:00: Sunday 19:00's "off" still holds.
        assert_eq!(
            s.in_force(WeekTime::new(0, 3, 0, 0)),
            Some((Rate::UNLIMITED, Rate::UNLIMITED))
        );
        // Wednesday 18:59:30 → 19:00 in 30 s; Sunday 20:00 → Monday 08:00 in 12 h.
        assert_eq!(s.next_change(WeekTime::new(2, 18, 59, 30)), Some(30));
        assert_eq!(s.next_change(WeekTime::new(6, 20, 0, 0)), Some(12 * 3600));
        assert_eq!(Schedule::default().in_force(wed(8, 0)), None);
        assert_eq!(Schedule::default().next_change(wed(8, 0)), None);

        let one = Schedule::parse(&["Mon-00:00,5MB/s"]).unwrap();
        assert_eq!(
            one.in_force(WeekTime::new(6, 23, 59, 59)),
            Some((mb(5), mb(5)))
        );
        assert_eq!(one.next_change(WeekTime::new(6, 23, 59, 59)), Some(1));
    }

    #[test]
    fn a_bad_entry_is_named_with_what_is_wrong() {
        for (entry, why) in [
            ("08:00", "expected [DAY-]HH:MM,RATE"),
            ("24:00,1MB/s", "00:00 to 23:59"),
            ("8h,1MB/s", "is not a time of day"),
            ("Someday-08:00,1MB/s", "is not a day"),
            ("08:00,fast", "fast"),
            ("08:00,1MB/s:slow", "slow"),
        ] {
            let e = Schedule::parse(&[entry]).unwrap_err();
            assert!(
                e.starts_with(&format!("{entry:?}: ")) && e.contains(why),
                "{e}"
            );
        }
        assert!(Schedule::parse(&["mon-08:00, 1MiB/s : off "]).is_ok());
    }

    #[test]
    fn now_is_a_time_of_the_week() {
        assert!(WeekTime::now().0 < MINUTES_PER_WEEK * 60);
    }
}
