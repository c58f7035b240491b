//! Erasure receipts on the vault's side: what a shred erased is recorded in its own batch (under a
//! random receipt id, in the meta column family), and a receipt signed with the audit key is
//! issued from it, at the shred and again later with the horizons passed since.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::Action;
use crate::clock::{Millis, rfc3339};
use crate::crypto::random_bytes;
use crate::domain::{KeyClass, Sid};
use crate::policy::AdminAction;
use crate::receipt::{Horizons, KeptClass, ReceiptBody, SignedReceipt};
use crate::store::{Batch, Cf};
use crate::vault::{CallContext, Vault, VaultError, require};

const PREFIX: &[u8] = b"erasure-receipt/";

/// What a shred erased, kept so that its receipt can be issued again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::vault) struct ErasureRecord {
    /// The erased subject's sid (hex): only to look up its pending purge; never in a receipt.
    sid: String,
    shredded_ms: Millis,
    classes: Vec<String>,
    epochs: Vec<u32>,
    /// The shred's audit seq, set once the shred is committed.
    #[serde(default)]
    audit_seq: Option<u64>,
    /// The key classes a legal hold kept, with the hold's reason; moved to `classes` when the
    /// hold ends and they are erased.
    #[serde(default)]
    kept: Vec<KeptClass>,
}

fn record_key(receipt_id: &str) -> Vec<u8> {
    [PREFIX, receipt_id.as_bytes()].concat()
}

/// A receipt or extract id from a caller (`name` in the error): 32 hex digits, lowercased.
pub(in crate::vault) fn parse_id(id: &str, name: &str) -> Result<String, VaultError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(VaultError::InvalidArgument(format!(
            "{name} is 32 hex digits"
        )));
    }
    Ok(id.to_ascii_lowercase())
}

/// A fresh receipt id: 32 hex digits.
pub(in crate::vault) fn new_receipt_id() -> Result<String, VaultError> {
    let mut id = [0u8; 16];
    random_bytes(&mut id).map_err(|e| VaultError::Unavailable(e.to_string()))?;
    Ok(hex::encode(id))
}

impl Vault {
    /// Stages the record of an erasure of `sid` into its batch: the key classes and epochs of
    /// the DEKs it destroys, and the classes a legal hold keeps.
    pub(in crate::vault) fn stage_erasure_record(
        &self,
        receipt_id: &str,
        sid: &Sid,
        kept: &BTreeMap<KeyClass, String>,
        now: Millis,
        batch: &mut Batch,
    ) -> Result<ErasureRecord, VaultError> {
        // The keys the shred is about to destroy, from the cache when they are there (the shred
        // holds the subject's writer lock, so they are the stored ones).
        let (classes, mut epochs) = match self.subject_keys(sid) {
            Ok(Some(keys)) => {
                let erased = || keys.records.iter().filter(|(c, _)| !kept.contains_key(*c));
                (
                    erased().map(|(c, _)| c.to_string()).collect(),
                    erased().map(|(_, r)| r.epoch).collect::<Vec<_>>(),
                )
            }
            // Nothing stored, or keys too damaged to read (a quarantined subject): nothing to
            // name, and the shred erases what there is all the same.
            Ok(None) | Err(VaultError::DataLoss(_)) => (Vec::new(), Vec::new()),
            Err(e) => return Err(e),
        };
        epochs.sort_unstable();
        epochs.dedup();
        let record = ErasureRecord {
            sid: hex::encode(sid.0),
            shredded_ms: now,
            classes,
            epochs,
            audit_seq: None,
            kept: kept
                .iter()
                .map(|(class, reason)| KeptClass {
                    key_class: class.to_string(),
                    reason: reason.clone(),
                })
                .collect(),
        };
        self.put_erasure_record(receipt_id, &record, batch)?;
        Ok(record)
    }

    /// Stages the update of erasure receipt `receipt_id` once what a hold kept is erased too:
    /// `classes` move from kept to erased, with the epochs that wrapped them (`epochs`). A
    /// missing or unreadable record (a ledger replay names none) changes nothing.
    pub(in crate::vault) fn stage_held_erased(
        &self,
        receipt_id: &str,
        classes: &[KeyClass],
        epochs: &[u32],
        batch: &mut Batch,
    ) -> Result<(), VaultError> {
        if receipt_id.is_empty() {
            return Ok(());
        }
        let Some(bytes) = self.store.get(Cf::Meta, &record_key(receipt_id))? else {
            return Ok(());
        };
        let Ok(mut record) = serde_json::from_slice::<ErasureRecord>(&bytes) else {
            return Ok(());
        };
        let names: Vec<String> = classes.iter().map(ToString::to_string).collect();
        record.kept.retain(|k| !names.contains(&k.key_class));
        record.classes.extend(names);
        record.epochs.extend_from_slice(epochs);
        record.epochs.sort_unstable();
        record.epochs.dedup();
        self.put_erasure_record(receipt_id, &record, batch)
    }

    fn put_erasure_record(
        &self,
        receipt_id: &str,
        record: &ErasureRecord,
        batch: &mut Batch,
    ) -> Result<(), VaultError> {
        let bytes = serde_json::to_vec(record).map_err(|e| VaultError::Internal(e.to_string()))?;
        batch.put(Cf::Meta, record_key(receipt_id), bytes);
        Ok(())
    }

    /// Once the shred is committed: records its audit seq and issues the receipt.
    pub(in crate::vault) fn issue_receipt(
        &self,
        receipt_id: &str,
        mut record: ErasureRecord,
        audit_seq: u64,
    ) -> Result<SignedReceipt, VaultError> {
        record.audit_seq = Some(audit_seq);
        let mut batch = Batch::new();
        self.put_erasure_record(receipt_id, &record, &mut batch)?;
        if let Err(e) = self.store.write(&batch) {
            // The shred stands; only the later updates of this receipt are lost.
            tracing::error!(error = %e, "cannot record the erasure receipt's audit seq");
        }
        self.sign_receipt(receipt_id, &record)
    }

    fn sign_receipt(
        &self,
        receipt_id: &str,
        record: &ErasureRecord,
    ) -> Result<SignedReceipt, VaultError> {
        let sid = hex::decode(&record.sid)
            .ok()
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .map(Sid)
            .ok_or_else(|| VaultError::DataLoss("an erasure record is malformed".into()))?;
        let horizons = Horizons {
            keys_destroyed: true,
            live_store_purged: !self.purge_pending(&sid)?,
            epochs_destroyed: record.epochs.iter().all(|e| self.keyring.kek(*e).is_none()),
        };
        let body = ReceiptBody {
            version: 1,
            receipt_id: receipt_id.to_owned(),
            vault: hex::encode(self.keyring.id()),
            shredded_at: rfc3339(record.shredded_ms),
            key_classes_erased: record.classes.clone(),
            key_classes_kept: record.kept.clone(),
            audit_seq: record.audit_seq.unwrap_or(0),
            epochs: record.epochs.clone(),
            horizons,
            issued_at: rfc3339(self.clock.now_ms()),
        };
        SignedReceipt::sign(body, self.keyring.audit_signer())
            .map_err(|e| VaultError::Internal(e.to_string()))
    }

    /// The erasure receipt `receipt_id`, signed again with the horizons reached by now. Authorized
    /// as `audit_read`: the DPO and auditors fetch it to hand to the customer.
    pub fn get_erasure_receipt(
        &self,
        ctx: &CallContext,
        receipt_id: &str,
    ) -> Result<SignedReceipt, VaultError> {
        let policies = self.policies();
        let event = self.event(ctx, Action::ReceiptGet, None, &policies);
        let result = (|| {
            require(
                policies.decide_admin(&ctx.principal, AdminAction::AuditRead),
                "audit_read",
            )?;
            let receipt_id = parse_id(receipt_id, "receipt_id")?;
            let bytes = self
                .store
                .get(Cf::Meta, &record_key(&receipt_id))?
                .ok_or_else(|| VaultError::NotFound("no erasure receipt has this id".into()))?;
            let record: ErasureRecord = serde_json::from_slice(&bytes)
                .map_err(|_| VaultError::DataLoss("an erasure record is malformed".into()))?;
            Ok((Batch::new(), self.sign_receipt(&receipt_id, &record)?))
        })();
        self.finish(event, result).map(|(r, _)| r)
    }
}
