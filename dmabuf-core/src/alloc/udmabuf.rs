//! udmabuf: a memfd (sealed against shrinking, as the driver requires) turned into a dma-buf by
//! `/dev/udmabuf`. The memfd is closed once the dma-buf exists; the dma-buf keeps its pages.

use super::{sealed_memfd, AllocError, Allocator};
use crate::buffer::{AllocatorKind, FrameBuffer};
use crate::format::{FrameFormat, FrameLayout};
use crate::sys;
use nix::fcntl::SealFlag;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

pub const UDMABUF_DEV: &str = "/dev/udmabuf";

#[derive(Debug)]
/// Turns sealed memfds into dma-bufs with `/dev/udmabuf` (`UDMABUF_CREATE`).
pub struct UdmabufAllocator {
    dev: File,
}

impl UdmabufAllocator {
    /// Open `/dev/udmabuf`.
    pub fn open() -> Result<Self, AllocError> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(UDMABUF_DEV)
            .map_err(|source| AllocError::Unavailable {
                allocator: AllocatorKind::Udmabuf,
                path: UDMABUF_DEV.to_string(),
                source,
            })?;
        Ok(Self { dev })
    }

    /// Create a dma-buf over a memfd with the given seals (exposed so tests can show that an
    /// unsealed memfd is refused by the kernel).
    pub fn create_from_memfd(
        &self,
        format: FrameFormat,
        seals: SealFlag,
    ) -> Result<FrameBuffer, AllocError> {
        self.create_with_layout(&FrameLayout::gpu_friendly(format)?, seals)
    }

    fn create_with_layout(
        &self,
        layout: &FrameLayout,
        seals: SealFlag,
    ) -> Result<FrameBuffer, AllocError> {
        let format = layout.format;
        let failed = |what, source| AllocError::Failed {
            allocator: AllocatorKind::Udmabuf,
            what,
            format,
            source,
        };
        let memfd = sealed_memfd("dmabuf-udmabuf", layout.size, seals)
            .map_err(|e| failed("memfd_create/ftruncate/F_ADD_SEALS", e))?;
        let fd = sys::udmabuf::create(self.dev.as_fd(), memfd.as_fd(), 0, layout.size)
            .map_err(|e| failed("UDMABUF_CREATE", e))?;
        let size = layout.size;
        Ok(FrameBuffer::single(
            layout.clone(),
            fd,
            size,
            AllocatorKind::Udmabuf,
        ))
    }
}

impl Allocator for UdmabufAllocator {
    fn kind(&self) -> AllocatorKind {
        AllocatorKind::Udmabuf
    }

    fn allocate(&self, format: FrameFormat) -> Result<FrameBuffer, AllocError> {
        // udmabuf requires F_SEAL_SHRINK and refuses F_SEAL_WRITE; GROW and SEAL are fine.
        self.create_from_memfd(
            format,
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        )
    }

    fn allocate_layout(&self, layout: &FrameLayout) -> Result<FrameBuffer, AllocError> {
        self.create_with_layout(
            layout,
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        )
    }
}
