//! Loading a policy directory: `schema.cedarschema`, `catalog.toml` and `*.cedar`, each checked
//! with errors at `file:line:column`. Policy ids are the `@id("...")` annotations where given.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, EntityTypeName, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use super::{Policies, PolicyError, decide, entities};
use crate::catalog::{CATALOG_FILE, Catalog};
use crate::diagnostic::{SourceError, SourceErrors, SourcePos};

/// The schema's file name inside the policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The text files of a policy directory, by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sources {
    /// `schema.cedarschema`.
    pub schema: String,
    /// `catalog.toml`.
    pub catalog: String,
    /// Every `*.cedar` file, sorted by name.
    pub policies: BTreeMap<String, String>,
}

/// Reads the policy files of `dir`.
pub fn load_sources(dir: &Path) -> Result<Sources, PolicyError> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|source| PolicyError::Io { path, source })
    };
    let mut sources = Sources {
        schema: read(SCHEMA_FILE)?,
        catalog: read(CATALOG_FILE)?,
        policies: BTreeMap::new(),
    };
    let entries = fs::read_dir(dir).map_err(|source| PolicyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| PolicyError::Io {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text =
                fs::read_to_string(&path).map_err(|source| PolicyError::Io { path, source })?;
            sources.policies.insert(name, text);
        }
    }
    Ok(sources)
}

fn diagnostic(file: &str, text: &str, d: &dyn miette::Diagnostic) -> SourceError {
    let offset = d
        .labels()
        .and_then(|mut labels| labels.next())
        .map_or(0, |l| l.offset());
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        message = format!("{message} ({help})");
    }
    SourceError::at_offset(file, text, offset, message)
}

impl Policies {
    /// Loads and validates the policy directory `dir`.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        Self::from_sources(&load_sources(dir)?)
    }

    /// Validates `sources` strictly and builds the policy set; nothing half-valid is returned.
    pub fn from_sources(sources: &Sources) -> Result<Self, PolicyError> {
        let mut errors = Vec::new();
        let schema = match Schema::from_cedarschema_str(&sources.schema) {
            Ok((schema, _warnings)) => Some(schema),
            Err(e) => {
                errors.push(diagnostic(SCHEMA_FILE, &sources.schema, &e));
                None
            }
        };
        let catalog = match Catalog::parse(CATALOG_FILE, &sources.catalog) {
            Ok(c) => Some(c),
            Err(SourceErrors(mut e)) => {
                errors.append(&mut e);
                None
            }
        };
        let mut set = PolicySet::new();
        let mut seen_ids = HashSet::new();
        let mut locations = BTreeMap::new();
        for (file, text) in &sources.policies {
            let parsed = match PolicySet::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    errors.extend(e.iter().map(|d| diagnostic(file, text, d)));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                errors.push(SourceError::in_file(
                    file,
                    "policy templates are not supported",
                ));
            }
            if let Some(schema) = &schema {
                let result =
                    Validator::new(schema.clone()).validate(&parsed, ValidationMode::Strict);
                errors.extend(
                    result
                        .validation_errors()
                        .map(|d| diagnostic(file, text, d)),
                );
            }
            if let Some(catalog) = &catalog {
                errors.extend(entities::undeclared_literals(file, text, &parsed, catalog));
            }
            let stem = file.trim_end_matches(".cedar");
            for policy in parsed.policies() {
                let id = match policy.annotation("id") {
                    Some(id) => id.to_owned(),
                    None => format!("{stem}/{}", policy.id()),
                };
                if !seen_ids.insert(id.clone()) {
                    let offset = text.find(&format!("\"{id}\"")).unwrap_or(0);
                    errors.push(SourceError::at_offset(
                        file,
                        text,
                        offset,
                        format!("duplicate policy id `{id}`"),
                    ));
                    continue;
                }
                let source = policy.to_string();
                let offset = text
                    .find(source.trim())
                    .or_else(|| text.find(&format!("@id(\"{id}\")")))
                    .unwrap_or(0);
                locations.insert(id.clone(), SourcePos::at_offset(file, text, offset));
                if let Err(e) = set.add(policy.new_id(PolicyId::new(&id))) {
                    errors.push(SourceError::in_file(file, e.to_string()));
                }
            }
        }
        let (Some(schema), Some(catalog), true) = (schema, catalog, errors.is_empty()) else {
            return Err(PolicyError::Invalid(SourceErrors(errors)));
        };
        let entities = entities::build(&catalog, &schema).map_err(|e| {
            PolicyError::Invalid(SourceErrors(vec![SourceError::in_file(CATALOG_FILE, e)]))
        })?;
        let type_name = |name: &str| {
            EntityTypeName::from_str(name).map_err(|e| {
                PolicyError::Invalid(SourceErrors(vec![SourceError::in_file(
                    SCHEMA_FILE,
                    e.to_string(),
                )]))
            })
        };
        let context_attrs = decide::ContextAttrs::declared_by(&schema, &catalog);
        if !context_attrs.subject {
            tracing::warn!(
                "the schema's read context has no `subject`: policies cannot see subject \
                 attributes (declare `subject: SubjectAttributes` in the field context, as the \
                 shipped schema does)"
            );
        }
        if !context_attrs.signals {
            tracing::warn!(
                "the schema's read context has no `signals`: policies cannot see opt-out signals \
                 (declare `signals: Set<String>` in the field context, as the shipped schema does)"
            );
        }
        if !context_attrs.withdrawn {
            tracing::warn!(
                "the schema's read context has no `withdrawn`: policies cannot see withdrawals \
                 (declare `withdrawn: Set<Purpose>` in the field context, as the shipped schema does)"
            );
        }
        Ok(Self {
            hash: hash_of(sources),
            context_attrs,
            number: 0,
            policy_count: set.policies().count(),
            uids: decide::Uids::new().map_err(|e| {
                PolicyError::Invalid(SourceErrors(vec![SourceError::in_file(SCHEMA_FILE, e)]))
            })?,
            service_type: type_name("Service")?,
            operator_type: type_name("Operator")?,
            subject_uid: entities::subject_uid().map_err(|e| {
                PolicyError::Invalid(SourceErrors(vec![SourceError::in_file(SCHEMA_FILE, e)]))
            })?,
            catalog: Arc::new(catalog),
            schema,
            set,
            entities,
            authorizer: Authorizer::new(),
            locations,
            cache: super::cache::DecisionCache::new(super::DECISION_CACHE_CAPACITY),
        })
    }
}

/// A content hash of a policy directory's files: equal sources, equal hash.
pub fn hash_of(sources: &Sources) -> String {
    let mut hash = Sha256::new();
    let mut file = |name: &str, text: &str| {
        for part in [name.as_bytes(), text.as_bytes()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
    };
    file(SCHEMA_FILE, &sources.schema);
    file(CATALOG_FILE, &sources.catalog);
    for (name, text) in &sources.policies {
        file(name, text);
    }
    hex::encode(hash.finalize().get(..8).unwrap_or_default())
}
