//! `dmabuf-vulkan`'s `wgpu_receive` example (feature `wgpu`) against the real producer: frames
//! imported into wgpu on lavapipe (memfd buffers: host-pointer import, then a GPU copy into the
//! plane textures), converted from Y'CbCr to RGBA by a render pipeline, the last one written as
//! a PNG that must show the producer's pattern: its colour bars within a few levels, its white
//! box and its grey ramp. NV12, I420 and P010, at 640x360 and at an odd size.

mod common;
mod wgpu_check;
use common::*;
use wgpu_check::*;

#[test]
fn the_wgpu_example_renders_the_pattern() {
    if !vulkan_or_skip("the_wgpu_example_renders_the_pattern") {
        return;
    }
    for format in ["NV12", "I420", "P010"] {
        for (size, w, h) in [("640x360", 640, 360), ("321x241", 321, 241)] {
            let what = format!("{format} {size}");
            let (text, status, png) = run("wgpu", "memfd", format, size, 20);
            assert!(status.success(), "{what}: {text}");
            assert!(
                text.contains(&format!(
                    "stream: {format} {size} in memfd (BT.709 limited range), as wgpu textures by host-pointer (GPU copy)"
                )),
                "{what}: {text}"
            );
            assert!(
                text.contains("rendered 20 frames through host-pointer (4 buffers imported)"),
                "{what}: {text}"
            );
            let (rgba, pw, ph) = read_png(&png);
            assert_eq!((pw, ph), (w, h), "{what}: PNG size");
            check_pattern(&rgba, pw, ph, 3, &what);
        }
    }
}

/// The `copy` path (a CPU copy into a staging buffer, then the same GPU copy into the
/// textures) renders the same picture.
#[test]
fn the_wgpu_example_renders_through_the_copy_path() {
    if !vulkan_or_skip("the_wgpu_example_renders_through_the_copy_path") {
        return;
    }
    for (format, size, w, h) in [("NV12", "640x360", 640, 360), ("I420", "321x241", 321, 241)] {
        let what = format!("{format} {size} copy");
        let (text, status, png) = run_with("wgpu", "memfd", format, size, 10, Some("copy"));
        assert!(status.success(), "{what}: {text}");
        assert!(
            text.contains("as wgpu textures by copy (CPU copy, then GPU copy)")
                && text.contains("rendered 10 frames through copy"),
            "{what}: {text}"
        );
        let (rgba, pw, ph) = read_png(&png);
        assert_eq!((pw, ph), (w, h), "{what}: PNG size");
        check_pattern(&rgba, pw, ph, 3, &what);
    }
}

/// Formats the shader does not convert are refused with the reason, before any frame.
#[test]
fn the_wgpu_example_refuses_what_it_cannot_convert() {
    if !vulkan_or_skip("the_wgpu_example_refuses_what_it_cannot_convert") {
        return;
    }
    let (text, status, png) = run("wgpu", "memfd", "YUYV", "64x48", 5);
    assert_eq!(status.code(), Some(4), "{text}");
    assert!(
        text.contains("wgpu_receive converts NV12, I420 and P010; the stream is YUYV"),
        "{text}"
    );
    assert!(!png.exists());
}
