//! The consents (purpose, granted) and opt-out signals each recently read subject has recorded, so
//! that a read does
//! not scan the consent column family. Invalidated by generation: any consent change or subject erasure bumps one
//! counter once it is committed, and an entry is used only if it was loaded under the current
//! generation. A read that starts after a withdrawal returned can therefore never see the old
//! consent, without writers and readers sharing a lock.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use crate::catalog::SubjectAttributes;
use crate::clock::Millis;
use crate::domain::{OptOutSignal, Purpose, Sid};
use crate::vault::VaultError;

/// A subject's recorded consents and signals.
#[derive(Debug, Default, PartialEq, Eq)]
pub(in crate::vault) struct Recorded {
    /// Each purpose with a record, with whether it is granted.
    pub purposes: Vec<(Purpose, bool)>,
    /// The opt-out signals it sent, sorted.
    pub signals: Vec<OptOutSignal>,
    /// Its policy attributes.
    pub subject: SubjectAttributes,
    /// When the attributes may change with no write (a retention expiry, a minor's birthday):
    /// the entry is loaded again from then on.
    pub valid_until: Option<Millis>,
}

/// The generation an entry was loaded under, and the consents recorded then.
type Entry = (u64, Arc<Recorded>);

/// Recorded consents per subject, least recently used evicted first.
pub(in crate::vault) struct ConsentCache {
    entries: Mutex<LruCache<Sid, Entry>>,
    generation: AtomicU64,
}

impl ConsentCache {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(cap)),
            generation: AtomicU64::new(0),
        }
    }

    /// The consents `sid` has recorded: cached if loaded since the last change, else `load`ed.
    pub fn recorded(
        &self,
        sid: &Sid,
        now: Millis,
        load: impl FnOnce() -> Result<Recorded, VaultError>,
    ) -> Result<Arc<Recorded>, VaultError> {
        // Read before loading: a change committed while loading makes this entry stale at once.
        let generation = self.generation.load(Ordering::Acquire);
        let lock = || self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((loaded_at, purposes)) = lock().get(sid)
            && *loaded_at == generation
            && purposes.valid_until.is_none_or(|until| now < until)
        {
            return Ok(Arc::clone(purposes));
        }
        let purposes = Arc::new(load()?);
        lock().put(*sid, (generation, Arc::clone(&purposes)));
        Ok(purposes)
    }

    /// Called once a change to some subject's consents is committed, before the call returns.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purposes(names: &[&str]) -> Recorded {
        Recorded {
            purposes: names
                .iter()
                .map(|n| (Purpose::new(*n).unwrap(), true))
                .collect(),
            signals: Vec::new(),
            ..Recorded::default()
        }
    }

    #[test]
    fn a_change_makes_every_earlier_load_stale() {
        let cache = ConsentCache::new(4);
        let sid = Sid([1; 32]);
        let first = cache
            .recorded(&sid, 0, || Ok(purposes(&["marketing"])))
            .unwrap();
        assert_eq!(first.purposes.len(), 1);
        // Cached: the loader is not called.
        let again = cache.recorded(&sid, 0, || panic!("cached")).unwrap();
        assert_eq!(again, first);
        cache.changed();
        let after = cache.recorded(&sid, 0, || Ok(Recorded::default())).unwrap();
        assert!(after.purposes.is_empty());
        // A load that raced a change is not served after it.
        cache.changed();
        let racing = cache
            .recorded(&sid, 0, || {
                cache.changed();
                Ok(purposes(&["marketing"]))
            })
            .unwrap();
        assert_eq!(racing.purposes.len(), 1);
        assert!(
            cache
                .recorded(&sid, 0, || Ok(Recorded::default()))
                .unwrap()
                .purposes
                .is_empty()
        );
    }
}
