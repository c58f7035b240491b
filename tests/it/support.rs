//! Starts a real privault server (RocksDB on a temp dir, or with `PRIVAULT_TEST_STORE=postgres` a
//! database of a real PostgreSQL server; gRPC on a loopback port) and hands out clients that call
//! it as a given principal.

#[path = "support/postgres.rs"]
pub mod postgres;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use privault::api::pb::audit_client::AuditClient;
use privault::api::pb::policy_admin_client::PolicyAdminClient;
use privault::api::pb::vault_client::VaultClient;
use privault::api::pb::{self, FieldResult, Outcome};
use privault::api::{ServeOptions, serve_with};
use privault::clock::SystemClock;
use privault::vault::{OpenError, StoreConfig, Vault, VaultConfig};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// True (and says so) when the suite runs on PostgreSQL and the test is about the RocksDB data
/// directory itself: its files, copies of `db/`, the offline tools that read it.
pub fn skip_on_postgres(why: &str) -> bool {
    let skip = postgres::enabled();
    if skip {
        eprintln!("skipped on postgres: {why}");
    }
    skip
}

/// The example policies shipped in the repository.
pub fn shipped_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A data directory that outlives server restarts.
pub struct TestVault {
    pub dir: TempDir,
    pub config: VaultConfig,
}

impl TestVault {
    /// A vault on the backend the suite runs on.
    pub fn new() -> Self {
        if postgres::enabled() {
            Self::on_postgres(&postgres::shared().new_database())
        } else {
            Self::on_rocksdb()
        }
    }

    /// A vault on RocksDB in a temp dir, whatever the suite runs on.
    pub fn on_rocksdb() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = VaultConfig::new(dir.path().join("data"), shipped_policies());
        Self { dir, config }
    }

    /// A node of the vault in the PostgreSQL database at `url`, with a root key file of its own
    /// (a second node is given the same file with [`TestVault::node_of`]).
    pub fn on_postgres(url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = VaultConfig::new(dir.path().join("data"), shipped_policies());
        let key = dir.path().join("root.key");
        privault::keyring::keyfile::create_key_file(&key).unwrap();
        config.key_file = Some(key);
        let mut database = privault::store::PgConfig::new(url);
        database.pool_size = 4;
        config.store = StoreConfig::Postgres {
            database,
            node_id: "node-1".into(),
        };
        Self { dir, config }
    }

    /// Another node of this vault's PostgreSQL database: its own (empty) data directory and
    /// node id, the same root key.
    pub fn another_node(&self, node: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = self.config.clone();
        config.data_dir = dir.path().join("data");
        if let StoreConfig::Postgres { node_id, .. } = &mut config.store {
            *node_id = node.to_owned();
        }
        Self { dir, config }
    }

    /// The vault's storage, opened for writing (RocksDB: the server must be stopped), to look into
    /// or to tamper with.
    pub fn store(&self) -> privault::store::Store {
        match &self.config.store {
            StoreConfig::Rocksdb => privault::store::Store::open(&self.config.db_dir()).unwrap(),
            StoreConfig::Postgres { database, .. } => {
                privault::store::PgStore::connect(database, false)
                    .unwrap()
                    .into()
            }
        }
    }

    /// A read-only view of the vault's storage, beside a running server.
    pub fn store_view(&self) -> privault::store::Store {
        match &self.config.store {
            StoreConfig::Rocksdb => {
                privault::store::Store::open_snapshot(&self.config.db_dir()).unwrap()
            }
            StoreConfig::Postgres { .. } => self.store(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn open(&self) -> Result<Vault, OpenError> {
        Vault::open(&self.config, Arc::new(SystemClock))
    }

    /// Starts a server on a fresh loopback port.
    pub async fn start(&self) -> TestServer {
        self.start_with(ServeOptions::development()).await
    }

    /// Starts a server on a fresh loopback port with `options` (identity, TLS, limits).
    pub async fn start_with(&self, options: ServeOptions) -> TestServer {
        let vault = Arc::new(self.open().unwrap());
        let weak = Arc::downgrade(&vault);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            serve_with(vault, options, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            shutdown: Some(tx),
            handle,
            vault: weak,
        }
    }
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
    vault: Weak<Vault>,
}

#[derive(Clone)]
pub struct As {
    principal: Option<MetadataValue<Ascii>>,
    token: Option<MetadataValue<Ascii>>,
}

impl As {
    /// Sends `principal` (if any) as `x-privault-principal`.
    pub fn header(principal: Option<&str>) -> Self {
        Self {
            principal: principal.map(|p| p.parse().unwrap()),
            token: None,
        }
    }

    /// Sends `principal` and `authorization: Bearer <token>`.
    pub fn with_token(principal: &str, token: &str) -> Self {
        Self {
            principal: Some(principal.parse().unwrap()),
            token: Some(format!("Bearer {token}").parse().unwrap()),
        }
    }
}

impl Interceptor for As {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.principal {
            request
                .metadata_mut()
                .insert("x-privault-principal", v.clone());
        }
        if let Some(v) = &self.token {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type Client = VaultClient<InterceptedService<Channel, As>>;
pub type AdminClient = PolicyAdminClient<InterceptedService<Channel, As>>;
pub type AuditorClient = AuditClient<InterceptedService<Channel, As>>;

impl TestServer {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The running vault itself, for calls the server makes on its own (drop it before `stop`).
    pub fn vault(&self) -> Arc<Vault> {
        self.vault.upgrade().unwrap()
    }

    /// A client calling as `principal` (a Cedar uid such as `Service::"checkout"`).
    pub async fn client(&self, principal: &str) -> Client {
        VaultClient::with_interceptor(self.channel().await, As::header(Some(principal)))
    }

    /// A policy administration client calling as `principal`.
    pub async fn admin(&self, principal: &str) -> AdminClient {
        PolicyAdminClient::with_interceptor(self.channel().await, As::header(Some(principal)))
    }

    /// An audit client calling as `principal`.
    pub async fn auditor(&self, principal: &str) -> AuditorClient {
        AuditClient::with_interceptor(self.channel().await, As::header(Some(principal)))
    }

    /// A client that sends no principal header.
    pub async fn anonymous(&self) -> Client {
        VaultClient::with_interceptor(self.channel().await, As::header(None))
    }

    /// Stops the server and waits until the database is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.handle).await.unwrap();
        for _ in 0..500 {
            if self.vault.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("vault still open after shutdown");
    }
}

pub const ACCOUNT: &str = "Service::\"account\"";
pub const CHECKOUT: &str = "Service::\"checkout\"";
pub const RECOMMENDER: &str = "Service::\"recommender\"";
pub const SUPPORT: &str = "Service::\"support\"";
pub const MAILER: &str = "Service::\"mailer\"";
pub const FRAUD: &str = "Service::\"fraud\"";
pub const DPO: &str = "Operator::\"dpo\"";
pub const ALICE: &str = "Operator::\"alice\"";
pub const AUDITOR: &str = "Operator::\"auditor\"";

/// The shipped policy files, as a `PolicyFiles` message.
pub fn shipped_files() -> pb::PolicyFiles {
    let sources = privault::policy::load_sources(&shipped_policies()).unwrap();
    pb::PolicyFiles {
        schema: sources.schema,
        catalog: sources.catalog,
        policies: sources.policies.into_iter().collect(),
    }
}

pub fn put_request(subject: &str, purpose: &str, fields: &[(&str, &str)]) -> pb::PutFieldsRequest {
    pb::PutFieldsRequest {
        subject_id: subject.into(),
        purpose: purpose.into(),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

pub fn get_request(subject: &str, purpose: &str, fields: &[&str]) -> pb::GetFieldsRequest {
    pb::GetFieldsRequest {
        subject_id: subject.into(),
        purpose: purpose.into(),
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// Stores a full profile for `subject` as the account service.
pub async fn put_profile(server: &TestServer, subject: &str) {
    let mut account = server.client(ACCOUNT).await;
    account
        .put_fields(put_request(
            subject,
            "account",
            &[
                ("email", "alice@example.com"),
                ("phone", "+15551234567"),
                ("full_name", "Alice Example"),
                ("shipping_address", "1 Main St, Springfield"),
                ("payment_card", "4111111111111111"),
                ("favorite_categories", "books,tea"),
                ("last_ip", "203.0.113.7"),
            ],
        ))
        .await
        .unwrap();
}

/// Stores `fields` of `subject` as the account service.
pub async fn put_account(server: &TestServer, subject: &str, fields: &[(&str, &str)]) {
    server
        .client(ACCOUNT)
        .await
        .put_fields(put_request(subject, "account", fields))
        .await
        .unwrap();
}

/// Reads `fields` and returns the results.
pub async fn get(
    client: &mut Client,
    subject: &str,
    purpose: &str,
    fields: &[&str],
) -> Vec<FieldResult> {
    client
        .get_fields(get_request(subject, purpose, fields))
        .await
        .unwrap()
        .into_inner()
        .results
}

/// `(field, outcome, value)` of each result.
pub fn summary(results: &[FieldResult]) -> Vec<(String, Outcome, String)> {
    results
        .iter()
        .map(|r| (r.field.clone(), r.outcome(), r.value.clone()))
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

/// Every record an audit query returns, and the seq to continue from (0 at the end).
pub async fn audit_query(
    auditor: &mut AuditorClient,
    request: pb::AuditQueryRequest,
) -> (Vec<pb::AuditRecord>, u64) {
    let mut stream = auditor.query(request).await.unwrap().into_inner();
    let mut records = Vec::new();
    let mut next = 0;
    while let Some(m) = stream.message().await.unwrap() {
        match m.record {
            Some(r) => records.push(r),
            None => next = m.next_seq,
        }
    }
    (records, next)
}

/// Every audit record in `store`, in order, as the JSON view shows it.
pub fn audit_views(store: &privault::store::Store) -> Vec<privault::audit::RecordView> {
    let dicts = privault::audit::Dictionaries::default();
    let sealed = privault::audit::Sealed::load(store).unwrap();
    let log = privault::audit::Log {
        store,
        sealed: &sealed,
    };
    let mut filter = privault::audit::AuditFilter {
        limit: privault::audit::MAX_PAGE,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let (records, next) = privault::audit::query(log, &dicts, &filter).unwrap();
        out.extend(records.iter().map(privault::audit::AuditRecord::view));
        match next {
            Some(n) => filter.from_seq = n,
            None => return out,
        }
    }
}

/// The action of every audit record in `store`, in order.
pub fn audit_actions(store: &privault::store::Store) -> Vec<String> {
    audit_views(store).into_iter().map(|r| r.action).collect()
}

/// One field of `subject` read in process as `principal` for `purpose`.
pub fn read_field(
    v: &Vault,
    principal: &str,
    subject: &str,
    purpose: &str,
    field: &str,
) -> privault::vault::ReadOutcome {
    let ctx = privault::vault::CallContext {
        principal: privault::domain::Principal::parse_uid(principal).unwrap(),
        request_id: "test".into(),
        peer: None,
    };
    v.get(
        &ctx,
        &privault::domain::SubjectId::new(subject.into()).unwrap(),
        &privault::domain::Purpose::new(purpose).unwrap(),
        &[privault::domain::FieldName::new(field).unwrap()],
    )
    .unwrap()
    .remove(0)
    .outcome
}

/// The outcome of a read that found `text`.
pub fn value(text: &str) -> privault::vault::ReadOutcome {
    privault::vault::ReadOutcome::Value(zeroize::Zeroizing::new(text.to_owned()))
}
