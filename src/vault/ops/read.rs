//! `get`: decide every field first (a denied field never touches storage), then one multi-get for
//! the permitted ones, decrypt, mask, and make the audit record durable before any value leaves.

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::audit::{Action, AuditEvent, CommitTicket, FieldOutcome, Outcome};
use crate::catalog::{Resolved, utc_date};
use crate::domain::{FieldName, PrincipalKind, Purpose, Sid, SubjectId};
use crate::policy::{Permit, Policies, PolicyIds, ReadDecision};
use crate::store::keys::subject_key;
use crate::store::{Batch, Cf};
use crate::vault::keys::{StaleKeys, SubjectKeys, decode_field};
use crate::vault::{CallContext, Vault, VaultError, field_audit};

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
    /// Refused before any decision: the caller's read budget of distinct subjects is spent.
    OverBudget,
    /// Refused before any decision: the subject was erased and only a legal hold keeps what is
    /// left, which is read for legal claims only.
    Held,
}

/// One field of a read, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRead {
    /// The field.
    pub field: FieldName,
    /// Its outcome.
    pub outcome: ReadOutcome,
    /// The determining policies.
    pub policy_ids: PolicyIds,
}

impl ReadOutcome {
    fn audit_outcome(&self) -> FieldOutcome {
        match self {
            Self::Value(_) => FieldOutcome::Value,
            Self::Masked(_) => FieldOutcome::Masked,
            Self::Denied => FieldOutcome::Denied,
            Self::Absent => FieldOutcome::Absent,
            Self::OverBudget => FieldOutcome::Budget,
            Self::Held => FieldOutcome::Held,
        }
    }
}

/// Most subjects one batch read may name.
pub const MAX_BATCH_SUBJECTS: usize = 100;

/// Most bytes of values a read decrypts on the async runtime; a larger one runs again on the
/// blocking pool, so that one caller's 64 KiB fields cannot stall everyone else's calls.
const RUNTIME_OPEN_BYTES: usize = 64 * 1024;

/// What one call asks of every subject it reads.
#[derive(Clone, Copy)]
pub(in crate::vault) struct Asked<'a> {
    purpose: &'a Purpose,
    fields: &'a [FieldName],
    budget: &'a ReadBudget,
}

impl<'a> Asked<'a> {
    pub(in crate::vault) fn new(
        purpose: &'a Purpose,
        fields: &'a [FieldName],
        budget: &'a ReadBudget,
    ) -> Self {
        Self {
            purpose,
            fields,
            budget,
        }
    }
}

/// The bytes of values one call has taken so far, against the per-call budget.
pub(in crate::vault) struct ReadBudget {
    limit: usize,
    used: std::cell::Cell<usize>,
}

impl ReadBudget {
    pub(in crate::vault) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: std::cell::Cell::new(0),
        }
    }

    /// Takes `bytes` more, before they are decrypted: refused past the budget, and sent to the
    /// blocking pool past what the runtime should decrypt.
    fn take(&self, bytes: usize) -> Result<(), VaultError> {
        let used = self.used.get().saturating_add(bytes);
        if used > self.limit {
            return Err(VaultError::ResponseTooLarge { limit: self.limit });
        }
        if used > RUNTIME_OPEN_BYTES && crate::store::in_memory_only() {
            return Err(VaultError::NeedsDisk);
        }
        self.used.set(used);
        Ok(())
    }
}

/// A read whose audit records are queued, not yet durable.
#[derive(Debug)]
pub enum Queued<T> {
    /// The result, which may leave only once every ticket resolves: values only when all the
    /// records are durable (fail closed), errors once their records are written or failed to be.
    Ready {
        /// The call's result.
        result: Result<T, VaultError>,
        /// One per audit record the call made.
        records: Vec<CommitTicket>,
    },
    /// Run in memory only ([`crate::store::memory_only`]), the read needs the disk. Nothing was
    /// audited; run it again where reads may block.
    NeedsDisk,
}

/// One subject's read, decided and done, with its audit event not yet queued.
type Staged = (AuditEvent, Result<Vec<FieldRead>, VaultError>);

impl Vault {
    /// Reads `fields` of `subject` for `purpose`, each decided on its own, and returns once the
    /// audit record is durable.
    pub fn get(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[FieldName],
    ) -> Result<Vec<FieldRead>, VaultError> {
        let budget = ReadBudget::new(self.limits.max_response_bytes);
        let (event, result) = self.stage_read(
            ctx,
            &self.policies(),
            subject,
            &Asked::new(purpose, fields, &budget),
        );
        self.finish(event, result.map(|reads| (Batch::new(), reads)))
            .map(|(reads, _)| reads)
    }

    /// [`Vault::get`], returning as soon as the audit record is queued. The api awaits the ticket
    /// on the async runtime instead of parking a thread for the WAL sync, and runs this first in
    /// memory only, on the runtime itself.
    pub fn get_deferred(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[FieldName],
    ) -> Queued<Vec<FieldRead>> {
        let budget = ReadBudget::new(self.limits.max_response_bytes);
        let asked = Asked::new(purpose, fields, &budget);
        let staged = self.stage_read(ctx, &self.policies(), subject, &asked);
        if matches!(staged.1, Err(VaultError::NeedsDisk)) {
            return Queued::NeedsDisk;
        }
        let (result, ticket) = self.queue_read(Batch::new(), staged);
        Queued::Ready {
            result,
            records: vec![ticket],
        }
    }

    /// Reads `fields` of many subjects for `purpose`: each subject decided and audited on its own,
    /// with its own result or error. Every record is queued at once (they share WAL syncs); like
    /// [`Vault::get_deferred`], the values may leave once the tickets resolve.
    pub fn batch_get_deferred(
        &self,
        ctx: &CallContext,
        subjects: &[SubjectId],
        purpose: &Purpose,
        fields: &[FieldName],
    ) -> Queued<Vec<Result<Vec<FieldRead>, VaultError>>> {
        let policies = self.policies();
        let refuse = |err: VaultError| {
            let event = self.event(ctx, Action::Read, Some(purpose), &policies);
            let (result, ticket) = self.queue_read(Batch::new(), (event, Err(err)));
            Queued::Ready {
                result,
                records: vec![ticket],
            }
        };
        if subjects.is_empty() || subjects.len() > MAX_BATCH_SUBJECTS {
            return refuse(VaultError::InvalidArgument(format!(
                "a batch names 1 to {MAX_BATCH_SUBJECTS} subjects"
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(subjects.len());
        if let Some(i) = subjects.iter().position(|s| !seen.insert(s.expose())) {
            return refuse(VaultError::InvalidArgument(format!(
                "subject_ids[{i}] repeats an earlier subject id"
            )));
        }
        // What is wrong with the call for every subject refuses the whole call.
        let names: Vec<&FieldName> = fields.iter().collect();
        if let Err(e) = self.check_call(&policies, purpose, &names) {
            return refuse(e);
        }
        // Every subject is read before any record is queued, so that a read that needs the disk
        // can run again from the start without auditing anyone twice. One budget covers them all.
        let budget = ReadBudget::new(self.limits.max_response_bytes);
        let asked = Asked::new(purpose, fields, &budget);
        let mut staged = Vec::with_capacity(subjects.len());
        let mut too_large = false;
        for subject in subjects {
            let one = self.stage_read(ctx, &policies, subject, &asked);
            match &one.1 {
                Err(VaultError::NeedsDisk) => return Queued::NeedsDisk,
                Err(VaultError::ResponseTooLarge { .. }) => too_large = true,
                _ => {}
            }
            staged.push(one);
            if too_large {
                break;
            }
        }
        if too_large {
            // Nothing leaves: every subject read so far is recorded as refused, with no values.
            let records = staged
                .into_iter()
                .map(|(mut event, _)| {
                    event.fields.clear();
                    let err = VaultError::ResponseTooLarge {
                        limit: budget.limit,
                    };
                    self.queue_read(Batch::new(), (event, Err::<(), _>(err))).1
                })
                .collect();
            return Queued::Ready {
                result: Err(VaultError::ResponseTooLarge {
                    limit: budget.limit,
                }),
                records,
            };
        }
        let (results, records) = staged
            .into_iter()
            .map(|s| self.queue_read(Batch::new(), s))
            .unzip();
        Queued::Ready {
            result: Ok(results),
            records,
        }
    }

    /// Decides and reads one subject's fields, recording the outcome in its audit event.
    fn stage_read(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        subject: &SubjectId,
        asked: &Asked<'_>,
    ) -> Staged {
        let mut event = self.event(ctx, Action::Read, Some(asked.purpose), policies);
        let result = self.get_inner(ctx, policies, subject, asked, &mut event);
        (event, result)
    }

    /// Queues the audit record of a staged read; the result may leave once the ticket resolves.
    pub(in crate::vault) fn queue_read<T>(
        &self,
        batch: Batch,
        (mut event, result): (AuditEvent, Result<T, VaultError>),
    ) -> (Result<T, VaultError>, CommitTicket) {
        event.outcome = match &result {
            // A canary read keeps its alarm.
            Ok(_) if event.outcome == Outcome::Canary => Outcome::Canary,
            Ok(_) => Outcome::Ok,
            Err(e) => e.audit_outcome(),
        };
        let ticket = self
            .audit
            .commit_deferred(batch, event, self.clock.now_ms());
        (result, ticket)
    }

    fn get_inner(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        subject: &SubjectId,
        asked: &Asked<'_>,
        event: &mut AuditEvent,
    ) -> Result<Vec<FieldRead>, VaultError> {
        let (sid, keys) = self.locate(subject, event)?;
        self.read_located(ctx, policies, &sid, keys, asked, event)
    }

    /// [`Vault::get_inner`] for a subject already located: its sid and keys.
    pub(in crate::vault) fn read_located(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        sid: &Sid,
        keys: Option<Arc<SubjectKeys>>,
        asked: &Asked<'_>,
        event: &mut AuditEvent,
    ) -> Result<Vec<FieldRead>, VaultError> {
        let sid = *sid;
        let Asked {
            purpose,
            fields,
            budget,
        } = *asked;
        let specs = self.check_call(policies, purpose, &fields.iter().collect::<Vec<_>>())?;
        if keys.as_ref().is_some_and(|k| k.canary) {
            self.canary_read(ctx, purpose, event);
        }
        let refused = |outcome: ReadOutcome, event: &mut AuditEvent| {
            let none = PolicyIds::default();
            fields
                .iter()
                .map(|field| {
                    event
                        .fields
                        .push(field_audit(field, outcome.audit_outcome(), &none));
                    FieldRead {
                        field: field.clone(),
                        outcome: outcome.clone(),
                        policy_ids: none.clone(),
                    }
                })
                .collect()
        };
        if keys.as_ref().is_some_and(|k| k.erased) && Self::held_read_refused(policies, purpose) {
            return Ok(refused(ReadOutcome::Held, event));
        }
        if !self.within_read_budget(ctx, policies, purpose, &sid) {
            return Ok(refused(ReadOutcome::OverBudget, event));
        }
        let consents = self.effective_consents(&sid, policies)?;
        event.consents = consents.granted.iter().map(ToString::to_string).collect();
        event.withdrawn = consents.withdrawn.iter().map(ToString::to_string).collect();
        let context = policies.field_context(purpose, consents);
        let decisions: Vec<ReadDecision> = fields
            .iter()
            .map(|f| policies.decide_read(&ctx.principal, f, &context))
            .collect();

        let permits: Vec<(&Permit, Resolved<'_>)> = decisions
            .iter()
            .zip(&specs)
            .filter_map(|(d, resolved)| match d {
                ReadDecision::Allowed(p) => Some((p, *resolved)),
                ReadDecision::Denied(_) => None,
            })
            .collect();
        let stored = match &keys {
            Some(keys) => self.read_permitted(&sid, Arc::clone(keys), &permits, budget)?,
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
                    (outcome, Arc::clone(permit.policy_ids()))
                }
            };
            event
                .fields
                .push(field_audit(field, outcome.audit_outcome(), &policy_ids));
            reads.push(FieldRead {
                field: field.clone(),
                outcome,
                policy_ids,
            });
        }
        Ok(reads)
    }

    /// Whether the caller's read budget (a service's, from the catalog) admits reading `sid` for
    /// `purpose` now; a refusal is counted and logged loudly (no subject named).
    fn within_read_budget(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        purpose: &Purpose,
        sid: &Sid,
    ) -> bool {
        if ctx.principal.kind() != PrincipalKind::Service {
            return true;
        }
        let Some(budget) = policies.catalog().read_budget(ctx.principal.name()) else {
            return true;
        };
        if self
            .budgets
            .admit(&ctx.principal, purpose, sid, budget, self.clock.now_ms())
        {
            return true;
        }
        crate::metrics::metrics().read_budget_denials.inc();
        tracing::warn!(
            principal = %ctx.principal,
            purpose = %purpose,
            budget = budget.subjects,
            "read budget spent: a service read more distinct subjects than its budget allows; refused"
        );
        false
    }

    /// Reads, opens and masks the permitted fields with one multi-get, and derives the permitted
    /// views from their fields. Expired values are absent unless a legal hold keeps them.
    fn read_permitted(
        &self,
        sid: &Sid,
        keys: Arc<SubjectKeys>,
        permits: &[(&Permit, Resolved<'_>)],
        budget: &ReadBudget,
    ) -> Result<BTreeMap<FieldName, ReadOutcome>, VaultError> {
        let storage_keys: Vec<Vec<u8>> = permits
            .iter()
            .map(|(_, r)| subject_key(sid, r.field.as_str()))
            .collect();
        let request: Vec<&[u8]> = storage_keys.iter().map(Vec::as_slice).collect();
        let now = self.clock.now_ms();
        let baseline = budget.used.get();
        self.with_current_keys(sid, Some(keys), |keys| {
            let mut out = BTreeMap::new();
            let Some(keys) = keys else {
                return Ok(Ok(out));
            };
            let values = self.store.multi_get(Cf::Fields, &request)?;
            let records = values
                .into_iter()
                .map(|v| v.map(|b| decode_field(&b)).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            // A reload after a rotation reads the same values again: counted once.
            budget.used.set(baseline);
            let bytes: usize = records
                .iter()
                .flatten()
                .map(|r| {
                    r.ciphertext
                        .len()
                        .saturating_sub(crate::crypto::GCM_TAG_LEN)
                })
                .sum();
            budget.take(bytes)?;
            for ((permit, resolved), record) in permits.iter().zip(records) {
                let Some(record) = record else { continue };
                // Past retention is absent, unless a legal hold outranks retention.
                if record.is_expired(now)
                    && self
                        .read_holds()
                        .holding(sid, &resolved.spec.key_class, now)
                        .is_none()
                {
                    continue;
                }
                let spec = resolved.spec;
                let Some(text) = keys.open_record(sid, resolved.field, &spec.key_class, &record)?
                else {
                    return Ok(Err(StaleKeys));
                };
                let outcome = match resolved.view {
                    // A value a view cannot be derived from (not a date, written before the view
                    // was declared) is absent from the view: the field itself never leaves.
                    Some(view) => match view.derive(&text, utc_date(now)) {
                        Some(derived) => ReadOutcome::Value(Zeroizing::new(derived)),
                        None => continue,
                    },
                    None if permit.masked() => ReadOutcome::Masked(spec.mask.apply(&text)),
                    None => ReadOutcome::Value(text),
                };
                out.insert(permit.field().clone(), outcome);
            }
            Ok(Ok(out))
        })
    }
}
