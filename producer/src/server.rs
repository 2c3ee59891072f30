//! Serving consumers: the producer is a [`Publisher`] (dmabuf-core) fed by a
//! [`FrameSource`]. The pool is made once, before the first consumer arrives (by the source:
//! a decoder's layout, a capture device's buffers); several consumers are served at once, each
//! with its own handshake, the pool's fds once, then paced frames shared by all of them.
//!
//! With `--alloc auto`, a consumer that cannot take the pool's memory kind gets a sealed-memfd
//! pool instead, if no other consumer is connected (otherwise it is refused, saying why).

use crate::source::{FrameSource, Host, Idle, Next, Written};
use crate::transport::{Transport, TransportKind};
use anyhow::{Context as _, Result};
use dmabuf_core::alloc::{self, AllocChoice};
use dmabuf_core::format::{FrameFormat, FrameLayout};
use dmabuf_core::pool::Lease;
use dmabuf_core::procstat;
use dmabuf_core::proto::wire::{ColorInfo, Geometry, GoodbyeReason};
use dmabuf_core::proto::ListenerOptions;
use dmabuf_core::publisher::{FrameMeta, Publisher, PublisherOptions};
use dmabuf_core::time::process_cpu_ns;
use dmabuf_core::AllocatorKind;
use std::os::fd::BorrowedFd;
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
    /// Also publish the stream as a PipeWire `Video/Source` node of this name.
    pub pipewire: Option<String>,
    /// Offer consumers the shared-memory ring.
    pub ring: bool,
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
        if n <= 3 || n.is_multiple_of(100) {
            tracing::warn!(
                "timestamp discontinuity #{n}: {what}; carrying on at the nominal rate ({:.3} ms a frame)",
                self.period_ns as f64 / 1e6
            );
        }
    }
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

/// The producer's side of the [`Host`] a source talks to: the publisher, the transport and
/// the stop flag.
struct Ctx<'a> {
    publisher: Publisher,
    transport: &'a mut Transport,
    stop: Arc<AtomicBool>,
    opts: ServeOptions,
    /// The PipeWire node (`--pipewire`), a consumer of its own kind: it holds a lease per
    /// frame its client still reads.
    pipewire: Option<PipeWire>,
}

/// The PipeWire node and what was last said of it.
struct PipeWire {
    node: dmabuf_pipewire::Output,
    /// The node's error, once reported.
    reported: bool,
}

impl Ctx<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A PipeWire client streams from the node. A node that failed (the daemon went away)
    /// says so once; the socket's consumers carry on.
    fn pipewire_streaming(&mut self) -> bool {
        let Some(pw) = &mut self.pipewire else {
            return false;
        };
        if !pw.reported {
            if let Some(e) = pw.node.stats().error {
                tracing::warn!("PipeWire node stopped: {e}; the socket's consumers carry on");
                pw.reported = true;
            }
        }
        pw.node.streaming()
    }

    /// Someone takes the frames: a consumer on the socket or a PipeWire client.
    fn audience(&mut self) -> bool {
        // (Asked first, so that a node that stopped is reported even while consumers stay.)
        let pipewire = self.pipewire_streaming();
        pipewire || self.publisher.consumers() > 0
    }

    /// Serve up to `timeout` (returning early when `fd` is readable: the flag), then set up the
    /// transport for consumers admitted meanwhile (socket-copy: their byte stream).
    fn serve(&mut self, fd: Option<BorrowedFd<'_>>, timeout: Duration) -> Result<bool> {
        let ready = match fd {
            Some(fd) => self.publisher.serve_until_readable(fd, timeout)?,
            None => {
                self.publisher.serve(timeout)?;
                false
            }
        };
        self.start_admitted();
        Ok(ready)
    }

    /// Sleep to `deadline` serving connections, without waking for releases (taken at the
    /// deadline): a paced stream's one wake-up per frame. Returns early for a signal (see
    /// [`Ctx::stopped`]; slow streams sleep in steps of at most 250 ms, so that a signal that
    /// came just before a sleep began is seen within that).
    fn sleep_until(&mut self, deadline: Instant) -> Result<()> {
        loop {
            let now = Instant::now();
            if now >= deadline || self.stopped() {
                return Ok(());
            }
            self.publisher
                .serve_until(deadline.min(now + Duration::from_millis(250)))?;
            self.start_admitted();
        }
    }

    /// Set up the transport for consumers admitted since the last call (socket-copy: their
    /// byte stream).
    fn start_admitted(&mut self) {
        for n in self.publisher.take_admitted() {
            if let Err(e) = self.transport.session_start(self.opts.hello_timeout) {
                tracing::warn!("consumer #{n} not served: {e:#}");
                self.publisher
                    .dismiss(n, GoodbyeReason::InternalError, &format!("{e:#}"));
            }
        }
    }

    /// The stream cannot go on: every consumer left, or a signal.
    fn over(&mut self) -> bool {
        !self.audience() || self.stopped()
    }

    /// A free buffer, serving connections while waiting for releases; `None` if every
    /// consumer left or a signal arrived. Consumers that hold their quota and release none for
    /// the stall timeout are dropped.
    fn acquire(&mut self) -> Result<Option<Lease>> {
        loop {
            if let Some(l) = self.publisher.pool().try_acquire() {
                return Ok(Some(l));
            }
            if self.over() {
                return Ok(None);
            }
            // PipeWire's client may hold some: have them taken back, and look again soon.
            let step = match &self.pipewire {
                Some(pw) => {
                    pw.node.reclaim();
                    2
                }
                None => 100,
            };
            self.serve(None, Duration::from_millis(step))?;
        }
    }
}

impl Host for Ctx<'_> {
    fn write(
        &mut self,
        write: &mut dyn FnMut(&mut [u8], &FrameLayout) -> Result<bool>,
    ) -> Result<Option<Written>> {
        let Some(lease) = self.acquire()? else {
            return Ok(None);
        };
        let (checksum, publish_ns, copied) =
            self.transport
                .write_frame(&lease, write, self.opts.checksum)?;
        Ok(Some(Written {
            lease: Arc::new(lease),
            checksum,
            copied,
            publish_ns,
        }))
    }

    fn filled(&mut self, lease: &Lease, checksum: Option<u32>) -> Result<(Option<u32>, u64)> {
        let want = self.opts.checksum;
        self.transport.filled_frame(|| {
            if checksum.is_some() || !want {
                return Ok(checksum);
            }
            // (Every fd of the buffer: a capture's planes may each be their own dma-buf.)
            lease.checksum().context("reading the frame back")
        })
    }

    fn wait_readable(&mut self, fd: BorrowedFd<'_>, timeout: Duration) -> Result<Option<bool>> {
        let ready = self.serve(Some(fd), timeout)?;
        let over = self.over();
        Ok((!over).then_some(ready))
    }

    fn wait(&mut self, timeout: Duration) -> Result<Option<()>> {
        self.serve(None, timeout)?;
        let over = self.over();
        Ok((!over).then_some(()))
    }

    fn metered(&mut self, work: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.transport.source_step(work)
    }

    fn want_checksum(&self) -> bool {
        self.opts.checksum
    }

    fn announced(&self) -> (FrameFormat, ColorInfo, Geometry) {
        let (color, geometry) = self.publisher.stream_info();
        (self.publisher.format(), color, geometry)
    }

    fn why_not(&self) -> Next {
        if self.stopped() {
            Next::Stopped
        } else {
            Next::Idle
        }
    }
}

struct Server<'t> {
    source: Box<dyn FrameSource>,
    ctx: Ctx<'t>,
}

/// Make the pool, then listen on `socket` (so the socket appears only once the producer can
/// serve), and serve until `--frames` completes a stream or a signal sets `stop`.
pub fn serve(
    socket: &Path,
    listen: &ListenerOptions,
    mut source: Box<dyn FrameSource>,
    transport: &mut Transport,
    opts: ServeOptions,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let format = source.format();
    tracing::info!("source: {}", source.describe());
    // A V4L2 source brings its pool (the driver's exported buffers, or ours queued to it).
    let own_pool = source.own_pool();
    let memfd_fallback = own_pool.is_none();
    let pool = match own_pool {
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
    let publisher = Publisher::with_pool(
        socket,
        pool,
        PublisherOptions {
            buffers: opts.buffers,
            alloc: opts.alloc,
            fps: source.fps(),
            color: source.color(),
            geometry: source.geometry(),
            stall_timeout: opts.stall_timeout,
            hello_timeout: opts.hello_timeout,
            // The transport computes it, metered as the source's work.
            checksum: false,
            memfd_fallback,
            // The comparison transports serve one consumer at a time.
            max_consumers: usize::from(transport.kind() != TransportKind::ZeroCopy),
            listener: listen.clone(),
            ring: opts.ring,
        },
    )
    .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let mut server = Server {
        source,
        ctx: Ctx {
            publisher,
            transport,
            stop,
            opts,
            pipewire: None,
        },
    };
    if let Some(name) = server.ctx.opts.pipewire.clone() {
        // Clients name their target by node.name: a second node of the same name makes
        // which one they get a matter of chance.
        if let Ok(same) = dmabuf_pipewire::video_nodes() {
            for n in same.iter().filter(|n| n.name == name) {
                tracing::warn!(
                    "--pipewire: the daemon already has a video node named {name:?} (id {}, serial \
                     {}, {}): clients that target {name:?} may get either; choose another name",
                    n.id,
                    n.serial.as_deref().unwrap_or("?"),
                    n.media_class
                );
            }
        }
        let node = dmabuf_pipewire::Output::start(
            server.ctx.publisher.pool(),
            dmabuf_pipewire::OutputOptions {
                description: format!("dmabuf pipe: {}", server.source.describe()),
                name: name.clone(),
                fps: server.source.fps(),
                color: server.source.color(),
                max_held: None,
            },
        )
        .context("--pipewire")?;
        eprintln!("producer: PipeWire node {name:?} (Video/Source)");
        server.ctx.pipewire = Some(PipeWire {
            node,
            reported: false,
        });
    }
    eprintln!("producer: listening on {}", socket.display());
    let result = server.run();
    if let Some(pw) = &server.ctx.pipewire {
        let s = pw.node.stats();
        tracing::info!(
            "PipeWire node: {} frames sent, {} skipped{}",
            s.sent,
            s.skipped,
            s.format
                .map(|f| format!(", format {f}"))
                .unwrap_or_default()
        );
    }
    result
}

impl Server<'_> {
    /// Serve streams until one completes or a signal arrives. A stream starts (the source from
    /// its beginning) when the first consumer joins an idle producer, and pauses when the last
    /// one leaves; consumers that join a running stream get its next frame.
    fn run(&mut self) -> Result<()> {
        loop {
            while !self.ctx.audience() {
                if self.ctx.stopped() {
                    return Ok(());
                }
                self.ctx.serve(None, Duration::from_millis(200))?;
                if self.ctx.publisher.memfd_pool_wanted() {
                    self.switch_to_memfd()?;
                }
                // A live source goes on while no one watches: it keeps up (a PipeWire node's
                // renegotiations: the pool follows at once, with no consumer to wait for).
                match self.source.idle().map_err(|e| e.context(SourceFailed))? {
                    Idle::Same => {}
                    Idle::Changed => {
                        self.repool(self.ctx.publisher.format())?;
                    }
                    Idle::Ended => {
                        tracing::info!(
                            "the source ended while no one took frames: {}",
                            self.source.end_message().unwrap_or("end of stream")
                        );
                        return Ok(());
                    }
                }
            }
            self.source.restart()?;
            let mut fatal: Option<anyhow::Error> = None;
            let (reason, text) = match self.stream() {
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
            self.ctx
                .publisher
                .end_stream(reason, &text, Duration::from_secs(2));
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

    /// A consumer can import only memfds and no one else is connected: remake the pool.
    fn switch_to_memfd(&mut self) -> Result<()> {
        tracing::info!(
            "consumer cannot import {}; switching the pool to memfd",
            self.ctx.publisher.pool().memory()
        );
        let memfd = alloc::open(AllocatorKind::Memfd)?;
        let pool = self
            .source
            .make_pool(memfd.as_ref(), self.ctx.opts.buffers)?;
        self.ctx.publisher.replace_pool(pool)?;
        self.pool_changed();
        Ok(())
    }

    /// Offer the publisher's (new) pool on the PipeWire node too.
    fn pool_changed(&self) {
        if let Some(pw) = &self.ctx.pipewire {
            pw.node.set_pool(
                self.ctx.publisher.pool(),
                self.source.fps(),
                self.source.color(),
            );
        }
    }

    fn stream(&mut self) -> Result<StreamEnd> {
        let (num, den) = self.source.fps();
        let period_ns = 1_000_000_000u64 * u64::from(den) / u64::from(num.max(1));
        let start = Instant::now();
        let mut pacer = Pacer::new(period_ns);
        let cpu0 = process_cpu_ns();
        let mut last_report = Instant::now();
        let mut report_frames = 0u64;
        for seq in 0u64.. {
            let over = self.ctx.opts.frames.is_some_and(|n| seq >= n)
                || self.ctx.opts.duration.is_some_and(|d| start.elapsed() >= d);
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
            if self.ctx.stopped() {
                return Ok(StreamEnd::Interrupted);
            }
            // Alone, a consumer may hold the consumers' share of the pool (back-pressure); the
            // rest belongs to the decoder's references.
            while !self
                .ctx
                .publisher
                .wait_for_room(Duration::from_millis(100))?
            {
                if self.ctx.over() {
                    break;
                }
            }
            if self.ctx.over() {
                return Ok(self.gone_or_stopped());
            }
            let filled = loop {
                let next = self
                    .source
                    .next_frame(seq, &mut self.ctx)
                    .map_err(|e| e.context(SourceFailed))?;
                match next {
                    Next::Frame(f) => break f,
                    Next::Changed => {
                        if let Some(end) = self.renegotiate()? {
                            return Ok(end);
                        }
                    }
                    Next::End => {
                        match self.source.end_message() {
                            Some(why) => {
                                tracing::info!("end of the stream after {seq} frames: {why}")
                            }
                            None => tracing::info!("end of the stream after {seq} frames"),
                        }
                        if let Some(paths) = self.source.path_summary() {
                            tracing::info!("{paths}");
                        }
                        return Ok(StreamEnd::Completed);
                    }
                    Next::Idle => return Ok(StreamEnd::Idle),
                    Next::Stopped => return Ok(StreamEnd::Interrupted),
                }
            };
            let mut meta = FrameMeta {
                pts_ns: filled.pts_ns,
                checksum: filled.checksum,
                copied: filled.copied,
                corrupted: filled.corrupted,
                publish_ns: Some(filled.publish_ns),
            };
            if self.ctx.opts.pace {
                // Each frame at its own presentation time (see Pacer). The frame was made
                // ready first; the latency it reports starts when it was ready, less the wait.
                // One wake-up per frame: sleep to the deadline in one ppoll (nanosecond
                // precision) that arrivals and departures end early but releases do not; those
                // that came meanwhile are taken at the tick. A signal ends the sleep. A frame
                // already late does not sleep: its releases are taken after it is published.
                let before = dmabuf_core::time::monotonic_ns();
                let due = pacer.due(filled.pts_ns, Instant::now());
                self.ctx.sleep_until(due)?;
                if self.ctx.stopped() {
                    return Ok(StreamEnd::Interrupted);
                }
                meta.publish_ns = Some(
                    filled.publish_ns + dmabuf_core::time::monotonic_ns().saturating_sub(before),
                );
            }
            if let Some(pw) = &self.ctx.pipewire {
                pw.node
                    .push(&filled.lease, filled.pts_ns, seq, filled.corrupted);
            }
            self.ctx.publisher.publish_shared(filled.lease, meta)?;
            self.ctx.transport.after_send()?;
            self.ctx.serve(None, Duration::ZERO)?;
            report_frames += 1;
            let since = last_report.elapsed();
            if since >= self.ctx.opts.report_every {
                let p = &self.ctx.publisher;
                let pw = self.ctx.pipewire.as_ref().map(|pw| {
                    let s = pw.node.stats();
                    format!(
                        ", PipeWire {} ({} sent, {} skipped, {} held)",
                        if s.streaming { "streaming" } else { "idle" },
                        s.sent,
                        s.skipped,
                        s.held
                    )
                });
                tracing::info!(
                    "{} frames sent, {:.1} fps, {} consumer(s) [{}]{}, pool {}/{} free, RSS {} KiB, {} fds",
                    seq + 1,
                    report_frames as f64 / since.as_secs_f64(),
                    p.consumers(),
                    p.summary(),
                    pw.unwrap_or_default(),
                    p.pool().free_count(),
                    p.pool().len(),
                    procstat::rss_kib(),
                    procstat::fd_count()
                );
                last_report = Instant::now();
                report_frames = 0;
            }
        }
        unreachable!()
    }

    fn gone_or_stopped(&self) -> StreamEnd {
        if self.ctx.stopped() {
            StreamEnd::Interrupted
        } else {
            StreamEnd::Idle
        }
    }

    /// The source changed size, format, colorimetry or geometry mid-stream: make a pool for
    /// the new format and tell each consumer (RemoveBuffer for the old buffers, a new Welcome,
    /// the new AddBuffers) once it has released the old frames. `Some` when the stream must
    /// end meanwhile.
    fn renegotiate(&mut self) -> Result<Option<StreamEnd>> {
        let old = self.ctx.publisher.format();
        // Each consumer moves to the new pool once it released the old one's frames; none
        // waits for another (`Publisher::replace_pool`).
        let left = self.repool(old)?;
        if left == 0 && !self.ctx.pipewire_streaming() {
            return Ok(Some(StreamEnd::Idle));
        }
        Ok(None)
    }

    /// A pool for the source's (new) format, colorimetry and geometry, given to the consumers
    /// and the PipeWire node; how many consumers got it.
    fn repool(&mut self, old: FrameFormat) -> Result<usize> {
        let new = self.source.format();
        // A source's own buffers (PipeWire's, a capture driver's) are not ours to remake: a
        // source that brings them ignores the allocator; one that copies gets memfds.
        let kind = match self.ctx.publisher.pool().allocator() {
            k if k.is_foreign() => AllocatorKind::Memfd,
            k => k,
        };
        let allocator = alloc::open(kind).with_context(|| format!("reopening {kind} for {new}"))?;
        let pool = self
            .source
            .make_pool(allocator.as_ref(), self.ctx.opts.buffers)?;
        self.ctx
            .publisher
            .set_stream_info(self.source.color(), self.source.geometry());
        let left = self.ctx.publisher.replace_pool(pool)?;
        // A pool of the source's own buffers cannot be remade as memfds for a consumer that
        // needs them (a PipeWire node that went from copied frames to its own dma-bufs).
        self.ctx
            .publisher
            .set_memfd_fallback(self.source.own_pool().is_none());
        self.pool_changed();
        let what = if old == new {
            format!("new buffers for {new}")
        } else {
            format!("renegotiated {old} -> {new}")
        };
        tracing::info!(
            "{what}: {} new buffers of {} to {left} consumer(s)",
            self.ctx.publisher.pool().len(),
            self.ctx.publisher.pool().allocator(),
        );
        Ok(left)
    }
}
