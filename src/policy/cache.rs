//! The decision cache: each policy set owns one, keyed by the full request (principal, action,
//! field, purpose, consent set). Because a new policy version is a new set with an empty cache, a
//! cached decision can never come from an older version.
//!
//! It has two levels so that a call pays for its key once, not once per field: an LRU of call
//! contexts (principal, purpose, consent set), each holding the decisions of its fields and
//! actions. A call finds its context once ([`FieldContext`] keeps it), and each field is then a
//! lookup by `&str` under a read lock, with nothing allocated.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use lru::LruCache;

use super::{Decision, FieldAction, FieldContext};
use crate::catalog::EffectiveConsents;
use crate::domain::{FieldName, Principal, Purpose};

/// Call contexts (principal, purpose, consent set) whose decisions are kept per policy set.
pub const DECISION_CACHE_CAPACITY: usize = 4_096;

/// Fields one context keeps decisions for. Calls name only catalog fields, so this bound is
/// reached only by a catalog this large; past it, decisions are evaluated and not kept.
const FIELDS_PER_CONTEXT: usize = 1_024;

const ACTIONS: usize = 4;

fn slot(action: FieldAction) -> usize {
    match action {
        FieldAction::Read => 0,
        FieldAction::ReadMasked => 1,
        FieldAction::Write => 2,
        FieldAction::Delete => 3,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ContextKey {
    principal: Principal,
    purpose: Purpose,
    consents: EffectiveConsents,
}

/// The decisions of one call context, per field and action.
#[derive(Debug, Default)]
pub(super) struct ContextDecisions {
    fields: RwLock<HashMap<FieldName, [Option<Decision>; ACTIONS]>>,
}

impl ContextDecisions {
    pub(super) fn get(&self, action: FieldAction, field: &FieldName) -> Option<Decision> {
        let fields = self.fields.read().ok()?;
        fields.get(field.as_str())?[slot(action)].clone()
    }

    pub(super) fn insert(&self, action: FieldAction, field: &FieldName, decision: Decision) {
        let Ok(mut fields) = self.fields.write() else {
            return;
        };
        if let Some(slots) = fields.get_mut(field.as_str()) {
            slots[slot(action)] = Some(decision);
        } else if fields.len() < FIELDS_PER_CONTEXT {
            let mut slots: [Option<Decision>; ACTIONS] = Default::default();
            slots[slot(action)] = Some(decision);
            fields.insert(field.clone(), slots);
        }
    }
}

pub(super) struct DecisionCache {
    // Tells caches apart, so that a context found in one is never used with another set.
    id: u64,
    contexts: Mutex<LruCache<ContextKey, Arc<ContextDecisions>>>,
}

impl DecisionCache {
    pub(super) fn new(capacity: usize) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            contexts: Mutex::new(LruCache::new(cap)),
        }
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// The decisions of `principal` in `context`, shared by every call with the same key.
    pub(super) fn context(
        &self,
        principal: &Principal,
        context: &FieldContext,
    ) -> Arc<ContextDecisions> {
        let key = ContextKey {
            principal: principal.clone(),
            purpose: context.purpose().clone(),
            consents: context.consents().clone(),
        };
        let Ok(mut contexts) = self.contexts.lock() else {
            // A poisoned cache still decides correctly: every decision is evaluated.
            return Arc::default();
        };
        Arc::clone(contexts.get_or_insert(key, Arc::default))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::domain::{FieldName, Principal, PrincipalKind, Purpose};
    use crate::policy::{FieldAction, Policies};

    fn shipped() -> Policies {
        Policies::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
    }

    /// The shipped set without `shop.cedar`: a new version in which checkout reads nothing.
    fn without_shop_policies() -> Policies {
        let mut sources =
            crate::policy::load_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
                .unwrap();
        sources.policies.remove("shop.cedar");
        Policies::from_sources(&sources).unwrap()
    }

    #[test]
    fn cached_decisions_equal_evaluated_ones_and_key_on_consents() {
        let set = shipped();
        let mailer = Principal::new(PrincipalKind::Service, "mailer").unwrap();
        let email = FieldName::new("email").unwrap();
        let purpose = Purpose::new("email_marketing").unwrap();
        let without = set.field_context(&purpose, Default::default());
        let marketing = Purpose::new("marketing").unwrap();
        let with = set.field_context(
            &purpose,
            set.catalog()
                .resolve_consents(std::iter::once((&marketing, true))),
        );
        for _ in 0..2 {
            let denied = set.decide_field(&mailer, FieldAction::Read, &email, &without);
            assert!(!denied.allowed);
            assert_eq!(
                denied,
                set.evaluate_field(&mailer, FieldAction::Read, &email, &without)
            );
            let allowed = set.decide_field(&mailer, FieldAction::Read, &email, &with);
            assert!(
                allowed.allowed,
                "a consent withdrawn or granted is a different request"
            );
        }
    }

    #[test]
    fn each_policy_set_has_its_own_cache() {
        let old = shipped();
        let checkout = Principal::new(PrincipalKind::Service, "checkout").unwrap();
        let email = FieldName::new("email").unwrap();
        let ctx = old.field_context(&Purpose::new("fulfillment").unwrap(), Default::default());
        assert!(
            old.decide_field(&checkout, FieldAction::Read, &email, &ctx)
                .allowed
        );
        let new = without_shop_policies();
        assert_ne!(old.version(), new.version());
        let ctx = new.field_context(&Purpose::new("fulfillment").unwrap(), Default::default());
        assert!(
            !new.decide_field(&checkout, FieldAction::Read, &email, &ctx)
                .allowed
        );
    }

    #[test]
    fn a_call_context_never_lends_its_decisions_to_another_principal_or_policy_set() {
        let old = shipped();
        let checkout = Principal::new(PrincipalKind::Service, "checkout").unwrap();
        let mailer = Principal::new(PrincipalKind::Service, "mailer").unwrap();
        let email = FieldName::new("email").unwrap();
        let ctx = old.field_context(&Purpose::new("fulfillment").unwrap(), Default::default());
        for _ in 0..2 {
            assert!(
                old.decide_field(&checkout, FieldAction::Read, &email, &ctx)
                    .allowed
            );
            assert!(
                !old.decide_field(&mailer, FieldAction::Read, &email, &ctx)
                    .allowed
            );
        }
        let new = without_shop_policies();
        assert!(
            !new.decide_field(&checkout, FieldAction::Read, &email, &ctx)
                .allowed,
            "the context found its decisions in the old set's cache"
        );
    }
}
