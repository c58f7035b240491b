//! mTLS: the server's TLS configuration from PEM files (rustls through tonic, client certificates
//! required and verified against `--client-ca`), and the principal named by a client
//! certificate's SPIFFE URI SAN: `spiffe://<trust domain>/service/<name>` is `Service::"<name>"`,
//! `spiffe://<trust domain>/operator/<name>` is `Operator::"<name>"`.

use std::path::Path;

use tonic::transport::{Certificate, Identity as TlsIdentity, ServerTlsConfig};
use x509_cert::der::Decode;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::domain::{Principal, PrincipalKind};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS file `{path}`: {reason}")]
pub struct TlsError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError {
            path: path.display().to_string(),
            reason: "not a PEM file".into(),
        });
    }
    Ok(bytes)
}

/// The server side of mTLS: our certificate and key, and the CA every client certificate must
/// chain to. A client without a certificate, or with one that is expired or from another CA, fails
/// the handshake.
pub fn server_tls(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerTlsConfig, TlsError> {
    let identity = TlsIdentity::from_pem(read_pem(cert)?, read_pem(key)?);
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(read_pem(client_ca)?)))
}

/// Server-side TLS only (for token mode): clients verify us, tokens identify them.
pub fn server_tls_without_client_auth(
    cert: &Path,
    key: &Path,
) -> Result<ServerTlsConfig, TlsError> {
    Ok(ServerTlsConfig::new().identity(TlsIdentity::from_pem(read_pem(cert)?, read_pem(key)?)))
}

/// The principal named by the leaf certificate `der`, when its trust domain is `trust_domain`
/// (any, when `None`).
pub fn principal_of_certificate(
    der: &[u8],
    trust_domain: Option<&str>,
) -> Result<Principal, String> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|_| "unreadable certificate")?;
    let extensions = cert.tbs_certificate.extensions.unwrap_or_default();
    let mut uris = Vec::new();
    for ext in extensions
        .iter()
        .filter(|e| e.extn_id == SubjectAltName::OID)
    {
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
            .map_err(|_| "unreadable subject alternative name")?;
        for name in san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                uris.push(uri.as_str().to_owned());
            }
        }
    }
    let mut found = uris
        .iter()
        .filter_map(|u| principal_of_uri(u, trust_domain));
    match (found.next(), found.next()) {
        (Some(p), None) => p,
        (Some(_), Some(_)) => Err("the certificate names more than one privault principal".into()),
        (None, _) => Err(match trust_domain {
            Some(d) => format!(
                "the certificate has no URI SAN spiffe://{d}/service/<name> or spiffe://{d}/operator/<name>"
            ),
            None => "the certificate has no URI SAN spiffe://<trust domain>/service/<name> or \
                     .../operator/<name>"
                .into(),
        }),
    }
}

/// `Some` for a SPIFFE id of ours (in the trust domain), with the principal or why it is invalid.
fn principal_of_uri(uri: &str, trust_domain: Option<&str>) -> Option<Result<Principal, String>> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    if trust_domain.is_some_and(|d| d != domain) {
        return None;
    }
    let (kind, name) = path.split_once('/')?;
    let kind = match kind {
        "service" => PrincipalKind::Service,
        "operator" => PrincipalKind::Operator,
        _ => return None,
    };
    Some(Principal::new(kind, name).map_err(|e| format!("certificate URI SAN: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_map_to_principals() {
        let p = principal_of_uri("spiffe://shop.example/service/checkout", None)
            .unwrap()
            .unwrap();
        assert_eq!(p.to_string(), "Service::\"checkout\"");
        let p = principal_of_uri("spiffe://shop.example/operator/alice", Some("shop.example"))
            .unwrap()
            .unwrap();
        assert_eq!(p.to_string(), "Operator::\"alice\"");
        assert!(
            principal_of_uri("spiffe://other.example/service/x", Some("shop.example")).is_none()
        );
        assert!(principal_of_uri("https://shop.example/service/x", None).is_none());
        assert!(principal_of_uri("spiffe://shop.example/workload/x", None).is_none());
        assert!(
            principal_of_uri("spiffe://shop.example/service/a b", None)
                .unwrap()
                .is_err()
        );
    }
}
