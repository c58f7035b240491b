//! The record of processing activities (GDPR Art. 30), derived from the catalog and the policies
//! themselves rather than written by hand: for every declared service and every purpose it is
//! registered for (with their children), which fields of which categories the policies let it
//! read, in full or masked, with or without the subject's consent, and how long each is kept.

use serde::Serialize;

use super::{FieldAction, Policies};
use crate::catalog::format_retention;
use crate::domain::{Principal, PrincipalKind, Purpose};

/// The whole record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ropa {
    /// The policy version it was derived from.
    pub policy_version: String,
    /// One entry per declared service.
    pub services: Vec<ServiceProcessing>,
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
            for purpose in &purposes {
                for (field, spec) in catalog.fields() {
                    let access = self.access(&principal, field, purpose);
                    if let Some((access, consent_required)) = access {
                        reads.push(FieldProcessing {
                            purpose: purpose.to_string(),
                            category: spec.category.clone(),
                            field: field.to_string(),
                            access,
                            consent_required,
                            retention: spec.retention_ms.map(format_retention),
                        });
                    }
                }
                for (view, _, spec, _) in catalog.views() {
                    if let Some((_, consent_required)) = self.access(&principal, &view, purpose) {
                        reads.push(FieldProcessing {
                            purpose: purpose.to_string(),
                            category: spec.category.clone(),
                            field: view.to_string(),
                            access: "view",
                            consent_required,
                            retention: spec.retention_ms.map(format_retention),
                        });
                    }
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
        Ropa {
            policy_version: self.version(),
            services,
        }
    }

    /// The widest read `principal` has on `field` for `purpose`: full before masked, without
    /// consent before with it.
    fn access(
        &self,
        principal: &Principal,
        field: &crate::domain::FieldName,
        purpose: &Purpose,
    ) -> Option<(&'static str, bool)> {
        let without = self.field_context(purpose, Default::default());
        let with = self.field_context(
            purpose,
            self.catalog()
                .resolve_consents(std::iter::once((purpose, true))),
        );
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
                "| purpose | category | field | access | consent required | retention |\n",
            );
            out.push_str("| --- | --- | --- | --- | --- | --- |\n");
            for r in &s.reads {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    r.purpose,
                    r.category,
                    r.field,
                    r.access,
                    if r.consent_required { "yes" } else { "no" },
                    r.retention.as_deref().unwrap_or("unlimited"),
                ));
            }
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
