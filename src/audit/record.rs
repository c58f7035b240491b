//! The audit record and its canonical bytes: `hash = SHA-256(prev_hash ‖ canonical record bytes)`,
//! where the canonical bytes are the JSON of every field but `hash`, in declaration order.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The outcome of one field in a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldAudit {
    /// The field name.
    pub field: String,
    /// `value`, `masked`, `denied`, `absent`, `written`, `deleted`...
    pub outcome: String,
    /// The determining policies.
    pub policy_ids: Vec<String>,
}

/// What a call contributes to its record; the chain adds seq, time and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEvent {
    /// The caller (`Service::"checkout"`).
    pub principal: String,
    /// `read`, `write`, `delete`, `shred`...
    pub action: String,
    /// The subject's audit pseudonym, when the subject has one.
    pub subject: Option<String>,
    /// The stated purpose.
    pub purpose: Option<String>,
    /// Per-field outcomes.
    pub fields: Vec<FieldAudit>,
    /// `ok`, `denied`, or the error code of a failed call.
    pub outcome: String,
    /// The request id given to the caller.
    pub request_id: String,
    /// The policy version that decided.
    pub policy_version: String,
    /// The caller's network address, when known.
    pub peer: Option<String>,
    /// The purposes the subject had consented to when the call was decided.
    pub consents: Vec<String>,
}

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// RFC 3339 time, milliseconds, UTC.
    pub time: String,
    /// The caller.
    pub principal: String,
    /// The action.
    pub action: String,
    /// The audit pseudonym of the subject, never the raw id.
    pub subject: Option<String>,
    /// The stated purpose.
    pub purpose: Option<String>,
    /// Per-field outcomes.
    pub fields: Vec<FieldAudit>,
    /// The call's outcome.
    pub outcome: String,
    /// The request id.
    pub request_id: String,
    /// The deciding policy version.
    pub policy_version: String,
    /// The caller's network address, when known (absent in records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The consents that were part of the decision (omitted when none, so that records written
    /// before consents existed keep their hash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consents: Vec<String>,
    /// Hex hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// Hex `SHA-256(prev_hash ‖ canonical bytes)`.
    pub hash: String,
}

impl AuditRecord {
    pub(super) fn new(seq: u64, time: String, event: AuditEvent, prev_hash: &[u8; 32]) -> Self {
        let mut record = Self {
            seq,
            time,
            principal: event.principal,
            action: event.action,
            subject: event.subject,
            purpose: event.purpose,
            fields: event.fields,
            outcome: event.outcome,
            request_id: event.request_id,
            policy_version: event.policy_version,
            peer: event.peer,
            consents: event.consents,
            prev_hash: hex::encode(prev_hash),
            hash: String::new(),
        };
        record.hash = hex::encode(record.compute_hash(prev_hash));
        record
    }

    /// `SHA-256(prev_hash ‖ JSON of every field but hash)`.
    pub fn compute_hash(&self, prev_hash: &[u8; 32]) -> [u8; 32] {
        let mut body = self.clone();
        body.hash = String::new();
        // Serializing strings, integers and vectors of them cannot fail.
        let canonical = serde_json::to_vec(&body).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(prev_hash);
        h.update(&canonical);
        h.finalize().into()
    }
}
