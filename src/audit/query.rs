//! Queries over the audit log: filters on subject pseudonym, principal, purpose, action, outcome,
//! time and seq range, paginated by seq.

use super::{AuditError, AuditRecord};
use crate::clock::{Millis, rfc3339};
use crate::store::keys::audit_key;
use crate::store::{Cf, Store};

/// Most records one page returns.
pub const MAX_PAGE: usize = 1000;

/// What to return; every set filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// The subject's audit pseudonym (the vault maps a subject id to it).
    pub subject: Option<String>,
    /// The caller, as a Cedar uid.
    pub principal: Option<String>,
    /// The stated purpose.
    pub purpose: Option<String>,
    /// The action (`read`, `write`, `shred`, `policy_apply`...).
    pub action: Option<String>,
    /// The outcome (`ok`, `denied`, `invalid_argument`...).
    pub outcome: Option<String>,
    /// Records at or after this time.
    pub from_ms: Option<Millis>,
    /// Records before this time.
    pub to_ms: Option<Millis>,
    /// First seq to consider (1 when unset).
    pub from_seq: u64,
    /// Last seq to consider.
    pub to_seq: Option<u64>,
    /// Page size (at most [`MAX_PAGE`]).
    pub limit: usize,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord, from_time: Option<&str>, to_time: Option<&str>) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        eq(&self.subject, r.subject.as_deref())
            && eq(&self.principal, Some(&r.principal))
            && eq(&self.purpose, r.purpose.as_deref())
            && eq(&self.action, Some(&r.action))
            && eq(&self.outcome, Some(&r.outcome))
            // RFC 3339 in one fixed format orders like time.
            && from_time.is_none_or(|t| r.time.as_str() >= t)
            && to_time.is_none_or(|t| r.time.as_str() < t)
    }
}

/// One page of matching records, and the seq to continue from when there may be more.
pub fn query(
    store: &Store,
    filter: &AuditFilter,
) -> Result<(Vec<AuditRecord>, Option<u64>), AuditError> {
    let limit = filter.limit.clamp(1, MAX_PAGE);
    let from_time = filter.from_ms.map(rfc3339);
    let to_time = filter.to_ms.map(rfc3339);
    let mut out = Vec::new();
    let mut next = filter.from_seq.max(1);
    loop {
        let page = store.scan_from(Cf::Audit, &audit_key(next), 1024)?;
        if page.is_empty() {
            return Ok((out, None));
        }
        for (_, bytes) in page {
            let record: AuditRecord = serde_json::from_slice(&bytes).map_err(|_| {
                AuditError::Corrupt(format!("record after seq {next} is unreadable"))
            })?;
            if filter.to_seq.is_some_and(|t| record.seq > t) {
                return Ok((out, None));
            }
            next = record.seq + 1;
            if filter.matches(&record, from_time.as_deref(), to_time.as_deref()) {
                out.push(record);
                if out.len() == limit {
                    return Ok((out, Some(next)));
                }
            }
        }
    }
}
