//! Crypto-shredding: one atomic batch deletes the subject's wrapped DEKs, pseudonym, fields and
//! consents and writes a shred receipt and the audit record; then the cached keys are evicted and
//! the bytes are purged from the live store (flush, forced bottommost compaction, no WAL left).

use super::{CallContext, Vault, VaultError, require};
use crate::audit::AuditEvent;
use crate::domain::{Sid, SubjectId};
use crate::policy::Policies;
use crate::store::records::ShredReceipt;
use crate::store::{Batch, Cf};

/// Column families that hold per-subject entries under the sid prefix.
const SUBJECT_CFS: [Cf; 3] = [Cf::Keys, Cf::Fields, Cf::Consent];

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
            let _writer = self
                .writer
                .lock()
                .map_err(|_| VaultError::Internal("writer poisoned".into()))?;
            let staged = self.stage_shred(ctx, &policies, &sid, reason, &mut event);
            let (existed, audit_seq) = self.finish(event, staged)?;
            // The key is gone from disk; drop the unwrapped copy too, before anyone can use it.
            self.keys.evict(&sid);
            (existed, audit_seq)
        };
        let purged = match self.store.purge_prefix(&sid.0, &SUBJECT_CFS) {
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
    ) -> Result<(Batch, bool), VaultError> {
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
        let mut existed = false;
        for cf in SUBJECT_CFS {
            for (key, _) in self.store.scan_prefix(cf, &sid.0)? {
                batch.delete(cf, key);
                existed = true;
            }
        }
        let receipt = ShredReceipt {
            shredded_ms: self.clock.now_ms(),
            principal: ctx.principal.to_string(),
            reason: reason.to_owned(),
        };
        batch.put(Cf::Shredded, sid.0.to_vec(), receipt.encode());
        Ok((batch, existed))
    }
}
