"""Zero-copy video frames between processes, as numpy arrays and DLPack tensors.

Receive::

    import dmabuf_pipeline as dp
    with dp.Receiver("/tmp/frames.sock") as rx:
        for frame in rx:                      # blocks (GIL released; Ctrl-C works)
            with frame:                       # the buffer goes back to the producer on exit
                y, uv = frame.planes          # read-only views of the shared buffer, no copy
                print(frame.seq, frame.pts, y.shape, uv.shape)

Publish::

    with dp.Publisher("/tmp/frames.sock", width=1280, height=720, format="NV12", fps=30) as pub:
        for i in range(300):
            with pub.frame() as f:            # a free pool buffer; published on exit
                f.planes[0][:] = i % 256      # writable views of the shared buffer
                f.planes[1][:] = 128

A plane is a :class:`PlaneArray`, an ``numpy.ndarray`` subclass over the shared mapping. Its
memory stays mapped as long as any array lives (never a dangling pointer), but the frame, not
its arrays, decides how long the buffer is held: release it (``with frame:``,
``frame.release()``, or drop every reference to the frame) and the buffer belongs to the
producer again, so touching a plane array (or a view of it) raises :class:`FrameReleased`
instead of reading memory that is being reused. Closing the receiver, or being dropped by the
producer, revokes held frames the same way. Copies (``plane.copy()``, ``astype``, fancy
indexing, arithmetic results) are plain arrays of your own. What numpy does in C without asking
the subclass is not guarded: ``numpy.asarray(plane)``, ``numpy.array(plane, copy=False)``,
``numpy.ascontiguousarray``, ``memoryview(plane)``, ``plane.base``, ``plane.data``,
``plane.ctypes``, ``as_strided``, and arrays a DLPack consumer made (``np.from_dlpack``,
``torch.from_dlpack``) read the memory directly: use them while the frame is held.

Planes support DLPack (``numpy.from_dlpack(plane)``, ``torch.from_dlpack(plane)``), on the CPU
device, without a copy. Received planes are read-only: the export carries DLPack 1.0's
read-only flag, so a consumer must ask for a versioned export (NumPy >= 2 and current PyTorch
do); DLPack 0.x cannot say "read-only" and is refused with ``BufferError``.
"""

from __future__ import annotations

import os
import time
from typing import Iterator, Optional, Sequence

import numpy as np

from . import _native
from ._native import Error, FrameReleased, ProducerGone

__all__ = [
    "Receiver",
    "Frame",
    "Publisher",
    "WritableFrame",
    "PlaneArray",
    "Error",
    "FrameReleased",
    "ProducerGone",
    "FORMATS",
]

#: The pixel formats carried, by DRM name.
FORMATS: tuple = tuple(_native.formats())

_METADATA_ONLY = frozenset(
    {
        "__array_finalize__",
        "__array_ufunc__",
        "__array_function__",
        "__class__",
        "__del__",
        "__dir__",
        "__doc__",
        "__getattribute__",
        "__init__",
        "__init_subclass__",
        "__new__",
        "__setattr__",
        "__delattr__",
        "__sizeof__",
        "__subclasshook__",
        "__len__",
        "__hash__",
        "__class_getitem__",
        "__array_priority__",
        "__getattr__",
        "__dlpack_device__",
        "__setstate__",
        "__getstate__",
        "__repr__",
        "__str__",
    }
)


class PlaneArray(np.ndarray):
    """A plane of a frame: an ``ndarray`` view of the shared buffer that refuses access once
    the frame is released.

    Shape ``(rows, pixels)`` for one sample per pixel (Y, U, V planes, grey), ``(rows, pixels,
    channels)`` for interleaved samples (NV12's CbCr plane: 2; YUYV: 2, Y and alternately Cb/Cr;
    XRGB8888: 4, bytes B, G, R, X); dtype ``uint8``, or ``uint16`` (little-endian) for 10-bit
    formats (P010's samples MSB-aligned, S010/S210/S410's LSB-aligned). Strides come from the
    producer's layout (rows may be padded). Slices and views of a plane are guarded too.
    """

    _owner = None  # the frame's token (``released``, ``seq``, ``what``)

    def __array_finalize__(self, obj):
        # Views of the shared buffer stay guarded; copies (copy(), astype(), fancy indexing …)
        # are the caller's own memory and are not tied to the frame.
        owner = getattr(obj, "_owner", None)
        if owner is not None and isinstance(obj, np.ndarray) and np.may_share_memory(self, obj):
            self._owner = owner
        else:
            self._owner = None

    def _check(self):
        owner = self._owner
        if owner is not None and owner.released:
            raise FrameReleased(
                f"{owner.what} {owner.seq} was released (or its receiver closed): its buffer "
                "belongs to the producer again (copy() what must outlive the frame)"
            )

    @property
    def flat(self):
        self._check()
        return np.ndarray.flat.__get__(self)

    def __repr__(self):
        owner = self._owner
        if owner is not None and owner.released:
            return f"<PlaneArray {self.shape} {self.dtype} of released {owner.what} {owner.seq}>"
        return np.ndarray.__repr__(np.ndarray.view(self, np.ndarray)).replace("array(", "PlaneArray(", 1)

    __str__ = __repr__

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(_plain(x) for x in inputs)
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        _check_all(args)
        _check_all(kwargs.values())
        return super().__array_function__(func, types, args, kwargs)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        self._check()
        kwargs = {"stream": stream}
        if max_version is not None:
            kwargs["max_version"] = max_version
        if dl_device is not None:
            kwargs["dl_device"] = dl_device
        if copy is not None:
            kwargs["copy"] = copy
        try:
            return np.ndarray.__dlpack__(self.view(np.ndarray), **kwargs)
        except TypeError:
            # NumPy 1.x: no keyword arguments but stream.
            return np.ndarray.__dlpack__(self.view(np.ndarray), stream=stream)


def _plain(x):
    """A PlaneArray (checked) as a plain ndarray view; tuples (ufunc ``out``) likewise."""
    if isinstance(x, PlaneArray):
        x._check()
        return np.ndarray.view(x, np.ndarray)
    if isinstance(x, tuple):
        return tuple(_plain(y) for y in x)
    return x


def _check_all(xs):
    """Check every PlaneArray among numpy-function arguments (lists and tuples of them too)."""
    for x in xs:
        if isinstance(x, PlaneArray):
            x._check()
        elif isinstance(x, (list, tuple)):
            _check_all(x)


def _guard(name):
    base = getattr(np.ndarray, name)

    def guarded(self, *args, **kwargs):
        self._check()
        r = base(self, *args, **kwargs)
        if isinstance(r, PlaneArray) and r._owner is None:
            return np.ndarray.view(r, np.ndarray)  # a copy: the caller's own, plain array
        return r

    guarded.__name__ = name
    guarded.__doc__ = base.__doc__
    return guarded


# Every ndarray method that can read or write the pixels goes through the check (ufuncs and
# numpy functions through __array_ufunc__/__array_function__ above).
for _name in dir(np.ndarray):
    if _name in _METADATA_ONLY or _name in PlaneArray.__dict__:
        continue
    _attr = getattr(np.ndarray, _name, None)
    if callable(_attr) and not isinstance(_attr, type):
        try:
            setattr(PlaneArray, _name, _guard(_name))
        except (AttributeError, TypeError):
            pass
del _name, _attr


def _plane_arrays(owner, memories) -> tuple:
    arrays = []
    for m in memories:
        a = np.asarray(m).view(PlaneArray)
        a._owner = owner
        arrays.append(a)
    return tuple(arrays)


class Frame:
    """A received frame. Its planes view the producer's buffer; release it (``with frame:``,
    ``frame.release()``, or drop every reference to the frame — its plane arrays do not hold
    it) to give the buffer back.

    Attributes: ``seq`` (sequence number; a gap is frames this receiver did not get),
    ``pts`` (seconds, float) and ``pts_ns`` (int, the stream's clock), ``publish_ns``
    (``CLOCK_MONOTONIC`` when published), ``buffer_id``, ``format`` (DRM name, e.g. ``"NV12"``),
    ``width``, ``height``, ``colorimetry`` (H.273 code points: ``matrix``, ``range`` (1 limited,
    2 full), ``primaries``, ``transfer``, ``chroma_location``).
    """

    __slots__ = ("_f", "_planes", "_stream")

    def __init__(self, native):
        self._f = native
        self._planes = None
        self._stream = native.stream

    # --- metadata ---
    @property
    def seq(self) -> int:
        return self._f.seq

    @property
    def pts_ns(self) -> int:
        return self._f.pts_ns

    @property
    def pts(self) -> float:
        return self._f.pts_ns / 1e9

    @property
    def publish_ns(self) -> int:
        return self._f.publish_ns

    @property
    def buffer_id(self) -> int:
        return self._f.buffer_id

    @property
    def format(self) -> str:
        return self._stream["format"]

    @property
    def width(self) -> int:
        return self._stream["width"]

    @property
    def height(self) -> int:
        return self._stream["height"]

    @property
    def colorimetry(self) -> dict:
        return dict(self._stream["colorimetry"])

    @property
    def stream(self) -> dict:
        """Everything the producer said about the stream (format, size, fps, memory,
        allocator, modifier, colorimetry, sample aspect ratio, rotation)."""
        return dict(self._stream)

    @property
    def released(self) -> bool:
        return self._f.released

    # --- pixels ---
    @property
    def planes(self) -> tuple:
        """The planes as read-only :class:`PlaneArray` views of the shared buffer (no copy).
        Raises :class:`FrameReleased` after release."""
        if self._f.released:
            raise FrameReleased(f"frame {self.seq} was released")
        if self._planes is None:
            self._planes = _plane_arrays(self._f.token, self._f.planes())
        return self._planes

    def intact(self) -> bool:
        """Whether the frame is still intact: False once the producer dropped this receiver
        (for holding frames too long) and may reuse the buffer. Ask after using the pixels;
        False means throw the result away. (The drop also revokes the frame at the receiver's
        next read.)"""
        return self._f.intact()

    def plane_mappings(self) -> list:
        """``(start, length)`` of the mapping each plane lies in (to check zero-copy)."""
        if self._f.released:
            raise FrameReleased(f"frame {self.seq} was released")
        return [m.mapping for m in self._f.planes()]

    def tobytes(self) -> bytes:
        """A copy of the visible pixels, plane after plane without row padding (FFmpeg's
        ``rawvideo`` layout, as ``consumer --dump-raw`` writes)."""
        return self._f.tobytes()

    def verify(self) -> Optional[bool]:
        """Recompute the producer's checksum over the shared memory: True, False, or None when
        the producer sent none."""
        return self._f.verify()

    def to_rgb(self) -> np.ndarray:
        """A converted **copy**: ``(height, width, 3)`` uint8 RGB, using the stream's matrix
        (BT.601, BT.709, BT.2020 …) and range, chroma upsampled by repetition. For display and
        quick looks, not colour-exact work."""
        return _to_rgb(self.planes, self.format, self.width, self.height, self.colorimetry)

    def release(self) -> None:
        """Give the buffer back to the producer (idempotent). The planes refuse access after."""
        self._planes = None
        self._f.release()

    def __enter__(self) -> "Frame":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else f"buffer {self.buffer_id}"
        return f"<Frame seq={self.seq} {self.format} {self.width}x{self.height} pts={self.pts:.6f} {state}>"


class Receiver:
    """Connect to a producer's socket and receive its frames.

    ``formats`` limits the pixel formats offered (DRM names; default: every carried one),
    ``memory`` the kinds of memory (``"memfd"``, ``"dma-buf"``; default both), ``timeout`` the
    seconds to wait for the producer's welcome. Raises ``ConnectionError`` when nothing
    listens there, :class:`Error` when the producer refuses (no format in common, full),
    ``TimeoutError``.

    Iterating yields :class:`Frame` objects until the producer ends the stream (or the
    receiver is closed, from any thread); a producer that dies, breaks the protocol or drops
    this receiver (it held every buffer past the producer's stall timeout) raises
    :class:`ProducerGone`. Release each frame (``with
    frame:``) before asking for many more: the producer's pool is small (``stream
    ["buffer_count"]``) and a receiver holding every buffer stalls the stream.
    """

    def __init__(
        self,
        path: str = "/tmp/dmabuf-frames.sock",
        formats: Optional[Sequence[str]] = None,
        memory: Optional[Sequence[str]] = None,
        timeout: float = 5.0,
    ):
        self._rx = _native.Receiver(
            os.fsdecode(path),
            list(formats) if formats is not None else None,
            list(memory) if memory is not None else None,
            timeout,
        )

    @property
    def stream(self) -> dict:
        """The stream now: format, width, height, fps, memory, allocator, modifier,
        buffer_count, colorimetry, sar, rotation, mirror."""
        return self._rx.stream

    @property
    def ended(self) -> Optional[tuple]:
        """``(reason, message)`` once the producer ended the stream."""
        return self._rx.ended

    @property
    def held(self) -> int:
        """Frames received and not yet released."""
        return self._rx.held

    def next_frame(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """The next frame, or None when the stream ended; waits up to ``timeout`` seconds
        (None: forever) and raises ``TimeoutError`` after."""
        f = self._rx.next_frame(timeout)
        return None if f is None else Frame(f)

    def fileno(self) -> int:
        """The connection's fd, for ``select``/asyncio: readable when an event waits, once a
        ``next_frame`` call has found none (call ``next_frame(timeout=0)`` until it raises
        ``TimeoutError``, then wait on the fd; with the shared-memory ring that is what asks
        the producer to make the fd readable for the next frame)."""
        return self._rx.fileno()

    def close(self) -> None:
        """Say goodbye and disconnect."""
        self._rx.close()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            f = self.next_frame()
            if f is None:
                return
            yield f

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WritableFrame:
    """A free pool buffer to draw into (from :meth:`Publisher.frame`). ``planes`` are writable
    :class:`PlaneArray` views of the shared buffer; leaving the ``with`` block publishes the
    frame (``pts`` set on the frame, or the time since the publisher started); an exception
    inside the block gives the buffer back unpublished."""

    __slots__ = ("_w", "_pub", "_planes", "pts")

    def __init__(self, native, publisher):
        self._w = native
        self._pub = publisher
        self._planes = None
        self.pts: Optional[float] = None

    @property
    def released(self) -> bool:
        return self._w.released

    @property
    def buffer_id(self) -> int:
        return self._w.buffer_id

    @property
    def planes(self) -> tuple:
        if self._w.released:
            raise FrameReleased("this frame was already published")
        if self._planes is None:
            self._planes = _plane_arrays(self._w.token, self._w.planes())
        return self._planes

    def publish(self, pts: Optional[float] = None) -> int:
        """Publish now (``pts`` in seconds); returns the consumers it went to."""
        self._planes = None
        return self._pub._pub.publish(self._w, self.pts if pts is None else pts)

    def __enter__(self) -> "WritableFrame":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._w.released:
            return
        if exc_type is None:
            self.publish()
        else:
            self._planes = None
            self._w.drop_unpublished()


class Publisher:
    """Serve frames drawn in Python to consumers (the Rust consumer, another Python process,
    any peer of ``docs/PROTOCOL.md``).

    ``path`` is the socket to listen on; ``width``, ``height``, ``format`` (a DRM name such as
    ``"NV12"``, ``"I420"``, ``"XRGB8888"``, ``"P010"``; see :data:`FORMATS`), ``fps`` the nominal
    rate announced (pacing is the caller's), ``buffers`` the pool size (2-64), ``alloc`` the
    allocator (``"auto"``: dma-heap, udmabuf, GBM, then sealed memfd; or one of them),
    ``checksum`` whether each frame carries a checksum consumers can verify (one read of the
    frame per publish).

    Consumers are accepted and their releases read while :meth:`frame` waits and on every
    publish; call :meth:`serve` while idle for longer.
    """

    def __init__(
        self,
        path: str,
        width: int,
        height: int,
        format: str = "NV12",
        fps: float = 30.0,
        buffers: int = 4,
        alloc: str = "auto",
        checksum: bool = True,
    ):
        self._pub = _native.Publisher(
            os.fsdecode(path), width, height, format, fps, buffers, alloc, checksum
        )

    @property
    def stream(self) -> dict:
        return self._pub.stream

    @property
    def consumers(self) -> int:
        """Consumers connected now."""
        return self._pub.consumers

    @property
    def frames(self) -> int:
        """Frames published so far."""
        return self._pub.frames

    def serve(self, timeout: float = 0.0) -> None:
        """Accept consumers and read their releases for up to ``timeout`` seconds."""
        self._pub.serve(timeout)

    def wait_for_consumers(self, n: int = 1, timeout: Optional[float] = None) -> bool:
        """Serve until ``n`` consumers are connected (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pub.consumers < n:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._pub.serve(0.05)
        return True

    def frame(self, timeout: Optional[float] = None) -> WritableFrame:
        """A free buffer to draw the next frame into, waiting up to ``timeout`` seconds
        (None: until consumers release one); raises ``TimeoutError`` after."""
        w = self._pub.acquire(timeout)
        if w is None:
            raise TimeoutError(
                f"no free buffer within {timeout} s: consumers hold them all, or frames of yours "
                "not yet published do"
            )
        return WritableFrame(w, self)

    def close(self, grace: float = 1.0, error: Optional[str] = None) -> None:
        """End the stream and remove the socket: consumers get end-of-stream, or with
        ``error`` an internal-error Goodbye carrying that text (the publisher failed)."""
        self._pub.close(grace, error)

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            # Consumers must not take a crash for a clean end of stream.
            self.close(error=f"the Python publisher failed: {exc_type.__name__}: {exc}"[:100])


# --- conversion (a copy, for convenience) -----------------------------------------------------

# Kr, Kb of the H.273 matrices.
_MATRICES = {
    1: (0.2126, 0.0722),  # BT.709
    4: (0.30, 0.11),  # FCC
    5: (0.299, 0.114),  # BT.470BG (BT.601)
    6: (0.299, 0.114),  # SMPTE 170M (BT.601)
    7: (0.212, 0.087),  # SMPTE 240M
    9: (0.2627, 0.0593),  # BT.2020 non-constant luminance
    10: (0.2627, 0.0593),  # BT.2020 constant luminance (approximated as NCL)
}


def _component(planes, info, c, width, height):
    plane, offset, step = info["components"][c]
    hsub, vsub, block_w, block_bytes = info["planes"][plane]
    sb = info["sample_bytes"]
    arr = planes[plane].view(np.ndarray)
    raw = arr.view(np.uint8).reshape(arr.shape[0], -1)  # (rows, row_bytes)
    pw = -(-width // hsub)
    px = np.arange(pw)
    idx = (px // block_w) * block_bytes + offset + (px % block_w) * step
    v = raw[:, idx].astype(np.uint32)
    if sb == 2:
        v = v | (raw[:, idx + 1].astype(np.uint32) << 8)
    v >>= info["shift"]
    ys = np.arange(height) // vsub
    xs = np.arange(width) // hsub
    return v[ys][:, xs].astype(np.float32)


def _to_rgb(planes, fmt, width, height, color):
    info = _native.format_info(fmt)
    maxv = float((1 << info["bits"]) - 1)
    if info["model"] == "rgb":
        rgb = np.stack([_component(planes, info, c, width, height) for c in range(3)], axis=-1)
        return np.clip(rgb * (255.0 / maxv) + 0.5, 0, 255).astype(np.uint8)
    y = _component(planes, info, 0, width, height)
    scale = float(1 << (info["bits"] - 8))
    full = color.get("range") == 2
    if full:
        yn = y / maxv
    else:
        yn = (y - 16 * scale) / (219 * scale)
    if info["model"] == "grey":
        g = np.clip(yn * 255 + 0.5, 0, 255).astype(np.uint8)
        return np.stack([g, g, g], axis=-1)
    cb = _component(planes, info, 1, width, height)
    cr = _component(planes, info, 2, width, height)
    if full:
        cbn = (cb - 128 * scale) / maxv
        crn = (cr - 128 * scale) / maxv
    else:
        cbn = (cb - 128 * scale) / (224 * scale)
        crn = (cr - 128 * scale) / (224 * scale)
    m = color.get("matrix", 2)
    if m not in _MATRICES:  # unspecified: BT.709 for HD, BT.601 below
        m = 1 if height >= 720 else 5
    kr, kb = _MATRICES[m]
    kg = 1.0 - kr - kb
    r = yn + 2 * (1 - kr) * crn
    b = yn + 2 * (1 - kb) * cbn
    g = (yn - kr * r - kb * b) / kg
    rgb = np.stack([r, g, b], axis=-1)
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
