//! The libraries, through their examples and directly, against the real binaries:
//! `dmabuf-core`'s `receive` example (a `Receiver` with its frame guards, checking every frame
//! on the CPU) takes frames from the producer in several formats; its `publish` example (a
//! `Publisher` drawing its own frames) feeds the consumer, which verifies every frame on the
//! GPU; `dmabuf-vulkan`'s `vulkan_receive` example imports the producer's frames into its own
//! Vulkan device (lavapipe) and reads every one back on the GPU, equal to what the CPU sees; a
//! `Receiver` polled through its fd in a plain `poll(2)` loop, whose guards release exactly
//! once, when dropped.

mod common;
use common::*;
use std::time::Duration;

/// Run example `name` against a producer drawing `format` at `size` (memfd), asking it for
/// `frames` frames; its standard output, once it succeeded.
fn example_against_producer(name: &str, format: &str, size: &str, frames: &str) -> String {
    let sock = socket(&format!("lib-{name}-{format}"));
    let _p = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--no-pace",
            "--format",
            format,
            "--size",
            size,
        ],
    );
    let out = std::process::Command::new(example(name))
        .arg(&sock)
        .arg(frames)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {format}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_receive_example_verifies_every_frame_from_the_producer() {
    for (format, size) in [
        ("NV12", "640x360"),
        ("P010", "321x241"),
        ("BGR888", "65x37"),
    ] {
        let text = example_against_producer("receive", format, size, "90");
        assert!(
            text.contains(&format!("stream: {format}")),
            "{format}: {text}"
        );
        assert!(
            text.contains("received 90 frames: 90 verified, 0 mismatched"),
            "{format}: {text}"
        );
    }
}

#[test]
fn the_publish_example_feeds_the_consumer() {
    let sock = socket("lib-publish");
    let publisher = std::process::Command::new(example("publish"))
        .arg(&sock)
        .arg("120")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || sock.exists()),
        "the publisher binds its socket"
    );
    let s = consume(
        &sock,
        "publish",
        &["--verify", "--import", "auto"],
        Duration::from_secs(60),
    );
    let published = published_frames(publisher);
    assert!(published >= 100, "{published} of 120 published");
    assert_eq!(s["frames"], published, "{s}");
    assert_eq!(s["verified"], published, "{s}");
    assert_eq!(s["mismatches"], 0, "{s}");
    assert_eq!(s["pixel_format"], "NV12", "{s}");
    // Paced by the example at 60 fps: no gap of a frame's worth of jitter more than a few.
    assert!(s["max_gap_ms"].as_f64().unwrap() < 250.0, "{s}");
}

#[test]
fn a_receiver_sits_in_a_poll_loop_and_its_guards_release_once() {
    use dmabuf_core::receiver::{linear_caps, Receiver, ReceiverEvent};
    use dmabuf_core::{MemoryKind, PixelFormat};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    let sock = socket("lib-poll");
    let _p = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--size",
            "64x48",
            "--buffers",
            "4",
            "--fps",
            "120",
        ],
    );
    let caps = linear_caps(&[PixelFormat::Nv12], &[MemoryKind::Memfd]);
    let rx = Receiver::connect(&sock, caps, Duration::from_secs(5)).unwrap();
    assert_eq!(rx.welcome().buffer_count, 4);
    let mut held = Vec::new();
    let mut added = 0;
    let mut seqs = Vec::new();
    // Hold three frames, reading only when poll(2) says the fd is readable.
    while held.len() < 3 {
        let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(5000u16)).unwrap();
        assert!(n > 0, "the producer sends within 5 s");
        while let Some(ev) = rx.try_next_event().unwrap() {
            match ev {
                ReceiverEvent::BufferAdded(_) => added += 1,
                ReceiverEvent::Frame(f) => {
                    seqs.push(f.seq());
                    held.push(f);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(added, 4);
    assert_eq!(rx.held_count(), held.len());
    // Dropping a guard releases its buffer; release() does it explicitly; never twice.
    let first = held.remove(0);
    assert!(first.is_intact());
    drop(first);
    assert_eq!(rx.held_count(), held.len());
    held.remove(0).release().unwrap();
    assert_eq!(rx.held_count(), held.len());
    drop(held);
    assert_eq!(rx.held_count(), 0);
    // The stream goes on: later frames arrive in order (the producer got every release).
    let mut more = 0;
    while more < 20 {
        if let ReceiverEvent::Frame(f) = rx.next_event(Some(Duration::from_secs(5))).unwrap() {
            assert!(f.seq() > *seqs.last().unwrap());
            seqs.push(f.seq());
            more += 1;
        }
    }
    rx.close("test done");
}

#[test]
fn the_vulkan_receive_example_reads_every_frame_on_the_gpu() {
    if !vulkan_or_skip("the_vulkan_receive_example_reads_every_frame_on_the_gpu") {
        return;
    }
    for (format, size) in [
        ("NV12", "640x360"),
        ("P010", "321x241"),
        ("YUV444", "65x37"),
    ] {
        let text = example_against_producer("vulkan_receive", format, size, "60");
        assert!(
            text.contains("received 60 frames through host-pointer: 60 matched, 0 differed"),
            "{format}: {text}"
        );
    }
}
