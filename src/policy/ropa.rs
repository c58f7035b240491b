//! The record of processing activities (GDPR Art. 30), derived from the catalog and the policies
//! themselves rather than written by hand: for every declared service and every purpose it is
//! registered for (with their children), which fields of which categories the policies let it
//! read, in full or masked, with or without the subject's consent, only for some customers (a
//! region, adults), and how long each is kept; and the exceptions to erasure (legal holds).

use serde::Serialize;

use super::{FieldAction, Policies};
use crate::catalog::{SubjectAttributes, format_retention};
use crate::domain::{Principal, PrincipalKind, Purpose};

/// The whole record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ropa {
    /// The policy version it was derived from.
    pub policy_version: String,
    /// One entry per declared service.
    pub services: Vec<ServiceProcessing>,
    /// The key classes, with their fields: what a legal hold can keep through an erasure.
    pub key_classes: Vec<KeyClassFields>,
    /// The purposes (marked `legal_claims`) that alone read what a legal hold kept of an erased
    /// customer (GDPR Art. 17(3)(e)).
    pub legal_hold_purposes: Vec<String>,
    /// The purposes (marked `extract`) `Vault/Extract` reads for many customers at once
    /// (training sets), whose rows `Vault/ExtractRevocations` revokes.
    pub extract_purposes: Vec<String>,
}

/// One key class and the fields sealed under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyClassFields {
    /// The key class.
    pub key_class: String,
    /// Its fields.
    pub fields: Vec<String>,
}

/// What one service may process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceProcessing {
    /// The service name (`Service::"<name>"`).
    pub service: String,
    /// The purposes the catalog registers it for.
    pub registered_purposes: Vec<String>,
    /// Every field it may read, per purpose.
    pub reads: Vec<FieldProcessing>,
}

/// One field a service may read for one purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProcessing {
    /// The stated purpose.
    pub purpose: String,
    /// The field's category.
    pub category: String,
    /// The field, or the view (`birth_date.age_band`).
    pub field: String,
    /// `full`, `masked`, or `view` (only the derived value of a view).
    pub access: &'static str,
    /// Whether the read needs the subject's consent to the purpose.
    pub consent_required: bool,
    /// Which customers the policies allow the read for, by their policy attributes: `any`,
    /// `only region = us` (never for a customer of unknown or another region), or
    /// `all but minor = true`.
    pub customers: String,
    /// How long the field is kept after its last write; `None` for no limit.
    pub retention: Option<String>,
}

impl Policies {
    /// Derives the record of processing from this policy set and its catalog.
    pub fn record_of_processing(&self) -> Ropa {
        let catalog = self.catalog();
        let mut services = Vec::new();
        for (name, registered) in catalog.services() {
            let Ok(principal) = Principal::new(PrincipalKind::Service, name) else {
                continue;
            };
            let mut purposes: Vec<Purpose> = registered
                .iter()
                .flat_map(|p| catalog.purpose_and_descendants(p))
                .collect();
            purposes.sort();
            purposes.dedup();
            let mut reads = Vec::new();
            let views: Vec<_> = catalog.views().collect();
            let stored = catalog
                .fields()
                .map(|(field, spec)| (field.clone(), spec, false));
            let derived = views
                .iter()
                .map(|(view, _, spec, _)| (view.clone(), *spec, true));
            let all: Vec<_> = stored.chain(derived).collect();
            for purpose in &purposes {
                for (field, spec, is_view) in &all {
                    let Some((access, consent_required, customers)) =
                        self.access_for_anyone(&principal, field, purpose)
                    else {
                        continue;
                    };
                    reads.push(FieldProcessing {
                        purpose: purpose.to_string(),
                        category: spec.category.clone(),
                        field: field.to_string(),
                        access: if *is_view { "view" } else { access },
                        consent_required,
                        customers,
                        retention: spec.retention_ms.map(format_retention),
                    });
                }
            }
            reads.sort_by(|a, b| {
                (&a.purpose, &a.category, &a.field).cmp(&(&b.purpose, &b.category, &b.field))
            });
            services.push(ServiceProcessing {
                service: name.to_owned(),
                registered_purposes: registered.iter().map(ToString::to_string).collect(),
                reads,
            });
        }
        let key_classes = catalog
            .key_classes()
            .into_iter()
            .map(|class| KeyClassFields {
                fields: catalog
                    .fields()
                    .filter(|(_, spec)| spec.key_class == class)
                    .map(|(f, _)| f.to_string())
                    .collect(),
                key_class: class.to_string(),
            })
            .collect();
        let mut legal_hold_purposes: Vec<String> = catalog
            .purposes()
            .map(|(p, _)| p)
            .filter(|p| catalog.is_legal_claims(p))
            .map(ToString::to_string)
            .collect();
        legal_hold_purposes.sort();
        let mut extract_purposes: Vec<String> = catalog
            .purposes()
            .map(|(p, _)| p)
            .filter(|p| catalog.is_extractable(p))
            .map(ToString::to_string)
            .collect();
        extract_purposes.sort();
        Ropa {
            policy_version: self.version(),
            services,
            key_classes,
            legal_hold_purposes,
            extract_purposes,
        }
    }

    /// The widest read `principal` has on `field` for `purpose` for a customer of whom nothing is
    /// known, or else for the customers some policy attribute singles out: the access, whether
    /// consent is needed, and which customers (see [`FieldProcessing::customers`]).
    fn access_for_anyone(
        &self,
        principal: &Principal,
        field: &crate::domain::FieldName,
        purpose: &Purpose,
    ) -> Option<(&'static str, bool, String)> {
        let unknown = self.access(principal, field, purpose, &Default::default());
        let rules = self.catalog().attribute_rules();
        let regions = rules.region_names().into_iter().map(|region| {
            let attrs = SubjectAttributes {
                region: Some(region.clone()),
                minor: None,
            };
            (format!("region = {region}"), attrs)
        });
        let ages = [false, true].into_iter().map(|minor| {
            let attrs = SubjectAttributes {
                region: None,
                minor: Some(minor),
            };
            (format!("minor = {minor}"), attrs)
        });
        let mut widest: Option<(&'static str, bool)> = None;
        let (mut allowed, mut refused) = (Vec::new(), Vec::new());
        for (label, attrs) in regions.chain(ages) {
            match self.access(principal, field, purpose, &attrs) {
                Some(found) => {
                    widest.get_or_insert(found);
                    allowed.push(label);
                }
                None => refused.push(label),
            }
        }
        match unknown {
            Some((access, consent)) if refused.is_empty() => Some((access, consent, "any".into())),
            Some((access, consent)) => {
                Some((access, consent, format!("all but {}", refused.join(", "))))
            }
            None => widest.map(|(access, consent)| {
                (access, consent, format!("only {}", allowed.join(" or ")))
            }),
        }
    }

    /// The widest read `principal` has on `field` for `purpose`: full before masked, without
    /// consent before with it.
    fn access(
        &self,
        principal: &Principal,
        field: &crate::domain::FieldName,
        purpose: &Purpose,
        subject: &SubjectAttributes,
    ) -> Option<(&'static str, bool)> {
        let without = self.field_context(
            purpose,
            crate::catalog::EffectiveConsents {
                subject: subject.clone(),
                ..Default::default()
            },
        );
        let mut consented = self
            .catalog()
            .resolve_consents(std::iter::once((purpose, true)));
        consented.subject = subject.clone();
        let with = self.field_context(purpose, consented);
        let allowed =
            |action, context| self.decide_field(principal, action, field, context).allowed;
        [
            (FieldAction::Read, "full", &without, false),
            (FieldAction::Read, "full", &with, true),
            (FieldAction::ReadMasked, "masked", &without, false),
            (FieldAction::ReadMasked, "masked", &with, true),
        ]
        .into_iter()
        .filter(|(action, ..)| !field.is_view() || *action == FieldAction::Read)
        .find(|(action, _, context, _)| allowed(*action, *context))
        .map(|(_, access, _, consent)| (access, consent))
    }
}

impl Ropa {
    /// The record as Markdown, one section per service.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# Record of processing activities (GDPR Art. 30)\n\nDerived from catalog.toml and \
             the Cedar policies, version `{}`.\n",
            self.policy_version
        );
        for s in &self.services {
            out.push_str(&format!(
                "\n## Service `{}`\n\nRegistered purposes: {}\n\n",
                s.service,
                s.registered_purposes.join(", ")
            ));
            if s.reads.is_empty() {
                out.push_str("Reads no field.\n");
                continue;
            }
            out.push_str(
                "| purpose | category | field | access | consent required | retention | customers |\n",
            );
            out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
            for r in &s.reads {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    r.purpose,
                    r.category,
                    r.field,
                    r.access,
                    if r.consent_required { "yes" } else { "no" },
                    r.retention.as_deref().unwrap_or("unlimited"),
                    r.customers,
                ));
            }
        }
        out.push_str(
            "\n## Exceptions to erasure (legal holds, GDPR Art. 17(3)(e))\n\nA legal hold \
             (`Vault/PlaceHold`) keeps a key class of a customer through a shred until it is \
             released or lapses; what it keeps is read only for ",
        );
        if self.legal_hold_purposes.is_empty() {
            out.push_str("no purpose (the catalog marks none `legal_claims`).\n\n");
        } else {
            out.push_str(&format!("{}.\n\n", self.legal_hold_purposes.join(", ")));
        }
        out.push_str("| key class | fields |\n| --- | --- |\n");
        for k in &self.key_classes {
            out.push_str(&format!("| {} | {} |\n", k.key_class, k.fields.join(", ")));
        }
        out.push_str(
            "\n## Bulk extraction (training sets)\n\n`Vault/Extract` reads many customers at once \
             only for ",
        );
        if self.extract_purposes.is_empty() {
            out.push_str("no purpose (the catalog marks none `extract`).\n");
        } else {
            out.push_str(&format!(
                "{}: each customer decided as a read above, rows keyed by pseudonyms scoped to \
                 the extract, revoked when the customer is shredded, withdraws or objects.\n",
                self.extract_purposes.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_shipped_record_follows_the_policies() {
        let policies =
            Policies::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
        let ropa = policies.record_of_processing();
        let service = |name: &str| ropa.services.iter().find(|s| s.service == name).unwrap();

        let recommender = service("recommender");
        assert!(
            recommender
                .reads
                .iter()
                .all(|r| r.purpose == "personalization"
                    && (r.category == "preferences"
                        || r.category == "behavior"
                        || r.field == "birth_date.age_band"))
        );
        assert!(
            recommender
                .reads
                .iter()
                .any(|r| r.field == "birth_date.age_band" && r.access == "view")
        );
        assert!(!recommender.reads.iter().any(|r| r.field == "birth_date"));
        assert!(
            recommender
                .reads
                .iter()
                .any(|r| r.field == "recent_views" && r.retention.as_deref() == Some("90d"))
        );

        let mailer = service("mailer");
        assert!(!mailer.reads.is_empty());
        assert!(
            mailer
                .reads
                .iter()
                .all(|r| r.field == "email" && r.consent_required)
        );
        assert!(mailer.reads.iter().any(|r| r.purpose == "email_marketing"));

        let support = service("support");
        assert!(
            support
                .reads
                .iter()
                .any(|r| r.field == "payment_card" && r.access == "masked")
        );
        assert!(
            ropa.to_markdown()
                .contains("| support | payment | payment_card | masked | no | 1095d |")
        );
    }
}
