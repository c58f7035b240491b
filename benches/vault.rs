//! The storage and whole in-process paths: a RocksDB multi-get of 5 fields, the vault's `get` of
//! 5 fields for one subject (decisions, key, decrypt, durable audit append), the same read up to
//! queueing its record (what it costs the thread serving it), and `put` of 5 fields
//! (an overwrite: decisions, DEK rotation, seal, one synced batch). On a temp dir, real RocksDB.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use privault::clock::SystemClock;
use privault::domain::{FieldName, Principal, PrincipalKind, Purpose, SubjectId};
use privault::store::{Cf, memory_only};
use privault::vault::{CallContext, Queued, Vault, VaultConfig};
use secrecy::SecretString;

const FIELDS: [&str; 5] = [
    "email",
    "phone",
    "full_name",
    "shipping_address",
    "favorite_categories",
];

fn vault_paths(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = VaultConfig::new(
        dir.path().join("data"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
    );
    let vault = Vault::open(&config, Arc::new(SystemClock)).unwrap();
    let ctx = CallContext {
        principal: Principal::new(PrincipalKind::Service, "account").unwrap(),
        request_id: "bench".into(),
        peer: None,
    };
    let purpose = Purpose::new("account").unwrap();
    let fields: Vec<FieldName> = FIELDS.iter().map(|f| FieldName::new(*f).unwrap()).collect();
    let values = |i: u64| -> Vec<(FieldName, SecretString)> {
        fields
            .iter()
            .map(|f| (f.clone(), SecretString::from(format!("{f} value {i}"))))
            .collect()
    };
    for i in 0..1000 {
        let subject = SubjectId::new(format!("bench-{i}")).unwrap();
        vault.put(&ctx, &subject, &purpose, values(i)).unwrap();
    }

    let store_keys: Vec<Vec<u8>> = {
        let rows = vault.store().scan_prefix(Cf::Fields, &[]).unwrap();
        rows.into_iter().take(5).map(|(k, _)| k).collect()
    };
    c.bench_function("store/multi_get_5_fields", |b| {
        let request: Vec<&[u8]> = store_keys.iter().map(Vec::as_slice).collect();
        b.iter(|| {
            vault
                .store()
                .multi_get(Cf::Fields, black_box(&request))
                .unwrap()
        });
    });

    let subject = SubjectId::new("bench-7".into()).unwrap();
    c.bench_function("vault/get_5_fields", |b| {
        b.iter(|| {
            vault
                .get(&ctx, black_box(&subject), &purpose, &fields)
                .unwrap()
        });
    });
    // What a GetFields costs the runtime thread that serves it: the same read run in memory
    // only, up to queueing its audit record (the committer thread syncs it meanwhile).
    c.bench_function("vault/get_5_fields_queued", |b| {
        b.iter(|| {
            let queued =
                memory_only(|| vault.get_deferred(&ctx, black_box(&subject), &purpose, &fields));
            assert!(matches!(queued, Queued::Ready { result: Ok(_), .. }));
        });
    });
    let mut i = 0;
    c.bench_function("vault/put_5_fields", |b| {
        b.iter(|| {
            i += 1;
            vault
                .put(&ctx, black_box(&subject), &purpose, values(i))
                .unwrap()
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = vault_paths
}
criterion_main!(benches);
