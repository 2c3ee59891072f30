//! `--source pipewire:TARGET`: a PipeWire video stream (a camera, a screen cast, another
//! application's node) passed on to our consumers in PipeWire's own buffers, as a V4L2
//! `expbuf` capture passes on the driver's: the pool *is* PipeWire's buffers (sealed memfds),
//! each lent to PipeWire while it fills it and given back to it once every consumer released
//! the frame. No copy.

use super::{FrameSource, Host, Next};
use anyhow::{bail, Context as _, Result};
use dmabuf_core::alloc::Allocator;
use dmabuf_core::format::{FrameFormat, FrameLayout, PlaneLayout};
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::wire::ColorInfo;
use dmabuf_core::{AllocatorKind, FrameBuffer};
use dmabuf_pipewire::plane_layout;
use dmabuf_pipewire::{Chunk, Input, InputBuffer, InputEvent, InputFormat, InputOptions};
use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A frame PipeWire handed over, not yet published: in PipeWire's buffer `index`, or copied
/// into one of ours.
#[derive(Debug)]
struct Arrived {
    index: u32,
    chunks: Vec<Chunk>,
    pts_ns: Option<i64>,
    corrupted: bool,
    copy: Option<Lease>,
}

pub struct PipeWireSource {
    input: Input,
    target: String,
    stream: InputFormat,
    /// PipeWire's buffers as a pool (zero-copy), or ours that frames are copied into (made by
    /// `make_pool`, when PipeWire's buffers are memory in this process).
    pool: Option<Pool>,
    zero_copy: bool,
    /// Where each plane is in every frame (learned from the first; zero-copy).
    chunks: Vec<Chunk>,
    /// Leases of the buffers PipeWire holds (index = pool id).
    lent: Vec<Option<Lease>>,
    arrived: VecDeque<Arrived>,
    /// Why the stream ended, once it did.
    ended: Option<String>,
    /// Frames whose planes were not where the pool says (given back unpublished).
    skipped: u64,
    /// Frames that waited while a newer one came (no consumer took them in time).
    stale: u64,
    /// pts for frames without a header: their arrival time since the first.
    epoch: Instant,
}

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
        let mut buffers: Option<(InputFormat, Option<Vec<InputBuffer>>)> = None;
        // Zero-copy needs the first frame (where its planes are); a copy needs only the format.
        let first = loop {
            if let Some((_, None)) = &buffers {
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
                Some(InputEvent::Buffers(f, b)) => buffers = Some((f, b)),
                Some(InputEvent::Frame {
                    index,
                    chunks,
                    pts_ns,
                    corrupted,
                    copy,
                    ..
                }) => {
                    if buffers.is_some() {
                        break Some(Arrived {
                            index,
                            chunks,
                            pts_ns,
                            corrupted,
                            copy,
                        });
                    }
                    input.recycle(index);
                }
                Some(InputEvent::Ended(why)) => bail!("PipeWire node {target:?}: {why}"),
            }
        };
        let (stream, bufs) = buffers.expect("the buffers came first");
        let mut src = Self {
            input,
            target: target.to_string(),
            stream,
            pool: None,
            zero_copy: false,
            chunks: Vec::new(),
            lent: Vec::new(),
            arrived: VecDeque::new(),
            ended: None,
            skipped: 0,
            stale: 0,
            epoch: Instant::now(),
        };
        let (Some(bufs), Some(first)) = (bufs, first) else {
            tracing::info!(
                "PipeWire node {target:?}: its buffers are memory inside this process (not fds): \
                 each frame is copied once into the pool"
            );
            return Ok(src);
        };
        // Every buffer's planes where the first frame's are, from its own blocks' offsets.
        let fb: Vec<FrameBuffer> = bufs
            .iter()
            .map(|b| {
                let bases: Vec<u64> = b.blocks.iter().map(|k| k.mapoffset).collect();
                plane_layout(src.stream.format, &bases, &first.chunks)
                    .map(|planes| frame_buffer(&src.stream, b, &planes))
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("the frames of PipeWire node {target:?}"))
            })
            .collect::<Result<_>>()?;
        let pool = Pool::from_buffers(fb, AllocatorKind::Memfd, src.stream.format)
            .context("mapping PipeWire's buffers")?;
        // Every buffer is PipeWire's, the first frame's included until it is published.
        src.lent = (0..pool.len()).map(|_| None).collect();
        while let Some(l) = pool.try_acquire() {
            let i = l.id() as usize;
            src.lent[i] = Some(l);
        }
        src.pool = Some(pool);
        src.zero_copy = true;
        src.chunks = first.chunks.clone();
        src.arrived.push_back(first);
        Ok(src)
    }

    /// Give PipeWire back every buffer no consumer holds any more.
    fn give_back(&mut self) {
        if !self.zero_copy {
            return;
        }
        let Some(pool) = &self.pool else { return };
        while let Some(l) = pool.try_acquire() {
            let i = l.id();
            self.input.recycle(i);
            self.lent[i as usize] = Some(l);
        }
    }

    /// Take what PipeWire sent meanwhile. A live source: only the newest frame waiting is
    /// worth sending, older ones go back to PipeWire (counted).
    fn take_events(&mut self) {
        while let Some(ev) = self.input.try_event() {
            match ev {
                InputEvent::Frame { index, copy, .. } if self.ended.is_some() => {
                    // After a renegotiation or the end: back to PipeWire, or dropped.
                    if copy.is_none() {
                        self.input.recycle(index);
                    }
                }
                InputEvent::Frame {
                    index,
                    chunks,
                    pts_ns,
                    corrupted,
                    copy,
                    ..
                } => self.arrived.push_back(Arrived {
                    index,
                    chunks,
                    pts_ns,
                    corrupted,
                    copy,
                }),
                InputEvent::Buffers(f, _) => {
                    // A new format or new buffers: the pool would have to change under the
                    // consumers; not taken yet. Frames after it are in the new buffers: none
                    // is published (the loop below stops taking them).
                    self.ended.get_or_insert(format!(
                        "the PipeWire node {:?} renegotiated ({} now); restart the producer to follow it",
                        self.target, f.format
                    ));
                }
                InputEvent::Ended(why) => {
                    self.ended.get_or_insert(why);
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
        allocator: AllocatorKind::Memfd,
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
            if self.zero_copy {
                "its own buffers (memfd), zero-copy"
            } else {
                "copied once from PipeWire's memory into the pool"
            }
        )
    }

    fn make_pool(&mut self, allocator: &dyn Allocator, buffers: usize) -> Result<Pool> {
        if let (true, Some(pool)) = (self.zero_copy, &self.pool) {
            return Ok(pool.clone());
        }
        let pool = Pool::new(allocator, self.stream.format, buffers)
            .context("allocating the buffer pool")?;
        self.input.copy_into(&pool);
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
            "PipeWire frames {}; {} skipped (planes not where the pool says), {} superseded by \
             a newer frame before any consumer took them",
            if self.zero_copy {
                "passed on in PipeWire's buffers"
            } else {
                "copied once into the pool"
            },
            self.skipped,
            self.stale
        ))
    }

    fn next_frame(&mut self, _seq: u64, host: &mut dyn Host) -> Result<Next> {
        loop {
            self.give_back();
            self.take_events();
            if let Some(a) = self.arrived.pop_front() {
                let i = a.index as usize;
                let copied = a.copy.is_some();
                let lease = match a.copy {
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
        }
    }
}
