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

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`), in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    ns(ClockId::CLOCK_THREAD_CPUTIME_ID)
}

/// This process's page faults so far (`getrusage(RUSAGE_SELF)`): (minor, major).
pub fn page_faults() -> (u64, u64) {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| (u.minor_page_faults() as u64, u.major_page_faults() as u64))
        .unwrap_or((0, 0))
}

/// Spin on this thread's CPU clock until it has used `ns` more nanoseconds (a known amount of
/// work, for tests of the CPU accounting).
pub fn burn_cpu_ns(ns: u64) {
    let start = thread_cpu_ns();
    let mut x = 0u64;
    while thread_cpu_ns().saturating_sub(start) < ns {
        for i in 0..256u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}
