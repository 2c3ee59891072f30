//! Sealed memfds: `memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING)`, sized, then sealed with
//! `F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL` so no process can shrink it under a mapping (SIGBUS).

use super::{AllocError, Allocator};
use crate::buffer::{AllocatorKind, FrameBuffer};
use crate::format::{FrameFormat, FrameLayout};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::os::fd::OwnedFd;

/// Create a memfd of `size` bytes with the given seals.
pub fn sealed_memfd(name: &str, size: u64, seals: SealFlag) -> Result<OwnedFd, Errno> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    nix::unistd::ftruncate(&fd, i64::try_from(size).map_err(|_| Errno::EOVERFLOW)?)?;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(fd)
}

#[derive(Debug, Default)]
/// Allocates sealed memfds (`memfd_create`, `F_SEAL_SHRINK | F_SEAL_GROW`): always available.
pub struct MemfdAllocator;

impl MemfdAllocator {
    /// The memfd allocator.
    pub fn new() -> Self {
        Self
    }
}

impl Allocator for MemfdAllocator {
    fn kind(&self) -> AllocatorKind {
        AllocatorKind::Memfd
    }

    fn allocate(&self, format: FrameFormat) -> Result<FrameBuffer, AllocError> {
        self.allocate_layout(&FrameLayout::gpu_friendly(format)?)
    }

    fn allocate_layout(&self, layout: &FrameLayout) -> Result<FrameBuffer, AllocError> {
        let format = layout.format;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        let fd = sealed_memfd("dmabuf-frame", layout.size, seals).map_err(|source| {
            AllocError::Failed {
                allocator: AllocatorKind::Memfd,
                what: "memfd_create/ftruncate/F_ADD_SEALS",
                format,
                source,
            }
        })?;
        let size = layout.size;
        Ok(FrameBuffer::single(
            layout.clone(),
            fd,
            size,
            AllocatorKind::Memfd,
        ))
    }
}
