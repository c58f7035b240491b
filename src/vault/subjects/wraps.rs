//! How many wraps the current KEK has made. Every DEK, pseudonym and subject id is wrapped with
//! AES-256-GCM under a fresh random 96-bit nonce, and NIST SP 800-38D §8.3 bounds one key to 2^32
//! such encryptions; the vault rolls the epoch long before (at 2^31). The count is kept in memory
//! and written to the meta column family every [`PERSIST_EVERY`] wraps (it reaches the disk with
//! the next synced commit); at open the stored count is raised by as much, since a crash may have
//! lost that many. It only ever over-counts on one node. Nodes on one PostgreSQL database share
//! the stored count: each write adds the node's wraps since its last write to what is stored (and
//! the node takes up the total), so the count falls short only by what two nodes writing at the
//! same moment lose of each other's last few thousand wraps.

use std::sync::Mutex;

use std::sync::Arc;

use crate::crypto::Kek;
use crate::store::{Batch, Cf, Store};
use crate::vault::Vault;

const KEY: &[u8] = b"kek_wraps";
/// Wraps between two writes of the count.
const PERSIST_EVERY: u64 = 4096;
/// Wraps after which the current epoch must be rolled.
pub(in crate::vault) const ROLL_AT_WRAPS: u64 = 1 << 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    epoch: u32,
    wraps: u64,
    persisted: u64,
}

/// The wrap count of the current epoch.
pub(in crate::vault) struct WrapCounter {
    inner: Mutex<Count>,
}

fn decode(bytes: &[u8]) -> Option<(u32, u64)> {
    let (epoch, wraps) = bytes.split_at_checked(4)?;
    Some((
        u32::from_be_bytes(epoch.try_into().ok()?),
        u64::from_be_bytes(wraps.try_into().ok()?),
    ))
}

impl WrapCounter {
    /// The count of `epoch` as stored, raised by the most a crash could have lost.
    pub fn open(store: &Store, epoch: u32) -> Result<Self, crate::store::StoreError> {
        let stored = store.get(Cf::Meta, KEY)?.as_deref().and_then(decode);
        let wraps = match stored {
            Some((e, wraps)) if e == epoch => wraps.saturating_add(PERSIST_EVERY),
            _ => 0,
        };
        Ok(Self {
            inner: Mutex::new(Count {
                epoch,
                wraps,
                persisted: wraps,
            }),
        })
    }

    /// Counts `n` wraps under `epoch` (a new epoch starts from zero); writes the count when due.
    pub fn count(&self, store: &Store, epoch: u32, n: u64) {
        let due = {
            let mut c = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if c.epoch != epoch {
                *c = Count {
                    epoch,
                    wraps: 0,
                    persisted: 0,
                };
            }
            c.wraps = c.wraps.saturating_add(n);
            if c.wraps - c.persisted >= PERSIST_EVERY {
                let prior = c.persisted;
                c.persisted = c.wraps;
                Some((*c, prior))
            } else {
                None
            }
        };
        if let Some((c, prior)) = due {
            // What other nodes stored since is added, never lost: the total is at least this
            // node's own count, and at least the stored count plus this node's wraps since.
            let stored = store
                .get(Cf::Meta, KEY)
                .ok()
                .flatten()
                .as_deref()
                .and_then(decode)
                .filter(|(e, _)| *e == c.epoch)
                .map_or(0, |(_, wraps)| wraps);
            let total = c.wraps.max(stored.saturating_add(c.wraps - prior));
            if total > c.wraps {
                let mut now = self
                    .inner
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if now.epoch == c.epoch {
                    now.wraps = now.wraps.saturating_add(total - c.wraps);
                    now.persisted = now.persisted.saturating_add(total - c.wraps);
                }
            }
            let mut batch = Batch::new();
            let value = [c.epoch.to_be_bytes().as_slice(), &total.to_be_bytes()].concat();
            batch.put(Cf::Meta, KEY.to_vec(), value);
            if let Err(e) = store.write(&batch) {
                tracing::warn!(error = %e, "cannot record the KEK's wrap count; it is raised again at the next start");
            }
        }
    }

    /// The wraps counted under `epoch`.
    pub fn wraps(&self, epoch: u32) -> u64 {
        let c = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.epoch == epoch { c.wraps } else { 0 }
    }
}

impl Vault {
    /// The current KEK, for `n` wraps counted against its bound.
    pub(in crate::vault) fn kek_for_wraps(&self, n: u64) -> Arc<Kek> {
        let kek = self.keyring.current_kek();
        self.wraps.count(&self.store, kek.epoch(), n);
        kek
    }

    /// Whether the current KEK has made so many wraps that the epoch must roll.
    pub fn kek_wraps_exhausted(&self) -> bool {
        self.wraps.wraps(self.keyring.current_epoch()) >= ROLL_AT_WRAPS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_survives_a_restart_and_only_ever_over_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let counter = WrapCounter::open(&store, 1).unwrap();
        counter.count(&store, 1, PERSIST_EVERY + 10);
        assert_eq!(counter.wraps(1), PERSIST_EVERY + 10);
        let reopened = WrapCounter::open(&store, 1).unwrap();
        assert!(reopened.wraps(1) >= PERSIST_EVERY + 10);
        // A roll starts the new epoch from zero.
        let rolled = WrapCounter::open(&store, 2).unwrap();
        assert_eq!(rolled.wraps(2), 0);
        rolled.count(&store, 2, 3);
        assert_eq!(rolled.wraps(2), 3);
    }

    #[test]
    fn counters_sharing_a_store_add_up_their_wraps() {
        // Two nodes over one database: each stores its wraps on top of the other's.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = WrapCounter::open(&store, 1).unwrap();
        let second = WrapCounter::open(&store, 1).unwrap();
        for _ in 0..3 {
            first.count(&store, 1, PERSIST_EVERY);
            second.count(&store, 1, PERSIST_EVERY);
        }
        let stored = decode(&store.get(Cf::Meta, KEY).unwrap().unwrap())
            .unwrap()
            .1;
        assert!(stored >= 6 * PERSIST_EVERY, "{stored}");
        assert!(second.wraps(1) >= 6 * PERSIST_EVERY);
        assert!(
            first.wraps(1) >= 5 * PERSIST_EVERY,
            "took up the other's wraps"
        );
    }
}
