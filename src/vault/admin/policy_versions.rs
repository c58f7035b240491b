//! The versioned policy store: every policy set the vault has activated is kept in the policies
//! column family with who, when and why; the active one is swapped atomically. The policy
//! directory is read at start and on SIGHUP; a set applied through the API stays active across
//! restarts until the directory itself changes. Every stored version and the active pointer carry
//! a tag made with a key from the keyring (the index key, under its own label), checked on every
//! read: a tampered `db/` or a restored backup cannot install a policy set.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::{Action, AuditEvent, Detail, Outcome};
use crate::clock::{Millis, rfc3339};
use crate::crypto::RecordKind;
use crate::policy::{Policies, PolicyError, Sources, load_sources};
use crate::store::{Batch, Cf};
use crate::vault::{OpenError, Vault, VaultError};

pub(in crate::vault) const ACTIVE_KEY: &[u8] = b"policy_active";
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
    pub(in crate::vault) fn info(&self, active: u64) -> PolicyVersionInfo {
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

/// First byte of an authenticated policy record: `2 ‖ tag ‖ JSON`. Data format 1 stored the bare
/// JSON, which the format upgrade tags once and nothing accepts afterwards.
const SEALED_RECORD: u8 = 2;

impl Vault {
    /// `record`'s stored bytes, tagged with a key from the keyring so that a tampered `db/` or a
    /// restored backup cannot install policies.
    fn seal_policy_record(&self, number: u64, json: &[u8]) -> Vec<u8> {
        let tag = self
            .keyring
            .index()
            .record_tag(RecordKind::PolicyVersion, number, json);
        let mut out = Vec::with_capacity(1 + tag.len() + json.len());
        out.push(SEALED_RECORD);
        out.extend_from_slice(&tag);
        out.extend_from_slice(json);
        out
    }

    /// The JSON of stored policy version `number`, once its tag checks.
    fn open_policy_record<'a>(&self, number: u64, bytes: &'a [u8]) -> Result<&'a [u8], VaultError> {
        let forged = || {
            VaultError::DataLoss(format!(
                "policy version {number} fails its authentication (tampered with, or written \
                 without this vault's keyring)"
            ))
        };
        let (&kind, rest) = bytes.split_first().ok_or_else(forged)?;
        let (tag, json) = rest.split_at_checked(32).ok_or_else(forged)?;
        if kind != SEALED_RECORD
            || !self
                .keyring
                .index()
                .check_record_tag(RecordKind::PolicyVersion, number, json, tag)
        {
            return Err(forged());
        }
        Ok(json)
    }

    fn decode_policy_record(&self, number: u64, bytes: &[u8]) -> Result<PolicyRecord, VaultError> {
        let record: PolicyRecord = serde_json::from_slice(self.open_policy_record(number, bytes)?)
            .map_err(|_| VaultError::DataLoss(format!("policy version {number} is unreadable")))?;
        if record.number != number {
            return Err(VaultError::DataLoss(format!(
                "policy version {number} names version {}",
                record.number
            )));
        }
        Ok(record)
    }

    /// The meta entry pointing at the active version: `number ‖ tag`.
    fn active_pointer(&self, number: u64) -> Vec<u8> {
        let tag = self
            .keyring
            .index()
            .record_tag(RecordKind::ActivePolicy, number, &[]);
        [number.to_be_bytes().as_slice(), &tag].concat()
    }

    /// The active version number, once its pointer's tag checks; `None` before the first one.
    fn active_number(&self) -> Result<Option<u64>, VaultError> {
        let Some(bytes) = self.store.get(Cf::Meta, ACTIVE_KEY)? else {
            return Ok(None);
        };
        let (number, tag) = bytes
            .split_at_checked(8)
            .and_then(|(n, t)| Some((decode_number(n)?, t)))
            .ok_or_else(|| VaultError::DataLoss("the active policy pointer is malformed".into()))?;
        if !self
            .keyring
            .index()
            .check_record_tag(RecordKind::ActivePolicy, number, &[], tag)
        {
            return Err(VaultError::DataLoss(
                "the active policy pointer fails its authentication".into(),
            ));
        }
        Ok(Some(number))
    }

    /// Data format 1 kept policy versions and the active pointer untagged: tags them, trusting
    /// them as format 1 did, once. Idempotent (a tagged record is left as it is).
    pub(in crate::vault) fn tag_format1_policy_records(&self) -> Result<(), VaultError> {
        let mut batch = Batch::new();
        for (key, value) in self.store.scan_prefix(Cf::Policies, &[])? {
            let Some(number) = decode_number(&key) else {
                return Err(VaultError::DataLoss(
                    "a policy version key is malformed".into(),
                ));
            };
            if value.first() == Some(&b'{') {
                batch.put(Cf::Policies, key, self.seal_policy_record(number, &value));
            }
        }
        if let Some(bytes) = self.store.get(Cf::Meta, ACTIVE_KEY)?
            && let Some(number) = decode_number(&bytes)
        {
            batch.put(Cf::Meta, ACTIVE_KEY.to_vec(), self.active_pointer(number));
        }
        self.store.write(&batch)?;
        Ok(())
    }

    /// The stored record of version `number`.
    pub(in crate::vault) fn policy_record(
        &self,
        number: u64,
    ) -> Result<Option<PolicyRecord>, VaultError> {
        match self.store.get(Cf::Policies, &number.to_be_bytes())? {
            None => Ok(None),
            Some(bytes) => self.decode_policy_record(number, &bytes).map(Some),
        }
    }

    /// Every stored version, newest first.
    pub(in crate::vault) fn policy_records(&self) -> Result<Vec<PolicyRecord>, VaultError> {
        self.store
            .scan_back(Cf::Policies, None, usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let number = decode_number(&k).ok_or_else(|| {
                    VaultError::DataLoss("a policy version key is malformed".into())
                })?;
                self.decode_policy_record(number, &v)
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
    pub(in crate::vault) fn activate(
        &self,
        mut set: Policies,
        files: Sources,
        author: &str,
        comment: &str,
        source: &str,
        mut event: AuditEvent,
    ) -> Result<PolicyRecord, VaultError> {
        self.check_key_classes_kept(&set)?;
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
        let json = serde_json::to_vec(&record).map_err(|e| VaultError::Internal(e.to_string()))?;
        batch.put(
            Cf::Policies,
            number.to_be_bytes().to_vec(),
            self.seal_policy_record(number, &json),
        );
        batch.put(Cf::Meta, ACTIVE_KEY.to_vec(), self.active_pointer(number));
        if source == "dir" {
            batch.put(
                Cf::Meta,
                DIR_HASH_KEY.to_vec(),
                record.hash.as_bytes().to_vec(),
            );
        }
        event.outcome = Outcome::Ok;
        event.detail = Some(Detail::PolicyVersion(number));
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

    /// Refuses a set whose catalog moves a field of the active one to another key class.
    fn check_key_classes_kept(&self, set: &Policies) -> Result<(), VaultError> {
        let Some(number) = self.active_number()? else {
            return Ok(());
        };
        let Some(active) = self.policy_record(number)? else {
            return Ok(());
        };
        let active =
            crate::catalog::Catalog::parse(crate::catalog::CATALOG_FILE, &active.files.catalog)
                .map_err(|_| {
                    VaultError::DataLoss(format!(
                        "the catalog of policy version {number} no longer parses"
                    ))
                })?;
        let changes = active.key_class_changes(set.catalog());
        if let Some((field, from, to)) = changes.first() {
            return Err(VaultError::FailedPrecondition(format!(
                "field `{field}` would move from key class `{from}` to `{to}`: its stored values \
                 would no longer open; declare a new field instead ({} field(s) change class)",
                changes.len()
            )));
        }
        Ok(())
    }

    fn swap_policies(&self, set: Arc<Policies>) {
        match self.policies.write() {
            Ok(mut active) => *active = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        // Cached subject attributes were derived by the old catalog's rules.
        self.consents.changed();
    }

    fn system_event(&self, action: Action) -> AuditEvent {
        AuditEvent {
            request_id: "startup".into(),
            policy_version: self.policies().version(),
            ..AuditEvent::new("privault", action)
        }
    }

    /// At open: keep the stored active version unless the policy directory changed since it was
    /// last read, in which case the directory becomes a new version.
    /// Takes up the active version as stored (another node applied or rolled back a set).
    pub(in crate::vault) fn load_active_policies(&self) -> Result<(), VaultError> {
        let Some(number) = self.active_number()? else {
            return Ok(());
        };
        if number == self.policies().number() {
            return Ok(());
        }
        let record = self.policy_record(number)?.ok_or_else(|| {
            VaultError::DataLoss(format!("active policy version {number} is missing"))
        })?;
        let mut set = Policies::from_sources(&record.files)
            .map_err(|e| VaultError::DataLoss(format!("active policy version {number}: {e}")))?;
        set.set_number(number);
        self.swap_policies(Arc::new(set));
        tracing::info!(
            policy_version = number,
            "took up the policy set another node activated"
        );
        Ok(())
    }

    pub(in crate::vault) fn init_policy_versions(
        &self,
        dir_files: Sources,
    ) -> Result<(), OpenError> {
        let to_open = |e: VaultError| OpenError::DataDir {
            path: self
                .store
                .path()
                .map(std::path::Path::to_owned)
                .unwrap_or_default(),
            reason: format!("policy versions: {e}"),
        };
        let active = self.active_number().map_err(to_open)?;
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
            self.system_event(Action::PolicyLoad),
        )
        .map_err(to_open)?;
        Ok(())
    }

    /// Re-reads the policy directory (SIGHUP). An invalid directory is refused and the active set
    /// stays; a directory unchanged since it was last read changes nothing, so a SIGHUP sent for
    /// another reason (a token revocation) never reverts a set applied through the API. Returns
    /// the new version number, if any.
    pub fn reload_policies(&self) -> Result<Option<u64>, ReloadError> {
        let files = load_sources(&self.policies_dir).map_err(ReloadError::Policy)?;
        let set = Policies::from_sources(&files).map_err(ReloadError::Policy)?;
        let seen = self
            .store
            .get(Cf::Meta, DIR_HASH_KEY)
            .map_err(|e| ReloadError::Vault(e.into()))?;
        if seen.as_deref() == Some(set.hash().as_bytes()) || set.hash() == self.policies().hash() {
            return Ok(None);
        }
        let _writer = self.lock_writer().map_err(ReloadError::Vault)?;
        let mut event = self.system_event(Action::PolicyReload);
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
