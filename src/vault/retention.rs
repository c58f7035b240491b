//! Retention: the sweeper that deletes fields past the catalog's `retention`, a bounded slice at
//! a time so it never stalls the service. Reads already treat expired values as absent; the sweep
//! removes them from storage. Each subject swept leaves one audit record, made by the system.

use std::collections::BTreeMap;

use super::{Vault, VaultError};
use crate::audit::{AuditEvent, FieldAudit};
use crate::store::keys::name_of;
use crate::store::records::FieldRecord;
use crate::store::{Batch, Cf};

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
        for (key, value) in &entries {
            let Ok(record) = FieldRecord::decode(value) else {
                continue;
            };
            let sid: Option<[u8; 32]> = key.get(..32).and_then(|s| s.try_into().ok());
            if let (Some(sid), true) = (sid, record.expires_ms.is_some_and(|e| e <= now)) {
                expired.entry(sid).or_default().push(key.clone());
            }
        }
        let mut deleted = 0;
        for (sid, keys) in expired {
            deleted += self.delete_expired(crate::domain::Sid(sid), keys)?;
        }
        Ok(SweepReport {
            examined: entries.len(),
            deleted,
            next,
        })
    }

    fn delete_expired(
        &self,
        sid: crate::domain::Sid,
        keys: Vec<Vec<u8>>,
    ) -> Result<usize, VaultError> {
        let _writer = self
            .writer
            .lock()
            .map_err(|_| VaultError::Internal("writer poisoned".into()))?;
        let now = self.clock.now_ms();
        let mut batch = Batch::new();
        let mut fields = Vec::new();
        // Re-read under the lock: a write since the scan may have renewed the value.
        for key in keys {
            let still_expired = self
                .store
                .get(Cf::Fields, &key)?
                .and_then(|v| FieldRecord::decode(&v).ok())
                .is_some_and(|r| r.expires_ms.is_some_and(|e| e <= now));
            if still_expired {
                fields.push(FieldAudit {
                    field: name_of(&key).unwrap_or_default().to_owned(),
                    outcome: "expired".into(),
                    policy_ids: Vec::new(),
                });
                batch.delete(Cf::Fields, key);
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let event = AuditEvent {
            principal: "privault".into(),
            action: "retention_delete".into(),
            subject: self.subject_keys(&sid)?.map(|k| k.pseudonym.to_string()),
            fields,
            outcome: "ok".into(),
            request_id: "sweeper".into(),
            policy_version: self.policies().version(),
            ..AuditEvent::default()
        };
        let count = event.fields.len();
        self.commit(batch, event)?;
        Ok(count)
    }
}
