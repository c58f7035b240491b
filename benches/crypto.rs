//! Field seal/open and DEK unwrap: the crypto on every read and write.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use privault::crypto::{DekCipher, FieldTimes, Kek, Key256};
use privault::domain::{FieldName, KeyClass, Sid};
use std::hint::black_box;

fn field_seal_open(c: &mut Criterion) {
    let cipher = DekCipher::new(&Key256::random().unwrap(), 1);
    let sid = Sid([7; 32]);
    let field = FieldName::new("email").unwrap();
    let times = FieldTimes {
        written_ms: 1,
        expires_ms: Some(2),
    };
    let mut group = c.benchmark_group("field");
    for size in [64usize, 1024, 16 * 1024] {
        let value = vec![b'x'; size];
        let sealed = cipher.seal(&sid, &field, &times, &value).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &value, |b, v| {
            b.iter(|| {
                cipher
                    .seal(black_box(&sid), &field, &times, black_box(v))
                    .unwrap()
            });
        });
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter(|| {
                cipher
                    .open(black_box(&sid), &field, Some(&times), black_box(s))
                    .unwrap()
            });
        });
    }
    group.finish();
}

fn dek_unwrap(c: &mut Criterion) {
    let kek = Kek::new(1, &Key256::random().unwrap());
    let sid = Sid([3; 32]);
    let class = KeyClass::default_class();
    let wrapped = kek.wrap(&Key256::random().unwrap(), &sid, &class).unwrap();
    c.bench_function("dek/unwrap", |b| {
        b.iter(|| DekCipher::new(&kek.unwrap(black_box(&wrapped), &sid, &class).unwrap(), 1));
    });
}

criterion_group!(benches, field_seal_open, dek_unwrap);
criterion_main!(benches);
