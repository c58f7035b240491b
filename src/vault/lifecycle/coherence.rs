//! Keeping this node's caches true to what other nodes commit (PostgreSQL). Every write that
//! changes something a node caches logs the subjects and meta keys it touched in
//! `privault.changes`, in its own transaction and in commit order; before each call a node reads
//! the entries logged since its last look and drops or reloads what they name: the subjects'
//! cached DEKs and consents, the active policy set, the keyring's epochs, the legal holds.
//!
//! The guarantee: a call that starts after another node's call returned sees that call's
//! changes, because the change committed with the data before that call returned, and this call
//! reads the log before it reads any cache.

use std::sync::PoisonError;

use crate::store::StoreError;
use crate::store::postgres::{KEYRING_CHANGED, LEDGER_CHANGED};
use crate::vault::{Vault, VaultError};

impl Vault {
    /// Applies the changes other nodes committed since the last look (nothing on RocksDB, where
    /// this process is the only writer). A call that cannot look is refused: its caches might
    /// serve what another node's change forbids.
    pub fn catch_up(&self) -> Result<(), VaultError> {
        let Some(pg) = self.store.postgres() else {
            return Ok(());
        };
        let after = *self
            .changes_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let found = pg.changes_since(after)?;
        if found.through == after {
            return Ok(());
        }
        // One caller applies at a time; one that looked concurrently finds the work done.
        let mut seen = self
            .changes_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *seen >= found.through {
            return Ok(());
        }
        let (mut policy, mut keyring, mut ledger) = (found.overflowed, found.overflowed, false);
        if found.overflowed {
            self.keys.clear();
            ledger = true;
        }
        let mut consents = found.overflowed;
        for change in &found.changes {
            for sid in &change.sids {
                if let Ok(sid) = <[u8; 32]>::try_from(sid.as_slice()) {
                    self.keys.evict(&crate::domain::Sid(sid));
                    consents = true;
                }
            }
            for key in &change.meta {
                match key.as_slice() {
                    k if k == KEYRING_CHANGED => keyring = true,
                    k if k == LEDGER_CHANGED => ledger = true,
                    k if k == crate::vault::policy_versions::ACTIVE_KEY => policy = true,
                    _ => {}
                }
            }
        }
        if consents {
            self.consents.changed();
        }
        if keyring && self.keyring.reload().map_err(reload_failed)? {
            tracing::info!(
                epoch = self.keyring.current_epoch(),
                "took up the keyring another node changed"
            );
        }
        if policy {
            self.load_active_policies()?;
        }
        if ledger {
            let holds = self.ledger.holds().map_err(reload_failed)?;
            *self.holds.write().unwrap_or_else(PoisonError::into_inner) = holds;
        }
        *seen = found.through;
        Ok(())
    }

    /// Where this node starts reading the change log: its end when the vault opens.
    pub(in crate::vault) fn changes_head(store: &crate::store::Store) -> Result<u64, StoreError> {
        match store.postgres() {
            Some(pg) => pg.changes_head(),
            None => Ok(0),
        }
    }
}

fn reload_failed(e: impl std::fmt::Display) -> VaultError {
    tracing::error!(error = %e, "cannot take up another node's change");
    VaultError::Unavailable("this node cannot take up another node's change: try again".into())
}
