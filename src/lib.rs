//! privault: an encrypted personal-data vault. Customer attributes are sealed per field under a
//! per-customer key, every read is decided by Cedar policies for a stated purpose, every decision
//! lands in a hash-chained audit log, and erasing a customer destroys the only key that opens
//! their data.
//!
//! Layers (see `docs/design.md`): `api -> vault -> {policy, catalog, crypto, store, audit}`.

pub mod api;
pub mod audit;
pub mod backup;
pub mod catalog;
pub mod clock;
pub mod crypto;
pub mod diagnostic;
pub mod domain;
pub mod durable_file;
pub mod hold;
pub mod keyring;
pub mod ledger;
pub mod manifest;
pub mod metrics;
pub mod policy;
pub mod receipt;
pub mod store;
pub mod vault;
