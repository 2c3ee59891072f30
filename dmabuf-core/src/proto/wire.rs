//! The wire format: fixed little-endian layouts, no descriptors (those travel beside a message as
//! `SCM_RIGHTS`), decoded strictly. `docs/PROTOCOL.md` documents every byte; the offsets there
//! and here must agree (the tests pin the sizes).
//!
//! Decoding checks the structure of one message (magic, type, length, counts, known enum values,
//! zero reserved fields); whether a message makes sense in the session (buffer ids in range, the
//! right number of fds) is checked by the session code.

use crate::buffer::{AllocatorKind, MemoryKind};
use crate::format::{PixelFormat, MAX_DIMENSION};

/// "DMBF" in memory.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DMBF");
/// The protocol version this build speaks (2: the Welcome carries full colorimetry and
/// display geometry).
pub const VERSION: u32 = 2;
/// Bytes of the header every message starts with.
pub const HEADER_LEN: usize = 8;
/// Most capabilities in one `Hello`.
pub const MAX_CAPS: usize = 64;
/// Most planes of a buffer.
pub const MAX_PLANES: usize = 4;
/// Descriptors allowed with one `AddBuffer`.
pub const MAX_FDS: usize = 4;
/// Bytes of a `Goodbye`'s text field.
pub const GOODBYE_TEXT_LEN: usize = 112;

/// Bytes of a `Hello` before its capabilities.
pub const HELLO_FIXED_LEN: usize = 24;
/// Bytes of one capability.
pub const CAP_LEN: usize = 16;
/// Bytes of a `Welcome`.
pub const WELCOME_LEN: usize = 112;
/// Bytes at the end of the Welcome kept for HDR static metadata (reserved: zero in version 2).
pub const WELCOME_HDR_LEN: usize = 32;
const HDR_FIELDS: [&str; WELCOME_HDR_LEN / 4] = [
    "hdr (80)",
    "hdr (84)",
    "hdr (88)",
    "hdr (92)",
    "hdr (96)",
    "hdr (100)",
    "hdr (104)",
    "hdr (108)",
];
/// Bytes of one plane entry of an `AddBuffer`.
pub const PLANE_LEN: usize = 24;
/// Bytes of an `AddBuffer`.
pub const ADD_BUFFER_LEN: usize = 24 + MAX_PLANES * PLANE_LEN;
/// Bytes of one chunk of a `Frame`.
pub const CHUNK_LEN: usize = 8;
/// Bytes of a `Frame`.
pub const FRAME_LEN: usize = 48 + MAX_PLANES * CHUNK_LEN;
/// Bytes of a `Release`.
pub const RELEASE_LEN: usize = 24;
/// Bytes of a `RemoveBuffer`.
pub const REMOVE_BUFFER_LEN: usize = 16;
/// Bytes of a `Goodbye`.
pub const GOODBYE_LEN: usize = 16 + GOODBYE_TEXT_LEN;
/// The longest message (a `Hello` with [`MAX_CAPS`] capabilities).
pub const MAX_MESSAGE_LEN: usize = HELLO_FIXED_LEN + MAX_CAPS * CAP_LEN;

/// `Frame.flags`: `checksum` is valid.
pub const FRAME_FLAG_CHECKSUM: u32 = 1 << 0;
/// `Frame.flags`: the producer's CPU copied these pixels into the buffer (a decoded picture
/// that could not be decoded in place); clear when the source wrote them in place.
pub const FRAME_FLAG_COPIED: u32 = 1 << 1;
/// `Hello.flags`: the consumer can take frames and give releases through a shared-memory ring
/// (`docs/PROTOCOL.md`, "Ring"); the producer answers with a `Ring` message or not at all.
pub const HELLO_FLAG_RING: u32 = 1 << 0;
/// `Ring` message length.
pub const RING_LEN_MSG: usize = 16;
/// `Wake` message length (the header alone).
pub const WAKE_LEN: usize = HEADER_LEN;
/// Every `Frame.flags` bit this version defines.
pub const FRAME_FLAGS_KNOWN: u32 = FRAME_FLAG_CHECKSUM | FRAME_FLAG_COPIED;
/// `Chunk.flags`: the decoder reported this plane's data corrupt.
pub const CHUNK_FLAG_CORRUPTED: u32 = 1 << 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
/// The message types (header `type`).
pub enum MsgType {
    /// Consumer → producer: version and capabilities.
    Hello = 1,
    /// Producer → consumer: the stream's format and buffer count.
    Welcome = 2,
    /// Producer → consumer: one buffer's fds and layout.
    AddBuffer = 3,
    /// Producer → consumer: a frame is ready in a buffer.
    Frame = 4,
    /// Consumer → producer: a buffer is free again.
    Release = 5,
    /// Producer → consumer: a buffer is withdrawn.
    RemoveBuffer = 6,
    /// Either side: the connection ends, saying why.
    Goodbye = 7,
    /// Producer → consumer, with one fd: the shared-memory frame/release ring.
    Ring = 8,
    /// Either side, after `Ring`: the peer said it sleeps; something is in the ring.
    Wake = 9,
}

impl MsgType {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => MsgType::Hello,
            2 => MsgType::Welcome,
            3 => MsgType::AddBuffer,
            4 => MsgType::Frame,
            5 => MsgType::Release,
            6 => MsgType::RemoveBuffer,
            7 => MsgType::Goodbye,
            8 => MsgType::Ring,
            9 => MsgType::Wake,
            _ => return None,
        })
    }
}

/// One format the consumer can import: a fourcc, a modifier, and a mask of [`MemoryKind::bit`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// DRM fourcc.
    pub fourcc: u32,
    /// Memory kinds, as bits `1 << MemoryKind::wire()`.
    pub memory_mask: u32,
    /// DRM format modifier.
    pub modifier: u64,
}

/// Consumer → producer, first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the consumer speaks.
    pub version: u32,
    /// [`HELLO_FLAG_RING`], or 0.
    pub flags: u32,
    /// What it can import.
    pub caps: Vec<Cap>,
}

/// Colorimetry: how the pixel values are to be read. The matrix, primaries and transfer are
/// ISO/IEC 23091-2 (ITU-T H.273) code points, the numbering FFmpeg (`AVColorSpace`,
/// `AVColorPrimaries`, `AVColorTransferCharacteristic`) and the codecs' VUI use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColorInfo {
    /// H.273 MatrixCoefficients: 0 identity (RGB), 1 BT.709, 2 unspecified, 4 FCC,
    /// 5 BT.470BG and 6 SMPTE 170M (both BT.601), 7 SMPTE 240M, 8 YCgCo, 9 BT.2020
    /// non-constant luminance, 10 BT.2020 constant luminance, 11–14 (0–14 accepted).
    pub matrix: u8,
    /// 0 unspecified, 1 limited (16–235), 2 full (FFmpeg's `AVColorRange`).
    pub range: u8,
    /// H.273 ColourPrimaries: 1 BT.709, 2 unspecified, 5 BT.470BG, 6 SMPTE 170M, 9 BT.2020,
    /// 12 Display P3 … (0–22 accepted).
    pub primaries: u8,
    /// H.273 TransferCharacteristics: 1 BT.709, 2 unspecified, 6 BT.601, 8 linear, 13 sRGB,
    /// 14/15 BT.2020, 16 PQ (SMPTE ST 2084), 18 HLG (ARIB STD-B67) (0–18 accepted).
    pub transfer: u8,
    /// Chroma sample position (FFmpeg's `AVChromaLocation`, H.273 chroma_sample_loc_type + 1):
    /// 0 unspecified, 1 left (MPEG-2/4, H.264 default), 2 center (JPEG), 3 top-left, 4 top,
    /// 5 bottom-left, 6 bottom.
    pub chroma_location: u8,
}

/// H.273 code points used by name in the code.
pub mod h273 {
    /// Identity (RGB).
    pub const MATRIX_RGB: u8 = 0;
    /// BT.709.
    pub const MATRIX_BT709: u8 = 1;
    /// Unspecified (every field).
    pub const UNSPECIFIED: u8 = 2;
    /// FCC.
    pub const MATRIX_FCC: u8 = 4;
    /// BT.470 BG (BT.601 625-line).
    pub const MATRIX_BT470BG: u8 = 5;
    /// SMPTE 170M (BT.601 525-line).
    pub const MATRIX_SMPTE170M: u8 = 6;
    /// SMPTE 240M.
    pub const MATRIX_SMPTE240M: u8 = 7;
    /// BT.2020 non-constant luminance.
    pub const MATRIX_BT2020_NCL: u8 = 9;
    /// BT.2020 constant luminance.
    pub const MATRIX_BT2020_CL: u8 = 10;
    /// BT.709 primaries.
    pub const PRIMARIES_BT709: u8 = 1;
    /// BT.470 BG primaries.
    pub const PRIMARIES_BT470BG: u8 = 5;
    /// SMPTE 170M primaries.
    pub const PRIMARIES_SMPTE170M: u8 = 6;
    /// BT.2020 primaries.
    pub const PRIMARIES_BT2020: u8 = 9;
    /// BT.709 transfer.
    pub const TRANSFER_BT709: u8 = 1;
    /// BT.601 transfer.
    pub const TRANSFER_BT601: u8 = 6;
    /// sRGB (IEC 61966-2-1) transfer.
    pub const TRANSFER_SRGB: u8 = 13;
    /// SMPTE ST 2084 (PQ).
    pub const TRANSFER_PQ: u8 = 16;
    /// ARIB STD-B67 (HLG).
    pub const TRANSFER_HLG: u8 = 18;
}

impl Default for ColorInfo {
    /// Nothing known.
    fn default() -> Self {
        Self {
            matrix: h273::UNSPECIFIED,
            range: 0,
            primaries: h273::UNSPECIFIED,
            transfer: h273::UNSPECIFIED,
            chroma_location: 0,
        }
    }
}

impl ColorInfo {
    /// Packed RGB: no matrix, full range, sRGB.
    pub fn rgb() -> Self {
        Self {
            matrix: h273::MATRIX_RGB,
            range: 2,
            primaries: h273::PRIMARIES_BT709,
            transfer: h273::TRANSFER_SRGB,
            chroma_location: 0,
        }
    }

    /// The luma coefficients (Kr, Kb) to convert Y'CbCr with, and the matrix that gives them:
    /// the carried one, or for an unspecified matrix the usual guess (BT.601 below 720 rows,
    /// BT.709 from 720). BT.2020 constant luminance is converted as non-constant (close, not
    /// exact). YCgCo and the newer ones have no Kr/Kb: `None`.
    pub fn luma_coefficients(&self, height: u32) -> Option<((f32, f32), u8)> {
        use h273::*;
        let m = match self.matrix {
            UNSPECIFIED | 3 if height < 720 => MATRIX_SMPTE170M,
            UNSPECIFIED | 3 => MATRIX_BT709,
            m => m,
        };
        Some((
            match m {
                MATRIX_BT709 => (0.2126, 0.0722),
                MATRIX_FCC => (0.30, 0.11),
                MATRIX_BT470BG | MATRIX_SMPTE170M => (0.299, 0.114),
                MATRIX_SMPTE240M => (0.212, 0.087),
                MATRIX_BT2020_NCL | MATRIX_BT2020_CL => (0.2627, 0.0593),
                _ => return None,
            },
            m,
        ))
    }

    /// Names for logs and statistics.
    pub fn matrix_name(&self) -> &'static str {
        match self.matrix {
            0 => "RGB",
            1 => "BT.709",
            2 => "unspecified",
            4 => "FCC",
            5 => "BT.470BG (BT.601)",
            6 => "SMPTE 170M (BT.601)",
            7 => "SMPTE 240M",
            8 => "YCgCo",
            9 => "BT.2020 NCL",
            10 => "BT.2020 CL",
            _ => "other",
        }
    }

    /// "limited", "full" or "unspecified".
    pub fn range_name(&self) -> &'static str {
        match self.range {
            1 => "limited",
            2 => "full",
            _ => "unspecified",
        }
    }

    /// The primaries' name.
    pub fn primaries_name(&self) -> &'static str {
        match self.primaries {
            1 => "BT.709",
            2 => "unspecified",
            4 => "BT.470M",
            5 => "BT.470BG",
            6 => "SMPTE 170M",
            7 => "SMPTE 240M",
            8 => "film",
            9 => "BT.2020",
            10 => "XYZ",
            11 => "DCI-P3",
            12 => "Display P3",
            22 => "EBU 3213",
            _ => "other",
        }
    }

    /// The transfer function's name.
    pub fn transfer_name(&self) -> &'static str {
        match self.transfer {
            1 => "BT.709",
            2 => "unspecified",
            4 => "gamma 2.2",
            5 => "gamma 2.8",
            6 => "BT.601",
            7 => "SMPTE 240M",
            8 => "linear",
            13 => "sRGB",
            14 => "BT.2020 10-bit",
            15 => "BT.2020 12-bit",
            16 => "PQ (SMPTE ST 2084)",
            17 => "SMPTE ST 428",
            18 => "HLG (ARIB STD-B67)",
            _ => "other",
        }
    }
}

/// How the picture is to be shown: its sample aspect ratio and the rotation/mirror that
/// makes it upright (from the container's display matrix, or the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Geometry {
    /// Sample (pixel) aspect ratio, width:height of one pixel; 0:0 unknown (square).
    pub sar_num: u32,
    /// Sample aspect ratio denominator (0: unknown).
    pub sar_den: u32,
    /// Quarter turns clockwise to display the picture upright: 0, 1 (90°), 2 (180°), 3 (270°).
    pub rotation: u8,
    /// Mirror horizontally before rotating.
    pub mirror: bool,
}

impl Geometry {
    /// The display size of a `width` x `height` picture: the width scaled by the sample
    /// aspect ratio (rounded, at least 1), then swapped with the height for a quarter turn.
    /// Also the scaled width before rotation.
    pub fn display_size(&self, width: u32, height: u32) -> ((u32, u32), u32) {
        let scaled = if self.sar_num > 0 && self.sar_den > 0 && self.sar_num != self.sar_den {
            ((u64::from(width) * u64::from(self.sar_num) + u64::from(self.sar_den) / 2)
                / u64::from(self.sar_den))
            .clamp(1, u64::from(crate::format::MAX_DIMENSION)) as u32
        } else {
            width
        };
        let size = if self.rotation % 2 == 1 {
            (height, scaled)
        } else {
            (scaled, height)
        };
        (size, scaled)
    }
}

/// Producer → consumer, the answer to `Hello`: what will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version.
    pub version: u32,
    /// The kind of every buffer's fds.
    pub memory: MemoryKind,
    /// Who made the buffers.
    pub allocator: AllocatorKind,
    /// Buffers that follow (`AddBuffer` ids 0..count).
    pub buffer_count: u32,
    /// Pixel format.
    pub pixel: PixelFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Nominal frame rate numerator (0: none).
    pub fps_num: u32,
    /// Nominal frame rate denominator.
    pub fps_den: u32,
    /// Colorimetry (H.273 code points).
    pub color: ColorInfo,
    /// DRM format modifier.
    pub modifier: u64,
    /// Sample aspect ratio, rotation, mirror.
    pub geometry: Geometry,
    /// The allocating device's `dev_t` (`makedev(major, minor)`), 0 when not said. Version 2
    /// producers send 0; kept for a later version (which device to import on).
    pub device: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// One plane of an `AddBuffer`.
pub struct WirePlane {
    /// Which of the message's fds the plane lives in.
    pub fd_index: u32,
    /// Bytes from one row to the next.
    pub stride: u32,
    /// Byte offset of the plane's first row in its fd.
    pub offset: u64,
    /// Bytes of the plane (at least stride × rows).
    pub size: u64,
}

/// Producer → consumer, with `n_fds` descriptors: one buffer of the pool, sent once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddBuffer {
    /// The buffer's id (0..buffer_count).
    pub buffer_id: u32,
    /// Descriptors attached to the message.
    pub n_fds: u32,
    /// Each plane.
    pub planes: Vec<WirePlane>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
/// One plane's share of a `Frame`.
pub struct Chunk {
    /// Bytes of the plane in use (stride × rows).
    pub bytes_used: u32,
    /// `CHUNK_FLAG_*` bits.
    pub flags: u32,
}

/// Producer → consumer: buffer `buffer_id` holds frame `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The buffer the frame is in.
    pub buffer_id: u32,
    /// `FRAME_FLAG_*` bits.
    pub flags: u32,
    /// Sequence number; a gap is frames this consumer did not get.
    pub seq: u64,
    /// Presentation time in nanoseconds of the stream's clock.
    pub pts_ns: i64,
    /// `CLOCK_MONOTONIC` when the producer sent the message (for latency).
    pub publish_ns: u64,
    /// The frame checksum, valid with `FRAME_FLAG_CHECKSUM`.
    pub checksum: u32,
    /// One per plane.
    pub chunks: Vec<Chunk>,
}

/// Consumer → producer: done with `buffer_id` (as sent in frame `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// The buffer released.
    pub buffer_id: u32,
    /// The `seq` of the frame released.
    pub seq: u64,
}

/// Producer → consumer: forget `buffer_id` (renegotiation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoveBuffer {
    /// The buffer withdrawn.
    pub buffer_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Why a connection ends.
pub enum GoodbyeReason {
    /// The stream ended normally.
    EndOfStream,
    /// The peer broke the protocol.
    ProtocolError,
    /// No format/memory kind in common.
    Unsupported,
    /// The versions differ.
    VersionMismatch,
    /// The sender is shutting down or leaving.
    Leaving,
    /// Something failed inside the sender.
    InternalError,
}

impl GoodbyeReason {
    /// Wire value.
    pub fn wire(self) -> u32 {
        match self {
            GoodbyeReason::EndOfStream => 0,
            GoodbyeReason::ProtocolError => 1,
            GoodbyeReason::Unsupported => 2,
            GoodbyeReason::VersionMismatch => 3,
            GoodbyeReason::Leaving => 4,
            GoodbyeReason::InternalError => 5,
        }
    }

    fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            0 => GoodbyeReason::EndOfStream,
            1 => GoodbyeReason::ProtocolError,
            2 => GoodbyeReason::Unsupported,
            3 => GoodbyeReason::VersionMismatch,
            4 => GoodbyeReason::Leaving,
            5 => GoodbyeReason::InternalError,
            _ => return None,
        })
    }
}

/// Either side: the connection ends; `message` says why (UTF-8, at most 112 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    /// Why.
    pub reason: GoodbyeReason,
    /// Text for people (UTF-8, at most 112 bytes; escape it before showing it).
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// Any message.
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`AddBuffer`].
    AddBuffer(AddBuffer),
    /// See [`Frame`].
    Frame(Frame),
    /// See [`Release`].
    Release(Release),
    /// See [`RemoveBuffer`].
    RemoveBuffer(RemoveBuffer),
    /// See [`Goodbye`].
    Goodbye(Goodbye),
    /// See [`RingMsg`].
    Ring(RingMsg),
    /// The peer sleeps no more: look in the ring (after `Ring` only).
    Wake,
}

/// Producer → consumer, right after `Welcome`, with one descriptor: the shared-memory ring
/// (a sealed memfd of `size` bytes) that carries frames and releases from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingMsg {
    /// The ring's size in bytes ([`crate::proto::ring::RING_BYTES`]).
    pub size: u32,
}

impl Message {
    /// Its type.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Hello(_) => MsgType::Hello,
            Message::Welcome(_) => MsgType::Welcome,
            Message::AddBuffer(_) => MsgType::AddBuffer,
            Message::Frame(_) => MsgType::Frame,
            Message::Release(_) => MsgType::Release,
            Message::RemoveBuffer(_) => MsgType::RemoveBuffer,
            Message::Goodbye(_) => MsgType::Goodbye,
            Message::Ring(_) => MsgType::Ring,
            Message::Wake => MsgType::Wake,
        }
    }

    /// Its name, for messages.
    pub fn name(&self) -> &'static str {
        match self.msg_type() {
            MsgType::Hello => "Hello",
            MsgType::Welcome => "Welcome",
            MsgType::AddBuffer => "AddBuffer",
            MsgType::Frame => "Frame",
            MsgType::Release => "Release",
            MsgType::RemoveBuffer => "RemoveBuffer",
            MsgType::Goodbye => "Goodbye",
            MsgType::Ring => "Ring",
            MsgType::Wake => "Wake",
        }
    }
}

/// `text` from a peer, safe to print or log: control characters (ESC sequences, CR, LF, …)
/// are shown escaped (`\u{1b}`, `\r`, `\n`), so a peer cannot move the cursor, recolour a
/// terminal or forge a log line.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A field's value for an error message: a fourcc as its four characters (and hex).
fn show_value(field: &str, value: u64) -> String {
    if field == "fourcc" {
        let b = (value as u32).to_le_bytes();
        let text: String = b
            .iter()
            .map(|&c| {
                if c.is_ascii_graphic() || c == b' ' {
                    c as char
                } else {
                    '?'
                }
            })
            .collect();
        format!("{text:?} ({value:#010x})")
    } else {
        value.to_string()
    }
}

/// The largest step in `Frame.seq` a consumer accepts: a producer skips a consumer's frames
/// only while it holds its quota, for at most its stall timeout; a bigger jump is a broken or
/// hostile producer (refused as a protocol error), never a count of dropped frames.
pub const MAX_SEQ_STEP: u64 = 1 << 24;

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is shorter than the 8-byte header")]
    /// Fewer bytes than a header.
    TooShort(usize),
    #[error("bad magic {0:#010x} (expected \"DMBF\")")]
    /// Not our magic number.
    BadMagic(u32),
    #[error("unknown message type {0}")]
    /// A type this version does not know.
    UnknownType(u16),
    #[error("header says {declared} bytes but the datagram has {actual}")]
    /// The header's length differs from the bytes received.
    LengthMismatch {
        /// The header's length.
        declared: usize,
        /// Bytes received.
        actual: usize,
    },
    #[error("{msg} must be {expected} bytes, got {actual}")]
    /// A message of the wrong length for its type.
    BadLength {
        /// The message.
        msg: &'static str,
        /// Its length.
        expected: usize,
        /// What came.
        actual: usize,
    },
    #[error("{msg}: {field} = {} is out of range", show_value(field, *value))]
    /// A field out of its range.
    OutOfRange {
        /// The message.
        msg: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    #[error("{msg}: reserved field {field} is {value}, must be 0")]
    /// A reserved field that is not zero.
    Reserved {
        /// The message.
        msg: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    #[error("Goodbye text is not UTF-8")]
    /// A Goodbye text that is not UTF-8 or not zero-padded.
    BadText,
    #[error("a Welcome of protocol version {theirs}; this build speaks version {VERSION}")]
    /// A Welcome of another protocol version (its length differs too).
    Version {
        /// The peer's version.
        theirs: u32,
    },
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(ty: MsgType, len: usize) -> Self {
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&MAGIC.to_le_bytes());
        v.extend_from_slice(&(ty as u16).to_le_bytes());
        v.extend_from_slice(&(len as u16).to_le_bytes());
        Writer(v)
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
    fn finish(self) -> Vec<u8> {
        let declared = u16::from_le_bytes([self.0[6], self.0[7]]) as usize;
        debug_assert_eq!(declared, self.0.len(), "encoder wrote a wrong length");
        self.0
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    msg: &'static str,
}

impl<'a> Reader<'a> {
    // Every caller has checked the message length first, so reads never run past the end.
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn reserved32(&mut self, field: &'static str) -> Result<(), WireError> {
        match self.u32() {
            0 => Ok(()),
            v => Err(WireError::Reserved {
                msg: self.msg,
                field,
                value: v.into(),
            }),
        }
    }
    fn range(&self, field: &'static str, value: u64, ok: bool) -> Result<(), WireError> {
        if ok {
            Ok(())
        } else {
            Err(WireError::OutOfRange {
                msg: self.msg,
                field,
                value,
            })
        }
    }
}

fn expect_len(msg: &'static str, expected: usize, actual: usize) -> Result<(), WireError> {
    if expected == actual {
        Ok(())
    } else {
        Err(WireError::BadLength {
            msg,
            expected,
            actual,
        })
    }
}

/// Encode a message (never fails: every value a [`Message`] can hold has an encoding, except
/// over-long lists, which are cut to the protocol's limits, and Goodbye text, cut to 112 bytes
/// at a character boundary).
pub fn encode(msg: &Message) -> Vec<u8> {
    match msg {
        Message::Hello(h) => {
            let caps = &h.caps[..h.caps.len().min(MAX_CAPS)];
            let mut w = Writer::new(MsgType::Hello, HELLO_FIXED_LEN + caps.len() * CAP_LEN);
            w.u32(h.version);
            w.u32(caps.len() as u32);
            w.u32(h.flags);
            w.u32(0);
            for c in caps {
                w.u32(c.fourcc);
                w.u32(c.memory_mask);
                w.u64(c.modifier);
            }
            w.finish()
        }
        Message::Welcome(m) => {
            let mut w = Writer::new(MsgType::Welcome, WELCOME_LEN);
            w.u32(m.version);
            w.u32(m.memory.wire());
            w.u32(m.allocator.wire());
            w.u32(m.buffer_count);
            w.u32(m.pixel.fourcc());
            w.u32(m.width);
            w.u32(m.height);
            w.u32(m.fps_num);
            w.u32(m.fps_den);
            w.u8(m.color.matrix);
            w.u8(m.color.range);
            w.u8(m.color.primaries);
            w.u8(m.color.transfer);
            w.u64(m.modifier);
            w.u8(m.color.chroma_location);
            w.u8(m.geometry.rotation);
            w.u8(m.geometry.mirror as u8);
            w.u8(0);
            w.u32(m.geometry.sar_num);
            w.u32(m.geometry.sar_den);
            w.u32(0);
            w.u64(m.device);
            w.zeros(WELCOME_HDR_LEN);
            w.finish()
        }
        Message::AddBuffer(m) => {
            let mut w = Writer::new(MsgType::AddBuffer, ADD_BUFFER_LEN);
            let planes = &m.planes[..m.planes.len().min(MAX_PLANES)];
            w.u32(m.buffer_id);
            w.u32(m.n_fds);
            w.u32(planes.len() as u32);
            w.u32(0);
            for p in planes {
                w.u32(p.fd_index);
                w.u32(p.stride);
                w.u64(p.offset);
                w.u64(p.size);
            }
            w.zeros((MAX_PLANES - planes.len()) * PLANE_LEN);
            w.finish()
        }
        Message::Frame(m) => {
            let mut w = Writer::new(MsgType::Frame, FRAME_LEN);
            let chunks = &m.chunks[..m.chunks.len().min(MAX_PLANES)];
            w.u32(m.buffer_id);
            w.u32(m.flags);
            w.u64(m.seq);
            w.u64(m.pts_ns as u64);
            w.u64(m.publish_ns);
            w.u32(m.checksum);
            w.u32(chunks.len() as u32);
            for c in chunks {
                w.u32(c.bytes_used);
                w.u32(c.flags);
            }
            w.zeros((MAX_PLANES - chunks.len()) * CHUNK_LEN);
            w.finish()
        }
        Message::Release(m) => {
            let mut w = Writer::new(MsgType::Release, RELEASE_LEN);
            w.u32(m.buffer_id);
            w.u32(0);
            w.u64(m.seq);
            w.finish()
        }
        Message::RemoveBuffer(m) => {
            let mut w = Writer::new(MsgType::RemoveBuffer, REMOVE_BUFFER_LEN);
            w.u32(m.buffer_id);
            w.u32(0);
            w.finish()
        }
        Message::Goodbye(m) => {
            let mut w = Writer::new(MsgType::Goodbye, GOODBYE_LEN);
            let mut end = m.message.len().min(GOODBYE_TEXT_LEN);
            while !m.message.is_char_boundary(end) {
                end -= 1;
            }
            let text = &m.message.as_bytes()[..end];
            w.u32(m.reason.wire());
            w.u32(text.len() as u32);
            w.0.extend_from_slice(text);
            w.zeros(GOODBYE_TEXT_LEN - text.len());
            w.finish()
        }
        Message::Ring(m) => {
            let mut w = Writer::new(MsgType::Ring, RING_LEN_MSG);
            w.u32(m.size);
            w.u32(0);
            w.finish()
        }
        Message::Wake => Writer::new(MsgType::Wake, WAKE_LEN).finish(),
    }
}

/// Decode one datagram.
pub fn decode(buf: &[u8]) -> Result<Message, WireError> {
    if buf.len() < HEADER_LEN {
        return Err(WireError::TooShort(buf.len()));
    }
    let magic = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let ty = u16::from_le_bytes([buf[4], buf[5]]);
    let declared = u16::from_le_bytes([buf[6], buf[7]]) as usize;
    let ty = MsgType::from_u16(ty).ok_or(WireError::UnknownType(ty))?;
    if declared != buf.len() {
        return Err(WireError::LengthMismatch {
            declared,
            actual: buf.len(),
        });
    }
    let name = match ty {
        MsgType::Hello => "Hello",
        MsgType::Welcome => "Welcome",
        MsgType::AddBuffer => "AddBuffer",
        MsgType::Frame => "Frame",
        MsgType::Release => "Release",
        MsgType::RemoveBuffer => "RemoveBuffer",
        MsgType::Goodbye => "Goodbye",
        MsgType::Ring => "Ring",
        MsgType::Wake => "Wake",
    };
    let mut r = Reader {
        buf,
        pos: HEADER_LEN,
        msg: name,
    };
    Ok(match ty {
        MsgType::Hello => {
            if buf.len() < HELLO_FIXED_LEN {
                return Err(WireError::BadLength {
                    msg: name,
                    expected: HELLO_FIXED_LEN,
                    actual: buf.len(),
                });
            }
            let version = r.u32();
            let n = r.u32() as usize;
            r.range("n_caps", n as u64, n <= MAX_CAPS)?;
            let flags = r.u32();
            r.range("flags", flags.into(), flags & !HELLO_FLAG_RING == 0)?;
            r.reserved32("reserved")?;
            expect_len(name, HELLO_FIXED_LEN + n * CAP_LEN, buf.len())?;
            let mut caps = Vec::with_capacity(n);
            for _ in 0..n {
                let c = Cap {
                    fourcc: r.u32(),
                    memory_mask: r.u32(),
                    modifier: r.u64(),
                };
                // Bits 1 (memfd) and 2 (dma-buf); at least one.
                let known = MemoryKind::Memfd.bit() | MemoryKind::DmaBuf.bit();
                r.range(
                    "memory_mask",
                    c.memory_mask.into(),
                    c.memory_mask != 0 && c.memory_mask & !known == 0,
                )?;
                caps.push(c);
            }
            Message::Hello(Hello {
                version,
                flags,
                caps,
            })
        }
        MsgType::Welcome => {
            // Another version's Welcome may have another length: say which version it is.
            if buf.len() >= HEADER_LEN + 4 {
                let theirs = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
                if theirs != VERSION {
                    return Err(WireError::Version { theirs });
                }
            }
            expect_len(name, WELCOME_LEN, buf.len())?;
            let version = r.u32();
            let mem = r.u32();
            let memory = MemoryKind::from_wire(mem);
            r.range("memory", mem.into(), memory.is_some())?;
            let alloc = r.u32();
            let allocator = AllocatorKind::from_wire(alloc);
            r.range("allocator", alloc.into(), allocator.is_some())?;
            let buffer_count = r.u32();
            r.range(
                "buffer_count",
                buffer_count.into(),
                (1..=256).contains(&buffer_count),
            )?;
            let fourcc = r.u32();
            let pixel = PixelFormat::from_fourcc(fourcc);
            r.range("fourcc", fourcc.into(), pixel.is_some())?;
            let width = r.u32();
            r.range("width", width.into(), (1..=MAX_DIMENSION).contains(&width))?;
            let height = r.u32();
            r.range(
                "height",
                height.into(),
                (1..=MAX_DIMENSION).contains(&height),
            )?;
            let fps_num = r.u32();
            let fps_den = r.u32();
            r.range("fps_den", fps_den.into(), fps_den != 0)?;
            let matrix = r.u8();
            r.range("color_matrix", matrix.into(), matrix <= 14)?;
            let range = r.u8();
            r.range("color_range", range.into(), range <= 2)?;
            let primaries = r.u8();
            r.range("color_primaries", primaries.into(), primaries <= 22)?;
            let transfer = r.u8();
            r.range("color_transfer", transfer.into(), transfer <= 18)?;
            let modifier = r.u64();
            let chroma_location = r.u8();
            r.range(
                "chroma_location",
                chroma_location.into(),
                chroma_location <= 6,
            )?;
            let rotation = r.u8();
            r.range("rotation", rotation.into(), rotation <= 3)?;
            let mirror = r.u8();
            r.range("mirror", mirror.into(), mirror <= 1)?;
            let res = r.u8();
            if res != 0 {
                return Err(WireError::Reserved {
                    msg: name,
                    field: "reserved (59)",
                    value: res.into(),
                });
            }
            let sar_num = r.u32();
            let sar_den = r.u32();
            r.range("sar_den", sar_den.into(), (sar_num == 0) == (sar_den == 0))?;
            r.reserved32("reserved (68)")?;
            let device = r.u64();
            for field in HDR_FIELDS {
                r.reserved32(field)?;
            }
            Message::Welcome(Welcome {
                version,
                memory: memory.unwrap_or(MemoryKind::Memfd),
                allocator: allocator.unwrap_or(AllocatorKind::Memfd),
                buffer_count,
                pixel: pixel.unwrap_or(PixelFormat::Nv12),
                width,
                height,
                fps_num,
                fps_den,
                color: ColorInfo {
                    matrix,
                    range,
                    primaries,
                    transfer,
                    chroma_location,
                },
                modifier,
                geometry: Geometry {
                    sar_num,
                    sar_den,
                    rotation,
                    mirror: mirror == 1,
                },
                device,
            })
        }
        MsgType::AddBuffer => {
            expect_len(name, ADD_BUFFER_LEN, buf.len())?;
            let buffer_id = r.u32();
            let n_fds = r.u32();
            r.range("n_fds", n_fds.into(), (1..=MAX_FDS as u32).contains(&n_fds))?;
            let n_planes = r.u32() as usize;
            r.range(
                "n_planes",
                n_planes as u64,
                (1..=MAX_PLANES).contains(&n_planes),
            )?;
            r.reserved32("reserved")?;
            let mut planes = Vec::with_capacity(n_planes);
            for i in 0..MAX_PLANES {
                let p = WirePlane {
                    fd_index: r.u32(),
                    stride: r.u32(),
                    offset: r.u64(),
                    size: r.u64(),
                };
                if i < n_planes {
                    r.range("plane.fd_index", p.fd_index.into(), p.fd_index < n_fds)?;
                    planes.push(p);
                } else if p
                    != (WirePlane {
                        fd_index: 0,
                        stride: 0,
                        offset: 0,
                        size: 0,
                    })
                {
                    return Err(WireError::Reserved {
                        msg: name,
                        field: "unused plane",
                        value: i as u64,
                    });
                }
            }
            Message::AddBuffer(AddBuffer {
                buffer_id,
                n_fds,
                planes,
            })
        }
        MsgType::Frame => {
            expect_len(name, FRAME_LEN, buf.len())?;
            let buffer_id = r.u32();
            let flags = r.u32();
            r.range("flags", flags.into(), flags & !FRAME_FLAGS_KNOWN == 0)?;
            let seq = r.u64();
            let pts_ns = r.u64() as i64;
            let publish_ns = r.u64();
            let checksum = r.u32();
            let n = r.u32() as usize;
            r.range("n_chunks", n as u64, (1..=MAX_PLANES).contains(&n))?;
            let mut chunks = Vec::with_capacity(n);
            for i in 0..MAX_PLANES {
                let c = Chunk {
                    bytes_used: r.u32(),
                    flags: r.u32(),
                };
                if i < n {
                    r.range(
                        "chunk.flags",
                        c.flags.into(),
                        c.flags & !CHUNK_FLAG_CORRUPTED == 0,
                    )?;
                    chunks.push(c);
                } else if c != Chunk::default() {
                    return Err(WireError::Reserved {
                        msg: name,
                        field: "unused chunk",
                        value: i as u64,
                    });
                }
            }
            Message::Frame(Frame {
                buffer_id,
                flags,
                seq,
                pts_ns,
                publish_ns,
                checksum,
                chunks,
            })
        }
        MsgType::Release => {
            expect_len(name, RELEASE_LEN, buf.len())?;
            let buffer_id = r.u32();
            r.reserved32("reserved")?;
            let seq = r.u64();
            Message::Release(Release { buffer_id, seq })
        }
        MsgType::RemoveBuffer => {
            expect_len(name, REMOVE_BUFFER_LEN, buf.len())?;
            let buffer_id = r.u32();
            r.reserved32("reserved")?;
            Message::RemoveBuffer(RemoveBuffer { buffer_id })
        }
        MsgType::Goodbye => {
            expect_len(name, GOODBYE_LEN, buf.len())?;
            let code = r.u32();
            let reason = GoodbyeReason::from_wire(code);
            r.range("reason", code.into(), reason.is_some())?;
            let n = r.u32() as usize;
            r.range("text_len", n as u64, n <= GOODBYE_TEXT_LEN)?;
            let text = &buf[r.pos..r.pos + n];
            if buf[r.pos + n..].iter().any(|&b| b != 0) {
                return Err(WireError::Reserved {
                    msg: name,
                    field: "text padding",
                    value: 1,
                });
            }
            let message = std::str::from_utf8(text)
                .map_err(|_| WireError::BadText)?
                .to_string();
            Message::Goodbye(Goodbye {
                reason: reason.unwrap_or(GoodbyeReason::ProtocolError),
                message,
            })
        }
        MsgType::Ring => {
            expect_len(name, RING_LEN_MSG, buf.len())?;
            let size = r.u32();
            r.reserved32("reserved")?;
            Message::Ring(RingMsg { size })
        }
        MsgType::Wake => {
            expect_len(name, WAKE_LEN, buf.len())?;
            Message::Wake
        }
    })
}
