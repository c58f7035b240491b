//! The vault's lifecycle: opening a data directory or database (and the replays at open),
//! taking up other nodes' changes before each call, and the offline access of the tools.

pub(super) mod coherence;
pub mod offline;
pub(super) mod open;
