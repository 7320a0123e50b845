//! Human units for settings: sizes (`8MiB`), rates (`50MB/s`) and durations (`30s`).
//!
//! Each type deserializes from an integer or a string and serializes back to a string that
//! parses to the same value, so `config show` output can be pasted into a config file.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that did not parse; says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {input:?}")]
pub struct ParseUnitError {
    input: String,
    expected: &'static str,
}

/// A number of bytes. `MB` is 10^6 bytes and `MiB` is 2^20; units are case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }

    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }
}

/// Bytes per second; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rate(pub u64);

impl Rate {
    pub const UNLIMITED: Self = Self(0);

    /// The limit in bytes per second, or `None` when unlimited.
    pub fn per_second(self) -> Option<u64> {
        (self.0 != 0).then_some(self.0)
    }
}

/// A duration; bare integers are seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(n: u64) -> Self {
        Self(std::time::Duration::from_secs(n))
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

// ---- parsing ----

impl FromStr for ByteSize {
    type Err = ParseUnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // bytesize parses `8MiB`, `8 mib`, `1.5GiB` and `4096` with MB = 10^6, MiB = 2^20.
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Self(b.as_u64()))
            .map_err(|_| error(s, Self::EXPECTED))
    }
}

impl FromStr for Rate {
    type Err = ParseUnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(Self::UNLIMITED);
        }
        let size = strip_suffix_ignore_case(t, "/s").unwrap_or(t);
        let rate = size
            .parse::<ByteSize>()
            .map(|b| Self(b.0))
            .map_err(|_| error(s, Self::EXPECTED))?;
        // A bare number is bytes a second here and KiB a second to rclone's --bwlimit, whose
        // timetables get pasted: its `512` would be 512 B/s, a thousand times too slow.
        if t.bytes().all(|b| b.is_ascii_digit()) && rate.0 > 0 && rate.0 < 1_000_000 {
            return Err(error(s, BARE_RATE));
        }
        Ok(rate)
    }
}

/// Why a small rate without a unit is refused.
const BARE_RATE: &str = "a unit under 1MB/s (512KiB/s, 500kB/s): a number alone is bytes a second, where rclone's --bwlimit reads KiB a second";

impl FromStr for Duration {
    type Err = ParseUnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(secs) = t.parse::<u64>() {
            return Ok(Self::secs(secs));
        }
        humantime::parse_duration(t)
            .map(Self)
            .map_err(|_| error(s, Self::EXPECTED))
    }
}

fn error(input: &str, expected: &'static str) -> ParseUnitError {
    ParseUnitError {
        input: input.to_owned(),
        expected,
    }
}

fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    let (head, tail) = (s.get(..cut)?, s.get(cut..)?);
    tail.eq_ignore_ascii_case(suffix).then_some(head)
}

// ---- display: exact, so the printed value parses back to the same number ----

/// Exact units, tried in turn; the one giving the smallest number wins.
const SIZE_UNITS: [(u64, &str); 8] = [
    (1 << 40, "TiB"),
    (1 << 30, "GiB"),
    (1 << 20, "MiB"),
    (1 << 10, "KiB"),
    (1_000_000_000_000, "TB"),
    (1_000_000_000, "GB"),
    (1_000_000, "MB"),
    (1_000, "kB"),
];

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact = SIZE_UNITS
            .iter()
            .filter(|(factor, _)| self.0 != 0 && self.0.is_multiple_of(*factor))
            .min_by_key(|(factor, _)| self.0 / factor);
        match exact {
            Some((factor, unit)) => write!(f, "{}{unit}", self.0 / factor),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per_second() {
            None => f.write_str("unlimited"),
            Some(n) => write!(f, "{}/s", ByteSize(n)),
        }
    }
}

/// Days, hours, minutes, seconds and milliseconds, as the docs write them (`7d`, `1h 30m`):
/// humantime's own display says `7days` and counts months of 30.44 days.
const DURATION_UNITS: [(u128, &str); 5] = [
    (86_400_000, "d"),
    (3_600_000, "h"),
    (60_000, "m"),
    (1_000, "s"),
    (1, "ms"),
];

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut left = self.0.as_millis();
        if left == 0 {
            // Under a millisecond (never configured so): humantime's exact form.
            return write!(f, "{}", humantime::format_duration(self.0));
        }
        let mut parts = Vec::new();
        for (ms, unit) in DURATION_UNITS {
            if left >= ms {
                parts.push(format!("{}{unit}", left / ms));
                left %= ms;
            }
        }
        f.write_str(&parts.join(" "))
    }
}

// ---- serde: integer or string in, string out ----

/// What the shared visitor needs to know about a unit type.
trait Unit: FromStr<Err = ParseUnitError> {
    /// Shown in every error, so users see what is accepted.
    const EXPECTED: &'static str;
    fn from_int(n: u64) -> Self;
}

impl Unit for ByteSize {
    const EXPECTED: &'static str = "a size like 8MiB, 64KiB, 1.5GiB, 50MB or a byte count";
    fn from_int(n: u64) -> Self {
        Self(n)
    }
}

impl Unit for Rate {
    const EXPECTED: &'static str =
        "a rate like 50MB/s, 50MiB/s, 100M, a byte count per second, or 0/unlimited";
    fn from_int(n: u64) -> Self {
        Self(n)
    }
}

impl Unit for Duration {
    const EXPECTED: &'static str = "a duration like 30s, 5m, 1h 30m, 250ms or whole seconds";
    fn from_int(n: u64) -> Self {
        Self::secs(n)
    }
}

struct UnitVisitor<T>(PhantomData<T>);

impl<T: Unit> Visitor<'_> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        Ok(T::from_int(n))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        u64::try_from(n)
            .map(T::from_int)
            .map_err(|_| E::custom(error(&n.to_string(), T::EXPECTED)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        s.parse().map_err(E::custom)
    }
}

macro_rules! serde_via_unit {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(UnitVisitor(PhantomData))
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}

serde_via_unit!(ByteSize, Rate, Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_decimal_and_binary_units_case_insensitively() {
        let table = [
            ("8MiB", 8 << 20),
            ("8 MiB", 8 << 20),
            ("8mib", 8 << 20),
            ("8MB", 8_000_000),
            ("8mb", 8_000_000),
            ("8M", 8_000_000),
            ("1.5GiB", 3 << 29),
            ("64KiB", 64 << 10),
            ("64kB", 64_000),
            ("4096", 4096),
            ("0", 0),
            (" 1TiB ", 1 << 40),
        ];
        for (input, bytes) in table {
            assert_eq!(input.parse(), Ok(ByteSize(bytes)), "{input:?}");
        }
    }

    #[test]
    fn bad_sizes_say_what_is_accepted() {
        for input in ["", "8 parsecs", "-5MiB", "MiB", "1.5", "8MiB/s"] {
            let err = input.parse::<ByteSize>().unwrap_err().to_string();
            assert!(err.contains("a size like 8MiB"), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{input:?}: {err}");
        }
    }

    #[test]
    fn rates_accept_optional_per_second_and_unlimited() {
        let table = [
            ("50MB/s", 50_000_000),
            ("50MiB/s", 50 << 20),
            ("50mib/S", 50 << 20),
            ("100M/s", 100_000_000),
            ("100M", 100_000_000),
            ("1000000", 1_000_000),
            ("512KiB", 512 << 10),
            ("0", 0),
            ("unlimited", 0),
            ("Unlimited", 0),
        ];
        for (input, per_sec) in table {
            assert_eq!(input.parse(), Ok(Rate(per_sec)), "{input:?}");
        }
        assert!("fast".parse::<Rate>().is_err());
        assert!("50MB/h".parse::<Rate>().is_err());
        // rclone's bare 512 is 512 KiB/s; here it would be 512 B/s: a unit is asked for.
        let err = "512".parse::<Rate>().unwrap_err().to_string();
        assert!(err.contains("rclone's --bwlimit reads KiB"), "{err}");
        assert!("999999".parse::<Rate>().is_err());
    }

    #[test]
    fn durations_parse_humantime_and_bare_seconds() {
        let table = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h 30m", 5_400_000),
            ("250ms", 250),
            ("24h", 86_400_000),
            ("45", 45_000),
        ];
        for (input, ms) in table {
            let want = Duration(std::time::Duration::from_millis(ms));
            assert_eq!(input.parse(), Ok(want), "{input:?}");
        }
        assert!("soon".parse::<Duration>().is_err());
        assert!("-5s".parse::<Duration>().is_err());
    }

    #[test]
    fn display_is_exact_and_parses_back() {
        let sizes = [
            0,
            1,
            4096,
            1000,
            8 << 20,
            8_000_000,
            3 << 29,
            1 << 40,
            1_234_567,
        ];
        for n in sizes {
            let shown = ByteSize(n).to_string();
            assert_eq!(shown.parse(), Ok(ByteSize(n)), "{shown}");
        }
        assert_eq!(ByteSize::mib(8).to_string(), "8MiB");
        assert_eq!(ByteSize(50_000_000).to_string(), "50MB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1536MiB");
        assert_eq!(ByteSize(1_000_000_000_000).to_string(), "1TB");
        assert_eq!(Rate(0).to_string(), "unlimited");
        assert_eq!(Rate(50_000_000).to_string(), "50MB/s");
        assert_eq!(Duration::secs(5400).to_string(), "1h 30m");
        assert_eq!("1h 30m".parse::<Duration>().unwrap().to_string(), "1h 30m");
        // As the docs write them, and read back the same.
        for (secs, shown) in [
            (86_400, "1d"),
            (7 * 86_400, "7d"),
            (60 * 86_400, "60d"),
            (90_061, "1d 1h 1m 1s"),
        ] {
            assert_eq!(Duration::secs(secs).to_string(), shown);
            assert_eq!(shown.parse(), Ok(Duration::secs(secs)));
        }
        let ms = Duration(std::time::Duration::from_millis(1_250));
        assert_eq!(ms.to_string(), "1s 250ms");
        assert_eq!("1s 250ms".parse(), Ok(ms));
    }

    #[test]
    fn serde_takes_integers_or_strings_and_writes_strings() {
        #[derive(Debug, PartialEq, Deserialize, Serialize)]
        struct T {
            size: ByteSize,
            rate: Rate,
            wait: Duration,
        }
        let from_ints: T = toml::from_str("size = 4096\nrate = 0\nwait = 30").unwrap();
        let from_strs: T =
            toml::from_str("size = \"4KiB\"\nrate = \"unlimited\"\nwait = \"30s\"").unwrap();
        assert_eq!(from_ints, from_strs);
        assert_eq!(
            toml::to_string(&from_ints).unwrap(),
            "size = \"4KiB\"\nrate = \"unlimited\"\nwait = \"30s\"\n"
        );
        let negative = toml::from_str::<T>("size = -1\nrate = 0\nwait = 1").unwrap_err();
        assert!(
            negative.to_string().contains("a size like 8MiB"),
            "{negative}"
        );
        let wrong_type = toml::from_str::<T>("size = true\nrate = 0\nwait = 1").unwrap_err();
        assert!(
            wrong_type.to_string().contains("a size like 8MiB"),
            "{wrong_type}"
        );
    }
}
