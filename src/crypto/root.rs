//! The root key: 256 bits from a key file or derived from a passphrase, or an AES key held in a
//! PKCS#11 token that never leaves it; its only job is to wrap the keyring's keys (KEK epochs,
//! the index key). A check value makes a wrong root key a clear error, never garbage.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::aead::{Cipher, NONCE_LEN, aad};
use super::password::{KdfParams, Passphrase};
use super::token::{TokenConfig, TokenKey};
use super::{CryptoError, Key256};

const CHECK_LABEL: &[u8] = b"privault/root-check/v1";
const WRAP_LABEL: &str = "privault/keyring-key/v1";

/// The root of the key hierarchy. Never leaves memory (or its token); never printed.
#[derive(Debug)]
pub struct RootKey {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// In the process: from a key file or a passphrase.
    Memory(Key256),
    /// In a PKCS#11 token, with its check value (computed by the token once, at open).
    Token(std::sync::Arc<TokenKey>, [u8; 32]),
}

/// A key wrapped by the root key, as stored in the keyring file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl RootKey {
    /// A fresh random root key (for a new development key file).
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self {
            inner: Inner::Memory(Key256::random()?),
        })
    }

    /// The root key in the PKCS#11 token `config` names; with `create`, generated in the token
    /// when it has none (for a new keyring).
    pub fn from_token(config: &TokenConfig, create: bool) -> Result<Self, CryptoError> {
        let key = TokenKey::open(config, create)?;
        let check = key.check_value()?;
        Ok(Self {
            inner: Inner::Token(std::sync::Arc::new(key), check),
        })
    }

    /// The root key derived from `passphrase` with `kdf` (Argon2id; parameters below the floor
    /// are refused).
    pub fn from_passphrase(passphrase: &Passphrase, kdf: &KdfParams) -> Result<Self, CryptoError> {
        Ok(Self {
            inner: Inner::Memory(kdf.derive(passphrase.expose().as_bytes())?),
        })
    }

    /// A second handle on the same key, for the keyring that must re-wrap epochs later (an epoch
    /// roll). Deliberately not `Clone`: copies of the root key are made on purpose only.
    pub fn duplicate(&self) -> Result<Self, CryptoError> {
        let inner = match &self.inner {
            Inner::Memory(key) => Inner::Memory(Key256::from_slice(key.expose())?),
            Inner::Token(key, check) => Inner::Token(std::sync::Arc::clone(key), *check),
        };
        Ok(Self { inner })
    }

    /// Parses a key file: 64 hex digits, surrounding whitespace ignored.
    pub fn from_key_file(contents: &[u8]) -> Result<Self, CryptoError> {
        let text = std::str::from_utf8(contents)
            .map_err(|_| CryptoError::MalformedKey("a key file holds 64 hex digits"))?
            .trim();
        let bytes = Zeroizing::new(
            hex::decode(text)
                .map_err(|_| CryptoError::MalformedKey("a key file holds 64 hex digits"))?,
        );
        Ok(Self {
            inner: Inner::Memory(
                Key256::from_slice(&bytes)
                    .map_err(|_| CryptoError::MalformedKey("a key file holds 64 hex digits"))?,
            ),
        })
    }

    /// The key file text for this key (64 hex digits and a newline), in a wiping buffer; `None`
    /// for a key held by a token, which never leaves it.
    pub fn to_key_file(&self) -> Option<Zeroizing<String>> {
        let Inner::Memory(key) = &self.inner else {
            return None;
        };
        let mut text = Zeroizing::new(hex::encode(key.expose()));
        text.push('\n');
        Some(text)
    }

    /// `HMAC-SHA256(root, "privault/root-check/v1")`: stored in the keyring so that a wrong root key
    /// is recognised before anything is unwrapped. Reveals nothing about the key.
    /// A token's key has its own check value (see `crypto::token`).
    pub fn check_value(&self) -> [u8; 32] {
        match &self.inner {
            Inner::Memory(key) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
                    .unwrap_or_else(|_| unreachable_hmac());
                mac.update(CHECK_LABEL);
                mac.finalize().into_bytes().into()
            }
            Inner::Token(_, check) => *check,
        }
    }

    /// Wraps a keyring key; `context` binds it to its keyring and slot (e.g. `kek` and the epoch).
    /// A token's key wraps inside the token.
    pub fn wrap(&self, key: &Key256, context: &[&[u8]]) -> Result<WrappedKey, CryptoError> {
        let aad = aad(WRAP_LABEL, context);
        let (nonce, ciphertext) = match &self.inner {
            Inner::Memory(root) => Cipher::new(root).seal(&aad, key.expose())?,
            Inner::Token(token, _) => token.seal(&aad, key.expose())?,
        };
        Ok(WrappedKey { nonce, ciphertext })
    }

    /// Unwraps a keyring key wrapped with the same `context`.
    pub fn unwrap(&self, wrapped: &WrappedKey, context: &[&[u8]]) -> Result<Key256, CryptoError> {
        let aad = aad(WRAP_LABEL, context);
        let plain = match &self.inner {
            Inner::Memory(root) => {
                Zeroizing::new(Cipher::new(root).open(&aad, &wrapped.nonce, &wrapped.ciphertext)?)
            }
            Inner::Token(token, _) => {
                token.open_sealed(&aad, &wrapped.nonce, &wrapped.ciphertext)?
            }
        };
        Key256::from_slice(&plain)
    }
}

/// HMAC-SHA256 takes keys of any length, so `new_from_slice` cannot fail.
#[expect(
    clippy::panic,
    reason = "HMAC accepts every key length; this is unreachable"
)]
pub(super) fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 rejected a 32-byte key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips() {
        let root = RootKey::generate().unwrap();
        let again = RootKey::from_key_file(root.to_key_file().unwrap().as_bytes()).unwrap();
        assert_eq!(root.check_value(), again.check_value());
    }

    #[test]
    fn different_keys_have_different_check_values() {
        let a = RootKey::generate().unwrap();
        let b = RootKey::generate().unwrap();
        assert_ne!(a.check_value(), b.check_value());
    }

    #[test]
    fn malformed_key_files_are_refused() {
        assert!(RootKey::from_key_file(b"not hex").is_err());
        assert!(RootKey::from_key_file(b"abcd").is_err());
    }

    #[test]
    fn wrap_binds_context() {
        let root = RootKey::generate().unwrap();
        let kek = Key256::random().unwrap();
        let wrapped = root.wrap(&kek, &[b"kek", &1u32.to_be_bytes()]).unwrap();
        assert!(
            root.unwrap(&wrapped, &[b"kek", &1u32.to_be_bytes()])
                .is_ok()
        );
        assert!(
            root.unwrap(&wrapped, &[b"kek", &2u32.to_be_bytes()])
                .is_err()
        );
        let other = RootKey::generate().unwrap();
        assert!(
            other
                .unwrap(&wrapped, &[b"kek", &1u32.to_be_bytes()])
                .is_err()
        );
    }
}
