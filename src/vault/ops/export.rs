//! Data-subject access and portability (GDPR Art. 15, 20): every stored field decrypted, the
//! consents, and the subject's access history from the audit log, authorized by Cedar
//! (`Action::"export"`) and audited before anything leaves.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::audit::{Action, AuditFilter, MAX_PAGE, Outcome, query};
use crate::clock::rfc3339;
use crate::domain::{FieldName, Sid};
use crate::store::keys::name_of;
use crate::store::{Batch, Cf};
use crate::vault::consent::ConsentState;
use crate::vault::keys::{StaleKeys, SubjectKeys, decode_field};
use crate::vault::{CallContext, Vault, VaultError, require};

/// Most access-history entries one export carries.
const MAX_HISTORY: usize = 100_000;

/// One stored field, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedField {
    /// The field.
    pub field: FieldName,
    /// Its value.
    pub value: Zeroizing<String>,
    /// When it was last written.
    pub written: String,
    /// When it expires, if the catalog bounds it.
    pub expires: Option<String>,
    /// Its derived views (`birth_date.age_band`) as of the export, for the views the catalog
    /// declares and the value has.
    pub views: Vec<(FieldName, String)>,
}

/// One entry of the subject's access history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEvent {
    /// The audit seq.
    pub seq: u64,
    /// When.
    pub time: String,
    /// Who.
    pub principal: String,
    /// What.
    pub action: Action,
    /// For what purpose.
    pub purpose: Option<String>,
    /// `field:outcome` per field.
    pub fields: Vec<String>,
    /// The call's outcome.
    pub outcome: Outcome,
}

/// Everything stored about one subject.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubjectExport {
    /// Every stored, unexpired field.
    pub fields: Vec<ExportedField>,
    /// Every recorded consent.
    pub consents: Vec<ConsentState>,
    /// Every opt-out signal sent.
    pub signals: Vec<crate::vault::SignalState>,
    /// The legal holds in force on the subject.
    pub holds: Vec<crate::vault::HoldInfo>,
    /// The subject was erased and what is exported is what legal holds keep.
    pub erased: bool,
    /// The training-set extracts the subject has a row in.
    pub extracts: Vec<crate::vault::ExtractMembership>,
    /// Every audited call about the subject, oldest first.
    pub history: Vec<AccessEvent>,
    /// When the export was made.
    pub exported_at: String,
    /// Where the history continues when it was cut to fit the response budget.
    pub history_next_seq: Option<u64>,
}

impl Vault {
    /// Exports everything stored about `subject`.
    pub fn export(
        &self,
        ctx: &CallContext,
        subject: &crate::domain::SubjectId,
    ) -> Result<SubjectExport, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::Export, None, &policies);
        let result = (|| {
            let (sid, keys) = self.locate(subject, &mut event)?;
            require(policies.decide_export(&ctx.principal), "export")?;
            let mut export = SubjectExport {
                exported_at: rfc3339(self.clock.now_ms()),
                ..SubjectExport::default()
            };
            if let Some(keys) = keys {
                export.fields = self.decrypt_all(&sid, Arc::clone(&keys), &policies)?;
                let limit = self.limits.max_response_bytes;
                let values: usize = export.fields.iter().map(|f| f.value.len()).sum();
                if values > limit {
                    return Err(VaultError::ResponseTooLarge { limit });
                }
                let entries = self.consent_entries(&sid)?;
                export.consents = entries.consents;
                export.signals = entries.signals;
                export.holds = self.holds_of(&sid);
                export.erased = keys.erased;
                export.extracts = self.extracts_of(&sid)?;
                let (history, next) = self.history_of(keys.pseudonym, limit - values)?;
                export.history = history;
                export.history_next_seq = next;
            }
            Ok((Batch::new(), export))
        })();
        self.finish(event, result).map(|(e, _)| e)
    }

    fn decrypt_all(
        &self,
        sid: &Sid,
        keys: Arc<SubjectKeys>,
        policies: &crate::policy::Policies,
    ) -> Result<Vec<ExportedField>, VaultError> {
        let now = self.clock.now_ms();
        self.with_current_keys(sid, Some(keys), |keys| {
            let Some(keys) = keys else {
                return Ok(Ok(Vec::new()));
            };
            let mut out = Vec::new();
            for (key, bytes) in self.store.scan_prefix(Cf::Fields, &sid.0)? {
                let field = name_of(&key)
                    .and_then(|n| FieldName::new(n).ok())
                    .ok_or_else(|| VaultError::DataLoss("malformed field entry".into()))?;
                let class = policies.catalog().key_class_of(&field);
                let record = decode_field(&bytes)?;
                if record.is_expired(now) {
                    continue;
                }
                let Some(value) = keys.open_record(sid, &field, &class, &record)? else {
                    return Ok(Err(StaleKeys));
                };
                let today = crate::catalog::utc_date(now);
                let views = policies
                    .catalog()
                    .field(&field)
                    .map(|spec| {
                        spec.views
                            .iter()
                            .filter_map(|(view, derivation)| {
                                let name = FieldName::new(format!("{field}.{view}")).ok()?;
                                Some((name, derivation.derive(&value, today)?))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(ExportedField {
                    field,
                    value,
                    written: rfc3339(record.written_ms),
                    expires: record.expires_ms.map(rfc3339),
                    views,
                });
            }
            Ok(Ok(out))
        })
    }

    /// The subject's history, oldest first, up to about `budget` bytes; with the seq where the rest
    /// starts when it did not fit.
    fn history_of(
        &self,
        pseudonym: crate::domain::Pseudonym,
        budget: usize,
    ) -> Result<(Vec<AccessEvent>, Option<u64>), VaultError> {
        let mut filter = AuditFilter {
            subject: Some(pseudonym),
            limit: MAX_PAGE,
            ..AuditFilter::default()
        };
        let mut history = Vec::new();
        let mut used = 0usize;
        loop {
            let (records, next) = query(self.audit.log(), self.audit.dictionaries(), &filter)
                .map_err(|e| VaultError::DataLoss(e.to_string()))?;
            for r in records {
                let e = r.event;
                // About what the event costs on the wire: its strings and a little framing.
                let size = 56
                    + e.principal.len()
                    + e.action.name().len()
                    + e.outcome.name().len()
                    + e.purpose.as_ref().map_or(0, String::len)
                    + e.fields
                        .iter()
                        .map(|f| f.field.len() + f.outcome.name().len() + 3)
                        .sum::<usize>();
                if used + size > budget || history.len() >= MAX_HISTORY {
                    return Ok((history, Some(r.seq)));
                }
                used += size;
                history.push(AccessEvent {
                    seq: r.seq,
                    time: rfc3339(r.time_ms),
                    principal: e.principal,
                    action: e.action,
                    purpose: e.purpose,
                    fields: e
                        .fields
                        .iter()
                        .map(|f| format!("{}:{}", f.field, f.outcome))
                        .collect(),
                    outcome: e.outcome,
                });
            }
            match next {
                Some(n) => filter.from_seq = n,
                None => return Ok((history, None)),
            }
        }
    }
}
