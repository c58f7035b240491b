//! A Cedar decision cold (full evaluation) and cached (same request, same policy version).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use privault::domain::{FieldName, Principal, PrincipalKind, Purpose};
use privault::policy::{FieldAction, Policies};

fn decisions(c: &mut Criterion) {
    let set = Policies::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
    let support = Principal::new(PrincipalKind::Service, "support").unwrap();
    let email = FieldName::new("email").unwrap();
    let purpose = Purpose::new("support").unwrap();
    let mut group = c.benchmark_group("decision");
    group.bench_function("cold", |b| {
        b.iter(|| {
            // A fresh context per call, as each call of the vault builds one.
            let ctx = set.field_context(&purpose, Default::default());
            set.evaluate_field(black_box(&support), FieldAction::ReadMasked, &email, &ctx)
        });
    });
    let ctx = set.field_context(&purpose, Default::default());
    set.decide_field(&support, FieldAction::ReadMasked, &email, &ctx);
    group.bench_function("cached", |b| {
        b.iter(|| {
            let ctx = set.field_context(&purpose, Default::default());
            set.decide_field(black_box(&support), FieldAction::ReadMasked, &email, &ctx)
        });
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
