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

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    /// One or more certificates.
    Certificates,
    /// A private key.
    Key,
}

/// Reads `path`, checked by `rustls-pki-types`' PEM parser to hold what `kind` says, so a wrong
/// or empty file is refused at start with its name instead of failing every handshake later.
fn read_pem(path: &Path, kind: Pem) -> Result<Vec<u8>, TlsError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |reason: String| TlsError {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    match kind {
        Pem::Certificates => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
            if certs.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
        }
        Pem::Key => {
            PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| bad(format!("holds no PEM private key ({e})")))?;
        }
    }
    Ok(bytes)
}

/// The server side of mTLS: our certificate and key, and the CA every client certificate must
/// chain to. A client without a certificate, or with one that is expired or from another CA, fails
/// the handshake.
pub fn server_tls(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerTlsConfig, TlsError> {
    let identity =
        TlsIdentity::from_pem(read_pem(cert, Pem::Certificates)?, read_pem(key, Pem::Key)?);
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(read_pem(
            client_ca,
            Pem::Certificates,
        )?)))
}

/// Server-side TLS only (for token mode): clients verify us, tokens identify them.
pub fn server_tls_without_client_auth(
    cert: &Path,
    key: &Path,
) -> Result<ServerTlsConfig, TlsError> {
    Ok(ServerTlsConfig::new().identity(TlsIdentity::from_pem(
        read_pem(cert, Pem::Certificates)?,
        read_pem(key, Pem::Key)?,
    )))
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
/// The id is parsed by the `spiffe` crate (the SPIFFE-ID spec's rules for the trust domain and
/// path); a URI that is not a valid SPIFFE id names no principal.
fn principal_of_uri(uri: &str, trust_domain: Option<&str>) -> Option<Result<Principal, String>> {
    let id = spiffe::SpiffeId::new(uri).ok()?;
    if trust_domain.is_some_and(|d| d != id.trust_domain_name()) {
        return None;
    }
    let path = id.path().strip_prefix('/')?;
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
        // Not a SPIFFE id at all (a space, a dot segment, no trust domain): no
        // principal is named.
        for bad in [
            "spiffe://shop.example/service/a b",
            "spiffe://shop.example/service/../operator/root",
            "spiffe:///service/a",
        ] {
            assert!(principal_of_uri(bad, None).is_none(), "{bad}");
        }
        // A SPIFFE id of ours whose name is not a principal name: refused with a reason.
        for bad in [
            "spiffe://shop.example/service/a/b".to_owned(),
            format!("spiffe://shop.example/service/{}", "x".repeat(129)),
        ] {
            assert!(principal_of_uri(&bad, None).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_file_without_what_it_should_hold_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let key_only = dir.path().join("key.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key_only, key.serialize_pem()).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_only = dir.path().join("cert.pem");
        std::fs::write(&cert_only, cert.pem()).unwrap();
        for (path, kind) in [
            (&empty, Pem::Certificates),
            (&key_only, Pem::Certificates),
            (&empty, Pem::Key),
            (&cert_only, Pem::Key),
        ] {
            let err = read_pem(path, kind).unwrap_err();
            assert_eq!(err.path, path.display().to_string());
        }
        assert!(read_pem(&cert_only, Pem::Certificates).is_ok());
        assert!(read_pem(&key_only, Pem::Key).is_ok());
        assert!(server_tls_without_client_auth(&cert_only, &key_only).is_ok());
        assert!(server_tls_without_client_auth(&key_only, &cert_only).is_err());
    }
}
