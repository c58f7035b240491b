//! The domain: put, get, delete and shred, each decided by policy and audited. Orchestrates
//! catalog, policy, crypto, store and audit; knows nothing of gRPC.

mod admin;
mod error;
mod lifecycle;
mod ops;
mod subjects;

// Each part keeps its old path (`crate::vault::keys`...), so a helper is found by its name.
use admin::{audit_admin, backup, epoch, policy_admin, policy_versions};
pub use lifecycle::offline;
use lifecycle::open;
use ops::{consent, export, extract, hold, read, receipt, retention, shred, write};
use subjects::{consent_cache, keys, pseudonym, quarantine, read_budget, wraps};

use std::sync::{Arc, Mutex, RwLock};

pub use audit_admin::{HeadMismatch, SignedHead, check_signed_head};
pub use backup::{STAGING_PREFIX, StagedBackup};
pub use consent::{ConsentState, SignalState};
pub use epoch::{ROLL_SLICE, RollProgress};
pub use error::{OpenError, VaultError};
pub use export::{AccessEvent, ExportedField, SubjectExport};
pub use extract::{
    ExtractCall, ExtractMembership, ExtractPage, ExtractRow, ExtractSubjects, MAX_EXTRACT_SUBJECTS,
    Revocation, RevocationReason,
};
pub use hold::{HoldInfo, HoldReleased};
pub use open::{StoreConfig, VaultConfig};
pub use policy_admin::{DecisionChange, DryRun, Validation};
pub use policy_versions::{DIR_AUTHOR, PolicyRecord, PolicyVersionInfo, ReloadError};
pub use quarantine::{Maintenance, Quarantined};
pub use read::{FieldRead, MAX_BATCH_SUBJECTS, Queued, ReadOutcome};
pub use retention::{SweepCursor, SweepReport};
pub use shred::ShredOutcome;

use crate::audit::{Action, AuditEvent, AuditLog, FieldAudit, FieldOutcome, Outcome};
use crate::catalog::{FieldSpec, Resolved};
use crate::clock::Clock;
use crate::domain::{FieldName, Principal, Purpose, Sid};
use crate::keyring::Keyring;
use crate::policy::{Policies, PolicyIds};
use crate::store::{Batch, Store};

/// How many locks changes to subjects are spread over: enough that 32 concurrent writers to
/// different subjects rarely queue behind each other's WAL sync (with 64, about 12 of 32 did).
const SUBJECT_STRIPES: usize = 1024;

/// Held while one subject changes: its stripe, and the writer lock shared.
struct SubjectLock<'a> {
    _stripe: std::sync::MutexGuard<'a, ()>,
    _shared: std::sync::RwLockReadGuard<'a, ()>,
}

/// Bounds on what one call may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fields in one call.
    pub max_fields_per_call: usize,
    /// Bytes in one value.
    pub max_value_bytes: usize,
    /// Bytes in a shred reason.
    pub max_reason_bytes: usize,
    /// Subjects whose unwrapped keys (and granted purposes) stay cached.
    pub key_cache_subjects: usize,
    /// Bytes of RocksDB's block cache, shared by every column family.
    pub block_cache_bytes: usize,
    /// Bytes in a subject id (at most the domain's hard limit of 256).
    pub max_subject_id_bytes: usize,
    /// Bytes in a purpose name (at most the domain's hard limit of 64).
    pub max_purpose_bytes: usize,
    /// Bytes of values one call may return (all fields of all subjects of a batch together).
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_fields_per_call: 64,
            max_value_bytes: 64 * 1024,
            max_reason_bytes: 256,
            key_cache_subjects: 10_000,
            block_cache_bytes: crate::store::DEFAULT_BLOCK_CACHE_BYTES,
            max_subject_id_bytes: crate::domain::MAX_SUBJECT_ID_BYTES,
            max_purpose_bytes: crate::domain::MAX_NAME_BYTES,
            max_response_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Who calls and under which request id; made by the api layer after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// The authenticated caller.
    pub principal: Principal,
    /// The id given back to the caller and written to the audit record.
    pub request_id: String,
    /// The caller's network address, when known.
    pub peer: Option<String>,
}

/// The vault: one per data directory.
pub struct Vault {
    store: Arc<Store>,
    ledger: crate::ledger::Ledger,
    // The legal holds placed and not released, as the ledger lists them; changed under the
    // subject's writer lock after the ledger line is synced.
    holds: RwLock<crate::hold::HoldBook>,
    keyring: Keyring,
    policies: RwLock<Arc<Policies>>,
    audit: AuditLog,
    keys: keys::KeyCache,
    wraps: wraps::WrapCounter,
    consents: consent_cache::ConsentCache,
    budgets: read_budget::ReadBudgets,
    clock: Arc<dyn Clock>,
    // Changes to one subject (key creation, writes, deletes, consent, shreds, expiry) hold the
    // subject's stripe and `writer` shared, so two calls never create two DEKs for one subject while
    // changes to different subjects proceed side by side and share WAL syncs (audit group commit).
    // Changes that span subjects (epoch roll slices, policy activation) hold `writer` exclusively.
    writer: RwLock<()>,
    stripes: Box<[Mutex<()>]>,
    limits: Limits,
    policies_dir: std::path::PathBuf,
    audit_retention: crate::audit::LogRetention,
    /// The oldest segment past the log's retention bound that is not archived, if any.
    audit_blocked: tokio::sync::watch::Sender<Option<u64>>,
    /// The last entry of the change log (PostgreSQL) this node has applied to its caches.
    changes_seen: Mutex<u64>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("store", &self.store)
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// The active policy set (a cheap clone of an `Arc`; a call keeps the set it started with).
    pub fn policies(&self) -> Arc<Policies> {
        match self.policies.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The limits this vault enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a read can be served from memory alone (RocksDB), or always needs a round trip.
    pub fn reads_in_memory(&self) -> bool {
        self.store.reads_in_memory()
    }

    /// RocksDB's gauges, for the metrics endpoint (none on PostgreSQL).
    pub fn store_stats(&self) -> Option<crate::store::StoreStats> {
        self.store.stats()
    }

    /// The store, for offline tools and tests.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn event(
        &self,
        ctx: &CallContext,
        action: Action,
        purpose: Option<&Purpose>,
        policies: &Policies,
    ) -> AuditEvent {
        AuditEvent {
            purpose: purpose.map(ToString::to_string),
            request_id: ctx.request_id.clone(),
            policy_version: policies.version(),
            peer: ctx.peer.clone(),
            ..AuditEvent::new(ctx.principal.to_string(), action)
        }
    }

    /// Excludes every other change, for changes that span subjects.
    fn lock_writer(&self) -> Result<std::sync::RwLockWriteGuard<'_, ()>, VaultError> {
        self.writer
            .write()
            .map_err(|_| VaultError::Internal("writer poisoned".into()))
    }

    /// Serializes changes to `sid` (and to the other subjects of its stripe), alongside changes to
    /// other subjects.
    fn lock_subject(&self, sid: &Sid) -> Result<SubjectLock<'_>, VaultError> {
        let shared = self
            .writer
            .read()
            .map_err(|_| VaultError::Internal("writer poisoned".into()))?;
        let index = usize::from(u16::from_be_bytes([sid.0[0], sid.0[1]]));
        let stripe = &self.stripes[index % self.stripes.len()];
        let stripe = stripe
            .lock()
            .map_err(|_| VaultError::Internal("writer poisoned".into()))?;
        Ok(SubjectLock {
            _stripe: stripe,
            _shared: shared,
        })
    }

    /// Writes `batch` with the record of `event` durably; a failed audit write fails the call.
    fn commit(&self, batch: Batch, event: AuditEvent) -> Result<u64, VaultError> {
        self.audit
            .commit(batch, event, self.clock.now_ms())
            .map_err(|e| {
                tracing::error!(error = %e, "audit commit failed; failing closed");
                VaultError::Unavailable("the audit log cannot be written".into())
            })
    }

    /// Commits a successful call with its record, or records a failed one; returns the value and
    /// the audit seq. For a failed call the original error is what the caller sees.
    fn finish<T>(
        &self,
        mut event: AuditEvent,
        result: Result<(Batch, T), VaultError>,
    ) -> Result<(T, u64), VaultError> {
        match result {
            Ok((batch, value)) => {
                // A canary read keeps its alarm.
                if event.outcome != Outcome::Canary {
                    event.outcome = Outcome::Ok;
                }
                let seq = self.commit(batch, event)?;
                Ok((value, seq))
            }
            Err(err) => self.fail(event, err),
        }
    }

    /// Records a failed call and returns its error: the caller sees the original error even if
    /// the record cannot be written.
    fn fail<T>(&self, mut event: AuditEvent, err: VaultError) -> Result<T, VaultError> {
        event.outcome = err.audit_outcome();
        if let Err(audit_err) = self.commit(Batch::new(), event) {
            tracing::error!(error = %audit_err, "could not audit a failed call");
        }
        Err(err)
    }

    /// Records a call refused before it had a principal (no or invalid credentials).
    pub fn record_unauthenticated(
        &self,
        action: Action,
        peer: Option<String>,
        request_id: &str,
    ) -> Result<u64, VaultError> {
        let event = AuditEvent {
            outcome: Outcome::Unauthenticated,
            request_id: request_id.to_owned(),
            policy_version: self.policies().version(),
            peer,
            ..AuditEvent::new("unauthenticated", action)
        };
        self.commit(Batch::new(), event)
    }

    /// Records a call refused at the edge before it reached the vault (a malformed request).
    pub fn record_refused(&self, ctx: &CallContext, action: Action) -> Result<u64, VaultError> {
        let mut event = self.event(ctx, action, None, &self.policies());
        event.outcome = Outcome::InvalidArgument;
        self.commit(Batch::new(), event)
    }

    /// Checks the purpose and the stored fields a write, delete or lookup names against the
    /// catalog and the limits: a view is derived on read, never stored.
    fn check_stored_call<'a>(
        &self,
        policies: &'a Policies,
        purpose: &Purpose,
        fields: &[&FieldName],
    ) -> Result<Vec<&'a FieldSpec>, VaultError> {
        let resolved = self.check_call(policies, purpose, fields)?;
        if let Some((name, r)) = fields.iter().zip(&resolved).find(|(_, r)| r.view.is_some()) {
            return Err(VaultError::InvalidArgument(format!(
                "`{name}` is a view of `{}`: views are derived on read and cannot be written, \
                 deleted or looked up",
                r.field
            )));
        }
        Ok(resolved.into_iter().map(|r| r.spec).collect())
    }

    /// Checks the purpose and field (or view) names of a call against the catalog and the limits.
    fn check_call<'a>(
        &self,
        policies: &'a Policies,
        purpose: &Purpose,
        fields: &[&FieldName],
    ) -> Result<Vec<Resolved<'a>>, VaultError> {
        let catalog = policies.catalog();
        if purpose.as_str().len() > self.limits.max_purpose_bytes {
            return Err(VaultError::InvalidArgument(format!(
                "purpose is longer than {} bytes",
                self.limits.max_purpose_bytes
            )));
        }
        if !catalog.has_purpose(purpose) {
            return Err(VaultError::InvalidArgument(format!(
                "unknown purpose `{purpose}`: not declared in the catalog"
            )));
        }
        if fields.is_empty() {
            return Err(VaultError::InvalidArgument("no fields given".into()));
        }
        if fields.len() > self.limits.max_fields_per_call {
            return Err(VaultError::InvalidArgument(format!(
                "too many fields: at most {} per call",
                self.limits.max_fields_per_call
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(fields.len());
        if let Some(twice) = fields.iter().find(|f| !seen.insert(**f)) {
            return Err(VaultError::InvalidArgument(format!(
                "field `{twice}` is named more than once"
            )));
        }
        fields
            .iter()
            .map(|f| {
                catalog.resolve(f).ok_or_else(|| match f.as_view() {
                    Some((field, view)) => VaultError::InvalidArgument(format!(
                        "unknown view `{view}` of field `{field}`: not declared in the catalog"
                    )),
                    None => VaultError::InvalidArgument(format!(
                        "unknown field `{f}`: not declared in the catalog"
                    )),
                })
            })
            .collect()
    }
}

/// Turns a subject- or admin-level decision into the call's permission: a deny is
/// PERMISSION_DENIED naming `action` and the deciding policies.
fn require(decision: crate::policy::Decision, action: &'static str) -> Result<(), VaultError> {
    if decision.allowed {
        Ok(())
    } else {
        Err(VaultError::PermissionDenied {
            action,
            denied: vec![(String::new(), decision.policy_ids.to_vec())],
        })
    }
}

fn field_audit(field: &FieldName, outcome: FieldOutcome, policy_ids: &PolicyIds) -> FieldAudit {
    FieldAudit {
        field: field.to_string(),
        outcome,
        policy_ids: Arc::clone(policy_ids),
    }
}
