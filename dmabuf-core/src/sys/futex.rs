//! `futex(2)` on a word in memory shared between processes (a `MAP_SHARED` mapping of a
//! memfd): the ring's doorbell. Not `FUTEX_PRIVATE_FLAG`: the two processes' mappings are
//! different addresses of one page, and the kernel keys a shared futex by the page.

use nix::errno::Errno;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleep while `*word == expected`, at most `timeout`. `Ok(true)` when woken (or the word had
/// already changed: `EAGAIN`), `Ok(false)` on timeout; `EINTR` counts as woken.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Result<bool, Errno> {
    let ts = nix::libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: FUTEX_WAIT reads the aligned 32-bit word `word` points to (live for the call,
    // an `AtomicU32` so concurrent writers are fine) and the timespec on our stack; it writes
    // nothing.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            nix::libc::FUTEX_WAIT,
            expected,
            &ts as *const nix::libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::EAGAIN | Errno::EINTR => Ok(true),
        Errno::ETIMEDOUT => Ok(false),
        e => Err(e),
    }
}

/// Wake up to `n` waiters on `word`; how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> Result<usize, Errno> {
    // SAFETY: FUTEX_WAKE only uses the address as a key; it dereferences nothing of ours.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            nix::libc::FUTEX_WAKE,
            n.min(i32::MAX as u32),
            std::ptr::null::<nix::libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
}
