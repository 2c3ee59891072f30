//! `dmabufpipesink` renegotiates when its caps change mid-stream: the consumer gets the new
//! format and new buffers, and verifies every frame on both sides of the change.

mod common;
use common::*;
use gst::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn new_caps_renegotiate_every_consumer() {
    let dir = scratch("sink-renegotiate");
    let sock = dir.join("reneg.sock");
    gst::init().unwrap();
    gst::Registry::get().scan_path(plugin_dir());
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball num-buffers=60 ! \
         capsfilter name=cf caps=video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! \
         dmabufpipesink name=sink socket={} wait-consumers=1",
        sock.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    {
        let seen = seen.clone();
        let pad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            seen.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let stats_path = dir.join("c.json");
    let consumer = Proc::spawn({
        let mut c = std::process::Command::new(bin("consumer"));
        c.arg("--socket")
            .arg(&sock)
            .args(["--verify", "--import", "cpu-map", "--stats-json"])
            .arg(&stats_path);
        c
    });
    // After 20 frames, a new size: videotestsrc renegotiates, then the sink.
    let t0 = std::time::Instant::now();
    while seen.load(Ordering::Relaxed) < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "frames did not flow"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let cf = pipeline.by_name("cf").unwrap();
    cf.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", "NV12")
            .field("width", 640i32)
            .field("height", 360i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .build(),
    );
    let bus = pipeline.bus().unwrap();
    let mut ended = false;
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                ended = true;
                break;
            }
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(ended, "no EOS");
    let (ok, out) = consumer.finish(Duration::from_secs(60));
    assert!(ok, "{out}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap()).unwrap();
    assert_eq!(s["renegotiations"], 1, "{s}");
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(640), Some(360)),
        "{s}"
    );
    assert_eq!(s["mismatches"], 0, "{s}");
    assert_eq!(s["verified"], s["frames"], "{s}");
    assert!(s["frames"].as_u64().unwrap() >= 50, "{s}");
}
