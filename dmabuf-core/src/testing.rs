//! Helpers shared by the test suites (not part of the API proper).
//!
//! Hardware tests call [`skip_or_fail`] when their device is missing: on a host without it they
//! print `SKIP <test>: <reason>` straight to the terminal (past libtest's output capture) and
//! return; with `DMABUF_REQUIRE_HW=1` (set inside the real-kernel lane) a missing device is a
//! failure.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};

/// The environment variable that turns a hardware skip into a failure.
pub const REQUIRE_HW_ENV: &str = "DMABUF_REQUIRE_HW";

pub fn hw_required() -> bool {
    std::env::var(REQUIRE_HW_ENV).is_ok_and(|v| v == "1")
}

/// Report a missing device: skip loudly, or panic when hardware is required.
pub fn skip_or_fail(test: &str, why: impl std::fmt::Display) {
    if hw_required() {
        panic!("{test}: {why} ({REQUIRE_HW_ENV}=1: a missing device is a failure here)");
    }
    skip(test, why);
}

/// Say `SKIP <test>: <why>` where a person will see it: appended (one atomic write) to the file
/// named by `DMABUF_SKIP_LOG` when set (the test command lists them after the run), otherwise
/// straight to the terminal, past libtest's output capture.
pub fn skip(test: &str, why: impl std::fmt::Display) {
    let line = format!("SKIP {test}: {why}\n");
    if let Some(path) = std::env::var_os("DMABUF_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            if f.write_all(line.as_bytes()).is_ok() {
                return;
            }
        }
    }
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub use crate::procstat::{fd_count, fd_count_of};

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests that count this process's fds hold this so parallel tests do not disturb the count.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What each open descriptor of `pid` points at (`/proc/PID/fd/N` link targets), sorted.
pub fn fd_targets_of(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let t = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "?".into());
                    format!("{}→{t}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
