//! Resource figures of a process from `/proc` (for soak reports and leak tests): resident memory
//! (`VmRSS` in `/proc/PID/status`, see proc_pid_status(5)) and open descriptors (`/proc/PID/fd`).

/// Resident set size of process `pid` in KiB; `None` if it cannot be read (the process is gone).
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    parse_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Resident set size of this process in KiB (0 if `/proc` is unreadable).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_rss(&s))
        .unwrap_or(0)
}

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Open descriptors of process `pid` (0 if it is gone).
pub fn fd_count_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// This process's soft limit on open descriptors (`RLIMIT_NOFILE`, getrlimit(2)); 0 if unknown.
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(0, |l| l.0)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit, as servers do (each consumer costs the
/// producer a socket, each buffer a consumer one descriptor per plane). Returns the limit now
/// in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::debug!("raising RLIMIT_NOFILE from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_vmrss() {
        assert_eq!(
            super::parse_rss("Name:\tx\nVmRSS:\t  12345 kB\n"),
            Some(12345)
        );
        assert_eq!(super::parse_rss("Name:\tx\n"), None);
        assert!(super::rss_kib() > 0);
        assert!(super::fd_count() >= 3);
    }
}
