//! `dmabuf-vulkan`'s `wgpu_receive` example on dma-heap buffers: each plane imported as a
//! `VkImage` with an explicit layout and handed to wgpu as the texture itself (zero copy, with
//! the queue-family acquire and release around each frame), rendered to the same picture as
//! from memfd buffers. Needs `/dev/dma_heap/system` (the real-kernel lane, `ci/vm-lane`); on a
//! host without it the test prints `SKIP` and why.

mod common;
mod wgpu_check;
use dmabuf_core::testing::skip_or_fail;
use wgpu_check::*;

#[test]
fn the_wgpu_example_samples_dma_bufs_with_no_copy() {
    let t = "the_wgpu_example_samples_dma_bufs_with_no_copy";
    if !std::path::Path::new("/dev/dma_heap/system").exists() {
        skip_or_fail(t, "/dev/dma_heap/system does not exist");
        return;
    }
    for (format, size, w, h) in [("NV12", "640x360", 640, 360), ("P010", "321x241", 321, 241)] {
        let what = format!("{format} {size} dma-heap");
        let (text, status, png) = run("hw-wgpu", "dma-heap", format, size, 10);
        assert!(status.success(), "{what}: {text}");
        assert!(
            text.contains(&format!(
                "stream: {format} {size} in dma-buf (BT.709 limited range), as wgpu textures by dmabuf-image (zero copy)"
            )),
            "{what}: {text}"
        );
        assert!(
            text.contains("rendered 10 frames through dmabuf-image"),
            "{what}: {text}"
        );
        let (rgba, pw, ph) = read_png(&png);
        assert_eq!((pw, ph), (w, h), "{what}: PNG size");
        check_pattern(&rgba, pw, ph, 3, &what);
    }
}
