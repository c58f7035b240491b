//! AES-256-GCM with a fresh random 96-bit nonce per seal and length-prefixed, domain-separated AAD.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use super::{CryptoError, Key256, random_bytes};

/// Nonce length of AES-GCM.
pub const NONCE_LEN: usize = 12;
/// Bytes of a GCM tag: a ciphertext is this much longer than its plaintext.
pub const GCM_TAG_LEN: usize = 16;

/// A keyed AES-256-GCM instance; the key schedule is wiped on drop.
pub struct Cipher(Aes256Gcm);

impl Cipher {
    pub fn new(key: &Key256) -> Self {
        Self(Aes256Gcm::new(key.expose().into()))
    }

    pub fn seal(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let ciphertext = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        Ok((nonce, ciphertext))
    }

    pub fn open(
        &self,
        aad: &[u8],
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Open)
    }
}

/// `label ‖ (u32 BE length ‖ part)*`: no two different part lists give the same bytes.
pub fn aad(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(label.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    out.extend_from_slice(label.as_bytes());
    for part in parts {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_is_unambiguous() {
        assert_ne!(aad("l", &[b"ab", b"c"]), aad("l", &[b"a", b"bc"]));
    }

    #[test]
    fn nonces_are_fresh() {
        let c = Cipher::new(&Key256::random().unwrap());
        let (n1, _) = c.seal(b"", b"x").unwrap();
        let (n2, _) = c.seal(b"", b"x").unwrap();
        assert_ne!(n1, n2);
    }
}
