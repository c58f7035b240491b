//! Field sealing: AES-256-GCM under the subject's DEK with a fresh nonce per write and
//! AAD = `"privault/field/v2" ‖ sid ‖ field name ‖ dek version ‖ written ‖ expires`, so a
//! ciphertext copied to another subject or field fails to open, and so does one whose stored
//! write or expiry time was changed (a retention extended by editing `db/`). Values sealed before
//! the times were bound (`"privault/field/v1"`, no times) still open until they are rewritten.

use zeroize::Zeroizing;

use super::aead::{NONCE_LEN, aad};
use super::{CryptoError, DekCipher};
use crate::domain::{FieldName, Sid};

const FIELD_LABEL_V1: &str = "privault/field/v1";
const FIELD_LABEL: &str = "privault/field/v2";

/// When a value was written and when it expires, as stored beside its ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldTimes {
    /// When it was written.
    pub written_ms: u64,
    /// When it expires; `None` for no limit.
    pub expires_ms: Option<u64>,
}

/// A sealed field value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The DEK version that sealed it.
    pub dek_version: u32,
    /// The GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// The AAD of a value; `times` is `None` for a value sealed before the times were bound.
fn field_aad(sid: &Sid, field: &FieldName, version: u32, times: Option<&FieldTimes>) -> Vec<u8> {
    let (name, version) = (field.as_str().as_bytes(), version.to_be_bytes());
    match times {
        None => aad(FIELD_LABEL_V1, &[&sid.0, name, &version]),
        Some(t) => aad(
            FIELD_LABEL,
            &[
                &sid.0,
                name,
                &version,
                &t.written_ms.to_be_bytes(),
                &t.expires_ms.unwrap_or(0).to_be_bytes(),
            ],
        ),
    }
}

impl DekCipher {
    /// Seals `plaintext` as `field` of `sid`, written and expiring at `times`.
    pub fn seal(
        &self,
        sid: &Sid,
        field: &FieldName,
        times: &FieldTimes,
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let (nonce, ciphertext) = self
            .cipher
            .seal(&field_aad(sid, field, self.version, Some(times)), plaintext)?;
        Ok(Sealed {
            dek_version: self.version,
            nonce,
            ciphertext,
        })
    }

    /// Opens `sealed` as `field` of `sid` stored with `times` (`None`: sealed before times were
    /// bound); fails on any other subject, field, version, times or key.
    pub fn open(
        &self,
        sid: &Sid,
        field: &FieldName,
        times: Option<&FieldTimes>,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.dek_version != self.version {
            return Err(CryptoError::Open);
        }
        self.cipher
            .open(
                &field_aad(sid, field, self.version, times),
                &sealed.nonce,
                &sealed.ciphertext,
            )
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crypto::Key256;

    fn cipher() -> DekCipher {
        DekCipher::new(&Key256::random().unwrap(), 1)
    }

    fn email() -> FieldName {
        FieldName::new("email").unwrap()
    }

    const T: FieldTimes = FieldTimes {
        written_ms: 10,
        expires_ms: Some(20),
    };

    #[test]
    fn ciphertext_moved_to_another_subject_or_field_fails() {
        let c = cipher();
        let sealed = c
            .seal(&Sid([1; 32]), &email(), &T, b"a@example.com")
            .unwrap();
        assert!(c.open(&Sid([2; 32]), &email(), Some(&T), &sealed).is_err());
        assert!(
            c.open(
                &Sid([1; 32]),
                &FieldName::new("phone").unwrap(),
                Some(&T),
                &sealed
            )
            .is_err()
        );
        assert_eq!(
            &*c.open(&Sid([1; 32]), &email(), Some(&T), &sealed).unwrap(),
            b"a@example.com"
        );
        // Stored times changed (a retention extended), or read as a value sealed before times
        // were bound: refused.
        let later = FieldTimes {
            expires_ms: Some(10_000),
            ..T
        };
        assert!(
            c.open(&Sid([1; 32]), &email(), Some(&later), &sealed)
                .is_err()
        );
        assert!(c.open(&Sid([1; 32]), &email(), None, &sealed).is_err());
    }

    #[test]
    fn another_key_cannot_open() {
        let sealed = cipher().seal(&Sid([1; 32]), &email(), &T, b"x").unwrap();
        assert!(
            cipher()
                .open(&Sid([1; 32]), &email(), Some(&T), &sealed)
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn seal_open_round_trips(value in proptest::collection::vec(any::<u8>(), 0..512)) {
            let c = cipher();
            let sealed = c.seal(&Sid([7; 32]), &email(), &T, &value).unwrap();
            prop_assert_eq!(&*c.open(&Sid([7; 32]), &email(), Some(&T), &sealed).unwrap(), &value[..]);
        }

        #[test]
        fn any_flipped_bit_is_detected(value in proptest::collection::vec(any::<u8>(), 1..128), bit in 0usize..1024) {
            let c = cipher();
            let mut sealed = c.seal(&Sid([7; 32]), &email(), &T, &value).unwrap();
            let i = bit % (sealed.ciphertext.len() * 8);
            sealed.ciphertext[i / 8] ^= 1 << (i % 8);
            prop_assert!(c.open(&Sid([7; 32]), &email(), Some(&T), &sealed).is_err());
        }
    }
}
