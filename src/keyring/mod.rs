//! The keyring: a small file beside (never inside) the RocksDB directory holding the root-key
//! check value and the keys the root key wraps (KEK epochs, the subject index key). Data backups
//! copy `db/` only, so they never carry the keys that open them.

mod format;
mod home;
pub mod keyfile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::clock::Millis;
use crate::crypto::{
    AuditSigner, CryptoError, IndexKey, KdfParams, Kek, Key256, LookupKey, RootKey, random_bytes,
};

pub use format::FORMAT_VERSION;
use format::{EpochEntry, KeyringFile, WrappedEntry};
pub use home::KeyringHome;

/// What can go wrong loading or creating the keyring.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file could not be read or written.
    #[error("keyring `{path}`: {source}")]
    Io {
        /// The keyring or key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a keyring this version understands.
    #[error("keyring `{path}` is malformed: {reason}")]
    Malformed {
        /// The keyring file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The root key is not the one this keyring was created with.
    #[error(
        "the root key does not match keyring `{0}` (check value differs): wrong key file or passphrase?"
    )]
    WrongRootKey(PathBuf),
    /// A key file is readable by group or others.
    #[error("key file `{0}` is readable by group or others; run `chmod 600` on it")]
    KeyFilePermissions(PathBuf),
    /// A key failed to unwrap although the check value matched: the keyring was tampered with.
    #[error("keyring `{path}`: a wrapped key failed to open ({source})")]
    Unwrap {
        /// The keyring file.
        path: PathBuf,
        /// The crypto failure.
        source: CryptoError,
    },
    /// Key generation or wrapping failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The database holding the keyring failed.
    #[error("keyring: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The KEK epochs in memory: the current one and every one not yet destroyed.
struct Epochs {
    current: u32,
    keks: BTreeMap<u32, Arc<Kek>>,
}

/// The unwrapped keyring, held in memory for the life of the process. Epochs change under a roll
/// (a new one added, old ones destroyed), in the file first and then in memory.
pub struct Keyring {
    home: KeyringHome,
    root: RootKey,
    id: [u8; 16],
    epochs: RwLock<Epochs>,
    index: IndexKey,
    lookup: LookupKey,
    audit: AuditSigner,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("id", &hex::encode(self.id))
            .field("current_epoch", &self.current_epoch())
            .finish_non_exhaustive()
    }
}

fn kek_context(id: &[u8; 16], epoch: u32) -> [Vec<u8>; 3] {
    [b"kek".to_vec(), id.to_vec(), epoch.to_be_bytes().to_vec()]
}

fn index_context(id: &[u8; 16]) -> [Vec<u8>; 2] {
    [b"index".to_vec(), id.to_vec()]
}

fn audit_context(id: &[u8; 16]) -> [Vec<u8>; 2] {
    [b"audit".to_vec(), id.to_vec()]
}

fn lookup_context(id: &[u8; 16]) -> [Vec<u8>; 2] {
    [b"lookup".to_vec(), id.to_vec()]
}

/// Unwraps an optional keyring key, or creates it when a keyring from an older version lacks it.
/// Returns the key and whether the file changed.
fn unwrap_or_add(
    root: &RootKey,
    slot: &mut Option<WrappedEntry>,
    context: &[Vec<u8>],
) -> Result<(Key256, bool), CryptoError> {
    match slot {
        Some(wrapped) => Ok((root.unwrap(&wrapped.to_wrapped(), &refs(context))?, false)),
        None => {
            let key = Key256::random()?;
            *slot = Some(WrappedEntry::from(root.wrap(&key, &refs(context))?));
            Ok((key, true))
        }
    }
}

fn refs(parts: &[Vec<u8>]) -> Vec<&[u8]> {
    parts.iter().map(Vec::as_slice).collect()
}

/// How the root key of an existing keyring was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootOrigin {
    /// No keyring yet.
    Absent,
    /// From a key file.
    KeyFile,
    /// From a passphrase, with these Argon2id parameters and salt.
    Passphrase(KdfParams),
}

fn read_file(home: &KeyringHome) -> Result<KeyringFile, KeyringError> {
    let text = home.read()?;
    KeyringFile::parse(&text).map_err(|reason| KeyringError::Malformed {
        path: home.name(),
        reason,
    })
}

/// What the keyring at `path` says of itself without its root key: its id and the KEK epochs it
/// holds (the wrapped keys stay shut). Backups compare these with what their data needs.
pub fn describe(home: impl Into<KeyringHome>) -> Result<([u8; 16], Vec<u32>), KeyringError> {
    let file = read_file(&home.into())?;
    Ok((file.id, file.epochs.iter().map(|e| e.epoch).collect()))
}

/// How the root key of the keyring at `path` was made.
pub fn root_origin(home: impl Into<KeyringHome>) -> Result<RootOrigin, KeyringError> {
    let home = home.into();
    if !home.exists()? {
        return Ok(RootOrigin::Absent);
    }
    Ok(match read_file(&home)?.kdf {
        Some(kdf) => RootOrigin::Passphrase(kdf),
        None => RootOrigin::KeyFile,
    })
}

/// Re-wraps every key of the keyring at `path` from `old` to `new` (with `kdf` when `new` comes
/// from a passphrase), atomically. Touches no data: only the keyring's wrapped keys change.
pub fn change_root(
    home: impl Into<KeyringHome>,
    old: &RootKey,
    new: &RootKey,
    kdf: Option<KdfParams>,
) -> Result<(), KeyringError> {
    let home = home.into();
    let mut file = read_file(&home)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &file.root_check[..],
        &old.check_value()[..],
    )) {
        return Err(KeyringError::WrongRootKey(home.name()));
    }
    let unwrap_err = |source| KeyringError::Unwrap {
        path: home.name(),
        source,
    };
    let id = file.id;
    let rewrap =
        |entry: &WrappedEntry, context: &[Vec<u8>]| -> Result<WrappedEntry, KeyringError> {
            let key = old
                .unwrap(&entry.to_wrapped(), &refs(context))
                .map_err(unwrap_err)?;
            Ok(WrappedEntry::from(new.wrap(&key, &refs(context))?))
        };
    for epoch in &mut file.epochs {
        epoch.key = rewrap(&epoch.key, &kek_context(&id, epoch.epoch))?;
    }
    file.index_key = rewrap(&file.index_key, &index_context(&id))?;
    if let Some(k) = &file.audit_key {
        file.audit_key = Some(rewrap(k, &audit_context(&id))?);
    }
    if let Some(k) = &file.lookup_key {
        file.lookup_key = Some(rewrap(k, &lookup_context(&id))?);
    }
    file.root_check = new.check_value();
    file.kdf = kdf;
    home.replace(&file.render())
}

impl Keyring {
    /// Opens the keyring at `path`, creating it with a first KEK epoch when absent (recording
    /// `kdf` when the root key comes from a passphrase).
    pub fn open_or_create(
        home: impl Into<KeyringHome>,
        root: &RootKey,
        now: Millis,
        kdf: Option<KdfParams>,
    ) -> Result<Self, KeyringError> {
        let home = home.into();
        if home.exists()? {
            Self::open(home, root)
        } else {
            Self::create(home, root, now, kdf)
        }
    }

    /// Opens an existing keyring; a wrong root key is [`KeyringError::WrongRootKey`].
    pub fn open(home: impl Into<KeyringHome>, root: &RootKey) -> Result<Self, KeyringError> {
        let home = home.into();
        let mut file = read_file(&home)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &file.root_check[..],
            &root.check_value()[..],
        )) {
            return Err(KeyringError::WrongRootKey(home.name()));
        }
        let unwrap_err = |source| KeyringError::Unwrap {
            path: home.name(),
            source,
        };
        let mut keks = BTreeMap::new();
        for entry in &file.epochs {
            let key = root
                .unwrap(
                    &entry.key.to_wrapped(),
                    &refs(&kek_context(&file.id, entry.epoch)),
                )
                .map_err(&unwrap_err)?;
            keks.insert(entry.epoch, Arc::new(Kek::new(entry.epoch, &key)));
        }
        if !keks.contains_key(&file.current_epoch) {
            return Err(KeyringError::Malformed {
                path: home.name(),
                reason: format!("current epoch {} has no key", file.current_epoch),
            });
        }
        let index_key = root
            .unwrap(
                &file.index_key.to_wrapped(),
                &refs(&index_context(&file.id)),
            )
            .map_err(unwrap_err)?;
        // Keys added by later versions are created in place, keeping everything else.
        let (audit_seed, added_audit) =
            unwrap_or_add(root, &mut file.audit_key, &audit_context(&file.id))
                .map_err(unwrap_err)?;
        let (lookup_key, added_lookup) =
            unwrap_or_add(root, &mut file.lookup_key, &lookup_context(&file.id))
                .map_err(unwrap_err)?;
        if added_audit || added_lookup {
            home.replace(&file.render())?;
        }
        Ok(Self {
            home,
            root: root.duplicate()?,
            id: file.id,
            epochs: RwLock::new(Epochs {
                current: file.current_epoch,
                keks,
            }),
            index: IndexKey::new(&index_key),
            lookup: LookupKey::new(&lookup_key),
            audit: AuditSigner::new(&audit_seed),
        })
    }

    /// Creates a keyring with fresh keys, written atomically with mode 0600.
    pub fn create(
        home: impl Into<KeyringHome>,
        root: &RootKey,
        now: Millis,
        kdf: Option<KdfParams>,
    ) -> Result<Self, KeyringError> {
        let mut id = [0u8; 16];
        random_bytes(&mut id)?;
        let kek = Key256::random()?;
        let index_key = Key256::random()?;
        let audit_seed = Key256::random()?;
        let lookup_key = Key256::random()?;
        let file = KeyringFile {
            format: FORMAT_VERSION,
            id,
            root_check: root.check_value(),
            current_epoch: 1,
            epochs: vec![EpochEntry {
                epoch: 1,
                created_ms: now,
                key: WrappedEntry::from(root.wrap(&kek, &refs(&kek_context(&id, 1)))?),
            }],
            index_key: WrappedEntry::from(root.wrap(&index_key, &refs(&index_context(&id)))?),
            audit_key: Some(WrappedEntry::from(
                root.wrap(&audit_seed, &refs(&audit_context(&id)))?,
            )),
            lookup_key: Some(WrappedEntry::from(
                root.wrap(&lookup_key, &refs(&lookup_context(&id)))?,
            )),
            kdf,
        };
        let home = home.into();
        if !home.create(&file.render())? {
            // Another node created the keyring between our look and our write: use that one.
            return Self::open(home, root);
        }
        let mut keks = BTreeMap::new();
        keks.insert(1, Arc::new(Kek::new(1, &kek)));
        Ok(Self {
            home,
            root: root.duplicate()?,
            id,
            epochs: RwLock::new(Epochs { current: 1, keks }),
            index: IndexKey::new(&index_key),
            lookup: LookupKey::new(&lookup_key),
            audit: AuditSigner::new(&audit_seed),
        })
    }

    /// Where the keyring is kept.
    pub fn home(&self) -> &KeyringHome {
        &self.home
    }

    /// The keyring file; `None` when the keyring is in the database.
    pub fn path(&self) -> Option<&Path> {
        self.home.path()
    }

    /// The keyring's random id, which the database it is paired with records.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    fn epochs(&self) -> std::sync::RwLockReadGuard<'_, Epochs> {
        self.epochs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The epoch that wraps new DEKs.
    pub fn current_epoch(&self) -> u32 {
        self.epochs().current
    }

    /// Every epoch this keyring holds a KEK for, oldest first.
    pub fn epoch_numbers(&self) -> Vec<u32> {
        self.epochs().keks.keys().copied().collect()
    }

    /// The KEK that wraps new DEKs.
    pub fn current_kek(&self) -> Arc<Kek> {
        let epochs = self.epochs();
        // INVARIANT: every constructor and every change keeps a KEK for the current epoch.
        epochs
            .keks
            .get(&epochs.current)
            .or_else(|| epochs.keks.values().next_back())
            .cloned()
            .unwrap_or_else(unreachable_no_kek)
    }

    /// The KEK of `epoch`, if this keyring still has it (a destroyed epoch has none).
    pub fn kek(&self, epoch: u32) -> Option<Arc<Kek>> {
        self.epochs().keks.get(&epoch).cloned()
    }

    /// Starts an epoch roll: a fresh KEK becomes the current epoch, written to the keyring file
    /// (synced, atomically) before anything is wrapped under it. Returns the new epoch.
    pub fn add_epoch(&self, now: Millis) -> Result<u32, KeyringError> {
        let mut epochs = self
            .epochs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = read_file(&self.home)?;
        let epoch = file
            .epochs
            .iter()
            .map(|e| e.epoch)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let kek = Key256::random()?;
        file.epochs.push(EpochEntry {
            epoch,
            created_ms: now,
            key: WrappedEntry::from(self.root.wrap(&kek, &refs(&kek_context(&self.id, epoch)))?),
        });
        file.current_epoch = epoch;
        self.write(&file)?;
        epochs.keks.insert(epoch, Arc::new(Kek::new(epoch, &kek)));
        epochs.current = epoch;
        Ok(epoch)
    }

    /// Ends an epoch roll: destroys every KEK older than the current epoch, in the file (synced,
    /// atomically) and in memory. Whatever is still wrapped under them can never be unwrapped.
    /// Returns the destroyed epochs.
    pub fn destroy_old_epochs(&self) -> Result<Vec<u32>, KeyringError> {
        let mut epochs = self
            .epochs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = epochs.current;
        let mut file = read_file(&self.home)?;
        let destroyed: Vec<u32> = file
            .epochs
            .iter()
            .map(|e| e.epoch)
            .filter(|e| *e != current)
            .collect();
        file.epochs.retain(|e| e.epoch == current);
        self.write(&file)?;
        epochs.keks.retain(|e, _| *e == current);
        Ok(destroyed)
    }

    /// Takes up the epochs as the keyring now holds them, after another node rolled: a new epoch
    /// is unwrapped and becomes current, a destroyed one is dropped from memory. Returns whether
    /// anything changed.
    pub fn reload(&self) -> Result<bool, KeyringError> {
        let file = read_file(&self.home)?;
        if file.id != self.id {
            return Err(KeyringError::Malformed {
                path: self.home.name(),
                reason: "the keyring was replaced by another vault's".into(),
            });
        }
        let mut epochs = self
            .epochs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = false;
        for entry in &file.epochs {
            if epochs.keks.contains_key(&entry.epoch) {
                continue;
            }
            let key = self
                .root
                .unwrap(
                    &entry.key.to_wrapped(),
                    &refs(&kek_context(&self.id, entry.epoch)),
                )
                .map_err(|source| KeyringError::Unwrap {
                    path: self.home.name(),
                    source,
                })?;
            epochs
                .keks
                .insert(entry.epoch, Arc::new(Kek::new(entry.epoch, &key)));
            changed = true;
        }
        let before = epochs.keks.len();
        epochs
            .keks
            .retain(|e, _| file.epochs.iter().any(|f| f.epoch == *e));
        changed |= epochs.keks.len() != before || epochs.current != file.current_epoch;
        if !epochs.keks.contains_key(&file.current_epoch) {
            return Err(KeyringError::Malformed {
                path: self.home.name(),
                reason: format!("current epoch {} has no key", file.current_epoch),
            });
        }
        epochs.current = file.current_epoch;
        Ok(changed)
    }

    /// When the current epoch was created.
    pub fn current_epoch_created_ms(&self) -> Result<Millis, KeyringError> {
        let current = self.current_epoch();
        Ok(read_file(&self.home)?
            .epochs
            .iter()
            .find(|e| e.epoch == current)
            .map_or(0, |e| e.created_ms))
    }

    fn write(&self, file: &KeyringFile) -> Result<(), KeyringError> {
        self.home.replace(&file.render())
    }

    /// The subject index key.
    pub fn index(&self) -> &IndexKey {
        &self.index
    }

    /// The blind-index key for lookups by value.
    pub fn lookup(&self) -> &LookupKey {
        &self.lookup
    }

    /// The audit head signing key.
    pub fn audit_signer(&self) -> &AuditSigner {
        &self.audit
    }
}

#[expect(clippy::panic, reason = "a keyring without a KEK is never constructed")]
fn unreachable_no_kek() -> Arc<Kek> {
    panic!("keyring has no KEK")
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, mode 0600, so that a
/// crash leaves either the old file or the new one. The temporary file is `tempfile`'s: a fresh
/// random name opened with `O_CREAT | O_EXCL` (never an existing file or a planted symlink).
pub(crate) fn write_private_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable_file::write(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SubjectId;

    #[test]
    fn reopens_with_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        let root = RootKey::generate().unwrap();
        let created = Keyring::create(&path, &root, 1, None).unwrap();
        let opened = Keyring::open(&path, &root).unwrap();
        let id = SubjectId::new("s".into()).unwrap();
        assert_eq!(created.index().sid(&id), opened.index().sid(&id));
        assert_eq!(created.id(), opened.id());
    }

    #[test]
    fn wrong_root_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        Keyring::create(&path, &RootKey::generate().unwrap(), 1, None).unwrap();
        let err = Keyring::open(&path, &RootKey::generate().unwrap()).unwrap_err();
        assert!(matches!(err, KeyringError::WrongRootKey(_)), "{err}");
    }

    #[test]
    fn keyring_file_holds_no_plain_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        Keyring::create(&path, &RootKey::generate().unwrap(), 1, None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
