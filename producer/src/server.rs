//! Serving consumers: the pool is allocated once, before the first consumer arrives; several
//! consumers are served at once (see [`dmabuf_core::fanout`]), each with its own handshake, the
//! pool's fds once, then paced frames shared by all of them.
//!
//! With `--alloc auto`, a consumer that cannot take the pool's memory kind gets a sealed-memfd
//! pool instead, if no other consumer is connected (otherwise it is refused, saying why).

use crate::source::{NextFrame, Source};
use crate::transport::{Transport, TransportKind};
use anyhow::{Context as _, Result};
use dmabuf_core::alloc::{self, AllocChoice};
use dmabuf_core::fanout::{Arrival, Fanout};
use dmabuf_core::format::frame_checksum;
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::procstat;
use dmabuf_core::proto::server::{accepts, full_chunks, Session};
use dmabuf_core::proto::wire::{
    ColorInfo, Frame, Geometry, GoodbyeReason, Welcome, CHUNK_FLAG_CORRUPTED, FRAME_FLAG_CHECKSUM,
    FRAME_FLAG_COPIED, VERSION,
};
use dmabuf_core::proto::{Listener, ListenerOptions};
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
    /// How long a consumer may hold its whole quota of buffers (alone: the pool) without
    /// releasing any before it is dropped.
    pub stall_timeout: Duration,
    /// End the stream (EndOfStream) after this long, like `frames`.
    pub duration: Option<Duration>,
    /// How often the progress line (rate, consumers, RSS, fds) is logged.
    pub report_every: Duration,
}

/// When to publish each frame: at its presentation time (the source's timestamp, for a file the
/// decoder's best-effort timestamp), so that wall time follows the stream's timeline whatever
/// its frame rate does (variable frame rate included).
///
/// A frame with its predecessor's timestamp (a duplicate) is due with it (no drift); a second
/// in a row is a broken clock, handled as below.
///
/// The rule for timestamps that cannot be followed: a step from one frame's timestamp to the
/// next that goes backwards, does not advance, or jumps forward by more than
/// [`Pacer::MAX_STEP_NS`] (2 s, or 4 nominal frame periods if longer) is a *discontinuity*
/// (an edit, a wrap-around, a broken muxer): the frame is due one nominal period after the
/// previous one and the timeline restarts from it. So a jump neither stalls the stream nor
/// lets it burst to catch up. Each discontinuity is logged (the first few, then every 100th)
/// and counted. The pts sent to consumers is the source's own, unchanged.
///
/// A frame that is late (the producer was slow, or waited for a consumer) is sent at once;
/// being late by more than one frame period restarts the timeline from it, so a hold-up never
/// ends in a catch-up burst: a paced stream is late, it does not hurry.
struct Pacer {
    period_ns: u64,
    /// Wall time and pts of the frame the timeline is measured from.
    origin: Option<(Instant, i64)>,
    /// The last frame's pts and when it was due.
    last: Option<(i64, Instant)>,
    discontinuities: u64,
    /// Times the producer fell more than a frame behind and restarted the timeline.
    late: u64,
    /// Frames in a row whose timestamp equals the previous one's.
    repeats: u32,
}

impl Pacer {
    const MAX_STEP_NS: i64 = 2_000_000_000;

    fn new(period_ns: u64) -> Self {
        Self {
            period_ns: period_ns.max(1),
            origin: None,
            last: None,
            discontinuities: 0,
            late: 0,
            repeats: 0,
        }
    }

    fn max_step(&self) -> i64 {
        Self::MAX_STEP_NS.max(4 * self.period_ns as i64)
    }

    /// When the frame with this pts is due, given the time now.
    fn due(&mut self, pts_ns: i64, now: Instant) -> Instant {
        let period = Duration::from_nanos(self.period_ns);
        let due = match (self.origin, self.last) {
            (Some((t0, p0)), Some((last_pts, last_due))) => {
                let step = pts_ns.saturating_sub(last_pts);
                let on_timeline = t0 + Duration::from_nanos(pts_ns.saturating_sub(p0) as u64);
                if step == 0 {
                    self.repeats += 1;
                } else {
                    self.repeats = 0;
                }
                if step == 0 && self.repeats == 1 {
                    // One frame with its predecessor's timestamp (a duplicate): due with it,
                    // so duplicates add no drift. A run of them is a broken clock (below).
                    last_due
                } else if step <= 0 || step > self.max_step() {
                    self.discontinuity(format!(
                        "pts jumps by {:.3} s (from {:.3} s to {:.3} s)",
                        step as f64 / 1e9,
                        last_pts as f64 / 1e9,
                        pts_ns as f64 / 1e9
                    ));
                    let due = last_due + period;
                    self.origin = Some((due, pts_ns));
                    due
                } else if now.saturating_duration_since(on_timeline) > period {
                    // Behind the timeline by more than a frame (the producer was held up):
                    // restart it from now rather than send the late frames in a burst.
                    self.late += 1;
                    if self.late.is_power_of_two() {
                        tracing::info!(
                            "{:.1} ms behind the stream's timeline; going on from here without \
                             catching up ({} time(s) so far)",
                            now.saturating_duration_since(on_timeline).as_secs_f64() * 1e3,
                            self.late
                        );
                    }
                    self.origin = Some((now, pts_ns));
                    now
                } else {
                    on_timeline
                }
            }
            _ => {
                self.origin = Some((now, pts_ns));
                now
            }
        };
        self.last = Some((pts_ns, due));
        due
    }

    fn discontinuity(&mut self, what: String) {
        self.discontinuities += 1;
        let n = self.discontinuities;
        if n <= 3 || n % 100 == 0 {
            tracing::warn!(
                "timestamp discontinuity #{n}: {what}; carrying on at the nominal rate ({:.3} ms a frame)",
                self.period_ns as f64 / 1e6
            );
        }
    }
}

/// Refuse a consumer whose Hello was read: Goodbye(unsupported, `msg`), a graceful close, and
/// the error for the log.
fn refuse(chan: dmabuf_core::proto::Channel, msg: &str) -> anyhow::Error {
    let _ = chan.send(&dmabuf_core::proto::Message::Goodbye(
        dmabuf_core::proto::wire::Goodbye {
            reason: GoodbyeReason::Unsupported,
            message: msg.to_string(),
        },
    ));
    chan.close_gracefully();
    anyhow::anyhow!("{msg}")
}

/// Context on an error of the source itself (as opposed to one consumer's or the transport's):
/// the producer ends with it rather than serving the next consumer into the same failure.
#[derive(Debug)]
struct SourceFailed;

impl std::fmt::Display for SourceFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the source failed")
    }
}

/// How a stream ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// `--frames`/`--duration` were reached, or the source ended: the producer is done.
    Completed,
    /// Every consumer went away (or was dropped); wait for the next one.
    Idle,
    /// SIGINT/SIGTERM.
    Interrupted,
}

struct Server<'t> {
    opts: ServeOptions,
    pool: Pool,
    source: Source,
    stop: Arc<AtomicBool>,
    fan: Fanout,
    /// How pixels reach the consumers, and the CPU meter (see crate::transport).
    transport: &'t mut Transport,
    /// The colorimetry and geometry the consumers were told (a change renegotiates).
    announced: Announced,
}

struct Announced {
    color: ColorInfo,
    geometry: Geometry,
}

/// Allocate the pool, then listen on `socket` (so the socket appears only once the producer can
/// serve), and serve until `--frames` completes a stream or a signal sets `stop`.
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
    let mut source = source;
    // A V4L2 source brings its pool (the driver's exported buffers, or ours queued to it).
    let pool = match source.own_pool() {
        Some(pool) => pool,
        None => {
            let (allocator, why) = alloc::select(opts.alloc, format)
                .with_context(|| format!("no allocator for {format}"))?;
            tracing::info!("allocator: {why}");
            source.make_pool(allocator.as_ref(), opts.buffers)?
        }
    };
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
        announced: Announced {
            color: source.color(),
            geometry: source.geometry(),
        },
        fan: Fanout::new(opts.hello_timeout),
        source,
        opts,
        pool,
        stop,
        transport,
    };
    eprintln!("producer: listening on {}", listener.path().display());
    server.run(&listener)
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
            geometry: self.source.geometry(),
            device: 0,
        }
    }

    /// Serve streams until one completes or a signal arrives. A stream starts (the source from
    /// its beginning) when the first consumer joins an idle producer, and pauses when the last
    /// one leaves; consumers that join a running stream get its next frame.
    fn run(&mut self, listener: &Listener) -> Result<()> {
        loop {
            while self.fan.is_empty() {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let arrivals = self.fan.wait(listener, Duration::from_millis(200))?;
                self.admit_all(arrivals);
            }
            self.source.restart()?;
            let mut fatal: Option<anyhow::Error> = None;
            let (reason, text) = match self.stream(listener) {
                Ok(StreamEnd::Idle) => {
                    tracing::info!("every consumer left; waiting for the next one");
                    continue;
                }
                Ok(StreamEnd::Completed) => (
                    GoodbyeReason::EndOfStream,
                    self.source
                        .end_message()
                        .unwrap_or("end of stream")
                        .to_string(),
                ),
                Ok(StreamEnd::Interrupted) => {
                    (GoodbyeReason::Leaving, "producer shutting down".into())
                }
                Err(e) => {
                    tracing::warn!("stream ended: {e:#}");
                    let text = if e.downcast_ref::<SourceFailed>().is_some() {
                        // The source's own words, without our context line.
                        let t = e
                            .chain()
                            .skip(1)
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(": ");
                        fatal = Some(e);
                        t
                    } else {
                        format!("{e:#}")
                    };
                    (GoodbyeReason::InternalError, text)
                }
            };
            self.fan.finish_all(reason, &text, Duration::from_secs(2));
            if reason != GoodbyeReason::InternalError {
                return Ok(());
            }
            if let Some(e) = fatal.take() {
                // The source itself failed (a decode or device error): every consumer would
                // hit it again; end with it (exit status 1).
                return Err(e);
            }
        }
    }

    fn admit_all(&mut self, arrivals: Vec<Arrival>) {
        for a in arrivals {
            let n = a.n;
            if let Err(e) = self.admit(a) {
                tracing::warn!("consumer #{n} not served: {e:#}");
            }
        }
    }

    /// Check a consumer's `Hello` against the pool, answer it, send it the pool's fds, and add
    /// it to the stream.
    ///
    /// With `--alloc auto`, a consumer that cannot take the pool's memory kind but can take
    /// memfds gets the pool swapped to sealed memfds, but only while no other consumer is
    /// being served (the others hold and map the current pool); otherwise it is refused with a
    /// Goodbye saying so.
    fn admit(&mut self, a: Arrival) -> Result<()> {
        let Arrival { n, chan, hello } = a;
        let format = self.source.format();
        let memory = self.pool.allocator().memory();
        if !accepts(&hello, &format, memory) {
            let memfd_would_do = self.opts.alloc == AllocChoice::Auto
                && self.source.own_pool().is_none()
                && memory != MemoryKind::Memfd
                && accepts(&hello, &format, MemoryKind::Memfd);
            if memfd_would_do && self.fan.is_empty() {
                tracing::info!("consumer cannot import {memory}; switching the pool to memfd");
                let memfd = alloc::open(AllocatorKind::Memfd)?;
                self.pool = self.source.make_pool(memfd.as_ref(), self.opts.buffers)?;
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
                // Goodbye text is at most 112 bytes: the reason first.
                let msg = if memfd_would_do {
                    format!(
                        "cannot switch the {memory} pool to memfd while {} other consumer(s) use it",
                        self.fan.len()
                    )
                } else {
                    format!("consumer cannot take {format} in {memory}")
                };
                return Err(refuse(chan, &msg).context(if offered.is_empty() {
                    "it offered nothing".to_string()
                } else {
                    format!("it offered {}", offered.join(", "))
                }));
            }
        }
        let most = Fanout::max_members(self.share());
        if self.fan.len() >= most {
            // More members than the share has buffers would let stalled ones pin every buffer.
            let msg = format!(
                "producer is full: --buffers {} serves at most {most} consumers at once",
                self.share()
            );
            return Err(refuse(chan, &msg));
        }
        if self.transport.kind() != TransportKind::ZeroCopy && !self.fan.is_empty() {
            let msg = format!(
                "--transport {} serves one consumer at a time",
                self.transport.kind().name()
            );
            return Err(refuse(chan, &msg));
        }
        let welcome = self.welcome();
        let mut sess: Session<Arc<Lease>> = Session::start(chan, &welcome)?;
        for id in 0..self.pool.len() as u32 {
            let buf = self.pool.buffer(id).expect("id in range");
            sess.add_buffer(id, buf)?;
        }
        // socket-copy: the consumer's byte stream connects now.
        if let Err(e) = self.transport.session_start(self.opts.hello_timeout) {
            sess.finish(
                GoodbyeReason::InternalError,
                &format!("{e:#}"),
                Duration::from_secs(2),
            );
            return Err(e);
        }
        self.fan.join(n, sess);
        tracing::info!(
            "consumer #{n} connected: {} buffers of {} sent once; {} consumer(s) now",
            self.pool.len(),
            self.pool.allocator(),
            self.fan.len()
        );
        Ok(())
    }

    /// Wait up to `timeout`, serving connections meanwhile.
    fn wait(&mut self, listener: &Listener, timeout: Duration) -> Result<()> {
        let arrivals = self.fan.wait(listener, timeout)?;
        self.admit_all(arrivals);
        Ok(())
    }

    fn stream(&mut self, listener: &Listener) -> Result<StreamEnd> {
        let (num, den) = self.source.fps();
        let period_ns = 1_000_000_000u64 * u64::from(den) / u64::from(num.max(1));
        let start = Instant::now();
        let mut pacer = Pacer::new(period_ns);
        let cpu0 = process_cpu_ns();
        let mut last_report = Instant::now();
        let mut report_frames = 0u64;
        for seq in 0u64.. {
            let over = self.opts.frames.is_some_and(|n| seq >= n)
                || self.opts.duration.is_some_and(|d| start.elapsed() >= d);
            if over {
                let secs = start.elapsed().as_secs_f64();
                tracing::info!(
                    "sent {seq} frames in {secs:.2} s ({:.1} fps), producer CPU {:.1} µs/frame",
                    seq as f64 / secs,
                    (process_cpu_ns() - cpu0) as f64 / 1e3 / seq.max(1) as f64
                );
                if let Some(paths) = self.source.path_summary() {
                    tracing::info!("{paths}");
                }
                return Ok(StreamEnd::Completed);
            }
            if self.stop.load(Ordering::Relaxed) {
                return Ok(StreamEnd::Interrupted);
            }
            self.fan.drop_stalled(self.opts.stall_timeout, self.share());
            if self.fan.is_empty() {
                return Ok(StreamEnd::Idle);
            }
            // Alone, a consumer may hold the consumers' share of the pool (back-pressure); the
            // rest belongs to the decoder's references.
            if let Some(end) = self.wait_for_room(listener)? {
                return Ok(end);
            }
            // Sources that fill their own leases (V4L2 capture) wait for the device here,
            // serving connections meanwhile; the others are drawn or decoded below.
            let mut arrivals = Vec::new();
            let next = {
                let fan = &mut self.fan;
                let mut pump = |t| {
                    arrivals.extend(fan.wait(listener, t)?);
                    Ok(fan.is_empty() && arrivals.is_empty())
                };
                self.source
                    .next_frame(self.opts.checksum, &self.stop, &mut pump)
                    .map_err(|e| e.context(SourceFailed))?
            };
            self.admit_all(arrivals);
            let want_sum = self.opts.checksum;
            let (lease, pts_ns, copied, checksum, publish_ns) = match next {
                NextFrame::Frame(f) => {
                    let (checksum, publish_ns) = self.transport.filled_frame(|| Ok(f.checksum))?;
                    (Arc::new(f.lease), f.pts_ns, f.copied, checksum, publish_ns)
                }
                NextFrame::End => {
                    tracing::info!("end of the stream after {seq} frames");
                    return Ok(StreamEnd::Completed);
                }
                NextFrame::ConsumerGone => return Ok(StreamEnd::Idle),
                NextFrame::Stopped => return Ok(StreamEnd::Interrupted),
                NextFrame::NotMine => {
                    let source = &mut self.source;
                    let Some(pts_ns) = self
                        .transport
                        .source_step(|| source.advance(seq))
                        .map_err(|e| e.context(SourceFailed))?
                    else {
                        tracing::info!("end of the stream after {seq} frames");
                        if let Some(paths) = self.source.path_summary() {
                            tracing::info!("{paths}");
                        }
                        return Ok(StreamEnd::Completed);
                    };
                    if self.source.format() != self.pool.format()
                        || self.source.color() != self.announced.color
                        || self.source.geometry() != self.announced.geometry
                    {
                        if let Some(end) = self.renegotiate(listener)? {
                            return Ok(end);
                        }
                    }
                    match self.source.filled_lease() {
                        // Decoded in place: only the checksum is left.
                        Some(lease) => {
                            let (checksum, publish_ns) = self.transport.filled_frame(|| {
                                if !want_sum {
                                    return Ok(None);
                                }
                                let planes = &lease.buffer().layout.planes;
                                lease
                                    .with_bytes(|data| frame_checksum(data, planes))
                                    .context("reading the frame back")
                            })?;
                            (lease, pts_ns, false, checksum, publish_ns)
                        }
                        None => {
                            let Some(lease) = self.acquire(listener)? else {
                                return Ok(self.gone_or_stopped());
                            };
                            let (checksum, publish_ns, copied) = self.transport.write_frame(
                                &lease,
                                &mut self.source,
                                seq,
                                want_sum,
                            )?;
                            (Arc::new(lease), pts_ns, copied, checksum, publish_ns)
                        }
                    }
                }
            };
            let mut flags = if copied { FRAME_FLAG_COPIED } else { 0 };
            if checksum.is_some() {
                flags |= FRAME_FLAG_CHECKSUM;
            }
            let mut chunks = full_chunks(lease.buffer());
            if self.source.corrupt() {
                for c in &mut chunks {
                    c.flags |= CHUNK_FLAG_CORRUPTED;
                }
            }
            let frame = Frame {
                buffer_id: lease.id(),
                flags,
                seq,
                pts_ns,
                publish_ns,
                checksum: checksum.unwrap_or(0),
                chunks,
            };
            let mut frame = frame;
            if self.opts.pace {
                // Each frame at its own presentation time (see Pacer). The frame was made
                // ready first; the latency it reports starts when it was ready, less the wait.
                let before = dmabuf_core::time::monotonic_ns();
                let due = pacer.due(pts_ns, Instant::now());
                loop {
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() || self.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    self.wait(listener, left)?;
                }
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(StreamEnd::Interrupted);
                }
                frame.publish_ns += dmabuf_core::time::monotonic_ns().saturating_sub(before);
            }
            // The bounded wait for a consumer at its quota (see dmabuf_core::fanout).
            let until = Instant::now() + Duration::from_nanos(period_ns);
            let share = self.share();
            while self.fan.waiting_on_quota(share) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.wait(listener, left)?;
            }
            self.fan.publish(&frame, lease, share);
            self.transport.after_send()?;
            self.wait(listener, Duration::ZERO)?;
            report_frames += 1;
            let since = last_report.elapsed();
            if since >= self.opts.report_every {
                tracing::info!(
                    "{} frames sent, {:.1} fps, {} consumer(s) [{}], pool {}/{} free, RSS {} KiB, {} fds",
                    seq + 1,
                    report_frames as f64 / since.as_secs_f64(),
                    self.fan.len(),
                    self.fan.summary(),
                    self.pool.free_count(),
                    self.pool.len(),
                    procstat::rss_kib(),
                    procstat::fd_count()
                );
                last_report = Instant::now();
                report_frames = 0;
            }
        }
        unreachable!()
    }

    /// The consumers' share of the pool: `--buffers` (a decoder's pool is larger).
    fn share(&self) -> usize {
        self.opts.buffers.min(self.pool.len())
    }

    fn gone_or_stopped(&self) -> StreamEnd {
        if self.stop.load(Ordering::Relaxed) {
            StreamEnd::Interrupted
        } else {
            StreamEnd::Idle
        }
    }

    /// Wait (serving connections) until a lone consumer holds less than the consumers' share;
    /// with several, the quota in [`dmabuf_core::fanout`] applies instead. `Some` when the stream
    /// must end meanwhile.
    fn wait_for_room(&mut self, listener: &Listener) -> Result<Option<StreamEnd>> {
        while self.fan.len() == 1 && self.fan.max_held() >= self.share() {
            self.fan.drop_stalled(self.opts.stall_timeout, self.share());
            if self.fan.is_empty() || self.stop.load(Ordering::Relaxed) {
                return Ok(Some(self.gone_or_stopped()));
            }
            self.wait(listener, Duration::from_millis(100))?;
        }
        Ok(None)
    }

    /// The source changed size or format mid-stream: once every consumer has released
    /// everything, allocate a pool for the new format and tell every consumer (RemoveBuffer for
    /// the old buffers, a new Welcome, the new AddBuffers). `Some` when the stream must end
    /// meanwhile.
    fn renegotiate(&mut self, listener: &Listener) -> Result<Option<StreamEnd>> {
        let (old, new) = (self.pool.format(), self.source.format());
        // (A colorimetry or geometry change alone renegotiates too: same format, new Welcome.)
        while self.fan.max_held() > 0 {
            self.fan.drop_stalled(self.opts.stall_timeout, 1);
            if self.stop.load(Ordering::Relaxed) {
                return Ok(Some(StreamEnd::Interrupted));
            }
            self.wait(listener, Duration::from_millis(100))?;
        }
        let allocator = alloc::open(self.pool.allocator())
            .with_context(|| format!("reopening {} for {new}", self.pool.allocator()))?;
        self.pool = self
            .source
            .make_pool(allocator.as_ref(), self.opts.buffers)?;
        let welcome = self.welcome();
        self.announced = Announced {
            color: welcome.color,
            geometry: welcome.geometry,
        };
        self.fan.renegotiate(&welcome, &self.pool);
        tracing::info!(
            "renegotiated {old} -> {new}: {} new buffers of {} to {} consumer(s)",
            self.pool.len(),
            self.pool.allocator(),
            self.fan.len()
        );
        if self.fan.is_empty() {
            return Ok(Some(StreamEnd::Idle));
        }
        Ok(None)
    }

    /// A free buffer, serving connections while waiting for releases; `None` if every
    /// consumer left or a signal arrived. Consumers that hold their quota and release none for
    /// the stall timeout are dropped.
    fn acquire(&mut self, listener: &Listener) -> Result<Option<Lease>> {
        loop {
            if let Some(l) = self.pool.try_acquire() {
                return Ok(Some(l));
            }
            self.fan.drop_stalled(self.opts.stall_timeout, self.share());
            if self.fan.is_empty() || self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            self.wait(listener, Duration::from_millis(100))?;
        }
    }
}
