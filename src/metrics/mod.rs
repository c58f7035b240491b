//! The process's Prometheus metrics: one registry of typed families (`prometheus-client`),
//! updated where things happen (calls at the gRPC edge, decisions in the policy layer, the audit
//! committer, shreds and purges, token checks), and gauges read when scraped (RocksDB, the
//! process). No label carries a subject id, a pseudonym or a value: `rpc` is one of the served
//! methods (any other path is `other`), `code` a gRPC code, `action` and `outcome` closed enums.

mod process;

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::StoreStats;

/// A call's method and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `/package.Service/Method`, or `other`.
    pub rpc: &'static str,
    /// The gRPC code (`OK`, `PERMISSION_DENIED`...), or `CANCELLED` for a call dropped unfinished.
    pub code: &'static str,
}

/// A call's method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`, or `other`.
    pub rpc: &'static str,
}

/// One per-field policy decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The Cedar action (`read`, `read_masked`, `write`, `delete`).
    pub action: &'static str,
    /// `allow` or `deny`.
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn call_seconds() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric the vault exports.
pub struct Metrics {
    registry: Registry,
    /// `privault_requests_total{rpc,code}`.
    pub requests: Family<CallLabels, Counter>,
    /// `privault_request_duration_seconds{rpc}`, to the end of the response.
    pub request_duration: HistogramFamily<RpcLabels>,
    /// `privault_decisions_total{action,outcome}`.
    pub decisions: Family<DecisionLabels, Counter>,
    /// `privault_decision_cache_hits_total`.
    pub decision_cache_hits: Counter,
    /// `privault_decision_cache_misses_total`.
    pub decision_cache_misses: Counter,
    /// `privault_audit_records_total`: records made durable.
    pub audit_records: Counter,
    /// `privault_audit_commit_duration_seconds`: one synced group write.
    pub audit_commit_duration: Histogram,
    /// `privault_audit_group_size`: records per synced write.
    pub audit_group_size: Histogram,
    /// `privault_audit_failures_total`: records whose write failed (their calls failed closed).
    pub audit_failures: Counter,
    /// `privault_audit_retention_blocked`: 1 while the log is past its retention bound with a
    /// segment not archived.
    pub audit_retention_blocked: Gauge,
    /// `privault_shreds_total`.
    pub shreds: Counter,
    /// `privault_read_budget_denials_total`: subjects refused to a service past its read budget.
    pub read_budget_denials: Counter,
    /// `privault_canary_reads_total`: reads of a canary subject.
    pub canary_reads: Counter,
    /// `privault_purge_duration_seconds`: flushing and compacting shredded data away.
    pub purge_duration: Histogram,
    /// `privault_token_failures_total`: bearer tokens refused.
    pub token_failures: Counter,
    /// `privault_quarantined_subjects`: subjects set aside for failing their integrity checks
    /// (read when scraped).
    pub quarantined_subjects: Gauge,
    /// `privault_legal_holds`: legal holds in force (read when scraped).
    pub legal_holds: Gauge,
    /// `privault_extract_rows_total`: training-set rows handed out by `Vault/Extract`.
    pub extract_rows: Counter,
    /// `privault_epoch_roll_keys_remaining`: keys-CF entries a running epoch roll has still to
    /// examine (RocksDB's key estimate less those examined); 0 when no roll runs.
    pub epoch_roll_keys_remaining: Gauge,
    live_sst_bytes: Gauge,
    memtable_bytes: Gauge,
    pending_compaction_bytes: Gauge,
    block_cache_bytes: Gauge,
    resident_bytes: Gauge,
    open_fds: Gauge,
}

/// Sets a gauge back to 0 when dropped: a gauge of work in progress reads 0 however the work ends.
pub struct ResetOnDrop<'a>(pub &'a Gauge);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "privault_requests",
            "Calls by method and gRPC code",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RpcLabels> =
            Family::new_with_constructor(call_seconds);
        registry.register(
            "privault_request_duration_seconds",
            "Time from a call's arrival to the end of its response",
            request_duration.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "privault_decisions",
            "Per-field policy decisions by action and outcome",
            decisions.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let histogram = |registry: &mut Registry, name: &str, help: &str, h: Histogram| {
            registry.register(name, help, h.clone());
            h
        };
        Self {
            requests,
            request_duration,
            decisions,
            decision_cache_hits: counter(
                &mut registry,
                "privault_decision_cache_hits",
                "Field decisions answered from the decision cache",
            ),
            decision_cache_misses: counter(
                &mut registry,
                "privault_decision_cache_misses",
                "Field decisions evaluated by Cedar",
            ),
            audit_records: counter(
                &mut registry,
                "privault_audit_records",
                "Audit records made durable",
            ),
            audit_commit_duration: histogram(
                &mut registry,
                "privault_audit_commit_duration_seconds",
                "One synced write of a group of audit records",
                call_seconds(),
            ),
            audit_group_size: histogram(
                &mut registry,
                "privault_audit_group_size",
                "Audit records per synced write",
                Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            ),
            audit_failures: counter(
                &mut registry,
                "privault_audit_failures",
                "Audit records whose write failed; their calls failed closed",
            ),
            audit_retention_blocked: gauge(
                &mut registry,
                "privault_audit_retention_blocked",
                "1 while the audit log is past its retention bound with a segment not archived",
            ),
            shreds: counter(&mut registry, "privault_shreds", "Subjects shredded"),
            read_budget_denials: counter(
                &mut registry,
                "privault_read_budget_denials",
                "Subject reads refused to a service past its read budget",
            ),
            canary_reads: counter(
                &mut registry,
                "privault_canary_reads",
                "Reads of a canary subject (an exfiltration alarm)",
            ),
            purge_duration: histogram(
                &mut registry,
                "privault_purge_duration_seconds",
                "Flushing and compacting shredded data off the disk",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            token_failures: counter(
                &mut registry,
                "privault_token_failures",
                "Bearer tokens refused",
            ),
            quarantined_subjects: gauge(
                &mut registry,
                "privault_quarantined_subjects",
                "Subjects set aside because their stored entries fail their integrity checks",
            ),
            legal_holds: gauge(
                &mut registry,
                "privault_legal_holds",
                "Legal holds in force (each keeps a subject's key class through a shred)",
            ),
            extract_rows: counter(
                &mut registry,
                "privault_extract_rows",
                "Training-set rows handed out by Vault/Extract",
            ),
            epoch_roll_keys_remaining: gauge(
                &mut registry,
                "privault_epoch_roll_keys_remaining",
                "Keys a running KEK epoch roll has still to examine (an estimate; 0 when none runs)",
            ),
            live_sst_bytes: gauge(
                &mut registry,
                "privault_rocksdb_live_sst_bytes",
                "Bytes of live RocksDB table files",
            ),
            memtable_bytes: gauge(
                &mut registry,
                "privault_rocksdb_memtable_bytes",
                "Bytes of RocksDB memtables",
            ),
            pending_compaction_bytes: gauge(
                &mut registry,
                "privault_rocksdb_pending_compaction_bytes",
                "Bytes RocksDB estimates compaction has still to rewrite",
            ),
            block_cache_bytes: gauge(
                &mut registry,
                "privault_rocksdb_block_cache_bytes",
                "Bytes of the RocksDB block cache in use",
            ),
            resident_bytes: gauge(
                &mut registry,
                "privault_process_resident_memory_bytes",
                "Resident set size of the process",
            ),
            open_fds: gauge(
                &mut registry,
                "privault_process_open_fds",
                "File descriptors the process holds open",
            ),
            registry,
        }
    }

    /// Counts one per-field decision, and whether the cache answered it.
    pub fn decided(&self, action: &'static str, allowed: bool, cached: bool) {
        let outcome = if allowed { "allow" } else { "deny" };
        self.decisions
            .get_or_create(&DecisionLabels { action, outcome })
            .inc();
        if cached {
            self.decision_cache_hits.inc();
        } else {
            self.decision_cache_misses.inc();
        }
    }

    /// The text exposition (OpenMetrics text, which Prometheus scrapes), with the scrape-time
    /// gauges read now: `store`'s when given, and the process's.
    pub fn render(&self, store: Option<StoreStats>) -> String {
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        if let Some(s) = store {
            set(&self.live_sst_bytes, s.live_sst_bytes);
            set(&self.memtable_bytes, s.memtable_bytes);
            set(&self.pending_compaction_bytes, s.pending_compaction_bytes);
            set(&self.block_cache_bytes, s.block_cache_bytes);
        }
        let process = process::read();
        set(&self.resident_bytes, process.resident_bytes);
        set(&self.open_fds, process.open_fds);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
