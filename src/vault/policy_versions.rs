//! The versioned policy store: every policy set the vault has activated is kept in the policies
//! column family with who, when and why; the active one is swapped atomically. The policy
//! directory is read at start and on SIGHUP; a set applied through the API stays active across
//! restarts until the directory itself changes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{OpenError, Vault, VaultError};
use crate::audit::AuditEvent;
use crate::clock::{Millis, rfc3339};
use crate::policy::{Policies, PolicyError, Sources, load_sources};
use crate::store::{Batch, Cf};

const ACTIVE_KEY: &[u8] = b"policy_active";
const DIR_HASH_KEY: &[u8] = b"policy_dir_hash";
/// The author of sets read from the policy directory.
pub const DIR_AUTHOR: &str = "policies-dir";

/// One stored policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Its number; versions count up from 1.
    pub number: u64,
    /// Content hash of its files.
    pub hash: String,
    /// When it was activated.
    pub created_ms: Millis,
    /// Who activated it.
    pub author: String,
    /// Why.
    pub comment: String,
    /// `dir`, `api` or `rollback`.
    pub source: String,
    /// The files.
    pub files: Sources,
}

/// A version as listed for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersionInfo {
    /// Its number.
    pub number: u64,
    /// Content hash.
    pub hash: String,
    /// RFC 3339 activation time.
    pub created: String,
    /// Who activated it.
    pub author: String,
    /// Why.
    pub comment: String,
    /// `dir`, `api` or `rollback`.
    pub source: String,
    /// Whether it is the active version.
    pub active: bool,
}

impl PolicyRecord {
    pub(super) fn info(&self, active: u64) -> PolicyVersionInfo {
        PolicyVersionInfo {
            number: self.number,
            hash: self.hash.clone(),
            created: rfc3339(self.created_ms),
            author: self.author.clone(),
            comment: self.comment.clone(),
            source: self.source.clone(),
            active: self.number == active,
        }
    }
}

fn decode_number(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

impl Vault {
    /// The stored record of version `number`.
    pub(super) fn policy_record(&self, number: u64) -> Result<Option<PolicyRecord>, VaultError> {
        match self.store.get(Cf::Policies, &number.to_be_bytes())? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| {
                VaultError::DataLoss(format!("policy version {number} is unreadable"))
            }),
        }
    }

    /// Every stored version, newest first.
    pub(super) fn policy_records(&self) -> Result<Vec<PolicyRecord>, VaultError> {
        self.store
            .scan_back(Cf::Policies, None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v)
                    .map_err(|_| VaultError::DataLoss("a policy version is unreadable".into()))
            })
            .collect()
    }

    fn next_policy_number(&self) -> Result<u64, VaultError> {
        Ok(match self.store.last(Cf::Policies)? {
            Some((key, _)) => decode_number(&key).unwrap_or(0) + 1,
            None => 1,
        })
    }

    /// Stores `set` (loaded from `files`) as a new version, with `event` in the same batch, and
    /// makes it active. Call under the writer lock.
    pub(super) fn activate(
        &self,
        mut set: Policies,
        files: Sources,
        author: &str,
        comment: &str,
        source: &str,
        mut event: AuditEvent,
    ) -> Result<PolicyRecord, VaultError> {
        let number = self.next_policy_number()?;
        let record = PolicyRecord {
            number,
            hash: set.hash().to_owned(),
            created_ms: self.clock.now_ms(),
            author: author.to_owned(),
            comment: comment.to_owned(),
            source: source.to_owned(),
            files,
        };
        let mut batch = Batch::new();
        let bytes = serde_json::to_vec(&record).map_err(|e| VaultError::Internal(e.to_string()))?;
        batch.put(Cf::Policies, number.to_be_bytes().to_vec(), bytes);
        batch.put(Cf::Meta, ACTIVE_KEY.to_vec(), number.to_be_bytes().to_vec());
        if source == "dir" {
            batch.put(
                Cf::Meta,
                DIR_HASH_KEY.to_vec(),
                record.hash.as_bytes().to_vec(),
            );
        }
        event.outcome = "ok".into();
        event.fields.push(crate::audit::FieldAudit {
            field: "policy_version".into(),
            outcome: number.to_string(),
            policy_ids: Vec::new(),
        });
        self.commit(batch, event)?;
        set.set_number(number);
        self.swap_policies(Arc::new(set));
        tracing::info!(
            policy_version = number,
            hash = record.hash,
            author,
            source,
            "policy set activated"
        );
        Ok(record)
    }

    fn swap_policies(&self, set: Arc<Policies>) {
        match self.policies.write() {
            Ok(mut active) => *active = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    fn system_event(&self, action: &str) -> AuditEvent {
        AuditEvent {
            principal: "privault".into(),
            action: action.into(),
            request_id: "startup".into(),
            policy_version: self.policies().version(),
            ..AuditEvent::default()
        }
    }

    /// At open: keep the stored active version unless the policy directory changed since it was
    /// last read, in which case the directory becomes a new version.
    pub(super) fn init_policy_versions(&self, dir_files: Sources) -> Result<(), OpenError> {
        let to_open = |e: VaultError| OpenError::DataDir {
            path: self.store.path().to_owned(),
            reason: format!("policy versions: {e}"),
        };
        let active = self
            .store
            .get(Cf::Meta, ACTIVE_KEY)?
            .and_then(|b| decode_number(&b));
        let seen = self.store.get(Cf::Meta, DIR_HASH_KEY)?;
        let dir_hash = self.policies().hash().to_owned();
        if let (Some(number), Some(seen)) = (active, seen)
            && seen == dir_hash.as_bytes()
        {
            let record = self
                .policy_record(number)
                .map_err(to_open)?
                .ok_or_else(|| {
                    to_open(VaultError::DataLoss(format!(
                        "active policy version {number} is missing"
                    )))
                })?;
            let mut set = Policies::from_sources(&record.files)?;
            set.set_number(number);
            self.swap_policies(Arc::new(set));
            return Ok(());
        }
        let set = Policies::from_sources(&dir_files)?;
        let _writer = self.lock_writer().map_err(to_open)?;
        self.activate(
            set,
            dir_files,
            DIR_AUTHOR,
            "read from the policy directory",
            "dir",
            self.system_event("policy_load"),
        )
        .map_err(to_open)?;
        Ok(())
    }

    /// Re-reads the policy directory (SIGHUP). An invalid directory is refused and the active set
    /// stays; an unchanged one changes nothing. Returns the new version number, if any.
    pub fn reload_policies(&self) -> Result<Option<u64>, ReloadError> {
        let files = load_sources(&self.policies_dir).map_err(ReloadError::Policy)?;
        let set = Policies::from_sources(&files).map_err(ReloadError::Policy)?;
        if set.hash() == self.policies().hash() {
            return Ok(None);
        }
        let _writer = self.lock_writer().map_err(ReloadError::Vault)?;
        let mut event = self.system_event("policy_reload");
        event.request_id = "sighup".into();
        let record = self
            .activate(
                set,
                files,
                DIR_AUTHOR,
                "reloaded from the policy directory",
                "dir",
                event,
            )
            .map_err(ReloadError::Vault)?;
        Ok(Some(record.number))
    }
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The directory is unreadable or invalid; the active set stays.
    #[error("policy directory refused, the active set stays:\n{0}")]
    Policy(PolicyError),
    /// The new version could not be stored.
    #[error("policy reload failed: {0}")]
    Vault(VaultError),
}
