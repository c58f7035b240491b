//! Training-set extraction: `Vault/Extract` reads fields or views of many subjects for one purpose
//! the catalog marks `extract`, each subject decided by Cedar and audited like any read, a bounded
//! page per call (resumable by cursor), ending with a manifest of the rows' keys signed with the
//! audit key. A row key is a pseudonym scoped to the extract; the vault keeps which subject each
//! stands for, so `Vault/ExtractRevocations` can tell which rows must be forgotten: the subject was
//! shredded, withdrew consent to the purpose, or sent an opt-out signal covering it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::{Action, CommitTicket};
use crate::clock::{Millis, parse_rfc3339, rfc3339};
use crate::domain::{FieldName, Purpose, Sid, SubjectId};
use crate::manifest::{ManifestBody, SignedManifest};
use crate::policy::AdminAction;
use crate::store::keys::is_pseudonym_key;
use crate::store::records::ShredReceipt;
use crate::store::{Batch, Cf};
use crate::vault::read::{Asked, FieldRead, Queued, ReadBudget, ReadOutcome};
use crate::vault::receipt::{new_receipt_id, parse_id};
use crate::vault::{CallContext, Vault, VaultError};

/// Most subjects one `Extract` call reads.
pub const MAX_EXTRACT_SUBJECTS: usize = 1000;

/// Most rows `ExtractRevocations` examines for one extract.
const MAX_EXTRACT_ROWS: usize = 1_000_000;

const RECORD_PREFIX: &[u8] = b"extract/";
const ROW_PREFIX: &[u8] = b"extract-row/";
// `extract-subject/<sid hex>/<extract id>`: the extracts a subject is in, for its export.
const SUBJECT_PREFIX: &[u8] = b"extract-subject/";

/// What the vault keeps of an extract: who made it, for what, and how many calls it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtractRecord {
    principal: String,
    purpose: String,
    fields: Vec<String>,
    created_ms: Millis,
    parts: u64,
}

fn record_key(extract_id: &str) -> Vec<u8> {
    [RECORD_PREFIX, extract_id.as_bytes()].concat()
}

fn row_prefix(extract_id: &str) -> Vec<u8> {
    [ROW_PREFIX, extract_id.as_bytes(), b"/"].concat()
}

fn subject_prefix(sid: &Sid) -> Vec<u8> {
    [SUBJECT_PREFIX, hex::encode(sid.0).as_bytes(), b"/"].concat()
}

/// An extract a subject is in, as its export shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractMembership {
    /// The extract.
    pub extract_id: String,
    /// Who made it.
    pub principal: String,
    /// For what.
    pub purpose: String,
    /// When it began.
    pub created_ms: Millis,
}

/// Which subjects an extract call reads.
#[derive(Debug, Clone)]
pub enum ExtractSubjects {
    /// These subjects (at most [`MAX_EXTRACT_SUBJECTS`], none twice).
    Listed(Vec<SubjectId>),
    /// Every stored subject in the vault's order, from after `cursor` (the start when `None`).
    /// Canary subjects are passed over: they are decoys, never rows.
    Every {
        /// Where the previous call stopped.
        cursor: Option<String>,
    },
}

/// One `Extract` call.
#[derive(Debug, Clone)]
pub struct ExtractCall {
    /// The extract to continue; a new one when `None`.
    pub extract_id: Option<String>,
    /// The purpose every subject is read for.
    pub purpose: Purpose,
    /// The fields and views to read.
    pub fields: Vec<FieldName>,
    /// Which subjects.
    pub subjects: ExtractSubjects,
    /// Most subjects to read in this call (at most [`MAX_EXTRACT_SUBJECTS`]; 0 is that).
    pub limit: usize,
}

/// One row: a subject of whom at least one field or view was returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractRow {
    /// The row's extract-scoped pseudonym (32 hex digits).
    pub row_key: String,
    /// Each field's outcome, in request order.
    pub fields: Vec<FieldRead>,
}

/// What one call returns.
#[derive(Debug, Clone)]
pub struct ExtractPage {
    /// The extract.
    pub extract_id: String,
    /// The rows, in the order read.
    pub rows: Vec<ExtractRow>,
    /// Subjects read (decided and audited), rows or not.
    pub examined: usize,
    /// Where the next call continues; `None` once every subject was read.
    pub next_cursor: Option<String>,
    /// The signed manifest of this call's rows.
    pub manifest: SignedManifest,
}

/// Why a row must be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RevocationReason {
    /// The subject was shredded.
    Shredded,
    /// The subject withdrew consent to the purpose (or a purpose above it).
    Withdrawn,
    /// The subject sent an opt-out signal covering the purpose.
    Signal,
}

/// One row to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The row.
    pub row_key: String,
    /// Why.
    pub reason: RevocationReason,
    /// When the subject did it.
    pub time_ms: Millis,
}

fn extract_id_bytes(extract_id: &str) -> Result<[u8; 16], VaultError> {
    hex::decode(extract_id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| VaultError::InvalidArgument("extract_id is 32 hex digits".into()))
}

impl Vault {
    /// Reads one page of an extract. Each subject's record is queued with the row key it was
    /// given; the rows may leave once every ticket resolves.
    pub fn extract(&self, ctx: &CallContext, call: &ExtractCall) -> Queued<ExtractPage> {
        let policies = self.policies();
        let mut tickets = Vec::new();
        let result = self.extract_inner(ctx, &policies, call, &mut tickets);
        let result = match result {
            Ok(page) => Ok(page),
            Err(err) => {
                let event = self.event(ctx, Action::Extract, Some(&call.purpose), &policies);
                let (result, ticket) = self.queue_read(Batch::new(), (event, Err(err)));
                tickets.push(ticket);
                result
            }
        };
        Queued::Ready {
            result,
            records: tickets,
        }
    }

    fn extract_inner(
        &self,
        ctx: &CallContext,
        policies: &crate::policy::Policies,
        call: &ExtractCall,
        tickets: &mut Vec<CommitTicket>,
    ) -> Result<ExtractPage, VaultError> {
        let catalog = policies.catalog();
        let names: Vec<&FieldName> = call.fields.iter().collect();
        self.check_call(policies, &call.purpose, &names)?;
        if !catalog.is_extractable(&call.purpose) {
            return Err(VaultError::InvalidArgument(format!(
                "purpose `{}` is not one the catalog lets Vault/Extract read (extract = true)",
                call.purpose
            )));
        }
        let limit = match call.limit {
            0 => MAX_EXTRACT_SUBJECTS,
            n if n <= MAX_EXTRACT_SUBJECTS => n,
            _ => {
                return Err(VaultError::InvalidArgument(format!(
                    "limit is at most {MAX_EXTRACT_SUBJECTS} subjects per call"
                )));
            }
        };
        let now = self.clock.now_ms();
        let (extract_id, mut record) = self.extract_record(ctx, call, now)?;
        let id_bytes = extract_id_bytes(&extract_id)?;
        let (subjects, next_cursor) = self.extract_subjects(&call.subjects, limit)?;

        let mut rows = Vec::new();
        for (sid, keys) in &subjects {
            let mut event = self.event(ctx, Action::Extract, Some(&call.purpose), policies);
            event.subject = keys.as_ref().map(|k| k.pseudonym);
            let budget = ReadBudget::new(self.limits.max_response_bytes);
            let asked = Asked::new(&call.purpose, &call.fields, &budget);
            let read = self.read_located(ctx, policies, sid, keys.clone(), &asked, &mut event);
            let mut batch = Batch::new();
            let returned = read.as_ref().is_ok_and(|reads| {
                reads
                    .iter()
                    .any(|r| matches!(r.outcome, ReadOutcome::Value(_) | ReadOutcome::Masked(_)))
            });
            let row_key = hex::encode(self.keyring.index().row_key(&id_bytes, sid));
            if returned {
                let key = [row_prefix(&extract_id), row_key.as_bytes().to_vec()].concat();
                batch.put(Cf::Meta, key, hex::encode(sid.0).into_bytes());
                let member = [subject_prefix(sid), extract_id.as_bytes().to_vec()].concat();
                batch.put(Cf::Meta, member, Vec::new());
            }
            let (result, ticket) = self.queue_read(batch, (event, read));
            tickets.push(ticket);
            match result {
                Ok(fields) if returned => rows.push(ExtractRow { row_key, fields }),
                Ok(_) => {}
                // One unreadable subject never stops the extract; its record says why.
                Err(e) => tracing::warn!(error = %e, "extract: a subject could not be read"),
            }
        }

        record.parts += 1;
        let mut batch = Batch::new();
        let bytes = serde_json::to_vec(&record).map_err(|e| VaultError::Internal(e.to_string()))?;
        batch.put(Cf::Meta, record_key(&extract_id), bytes);
        let event = self.event(ctx, Action::Extract, Some(&call.purpose), policies);
        let (_, ticket) = self.queue_read(batch, (event, Ok(())));
        tickets.push(ticket);

        let body = ManifestBody {
            version: 1,
            extract_id: extract_id.clone(),
            vault: hex::encode(self.keyring.id()),
            purpose: call.purpose.to_string(),
            fields: call.fields.iter().map(ToString::to_string).collect(),
            row_keys: rows.iter().map(|r| r.row_key.clone()).collect(),
            part: record.parts,
            complete: next_cursor.is_none(),
            issued_at: rfc3339(now),
        };
        let manifest = SignedManifest::sign(body, self.keyring.audit_signer())
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        crate::metrics::metrics()
            .extract_rows
            .inc_by(rows.len() as u64);
        Ok(ExtractPage {
            extract_id,
            rows,
            examined: subjects.len(),
            next_cursor,
            manifest,
        })
    }

    /// The extract `call` continues (its owner and its question must match), or a new one.
    fn extract_record(
        &self,
        ctx: &CallContext,
        call: &ExtractCall,
        now: Millis,
    ) -> Result<(String, ExtractRecord), VaultError> {
        let fields: Vec<String> = call.fields.iter().map(ToString::to_string).collect();
        let Some(id) = &call.extract_id else {
            let record = ExtractRecord {
                principal: ctx.principal.to_string(),
                purpose: call.purpose.to_string(),
                fields,
                created_ms: now,
                parts: 0,
            };
            return Ok((new_receipt_id()?, record));
        };
        let id = parse_id(id, "extract_id")?;
        let record = self.load_extract(&id)?;
        if record.principal != ctx.principal.to_string() {
            return Err(VaultError::PermissionDenied {
                action: "extract",
                denied: Vec::new(),
            });
        }
        if record.purpose != call.purpose.as_str() || record.fields != fields {
            return Err(VaultError::InvalidArgument(
                "a continued extract asks for the purpose and fields it began with".into(),
            ));
        }
        Ok((id, record))
    }

    fn load_extract(&self, extract_id: &str) -> Result<ExtractRecord, VaultError> {
        let bytes = self
            .store
            .get(Cf::Meta, &record_key(extract_id))?
            .ok_or_else(|| VaultError::NotFound("no extract has this id".into()))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| VaultError::DataLoss("an extract record is malformed".into()))
    }

    /// The subjects of this page, located, and where the next page starts.
    #[expect(
        clippy::type_complexity,
        reason = "a private pair, named where it is used"
    )]
    fn extract_subjects(
        &self,
        subjects: &ExtractSubjects,
        limit: usize,
    ) -> Result<
        (
            Vec<(Sid, Option<Arc<crate::vault::keys::SubjectKeys>>)>,
            Option<String>,
        ),
        VaultError,
    > {
        match subjects {
            ExtractSubjects::Listed(ids) => {
                if ids.is_empty() || ids.len() > limit {
                    return Err(VaultError::InvalidArgument(format!(
                        "an extract names 1 to {limit} subjects per call"
                    )));
                }
                let mut seen = std::collections::HashSet::with_capacity(ids.len());
                if let Some(i) = ids.iter().position(|s| !seen.insert(s.expose())) {
                    return Err(VaultError::InvalidArgument(format!(
                        "subject_ids[{i}] repeats an earlier subject id"
                    )));
                }
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if id.expose().len() > self.limits.max_subject_id_bytes {
                        return Err(VaultError::InvalidArgument(format!(
                            "subject_id is longer than {} bytes",
                            self.limits.max_subject_id_bytes
                        )));
                    }
                    let sid = self.keyring.index().sid(id);
                    out.push((sid, self.subject_keys(&sid)?));
                }
                Ok((out, None))
            }
            ExtractSubjects::Every { cursor } => {
                let mut start = match cursor.as_deref() {
                    None | Some("") => Vec::new(),
                    Some(text) => {
                        let sid: [u8; 32] = hex::decode(text)
                            .ok()
                            .and_then(|b| b.try_into().ok())
                            .ok_or_else(|| {
                                VaultError::InvalidArgument(
                                    "cursor is not one an extract returned".into(),
                                )
                            })?;
                        // Just past every entry of the cursor's subject.
                        let mut after = sid.to_vec();
                        after.push(0xff);
                        after
                    }
                };
                let mut out = Vec::new();
                loop {
                    let entries = self.store.scan_from(Cf::Keys, &start, 4 * limit)?;
                    let exhausted = entries.len() < 4 * limit;
                    for (key, _) in &entries {
                        let Some(sid) = is_pseudonym_key(key) else {
                            continue;
                        };
                        let keys = match self.subject_keys(&sid) {
                            Ok(keys) => keys,
                            // An unreadable subject is quarantined by the maintenance tasks;
                            // the extract passes over it.
                            Err(VaultError::DataLoss(_)) => continue,
                            Err(e) => return Err(e),
                        };
                        if keys.as_ref().is_some_and(|k| k.canary) {
                            continue;
                        }
                        out.push((sid, keys));
                        if out.len() == limit {
                            return Ok((out, Some(hex::encode(sid.0))));
                        }
                    }
                    match entries.last() {
                        Some((key, _)) if !exhausted => {
                            start = key.clone();
                            start.push(0);
                        }
                        _ => return Ok((out, None)),
                    }
                }
            }
        }
    }

    /// The extracts `sid` has a row in (GDPR Art. 15(1)(c): the recipients of its data).
    pub(in crate::vault) fn extracts_of(
        &self,
        sid: &Sid,
    ) -> Result<Vec<ExtractMembership>, VaultError> {
        let prefix = subject_prefix(sid);
        let mut out = Vec::new();
        for (key, _) in self.store.scan_prefix(Cf::Meta, &prefix)? {
            let extract_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let record = self.load_extract(&extract_id)?;
            out.push(ExtractMembership {
                extract_id,
                principal: record.principal,
                purpose: record.purpose,
                created_ms: record.created_ms,
            });
        }
        Ok(out)
    }

    /// The rows of extract `extract_id` to forget because of what their subjects did since
    /// `since_ms`: a shred, a withdrawal of the purpose, an opt-out signal covering it. For the
    /// extract's maker, and for operators who may read the audit log.
    pub fn extract_revocations(
        &self,
        ctx: &CallContext,
        extract_id: &str,
        since_ms: Millis,
    ) -> Result<Vec<Revocation>, VaultError> {
        let policies = self.policies();
        let event = self.event(ctx, Action::ExtractRevocations, None, &policies);
        let result = (|| {
            let id = parse_id(extract_id, "extract_id")?;
            let record = self.load_extract(&id)?;
            let owner = record.principal == ctx.principal.to_string();
            if !owner
                && !policies
                    .decide_admin(&ctx.principal, AdminAction::AuditRead)
                    .allowed
            {
                return Err(VaultError::PermissionDenied {
                    action: "extract_revocations",
                    denied: Vec::new(),
                });
            }
            let purpose = Purpose::new(record.purpose.clone())
                .map_err(|_| VaultError::DataLoss("an extract record is malformed".into()))?;
            let prefix = row_prefix(&id);
            let rows = self.store.scan_prefix(Cf::Meta, &prefix)?;
            if rows.len() > MAX_EXTRACT_ROWS {
                return Err(VaultError::ResponseTooLarge {
                    limit: MAX_EXTRACT_ROWS,
                });
            }
            let mut out = Vec::new();
            for (key, value) in rows {
                let row_key = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                let sid = hex::decode(&value)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(Sid)
                    .ok_or_else(|| VaultError::DataLoss("an extract row is malformed".into()))?;
                if let Some((reason, time_ms)) =
                    self.revoked(&sid, &purpose, since_ms, &policies)?
                {
                    out.push(Revocation {
                        row_key,
                        reason,
                        time_ms,
                    });
                }
            }
            Ok((Batch::new(), out))
        })();
        self.finish(event, result).map(|(r, _)| r)
    }

    /// Whether `sid`'s row of an extract for `purpose` is revoked by something since `since_ms`,
    /// and what and when.
    fn revoked(
        &self,
        sid: &Sid,
        purpose: &Purpose,
        since_ms: Millis,
        policies: &crate::policy::Policies,
    ) -> Result<Option<(RevocationReason, Millis)>, VaultError> {
        if let Some(bytes) = self.store.get(Cf::Shredded, &sid.0)?
            && let Ok(receipt) = ShredReceipt::decode(&bytes)
            && receipt.shredded_ms >= since_ms
        {
            return Ok(Some((RevocationReason::Shredded, receipt.shredded_ms)));
        }
        let entries = match self.consent_entries(sid) {
            Ok(entries) => entries,
            Err(VaultError::DataLoss(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let catalog = policies.catalog();
        // A signal's withdrawals carry the signal: those rows are revoked by the signal.
        let withdrawn = entries.consents.iter().find_map(|c| {
            let time = parse_rfc3339(&c.time)?;
            let covers = catalog
                .purpose_and_descendants(&c.purpose)
                .contains(purpose);
            let reason = match c.signal {
                Some(_) => RevocationReason::Signal,
                None => RevocationReason::Withdrawn,
            };
            (!c.granted && covers && time >= since_ms).then_some((reason, time))
        });
        if withdrawn.is_some() {
            return Ok(withdrawn);
        }
        let signal = entries.signals.iter().find_map(|s| {
            let time = parse_rfc3339(&s.time)?;
            (catalog.covered_by(s.signal).contains(purpose) && time >= since_ms).then_some(time)
        });
        Ok(signal.map(|time| (RevocationReason::Signal, time)))
    }
}
