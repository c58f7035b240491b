//! Derived views of a field (data minimization, GDPR Art. 5(1)(c) and 25): the catalog declares,
//! per field, named views computed from the stored value (`birth_date` → `age_band`), which a
//! caller asks for as `<field>.<view>` and which Cedar decides as resources of their own.

use jiff::civil::Date;

/// How a view is derived from its field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// A `YYYY-MM-DD` date → the age band on the day of the read: `<18`, `18-24`, `25-34`,
    /// `35-44`, `45-54`, `55-64`, `65+`.
    AgeBand,
    /// A `YYYY-MM-DD` date → its year.
    Year,
    /// An email address → its domain, lowercased.
    EmailDomain,
    /// The first `n` characters of the value (a postal code's area).
    Prefix(usize),
}

/// The longest prefix a view may keep: beyond that it is not a minimization.
pub const MAX_PREFIX: usize = 16;

impl Derivation {
    /// Parses a catalog spelling: `age_band`, `year`, `email_domain` or `prefix(N)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "age_band" => Ok(Self::AgeBand),
            "year" => Ok(Self::Year),
            "email_domain" => Ok(Self::EmailDomain),
            other => {
                let n = other
                    .strip_prefix("prefix(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .ok_or_else(|| {
                        format!(
                            "unknown view derivation `{}`: expected age_band, year, email_domain \
                             or prefix(N)",
                            other.escape_debug()
                        )
                    })?;
                match n.trim().parse::<usize>() {
                    Ok(n) if (1..=MAX_PREFIX).contains(&n) => Ok(Self::Prefix(n)),
                    _ => Err(format!(
                        "prefix(N) keeps 1 to {MAX_PREFIX} characters, not `{}`",
                        n.escape_debug()
                    )),
                }
            }
        }
    }

    /// The catalog spelling.
    pub fn spelling(self) -> String {
        match self {
            Self::AgeBand => "age_band".into(),
            Self::Year => "year".into(),
            Self::EmailDomain => "email_domain".into(),
            Self::Prefix(n) => format!("prefix({n})"),
        }
    }

    /// Whether the field's values must be `YYYY-MM-DD` dates for this view (checked on write).
    pub fn needs_date(self) -> bool {
        matches!(self, Self::AgeBand | Self::Year)
    }

    /// The derived value of `value` on `today`, or `None` when the value has no such view (not a
    /// date, no `@`): the read then answers ABSENT, never the value itself.
    pub fn derive(self, value: &str, today: Date) -> Option<String> {
        match self {
            Self::AgeBand => Some(age_band(age(parse_date(value)?, today)?).to_owned()),
            Self::Year => Some(parse_date(value)?.year().to_string()),
            Self::EmailDomain => {
                let (local, domain) = value.trim().rsplit_once('@')?;
                (!local.is_empty() && !domain.is_empty()).then(|| domain.to_lowercase())
            }
            Self::Prefix(n) => {
                let trimmed = value.trim();
                (!trimmed.is_empty()).then(|| trimmed.chars().take(n).collect())
            }
        }
    }
}

/// The UTC calendar day of `now_ms` (milliseconds since the epoch): the day views derive ages on.
pub fn utc_date(now_ms: crate::clock::Millis) -> Date {
    jiff::Timestamp::from_millisecond(now_ms as i64)
        .map(|t| t.to_zoned_datetime(jiff::tz::TimeZone::UTC).date())
        .unwrap_or(Date::ZERO)
}

/// The milliseconds since the epoch at the start of `date`, UTC (saturating).
pub fn utc_midnight_ms(date: Date) -> crate::clock::Millis {
    date.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_millisecond().max(0) as crate::clock::Millis)
        .unwrap_or(crate::clock::Millis::MAX)
}

/// A stored date, strictly `YYYY-MM-DD`.
pub fn parse_date(value: &str) -> Option<Date> {
    let bytes = value.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    value.parse::<Date>().ok()
}

/// Whole years from `born` to `today`; `None` for a birth date in the future.
pub fn age(born: Date, today: Date) -> Option<i16> {
    if born > today {
        return None;
    }
    let mut years = today.year() - born.year();
    if (today.month(), today.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    Some(years)
}

fn age_band(age: i16) -> &'static str {
    match age {
        ..18 => "<18",
        18..=24 => "18-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        _ => "65+",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn age_bands_turn_on_the_birthday() {
        let today = day("2026-12-01");
        let band = |born: &str| Derivation::AgeBand.derive(born, today);
        assert_eq!(band("2008-12-02").as_deref(), Some("<18"));
        assert_eq!(band("2008-12-01").as_deref(), Some("18-24"));
        assert_eq!(band("2001-12-02").as_deref(), Some("18-24"));
        assert_eq!(band("2001-12-01").as_deref(), Some("25-34"));
        assert_eq!(band("1961-12-01").as_deref(), Some("65+"));
        assert_eq!(band("1962-06-30").as_deref(), Some("55-64"));
        assert_eq!(band("2030-01-01"), None, "born in the future");
        assert_eq!(band("1990-02-30"), None, "not a date");
        assert_eq!(band("19900101"), None);
        assert_eq!(band("1990-1-1"), None);
        // Born on 29 February: an adult on 1 March of the 18th year, not on 28 February.
        assert_eq!(
            Derivation::AgeBand
                .derive("2008-02-29", day("2026-02-28"))
                .as_deref(),
            Some("<18")
        );
        assert_eq!(
            Derivation::AgeBand
                .derive("2008-02-29", day("2026-03-01"))
                .as_deref(),
            Some("18-24")
        );
    }

    #[test]
    fn the_other_derivations_keep_only_their_part() {
        let today = day("2026-12-01");
        assert_eq!(
            Derivation::Year.derive("1984-07-12", today).as_deref(),
            Some("1984")
        );
        assert_eq!(
            Derivation::EmailDomain
                .derive("Ada.L@Example.COM", today)
                .as_deref(),
            Some("example.com")
        );
        assert_eq!(Derivation::EmailDomain.derive("no-at-sign", today), None);
        assert_eq!(Derivation::EmailDomain.derive("@example.com", today), None);
        assert_eq!(
            Derivation::Prefix(3).derive(" 75011 ", today).as_deref(),
            Some("750")
        );
        assert_eq!(
            Derivation::Prefix(2).derive("ÉÈ12", today).as_deref(),
            Some("ÉÈ"),
            "characters, not bytes"
        );
        assert_eq!(Derivation::Prefix(3).derive("  ", today), None);
    }

    #[test]
    fn spellings_parse_back_and_bad_ones_say_what_is_expected() {
        for d in [
            Derivation::AgeBand,
            Derivation::Year,
            Derivation::EmailDomain,
            Derivation::Prefix(5),
        ] {
            assert_eq!(Derivation::parse(&d.spelling()), Ok(d));
        }
        assert!(Derivation::parse("blur").unwrap_err().contains("age_band"));
        assert!(
            Derivation::parse("prefix(0)")
                .unwrap_err()
                .contains("1 to 16")
        );
        assert!(Derivation::parse("prefix(x)").is_err());
        assert!(Derivation::parse("prefix(99)").is_err());
    }
}
