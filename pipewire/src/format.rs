//! Between the pipe's formats (DRM fourccs, H.273 colorimetry) and PipeWire's raw video
//! format objects (`SPA_TYPE_OBJECT_Format`, `spa/param/video/raw.h`), and the buffer
//! parameters a node offers (`SPA_PARAM_Buffers`, `SPA_PARAM_Meta`).

use dmabuf_core::proto::wire::ColorInfo;
use dmabuf_core::{FrameFormat, MemoryKind, PixelFormat};
use pipewire::spa;
use pipewire::spa::sys;
use spa::param::format::{FormatProperties, MediaSubtype, MediaType};
use spa::param::video::VideoFormat;
use spa::param::ParamType;
use spa::pod::{ChoiceValue, Object, Property, PropertyFlags, Value};
use spa::utils::{Choice, ChoiceEnum, ChoiceFlags, Fraction, Id, Rectangle, SpaTypes};

/// Every carried format with PipeWire's name for it (memory order, as GStreamer names it: DRM
/// `XR24` is bytes B, G, R, X = `BGRx`; DRM `BG24` is bytes R, G, B = `RGB`).
pub const FORMATS: [(PixelFormat, VideoFormat); 16] = [
    (PixelFormat::I420, VideoFormat::I420),
    (PixelFormat::Nv12, VideoFormat::NV12),
    (PixelFormat::Yuyv, VideoFormat::YUY2),
    (PixelFormat::Xrgb8888, VideoFormat::BGRx),
    (PixelFormat::Argb8888, VideoFormat::BGRA),
    (PixelFormat::P010, VideoFormat::P010_10LE),
    (PixelFormat::S010, VideoFormat::I420_10LE),
    (PixelFormat::S210, VideoFormat::I422_10LE),
    (PixelFormat::S410, VideoFormat::Y444_10LE),
    (PixelFormat::Yuv422, VideoFormat::Y42B),
    (PixelFormat::Nv16, VideoFormat::NV16),
    (PixelFormat::Yuv444, VideoFormat::Y444),
    (PixelFormat::Nv24, VideoFormat::NV24),
    (PixelFormat::R8, VideoFormat::GRAY8),
    (PixelFormat::Bgr888, VideoFormat::RGB),
    (PixelFormat::Rgb888, VideoFormat::BGR),
];

/// PipeWire's name for a carried format.
pub fn to_spa(p: PixelFormat) -> VideoFormat {
    FORMATS
        .iter()
        .find(|(d, _)| *d == p)
        .map(|(_, s)| *s)
        .unwrap_or(VideoFormat::Unknown)
}

/// The carried format of a PipeWire format, if any.
pub fn from_spa(s: VideoFormat) -> Option<PixelFormat> {
    FORMATS.iter().find(|(_, v)| *v == s).map(|(d, _)| *d)
}

/// `SPA_VIDEO_COLOR_RANGE_*` of the wire's range (FFmpeg's `AVColorRange`).
fn spa_range(range: u8) -> Option<u32> {
    match range {
        1 => Some(sys::SPA_VIDEO_COLOR_RANGE_16_235),
        2 => Some(sys::SPA_VIDEO_COLOR_RANGE_0_255),
        _ => None,
    }
}

/// `SPA_VIDEO_COLOR_MATRIX_*` of an H.273 MatrixCoefficients value.
fn spa_matrix(m: u8) -> Option<u32> {
    Some(match m {
        0 => sys::SPA_VIDEO_COLOR_MATRIX_RGB,
        1 => sys::SPA_VIDEO_COLOR_MATRIX_BT709,
        4 => sys::SPA_VIDEO_COLOR_MATRIX_FCC,
        5 | 6 => sys::SPA_VIDEO_COLOR_MATRIX_BT601,
        7 => sys::SPA_VIDEO_COLOR_MATRIX_SMPTE240M,
        9 => sys::SPA_VIDEO_COLOR_MATRIX_BT2020,
        _ => return None,
    })
}

/// `SPA_VIDEO_TRANSFER_*` of an H.273 TransferCharacteristics value. SPA (1.4) has no
/// BT.601 or 10-bit BT.2020 code: both are the BT.709 curve; it has none for PQ or HLG
/// (left unknown).
fn spa_transfer(t: u8) -> Option<u32> {
    Some(match t {
        1 | 6 | 14 => sys::SPA_VIDEO_TRANSFER_BT709,
        7 => sys::SPA_VIDEO_TRANSFER_SMPTE240M,
        8 => sys::SPA_VIDEO_TRANSFER_GAMMA10,
        13 => sys::SPA_VIDEO_TRANSFER_SRGB,
        15 => sys::SPA_VIDEO_TRANSFER_BT2020_12,
        _ => return None,
    })
}

/// `SPA_VIDEO_COLOR_PRIMARIES_*` of an H.273 ColourPrimaries value.
fn spa_primaries(p: u8) -> Option<u32> {
    Some(match p {
        1 => sys::SPA_VIDEO_COLOR_PRIMARIES_BT709,
        4 => sys::SPA_VIDEO_COLOR_PRIMARIES_BT470M,
        5 => sys::SPA_VIDEO_COLOR_PRIMARIES_BT470BG,
        6 => sys::SPA_VIDEO_COLOR_PRIMARIES_SMPTE170M,
        7 => sys::SPA_VIDEO_COLOR_PRIMARIES_SMPTE240M,
        8 => sys::SPA_VIDEO_COLOR_PRIMARIES_FILM,
        9 => sys::SPA_VIDEO_COLOR_PRIMARIES_BT2020,
        _ => return None,
    })
}

fn id(v: u32) -> Value {
    Value::Id(Id(v))
}

fn prop(key: FormatProperties, value: Value) -> Property {
    Property::new(key.as_raw(), value)
}

/// What a node offers (`SPA_PARAM_EnumFormat`s) for a pool of `memory`: the pool's pixel
/// format, size and frame rate, fixed, with the stream's colorimetry where the wire says it.
/// A dma-buf pool is offered twice, as PipeWire's DMA-BUF negotiation has it: first with the
/// pool's DRM modifier (`SPA_FORMAT_VIDEO_modifier`, mandatory: only clients that import
/// dma-bufs take it), then without (the fallback for clients that map shared memory).
pub fn enum_formats(
    format: FrameFormat,
    fps: (u32, u32),
    color: &ColorInfo,
    memory: MemoryKind,
) -> Vec<Object> {
    let plain = enum_format(format, fps, color);
    if memory != MemoryKind::DmaBuf {
        return vec![plain];
    }
    let mut with_modifier = plain.clone();
    with_modifier.properties.push(Property {
        key: FormatProperties::VideoModifier.as_raw(),
        flags: PropertyFlags::MANDATORY,
        value: Value::Long(format.modifier as i64),
    });
    vec![with_modifier, plain]
}

/// Whether a negotiated format carries a DRM modifier (a dma-buf client).
pub fn has_modifier(param: &spa::pod::Pod) -> bool {
    let mut info = spa::param::video::VideoInfoRaw::new();
    info.parse(param).is_ok()
        && info
            .flags()
            .contains(spa::param::video::VideoFlags::MODIFIER)
}

/// The format offered (`SPA_PARAM_EnumFormat`): the pool's pixel format, size and frame rate,
/// fixed, with the stream's colorimetry where the wire says it.
fn enum_format(format: FrameFormat, fps: (u32, u32), color: &ColorInfo) -> Object {
    let mut properties = vec![
        prop(FormatProperties::MediaType, id(MediaType::Video.as_raw())),
        prop(
            FormatProperties::MediaSubtype,
            id(MediaSubtype::Raw.as_raw()),
        ),
        prop(
            FormatProperties::VideoFormat,
            id(to_spa(format.pixel).as_raw()),
        ),
        prop(
            FormatProperties::VideoSize,
            Value::Rectangle(Rectangle {
                width: format.width,
                height: format.height,
            }),
        ),
        prop(
            FormatProperties::VideoFramerate,
            Value::Fraction(Fraction {
                num: fps.0,
                denom: fps.1.max(1),
            }),
        ),
    ];
    let colour = [
        (FormatProperties::VideoColorRange, spa_range(color.range)),
        (FormatProperties::VideoColorMatrix, spa_matrix(color.matrix)),
        (
            FormatProperties::VideoTransferFunction,
            spa_transfer(color.transfer),
        ),
        (
            FormatProperties::VideoColorPrimaries,
            spa_primaries(color.primaries),
        ),
    ];
    for (key, v) in colour {
        if let Some(v) = v {
            properties.push(prop(key, id(v)));
        }
    }
    Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id: ParamType::EnumFormat.as_raw(),
        properties,
    }
}

/// `SPA_DATA_*` of a memory kind.
pub fn data_type(memory: MemoryKind) -> u32 {
    match memory {
        MemoryKind::Memfd => sys::SPA_DATA_MemFd,
        MemoryKind::DmaBuf => sys::SPA_DATA_DmaBuf,
    }
}

/// `SPA_PARAM_Buffers`: exactly the pool's buffers, one data block per plane (so every client
/// finds each plane's offset and stride in its chunk), of the given memory kind. A dma-buf
/// pool negotiated without a modifier (a client that maps shared memory) is offered as
/// `SPA_DATA_DmaBuf` or `SPA_DATA_MemFd`: a dma-heap or udmabuf buffer maps like a memfd.
pub fn buffers_param(
    count: u32,
    blocks: u32,
    size: u32,
    stride: u32,
    memory: MemoryKind,
    modifier: bool,
) -> Object {
    let int = |key: u32, v: u32| Property::new(key, Value::Int(v.min(i32::MAX as u32) as i32));
    let mut kind = 1i32 << data_type(memory);
    if memory == MemoryKind::DmaBuf && !modifier {
        kind |= 1i32 << sys::SPA_DATA_MemFd;
    }
    Object {
        type_: SpaTypes::ObjectParamBuffers.as_raw(),
        id: ParamType::Buffers.as_raw(),
        properties: vec![
            int(sys::SPA_PARAM_BUFFERS_buffers, count),
            int(sys::SPA_PARAM_BUFFERS_blocks, blocks),
            int(sys::SPA_PARAM_BUFFERS_size, size),
            int(sys::SPA_PARAM_BUFFERS_stride, stride),
            data_types(kind),
        ],
    }
}

/// `SPA_PARAM_BUFFERS_dataType`: the mask of `1 << SPA_DATA_*` the buffers may be.
fn data_types(mask: i32) -> Property {
    Property {
        key: sys::SPA_PARAM_BUFFERS_dataType,
        flags: PropertyFlags::empty(),
        value: Value::Choice(ChoiceValue::Int(Choice(
            ChoiceFlags::empty(),
            ChoiceEnum::Flags {
                default: mask,
                flags: vec![mask],
            },
        ))),
    }
}

/// `SPA_PARAM_Meta` for the header (`struct spa_meta_header`: pts, seq, flags).
pub fn header_meta_param() -> Object {
    Object {
        type_: SpaTypes::ObjectParamMeta.as_raw(),
        id: ParamType::Meta.as_raw(),
        properties: vec![
            Property::new(sys::SPA_PARAM_META_type, id(sys::SPA_META_Header)),
            Property::new(
                sys::SPA_PARAM_META_size,
                Value::Int(std::mem::size_of::<sys::spa_meta_header>() as i32),
            ),
        ],
    }
}

/// The wire's colorimetry of PipeWire's (the first H.273 code point with that SPA value;
/// unspecified where SPA says unknown).
fn color_of(info: &spa::param::video::VideoInfoRaw) -> ColorInfo {
    let back = |f: fn(u8) -> Option<u32>, v: u32| (0..=22u8).find(|&c| f(c) == Some(v));
    let unspecified = dmabuf_core::proto::wire::h273::UNSPECIFIED;
    ColorInfo {
        matrix: back(spa_matrix, info.color_matrix()).unwrap_or(unspecified),
        range: back(spa_range, info.color_range()).unwrap_or(0),
        primaries: back(spa_primaries, info.color_primaries()).unwrap_or(unspecified),
        transfer: back(spa_transfer, info.transfer_function()).unwrap_or(unspecified),
        chroma_location: 0,
    }
}

/// The raw video format a `SPA_PARAM_Format` fixes, as the pipe carries it.
pub fn parse_raw_video(param: &spa::pod::Pod) -> Result<crate::InputFormat, String> {
    let mut info = spa::param::video::VideoInfoRaw::new();
    info.parse(param)
        .map_err(|e| format!("PipeWire's format is not raw video ({e})"))?;
    let pixel = from_spa(info.format()).ok_or_else(|| {
        format!(
            "PipeWire negotiated {:?}, which the pipe does not carry",
            info.format()
        )
    })?;
    if info
        .flags()
        .contains(spa::param::video::VideoFlags::MODIFIER)
        && info.modifier() != dmabuf_core::format::MOD_LINEAR
    {
        return Err(format!(
            "PipeWire negotiated DRM modifier {:#x}; only LINEAR is taken",
            info.modifier()
        ));
    }
    let size = info.size();
    let rate = info.framerate();
    Ok(crate::InputFormat {
        format: FrameFormat::linear(pixel, size.width, size.height),
        fps: (rate.num, rate.denom.max(1)),
        color: color_of(&info),
    })
}

/// What an input stream offers (`SPA_PARAM_EnumFormat`s): every carried format, any size and
/// frame rate, first as dma-bufs with the LINEAR modifier (mandatory: only a peer that offers
/// dma-bufs with that modifier matches it), then without a modifier (memfd or process memory).
/// PipeWire tries the input's offers in order, so a peer that has both gives dma-bufs.
pub fn enum_any_formats() -> Vec<Object> {
    let plain = enum_any_format();
    let mut linear = plain.clone();
    linear.properties.push(Property {
        key: FormatProperties::VideoModifier.as_raw(),
        flags: PropertyFlags::MANDATORY,
        value: Value::Long(dmabuf_core::format::MOD_LINEAR as i64),
    });
    vec![linear, plain]
}

fn enum_any_format() -> Object {
    let formats: Vec<Id> = FORMATS.iter().map(|(_, s)| Id(s.as_raw())).collect();
    let choice = |c| Value::Choice(c);
    Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id: ParamType::EnumFormat.as_raw(),
        properties: vec![
            prop(FormatProperties::MediaType, id(MediaType::Video.as_raw())),
            prop(
                FormatProperties::MediaSubtype,
                id(MediaSubtype::Raw.as_raw()),
            ),
            prop(
                FormatProperties::VideoFormat,
                choice(ChoiceValue::Id(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Enum {
                        default: formats[0],
                        alternatives: formats.clone(),
                    },
                ))),
            ),
            prop(
                FormatProperties::VideoSize,
                choice(ChoiceValue::Rectangle(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Range {
                        default: Rectangle {
                            width: 1920,
                            height: 1080,
                        },
                        min: Rectangle {
                            width: 1,
                            height: 1,
                        },
                        max: Rectangle {
                            width: 16384,
                            height: 16384,
                        },
                    },
                ))),
            ),
            prop(
                FormatProperties::VideoFramerate,
                choice(ChoiceValue::Fraction(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Range {
                        default: Fraction { num: 30, denom: 1 },
                        min: Fraction { num: 0, denom: 1 },
                        max: Fraction {
                            num: 1000,
                            denom: 1,
                        },
                    },
                ))),
            ),
        ],
    }
}

/// `SPA_PARAM_Buffers` of an input stream: dma-bufs where the format has a modifier, else
/// sealed memfds (what can be passed on to consumers as they are), any count the peer likes
/// from 2 to 32, up to one block per plane.
pub fn input_buffers_param(dma_buf: bool) -> Object {
    let range = |default: i32, min: i32, max: i32| {
        Value::Choice(ChoiceValue::Int(Choice(
            ChoiceFlags::empty(),
            ChoiceEnum::Range { default, min, max },
        )))
    };
    let kinds = 1i32
        << if dma_buf {
            sys::SPA_DATA_DmaBuf
        } else {
            sys::SPA_DATA_MemFd
        };
    Object {
        type_: SpaTypes::ObjectParamBuffers.as_raw(),
        id: ParamType::Buffers.as_raw(),
        properties: vec![
            Property::new(sys::SPA_PARAM_BUFFERS_buffers, range(8, 2, 32)),
            Property::new(sys::SPA_PARAM_BUFFERS_blocks, range(1, 1, 4)),
            Property::new(sys::SPA_PARAM_BUFFERS_size, range(0, 0, i32::MAX)),
            Property::new(sys::SPA_PARAM_BUFFERS_stride, range(0, 0, i32::MAX)),
            data_types(kinds),
        ],
    }
}

/// An object serialized as a POD.
pub fn serialize(obj: Object) -> Vec<u8> {
    spa::pod::serialize::PodSerializer::serialize(
        std::io::Cursor::new(Vec::new()),
        &Value::Object(obj),
    )
    .map(|(c, _)| c.into_inner())
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_a_distinct_spa_name() {
        for p in PixelFormat::ALL {
            let s = to_spa(p);
            assert_ne!(s, VideoFormat::Unknown, "{p:?}");
            assert_eq!(from_spa(s), Some(p));
        }
    }

    #[test]
    fn a_dma_buf_pool_is_offered_with_its_modifier_first() {
        let mut f = FrameFormat::linear(PixelFormat::Nv12, 64, 32);
        f.modifier = 0x0100_0000_0000_0001; // I915_FORMAT_MOD_X_TILED
        let offers = enum_formats(f, (30, 1), &ColorInfo::rgb(), MemoryKind::DmaBuf);
        assert_eq!(offers.len(), 2);
        let first = serialize(offers[0].clone());
        let pod = spa::pod::Pod::from_bytes(&first).unwrap();
        assert!(has_modifier(pod));
        let mut info = spa::param::video::VideoInfoRaw::new();
        info.parse(pod).unwrap();
        assert_eq!(info.modifier(), f.modifier);
        let second = serialize(offers[1].clone());
        assert!(!has_modifier(spa::pod::Pod::from_bytes(&second).unwrap()));
    }

    #[test]
    fn format_pod_parses_back() {
        let f = FrameFormat::linear(PixelFormat::Nv12, 1280, 720);
        let color = ColorInfo {
            matrix: 1,
            range: 1,
            primaries: 1,
            transfer: 1,
            chroma_location: 1,
        };
        let bytes = serialize(enum_formats(f, (30, 1), &color, MemoryKind::Memfd).remove(0));
        let pod = spa::pod::Pod::from_bytes(&bytes).expect("a pod");
        let mut info = spa::param::video::VideoInfoRaw::new();
        info.parse(pod).expect("parses as raw video");
        assert_eq!(info.format(), VideoFormat::NV12);
        assert_eq!((info.size().width, info.size().height), (1280, 720));
        assert_eq!((info.framerate().num, info.framerate().denom), (30, 1));
        assert_eq!(info.color_range(), sys::SPA_VIDEO_COLOR_RANGE_16_235);
    }
}
