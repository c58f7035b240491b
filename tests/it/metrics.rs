//! `GET /metrics`: scraped from the real endpoint beside a real server, parsed as Prometheus text;
//! counters move as calls are made, and no label or value carries a subject id or a field value.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const CANARY_SUBJECT: &str = "canary-subject-5f3a9c";
const CANARY_VALUE: &str = "canary-value-b81e02@example.com";

async fn scrape(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The sum of `name`'s samples whose labels include every `(label, value)` of `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_move_with_calls_and_never_name_a_subject_or_a_value() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let (stop_metrics, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = tokio::spawn(privault::api::serve_metrics(
        server.vault(),
        listener,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let (head, before) = scrape(metrics_addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text")
    );
    let before = parse(&before);
    let rpc = "/privault.v1.Vault/GetFields";

    let mut account = server.client(ACCOUNT).await;
    account
        .put_fields(put_request(
            CANARY_SUBJECT,
            "account",
            &[("email", CANARY_VALUE)],
        ))
        .await
        .unwrap();
    for _ in 0..3 {
        account
            .get_fields(get_request(CANARY_SUBJECT, "account", &["email"]))
            .await
            .unwrap();
    }
    // A refused call (no such purpose) and a call to a method nobody serves.
    let refused = account
        .get_fields(get_request(CANARY_SUBJECT, "no_such_purpose", &["email"]))
        .await
        .unwrap_err();
    let mut dpo = server.client(DPO).await;
    dpo.shred_subject(privault::api::pb::ShredSubjectRequest {
        subject_id: CANARY_SUBJECT.into(),
        reason: "ticket".into(),
    })
    .await
    .unwrap();

    let (_, text) = scrape(metrics_addr, "/metrics").await;
    assert!(
        !text.contains(CANARY_SUBJECT),
        "a subject id in the metrics"
    );
    assert!(!text.contains(CANARY_VALUE), "a value in the metrics");
    let after = parse(&text);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    // The registry is the process's: other tests of this binary call concurrently, so counters
    // move by at least this test's calls.
    assert!(moved("privault_requests_total", &[("rpc", rpc), ("code", "OK")]) >= 3.0);
    let code = format!("{:?}", refused.code());
    assert!(
        code == "InvalidArgument" || code == "PermissionDenied",
        "{code}"
    );
    assert!(moved("privault_requests_total", &[("rpc", rpc)]) >= 4.0);
    let refused_code = if code == "InvalidArgument" {
        "INVALID_ARGUMENT"
    } else {
        "PERMISSION_DENIED"
    };
    assert!(
        moved(
            "privault_requests_total",
            &[("rpc", rpc), ("code", refused_code)]
        ) >= 1.0
    );
    assert!(moved("privault_request_duration_seconds_count", &[("rpc", rpc)]) >= 4.0);
    assert!(
        moved(
            "privault_decisions_total",
            &[("action", "read"), ("outcome", "allow")]
        ) >= 3.0
    );
    assert!(moved("privault_decision_cache_hits_total", &[]) >= 2.0);
    assert!(moved("privault_audit_records_total", &[]) >= 6.0);
    assert!(moved("privault_audit_group_size_count", &[]) >= 1.0);
    assert!(moved("privault_shreds_total", &[]) >= 1.0);
    assert!(value(&after, "privault_rocksdb_block_cache_bytes", &[]) >= 0.0);
    assert!(value(&after, "privault_process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&after, "privault_process_open_fds", &[]) > 0.0);
    assert_eq!(value(&after, "privault_quarantined_subjects", &[]), 0.0);
    assert_eq!(value(&after, "privault_legal_holds", &[]), 0.0);
    assert!(value(&after, "privault_extract_rows_total", &[]) >= 0.0);
    assert!(
        after
            .samples
            .iter()
            .any(|s| s.metric == "privault_epoch_roll_keys_remaining"),
        "the roll gauge is exported while no roll runs"
    );
    // Every label value is one of a closed set: methods served (or `other`), codes, enums.
    for sample in &after.samples {
        for (label, v) in sample.labels.iter() {
            match label.as_str() {
                "rpc" => assert!(
                    v.starts_with("/privault.v1.") || v.starts_with("/grpc.") || v == "other",
                    "{v}"
                ),
                "code" => assert!(v.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{v}"),
                "action" | "outcome" => {
                    assert!(v.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{v}")
                }
                "le" | "quantile" => {}
                other => panic!("unexpected label {other}"),
            }
        }
    }
    let (head, _) = scrape(metrics_addr, "/elsewhere").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let _ = stop_metrics.send(());
    metrics.await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_listener_speaks_tls_with_the_servers_certificate() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

    let vault = TestVault::new();
    let server = vault.start().await;
    let ca = crate::pki::Ca::new("metrics test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = crate::pki::write_server_files(dir.path(), &ca);
    let tls = privault::api::metrics_tls(&cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = tokio::spawn(privault::api::serve_metrics(
        server.vault(),
        listener,
        Some(tls),
        async {
            let _ = stopped.await;
        },
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let scraped = parse(body);
    assert!(
        scraped
            .samples
            .iter()
            .any(|s| s.metric == "privault_requests_total"
                || s.metric == "privault_process_open_fds")
    );
    // Plain HTTP to the TLS listener gets no metrics.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("privault_"));
    let _ = stop.send(());
    metrics.await.unwrap();
    server.stop().await;
}
