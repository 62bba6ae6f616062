//! UTC timestamps for names people read, without a date crate.

/// Last second [`utc_stamp`] shows: 9999-12-31 23:59:59 UTC.
const MAX_STAMP_SECS: i64 = 253_402_300_799;

/// `YYYYMMDD-HHMMSS` in UTC for `secs` since the Unix epoch: sortable as
/// text, and safe in a file name. Times outside 1970–9999 are clamped, so
/// the stamp keeps its shape whatever a peer claims.
pub fn utc_stamp(secs: i64) -> String {
    let secs = secs.clamp(0, MAX_STAMP_SECS);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Year, month, day of the day `days` after 1970-01-01 in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`: eras of 400
/// years of 146,097 days, years starting in March so the leap day is last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_match_known_dates() {
        for (secs, stamp) in [
            (0, "19700101-000000"),
            (946_684_799, "19991231-235959"),
            (951_782_400, "20000229-000000"),
            (1_700_000_000, "20231114-221320"),
            (1_709_164_800, "20240229-000000"),
            (4_107_456_000, "21000228-000000"),
            (4_107_542_400, "21000301-000000"),
            (MAX_STAMP_SECS, "99991231-235959"),
        ] {
            assert_eq!(utc_stamp(secs), stamp, "{secs}");
        }
        // Every day for 1,000 years: consecutive, valid dates.
        let mut prev = civil_from_days(-1);
        assert_eq!(prev, (1969, 12, 31));
        for day in 0..365_250 {
            let (y, m, d) = civil_from_days(day);
            assert!((1..=len_of(y, m)).contains(&d), "{y}-{m}-{d}");
            let next_of_prev = if prev.2 < len_of(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), next_of_prev);
            prev = (y, m, d);
        }
    }

    fn len_of(y: i64, m: u32) -> u32 {
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
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
        ][m as usize - 1]
    }
}
