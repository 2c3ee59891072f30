//! Compute shaders for the Vulkan consumer, written in WGSL (`src/wgsl/`) and compiled to
//! SPIR-V by naga in `build.rs`. Entry point `main` in each.
//!
//! - [`CHECKSUM_BUFFER`] / [`CHECKSUM_IMAGE`]: the frame checksum
//!   (`dmabuf_core::format::frame_checksum`) of one plane, read from an imported buffer or from
//!   an imported image. The GPU recomputing the producer's checksum over the imported memory is
//!   the proof that the bytes arrived without a copy.
//! - [`CONVERT_BUFFER`] / [`CONVERT_IMAGE`]: I420, NV12, YUYV (BT.601/BT.709, limited/full
//!   range) and XRGB/ARGB to RGBA8.

/// Align SPIR-V bytes to 4 for `include_bytes!`.
#[repr(C, align(4))]
pub struct Spirv<T: ?Sized>(pub T);

macro_rules! spirv {
    ($name:literal) => {
        &Spirv(*include_bytes!(concat!(
            env!("OUT_DIR"),
            "/",
            $name,
            ".spv"
        )))
        .0
    };
}

pub const CHECKSUM_BUFFER: &[u8] = spirv!("checksum_buffer");
pub const CHECKSUM_IMAGE: &[u8] = spirv!("checksum_image");
pub const CONVERT_BUFFER: &[u8] = spirv!("convert_buffer");
pub const CONVERT_IMAGE: &[u8] = spirv!("convert_image");

#[cfg(test)]
mod tests {
    #[test]
    fn every_shader_is_spirv() {
        for s in [
            super::CHECKSUM_BUFFER,
            super::CHECKSUM_IMAGE,
            super::CONVERT_BUFFER,
            super::CONVERT_IMAGE,
        ] {
            assert_eq!(s.len() % 4, 0);
            assert_eq!(&s[..4], &0x0723_0203u32.to_le_bytes(), "SPIR-V magic");
        }
    }
}
