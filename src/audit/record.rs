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
    /// The purposes the subject effectively consented to when the call was decided.
    pub consents: Vec<String>,
    /// The purposes the subject had effectively withdrawn when the call was decided.
    pub withdrawn: Vec<String>,
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
    /// The withdrawals that were part of the decision (omitted when none, so that records written
    /// before consent precedence keep their hash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawn: Vec<String>,
    /// Hex hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// Hex `SHA-256(prev_hash ‖ canonical bytes)`.
    pub hash: String,
}

impl AuditRecord {
    /// The record of `event` at `seq` after `prev_hash`: its hash and its stored bytes. The
    /// canonical bytes are serialized once: `hash` is the last field, so the stored JSON is the
    /// canonical JSON with the empty hash filled in.
    pub(super) fn seal(
        seq: u64,
        time: String,
        event: AuditEvent,
        prev_hash: &[u8; 32],
    ) -> Result<([u8; 32], Vec<u8>), serde_json::Error> {
        const EMPTY_HASH_END: &[u8] = br#""hash":""}"#;
        let record = Self::unsealed(seq, time, event, prev_hash);
        let mut bytes = serde_json::to_vec(&record)?;
        let hash = hash_canonical(prev_hash, &bytes);
        if bytes.ends_with(EMPTY_HASH_END) {
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(hex::encode(hash).as_bytes());
            bytes.extend_from_slice(br#""}"#);
        } else {
            bytes = serde_json::to_vec(&Self {
                hash: hex::encode(hash),
                ..record
            })?;
        }
        Ok((hash, bytes))
    }

    fn unsealed(seq: u64, time: String, event: AuditEvent, prev_hash: &[u8; 32]) -> Self {
        Self {
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
            withdrawn: event.withdrawn,
            prev_hash: hex::encode(prev_hash),
            hash: String::new(),
        }
    }

    /// `SHA-256(prev_hash ‖ JSON of every field but hash)`.
    pub fn compute_hash(&self, prev_hash: &[u8; 32]) -> [u8; 32] {
        let mut body = self.clone();
        body.hash = String::new();
        // Serializing strings, integers and vectors of them cannot fail.
        let canonical = serde_json::to_vec(&body).unwrap_or_default();
        hash_canonical(prev_hash, &canonical)
    }
}

fn hash_canonical(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_are_the_record_whose_hash_they_carry() {
        let prev = [7u8; 32];
        let full = AuditEvent {
            principal: "Service::\"checkout\"".into(),
            action: "read".into(),
            subject: Some("ab".repeat(16)),
            purpose: Some("fulfillment".into()),
            fields: vec![FieldAudit {
                field: "email".into(),
                outcome: "value".into(),
                policy_ids: vec!["p\"1".into()],
            }],
            outcome: "ok".into(),
            request_id: "r".into(),
            policy_version: "3".into(),
            peer: Some("127.0.0.1:1".into()),
            consents: vec!["marketing".into()],
            withdrawn: vec!["email_marketing".into()],
        };
        for event in [full, AuditEvent::default()] {
            let (hash, bytes) = AuditRecord::seal(9, "t".into(), event, &prev).unwrap();
            let record: AuditRecord = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(record.hash, hex::encode(hash));
            assert_eq!(record.compute_hash(&prev), hash);
            assert_eq!(record.prev_hash, hex::encode(prev));
        }
    }
}
