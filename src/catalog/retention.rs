//! Retention durations as written in the catalog: a positive integer and a unit (`30s`, `15m`,
//! `12h`, `1095d`).

use crate::clock::Millis;

/// Parses a retention such as `"1095d"` into milliseconds.
pub fn parse_retention(text: &str) -> Result<Millis, String> {
    let bad = || format!("retention `{text}` is not a positive number with a unit s, m, h or d");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = (
        text.get(..split).ok_or_else(bad)?,
        text.get(split..).ok_or_else(bad)?,
    );
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(unit_ms) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(bad()),
    }
}

/// The catalog spelling of a retention: the largest unit that divides it (`1095d`, `90m`).
pub fn format_retention(ms: Millis) -> String {
    [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ]
    .iter()
    .find(|(_, unit)| ms.is_multiple_of(*unit))
    .map_or_else(
        || format!("{ms}ms"),
        |(name, unit)| format!("{}{name}", ms / unit),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_round_trips() {
        for text in ["30s", "15m", "12h", "1095d"] {
            assert_eq!(format_retention(parse_retention(text).unwrap()), text);
        }
    }

    #[test]
    fn units_parse() {
        assert_eq!(parse_retention("30s"), Ok(30_000));
        assert_eq!(parse_retention("2d"), Ok(172_800_000));
        assert!(parse_retention("0d").is_err());
        assert!(parse_retention("d").is_err());
        assert!(parse_retention("5w").is_err());
        assert!(parse_retention("").is_err());
        assert!(parse_retention("99999999999999999999d").is_err());
    }
}
