//! `--source pipewire:TARGET`: a PipeWire video stream (a camera, a screen cast, another
//! application's node) passed on to our consumers in PipeWire's own buffers, as a V4L2
//! `expbuf` capture passes on the driver's: the pool *is* PipeWire's buffers (sealed memfds, or
//! dma-bufs where the peer offers them with the LINEAR modifier),
//! each lent to PipeWire while it fills it and given back to it once every consumer released
//! the frame. No copy.

use super::{FrameSource, Host, Idle, Next};
use anyhow::{bail, Context as _, Result};
use dmabuf_core::alloc::Allocator;
use dmabuf_core::format::{FrameFormat, FrameLayout, PlaneLayout};
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::wire::ColorInfo;
use dmabuf_core::{AllocatorKind, FrameBuffer};
use dmabuf_pipewire::plane_layout;
use dmabuf_pipewire::{
    Chunk, Input, InputBuffer, InputEvent, InputFormat, InputFrame, InputOptions,
};
use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// PipeWire's announcement of a format and its buffers ([`InputEvent::Buffers`]).
#[derive(Debug)]
struct Announced {
    format: InputFormat,
    buffers: Option<Vec<InputBuffer>>,
    generation: u32,
}

pub struct PipeWireSource {
    input: Input,
    target: String,
    stream: InputFormat,
    /// Which of PipeWire's announcements the pool is made of.
    generation: u32,
    /// PipeWire's buffers as a pool (zero-copy), or ours that frames are copied into (made by
    /// `make_pool`, when PipeWire's buffers are memory in this process).
    pool: Option<Pool>,
    zero_copy: bool,
    /// Where each plane is in every frame (learned from the first; zero-copy).
    chunks: Vec<Chunk>,
    /// Leases of the buffers PipeWire holds (index = pool id).
    lent: Vec<Option<Lease>>,
    arrived: VecDeque<InputFrame>,
    /// A renegotiation not followed yet: PipeWire's newer format and buffers, and (zero-copy)
    /// the newest frame in them, which shows where their planes are.
    pending: Option<(Announced, Option<InputFrame>)>,
    /// Why the stream ended, once it did.
    ended: Option<String>,
    /// Frames whose planes were not where the pool says (given back unpublished).
    skipped: u64,
    /// Frames that waited while a newer one came (no consumer took them in time).
    stale: u64,
    /// Renegotiations followed.
    renegotiated: u64,
    /// When the last frame came (or the stream started), and after how long without one a
    /// warning is due next.
    last_frame: Instant,
    warn_after: Duration,
    /// Copying was stopped while no one took frames (`idle`).
    idling: bool,
    /// pts for frames without a header: their arrival time since the first.
    epoch: Instant,
}

/// How long without a frame before the first warning (then after twice as long, …).
const QUIET_WARNING: Duration = Duration::from_secs(5);

/// Wait up to `timeout` for `input`'s next event.
fn next_event(input: &mut Input, timeout: Duration) -> Result<Option<InputEvent>> {
    if let Some(ev) = input.try_event() {
        return Ok(Some(ev));
    }
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [nix::poll::PollFd::new(
        input.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(
        &mut fds,
        nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
    ) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(input.try_event()),
        Err(e) => Err(e).context("waiting for PipeWire"),
    }
}

impl PipeWireSource {
    /// Connect to `target` and wait (up to `timeout`) for its format, its buffers and a first
    /// frame (which shows where the planes are).
    pub fn connect(target: &str, timeout: Duration) -> Result<Self> {
        let mut input = Input::connect(InputOptions {
            target: target.to_string(),
            name: "dmabuf-pipe-producer".into(),
        })
        .context("--source pipewire:")?;
        let deadline = Instant::now() + timeout;
        let mut announced: Option<Announced> = None;
        // Zero-copy needs the first frame (where its planes are); a copy needs only the format.
        let first = loop {
            if announced.as_ref().is_some_and(|a| a.buffers.is_none()) {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no video from the PipeWire node {target:?} within {timeout:?}: no such node, or \
                     it offers none of the carried raw formats, or it does not stream \
                     (`producer --list-devices` lists the video nodes)"
                );
            }
            match next_event(&mut input, left.min(Duration::from_millis(100)))? {
                None => {}
                Some(InputEvent::Buffers {
                    format,
                    buffers,
                    generation,
                }) => {
                    announced = Some(Announced {
                        format,
                        buffers,
                        generation,
                    })
                }
                Some(InputEvent::Frame(a)) => {
                    if announced
                        .as_ref()
                        .is_some_and(|b| b.generation == a.generation)
                    {
                        break Some(a);
                    }
                    input.recycle(a.generation, a.index);
                }
                Some(InputEvent::Ended(why)) => bail!("PipeWire node {target:?}: {why}"),
            }
        };
        let announced = announced.expect("the buffers came first");
        let mut src = Self {
            input,
            target: target.to_string(),
            stream: announced.format.clone(),
            generation: announced.generation,
            pool: None,
            zero_copy: false,
            chunks: Vec::new(),
            lent: Vec::new(),
            arrived: VecDeque::new(),
            pending: None,
            ended: None,
            skipped: 0,
            stale: 0,
            renegotiated: 0,
            last_frame: Instant::now(),
            warn_after: QUIET_WARNING,
            idling: false,
            epoch: Instant::now(),
        };
        src.adopt(announced, first)?;
        Ok(src)
    }

    /// Take PipeWire's announced format and buffers: as the pool (zero-copy, given the first
    /// frame in them), or as frames copied into a pool `make_pool` makes.
    fn adopt(&mut self, a: Announced, first: Option<InputFrame>) -> Result<()> {
        let target = &self.target;
        self.stream = a.format;
        self.generation = a.generation;
        self.pool = None;
        self.lent.clear();
        self.chunks.clear();
        self.zero_copy = false;
        // Frames of earlier buffers are not published after a renegotiation.
        self.arrived.clear();
        let (Some(bufs), Some(first)) = (a.buffers, first) else {
            tracing::info!(
                "PipeWire node {target:?}: {}, its buffers are memory inside this process (not \
                 fds): each frame is copied once into the pool",
                self.stream.format
            );
            return Ok(());
        };
        // Every buffer's planes where the first frame's are, from its own blocks' offsets.
        let fb: Vec<FrameBuffer> = bufs
            .iter()
            .map(|b| {
                let bases: Vec<u64> = b.blocks.iter().map(|k| k.mapoffset).collect();
                plane_layout(self.stream.format, &bases, &first.chunks)
                    .map(|planes| frame_buffer(&self.stream, b, &planes))
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("the frames of PipeWire node {target:?}"))
            })
            .collect::<Result<_>>()?;
        let pool = Pool::from_buffers(fb, AllocatorKind::PipeWire, self.stream.format)
            .context("mapping PipeWire's buffers")?;
        tracing::info!(
            "PipeWire node {target:?}: {}, {} buffers of {}, passed on as they are",
            self.stream.format,
            pool.len(),
            pool.memory()
        );
        // Every buffer is PipeWire's, the first frame's included until it is published.
        self.lent = (0..pool.len()).map(|_| None).collect();
        while let Some(l) = pool.try_acquire() {
            let i = l.id() as usize;
            self.lent[i] = Some(l);
        }
        self.pool = Some(pool);
        self.zero_copy = true;
        self.chunks = first.chunks.clone();
        self.arrived.push_back(first);
        Ok(())
    }

    /// Give PipeWire back every buffer no consumer holds any more.
    fn give_back(&mut self) {
        if !self.zero_copy {
            return;
        }
        let Some(pool) = &self.pool else { return };
        while let Some(l) = pool.try_acquire() {
            let i = l.id();
            self.input.recycle(self.generation, i);
            self.lent[i as usize] = Some(l);
        }
    }

    /// Take what PipeWire sent meanwhile. A live source: only the newest frame waiting is
    /// worth sending, older ones go back to PipeWire (counted).
    fn take_events(&mut self) {
        while let Some(ev) = self.input.try_event() {
            match ev {
                InputEvent::Buffers {
                    format,
                    buffers,
                    generation,
                } => {
                    // A new format or new buffers: followed once it can be (`next_frame`).
                    self.pending = Some((
                        Announced {
                            format,
                            buffers,
                            generation,
                        },
                        None,
                    ));
                }
                InputEvent::Ended(why) => {
                    self.ended.get_or_insert(why);
                }
                InputEvent::Frame(a) => {
                    if self.ended.is_some() {
                        self.input.recycle(a.generation, a.index);
                    } else if a.generation == self.generation {
                        self.arrived.push_back(a);
                    } else if let Some((p, newest)) = &mut self.pending {
                        if p.generation == a.generation {
                            // Only the newest frame of the new buffers is kept.
                            if let Some(old) = newest.replace(a) {
                                self.input.recycle(old.generation, old.index);
                                self.stale += 1;
                            }
                        } else {
                            self.input.recycle(a.generation, a.index);
                        }
                    } else {
                        self.input.recycle(a.generation, a.index);
                    }
                }
            }
        }
        while self.arrived.len() > 1 {
            let stale = self.arrived.pop_front().expect("more than one");
            self.stale += 1;
            // Back to the pool, and from there to PipeWire (give_back).
            drop(
                self.lent
                    .get_mut(stale.index as usize)
                    .and_then(Option::take),
            );
        }
    }

    /// Follow a renegotiation once it can be: at once for frames to copy, at the first frame
    /// in the new buffers for zero-copy. True when the pool changed.
    fn follow(&mut self) -> Result<bool> {
        let ready = match &self.pending {
            None => false,
            Some((a, newest)) => a.buffers.is_none() || newest.is_some(),
        };
        if !ready {
            return Ok(false);
        }
        let (a, newest) = self.pending.take().expect("pending");
        let old = self.stream.format;
        self.adopt(a, newest)?;
        self.renegotiated += 1;
        tracing::info!(
            "PipeWire node {:?} renegotiated: {old} -> {}",
            self.target,
            self.stream.format
        );
        Ok(true)
    }
}

/// A pool buffer over a PipeWire buffer (its blocks' fds, the learned plane layout).
fn frame_buffer(
    stream: &InputFormat,
    b: &InputBuffer,
    planes: &[(usize, PlaneLayout)],
) -> FrameBuffer {
    let size = b.blocks.iter().map(|k| k.fd_size).max().unwrap_or(0);
    FrameBuffer {
        layout: FrameLayout {
            format: stream.format,
            planes: planes.iter().map(|(_, p)| *p).collect(),
            size,
        },
        fds: b.blocks.iter().map(|k| k.fd.clone()).collect(),
        fd_sizes: b.blocks.iter().map(|k| k.fd_size).collect(),
        plane_fds: planes.iter().map(|(k, _)| *k).collect(),
        memory: b.memory,
        allocator: AllocatorKind::PipeWire,
    }
}

impl FrameSource for PipeWireSource {
    fn format(&self) -> FrameFormat {
        self.stream.format
    }

    fn fps(&self) -> (u32, u32) {
        match self.stream.fps {
            (0, _) => (30, 1),
            f => f,
        }
    }

    fn color(&self) -> ColorInfo {
        self.stream.color
    }

    fn describe(&self) -> String {
        let (n, d) = self.stream.fps;
        format!(
            "PipeWire node {:?}, {} at {n}/{d} fps, {}",
            self.target,
            self.stream.format,
            match (&self.pool, self.zero_copy) {
                (Some(pool), true) => format!("its own buffers ({}), zero-copy", pool.memory()),
                _ => "copied once from PipeWire's memory into the pool".to_string(),
            }
        )
    }

    fn make_pool(&mut self, allocator: &dyn Allocator, buffers: usize) -> Result<Pool> {
        if let (true, Some(pool)) = (self.zero_copy, &self.pool) {
            return Ok(pool.clone());
        }
        let pool = Pool::new(allocator, self.stream.format, buffers)
            .context("allocating the buffer pool")?;
        self.input.copy_into(self.generation, &pool);
        self.pool = Some(pool.clone());
        Ok(pool)
    }

    fn own_pool(&self) -> Option<Pool> {
        self.pool.clone().filter(|_| self.zero_copy)
    }

    fn live(&self) -> bool {
        true
    }

    fn end_message(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    fn path_summary(&self) -> Option<String> {
        Some(format!(
            "PipeWire frames {}; {} skipped (planes not where the pool says), {} skipped (no free \
             pool buffer to copy into), {} superseded by a newer frame before any consumer took \
             them, {} renegotiation(s) followed",
            if self.zero_copy {
                "passed on in PipeWire's buffers"
            } else {
                "copied once into the pool"
            },
            self.skipped,
            self.input.copy_skipped(),
            self.stale,
            self.renegotiated
        ))
    }

    fn idle(&mut self) -> Result<Idle> {
        if !self.idling {
            // Frames to copy are not copied while no one takes them.
            self.input.set_active(false);
            self.idling = true;
        }
        self.give_back();
        self.take_events();
        if self.ended.is_some() {
            return Ok(Idle::Ended);
        }
        Ok(if self.follow()? {
            Idle::Changed
        } else {
            Idle::Same
        })
    }

    fn next_frame(&mut self, _seq: u64, host: &mut dyn Host) -> Result<Next> {
        if std::mem::take(&mut self.idling) {
            self.input.set_active(true);
            // Quiet while idle is not the node's silence.
            self.last_frame = Instant::now();
            self.warn_after = QUIET_WARNING;
        }
        loop {
            self.give_back();
            self.take_events();
            if self.ended.is_none() && self.follow()? {
                return Ok(Next::Changed);
            }
            if let Some(a) = self.arrived.pop_front() {
                self.last_frame = Instant::now();
                self.warn_after = QUIET_WARNING;
                let i = a.index as usize;
                let copied = a.copy.is_some();
                let lease = match a.copy {
                    // Copied into a pool made before a renegotiation (the thread had not
                    // heard of the new one yet): not a buffer the consumers have.
                    Some(lease) if !self.pool.as_ref().is_some_and(|p| p.owns(&lease)) => {
                        self.stale += 1;
                        continue;
                    }
                    Some(lease) => lease,
                    None => match self.lent.get_mut(i).and_then(Option::take) {
                        Some(lease) => lease,
                        None => bail!("PipeWire sent a frame in buffer {i}, which it did not hold"),
                    },
                };
                let moved = a
                    .chunks
                    .iter()
                    .zip(&self.chunks)
                    .any(|(c, first)| c.offset != first.offset || c.stride != first.stride);
                if !copied && moved {
                    self.skipped += 1;
                    if self.skipped.is_power_of_two() {
                        tracing::warn!(
                            "PipeWire frame in buffer {i} has its planes elsewhere ({:?}, first {:?}); skipped ({} so far)",
                            a.chunks, self.chunks, self.skipped
                        );
                    }
                    drop(lease);
                    continue;
                }
                let pts_ns = a
                    .pts_ns
                    .unwrap_or_else(|| self.epoch.elapsed().as_nanos() as i64);
                let (checksum, publish_ns) = host.filled(&lease, None)?;
                return Ok(Next::Frame(super::Filled {
                    lease: Arc::new(lease),
                    pts_ns,
                    checksum,
                    copied,
                    corrupted: a.corrupted,
                    publish_ns,
                }));
            }
            if self.ended.is_some() {
                return Ok(Next::End);
            }
            if host
                .wait_readable(self.input.as_fd(), Duration::from_millis(100))?
                .is_none()
            {
                return Ok(host.why_not());
            }
            let quiet = self.last_frame.elapsed();
            if quiet >= self.warn_after {
                // A live node may pause; one that stalls should not look like a hang of ours.
                tracing::warn!(
                    "no frame from the PipeWire node {:?} for {:.0} s (it paused or stalled); waiting",
                    self.target,
                    quiet.as_secs_f64()
                );
                self.warn_after *= 2;
            }
        }
    }
}
