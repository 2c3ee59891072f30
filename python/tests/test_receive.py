"""Rust producer -> Python receiver: the numpy views are the producer's bytes, byte for byte
(against the Rust consumer's --dump-raw and the ffmpeg CLI), and they are views, not copies."""

import hashlib
import subprocess

import numpy as np
import pytest

import dmabuf_pipeline as dp
from conftest import CLIP, CLIP_MD5, binary, run_consumer

FRAMES = 6


def packed_from_views(frame) -> bytes:
    """The frame's visible bytes assembled from the numpy views alone (their shapes and
    strides), as FFmpeg's rawvideo lays them out."""
    return b"".join(np.ascontiguousarray(p).tobytes() for p in frame.planes)


def receive(sock, n, **kw):
    got = []
    with dp.Receiver(sock, **kw) as rx:
        stream = rx.stream
        for frame in rx:
            with frame:
                assert frame.verify() is True, f"frame {frame.seq}: checksum mismatch"
                got.append((frame.seq, packed_from_views(frame), frame.tobytes()))
            if len(got) == n:
                break
    return stream, got


@pytest.mark.parametrize(
    "fmt,size",
    [
        ("NV12", "640x360"),
        ("NV12", "321x241"),
        ("I420", "321x241"),
        ("YUYV", "321x241"),
        ("P010", "322x240"),
        ("S010", "321x241"),
        ("XRGB8888", "321x241"),
        ("NV24", "160x90"),
        ("R8", "321x241"),
        ("BGR888", "321x241"),
    ],
)
def test_pattern_matches_the_rust_consumer(producer, sock, tmp_path, fmt, size):
    # The reference: the Rust consumer's --dump-raw of the same (deterministic) pattern frames.
    producer("--format", fmt, "--size", size, "--frames", FRAMES, "--no-pace")
    ref = tmp_path / "ref.raw"
    stats = run_consumer(sock, tmp_path, "--import", "cpu-map", "--verify", "--dump-raw", ref)
    assert stats["frames"] == FRAMES and stats["verified"] == FRAMES, stats
    ref = ref.read_bytes()
    assert len(ref) % FRAMES == 0
    frame_len = len(ref) // FRAMES

    producer("--format", fmt, "--size", size, "--frames", FRAMES, "--no-pace")
    stream, got = receive(sock, FRAMES)
    w, h = map(int, size.split("x"))
    canonical = dp._native.format_info(fmt)["name"]
    assert (stream["format"], stream["width"], stream["height"]) == (canonical, w, h)
    assert [s for s, _, _ in got] == list(range(FRAMES))
    for seq, from_views, copied in got:
        want = ref[seq * frame_len : (seq + 1) * frame_len]
        assert from_views == want, f"{fmt} {size} frame {seq}: the numpy views differ from --dump-raw"
        assert copied == want, f"{fmt} {size} frame {seq}: tobytes() differs from --dump-raw"


def ffmpeg_framemd5(path, pix_fmt, frames):
    out = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(path), "-frames:v", str(frames), "-map", "0:v:0",
         "-autoscale", "0", "-fps_mode", "passthrough", "-pix_fmt", pix_fmt, "-f", "framemd5", "-"],
        capture_output=True, check=True,
    ).stdout.decode()
    return [line.split(",")[-1].strip() for line in out.splitlines() if line and not line.startswith("#")]


def test_bundled_clip_matches_ffmpeg(producer, sock):
    n = 24
    producer("--source", f"file:{CLIP}", "--frames", n, "--no-pace")
    stream, got = receive(sock, n)
    assert (stream["format"], stream["width"], stream["height"]) == ("I420", 1920, 1080)
    # The bundled framemd5 is the ffmpeg CLI's decode of the clip (samples/make-sample.sh).
    ref = [l.split(",")[-1].strip() for l in CLIP_MD5.read_text().splitlines() if l and not l.startswith("#")]
    assert len(got) == n
    for seq, from_views, copied in got:
        assert hashlib.md5(from_views).hexdigest() == ref[seq], f"clip frame {seq}"
        assert copied == from_views


@pytest.mark.parametrize(
    "size,pix_fmt,codec,carried",
    [
        ("321x241", "yuv420p", "libx264", "I420"),
        ("322x182", "yuv444p", "libx264", "YUV444"),
        ("320x180", "yuv420p10le", "libx265", "S010"),
    ],
)
def test_odd_clips_match_ffmpeg(producer, sock, tmp_path, size, pix_fmt, codec, carried):
    clip = tmp_path / "clip.mkv"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
         "-frames:v", "10", "-pix_fmt", pix_fmt, "-c:v", codec, *(["-x265-params", "log-level=error"] if codec == "libx265" else []), str(clip)],
        check=True,
    )
    producer("--source", f"file:{clip}", "--frames", 10, "--no-pace")
    stream, got = receive(sock, 10)
    assert stream["format"] == carried
    ref = ffmpeg_framemd5(clip, pix_fmt, 10)
    assert len(got) == 10
    for seq, from_views, _ in got:
        assert hashlib.md5(from_views).hexdigest() == ref[seq], f"{size} {pix_fmt} frame {seq}"


def test_planes_are_views_of_the_shared_buffer(producer, sock):
    producer("--format", "NV12", "--size", "320x240", "--frames", 40, "--no-pace", "--buffers", 4)
    seen = {}
    with dp.Receiver(sock) as rx:
        for frame in rx:
            with frame:
                for plane, (start, length) in zip(frame.planes, frame.plane_mappings()):
                    addr = plane.__array_interface__["data"][0]
                    end = addr + (plane.shape[0] - 1) * plane.strides[0] + plane.shape[1] * plane.strides[1]
                    assert start <= addr and end <= start + length, "plane outside the buffer's mapping"
                    assert not plane.flags.owndata and not plane.flags.writeable
                addrs = tuple(p.__array_interface__["data"][0] for p in frame.planes)
                # The same buffer is mapped once: the same addresses every time it comes back.
                assert seen.setdefault(frame.buffer_id, addrs) == addrs
                # DLPack shares the memory (no copy), read-only.
                y = frame.planes[0]
                d = np.from_dlpack(y)
                assert d.__array_interface__["data"][0] == y.__array_interface__["data"][0]
                assert np.shares_memory(d, y) and not d.flags.writeable
                assert y.__dlpack_device__() == (1, 0)  # kDLCPU
                assert np.array_equal(d, y)
    assert len(seen) == 4, f"expected the pool's 4 buffers to come back, saw {sorted(seen)}"


def test_dlpack_unversioned_is_refused_for_read_only_planes(producer, sock):
    producer("--format", "NV12", "--size", "64x48", "--frames", 2, "--no-pace")
    with dp.Receiver(sock) as rx:
        with rx.next_frame(timeout=10) as frame:
            y = frame.planes[0]
            cap = y.__dlpack__(max_version=(1, 0))
            assert "dltensor_versioned" in repr(cap)
            with pytest.raises(BufferError):
                y.__dlpack__()  # DLPack 0.x cannot carry the read-only flag


def test_metadata(producer, sock):
    producer("--format", "NV12", "--size", "320x180", "--frames", 5, "--fps", "50")
    with dp.Receiver(sock) as rx:
        s = rx.stream
        assert s["fps"] == (50, 1) and s["memory"] == "memfd" and s["modifier"] == 0
        frames = []
        for f in rx:
            with f:
                assert (f.format, f.width, f.height) == ("NV12", 320, 180)
                assert set(f.colorimetry) == {"matrix", "range", "primaries", "transfer", "chroma_location"}
                assert f.pts == f.pts_ns / 1e9
                frames.append((f.seq, f.pts_ns))
        assert rx.ended[0] == "end-of-stream"
    assert [s for s, _ in frames] == list(range(5))
    # Paced at 50 fps: pts 20 ms apart.
    assert [b - a for (_, a), (_, b) in zip(frames, frames[1:])] == [20_000_000] * 4


def test_to_rgb_is_a_converted_copy(producer, sock):
    producer("--format", "XRGB8888", "--size", "320x180", "--frames", 1, "--no-pace")
    with dp.Receiver(sock) as rx, rx.next_frame(timeout=10) as f:
        bgrx = np.asarray(f.planes[0])
        rgb = f.to_rgb()
        assert rgb.shape == (180, 320, 3) and rgb.dtype == np.uint8
        assert np.array_equal(rgb, bgrx[:, :, 2::-1])
        assert not np.shares_memory(rgb, bgrx)
    # NV12 of the same picture: within a few levels of the RGB frame (limited range BT.709;
    # chroma repeated, so edges of the bars differ more).
    producer("--format", "NV12", "--size", "320x180", "--frames", 1, "--no-pace")
    with dp.Receiver(sock) as rx, rx.next_frame(timeout=10) as f:
        yuv_rgb = f.to_rgb().astype(int)
    diff = np.abs(yuv_rgb - rgb.astype(int))
    assert np.median(diff) <= 2, np.median(diff)
    assert np.percentile(diff, 95) <= 8, np.percentile(diff, 95)


def test_a_size_change_mid_stream(producer, sock, tmp_path):
    # Two H.264 segments of different sizes, concatenated: the producer renegotiates, the
    # receiver drops its old mappings and maps the new buffers; frames match the ffmpeg CLI
    # (-autoscale 0: each picture at its own size).
    stream = b""
    for i, size in enumerate(["320x240", "482x272"]):
        seg = tmp_path / f"seg{i}.h264"
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
             "-frames:v", "8", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-bsf:v", "h264_mp4toannexb",
             "-f", "h264", str(seg)],
            check=True,
        )
        stream += seg.read_bytes()
    clip = tmp_path / "sizes.h264"
    clip.write_bytes(stream)
    producer("--source", f"file:{clip}", "--frames", 16, "--no-pace")
    ref = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(clip), "-autoscale", "0", "-fps_mode", "passthrough",
         "-pix_fmt", "yuv420p", "-f", "framemd5", "-"],
        capture_output=True, check=True,
    ).stdout.decode()
    want = [l.split(",")[-1].strip() for l in ref.splitlines() if l and not l.startswith("#")]
    sizes = []
    with dp.Receiver(sock) as rx:
        for f in rx:
            with f:
                sizes.append((f.width, f.height))
                assert f.planes[0].shape == (f.height, f.width)
                assert hashlib.md5(packed_from_views(f)).hexdigest() == want[f.seq], f"frame {f.seq}"
        assert rx.stream["width"] == 482
    assert sizes == [(320, 240)] * 8 + [(482, 272)] * 8


def test_select_on_fileno_wakes_for_every_frame(producer, sock):
    # An event loop: take what is ready (next_frame(timeout=0) until TimeoutError), then wait
    # on the fd. Frames come through the shared-memory ring, not the socket: the fd must
    # still become readable for each (the producer sends a Wake), paced or not.
    import select

    n = 40
    producer("--size", "160x90", "--frames", n, "--fps", "120")
    seqs = []
    with dp.Receiver(sock) as rx:
        while len(seqs) < n:
            try:
                frame = rx.next_frame(timeout=0)
            except TimeoutError:
                ready, _, _ = select.select([rx], [], [], 5.0)
                assert ready, f"fd not readable within 5 s after {len(seqs)} frames"
                continue
            if frame is None:
                break
            with frame:
                assert frame.verify() is True
                seqs.append(frame.seq)
    assert seqs == list(range(n)), seqs
