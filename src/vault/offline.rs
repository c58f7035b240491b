//! Offline access to a data directory for auditors' tools: read-only, beside a running vault or
//! on a stopped one. Opening the keyring needs the root key; walking the chain does not.

use std::path::{Path, PathBuf};

use super::OpenError;
use super::audit_admin::SignedHead;
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::keyring::{Keyring, keyfile};
use crate::store::Store;

/// Opens `data_dir/db` read-only.
pub fn open_store_read_only(data_dir: &Path) -> Result<Store, OpenError> {
    Ok(Store::open_read_only(&data_dir.join("db"))?)
}

/// Opens `data_dir/keyring` with the key file (default `data_dir/dev.key`).
pub fn open_keyring(data_dir: &Path, key_file: Option<&Path>) -> Result<Keyring, OpenError> {
    let key_path: PathBuf = key_file.map_or_else(|| data_dir.join("dev.key"), Path::to_owned);
    let root = keyfile::read_key_file(&key_path)?;
    Ok(Keyring::open(&data_dir.join("keyring"), &root)?)
}

/// Signs the head of `store`'s audit log (checked against its last record, as at start-up).
pub fn sign_head(
    store: &Store,
    keyring: &Keyring,
    clock: &dyn Clock,
) -> Result<SignedHead, OpenError> {
    let (seq, hash) = AuditLog::open(store)?.head();
    Ok(SignedHead::sign(keyring, seq, &hash, clock.now_ms()))
}
