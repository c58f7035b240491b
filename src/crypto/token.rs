//! A root key held in a PKCS#11 token (an HSM, or SoftHSM2 in tests), through `cryptoki`: an
//! AES-256 secret key that is sensitive and not extractable, so it never leaves the token. The
//! token seals and opens the keyring's keys with CKM_AES_GCM (the vault draws the nonce from the OS
//! RNG); the check value is a hash of the GCM tag of a fixed label under a fixed nonce, which no
//! wrap uses (wraps draw random nonces). The key is created in the token only for a new keyring.

use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::CryptoError;
use super::aead::NONCE_LEN;

const CHECK_LABEL: &[u8] = b"privault/root-check/pkcs11/v1";
// Never drawn by a wrap in practice (random 96-bit nonces), and only ever used for CHECK_LABEL.
const CHECK_NONCE: [u8; NONCE_LEN] = [0xff; NONCE_LEN];
const TAG_BITS: u64 = 128;

/// Where the root key lives in a token, and how to log in.
#[derive(Clone)]
pub struct TokenConfig {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The key object's label.
    pub key: String,
    /// The user PIN.
    pub pin: SecretString,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A logged-in session on the token and the handle of the root key in it.
pub struct TokenKey {
    // Kept for the life of the session; finalized when the last handle drops.
    _context: Pkcs11,
    session: Mutex<Session>,
    key: ObjectHandle,
    label: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("key", &self.label)
            .finish_non_exhaustive()
    }
}

fn token_error(what: &str, e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Token(format!("{what}: {e}"))
}

impl TokenKey {
    /// Logs in to the token and finds the key; with `create`, generates it when the token has
    /// none of that label (a new keyring).
    pub fn open(config: &TokenConfig, create: bool) -> Result<Self, CryptoError> {
        let context = Pkcs11::new(&config.module)
            .map_err(|e| token_error(&format!("cannot load {}", config.module.display()), e))?;
        context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| token_error("cannot initialize the PKCS#11 module", e))?;
        let slot = context
            .get_slots_with_token()
            .map_err(|e| token_error("cannot list tokens", e))?
            .into_iter()
            .find(|slot| {
                context
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == config.token)
            })
            .ok_or_else(|| CryptoError::Token(format!("no token labelled `{}`", config.token)))?;
        let session = context
            .open_rw_session(slot)
            .map_err(|e| token_error("cannot open a session", e))?;
        let pin = AuthPin::new(config.pin.expose_secret().trim_end().into());
        session
            .login(UserType::User, Some(&pin))
            .map_err(|e| token_error("cannot log in to the token (wrong PIN?)", e))?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(config.key.as_bytes().to_vec()),
        ];
        let found = session
            .find_objects(&template)
            .map_err(|e| token_error("cannot search the token", e))?;
        let key = match found.as_slice() {
            [key] => *key,
            [] if create => generate(&session, &config.key)?,
            [] => {
                return Err(CryptoError::Token(format!(
                    "the token has no key labelled `{}`",
                    config.key
                )));
            }
            _ => {
                return Err(CryptoError::Token(format!(
                    "the token has several keys labelled `{}`",
                    config.key
                )));
            }
        };
        Ok(Self {
            _context: context,
            session: Mutex::new(session),
            key,
            label: config.key.clone(),
        })
    }

    fn with_session<T>(&self, f: impl FnOnce(&Session) -> T) -> T {
        let guard = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    /// Seals `plain` under the token's key with AAD `aad`: a fresh random nonce, and the
    /// ciphertext with its tag.
    pub fn seal(
        &self,
        aad: &[u8],
        plain: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        super::random_bytes(&mut nonce)?;
        let sealed = self.gcm(&nonce, aad, plain, true)?;
        Ok((nonce, sealed))
    }

    /// Opens what [`TokenKey::seal`] sealed; a wrong key, AAD or byte is [`CryptoError::Open`].
    pub fn open_sealed(
        &self,
        aad: &[u8],
        nonce: &[u8; NONCE_LEN],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.gcm(nonce, aad, sealed, false).map(Zeroizing::new)
    }

    /// The check value: SHA-256 of the label and the GCM tag of the label under the fixed nonce.
    pub fn check_value(&self) -> Result<[u8; 32], CryptoError> {
        let tag = self.gcm(&CHECK_NONCE, CHECK_LABEL, &[], true)?;
        Ok(Sha256::new()
            .chain_update(CHECK_LABEL)
            .chain_update(&tag)
            .finalize()
            .into())
    }

    fn gcm(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &[u8],
        encrypt: bool,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
            .map_err(|e| token_error("bad GCM parameters", e))?;
        let mechanism = Mechanism::AesGcm(params);
        self.with_session(|session| {
            if encrypt {
                session
                    .encrypt(&mechanism, self.key, data)
                    .map_err(|e| token_error("the token could not seal", e))
            } else {
                session
                    .decrypt(&mechanism, self.key, data)
                    .map_err(|_| CryptoError::Open)
            }
        })
    }
}

/// Generates the root key in the token: AES-256, a token object, sensitive and never extractable.
fn generate(session: &Session, label: &str) -> Result<ObjectHandle, CryptoError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    tracing::info!(key = label, "generating the root key in the PKCS#11 token");
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| token_error("the token could not generate the root key", e))
}
