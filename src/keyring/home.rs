//! Where a keyring is kept: a file beside the RocksDB directory, or the keys schema of the
//! PostgreSQL database (`privault_keys.keyring`), never among the data it opens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::KeyringError;
use crate::store::{Store, StoreError};

/// The keyring's place.
#[derive(Debug, Clone)]
pub enum KeyringHome {
    /// A file (mode 0600), written through a synced temporary file and a rename.
    File(PathBuf),
    /// The one row of `privault_keys.keyring` in this store's database.
    Database(Arc<Store>),
}

impl From<&Path> for KeyringHome {
    fn from(path: &Path) -> Self {
        Self::File(path.to_owned())
    }
}

impl From<&PathBuf> for KeyringHome {
    fn from(path: &PathBuf) -> Self {
        Self::File(path.clone())
    }
}

impl From<PathBuf> for KeyringHome {
    fn from(path: PathBuf) -> Self {
        Self::File(path)
    }
}

impl From<&KeyringHome> for KeyringHome {
    fn from(home: &KeyringHome) -> Self {
        home.clone()
    }
}

fn database(store: &Store) -> Result<&crate::store::PgStore, KeyringError> {
    store
        .postgres()
        .ok_or(KeyringError::Store(StoreError::Unsupported {
            backend: "rocksdb",
            what: "a keyring in the database (it is a file beside db/)",
        }))
}

impl KeyringHome {
    /// How messages name it.
    pub fn name(&self) -> PathBuf {
        match self {
            Self::File(path) => path.clone(),
            Self::Database(_) => PathBuf::from("privault_keys.keyring"),
        }
    }

    /// The file, when it is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Database(_) => None,
        }
    }

    /// Whether a keyring was written.
    pub fn exists(&self) -> Result<bool, KeyringError> {
        match self {
            Self::File(path) => Ok(path.exists()),
            Self::Database(store) => Ok(database(store)?.read_keyring()?.is_some()),
        }
    }

    /// The keyring's text.
    pub fn read(&self) -> Result<String, KeyringError> {
        match self {
            Self::File(path) => std::fs::read_to_string(path).map_err(|source| KeyringError::Io {
                path: path.clone(),
                source,
            }),
            Self::Database(store) => {
                database(store)?
                    .read_keyring()?
                    .ok_or_else(|| KeyringError::Io {
                        path: self.name(),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    })
            }
        }
    }

    /// Replaces the keyring atomically and durably.
    pub fn replace(&self, text: &str) -> Result<(), KeyringError> {
        match self {
            Self::File(path) => {
                super::write_private_atomically(path, text.as_bytes()).map_err(|source| {
                    KeyringError::Io {
                        path: path.clone(),
                        source,
                    }
                })
            }
            Self::Database(store) => {
                database(store)?.write_keyring(text, false)?;
                Ok(())
            }
        }
    }

    /// Writes a new keyring; false when another node created one first (then open that one).
    pub fn create(&self, text: &str) -> Result<bool, KeyringError> {
        match self {
            Self::File(_) => self.replace(text).map(|()| true),
            Self::Database(store) => Ok(database(store)?.write_keyring(text, true)?),
        }
    }
}
