//! Times in filters (`until`, `since`) as dockerd reads them (`daemon/internal/timestamp.Parse`): a
//! Go duration before now (`24h`, `1h30m`), an RFC 3339 date or time (`2026-12-06`,
//! `2026-12-06T10:00`, `2026-12-06T10:00:00.5+01:00`), or Unix seconds (`1765000000.5`).
//!
//! A time without a zone is read in UTC: dockerd reads it in its own local zone, which ctproxy
//! cannot know (daemons usually run in UTC).

/// Seconds since the Unix epoch (with a fraction), for comparisons with an image's `Created`.
pub type Seconds = f64;

/// `value` as an instant; `now` is the reference for durations. The error is dockerd's text where
/// it is known, otherwise a description in the same style.
pub fn parse(value: &str, now: Seconds) -> Result<Seconds, String> {
    if value.trim().is_empty() {
        return Err("failed to parse value as time or duration: value is empty".into());
    }
    if value != "0" {
        if let Some(d) = go_duration(value) {
            return Ok(now - d);
        }
    }
    if let Some(t) = rfc3339ish(value) {
        return Ok(t);
    }
    if value.contains('-') {
        return Err(format!("parsing time {value:?}: cannot parse {value:?} as a time"));
    }
    unix(value).ok_or_else(|| {
        format!(
            "failed to parse value as time or duration: invalid seconds {:?}: invalid syntax",
            value.split_once('.').map_or(value, |(s, _)| s)
        )
    })
}

/// Go's `time.ParseDuration`: `[-+]` then one or more `<decimal><unit>`, units ns us µs ms s m h.
fn go_duration(s: &str) -> Option<f64> {
    let (sign, mut rest) = match s.as_bytes().first()? {
        b'-' => (-1.0, &s[1..]),
        b'+' => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    Some(sign * total)
}

/// Unix seconds with an optional fraction.
fn unix(s: &str) -> Option<f64> {
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let frac: f64 = if frac.is_empty() { 0.0 } else { format!("0.{frac}").parse().ok()? };
    Some(sec as f64 + frac)
}

/// The RFC 3339 forms dockerd accepts: a date, optionally `T` and hours, minutes, seconds with a
/// fraction, optionally `Z` or `±hh:mm`.
fn rfc3339ish(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=days_in_month(y, mo)).contains(&d) {
        return None;
    }
    let mut rest = &s[10..];
    let mut secs = 0.0;
    if let Some(t) = rest.strip_prefix('T') {
        let end = t.find(['Z', 'z', '+', '-']).unwrap_or(t.len());
        let (clock, zone) = t.split_at(end);
        let parts: Vec<&str> = clock.split(':').collect();
        let field = |p: &str, max: i64| -> Option<i64> {
            (p.len() == 2 && p.bytes().all(|c| c.is_ascii_digit())).then(|| p.parse().ok().filter(|v| *v <= max))?
        };
        let h = field(parts.first()?, 23)?;
        let m = parts.get(1).map_or(Some(0), |p| field(p, 59))?;
        let sec = match parts.get(2) {
            None => 0.0,
            Some(p) => {
                let (whole, frac) = p.split_once('.').unwrap_or((p, ""));
                let whole = field(whole, 59)? as f64;
                if !frac.is_empty() && !frac.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                whole + if frac.is_empty() { 0.0 } else { format!("0.{frac}").parse::<f64>().ok()? }
            }
        };
        if parts.len() > 3 {
            return None;
        }
        secs = (h * 3600 + m * 60) as f64 + sec;
        rest = zone;
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        z => {
            let sign = match z.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = z[1..].split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    Some((days_from_civil(y, mo, d) * 86400 - offset) as f64 + secs)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn durations_dates_and_seconds() {
        let now = 1_000_000.0;
        assert_eq!(parse("24h", now), Ok(now - 86400.0));
        assert_eq!(parse("1h30m", now), Ok(now - 5400.0));
        assert_eq!(parse("1.5s", now), Ok(now - 1.5));
        assert_eq!(parse("-10m", now), Ok(now + 600.0));
        assert_eq!(parse("0", now), Ok(0.0));
        assert_eq!(parse("1765000000", now), Ok(1_765_000_000.0));
        assert_eq!(parse("1765000000.5", now), Ok(1_765_000_000.5));
        assert_eq!(parse("1970-01-02", now), Ok(86400.0));
        assert_eq!(parse("2026-12-06T10:00:00Z", now), Ok(1_796_551_200.0));
        assert_eq!(parse("2026-12-06T11:00:00+01:00", now), Ok(1_796_551_200.0));
        assert_eq!(parse("2026-12-06T10", now), Ok(1_796_551_200.0));
        assert_eq!(parse("2026-12-06T10:00", now), Ok(1_796_551_200.0));
        for bad in ["", "x", "10x", "2026-13-01", "2026-02-30", "h"] {
            assert!(parse(bad, now).is_err(), "{bad:?}");
        }
    }
}
