//! The producer's end of one consumer's session: read `Hello`, answer `Welcome`, send each
//! buffer's fds once, then frames; track which buffers the consumer holds and accept a `Release`
//! only for a frame it holds. Whatever the consumer holds is given back (the tokens are dropped)
//! when the session ends, however it ends.

use super::channel::Channel;
use super::client::{fail, recv_or_fail};
use super::ring::{ProducerRing, Wake};
use super::wire::{
    AddBuffer, Chunk, Frame, Goodbye, GoodbyeReason, Hello, Message, Release, RemoveBuffer,
    RingMsg, Welcome, WirePlane, HELLO_FLAG_RING, VERSION,
};
use super::ProtoError;
use crate::buffer::{FrameBuffer, MemoryKind};
use crate::format::FrameFormat;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Wait for the consumer's `Hello` and check its version.
pub fn read_hello(chan: &mut Channel, timeout: Duration) -> Result<Hello, ProtoError> {
    let (msg, _fds) = recv_or_fail(chan, Some(timeout), "the consumer's Hello")?;
    let hello = match msg {
        Message::Hello(h) => h,
        other => {
            return Err(fail(
                chan,
                ProtoError::Unexpected {
                    expected: "Hello",
                    got: other.name(),
                },
            ))
        }
    };
    if hello.version != VERSION {
        return Err(fail(
            chan,
            ProtoError::Version {
                ours: VERSION,
                theirs: hello.version,
            },
        ));
    }
    Ok(hello)
}

/// Does the consumer accept `format` in `memory`?
pub fn accepts(hello: &Hello, format: &FrameFormat, memory: MemoryKind) -> bool {
    let fourcc = format.pixel.fourcc();
    hello.caps.iter().any(|c| {
        c.fourcc == fourcc && c.modifier == format.modifier && c.memory_mask & memory.bit() != 0
    })
}

/// Whether the consumer's `Hello` asks for a ring.
pub fn wants_ring(hello: &Hello) -> bool {
    hello.flags & HELLO_FLAG_RING != 0
}

/// What happened while pumping the consumer's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// The consumer is still there; this many buffers came back.
    Released(usize),
    /// The consumer said goodbye or closed the connection.
    Left,
}

/// One consumer. `T` is what the producer keeps alive while the consumer holds a frame
/// (a pool lease).
pub struct Session<T> {
    // (Dropped in this order: the connection closes, the ring says the session ended, then
    // what the consumer held goes back.)
    chan: Channel,
    /// The shared-memory ring, when the consumer asked for one and it was set up.
    ring: Option<ProducerRing>,
    /// Messages sent on the socket (the ring's `msgs_sent`).
    msgs_sent: u32,
    held: HashMap<u32, (u64, T)>,
    buffer_count: u32,
    /// Frames sent to this consumer.
    pub frames_sent: u64,
    /// Releases received.
    pub releases: u64,
}

impl<T> std::fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("held", &self.held.len())
            .field("frames_sent", &self.frames_sent)
            .finish()
    }
}

impl<T> Session<T> {
    /// Answer the handshake.
    ///
    /// A consumer that said goodbye and closed before this (or [`Session::add_buffer`]) could
    /// send is reported as [`ProtoError::Goodbye`] with its reason, not as a closed socket.
    pub fn start(chan: Channel, welcome: &Welcome) -> Result<Self, ProtoError> {
        Self::start_with(chan, welcome, false)
    }

    /// [`Session::start`], then, when `ring` (the consumer's `Hello` asked for one and the
    /// producer allows it), the `Ring` message with the ring's memfd: frames and releases
    /// travel through it from now on.
    pub fn start_with(chan: Channel, welcome: &Welcome, ring: bool) -> Result<Self, ProtoError> {
        let mut sess = Self {
            chan,
            ring: None,
            msgs_sent: 0,
            held: HashMap::new(),
            buffer_count: welcome.buffer_count,
            frames_sent: 0,
            releases: 0,
        };
        sess.send(&Message::Welcome(welcome.clone()), &[])?;
        if ring {
            // (The descriptor is closed once sent: the mapping keeps the ring.)
            // (Installed first, so that sending it is counted and rung like every message.)
            let (r, fd) = ProducerRing::new()?;
            sess.ring = Some(r);
            let msg = Message::Ring(RingMsg {
                size: super::ring::RING_BYTES as u32,
            });
            sess.send(&msg, &[fd.as_fd()])?;
        }
        Ok(sess)
    }

    /// Whether frames and releases go through the shared-memory ring.
    pub fn uses_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Send `msg` on the socket (counted, and the ring's doorbell rung: a consumer asleep on
    /// it looks at the socket). A failure reports the consumer's parting Goodbye if it sent
    /// one.
    pub fn send(
        &mut self,
        msg: &Message,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), ProtoError> {
        if let Err(e) = self.chan.send_with_fds(msg, fds) {
            return Err(parting_words(&mut self.chan).unwrap_or(e));
        }
        self.msgs_sent = self.msgs_sent.wrapping_add(1);
        if let Some(r) = &self.ring {
            r.ring(self.msgs_sent);
        }
        Ok(())
    }

    /// The connection.
    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    /// Send buffer `id`'s fds and layout (once per buffer per consumer).
    pub fn add_buffer(&mut self, id: u32, buf: &FrameBuffer) -> Result<(), ProtoError> {
        let planes = buf
            .planes()
            .map(|(fd_index, p)| WirePlane {
                fd_index: fd_index as u32,
                stride: p.stride,
                offset: p.offset,
                size: p.size(),
            })
            .collect();
        let msg = Message::AddBuffer(AddBuffer {
            buffer_id: id,
            n_fds: buf.fds.len() as u32,
            planes,
        });
        let fds: Vec<_> = buf.fds.iter().map(|f| f.as_fd()).collect();
        self.send(&msg, &fds)
    }

    /// Change the stream's format mid-stream: remove every buffer, then send the new Welcome
    /// (the caller sends the new buffers with [`Session::add_buffer`]). The consumer must hold
    /// nothing (wait for its releases first).
    pub fn renegotiate(&mut self, welcome: &Welcome) -> Result<(), ProtoError> {
        if let Some(id) = self.held.keys().next() {
            return Err(ProtoError::BadBuffer {
                id: *id,
                why: "still held by the consumer; cannot renegotiate yet".into(),
            });
        }
        for id in 0..self.buffer_count {
            self.send(&Message::RemoveBuffer(RemoveBuffer { buffer_id: id }), &[])?;
        }
        self.send(&Message::Welcome(welcome.clone()), &[])?;
        self.buffer_count = welcome.buffer_count;
        Ok(())
    }

    /// Publish a frame; `token` is kept until the consumer releases the buffer.
    pub fn send_frame(&mut self, frame: Frame, token: T) -> Result<(), ProtoError> {
        let id = frame.buffer_id;
        if self.held.contains_key(&id) {
            return Err(ProtoError::BadFrame(format!(
                "buffer {id} is still held by this consumer"
            )));
        }
        let seq = frame.seq;
        match &mut self.ring {
            Some(r) => {
                // Held from the moment the consumer can see it.
                r.push_frame(frame, self.msgs_sent);
                self.held.insert(id, (seq, token));
                if r.ring(self.msgs_sent) == Wake::Socket {
                    self.send(&Message::Wake, &[])?;
                }
            }
            None => {
                self.send(&Message::Frame(frame), &[])?;
                self.held.insert(id, (seq, token));
            }
        }
        self.frames_sent += 1;
        Ok(())
    }

    /// Frames this consumer holds.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Whether this consumer holds buffer `id`.
    pub fn holds(&self, id: u32) -> bool {
        self.held.contains_key(&id)
    }

    /// Take the releases waiting in the ring (none without one): no system call. A broken
    /// ring or release is answered with a Goodbye and returned.
    pub fn pump_ring(&mut self) -> Result<usize, ProtoError> {
        let mut released = 0;
        while let Some(ring) = &mut self.ring {
            match ring.pop_release() {
                Ok(Some(r)) => {
                    if let Err(e) = self.take_release(r) {
                        return Err(self.fail(e));
                    }
                    released += 1;
                }
                Ok(None) => break,
                Err(why) => return Err(self.fail(ProtoError::BadRing(why))),
            }
        }
        Ok(released)
    }

    /// Before sleeping until the consumer releases something (`true`) and after (`false`):
    /// a consumer with a ring then sends `Wake` after each release. True when a release is
    /// already waiting in the ring (do not sleep).
    pub fn set_waiting(&self, on: bool) -> bool {
        match &self.ring {
            Some(r) => {
                r.set_waiting(on);
                on && r.has_release()
            }
            None => false,
        }
    }

    /// Check a release (of a frame this consumer holds, with its seq) and take the buffer
    /// back.
    fn take_release(&mut self, r: Release) -> Result<(), ProtoError> {
        match self.held.get(&r.buffer_id) {
            Some((seq, _)) if *seq == r.seq => {
                self.held.remove(&r.buffer_id);
                self.releases += 1;
                Ok(())
            }
            Some((seq, _)) => Err(ProtoError::BadRelease(format!(
                "buffer {} holds frame {seq}, not {}",
                r.buffer_id, r.seq
            ))),
            None => Err(ProtoError::BadRelease(
                if r.buffer_id >= self.buffer_count {
                    format!("buffer {} does not exist", r.buffer_id)
                } else {
                    format!(
                        "buffer {} is not held by this consumer (double release, or never sent)",
                        r.buffer_id
                    )
                },
            )),
        }
    }

    /// Handle every message waiting now, then wait up to `timeout` for more if none came back.
    pub fn pump(&mut self, timeout: Duration) -> Result<Pumped, ProtoError> {
        let deadline = Instant::now() + timeout;
        let mut released = self.pump_ring()?;
        loop {
            let got = match self.chan.try_recv() {
                Ok(m) => m,
                Err(ProtoError::Closed) => return Ok(Pumped::Left),
                Err(e @ ProtoError::Io { .. }) => return Err(e),
                Err(e) => return Err(self.fail(e)),
            };
            match got {
                Some((Message::Release(r), _)) => {
                    if let Err(e) = self.take_release(r) {
                        return Err(self.fail(e));
                    }
                    released += 1;
                    if timeout.is_zero() {
                        // One message per call without a wait: no further receive just
                        // to learn that nothing more is queued (a caller that polls sees
                        // the socket readable again if something is).
                        return Ok(Pumped::Released(released));
                    }
                }
                Some((Message::Wake, _)) if self.ring.is_some() => {
                    released += self.pump_ring()?;
                    if timeout.is_zero() {
                        // As for a Release: one message per call, so that a consumer sending
                        // Wakes without end cannot keep the producer here.
                        return Ok(Pumped::Released(released));
                    }
                }
                Some((Message::Goodbye(g), _)) => {
                    if g.reason != GoodbyeReason::Leaving && g.reason != GoodbyeReason::EndOfStream
                    {
                        tracing::warn!(
                            "consumer left: {:?}: {}",
                            g.reason,
                            super::wire::printable(&g.message)
                        );
                    }
                    return Ok(Pumped::Left);
                }
                Some((other, _)) => {
                    return Err(self.fail(ProtoError::Unexpected {
                        expected: "Release or Goodbye",
                        got: other.name(),
                    }))
                }
                None => {
                    if released > 0 {
                        return Ok(Pumped::Released(released));
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Pumped::Released(0));
                    }
                    // Sleeping until the consumer releases something: with a ring, it sends
                    // a Wake after its next release (and one already there means no sleep).
                    let ready = self.set_waiting(true)
                        || super::channel::wait_readable(self.chan.as_fd(), Some(left))?;
                    self.set_waiting(false);
                    released += self.pump_ring()?;
                    if released > 0 {
                        return Ok(Pumped::Released(released));
                    }
                    if !ready {
                        return Ok(Pumped::Released(0));
                    }
                }
            }
        }
    }

    /// End the stream: say goodbye, then give the consumer up to `grace` to release what it
    /// holds and close. Everything still held is dropped with the session.
    ///
    /// The connection is closed (gracefully: [`Channel::close_gracefully`], so the consumer
    /// reads the Goodbye) *before* the buffers it still holds go back to the pool: a consumer
    /// that checks its connection after using a frame (PROTOCOL.md, "Reclaimed buffers") can
    /// tell whether the producer may have written it meanwhile.
    pub fn finish(mut self, reason: GoodbyeReason, message: &str, grace: Duration) {
        self.say_goodbye(reason, message);
        let deadline = Instant::now() + grace;
        while !self.held.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.pump(left) {
                Ok(Pumped::Released(_)) => {}
                _ => break,
            }
        }
        let Session {
            chan, ring, held, ..
        } = self;
        chan.close_gracefully();
        // (The ring says the session ended before the buffers go back.)
        drop(ring);
        drop(held);
    }

    /// Tell the consumer what it did wrong (a Goodbye, counted and rung like every message)
    /// and hand the error back.
    fn fail(&mut self, e: ProtoError) -> ProtoError {
        let _ = self.send(&super::client::goodbye_for(&e), &[]);
        e
    }

    /// Send Goodbye(`reason`, `message`), best effort; the session goes on until finished.
    pub fn say_goodbye(&mut self, reason: GoodbyeReason, message: &str) {
        let _ = self.send(
            &Message::Goodbye(Goodbye {
                reason,
                message: message.to_string(),
            }),
            &[],
        );
    }
}

/// The per-plane chunks for a frame that fills `buf` entirely.
pub fn full_chunks(buf: &FrameBuffer) -> Vec<Chunk> {
    buf.layout
        .planes
        .iter()
        .map(|p| Chunk {
            bytes_used: p.size().min(u64::from(u32::MAX)) as u32,
            flags: 0,
        })
        .collect()
}

/// After a send failed: the Goodbye the peer sent before it closed, if still unread, as
/// [`ProtoError::Goodbye`].
fn parting_words(chan: &mut Channel) -> Option<ProtoError> {
    loop {
        match chan.try_recv() {
            Ok(Some((Message::Goodbye(Goodbye { reason, message }), _))) => {
                return Some(ProtoError::Goodbye { reason, message })
            }
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}
