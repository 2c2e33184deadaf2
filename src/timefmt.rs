//! Wall-clock formatting in UTC (RFC 3339, Common Log Format), on the `time` crate's calendar.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use time::UtcDateTime;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The UTC calendar time of `t`: times before 1970 read as 1970-01-01,
/// times past the calendar's end (year 999,999) as its last instant.
fn utc(t: SystemTime) -> UtcDateTime {
    let nanos = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    i128::try_from(nanos)
        .ok()
        .and_then(|n| UtcDateTime::from_unix_timestamp_nanos(n).ok())
        .unwrap_or(UtcDateTime::MAX)
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
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
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
        let t = utc(self.0);
        // A year past 9999 is written in full (more than four digits).
        push_padded(out, t.year().max(0) as u32, 4);
        out.push(b'-');
        push_padded(out, u32::from(u8::from(t.month())), 2);
        out.push(b'-');
        push_padded(out, u32::from(t.day()), 2);
        out.push(b'T');
        push_padded(out, u32::from(t.hour()), 2);
        out.push(b':');
        push_padded(out, u32::from(t.minute()), 2);
        out.push(b':');
        push_padded(out, u32::from(t.second()), 2);
        out.push(b'.');
        push_padded(out, u32::from(t.millisecond()), 3);
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
        let t = utc(self.0);
        write!(
            f,
            "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
            t.day(),
            MONTHS[usize::from(u8::from(t.month())) - 1],
            t.year(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
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
        let before = UNIX_EPOCH - Duration::from_secs(10);
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
        // 1970 to 2400: each day's midnight reads as the calendar day after
        // the last one's.
        let day_of = |days: u64| {
            let text = Rfc3339(at(days * 86_400, 0)).to_string();
            let num = |r: std::ops::Range<usize>| text[r].parse::<u32>().unwrap();
            (i64::from(num(0..4)), num(5..7), num(8..10))
        };
        let mut prev = day_of(0);
        assert_eq!(prev, (1970, 1, 1));
        for days in 1..157_000 {
            let (y, m, d) = day_of(days);
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

    #[test]
    fn times_past_the_calendar_read_as_its_end() {
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 2);
        assert_eq!(Rfc3339(far).to_string(), "999999-12-31T23:59:59.999Z");
        assert_eq!(ClfDate(far).to_string(), "31/Dec/999999:23:59:59 +0000");
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
