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
use super::record::{AuditEvent, chain_hash};
use super::stored::{Dictionaries, GENESIS, SegmentStart, Stored, load_segment_dictionary};
use crate::clock::Millis;
use crate::store::keys::{
    audit_defs_key, audit_index_key, audit_key, audit_segment_key, audit_seq,
};
use crate::store::{Batch, Cf, Store};

const HEAD_KEY: &[u8] = b"audit_head";
/// The default size at which the log starts a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// A group write slower than this is logged.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(50);

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The appender: the head of the chain, the commit queue and the committer thread.
pub struct AuditLog {
    shared: Arc<Shared>,
    store: Arc<Store>,
    dicts: Dictionaries,
    committer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("head_seq", &self.head_seq())
            .finish()
    }
}

/// Loads the head of `store`'s chain and checks that it names the last stored record.
fn stored_head(store: &Store) -> Result<Head, AuditError> {
    let stored = store.get(Cf::Meta, HEAD_KEY)?;
    let last = store.last(Cf::Audit)?;
    match (stored, last) {
        (None, None) => Ok(Head {
            seq: 0,
            hash: GENESIS,
            segment: 1,
            segment_bytes: 0,
        }),
        (Some(bytes), Some((key, value))) => {
            let head =
                decode_head(&bytes).ok_or_else(|| AuditError::Corrupt("malformed head".into()))?;
            let last = Stored::parse(&value)
                .map_err(|_| AuditError::Corrupt("malformed last record".into()))?;
            if audit_seq(&key) != Some(head.seq)
                || last.seq() != Some(head.seq)
                || last.hash() != Some(head.hash)
            {
                return Err(AuditError::Corrupt(format!(
                    "head names seq {} but the last record is seq {}",
                    head.seq,
                    audit_seq(&key).unwrap_or_default()
                )));
            }
            Ok(head)
        }
        _ => Err(AuditError::Corrupt("head and records disagree".into())),
    }
}

/// The head `(seq, hash)` of `store`'s audit log, checked against its last record.
pub fn head_of(store: &Store) -> Result<(u64, [u8; 32]), AuditError> {
    let head = stored_head(store)?;
    Ok((head.seq, head.hash))
}

/// How the log is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// A segment holding this many bytes of records is closed; the next record opens another.
    pub segment_bytes: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

impl AuditLog {
    /// Loads the head, checks that it names the last stored record, rebuilds the open segment's
    /// dictionary from its records, and starts the committer.
    pub fn open(store: Arc<Store>, options: AuditOptions) -> Result<Self, AuditError> {
        let head = stored_head(&store)?;
        let dict = Interner::from_strings(load_segment_dictionary(&store, head.segment)?);
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
        });
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
            dicts: Dictionaries::default(),
            committer: Some(committer),
        })
    }

    /// The dictionaries of the segments read, for decoding records.
    pub fn dictionaries(&self) -> &Dictionaries {
        &self.dicts
    }

    /// Follows the seq of the last durable record.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable.subscribe()
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
    }
}

/// The committer: writes every queued commit as one group, then the next, until closed and empty.
fn run_committer(shared: &Shared, store: &Store) {
    loop {
        let pending = {
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
            std::mem::take(&mut queue.pending)
        };
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
    let head = *lock(&shared.head);
    let (work, replies): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .map(|p| ((p.batch, p.event, p.now), p.reply))
        .unzip();
    let started = std::time::Instant::now();
    let written = {
        let mut encoder = lock(&shared.encoder);
        write_group(store, head, &mut encoder, work)
    };
    let took = started.elapsed();
    if took >= SLOW_GROUP {
        // Every caller of the group waited this long: a slow disk shows here first.
        tracing::warn!(
            records = replies.len(),
            took_ms = took.as_millis(),
            "slow audit group write"
        );
    }
    match written {
        Ok((next, seqs)) => {
            *lock(&shared.head) = next;
            shared.durable.send_replace(next.seq);
            for (reply, seq) in replies.into_iter().zip(seqs) {
                reply.send(Ok(seq));
            }
        }
        Err(message) => {
            for reply in replies {
                reply.send(Err(message.clone()));
            }
        }
    }
}

/// Chains the records of `pending` after `head` and writes them, with their callers' changes, as
/// one synced batch: each record under its seq, its subject-index entry, a hint when it defines
/// dictionary strings, and the segment table's entry when it opens a segment. Returns the new
/// head and each commit's seq, in order, or the error; on an error the encoder is as before.
fn write_group(
    store: &Store,
    before: Head,
    encoder: &mut Encoder,
    pending: Vec<(Batch, AuditEvent, Millis)>,
) -> Result<(Head, Vec<u64>), String> {
    let mut head = before;
    let dict_before = encoder.dict.len();
    let mut replaced: Option<Interner> = None;
    let mut batch = Batch::new();
    let mut results = Vec::with_capacity(pending.len());
    for (changes, event, now) in pending {
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
        let mut bytes = codec::encode(seq, now, head.segment, &event, &mut encoder.dict);
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
        batch.append(changes);
        head.segment_bytes += bytes.len() as u64;
        batch.put(Cf::Audit, audit_key(seq).to_vec(), bytes);
        head.seq = seq;
        head.hash = hash;
        results.push(seq);
    }
    batch.put(Cf::Meta, HEAD_KEY.to_vec(), encode_head(&head));
    let written = (|| {
        fail::fail_point!("audit-write", |_| Err(
            "audit write failed (injected)".into()
        ));
        store
            .write(&batch)
            .map_err(|e| AuditError::Store(e).to_string())
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
        let log = Arc::new(AuditLog::open(Arc::clone(&store), AuditOptions::default()).unwrap());
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
        let log = Arc::new(AuditLog::open(Arc::clone(&store), AuditOptions::default()).unwrap());
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
}
