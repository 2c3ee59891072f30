"""The receiver and publisher on real dma-bufs (the real-kernel lane: ci/vm-lane runs this file
through consumer/tests/hw_python.rs). On a host without dma-heap/udmabuf they skip loudly."""

import threading

import numpy as np
import pytest

import dmabuf_pipeline as dp
from conftest import require_device, run_consumer

FRAMES = 4


@pytest.mark.parametrize("fmt,size", [("NV12", "640x360"), ("I420", "321x241"), ("P010", "322x182")])
def test_receiver_on_dma_heap_buffers(producer, sock, tmp_path, fmt, size):
    require_device("hw_python::receiver_on_dma_heap", "/dev/dma_heap/system")
    producer("--alloc", "dma-heap", "--format", fmt, "--size", size, "--frames", FRAMES, "--no-pace")
    ref = tmp_path / "ref.raw"
    stats = run_consumer(sock, tmp_path, "--import", "cpu-map", "--verify", "--dump-raw", ref)
    assert stats["verified"] == FRAMES, stats
    ref = ref.read_bytes()
    flen = len(ref) // FRAMES

    producer("--alloc", "dma-heap", "--format", fmt, "--size", size, "--frames", FRAMES, "--no-pace")
    n = 0
    with dp.Receiver(sock) as rx:
        assert (rx.stream["memory"], rx.stream["allocator"]) == ("dma-buf", "dma-heap"), rx.stream
        for f in rx:
            with f:
                assert f.verify() is True
                packed = b"".join(np.ascontiguousarray(p).tobytes() for p in f.planes)
                assert packed == ref[f.seq * flen : (f.seq + 1) * flen], f"frame {f.seq}"
                for p, (start, length) in zip(f.planes, f.plane_mappings()):
                    addr = p.__array_interface__["data"][0]
                    assert start <= addr < start + length
                d = np.from_dlpack(f.planes[0])
                assert np.shares_memory(d, f.planes[0])
                n += 1
    assert n == FRAMES


@pytest.mark.parametrize("alloc,device", [("dma-heap", "/dev/dma_heap/system"), ("udmabuf", "/dev/udmabuf")])
def test_publisher_on_dma_bufs(sock, tmp_path, alloc, device):
    require_device(f"hw_python::publisher_on_{alloc}", device)
    n = 8
    with dp.Publisher(sock, width=320, height=180, format="NV12", alloc=alloc) as pub:
        assert (pub.stream["memory"], pub.stream["allocator"]) == ("dma-buf", alloc)
        result = {}
        t = threading.Thread(
            target=lambda: result.update(
                stats=run_consumer(sock, tmp_path, "--verify", "--import", "cpu-map", "--frames", n)
            )
        )
        t.start()
        assert pub.wait_for_consumers(1, timeout=60)
        for i in range(n):
            with pub.frame(timeout=60) as f:
                f.planes[0][:] = np.arange(320, dtype=np.uint8)[None, :] + i
                f.planes[1][:] = 128
        t.join(120)
    assert result["stats"]["verified"] == n, result
