//! DEK rotation: a fresh DEK (the next version) replaces a subject's key in a class, and every
//! other stored field of that class is re-sealed under it in the same batch. Overwrites, deletes
//! and expiry rotate, so a superseded ciphertext is left with no live key: it dies with the old
//! wrapped DEK (from the live store at compaction, in any copy at the next epoch roll).

use std::collections::BTreeSet;

use zeroize::Zeroizing;

use crate::catalog::Catalog;
use crate::clock::Millis;
use crate::domain::{FieldName, KeyClass, Sid};
use crate::store::keys::{name_of, subject_key};
use crate::store::records::FieldRecord;
use crate::store::{Batch, Cf};
use crate::vault::keys::{SubjectKeys, decode_field};
use crate::vault::{Vault, VaultError};

/// A stored field kept across a rotation: opened under the old DEK, sealed again under the new.
struct Kept {
    field: FieldName,
    class: KeyClass,
    record: FieldRecord,
    value: Zeroizing<String>,
}

impl Vault {
    /// Rotates the subject's DEK in each of `classes`, re-sealing every stored field of those
    /// classes except `dropped` (fields the caller overwrites or deletes in the same batch).
    /// Runs under the writer lock with keys read from the store. Returns how many were re-sealed.
    #[expect(clippy::too_many_arguments, reason = "one staged change, spelled out")]
    pub(in crate::vault) fn rotate_deks(
        &self,
        sid: &Sid,
        keys: &mut SubjectKeys,
        classes: &BTreeSet<KeyClass>,
        dropped: &BTreeSet<&FieldName>,
        catalog: &Catalog,
        batch: &mut Batch,
        now: Millis,
    ) -> Result<usize, VaultError> {
        let classes: BTreeSet<&KeyClass> = classes
            .iter()
            .filter(|c| keys.version(c).is_some())
            .collect();
        if classes.is_empty() {
            return Ok(0);
        }
        let mut kept = Vec::new();
        for (key, bytes) in self.store.scan_prefix(Cf::Fields, &sid.0)? {
            let field = name_of(&key)
                .and_then(|n| FieldName::new(n).ok())
                .ok_or_else(|| VaultError::DataLoss("malformed field entry".into()))?;
            let class = catalog.key_class_of(&field);
            if dropped.contains(&field) || !classes.contains(&class) {
                continue;
            }
            let record = decode_field(&bytes)?;
            let value = keys
                .open_record(sid, &field, &class, &record)?
                .ok_or_else(|| {
                    VaultError::DataLoss(format!(
                        "field `{field}` is sealed under a DEK version its subject lacks"
                    ))
                })?;
            kept.push(Kept {
                field,
                class,
                record,
                value,
            });
        }
        for class in &classes {
            let next = keys.version(class).map_or(1, |v| v.saturating_add(1));
            self.new_dek(sid, keys, class, next, batch, now)?;
        }
        for kept in &kept {
            // Re-sealed values bind their times, whatever format they were stored in.
            let times = crate::crypto::FieldTimes {
                written_ms: kept.record.written_ms,
                expires_ms: kept.record.expires_ms,
            };
            let sealed = keys
                .cipher(&kept.class)?
                .seal(sid, &kept.field, &times, kept.value.as_bytes())
                .map_err(|e| VaultError::Internal(e.to_string()))?;
            let record = FieldRecord {
                dek_version: sealed.dek_version,
                nonce: sealed.nonce,
                ciphertext: sealed.ciphertext,
                times_bound: true,
                ..kept.record.clone()
            };
            batch.put(
                Cf::Fields,
                subject_key(sid, kept.field.as_str()),
                record.encode(),
            );
        }
        for class in classes {
            let count = kept.iter().filter(|k| &k.class == class).count() as u64;
            self.count_seals(sid, keys, class, count, batch);
        }
        Ok(kept.len())
    }
}
