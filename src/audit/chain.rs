//! The chain's head and appends, with group commit: one committer thread takes every commit queued
//! while it wrote the previous group, chains their records in arrival order, writes them with
//! their callers' changes as one atomic batch (one WAL sync), and hands each caller its seq (or
//! the shared error). The head moves only once that write is durable, so no caller learns its seq
//! before its record is on disk. An async task queues its record and awaits its durability without
//! parking a thread; a blocking caller that finds nothing queued and nothing being written writes
//! its own group on its thread (no hand-off for a lone write). One group is written at a time.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::AuditError;
use super::codec::{self, Interner, MAX_DICTIONARY};
use super::log::{Log, Sealed};
use super::record::{AuditEvent, chain_hash};
use super::segment::{self, Checkpoint};
use super::stored::{
    Dictionaries, GENESIS, SegmentStart, Stored, load_segment_dictionary, segment_start,
};
use crate::clock::Millis;
use crate::crypto::AuditSigner;
use crate::store::keys::{
    audit_defs_key, audit_index_key, audit_key, audit_sealed_key, audit_segment_key,
};
use crate::store::{Batch, Cf, Store};

const HEAD_KEY: &[u8] = b"audit_head";
/// The default size at which the log starts a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// A group write slower than this is logged.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(50);

/// A group of at least this many records means the log is under load: the committer then lets
/// the next group gather for [`GATHER_FOR`] before writing it (PostgreSQL's `commit_delay` with
/// `commit_siblings`, decided from the last group instead of a count of open transactions). A
/// lone record, and every record under light load, is written at once.
const GATHER_AFTER: usize = 8;

/// How long a group gathers under load. On the 2-core machine of docs/performance.md, half a
/// millisecond took groups from ~10 to ~24 records at saturation and GetFields from ~12.5k to
/// ~15k calls/s; a fsync there takes ~0.6 ms.
const GATHER_FOR: std::time::Duration = std::time::Duration::from_micros(500);

/// A group this large is written without gathering more.
const GATHER_UP_TO: usize = 256;

/// The last durable record, and the segment the next one goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: [u8; 32],
    /// The open segment.
    segment: u64,
    /// Bytes of records stored in the open segment.
    segment_bytes: u64,
}

/// `seq ‖ hash ‖ segment ‖ segment bytes`; format 1 stored only `seq ‖ hash` (its records are
/// all of segment 1).
fn decode_head(bytes: &[u8]) -> Option<Head> {
    let int = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let seq = int(0)?;
    let hash = bytes.get(8..40)?.try_into().ok()?;
    match bytes.len() {
        40 => Some(Head {
            seq,
            hash,
            segment: 1,
            segment_bytes: 0,
        }),
        56 => Some(Head {
            seq,
            hash,
            segment: int(40)?,
            segment_bytes: int(48)?,
        }),
        _ => None,
    }
}

fn encode_head(head: &Head) -> Vec<u8> {
    let mut out = Vec::with_capacity(56);
    out.extend_from_slice(&head.seq.to_be_bytes());
    out.extend_from_slice(&head.hash);
    out.extend_from_slice(&head.segment.to_be_bytes());
    out.extend_from_slice(&head.segment_bytes.to_be_bytes());
    out
}

/// What only the writer of groups touches: the open segment's dictionary.
struct Encoder {
    dict: Interner,
    segment_bytes_limit: u64,
}

/// The outcome handed to a committer: its record's seq, or why the group failed.
type GroupOutcome = Result<u64, String>;

/// Where a commit's outcome goes: a thread blocked on it, or an async task's ticket. Dropping it
/// unsent (the committer is gone) wakes the receiver with an error, never leaves it hanging.
enum Reply {
    Blocking(SyncSender<GroupOutcome>),
    Deferred(tokio::sync::oneshot::Sender<GroupOutcome>),
}

impl Reply {
    fn send(self, outcome: GroupOutcome) {
        // A receiver that went away (a cancelled call) no longer needs its outcome.
        match self {
            Self::Blocking(tx) => drop(tx.send(outcome)),
            Self::Deferred(tx) => drop(tx.send(outcome)),
        }
    }
}

/// A commit waiting for the committer.
struct Pending {
    batch: Batch,
    event: AuditEvent,
    now: Millis,
    reply: Reply,
}

/// A commit queued without waiting: resolves once its record is durable (or failed to be).
#[derive(Debug)]
pub struct CommitTicket(tokio::sync::oneshot::Receiver<GroupOutcome>);

impl CommitTicket {
    /// Waits on the async runtime until the record is durable; returns its seq.
    pub async fn durable(self) -> Result<u64, AuditError> {
        match self.0.await {
            Ok(result) => result.map_err(AuditError::GroupFailed),
            Err(_) => Err(AuditError::GroupFailed("audit committer gone".into())),
        }
    }
}

/// What callers and the committer share.
struct Queue {
    pending: Vec<Pending>,
    /// The committer sleeps on `wake`; only then does a caller pay for a wake-up.
    idle: bool,
    /// A group is being written (by the committer, or by a lone blocking caller).
    writing: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The last durable record.
    head: Mutex<Head>,
    /// The open segment's dictionary: only the holder of `writing` locks it.
    encoder: Mutex<Encoder>,
    /// The seq of the last durable record, for followers of the log.
    durable: tokio::sync::watch::Sender<u64>,
    /// Whether the last group write succeeded: health follows it.
    writable: tokio::sync::watch::Sender<bool>,
    /// Whether closed segments wait to be sealed.
    seal: Mutex<SealQueue>,
    seal_wake: Condvar,
    /// Held while sealing: one sealer at a time.
    sealing: Mutex<()>,
    /// Set when a group write failed: the write may have committed all the same (PostgreSQL
    /// answers a connection lost during COMMIT with an error either way), so the next group first
    /// reads the head and the open segment's dictionary back from the store.
    stale: std::sync::atomic::AtomicBool,
    sealed: Arc<Sealed>,
}

struct SealQueue {
    wanted: bool,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The appender: the head of the chain, the commit queue and the committer thread.
pub struct AuditLog {
    shared: Arc<Shared>,
    store: Arc<Store>,
    sealed: Arc<Sealed>,
    dicts: Dictionaries,
    committer: Option<JoinHandle<()>>,
    sealer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("head_seq", &self.head_seq())
            .finish()
    }
}

/// Loads the head of the chain and checks that it names the last stored record.
fn stored_head(log: Log<'_>) -> Result<Head, AuditError> {
    let stored = log.store.get(Cf::Meta, HEAD_KEY)?;
    let last = log.last()?;
    match (stored, last) {
        (None, None) => Ok(Head {
            seq: 0,
            hash: GENESIS,
            segment: 1,
            segment_bytes: 0,
        }),
        (Some(bytes), Some((seq, value))) => {
            let head =
                decode_head(&bytes).ok_or_else(|| AuditError::Corrupt("malformed head".into()))?;
            let last = Stored::parse(&value)
                .map_err(|_| AuditError::Corrupt("malformed last record".into()))?;
            if seq != head.seq || last.seq() != Some(head.seq) || last.hash() != Some(head.hash) {
                return Err(AuditError::Corrupt(format!(
                    "head names seq {} but the last record is seq {seq}",
                    head.seq,
                )));
            }
            Ok(head)
        }
        _ => Err(AuditError::Corrupt("head and records disagree".into())),
    }
}

/// The head `(seq, hash)` of `store`'s audit log, checked against its last record.
pub fn head_of(store: &Store) -> Result<(u64, [u8; 32]), AuditError> {
    let sealed = Sealed::load(store)?;
    let head = stored_head(Log {
        store,
        sealed: &sealed,
    })?;
    Ok((head.seq, head.hash))
}

/// What seals segments: the audit key, and the keyring it belongs to.
#[derive(Clone)]
pub struct SegmentSigner {
    /// The audit signing key.
    pub signer: AuditSigner,
    /// The keyring's id, bound into every checkpoint.
    pub keyring_id: [u8; 16],
}

/// How the log is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// A segment holding this many bytes of records is closed; the next record opens another.
    pub segment_bytes: u64,
    /// The live log's retention bound (none by default: the log keeps everything).
    pub retention: super::LogRetention,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retention: super::LogRetention::default(),
        }
    }
}

impl AuditLog {
    /// Loads the head, checks that it names the last stored record, rebuilds the open segment's
    /// dictionary from its records, and starts the committer.
    pub fn open(
        store: Arc<Store>,
        options: AuditOptions,
        signer: Option<SegmentSigner>,
    ) -> Result<Self, AuditError> {
        let sealed = Arc::new(Sealed::load(&store)?);
        let log = Log {
            store: &store,
            sealed: &sealed,
        };
        let head = stored_head(log)?;
        let dict = Interner::from_strings(load_segment_dictionary(log, head.segment)?);
        let (durable, _) = tokio::sync::watch::channel(head.seq);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                idle: false,
                writing: false,
                closed: false,
            }),
            wake: Condvar::new(),
            head: Mutex::new(head),
            encoder: Mutex::new(Encoder {
                dict,
                segment_bytes_limit: options.segment_bytes.max(1),
            }),
            durable,
            writable: tokio::sync::watch::channel(true).0,
            seal: Mutex::new(SealQueue {
                wanted: true,
                closed: false,
            }),
            seal_wake: Condvar::new(),
            sealing: Mutex::new(()),
            stale: std::sync::atomic::AtomicBool::new(false),
            sealed: Arc::clone(&sealed),
        });
        let sealer = match signer {
            None => None,
            Some(signer) => Some(
                std::thread::Builder::new()
                    .name("privault-audit-seal".into())
                    .spawn({
                        let shared = Arc::clone(&shared);
                        let store = Arc::clone(&store);
                        let sealed = Arc::clone(&sealed);
                        move || run_sealer(&shared, &store, &sealed, &signer)
                    })
                    .map_err(|e| {
                        AuditError::GroupFailed(format!("cannot start the sealer: {e}"))
                    })?,
            ),
        };
        let committer = std::thread::Builder::new()
            .name("privault-audit".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let store = Arc::clone(&store);
                move || run_committer(&shared, &store)
            })
            .map_err(|e| AuditError::GroupFailed(format!("cannot start the committer: {e}")))?;
        Ok(Self {
            shared,
            store,
            sealed,
            dicts: Dictionaries::default(),
            committer: Some(committer),
            sealer,
        })
    }

    /// Bytes of records in the open segment.
    pub(super) fn open_segment_bytes(&self) -> u64 {
        lock(&self.shared.head).segment_bytes
    }

    /// A reader of the whole log: live records and sealed segments.
    pub fn log(&self) -> Log<'_> {
        Log {
            store: &self.store,
            sealed: &self.sealed,
        }
    }

    /// Seals every closed segment now (the sealer does it on its own after each roll); for tests
    /// and tools that need the files at once.
    pub fn seal_now(&self, signer: &SegmentSigner) -> Result<usize, AuditError> {
        seal_closed(&self.shared, &self.store, &self.sealed, signer)
    }

    /// The dictionaries of the segments read, for decoding records.
    pub fn dictionaries(&self) -> &Dictionaries {
        &self.dicts
    }

    /// Follows the seq of the last durable record.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// Follows whether the log can be written: false from a failed group write until one
    /// succeeds again.
    pub fn writable(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.writable.subscribe()
    }

    /// Appends the record of `event` to `batch` and writes the batch durably; returns its seq.
    /// Concurrent commits share one synced write (group commit); each still returns only once its
    /// own record and changes are durable, and a failed write fails every commit of its group and
    /// moves the head by none of them. A caller that finds nothing queued and nothing being
    /// written writes its own group on its thread, saving the two thread wake-ups of a hand-off
    /// to the committer (a lone write's latency).
    pub fn commit(&self, batch: Batch, event: AuditEvent, now: Millis) -> Result<u64, AuditError> {
        let (tx, rx) = sync_channel(1);
        let pending = Pending {
            batch,
            event,
            now,
            reply: Reply::Blocking(tx),
        };
        let mut queue = lock(&self.shared.queue);
        if !queue.closed && !queue.writing && queue.pending.is_empty() {
            queue.writing = true;
            drop(queue);
            write_and_answer(&self.shared, &self.store, vec![pending]);
            finish_writing(&self.shared);
        } else {
            self.enqueue(queue, pending);
        }
        match rx.recv() {
            Ok(outcome) => outcome.map_err(AuditError::GroupFailed),
            Err(_) => Err(AuditError::GroupFailed("audit committer gone".into())),
        }
    }

    /// Queues the record of `event` (with `batch`) without waiting for it to be durable: the
    /// returned ticket resolves when it is. Reads use this to await durability on the async
    /// runtime instead of parking a thread.
    pub fn commit_deferred(&self, batch: Batch, event: AuditEvent, now: Millis) -> CommitTicket {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = Pending {
            batch,
            event,
            now,
            reply: Reply::Deferred(tx),
        };
        self.enqueue(lock(&self.shared.queue), pending);
        CommitTicket(rx)
    }

    /// Queues `pending` for the committer, under the queue's lock.
    fn enqueue(&self, mut queue: MutexGuard<'_, Queue>, pending: Pending) {
        if queue.closed {
            drop(queue);
            pending.reply.send(Err("the audit log is closed".into()));
            return;
        }
        queue.pending.push(pending);
        // While a lone caller writes, it wakes the committer itself when done.
        if queue.idle && !queue.writing {
            queue.idle = false;
            self.shared.wake.notify_one();
        }
    }

    /// The sequence number of the last durable record.
    pub fn head_seq(&self) -> u64 {
        lock(&self.shared.head).seq
    }

    /// The head: the last durable record's seq and hash.
    pub fn head(&self) -> (u64, [u8; 32]) {
        let head = *lock(&self.shared.head);
        (head.seq, head.hash)
    }
}

impl Drop for AuditLog {
    /// Writes what is queued, then stops the committer (it holds the store open until then).
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
        if let Some(committer) = self.committer.take()
            && committer.join().is_err()
        {
            tracing::error!("the audit committer panicked");
        }
        lock(&self.shared.seal).closed = true;
        self.shared.seal_wake.notify_one();
        if let Some(sealer) = self.sealer.take()
            && sealer.join().is_err()
        {
            tracing::error!("the audit sealer panicked");
        }
    }
}

/// The committer: writes every queued commit as one group, then the next, until closed and empty.
fn run_committer(shared: &Shared, store: &Store) {
    let mut last_group = 0;
    loop {
        let mut queue = lock(&shared.queue);
        while queue.pending.is_empty() || queue.writing {
            if queue.closed && queue.pending.is_empty() && !queue.writing {
                return;
            }
            queue.idle = true;
            queue = shared
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        queue.idle = false;
        queue.writing = true;
        if last_group >= GATHER_AFTER && queue.pending.len() < GATHER_UP_TO && !queue.closed {
            // Under load, one sync per few more records: what a record waits here is less than
            // a sync, and each sync saved is CPU the calls themselves need.
            drop(queue);
            std::thread::sleep(GATHER_FOR);
            queue = lock(&shared.queue);
        }
        let pending = std::mem::take(&mut queue.pending);
        drop(queue);
        last_group = pending.len();
        write_and_answer(shared, store, pending);
        lock(&shared.queue).writing = false;
    }
}

/// Ends a lone caller's write: wakes the committer if commits queued meanwhile (or to let it stop).
fn finish_writing(shared: &Shared) {
    let mut queue = lock(&shared.queue);
    queue.writing = false;
    if queue.idle && (!queue.pending.is_empty() || queue.closed) {
        queue.idle = false;
        shared.wake.notify_one();
    }
}

/// Writes `pending` as one group after the current head and answers each caller. Only the holder
/// of `writing` calls this, so groups are written one at a time, in order.
fn write_and_answer(shared: &Shared, store: &Store, pending: Vec<Pending>) {
    if shared.stale.load(std::sync::atomic::Ordering::SeqCst) {
        if let Err(e) = resync(shared, store) {
            shared.writable.send_replace(false);
            let message = format!("the audit log cannot read its head back: {e}");
            for p in pending {
                p.reply.send(Err(message.clone()));
            }
            return;
        }
        shared
            .stale
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
    let head = *lock(&shared.head);
    let (work, replies): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .map(|p| ((p.batch, p.event, p.now), p.reply))
        .unzip();
    let started = std::time::Instant::now();
    let mut head = head;
    let mut attempts = 0;
    // On PostgreSQL the nodes append to one chain: one node at a time, so that a group rarely
    // finds the head moved (only when another node wrote since this one's last group).
    let turn = store.postgres().map(|pg| (pg, pg.begin_audit_turn()));
    if let Some((_, Err(e))) = &turn {
        let message = format!("the audit log cannot take its turn: {e}");
        for reply in replies {
            reply.send(Err(message.clone()));
        }
        shared.writable.send_replace(false);
        return;
    }
    let written = loop {
        let written = {
            let mut encoder = lock(&shared.encoder);
            write_group(store, head, &mut encoder, &work)
        };
        match written {
            // Another node's group landed first (PostgreSQL, one chain shared by every node):
            // chain after it and try again.
            Err(GroupError::Conflict) if attempts < MAX_CONFLICTS => {
                attempts += 1;
                if let Err(e) = resync(shared, store) {
                    break Err(format!("the audit log cannot read its head back: {e}"));
                }
                head = *lock(&shared.head);
            }
            Err(GroupError::Conflict) => {
                break Err("the audit log's head kept moving under this node's writes".into());
            }
            Err(GroupError::Failed(message)) => break Err(message),
            Ok(done) => break Ok(done),
        }
    };
    if let Some((pg, Ok(()))) = &turn
        && let Err(e) = pg.end_audit_turn()
    {
        tracing::warn!(error = %e, "could not end the audit turn; its session is dropped");
    }
    let took = started.elapsed();
    if took >= SLOW_GROUP {
        // Every caller of the group waited this long: a slow disk shows here first.
        tracing::warn!(
            records = replies.len(),
            took_ms = took.as_millis(),
            "slow audit group write"
        );
    }
    let metrics = crate::metrics::metrics();
    metrics.audit_commit_duration.observe(took.as_secs_f64());
    metrics.audit_group_size.observe(replies.len() as f64);
    match &written {
        Ok(_) => metrics.audit_records.inc_by(replies.len() as u64),
        Err(_) => metrics.audit_failures.inc_by(replies.len() as u64),
    };
    let ok = written.is_ok();
    shared.writable.send_if_modified(|writable| {
        let changed = *writable != ok;
        *writable = ok;
        changed
    });
    match written {
        Ok((next, seqs)) => {
            *lock(&shared.head) = next;
            if next.segment != head.segment {
                lock(&shared.seal).wanted = true;
                shared.seal_wake.notify_one();
            }
            shared.durable.send_replace(next.seq);
            for (reply, seq) in replies.into_iter().zip(seqs) {
                reply.send(Ok(seq));
            }
        }
        Err(message) => {
            shared
                .stale
                .store(true, std::sync::atomic::Ordering::SeqCst);
            for reply in replies {
                reply.send(Err(message.clone()));
            }
        }
    }
}

/// Reads the head and the open segment's dictionary back from the store after a failed group:
/// the next record chains after what is durable, whether the failed group committed or not (its
/// callers were answered with an error, so nothing it covered left the vault).
fn resync(shared: &Shared, store: &Store) -> Result<(), AuditError> {
    let log = Log {
        store,
        sealed: &shared.sealed,
    };
    let head = stored_head(log)?;
    let dict = Interner::from_strings(load_segment_dictionary(log, head.segment)?);
    let before = std::mem::replace(&mut *lock(&shared.head), head);
    lock(&shared.encoder).dict = dict;
    if head.seq != before.seq {
        tracing::warn!(
            seq = head.seq,
            "a failed audit group had committed after all; the chain goes on after it"
        );
        shared.durable.send_replace(head.seq);
    }
    Ok(())
}

/// Why a group was not written.
enum GroupError {
    /// The head moved: another node wrote a group after the one this chained on.
    Conflict,
    /// Anything else, as told to the callers.
    Failed(String),
}

/// How often a group is chained again after another node's group landed first.
const MAX_CONFLICTS: u32 = 64;

/// Chains the records of `pending` after `head` and writes them, with their callers' changes, as
/// one synced batch: each record under its seq, its subject-index entry, a hint when it defines
/// dictionary strings, and the segment table's entry when it opens a segment. Returns the new
/// head and each commit's seq, in order, or the error; on an error the encoder is as before.
fn write_group(
    store: &Store,
    before: Head,
    encoder: &mut Encoder,
    pending: &[(Batch, AuditEvent, Millis)],
) -> Result<(Head, Vec<u64>), GroupError> {
    let mut head = before;
    let dict_before = encoder.dict.len();
    let mut replaced: Option<Interner> = None;
    let mut batch = Batch::new();
    let mut results = Vec::with_capacity(pending.len());
    // Written only over the head it chains on: on PostgreSQL other nodes append to the chain too.
    batch.expect(
        Cf::Meta,
        HEAD_KEY.to_vec(),
        (before.seq > 0).then(|| encode_head(&before)),
    );
    for (changes, event, now) in pending {
        let (event, now) = (event, *now);
        let seq = head.seq + 1;
        if head.segment_bytes >= encoder.segment_bytes_limit || encoder.dict.len() >= MAX_DICTIONARY
        {
            head.segment += 1;
            head.segment_bytes = 0;
            let old = std::mem::take(&mut encoder.dict);
            replaced.get_or_insert(old);
            let start = SegmentStart {
                segment: head.segment,
                first_seq: seq,
                prev_hash: head.hash,
            };
            batch.put(Cf::Meta, audit_segment_key(head.segment), start.encode());
        }
        let defined = encoder.dict.len();
        let mut bytes = codec::encode(seq, now, head.segment, event, &mut encoder.dict);
        let hash = chain_hash(&head.hash, &bytes);
        bytes.extend_from_slice(&hash);
        if encoder.dict.len() > defined {
            batch.put(Cf::Meta, audit_defs_key(head.segment, seq), Vec::new());
        }
        if let Some(subject) = &event.subject {
            batch.put(
                Cf::AuditIndex,
                audit_index_key(head.segment, &subject.0, seq),
                Vec::new(),
            );
        }
        batch.append(changes.clone());
        head.segment_bytes += bytes.len() as u64;
        batch.put(Cf::Audit, audit_key(seq).to_vec(), bytes);
        head.seq = seq;
        head.hash = hash;
        results.push(seq);
    }
    batch.put(Cf::Meta, HEAD_KEY.to_vec(), encode_head(&head));
    let written = (|| {
        fail::fail_point!("audit-write", |_| Err(GroupError::Failed(
            "audit write failed (injected)".into()
        )));
        store.write(&batch).map_err(|e| match e {
            crate::store::StoreError::Conflict(crate::store::Conflict::Changed) => {
                GroupError::Conflict
            }
            e => GroupError::Failed(AuditError::Store(e).to_string()),
        })?;
        // The commit landed but its answer was lost on the way back (a database connection
        // dropped during COMMIT): the caller sees a failure for a durable group.
        fail::fail_point!("audit-write-answer-lost", |_| Err(GroupError::Failed(
            "audit write answer lost (injected)".into()
        )));
        Ok(())
    })();
    match written {
        Ok(()) => Ok((head, results)),
        Err(e) => {
            // The records were not written: neither were the strings they defined.
            if let Some(old) = replaced {
                encoder.dict = old;
            }
            encoder.dict.truncate(dict_before);
            Err(e)
        }
    }
}

/// The sealer: seals closed segments whenever the committer opens a new one, until closed.
fn run_sealer(shared: &Shared, store: &Store, sealed: &Sealed, signer: &SegmentSigner) {
    loop {
        {
            let mut queue = lock(&shared.seal);
            while !queue.wanted && !queue.closed {
                queue = shared
                    .seal_wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.closed {
                return;
            }
            queue.wanted = false;
        }
        if let Err(e) = seal_closed(shared, store, sealed, signer) {
            // The records stay in the live column family, where they are as durable: sealing
            // is tried again at the next roll and at the next start.
            tracing::error!(error = %e, "could not seal an audit segment");
        }
    }
}

/// Seals every closed, unsealed segment in order; returns how many it sealed. A segment is copied
/// to its file (synced), made visible to readers, and only then, in one batch with its sealed
/// entry, deleted from the column family: a crash anywhere leaves it either live or sealed, and
/// sealing again overwrites a file no entry names.
fn seal_closed(
    shared: &Shared,
    store: &Store,
    sealed: &Sealed,
    signer: &SegmentSigner,
) -> Result<usize, AuditError> {
    if !sealed.seals() {
        return Ok(0);
    }
    let _one_at_a_time = lock(&shared.sealing);
    let open = lock(&shared.head).segment;
    let mut count = 0;
    for segment in 1..open {
        // Sealed means its entry is written (a seal that failed after its file was made visible
        // is done again).
        if store.get(Cf::Meta, &audit_sealed_key(segment))?.is_some() {
            continue;
        }
        let (Some(start), Some(next)) = (
            segment_start(store, segment)?,
            segment_start(store, segment + 1)?,
        ) else {
            return Err(AuditError::Corrupt(format!(
                "segment {segment} or the next is missing from the segment table"
            )));
        };
        let last_seq = next.first_seq - 1;
        let mut records = Vec::with_capacity((next.first_seq - start.first_seq) as usize);
        let mut at = start.first_seq;
        while at <= last_seq {
            let page = store.scan_from(Cf::Audit, &audit_key(at), 4096)?;
            if page.is_empty() {
                break;
            }
            for (key, value) in page {
                if key.as_slice() > audit_key(last_seq).as_slice() {
                    break;
                }
                if key != audit_key(at) {
                    return Err(AuditError::Corrupt(format!("record {at} is missing")));
                }
                records.push(value);
                at += 1;
            }
        }
        if at != last_seq + 1 {
            return Err(AuditError::Corrupt(format!("record {at} is missing")));
        }
        let last_hash = records
            .last()
            .and_then(|r| Stored::parse(r).ok())
            .and_then(|r| r.hash())
            .ok_or_else(|| AuditError::Corrupt(format!("record {last_seq} is unreadable")))?;
        if last_hash != next.prev_hash {
            return Err(AuditError::Corrupt(format!(
                "segment {} does not continue segment {segment}",
                segment + 1
            )));
        }
        let mut checkpoint = Checkpoint {
            segment,
            first_seq: start.first_seq,
            last_seq,
            prev_hash: start.prev_hash,
            last_hash,
            keyring_id: signer.keyring_id,
            public_key: signer.signer.public_key(),
            signature: [0; 64],
        };
        checkpoint.signature = signer
            .signer
            .sign_checkpoint(&signer.keyring_id, &checkpoint.body());
        let dir = sealed.dir();
        create_private_dir(dir)?;
        fail::fail_point!("audit-seal-before-file", |_| Err(AuditError::GroupFailed(
            "sealing failed (injected)".into()
        )));
        segment::write(dir, &checkpoint, &records)
            .map_err(|e| AuditError::GroupFailed(e.to_string()))?;
        sealed.add(checkpoint);
        fail::fail_point!("audit-seal-after-file", |_| Err(AuditError::GroupFailed(
            "sealing failed (injected)".into()
        )));
        let mut batch = Batch::new();
        batch.put(Cf::Meta, audit_sealed_key(segment), checkpoint.encode());
        batch.delete_range(
            Cf::Audit,
            audit_key(start.first_seq).to_vec(),
            audit_key(last_seq + 1).to_vec(),
        );
        store.write(&batch)?;
        tracing::info!(
            segment,
            first_seq = start.first_seq,
            last_seq,
            "sealed an audit segment"
        );
        count += 1;
    }
    Ok(count)
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), AuditError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(AuditError::GroupFailed(format!(
            "cannot create {}: {e}",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::audit::stored::verify;
    use crate::audit::vocab::Action;

    proptest::proptest! {
        #[test]
        fn stored_heads_and_records_never_panic_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let _ = decode_head(&bytes);
            let _ = Stored::parse(&bytes);
        }
    }

    #[test]
    fn concurrent_commits_share_writes_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log =
            Arc::new(AuditLog::open(Arc::clone(&store), AuditOptions::default(), None).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            let mut batch = Batch::new();
                            batch.put(Cf::Fields, format!("t{t}-{i}"), b"x".to_vec());
                            let event = AuditEvent::new(format!("p{t}"), Action::Write);
                            log.commit(batch, event, 1).unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let seqs: BTreeSet<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(seqs, (1..=400).collect(), "every commit got its own seq");
        assert_eq!(verify(&store).unwrap().0, 400);
        assert_eq!(log.head_seq(), 400);
        // Each caller's change landed with its record.
        assert_eq!(store.scan_prefix(Cf::Fields, b"t").unwrap().len(), 400);
        drop(log);
        assert_eq!(head_of(&store).unwrap().0, 400);
    }

    #[test]
    fn deferred_commits_resolve_once_durable_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log =
            Arc::new(AuditLog::open(Arc::clone(&store), AuditOptions::default(), None).unwrap());
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let event = || AuditEvent::new(format!("p{t}"), Action::Read);
                    let mut tickets = Vec::new();
                    for i in 0..40 {
                        if t % 2 == 0 && i % 4 == 0 {
                            log.commit(Batch::new(), event(), 1).unwrap();
                        } else {
                            tickets.push(log.commit_deferred(Batch::new(), event(), 1));
                        }
                    }
                    tickets
                })
            })
            .collect();
        let tickets: Vec<CommitTicket> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seqs: BTreeSet<u64> = runtime.block_on(async {
            let mut seqs = BTreeSet::new();
            for t in tickets {
                seqs.insert(t.durable().await.unwrap());
            }
            seqs
        });
        assert_eq!(seqs.len(), 6 * 40 - 3 * 10);
        assert_eq!(verify(&store).unwrap().0, 240);
    }

    fn signer() -> SegmentSigner {
        SegmentSigner {
            signer: AuditSigner::new(&crate::crypto::Key256::random().unwrap()),
            keyring_id: [7; 16],
        }
    }

    /// A log in a temp dir cut into segments of `segment_bytes`, with a sealer.
    fn sealing_log(segment_bytes: u64) -> (tempfile::TempDir, Arc<Store>, SegmentSigner, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let signer = signer();
        let options = AuditOptions {
            segment_bytes,
            ..AuditOptions::default()
        };
        let log = AuditLog::open(Arc::clone(&store), options, Some(signer.clone())).unwrap();
        (dir, store, signer, log)
    }

    fn subject_event(i: u64) -> AuditEvent {
        AuditEvent {
            subject: Some(crate::domain::Pseudonym([(i % 3) as u8; 16])),
            purpose: Some(format!("purpose-{}", i % 5)),
            ..AuditEvent::new(format!("Service::\"s{}\"", i % 4), Action::Read)
        }
    }

    #[test]
    fn closed_segments_are_sealed_into_signed_files_and_read_back_with_the_live_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let options = AuditOptions {
            segment_bytes: 600,
            ..AuditOptions::default()
        };
        let signer = signer();
        let log = AuditLog::open(Arc::clone(&store), options, Some(signer.clone())).unwrap();
        for i in 0..60 {
            log.commit(Batch::new(), subject_event(i), 1_000 + i)
                .unwrap();
        }
        log.seal_now(&signer).unwrap();
        let sealed = log.log().sealed.checkpoints();
        assert!(sealed.len() >= 5, "{} segments sealed", sealed.len());
        for pair in sealed.windows(2) {
            assert_eq!(pair[0].last_seq + 1, pair[1].first_seq);
            assert_eq!(pair[0].last_hash, pair[1].prev_hash);
        }
        // The sealed records left the column family; the log still reads whole.
        let live = store.scan_prefix(Cf::Audit, &[]).unwrap().len();
        assert!(live < 60 - sealed.len(), "{live} records still live");
        assert_eq!(verify(&store).unwrap().0, 60);
        let filter = crate::audit::AuditFilter {
            subject: Some(crate::domain::Pseudonym([1; 16])),
            limit: 100,
            ..Default::default()
        };
        let (records, _) = crate::audit::query(log.log(), log.dictionaries(), &filter).unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (1..=60).filter(|s| (s - 1) % 3 == 1).collect::<Vec<_>>()
        );
        assert!(records.iter().all(|r| r.event == subject_event(r.seq - 1)));
        // The chain continues on reopening, after the sealed segments.
        drop(log);
        let log = AuditLog::open(Arc::clone(&store), options, Some(signer)).unwrap();
        log.commit(Batch::new(), subject_event(60), 2_000).unwrap();
        drop(log);
        assert_eq!(verify(&store).unwrap().0, 61);
    }

    #[test]
    fn a_changed_or_missing_sealed_segment_is_reported_at_its_seq() {
        let (dir, store, signer, log) = sealing_log(600);
        for i in 0..30 {
            log.commit(Batch::new(), subject_event(i), 1_000 + i)
                .unwrap();
        }
        log.seal_now(&signer).unwrap();
        let second = log.log().sealed.checkpoints()[1];
        drop(log);
        let path = dir
            .path()
            .join("audit")
            .join(segment::file_name(second.segment));
        let original = std::fs::read(&path).unwrap();
        // A byte of the segment's second record changed.
        let mut changed = original.clone();
        let second_record_start = 8 + 4 + file_len_of_first(&original) + 4;
        changed[second_record_start + 10] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        let err = verify(&store).unwrap_err();
        assert_eq!(err.seq, second.first_seq + 1, "{err}");
        // The file removed: refused at the segment's first seq.
        std::fs::remove_file(&path).unwrap();
        let err = verify(&store).unwrap_err();
        assert_eq!(err.seq, second.first_seq, "{err}");
        assert!(!err.unreadable, "{err}");
        std::fs::write(&path, &original).unwrap();
        assert_eq!(verify(&store).unwrap().0, 30);
    }

    #[test]
    fn a_query_by_subject_reads_only_that_subjects_records() {
        let (_dir, _store, signer, log) = sealing_log(4096);
        let rare = crate::domain::Pseudonym([0xee; 16]);
        for i in 0..2000u64 {
            let mut event = subject_event(i);
            if i % 400 == 7 {
                event.subject = Some(rare);
            }
            log.commit(Batch::new(), event, 1_000 + i).unwrap();
        }
        log.seal_now(&signer).unwrap();
        assert!(log.log().sealed.checkpoints().len() > 5);
        let dicts = Dictionaries::default();
        let filter = crate::audit::AuditFilter {
            subject: Some(rare),
            limit: 100,
            ..Default::default()
        };
        let (records, next) = crate::audit::query(log.log(), &dicts, &filter).unwrap();
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![8, 408, 808, 1208, 1608]
        );
        assert_eq!(next, None);
        assert_eq!(dicts.decoded(), 5, "five records read of 2000");
    }

    #[test]
    fn the_log_reads_backwards_and_forwards_across_sealed_files_and_the_live_tail() {
        let (_dir, _store, signer, log) = sealing_log(600);
        for i in 0..60 {
            log.commit(Batch::new(), subject_event(i), 1_000 + i)
                .unwrap();
        }
        log.seal_now(&signer).unwrap();
        let reader = log.log();
        let seqs = |page: Vec<(u64, Vec<u8>)>| page.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(
            seqs(reader.scan_back(None, 1000).unwrap()),
            (1..=60).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(reader.scan_back(Some(30), 5).unwrap()),
            vec![30, 29, 28, 27, 26]
        );
        let mut forward = Vec::new();
        let mut next = 1;
        loop {
            let page = seqs(reader.scan_from(next, 7).unwrap());
            let Some(&last) = page.last() else { break };
            forward.extend(page);
            next = last + 1;
        }
        assert_eq!(forward, (1..=60).collect::<Vec<_>>());
        assert_eq!(reader.last().unwrap().map(|(s, _)| s), Some(60));
    }

    fn file_len_of_first(file: &[u8]) -> usize {
        u32::from_be_bytes(file[8..12].try_into().unwrap()) as usize
    }
}
