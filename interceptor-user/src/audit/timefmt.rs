//! Dates on the command line and in reports: RFC 3339 (UTC) from and to Unix milliseconds.
use std::fmt::Write as _;

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The year (UTC) of a time in Unix milliseconds.
pub fn utc_year(ms: i64) -> i64 {
    civil_from_days(ms.div_euclid(86_400_000)).0
}

/// `2026-05-01T12:00:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut s = String::new();
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    );
    s
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.fff]]Z` (UTC) or Unix milliseconds.
pub fn parse(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() > 8 {
        return s.parse().map_err(|e| format!("{s:?}: {e}"));
    }
    let bad = || format!("{s:?} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC)");
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let p: Vec<&str> = date.split('-').collect();
    let [y, m, d] = p[..] else { return Err(bad()) };
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if let Some(t) = time {
        let t = t.strip_suffix('Z').ok_or_else(bad)?;
        let (hms, frac) = match t.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (t, None),
        };
        let q: Vec<u32> = hms
            .split(':')
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let (h, mi, se) = match q[..] {
            [h, mi] => (h, mi, 0),
            [h, mi, se] => (h, mi, se),
            _ => return Err(bad()),
        };
        if h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        ms += (h as i64 * 3600 + mi as i64 * 60 + se as i64) * 1000;
        if let Some(f) = frac {
            let f3: String = f.chars().chain("000".chars()).take(3).collect();
            ms += f3.parse::<i64>().map_err(|_| bad())?;
        }
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse("1970-01-02").unwrap(), 86_400_000);
        let t = parse("2026-03-01T13:45:07.250Z").unwrap();
        assert_eq!(rfc3339(t), "2026-03-01T13:45:07.250Z");
        assert_eq!(parse(&t.to_string()).unwrap(), t);
        assert_eq!(
            parse("2024-02-29").unwrap() + 86_400_000,
            parse("2024-03-01").unwrap()
        );
        assert!(parse("2024-13-01").is_err());
        assert!(parse("yesterday").is_err());
    }
}
