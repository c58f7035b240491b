//! `Key256`: 256 bits of key material that zeroize on drop, never print, and are not `Clone`.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};

use super::{CryptoError, random_bytes};

/// A 256-bit secret key. Read only through [`Key256::expose`], inside the crypto layer.
pub struct Key256(SecretBox<[u8; 32]>);

impl Key256 {
    /// 256 fresh bits from the OS RNG.
    pub fn random() -> Result<Self, CryptoError> {
        let mut err = None;
        let key = SecretBox::init_with_mut(|bytes: &mut [u8; 32]| {
            err = random_bytes(bytes).err();
        });
        match err {
            Some(e) => Err(e),
            None => Ok(Self(key)),
        }
    }

    /// Copies exactly 32 bytes into a new key; the caller wipes its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::MalformedKey("a key is exactly 32 bytes"));
        }
        Ok(Self(SecretBox::init_with_mut(|k: &mut [u8; 32]| {
            k.copy_from_slice(bytes);
        })))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key256(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_key_bytes() {
        let key = Key256::from_slice(&[0xAB; 32]).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
    }

    #[test]
    fn random_keys_differ() {
        let a = Key256::random().unwrap();
        let b = Key256::random().unwrap();
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(Key256::from_slice(&[0; 31]).is_err());
    }
}
