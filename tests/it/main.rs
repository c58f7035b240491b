//! privault's integration tests: a real server on a loopback port over RocksDB in a temp dir,
//! called through the generated tonic client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod amplification;
mod audit;
mod audit_log;
mod audit_segments;
mod backup;
mod binary;
mod consent;
mod crash;
mod deploy;
mod durability;
mod exfiltration;
mod extracts;
mod failover;
mod holds;
mod hostile;
mod hsm;
mod identity;
mod keys;
mod lookup;
mod metrics;
mod model;
mod nodes;
mod outcomes;
mod pki;
mod policy_admin;
mod policy_cli;
mod postgres;
mod receipts;
mod rectification;
mod retention;
mod root_key;
mod shred;
mod signals;
mod subject_attributes;
mod subject_rights;
mod support;
mod tamper;
mod upgrade;
mod views;
mod writes;
