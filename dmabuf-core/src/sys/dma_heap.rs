//! `DMA_HEAP_IOCTL_ALLOC` on `/dev/dma_heap/<name>`.
//!
//! UAPI: `include/uapi/linux/dma-heap.h`.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DmaHeapAllocationData {
    /// Bytes to allocate.
    pub len: u64,
    /// The dma-buf fd returned.
    pub fd: u32,
    /// `O_RDWR | O_CLOEXEC` for the new fd.
    pub fd_flags: u32,
    /// Heap flags (none defined).
    pub heap_flags: u64,
}
const _: () = assert!(std::mem::size_of::<DmaHeapAllocationData>() == 24);

nix::ioctl_readwrite!(
    /// `DMA_HEAP_IOCTL_ALLOC`: allocate a dma-buf from the heap.
    dma_heap_ioctl_alloc,
    b'H',
    0x0,
    DmaHeapAllocationData
);

/// Allocate `len` bytes from the heap opened as `heap`; the new dma-buf is `O_RDWR|O_CLOEXEC`.
pub fn alloc(heap: BorrowedFd<'_>, len: u64) -> Result<OwnedFd, Errno> {
    let mut data = DmaHeapAllocationData {
        len,
        fd: 0,
        fd_flags: (nix::libc::O_RDWR | nix::libc::O_CLOEXEC) as u32,
        heap_flags: 0,
    };
    // SAFETY: `heap` is live for the call; `data` is a valid, writable struct of the size the
    // ioctl number encodes.
    unsafe { dma_heap_ioctl_alloc(heap.as_raw_fd(), &mut data) }?;
    // SAFETY: on success the kernel installed a new descriptor in `data.fd` that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fd as RawFd) })
}
