//! The root key file: read with a permission check, or generated (mode 0600) as a development key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::KeyringError;
use crate::crypto::{CryptoError, RootKey};

/// Reads the root key from `path`, refusing a file readable by group or others.
pub fn read_key_file(path: &Path) -> Result<RootKey, KeyringError> {
    let io = |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyringError::KeyFilePermissions(path.to_owned()));
    }
    let bytes = zeroize::Zeroizing::new(fs::read(path).map_err(io)?);
    Ok(RootKey::from_key_file(&bytes)?)
}

/// Generates a new random root key at `path` (which must not exist), mode 0600, synced.
pub fn create_key_file(path: &Path) -> Result<RootKey, KeyringError> {
    let io = |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    };
    let root = RootKey::generate()?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let text = root
        .to_key_file()
        .ok_or(CryptoError::MalformedKey("a generated key is in memory"))?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.key");
        let root = create_key_file(&path).unwrap();
        assert_eq!(
            read_key_file(&path).unwrap().check_value(),
            root.check_value()
        );
        assert!(
            create_key_file(&path).is_err(),
            "never overwrites a key file"
        );
    }

    #[test]
    fn group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.key");
        create_key_file(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KeyringError::KeyFilePermissions(_))
        ));
    }
}
