//! Decoding straight into pool buffers: a custom `AVCodecContext.get_buffer2`.
//!
//! This is the producer's FFmpeg interface layer and its only `unsafe` code. libavcodec asks
//! `get_buffer2` for every picture it decodes (and keeps some of them as reference frames);
//! ours leases a pool buffer, points the frame's planes into its CPU mapping, and wraps the
//! lease in an `AVBufferRef` (`av_buffer_create`) whose free callback drops it. When the decoder
//! outputs the picture, [`DirectDecode::lease_of`] recognises the buffer and hands the server an
//! `Arc<Lease>`: the decoder's output *is* the shared buffer, and the pool slot is free again only
//! when the decoder has dropped its references and every consumer has released it.
//!
//! Decoders such as H.264 assume that a picture and every reference it predicts from share one
//! layout (the same linesizes). So a picture goes into a pool buffer only when the layout its
//! own size calls for is exactly the pool's; every other picture goes into an FFmpeg buffer
//! laid out exactly as a pool *for its size* will be:
//! - the pool is dry (decoder references plus consumer holds use every buffer but the
//!   reserve): a spare buffer with the pool's layout;
//! - a mid-stream size or format change: pictures of the new size are requested before the
//!   server has seen the first of them and renegotiated, so they get spare buffers with the
//!   layout of their size ([`layout_for`]), recorded here; the server's new pool is then made
//!   with that same storage ([`DirectDecode::storage_for`]), so the pictures decoded into it
//!   have the linesizes of the references decoded before it existed. (Handing them old-pool
//!   buffers or FFmpeg's default buffers gave another linesize and silently wrong pixels.)
//!
//! The server copies such a frame once into a pool buffer. Both fallbacks are counted. With no
//! pool attached at all (`--decode-path copy`) the callback defers to
//! `avcodec_default_get_buffer2`, whose pools keep one layout per size themselves.
//!
//! FFmpeg's contract (`libavcodec/avcodec.h`, `get_buffer2`): with frame threading the
//! callback runs on decoder threads, so everything here is `Sync`; the decoder must have
//! `AV_CODEC_CAP_DR1`; data pointers and linesizes must meet `avcodec_align_dimensions2`.
#![allow(unsafe_code)]

use dmabuf_core::format::{FrameFormat, FrameLayout, PixelFormat};
use dmabuf_core::pool::{Lease, Pool};
use ffmpeg::ffi;
use ffmpeg_next as ffmpeg;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes the decoder may touch past a plane's last aligned row (FFmpeg's own pools add
/// `16 + STRIDE_ALIGN - 1`).
pub const PLANE_SLACK: u64 = 16 + 64;

/// Why frames were copied instead of decoded in place.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectCounts {
    /// Pictures decoded into a pool buffer.
    pub direct: u64,
    /// Pictures that went to FFmpeg's own buffers because the pool was dry.
    pub pool_dry: u64,
    /// ... because no pool was attached, or the picture did not fit its storage or format.
    pub unfit: u64,
}

/// FFmpeg-owned buffers with the pool's exact layout, for pictures decoded while the pool is
/// dry: H.264 and others assume every picture (references included) has the same linesizes,
/// so the fallback cannot be FFmpeg's default buffers.
struct SparePool(*mut ffi::AVBufferPool);

// SAFETY: an AVBufferPool is internally locked; av_buffer_pool_get may be called from any
// thread (libavutil/buffer.h), and uninit may run on any thread once.
unsafe impl Send for SparePool {}
// SAFETY: as above.
unsafe impl Sync for SparePool {}

impl Drop for SparePool {
    fn drop(&mut self) {
        // SAFETY: we own the pool reference; uninit frees it once every buffer it handed out
        // has been returned.
        unsafe { ffi::av_buffer_pool_uninit(&mut self.0) };
    }
}

struct Attached {
    pool: Pool,
    spare: SparePool,
    av_format: i32,
    layout: FrameLayout,
    /// The picture format and aligned size last found to have the pool's layout.
    fits: Option<(i32, (u32, u32))>,
    /// Where each pool buffer is mapped (addresses, fixed for the pool's life), to recognise a
    /// decoded frame's buffer without locking every slot per frame.
    bases: Vec<usize>,
}

/// Spare buffers for pictures whose size or format has no pool yet (a mid-stream change).
struct Pending {
    av_format: i32,
    /// The decoder's visible size when it asked (to find this entry when the pool is made).
    visible: (u32, u32),
    /// The aligned picture size the layout is made for.
    storage: (u32, u32),
    layout: FrameLayout,
    spare: SparePool,
}

/// Sizes in flight at once are few (one change at a time, plus frame threads' lag).
const MAX_PENDING: usize = 4;

struct State {
    attached: Mutex<Option<Attached>>,
    pending: Mutex<Vec<Pending>>,
    /// The FFmpeg pixel formats this build carries, as `AVPixelFormat` values.
    formats: Vec<(i32, PixelFormat)>,
    /// Leave this many buffers free for the copy path and the consumers.
    reserve: usize,
    direct: AtomicU64,
    pool_dry: AtomicU64,
    unfit: AtomicU64,
}

/// The installed callback's state; keep it alive (and declared after the codec context in any
/// struct holding both, so it drops after) as long as the codec context.
pub struct DirectDecode {
    state: Arc<State>,
}

/// What one `av_buffer_create` wraps.
struct DirectBuf {
    lease: Arc<Lease>,
    /// The CPU write bracket is still open (closed at output, or when FFmpeg frees it).
    writing: AtomicBool,
}

impl DirectBuf {
    fn finish_writing(&self) {
        if self.writing.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.lease.end_raw_write() {
                tracing::warn!(
                    "ending the decoder's write to buffer {}: {e}",
                    self.lease.id()
                );
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DirectDecode {
    /// Install the callback on a decoder context that is not open yet. `None` (with the reason)
    /// when the decoder cannot decode into caller buffers.
    /// `formats`: the FFmpeg pixel formats the producer carries and their pixel format.
    pub fn install(
        ctx: &mut ffmpeg::codec::context::Context,
        codec: &ffmpeg::Codec,
        formats: &[(ffmpeg::format::Pixel, PixelFormat)],
    ) -> Result<Self, String> {
        if !codec
            .capabilities()
            .contains(ffmpeg::codec::Capabilities::DR1)
        {
            return Err(format!(
                "the {} decoder cannot decode into caller buffers (no AV_CODEC_CAP_DR1)",
                codec.name()
            ));
        }
        let state = Arc::new(State {
            attached: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            formats: formats
                .iter()
                .map(|&(av, ours)| (ffi::AVPixelFormat::from(av) as i32, ours))
                .collect(),
            reserve: 1,
            direct: AtomicU64::new(0),
            pool_dry: AtomicU64::new(0),
            unfit: AtomicU64::new(0),
        });
        // SAFETY: `ctx` is a valid, unopened codec context we own. `opaque` points at `state`,
        // which `Self` keeps alive; the owner drops `Self` after the context (documented on
        // the type), so every callback sees a live `State`.
        unsafe {
            let raw = ctx.as_mut_ptr();
            (*raw).opaque = Arc::as_ptr(&state) as *mut std::ffi::c_void;
            (*raw).get_buffer2 = Some(get_buffer2);
            // FFmpeg 5.1 still has the (deprecated) flag and warns without it; the callback
            // is thread-safe (a mutex-guarded pool and atomics).
            (*raw).thread_safe_callbacks = 1;
        }
        Ok(Self { state })
    }

    /// The picture size libavcodec will ask buffers for (`avcodec_align_dimensions2` applied
    /// to the coded size), for sizing the pool's storage.
    pub fn storage_size(decoder: &mut ffmpeg::decoder::Video) -> (u32, u32) {
        // SAFETY: the context is open and valid; avcodec_align_dimensions2 reads its codec id
        // and pixel format and writes the three out-parameters, which point at locals.
        unsafe {
            let raw = decoder.as_mut_ptr();
            let mut w = (*raw).coded_width.max((*raw).width);
            let mut h = (*raw).coded_height.max((*raw).height);
            let mut align = [0i32; 8];
            ffi::avcodec_align_dimensions2(raw, &mut w, &mut h, align.as_mut_ptr());
            (w.max(1) as u32, h.max(1) as u32)
        }
    }

    /// How many pictures the decoder may keep as references for this stream: from the level's
    /// decoded-picture-buffer limit for H.264 (Table A-1) and HEVC (A.4.2), the reference slot
    /// count for VP9/AV1, else H.264's maximum of 16.
    pub fn reference_frames(decoder: &mut ffmpeg::decoder::Video) -> usize {
        // SAFETY: the context is open and valid; we read three integers.
        let (level, w, h) = unsafe {
            let raw = decoder.as_ptr();
            (
                (*raw).level,
                (*raw).width.max(1) as u64,
                (*raw).height.max(1) as u64,
            )
        };
        use ffmpeg::codec::Id;
        match decoder.id() {
            Id::H264 => {
                let max_dpb_mbs: u64 = match level {
                    10 | 9 => 396,
                    11 => 900,
                    12 | 13 | 20 => 2376,
                    21 => 4752,
                    22 | 30 => 8100,
                    31 => 18000,
                    32 => 20480,
                    40 | 41 => 32768,
                    42 => 34816,
                    50 => 110400,
                    51 | 52 => 184320,
                    60..=62 => 696320,
                    _ => return 16,
                };
                (max_dpb_mbs / (w.div_ceil(16) * h.div_ceil(16))).clamp(1, 16) as usize
            }
            Id::HEVC => {
                let max_luma_ps: u64 = match level / 3 {
                    10 => 36864,
                    20 => 122880,
                    21 => 245760,
                    30 => 552960,
                    31 => 983040,
                    40 | 41 => 2228224,
                    50..=52 => 8912896,
                    60..=62 => 35651584,
                    _ => return 16,
                };
                let pic = w * h;
                if pic <= max_luma_ps / 4 {
                    16
                } else if pic <= max_luma_ps / 2 {
                    12
                } else if pic <= max_luma_ps * 3 / 4 {
                    8
                } else {
                    6
                }
            }
            Id::VP8 => 3,
            Id::VP9 | Id::AV1 => 8,
            _ => 16,
        }
    }

    /// The storage size the decoder already laid pictures of this format and visible size out
    /// for (a mid-stream change, before the pool for it exists): the new pool must use it, so
    /// that pictures decoded into it share the linesizes of those decoded before.
    pub fn storage_for(
        &self,
        av_format: ffmpeg::format::Pixel,
        width: u32,
        height: u32,
    ) -> Option<(u32, u32)> {
        let av = ffi::AVPixelFormat::from(av_format) as i32;
        lock(&self.state.pending)
            .iter()
            .rev()
            .find(|p| p.av_format == av && p.visible == (width, height))
            .map(|p| p.storage)
    }

    /// Start decoding pictures of `av_format` into `pool` (laid out with [`layout_for`]).
    pub fn attach(&self, pool: Pool, av_format: ffmpeg::format::Pixel) {
        let Some(layout) = pool.buffer(0).map(|b| b.layout.clone()) else {
            return;
        };
        let bases = (0..pool.len() as u32)
            .map(|id| pool.base_ptr(id).map_or(0, |p| p as usize))
            .collect();
        // SAFETY: plain allocation of a buffer pool; NULL is handled at use.
        let spare = SparePool(unsafe { ffi::av_buffer_pool_init(layout.size as usize, None) });
        *lock(&self.state.attached) = Some(Attached {
            pool,
            spare,
            av_format: ffi::AVPixelFormat::from(av_format) as i32,
            layout,
            fits: None,
            bases,
        });
    }

    /// Take over `old`'s pool and spare layouts (a decoder opened afresh on the same stream).
    pub fn adopt(&self, old: &DirectDecode) {
        *lock(&self.state.attached) = lock(&old.state.attached).take();
        *lock(&self.state.pending) = std::mem::take(&mut *lock(&old.state.pending));
        // The counts go on across passes.
        for (new, old) in [
            (&self.state.direct, &old.state.direct),
            (&self.state.pool_dry, &old.state.pool_dry),
            (&self.state.unfit, &old.state.unfit),
        ] {
            new.fetch_add(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Stop decoding into the pool (pictures already decoded keep their buffers).
    pub fn detach(&self) {
        *lock(&self.state.attached) = None;
    }

    pub fn counts(&self) -> DirectCounts {
        DirectCounts {
            direct: self.state.direct.load(Ordering::Relaxed),
            pool_dry: self.state.pool_dry.load(Ordering::Relaxed),
            unfit: self.state.unfit.load(Ordering::Relaxed),
        }
    }

    /// The pool buffer `frame` was decoded into, if it was, with the CPU write bracket closed:
    /// ready to publish. `None` means the frame lives in FFmpeg's memory (copy it).
    pub fn lease_of(&self, frame: &ffmpeg::frame::Video) -> Option<Arc<Lease>> {
        let attached = lock(&self.state.attached);
        let a = attached.as_ref()?;
        // SAFETY: `frame` is a valid decoded frame; we read its plane pointers, linesizes and
        // first buffer reference without keeping them beyond this call.
        let (data, linesize, buf0) = unsafe {
            let f = &*frame.as_ptr();
            (f.data, f.linesize, f.buf[0])
        };
        if buf0.is_null() {
            return None;
        }
        let plane0 = data[0] as usize;
        let (id, base) = a
            .bases
            .iter()
            .enumerate()
            .find(|(_, &base)| base + a.layout.planes[0].offset as usize == plane0)
            .map(|(id, &base)| (id as u32, base))?;
        let laid_out_as_ours = a.layout.planes.iter().enumerate().all(|(i, p)| {
            data[i] as usize == base + p.offset as usize
                && i64::from(linesize[i]) == i64::from(p.stride)
        });
        if !laid_out_as_ours {
            // Cropping moved the plane pointers inside our buffer: the consumer's layout would
            // not match, so the server copies this frame.
            return None;
        }
        // SAFETY: data[0] points into pool buffer `id`'s mapping. Only `get_buffer2` below puts
        // pool addresses into frames, and it always sets buf[0] to an `av_buffer_create` ref
        // whose opaque is a `DirectBuf` for that buffer; `frame` holds that ref, so the
        // `DirectBuf` is alive for this borrow.
        let db = unsafe { &*(ffi::av_buffer_get_opaque(buf0) as *const DirectBuf) };
        if db.lease.id() != id {
            tracing::error!(
                "decoded frame points into buffer {id} but carries buffer {}",
                db.lease.id()
            );
            return None;
        }
        db.finish_writing();
        Some(db.lease.clone())
    }
}

/// `AVBufferRef` free callback: drop our reference to the lease.
unsafe extern "C" fn free_direct(opaque: *mut std::ffi::c_void, _data: *mut u8) {
    // SAFETY: `opaque` is the `Box<DirectBuf>` that `get_buffer2` leaked into this buffer;
    // FFmpeg calls this exactly once, when the last reference goes.
    let db = unsafe { Box::from_raw(opaque as *mut DirectBuf) };
    db.finish_writing();
}

/// `AVCodecContext.get_buffer2`.
unsafe extern "C" fn get_buffer2(
    ctx: *mut ffi::AVCodecContext,
    frame: *mut ffi::AVFrame,
    flags: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: libavcodec calls this with a valid context (or a frame-thread copy of it, which
    // carries the same `opaque`) and a valid frame. `opaque` is the `State` that
    // `DirectDecode::install` set and keeps alive for the context's life.
    unsafe {
        let state = &*((*ctx).opaque as *const State);
        match fill(state, ctx, frame) {
            Some(r) => r,
            None => ffi::avcodec_default_get_buffer2(ctx, frame, flags),
        }
    }
}

/// Point `frame` into a pool buffer; `None` to fall back to FFmpeg's buffers.
///
/// # Safety
/// `ctx` and `frame` are the valid pointers libavcodec passed to `get_buffer2`.
unsafe fn fill(
    state: &State,
    ctx: *mut ffi::AVCodecContext,
    frame: *mut ffi::AVFrame,
) -> Option<std::ffi::c_int> {
    let mut attached = lock(&state.attached);
    let Some(a) = attached.as_mut() else {
        state.unfit.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    // SAFETY: per this function's contract.
    let (format, mut w, mut h, vis) = unsafe {
        (
            (*frame).format,
            (*frame).width,
            (*frame).height,
            ((*ctx).width.max(0) as u32, (*ctx).height.max(0) as u32),
        )
    };
    let mut align = [0i32; 8];
    // SAFETY: valid context; the out-parameters point at locals.
    unsafe { ffi::avcodec_align_dimensions2(ctx, &mut w, &mut h, align.as_mut_ptr()) };
    let storage = (w.max(1) as u32, h.max(1) as u32);
    if a.fits == Some((format, storage)) {
        // The size the pool was last found to fit: no need to lay it out again.
        // SAFETY: per this function's contract.
        return unsafe { pool_buffer(state, a, frame) };
    }
    let pixel = state
        .formats
        .iter()
        .find(|(av, _)| *av == format)
        .map(|&(_, p)| p);
    let layout = pixel.and_then(|p| layout_for(p, storage.0, storage.1).ok());
    let aligned = |l: &FrameLayout| {
        l.planes
            .iter()
            .zip(align.iter())
            .all(|(p, &al)| p.stride % al.max(1) as u32 == 0)
    };
    let Some(layout) = layout.filter(aligned) else {
        // A format this build does not carry (the stream fails when it comes out), or
        // alignment we cannot meet: FFmpeg's own buffers.
        state.unfit.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    if format != a.av_format || !same_layout(&layout, &a.layout) {
        // Not the pool's layout: a mid-stream size or format change.
        state.unfit.fetch_add(1, Ordering::Relaxed);
        let mut pending = lock(&state.pending);
        let i = match pending
            .iter()
            .position(|p| p.av_format == format && p.storage == storage)
        {
            Some(i) => i,
            None => {
                if pending.len() >= MAX_PENDING {
                    // Buffers still out stay valid: uninit waits for their return.
                    pending.remove(0);
                }
                // SAFETY: plain allocation of a buffer pool; NULL is handled below.
                let spare =
                    SparePool(unsafe { ffi::av_buffer_pool_init(layout.size as usize, None) });
                pending.push(Pending {
                    av_format: format,
                    visible: vis,
                    storage,
                    layout,
                    spare,
                });
                pending.len() - 1
            }
        };
        let p = &pending[i];
        if p.spare.0.is_null() {
            return Some(-nix::libc::ENOMEM);
        }
        // SAFETY: a live buffer pool (checked non-null) of `p.layout.size`-byte buffers.
        let buf = unsafe { ffi::av_buffer_pool_get(p.spare.0) };
        if buf.is_null() {
            return Some(-nix::libc::ENOMEM);
        }
        // SAFETY: `buf` holds `layout.size` bytes (av_malloc'd, 64-byte aligned), so the
        // plane pointers stay inside it; `frame` is valid per this function's contract.
        unsafe { point_planes(&mut *frame, buf, (*buf).data, &p.layout) };
        return Some(0);
    }
    a.fits = Some((format, storage));
    // SAFETY: per this function's contract.
    unsafe { pool_buffer(state, a, frame) }
}

/// Point `frame` into a lease of the attached pool (or, the pool dry, a spare buffer with its
/// layout). The picture's size is known to fit the pool's layout.
///
/// # Safety
/// `frame` is the valid pointer libavcodec passed to `get_buffer2`.
unsafe fn pool_buffer(
    state: &State,
    a: &Attached,
    frame: *mut ffi::AVFrame,
) -> Option<std::ffi::c_int> {
    let lease = match a.pool.try_acquire_leaving(state.reserve) {
        Some(lease) => lease,
        None => {
            state.pool_dry.fetch_add(1, Ordering::Relaxed);
            if a.spare.0.is_null() {
                return None;
            }
            // SAFETY: a live buffer pool (checked non-null) of `layout.size`-byte buffers.
            let buf = unsafe { ffi::av_buffer_pool_get(a.spare.0) };
            if buf.is_null() {
                return Some(-nix::libc::ENOMEM);
            }
            // SAFETY: `buf` holds `layout.size` bytes (av_malloc'd, 64-byte aligned), so the
            // plane pointers stay inside it; `frame` is valid per this function's contract.
            unsafe { point_planes(&mut *frame, buf, (*buf).data, &a.layout) };
            return Some(0);
        }
    };
    let base = match lease.begin_raw_write() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot write buffer {} for the decoder: {e}", lease.id());
            state.unfit.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let size = a.layout.size as usize;
    let db = Box::into_raw(Box::new(DirectBuf {
        lease: Arc::new(lease),
        writing: AtomicBool::new(true),
    }));
    // SAFETY: `base..base+size` is the lease's writable mapping, alive while the `DirectBuf`
    // (which owns the lease) lives, i.e. until FFmpeg frees this buffer. On failure we take
    // the box back ourselves.
    let buf = unsafe {
        ffi::av_buffer_create(
            base,
            size,
            Some(free_direct),
            db as *mut std::ffi::c_void,
            0,
        )
    };
    if buf.is_null() {
        // SAFETY: `db` came from Box::into_raw above and FFmpeg did not take it.
        let db = unsafe { Box::from_raw(db) };
        db.finish_writing();
        return Some(-nix::libc::ENOMEM);
    }
    // SAFETY: `frame` is valid per this function's contract; `base` is the start of a
    // `layout.size`-byte mapping that `buf` keeps alive.
    unsafe { point_planes(&mut *frame, buf, base, &a.layout) };
    state.direct.fetch_add(1, Ordering::Relaxed);
    Some(0)
}

/// The layout of a pool (and of every spare buffer) for pictures of `pixel` whose aligned
/// (`avcodec_align_dimensions2`) size is `storage_w` x `storage_h`: strides and plane offsets
/// depend on that storage size alone, so every picture of one size gets the same linesizes.
pub fn layout_for(
    pixel: PixelFormat,
    storage_w: u32,
    storage_h: u32,
) -> Result<FrameLayout, dmabuf_core::format::LayoutError> {
    FrameLayout::with_storage(
        FrameFormat::linear(pixel, storage_w, storage_h),
        storage_w,
        storage_h,
        PLANE_SLACK,
    )
}

/// Two layouts put every plane at the same offset with the same stride.
fn same_layout(a: &FrameLayout, b: &FrameLayout) -> bool {
    a.planes.len() == b.planes.len()
        && a.size <= b.size
        && a.planes
            .iter()
            .zip(&b.planes)
            .all(|(x, y)| x.offset == y.offset && x.stride == y.stride)
}

/// Give `frame` the buffer `buf` with planes laid out as `layout` from `base`.
///
/// # Safety
/// `base..base + layout.size` is writable memory owned by `buf`, which the frame takes over.
unsafe fn point_planes(
    frame: &mut ffi::AVFrame,
    buf: *mut ffi::AVBufferRef,
    base: *mut u8,
    layout: &FrameLayout,
) {
    frame.buf[0] = buf;
    for (i, p) in layout.planes.iter().enumerate() {
        // SAFETY: every plane offset lies inside the layout's size (FrameLayout invariant).
        frame.data[i] = unsafe { base.add(p.offset as usize) };
        frame.linesize[i] = p.stride as i32;
    }
    frame.extended_data = frame.data.as_mut_ptr();
}

/// libavutil's description of pixel format `p` (`av_pix_fmt_desc_get`).
pub fn pixel_descriptor(p: ffmpeg::format::Pixel) -> Option<&'static ffi::AVPixFmtDescriptor> {
    // SAFETY: av_pix_fmt_desc_get takes any value and returns NULL or a pointer to a static,
    // immutable descriptor.
    unsafe { ffi::av_pix_fmt_desc_get(ffi::AVPixelFormat::from(p)).as_ref() }
}
