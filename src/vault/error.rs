//! The vault's errors: start-up failures, and call failures that the api maps to status codes.

use crate::audit::{AuditError, Outcome};
use crate::keyring::KeyringError;
use crate::policy::PolicyError;
use crate::store::StoreError;

/// Why the vault could not start. Nothing on disk is changed by a failed start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The key file or keyring is missing, unreadable, malformed, or for another root key.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// The policy directory is invalid.
    #[error("invalid policy directory:\n{0}")]
    Policy(#[from] PolicyError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log does not verify at its head.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The deletion ledger cannot be read or replayed.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// A backup could not be taken.
    #[error("the backup could not be taken: {0}")]
    Backup(#[from] crate::backup::BackupError),
    /// Replaying the ledger (re-shredding a restored subject) failed.
    #[error("replaying the deletion ledger: {0}")]
    Replay(String),
    /// The data directory is inconsistent (e.g. a keyring from another database).
    #[error("data directory `{path}`: {reason}")]
    DataDir {
        /// The data directory.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Why a call failed. Messages never contain a value or a raw subject id.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The request is malformed or names something undeclared; nothing changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Policy denied the call; nothing changed.
    #[error("{action} denied by policy")]
    PermissionDenied {
        /// The denied action.
        action: &'static str,
        /// Fields that were denied, with the policies that forbade them.
        denied: Vec<(String, Vec<String>)>,
    },
    /// The call was made against a state that has changed (e.g. a stale policy base version).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A requested item does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The call cannot be made safe now (the audit log cannot be written); nothing was returned.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data failed an integrity check.
    #[error("{0}")]
    DataLoss(String),
    /// Anything else; details are in the server log under the request id.
    #[error("{0}")]
    Internal(String),
    /// The response would exceed the per-call byte budget; nothing was returned.
    #[error("the response would exceed {limit} bytes of values: ask for fewer fields or subjects")]
    ResponseTooLarge {
        /// The budget, in bytes of values.
        limit: usize,
    },
    /// A read run in memory only ([`crate::store::memory_only`]) needs the disk, or more
    /// decryption than the async runtime should do. Nothing was done or audited; the api runs the
    /// call again on the blocking pool, so no caller sees this.
    #[error("the call needs the disk")]
    NeedsDisk,
}

impl VaultError {
    /// The outcome recorded in the audit log for a call that failed with this error.
    pub fn audit_outcome(&self) -> Outcome {
        match self {
            Self::InvalidArgument(_) => Outcome::InvalidArgument,
            Self::PermissionDenied { .. } => Outcome::Denied,
            Self::FailedPrecondition(_) => Outcome::FailedPrecondition,
            Self::NotFound(_) => Outcome::NotFound,
            Self::Unavailable(_) => Outcome::Unavailable,
            Self::DataLoss(_) => Outcome::DataLoss,
            Self::ResponseTooLarge { .. } => Outcome::ResourceExhausted,
            Self::Internal(_) | Self::NeedsDisk => Outcome::Internal,
        }
    }
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        if matches!(e, StoreError::NotInMemory) {
            return Self::NeedsDisk;
        }
        if let StoreError::Postgres { .. } | StoreError::Conflict(_) = e {
            // A database that is down, failing over or refusing: nothing was returned or changed
            // unless the transaction committed, and the caller may retry.
            tracing::error!(error = %e, "storage unavailable");
            return Self::Unavailable("storage unavailable: try again".into());
        }
        tracing::error!(error = %e, "storage error");
        Self::Internal("storage error".into())
    }
}
