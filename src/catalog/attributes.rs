//! Subject attributes for policies: fields the catalog names as `policy_attribute` (`region` from
//! a country, `minor` from a birth date) become `context.subject.region` / `context.subject.minor`
//! at decision time, derived from the decrypted value; absent when unknown.

use std::collections::BTreeMap;

use jiff::civil::Date;

use super::view::{age, parse_date};

/// What a field tells the policies about its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyAttribute {
    /// A country code → `context.subject.region`, the `[regions]` entry that lists it.
    Region,
    /// A `YYYY-MM-DD` birth date → `context.subject.minor`, under `[subjects] minor_under`.
    Minor,
}

impl PolicyAttribute {
    /// Parses a catalog spelling.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "region" => Ok(Self::Region),
            "minor" => Ok(Self::Minor),
            other => Err(format!(
                "unknown policy attribute `{}`: expected region or minor",
                other.escape_debug()
            )),
        }
    }

    /// The attribute's name under `context.subject`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Minor => "minor",
        }
    }
}

/// The age under which a subject is a minor when the catalog does not say (GDPR Art. 8's default).
pub const DEFAULT_MINOR_UNDER: i16 = 16;

/// The subject's attributes as the policies see them: each absent when its field is not stored,
/// expired, or not one the catalog can place (a country in no region, a date not a date).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SubjectAttributes {
    /// The region of the subject's country (`context.subject.region`).
    pub region: Option<String>,
    /// Whether the subject is under the catalog's `minor_under` (`context.subject.minor`).
    pub minor: Option<bool>,
}

/// How the catalog derives attributes: its regions (country code → region name) and the age of
/// majority for `minor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeRules {
    pub(super) regions: BTreeMap<String, String>,
    pub(super) minor_under: i16,
}

impl Default for AttributeRules {
    fn default() -> Self {
        Self {
            regions: BTreeMap::new(),
            minor_under: DEFAULT_MINOR_UNDER,
        }
    }
}

impl AttributeRules {
    /// The region names the catalog declares, sorted.
    pub fn region_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.regions.values().cloned().collect();
        names.sort();
        names.dedup();
        names
    }

    /// Sets the attribute `attribute` of `out` from a field's decrypted `value`, on `today`.
    pub fn derive(
        &self,
        attribute: PolicyAttribute,
        value: &str,
        today: Date,
        out: &mut SubjectAttributes,
    ) {
        match attribute {
            PolicyAttribute::Region => {
                out.region = self.regions.get(&value.trim().to_uppercase()).cloned();
            }
            PolicyAttribute::Minor => {
                out.minor = parse_date(value)
                    .and_then(|born| age(born, today))
                    .map(|years| years < self.minor_under);
            }
        }
    }
}

impl AttributeRules {
    /// The first day a subject born as `value` says is no longer a minor (their `minor_under`th
    /// birthday), when the value is a date.
    pub fn adult_from(&self, value: &str) -> Option<Date> {
        let born = parse_date(value)?;
        born.checked_add(jiff::Span::new().years(self.minor_under))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_come_from_the_catalog_rules_and_are_absent_when_unknown() {
        let rules = AttributeRules {
            regions: BTreeMap::from([
                ("FR".to_owned(), "eu".to_owned()),
                ("US".to_owned(), "us".to_owned()),
            ]),
            minor_under: 16,
        };
        let today: Date = "2026-12-01".parse().unwrap();
        let mut attrs = SubjectAttributes::default();
        rules.derive(PolicyAttribute::Region, " fr ", today, &mut attrs);
        assert_eq!(attrs.region.as_deref(), Some("eu"));
        rules.derive(PolicyAttribute::Region, "JP", today, &mut attrs);
        assert_eq!(attrs.region, None, "a country in no region");
        rules.derive(PolicyAttribute::Minor, "2010-12-02", today, &mut attrs);
        assert_eq!(attrs.minor, Some(true));
        rules.derive(PolicyAttribute::Minor, "2010-12-01", today, &mut attrs);
        assert_eq!(attrs.minor, Some(false), "16 today");
        rules.derive(PolicyAttribute::Minor, "not a date", today, &mut attrs);
        assert_eq!(attrs.minor, None);
        assert!(
            PolicyAttribute::parse("age")
                .unwrap_err()
                .contains("region or minor")
        );
    }
}
