"""Type stubs for dmabuf_pipeline: zero-copy video frames as numpy arrays and DLPack tensors.

Shapes: a plane is ``(rows, pixels)`` (one sample per pixel) or ``(rows, pixels, channels)``
(interleaved samples); dtype ``uint8``, or ``uint16`` little-endian for 10-bit formats.
Times: ``pts`` in seconds (float), ``pts_ns`` / ``publish_ns`` in nanoseconds (int).
Errors: ``ConnectionError`` (nothing listens), ``TimeoutError``, ``ValueError`` (bad
argument), :class:`Error` (refused by the producer, allocation failed …), :class:`ProducerGone`
(the producer died or broke the protocol), :class:`FrameReleased` (pixels touched after
release).
"""

from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np

FORMATS: Tuple[str, ...]

class Error(Exception):
    """Base class of this package's errors; the message is the library's."""

class ProducerGone(ConnectionError):
    """The producer closed the connection, or broke the protocol, mid-stream."""

class FrameReleased(ValueError):
    """A frame's pixels were touched after the frame was released (or published)."""

class PlaneArray(np.ndarray):
    """A plane: an ndarray view of the shared buffer, refusing access once its frame is
    released (or its receiver closed). Copies are plain ndarrays. ``numpy.asarray(plane)``,
    ``numpy.ascontiguousarray``, ``memoryview(plane)``, ``.base``, ``.data``, ``.ctypes`` and
    arrays made by DLPack consumers bypass the guard (numpy reads the memory in C): use them
    while the frame is held."""

    def __dlpack__(
        self,
        *,
        stream: Optional[int] = ...,
        max_version: Optional[Tuple[int, int]] = ...,
        dl_device: Optional[Tuple[int, int]] = ...,
        copy: Optional[bool] = ...,
    ) -> Any: ...

class Frame:
    """A received frame; release it (``with frame:`` or :meth:`release`) to give the buffer
    back to the producer."""

    @property
    def seq(self) -> int: ...
    @property
    def pts(self) -> float:
        """Presentation time in seconds on the stream's clock."""
    @property
    def pts_ns(self) -> int: ...
    @property
    def publish_ns(self) -> int:
        """CLOCK_MONOTONIC nanoseconds when the producer published the frame."""
    @property
    def buffer_id(self) -> int: ...
    @property
    def format(self) -> str:
        """DRM format name: NV12, I420, YUYV, XRGB8888, P010, …"""
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def colorimetry(self) -> dict:
        """H.273 code points: matrix, range (1 limited, 2 full), primaries, transfer,
        chroma_location."""
    @property
    def stream(self) -> dict: ...
    @property
    def released(self) -> bool: ...
    @property
    def planes(self) -> Tuple[PlaneArray, ...]:
        """Read-only views of the shared buffer (no copy); raises FrameReleased after
        release."""
    def plane_mappings(self) -> list:
        """(start, length) of the mapping each plane lies in."""
    def tobytes(self) -> bytes:
        """A copy: visible bytes, plane after plane, no row padding (FFmpeg rawvideo)."""
    def verify(self) -> Optional[bool]:
        """The producer's checksum recomputed over the shared memory (None: none sent)."""
    def intact(self) -> bool:
        """False once the producer dropped this receiver (it may reuse the buffer): ask after
        using the pixels."""
    def to_rgb(self) -> np.ndarray:
        """A converted copy: (height, width, 3) uint8 RGB."""
    def release(self) -> None: ...
    def __enter__(self) -> "Frame": ...
    def __exit__(self, *exc: Any) -> None: ...

class Receiver:
    """Connect to a producer's socket and receive its frames. Methods may be called from any
    thread; ``close()`` wakes a ``next_frame()`` waiting in another thread."""

    def __init__(
        self,
        path: str = ...,
        formats: Optional[Sequence[str]] = ...,
        memory: Optional[Sequence[str]] = ...,
        timeout: float = ...,
    ) -> None: ...
    @property
    def stream(self) -> dict:
        """format, width, height, fps (num, den), memory, allocator, modifier, buffer_count,
        colorimetry, sar, rotation (degrees), mirror."""
    @property
    def ended(self) -> Optional[Tuple[str, str]]:
        """(reason, message) once the producer ended the stream, e.g. ("end-of-stream", …)."""
    @property
    def held(self) -> int: ...
    def next_frame(self, timeout: Optional[float] = ...) -> Optional[Frame]:
        """The next frame; None at the end of the stream; TimeoutError after timeout s."""
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def __iter__(self) -> Iterator[Frame]: ...
    def __enter__(self) -> "Receiver": ...
    def __exit__(self, *exc: Any) -> None: ...

class WritableFrame:
    """A pool buffer to draw into; published when its ``with`` block exits normally."""

    pts: Optional[float]
    @property
    def released(self) -> bool: ...
    @property
    def buffer_id(self) -> int: ...
    @property
    def planes(self) -> Tuple[PlaneArray, ...]:
        """Writable views of the shared pool buffer."""
    def publish(self, pts: Optional[float] = ...) -> int:
        """Publish now (pts in seconds); returns the consumers it went to."""
    def __enter__(self) -> "WritableFrame": ...
    def __exit__(self, *exc: Any) -> None: ...

class Publisher:
    """Serve frames drawn in Python to any consumer of the protocol."""

    def __init__(
        self,
        path: str,
        width: int,
        height: int,
        format: str = ...,
        fps: float = ...,
        buffers: int = ...,
        alloc: str = ...,
        checksum: bool = ...,
    ) -> None: ...
    @property
    def stream(self) -> dict: ...
    @property
    def consumers(self) -> int: ...
    @property
    def frames(self) -> int: ...
    def serve(self, timeout: float = ...) -> None:
        """Accept consumers and read releases for up to timeout seconds."""
    def wait_for_consumers(self, n: int = ..., timeout: Optional[float] = ...) -> bool: ...
    def frame(self, timeout: Optional[float] = ...) -> WritableFrame:
        """A free buffer (TimeoutError when none frees within timeout s)."""
    def close(self, grace: float = ..., error: Optional[str] = ...) -> None:
        """End the stream: end-of-stream, or with ``error`` an internal-error Goodbye."""
    def __enter__(self) -> "Publisher": ...
    def __exit__(self, *exc: Any) -> None: ...
