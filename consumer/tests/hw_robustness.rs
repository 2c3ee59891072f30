//! Several consumers over a real dma-buf pool, and the `--alloc auto` memfd fallback with
//! several consumers. Needs `/dev/dma_heap/system` (the real-kernel lane, `ci/vm-lane`); on a
//! host without it each test prints `SKIP` and why.

mod common;
use common::*;
use dmabuf_core::testing::{fd_count_of, skip_or_fail};
use std::time::Duration;

fn have_heap(test: &str) -> bool {
    let ok = std::path::Path::new("/dev/dma_heap/system").exists();
    if !ok {
        skip_or_fail(test, "/dev/dma_heap/system does not exist");
    }
    ok
}

/// Two consumers at once on one dma-heap pool: each verifies every frame it gets (the same
/// dma-bufs, read inside DMA_BUF_IOCTL_SYNC brackets by both), and the producer's fd count
/// returns to where it was when both have left.
#[test]
fn hw_two_consumers_share_a_dma_heap_pool() {
    let t = "hw_two_consumers_share_a_dma_heap_pool";
    if !have_heap(t) {
        return;
    }
    let sock = socket("hw-two");
    let p = Producer::start(
        &sock,
        &[
            "--alloc",
            "dma-heap",
            "--size",
            "320x240",
            "--stall-timeout",
            "60",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let base = fd_count_of(p.pid());
    let run = |tag: &'static str| {
        let sock = sock.clone();
        std::thread::spawn(move || {
            consume(
                &sock,
                tag,
                &["--frames", "60", "--verify", "--import", "cpu-map"],
                Duration::from_secs(300),
            )
        })
    };
    let (a, b) = (run("a"), run("b"));
    for s in [a.join().unwrap(), b.join().unwrap()] {
        assert_eq!(s["alloc"], "dma-heap", "{s}");
        assert_eq!(s["memory"], "dma-buf", "{s}");
        assert_eq!(s["frames"].as_u64(), Some(60), "{s}");
        assert_eq!(s["verified"].as_u64(), Some(60), "{s}");
        assert_eq!(s["mismatches"].as_u64(), Some(0), "{s}");
    }
    assert!(
        eventually(Duration::from_secs(10), || fd_count_of(p.pid()) == base),
        "producer fds {} != {base}",
        fd_count_of(p.pid())
    );
}

/// `--alloc auto` picks dma-heap; a consumer that can only take memfds (`--import
/// host-pointer`) is refused while another consumer uses the dma-buf pool, saying why, and
/// gets a memfd pool once it is alone.
#[test]
fn hw_auto_swaps_to_memfd_only_when_alone() {
    let t = "hw_auto_swaps_to_memfd_only_when_alone";
    if !have_heap(t) {
        return;
    }
    let sock = socket("hw-auto-swap");
    let p = Producer::start(
        &sock,
        &[
            "--alloc",
            "auto",
            "--size",
            "320x240",
            "--stall-timeout",
            "60",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let base = fd_count_of(p.pid());
    // A dma-buf consumer streaming in the background.
    let json = sock.with_extension("first.json");
    let first = std::process::Command::new(consumer_bin())
        .arg("--socket")
        .arg(&sock)
        .args(["--quiet", "--import", "cpu-map", "--verify", "--stats-json"])
        .arg(&json)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || fd_count_of(p.pid()) > base));
    let out = run_consumer(
        &sock,
        &["--import", "host-pointer", "--frames", "10"],
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot switch the dma-buf pool to memfd while 1 other consumer(s) use it"),
        "{err}"
    );
    // The first one was not disturbed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = read_json(&json);
    assert_eq!(s["alloc"], "dma-heap", "{s}");
    assert_eq!(s["mismatches"].as_u64(), Some(0), "{s}");
    assert_eq!(s["verified"], s["frames"], "{s}");
    // Alone now: the pool becomes memfd for it.
    let s = consume(
        &sock,
        "alone",
        &["--import", "host-pointer", "--frames", "10", "--verify"],
        Duration::from_secs(120),
    );
    assert_eq!(s["memory"], "memfd", "{s}");
    assert_eq!(s["verified"].as_u64(), Some(10), "{s}");
}
