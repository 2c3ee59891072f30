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

/// A dma-heap pool published as a PipeWire node, taken by a second producer
/// (`--source pipewire:`) as dma-bufs (its LINEAR offer matches ours first) and passed on to a
/// consumer as they are: every frame verified, not one copy, the consumer told the buffers are
/// a PipeWire peer's dma-bufs.
#[test]
fn a_dma_heap_node_passes_through_a_second_producer_as_dma_bufs() {
    let t = "a_dma_heap_node_passes_through_a_second_producer_as_dma_bufs";
    if !Path::new("/dev/dma_heap/system").exists() {
        skip_or_fail(t, "/dev/dma_heap/system does not exist");
        return;
    }
    let daemon = Daemon::start("hwchain");
    let (a, b) = (socket("pw-hwchain-a"), socket("pw-hwchain-b"));
    let _first = daemon.producer(
        &a,
        &[
            "--alloc",
            "dma-heap",
            "--pipewire",
            "dmanode",
            "--format",
            "NV12",
            "--size",
            "640x480",
            "--fps",
            "30",
        ],
    );
    assert!(
        eventually(Duration::from_secs(20), || daemon.node("dmanode").is_some()),
        "no node \"dmanode\":\n{}",
        daemon.log()
    );
    let second = daemon.producer(&b, &["--source", "pipewire:dmanode"]);
    let frames = 60;
    let stats = consume(
        &b,
        "hwchain",
        &[
            "--verify",
            "--import",
            "cpu-map",
            "--frames",
            &frames.to_string(),
        ],
        Duration::from_secs(120),
    );
    drop(second);
    assert_eq!(stats["frames"], frames, "{stats:#}");
    assert_eq!(stats["verified"], frames, "{stats:#}");
    assert_eq!(stats["producer_copied"], 0, "{stats:#}");
    assert_eq!(stats["memory"], "dma-buf", "{stats:#}");
    assert_eq!(stats["alloc"], "pipewire", "{stats:#}");
}

/// Explicit sync needs a DRM device that makes timeline syncobjs: the lane's DRM devices are
/// asked (`DRM_CAP_SYNCOBJ_TIMELINE`), and `producer --list-devices` says what that means. No
/// such device here (vgem makes none): implicit sync, said. Should the lane gain one, this
/// fails: explicit sync would then have to be built and tested here.
#[test]
fn explicit_sync_is_probed_on_the_drm_devices_and_said() {
    let t = "explicit_sync_is_probed_on_the_drm_devices_and_said";
    let nodes = dmabuf_core::drm::nodes();
    if nodes.is_empty() {
        skip_or_fail(t, "no DRM device under /dev/dri");
        return;
    }
    for n in &nodes {
        eprintln!("{n:?}");
        assert!(n.driver.is_ok(), "{n:?}");
    }
    let out = Command::new(producer_bin())
        .arg("--list-devices")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("explicit sync"))
        .unwrap_or_else(|| panic!("{text}"));
    eprintln!("{line}");
    if let Some(n) = nodes.iter().find(|n| n.timeline) {
        panic!(
            "{} ({:?}) makes timeline syncobjs: explicit sync (SPA_META_SyncTimeline) can be \
             built and tested in this lane now ({line})",
            n.path.display(),
            n.driver
        );
    }
    assert!(
        line.contains("no DRM device makes timeline syncobjs"),
        "{line}"
    );
    for n in &nodes {
        assert!(
            line.contains(&format!(
                "{} {}",
                n.path.display(),
                n.driver.as_ref().unwrap()
            )),
            "{line}"
        );
    }
}
