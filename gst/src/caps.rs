//! Between the pipe's formats (DRM fourccs, H.273 colorimetry) and GStreamer's raw video caps.

use dmabuf_core::proto::wire::{ColorInfo, Geometry, Welcome};
use dmabuf_core::{FrameLayout, PixelFormat};
use gst_video::{VideoChromaSite, VideoColorRange, VideoColorimetry, VideoFormat, VideoInfo};

/// Every carried format with its GStreamer name (memory order as GStreamer names it: DRM
/// `XR24` is bytes B, G, R, X = `BGRx`; DRM `BG24` is bytes R, G, B = `RGB`).
pub const FORMATS: [(PixelFormat, VideoFormat); 16] = [
    (PixelFormat::I420, VideoFormat::I420),
    (PixelFormat::Nv12, VideoFormat::Nv12),
    (PixelFormat::Yuyv, VideoFormat::Yuy2),
    (PixelFormat::Xrgb8888, VideoFormat::Bgrx),
    (PixelFormat::Argb8888, VideoFormat::Bgra),
    (PixelFormat::P010, VideoFormat::P01010le),
    (PixelFormat::S010, VideoFormat::I42010le),
    (PixelFormat::S210, VideoFormat::I42210le),
    (PixelFormat::S410, VideoFormat::Y44410le),
    (PixelFormat::Yuv422, VideoFormat::Y42b),
    (PixelFormat::Nv16, VideoFormat::Nv16),
    (PixelFormat::Yuv444, VideoFormat::Y444),
    (PixelFormat::Nv24, VideoFormat::Nv24),
    (PixelFormat::R8, VideoFormat::Gray8),
    (PixelFormat::Bgr888, VideoFormat::Rgb),
    (PixelFormat::Rgb888, VideoFormat::Bgr),
];

/// GStreamer's name for a carried format.
pub fn to_gst(p: PixelFormat) -> VideoFormat {
    FORMATS
        .iter()
        .find(|(d, _)| *d == p)
        .map(|(_, g)| *g)
        .unwrap_or(VideoFormat::Unknown)
}

/// The carried format of a GStreamer format, if any.
pub fn from_gst(g: VideoFormat) -> Option<PixelFormat> {
    FORMATS.iter().find(|(_, v)| *v == g).map(|(d, _)| *d)
}

/// `video/x-raw` in every carried format, any size and rate (the pad templates).
pub fn template_caps() -> gst::Caps {
    let max = dmabuf_core::format::MAX_DIMENSION as i32;
    gst_video::VideoCapsBuilder::new()
        .format_list(FORMATS.iter().map(|(_, g)| *g))
        .width_range(1..=max)
        .height_range(1..=max)
        .build()
}

/// A wire fraction as GStreamer's (which is i32/i32): None when it does not fit.
fn fraction(num: u32, den: u32) -> Option<gst::Fraction> {
    let (n, d) = (i32::try_from(num).ok()?, i32::try_from(den).ok()?);
    (d > 0).then(|| gst::Fraction::new(n, d))
}

/// The carried formats that `caps` allows (all of them for ANY caps).
pub fn formats_in(caps: &gst::Caps) -> Vec<PixelFormat> {
    if caps.is_any() {
        return FORMATS.iter().map(|(d, _)| *d).collect();
    }
    FORMATS
        .iter()
        .filter(|(_, g)| {
            let one = gst_video::VideoCapsBuilder::new().format(*g).build();
            caps.can_intersect(&one)
        })
        .map(|(d, _)| *d)
        .collect()
}

fn chroma_site(location: u8) -> VideoChromaSite {
    // FFmpeg's AVChromaLocation, as the wire carries it.
    match location {
        1 => VideoChromaSite::MPEG2,
        2 => VideoChromaSite::JPEG,
        3 => VideoChromaSite::COSITED,
        4 => VideoChromaSite::V_COSITED,
        _ => VideoChromaSite::empty(),
    }
}

fn chroma_location(site: VideoChromaSite) -> u8 {
    if site == VideoChromaSite::MPEG2 {
        1
    } else if site == VideoChromaSite::JPEG {
        2
    } else if site == VideoChromaSite::COSITED {
        3
    } else if site == VideoChromaSite::V_COSITED {
        4
    } else {
        0
    }
}

/// GStreamer's colorimetry for H.273 code points (unspecified ones stay unknown).
pub fn colorimetry(c: &ColorInfo) -> VideoColorimetry {
    let range = match c.range {
        1 => VideoColorRange::Range16_235,
        2 => VideoColorRange::Range0_255,
        _ => VideoColorRange::Unknown,
    };
    VideoColorimetry::new(
        range,
        gst_video::VideoColorMatrix::from_iso(u32::from(c.matrix)),
        gst_video::VideoTransferFunction::from_iso(u32::from(c.transfer)),
        gst_video::VideoColorPrimaries::from_iso(u32::from(c.primaries)),
    )
}

/// H.273 code points from GStreamer's video info (2 = unspecified where GStreamer has none).
pub fn color_info(info: &VideoInfo) -> ColorInfo {
    let c = info.colorimetry();
    let iso = |v: u32| if v == 0 { 2 } else { v.min(255) as u8 };
    ColorInfo {
        matrix: iso(c.matrix().to_iso()),
        range: match c.range() {
            VideoColorRange::Range16_235 => 1,
            VideoColorRange::Range0_255 => 2,
            _ => 0,
        },
        primaries: iso(c.primaries().to_iso()),
        transfer: iso(c.transfer().to_iso()),
        chroma_location: chroma_location(info.chroma_site()),
    }
}

/// The caps a producer's stream plays as.
pub fn caps_of(w: &Welcome) -> gst::Caps {
    let mut b = gst_video::VideoInfo::builder(to_gst(w.pixel), w.width, w.height)
        // (A rate or aspect that does not fit GStreamer's fractions is left unknown.)
        .fps(fraction(w.fps_num, w.fps_den).unwrap_or(gst::Fraction::new(0, 1)))
        .colorimetry(&colorimetry(&w.color))
        .chroma_site(chroma_site(w.color.chroma_location));
    if w.geometry.sar_num != 0 {
        if let Some(par) = fraction(w.geometry.sar_num, w.geometry.sar_den) {
            b = b.par(par);
        }
    }
    match b.build().and_then(|i| i.to_caps()) {
        Ok(c) => c,
        // (Unreachable for the formats carried; keep the format and size at least.)
        Err(_) => gst_video::VideoCapsBuilder::new()
            .format(to_gst(w.pixel))
            .width(w.width as i32)
            .height(w.height as i32)
            .build(),
    }
}

/// The display geometry from GStreamer's pixel aspect ratio.
pub fn geometry(info: &VideoInfo) -> Geometry {
    let par = info.par();
    let (n, d) = (par.numer(), par.denom());
    Geometry {
        sar_num: if n > 0 && d > 0 && n != d {
            n as u32
        } else {
            0
        },
        sar_den: if n > 0 && d > 0 && n != d {
            d as u32
        } else {
            0
        },
        ..Geometry::default()
    }
}

/// Whether buffers of `layout` in one memory read right without a `GstVideoMeta`: every plane
/// at GStreamer's default offset and stride for `info`.
pub fn is_default_layout(layout: &FrameLayout, info: &VideoInfo) -> bool {
    layout.planes.len() == info.n_planes() as usize
        && layout.planes.iter().enumerate().all(|(i, pl)| {
            info.offset()[i] as u64 == pl.offset && info.stride()[i] as u32 == pl.stride
        })
}
