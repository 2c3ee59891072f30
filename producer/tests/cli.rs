//! The producer's command line: bad input is a clear error (never a panic), the socket is
//! created safely, and a live producer's socket is never stolen.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn producer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(args)
        .output()
        .unwrap()
}

fn sock(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmabuf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn err_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_arguments_are_named() {
    for (args, code, want) in [
        (vec!["--size", "0x5"], 2, "each side must be 1..=16384"),
        (vec!["--size", "1920"], 2, "is not WIDTHxHEIGHT"),
        (
            vec!["--format", "RGB565"],
            2,
            "expected a DRM name, fourcc or FFmpeg name: I420",
        ),
        (vec!["--fps", "0"], 2, "frame rate"),
        (vec!["--alloc", "vram"], 2, "expected auto, memfd, dma-heap"),
        (vec!["--buffers", "1"], 2, "--buffers"),
        (vec!["--mode", "999"], 2, "octal"),
        (
            vec!["--source", "file:/nope.mkv"],
            1,
            "cannot open /nope.mkv",
        ),
        (vec!["--source", "webcam:/dev/video0"], 1, "unknown source"),
        (
            vec!["--pipewire", ""],
            1,
            "the node needs a name clients can target",
        ),
        (
            vec!["--source", "pipewire:"],
            1,
            "needs a node: its name or serial",
        ),
        (
            vec!["--v4l2-io", "mmap"],
            1,
            "--v4l2-io applies to a v4l2: source",
        ),
        (
            vec!["--format", "MJPEG"],
            1,
            "--format MJPEG applies to a v4l2: source",
        ),
        (
            vec!["--v4l2-io", "userptr"],
            2,
            "possible values: auto, expbuf, dmabuf, mmap",
        ),
    ] {
        let s = sock("bad.sock");
        let mut all = vec!["--socket", s.to_str().unwrap()];
        all.extend(args.iter().copied());
        let o = producer(&all);
        let e = err_of(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e:?} lacks {want:?}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

#[test]
fn missing_allocators_are_named() {
    for (alloc, dev) in [
        ("dma-heap", "/dev/dma_heap/system"),
        ("udmabuf", "/dev/udmabuf"),
    ] {
        if std::path::Path::new(dev).exists() {
            continue; // present (the real-kernel lane): nothing to refuse
        }
        let s = sock(&format!("{alloc}.sock"));
        let o = producer(&[
            "--socket",
            s.to_str().unwrap(),
            "--alloc",
            alloc,
            "--frames",
            "1",
        ]);
        let e = err_of(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains(&format!("{alloc} unavailable: {dev}")), "{e}");
        assert!(!s.exists(), "socket file left behind after the error");
    }
}

#[test]
fn help_explains_the_options() {
    let o = producer(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for opt in [
        "--socket",
        "--source",
        "--alloc",
        "--size",
        "--format",
        "--fps",
        "--no-pace",
        "--frames",
        "--allow-uid",
        "--v4l2-io",
        "--list-devices",
        "v4l2:/dev/videoN",
        "SCM_RIGHTS",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}");
    }
}

fn wait_for(p: &std::path::Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
    let s = sock("live.sock");
    let mut first = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args([
            "--socket",
            s.to_str().unwrap(),
            "--alloc",
            "memfd",
            "--size",
            "64x64",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s);
    let mode = std::fs::metadata(&s).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");
    let o = producer(&["--socket", s.to_str().unwrap(), "--alloc", "memfd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err_of(&o).contains("in use by a running producer"),
        "{}",
        err_of(&o)
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first producer must be unharmed"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // SIGKILL left the socket file behind (a_stale_socket_file_is_replaced covers reuse).
    assert!(s.exists());
}

#[test]
fn a_stale_socket_file_is_replaced_with_the_requested_mode() {
    let s = sock("stale.sock");
    // A socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&s).unwrap());
    assert!(s.exists());
    let mut p = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args([
            "--socket",
            s.to_str().unwrap(),
            "--alloc",
            "memfd",
            "--size",
            "64x64",
            "--mode",
            "660",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Ok(m) = std::fs::metadata(&s) {
            if m.permissions().mode() & 0o777 == 0o660 {
                break;
            }
        }
        assert!(p.try_wait().unwrap().is_none(), "producer exited");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "stale socket not replaced"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.kill().unwrap();
    p.wait().unwrap();
}

#[test]
fn a_regular_file_at_the_socket_path_is_left_alone() {
    let s = sock("file.sock");
    std::fs::write(&s, b"precious").unwrap();
    let o = producer(&["--socket", s.to_str().unwrap(), "--alloc", "memfd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err_of(&o).contains("not a socket"), "{}", err_of(&o));
    assert_eq!(std::fs::read(&s).unwrap(), b"precious");
}

/// The V4L2 errors that need no device: a path that does not exist, and files that are not V4L2
/// devices (a character device that is not one, a regular file). The device-side errors (busy,
/// an impossible format, unplug) are in consumer/tests/hw_v4l2.rs, run against vivid in the VM.
#[test]
fn v4l2_sources_that_are_not_devices_are_named() {
    for (source, want) in [
        (
            "v4l2:/dev/video-does-not-exist",
            "no such V4L2 device: /dev/video-does-not-exist does not exist",
        ),
        (
            "v4l2:/dev/null",
            "/dev/null is not a V4L2 device (VIDIOC_QUERYCAP failed)",
        ),
        (
            "v4l2:/etc/passwd",
            "/etc/passwd is not a V4L2 device (not a character device)",
        ),
    ] {
        let s = sock("v4l2.sock");
        let o = producer(&["--socket", s.to_str().unwrap(), "--source", source]);
        let e = err_of(&o);
        assert_eq!(o.status.code(), Some(1), "{source}: {e}");
        assert!(e.contains(want), "{source}: {e:?} lacks {want:?}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(!s.exists(), "{source}: no socket without a source");
    }
}

/// `--list-devices` runs anywhere: with no /dev/video* nodes it says so and succeeds, and it
/// says what PipeWire has (its video nodes, or why it cannot tell).
#[test]
fn list_devices_without_devices_says_so() {
    let has_nodes = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("video"));
    let o = producer(&["--list-devices"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", err_of(&o));
    if has_nodes {
        assert!(out.contains("/dev/video"), "{out}");
    } else {
        assert_eq!(
            out.lines().next(),
            Some("no V4L2 devices (no /dev/video* nodes)"),
            "{out}"
        );
    }
    assert!(out.lines().any(|l| l.starts_with("PipeWire")), "{out}");
    // And what it does about explicit sync, with the DRM devices' answers (none here).
    let sync = out
        .lines()
        .find(|l| l.starts_with("PipeWire: explicit sync (SPA_META_SyncTimeline) is not offered"))
        .unwrap_or_else(|| panic!("{out}"));
    if !std::path::Path::new("/dev/dri").exists() {
        assert!(
            sync.ends_with("no DRM device (/dev/dri) to make timeline syncobjs: implicit sync"),
            "{sync}"
        );
    }
}
