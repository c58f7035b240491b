//! The binary's subcommands other than `serve`.

pub mod policy;
pub mod remote;
