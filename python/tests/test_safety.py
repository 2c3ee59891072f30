"""What must never happen: reading a released buffer, a hang, a leaked fd, a panic crossing
into Python, a Ctrl-C that does not interrupt."""

import os
import socket
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import dmabuf_pipeline as dp
from conftest import open_fds, python_child, wait_for_socket


def test_released_frame_refuses_access(producer, sock):
    producer("--format", "NV12", "--size", "64x48", "--frames", 3, "--no-pace")
    with dp.Receiver(sock) as rx:
        f = rx.next_frame(timeout=10)
        y, uv = f.planes
        row = y[3]  # a view made while held
        f.release()
        assert f.released
        for touch in (
            lambda: f.planes,
            lambda: f.tobytes(),
            lambda: f.to_rgb(),
            lambda: f.verify(),
            lambda: y[0, 0],
            lambda: row[0],
            lambda: y.sum(),
            lambda: np.mean(uv),
            lambda: y + 1,
            lambda: y.copy(),
            lambda: y.tobytes(),
            lambda: bytes(y),
            lambda: list(row),
            lambda: np.from_dlpack(y),
            lambda: y == 0,
        ):
            with pytest.raises(dp.FrameReleased):
                touch()
        assert "released frame" in repr(y)
        f.release()  # twice is harmless
        # The arrays still hold the mapping: shape and strides are fine, no dangling pointer.
        assert y.shape == (48, 64)


def test_killed_producer_gives_a_clean_exception(producer, sock):
    p = producer("--format", "NV12", "--size", "64x48", "--fps", "30")
    with dp.Receiver(sock) as rx:
        with rx.next_frame(timeout=10) as f:
            held = f.planes[0].copy()
        p.kill(signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(dp.ProducerGone):
            for _ in range(100):
                with rx.next_frame(timeout=10):
                    pass
        assert time.monotonic() - t0 < 5
    assert held.shape == (48, 64)


def test_errors_are_python_exceptions(producer, sock, tmp_path):
    with pytest.raises(ConnectionError):
        dp.Receiver(tmp_path / "nothing.sock", timeout=1)
    with pytest.raises(ValueError, match="unknown pixel format"):
        dp.Receiver(sock, formats=["NOPE"])
    with pytest.raises(ValueError, match="memory kind"):
        dp.Receiver(sock, memory=["vram"])
    with pytest.raises(ValueError):
        dp.Publisher(tmp_path / "p.sock", width=0, height=10)
    with pytest.raises(ValueError):
        dp.Publisher(tmp_path / "p.sock", width=64, height=48, buffers=1000)
    with pytest.raises(ValueError, match="unknown pixel format"):
        dp.Publisher(tmp_path / "p.sock", width=64, height=48, format="RGB565X")
    producer("--format", "NV12", "--size", "64x48", "--frames", 100)
    with pytest.raises(dp.Error, match="cannot take NV12"):
        dp.Receiver(sock, formats=["P010"])
    with dp.Receiver(sock) as rx:
        with pytest.raises(ValueError, match="non-negative"):
            rx.next_frame(timeout=-1)
    # A socket a running producer owns is refused.
    with pytest.raises(dp.Error, match="in use"):
        dp.Publisher(sock, width=64, height=48)


def test_timeout_and_gil_released_while_waiting(sock):
    with dp.Publisher(sock, width=64, height=48) as pub:
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                pub.serve(0.02)

        # The publisher is served from a thread while the main thread waits: both need the
        # GIL to be released during the waits.
        t = threading.Thread(target=serve)
        t.start()
        try:
            with dp.Receiver(sock) as rx:
                counter = [0]
                done = threading.Event()

                def spin():
                    while not done.is_set():
                        counter[0] += 1

                s = threading.Thread(target=spin)
                s.start()
                t0 = time.monotonic()
                with pytest.raises(TimeoutError):
                    rx.next_frame(timeout=0.5)
                waited = time.monotonic() - t0
                done.set()
                s.join()
                assert 0.45 <= waited < 2.0
                assert counter[0] > 10_000, "the other thread did not run while we waited"
        finally:
            stop.set()
            t.join()


CHILD_WAITS = r"""
import sys, dmabuf_pipeline as dp
rx = dp.Receiver(sys.argv[1])
print("waiting", flush=True)
try:
    rx.next_frame()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(7)
"""


def test_ctrl_c_interrupts_a_blocking_wait(sock):
    with dp.Publisher(sock, width=64, height=48) as pub:
        child = subprocess.Popen(python_child(CHILD_WAITS, sock), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while pub.consumers == 0 and time.monotonic() < deadline:
                pub.serve(0.05)
            assert pub.consumers == 1
            assert child.stdout.readline().strip() == b"waiting"
            time.sleep(0.3)
            child.send_signal(signal.SIGINT)
            t0 = time.monotonic()
            rc = child.wait(timeout=5)
            assert rc == 7, child.stderr.read().decode()
            assert time.monotonic() - t0 < 1.0
        finally:
            child.kill()
            child.wait()


def test_no_fd_leaks(producer, sock):
    producer("--format", "I420", "--size", "64x48", "--frames", 10_000, "--no-pace")
    before = open_fds()
    for _ in range(5):
        with dp.Receiver(sock) as rx:
            for _ in range(10):
                with rx.next_frame(timeout=10) as f:
                    f.planes[0].sum()
    # The last frame object still holds its buffer's mapping (and so its fd) until it goes.
    del f, rx
    assert open_fds() == before
    with dp.Publisher(sock.with_name("pub.sock"), width=64, height=48) as pub:
        pass
    assert open_fds() == before


def test_held_frames_and_backpressure(producer, sock):
    # A receiver that keeps every buffer gets no more frames but no hang either: a timeout.
    producer("--format", "NV12", "--size", "64x48", "--buffers", "3", "--no-pace", "--stall-timeout", "30")
    with dp.Receiver(sock) as rx:
        held = [rx.next_frame(timeout=10) for _ in range(3)]
        assert rx.held == 3
        with pytest.raises(TimeoutError):
            rx.next_frame(timeout=0.5)
        for f in held:
            f.release()
        with rx.next_frame(timeout=10):
            pass


def test_closing_the_receiver_revokes_held_frames(producer, sock):
    producer("--format", "NV12", "--size", "64x48", "--buffers", "2", "--no-pace")
    rx = dp.Receiver(sock)
    f = rx.next_frame(timeout=10)
    y = f.planes[0]
    kept = y.copy()  # the caller's own memory: not tied to the frame
    rx.close()
    assert f.released
    with pytest.raises(dp.FrameReleased):
        y.sum()
    with pytest.raises(dp.FrameReleased):
        f.planes
    assert type(kept) is np.ndarray and kept.shape == (48, 64)
    assert rx.next_frame(timeout=1) is None


def test_copies_are_plain_and_planes_do_not_hold_the_frame(producer, sock):
    producer("--format", "I420", "--size", "64x48", "--buffers", "2", "--no-pace", "--stall-timeout", "30")
    with dp.Receiver(sock) as rx:
        kept = []
        for _ in range(6):  # more frames than buffers: each must be released by dropping it
            f = rx.next_frame(timeout=10)
            y = f.planes[0]
            kept.append((y, y.copy(), y.astype(np.int32), y[y > 0], y[::2]))
            del f, y
        for y, c, a, m, v in kept[:-1]:
            with pytest.raises(dp.FrameReleased):
                y[0, 0]
            with pytest.raises(dp.FrameReleased):
                v[0, 0]  # a view is guarded too
            for own in (c, a, m):
                assert type(own) is np.ndarray
                own.sum()


def test_every_plane_argument_of_a_numpy_function_is_checked(producer, sock):
    producer("--format", "NV12", "--size", "64x48", "--no-pace")
    with dp.Receiver(sock) as rx:
        old = rx.next_frame(timeout=10)
        stale = old.planes[0]
        old.release()
        with rx.next_frame(timeout=10) as f:
            live = f.planes[0]
            for call in (
                lambda: np.concatenate([live, stale]),
                lambda: np.vstack((live, stale)),
                lambda: np.array_equal(live, stale),
                lambda: stale.flat[0],
            ):
                with pytest.raises(dp.FrameReleased):
                    call()
            # A plane as `where=` of a ufunc (no recursion).
            m = live > 0
            out = np.zeros(live.shape)
            np.add(np.zeros(live.shape), 1, out=out, where=m)
            assert out.sum() == int(np.count_nonzero(live))


def test_huge_timeouts_mean_no_limit(producer, sock):
    producer("--format", "NV12", "--size", "64x48", "--frames", "5", "--no-pace")
    with dp.Receiver(sock, timeout=1e300) as rx:
        with rx.next_frame(timeout=1e300) as f:
            assert f.seq == 0
        with rx.next_frame(timeout=float("inf")):
            pass
    with pytest.raises(ValueError):
        dp.Receiver(sock, timeout=float("nan"))
    with dp.Publisher(sock.with_name("p.sock"), width=64, height=48) as pub:
        pub.serve(0)
        pub.close(grace=1e300)


def test_a_receiver_dropped_by_the_producer_raises_and_its_frames_are_revoked(producer, sock):
    producer("--format", "NV12", "--size", "64x48", "--buffers", "2", "--fps", "60", "--stall-timeout", "1")
    with dp.Receiver(sock) as rx:
        held = [rx.next_frame(timeout=10) for _ in range(2)]
        y = held[0].planes[0]
        time.sleep(2.5)  # past the stall timeout: the producer drops this receiver
        assert not held[0].intact()
        with pytest.raises(dp.ProducerGone, match="released none"):
            rx.next_frame(timeout=10)
        assert held[0].released
        with pytest.raises(dp.FrameReleased):
            y.sum()


CHILD_FAILS = r"""
import sys, dmabuf_pipeline as dp
with dp.Publisher(sys.argv[1], width=64, height=48) as pub:
    print("listening", flush=True)
    assert pub.wait_for_consumers(1, timeout=30)
    with pub.frame(timeout=10) as f:
        f.planes[0][:] = 1
    raise RuntimeError("the model crashed")
"""


def test_a_failing_publisher_is_not_a_clean_end(sock, procs):
    child = procs(python_child(CHILD_FAILS, sock), "publisher")
    wait_for_socket(sock, child.p)
    with dp.Receiver(sock) as rx:
        with rx.next_frame(timeout=10):
            pass
        with pytest.raises(dp.ProducerGone, match="RuntimeError: the model crashed"):
            rx.next_frame(timeout=10)
        assert rx.ended[0] == "internal-error"


CHILD_CONNECTS = r"""
import sys, dmabuf_pipeline as dp
print("connecting", flush=True)
try:
    dp.Receiver(sys.argv[1], timeout=30)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(7)
"""


def test_ctrl_c_interrupts_connecting(tmp_path):
    # A listener that accepts and never answers.
    path = str(tmp_path / "mute.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(1)
    child = subprocess.Popen(python_child(CHILD_CONNECTS, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"connecting"
        conn, _ = srv.accept()
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        assert child.wait(timeout=10) == 7, child.stderr.read().decode()
        assert time.monotonic() - t0 < 1.0
        conn.close()
    finally:
        child.kill()
        child.wait()
        srv.close()


def test_close_from_another_thread_wakes_a_waiting_next_frame(sock):
    with dp.Publisher(sock, width=64, height=48) as pub:
        stop = threading.Event()
        t = threading.Thread(target=lambda: [pub.serve(0.02) for _ in iter(stop.is_set, True)])
        t.start()
        try:
            rx = dp.Receiver(sock)
            got = {}
            w = threading.Thread(target=lambda: got.update(frame=rx.next_frame()))
            w.start()
            time.sleep(0.3)
            assert w.is_alive()
            assert rx.held == 0 and rx.stream["width"] == 64  # usable while another thread waits
            rx.close()
            w.join(5)
            assert not w.is_alive() and got["frame"] is None
        finally:
            stop.set()
            t.join()
