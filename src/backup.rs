//! Backups of what only the database holds: a consistent RocksDB checkpoint of `db/` and the sealed
//! audit segments it names (`audit/`), described by a manifest (`backup.json`: every file's size
//! and SHA-256, the keyring id and KEK epochs the data needs, the audit head). Never the keyring,
//! the deletion ledger or a root key: those are kept apart, so a stolen backup opens nothing, and
//! the live ledger replayed at the restored vault's first start re-shreds every customer erased
//! after the backup was taken.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{self, AuditError, Sealed, VerifyError};
use crate::keyring::{self, KeyringError};
use crate::store::keys::{FORMAT_KEY, KEYRING_ID_KEY};
use crate::store::{Cf, Store, StoreError};

/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "backup.json";
/// The manifest format this version writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
const COPY_CHUNK: usize = 1 << 20;

/// What can go wrong taking, checking or restoring a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read, written or synced.
    #[error("`{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log of the copy could not be read.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The keyring could not be read.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// The destination already holds something.
    #[error("`{0}` already exists: a backup or restore never writes over data")]
    Exists(PathBuf),
    /// The directory holds no readable manifest.
    #[error("`{path}` is not a complete backup: {reason}")]
    Manifest {
        /// The backup directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the backup is missing or differs from the manifest.
    #[error("backup file `{file}` {reason}")]
    Mismatch {
        /// The file, relative to the backup directory.
        file: String,
        /// How it differs.
        reason: String,
    },
    /// The copy's audit chain is broken.
    #[error("the backup's audit chain is broken: {0}")]
    Chain(VerifyError),
    /// The keyring given for a restore cannot open this backup.
    #[error("the keyring cannot open this backup: {0}")]
    WrongKeyring(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    /// Relative to the backup directory: `db/…` or `audit/…`.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of its content, hex.
    pub sha256: String,
}

/// What a backup holds and needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// When it was taken (RFC 3339, UTC).
    pub created: String,
    /// The id of the keyring the data is paired with, hex.
    pub keyring_id: String,
    /// The KEK epochs that wrap its keys: a keyring that destroyed one (a later epoch roll)
    /// cannot open the backup, by design.
    pub kek_epochs: Vec<u32>,
    /// The data format of `db/`.
    pub data_format: u32,
    /// The last audit record in the copy.
    pub audit_head_seq: u64,
    /// Its hash, hex.
    pub audit_head_hash: String,
    /// Every file, in copy order.
    pub files: Vec<BackupFile>,
}

impl Manifest {
    /// The bytes of every file.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Reads the manifest of the backup in `dir`.
    pub fn read(dir: &Path) -> Result<Self, BackupError> {
        let path = dir.join(MANIFEST);
        let bad = |reason: String| BackupError::Manifest {
            path: dir.to_owned(),
            reason,
        };
        let text = fs::read_to_string(&path).map_err(|e| bad(format!("no {MANIFEST} ({e})")))?;
        let manifest: Self =
            serde_json::from_str(&text).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "manifest format {} (this version reads {MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        for file in &manifest.files {
            relative_path(&file.path).map_err(bad)?;
        }
        Ok(manifest)
    }

    /// Writes the manifest into `dir`, synced: the last step of a backup, so a directory with a
    /// manifest holds every file it lists.
    pub fn write(&self, dir: &Path) -> Result<(), BackupError> {
        let path = dir.join(MANIFEST);
        let mut text = serde_json::to_string_pretty(self).map_err(|e| BackupError::Manifest {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        crate::durable_file::write(&path, text.as_bytes(), 0o600).map_err(io(&path))
    }
}

/// `path` checked as a file inside a backup: relative, under `db/` or `audit/`, no `..`.
pub fn relative_path(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let mut parts = p.components();
    let top_ok =
        matches!(parts.next(), Some(Component::Normal(top)) if top == "db" || top == "audit");
    let rest_ok = parts.all(|c| matches!(c, Component::Normal(_)));
    if top_ok && rest_ok && p.components().count() >= 2 {
        Ok(p.to_owned())
    } else {
        Err(format!("`{path}` is not a file under db/ or audit/"))
    }
}

fn create_private_dir(path: &Path) -> Result<(), BackupError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Links `from` to `to`, copying when they are on different file systems.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), BackupError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map(drop).map_err(io(to))
}

/// Takes a backup of `store` (whose sealed segments are in `audit/` beside it, and whose keyring
/// is `keyring`) into `into`, a directory that must not exist: the checkpoint, the segment files
/// it names, and the manifest last. Table and segment files are hard-linked when `into` is on the
/// same file system (they are immutable), copied otherwise.
pub fn take(
    store: &Store,
    keyring: &Path,
    into: &Path,
    created: String,
) -> Result<Manifest, BackupError> {
    if into.exists() {
        return Err(BackupError::Exists(into.to_owned()));
    }
    create_private_dir(&into.join("audit"))?;
    let live_segments =
        audit::segments_dir(store).ok_or(crate::store::StoreError::Unsupported {
            backend: "postgres",
            what: "backups (back PostgreSQL up with pg_basebackup and WAL archiving)",
        })?;
    // Segments are sealed (file first, then its table entry) and dropped while the checkpoint is
    // cut: linking what exists before and after it covers every segment the copy names.
    link_segments(&live_segments, &into.join("audit"))?;
    let db = into.join("db");
    store.checkpoint(&db)?;
    link_segments(&live_segments, &into.join("audit"))?;
    let (keyring_id, kek_epochs) = keyring::describe(keyring)?;
    let copy = Store::open_read_only(&db)?;
    let named = named_segments(&copy)?;
    let found_id = copy.get(Cf::Meta, KEYRING_ID_KEY)?.unwrap_or_default();
    if found_id != keyring_id {
        return Err(BackupError::WrongKeyring(
            "the database is paired with another keyring".into(),
        ));
    }
    let data_format = data_format(&copy)?;
    let (head_seq, head_hash) = audit::head_of(&copy)?;
    drop(copy);
    for entry in fs::read_dir(into.join("audit")).map_err(io(into))? {
        let entry = entry.map_err(io(into))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !named.contains(&name) {
            fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    let mut files = Vec::new();
    for top in ["db", "audit"] {
        let dir = into.join(top);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let (bytes, sha256) = hash_file(&path)?;
            files.push(BackupFile {
                path: format!("{top}/{name}"),
                bytes,
                sha256,
            });
        }
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        created,
        keyring_id: hex::encode(keyring_id),
        kek_epochs,
        data_format,
        audit_head_seq: head_seq,
        audit_head_hash: hex::encode(head_hash),
        files,
    };
    manifest.write(into)?;
    Ok(manifest)
}

fn link_segments(live: &Path, to: &Path) -> Result<(), BackupError> {
    let entries = match fs::read_dir(live) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(live)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(live))?;
        let target = to.join(entry.file_name());
        if entry.path().extension().is_some_and(|e| e == "seg") && !target.exists() {
            link_or_copy(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The file names of the sealed segments `store` names and still holds (not dropped to an
/// archive).
fn named_segments(store: &Store) -> Result<BTreeSet<String>, BackupError> {
    let sealed = Sealed::load(store)?;
    Ok(sealed
        .checkpoints()
        .iter()
        .filter(|cp| !sealed.is_dropped(cp.segment))
        .map(|cp| audit::segment_file_name(cp.segment))
        .collect())
}

fn data_format(store: &Store) -> Result<u32, BackupError> {
    Ok(store
        .get(Cf::Meta, FORMAT_KEY)?
        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0))
}

/// Size and SHA-256 (hex) of the file at `path`.
pub fn hash_file(path: &Path) -> Result<(u64, String), BackupError> {
    hash_through(path, std::io::sink(), path)
}

/// Reads `from` through SHA-256 into `out` (written as `out_path`); returns the size and hash.
fn hash_through(
    from: &Path,
    mut out: impl Write,
    out_path: &Path,
) -> Result<(u64, String), BackupError> {
    let mut input = fs::File::open(from).map_err(io(from))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(out_path))?;
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest, every file of it checked.
    pub manifest: Manifest,
    /// Audit records walked in the copy's chain.
    pub audit_records: u64,
}

/// Checks the backup in `dir`: every file the manifest lists is there with its size and SHA-256,
/// the copy opens, its keyring id and audit head are the manifest's, and its audit chain walks
/// from the first record to the head. `progress` is called with the bytes checked so far.
pub fn verify(dir: &Path, mut progress: impl FnMut(u64)) -> Result<Verified, BackupError> {
    let manifest = Manifest::read(dir)?;
    let mut done = 0u64;
    for file in &manifest.files {
        let path = dir.join(&file.path);
        let (bytes, sha256) = hash_file(&path).map_err(|e| BackupError::Mismatch {
            file: file.path.clone(),
            reason: format!("cannot be read ({e})"),
        })?;
        check_file(file, bytes, &sha256)?;
        done += bytes;
        progress(done);
    }
    let copy = Store::open_read_only(&dir.join("db"))?;
    let found_id = hex::encode(copy.get(Cf::Meta, KEYRING_ID_KEY)?.unwrap_or_default());
    if found_id != manifest.keyring_id {
        return Err(BackupError::Mismatch {
            file: "db/".into(),
            reason: "is paired with another keyring than the manifest says".into(),
        });
    }
    let (seq, hash) = audit::verify(&copy).map_err(BackupError::Chain)?;
    if seq != manifest.audit_head_seq || hash != manifest.audit_head_hash {
        return Err(BackupError::Mismatch {
            file: "db/".into(),
            reason: format!(
                "ends its audit chain at record {seq}, the manifest at {}",
                manifest.audit_head_seq
            ),
        });
    }
    Ok(Verified {
        manifest,
        audit_records: seq,
    })
}

fn check_file(file: &BackupFile, bytes: u64, sha256: &str) -> Result<(), BackupError> {
    if bytes != file.bytes {
        return Err(BackupError::Mismatch {
            file: file.path.clone(),
            reason: format!("holds {bytes} bytes, the manifest {}", file.bytes),
        });
    }
    if sha256 != file.sha256 {
        return Err(BackupError::Mismatch {
            file: file.path.clone(),
            reason: "differs from the manifest (SHA-256)".into(),
        });
    }
    Ok(())
}

/// What a restore did and what it left for the operator.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Whether a keyring was copied in (else the operator places it).
    pub keyring: bool,
    /// Whether a ledger was copied in (else the operator places the live one).
    pub ledger: bool,
}

/// Where a restore takes the parts a backup never holds.
#[derive(Debug, Clone, Default)]
pub struct Apart {
    /// The keyring, from its own backup.
    pub keyring: Option<PathBuf>,
    /// The deletion ledger: the live one (the newest), so shreds since the backup are replayed.
    pub ledger: Option<PathBuf>,
}

/// Restores the backup in `from` into the data directory `data_dir` (which must hold no `db/`,
/// `audit/`, keyring or ledger): checks the backup, copies every file (hashing it again on the
/// way), syncs, and copies the keyring and ledger from `apart` when given, after checking that the
/// keyring is the one the data is paired with and still holds every KEK epoch it needs.
/// `progress` is called with the bytes copied so far. Nothing is left behind on failure.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    apart: &Apart,
    mut progress: impl FnMut(u64),
) -> Result<Restored, BackupError> {
    let manifest = Manifest::read(from)?;
    for part in ["db", "audit", "keyring", "ledger"] {
        let path = data_dir.join(part);
        if path.exists() {
            return Err(BackupError::Exists(path));
        }
    }
    if let Some(keyring) = &apart.keyring {
        check_keyring(&manifest, keyring)?;
    }
    create_private_dir(data_dir)?;
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(data_dir)
        .map_err(io(data_dir))?;
    create_private_dir(&staging.path().join("db"))?;
    create_private_dir(&staging.path().join("audit"))?;
    let mut done = 0u64;
    for file in &manifest.files {
        let (bytes, sha256) = copy_file(&from.join(&file.path), &staging.path().join(&file.path))?;
        check_file(file, bytes, &sha256)?;
        done += bytes;
        progress(done);
    }
    for top in ["db", "audit"] {
        sync_dir(&staging.path().join(top))?;
    }
    let copy = Store::open_read_only(&staging.path().join("db"))?;
    audit::verify(&copy).map_err(BackupError::Chain)?;
    drop(copy);
    if let Some(ledger) = &apart.ledger {
        copy_file(ledger, &staging.path().join("ledger"))?;
    }
    if let Some(keyring) = &apart.keyring {
        copy_file(keyring, &staging.path().join("keyring"))?;
    }
    // The parts move into place with the keyring last: a data directory without its keyring
    // does not open, so a restore cut short here cannot start half-restored.
    for part in ["db", "audit", "ledger", "keyring"] {
        let staged = staging.path().join(part);
        if staged.exists() {
            let target = data_dir.join(part);
            fs::rename(&staged, &target).map_err(io(&target))?;
        }
    }
    sync_dir(data_dir)?;
    Ok(Restored {
        manifest,
        keyring: apart.keyring.is_some(),
        ledger: apart.ledger.is_some(),
    })
}

/// Refuses a keyring that is not the one the backup's data is paired with, or that no longer
/// holds a KEK epoch the data needs (destroyed by an epoch roll after the backup).
pub fn check_keyring(manifest: &Manifest, keyring: &Path) -> Result<(), BackupError> {
    let (id, epochs) = keyring::describe(keyring)?;
    if hex::encode(id) != manifest.keyring_id {
        return Err(BackupError::WrongKeyring(
            "it belongs to another vault (keyring id differs)".into(),
        ));
    }
    let missing: Vec<u32> = manifest
        .kek_epochs
        .iter()
        .copied()
        .filter(|e| !epochs.contains(e))
        .collect();
    if !missing.is_empty() {
        return Err(BackupError::WrongKeyring(format!(
            "KEK epoch(s) {missing:?} that wrap the backup's keys were destroyed by an epoch roll \
             after the backup was taken: the backup can no longer be opened, by design"
        )));
    }
    Ok(())
}

/// Creates `path`, which must not exist, readable by its owner only.
fn new_private_file(path: &Path) -> Result<fs::File, BackupError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

/// Copies `from` to a new private file `to`, synced; returns its size and SHA-256.
pub fn copy_file(from: &Path, to: &Path) -> Result<(u64, String), BackupError> {
    let output = new_private_file(to)?;
    let mut writer = std::io::BufWriter::new(output);
    let hashed = hash_through(from, &mut writer, to)?;
    let output = writer.into_inner().map_err(|e| io(to)(e.into_error()))?;
    output.sync_all().map_err(io(to))?;
    Ok(hashed)
}

/// Writes a backup streamed from a running vault into a new directory: files arrive in manifest
/// order, in chunks; each is checked against the manifest when complete, and the manifest is
/// written last.
pub struct Receiver {
    dir: PathBuf,
    manifest: Manifest,
    next: usize,
    current: Option<(fs::File, Sha256, u64)>,
    received: u64,
}

impl Receiver {
    /// Starts writing the backup `manifest` describes into `dir`, which must not exist.
    pub fn new(dir: &Path, manifest: Manifest) -> Result<Self, BackupError> {
        if dir.exists() {
            return Err(BackupError::Exists(dir.to_owned()));
        }
        for file in &manifest.files {
            relative_path(&file.path).map_err(|reason| BackupError::Manifest {
                path: dir.to_owned(),
                reason,
            })?;
        }
        create_private_dir(&dir.join("db"))?;
        create_private_dir(&dir.join("audit"))?;
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            next: 0,
            current: None,
            received: 0,
        })
    }

    /// The backup being received.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Adds a chunk of `path` at `offset`: chunks must come in order, file after file.
    pub fn chunk(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), BackupError> {
        let out_of_order = |reason: &str| BackupError::Mismatch {
            file: path.to_owned(),
            reason: reason.to_owned(),
        };
        while self.current.is_none()
            && self
                .manifest
                .files
                .get(self.next)
                .is_some_and(|f| f.bytes == 0 && f.path != path)
        {
            self.finish_file()?;
        }
        if self.current.is_none() {
            let expected = self
                .manifest
                .files
                .get(self.next)
                .ok_or_else(|| out_of_order("is not in the manifest"))?;
            if expected.path != path || offset != 0 {
                return Err(out_of_order("arrived out of order"));
            }
            self.current = Some((
                new_private_file(&self.dir.join(&expected.path))?,
                Sha256::new(),
                0,
            ));
        }
        let expected = &self.manifest.files[self.next];
        let Some((file, hasher, written)) = self.current.as_mut() else {
            return Err(out_of_order("arrived out of order"));
        };
        if expected.path != path || *written != offset {
            return Err(out_of_order("arrived out of order"));
        }
        if *written + data.len() as u64 > expected.bytes {
            return Err(out_of_order("is longer than the manifest says"));
        }
        file.write_all(data)
            .map_err(io(&self.dir.join(&expected.path)))?;
        hasher.update(data);
        *written += data.len() as u64;
        self.received += data.len() as u64;
        if *written == expected.bytes {
            self.finish_file()?;
        }
        Ok(())
    }

    fn finish_file(&mut self) -> Result<(), BackupError> {
        let expected = &self.manifest.files[self.next];
        let (file, hasher, written) = match self.current.take() {
            Some(current) => current,
            None => (
                new_private_file(&self.dir.join(&expected.path))?,
                Sha256::new(),
                0,
            ),
        };
        file.sync_all()
            .map_err(io(&self.dir.join(&expected.path)))?;
        check_file(expected, written, &hex::encode(hasher.finalize()))?;
        self.next += 1;
        Ok(())
    }

    /// Ends the backup: every file must have arrived whole. Writes the manifest and returns it.
    pub fn finish(mut self) -> Result<Manifest, BackupError> {
        // Empty files send no chunk.
        while self.current.is_none()
            && self
                .manifest
                .files
                .get(self.next)
                .is_some_and(|f| f.bytes == 0)
        {
            self.finish_file()?;
        }
        if let Some(missing) = self.manifest.files.get(self.next) {
            return Err(BackupError::Mismatch {
                file: missing.path.clone(),
                reason: "did not arrive whole: the stream ended early".into(),
            });
        }
        for top in ["db", "audit"] {
            sync_dir(&self.dir.join(top))?;
        }
        self.manifest.write(&self.dir)?;
        Ok(self.manifest)
    }
}
