//! CPU access to frame memory: a persistent mapping per fd, and access guards that bracket every
//! read or write with `DMA_BUF_IOCTL_SYNC` on dma-bufs (restarting on `EINTR`/`EAGAIN`).

use crate::buffer::MemoryKind;
use crate::sys::dma_buf::{self, SyncAccess};
use crate::sys::mman::MappedRegion;
use nix::errno::Errno;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
/// Why a buffer could not be mapped or accessed.
pub enum MapError {
    #[error("mmap of {len} bytes failed: {source}")]
    /// `mmap` failed.
    Mmap {
        /// Bytes asked for.
        len: usize,
        /// The errno.
        source: Errno,
    },
    #[error("DMA_BUF_IOCTL_SYNC ({what}) failed: {source}")]
    /// `DMA_BUF_IOCTL_SYNC` failed.
    Sync {
        /// START or END, read or write.
        what: &'static str,
        /// The errno.
        source: Errno,
    },
    #[error("buffer is mapped read-only")]
    /// A write to a read-only mapping.
    ReadOnly,
}

/// A whole fd mapped into this process; unmapped on drop.
#[derive(Debug)]
pub struct CpuMapping {
    fd: Arc<OwnedFd>,
    region: MappedRegion,
    memory: MemoryKind,
}

impl CpuMapping {
    /// Map `len` bytes of `fd` (the caller has checked `len` against the fd's size).
    pub fn new(
        fd: Arc<OwnedFd>,
        len: u64,
        writable: bool,
        memory: MemoryKind,
    ) -> Result<Self, MapError> {
        let len = usize::try_from(len).map_err(|_| MapError::Mmap {
            len: usize::MAX,
            source: Errno::EOVERFLOW,
        })?;
        let region = MappedRegion::new(fd.as_fd(), len, writable)
            .map_err(|source| MapError::Mmap { len, source })?;
        Ok(Self { fd, region, memory })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Nothing mapped.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Start address, for host-pointer imports (the mapping stays valid while `self` lives).
    pub fn as_ptr(&self) -> *const u8 {
        self.region.as_ptr()
    }

    /// Start address for a writer outside Rust's borrows: a decoder writing through the
    /// picture pointers FFmpeg hands it. Such writes go between [`CpuMapping::begin_raw_write`]
    /// and [`CpuMapping::end_raw_write`].
    pub fn as_mut_ptr(&self) -> Result<*mut u8, MapError> {
        self.region.as_mut_ptr().ok_or(MapError::ReadOnly)
    }

    /// Open a read+write bracket that no guard tracks (see [`CpuMapping::as_mut_ptr`]).
    pub fn begin_raw_write(&self) -> Result<(), MapError> {
        self.sync(SyncAccess::ReadWrite, false)
    }

    /// Close the bracket [`CpuMapping::begin_raw_write`] opened.
    pub fn end_raw_write(&self) -> Result<(), MapError> {
        self.sync(SyncAccess::ReadWrite, true)
    }

    /// Open a read bracket that no guard tracks: for a reader outside Rust's borrows (a
    /// Python array viewing the mapping while the frame is held). Close it with
    /// [`CpuMapping::end_raw_read`].
    pub fn begin_raw_read(&self) -> Result<(), MapError> {
        self.sync(SyncAccess::Read, false)
    }

    /// Close the bracket [`CpuMapping::begin_raw_read`] opened.
    pub fn end_raw_read(&self) -> Result<(), MapError> {
        self.sync(SyncAccess::Read, true)
    }

    /// The mapped bytes, for a reader inside a bracket opened with
    /// [`CpuMapping::begin_raw_read`] (or over memfd memory, which needs none).
    pub fn bytes(&self) -> &[u8] {
        self.region.as_slice()
    }

    /// The kind of memory mapped (dma-buf accesses are bracketed with `DMA_BUF_IOCTL_SYNC`).
    pub fn memory(&self) -> MemoryKind {
        self.memory
    }

    fn sync(&self, access: SyncAccess, end: bool) -> Result<(), MapError> {
        if self.memory == MemoryKind::DmaBuf {
            dma_buf::sync(self.fd.as_fd(), access, end).map_err(|source| MapError::Sync {
                what: if end { "END" } else { "START" },
                source,
            })?;
        }
        Ok(())
    }

    /// Begin a CPU read; the bracket ends when the guard drops.
    pub fn read(&self) -> Result<ReadAccess<'_>, MapError> {
        self.sync(SyncAccess::Read, false)?;
        Ok(ReadAccess { map: self })
    }

    /// Begin a CPU read+write; the bracket ends when the guard drops.
    pub fn write(&mut self) -> Result<WriteAccess<'_>, MapError> {
        if !self.region.is_writable() {
            return Err(MapError::ReadOnly);
        }
        self.sync(SyncAccess::ReadWrite, false)?;
        Ok(WriteAccess { map: self })
    }
}

/// A read bracket over a [`CpuMapping`]; derefs to the mapped bytes.
pub struct ReadAccess<'a> {
    map: &'a CpuMapping,
}

impl Deref for ReadAccess<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.region.as_slice()
    }
}

impl Drop for ReadAccess<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.map.sync(SyncAccess::Read, true) {
            tracing::warn!("{e}");
        }
    }
}

/// A read+write bracket over a [`CpuMapping`]; derefs to the mapped bytes.
pub struct WriteAccess<'a> {
    map: &'a mut CpuMapping,
}

impl Deref for WriteAccess<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.region.as_slice()
    }
}

impl DerefMut for WriteAccess<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // Checked writable when the guard was made.
        self.map.region.as_mut_slice().unwrap_or(&mut [])
    }
}

impl Drop for WriteAccess<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.map.sync(SyncAccess::ReadWrite, true) {
            tracing::warn!("{e}");
        }
    }
}
