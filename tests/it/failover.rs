//! Failover: a primary with a synchronous streaming standby; the primary is killed (no
//! checkpoint, as a crash) and the standby promoted. The node reconnects by itself through its
//! multi-host URL, calls during the gap fail with UNAVAILABLE and nothing else, no acknowledged
//! write is lost, and the audit chain verifies afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use privault::api::pb::Outcome;
use tonic::Code;

use crate::support::postgres::Cluster;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_and_a_promoted_standby_lose_no_acknowledged_write() {
    let primary = Cluster::start(&["wal_level=replica", "synchronous_standby_names='*'"]);
    let standby = Cluster::standby_of(&primary, &[]);
    primary.psql("postgres", "CREATE DATABASE failover");
    let url = format!(
        "postgresql://privault@127.0.0.1:{},127.0.0.1:{}/failover?\
         target_session_attrs=read-write&connect_timeout=2",
        primary.port, standby.port
    );
    let vault = TestVault::on_postgres(&url);
    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    let mut acked = Vec::new();
    for i in 0..40 {
        let id = format!("cust-{i}");
        account
            .put_fields(put_request(&id, "account", &[("email", "a@example.com")]))
            .await
            .unwrap();
        acked.push(id);
    }

    // A writer keeps writing through the kill and the promotion.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let mut account = server.client(ACCOUNT).await;
        tokio::spawn(async move {
            let mut log = Vec::new();
            let mut i = 1000;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("cust-{i}");
                let answer = account
                    .put_fields(put_request(&id, "account", &[("email", "b@example.com")]))
                    .await;
                log.push((id, Instant::now(), answer.map(|_| ()).map_err(|s| s.code())));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            log
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    primary.stop(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let promote = Instant::now();
    standby.promote();
    let promoted = promote.elapsed();
    // Serving again: a write succeeds after the kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        let probe = account
            .put_fields(put_request(
                "cust-probe",
                "account",
                &[("email", "p@example.com")],
            ))
            .await;
        if probe.is_ok() {
            break Instant::now();
        }
        assert_eq!(probe.unwrap_err().code(), Code::Unavailable);
        assert!(
            Instant::now() < deadline,
            "the node did not serve again within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let log = writer.await.unwrap();
    eprintln!(
        "failover: promotion took {} ms; the node served again {} ms after the kill",
        promoted.as_millis(),
        back.duration_since(killed).as_millis()
    );

    let failed: Vec<_> = log.iter().filter(|(_, _, r)| r.is_err()).collect();
    assert!(!failed.is_empty(), "some calls fell in the gap");
    for (_, _, answer) in &failed {
        assert_eq!(
            *answer,
            Err(Code::Unavailable),
            "a call in the gap fails UNAVAILABLE"
        );
    }
    acked.extend(
        log.iter()
            .filter(|(_, _, r)| r.is_ok())
            .map(|(id, _, _)| id.clone()),
    );
    assert!(
        log.iter().any(|(_, at, r)| r.is_ok() && *at > back),
        "writes go on after the failover"
    );
    for id in &acked {
        let read = get(&mut account, id, "account", &["email"]).await;
        assert_eq!(
            read[0].outcome(),
            Outcome::Value,
            "acknowledged write of {id} lost"
        );
    }
    server.stop().await;
    let store = vault.store();
    let (verified, _) = privault::audit::verify(&store).unwrap();
    assert_eq!(audit_views(&store).len() as u64, verified);
    drop(standby);
}
