//! Production identity over real TLS: mTLS with certificates made at test time (the principal from
//! the SPIFFE URI SAN, the development header ignored), bearer tokens, and the per-call limits.

use std::sync::Arc;

use privault::api::pb::Outcome;
use privault::api::pb::vault_client::VaultClient;
use privault::api::tokens::{TokenVerifier, new_token};
use privault::api::{Identity, ServeOptions, tls};
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::pki::{Ca, client_tls, write_server_files};
use crate::support::*;

const DOMAIN: &str = "shop.example";

struct TlsVault {
    vault: TestVault,
    ca: Ca,
    server: TestServer,
}

async fn start_mtls() -> TlsVault {
    let vault = TestVault::new();
    let ca = Ca::new("privault test CA");
    let (cert, key, client_ca) = write_server_files(vault.dir.path(), &ca);
    let options = ServeOptions {
        identity: Identity::Certificate {
            trust_domain: Some(DOMAIN.into()),
        },
        tls: Some(tls::server_tls(&cert, &key, &client_ca).unwrap()),
        ..ServeOptions::development()
    };
    let server = vault.start_with(options).await;
    TlsVault { vault, ca, server }
}

/// A client over TLS, sending `header` as `x-privault-principal` when given.
async fn tls_client(
    server: &TestServer,
    tls: ClientTlsConfig,
    header: Option<&str>,
) -> Result<Client, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(VaultClient::with_interceptor(channel, As::header(header)))
}

async fn put_email(client: &mut Client) -> Result<(), tonic::Status> {
    client
        .put_fields(put_request(
            "cust-1",
            "account",
            &[("email", "a@example.com")],
        ))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_certificate_names_the_principal_and_the_header_cannot_override_it() {
    let t = start_mtls().await;
    let account =
        t.ca.client(Some(&format!("spiffe://{DOMAIN}/service/account")));
    let mut client = tls_client(&t.server, client_tls(&t.ca, Some(&account)), None)
        .await
        .unwrap();
    put_email(&mut client).await.unwrap();

    // The recommender claims to be the account service in the header: the certificate wins.
    let recommender =
        t.ca.client(Some(&format!("spiffe://{DOMAIN}/service/recommender")));
    let mut spoofer = tls_client(
        &t.server,
        client_tls(&t.ca, Some(&recommender)),
        Some(ACCOUNT),
    )
    .await
    .unwrap();
    let results = get(&mut spoofer, "cust-1", "account", &["email"]).await;
    assert_eq!(results[0].outcome(), Outcome::Denied);
    assert!(put_email(&mut spoofer).await.is_err());

    let results = get(&mut client, "cust-1", "account", &["email"]).await;
    assert_eq!(results[0].value, "a@example.com");
    t.server.stop().await;
    drop(t.vault);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_foreign_expired_and_nameless_certificates_are_refused() {
    let t = start_mtls().await;
    let uri = format!("spiffe://{DOMAIN}/service/account");
    let other_ca = Ca::new("someone else's CA");
    let foreign = other_ca.client(Some(&uri));
    let expired = t.ca.expired_client(&uri);
    for (what, tls) in [
        ("no certificate", client_tls(&t.ca, None)),
        ("another CA", client_tls(&t.ca, Some(&foreign))),
        ("expired", client_tls(&t.ca, Some(&expired))),
    ] {
        let refused = match tls_client(&t.server, tls, Some(ACCOUNT)).await {
            Err(_) => true,
            Ok(mut client) => put_email(&mut client).await.is_err(),
        };
        assert!(refused, "{what} must be refused");
    }
    for (what, san) in [
        ("no SPIFFE SAN", None),
        (
            "another trust domain",
            Some("spiffe://evil.example/service/account".to_owned()),
        ),
        (
            "not a privault path",
            Some(format!("spiffe://{DOMAIN}/workload/account")),
        ),
    ] {
        let cert = t.ca.client(san.as_deref());
        let mut client = tls_client(&t.server, client_tls(&t.ca, Some(&cert)), Some(ACCOUNT))
            .await
            .unwrap();
        let err = put_email(&mut client).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}");
    }
    // Nothing was written by any refused caller.
    let account = t.ca.client(Some(&uri));
    let mut client = tls_client(&t.server, client_tls(&t.ca, Some(&account)), None)
        .await
        .unwrap();
    let results = get(&mut client, "cust-1", "account", &["email"]).await;
    assert_eq!(results[0].outcome(), Outcome::Absent);
    t.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_authenticate_and_wrong_ones_are_limited_per_peer() {
    let vault = TestVault::new();
    let (token, hash) = new_token().unwrap();
    let file = vault.dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        format!("[[tokens]]\nprincipal = '{ACCOUNT}'\nhash = \"{hash}\"\n"),
    )
    .unwrap();
    let options = ServeOptions {
        identity: Identity::Token(Arc::new(TokenVerifier::load(&file).unwrap())),
        ..ServeOptions::development()
    };
    let server = vault.start_with(options).await;
    let with_token = |t: &str| As::with_token(ACCOUNT, t);
    let mut good = VaultClient::with_interceptor(server.channel().await, with_token(&token));
    put_email(&mut good).await.unwrap();

    let mut header_only = server.client(ACCOUNT).await;
    assert_eq!(
        put_email(&mut header_only).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut wrong = VaultClient::with_interceptor(server.channel().await, with_token("guess"));
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(put_email(&mut wrong).await.unwrap_err().code());
    }
    assert!(
        codes[..4].iter().all(|c| *c == Code::Unauthenticated),
        "{codes:?}"
    );
    assert_eq!(codes[6], Code::ResourceExhausted, "{codes:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_refuse_oversized_requests_and_change_nothing() {
    let mut vault = TestVault::new();
    vault.config.limits.max_fields_per_call = 2;
    vault.config.limits.max_subject_id_bytes = 16;
    let options = ServeOptions {
        max_message_bytes: 2048,
        ..ServeOptions::development()
    };
    let server = vault.start_with(options).await;
    let mut account = server.client(ACCOUNT).await;
    let big = "x".repeat(4096);
    let err = account
        .put_fields(put_request("cust-1", "account", &[("email", big.as_str())]))
        .await
        .unwrap_err();
    // tonic refuses a message over the limit before decoding it, with OUT_OF_RANGE.
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let err = account
        .put_fields(put_request(
            "cust-1",
            "account",
            &[("email", "a@b.c"), ("phone", "1"), ("full_name", "A")],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "three fields, two allowed"
    );
    let err = account
        .put_fields(put_request(
            "a-subject-id-longer-than-16",
            "account",
            &[("email", "a@b.c")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let results = get(&mut account, "cust-1", "account", &["email", "phone"]).await;
    assert!(results.iter().all(|r| r.outcome() == Outcome::Absent));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_beyond_the_per_peer_limit_are_resource_exhausted() {
    let vault = TestVault::new();
    let options = ServeOptions {
        max_concurrent_per_peer: 1,
        ..ServeOptions::development()
    };
    let server = vault.start_with(options).await;
    let channel = server.channel().await;
    let mut calls = Vec::new();
    for i in 0..64 {
        let mut client = VaultClient::with_interceptor(channel.clone(), As::header(Some(ACCOUNT)));
        calls.push(tokio::spawn(async move {
            client
                .put_fields(put_request(
                    &format!("cust-{i}"),
                    "account",
                    &[("email", "a@example.com")],
                ))
                .await
                .map(|_| ())
        }));
    }
    let mut exhausted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => {}
            Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(
        exhausted > 0,
        "64 concurrent writes from one address, one admitted at a time"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_past_its_deadline_is_cut_off() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    let mut request = tonic::Request::new(get_request("cust-1", "account", &["email"]));
    request.set_timeout(std::time::Duration::from_micros(1));
    let err = account.get_fields(request).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    server.stop().await;
}
