//! The binary's subcommands other than `serve`.

pub mod audit;
pub mod export;
pub mod policy;
pub mod remote;
pub mod ropa;
pub mod serve;
pub mod token;
