//! [`Receiver`]: the consumer's end of a stream, for programs that want frames in their own
//! event loop.
//!
//! A `Receiver` connects to a producer's socket, says which formats it can import (its
//! capabilities), and then yields [`ReceiverEvent`]s: buffers arriving (their fds checked, see
//! `docs/PROTOCOL.md`), frames, renegotiations and the end of the stream. A frame comes as a
//! [`FrameGuard`] that sends the `Release` when dropped, so a frame cannot be forgotten or
//! released twice. The receiver is [`AsFd`]: poll it for readability in calloop, mio, tokio or
//! a plain `poll(2)` loop and call [`Receiver::try_next_event`] when it is readable.
//!
//! ```no_run
//! use dmabuf_core::receiver::{Receiver, ReceiverEvent};
//! use dmabuf_core::{MemoryKind, PixelFormat};
//! use std::time::Duration;
//!
//! let caps = dmabuf_core::receiver::linear_caps(&[PixelFormat::Nv12], &[MemoryKind::Memfd]);
//! let rx = Receiver::connect("/tmp/dmabuf-frames.sock", caps, Duration::from_secs(5))?;
//! loop {
//!     match rx.next_event(None)? {
//!         ReceiverEvent::Frame(frame) => {
//!             // Read the pixels (frame.buffer(): fds and layout), then drop the guard.
//!             println!("frame {} in buffer {}", frame.seq(), frame.buffer_id());
//!         }
//!         ReceiverEvent::End(goodbye) => break,
//!         _ => {}
//!     }
//! }
//! # Ok::<(), dmabuf_core::proto::ProtoError>(())
//! ```

use crate::buffer::{FrameBuffer, MemoryKind};
use crate::format::{PixelFormat, MOD_LINEAR};
use crate::proto::client::{Client, Event};
use crate::proto::wire::{Cap, Frame, Goodbye, GoodbyeReason, Welcome};
use crate::proto::{Channel, ProtoError};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The longest a receiver sleeps on its ring's doorbell before it looks at the socket.
const RING_CHECK: Duration = Duration::from_millis(250);

/// What the producer did, as a [`Receiver`] reports it.
#[derive(Debug)]
pub enum ReceiverEvent {
    /// Buffer `id` arrived; [`Receiver::buffer`] gives its fds and layout. Import it now (once)
    /// and keep the import until [`ReceiverEvent::BufferRemoved`] or
    /// [`ReceiverEvent::Renegotiated`].
    BufferAdded(u32),
    /// A frame is ready; its buffer goes back to the producer when the guard is dropped.
    Frame(FrameGuard),
    /// The producer withdrew buffer `id`: drop what was imported from it.
    BufferRemoved(u32),
    /// The stream changed format (size, pixel format, colorimetry); every buffer was removed
    /// first and new ones follow. The new `Welcome`.
    Renegotiated(Box<Welcome>),
    /// The producer ended the stream, saying why.
    End(Goodbye),
}

/// The consumer's end of a stream (see the module documentation).
///
/// Cheap to share: frame guards hold a reference to the connection, so they may outlive the
/// `Receiver` value and be dropped on another thread.
#[derive(Debug)]
pub struct Receiver {
    client: Arc<Mutex<Client>>,
    /// A duplicate of the socket, for [`AsFd`] (the connection itself sits behind the lock).
    poll_fd: OwnedFd,
}

/// Capabilities for a receiver that reads LINEAR buffers of `formats` in `memory` kinds (a
/// CPU reader: every LINEAR layout is readable through a mapping).
pub fn linear_caps(formats: &[PixelFormat], memory: &[MemoryKind]) -> Vec<Cap> {
    let mask = memory.iter().fold(0, |m, k| m | k.bit());
    formats
        .iter()
        .map(|f| Cap {
            fourcc: f.fourcc(),
            memory_mask: mask,
            modifier: MOD_LINEAR,
        })
        .collect()
}

fn lock(c: &Mutex<Client>) -> MutexGuard<'_, Client> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl Receiver {
    /// Connect to the producer at `path`, offer `caps` (every fourcc × modifier × memory kind
    /// this program can import, see [`linear_caps`]) and wait up to `timeout` for its
    /// `Welcome`.
    ///
    /// Errors: [`ProtoError::Path`] when nothing listens there, [`ProtoError::Goodbye`] when
    /// the producer refuses (no format in common, full), [`ProtoError::Timeout`], and the
    /// protocol errors of `docs/PROTOCOL.md`.
    ///
    /// Frames and releases go through a shared-memory ring when the producer offers one
    /// (`docs/PROTOCOL.md`, "Ring"); [`Receiver::connect_with`] can ask for the socket alone.
    pub fn connect(
        path: impl AsRef<Path>,
        caps: Vec<Cap>,
        timeout: Duration,
    ) -> Result<Self, ProtoError> {
        Self::connect_with(path, caps, timeout, true)
    }

    /// [`Receiver::connect`], asking for the shared-memory ring (`ring`) or not.
    pub fn connect_with(
        path: impl AsRef<Path>,
        caps: Vec<Cap>,
        timeout: Duration,
        ring: bool,
    ) -> Result<Self, ProtoError> {
        let chan = Channel::connect(path.as_ref())?;
        Self::handshake_with(chan, caps, timeout, ring)
    }

    /// [`Receiver::connect`] over a connected channel.
    pub fn handshake(chan: Channel, caps: Vec<Cap>, timeout: Duration) -> Result<Self, ProtoError> {
        Self::handshake_with(chan, caps, timeout, true)
    }

    /// [`Receiver::connect_with`] over a connected channel.
    pub fn handshake_with(
        chan: Channel,
        caps: Vec<Cap>,
        timeout: Duration,
        ring: bool,
    ) -> Result<Self, ProtoError> {
        let poll_fd = chan
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| ProtoError::Io {
                op: "dup of the socket",
                source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        let client = Client::handshake_with(chan, caps, timeout, ring)?;
        Ok(Self {
            client: Arc::new(Mutex::new(client)),
            poll_fd,
        })
    }

    /// The stream's current format, colorimetry and buffer count.
    pub fn welcome(&self) -> Welcome {
        lock(&self.client).welcome().clone()
    }

    /// Buffer `id`'s fds and layout, while it is added.
    pub fn buffer(&self, id: u32) -> Option<FrameBuffer> {
        lock(&self.client).buffer(id).cloned()
    }

    /// The next event, waiting up to `timeout` (`None`: until one comes). A producer that goes
    /// silent past `timeout` gives [`ProtoError::Timeout`].
    ///
    /// The wait happens outside the connection's lock, so frame guards may be dropped (and
    /// their releases sent) from other threads meanwhile.
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<ReceiverEvent, ProtoError> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let timed_out = || ProtoError::Timeout {
            what: "the producer",
            ms: timeout.unwrap_or_default().as_millis() as u64,
        };
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            let bell = {
                let mut c = lock(&self.client);
                if c.uses_ring() {
                    // Sleep on the ring's doorbell, outside the lock.
                    c.busy();
                    if let Some(ev) = c.poll_event(false)? {
                        drop(c);
                        return Ok(self.wrap(ev));
                    }
                    if left.is_some_and(|l| l.is_zero()) {
                        // Returning empty-handed: the caller may poll the fd next.
                        let got = c.idle()?;
                        drop(c);
                        return got.map(|ev| self.wrap(ev)).ok_or_else(timed_out);
                    }
                    let bell = c.arm();
                    match c.poll_event(false) {
                        Ok(None) => {}
                        got => {
                            c.disarm();
                            drop(c);
                            if let Some(ev) = got? {
                                return Ok(self.wrap(ev));
                            }
                        }
                    }
                    bell
                } else {
                    None
                }
            };
            match bell {
                Some(bell) => {
                    let step = left.unwrap_or(RING_CHECK).min(RING_CHECK);
                    let rang = bell.wait(step);
                    let mut c = lock(&self.client);
                    c.disarm();
                    if !rang {
                        // Quiet for a while: the socket says whether the producer is there.
                        if let Some(ev) = c.poll_event(true)? {
                            drop(c);
                            return Ok(self.wrap(ev));
                        }
                    }
                }
                None => {
                    if let Some(ev) = self.try_next_event()? {
                        return Ok(ev);
                    }
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(timed_out());
                    }
                    crate::proto::channel::wait_readable(self.poll_fd.as_fd(), left)?;
                }
            }
        }
    }

    /// Whether frames and releases go through a shared-memory ring.
    pub fn uses_ring(&self) -> bool {
        lock(&self.client).uses_ring()
    }

    /// The next event if one is waiting, without blocking: call it when the fd polls
    /// readable, until it returns `Ok(None)`.
    pub fn try_next_event(&self) -> Result<Option<ReceiverEvent>, ProtoError> {
        // (The lock is released before `wrap` takes it again.)
        let got = lock(&self.client).next_event(Some(Duration::ZERO));
        match got {
            Ok(ev) => Ok(Some(self.wrap(ev))),
            Err(ProtoError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn wrap(&self, ev: Event) -> ReceiverEvent {
        match ev {
            Event::BufferAdded(id) => ReceiverEvent::BufferAdded(id),
            Event::BufferRemoved(id) => ReceiverEvent::BufferRemoved(id),
            Event::Renegotiated => {
                ReceiverEvent::Renegotiated(Box::new(lock(&self.client).welcome().clone()))
            }
            Event::End(g) => ReceiverEvent::End(g),
            Event::Frame(frame) => {
                let buffer = lock(&self.client)
                    .buffer(frame.buffer_id)
                    .cloned()
                    .expect("the client checked the frame's buffer");
                ReceiverEvent::Frame(FrameGuard {
                    frame,
                    buffer,
                    client: self.client.clone(),
                    released: false,
                })
            }
        }
    }

    /// Frames held now (guards not yet dropped).
    pub fn held_count(&self) -> usize {
        lock(&self.client).held_count()
    }

    /// Leave: say goodbye (`Leaving`) so that the producer reads why, and close.
    pub fn close(self, message: &str) {
        self.leave(message);
    }

    /// [`Receiver::close`] through a shared reference: say goodbye and shut the connection
    /// down, so that a thread waiting in [`Receiver::next_event`] wakes up with
    /// [`ProtoError::Closed`]. Frame guards dropped afterwards send nothing.
    pub fn leave(&self, message: &str) {
        lock(&self.client).goodbye(GoodbyeReason::Leaving, message);
    }
}

impl AsFd for Receiver {
    /// Readable when an event is waiting (or the producer closed): then call
    /// [`Receiver::try_next_event`] until it returns `Ok(None)`, and only then poll again. With
    /// the shared-memory ring, frames do not arrive on the socket: the `Ok(None)` asks the
    /// producer to send a `Wake` datagram with the next frame, which makes the fd readable (a
    /// [`Receiver::next_event`] in between sleeps on the ring's futex instead and takes that
    /// request back).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poll_fd.as_fd()
    }
}

/// A frame the consumer holds. Dropping it sends the `Release` that hands the buffer back to
/// the producer, exactly once.
#[derive(Debug)]
pub struct FrameGuard {
    frame: Frame,
    buffer: FrameBuffer,
    client: Arc<Mutex<Client>>,
    released: bool,
}

impl FrameGuard {
    /// The frame message: sequence number, timestamps (`pts_ns`, `publish_ns`, CLOCK_MONOTONIC
    /// nanoseconds), flags, checksum, per-plane chunks.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The buffer the frame is in: fds, their sizes and the plane layout.
    pub fn buffer(&self) -> &FrameBuffer {
        &self.buffer
    }

    /// The buffer the frame is in.
    pub fn buffer_id(&self) -> u32 {
        self.frame.buffer_id
    }

    /// The frame's sequence number.
    pub fn seq(&self) -> u64 {
        self.frame.seq
    }

    /// Whether the frame was still intact when this is called: `false` once the producer has
    /// dropped this consumer and may have reused the buffer (`docs/PROTOCOL.md`, "Reclaimed
    /// buffers"). Call it *after* using the pixels; a `false` means the result must be thrown
    /// away.
    pub fn is_intact(&self) -> bool {
        !lock(&self.client).frames_reclaimed()
    }

    /// Release now and report a failure to send (dropping releases too, ignoring errors).
    pub fn release(mut self) -> Result<(), ProtoError> {
        self.released = true;
        lock(&self.client).release(self.frame.buffer_id)
    }
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        if !self.released {
            let _ = lock(&self.client).release(self.frame.buffer_id);
        }
    }
}
