//! The whole pipeline over memfd with two real processes: every frame verified on the CPU
//! (`--import cpu-map`; the GPU paths are in vulkan.rs), for every format at 1080p and at an
//! odd size.

mod common;
use common::*;
use std::time::Duration;

fn verify(format: &str, size: &str, frames: u32) {
    let name = format!("{format}-{size}");
    let sock = socket(&name);
    let n = frames.to_string();
    let producer = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--frames",
            &n,
            "--no-pace",
            "--format",
            format,
            "--size",
            size,
        ],
    );
    let s = consume(
        &sock,
        &name,
        &["--verify", "--import", "cpu-map"],
        Duration::from_secs(240),
    );
    let (w, h) = size.split_once('x').unwrap();
    assert_eq!(s["frames"], frames, "{name}: {s}");
    assert_eq!(s["verified"], frames, "{name}: {s}");
    assert_eq!(s["mismatches"], 0, "{name}: {s}");
    assert_eq!(s["dropped"], 0, "{name}: {s}");
    assert_eq!(s["alloc"], "memfd");
    assert_eq!(s["import_path"], "cpu-map");
    assert_eq!(s["pixel_format"], format);
    assert_eq!(s["width"], w.parse::<u32>().unwrap());
    assert_eq!(s["height"], h.parse::<u32>().unwrap());
    assert!(s["cpu_ns"].as_u64().unwrap() > 0);
    assert!(s["error"].is_null());
    let (st, err) = producer.wait(Duration::from_secs(30));
    assert!(st.success(), "{name}: producer failed:\n{err}");
    assert!(err.contains("allocator: memfd"), "{err}");
}

#[test]
fn nv12_1080p_600_frames() {
    verify("NV12", "1920x1080", 600);
}

#[test]
fn i420_1080p_600_frames() {
    verify("I420", "1920x1080", 600);
}

#[test]
fn xrgb8888_1080p_600_frames() {
    verify("XRGB8888", "1920x1080", 600);
}

#[test]
fn nv12_odd_size_600_frames() {
    verify("NV12", "1279x719", 600);
}

#[test]
fn i420_odd_size_600_frames() {
    verify("I420", "1279x719", 600);
}

#[test]
fn xrgb8888_odd_size_600_frames() {
    verify("XRGB8888", "1279x719", 600);
}

#[test]
fn yuyv_and_argb_odd_sizes() {
    verify("YUYV", "1279x719", 60);
    verify("ARGB8888", "641x3", 60);
    verify("I420", "1x1", 60);
}

#[test]
fn paced_stream_keeps_its_rate_and_reports_latency() {
    let sock = socket("paced");
    let _p = Producer::start(
        &sock,
        &["--alloc", "memfd", "--fps", "60", "--size", "640x360"],
    );
    let t = std::time::Instant::now();
    let s = consume(&sock, "paced", &["--frames", "60"], Duration::from_secs(30));
    // 60 frames at 60 fps take about a second; never a burst.
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(s["frames"], 60);
    assert!(s["latency_us_p50"].as_f64().unwrap() > 0.0);
}
