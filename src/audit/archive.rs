//! Archival and the live log's retention bound. `privault audit archive --to DIR` copies sealed
//! segments out, verifies each copy on its own (its chain from the checkpoint's previous hash to
//! its last hash, and the signature), and leaves a marker beside the live file naming the copy and
//! its SHA-256. The vault's sweep drops, oldest first, only segments past the bound whose marker
//! matches both the live file and the archived copy; the drop is itself an audit record, and the
//! chain continues from the dropped segment's signed checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuditError;
use super::log::Sealed;
use super::segment::{Checkpoint, SegmentFile, file_name};
use super::stored::{VerifyError, Walker};

/// What the archive tool leaves beside a live segment: where its verified copy is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// The archive directory (absolute).
    pub archive_dir: PathBuf,
    /// SHA-256 of the segment file, hex.
    pub sha256: String,
    /// When the copy was verified, RFC 3339.
    pub archived_at: String,
}

/// The marker file of `segment` in the live segment directory.
pub fn marker_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{}.archived", file_name(segment)))
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Reads `segment`'s marker, if there is one and it parses.
pub fn read_marker(dir: &Path, segment: u64) -> Option<Marker> {
    let text = std::fs::read_to_string(marker_path(dir, segment)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Verifies the segment file `path` on its own: its frame, its records' chain from the
/// checkpoint's previous hash to its last hash, every record's encoding, and the checkpoint's
/// signature (against `trusted`, when given). Returns its checkpoint.
pub fn verify_segment(path: &Path, trusted: Option<&[u8; 32]>) -> Result<Checkpoint, VerifyError> {
    let file = SegmentFile::open(path).map_err(|e| VerifyError::bad(0, e.to_string()))?;
    let cp = file.checkpoint;
    let mut walker = Walker::at_segment_start(&cp);
    let mut seq = cp.first_seq;
    while seq <= cp.last_seq {
        let page = file
            .range(seq, 1024)
            .map_err(|e| VerifyError::bad(seq, e.to_string()))?;
        if page.is_empty() {
            break;
        }
        for (s, bytes) in page {
            walker.step(None, &bytes)?;
            seq = s + 1;
        }
    }
    if walker.prev() != cp.last_hash || walker.expected() != cp.last_seq + 1 {
        return Err(VerifyError::bad(
            cp.last_seq,
            "the records do not end with the checkpoint's hash",
        ));
    }
    cp.check_signature(trusted)
        .map_err(|why| VerifyError::bad(cp.last_seq, why))?;
    Ok(cp)
}

/// One segment the archive tool handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// The segment's checkpoint.
    pub checkpoint: Checkpoint,
    /// Whether it was copied now (false: an identical verified copy was already there).
    pub copied: bool,
}

/// Copies every sealed, live segment not yet in `to` there, verifies each copy, and writes its
/// marker. Safe beside a running vault: sealed files are never rewritten, and the vault only reads
/// markers. `progress` is called after each segment.
pub fn archive_to(
    sealed: &Sealed,
    to: &Path,
    now: String,
    mut progress: impl FnMut(&Archived),
) -> Result<Vec<Archived>, AuditError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        AuditError::GroupFailed(format!("cannot {what} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(to).map_err(|e| io("create", to, e))?;
    let to = to.canonicalize().map_err(|e| io("resolve", to, e))?;
    let mut out = Vec::new();
    for cp in sealed.checkpoints() {
        if sealed.is_dropped(cp.segment) {
            continue;
        }
        let name = file_name(cp.segment);
        let live = sealed.dir().join(&name);
        let sha = file_sha256(&live).map_err(|e| io("read", &live, e))?;
        let target = to.join(&name);
        let present = file_sha256(&target).is_ok_and(|s| s == sha);
        if !present {
            crate::durable_file::copy(&live, &target, 0o600).map_err(|e| io("copy", &live, e))?;
        }
        // The copy, read back from the archive, must verify alone and be the live file's bytes.
        let copied_sha = file_sha256(&target).map_err(|e| io("read", &target, e))?;
        if copied_sha != sha {
            return Err(AuditError::Corrupt(format!(
                "the archived copy of segment {} differs from the live file",
                cp.segment
            )));
        }
        verify_segment(&target, Some(&cp.public_key)).map_err(|e| {
            AuditError::Corrupt(format!(
                "the archived copy of segment {} does not verify: {e}",
                cp.segment
            ))
        })?;
        let marker = Marker {
            archive_dir: to.clone(),
            sha256: sha,
            archived_at: now.clone(),
        };
        let path = marker_path(sealed.dir(), cp.segment);
        let marked = read_marker(sealed.dir(), cp.segment)
            .is_some_and(|m| m.archive_dir == marker.archive_dir && m.sha256 == marker.sha256);
        if !marked {
            let json =
                serde_json::to_vec(&marker).map_err(|e| AuditError::GroupFailed(e.to_string()))?;
            crate::durable_file::write(&path, &json, 0o600).map_err(|e| io("write", &path, e))?;
        }
        let archived = Archived {
            checkpoint: cp,
            copied: !present,
        };
        progress(&archived);
        out.push(archived);
    }
    Ok(out)
}

/// Whether `segment`'s marker names a copy that is still there and still the live file's bytes.
pub fn archived_copy_holds(dir: &Path, segment: u64) -> Option<Marker> {
    let marker = read_marker(dir, segment)?;
    let name = file_name(segment);
    let live = file_sha256(&dir.join(&name)).ok()?;
    let copy = file_sha256(&marker.archive_dir.join(&name)).ok()?;
    (live == marker.sha256 && copy == marker.sha256).then_some(marker)
}

/// The live log's retention bound: sealed segments past it are dropped once archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogRetention {
    /// Segments whose last record is older than this.
    pub max_age_ms: Option<u64>,
    /// While the live log (sealed files and the open segment) is larger than this.
    pub max_bytes: Option<u64>,
}

impl LogRetention {
    /// Whether any bound is set.
    pub fn is_set(&self) -> bool {
        self.max_age_ms.is_some() || self.max_bytes.is_some()
    }
}

/// What one retention sweep of the log did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Segments dropped (their archived copies verified).
    pub dropped: Vec<u64>,
    /// The oldest segment past the bound that is not archived: the log keeps it, and every later
    /// one, until it is.
    pub blocked_by: Option<u64>,
    /// Bytes of the live log after the sweep.
    pub live_bytes: u64,
}

/// When the last record of `cp` was written.
fn last_time(log: super::Log<'_>, cp: &Checkpoint) -> Result<u64, AuditError> {
    let bytes = log
        .get(cp.last_seq)?
        .ok_or_else(|| AuditError::Corrupt(format!("record {} is missing", cp.last_seq)))?;
    match super::stored::Stored::parse(&bytes) {
        Ok(super::stored::Stored::V2 { header, .. }) => Ok(header.time_ms),
        Ok(super::stored::Stored::V1(r)) => r
            .decode()
            .map(|r| r.time_ms)
            .map_err(|_| AuditError::Corrupt(format!("record {} is unreadable", cp.last_seq))),
        Err(why) => Err(AuditError::Corrupt(format!(
            "record {}: {why}",
            cp.last_seq
        ))),
    }
}

impl super::AuditLog {
    /// Drops, oldest first, the sealed segments past `bound` whose archived copy is verified
    /// (marker, live file and copy agree); stops at the first one that is not archived, and says
    /// so. Each drop is one audit record, committed with the removal of the segment's index
    /// entries and dictionary hints; the file is deleted once that record is durable.
    pub fn enforce_retention(
        &self,
        bound: &LogRetention,
        now: crate::clock::Millis,
    ) -> Result<RetentionReport, AuditError> {
        use crate::store::keys::{audit_defs_prefix, audit_dropped_key};
        use crate::store::{Batch, Cf};
        let log = self.log();
        let sealed = log.sealed;
        let dir = sealed.dir().to_owned();
        // A drop whose file deletion a crash interrupted.
        for cp in sealed.checkpoints() {
            let live = dir.join(file_name(cp.segment));
            if sealed.is_dropped(cp.segment) && live.exists() {
                std::fs::remove_file(&live).map_err(|e| {
                    AuditError::GroupFailed(format!("cannot delete {}: {e}", live.display()))
                })?;
            }
        }
        let live: Vec<(Checkpoint, u64)> = sealed
            .checkpoints()
            .into_iter()
            .filter(|c| !sealed.is_dropped(c.segment))
            .map(|c| {
                let size = std::fs::metadata(dir.join(file_name(c.segment))).map_or(0, |m| m.len());
                (c, size)
            })
            .collect();
        let mut total = live.iter().map(|(_, s)| s).sum::<u64>() + self.open_segment_bytes();
        let mut report = RetentionReport::default();
        for (cp, size) in live {
            let too_old = match bound.max_age_ms {
                Some(age) => now.saturating_sub(last_time(log, &cp)?) > age,
                None => false,
            };
            let too_big = bound.max_bytes.is_some_and(|max| total > max);
            if !too_old && !too_big {
                break;
            }
            let Some(marker) = archived_copy_holds(&dir, cp.segment) else {
                report.blocked_by = Some(cp.segment);
                break;
            };
            let mut batch = Batch::new();
            batch.put(
                Cf::Meta,
                audit_dropped_key(cp.segment),
                serde_json::to_vec(&marker).map_err(|e| AuditError::GroupFailed(e.to_string()))?,
            );
            batch.delete_range(
                Cf::AuditIndex,
                cp.segment.to_be_bytes().to_vec(),
                (cp.segment + 1).to_be_bytes().to_vec(),
            );
            batch.delete_range(
                Cf::Meta,
                audit_defs_prefix(cp.segment),
                audit_defs_prefix(cp.segment + 1),
            );
            let event = super::AuditEvent {
                request_id: "retention".into(),
                detail: Some(super::Detail::Segments {
                    first_seq: cp.first_seq,
                    last_seq: cp.last_seq,
                }),
                ..super::AuditEvent::new("privault", super::Action::AuditDrop)
            };
            self.commit(batch, event, now)?;
            sealed.mark_dropped(cp.segment, marker.archive_dir);
            let path = dir.join(file_name(cp.segment));
            std::fs::remove_file(&path).map_err(|e| {
                AuditError::GroupFailed(format!("cannot delete {}: {e}", path.display()))
            })?;
            total = total.saturating_sub(size);
            report.dropped.push(cp.segment);
        }
        report.live_bytes = total;
        Ok(report)
    }
}
