//! The binary's subcommands other than `serve`.

pub mod audit;
pub mod bench;
pub mod export;
pub mod hardening;
pub mod keys;
pub mod policy;
pub mod remote;
pub mod root;
pub mod ropa;
pub mod serve;
pub mod token;
