//! Field sealing: AES-256-GCM under the subject's DEK with a fresh nonce per write and
//! AAD = `"privault/field/v1" ‖ sid ‖ field name ‖ dek version`, so a ciphertext copied to another
//! subject or field fails to open.

use zeroize::Zeroizing;

use super::aead::{NONCE_LEN, aad};
use super::{CryptoError, DekCipher};
use crate::domain::{FieldName, Sid};

const FIELD_LABEL: &str = "privault/field/v1";

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

fn field_aad(sid: &Sid, field: &FieldName, version: u32) -> Vec<u8> {
    aad(
        FIELD_LABEL,
        &[&sid.0, field.as_str().as_bytes(), &version.to_be_bytes()],
    )
}

impl DekCipher {
    /// Seals `plaintext` as `field` of `sid`.
    pub fn seal(
        &self,
        sid: &Sid,
        field: &FieldName,
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let (nonce, ciphertext) = self
            .cipher
            .seal(&field_aad(sid, field, self.version), plaintext)?;
        Ok(Sealed {
            dek_version: self.version,
            nonce,
            ciphertext,
        })
    }

    /// Opens `sealed` as `field` of `sid`; fails on any other subject, field, version or key.
    pub fn open(
        &self,
        sid: &Sid,
        field: &FieldName,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.dek_version != self.version {
            return Err(CryptoError::Open);
        }
        self.cipher
            .open(
                &field_aad(sid, field, self.version),
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

    #[test]
    fn ciphertext_moved_to_another_subject_or_field_fails() {
        let c = cipher();
        let sealed = c.seal(&Sid([1; 32]), &email(), b"a@example.com").unwrap();
        assert!(c.open(&Sid([2; 32]), &email(), &sealed).is_err());
        assert!(
            c.open(&Sid([1; 32]), &FieldName::new("phone").unwrap(), &sealed)
                .is_err()
        );
        assert_eq!(
            &*c.open(&Sid([1; 32]), &email(), &sealed).unwrap(),
            b"a@example.com"
        );
    }

    #[test]
    fn another_key_cannot_open() {
        let sealed = cipher().seal(&Sid([1; 32]), &email(), b"x").unwrap();
        assert!(cipher().open(&Sid([1; 32]), &email(), &sealed).is_err());
    }

    proptest! {
        #[test]
        fn seal_open_round_trips(value in proptest::collection::vec(any::<u8>(), 0..512)) {
            let c = cipher();
            let sealed = c.seal(&Sid([7; 32]), &email(), &value).unwrap();
            prop_assert_eq!(&*c.open(&Sid([7; 32]), &email(), &sealed).unwrap(), &value[..]);
        }

        #[test]
        fn any_flipped_bit_is_detected(value in proptest::collection::vec(any::<u8>(), 1..128), bit in 0usize..1024) {
            let c = cipher();
            let mut sealed = c.seal(&Sid([7; 32]), &email(), &value).unwrap();
            let i = bit % (sealed.ciphertext.len() * 8);
            sealed.ciphertext[i / 8] ^= 1 << (i % 8);
            prop_assert!(c.open(&Sid([7; 32]), &email(), &sealed).is_err());
        }
    }
}
