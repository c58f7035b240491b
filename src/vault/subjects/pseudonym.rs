//! The stored audit pseudonym and the subject's incarnation: created with the subject's first
//! key, wrapped under the current KEK epoch (re-wrapped by the roll like a DEK, so an old copy of
//! `db/` stops linking a shredded customer to the audit trail once the epoch is destroyed), and
//! the upgrade of data format 1, which kept the pseudonym in clear.

use crate::audit::{Action, Detail};
use crate::clock::Millis;
use crate::crypto::{SubjectSecret, WrappedDek, random_bytes};
use crate::domain::{Pseudonym, Sid};
use crate::store::keys::{is_pseudonym_key, pseudonym_key};
use crate::store::records::{PseudonymRecord, StoredPseudonym, SubjectIdRecord};
use crate::store::{Batch, Cf};
use crate::vault::{Vault, VaultError};

/// A random id per subject incarnation: a customer shredded and created again is a new one.
pub(in crate::vault) type Incarnation = [u8; 16];

/// Entries of the keys column family examined per slice of the format-1 upgrade.
const UPGRADE_SLICE: usize = 1000;

fn data_loss(what: &str) -> impl Fn(crate::store::records::DecodeError) -> VaultError + '_ {
    move |e| VaultError::DataLoss(format!("{what}: {e}"))
}

impl Vault {
    /// A new subject's pseudonym and incarnation, staged into `batch`.
    pub(in crate::vault) fn stage_new_pseudonym(
        &self,
        sid: &Sid,
        batch: &mut Batch,
        now: Millis,
    ) -> Result<Pseudonym, VaultError> {
        let internal = |e: crate::crypto::CryptoError| VaultError::Internal(e.to_string());
        let mut pseudonym = [0u8; 16];
        random_bytes(&mut pseudonym).map_err(internal)?;
        let mut incarnation = [0u8; 16];
        random_bytes(&mut incarnation).map_err(internal)?;
        let record = self.wrap_pseudonym(sid, &Pseudonym(pseudonym), incarnation, now)?;
        batch.put(Cf::Keys, pseudonym_key(sid), record.encode());
        batch.wrapped_under(record.epoch);
        Ok(Pseudonym(pseudonym))
    }

    fn wrap_pseudonym(
        &self,
        sid: &Sid,
        pseudonym: &Pseudonym,
        incarnation: Incarnation,
        created_ms: Millis,
    ) -> Result<PseudonymRecord, VaultError> {
        let wrapped = self
            .kek_for_wraps(1)
            .wrap_secret(SubjectSecret::Pseudonym, sid, &pseudonym.0)
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        Ok(PseudonymRecord {
            epoch: wrapped.epoch,
            nonce: wrapped.nonce,
            wrapped: wrapped.ciphertext,
            incarnation,
            created_ms,
        })
    }

    /// The pseudonym in a stored pseudonym entry of `sid`.
    pub(in crate::vault) fn open_pseudonym(
        &self,
        sid: &Sid,
        bytes: &[u8],
    ) -> Result<Pseudonym, VaultError> {
        match StoredPseudonym::decode(bytes).map_err(data_loss("audit pseudonym"))? {
            StoredPseudonym::Clear(clear) => Ok(Pseudonym(clear)),
            StoredPseudonym::Wrapped(record) => {
                let plain = self.unwrap_secret(
                    SubjectSecret::Pseudonym,
                    sid,
                    &WrappedDek {
                        epoch: record.epoch,
                        nonce: record.nonce,
                        ciphertext: record.wrapped,
                    },
                    "an audit pseudonym",
                )?;
                let bytes: [u8; 16] = plain.as_slice().try_into().map_err(|_| {
                    VaultError::DataLoss("an audit pseudonym has the wrong length".into())
                })?;
                Ok(Pseudonym(bytes))
            }
        }
    }

    /// The stored incarnation of `sid` and when it was created: `None` when the subject has no
    /// pseudonym; a format-1 entry has no incarnation (`Some(None)`).
    pub(in crate::vault) fn incarnation_of(
        &self,
        sid: &Sid,
    ) -> Result<Option<Option<(Incarnation, Millis)>>, VaultError> {
        let Some(bytes) = self.store.get(Cf::Keys, &pseudonym_key(sid))? else {
            return Ok(None);
        };
        Ok(Some(
            match StoredPseudonym::decode(&bytes).map_err(data_loss("audit pseudonym"))? {
                StoredPseudonym::Clear(_) => None,
                StoredPseudonym::Wrapped(r) => Some((r.incarnation, r.created_ms)),
            },
        ))
    }

    /// A pseudonym entry re-wrapped under the current epoch, or `None` when it already is.
    pub(in crate::vault) fn rewrap_pseudonym(
        &self,
        sid: &Sid,
        bytes: &[u8],
        now: Millis,
    ) -> Result<Option<Vec<u8>>, VaultError> {
        let stored = StoredPseudonym::decode(bytes).map_err(data_loss("audit pseudonym"))?;
        let (incarnation, created_ms) = match &stored {
            StoredPseudonym::Wrapped(r) if r.epoch == self.keyring.current_epoch() => {
                return Ok(None);
            }
            StoredPseudonym::Wrapped(r) => (r.incarnation, r.created_ms),
            StoredPseudonym::Clear(_) => {
                let mut incarnation = [0u8; 16];
                random_bytes(&mut incarnation).map_err(|e| VaultError::Internal(e.to_string()))?;
                (incarnation, self.first_key_created(sid)?.unwrap_or(now))
            }
        };
        let pseudonym = self.open_pseudonym(sid, bytes)?;
        Ok(Some(
            self.wrap_pseudonym(sid, &pseudonym, incarnation, created_ms)?
                .encode(),
        ))
    }

    /// When the oldest of `sid`'s DEKs was created: a format-1 subject's best creation time.
    pub(in crate::vault) fn first_key_created(
        &self,
        sid: &Sid,
    ) -> Result<Option<Millis>, VaultError> {
        let mut first = None;
        for (key, value) in self.store.scan_prefix(Cf::Keys, &sid.0)? {
            if let Some((_, record)) = crate::vault::keys::dek_entry(&key, &value)? {
                first = Some(first.map_or(record.created_ms, |f: Millis| f.min(record.created_ms)));
            }
        }
        Ok(first)
    }

    /// A secret of `sid` unwrapped under its epoch; DATA_LOSS naming `what` when the epoch is gone
    /// or the secret fails to authenticate.
    pub(in crate::vault) fn unwrap_secret(
        &self,
        kind: SubjectSecret,
        sid: &Sid,
        wrapped: &WrappedDek,
        what: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
        let kek = self.kek_of(wrapped.epoch, what)?;
        kek.unwrap_secret(kind, wrapped, sid)
            .map_err(|_| VaultError::DataLoss(format!("{what} failed to unwrap")))
    }

    /// The raw subject id in `record`, unwrapped under its epoch.
    pub(in crate::vault) fn unwrap_subject_id(
        &self,
        sid: &Sid,
        record: &SubjectIdRecord,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
        self.unwrap_secret(
            SubjectSecret::Id,
            sid,
            &WrappedDek {
                epoch: record.epoch,
                nonce: record.nonce,
                ciphertext: record.wrapped.clone(),
            },
            "a stored subject id",
        )
    }

    /// Upgrades data format 1: wraps every pseudonym kept in clear, in audited slices under the
    /// writer lock. Returns how many were wrapped.
    pub(in crate::vault) fn upgrade_clear_pseudonyms(&self) -> Result<u64, VaultError> {
        let mut cursor = Vec::new();
        let mut total = 0;
        loop {
            let _writer = self.lock_writer()?;
            let entries = self.store.scan_from(Cf::Keys, &cursor, UPGRADE_SLICE)?;
            let full = entries.len() == UPGRADE_SLICE;
            let mut batch = Batch::new();
            let mut count = 0u64;
            let now = self.clock.now_ms();
            for (key, value) in &entries {
                let Some(sid) = is_pseudonym_key(key) else {
                    continue;
                };
                if let StoredPseudonym::Clear(_) =
                    StoredPseudonym::decode(value).map_err(data_loss("audit pseudonym"))?
                    && let Some(bytes) = self.rewrap_pseudonym(&sid, value, now)?
                {
                    batch.put(Cf::Keys, key.clone(), bytes);
                    count += 1;
                }
            }
            if count > 0 {
                let mut event = self.key_event("privault", Action::PseudonymWrap);
                event.detail = Some(Detail::PseudonymsWrapped(count));
                self.commit(batch, event)?;
                total += count;
            }
            match entries.last() {
                Some((key, _)) if full => {
                    cursor = key.clone();
                    cursor.push(0);
                }
                _ => return Ok(total),
            }
        }
    }
}
