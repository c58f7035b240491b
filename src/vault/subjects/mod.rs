//! The subject repository: a subject's keys (DEKs, pseudonym, wrapped id) and their cache, its
//! blind-index entries, its consents and their cache, canaries, quarantine, read budgets, and the
//! KEK wrap count. What the operations read and stage about one subject, over the store.

pub(super) mod canary;
pub(super) mod consent_cache;
pub(super) mod keys;
pub(super) mod lookup;
pub(super) mod pseudonym;
pub(super) mod quarantine;
pub(super) mod read_budget;
pub(super) mod wraps;
