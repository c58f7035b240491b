//! Opening a data directory: root key (generating a development key on first start), keyring,
//! policies, database, and the checks that tie them together. A failed open changes nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::audit::{AuditLog, AuditOptions};
use crate::clock::Clock;
use crate::crypto::{KdfParams, Passphrase, RootKey};
use crate::keyring::{Keyring, KeyringError, KeyringHome, RootOrigin, keyfile, root_origin};
use crate::ledger::Ledger;
use crate::policy::{Policies, load_sources};
use crate::store::keys::{FORMAT_KEY, KEYRING_ID_KEY};
use crate::store::{Batch, Cf, PgConfig, PgStore, Store};
use crate::vault::consent_cache::ConsentCache;
use crate::vault::{Limits, OpenError, SUBJECT_STRIPES, Vault, keys::KeyCache};

/// The on-disk format this version writes: 2 wraps the audit pseudonym under the KEK, gives every
/// subject an incarnation id, tags policy versions and consent records with a key from the
/// keyring, and binds a value's write and expiry times into its ciphertext (values written before
/// keep format 1 until rewritten). 3 writes audit records in the binary record format 2, with a
/// dictionary per log segment and a subject index (format-1 JSON records stay as they are, and are
/// indexed by the upgrade).
pub const DATA_FORMAT_VERSION: u32 = 3;
/// Format 2: audit records as JSON, no subject index.
const FORMAT_JSON_AUDIT: u32 = 2;
/// Format 1: pseudonyms in clear. Both are upgraded in place at open.
const FORMAT_CLEAR_PSEUDONYMS: u32 = 1;

/// Where the vault keeps and finds its parts.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Holds `db/`, `keyring`, the deletion ledger and, in development, `dev.key`.
    pub data_dir: PathBuf,
    /// The policy directory (schema, catalog, policies).
    pub policies_dir: PathBuf,
    /// The root key file; `None` (and no passphrase) means `<data_dir>/dev.key`, generated when
    /// absent.
    pub key_file: Option<PathBuf>,
    /// The passphrase the root key is derived from (Argon2id), instead of a key file.
    pub passphrase: Option<Passphrase>,
    /// The PKCS#11 token holding the root key, instead of a key file or a passphrase.
    pub token: Option<crate::crypto::TokenConfig>,
    /// Per-call bounds.
    pub limits: Limits,
    /// How the audit log is cut into segments.
    pub audit: AuditOptions,
    /// Where the data is: RocksDB in `data_dir/db` or a PostgreSQL database.
    pub store: StoreConfig,
}

/// The storage backend and how to reach it.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// RocksDB in `data_dir/db`, the keyring and the ledger beside it (the default).
    #[default]
    Rocksdb,
    /// A PostgreSQL database holding the data, the keyring and the ledger (in the keys schema).
    Postgres {
        /// How to reach it.
        database: PgConfig,
        /// This node's name, in its lease and its logs.
        node_id: String,
    },
}

impl VaultConfig {
    /// The defaults for `data_dir` and `policies_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, policies_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            policies_dir: policies_dir.into(),
            key_file: None,
            passphrase: None,
            token: None,
            limits: Limits::default(),
            audit: AuditOptions::default(),
            store: StoreConfig::default(),
        }
    }

    /// Where the keyring lives for this configuration on RocksDB: the file beside `db/`.
    pub fn keyring_file(&self) -> KeyringHome {
        KeyringHome::File(self.keyring_path())
    }

    /// The RocksDB directory.
    pub fn db_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    /// The keyring file.
    pub fn keyring_path(&self) -> PathBuf {
        self.data_dir.join("keyring")
    }

    /// The deletion ledger, beside `db/` and outside its backups.
    pub fn ledger_path(&self) -> PathBuf {
        self.data_dir.join("ledger")
    }

    /// The development key file used when no key file is configured.
    pub fn dev_key_path(&self) -> PathBuf {
        self.data_dir.join("dev.key")
    }
}

fn data_dir_error(path: &Path, reason: impl Into<String>) -> OpenError {
    OpenError::DataDir {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The root key from the configured passphrase, key file or development key, checked against how
/// the existing keyring's root key was made; with the Argon2id parameters to record when a new
/// keyring is created from a passphrase.
pub(in crate::vault) fn root_key(
    config: &VaultConfig,
    home: &KeyringHome,
) -> Result<(RootKey, Option<KdfParams>), OpenError> {
    let origin = root_origin(home)?;
    if let Some(token) = &config.token {
        if config.passphrase.is_some() || config.key_file.is_some() {
            return Err(data_dir_error(
                &config.data_dir,
                "give the root key as a PKCS#11 token, a key file or a passphrase: only one",
            ));
        }
        if let RootOrigin::Passphrase(_) = origin {
            return Err(data_dir_error(
                &config.data_dir,
                "this keyring's root key comes from a passphrase, not a token",
            ));
        }
        // The key is generated in the token only for a keyring yet to be created.
        let create = matches!(origin, RootOrigin::Absent);
        let root = RootKey::from_token(token, create).map_err(KeyringError::from)?;
        return Ok((root, None));
    }
    match (&config.passphrase, &config.key_file, origin) {
        (Some(_), Some(_), _) => Err(data_dir_error(
            &config.data_dir,
            "give the root key either as a key file or as a passphrase, not both",
        )),
        (Some(_), None, RootOrigin::KeyFile) => Err(data_dir_error(
            &config.data_dir,
            "this keyring's root key is a key file: pass --key-file (or change it to a passphrase \
             with `privault keys change-passphrase`)",
        )),
        (None, _, RootOrigin::Passphrase(_)) => Err(data_dir_error(
            &config.data_dir,
            "this keyring's root key comes from a passphrase: pass --root-passphrase-file or \
             --root-passphrase-env",
        )),
        (Some(passphrase), None, RootOrigin::Passphrase(kdf)) => {
            let root = RootKey::from_passphrase(passphrase, &kdf).map_err(KeyringError::from)?;
            Ok((root, None))
        }
        (Some(passphrase), None, RootOrigin::Absent) => {
            let kdf = KdfParams::recommended().map_err(KeyringError::from)?;
            let root = RootKey::from_passphrase(passphrase, &kdf).map_err(KeyringError::from)?;
            Ok((root, Some(kdf)))
        }
        (None, _, _) => Ok((key_file_root(config, home)?, None)),
    }
}

/// Reads the configured key file, or the development key, generating it on a first start.
fn key_file_root(config: &VaultConfig, home: &KeyringHome) -> Result<RootKey, OpenError> {
    if let Some(path) = &config.key_file {
        return Ok(keyfile::read_key_file(path)?);
    }
    if let KeyringHome::Database(_) = home {
        // Every node needs the same root key: a development key made on one would lock out the
        // others, and would sit beside no data at all.
        return Err(data_dir_error(
            &config.data_dir,
            "a vault on PostgreSQL needs its root key given: --key-file, a passphrase or a \
             PKCS#11 token",
        ));
    }
    let path = config.dev_key_path();
    if path.exists() {
        return Ok(keyfile::read_key_file(&path)?);
    }
    if config.keyring_path().exists() {
        return Err(data_dir_error(
            &config.data_dir,
            "a keyring exists but its key file dev.key is missing: pass the root key with --key-file",
        ));
    }
    let root = keyfile::create_key_file(&path)?;
    tracing::warn!(
        path = %path.display(),
        "generated a DEVELOPMENT root key next to the data; anyone who can read it can read the vault. \
         Use --key-file with a key kept apart from the data in production"
    );
    Ok(root)
}

impl Vault {
    /// Opens the vault in `config.data_dir`, creating it on a first start.
    pub fn open(config: &VaultConfig, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        // Policies first: an invalid policy directory must not leave a half-created data dir.
        let dir_files = load_sources(&config.policies_dir)?;
        let policies = Policies::from_sources(&dir_files)?;
        create_private_dir(&config.data_dir)?;
        // On RocksDB the keyring is checked before `db/` is created; on PostgreSQL the keyring
        // is in the database, which is reached (and its schema migrated) first.
        let database = match &config.store {
            StoreConfig::Rocksdb => None,
            StoreConfig::Postgres { database, node_id } => {
                let pg = PgStore::connect(database, true)?;
                pg.take_node_lease(node_id)?;
                Some(Arc::new(Store::from(pg)))
            }
        };
        let home = match &database {
            None => config.keyring_file(),
            Some(store) => KeyringHome::Database(Arc::clone(store)),
        };
        let (root, kdf) = root_key(config, &home)?;
        let keyring = Keyring::open_or_create(&home, &root, clock.now_ms(), kdf)?;
        drop(root);
        let store = match database {
            Some(store) => store,
            None => Arc::new(Store::open_with_block_cache(
                &config.db_dir(),
                config.limits.block_cache_bytes,
            )?),
        };
        // The database lock is held: no backup of another process is being staged here.
        crate::vault::backup::remove_stale_staging(&config.data_dir);
        let format = check_pairing(&store, &keyring, config)?;
        if format < DATA_FORMAT_VERSION {
            let indexed = crate::audit::index_json_records(&store)
                .map_err(|e| OpenError::Replay(format!("indexing the audit log: {e}")))?;
            tracing::info!(
                records = indexed,
                "indexed the JSON audit records by subject"
            );
        }
        let signer = crate::audit::SegmentSigner {
            signer: keyring.audit_signer().clone(),
            keyring_id: keyring.id(),
        };
        let audit = AuditLog::open(Arc::clone(&store), config.audit, Some(signer))?;
        let ledger = match store.backend() {
            crate::store::Backend::Rocksdb => Ledger::open(&config.ledger_path())?,
            crate::store::Backend::Postgres => Ledger::in_database(Arc::clone(&store))?,
        };
        let holds = ledger.holds()?;
        let wraps = crate::vault::wraps::WrapCounter::open(&store, keyring.current_epoch())?;
        // Read before anything is cached: every change after it is taken up by the next call.
        let changes_seen = Vault::changes_head(&store)?;
        let vault = Self {
            store,
            ledger,
            holds: RwLock::new(holds),
            keyring,
            policies: RwLock::new(Arc::new(policies)),
            audit,
            keys: KeyCache::new(config.limits.key_cache_subjects),
            wraps,
            consents: ConsentCache::new(config.limits.key_cache_subjects),
            budgets: Default::default(),
            clock,
            writer: RwLock::new(()),
            stripes: (0..SUBJECT_STRIPES).map(|_| Mutex::new(())).collect(),
            limits: config.limits,
            policies_dir: config.policies_dir.clone(),
            audit_retention: config.audit.retention,
            audit_blocked: tokio::sync::watch::channel(None).0,
            changes_seen: Mutex::new(changes_seen),
        };
        if format == FORMAT_CLEAR_PSEUDONYMS {
            vault
                .tag_format1_policy_records()
                .and_then(|()| vault.tag_format1_consents())
                .map_err(|e| OpenError::Replay(format!("upgrading data format 1: {e}")))?;
        }
        vault.init_policy_versions(dir_files)?;
        // Replay reads format 1 as it is (the upgrade draws new incarnations), so it runs first.
        let reshredded = vault.replay_ledger()?;
        if reshredded > 0 {
            tracing::warn!(
                subjects = reshredded,
                "the deletion ledger re-shredded subjects found in the database (a restored backup?)"
            );
        }
        let purged = vault
            .redo_pending_purges()
            .map_err(|e| OpenError::Replay(format!("redoing pending purges: {e}")))?;
        if purged > 0 {
            tracing::warn!(
                erasures = purged,
                "finished the physical purge of erasures a crash or a failure had left pending"
            );
        }
        if format == FORMAT_CLEAR_PSEUDONYMS {
            let wrapped = vault
                .upgrade_clear_pseudonyms()
                .map_err(|e| OpenError::Replay(format!("upgrading data format 1: {e}")))?;
            tracing::info!(
                pseudonyms = wrapped,
                "upgraded data format 1: audit pseudonyms are wrapped under the KEK (copies of \
                 db/ made before today keep them in clear until they are destroyed)"
            );
        }
        if format < DATA_FORMAT_VERSION {
            let mut batch = Batch::new();
            batch.put(
                Cf::Meta,
                FORMAT_KEY.to_vec(),
                DATA_FORMAT_VERSION.to_be_bytes().to_vec(),
            );
            vault.store.write(&batch)?;
            tracing::info!("upgraded the data to format {DATA_FORMAT_VERSION}");
        }
        let active = vault.policies();
        tracing::info!(
            policy_version = active.version(),
            policies = active.policy_count(),
            audit_head = vault.audit.head_seq(),
            "vault opened"
        );
        Ok(vault)
    }
}

/// Creates the data directory with mode 0700, or checks that an existing one is as private: it
/// holds the keyring, the ledger and, in development, the root key.
fn create_private_dir(path: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Ok(meta) = fs::metadata(path) {
        if !meta.is_dir() {
            return Err(data_dir_error(path, "not a directory"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(data_dir_error(
                path,
                format!(
                    "group or others may access it (mode {mode:04o}); it holds the keyring and \
                     the deletion ledger: chmod 700 it"
                ),
            ));
        }
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| data_dir_error(path, format!("cannot create: {e}")))
}

/// Ties the keyring to the database: a keyring from another vault is refused before any read.
/// Returns the data format found.
fn check_pairing(store: &Store, keyring: &Keyring, config: &VaultConfig) -> Result<u32, OpenError> {
    let id = keyring.id();
    match store.get(Cf::Meta, KEYRING_ID_KEY)? {
        Some(stored) if stored == id => {}
        Some(_) => {
            return Err(data_dir_error(
                &config.data_dir,
                "the keyring belongs to another database (keyring id differs)",
            ));
        }
        None => {
            if store.last(Cf::Keys)?.is_some() || store.last(Cf::Audit)?.is_some() {
                return Err(data_dir_error(
                    &config.data_dir,
                    "the database has data but no keyring id",
                ));
            }
            let mut batch = Batch::new();
            batch.put(Cf::Meta, KEYRING_ID_KEY.to_vec(), id.to_vec());
            batch.put(
                Cf::Meta,
                FORMAT_KEY.to_vec(),
                DATA_FORMAT_VERSION.to_be_bytes().to_vec(),
            );
            store.write(&batch)?;
        }
    }
    let found = store
        .get(Cf::Meta, FORMAT_KEY)?
        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
        .map(u32::from_be_bytes);
    match found {
        Some(v @ (FORMAT_CLEAR_PSEUDONYMS | FORMAT_JSON_AUDIT | DATA_FORMAT_VERSION)) => Ok(v),
        _ => Err(data_dir_error(
            &config.data_dir,
            format!("unsupported data format (this version reads format {DATA_FORMAT_VERSION})"),
        )),
    }
}
