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

// The allocator `privault serve` runs on (main.rs), so that the benches measure the server's
// allocation costs: on glibc malloc, heap consolidation showed up in reads the server serves.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIELDS: [&str; 5] = [
    "email",
    "phone",
    "full_name",
    "shipping_address",
    "favorite_categories",
];

/// Subjects stored: more than the vault's caches hold.
const COLD_SUBJECTS: u64 = 25_000;

fn vault_paths(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // PRIVAULT_BENCH_POLICIES measures another policy directory, e.g. one without policy
    // attributes, to tell what a feature costs a read that does not use it.
    let policies = std::env::var_os("PRIVAULT_BENCH_POLICIES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        std::path::PathBuf::from,
    );
    let config = VaultConfig::new(dir.path().join("data"), policies);
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
    // Subjects beyond the consent and key caches (10,000 each), so that the cold bench below
    // misses them as reads spread over a large vault do; with the catalog's policy-attribute
    // fields stored when it declares them, which a cold read then decrypts.
    let attributes: Vec<(FieldName, &str)> = [("country", "FR"), ("birth_date", "1980-01-01")]
        .into_iter()
        .map(|(f, v)| (FieldName::new(f).unwrap(), v))
        .filter(|(f, _)| vault.policies().catalog().field(f).is_some())
        .collect();
    for i in 0..COLD_SUBJECTS {
        let subject = SubjectId::new(format!("bench-{i}")).unwrap();
        let mut fields = values(i);
        fields.extend(
            attributes
                .iter()
                .map(|(f, v)| (f.clone(), SecretString::from(*v))),
        );
        vault.put(&ctx, &subject, &purpose, fields).unwrap();
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
    // The same read of a subject no cache holds: its keys, consents and policy attributes are
    // read from the store first (from the block cache, or from the OS's cache of table files).
    let cold: Vec<SubjectId> = (0..COLD_SUBJECTS)
        .map(|i| SubjectId::new(format!("bench-{i}")).unwrap())
        .collect();
    let mut next = 0;
    c.bench_function("vault/get_5_fields_queued_cold", |b| {
        b.iter(|| {
            next = (next + 1) % cold.len();
            let queued = vault.get_deferred(&ctx, &cold[next], &purpose, &fields);
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
