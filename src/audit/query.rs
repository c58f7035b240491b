//! Queries over the audit log: filters on subject pseudonym, principal, purpose, action, outcome,
//! time and seq range, paginated by seq. A query by subject reads that subject's records through
//! the subject index (segment by segment), never the whole log.

use super::AuditError;
use super::log::Log;
use super::record::AuditRecord;
use super::stored::Dictionaries;
use super::vocab::{Action, Outcome};
use crate::clock::Millis;
use crate::domain::Pseudonym;
use crate::store::keys::{
    AUDIT_SEGMENT_PREFIX, audit_index_key, audit_index_prefix, audit_segment_key, trailing_seq,
};
use crate::store::{Cf, Store};

/// Most records one page returns.
pub const MAX_PAGE: usize = 1000;

/// What to return; every set filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// The subject's audit pseudonym (the vault maps a subject id to it).
    pub subject: Option<Pseudonym>,
    /// The caller, as a Cedar uid.
    pub principal: Option<String>,
    /// The stated purpose.
    pub purpose: Option<String>,
    /// The action.
    pub action: Option<Action>,
    /// The outcome.
    pub outcome: Option<Outcome>,
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
    fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.event;
        self.subject.is_none_or(|s| e.subject == Some(s))
            && self.principal.as_ref().is_none_or(|p| *p == e.principal)
            && self
                .purpose
                .as_ref()
                .is_none_or(|p| Some(p) == e.purpose.as_ref())
            && self.action.is_none_or(|a| a == e.action)
            && self.outcome.is_none_or(|o| o == e.outcome)
            && self.from_ms.is_none_or(|t| r.time_ms >= t)
            && self.to_ms.is_none_or(|t| r.time_ms < t)
    }
}

/// The number of the last segment the log has opened.
pub(super) fn last_segment(store: &Store) -> Result<u64, AuditError> {
    let last = store.scan_back(Cf::Meta, Some(&audit_segment_key(u64::MAX)), 1)?;
    Ok(last
        .first()
        .filter(|(k, _)| k.starts_with(AUDIT_SEGMENT_PREFIX))
        .and_then(|(k, _)| trailing_seq(k))
        .unwrap_or(1))
}

/// One page of matching records, and the seq to continue from when there may be more.
pub fn query(
    log: Log<'_>,
    dicts: &Dictionaries,
    filter: &AuditFilter,
) -> Result<(Vec<AuditRecord>, Option<u64>), AuditError> {
    match filter.subject {
        Some(subject) if log.store.has(Cf::AuditIndex) => by_subject(log, dicts, filter, &subject),
        _ => by_seq(log, dicts, filter),
    }
}

fn past_end(filter: &AuditFilter, seq: u64) -> bool {
    filter.to_seq.is_some_and(|t| seq > t)
}

/// Walks the log in seq order.
fn by_seq(
    log: Log<'_>,
    dicts: &Dictionaries,
    filter: &AuditFilter,
) -> Result<(Vec<AuditRecord>, Option<u64>), AuditError> {
    let limit = filter.limit.clamp(1, MAX_PAGE);
    let mut out = Vec::new();
    let mut next = filter.from_seq.max(1);
    let mut prev = None;
    loop {
        let page = log.scan_from(next, 1024)?;
        if page.is_empty() {
            return Ok((out, None));
        }
        for (seq, bytes) in page {
            if past_end(filter, seq) {
                return Ok((out, None));
            }
            // Consecutive records chain: the previous one's hash is this one's prev_hash.
            let known_prev = prev.filter(|_| seq == next);
            let record = dicts.decode(log, seq, &bytes, known_prev)?;
            next = seq + 1;
            prev = Some(record.hash);
            if filter.matches(&record) {
                out.push(record);
                if out.len() == limit {
                    return Ok((out, Some(next)));
                }
            }
        }
    }
}

/// Reads one subject's records through the index: each segment's entries for the pseudonym,
/// from `from_seq` on.
fn by_subject(
    log: Log<'_>,
    dicts: &Dictionaries,
    filter: &AuditFilter,
    subject: &Pseudonym,
) -> Result<(Vec<AuditRecord>, Option<u64>), AuditError> {
    let limit = filter.limit.clamp(1, MAX_PAGE);
    let mut out = Vec::new();
    let from = filter.from_seq.max(1);
    for segment in 1..=last_segment(log.store)? {
        if log.sealed.is_dropped(segment) {
            // Its index left the live log with it: an archived segment at hand is read whole.
            if !log.sealed.readable(segment) {
                continue;
            }
            let Some(cp) = log
                .sealed
                .checkpoints()
                .into_iter()
                .find(|c| c.segment == segment)
            else {
                continue;
            };
            let mut at = cp.first_seq.max(from);
            while at <= cp.last_seq {
                let page = log.scan_from(at, 1024)?;
                let Some(&(last, _)) = page.last() else { break };
                for (seq, bytes) in page {
                    if past_end(filter, seq) {
                        return Ok((out, None));
                    }
                    if seq > cp.last_seq {
                        break;
                    }
                    let record = dicts.decode(log, seq, &bytes, None)?;
                    if record.event.subject == Some(*subject) && filter.matches(&record) {
                        out.push(record);
                        if out.len() == limit {
                            return Ok((out, Some(seq + 1)));
                        }
                    }
                }
                at = last + 1;
            }
            continue;
        }
        let prefix = audit_index_prefix(segment, &subject.0);
        let mut start = audit_index_key(segment, &subject.0, from);
        loop {
            let page = log.store.scan_from(Cf::AuditIndex, &start, 256)?;
            let mut more = false;
            for (key, _) in &page {
                if !key.starts_with(&prefix) {
                    more = false;
                    break;
                }
                more = true;
                let seq = trailing_seq(key)
                    .ok_or_else(|| AuditError::Corrupt("malformed subject index entry".into()))?;
                if past_end(filter, seq) {
                    return Ok((out, None));
                }
                start = audit_index_key(segment, &subject.0, seq + 1);
                let Some(bytes) = log.get(seq)? else {
                    return Err(AuditError::Corrupt(format!(
                        "the subject index names record {seq}, which is missing"
                    )));
                };
                // The index is derived data: the record itself must name the subject.
                let record = dicts.decode(log, seq, &bytes, None)?;
                if record.event.subject != Some(*subject) {
                    return Err(AuditError::Corrupt(format!(
                        "the subject index names record {seq} of another subject"
                    )));
                }
                if filter.matches(&record) {
                    out.push(record);
                    if out.len() == limit {
                        return Ok((out, Some(seq + 1)));
                    }
                }
            }
            if !more || page.len() < 256 {
                break;
            }
        }
    }
    Ok((out, None))
}
