//! The buffer pool `dmabufpipesink` proposes upstream: its buffers are the publisher's shared
//! buffers (`GstFdMemory`/`GstDmaBufMemory` with a `GstVideoMeta` for the layout), so an
//! element that takes the pool draws each frame straight into shared memory.
//!
//! A buffer is handed out only when the publisher's pool has it free (every consumer released
//! it); the lease travels with it until the sink publishes it or GStreamer gives it back.

use crate::fdmem;
use dmabuf_core::pool::Lease;
use dmabuf_core::publisher::Publisher;
use gst::glib;
use gst::subclass::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The sink's publisher, shared with its pool.
pub type SharedPublisher = Arc<Mutex<Option<Publisher>>>;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

glib::wrapper! {
    /// A pool over a publisher's shared buffers.
    pub struct SharedPool(ObjectSubclass<imp::SharedPool>) @extends gst::BufferPool, gst::Object;
}

impl SharedPool {
    /// A pool lending `publisher`'s buffers of `info`'s format.
    pub fn new(publisher: SharedPublisher, info: gst_video::VideoInfo) -> Self {
        let pool: Self = glib::Object::new();
        *lock(&pool.imp().inner) = Some(imp::Inner {
            publisher,
            info,
            idle: HashMap::new(),
            fd_ids: HashMap::new(),
            lent: HashMap::new(),
            out: Default::default(),
            parked: HashMap::new(),
        });
        pool
    }

    /// The lease of `buffer` if it is one of this pool's (taking it: the caller publishes it).
    pub fn take_lease(&self, buffer: &gst::BufferRef) -> Option<Lease> {
        let fd = fdmem::fd_of(buffer.peek_memory(0))?;
        let mut inner = lock(&self.imp().inner);
        let inner = inner.as_mut()?;
        let id = *inner.fd_ids.get(&fd)?;
        inner.lent.remove(&id)
    }
}

mod imp {
    use super::*;

    pub struct Inner {
        pub publisher: SharedPublisher,
        pub info: gst_video::VideoInfo,
        /// Wrappers of buffers not lent now, by buffer id (made once per buffer).
        pub idle: HashMap<u32, gst::Buffer>,
        /// Descriptor number of each wrapper's first memory → buffer id.
        pub fd_ids: HashMap<i32, u32>,
        /// Leases of the buffers lent upstream, by buffer id.
        pub lent: HashMap<u32, Lease>,
        /// Wrappers GStreamer still holds (lent, or published and kept: a sink's last sample,
        /// a queue), by buffer id: such a buffer is not lent again until its wrapper is back.
        pub out: std::collections::HashSet<u32>,
        /// Leases the publisher gave while their wrapper was still out, kept from the pool
        /// until it comes back.
        pub parked: HashMap<u32, Lease>,
    }

    #[derive(Default)]
    pub struct SharedPool {
        pub inner: Mutex<Option<Inner>>,
        flushing: AtomicBool,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SharedPool {
        const NAME: &'static str = "GstDmabufPipePool";
        type Type = super::SharedPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for SharedPool {}
    impl GstObjectImpl for SharedPool {}

    impl SharedPool {
        fn wrap(&self, lease: &Lease, info: &gst_video::VideoInfo) -> Result<gst::Buffer, String> {
            let mut buffer = gst::Buffer::new();
            {
                let bm = buffer.get_mut().expect("a new buffer is writable");
                for mem in fdmem::wrap(lease.buffer(), false)? {
                    bm.append_memory(mem);
                }
                add_layout(bm, lease, info)?;
            }
            Ok(buffer)
        }
    }

    /// The shared buffer's layout as a `GstVideoMeta`.
    fn add_layout(
        bm: &mut gst::BufferRef,
        lease: &Lease,
        info: &gst_video::VideoInfo,
    ) -> Result<(), String> {
        let (offsets, strides) = fdmem::plane_offsets(lease.buffer());
        gst_video::VideoMeta::add_full(
            bm,
            gst_video::VideoFrameFlags::empty(),
            info.format(),
            info.width(),
            info.height(),
            &offsets,
            &strides,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    impl BufferPoolImpl for SharedPool {
        fn options() -> &'static [&'static str] {
            &["GstBufferPoolOptionVideoMeta"]
        }

        fn start(&self) -> bool {
            // Nothing to preallocate: buffers are wrapped when first lent.
            self.flushing.store(false, Ordering::SeqCst);
            true
        }

        fn stop(&self) -> bool {
            if let Some(inner) = lock(&self.inner).as_mut() {
                inner.idle.clear();
                inner.fd_ids.clear();
                inner.lent.clear();
                inner.out.clear();
                inner.parked.clear();
            }
            true
        }

        fn flush_start(&self) {
            self.flushing.store(true, Ordering::SeqCst);
        }

        fn flush_stop(&self) {
            self.flushing.store(false, Ordering::SeqCst);
        }

        fn acquire_buffer(
            &self,
            params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let dontwait =
                params.is_some_and(|p| p.flags().contains(gst::BufferPoolAcquireFlags::DONTWAIT));
            let (publisher, info) = {
                let inner = lock(&self.inner);
                let inner = inner.as_ref().ok_or(gst::FlowError::Flushing)?;
                (inner.publisher.clone(), inner.info.clone())
            };
            // Wait (serving the connections) until the publisher's pool has a buffer free.
            let lease = loop {
                if self.flushing.load(Ordering::SeqCst) {
                    return Err(gst::FlowError::Flushing);
                }
                let mut p = lock(&publisher);
                let p = p.as_mut().ok_or(gst::FlowError::Flushing)?;
                match p.acquire(Duration::from_millis(if dontwait { 0 } else { 20 })) {
                    Ok(Some(lease)) => {
                        let mut guard = lock(&self.inner);
                        let inner = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
                        if inner.out.contains(&lease.id()) {
                            // Its wrapper is still held downstream: not writable yet.
                            inner.parked.insert(lease.id(), lease);
                            continue;
                        }
                        break lease;
                    }
                    Ok(None) if dontwait => return Err(gst::FlowError::Eos),
                    Ok(None) => continue,
                    Err(e) => {
                        gst::error!(crate::CAT, imp = self, "acquiring a shared buffer: {e}");
                        return Err(gst::FlowError::Error);
                    }
                }
            };
            let id = lease.id();
            let mut guard = lock(&self.inner);
            let inner = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
            let buffer = match inner.idle.remove(&id) {
                // GstBufferPool's reset on release strips metas that are not POOLED: the
                // layout goes back on.
                Some(mut b) if b.meta::<gst_video::VideoMeta>().is_none() => {
                    if let Some(bm) = b.get_mut() {
                        let _ = add_layout(bm, &lease, &info);
                    }
                    b
                }
                Some(b) => b,
                None => {
                    let b = self.wrap(&lease, &info).map_err(|e| {
                        gst::error!(crate::CAT, imp = self, "buffer {id}: {e}");
                        gst::FlowError::Error
                    })?;
                    if let Some(fd) = fdmem::fd_of(b.peek_memory(0)) {
                        inner.fd_ids.insert(fd, id);
                    }
                    b
                }
            };
            inner.lent.insert(id, lease);
            inner.out.insert(id);
            Ok(buffer)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            let Some(fd) = fdmem::fd_of(buffer.peek_memory(0)) else {
                return;
            };
            let mut guard = lock(&self.inner);
            let Some(inner) = guard.as_mut() else {
                return;
            };
            if let Some(&id) = inner.fd_ids.get(&fd) {
                // Not published (flushed, dropped upstream): the lease goes back to the pool;
                // so does one parked while this wrapper was out.
                inner.lent.remove(&id);
                inner.parked.remove(&id);
                inner.out.remove(&id);
                inner.idle.insert(id, buffer);
            }
        }

        fn free_buffer(&self, buffer: gst::Buffer) {
            self.release_buffer(buffer);
        }
    }
}
