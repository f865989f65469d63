//! FHIR date/dateTime/instant values as the range of instants their precision covers, which is
//! how both indexed values and search values are compared (FHIR search, "date" parameters).

use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

/// Unix milliseconds (UTC), both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub low: i64,
    pub high: i64,
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm`, `…Thh:mm:ss` and `…Thh:mm:ss.f+`,
/// the time forms with an optional `Z` or `±hh:mm` (none means UTC). Returns the range the
/// given precision covers, or `None` for anything malformed or not on the calendar.
pub fn parse_date_range(s: &str) -> Option<DateRange> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)?;
    if year == 0 {
        return None;
    }
    let year = i32::try_from(year).ok()?;
    if b.len() == 4 {
        let low = at(
            Date::from_calendar_date(year, Month::January, 1).ok()?,
            Time::MIDNIGHT,
        )?;
        let high = at(
            Date::from_calendar_date(year, Month::December, 31).ok()?,
            end_of_day(),
        )?;
        return utc(low, high);
    }
    expect(b, 4, b'-')?;
    let month = Month::try_from(u8::try_from(digits(b, 5, 2)?).ok()?).ok()?;
    if b.len() == 7 {
        let last = month.length(year);
        let low = at(
            Date::from_calendar_date(year, month, 1).ok()?,
            Time::MIDNIGHT,
        )?;
        let high = at(
            Date::from_calendar_date(year, month, last).ok()?,
            end_of_day(),
        )?;
        return utc(low, high);
    }
    expect(b, 7, b'-')?;
    let date = Date::from_calendar_date(year, month, u8::try_from(digits(b, 8, 2)?).ok()?).ok()?;
    if b.len() == 10 {
        return utc(at(date, Time::MIDNIGHT)?, at(date, end_of_day())?);
    }
    expect(b, 10, b'T')?;
    let hour = u8::try_from(digits(b, 11, 2)?).ok()?;
    expect(b, 13, b':')?;
    let minute = u8::try_from(digits(b, 14, 2)?).ok()?;
    let mut pos = 16;
    // Milliseconds that the unstated finer fields add to reach the end of the range.
    let (second, milli, span) = if b.get(pos) == Some(&b':') {
        let second = u8::try_from(digits(b, pos + 1, 2)?).ok()?;
        pos += 3;
        if b.get(pos) == Some(&b'.') {
            let start = pos + 1;
            pos = start;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            if pos == start {
                return None;
            }
            // Only the first three fraction digits fit a millisecond; the rest truncate.
            let mut milli = 0u16;
            for i in 0..3 {
                let d = b
                    .get(start + i)
                    .filter(|_| start + i < pos)
                    .map_or(0, |d| d - b'0');
                milli = milli * 10 + u16::from(d);
            }
            (second, milli, 0)
        } else {
            (second, 0, 999)
        }
    } else {
        (0, 0, 59_999)
    };
    let offset = match b.get(pos) {
        None => UtcOffset::UTC,
        Some(b'Z') if pos + 1 == b.len() => UtcOffset::UTC,
        Some(&sign @ (b'+' | b'-')) if pos + 6 == b.len() => {
            let h = i8::try_from(digits(b, pos + 1, 2)?).ok()?;
            expect(b, pos + 3, b':')?;
            let m = i8::try_from(digits(b, pos + 4, 2)?).ok()?;
            if h > 14 || m > 59 {
                return None;
            }
            let (h, m) = if sign == b'-' { (-h, -m) } else { (h, m) };
            UtcOffset::from_hms(h, m, 0).ok()?
        }
        Some(_) => return None,
    };
    let time = Time::from_hms_milli(hour, minute, second, milli).ok()?;
    let low = PrimitiveDateTime::new(date, time).assume_offset(offset);
    let low = i64::try_from(low.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(DateRange {
        low,
        high: low + span,
    })
}

/// Both ends read as UTC wall-clock times (values without a time have no zone).
fn utc(low: PrimitiveDateTime, high: PrimitiveDateTime) -> Option<DateRange> {
    let ms =
        |t: PrimitiveDateTime| i64::try_from(t.assume_utc().unix_timestamp_nanos() / 1_000_000);
    Some(DateRange {
        low: ms(low).ok()?,
        high: ms(high).ok()?,
    })
}

fn at(date: Date, time: Time) -> Option<PrimitiveDateTime> {
    Some(PrimitiveDateTime::new(date, time))
}

fn end_of_day() -> Time {
    Time::from_hms_milli(23, 59, 59, 999).unwrap_or(Time::MIDNIGHT)
}

/// Exactly `len` ASCII digits at `start`, as a number.
fn digits(b: &[u8], start: usize, len: usize) -> Option<u32> {
    let slice = b.get(start..start + len)?;
    slice.iter().try_fold(0u32, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn expect(b: &[u8], pos: usize, c: u8) -> Option<()> {
    (b.get(pos) == Some(&c)).then_some(())
}

#[cfg(test)]
mod tests {
    use super::{parse_date_range, DateRange};

    fn range(s: &str) -> (i64, i64) {
        let r = parse_date_range(s).unwrap_or_else(|| panic!("{s} should parse"));
        (r.low, r.high)
    }

    /// 2013-01-01T00:00:00Z
    const Y2013: i64 = 1_356_998_400_000;
    const DAY: i64 = 86_400_000;

    #[test]
    fn year_month_day_cover_their_precision() {
        assert_eq!(range("2013"), (Y2013, Y2013 + 365 * DAY - 1));
        assert_eq!(range("2013-01"), (Y2013, Y2013 + 31 * DAY - 1));
        assert_eq!(range("2013-02"), (Y2013 + 31 * DAY, Y2013 + 59 * DAY - 1));
        assert_eq!(range("2013-01-02"), (Y2013 + DAY, Y2013 + 2 * DAY - 1));
        assert_eq!(range("2013-12-31").1, range("2013").1);
    }

    #[test]
    fn leap_years() {
        assert_eq!(range("2012").1 - range("2012").0 + 1, 366 * DAY);
        assert_eq!(range("2012-02").1 - range("2012-02").0 + 1, 29 * DAY);
        assert_eq!(range("2000-02").1 - range("2000-02").0 + 1, 29 * DAY);
        assert_eq!(range("1900-02").1 - range("1900-02").0 + 1, 28 * DAY);
        assert!(parse_date_range("2012-02-29").is_some());
        assert!(parse_date_range("2013-02-29").is_none());
        assert!(parse_date_range("1900-02-29").is_none());
    }

    #[test]
    fn times_cover_minute_second_or_millisecond() {
        let t = Y2013 + 10 * 3_600_000 + 30 * 60_000;
        assert_eq!(range("2013-01-01T10:30"), (t, t + 59_999));
        assert_eq!(range("2013-01-01T10:30Z"), (t, t + 59_999));
        assert_eq!(range("2013-01-01T10:30:15Z"), (t + 15_000, t + 15_999));
        assert_eq!(range("2013-01-01T10:30:15.5Z"), (t + 15_500, t + 15_500));
        assert_eq!(
            range("2013-01-01T10:30:15.123456Z"),
            (t + 15_123, t + 15_123)
        );
        assert_eq!(range("2013-01-01T10:30:15.12"), (t + 15_120, t + 15_120));
    }

    #[test]
    fn zones_shift_to_utc() {
        let t = Y2013 + 10 * 3_600_000;
        assert_eq!(range("2013-01-01T10:00:00+00:00").0, t);
        assert_eq!(range("2013-01-01T10:00:00-00:00").0, t);
        assert_eq!(
            range("2013-01-01T10:00:00+05:30").0,
            t - 5 * 3_600_000 - 30 * 60_000
        );
        assert_eq!(range("2013-01-01T10:00:00-08:00").0, t + 8 * 3_600_000);
        // Crossing the year boundary backwards.
        assert_eq!(range("2013-01-01T00:00:00+01:00").0, Y2013 - 3_600_000);
        assert_eq!(
            range("2013-01-01T10:00+02:00"),
            (t - 7_200_000, t - 7_200_000 + 59_999)
        );
    }

    #[test]
    fn extremes() {
        assert_eq!(range("1970-01-01T00:00:00Z"), (0, 999));
        assert!(range("1969").0 < 0);
        assert!(parse_date_range("9999-12-31T23:59:59.999Z").is_some());
        assert!(parse_date_range("0001").is_some());
    }

    #[test]
    fn rejects_malformed_and_impossible_values() {
        for bad in [
            "",
            "201",
            "20130",
            "2013-",
            "2013-1",
            "2013-13",
            "2013-00",
            "2013-02-30",
            "2013-04-31",
            "2013-01-00",
            "2013-01-01T",
            "2013-01-01T24:00",
            "2013-01-01T10:60",
            "2013-01-01T10:00:60",
            "2013-01-01T10",
            "2013-01-01T10:00:00.",
            "2013-01-01T10:00:00+5:00",
            "2013-01-01T10:00:00+15:00",
            "2013-01-01T10:00:00+05:60",
            "2013-01-01T10:00:00ZZ",
            "2013-01-01 10:00",
            "0000",
            "2013/01/01",
            "2013-01-01T10:00:00.5X",
            "２０１３",
            "2013-01-01Z",
        ] {
            assert_eq!(
                parse_date_range(bad),
                None::<DateRange>,
                "{bad:?} should not parse"
            );
        }
    }
}
