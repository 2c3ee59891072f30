//! V4L2 capture against vivid (the kernel's virtual webcam) in the real-kernel lane: 1080p in
//! each I/O mode (`expbuf`, `dmabuf`, `mmap`), NV12 and YUYV, every frame verified by the
//! consumer; the colour bars vivid draws come out as the right colours (the consumer's GPU
//! conversion and a CPU conversion of the raw bytes); and the errors: device busy, a size the
//! device cannot produce, unplug mid-stream (vivid's "Disconnect" control).
//!
//! `ci/vm-guest.sh` loads vivid with three instances of one capture node each: instance 0 serves
//! the capture tests, instance 1 is unplugged by `unplug_mid_stream_ends_cleanly` (a vivid
//! instance stays disconnected until the module is reloaded), instance 2 is multi-planar
//! (`V4L2_CAP_VIDEO_CAPTURE_MPLANE`: NV12M and the other one-buffer-per-plane formats). On a host without vivid each test
//! prints `SKIP`; inside the lane (`DMABUF_REQUIRE_HW=1`) that is a failure.

mod common;
use common::*;
use dmabuf_core::testing::{fd_count_of, fd_targets_of, skip_or_fail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;
use v4l2r::ioctl::{self, Capability, CtrlId, QueryCtrlFlags};

/// vivid's single-planar capture nodes, by instance (bus_info `platform:vivid-00N`).
fn vivid_nodes() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/dev").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("video") {
            continue;
        }
        let Ok(f) = File::options().read(true).write(true).open(e.path()) else {
            continue;
        };
        let Ok(cap) = ioctl::querycap::<Capability>(&f) else {
            continue;
        };
        if cap.driver == "vivid"
            && cap
                .device_caps()
                .contains(ioctl::Capabilities::VIDEO_CAPTURE)
        {
            out.push((cap.bus_info, e.path()));
        }
    }
    out.sort();
    out
}

/// vivid's multi-planar capture node, or skip (fail in the lane).
fn vivid_mplane(test: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir("/dev").into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with("video") {
            continue;
        }
        let Ok(f) = File::options().read(true).write(true).open(e.path()) else {
            continue;
        };
        let Ok(cap) = ioctl::querycap::<Capability>(&f) else {
            continue;
        };
        if cap.driver == "vivid"
            && cap
                .device_caps()
                .contains(ioctl::Capabilities::VIDEO_CAPTURE_MPLANE)
        {
            return Some(e.path());
        }
    }
    skip_or_fail(
        test,
        "no vivid multi-planar capture node (the lane loads vivid multiplanar=1,1,2)",
    );
    None
}

/// vivid instance `i`'s capture node, or skip (fail in the lane).
fn vivid(test: &str, i: usize) -> Option<PathBuf> {
    let nodes = vivid_nodes();
    let n = nodes.get(i).map(|(_, p)| p.clone());
    if n.is_none() {
        skip_or_fail(
            test,
            format!(
                "no vivid capture node for instance {i} (found {nodes:?}; the lane loads vivid n_devs=3 node_types=0x1,0x1,0x1 multiplanar=1,1,2)"
            ),
        );
    }
    n
}

fn have(test: &str, device: &str) -> bool {
    let ok = Path::new(device).exists();
    if !ok {
        skip_or_fail(test, format!("{device} does not exist"));
    }
    ok
}

/// Capture `format` at 1080p with `io` (+ producer `extra` args) and run two consumers in a row,
/// each verifying every frame; check what the stats say and that the producer's fds return to
/// where they were once a consumer leaves (every buffer released and requeued, nothing leaked).
fn capture(test: &str, node: &Path, io: &str, format: &str, extra: &[&str], alloc: &str) {
    let sock = socket(&format!("v4l2-{io}-{format}"));
    let source = format!("v4l2:{}", node.display());
    let mut args = vec![
        "--source",
        &source,
        "--v4l2-io",
        io,
        "--size",
        "1920x1080",
        "--format",
        format,
        "--stall-timeout",
        "30",
    ];
    args.extend_from_slice(extra);
    let mut p = Producer::start(&sock, &args);
    std::thread::sleep(Duration::from_millis(300));
    let base = fd_count_of(p.pid());
    let base_fds = fd_targets_of(p.pid());
    let frames = 12;
    for round in 0..2 {
        let s = consume(
            &sock,
            &format!("{io}-{format}-{round}"),
            &[
                "--frames",
                &frames.to_string(),
                "--verify",
                "--import",
                "cpu-map",
            ],
            Duration::from_secs(240),
        );
        assert_eq!(s["alloc"], alloc, "{test}: {s}");
        assert_eq!(
            s["memory"],
            if alloc == "memfd" { "memfd" } else { "dma-buf" },
            "{s}"
        );
        // The multi-buffer V4L2 formats carry the DRM format of the same planes.
        let carried = match format {
            "NV12M" => "NV12",
            "YUV420M" => "I420",
            "NV16M" => "NV16",
            "YUV422M" => "YUV422",
            "YUV444M" => "YUV444",
            f => f,
        };
        assert_eq!(s["pixel_format"], carried, "{s}");
        assert_eq!(
            (s["width"].as_u64(), s["height"].as_u64()),
            (Some(1920), Some(1080)),
            "{s}"
        );
        assert_eq!(s["frames"], frames, "{test}: {s}");
        assert_eq!(s["verified"], frames, "{test}: every frame checked: {s}");
        assert_eq!(s["mismatches"], 0, "{test}: {s}");
        assert!(p.alive(), "{test}: producer died");
        assert!(
            eventually(Duration::from_secs(10), || fd_count_of(p.pid()) == base),
            "{test}: producer fds {} != {base} after a consumer left\nbefore: {base_fds:?}\nafter:  {:?}",
            fd_count_of(p.pid()),
            fd_targets_of(p.pid())
        );
    }
    drop(p);
}

#[test]
fn vivid_expbuf_1080p_verified() {
    let t = "vivid_expbuf_1080p_verified";
    let Some(node) = vivid(t, 0) else { return };
    capture(t, &node, "expbuf", "NV12", &[], "v4l2");
    capture(t, &node, "expbuf", "YUYV", &[], "v4l2");
}

#[test]
fn vivid_dmabuf_1080p_verified() {
    let t = "vivid_dmabuf_1080p_verified";
    let Some(node) = vivid(t, 0) else { return };
    if !have(t, "/dev/dma_heap/system") || !have(t, "/dev/udmabuf") {
        return;
    }
    capture(
        t,
        &node,
        "dmabuf",
        "NV12",
        &["--alloc", "dma-heap"],
        "dma-heap",
    );
    capture(
        t,
        &node,
        "dmabuf",
        "YUYV",
        &["--alloc", "udmabuf"],
        "udmabuf",
    );
}

#[test]
fn vivid_mmap_1080p_verified() {
    let t = "vivid_mmap_1080p_verified";
    let Some(node) = vivid(t, 0) else { return };
    capture(t, &node, "mmap", "NV12", &["--alloc", "memfd"], "memfd");
}

#[test]
fn vivid_auto_picks_expbuf() {
    let t = "vivid_auto_picks_expbuf";
    let Some(node) = vivid(t, 0) else { return };
    let sock = socket("v4l2-auto");
    let source = format!("v4l2:{}", node.display());
    let p = Producer::start(&sock, &["--source", &source, "--size", "640x480"]);
    let s = consume(
        &sock,
        "auto",
        &["--frames", "5", "--verify", "--import", "cpu-map"],
        Duration::from_secs(120),
    );
    assert_eq!(s["alloc"], "v4l2", "{s}");
    assert_eq!(s["verified"], 5, "{s}");
    drop(p);
}

/// vivid's default pattern is 75% colour bars, eight bars across the frame: white, yellow,
/// cyan, green, magenta, red, blue, black, each 191 (75% of 255) where lit.
const BARS: [(&str, [u8; 3]); 8] = [
    ("white", [191, 191, 191]),
    ("yellow", [191, 191, 0]),
    ("cyan", [0, 191, 191]),
    ("green", [0, 191, 0]),
    ("magenta", [191, 0, 191]),
    ("red", [191, 0, 0]),
    ("blue", [0, 0, 191]),
    ("black", [0, 0, 0]),
];
const TOLERANCE: i32 = 14;

fn check_bars(what: &str, width: u32, height: u32, rgb_at: impl Fn(u32, u32) -> [u8; 3]) {
    // Well below vivid's text overlay (top rows), in the middle of each bar.
    let y = height * 2 / 3;
    for (i, (name, want)) in BARS.iter().enumerate() {
        let x = (2 * i as u32 + 1) * width / 16;
        let got = rgb_at(x, y);
        let ok = got
            .iter()
            .zip(want)
            .all(|(&g, &w)| (i32::from(g) - i32::from(w)).abs() <= TOLERANCE);
        assert!(
            ok,
            "{what}: bar {i} ({name}) at ({x},{y}) is {got:?}, expected {want:?} ± {TOLERANCE}"
        );
    }
}

/// BT.601 limited range, what vivid's webcam input uses for YUV (sRGB colorspace).
fn yuv601_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = f64::from(y) - 16.0;
    let d = f64::from(u) - 128.0;
    let e = f64::from(v) - 128.0;
    let k = 255.0 / 219.0;
    let kc = 255.0 / 224.0;
    let r = k * c + kc * 1.402 * e;
    let g = k * c - kc * (0.344136 * d + 0.714136 * e);
    let b = k * c + kc * 1.772 * d;
    [r, g, b].map(|v| v.round().clamp(0.0, 255.0) as u8)
}

/// YUYV converted correctly: vivid's colour bars, captured as YUYV at 1080p, come out with the
/// right colours both from the consumer's GPU conversion (a Vulkan compute shader over the
/// imported dma-buf, written as a PNG snapshot) and from a CPU conversion of the raw bytes the
/// consumer received (`--dump-raw`). NV12 is checked the same way through the GPU.
#[test]
fn vivid_colour_bars_convert_correctly() {
    let t = "vivid_colour_bars_convert_correctly";
    let Some(node) = vivid(t, 0) else { return };
    let source = format!("v4l2:{}", node.display());
    for format in ["YUYV", "NV12"] {
        let sock = socket(&format!("v4l2-bars-{format}"));
        let p = Producer::start(
            &sock,
            &[
                "--source",
                &source,
                "--v4l2-io",
                "expbuf",
                "--size",
                "1920x1080",
                "--format",
                format,
                "--stall-timeout",
                "60",
            ],
        );
        // GPU: the consumer imports the dma-buf into Vulkan and converts it to RGBA.
        let dir = sock.with_extension(format!("{format}-snapshots"));
        let _ = std::fs::remove_dir_all(&dir);
        let s = consume(
            &sock,
            &format!("bars-gpu-{format}"),
            &[
                "--frames",
                "3",
                "--verify",
                "--snapshot-every",
                "1",
                "--snapshot-dir",
                dir.to_str().unwrap(),
            ],
            Duration::from_secs(300),
        );
        assert_eq!(s["mismatches"], 0, "{s}");
        assert_ne!(s["import_path"], "cpu-map", "{s}");
        let snaps = s["snapshots"].as_array().expect("snapshots listed");
        let last = snaps.last().and_then(|v| v.as_str()).expect("a snapshot");
        let dec = png::Decoder::new(std::io::BufReader::new(File::open(last).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut img).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
        let ch = info.color_type.samples();
        let stride = info.line_size;
        check_bars(
            &format!("{format} GPU conversion ({last})"),
            1920,
            1080,
            |x, y| {
                let o = y as usize * stride + x as usize * ch;
                [img[o], img[o + 1], img[o + 2]]
            },
        );
        let _ = std::fs::remove_dir_all(&dir);

        if format == "YUYV" {
            // CPU: the bytes as received, converted here.
            let raw = sock.with_extension("yuyv.raw");
            let out = run_consumer(
                &sock,
                &[
                    "--frames",
                    "2",
                    "--verify",
                    "--import",
                    "cpu-map",
                    "--dump-raw",
                    raw.to_str().unwrap(),
                ],
                Duration::from_secs(120),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let data = std::fs::read(&raw).unwrap();
            let _ = std::fs::remove_file(&raw);
            let frame = 1920 * 2 * 1080;
            assert_eq!(data.len(), 2 * frame, "two packed YUYV frames");
            let last = &data[frame..];
            check_bars("YUYV bytes, CPU BT.601 conversion", 1920, 1080, |x, y| {
                let o = (y as usize * 1920 + (x as usize & !1)) * 2;
                let yv = last[o + (x as usize & 1) * 2];
                yuv601_to_rgb(yv, last[o + 1], last[o + 3])
            });
        }
        drop(p);
    }
}

#[test]
fn busy_device_is_named() {
    let t = "busy_device_is_named";
    let Some(node) = vivid(t, 0) else { return };
    let source = format!("v4l2:{}", node.display());
    let first = socket("v4l2-busy-1");
    let mut p = Producer::start(&first, &["--source", &source, "--size", "640x480"]);
    let second = socket("v4l2-busy-2");
    let out = std::process::Command::new(producer_bin())
        .args(["--socket", second.to_str().unwrap(), "--source", &source])
        .args(["--size", "640x480"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("is busy"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(!second.exists(), "the second producer must not listen");
    assert!(p.alive(), "the first producer keeps running");
    // And the first still serves.
    let s = consume(
        &first,
        "busy",
        &["--frames", "3", "--verify", "--import", "cpu-map"],
        Duration::from_secs(120),
    );
    assert_eq!(s["verified"], 3, "{s}");
}

#[test]
fn impossible_formats_are_named() {
    let t = "impossible_formats_are_named";
    let Some(node) = vivid(t, 0) else { return };
    let source = format!("v4l2:{}", node.display());
    for (args, want) in [
        (
            vec!["--size", "1000x1000", "--format", "NV12"],
            "cannot produce 1000x1000 NV12; the nearest it offers is",
        ),
        (
            vec!["--format", "XRGB8888"],
            "the V4L2 source captures NV12, YUYV, I420, NV16",
        ),
    ] {
        let sock = socket("v4l2-bad-format");
        let out = std::process::Command::new(producer_bin())
            .args(["--socket", sock.to_str().unwrap(), "--source", &source])
            .args(&args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e:?} lacks {want:?}");
        if args.contains(&"XRGB8888") {
            assert!(e.contains("not XRGB8888"), "{e}");
        }
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// Press vivid's "Disconnect" button control on `node` (it unregisters the instance's nodes:
/// every later ioctl fails with ENODEV, as when a USB webcam is pulled).
fn unplug(node: &Path) {
    set_vivid_control(node, "Disconnect", 1);
}

#[test]
fn unplug_mid_stream_ends_cleanly() {
    let t = "unplug_mid_stream_ends_cleanly";
    let Some(node) = vivid(t, 1) else { return };
    let source = format!("v4l2:{}", node.display());
    let sock = socket("v4l2-unplug");
    let p = Producer::start(
        &sock,
        &[
            "--source",
            &source,
            "--v4l2-io",
            "expbuf",
            "--size",
            "640x480",
        ],
    );
    let json = sock.with_extension("json");
    let mut c = std::process::Command::new(consumer_bin())
        .args(["--socket", sock.to_str().unwrap(), "--quiet", "--verify"])
        .args([
            "--import",
            "cpu-map",
            "--stats-json",
            json.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let frames flow (vivid under TCG on a loaded machine takes seconds to start), then pull
    // the plug.
    std::thread::sleep(Duration::from_secs(12));
    assert!(c.try_wait().unwrap().is_none(), "consumer ended early");
    unplug(&node);
    assert!(
        eventually(Duration::from_secs(30), || c.try_wait().unwrap().is_some()),
        "consumer did not end after the unplug"
    );
    let out = c.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a clean end, not an error: {e}");
    assert!(
        e.contains(&format!("V4L2 device {} was disconnected", node.display())),
        "the consumer says why: {e}"
    );
    let s = read_json(&json);
    assert!(s["frames"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["mismatches"], 0, "{s}");
    assert!(s["error"].is_null(), "{s}");
    // The producer's stream ended: it says why and exits cleanly.
    let (st, err) = p.wait(Duration::from_secs(30));
    assert!(st.success(), "producer: {err}");
    assert!(err.contains("was disconnected"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--list-devices` finds vivid's capture node with its formats, sizes and rates.
#[test]
fn list_devices_shows_vivid() {
    let t = "list_devices_shows_vivid";
    let Some(node) = vivid(t, 0) else { return };
    let out = std::process::Command::new(producer_bin())
        .arg("--list-devices")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = text
        .split(&format!("{}: ", node.display()))
        .nth(1)
        .unwrap_or_else(|| panic!("{} not listed:\n{text}", node.display()));
    for want in ["vivid", "NV12", "YUYV", "1920x1080", " fps"] {
        assert!(ours.contains(want), "{want:?} missing from:\n{text}");
    }
    // Shown in the lane's log for whoever reads it.
    eprintln!("{text}");
}

/// Set vivid's control `name` on `node` to `value` (a menu item, or 1 to press a button).
fn set_vivid_control(node: &Path, name: &str, value: i32) {
    let f = File::options().read(true).write(true).open(node).unwrap();
    let mut id = 0u32;
    loop {
        let q: v4l2r::bindings::v4l2_queryctrl =
            ioctl::queryctrl(&f, CtrlId::new(id).unwrap(), QueryCtrlFlags::NEXT)
                .unwrap_or_else(|e| panic!("vivid has no {name:?} control: {e}"));
        let n = String::from_utf8_lossy(&q.name);
        if n.trim_end_matches('\0') == name {
            ioctl::s_ctrl(&f, q.id, value).unwrap_or_else(|e| panic!("setting {name}: {e}"));
            return;
        }
        id = q.id;
    }
}

/// Issue 11 §4: the colorimetry the V4L2 driver reports reaches the consumer (mapped to H.273
/// with the kernel's defaults), not a fixed BT.601: vivid's default sRGB, then its "Colorspace"
/// control set to Rec. 709 and to BT.2020.
#[test]
fn vivid_colorimetry_is_carried() {
    let t = "vivid_colorimetry_is_carried";
    let Some(node) = vivid(t, 0) else { return };
    let source = format!("v4l2:{}", node.display());
    // vivid's "Colorspace" menu: 0 SMPTE 170M, 1 Rec. 709, 2 sRGB (default), 3 opRGB, 4 BT.2020.
    for (menu, matrix, primaries, transfer) in [
        (2, "SMPTE 170M (BT.601)", "BT.709", "sRGB"),
        (1, "BT.709", "BT.709", "BT.709"),
        (4, "BT.2020 NCL", "BT.2020", "BT.709"),
    ] {
        set_vivid_control(&node, "Colorspace", menu);
        let sock = socket(&format!("v4l2-colour-{menu}"));
        let p = Producer::start(
            &sock,
            &[
                "--source",
                &source,
                "--v4l2-io",
                "expbuf",
                "--size",
                "640x480",
                "--format",
                "NV12",
                "--stall-timeout",
                "60",
            ],
        );
        let s = consume(
            &sock,
            &format!("colour-{menu}"),
            &["--frames", "3", "--import", "cpu-map"],
            Duration::from_secs(120),
        );
        drop(p);
        let c = &s["colorimetry"];
        assert_eq!(c["matrix_name"], matrix, "menu {menu}: {s}");
        assert_eq!(c["primaries_name"], primaries, "menu {menu}: {s}");
        assert_eq!(c["transfer_name"], transfer, "menu {menu}: {s}");
        assert_eq!(c["range"], "limited", "menu {menu}: {s}");
    }
    set_vivid_control(&node, "Colorspace", 2);
}

/// Multi-planar capture (SoC cameras, ISPs): formats whose planes are separate buffers (NV12M:
/// two dma-bufs per frame, sent as one fd per plane) and single-buffer formats on the same
/// queue, in expbuf, dmabuf (one pool dma-buf per plane) and mmap modes, every frame verified.
#[test]
fn vivid_multiplanar_capture_verified() {
    let t = "vivid_multiplanar_capture_verified";
    let Some(node) = vivid_mplane(t) else { return };
    capture(t, &node, "expbuf", "NV12M", &[], "v4l2");
    capture(t, &node, "expbuf", "YUV420M", &[], "v4l2");
    capture(t, &node, "expbuf", "NV12", &[], "v4l2");
    capture(t, &node, "mmap", "NV12M", &["--alloc", "memfd"], "memfd");
    if have(t, "/dev/dma_heap/system") && have(t, "/dev/udmabuf") {
        capture(
            t,
            &node,
            "dmabuf",
            "NV12M",
            &["--alloc", "dma-heap"],
            "dma-heap",
        );
        capture(
            t,
            &node,
            "dmabuf",
            "YUV422M",
            &["--alloc", "udmabuf"],
            "udmabuf",
        );
    }
}

/// NV12M's two dma-bufs per frame imported into Vulkan (lavapipe) by every dma-buf path: each
/// plane's fd as its own buffer, or as its own image; every frame's checksum by the GPU.
#[test]
fn vivid_multiplanar_vulkan_import_verified() {
    let t = "vivid_multiplanar_vulkan_import_verified";
    let Some(node) = vivid_mplane(t) else { return };
    let sock = socket("v4l2-mplane-vk");
    let source = format!("v4l2:{}", node.display());
    let _p = Producer::start(
        &sock,
        &[
            "--source",
            &source,
            "--v4l2-io",
            "expbuf",
            "--format",
            "NV12M",
            "--size",
            "640x480",
        ],
    );
    for import in ["dmabuf-buffer", "dmabuf-image"] {
        let s = consume(
            &sock,
            import,
            &["--frames", "8", "--verify", "--import", import],
            Duration::from_secs(240),
        );
        assert_eq!(s["import_path"], import, "{t}: {s}");
        assert_eq!(s["gpu_verified"], true, "{t}: {s}");
        assert_eq!(s["verified"], 8, "{t}: {s}");
        assert_eq!(s["mismatches"], 0, "{t}: {s}");
    }
}
