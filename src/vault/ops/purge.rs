//! The physical purge after an erasure, made durable: the shred's own batch records the pending
//! purge (the ranges, and the incarnation erased) in the meta column family, the purge runs once
//! the shred is committed, its result is checked against the live table files, and only a checked
//! purge clears the record. A crash or a failed compaction leaves the record, and every start
//! redoes what is pending.
//!
//! The check: no live table file overlapping a purged range still holds the subject handle, or,
//! when the customer has come back since (a new incarnation shares the handle), no file of the
//! keys range still holds the erased incarnation's id, which its pseudonym entry kept.

use serde::{Deserialize, Serialize};

use crate::domain::Sid;
use crate::store::{Batch, Cf};
use crate::vault::pseudonym::Incarnation;
use crate::vault::{Vault, VaultError};

const PREFIX: &[u8] = b"purge/";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pending {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incarnation: Option<String>,
    ranges: Vec<(String, String)>,
}

fn pending_key(sid: &Sid) -> Vec<u8> {
    [PREFIX, &sid.0].concat()
}

impl Vault {
    /// Records, inside the erasure's batch, that `ranges` of `sid` must be purged.
    pub(in crate::vault) fn stage_pending_purge(
        &self,
        sid: &Sid,
        incarnation: Option<&Incarnation>,
        ranges: &[(Cf, Vec<u8>)],
        batch: &mut Batch,
    ) -> Result<(), VaultError> {
        let pending = Pending {
            incarnation: incarnation.map(hex::encode),
            ranges: ranges
                .iter()
                .map(|(cf, prefix)| (cf.name().to_owned(), hex::encode(prefix)))
                .collect(),
        };
        let bytes =
            serde_json::to_vec(&pending).map_err(|e| VaultError::Internal(e.to_string()))?;
        batch.put(Cf::Meta, pending_key(sid), bytes);
        Ok(())
    }

    /// Purges `sid`'s pending ranges and checks the result; clears the record once checked.
    /// Returns whether the bytes are known to have left the live store.
    pub(in crate::vault) fn finish_purge(&self, sid: &Sid) -> bool {
        match self.try_purge(sid) {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "an erasure is committed but its physical purge failed; it is redone at the next start");
                false
            }
        }
    }

    fn try_purge(&self, sid: &Sid) -> Result<bool, VaultError> {
        let Some(bytes) = self.store.get(Cf::Meta, &pending_key(sid))? else {
            return Ok(true);
        };
        let malformed = || VaultError::DataLoss("a pending purge record is malformed".into());
        let pending: Pending = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        let ranges = pending
            .ranges
            .iter()
            .map(|(cf, prefix)| {
                let cf = Cf::ALL.into_iter().find(|c| c.name() == cf);
                match (cf, hex::decode(prefix)) {
                    (Some(cf), Ok(prefix)) => Ok((cf, prefix)),
                    _ => Err(malformed()),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let incarnation = pending
            .incarnation
            .as_deref()
            .map(hex::decode)
            .transpose()
            .map_err(|_| malformed())?;
        let started = std::time::Instant::now();
        self.store.purge(&ranges)?;
        crate::metrics::metrics()
            .purge_duration
            .observe(started.elapsed().as_secs_f64());
        // A customer who came back since shares the handle: then only the erased incarnation's
        // own id tells its entries apart.
        let came_back = self.incarnation_of(sid).ok().flatten().is_some();
        for (cf, prefix) in &ranges {
            let needle: &[u8] = match (&incarnation, came_back) {
                (_, false) => &sid.0,
                (Some(id), true) if *cf == Cf::Keys => id,
                _ => continue,
            };
            if let Some(file) = self.store.file_holding(*cf, prefix, needle)? {
                tracing::error!(
                    cf = cf.name(),
                    file,
                    "a purge left erased entries in a live table file; it is redone at the next start"
                );
                return Ok(false);
            }
        }
        let mut batch = Batch::new();
        batch.delete(Cf::Meta, pending_key(sid));
        self.store.write(&batch)?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "purge checked");
        Ok(true)
    }

    /// At start: redoes every purge a crash or a failure left pending. Returns how many are done.
    pub(in crate::vault) fn redo_pending_purges(&self) -> Result<usize, VaultError> {
        let mut done = 0;
        for (key, _) in self.store.scan_prefix(Cf::Meta, PREFIX)? {
            let Some(sid) = key
                .get(PREFIX.len()..)
                .and_then(|s| <[u8; 32]>::try_from(s).ok())
            else {
                continue;
            };
            if self.finish_purge(&Sid(sid)) {
                done += 1;
            }
        }
        Ok(done)
    }

    /// Whether `sid`'s erasure still waits for its physical purge.
    pub(in crate::vault) fn purge_pending(&self, sid: &Sid) -> Result<bool, VaultError> {
        Ok(self.store.get(Cf::Meta, &pending_key(sid))?.is_some())
    }

    /// How many erasures still wait for their physical purge.
    pub fn pending_purges(&self) -> Result<usize, VaultError> {
        Ok(self.store.scan_prefix(Cf::Meta, PREFIX)?.len())
    }
}
