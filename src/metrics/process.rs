//! The process's resident memory and open file descriptors, read from `/proc/self` (Linux, the
//! only platform the vault is built for); zero where it cannot be read.

/// What the process holds.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Process {
    pub(super) resident_bytes: u64,
    pub(super) open_fds: u64,
}

pub(super) fn read() -> Process {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    Process {
        resident_bytes: pages.saturating_mul(rustix::param::page_size() as u64),
        open_fds,
    }
}
