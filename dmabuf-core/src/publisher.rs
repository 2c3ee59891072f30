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
//! ```no_run
//! use dmabuf_core::publisher::{Publisher, PublisherOptions};
//! use dmabuf_core::{FrameFormat, PixelFormat};
//! use std::time::Duration;
//!
//! let format = FrameFormat::linear(PixelFormat::Nv12, 640, 480);
//! let mut publisher = Publisher::bind("/tmp/frames.sock", format, PublisherOptions::default())?;
//! for seq in 0..600u64 {
//!     // A free buffer, serving connections while none is.
//!     let Some(lease) = publisher.acquire(Duration::from_millis(100))? else { continue };
//!     lease.with_bytes_mut(|bytes| bytes.fill(seq as u8))?;
//!     publisher.publish(lease, seq as i64 * 16_666_667)?;
//!     std::thread::sleep(Duration::from_millis(16));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::alloc::{self, AllocChoice, AllocError};
use crate::buffer::MemoryKind;
use crate::fanout::{Arrival, Fanout};
use crate::format::FrameFormat;
use crate::pool::{Lease, Pool, PoolError};
use crate::proto::server::{accepts, full_chunks, Session};
use crate::proto::wire::{
    ColorInfo, Frame, Geometry, Goodbye, GoodbyeReason, Message, Welcome, FRAME_FLAG_CHECKSUM,
    VERSION,
};
use crate::proto::{Channel, Listener, ListenerOptions, ProtoError};
use crate::time::monotonic_ns;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a [`Publisher`] runs.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Buffers in the pool: the consumers' share (2–64). A consumer alone may hold them all;
    /// with several, each holds at most its quota.
    pub buffers: usize,
    /// Which allocator (default: `auto`, the first of dma-heap, udmabuf, GBM, memfd that
    /// works).
    pub alloc: AllocChoice,
    /// Nominal frame rate for the `Welcome` (`num`, `den`; `(0, 1)`: none).
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
    /// of the frame per publish.
    pub checksum: bool,
    /// The socket's file mode and allowed uids.
    pub listener: ListenerOptions,
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
            listener: ListenerOptions::default(),
        }
    }
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
    /// Which allocator and why (for logs).
    why: String,
    /// Consumers that can take the stream only in memfds, while the pool is not: served once
    /// the pool is idle and no one else is connected (the pool is then remade in memfds).
    deferred: Vec<Arrival>,
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
        let listener = Listener::bind(path.as_ref(), &opts.listener)?;
        tracing::info!(
            "publishing {format} on {}: pool of {why}",
            path.as_ref().display()
        );
        Ok(Self {
            path: path.as_ref().to_path_buf(),
            listener,
            fan: Fanout::new(opts.hello_timeout),
            pool,
            format,
            opts,
            why,
            deferred: Vec::new(),
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

    /// Which allocator made the pool, and why it was picked.
    pub fn allocator(&self) -> &str {
        &self.why
    }

    /// Consumers being served now.
    pub fn consumers(&self) -> usize {
        self.fan.len()
    }

    /// Frames published so far (the next frame's `seq`).
    pub fn frames(&self) -> u64 {
        self.seq
    }

    /// Serve connections for up to `timeout`: accept, handshake, admit, handle releases and
    /// departures, drop stalled consumers. Returns as soon as something happened.
    pub fn serve(&mut self, timeout: Duration) -> Result<(), PublishError> {
        let arrivals = self.fan.wait(&self.listener, timeout)?;
        for a in arrivals {
            self.admit(a);
        }
        self.fan
            .drop_stalled(self.opts.stall_timeout, self.pool.len());
        self.serve_deferred();
        Ok(())
    }

    /// A free buffer to write the next frame into, serving connections while waiting up to
    /// `timeout`; `None` when none came free in time (consumers hold them all).
    pub fn acquire(&mut self, timeout: Duration) -> Result<Option<Lease>, PublishError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.serve(Duration::ZERO)?;
            // A lone consumer may hold the whole pool; with several, the quota keeps one free.
            if let Some(lease) = self.pool.try_acquire() {
                return Ok(Some(lease));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.serve(left.min(Duration::from_millis(50)))?;
        }
    }

    /// Publish the frame written into `lease`, presented at `pts_ns` (nanoseconds on the
    /// stream's own timeline): to every consumer below its quota (the others see a gap in
    /// `seq`, counted as dropped). Returns how many consumers it went to (0 with none: the
    /// buffer is free again at once).
    pub fn publish(&mut self, lease: Lease, pts_ns: i64) -> Result<usize, PublishError> {
        let id = lease.id();
        if self.pool.buffer(id).map(|b| b.layout.format) != Some(self.format)
            || lease.buffer().layout.format != self.format
        {
            return Err(PublishError::ForeignLease(id));
        }
        let checksum = if self.opts.checksum {
            lease
                .checksum()
                .map_err(|source| PublishError::Checksum { id, source })?
        } else {
            None
        };
        let frame = Frame {
            buffer_id: id,
            flags: if checksum.is_some() {
                FRAME_FLAG_CHECKSUM
            } else {
                0
            },
            seq: self.seq,
            pts_ns,
            publish_ns: monotonic_ns(),
            checksum: checksum.unwrap_or(0),
            chunks: full_chunks(lease.buffer()),
        };
        self.seq += 1;
        let sent = self.fan.publish(&frame, Arc::new(lease), self.pool.len());
        self.serve(Duration::ZERO)?;
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
        let deadline = Instant::now() + timeout;
        while self.fan.max_held() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Consumers still holding frames are dropped rather than renegotiated.
                self.fan.finish_all(
                    GoodbyeReason::InternalError,
                    "held frames past a format change",
                    Duration::ZERO,
                );
                break;
            }
            self.serve(left.min(Duration::from_millis(50)))?;
        }
        let (allocator, why) = alloc::select(
            match self.pool.allocator() {
                k @ crate::AllocatorKind::Memfd if self.opts.alloc == AllocChoice::Auto => {
                    AllocChoice::Only(k)
                }
                _ => self.opts.alloc,
            },
            format,
        )?;
        self.pool = Pool::new(allocator.as_ref(), format, self.opts.buffers)?;
        self.format = format;
        self.why = why;
        let welcome = self.welcome();
        self.fan.renegotiate(&welcome, &self.pool);
        Ok(())
    }

    /// End the stream: Goodbye(end of stream) to every consumer, up to `grace` for them to
    /// release, then close.
    pub fn finish(mut self, grace: Duration) {
        self.fan
            .finish_all(GoodbyeReason::EndOfStream, "end of stream", grace);
    }

    fn welcome(&self) -> Welcome {
        let memory = self.pool.allocator().memory();
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

    /// Check a consumer's Hello against the pool, answer it, send it the buffers and add it.
    fn admit(&mut self, a: Arrival) {
        let memory = self.pool.allocator().memory();
        if !accepts(&a.hello, &self.format, memory) {
            let memfd_would_do = self.opts.alloc == AllocChoice::Auto
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
            refuse(a.chan, a.n, &msg);
            return;
        }
        if self.fan.len() >= Fanout::max_members(self.pool.len()) {
            let msg = format!(
                "producer is full: {} buffers serve at most {} consumers at once",
                self.pool.len(),
                Fanout::max_members(self.pool.len())
            );
            refuse(a.chan, a.n, &msg);
            return;
        }
        let welcome = self.welcome();
        let n = a.n;
        let served = Session::start(a.chan, &welcome).and_then(|mut sess| {
            for id in 0..self.pool.len() as u32 {
                sess.add_buffer(id, self.pool.buffer(id).expect("id in range"))?;
            }
            Ok(sess)
        });
        match served {
            Ok(sess) => {
                self.fan.join(n, sess);
                tracing::info!(
                    "consumer #{n} connected; {} consumer(s) now",
                    self.fan.len()
                );
            }
            Err(e) => tracing::warn!("consumer #{n} not served: {e}"),
        }
    }

    /// Serve consumers that need memfds once the pool can be remade: nobody connected and
    /// every buffer free (the caller holds no lease).
    fn serve_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        if !self.fan.is_empty() {
            for a in std::mem::take(&mut self.deferred) {
                let msg = format!(
                    "cannot switch the {} pool to memfd while other consumers use it",
                    self.pool.allocator().memory()
                );
                refuse(a.chan, a.n, &msg);
            }
            return;
        }
        if self.pool.free_count() != self.pool.len() {
            return;
        }
        match alloc::open(crate::AllocatorKind::Memfd)
            .map_err(PublishError::from)
            .and_then(|m| Ok(Pool::new(m.as_ref(), self.format, self.opts.buffers)?))
        {
            Ok(pool) => {
                tracing::info!(
                    "consumer cannot import {}; switching the pool to memfd",
                    self.pool.allocator().memory()
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
