//! Durable, atomic file writes: the content goes into a fresh temporary file beside the target
//! (`tempfile`: a random name opened `O_CREAT | O_EXCL`, never an existing file or a planted
//! symlink, with the mode set at creation), is synced, and `persist` renames it over the target;
//! then the directory is synced, so after a crash the target holds the old content or the new,
//! never a torn or empty file. Used for the keyring, sealed audit segments, archive copies and
//! markers, and backup manifests.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn finish(mut file: tempfile::NamedTempFile, path: &Path) -> io::Result<()> {
    file.flush()?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    File::open(parent(path))?.sync_all()
}

fn temporary(path: &Path, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(parent(path))
}

/// Replaces `path` with `bytes`, atomically and durably, the file created with `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = temporary(path, mode)?;
    file.write_all(bytes)?;
    finish(file, path)
}

/// Replaces `to` with a copy of `from`, atomically and durably, the file created with `mode`.
pub fn copy(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    let mut input = File::open(from)?;
    let mut file = temporary(to, mode)?;
    io::copy(&mut input, &mut file)?;
    finish(file, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_privately_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"old content, longer").unwrap();
        write(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        copy(&path, &dir.path().join("copy"), 0o600).unwrap();
        assert_eq!(std::fs::read(dir.path().join("copy")).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
