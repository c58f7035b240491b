//! The gRPC edge: authenticates the caller, converts proto messages into domain types and back,
//! runs the vault off the async runtime, and maps errors to status codes. No rules live here.

mod audit_service;
mod backup_service;
mod convert;
mod debug;
mod edge;
mod identity;
mod key_service;
mod metrics_endpoint;
mod observe;
mod peers;
mod policy_service;
mod service;
mod status;
pub use status::{ERROR_DOMAIN, POLICY_DENIED};
pub mod tls;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Server, ServerTlsConfig};

pub use audit_service::AuditService;
pub use backup_service::{BackupService, manifest_from_message, manifest_message};
pub use edge::Edge;
pub use identity::{AUTHORIZATION_HEADER, Identity, PRINCIPAL_HEADER};
pub use key_service::KeyService;
pub use metrics_endpoint::{metrics_tls, serve_metrics};
pub use policy_service::PolicyAdminService;
pub use service::VaultService;

use crate::vault::Vault;

/// The generated `privault.v1` types.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("privault.v1");
    include!(concat!(env!("OUT_DIR"), "/privault.v1.serde.rs"));

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/privault_descriptor.bin"));
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from our descriptors.
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Accepted connections with Nagle's algorithm off: small gRPC responses written in several
/// pieces would otherwise wait for the peer's delayed ACK (about 40 ms each).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// What a response may carry beyond its values (field names, policy ids, framing).
const RESPONSE_SLACK_BYTES: usize = 1024 * 1024;

/// How the server meets its callers.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How callers are authenticated.
    pub identity: Identity,
    /// TLS (with client certificates for [`Identity::Certificate`]); `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Largest request message accepted, in bytes; a larger one is RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// Calls one peer address may have in flight; more are RESOURCE_EXHAUSTED.
    pub max_concurrent_per_peer: usize,
    /// Longest a call may run; a client's shorter `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// How long in-flight calls may drain after shutdown begins; then the rest are cut off.
    pub shutdown_grace: Duration,
}

impl ServeOptions {
    /// Development mode with the default limits.
    pub fn development() -> Self {
        Self {
            identity: Identity::Development,
            tls: None,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_per_peer: 256,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Serves the vault in development mode with the default limits; see [`serve_with`].
pub async fn serve(
    vault: Arc<Vault>,
    identity: Identity,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let options = ServeOptions {
        identity,
        ..ServeOptions::development()
    };
    serve_with(vault, options, listener, shutdown).await
}

/// Serves the vault, health and reflection on `listener` until `shutdown` resolves, then drains
/// in-flight calls and returns.
pub async fn serve_with(
    vault: Arc<Vault>,
    options: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in HEALTH_SERVICES {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    tokio::spawn(report_audit_retention(
        reporter.clone(),
        vault.audit_retention_blocked(),
    ));
    let drain_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(report_audit_writable(
        reporter.clone(),
        vault.audit_writable(),
        Arc::clone(&drain_flag),
    ));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // Responses are bounded too: the vault refuses a read past its byte budget of values, and
    // names, policy ids and framing get the slack on top.
    let max_out = vault
        .limits()
        .max_response_bytes
        .saturating_add(RESPONSE_SLACK_BYTES)
        .max(options.max_message_bytes);
    let edge = Edge::new(vault, options.identity, options.max_concurrent_per_peer);
    let max = options.max_message_bytes;
    let policy_service =
        pb::policy_admin_server::PolicyAdminServer::new(PolicyAdminService::new(edge.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max_out);
    let (stop_tails, tails_stop) = tokio::sync::watch::channel(false);
    let audit_service =
        pb::audit_server::AuditServer::new(AuditService::new(edge.clone(), tails_stop))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max_out);
    let key_service = pb::key_admin_server::KeyAdminServer::new(KeyService::new(edge.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max_out);
    let backup_service = pb::backup_server::BackupServer::new(BackupService::new(edge.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max_out.max(2 << 20));
    let vault_service = pb::vault_server::VaultServer::new(VaultService::new(edge))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max_out);
    let mut builder = Server::builder().timeout(options.request_timeout);
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    let mut builder = builder.layer(observe::ObserveLayer);
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        drain_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        drain_health(reporter).await;
        // A tail follows the log forever: it ends, telling its reader where to resume.
        let _ = stop_tails.send(true);
        let _ = draining.send(());
    };
    let serve = builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(vault_service)
        .add_service(policy_service)
        .add_service(audit_service)
        .add_service(key_service)
        .add_service(backup_service)
        .serve_with_incoming_shutdown(incoming(listener), shutdown);
    let grace = options.shutdown_grace;
    let grace_over = async move {
        if drain_started.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serve => served?,
        () = grace_over => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "calls still open after the shutdown grace period; closing them"
            );
        }
    }
    Ok(())
}

/// The health name that turns NOT_SERVING while the audit log is past its retention bound with a
/// segment not archived (the vault still serves; the disk is filling).
pub const AUDIT_RETENTION_HEALTH: &str = "privault.audit.retention";

async fn report_audit_retention(
    reporter: tonic_health::server::HealthReporter,
    mut blocked: tokio::sync::watch::Receiver<Option<u64>>,
) {
    loop {
        let status = if blocked.borrow_and_update().is_some() {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        };
        reporter
            .set_service_status(AUDIT_RETENTION_HEALTH, status)
            .await;
        if blocked.changed().await.is_err() {
            return;
        }
    }
}

/// While the audit log cannot be written, every read fails closed: the server and every service
/// report NOT_SERVING (load balancers send calls elsewhere) until a write succeeds again.
async fn report_audit_writable(
    reporter: tonic_health::server::HealthReporter,
    mut writable: tokio::sync::watch::Receiver<bool>,
    draining: Arc<std::sync::atomic::AtomicBool>,
) {
    while writable.changed().await.is_ok() {
        let ok = *writable.borrow_and_update();
        if draining.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let status = if ok {
            tonic_health::ServingStatus::Serving
        } else {
            tracing::error!("the audit log cannot be written: health NOT_SERVING until it can");
            tonic_health::ServingStatus::NotServing
        };
        for name in HEALTH_SERVICES {
            reporter.set_service_status(name, status).await;
        }
    }
}

/// The names `grpc.health.v1.Health` answers for: the server as a whole and each service.
const HEALTH_SERVICES: [&str; 6] = [
    "",
    <pb::vault_server::VaultServer<VaultService> as tonic::server::NamedService>::NAME,
    <pb::policy_admin_server::PolicyAdminServer<PolicyAdminService> as tonic::server::NamedService>::NAME,
    <pb::audit_server::AuditServer<AuditService> as tonic::server::NamedService>::NAME,
    <pb::key_admin_server::KeyAdminServer<KeyService> as tonic::server::NamedService>::NAME,
    <pb::backup_server::BackupServer<BackupService> as tonic::server::NamedService>::NAME,
];

/// The first step of a shutdown: every health status turns NOT_SERVING (load balancers stop
/// sending calls), then the statuses are cleared, which ends every `Health/Watch` stream: an open
/// watch would otherwise hold its connection, and the drain, forever.
async fn drain_health(mut reporter: tonic_health::server::HealthReporter) {
    for name in HEALTH_SERVICES {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    for name in HEALTH_SERVICES.into_iter().chain([AUDIT_RETENTION_HEALTH]) {
        reporter.clear_service_status(name).await;
    }
}
