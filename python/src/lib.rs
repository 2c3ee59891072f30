//! `dmabuf_pipeline._native`: the Rust half of the Python package, over `dmabuf-core`'s
//! [`Receiver`] and [`Publisher`].
//!
//! It hands Python *plane memories*: small objects with an `__array_interface__` that numpy
//! turns into arrays viewing the shared mapping (no copy). Each keeps the mapping it points into
//! alive, so an array can never dangle; `dmabuf_pipeline/__init__.py` wraps them in a guarded
//! ndarray subclass that refuses access once the frame is released (the buffer then belongs to
//! the producer again). The GIL is released while waiting, in slices of 100 ms between which
//! signals are checked, so Ctrl-C interrupts a wait.

use dmabuf_core::alloc::AllocChoice;
use dmabuf_core::format::{plane_geometry, ColorModel, FrameLayout, PlaneLayout};
use dmabuf_core::mapping::CpuMapping;
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::wire::{printable, ColorInfo, GoodbyeReason, Welcome};
use dmabuf_core::proto::ProtoError;
use dmabuf_core::publisher::{
    FrameMeta, PublishError, Publisher as CorePublisher, PublisherOptions,
};
use dmabuf_core::receiver::{linear_caps, FrameGuard, Receiver as CoreReceiver, ReceiverEvent};
use dmabuf_core::{FrameBuffer, FrameFormat, MemoryKind, PixelFormat};
use pyo3::exceptions::{PyConnectionError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pyo3::create_exception!(
    _native,
    Error,
    pyo3::exceptions::PyException,
    "Base class of this package's errors; the message is the library's."
);
pyo3::create_exception!(
    _native,
    ProducerGone,
    PyConnectionError,
    "The producer closed the connection, or broke the protocol, mid-stream."
);
pyo3::create_exception!(
    _native,
    FrameReleased,
    PyValueError,
    "A frame's pixels were touched after the frame was released (or published)."
);

/// A Goodbye reason as Python sees it.
fn reason_name(r: GoodbyeReason) -> &'static str {
    match r {
        GoodbyeReason::EndOfStream => "end-of-stream",
        GoodbyeReason::ProtocolError => "protocol-error",
        GoodbyeReason::Unsupported => "unsupported",
        GoodbyeReason::VersionMismatch => "version-mismatch",
        GoodbyeReason::Leaving => "leaving",
        GoodbyeReason::InternalError => "internal-error",
    }
}

/// How long the GIL is released at a time while waiting (signals are checked in between).
const SLICE: Duration = Duration::from_millis(100);

/// An error while connecting: nothing listens (`ConnectionError`), no answer in time
/// (`TimeoutError`), or a refusal (`Error`, with the producer's reason).
fn connect_err(path: &std::path::Path, e: ProtoError) -> PyErr {
    match e {
        ProtoError::Timeout { .. } => PyTimeoutError::new_err(format!("{}: {e}", path.display())),
        ProtoError::Path { .. } => PyConnectionError::new_err(e.to_string()),
        e => Error::new_err(format!("{}: {e}", path.display())),
    }
}

/// An error mid-stream: the producer died, hung up or broke the protocol.
fn stream_err(e: ProtoError) -> PyErr {
    match e {
        ProtoError::Timeout { .. } => PyTimeoutError::new_err(e.to_string()),
        e => ProducerGone::new_err(e.to_string()),
    }
}

fn publish_err(e: PublishError) -> PyErr {
    match e {
        PublishError::Proto(ProtoError::Timeout { .. }) => PyTimeoutError::new_err(e.to_string()),
        PublishError::Buffers(_) => PyValueError::new_err(e.to_string()),
        e => Error::new_err(e.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Longest wait handed to the library; longer ones (and `inf`) mean "no limit" where the
/// call takes one, this otherwise (a deadline past it would overflow the clock).
const LONGEST: f64 = 1e6;

/// A timeout in seconds: `None` (and anything beyond [`LONGEST`]) is no limit.
fn seconds(t: Option<f64>) -> PyResult<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(s) if s.is_nan() || s < 0.0 => Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds, not {s}"
        ))),
        Some(s) if s > LONGEST => Ok(None),
        Some(s) => Ok(Some(Duration::from_secs_f64(s))),
    }
}

/// A bounded duration in seconds (connect timeouts, grace periods): capped at [`LONGEST`].
fn bounded(s: f64, what: &str) -> PyResult<Duration> {
    if s.is_nan() || s < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds, not {s}"
        )));
    }
    Ok(Duration::from_secs_f64(s.min(LONGEST)))
}

/// Wait in GIL-free slices until `step` gives a value, the deadline passes (`Ok(None)`), or a
/// signal handler raises.
fn wait_sliced<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    mut step: impl FnMut(Duration) -> PyResult<Option<T>> + Send,
) -> PyResult<Option<T>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        if let Some(v) = py.detach(|| step(slice))? {
            return Ok(Some(v));
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}

/// Run a blocking library call that cannot be sliced (a handshake, a publisher's last grace
/// period) on its own thread, waiting for it GIL-free in slices between which signals are
/// checked: Ctrl-C interrupts the wait (the call finishes on its thread and is dropped).
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    f: impl FnOnce() -> T + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    // (A Mutex makes the receiving end shareable with the GIL-free closure.)
    let rx = Mutex::new(rx);
    loop {
        match py.detach(|| lock(&rx).recv_timeout(SLICE)) {
            Ok(v) => return Ok(v),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::new_err(
                    "the library call's thread ended without an answer",
                ))
            }
        }
    }
}

/// What keeps a plane's memory mapped (held, never read).
#[allow(dead_code)]
enum Keeper {
    /// A receiver's read-only mappings of one buffer (one per fd).
    Mapped(Arc<Vec<Arc<CpuMapping>>>),
    /// A publisher's pool (its buffers stay mapped while any clone lives).
    Pool(Pool),
}

/// One plane of a frame, as numpy's array interface: a view of the shared mapping. Holds the
/// mapping (never a dangling pointer); the guard against reading reused memory is the frame's.
#[pyclass(module = "dmabuf_pipeline._native", frozen)]
struct PlaneMemory {
    _keeper: Keeper,
    addr: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
    typestr: &'static str,
    readonly: bool,
    /// Start and length of the whole mapping the plane lies in (for zero-copy checks).
    mapping: (usize, usize),
}

#[pymethods]
impl PlaneMemory {
    /// numpy's array interface (version 3): shape, strides in bytes, typestr, data address.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("strides", PyTuple::new(py, &self.strides)?)?;
        d.set_item("typestr", self.typestr)?;
        d.set_item("data", (self.addr, self.readonly))?;
        Ok(d)
    }

    /// `(start, length)` of the mapping the plane lies in.
    #[getter]
    fn mapping(&self) -> (usize, usize) {
        self.mapping
    }
}

/// Shape, strides and typestr of plane `i`: `(rows, pixels)` for one sample per pixel,
/// `(rows, pixels, channels)` for interleaved samples; 16-bit samples as `<u2`.
fn plane_shape(
    pixel: PixelFormat,
    i: usize,
    pl: &PlaneLayout,
) -> (Vec<usize>, Vec<usize>, &'static str) {
    let info = pixel.planes()[i];
    let sb = pixel.sampling().sample_bytes;
    let channels = (info.block_bytes / sb / info.block_w).max(1) as usize;
    let elems = (pl.row_bytes / sb) as usize;
    let pixels = elems / channels;
    let sb = sb as usize;
    let typestr = if sb == 2 { "<u2" } else { "|u1" };
    if channels == 1 {
        (
            vec![pl.rows as usize, pixels],
            vec![pl.stride as usize, sb],
            typestr,
        )
    } else {
        (
            vec![pl.rows as usize, pixels, channels],
            vec![pl.stride as usize, channels * sb, sb],
            typestr,
        )
    }
}

fn color_dict<'py>(py: Python<'py>, c: &ColorInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("matrix", c.matrix)?;
    d.set_item("range", c.range)?;
    d.set_item("primaries", c.primaries)?;
    d.set_item("transfer", c.transfer)?;
    d.set_item("chroma_location", c.chroma_location)?;
    Ok(d)
}

/// What a frame's format says, for Python.
fn stream_dict<'py>(py: Python<'py>, w: &Welcome) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("format", w.pixel.name())?;
    d.set_item("fourcc", w.pixel.fourcc())?;
    d.set_item("width", w.width)?;
    d.set_item("height", w.height)?;
    d.set_item("fps", (w.fps_num, w.fps_den))?;
    d.set_item("modifier", w.modifier)?;
    d.set_item("memory", w.memory.name())?;
    d.set_item("allocator", w.allocator.name())?;
    d.set_item("buffer_count", w.buffer_count)?;
    d.set_item("colorimetry", color_dict(py, &w.color)?)?;
    d.set_item("sar", (w.geometry.sar_num, w.geometry.sar_den))?;
    d.set_item("rotation", u32::from(w.geometry.rotation) * 90)?;
    d.set_item("mirror", w.geometry.mirror)?;
    Ok(d)
}

/// How the format's samples are laid out, for the numpy conversion in `to_rgb`.
#[pyfunction]
fn format_info<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
    let pixel: PixelFormat = name
        .parse()
        .map_err(|e| PyValueError::new_err(format!("{e}")))?;
    let s = pixel.sampling();
    let d = PyDict::new(py);
    d.set_item("name", pixel.name())?;
    d.set_item(
        "model",
        match s.model {
            ColorModel::Yuv => "yuv",
            ColorModel::Grey => "grey",
            ColorModel::Rgb => "rgb",
        },
    )?;
    let planes: Vec<_> = pixel
        .planes()
        .iter()
        .map(|p| (p.hsub, p.vsub, p.block_w, p.block_bytes))
        .collect();
    d.set_item("planes", planes)?;
    let comps: Vec<_> = s
        .components
        .iter()
        .map(|c| (c.plane, c.offset, c.step))
        .collect();
    d.set_item("components", comps)?;
    d.set_item("sample_bytes", s.sample_bytes)?;
    d.set_item("bits", s.bits)?;
    d.set_item("shift", s.shift)?;
    Ok(d)
}

/// The formats carried, by DRM name.
#[pyfunction]
fn formats() -> Vec<&'static str> {
    PixelFormat::ALL.iter().map(|p| p.name()).collect()
}

// --- receiving -------------------------------------------------------------------------

/// Whether a frame may still be read: false once it is released (or dropped), or once its
/// receiver is closed or was dropped by the producer (the buffers are the producer's again).
/// Plane arrays hold this, not the frame: dropping the frame releases it.
#[pyclass(module = "dmabuf_pipeline._native", frozen)]
struct FrameToken {
    released: Arc<AtomicBool>,
    session: Arc<AtomicBool>,
    #[pyo3(get)]
    seq: u64,
    #[pyo3(get)]
    what: &'static str,
}

#[pymethods]
impl FrameToken {
    /// True once the pixels must not be read any more.
    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire) || !self.session.load(Ordering::Acquire)
    }
}

struct RxState {
    /// Each added buffer mapped once (read-only), by id: the same address every frame.
    maps: HashMap<u32, Arc<Vec<Arc<CpuMapping>>>>,
    welcome: Welcome,
    ended: Option<(GoodbyeReason, String)>,
}

/// The consumer's end (see `dmabuf_pipeline.Receiver`). Its methods may be called from any
/// thread; `close()` from another thread wakes a `next_frame()` waiting in this one.
#[pyclass(module = "dmabuf_pipeline._native", frozen)]
struct Receiver {
    rx: Mutex<Option<Arc<CoreReceiver>>>,
    state: Mutex<RxState>,
    /// Cleared when the session ends other than by end of stream: held frames are revoked.
    session: Arc<AtomicBool>,
    closed: AtomicBool,
}

fn map_buffer(b: &FrameBuffer) -> Result<Vec<Arc<CpuMapping>>, String> {
    b.fds
        .iter()
        .zip(&b.fd_sizes)
        .map(|(fd, &len)| {
            CpuMapping::new(fd.clone(), len, false, b.memory)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn memory_kinds(kinds: Option<Vec<String>>) -> PyResult<Vec<MemoryKind>> {
    let Some(kinds) = kinds else {
        return Ok(MemoryKind::ALL.to_vec());
    };
    if kinds.is_empty() {
        return Err(PyValueError::new_err(
            "memory must name at least one kind: \"memfd\", \"dma-buf\"",
        ));
    }
    kinds
        .iter()
        .map(|k| match k.as_str() {
            "memfd" => Ok(MemoryKind::Memfd),
            "dma-buf" | "dmabuf" => Ok(MemoryKind::DmaBuf),
            other => Err(PyValueError::new_err(format!(
                "unknown memory kind {other:?}: expected \"memfd\" or \"dma-buf\""
            ))),
        })
        .collect()
}

fn pixel_formats(names: Option<Vec<String>>) -> PyResult<Vec<PixelFormat>> {
    let Some(names) = names else {
        return Ok(PixelFormat::ALL.to_vec());
    };
    if names.is_empty() {
        return Err(PyValueError::new_err(
            "formats must name at least one pixel format",
        ));
    }
    names
        .iter()
        .map(|n| {
            n.parse::<PixelFormat>()
                .map_err(|e| PyValueError::new_err(format!("{e}")))
        })
        .collect()
}

#[pymethods]
impl Receiver {
    #[new]
    #[pyo3(signature = (path, formats=None, memory=None, timeout=5.0))]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        formats: Option<Vec<String>>,
        memory: Option<Vec<String>>,
        timeout: f64,
    ) -> PyResult<Self> {
        let formats = pixel_formats(formats)?;
        let memory = memory_kinds(memory)?;
        let timeout = bounded(timeout, "timeout")?;
        let caps = linear_caps(&formats, &memory);
        let p = path.clone();
        let rx = interruptible(py, move || CoreReceiver::connect(&p, caps, timeout))?
            .map_err(|e| connect_err(&path, e))?;
        let welcome = rx.welcome();
        Ok(Self {
            rx: Mutex::new(Some(Arc::new(rx))),
            state: Mutex::new(RxState {
                maps: HashMap::new(),
                welcome,
                ended: None,
            }),
            session: Arc::new(AtomicBool::new(true)),
            closed: AtomicBool::new(false),
        })
    }

    /// The stream: format, size, fps, memory, allocator, colorimetry, geometry.
    #[getter]
    fn stream<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let w = lock(&self.state).welcome.clone();
        stream_dict(py, &w)
    }

    /// Why the stream ended (`(reason, message)`, the message with control characters
    /// escaped), or None while it runs.
    #[getter]
    fn ended(&self) -> Option<(String, String)> {
        lock(&self.state)
            .ended
            .as_ref()
            .map(|(r, m)| (reason_name(*r).to_string(), printable(m)))
    }

    /// The socket, for `select`/`poll`/asyncio: readable when an event waits, once a
    /// `next_frame` call has found none (timed out: `next_frame(timeout=0)` until it raises
    /// `TimeoutError`); with the shared-memory ring, that is what asks the producer to make
    /// the socket readable for the next frame.
    fn fileno(&self) -> PyResult<i32> {
        use std::os::fd::{AsFd, AsRawFd};
        Ok(self.live()?.as_fd().as_raw_fd())
    }

    /// The next frame, or None when the producer ended the stream (or the receiver was
    /// closed).
    #[pyo3(signature = (timeout=None))]
    fn next_frame(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Frame>> {
        let timeout = seconds(timeout)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if lock(&self.state).ended.is_some() || self.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            let rx = self.live()?;
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let got = wait_sliced(py, left, |slice| match rx.next_event(Some(slice)) {
                Ok(ev) => Ok(Some(Ok(ev))),
                Err(ProtoError::Timeout { .. }) => Ok(None),
                Err(e) => Ok(Some(Err(e))),
            })?;
            let ev = match got {
                None => {
                    return Err(PyTimeoutError::new_err(format!(
                        "no frame within {:.3} s",
                        timeout.unwrap_or_default().as_secs_f64()
                    )))
                }
                Some(Ok(ev)) => ev,
                Some(Err(_)) if self.closed.load(Ordering::Acquire) => return Ok(None),
                Some(Err(e)) => {
                    // The connection is over: let the producer see EOF, revoke held frames
                    // only if it may reuse them (it did not just die).
                    self.drop_connection("");
                    return Err(stream_err(e));
                }
            };
            match ev {
                ReceiverEvent::BufferAdded(id) => {
                    let buffer = rx
                        .buffer(id)
                        .ok_or_else(|| Error::new_err(format!("buffer {id} vanished")))?;
                    match map_buffer(&buffer) {
                        Ok(maps) => {
                            lock(&self.state).maps.insert(id, Arc::new(maps));
                        }
                        Err(e) => {
                            // Frames would come in a buffer this process cannot read: leave.
                            self.session.store(false, Ordering::Release);
                            self.drop_connection(&format!("cannot map buffer {id}: {e}"));
                            return Err(Error::new_err(format!(
                                "mapping buffer {id}: {e}; the receiver left the stream"
                            )));
                        }
                    }
                }
                ReceiverEvent::BufferRemoved(id) => {
                    lock(&self.state).maps.remove(&id);
                }
                ReceiverEvent::Renegotiated(w) => {
                    let mut st = lock(&self.state);
                    st.maps.clear();
                    st.welcome = *w;
                }
                ReceiverEvent::End(g) => {
                    let normal = matches!(
                        g.reason,
                        GoodbyeReason::EndOfStream | GoodbyeReason::Leaving
                    );
                    let text = printable(&g.message);
                    lock(&self.state).ended = Some((g.reason, g.message));
                    if normal {
                        return Ok(None);
                    }
                    // Dropped (held buffers too long, broke a rule): the producer takes its
                    // buffers back, so frames still held here must not be read.
                    self.session.store(false, Ordering::Release);
                    self.drop_connection("");
                    return Err(ProducerGone::new_err(format!(
                        "the producer ended this receiver's stream ({}): {text}",
                        reason_name(g.reason)
                    )));
                }
                ReceiverEvent::Frame(guard) => {
                    let id = guard.buffer_id();
                    let (maps, welcome) = {
                        let st = lock(&self.state);
                        (st.maps.get(&id).cloned(), st.welcome.clone())
                    };
                    let maps = maps.ok_or_else(|| {
                        ProducerGone::new_err(format!(
                            "frame in buffer {id}, which was never added"
                        ))
                    })?;
                    return Frame::new(guard, maps, welcome, self.session.clone()).map(Some);
                }
            }
        }
    }

    /// Leave: tell the producer (Goodbye `Leaving`) and close. Frames still held are revoked
    /// (their arrays raise): the producer reuses their buffers once this receiver is gone. A
    /// `next_frame()` waiting in another thread returns None.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.session.store(false, Ordering::Release);
        self.drop_connection("closed by the Python receiver");
    }

    /// Frames held now (not yet released).
    #[getter]
    fn held(&self) -> usize {
        lock(&self.rx).as_ref().map_or(0, |r| r.held_count())
    }
}

impl Receiver {
    fn live(&self) -> PyResult<Arc<CoreReceiver>> {
        lock(&self.rx)
            .clone()
            .ok_or_else(|| Error::new_err("the receiver is closed"))
    }

    /// Say goodbye (when `message` is not empty) and shut the connection down.
    fn drop_connection(&self, message: &str) {
        if let Some(rx) = lock(&self.rx).take() {
            rx.leave(if message.is_empty() {
                "leaving"
            } else {
                message
            });
        }
        lock(&self.state).maps.clear();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.session.store(false, Ordering::Release);
    }
}

/// One received frame (see `dmabuf_pipeline.Frame`).
#[pyclass(module = "dmabuf_pipeline._native", frozen)]
struct Frame {
    guard: Mutex<Option<FrameGuard>>,
    maps: Arc<Vec<Arc<CpuMapping>>>,
    layout: FrameLayout,
    plane_fds: Vec<usize>,
    welcome: Welcome,
    token: Py<FrameToken>,
    released: Arc<AtomicBool>,
    session: Arc<AtomicBool>,
    #[pyo3(get)]
    seq: u64,
    #[pyo3(get)]
    pts_ns: i64,
    #[pyo3(get)]
    publish_ns: u64,
    #[pyo3(get)]
    buffer_id: u32,
    #[pyo3(get)]
    flags: u32,
    checksum: Option<u32>,
}

impl Frame {
    fn new(
        guard: FrameGuard,
        maps: Arc<Vec<Arc<CpuMapping>>>,
        welcome: Welcome,
        session: Arc<AtomicBool>,
    ) -> PyResult<Self> {
        let f = guard.frame();
        let buffer = guard.buffer();
        for m in maps.iter() {
            m.begin_raw_read()
                .map_err(|e| Error::new_err(format!("buffer {}: {e}", f.buffer_id)))?;
        }
        let released = Arc::new(AtomicBool::new(false));
        let token = Python::attach(|py| {
            Py::new(
                py,
                FrameToken {
                    released: released.clone(),
                    session: session.clone(),
                    seq: f.seq,
                    what: "frame",
                },
            )
        })?;
        Ok(Frame {
            seq: f.seq,
            pts_ns: f.pts_ns,
            publish_ns: f.publish_ns,
            buffer_id: f.buffer_id,
            flags: f.flags,
            checksum: (f.flags & dmabuf_core::proto::wire::FRAME_FLAG_CHECKSUM != 0)
                .then_some(f.checksum),
            layout: buffer.layout.clone(),
            plane_fds: buffer.plane_fds.clone(),
            welcome,
            maps,
            token,
            released,
            session,
            guard: Mutex::new(Some(guard)),
        })
    }

    fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire) || !self.session.load(Ordering::Acquire)
    }

    fn held(&self) -> PyResult<()> {
        if self.is_released() {
            return Err(FrameReleased::new_err(format!(
                "frame {} was released (or its receiver closed): its buffer belongs to the producer again",
                self.seq
            )));
        }
        Ok(())
    }

    fn plane_bytes(&self, i: usize) -> &[u8] {
        let pl = &self.layout.planes[i];
        let m = &self.maps[self.plane_fds[i]];
        // The receiver checked every plane against its fd's size (docs/PROTOCOL.md).
        let all = m.bytes();
        let start = pl.offset as usize;
        let end = start + pl.extent().unwrap_or(0) as usize;
        &all[start.min(all.len())..end.min(all.len())]
    }

    fn do_release(&self) -> PyResult<()> {
        let Some(g) = lock(&self.guard).take() else {
            return Ok(());
        };
        self.released.store(true, Ordering::Release);
        for m in self.maps.iter() {
            if let Err(e) = m.end_raw_read() {
                tracing::warn!("buffer {}: {e}", self.buffer_id);
            }
        }
        match g.release() {
            Ok(()) => Ok(()),
            // The connection is gone (closed, producer dead): nothing to give back.
            Err(_) if !self.session.load(Ordering::Acquire) => Ok(()),
            Err(e) => Err(stream_err(e)),
        }
    }
}

#[pymethods]
impl Frame {
    /// The stream this frame belongs to (format, size, colorimetry …).
    #[getter]
    fn stream<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stream_dict(py, &self.welcome)
    }

    /// Whether the frame was released (or revoked: its receiver closed or was dropped).
    #[getter]
    fn released(&self) -> bool {
        self.is_released()
    }

    /// What the plane arrays hold to know whether they may still be read.
    #[getter]
    fn token(&self, py: Python<'_>) -> Py<FrameToken> {
        self.token.clone_ref(py)
    }

    /// The checksum the producer sent, or None.
    #[getter]
    fn checksum(&self) -> Option<u32> {
        self.checksum
    }

    /// Whether the frame is intact now: False once the producer dropped this receiver (it may
    /// reuse the buffer). Ask after using the pixels; False means discard the result.
    fn intact(&self) -> bool {
        !self.is_released() && lock(&self.guard).as_ref().is_some_and(|g| g.is_intact())
    }

    /// One plane memory per plane (numpy array interfaces over the mapping).
    fn planes(&self) -> PyResult<Vec<PlaneMemory>> {
        self.held()?;
        let pixel = self.welcome.pixel;
        Ok(self
            .layout
            .planes
            .iter()
            .enumerate()
            .map(|(i, pl)| {
                let m = &self.maps[self.plane_fds[i]];
                let (shape, strides, typestr) = plane_shape(pixel, i, pl);
                PlaneMemory {
                    _keeper: Keeper::Mapped(self.maps.clone()),
                    addr: m.as_ptr() as usize + pl.offset as usize,
                    shape,
                    strides,
                    typestr,
                    readonly: true,
                    mapping: (m.as_ptr() as usize, m.len()),
                }
            })
            .collect())
    }

    /// The visible bytes, plane after plane, without row padding (FFmpeg's `rawvideo`
    /// layout, as `consumer --dump-raw` writes): a copy.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.held()?;
        // One copy, straight into the new bytes object.
        PyBytes::new_with(py, self.layout.packed_size() as usize, |out| {
            let mut at = 0;
            for (i, pl) in self.layout.planes.iter().enumerate() {
                let bytes = self.plane_bytes(i);
                let n = pl.row_bytes as usize;
                for r in 0..pl.rows as usize {
                    let s = r * pl.stride as usize;
                    out[at..at + n].copy_from_slice(&bytes[s..s + n]);
                    at += n;
                }
            }
            Ok(())
        })
    }

    /// Recompute the frame's checksum over the shared memory and compare it with the one the
    /// producer sent: True (match, and the frame still intact), False, or None (no checksum
    /// sent).
    fn verify(&self) -> PyResult<Option<bool>> {
        self.held()?;
        let Some(want) = self.checksum else {
            return Ok(None);
        };
        let mut total = 0u32;
        for (i, pl) in self.layout.planes.iter().enumerate() {
            let bytes = self.plane_bytes(i);
            let local = PlaneLayout { offset: 0, ..*pl };
            match dmabuf_core::format::plane_checksum(i as u32, bytes, &local) {
                Some(sum) => total = total.wrapping_add(sum),
                None => return Ok(Some(false)),
            }
        }
        Ok(Some(total == want && self.intact()))
    }

    /// Give the buffer back to the producer; the planes' arrays refuse access from now on.
    /// Releasing twice is harmless.
    fn release(&self) -> PyResult<()> {
        self.do_release()
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        let _ = self.do_release();
    }
}

// --- publishing ------------------------------------------------------------------------

/// The producer's end (see `dmabuf_pipeline.Publisher`). Methods may be called from any
/// thread; a wait for a free buffer lets other threads publish between its 20 ms slices.
#[pyclass(module = "dmabuf_pipeline._native", frozen)]
struct Publisher {
    publisher: Mutex<Option<CorePublisher>>,
    started: Instant,
}

const ACQUIRE_SLICE: Duration = Duration::from_millis(20);

#[pymethods]
impl Publisher {
    #[new]
    #[pyo3(signature = (path, width, height, format="NV12", fps=30.0, buffers=4, alloc="auto", checksum=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        width: u32,
        height: u32,
        format: &str,
        fps: f64,
        buffers: usize,
        alloc: &str,
        checksum: bool,
    ) -> PyResult<Self> {
        let pixel: PixelFormat = format
            .parse()
            .map_err(|e| PyValueError::new_err(format!("{e}")))?;
        let alloc: AllocChoice = alloc.parse().map_err(PyValueError::new_err)?;
        if !(fps.is_finite() && (0.0..=1e6).contains(&fps)) {
            return Err(PyValueError::new_err(format!(
                "fps must be between 0 (no nominal rate) and 1e6, not {fps}"
            )));
        }
        let format = FrameFormat::linear(pixel, width, height);
        FrameLayout::packed(format).map_err(|e| PyValueError::new_err(e.to_string()))?;
        // The nominal rate as a fraction with a millisecond-per-second precision.
        let fps = if fps > 0.0 {
            ((fps * 1000.0).round().max(1.0) as u32, 1000)
        } else {
            (0, 1)
        };
        let opts = PublisherOptions {
            buffers,
            alloc,
            fps,
            checksum,
            ..PublisherOptions::default()
        };
        let publisher = py
            .detach(|| CorePublisher::bind(&path, format, opts))
            .map_err(publish_err)?;
        Ok(Self {
            publisher: Mutex::new(Some(publisher)),
            started: Instant::now(),
        })
    }

    /// The stream: format, size, fps, memory, allocator …
    #[getter]
    fn stream<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let w = self.with(|p| Ok(p.welcome()))?;
        stream_dict(py, &w)
    }

    /// Consumers connected now.
    #[getter]
    fn consumers(&self) -> PyResult<usize> {
        self.with(|p| Ok(p.consumers()))
    }

    /// Frames published so far.
    #[getter]
    fn frames(&self) -> PyResult<u64> {
        self.with(|p| Ok(p.frames()))
    }

    /// Serve connections (accept consumers, take their releases) for up to `timeout` seconds.
    #[pyo3(signature = (timeout=0.0))]
    fn serve(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let t = bounded(timeout, "timeout")?;
        wait_sliced(py, Some(t), |slice| {
            self.with(|p| p.serve(slice.min(ACQUIRE_SLICE)).map_err(publish_err))?;
            Ok(None::<()>)
        })?;
        Ok(())
    }

    /// A free pool buffer to draw the next frame into, waiting up to `timeout` seconds (None:
    /// until one is free); None on timeout.
    #[pyo3(signature = (timeout=None))]
    fn acquire(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<WritableFrame>> {
        let timeout = seconds(timeout)?;
        let got = wait_sliced(py, timeout, |slice| {
            self.with(|p| {
                Ok(p.acquire(slice.min(ACQUIRE_SLICE))
                    .map_err(publish_err)?
                    .map(|l| (l, p.pool().clone(), p.welcome())))
            })
        })?;
        let Some((lease, pool, welcome)) = got else {
            return Ok(None);
        };
        let ptr = lease
            .begin_raw_write()
            .map_err(|e| Error::new_err(format!("buffer {}: {e}", lease.id())))?
            as usize;
        let released = Arc::new(AtomicBool::new(false));
        let token = Py::new(
            py,
            FrameToken {
                released: released.clone(),
                session: Arc::new(AtomicBool::new(true)),
                seq: u64::from(lease.id()),
                what: "writable frame (buffer)",
            },
        )?;
        Ok(Some(WritableFrame {
            lease: Mutex::new(Some(lease)),
            pool,
            base: ptr,
            welcome,
            token,
            released,
        }))
    }

    /// Publish a frame filled through its planes; `pts` in seconds (None: time since the
    /// publisher started). Returns the number of consumers it went to.
    #[pyo3(signature = (frame, pts=None))]
    fn publish(&self, py: Python<'_>, frame: &WritableFrame, pts: Option<f64>) -> PyResult<usize> {
        let pts_ns = match pts {
            Some(s) if s.is_finite() && s.abs() < 9.2e9 => (s * 1e9).round() as i64,
            Some(s) => {
                return Err(PyValueError::new_err(format!(
                    "pts must be finite seconds within ±9.2e9, not {s}"
                )))
            }
            None => self.started.elapsed().as_nanos() as i64,
        };
        let lease = frame.take()?;
        py.detach(|| {
            self.with(|p| {
                p.publish_shared(
                    Arc::new(lease),
                    FrameMeta {
                        pts_ns,
                        ..FrameMeta::default()
                    },
                )
                .map_err(publish_err)
            })
        })
    }

    /// End the stream and close the socket, giving consumers up to `grace` seconds to release
    /// what they hold: end-of-stream, or with `error` an internal-error Goodbye carrying that
    /// text (a publisher that failed). Ctrl-C interrupts the grace period.
    #[pyo3(signature = (grace=1.0, error=None))]
    fn close(&self, py: Python<'_>, grace: f64, error: Option<String>) -> PyResult<()> {
        let g = bounded(grace, "grace")?;
        if let Some(mut p) = lock(&self.publisher).take() {
            interruptible(py, move || match error {
                None => p.finish(g),
                Some(text) => {
                    p.end_stream(GoodbyeReason::InternalError, &text, g);
                }
            })?;
        }
        Ok(())
    }
}

impl Publisher {
    fn with<T>(&self, f: impl FnOnce(&mut CorePublisher) -> PyResult<T>) -> PyResult<T> {
        let mut guard = lock(&self.publisher);
        let p = guard
            .as_mut()
            .ok_or_else(|| Error::new_err("the publisher is closed"))?;
        f(p)
    }
}

/// A pool buffer being drawn (see `dmabuf_pipeline.Publisher.frame`).
#[pyclass(module = "dmabuf_pipeline._native", frozen)]
struct WritableFrame {
    lease: Mutex<Option<Lease>>,
    pool: Pool,
    base: usize,
    welcome: Welcome,
    token: Py<FrameToken>,
    released: Arc<AtomicBool>,
}

impl WritableFrame {
    fn take(&self) -> PyResult<Lease> {
        let lease = lock(&self.lease)
            .take()
            .ok_or_else(|| FrameReleased::new_err("this frame was already published or dropped"))?;
        self.released.store(true, Ordering::Release);
        lease
            .end_raw_write()
            .map_err(|e| Error::new_err(format!("buffer {}: {e}", lease.id())))?;
        Ok(lease)
    }
}

#[pymethods]
impl WritableFrame {
    /// Whether the frame was published or dropped.
    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// What the plane arrays hold to know whether they may still be written.
    #[getter]
    fn token(&self, py: Python<'_>) -> Py<FrameToken> {
        self.token.clone_ref(py)
    }

    /// The pool buffer's id.
    #[getter]
    fn buffer_id(&self) -> PyResult<u32> {
        lock(&self.lease)
            .as_ref()
            .map(|l| l.id())
            .ok_or_else(|| FrameReleased::new_err("this frame was already published or dropped"))
    }

    /// The stream (format, size …).
    #[getter]
    fn stream<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stream_dict(py, &self.welcome)
    }

    /// Writable plane memories over the pool buffer.
    fn planes(&self) -> PyResult<Vec<PlaneMemory>> {
        let guard = lock(&self.lease);
        let lease = guard
            .as_ref()
            .ok_or_else(|| FrameReleased::new_err("this frame was already published or dropped"))?;
        let b = lease.buffer();
        let size = b.fd_sizes.first().copied().unwrap_or(0) as usize;
        Ok(b.layout
            .planes
            .iter()
            .enumerate()
            .map(|(i, pl)| {
                let (shape, strides, typestr) = plane_shape(self.welcome.pixel, i, pl);
                PlaneMemory {
                    _keeper: Keeper::Pool(self.pool.clone()),
                    addr: self.base + pl.offset as usize,
                    shape,
                    strides,
                    typestr,
                    readonly: false,
                    mapping: (self.base, size),
                }
            })
            .collect())
    }

    /// Give the buffer back unpublished.
    fn drop_unpublished(&self) -> PyResult<()> {
        if lock(&self.lease).is_some() {
            drop(self.take()?);
        }
        Ok(())
    }
}

impl Drop for WritableFrame {
    fn drop(&mut self) {
        self.released.store(true, Ordering::Release);
        if let Some(l) = lock(&self.lease).take() {
            let _ = l.end_raw_write();
        }
    }
}

/// Geometry of plane `i` for `format` at `width`x`height`: `(row_bytes, rows)`.
#[pyfunction]
fn plane_size(format: &str, i: usize, width: u32, height: u32) -> PyResult<(u32, u32)> {
    let pixel: PixelFormat = format
        .parse()
        .map_err(|e| PyValueError::new_err(format!("{e}")))?;
    if i >= pixel.planes().len() {
        return Err(PyValueError::new_err(format!(
            "{pixel} has {} planes",
            pixel.planes().len()
        )));
    }
    Ok(plane_geometry(pixel, i, width, height))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("ProducerGone", py.get_type::<ProducerGone>())?;
    m.add("FrameReleased", py.get_type::<FrameReleased>())?;
    m.add_class::<Receiver>()?;
    m.add_class::<Frame>()?;
    m.add_class::<Publisher>()?;
    m.add_class::<WritableFrame>()?;
    m.add_class::<PlaneMemory>()?;
    m.add_class::<FrameToken>()?;
    m.add_function(wrap_pyfunction!(format_info, m)?)?;
    m.add_function(wrap_pyfunction!(formats, m)?)?;
    m.add_function(wrap_pyfunction!(plane_size, m)?)?;
    Ok(())
}
