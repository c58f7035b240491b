//! Canary subjects (an exfiltration alarm): decoys stored like any customer, marked in the keys
//! column family, whose every read is served as usual but raises a loud log line, the audit
//! outcome `canary` and a metric. No legitimate caller has a reason to read one.

use std::sync::Arc;

use crate::audit::{Action, AuditEvent, Outcome};
use crate::domain::{Purpose, SubjectId};
use crate::policy::AdminAction;
use crate::store::keys::canary_key;
use crate::store::{Batch, Cf};
use crate::vault::{CallContext, Vault, VaultError, require};

impl Vault {
    /// Marks `subject` as a canary (creating its keys when it has none yet), as `key_manage`:
    /// the security team plants canaries, stored with ordinary-looking fields through PutFields.
    pub fn add_canary(&self, ctx: &CallContext, subject: &SubjectId) -> Result<(), VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::CanaryAdd, None, &policies);
        let sid = self.keyring.index().sid(subject);
        let _writer = self.lock_subject(&sid)?;
        let staged = (|| {
            self.locate(subject, &mut event)?;
            require(
                policies.decide_admin(&ctx.principal, AdminAction::KeyManage),
                AdminAction::KeyManage.name(),
            )?;
            let mut batch = Batch::new();
            let now = self.clock.now_ms();
            let mut keys = self.keys_for_write(&sid, &Default::default(), &mut batch, now)?;
            keys.canary = true;
            event.subject = Some(keys.pseudonym);
            batch.put(Cf::Keys, canary_key(&sid), now.to_be_bytes().to_vec());
            Ok((batch, keys))
        })();
        let (keys, _) = self.finish(event, staged)?;
        self.keys.publish(sid, Arc::new(keys));
        Ok(())
    }

    /// Raises the alarm for a read of a canary: the loud log line and the metric now, the audit
    /// outcome `canary` on the read's record.
    pub(in crate::vault) fn canary_read(
        &self,
        ctx: &CallContext,
        purpose: &Purpose,
        event: &mut AuditEvent,
    ) {
        crate::metrics::metrics().canary_reads.inc();
        tracing::error!(
            principal = %ctx.principal,
            purpose = %purpose,
            request_id = %ctx.request_id,
            subject = ?event.subject,
            "CANARY READ: a canary subject was read; whoever holds this principal's credentials may be \
             exfiltrating data"
        );
        event.outcome = Outcome::Canary;
    }
}
