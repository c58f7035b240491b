//! KEK epochs and per-subject DEKs: a DEK is wrapped under the current KEK with
//! AAD = `"privault/dek/v1" ‖ epoch ‖ sid ‖ key class`, so a wrapped DEK moved to another subject,
//! class or epoch fails to unwrap.

use zeroize::Zeroizing;

use super::aead::{Cipher, NONCE_LEN, aad};
use super::{CryptoError, Key256};
use crate::domain::{KeyClass, Sid};

const DEK_LABEL: &str = "privault/dek/v1";
const SUBJECT_ID_LABEL: &str = "privault/subject-id/v1";
const PSEUDONYM_LABEL: &str = "privault/pseudonym/v1";

/// A key-encryption key of one epoch.
pub struct Kek {
    epoch: u32,
    cipher: Cipher,
}

/// A DEK as stored: the epoch of the KEK that wraps it, the nonce and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDek {
    /// The KEK epoch; stored explicitly, never guessed.
    pub epoch: u32,
    /// The GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The wrapped key and tag.
    pub ciphertext: Vec<u8>,
}

impl Kek {
    /// The KEK of `epoch`.
    pub fn new(epoch: u32, key: &Key256) -> Self {
        Self {
            epoch,
            cipher: Cipher::new(key),
        }
    }

    /// The epoch number.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    fn aad(&self, sid: &Sid, class: &KeyClass) -> Vec<u8> {
        aad(
            DEK_LABEL,
            &[&self.epoch.to_be_bytes(), &sid.0, class.as_str().as_bytes()],
        )
    }

    /// Wraps `dek` for `sid` and `class`.
    pub fn wrap(
        &self,
        dek: &Key256,
        sid: &Sid,
        class: &KeyClass,
    ) -> Result<WrappedDek, CryptoError> {
        let (nonce, ciphertext) = self.cipher.seal(&self.aad(sid, class), dek.expose())?;
        Ok(WrappedDek {
            epoch: self.epoch,
            nonce,
            ciphertext,
        })
    }

    /// Unwraps a DEK of this epoch for `sid` and `class`.
    pub fn unwrap(
        &self,
        wrapped: &WrappedDek,
        sid: &Sid,
        class: &KeyClass,
    ) -> Result<Key256, CryptoError> {
        if wrapped.epoch != self.epoch {
            return Err(CryptoError::Open);
        }
        let plain = Zeroizing::new(self.cipher.open(
            &self.aad(sid, class),
            &wrapped.nonce,
            &wrapped.ciphertext,
        )?);
        Key256::from_slice(&plain)
    }
}

/// A per-subject secret other than a DEK that is wrapped under the KEK, so that the shred destroys
/// it and the epoch roll kills its stale copies: each has its own AAD label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectSecret {
    /// The raw subject id, kept so that a lookup can answer with it.
    Id,
    /// The audit pseudonym, the only link between the subject and its audit records.
    Pseudonym,
}

impl SubjectSecret {
    fn label(self) -> &'static str {
        match self {
            Self::Id => SUBJECT_ID_LABEL,
            Self::Pseudonym => PSEUDONYM_LABEL,
        }
    }
}

impl Kek {
    fn secret_aad(&self, kind: SubjectSecret, sid: &Sid) -> Vec<u8> {
        aad(kind.label(), &[&self.epoch.to_be_bytes(), &sid.0])
    }

    /// Wraps `secret` of `sid`. Wrapped like a DEK, it is destroyed by the shred and its stale
    /// copies die with the epoch.
    pub fn wrap_secret(
        &self,
        kind: SubjectSecret,
        sid: &Sid,
        secret: &[u8],
    ) -> Result<WrappedDek, CryptoError> {
        let (nonce, ciphertext) = self.cipher.seal(&self.secret_aad(kind, sid), secret)?;
        Ok(WrappedDek {
            epoch: self.epoch,
            nonce,
            ciphertext,
        })
    }

    /// Unwraps a secret of `sid` wrapped by [`Kek::wrap_secret`] with the same `kind`.
    pub fn unwrap_secret(
        &self,
        kind: SubjectSecret,
        wrapped: &WrappedDek,
        sid: &Sid,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if wrapped.epoch != self.epoch {
            return Err(CryptoError::Open);
        }
        self.cipher
            .open(
                &self.secret_aad(kind, sid),
                &wrapped.nonce,
                &wrapped.ciphertext,
            )
            .map(Zeroizing::new)
    }
}

/// An unwrapped DEK, ready to seal and open fields; its key schedule is wiped on drop.
pub struct DekCipher {
    pub(super) version: u32,
    pub(super) cipher: Cipher,
}

impl DekCipher {
    /// A cipher for `key`, which is version `version` of the subject's DEK in its class.
    pub fn new(key: &Key256, version: u32) -> Self {
        Self {
            version,
            cipher: Cipher::new(key),
        }
    }

    /// The DEK version, bound into every field's AAD.
    pub fn version(&self) -> u32 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(b: u8) -> Sid {
        Sid([b; 32])
    }

    #[test]
    fn dek_round_trips_and_binds_subject_class_and_epoch() {
        let kek = Kek::new(1, &Key256::random().unwrap());
        let dek = Key256::random().unwrap();
        let class = KeyClass::default_class();
        let wrapped = kek.wrap(&dek, &sid(1), &class).unwrap();
        assert_eq!(
            kek.unwrap(&wrapped, &sid(1), &class).unwrap().expose(),
            dek.expose()
        );
        assert!(kek.unwrap(&wrapped, &sid(2), &class).is_err());
        assert!(
            kek.unwrap(&wrapped, &sid(1), &KeyClass::new("tax").unwrap())
                .is_err()
        );
        let mut other_epoch = wrapped.clone();
        other_epoch.epoch = 2;
        assert!(kek.unwrap(&other_epoch, &sid(1), &class).is_err());
    }

    #[test]
    fn subject_secrets_are_bound_to_their_sid_and_kind() {
        let kek = Kek::new(1, &Key256::random().unwrap());
        let wrapped = kek
            .wrap_secret(SubjectSecret::Id, &sid(1), b"cust-1")
            .unwrap();
        assert_eq!(
            &*kek
                .unwrap_secret(SubjectSecret::Id, &wrapped, &sid(1))
                .unwrap(),
            b"cust-1"
        );
        assert!(
            kek.unwrap_secret(SubjectSecret::Id, &wrapped, &sid(2))
                .is_err()
        );
        // A pseudonym and a subject id never open as each other.
        assert!(
            kek.unwrap_secret(SubjectSecret::Pseudonym, &wrapped, &sid(1))
                .is_err()
        );
        // A DEK wrap and a subject-id wrap never open as each other.
        assert!(
            kek.unwrap(&wrapped, &sid(1), &KeyClass::default_class())
                .is_err()
        );
    }
}
