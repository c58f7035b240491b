//! The crash campaign: the real binary under a mixed load (puts, reads, shreds, consent changes,
//! an epoch roll) killed with SIGKILL at random moments, round after round on one data directory,
//! checked by an oracle that lives outside it: every acknowledged write is readable, every
//! acknowledged shred stays unreadable, every value a read returned has its audit record (the log
//! cut into 4 KiB segments, so that kills land while segments roll and seal), the chain verifies, no purge is left pending, and every start-up reaches `listening on`.
//!
//! CI runs a few short rounds; `PRIVAULT_CRASH_ROUNDS=60 cargo test --test it crash --
//! --nocapture` is the long campaign.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use privault::api::pb::key_admin_client::KeyAdminClient;
use privault::api::pb::vault_client::VaultClient;
use privault::api::pb::{self, Outcome};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::binary::{BIN, Served, channel_to, signal, spawn_served};
use crate::support::*;

type Vc = VaultClient<InterceptedService<Channel, As>>;

/// What the oracle knows of one subject.
#[derive(Debug, Default, Clone)]
struct Known {
    /// The last acknowledged value.
    acked: Option<String>,
    /// Values sent after it whose answer never came (each may have committed).
    maybe: Vec<String>,
    /// A shred was sent; once acknowledged the subject must stay unreadable.
    shred_sent: bool,
    shred_acked: bool,
}

#[derive(Debug, Default)]
struct Oracle {
    subjects: BTreeMap<String, Known>,
    /// Request ids of reads that returned a value.
    returned: BTreeSet<String>,
    violations: Vec<String>,
}

fn start_server(data: &std::path::Path) -> (Served, Duration) {
    let mut command = Command::new(BIN);
    command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command.arg(data).arg("--policies").arg(shipped_policies());
    // Small audit segments: the log rolls and seals all the time, so kills land mid-segment and
    // mid-seal too.
    command.args(["--audit-segment-bytes", "4096"]);
    let started = Instant::now();
    let served = spawn_served(command);
    (served, started.elapsed())
}

async fn client(addr: &str, principal: &str) -> Vc {
    VaultClient::with_interceptor(channel_to(addr).await, As::header(Some(principal)))
}

/// One round of load until the deadline (the kill ends it earlier for the calls in flight).
async fn load(addr: String, round: usize, oracle: Arc<Mutex<Oracle>>, until: Instant) {
    let mut tasks = Vec::new();
    // Writer: new subjects and overwrites, each acknowledged value recorded.
    {
        let (addr, oracle) = (addr.clone(), Arc::clone(&oracle));
        tasks.push(tokio::spawn(async move {
            let mut account = client(&addr, ACCOUNT).await;
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let subject = format!("c{round}-{}", n % 12);
                let value = format!("v{round}-{n}@example.com");
                {
                    let mut o = oracle.lock().unwrap();
                    let k = o.subjects.entry(subject.clone()).or_default();
                    if k.shred_sent {
                        continue;
                    }
                    k.maybe.push(value.clone());
                }
                let sent = account
                    .put_fields(put_request(
                        &subject,
                        "account",
                        &[("email", value.as_str())],
                    ))
                    .await;
                if sent.is_ok() {
                    let mut o = oracle.lock().unwrap();
                    let k = o.subjects.get_mut(&subject).unwrap();
                    k.maybe.retain(|v| v != &value);
                    k.acked = Some(value);
                    k.maybe.clear();
                } else {
                    return;
                }
            }
        }));
    }
    // Reader: every value returned must be one the oracle allows, and audited.
    {
        let (addr, oracle) = (addr.clone(), Arc::clone(&oracle));
        tasks.push(tokio::spawn(async move {
            let mut checkout = client(&addr, CHECKOUT).await;
            let mut n = 0usize;
            while Instant::now() < until {
                n += 1;
                let picked = {
                    let o = oracle.lock().unwrap();
                    o.subjects
                        .iter()
                        .nth(n % o.subjects.len().max(1))
                        .map(|(s, k)| (s.clone(), k.clone()))
                };
                let Some((subject, before)) = picked else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let Ok(response) = checkout
                    .get_fields(get_request(&subject, "fulfillment", &["email"]))
                    .await
                else {
                    return;
                };
                let request_id = response
                    .metadata()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let result = response.into_inner().results.remove(0);
                let mut o = oracle.lock().unwrap();
                if result.outcome() == Outcome::Value {
                    o.returned.insert(request_id);
                    let after = o.subjects[&subject].clone();
                    if before.shred_acked {
                        o.violations
                            .push(format!("{subject}: read after its shred was acknowledged"));
                    }
                    let allowed = [&before, &after]
                        .iter()
                        .flat_map(|k| k.acked.iter().chain(&k.maybe))
                        .any(|v| v == &result.value);
                    if !allowed {
                        o.violations
                            .push(format!("{subject}: read a value never written"));
                    }
                }
            }
        }));
    }
    // Shredder and consent changes.
    {
        let (addr, oracle) = (addr.clone(), Arc::clone(&oracle));
        tasks.push(tokio::spawn(async move {
            let mut dpo = client(&addr, DPO).await;
            let mut account = client(&addr, ACCOUNT).await;
            let mut n = 0usize;
            while Instant::now() < until {
                n += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
                let subject = format!("c{round}-{}", n % 12);
                if n.is_multiple_of(3) {
                    let _ = account
                        .set_consent(pb::SetConsentRequest {
                            subject_id: subject.clone(),
                            purpose: "marketing".into(),
                            granted: n.is_multiple_of(2),
                            source: 0,
                        })
                        .await;
                    continue;
                }
                if !n.is_multiple_of(5) {
                    continue;
                }
                {
                    // Only a subject with no write in flight: a put landing after the shred
                    // would be a re-creation, which the model test covers.
                    let mut o = oracle.lock().unwrap();
                    let k = o.subjects.entry(subject.clone()).or_default();
                    if !k.maybe.is_empty() {
                        continue;
                    }
                    k.shred_sent = true;
                }
                let sent = dpo
                    .shred_subject(pb::ShredSubjectRequest {
                        subject_id: subject.clone(),
                        reason: "ticket-crash".into(),
                    })
                    .await;
                if sent.is_err() {
                    return;
                }
                oracle
                    .lock()
                    .unwrap()
                    .subjects
                    .get_mut(&subject)
                    .unwrap()
                    .shred_acked = true;
            }
        }));
    }
    // An epoch roll in every other round, killed wherever it stands.
    if round % 2 == 1 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut keys = KeyAdminClient::with_interceptor(
                channel_to(&addr).await,
                As::header(Some("Operator::\"sec-lead\"")),
            );
            if let Ok(stream) = keys.roll_epoch(pb::RollEpochRequest {}).await {
                let mut stream = stream.into_inner();
                while let Ok(Some(_)) = stream.message().await {}
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

fn rounds() -> usize {
    std::env::var("PRIVAULT_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_no_acknowledged_promise() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let oracle = Arc::new(Mutex::new(Oracle::default()));
    let rounds = rounds();
    let mut slowest_start = Duration::ZERO;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        let (mut served, took) = start_server(&data);
        slowest_start = slowest_start.max(took);
        // A pseudo-random kill moment between 150 and 900 ms into the load.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(150 + seed % 750);
        let until = Instant::now() + kill_after + Duration::from_secs(5);
        let load = tokio::spawn(load(served.addr.clone(), round, Arc::clone(&oracle), until));
        tokio::time::sleep(kill_after).await;
        signal(&served.child, "-KILL");
        served.child.wait().unwrap();
        load.await.unwrap();
    }

    // The last start: the oracle's view of every subject, from outside.
    let (mut served, took) = start_server(&data);
    slowest_start = slowest_start.max(took);
    let mut account = client(&served.addr, ACCOUNT).await;
    let subjects = oracle.lock().unwrap().subjects.clone();
    let mut checked = 0;
    for (subject, known) in &subjects {
        let got = get(&mut account, subject, "account", &["email"])
            .await
            .remove(0);
        let violation = if known.shred_acked {
            (got.outcome() != Outcome::Absent)
                .then(|| format!("{subject}: readable after an acknowledged shred"))
        } else if known.shred_sent && got.outcome() == Outcome::Absent {
            None
        } else {
            match &known.acked {
                Some(v)
                    if got.outcome() == Outcome::Value
                        && (&got.value == v || known.maybe.contains(&got.value)) =>
                {
                    None
                }
                None if got.outcome() == Outcome::Absent
                    || (got.outcome() == Outcome::Value && known.maybe.contains(&got.value)) =>
                {
                    None
                }
                _ => Some(format!(
                    "{subject}: {:?} does not match the acknowledged writes",
                    got.outcome()
                )),
            }
        };
        if let Some(v) = violation {
            oracle.lock().unwrap().violations.push(v);
        }
        checked += 1;
    }
    signal(&served.child, "-TERM");
    assert!(served.child.wait().unwrap().success());

    // The chain verifies, every returned value has its record, no purge is left pending.
    let verify = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let store = privault::store::Store::open_snapshot(&data.join("db")).unwrap();
    let audited: BTreeSet<String> = audit_views(&store)
        .into_iter()
        .filter(|r| r.action == "read" && r.outcome == "ok")
        .map(|r| r.request_id)
        .collect();
    let pending = store
        .scan_prefix(privault::store::Cf::Meta, b"purge/")
        .unwrap()
        .len();
    let o = oracle.lock().unwrap();
    let unaudited = o.returned.difference(&audited).count();
    eprintln!(
        "crash campaign: {rounds} rounds, {rounds} kills, {checked} subjects checked, {} values \
         returned, slowest start {} ms",
        o.returned.len(),
        slowest_start.as_millis()
    );
    assert!(o.violations.is_empty(), "{:#?}", o.violations);
    assert_eq!(unaudited, 0, "values returned without an audit record");
    assert_eq!(pending, 0, "purges left pending after a clean start");
    assert!(
        slowest_start < Duration::from_secs(60),
        "a start-up took {slowest_start:?}"
    );
}
