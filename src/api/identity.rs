//! Who is calling. Three modes: development (trust the `x-privault-principal` header; loopback
//! only), mTLS (the principal is the client certificate's SPIFFE URI SAN; the header is ignored,
//! so it cannot be spoofed), and bearer tokens (the header names the principal, the token proves
//! it).

use std::sync::Arc;

use tonic::{Request, Status};

use super::tls::principal_of_certificate;
use super::tokens::{TokenRejection, TokenVerifier};
use crate::domain::Principal;

/// The metadata header that names the caller in development and token mode.
pub const PRINCIPAL_HEADER: &str = "x-privault-principal";
/// The metadata header that carries a bearer token.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// How callers are authenticated.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Trust the `x-privault-principal` header. Loopback only; never for production.
    Development,
    /// The principal is the client certificate's `spiffe://<trust domain>/(service|operator)/<name>`
    /// URI SAN; any trust domain when `None`.
    Certificate {
        /// The SPIFFE trust domain a certificate must name.
        trust_domain: Option<String>,
    },
    /// `x-privault-principal` names the caller, `authorization: Bearer <token>` proves it.
    Token(Arc<TokenVerifier>),
}

fn principal_header<T>(request: &Request<T>) -> Result<Principal, Status> {
    let value = request
        .metadata()
        .get(PRINCIPAL_HEADER)
        .ok_or_else(|| Status::unauthenticated(format!("missing `{PRINCIPAL_HEADER}` header")))?;
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated(format!("`{PRINCIPAL_HEADER}` is not ASCII")))?;
    Principal::parse_uid(text)
        .map_err(|e| Status::unauthenticated(format!("`{PRINCIPAL_HEADER}`: {e}")))
}

impl Identity {
    /// The authenticated principal of `request`, or UNAUTHENTICATED (RESOURCE_EXHAUSTED for a
    /// peer that failed too often).
    pub async fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        match self {
            Self::Development => principal_header(request),
            Self::Certificate { trust_domain } => {
                let certs = request.peer_certs().ok_or_else(|| {
                    Status::unauthenticated("no client certificate was presented")
                })?;
                let leaf = certs.first().ok_or_else(|| {
                    Status::unauthenticated("no client certificate was presented")
                })?;
                principal_of_certificate(leaf, trust_domain.as_deref())
                    .map_err(Status::unauthenticated)
            }
            Self::Token(verifier) => {
                let principal = principal_header(request)?;
                let token = request
                    .metadata()
                    .get(AUTHORIZATION_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated("missing `authorization: Bearer <token>` header")
                    })?
                    .trim()
                    .to_owned();
                let token = zeroize::Zeroizing::new(token);
                let peer = request.remote_addr().map(|a| a.ip());
                let verifier = Arc::clone(verifier);
                let checked = principal.clone();
                let verdict =
                    tokio::task::spawn_blocking(move || verifier.verify(&checked, &token, peer))
                        .await
                        .map_err(|_| Status::unavailable("token check failed"))?;
                if verdict.is_err() {
                    crate::metrics::metrics().token_failures.inc();
                }
                match verdict {
                    Ok(()) => Ok(principal),
                    Err(TokenRejection::Invalid(message)) => Err(Status::unauthenticated(message)),
                    Err(TokenRejection::RateLimited) => Err(Status::resource_exhausted(
                        "too many failed authentications from this address; retry later",
                    )),
                }
            }
        }
    }
}
