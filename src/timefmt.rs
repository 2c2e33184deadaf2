//! Wall-clock formatting in UTC (RFC 3339, Common Log Format) without a date crate.

use std::fmt;
use std::time::{Duration, SystemTime};

/// A UTC calendar time, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

// === impl Civil ===

impl Civil {
    /// The UTC calendar time of `t` (times before 1970 read as 1970-01-01).
    pub fn of(t: SystemTime) -> Civil {
        let since = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let in_day = secs % 86_400;
        Civil {
            year,
            month,
            day,
            hour: (in_day / 3600) as u32,
            minute: (in_day / 60 % 60) as u32,
            second: (in_day % 60) as u32,
            millis: since.subsec_millis(),
        }
    }
}

/// Year, month (1..=12) and day (1..=31) of a day count since 1970-01-01,
/// in the proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365, from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats as RFC 3339 in UTC with milliseconds: `2000-10-10T13:55:36.000Z`.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub SystemTime);

impl Rfc3339 {
    /// Appends the time to `out`, digit by digit: the access log writes one
    /// per line, and `write!` with padded fields cost about 1,000
    /// instructions each (callgrind).
    pub fn push_to(&self, out: &mut Vec<u8>) {
        // Lines come many to a second: the part up to the second is kept
        // per thread and copied (about 550 of the 700 instructions a time
        // took, callgrind).
        let since = self
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let second = since.as_secs();
        let cached = LAST_SECOND.with(|last| {
            let (at, prefix) = last.get();
            if at == second && at != 0 {
                return Some(prefix);
            }
            let mut text = Vec::with_capacity(24);
            self.push_uncached(&mut text);
            // Only times with a four-digit year have the fixed-width prefix.
            if text.len() != 24 {
                return None;
            }
            let prefix: [u8; 20] = text[..20].try_into().ok()?;
            last.set((second, prefix));
            Some(prefix)
        });
        match cached {
            Some(prefix) => {
                out.extend_from_slice(&prefix);
                push_padded(out, since.subsec_millis(), 3);
                out.push(b'Z');
            }
            None => self.push_uncached(out),
        }
    }

    fn push_uncached(&self, out: &mut Vec<u8>) {
        let c = Civil::of(self.0);
        // A year past 9999 is written in full (more than four digits).
        let year = c.year.clamp(0, i64::from(u32::MAX)) as u32;
        push_padded(out, year, 4);
        out.push(b'-');
        push_padded(out, c.month, 2);
        out.push(b'-');
        push_padded(out, c.day, 2);
        out.push(b'T');
        push_padded(out, c.hour, 2);
        out.push(b':');
        push_padded(out, c.minute, 2);
        out.push(b':');
        push_padded(out, c.second, 2);
        out.push(b'.');
        push_padded(out, c.millis, 3);
        out.push(b'Z');
    }
}

thread_local! {
    /// The last second [`Rfc3339::push_to`] wrote on this thread (seconds
    /// since the epoch), and its text up to the second's dot.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((0, [0; 20])) };
}

/// Appends `v` in decimal, with leading zeros to at least `width` digits.
pub fn push_padded(out: &mut Vec<u8>, v: u32, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(v);
    for _ in text.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(text.as_bytes());
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(24);
        self.push_to(&mut text);
        // Digits and separators: ASCII.
        f.write_str(&String::from_utf8_lossy(&text))
    }
}

/// Formats as the Common Log Format date, in UTC: `10/Oct/2000:13:55:36 +0000`.
#[derive(Debug, Clone, Copy)]
pub struct ClfDate(pub SystemTime);

impl fmt::Display for ClfDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = Civil::of(self.0);
        write!(
            f,
            "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
            c.day,
            MONTHS[(c.month - 1) as usize],
            c.year,
            c.hour,
            c.minute,
            c.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    #[test]
    fn known_instants() {
        // The Common Log Format's own example, in UTC.
        assert_eq!(
            ClfDate(at(971_186_136, 0)).to_string(),
            "10/Oct/2000:13:55:36 +0000"
        );
        assert_eq!(
            Rfc3339(at(971_186_136, 7)).to_string(),
            "2000-10-10T13:55:36.007Z"
        );
        assert_eq!(Rfc3339(at(0, 0)).to_string(), "1970-01-01T00:00:00.000Z");
        // A leap day, the last second of a leap year, and far ahead.
        assert_eq!(
            Rfc3339(at(951_782_400, 0)).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            ClfDate(at(1_735_689_599, 999)).to_string(),
            "31/Dec/2024:23:59:59 +0000"
        );
        assert_eq!(
            Rfc3339(at(4_107_542_400, 0)).to_string(),
            "2100-03-01T00:00:00.000Z"
        );
        // Before the epoch: clamped, never a panic.
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(Rfc3339(before).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn cached_seconds_write_what_uncached_ones_do() {
        // Same second (cached), the next second, back again, then the
        // years the cache leaves out.
        for (secs, millis) in [
            (971_186_136, 7),
            (971_186_136, 999),
            (971_186_137, 0),
            (971_186_136, 1),
            (253_402_300_799, 5),
            (253_402_300_800, 5),
            (0, 0),
            (0, 10),
        ] {
            let t = at(secs, millis);
            let mut cached = Vec::new();
            Rfc3339(t).push_to(&mut cached);
            let mut uncached = Vec::new();
            Rfc3339(t).push_uncached(&mut uncached);
            assert_eq!(cached, uncached, "{secs}.{millis}");
        }
        assert_eq!(
            Rfc3339(at(253_402_300_800, 5)).to_string(),
            "10000-01-01T00:00:00.005Z"
        );
    }

    #[test]
    fn every_day_follows_the_previous_one() {
        // 1970 to 2400: each day count maps to the calendar day after the last.
        let mut prev = civil_from_days(-1);
        assert_eq!(prev, (1969, 12, 31));
        for days in 0..157_000 {
            let (y, m, d) = civil_from_days(days);
            let next_of_prev = if prev.2 < len_of(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), next_of_prev, "day {days}");
            prev = (y, m, d);
        }
    }

    /// Days in month `m` of year `y`.
    fn len_of(y: i64, m: u32) -> u32 {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ][(m - 1) as usize]
    }
}
