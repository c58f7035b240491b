//! Argon2id for secrets people or services hold: deriving the root key from a passphrase (the
//! parameters and salt recorded beside the keyring, a floor refusing weak ones), and hashing and
//! checking bearer tokens as PHC strings.

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use zeroize::Zeroizing;

use super::{CryptoError, Key256, random_bytes};

/// A passphrase, wiped on drop and never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps `text`, without its trailing newline (as read from a file).
    pub fn new(mut text: String) -> Self {
        while text.ends_with('\n') || text.ends_with('\r') {
            text.pop();
        }
        Self(Zeroizing::new(text))
    }

    /// The passphrase, for the key derivation only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Argon2id parameters and salt of a passphrase-derived root key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// The random salt.
    pub salt: [u8; 16],
}

/// The weakest parameters accepted: OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane).
pub const KDF_FLOOR: (u32, u32, u32) = (19 * 1024, 2, 1);

impl KdfParams {
    /// RFC 9106's second recommended option (64 MiB, 3 passes, 4 lanes) with a fresh salt.
    pub fn recommended() -> Result<Self, CryptoError> {
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        Ok(Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 4,
            salt,
        })
    }

    /// Refuses parameters below [`KDF_FLOOR`].
    pub fn check_floor(&self) -> Result<(), CryptoError> {
        let (m, t, p) = KDF_FLOOR;
        if self.m_kib < m || self.t < t || self.p < p {
            return Err(CryptoError::Kdf(format!(
                "Argon2id parameters m={} KiB, t={}, p={} are below the floor m={m} KiB, t={t}, p={p}",
                self.m_kib, self.t, self.p
            )));
        }
        Ok(())
    }

    /// Derives 256 bits from `passphrase`.
    pub fn derive(&self, passphrase: &[u8]) -> Result<Key256, CryptoError> {
        self.check_floor()?;
        if passphrase.is_empty() {
            return Err(CryptoError::Kdf("the passphrase is empty".into()));
        }
        let params = Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, &self.salt, out.as_mut())
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Key256::from_slice(out.as_ref())
    }
}

/// The Argon2id PHC string of `secret` (OWASP parameters: 19 MiB, 2 passes, 1 lane).
pub fn hash_secret(secret: &[u8]) -> Result<String, CryptoError> {
    let mut salt = [0u8; 16];
    random_bytes(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Argon2::default()
        .hash_password(secret, &salt)
        .map(|h| h.to_string())
        .map_err(|e| CryptoError::Kdf(e.to_string()))
}

/// Whether `phc` is an Argon2id PHC string.
pub fn is_argon2id_phc(phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| h.algorithm.as_str() == "argon2id")
}

/// Whether `secret` matches the PHC string `phc` (compared in constant time by the crate).
pub fn verify_secret(secret: &[u8], phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(secret, &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_per_salt_and_floored() {
        let params = KdfParams {
            m_kib: KDF_FLOOR.0,
            t: KDF_FLOOR.1,
            p: KDF_FLOOR.2,
            salt: [7; 16],
        };
        let a = params.derive(b"correct horse").unwrap();
        assert_eq!(
            a.expose(),
            params.derive(b"correct horse").unwrap().expose()
        );
        assert_ne!(a.expose(), params.derive(b"wrong horse").unwrap().expose());
        let weak = KdfParams {
            m_kib: 1024,
            ..params
        };
        assert!(weak.derive(b"correct horse").is_err());
    }

    #[test]
    fn secrets_verify_through_their_hash() {
        let phc = hash_secret(b"token").unwrap();
        assert!(is_argon2id_phc(&phc));
        assert!(verify_secret(b"token", &phc));
        assert!(!verify_secret(b"other", &phc));
    }
}
