//! Keys and ciphers, without I/O: the root key and its check value, KEK epochs, DEK wrap/unwrap,
//! field seal/open with AAD, and the keyed subject index. The only module that names `aes_gcm`,
//! `argon2` or `hmac`.

mod aead;
pub mod audit_sign;
pub mod dek;
pub mod field;
pub mod index;
pub mod lookup;
pub mod password;
pub mod root;
pub mod secret;
pub mod token;

pub use aead::GCM_TAG_LEN;
pub(crate) use audit_sign::verify_message;
pub use audit_sign::{AuditSigner, verify_checkpoint, verify_head};
pub use dek::{DekCipher, Kek, SubjectSecret, WrappedDek};
pub use field::{FieldTimes, Sealed};
pub use index::{IndexKey, RecordKind};
pub use lookup::{LookupKey, TAG_LEN};
pub use password::{KdfParams, Passphrase};
pub use root::RootKey;
pub use secret::Key256;
pub use token::TokenConfig;

/// What can go wrong in the crypto layer. Decryption failures are deliberately opaque.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A ciphertext did not authenticate: wrong key, wrong AAD, or tampered bytes.
    #[error("decryption failed: wrong key or tampered ciphertext")]
    Open,
    /// Sealing failed (only on absurd input sizes).
    #[error("encryption failed")]
    Seal,
    /// The OS random number generator failed.
    #[error("os random number generator failed: {0}")]
    Rng(String),
    /// Key bytes of the wrong length or encoding.
    #[error("malformed key material: {0}")]
    MalformedKey(&'static str),
    /// Argon2 refused its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// The PKCS#11 token holding the root key failed or refused.
    #[error("PKCS#11 token: {0}")]
    Token(String),
}

/// Fills `buf` from the OS random number generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Rng(e.to_string()))
}
