//! The only unsafe code of the V4L2 source: reading the union in `struct v4l2_streamparm`,
//! which v4l2r's `g_parm`/`s_parm` hand back raw. Everything else goes through v4l2r's safe
//! `ioctl` wrappers. See <https://docs.kernel.org/userspace-api/media/v4l/vidioc-g-parm.html>.
#![allow(unsafe_code)]

use v4l2r::bindings::{
    v4l2_captureparm, v4l2_fract, v4l2_streamparm, v4l2_streamparm__bindgen_ty_1,
};
use v4l2r::QueueType;

/// A `VIDIOC_S_PARM` argument asking capture queue `q` for `num/den` frames per second.
pub fn capture_parm(q: QueueType, fps: (u32, u32)) -> v4l2_streamparm {
    v4l2_streamparm {
        type_: q as u32,
        parm: v4l2_streamparm__bindgen_ty_1 {
            capture: v4l2_captureparm {
                // Time per frame is the inverse of the frame rate.
                timeperframe: v4l2_fract {
                    numerator: fps.1,
                    denominator: fps.0,
                },
                ..Default::default()
            },
        },
    }
}

/// The frame rate (`num/den` frames per second) capture queue `q`'s `v4l2_streamparm` states;
/// `None` if the driver left it zero or `parm` is not that queue's.
pub fn capture_fps(q: QueueType, parm: &v4l2_streamparm) -> Option<(u32, u32)> {
    if parm.type_ != q as u32 {
        return None;
    }
    // SAFETY: for a VIDEO_CAPTURE(_MPLANE) queue the kernel fills the `capture` member of the
    // union (videodev2.h: "struct v4l2_captureparm capture" for capture types); every bit pattern is
    // a valid `v4l2_captureparm` (plain integers).
    let tpf = unsafe { parm.parm.capture.timeperframe };
    (tpf.numerator != 0 && tpf.denominator != 0).then_some((tpf.denominator, tpf.numerator))
}

/// The colorimetry fields of a capture format (`struct v4l2_pix_format`, or
/// `v4l2_pix_format_mplane` for a multi-planar queue): colorspace, ycbcr_enc, quantization,
/// xfer_func, as the driver set them.
pub fn pix_colorimetry(fmt: &v4l2r::bindings::v4l2_format) -> Option<(u32, u32, u32, u32)> {
    if fmt.type_ == QueueType::VideoCaptureMplane as u32 {
        // SAFETY: for a VIDEO_CAPTURE_MPLANE format the kernel fills the `pix_mp` member of
        // the union (videodev2.h, struct v4l2_format); every bit pattern is a valid
        // `v4l2_pix_format_mplane` (integers and arrays of integers).
        let mp = unsafe { fmt.fmt.pix_mp };
        // SAFETY: as above: both members of this union are u8.
        let enc = unsafe { mp.__bindgen_anon_1.ycbcr_enc };
        return Some((
            mp.colorspace,
            u32::from(enc),
            u32::from(mp.quantization),
            u32::from(mp.xfer_func),
        ));
    }
    if fmt.type_ != QueueType::VideoCapture as u32 {
        return None;
    }
    // SAFETY: for a VIDEO_CAPTURE format the kernel fills the `pix` member of the union
    // (videodev2.h, struct v4l2_format); every bit pattern is a valid `v4l2_pix_format`
    // (integers). The ycbcr_enc/hsv_enc union holds integers either way.
    let pix = unsafe { fmt.fmt.pix };
    // SAFETY: as above: both members of this union are u32.
    let enc = unsafe { pix.__bindgen_anon_1.ycbcr_enc };
    Some((pix.colorspace, enc, pix.quantization, pix.xfer_func))
}
