//! A usage limit's reset time in the text a CLI printed, as Unix milliseconds ([`reset_time`]).
//!
//! The forms, most exact first:
//! * epoch seconds after a marker: Claude's old `usage limit reached|1753441200`, `resets_at`;
//! * an RFC 3339 time (`2026-12-02T22:11:30Z`);
//! * a wall-clock time after `resets` or `try again at`: Claude Code 2.1's `resets 10:11pm
//!   (UTC)`, `resets 10pm (UTC)`, `resets Dec 4, 9:11pm (UTC)`, `resets Dec 4, 2027, 9:11pm
//!   (UTC)` (local time, zone in parentheses), Codex 0.169's `Try again at 10:12 PM.` and `Try
//!   again at Dec 4th, 2026 9:12 PM.` (local time, NO zone);
//! * `try again in N seconds|minutes|hours`, from the run's end.
//!
//! Wall-clock times are resolved against the [`RunClock`]: a time without a date is the next
//! such time after the run ended, a date without a year the next such date. A time without a
//! zone is read in the clock's zone: the agent's host is assumed to keep the daemon's time
//! zone. A named zone the system cannot read is treated the same way. The CLIs print the reset
//! cut to the minute, so the end of the printed minute is taken: a retry never comes before
//! the reset, and at most a minute after it.

use super::RunClock;
use jiff::Timestamp;
use jiff::civil::Date as CivilDate;
use jiff::tz::TimeZone;

/// Words that introduce a wall-clock reset time (matched case-insensitively).
const WALL_MARKERS: [&str; 2] = ["resets ", "try again at "];
/// Markers followed by epoch seconds (or milliseconds).
const EPOCH_MARKERS: [&str; 5] = [
    "limit reached|",
    "resets_at",
    "reset_at",
    "resets at ",
    "reset\":",
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// The reset time in `text` (any case), resolved against `clock`; `None` when it names none.
pub(crate) fn reset_time(text: &str, clock: &RunClock) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    EPOCH_MARKERS
        .iter()
        .find_map(|marker| epoch_after(&lower, marker))
        .or_else(|| rfc3339_in(&lower))
        .or_else(|| wall_reset(text, &lower, clock))
        .or_else(|| relative_reset(&lower, clock))
}

/// The ASCII digits `s` starts with (possibly none).
fn leading_digits(s: &str) -> &str {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    &s[..end]
}

/// Epoch seconds (ten digits) or milliseconds (thirteen) after `marker`, as Unix ms.
fn epoch_after(lower: &str, marker: &str) -> Option<u64> {
    let i = lower.find(marker)?;
    let rest = lower[i + marker.len()..].trim_start_matches(['"', ':', ' ', '=']);
    let digits = leading_digits(rest);
    let n: u64 = digits.parse().ok()?;
    match digits.len() {
        10 => n.checked_mul(1000),
        13 => Some(n),
        _ => None,
    }
}

/// The first RFC 3339 time (`2026-12-02t19:30:00z`) in a lowercased text, as Unix ms.
fn rfc3339_in(lower: &str) -> Option<u64> {
    let bytes = lower.as_bytes();
    (0..bytes.len().saturating_sub(19)).find_map(|i| {
        let b = &bytes[i..];
        let shape = b[4] == b'-' && b[7] == b'-' && b[10] == b't' && b[13] == b':';
        if !shape || !b[..4].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let end = lower[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+')))
            .map_or(lower.len(), |e| i + e);
        let ts: humantime::Timestamp = lower[i..end].to_uppercase().parse().ok()?;
        let t: std::time::SystemTime = ts.into();
        let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
        u64::try_from(ms).ok()
    })
}

/// `try again in N seconds|minutes|hours`, counted from the run's end.
fn relative_reset(lower: &str, clock: &RunClock) -> Option<u64> {
    lower
        .match_indices("try again in ")
        .find_map(|(i, marker)| {
            let rest = &lower[i + marker.len()..];
            let digits = leading_digits(rest);
            let n: u64 = digits.parse().ok()?;
            let unit = rest[digits.len()..].trim_start();
            let secs = if unit.starts_with('h') {
                n.checked_mul(3600)?
            } else if unit.starts_with('m') {
                n.checked_mul(60)?
            } else {
                n
            };
            clock.ended_at_ms.checked_add(secs.checked_mul(1000)?)
        })
}

/// A wall-clock time after one of the [`WALL_MARKERS`], resolved. `lower` is `text` in ASCII
/// lowercase (same byte offsets); zone names are read from `text`.
fn wall_reset(text: &str, lower: &str, clock: &RunClock) -> Option<u64> {
    WALL_MARKERS.iter().find_map(|marker| {
        lower.match_indices(marker).find_map(|(i, _)| {
            let wall = WallTime::read(&text[i + marker.len()..])?;
            wall.resolve(clock)
        })
    })
}

/// A calendar date as printed: the year may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Date {
    year: Option<i64>,
    month: u32,
    day: u32,
}

/// A local date and time as a CLI printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WallTime {
    date: Option<Date>,
    hour: u32,
    minute: u32,
    /// The zone named in parentheses after the time.
    zone: Option<String>,
}

impl WallTime {
    /// Reads `[at ][Mon D[st|nd|rd|th][,] [YYYY[,]] ]H[:MM][ ]am|pm|H:MM[ (Zone)]`.
    fn read(s: &str) -> Option<Self> {
        let mut c = Cursor(s);
        c.skip_spaces();
        if c.eat_word("at") {
            c.skip_spaces();
        }
        let date = c.date();
        let (hour, minute) = c.clock_time()?;
        let zone = c.zone();
        Some(WallTime {
            date,
            hour,
            minute,
            zone,
        })
    }

    /// The end of the printed minute (Unix ms): the next such time after the run's end when
    /// the date (or year) is left out.
    fn resolve(&self, clock: &RunClock) -> Option<u64> {
        let named = self.zone.as_deref().and_then(named_zone);
        let zone = named.as_ref().unwrap_or(&clock.zone);
        let end = i64::try_from(clock.ended_at_ms).ok()?;
        let today = Timestamp::from_millisecond(end)
            .ok()?
            .to_zoned(zone.clone())
            .date();
        let (hour, minute) = (
            i8::try_from(self.hour).ok()?,
            i8::try_from(self.minute).ok()?,
        );
        // The instant (Unix ms) the printed minute ends, on local date `day`.
        let at = |day: CivilDate| -> Option<i64> {
            let start = day.at(hour, minute, 0, 0).to_zoned(zone.clone()).ok()?;
            Some(start.timestamp().as_millisecond() + 60_000)
        };
        let after_end = |t: &i64| *t > end;
        let instant = match self.date {
            None => at(today)
                .filter(after_end)
                .or_else(|| at(today.tomorrow().ok()?))?,
            Some(Date {
                year: Some(y),
                month: m,
                day: d,
            }) => at(civil_date(y, m, d)?)?,
            Some(Date {
                year: None,
                month: m,
                day: d,
            }) => {
                let year = i64::from(today.year());
                civil_date(year, m, d)
                    .and_then(at)
                    .filter(after_end)
                    .or_else(|| at(civil_date(year + 1, m, d)?))?
            }
        };
        u64::try_from(instant).ok()
    }
}

/// A real calendar date, or `None` (February 30th, a year out of range).
fn civil_date(year: i64, month: u32, day: u32) -> Option<CivilDate> {
    CivilDate::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
    )
    .ok()
}

/// The zone a CLI named in parentheses (`UTC`, `Europe/Lisbon`), from the system's zone
/// database; `None` when it has no such zone (then the clock's zone is used).
fn named_zone(name: &str) -> Option<TimeZone> {
    let name = name.trim();
    if matches!(name.to_ascii_uppercase().as_str(), "UTC" | "GMT" | "Z") {
        return Some(TimeZone::UTC);
    }
    TimeZone::get(name).ok()
}

/// A cursor over the text after a marker.
struct Cursor<'a>(&'a str);

impl Cursor<'_> {
    fn skip_spaces(&mut self) {
        self.0 = self.0.trim_start_matches(' ');
    }

    /// Takes `c` if it is next.
    fn eat(&mut self, c: char) -> bool {
        match self.0.strip_prefix(c) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }

    /// Takes `word` (any case) if it is next and not followed by a letter.
    fn eat_word(&mut self, word: &str) -> bool {
        let n = word.len();
        let matches = self
            .0
            .get(..n)
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
            && !self.0[n..].starts_with(|c: char| c.is_ascii_alphabetic());
        if matches {
            self.0 = &self.0[n..];
        }
        matches
    }

    /// Takes the next run of letters.
    fn letters(&mut self) -> &str {
        let end = self
            .0
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(self.0.len());
        let (word, rest) = self.0.split_at(end);
        self.0 = rest;
        word
    }

    /// Takes 1 to `max` digits.
    fn number(&mut self, max: usize) -> Option<u32> {
        let end = leading_digits(self.0).len();
        if end == 0 || end > max {
            return None;
        }
        let (digits, rest) = self.0.split_at(end);
        self.0 = rest;
        digits.parse().ok()
    }

    /// `Mon D[st|nd|rd|th][,] [YYYY[,] ]`, or nothing (and the cursor stays).
    fn date(&mut self) -> Option<Date> {
        let start = self.0;
        let date = self.date_inner();
        if date.is_none() {
            self.0 = start;
        }
        date
    }

    fn date_inner(&mut self) -> Option<Date> {
        let word = self.letters().to_ascii_lowercase();
        let month = MONTHS
            .iter()
            .position(|m| word.len() >= 3 && word.starts_with(m))?;
        self.skip_spaces();
        let day = self.number(2)?;
        let suffix = self.letters();
        if !matches!(suffix, "" | "st" | "nd" | "rd" | "th") {
            return None;
        }
        self.eat(',');
        self.skip_spaces();
        // A year is four digits not followed by `:` (that would be a time).
        let rest = self.0;
        let year = match self.number(4) {
            Some(y) if y >= 1000 && !self.0.starts_with(':') => {
                self.eat(',');
                self.skip_spaces();
                Some(i64::from(y))
            }
            _ => {
                self.0 = rest;
                None
            }
        };
        Some(Date {
            year,
            month: u32::try_from(month).ok()? + 1,
            day,
        })
    }

    /// `H[:MM][ ]am|pm` (12-hour) or `H:MM` (24-hour), as (hour 0–23, minute).
    fn clock_time(&mut self) -> Option<(u32, u32)> {
        let hour = self.number(2)?;
        let minute = if self.eat(':') {
            Some(self.number(2).filter(|m| *m < 60)?)
        } else {
            None
        };
        let before_meridiem = self.0;
        self.skip_spaces();
        let pm = if self.eat_word("pm") {
            Some(true)
        } else if self.eat_word("am") {
            Some(false)
        } else {
            self.0 = before_meridiem;
            None
        };
        match pm {
            Some(pm) if (1..=12).contains(&hour) => {
                Some((hour % 12 + if pm { 12 } else { 0 }, minute.unwrap_or(0)))
            }
            None if hour < 24 => minute.map(|m| (hour, m)),
            _ => None,
        }
    }

    /// ` (Zone/Name)` after the time.
    fn zone(&mut self) -> Option<String> {
        self.skip_spaces();
        let inner = self.0.strip_prefix('(')?;
        let name = &inner[..inner.find(')')?];
        Some(name.trim().to_owned()).filter(|n| !n.is_empty() && n.len() <= 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T19:10:30Z, in `zone`.
    fn clock(zone: TimeZone) -> RunClock {
        RunClock {
            ended_at_ms: 1_796_238_630_000,
            zone,
        }
    }

    fn utc() -> RunClock {
        clock(TimeZone::UTC)
    }

    /// Unix ms of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> u64 {
        let day = civil_date(y, mo, d).expect("a real date");
        let t = day
            .at(h as i8, mi as i8, 0, 0)
            .to_zoned(TimeZone::UTC)
            .expect("a UTC time");
        t.timestamp().as_millisecond() as u64
    }

    #[test]
    fn epoch_and_rfc3339_forms_are_exact() {
        let c = utc();
        assert_eq!(
            reset_time("Claude AI usage limit reached|1753441200", &c),
            Some(1_753_441_200_000)
        );
        assert_eq!(
            reset_time(r#"{"resets_at": 1753441200}"#, &c),
            Some(1_753_441_200_000)
        );
        assert_eq!(
            reset_time("rate limited until 2026-12-02T19:30:00Z, sorry", &c),
            Some(1_796_239_800_000)
        );
        assert_eq!(reset_time("no time at all", &c), None);
        assert_eq!(reset_time("Please try again later.", &c), None);
    }

    #[test]
    fn try_again_in_counts_from_the_runs_end() {
        let c = utc();
        assert_eq!(
            reset_time("please try again in 5 minutes", &c),
            Some(c.ended_at_ms + 300_000)
        );
        assert_eq!(reset_time("try again in a moment", &c), None);
    }

    #[test]
    fn claudes_times_are_the_next_such_minute_in_the_named_zone() {
        let c = utc();
        let session = "You've hit your session limit · resets 10:11pm (UTC)";
        assert_eq!(reset_time(session, &c), Some(at(2026, 12, 2, 22, 12)));
        assert_eq!(
            reset_time("You've hit your limit · resets 10pm (UTC)", &c),
            Some(at(2026, 12, 2, 22, 1))
        );
        // Earlier in the day than the run's end: tomorrow.
        assert_eq!(
            reset_time("resets 7:05am (UTC)", &c),
            Some(at(2026, 12, 3, 7, 6))
        );
        assert_eq!(
            reset_time(
                "You've hit your weekly limit · resets Dec 4, 9:11pm (UTC)",
                &c
            ),
            Some(at(2026, 12, 4, 21, 12))
        );
        assert_eq!(
            reset_time("resets Jan 2, 2027, 12:30am (UTC)", &c),
            Some(at(2027, 1, 2, 0, 31))
        );
        // A date already past this year is next year's.
        assert_eq!(
            reset_time("resets Jan 2, 1am (UTC)", &c),
            Some(at(2027, 1, 2, 1, 1))
        );
        // The named zone wins over the clock's.
        let plus_two = clock(TimeZone::fixed(jiff::tz::offset(2)));
        assert_eq!(
            reset_time(session, &plus_two),
            Some(at(2026, 12, 2, 22, 12))
        );
    }

    #[test]
    fn codex_times_without_a_zone_are_read_in_the_clocks_zone() {
        let c = utc();
        let today = "You’ve hit your usage limit. Try again at 10:12 PM.";
        assert_eq!(reset_time(today, &c), Some(at(2026, 12, 2, 22, 13)));
        assert_eq!(
            reset_time(
                "You’ve hit your usage limit. Try again at Dec 4th, 2026 9:12 PM.",
                &c
            ),
            Some(at(2026, 12, 4, 21, 13))
        );
        assert_eq!(
            reset_time(
                "Upgrade to Pro, or try again at Jan 1st, 2027 12:05 AM.",
                &c
            ),
            Some(at(2027, 1, 1, 0, 6))
        );
        // The host two hours east of UTC: 10:12 PM there is 20:12 UTC.
        let plus_two = clock(TimeZone::fixed(jiff::tz::offset(2)));
        assert_eq!(reset_time(today, &plus_two), Some(at(2026, 12, 2, 20, 13)));
        // Two hours west: 10:12 PM there is 00:12 UTC the next day.
        let minus_two = clock(TimeZone::fixed(jiff::tz::offset(-2)));
        assert_eq!(reset_time(today, &minus_two), Some(at(2026, 12, 3, 0, 13)));
    }

    #[test]
    fn things_that_are_not_times_are_no_reset() {
        let c = utc();
        for text in [
            "resets soon",
            "resets 13pm (UTC)",
            "resets 10:61pm",
            "resets Feb 30, 1pm (UTC)",
            "resets 7",
        ] {
            assert_eq!(reset_time(text, &c), None, "{text}");
        }
        // An hour without minutes is a time when it has its am/pm.
        assert_eq!(
            reset_time("try again at 10 PM tomorrow", &c),
            Some(at(2026, 12, 2, 22, 1))
        );
    }
}
