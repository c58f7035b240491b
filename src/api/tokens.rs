//! Bearer-token authentication, the second identity mode: a token file maps each principal to the
//! Argon2id hash (PHC string) of its token. The caller names itself in `x-privault-principal` and
//! proves it with `authorization: Bearer <token>`; the token is compared only through its hash and
//! never logged. Failed attempts are rate limited per peer address, so guessing is slow and a
//! flood of wrong tokens cannot burn the CPU on Argon2.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::password::{hash_secret, is_argon2id_phc, verify_secret};
use crate::crypto::random_bytes;
use crate::domain::Principal;

/// Failed attempts a peer may make per window before it is refused outright.
const FAILURES_PER_WINDOW: u32 = 5;
/// The window of the failure limit.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Verified (principal, token) pairs remembered, so Argon2 runs once per token, not per call.
const VERIFIED_CACHE: usize = 10_000;

/// What can go wrong loading a token file.
#[derive(Debug, thiserror::Error)]
#[error("token file `{path}`: {reason}")]
pub struct TokenFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (never a token).
    pub reason: String,
}

/// Why a token did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRejection {
    /// Wrong or unknown principal or token.
    Invalid(String),
    /// The peer failed too often recently.
    RateLimited,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    principal: String,
    hash: String,
}

struct Inner {
    hashes: HashMap<String, String>,
    verified: HashSet<[u8; 32]>,
}

/// The loaded token file and what it has verified.
pub struct TokenVerifier {
    path: PathBuf,
    salt: [u8; 32],
    inner: RwLock<Inner>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn parse(path: &Path) -> Result<HashMap<String, String>, TokenFileError> {
    let fail = |reason: String| TokenFileError {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let raw: RawFile = toml::from_str(&text).map_err(|e| fail(e.message().to_owned()))?;
    let mut hashes = HashMap::new();
    for token in raw.tokens {
        let principal = Principal::parse_uid(&token.principal).map_err(|e| fail(e.0))?;
        if !is_argon2id_phc(&token.hash) {
            return Err(fail(format!(
                "the hash of {principal} is not an Argon2id PHC string"
            )));
        }
        if hashes.insert(principal.to_string(), token.hash).is_some() {
            return Err(fail(format!("{principal} is listed twice")));
        }
    }
    Ok(hashes)
}

impl TokenVerifier {
    /// Loads the token file at `path`.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let hashes = parse(path)?;
        let mut salt = [0u8; 32];
        random_bytes(&mut salt).map_err(|e| TokenFileError {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            salt,
            inner: RwLock::new(Inner {
                hashes,
                verified: HashSet::new(),
            }),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Re-reads the token file (on SIGHUP): revoked tokens stop working at once. An invalid file
    /// leaves the loaded one in place.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let hashes = parse(&self.path)?;
        let count = hashes.len();
        if let Ok(mut inner) = self.inner.write() {
            *inner = Inner {
                hashes,
                verified: HashSet::new(),
            };
        }
        Ok(count)
    }

    /// Checks that `token` is `principal`'s, for a caller at `peer`. CPU-heavy on a first use of
    /// a token (Argon2id): call it off the async runtime.
    pub fn verify(
        &self,
        principal: &Principal,
        token: &str,
        peer: Option<IpAddr>,
    ) -> Result<(), TokenRejection> {
        if peer.is_some_and(|p| self.is_limited(p)) {
            return Err(TokenRejection::RateLimited);
        }
        let uid = principal.to_string();
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(self.salt)
            .chain_update((uid.len() as u64).to_be_bytes())
            .chain_update(uid.as_bytes())
            .chain_update(token.as_bytes())
            .finalize()
            .into();
        let hash = match self.inner.read() {
            Ok(inner) if inner.verified.contains(&fingerprint) => return Ok(()),
            Ok(inner) => inner.hashes.get(&uid).cloned(),
            Err(_) => None,
        };
        let ok = hash.is_some_and(|h| verify_secret(token.as_bytes(), &h));
        if ok {
            if let Ok(mut inner) = self.inner.write() {
                if inner.verified.len() >= VERIFIED_CACHE {
                    inner.verified.clear();
                }
                inner.verified.insert(fingerprint);
            }
            Ok(())
        } else {
            if let Some(p) = peer {
                self.count_failure(p);
            }
            Err(TokenRejection::Invalid(format!(
                "invalid token for {principal}"
            )))
        }
    }

    fn is_limited(&self, peer: IpAddr) -> bool {
        let Ok(failures) = self.failures.lock() else {
            return true;
        };
        failures
            .get(&peer)
            .is_some_and(|(since, n)| since.elapsed() < FAILURE_WINDOW && *n >= FAILURES_PER_WINDOW)
    }

    fn count_failure(&self, peer: IpAddr) {
        if let Ok(mut failures) = self.failures.lock() {
            if failures.len() > 100_000 {
                failures.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
            }
            let entry = failures.entry(peer).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= FAILURE_WINDOW {
                *entry = (Instant::now(), 0);
            }
            entry.1 += 1;
        }
    }
}

/// A fresh random token (64 hex digits, 256 bits) and its Argon2id PHC hash for a token file.
pub fn new_token() -> Result<(Zeroizing<String>, String), String> {
    let mut secret = Zeroizing::new([0u8; 32]);
    random_bytes(secret.as_mut()).map_err(|e| e.to_string())?;
    let token = Zeroizing::new(
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let hash = hash_secret(token.as_bytes()).map_err(|e| e.to_string())?;
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_token_passes_bad_token_fails_and_failures_are_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let (token, hash) = new_token().unwrap();
        std::fs::write(
            &path,
            format!("[[tokens]]\nprincipal = 'Service::\"checkout\"'\nhash = \"{hash}\"\n"),
        )
        .unwrap();
        let verifier = TokenVerifier::load(&path).unwrap();
        let checkout = Principal::parse_uid("Service::\"checkout\"").unwrap();
        let other = Principal::parse_uid("Service::\"other\"").unwrap();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(verifier.verify(&checkout, &token, Some(peer)), Ok(()));
        assert_eq!(
            verifier.verify(&checkout, &token, Some(peer)),
            Ok(()),
            "cached"
        );
        assert!(matches!(
            verifier.verify(&other, &token, Some(peer)),
            Err(TokenRejection::Invalid(_))
        ));
        for _ in 0..FAILURES_PER_WINDOW {
            let _ = verifier.verify(&checkout, "wrong", Some(peer));
        }
        assert_eq!(
            verifier.verify(&checkout, &token, Some(peer)),
            Err(TokenRejection::RateLimited),
            "even the right token waits out the window"
        );
        let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(verifier.verify(&checkout, &token, Some(elsewhere)), Ok(()));
    }
}
