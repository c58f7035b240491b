//! The typed vocabulary of the vault: subject ids, field names, purposes, principals and the
//! on-disk subject handle. Each type validates on construction, so nothing below `api` handles an
//! unchecked string. Types that carry personal data never print it.

use std::fmt;

/// Longest subject id accepted, in bytes.
pub const MAX_SUBJECT_ID_BYTES: usize = 256;
/// Longest field, purpose or key-class name accepted.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest principal name accepted.
pub const MAX_PRINCIPAL_NAME_BYTES: usize = 128;

/// A value the vault refuses at its edge; the message names the problem, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// The caller's opaque customer id. Personal data: it is never logged, printed or stored in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectId(String);

impl SubjectId {
    /// Accepts 1 to 256 bytes without control characters.
    pub fn new(raw: String) -> Result<Self, InvalidInput> {
        if raw.is_empty() {
            return Err(InvalidInput("subject_id is empty".into()));
        }
        if raw.len() > MAX_SUBJECT_ID_BYTES {
            return Err(InvalidInput(format!(
                "subject_id is longer than {MAX_SUBJECT_ID_BYTES} bytes"
            )));
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidInput(
                "subject_id contains control characters".into(),
            ));
        }
        Ok(Self(raw))
    }

    /// The raw id, for keyed hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectId(<redacted>)")
    }
}

/// Checks the common name syntax `[a-z][a-z0-9_]*`, at most 64 bytes.
fn check_name(kind: &str, raw: &str) -> Result<(), InvalidInput> {
    let mut chars = raw.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if raw.len() > MAX_NAME_BYTES || !first_ok || !rest_ok {
        return Err(InvalidInput(format!(
            "{kind} `{}` is not a valid name ([a-z][a-z0-9_]*, at most {MAX_NAME_BYTES} bytes)",
            raw.escape_debug()
                .to_string()
                .chars()
                .take(MAX_NAME_BYTES)
                .collect::<String>()
        )));
    }
    Ok(())
}

/// Whether `raw` has the common name syntax `[a-z][a-z0-9_]*`, at most 64 bytes (categories,
/// services).
pub fn is_plain_name(raw: &str) -> bool {
    check_name("name", raw).is_ok()
}

/// Checks a field reference: a field name, or `<field>.<view>` naming one of its derived views.
fn check_field_ref(kind: &str, raw: &str) -> Result<(), InvalidInput> {
    match raw.split_once('.') {
        Some((field, view)) if raw.len() <= 2 * MAX_NAME_BYTES + 1 => {
            check_name(kind, field).and_then(|()| check_name("view", view))
        }
        Some(_) => Err(InvalidInput(format!(
            "{kind} is longer than {} bytes",
            2 * MAX_NAME_BYTES + 1
        ))),
        None => check_name(kind, raw),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        name_type!($(#[$doc])* $name, $kind, check_name, "Accepts `[a-z][a-z0-9_]*`, at most 64 bytes.");
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:ident, $accepts:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            #[doc = $accepts]
            pub fn new(raw: impl Into<String>) -> Result<Self, InvalidInput> {
                let raw = raw.into();
                $check($kind, &raw)?;
                Ok(Self(raw))
            }

            /// The name as written in the catalog.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        // Hash and Eq are the inner string's, so maps keyed by the name are searched by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A field name such as `email`, or a derived view of one such as `birth_date.age_band`;
    /// whether it is declared is the catalog's call.
    FieldName,
    "field",
    check_field_ref,
    "Accepts `[a-z][a-z0-9_]*`, or two such names joined by one `.` (a view), 64 bytes each."
);

impl FieldName {
    /// For a view (`birth_date.age_band`), the field it derives from and the view's name.
    pub fn as_view(&self) -> Option<(&str, &str)> {
        self.0.split_once('.')
    }

    /// Whether this names a derived view rather than a stored field.
    pub fn is_view(&self) -> bool {
        self.0.contains('.')
    }
}
name_type!(
    /// A purpose such as `personalization`; whether it is declared is the catalog's call.
    Purpose,
    "purpose"
);
name_type!(
    /// A key class: fields of one class share a DEK, so one class can outlive a shred of the rest.
    KeyClass,
    "key class"
);

impl KeyClass {
    /// The class of every field whose catalog entry names none.
    pub fn default_class() -> Self {
        Self("default".into())
    }
}

/// The kind of caller, which is the Cedar entity type of the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// An internal service (`Service::"checkout"`).
    Service,
    /// A person (`Operator::"alice"`).
    Operator,
}

impl PrincipalKind {
    /// The Cedar entity type name.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::Operator => "Operator",
        }
    }
}

/// Who calls: an authenticated service or operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    kind: PrincipalKind,
    name: String,
}

impl Principal {
    /// A principal of `kind` named `name` (`[A-Za-z0-9._-]`, 1 to 128 bytes).
    pub fn new(kind: PrincipalKind, name: &str) -> Result<Self, InvalidInput> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > MAX_PRINCIPAL_NAME_BYTES || !name.chars().all(ok_char) {
            return Err(InvalidInput(format!(
                "principal name must be 1 to {MAX_PRINCIPAL_NAME_BYTES} characters of [A-Za-z0-9._-]"
            )));
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }

    /// Parses a Cedar entity uid such as `Service::"checkout"` or `Operator::"alice"`.
    pub fn parse_uid(text: &str) -> Result<Self, InvalidInput> {
        let bad = || {
            InvalidInput(
                "principal must be a Cedar entity uid such as Service::\"checkout\" or Operator::\"alice\""
                    .into(),
            )
        };
        let (type_name, rest) = text.trim().split_once("::").ok_or_else(bad)?;
        let kind = match type_name {
            "Service" => PrincipalKind::Service,
            "Operator" => PrincipalKind::Operator,
            _ => return Err(bad()),
        };
        let name = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .ok_or_else(bad)?;
        Self::new(kind, name)
    }

    /// The kind of caller.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// The caller's name within its kind.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::\"{}\"", self.kind.type_name(), self.name)
    }
}

/// The on-disk handle of a subject: `HMAC-SHA256(index key, subject_id)`. Reveals no identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(pub [u8; 32]);

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to correlate log lines; the sid is not secret but need not be spread.
        write!(
            f,
            "Sid({}..)",
            hex::encode(self.0.get(..4).unwrap_or_default())
        )
    }
}

/// The random per-subject name used in audit records; destroyed by a shred, so that the log stays
/// verifiable but can no longer be joined to the person.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pseudonym(pub [u8; 16]);

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonym({self})")
    }
}

/// Where a consent record came from: kept with the record, shown in `GetConsents`, exports and
/// audit records. Only the customer's own choice (`user`) undoes a withdrawal an opt-out signal
/// made.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::FromRepr,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ConsentSource {
    /// The customer's own choice (a privacy settings page, a form).
    User = 1,
    /// A Global Privacy Control signal sent by the customer's browser.
    Gpc = 2,
    /// Recorded by support on the customer's behalf.
    Support = 3,
    /// Imported from another system.
    Import = 4,
}

/// An opt-out signal (CCPA do-not-sell/share, GPC, GDPR Art. 21 objection): withdraws every
/// purpose the catalog marks as covered by it, and is visible to policies as `context.signals`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::FromRepr,
    strum::VariantArray,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum OptOutSignal {
    /// Global Privacy Control: opts out of sale and sharing (purposes `sale_or_share = true`).
    Gpc = 1,
    /// Do not sell or share my personal information (purposes `sale_or_share = true`).
    DoNotSell = 2,
    /// An objection to profiling (purposes `profiling = true`).
    ObjectToProfiling = 3,
}

impl OptOutSignal {
    /// The name policies see in `context.signals` and records show.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Whether it covers a purpose with the catalog's marks `sale_or_share` and `profiling`.
    pub fn covers(self, sale_or_share: bool, profiling: bool) -> bool {
        match self {
            Self::Gpc | Self::DoNotSell => sale_or_share,
            Self::ObjectToProfiling => profiling,
        }
    }

    /// The source of the withdrawals it records when the caller names none: a browser's GPC
    /// header is `gpc`; the others are the customer's own request.
    pub fn default_source(self) -> ConsentSource {
        match self {
            Self::Gpc => ConsentSource::Gpc,
            Self::DoNotSell | Self::ObjectToProfiling => ConsentSource::User,
        }
    }
}

impl ConsentSource {
    /// The name records show.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_id_rejects_empty_long_and_control() {
        assert!(SubjectId::new(String::new()).is_err());
        assert!(SubjectId::new("x".repeat(257)).is_err());
        assert!(SubjectId::new("a\nb".into()).is_err());
        assert!(SubjectId::new("cust-42@example".into()).is_ok());
    }

    #[test]
    fn subject_id_debug_is_redacted() {
        let id = SubjectId::new("alice@example.com".into()).unwrap();
        assert!(!format!("{id:?}").contains("alice"));
    }

    #[test]
    fn names_follow_the_catalog_syntax() {
        assert!(FieldName::new("shipping_address").is_ok());
        assert!(FieldName::new("Email").is_err());
        assert!(FieldName::new("").is_err());
        assert!(FieldName::new("1st").is_err());
        let view = FieldName::new("birth_date.age_band").unwrap();
        assert_eq!(view.as_view(), Some(("birth_date", "age_band")));
        assert!(FieldName::new("birth_date.").is_err());
        assert!(FieldName::new(".age_band").is_err());
        assert!(FieldName::new("a.b.c").is_err());
        assert!(FieldName::new("birth_date.Age").is_err());
        assert!(Purpose::new("a".repeat(65)).is_err());
    }

    #[test]
    fn principal_parses_cedar_uids() {
        let p = Principal::parse_uid("Service::\"checkout\"").unwrap();
        assert_eq!(p.kind(), PrincipalKind::Service);
        assert_eq!(p.to_string(), "Service::\"checkout\"");
        assert!(Principal::parse_uid("Customer::\"x\"").is_err());
        assert!(Principal::parse_uid("Service::checkout").is_err());
        assert!(Principal::parse_uid("Service::\"a\\\"b\"").is_err());
    }
}
