//! [`Input`]: a PipeWire video stream (a camera, a screen cast, another application's node)
//! taken as frames whose buffers are PipeWire's own, borrowed: each is handed back to
//! PipeWire ([`Input::recycle`]) when the caller is done with it, never copied here.
//!
//! The stream lives on its own thread with a PipeWire main loop; events reach the caller
//! through a channel whose readiness is a socket's ([`Input::as_fd`]), so a caller can wait for
//! a frame in its own poll loop.

use crate::format;
use crate::raw::{self, PwBuffer};
use crate::Error;
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::wire::ColorInfo;
use dmabuf_core::{FrameFormat, FrameLayout, MemoryKind, PlaneLayout};
use pipewire as pw;
use pw::spa::pod::Pod;
use pw::stream::{StreamFlags, StreamRc, StreamState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What to connect to.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// The node to take the stream from: its `node.name` or `object.serial` (`target.object`;
    /// WirePlumber 0.5 takes no object id there).
    pub target: String,
    /// Our stream's `node.name`.
    pub name: String,
}

/// One data block of a PipeWire buffer.
#[derive(Debug, Clone)]
pub struct DataBlock {
    /// The fd (ours: duplicated from PipeWire's) and its size in bytes.
    pub fd: Arc<OwnedFd>,
    /// Bytes the fd holds (`lseek(SEEK_END)`).
    pub fd_size: u64,
    /// Where the block starts in the fd.
    pub mapoffset: u64,
    /// Bytes of the block.
    pub maxsize: u64,
}

/// One of the stream's buffers.
#[derive(Debug, Clone)]
pub struct InputBuffer {
    /// Memory kind of every block (`SPA_DATA_MemFd` or `SPA_DATA_DmaBuf`).
    pub memory: MemoryKind,
    /// The data blocks, in order.
    pub blocks: Vec<DataBlock>,
}

/// Where one block's bytes of a frame are (`struct spa_chunk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the valid bytes within the block.
    pub offset: u32,
    /// Valid bytes.
    pub size: u32,
    /// Bytes from one row to the next.
    pub stride: i32,
}

/// The negotiated stream.
#[derive(Debug, Clone)]
pub struct InputFormat {
    /// Pixel format and size (modifier LINEAR).
    pub format: FrameFormat,
    /// Frame rate (num, den); (0, 1) for a variable rate.
    pub fps: (u32, u32),
    /// Colorimetry where the format says it (else unspecified).
    pub color: ColorInfo,
}

/// A frame PipeWire handed over ([`InputEvent::Frame`]): in buffer `index` of announcement
/// `generation`, or copied.
#[derive(Debug)]
pub struct InputFrame {
    /// The announcement whose buffers it is in.
    pub generation: u32,
    /// The buffer.
    pub index: u32,
    /// Each block's chunk.
    pub chunks: Vec<Chunk>,
    /// The header's presentation time (ns), if the peer sent a header.
    pub pts_ns: Option<i64>,
    /// The header's sequence number, if any.
    pub seq: Option<u64>,
    /// The peer marked the frame corrupted.
    pub corrupted: bool,
    /// The frame copied into a buffer of the [`Input::copy_into`] pool (PipeWire's buffer
    /// is already back with PipeWire); `None` when it is in buffer `index`.
    pub copy: Option<Lease>,
}

/// What happened on the stream.
#[derive(Debug)]
pub enum InputEvent {
    /// The format was fixed and the buffers made. `Some`: the buffers are fds (memfds, or
    /// dma-bufs where the peer offered them with the LINEAR modifier) that can be passed on; every [`InputEvent::Frame`] names one of them by index, and all are
    /// PipeWire's until a frame arrives in one. `None`: PipeWire's buffers are memory inside
    /// this process (`SPA_DATA_MemPtr`, what the daemon allocates for two client streams):
    /// frames come copied into a pool the caller gives ([`Input::copy_into`]).
    ///
    /// It comes again when PipeWire renegotiates (a new format or new buffers): the buffers
    /// of earlier announcements are PipeWire's no more (their fds, duplicated, stay valid for
    /// whoever holds them), and each announcement has the next `generation`.
    Buffers {
        /// The format.
        format: InputFormat,
        /// The buffers, when they are fds.
        buffers: Option<Vec<InputBuffer>>,
        /// Which announcement this is (1, 2, …): frames name it.
        generation: u32,
    },
    /// A frame, now the caller's until [`Input::recycle`] (or in a copy).
    Frame(InputFrame),
    /// The stream stopped: the peer went away or paused for good, the daemon died, or
    /// negotiation failed (PipeWire's words).
    Ended(String),
}

enum Cmd {
    Active(bool),
    Recycle(u32, u32),
    CopyInto(u32, Pool),
    Quit,
}

/// A PipeWire video stream taken frame by frame.
pub struct Input {
    tx: pw::channel::Sender<Cmd>,
    /// Frames in process memory that found the copy pool without a free buffer.
    copy_skipped: Arc<AtomicU64>,
    events: mpsc::Receiver<InputEvent>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
    /// The thread's end was said.
    gone: bool,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input").finish_non_exhaustive()
    }
}

impl AsFd for Input {
    /// Readable when an event may be waiting ([`Input::try_event`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

impl Input {
    /// Connect to the daemon and ask for `opts.target`'s video in any carried raw format.
    ///
    /// Errors: [`Error::NoDaemon`], [`Error::Node`].
    pub fn connect(opts: InputOptions) -> Result<Self, Error> {
        let (tx, rx) = pw::channel::channel();
        let (ev_tx, events) = mpsc::channel();
        let (wake, waker) = UnixStream::pair()
            .and_then(|(a, b)| {
                a.set_nonblocking(true)?;
                b.set_nonblocking(true)?;
                Ok((a, b))
            })
            .map_err(|e| Error::Node(format!("cannot make a socket pair: {e}")))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let copy_skipped = Arc::new(AtomicU64::new(0));
        let skipped = copy_skipped.clone();
        let thread = std::thread::Builder::new()
            .name("pipewire-in".into())
            .spawn(move || {
                let sink = Events {
                    tx: ev_tx,
                    waker: RefCell::new(waker),
                    copy_skipped: skipped,
                };
                if let Err(e) = stream_thread(opts, rx, sink, &ready_tx) {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Node(format!("cannot start its thread: {e}")))?;
        let thread = crate::await_ready(&ready_rx, thread)?;
        Ok(Self {
            tx,
            copy_skipped,
            events,
            wake,
            thread: Some(thread),
            gone: false,
        })
    }

    /// The next event, if one is waiting.
    pub fn try_event(&mut self) -> Option<InputEvent> {
        let mut drain = [0u8; 64];
        match self.events.try_recv() {
            Ok(ev) => Some(ev),
            Err(mpsc::TryRecvError::Empty) => {
                // Clear the readiness, then look again (an event may have come in between).
                // (Non-blocking: nothing to read is fine.)
                let _ = self.wake.read(&mut drain);
                self.events.try_recv().ok()
            }
            // Said once: the thread is gone, nothing more will come.
            Err(mpsc::TryRecvError::Disconnected) => (!std::mem::replace(&mut self.gone, true))
                .then(|| InputEvent::Ended("the PipeWire stream's thread ended".into())),
        }
    }

    /// Give buffer `index` of announcement `generation` back to PipeWire
    /// (`pw_stream_queue_buffer`) for its next frame; nothing when PipeWire has renegotiated
    /// since (that buffer is gone).
    pub fn recycle(&self, generation: u32, index: u32) {
        let _ = self.tx.send(Cmd::Recycle(generation, index));
    }

    /// For buffers in process memory ([`InputEvent::Buffers`] with `None`) of announcement
    /// `generation`: copy each frame into a free buffer of `pool` (of that announcement's
    /// format), on arrival. A frame that finds the pool without a free buffer is skipped. A
    /// pool for an announcement PipeWire has since replaced is ignored (frames wait for the
    /// next `copy_into`): no frame is copied into a pool of another format or pool
    /// generation.
    pub fn copy_into(&self, generation: u32, pool: &Pool) {
        let _ = self.tx.send(Cmd::CopyInto(generation, pool.clone()));
    }

    /// Whether frames in process memory are copied (the default) or given straight back
    /// (while nobody wants them: no copy's CPU, no pool buffer taken).
    pub fn set_active(&self, active: bool) {
        let _ = self.tx.send(Cmd::Active(active));
    }

    /// Frames in process memory skipped so far because the [`Input::copy_into`] pool had no
    /// free buffer (or none was given yet).
    pub fn copy_skipped(&self) -> u64 {
        self.copy_skipped.load(Ordering::Relaxed)
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The stream thread's way to the caller: the channel, and one byte down a socket per event.
struct Events {
    tx: mpsc::Sender<InputEvent>,
    waker: RefCell<UnixStream>,
    copy_skipped: Arc<AtomicU64>,
}

impl Events {
    fn send(&self, ev: InputEvent) {
        if self.tx.send(ev).is_ok() {
            // (Non-blocking: a full socket already says "readable".)
            let _ = self.waker.borrow_mut().write(&[1]);
        }
    }
}

/// The stream's state on its thread.
struct Stream {
    target: String,
    format: Option<InputFormat>,
    /// Every buffer, with its description when its blocks are fds.
    buffers: Vec<(PwBuffer, Option<InputBuffer>)>,
    /// Where frames in process memory are copied to.
    copy_pool: Option<Pool>,
    /// Buffers the caller holds, by index.
    out: HashMap<u32, PwBuffer>,
    announced: bool,
    /// Announcements so far.
    generation: u32,
    /// Copy frames in process memory ([`Input::set_active`]).
    active: bool,
    ended: bool,
}

fn stream_thread(
    opts: InputOptions,
    rx: pw::channel::Receiver<Cmd>,
    events: Events,
    ready: &mpsc::Sender<Result<(), Error>>,
) -> Result<(), Error> {
    let events = Rc::new(events);
    let conn = crate::connection::connect({
        let events = events.clone();
        move |why| events.send(InputEvent::Ended(why))
    })?;
    let (mainloop, core) = (&conn.mainloop, &conn.core);

    let props = pw::properties::properties! {
        *pw::keys::MEDIA_TYPE => "Video",
        *pw::keys::MEDIA_CATEGORY => "Capture",
        *pw::keys::MEDIA_ROLE => "Camera",
        *pw::keys::NODE_NAME => opts.name.as_str(),
        *pw::keys::TARGET_OBJECT => opts.target.as_str(),
        // Only that node: no fallback to a default source, no relinking elsewhere.
        "node.dont-fallback" => "true",
        "node.dont-reconnect" => "true",
    };
    let stream = StreamRc::new(core.clone(), &opts.name, props)
        .map_err(|e| Error::Node(format!("stream: {e}")))?;
    let state = Rc::new(RefCell::new(Stream {
        target: opts.target.clone(),
        format: None,
        buffers: Vec::new(),
        copy_pool: None,
        out: HashMap::new(),
        announced: false,
        generation: 0,
        active: true,
        ended: false,
    }));
    let target = opts.target.clone();
    let _listener = stream
        .add_local_listener_with_user_data(state.clone())
        .state_changed({
            let events = events.clone();
            move |_stream, st, old, new| {
                tracing::debug!("PipeWire stream from {target}: {old:?} -> {new:?}");
                let why = match (&old, &new) {
                    (_, StreamState::Error(e)) => Some(format!("PipeWire stream error: {e}")),
                    (StreamState::Streaming | StreamState::Paused, StreamState::Unconnected) => {
                        Some(format!("the PipeWire node {target} went away"))
                    }
                    _ => None,
                };
                if let Some(why) = why {
                    let mut s = st.borrow_mut();
                    if !s.ended {
                        s.ended = true;
                        events.send(InputEvent::Ended(why));
                    }
                }
            }
        })
        .param_changed({
            let events = events.clone();
            move |stream, st, id, param| {
                if id != pw::spa::param::ParamType::Format.as_raw() {
                    return;
                }
                let Some(param) = param else {
                    // The format is cleared: the link is gone (the peer stopped or left).
                    let mut s = st.borrow_mut();
                    if s.format.take().is_some() && !s.ended {
                        s.ended = true;
                        events.send(InputEvent::Ended(format!(
                            "the PipeWire node {} stopped or went away",
                            s.target
                        )));
                    }
                    return;
                };
                match format::parse_raw_video(param) {
                    Ok(f) => {
                        let mut s = st.borrow_mut();
                        s.format = Some(f);
                        s.announced = false;
                        // A pool the caller made for the old format is not for this one.
                        s.copy_pool = None;
                        let params = [
                            format::serialize(format::input_buffers_param(format::has_modifier(
                                param,
                            ))),
                            format::serialize(format::header_meta_param()),
                        ];
                        let mut pods: Vec<&Pod> =
                            params.iter().filter_map(|b| Pod::from_bytes(b)).collect();
                        if let Err(e) = stream.update_params(&mut pods) {
                            tracing::warn!("PipeWire stream: cannot ask for buffers: {e}");
                        }
                    }
                    Err(e) => {
                        let mut s = st.borrow_mut();
                        s.ended = true;
                        events.send(InputEvent::Ended(e));
                    }
                }
            }
        })
        .add_buffer({
            let events = events.clone();
            move |_stream, st, b| {
                let Some(b) = PwBuffer::from_callback(b) else {
                    return;
                };
                let mut s = st.borrow_mut();
                match raw::describe(b) {
                    Ok(described) => s.buffers.push((b, described)),
                    Err(e) => {
                        // Blocks that are fds but cannot be taken (out of fds, say): PipeWire
                        // has not mapped them either, so they cannot be copied.
                        s.buffers.push((b, None));
                        if !s.ended {
                            s.ended = true;
                            events.send(InputEvent::Ended(format!(
                                "cannot take a PipeWire buffer: {e}"
                            )));
                        }
                    }
                }
            }
        })
        .remove_buffer(|_stream, st, b| {
            let Some(b) = PwBuffer::from_callback(b) else {
                return;
            };
            let mut s = st.borrow_mut();
            s.buffers.retain(|(p, _)| *p != b);
            s.out.retain(|_, p| *p != b);
            s.announced = false;
        })
        .process({
            let events = events.clone();
            move |stream, st| {
                let mut s = st.borrow_mut();
                if !s.announced {
                    let Some(f) = s.format.clone() else { return };
                    if s.buffers.is_empty() {
                        return;
                    }
                    let buffers = s.buffers.iter().map(|(_, b)| b.clone()).collect();
                    s.generation += 1;
                    // The caller's pool was for the buffers announced before.
                    s.copy_pool = None;
                    events.send(InputEvent::Buffers {
                        format: f,
                        buffers,
                        generation: s.generation,
                    });
                    s.announced = true;
                }
                let zero_copy = s.buffers.iter().all(|(_, b)| b.is_some());
                while let Some(b) = raw::dequeue(stream) {
                    let Some(index) = s.buffers.iter().position(|(p, _)| *p == b) else {
                        raw::queue(stream, b);
                        continue;
                    };
                    let (chunks, pts_ns, seq, corrupted) = raw::frame(b);
                    if chunks.iter().all(|c| c.size == 0) {
                        // An empty buffer (the peer had nothing): straight back.
                        raw::queue(stream, b);
                        continue;
                    }
                    if zero_copy {
                        s.out.insert(index as u32, b);
                        events.send(InputEvent::Frame(InputFrame {
                            generation: s.generation,
                            index: index as u32,
                            chunks,
                            pts_ns,
                            seq,
                            corrupted,
                            copy: None,
                        }));
                        continue;
                    }
                    // In process memory: copy into the caller's pool, then straight back.
                    if !s.active {
                        raw::queue(stream, b);
                        continue;
                    }
                    let have_pool = s.copy_pool.is_some();
                    let attempt = match (&s.copy_pool, &s.format) {
                        (Some(pool), Some(f)) => pool.try_acquire().map(|lease| {
                            raw::with_memory(b, |blocks| {
                                let bases = vec![0; blocks.len()];
                                plane_layout(f.format, &bases, &chunks)
                                    .and_then(|from| copy_frame(blocks, &from, &lease))
                            })
                            .map(|()| lease)
                        }),
                        _ => None,
                    };
                    let copied = match attempt {
                        Some(Ok(lease)) => Some(lease),
                        Some(Err(e)) => {
                            // Every frame would fail alike: end the stream, saying why.
                            if !s.ended {
                                s.ended = true;
                                events.send(InputEvent::Ended(format!(
                                    "its frames cannot be read: {e}"
                                )));
                            }
                            None
                        }
                        None => None,
                    };
                    raw::queue(stream, b);
                    match copied {
                        Some(lease) => events.send(InputEvent::Frame(InputFrame {
                            generation: s.generation,
                            index: index as u32,
                            chunks,
                            pts_ns,
                            seq,
                            corrupted,
                            copy: Some(lease),
                        })),
                        None if !have_pool => {
                            tracing::debug!("PipeWire frame dropped: no pool to copy it into yet")
                        }
                        None => {
                            let n = events.copy_skipped.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_power_of_two() {
                                tracing::info!(
                                    "PipeWire frame skipped: no free pool buffer to copy it into \
                                     ({n} so far)"
                                );
                            }
                        }
                    }
                }
            }
        })
        .register()
        .map_err(|e| Error::Node(format!("stream listener: {e}")))?;

    let offers: Vec<Vec<u8>> = format::enum_any_formats()
        .into_iter()
        .map(format::serialize)
        .collect();
    let mut pods = offers
        .iter()
        .map(|b| Pod::from_bytes(b).ok_or_else(|| Error::Node("format pod".into())))
        .collect::<Result<Vec<&Pod>, _>>()?;
    stream
        .connect(
            pw::spa::utils::Direction::Input,
            None,
            StreamFlags::AUTOCONNECT | StreamFlags::DONT_RECONNECT,
            &mut pods,
        )
        .map_err(|e| Error::Node(format!("cannot connect to {}: {e}", opts.target)))?;

    let _commands = rx.attach(mainloop.loop_(), {
        let (stream, state, ml) = (stream.clone(), state.clone(), mainloop.downgrade());
        move |cmd| match cmd {
            Cmd::CopyInto(generation, pool) => {
                let mut s = state.borrow_mut();
                // Made for an announcement since replaced: not for this format or these frames.
                if generation == s.generation && s.announced {
                    s.copy_pool = Some(pool);
                }
            }
            Cmd::Active(active) => state.borrow_mut().active = active,
            Cmd::Recycle(generation, index) => {
                let b = {
                    let mut s = state.borrow_mut();
                    if generation == s.generation {
                        s.out.remove(&index)
                    } else {
                        None
                    }
                };
                if let Some(b) = b {
                    raw::queue(&stream, b);
                }
            }
            Cmd::Quit => {
                if let Some(ml) = ml.upgrade() {
                    ml.quit();
                }
            }
        }
    });
    let _ = ready.send(Ok(()));
    mainloop.run();
    let _ = stream.disconnect();
    Ok(())
}

/// Where each plane of `format` is, from a frame's chunks: one block per plane (each chunk
/// gives its plane's offset and stride), or every plane in one block laid out back to back with
/// 4-byte aligned strides (GStreamer's and PipeWire's default), checked against the chunk.
/// `bases[i]` is where block `i` starts (in its fd, or 0 for memory). Each plane comes with the
/// index of its block.
pub fn plane_layout(
    format: FrameFormat,
    bases: &[u64],
    chunks: &[Chunk],
) -> Result<Vec<(usize, PlaneLayout)>, String> {
    let default = FrameLayout::new(format, 4, 1, 1).map_err(|e| e.to_string())?;
    let n = default.planes.len();
    let stride_of = |c: &Chunk| u32::try_from(c.stride).ok().filter(|s| *s > 0);
    if bases.len() == n && chunks.len() == n {
        return default
            .planes
            .iter()
            .zip(chunks)
            .zip(bases)
            .enumerate()
            .map(|(i, ((p, c), base))| {
                let stride = stride_of(c)
                    .filter(|s| *s >= p.row_bytes)
                    .ok_or_else(|| format!("plane {i}: stride {}", c.stride))?;
                if u64::from(c.size)
                    < u64::from(stride) * u64::from(p.rows - 1) + u64::from(p.row_bytes)
                {
                    return Err(format!(
                        "plane {i}: {} bytes for {} rows of {stride}",
                        c.size, p.rows
                    ));
                }
                Ok((
                    i,
                    PlaneLayout {
                        offset: base + u64::from(c.offset),
                        stride,
                        ..*p
                    },
                ))
            })
            .collect();
    }
    if bases.len() == 1 && chunks.len() == 1 {
        let c = &chunks[0];
        if stride_of(c) != Some(default.planes[0].stride) {
            return Err(format!(
                "{format} in one block with stride {} (only the default {} is understood)",
                c.stride, default.planes[0].stride
            ));
        }
        // GStreamer's default layout (GstVideoInfo), which PipeWire's clients use: strides
        // 4-byte aligned, planes back to back, and below a first plane of an odd number of
        // rows, one more row when chroma is subsampled vertically.
        let vsub = default
            .planes
            .get(1)
            .is_some_and(|p| p.rows < default.planes[0].rows);
        let shift = if vsub && format.height % 2 == 1 {
            u64::from(default.planes[0].stride)
        } else {
            0
        };
        let base = bases[0] + u64::from(c.offset);
        let planes: Vec<(usize, PlaneLayout)> = default
            .planes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let offset = base + p.offset + if i > 0 { shift } else { 0 };
                (0, PlaneLayout { offset, ..*p })
            })
            .collect();
        // The chunk holds exactly that frame, or the layout is not the one understood here.
        let end = planes.last().map_or(0, |(_, p)| p.offset + p.size()) - base;
        if u64::from(c.size) != end {
            return Err(format!(
                "{format} in one block of {} bytes, where GStreamer's default layout takes {end}: \
                 layout not understood",
                c.size
            ));
        }
        return Ok(planes);
    }
    Err(format!(
        "{format} ({n} planes) in {} data blocks: not understood",
        bases.len()
    ))
}

/// Copy a frame from PipeWire's memory blocks (`blocks[i]`: block i's bytes) laid out as
/// `from` into `lease`'s buffer (its own layout).
fn copy_frame(
    blocks: &[&[u8]],
    from: &[(usize, PlaneLayout)],
    lease: &Lease,
) -> Result<(), String> {
    let to = lease.buffer().layout.planes.clone();
    lease
        .with_bytes_mut(|dst| {
            for ((k, src), dpl) in from.iter().zip(&to) {
                let block = blocks.get(*k).ok_or("a plane without its block")?;
                for y in 0..src.rows as usize {
                    let s = src.offset as usize + y * src.stride as usize;
                    let d = dpl.offset as usize + y * dpl.stride as usize;
                    let n = src.row_bytes as usize;
                    let row = block.get(s..s + n).ok_or("a plane past its block")?;
                    dst.get_mut(d..d + n)
                        .ok_or("a plane past the pool buffer")?
                        .copy_from_slice(row);
                }
            }
            Ok::<(), &str>(())
        })
        .map_err(|e| e.to_string())?
        .map_err(str::to_string)
}
