//! Authorization requests and their decisions. Default deny, `forbid` wins, and any evaluation
//! error is a deny (Cedar skips an erroring policy, so an erroring `forbid` must not let a read
//! through).

use std::sync::{Arc, OnceLock};

use cedar_policy::{
    AuthorizationError, Context, Decision as CedarDecision, EntityId, EntityUid, Request,
    RestrictedExpression,
};

use super::cache::{ContextDecisions, DecisionCache};
use super::entities::uid;
use super::{Permit, Policies, PolicyIds};
use crate::catalog::EffectiveConsents;
use crate::domain::{FieldName, Principal, PrincipalKind, Purpose};

/// The per-field actions of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldAction {
    /// `Action::"read"`.
    Read,
    /// `Action::"read_masked"`, asked only when `read` is denied.
    ReadMasked,
    /// `Action::"write"`.
    Write,
    /// `Action::"delete"`.
    Delete,
}

impl FieldAction {
    /// The action's name in policies and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::ReadMasked => "read_masked",
            Self::Write => "write",
            Self::Delete => "delete",
        }
    }
}

pub(super) struct Uids {
    read: EntityUid,
    read_masked: EntityUid,
    write: EntityUid,
    delete: EntityUid,
    shred: EntityUid,
    policy_read: EntityUid,
    policy_write: EntityUid,
    policy_store: EntityUid,
    audit_read: EntityUid,
    audit_log: EntityUid,
    key_manage: EntityUid,
    keyring: EntityUid,
    backup: EntityUid,
    database: EntityUid,
    consent_write: EntityUid,
    consent_read: EntityUid,
    export: EntityUid,
    hold: EntityUid,
}

impl Uids {
    pub(super) fn new() -> Result<Self, String> {
        Ok(Self {
            read: uid("Action", "read")?,
            read_masked: uid("Action", "read_masked")?,
            write: uid("Action", "write")?,
            delete: uid("Action", "delete")?,
            shred: uid("Action", "shred")?,
            policy_read: uid("Action", "policy_read")?,
            policy_write: uid("Action", "policy_write")?,
            policy_store: uid("PolicyStore", "active")?,
            audit_read: uid("Action", "audit_read")?,
            audit_log: uid("AuditLog", "main")?,
            key_manage: uid("Action", "key_manage")?,
            keyring: uid("Keyring", "main")?,
            backup: uid("Action", "backup")?,
            database: uid("Database", "main")?,
            consent_write: uid("Action", "consent_write")?,
            consent_read: uid("Action", "consent_read")?,
            export: uid("Action", "export")?,
            hold: uid("Action", "hold")?,
        })
    }

    fn field(&self, action: FieldAction) -> &EntityUid {
        match action {
            FieldAction::Read => &self.read,
            FieldAction::ReadMasked => &self.read_masked,
            FieldAction::Write => &self.write,
            FieldAction::Delete => &self.delete,
        }
    }
}

/// The administration actions: operators only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminAction {
    /// `Action::"policy_read"` on `PolicyStore::"active"`: inspect, validate, dry-run, explain.
    Read,
    /// `Action::"policy_write"` on `PolicyStore::"active"`: apply, roll back.
    Write,
    /// `Action::"audit_read"` on `AuditLog::"main"`: query, head, verify.
    AuditRead,
    /// `Action::"key_manage"` on `Keyring::"main"`: roll the KEK epoch, rotate a subject's DEK.
    KeyManage,
    /// `Action::"backup"` on `Database::"main"`: copy `db/` and the sealed audit segments out.
    Backup,
}

impl AdminAction {
    /// The action's name in policies and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "policy_read",
            Self::Write => "policy_write",
            Self::AuditRead => "audit_read",
            Self::KeyManage => "key_manage",
            Self::Backup => "backup",
        }
    }
}

/// The context of every per-field request of one call: `{ purpose, consents, withdrawn }`, the
/// subject's consents already resolved over the purpose hierarchy. The Cedar context is built only
/// when a decision is not cached, and then once per call.
#[derive(Debug)]
pub struct FieldContext {
    purpose: Purpose,
    consents: EffectiveConsents,
    attrs: ContextAttrs,
    cedar: OnceLock<Result<Context, String>>,
    // The call's decisions, found once: the cache they came from and the principal they are for.
    decisions: OnceLock<(u64, Principal, Arc<ContextDecisions>)>,
}

impl FieldContext {
    /// The stated purpose.
    pub fn purpose(&self) -> &Purpose {
        &self.purpose
    }

    /// The subject's effective consents, sorted.
    pub fn consents(&self) -> &EffectiveConsents {
        &self.consents
    }

    /// The cached decisions of `principal` in this context, looked up in `cache` once per call.
    fn decisions(&self, principal: &Principal, cache: &DecisionCache) -> Arc<ContextDecisions> {
        match self.decisions.get() {
            Some((id, p, found)) if *id == cache.id() && p == principal => Arc::clone(found),
            Some(_) => cache.context(principal, self),
            None => {
                let found = cache.context(principal, self);
                let _ = self
                    .decisions
                    .set((cache.id(), principal.clone(), Arc::clone(&found)));
                found
            }
        }
    }

    fn cedar(&self) -> Result<Context, String> {
        self.cedar
            .get_or_init(|| {
                let purpose_uid = |p: &Purpose| {
                    uid("Purpose", p.as_str()).map(RestrictedExpression::new_entity_uid)
                };
                let set = |list: &[Purpose]| {
                    list.iter()
                        .map(purpose_uid)
                        .collect::<Result<Vec<_>, _>>()
                        .map(RestrictedExpression::new_set)
                };
                let mut pairs = vec![
                    ("purpose".to_owned(), purpose_uid(&self.purpose)?),
                    ("consents".to_owned(), set(&self.consents.granted)?),
                ];
                if self.attrs.withdrawn {
                    pairs.push(("withdrawn".to_owned(), set(&self.consents.withdrawn)?));
                }
                if self.attrs.subject {
                    let attrs = &self.consents.subject;
                    let mut record = Vec::new();
                    if let Some(region) = &attrs.region {
                        record.push((
                            "region".to_owned(),
                            RestrictedExpression::new_string(region.clone()),
                        ));
                    }
                    if let Some(minor) = attrs.minor {
                        record.push(("minor".to_owned(), RestrictedExpression::new_bool(minor)));
                    }
                    pairs.push((
                        "subject".to_owned(),
                        RestrictedExpression::new_record(record).map_err(|e| e.to_string())?,
                    ));
                }
                if self.attrs.signals {
                    let names = self
                        .consents
                        .signals
                        .iter()
                        .map(|s| RestrictedExpression::new_string(s.name().to_owned()));
                    pairs.push(("signals".to_owned(), RestrictedExpression::new_set(names)));
                }
                Context::from_pairs(pairs).map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// The attributes of the read context that schemas written before them may lack: the vault leaves
/// out what the schema does not declare (Cedar refuses an undeclared attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContextAttrs {
    /// `withdrawn: Set<Purpose>`.
    pub withdrawn: bool,
    /// `signals: Set<String>`.
    pub signals: bool,
    /// `subject: { region?: String, minor?: Bool }`.
    pub subject: bool,
}

impl ContextAttrs {
    /// What `schema` declares: the widest context it accepts.
    pub fn declared_by(schema: &cedar_policy::Schema, catalog: &crate::catalog::Catalog) -> Self {
        // Widest first: every attribute, then each one dropped in turn, down to none.
        (0..8u8)
            .map(|dropped| ContextAttrs {
                withdrawn: dropped & 1 == 0,
                signals: dropped & 2 == 0,
                subject: dropped & 4 == 0,
            })
            .find(|attrs| schema_accepts(schema, catalog, *attrs))
            .unwrap_or(ContextAttrs {
                withdrawn: false,
                signals: false,
                subject: false,
            })
    }
}

/// Whether `schema` accepts a read context carrying `attrs`, tried on a request like the vault
/// makes (a service reading a declared field for a declared purpose).
fn schema_accepts(
    schema: &cedar_policy::Schema,
    catalog: &crate::catalog::Catalog,
    attrs: ContextAttrs,
) -> bool {
    let (Some((field, _)), Some((purpose, _))) =
        (catalog.fields().next(), catalog.purposes().next())
    else {
        return true;
    };
    let context = FieldContext {
        purpose: purpose.clone(),
        consents: EffectiveConsents::default(),
        attrs,
        cedar: OnceLock::new(),
        decisions: OnceLock::new(),
    };
    let (Ok(context), Ok(principal), Ok(action), Ok(resource)) = (
        context.cedar(),
        uid("Service", "probe"),
        uid("Action", "read"),
        uid("Field", field.as_str()),
    ) else {
        return false;
    };
    Request::new(principal, action, resource, context, Some(schema)).is_ok()
}

/// One authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True only for an error-free Allow.
    pub allowed: bool,
    /// The determining policies: the permits of an Allow, the forbids of a Deny (empty when
    /// nothing permitted), or the erroring policies of an evaluation error. Shared, so that a
    /// cached decision is handed out without copying.
    pub policy_ids: PolicyIds,
    /// Evaluation errors; any error makes the decision a deny.
    pub errors: Vec<String>,
}

impl Decision {
    /// A deny caused by an error before or during evaluation.
    fn error(message: String) -> Self {
        Self {
            allowed: false,
            policy_ids: PolicyIds::default(),
            errors: vec![message],
        }
    }
}

/// The decision for reading one field: a permit (full or masked), or a deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadDecision {
    /// `read` or `read_masked` was allowed.
    Allowed(Permit),
    /// Neither was allowed.
    Denied(Decision),
}

impl Policies {
    /// The context for the requests of one call, from the subject's effective consents.
    pub fn field_context(&self, purpose: &Purpose, consents: EffectiveConsents) -> FieldContext {
        FieldContext {
            purpose: purpose.clone(),
            consents,
            attrs: self.context_attrs,
            cedar: OnceLock::new(),
            decisions: OnceLock::new(),
        }
    }

    fn principal_uid(&self, principal: &Principal) -> EntityUid {
        let type_name = match principal.kind() {
            PrincipalKind::Service => &self.service_type,
            PrincipalKind::Operator => &self.operator_type,
        };
        EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(principal.name()))
    }

    fn decide(
        &self,
        principal: &Principal,
        action: &EntityUid,
        resource: EntityUid,
        context: Context,
    ) -> Decision {
        let request = match Request::new(
            self.principal_uid(principal),
            action.clone(),
            resource,
            context,
            Some(&self.schema),
        ) {
            Ok(r) => r,
            Err(e) => {
                return Decision::error(e.to_string());
            }
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.set, &self.entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
        if !errors.is_empty() {
            let mut policy_ids: Vec<String> = diagnostics
                .errors()
                .map(|e| match e {
                    AuthorizationError::PolicyEvaluationError(e) => e.policy_id().to_string(),
                })
                .collect();
            policy_ids.sort();
            policy_ids.dedup();
            return Decision {
                allowed: false,
                policy_ids: policy_ids.into(),
                errors,
            };
        }
        let mut policy_ids: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
        policy_ids.sort();
        Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policy_ids: policy_ids.into(),
            errors,
        }
    }

    /// Decides `action` on `field` for `principal`, from the decision cache when this exact
    /// request was decided before by this policy set.
    pub fn decide_field(
        &self,
        principal: &Principal,
        action: FieldAction,
        field: &FieldName,
        context: &FieldContext,
    ) -> Decision {
        let decisions = context.decisions(principal, &self.cache);
        if let Some(hit) = decisions.get(action, field) {
            crate::metrics::metrics().decided(action.name(), hit.allowed, true);
            return hit;
        }
        let decision = self.evaluate_field(principal, action, field, context);
        crate::metrics::metrics().decided(action.name(), decision.allowed, false);
        decisions.insert(action, field, decision.clone());
        decision
    }

    /// Evaluates `action` on `field` with Cedar, bypassing the cache.
    pub fn evaluate_field(
        &self,
        principal: &Principal,
        action: FieldAction,
        field: &FieldName,
        context: &FieldContext,
    ) -> Decision {
        let kind = if field.is_view() { "View" } else { "Field" };
        let resource = match uid(kind, field.as_str()) {
            Ok(r) => r,
            Err(e) => return Decision::error(e),
        };
        match context.cedar() {
            Ok(cedar) => self.decide(principal, self.uids.field(action), resource, cedar),
            Err(e) => Decision::error(e),
        }
    }

    /// Decides a read of `field`: `read`, then `read_masked` when `read` is denied (a view, already
    /// minimal, has no masked form: a denied view is denied).
    pub fn decide_read(
        &self,
        principal: &Principal,
        field: &FieldName,
        context: &FieldContext,
    ) -> ReadDecision {
        let read = self.decide_field(principal, FieldAction::Read, field, context);
        if read.allowed {
            return ReadDecision::Allowed(Permit {
                field: field.clone(),
                masked: false,
                policy_ids: read.policy_ids,
            });
        }
        if field.is_view() {
            return ReadDecision::Denied(read);
        }
        let masked = self.decide_field(principal, FieldAction::ReadMasked, field, context);
        if masked.allowed {
            return ReadDecision::Allowed(Permit {
                field: field.clone(),
                masked: true,
                policy_ids: masked.policy_ids,
            });
        }
        let mut denied = read;
        if !masked.policy_ids.is_empty() {
            let mut ids = denied.policy_ids.to_vec();
            ids.extend(masked.policy_ids.iter().cloned());
            ids.sort();
            ids.dedup();
            denied.policy_ids = ids.into();
        }
        denied.errors.extend(masked.errors);
        ReadDecision::Denied(denied)
    }

    /// Decides a policy administration action. Only operators administer policies; for anyone else
    /// it is a plain deny.
    pub fn decide_admin(&self, principal: &Principal, action: AdminAction) -> Decision {
        if principal.kind() != PrincipalKind::Operator {
            return Decision {
                allowed: false,
                policy_ids: PolicyIds::default(),
                errors: Vec::new(),
            };
        }
        let (action, resource) = match action {
            AdminAction::Read => (&self.uids.policy_read, &self.uids.policy_store),
            AdminAction::Write => (&self.uids.policy_write, &self.uids.policy_store),
            AdminAction::AuditRead => (&self.uids.audit_read, &self.uids.audit_log),
            AdminAction::KeyManage => (&self.uids.key_manage, &self.uids.keyring),
            AdminAction::Backup => (&self.uids.backup, &self.uids.database),
        };
        match Context::from_pairs(Vec::<(String, RestrictedExpression)>::new()) {
            Ok(context) => self.decide(principal, action, resource.clone(), context),
            Err(e) => Decision::error(e.to_string()),
        }
    }

    /// Decides recording consent to `purpose` (or its withdrawal) for a subject.
    pub fn decide_consent_write(&self, principal: &Principal, purpose: &Purpose) -> Decision {
        let context = uid("Purpose", purpose.as_str()).and_then(|p| {
            Context::from_pairs([(
                "purpose".to_owned(),
                RestrictedExpression::new_entity_uid(p),
            )])
            .map_err(|e| e.to_string())
        });
        match context {
            Ok(context) => self.decide(
                principal,
                &self.uids.consent_write,
                self.subject_uid.clone(),
                context,
            ),
            Err(e) => Decision::error(e),
        }
    }

    /// Decides reading a subject's consents.
    pub fn decide_consent_read(&self, principal: &Principal) -> Decision {
        self.decide_on_subject(principal, &self.uids.consent_read)
    }

    /// Decides exporting everything stored about a subject.
    pub fn decide_export(&self, principal: &Principal) -> Decision {
        self.decide_on_subject(principal, &self.uids.export)
    }

    fn decide_on_subject(&self, principal: &Principal, action: &EntityUid) -> Decision {
        match Context::from_pairs(Vec::<(String, RestrictedExpression)>::new()) {
            Ok(context) => self.decide(principal, action, self.subject_uid.clone(), context),
            Err(e) => Decision::error(e.to_string()),
        }
    }

    /// Decides `Action::"hold"` on the subject: placing (or, with `release`, lifting) a legal hold
    /// on `key_class` (a class name or `all`) for the stated reason. Operators only: for a service
    /// it is a plain deny, whatever the policies say.
    pub fn decide_hold(
        &self,
        principal: &Principal,
        key_class: &str,
        reason: &str,
        release: bool,
    ) -> Decision {
        if principal.kind() != PrincipalKind::Operator {
            return Decision {
                allowed: false,
                policy_ids: PolicyIds::default(),
                errors: Vec::new(),
            };
        }
        match Context::from_pairs([
            (
                "key_class".to_owned(),
                RestrictedExpression::new_string(key_class.to_owned()),
            ),
            (
                "reason".to_owned(),
                RestrictedExpression::new_string(reason.to_owned()),
            ),
            (
                "release".to_owned(),
                RestrictedExpression::new_bool(release),
            ),
        ]) {
            Ok(context) => self.decide(
                principal,
                &self.uids.hold,
                self.subject_uid.clone(),
                context,
            ),
            Err(e) => Decision::error(e.to_string()),
        }
    }

    /// Decides `Action::"shred"` on the subject, with the stated reason in the context.
    pub fn decide_shred(&self, principal: &Principal, reason: &str) -> Decision {
        match Context::from_pairs([(
            "reason".to_owned(),
            RestrictedExpression::new_string(reason.to_owned()),
        )]) {
            Ok(context) => self.decide(
                principal,
                &self.uids.shred,
                self.subject_uid.clone(),
                context,
            ),
            Err(e) => Decision::error(e.to_string()),
        }
    }
}
