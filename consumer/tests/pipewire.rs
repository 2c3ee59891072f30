//! The PipeWire bridge with a real daemon: `pipewire` and `wireplumber` in a private runtime
//! directory and D-Bus session (as a desktop session runs them), and real clients no one here
//! wrote (GStreamer's `pipewiresrc`, `pw-dump`).
//!
//! Each test starts its own daemon. Without the daemon binaries these tests fail: ci/setup.sh
//! installs them, and a machine without them cannot test what the bridge claims.

mod common;

use common::pw::Daemon;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/clip-1080p60.mp4")
}

/// `pipewiresrc` on our node (WirePlumber 0.5 links it only with a media type).
fn pipewiresrc(node: &str, frames: u32) -> Vec<String> {
    vec![
        "pipewiresrc".into(),
        format!("target-object={node}"),
        format!("num-buffers={frames}"),
        "stream-properties=props,media.type=Video".into(),
    ]
}

/// The strides the producer logged for its pool (`strides [a, b, c]`).
fn logged_strides(log: &str) -> Vec<usize> {
    let line = log
        .lines()
        .find(|l| l.contains("strides ["))
        .unwrap_or_else(|| panic!("no pool line in the producer's log:\n{log}"));
    let list = &line[line.find("strides [").unwrap() + 9..];
    list[..list.find(']').unwrap()]
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

/// `consumer --verify --import cpu-map` for `frames` frames from `sock`, every frame also
/// written to `raw`; its statistics.
fn consume_verified(
    sock: &Path,
    tag: &str,
    frames: usize,
    raw: &Path,
    timeout: Duration,
) -> serde_json::Value {
    consume(
        sock,
        tag,
        &[
            "--verify",
            "--import",
            "cpu-map",
            "--frames",
            &frames.to_string(),
            "--dump-raw",
            raw.to_str().unwrap(),
        ],
        timeout,
    )
}

#[test]
fn node_plays_in_pipewiresrc_byte_exact() {
    let daemon = Daemon::start("play");
    let sock = socket("pw-play");
    let clip = clip();
    let source = format!("file:{}", clip.display());
    let producer = daemon.producer(&sock, &["--source", &source, "--pipewire", "clipnode"]);
    // The node is in the graph before any client: a Video/Source offering the clip's format.
    assert!(
        eventually(Duration::from_secs(10), || daemon
            .node("clipnode")
            .is_some()),
        "no node \"clipnode\" in pw-dump"
    );
    let (node, _) = daemon.node("clipnode").unwrap();
    assert_eq!(node["info"]["props"]["media.class"], "Video/Source");
    let enum_format = &node["info"]["params"]["EnumFormat"][0];
    assert_eq!(enum_format["format"], "I420", "{node:#}");
    assert_eq!(enum_format["size"]["width"], 1920);
    assert_eq!(enum_format["framerate"]["num"], 60);

    // A client plays it (its port shows what was negotiated meanwhile).
    let raw = daemon.dir.join("out.raw");
    let frames = 30u32;
    let mut args = pipewiresrc("clipnode", frames);
    args.extend([
        "!".into(),
        "filesink".into(),
        format!("location={}", raw.display()),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = std::thread::scope(|s| {
        let client = s.spawn(|| daemon.gst(&args, Duration::from_secs(60)));
        let mut buffers = serde_json::Value::Null;
        eventually(Duration::from_secs(20), || {
            if let Some((_, ports)) = daemon.node("clipnode") {
                if let Some(b) = ports
                    .iter()
                    .find_map(|p| p["info"]["params"]["Buffers"].get(0))
                {
                    buffers = b.clone();
                    return true;
                }
            }
            false
        });
        (client.join().unwrap(), buffers)
    });
    let (out, buffers) = client;
    assert!(
        out.status.success(),
        "pipewiresrc failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    // SPA_DATA_MemFd (2) is the only data type offered: bit 1 << 2.
    assert_eq!(
        buffers["dataType"]["default"], 4,
        "Buffers param: {buffers}"
    );
    assert_eq!(buffers["blocks"], 3, "one data block per plane: {buffers}");

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(producer.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let (_, log) = producer.wait(Duration::from_secs(20));
    let strides = logged_strides(&log);
    assert!(log.contains("PipeWire node: "), "{log}");

    // pipewiresrc hands filesink each plane as its own memory, rows at the pool's stride
    // (it adds a GstVideoMeta and does not check that filesink ignores it): take the rows'
    // pixels and compare with the ffmpeg CLI's decode.
    let got = std::fs::read(&raw).unwrap();
    let (w, h) = (1920usize, 1080usize);
    let planes = [
        (strides[0], w, h),
        (strides[1], w / 2, h / 2),
        (strides[2], w / 2, h / 2),
    ];
    let padded: usize = planes.iter().map(|(s, _, r)| s * r).sum();
    assert_eq!(
        got.len(),
        padded * frames as usize,
        "{frames} frames of {padded} bytes"
    );
    let reference = ffmpeg_raw(&clip, "yuv420p", Some(frames + 2));
    let frame_len = w * h * 3 / 2;
    let want: Vec<&[u8]> = reference.chunks(frame_len).collect();
    let mut seen = Vec::new();
    for f in got.chunks(padded) {
        let mut pixels = Vec::with_capacity(frame_len);
        let mut off = 0;
        for (stride, row, rows) in planes {
            for y in 0..rows {
                pixels.extend_from_slice(&f[off + y * stride..off + y * stride + row]);
            }
            off += stride * rows;
        }
        seen.push(want.iter().position(|r| *r == pixels.as_slice()));
    }
    // Every frame is one of the clip's, in order, none missing. (A client joins a live source:
    // PipeWire starts, pauses and restarts the node while linking it, and may lose the very
    // first frame.)
    let first = seen[0].unwrap_or_else(|| panic!("frame 0 matches no decoded frame: {seen:?}"));
    assert!(first <= 1, "the stream started at frame {first}: {seen:?}");
    let expected: Vec<Option<usize>> = (first..first + frames as usize).map(Some).collect();
    assert_eq!(
        seen, expected,
        "frames received, as indices of the decoded clip"
    );
}

#[test]
fn daemon_killed_mid_stream_socket_consumers_carry_on() {
    let mut daemon = Daemon::start("kill");
    let sock = socket("pw-kill");
    let producer = daemon.producer(&sock, &["--pipewire", "killnode", "--frames", "240"]);
    assert!(eventually(Duration::from_secs(10), || daemon
        .node("killnode")
        .is_some()));
    let consumer = std::thread::spawn({
        let sock = sock.clone();
        move || {
            consume(
                &sock,
                "kill",
                &["--verify", "--import", "cpu-map"],
                Duration::from_secs(60),
            )
        }
    });
    // A PipeWire client too, then the daemon dies under both.
    let mut args = pipewiresrc("killnode", 100_000);
    args.extend(["!".into(), "fakesink".into()]);
    let mut gst = Command::new("gst-launch-1.0");
    gst.arg("-q")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    daemon.env(&mut gst);
    let client = Killed(gst.spawn().unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    daemon.kill();
    let stats = consumer.join().unwrap();
    drop(client);
    let (status, log) = producer.wait(Duration::from_secs(30));
    assert!(status.success(), "producer failed:\n{log}");
    assert!(
        log.contains("PipeWire node stopped") && log.contains("the socket's consumers carry on"),
        "the producer did not say the PipeWire node stopped:\n{log}"
    );
    // The client was linked and took frames before the daemon died (so buffers were out).
    let sent: u64 = log
        .lines()
        .find_map(|l| {
            l.split("PipeWire node: ")
                .nth(1)?
                .split(" frames sent")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no PipeWire summary in the producer's log:\n{log}"));
    assert!(
        sent > 0,
        "no frame went to PipeWire before the daemon died:\n{log}"
    );
    assert_eq!(stats["frames"], 240, "{stats:#}");
    assert_eq!(stats["verified"], 240, "{stats:#}");
}

#[test]
fn no_daemon_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("dmabuf-pw-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = socket("pw-none");
    let out = Command::new(producer_bin())
        .arg("--socket")
        .arg(&sock)
        .args(["--pipewire", "nonode"])
        .env("XDG_RUNTIME_DIR", &dir)
        .env("PIPEWIRE_RUNTIME_DIR", &dir)
        .env_remove("PIPEWIRE_REMOTE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--pipewire") && err.contains("cannot connect to the PipeWire daemon"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A child process killed when dropped (a failing test leaves none behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gst-launch-1.0 videotestsrc ! … ! pipewiresink` as a PipeWire Video/Source node named
/// `name`, `frames` frames at 30 fps.
fn gst_source(daemon: &Daemon, name: &str, caps: &str, frames: u32) -> Killed {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-q").args([
        "videotestsrc",
        "pattern=smpte75",
        "is-live=true",
        &format!("num-buffers={frames}"),
        "!",
        caps,
        "!",
        "pipewiresink",
        "mode=provide",
        &format!("stream-properties=props,media.class=Video/Source,node.name={name}"),
    ]);
    daemon.env(&mut cmd);
    Killed(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// GStreamer's default layout of I420 (`GstVideoInfo`, video-info.c): 4-byte aligned strides,
/// planes back to back below a first plane rounded up to an even number of rows. The planes'
/// (row bytes, rows, stride, offset).
fn gst_i420_planes(w: usize, h: usize) -> Vec<(usize, usize, usize, usize)> {
    let ru = |v: usize, a: usize| v.div_ceil(a) * a;
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let (s0, s1) = (ru(w, 4), ru(ru(w, 2) / 2, 4));
    let o1 = s0 * ru(h, 2);
    let o2 = o1 + s1 * (ru(h, 2) / 2);
    vec![(w, h, s0, 0), (cw, ch, s1, o1), (cw, ch, s1, o2)]
}

#[test]
fn a_gstreamer_node_through_the_producer_is_verified_and_its_copies_counted() {
    let daemon = Daemon::start("gstin");
    // A common size, and an odd one in GStreamer's padded layout (4-byte strides, an extra row).
    for (w, h) in [(640usize, 480usize), (641, 359)] {
        let caps = format!("video/x-raw,format=I420,width={w},height={h},framerate=30/1");
        let name = format!("gstsrc{w}");
        let gst = gst_source(&daemon, &name, &caps, 100_000);
        assert!(eventually(Duration::from_secs(10), || daemon
            .node(&name)
            .is_some()));
        let sock = socket(&format!("pw-gstin-{w}"));
        let producer = daemon.producer(&sock, &["--source", &format!("pipewire:{name}")]);
        let raw = sock.with_extension("raw");
        let frames = 30;
        let stats = consume_verified(&sock, "gstin", frames, &raw, Duration::from_secs(60));
        drop(gst);
        drop(producer);
        assert_eq!(stats["frames"], frames, "{w}x{h}: {stats:#}");
        assert_eq!(stats["verified"], frames, "{w}x{h}: {stats:#}");
        // The daemon made these buffers as memory inside each client (SPA_DATA_MemPtr),
        // which cannot be passed on: one counted copy each.
        assert_eq!(stats["producer_copied"], frames, "{w}x{h}: {stats:#}");
        // The pixels are GStreamer's 75 % colour bars (the same in every frame; the default
        // SMPTE pattern has a noise patch), as gst-launch writes them itself, unpadded.
        let reference = daemon.dir.join("bars.raw");
        let out = daemon.gst(
            &[
                "videotestsrc",
                "pattern=smpte75",
                "num-buffers=1",
                "!",
                &caps,
                "!",
                "filesink",
                &format!("location={}", reference.display()),
            ],
            Duration::from_secs(30),
        );
        assert!(out.status.success());
        let padded = std::fs::read(&reference).unwrap();
        let mut want = Vec::new();
        for (row, rows, stride, offset) in gst_i420_planes(w, h) {
            for y in 0..rows {
                want.extend_from_slice(&padded[offset + y * stride..][..row]);
            }
        }
        let got = std::fs::read(&raw).unwrap();
        assert_eq!(got.len(), want.len() * frames, "{w}x{h}");
        for (i, frame) in got.chunks(want.len()).enumerate() {
            assert!(
                frame == want.as_slice(),
                "{w}x{h}: frame {i} differs from GStreamer's bars"
            );
        }
    }
}

#[test]
fn our_node_through_a_second_producer_is_zero_copy() {
    let daemon = Daemon::start("chain");
    let (a, b) = (socket("pw-chain-a"), socket("pw-chain-b"));
    let _first = daemon.producer(
        &a,
        &[
            "--pipewire",
            "chainnode",
            "--size",
            "640x480",
            "--fps",
            "30",
        ],
    );
    assert!(eventually(Duration::from_secs(10), || daemon
        .node("chainnode")
        .is_some()));
    let second = daemon.producer(&b, &["--source", "pipewire:chainnode"]);
    let stats = consume(
        &b,
        "chain",
        &["--verify", "--import", "cpu-map", "--frames", "90"],
        Duration::from_secs(60),
    );
    drop(second);
    assert_eq!(stats["frames"], 90, "{stats:#}");
    assert_eq!(stats["verified"], 90, "{stats:#}");
    // The first producer's pool (sealed memfds) went through PipeWire and on to the consumer:
    // not one copy anywhere.
    assert_eq!(stats["producer_copied"], 0, "{stats:#}");
    assert_eq!(stats["memory"], "memfd", "{stats:#}");
}

#[test]
fn a_missing_target_is_a_clear_error() {
    let daemon = Daemon::start("missing");
    let sock = socket("pw-missing");
    let mut cmd = Command::new(producer_bin());
    cmd.arg("--socket")
        .arg(&sock)
        .args(["--source", "pipewire:no-such-node"]);
    daemon.env(&mut cmd);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // WirePlumber's words, or ours when nothing answers at all.
    assert!(
        err.contains(
            "PipeWire node \"no-such-node\": PipeWire stream error: defined target not found"
        ) || err.contains("no video from the PipeWire node \"no-such-node\""),
        "{err}"
    );
}

#[test]
fn a_renegotiating_node_is_followed_through_a_second_producer() {
    let daemon = Daemon::start("reneg");
    let clip = size_changing_clip();
    let (a, b) = (socket("pw-reneg-a"), socket("pw-reneg-b"));
    // Our node changes size every 15 frames (320x240, 480x360, …): each change a new
    // PipeWire format and new buffers, which the second producer follows. The first producer
    // has no socket consumer: its PipeWire client alone keeps it going, through every
    // renegotiation (it must not take one for its client leaving and start the file again).
    let src = format!("file:{}", clip.display());
    let _first = daemon.producer(
        &a,
        &[
            "--source",
            &src,
            "--loop",
            "--alloc",
            "memfd",
            "--pipewire",
            "renode",
        ],
    );
    assert!(eventually(Duration::from_secs(10), || daemon
        .node("renode")
        .is_some()));
    let second = daemon.producer(&b, &["--source", "pipewire:renode"]);
    // With no consumer yet, the second producer follows the renegotiations too, and lets go
    // of each superseded set of buffers (16 buffers x 3 planes a change, a dozen changes in
    // these 4 s: hundreds of fds if it kept them).
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", second.pid()))
            .unwrap()
            .count()
    };
    std::thread::sleep(Duration::from_secs(1));
    let idle_start = fds();
    std::thread::sleep(Duration::from_secs(4));
    let idle_end = fds();
    assert!(
        idle_end <= idle_start + 48,
        "the idle second producer went from {idle_start} to {idle_end} fds"
    );
    let raw = b.with_extension("raw");
    let frames = 120;
    let stats = consume_verified(&b, "reneg", frames, &raw, Duration::from_secs(90));
    drop(second);
    assert_eq!(stats["frames"], frames, "{stats:#}");
    assert_eq!(stats["verified"], frames, "{stats:#}");
    assert_eq!(stats["producer_copied"], 0, "{stats:#}");
    assert!(stats["renegotiations"].as_u64().unwrap() >= 2, "{stats:#}");
    // Every frame is one of the clip's, whole, at its own size (ffmpeg's decode, each frame
    // at its own size), and the clip plays on: 480x360 frames come in runs, in order (a
    // producer that started the file again at each change would send one, then 320x240
    // from the start).
    let want = size_changing_clip_decoded(&clip);
    let (small, big) = (320 * 240 * 3 / 2, 480 * 360 * 3 / 2);
    let (first_small, rest) = want.split_at(small * 15);
    let index = |frames: &[u8], n: usize| -> std::collections::HashMap<Vec<u8>, usize> {
        frames
            .chunks(n)
            .enumerate()
            .map(|(i, f)| (f.to_vec(), i))
            .collect()
    };
    let (known_small, known_big) = (index(first_small, small), index(&rest[..big * 15], big));
    let got = std::fs::read(&raw).unwrap();
    let _ = std::fs::remove_file(&raw);
    // (size: 0 small, 1 big; index in its 15 frames)
    let mut seen: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < got.len() {
        let at = |n: usize, set: &std::collections::HashMap<Vec<u8>, usize>| {
            got.get(pos..pos + n).and_then(|f| set.get(f).copied())
        };
        if let Some(i) = at(small, &known_small) {
            seen.push((0, i));
            pos += small;
        } else if let Some(i) = at(big, &known_big) {
            seen.push((1, i));
            pos += big;
        } else {
            panic!(
                "frame {} (byte {pos}) is none of the clip's frames",
                seen.len()
            );
        }
    }
    assert_eq!(seen.len(), frames);
    let runs: Vec<Vec<usize>> = seen
        .chunk_by(|x, y| x.0 == y.0)
        .filter(|r| r[0].0 == 1)
        .map(|r| r.iter().map(|f| f.1).collect())
        .collect();
    for r in &runs {
        assert!(
            r.windows(2).all(|w| w[0] < w[1]),
            "480x360 frames out of order: {r:?}"
        );
    }
    let longest = runs.iter().map(Vec::len).max().unwrap_or(0);
    assert!(longest >= 8, "480x360 runs {runs:?} (of {seen:?})");
}

#[test]
fn a_second_node_of_the_same_name_is_warned_of() {
    let daemon = Daemon::start("dup");
    let (a, b) = (socket("pw-dup-a"), socket("pw-dup-b"));
    let _first = daemon.producer(&a, &["--pipewire", "dupnode", "--size", "64x48"]);
    assert!(eventually(Duration::from_secs(10), || daemon
        .node("dupnode")
        .is_some()));
    let second = daemon.producer(&b, &["--pipewire", "dupnode", "--size", "64x48"]);
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (status, err) = second.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert!(
        err.contains("--pipewire: the daemon already has a video node named \"dupnode\""),
        "{err}"
    );
}

/// `gst-launch-1.0 -v pipewiresrc … ! fakesink silent=false` on `node`, its output (a line per
/// buffer: `chain`) in `log`.
fn counting_client(daemon: &Daemon, node: &str, log: &Path) -> Killed {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-v").args(pipewiresrc(node, 100_000)).args([
        "!",
        "fakesink",
        "silent=false",
        "sync=false",
    ]);
    daemon.env(&mut cmd);
    let out = std::fs::File::create(log).unwrap();
    Killed(
        cmd.stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0"),
    )
}

fn buffers_seen(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("chain")
        .count()
}

/// Two clients on our node; one stops (SIGSTOP) and keeps what it holds: the other goes on
/// getting frames (the stopped one holds at most its share; GStreamer's own `pipewiresink`
/// starves the second client in the same test).
#[test]
fn a_stopped_client_does_not_starve_another() {
    let daemon = Daemon::start("twoclients");
    let sock = socket("pw-two");
    let _producer = daemon.producer(
        &sock,
        &["--pipewire", "twonode", "--size", "320x240", "--fps", "30"],
    );
    assert!(eventually(Duration::from_secs(10), || daemon
        .node("twonode")
        .is_some()));
    let (first_log, second_log) = (daemon.dir.join("first.log"), daemon.dir.join("second.log"));
    let first = counting_client(&daemon, "twonode", &first_log);
    let _second = counting_client(&daemon, "twonode", &second_log);
    assert!(
        eventually(Duration::from_secs(20), || buffers_seen(&first_log) >= 10
            && buffers_seen(&second_log) >= 10),
        "the clients did not both stream:\n{}",
        daemon.log()
    );
    let stopped = nix::unistd::Pid::from_raw(first.0.id() as i32);
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let before = buffers_seen(&second_log);
    std::thread::sleep(Duration::from_secs(4));
    let during = buffers_seen(&second_log) - before;
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGCONT).unwrap();
    // 120 at 30 fps; a quarter of that is plenty of margin on a busy machine.
    assert!(
        during >= 30,
        "the second client got {during} frames in 4 s while the first was stopped"
    );
}

/// The node goes away: the consumer is told why, and the producer says it too before it
/// exits (status 0: the end of its stream, as at the end of a file); with no consumer at the
/// time, the same.
#[test]
fn a_node_that_goes_away_ends_the_stream_saying_why() {
    let daemon = Daemon::start("gone");
    let caps = "video/x-raw,format=I420,width=320,height=240,framerate=30/1";
    for with_consumer in [true, false] {
        let gst = gst_source(&daemon, "goingnode", caps, 100_000);
        assert!(eventually(Duration::from_secs(10), || daemon
            .node("goingnode")
            .is_some()));
        let sock = socket(&format!("pw-gone-{with_consumer}"));
        let relay = daemon.producer(&sock, &["--source", "pipewire:goingnode"]);
        let consumer = with_consumer.then(|| {
            let mut c = Command::new(consumer_bin());
            c.arg("--socket")
                .arg(&sock)
                .args(["--import", "cpu-map", "-q"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        });
        std::thread::sleep(Duration::from_secs(2));
        drop(gst);
        let (status, err) = relay.wait(Duration::from_secs(20));
        assert!(status.success(), "{err}");
        assert!(
            err.contains("the PipeWire node goingnode stopped or went away")
                || err.contains("the PipeWire node goingnode went away"),
            "{err}"
        );
        if let Some(c) = consumer {
            let out = c.wait_with_output().unwrap();
            let cerr = String::from_utf8_lossy(&out.stderr);
            assert!(cerr.contains("went away"), "{cerr}");
        }
    }
}
