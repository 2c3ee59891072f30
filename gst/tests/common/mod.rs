//! Running the real `gst-launch-1.0` with this crate's plugin, and the workspace's producer and
//! consumer binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A directory holding only this crate's plugin (GStreamer scans every `.so` in a
/// `GST_PLUGIN_PATH` directory; target/debug has others). Refuses a plugin older than its
/// sources.
pub fn plugin_dir() -> PathBuf {
    let so = target_dir().join("libgstdmabufpipe.so");
    assert!(
        so.exists(),
        "{} is missing: cargo build -p gst-plugin-dmabufpipe",
        so.display()
    );
    let built = std::fs::metadata(&so).and_then(|m| m.modified()).unwrap();
    for dir in ["gst/src", "dmabuf-core/src"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap().flatten() {
            let changed = e.metadata().and_then(|m| m.modified()).unwrap();
            assert!(
                changed <= built,
                "{} is older than {}: cargo build -p gst-plugin-dmabufpipe",
                so.display(),
                e.path().display()
            );
        }
    }
    let dir = std::env::temp_dir().join(format!("dmabufpipe-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("libgstdmabufpipe.so");
    if !link.exists() {
        std::os::unix::fs::symlink(std::fs::canonicalize(&so).unwrap(), &link).unwrap();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: cargo build --workspace --bins",
        p.display()
    );
    p
}

/// A unique scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmabufpipe-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `gst-launch-1.0 -m ARGS…` with the plugin on the path.
pub fn gst_launch(args: &[&str]) -> Command {
    let mut c = Command::new("gst-launch-1.0");
    c.arg("-m").args(args).env("GST_PLUGIN_PATH", plugin_dir());
    c
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(mut c: Command) -> Proc {
        Proc(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
        )
    }

    /// Wait up to `limit`; the output either way.
    pub fn finish(mut self, limit: Duration) -> (bool, String) {
        let t0 = Instant::now();
        loop {
            if let Some(_st) = self.0.try_wait().unwrap() {
                let child =
                    std::mem::replace(&mut self.0, Command::new("true").spawn().expect("true"));
                let o = child.wait_with_output().unwrap();
                return (o.status.success(), text(&o));
            }
            if t0.elapsed() > limit {
                let _ = self.0.kill();
                let child =
                    std::mem::replace(&mut self.0, Command::new("true").spawn().expect("true"));
                let o = child.wait_with_output().unwrap();
                return (false, format!("TIMED OUT after {limit:?}\n{}", text(&o)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for_path(p: &Path, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Start the producer on `socket` and wait until it listens.
pub fn producer(socket: &Path, args: &[&str]) -> Proc {
    let mut c = Command::new(bin("producer"));
    c.arg("--socket")
        .arg(socket)
        .args(["--report-every", "60"])
        .args(args);
    let p = Proc::spawn(c);
    assert!(
        wait_for_path(socket, Duration::from_secs(20)),
        "producer did not listen"
    );
    p
}

/// Run the consumer to the end; its `--stats-json`.
pub fn consumer(socket: &Path, args: &[&str], limit: Duration) -> serde_json::Value {
    let stats = socket.with_extension("stats.json");
    let mut c = Command::new(bin("consumer"));
    c.arg("--socket")
        .arg(socket)
        .args(["--connect-timeout", "20", "--stats-json"])
        .arg(&stats)
        .args(args);
    let (ok, out) = Proc::spawn(c).finish(limit);
    assert!(ok, "consumer failed:\n{out}");
    serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap()
}

/// The FFmpeg CLI's raw decode of `file`.
pub fn ffmpeg_raw(file: &Path, pix_fmt: &str, frames: u32) -> Vec<u8> {
    let o = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(file)
        .args([
            "-frames:v",
            &frames.to_string(),
            "-f",
            "rawvideo",
            "-pix_fmt",
            pix_fmt,
            "-",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// Two counters of an element message gst-launch -m printed (`name, a=(guint64)N, b=…`).
fn message_counts(out: &str, name: &str, a: &str, b: &str) -> Option<(u64, u64)> {
    let line = out.lines().find(|l| l.contains(name))?;
    let num = |key: &str| -> Option<u64> {
        let at = line.find(key)? + key.len();
        // `key=(guint64)60`
        let rest = &line[at..];
        let rest = rest.split_once(')').map_or(rest, |(_, r)| r);
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((num(a)?, num(b)?))
}

/// The `dmabufpipesink-stats` message: (frames in place, frames copied).
pub fn sink_stats(out: &str) -> Option<(u64, u64)> {
    message_counts(
        out,
        "dmabufpipesink-stats",
        "frames-in-place=",
        "frames-copied=",
    )
}

/// The `dmabufpipesrc-stats` message: (frames, frames copied).
pub fn src_stats(out: &str) -> Option<(u64, u64)> {
    message_counts(out, "dmabufpipesrc-stats", " frames=", "frames-copied=")
}
