//! Crypto-shredding: one atomic batch deletes the subject's wrapped DEKs, pseudonym, wrapped id,
//! fields, consents and lookup entries and writes a shred receipt and the audit record; then the cached keys are evicted and
//! the bytes are purged from the live store (flush, forced bottommost compaction, no WAL left).
//! A key class under a legal hold is kept (its DEK, its fields, the pseudonym that names the
//! subject in the audit log) and the subject marked erased, until the hold ends.

use std::collections::BTreeMap;

use crate::audit::{Action, AuditEvent, FieldOutcome};
use crate::domain::{FieldName, KeyClass, Sid, SubjectId};
use crate::policy::Policies;
use crate::receipt::SignedReceipt;
use crate::store::keys::{canary_key, erased_key, is_subject_entry, name_of};
use crate::store::records::ShredReceipt;
use crate::store::{Batch, Cf};
use crate::vault::hold::class_audit;
use crate::vault::keys::dek_entry;
use crate::vault::receipt::new_receipt_id;
use crate::vault::{CallContext, OpenError, Vault, VaultError, require};

/// Column families that hold per-subject entries under the sid prefix.
const SUBJECT_CFS: [Cf; 3] = [Cf::Keys, Cf::Fields, Cf::Consent];

/// What an erase staged.
#[derive(Debug, Default)]
pub(in crate::vault) struct Erased {
    /// Anything was deleted.
    pub existed: bool,
    /// The `(cf, prefix)` ranges to purge once committed.
    pub ranges: Vec<(Cf, Vec<u8>)>,
    /// The key classes a legal hold kept, each with its hold's reason.
    pub kept: BTreeMap<KeyClass, String>,
}

/// Lists the key classes `kept` in a shred's audit record, as pseudo-fields `key_class:<name>`
/// with outcome `held`.
fn audit_kept(event: &mut AuditEvent, kept: &BTreeMap<KeyClass, String>) {
    event.fields.extend(
        kept.keys()
            .map(|class| class_audit(class.as_str(), FieldOutcome::Held)),
    );
}

/// What a shred did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredOutcome {
    /// The subject had keys or data before the shred.
    pub existed: bool,
    /// The bytes have physically left the live store.
    pub purged: bool,
    /// The key classes a legal hold kept, each with its hold's reason.
    pub kept: BTreeMap<KeyClass, String>,
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
        let (erased, audit_seq, record) = {
            let _writer = self.lock_subject(&sid)?;
            let staged = self
                .stage_shred(ctx, &policies, &sid, reason, &receipt_id, &mut event)
                .and_then(|(mut batch, erased)| {
                    let now = self.clock.now_ms();
                    let record = self.stage_erasure_record(
                        &receipt_id,
                        &sid,
                        &erased.kept,
                        now,
                        &mut batch,
                    )?;
                    audit_kept(&mut event, &erased.kept);
                    Ok((batch, (erased, record)))
                });
            let ((erased, record), audit_seq) = self.finish(event, staged)?;
            // The key is gone from disk; drop the unwrapped copy too, before anyone can use it.
            self.forget_subject(&sid);
            (erased, audit_seq, record)
        };
        crate::metrics::metrics().shreds.inc();
        if !erased.kept.is_empty() {
            tracing::info!(
                kept = erased.kept.len(),
                "shred: key classes under a legal hold kept until the hold ends"
            );
        }
        let purged = self.finish_purge(&sid);
        let receipt = self.issue_receipt(&receipt_id, record, audit_seq)?;
        Ok(ShredOutcome {
            existed: erased.existed,
            purged,
            kept: erased.kept,
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
        receipt_id: &str,
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
        let erased = self.stage_erase(
            sid,
            &ctx.principal.to_string(),
            reason,
            receipt_id,
            &mut batch,
        )?;
        Ok((batch, erased))
    }

    /// Stages the deletion of everything stored under `sid` that no legal hold keeps, and its
    /// shred receipt; returns what it deleted, what it kept and the ranges to purge once
    /// committed. `receipt_id` is the erasure receipt that will tell what was kept.
    pub(in crate::vault) fn stage_erase(
        &self,
        sid: &Sid,
        principal: &str,
        reason: &str,
        receipt_id: &str,
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
        let erased = self.stage_subject_deletion(sid, now, receipt_id, batch)?;
        self.stage_pending_purge(sid, incarnation.as_ref(), &erased.ranges, batch)?;
        let receipt = ShredReceipt {
            shredded_ms: now,
            principal: principal.to_owned(),
            reason: reason.to_owned(),
        };
        batch.put(Cf::Shredded, sid.0.to_vec(), receipt.encode());
        self.stage_release(sid, batch);
        Ok(erased)
    }

    /// Drops what is cached of an erased subject (its unwrapped keys, its consents); called once
    /// the erasure is committed.
    pub(in crate::vault) fn forget_subject(&self, sid: &Sid) {
        self.keys.evict(sid);
        self.consents.changed();
    }

    /// Stages the deletion of every entry of `sid` (keys, fields, consents, lookup entries) that
    /// no legal hold binding at `now` keeps; returns what it deleted and kept, and the ranges to
    /// purge once committed. When a hold keeps anything, the DEKs and fields of the kept classes
    /// stay with the pseudonym and wrapped id, and the subject is marked erased (the marker's value
    /// names the erasure receipt, `receipt_id`).
    pub(in crate::vault) fn stage_subject_deletion(
        &self,
        sid: &Sid,
        now: crate::clock::Millis,
        receipt_id: &str,
        batch: &mut Batch,
    ) -> Result<Erased, VaultError> {
        let keys = self.store.scan_prefix(Cf::Keys, &sid.0)?;
        let classes: Vec<KeyClass> = keys
            .iter()
            .filter_map(|(key, value)| dek_entry(key, value).ok().flatten().map(|(c, _)| c))
            .collect();
        let kept = self.read_holds().kept(sid, &classes, now);
        let policies = self.policies();
        let catalog = policies.catalog();
        let keeps_field = |key: &[u8]| {
            name_of(key)
                .and_then(|n| FieldName::new(n).ok())
                .is_some_and(|f| kept.contains_key(&catalog.key_class_of(&f)))
        };
        let marker = erased_key(sid);
        let keeps_key = |key: &[u8], value: &[u8]| {
            if kept.is_empty() {
                return false;
            }
            if is_subject_entry(key) {
                // The pseudonym and wrapped id stay with what is kept; a canary mark does not.
                return key != canary_key(sid).as_slice();
            }
            dek_entry(key, value)
                .ok()
                .flatten()
                .is_some_and(|(class, _)| kept.contains_key(&class))
        };
        let mut erased = Erased::default();
        for (key, value) in keys {
            if !keeps_key(&key, &value) {
                batch.delete(Cf::Keys, key);
                erased.existed = true;
            }
        }
        for cf in SUBJECT_CFS.into_iter().filter(|cf| *cf != Cf::Keys) {
            for (key, _) in self.store.scan_prefix(cf, &sid.0)? {
                if cf == Cf::Fields && keeps_field(&key) {
                    continue;
                }
                batch.delete(cf, key);
                erased.existed = true;
            }
        }
        erased.ranges = SUBJECT_CFS
            .into_iter()
            .map(|cf| (cf, sid.0.to_vec()))
            .collect();
        if !kept.is_empty() && self.store.get(Cf::Keys, &marker)?.is_none() {
            batch.put(Cf::Keys, marker, receipt_id.as_bytes().to_vec());
        }
        let lookup = self.stage_unindex_all(sid, batch)?;
        // The reverse-entry prefix is always listed; more means the subject had lookup entries.
        erased.existed |= lookup.len() > 1;
        erased
            .ranges
            .extend(lookup.into_iter().map(|prefix| (Cf::Lookup, prefix)));
        erased.kept = kept;
        Ok(erased)
    }
}

impl Vault {
    /// Re-shreds every incarnation the deletion ledger says was shredded that is still in the
    /// database (a backup restored from before its shred), and nothing created after the shred.
    /// Returns how many were re-shredded.
    pub(in crate::vault) fn replay_ledger(&self) -> Result<usize, OpenError> {
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
            let erased = self
                .stage_subject_deletion(&sid, self.clock.now_ms(), "", &mut batch)
                .map_err(replay)?;
            if !erased.existed {
                continue;
            }
            self.stage_pending_purge(&sid, incarnation.as_ref(), &erased.ranges, &mut batch)
                .map_err(replay)?;
            let mut event = AuditEvent {
                request_id: "ledger".into(),
                policy_version: self.policies().version(),
                ..AuditEvent::new("privault", Action::LedgerReshred)
            };
            audit_kept(&mut event, &erased.kept);
            self.commit(batch, event).map_err(replay)?;
            self.forget_subject(&sid);
            self.finish_purge(&sid);
            count += 1;
        }
        Ok(count)
    }
}
