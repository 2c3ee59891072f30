//! Clocks used for latency and CPU accounting.

use nix::time::{clock_gettime, ClockId};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the per-frame meters ([`metered_cpu_ns`], [`metered_page_faults`]) read the clocks.
static METERING: AtomicBool = AtomicBool::new(true);

/// Turn this process's per-frame CPU and page-fault meters on or off. Reading the process CPU
/// clock or `getrusage` is a real system call (≈0.5 µs each, no vDSO), so a program that
/// reports no statistics turns them off and its hot path makes none.
pub fn set_metering(on: bool) {
    METERING.store(on, Ordering::Relaxed);
}

/// [`process_cpu_ns`] while metering is on (see [`set_metering`]), else 0.
pub fn metered_cpu_ns() -> u64 {
    if METERING.load(Ordering::Relaxed) {
        process_cpu_ns()
    } else {
        0
    }
}

/// [`page_faults`] while metering is on (see [`set_metering`]), else (0, 0).
pub fn metered_page_faults() -> (u64, u64) {
    if METERING.load(Ordering::Relaxed) {
        page_faults()
    } else {
        (0, 0)
    }
}

fn ns(id: ClockId) -> u64 {
    clock_gettime(id)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// `CLOCK_MONOTONIC` in nanoseconds (comparable across processes on one machine; read through
/// the vDSO, no system call).
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
