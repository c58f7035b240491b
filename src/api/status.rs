//! The one place that turns vault errors into gRPC status codes. Internal details stay in the
//! server log under the request id; the caller gets the code and a safe message.

use tonic::{Code, Status};

use crate::vault::VaultError;

/// Maps `err` to a status for the caller of request `request_id`.
pub fn to_status(err: VaultError, request_id: &str) -> Status {
    match err {
        VaultError::InvalidArgument(msg) => Status::invalid_argument(msg),
        VaultError::PermissionDenied { action, denied } => {
            let fields: Vec<String> = denied
                .iter()
                .map(|(field, ids)| {
                    let ids = if ids.is_empty() {
                        "no policy permits it".to_owned()
                    } else {
                        format!("forbidden by {}", ids.join(", "))
                    };
                    if field.is_empty() {
                        ids
                    } else {
                        format!("`{field}`: {ids}")
                    }
                })
                .collect();
            Status::permission_denied(format!("{action} denied by policy ({})", fields.join("; ")))
        }
        VaultError::FailedPrecondition(msg) => Status::failed_precondition(msg),
        VaultError::NotFound(msg) => Status::not_found(msg),
        VaultError::Unavailable(msg) => Status::new(Code::Unavailable, msg),
        VaultError::DataLoss(msg) => {
            tracing::error!(request_id, error = %msg, "integrity failure");
            Status::new(Code::DataLoss, format!("{msg} (request id {request_id})"))
        }
        err @ VaultError::ResponseTooLarge { .. } => Status::resource_exhausted(err.to_string()),
        VaultError::NeedsDisk => {
            tracing::error!(request_id, "a memory-only read escaped its retry");
            Status::internal(format!("internal error (request id {request_id})"))
        }
        VaultError::Internal(msg) => {
            tracing::error!(request_id, error = %msg, "internal error");
            Status::internal(format!("internal error (request id {request_id})"))
        }
    }
}
