//! Offline access to a data directory: read-only for auditors' tools (beside a running vault or
//! on a stopped one; opening the keyring needs the root key, walking the chain does not), and the
//! key operations that need the vault stopped (changing the root passphrase).

use std::path::Path;
use std::sync::Arc;

use crate::audit::{Action, AuditEvent, AuditLog};
use crate::clock::Clock;
use crate::crypto::{KdfParams, Passphrase, RootKey};
use crate::keyring::{Keyring, KeyringError, change_root};
use crate::store::{Batch, Store};
use crate::vault::audit_admin::SignedHead;
use crate::vault::open::root_key;
use crate::vault::{OpenError, VaultConfig};

/// Opens a consistent read-only view of `data_dir/db`, beside a running vault or on a stopped one.
pub fn open_store_read_only(data_dir: &Path) -> Result<Store, OpenError> {
    let db = data_dir.join("db");
    let mut store = Store::open_snapshot(&db)?;
    // Beside a busy vault, a secondary instance can catch up with one column family's flush and
    // not yet another's (rocksdb#5413 describes the mechanism): `audit head` once saw the head one
    // record behind the records, under the shred-and-verify load of
    // `offline_tools_read_a_consistent_view_beside_a_busy_vault`. Such a view is taken again; a
    // disagreement that stays over several views is real, and the tools report it.
    for attempt in 0..4u32 {
        if crate::audit::head_of(&store).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25 << attempt));
        store = Store::open_snapshot(&db)?;
    }
    Ok(store)
}

/// Opens `config`'s storage to read: a consistent view of `data_dir/db` on RocksDB, the
/// database itself on PostgreSQL (which every node writes meanwhile; the audit tools read a
/// prefix of the chain that ends at the head they read first).
pub fn open_store_for(config: &VaultConfig) -> Result<Store, OpenError> {
    match &config.store {
        crate::vault::StoreConfig::Rocksdb => open_store_read_only(&config.data_dir),
        crate::vault::StoreConfig::Postgres { database, .. } => {
            Ok(crate::store::PgStore::connect(database, false)?.into())
        }
    }
}

/// Opens the keyring of `config` with its root key (key file, passphrase or `dev.key`; on
/// PostgreSQL, the keyring in the keys schema).
pub fn open_keyring(config: &VaultConfig) -> Result<Keyring, OpenError> {
    if let crate::vault::StoreConfig::Postgres { database, .. } = &config.store {
        let store = Arc::new(Store::from(crate::store::PgStore::connect(
            database, false,
        )?));
        let home = crate::keyring::KeyringHome::Database(store);
        let (root, _) = root_key(config, &home)?;
        return Ok(Keyring::open(home, &root)?);
    }
    if !config.keyring_path().exists() {
        return Err(OpenError::DataDir {
            path: config.data_dir.clone(),
            reason: "no keyring".into(),
        });
    }
    let (root, _) = root_key(config, &config.keyring_file())?;
    Ok(Keyring::open(config.keyring_path(), &root)?)
}

/// Re-wraps the keyring of `config` (opened with its current root key) under a root key derived
/// from `new` with fresh Argon2id parameters and salt, and audits it. No data is touched. Refused
/// while a vault runs on the directory (it holds the database lock).
pub fn change_passphrase(
    config: &VaultConfig,
    new: &Passphrase,
    clock: &dyn Clock,
) -> Result<(), OpenError> {
    let audit = AuditLog::open(Arc::new(Store::open(&config.db_dir())?), config.audit, None)?;
    let (old, _) = root_key(config, &config.keyring_file())?;
    let kdf = KdfParams::recommended().map_err(KeyringError::from)?;
    let new_root = RootKey::from_passphrase(new, &kdf).map_err(KeyringError::from)?;
    change_root(config.keyring_path(), &old, &new_root, Some(kdf))?;
    let event = AuditEvent {
        request_id: "offline".into(),
        ..AuditEvent::new(OFFLINE_PRINCIPAL, Action::KeyChangePassphrase)
    };
    audit.commit(Batch::new(), event, clock.now_ms())?;
    Ok(())
}

/// Takes a backup of the stopped vault in `config.data_dir` into `into` (a directory that must not
/// exist), audited as the command line (`started` before the copy is cut, `ok` after). Refused
/// while a vault runs on the directory (it holds the database lock): back a running vault up
/// through its API.
pub fn backup_stopped(
    config: &VaultConfig,
    into: &Path,
    clock: &dyn Clock,
) -> Result<crate::backup::Manifest, OpenError> {
    let store = Arc::new(Store::open(&config.db_dir())?);
    let audit = AuditLog::open(Arc::clone(&store), config.audit, None)?;
    let event = AuditEvent {
        request_id: "offline".into(),
        ..AuditEvent::new(OFFLINE_PRINCIPAL, Action::Backup)
    };
    let started = AuditEvent {
        outcome: crate::audit::Outcome::Started,
        ..event.clone()
    };
    audit.commit(Batch::new(), started, clock.now_ms())?;
    let taken = crate::backup::take(
        &store,
        &config.keyring_path(),
        into,
        crate::clock::rfc3339(clock.now_ms()),
    );
    let outcome = match &taken {
        Ok(_) => crate::audit::Outcome::Ok,
        Err(_) => crate::audit::Outcome::Unavailable,
    };
    audit.commit(
        Batch::new(),
        AuditEvent { outcome, ..event },
        clock.now_ms(),
    )?;
    Ok(taken?)
}

/// Who the audit log names for key operations run from the command line on a stopped vault.
pub const OFFLINE_PRINCIPAL: &str = "privault-cli";

/// Signs the head of `store`'s audit log (checked against its last record, as at start-up).
pub fn sign_head(
    store: &Store,
    keyring: &Keyring,
    clock: &dyn Clock,
) -> Result<SignedHead, OpenError> {
    let (seq, hash) = crate::audit::head_of(store)?;
    Ok(SignedHead::sign(keyring, seq, &hash, clock.now_ms()))
}
