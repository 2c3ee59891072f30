//! The fan-out's invariants under stalled and hostile peers (issue 13), with the real binaries:
//! stalled consumers never freeze healthy ones, whatever k of n are stalled; a frame whose
//! buffer was reclaimed is never counted as valid; descriptor exhaustion sheds connections and
//! the stream goes on; a silent producer times out naming what was awaited; peer text is
//! escaped; a wild `seq` is refused; a Goodbye is read even when the peer closes at once.

mod common;
use common::*;
use dmabuf_core::format::{FrameFormat, FrameLayout, PixelFormat, MOD_LINEAR};
use dmabuf_core::proto::wire::*;
use dmabuf_core::proto::{Channel, Listener, ListenerOptions};
use dmabuf_core::testing::fd_count_of;
use dmabuf_core::MemoryKind;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);

/// A consumer in the background writing `--stats-json` to `json`.
fn spawn_consumer(sock: &Path, json: &Path, extra: &[&str]) -> Child {
    Command::new(consumer_bin())
        .arg("--socket")
        .arg(sock)
        .args(["--import", "cpu-map", "--verify", "-q", "--stats-json"])
        .arg(json)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A background consumer whose stderr is read as it runs: `first` fires once it has its first
/// frame (its `--report-every` line at frame 1), `stderr` gives the whole text at the end.
struct Watched {
    child: Child,
    first: std::sync::mpsc::Receiver<()>,
    stderr: std::thread::JoinHandle<String>,
}

fn spawn_watched(sock: &Path, json: &Path, extra: &[&str]) -> Watched {
    let mut args = vec!["--report-every", "3600"];
    args.extend_from_slice(extra);
    let mut child = spawn_consumer(sock, json, &args);
    let err = child.stderr.take().unwrap();
    let (tx, first) = std::sync::mpsc::channel();
    let stderr = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains(" frames 1 ") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    Watched {
        child,
        first,
        stderr,
    }
}

impl Watched {
    fn finish(mut self) -> (Option<i32>, String) {
        let code = self.child.wait().unwrap().code();
        (code, self.stderr.join().unwrap())
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn wait_out(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// k of n consumers SIGSTOPped for longer than the stall timeout, on a `--buffers 4` pool at
/// 30 fps. The healthy ones keep their rate (largest gap between frames within a couple of
/// frame periods), get no catch-up burst afterwards, and the stalled ones are dropped: on
/// SIGCONT they read the Goodbye saying why and count the frames they still held as
/// reclaimed, never as verified. Returns the healthy consumers' largest gaps (ms).
fn stall(k: usize, n: usize) -> Vec<f64> {
    let tag = format!("stall-{k}-of-{n}");
    let sock = socket(&tag);
    let p = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--size",
            "320x240",
            "--fps",
            "30",
            "--buffers",
            "4",
            "--stall-timeout",
            "2",
        ],
    );
    let fds0 = fd_count_of(p.pid());
    let jsons: Vec<_> = (0..n)
        .map(|i| sock.with_extension(format!("{tag}-{i}.json")))
        .collect();
    let kids: Vec<Watched> = jsons
        .iter()
        .enumerate()
        .map(|(i, j)| {
            // (The stalled ones end anyway should they not be dropped, and fail below.)
            let extra: &[&str] = if i < k {
                &["--duration", "12"]
            } else {
                &["--duration", "6"]
            };
            spawn_watched(&sock, j, extra)
        })
        .collect();
    // Every consumer streaming (its first frame in hand) before any is stopped.
    for (i, c) in kids.iter().enumerate() {
        c.first
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{tag} #{i}: no first frame"));
    }
    std::thread::sleep(Duration::from_millis(500));
    for c in &kids[..k] {
        signal(&c.child, nix::sys::signal::Signal::SIGSTOP);
    }
    // Past the 2 s stall timeout: the stalled ones are dropped meanwhile.
    std::thread::sleep(Duration::from_millis(3000));
    for c in &kids[..k] {
        signal(&c.child, nix::sys::signal::Signal::SIGCONT);
    }
    let mut gaps = Vec::new();
    for (i, c) in kids.into_iter().enumerate() {
        let (code, err) = c.finish();
        let s = read_json(&jsons[i]);
        assert_eq!(s["mismatches"], 0, "{tag} #{i}: {s}\n{err}");
        if i < k {
            // Dropped while stopped: it ends with the producer's reason, not a reset.
            assert_eq!(code, Some(1), "{tag} stalled #{i}: {err}");
            assert!(err.contains("released none"), "{tag} stalled #{i}: {err}");
            assert!(
                s["reclaimed"].as_u64().unwrap() >= 1,
                "{tag} stalled #{i}: the frames it held were reclaimed: {s}"
            );
        } else {
            assert_eq!(code, Some(0), "{tag} healthy #{i}: {err}");
            let gap = s["max_gap_ms"].as_f64().unwrap();
            let fps = s["fps"].as_f64().unwrap();
            let frames = s["frames"].as_u64().unwrap();
            // 6 s at 30 fps; no burst means no more than that (a few frames of slack for the
            // start), and a stall means far fewer.
            assert!(
                (160..=186).contains(&frames),
                "{tag} healthy #{i}: {frames} frames: {s}"
            );
            assert!(
                (26.0..34.0).contains(&fps),
                "{tag} healthy #{i}: {fps} fps: {s}"
            );
            assert!(gap < 100.0, "{tag} healthy #{i}: a {gap} ms gap: {s}");
            assert_eq!(s["dropped"], 0, "{tag} healthy #{i}: {s}");
            gaps.push(gap);
        }
    }
    // Every dropped consumer's descriptors were closed.
    let mut p = p;
    assert!(p.alive());
    assert!(
        eventually(Duration::from_secs(5), || fd_count_of(p.pid()) == fds0),
        "{tag}: producer fds {} != {fds0}",
        fd_count_of(p.pid())
    );
    gaps
}

#[test]
fn stalled_consumers_never_freeze_healthy_ones() {
    // The report's case (two of three stalled), then one, two and three of four.
    for (k, n) in [(2, 3), (1, 4), (2, 4), (3, 4)] {
        let gaps = stall(k, n);
        eprintln!("{k} of {n} stalled: healthy consumers' largest gaps {gaps:?} ms");
    }
}

/// A size change while one of two consumers is stopped (SIGSTOP) holding frames of the old
/// pool: the healthy one moves to the new pool as soon as it released the old frames and goes
/// on at the stream's rate; the stopped one is renegotiated when it releases — or dropped
/// after the stall timeout, the new pool never waiting for it. (Before: every renegotiation
/// waited for all consumers, freezing the healthy one for the stall timeout.)
#[test]
fn a_renegotiation_does_not_wait_for_a_stalled_consumer() {
    let clip = size_changing_clip();
    let sock = socket("reneg-stall");
    let src = format!("file:{}", clip.display());
    let _p = Producer::start(
        &sock,
        &[
            "--source",
            &src,
            "--loop",
            "--alloc",
            "memfd",
            "--stall-timeout",
            "3",
        ],
    );
    let (healthy_json, stalled_json) = (
        sock.with_extension("healthy.json"),
        sock.with_extension("stalled.json"),
    );
    let healthy = spawn_watched(&sock, &healthy_json, &["--duration", "8"]);
    let stalled = spawn_watched(&sock, &stalled_json, &["--duration", "20"]);
    for c in [&healthy, &stalled] {
        c.first
            .recv_timeout(Duration::from_secs(30))
            .expect("no first frame");
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(&stalled.child, nix::sys::signal::Signal::SIGSTOP);
    let (code, err) = healthy.finish();
    signal(&stalled.child, nix::sys::signal::Signal::SIGCONT);
    let (_, stalled_err) = stalled.finish();
    let s = read_json(&healthy_json);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(s["mismatches"], 0, "{s}");
    assert_eq!(s["verified"], s["frames"], "{s}");
    // A size change every half second (15 frames at 30 fps): over a dozen in 8 s.
    assert!(s["renegotiations"].as_u64().unwrap() >= 6, "{s}");
    // The stall timeout is 3 s; a frame period is 33 ms. Waiting for the stopped consumer at
    // a change would leave a gap of seconds.
    let gap = s["max_gap_ms"].as_f64().unwrap();
    assert!(gap < 1000.0, "a {gap} ms gap in the healthy consumer: {s}");
    assert!(
        stalled_err.contains("released none"),
        "the stopped consumer was not dropped for its stall: {stalled_err}"
    );
}

/// More consumers than `--buffers` could pin every buffer: the next one is refused, saying so.
#[test]
fn a_full_producer_refuses_with_a_reason() {
    let sock = socket("full");
    let _p = Producer::start(
        &sock,
        &["--alloc", "memfd", "--size", "64x48", "--buffers", "2"],
    );
    let jsons: Vec<_> = (0..2)
        .map(|i| sock.with_extension(format!("full-{i}.json")))
        .collect();
    let kids: Vec<Child> = jsons
        .iter()
        .map(|j| spawn_consumer(&sock, j, &["--duration", "3"]))
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let out = run_consumer(&sock, &["--import", "cpu-map"], Duration::from_secs(20));
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("producer is full"), "{e}");
    for c in kids {
        let (code, err) = wait_out(c);
        assert_eq!(code, Some(0), "{err}");
    }
}

/// Connect `n` idle connections (never saying Hello); the ones the producer accepted or shed.
fn idle_connections(sock: &Path, n: usize) -> Vec<Channel> {
    (0..n).filter_map(|_| Channel::connect(sock).ok()).collect()
}

/// Under a 64-descriptor limit, bursts of idle connections are shed (with a rate-limited log
/// line), the healthy consumer's stream goes on, and the producer serves a new consumer after.
#[test]
fn descriptor_exhaustion_sheds_connections_not_the_stream() {
    let sock = socket("emfile");
    let mut p = Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(producer_bin())
        .arg("--socket")
        .arg(&sock)
        .args(["--alloc", "memfd", "--size", "160x120", "--fps", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || sock.exists()));
    let json = sock.with_extension("healthy.json");
    let healthy = spawn_consumer(&sock, &json, &["--duration", "5"]);
    std::thread::sleep(Duration::from_millis(800));
    let first = idle_connections(&sock, 150);
    std::thread::sleep(Duration::from_millis(800));
    let second = idle_connections(&sock, 150);
    std::thread::sleep(Duration::from_millis(800));
    drop(first);
    drop(second);
    let (code, err) = wait_out(healthy);
    let s = read_json(&json);
    assert_eq!(code, Some(0), "{err}");
    let fps = s["fps"].as_f64().unwrap();
    assert!((24.0..36.0).contains(&fps), "{fps} fps: {s}");
    assert!(s["max_gap_ms"].as_f64().unwrap() < 500.0, "{s}");
    assert_eq!(s["mismatches"], 0, "{s}");
    // Still serving: the hello timeout (5 s) has closed the idle ones by now.
    std::thread::sleep(Duration::from_secs(5));
    let s2 = consume(
        &sock,
        "emfile-after",
        &["--import", "cpu-map", "--frames", "10"],
        Duration::from_secs(30),
    );
    assert_eq!(s2["frames"], 10);
    assert!(p.try_wait().unwrap().is_none(), "the producer exited");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = p.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("out of descriptors") || log.contains("waiting for their Hello"),
        "the shedding is logged:\n{log}"
    );
    let lines = log
        .lines()
        .filter(|l| l.contains("out of descriptors") || l.contains("waiting for their Hello"))
        .count();
    assert!(lines <= 20, "rate-limited: {lines} lines\n{log}");
}

/// A fake producer on `sock`: accepts the consumer, reads its Hello, sends a Welcome for a
/// 64x48 NV12 memfd stream of `buffers` buffers, then runs `then`.
fn fake_producer(
    name: &str,
    consumer_args: &[&str],
    buffers: u32,
    then: impl FnOnce(Channel),
) -> (Option<i32>, String) {
    let sock = socket(name);
    let listener = Listener::bind(&sock, &ListenerOptions::default()).unwrap();
    let s2 = sock.clone();
    let args: Vec<String> = consumer_args.iter().map(|s| s.to_string()).collect();
    let consumer = std::thread::spawn(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_consumer(&s2, &a, Duration::from_secs(60))
    });
    let mut chan = listener
        .accept(Some(T))
        .unwrap()
        .expect("consumer connects");
    let _ = chan.recv(Some(T), "Hello").unwrap();
    chan.send(&Message::Welcome(fake_welcome(
        MemoryKind::Memfd,
        buffers,
        30,
    )))
    .unwrap();
    then(chan);
    let out = consumer.join().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Send buffer `id` of the fake stream (a sealed memfd).
fn add_buffer(chan: &Channel, id: u32) {
    let l = FrameLayout::gpu_friendly(FrameFormat::linear(PixelFormat::Nv12, 64, 48)).unwrap();
    let fd = dmabuf_core::alloc::sealed_memfd(
        "fake",
        l.size,
        nix::fcntl::SealFlag::F_SEAL_SHRINK | nix::fcntl::SealFlag::F_SEAL_GROW,
    )
    .unwrap();
    let planes = l
        .planes
        .iter()
        .map(|p| WirePlane {
            fd_index: 0,
            stride: p.stride,
            offset: p.offset,
            size: p.size(),
        })
        .collect();
    chan.send_with_fds(
        &Message::AddBuffer(AddBuffer {
            buffer_id: id,
            n_fds: 1,
            planes,
        }),
        &[fd.as_fd()],
    )
    .unwrap();
}

fn frame(id: u32, seq: u64) -> Message {
    let l = FrameLayout::gpu_friendly(FrameFormat::linear(PixelFormat::Nv12, 64, 48)).unwrap();
    Message::Frame(Frame {
        buffer_id: id,
        flags: 0,
        seq,
        pts_ns: 0,
        publish_ns: 0,
        checksum: 0,
        chunks: l
            .planes
            .iter()
            .map(|p| Chunk {
                bytes_used: p.size() as u32,
                flags: 0,
            })
            .collect(),
    })
}

/// A producer that goes silent — after its Welcome, or mid-stream — is given up on after
/// `--producer-timeout`, with an error naming what the consumer waited for.
#[test]
fn a_silent_producer_times_out() {
    let t0 = Instant::now();
    let (code, err) = fake_producer(
        "silent-welcome",
        &["--import", "cpu-map", "--producer-timeout", "1"],
        2,
        |chan| {
            std::thread::sleep(Duration::from_secs(3));
            drop(chan);
        },
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("sent nothing for 1.0 s"), "{err}");
    assert!(err.contains("its buffers (0 of 2 added)"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let (code, err) = fake_producer(
        "silent-midstream",
        &["--import", "cpu-map", "--producer-timeout", "1.5"],
        1,
        |chan| {
            add_buffer(&chan, 0);
            chan.send(&frame(0, 0)).unwrap();
            std::thread::sleep(Duration::from_secs(4));
        },
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("waited for the next frame"), "{err}");
}

/// Peer text reaches the terminal and the logs escaped: no ESC sequence, no forged line.
#[test]
fn peer_text_is_escaped() {
    let evil = "\x1b[31mred\x1b]0;title\x07\r\nproducer: forged line";
    let (code, err) = fake_producer("evil-goodbye", &["--import", "cpu-map"], 1, |chan| {
        chan.send(&Message::Goodbye(Goodbye {
            reason: GoodbyeReason::InternalError,
            message: evil.into(),
        }))
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    assert!(err.contains("\\u{1b}[31mred"), "{err:?}");
    assert!(
        !err.lines().any(|l| l.starts_with("producer: forged")),
        "{err:?}"
    );
    // And a consumer's text in the producer's log: once after the Welcome, once before it
    // (the Goodbye then arrives while the Welcome and buffers are being sent).
    for read_welcome in [true, false] {
        let sock = socket(&format!("evil-consumer-{read_welcome}"));
        let p = Producer::start(
            &sock,
            &["--alloc", "memfd", "--size", "64x48", "--frames", "1000"],
        );
        let mut chan = Channel::connect(&sock).unwrap();
        chan.send(&Message::Hello(Hello {
            version: VERSION,
            flags: 0,
            caps: vec![Cap {
                fourcc: PixelFormat::Nv12.fourcc(),
                memory_mask: MemoryKind::Memfd.bit(),
                modifier: MOD_LINEAR,
            }],
        }))
        .unwrap();
        if read_welcome {
            let _ = chan.recv(Some(T), "Welcome").unwrap();
        }
        chan.send(&Message::Goodbye(Goodbye {
            reason: GoodbyeReason::ProtocolError,
            message: evil.into(),
        }))
        .unwrap();
        drop(chan);
        std::thread::sleep(Duration::from_millis(500));
        let mut p = p;
        let _ = p.child.kill();
        let (_, log) = p.wait(Duration::from_secs(10));
        // Whenever the Goodbye came, its reason is logged, escaped.
        assert!(
            log.contains("ProtocolError") && log.contains("\\u{1b}[31mred"),
            "read_welcome {read_welcome}: {log}"
        );
        assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
        assert!(
            !log.lines().any(|l| l.starts_with("producer: forged")),
            "{log:?}"
        );
    }
}

/// A `seq` jump beyond any number of skipped frames is a protocol error, not 2^64 dropped
/// frames: the report's jump to 2^64-1, and a jump just past the bound.
#[test]
fn a_wild_seq_is_refused() {
    for (name, jump) in [("seq-max", u64::MAX), ("seq-bound", MAX_SEQ_STEP + 1)] {
        let json = socket(name).with_extension("json");
        let j = json.to_str().unwrap().to_string();
        let (code, err) = fake_producer(
            name,
            &["--import", "cpu-map", "--stats-json", &j],
            2,
            |chan| {
                add_buffer(&chan, 0);
                add_buffer(&chan, 1);
                chan.send(&frame(0, 0)).unwrap();
                chan.send(&frame(1, jump)).unwrap();
                // Read the consumer's Release and Goodbye before closing.
                std::thread::sleep(Duration::from_millis(1500));
            },
        );
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains("sequence jumps"), "{name}: {err}");
        let s = read_json(&json);
        assert_eq!(s["dropped"], 0, "{name}: {s}");
    }
    // Within the bound it is a count of dropped frames.
    let json = socket("seq-ok").with_extension("json");
    let j = json.to_str().unwrap().to_string();
    let (code, err) = fake_producer(
        "seq-ok",
        &["--import", "cpu-map", "--stats-json", &j],
        2,
        |chan| {
            add_buffer(&chan, 0);
            add_buffer(&chan, 1);
            chan.send(&frame(0, 0)).unwrap();
            chan.send(&frame(1, 1000)).unwrap();
            chan.send(&Message::Goodbye(Goodbye {
                reason: GoodbyeReason::EndOfStream,
                message: String::new(),
            }))
            .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        },
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(read_json(&json)["dropped"], 999);
}

/// A producer that says Goodbye and closes at once, with the consumer's releases unread, does
/// not lose its reason (the consumer reads on after ECONNRESET).
#[test]
fn a_goodbye_before_close_is_not_lost() {
    let (code, err) = fake_producer("goodbye-close", &["--import", "cpu-map"], 2, |chan| {
        add_buffer(&chan, 0);
        add_buffer(&chan, 1);
        chan.send(&frame(0, 0)).unwrap();
        chan.send(&frame(1, 1)).unwrap();
        // The consumer's two Releases arrive; we never read them.
        std::thread::sleep(Duration::from_millis(800));
        chan.send(&Message::Goodbye(Goodbye {
            reason: GoodbyeReason::InternalError,
            message: "the reason that must arrive".into(),
        }))
        .unwrap();
        // Closed at once, the two Releases unread: the consumer's next read is ECONNRESET.
        drop(chan);
    });
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the reason that must arrive"), "{err}");
    assert!(!err.contains("without a goodbye"), "{err}");
}

/// A consumer that hits its own descriptor limit while receiving buffers says so, instead of
/// blaming the producer for sending too many.
#[test]
fn a_consumer_at_its_descriptor_limit_says_so() {
    let sock = socket("own-limit");
    let _p = Producer::start(
        &sock,
        &["--alloc", "memfd", "--size", "64x48", "--buffers", "8"],
    );
    let mut refused = 0;
    for limit in [6, 7, 8, 9] {
        let out = Command::new("prlimit")
            .arg(format!("--nofile={limit}:{limit}"))
            .arg(consumer_bin())
            .arg("--socket")
            .arg(&sock)
            .args(["--import", "cpu-map", "--frames", "3", "-q"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            refused += 1;
            assert!(e.contains("limit of"), "limit {limit}: {e}");
            assert!(!e.contains("too many descriptors"), "limit {limit}: {e}");
        }
    }
    assert!(
        refused > 0,
        "8 buffers under a limit of 6 to 9 descriptors must not fit"
    );
}

/// Send buffer `id` (NV12 64x48) with its planes in one memfd or one memfd per plane, each
/// memfd `page_round`ed to whole pages or exactly as long as its planes; fill it and return the
/// frame checksum of its contents.
fn send_buffer(chan: &Channel, id: u32, per_plane: bool, page_round: bool) -> u32 {
    let l = FrameLayout::gpu_friendly(FrameFormat::linear(PixelFormat::Nv12, 64, 48)).unwrap();
    let groups: Vec<Vec<usize>> = if per_plane {
        (0..l.planes.len()).map(|i| vec![i]).collect()
    } else {
        vec![(0..l.planes.len()).collect()]
    };
    let mut fds = Vec::new();
    let mut planes = vec![None; l.planes.len()];
    let mut sum = 0u32;
    for (k, group) in groups.iter().enumerate() {
        // Planes of this fd back to back from offset 0.
        let mut at = Vec::new();
        let mut end = 0u64;
        for &i in group {
            at.push((i, end));
            end += l.planes[i].size();
        }
        let size = if page_round {
            end.div_ceil(4096) * 4096
        } else {
            end
        };
        let fd = dmabuf_core::alloc::sealed_memfd(
            "plane",
            size,
            nix::fcntl::SealFlag::F_SEAL_SHRINK | nix::fcntl::SealFlag::F_SEAL_GROW,
        )
        .unwrap();
        let bytes: Vec<u8> = (0..size)
            .map(|b| (b as u32 * 7 + k as u32 * 31 + id * 13) as u8)
            .collect();
        nix::sys::uio::pwrite(&fd, &bytes, 0).unwrap();
        for (i, off) in at {
            let p = dmabuf_core::format::PlaneLayout {
                offset: off,
                ..l.planes[i]
            };
            sum = sum
                .wrapping_add(dmabuf_core::format::plane_checksum(i as u32, &bytes, &p).unwrap());
            planes[i] = Some(WirePlane {
                fd_index: k as u32,
                stride: p.stride,
                offset: off,
                size: p.size(),
            });
        }
        fds.push(fd);
    }
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    chan.send_with_fds(
        &Message::AddBuffer(AddBuffer {
            buffer_id: id,
            n_fds: fds.len() as u32,
            planes: planes.into_iter().map(Option::unwrap).collect(),
        }),
        &borrowed,
    )
    .unwrap();
    sum
}

/// Send `frames` checksummed frames round-robin over buffers with checksums `sums`, each
/// after the previous one's release, then end the stream.
fn stream_and_end(chan: Channel, sums: &[u32], frames: u64) {
    let mut chan = chan;
    for seq in 0..frames {
        let id = (seq % sums.len() as u64) as u32;
        let Message::Frame(mut f) = frame(id, seq) else {
            unreachable!()
        };
        f.flags = FRAME_FLAG_CHECKSUM;
        f.checksum = sums[id as usize];
        if chan.send(&Message::Frame(f)).is_err() {
            return;
        }
        // Wait for its release before reusing the buffer.
        match chan.recv(Some(T), "Release") {
            Ok((Message::Release(_), _)) => {}
            other => panic!("expected a Release, got {other:?}"),
        }
    }
    let _ = chan.send(&Message::Goodbye(Goodbye {
        reason: GoodbyeReason::EndOfStream,
        message: String::new(),
    }));
    std::thread::sleep(Duration::from_millis(300));
}

/// A buffer may carry one fd per plane (PROTOCOL.md, AddBuffer): every import path takes it,
/// the default one included, and verifies every frame (the GPU over each plane's own buffer).
#[test]
fn one_fd_per_plane_is_imported_by_every_path() {
    for import in ["auto", "host-pointer", "copy", "cpu-map"] {
        let name = format!("fd-per-plane-{import}");
        let json = socket(&name).with_extension("json");
        let j = json.to_str().unwrap().to_string();
        let args = [
            "--import",
            import,
            "--verify",
            "--frames",
            "6",
            "--stats-json",
            &j,
        ];
        let (code, err) = fake_producer(&name, &args, 2, |chan| {
            let sums: Vec<u32> = (0..2)
                .map(|id| send_buffer(&chan, id, true, true))
                .collect();
            stream_and_end(chan, &sums, 6);
        });
        assert_eq!(code, Some(0), "{import}: {err}");
        let s = read_json(&json);
        assert_eq!(s["verified"], 6, "{import}: {s}\n{err}");
        assert_eq!(s["mismatches"], 0, "{import}: {s}");
        if import != "cpu-map" {
            assert_eq!(s["gpu_verified"], true, "{import}: {s}");
        }
    }
}

/// Descriptor sizes need no alignment on the wire. A memfd the host-pointer path cannot import
/// (its size not a multiple of the device's alignment) goes through the copy path under
/// `--import auto`, and is refused with a Goodbye saying why when host-pointer is forced.
#[test]
fn an_unaligned_memfd_falls_back_to_copy_or_is_refused_with_a_reason() {
    let name = "unaligned-auto";
    let json = socket(name).with_extension("json");
    let j = json.to_str().unwrap().to_string();
    let args = [
        "--import",
        "auto",
        "--verify",
        "--frames",
        "6",
        "--stats-json",
        &j,
    ];
    let (code, err) = fake_producer(name, &args, 2, |chan| {
        let sums: Vec<u32> = (0..2)
            .map(|id| send_buffer(&chan, id, false, false))
            .collect();
        stream_and_end(chan, &sums, 6);
    });
    assert_eq!(code, Some(0), "{err}");
    let s = read_json(&json);
    assert_eq!(s["verified"], 6, "{s}\n{err}");
    assert_eq!(s["import_path"], "copy", "{s}");
    assert!(err.contains("copying instead"), "{err}");

    let goodbye = std::sync::Arc::new(std::sync::Mutex::new(None));
    let g2 = goodbye.clone();
    let (code, err) = fake_producer(
        "unaligned-forced",
        &["--import", "host-pointer"],
        2,
        move |chan| {
            send_buffer(&chan, 0, false, false);
            let mut chan = chan;
            if let Ok((Message::Goodbye(g), _)) = chan.recv(Some(T), "Goodbye") {
                *g2.lock().unwrap() = Some(g);
            }
        },
    );
    assert_eq!(code, Some(1), "{err}");
    let g = goodbye
        .lock()
        .unwrap()
        .take()
        .expect("a Goodbye before the close");
    assert_eq!(g.reason, GoodbyeReason::Unsupported, "{g:?}");
    assert!(g.message.contains("multiple of"), "{g:?}");
}
