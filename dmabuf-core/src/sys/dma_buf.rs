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
    /// `DMA_BUF_SYNC_*` bits.
    pub flags: u64,
}
const _: () = assert!(std::mem::size_of::<DmaBufSync>() == 8);

/// The CPU reads.
pub const DMA_BUF_SYNC_READ: u64 = 1 << 0;
/// The CPU writes.
pub const DMA_BUF_SYNC_WRITE: u64 = 1 << 1;
/// Start of a CPU access.
pub const DMA_BUF_SYNC_START: u64 = 0;
/// End of a CPU access.
pub const DMA_BUF_SYNC_END: u64 = 1 << 2;

nix::ioctl_write_ptr!(
    /// `DMA_BUF_IOCTL_SYNC`: bracket a CPU access to a dma-buf.
    dma_buf_ioctl_sync,
    b'b',
    0,
    DmaBufSync
);

/// Which CPU access a sync bracket covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAccess {
    /// Wait for writers (the caller will read).
    Read,
    /// Wait for readers and writers (the caller will write).
    Write,
    /// Both.
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

/// `struct dma_buf_export_sync_file` (Linux 6.0+).
#[repr(C)]
#[derive(Debug, Default)]
pub struct DmaBufExportSyncFile {
    /// `DMA_BUF_SYNC_READ`/`WRITE`: which fences to export.
    pub flags: u32,
    /// The sync file returned.
    pub fd: i32,
}
const _: () = assert!(std::mem::size_of::<DmaBufExportSyncFile>() == 8);

nix::ioctl_readwrite!(
    /// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`: the dma-buf's pending fences as a sync file.
    dma_buf_ioctl_export_sync_file,
    b'b',
    2,
    DmaBufExportSyncFile
);

/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`: a sync file that signals when the dma-buf's pending work
/// conflicting with `access` is done (for `Read`: every writer). Implicit sync for an importer
/// that waits on it before touching the buffer.
pub fn export_sync_file(
    fd: BorrowedFd<'_>,
    access: SyncAccess,
) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    let mut arg = DmaBufExportSyncFile {
        flags: access.bits() as u32,
        fd: -1,
    };
    loop {
        // SAFETY: `fd` is live for the call and `arg` is a valid, writable struct of the size
        // the ioctl number encodes.
        match unsafe { dma_buf_ioctl_export_sync_file(fd.as_raw_fd(), &mut arg) } {
            Ok(_) => break,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: on success the kernel installed a new sync-file descriptor for us alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(arg.fd) })
}
