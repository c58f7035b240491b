//! The operations callers ask for: read, write, delete and shred (with the physical purge),
//! consent, export, find, extract, legal holds, receipts, retention and DEK rotation. Each is
//! decided by policy and audited, over the subject repository.

pub(super) mod consent;
pub(super) mod export;
pub(super) mod extract;
pub(super) mod hold;
pub(super) mod purge;
pub(super) mod read;
pub(super) mod receipt;
pub(super) mod rekey;
pub(super) mod retention;
pub(super) mod shred;
pub(super) mod write;
