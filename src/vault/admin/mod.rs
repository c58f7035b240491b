//! Administration: policy versions and their administration, the audit log's administration,
//! the KEK epoch roll, backups.

pub(super) mod audit_admin;
pub(super) mod backup;
pub(super) mod epoch;
pub(super) mod policy_admin;
pub(super) mod policy_versions;
