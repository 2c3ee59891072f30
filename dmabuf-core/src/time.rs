//! Clocks used for latency and CPU accounting.

use nix::time::{clock_gettime, ClockId};

fn ns(id: ClockId) -> u64 {
    clock_gettime(id)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// `CLOCK_MONOTONIC` in nanoseconds (comparable across processes on one machine).
pub fn monotonic_ns() -> u64 {
    ns(ClockId::CLOCK_MONOTONIC)
}

/// CPU time this process has used, all threads (`CLOCK_PROCESS_CPUTIME_ID`), in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    ns(ClockId::CLOCK_PROCESS_CPUTIME_ID)
}
