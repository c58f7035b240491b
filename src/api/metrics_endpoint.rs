//! `GET /metrics` on a listener of its own (`--metrics-listen`): the Prometheus text of
//! [`crate::metrics`], over plain HTTP/1.1 on loopback or over TLS with the server's certificate
//! (the caller decides which, as for the gRPC listener). Anything else is 404; nothing here reads
//! the vault's data, only its gauges.

use std::path::Path;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::vault::Vault;

/// The content type Prometheus expects of the text exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The TLS side of the metrics listener, from the server's certificate chain and key (PEM).
pub fn metrics_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, super::tls::TlsError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| super::tls::TlsError {
        path: if what == "key" { key } else { cert }.display().to_string(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cert", &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("cert", &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("cert", &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| bad("cert", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    vault: Arc<Vault>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (vault, tls) = (Arc::clone(&vault), tls.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let vault = Arc::clone(&vault);
                async move { Ok::<_, std::convert::Infallible>(answer(&vault, &request)) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let served = match tls {
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                    Err(_) => return,
                },
                None => http.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn answer<B>(vault: &Vault, request: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    if request.uri().path() != "/metrics" {
        *response.status_mut() = hyper::StatusCode::NOT_FOUND;
        return response;
    }
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        *response.status_mut() = hyper::StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    let metrics = crate::metrics::metrics();
    if let Ok(quarantined) = vault.quarantined() {
        metrics
            .quarantined_subjects
            .set(i64::try_from(quarantined.len()).unwrap_or(i64::MAX));
    }
    metrics
        .legal_holds
        .set(i64::try_from(vault.holds_in_force()).unwrap_or(i64::MAX));
    let text = metrics.render(vault.store_stats());
    *response.body_mut() = Full::new(Bytes::from(text));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}
