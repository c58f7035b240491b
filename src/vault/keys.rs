//! A subject's keys: loading and unwrapping its DEKs and audit pseudonym, creating them on first
//! write, and the bounded cache of unwrapped DEKs (zeroized when evicted, evicted on shred).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::{Vault, VaultError};
use crate::audit::AuditEvent;
use crate::clock::Millis;
use zeroize::Zeroizing;

use crate::crypto::{DekCipher, Key256, Sealed, WrappedDek, random_bytes};
use crate::domain::{FieldName, KeyClass, Pseudonym, Sid, SubjectId};
use crate::store::keys::{name_of, pseudonym_key, subject_key};
use crate::store::records::{FieldRecord, KeyRecord};
use crate::store::{Batch, Cf};

/// Everything needed to open a subject's fields, and to name it in the audit log.
pub(super) struct SubjectKeys {
    pub pseudonym: Pseudonym,
    pub records: BTreeMap<KeyClass, KeyRecord>,
    pub ciphers: BTreeMap<KeyClass, Arc<DekCipher>>,
}

impl SubjectKeys {
    pub fn cipher(&self, class: &KeyClass) -> Result<&DekCipher, VaultError> {
        self.ciphers
            .get(class)
            .map(AsRef::as_ref)
            .ok_or_else(|| VaultError::DataLoss("a stored field has no key in its class".into()))
    }
}

/// A stored field, opened.
pub(super) struct OpenedField {
    pub value: Zeroizing<String>,
    pub written_ms: Millis,
    pub expires_ms: Option<Millis>,
}

impl SubjectKeys {
    /// Decodes and opens the stored record `bytes` of `field` (sealed under `class`); `None` when it
    /// has expired by `now`. Any failure to decode, authenticate or read as UTF-8 is DATA_LOSS.
    pub fn open_field(
        &self,
        sid: &Sid,
        field: &FieldName,
        class: &KeyClass,
        bytes: &[u8],
        now: Millis,
    ) -> Result<Option<OpenedField>, VaultError> {
        let record = FieldRecord::decode(bytes).map_err(|e| VaultError::DataLoss(e.to_string()))?;
        if record.expires_ms.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        let sealed = Sealed {
            dek_version: record.dek_version,
            nonce: record.nonce,
            ciphertext: record.ciphertext,
        };
        let plain = self.cipher(class)?.open(sid, field, &sealed).map_err(|_| {
            VaultError::DataLoss(format!("field `{field}` failed its integrity check"))
        })?;
        let value = String::from_utf8(plain.to_vec())
            .map_err(|_| VaultError::DataLoss(format!("field `{field}` is not UTF-8")))?;
        Ok(Some(OpenedField {
            value: Zeroizing::new(value),
            written_ms: record.written_ms,
            expires_ms: record.expires_ms,
        }))
    }
}

/// Unwrapped subject keys, least recently used evicted first. Dropping the last `Arc` of a
/// `DekCipher` wipes its key schedule.
pub(super) struct KeyCache {
    inner: Mutex<LruCache<Sid, Arc<SubjectKeys>>>,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(LruCache::new(cap)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut LruCache<Sid, Arc<SubjectKeys>>) -> T) -> T {
        match self.inner.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn get(&self, sid: &Sid) -> Option<Arc<SubjectKeys>> {
        self.with(|c| c.get(sid).cloned())
    }

    pub fn insert(&self, sid: Sid, keys: Arc<SubjectKeys>) {
        self.with(|c| c.put(sid, keys));
    }

    pub fn evict(&self, sid: &Sid) {
        self.with(|c| c.pop(sid));
    }
}

impl Vault {
    fn unwrap_dek(
        &self,
        sid: &Sid,
        class: &KeyClass,
        record: &KeyRecord,
    ) -> Result<DekCipher, VaultError> {
        let kek = self.keyring.kek(record.epoch).ok_or_else(|| {
            VaultError::DataLoss(format!(
                "a key is wrapped under epoch {}, which this keyring lacks",
                record.epoch
            ))
        })?;
        let wrapped = WrappedDek {
            epoch: record.epoch,
            nonce: record.nonce,
            ciphertext: record.wrapped.clone(),
        };
        let dek = kek.unwrap(&wrapped, sid, class).map_err(|_| {
            VaultError::DataLoss("a subject key failed to unwrap (tampered or misplaced)".into())
        })?;
        Ok(DekCipher::new(&dek, record.dek_version))
    }

    /// The subject's keys, from the cache or the store; `None` when the subject has none.
    pub(super) fn subject_keys(&self, sid: &Sid) -> Result<Option<Arc<SubjectKeys>>, VaultError> {
        if let Some(keys) = self.keys.get(sid) {
            return Ok(Some(keys));
        }
        let mut pseudonym = None;
        let mut records = BTreeMap::new();
        let mut ciphers = BTreeMap::new();
        for (key, value) in self.store.scan_prefix(Cf::Keys, &sid.0)? {
            if key == pseudonym_key(sid) {
                let bytes: [u8; 16] = value
                    .try_into()
                    .map_err(|_| VaultError::DataLoss("malformed audit pseudonym".into()))?;
                pseudonym = Some(Pseudonym(bytes));
                continue;
            }
            let class = name_of(&key)
                .and_then(|n| KeyClass::new(n).ok())
                .ok_or_else(|| VaultError::DataLoss("malformed key entry".into()))?;
            let record =
                KeyRecord::decode(&value).map_err(|e| VaultError::DataLoss(e.to_string()))?;
            ciphers.insert(
                class.clone(),
                Arc::new(self.unwrap_dek(sid, &class, &record)?),
            );
            records.insert(class, record);
        }
        let Some(pseudonym) = pseudonym else {
            return Ok(None);
        };
        let keys = Arc::new(SubjectKeys {
            pseudonym,
            records,
            ciphers,
        });
        self.keys.insert(*sid, Arc::clone(&keys));
        Ok(Some(keys))
    }

    /// The subject's sid and keys, naming its pseudonym in `event` so that even a refused call is
    /// attributable to the subject it targeted.
    pub(super) fn locate(
        &self,
        subject: &SubjectId,
        event: &mut AuditEvent,
    ) -> Result<(Sid, Option<Arc<SubjectKeys>>), VaultError> {
        let sid = self.keyring.index().sid(subject);
        let keys = self.subject_keys(&sid)?;
        event.subject = keys.as_ref().map(|k| k.pseudonym.to_string());
        Ok((sid, keys))
    }

    /// For a write under the writer lock: the subject's keys with a DEK in every class of
    /// `classes`, creating the pseudonym and missing DEKs into `batch`. The cache is updated by the
    /// caller once the batch is durable.
    pub(super) fn keys_for_write(
        &self,
        sid: &Sid,
        classes: &BTreeSet<KeyClass>,
        batch: &mut Batch,
        now: Millis,
    ) -> Result<SubjectKeys, VaultError> {
        let existing = self.subject_keys(sid)?;
        let mut keys = match existing {
            Some(k) => SubjectKeys {
                pseudonym: k.pseudonym,
                records: k.records.clone(),
                ciphers: k.ciphers.clone(),
            },
            None => {
                let mut bytes = [0u8; 16];
                random_bytes(&mut bytes).map_err(|e| VaultError::Internal(e.to_string()))?;
                batch.put(Cf::Keys, pseudonym_key(sid), bytes.to_vec());
                SubjectKeys {
                    pseudonym: Pseudonym(bytes),
                    records: BTreeMap::new(),
                    ciphers: BTreeMap::new(),
                }
            }
        };
        for class in classes {
            if keys.records.contains_key(class) {
                continue;
            }
            let dek = Key256::random().map_err(|e| VaultError::Internal(e.to_string()))?;
            let kek = self.keyring.current_kek();
            let wrapped = kek
                .wrap(&dek, sid, class)
                .map_err(|e| VaultError::Internal(e.to_string()))?;
            let record = KeyRecord {
                dek_version: 1,
                epoch: wrapped.epoch,
                nonce: wrapped.nonce,
                wrapped: wrapped.ciphertext,
                created_ms: now,
                seals: 0,
            };
            keys.ciphers
                .insert(class.clone(), Arc::new(DekCipher::new(&dek, 1)));
            keys.records.insert(class.clone(), record);
        }
        Ok(keys)
    }

    /// Counts `seals` new encryptions under `class` and stages the updated key record.
    pub(super) fn count_seals(
        &self,
        sid: &Sid,
        keys: &mut SubjectKeys,
        class: &KeyClass,
        seals: u64,
        batch: &mut Batch,
    ) {
        if let Some(record) = keys.records.get_mut(class) {
            record.seals = record.seals.saturating_add(seals);
            if record.seals > (1 << 31) {
                tracing::warn!(?sid, "a subject key has sealed over 2^31 values; rotate it");
            }
            batch.put(Cf::Keys, subject_key(sid, class.as_str()), record.encode());
        }
    }
}
