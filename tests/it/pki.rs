//! A throwaway PKI made at test time with rcgen: a CA, a server certificate for `localhost`, and
//! client certificates with whatever SPIFFE URI SAN, CA and validity a test needs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType, date_time_ymd,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, in PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn server(&self) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with `uri` as its URI SAN (none when `None`).
    pub fn client(&self, uri: Option<&str>) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
        self.issue(params)
    }

    /// A client certificate that expired in 2001.
    pub fn expired_client(&self, uri: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        self.issue(params)
    }
}

/// Writes the server side's files into `dir`: (cert, key, client CA).
pub fn write_server_files(dir: &Path, ca: &Ca) -> (PathBuf, PathBuf, PathBuf) {
    let server = ca.server();
    let paths = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("client-ca.pem"),
    );
    std::fs::write(&paths.0, server.cert).unwrap();
    std::fs::write(&paths.1, server.key).unwrap();
    std::fs::write(&paths.2, ca.pem()).unwrap();
    paths
}

/// The client's TLS: trusts `server_ca`, presents `client` if given.
pub fn client_tls(server_ca: &Ca, client: Option<&Issued>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca.pem()))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert, &c.key));
    }
    tls
}
