//! [`Output`]: a producer's pool published as a PipeWire `Video/Source` node.
//!
//! The node allocates its own buffers (`PW_STREAM_FLAG_ALLOC_BUFFERS`): they are the pool's
//! buffers, one PipeWire buffer per pool buffer, each plane a data block on the pool buffer's
//! fd (`SPA_DATA_MemFd` for memfd pools, `SPA_DATA_DmaBuf` for dma-buf pools), so no frame is
//! copied. A published frame is queued on its own buffer and the pool lease is kept until
//! PipeWire gives that buffer back (seen when the next frame is offered, or on
//! [`Output::reclaim`]): the producer never rewrites a buffer a PipeWire client is reading,
//! and a slow client costs it frames (skipped, counted), never the producer's pace.
//!
//! PipeWire objects are not `Send`: the node lives on its own thread with a PipeWire main loop;
//! [`Output`] talks to it over a `pipewire::channel`.

use crate::format;
use crate::raw::{self, PwBuffer};
use crate::Error;
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::wire::ColorInfo;
use pipewire as pw;
use pw::spa::pod::Pod;
use pw::stream::{Stream, StreamFlags, StreamRc, StreamState};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the node presents itself.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// `node.name`: what clients name as their target (`pipewiresrc target-object=…`).
    pub name: String,
    /// `node.description`: what a desktop shows (OBS's source list).
    pub description: String,
    /// Frame rate announced in the format (num, den).
    pub fps: (u32, u32),
    /// The stream's colorimetry, announced in the format where known.
    pub color: ColorInfo,
    /// Most pool buffers PipeWire may hold at once; a frame that would exceed it is skipped
    /// for PipeWire (counted). `None`: half the pool (at least one).
    pub max_held: Option<usize>,
}

/// What the node has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// The node's id in the PipeWire graph, once it has one.
    pub node_id: Option<u32>,
    /// A client is linked and the node is streaming.
    pub streaming: bool,
    /// Frames queued to PipeWire.
    pub sent: u64,
    /// Frames not given to PipeWire: no client streaming, or its buffer (or the quota) still
    /// held by PipeWire.
    pub skipped: u64,
    /// Pool buffers PipeWire holds now.
    pub held: usize,
    /// The negotiated format, once a client fixed it (PipeWire's words).
    pub format: Option<String>,
    /// Why the node stopped (daemon gone, negotiation failed), if it did.
    pub error: Option<String>,
}

/// The node's state shared with its thread.
#[derive(Debug, Default)]
struct Shared {
    stats: OutputStats,
    /// When the node last started streaming.
    since: Option<Instant>,
    /// After it stopped streaming while linked (paused): until when it still counts as
    /// streaming (a client relinking, a renegotiation, pause for a moment).
    linger: Option<Instant>,
    /// The node's thread has stopped (nothing sent to it is read any more).
    stopped: bool,
}

/// How long the node must have been streaming before it counts as streaming: while a client
/// links, PipeWire starts the node, pauses it and starts it again within a millisecond or
/// two, and a frame queued in between is lost.
const SETTLE: Duration = Duration::from_millis(100);

/// How long a node that was streaming and is paused (not gone) still counts as streaming: a
/// renegotiation pauses it while the client takes the new format and buffers.
const LINGER: Duration = Duration::from_secs(1);

impl Shared {
    fn streaming(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= SETTLE)
            || self.linger.is_some_and(|t| Instant::now() < t)
    }
}

enum Cmd {
    /// Take back the buffers the client has returned.
    Reclaim,
    Frame {
        lease: Arc<Lease>,
        pts_ns: i64,
        seq: u64,
        corrupted: bool,
    },
    Pool {
        pool: Pool,
        fps: (u32, u32),
        color: ColorInfo,
    },
    Quit,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A PipeWire `Video/Source` node whose buffers are a [`Pool`]'s. Dropping it removes the node
/// and gives back every buffer it held.
pub struct Output {
    /// To the node's thread; dropped once the thread has stopped, which frees what was still
    /// queued (leases included).
    tx: Mutex<Option<pw::channel::Sender<Cmd>>>,
    stats: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Output {
    /// Connect to the PipeWire daemon (`$PIPEWIRE_REMOTE`, else `pipewire-0` in
    /// `$XDG_RUNTIME_DIR`) and create the node offering `pool`'s format.
    ///
    /// Errors: [`Error::NoDaemon`] when no daemon answers, [`Error::Node`] when the node cannot
    /// be made.
    pub fn start(pool: &Pool, opts: OutputOptions) -> Result<Self, Error> {
        let (tx, rx) = pw::channel::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stats = Arc::new(Mutex::new(Shared::default()));
        let (pool, shared) = (pool.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("pipewire-out".into())
            .spawn(move || {
                let result = node_thread(pool, opts, rx, shared.clone(), &ready_tx);
                let mut s = lock(&shared);
                s.stopped = true;
                s.since = None;
                s.linger = None;
                if let Err(e) = result {
                    tracing::warn!("PipeWire node: {e}");
                    s.stats.error = Some(e.to_string());
                    drop(s);
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Node(format!("cannot start its thread: {e}")))?;
        let thread = crate::await_ready(&ready_rx, thread)?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            stats,
            thread: Some(thread),
        })
    }

    /// Offer a published frame (a lease of the pool the node was made with, or last given to
    /// [`Output::set_pool`]). PipeWire keeps the lease until its client gives the buffer back;
    /// the frame is skipped (counted) when no client streams, its buffer is still out, or
    /// PipeWire holds its quota.
    pub fn push(&self, lease: &Arc<Lease>, pts_ns: i64, seq: u64, corrupted: bool) {
        let cmd = Cmd::Frame {
            lease: lease.clone(),
            pts_ns,
            seq,
            corrupted,
        };
        if self.send(cmd).is_err() {
            lock(&self.stats).stats.skipped += 1;
        }
    }

    /// Take back, now, the buffers PipeWire's client has returned (otherwise taken back when
    /// the next frame is offered): for a caller that finds its pool without a free buffer.
    pub fn reclaim(&self) {
        let _ = self.send(Cmd::Reclaim);
    }

    /// The producer renegotiated (size or format changed): offer `pool`'s format instead,
    /// which makes PipeWire renegotiate with its clients and take the new buffers.
    pub fn set_pool(&self, pool: &Pool, fps: (u32, u32), color: ColorInfo) {
        let _ = self.send(Cmd::Pool {
            pool: pool.clone(),
            fps,
            color,
        });
    }

    /// Send to the node's thread while it runs. (A pipewire-rs channel keeps what is sent
    /// after its receiver is gone: once the thread has stopped, drop our end instead.)
    fn send(&self, cmd: Cmd) -> Result<(), Cmd> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if lock(&self.stats).stopped {
            *tx = None;
        }
        match tx.as_ref() {
            Some(t) => t.send(cmd),
            None => Err(cmd),
        }
    }

    /// A client is linked and the node has been streaming for a moment (100 ms: PipeWire
    /// pauses a node once while linking it).
    pub fn streaming(&self) -> bool {
        lock(&self.stats).streaming()
    }

    /// Counters and state.
    pub fn stats(&self) -> OutputStats {
        let s = lock(&self.stats);
        OutputStats {
            streaming: s.streaming(),
            ..s.stats.clone()
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = self.send(Cmd::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The node's state on its thread.
struct Node {
    pool: Pool,
    /// How many buffers PipeWire has added since the last full removal (the next added one
    /// is that pool buffer).
    added: u32,
    by_ptr: HashMap<PwBuffer, u32>,
    by_id: HashMap<u32, PwBuffer>,
    /// Buffers we have dequeued and not queued: free for the next frame on them.
    free: HashSet<u32>,
    /// Buffers queued to PipeWire, with the lease kept until they come back.
    held: HashMap<u32, Arc<Lease>>,
    max_held: Option<usize>,
    stats: Arc<Mutex<Shared>>,
    /// The client took the format with the DRM modifier (imports dma-bufs).
    modifier: bool,
}

impl Node {
    fn quota(&self) -> usize {
        self.max_held.unwrap_or(self.pool.len() / 2).max(1)
    }

    fn publish_stats(&self) {
        lock(&self.stats).stats.held = self.held.len();
    }

    /// Take back every buffer PipeWire gave back (their leases return to the pool).
    fn drain(&mut self, stream: &Stream) {
        let mut any = false;
        while let Some(b) = raw::dequeue(stream) {
            if let Some(&id) = self.by_ptr.get(&b) {
                self.held.remove(&id);
                self.free.insert(id);
                any = true;
            }
        }
        if any {
            self.publish_stats();
        }
    }

    /// Queue the frame on its buffer; whether it went.
    fn offer(
        &mut self,
        stream: &Stream,
        lease: Arc<Lease>,
        pts_ns: i64,
        seq: u64,
        corrupted: bool,
    ) -> bool {
        self.drain(stream);
        let id = lease.id();
        let streaming = lock(&self.stats).since.is_some();
        let b = match self.by_id.get(&id) {
            Some(&b)
                if streaming
                    && self.pool.owns(&lease)
                    && self.free.contains(&id)
                    && self.held.len() < self.quota() =>
            {
                b
            }
            _ => {
                tracing::debug!(
                    "frame {seq} skipped for PipeWire: streaming {streaming}, buffer {id} {}, {} held",
                    if self.free.contains(&id) { "free" } else { "out" },
                    self.held.len()
                );
                lock(&self.stats).stats.skipped += 1;
                return false;
            }
        };
        raw::stamp(b, lease.buffer(), pts_ns, seq, corrupted);
        raw::queue(stream, b);
        self.free.remove(&id);
        self.held.insert(id, lease);
        let mut s = lock(&self.stats);
        s.stats.sent += 1;
        s.stats.held = self.held.len();
        true
    }

    fn add_buffer(&mut self, b: PwBuffer) {
        let id = self.added;
        self.added += 1;
        let Some(buf) = self.pool.buffer(id) else {
            tracing::warn!(
                "PipeWire added buffer {id} beyond the pool's {}",
                self.pool.len()
            );
            return;
        };
        if let Err(e) = raw::attach(b, buf, format::data_type(buf.memory)) {
            tracing::warn!("PipeWire buffer {id}: {e}");
            lock(&self.stats).stats.error = Some(e);
            return;
        }
        self.by_ptr.insert(b, id);
        self.by_id.insert(id, b);
    }

    fn remove_buffer(&mut self, b: PwBuffer) {
        if let Some(id) = self.by_ptr.remove(&b) {
            self.by_id.remove(&id);
            self.held.remove(&id);
            self.free.remove(&id);
        }
        if self.by_ptr.is_empty() {
            self.added = 0;
        }
        self.publish_stats();
    }

    /// The negotiated format: answer with the buffers we will provide.
    fn buffers_params(&self) -> Vec<Vec<u8>> {
        let Some(buf) = self.pool.buffer(0) else {
            return Vec::new();
        };
        let size = buf.fd_sizes.iter().copied().max().unwrap_or(0);
        let stride = buf.layout.planes.first().map_or(0, |p| p.stride);
        vec![
            format::serialize(format::buffers_param(
                self.pool.len() as u32,
                buf.layout.planes.len() as u32,
                u32::try_from(size).unwrap_or(u32::MAX),
                stride,
                buf.memory,
                self.modifier,
            )),
            format::serialize(format::header_meta_param()),
        ]
    }
}

fn pods(bytes: &[Vec<u8>]) -> Vec<&Pod> {
    bytes.iter().filter_map(|b| Pod::from_bytes(b)).collect()
}

fn node_thread(
    pool: Pool,
    opts: OutputOptions,
    rx: pw::channel::Receiver<Cmd>,
    stats: Arc<Mutex<Shared>>,
    ready: &std::sync::mpsc::Sender<Result<(), Error>>,
) -> Result<(), Error> {
    let conn = crate::connection::connect({
        let stats = stats.clone();
        move |why| {
            tracing::warn!("{why}");
            let mut s = lock(&stats);
            s.stats.error = Some(why);
            s.since = None;
            s.linger = None;
        }
    })?;
    let (mainloop, core) = (&conn.mainloop, &conn.core);
    let format = pool.format();
    let node = Rc::new(RefCell::new(Node {
        pool,
        added: 0,
        by_ptr: HashMap::new(),
        by_id: HashMap::new(),
        free: HashSet::new(),
        held: HashMap::new(),
        max_held: opts.max_held,
        stats: stats.clone(),
        modifier: false,
    }));

    let props = pw::properties::properties! {
        *pw::keys::MEDIA_TYPE => "Video",
        *pw::keys::MEDIA_CATEGORY => "Capture",
        *pw::keys::MEDIA_ROLE => "Camera",
        *pw::keys::MEDIA_CLASS => "Video/Source",
        *pw::keys::NODE_NAME => opts.name.as_str(),
        *pw::keys::NODE_DESCRIPTION => opts.description.as_str(),
    };
    let stream = StreamRc::new(core.clone(), &opts.name, props)
        .map_err(|e| Error::Node(format!("stream: {e}")))?;
    let _listener = stream
        .add_local_listener_with_user_data(node.clone())
        .state_changed({
            let (stats, ml) = (stats.clone(), mainloop.downgrade());
            move |stream, node, old, new| {
                tracing::debug!("PipeWire node: {old:?} -> {new:?}");
                if matches!(new, StreamState::Error(_) | StreamState::Unconnected) {
                    // Nobody will give the buffers back now: they are the pool's again.
                    if let Ok(mut n) = node.try_borrow_mut() {
                        n.held.clear();
                        n.free.clear();
                        n.publish_stats();
                    }
                }
                if let StreamState::Error(e) = &new {
                    tracing::warn!("PipeWire node: {e}");
                    if let Some(ml) = ml.upgrade() {
                        ml.quit();
                    }
                }
                let mut s = lock(&stats);
                let was = s.since.is_some_and(|t| t.elapsed() >= SETTLE);
                s.since = match (s.since, &new) {
                    (Some(t), StreamState::Streaming) => Some(t),
                    (None, StreamState::Streaming) => Some(Instant::now()),
                    _ => None,
                };
                s.linger = match &new {
                    StreamState::Paused if was => Some(Instant::now() + LINGER),
                    StreamState::Paused | StreamState::Streaming => s.linger,
                    _ => None,
                };
                if s.stats.node_id.is_none() && stream.node_id() != pw::constants::ID_ANY {
                    s.stats.node_id = Some(stream.node_id());
                }
                if let StreamState::Error(e) = new {
                    s.stats
                        .error
                        .get_or_insert(format!("PipeWire stream error: {e}"));
                }
            }
        })
        .param_changed({
            let stats = stats.clone();
            move |stream, node, id, param| {
                let Some(param) = param else { return };
                if id != pw::spa::param::ParamType::Format.as_raw() {
                    return;
                }
                let mut info = pw::spa::param::video::VideoInfoRaw::new();
                let modifier = format::has_modifier(param);
                if info.parse(param).is_ok() {
                    lock(&stats).stats.format = Some(format!(
                        "{:?} {}x{} @ {}/{}{}",
                        info.format(),
                        info.size().width,
                        info.size().height,
                        info.framerate().num,
                        info.framerate().denom,
                        if modifier {
                            format!(", modifier {:#x} (dma-buf)", info.modifier())
                        } else {
                            String::new()
                        }
                    ));
                }
                node.borrow_mut().modifier = modifier;
                let params = node.borrow().buffers_params();
                if let Err(e) = stream.update_params(&mut pods(&params)) {
                    tracing::warn!("PipeWire node: cannot set its buffers: {e}");
                }
            }
        })
        .add_buffer(|_stream, node, b| {
            if let Some(b) = PwBuffer::from_callback(b) {
                node.borrow_mut().add_buffer(b);
            }
        })
        .remove_buffer(|_stream, node, b| {
            if let Some(b) = PwBuffer::from_callback(b) {
                node.borrow_mut().remove_buffer(b);
            }
        })
        .process(|stream, node| {
            if let Ok(mut n) = node.try_borrow_mut() {
                n.drain(stream);
            }
        })
        .register()
        .map_err(|e| Error::Node(format!("stream listener: {e}")))?;

    let memory = node.borrow().pool.memory();
    let offers: Vec<Vec<u8>> = format::enum_formats(format, opts.fps, &opts.color, memory)
        .into_iter()
        .map(format::serialize)
        .collect();
    stream
        .connect(
            pw::spa::utils::Direction::Output,
            None,
            StreamFlags::DRIVER | StreamFlags::ALLOC_BUFFERS,
            &mut pods(&offers),
        )
        .map_err(|e| Error::Node(format!("cannot connect the stream: {e}")))?;

    let _commands = rx.attach(mainloop.loop_(), {
        let (stream, node, ml) = (stream.clone(), node.clone(), mainloop.downgrade());
        move |cmd| match cmd {
            Cmd::Frame {
                lease,
                pts_ns,
                seq,
                corrupted,
            } => {
                let went = node
                    .borrow_mut()
                    .offer(&stream, lease, pts_ns, seq, corrupted);
                // (Outside the borrow: a driving stream runs its cycle, `process`
                // included, from inside trigger_process.)
                if went && stream.is_driving() {
                    if let Err(e) = stream.trigger_process() {
                        tracing::debug!("PipeWire trigger: {e}");
                    }
                }
            }
            Cmd::Pool { pool, fps, color } => {
                let f = pool.format();
                {
                    // The old buffers are forgotten (the old pool's frames are never queued
                    // again); frames are skipped until PipeWire has added the new ones.
                    let mut n = node.borrow_mut();
                    n.pool = pool;
                    n.held.clear();
                    n.free.clear();
                    n.by_id.clear();
                    n.by_ptr.clear();
                    n.added = 0;
                    n.publish_stats();
                }
                let memory = node.borrow().pool.memory();
                let offers: Vec<Vec<u8>> = format::enum_formats(f, fps, &color, memory)
                    .into_iter()
                    .map(format::serialize)
                    .collect();
                if let Err(e) = stream.update_params(&mut pods(&offers)) {
                    tracing::warn!("PipeWire node: cannot offer {f}: {e}");
                }
            }
            Cmd::Reclaim => {
                if let Ok(mut n) = node.try_borrow_mut() {
                    n.drain(&stream);
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

    // Give every buffer back to the pool, then leave the graph.
    {
        let mut n = node.borrow_mut();
        n.held.clear();
        n.publish_stats();
    }
    {
        let mut s = lock(&stats);
        s.since = None;
        s.linger = None;
    }
    let _ = stream.disconnect();
    Ok(())
}
