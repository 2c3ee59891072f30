//! dma-buf heaps: `/dev/dma_heap/system` gives cached system-memory dma-bufs that any device
//! driver can import. See the kernel's `Documentation/userspace-api/dma-buf-heaps.rst`.

use super::{AllocError, Allocator};
use crate::buffer::{AllocatorKind, FrameBuffer};
use crate::format::{FrameFormat, FrameLayout};
use crate::sys;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

pub const SYSTEM_HEAP: &str = "/dev/dma_heap/system";

#[derive(Debug)]
/// Allocates from a dma-heap (`/dev/dma_heap/*`, `DMA_HEAP_IOCTL_ALLOC`): cached system memory any device can import.
pub struct DmaHeapAllocator {
    heap: File,
}

impl DmaHeapAllocator {
    /// Open the heap device at `path`.
    pub fn open(path: &str) -> Result<Self, AllocError> {
        let heap = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| AllocError::Unavailable {
                allocator: AllocatorKind::DmaHeap,
                path: path.to_string(),
                source,
            })?;
        Ok(Self { heap })
    }

    /// Open `/dev/dma_heap/system`.
    pub fn open_system() -> Result<Self, AllocError> {
        Self::open(SYSTEM_HEAP)
    }
}

impl Allocator for DmaHeapAllocator {
    fn kind(&self) -> AllocatorKind {
        AllocatorKind::DmaHeap
    }

    fn allocate(&self, format: FrameFormat) -> Result<FrameBuffer, AllocError> {
        self.allocate_layout(&FrameLayout::gpu_friendly(format)?)
    }

    fn allocate_layout(&self, layout: &FrameLayout) -> Result<FrameBuffer, AllocError> {
        let format = layout.format;
        let fd = sys::dma_heap::alloc(self.heap.as_fd(), layout.size).map_err(|source| {
            AllocError::Failed {
                allocator: AllocatorKind::DmaHeap,
                what: "DMA_HEAP_IOCTL_ALLOC",
                format,
                source,
            }
        })?;
        let size = layout.size;
        Ok(FrameBuffer::single(
            layout.clone(),
            fd,
            size,
            AllocatorKind::DmaHeap,
        ))
    }
}
