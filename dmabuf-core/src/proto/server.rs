//! The producer's end of one consumer's session: read `Hello`, answer `Welcome`, send each
//! buffer's fds once, then frames; track which buffers the consumer holds and accept a `Release`
//! only for a frame it holds. Whatever the consumer holds is given back (the tokens are dropped)
//! when the session ends, however it ends.

use super::channel::Channel;
use super::client::{fail, recv_or_fail};
use super::wire::{
    AddBuffer, Chunk, Frame, Goodbye, GoodbyeReason, Hello, Message, RemoveBuffer, Welcome,
    WirePlane, VERSION,
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
    chan: Channel,
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
    pub fn start(mut chan: Channel, welcome: &Welcome) -> Result<Self, ProtoError> {
        if let Err(e) = chan.send(&Message::Welcome(welcome.clone())) {
            return Err(parting_words(&mut chan).unwrap_or(e));
        }
        Ok(Self {
            chan,
            held: HashMap::new(),
            buffer_count: welcome.buffer_count,
            frames_sent: 0,
            releases: 0,
        })
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
        self.chan
            .send_with_fds(&msg, &fds)
            .map_err(|e| parting_words(&mut self.chan).unwrap_or(e))
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
            self.chan
                .send(&Message::RemoveBuffer(RemoveBuffer { buffer_id: id }))?;
        }
        self.chan.send(&Message::Welcome(welcome.clone()))?;
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
        self.chan
            .send(&Message::Frame(frame))
            .map_err(|e| parting_words(&mut self.chan).unwrap_or(e))?;
        self.held.insert(id, (seq, token));
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

    /// Handle every message waiting now, then wait up to `timeout` for more if none came back.
    pub fn pump(&mut self, timeout: Duration) -> Result<Pumped, ProtoError> {
        let deadline = Instant::now() + timeout;
        let mut released = 0;
        loop {
            let got = match self.chan.try_recv() {
                Ok(m) => m,
                Err(ProtoError::Closed) => return Ok(Pumped::Left),
                Err(e @ ProtoError::Io { .. }) => return Err(e),
                Err(e) => return Err(fail(&self.chan, e)),
            };
            match got {
                Some((Message::Release(r), _)) => match self.held.get(&r.buffer_id) {
                    Some((seq, _)) if *seq == r.seq => {
                        self.held.remove(&r.buffer_id);
                        self.releases += 1;
                        released += 1;
                        if timeout.is_zero() {
                            // One message per call without a wait: no further receive just
                            // to learn that nothing more is queued (a caller that polls sees
                            // the socket readable again if something is).
                            return Ok(Pumped::Released(released));
                        }
                    }
                    Some((seq, _)) => {
                        return Err(fail(
                            &self.chan,
                            ProtoError::BadRelease(format!(
                                "buffer {} holds frame {seq}, not {}",
                                r.buffer_id, r.seq
                            )),
                        ))
                    }
                    None => {
                        let why = if r.buffer_id >= self.buffer_count {
                            format!("buffer {} does not exist", r.buffer_id)
                        } else {
                            format!(
                                    "buffer {} is not held by this consumer (double release, or never sent)",
                                    r.buffer_id
                                )
                        };
                        return Err(fail(&self.chan, ProtoError::BadRelease(why)));
                    }
                },
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
                    return Err(fail(
                        &self.chan,
                        ProtoError::Unexpected {
                            expected: "Release or Goodbye",
                            got: other.name(),
                        },
                    ))
                }
                None => {
                    if released > 0 {
                        return Ok(Pumped::Released(released));
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || !super::channel::wait_readable(self.chan.as_fd(), Some(left))?
                    {
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
        let _ = self.chan.send(&Message::Goodbye(Goodbye {
            reason,
            message: message.to_string(),
        }));
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
        let Session { chan, held, .. } = self;
        chan.close_gracefully();
        drop(held);
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
