//! V4L2 webcam capture (`--source v4l2:/dev/videoN`) through v4l2r's safe `ioctl` layer.
//!
//! Three ways to get frames out of the driver (`--v4l2-io`):
//! - `expbuf`: the driver allocates its buffers (`V4L2_MEMORY_MMAP`), each is exported once as a
//!   dma-buf (`VIDIOC_EXPBUF`) and those fds *are* the pool: zero copies.
//! - `dmabuf`: the producer's own pool (`--alloc`: dma-heap, udmabuf, GBM) is queued to the
//!   driver (`V4L2_MEMORY_DMABUF`), which captures straight into it: zero copies.
//! - `mmap`: the driver's buffers are mapped and each frame is copied once into the pool.
//!
//! `auto` tries them in that order. In the two zero-copy modes a pool buffer belongs to the
//! driver while it is queued; it comes back with `VIDIOC_DQBUF` as a [`Lease`] that the server
//! hands to the consumer, and is queued again (`VIDIOC_QBUF`) only once that lease has returned
//! to the pool, that is after every consumer released the frame.
//!
//! Single-planar (`V4L2_BUF_TYPE_VIDEO_CAPTURE`) and multi-planar
//! (`V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`, SoC cameras and ISPs) queues, in the formats of
//! [`FORMATS`], including those whose planes are separate buffers (NV12M, YUV420M …: one fd per
//! plane), or MJPEG: each JPEG decoded by FFmpeg into an NV12 pool buffer (mmap I/O; see
//! mjpeg.rs).
//! Kernel documentation: <https://docs.kernel.org/userspace-api/media/v4l/io.html>.

pub mod list;
mod mjpeg;
mod sys;

use super::{Filled, FrameSource, Host, Next};
use anyhow::{bail, Context as _, Result};
use dmabuf_core::alloc::{self, AllocChoice};
use dmabuf_core::buffer::{AllocatorKind, FrameBuffer};
use dmabuf_core::format::{
    frame_checksum, plane_geometry, FrameFormat, FrameLayout, PixelFormat, PlaneLayout,
};
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::wire::{h273, ColorInfo};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use v4l2r::ioctl::{
    self, Capabilities, Capability, ExpbufFlags, IntoErrno, MemoryConsistency, QBufPlane, QBuffer,
    QueryBuffer, V4l2Buffer,
};
use v4l2r::memory::{DmaBufHandle, DmaBufSource, MemoryType, MmapHandle};
use v4l2r::{Format, QueueType};

/// The single-planar capture queue (what `--list-devices` enumerates first).
pub(crate) const Q: QueueType = QueueType::VideoCapture;
/// The multi-planar capture queue.
pub(crate) const QM: QueueType = QueueType::VideoCaptureMplane;
const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const EBUSY: i32 = nix::errno::Errno::EBUSY as i32;

/// How frames get out of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Io {
    /// expbuf if the driver can export its buffers, else dmabuf, else mmap.
    Auto,
    /// Export the driver's buffers as dma-bufs (VIDIOC_EXPBUF): zero copies.
    Expbuf,
    /// Capture into the producer's own dma-buf pool (V4L2_MEMORY_DMABUF): zero copies.
    Dmabuf,
    /// Map the driver's buffers and copy each frame once into the pool.
    Mmap,
}

impl Io {
    fn name(self) -> &'static str {
        match self {
            Io::Auto => "auto",
            Io::Expbuf => "expbuf",
            Io::Dmabuf => "dmabuf",
            Io::Mmap => "mmap",
        }
    }
}

/// What the command line asked of the device.
#[derive(Debug, Clone)]
pub struct Request {
    pub size: Option<(u32, u32)>,
    pub pixel: Option<PixelFormat>,
    /// A V4L2 fourcc asked for by name (the multi-buffer `M` formats such as NV12M): it
    /// decides over `pixel`.
    pub fourcc: Option<u32>,
    /// Capture MJPEG and decode it into NV12.
    pub mjpeg: bool,
    pub fps: Option<(u32, u32)>,
    pub io: Io,
    pub alloc: AllocChoice,
    pub buffers: usize,
    /// How long to wait for a frame (or for the consumer to release one) before giving up.
    pub stall: Duration,
}

/// The V4L2 formats this source captures, in order of preference when none is asked for:
/// the carried format, the V4L2 fourcc (`videodev2.h`), and how many memory planes (buffers)
/// a frame spans: 1, or one per plane for the `M` formats of multi-planar queues.
pub(crate) const FORMATS: [(PixelFormat, &[u8; 4], usize); 15] = [
    (PixelFormat::Nv12, b"NV12", 1),
    (PixelFormat::Yuyv, b"YUYV", 1),
    (PixelFormat::I420, b"YU12", 1),
    (PixelFormat::Nv16, b"NV16", 1),
    (PixelFormat::Nv24, b"NV24", 1),
    (PixelFormat::Yuv422, b"422P", 1),
    (PixelFormat::P010, b"P010", 1),
    (PixelFormat::R8, b"GREY", 1),
    // V4L2 names packed RGB by memory order, DRM by word order.
    (PixelFormat::Bgr888, b"RGB3", 1),
    (PixelFormat::Rgb888, b"BGR3", 1),
    (PixelFormat::Nv12, b"NM12", 2),
    (PixelFormat::I420, b"YM12", 3),
    (PixelFormat::Nv16, b"NM16", 2),
    (PixelFormat::Yuv422, b"YM16", 3),
    (PixelFormat::Yuv444, b"YM24", 3),
];

/// The V4L2 names of the multi-buffer formats, for `--format` (`NV12M` is `NM12` …).
pub const MULTI_BUFFER_NAMES: [(&str, &[u8; 4]); 5] = [
    ("NV12M", b"NM12"),
    ("YUV420M", b"YM12"),
    ("NV16M", b"NM16"),
    ("YUV422M", b"YM16"),
    ("YUV444M", b"YM24"),
];

const MJPG: u32 = u32::from_le_bytes(*b"MJPG");

/// The formats this source captures, for messages: "NV12, YUYV, … (V4L2 NV12, YUYV, …)".
fn capturable_names() -> String {
    let mut ours: Vec<&str> = Vec::new();
    for (p, _, _) in FORMATS {
        if !ours.contains(&p.name()) {
            ours.push(p.name());
        }
    }
    let v4l2: Vec<String> = FORMATS
        .iter()
        .map(|(_, c, _)| fourcc_name(u32::from_le_bytes(**c)))
        .collect();
    format!("{} (V4L2 {})", ours.join(", "), v4l2.join(", "))
}

fn format_entry(cc: u32) -> Option<(PixelFormat, usize)> {
    FORMATS
        .iter()
        .find(|(_, c, _)| u32::from_le_bytes(**c) == cc)
        .map(|&(p, _, n)| (p, n))
}

pub(crate) fn fourcc_name(cc: u32) -> String {
    cc.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// Open a V4L2 node for capture, with clear errors for a missing path and for files that are
/// not V4L2 devices.
pub(crate) fn open_device(path: &Path) -> Result<(File, Capability)> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("no such V4L2 device: {} does not exist", path.display())
        }
        _ => anyhow::anyhow!("cannot open {}: {e}", path.display()),
    })?;
    if !meta.file_type().is_char_device() {
        bail!(
            "{} is not a V4L2 device (not a character device)",
            path.display()
        );
    }
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(EBUSY) => anyhow::anyhow!(
                "V4L2 device {} is busy (another program is using it)",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot open V4L2 device {}: {e}", path.display()),
        })?;
    let cap: Capability = ioctl::querycap(&dev).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a V4L2 device (VIDIOC_QUERYCAP failed)",
            path.display()
        )
    })?;
    Ok((dev, cap))
}

fn errno_text(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// A pool fd handed to the driver with `V4L2_MEMORY_DMABUF`.
#[derive(Debug)]
struct PoolFd {
    fd: Arc<OwnedFd>,
    len: u64,
}

impl AsRawFd for PoolFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PoolFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl DmaBufSource for PoolFd {
    fn len(&self) -> u64 {
        self.len
    }
}

/// Where the frames go once dequeued.
enum Mode {
    /// expbuf / dmabuf: pool buffer `i` is V4L2 buffer `i`; `queued[i]` holds its lease while
    /// the driver owns it.
    ZeroCopy { queued: Vec<Option<Lease>> },
    /// mmap: the driver's own mapped buffers (each memory plane of each), copied into pool
    /// leases.
    Mmap { maps: Vec<Vec<ioctl::PlaneMapping>> },
}

/// An open, streaming capture device.
pub struct Capture {
    path: PathBuf,
    dev: File,
    /// The capture queue: single- or multi-planar.
    q: QueueType,
    io: Io,
    format: FrameFormat,
    /// The V4L2 fourcc captured.
    fourcc: u32,
    /// The driver's layout of a captured frame (bytesperline, sizeimage per memory plane).
    driver_layout: DriverLayout,
    fps: (u32, u32),
    /// From the driver's `v4l2_pix_format` (colorspace, ycbcr_enc, quantization, xfer_func).
    color: ColorInfo,
    pool: Pool,
    mode: Mode,
    stall: Duration,
    /// Set when capturing MJPEG.
    mjpeg: Option<mjpeg::MjpegDecoder>,
    first_ts_ns: Option<i64>,
    end: Option<String>,
    streaming: bool,
    /// For the progress log.
    dropped_errors: u64,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("path", &self.path)
            .field("io", &self.io)
            .field("format", &self.format)
            .finish()
    }
}

/// The driver's layout of a captured frame: planes (offsets within their memory plane), which
/// memory plane (buffer) each plane lives in, and each memory plane's size (`sizeimage`).
#[derive(Debug, Clone)]
struct DriverLayout {
    layout: FrameLayout,
    plane_mem: Vec<usize>,
    mem_sizes: Vec<u64>,
}

impl DriverLayout {
    /// Bytes of memory plane `j` the frame occupies.
    fn needed(&self, j: usize) -> u64 {
        self.layout
            .planes
            .iter()
            .zip(&self.plane_mem)
            .filter(|(_, &m)| m == j)
            .map(|(p, _)| p.offset + p.size())
            .max()
            .unwrap_or(0)
    }
}

fn driver_layout(format: FrameFormat, fmt: &Format, n_mem: usize) -> Result<DriverLayout> {
    let n = format.pixel.planes().len();
    if n_mem > 1 {
        // One buffer per plane, each with its own bytesperline and sizeimage.
        if fmt.plane_fmt.len() != n {
            bail!(
                "the driver returned {} memory planes for a {n}-plane format",
                fmt.plane_fmt.len()
            );
        }
        let mut planes = Vec::new();
        for (i, pf) in fmt.plane_fmt.iter().enumerate() {
            let (row_bytes, rows) = plane_geometry(format.pixel, i, format.width, format.height);
            if pf.bytesperline < row_bytes {
                bail!(
                    "driver bytesperline {} of plane {i} is shorter than a row ({row_bytes} bytes)",
                    pf.bytesperline
                );
            }
            let p = PlaneLayout {
                offset: 0,
                stride: pf.bytesperline,
                row_bytes,
                rows,
            };
            if u64::from(pf.sizeimage) < p.size() {
                bail!(
                    "driver sizeimage {} of plane {i} is smaller than the plane ({} bytes)",
                    pf.sizeimage,
                    p.size()
                );
            }
            planes.push(p);
        }
        let mem_sizes: Vec<u64> = fmt
            .plane_fmt
            .iter()
            .map(|p| u64::from(p.sizeimage))
            .collect();
        return Ok(DriverLayout {
            layout: FrameLayout {
                format,
                planes,
                size: mem_sizes.iter().sum(),
            },
            plane_mem: (0..n).collect(),
            mem_sizes,
        });
    }
    let pl = fmt
        .plane_fmt
        .first()
        .context("the driver returned a format with no plane")?;
    let bpl = pl.bytesperline;
    let (row0, _) = plane_geometry(format.pixel, 0, format.width, format.height);
    if bpl < row0 {
        bail!("driver bytesperline {bpl} is shorter than a row ({row0} bytes)");
    }
    let mut planes = Vec::new();
    let mut offset = 0u64;
    for i in 0..n {
        let (row_bytes, rows) = plane_geometry(format.pixel, i, format.width, format.height);
        // Single-buffer V4L2 formats: chroma planes follow the luma plane with the stride
        // scaled like the row (NV12: same stride; I420: half; NV24: double).
        let stride = if i == 0 {
            bpl
        } else {
            (u64::from(bpl) * u64::from(row_bytes) / u64::from(row0)) as u32
        };
        let p = PlaneLayout {
            offset,
            stride,
            row_bytes,
            rows,
        };
        offset = offset
            .checked_add(p.size())
            .context("frame size overflows")?;
        planes.push(p);
    }
    if u64::from(pl.sizeimage) < offset {
        bail!(
            "driver sizeimage {} is smaller than the frame ({offset} bytes)",
            pl.sizeimage
        );
    }
    Ok(DriverLayout {
        layout: FrameLayout {
            format,
            planes,
            size: u64::from(pl.sizeimage),
        },
        plane_mem: vec![0; n],
        mem_sizes: vec![u64::from(pl.sizeimage)],
    })
}

/// The H.273 colorimetry of a V4L2 format, with the kernel's defaults for fields the driver
/// left at 0 (`V4L2_MAP_YCBCR_ENC_DEFAULT`, `V4L2_MAP_QUANTIZATION_DEFAULT`,
/// `V4L2_MAP_XFER_FUNC_DEFAULT` in videodev2.h; the colorspace's own default when that is 0
/// too: SMPTE 170M for YUV, sRGB for RGB). Values per
/// <https://www.kernel.org/doc/html/latest/userspace-api/media/v4l/colorspaces-defs.html>.
pub fn colorimetry(
    colorspace: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer: u32,
    rgb: bool,
) -> ColorInfo {
    use v4l2r::bindings as b;
    let cs = match colorspace {
        b::v4l2_colorspace_V4L2_COLORSPACE_DEFAULT if rgb => {
            b::v4l2_colorspace_V4L2_COLORSPACE_SRGB
        }
        b::v4l2_colorspace_V4L2_COLORSPACE_DEFAULT => b::v4l2_colorspace_V4L2_COLORSPACE_SMPTE170M,
        c => c,
    };
    let enc = match ycbcr_enc {
        0 => match cs {
            b::v4l2_colorspace_V4L2_COLORSPACE_REC709
            | b::v4l2_colorspace_V4L2_COLORSPACE_DCI_P3 => {
                b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_709
            }
            b::v4l2_colorspace_V4L2_COLORSPACE_BT2020 => {
                b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_BT2020
            }
            b::v4l2_colorspace_V4L2_COLORSPACE_SMPTE240M => {
                b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_SMPTE240M
            }
            _ => b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_601,
        },
        e => e,
    };
    let full = match quantization {
        b::v4l2_quantization_V4L2_QUANTIZATION_FULL_RANGE => true,
        b::v4l2_quantization_V4L2_QUANTIZATION_LIM_RANGE => false,
        _ => rgb || cs == b::v4l2_colorspace_V4L2_COLORSPACE_JPEG,
    };
    let xfer = match xfer {
        0 => match cs {
            b::v4l2_colorspace_V4L2_COLORSPACE_OPRGB => b::v4l2_xfer_func_V4L2_XFER_FUNC_OPRGB,
            b::v4l2_colorspace_V4L2_COLORSPACE_SMPTE240M => {
                b::v4l2_xfer_func_V4L2_XFER_FUNC_SMPTE240M
            }
            b::v4l2_colorspace_V4L2_COLORSPACE_DCI_P3 => b::v4l2_xfer_func_V4L2_XFER_FUNC_DCI_P3,
            b::v4l2_colorspace_V4L2_COLORSPACE_RAW => b::v4l2_xfer_func_V4L2_XFER_FUNC_NONE,
            b::v4l2_colorspace_V4L2_COLORSPACE_SRGB | b::v4l2_colorspace_V4L2_COLORSPACE_JPEG => {
                b::v4l2_xfer_func_V4L2_XFER_FUNC_SRGB
            }
            _ => b::v4l2_xfer_func_V4L2_XFER_FUNC_709,
        },
        x => x,
    };
    let matrix = if rgb {
        h273::MATRIX_RGB
    } else {
        match enc {
            b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_709
            | b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_XV709 => h273::MATRIX_BT709,
            b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_BT2020 => h273::MATRIX_BT2020_NCL,
            b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_BT2020_CONST_LUM => h273::MATRIX_BT2020_CL,
            b::v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_SMPTE240M => h273::MATRIX_SMPTE240M,
            // 601, xvYCC 601, sYCC.
            _ => h273::MATRIX_SMPTE170M,
        }
    };
    let primaries = match cs {
        b::v4l2_colorspace_V4L2_COLORSPACE_SMPTE170M => h273::PRIMARIES_SMPTE170M,
        b::v4l2_colorspace_V4L2_COLORSPACE_REC709
        | b::v4l2_colorspace_V4L2_COLORSPACE_SRGB
        | b::v4l2_colorspace_V4L2_COLORSPACE_JPEG => h273::PRIMARIES_BT709,
        b::v4l2_colorspace_V4L2_COLORSPACE_BT2020 => h273::PRIMARIES_BT2020,
        b::v4l2_colorspace_V4L2_COLORSPACE_470_SYSTEM_M => 4,
        b::v4l2_colorspace_V4L2_COLORSPACE_470_SYSTEM_BG => h273::PRIMARIES_BT470BG,
        b::v4l2_colorspace_V4L2_COLORSPACE_SMPTE240M => 7,
        b::v4l2_colorspace_V4L2_COLORSPACE_DCI_P3 => 11,
        // opRGB (Adobe RGB) and raw have no H.273 code point.
        _ => h273::UNSPECIFIED,
    };
    let transfer = match xfer {
        b::v4l2_xfer_func_V4L2_XFER_FUNC_709 => h273::TRANSFER_BT709,
        b::v4l2_xfer_func_V4L2_XFER_FUNC_SRGB => h273::TRANSFER_SRGB,
        b::v4l2_xfer_func_V4L2_XFER_FUNC_SMPTE240M => 7,
        b::v4l2_xfer_func_V4L2_XFER_FUNC_NONE => 8,
        b::v4l2_xfer_func_V4L2_XFER_FUNC_SMPTE2084 => h273::TRANSFER_PQ,
        // opRGB (gamma 2.2) and DCI-P3 (gamma 2.6) have no exact H.273 code point.
        _ => h273::UNSPECIFIED,
    };
    ColorInfo {
        matrix,
        range: if full { 2 } else { 1 },
        primaries,
        transfer,
        // V4L2 has no chroma siting field; capture hardware samples MPEG-2 style (left).
        chroma_location: if rgb { 0 } else { 1 },
    }
}

impl Capture {
    /// Open `path`, set the requested format, set up buffers for `req.io` and start streaming.
    pub fn open(path: &Path, req: &Request) -> Result<Self> {
        let (mut dev, cap) = open_device(path)?;
        let caps = cap.device_caps();
        let q = if caps.contains(Capabilities::VIDEO_CAPTURE) {
            Q
        } else if caps.contains(Capabilities::VIDEO_CAPTURE_MPLANE) {
            QM
        } else {
            bail!(
                "{} ({}) is not a video capture device (capabilities: {})",
                path.display(),
                cap.card,
                caps
            );
        };
        if !caps.contains(Capabilities::STREAMING) {
            bail!(
                "{} ({}) cannot stream (no V4L2_CAP_STREAMING)",
                path.display(),
                cap.card
            );
        }
        let offered: Vec<u32> = (0..)
            .map_while(|i| ioctl::enum_fmt::<ioctl::FmtDesc>(&dev, q, i).ok())
            .map(|d| u32::from(d.pixelformat))
            .collect();
        let names = || {
            offered
                .iter()
                .map(|&c| fourcc_name(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mjpeg = req.mjpeg
            || (req.pixel.is_none()
                && req.fourcc.is_none()
                && offered.contains(&MJPG)
                && !FORMATS
                    .iter()
                    .any(|(_, cc, _)| offered.contains(&u32::from_le_bytes(**cc))));
        if mjpeg && !offered.contains(&MJPG) {
            bail!(
                "{} cannot produce MJPEG; it offers: {}",
                path.display(),
                names()
            );
        }
        let (pixel, cc, n_mem) = match (req.fourcc, req.pixel) {
            _ if mjpeg => (PixelFormat::Nv12, MJPG, 1),
            (Some(cc), _) => {
                let (p, n) = format_entry(cc).with_context(|| {
                    format!("the V4L2 source cannot capture {}", fourcc_name(cc))
                })?;
                if !offered.contains(&cc) {
                    bail!(
                        "{} cannot produce {}; it offers: {}",
                        path.display(),
                        fourcc_name(cc),
                        names()
                    );
                }
                (p, cc, n)
            }
            (None, Some(p)) => {
                // The single-buffer layout first, then one buffer per plane.
                let mut ours = FORMATS.iter().filter(|(f, _, _)| *f == p).peekable();
                if ours.peek().is_none() {
                    bail!("the V4L2 source captures {}, not {p}", capturable_names());
                }
                let (_, c, n) = ours
                    .find(|(_, c, _)| offered.contains(&u32::from_le_bytes(**c)))
                    .with_context(|| {
                        format!(
                            "{} cannot produce {p}; it offers: {}",
                            path.display(),
                            names()
                        )
                    })?;
                (p, u32::from_le_bytes(**c), *n)
            }
            (None, None) => FORMATS
                .iter()
                .find(|(_, c, _)| offered.contains(&u32::from_le_bytes(**c)))
                .map(|(p, c, n)| (*p, u32::from_le_bytes(**c), *n))
                .with_context(|| {
                    format!(
                        "{} offers none of the formats this source captures ({}); it offers: {}",
                        path.display(),
                        capturable_names(),
                        names()
                    )
                })?,
        };
        let what = if mjpeg {
            "MJPEG".to_string()
        } else if n_mem > 1 {
            format!("{pixel} as {} (one buffer per plane)", fourcc_name(cc))
        } else {
            pixel.to_string()
        };
        let want = match req.size {
            Some(s) => s,
            None => {
                let cur: Format = ioctl::g_fmt(&dev, q).context("VIDIOC_G_FMT")?;
                (cur.width, cur.height)
            }
        };
        let fmt = set_format(&mut dev, q, path, cc, want, &[])?;
        if (fmt.width, fmt.height) != want || u32::from(fmt.pixelformat) != cc {
            bail!(
                "{} cannot produce {}x{} {what}; the nearest it offers is {}x{} {} (sizes for {what}: {})",
                path.display(),
                want.0,
                want.1,
                fmt.width,
                fmt.height,
                fourcc_name(fmt.pixelformat.into()),
                list::sizes_text(&dev, cc)
            );
        }
        let format = FrameFormat::linear(pixel, fmt.width, fmt.height);
        let mut layout = if mjpeg {
            // Compressed: only the buffer size means anything.
            let size = u64::from(fmt.plane_fmt.first().map_or(0, |p| p.sizeimage));
            DriverLayout {
                layout: FrameLayout {
                    format,
                    planes: Vec::new(),
                    size,
                },
                plane_mem: Vec::new(),
                mem_sizes: vec![size],
            }
        } else {
            driver_layout(format, &fmt, n_mem)?
        };
        if let Some(fps) = req.fps {
            let _: v4l2r::bindings::v4l2_streamparm =
                ioctl::s_parm(&dev, sys::capture_parm(q, fps)).map_err(|e| {
                    anyhow::anyhow!(
                        "{} cannot set {}/{} fps: {}",
                        path.display(),
                        fps.0,
                        fps.1,
                        errno_text(e.into_errno())
                    )
                })?;
        }
        let raw: v4l2r::bindings::v4l2_format = ioctl::g_fmt(&dev, q).context("VIDIOC_G_FMT")?;
        let (colorspace, enc, quant, xfer) = sys::pix_colorimetry(&raw).unwrap_or_default();
        let mut color = colorimetry(colorspace, enc, quant, xfer, !pixel.is_yuv());
        if mjpeg {
            // JFIF: BT.601 full range, whatever the driver says of the decoded pixels.
            color.matrix = h273::MATRIX_SMPTE170M;
            color.range = 2;
        }
        tracing::info!(
            "v4l2 colorimetry: colorspace {colorspace}, ycbcr_enc {enc}, quantization {quant}, \
             xfer_func {xfer} -> matrix {}, range {}, primaries {}, transfer {}",
            color.matrix_name(),
            color.range_name(),
            color.primaries_name(),
            color.transfer_name()
        );
        let parm: v4l2r::bindings::v4l2_streamparm = ioctl::g_parm(&dev, q).unwrap_or_default();
        let fps = sys::capture_fps(q, &parm).or(req.fps).unwrap_or((30, 1));
        if let Some(want) = req.fps {
            if u64::from(want.0) * u64::from(fps.1) != u64::from(fps.0) * u64::from(want.1) {
                tracing::warn!(
                    "{} runs at {}/{} fps, not the {}/{} asked for",
                    path.display(),
                    fps.0,
                    fps.1,
                    want.0,
                    want.1
                );
            }
        }

        let order: &[Io] = match req.io {
            // JPEGs must be decoded anyway: the decoder writes into the pool.
            Io::Auto | Io::Mmap if mjpeg => &[Io::Mmap],
            _ if mjpeg => bail!(
                "MJPEG frames are decoded into the pool: use --v4l2-io mmap (or auto), not {}",
                req.io.name()
            ),
            Io::Auto => &[Io::Expbuf, Io::Dmabuf, Io::Mmap],
            Io::Expbuf => &[Io::Expbuf],
            Io::Dmabuf => &[Io::Dmabuf],
            Io::Mmap => &[Io::Mmap],
        };
        let mut tried = Vec::new();
        let mut chosen = None;
        for &io in order {
            let r = match io {
                Io::Expbuf => setup_expbuf(&dev, q, &layout, req.buffers),
                Io::Dmabuf => setup_dmabuf(&mut dev, q, path, cc, &mut layout, req),
                _ => setup_mmap(&dev, q, &layout, req),
            };
            match r {
                Ok(x) => {
                    chosen = Some((io, x));
                    break;
                }
                Err(e) => {
                    // Free whatever the attempt requested before the next one.
                    let _ = ioctl::reqbufs::<()>(
                        &dev,
                        q,
                        MemoryType::Mmap,
                        0,
                        MemoryConsistency::empty(),
                    );
                    let _ = ioctl::reqbufs::<()>(
                        &dev,
                        q,
                        MemoryType::DmaBuf,
                        0,
                        MemoryConsistency::empty(),
                    );
                    if e.downcast_ref::<Busy>().is_some() {
                        bail!("V4L2 device {} is busy: {e:#}", path.display());
                    }
                    tried.push(format!("{}: {e:#}", io.name()));
                }
            }
        }
        let Some((io, (pool, mode))) = chosen else {
            bail!(
                "cannot capture from {} with --v4l2-io {}: {}",
                path.display(),
                req.io.name(),
                tried.join("; ")
            );
        };
        if !tried.is_empty() {
            tracing::info!("v4l2: {} (auto: {})", io.name(), tried.join("; "));
        }
        let mut capture = Capture {
            path: path.to_path_buf(),
            dev,
            q,
            io,
            format,
            fourcc: cc,
            driver_layout: layout,
            fps,
            color,
            pool,
            mode,
            stall: req.stall,
            mjpeg: if mjpeg {
                Some(mjpeg::MjpegDecoder::new(format.width, format.height)?)
            } else {
                None
            },
            first_ts_ns: None,
            end: None,
            streaming: false,
            dropped_errors: 0,
        };
        capture.queue_all(true)?;
        ioctl::streamon(&capture.dev, q).map_err(|e| {
            let e = e.into_errno();
            if e == EBUSY {
                anyhow::anyhow!("V4L2 device {} is busy", path.display())
            } else {
                anyhow::anyhow!("VIDIOC_STREAMON on {}: {}", path.display(), errno_text(e))
            }
        })?;
        capture.streaming = true;
        Ok(capture)
    }

    pub fn describe(&self) -> String {
        let (n, d) = self.fps;
        let strides: Vec<u32> = self
            .driver_layout
            .layout
            .planes
            .iter()
            .map(|p| p.stride)
            .collect();
        format!(
            "V4L2 {} ({}{} I/O: {}), {} ({}) at {n}/{d} fps, driver strides {strides:?}, sizeimage {:?}",
            self.path.display(),
            if self.q == QM { "multi-planar, " } else { "" },
            self.io.name(),
            match self.io {
                Io::Expbuf => "the driver's buffers exported as dma-bufs, zero-copy",
                Io::Dmabuf => "captured into the producer's pool, zero-copy",
                _ if self.mjpeg.is_some() => "MJPEG decoded by FFmpeg into the pool",
                _ => "one copy into the pool",
            },
            self.format,
            fourcc_name(self.fourcc),
            self.driver_layout.mem_sizes
        )
    }

    /// Queue every buffer the driver does not hold and that no consumer holds. In mmap mode the
    /// driver's buffers are queued once at the start, then each right after its copy.
    fn queue_all(&mut self, start: bool) -> Result<()> {
        match &mut self.mode {
            Mode::ZeroCopy { queued } => {
                while let Some(lease) = self.pool.try_acquire() {
                    let i = lease.id() as usize;
                    qbuf(&self.dev, self.q, self.io, &lease)
                        .with_context(|| format!("VIDIOC_QBUF {i} on {}", self.path.display()))?;
                    queued[i] = Some(lease);
                }
            }
            Mode::Mmap { .. } if !start => {}
            Mode::Mmap { maps } => {
                for (i, planes) in maps.iter().enumerate() {
                    qbuf_mmap(&self.dev, self.q, i as u32, planes.len())
                        .with_context(|| format!("VIDIOC_QBUF {i} on {}", self.path.display()))?;
                }
            }
        }
        Ok(())
    }

    fn queued_count(&self) -> usize {
        match &self.mode {
            Mode::ZeroCopy { queued } => queued.iter().filter(|q| q.is_some()).count(),
            Mode::Mmap { maps } => maps.len(),
        }
    }

    fn unplugged(&mut self) -> Next {
        let msg = format!("V4L2 device {} was disconnected", self.path.display());
        tracing::warn!("{msg}");
        self.end = Some(msg);
        Next::End
    }

    /// Wait for the next captured frame, serving the consumers meanwhile.
    fn capture(&mut self, host: &mut dyn Host) -> Result<Next> {
        if self.end.is_some() {
            return Ok(Next::End);
        }
        let since = Instant::now();
        loop {
            if since.elapsed() > self.stall {
                if self.queued_count() == 0 {
                    bail!(
                        "the consumer holds all {} buffers and released none for {:?}",
                        self.pool.len(),
                        self.stall
                    );
                }
                bail!("no frame from {} for {:?}", self.path.display(), self.stall);
            }
            if let Err(e) = self.queue_all(false) {
                if is_enodev(&e) {
                    return Ok(self.unplugged());
                }
                return Err(e);
            }
            if self.queued_count() == 0 {
                if host.wait(Duration::from_millis(50))?.is_none() {
                    return Ok(host.why_not());
                }
                continue;
            }
            let Some(ready) = host.wait_readable(self.dev.as_fd(), Duration::from_millis(100))?
            else {
                return Ok(host.why_not());
            };
            if ready {
                match ioctl::dqbuf::<V4l2Buffer>(&self.dev, self.q) {
                    Ok(buf) => match self.take(buf, host) {
                        Ok(Some(f)) => return Ok(f),
                        Ok(None) => {}
                        // Requeueing (mmap) found the device gone.
                        Err(e) if is_enodev(&e) => return Ok(self.unplugged()),
                        Err(e) => return Err(e),
                    },
                    Err(e) => match e.into_errno() {
                        e if e == nix::errno::Errno::EAGAIN as i32 => {}
                        e if e == ENODEV => return Ok(self.unplugged()),
                        e if e == nix::errno::Errno::EPIPE as i32 => return Ok(self.unplugged()),
                        e => bail!("VIDIOC_DQBUF on {}: {}", self.path.display(), errno_text(e)),
                    },
                }
            }
        }
    }

    /// A dequeued buffer → a filled lease (`None`: the driver flagged it corrupt; requeued).
    fn take(&mut self, buf: V4l2Buffer, host: &mut dyn Host) -> Result<Option<Next>> {
        let want_sum = host.want_checksum();
        let i = buf.index() as usize;
        let used: Vec<u64> = buf.planes_iter().map(|p| u64::from(*p.bytesused)).collect();
        let ts = buf.timestamp();
        let ts_ns = ts.tv_sec * 1_000_000_000 + ts.tv_usec * 1000;
        let first = *self.first_ts_ns.get_or_insert(ts_ns);
        let pts_ns = (ts_ns - first).max(0);
        // Every memory plane must hold what the frame needs of it.
        let dl = &self.driver_layout;
        let bad = buf.has_error()
            || used.len() < dl.mem_sizes.len()
            || used
                .iter()
                .enumerate()
                .any(|(j, &u)| u == 0 || u < dl.needed(j));
        let n_mem = dl.mem_sizes.len();
        let q = self.q;
        let path = self.path.display().to_string();
        match &mut self.mode {
            Mode::ZeroCopy { queued } => {
                let lease = queued
                    .get_mut(i)
                    .and_then(Option::take)
                    .with_context(|| format!("{path} returned buffer {i}, which was not queued"))?;
                if bad {
                    self.dropped_errors += 1;
                    tracing::debug!(
                        "{path}: buffer {i} flagged as corrupt ({used:?} bytes); requeued"
                    );
                    drop(lease); // back to the pool; queue_all requeues it
                    return Ok(None);
                }
                let (checksum, publish_ns) = host
                    .filled(&lease, None)
                    .context("mapping a captured buffer")?;
                Ok(Some(Next::Frame(Filled {
                    lease: Arc::new(lease),
                    pts_ns,
                    checksum,
                    copied: false,
                    corrupted: false,
                    publish_ns,
                })))
            }
            Mode::Mmap { maps } => {
                if bad {
                    self.dropped_errors += 1;
                    qbuf_mmap(&self.dev, q, i as u32, n_mem)?;
                    return Ok(None);
                }
                // A pool buffer to copy into; the consumer may hold them all for a while.
                let since = Instant::now();
                let lease = loop {
                    if let Some(l) = self.pool.try_acquire() {
                        break l;
                    }
                    if since.elapsed() > self.stall {
                        bail!(
                            "the consumer holds all {} buffers and released none for {:?}",
                            self.pool.len(),
                            self.stall
                        );
                    }
                    if host.wait(Duration::from_millis(50))?.is_none() {
                        qbuf_mmap(&self.dev, q, i as u32, n_mem)?;
                        return Ok(Some(host.why_not()));
                    }
                };
                let src = maps
                    .get(i)
                    .with_context(|| format!("{path} returned unknown buffer {i}"))?;
                let from = &self.driver_layout;
                let to = lease.buffer().layout.clone();
                let jpeg = src[0].data.get(..used[0] as usize).unwrap_or(&[]);
                let decoder = self.mjpeg.as_mut();
                let checksum = lease
                    .with_bytes_mut(|d| -> Result<Option<u32>> {
                        match decoder {
                            Some(dec) => dec.decode_into(jpeg, d, &to)?,
                            None => copy_frame(src, from, d, &to),
                        }
                        Ok(if want_sum {
                            frame_checksum(d, &to.planes)
                        } else {
                            None
                        })
                    })
                    .context("writing the frame")?;
                let checksum = match checksum {
                    Ok(c) => c,
                    Err(e) => {
                        // A webcam's corrupt JPEG costs one frame, not the stream.
                        self.dropped_errors += 1;
                        tracing::warn!("{path}: buffer {i}: {e:#}; frame dropped");
                        qbuf_mmap(&self.dev, q, i as u32, n_mem)
                            .with_context(|| format!("VIDIOC_QBUF {i} on {path}"))?;
                        return Ok(None);
                    }
                };
                qbuf_mmap(&self.dev, q, i as u32, n_mem)
                    .with_context(|| format!("VIDIOC_QBUF {i} on {path}"))?;
                let (checksum, publish_ns) = host.filled(&lease, checksum)?;
                Ok(Some(Next::Frame(Filled {
                    lease: Arc::new(lease),
                    pts_ns,
                    checksum,
                    copied: true,
                    corrupted: false,
                    publish_ns,
                })))
            }
        }
    }
}

impl FrameSource for Capture {
    fn format(&self) -> FrameFormat {
        self.format
    }

    fn fps(&self) -> (u32, u32) {
        self.fps
    }

    /// The colorimetry the driver reports for the capture format.
    fn color(&self) -> ColorInfo {
        self.color
    }

    fn describe(&self) -> String {
        Capture::describe(self)
    }

    /// The capture brings its pool (see [`FrameSource::own_pool`]).
    fn make_pool(&mut self, _: &dyn dmabuf_core::alloc::Allocator, _: usize) -> Result<Pool> {
        Ok(self.pool.clone())
    }

    fn own_pool(&self) -> Option<Pool> {
        Some(self.pool.clone())
    }

    /// Why the stream ended, if the device ended it (unplugged).
    fn end_message(&self) -> Option<&str> {
        self.end.as_deref()
    }

    fn next_frame(&mut self, _seq: u64, host: &mut dyn Host) -> Result<Next> {
        self.capture(host)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.streaming {
            // STREAMOFF returns every buffer to us; errors (unplugged) do not matter here.
            let _ = ioctl::streamoff(&self.dev, self.q);
        }
        if self.dropped_errors > 0 {
            tracing::info!(
                "{}: {} corrupt frames (flagged by the driver, short, or undecodable) were dropped",
                self.path.display(),
                self.dropped_errors
            );
        }
    }
}

/// Copy one frame from the driver's memory planes (`src`, laid out as `from`) into `dst`
/// (one buffer, laid out as `to`), row by row.
fn copy_frame(src: &[ioctl::PlaneMapping], from: &DriverLayout, dst: &mut [u8], to: &FrameLayout) {
    for ((a, &m), b) in from
        .layout
        .planes
        .iter()
        .zip(&from.plane_mem)
        .zip(&to.planes)
    {
        let Some(src) = src.get(m) else { continue };
        let src = &src.data[..];
        let n = a.row_bytes.min(b.row_bytes) as usize;
        for y in 0..a.rows.min(b.rows) as u64 {
            let s = (a.offset + y * u64::from(a.stride)) as usize;
            let d = (b.offset + y * u64::from(b.stride)) as usize;
            if let (Some(s), Some(d)) = (src.get(s..s + n), dst.get_mut(d..d + n)) {
                d.copy_from_slice(s);
            }
        }
    }
}

fn is_enodev(e: &anyhow::Error) -> bool {
    e.root_cause()
        .downcast_ref::<IoctlErrno>()
        .is_some_and(|c| c.0 == ENODEV)
}

/// The errno a V4L2 ioctl failed with (kept typed so `ENODEV` can be told apart).
#[derive(Debug)]
struct IoctlErrno(i32);

impl std::fmt::Display for IoctlErrno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&errno_text(self.0))
    }
}

impl std::error::Error for IoctlErrno {}

/// Marks errors that mean another process owns the device.
#[derive(Debug)]
struct Busy(String);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

/// `VIDIOC_S_FMT`: fourcc `cc` at `size`, asking for `bpls` (bytesperline per memory plane;
/// empty or 0: the driver's choice).
fn set_format(
    dev: &mut File,
    q: QueueType,
    path: &Path,
    cc: u32,
    size: (u32, u32),
    bpls: &[u32],
) -> Result<Format> {
    let n_mem = format_entry(cc).map_or(1, |(_, n)| n);
    let want = Format {
        width: size.0,
        height: size.1,
        pixelformat: cc.into(),
        plane_fmt: (0..n_mem)
            .map(|j| v4l2r::PlaneLayout {
                sizeimage: 0,
                bytesperline: bpls.get(j).copied().unwrap_or(0),
            })
            .collect(),
    };
    ioctl::s_fmt::<_, Format>(dev, (q, &want)).map_err(|e| {
        let e = e.into_errno();
        if e == EBUSY {
            anyhow::Error::new(Busy(format!(
                "V4L2 device {} is busy (another program is capturing from it)",
                path.display()
            )))
        } else {
            anyhow::anyhow!(
                "{} refused {}x{} {}: {}",
                path.display(),
                size.0,
                size.1,
                fourcc_name(cc),
                errno_text(e)
            )
        }
    })
}

fn reqbufs(dev: &File, q: QueueType, memory: MemoryType, count: usize) -> Result<usize> {
    let n: usize = ioctl::reqbufs(dev, q, memory, count as u32, MemoryConsistency::empty())
        .map_err(|e| {
            let e = e.into_errno();
            if e == EBUSY {
                anyhow::Error::new(Busy(
                    "another program holds its buffers (VIDIOC_REQBUFS: EBUSY)".into(),
                ))
            } else {
                anyhow::anyhow!("VIDIOC_REQBUFS {memory:?}: {}", errno_text(e))
            }
        })?;
    if n == 0 {
        bail!("the driver granted no {memory:?} buffers");
    }
    Ok(n)
}

fn setup_expbuf(dev: &File, q: QueueType, dl: &DriverLayout, count: usize) -> Result<(Pool, Mode)> {
    let n = reqbufs(dev, q, MemoryType::Mmap, count)?;
    let mut bufs = Vec::with_capacity(n);
    for i in 0..n {
        let mut fds = Vec::new();
        let mut fd_sizes = Vec::new();
        // One dma-buf per memory plane (NV12M: two).
        for (j, &need) in dl.mem_sizes.iter().enumerate() {
            let fd: OwnedFd = ioctl::expbuf(dev, q, i, j, ExpbufFlags::RDWR | ExpbufFlags::CLOEXEC)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "VIDIOC_EXPBUF {i} plane {j}: {}",
                        errno_text(e.into_errno())
                    )
                })?;
            let size = nix::unistd::lseek(&fd, 0, nix::unistd::Whence::SeekEnd)
                .context("lseek on an exported buffer")? as u64;
            if size < dl.needed(j) {
                bail!(
                    "exported buffer {i} plane {j} holds {size} bytes, the frame needs {} (sizeimage {need})",
                    dl.needed(j)
                );
            }
            fds.push(Arc::new(fd));
            fd_sizes.push(size);
        }
        bufs.push(FrameBuffer {
            layout: dl.layout.clone(),
            fds,
            fd_sizes,
            plane_fds: dl.plane_mem.clone(),
            memory: dmabuf_core::MemoryKind::DmaBuf,
            allocator: AllocatorKind::V4l2,
        });
    }
    let pool = Pool::from_buffers(bufs, AllocatorKind::V4l2, dl.layout.format)
        .context("mapping the exported buffers")?;
    Ok((
        pool,
        Mode::ZeroCopy {
            queued: (0..n).map(|_| None).collect(),
        },
    ))
}

fn setup_dmabuf(
    dev: &mut File,
    q: QueueType,
    path: &Path,
    cc: u32,
    dl: &mut DriverLayout,
    req: &Request,
) -> Result<(Pool, Mode)> {
    let format = dl.layout.format;
    let (allocator, why) = alloc::select(req.alloc, format)?;
    if allocator.kind().memory() != Some(dmabuf_core::MemoryKind::DmaBuf) {
        bail!("no dma-buf allocator here (picked {why})");
    }
    let multi = dl.mem_sizes.len() > 1;
    let pool = if multi {
        // One dma-buf per plane: each plane allocated as a one-plane (R8) picture of its row
        // bytes × rows, so that the allocator picks its stride.
        let mut bufs = Vec::with_capacity(req.buffers);
        for _ in 0..req.buffers {
            let mut fds = Vec::new();
            let mut fd_sizes = Vec::new();
            let mut planes = Vec::new();
            for (i, p) in dl.layout.planes.iter().enumerate() {
                let one = allocator
                    .allocate(FrameFormat::linear(PixelFormat::R8, p.row_bytes, p.rows))
                    .with_context(|| format!("allocating plane {i}"))?;
                planes.push(PlaneLayout {
                    offset: 0,
                    stride: one.layout.planes[0].stride,
                    ..*p
                });
                fds.extend(one.fds);
                fd_sizes.extend(one.fd_sizes);
            }
            bufs.push(FrameBuffer {
                layout: FrameLayout {
                    format,
                    planes,
                    size: fd_sizes.iter().sum(),
                },
                fds,
                fd_sizes,
                plane_fds: dl.plane_mem.clone(),
                memory: dmabuf_core::MemoryKind::DmaBuf,
                allocator: allocator.kind(),
            });
        }
        Pool::from_buffers(bufs, allocator.kind(), format).context("mapping the capture pool")?
    } else {
        Pool::new(allocator.as_ref(), format, req.buffers).context("allocating the capture pool")?
    };
    let first = pool.buffer(0).expect("not empty").clone();
    let ours = &first.layout;
    if ours.planes != dl.layout.planes {
        // Ask the driver for the pool's strides; most webcams cannot, vivid can.
        let bpls: Vec<u32> = if multi {
            ours.planes.iter().map(|p| p.stride).collect()
        } else {
            vec![ours.planes[0].stride]
        };
        let fmt = set_format(dev, q, path, cc, (format.width, format.height), &bpls)?;
        let theirs = driver_layout(format, &fmt, dl.mem_sizes.len())?;
        let fits = theirs
            .layout
            .planes
            .iter()
            .zip(&ours.planes)
            .all(|(t, o)| t.stride == o.stride && t.offset == o.offset)
            && (0..theirs.mem_sizes.len()).all(|j| theirs.needed(j) <= first.fd_sizes[j]);
        if !fits {
            bail!(
                "the driver's layout (strides {:?}) does not match the {} pool's (strides {:?})",
                theirs
                    .layout
                    .planes
                    .iter()
                    .map(|p| p.stride)
                    .collect::<Vec<_>>(),
                allocator.kind(),
                ours.planes.iter().map(|p| p.stride).collect::<Vec<_>>()
            );
        }
        *dl = theirs;
    }
    let n = reqbufs(dev, q, MemoryType::DmaBuf, pool.len())?;
    if n < pool.len() {
        bail!("the driver took {n} of {} DMABUF buffers", pool.len());
    }
    tracing::info!("v4l2 dmabuf: capturing into {why}");
    Ok((
        pool,
        Mode::ZeroCopy {
            queued: (0..n).map(|_| None).collect(),
        },
    ))
}

fn setup_mmap(dev: &File, q: QueueType, dl: &DriverLayout, req: &Request) -> Result<(Pool, Mode)> {
    let n = reqbufs(dev, q, MemoryType::Mmap, req.buffers.min(8))?;
    let mut maps = Vec::with_capacity(n);
    for i in 0..n {
        let qb: QueryBuffer =
            ioctl::querybuf(dev, q, i).map_err(|e| anyhow::anyhow!("VIDIOC_QUERYBUF {i}: {e}"))?;
        if qb.planes.len() < dl.mem_sizes.len() {
            bail!(
                "QUERYBUF: buffer {i} has {} planes, the format {}",
                qb.planes.len(),
                dl.mem_sizes.len()
            );
        }
        let mut planes = Vec::new();
        for (j, plane) in qb.planes.iter().take(dl.mem_sizes.len()).enumerate() {
            if u64::from(plane.length) < dl.needed(j).max(dl.mem_sizes[j].min(1)) {
                bail!(
                    "driver buffer {i} plane {j} is {} bytes, the frame needs {}",
                    plane.length,
                    dl.needed(j)
                );
            }
            let map = ioctl::mmap(dev, plane.mem_offset, plane.length)
                .map_err(|e| anyhow::anyhow!("mmap of buffer {i} plane {j}: {e}"))?;
            planes.push(map);
        }
        maps.push(planes);
    }
    let format = dl.layout.format;
    let (allocator, why) = alloc::select(req.alloc, format)?;
    let pool = Pool::new(allocator.as_ref(), format, req.buffers).context("allocating the pool")?;
    tracing::info!("v4l2 mmap: copying into {why}");
    Ok((pool, Mode::Mmap { maps }))
}

fn qbuf(dev: &File, q: QueueType, io: Io, lease: &Lease) -> Result<()> {
    let i = lease.id();
    let b = lease.buffer();
    if io != Io::Dmabuf {
        return qbuf_mmap(dev, q, i, b.fds.len());
    }
    // One dma-buf per memory plane.
    let handles: Vec<DmaBufHandle<PoolFd>> = b
        .fds
        .iter()
        .zip(&b.fd_sizes)
        .map(|(fd, &len)| {
            DmaBufHandle(PoolFd {
                fd: fd.clone(),
                len,
            })
        })
        .collect();
    let mut qb = QBuffer::<DmaBufHandle<PoolFd>>::new(q, i);
    qb.planes = handles
        .iter()
        .map(|h| QBufPlane::new_from_handle(h, 0))
        .collect();
    ioctl::qbuf::<_, ()>(dev, qb).map_err(|e| IoctlErrno(e.into_errno()).into())
}

fn qbuf_mmap(dev: &File, q: QueueType, i: u32, n_mem: usize) -> Result<()> {
    let mut qb = QBuffer::<MmapHandle>::new(q, i);
    qb.planes = (0..n_mem.max(1)).map(|_| QBufPlane::new(0)).collect();
    ioctl::qbuf::<_, ()>(dev, qb).map_err(|e| IoctlErrno(e.into_errno()).into())
}
