//! Legal holds (GDPR Art. 17(3)(e)): what is held, for whom, why and until when, and the book of
//! holds in force that shreds, the retention sweeper and deletes consult. The deletion ledger is
//! their durable home (so a restore of `db/` never drops one); this is the in-memory view of it.

use std::collections::BTreeMap;

use crate::clock::Millis;
use crate::domain::{KeyClass, Sid};

/// What a hold keeps of a subject: one key class, or every class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldScope {
    /// Every key class the subject has.
    All,
    /// The fields sealed under one key class (`tax`).
    Class(KeyClass),
}

impl HoldScope {
    /// The scope's name in requests, policies and the ledger: `all` or the class.
    pub fn name(&self) -> &str {
        match self {
            Self::All => "all",
            Self::Class(class) => class.as_str(),
        }
    }

    /// The scope named `name`: `all` (or nothing) is every class. `all` is therefore never a key
    /// class name a hold can single out.
    pub fn parse(name: &str) -> Result<Self, crate::domain::InvalidInput> {
        match name {
            "" | "all" => Ok(Self::All),
            other => KeyClass::new(other).map(Self::Class),
        }
    }

    /// Whether the scope keeps `class`.
    pub fn covers(&self, class: &KeyClass) -> bool {
        match self {
            Self::All => true,
            Self::Class(c) => c == class,
        }
    }
}

/// One hold in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Why (a case or ticket reference: never personal data).
    pub reason: String,
    /// When it was placed.
    pub placed_ms: Millis,
    /// When it lapses by itself; `None` holds until released.
    pub until_ms: Option<Millis>,
}

impl Hold {
    /// Whether the hold still binds at `now`.
    pub fn binds(&self, now: Millis) -> bool {
        self.until_ms.is_none_or(|until| now < until)
    }
}

/// Every hold placed and not released, per subject and scope. Lapsed holds stay listed until the
/// vault has finished what their lapse allows ([`HoldBook::lapsed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldBook {
    holds: BTreeMap<Sid, BTreeMap<HoldScope, Hold>>,
}

impl HoldBook {
    /// Records `hold` on `sid`'s `scope`, replacing an earlier hold of the same scope (placing a
    /// hold again extends or shortens it).
    pub fn place(&mut self, sid: Sid, scope: HoldScope, hold: Hold) {
        self.holds.entry(sid).or_default().insert(scope, hold);
    }

    /// Removes the hold on `sid`'s `scope`; returns it when there was one.
    pub fn release(&mut self, sid: &Sid, scope: &HoldScope) -> Option<Hold> {
        let scopes = self.holds.get_mut(sid)?;
        let hold = scopes.remove(scope);
        if scopes.is_empty() {
            self.holds.remove(sid);
        }
        hold
    }

    /// The holds on `sid`, lapsed or not.
    pub fn of(&self, sid: &Sid) -> impl Iterator<Item = (&HoldScope, &Hold)> {
        self.holds.get(sid).into_iter().flatten()
    }

    /// The hold binding `class` of `sid` at `now`, if any (the one naming the class before `all`).
    pub fn holding(&self, sid: &Sid, class: &KeyClass, now: Millis) -> Option<&Hold> {
        let scopes = self.holds.get(sid)?;
        scopes
            .get(&HoldScope::Class(class.clone()))
            .filter(|h| h.binds(now))
            .or_else(|| scopes.get(&HoldScope::All).filter(|h| h.binds(now)))
    }

    /// Which of `classes` are held for `sid` at `now`, each with its hold's reason.
    pub fn kept<'a>(
        &self,
        sid: &Sid,
        classes: impl IntoIterator<Item = &'a KeyClass>,
        now: Millis,
    ) -> BTreeMap<KeyClass, String> {
        classes
            .into_iter()
            .filter_map(|class| {
                let hold = self.holding(sid, class, now)?;
                Some((class.clone(), hold.reason.clone()))
            })
            .collect()
    }

    /// The holds that lapsed by `now` (their `until` passed), to be retired.
    pub fn lapsed(&self, now: Millis) -> Vec<(Sid, HoldScope)> {
        self.holds
            .iter()
            .flat_map(|(sid, scopes)| {
                scopes
                    .iter()
                    .filter(move |(_, h)| !h.binds(now))
                    .map(move |(scope, _)| (*sid, scope.clone()))
            })
            .collect()
    }

    /// How many holds are in force at `now`.
    pub fn binding_count(&self, now: Millis) -> usize {
        self.holds
            .values()
            .flat_map(BTreeMap::values)
            .filter(|h| h.binds(now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(until_ms: Option<Millis>) -> Hold {
        Hold {
            reason: "case-1".into(),
            placed_ms: 0,
            until_ms,
        }
    }

    #[test]
    fn a_class_hold_keeps_its_class_and_all_keeps_every_class() {
        let tax = KeyClass::new("tax").unwrap();
        let default = KeyClass::default_class();
        let mut book = HoldBook::default();
        book.place(Sid([1; 32]), HoldScope::Class(tax.clone()), hold(None));
        book.place(Sid([2; 32]), HoldScope::All, hold(Some(100)));
        let kept = book.kept(&Sid([1; 32]), [&tax, &default], 50);
        assert_eq!(kept.keys().collect::<Vec<_>>(), vec![&tax]);
        assert_eq!(book.kept(&Sid([2; 32]), [&tax, &default], 50).len(), 2);
        assert!(
            book.kept(&Sid([2; 32]), [&tax], 100).is_empty(),
            "lapsed at until"
        );
        assert_eq!(book.lapsed(100), vec![(Sid([2; 32]), HoldScope::All)]);
        assert!(book.release(&Sid([1; 32]), &HoldScope::All).is_none());
        assert!(
            book.release(&Sid([1; 32]), &HoldScope::Class(tax))
                .is_some()
        );
        assert_eq!(book.of(&Sid([1; 32])).count(), 0);
        assert_eq!(book.of(&Sid([2; 32])).count(), 1);
    }

    #[test]
    fn scopes_parse_all_or_a_class() {
        assert_eq!(HoldScope::parse("").unwrap(), HoldScope::All);
        assert_eq!(HoldScope::parse("all").unwrap(), HoldScope::All);
        assert_eq!(HoldScope::parse("tax").unwrap().name(), "tax");
        assert!(HoldScope::parse("no spaces").is_err());
    }
}
