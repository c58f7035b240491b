//! The storage seam: an ordered map of byte keys per [`Cf`] with atomic, durable batches
//! ([`Engine`]), filled by the embedded RocksDB backend ([`rocks`]) or by PostgreSQL
//! ([`postgres`]), behind one [`Store`]. Stores bytes it cannot read: no crypto, no policy.
//!
//! The seam sits below the records, not above them: every record and key is encoded once
//! (`records`, `keys`), so both backends hold the same bytes, one batch (a value, its DEK and its
//! audit record) commits as one unit on either, and the vault's logic is the same code on both.

pub mod keys;
pub mod postgres;
pub mod records;
pub mod rocks;

use std::cell::Cell;
use std::path::{Path, PathBuf};

pub use postgres::{PgConfig, PgStore};
pub use rocks::{DEFAULT_BLOCK_CACHE_BYTES, RocksStore};

/// The column families of the design's on-disk layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// `sid ‖ key class` → wrapped DEK; `sid ‖ "#pseudonym"` → audit pseudonym; `sid ‖ "#id"` →
    /// wrapped subject id (only for subjects with a lookup field).
    Keys,
    /// `sid ‖ field` → sealed value.
    Fields,
    /// `sid ‖ purpose` → consent state.
    Consent,
    /// `seq` (u64 BE) → audit record.
    Audit,
    /// `sid` → shred receipt.
    Shredded,
    /// `version` → policy set.
    Policies,
    /// `name` → format version, keyring id, audit head.
    Meta,
    /// The blind index: `1 ‖ tag ‖ sid` → nothing, `2 ‖ sid ‖ field` → tag.
    Lookup,
    /// The audit log's subject index: `segment ‖ pseudonym ‖ seq` → nothing.
    AuditIndex,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 9] = [
        Cf::Keys,
        Cf::Fields,
        Cf::Consent,
        Cf::Audit,
        Cf::Shredded,
        Cf::Policies,
        Cf::Meta,
        Cf::Lookup,
        Cf::AuditIndex,
    ];

    /// Added after format 1: a read-only view of an older directory may lack it.
    fn added_later(self) -> bool {
        matches!(self, Cf::AuditIndex)
    }

    /// The RocksDB name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Keys => "keys",
            Cf::Fields => "fields",
            Cf::Consent => "consent",
            Cf::Audit => "audit",
            Cf::Shredded => "shredded",
            Cf::Policies => "policies",
            Cf::Meta => "meta",
            Cf::Lookup => "lookup",
            Cf::AuditIndex => "audit_index",
        }
    }
}

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL reported an error, or could not be reached: the call is refused, nothing
    /// changed unless the transaction committed.
    #[error("postgresql {target}: {message}")]
    Postgres {
        /// Where the database is (host, port and database name; never the password).
        target: String,
        /// PostgreSQL's error code and message (never values: keys are hashed ids).
        message: String,
    },
    /// What the batch was to apply over had changed (another node wrote first): nothing was
    /// written.
    #[error("another node changed what the write depended on ({0:?})")]
    Conflict(Conflict),
    /// What only one backend offers was asked of the other.
    #[error("not on the {backend} backend: {what}")]
    Unsupported {
        /// The backend in use.
        backend: &'static str,
        /// What was asked.
        what: &'static str,
    },
    /// RocksDB reported an error.
    #[error("rocksdb `{path}`: {message}")]
    Db {
        /// The database directory.
        path: PathBuf,
        /// RocksDB's message (never holds values: keys are hashed ids).
        message: String,
    },
    /// A column family is missing from an opened database.
    #[error("column family `{0}` is missing")]
    MissingCf(&'static str),
    /// Inside [`memory_only`]: the read needs the disk (not in a memtable or the block cache).
    #[error("the read needs the disk")]
    NotInMemory,
}

thread_local! {
    static MEMORY_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's reads limited to the memtables and the block cache: a read that
/// would wait for the disk fails with [`StoreError::NotInMemory`] instead. The api runs the
/// in-memory part of a read this way on the async runtime, and only a miss on the blocking pool.
pub fn memory_only<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            MEMORY_ONLY.set(self.0);
        }
    }
    let _restore = Restore(MEMORY_ONLY.replace(true));
    f()
}

/// Whether this thread runs inside [`memory_only`]: on the async runtime, where a call must not do
/// heavy work either.
pub fn in_memory_only() -> bool {
    MEMORY_ONLY.get()
}

/// A stored key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A set of changes applied atomically by [`Store::write`].
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
    /// Values the batch applies only over, checked in its transaction (PostgreSQL, where other
    /// nodes write too). RocksDB has one writing process, which holds the database lock.
    pub(crate) expects: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
    /// The KEK epochs the batch's keys are wrapped under: on PostgreSQL the batch commits only
    /// while each is still the keyring's current epoch, so no node wraps under an epoch another
    /// node's roll has moved past (and will destroy).
    pub(crate) wrapped_under: Vec<u32>,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` in `cf`.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
    }

    /// Deletes `key` from `cf`.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }

    /// Deletes every key of `cf` in `from..to`.
    pub fn delete_range(&mut self, cf: Cf, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(cf, from.into(), to.into()));
    }

    /// Applies the batch only if `key` of `cf` still holds `value` (`None`: absent); otherwise
    /// the write fails with [`StoreError::Conflict`] and changes nothing.
    pub fn expect(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) {
        self.expects.push((cf, key.into(), value));
    }

    /// Records that the batch holds a key wrapped under KEK `epoch`.
    pub fn wrapped_under(&mut self, epoch: u32) {
        if !self.wrapped_under.contains(&epoch) {
            self.wrapped_under.push(epoch);
        }
    }

    /// Moves every change of `other` to the end of this batch.
    pub fn append(&mut self, mut other: Batch) {
        self.ops.append(&mut other.ops);
        self.expects.append(&mut other.expects);
        for epoch in other.wrapped_under {
            self.wrapped_under(epoch);
        }
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Which precondition of a batch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// A value given to [`Batch::expect`] changed.
    Changed,
    /// A KEK epoch given to [`Batch::wrapped_under`] is no longer the current one.
    EpochRolled,
}

/// The storage seam: what the vault needs of a backend. Keys are ordered bytewise; a batch is
/// applied atomically and is durable when [`Engine::write`] returns.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// The value of `key` in `cf`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The values of several keys of `cf`, in the order asked.
    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Every entry of `cf` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;
    /// Up to `limit` entries of `cf` from `start` on, in key order.
    fn scan_from(&self, cf: Cf, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Up to `limit` entries of `cf` backwards, from `start` (inclusive) or from the last one.
    fn scan_back(
        &self,
        cf: Cf,
        start: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// The last entry of `cf` in key order.
    fn last(&self, cf: Cf) -> Result<Option<Entry>, StoreError>;
    /// Applies `batch` atomically and durably.
    fn write(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Makes deleted entries of the `(cf, prefix)` ranges physically leave the live store.
    fn purge(&self, ranges: &[(Cf, Vec<u8>)]) -> Result<(), StoreError>;
    /// A cheap estimate of the number of keys in `cf`.
    fn estimate_keys(&self, cf: Cf) -> u64;
}

/// Which backend a [`Store`] runs on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::Display,
    strum::EnumString,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// RocksDB in the data directory (the default).
    Rocksdb,
    /// A PostgreSQL database shared by every node.
    Postgres,
}

/// The vault's storage, on one of the backends.
#[derive(Debug)]
pub struct Store {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Rocks(RocksStore),
    Postgres(PgStore),
}

impl From<RocksStore> for Store {
    fn from(rocks: RocksStore) -> Self {
        Self {
            inner: Inner::Rocks(rocks),
        }
    }
}

impl From<PgStore> for Store {
    fn from(pg: PgStore) -> Self {
        Self {
            inner: Inner::Postgres(pg),
        }
    }
}

impl Store {
    /// Opens (creating when absent) the RocksDB database in `path` with every column family.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        RocksStore::open(path).map(Self::from)
    }

    /// [`Store::open`] with a block cache of `bytes`, shared by every column family.
    pub fn open_with_block_cache(path: &Path, bytes: usize) -> Result<Self, StoreError> {
        RocksStore::open_with_block_cache(path, bytes).map(Self::from)
    }

    /// Opens an existing RocksDB database read-only ([`RocksStore::open_read_only`]).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        RocksStore::open_read_only(path).map(Self::from)
    }

    /// A consistent read-only view of a RocksDB database ([`RocksStore::open_snapshot`]).
    pub fn open_snapshot(path: &Path) -> Result<Self, StoreError> {
        RocksStore::open_snapshot(path).map(Self::from)
    }

    fn engine(&self) -> &dyn Engine {
        match &self.inner {
            Inner::Rocks(rocks) => rocks,
            Inner::Postgres(pg) => pg,
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match &self.inner {
            Inner::Rocks(_) => Backend::Rocksdb,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// The RocksDB backend, for what only it offers (checkpoints, table files, gauges).
    pub fn rocks(&self) -> Option<&RocksStore> {
        match &self.inner {
            Inner::Rocks(rocks) => Some(rocks),
            Inner::Postgres(_) => None,
        }
    }

    /// The PostgreSQL backend, for its keys schema (keyring, ledger) and node lease.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.inner {
            Inner::Rocks(_) => None,
            Inner::Postgres(pg) => Some(pg),
        }
    }

    /// The RocksDB database directory; `None` on PostgreSQL, which keeps nothing on the node.
    pub fn path(&self) -> Option<&Path> {
        self.rocks().map(RocksStore::path)
    }

    /// Whether a read can be answered from memory alone ([`memory_only`]): only RocksDB's
    /// memtables and block cache can; every PostgreSQL read is a round trip.
    pub fn reads_in_memory(&self) -> bool {
        self.rocks().is_some()
    }

    /// Whether `cf` exists (a read-only view of an older RocksDB directory may lack one added
    /// since; PostgreSQL's schema always has every table).
    pub fn has(&self, cf: Cf) -> bool {
        self.rocks().is_none_or(|rocks| rocks.has(cf))
    }

    /// RocksDB's gauges for the metrics endpoint; none on PostgreSQL (its own exporters tell).
    pub fn stats(&self) -> Option<StoreStats> {
        self.rocks().map(RocksStore::stats)
    }

    /// A cheap estimate of the number of keys in `cf`.
    pub fn estimate_keys(&self, cf: Cf) -> u64 {
        self.engine().estimate_keys(cf)
    }

    /// The value of `key` in `cf`.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine().get(cf, key)
    }

    /// The values of several keys of `cf`, in one batched lookup.
    pub fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.engine().multi_get(cf, keys)
    }

    /// Every entry of `cf` whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.engine().scan_prefix(cf, prefix)
    }

    /// Up to `limit` entries of `cf` from `start` on, in key order.
    pub fn scan_from(&self, cf: Cf, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.engine().scan_from(cf, start, limit)
    }

    /// Up to `limit` entries of `cf` backwards, from `start` (inclusive) or from the last one.
    pub fn scan_back(
        &self,
        cf: Cf,
        start: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.engine().scan_back(cf, start, limit)
    }

    /// The last entry of `cf` in key order.
    pub fn last(&self, cf: Cf) -> Result<Option<Entry>, StoreError> {
        self.engine().last(cf)
    }

    /// Applies `batch` atomically and durably (RocksDB: the WAL synced; PostgreSQL: committed,
    /// and replicated where synchronous replication is configured).
    pub fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        self.engine().write(batch)
    }

    /// Makes deleted entries physically leave the live store (RocksDB: flush and compaction;
    /// PostgreSQL: VACUUM of the tables involved).
    pub fn purge(&self, ranges: &[(Cf, Vec<u8>)]) -> Result<(), StoreError> {
        self.engine().purge(ranges)
    }

    /// The first live RocksDB table file holding `needle` in `cf`'s `prefix` range
    /// ([`RocksStore::file_holding`]); `None` on PostgreSQL, whose pages VACUUM has cleared.
    pub fn file_holding(
        &self,
        cf: Cf,
        prefix: &[u8],
        needle: &[u8],
    ) -> Result<Option<String>, StoreError> {
        match self.rocks() {
            Some(rocks) => rocks.file_holding(cf, prefix, needle),
            None => Ok(None),
        }
    }

    /// A consistent copy of the RocksDB database into `to` ([`RocksStore::checkpoint`]).
    pub fn checkpoint(&self, to: &Path) -> Result<(), StoreError> {
        match self.rocks() {
            Some(rocks) => rocks.checkpoint(to),
            None => Err(StoreError::Unsupported {
                backend: "postgres",
                what: "checkpoints (back PostgreSQL up with pg_basebackup and WAL archiving)",
            }),
        }
    }
}

/// RocksDB's gauges (bytes), summed over the column families.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Live table files.
    pub live_sst_bytes: u64,
    /// Memtables, active and immutable.
    pub memtable_bytes: u64,
    /// What compaction estimates it still has to rewrite.
    pub pending_compaction_bytes: u64,
    /// The shared block cache in use.
    pub block_cache_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_atomic_and_prefix_scan_stays_in_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put(Cf::Fields, b"aa1".to_vec(), b"x".to_vec());
        batch.put(Cf::Fields, b"aa2".to_vec(), b"y".to_vec());
        batch.put(Cf::Fields, b"ab1".to_vec(), b"z".to_vec());
        batch.put(Cf::Meta, b"m".to_vec(), b"v".to_vec());
        store.write(&batch).unwrap();
        let scanned = store.scan_prefix(Cf::Fields, b"aa").unwrap();
        assert_eq!(scanned.len(), 2);
        let got = store
            .multi_get(Cf::Fields, &[b"ab1", b"aa2", b"none"])
            .unwrap();
        assert_eq!(got, vec![Some(b"z".to_vec()), Some(b"y".to_vec()), None]);
    }

    #[test]
    fn memory_only_reads_refuse_the_disk_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = Batch::new();
            batch.put(Cf::Fields, b"k1".to_vec(), b"v1".to_vec());
            store.write(&batch).unwrap();
        }
        // Reopened, the write is in a table file (flushed at recovery) and no block is cached.
        let store = Store::open(dir.path()).unwrap();
        // MultiGet may find the block after all, or answer "may exist" (an empty value): never a
        // wrong value, never a false absence.
        match memory_only(|| store.multi_get(Cf::Fields, &[b"k1"])) {
            Ok(values) => assert_eq!(values, vec![Some(b"v1".to_vec())]),
            Err(e) => assert!(matches!(e, StoreError::NotInMemory)),
        }
        assert!(matches!(
            memory_only(|| store.get(Cf::Fields, b"k1")),
            Err(StoreError::NotInMemory)
        ));
        assert!(matches!(
            memory_only(|| store.scan_prefix(Cf::Fields, b"k")),
            Err(StoreError::NotInMemory)
        ));
        // Read once from disk, the block is cached; a new write sits in the memtable.
        assert_eq!(store.get(Cf::Fields, b"k1").unwrap(), Some(b"v1".to_vec()));
        let mut batch = Batch::new();
        batch.put(Cf::Fields, b"k2".to_vec(), b"v2".to_vec());
        store.write(&batch).unwrap();
        let got = memory_only(|| store.multi_get(Cf::Fields, &[b"k1", b"k2"]));
        assert_eq!(
            got.unwrap(),
            vec![Some(b"v1".to_vec()), Some(b"v2".to_vec())]
        );
        assert_eq!(
            memory_only(|| store.get(Cf::Fields, b"none")).unwrap(),
            None
        );
        // The restriction ends with the closure.
        assert!(store.scan_prefix(Cf::Fields, b"k").is_ok());
    }

    #[test]
    fn an_empty_point_read_in_memory_means_may_exist() {
        assert!(matches!(
            memory_only(|| rocks::checked_in_memory(Some(Vec::new()))),
            Err(StoreError::NotInMemory)
        ));
        assert_eq!(
            rocks::checked_in_memory(Some(Vec::new())).unwrap(),
            Some(Vec::new())
        );
        assert_eq!(
            memory_only(|| rocks::checked_in_memory(None)).unwrap(),
            None
        );
    }

    #[test]
    fn reopen_keeps_synced_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = Batch::new();
            batch.put(Cf::Keys, b"k".to_vec(), b"v".to_vec());
            store.write(&batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get(Cf::Keys, b"k").unwrap(), Some(b"v".to_vec()));
    }
}
