//! A subject's keys: loading and unwrapping its DEKs and audit pseudonym, creating them on first
//! write, and the bounded cache of unwrapped DEKs (zeroized when evicted, evicted on shred).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::audit::AuditEvent;
use crate::clock::Millis;
use crate::vault::{Vault, VaultError};
use zeroize::Zeroizing;

use crate::crypto::{DekCipher, Kek, Key256, Sealed, WrappedDek};
use crate::domain::{FieldName, KeyClass, Pseudonym, Sid, SubjectId};
use crate::store::keys::{
    canary_key, erased_key, is_subject_entry, name_of, pseudonym_key, subject_key,
};
use crate::store::records::{FieldRecord, KeyRecord};
use crate::store::{Batch, Cf};

/// Everything needed to open a subject's fields, and to name it in the audit log.
pub(in crate::vault) struct SubjectKeys {
    pub pseudonym: Pseudonym,
    pub records: BTreeMap<KeyClass, KeyRecord>,
    pub ciphers: BTreeMap<KeyClass, Arc<DekCipher>>,
    /// A canary: a decoy subject whose every read raises the alarm.
    pub canary: bool,
    /// Shredded while a legal hold kept part of it: what is left is read only for legal claims
    /// and erased when the hold ends.
    pub erased: bool,
}

impl SubjectKeys {
    pub fn cipher(&self, class: &KeyClass) -> Result<&DekCipher, VaultError> {
        self.ciphers
            .get(class)
            .map(AsRef::as_ref)
            .ok_or_else(|| VaultError::DataLoss("a stored field has no key in its class".into()))
    }
}

impl SubjectKeys {
    /// The DEK version currently held for `class`.
    pub fn version(&self, class: &KeyClass) -> Option<u32> {
        self.records.get(class).map(|r| r.dek_version)
    }

    /// Opens `record` of `field`, sealed under `class`. `None` when it was sealed under another DEK
    /// version than these keys hold: the keys changed under a concurrent rotation, so the caller
    /// reloads them ([`Vault::with_current_keys`]). A record that fails to authenticate or is not
    /// UTF-8 is DATA_LOSS.
    pub fn open_record(
        &self,
        sid: &Sid,
        field: &FieldName,
        class: &KeyClass,
        record: &FieldRecord,
    ) -> Result<Option<Zeroizing<String>>, VaultError> {
        if self.version(class) != Some(record.dek_version) {
            return Ok(None);
        }
        let sealed = Sealed {
            dek_version: record.dek_version,
            nonce: record.nonce,
            ciphertext: record.ciphertext.clone(),
        };
        let times = record.bound_times();
        let plain = self
            .cipher(class)?
            .open(sid, field, times.as_ref(), &sealed)
            .map_err(|_| {
                VaultError::DataLoss(format!("field `{field}` failed its integrity check"))
            })?;
        let value = String::from_utf8(plain.to_vec())
            .map_err(|_| VaultError::DataLoss(format!("field `{field}` is not UTF-8")))?;
        Ok(Some(Zeroizing::new(value)))
    }
}

/// A read that found a record sealed under a DEK version its keys do not hold.
pub(in crate::vault) struct StaleKeys;

/// The key class and record of a keys-CF entry, or `None` for a subject-level entry (pseudonym,
/// wrapped id). A malformed entry is DATA_LOSS.
pub(in crate::vault) fn dek_entry(
    key: &[u8],
    value: &[u8],
) -> Result<Option<(KeyClass, KeyRecord)>, VaultError> {
    if is_subject_entry(key) {
        return Ok(None);
    }
    let class = name_of(key)
        .and_then(|n| KeyClass::new(n).ok())
        .ok_or_else(|| VaultError::DataLoss("malformed key entry".into()))?;
    let record = KeyRecord::decode(value).map_err(|e| VaultError::DataLoss(e.to_string()))?;
    Ok(Some((class, record)))
}

/// Decodes a stored field record; a malformed one is DATA_LOSS.
pub(in crate::vault) fn decode_field(bytes: &[u8]) -> Result<FieldRecord, VaultError> {
    FieldRecord::decode(bytes).map_err(|e| VaultError::DataLoss(e.to_string()))
}

/// Unwrapped subject keys, least recently used evicted first. Dropping the last `Arc` of a
/// `DekCipher` wipes its key schedule.
///
/// Readers fill the cache without the subject's lock, so a fill is generation-checked: every
/// change a writer publishes and every eviction (a shred) bumps the generation under the cache's
/// mutex, and a reader's fill is dropped unless the generation is still the one it read before
/// loading. A read that loaded keys before a shred committed can thus never put them back after
/// the shred evicted them, nor can keys a rotation replaced come back over the new ones.
pub(in crate::vault) struct KeyCache {
    inner: Mutex<Entries>,
}

struct Entries {
    generation: u64,
    lru: LruCache<Sid, Arc<SubjectKeys>>,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(Entries {
                generation: 0,
                lru: LruCache::new(cap),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Entries) -> T) -> T {
        match self.inner.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn get(&self, sid: &Sid) -> Option<Arc<SubjectKeys>> {
        self.with(|c| c.lru.get(sid).cloned())
    }

    /// The generation to pass to [`KeyCache::fill`]; read before loading from the store.
    pub fn generation(&self) -> u64 {
        self.with(|c| c.generation)
    }

    /// A reader's fill with keys loaded after reading `loaded_at`: kept only if nothing was
    /// published or evicted since (`None`: the subject had no keys).
    pub fn fill(&self, sid: Sid, keys: Option<Arc<SubjectKeys>>, loaded_at: u64) {
        self.with(|c| {
            if c.generation != loaded_at {
                return;
            }
            match keys {
                Some(k) => {
                    c.lru.put(sid, k);
                }
                None => {
                    c.lru.pop(&sid);
                }
            }
        });
    }

    /// Keys a writer committed under the subject's lock: authoritative, and every racing fill
    /// loaded before them is dropped.
    pub fn publish(&self, sid: Sid, keys: Arc<SubjectKeys>) {
        self.with(|c| {
            c.generation = c.generation.wrapping_add(1);
            c.lru.put(sid, keys);
        });
    }

    /// Drops every subject's keys (another node changed more than one look at its log covers).
    pub fn clear(&self) {
        self.with(|c| {
            c.generation = c.generation.wrapping_add(1);
            c.lru.clear();
        });
    }

    /// Drops the subject's keys (a committed erasure), and every racing fill with them.
    pub fn evict(&self, sid: &Sid) {
        self.with(|c| {
            c.generation = c.generation.wrapping_add(1);
            c.lru.pop(sid);
        });
    }
}

impl Vault {
    fn unwrap_dek(
        &self,
        sid: &Sid,
        class: &KeyClass,
        record: &KeyRecord,
    ) -> Result<DekCipher, VaultError> {
        Ok(DekCipher::new(
            &self.unwrap_dek_key(sid, class, record)?,
            record.dek_version,
        ))
    }

    /// The KEK of `epoch`; DATA_LOSS naming `what` when the keyring no longer has it (destroyed
    /// by a roll: the entry is from a stale copy).
    pub(in crate::vault) fn kek_of(&self, epoch: u32, what: &str) -> Result<Arc<Kek>, VaultError> {
        self.keyring.kek(epoch).ok_or_else(|| {
            VaultError::DataLoss(format!(
                "{what} is wrapped under epoch {epoch}, which this keyring lacks"
            ))
        })
    }

    /// The DEK in `record`, unwrapped under its epoch.
    pub(in crate::vault) fn unwrap_dek_key(
        &self,
        sid: &Sid,
        class: &KeyClass,
        record: &KeyRecord,
    ) -> Result<Key256, VaultError> {
        let kek = self.kek_of(record.epoch, "a key")?;
        let wrapped = WrappedDek {
            epoch: record.epoch,
            nonce: record.nonce,
            ciphertext: record.wrapped.clone(),
        };
        kek.unwrap(&wrapped, sid, class).map_err(|_| {
            VaultError::DataLoss("a subject key failed to unwrap (tampered or misplaced)".into())
        })
    }

    /// The subject's keys, from the cache or the store; `None` when the subject has none.
    pub(in crate::vault) fn subject_keys(
        &self,
        sid: &Sid,
    ) -> Result<Option<Arc<SubjectKeys>>, VaultError> {
        match self.keys.get(sid) {
            Some(keys) => Ok(Some(keys)),
            None => self.reload_keys(sid),
        }
    }

    /// The subject's keys read from the store, refreshing the cache unless a change was published
    /// meanwhile.
    pub(in crate::vault) fn reload_keys(
        &self,
        sid: &Sid,
    ) -> Result<Option<Arc<SubjectKeys>>, VaultError> {
        let generation = self.keys.generation();
        let keys = self.load_keys(sid)?.map(Arc::new);
        fail::fail_point!("keys-loaded");
        self.keys.fill(*sid, keys.clone(), generation);
        Ok(keys)
    }

    /// Runs `read` with the subject's keys; when it meets a record sealed under a DEK version the
    /// keys lack (a rotation committed in between), reloads the keys and reads again.
    pub(in crate::vault) fn with_current_keys<T>(
        &self,
        sid: &Sid,
        keys: Option<Arc<SubjectKeys>>,
        mut read: impl FnMut(Option<&SubjectKeys>) -> Result<Result<T, StaleKeys>, VaultError>,
    ) -> Result<T, VaultError> {
        let mut keys = keys;
        for _ in 0..4 {
            match read(keys.as_deref())? {
                Ok(value) => return Ok(value),
                Err(StaleKeys) => keys = self.reload_keys(sid)?,
            }
        }
        Err(VaultError::Unavailable(
            "the subject's keys kept changing during the read; retry".into(),
        ))
    }

    /// The subject's keys as stored, unwrapped; `None` when the subject has none.
    pub(in crate::vault) fn load_keys(&self, sid: &Sid) -> Result<Option<SubjectKeys>, VaultError> {
        let mut pseudonym = None;
        let mut records = BTreeMap::new();
        let mut ciphers = BTreeMap::new();
        let mut canary = false;
        let mut erased = false;
        for (key, value) in self.store.scan_prefix(Cf::Keys, &sid.0)? {
            if key == pseudonym_key(sid) {
                pseudonym = Some(self.open_pseudonym(sid, &value)?);
                continue;
            }
            if key == canary_key(sid) {
                canary = true;
                continue;
            }
            if key == erased_key(sid) {
                erased = true;
                continue;
            }
            let Some((class, record)) = dek_entry(&key, &value)? else {
                continue;
            };
            ciphers.insert(
                class.clone(),
                Arc::new(self.unwrap_dek(sid, &class, &record)?),
            );
            records.insert(class, record);
        }
        Ok(pseudonym.map(|pseudonym| SubjectKeys {
            pseudonym,
            records,
            ciphers,
            canary,
            erased,
        }))
    }

    /// The subject's sid and keys, naming its pseudonym in `event` so that even a refused call is
    /// attributable to the subject it targeted.
    pub(in crate::vault) fn locate(
        &self,
        subject: &SubjectId,
        event: &mut AuditEvent,
    ) -> Result<(Sid, Option<Arc<SubjectKeys>>), VaultError> {
        if subject.expose().len() > self.limits.max_subject_id_bytes {
            return Err(VaultError::InvalidArgument(format!(
                "subject_id is longer than {} bytes",
                self.limits.max_subject_id_bytes
            )));
        }
        let sid = self.keyring.index().sid(subject);
        let keys = self.subject_keys(&sid)?;
        event.subject = keys.as_ref().map(|k| k.pseudonym);
        Ok((sid, keys))
    }

    /// For a write under the writer lock: the subject's keys with a DEK in every class of
    /// `classes`, creating the pseudonym and missing DEKs into `batch`. Read from the store, not
    /// the cache, which a reader may have refilled with keys a rotation has since replaced. The
    /// cache is updated by the caller once the batch is durable.
    pub(in crate::vault) fn keys_for_write(
        &self,
        sid: &Sid,
        classes: &BTreeSet<KeyClass>,
        batch: &mut Batch,
        now: Millis,
    ) -> Result<SubjectKeys, VaultError> {
        let mut keys = match self.load_keys(sid)? {
            Some(k) if k.erased => {
                return Err(VaultError::FailedPrecondition(
                    "the subject was erased and a legal hold keeps part of it: nothing is written \
                     to it until the hold ends and the erasure completes"
                        .into(),
                ));
            }
            Some(k) => k,
            None => SubjectKeys {
                pseudonym: self.stage_new_pseudonym(sid, batch, now)?,
                records: BTreeMap::new(),
                ciphers: BTreeMap::new(),
                canary: false,
                erased: false,
            },
        };
        for class in classes {
            if !keys.records.contains_key(class) {
                self.new_dek(sid, &mut keys, class, 1, batch, now)?;
            }
        }
        Ok(keys)
    }

    /// Generates version `version` of the subject's DEK in `class`, wrapped under the current
    /// epoch, replacing any older one in `keys` and staging its record into `batch`.
    pub(in crate::vault) fn new_dek(
        &self,
        sid: &Sid,
        keys: &mut SubjectKeys,
        class: &KeyClass,
        version: u32,
        batch: &mut Batch,
        now: Millis,
    ) -> Result<(), VaultError> {
        let dek = Key256::random().map_err(|e| VaultError::Internal(e.to_string()))?;
        let wrapped = self
            .kek_for_wraps(1)
            .wrap(&dek, sid, class)
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        let record = KeyRecord {
            dek_version: version,
            epoch: wrapped.epoch,
            nonce: wrapped.nonce,
            wrapped: wrapped.ciphertext,
            created_ms: now,
            seals: 0,
        };
        batch.put(Cf::Keys, subject_key(sid, class.as_str()), record.encode());
        batch.wrapped_under(record.epoch);
        keys.ciphers
            .insert(class.clone(), Arc::new(DekCipher::new(&dek, version)));
        keys.records.insert(class.clone(), record);
        Ok(())
    }

    /// Counts `seals` new encryptions under `class` and stages the updated key record.
    pub(in crate::vault) fn count_seals(
        &self,
        sid: &Sid,
        keys: &mut SubjectKeys,
        class: &KeyClass,
        seals: u64,
        batch: &mut Batch,
    ) {
        if let Some(record) = keys.records.get_mut(class) {
            record.seals = record.seals.saturating_add(seals);
            batch.put(Cf::Keys, subject_key(sid, class.as_str()), record.encode());
        }
    }
}

/// Seals one DEK may make before it is rotated: far below the 2^32 random-nonce bound of
/// NIST SP 800-38D §8.3.
pub(in crate::vault) const MAX_SEALS_PER_DEK: u64 = 1 << 31;
