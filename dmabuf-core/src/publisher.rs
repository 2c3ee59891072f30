//! [`Publisher`]: the producer's end of a stream, for programs that make frames themselves.
//!
//! A `Publisher` binds a socket, owns a pool of buffers (allocated by [`crate::alloc::select`]:
//! dma-heap, udmabuf, GBM or sealed memfds), admits consumers (each its own handshake, the
//! buffers' fds sent once), and publishes frames: the caller takes a free buffer with
//! [`Publisher::acquire`], writes the pixels into it (see [`crate::pool::Lease::with_bytes_mut`])
//! and hands it to [`Publisher::publish`] with its timestamp. The fan-out's rules apply (see
//! [`crate::fanout`] and `docs/PROTOCOL.md`): a per-consumer quota so that stalled consumers never
//! freeze the others, at most `buffers` consumers, a consumer that holds its whole quota and
//! releases nothing for `stall_timeout` dropped, a buffer written again only once every
//! consumer released it. [`Publisher::set_format`] renegotiates a new size or format with every
//! consumer. The publisher does not pace: publish when a frame is due.
//!
//! A program whose buffers come from elsewhere (a decoder that needs its own layout and extra
//! buffers for its references, a capture device's buffers) builds the [`Pool`] itself and hands
//! it over with [`Publisher::with_pool`]; it then renegotiates with [`Publisher::replace_pool`],
//! and publishes buffers it filled itself (shared with its decoder: `Arc<Lease>`) with
//! [`Publisher::publish_shared`]. An event loop that waits for its own device can wait with
//! [`Publisher::serve_until_readable`], serving consumers meanwhile. The `producer` binary is
//! such a program.
//!
//! ```no_run
//! use dmabuf_core::publisher::{Publisher, PublisherOptions};
//! use dmabuf_core::{FrameFormat, PixelFormat};
//! use std::time::{Duration, Instant};
//!
//! let format = FrameFormat::linear(PixelFormat::Nv12, 640, 480);
//! let mut publisher = Publisher::bind("/tmp/frames.sock", format, PublisherOptions::default())?;
//! let start = Instant::now();
//! for seq in 0..600u64 {
//!     // A free buffer, serving connections while none is.
//!     let Some(lease) = publisher.acquire(Duration::from_millis(100))? else { continue };
//!     lease.with_bytes_mut(|bytes| bytes.fill(seq as u8))?;
//!     publisher.publish(lease, seq as i64 * 16_666_667)?;
//!     // 60 fps: sleep to the next frame, serving connections (releases are taken then).
//!     let due = start + Duration::from_nanos((seq + 1) * 16_666_667);
//!     while Instant::now() < due {
//!         publisher.serve_until(due)?;
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::alloc::{self, AllocChoice, AllocError};
use crate::buffer::MemoryKind;
use crate::fanout::{Arrival, Fanout};
use crate::format::FrameFormat;
use crate::pool::{Lease, Pool, PoolError};
use crate::proto::server::{accepts, full_chunks, wants_ring, Session};
use crate::proto::wire::{
    ColorInfo, Frame, Geometry, Goodbye, GoodbyeReason, Message, Welcome, CHUNK_FLAG_CORRUPTED,
    FRAME_FLAG_CHECKSUM, FRAME_FLAG_COPIED, VERSION,
};
use crate::proto::{Channel, Listener, ListenerOptions, ProtoError};
use crate::time::monotonic_ns;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a [`Publisher`] runs.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Buffers in the pool: the consumers' share (2–64). A consumer alone may hold them all;
    /// with several, each holds at most its quota. With [`Publisher::with_pool`] the pool may
    /// be larger (a decoder keeps the rest); the consumers' share is then the smaller of the two.
    pub buffers: usize,
    /// Which allocator (default: `auto`, the first of dma-heap, udmabuf, GBM, memfd that
    /// works).
    pub alloc: AllocChoice,
    /// Nominal frame rate for the `Welcome` (`num`, `den`; `(0, 1)`: none). A publish waits up
    /// to one period of it for a consumer at its quota before skipping that consumer.
    pub fps: (u32, u32),
    /// Colorimetry announced to consumers (H.273 code points).
    pub color: ColorInfo,
    /// Display geometry announced to consumers (sample aspect ratio, rotation).
    pub geometry: Geometry,
    /// A consumer that holds its whole quota and releases nothing this long is dropped.
    pub stall_timeout: Duration,
    /// A connection that sends no `Hello` this long is closed.
    pub hello_timeout: Duration,
    /// Compute each frame's checksum (`docs/PROTOCOL.md`) so consumers can verify it: one read
    /// of the frame per publish (unless the caller passes one, see [`FrameMeta::checksum`]).
    pub checksum: bool,
    /// With `alloc: auto`, a consumer that can import only memfds while the pool is dma-buf
    /// gets the pool remade in sealed memfds when no other consumer is connected (for
    /// [`Publisher::with_pool`]: the caller remakes it, see [`Publisher::memfd_pool_wanted`]).
    pub memfd_fallback: bool,
    /// Serve at most this many consumers at once (0: as many as the share has buffers; never
    /// more).
    pub max_consumers: usize,
    /// The socket's file mode and allowed uids.
    pub listener: ListenerOptions,
    /// Give a consumer that asks for one a shared-memory ring for frames and releases
    /// (`docs/PROTOCOL.md`, "Ring"); false: every consumer on the socket alone.
    pub ring: bool,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            buffers: 4,
            alloc: AllocChoice::Auto,
            fps: (0, 1),
            color: ColorInfo::default(),
            geometry: Geometry::default(),
            stall_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(5),
            checksum: true,
            memfd_fallback: true,
            max_consumers: 0,
            listener: ListenerOptions::default(),
            ring: true,
        }
    }
}

/// What a published frame says besides its buffer (see `Frame` in `docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// Presentation time in nanoseconds on the stream's own timeline.
    pub pts_ns: i64,
    /// The frame's checksum when the caller computed it already (while writing it); `None`:
    /// computed here if [`PublisherOptions::checksum`] is on.
    pub checksum: Option<u32>,
    /// The publisher's CPU copied the pixels into the buffer (`FRAME_FLAG_COPIED`).
    pub copied: bool,
    /// The source concealed errors in this frame (`CHUNK_FLAG_CORRUPTED` on every plane).
    pub corrupted: bool,
    /// When the frame was ready, `CLOCK_MONOTONIC` ns (for the consumers' latency figures);
    /// `None`: now.
    pub publish_ns: Option<u64>,
}

/// What went wrong publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The socket or a connection failed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// No allocator could make the pool.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The pool could not be made or mapped.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// `buffers` outside 2–64.
    #[error("buffers must be 2..=64, not {0}")]
    Buffers(usize),
    /// A lease from another pool (one from before [`Publisher::set_format`]).
    #[error("buffer {0} is not from the publisher's current pool")]
    ForeignLease(u32),
    /// Reading the frame back for its checksum failed.
    #[error("reading buffer {id} for its checksum: {source}")]
    Checksum {
        /// The buffer.
        id: u32,
        /// Why.
        source: crate::mapping::MapError,
    },
}

/// The producer's end of a stream (see the module documentation).
pub struct Publisher {
    path: PathBuf,
    listener: Listener,
    fan: Fanout,
    pool: Pool,
    format: FrameFormat,
    opts: PublisherOptions,
    /// The consumers' share of the pool.
    share: usize,
    /// The publisher made the pool (and may remake it); false with [`Publisher::with_pool`].
    own_pool: bool,
    /// Which allocator and why (for logs).
    why: String,
    /// Consumers that can take the stream only in memfds, while the pool is not: served once
    /// the pool is idle and no one else is connected (the pool is then remade in memfds).
    deferred: Vec<Arrival>,
    /// Consumers admitted since [`Publisher::take_admitted`].
    admitted: Vec<u64>,
    seq: u64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("consumers", &self.fan.len())
            .finish()
    }
}

impl Publisher {
    /// Bind `path` (replacing a stale socket file, refusing one a running producer owns) and
    /// allocate a pool of `opts.buffers` buffers of `format`.
    pub fn bind(
        path: impl AsRef<Path>,
        format: FrameFormat,
        opts: PublisherOptions,
    ) -> Result<Self, PublishError> {
        if !(2..=64).contains(&opts.buffers) {
            return Err(PublishError::Buffers(opts.buffers));
        }
        let (allocator, why) = alloc::select(opts.alloc, format)?;
        let pool = Pool::new(allocator.as_ref(), format, opts.buffers)?;
        let mut publisher = Self::with_pool(path, pool, opts)?;
        publisher.own_pool = true;
        publisher.why = why;
        Ok(publisher)
    }

    /// Bind `path` and publish buffers of `pool`, a pool the caller made (for a decoder's
    /// layout, or a capture device's buffers). The consumers' share is the smaller of
    /// `opts.buffers` and the pool's size; `opts.alloc` only decides whether a consumer that
    /// needs memfds may ask for a memfd pool ([`Publisher::memfd_pool_wanted`]).
    pub fn with_pool(
        path: impl AsRef<Path>,
        pool: Pool,
        opts: PublisherOptions,
    ) -> Result<Self, PublishError> {
        if !(1..=64).contains(&opts.buffers) {
            return Err(PublishError::Buffers(opts.buffers));
        }
        let listener = Listener::bind(path.as_ref(), &opts.listener)?;
        let format = pool.format();
        tracing::info!(
            "publishing {format} on {}: {} buffers of {}",
            path.as_ref().display(),
            pool.len(),
            pool.allocator()
        );
        Ok(Self {
            path: path.as_ref().to_path_buf(),
            listener,
            fan: Fanout::new(opts.hello_timeout),
            share: opts.buffers.min(pool.len()),
            why: pool.allocator().to_string(),
            pool,
            format,
            opts,
            own_pool: false,
            deferred: Vec::new(),
            admitted: Vec::new(),
            seq: 0,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The frame format being published.
    pub fn format(&self) -> FrameFormat {
        self.format
    }

    /// The pool being published.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Which allocator made the pool, and why it was picked.
    pub fn allocator(&self) -> &str {
        &self.why
    }

    /// Consumers being served now.
    pub fn consumers(&self) -> usize {
        self.fan.len()
    }

    /// One line about every consumer (number, buffers held, frames skipped), for progress logs.
    pub fn summary(&self) -> String {
        self.fan.summary()
    }

    /// Frames published so far (the next frame's `seq`).
    pub fn frames(&self) -> u64 {
        self.seq
    }

    /// Set the colorimetry and geometry announced from the next `Welcome` on (a change
    /// mid-stream takes a renegotiation: [`Publisher::replace_pool`] or
    /// [`Publisher::set_format`]).
    pub fn set_stream_info(&mut self, color: ColorInfo, geometry: Geometry) {
        self.opts.color = color;
        self.opts.geometry = geometry;
    }

    /// The colorimetry and geometry consumers were told.
    pub fn stream_info(&self) -> (ColorInfo, Geometry) {
        (self.opts.color, self.opts.geometry)
    }

    /// Serve connections for up to `timeout`: accept, handshake, admit, handle releases and
    /// departures, drop stalled consumers. Returns as soon as something happened.
    pub fn serve(&mut self, timeout: Duration) -> Result<(), PublishError> {
        self.serve_inner(None, timeout).map(|_| ())
    }

    /// [`Publisher::serve`], returning as soon as `fd` (a capture device, a timer) is readable
    /// too: true if it is.
    pub fn serve_until_readable(
        &mut self,
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<bool, PublishError> {
        self.serve_inner(Some(fd), timeout)
    }

    /// A paced publisher's wait for its next frame: serve connections until `deadline`
    /// (nanosecond precision, one `ppoll(2)`), without waking for releases — those that came
    /// meanwhile are taken at the deadline, so a stream costs one wake-up per frame. Returns
    /// at the deadline, or earlier when a consumer arrived or left, or a signal came (call
    /// again until the deadline).
    ///
    /// ```no_run
    /// # use dmabuf_core::publisher::Publisher;
    /// # fn pace(publisher: &mut Publisher, due: std::time::Instant) -> Result<(), dmabuf_core::publisher::PublishError> {
    /// while std::time::Instant::now() < due {
    ///     publisher.serve_until(due)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn serve_until(&mut self, deadline: Instant) -> Result<(), PublishError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let arrivals = self.fan.sleep(&self.listener, timeout)?;
        self.after_wait(arrivals);
        Ok(())
    }

    fn serve_inner(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<bool, PublishError> {
        let (arrivals, ready) = self.fan.wait_with(&self.listener, extra, timeout)?;
        self.after_wait(arrivals);
        Ok(ready)
    }

    /// Admit those who arrived, drop the stalled, serve those deferred.
    fn after_wait(&mut self, arrivals: Vec<Arrival>) {
        for a in arrivals {
            self.admit(a);
        }
        self.fan.drop_stalled(self.opts.stall_timeout, self.share);
        self.serve_deferred();
    }

    /// The consumers admitted since the last call (their numbers, as in the logs): for a
    /// caller that sets something up per consumer, and [`Publisher::dismiss`]es it if that
    /// fails.
    pub fn take_admitted(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.admitted)
    }

    /// End consumer `n`'s session: Goodbye(`reason`, `message`) and close. False if it had
    /// left.
    pub fn dismiss(&mut self, n: u64, reason: GoodbyeReason, message: &str) -> bool {
        self.fan.dismiss(n, reason, message)
    }

    /// With [`Publisher::with_pool`]: a consumer waits for a memfd pool (it can import nothing
    /// else, and no one else is connected). Make one of the same format and hand it to
    /// [`Publisher::replace_pool`]; the waiting consumers are then admitted.
    pub fn memfd_pool_wanted(&self) -> bool {
        !self.own_pool && !self.deferred.is_empty() && self.fan.is_empty()
    }

    /// Whether a consumer that can import only memfds may wait for the pool to be remade as
    /// memfds ([`PublisherOptions::memfd_fallback`]). A caller whose pool stops being its own
    /// to remake (a source that now passes its own buffers on) turns it off; consumers waiting
    /// for memfds are then answered at once (Goodbye(unsupported), naming the pool's memory).
    pub fn set_memfd_fallback(&mut self, on: bool) {
        self.opts.memfd_fallback = on;
        if !on {
            for a in std::mem::take(&mut self.deferred) {
                self.admit(a);
            }
        }
    }

    /// A free buffer to write the next frame into, serving connections while waiting up to
    /// `timeout`; `None` when none came free in time (consumers hold them all).
    pub fn acquire(&mut self, timeout: Duration) -> Result<Option<Lease>, PublishError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.serve(Duration::ZERO)?;
            // A lone consumer may hold the whole share; with several, the quota keeps one free.
            if self.fan.len() != 1 || self.fan.max_held() < self.share {
                if let Some(lease) = self.pool.try_acquire() {
                    return Ok(Some(lease));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.serve(left.min(Duration::from_millis(50)))?;
        }
    }

    /// Wait (serving) up to `timeout` until a lone consumer holds less than its share, and
    /// has released the frames of the pool before a renegotiation — the back-pressure of a
    /// stream with one consumer, for callers whose pool is larger than the share (a
    /// decoder's). True when there is room (or nobody to wait for).
    pub fn wait_for_room(&mut self, timeout: Duration) -> Result<bool, PublishError> {
        let deadline = Instant::now() + timeout;
        while self.fan.len() == 1 && (self.fan.max_held() >= self.share || self.fan.migrating()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.serve(left.min(Duration::from_millis(100)))?;
        }
        Ok(true)
    }

    /// Publish the frame written into `lease`, presented at `pts_ns` (nanoseconds on the
    /// stream's own timeline): to every consumer below its quota (the others see a gap in
    /// `seq`, counted as dropped). Returns how many consumers it went to (0 with none: the
    /// buffer is free again at once).
    pub fn publish(&mut self, lease: Lease, pts_ns: i64) -> Result<usize, PublishError> {
        let sent = self.publish_shared(
            Arc::new(lease),
            FrameMeta {
                pts_ns,
                ..FrameMeta::default()
            },
        )?;
        self.serve(Duration::ZERO)?;
        Ok(sent)
    }

    /// [`Publisher::publish`] for a buffer the caller keeps a reference to (a decoder's
    /// reference picture) and with what it knows of the frame. A consumer at its quota that
    /// was keeping up is waited for (serving) up to one frame period (of
    /// [`PublisherOptions::fps`]) before it is skipped. Unlike [`Publisher::publish`] it does
    /// not serve after sending: the caller's next [`Publisher::serve`] reads the releases.
    pub fn publish_shared(
        &mut self,
        lease: Arc<Lease>,
        meta: FrameMeta,
    ) -> Result<usize, PublishError> {
        let id = lease.id();
        if !self.pool.owns(&lease) {
            return Err(PublishError::ForeignLease(id));
        }
        let checksum = match meta.checksum {
            Some(sum) => Some(sum),
            None if self.opts.checksum => lease
                .checksum()
                .map_err(|source| PublishError::Checksum { id, source })?,
            None => None,
        };
        let mut flags = if checksum.is_some() {
            FRAME_FLAG_CHECKSUM
        } else {
            0
        };
        if meta.copied {
            flags |= FRAME_FLAG_COPIED;
        }
        let mut chunks = full_chunks(lease.buffer());
        if meta.corrupted {
            for c in &mut chunks {
                c.flags |= CHUNK_FLAG_CORRUPTED;
            }
        }
        let frame = Frame {
            buffer_id: id,
            flags,
            seq: self.seq,
            pts_ns: meta.pts_ns,
            publish_ns: meta.publish_ns.unwrap_or_else(monotonic_ns),
            checksum: checksum.unwrap_or(0),
            chunks,
        };
        self.seq += 1;
        // The bounded wait for a consumer at its quota (see crate::fanout).
        let (num, den) = self.opts.fps;
        if num > 0 {
            let period =
                Duration::from_nanos(1_000_000_000 * u64::from(den.max(1)) / u64::from(num));
            let until = Instant::now() + period;
            while self.fan.waiting_on_quota(self.share) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.serve(left)?;
            }
        }
        let sent = self.fan.publish(&frame, lease, self.share);
        Ok(sent)
    }

    /// Change the published size or format: once every consumer has released everything
    /// (serving meanwhile, up to `timeout`), allocate a new pool and tell every consumer
    /// (RemoveBuffer, a new Welcome, the new buffers). Leases of the old pool are refused by
    /// [`Publisher::publish`] afterwards.
    pub fn set_format(
        &mut self,
        format: FrameFormat,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        self.drain(Some(timeout))?;
        let (allocator, why) = alloc::select(
            match self.pool.allocator() {
                k @ crate::AllocatorKind::Memfd if self.opts.alloc == AllocChoice::Auto => {
                    AllocChoice::Only(k)
                }
                _ => self.opts.alloc,
            },
            format,
        )?;
        let pool = Pool::new(allocator.as_ref(), format, self.opts.buffers)?;
        self.why = why;
        self.install(pool);
        Ok(())
    }

    /// Renegotiate onto `pool`, a pool the caller made (a new size or format, new colorimetry
    /// or geometry after [`Publisher::set_stream_info`], or memfds for a consumer that needs
    /// them), without waiting: each consumer is told (RemoveBuffer, a new Welcome, the new
    /// buffers) once it has released every frame of the old pool — at once if it holds none.
    /// Until then it gets no frames (a consumer that was keeping up is waited for, as at its
    /// quota: one frame period, or alone, as long as [`Publisher::wait_for_room`] waits), and
    /// one that releases none of them for the stall timeout is dropped; the others go on in
    /// the new format. Returns the number of consumers still served.
    pub fn replace_pool(&mut self, pool: Pool) -> Result<usize, PublishError> {
        self.share = self.opts.buffers.min(pool.len());
        self.why = pool.allocator().to_string();
        // Those that cannot take the new pool go first; then, if a smaller pool serves fewer
        // consumers with the stall guarantee (any n - 1 stalled leave a buffer), those that
        // joined last.
        self.fan.drop_unaccepting(&pool);
        let most = self.most_members();
        if self.fan.len() > most {
            let msg = format!(
                "the stream renegotiated to {} buffers, which serve at most {most} consumer(s) \
                 at once",
                self.share
            );
            self.fan.shed_newest(most, GoodbyeReason::Unsupported, &msg);
        }
        self.install(pool);
        for a in std::mem::take(&mut self.deferred) {
            self.admit(a);
        }
        Ok(self.fan.len())
    }

    /// Serve up to `timeout` until no consumer holds a buffer (before a renegotiation); a
    /// consumer that holds one and releases none for the stall timeout is dropped meanwhile.
    /// True when none holds any.
    pub fn wait_released(&mut self, timeout: Duration) -> Result<bool, PublishError> {
        let deadline = Instant::now() + timeout;
        while self.fan.max_held() > 0 {
            self.fan.drop_stalled(self.opts.stall_timeout, 1);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(self.fan.max_held() == 0);
            }
            self.serve(left)?;
        }
        Ok(true)
    }

    /// Serve until no consumer holds a buffer: up to `timeout` (then those still holding are
    /// dropped), or with none, as long as the consumers keep releasing (the stall rule, with a
    /// quota of one, drops one that does not).
    fn drain(&mut self, timeout: Option<Duration>) -> Result<(), PublishError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.fan.max_held() > 0 {
            self.fan.drop_stalled(self.opts.stall_timeout, 1);
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(100),
            };
            if left.is_zero() {
                // Consumers still holding frames are dropped rather than renegotiated.
                self.fan.finish_all(
                    GoodbyeReason::InternalError,
                    "held frames past a format change",
                    Duration::ZERO,
                );
                break;
            }
            self.serve(left.min(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    fn install(&mut self, pool: Pool) {
        self.format = pool.format();
        self.pool = pool;
        let welcome = self.welcome();
        self.fan.renegotiate(&welcome, &self.pool);
    }

    /// End the stream: Goodbye(end of stream) to every consumer, up to `grace` for them to
    /// release, then close.
    pub fn finish(mut self, grace: Duration) {
        self.end_stream(GoodbyeReason::EndOfStream, "end of stream", grace);
    }

    /// Say Goodbye(`reason`, `message`) to every consumer, give them up to `grace` together to
    /// release what they hold, and close their sessions; the publisher goes on listening (the
    /// next consumer starts a new stream).
    pub fn end_stream(&mut self, reason: GoodbyeReason, message: &str, grace: Duration) {
        self.fan.finish_all(reason, message, grace);
        for a in std::mem::take(&mut self.deferred) {
            refuse(a.chan, a.n, message);
        }
    }

    /// The `Welcome` consumers get now.
    pub fn welcome(&self) -> Welcome {
        let memory = self.pool.memory();
        Welcome {
            version: VERSION,
            memory,
            allocator: self.pool.allocator(),
            buffer_count: self.pool.len() as u32,
            pixel: self.format.pixel,
            width: self.format.width,
            height: self.format.height,
            fps_num: self.opts.fps.0,
            fps_den: self.opts.fps.1.max(1),
            color: self.opts.color,
            modifier: self.format.modifier,
            geometry: self.opts.geometry,
            device: 0,
        }
    }

    /// The most consumers served at once: `max_consumers`, and no more than the share serves
    /// with the stall guarantee ([`Fanout::max_members`]).
    fn most_members(&self) -> usize {
        match self.opts.max_consumers {
            0 => Fanout::max_members(self.share),
            m => m.min(Fanout::max_members(self.share)),
        }
    }

    /// Check a consumer's Hello against the pool, answer it, send it the buffers and add it.
    fn admit(&mut self, a: Arrival) {
        let memory = self.pool.memory();
        if !accepts(&a.hello, &self.format, memory) {
            let memfd_would_do = self.opts.alloc == AllocChoice::Auto
                && self.opts.memfd_fallback
                && memory != MemoryKind::Memfd
                && accepts(&a.hello, &self.format, MemoryKind::Memfd);
            if memfd_would_do && self.fan.is_empty() {
                self.deferred.push(a);
                return;
            }
            let msg = if memfd_would_do {
                format!(
                    "cannot switch the {memory} pool to memfd while {} other consumer(s) use it",
                    self.fan.len()
                )
            } else {
                format!("consumer cannot take {} in {memory}", self.format)
            };
            let offered: Vec<String> = a
                .hello
                .caps
                .iter()
                .map(|c| {
                    let name = crate::PixelFormat::from_fourcc(c.fourcc)
                        .map(|p| p.name().to_string())
                        .unwrap_or_else(|| format!("{:#x}", c.fourcc));
                    format!("{name}/{:#x}/mask {:#x}", c.modifier, c.memory_mask)
                })
                .collect();
            tracing::info!(
                "consumer #{}: {}",
                a.n,
                if offered.is_empty() {
                    "it offered nothing".to_string()
                } else {
                    format!("it offered {}", offered.join(", "))
                }
            );
            refuse(a.chan, a.n, &msg);
            return;
        }
        let most = self.most_members();
        if self.fan.len() >= most {
            // More members than the share has buffers would let stalled ones pin every buffer.
            let msg = if most < Fanout::max_members(self.share) {
                format!("this producer serves at most {most} consumer(s) at once")
            } else {
                format!(
                    "producer is full: {} buffers serve at most {most} consumers at once",
                    self.share
                )
            };
            refuse(a.chan, a.n, &msg);
            return;
        }
        let welcome = self.welcome();
        let n = a.n;
        let hello = a.hello;
        let ring = self.opts.ring && wants_ring(&hello);
        let served = Session::start_with(a.chan, &welcome, ring).and_then(|mut sess| {
            for id in 0..self.pool.len() as u32 {
                sess.add_buffer(id, self.pool.buffer(id).expect("id in range"))?;
            }
            Ok(sess)
        });
        match served {
            Ok(sess) => {
                self.fan.join(n, sess, hello);
                self.admitted.push(n);
                tracing::info!(
                    "consumer #{n} connected: {} buffers of {} sent once, frames {}; {} \
                     consumer(s) now",
                    self.pool.len(),
                    self.pool.allocator(),
                    if ring {
                        "through a shared ring"
                    } else {
                        "on the socket"
                    },
                    self.fan.len()
                );
            }
            Err(e) => tracing::warn!("consumer #{n} not served: {e}"),
        }
    }

    /// Serve consumers that need memfds once the pool can be remade: nobody connected and
    /// every buffer free (the caller holds no lease). With a caller's pool, the caller remakes
    /// it ([`Publisher::memfd_pool_wanted`]).
    fn serve_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        if !self.fan.is_empty() {
            for a in std::mem::take(&mut self.deferred) {
                let msg = format!(
                    "cannot switch the {} pool to memfd while {} other consumer(s) use it",
                    self.pool.memory(),
                    self.fan.len()
                );
                refuse(a.chan, a.n, &msg);
            }
            return;
        }
        if !self.own_pool || self.pool.free_count() != self.pool.len() {
            return;
        }
        match alloc::open(crate::AllocatorKind::Memfd)
            .map_err(PublishError::from)
            .and_then(|m| Ok(Pool::new(m.as_ref(), self.format, self.opts.buffers)?))
        {
            Ok(pool) => {
                tracing::info!(
                    "consumer cannot import {}; switching the pool to memfd",
                    self.pool.memory()
                );
                self.pool = pool;
                self.why = "memfd (a consumer could import nothing else)".into();
                for a in std::mem::take(&mut self.deferred) {
                    self.admit(a);
                }
            }
            Err(e) => {
                for a in std::mem::take(&mut self.deferred) {
                    refuse(
                        a.chan,
                        a.n,
                        &format!("cannot switch the pool to memfd: {e}"),
                    );
                }
            }
        }
    }
}

/// Answer a consumer Goodbye(unsupported, `msg`) and close.
fn refuse(chan: Channel, n: u64, msg: &str) {
    tracing::warn!("consumer #{n} not served: {msg}");
    let _ = chan.send(&Message::Goodbye(Goodbye {
        reason: GoodbyeReason::Unsupported,
        message: msg.to_string(),
    }));
    chan.close_gracefully();
}
