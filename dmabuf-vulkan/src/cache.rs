//! [`ImportCache`]: each buffer of a stream imported once, kept in step with the stream.

use dmabuf_core::receiver::{Receiver, ReceiverEvent};
use dmabuf_core::FrameBuffer;
use std::collections::HashMap;

/// The imports of one stream's buffers, by buffer id (the wire's `buffer_id`), kept in step
/// with the stream's events ([`ImportCache::update`]): a buffer is imported once, when its
/// `AddBuffer` arrives; its import is dropped (freeing the Vulkan objects) when the producer
/// removes it; every import is dropped on a renegotiation (new `Welcome`: new buffers follow)
/// and at the end of the stream. After a reconnection, [`ImportCache::clear`] (the new
/// producer's ids name other buffers).
///
/// `T` is what the application keeps per buffer: an [`crate::Imported`] by default, or its
/// own bundle (a `wgpu` import, descriptor sets, CPU mappings).
#[derive(Debug)]
pub struct ImportCache<T = crate::Imported> {
    map: HashMap<u32, T>,
}

impl<T> Default for ImportCache<T> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<T> ImportCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Follow `event` from `rx`: `BufferAdded(id)` imports the buffer with `import` (its
    /// descriptor as the receiver holds it) and keeps the result, replacing an older import
    /// of that id; `BufferRemoved(id)` drops it; `Renegotiated` and `End` drop every import;
    /// a `Frame` changes nothing (look its buffer up with [`ImportCache::get`]). An error of
    /// `import` is returned and nothing is kept for that id.
    pub fn update<E>(
        &mut self,
        rx: &Receiver,
        event: &ReceiverEvent,
        import: impl FnOnce(&FrameBuffer) -> Result<T, E>,
    ) -> Result<(), E> {
        match event {
            ReceiverEvent::BufferAdded(id) => {
                self.map.remove(id);
                if let Some(buf) = rx.buffer(*id) {
                    self.map.insert(*id, import(&buf)?);
                }
            }
            ReceiverEvent::BufferRemoved(id) => {
                self.map.remove(id);
            }
            ReceiverEvent::Renegotiated(_) | ReceiverEvent::End(_) => self.map.clear(),
            ReceiverEvent::Frame(_) => {}
        }
        Ok(())
    }

    /// The import of buffer `id`, if it was added and not removed since.
    pub fn get(&self, id: u32) -> Option<&T> {
        self.map.get(&id)
    }

    /// Drop every import (after a reconnection, or before the device goes away).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Buffers imported now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No buffer imported.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
