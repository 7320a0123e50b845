//! rclone's `--min-size`, `--max-size`, `--min-age` and `--max-age`: files taken by their
//! size and modification time (a scan's by what is on disk, a download's by the manifest).
//! An age is turned into a time once, when the command starts, so a daemon job queued for a
//! while still takes what its user asked for.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{ByteSize, Duration};
use crate::manifest::ManifestEntry;

/// Bounds on a file's size and modification time; the default takes every file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeAge {
    /// Only files of at least this many bytes (`--min-size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    /// Only files of at most this many bytes (`--max-size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// Only files modified at or after this time, in microseconds since the epoch, the
    /// manifest's unit (`--max-age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_since_us: Option<i64>,
    /// Only files modified at or before this time (`--min-age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_before_us: Option<i64>,
}

impl SizeAge {
    pub fn is_empty(&self) -> bool {
        *self == SizeAge::default()
    }

    /// Whether a file of `size` bytes modified at `mtime_us` is taken.
    pub fn takes(&self, size: u64, mtime_us: i64) -> bool {
        self.min_size.is_none_or(|min| size >= min)
            && self.max_size.is_none_or(|max| size <= max)
            && self.modified_since_us.is_none_or(|t| mtime_us >= t)
            && self.modified_before_us.is_none_or(|t| mtime_us <= t)
    }

    /// Whether a scanned file, by its stat, is taken.
    pub fn takes_stat(&self, stat: &super::FileStat) -> bool {
        self.takes(stat.size, ManifestEntry::mtime_us_from_ns(stat.mtime_ns))
    }

    /// The bounds as flags, for a message saying why every file was left out.
    pub fn describe(&self) -> Vec<String> {
        let size = |b: u64| bytes(ByteSize(b));
        let time = |us: i64| {
            let t =
                SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0).unsigned_abs());
            humantime::format_rfc3339_seconds(t).to_string()
        };
        [
            self.min_size.map(|b| format!("--min-size {}", size(b))),
            self.max_size.map(|b| format!("--max-size {}", size(b))),
            self.modified_since_us
                .map(|t| format!("--max-age (modified since {})", time(t))),
            self.modified_before_us
                .map(|t| format!("--min-age (modified before {})", time(t))),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Checks the bounds leave some room (an API client's too): a minimum above the maximum
    /// takes nothing, which is a mistake rather than a filter.
    pub fn check(&self) -> Result<(), String> {
        if let (Some(min), Some(max)) = (self.min_size, self.max_size)
            && min > max
        {
            return Err(format!(
                "--min-size {} is above --max-size {}: no file could be taken",
                bytes(ByteSize(min)),
                bytes(ByteSize(max))
            ));
        }
        if let (Some(since), Some(before)) = (self.modified_since_us, self.modified_before_us)
            && since > before
        {
            return Err(
                "--max-age reaches back less far than --min-age: no file could be taken (--max-age 7d --min-age 1d takes files from 7 to 1 days old)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A size as the flags take it: with a unit, `1B` rather than a bare `1`.
fn bytes(size: ByteSize) -> String {
    let text = size.to_string();
    match text.bytes().all(|b| b.is_ascii_digit()) {
        true => format!("{text}B"),
        false => text,
    }
}

/// A `--min-size`/`--max-size` value: a size with a unit (`100KiB`, `1.5GiB`, `1B`), or `0`.
/// A bare number is refused: rclone reads `100` as 100 KiB, bytesize as 100 bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let size: ByteSize = t.parse().map_err(|e| format!("{e}"))?;
    if size.0 > 0 && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} needs a unit: {t}B for bytes, {t}KiB as rclone reads it"
        ));
    }
    Ok(size.0)
}

/// A `--min-age`/`--max-age` value as a time in microseconds since the epoch: an age before
/// `now` (`36h`, `7d`, `90s`), or a UTC date or time (`2026-12-01`, `2026-12-01T18:00:00Z`).
pub fn parse_age(text: &str, now: SystemTime) -> Result<i64, String> {
    let t = text.trim();
    let at = if let Ok(age) = t.parse::<Duration>() {
        now.checked_sub(age.0)
            .ok_or_else(|| format!("{text:?} reaches back before 1970"))?
    } else {
        let time = match t.len() {
            10 => format!("{t}T00:00:00Z"),
            _ => t.to_string(),
        };
        humantime::parse_rfc3339_weak(&time).map_err(|_| {
            format!("{text:?} is neither an age (36h, 7d) nor a UTC time (2026-12-01, 2026-12-01T18:00:00Z)")
        })?
    };
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_US: i64 = 86_400_000_000;

    #[test]
    fn bounds_take_files_inclusively() {
        let b = SizeAge {
            min_size: Some(1),
            max_size: Some(100),
            modified_since_us: Some(10 * DAY_US),
            modified_before_us: Some(20 * DAY_US),
        };
        assert!(b.takes(1, 10 * DAY_US) && b.takes(100, 20 * DAY_US));
        assert!(
            !b.takes(0, 15 * DAY_US),
            "an empty file, under --min-size 1B"
        );
        assert!(!b.takes(101, 15 * DAY_US));
        assert!(!b.takes(50, 10 * DAY_US - 1) && !b.takes(50, 20 * DAY_US + 1));
        assert!(SizeAge::default().takes(0, -5) && SizeAge::default().is_empty());
        let stat = super::super::FileStat {
            dev: 0,
            ino: 0,
            size: 50,
            mtime_ns: 15 * DAY_US * 1000 + 999,
            ctime_ns: 0,
        };
        assert!(b.takes_stat(&stat));
    }

    #[test]
    fn sizes_need_a_unit_and_ages_are_ages_or_utc_times() {
        assert_eq!(parse_size("1B"), Ok(1));
        assert_eq!(parse_size("100KiB"), Ok(100 << 10));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0"), Ok(0));
        let bare = parse_size("100").unwrap_err();
        assert!(bare.contains("100B") && bare.contains("100KiB"), "{bare}");
        assert!(parse_size("big").is_err());
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(30 * 86_400);
        assert_eq!(parse_age("7d", now), Ok(23 * DAY_US));
        assert_eq!(parse_age("36h", now), Ok(30 * DAY_US - 36 * 3_600_000_000));
        assert_eq!(parse_age("1970-01-11", now), Ok(10 * DAY_US));
        assert_eq!(
            parse_age("1970-01-11T06:00:00Z", now),
            Ok(10 * DAY_US + 6 * 3_600_000_000)
        );
        assert!(parse_age("40d", now).unwrap_err().contains("before 1970"));
        assert!(
            parse_age("yesterday", now)
                .unwrap_err()
                .contains("UTC time")
        );
    }

    #[test]
    fn bounds_that_take_nothing_are_refused_and_described() {
        let sizes = SizeAge {
            min_size: Some(2 << 20),
            max_size: Some(1 << 20),
            ..SizeAge::default()
        };
        assert_eq!(
            sizes.check().unwrap_err(),
            "--min-size 2MiB is above --max-size 1MiB: no file could be taken"
        );
        let ages = SizeAge {
            modified_since_us: Some(2 * DAY_US),
            modified_before_us: Some(DAY_US),
            ..SizeAge::default()
        };
        assert!(ages.check().is_err());
        let said = SizeAge {
            min_size: Some(1),
            max_size: Some(1 << 20),
            modified_since_us: Some(DAY_US),
            ..SizeAge::default()
        }
        .describe();
        assert_eq!(
            said,
            [
                "--min-size 1B",
                "--max-size 1MiB",
                "--max-age (modified since 1970-01-02T00:00:00Z)"
            ]
        );
    }
}
