//! Crypto-shredding: one atomic batch deletes the subject's wrapped DEKs, pseudonym, wrapped id,
//! fields, consents and lookup entries and writes a shred receipt and the audit record; then the cached keys are evicted and
//! the bytes are purged from the live store (flush, forced bottommost compaction, no WAL left).

use super::receipt::new_receipt_id;
use super::{CallContext, OpenError, Vault, VaultError, require};
use crate::audit::{Action, AuditEvent};
use crate::domain::{Sid, SubjectId};
use crate::policy::Policies;
use crate::receipt::SignedReceipt;
use crate::store::records::ShredReceipt;
use crate::store::{Batch, Cf};

/// Column families that hold per-subject entries under the sid prefix.
const SUBJECT_CFS: [Cf; 3] = [Cf::Keys, Cf::Fields, Cf::Consent];

/// What an erase staged: whether anything existed, and the `(cf, prefix)` ranges to purge.
pub(super) type Erased = (bool, Vec<(Cf, Vec<u8>)>);

/// What a shred did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredOutcome {
    /// The subject had keys or data before the shred.
    pub existed: bool,
    /// The bytes have physically left the live store.
    pub purged: bool,
    /// The audit record of the shred.
    pub audit_seq: u64,
    /// The signed erasure receipt.
    pub receipt: SignedReceipt,
}

impl Vault {
    /// Destroys every key and value of `subject`, for `reason` (a ticket id, no personal data).
    pub fn shred(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        reason: &str,
    ) -> Result<ShredOutcome, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::Shred, None, &policies);
        let sid = self.keyring.index().sid(subject);
        let receipt_id = new_receipt_id()?;
        let (existed, audit_seq, record) = {
            let _writer = self.lock_subject(&sid)?;
            let staged = self
                .stage_shred(ctx, &policies, &sid, reason, &mut event)
                .and_then(|(mut batch, erased)| {
                    let now = self.clock.now_ms();
                    let record = self.stage_erasure_record(&receipt_id, &sid, now, &mut batch)?;
                    Ok((batch, (erased, record)))
                });
            let (((existed, _), record), audit_seq) = self.finish(event, staged)?;
            // The key is gone from disk; drop the unwrapped copy too, before anyone can use it.
            self.forget_subject(&sid);
            (existed, audit_seq, record)
        };
        crate::metrics::metrics().shreds.inc();
        let purged = self.finish_purge(&sid);
        let receipt = self.issue_receipt(&receipt_id, record, audit_seq)?;
        Ok(ShredOutcome {
            existed,
            purged,
            audit_seq,
            receipt,
        })
    }

    fn stage_shred(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        sid: &Sid,
        reason: &str,
        event: &mut AuditEvent,
    ) -> Result<(Batch, Erased), VaultError> {
        // A subject whose keys fail their integrity check (quarantined) can still be shredded:
        // the shred destroys entries, it never needs to open them.
        match self.subject_keys(sid) {
            Ok(keys) => event.subject = keys.map(|k| k.pseudonym),
            Err(VaultError::DataLoss(_)) => event.subject = self.readable_pseudonym(sid),
            Err(e) => return Err(e),
        }
        if reason.len() > self.limits.max_reason_bytes || reason.chars().any(char::is_control) {
            return Err(VaultError::InvalidArgument(format!(
                "reason must be at most {} bytes without control characters",
                self.limits.max_reason_bytes
            )));
        }
        require(policies.decide_shred(&ctx.principal, reason), "shred")?;
        let mut batch = Batch::new();
        let erased = self.stage_erase(sid, &ctx.principal.to_string(), reason, &mut batch)?;
        Ok((batch, erased))
    }

    /// Stages the deletion of everything stored under `sid` and its shred receipt; returns whether
    /// anything existed and the ranges to purge physically once committed.
    pub(super) fn stage_erase(
        &self,
        sid: &Sid,
        principal: &str,
        reason: &str,
        batch: &mut Batch,
    ) -> Result<Erased, VaultError> {
        // The ledger first: once a shred may commit, no restore may undo it. It names the
        // incarnation erased, so that replay spares a customer who comes back after the shred.
        let incarnation = match self.incarnation_of(sid) {
            Ok(found) => found.flatten().map(|(i, _)| i),
            // An unreadable entry names no incarnation: the shred is recorded by time.
            Err(VaultError::DataLoss(_)) => None,
            Err(e) => return Err(e),
        };
        let now = self.clock.now_ms();
        self.ledger
            .append(sid, incarnation.as_ref(), now)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot append to the deletion ledger; shred refused");
                VaultError::Unavailable("the deletion ledger cannot be written".into())
            })?;
        let (existed, ranges) = self.stage_subject_deletion(sid, batch)?;
        self.stage_pending_purge(sid, incarnation.as_ref(), &ranges, batch)?;
        let receipt = ShredReceipt {
            shredded_ms: now,
            principal: principal.to_owned(),
            reason: reason.to_owned(),
        };
        batch.put(Cf::Shredded, sid.0.to_vec(), receipt.encode());
        self.stage_release(sid, batch);
        Ok((existed, ranges))
    }

    /// Drops what is cached of an erased subject (its unwrapped keys, its consents); called once
    /// the erasure is committed.
    pub(super) fn forget_subject(&self, sid: &Sid) {
        self.keys.evict(sid);
        self.consents.changed();
    }

    /// Stages the deletion of every entry of `sid` (keys, fields, consents, lookup entries);
    /// returns whether there was any and the ranges to purge once committed.
    fn stage_subject_deletion(&self, sid: &Sid, batch: &mut Batch) -> Result<Erased, VaultError> {
        let mut existed = false;
        let mut ranges = Vec::new();
        for cf in SUBJECT_CFS {
            for (key, _) in self.store.scan_prefix(cf, &sid.0)? {
                batch.delete(cf, key);
                existed = true;
            }
            ranges.push((cf, sid.0.to_vec()));
        }
        let lookup = self.stage_unindex_all(sid, batch)?;
        // The reverse-entry prefix is always listed; more means the subject had lookup entries.
        existed |= lookup.len() > 1;
        ranges.extend(lookup.into_iter().map(|prefix| (Cf::Lookup, prefix)));
        Ok((existed, ranges))
    }
}

impl Vault {
    /// Re-shreds every incarnation the deletion ledger says was shredded that is still in the
    /// database (a backup restored from before its shred), and nothing created after the shred.
    /// Returns how many were re-shredded.
    pub(super) fn replay_ledger(&self) -> Result<usize, OpenError> {
        let replay = |e: VaultError| OpenError::Replay(e.to_string());
        let mut count = 0;
        for (sid, shreds) in self.ledger.entries()? {
            let _writer = self.lock_writer().map_err(replay)?;
            let stored = self.incarnation_of(&sid).map_err(replay)?;
            let shredded = match stored {
                // No pseudonym: whatever is left (if anything) has no key to open it.
                None => true,
                Some(Some((incarnation, created_ms))) => {
                    shreds.covers(Some(&incarnation), created_ms)
                }
                Some(None) => {
                    let created = self.first_key_created(&sid).map_err(replay)?;
                    shreds.covers(None, created.unwrap_or(0))
                }
            };
            let incarnation = stored.flatten().map(|(i, _)| i);
            if !shredded {
                continue;
            }
            let mut batch = Batch::new();
            let (existed, ranges) = self
                .stage_subject_deletion(&sid, &mut batch)
                .map_err(replay)?;
            if !existed {
                continue;
            }
            self.stage_pending_purge(&sid, incarnation.as_ref(), &ranges, &mut batch)
                .map_err(replay)?;
            let event = AuditEvent {
                request_id: "ledger".into(),
                policy_version: self.policies().version(),
                ..AuditEvent::new("privault", Action::LedgerReshred)
            };
            self.commit(batch, event).map_err(replay)?;
            self.forget_subject(&sid);
            self.finish_purge(&sid);
            count += 1;
        }
        Ok(count)
    }
}
