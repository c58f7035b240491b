//! The audit log: one hash-chained record per call, appended inside the call's own atomic batch
//! (writes) or made durable before any value leaves (reads), and a verifier that walks the chain.
//! Records hold principals, actions, audit pseudonyms, purposes, per-field outcomes and policy ids:
//! never a value or a raw subject id.

mod archive;
mod chain;
mod codec;
mod log;
mod query;
mod record;
mod segment;
mod stored;
mod vocab;

pub use archive::{Archived, LogRetention, Marker, RetentionReport, archive_to, verify_segment};
pub use chain::{
    AuditLog, AuditOptions, CommitTicket, DEFAULT_SEGMENT_BYTES, SegmentSigner, head_of,
};
pub use log::{Log, Sealed, segments_dir};
pub use query::{AuditFilter, MAX_PAGE, query};
pub use record::{AuditEvent, AuditRecord, DetailView, FieldAudit, FieldView, RecordView};
pub use segment::{Checkpoint, file_name as segment_file_name};
pub use stored::{
    Dictionaries, SegmentStart, VerifyError, index_json_records, verify, verify_range,
};
pub use vocab::{Action, Detail, FieldOutcome, Outcome};

use crate::store::StoreError;

/// What can go wrong appending to or reading the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The record could not be made durable; the call must fail closed.
    #[error("audit log write failed: {0}")]
    Store(#[from] StoreError),
    /// A stored record or head is unreadable or does not chain.
    #[error("audit log is corrupt: {0}")]
    Corrupt(String),
    /// The group write this commit was part of failed (the message is the leader's error).
    #[error("{0}")]
    GroupFailed(String),
}
