//! Fault injection: fail points (the `fail` crate, compiled in only for test builds) placed in
//! the vault's multi-step operations, each test checking that the vault resumes or rolls back and
//! never half-applies. A binary of its own, because a fail point is process-wide: the tests here
//! run one at a time under `FailScenario`, away from the main suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

mod lost_answer;
mod purge;
mod races;
mod seal;
mod steps;
