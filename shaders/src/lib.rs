//! Compute shaders for the Vulkan consumer.
//!
//! Empty until the Vulkan consumer lands (issue 4): it adds the WGSL/GLSL sources here and
//! compiles them to SPIR-V with naga in `build.rs`. The frame checksum those shaders must
//! reproduce is defined, with a CPU implementation, in `dmabuf_core::format::frame_checksum`.
