//! Sealed segments: once the log opens a new segment, the closed one is copied out of the live
//! column family into a file of its own (`audit/<segment>.seg` beside `db/`), ended by a checkpoint
//! signed with the audit key, and only then deleted from the column family. A sealed file is
//! written once, never rewritten, and verifies alone with the audit public key.
//!
//! ```text
//! file       := MAGIC record* offset* checkpoint count:u32 MAGIC
//! record     := len:u32 stored-bytes          offset := u32, from the start of the file
//! checkpoint := segment first_seq last_seq (u64 each) prev_hash last_hash keyring_id public_key
//!               signature                      (200 bytes; all integers big-endian)
//! ```
//!
//! Hand-written: a flat, append-once file of length-prefixed records needs no container crate,
//! and its bytes are part of what an archive keeps and verifies for years.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PVAUDSG1";
/// The size of an encoded checkpoint.
pub const CHECKPOINT_LEN: usize = 200;

/// Why a segment file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The file could not be read or written.
    #[error("audit segment {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a well-formed segment.
    #[error("audit segment {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The signed end of a sealed segment: what it holds and where it sits in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The segment's number.
    pub segment: u64,
    /// Its first record.
    pub first_seq: u64,
    /// Its last record.
    pub last_seq: u64,
    /// The hash before its first record.
    pub prev_hash: [u8; 32],
    /// The hash of its last record.
    pub last_hash: [u8; 32],
    /// The vault's keyring.
    pub keyring_id: [u8; 16],
    /// The audit public key that signed it.
    pub public_key: [u8; 32],
    /// Ed25519 over the label, the keyring id and the numbers and hashes above.
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// What is signed (after the label and keyring id).
    pub fn body(&self) -> Vec<u8> {
        [
            &self.segment.to_be_bytes()[..],
            &self.first_seq.to_be_bytes(),
            &self.last_seq.to_be_bytes(),
            &self.prev_hash,
            &self.last_hash,
        ]
        .concat()
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        [
            &self.body()[..],
            &self.keyring_id,
            &self.public_key,
            &self.signature,
        ]
        .concat()
    }

    /// Reads a stored checkpoint.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != CHECKPOINT_LEN {
            return None;
        }
        let int = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Self {
            segment: int(0)?,
            first_seq: int(8)?,
            last_seq: int(16)?,
            prev_hash: bytes.get(24..56)?.try_into().ok()?,
            last_hash: bytes.get(56..88)?.try_into().ok()?,
            keyring_id: bytes.get(88..104)?.try_into().ok()?,
            public_key: bytes.get(104..136)?.try_into().ok()?,
            signature: bytes.get(136..200)?.try_into().ok()?,
        })
    }

    /// Checks the signature, against `trusted` when given (else the key the checkpoint names).
    pub fn check_signature(&self, trusted: Option<&[u8; 32]>) -> Result<(), &'static str> {
        let key = trusted.unwrap_or(&self.public_key);
        if key != &self.public_key {
            return Err("the checkpoint is signed by another audit key");
        }
        crate::crypto::verify_checkpoint(key, &self.keyring_id, &self.body(), &self.signature)
            .map_err(|_| "the checkpoint's signature does not verify")
    }
}

/// The file name of segment `segment`.
pub fn file_name(segment: u64) -> String {
    format!("{segment:016}.seg")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes segment `checkpoint.segment` with `records` (its stored bytes, in seq order) into `dir`
/// durably: a temporary file, synced, renamed, and the directory synced. Returns the path.
pub fn write(
    dir: &Path,
    checkpoint: &Checkpoint,
    records: &[Vec<u8>],
) -> Result<PathBuf, SegmentError> {
    let path = dir.join(file_name(checkpoint.segment));
    let mut out = Vec::with_capacity(
        records.iter().map(|r| r.len() + 8).sum::<usize>() + CHECKPOINT_LEN + 24,
    );
    out.extend_from_slice(MAGIC);
    let mut offsets = Vec::with_capacity(records.len());
    for r in records {
        offsets.push(
            u32::try_from(out.len()).map_err(|_| SegmentError::Malformed {
                path: path.clone(),
                reason: "segment larger than 4 GiB",
            })?,
        );
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    for o in &offsets {
        out.extend_from_slice(&o.to_be_bytes());
    }
    out.extend_from_slice(&checkpoint.encode());
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    out.extend_from_slice(MAGIC);
    crate::durable_file::write(&path, &out, 0o600).map_err(io(&path))?;
    Ok(path)
}

/// An open sealed segment: its checkpoint and where each record starts.
#[derive(Debug)]
pub struct SegmentFile {
    path: PathBuf,
    file: File,
    offsets: Vec<u32>,
    records_end: u64,
    /// The checkpoint the file ends with.
    pub checkpoint: Checkpoint,
}

impl SegmentFile {
    /// Opens and checks the frame of `path` (not the records' hashes: [`super::verify`] does).
    pub fn open(path: &Path) -> Result<Self, SegmentError> {
        let bad = |reason| SegmentError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        let trailer = (CHECKPOINT_LEN + 12) as u64;
        if len < 8 + trailer {
            return Err(bad("too short"));
        }
        let mut head = [0u8; 8];
        file.read_exact_at(&mut head, 0).map_err(io(path))?;
        let mut tail = vec![0u8; CHECKPOINT_LEN + 12];
        file.read_exact_at(&mut tail, len - trailer)
            .map_err(io(path))?;
        if &head != MAGIC || &tail[CHECKPOINT_LEN + 4..] != MAGIC {
            return Err(bad("not an audit segment"));
        }
        let checkpoint =
            Checkpoint::decode(&tail[..CHECKPOINT_LEN]).ok_or(bad("bad checkpoint"))?;
        let count = u32::from_be_bytes(
            tail[CHECKPOINT_LEN..CHECKPOINT_LEN + 4]
                .try_into()
                .map_err(|_| bad("bad count"))?,
        ) as u64;
        if checkpoint
            .last_seq
            .checked_sub(checkpoint.first_seq)
            .map(|n| n + 1)
            != Some(count)
        {
            return Err(bad("the record count disagrees with the checkpoint"));
        }
        let records_end = (len - trailer)
            .checked_sub(count * 4)
            .filter(|e| *e >= 8)
            .ok_or(bad("bad offsets"))?;
        let mut raw = vec![0u8; (count * 4) as usize];
        file.read_exact_at(&mut raw, records_end)
            .map_err(io(path))?;
        let offsets: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if offsets.windows(2).any(|w| w[0] >= w[1])
            || offsets.first().is_some_and(|o| *o != 8)
            || offsets
                .last()
                .is_some_and(|o| u64::from(*o) + 4 > records_end)
        {
            return Err(bad("offsets out of order"));
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            offsets,
            records_end,
            checkpoint,
        })
    }

    /// Up to `limit` records from `seq` on, as `(seq, stored bytes)`, read in one go.
    pub fn range(&self, seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, SegmentError> {
        let bad = |reason| SegmentError::Malformed {
            path: self.path.clone(),
            reason,
        };
        let cp = &self.checkpoint;
        if seq < cp.first_seq || seq > cp.last_seq || limit == 0 {
            return Ok(Vec::new());
        }
        let first = (seq - cp.first_seq) as usize;
        let last = (first + limit).min(self.offsets.len());
        let start = u64::from(self.offsets[first]);
        let end = self
            .offsets
            .get(last)
            .map_or(self.records_end, |o| u64::from(*o));
        let mut span = vec![0u8; (end - start) as usize];
        self.file
            .read_exact_at(&mut span, start)
            .map_err(io(&self.path))?;
        let mut out = Vec::with_capacity(last - first);
        let mut at = 0usize;
        for i in first..last {
            let len = span
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or(bad("truncated record"))? as usize;
            let bytes = span
                .get(at + 4..at + 4 + len)
                .ok_or(bad("truncated record"))?;
            out.push((cp.first_seq + i as u64, bytes.to_vec()));
            at += 4 + len;
        }
        if at != span.len() {
            return Err(bad("records and offsets disagree"));
        }
        Ok(out)
    }

    /// Record `seq`, if the segment holds it.
    pub fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, SegmentError> {
        Ok(self.range(seq, 1)?.pop().map(|(_, b)| b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(first: u64, last: u64) -> Checkpoint {
        Checkpoint {
            segment: 3,
            first_seq: first,
            last_seq: last,
            prev_hash: [1; 32],
            last_hash: [2; 32],
            keyring_id: [3; 16],
            public_key: [4; 32],
            signature: [5; 64],
        }
    }

    #[test]
    fn a_written_segment_reads_back_by_seq_and_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; usize::from(i) * 3]).collect();
        let path = write(dir.path(), &checkpoint(41, 50), &records).unwrap();
        let file = SegmentFile::open(&path).unwrap();
        assert_eq!(file.checkpoint, checkpoint(41, 50));
        assert_eq!(file.get(41).unwrap(), Some(Vec::new()));
        assert_eq!(file.get(45).unwrap(), Some(vec![4; 12]));
        assert_eq!(file.get(51).unwrap(), None);
        let all = file.range(41, 100).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[9], (50, vec![9; 27]));
        assert_eq!(file.range(48, 2).unwrap().len(), 2);
    }

    #[test]
    fn a_cut_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &checkpoint(1, 2), &[vec![1], vec![2]]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 5, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(SegmentFile::open(&path).is_err(), "cut at {cut}");
        }
    }
}
