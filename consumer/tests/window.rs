//! `--window` under Xvfb with lavapipe: a frame shown in a real X11 window through a Vulkan
//! swapchain, a screenshot of the screen (FFmpeg's x11grab), and its pixels compared with the
//! GPU's RGBA conversion of the same frame (the PNG snapshot) and with the pattern's colours.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Xvfb(Child, String);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(test: &str, what: &str) -> bool {
    if std::env::var("DMABUF_REQUIRE_VULKAN").is_ok_and(|v| v == "1") {
        panic!("{test}: {what} missing and DMABUF_REQUIRE_VULKAN=1");
    }
    dmabuf_core::testing::skip(test, what);
    false
}

fn start_xvfb() -> Option<Xvfb> {
    for n in 90..120 {
        if std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists() {
            continue;
        }
        let display = format!(":{n}");
        let child = Command::new("Xvfb")
            .args([&display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let x = Xvfb(child, display);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                return Some(x);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    None
}

fn png_rgba(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let px = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks_exact(3)
            .flat_map(|c| [c[0], c[1], c[2], 255])
            .collect(),
        t => panic!("unexpected PNG colour type {t:?}"),
    };
    (info.width, info.height, px)
}

#[test]
fn window_under_xvfb_shows_the_frame() {
    let test = "window_under_xvfb_shows_the_frame";
    let Some(x) = start_xvfb() else {
        require(test, "Xvfb (package xvfb)");
        return;
    };
    let (w, h) = (640u32, 360u32);
    let sock = socket("window");
    let _p = Producer::start(
        &sock,
        &[
            "--alloc", "memfd", "--frames", "1", "--size", "640x360", "--format", "NV12",
        ],
    );
    let dir = std::env::temp_dir().join(format!("window-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut consumer = Command::new(consumer_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "-q",
            "--window",
            "--window-hold",
            "6",
        ])
        .args([
            "--snapshot-every",
            "1",
            "--snapshot-dir",
            dir.to_str().unwrap(),
        ])
        .env("DISPLAY", &x.1)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The snapshot is written right after the frame is presented.
    let snap = dir.join("frame-000000.png");
    let t = Instant::now();
    while !snap.exists() {
        if let Some(st) = consumer.try_wait().unwrap() {
            let out = consumer.wait_with_output().unwrap();
            panic!(
                "consumer exited {st}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no frame shown");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    let shot = dir.join("screen.png");
    let grab = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "x11grab",
            "-video_size",
            "640x360",
        ])
        .args(["-i", &format!("{}+0,0", x.1), "-frames:v", "1"])
        .arg(&shot)
        .output()
        .expect("ffmpeg (x11grab) for the screenshot");
    assert!(
        grab.status.success(),
        "{}",
        String::from_utf8_lossy(&grab.stderr)
    );
    let out = consumer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (sw, sh, screen) = png_rgba(&shot);
    let (fw, fh, frame) = png_rgba(&snap);
    assert_eq!((sw, sh, fw, fh), (w, h, w, h));
    let mut worst = 0u8;
    for (a, b) in screen.chunks_exact(4).zip(frame.chunks_exact(4)) {
        for c in 0..3 {
            worst = worst.max(a[c].abs_diff(b[c]));
        }
    }
    assert!(worst <= 2, "screen and frame differ by up to {worst}");
    // And it is the pattern: 75 % red in the sixth bar, near the top.
    let at = |x: u32, y: u32| &screen[((y * w + x) * 4) as usize..][..3];
    let red = at(11 * w / 16, h / 8);
    assert!(
        red[0].abs_diff(191) <= 4 && red[1] <= 4 && red[2] <= 4,
        "{red:?}"
    );
}

#[test]
fn window_without_a_display_is_a_clear_error() {
    let sock = socket("window-nodisplay");
    let _p = Producer::start(
        &sock,
        &["--alloc", "memfd", "--frames", "1", "--size", "64x64"],
    );
    let out = Command::new(consumer_bin())
        .args(["--socket", sock.to_str().unwrap(), "-q", "--window"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("DISPLAY is not set") && e.contains("Xvfb"),
        "{e}"
    );
}
