//! The entities the policies see, built once per load from the catalog: purposes with their
//! parents, categories, fields and their derived views inside their category, and the declared
//! services with the purposes they are registered for.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, RestrictedExpression, Schema,
};

use crate::catalog::Catalog;
use crate::diagnostic::SourceError;

pub(super) fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let t = EntityTypeName::from_str(type_name).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

/// The resource of subject-level actions: always `Subject::"any"`, so no customer id reaches Cedar.
pub(super) fn subject_uid() -> Result<EntityUid, String> {
    uid("Subject", "any")
}

/// Builds the catalog's entities and checks them against the schema.
pub(super) fn build(catalog: &Catalog, schema: &Schema) -> Result<Entities, String> {
    let mut entities = Vec::new();
    for (purpose, parent) in catalog.purposes() {
        let parents = match parent {
            Some(p) => HashSet::from([uid("Purpose", p.as_str())?]),
            None => HashSet::new(),
        };
        entities.push(Entity::new_no_attrs(
            uid("Purpose", purpose.as_str())?,
            parents,
        ));
    }
    for category in catalog.categories() {
        entities.push(Entity::new_no_attrs(
            uid("Category", category)?,
            HashSet::new(),
        ));
    }
    for (field, spec) in catalog.fields() {
        let parents = HashSet::from([uid("Category", &spec.category)?]);
        entities.push(
            Entity::new(uid("Field", field.as_str())?, HashMap::new(), parents)
                .map_err(|e| e.to_string())?,
        );
    }
    // A view sits in its field's category, so a permit of the category covers it; policies tell
    // it from the field by type (`resource is View`) and see the field it derives from.
    for (view, field, spec, _) in catalog.views() {
        let parents = HashSet::from([uid("Category", &spec.category)?]);
        let name = view.as_view().map_or("", |(_, v)| v);
        let attrs = HashMap::from([
            (
                "field".to_owned(),
                RestrictedExpression::new_entity_uid(uid("Field", field.as_str())?),
            ),
            (
                "view".to_owned(),
                RestrictedExpression::new_string(name.to_owned()),
            ),
        ]);
        entities.push(
            Entity::new(uid("View", view.as_str())?, attrs, parents).map_err(|e| e.to_string())?,
        );
    }
    for (service, purposes) in catalog.services() {
        let registered = purposes
            .iter()
            .map(|p| uid("Purpose", p.as_str()).map(RestrictedExpression::new_entity_uid))
            .collect::<Result<Vec<_>, String>>()?;
        let attrs = HashMap::from([(
            "purposes".to_owned(),
            RestrictedExpression::new_set(registered),
        )]);
        entities.push(
            Entity::new(uid("Service", service)?, attrs, HashSet::new())
                .map_err(|e| e.to_string())?,
        );
    }
    Entities::from_entities(entities, Some(schema)).map_err(|e| e.to_string())
}

/// Errors for entity literals that name a field, category or purpose the catalog does not declare:
/// such a policy could never match, which is almost always a typo.
pub(super) fn undeclared_literals(
    file: &str,
    text: &str,
    set: &PolicySet,
    catalog: &Catalog,
) -> Vec<SourceError> {
    let categories = catalog.categories();
    let mut errors = Vec::new();
    let mut reported = HashSet::new();
    for policy in set.policies() {
        for literal in policy.entity_literals() {
            let type_name = literal.type_name().to_string();
            let id = literal.id().unescaped();
            let declared = match type_name.as_str() {
                "Field" => {
                    crate::domain::FieldName::new(id).is_ok_and(|f| catalog.field(&f).is_some())
                }
                "View" => crate::domain::FieldName::new(id)
                    .is_ok_and(|f| f.is_view() && catalog.resolve(&f).is_some()),
                "Category" => categories.contains(id),
                "Purpose" => crate::domain::Purpose::new(id).is_ok_and(|p| catalog.has_purpose(&p)),
                _ => true,
            };
            if !declared && reported.insert(literal.to_string()) {
                let needle = format!("{type_name}::\"{id}\"");
                let offset = text.find(&needle).unwrap_or(0);
                errors.push(SourceError::at_offset(
                    file,
                    text,
                    offset,
                    format!("`{needle}` is not declared in catalog.toml"),
                ));
            }
        }
    }
    errors
}
