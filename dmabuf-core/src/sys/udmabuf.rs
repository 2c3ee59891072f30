//! `UDMABUF_CREATE` on `/dev/udmabuf`: turn a range of a sealed memfd into a dma-buf.
//!
//! UAPI: `include/uapi/linux/udmabuf.h`. The memfd must carry `F_SEAL_SHRINK` and must not carry
//! `F_SEAL_WRITE`, or the kernel answers `EINVAL`/`EPERM`.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `struct udmabuf_create`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UdmabufCreate {
    /// The sealed memfd to export.
    pub memfd: u32,
    /// `UDMABUF_FLAGS_CLOEXEC`.
    pub flags: u32,
    /// Byte offset in the memfd (page-aligned).
    pub offset: u64,
    /// Bytes (page-aligned).
    pub size: u64,
}
const _: () = assert!(std::mem::size_of::<UdmabufCreate>() == 24);

/// Close the dma-buf on exec.
pub const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

nix::ioctl_write_ptr!(
    /// `UDMABUF_CREATE`: a dma-buf over a range of a sealed memfd.
    udmabuf_ioctl_create,
    b'u',
    0x42,
    UdmabufCreate
);

/// Create a dma-buf over `memfd[offset..offset+size]` (page aligned) through the opened
/// `/dev/udmabuf` device `dev`.
pub fn create(
    dev: BorrowedFd<'_>,
    memfd: BorrowedFd<'_>,
    offset: u64,
    size: u64,
) -> Result<OwnedFd, Errno> {
    let arg = UdmabufCreate {
        memfd: memfd.as_raw_fd() as u32,
        flags: UDMABUF_FLAGS_CLOEXEC,
        offset,
        size,
    };
    // SAFETY: both descriptors are live for the call; `arg` is a valid struct the kernel reads.
    let fd = unsafe { udmabuf_ioctl_create(dev.as_raw_fd(), &arg) }?;
    // SAFETY: the ioctl returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
