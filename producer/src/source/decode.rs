//! `--source file:PATH`: any file libavcodec decodes (H.264, HEVC, VP9, AV1 …), frame-threaded.
//!
//! Pictures are decoded straight into pool buffers ([`super::direct`], a custom `get_buffer2`):
//! `decode_path: direct`, no copy. When that is impossible — the decoder lacks
//! `AV_CODEC_CAP_DR1`, the allocator's memory must not be read back by the CPU (GBM), the pool
//! is dry, or the picture does not fit — the frame is copied once, row by row, into a pool
//! buffer (`decode_path: copy`), and the frame message says so.

use super::direct::{DirectCounts, DirectDecode, PLANE_SLACK};
use anyhow::{anyhow, bail, Context as _, Result};
use dmabuf_core::alloc::{AllocError, Allocator};
use dmabuf_core::format::{FrameFormat, FrameLayout, PixelFormat};
use dmabuf_core::pool::{Lease, Pool, PoolError};
use dmabuf_core::proto::wire::{h273, ColorInfo, Geometry};
use ffmpeg::ffi;
use ffmpeg::format::Pixel;
use ffmpeg_next as ffmpeg;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Decoder {
    path: PathBuf,
    input: ffmpeg::format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream: usize,
    time_base: ffmpeg::Rational,
    frame: ffmpeg::frame::Video,
    eof_sent: bool,
    /// Pictures that came out of the decoder since the file was opened.
    decoded: u64,
    /// Packets (or pictures) the decoder refused: skipped, as the FFmpeg CLI does.
    pub decode_errors: u64,
    last_error: Option<String>,
    pub pixel: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: (u32, u32),
    pub color: ColorInfo,
    pub geometry: Geometry,
    pub codec: String,
    /// Added to the stream's timestamps after each `--loop` rewind.
    pts_offset_ns: i64,
    last_pts_ns: i64,
    /// The file's first picture's timestamp (ns, as in the file): `--loop` continues the next
    /// pass one frame after the last, whatever the file's start time.
    first_raw_ns: Option<i64>,
    threads: usize,
    forced_copy: bool,
    /// Pool buffers for the decoder on top of the consumers' (`--decoder-buffers`); `None`:
    /// references + threads + 2.
    pub decoder_buffers: Option<usize>,
    /// How pictures reach the pool, for the logs: "direct (…)" or "copy (why)".
    pub decode_path: String,
    /// Converts pictures whose format is not carried (`None` while they are).
    converter: Option<Converter>,
    /// `--format`: the format every picture is carried in.
    want: Option<Pixel>,
    /// Declared last: the codec context (in `decoder`) must be freed before the callback's
    /// state.
    direct: Result<DirectDecode, String>,
}

/// The H.273 colorimetry of pictures of `pixel` with FFmpeg's colour fields (which are H.273
/// code points); unspecified stays unspecified (the consumer documents its guess).
fn colorimetry(
    pixel: PixelFormat,
    full_range: bool,
    (space, range, primaries, transfer, location): (
        ffmpeg::color::Space,
        ffmpeg::color::Range,
        ffmpeg::color::Primaries,
        ffmpeg::color::TransferCharacteristic,
        ffmpeg::chroma::Location,
    ),
) -> ColorInfo {
    if !pixel.is_yuv() {
        return ColorInfo::rgb();
    }
    let code = |v: i32| u8::try_from(v).unwrap_or(h273::UNSPECIFIED);
    let matrix = code(ffi::AVColorSpace::from(space) as i32);
    ColorInfo {
        // AVCOL_SPC_RGB (0) on a YUV stream means nothing usable.
        matrix: if matrix == 0 {
            h273::UNSPECIFIED
        } else {
            matrix
        },
        range: match range {
            _ if full_range => 2,
            ffmpeg::color::Range::JPEG => 2,
            ffmpeg::color::Range::MPEG => 1,
            _ => 0,
        },
        primaries: code(ffi::AVColorPrimaries::from(primaries) as i32),
        transfer: code(ffi::AVColorTransferCharacteristic::from(transfer) as i32),
        chroma_location: code(ffi::AVChromaLocation::from(location) as i32),
    }
}

/// A decoder for `st` with `threads` frame threads, and the decode-in-place callback installed
/// on it (or why it could not be).
fn open_decoder(
    st: &ffmpeg::format::stream::Stream,
    threads: usize,
    path: &Path,
) -> Result<(ffmpeg::decoder::Video, Result<DirectDecode, String>)> {
    let mut ctx = ffmpeg::codec::context::Context::from_parameters(st.parameters())?;
    let mut threading = ffmpeg::threading::Config::default();
    threading.kind = ffmpeg::threading::Type::Frame;
    threading.count = threads;
    ctx.set_threading(threading);
    let direct = match ffmpeg::decoder::find(ctx.id()) {
        Some(codec) => {
            let formats: Vec<_> = CARRIED.iter().map(|&(av, ours, _)| (av, ours)).collect();
            DirectDecode::install(&mut ctx, &codec, &formats)
        }
        None => Err("no decoder found".to_string()),
    };
    let decoder = ctx
        .decoder()
        .video()
        .with_context(|| format!("no decoder for the video in {}", path.display()))?;
    Ok((decoder, direct))
}

/// Open `path` as a local file, whatever it contains: a name such as `clip:1.mp4` would
/// otherwise be read as the URL of an FFmpeg protocol `clip`.
fn open_input(path: &Path) -> Result<ffmpeg::format::context::Input> {
    let mut url = std::ffi::OsString::from("file:");
    url.push(path);
    ffmpeg::format::input(&PathBuf::from(url))
        .with_context(|| format!("cannot open {} as a video file", path.display()))
}

/// FFmpeg's own log lines (one per damaged packet, and more) are left out unless `RUST_LOG`
/// asks for debug output; the producer reports decode errors itself, counted.
fn quiet_ffmpeg() {
    use ffmpeg::util::log::{set_level, Level};
    let verbose =
        std::env::var("RUST_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"));
    set_level(if verbose {
        Level::Warning
    } else {
        Level::Fatal
    });
}

/// Decode `stream` of `path` until a picture comes out; an error saying the track has none.
fn probe_first_picture(path: &Path, stream: usize) -> Result<()> {
    let mut input = open_input(path)?;
    let params = input
        .stream(stream)
        .ok_or_else(|| anyhow!("{}: the video stream went away", path.display()))?
        .parameters();
    let mut dec = ffmpeg::codec::context::Context::from_parameters(params)?
        .decoder()
        .video()
        .with_context(|| format!("no decoder for the video in {}", path.display()))?;
    let mut frame = ffmpeg::frame::Video::empty();
    let (mut packets, mut errors) = (0u64, 0u64);
    let mut last = None;
    let mut eof = false;
    loop {
        match dec.receive_frame(&mut frame) {
            Ok(()) => return Ok(()),
            Err(ffmpeg::Error::Other { errno }) if errno == nix::libc::EAGAIN => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => {
                errors += 1;
                last = Some(e.to_string());
                continue;
            }
        }
        if eof {
            break;
        }
        match input.packets().find(|(st, _)| st.index() == stream) {
            Some((_, pkt)) => {
                packets += 1;
                if let Err(e) = dec.send_packet(&pkt) {
                    errors += 1;
                    last = Some(e.to_string());
                }
            }
            None => {
                dec.send_eof()?;
                eof = true;
            }
        }
    }
    bail!(
        "{}: the video track has no decodable picture ({packets} packets, {errors} decode \
         error(s){})",
        path.display(),
        last.map(|e| format!(", the last: {e}")).unwrap_or_default()
    )
}

/// `send_packet` only says EAGAIN when output is pending, which `next` always drains first.
fn unreachable_eagain() -> Result<()> {
    bail!("the decoder refused input while no output was pending (EAGAIN)")
}

/// The rotation and mirroring a stream's display matrix (`AV_PKT_DATA_DISPLAYMATRIX` side data,
/// the container's `tkhd` matrix or a `rotate` tag) asks for, to the nearest quarter turn. The
/// matrix is nine 32-bit integers, 16.16 fixed point in the first two columns (libavutil
/// `display.h`); the angle is the one FFmpeg's CLI rotates by (`-round(av_display_rotation_get)`,
/// clockwise), computed here from the same entries; a negative determinant is a mirror, taken
/// out first.
fn display_matrix(st: &ffmpeg::format::stream::Stream) -> Geometry {
    let Some(data) = st
        .side_data()
        .find(|d| d.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix)
    else {
        return Geometry::default();
    };
    let bytes = data.data();
    if bytes.len() < 36 {
        return Geometry::default();
    }
    let m: Vec<f64> = bytes
        .chunks_exact(4)
        .take(9)
        .map(|c| f64::from(i32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let mirror = m[0] * m[4] - m[1] * m[3] < 0.0;
    let (m0, m3) = if mirror { (-m[0], -m[3]) } else { (m[0], m[3]) };
    let scale0 = m0.hypot(m3);
    let scale1 = m[1].hypot(m[4]);
    if scale0 == 0.0 || scale1 == 0.0 {
        return Geometry::default();
    }
    // av_display_rotation_get = -atan2(m1/s1, m0/s0) in degrees (counter-clockwise); the CLI
    // rotates clockwise by its negation.
    let cw = (m[1] / scale1).atan2(m0 / scale0).to_degrees().round();
    let quarter = ((cw / 90.0).round() as i64).rem_euclid(4) as u8;
    if (cw - 90.0 * (cw / 90.0).round()).abs() >= 1.0 {
        tracing::warn!(
            "the display matrix rotates by {cw}°, not a multiple of 90°: carried as the \
             nearest quarter turn ({}°)",
            90 * u32::from(quarter)
        );
    }
    Geometry {
        rotation: quarter,
        mirror,
        ..Geometry::default()
    }
}

/// The decoder output formats carried as they are: FFmpeg's format, ours, and whether it
/// implies full range (the JPEG formats).
const CARRIED: &[(Pixel, PixelFormat, bool)] = &[
    (Pixel::YUV420P, PixelFormat::I420, false),
    (Pixel::YUVJ420P, PixelFormat::I420, true),
    (Pixel::NV12, PixelFormat::Nv12, false),
    (Pixel::YUYV422, PixelFormat::Yuyv, false),
    (Pixel::BGRZ, PixelFormat::Xrgb8888, false),
    (Pixel::BGRA, PixelFormat::Argb8888, false),
    (Pixel::P010LE, PixelFormat::P010, false),
    (Pixel::YUV420P10LE, PixelFormat::S010, false),
    (Pixel::YUV422P10LE, PixelFormat::S210, false),
    (Pixel::YUV444P10LE, PixelFormat::S410, false),
    (Pixel::YUV422P, PixelFormat::Yuv422, false),
    (Pixel::YUVJ422P, PixelFormat::Yuv422, true),
    (Pixel::NV16, PixelFormat::Nv16, false),
    (Pixel::YUV444P, PixelFormat::Yuv444, false),
    (Pixel::YUVJ444P, PixelFormat::Yuv444, true),
    (Pixel::NV24, PixelFormat::Nv24, false),
    (Pixel::GRAY8, PixelFormat::R8, false),
    (Pixel::RGB24, PixelFormat::Bgr888, false),
    (Pixel::BGR24, PixelFormat::Rgb888, false),
];

fn our_pixel(p: Pixel) -> Option<(PixelFormat, bool)> {
    CARRIED
        .iter()
        .find(|(av, _, _)| *av == p)
        .map(|&(_, ours, full)| (ours, full))
}

/// The carried format a picture of FFmpeg format `p` is carried in: itself, or (one counted
/// swscale conversion per picture) the nearest carried one: RGB to BGRA/BGR0, greyscale to
/// R8, Y'CbCr by its chroma subsampling to 4:2:0, 4:2:2 or 4:4:4, 10-bit when deeper than 8
/// (12- and 16-bit lose their low bits), other subsamplings (4:1:1, 4:1:0, 4:4:0) to 4:2:0.
/// `None` for what has no picture to convert (hardware surfaces, bitstreams).
///
/// With `want` (`--format`), every picture is carried in that format (converted unless it is
/// decoded so).
fn carried_as(p: Pixel, want: Option<Pixel>) -> Option<Pixel> {
    if let Some(w) = want {
        return Some(w);
    }
    if our_pixel(p).is_some() {
        return Some(p);
    }
    let d = super::direct::pixel_descriptor(p)?;
    let flags = d.flags;
    if flags & (ffi::AV_PIX_FMT_FLAG_HWACCEL | ffi::AV_PIX_FMT_FLAG_BITSTREAM) as u64 != 0 {
        return None;
    }
    let alpha = flags & ffi::AV_PIX_FMT_FLAG_ALPHA as u64 != 0;
    let deep = d.comp[0].depth > 8;
    Some(
        if flags & ffi::AV_PIX_FMT_FLAG_RGB as u64 != 0
            || flags & ffi::AV_PIX_FMT_FLAG_PAL as u64 != 0
        {
            if alpha {
                Pixel::BGRA
            } else {
                Pixel::BGRZ
            }
        } else if d.nb_components <= 2 {
            Pixel::GRAY8
        } else {
            match (d.log2_chroma_w, d.log2_chroma_h, deep) {
                (1, 0, false) => Pixel::YUV422P,
                (1, 0, true) => Pixel::YUV422P10LE,
                (0, 0, false) => Pixel::YUV444P,
                (0, 0, true) => Pixel::YUV444P10LE,
                (1, 1, true) => Pixel::YUV420P10LE,
                _ => Pixel::YUV420P,
            }
        },
    )
}

/// FFmpeg's name for a carried format.
fn av_pixel(p: PixelFormat) -> Pixel {
    CARRIED
        .iter()
        .find(|(_, ours, full)| *ours == p && !full)
        .map(|&(av, _, _)| av)
        .expect("every carried format has an FFmpeg format")
}

/// Whether FFmpeg format `p` is full-range by definition (the JPEG formats).
fn full_range_format(p: Pixel) -> bool {
    our_pixel(p).is_some_and(|c| c.1) || matches!(p, Pixel::YUVJ411P | Pixel::YUVJ440P)
}

/// The colorimetry tags of a picture decoded as `from` and carried as `to`: whether the format
/// itself says full range, its matrix and range. swscale converts between RGB and Y'CbCr with
/// BT.601 limited range, and compresses the full-range JPEG formats to limited range.
fn carried_tags(
    from: Pixel,
    to: Pixel,
    space: ffmpeg::color::Space,
    range: ffmpeg::color::Range,
) -> (bool, ffmpeg::color::Space, ffmpeg::color::Range) {
    if from == to {
        return (full_range_format(from), space, range);
    }
    let rgb = |p: Pixel| {
        super::direct::pixel_descriptor(p).is_some_and(|d| {
            d.flags & (ffi::AV_PIX_FMT_FLAG_RGB | ffi::AV_PIX_FMT_FLAG_PAL) as u64 != 0
        })
    };
    if rgb(from) != rgb(to) {
        (
            false,
            ffmpeg::color::Space::SMPTE170M,
            ffmpeg::color::Range::MPEG,
        )
    } else if full_range_format(from) {
        (false, space, ffmpeg::color::Range::MPEG)
    } else {
        (false, space, range)
    }
}

/// The one conversion of pictures in a format that is not carried (see [`carried_as`]).
struct Converter {
    from: (Pixel, u32, u32),
    to: Pixel,
    ctx: ffmpeg::software::scaling::Context,
    out: ffmpeg::frame::Video,
    /// Pictures converted so far.
    count: u64,
}

impl Decoder {
    /// Open `path`; with `want`, every picture is converted to that format (unless decoded
    /// so).
    pub fn open(path: &Path, threads: usize, want: Option<PixelFormat>) -> Result<Self> {
        let want = want.map(av_pixel);
        if let Some(w) = want {
            if !ffmpeg::software::scaling::support::output(w) {
                let can: Vec<&str> = PixelFormat::ALL
                    .iter()
                    .filter(|p| ffmpeg::software::scaling::support::output(av_pixel(**p)))
                    .map(|p| p.name())
                    .collect();
                bail!(
                    "--format {}: this FFmpeg's swscale cannot write {w:?}; a file can be \
                     converted to {}",
                    our_pixel(w).map_or("?", |p| p.0.name()),
                    can.join(", ")
                );
            }
        }
        ffmpeg::init().context("initialising FFmpeg")?;
        quiet_ffmpeg();
        let input = open_input(path)?;
        let st = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| anyhow!("{} has no video stream", path.display()))?;
        let stream = st.index();
        let time_base = st.time_base();
        let rate = st.avg_frame_rate();
        let (decoder, direct) = open_decoder(&st, threads, path)?;
        let codec = decoder
            .codec()
            .map(|c| c.name().to_string())
            .unwrap_or_else(|| "?".into());
        // A video track that yields no picture at all is said so now, before any consumer
        // connects (and before blaming an unknown format).
        probe_first_picture(path, stream)?;
        if decoder.format() == Pixel::None || decoder.width() == 0 || decoder.height() == 0 {
            // A picture decodes, yet the stream parameters do not say its format or size.
            bail!(
                "{}: the container does not say the video's size or pixel format \
                 (remux it, e.g. ffmpeg -i IN -c copy OUT.mkv)",
                path.display()
            );
        }
        let target = carried_as(decoder.format(), want).ok_or_else(|| {
            anyhow!(
                "{} decodes to {:?}, which has no picture in memory to carry",
                path.display(),
                decoder.format()
            )
        })?;
        let (pixel, _) = our_pixel(target).expect("carried_as gives a carried format");
        if target != decoder.format() && want.is_some() {
            tracing::info!(
                "{} decodes to {:?}; each picture is converted to {pixel} by swscale (--format; \
                 one counted CPU conversion per frame)",
                path.display(),
                decoder.format()
            );
        } else if target != decoder.format() {
            tracing::warn!(
                "{} decodes to {:?}, which no DRM format describes: each picture is converted \
                 to {pixel} by swscale (one counted CPU conversion per frame)",
                path.display(),
                decoder.format()
            );
        }
        let (width, height) = (decoder.width(), decoder.height());
        if width == 0 || height == 0 {
            bail!("{}: the stream does not say its size", path.display());
        }
        let fps = if rate.numerator() > 0 && rate.denominator() > 0 {
            (rate.numerator() as u32, rate.denominator() as u32)
        } else {
            (30, 1)
        };
        let (full_range, space, range) = carried_tags(
            decoder.format(),
            target,
            decoder.color_space(),
            decoder.color_range(),
        );
        let color = colorimetry(
            pixel,
            full_range,
            (
                space,
                range,
                decoder.color_primaries(),
                decoder.color_transfer_characteristic(),
                decoder.chroma_location(),
            ),
        );
        let sar = decoder.aspect_ratio();
        let geometry = Geometry {
            sar_num: sar.numerator().max(0) as u32,
            sar_den: if sar.numerator() > 0 {
                sar.denominator().max(0) as u32
            } else {
                0
            },
            ..display_matrix(&st)
        };
        if geometry.rotation != 0 || geometry.mirror || geometry.sar_num != geometry.sar_den {
            tracing::info!(
                "{}: sample aspect ratio {}:{}, display rotation {}° clockwise{}",
                path.display(),
                geometry.sar_num,
                geometry.sar_den,
                90 * u32::from(geometry.rotation),
                if geometry.mirror { ", mirrored" } else { "" }
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            input,
            decoder,
            stream,
            time_base,
            frame: ffmpeg::frame::Video::empty(),
            eof_sent: false,
            decoded: 0,
            decode_errors: 0,
            last_error: None,
            pixel,
            width,
            height,
            fps,
            color,
            geometry,
            codec,
            pts_offset_ns: 0,
            last_pts_ns: 0,
            first_raw_ns: None,
            threads: threads.max(1),
            forced_copy: false,
            decoder_buffers: None,
            decode_path: "copy (no pool yet)".into(),
            converter: None,
            want,
            direct,
        })
    }

    /// Allocate the pool the decoder writes into: laid out for the decoder's aligned picture
    /// and sized for `consumer_buffers` held downstream plus the decoder's references and
    /// threads. Falls back to a plain pool (and one copy per frame) when direct decoding is
    /// impossible with this decoder or allocator.
    pub fn make_pool(
        &mut self,
        allocator: &dyn Allocator,
        consumer_buffers: usize,
    ) -> Result<Pool> {
        let format = FrameFormat::linear(self.pixel, self.width, self.height);
        let why = match &self.direct {
            _ if self.forced_copy => "--decode-path copy".to_string(),
            Err(why) => why.clone(),
            Ok(_) if !allocator.cpu_cached() => format!(
                "{} memory may be write-combined; the decoder reads its references back",
                allocator.kind()
            ),
            Ok(direct) => {
                // After a mid-stream change, the storage the decoder already laid pictures of
                // this size out for (see super::direct).
                let (sw, sh) = direct
                    .storage_for(self.frame_format(), self.width, self.height)
                    .unwrap_or_else(|| DirectDecode::storage_size(&mut self.decoder));
                let layout = FrameLayout::with_storage(format, sw, sh, PLANE_SLACK)?;
                let refs = DirectDecode::reference_frames(&mut self.decoder);
                let decoder_share = self.decoder_buffers.unwrap_or(refs + self.threads + 2);
                // The wire carries at most 256 buffers.
                let count = (consumer_buffers + decoder_share).min(256);
                match Pool::with_layout(allocator, &layout, count) {
                    Ok(pool) => {
                        direct.attach(pool.clone(), self.frame_format());
                        self.decode_path = format!(
                            "direct ({count} buffers: {consumer_buffers} for consumers, \
                             {decoder_share} for the decoder ({refs} references by the \
                             stream's level, {} threads); storage {sw}x{sh})",
                            self.threads
                        );
                        return Ok(pool);
                    }
                    Err(PoolError::Alloc {
                        source: e @ AllocError::Unsupported { .. },
                        ..
                    }) => e.to_string(),
                    Err(e) => return Err(e).context("allocating the decoder's pool"),
                }
            }
        };
        if let Ok(direct) = &self.direct {
            direct.detach();
        }
        self.decode_path = format!("copy ({why})");
        Pool::new(allocator, format, consumer_buffers).context("allocating the buffer pool")
    }

    /// The FFmpeg pixel format of the pictures now coming out (the decoder's, before the first).
    fn frame_format(&self) -> Pixel {
        match self.frame.format() {
            Pixel::None => self.decoder.format(),
            f => f,
        }
    }

    /// The decoder flagged the current picture corrupt (it concealed errors in it).
    pub fn corrupt(&self) -> bool {
        self.frame.is_corrupt()
    }

    /// The pool buffer the current frame was decoded into, ready to publish; `None` when it
    /// must be copied with [`Decoder::write`].
    pub fn lease(&self) -> Option<Arc<Lease>> {
        self.direct.as_ref().ok()?.lease_of(&self.frame)
    }

    /// Never decode into the pool: one copy per frame (`--decode-path copy`).
    pub fn force_copy(&mut self) {
        // Keep the installed callback's state (the codec context points at it): it simply
        // never gets a pool, so every picture goes to FFmpeg's buffers.
        self.forced_copy = true;
    }

    /// Pictures decoded in place, and why others were not.
    pub fn counts(&self) -> DirectCounts {
        self.direct
            .as_ref()
            .map(DirectDecode::counts)
            .unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decode the next frame; `Ok(None)` at the end of the stream. Returns its pts in ns.
    ///
    /// A packet the decoder refuses (damaged data) is counted and skipped, as the FFmpeg CLI
    /// does; at the end of input the decoder is drained of the pictures it still holds. A file
    /// whose video track yields no picture at all is an error saying so.
    pub fn next(&mut self) -> Result<Option<i64>> {
        loop {
            match self.decoder.receive_frame(&mut self.frame) {
                Ok(()) => {
                    self.decoded += 1;
                    self.picture_out()?;
                    return Ok(Some(self.last_pts_ns));
                }
                Err(ffmpeg::Error::Eof) => return self.end_of_input(),
                Err(ffmpeg::Error::Other { errno }) if errno == nix::libc::EAGAIN => {}
                // A picture that failed (frame threads report a packet's error here).
                Err(e) => {
                    self.decode_error(e);
                    continue;
                }
            }
            if self.eof_sent {
                return self.end_of_input();
            }
            let mut sent = false;
            while let Some((st, pkt)) = self.input.packets().next() {
                if st.index() == self.stream {
                    match self.decoder.send_packet(&pkt) {
                        Ok(()) => {}
                        Err(ffmpeg::Error::Other { errno }) if errno == nix::libc::EAGAIN => {
                            unreachable_eagain()?
                        }
                        Err(e) => self.decode_error(e),
                    }
                    sent = true;
                    break;
                }
            }
            if !sent {
                self.decoder.send_eof()?;
                self.eof_sent = true;
            }
        }
    }

    fn decode_error(&mut self, e: ffmpeg::Error) {
        self.decode_errors += 1;
        let n = self.decode_errors;
        // Rate-limited: the first few, then every 100th.
        if n <= 3 || n.is_multiple_of(100) {
            tracing::warn!(
                "{}: decode error #{n} (packet skipped, as ffmpeg does): {e}",
                self.path.display()
            );
        }
        self.last_error = Some(e.to_string());
    }

    fn end_of_input(&mut self) -> Result<Option<i64>> {
        if self.decoded == 0 {
            bail!(
                "{}: the video track has no decodable picture ({} decode error(s){})",
                self.path.display(),
                self.decode_errors,
                self.last_error
                    .as_ref()
                    .map(|e| format!(", the last: {e}"))
                    .unwrap_or_default()
            );
        }
        if self.decode_errors > 0 {
            tracing::warn!(
                "{}: {} packet(s) could not be decoded and were skipped; {} pictures decoded",
                self.path.display(),
                self.decode_errors,
                self.decoded
            );
        }
        Ok(None)
    }

    /// Take note of the picture that just came out: a new size or format, its timestamp.
    fn picture_out(&mut self) -> Result<()> {
        let (w, h) = (self.frame.width(), self.frame.height());
        if w != self.width
            || h != self.height
            || carried_as(self.frame.format(), self.want)
                .and_then(our_pixel)
                .map(|p| p.0)
                != Some(self.pixel)
        {
            // A new size or format mid-stream: the server sees `format()` change and
            // renegotiates with the consumers before publishing this frame.
            let Some((pixel, _)) = carried_as(self.frame.format(), self.want).and_then(our_pixel)
            else {
                bail!(
                    "{}: the stream changed to {:?} mid-stream, which has no picture in memory",
                    self.path.display(),
                    self.frame.format()
                );
            };
            if w == 0 || h == 0 {
                bail!("{}: a frame of size {w}x{h}", self.path.display());
            }
            tracing::info!(
                "{}: the stream changes from {} {}x{} to {pixel} {w}x{h}",
                self.path.display(),
                self.pixel,
                self.width,
                self.height
            );
            (self.pixel, self.width, self.height) = (pixel, w, h);
        }
        // The picture's own colorimetry (a stream may change it, e.g. at a splice, or its
        // bitstream may say otherwise than the container): a change renegotiates, like a size.
        let f = &self.frame;
        let to = carried_as(f.format(), self.want).unwrap_or(f.format());
        let (full, space, range) = carried_tags(f.format(), to, f.color_space(), f.color_range());
        let color = colorimetry(
            self.pixel,
            full,
            (
                space,
                range,
                f.color_primaries(),
                f.color_transfer_characteristic(),
                f.chroma_location(),
            ),
        );
        if color != self.color {
            tracing::info!(
                "{}: the pictures' colorimetry is matrix {}, {} range, primaries {}, transfer {} \
                 (was matrix {}, {} range, primaries {}, transfer {})",
                self.path.display(),
                color.matrix_name(),
                color.range_name(),
                color.primaries_name(),
                color.transfer_name(),
                self.color.matrix_name(),
                self.color.range_name(),
                self.color.primaries_name(),
                self.color.transfer_name()
            );
            self.color = color;
        }
        let period = 1_000_000_000i64 * i64::from(self.fps.1) / i64::from(self.fps.0.max(1));
        self.last_pts_ns = match self.frame.timestamp().or(self.frame.pts()) {
            Some(ts) => {
                let ns = (ts as i128 * 1_000_000_000 * self.time_base.numerator() as i128
                    / self.time_base.denominator().max(1) as i128) as i64;
                self.first_raw_ns.get_or_insert(ns);
                ns + self.pts_offset_ns
            }
            // No timestamp: one nominal period after the last.
            None => self.last_pts_ns + period,
        };
        Ok(())
    }

    /// Back to the first frame (for `--loop` and for the next consumer); timestamps keep
    /// increasing across loops when `continue_pts`.
    ///
    /// The file is opened again rather than sought: every demuxer can do that (an image file's
    /// cannot seek), and it starts at the first packet exactly.
    ///
    /// The decoder is opened afresh too (a flushed decoder keeps state across the pass, e.g. the
    /// cropping of the last sequence, and decoded later passes differently than the first);
    /// the pool it decodes into stays attached.
    pub fn rewind(&mut self, continue_pts: bool) -> Result<()> {
        let input = open_input(&self.path)?;
        let st = input
            .stream(self.stream)
            .ok_or_else(|| anyhow!("{}: the video stream went away", self.path.display()))?;
        let (decoder, direct) = open_decoder(&st, self.threads, &self.path)?;
        if let (Ok(old), Ok(new)) = (&self.direct, &direct) {
            new.adopt(old);
        }
        // The old codec context goes before the callback state it points at.
        self.decoder = decoder;
        self.direct = direct;
        self.input = input;
        self.eof_sent = false;
        let period = 1_000_000_000i64 * i64::from(self.fps.1) / i64::from(self.fps.0.max(1));
        self.pts_offset_ns = if continue_pts {
            self.last_pts_ns + period - self.first_raw_ns.unwrap_or(0)
        } else {
            0
        };
        Ok(())
    }

    /// Pictures converted from a format that is not carried (see [`carried_as`]).
    pub fn converted(&self) -> u64 {
        self.converter.as_ref().map_or(0, |c| c.count)
    }

    /// Copy the current frame into `data` laid out as `layout` (the one copy of this path),
    /// converting it first when its format is not carried.
    pub fn write(&mut self, data: &mut [u8], layout: &FrameLayout) -> Result<()> {
        let (fmt, w, h) = (self.frame.format(), self.frame.width(), self.frame.height());
        let to = carried_as(fmt, self.want);
        let frame = if to == Some(fmt) {
            &self.frame
        } else {
            let to = to.ok_or_else(|| anyhow!("{fmt:?} cannot be converted"))?;
            if self
                .converter
                .as_ref()
                .is_none_or(|c| c.from != (fmt, w, h) || c.to != to)
            {
                let count = self.converter.as_ref().map_or(0, |c| c.count);
                let ctx = ffmpeg::software::scaling::Context::get(
                    fmt,
                    w,
                    h,
                    to,
                    w,
                    h,
                    ffmpeg::software::scaling::Flags::BICUBIC,
                )
                .with_context(|| format!("swscale from {fmt:?} to {to:?}"))?;
                self.converter = Some(Converter {
                    from: (fmt, w, h),
                    to,
                    ctx,
                    out: ffmpeg::frame::Video::empty(),
                    count,
                });
            }
            let c = self.converter.as_mut().expect("just made");
            c.ctx
                .run(&self.frame, &mut c.out)
                .with_context(|| format!("swscale from {fmt:?} to {to:?}"))?;
            c.count += 1;
            &c.out
        };
        for (i, pl) in layout.planes.iter().enumerate() {
            let src = frame.data(i);
            let sstride = frame.stride(i);
            let n = pl.row_bytes as usize;
            for y in 0..pl.rows as usize {
                let d = pl.offset as usize + y * pl.stride as usize;
                data[d..d + n].copy_from_slice(&src[y * sstride..y * sstride + n]);
            }
        }
        Ok(())
    }
}
