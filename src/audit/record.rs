//! What a call contributes to the log (`AuditEvent`), a stored record as readers see it
//! (`AuditRecord`, with its JSON view under the contract's keys), and format 1: JSON records whose
//! hash is `SHA-256(prev_hash ‖ JSON of every field but hash)`, still verified and read as they
//! were written.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::vocab::{Action, Detail, FieldOutcome, Outcome};
use crate::clock::{Millis, rfc3339};
use crate::domain::Pseudonym;

/// The outcome of one field in a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldAudit {
    /// The field name.
    pub field: String,
    /// What became of it.
    pub outcome: FieldOutcome,
    /// The determining policies.
    pub policy_ids: crate::policy::PolicyIds,
}

/// What a call contributes to its record; the chain adds seq, time and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The caller (`Service::"checkout"`).
    pub principal: String,
    /// What the call did.
    pub action: Action,
    /// The subject's audit pseudonym, when the subject has one.
    pub subject: Option<Pseudonym>,
    /// The stated purpose.
    pub purpose: Option<String>,
    /// Per-field outcomes.
    pub fields: Vec<FieldAudit>,
    /// How the call ended.
    pub outcome: Outcome,
    /// The request id given to the caller.
    pub request_id: String,
    /// The policy version that decided.
    pub policy_version: String,
    /// The caller's network address, when known.
    pub peer: Option<String>,
    /// The purposes the subject effectively consented to when the call was decided.
    pub consents: Vec<String>,
    /// The purposes the subject had effectively withdrawn when the call was decided.
    pub withdrawn: Vec<String>,
    /// A typed fact that is not a field's outcome (an epoch, a count, a policy version).
    pub detail: Option<Detail>,
}

impl AuditEvent {
    /// The event of `action` by `principal`, ending `ok` until the call says otherwise.
    pub fn new(principal: impl Into<String>, action: Action) -> Self {
        Self {
            principal: principal.into(),
            action,
            subject: None,
            purpose: None,
            fields: Vec::new(),
            outcome: Outcome::Ok,
            request_id: String::new(),
            policy_version: String::new(),
            peer: None,
            consents: Vec::new(),
            withdrawn: Vec::new(),
            detail: None,
        }
    }
}

/// One stored record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was written, milliseconds since the epoch.
    pub time_ms: Millis,
    /// What it records.
    pub event: AuditEvent,
    /// The hash of the previous record (zeros for the first).
    pub prev_hash: [u8; 32],
    /// `SHA-256(prev_hash ‖ canonical bytes)`.
    pub hash: [u8; 32],
}

/// The JSON view of one field's outcome.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldView {
    /// The field name.
    pub field: String,
    /// What became of it.
    pub outcome: String,
    /// The determining policies.
    pub policy_ids: Vec<String>,
}

/// The JSON view of a record's detail, as `Audit/Query` sends it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DetailView {
    /// `epoch`, `epochs_destroyed`, `keys_rewrapped`, `pseudonyms_wrapped`, `policy_version`,
    /// `found_by` or `segments`.
    pub kind: String,
    /// The epoch(s), the count, the version, or the first and last seq.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numbers: Vec<u64>,
    /// For `found_by`: the action of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl DetailView {
    /// The view of `detail`.
    pub fn of(detail: &Detail) -> Self {
        Self {
            kind: detail.kind().to_owned(),
            numbers: detail.numbers(),
            name: match detail {
                Detail::FoundBy(a) => Some(a.name().to_owned()),
                Detail::ConsentSource(s) => Some(s.name().to_owned()),
                Detail::Signal(s) => Some(s.name().to_owned()),
                _ => None,
            },
        }
    }
}

/// The JSON view of a record: the contract's keys, for export, query and tail.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordView {
    /// Position in the chain.
    pub seq: u64,
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    /// The caller.
    pub principal: String,
    /// The action's name.
    pub action: String,
    /// The audit pseudonym, hex.
    pub subject: Option<String>,
    /// The stated purpose.
    pub purpose: Option<String>,
    /// Per-field outcomes.
    pub fields: Vec<FieldView>,
    /// The outcome's name.
    pub outcome: String,
    /// The request id.
    pub request_id: String,
    /// The deciding policy version.
    pub policy_version: String,
    /// The caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The consents part of the decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consents: Vec<String>,
    /// The withdrawals part of the decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawn: Vec<String>,
    /// The typed fact, if any (`{"kind": "epoch", "numbers": [3]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<DetailView>,
    /// Hex hash of the previous record.
    pub prev_hash: String,
    /// Hex hash of this record.
    pub hash: String,
}

impl AuditRecord {
    /// The JSON view.
    pub fn view(&self) -> RecordView {
        let e = &self.event;
        RecordView {
            seq: self.seq,
            time: rfc3339(self.time_ms),
            principal: e.principal.clone(),
            action: e.action.name().to_owned(),
            subject: e.subject.map(|p| p.to_string()),
            purpose: e.purpose.clone(),
            fields: e
                .fields
                .iter()
                .map(|f| FieldView {
                    field: f.field.clone(),
                    outcome: f.outcome.name().to_owned(),
                    policy_ids: f.policy_ids.to_vec(),
                })
                .collect(),
            outcome: e.outcome.name().to_owned(),
            request_id: e.request_id.clone(),
            policy_version: e.policy_version.clone(),
            peer: e.peer.clone(),
            consents: e.consents.clone(),
            withdrawn: e.withdrawn.clone(),
            detail: e.detail.as_ref().map(DetailView::of),
            prev_hash: hex::encode(self.prev_hash),
            hash: hex::encode(self.hash),
        }
    }
}

/// A format-1 record's field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Field {
    field: String,
    outcome: String,
    policy_ids: Vec<String>,
}

/// A format-1 record exactly as it was serialized: the order and the omissions are its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct V1Record {
    seq: u64,
    time: String,
    principal: String,
    action: String,
    subject: Option<String>,
    purpose: Option<String>,
    fields: Vec<V1Field>,
    outcome: String,
    request_id: String,
    policy_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    consents: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    withdrawn: Vec<String>,
    prev_hash: String,
    hash: String,
}

/// Why a format-1 record does not verify or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum V1Error {
    Unreadable,
    OtherSeq,
    PrevHash,
    Hash,
}

impl V1Record {
    /// Parses stored format-1 bytes.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, V1Error> {
        serde_json::from_slice(bytes).map_err(|_| V1Error::Unreadable)
    }

    /// The stored hash.
    pub(super) fn stored_hash(&self) -> Option<[u8; 32]> {
        hex::decode(&self.hash).ok()?.try_into().ok()
    }

    /// Checks the record is `seq` after `prev` and that its hash is its contents'; returns it.
    pub(super) fn check(&self, seq: u64, prev: &[u8; 32]) -> Result<[u8; 32], V1Error> {
        if self.seq != seq {
            return Err(V1Error::OtherSeq);
        }
        if self.prev_hash != hex::encode(prev) {
            return Err(V1Error::PrevHash);
        }
        let mut body = self.clone();
        body.hash = String::new();
        let canonical = serde_json::to_vec(&body).map_err(|_| V1Error::Unreadable)?;
        let hash: [u8; 32] = Sha256::new()
            .chain_update(prev)
            .chain_update(&canonical)
            .finalize()
            .into();
        if self.hash != hex::encode(hash) {
            return Err(V1Error::Hash);
        }
        Ok(hash)
    }

    /// The typed record. Format 1 spelled counts and epochs as pseudo-fields; they become the
    /// record's detail, so that field outcomes are field outcomes in every format.
    pub(super) fn decode(&self) -> Result<AuditRecord, V1Error> {
        let name = |s: &str| Action::from_name(s).ok_or(V1Error::Unreadable);
        let mut fields = Vec::with_capacity(self.fields.len());
        let mut detail: Option<Detail> = None;
        for f in &self.fields {
            if let Some(outcome) = FieldOutcome::from_name(&f.outcome) {
                fields.push(FieldAudit {
                    field: f.field.clone(),
                    outcome,
                    policy_ids: f.policy_ids.as_slice().into(),
                });
                continue;
            }
            let next = Detail::from_v1_field(&f.field, &f.outcome).ok_or(V1Error::Unreadable)?;
            match &mut detail {
                None if self.action == "key_epoch_destroyed" => {
                    let Detail::Epoch(e) = next else {
                        return Err(V1Error::Unreadable);
                    };
                    detail = Some(Detail::EpochsDestroyed(vec![e]));
                }
                None => detail = Some(next),
                Some(d) => {
                    if !d.absorb_v1(next) {
                        return Err(V1Error::Unreadable);
                    }
                }
            }
        }
        let subject = match &self.subject {
            None => None,
            Some(hex) => Some(Pseudonym(
                hex::decode(hex)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(V1Error::Unreadable)?,
            )),
        };
        let hash = |h: &str| -> Result<[u8; 32], V1Error> {
            hex::decode(h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or(V1Error::Unreadable)
        };
        Ok(AuditRecord {
            seq: self.seq,
            time_ms: crate::clock::parse_rfc3339(&self.time).ok_or(V1Error::Unreadable)?,
            event: AuditEvent {
                principal: self.principal.clone(),
                action: name(&self.action)?,
                subject,
                purpose: self.purpose.clone(),
                fields,
                outcome: Outcome::from_name(&self.outcome).ok_or(V1Error::Unreadable)?,
                request_id: self.request_id.clone(),
                policy_version: self.policy_version.clone(),
                peer: self.peer.clone(),
                consents: self.consents.clone(),
                withdrawn: self.withdrawn.clone(),
                detail,
            },
            prev_hash: hash(&self.prev_hash)?,
            hash: hash(&self.hash)?,
        })
    }
}

/// `SHA-256(prev_hash ‖ canonical)`: the chain's link, in every format but the first.
pub(super) fn chain_hash(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(prev_hash)
        .chain_update(canonical)
        .finalize()
        .into()
}
