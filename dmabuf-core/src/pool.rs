//! A fixed set of frame buffers, allocated and mapped once, handed out as [`Lease`]s.
//!
//! A lease is the right to fill a buffer and to keep it while consumers read it; dropping the
//! last reference returns the buffer to the free list (share a lease between several consumers
//! with `Arc<Lease>`). Nothing is allocated per frame.

use crate::alloc::{AllocError, Allocator};
use crate::buffer::{AllocatorKind, FrameBuffer, MemoryKind};
use crate::format::{frame_checksum, plane_checksum, FrameFormat, FrameLayout};
use crate::mapping::{CpuMapping, MapError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
/// Why a pool could not be made.
pub enum PoolError {
    #[error("allocating buffer {index} of {count}: {source}")]
    /// Allocating buffer `index` of `count` failed.
    Alloc {
        /// Which buffer.
        index: usize,
        /// How many were asked for.
        count: usize,
        /// Why.
        source: AllocError,
    },
    #[error("mapping buffer {index}: {source}")]
    /// Mapping buffer `index` failed.
    Map {
        /// Which buffer.
        index: usize,
        /// Why.
        source: MapError,
    },
    #[error("a pool needs at least one buffer")]
    /// A pool of no buffers.
    Empty,
    #[error("buffer {index} is not laid out as {format} (or not of the first one's memory kind)")]
    /// Buffer `index` is not of the pool's format (or has no fd, or another memory kind).
    Mismatch {
        /// Which buffer.
        index: usize,
        /// The pool's format.
        format: FrameFormat,
    },
}

struct Slot {
    buffer: FrameBuffer,
    /// The mapping of fd 0 (every plane, for buffers with one fd).
    mapping: Mutex<CpuMapping>,
    /// Read-only mappings of fds 1.. (buffers with one fd per plane).
    more: Vec<Mutex<CpuMapping>>,
}

struct Inner {
    slots: Vec<Slot>,
    free: Mutex<VecDeque<u32>>,
    allocator: AllocatorKind,
    format: FrameFormat,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The producer's buffers.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("allocator", &self.inner.allocator)
            .field("format", &self.inner.format)
            .field("buffers", &self.inner.slots.len())
            .field("free", &self.free_count())
            .finish()
    }
}

impl Pool {
    /// Allocate and map `count` buffers for `format`, laid out as the allocator likes.
    pub fn new(
        allocator: &dyn Allocator,
        format: FrameFormat,
        count: usize,
    ) -> Result<Self, PoolError> {
        Self::build(allocator, format, count, |a| a.allocate(format))
    }

    /// Allocate and map `count` buffers laid out exactly as `layout` (for a decoder that writes
    /// into them with its own alignment; see [`FrameLayout::with_storage`]).
    pub fn with_layout(
        allocator: &dyn Allocator,
        layout: &FrameLayout,
        count: usize,
    ) -> Result<Self, PoolError> {
        Self::build(allocator, layout.format, count, |a| {
            a.allocate_layout(layout)
        })
    }

    fn build(
        allocator: &dyn Allocator,
        format: FrameFormat,
        count: usize,
        allocate: impl Fn(&dyn Allocator) -> Result<FrameBuffer, AllocError>,
    ) -> Result<Self, PoolError> {
        if count == 0 {
            return Err(PoolError::Empty);
        }
        let buffers = (0..count)
            .map(|index| {
                allocate(allocator).map_err(|source| PoolError::Alloc {
                    index,
                    count,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::mapped(buffers, allocator.kind(), format)
    }

    /// A pool over buffers made elsewhere (a V4L2 driver's exported capture buffers), all of
    /// `format` and made by `allocator`; each is mapped once, like allocated ones.
    pub fn from_buffers(
        buffers: Vec<FrameBuffer>,
        allocator: AllocatorKind,
        format: FrameFormat,
    ) -> Result<Self, PoolError> {
        if buffers.is_empty() {
            return Err(PoolError::Empty);
        }
        for (index, buffer) in buffers.iter().enumerate() {
            if buffer.layout.format != format
                || buffer.fds.is_empty()
                || buffer.memory != buffers[0].memory
            {
                return Err(PoolError::Mismatch { index, format });
            }
        }
        Self::mapped(buffers, allocator, format)
    }

    /// Map each buffer once (writable) and make them the pool, all free.
    fn mapped(
        buffers: Vec<FrameBuffer>,
        allocator: AllocatorKind,
        format: FrameFormat,
    ) -> Result<Self, PoolError> {
        let count = buffers.len();
        let mut slots = Vec::with_capacity(count);
        for (index, buffer) in buffers.into_iter().enumerate() {
            let mapping = CpuMapping::new(
                buffer.fds[0].clone(),
                buffer.fd_sizes[0],
                true,
                buffer.memory,
            )
            .map_err(|source| PoolError::Map { index, source })?;
            let more = (1..buffer.fds.len())
                .map(|k| {
                    CpuMapping::new(
                        buffer.fds[k].clone(),
                        buffer.fd_sizes[k],
                        false,
                        buffer.memory,
                    )
                    .map(Mutex::new)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| PoolError::Map { index, source })?;
            slots.push(Slot {
                buffer,
                mapping: Mutex::new(mapping),
                more,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                slots,
                free: Mutex::new((0..count as u32).collect()),
                allocator,
                format,
            }),
        })
    }

    /// Buffers in the pool.
    pub fn len(&self) -> usize {
        self.inner.slots.len()
    }

    /// No buffers.
    pub fn is_empty(&self) -> bool {
        self.inner.slots.is_empty()
    }

    /// Buffers free now (no lease out).
    pub fn free_count(&self) -> usize {
        lock(&self.inner.free).len()
    }

    /// Who made the buffers.
    pub fn allocator(&self) -> AllocatorKind {
        self.inner.allocator
    }

    /// The memory kind of every buffer.
    pub fn memory(&self) -> MemoryKind {
        self.inner.slots[0].buffer.memory
    }

    /// The frame format of every buffer.
    pub fn format(&self) -> FrameFormat {
        self.inner.format
    }

    /// Buffer `id`'s descriptor.
    pub fn buffer(&self, id: u32) -> Option<&FrameBuffer> {
        self.inner.slots.get(id as usize).map(|s| &s.buffer)
    }

    /// Where buffer `id` is mapped in this process (to recognise a pointer into it).
    pub fn base_ptr(&self, id: u32) -> Option<*const u8> {
        let slot = self.inner.slots.get(id as usize)?;
        Some(lock(&slot.mapping).as_ptr())
    }

    /// Whether `lease` is a buffer of this pool (not of another pool, even one of the same
    /// format).
    pub fn owns(&self, lease: &Lease) -> bool {
        Arc::ptr_eq(&self.inner, &lease.inner)
    }

    /// The least recently returned free buffer, if any.
    pub fn try_acquire(&self) -> Option<Lease> {
        self.try_acquire_leaving(0)
    }

    /// A free buffer only if more than `reserve` are free (checked and taken atomically), so
    /// one user (a decoder) cannot take the buffers another (the copy path) needs.
    pub fn try_acquire_leaving(&self, reserve: usize) -> Option<Lease> {
        let mut free = lock(&self.inner.free);
        if free.len() <= reserve {
            return None;
        }
        let id = free.pop_front()?;
        drop(free);
        Some(Lease {
            inner: self.inner.clone(),
            id,
        })
    }
}

/// Exclusive use of one pool buffer until dropped.
pub struct Lease {
    inner: Arc<Inner>,
    id: u32,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

impl Lease {
    /// The buffer's index in the pool (its wire `buffer_id`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The buffer: fds and layout.
    pub fn buffer(&self) -> &FrameBuffer {
        &self.inner.slots[self.id as usize].buffer
    }

    /// The frame checksum ([`frame_checksum`]) of the buffer's contents, each plane read from
    /// its own fd inside a CPU read bracket; `None` when the layout does not fit the memory.
    pub fn checksum(&self) -> Result<Option<u32>, MapError> {
        let slot = &self.inner.slots[self.id as usize];
        let b = &slot.buffer;
        if b.fds.len() == 1 {
            return self.with_bytes(|d| frame_checksum(d, &b.layout.planes));
        }
        let mut total = 0u32;
        for (i, (k, pl)) in b.planes().enumerate() {
            let m = match k {
                0 => lock(&slot.mapping),
                _ => lock(&slot.more[k - 1]),
            };
            let access = m.read()?;
            match plane_checksum(i as u32, &access, pl) {
                Some(sum) => total = total.wrapping_add(sum),
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    }

    /// Run `f` over the bytes of fd 0 (every plane, for one-fd buffers) inside a CPU read bracket (e.g. to checksum a frame a
    /// device wrote).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, MapError> {
        let mapping = lock(&self.inner.slots[self.id as usize].mapping);
        let access = mapping.read()?;
        Ok(f(&access))
    }

    /// Run `f` over the buffer's bytes inside a CPU write bracket.
    pub fn with_bytes_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, MapError> {
        let mut mapping = lock(&self.inner.slots[self.id as usize].mapping);
        let mut access = mapping.write()?;
        Ok(f(&mut access))
    }
}

impl Lease {
    /// Open a CPU write bracket that outlives any borrow and return the buffer's start address:
    /// for a decoder that writes the frame through raw pointers from its own threads. Close it
    /// with [`Lease::end_raw_write`] before the frame is published. The address stays valid
    /// while the lease lives.
    pub fn begin_raw_write(&self) -> Result<*mut u8, MapError> {
        let mapping = lock(&self.inner.slots[self.id as usize].mapping);
        let ptr = mapping.as_mut_ptr()?;
        mapping.begin_raw_write()?;
        Ok(ptr)
    }

    /// Close the bracket [`Lease::begin_raw_write`] opened.
    pub fn end_raw_write(&self) -> Result<(), MapError> {
        lock(&self.inner.slots[self.id as usize].mapping).end_raw_write()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        lock(&self.inner.free).push_back(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::MemfdAllocator;
    use crate::format::PixelFormat;

    #[test]
    fn a_reserve_is_left_for_others() {
        let fmt = FrameFormat::linear(PixelFormat::I420, 64, 48);
        let layout = FrameLayout::with_storage(fmt, 64, 64, 80).unwrap();
        let pool = Pool::with_layout(&MemfdAllocator::new(), &layout, 3).unwrap();
        assert_eq!(pool.buffer(0).unwrap().layout, layout);
        let a = pool.try_acquire_leaving(1).unwrap();
        let b = pool.try_acquire_leaving(1).unwrap();
        assert!(
            pool.try_acquire_leaving(1).is_none(),
            "the last one is reserved"
        );
        let c = pool
            .try_acquire()
            .expect("the reserve is there for try_acquire");
        let base = pool.base_ptr(c.id()).unwrap();
        assert_eq!(c.begin_raw_write().unwrap() as *const u8, base);
        c.end_raw_write().unwrap();
        drop((a, b, c));
        assert_eq!(pool.free_count(), 3);
    }

    #[test]
    fn leases_cycle_without_allocating() {
        let fmt = FrameFormat::linear(PixelFormat::Nv12, 64, 48);
        let pool = Pool::new(&MemfdAllocator::new(), fmt, 3).unwrap();
        let a = pool.try_acquire().unwrap();
        let b = pool.try_acquire().unwrap();
        let c = pool.try_acquire().unwrap();
        assert!(pool.try_acquire().is_none(), "only three buffers");
        assert_eq!((a.id(), b.id(), c.id()), (0, 1, 2));
        let shared = Arc::new(b);
        let second_holder = shared.clone();
        drop(shared);
        assert_eq!(pool.free_count(), 0, "still held by the second holder");
        drop(second_holder);
        assert_eq!(pool.try_acquire().unwrap().id(), 1);
        a.with_bytes_mut(|d| d[0] = 42).unwrap();
        drop(a);
        drop(c);
        assert_eq!(pool.free_count(), 3);
    }

    #[test]
    fn empty_pool_is_an_error() {
        let fmt = FrameFormat::linear(PixelFormat::Nv12, 64, 48);
        assert!(matches!(
            Pool::new(&MemfdAllocator::new(), fmt, 0),
            Err(PoolError::Empty)
        ));
    }
}
