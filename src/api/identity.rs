//! Who is calling. Development mode trusts the `x-privault-principal` header (and so only ever
//! listens on loopback); mTLS identity plugs in here.

use tonic::{Request, Status};

use crate::domain::Principal;

/// The metadata header that names the caller in development mode.
pub const PRINCIPAL_HEADER: &str = "x-privault-principal";

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Trust the `x-privault-principal` header. Loopback only; never for production.
    Development,
}

impl Identity {
    /// The authenticated principal of `request`, or UNAUTHENTICATED.
    pub fn principal<T>(self, request: &Request<T>) -> Result<Principal, Status> {
        match self {
            Self::Development => {
                let value = request.metadata().get(PRINCIPAL_HEADER).ok_or_else(|| {
                    Status::unauthenticated(format!("missing `{PRINCIPAL_HEADER}` header"))
                })?;
                let text = value.to_str().map_err(|_| {
                    Status::unauthenticated(format!("`{PRINCIPAL_HEADER}` is not ASCII"))
                })?;
                Principal::parse_uid(text)
                    .map_err(|e| Status::unauthenticated(format!("`{PRINCIPAL_HEADER}`: {e}")))
            }
        }
    }
}
