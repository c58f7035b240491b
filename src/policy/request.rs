//! A single access request as the security team writes it (in tests and `policy explain`), and
//! its evaluation without the cache.

use std::fmt;

use super::{AdminAction, Decision, FieldAction, Policies};
use crate::catalog::SubjectAttributes;
use crate::domain::{FieldName, OptOutSignal, Principal, Purpose};

/// One request to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessRequest {
    /// A per-field action.
    Field {
        /// The caller.
        principal: Principal,
        /// The action.
        action: FieldAction,
        /// The field.
        field: FieldName,
        /// The stated purpose.
        purpose: Purpose,
        /// The purposes the subject recorded a grant for.
        consents: Vec<Purpose>,
        /// The purposes the subject recorded a withdrawal for.
        withdrawn: Vec<Purpose>,
        /// The opt-out signals the subject sent (each also withdraws the purposes it covers).
        signals: Vec<OptOutSignal>,
        /// The subject's policy attributes (`context.subject`).
        subject: SubjectAttributes,
    },
    /// A policy administration action.
    Admin {
        /// The caller.
        principal: Principal,
        /// The action.
        action: AdminAction,
    },
    /// `Action::"consent_write"` (with the purpose) or `Action::"consent_read"` on the subject.
    Consent {
        /// The caller.
        principal: Principal,
        /// The purpose consented to, for a write; `None` for a read.
        write: Option<Purpose>,
    },
    /// `Action::"export"` on the subject.
    Export {
        /// The caller.
        principal: Principal,
    },
    /// `Action::"shred"` on the subject.
    Shred {
        /// The caller.
        principal: Principal,
        /// The stated reason.
        reason: String,
    },
    /// `Action::"hold"` on the subject: placing or releasing a legal hold.
    Hold {
        /// The caller.
        principal: Principal,
        /// The key class held, or `all`.
        key_class: String,
        /// The stated reason (the case).
        reason: String,
        /// A release rather than a placement.
        release: bool,
    },
}

impl FieldAction {
    /// Parses an action name of the schema's per-field actions.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "read_masked" => Some(Self::ReadMasked),
            "write" => Some(Self::Write),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// What a person states about the subject and the call for a request: the purposes the subject
/// recorded a grant for and those it recorded a withdrawal for (resolved over the hierarchy when
/// the request is decided), the opt-out signals it sent, its policy attributes and, for a hold,
/// the key class and whether it is a release.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    /// Purposes granted.
    pub granted: &'a [String],
    /// Purposes withdrawn.
    pub withdrawn: &'a [String],
    /// Opt-out signals sent (`gpc`, `do_not_sell`, `object_to_profiling`).
    pub signals: &'a [String],
    /// The subject's policy attributes.
    pub subject: SubjectAttributes,
    /// For `hold`: the key class, or `all` (the default).
    pub key_class: Option<&'a str>,
    /// For `hold`: a release.
    pub release: bool,
}

impl AccessRequest {
    /// Builds a request from its parts as written by a person; the message says what is wrong.
    pub fn parse(
        policies: &Policies,
        principal: &str,
        action: &str,
        field: Option<&str>,
        purpose: Option<&str>,
        recorded: RequestFacts<'_>,
        reason: Option<&str>,
    ) -> Result<Self, String> {
        let RequestFacts {
            granted: consents,
            withdrawn,
            signals,
            subject,
            key_class,
            release,
        } = recorded;
        let principal = Principal::parse_uid(principal).map_err(|e| e.0)?;
        let admin = match action {
            "policy_read" => Some(AdminAction::Read),
            "policy_write" => Some(AdminAction::Write),
            "audit_read" => Some(AdminAction::AuditRead),
            "key_manage" => Some(AdminAction::KeyManage),
            "backup" => Some(AdminAction::Backup),
            _ => None,
        };
        if let Some(action) = admin {
            return Ok(Self::Admin { principal, action });
        }
        let catalog = policies.catalog();
        let declared = |p: &str| {
            let purpose = Purpose::new(p).map_err(|e| e.0)?;
            if catalog.has_purpose(&purpose) {
                Ok(purpose)
            } else {
                Err(format!("unknown purpose `{purpose}`"))
            }
        };
        match action {
            "export" => return Ok(Self::Export { principal }),
            "consent_read" => {
                return Ok(Self::Consent {
                    principal,
                    write: None,
                });
            }
            "consent_write" => {
                let purpose = declared(purpose.ok_or("consent_write needs a purpose")?)?;
                return Ok(Self::Consent {
                    principal,
                    write: Some(purpose),
                });
            }
            _ => {}
        }
        if action == "shred" {
            return Ok(Self::Shred {
                principal,
                reason: reason.unwrap_or_default().to_owned(),
            });
        }
        if action == "hold" {
            let scope =
                crate::hold::HoldScope::parse(key_class.unwrap_or("all")).map_err(|e| e.0)?;
            return Ok(Self::Hold {
                principal,
                key_class: scope.name().to_owned(),
                reason: reason.unwrap_or_default().to_owned(),
                release,
            });
        }
        let action = FieldAction::parse(action).ok_or_else(|| {
            format!(
                "unknown action `{action}`: expected read, read_masked, write, delete, shred, \
                 hold, policy_read, policy_write, audit_read, key_manage, backup, consent_read, \
                 consent_write or export"
            )
        })?;
        let field =
            FieldName::new(field.ok_or("a per-field action needs a field")?).map_err(|e| e.0)?;
        match catalog.resolve(&field) {
            None => return Err(format!("unknown field `{field}`")),
            Some(r) if r.view.is_some() && action != FieldAction::Read => {
                return Err(format!(
                    "`{field}` is a view: only `read` applies to it (views are read-only and have \
                     no masked form)"
                ));
            }
            Some(_) => {}
        }
        Ok(Self::Field {
            principal,
            action,
            field,
            purpose: declared(purpose.ok_or("a per-field action needs a purpose")?)?,
            consents: consents
                .iter()
                .map(|c| declared(c))
                .collect::<Result<_, _>>()?,
            withdrawn: withdrawn
                .iter()
                .map(|c| declared(c))
                .collect::<Result<_, _>>()?,
            signals: signals
                .iter()
                .map(|s| {
                    s.parse::<OptOutSignal>().map_err(|_| {
                        format!(
                            "unknown signal `{s}`: expected gpc, do_not_sell or object_to_profiling"
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            subject,
        })
    }
}

impl fmt::Display for AccessRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field {
                principal,
                action,
                field,
                purpose,
                consents,
                withdrawn,
                signals,
                subject,
            } => {
                fn names(l: &[Purpose]) -> Vec<&str> {
                    l.iter().map(Purpose::as_str).collect()
                }
                write!(
                    f,
                    "{principal} {} Field::\"{field}\" for `{purpose}` (consents: [{}]",
                    action.name(),
                    names(consents).join(", ")
                )?;
                if !withdrawn.is_empty() {
                    write!(f, ", withdrawn: [{}]", names(withdrawn).join(", "))?;
                }
                if !signals.is_empty() {
                    let names: Vec<&str> = signals.iter().map(|s| s.name()).collect();
                    write!(f, ", signals: [{}]", names.join(", "))?;
                }
                if let Some(region) = &subject.region {
                    write!(f, ", region: {region}")?;
                }
                if let Some(minor) = subject.minor {
                    write!(f, ", minor: {minor}")?;
                }
                f.write_str(")")
            }
            Self::Admin { principal, action } => write!(f, "{principal} {}", action.name()),
            Self::Export { principal } => write!(f, "{principal} export"),
            Self::Consent {
                principal,
                write: Some(p),
            } => write!(f, "{principal} consent_write for `{p}`"),
            Self::Consent {
                principal,
                write: None,
            } => write!(f, "{principal} consent_read"),
            Self::Shred { principal, reason } => {
                write!(f, "{principal} shred (reason: {reason:?})")
            }
            Self::Hold {
                principal,
                key_class,
                reason,
                release,
            } => {
                let verb = if *release { "releases" } else { "places" };
                write!(
                    f,
                    "{principal} hold: {verb} `{key_class}` (reason: {reason:?})"
                )
            }
        }
    }
}

impl Policies {
    /// Evaluates `request` with Cedar, bypassing the decision cache.
    pub fn evaluate(&self, request: &AccessRequest) -> Decision {
        match request {
            AccessRequest::Field {
                principal,
                action,
                field,
                purpose,
                consents,
                withdrawn,
                signals,
                subject,
            } => {
                // A signal withdraws what it covers, as `Vault/RecordSignal` records it.
                let covered: Vec<Purpose> = signals
                    .iter()
                    .flat_map(|s| self.catalog().covered_by(*s))
                    .collect();
                // The signal's withdrawal replaces a grant of the same purpose, as in the store.
                let records = consents
                    .iter()
                    .filter(|p| !covered.contains(p))
                    .map(|p| (p, true))
                    .chain(withdrawn.iter().chain(&covered).map(|p| (p, false)));
                let mut effective = self.catalog().resolve_consents(records);
                effective.subject = subject.clone();
                effective.signals = signals.clone();
                effective.signals.sort();
                effective.signals.dedup();
                self.evaluate_field(
                    principal,
                    *action,
                    field,
                    &self.field_context(purpose, effective),
                )
            }
            AccessRequest::Admin { principal, action } => self.decide_admin(principal, *action),
            AccessRequest::Export { principal } => self.decide_export(principal),
            AccessRequest::Consent { principal, write } => match write {
                Some(purpose) => self.decide_consent_write(principal, purpose),
                None => self.decide_consent_read(principal),
            },
            AccessRequest::Shred { principal, reason } => self.decide_shred(principal, reason),
            AccessRequest::Hold {
                principal,
                key_class,
                reason,
                release,
            } => self.decide_hold(principal, key_class, reason, *release),
        }
    }
}
