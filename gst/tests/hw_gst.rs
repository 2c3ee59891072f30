//! The GStreamer elements on real dma-bufs (the real-kernel lane): `dmabufpipesrc` over a
//! dma-heap producer hands downstream `GstDmaBufMemory` (checked by a pad probe on the sink
//! with `gst_is_dmabuf_memory`), byte for byte the producer's frames; `dmabufpipesink
//! alloc=dma-heap` proposes dma-buf buffers that videotestsrc draws into, verified by the Rust
//! consumer. Needs `/dev/dma_heap/system`; on a host without it the test prints `SKIP`.

mod common;
use common::*;
use dmabuf_core::testing::skip_or_fail;
use gst::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn the_elements_carry_dma_bufs() {
    let t = "the_elements_carry_dma_bufs";
    if !std::path::Path::new("/dev/dma_heap/system").exists() {
        skip_or_fail(t, "/dev/dma_heap/system does not exist");
        return;
    }
    let dir = scratch("hw");

    // Source: dma-heap frames from the producer arrive downstream as GstDmaBufMemory.
    let sock = dir.join("src.sock");
    let n = 10u64;
    let raw_ref = dir.join("ref.raw");
    {
        let _p = producer(
            &sock,
            &[
                "--alloc",
                "dma-heap",
                "--format",
                "NV12",
                "--size",
                "640x360",
                "--frames",
                &n.to_string(),
            ],
        );
        let s = consumer(
            &sock,
            &[
                "--import",
                "cpu-map",
                "--verify",
                "--dump-raw",
                raw_ref.to_str().unwrap(),
            ],
            LIMIT,
        );
        assert_eq!(s["verified"], n, "{s}");
    }
    let _p = producer(
        &sock,
        &[
            "--alloc",
            "dma-heap",
            "--format",
            "NV12",
            "--size",
            "640x360",
            "--frames",
            &n.to_string(),
        ],
    );
    gst::init().unwrap();
    gst::Registry::get().scan_path(plugin_dir());
    let pipeline = gst::parse::launch(&format!(
        "dmabufpipesrc socket={} ! fakesink name=sink sync=false",
        sock.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let dmabuf = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sinkpad = pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap();
    // fakesink takes no GstVideoMeta (the source would copy into the default layout for it):
    // answer the allocation query as a display or GPU sink does.
    sinkpad.add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, |_, info| {
        if let Some(q) = info.query_mut() {
            if let gst::QueryViewMut::Allocation(a) = q.view_mut() {
                a.add_allocation_meta::<gst_video::VideoMeta>(None);
            }
        }
        gst::PadProbeReturn::Ok
    });
    {
        let (dmabuf, other, frames) = (dmabuf.clone(), other.clone(), frames.clone());
        sinkpad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                let all = (0..buffer.n_memory()).all(|i| {
                    buffer
                        .peek_memory(i)
                        .downcast_memory_ref::<gst_allocators::DmaBufMemory>()
                        .is_some()
                });
                if all { &dmabuf } else { &other }.fetch_add(1, Ordering::Relaxed);
                // The pixels, packed, read through GStreamer's mapping of the dma-buf.
                let Some(vmeta) = buffer.meta::<gst_video::VideoMeta>() else {
                    other.fetch_add(1, Ordering::Relaxed);
                    return gst::PadProbeReturn::Ok;
                };
                let map = buffer.map_readable().unwrap();
                let mut out = frames.lock().unwrap();
                for (i, rows, row_bytes) in [(0usize, 360usize, 640usize), (1, 180, 640)] {
                    let (off, stride) = (vmeta.offset()[i], vmeta.stride()[i] as usize);
                    for r in 0..rows {
                        out.extend_from_slice(&map[off + r * stride..][..row_bytes]);
                    }
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let mut ended = false;
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                ended = true;
                break;
            }
            gst::MessageView::Error(e) => panic!("pipeline error: {} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(ended, "no EOS");
    assert_eq!(
        dmabuf.load(Ordering::Relaxed),
        n,
        "buffers downstream as GstDmaBufMemory"
    );
    assert_eq!(other.load(Ordering::Relaxed), 0);
    assert!(
        *frames.lock().unwrap() == std::fs::read(&raw_ref).unwrap(),
        "pixels differ from the producer's"
    );

    // Sink: videotestsrc draws into dma-heap buffers; the consumer verifies every frame.
    let sock = dir.join("sink.sock");
    let gst = Proc::spawn(gst_launch(&[
        "videotestsrc",
        "pattern=ball",
        "num-buffers=20",
        "!",
        "video/x-raw,format=NV12,width=320,height=240,framerate=30/1",
        "!",
        "dmabufpipesink",
        &format!("socket={}", sock.display()),
        "alloc=dma-heap",
        "wait-consumers=1",
    ]));
    assert!(wait_for_path(&sock, Duration::from_secs(60)));
    let s = consumer(&sock, &["--verify", "--import", "cpu-map"], LIMIT);
    let (ok, out) = gst.finish(LIMIT);
    assert!(ok, "{out}");
    assert_eq!(s["verified"], 20, "{s}");
    assert_eq!(s["memory"], "dma-buf", "{s}");
    assert_eq!(sink_stats(&out), Some((20, 0)), "{out}");
}
