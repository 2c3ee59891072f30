//! Plane layouts compared with libavutil's own answer for the same sizes:
//! `av_image_fill_linesizes(width, align 1)` and `av_image_fill_plane_sizes`.

use dmabuf_core::format::{FrameFormat, FrameLayout, PixelFormat};
use ffmpeg_next::ffi;

/// libavutil's format of the name we give for `p` (so the names are checked too).
#[allow(unsafe_code)]
fn av_pix_fmt(p: PixelFormat) -> ffi::AVPixelFormat {
    let name = std::ffi::CString::new(p.ffmpeg_name()).unwrap();
    // SAFETY: a NUL-terminated string; av_get_pix_fmt only reads it.
    let f = unsafe { ffi::av_get_pix_fmt(name.as_ptr()) };
    assert_ne!(
        f,
        ffi::AVPixelFormat::AV_PIX_FMT_NONE,
        "{p}: FFmpeg has no {:?}",
        p.ffmpeg_name()
    );
    f
}

/// (linesizes, plane sizes) as libavutil computes them for a tightly packed image.
#[allow(unsafe_code)]
fn ffmpeg_layout(p: PixelFormat, w: u32, h: u32) -> (Vec<i32>, Vec<usize>) {
    let fmt = av_pix_fmt(p);
    let mut lines = [0i32; 4];
    // SAFETY: plain C calls on stack arrays of the sizes libavutil documents (4 entries).
    let rc = unsafe { ffi::av_image_fill_linesizes(lines.as_mut_ptr(), fmt, w as i32) };
    assert!(rc >= 0, "av_image_fill_linesizes failed for {p} {w}x{h}");
    let strides: [isize; 4] = lines.map(|l| l as isize);
    let mut sizes = [0usize; 4];
    // SAFETY: as above.
    let rc = unsafe {
        ffi::av_image_fill_plane_sizes(sizes.as_mut_ptr(), fmt, h as i32, strides.as_ptr())
    };
    assert!(rc >= 0, "av_image_fill_plane_sizes failed for {p} {w}x{h}");
    let n = p.planes().len();
    (lines[..n].to_vec(), sizes[..n].to_vec())
}

#[test]
fn layouts_match_libavutil() {
    let sizes = [
        (1920, 1080),
        (1279, 719),
        (1, 1),
        (3, 5),
        (640, 480),
        (3840, 2160),
        (7680, 4320),
        (1281, 2),
    ];
    let mut checked = 0;
    for p in PixelFormat::ALL {
        for (w, h) in sizes {
            let ours = FrameLayout::packed(FrameFormat::linear(p, w, h)).unwrap();
            let (lines, plane_sizes) = ffmpeg_layout(p, w, h);
            let our_lines: Vec<i32> = ours.planes.iter().map(|pl| pl.stride as i32).collect();
            let our_sizes: Vec<usize> = ours.planes.iter().map(|pl| pl.size() as usize).collect();
            assert_eq!(our_lines, lines, "{p} {w}x{h}: linesizes");
            assert_eq!(our_sizes, plane_sizes, "{p} {w}x{h}: plane sizes");
            // Packed planes sit back to back, as FFmpeg's rawvideo does.
            let mut off = 0u64;
            for pl in &ours.planes {
                assert_eq!(pl.offset, off, "{p} {w}x{h}: offsets");
                off += pl.size();
            }
            assert_eq!(ours.packed_size(), off);
            checked += 1;
        }
    }
    assert_eq!(checked, PixelFormat::ALL.len() * sizes.len());
}
