//! The KEK epoch roll and DEK rotation on demand. A roll adds a fresh KEK as the current epoch
//! (new DEKs wrap under it at once), re-wraps every stored DEK, pseudonym and subject id under it in
//! bounded slices (each its own synced batch with an audit record; reads and writes go on), and
//! then destroys the old KEKs, so every stale copy of a shredded DEK — old SST files, backups —
//! can never be unwrapped again. A roll interrupted by a crash resumes: the keyring still holds
//! the old epochs, and the next roll (or the next start) carries on from the first entry.

use std::collections::BTreeSet;

use crate::audit::{Action, AuditEvent, Detail, Outcome};
use crate::crypto::{Kek, SubjectSecret};
use crate::domain::{KeyClass, Sid, SubjectId};
use crate::policy::AdminAction;
use crate::store::keys::{pseudonym_key, subject_id_key};
use crate::store::records::{KeyRecord, SubjectIdRecord};
use crate::store::{Batch, Cf};
use crate::vault::keys::dek_entry;
use crate::vault::quarantine::Maintenance;
use crate::vault::{CallContext, Vault, VaultError, require};

/// Entries of the keys column family examined per slice of a roll.
pub const ROLL_SLICE: usize = 1000;

/// Where a roll stands after a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollProgress {
    /// The epoch everything is being re-wrapped under.
    pub epoch: u32,
    /// Entries re-wrapped so far in this run.
    pub rewrapped: u64,
    /// Keys-CF entries examined so far in this pass.
    pub examined: u64,
    /// The entries this pass examines: RocksDB's estimate when the pass began (a progress
    /// total, not a promise: writes during the roll add to it).
    pub total: u64,
    /// Whether the old epochs are destroyed and the roll is over.
    pub done: bool,
    /// The epochs destroyed at the end.
    pub destroyed: Vec<u32>,
}

impl Vault {
    pub(in crate::vault) fn key_event(&self, principal: &str, action: Action) -> AuditEvent {
        AuditEvent {
            request_id: "keys".into(),
            policy_version: self.policies().version(),
            ..AuditEvent::new(principal, action)
        }
    }

    /// Whether a roll was started and not finished (the keyring holds more than one epoch).
    pub fn epoch_roll_pending(&self) -> bool {
        self.keyring.epoch_numbers().len() > 1
    }

    /// This node's turn to roll (on PostgreSQL, one node rolls at a time; RocksDB has one
    /// process), with the keyring taken up as the last roll left it. `None` while another node
    /// rolls.
    fn roll_turn(&self) -> Result<Option<RollTurn>, VaultError> {
        let Some(pg) = self.store.postgres() else {
            return Ok(Some(RollTurn { _lease: None }));
        };
        let Some(lease) = pg.try_roll_lease()? else {
            return Ok(None);
        };
        self.keyring
            .reload()
            .map_err(|e| VaultError::Unavailable(format!("cannot read the keyring: {e}")))?;
        Ok(Some(RollTurn {
            _lease: Some(lease),
        }))
    }

    /// The epochs the keyring holds and the current one, for `ctx` authorized as `key_manage`.
    pub fn key_status(&self, ctx: &CallContext) -> Result<(Vec<u32>, u32), VaultError> {
        let policies = self.policies();
        let event = self.event(ctx, Action::KeyStatus, None, &policies);
        let result = require(
            policies.decide_admin(&ctx.principal, AdminAction::KeyManage),
            AdminAction::KeyManage.name(),
        )
        .map(|()| {
            (
                Batch::new(),
                (self.keyring.epoch_numbers(), self.keyring.current_epoch()),
            )
        });
        self.finish(event, result).map(|(v, _)| v)
    }

    /// Rolls the KEK epoch for `ctx` (authorized as `key_manage`), or resumes an unfinished roll,
    /// calling `progress` after every slice. Returns the final progress.
    pub fn roll_epoch(
        &self,
        ctx: &CallContext,
        progress: impl FnMut(&RollProgress),
    ) -> Result<RollProgress, VaultError> {
        let policies = self.policies();
        let decision = policies.decide_admin(&ctx.principal, AdminAction::KeyManage);
        let mut event = self.event(ctx, Action::KeyRollEpoch, None, &policies);
        if let Err(e) = require(decision, AdminAction::KeyManage.name()) {
            return self.fail(event, e);
        }
        let _turn = match self.roll_turn() {
            Ok(Some(turn)) => turn,
            Ok(None) => {
                let busy = VaultError::FailedPrecondition(
                    "another node is rolling the KEK epoch: watch it with `privault keys status`"
                        .into(),
                );
                return self.fail(event, busy);
            }
            Err(e) => return self.fail(event, e),
        };
        let resumed = self.epoch_roll_pending();
        let epoch = if resumed {
            self.keyring.current_epoch()
        } else {
            let _writer = self.lock_writer()?;
            self.keyring
                .add_epoch(self.clock.now_ms())
                .map_err(|e| VaultError::Unavailable(format!("cannot extend the keyring: {e}")))?
        };
        event.outcome = if resumed {
            Outcome::Resumed
        } else {
            Outcome::Started
        };
        event.detail = Some(Detail::Epoch(epoch));
        self.commit(Batch::new(), event)?;
        self.continue_roll(&ctx.principal.to_string(), progress)
    }

    /// Rolls the epoch as the system when the current one is older than `max_age_ms` (the
    /// `--epoch-roll-days` schedule). `None` when it is not due.
    pub fn roll_epoch_if_older(&self, max_age_ms: u64) -> Result<Option<RollProgress>, VaultError> {
        let Some(_turn) = self.roll_turn()? else {
            return Ok(None);
        };
        if self.epoch_roll_pending() {
            return self.continue_roll("privault", |_| {}).map(Some);
        }
        let created = self
            .keyring
            .current_epoch_created_ms()
            .map_err(|e| VaultError::Unavailable(e.to_string()))?;
        let worn = self.kek_wraps_exhausted();
        if self.clock.now_ms().saturating_sub(created) < max_age_ms && !worn {
            return Ok(None);
        }
        if worn {
            tracing::warn!("the current KEK has made 2^31 wraps: rolling the epoch");
        }
        let epoch = {
            let _writer = self.lock_writer()?;
            self.keyring
                .add_epoch(self.clock.now_ms())
                .map_err(|e| VaultError::Unavailable(format!("cannot extend the keyring: {e}")))?
        };
        let mut event = self.key_event("privault", Action::KeyRollEpoch);
        event.outcome = Outcome::Scheduled;
        event.detail = Some(Detail::Epoch(epoch));
        self.commit(Batch::new(), event)?;
        self.continue_roll("privault", |_| {}).map(Some)
    }

    /// Finishes an unfinished roll as the system (at start, after a crash). `None` when there was
    /// nothing to finish.
    pub fn resume_epoch_roll(&self) -> Result<Option<RollProgress>, VaultError> {
        if !self.epoch_roll_pending() {
            return Ok(None);
        }
        let Some(_turn) = self.roll_turn()? else {
            return Ok(None);
        };
        if !self.epoch_roll_pending() {
            return Ok(None);
        }
        self.continue_roll("privault", |_| {}).map(Some)
    }

    fn continue_roll(
        &self,
        principal: &str,
        mut progress: impl FnMut(&RollProgress),
    ) -> Result<RollProgress, VaultError> {
        let epoch = self.keyring.current_epoch();
        let mut state = RollProgress {
            epoch,
            rewrapped: 0,
            examined: 0,
            total: 0,
            done: false,
            destroyed: Vec::new(),
        };
        let remaining = &crate::metrics::metrics().epoch_roll_keys_remaining;
        // Whatever ends the roll (done, error, injected crash), the gauge says no roll runs.
        let _reset = crate::metrics::ResetOnDrop(remaining);
        // Passes until one finds nothing left under an old epoch; writers only ever wrap under
        // the current epoch, so the second pass normally finds nothing.
        loop {
            let mut cursor = Vec::new();
            let mut found = 0;
            state.examined = 0;
            state.total = self.store.estimate_keys(Cf::Keys);
            loop {
                let (next, count, examined) = self.rewrap_slice(principal, &cursor, ROLL_SLICE)?;
                state.examined += examined;
                state.total = state.total.max(state.examined);
                remaining.set(i64::try_from(state.total - state.examined).unwrap_or(i64::MAX));
                fail::fail_point!("roll-after-slice", |_| Err(VaultError::Unavailable(
                    "epoch roll stopped (injected)".into()
                )));
                found += count;
                state.rewrapped += count;
                progress(&state);
                match next {
                    Some(n) => cursor = n,
                    None => break,
                }
            }
            if found == 0 {
                break;
            }
        }
        fail::fail_point!("roll-before-destroy", |_| Err(VaultError::Unavailable(
            "epoch roll stopped (injected)".into()
        )));
        let _writer = self.lock_writer()?;
        state.destroyed = self
            .keyring
            .destroy_old_epochs()
            .map_err(|e| VaultError::Unavailable(format!("cannot rewrite the keyring: {e}")))?;
        let mut event = self.key_event(principal, Action::KeyEpochDestroyed);
        event.detail = Some(Detail::EpochsDestroyed(state.destroyed.clone()));
        self.commit(Batch::new(), event)?;
        state.done = true;
        progress(&state);
        Ok(state)
    }

    /// Re-wraps the entries wrapped under an old epoch among up to `limit` keys-CF entries from
    /// `cursor`, in one batch under the writer lock. Returns where to continue, how many were
    /// re-wrapped and how many were examined.
    fn rewrap_slice(
        &self,
        principal: &str,
        cursor: &[u8],
        limit: usize,
    ) -> Result<(Option<Vec<u8>>, u64, u64), VaultError> {
        let _writer = self.lock_writer()?;
        let entries = self.store.scan_from(Cf::Keys, cursor, limit)?;
        let examined = entries.len() as u64;
        let next = match entries.last() {
            Some((key, _)) if entries.len() == limit => {
                let mut after = key.clone();
                after.push(0);
                Some(after)
            }
            _ => None,
        };
        let current = self.keyring.current_kek();
        let now = self.clock.now_ms();
        let mut batch = Batch::new();
        let mut count = 0;
        let mut unreadable = Vec::new();
        for (key, value) in entries {
            let Some(sid) = key.get(..32).and_then(|s| <[u8; 32]>::try_from(s).ok()) else {
                tracing::error!("epoch roll: a keys entry has no subject handle; skipped");
                continue;
            };
            let sid = Sid(sid);
            // An entry that fails its integrity check cannot be unwrapped under any epoch, so
            // destroying the old KEK loses nothing of it: its subject is quarantined and the roll
            // goes on.
            match self.rewrapped_entry(&sid, &key, &value, &current, now) {
                Ok(Some(bytes)) => {
                    batch.put(Cf::Keys, key, bytes);
                    batch.wrapped_under(current.epoch());
                    count += 1;
                }
                Ok(None) => {}
                Err(err @ VaultError::DataLoss(_)) => unreadable.push((sid, err)),
                Err(err) => return Err(err),
            }
        }
        if count > 0 {
            self.kek_for_wraps(count);
            let mut event = self.key_event(principal, Action::KeyRewrap);
            event.detail = Some(Detail::KeysRewrapped(count));
            self.commit(batch, event)?;
        }
        for (sid, err) in unreadable {
            self.quarantine(&sid, Maintenance::EpochRoll, &err)?;
        }
        Ok((next, count, examined))
    }

    /// A keys-CF entry of `sid` re-wrapped under `current`, or `None` when it already is (or is not
    /// wrapped at all).
    fn rewrapped_entry(
        &self,
        sid: &Sid,
        key: &[u8],
        value: &[u8],
        current: &Kek,
        now: crate::clock::Millis,
    ) -> Result<Option<Vec<u8>>, VaultError> {
        if key == pseudonym_key(sid) {
            return self.rewrap_pseudonym(sid, value, now);
        }
        if key == subject_id_key(sid) {
            let record =
                SubjectIdRecord::decode(value).map_err(|e| VaultError::DataLoss(e.to_string()))?;
            if record.epoch == current.epoch() {
                return Ok(None);
            }
            let id = self.unwrap_subject_id(sid, &record)?;
            let wrapped = current
                .wrap_secret(SubjectSecret::Id, sid, &id)
                .map_err(|e| VaultError::Internal(e.to_string()))?;
            let record = SubjectIdRecord {
                epoch: wrapped.epoch,
                nonce: wrapped.nonce,
                wrapped: wrapped.ciphertext,
            };
            return Ok(Some(record.encode()));
        }
        let Some((class, record)) = dek_entry(key, value)? else {
            return Ok(None);
        };
        if record.epoch == current.epoch() {
            return Ok(None);
        }
        let dek = self.unwrap_dek_key(sid, &class, &record)?;
        let wrapped = current
            .wrap(&dek, sid, &class)
            .map_err(|e| VaultError::Internal(e.to_string()))?;
        let record = KeyRecord {
            epoch: wrapped.epoch,
            nonce: wrapped.nonce,
            wrapped: wrapped.ciphertext,
            ..record
        };
        Ok(Some(record.encode()))
    }

    /// Rotates every DEK of `subject` (re-sealing all its fields), for `ctx` authorized as
    /// `key_manage`. Returns how many classes were rotated and fields re-sealed.
    pub fn rotate_subject_keys(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
    ) -> Result<(usize, usize), VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::KeyRotateDek, None, &policies);
        let _writer = self.lock_subject(&self.keyring.index().sid(subject))?;
        let staged = (|| {
            let (sid, _) = self.locate(subject, &mut event)?;
            require(
                policies.decide_admin(&ctx.principal, AdminAction::KeyManage),
                AdminAction::KeyManage.name(),
            )?;
            let mut batch = Batch::new();
            let Some(mut keys) = self.load_keys(&sid)? else {
                return Ok(crate::vault::write::Staged {
                    batch,
                    value: (0, 0),
                    keys: None,
                });
            };
            let classes: BTreeSet<KeyClass> = keys.records.keys().cloned().collect();
            let resealed = self.rotate_deks(
                &sid,
                &mut keys,
                &classes,
                &BTreeSet::new(),
                policies.catalog(),
                &mut batch,
                self.clock.now_ms(),
            )?;
            Ok(crate::vault::write::Staged {
                batch,
                value: (classes.len(), resealed),
                keys: Some((sid, keys)),
            })
        })();
        self.finish_staged(event, staged)
    }
}

/// Held while this node rolls the epoch: the PostgreSQL roll lease (none on RocksDB).
struct RollTurn {
    _lease: Option<crate::store::postgres::RollLease>,
}
