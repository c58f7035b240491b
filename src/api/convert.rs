//! Proto messages into domain types (validating every field, destructuring every message so a new
//! proto field cannot be ignored) and vault results back into proto messages.

use secrecy::SecretString;
use tonic::Status;

use super::pb;
use crate::domain::{FieldName, InvalidInput, Purpose, SubjectId};
use crate::vault::{ConsentState, FieldRead, ReadOutcome};

fn invalid(e: InvalidInput) -> Status {
    Status::invalid_argument(e.0)
}

/// A subject id from the wire: INVALID_ARGUMENT when malformed (the message never echoes it).
pub fn subject_id(raw: String) -> Result<SubjectId, Status> {
    SubjectId::new(raw).map_err(invalid)
}

fn field_names(fields: Vec<String>) -> Result<Vec<FieldName>, Status> {
    fields
        .into_iter()
        .map(|f| FieldName::new(f).map_err(invalid))
        .collect()
}

/// A validated `PutFields` call.
pub struct PutFields {
    pub subject: SubjectId,
    pub purpose: Purpose,
    pub fields: Vec<(FieldName, SecretString)>,
}

impl TryFrom<pb::PutFieldsRequest> for PutFields {
    type Error = Status;

    fn try_from(req: pb::PutFieldsRequest) -> Result<Self, Status> {
        let pb::PutFieldsRequest {
            subject_id,
            purpose,
            fields,
        } = req;
        let mut fields = fields
            .into_iter()
            .map(|(name, value)| {
                Ok((
                    FieldName::new(name).map_err(invalid)?,
                    SecretString::from(value),
                ))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            subject: SubjectId::new(subject_id).map_err(invalid)?,
            purpose: Purpose::new(purpose).map_err(invalid)?,
            fields,
        })
    }
}

/// A validated `GetFields` or `DeleteFields` call.
pub struct FieldsCall {
    pub subject: SubjectId,
    pub purpose: Purpose,
    pub fields: Vec<FieldName>,
}

impl TryFrom<pb::GetFieldsRequest> for FieldsCall {
    type Error = Status;

    fn try_from(req: pb::GetFieldsRequest) -> Result<Self, Status> {
        let pb::GetFieldsRequest {
            subject_id,
            purpose,
            fields,
        } = req;
        Ok(Self {
            subject: SubjectId::new(subject_id).map_err(invalid)?,
            purpose: Purpose::new(purpose).map_err(invalid)?,
            fields: field_names(fields)?,
        })
    }
}

impl TryFrom<pb::DeleteFieldsRequest> for FieldsCall {
    type Error = Status;

    fn try_from(req: pb::DeleteFieldsRequest) -> Result<Self, Status> {
        let pb::DeleteFieldsRequest {
            subject_id,
            purpose,
            fields,
        } = req;
        Ok(Self {
            subject: SubjectId::new(subject_id).map_err(invalid)?,
            purpose: Purpose::new(purpose).map_err(invalid)?,
            fields: field_names(fields)?,
        })
    }
}

/// A validated `BatchGetFields` call; `subject_ids` are echoed back in the response.
pub struct BatchCall {
    pub subject_ids: Vec<String>,
    pub subjects: Vec<SubjectId>,
    pub purpose: Purpose,
    pub fields: Vec<FieldName>,
}

impl TryFrom<pb::BatchGetFieldsRequest> for BatchCall {
    type Error = Status;

    fn try_from(req: pb::BatchGetFieldsRequest) -> Result<Self, Status> {
        let pb::BatchGetFieldsRequest {
            subject_ids,
            purpose,
            fields,
        } = req;
        let subjects = subject_ids
            .iter()
            .map(|s| SubjectId::new(s.clone()).map_err(invalid))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            subject_ids,
            subjects,
            purpose: Purpose::new(purpose).map_err(invalid)?,
            fields: field_names(fields)?,
        })
    }
}

/// The wire form of a recorded consent.
pub fn consent_message(c: ConsentState) -> pb::Consent {
    pb::Consent {
        purpose: c.purpose.to_string(),
        granted: c.granted,
        time: c.time,
        recorded_by: c.recorded_by,
    }
}

/// A validated `ShredSubject` call.
pub struct Shred {
    pub subject: SubjectId,
    pub reason: String,
}

impl TryFrom<pb::ShredSubjectRequest> for Shred {
    type Error = Status;

    fn try_from(req: pb::ShredSubjectRequest) -> Result<Self, Status> {
        let pb::ShredSubjectRequest { subject_id, reason } = req;
        Ok(Self {
            subject: SubjectId::new(subject_id).map_err(invalid)?,
            reason,
        })
    }
}

impl From<FieldRead> for pb::FieldResult {
    fn from(read: FieldRead) -> Self {
        let FieldRead {
            field,
            outcome,
            policy_ids,
        } = read;
        let (outcome, value, reason) = match outcome {
            ReadOutcome::Value(v) => (
                pb::Outcome::Value,
                v.as_str().to_owned(),
                "read allowed".to_owned(),
            ),
            ReadOutcome::Masked(v) => (
                pb::Outcome::Masked,
                v,
                "read denied; masked read allowed".to_owned(),
            ),
            ReadOutcome::Denied if policy_ids.is_empty() => (
                pb::Outcome::Denied,
                String::new(),
                "no policy permits this read".to_owned(),
            ),
            ReadOutcome::Denied => (
                pb::Outcome::Denied,
                String::new(),
                "denied by policy".to_owned(),
            ),
            ReadOutcome::Absent => (
                pb::Outcome::Absent,
                String::new(),
                "no value stored".to_owned(),
            ),
        };
        Self {
            field: field.to_string(),
            outcome: outcome.into(),
            value,
            policy_ids: policy_ids.to_vec(),
            reason,
        }
    }
}
