//! The embedded backend: RocksDB with one column family per [`Cf`], synced write batches, point
//! and prefix reads limited to memory on request, and the physical purge after a shred. The only
//! module that names `rocksdb`.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DB, DBCompressionType, Direction, ErrorKind, FlushOptions, IteratorMode,
    Options, ReadOptions, ReadTier, WriteBatch, WriteOptions,
};

use super::{Batch, Cf, Engine, Entry, Op, StoreError, StoreStats, in_memory_only, keys};

/// A point read's value, inside [`memory_only`] refusing an empty one. RocksDB's MultiGet answers
/// a key whose block is not cached with OK and an empty value ("may exist"), not Incomplete as Get
/// does. Reading an empty value again from the disk is always correct, and only costs a retry
/// should a value ever be empty.
pub(super) fn checked_in_memory(value: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, StoreError> {
    match value {
        Some(v) if v.is_empty() && in_memory_only() => Err(StoreError::NotInMemory),
        other => Ok(other),
    }
}

/// Options for one read: restricted to memory inside [`memory_only`].
fn read_options() -> ReadOptions {
    let mut opts = ReadOptions::default();
    if in_memory_only() {
        opts.set_read_tier(ReadTier::BlockCache);
    }
    opts
}

/// The vault's RocksDB database: the embedded backend.
pub struct RocksStore {
    db: DB,
    cache: Cache,
    path: PathBuf,
    // A secondary instance's own directory (its info log), removed when it closes.
    _secondary: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Shredding needs obsolete WAL files deleted at once, never archived or recycled: a WAL that
    // held a wrapped DEK must not outlive the flush that made it obsolete.
    opts.set_wal_ttl_seconds(0);
    opts.set_wal_size_limit_mb(0);
    opts.set_recycle_log_file_num(0);
    opts.set_keep_log_file_num(4);
    opts.set_max_log_file_size(8 << 20);
    // Table files written by flushes and compactions are synced a megabyte at a time, not all at
    // the end: a 64 MiB write-back burst queued ahead of the audit log's WAL sync stalled reads
    // for tens of milliseconds (the p99.9 of a paced load).
    opts.set_bytes_per_sync(1 << 20);
    // A WAL file lives until every column family with data in it has flushed; the audit CF fills
    // a memtable every few seconds while the meta and data CFs may not for hours, so without a
    // bound the WAL files (all the audit bytes again) grew to gigabytes (RocksDB's default is 4x
    // the write buffers). Past this, the column families holding the oldest WAL are flushed.
    opts.set_max_total_wal_size(128 << 20);
    opts
}

/// Bytes of the block cache that every column family shares, unless configured: enough for the
/// hot part of a large vault's fields and keys (a read that misses it is retried off the async
/// runtime), small beside the machine; allocated only as blocks are read.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 256 << 20;

impl Cf {
    /// Whether reads of this column family are point lookups of whole keys (fields, keys, the
    /// blind index), which a filter per table file answers "not here" without reading a block.
    fn point_reads(self) -> bool {
        matches!(
            self,
            Cf::Keys | Cf::Fields | Cf::Lookup | Cf::Shredded | Cf::Meta
        )
    }
}

/// Bits per key of the point-read column families' filters: a 1% false-positive rate.
const FILTER_BITS_PER_KEY: f64 = 10.0;

fn cf_options(cache: &Cache, cf: Cf) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    if cf.point_reads() {
        // Without a filter a point read looks into every level whose key range covers the key,
        // reading (or, in memory only, missing) a data block in each: with a million subjects
        // nearly every read on the runtime missed a block of a level that did not even hold the
        // key, and ran again on the blocking pool. Filters are held by the table readers, not in
        // the block cache, so a cached data block is then all a read needs.
        table.set_bloom_filter(FILTER_BITS_PER_KEY, false);
    }
    opts.set_block_based_table_factory(&table);
    // Values are ciphertext (incompressible); keeping them uncompressed also lets a byte scan of
    // the data directory prove that a shredded DEK is gone.
    opts.set_compression_type(DBCompressionType::None);
    opts.set_bottommost_compression_type(DBCompressionType::None);
    opts
}

impl RocksStore {
    /// Opens (creating when absent) the database in `path` with every column family.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_block_cache(path, DEFAULT_BLOCK_CACHE_BYTES)
    }

    /// [`RocksStore::open`] with a block cache of `bytes`, shared by every column family.
    pub fn open_with_block_cache(path: &Path, bytes: usize) -> Result<Self, StoreError> {
        Self::open_with(path, bytes, true, |opts, cfs| {
            DB::open_cf_descriptors(opts, path, cfs)
        })
    }

    /// Opens an existing database read-only, beside a running vault if need be: it takes no lock
    /// and sees the state as of opening (flushed files and the WAL).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, DEFAULT_BLOCK_CACHE_BYTES, false, |opts, cfs| {
            opts.create_if_missing(false);
            opts.create_missing_column_families(false);
            DB::open_cf_descriptors_read_only(opts, path, cfs, false)
        })
    }

    /// Opens a consistent read-only view of the database, beside a vault that may be running on
    /// it: a RocksDB secondary instance, caught up with the primary once, holding every table file
    /// of its view open (a plain read-only open races the primary's flushes and compactions and
    /// can fail on, or miss, a file the primary just replaced). Retried a few times should the
    /// primary delete a file between reading the manifest and opening it.
    pub fn open_snapshot(path: &Path) -> Result<Self, StoreError> {
        let mut last = None;
        for attempt in 0..5u32 {
            let secondary = tempfile::tempdir().map_err(|e| StoreError::Db {
                path: path.to_owned(),
                message: format!("cannot create the secondary instance's directory: {e}"),
            })?;
            let opened = Self::open_with(path, DEFAULT_BLOCK_CACHE_BYTES, false, |opts, cfs| {
                opts.create_if_missing(false);
                opts.create_missing_column_families(false);
                // Every table file stays open: the primary may delete it, the view keeps it.
                opts.set_max_open_files(-1);
                let db = DB::open_cf_descriptors_as_secondary(opts, path, secondary.path(), cfs)?;
                db.try_catch_up_with_primary()?;
                Ok(db)
            });
            match opened {
                Ok(mut store) => {
                    store._secondary = Some(secondary);
                    return Ok(store);
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
                }
            }
        }
        Err(last.unwrap_or(StoreError::MissingCf("audit")))
    }

    fn open_with(
        path: &Path,
        block_cache_bytes: usize,
        writable: bool,
        open: impl FnOnce(&mut Options, Vec<ColumnFamilyDescriptor>) -> Result<DB, rocksdb::Error>,
    ) -> Result<Self, StoreError> {
        let cache = Cache::new_lru_cache(block_cache_bytes);
        let mut opts = db_options();
        // A read-only view of a directory an older version wrote lacks the column families added
        // since (its vault creates them when it next opens the directory read-write): open what
        // exists, and answer reads of the rest as empty.
        let read_only = !writable;
        let existing = if read_only {
            DB::list_cf(&opts, path).unwrap_or_default()
        } else {
            Vec::new()
        };
        let cfs = Cf::ALL
            .iter()
            .filter(|cf| !read_only || existing.iter().any(|e| e == cf.name()))
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(&cache, *cf)))
            .collect();
        let db = open(&mut opts, cfs).map_err(|e| StoreError::Db {
            path: path.to_owned(),
            message: e.into_string(),
        })?;
        let store = Self {
            db,
            cache,
            path: path.to_owned(),
            _secondary: None,
        };
        for cf in Cf::ALL {
            if !(read_only && cf.added_later()) {
                store.cf(cf)?;
            }
        }
        Ok(store)
    }

    /// Whether `cf` exists (a read-only view of an older directory may lack one added since).
    pub fn has(&self, cf: Cf) -> bool {
        self.db.cf_handle(cf.name()).is_some()
    }

    fn cf(&self, cf: Cf) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(cf.name())
            .ok_or(StoreError::MissingCf(cf.name()))
    }

    fn err(&self, e: rocksdb::Error) -> StoreError {
        if e.kind() == ErrorKind::Incomplete && in_memory_only() {
            return StoreError::NotInMemory;
        }
        StoreError::Db {
            path: self.path.clone(),
            message: e.into_string(),
        }
    }

    /// RocksDB's own gauges, summed over the column families, for the metrics endpoint.
    pub fn stats(&self) -> StoreStats {
        let sum = |property: &str| {
            Cf::ALL
                .iter()
                .filter_map(|cf| self.cf(*cf).ok())
                .filter_map(|handle| self.db.property_int_value_cf(handle, property).ok()?)
                .sum()
        };
        StoreStats {
            live_sst_bytes: sum("rocksdb.live-sst-files-size"),
            memtable_bytes: sum("rocksdb.cur-size-all-mem-tables"),
            pending_compaction_bytes: sum("rocksdb.estimate-pending-compaction-bytes"),
            block_cache_bytes: self.cache.get_usage() as u64,
        }
    }
}

impl Engine for RocksStore {
    /// RocksDB's estimate of the number of keys in `cf` (cheap: from table properties and the
    /// memtables; exact only after compaction).
    fn estimate_keys(&self, cf: Cf) -> u64 {
        self.cf(cf)
            .ok()
            .and_then(|handle| {
                self.db
                    .property_int_value_cf(handle, "rocksdb.estimate-num-keys")
                    .ok()?
            })
            .unwrap_or(0)
    }

    /// The value of `key` in `cf`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf_opt(self.cf(cf)?, key, &read_options())
            .map_err(|e| self.err(e))
            .and_then(checked_in_memory)
    }

    /// The values of several keys of `cf`, in one batched lookup (RocksDB's MultiGet reading
    /// each needed block once and pinning values instead of copying them twice).
    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.db
            .batched_multi_get_cf_opt(self.cf(cf)?, keys.iter().copied(), false, &read_options())
            .into_iter()
            .map(|r| {
                r.map(|v| v.map(|pinned| pinned.to_vec()))
                    .map_err(|e| self.err(e))
                    .and_then(checked_in_memory)
            })
            .collect()
    }

    /// Every entry of `cf` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let mut read = read_options();
        if let Some(end) = keys::prefix_end(prefix) {
            read.set_iterate_upper_bound(end);
        }
        let iter = self.db.iterator_cf_opt(
            self.cf(cf)?,
            read,
            IteratorMode::From(prefix, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| self.err(e))?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(out)
    }

    /// Up to `limit` entries of `cf` from `start` on, in key order.
    fn scan_from(&self, cf: Cf, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let iter = self.db.iterator_cf_opt(
            self.cf(cf)?,
            read_options(),
            IteratorMode::From(start, Direction::Forward),
        );
        iter.take(limit)
            .map(|item| {
                item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }

    /// Up to `limit` entries of `cf` backwards, from `start` (inclusive) or from the last one.
    fn scan_back(
        &self,
        cf: Cf,
        start: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mode = start.map_or(IteratorMode::End, |k| {
            IteratorMode::From(k, Direction::Reverse)
        });
        self.db
            .iterator_cf_opt(self.cf(cf)?, read_options(), mode)
            .take(limit)
            .map(|item| {
                item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }

    /// The last entry of `cf` in key order.
    fn last(&self, cf: Cf) -> Result<Option<Entry>, StoreError> {
        let mut iter = self
            .db
            .iterator_cf_opt(self.cf(cf)?, read_options(), IteratorMode::End);
        match iter.next() {
            Some(Ok((k, v))) => Ok(Some((k.into_vec(), v.into_vec()))),
            Some(Err(e)) => Err(self.err(e)),
            None => Ok(None),
        }
    }

    /// Applies `batch` atomically and durably: the WAL is synced before this returns.
    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        for op in &batch.ops {
            match op {
                Op::Put(cf, key, value) => wb.put_cf(self.cf(*cf)?, key, value),
                Op::Delete(cf, key) => wb.delete_cf(self.cf(*cf)?, key),
                Op::DeleteRange(cf, from, to) => wb.delete_range_cf(self.cf(*cf)?, from, to),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts).map_err(|e| self.err(e))
    }

    /// Makes deleted entries physically leave the live store: flushes every column family (so the
    /// WAL files that held them become obsolete and are deleted, not archived), then forces a
    /// bottommost compaction of each `(cf, prefix)` range, which rewrites every SST that held them
    /// and deletes the old files.
    ///
    /// INVARIANT: the store holds no long-lived snapshot, iterator or checkpoint that could pin the
    /// old files; iterators here live only inside one call.
    fn purge(&self, ranges: &[(Cf, Vec<u8>)]) -> Result<(), StoreError> {
        fail::fail_point!("store-purge", |_| Err(StoreError::Db {
            path: self.path.clone(),
            message: "purge failed (injected)".into(),
        }));
        let handles = Cf::ALL
            .iter()
            .map(|cf| self.cf(*cf))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db
            .flush_cfs_opt(&handles, &flush)
            .map_err(|e| self.err(e))?;
        let mut compact = CompactOptions::default();
        compact.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        compact.set_exclusive_manual_compaction(false);
        for (cf, prefix) in ranges {
            let end = keys::prefix_end(prefix);
            self.db
                .compact_range_cf_opt(self.cf(*cf)?, Some(prefix), end.as_deref(), &compact);
        }
        Ok(())
    }
}

impl RocksStore {
    /// The first live table file of `cf` whose key range overlaps `prefix` and whose bytes hold
    /// `needle`; `None` when no live file does. Table files are uncompressed, and a key's leading
    /// bytes are written whole at least once per block, so a subject handle or a random id kept in
    /// a record shows up in any file that still holds the entry.
    pub fn file_holding(
        &self,
        cf: Cf,
        prefix: &[u8],
        needle: &[u8],
    ) -> Result<Option<String>, StoreError> {
        let end = keys::prefix_end(prefix);
        let files = self.db.live_files().map_err(|e| self.err(e))?;
        for file in files.iter().filter(|f| f.column_family_name == cf.name()) {
            let starts_before_end = match (&file.start_key, &end) {
                (Some(start), Some(end)) => start.as_slice() < end.as_slice(),
                _ => true,
            };
            let ends_after_start = file
                .end_key
                .as_ref()
                .is_none_or(|last| last.as_slice() >= prefix);
            if !(starts_before_end && ends_after_start) {
                continue;
            }
            let path = self.path.join(file.name.trim_start_matches('/'));
            let bytes = std::fs::read(&path).map_err(|e| StoreError::Db {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if !needle.is_empty() && memchr::memmem::find(&bytes, needle).is_some() {
                return Ok(Some(file.name.trim_start_matches('/').to_owned()));
            }
        }
        Ok(None)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a consistent copy of every column family as of now into `to` (which must not exist):
    /// a RocksDB checkpoint, its table files hard-linked when `to` is on the same file system and
    /// the memtables flushed first, so the copy needs no WAL replay and holds every synced write.
    pub fn checkpoint(&self, to: &Path) -> Result<(), StoreError> {
        let db_error = |e: rocksdb::Error| StoreError::Db {
            path: self.path.clone(),
            message: e.into_string(),
        };
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(db_error)?;
        checkpoint
            .create_checkpoint_with_log_size(to, 0)
            .map_err(db_error)
    }
}
