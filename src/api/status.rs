//! The one place that turns vault errors into gRPC status codes. Internal details stay in the
//! server log under the request id; the caller gets the code and a safe message, and for a policy
//! denial the structured details (`google.rpc.ErrorInfo` with the action and every deciding policy
//! id, `google.rpc.BadRequest` with one violation per denied field) through `tonic-types`, so a
//! client need not parse the message.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// `ErrorInfo.domain` of every status with details.
pub const ERROR_DOMAIN: &str = "privault.v1";
/// `ErrorInfo.reason` of a policy denial.
pub const POLICY_DENIED: &str = "POLICY_DENIED";

fn denial(action: &str, denied: &[(String, Vec<String>)], message: String) -> Status {
    let mut policy_ids: Vec<&str> = denied
        .iter()
        .flat_map(|(_, ids)| ids.iter().map(String::as_str))
        .collect();
    policy_ids.sort_unstable();
    policy_ids.dedup();
    let fields: Vec<&str> = denied
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    let metadata = HashMap::from([
        ("action".to_owned(), action.to_owned()),
        ("policyIds".to_owned(), policy_ids.join(",")),
        ("deniedFields".to_owned(), fields.join(",")),
    ]);
    let mut details = ErrorDetails::with_error_info(POLICY_DENIED, ERROR_DOMAIN, metadata);
    let violations: Vec<FieldViolation> = denied
        .iter()
        .filter(|(field, _)| !field.is_empty())
        .map(|(field, ids)| FieldViolation::new(field.clone(), forbidden(ids)))
        .collect();
    if !violations.is_empty() {
        details.set_bad_request(violations);
    }
    Status::with_error_details(Code::PermissionDenied, message, details)
}

fn forbidden(ids: &[String]) -> String {
    if ids.is_empty() {
        "no policy permits it".to_owned()
    } else {
        format!("forbidden by {}", ids.join(", "))
    }
}

use crate::vault::VaultError;

/// Maps `err` to a status for the caller of request `request_id`.
pub fn to_status(err: VaultError, request_id: &str) -> Status {
    match err {
        VaultError::InvalidArgument(msg) => Status::invalid_argument(msg),
        VaultError::PermissionDenied { action, denied } => {
            let fields: Vec<String> = denied
                .iter()
                .map(|(field, ids)| {
                    if field.is_empty() {
                        forbidden(ids)
                    } else {
                        format!("`{field}`: {}", forbidden(ids))
                    }
                })
                .collect();
            let message = format!("{action} denied by policy ({})", fields.join("; "));
            denial(action, &denied, message)
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
