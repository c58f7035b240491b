//! Training-set extraction through the real server: Extract reads the consenting customers' allowed
//! fields and views page by page (cursor), keys each row by a pseudonym scoped to the extract,
//! ends each call with a manifest signed by the audit key, passes over canaries, and audits every
//! subject; ExtractRevocations names the rows whose customer since shredded, withdrew or objected;
//! and every refusal says why.

use std::collections::BTreeSet;

use privault::api::pb;
use privault::api::pb::extract_response::Item;
use privault::api::pb::key_admin_client::KeyAdminClient;
use privault::api::pb::record_signal_request::Signal;
use privault::api::pb::revocation::Reason;
use privault::manifest::SignedManifest;
use tonic::Code;

use crate::support::*;

const TRAINER: &str = "Service::\"trainer\"";
const FIELDS: [&str; 2] = ["favorite_categories", "birth_date.age_band"];

/// A birth date making the customer 30 on every day of this year (the age band 25-34).
fn birth_date() -> String {
    let year: i32 = privault::clock::rfc3339(now_ms())[..4].parse().unwrap();
    format!("{}-01-01", year - 30)
}

async fn customer(server: &TestServer, subject: &str, consents: bool) {
    put_account(
        server,
        subject,
        &[
            ("favorite_categories", "tea,books"),
            ("birth_date", &birth_date()),
        ],
    )
    .await;
    if consents {
        set_consent(server, subject, "model_training", true).await;
    }
}

async fn set_consent(server: &TestServer, subject: &str, purpose: &str, granted: bool) {
    server
        .client(ACCOUNT)
        .await
        .set_consent(pb::SetConsentRequest {
            subject_id: subject.into(),
            purpose: purpose.into(),
            granted,
            source: 0,
        })
        .await
        .unwrap();
}

fn request(extract_id: &str, subjects: &[&str], cursor: &str, limit: u32) -> pb::ExtractRequest {
    pb::ExtractRequest {
        extract_id: extract_id.into(),
        purpose: "model_training".into(),
        fields: FIELDS.iter().map(|f| (*f).to_owned()).collect(),
        subject_ids: subjects.iter().map(|s| (*s).to_owned()).collect(),
        every_subject: subjects.is_empty(),
        cursor: cursor.into(),
        limit,
    }
}

/// The rows and the manifest of one call.
async fn extract(
    server: &TestServer,
    principal: &str,
    request: pb::ExtractRequest,
) -> Result<(Vec<pb::ExtractRow>, pb::ExtractManifest), tonic::Status> {
    let mut stream = server
        .client(principal)
        .await
        .extract(request)
        .await?
        .into_inner();
    let mut rows = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.item.unwrap() {
            Item::Row(row) => rows.push(row),
            Item::Manifest(manifest) => {
                assert!(stream.message().await?.is_none(), "the manifest comes last");
                return Ok((rows, manifest));
            }
        }
    }
    panic!("no manifest")
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    u64::try_from(since.unwrap().as_millis()).unwrap()
}

async fn public_key(server: &TestServer) -> String {
    server
        .auditor(AUDITOR)
        .await
        .head(pb::AuditHeadRequest::default())
        .await
        .unwrap()
        .into_inner()
        .public_key
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extract_of_every_subject_pages_by_cursor_and_returns_only_consenting_rows() {
    let vault = TestVault::new();
    let server = vault.start().await;
    for i in 0..5 {
        customer(&server, &format!("cust-train-{i}"), i != 4).await;
    }
    customer(&server, "decoy-train", true).await;
    KeyAdminClient::with_interceptor(
        server.channel().await,
        As::header(Some("Operator::\"sec-lead\"")),
    )
    .add_canary(pb::AddCanaryRequest {
        subject_id: "decoy-train".into(),
    })
    .await
    .unwrap();
    let key = public_key(&server).await;

    let (mut extract_id, mut cursor) = (String::new(), String::new());
    let mut rows = Vec::new();
    let mut parts = 0;
    loop {
        let (page, manifest) = extract(&server, TRAINER, request(&extract_id, &[], &cursor, 2))
            .await
            .unwrap();
        parts += 1;
        assert!(manifest.examined <= 2);
        let signed = SignedManifest::verify(&manifest.manifest, &key).unwrap();
        assert_eq!(signed.body.extract_id, manifest.extract_id);
        assert_eq!(signed.body.purpose, "model_training");
        assert_eq!(signed.body.part, parts);
        assert_eq!(
            signed.body.row_keys,
            page.iter().map(|r| r.row_key.clone()).collect::<Vec<_>>()
        );
        assert_eq!(signed.body.complete, manifest.next_cursor.is_empty());
        let dropped = manifest.manifest.replacen("\"part\": ", "\"part\": 1", 1);
        assert!(SignedManifest::verify(&dropped, &key).is_err(), "tampered");
        if extract_id.is_empty() {
            extract_id = manifest.extract_id.clone();
        }
        assert_eq!(manifest.extract_id, extract_id);
        rows.extend(page);
        if manifest.next_cursor.is_empty() {
            break;
        }
        cursor = manifest.next_cursor;
    }
    assert!(parts >= 3, "five subjects two at a time");
    // The four who agreed, each once; not the one who did not, not the canary.
    assert_eq!(rows.len(), 4);
    let keys: BTreeSet<&str> = rows.iter().map(|r| r.row_key.as_str()).collect();
    assert_eq!(keys.len(), 4);
    for row in &rows {
        assert_eq!(row.row_key.len(), 32);
        let got: Vec<(&str, pb::Outcome, &str)> = row
            .results
            .iter()
            .map(|r| (r.field.as_str(), r.outcome(), r.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("favorite_categories", pb::Outcome::Value, "tea,books"),
                ("birth_date.age_band", pb::Outcome::Value, "25-34"),
            ]
        );
    }

    // Every subject read was decided and audited as an extract; the canary was never touched.
    let vault_ref = server.vault();
    let views = audit_views(vault_ref.store());
    drop(vault_ref);
    let per_subject = views
        .iter()
        .filter(|r| r.action == "extract" && r.subject.is_some())
        .count();
    assert_eq!(per_subject, 5);
    assert!(views.iter().all(|r| r.outcome != "canary"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_name_the_rows_shredded_withdrawn_or_objected_to_since() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let subjects = ["cust-rev-0", "cust-rev-1", "cust-rev-2", "cust-rev-3"];
    for s in subjects {
        customer(&server, s, true).await;
    }
    let (rows, manifest) = extract(&server, TRAINER, request("", &subjects, "", 0))
        .await
        .unwrap();
    assert_eq!(rows.len(), 4, "listed rows come in request order");
    assert!(manifest.next_cursor.is_empty());
    // Another extract of the same customers gives them unrelated row keys.
    let (again, _) = extract(&server, TRAINER, request("", &subjects[..2], "", 0))
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|r| rows.iter().all(|o| o.row_key != r.row_key))
    );

    // The customers' exports name the extract they are in.
    let export = server
        .client(DPO)
        .await
        .export_subject(pb::ExportSubjectRequest {
            subject_id: subjects[3].into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = export
        .extracts
        .iter()
        .map(|e| e.extract_id.as_str())
        .collect();
    assert!(ids.contains(&manifest.extract_id.as_str()), "{ids:?}");
    assert!(
        export
            .extracts
            .iter()
            .all(|e| e.principal == TRAINER && e.purpose == "model_training")
    );

    let since = privault::clock::rfc3339(now_ms());
    let revocations = |since: String| {
        let server = &server;
        let extract_id = manifest.extract_id.clone();
        async move {
            server
                .client(TRAINER)
                .await
                .extract_revocations(pb::ExtractRevocationsRequest { extract_id, since })
                .await
                .map(|r| r.into_inner().revocations)
        }
    };
    assert!(revocations(since.clone()).await.unwrap().is_empty());

    server
        .client(DPO)
        .await
        .shred_subject(pb::ShredSubjectRequest {
            subject_id: subjects[0].into(),
            reason: "erasure-request-1".into(),
        })
        .await
        .unwrap();
    set_consent(&server, subjects[1], "model_training", false).await;
    server
        .client(ACCOUNT)
        .await
        .record_signal(pb::RecordSignalRequest {
            subject_id: subjects[2].into(),
            signal: Signal::ObjectToProfiling.into(),
            source: 0,
        })
        .await
        .unwrap();

    let mut got: Vec<(String, Reason)> = revocations(since.clone())
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.row_key.clone(), r.reason()))
        .collect();
    got.sort();
    let mut want = vec![
        (rows[0].row_key.clone(), Reason::Shredded),
        (rows[1].row_key.clone(), Reason::Withdrawn),
        (rows[2].row_key.clone(), Reason::Signal),
    ];
    want.sort();
    assert_eq!(got, want);
    // Nothing happened after now.
    let later = privault::clock::rfc3339(now_ms() + 1000);
    assert!(revocations(later).await.unwrap().is_empty());

    // The extract's maker and the auditors may ask; another service may not.
    let err = server
        .client(RECOMMENDER)
        .await
        .extract_revocations(pb::ExtractRevocationsRequest {
            extract_id: manifest.extract_id.clone(),
            since: since.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let audited = server
        .client(AUDITOR)
        .await
        .extract_revocations(pb::ExtractRevocationsRequest {
            extract_id: manifest.extract_id.clone(),
            since,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audited.revocations.len(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn extracts_refuse_what_the_catalog_and_the_caller_do_not_allow() {
    let vault = TestVault::new();
    let server = vault.start().await;
    customer(&server, "cust-ref-0", true).await;
    let (_, manifest) = extract(&server, TRAINER, request("", &["cust-ref-0"], "", 0))
        .await
        .unwrap();
    let id = manifest.extract_id.clone();
    let cases = [
        (
            TRAINER,
            pb::ExtractRequest {
                purpose: "personalization".into(),
                ..request("", &["cust-ref-0"], "", 0)
            },
            Code::InvalidArgument,
        ),
        (
            TRAINER,
            pb::ExtractRequest {
                every_subject: true,
                ..request("", &["cust-ref-0"], "", 0)
            },
            Code::InvalidArgument,
        ),
        (TRAINER, request("", &[], "", 5000), Code::InvalidArgument),
        (
            TRAINER,
            request("", &[], "not-a-cursor", 0),
            Code::InvalidArgument,
        ),
        (
            TRAINER,
            pb::ExtractRequest {
                fields: vec!["birth_date".into()],
                ..request(&id, &["cust-ref-0"], "", 0)
            },
            Code::InvalidArgument,
        ),
        (
            TRAINER,
            request("ab".repeat(16).as_str(), &["cust-ref-0"], "", 0),
            Code::NotFound,
        ),
        (
            TRAINER,
            request("xyz", &["cust-ref-0"], "", 0),
            Code::InvalidArgument,
        ),
        (
            TRAINER,
            request("", &["cust-ref-0", "cust-ref-0"], "", 0),
            Code::InvalidArgument,
        ),
        (
            RECOMMENDER,
            request(&id, &["cust-ref-0"], "", 0),
            Code::PermissionDenied,
        ),
    ];
    for (who, request, code) in cases {
        let err = extract(&server, who, request.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{who} {request:?}: {err:?}");
    }
    // A service not registered for the purpose is denied subject by subject: no rows.
    let (rows, manifest) = extract(&server, RECOMMENDER, request("", &["cust-ref-0"], "", 0))
        .await
        .unwrap();
    assert!(rows.is_empty());
    assert_eq!(manifest.examined, 1);
    server.stop().await;
}
