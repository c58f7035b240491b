//! Offline access to a data directory for auditors' tools: read-only, beside a running vault or
//! on a stopped one. Opening the keyring needs the root key; walking the chain does not.

use std::path::{Path, PathBuf};

use super::OpenError;
use super::audit_admin::SignedHead;
use crate::clock::{Clock, rfc3339};
use crate::keyring::{Keyring, keyfile};
use crate::store::keys::audit_seq;
use crate::store::{Cf, Store};

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

/// Signs the last record of `store` with the keyring's audit key.
pub fn sign_head(
    store: &Store,
    keyring: &Keyring,
    clock: &dyn Clock,
) -> Result<SignedHead, OpenError> {
    let (seq, hash) = match store.last(Cf::Audit)? {
        None => (0, [0u8; 32]),
        Some((key, value)) => {
            let record: crate::audit::AuditRecord =
                serde_json::from_slice(&value).map_err(|_| OpenError::DataDir {
                    path: store.path().to_owned(),
                    reason: "the last audit record is unreadable".into(),
                })?;
            let hash = hex::decode(&record.hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .unwrap_or([0u8; 32]);
            (audit_seq(&key).unwrap_or(0), hash)
        }
    };
    let id = keyring.id();
    let signer = keyring.audit_signer();
    Ok(SignedHead {
        seq,
        hash: hex::encode(hash),
        time: rfc3339(clock.now_ms()),
        keyring_id: hex::encode(id),
        public_key: hex::encode(signer.public_key()),
        signature: hex::encode(signer.sign_head(&id, seq, &hash)),
    })
}
