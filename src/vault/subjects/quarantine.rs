//! Quarantine: a subject whose stored entries fail their integrity checks is set aside by the
//! background maintenance (retention sweep, epoch roll), so that one bad record never stops it for
//! everyone else. The mark is kept in the meta column family under the sid (a keyed hash, like
//! every other key), audited (action `quarantine`, the operation in its fields) and logged; calls
//! on the subject still fail with DATA_LOSS as before. A shred erases the subject and its mark;
//! docs/operations.md says what an operator does with one.

use serde::{Deserialize, Serialize};

use crate::audit::{Action, AuditEvent, Detail};
use crate::clock::{Millis, rfc3339};
use crate::domain::Sid;
use crate::store::keys::pseudonym_key;
use crate::store::{Batch, Cf};
use crate::vault::{Vault, VaultError};

const PREFIX: &[u8] = b"quarantine/";

/// Which maintenance found the subject unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Maintenance {
    /// The retention sweeper.
    RetentionSweep,
    /// The KEK epoch roll.
    EpochRoll,
}

impl Maintenance {
    /// The action the task's own records carry.
    fn task(self) -> Action {
        match self {
            Self::RetentionSweep => Action::RetentionDelete,
            Self::EpochRoll => Action::KeyRollEpoch,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::RetentionSweep => "retention_sweep",
            Self::EpochRoll => "epoch_roll",
        }
    }
}

/// One quarantined subject, as listed for operators (no identifier: the pseudonym, if its entry
/// can still be read, joins it to the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The subject's audit pseudonym, when it can be read.
    pub pseudonym: Option<String>,
    /// When it was quarantined (RFC 3339).
    pub since: String,
    /// What found it.
    pub found_by: Maintenance,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mark {
    since_ms: Millis,
    found_by: Maintenance,
}

fn mark_key(sid: &Sid) -> Vec<u8> {
    [PREFIX, &sid.0].concat()
}

impl Vault {
    /// Whether `sid` is quarantined.
    pub(in crate::vault) fn is_quarantined(&self, sid: &Sid) -> Result<bool, VaultError> {
        Ok(self.store.get(Cf::Meta, &mark_key(sid))?.is_some())
    }

    /// Sets `sid` aside after `found_by` met `error` (an integrity failure) on it: marked, audited
    /// and logged once; maintenance skips it from now on.
    pub(in crate::vault) fn quarantine(
        &self,
        sid: &Sid,
        found_by: Maintenance,
        error: &VaultError,
    ) -> Result<(), VaultError> {
        if self.is_quarantined(sid)? {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mark = serde_json::to_vec(&Mark {
            since_ms: now,
            found_by,
        })
        .map_err(|e| VaultError::Internal(e.to_string()))?;
        let mut batch = Batch::new();
        batch.put(Cf::Meta, mark_key(sid), mark);
        let event = AuditEvent {
            subject: self.readable_pseudonym(sid),
            outcome: error.audit_outcome(),
            request_id: found_by.name().into(),
            policy_version: self.policies().version(),
            detail: Some(Detail::FoundBy(found_by.task())),
            ..AuditEvent::new("privault", Action::Quarantine)
        };
        self.commit(batch, event)?;
        tracing::error!(
            found_by = found_by.name(),
            error = %error,
            "a subject's stored entries fail their integrity checks: quarantined, maintenance goes \
             on without it (docs/operations.md: quarantined subjects)"
        );
        Ok(())
    }

    /// Stages the removal of `sid`'s mark, with its erasure.
    pub(in crate::vault) fn stage_release(&self, sid: &Sid, batch: &mut Batch) {
        batch.delete(Cf::Meta, mark_key(sid));
    }

    /// The subject's pseudonym if its entry still opens, for naming it in the audit log.
    pub(in crate::vault) fn readable_pseudonym(
        &self,
        sid: &Sid,
    ) -> Option<crate::domain::Pseudonym> {
        let bytes = self.store.get(Cf::Keys, &pseudonym_key(sid)).ok()??;
        self.open_pseudonym(sid, &bytes).ok()
    }

    /// Every quarantined subject.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, VaultError> {
        let mut out = Vec::new();
        for (key, value) in self.store.scan_prefix(Cf::Meta, PREFIX)? {
            let mark: Mark = serde_json::from_slice(&value)
                .map_err(|_| VaultError::DataLoss("a quarantine mark is malformed".into()))?;
            let pseudonym = key
                .get(PREFIX.len()..)
                .and_then(|s| <[u8; 32]>::try_from(s).ok())
                .and_then(|s| self.readable_pseudonym(&Sid(s)))
                .map(|p| p.to_string());
            out.push(Quarantined {
                pseudonym,
                since: rfc3339(mark.since_ms),
                found_by: mark.found_by,
            });
        }
        Ok(out)
    }
}
