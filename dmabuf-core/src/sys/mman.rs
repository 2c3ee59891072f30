//! `mmap(2)`/`munmap(2)` of a shared buffer, as an owned region that unmaps on drop.

use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};
use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

/// A `MAP_SHARED` mapping of `len` bytes of an fd, unmapped on drop.
///
/// Callers must only map fds whose size cannot shrink under the mapping (sealed memfds, dma-bufs),
/// which the allocators and the protocol's validation guarantee; otherwise touching a page past
/// the end raises SIGBUS.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the region is plain shared memory with no thread affinity; access goes through
// `&self`/`&mut self` like any owned byte buffer.
unsafe impl Send for MappedRegion {}
// SAFETY: shared references only hand out `&[u8]`.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    /// Map `len` bytes of `fd` from offset 0, read-only or read-write.
    pub fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> Result<Self, Errno> {
        let nz = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh mapping at an address the kernel picks aliases no Rust object; the fd
        // is live for the call and the mapping keeps its own reference to the file.
        let ptr = unsafe { nix::sys::mman::mmap(None, nz, prot, MapFlags::MAP_SHARED, fd, 0) }?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
            writable,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Mapped `PROT_WRITE`.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The start address (for host-pointer imports).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Start address for writing; `None` for a read-only mapping.
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        self.writable.then_some(self.ptr.as_ptr())
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is mapped readable for the life of `self`, and the fd cannot
        // shrink (see the type's docs), so every byte is accessible.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes as 32-bit atomic words (`len / 4` of them): the view for memory that
    /// another process writes at the same time (the ring), where plain `&[u8]` would be a data
    /// race. Writable only through a writable mapping (a store to a read-only one faults).
    pub fn as_atomic_words(&self) -> &[std::sync::atomic::AtomicU32] {
        // SAFETY: the mapping is page-aligned (so 4-aligned) and `len / 4` whole words lie in
        // it for the life of `self`; `AtomicU32` has `u32`'s size and alignment, and atomic
        // accesses are defined even while another process (or thread) writes the words.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().cast::<std::sync::atomic::AtomicU32>(),
                self.len / 4,
            )
        }
    }

    /// Mutable view; `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: mapped writable for the life of `self`; `&mut self` makes this the only view
        // handed out by this process.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region `new` mapped; no slice borrowed from it outlives
        // `self`.
        if let Err(e) = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) } {
            tracing::error!("munmap of {} bytes failed: {e}", self.len);
        }
    }
}
