//! The Vulkan consumer on the host lane (lavapipe): frames imported with no CPU copy
//! (host-pointer) or copied on purpose (copy), every frame's checksum recomputed by the GPU over
//! the imported memory, PNG snapshots checked against a CPU reference conversion, nothing
//! allocated or imported per frame, and clear errors.

mod common;
use common::*;
use dmabuf_core::format::{ColorModel, FrameFormat, FrameLayout, PixelFormat};
use std::path::Path;
use std::time::Duration;

fn run(
    name: &str,
    producer_args: &[&str],
    consumer_args: &[&str],
) -> (serde_json::Value, std::process::Output) {
    let sock = socket(name);
    let mut pargs = vec!["--alloc", "memfd", "--no-pace"];
    pargs.extend_from_slice(producer_args);
    let _p = Producer::start(&sock, &pargs);
    let json = sock.with_extension("json");
    let mut cargs = vec!["--stats-json", json.to_str().unwrap()];
    cargs.extend_from_slice(consumer_args);
    let out = run_consumer(&sock, &cargs, Duration::from_secs(300));
    let s = if json.exists() {
        read_json(&json)
    } else {
        serde_json::Value::Null
    };
    (s, out)
}

fn gpu_verify(import: &str, format: &str, size: &str) {
    let name = format!("vk-{import}-{format}-{size}");
    let (s, out) = run(
        &name,
        &["--format", format, "--size", size],
        &["--frames", "60", "--verify", "--import", import],
    );
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["import_path"], import, "{s}");
    assert_eq!(s["gpu_verified"], true, "{s}");
    assert_eq!(s["frames"], 60, "{s}");
    assert_eq!(s["verified"], 60, "{s}");
    assert_eq!(s["mismatches"], 0, "{s}");
    assert_eq!(
        s["fds_after_warmup"], s["fds_at_end"],
        "{name}: fds grew: {s}"
    );
}

/// Every carried format at an odd size (chroma rounding, odd 4:2:2 macropixels, 24-bit rows
/// that are not a multiple of 4 bytes), and the common ones at 1080p.
fn sizes_and_formats() -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = PixelFormat::ALL
        .iter()
        .map(|f| (f.name(), "1279x719"))
        .collect();
    v.extend(["NV12", "I420", "XRGB8888", "P010"].map(|f| (f, "1920x1080")));
    v
}

#[test]
fn host_pointer_frames_are_verified_by_the_gpu() {
    if !vulkan_or_skip("host_pointer_frames_are_verified_by_the_gpu") {
        return;
    }
    for (f, size) in sizes_and_formats() {
        gpu_verify("host-pointer", f, size);
    }
}

#[test]
fn copied_frames_are_verified_by_the_gpu() {
    if !vulkan_or_skip("copied_frames_are_verified_by_the_gpu") {
        return;
    }
    for (f, size) in sizes_and_formats() {
        gpu_verify("copy", f, size);
    }
}

/// BT.709 limited range to RGB, the CPU reference for the GPU conversion (8-bit scale).
fn yuv_to_rgb(y: f32, u: f32, v: f32) -> [u8; 3] {
    let y = (y - 16.0) / 219.0;
    let cb = (u - 128.0) / 224.0;
    let cr = (v - 128.0) / 224.0;
    let (kr, kb) = (0.2126, 0.0722);
    let r = y + 2.0 * (1.0 - kr) * cr;
    let b = y + 2.0 * (1.0 - kb) * cb;
    let g = (y - kr * r - kb * b) / (1.0 - kr - kb);
    [r, g, b].map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8)
}

/// RGB of every pixel of the first frame of a `--dump-raw` file (tightly packed planes), read
/// by the format's description (`PixelFormat::planes` and `sampling`).
fn reference(format: &str, w: usize, h: usize, raw: &[u8]) -> Vec<[u8; 3]> {
    let pixel: PixelFormat = format.parse().unwrap();
    let layout = FrameLayout::packed(FrameFormat::linear(pixel, w as u32, h as u32)).unwrap();
    let s = pixel.sampling();
    let sample = |c: usize, x: usize, y: usize| -> f32 {
        let comp = s.components[c];
        let info = pixel.planes()[comp.plane as usize];
        let pl = layout.planes[comp.plane as usize];
        let (px, py) = (x / info.hsub as usize, y / info.vsub as usize);
        let bw = info.block_w as usize;
        let at = pl.offset as usize
            + py * pl.stride as usize
            + (px / bw) * info.block_bytes as usize
            + comp.offset as usize
            + (px % bw) * comp.step as usize;
        if s.sample_bytes == 2 {
            let word = u16::from_le_bytes([raw[at], raw[at + 1]]) >> s.shift;
            // 10-bit limited range to the 8-bit scale.
            f32::from(word) / 4.0
        } else {
            f32::from(raw[at])
        }
    };
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let v = [sample(0, x, y), sample(1, x, y), sample(2, x, y)];
            out.push(match s.model {
                ColorModel::Yuv => yuv_to_rgb(v[0], v[1], v[2]),
                ColorModel::Grey => yuv_to_rgb(v[0], 128.0, 128.0),
                ColorModel::Rgb => v.map(|c| c as u8),
            });
        }
    }
    out
}

fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgba);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn snapshots_match_a_cpu_reference_and_look_right() {
    if !vulkan_or_skip("snapshots_match_a_cpu_reference_and_look_right") {
        return;
    }
    let imports = ["host-pointer", "copy"];
    for (i, format) in PixelFormat::ALL.iter().map(|f| f.name()).enumerate() {
        let (import, size) = (imports[i % 2], ["641x361", "1280x720"][i % 2]);
        let name = format!("snap-{import}-{format}-{size}");
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let raw = dir.with_extension("raw");
        let (s, out) = run(
            &name,
            &["--format", format, "--size", size],
            &[
                "--frames",
                "1",
                "--import",
                import,
                "--snapshot-every",
                "1",
                "--snapshot-dir",
                dir.to_str().unwrap(),
                "--dump-raw",
                raw.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = dir.join("frame-000000.png");
        assert_eq!(s["snapshots"][0], png.to_str().unwrap(), "{s}");
        let (w, h, rgba) = read_png(&png);
        let (ew, eh) = size.split_once('x').unwrap();
        assert_eq!((w, h), (ew.parse().unwrap(), eh.parse().unwrap()));
        let want = reference(
            format,
            w as usize,
            h as usize,
            &std::fs::read(&raw).unwrap(),
        );
        let mut worst = 0i32;
        for (i, px) in rgba.chunks_exact(4).enumerate() {
            assert_eq!(px[3], 255);
            for c in 0..3 {
                worst = worst.max((i32::from(px[c]) - i32::from(want[i][c])).abs());
            }
        }
        assert!(
            worst <= 2,
            "{name}: GPU and CPU conversions differ by up to {worst}"
        );
        // What a person sees: 75 % bars left to right along the top, right way up.
        let bars = [
            [191, 191, 191],
            [191, 191, 0],
            [0, 191, 191],
            [0, 191, 0],
            [191, 0, 191],
            [191, 0, 0],
            [0, 0, 191],
            [0, 0, 0],
        ];
        let grey = format.parse::<PixelFormat>().unwrap().sampling().model == ColorModel::Grey;
        let y = h as usize / 8;
        for (b, &[r, g, bl]) in bars.iter().enumerate() {
            // Greyscale shows each bar's BT.709 luma.
            let l = (0.2126 * f64::from(r) + 0.7152 * f64::from(g) + 0.0722 * f64::from(bl)).round()
                as i32;
            let want = if grey { [l, l, l] } else { [r, g, bl] };
            let x = (2 * b + 1) * w as usize / 16;
            let px = &rgba[(y * w as usize + x) * 4..][..3];
            for c in 0..3 {
                assert!(
                    (i32::from(px[c]) - want[c]).abs() <= 4,
                    "{name}: bar {b} at ({x},{y}) is {px:?}, want {want:?}"
                );
            }
        }
        // The bottom quarter is a grey ramp.
        let row = (h as usize * 7 / 8) * w as usize;
        let px = &rgba[(row + w as usize / 3) * 4..][..3];
        assert!(
            px[0].abs_diff(px[1]) <= 2 && px[1].abs_diff(px[2]) <= 2,
            "{px:?}"
        );
    }
}

#[test]
fn nothing_is_allocated_or_imported_per_frame() {
    if !vulkan_or_skip("nothing_is_allocated_or_imported_per_frame") {
        return;
    }
    for import in ["host-pointer", "copy"] {
        let mut seen = Vec::new();
        for frames in ["20", "400"] {
            let (s, out) = run(
                &format!("alloc-{import}-{frames}"),
                &["--size", "640x360"],
                &["--frames", frames, "--verify", "--import", import],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(s["verified"], frames.parse::<u64>().unwrap());
            seen.push((s["vk_allocations"].clone(), s["vk_imports"].clone()));
            assert_eq!(s["fds_after_warmup"], s["fds_at_end"], "{s}");
        }
        assert_eq!(
            seen[0], seen[1],
            "{import}: allocations/imports grew with frames"
        );
        if import == "host-pointer" {
            // One import per pool buffer (4), each made once.
            assert_eq!(seen[0].1, 4, "{seen:?}");
        } else {
            assert_eq!(seen[0].1, 0, "{seen:?}");
        }
    }
}

#[test]
fn a_thousand_frames_and_a_restart_leak_nothing() {
    if !vulkan_or_skip("a_thousand_frames_and_a_restart_leak_nothing") {
        return;
    }
    let sock = socket("vk-restart");
    let mut p = Producer::start(
        &sock,
        &["--alloc", "memfd", "--no-pace", "--size", "320x240"],
    );
    std::thread::sleep(Duration::from_millis(200));
    let base = dmabuf_core::testing::fd_count_of(p.pid());
    for round in 0..2 {
        let s = consume(
            &sock,
            &format!("round{round}"),
            &["--frames", "1000", "--verify", "--import", "host-pointer"],
            Duration::from_secs(300),
        );
        assert_eq!(s["verified"], 1000);
        assert_eq!(s["fds_after_warmup"], s["fds_at_end"], "{s}");
        assert!(p.alive());
        assert!(eventually(Duration::from_secs(5), || {
            dmabuf_core::testing::fd_count_of(p.pid()) == base
        }));
    }
}

#[test]
fn impossible_choices_are_clear_errors() {
    if !vulkan_or_skip("impossible_choices_are_clear_errors") {
        return;
    }
    // lavapipe on this kernel has no VK_EXT_image_drm_format_modifier.
    let has_modifier = std::process::Command::new("vulkaninfo")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("VK_EXT_image_drm_format_modifier"))
        .unwrap_or(false);
    if !has_modifier {
        let (_, out) = run(
            "no-modifier",
            &["--size", "64x64"],
            &["--import", "dmabuf-image"],
        );
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(e.contains("lacks VK_EXT_image_drm_format_modifier"), "{e}");
    }
    // A dma-buf-only path against a memfd producer: no format in common, said by both ends.
    let (_, out) = run(
        "buffer-vs-memfd",
        &["--size", "64x64"],
        &["--import", "dmabuf-buffer"],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("cannot take NV12 64x64 in memfd"), "{e}");
    // Snapshots need the GPU.
    let (_, out) = run(
        "snap-cpu",
        &["--size", "64x64"],
        &["--import", "cpu-map", "--snapshot-every", "1"],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("needs a Vulkan import path"), "{e}");
}

#[test]
fn no_vulkan_driver_is_a_clear_error_or_a_cpu_fallback() {
    let none = "/nonexistent/icd.json";
    let sock = socket("no-driver");
    let _p = Producer::start(&sock, &["--alloc", "memfd", "--size", "64x64", "--no-pace"]);
    let out = std::process::Command::new(consumer_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "-q",
            "--import",
            "host-pointer",
            "--frames",
            "1",
        ])
        .env("VK_ICD_FILENAMES", none)
        .env("VK_DRIVER_FILES", none)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("no Vulkan driver") || e.contains("vkCreateInstance"),
        "{e}"
    );
    // auto falls back to reading frames through CPU mappings, and says so.
    let json = sock.with_extension("json");
    let out = std::process::Command::new(consumer_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "-q",
            "--frames",
            "5",
            "--verify",
            "--stats-json",
            json.to_str().unwrap(),
        ])
        .env("VK_ICD_FILENAMES", none)
        .env("VK_DRIVER_FILES", none)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(e.contains("no GPU import"), "{e}");
    let s = read_json(&json);
    assert_eq!(s["import_path"], "cpu-map");
    assert_eq!(s["verified"], 5);
}
