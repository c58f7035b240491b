//! Cedar: the schema, the validated policy set with the catalog it was loaded with, the entities
//! built from that catalog, and decisions with the policies that determined them. The only module
//! that names `cedar_policy`. A decision that reports any evaluation error is a deny.

mod cache;
pub mod cases;
mod decide;
mod entities;
mod load;
mod request;
pub mod ropa;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cedar_policy::{Authorizer, Entities, EntityTypeName, EntityUid, Schema};

use crate::catalog::Catalog;
use crate::diagnostic::{SourceErrors, SourcePos};
use crate::domain::FieldName;

pub use cache::DECISION_CACHE_CAPACITY;
pub use decide::{AdminAction, Decision, FieldAction, FieldContext, ReadDecision};
pub use load::{SCHEMA_FILE, Sources, hash_of, load_sources};
pub use request::{AccessRequest, RequestFacts};

/// What can go wrong loading a policy directory.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read.
    #[error("policy directory `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The schema, catalog or a policy is invalid; one error per line, `file:line:column: message`.
    #[error("{0}")]
    Invalid(SourceErrors),
}

/// The ids of the policies that determined a decision, sorted; shared between the decision cache,
/// the read's result and its audit record.
pub type PolicyIds = Arc<[String]>;

/// The proof that `policy` allowed a read of one field: only this module can make one, and every
/// read helper in the vault takes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    field: FieldName,
    masked: bool,
    policy_ids: PolicyIds,
}

impl Permit {
    /// The field this permit is for.
    pub fn field(&self) -> &FieldName {
        &self.field
    }

    /// True when only `read_masked` was allowed: the value must be masked before it leaves.
    pub fn masked(&self) -> bool {
        self.masked
    }

    /// The permitting policies.
    pub fn policy_ids(&self) -> &PolicyIds {
        &self.policy_ids
    }
}

/// One loaded, validated policy directory: immutable, swapped whole.
pub struct Policies {
    hash: String,
    number: u64,
    catalog: Arc<Catalog>,
    schema: Schema,
    set: cedar_policy::PolicySet,
    entities: Entities,
    authorizer: Authorizer,
    uids: decide::Uids,
    service_type: EntityTypeName,
    operator_type: EntityTypeName,
    subject_uid: EntityUid,
    policy_count: usize,
    cache: cache::DecisionCache,
    // Which of `withdrawn` and `signals` the schema's field context declares (schemas written
    // before them do not, and Cedar refuses a context attribute the schema does not declare).
    context_attrs: decide::ContextAttrs,
    locations: BTreeMap<String, SourcePos>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("hash", &self.hash)
            .field("number", &self.number)
            .field("policies", &self.policy_count)
            .finish_non_exhaustive()
    }
}

impl Policies {
    /// The version as recorded in audit records: the vault's version number once registered,
    /// else the content hash.
    pub fn version(&self) -> String {
        if self.number == 0 {
            self.hash.clone()
        } else {
            self.number.to_string()
        }
    }

    /// The vault's version number of this set (0 when not registered, e.g. offline tools).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Registers this set as version `number`.
    pub fn set_number(&mut self, number: u64) {
        self.number = number;
    }

    /// The content hash of the files this set was loaded from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The catalog loaded with these policies.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Where policy `id` starts in its file.
    pub fn location(&self, id: &str) -> Option<&SourcePos> {
        self.locations.get(id)
    }

    /// Every policy id in the set, sorted.
    pub fn policy_ids(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// How many policies are in the set.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }
}
