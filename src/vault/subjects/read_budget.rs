//! Read budgets (an exfiltration guard): per service and purpose, at most N distinct subjects per
//! window (`[services.<name>] read_budget = "5000/1h"` in the catalog). Windows are fixed
//! (aligned to the epoch), counted in memory: re-reading a subject already counted in the window
//! costs nothing; a restart starts every window afresh.
//!
//! Hand-written rather than `governor`: a rate limiter counts calls, this counts distinct
//! subjects, which needs the set of subjects seen in the window.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use crate::catalog::ReadBudget;
use crate::clock::Millis;
use crate::domain::{Principal, Purpose, Sid};

/// One window of one service and purpose: its index and the subjects read in it.
#[derive(Default)]
struct Window {
    index: u64,
    subjects: HashSet<[u8; 16]>,
}

/// Every service and purpose's current window.
#[derive(Default)]
pub(in crate::vault) struct ReadBudgets {
    windows: Mutex<HashMap<(Principal, Purpose), Window>>,
}

impl ReadBudgets {
    /// Whether `principal` may read `sid` for `purpose` under `budget` at `now`: yes when the
    /// subject is already counted in the current window or the window has room (it is counted
    /// then), no when the window is full.
    pub fn admit(
        &self,
        principal: &Principal,
        purpose: &Purpose,
        sid: &Sid,
        budget: ReadBudget,
        now: Millis,
    ) -> bool {
        let index = now / budget.window_ms.max(1);
        // A prefix of the sid: the sid is already a keyed hash, and 128 bits do not collide.
        let mut subject = [0u8; 16];
        subject.copy_from_slice(&sid.0[..16]);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let window = windows
            .entry((principal.clone(), purpose.clone()))
            .or_default();
        if window.index != index {
            window.index = index;
            window.subjects.clear();
        }
        if window.subjects.contains(&subject) {
            return true;
        }
        if window.subjects.len() as u64 >= budget.subjects {
            return false;
        }
        window.subjects.insert(subject);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PrincipalKind;

    #[test]
    fn distinct_subjects_count_and_rereads_do_not() {
        let budgets = ReadBudgets::default();
        let p = Principal::new(PrincipalKind::Service, "recommender").unwrap();
        let purpose = Purpose::new("personalization").unwrap();
        let budget = ReadBudget {
            subjects: 2,
            window_ms: 1000,
        };
        let sid = |b: u8| Sid([b; 32]);
        assert!(budgets.admit(&p, &purpose, &sid(1), budget, 0));
        assert!(
            budgets.admit(&p, &purpose, &sid(1), budget, 10),
            "a re-read"
        );
        assert!(budgets.admit(&p, &purpose, &sid(2), budget, 20));
        assert!(
            !budgets.admit(&p, &purpose, &sid(3), budget, 30),
            "a third subject"
        );
        assert!(
            budgets.admit(&p, &purpose, &sid(2), budget, 40),
            "still counted"
        );
        let other = Purpose::new("support").unwrap();
        assert!(
            budgets.admit(&p, &other, &sid(3), budget, 50),
            "per purpose"
        );
        assert!(
            budgets.admit(&p, &purpose, &sid(3), budget, 1000),
            "the next window"
        );
    }
}
