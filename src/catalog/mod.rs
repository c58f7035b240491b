//! The field catalog (`policies/catalog.toml`): the purposes callers may state (with their
//! hierarchy), the fields the vault stores (category, mask rule, retention, key class, lookup),
//! the services with the purposes they are registered for, and the subject lifecycle. Whatever is
//! not declared here is refused at the edge.

mod attributes;
mod consent;
mod lookup;
pub mod mask;
mod retention;
mod view;

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use crate::clock::Millis;
use crate::diagnostic::{SourceError, SourceErrors};
use crate::domain::{FieldName, KeyClass, OptOutSignal, Purpose};
pub use attributes::{AttributeRules, DEFAULT_MINOR_UNDER, PolicyAttribute, SubjectAttributes};
pub use consent::EffectiveConsents;
pub use mask::MaskRule;
pub use retention::{format_retention, parse_retention};
pub use view::{Derivation, age, parse_date, utc_date, utc_midnight_ms};

/// The catalog's file name inside the policy directory.
pub const CATALOG_FILE: &str = "catalog.toml";

/// What the catalog says about one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// Its category: `Field::"<name>" in Category::"<category>"`.
    pub category: String,
    /// How MASKED reads show it.
    pub mask: MaskRule,
    /// How long it lives after its last write, if bounded.
    pub retention_ms: Option<Millis>,
    /// The DEK class it is sealed under.
    pub key_class: KeyClass,
    /// Whether subjects can be found by this field's value (blind index).
    pub lookup: bool,
    /// The field's derived views, by view name.
    pub views: BTreeMap<String, Derivation>,
    /// What the field tells the policies about its subject (`context.subject.<attribute>`).
    pub policy_attribute: Option<PolicyAttribute>,
}

impl FieldSpec {
    /// Whether the field's values must be `YYYY-MM-DD` dates, because a view derives from them.
    pub fn holds_dates(&self) -> bool {
        self.views.values().any(|d| d.needs_date())
            || self.policy_attribute == Some(PolicyAttribute::Minor)
    }
}

/// A service's read budget: at most `subjects` distinct subjects per `window_ms`, per purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBudget {
    /// Distinct subjects per window.
    pub subjects: u64,
    /// The window.
    pub window_ms: Millis,
}

impl ReadBudget {
    /// Parses `N/<duration>` (`5000/1h`; durations as for retention: s, m, h, d).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "read_budget `{}` is not N/<duration> (e.g. 5000/1h)",
                text.escape_debug()
            )
        };
        let (n, window) = text.split_once('/').ok_or_else(bad)?;
        let subjects: u64 = n.trim().parse().map_err(|_| bad())?;
        if subjects == 0 {
            return Err(bad());
        }
        let window_ms = parse_retention(window.trim()).map_err(|_| bad())?;
        Ok(Self {
            subjects,
            window_ms,
        })
    }
}

/// A field reference resolved against the catalog: the stored field, and the view when the
/// reference names one.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// The stored field (for a view, the field it derives from).
    pub field: &'a FieldName,
    /// The stored field's spec.
    pub spec: &'a FieldSpec,
    /// The view, when the reference is `<field>.<view>`.
    pub view: Option<Derivation>,
}

/// The parsed, checked catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    purposes: BTreeMap<Purpose, Option<Purpose>>,
    // The purposes opt-out signals cover: `(sale_or_share, profiling)`, for purposes marked.
    marks: BTreeMap<Purpose, (bool, bool)>,
    // Purposes marked `legal_claims`, the only ones that read what a legal hold kept of an
    // erased subject (and their children).
    legal_claims: BTreeSet<Purpose>,
    // Purposes marked `extract`, the only ones `Vault/Extract` reads many subjects for.
    extractable: BTreeSet<Purpose>,
    fields: BTreeMap<FieldName, FieldSpec>,
    services: BTreeMap<String, BTreeSet<Purpose>>,
    budgets: BTreeMap<String, ReadBudget>,
    shred_when_empty: bool,
    attribute_rules: AttributeRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    purposes: BTreeMap<Spanned<String>, RawPurpose>,
    #[serde(default)]
    fields: BTreeMap<Spanned<String>, RawField>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, RawService>,
    #[serde(default)]
    subjects: RawSubjects,
    /// Region name → the country codes in it, for `policy_attribute = "region"`.
    #[serde(default)]
    regions: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    purposes: Vec<Spanned<String>>,
    read_budget: Option<Spanned<String>>,
    #[serde(default)]
    #[expect(dead_code, reason = "documentation for humans, accepted and ignored")]
    description: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSubjects {
    #[serde(default)]
    shred_when_empty: bool,
    minor_under: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    parent: Option<Spanned<String>>,
    #[serde(default)]
    sale_or_share: bool,
    #[serde(default)]
    profiling: bool,
    #[serde(default)]
    legal_claims: bool,
    #[serde(default)]
    extract: bool,
    #[serde(default)]
    #[expect(dead_code, reason = "documentation for humans, accepted and ignored")]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    category: Spanned<String>,
    mask: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    key_class: Option<Spanned<String>>,
    #[serde(default)]
    lookup: bool,
    #[serde(default)]
    views: BTreeMap<Spanned<String>, Spanned<String>>,
    policy_attribute: Option<Spanned<String>>,
}

impl Catalog {
    /// Parses and checks `text`, the contents of the file named `file`.
    pub fn parse(file: &str, text: &str) -> Result<Self, SourceErrors> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            SourceErrors(vec![SourceError::at_offset(
                file,
                text,
                offset,
                e.message().to_lowercase(),
            )])
        })?;
        let mut errors = Vec::new();
        let at = |span: std::ops::Range<usize>, msg: String| {
            SourceError::at_offset(file, text, span.start, msg)
        };

        let mut purposes = BTreeMap::new();
        for name in raw.purposes.keys() {
            match Purpose::new(name.get_ref().clone()) {
                Ok(p) => {
                    purposes.insert(p, None);
                }
                Err(e) => errors.push(at(name.span(), e.0)),
            }
        }
        for (name, spec) in &raw.purposes {
            let (Ok(purpose), Some(parent)) = (Purpose::new(name.get_ref().clone()), &spec.parent)
            else {
                continue;
            };
            match Purpose::new(parent.get_ref().clone()) {
                Ok(p) if purposes.contains_key(&p) => {
                    purposes.insert(purpose, Some(p));
                }
                Ok(p) => errors.push(at(
                    parent.span(),
                    format!("purpose `{purpose}` names parent `{p}`, which is not declared"),
                )),
                Err(e) => errors.push(at(parent.span(), e.0)),
            }
        }
        let marks = raw
            .purposes
            .iter()
            .filter(|(_, spec)| spec.sale_or_share || spec.profiling)
            .filter_map(|(name, spec)| {
                let purpose = Purpose::new(name.get_ref().clone()).ok()?;
                Some((purpose, (spec.sale_or_share, spec.profiling)))
            })
            .collect();
        let legal_claims: BTreeSet<Purpose> = raw
            .purposes
            .iter()
            .filter(|(_, spec)| spec.legal_claims)
            .filter_map(|(name, _)| Purpose::new(name.get_ref().clone()).ok())
            .collect();
        let extractable: BTreeSet<Purpose> = raw
            .purposes
            .iter()
            .filter(|(_, spec)| spec.extract)
            .filter_map(|(name, _)| Purpose::new(name.get_ref().clone()).ok())
            .collect();
        if let Some(purpose) = first_cycle(&purposes) {
            errors.push(SourceError::in_file(
                file,
                format!("purpose `{purpose}` is its own ancestor"),
            ));
        }

        let mut fields = BTreeMap::new();
        for (name, spec) in &raw.fields {
            match parse_field(spec) {
                Ok(parsed) => match FieldName::new(name.get_ref().clone()) {
                    Ok(field) if field.is_view() => errors.push(at(
                        name.span(),
                        format!(
                            "field `{field}`: a field name has no `.` (`<field>.<view>` names a \
                             view, declared under the field's `views`)"
                        ),
                    )),
                    Ok(field) => {
                        fields.insert(field, parsed);
                    }
                    Err(e) => errors.push(at(name.span(), e.0)),
                },
                Err((span, msg)) => errors.push(at(span, msg)),
            }
        }
        let mut services = BTreeMap::new();
        let mut budgets = BTreeMap::new();
        for (name, spec) in &raw.services {
            if let Some(budget) = &spec.read_budget {
                match ReadBudget::parse(budget.get_ref()) {
                    Ok(b) => {
                        budgets.insert(name.get_ref().clone(), b);
                    }
                    Err(e) => errors.push(at(budget.span(), e)),
                }
            }
            if !crate::domain::is_plain_name(name.get_ref()) {
                errors.push(at(
                    name.span(),
                    format!(
                        "service `{}` is not a valid name ([a-z][a-z0-9_]*)",
                        name.get_ref()
                    ),
                ));
                continue;
            }
            let mut registered = BTreeSet::new();
            for purpose in &spec.purposes {
                match Purpose::new(purpose.get_ref().clone()) {
                    Ok(p) if purposes.contains_key(&p) => {
                        registered.insert(p);
                    }
                    Ok(p) => errors.push(at(
                        purpose.span(),
                        format!(
                            "service `{}` names purpose `{p}`, which is not declared",
                            name.get_ref()
                        ),
                    )),
                    Err(e) => errors.push(at(purpose.span(), e.0)),
                }
            }
            services.insert(name.get_ref().clone(), registered);
        }
        let mut attribute_rules = AttributeRules::default();
        if let Some(n) = &raw.subjects.minor_under {
            match i16::try_from(*n.get_ref()) {
                Ok(age) if (1..=25).contains(&age) => attribute_rules.minor_under = age,
                _ => errors.push(at(
                    n.span(),
                    "minor_under is an age from 1 to 25".to_owned(),
                )),
            }
        }
        for (region, countries) in &raw.regions {
            if !crate::domain::is_plain_name(region.get_ref()) {
                errors.push(at(
                    region.span(),
                    format!(
                        "region `{}` is not a valid name ([a-z][a-z0-9_]*)",
                        region.get_ref()
                    ),
                ));
            }
            for country in countries {
                let code = country.get_ref().trim().to_uppercase();
                if let Some(other) = attribute_rules
                    .regions
                    .insert(code.clone(), region.get_ref().clone())
                {
                    errors.push(at(
                        country.span(),
                        format!("country `{code}` is in region `{other}` already"),
                    ));
                }
            }
        }
        let mut seen = BTreeMap::new();
        for (name, spec) in &fields {
            if let Some(attribute) = spec.policy_attribute
                && let Some(first) = seen.insert(attribute, name.clone())
            {
                errors.push(SourceError::in_file(
                    file,
                    format!(
                        "fields `{first}` and `{name}` both give policy attribute `{}`",
                        attribute.name()
                    ),
                ));
            }
        }
        if seen.contains_key(&PolicyAttribute::Region) && attribute_rules.regions.is_empty() {
            errors.push(SourceError::in_file(
                file,
                "policy attribute `region` needs a [regions] table (region = [country codes])"
                    .to_owned(),
            ));
        }
        if errors.is_empty() {
            Ok(Self {
                budgets,
                attribute_rules,
                purposes,
                marks,
                legal_claims,
                extractable,
                fields,
                services,
                shred_when_empty: raw.subjects.shred_when_empty,
            })
        } else {
            Err(SourceErrors(errors))
        }
    }

    /// The spec of `field`, if declared (a stored field, never a view).
    pub fn field(&self, field: &FieldName) -> Option<&FieldSpec> {
        self.fields.get(field)
    }

    /// Resolves a field or view reference, if the catalog declares it.
    pub fn resolve<'a>(&'a self, name: &FieldName) -> Option<Resolved<'a>> {
        match name.as_view() {
            None => {
                let (field, spec) = self.fields.get_key_value(name)?;
                Some(Resolved {
                    field,
                    spec,
                    view: None,
                })
            }
            Some((field, view)) => {
                let (field, spec) = self.fields.get_key_value(field)?;
                Some(Resolved {
                    field,
                    spec,
                    view: Some(*spec.views.get(view)?),
                })
            }
        }
    }

    /// Every declared view, as the `<field>.<view>` reference callers name, with the field it
    /// derives from and how.
    pub fn views(&self) -> impl Iterator<Item = (FieldName, &FieldName, &FieldSpec, Derivation)> {
        self.fields.iter().flat_map(|(field, spec)| {
            spec.views.iter().filter_map(move |(view, derivation)| {
                let name = FieldName::new(format!("{field}.{view}")).ok()?;
                Some((name, field, spec, *derivation))
            })
        })
    }

    /// Whether `purpose` is declared.
    pub fn has_purpose(&self, purpose: &Purpose) -> bool {
        self.purposes.contains_key(purpose)
    }

    /// Every declared purpose with its parent.
    pub fn purposes(&self) -> impl Iterator<Item = (&Purpose, Option<&Purpose>)> {
        self.purposes.iter().map(|(p, parent)| (p, parent.as_ref()))
    }

    /// Every declared field with its spec.
    pub fn fields(&self) -> impl Iterator<Item = (&FieldName, &FieldSpec)> {
        self.fields.iter()
    }

    /// The key class `field` is sealed under: its catalog class, or `default` for a field dropped
    /// from the catalog since it was written (still the subject's data).
    pub fn key_class_of(&self, field: &FieldName) -> KeyClass {
        self.field(field)
            .map_or_else(KeyClass::default_class, |s| s.key_class.clone())
    }

    /// Every declared service with the purposes it is registered for (GDPR Art. 30).
    pub fn services(&self) -> impl Iterator<Item = (&str, &BTreeSet<Purpose>)> {
        self.services.iter().map(|(s, p)| (s.as_str(), p))
    }

    /// The fields that give policy attributes, with the attribute each gives.
    pub fn attribute_fields(
        &self,
    ) -> impl Iterator<Item = (&FieldName, &FieldSpec, PolicyAttribute)> {
        self.fields
            .iter()
            .filter_map(|(f, s)| Some((f, s, s.policy_attribute?)))
    }

    /// How attributes are derived from their fields' values.
    pub fn attribute_rules(&self) -> &AttributeRules {
        &self.attribute_rules
    }

    /// The read budget of service `name`, if the catalog gives it one.
    pub fn read_budget(&self, name: &str) -> Option<ReadBudget> {
        self.budgets.get(name).copied()
    }

    /// Whether a subject left with no stored field is shredded automatically.
    pub fn shred_when_empty(&self) -> bool {
        self.shred_when_empty
    }

    /// The purposes `signal` withdraws: every purpose the catalog marks as covered by it
    /// (`sale_or_share`, `profiling`) and every purpose below one.
    pub fn covered_by(&self, signal: OptOutSignal) -> BTreeSet<Purpose> {
        self.marks
            .iter()
            .filter(|(_, (sale, profiling))| signal.covers(*sale, *profiling))
            .flat_map(|(purpose, _)| self.purpose_and_descendants(purpose))
            .collect()
    }

    /// Whether `purpose` (or a purpose above it) is marked `legal_claims`: establishing,
    /// exercising or defending legal claims, the one use of what a legal hold keeps after a shred.
    pub fn is_legal_claims(&self, purpose: &Purpose) -> bool {
        self.legal_claims
            .iter()
            .any(|marked| self.purpose_and_descendants(marked).contains(purpose))
    }

    /// Whether `purpose` (or a purpose above it) is marked `extract`: `Vault/Extract` may read
    /// many subjects for it (training sets).
    pub fn is_extractable(&self, purpose: &Purpose) -> bool {
        self.extractable
            .iter()
            .any(|marked| self.purpose_and_descendants(marked).contains(purpose))
    }

    /// Whether the catalog marks `purpose` as a sale or sharing of data, and as profiling.
    pub fn marks_of(&self, purpose: &Purpose) -> (bool, bool) {
        self.marks.get(purpose).copied().unwrap_or_default()
    }

    /// The purpose and every purpose below it in the hierarchy.
    pub fn purpose_and_descendants(&self, purpose: &Purpose) -> BTreeSet<Purpose> {
        let mut out = BTreeSet::from([purpose.clone()]);
        // The hierarchy is acyclic (checked by `parse`), so this terminates.
        loop {
            let before = out.len();
            for (p, parent) in &self.purposes {
                if parent.as_ref().is_some_and(|parent| out.contains(parent)) {
                    out.insert(p.clone());
                }
            }
            if out.len() == before {
                return out;
            }
        }
    }

    /// Every category some field belongs to.
    pub fn categories(&self) -> BTreeSet<&str> {
        self.fields.values().map(|f| f.category.as_str()).collect()
    }

    /// The fields that `next` seals under another key class than this catalog: their stored values
    /// would no longer open (their DEK is looked up by class), so such a change is refused.
    pub fn key_class_changes<'a>(
        &'a self,
        next: &'a Catalog,
    ) -> Vec<(&'a FieldName, &'a KeyClass, &'a KeyClass)> {
        self.fields
            .iter()
            .filter_map(|(name, spec)| {
                let now = &next.fields.get(name)?.key_class;
                (now != &spec.key_class).then_some((name, &spec.key_class, now))
            })
            .collect()
    }

    /// Every key class some field is sealed under.
    pub fn key_classes(&self) -> BTreeSet<KeyClass> {
        self.fields.values().map(|f| f.key_class.clone()).collect()
    }
}

type FieldError = (std::ops::Range<usize>, String);

fn parse_field(spec: &RawField) -> Result<FieldSpec, FieldError> {
    let category = spec.category.get_ref();
    crate::domain::is_plain_name(category)
        .then_some(())
        .ok_or_else(|| {
            (
                spec.category.span(),
                format!("category `{category}` is not a valid name ([a-z][a-z0-9_]*)"),
            )
        })?;
    let mask = match &spec.mask {
        None => MaskRule::Redact,
        Some(m) => MaskRule::parse(m.get_ref()).ok_or_else(|| {
            (
                m.span(),
                format!(
                    "unknown mask `{}`: expected email, phone, last4 or redact",
                    m.get_ref()
                ),
            )
        })?,
    };
    let retention_ms = match &spec.retention {
        None => None,
        Some(r) => Some(parse_retention(r.get_ref()).map_err(|e| (r.span(), e))?),
    };
    let key_class = match &spec.key_class {
        None => KeyClass::default_class(),
        Some(k) if k.get_ref() == "all" => {
            return Err((
                k.span(),
                "key class `all` is reserved: a legal hold names it for every class".into(),
            ));
        }
        Some(k) => KeyClass::new(k.get_ref().clone()).map_err(|e| (k.span(), e.0))?,
    };
    let mut views = BTreeMap::new();
    for (name, derivation) in &spec.views {
        if !crate::domain::is_plain_name(name.get_ref()) {
            return Err((
                name.span(),
                format!(
                    "view `{}` is not a valid name ([a-z][a-z0-9_]*)",
                    name.get_ref().escape_debug()
                ),
            ));
        }
        let derivation =
            Derivation::parse(derivation.get_ref()).map_err(|e| (derivation.span(), e))?;
        views.insert(name.get_ref().clone(), derivation);
    }
    let policy_attribute = match &spec.policy_attribute {
        None => None,
        Some(a) => Some(PolicyAttribute::parse(a.get_ref()).map_err(|e| (a.span(), e))?),
    };
    Ok(FieldSpec {
        category: category.clone(),
        mask,
        retention_ms,
        key_class,
        lookup: spec.lookup,
        views,
        policy_attribute,
    })
}

/// A purpose that is its own ancestor, if the hierarchy has a cycle.
fn first_cycle(purposes: &BTreeMap<Purpose, Option<Purpose>>) -> Option<&Purpose> {
    purposes.keys().find(|start| {
        let mut current = purposes.get(*start).and_then(Option::as_ref);
        for _ in 0..=purposes.len() {
            match current {
                Some(p) if p == *start => return true,
                Some(p) => current = purposes.get(p).and_then(Option::as_ref),
                None => return false,
            }
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shipped_catalog() {
        let text = include_str!("../../policies/catalog.toml");
        let catalog = Catalog::parse("catalog.toml", text).unwrap();
        let email = catalog.field(&FieldName::new("email").unwrap()).unwrap();
        assert_eq!(email.mask, MaskRule::Email);
        assert_eq!(email.category, "contact");
        assert!(catalog.has_purpose(&Purpose::new("email_marketing").unwrap()));
    }

    #[test]
    fn errors_point_at_the_bad_value() {
        let text = "[fields.email]\ncategory = \"contact\"\nmask = \"blur\"\n";
        let err = Catalog::parse("catalog.toml", text).unwrap_err();
        assert_eq!(err.0.len(), 1);
        let e = &err.0[0];
        assert_eq!((e.line, e.column), (3, 8), "{e}");
        assert!(e.message.contains("unknown mask `blur`"));
    }

    #[test]
    fn undeclared_parent_and_cycles_are_refused() {
        let text = "[purposes.a]\nparent = \"b\"\n";
        assert!(
            Catalog::parse("c", text)
                .unwrap_err()
                .to_string()
                .contains("not declared")
        );
        let text = "[purposes.a]\nparent = \"b\"\n[purposes.b]\nparent = \"a\"\n";
        assert!(
            Catalog::parse("c", text)
                .unwrap_err()
                .to_string()
                .contains("own ancestor")
        );
    }

    #[test]
    fn services_register_declared_purposes_only() {
        let text = "[purposes.fraud]\n[services.fraud_engine]\npurposes = [\"fraud\"]\n";
        let catalog = Catalog::parse("c", text).unwrap();
        let (name, purposes) = catalog.services().next().unwrap();
        assert_eq!(name, "fraud_engine");
        assert!(purposes.contains(&Purpose::new("fraud").unwrap()));
        let text = "[purposes.fraud]\n[services.x]\npurposes = [\"ads\"]\n";
        let err = Catalog::parse("c", text).unwrap_err().to_string();
        assert!(
            err.contains("purpose `ads`, which is not declared"),
            "{err}"
        );
    }

    #[test]
    fn descendants_follow_the_hierarchy() {
        let text = include_str!("../../policies/catalog.toml");
        let catalog = Catalog::parse("catalog.toml", text).unwrap();
        let below = catalog.purpose_and_descendants(&Purpose::new("marketing").unwrap());
        assert!(below.contains(&Purpose::new("email_marketing").unwrap()));
        assert!(!below.contains(&Purpose::new("fraud").unwrap()));
    }

    #[test]
    fn signals_cover_the_marked_purposes_and_their_children() {
        let text = "[purposes.ads]\nsale_or_share = true\n[purposes.retargeting]\nparent = \"ads\"\n\
                    [purposes.personalization]\nprofiling = true\n[purposes.fraud]\n";
        let catalog = Catalog::parse("c", text).unwrap();
        let names = |signal| {
            catalog
                .covered_by(signal)
                .into_iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(OptOutSignal::Gpc), ["ads", "retargeting"]);
        assert_eq!(names(OptOutSignal::DoNotSell), ["ads", "retargeting"]);
        assert_eq!(names(OptOutSignal::ObjectToProfiling), ["personalization"]);
    }

    #[test]
    fn read_budgets_parse_and_bad_ones_point_at_the_value() {
        assert_eq!(
            ReadBudget::parse("5000/1h"),
            Ok(ReadBudget {
                subjects: 5000,
                window_ms: 3_600_000
            })
        );
        for bad in ["5000", "0/1h", "x/1h", "10/forever"] {
            assert!(ReadBudget::parse(bad).is_err(), "{bad}");
        }
        let text = "[purposes.p]\n[services.s]\npurposes = [\"p\"]\nread_budget = \"lots\"\n";
        let err = Catalog::parse("c", text).unwrap_err();
        assert_eq!(err.0[0].line, 4, "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "[fields.email]\ncategory = \"contact\"\ncolour = \"red\"\n";
        assert!(Catalog::parse("c", text).is_err());
    }
}
