//! [`FrameBuffer`]: an immutable description of one frame's memory, and the kinds of memory.

use crate::format::{FrameLayout, PlaneLayout};
use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// What kind of fd carries the frame (decides how consumers may import it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// A sealed memfd: CPU mapping, Vulkan host-pointer import.
    Memfd,
    /// A dma-buf: CPU mapping with `DMA_BUF_IOCTL_SYNC`, Vulkan dma-buf import.
    DmaBuf,
}

impl MemoryKind {
    /// Every kind.
    pub const ALL: [MemoryKind; 2] = [MemoryKind::Memfd, MemoryKind::DmaBuf];

    /// Wire value (also the bit index in capability masks).
    pub fn wire(self) -> u32 {
        match self {
            MemoryKind::Memfd => 1,
            MemoryKind::DmaBuf => 2,
        }
    }

    /// The kind of a wire value.
    pub fn from_wire(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.wire() == v)
    }

    /// Bit in a capability mask.
    pub fn bit(self) -> u32 {
        1 << self.wire()
    }

    /// The name used in logs and statistics.
    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::Memfd => "memfd",
            MemoryKind::DmaBuf => "dma-buf",
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which allocator made a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocatorKind {
    /// Sealed memfds.
    Memfd,
    /// A dma-heap (`/dev/dma_heap/system`).
    DmaHeap,
    /// udmabuf (memfds made dma-bufs).
    Udmabuf,
    /// GBM buffer objects on a DRM card node.
    Gbm,
    /// Not an allocator of ours: a V4L2 driver's own capture buffers, exported as dma-bufs
    /// (`VIDIOC_EXPBUF`).
    V4l2,
    /// Not an allocator of ours: another program's buffers received through PipeWire
    /// (`SPA_DATA_MemFd` or `SPA_DATA_DmaBuf` blocks), passed on as they are.
    PipeWire,
}

impl AllocatorKind {
    /// Every kind.
    pub const ALL: [AllocatorKind; 6] = [
        AllocatorKind::Memfd,
        AllocatorKind::DmaHeap,
        AllocatorKind::Udmabuf,
        AllocatorKind::Gbm,
        AllocatorKind::V4l2,
        AllocatorKind::PipeWire,
    ];

    /// Wire value (Welcome `allocator`).
    pub fn wire(self) -> u32 {
        match self {
            AllocatorKind::Memfd => 1,
            AllocatorKind::DmaHeap => 2,
            AllocatorKind::Udmabuf => 3,
            AllocatorKind::Gbm => 4,
            AllocatorKind::V4l2 => 5,
            AllocatorKind::PipeWire => 6,
        }
    }

    /// The kind of a wire value.
    pub fn from_wire(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.wire() == v)
    }

    /// The name used on command lines and in statistics.
    pub fn name(self) -> &'static str {
        match self {
            AllocatorKind::Memfd => "memfd",
            AllocatorKind::DmaHeap => "dma-heap",
            AllocatorKind::Udmabuf => "udmabuf",
            AllocatorKind::Gbm => "gbm",
            AllocatorKind::V4l2 => "v4l2",
            AllocatorKind::PipeWire => "pipewire",
        }
    }

    /// The kind of memory it makes; `None` for [`AllocatorKind::PipeWire`], whose buffers
    /// are whatever the peer made (each [`FrameBuffer`] says).
    pub fn memory(self) -> Option<MemoryKind> {
        match self {
            AllocatorKind::Memfd => Some(MemoryKind::Memfd),
            AllocatorKind::PipeWire => None,
            _ => Some(MemoryKind::DmaBuf),
        }
    }

    /// Buffers made elsewhere (a capture driver's, a PipeWire peer's), not by an allocator of
    /// ours: never chosen with `--alloc`.
    pub fn is_foreign(self) -> bool {
        matches!(self, AllocatorKind::V4l2 | AllocatorKind::PipeWire)
    }
}

impl fmt::Display for AllocatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One frame's memory: the fds, their sizes, and where each plane lives.
///
/// Planes name the fd they live in by index; buffers this crate allocates use one fd for every
/// plane, buffers from elsewhere (V4L2 multi-planar) may use one fd per plane.
#[derive(Debug, Clone)]
pub struct FrameBuffer {
    /// Where each plane lives (offsets within its fd).
    pub layout: FrameLayout,
    /// The descriptors (one, or one per plane).
    pub fds: Vec<Arc<OwnedFd>>,
    /// Size of each fd in bytes (`lseek(SEEK_END)`), same order as `fds`.
    pub fd_sizes: Vec<u64>,
    /// For each plane, the index into `fds`.
    pub plane_fds: Vec<usize>,
    /// What kind of fds these are.
    pub memory: MemoryKind,
    /// Who made them.
    pub allocator: AllocatorKind,
}

impl FrameBuffer {
    /// A buffer whose planes all live in one fd, made by one of our allocators (memfd for
    /// [`AllocatorKind::PipeWire`], which makes none).
    pub fn single(
        layout: FrameLayout,
        fd: OwnedFd,
        fd_size: u64,
        allocator: AllocatorKind,
    ) -> Self {
        let n = layout.planes.len();
        Self {
            layout,
            fds: vec![Arc::new(fd)],
            fd_sizes: vec![fd_size],
            plane_fds: vec![0; n],
            memory: allocator.memory().unwrap_or(MemoryKind::Memfd),
            allocator,
        }
    }

    /// Each plane with the index of the fd it lives in.
    pub fn planes(&self) -> impl Iterator<Item = (usize, &PlaneLayout)> {
        self.plane_fds
            .iter()
            .copied()
            .zip(self.layout.planes.iter())
    }
}
