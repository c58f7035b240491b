//! Bearer-token authentication, the second identity mode: a token file maps each principal to the
//! Argon2id hash (PHC string) of its token. The caller names itself in `x-privault-principal` and
//! proves it with `authorization: Bearer <token>`; the token is compared only through its hash and
//! never logged. Argon2 runs are rate limited per peer address (`governor`'s keyed GCRA limiter,
//! a cell taken atomically before Argon2 runs, so concurrent attempts cannot all slip under the
//! limit), so guessing is slow and a flood of wrong tokens cannot burn the CPU on Argon2; the
//! verifications running at once are bounded for the whole server; a verified token is remembered
//! (`moka`, bounded and with a time to live) so Argon2 runs once per token, not per call; and an
//! unknown principal costs one Argon2 run like a known one (its timing tells nothing about which
//! principals exist).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::password::{hash_secret, is_argon2id_phc, verify_secret};
use crate::crypto::random_bytes;
use crate::domain::Principal;

/// Argon2 runs a peer may make at once before it is refused; one more every
/// [`ATTEMPT_PERIOD`] (5 a minute, sustained).
const ATTEMPT_BURST: u32 = 5;
/// How often a peer regains one Argon2 run.
const ATTEMPT_PERIOD: Duration = Duration::from_secs(12);
/// Verified (principal, token) pairs remembered, so Argon2 runs once per token, not per call.
const VERIFIED_CACHE: u64 = 10_000;
/// How long a verified token is remembered before Argon2 checks it again.
const VERIFIED_FOR: Duration = Duration::from_secs(3600);
/// Peers the limiter tracks before it forgets those whose budget is whole again.
const TRACKED_PEERS: usize = 100_000;
/// Argon2 verifications the whole server runs at once (19 MiB each); more are refused at once.
const CONCURRENT_VERIFICATIONS: usize = 4;

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

/// The loaded token file and what it has verified.
pub struct TokenVerifier {
    path: PathBuf,
    salt: [u8; 32],
    hashes: RwLock<HashMap<String, String>>,
    verified: moka::sync::Cache<[u8; 32], ()>,
    attempts: DefaultKeyedRateLimiter<IpAddr>,
    // The hash an unknown principal's token is checked against: same parameters, no token.
    decoy: String,
    running: std::sync::atomic::AtomicUsize,
    argon2_runs: std::sync::atomic::AtomicU64,
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
        let fail = |reason: String| TokenFileError {
            path: path.to_owned(),
            reason,
        };
        let mut salt = [0u8; 32];
        random_bytes(&mut salt).map_err(|e| fail(e.to_string()))?;
        let (_, decoy) = new_token().map_err(fail)?;
        let quota = Quota::with_period(ATTEMPT_PERIOD)
            .ok_or_else(|| fail("the attempt period is zero".into()))?
            .allow_burst(NonZeroU32::new(ATTEMPT_BURST).unwrap_or(NonZeroU32::MIN));
        Ok(Self {
            path: path.to_owned(),
            salt,
            hashes: RwLock::new(hashes),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CACHE)
                .time_to_live(VERIFIED_FOR)
                .build(),
            attempts: RateLimiter::keyed(quota),
            decoy,
            running: std::sync::atomic::AtomicUsize::new(0),
            argon2_runs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Re-reads the token file (on SIGHUP): revoked tokens stop working at once. An invalid file
    /// leaves the loaded one in place.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let hashes = parse(&self.path)?;
        let count = hashes.len();
        if let Ok(mut current) = self.hashes.write() {
            *current = hashes;
            self.verified.invalidate_all();
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
        use std::sync::atomic::Ordering;
        let uid = principal.to_string();
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(self.salt)
            .chain_update((uid.len() as u64).to_be_bytes())
            .chain_update(uid.as_bytes())
            .chain_update(token.as_bytes())
            .finalize()
            .into();
        if self.verified.contains_key(&fingerprint) {
            return Ok(());
        }
        let hash = match self.hashes.read() {
            Ok(hashes) => hashes.get(&uid).cloned(),
            Err(_) => None,
        };
        let running = RunningGuard::enter(&self.running);
        if !running.admitted {
            // The server is busy verifying: refused, and not held against this peer.
            return Err(TokenRejection::RateLimited);
        }
        // The peer's cell is taken before Argon2 runs: concurrent attempts of one peer count
        // before any finishes.
        if let Some(p) = peer {
            if self.attempts.len() > TRACKED_PEERS {
                self.attempts.retain_recent();
            }
            if self.attempts.check_key(&p).is_err() {
                return Err(TokenRejection::RateLimited);
            }
        }
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let ok = match &hash {
            Some(h) => verify_secret(token.as_bytes(), h),
            None => {
                // Same cost as a known principal's check; never a match.
                let _ = verify_secret(token.as_bytes(), &self.decoy);
                false
            }
        };
        drop(running);
        if !ok {
            return Err(TokenRejection::Invalid(format!(
                "invalid token for {principal}"
            )));
        }
        self.verified.insert(fingerprint, ());
        Ok(())
    }

    /// How many Argon2 verifications this verifier has run.
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One Argon2 verification in progress, admitted only while fewer than
/// [`CONCURRENT_VERIFICATIONS`] run; a refused one fails like a wrong token (and counts as one).
struct RunningGuard<'a> {
    running: &'a std::sync::atomic::AtomicUsize,
    admitted: bool,
}

impl<'a> RunningGuard<'a> {
    fn enter(running: &'a std::sync::atomic::AtomicUsize) -> Self {
        use std::sync::atomic::Ordering;
        let admitted = running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < CONCURRENT_VERIFICATIONS).then_some(n + 1)
            })
            .is_ok();
        Self { running, admitted }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if self.admitted {
            self.running
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
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
        let (_dir, verifier, token) = verifier_with_one_token();
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
        for _ in 0..ATTEMPT_BURST {
            let _ = verifier.verify(&checkout, "wrong", Some(peer));
        }
        assert_eq!(
            verifier.verify(&checkout, "another guess", Some(peer)),
            Err(TokenRejection::RateLimited),
            "guessing waits for the limiter"
        );
        let (second, _) = new_token().unwrap();
        assert_eq!(
            verifier.verify(&other, &second, Some(peer)),
            Err(TokenRejection::RateLimited),
            "a new token of a limited peer waits too"
        );
        // A token verified before stays good: it costs no Argon2 run.
        assert_eq!(verifier.verify(&checkout, &token, Some(peer)), Ok(()));
        let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(verifier.verify(&checkout, &token, Some(elsewhere)), Ok(()));
    }

    fn verifier_with_one_token() -> (tempfile::TempDir, TokenVerifier, Zeroizing<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let (token, hash) = new_token().unwrap();
        std::fs::write(
            &path,
            format!("[[tokens]]\nprincipal = 'Service::\"checkout\"'\nhash = \"{hash}\"\n"),
        )
        .unwrap();
        let verifier = TokenVerifier::load(&path).unwrap();
        (dir, verifier, token)
    }

    #[test]
    fn concurrent_wrong_tokens_cannot_bypass_the_failure_limit() {
        let (_dir, verifier, _) = verifier_with_one_token();
        let checkout = Principal::parse_uid("Service::\"checkout\"").unwrap();
        let peer: IpAddr = "127.0.0.9".parse().unwrap();
        let barrier = std::sync::Barrier::new(24);
        // Every `Invalid` answer is one Argon2 run that checked a wrong token.
        let checked = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for i in 0..24 {
                let (verifier, checkout, barrier, checked) =
                    (&verifier, &checkout, &barrier, &checked);
                s.spawn(move || {
                    barrier.wait();
                    let answer = verifier.verify(checkout, &format!("wrong-{i}"), Some(peer));
                    if matches!(answer, Err(TokenRejection::Invalid(_))) {
                        checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert!(
            checked.into_inner() <= ATTEMPT_BURST,
            "concurrent attempts slipped under the failure limit"
        );
        // Then one at a time until refused: the window's whole budget, concurrent or not.
        for _ in 0..ATTEMPT_BURST {
            if verifier.verify(&checkout, "wrong-again", Some(peer))
                == Err(TokenRejection::RateLimited)
            {
                break;
            }
        }
        assert_eq!(
            verifier.verify(&checkout, "wrong-again", Some(peer)),
            Err(TokenRejection::RateLimited)
        );
        assert!(
            verifier.argon2_runs() <= u64::from(ATTEMPT_BURST),
            "{} Argon2 runs for one peer in one window",
            verifier.argon2_runs()
        );
    }

    #[test]
    fn an_unknown_principal_costs_one_argon2_run_like_a_known_one() {
        let (_dir, verifier, _) = verifier_with_one_token();
        let known = Principal::parse_uid("Service::\"checkout\"").unwrap();
        let unknown = Principal::parse_uid("Service::\"nobody\"").unwrap();
        let _ = verifier.verify(&known, "wrong", None);
        assert_eq!(verifier.argon2_runs(), 1);
        let answer = verifier.verify(&unknown, "wrong", None);
        assert_eq!(
            verifier.argon2_runs(),
            2,
            "the unknown principal ran Argon2 too"
        );
        assert_eq!(
            answer,
            Err(TokenRejection::Invalid(
                "invalid token for Service::\"nobody\"".into()
            ))
        );
    }
}
