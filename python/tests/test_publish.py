"""Python publisher -> the Rust consumer (every frame verified, on the GPU when lavapipe is
there) and -> another Python process (every pixel as drawn)."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

import dmabuf_pipeline as dp
from conftest import binary, python_child, run_consumer, wait_for_socket


def draw(frame, i):
    """A deterministic picture for frame i: every plane a ramp offset by i."""
    for k, p in enumerate(frame.planes):
        rows = p.shape[0]
        maxv = 1023 if p.dtype == np.uint16 else 255
        ramp = (np.arange(rows, dtype=np.int64)[:, None] * 3 + i * 7 + k * 50) % (maxv + 1)
        p[...] = ramp.reshape((rows,) + (1,) * (p.ndim - 1)).astype(p.dtype)


def expected(shape, dtype, k, i):
    rows = shape[0]
    maxv = 1023 if dtype == np.uint16 else 255
    ramp = (np.arange(rows, dtype=np.int64)[:, None] * 3 + i * 7 + k * 50) % (maxv + 1)
    return np.broadcast_to(ramp.reshape((rows,) + (1,) * (len(shape) - 1)), shape).astype(dtype)


def publish_frames(pub, n, consumers=1):
    assert pub.wait_for_consumers(consumers, timeout=30), "no consumer connected"
    for i in range(n):
        with pub.frame(timeout=30) as f:
            draw(f, i)
    return pub.frames


@pytest.mark.parametrize(
    "fmt,w,h",
    [("NV12", 640, 360), ("NV12", 321, 241), ("I420", 320, 240), ("XRGB8888", 321, 241), ("S010", 320, 180), ("YUYV", 320, 180)],
)
@pytest.mark.parametrize("import_path", ["auto", "cpu-map"])
def test_python_publisher_to_rust_consumer(sock, tmp_path, fmt, w, h, import_path):
    n = 30
    with dp.Publisher(sock, width=w, height=h, format=fmt, fps=60, buffers=4) as pub:
        assert pub.stream["memory"] in ("memfd", "dma-buf")
        result = {}

        def consume():
            try:
                result["stats"] = run_consumer(sock, tmp_path, "--verify", "--import", import_path, "--frames", n)
            except BaseException as e:  # noqa: BLE001 - reported below
                result["error"] = e

        t = threading.Thread(target=consume)
        t.start()
        published = publish_frames(pub, n)
        t.join(120)
    assert "error" not in result, result.get("error")
    stats = result["stats"]
    assert published == n
    assert stats["frames"] == n and stats["verified"] == n and stats["mismatches"] == 0, stats
    assert stats["dropped"] == 0, stats


CHILD_PUBLISHER = r"""
import sys, numpy as np, dmabuf_pipeline as dp
sys.path.insert(0, sys.argv[5])
from test_publish import draw
sock, fmt, w, h = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with dp.Publisher(sock, width=w, height=h, format=fmt, fps=30) as pub:
    print("listening", flush=True)
    assert pub.wait_for_consumers(1, timeout=30)
    for i in range(20):
        with pub.frame(timeout=30) as f:
            f.pts = i / 30
            draw(f, i)
"""


@pytest.mark.parametrize("fmt,w,h", [("NV12", 321, 241), ("I420", 64, 48), ("S010", 130, 66)])
def test_python_to_python(sock, procs, fmt, w, h):
    child = procs(python_child(CHILD_PUBLISHER, sock, fmt, w, h, __import__("os").path.dirname(__file__)), "publisher")
    wait_for_socket(sock, child.p)
    got = 0
    with dp.Receiver(sock) as rx:
        for f in rx:
            with f:
                assert f.verify() is True
                assert f.pts == pytest.approx(f.seq / 30)
                for k, p in enumerate(f.planes):
                    assert np.array_equal(p, expected(p.shape, p.dtype, k, f.seq)), f"frame {f.seq} plane {k}"
                got += 1
        assert rx.ended[0] == "end-of-stream"
    assert child.wait(30) == 0, child.output()
    assert got == 20


def test_writable_planes_are_views_and_guarded(sock):
    with dp.Publisher(sock, width=64, height=48, format="NV12", fps=30, buffers=2) as pub:
        f = pub.frame(timeout=5)
        y, uv = f.planes
        assert y.flags.writeable and y.shape == (48, 64) and uv.shape == (24, 32, 2)
        y[:] = 7
        assert (np.from_dlpack(y) == 7).all()
        f.publish()
        with pytest.raises(dp.FrameReleased):
            y[0, 0] = 1
        with pytest.raises(dp.FrameReleased):
            f.planes
        # An exception inside the block gives the buffer back unpublished.
        with pytest.raises(RuntimeError):
            with pub.frame(timeout=5) as g:
                raise RuntimeError("drawing failed")
        assert g.released and pub.frames == 1
