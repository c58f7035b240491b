//! Legal holds on the vault's side: placing and releasing them (`Action::"hold"`, ledger first,
//! then the audit record), retiring those that lapsed, the refusals a hold imposes on deletes and
//! on reads of an erased subject, and the erasure of what a hold kept once no hold binds it.

use std::collections::BTreeSet;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use crate::audit::{Action, AuditEvent, FieldAudit, FieldOutcome};
use crate::clock::Millis;
use crate::domain::{FieldName, KeyClass, Purpose, Sid, SubjectId};
use crate::hold::{Hold, HoldBook, HoldScope};
use crate::policy::Policies;
use crate::store::keys::erased_key;
use crate::store::{Batch, Cf};
use crate::vault::keys::dek_entry;
use crate::vault::{CallContext, Vault, VaultError, require};

/// The principal of the records the vault makes itself (a hold that lapsed).
const SYSTEM: &str = "privault";

/// A hold as the export and `PlaceHold` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldInfo {
    /// What it keeps.
    pub scope: HoldScope,
    /// The hold itself.
    pub hold: Hold,
}

/// What releasing a hold did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldReleased {
    /// The key classes of an erased subject erased now that no hold keeps them.
    pub erased: Vec<KeyClass>,
    /// The audit record of the release.
    pub audit_seq: u64,
}

/// A key class as a pseudo-field `key_class:<name>` of an audit record.
pub(in crate::vault) fn class_audit(class: &str, outcome: FieldOutcome) -> FieldAudit {
    FieldAudit {
        field: format!("key_class:{class}"),
        outcome,
        policy_ids: Default::default(),
    }
}

impl Vault {
    pub(in crate::vault) fn read_holds(&self) -> RwLockReadGuard<'_, HoldBook> {
        self.holds
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_holds(&self) -> RwLockWriteGuard<'_, HoldBook> {
        self.holds
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The holds on `sid` that bind now.
    pub(in crate::vault) fn holds_of(&self, sid: &Sid) -> Vec<HoldInfo> {
        let now = self.clock.now_ms();
        self.read_holds()
            .of(sid)
            .filter(|(_, h)| h.binds(now))
            .map(|(scope, hold)| HoldInfo {
                scope: scope.clone(),
                hold: hold.clone(),
            })
            .collect()
    }

    /// How many holds bind now, for the metrics.
    pub fn holds_in_force(&self) -> usize {
        self.read_holds().binding_count(self.clock.now_ms())
    }

    /// Whether a hold keeps `field` of `sid` now.
    pub(in crate::vault) fn is_held(
        &self,
        sid: &Sid,
        policies: &Policies,
        field: &FieldName,
    ) -> bool {
        let class = policies.catalog().key_class_of(field);
        self.read_holds()
            .holding(sid, &class, self.clock.now_ms())
            .is_some()
    }

    /// Refuses (FAILED_PRECONDITION) a delete of any of `fields` a legal hold keeps.
    pub(in crate::vault) fn refuse_held(
        &self,
        sid: &Sid,
        policies: &Policies,
        fields: &[&FieldName],
    ) -> Result<(), VaultError> {
        match fields.iter().find(|f| self.is_held(sid, policies, f)) {
            Some(field) => Err(VaultError::FailedPrecondition(format!(
                "field `{field}` is under a legal hold: it cannot be deleted until the hold ends"
            ))),
            None => Ok(()),
        }
    }

    /// Whether a read of an erased subject's held remains for `purpose` is refused: only a purpose
    /// the catalog marks `legal_claims` reads them (GDPR Art. 17(3)(e), 18(2)).
    pub(in crate::vault) fn held_read_refused(policies: &Policies, purpose: &Purpose) -> bool {
        !policies.catalog().is_legal_claims(purpose)
    }

    fn check_reason(&self, reason: &str) -> Result<(), VaultError> {
        if reason.is_empty()
            || reason.len() > self.limits.max_reason_bytes
            || reason.chars().any(char::is_control)
        {
            return Err(VaultError::InvalidArgument(format!(
                "reason must be 1 to {} bytes without control characters (a case reference, \
                 never personal data)",
                self.limits.max_reason_bytes
            )));
        }
        Ok(())
    }

    /// Places a legal hold on `subject`'s `scope` until `until_ms` (or until released), for
    /// `reason`. Placing a hold again on the same scope replaces it (extends or shortens it).
    pub fn place_hold(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        scope: &HoldScope,
        reason: &str,
        until_ms: Option<Millis>,
    ) -> Result<u64, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::HoldPlace, None, &policies);
        let sid = self.keyring.index().sid(subject);
        let _writer = self.lock_subject(&sid)?;
        let now = self.clock.now_ms();
        let hold = Hold {
            reason: reason.to_owned(),
            placed_ms: now,
            until_ms,
        };
        let staged = (|| {
            let (_, keys) = self.locate(subject, &mut event)?;
            self.check_reason(reason)?;
            if until_ms.is_some_and(|until| until <= now) {
                return Err(VaultError::InvalidArgument(
                    "until is in the past: a hold lapses after it is placed".into(),
                ));
            }
            if let HoldScope::Class(class) = scope
                && !policies.catalog().key_classes().contains(class)
            {
                return Err(VaultError::InvalidArgument(format!(
                    "no field of the catalog is sealed under key class `{class}`"
                )));
            }
            require(
                policies.decide_hold(&ctx.principal, scope.name(), reason, false),
                "hold",
            )?;
            if keys.is_none() {
                return Err(VaultError::NotFound(
                    "the vault stores nothing for this subject".into(),
                ));
            }
            self.ledger.append_hold(&sid, scope, &hold).map_err(|e| {
                tracing::error!(error = %e, "cannot append a hold to the deletion ledger; refused");
                VaultError::Unavailable("the deletion ledger cannot be written".into())
            })?;
            Ok((Batch::new(), ()))
        })();
        let placed = staged.is_ok();
        event
            .fields
            .push(class_audit(scope.name(), FieldOutcome::Held));
        match self.finish(event, staged) {
            Ok(((), seq)) => {
                self.write_holds().place(sid, scope.clone(), hold);
                tracing::info!(scope = scope.name(), "legal hold placed");
                Ok(seq)
            }
            Err(e) => {
                if placed {
                    // The record could not be made durable: take the ledger line back, so that a
                    // hold is never in force without its audit record.
                    self.undo_ledger_hold(&sid, scope, None);
                }
                Err(e)
            }
        }
    }

    /// Puts the ledger back as the book has it after a ledger line whose audit record failed.
    fn undo_ledger_hold(&self, sid: &Sid, scope: &HoldScope, previous: Option<&Hold>) {
        let now = self.clock.now_ms();
        let undone = match previous {
            Some(hold) => self.ledger.append_hold(sid, scope, hold),
            None => self.ledger.append_release(sid, scope, "not audited", now),
        };
        if let Err(e) = undone {
            tracing::error!(error = %e, "cannot take back a hold line whose audit record failed");
        } else if let Some(hold) = previous {
            self.write_holds().place(*sid, scope.clone(), hold.clone());
        } else {
            self.write_holds().release(sid, scope);
        }
    }

    /// Lifts the legal hold on `subject`'s `scope`, for `reason`. When the subject was erased
    /// while held, what no other hold keeps is erased in the same batch.
    pub fn release_hold(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        scope: &HoldScope,
        reason: &str,
    ) -> Result<HoldReleased, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::HoldRelease, None, &policies);
        let sid = self.keyring.index().sid(subject);
        let _writer = self.lock_subject(&sid)?;
        let mut previous = None;
        let staged = (|| {
            self.locate(subject, &mut event)?;
            self.check_reason(reason)?;
            require(
                policies.decide_hold(&ctx.principal, scope.name(), reason, true),
                "hold",
            )?;
            let hold = self
                .read_holds()
                .of(&sid)
                .find(|(s, _)| *s == scope)
                .map(|(_, h)| h.clone())
                .ok_or_else(|| {
                    VaultError::NotFound("no hold of this scope on the subject".into())
                })?;
            let now = self.clock.now_ms();
            self.ledger
                .append_release(&sid, scope, reason, now)
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot append a release to the deletion ledger");
                    VaultError::Unavailable("the deletion ledger cannot be written".into())
                })?;
            self.write_holds().release(&sid, scope);
            previous = Some(hold);
            let mut batch = Batch::new();
            let erased = self.stage_held_erasure(&sid, now, &mut batch, &mut event)?;
            Ok((batch, erased))
        })();
        event
            .fields
            .insert(0, class_audit(scope.name(), FieldOutcome::Released));
        match self.finish(event, staged) {
            Ok((erased, audit_seq)) => {
                tracing::info!(scope = scope.name(), "legal hold released");
                self.after_held_erasure(&sid, &erased);
                Ok(HoldReleased { erased, audit_seq })
            }
            Err(e) => {
                if let Some(hold) = previous {
                    self.undo_ledger_hold(&sid, scope, Some(&hold));
                }
                Err(e)
            }
        }
    }

    /// Retires every hold whose `until` passed: a ledger line and an audit record each, and the
    /// erasure of what it alone kept of an erased subject. Returns how many it retired.
    pub fn retire_lapsed_holds(&self) -> Result<usize, VaultError> {
        let lapsed = self.read_holds().lapsed(self.clock.now_ms());
        let mut retired = 0;
        for (sid, scope) in lapsed {
            let _writer = self.lock_subject(&sid)?;
            let now = self.clock.now_ms();
            let still = self
                .read_holds()
                .of(&sid)
                .any(|(s, h)| *s == scope && !h.binds(now));
            if !still {
                continue;
            }
            self.ledger
                .append_release(&sid, &scope, "lapsed", now)
                .map_err(|e| VaultError::Unavailable(e.to_string()))?;
            self.write_holds().release(&sid, &scope);
            let mut event = AuditEvent {
                subject: self.readable_pseudonym(&sid),
                request_id: "holds".into(),
                policy_version: self.policies().version(),
                ..AuditEvent::new(SYSTEM, Action::HoldLapse)
            };
            event
                .fields
                .push(class_audit(scope.name(), FieldOutcome::Released));
            let mut batch = Batch::new();
            let erased = self.stage_held_erasure(&sid, now, &mut batch, &mut event)?;
            self.commit(batch, event)?;
            self.after_held_erasure(&sid, &erased);
            retired += 1;
        }
        Ok(retired)
    }

    /// For an erased subject (marked when a shred kept held classes): stages the erasure of what
    /// no hold binding at `now` keeps any more, updates its erasure receipt and lists the erased
    /// classes in `event`. Nothing for a subject that was not erased.
    fn stage_held_erasure(
        &self,
        sid: &Sid,
        now: Millis,
        batch: &mut Batch,
        event: &mut AuditEvent,
    ) -> Result<Vec<KeyClass>, VaultError> {
        let Some(receipt_id) = self.store.get(Cf::Keys, &erased_key(sid))? else {
            return Ok(Vec::new());
        };
        let receipt_id = String::from_utf8_lossy(&receipt_id).into_owned();
        let before: Vec<(KeyClass, u32)> = self
            .store
            .scan_prefix(Cf::Keys, &sid.0)?
            .iter()
            .filter_map(|(k, v)| dek_entry(k, v).ok().flatten())
            .map(|(class, record)| (class, record.epoch))
            .collect();
        let incarnation = self.incarnation_of(sid)?.flatten().map(|(i, _)| i);
        let mut staged = Batch::new();
        let erased = self.stage_subject_deletion(sid, now, &receipt_id, &mut staged)?;
        let gone: Vec<(KeyClass, u32)> = before
            .into_iter()
            .filter(|(class, _)| !erased.kept.contains_key(class))
            .collect();
        if gone.is_empty() && !erased.kept.is_empty() {
            // Everything left is still held by another hold: nothing to erase yet.
            return Ok(Vec::new());
        }
        batch.append(staged);
        let classes: Vec<KeyClass> = gone.iter().map(|(c, _)| c.clone()).collect();
        let epochs: BTreeSet<u32> = gone.iter().map(|(_, e)| *e).collect();
        self.stage_pending_purge(sid, incarnation.as_ref(), &erased.ranges, batch)?;
        self.stage_held_erased(
            &receipt_id,
            &classes,
            &epochs.into_iter().collect::<Vec<_>>(),
            batch,
        )?;
        event.fields.extend(
            classes
                .iter()
                .map(|c| class_audit(c.as_str(), FieldOutcome::Deleted)),
        );
        Ok(classes)
    }

    /// Once the erasure of held remains is committed: drops the cached keys and purges the bytes.
    fn after_held_erasure(&self, sid: &Sid, erased: &[KeyClass]) {
        if erased.is_empty() {
            return;
        }
        tracing::info!(
            classes = erased.len(),
            "what a legal hold kept of an erased subject is erased now the hold ended"
        );
        self.forget_subject(sid);
        self.finish_purge(sid);
    }
}
