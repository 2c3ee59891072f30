//! `DMA_BUF_IOCTL_SYNC`: bracket CPU access to a dma-buf mapping.
//!
//! UAPI: `include/uapi/linux/dma-buf.h`; semantics: the kernel's "Buffer Sharing and
//! Synchronization (dma-buf)" documentation. The ioctl may fail with `EINTR`/`EAGAIN` and must
//! then be restarted; [`sync`] does that.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DmaBufSync {
    pub flags: u64,
}
const _: () = assert!(std::mem::size_of::<DmaBufSync>() == 8);

pub const DMA_BUF_SYNC_READ: u64 = 1 << 0;
pub const DMA_BUF_SYNC_WRITE: u64 = 1 << 1;
pub const DMA_BUF_SYNC_START: u64 = 0;
pub const DMA_BUF_SYNC_END: u64 = 1 << 2;

nix::ioctl_write_ptr!(dma_buf_ioctl_sync, b'b', 0, DmaBufSync);

/// Which CPU access a sync bracket covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAccess {
    Read,
    Write,
    ReadWrite,
}

impl SyncAccess {
    fn bits(self) -> u64 {
        match self {
            SyncAccess::Read => DMA_BUF_SYNC_READ,
            SyncAccess::Write => DMA_BUF_SYNC_WRITE,
            SyncAccess::ReadWrite => DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE,
        }
    }
}

/// Start (`end == false`) or end a CPU access bracket, restarting on `EINTR`/`EAGAIN`.
pub fn sync(fd: BorrowedFd<'_>, access: SyncAccess, end: bool) -> Result<(), Errno> {
    let arg = DmaBufSync {
        flags: access.bits()
            | if end {
                DMA_BUF_SYNC_END
            } else {
                DMA_BUF_SYNC_START
            },
    };
    loop {
        // SAFETY: `fd` is a live descriptor for the duration of the call and `arg` is a valid
        // `struct dma_buf_sync` that the kernel only reads.
        match unsafe { dma_buf_ioctl_sync(fd.as_raw_fd(), &arg) } {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
}
