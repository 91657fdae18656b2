//! Wall-clock time in Unix seconds: the unit grants expire in and sessions are stamped with.

/// Now, in Unix seconds (0 before 1970, which no host runs at).
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A UTC date and time of day, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
}

/// The UTC date and time of Unix seconds (days to civil date: Howard Hinnant's algorithm).
pub fn civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil { year, month, day, hour: secs / 3600, minute: secs % 3600 / 60, second: secs % 60 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        let c = |y, mo, d, h, mi, s| Civil { year: y, month: mo, day: d, hour: h, minute: mi, second: s };
        assert_eq!(civil(0), c(1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400 + 3_661), c(2000, 2, 29, 1, 1, 1));
        assert_eq!(civil(1_798_675_200), c(2026, 12, 31, 0, 0, 0));
        assert_eq!(civil(-1), c(1969, 12, 31, 23, 59, 59));
    }
}
