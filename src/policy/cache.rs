//! The decision cache: each policy set owns one, keyed by the full request (principal, action,
//! field, purpose, consent set). Because a new policy version is a new set with an empty cache, a
//! cached decision can never come from an older version.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::{Decision, FieldAction, FieldContext};
use crate::catalog::EffectiveConsents;
use crate::domain::{FieldName, Principal, Purpose};

/// Decisions kept per policy set.
pub const DECISION_CACHE_CAPACITY: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DecisionKey {
    principal: Principal,
    action: FieldAction,
    field: FieldName,
    purpose: Purpose,
    consents: EffectiveConsents,
}

impl DecisionKey {
    pub(super) fn new(
        principal: &Principal,
        action: FieldAction,
        field: &FieldName,
        context: &FieldContext,
    ) -> Self {
        Self {
            principal: principal.clone(),
            action,
            field: field.clone(),
            purpose: context.purpose().clone(),
            consents: context.consents().clone(),
        }
    }
}

pub(super) struct DecisionCache {
    inner: Mutex<LruCache<DecisionKey, Decision>>,
}

impl DecisionCache {
    pub(super) fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(LruCache::new(cap)),
        }
    }

    pub(super) fn get(&self, key: &DecisionKey) -> Option<Decision> {
        self.inner.lock().ok()?.get(key).cloned()
    }

    pub(super) fn insert(&self, key: DecisionKey, decision: Decision) {
        if let Ok(mut cache) = self.inner.lock() {
            cache.put(key, decision);
        }
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
        let mut sources =
            crate::policy::load_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
                .unwrap();
        sources.policies.remove("shop.cedar");
        let new = Policies::from_sources(&sources).unwrap();
        assert_ne!(old.version(), new.version());
        let ctx = new.field_context(&Purpose::new("fulfillment").unwrap(), Default::default());
        assert!(
            !new.decide_field(&checkout, FieldAction::Read, &email, &ctx)
                .allowed
        );
    }
}
