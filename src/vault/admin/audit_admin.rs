//! The auditors' view of the audit log: the signed head, queries (by subject through its
//! pseudonym), and chain verification. Each call is decided by Cedar (`audit_read`) and audited.

use serde::{Deserialize, Serialize};

use crate::audit::{
    Action, AuditFilter, AuditRecord, Log, Sealed, VerifyError, query, verify_range,
};
use crate::clock::rfc3339;
use crate::domain::SubjectId;
use crate::policy::AdminAction;
use crate::store::Batch;
use crate::vault::{CallContext, Vault, VaultError, require};

/// The audit log's head signed with the keyring's Ed25519 audit key. Keep one: a later log that
/// does not contain this exact `(seq, hash)` was truncated or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The last record's seq.
    pub seq: u64,
    /// The last record's hash (hex).
    pub hash: String,
    /// When it was signed.
    pub time: String,
    /// The keyring (and so the vault) it belongs to (hex).
    pub keyring_id: String,
    /// The Ed25519 public key (hex).
    pub public_key: String,
    /// Ed25519 over `"privault/audit-head/v1" ‖ keyring id ‖ seq ‖ hash` (hex).
    pub signature: String,
}

impl SignedHead {
    /// Signs the head `(seq, hash)` with `keyring`'s audit key, at `now`.
    pub fn sign(
        keyring: &crate::keyring::Keyring,
        seq: u64,
        hash: &[u8; 32],
        now: crate::clock::Millis,
    ) -> Self {
        let id = keyring.id();
        let signer = keyring.audit_signer();
        Self {
            seq,
            hash: hex::encode(hash),
            time: rfc3339(now),
            keyring_id: hex::encode(id),
            public_key: hex::encode(signer.public_key()),
            signature: hex::encode(signer.sign_head(&id, seq, hash)),
        }
    }
}

impl Vault {
    /// The current head, signed.
    pub fn signed_head(&self) -> SignedHead {
        let (seq, hash) = self.audit.head();
        SignedHead::sign(&self.keyring, seq, &hash, self.clock.now_ms())
    }

    /// Applies the audit log's retention bound: drops the archived segments past it. Past the bound
    /// with a segment not archived, keeps everything and says so (the log, and
    /// [`Vault::audit_retention_blocked`], which the health service reports).
    pub fn sweep_audit_log(&self) -> Result<crate::audit::RetentionReport, VaultError> {
        if !self.audit_retention.is_set() {
            return Ok(crate::audit::RetentionReport::default());
        }
        let report = self
            .audit
            .enforce_retention(&self.audit_retention, self.clock.now_ms())
            .map_err(|e| {
                tracing::error!(error = %e, "audit log retention failed");
                VaultError::Unavailable("the audit log's retention sweep failed".into())
            })?;
        if !report.dropped.is_empty() {
            tracing::info!(
                segments = ?report.dropped,
                live_bytes = report.live_bytes,
                "audit log: dropped archived segments past the retention bound"
            );
        }
        if let Some(segment) = report.blocked_by {
            tracing::warn!(
                segment,
                live_bytes = report.live_bytes,
                "AUDIT LOG PAST ITS RETENTION BOUND: segment {segment} and later are not archived, \
                 so the live log keeps everything; run `privault audit archive --to DIR`"
            );
        }
        crate::metrics::metrics()
            .audit_retention_blocked
            .set(i64::from(report.blocked_by.is_some()));
        self.audit_blocked.send_replace(report.blocked_by);
        Ok(report)
    }

    /// Follows whether the audit log is past its retention bound with a segment not archived (the
    /// oldest such segment).
    pub fn audit_retention_blocked(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.audit_blocked.subscribe()
    }

    /// Follows whether the audit log can be written (false from a failed write until one
    /// succeeds): while it cannot, every read fails closed.
    pub fn audit_writable(&self) -> tokio::sync::watch::Receiver<bool> {
        self.audit.writable()
    }

    /// The seq of the last durable audit record.
    pub fn audit_head_seq(&self) -> u64 {
        self.audit.head_seq()
    }

    fn audit_call<T>(
        &self,
        ctx: &CallContext,
        name: Action,
        subject: Option<crate::domain::Pseudonym>,
        op: impl FnOnce() -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, name, None, &policies);
        event.subject = subject;
        let decision = policies.decide_admin(&ctx.principal, AdminAction::AuditRead);
        let result = require(decision, AdminAction::AuditRead.name())
            .and_then(|()| op())
            .map(|v| (Batch::new(), v));
        self.finish(event, result).map(|(v, _)| v)
    }

    /// The signed head, for an auditor.
    pub fn audit_head(&self, ctx: &CallContext) -> Result<SignedHead, VaultError> {
        self.audit_call(ctx, Action::AuditHead, None, || Ok(self.signed_head()))
    }

    /// One page of records matching `filter`; with `subject`, only that subject's records (none
    /// once it is shredded: its pseudonym is gone).
    pub fn audit_query(
        &self,
        ctx: &CallContext,
        subject: Option<&SubjectId>,
        mut filter: AuditFilter,
    ) -> Result<(Vec<AuditRecord>, Option<u64>), VaultError> {
        let pseudonym = match subject {
            Some(s) => {
                let sid = self.keyring.index().sid(s);
                match self.subject_keys(&sid)? {
                    Some(keys) => Some(keys.pseudonym),
                    None => {
                        return self
                            .audit_call(ctx, Action::AuditQuery, None, || Ok((Vec::new(), None)));
                    }
                }
            }
            None => None,
        };
        filter.subject = pseudonym.or(filter.subject);
        self.audit_call(ctx, Action::AuditQuery, pseudonym, || {
            query(self.audit.log(), self.audit.dictionaries(), &filter)
                .map_err(|e| VaultError::DataLoss(e.to_string()))
        })
    }

    /// Admits a tail of the log from `from_seq` (0: from the next record on): authorized as
    /// `audit_read` and audited once, when it starts. Returns the first seq to send and a follower
    /// of the durable head.
    pub fn audit_tail(
        &self,
        ctx: &CallContext,
        from_seq: u64,
    ) -> Result<(u64, tokio::sync::watch::Receiver<u64>), VaultError> {
        self.audit_call(ctx, Action::AuditTail, None, || {
            let follower = self.audit.subscribe();
            let start = if from_seq == 0 {
                *follower.borrow() + 1
            } else {
                from_seq
            };
            Ok((start, follower))
        })
    }

    /// Up to `limit` records from `from_seq` on, up to `through` (a durable head): the pages of a
    /// tail its caller was admitted to by [`Vault::audit_tail`].
    pub fn audit_tail_page(
        &self,
        from_seq: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, VaultError> {
        let filter = AuditFilter {
            from_seq,
            to_seq: Some(through),
            limit,
            ..AuditFilter::default()
        };
        query(self.audit.log(), self.audit.dictionaries(), &filter)
            .map(|(records, _)| records)
            .map_err(|e| VaultError::DataLoss(e.to_string()))
    }

    /// Verifies records `from..=to` of the chain.
    pub fn audit_verify(
        &self,
        ctx: &CallContext,
        from: u64,
        to: Option<u64>,
    ) -> Result<Result<(u64, String), VerifyError>, VaultError> {
        self.audit_call(ctx, Action::AuditVerify, None, || {
            Ok(verify_range(self.audit.log(), from, to))
        })
    }
}

/// Why a signed head does not match a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadMismatch {
    /// The head is malformed, from another vault, or its signature does not verify.
    #[error("signed head rejected: {0}")]
    Signature(String),
    /// The log ends before the signed head: records were removed from its tail.
    #[error("truncated: a head signed at seq {signed} exists, but the log ends at seq {last}")]
    Truncated {
        /// The signed seq.
        signed: u64,
        /// The log's last seq.
        last: u64,
    },
    /// The record at the signed seq is not the one that was signed: the log was rewritten.
    #[error("rewritten: record {0} differs from the signed head")]
    Rewritten(u64),
}

fn hex_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], HeadMismatch> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| HeadMismatch::Signature(format!("{what} is not {N} hex bytes")))
}

/// Checks an earlier signed head against the log in `store`, trusting only `keyring`'s key.
pub fn check_signed_head(
    store: &crate::store::Store,
    keyring: &crate::keyring::Keyring,
    head: &SignedHead,
) -> Result<(), HeadMismatch> {
    let id = keyring.id();
    if hex_array::<16>(&head.keyring_id, "keyring_id")? != id {
        return Err(HeadMismatch::Signature(
            "it belongs to another vault".into(),
        ));
    }
    let public = keyring.audit_signer().public_key();
    if hex_array::<32>(&head.public_key, "public_key")? != public {
        return Err(HeadMismatch::Signature("it names another audit key".into()));
    }
    let hash = hex_array::<32>(&head.hash, "hash")?;
    let signature = hex_array::<64>(&head.signature, "signature")?;
    crate::crypto::verify_head(&public, &id, head.seq, &hash, &signature)
        .map_err(|_| HeadMismatch::Signature("the signature does not verify".into()))?;
    if head.seq == 0 {
        return Ok(());
    }
    let sealed = Sealed::load(store).map_err(|e| HeadMismatch::Signature(e.to_string()))?;
    let log = Log {
        store,
        sealed: &sealed,
    };
    let last = log.last().ok().flatten().map_or(0, |(seq, _)| seq);
    if last < head.seq {
        return Err(HeadMismatch::Truncated {
            signed: head.seq,
            last,
        });
    }
    match verify_range(log, head.seq, Some(head.seq)) {
        Ok((_, stored)) if stored == head.hash => Ok(()),
        _ => Err(HeadMismatch::Rewritten(head.seq)),
    }
}
