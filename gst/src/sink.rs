//! `dmabufpipesink`: publish a pipeline's raw video to the pipe's consumers.

use crate::caps;
use crate::pool::{lock, SharedPool, SharedPublisher};
use crate::CAT;
use dmabuf_core::alloc::AllocChoice;
use dmabuf_core::format::{plane_geometry, PlaneLayout};
use dmabuf_core::pool::Pool;
use dmabuf_core::proto::channel::ListenerOptions;
use dmabuf_core::publisher::{FrameMeta, Publisher, PublisherOptions};
use dmabuf_core::{AllocatorKind, FrameFormat, FrameLayout};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

glib::wrapper! {
    /// `dmabufpipesink` (see the module documentation).
    pub struct DmabufPipeSink(ObjectSubclass<imp::DmabufPipeSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

/// Register the element.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "dmabufpipesink",
        gst::Rank::NONE,
        DmabufPipeSink::static_type(),
    )
}

const DEFAULT_SOCKET: &str = "/tmp/dmabuf-frames.sock";

#[derive(Debug, Clone)]
struct Settings {
    socket: String,
    buffers: u32,
    alloc: String,
    mode: u32,
    checksum: bool,
    wait_consumers: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            buffers: 4,
            alloc: "auto".into(),
            mode: 0o600,
            checksum: true,
            wait_consumers: 0,
        }
    }
}

/// What the element knows once it has caps.
struct Negotiated {
    info: gst_video::VideoInfo,
    layout: FrameLayout,
    pool: Option<SharedPool>,
}

/// The pool for `info`: in sealed memfds, laid out exactly as GStreamer lays the format out
/// by default (so that elements without `GstVideoMeta` support read and write it, and a
/// `dmabufpipesrc` downstream can pass it on without a copy); dma-bufs keep the allocator's
/// GPU-friendly layout (importers need its alignments).
fn make_pool(
    alloc: AllocChoice,
    info: &gst_video::VideoInfo,
    format: FrameFormat,
    buffers: usize,
) -> Result<Pool, String> {
    let (allocator, _why) = dmabuf_core::alloc::select(alloc, format).map_err(|e| e.to_string())?;
    if allocator.kind() == AllocatorKind::Memfd {
        let planes = (0..info.n_planes() as usize)
            .map(|i| {
                let (row_bytes, rows) =
                    plane_geometry(format.pixel, i, format.width, format.height);
                PlaneLayout {
                    offset: info.offset()[i] as u64,
                    stride: info.stride()[i] as u32,
                    row_bytes,
                    rows,
                }
            })
            .collect();
        let layout = FrameLayout {
            format,
            planes,
            size: (info.size() as u64).div_ceil(4096) * 4096,
        };
        Pool::with_layout(allocator.as_ref(), &layout, buffers).map_err(|e| e.to_string())
    } else {
        Pool::new(allocator.as_ref(), format, buffers).map_err(|e| e.to_string())
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct DmabufPipeSink {
        settings: Mutex<Settings>,
        publisher: SharedPublisher,
        negotiated: Mutex<Option<Negotiated>>,
        unlocked: AtomicBool,
        waited: AtomicBool,
        in_place: AtomicU64,
        copied: AtomicU64,
        started: Mutex<Option<Instant>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for DmabufPipeSink {
        const NAME: &'static str = "GstDmabufPipeSink";
        type Type = super::DmabufPipeSink;
        type ParentType = gst_base::BaseSink;
    }

    impl ObjectImpl for DmabufPipeSink {
        fn constructed(&self) {
            self.parent_constructed();
            // A last sample would keep a shared buffer from going back to the pool (and the
            // consumers' back-pressure waiting on it): off unless asked for.
            self.obj().set_enable_last_sample(false);
        }

        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                vec![
                    glib::ParamSpecString::builder("socket")
                        .nick("Socket")
                        .blurb("Unix socket path to serve consumers on (SOCK_SEQPACKET; a stale socket file is replaced, one a running producer owns is refused)")
                        .default_value(Some(DEFAULT_SOCKET))
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("buffers")
                        .nick("Buffers")
                        .blurb("Shared buffers in the pool (2-64): what upstream draws into and consumers hold")
                        .minimum(2)
                        .maximum(64)
                        .default_value(4)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecString::builder("alloc")
                        .nick("Allocator")
                        .blurb("Buffer allocator: auto (dma-heap, udmabuf, GBM, then sealed memfd), dma-heap, udmabuf, gbm or memfd")
                        .default_value(Some("auto"))
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("mode")
                        .nick("Socket mode")
                        .blurb("File mode of the socket (access: 0600 lets only this user connect; peers are also checked with SO_PEERCRED)")
                        .maximum(0o777)
                        .default_value(0o600)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecBoolean::builder("checksum")
                        .nick("Checksum")
                        .blurb("Send each frame's checksum so consumers can verify it (one read of the frame per publish)")
                        .default_value(true)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt::builder("wait-consumers")
                        .nick("Wait for consumers")
                        .blurb("Hold the first frame until this many consumers are connected (0: publish at once; frames with no consumer are dropped). At most `buffers`: the sink serves no more consumers than it has buffers")
                        .default_value(0)
                        .mutable_ready()
                        .build(),
                    glib::ParamSpecUInt64::builder("frames-in-place")
                        .nick("Frames in place")
                        .blurb("Frames upstream wrote straight into shared buffers (it took the proposed pool): no copy")
                        .read_only()
                        .build(),
                    glib::ParamSpecUInt64::builder("frames-copied")
                        .nick("Frames copied")
                        .blurb("Frames in upstream's own buffers, copied once into a shared buffer")
                        .read_only()
                        .build(),
                    glib::ParamSpecUInt::builder("consumers")
                        .nick("Consumers")
                        .blurb("Consumers connected now")
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
                "buffers" => s.buffers = value.get().unwrap_or(4),
                "alloc" => {
                    s.alloc = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| "auto".into())
                }
                "mode" => s.mode = value.get().unwrap_or(0o600),
                "checksum" => s.checksum = value.get().unwrap_or(true),
                "wait-consumers" => s.wait_consumers = value.get().unwrap_or(0),
                _ => {}
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            let s = lock(&self.settings);
            match pspec.name() {
                "socket" => s.socket.to_value(),
                "buffers" => s.buffers.to_value(),
                "alloc" => s.alloc.to_value(),
                "mode" => s.mode.to_value(),
                "checksum" => s.checksum.to_value(),
                "wait-consumers" => s.wait_consumers.to_value(),
                "frames-in-place" => self.in_place.load(Ordering::Relaxed).to_value(),
                "frames-copied" => self.copied.load(Ordering::Relaxed).to_value(),
                "consumers" => {
                    (lock(&self.publisher).as_ref().map_or(0, |p| p.consumers()) as u32).to_value()
                }
                _ => glib::Value::from_type(pspec.value_type()),
            }
        }
    }

    impl GstObjectImpl for DmabufPipeSink {}

    impl ElementImpl for DmabufPipeSink {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "dma-buf pipe sink",
                    "Sink/Video",
                    "Publishes raw video to the dmabuf-pipeline consumers on a Unix socket \
                     without copying: proposes its shared buffers (dma-buf or sealed memfd) \
                     upstream, and copies once only when upstream does not take them",
                    "dmabuf-pipeline",
                )
            });
            Some(&*META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static PADS: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                vec![gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps::template_caps(),
                )
                .expect("the sink pad template")]
            });
            PADS.as_ref()
        }
    }

    impl DmabufPipeSink {
        /// Serve until `n` consumers are connected, or the element is unlocked (flushing).
        fn wait_for_consumers(&self, n: u32) -> Result<(), gst::FlowError> {
            let t0 = Instant::now();
            let mut said = false;
            loop {
                if self.unlocked.load(Ordering::SeqCst) {
                    return Err(gst::FlowError::Flushing);
                }
                let mut p = lock(&self.publisher);
                let p = p.as_mut().ok_or(gst::FlowError::Flushing)?;
                if p.consumers() >= n as usize {
                    return Ok(());
                }
                if !said && t0.elapsed() > Duration::from_secs(1) {
                    gst::info!(
                        CAT,
                        imp = self,
                        "waiting for {n} consumer(s) on {}",
                        p.path().display()
                    );
                    said = true;
                }
                p.serve(Duration::from_millis(20)).map_err(|e| {
                    gst::element_imp_error!(self, gst::ResourceError::Write, ["{e}"]);
                    gst::FlowError::Error
                })?;
            }
        }

        /// Copy a frame upstream made in its own memory into a free shared buffer.
        fn copy_in(
            &self,
            buffer: &gst::BufferRef,
            info: &gst_video::VideoInfo,
            layout: &FrameLayout,
        ) -> Result<dmabuf_core::pool::Lease, gst::FlowError> {
            let frame =
                gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ["cannot map the input frame"]
                    );
                    gst::FlowError::Error
                })?;
            let lease = loop {
                if self.unlocked.load(Ordering::SeqCst) {
                    return Err(gst::FlowError::Flushing);
                }
                let mut p = lock(&self.publisher);
                let p = p.as_mut().ok_or(gst::FlowError::Flushing)?;
                match p.acquire(Duration::from_millis(20)) {
                    Ok(Some(l)) => break l,
                    Ok(None) => continue,
                    Err(e) => {
                        gst::element_imp_error!(self, gst::ResourceError::Write, ["{e}"]);
                        return Err(gst::FlowError::Error);
                    }
                }
            };
            let res = lease.with_bytes_mut(|dst| {
                for (i, pl) in layout.planes.iter().enumerate() {
                    let Ok(src) = frame.plane_data(i as u32) else {
                        return false;
                    };
                    let sstride = frame.plane_stride()[i] as usize;
                    let n = pl.row_bytes as usize;
                    for r in 0..pl.rows as usize {
                        let s = r * sstride;
                        let d = pl.offset as usize + r * pl.stride as usize;
                        let (Some(from), Some(to)) = (src.get(s..s + n), dst.get_mut(d..d + n))
                        else {
                            return false;
                        };
                        to.copy_from_slice(from);
                    }
                }
                true
            });
            match res {
                Ok(true) => Ok(lease),
                Ok(false) => {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ["the input frame is smaller than its caps say"]
                    );
                    Err(gst::FlowError::Error)
                }
                Err(e) => {
                    gst::element_imp_error!(self, gst::ResourceError::Write, ["{e}"]);
                    Err(gst::FlowError::Error)
                }
            }
        }

        fn post_stats(&self) {
            let s = gst::Structure::builder("dmabufpipesink-stats")
                .field("frames-in-place", self.in_place.load(Ordering::Relaxed))
                .field("frames-copied", self.copied.load(Ordering::Relaxed))
                .build();
            let _ = self
                .obj()
                .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        }
    }

    impl BaseSinkImpl for DmabufPipeSink {
        fn start(&self) -> Result<(), gst::ErrorMessage> {
            self.in_place.store(0, Ordering::Relaxed);
            self.copied.store(0, Ordering::Relaxed);
            self.waited.store(false, Ordering::Relaxed);
            *lock(&self.started) = Some(Instant::now());
            Ok(())
        }

        fn stop(&self) -> Result<(), gst::ErrorMessage> {
            if let Some(n) = lock(&self.negotiated).take() {
                if let Some(pool) = n.pool {
                    let _ = pool.set_active(false);
                }
            }
            if let Some(p) = lock(&self.publisher).take() {
                p.finish(Duration::from_secs(1));
            }
            Ok(())
        }

        fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
            let info = gst_video::VideoInfo::from_caps(caps)
                .map_err(|_| gst::loggable_error!(CAT, "caps without video info: {caps}"))?;
            let pixel = caps::from_gst(info.format()).ok_or_else(|| {
                gst::loggable_error!(CAT, "format {} is not carried", info.format())
            })?;
            let format = FrameFormat::linear(pixel, info.width(), info.height());
            let settings = lock(&self.settings).clone();
            let color = caps::color_info(&info);
            let geometry = caps::geometry(&info);
            let mut guard = lock(&self.publisher);
            let alloc: AllocChoice = settings.alloc.parse().map_err(|e: String| {
                gst::element_imp_error!(self, gst::ResourceError::Settings, ["alloc: {e}"]);
                gst::loggable_error!(CAT, "alloc: {e}")
            })?;
            match guard.as_mut() {
                Some(p) if p.format() == format && p.stream_info() == (color, geometry) => {}
                Some(p) => {
                    // Renegotiate: every consumer gets the new format and buffers.
                    p.set_stream_info(color, geometry);
                    let pool = make_pool(alloc, &info, format, settings.buffers as usize)
                        .map_err(|e| gst::loggable_error!(CAT, "renegotiating to {format}: {e}"))?;
                    p.replace_pool(pool)
                        .map_err(|e| gst::loggable_error!(CAT, "renegotiating to {format}: {e}"))?;
                    gst::info!(CAT, imp = self, "renegotiated to {format}");
                }
                None => {
                    let fps = info.fps();
                    let opts = PublisherOptions {
                        buffers: settings.buffers as usize,
                        alloc,
                        fps: if fps.numer() > 0 {
                            (fps.numer() as u32, fps.denom() as u32)
                        } else {
                            (0, 1)
                        },
                        color,
                        geometry,
                        checksum: settings.checksum,
                        listener: ListenerOptions {
                            mode: settings.mode,
                            ..ListenerOptions::default()
                        },
                        ..PublisherOptions::default()
                    };
                    let p = make_pool(alloc, &info, format, settings.buffers as usize)
                        .and_then(|pool| {
                            Publisher::with_pool(&settings.socket, pool, opts)
                                .map_err(|e| e.to_string())
                        })
                        .map_err(|e| {
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::OpenWrite,
                                ["{}: {e}", settings.socket]
                            );
                            gst::loggable_error!(CAT, "{}: {e}", settings.socket)
                        })?;
                    gst::info!(
                        CAT,
                        imp = self,
                        "serving {format} on {} ({})",
                        settings.socket,
                        p.allocator()
                    );
                    *guard = Some(p);
                }
            }
            let layout = guard
                .as_ref()
                .and_then(|p| p.pool().buffer(0).map(|b| b.layout.clone()))
                .ok_or_else(|| gst::loggable_error!(CAT, "the pool has no buffers"))?;
            drop(guard);
            let mut n = lock(&self.negotiated);
            if let Some(old) = n.take().and_then(|o| o.pool) {
                let _ = old.set_active(false);
            }
            *n = Some(Negotiated {
                info,
                layout,
                pool: None,
            });
            Ok(())
        }

        fn propose_allocation(
            &self,
            query: &mut gst::query::Allocation,
        ) -> Result<(), gst::LoggableError> {
            let (_caps, need_pool) = query.get_owned();
            query.add_allocation_meta::<gst_video::VideoMeta>(None);
            if !need_pool {
                return Ok(());
            }
            let mut n = lock(&self.negotiated);
            let Some(n) = n.as_mut() else {
                return Ok(());
            };
            let size = lock(&self.publisher)
                .as_ref()
                .and_then(|p| p.pool().buffer(0).map(|b| b.fd_sizes.iter().sum::<u64>()))
                .unwrap_or(0) as u32;
            let buffers = lock(&self.settings).buffers;
            let pool = match &n.pool {
                Some(p) => p.clone(),
                None => {
                    let p = SharedPool::new(self.publisher.clone(), n.info.clone());
                    let mut config = p.config();
                    config.set_params(n.info.to_caps().ok().as_ref(), size, 0, buffers);
                    config.add_option("GstBufferPoolOptionVideoMeta");
                    p.set_config(config)
                        .map_err(|e| gst::loggable_error!(CAT, "pool config: {e}"))?;
                    n.pool = Some(p.clone());
                    p
                }
            };
            query.add_allocation_pool(Some(&pool), size, 0, buffers);
            Ok(())
        }

        fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
            let wait = lock(&self.settings).wait_consumers;
            if wait > 0 && !self.waited.load(Ordering::Relaxed) {
                self.wait_for_consumers(wait)?;
                self.waited.store(true, Ordering::Relaxed);
            }
            let (info, layout, pool) = {
                let n = lock(&self.negotiated);
                let n = n.as_ref().ok_or(gst::FlowError::NotNegotiated)?;
                (n.info.clone(), n.layout.clone(), n.pool.clone())
            };
            let own = pool.as_ref().and_then(|p| p.take_lease(buffer));
            let copied = own.is_none();
            let lease = match own {
                Some(l) => l,
                None => self.copy_in(buffer, &info, &layout)?,
            };
            let pts_ns = match buffer.pts() {
                Some(t) => t.nseconds() as i64,
                None => lock(&self.started).map_or(0, |t| t.elapsed().as_nanos() as i64),
            };
            let mut p = lock(&self.publisher);
            let p = p.as_mut().ok_or(gst::FlowError::Flushing)?;
            match p.publish_shared(
                Arc::new(lease),
                FrameMeta {
                    pts_ns,
                    copied,
                    ..FrameMeta::default()
                },
            ) {
                Ok(_) => {}
                Err(dmabuf_core::publisher::PublishError::ForeignLease(id)) => {
                    // A buffer of the pool before a renegotiation: dropped.
                    gst::debug!(
                        CAT,
                        imp = self,
                        "dropping buffer {id} of the previous format"
                    );
                    return Ok(gst::FlowSuccess::Ok);
                }
                Err(e) => {
                    gst::element_imp_error!(self, gst::ResourceError::Write, ["{e}"]);
                    return Err(gst::FlowError::Error);
                }
            }
            let _ = p.serve(Duration::ZERO);
            if copied {
                self.copied.fetch_add(1, Ordering::Relaxed);
            } else {
                self.in_place.fetch_add(1, Ordering::Relaxed);
            }
            Ok(gst::FlowSuccess::Ok)
        }

        fn event(&self, event: gst::Event) -> bool {
            if let gst::EventView::Eos(_) = event.view() {
                let (a, b) = (
                    self.in_place.load(Ordering::Relaxed),
                    self.copied.load(Ordering::Relaxed),
                );
                gst::info!(
                    CAT,
                    imp = self,
                    "end of stream: {a} frames written in place, {b} copied"
                );
                self.post_stats();
            }
            self.parent_event(event)
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
}
