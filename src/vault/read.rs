//! `get`: decide every field first (a denied field never touches storage), then one multi-get for
//! the permitted ones, decrypt, mask, and make the audit record durable before any value leaves.

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::keys::{StaleKeys, SubjectKeys, decode_field};
use super::{CallContext, Vault, VaultError, field_audit};
use crate::audit::{AuditEvent, CommitTicket};
use crate::catalog::FieldSpec;
use crate::domain::{FieldName, Purpose, Sid, SubjectId};
use crate::policy::{Permit, Policies, ReadDecision};
use crate::store::keys::subject_key;
use crate::store::{Batch, Cf};

/// What a read returns for one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Read allowed and a value is stored.
    Value(Zeroizing<String>),
    /// Only masked reads allowed; the value masked by the field's rule.
    Masked(String),
    /// Neither read nor masked read allowed.
    Denied,
    /// Allowed, but nothing is stored (never written, deleted, expired or shredded).
    Absent,
}

/// One field of a read, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRead {
    /// The field.
    pub field: FieldName,
    /// Its outcome.
    pub outcome: ReadOutcome,
    /// The determining policies.
    pub policy_ids: Vec<String>,
}

impl ReadOutcome {
    fn audit_name(&self) -> &'static str {
        match self {
            Self::Value(_) => "value",
            Self::Masked(_) => "masked",
            Self::Denied => "denied",
            Self::Absent => "absent",
        }
    }
}

/// Most subjects one batch read may name.
pub const MAX_BATCH_SUBJECTS: usize = 100;

impl Vault {
    /// Reads `fields` of many subjects for `purpose`: each subject decided and audited on its own,
    /// with its own result or error.
    pub fn batch_get(
        &self,
        ctx: &CallContext,
        subjects: &[SubjectId],
        purpose: &Purpose,
        fields: &[FieldName],
    ) -> Result<Vec<Result<Vec<FieldRead>, VaultError>>, VaultError> {
        if subjects.is_empty() || subjects.len() > MAX_BATCH_SUBJECTS {
            let policies = self.policies();
            let event = self.event(ctx, "read", Some(purpose), &policies);
            return self.fail(
                event,
                VaultError::InvalidArgument(format!(
                    "a batch names 1 to {MAX_BATCH_SUBJECTS} subjects"
                )),
            );
        }
        Ok(subjects
            .iter()
            .map(|s| self.get(ctx, s, purpose, fields))
            .collect())
    }

    /// Reads `fields` of `subject` for `purpose`, each decided on its own.
    pub fn get(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[FieldName],
    ) -> Result<Vec<FieldRead>, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, "read", Some(purpose), &policies);
        let result = self.get_inner(ctx, &policies, subject, purpose, fields, &mut event);
        self.finish(event, result.map(|reads| (Batch::new(), reads)))
            .map(|(reads, _)| reads)
    }

    /// [`Vault::get`], returning as soon as the audit record is queued: the values may leave only
    /// once the ticket resolves (the record is durable). The api awaits it on the async runtime
    /// instead of parking a thread for the WAL sync.
    pub fn get_deferred(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[FieldName],
    ) -> Result<(Vec<FieldRead>, CommitTicket), VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, "read", Some(purpose), &policies);
        match self.get_inner(ctx, &policies, subject, purpose, fields, &mut event) {
            Ok(reads) => {
                event.outcome = "ok".into();
                let ticket = self.audit.commit_deferred(
                    &self.store,
                    Batch::new(),
                    event,
                    self.clock.now_ms(),
                );
                Ok((reads, ticket))
            }
            Err(e) => self.fail(event, e),
        }
    }

    fn get_inner(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[FieldName],
        event: &mut AuditEvent,
    ) -> Result<Vec<FieldRead>, VaultError> {
        let (sid, keys) = self.locate(subject, event)?;
        let specs = self.check_call(policies, purpose, &fields.iter().collect::<Vec<_>>())?;
        let consents = self.granted_purposes(&sid)?;
        event.consents = consents.iter().map(ToString::to_string).collect();
        let context = policies.field_context(purpose, &consents);
        let decisions: Vec<ReadDecision> = fields
            .iter()
            .map(|f| policies.decide_read(&ctx.principal, f, &context))
            .collect();

        let permits: Vec<(&Permit, &FieldSpec)> = decisions
            .iter()
            .zip(&specs)
            .filter_map(|(d, spec)| match d {
                ReadDecision::Allowed(p) => Some((p, *spec)),
                ReadDecision::Denied(_) => None,
            })
            .collect();
        let stored = match &keys {
            Some(keys) => self.read_permitted(&sid, Arc::clone(keys), &permits)?,
            None => BTreeMap::new(),
        };

        let mut reads = Vec::with_capacity(fields.len());
        for (field, decision) in fields.iter().zip(decisions) {
            let (outcome, policy_ids) = match decision {
                ReadDecision::Denied(d) => {
                    if !d.errors.is_empty() {
                        tracing::warn!(field = %field, errors = ?d.errors, "policy evaluation error; denied");
                    }
                    (ReadOutcome::Denied, d.policy_ids)
                }
                ReadDecision::Allowed(permit) => {
                    let outcome = stored.get(field).cloned().unwrap_or(ReadOutcome::Absent);
                    (outcome, permit.policy_ids().to_vec())
                }
            };
            event
                .fields
                .push(field_audit(field, outcome.audit_name(), &policy_ids));
            reads.push(FieldRead {
                field: field.clone(),
                outcome,
                policy_ids,
            });
        }
        Ok(reads)
    }

    /// Reads, opens and masks the permitted fields with one multi-get. Expired values are absent.
    fn read_permitted(
        &self,
        sid: &Sid,
        keys: Arc<SubjectKeys>,
        permits: &[(&Permit, &FieldSpec)],
    ) -> Result<BTreeMap<FieldName, ReadOutcome>, VaultError> {
        let storage_keys: Vec<Vec<u8>> = permits
            .iter()
            .map(|(p, _)| subject_key(sid, p.field().as_str()))
            .collect();
        let request: Vec<(Cf, &[u8])> = storage_keys
            .iter()
            .map(|k| (Cf::Fields, k.as_slice()))
            .collect();
        let now = self.clock.now_ms();
        self.with_current_keys(sid, Some(keys), |keys| {
            let mut out = BTreeMap::new();
            let Some(keys) = keys else {
                return Ok(Ok(out));
            };
            let values = self.store.multi_get(&request)?;
            for ((permit, spec), value) in permits.iter().zip(values) {
                let Some(bytes) = value else { continue };
                let record = decode_field(&bytes)?;
                if record.is_expired(now) {
                    continue;
                }
                let Some(text) = keys.open_record(sid, permit.field(), &spec.key_class, &record)?
                else {
                    return Ok(Err(StaleKeys));
                };
                let outcome = if permit.masked() {
                    ReadOutcome::Masked(spec.mask.apply(&text))
                } else {
                    ReadOutcome::Value(text)
                };
                out.insert(permit.field().clone(), outcome);
            }
            Ok(Ok(out))
        })
    }
}
