//! The dma-buf allocators on real kernel objects. On a host without the devices each test says
//! `SKIP` and why; the real-kernel lane (`ci/vm-lane`) runs them with `DMABUF_REQUIRE_HW=1`,
//! where a missing device fails.

use dmabuf_core::alloc::{self, AllocChoice, AllocError, Allocator, UdmabufAllocator};
use dmabuf_core::format::{frame_checksum, FrameFormat, PixelFormat};
use dmabuf_core::mapping::CpuMapping;
use dmabuf_core::pool::Pool;
use dmabuf_core::proto::validate::check_fd;
use dmabuf_core::testing::{fd_count, serial, skip_or_fail};
use dmabuf_core::{AllocatorKind, FrameBuffer, MemoryKind};
use nix::fcntl::SealFlag;
use std::os::fd::AsFd;

/// Open `kind`, or skip/fail the test.
fn open_or_skip(test: &str, kind: AllocatorKind) -> Option<Box<dyn Allocator>> {
    match alloc::open(kind) {
        Ok(a) => Some(a),
        Err(e @ AllocError::Unavailable { .. }) => {
            skip_or_fail(test, e);
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Write a frame through a write bracket, read it back through a second, read-only mapping.
fn write_then_read(buf: &FrameBuffer) {
    let fd = buf.fds[0].clone();
    assert_eq!(
        check_fd(fd.as_fd(), MemoryKind::DmaBuf).unwrap(),
        buf.fd_sizes[0]
    );
    let mut w = CpuMapping::new(fd.clone(), buf.fd_sizes[0], true, buf.memory).unwrap();
    let sum = {
        let mut access = w.write().unwrap();
        for (i, b) in access.iter_mut().enumerate() {
            *b = (i * 7 + i / 4096) as u8;
        }
        frame_checksum(&access, &buf.layout.planes).unwrap()
    };
    let r = CpuMapping::new(fd, buf.fd_sizes[0], false, buf.memory).unwrap();
    let access = r.read().unwrap();
    assert_eq!(frame_checksum(&access, &buf.layout.planes).unwrap(), sum);
    assert_eq!(access[12345], (12345 * 7 + 3) as u8);
}

fn exercise(test: &str, kind: AllocatorKind, formats: &[PixelFormat]) {
    let _g = serial();
    let Some(a) = open_or_skip(test, kind) else {
        return;
    };
    let before = fd_count();
    for &pixel in formats {
        for (w, h) in [(1920, 1080), (1279, 719)] {
            let buf = a
                .allocate(FrameFormat::linear(pixel, w, h))
                .unwrap_or_else(|e| panic!("{test}: {pixel} {w}x{h}: {e}"));
            assert_eq!(buf.allocator, kind);
            assert_eq!(buf.memory, MemoryKind::DmaBuf);
            assert!(buf.fd_sizes[0] >= buf.layout.size);
            write_then_read(&buf);
        }
        // A pool of them, leased and returned.
        let pool = Pool::new(a.as_ref(), FrameFormat::linear(pixel, 640, 480), 3).unwrap();
        let l = pool.try_acquire().unwrap();
        l.with_bytes_mut(|d| d[0] = 1).unwrap();
    }
    assert_eq!(fd_count(), before, "{test}: fds leaked");
}

#[test]
fn dma_heap_allocates_maps_and_syncs() {
    exercise(
        "dma_heap_allocates_maps_and_syncs",
        AllocatorKind::DmaHeap,
        &PixelFormat::ALL,
    );
}

#[test]
fn udmabuf_allocates_maps_and_syncs() {
    exercise(
        "udmabuf_allocates_maps_and_syncs",
        AllocatorKind::Udmabuf,
        &PixelFormat::ALL,
    );
}

#[test]
fn gbm_allocates_on_a_card_node() {
    exercise(
        "gbm_allocates_on_a_card_node",
        AllocatorKind::Gbm,
        &PixelFormat::ALL,
    );
}

#[test]
fn udmabuf_refuses_an_unsealed_memfd() {
    let test = "udmabuf_refuses_an_unsealed_memfd";
    let _g = serial();
    let a = match UdmabufAllocator::open() {
        Ok(a) => a,
        Err(e) => return skip_or_fail(test, e),
    };
    let before = fd_count();
    let fmt = FrameFormat::linear(PixelFormat::Nv12, 64, 64);
    match a.create_from_memfd(fmt, SealFlag::empty()) {
        Err(AllocError::Failed {
            what: "UDMABUF_CREATE",
            source,
            ..
        }) => assert_eq!(source, nix::errno::Errno::EINVAL),
        other => panic!("an unsealed memfd must be refused, got {other:?}"),
    }
    assert_eq!(fd_count(), before, "fds leaked on the failure path");
}

#[test]
fn auto_prefers_a_dma_buf_allocator_and_says_why() {
    let fmt = FrameFormat::linear(PixelFormat::Nv12, 1920, 1080);
    let (a, why) = alloc::select(AllocChoice::Auto, fmt).unwrap();
    let heap = std::path::Path::new("/dev/dma_heap/system").exists();
    if heap {
        assert_eq!(a.kind(), AllocatorKind::DmaHeap, "{why}");
    } else {
        // Each rejected candidate is named with its reason.
        assert!(
            why.contains("dma-heap unavailable: /dev/dma_heap/system"),
            "{why}"
        );
        if a.kind() == AllocatorKind::Memfd {
            assert!(why.contains("udmabuf unavailable"), "{why}");
            assert!(why.contains("gbm unavailable"), "{why}");
        }
        skip_or_fail(
            "auto_prefers_a_dma_buf_allocator_and_says_why (dma-heap half)",
            format!("no /dev/dma_heap/system; auto picked {why}"),
        );
    }
}

#[test]
fn asking_for_a_missing_allocator_is_a_clear_error() {
    for kind in [
        AllocatorKind::DmaHeap,
        AllocatorKind::Udmabuf,
        AllocatorKind::Gbm,
    ] {
        let fmt = FrameFormat::linear(PixelFormat::Nv12, 64, 64);
        match alloc::select(AllocChoice::Only(kind), fmt) {
            Ok(_) => {} // present here (the lane)
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(kind.name()) && msg.contains("/dev/"), "{msg}");
            }
        }
    }
}
