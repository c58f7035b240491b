//! Consent precedence over the purpose hierarchy: which purposes a subject's recorded grants and
//! withdrawals make effective. The rule, for every declared purpose: the record for the purpose
//! itself decides; without one, the record of its nearest ancestor that has one; without any, the
//! purpose has no consent. So an explicit withdrawal of a child is never overridden by a grant of
//! its parent, and a parent's withdrawal covers every child that has no record of its own.

use super::Catalog;
use crate::domain::{OptOutSignal, Purpose};

/// The effective consents of one subject, as Cedar sees them: every purpose listed by name (the
/// hierarchy already applied), both lists sorted, disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EffectiveConsents {
    /// Purposes the subject effectively consents to (`context.consents`).
    pub granted: Vec<Purpose>,
    /// Purposes the subject effectively withdrew (`context.withdrawn`).
    pub withdrawn: Vec<Purpose>,
    /// The opt-out signals the subject sent (`context.signals`), sorted.
    pub signals: Vec<OptOutSignal>,
    /// The subject's policy attributes (`context.subject`). Carried with the consents because
    /// the decisions of a call depend on all of them, and the decision cache keys on this value.
    pub subject: super::SubjectAttributes,
}

impl EffectiveConsents {
    /// Whether the subject recorded nothing that applies.
    pub fn is_empty(&self) -> bool {
        self.granted.is_empty()
            && self.withdrawn.is_empty()
            && self.signals.is_empty()
            && self.subject == super::SubjectAttributes::default()
    }
}

impl Catalog {
    /// Applies the precedence rule to recorded consents: `(purpose, granted)` pairs. Records for
    /// purposes the catalog no longer declares apply to nothing. Should one purpose carry both a
    /// grant and a withdrawal (only a hand-written test case can), the withdrawal wins.
    pub fn resolve_consents<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a Purpose, bool)>,
    ) -> EffectiveConsents {
        let mut recorded: std::collections::BTreeMap<&Purpose, bool> = Default::default();
        for (purpose, granted) in records {
            recorded
                .entry(purpose)
                .and_modify(|g| *g &= granted)
                .or_insert(granted);
        }
        let mut out = EffectiveConsents::default();
        if recorded.is_empty() {
            return out;
        }
        for (purpose, _) in self.purposes() {
            // The hierarchy is acyclic (checked by `parse`), so the walk ends; the bound is a
            // second guard.
            let mut current = Some(purpose);
            let mut steps = 0;
            while let Some(p) = current {
                if let Some(&granted) = recorded.get(p) {
                    if granted {
                        out.granted.push(purpose.clone());
                    } else {
                        out.withdrawn.push(purpose.clone());
                    }
                    break;
                }
                steps += 1;
                current = if steps > self.purposes.len() {
                    None
                } else {
                    self.purposes.get(p).and_then(Option::as_ref)
                };
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::parse(
            "catalog.toml",
            "[purposes.marketing]\n[purposes.email_marketing]\nparent = \"marketing\"\n\
             [purposes.newsletter]\nparent = \"email_marketing\"\n[purposes.fraud]\n",
        )
        .unwrap()
    }

    fn p(name: &str) -> Purpose {
        Purpose::new(name).unwrap()
    }

    fn names(list: &[Purpose]) -> Vec<&str> {
        list.iter().map(Purpose::as_str).collect()
    }

    fn resolve(records: &[(&str, bool)]) -> (Vec<String>, Vec<String>) {
        let owned: Vec<(Purpose, bool)> = records.iter().map(|(n, g)| (p(n), *g)).collect();
        let r = catalog().resolve_consents(owned.iter().map(|(p, g)| (p, *g)));
        let own = |l: &[Purpose]| names(l).into_iter().map(str::to_owned).collect();
        (own(&r.granted), own(&r.withdrawn))
    }

    #[test]
    fn the_most_specific_record_wins_at_every_depth() {
        let none: Vec<String> = Vec::new();
        let all = vec!["email_marketing", "marketing", "newsletter"];
        // Nothing recorded: nothing granted or withdrawn.
        assert_eq!(resolve(&[]), (none.clone(), none.clone()));
        // A parent's record covers every child without one.
        assert_eq!(resolve(&[("marketing", true)]).0, all);
        assert_eq!(resolve(&[("marketing", false)]).1, all);
        // A child's withdrawal is never overridden by the parent's grant, and covers its own
        // children.
        assert_eq!(
            resolve(&[("marketing", true), ("email_marketing", false)]),
            (
                vec!["marketing".into()],
                vec!["email_marketing".into(), "newsletter".into()]
            )
        );
        // A child's grant under a withdrawn parent is the child's own choice.
        assert_eq!(
            resolve(&[("marketing", false), ("email_marketing", true)]),
            (
                vec!["email_marketing".into(), "newsletter".into()],
                vec!["marketing".into()]
            )
        );
        // A grandchild's record beats both ancestors.
        assert_eq!(
            resolve(&[
                ("marketing", true),
                ("email_marketing", false),
                ("newsletter", true)
            ]),
            (
                vec!["marketing".into(), "newsletter".into()],
                vec!["email_marketing".into()]
            )
        );
        // A child's record says nothing about its parent or siblings.
        assert_eq!(
            resolve(&[("email_marketing", true)]),
            (vec!["email_marketing".into(), "newsletter".into()], none)
        );
        // Unrelated purposes stay unrelated; both records on one purpose: withdrawn.
        assert_eq!(
            resolve(&[("fraud", true), ("fraud", false)]),
            (vec![], vec!["fraud".into()])
        );
    }

    #[test]
    fn records_of_undeclared_purposes_apply_to_nothing() {
        assert_eq!(resolve(&[("gone", true)]), (vec![], vec![]));
    }
}
