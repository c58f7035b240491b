//! Process hardening for commands that hold keys: no core dumps (a dump would carry unwrapped
//! keys and values to disk) and, where the OS allows, memory locked so that nothing is swapped.

use rustix::mm::{MlockAllFlags, mlockall};
use rustix::process::{
    DumpableBehavior, Resource, Rlimit, getrlimit, set_dumpable_behavior, setrlimit,
};

/// Sets the core-file limit to 0 and marks the process non-dumpable (which also keeps other
/// processes of the same user from attaching to it).
pub fn disable_core_dumps() {
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, zero) {
        tracing::warn!("cannot disable core dumps: {e}");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!("cannot mark the process non-dumpable: {e}");
    }
}

/// Locks current and future pages in memory when the locked-memory limit is unlimited; otherwise
/// (a limit would make later allocations fail) warns and leaves memory unlocked.
pub fn lock_memory() {
    let limit = getrlimit(Resource::Memlock);
    if limit.current.is_some() {
        tracing::warn!(
            limit = ?limit.current,
            "memory not locked: RLIMIT_MEMLOCK is limited (raise it, e.g. LimitMEMLOCK=infinity, to \
             keep keys and values out of swap)"
        );
        return;
    }
    match mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE) {
        Ok(()) => tracing::info!("memory locked: keys and values never reach swap"),
        Err(e) => tracing::warn!("cannot lock memory: {e}"),
    }
}
