//! Serving consumers, one at a time: handshake, the pool's fds once, then paced frames.
//!
//! The pool is allocated before the first consumer arrives and kept for the next one. With
//! `--alloc auto`, a consumer that cannot take the pool's memory kind gets a sealed-memfd pool
//! instead (no other consumer holds buffers, so the swap is safe).

use crate::source::Source;
use crate::transport::Transport;
use anyhow::{Context as _, Result};
use dmabuf_core::alloc::{self, AllocChoice};
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::server::{accepts, full_chunks, read_hello, Pumped, Session};
use dmabuf_core::proto::wire::{Frame, GoodbyeReason, Welcome, FRAME_FLAG_CHECKSUM, VERSION};
use dmabuf_core::proto::{Listener, ListenerOptions, ProtoError};
use dmabuf_core::time::process_cpu_ns;
use dmabuf_core::{AllocatorKind, MemoryKind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub alloc: AllocChoice,
    pub buffers: usize,
    pub pace: bool,
    pub frames: Option<u64>,
    pub checksum: bool,
    /// How long a consumer may take to say Hello.
    pub hello_timeout: Duration,
    /// How long a consumer may keep every buffer before it is dropped as stalled.
    pub stall_timeout: Duration,
}

/// How one session ended.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// `--frames` were sent: the producer is done.
    Completed,
    /// The consumer went away (or was dropped); serve the next one.
    ConsumerGone,
    /// SIGINT/SIGTERM.
    Interrupted,
}

struct Server<'t> {
    opts: ServeOptions,
    pool: Pool,
    source: Source,
    stop: Arc<AtomicBool>,
    transport: &'t mut Transport,
}

/// Allocate the pool, then listen on `socket` (so the socket appears only once the producer can
/// serve), and serve until `--frames` completes one session or a signal sets `stop`.
pub fn serve(
    socket: &Path,
    listen: &ListenerOptions,
    source: Source,
    transport: &mut Transport,
    opts: ServeOptions,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let format = source.format();
    tracing::info!("source: {}", source.describe());
    let (allocator, why) =
        alloc::select(opts.alloc, format).with_context(|| format!("no allocator for {format}"))?;
    tracing::info!("allocator: {why}");
    let pool = Pool::new(allocator.as_ref(), format, opts.buffers)
        .context("allocating the buffer pool")?;
    let layout = &pool.buffer(0).expect("pool is not empty").layout;
    tracing::info!(
        "pool: {} x {} bytes ({} in {}), strides {:?}",
        pool.len(),
        layout.size,
        format,
        pool.allocator(),
        layout.planes.iter().map(|p| p.stride).collect::<Vec<_>>()
    );
    let listener = Listener::bind(socket, listen)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let mut server = Server {
        source,
        opts,
        pool,
        stop,
        transport,
    };
    eprintln!("producer: listening on {}", listener.path().display());
    loop {
        if server.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let chan = match listener.accept(Some(Duration::from_millis(200))) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e @ ProtoError::PeerRefused { .. }) => {
                tracing::warn!("refused a connection: {e}");
                continue;
            }
            Err(e) => return Err(e).context("accepting a consumer"),
        };
        match server.session(chan) {
            Ok(SessionEnd::Completed) => return Ok(()),
            Ok(SessionEnd::Interrupted) => return Ok(()),
            Ok(SessionEnd::ConsumerGone) => {
                tracing::info!("consumer gone; waiting for the next one")
            }
            Err(e) => tracing::warn!("session ended: {e:#}"),
        }
    }
}

impl Server<'_> {
    fn welcome(&self) -> Welcome {
        let f = self.source.format();
        let color = self.source.color();
        let (fps_num, fps_den) = self.source.fps();
        Welcome {
            version: VERSION,
            memory: self.pool.allocator().memory(),
            allocator: self.pool.allocator(),
            buffer_count: self.pool.len() as u32,
            pixel: f.pixel,
            width: f.width,
            height: f.height,
            fps_num,
            fps_den,
            color,
            modifier: f.modifier,
        }
    }

    fn session(&mut self, mut chan: dmabuf_core::proto::Channel) -> Result<SessionEnd> {
        let hello = read_hello(&mut chan, self.opts.hello_timeout)?;
        let format = self.source.format();
        let memory = self.pool.allocator().memory();
        if !accepts(&hello, &format, memory) {
            if self.opts.alloc == AllocChoice::Auto
                && memory != MemoryKind::Memfd
                && accepts(&hello, &format, MemoryKind::Memfd)
            {
                tracing::info!("consumer cannot import {memory}; switching the pool to memfd");
                let memfd = alloc::open(AllocatorKind::Memfd)?;
                self.pool = Pool::new(memfd.as_ref(), format, self.opts.buffers)?;
            } else {
                let offered: Vec<String> = hello
                    .caps
                    .iter()
                    .map(|c| {
                        let name = dmabuf_core::PixelFormat::from_fourcc(c.fourcc)
                            .map(|p| p.name().to_string())
                            .unwrap_or_else(|| format!("{:#x}", c.fourcc));
                        format!("{name}/{:#x}/mask {:#x}", c.modifier, c.memory_mask)
                    })
                    .collect();
                let msg = format!("consumer cannot take {format} in {memory}");
                let _ = chan.send(&dmabuf_core::proto::Message::Goodbye(
                    dmabuf_core::proto::wire::Goodbye {
                        reason: GoodbyeReason::Unsupported,
                        message: msg.clone(),
                    },
                ));
                anyhow::bail!("{msg} (it offered {})", offered.join(", "));
            }
        }
        let welcome = self.welcome();
        let mut sess: Session<Arc<Lease>> = Session::start(chan, &welcome)?;
        for id in 0..self.pool.len() as u32 {
            let buf = self.pool.buffer(id).expect("id in range");
            sess.add_buffer(id, buf)?;
        }
        tracing::info!(
            "consumer connected: {} buffers of {} sent once",
            self.pool.len(),
            self.pool.allocator()
        );
        if let Err(e) = self.transport.session_start(self.opts.hello_timeout) {
            sess.finish(
                GoodbyeReason::InternalError,
                &format!("{e:#}"),
                Duration::from_secs(2),
            );
            return Err(e);
        }
        self.source.restart()?;
        let end = self.stream(&mut sess);
        let (reason, text) = match &end {
            Ok(SessionEnd::Completed) => (GoodbyeReason::EndOfStream, "end of stream".into()),
            Ok(SessionEnd::Interrupted) => {
                (GoodbyeReason::Leaving, "producer shutting down".into())
            }
            Ok(SessionEnd::ConsumerGone) => (GoodbyeReason::Leaving, String::new()),
            Err(e) => (GoodbyeReason::InternalError, format!("{e:#}")),
        };
        if !matches!(end, Ok(SessionEnd::ConsumerGone)) {
            sess.finish(reason, &text, Duration::from_secs(2));
        }
        end
    }

    fn stream(&mut self, sess: &mut Session<Arc<Lease>>) -> Result<SessionEnd> {
        let (num, den) = self.source.fps();
        let period_ns = 1_000_000_000u64 * u64::from(den) / u64::from(num.max(1));
        let start = Instant::now();
        let cpu0 = process_cpu_ns();
        let mut last_report = Instant::now();
        let mut report_frames = 0u64;
        for seq in 0u64.. {
            if self.opts.frames.is_some_and(|n| seq >= n) {
                let secs = start.elapsed().as_secs_f64();
                tracing::info!(
                    "sent {seq} frames in {secs:.2} s ({:.1} fps), producer CPU {:.1} µs/frame",
                    seq as f64 / secs,
                    (process_cpu_ns() - cpu0) as f64 / 1e3 / seq.max(1) as f64
                );
                return Ok(SessionEnd::Completed);
            }
            if self.stop.load(Ordering::Relaxed) {
                return Ok(SessionEnd::Interrupted);
            }
            if self.opts.pace {
                let due = start + Duration::from_nanos(seq * period_ns);
                loop {
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    if sess.pump(left)? == Pumped::Left {
                        return Ok(SessionEnd::ConsumerGone);
                    }
                }
            }
            let source = &mut self.source;
            let Some(pts_ns) = self.transport.source_step(|| source.advance(seq))? else {
                tracing::info!("end of the stream after {seq} frames");
                return Ok(SessionEnd::Completed);
            };
            let Some(lease) = self.acquire(sess)? else {
                return Ok(SessionEnd::ConsumerGone);
            };
            let (checksum, publish_ns) =
                self.transport
                    .write_frame(&lease, &mut self.source, seq, self.opts.checksum)?;
            let frame = Frame {
                buffer_id: lease.id(),
                flags: if checksum.is_some() {
                    FRAME_FLAG_CHECKSUM
                } else {
                    0
                },
                seq,
                pts_ns,
                publish_ns,
                checksum: checksum.unwrap_or(0),
                chunks: full_chunks(lease.buffer()),
            };
            match sess.send_frame(frame, Arc::new(lease)) {
                Ok(()) => {}
                Err(ProtoError::Closed) => return Ok(SessionEnd::ConsumerGone),
                Err(e) => return Err(e.into()),
            }
            self.transport.after_send()?;
            if sess.pump(Duration::ZERO)? == Pumped::Left {
                return Ok(SessionEnd::ConsumerGone);
            }
            report_frames += 1;
            let since = last_report.elapsed();
            if since >= Duration::from_secs(5) {
                tracing::info!(
                    "{} frames sent, {:.1} fps, {} held by the consumer",
                    seq + 1,
                    report_frames as f64 / since.as_secs_f64(),
                    sess.held_count()
                );
                last_report = Instant::now();
                report_frames = 0;
            }
        }
        unreachable!()
    }

    /// A free buffer, waiting for releases; `None` if the consumer left. A consumer that holds
    /// every buffer for longer than the stall timeout is dropped.
    fn acquire(&self, sess: &mut Session<Arc<Lease>>) -> Result<Option<Lease>> {
        let since = Instant::now();
        loop {
            if let Some(l) = self.pool.try_acquire() {
                return Ok(Some(l));
            }
            let left = self.opts.stall_timeout.saturating_sub(since.elapsed());
            if left.is_zero() {
                anyhow::bail!(
                    "consumer holds all {} buffers and released none for {:?}; dropping it",
                    sess.held_count(),
                    self.opts.stall_timeout
                );
            }
            if sess.pump(left.min(Duration::from_millis(100)))? == Pumped::Left {
                return Ok(None);
            }
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
        }
    }
}
