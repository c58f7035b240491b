//! The PostgreSQL backend: one table of `(k bytea, v bytea)` per [`Cf`] in the data schema
//! `privault`, the keyring and the deletion ledger in the keys schema `privault_keys`, a pooled
//! client (`deadpool-postgres` over `tokio-postgres`), versioned migrations, and the node lease.
//!
//! The vault calls storage from blocking threads. The pool and its connections live on a small
//! runtime of their own, and a call waits for its future on a channel: that works from any
//! thread, inside the server's runtime or outside any (the offline commands), without nesting
//! runtimes.

mod migrate;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode};

pub use migrate::{MIGRATIONS, Migration, SCHEMA_VERSION};

use super::{Batch, Cf, Engine, Entry, Op, StoreError, in_memory_only, keys::prefix_end};

/// The data schema: one table per column family.
pub const DATA_SCHEMA: &str = "privault";
/// The keys schema: the keyring (KEK epochs, index, lookup and audit keys, wrapped by the root
/// key) and the deletion ledger, apart from the data so that a dump of the data carries no KEK.
pub const KEYS_SCHEMA: &str = "privault_keys";

/// Advisory locks: the node-id lease (with the node id's hash as the second key), migrations, the
/// change log's order, and batches with preconditions (the shared audit chain's head).
const NODE_LOCK: i32 = 0x7076_6e64; // "pvnd"
const MIGRATE_LOCK: i64 = 0x7072_6976_6d69_6772; // "privmigr"
const CHANGES_LOCK: i64 = 0x7072_6976_6368_6e67; // "privchng"
const EXPECT_LOCK: i64 = 0x7072_6976_6578_7074; // "privexpt"
const ROLL_LOCK: i64 = 0x7072_6976_726f_6c6c; // "privroll"
const AUDIT_TURN_LOCK: i64 = 0x7072_6976_6175_6474; // "privaudt"

/// The turn to roll the KEK epoch: one node at a time. Held as a session lock on a connection of
/// its own, which closes (and so releases it) when this is dropped, or when the node dies.
pub struct RollLease {
    _client: deadpool_postgres::ClientWrapper,
}

impl std::fmt::Debug for RollLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RollLease")
    }
}

/// Meta keys that no node caches (the audit chain's own entries): writing them logs no change.
const UNCACHED_META: [&[u8]; 5] = [
    b"audit_head",
    super::keys::AUDIT_SEGMENT_PREFIX,
    super::keys::AUDIT_DEFS_PREFIX,
    super::keys::AUDIT_SEALED_PREFIX,
    super::keys::AUDIT_DROPPED_PREFIX,
];

/// The change-log entry naming the keyring (it is outside the data tables).
pub const KEYRING_CHANGED: &[u8] = b"#keyring";
/// The change-log entry naming the deletion ledger (legal holds live in it).
pub const LEDGER_CHANGED: &[u8] = b"#ledger";

/// What another node committed, as the change log records it.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// The subject handles whose keys, consents or receipts changed.
    pub sids: Vec<Vec<u8>>,
    /// The meta keys written, and [`KEYRING_CHANGED`] or [`LEDGER_CHANGED`].
    pub meta: Vec<Vec<u8>>,
}

/// The changes other nodes committed after a point of the log.
#[derive(Debug, Default)]
pub struct Changes {
    /// The last entry of the log read.
    pub through: u64,
    /// Other nodes' changes, in commit order.
    pub changes: Vec<Change>,
    /// More entries followed than one look reads: drop every cache.
    pub overflowed: bool,
}

/// Entries one look at the change log reads at most.
const CHANGES_PAGE: i64 = 10_000;

/// How to reach the database.
#[derive(Clone)]
pub struct PgConfig {
    /// A libpq-style URL or key=value string; several hosts and `target_session_attrs` are
    /// honoured, and `sslmode=require` turns TLS on.
    pub url: String,
    /// PEM file of the CA certificates the server's certificate must chain to (TLS); the
    /// system's roots when absent.
    pub ca_file: Option<std::path::PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long a call waits for a connection (a database that is down fails the call after it).
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PgConfig")
            .field("target", &target_of_url(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PgConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The vault's PostgreSQL database.
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    target: String,
    node: std::sync::OnceLock<String>,
    // The connection holding the audit turn between `begin_audit_turn` and `end_audit_turn`.
    audit_turn: Arc<tokio::sync::Mutex<Option<deadpool_postgres::ClientWrapper>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which the server's own runtime forbids.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `host:port/db` of a URL or key=value string, for messages: never the password.
fn target_of_url(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => target_of(&config),
        Err(_) => "(unparsable database url)".into(),
    }
}

fn target_of(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("(default)")
    )
}

fn pg_error(target: &str, e: &tokio_postgres::Error) -> StoreError {
    // Only the code and the primary message: DETAIL may quote key bytes.
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    StoreError::Postgres {
        target: target.to_owned(),
        message,
    }
}

fn pool_error(target: &str, e: &deadpool_postgres::PoolError) -> StoreError {
    let message = match e {
        deadpool_postgres::PoolError::Backend(e) => return pg_error(target, e),
        deadpool_postgres::PoolError::Timeout(_) => "no connection within the timeout".into(),
        other => other.to_string(),
    };
    StoreError::Postgres {
        target: target.to_owned(),
        message,
    }
}

/// The table of `cf`.
fn table(cf: Cf) -> String {
    format!("{DATA_SCHEMA}.{}", cf.name())
}

fn tls_config(ca_file: Option<&Path>) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(
        tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl PgStore {
    /// Connects the pool and checks that the schema is this version's; applies pending
    /// migrations first when `migrate` (otherwise an older schema is refused).
    pub fn connect(config: &PgConfig, migrate: bool) -> Result<Self, StoreError> {
        let store = Self::pool(config)?;
        let found = store.run(|pool, target| async move {
            let mut client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            if migrate {
                migrate::apply(&mut client, &target).await
            } else {
                migrate::current(&client, &target).await
            }
        })?;
        if found != SCHEMA_VERSION {
            return Err(StoreError::Postgres {
                target: store.target.clone(),
                message: format!(
                    "the schema is at version {found}, this version needs {SCHEMA_VERSION}: run \
                     `privault db migrate`"
                ),
            });
        }
        Ok(store)
    }

    /// Applies every pending migration; returns the versions found before and after.
    pub fn migrate(config: &PgConfig) -> Result<(u32, u32), StoreError> {
        let store = Self::pool(config)?;
        store.run(|pool, target| async move {
            let mut client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let before = migrate::current(&client, &target).await?;
            let after = migrate::apply(&mut client, &target).await?;
            Ok((before, after))
        })
    }

    /// The schema version the database is at (0 when empty).
    pub fn schema_version(config: &PgConfig) -> Result<u32, StoreError> {
        let store = Self::pool(config)?;
        store.run(|pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            migrate::current(&client, &target).await
        })
    }

    /// The pool and its runtime; connections are made as calls need them.
    fn pool(config: &PgConfig) -> Result<Self, StoreError> {
        let failed = |message: String| StoreError::Postgres {
            target: target_of_url(&config.url),
            message,
        };
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| failed(format!("bad database url: {e}")))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("privault");
        }
        let target = target_of(&pg);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("privault-pg")
            .enable_all()
            .build()
            .map_err(|e| failed(format!("cannot start the client runtime: {e}")))?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if pg.get_ssl_mode() == SslMode::Disable {
            Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
        } else {
            let tls = tls_config(config.ca_file.as_deref()).map_err(&failed)?;
            Manager::from_config(
                pg,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            )
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self {
            runtime: Some(runtime),
            pool,
            target,
            node: std::sync::OnceLock::new(),
            audit_turn: Arc::default(),
        })
    }

    /// Waits for this node's turn to append to the audit chain the nodes share: a session lock on
    /// a connection kept for it, so that groups of different nodes never chain on the same head
    /// (they would conflict and chain again). Held until [`PgStore::end_audit_turn`], or until the
    /// connection is lost.
    pub fn begin_audit_turn(&self) -> Result<(), StoreError> {
        self.audit_turn_lock("SELECT pg_advisory_lock($1)", true)
    }

    /// Ends the turn [`PgStore::begin_audit_turn`] began.
    pub fn end_audit_turn(&self) -> Result<(), StoreError> {
        self.audit_turn_lock("SELECT pg_advisory_unlock($1)", false)
    }

    /// Runs `sql` (a lock or an unlock of the audit turn) on the turn's connection, making one
    /// when `connect` and there is none; a failed one is dropped (a lost session holds no lock).
    fn audit_turn_lock(&self, sql: &'static str, connect: bool) -> Result<(), StoreError> {
        let turn = Arc::clone(&self.audit_turn);
        self.run(move |pool, target| async move {
            let mut held = turn.lock().await;
            if connect && held.as_ref().is_none_or(|c| c.is_closed()) {
                let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
                *held = Some(deadpool_postgres::Object::take(client));
            }
            let Some(client) = held.as_ref() else {
                return Ok(());
            };
            if let Err(e) = client.execute(sql, &[&AUDIT_TURN_LOCK]).await {
                *held = None;
                return Err(pg_error(&target, &e));
            }
            Ok(())
        })
    }

    /// The node this store writes for, in the change log ("" for offline tools).
    fn node(&self) -> String {
        self.node.get().cloned().unwrap_or_default()
    }

    /// Runs `op` on the client runtime and waits for it on this thread.
    fn run<T, F>(&self, op: impl FnOnce(Pool, String) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let future = op(self.pool.clone(), self.target.clone());
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(StoreError::Postgres {
                target: self.target.clone(),
                message: "the client runtime stopped".into(),
            });
        };
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Postgres {
                target: self.target.clone(),
                message: "the client runtime stopped".into(),
            })
        })
    }

    /// A read: refused inside [`super::memory_only`] (every read is a round trip), so that the
    /// api runs it on the blocking pool.
    fn read<T, F>(&self, op: impl FnOnce(Pool, String) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        if in_memory_only() {
            return Err(StoreError::NotInMemory);
        }
        self.run(op)
    }

    /// Takes the lease on `node`'s id: a session advisory lock held on a connection of its own
    /// for as long as this store lives, so that two processes never serve as one node (its
    /// changes are told apart from the others' by the id). Other nodes, under other ids, run
    /// beside it.
    pub fn take_node_lease(&self, node: &str) -> Result<(), StoreError> {
        let id = node.to_owned();
        self.run(|pool, target| async move {
            let client = match lease_on(&pool, &target, &id).await? {
                Some(client) => client,
                None => {
                    return Err(StoreError::Postgres {
                        target,
                        message: format!(
                            "another privault process serves this database as node `{id}`: \
                             give each node its own --node-id"
                        ),
                    });
                }
            };
            tokio::spawn(hold_lease(pool, target, id, client));
            Ok(())
        })?;
        let _ = self.node.set(node.to_owned());
        Ok(())
    }

    /// The turn to roll the KEK epoch, or `None` while another node has it.
    pub fn try_roll_lease(&self) -> Result<Option<RollLease>, StoreError> {
        self.run(|pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let taken: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&ROLL_LOCK])
                .await
                .map_err(|e| pg_error(&target, &e))?
                .get(0);
            if !taken {
                return Ok(None);
            }
            Ok(Some(RollLease {
                _client: deadpool_postgres::Object::take(client),
            }))
        })
    }

    /// The last entry of the change log (0 when empty): where a new node starts reading it.
    pub fn changes_head(&self) -> Result<u64, StoreError> {
        self.run(|pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let seq: i64 = client
                .query_one(
                    &format!("SELECT COALESCE(max(seq), 0) FROM {DATA_SCHEMA}.changes"),
                    &[],
                )
                .await
                .map_err(|e| pg_error(&target, &e))?
                .get(0);
            Ok(seq.max(0) as u64)
        })
    }

    /// The changes other nodes committed after entry `after` of the change log. Entries are
    /// numbered in commit order (they are written under a lock held to the commit), so a
    /// reader that saw entry n has seen every entry before it.
    pub fn changes_since(&self, after: u64) -> Result<Changes, StoreError> {
        let node = self.node();
        self.run(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let sql = format!(
                "SELECT seq, node, sids, meta FROM {DATA_SCHEMA}.changes WHERE seq > $1 \
                 ORDER BY seq LIMIT $2"
            );
            let statement = client
                .prepare_cached(&sql)
                .await
                .map_err(|e| pg_error(&target, &e))?;
            let rows = client
                .query(&statement, &[&(after as i64), &CHANGES_PAGE])
                .await
                .map_err(|e| pg_error(&target, &e))?;
            let mut out = Changes {
                through: after,
                overflowed: rows.len() as i64 >= CHANGES_PAGE,
                ..Changes::default()
            };
            for row in rows {
                out.through = row.get::<_, i64>(0) as u64;
                if row.get::<_, &str>(1) == node {
                    continue;
                }
                out.changes.push(Change {
                    sids: row.get(2),
                    meta: row.get(3),
                });
            }
            Ok(out)
        })
    }

    /// The keyring's text, if one was written.
    pub fn read_keyring(&self) -> Result<Option<String>, StoreError> {
        self.run(|pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let row = client
                .query_opt(
                    &format!("SELECT body FROM {KEYS_SCHEMA}.keyring WHERE id = 1"),
                    &[],
                )
                .await
                .map_err(|e| pg_error(&target, &e))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// Writes the keyring: `create` only when none exists (false when another node created one
    /// first), otherwise replaces it.
    pub fn write_keyring(&self, text: &str, create: bool) -> Result<bool, StoreError> {
        let text = text.to_owned();
        let node = self.node();
        self.run(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let sql = if create {
                format!(
                    "INSERT INTO {KEYS_SCHEMA}.keyring (id, body) VALUES (1, $1) \
                     ON CONFLICT (id) DO NOTHING"
                )
            } else {
                format!(
                    "UPDATE {KEYS_SCHEMA}.keyring SET body = $1, updated_at = now() WHERE id = 1"
                )
            };
            let changed = client
                .execute(&sql, &[&text])
                .await
                .map_err(|e| pg_error(&target, &e))?;
            log_change(&client, &target, &node, &[], &[KEYRING_CHANGED.to_vec()]).await?;
            if !create {
                // The replaced row version holds what the change removed (an epoch roll's
                // destroyed KEK): VACUUM FULL rewrites the one-row table into a new file and
                // unlinks the old one, rather than leaving the bytes in a page's free space.
                client
                    .batch_execute(&format!("VACUUM FULL {KEYS_SCHEMA}.keyring"))
                    .await
                    .map_err(|e| pg_error(&target, &e))?;
            }
            Ok(changed == 1)
        })
    }

    /// Every line of the deletion ledger, in order.
    pub fn ledger_lines(&self) -> Result<Vec<String>, StoreError> {
        self.run(|pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let rows = client
                .query(
                    &format!("SELECT line FROM {KEYS_SCHEMA}.ledger ORDER BY seq"),
                    &[],
                )
                .await
                .map_err(|e| pg_error(&target, &e))?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }

    /// Appends a line to the deletion ledger, committed before returning.
    pub fn append_ledger(&self, line: &str) -> Result<(), StoreError> {
        let line = line.to_owned();
        let node = self.node();
        self.run(move |pool, target| async move {
            let mut client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| pg_error(&target, &e))?;
            tx.execute(
                &format!("INSERT INTO {KEYS_SCHEMA}.ledger (line) VALUES ($1)"),
                &[&line],
            )
            .await
            .map_err(|e| pg_error(&target, &e))?;
            log_change(&tx, &target, &node, &[], &[LEDGER_CHANGED.to_vec()]).await?;
            tx.commit().await.map_err(|e| pg_error(&target, &e))
        })
    }
}

/// Takes the lease on node id `id` on a connection that leaves the pool for good; `None` when
/// another process holds it.
async fn lease_on(
    pool: &Pool,
    target: &str,
    id: &str,
) -> Result<Option<deadpool_postgres::ClientWrapper>, StoreError> {
    let client = pool.get().await.map_err(|e| pool_error(target, &e))?;
    let taken: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&NODE_LOCK, &id],
        )
        .await
        .map_err(|e| pg_error(target, &e))?
        .get(0);
    Ok(taken.then(|| deadpool_postgres::Object::take(client)))
}

/// Keeps the node's lease: checks its connection every second and, once it is lost (the
/// database restarted or failed over), takes the lease again on the database the URL now
/// reaches.
async fn hold_lease(
    pool: Pool,
    target: String,
    id: String,
    mut client: deadpool_postgres::ClientWrapper,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if client.simple_query("SELECT 1").await.is_ok() {
            continue;
        }
        tracing::warn!(node = id, "lost the connection holding the node's lease");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match lease_on(&pool, &target, &id).await {
                Ok(Some(again)) => {
                    client = again;
                    tracing::info!(node = id, "took the node's lease again");
                    break;
                }
                Ok(None) => {
                    tracing::error!(
                        node = id,
                        "another process holds this node's lease: two processes share a node id"
                    );
                }
                Err(_) => {}
            }
        }
    }
}

/// Appends an entry to the change log, in the caller's transaction: under a lock held to its
/// commit, so that entries are numbered in commit order.
async fn log_change(
    client: &impl deadpool_postgres::GenericClient,
    target: &str,
    node: &str,
    sids: &[Vec<u8>],
    meta: &[Vec<u8>],
) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGES_LOCK])
        .await
        .map_err(|e| pg_error(target, &e))?;
    client
        .execute(
            &format!(
                "INSERT INTO {DATA_SCHEMA}.changes (seq, node, sids, meta) \
                 SELECT COALESCE(max(seq), 0) + 1, $1, $2, $3 FROM {DATA_SCHEMA}.changes"
            ),
            &[&node, &sids, &meta],
        )
        .await
        .map_err(|e| pg_error(target, &e))?;
    Ok(())
}

/// What a batch changes that nodes cache: the subjects whose keys, consents or receipts it
/// writes, and the meta keys (but the audit chain's own).
fn cached_changes(batch: &Batch) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut sids: Vec<Vec<u8>> = Vec::new();
    let mut meta: Vec<Vec<u8>> = Vec::new();
    for op in &batch.ops {
        let (cf, key) = match op {
            Op::Put(cf, k, _) | Op::Delete(cf, k) | Op::DeleteRange(cf, k, _) => (*cf, k),
        };
        match cf {
            Cf::Keys | Cf::Consent | Cf::Shredded if key.len() >= 32 => {
                let sid = key[..32].to_vec();
                if !sids.contains(&sid) {
                    sids.push(sid);
                }
            }
            Cf::Meta
                if !UNCACHED_META.iter().any(|p| key.starts_with(p)) && !meta.contains(key) =>
            {
                meta.push(key.clone());
            }
            _ => {}
        }
    }
    (sids, meta)
}

fn scan_sql(cf: Cf, bounded: bool) -> String {
    let t = table(cf);
    if bounded {
        format!("SELECT k, v FROM {t} WHERE k >= $1 AND k < $2 ORDER BY k")
    } else {
        format!("SELECT k, v FROM {t} WHERE k >= $1 ORDER BY k")
    }
}

fn entries(rows: Vec<tokio_postgres::Row>) -> Vec<Entry> {
    rows.into_iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// A batch as statements: a statement per table and kind of change, so that a group of a few
/// hundred changes costs a few statements, not one each. Changes to distinct keys commute, so
/// within a stretch of the batch without range deletes only the last change to each key is kept;
/// a range delete ends the stretch and keeps its place, so a key written after it survives, as
/// in a RocksDB batch.
enum Statement {
    Put(Cf, Vec<Vec<u8>>, Vec<Vec<u8>>),
    Delete(Cf, Vec<Vec<u8>>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

impl Statement {
    fn sql(&self) -> String {
        match self {
            Statement::Put(cf, _, _) => format!(
                "INSERT INTO {} (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                table(*cf)
            ),
            Statement::Delete(cf, _) => format!("DELETE FROM {} WHERE k = ANY($1)", table(*cf)),
            Statement::DeleteRange(cf, _, _) => {
                format!("DELETE FROM {} WHERE k >= $1 AND k < $2", table(*cf))
            }
        }
    }
}

fn statements(batch: &Batch) -> Vec<Statement> {
    // Per column family (in `Cf::ALL` order), the last change to each key of the stretch.
    type Stretch = Vec<std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>>;
    fn flush(stretch: &mut Stretch, out: &mut Vec<Statement>) {
        for (cf, changes) in Cf::ALL.iter().zip(stretch.iter_mut()) {
            let mut keys = Vec::new();
            let mut values = Vec::new();
            let mut deleted = Vec::new();
            for (key, change) in std::mem::take(changes) {
                match change {
                    Some(value) => {
                        keys.push(key);
                        values.push(value);
                    }
                    None => deleted.push(key),
                }
            }
            if !deleted.is_empty() {
                out.push(Statement::Delete(*cf, deleted));
            }
            if !keys.is_empty() {
                out.push(Statement::Put(*cf, keys, values));
            }
        }
    }
    let index = |cf: &Cf| Cf::ALL.iter().position(|c| c == cf).unwrap_or(0);
    let mut stretch: Stretch = vec![Default::default(); Cf::ALL.len()];
    let mut out = Vec::new();
    for op in &batch.ops {
        match op {
            Op::Put(cf, k, v) => {
                stretch[index(cf)].insert(k.clone(), Some(v.clone()));
            }
            Op::Delete(cf, k) => {
                stretch[index(cf)].insert(k.clone(), None);
            }
            Op::DeleteRange(cf, from, to) => {
                flush(&mut stretch, &mut out);
                out.push(Statement::DeleteRange(*cf, from.clone(), to.clone()));
            }
        }
    }
    flush(&mut stretch, &mut out);
    out
}

impl Engine for PgStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.read(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let sql = format!("SELECT v FROM {} WHERE k = $1", table(cf));
            let statement = client
                .prepare_cached(&sql)
                .await
                .map_err(|e| pg_error(&target, &e))?;
            let row = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(|e| pg_error(&target, &e))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        let mut found = self.read(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let sql = format!("SELECT k, v FROM {} WHERE k = ANY($1)", table(cf));
            let statement = client
                .prepare_cached(&sql)
                .await
                .map_err(|e| pg_error(&target, &e))?;
            let rows = client
                .query(&statement, &[&wanted])
                .await
                .map_err(|e| pg_error(&target, &e))?;
            Ok(entries(rows).into_iter().collect::<HashMap<_, _>>())
        })?;
        Ok(keys
            .iter()
            .map(|k| found.get(*k).cloned().or_else(|| found.remove(*k)))
            .collect())
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let start = prefix.to_vec();
        let end = prefix_end(prefix);
        let mut out = self.read(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let statement = client
                .prepare_cached(&scan_sql(cf, end.is_some()))
                .await
                .map_err(|e| pg_error(&target, &e))?;
            let rows = match &end {
                Some(end) => client.query(&statement, &[&start, end]).await,
                None => client.query(&statement, &[&start]).await,
            }
            .map_err(|e| pg_error(&target, &e))?;
            Ok(entries(rows))
        })?;
        out.retain(|(k, _)| k.starts_with(prefix));
        Ok(out)
    }

    fn scan_from(&self, cf: Cf, start: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let start = start.to_vec();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let sql = format!(
                "SELECT k, v FROM {} WHERE k >= $1 ORDER BY k LIMIT $2",
                table(cf)
            );
            let statement = client
                .prepare_cached(&sql)
                .await
                .map_err(|e| pg_error(&target, &e))?;
            let rows = client
                .query(&statement, &[&start, &limit])
                .await
                .map_err(|e| pg_error(&target, &e))?;
            Ok(entries(rows))
        })
    }

    fn scan_back(
        &self,
        cf: Cf,
        start: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = start.map(<[u8]>::to_vec);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let t = table(cf);
            let rows = match &start {
                Some(start) => {
                    let sql =
                        format!("SELECT k, v FROM {t} WHERE k <= $1 ORDER BY k DESC LIMIT $2");
                    let statement = client
                        .prepare_cached(&sql)
                        .await
                        .map_err(|e| pg_error(&target, &e))?;
                    client.query(&statement, &[start, &limit]).await
                }
                None => {
                    let sql = format!("SELECT k, v FROM {t} ORDER BY k DESC LIMIT $1");
                    let statement = client
                        .prepare_cached(&sql)
                        .await
                        .map_err(|e| pg_error(&target, &e))?;
                    client.query(&statement, &[&limit]).await
                }
            }
            .map_err(|e| pg_error(&target, &e))?;
            Ok(entries(rows))
        })
    }

    fn last(&self, cf: Cf) -> Result<Option<Entry>, StoreError> {
        Ok(self.scan_back(cf, None, 1)?.into_iter().next())
    }

    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        fail::fail_point!("store-write", |_| Err(StoreError::Postgres {
            target: self.target.clone(),
            message: "write failed (injected)".into(),
        }));
        let statements = statements(batch);
        let expects = batch.expects.clone();
        let wrapped_under = batch.wrapped_under.clone();
        let (sids, meta) = cached_changes(batch);
        let node = self.node();
        self.run(move |pool, target| async move {
            let mut client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| pg_error(&target, &e))?;
            if !expects.is_empty() {
                // Writers with preconditions take turns, so a value checked here stays until
                // the commit.
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EXPECT_LOCK])
                    .await
                    .map_err(|e| pg_error(&target, &e))?;
                for (cf, key, wanted) in &expects {
                    let found: Option<Vec<u8>> = tx
                        .query_opt(
                            &format!("SELECT v FROM {} WHERE k = $1", table(*cf)),
                            &[key],
                        )
                        .await
                        .map_err(|e| pg_error(&target, &e))?
                        .map(|r| r.get(0));
                    if &found != wanted {
                        return Err(StoreError::Conflict(super::Conflict::Changed));
                    }
                }
            }
            if !wrapped_under.is_empty() {
                // FOR SHARE: a roll's keyring update waits for this commit, and once it has
                // committed this reads the rolled keyring.
                let current: i64 = tx
                    .query_one(
                        &format!(
                            "SELECT (body::jsonb ->> 'current_epoch')::bigint FROM \
                             {KEYS_SCHEMA}.keyring WHERE id = 1 FOR SHARE"
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error(&target, &e))?
                    .get(0);
                if wrapped_under.iter().any(|e| i64::from(*e) != current) {
                    return Err(StoreError::Conflict(super::Conflict::EpochRolled));
                }
            }
            let mut prepared = Vec::with_capacity(statements.len());
            for statement in &statements {
                prepared.push(
                    tx.prepare_cached(&statement.sql())
                        .await
                        .map_err(|e| pg_error(&target, &e))?,
                );
            }
            // Sent together (pipelined on the connection) and run in order by the server: one
            // round trip for the whole batch.
            let runs = statements
                .iter()
                .zip(&prepared)
                .map(|(statement, prepared)| {
                    let tx = &tx;
                    async move {
                        match statement {
                            Statement::Put(_, keys, values) => {
                                tx.execute(prepared, &[keys, values]).await
                            }
                            Statement::Delete(_, keys) => tx.execute(prepared, &[keys]).await,
                            Statement::DeleteRange(_, from, to) => {
                                tx.execute(prepared, &[from, to]).await
                            }
                        }
                    }
                });
            futures_util::future::try_join_all(runs)
                .await
                .map_err(|e| pg_error(&target, &e))?;
            if !sids.is_empty() || !meta.is_empty() {
                log_change(&tx, &target, &node, &sids, &meta).await?;
            }
            tx.commit().await.map_err(|e| pg_error(&target, &e))
        })
    }

    fn purge(&self, ranges: &[(Cf, Vec<u8>)]) -> Result<(), StoreError> {
        fail::fail_point!("store-purge", |_| Err(StoreError::Postgres {
            target: self.target.clone(),
            message: "purge failed (injected)".into(),
        }));
        let mut tables: Vec<String> = ranges.iter().map(|(cf, _)| table(*cf)).collect();
        tables.sort();
        tables.dedup();
        if tables.is_empty() {
            return Ok(());
        }
        // VACUUM removes the deleted rows' tuples from the heap and their index entries; it runs
        // outside a transaction, on a connection of the pool.
        self.run(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            client
                .batch_execute(&format!("VACUUM {}", tables.join(", ")))
                .await
                .map_err(|e| pg_error(&target, &e))
        })
    }

    fn estimate_keys(&self, cf: Cf) -> u64 {
        let name = table(cf);
        self.run(move |pool, target| async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, &e))?;
            let row = client
                .query_one(
                    "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::text::regclass",
                    &[&name],
                )
                .await
                .map_err(|e| pg_error(&target, &e))?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
        .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(batch: &Batch) -> Vec<String> {
        statements(batch)
            .iter()
            .map(|s| match s {
                Statement::Put(cf, keys, values) => format!(
                    "put {} {}",
                    cf.name(),
                    keys.iter()
                        .zip(values)
                        .map(|(k, v)| format!("{}={}", hex::encode(k), hex::encode(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Statement::Delete(cf, keys) => format!(
                    "delete {} {}",
                    cf.name(),
                    keys.iter().map(hex::encode).collect::<Vec<_>>().join(",")
                ),
                Statement::DeleteRange(cf, from, to) => {
                    format!(
                        "range {} {}..{}",
                        cf.name(),
                        hex::encode(from),
                        hex::encode(to)
                    )
                }
            })
            .collect()
    }

    #[test]
    fn a_batch_becomes_a_statement_per_table_and_kind_keeping_the_last_change_to_each_key() {
        let mut batch = Batch::new();
        batch.put(Cf::Audit, [1], [1]);
        batch.put(Cf::AuditIndex, [1], []);
        batch.put(Cf::Audit, [2], [2]);
        batch.put(Cf::Fields, [9], [1]);
        batch.delete(Cf::Fields, [9]);
        batch.delete(Cf::Keys, [5]);
        batch.put(Cf::Keys, [5], [7]);
        assert_eq!(
            shape(&batch),
            [
                "put keys 05=07",
                "delete fields 09",
                "put audit 01=01,02=02",
                "put audit_index 01=",
            ]
        );
    }

    #[test]
    fn a_range_delete_keeps_its_place_between_the_changes_around_it() {
        let mut batch = Batch::new();
        batch.put(Cf::Fields, [1, 1], [1]);
        batch.delete_range(Cf::Fields, [1], [2]);
        batch.put(Cf::Fields, [1, 2], [2]);
        assert_eq!(
            shape(&batch),
            [
                "put fields 0101=01",
                "range fields 01..02",
                "put fields 0102=02"
            ]
        );
    }
}
