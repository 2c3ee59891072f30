//! `dmabufpipesrc`: play any producer's stream into a pipeline without a copy.

use crate::caps;
use crate::fdmem;
use crate::pool::lock;
use crate::CAT;
use dmabuf_core::mapping::CpuMapping;
use dmabuf_core::proto::wire::{GoodbyeReason, Welcome};
use dmabuf_core::proto::ProtoError;
use dmabuf_core::receiver::{linear_caps, FrameGuard, Receiver, ReceiverEvent};
use dmabuf_core::MemoryKind;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

glib::wrapper! {
    /// `dmabufpipesrc` (see the module documentation).
    pub struct DmabufPipeSrc(ObjectSubclass<imp::DmabufPipeSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

/// Register the element.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "dmabufpipesrc",
        gst::Rank::NONE,
        DmabufPipeSrc::static_type(),
    )
}

const DEFAULT_SOCKET: &str = "/tmp/dmabuf-frames.sock";
const SLICE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Settings {
    socket: String,
    timeout: u32,
    wait_for_producer: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            timeout: 5,
            wait_for_producer: false,
        }
    }
}

/// Keeps a frame held (its buffer not released to the producer) while GStreamer holds the
/// buffer that wraps it: the parent buffer of a `GstParentBufferMeta`.
struct Held(#[allow(dead_code)] FrameGuard);

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &[0]
    }
}

struct Stream {
    rx: Receiver,
    welcome: Welcome,
    info: gst_video::VideoInfo,
    /// One memory per descriptor of each added buffer, made once.
    memories: HashMap<u32, Vec<gst::Memory>>,
    /// CPU mappings, for the copy into GStreamer's default layout.
    mappings: HashMap<u32, Vec<Arc<CpuMapping>>>,
    first_pts: Option<i64>,
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct DmabufPipeSrc {
        settings: Mutex<Settings>,
        stream: Mutex<Option<Stream>>,
        /// Downstream accepted `GstVideoMeta` (non-default strides and offsets are fine).
        video_meta: AtomicBool,
        unlocked: AtomicBool,
        frames: AtomicU64,
        copied: AtomicU64,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for DmabufPipeSrc {
        const NAME: &'static str = "GstDmabufPipeSrc";
        type Type = super::DmabufPipeSrc;
        type ParentType = gst_base::PushSrc;
    }

    impl ObjectImpl for DmabufPipeSrc {
        fn constructed(&self) {
            self.parent_constructed();
            let obj = self.obj();
            obj.set_live(true);
            obj.set_format(gst::Format::Time);
            obj.set_do_timestamp(true);
        }

        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![
                    glib::ParamSpecString::builder("socket")
                        .nick("Socket")
                        .blurb("The producer's Unix socket")
                        .default_value(Some(DEFAULT_SOCKET))
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("timeout")
                        .nick("Timeout")
                        .blurb("Seconds to wait for the producer's welcome once connected (with wait-for-producer, a missing producer is retried every 200 ms without limit)")
                        .minimum(1)
                        .default_value(5)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecBoolean::builder("wait-for-producer")
                        .nick("Wait for producer")
                        .blurb("When no producer listens, or the producer is lost mid-stream, wait and reconnect (renegotiating if its stream changed) instead of posting an error")
                        .default_value(false)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt64::builder("frames")
                        .nick("Frames")
                        .blurb("Frames pushed")
                        .read_only()
                        .build(),
                    glib::ParamSpecUInt64::builder("frames-copied")
                        .nick("Frames copied")
                        .blurb("Frames copied into GStreamer's default layout because downstream takes no GstVideoMeta and the producer's layout differs (the rest wrap the received descriptors)")
                        .read_only()
                        .build(),
                ]
            });
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            let mut s = lock(&self.settings);
            match pspec.name() {
                "socket" => {
                    s.socket = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| DEFAULT_SOCKET.into())
                }
                "timeout" => s.timeout = value.get().unwrap_or(5),
                "wait-for-producer" => s.wait_for_producer = value.get().unwrap_or(false),
                _ => {}
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            let s = lock(&self.settings);
            match pspec.name() {
                "socket" => s.socket.to_value(),
                "timeout" => s.timeout.to_value(),
                "wait-for-producer" => s.wait_for_producer.to_value(),
                "frames" => self.frames.load(Ordering::Relaxed).to_value(),
                "frames-copied" => self.copied.load(Ordering::Relaxed).to_value(),
                _ => glib::Value::from_type(pspec.value_type()),
            }
        }
    }

    impl GstObjectImpl for DmabufPipeSrc {}

    impl ElementImpl for DmabufPipeSrc {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "dma-buf pipe source",
                    "Source/Video",
                    "Plays a dmabuf-pipeline producer's stream: buffers wrap the received \
                     descriptors (GstDmaBufMemory or GstFdMemory with GstVideoMeta), released \
                     back to the producer when GStreamer frees them",
                    "dmabuf-pipeline",
                )
            });
            Some(&*META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static PADS: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                vec![gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps::template_caps(),
                )
                .expect("the src pad template")]
            });
            PADS.as_ref()
        }
    }

    impl DmabufPipeSrc {
        /// Connect, offering what downstream can take; retry while waiting for a producer.
        fn connect(&self, retry: bool) -> Result<Stream, gst::ErrorMessage> {
            let s = lock(&self.settings).clone();
            let peer = self
                .obj()
                .src_pad()
                .peer_query_caps(Some(&caps::template_caps()));
            let mut formats = caps::formats_in(&peer);
            if formats.is_empty() {
                formats = caps::FORMATS.iter().map(|(d, _)| *d).collect();
            }
            let offer = linear_caps(&formats, &MemoryKind::ALL);
            let timeout = Duration::from_secs(u64::from(s.timeout));
            let mut said = false;
            loop {
                match Receiver::connect(&s.socket, offer.clone(), timeout) {
                    Ok(rx) => {
                        let welcome = rx.welcome();
                        let info = gst_video::VideoInfo::from_caps(&caps::caps_of(&welcome))
                            .map_err(|e| gst::error_msg!(gst::StreamError::Format, ["{e}"]))?;
                        gst::info!(
                            CAT,
                            imp = self,
                            "connected to {}: {} {}x{} in {} ({})",
                            s.socket,
                            welcome.pixel,
                            welcome.width,
                            welcome.height,
                            welcome.memory,
                            welcome.allocator
                        );
                        return Ok(Stream {
                            rx,
                            welcome,
                            info,
                            memories: HashMap::new(),
                            mappings: HashMap::new(),
                            first_pts: None,
                        });
                    }
                    Err(
                        e @ (ProtoError::Path { .. }
                        | ProtoError::Closed
                        | ProtoError::Timeout { .. }),
                    ) if s.wait_for_producer && retry => {
                        if !said {
                            gst::info!(
                                CAT,
                                imp = self,
                                "waiting for a producer on {}: {e}",
                                s.socket
                            );
                            said = true;
                        }
                        if self.unlocked.load(Ordering::SeqCst) {
                            return Err(gst::error_msg!(
                                gst::ResourceError::OpenRead,
                                ["stopped while waiting for a producer on {}", s.socket]
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => {
                        return Err(gst::error_msg!(
                            gst::ResourceError::OpenRead,
                            ["producer at {}: {e}", s.socket]
                        ))
                    }
                }
            }
        }

        /// A GStreamer buffer for a frame: the received descriptors wrapped (zero copy), or a
        /// copy into GStreamer's default layout when downstream needs that.
        fn buffer_for(
            &self,
            st: &mut Stream,
            guard: FrameGuard,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let id = guard.buffer_id();
            let fb = guard.buffer().clone();
            let pts = guard.frame().pts_ns;
            let first = *st.first_pts.get_or_insert(pts);
            // Wrapping holds the producer's buffer until GStreamer frees ours; when downstream
            // already holds all but one (a filesink buffering small frames, a queue), copy
            // instead, so that the producer always has a buffer to go on with.
            let starving =
                st.rx.held_count() >= (st.welcome.buffer_count as usize).saturating_sub(1).max(1);
            let zero_copy = !starving
                && (self.video_meta.load(Ordering::Relaxed)
                    || (fb.fds.len() == 1 && caps::is_default_layout(&fb.layout, &st.info)));
            let mut out = if zero_copy {
                let mems = st.memories.get(&id).ok_or_else(|| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ["frame in buffer {id}, which was never added"]
                    );
                    gst::FlowError::Error
                })?;
                let mut b = gst::Buffer::new();
                {
                    let bm = b.get_mut().expect("a new buffer is writable");
                    for m in mems {
                        bm.append_memory(m.clone());
                    }
                    if fb.fds.len() == 1 {
                        // The frame, not the page-rounded descriptor: a reader without
                        // GstVideoMeta (filesink) takes the buffer's size as the frame's.
                        let end = fb.layout.planes.iter().map(|p| p.offset + p.size()).max();
                        // (At least GStreamer's own frame size: it rounds some chroma heights up.)
                        if let Some(end) = end {
                            let size = (end as usize).max(st.info.size()).min(bm.size());
                            bm.set_size(size);
                        }
                    }
                    let (offsets, strides) = fdmem::plane_offsets(&fb);
                    gst_video::VideoMeta::add_full(
                        bm,
                        gst_video::VideoFrameFlags::empty(),
                        st.info.format(),
                        st.info.width(),
                        st.info.height(),
                        &offsets,
                        &strides,
                    )
                    .map_err(|e| {
                        gst::element_imp_error!(self, gst::StreamError::Format, ["{e}"]);
                        gst::FlowError::Error
                    })?;
                    let held = gst::Buffer::from_slice(Held(guard));
                    gst::ParentBufferMeta::add(bm, &held);
                }
                b
            } else {
                // Downstream reads buffers at GStreamer's default strides (filesink, …): copy.
                if let std::collections::hash_map::Entry::Vacant(slot) = st.mappings.entry(id) {
                    let maps = fb
                        .fds
                        .iter()
                        .zip(&fb.fd_sizes)
                        .map(|(fd, &len)| {
                            CpuMapping::new(fd.clone(), len, false, fb.memory).map(Arc::new)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::Read,
                                ["mapping buffer {id}: {e}"]
                            );
                            gst::FlowError::Error
                        })?;
                    slot.insert(maps);
                }
                let maps = &st.mappings[&id];
                let mut b =
                    gst::Buffer::with_size(st.info.size()).map_err(|_| gst::FlowError::Error)?;
                {
                    let bm = b.get_mut().expect("a new buffer is writable");
                    let mut frame =
                        gst_video::VideoFrameRef::from_buffer_ref_writable(bm, &st.info)
                            .map_err(|_| gst::FlowError::Error)?;
                    for m in maps {
                        let _ = m.begin_raw_read();
                    }
                    for (i, (k, pl)) in fb.planes().enumerate() {
                        let src = maps[k].bytes();
                        let dstride = frame.plane_stride()[i] as usize;
                        let dst = frame
                            .plane_data_mut(i as u32)
                            .map_err(|_| gst::FlowError::Error)?;
                        let n = (pl.row_bytes as usize).min(dstride);
                        for r in 0..pl.rows as usize {
                            let s = pl.offset as usize + r * pl.stride as usize;
                            let d = r * dstride;
                            if let (Some(from), Some(to)) =
                                (src.get(s..s + n), dst.get_mut(d..d + n))
                            {
                                to.copy_from_slice(from);
                            }
                        }
                    }
                    for m in maps {
                        let _ = m.end_raw_read();
                    }
                }
                self.copied.fetch_add(1, Ordering::Relaxed);
                drop(guard); // released now: the copy is GStreamer's
                b
            };
            {
                let bm = out.get_mut().expect("a new buffer is writable");
                bm.set_pts(gst::ClockTime::from_nseconds(
                    pts.saturating_sub(first).max(0) as u64,
                ));
                let fps = st.info.fps();
                if fps.numer() > 0 {
                    bm.set_duration(
                        gst::ClockTime::SECOND
                            .mul_div_floor(fps.denom() as u64, fps.numer() as u64),
                    );
                }
            }
            Ok(out)
        }
    }

    impl DmabufPipeSrc {
        /// Wait (interruptibly) for a producer, take its stream, and renegotiate downstream if
        /// it differs from the last one.
        fn reconnect(&self) -> Result<(), gst::FlowError> {
            let st = self.connect(true).map_err(|m| {
                if self.unlocked.load(Ordering::SeqCst) {
                    return gst::FlowError::Flushing;
                }
                self.post_error_message(m);
                gst::FlowError::Error
            })?;
            let renegotiate = lock(&self.stream)
                .as_ref()
                .is_none_or(|old| caps::caps_of(&old.welcome) != caps::caps_of(&st.welcome));
            *lock(&self.stream) = Some(st);
            if renegotiate && !self.obj().negotiate() {
                return Err(gst::FlowError::NotNegotiated);
            }
            Ok(())
        }

        /// An element message `dmabufpipesrc-stats` (frames pushed, frames copied).
        fn post_stats(&self) {
            let s = gst::Structure::builder("dmabufpipesrc-stats")
                .field("frames", self.frames.load(Ordering::Relaxed))
                .field("frames-copied", self.copied.load(Ordering::Relaxed))
                .build();
            let _ = self
                .obj()
                .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        }
    }

    impl BaseSrcImpl for DmabufPipeSrc {
        fn start(&self) -> Result<(), gst::ErrorMessage> {
            self.unlocked.store(false, Ordering::SeqCst);
            self.frames.store(0, Ordering::Relaxed);
            self.copied.store(0, Ordering::Relaxed);
            let wait = lock(&self.settings).wait_for_producer;
            match self.connect(false) {
                Ok(st) => *lock(&self.stream) = Some(st),
                // Waited for in the streaming thread, where a state change can interrupt it.
                Err(e) if wait => {
                    gst::info!(CAT, imp = self, "no producer yet ({e}): waiting for one");
                    *lock(&self.stream) = None;
                }
                Err(e) => return Err(e),
            }
            Ok(())
        }

        fn stop(&self) -> Result<(), gst::ErrorMessage> {
            if let Some(st) = lock(&self.stream).take() {
                st.rx.close("dmabufpipesrc stopped");
            }
            Ok(())
        }

        fn is_seekable(&self) -> bool {
            false
        }

        fn query(&self, query: &mut gst::QueryRef) -> bool {
            if let gst::QueryViewMut::Latency(q) = query.view_mut() {
                // Live: a frame is pushed as it arrives, at most one frame period late.
                let min = lock(&self.stream)
                    .as_ref()
                    .map(|st| st.info.fps())
                    .filter(|f| f.numer() > 0)
                    .map(|f| {
                        gst::ClockTime::SECOND.mul_div_floor(f.denom() as u64, f.numer() as u64)
                    })
                    .unwrap_or(Some(gst::ClockTime::ZERO))
                    .unwrap_or(gst::ClockTime::ZERO);
                q.set(true, min, gst::ClockTime::NONE);
                return true;
            }
            BaseSrcImplExt::parent_query(self, query)
        }

        fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
            let caps = match lock(&self.stream).as_ref() {
                Some(st) => caps::caps_of(&st.welcome),
                None => caps::template_caps(),
            };
            Some(match filter {
                Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
                None => caps,
            })
        }

        fn decide_allocation(
            &self,
            query: &mut gst::query::Allocation,
        ) -> Result<(), gst::LoggableError> {
            let meta = query
                .find_allocation_meta::<gst_video::VideoMeta>()
                .is_some();
            self.video_meta.store(meta, Ordering::Relaxed);
            gst::debug!(CAT, imp = self, "downstream takes GstVideoMeta: {meta}");
            self.parent_decide_allocation(query)
        }

        fn unlock(&self) -> Result<(), gst::ErrorMessage> {
            self.unlocked.store(true, Ordering::SeqCst);
            Ok(())
        }

        fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
            self.unlocked.store(false, Ordering::SeqCst);
            Ok(())
        }
    }

    impl PushSrcImpl for DmabufPipeSrc {
        fn create(
            &self,
            _buffer: Option<&mut gst::BufferRef>,
        ) -> Result<CreateSuccess, gst::FlowError> {
            let (socket, wait) = {
                let s = lock(&self.settings);
                (s.socket.clone(), s.wait_for_producer)
            };
            loop {
                if self.unlocked.load(Ordering::SeqCst) {
                    return Err(gst::FlowError::Flushing);
                }
                let mut guard = lock(&self.stream);
                let Some(st) = guard.as_mut() else {
                    drop(guard);
                    if !wait {
                        return Err(gst::FlowError::Flushing);
                    }
                    self.reconnect()?;
                    continue;
                };
                let ev = match st.rx.next_event(Some(SLICE)) {
                    Ok(ev) => ev,
                    Err(ProtoError::Timeout { .. }) => continue,
                    Err(e) => {
                        if !wait {
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::Read,
                                ["producer at {socket} lost: {e}"]
                            );
                            return Err(gst::FlowError::Error);
                        }
                        gst::warning!(
                            CAT,
                            imp = self,
                            "producer at {socket} lost ({e}): waiting for it"
                        );
                        drop(guard);
                        self.reconnect()?;
                        continue;
                    }
                };
                match ev {
                    ReceiverEvent::BufferAdded(id) => {
                        let Some(fb) = st.rx.buffer(id) else { continue };
                        let mems = fdmem::wrap(&fb, true).map_err(|e| {
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::Read,
                                ["buffer {id}: {e}"]
                            );
                            gst::FlowError::Error
                        })?;
                        st.memories.insert(id, mems);
                    }
                    ReceiverEvent::BufferRemoved(id) => {
                        st.memories.remove(&id);
                        st.mappings.remove(&id);
                    }
                    ReceiverEvent::Renegotiated(w) => {
                        st.memories.clear();
                        st.mappings.clear();
                        st.info = gst_video::VideoInfo::from_caps(&caps::caps_of(&w))
                            .map_err(|_| gst::FlowError::NotNegotiated)?;
                        st.welcome = *w;
                        drop(guard);
                        gst::info!(CAT, imp = self, "the producer renegotiated");
                        if !self.obj().negotiate() {
                            return Err(gst::FlowError::NotNegotiated);
                        }
                    }
                    ReceiverEvent::End(g) => {
                        let text = dmabuf_core::proto::wire::printable(&g.message);
                        drop(guard);
                        match g.reason {
                            GoodbyeReason::EndOfStream => {
                                gst::info!(
                                    CAT,
                                    imp = self,
                                    "the producer ended the stream: {text}"
                                );
                                self.post_stats();
                                return Err(gst::FlowError::Eos);
                            }
                            // Shutting down (a restart?), dropped for holding too long, an
                            // error in the producer: wait for the next one, or say so.
                            _ if wait => {
                                gst::warning!(
                                    CAT,
                                    imp = self,
                                    "producer at {socket} left ({:?}: {text}): waiting for one",
                                    g.reason
                                );
                                *lock(&self.stream) = None;
                                self.reconnect()?;
                            }
                            GoodbyeReason::Leaving => {
                                gst::info!(CAT, imp = self, "the producer left: {text}");
                                self.post_stats();
                                return Err(gst::FlowError::Eos);
                            }
                            reason => {
                                gst::element_imp_error!(
                                    self,
                                    gst::ResourceError::Read,
                                    ["producer at {socket} ended the stream ({reason:?}): {text}"]
                                );
                                return Err(gst::FlowError::Error);
                            }
                        }
                    }
                    ReceiverEvent::Frame(frame) => {
                        let b = self.buffer_for(st, frame)?;
                        self.frames.fetch_add(1, Ordering::Relaxed);
                        return Ok(CreateSuccess::NewBuffer(b));
                    }
                }
            }
        }
    }
}
