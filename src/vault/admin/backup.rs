//! Backups of a running vault: authorized (`backup` on `Database::"main"`) and audited before the
//! copy is cut, so no byte leaves unaudited and the copy's own log names who took it; then taken
//! by [`crate::backup::take`] into a staging directory inside the data directory (same file
//! system: table and segment files are hard links, the copy costs no I/O), from which the API
//! streams it. The staging directory goes when the stream ends; one left by a crash is removed at
//! the next start.

use std::path::{Path, PathBuf};

use crate::audit::{Action, Outcome};
use crate::backup::{self, BackupError, Manifest};
use crate::policy::AdminAction;
use crate::store::Batch;
use crate::vault::{CallContext, Vault, VaultError, require};

/// The name prefix of a backup's staging directory in the data directory.
pub const STAGING_PREFIX: &str = ".backup-";

/// A backup cut and waiting in its staging directory; removed on drop.
#[derive(Debug)]
pub struct StagedBackup {
    staging: tempfile::TempDir,
    /// What it holds.
    pub manifest: Manifest,
}

impl StagedBackup {
    /// The backup directory (`db/`, `audit/`, `backup.json`).
    pub fn dir(&self) -> PathBuf {
        self.staging.path().join("backup")
    }
}

fn unavailable(e: BackupError) -> VaultError {
    VaultError::Unavailable(format!("the backup could not be taken: {e}"))
}

impl Vault {
    /// Takes a backup for `ctx` (authorized as `backup`). The `started` record is durable before
    /// the copy is cut, the `ok` record before it is handed out.
    pub fn backup(&self, ctx: &CallContext) -> Result<StagedBackup, VaultError> {
        let policies = self.policies();
        let event = self.event(ctx, Action::Backup, None, &policies);
        let decision = policies.decide_admin(&ctx.principal, AdminAction::Backup);
        if let Err(e) = require(decision, AdminAction::Backup.name()) {
            return self.fail(event, e);
        }
        let mut started = event.clone();
        started.outcome = Outcome::Started;
        self.commit(Batch::new(), started)?;
        let taken = self.take_backup();
        let (staged, _) = self.finish(event, taken.map(|s| (Batch::new(), s)))?;
        Ok(staged)
    }

    fn take_backup(&self) -> Result<StagedBackup, VaultError> {
        let (Some(db), Some(keyring)) = (self.store.path(), self.keyring.path()) else {
            return Err(VaultError::FailedPrecondition(
                "a vault on PostgreSQL is backed up with PostgreSQL's own tools (pg_basebackup \
                 and WAL archiving for the data schema, pg_dump for the keys schema): see \
                 docs/operations.md"
                    .into(),
            ));
        };
        let data_dir = db.parent().unwrap_or(Path::new("."));
        let staging = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(data_dir)
            .map_err(|e| {
                unavailable(BackupError::Io {
                    path: data_dir.to_owned(),
                    source: e,
                })
            })?;
        let created = crate::clock::rfc3339(self.clock.now_ms());
        let manifest = backup::take(
            &self.store,
            keyring,
            &staging.path().join("backup"),
            created,
        )
        .map_err(unavailable)?;
        Ok(StagedBackup { staging, manifest })
    }
}

/// Removes the staging directories a crash left in `data_dir`.
pub(in crate::vault) fn remove_stale_staging(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX);
        if stale && let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(error = %e, "cannot remove a backup's staging directory left by a crash");
        }
    }
}
