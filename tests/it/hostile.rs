//! Hostile input through the real server: random subject ids, purposes, field names and values
//! (empty, huge, control characters, near-misses of real names) in every data-plane call. Each
//! malformed request gets a definite code (never UNKNOWN or INTERNAL), its error echoes no value
//! or subject id, and it changes nothing stored.

use privault::api::pb;
use privault::store::Cf;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Code;

use crate::support::*;

/// Text a hostile or careless caller sends: real names, near misses, and anything at all.
fn text(real: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => proptest::sample::select(real).prop_map(str::to_owned),
        1 => proptest::sample::select(real).prop_map(|s| format!("{s}X")),
        1 => Just(String::new()),
        1 => "[A-Za-z0-9 _.\\-\u{0}\u{7f}é\n]{1,40}",
        1 => proptest::collection::vec(any::<char>(), 0..20).prop_map(|c| c.into_iter().collect()),
        1 => Just("s".repeat(300)),
    ]
}

const SUBJECTS: &[&str] = &["cust-1", "cust-2"];
const PURPOSES: &[&str] = &["account", "fulfillment", "marketing", "email_marketing"];
const FIELDS: &[&str] = &["email", "phone", "payment_card", "recent_views"];

#[derive(Debug, Clone)]
enum Call {
    Put(String, String, Vec<(String, String)>),
    Get(String, String, Vec<String>),
    Delete(String, String, Vec<String>),
    Batch(Vec<String>, String, Vec<String>),
    Consent(String, String, bool),
    Shred(String, String),
    Find(String, String, String),
}

fn call() -> impl Strategy<Value = Call> {
    let s = || text(SUBJECTS);
    let p = || text(PURPOSES);
    let f = || proptest::collection::vec(text(FIELDS), 0..4);
    prop_oneof![
        (
            s(),
            p(),
            proptest::collection::vec((text(FIELDS), text(&["v@x.y"])), 0..3)
        )
            .prop_map(|(a, b, c)| Call::Put(a, b, c)),
        (s(), p(), f()).prop_map(|(a, b, c)| Call::Get(a, b, c)),
        (s(), p(), f()).prop_map(|(a, b, c)| Call::Delete(a, b, c)),
        (proptest::collection::vec(s(), 0..4), p(), f()).prop_map(|(a, b, c)| Call::Batch(a, b, c)),
        (s(), p(), any::<bool>()).prop_map(|(a, b, c)| Call::Consent(a, b, c)),
        (s(), text(&["ticket-1"])).prop_map(|(a, b)| Call::Shred(a, b)),
        (text(FIELDS), text(&["a@b.c"]), p()).prop_map(|(a, b, c)| Call::Find(a, b, c)),
    ]
}

/// Everything stored about subjects, to compare before and after a refused call.
fn subject_state(server: &TestServer) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    let vault = server.vault();
    [Cf::Keys, Cf::Fields, Cf::Consent, Cf::Lookup, Cf::Shredded]
        .into_iter()
        .flat_map(|cf| {
            vault
                .store()
                .scan_prefix(cf, &[])
                .unwrap()
                .into_iter()
                .map(move |(k, v)| (cf, k, v))
        })
        .collect()
}

async fn send(server: &TestServer, call: &Call) -> Result<(), tonic::Status> {
    let principal = match call {
        Call::Shred(..) => DPO,
        Call::Batch(..) | Call::Find(..) => CHECKOUT,
        _ => ACCOUNT,
    };
    let mut client = server.client(principal).await;
    match call.clone() {
        Call::Put(s, p, f) => {
            let fields: Vec<(&str, &str)> =
                f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client
                .put_fields(put_request(&s, &p, &fields))
                .await
                .map(drop)
        }
        Call::Get(s, p, f) => {
            let f: Vec<&str> = f.iter().map(String::as_str).collect();
            client.get_fields(get_request(&s, &p, &f)).await.map(drop)
        }
        Call::Delete(s, p, f) => client
            .delete_fields(pb::DeleteFieldsRequest {
                subject_id: s,
                purpose: p,
                fields: f,
            })
            .await
            .map(drop),
        Call::Batch(s, p, f) => client
            .batch_get_fields(pb::BatchGetFieldsRequest {
                subject_ids: s,
                purpose: p,
                fields: f,
            })
            .await
            .map(drop),
        Call::Consent(s, p, g) => client
            .set_consent(pb::SetConsentRequest {
                subject_id: s,
                purpose: p,
                granted: g,
                source: 0,
            })
            .await
            .map(drop),
        Call::Shred(s, r) => client
            .shred_subject(pb::ShredSubjectRequest {
                subject_id: s,
                reason: r,
            })
            .await
            .map(drop),
        Call::Find(f, v, p) => client
            .find_subject(pb::FindSubjectRequest {
                field: f,
                value: v,
                purpose: p,
            })
            .await
            .map(drop),
    }
}

/// The subject ids and values a call carries that are distinctive enough to search for.
fn secrets(call: &Call) -> Vec<String> {
    let mut out: Vec<String> = match call {
        Call::Put(s, _, f) => std::iter::once(s.clone())
            .chain(f.iter().map(|(_, v)| v.clone()))
            .collect(),
        Call::Get(s, ..) | Call::Delete(s, ..) | Call::Consent(s, ..) | Call::Shred(s, _) => {
            vec![s.clone()]
        }
        Call::Batch(s, ..) => s.clone(),
        Call::Find(_, v, _) => vec![v.clone()],
    };
    out.retain(|s| s.len() >= 5);
    out
}

#[test]
fn malformed_calls_get_a_definite_code_echo_nothing_and_change_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let vault = TestVault::new();
    let server = rt.block_on(vault.start());
    rt.block_on(put_profile(&server, "cust-1"));
    let cases = std::env::var("PRIVAULT_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&call(), |call| {
        let before = subject_state(&server);
        let answer = rt.block_on(send(&server, &call));
        if let Err(status) = answer {
            prop_assert!(
                !matches!(status.code(), Code::Unknown | Code::Internal),
                "{call:?} got {status:?}"
            );
            for secret in secrets(&call) {
                prop_assert!(
                    !status.message().contains(&secret),
                    "{call:?} echoed {secret:?}: {}",
                    status.message()
                );
            }
            // A refused call changes nothing (its audit record aside).
            prop_assert!(
                subject_state(&server) == before,
                "{call:?} changed the store"
            );
        }
        Ok(())
    });
    rt.block_on(server.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
}
