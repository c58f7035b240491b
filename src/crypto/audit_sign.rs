//! The audit signing key (Ed25519): signs the audit chain's head, `"privault/audit-head/v1" ‖
//! keyring id ‖ seq ‖ hash`, so that anyone holding an earlier signed head can detect a truncated
//! or rewritten log.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::{CryptoError, Key256};

const HEAD_LABEL: &[u8] = b"privault/audit-head/v1";
const CHECKPOINT_LABEL: &[u8] = b"privault/audit-segment/v1";

/// The private half; wiped on drop, never printed. Cloned only for the thread that seals the
/// log's segments.
#[derive(Clone)]
pub struct AuditSigner {
    key: SigningKey,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSigner(public {})", hex::encode(self.public_key()))
    }
}

fn message(keyring_id: &[u8; 16], seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEAD_LABEL.len() + 16 + 8 + 32);
    m.extend_from_slice(HEAD_LABEL);
    m.extend_from_slice(keyring_id);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

impl AuditSigner {
    /// The signer whose secret seed is `seed`.
    pub fn new(seed: &Key256) -> Self {
        Self {
            key: SigningKey::from_bytes(seed.expose()),
        }
    }

    /// The public key, for verifiers.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs the checkpoint `body` (the sealed segment's numbers and hashes) of the log of keyring
    /// `keyring_id`.
    pub fn sign_checkpoint(&self, keyring_id: &[u8; 16], body: &[u8]) -> [u8; 64] {
        self.key
            .sign(&[CHECKPOINT_LABEL, keyring_id, body].concat())
            .to_bytes()
    }

    /// Signs `message`, which must start with its own domain label (an erasure receipt's).
    pub(crate) fn sign_message(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Signs the head `(seq, hash)` of the log of keyring `keyring_id`.
    pub fn sign_head(&self, keyring_id: &[u8; 16], seq: u64, hash: &[u8; 32]) -> [u8; 64] {
        self.key.sign(&message(keyring_id, seq, hash)).to_bytes()
    }
}

/// Checks a signature made by [`AuditSigner::sign_message`] against a public key.
pub(crate) fn verify_message(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|_| CryptoError::MalformedKey("not an Ed25519 public key"))?;
    key.verify(message, &Signature::from_bytes(signature))
        .map_err(|_| CryptoError::Open)
}

/// Checks a head signature against a public key.
pub fn verify_head(
    public_key: &[u8; 32],
    keyring_id: &[u8; 16],
    seq: u64,
    hash: &[u8; 32],
    signature: &[u8; 64],
) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|_| CryptoError::MalformedKey("not an Ed25519 public key"))?;
    key.verify(
        &message(keyring_id, seq, hash),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| CryptoError::Open)
}

/// Checks a segment checkpoint's signature against a public key.
pub fn verify_checkpoint(
    public_key: &[u8; 32],
    keyring_id: &[u8; 16],
    body: &[u8],
    signature: &[u8; 64],
) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|_| CryptoError::MalformedKey("not an Ed25519 public key"))?;
    key.verify(
        &[CHECKPOINT_LABEL, keyring_id, body].concat(),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| CryptoError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_heads_verify_and_bind_every_part() {
        let signer = AuditSigner::new(&Key256::random().unwrap());
        let id = [1u8; 16];
        let sig = signer.sign_head(&id, 7, &[2; 32]);
        let public = signer.public_key();
        assert!(verify_head(&public, &id, 7, &[2; 32], &sig).is_ok());
        assert!(verify_head(&public, &id, 6, &[2; 32], &sig).is_err());
        assert!(verify_head(&public, &id, 7, &[3; 32], &sig).is_err());
        assert!(verify_head(&public, &[9; 16], 7, &[2; 32], &sig).is_err());
        assert!(!format!("{signer:?}").contains(&hex::encode(Key256::random().unwrap().expose())));
    }
}
