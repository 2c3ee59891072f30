//! Where frames come from: the synthetic pattern, a file decoded by FFmpeg, or a V4L2 capture
//! device (which brings its own buffers and hands the server filled leases).

pub mod decode;
mod direct;
pub mod pattern;
pub mod v4l2;

use anyhow::{Context as _, Result};
use dmabuf_core::alloc::Allocator;
use dmabuf_core::format::{FrameFormat, FrameLayout};
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::wire::{ColorInfo, Geometry};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// A frame a source filled itself, in a lease of its own pool.
pub struct Filled {
    pub lease: Lease,
    pub pts_ns: i64,
    pub checksum: Option<u32>,
    /// The producer's CPU copied (or decoded) the pixels into the lease (V4L2 mmap I/O).
    pub copied: bool,
}

/// What [`Source::next_frame`] gives the server.
pub enum NextFrame {
    /// This source does not fill leases itself: use `advance` + `write` into a pool lease.
    NotMine,
    Frame(Filled),
    /// The device ended the stream (see [`Source::end_message`]).
    End,
    ConsumerGone,
    /// SIGINT/SIGTERM while waiting.
    Stopped,
}

pub enum Source {
    Pattern {
        pattern: pattern::Pattern,
        format: FrameFormat,
        fps: (u32, u32),
    },
    File {
        dec: Box<decode::Decoder>,
        looping: bool,
        /// Frames decoded since the last rewind.
        used: bool,
    },
    V4l2(Box<v4l2::Capture>),
}

impl Source {
    pub fn format(&self) -> FrameFormat {
        match self {
            Source::Pattern { format, .. } => *format,
            Source::File { dec, .. } => FrameFormat::linear(dec.pixel, dec.width, dec.height),
            Source::V4l2(cap) => cap.format(),
        }
    }

    pub fn fps(&self) -> (u32, u32) {
        match self {
            Source::Pattern { fps, .. } => *fps,
            Source::File { dec, .. } => dec.fps,
            Source::V4l2(cap) => cap.fps(),
        }
    }

    pub fn color(&self) -> ColorInfo {
        use dmabuf_core::proto::wire::h273;
        match self {
            Source::V4l2(cap) => cap.color(),
            // The pattern draws BT.709 limited-range Y'CbCr, chroma sited left.
            Source::Pattern { format, .. } if format.pixel.is_yuv() => ColorInfo {
                matrix: h273::MATRIX_BT709,
                range: 1,
                primaries: h273::PRIMARIES_BT709,
                transfer: h273::TRANSFER_BT709,
                chroma_location: 1,
            },
            Source::Pattern { .. } => ColorInfo::rgb(),
            Source::File { dec, .. } => dec.color,
        }
    }

    /// Sample aspect ratio and orientation (a file's container says; the others are square and
    /// upright).
    pub fn geometry(&self) -> Geometry {
        match self {
            Source::File { dec, .. } => dec.geometry,
            _ => Geometry::default(),
        }
    }

    pub fn describe(&self) -> String {
        let f = self.format();
        let (n, d) = self.fps();
        match self {
            Source::Pattern { .. } => format!("pattern, {f} at {n}/{d} fps"),
            Source::File { dec, .. } => format!(
                "{} decoded with {}, {f} at {n}/{d} fps",
                dec.path().display(),
                dec.codec
            ),
            Source::V4l2(cap) => cap.describe(),
        }
    }

    /// Allocate the pool this source fills: `buffers` for the consumers to hold, plus what the
    /// decoder keeps when it decodes in place.
    pub fn make_pool(&mut self, allocator: &dyn Allocator, buffers: usize) -> Result<Pool> {
        match self {
            Source::Pattern { format, .. } => {
                Pool::new(allocator, *format, buffers).context("allocating the buffer pool")
            }
            Source::File { dec, .. } => {
                let pool = dec.make_pool(allocator, buffers)?;
                tracing::info!("decode_path: {}", dec.decode_path);
                Ok(pool)
            }
            // The capture brings its pool (see `own_pool`).
            Source::V4l2(cap) => Ok(cap.pool().clone()),
        }
    }

    /// The pool buffer the frame made ready by [`Source::advance`] already lives in (decoded in
    /// place); `None` when it must be written with [`Source::write`].
    pub fn filled_lease(&self) -> Option<Arc<Lease>> {
        match self {
            Source::Pattern { .. } | Source::V4l2(_) => None,
            Source::File { dec, .. } => dec.lease(),
        }
    }

    /// The frame made ready by [`Source::advance`] was decoded with errors concealed.
    pub fn corrupt(&self) -> bool {
        match self {
            Source::File { dec, .. } => dec.corrupt(),
            _ => false,
        }
    }

    /// For the logs: how frames reached the pool so far.
    pub fn path_summary(&self) -> Option<String> {
        match self {
            Source::Pattern { .. } | Source::V4l2(_) => None,
            Source::File { dec, .. } => {
                let c = dec.counts();
                let converted = match dec.converted() {
                    0 => String::new(),
                    n => format!(", converted by swscale {n}"),
                };
                Some(format!(
                    "decoded in place {}, pool dry {}, not fitting the pool {}{converted}",
                    c.direct, c.pool_dry, c.unfit
                ))
            }
        }
    }

    /// Start from the beginning for a new consumer.
    pub fn restart(&mut self) -> Result<()> {
        if let Source::File { dec, used, .. } = self {
            if *used {
                dec.rewind(false)?;
                *used = false;
            }
        }
        Ok(())
    }

    /// The pool a source brings (V4L2 capture), instead of one the server allocates.
    pub fn own_pool(&self) -> Option<Pool> {
        match self {
            Source::V4l2(cap) => Some(cap.pool().clone()),
            _ => None,
        }
    }

    /// Why the source ended the stream, when it was not simply the end of a file.
    pub fn end_message(&self) -> Option<&str> {
        match self {
            Source::V4l2(cap) => cap.end_message(),
            _ => None,
        }
    }

    /// For sources that fill their own leases (V4L2): wait for the next frame, calling `pump`
    /// (which returns `true` once the consumer has left) to keep the session served meanwhile.
    pub fn next_frame(
        &mut self,
        want_sum: bool,
        stop: &AtomicBool,
        pump: &mut dyn FnMut(Duration) -> Result<bool>,
    ) -> Result<NextFrame> {
        match self {
            Source::V4l2(cap) => cap.next_frame(want_sum, stop, pump),
            _ => Ok(NextFrame::NotMine),
        }
    }

    /// Make frame `seq` ready; its presentation time in ns, or `None` at the end of the stream.
    pub fn advance(&mut self, seq: u64) -> Result<Option<i64>> {
        match self {
            Source::Pattern { fps, .. } => Ok(Some(
                (seq * 1_000_000_000 * u64::from(fps.1) / u64::from(fps.0)) as i64,
            )),
            Source::File { dec, looping, used } => {
                *used = true;
                match dec.next()? {
                    Some(pts) => Ok(Some(pts)),
                    None if *looping => {
                        dec.rewind(true)?;
                        dec.next()
                    }
                    None => Ok(None),
                }
            }
            Source::V4l2(_) => Ok(None),
        }
    }

    /// Write the frame made ready by [`Source::advance`] into `data`, laid out as `layout`.
    /// True when that was a copy of pixels that already existed (a decoded picture), false
    /// when the source drew them in place.
    pub fn write(&mut self, seq: u64, data: &mut [u8], layout: &FrameLayout) -> Result<bool> {
        Ok(match self {
            Source::Pattern { pattern, .. } => {
                pattern.fill(seq, data, layout);
                false
            }
            Source::File { dec, .. } => {
                dec.write(data, layout)?;
                true
            }
            Source::V4l2(_) => false,
        })
    }
}
