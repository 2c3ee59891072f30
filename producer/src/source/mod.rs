//! Where frames come from: the synthetic pattern, a file decoded by FFmpeg, or a V4L2 capture
//! device. Each is a [`FrameSource`]: it describes its stream and yields filled buffers of the
//! pool one way, [`FrameSource::next_frame`], asking the producer (a [`Host`]) for what it
//! needs meanwhile (a free buffer written through the transport, a wait on its device while
//! consumers are served).

pub mod decode;
mod direct;
pub mod pattern;
pub mod pipewire;
pub mod v4l2;

use anyhow::{Context as _, Result};
use dmabuf_core::alloc::Allocator;
use dmabuf_core::format::{FrameFormat, FrameLayout};
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::wire::{ColorInfo, Geometry};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

/// A buffer of the pool holding the next frame.
pub struct Filled {
    pub lease: Arc<Lease>,
    pub pts_ns: i64,
    pub checksum: Option<u32>,
    /// The producer's CPU copied (or decoded) the pixels into the buffer (`FRAME_FLAG_COPIED`).
    pub copied: bool,
    /// Decoded with errors concealed (`CHUNK_FLAG_CORRUPTED`).
    pub corrupted: bool,
    /// When its content was complete (`CLOCK_MONOTONIC` ns).
    pub publish_ns: u64,
}

/// What [`FrameSource::next_frame`] yields.
pub enum Next {
    Frame(Filled),
    /// The next frame is ready but its format, colorimetry or geometry differs from what the
    /// consumers were told ([`Host::announced`]): renegotiate, then call again for it.
    Changed,
    /// The stream ended (the end of the file, the device ended it: see
    /// [`FrameSource::end_message`]).
    End,
    /// Every consumer left while the source waited.
    Idle,
    /// SIGINT/SIGTERM while the source waited.
    Stopped,
}

/// What [`FrameSource::idle`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Nothing the producer must act on.
    Same,
    /// The format or the buffers changed: the producer makes a new pool (`make_pool`) at once.
    Changed,
    /// The source ended ([`FrameSource::end_message`] says why).
    Ended,
}

/// A buffer written by [`Host::write`].
pub struct Written {
    pub lease: Arc<Lease>,
    pub checksum: Option<u32>,
    pub copied: bool,
    pub publish_ns: u64,
}

impl Written {
    /// The frame this buffer holds, presented at `pts_ns`.
    fn frame(self, pts_ns: i64, corrupted: bool) -> Next {
        Next::Frame(Filled {
            lease: self.lease,
            pts_ns,
            checksum: self.checksum,
            copied: self.copied,
            corrupted,
            publish_ns: self.publish_ns,
        })
    }
}

/// What a source may ask of the producer while it makes a frame. Every wait serves the
/// consumers meanwhile (connections, releases, stalls).
pub trait Host {
    /// A free pool buffer written by `write(bytes, layout)` (which returns whether it copied
    /// pixels that already existed) through the transport: in place, or into private memory
    /// and then copied or sent. `None` when the stream must end meanwhile ([`Host::why_not`]).
    fn write(
        &mut self,
        write: &mut dyn FnMut(&mut [u8], &FrameLayout) -> Result<bool>,
    ) -> Result<Option<Written>>;
    /// A frame the source put in a pool buffer itself: its checksum (given, or computed when
    /// wanted), metered as the source's work, and the time it was complete.
    fn filled(&mut self, lease: &Lease, checksum: Option<u32>) -> Result<(Option<u32>, u64)>;
    /// Wait up to `timeout` for `fd` to be readable: true if it is. `None` when the stream must
    /// end meanwhile.
    fn wait_readable(&mut self, fd: BorrowedFd<'_>, timeout: Duration) -> Result<Option<bool>>;
    /// Wait up to `timeout` for a release. `None` when the stream must end meanwhile.
    fn wait(&mut self, timeout: Duration) -> Result<Option<()>>;
    /// Run `work` (decoding) metered as the source's CPU.
    fn metered(&mut self, work: &mut dyn FnMut() -> Result<()>) -> Result<()>;
    /// Whether frames carry checksums.
    fn want_checksum(&self) -> bool;
    /// What the consumers were told: the pool's format, the colorimetry, the geometry.
    fn announced(&self) -> (FrameFormat, ColorInfo, Geometry);
    /// Why a wait returned `None`: [`Next::Stopped`] or [`Next::Idle`].
    fn why_not(&self) -> Next;
}

/// A source of frames.
pub trait FrameSource {
    fn format(&self) -> FrameFormat;
    fn fps(&self) -> (u32, u32);
    /// Colorimetry (H.273).
    fn color(&self) -> ColorInfo;
    /// Sample aspect ratio and orientation (a file's container says; the others are square
    /// and upright).
    fn geometry(&self) -> Geometry {
        Geometry::default()
    }
    fn describe(&self) -> String;
    /// Allocate the pool this source fills: `buffers` for the consumers to hold, plus what it
    /// keeps itself (a decoder's references).
    fn make_pool(&mut self, allocator: &dyn Allocator, buffers: usize) -> Result<Pool>;
    /// The pool a source brings (a V4L2 capture), instead of one the producer allocates; the
    /// producer then never swaps it.
    fn own_pool(&self) -> Option<Pool> {
        None
    }
    /// Frames come at their own pace (a capture device, a PipeWire stream): the producer does
    /// not pace them.
    fn live(&self) -> bool {
        self.own_pool().is_some()
    }
    /// Start from the beginning for a new stream.
    fn restart(&mut self) -> Result<()> {
        Ok(())
    }
    /// Why the source ended the stream, when it was not simply the end of a file.
    fn end_message(&self) -> Option<&str> {
        None
    }
    /// For the logs: how frames reached the pool so far.
    fn path_summary(&self) -> Option<String> {
        None
    }
    /// The one way frames come out: frame `seq` in a buffer of the pool.
    fn next_frame(&mut self, seq: u64, host: &mut dyn Host) -> Result<Next>;
    /// Called every 200 ms or so while no one takes frames: a live source keeps up with what
    /// comes meanwhile (dropping frames, following its peer's renegotiations).
    fn idle(&mut self) -> Result<Idle> {
        Ok(Idle::Same)
    }
}

/// The synthetic pattern, drawn into each buffer.
pub struct PatternSource {
    pub pattern: pattern::Pattern,
    pub format: FrameFormat,
    pub fps: (u32, u32),
}

impl FrameSource for PatternSource {
    fn format(&self) -> FrameFormat {
        self.format
    }

    fn fps(&self) -> (u32, u32) {
        self.fps
    }

    fn color(&self) -> ColorInfo {
        use dmabuf_core::proto::wire::h273;
        if self.format.pixel.is_yuv() {
            // The pattern draws BT.709 limited-range Y'CbCr, chroma sited left.
            ColorInfo {
                matrix: h273::MATRIX_BT709,
                range: 1,
                primaries: h273::PRIMARIES_BT709,
                transfer: h273::TRANSFER_BT709,
                chroma_location: 1,
            }
        } else {
            ColorInfo::rgb()
        }
    }

    fn describe(&self) -> String {
        let (n, d) = self.fps;
        format!("pattern, {} at {n}/{d} fps", self.format)
    }

    fn make_pool(&mut self, allocator: &dyn Allocator, buffers: usize) -> Result<Pool> {
        Pool::new(allocator, self.format, buffers).context("allocating the buffer pool")
    }

    fn next_frame(&mut self, seq: u64, host: &mut dyn Host) -> Result<Next> {
        let (num, den) = self.fps;
        let pts_ns = (seq * 1_000_000_000 * u64::from(den) / u64::from(num.max(1))) as i64;
        let pattern = &mut self.pattern;
        let written = host.write(&mut |data, layout| {
            pattern.fill(seq, data, layout);
            Ok(false)
        })?;
        Ok(written.map_or_else(|| host.why_not(), |w| w.frame(pts_ns, false)))
    }
}

/// A file decoded by FFmpeg: in place into the pool where the decoder allows, else decoded and
/// written (copied) into a free buffer.
pub struct FileSource {
    pub dec: Box<decode::Decoder>,
    pub looping: bool,
    /// Frames decoded since the last rewind.
    used: bool,
    /// A frame decoded and not yet yielded (it waited for a renegotiation), with its pts.
    pending: Option<i64>,
}

impl FileSource {
    pub fn new(dec: decode::Decoder, looping: bool) -> Self {
        Self {
            dec: Box::new(dec),
            looping,
            used: false,
            pending: None,
        }
    }

    /// Decode the next frame; its pts, or `None` at the end.
    fn advance(&mut self) -> Result<Option<i64>> {
        self.used = true;
        match self.dec.next()? {
            Some(pts) => Ok(Some(pts)),
            None if self.looping => {
                self.dec.rewind(true)?;
                self.dec.next()
            }
            None => Ok(None),
        }
    }
}

impl FrameSource for FileSource {
    fn format(&self) -> FrameFormat {
        FrameFormat::linear(self.dec.pixel, self.dec.width, self.dec.height)
    }

    fn fps(&self) -> (u32, u32) {
        self.dec.fps
    }

    fn color(&self) -> ColorInfo {
        self.dec.color
    }

    fn geometry(&self) -> Geometry {
        self.dec.geometry
    }

    fn describe(&self) -> String {
        let (n, d) = self.fps();
        format!(
            "{} decoded with {}, {} at {n}/{d} fps",
            self.dec.path().display(),
            self.dec.codec,
            self.format()
        )
    }

    fn make_pool(&mut self, allocator: &dyn Allocator, buffers: usize) -> Result<Pool> {
        let pool = self.dec.make_pool(allocator, buffers)?;
        tracing::info!("decode_path: {}", self.dec.decode_path);
        Ok(pool)
    }

    fn restart(&mut self) -> Result<()> {
        if self.used {
            self.dec.rewind(false)?;
            self.used = false;
            self.pending = None;
        }
        Ok(())
    }

    fn path_summary(&self) -> Option<String> {
        let c = self.dec.counts();
        let converted = match self.dec.converted() {
            0 => String::new(),
            n => format!(", converted by swscale {n}"),
        };
        Some(format!(
            "decoded in place {}, pool dry {}, not fitting the pool {}{converted}",
            c.direct, c.pool_dry, c.unfit
        ))
    }

    fn next_frame(&mut self, _seq: u64, host: &mut dyn Host) -> Result<Next> {
        let pts_ns = match self.pending.take() {
            Some(pts) => pts,
            None => {
                let mut pts = None;
                host.metered(&mut || {
                    pts = self.advance()?;
                    Ok(())
                })?;
                let Some(pts) = pts else {
                    return Ok(Next::End);
                };
                if (self.format(), self.color(), self.geometry()) != host.announced() {
                    self.pending = Some(pts);
                    return Ok(Next::Changed);
                }
                pts
            }
        };
        let corrupted = self.dec.corrupt();
        if let Some(lease) = self.dec.lease() {
            // Decoded in place: only the checksum is left.
            let (checksum, publish_ns) = host.filled(&lease, None)?;
            return Ok(Next::Frame(Filled {
                lease,
                pts_ns,
                checksum,
                copied: false,
                corrupted,
                publish_ns,
            }));
        }
        let dec = &mut self.dec;
        let written = host.write(&mut |data, layout| {
            dec.write(data, layout)?;
            Ok(true)
        })?;
        Ok(written.map_or_else(|| host.why_not(), |w| w.frame(pts_ns, corrupted)))
    }
}
