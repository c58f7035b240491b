//! Proto messages into domain types (validating every field, destructuring every message so a new
//! proto field cannot be ignored) and vault results back into proto messages.

use secrecy::SecretString;
use tonic::Status;

use super::pb;
use crate::domain::{ConsentSource, FieldName, InvalidInput, OptOutSignal, Purpose, SubjectId};
use crate::vault::{ConsentState, FieldRead, ReadOutcome, SignalState};

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
        source: c.source.name().to_owned(),
        signal: c.signal.map(|s| s.name().to_owned()).unwrap_or_default(),
    }
}

/// The wire form of a recorded opt-out signal.
pub fn signal_message(s: SignalState) -> pb::RecordedSignal {
    pb::RecordedSignal {
        signal: s.signal.name().to_owned(),
        time: s.time,
        recorded_by: s.recorded_by,
        source: s.source.name().to_owned(),
    }
}

/// A consent source from the wire; unset is the customer's own choice, as before sources.
pub fn consent_source(raw: i32) -> Result<Option<ConsentSource>, Status> {
    match pb::ConsentSource::try_from(raw) {
        Ok(pb::ConsentSource::Unspecified) => Ok(None),
        Ok(pb::ConsentSource::User) => Ok(Some(ConsentSource::User)),
        Ok(pb::ConsentSource::Gpc) => Ok(Some(ConsentSource::Gpc)),
        Ok(pb::ConsentSource::Support) => Ok(Some(ConsentSource::Support)),
        Ok(pb::ConsentSource::Import) => Ok(Some(ConsentSource::Import)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown consent source {raw}: expected USER, GPC, SUPPORT or IMPORT"
        ))),
    }
}

/// An opt-out signal from the wire; one must be named.
pub fn opt_out_signal(raw: i32) -> Result<OptOutSignal, Status> {
    use pb::record_signal_request::Signal;
    match Signal::try_from(raw) {
        Ok(Signal::Gpc) => Ok(OptOutSignal::Gpc),
        Ok(Signal::DoNotSell) => Ok(OptOutSignal::DoNotSell),
        Ok(Signal::ObjectToProfiling) => Ok(OptOutSignal::ObjectToProfiling),
        Ok(Signal::Unspecified) | Err(_) => Err(Status::invalid_argument(
            "signal must be GPC, DO_NOT_SELL or OBJECT_TO_PROFILING",
        )),
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
            ReadOutcome::OverBudget => (
                pb::Outcome::Denied,
                String::new(),
                "budget: the caller's read budget of distinct subjects is spent for now".to_owned(),
            ),
            ReadOutcome::Held => (
                pb::Outcome::Denied,
                String::new(),
                "held: the subject was erased; a legal hold keeps this for legal claims only"
                    .to_owned(),
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
