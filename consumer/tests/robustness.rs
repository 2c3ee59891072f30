//! Crashes, reconnects and several consumers, with the real processes on real sockets:
//! consumers SIGKILLed mid-stream, a stalled consumer beside good ones, a producer that dies
//! under its consumer, and `--reconnect` to a new producer.

mod common;
use common::*;
use dmabuf_core::procstat::rss_kib_of;
use dmabuf_core::testing::fd_count_of;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

/// A consumer running in the background (`--quiet`, stats to a JSON file).
struct Bg {
    child: Child,
    json: std::path::PathBuf,
}

fn spawn_consumer(sock: &std::path::Path, tag: &str, args: &[&str]) -> Bg {
    let json = sock.with_extension(format!("{tag}.json"));
    let _ = std::fs::remove_file(&json);
    let child = Command::new(consumer_bin())
        .arg("--socket")
        .arg(sock)
        .arg("--quiet")
        .args(args)
        .arg("--stats-json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consumer");
    Bg { child, json }
}

impl Bg {
    /// Wait for it to exit; (exit code, stderr, stats).
    fn finish(self, limit: Duration) -> (Option<i32>, String, serde_json::Value) {
        let Bg { mut child, json } = self;
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "consumer still running after {limit:?}:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let stats = if json.exists() {
            read_json(&json)
        } else {
            serde_json::Value::Null
        };
        (out.status.code(), err, stats)
    }
}

/// The producer's fd count and RSS once they have been the same for a moment.
fn settled(pid: u32) -> (usize, u64) {
    let mut last = (fd_count_of(pid), rss_kib_of(pid).unwrap());
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = (fd_count_of(pid), rss_kib_of(pid).unwrap());
        if now.0 == last.0 && now.1.abs_diff(last.1) < 64 {
            return now;
        }
        last = now;
    }
    last
}

/// 50 consumers SIGKILLed mid-stream, one after another: the producer notices each, reclaims
/// every buffer it held, and ends where it started: same fd count, RSS within 1 MiB (nothing
/// is allocated per consumer but a session's small tables and one socket, so a per-consumer
/// leak of even 20 KiB would show over 50 kills; 1 MiB leaves room for the allocator keeping
/// freed heap pages). The next consumer gets every frame, verified.
#[test]
fn consumer_sigkilled_50_times_mid_stream() {
    let sock = socket("kill50");
    let mut p = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--size",
            "1280x720",
            "--stall-timeout",
            "2",
        ],
    );
    let pid = p.pid();
    // Warm up: a first consumer touches every pool buffer and the producer's lazy state.
    let s = consume(
        &sock,
        "warm",
        &["--frames", "30", "--verify", "--import", "cpu-map"],
        Duration::from_secs(60),
    );
    assert_eq!(s["verified"].as_u64(), Some(30));
    let (fds0, rss0) = settled(pid);

    for i in 0..50 {
        let mut c = spawn_consumer(&sock, "victim", &["--import", "cpu-map", "--verify"]);
        // Connected (one more fd in the producer) and then a few frames in flight.
        assert!(
            eventually(Duration::from_secs(10), || fd_count_of(pid) == fds0 + 1),
            "kill {i}: the consumer never connected"
        );
        std::thread::sleep(Duration::from_millis(80 + (i % 5) * 30));
        c.child.kill().unwrap(); // SIGKILL
        c.child.wait().unwrap();
        assert!(p.alive(), "kill {i}: the producer died");
    }
    assert!(
        eventually(Duration::from_secs(5), || fd_count_of(pid) == fds0),
        "producer fds: {} after 50 kills, {fds0} before",
        fd_count_of(pid)
    );
    let (fds1, rss1) = settled(pid);
    eprintln!(
        "producer after 50 SIGKILLed consumers: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB"
    );
    assert_eq!(fds1, fds0);
    assert!(
        rss1 <= rss0 + 1024,
        "producer RSS grew from {rss0} KiB to {rss1} KiB over 50 killed consumers"
    );

    let s = consume(
        &sock,
        "after",
        &["--frames", "120", "--verify", "--import", "cpu-map"],
        Duration::from_secs(60),
    );
    assert_eq!(
        (
            s["frames"].as_u64(),
            s["verified"].as_u64(),
            s["mismatches"].as_u64(),
            s["dropped"].as_u64()
        ),
        (Some(120), Some(120), Some(0), Some(0)),
        "{s}"
    );
    assert!(eventually(Duration::from_secs(5), || fd_count_of(pid) == fds0));
}

/// Three consumers on one producer; one is stopped (SIGSTOP) for 2.5 s mid-stream. The other
/// two keep the rate and lose nothing (8 buffers: the stalled one pins at most 4, leaving the
/// others 4, i.e. ~65 ms of slack for a scheduling hiccup on this shared machine); the stalled one, once continued, sees the frames it
/// missed counted as dropped, and every frame it did get verifies.
#[test]
fn three_consumers_one_stalled() {
    let sock = socket("three");
    let _p = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--size",
            "640x360",
            "--buffers",
            "8",
            "--stall-timeout",
            "30",
        ],
    );
    let args = ["--frames", "420", "--verify", "--import", "cpu-map"];
    let a = spawn_consumer(&sock, "a", &args);
    let b = spawn_consumer(&sock, "b", &args);
    let c = spawn_consumer(&sock, "c", &args);
    std::thread::sleep(Duration::from_millis(1500));
    signal(c.child.id(), Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2500));
    signal(c.child.id(), Signal::SIGCONT);
    for (name, bg) in [("a", a), ("b", b)] {
        let (code, err, s) = bg.finish(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{name}: {err}");
        assert_eq!(s["frames"].as_u64(), Some(420), "{name}: {s}");
        assert_eq!(s["verified"].as_u64(), Some(420), "{name}: {s}");
        assert_eq!(s["dropped"].as_u64(), Some(0), "{name}: {s}");
        // 420 frames at 60 fps take 7 s; generous: the machine is shared and noisy.
        let fps = s["fps"].as_f64().unwrap();
        eprintln!("consumer {name}: {fps:.1} fps, {} dropped", s["dropped"]);
        assert!(
            fps > 45.0,
            "{name}: {fps:.1} fps while another consumer stalled"
        );
    }
    let (code, err, s) = c.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "c: {err}");
    let dropped = s["dropped"].as_u64().unwrap();
    eprintln!(
        "stalled consumer c: {} frames, {dropped} dropped, {:.1} fps",
        s["frames"],
        s["fps"].as_f64().unwrap()
    );
    // Stopped 2.5 s = 150 frames; it may hold 4 (its quota: half the 8 buffers) meanwhile.
    assert!(
        (60..=200).contains(&dropped),
        "the stalled consumer's drops: {dropped}: {s}"
    );
    assert_eq!(s["frames"].as_u64(), Some(420), "{s}");
    assert_eq!(s["verified"].as_u64(), Some(420), "{s}");
    assert_eq!(s["mismatches"].as_u64(), Some(0), "{s}");
}

/// A producer that dies (SIGKILL) or shuts down (SIGTERM) under a consumer: the consumer ends
/// with status 1 and a message that says what happened, and its statistics are written.
#[test]
fn producer_gone_consumer_ends_with_a_clear_message() {
    for (sig, want) in [
        (
            Signal::SIGKILL,
            "producer closed the connection without a goodbye",
        ),
        (
            Signal::SIGTERM,
            "producer ended the stream (Leaving): producer shutting down",
        ),
    ] {
        let sock = socket(&format!("gone-{sig}"));
        let p = Producer::start(&sock, &["--alloc", "memfd", "--size", "320x240"]);
        let c = spawn_consumer(&sock, "c", &["--import", "cpu-map", "--verify"]);
        std::thread::sleep(Duration::from_millis(800));
        signal(p.pid(), sig);
        let (code, err, s) = c.finish(Duration::from_secs(20));
        assert_eq!(code, Some(1), "{sig}: {err}");
        assert!(err.contains(want), "{sig}: stderr lacks {want:?}:\n{err}");
        assert!(err.contains("--reconnect"), "{sig}: no hint:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(s["frames"].as_u64().unwrap() > 10, "{s}");
        assert_eq!(s["mismatches"].as_u64(), Some(0), "{s}");
        drop(p);
    }
}

/// `--reconnect`: the producer is killed mid-stream, a new one starts on the same path (the
/// stale socket file is replaced), and the consumer resumes and finishes its frames, every one
/// verified, the restart not counted as a drop.
#[test]
fn reconnect_resumes_with_a_new_producer() {
    let sock = socket("reconnect");
    let args = ["--alloc", "memfd", "--size", "320x240"];
    let p1 = Producer::start(&sock, &args);
    let c = spawn_consumer(
        &sock,
        "c",
        &[
            "--import",
            "cpu-map",
            "--verify",
            "--frames",
            "240",
            "--reconnect",
            "--reconnect-timeout",
            "20",
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    signal(p1.pid(), Signal::SIGKILL);
    drop(p1);
    assert!(sock.exists(), "a killed producer leaves its socket file");
    std::thread::sleep(Duration::from_millis(500));
    let p2 = Producer::start(&sock, &args);
    let (code, err, s) = c.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("waiting for a producer"), "{err}");
    assert_eq!(s["reconnects"].as_u64(), Some(1), "{s}");
    assert_eq!(s["frames"].as_u64(), Some(240), "{s}");
    assert_eq!(s["verified"].as_u64(), Some(240), "{s}");
    assert_eq!(s["dropped"].as_u64(), Some(0), "{s}");
    drop(p2);

    // No producer comes back: --reconnect-timeout ends it with an error.
    let p3 = Producer::start(&sock, &args);
    let c = spawn_consumer(
        &sock,
        "c2",
        &[
            "--import",
            "cpu-map",
            "--reconnect",
            "--reconnect-timeout",
            "1",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(p3.pid(), Signal::SIGTERM);
    let (code, err, _) = c.finish(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no producer at"), "{err}");
}

/// SIGTERM to a consumer: it says goodbye, writes its statistics and exits 0.
#[test]
fn consumer_sigterm_is_a_clean_exit() {
    let sock = socket("consumer-term");
    let p = Producer::start(&sock, &["--alloc", "memfd", "--size", "320x240"]);
    let pid = p.pid();
    std::thread::sleep(Duration::from_millis(200));
    let base = fd_count_of(pid);
    let c = spawn_consumer(&sock, "c", &["--import", "cpu-map", "--verify"]);
    std::thread::sleep(Duration::from_millis(800));
    signal(c.child.id(), Signal::SIGTERM);
    let (code, err, s) = c.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert!(s["frames"].as_u64().unwrap() > 10, "{s}");
    assert_eq!(s["error"], serde_json::Value::Null, "{s}");
    assert!(eventually(Duration::from_secs(5), || fd_count_of(pid) == base));
}
