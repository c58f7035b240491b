//! Retention: the sweeper that deletes fields past the catalog's `retention`, a bounded slice at
//! a time so it never stalls the service. Reads already treat expired values as absent; the sweep
//! removes them from storage (rotating the DEK, so the expired ciphertexts keep no live key). Each
//! subject swept leaves one audit record, made by the system; a subject left with no field is
//! shredded when the catalog says `shred_when_empty`.

use std::collections::BTreeMap;

use crate::audit::{Action, AuditEvent, FieldOutcome};
use crate::domain::{FieldName, Sid};
use crate::store::keys::name_of;
use crate::store::records::FieldRecord;
use crate::store::{Batch, Cf};
use crate::vault::quarantine::Maintenance;
use crate::vault::write::Staged;
use crate::vault::{Vault, VaultError, field_audit};

/// The principal of the sweeper's records.
const SYSTEM: &str = "privault";

/// The shred reason when a subject's last field expired and the catalog says `shred_when_empty`.
const EMPTY_REASON: &str = "retention: no field left";

/// Where the next sweep continues: a key in the fields CF, or the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepCursor(Vec<u8>);

/// What one sweep step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Field entries examined.
    pub examined: usize,
    /// Expired fields deleted.
    pub deleted: usize,
    /// Subjects newly quarantined (their entries fail their integrity checks).
    pub quarantined: usize,
    /// Subjects skipped: quarantined before, or failing for a passing reason (retried next pass).
    pub skipped: usize,
    /// Where to continue; the start again once the end was reached.
    pub next: SweepCursor,
}

impl Vault {
    /// Examines up to `limit` field entries from `cursor` and deletes the expired ones, one atomic
    /// batch and audit record per subject.
    pub fn sweep_expired(
        &self,
        cursor: &SweepCursor,
        limit: usize,
    ) -> Result<SweepReport, VaultError> {
        let entries = self.store.scan_from(Cf::Fields, &cursor.0, limit.max(1))?;
        let now = self.clock.now_ms();
        let next = match entries.last() {
            Some((key, _)) if entries.len() == limit.max(1) => {
                let mut after = key.clone();
                after.push(0);
                SweepCursor(after)
            }
            _ => SweepCursor::default(),
        };
        let mut expired: BTreeMap<[u8; 32], Vec<Vec<u8>>> = BTreeMap::new();
        let mut malformed = std::collections::BTreeSet::new();
        for (key, value) in &entries {
            let sid: Option<[u8; 32]> = key.get(..32).and_then(|s| s.try_into().ok());
            let Some(sid) = sid else { continue };
            match FieldRecord::decode(value) {
                Ok(record) if record.is_expired(now) => {
                    expired.entry(sid).or_default().push(key.clone());
                }
                Ok(_) => {}
                Err(_) => {
                    malformed.insert(sid);
                }
            }
        }
        let mut report = SweepReport {
            examined: entries.len(),
            deleted: 0,
            quarantined: 0,
            skipped: 0,
            next,
        };
        for sid in malformed {
            let sid = Sid(sid);
            if !self.is_quarantined(&sid)? {
                let err = VaultError::DataLoss("a stored field record is malformed".into());
                self.quarantine(&sid, Maintenance::RetentionSweep, &err)?;
                report.quarantined += 1;
            }
            expired.remove(&sid.0);
        }
        // One subject's failure never stops the sweep: an integrity failure quarantines it, any
        // other failure leaves it for the next pass.
        for (sid, keys) in expired {
            let sid = Sid(sid);
            if self.is_quarantined(&sid)? {
                report.skipped += 1;
                continue;
            }
            match self.delete_expired(sid, keys) {
                Ok(n) => report.deleted += n,
                Err(err @ VaultError::DataLoss(_)) => {
                    self.quarantine(&sid, Maintenance::RetentionSweep, &err)?;
                    report.quarantined += 1;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "retention: a subject could not be swept now; retried on the next pass");
                    report.skipped += 1;
                }
            }
        }
        Ok(report)
    }

    fn delete_expired(&self, sid: Sid, keys: Vec<Vec<u8>>) -> Result<usize, VaultError> {
        let _writer = self.lock_subject(&sid)?;
        let policies = self.policies();
        let now = self.clock.now_ms();
        let mut batch = Batch::new();
        let mut fields = Vec::new();
        let mut removed = Vec::new();
        // Re-read under the lock: a write since the scan may have renewed the value.
        for key in keys {
            let still_expired = self
                .store
                .get(Cf::Fields, &key)?
                .and_then(|v| FieldRecord::decode(&v).ok())
                .is_some_and(|r| r.is_expired(now));
            let Some(field) = name_of(&key).and_then(|n| FieldName::new(n).ok()) else {
                continue;
            };
            // A legal hold outranks retention: the field stays until the hold ends.
            if still_expired && !self.is_held(&sid, &policies, &field) {
                fields.push(field_audit(
                    &field,
                    FieldOutcome::Expired,
                    &Default::default(),
                ));
                self.stage_unindex(&sid, &field, &mut batch)?;
                batch.delete(Cf::Fields, key);
                removed.push(field);
            }
        }
        if removed.is_empty() {
            return Ok(0);
        }
        let mut event = AuditEvent {
            subject: self.subject_keys(&sid)?.map(|k| k.pseudonym),
            fields,
            request_id: "sweeper".into(),
            policy_version: policies.version(),
            ..AuditEvent::new(SYSTEM, Action::RetentionDelete)
        };
        let count = removed.len();
        let remaining = self.store.scan_prefix(Cf::Fields, &sid.0)?.len();
        if remaining == count && policies.catalog().shred_when_empty() {
            // Nothing of the subject is left: the catalog asks for the whole subject to go.
            let mut batch = Batch::new();
            self.stage_erase(&sid, SYSTEM, EMPTY_REASON, "", &mut batch)?;
            event.action = Action::RetentionShred;
            self.commit(batch, event)?;
            self.forget_subject(&sid);
            self.finish_purge(&sid);
            return Ok(count);
        }
        let keys = self.rotate_away(&sid, &removed, &policies, &mut batch)?;
        self.finish_staged(
            event,
            Ok(Staged {
                batch,
                value: (),
                keys,
            }),
        )?;
        self.attributes_changed(&policies, &removed);
        Ok(count)
    }
}
