//! Crypto-shredding: one atomic batch deletes the subject's wrapped DEKs, pseudonym, wrapped id,
//! fields, consents and lookup entries and writes a shred receipt and the audit record; then the cached keys are evicted and
//! the bytes are purged from the live store (flush, forced bottommost compaction, no WAL left).

use super::{CallContext, OpenError, Vault, VaultError, require};
use crate::audit::AuditEvent;
use crate::domain::{Sid, SubjectId};
use crate::policy::Policies;
use crate::store::records::ShredReceipt;
use crate::store::{Batch, Cf};

/// Column families that hold per-subject entries under the sid prefix.
const SUBJECT_CFS: [Cf; 3] = [Cf::Keys, Cf::Fields, Cf::Consent];

/// What an erase staged: whether anything existed, and the `(cf, prefix)` ranges to purge.
pub(super) type Erased = (bool, Vec<(Cf, Vec<u8>)>);

/// What a shred did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShredOutcome {
    /// The subject had keys or data before the shred.
    pub existed: bool,
    /// The bytes have physically left the live store.
    pub purged: bool,
    /// The audit record of the shred.
    pub audit_seq: u64,
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
        let mut event = self.event(ctx, "shred", None, &policies);
        let sid = self.keyring.index().sid(subject);
        let committed = {
            let _writer = self.lock_subject(&sid)?;
            let staged = self.stage_shred(ctx, &policies, &sid, reason, &mut event);
            let ((existed, ranges), audit_seq) = self.finish(event, staged)?;
            // The key is gone from disk; drop the unwrapped copy too, before anyone can use it.
            self.forget_subject(&sid);
            (existed, audit_seq, ranges)
        };
        let purged = match self.store.purge(&committed.2) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "shred committed but the physical purge failed");
                false
            }
        };
        Ok(ShredOutcome {
            existed: committed.0,
            purged,
            audit_seq: committed.1,
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
        if let Some(keys) = self.subject_keys(sid)? {
            event.subject = Some(keys.pseudonym.to_string());
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
        // The ledger first: once a shred may commit, no restore may undo it.
        self.ledger.append(sid, self.clock.now_ms()).map_err(|e| {
            tracing::error!(error = %e, "cannot append to the deletion ledger; shred refused");
            VaultError::Unavailable("the deletion ledger cannot be written".into())
        })?;
        let (existed, ranges) = self.stage_subject_deletion(sid, batch)?;
        let receipt = ShredReceipt {
            shredded_ms: self.clock.now_ms(),
            principal: principal.to_owned(),
            reason: reason.to_owned(),
        };
        batch.put(Cf::Shredded, sid.0.to_vec(), receipt.encode());
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
    /// Re-shreds every subject the deletion ledger names that still has entries in the database
    /// (a backup restored from before its shred). Returns how many were re-shredded.
    pub(super) fn replay_ledger(&self) -> Result<usize, OpenError> {
        let replay = |e: VaultError| OpenError::Replay(e.to_string());
        let mut count = 0;
        for sid in self.ledger.sids()? {
            let _writer = self.lock_writer().map_err(replay)?;
            let mut batch = Batch::new();
            let (existed, ranges) = self
                .stage_subject_deletion(&sid, &mut batch)
                .map_err(replay)?;
            if !existed {
                continue;
            }
            let event = AuditEvent {
                principal: "privault".into(),
                action: "ledger_reshred".into(),
                outcome: "ok".into(),
                request_id: "ledger".into(),
                policy_version: self.policies().version(),
                ..AuditEvent::default()
            };
            self.commit(batch, event).map_err(replay)?;
            self.forget_subject(&sid);
            self.store.purge(&ranges)?;
            count += 1;
        }
        Ok(count)
    }
}
