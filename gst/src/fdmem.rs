//! Shared buffers as GStreamer memories: `GstFdMemory` for memfds, `GstDmaBufMemory` for
//! dma-bufs, one per descriptor, each owning a duplicate of it. The only `unsafe` in the
//! plugin: handing a raw descriptor to GStreamer's allocators.
#![allow(unsafe_code)]

use dmabuf_core::{FrameBuffer, MemoryKind};
use gst_allocators::prelude::*;
use std::os::fd::IntoRawFd;

/// One memory per descriptor of `buffer`, each holding its own duplicate of the descriptor
/// (closed when GStreamer frees the memory) and kept mapped once mapped. `read_only` marks them
/// so that no element maps them for writing.
pub fn wrap(buffer: &FrameBuffer, read_only: bool) -> Result<Vec<gst::Memory>, String> {
    let mut out = Vec::with_capacity(buffer.fds.len());
    for (fd, &size) in buffer.fds.iter().zip(&buffer.fd_sizes) {
        let dup = fd
            .try_clone()
            .map_err(|e| format!("dup of a buffer descriptor: {e}"))?;
        let size = usize::try_from(size).map_err(|_| "buffer too large".to_string())?;
        let raw = dup.into_raw_fd();
        let mem = match buffer.memory {
            // SAFETY: `raw` is a descriptor this process owns (a fresh dup); the memory takes
            // ownership and closes it when freed (no DONT_CLOSE flag); `size` is the fd's size.
            MemoryKind::Memfd => unsafe {
                gst_allocators::FdAllocator::new().alloc_fd(
                    raw,
                    size,
                    gst_allocators::FdMemoryFlags::KEEP_MAPPED,
                )
            },
            // SAFETY: as above, for a dma-buf (GStreamer brackets CPU maps with
            // DMA_BUF_IOCTL_SYNC).
            MemoryKind::DmaBuf => unsafe {
                gst_allocators::DmaBufAllocator::new().alloc_dmabuf_with_flags(
                    raw,
                    size,
                    gst_allocators::FdMemoryFlags::KEEP_MAPPED,
                )
            },
        }
        .map_err(|e| format!("wrapping a {} descriptor: {e}", buffer.memory))?;
        let mut mem = mem;
        if read_only {
            if let Some(m) = mem.get_mut() {
                // SAFETY: `get_mut` proved this the only reference to a valid GstMemory; the
                // flags word is plain data (gstreamer-rs has no setter for memory flags).
                unsafe {
                    (*m.as_mut_ptr()).mini_object.flags |= gst::ffi::GST_MEMORY_FLAG_READONLY;
                }
            }
        }
        out.push(mem);
    }
    Ok(out)
}

/// The descriptor number of a memory this module made (to recognise a pool buffer).
pub fn fd_of(mem: &gst::MemoryRef) -> Option<i32> {
    mem.downcast_memory_ref::<gst_allocators::FdMemory>()
        .map(|m| m.fd())
}

/// Offsets (into the buffer's memories laid end to end) and strides of each plane.
pub fn plane_offsets(buffer: &FrameBuffer) -> (Vec<usize>, Vec<i32>) {
    let mut bases = Vec::with_capacity(buffer.fd_sizes.len());
    let mut at = 0usize;
    for &s in &buffer.fd_sizes {
        bases.push(at);
        at += s as usize;
    }
    buffer
        .planes()
        .map(|(k, pl)| (bases[k] + pl.offset as usize, pl.stride as i32))
        .unzip()
}
