//! Hand-written `Debug` for messages that carry values or raw subject ids: prost's derived `Debug`
//! would print them, and a stray `{:?}` must never leak personal data.

use std::fmt;

use super::pb;

const REDACTED: &str = "<redacted>";

impl fmt::Debug for pb::PutFieldsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.fields.keys().collect();
        names.sort();
        f.debug_struct("PutFieldsRequest")
            .field("subject_id", &REDACTED)
            .field("purpose", &self.purpose)
            .field("fields", &names)
            .finish()
    }
}

impl fmt::Debug for pb::GetFieldsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetFieldsRequest")
            .field("subject_id", &REDACTED)
            .field("purpose", &self.purpose)
            .field("fields", &self.fields)
            .finish()
    }
}

impl fmt::Debug for pb::DeleteFieldsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeleteFieldsRequest")
            .field("subject_id", &REDACTED)
            .field("purpose", &self.purpose)
            .field("fields", &self.fields)
            .finish()
    }
}

impl fmt::Debug for pb::ShredSubjectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShredSubjectRequest")
            .field("subject_id", &REDACTED)
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Debug for pb::FieldResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldResult")
            .field("field", &self.field)
            .field("outcome", &self.outcome())
            .field("value", &REDACTED)
            .field("policy_ids", &self.policy_ids)
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Debug for pb::SetConsentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetConsentRequest")
            .field("subject_id", &REDACTED)
            .field("purpose", &self.purpose)
            .field("granted", &self.granted)
            .field("source", &self.source())
            .finish()
    }
}

impl fmt::Debug for pb::RecordSignalRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSignalRequest")
            .field("subject_id", &REDACTED)
            .field("signal", &self.signal())
            .field("source", &self.source())
            .finish()
    }
}

impl fmt::Debug for pb::GetConsentsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetConsentsRequest")
            .field("subject_id", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for pb::AuditQueryRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditQueryRequest")
            .field("subject_id", &REDACTED)
            .field("principal", &self.principal)
            .field("purpose", &self.purpose)
            .field("action", &self.action)
            .field("outcome", &self.outcome)
            .field("from_time", &self.from_time)
            .field("to_time", &self.to_time)
            .field("from_seq", &self.from_seq)
            .field("to_seq", &self.to_seq)
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl fmt::Debug for pb::ExportSubjectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportSubjectRequest")
            .field("subject_id", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for pb::ExportedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportedField")
            .field("field", &self.field)
            .field("value", &REDACTED)
            .field("written", &self.written)
            .field("expires", &self.expires)
            .field("views", &self.views)
            .finish()
    }
}

impl fmt::Debug for pb::DerivedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedView")
            .field("view", &self.view)
            .field("value", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for pb::BatchGetFieldsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchGetFieldsRequest")
            .field("subject_ids", &self.subject_ids.len())
            .field("purpose", &self.purpose)
            .field("fields", &self.fields)
            .finish()
    }
}

impl fmt::Debug for pb::SubjectResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectResult")
            .field("subject_id", &REDACTED)
            .field("results", &self.results)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Debug for pb::FindSubjectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FindSubjectRequest")
            .field("field", &self.field)
            .field("value", &REDACTED)
            .field("purpose", &self.purpose)
            .finish()
    }
}

impl fmt::Debug for pb::FindSubjectResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FindSubjectResponse")
            .field("subject_ids", &self.subject_ids.len())
            .finish()
    }
}

impl fmt::Debug for pb::RotateSubjectKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateSubjectKeyRequest")
            .field("subject_id", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for pb::AddCanaryRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddCanaryRequest")
            .field("subject_id", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_carrying_messages_never_debug_print_values() {
        let put = pb::PutFieldsRequest {
            subject_id: "alice-123".into(),
            purpose: "account".into(),
            fields: [("email".to_owned(), "alice@example.com".to_owned())].into(),
        };
        let shown = format!("{put:?}");
        assert!(!shown.contains("alice"), "{shown}");
        let result = pb::FieldResult {
            field: "email".into(),
            outcome: pb::Outcome::Value.into(),
            value: "alice@example.com".into(),
            policy_ids: vec![],
            reason: String::new(),
        };
        assert!(!format!("{result:?}").contains("alice"));
        let find = pb::FindSubjectRequest {
            field: "email".into(),
            value: "alice@example.com".into(),
            purpose: "support".into(),
        };
        assert!(!format!("{find:?}").contains("alice"));
        let found = pb::FindSubjectResponse {
            subject_ids: vec!["alice-123".into()],
        };
        assert!(!format!("{found:?}").contains("alice"));
    }
}
