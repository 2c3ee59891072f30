//! The PipeWire node on real dma-bufs: a dma-heap pool offered to PipeWire (first with its DRM
//! modifier, then without), taken by GStreamer's `pipewiresrc` as `SPA_DATA_DmaBuf` blocks
//! (`GstDmaBufMemory` downstream). Needs `/dev/dma_heap/system` (the real-kernel
//! lane, `ci/vm-lane`); on a host without it the test prints `SKIP` and why.

mod common;

use common::pw::Daemon;
use common::*;
use dmabuf_core::testing::skip_or_fail;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_dma_heap_pool_reaches_pipewiresrc_as_dma_bufs() {
    let t = "a_dma_heap_pool_reaches_pipewiresrc_as_dma_bufs";
    if !Path::new("/dev/dma_heap/system").exists() {
        skip_or_fail(t, "/dev/dma_heap/system does not exist");
        return;
    }
    let daemon = Daemon::start("hw");
    let sock = socket("pw-hw");
    let producer = daemon.producer(
        &sock,
        &[
            "--alloc",
            "dma-heap",
            "--pipewire",
            "hwnode",
            "--format",
            "I420",
            "--size",
            "640x480",
            "--fps",
            "30",
        ],
    );
    assert!(
        eventually(Duration::from_secs(20), || daemon.node("hwnode").is_some()),
        "no node \"hwnode\":\n{}",
        daemon.log()
    );
    // Both offers are there: with the pool's modifier (LINEAR), then without.
    let (node, _) = daemon.node("hwnode").unwrap();
    let offers = node["info"]["params"]["EnumFormat"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(offers.len(), 2, "{node:#}");
    assert!(offers[0].get("modifier").is_some(), "{node:#}");
    assert!(offers[1].get("modifier").is_none(), "{node:#}");

    let raw = daemon.dir.join("hw.raw");
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "gst-launch-1.0", "-q"])
        .args([
            "pipewiresrc",
            "target-object=hwnode",
            "num-buffers=10",
            "stream-properties=props,media.type=Video",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", raw.display()))
        .env("GST_DEBUG", "pipewirepool:6");
    daemon.env(&mut cmd);
    let out = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pipewiresrc failed:\n{log}");
    // pipewiresrc wraps each block by its type (`wrap data (DmaBuf 3)`): dma-bufs with
    // GStreamer's dma-buf allocator, GstDmaBufMemory downstream.
    let wrapped: Vec<&str> = log.lines().filter(|l| l.contains("wrap data (")).collect();
    assert!(
        !wrapped.is_empty() && wrapped.iter().all(|l| l.contains("wrap data (DmaBuf")),
        "pipewiresrc did not take dma-bufs:\n{}",
        wrapped
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(producer);
    // Ten frames of the pattern, each plane at the pool's stride (pipewiresrc hands filesink
    // each plane as its own memory, with its stride padding).
    let got = std::fs::read(&raw).unwrap();
    assert!(
        !got.is_empty() && got.len().is_multiple_of(10),
        "{} bytes",
        got.len()
    );
    assert!(
        got.len() / 10 >= 640 * 480 * 3 / 2,
        "{} bytes a frame",
        got.len() / 10
    );
}
