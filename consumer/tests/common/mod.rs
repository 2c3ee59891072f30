//! Running the real binaries: `consumer` is this package's; `producer` is built beside it (by
//! `cargo test --workspace`, or `cargo build --workspace` first).
#![allow(dead_code)]

pub mod pw;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn consumer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_consumer"))
}

pub fn producer_bin() -> PathBuf {
    let p = consumer_bin().with_file_name("producer");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        p.display()
    );
    // `cargo test -p consumer` does not rebuild the producer: refuse to test an old one.
    let built = std::fs::metadata(&p).and_then(|m| m.modified()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for dir in [
        "producer/src",
        "producer/src/source",
        "producer/src/source/v4l2",
        "dmabuf-core/src",
        "pipewire/src",
    ] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let changed = e.metadata().and_then(|m| m.modified()).unwrap();
            assert!(
                changed <= built,
                "{} is older than {}: run `cargo build --workspace` first",
                p.display(),
                e.path().display()
            );
        }
    }
    p
}

/// A unique socket path for one test.
pub fn socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dmabuf-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&p);
    p
}

/// A producer process that is killed when dropped.
pub struct Producer {
    pub child: Child,
    pub socket: PathBuf,
}

impl Producer {
    pub fn start(socket: &Path, args: &[&str]) -> Producer {
        let child = Command::new(producer_bin())
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn producer");
        let p = Producer {
            child,
            socket: socket.to_path_buf(),
        };
        let t = Instant::now();
        let mut p = p;
        while !socket.exists() {
            // Generous: under TCG in the real-kernel lane, with other work on the machine,
            // allocating the pool can take seconds.
            if !p.alive() || t.elapsed() > Duration::from_secs(30) {
                let _ = p.child.kill();
                let mut err = String::new();
                use std::io::Read;
                let _ = p.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("producer {args:?} did not start:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Wait for the process to exit; its stderr.
    pub fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (st, err);
            }
            assert!(
                t.elapsed() < limit,
                "producer did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the consumer to completion (bounded by `limit`).
pub fn run_consumer(socket: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(consumer_bin())
        .arg("--socket")
        .arg(socket)
        .arg("--quiet")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consumer");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "consumer still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Wait until `f()` holds, for up to `limit`.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Run the consumer with `args` plus `--stats-json` (a file named after `sock` and `tag`), assert
/// that it succeeded (showing its stderr otherwise), and return its statistics.
pub fn consume(sock: &Path, tag: &str, args: &[&str], limit: Duration) -> serde_json::Value {
    let json = sock.with_extension(format!("{tag}.json"));
    let mut all = args.to_vec();
    all.extend(["--stats-json", json.to_str().unwrap()]);
    let out = run_consumer(sock, &all, limit);
    assert!(
        out.status.success(),
        "{} {tag}: consumer failed:\n{}",
        sock.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    read_json(&json)
}

/// `ffmpeg -i FILE -f rawvideo -pix_fmt FMT -`, the reference decode.
pub fn ffmpeg_raw(file: &Path, pix_fmt: &str, frames: Option<u32>) -> Vec<u8> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-loglevel", "error", "-i"]).arg(file);
    if let Some(n) = frames {
        cmd.args(["-frames:v", &n.to_string()]);
    }
    let out = cmd
        .args(["-f", "rawvideo", "-pix_fmt", pix_fmt, "-"])
        .output()
        .expect("the ffmpeg CLI (ci/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The Welcome the tests' fake producers send: NV12 64x48, LINEAR, in sealed memfds (or as
/// `memory` says), `buffer_count` buffers at `fps` frames per second.
pub fn fake_welcome(
    memory: dmabuf_core::MemoryKind,
    buffer_count: u32,
    fps: u32,
) -> dmabuf_core::proto::wire::Welcome {
    use dmabuf_core::proto::wire::{ColorInfo, Geometry, Welcome, VERSION};
    Welcome {
        version: VERSION,
        memory,
        allocator: dmabuf_core::AllocatorKind::Memfd,
        buffer_count,
        pixel: dmabuf_core::PixelFormat::Nv12,
        width: 64,
        height: 48,
        fps_num: fps,
        fps_den: 1,
        color: ColorInfo::default(),
        modifier: dmabuf_core::format::MOD_LINEAR,
        geometry: Geometry::default(),
        device: 0,
    }
}

/// Skip (loudly) when this machine has no Vulkan device; the test command installs lavapipe,
/// so under `DMABUF_REQUIRE_VULKAN=1` (set by ci/test.sh) a missing driver is a failure.
pub fn vulkan_or_skip(test: &str) -> bool {
    let ok = std::process::Command::new("vulkaninfo")
        .arg("--summary")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("DMABUF_REQUIRE_VULKAN").is_ok_and(|v| v == "1") {
            panic!("{test}: no Vulkan device (vulkaninfo failed) and DMABUF_REQUIRE_VULKAN=1");
        }
        dmabuf_core::testing::skip(test, "no Vulkan device here");
    }
    ok
}

/// An example binary of the libraries (`cargo build --workspace --examples` builds them).
pub fn example(name: &str) -> PathBuf {
    let p = consumer_bin().with_file_name("examples").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins --examples` first",
        p.display()
    );
    p
}

/// Wait for the `publish` example and return how many frames it says it published (it skips a
/// frame when consumers hold every buffer for a second: a paced stream drops, it does not
/// catch up).
pub fn published_frames(publisher: std::process::Child) -> u64 {
    let out = publisher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "publish example: {text}");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("published ")?
                .strip_suffix(" frames")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("publish example said: {text}"))
}

/// 45 frames of H.264 (Annex B) whose size changes twice: 15 of `testsrc2` at 320x240, 15 at
/// 480x360, 15 at 320x240.
pub fn size_changing_clip() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dmabuf-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut all = Vec::new();
    for size in ["320x240", "480x360", "320x240"] {
        let seg = dir.join(format!("seg-{size}.h264"));
        let st = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={size}:rate=30"))
            .args(["-frames:v", "15", "-pix_fmt", "yuv420p", "-c:v", "libx264"])
            .args(["-bsf:v", "h264_mp4toannexb"])
            .arg(&seg)
            .status()
            .unwrap();
        assert!(st.success(), "making {size}");
        all.extend(std::fs::read(&seg).unwrap());
    }
    let out = dir.join("size-change.h264");
    std::fs::write(&out, all).unwrap();
    out
}

/// The ffmpeg CLI's decode of [`size_changing_clip`] as I420, each frame at its own size
/// (`-autoscale 0`), back to back.
pub fn size_changing_clip_decoded(clip: &Path) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(clip)
        .args([
            "-autoscale",
            "0",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), (320 * 240 * 30 + 480 * 360 * 15) * 3 / 2);
    out.stdout
}
