//! The consumer's end of a session: `Hello` → `Welcome` → buffers and frames, with every message
//! checked against what came before (buffer ids in range and sent once, frames only on known
//! buffers the consumer is not still holding, sequence numbers increasing).

use super::channel::Channel;
use super::validate::validate_add_buffer;
use super::wire::{
    Cap, Frame, Goodbye, GoodbyeReason, Hello, Message, Release, Welcome, WireError, MAX_SEQ_STEP,
    VERSION,
};
use super::ProtoError;
use crate::buffer::FrameBuffer;
use std::time::Duration;

/// What the producer did.
#[derive(Debug)]
pub enum Event {
    /// A buffer arrived (its fds are validated and owned by the client).
    BufferAdded(u32),
    /// A frame is ready in a buffer; call [`Client::release`] when done with it.
    Frame(Frame),
    /// The producer withdrew a buffer.
    BufferRemoved(u32),
    /// The producer changed the stream's format mid-stream (every buffer was removed first);
    /// [`Client::welcome`] is the new one, and new buffers follow.
    Renegotiated,
    /// The producer ended the stream.
    End(Goodbye),
}

#[derive(Debug)]
/// The consumer's end of a session, checking every message against what came before.
pub struct Client {
    chan: Channel,
    welcome: Welcome,
    /// What we offered in Hello (a renegotiated format must be among them too).
    caps: Vec<Cap>,
    buffers: Vec<Option<FrameBuffer>>,
    /// For each buffer id, the seq of the frame the consumer still holds in it.
    held: Vec<Option<u64>>,
    last_seq: Option<u64>,
    /// Messages read ahead by [`Client::frames_reclaimed`] (or the error that ended reading).
    queued: std::collections::VecDeque<Result<(Message, Vec<std::os::fd::OwnedFd>), ProtoError>>,
}

impl Client {
    /// Say hello with `caps` and wait for the producer's `Welcome`.
    pub fn handshake(
        mut chan: Channel,
        caps: Vec<Cap>,
        timeout: Duration,
    ) -> Result<Client, ProtoError> {
        chan.send(&Message::Hello(Hello {
            version: VERSION,
            caps: caps.clone(),
        }))?;
        let (msg, _fds) = recv_or_fail(&mut chan, Some(timeout), "the producer's Welcome")?;
        let welcome = match msg {
            Message::Welcome(w) => w,
            Message::Goodbye(g) => {
                return Err(ProtoError::Goodbye {
                    reason: g.reason,
                    message: g.message,
                })
            }
            other => {
                return Err(fail(
                    &chan,
                    ProtoError::Unexpected {
                        expected: "Welcome",
                        got: other.name(),
                    },
                ))
            }
        };
        if welcome.version != VERSION {
            return Err(fail(
                &chan,
                ProtoError::Version {
                    ours: VERSION,
                    theirs: welcome.version,
                },
            ));
        }
        if let Err(e) = check_offered(&caps, &welcome) {
            return Err(fail(&chan, e));
        }
        let n = welcome.buffer_count as usize;
        Ok(Client {
            chan,
            welcome,
            caps,
            buffers: (0..n).map(|_| None).collect(),
            held: vec![None; n],
            last_seq: None,
            queued: Default::default(),
        })
    }

    /// The stream's current `Welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Buffer `id`, while added.
    pub fn buffer(&self, id: u32) -> Option<&FrameBuffer> {
        self.buffers.get(id as usize).and_then(|b| b.as_ref())
    }

    /// Frames held (not yet released).
    pub fn held_count(&self) -> usize {
        self.held.iter().filter(|h| h.is_some()).count()
    }

    /// The next event, waiting at most `timeout` (`None`: forever). A protocol violation is
    /// answered with a `Goodbye` naming it and returned as the error.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Event, ProtoError> {
        let (msg, fds) = match self.queued.pop_front() {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e),
            None => recv_or_fail(&mut self.chan, timeout, "the producer")?,
        };
        self.handle(msg, fds).map_err(|e| fail(&self.chan, e))
    }

    /// Whether the frames this consumer holds may have been overwritten: the producer ended
    /// the connection and not by ending the stream (a `Goodbye` other than end of stream or
    /// leaving, or none). The producer reuses a buffer a consumer holds only after dropping
    /// that consumer and closing its connection (PROTOCOL.md, "Reclaimed buffers"), so a frame
    /// used before this says `true` was intact. Reads what is queued to find the Goodbye; those
    /// messages are still returned by [`Client::next_event`], in order.
    pub fn frames_reclaimed(&mut self) -> bool {
        if !self.chan.peer_closed() {
            return false;
        }
        // Everything the producer sent before closing is queued: read it all.
        while !matches!(self.queued.back(), Some(Err(_))) {
            match recv_or_fail(&mut self.chan, Some(Duration::ZERO), "the producer") {
                Ok(m) => self.queued.push_back(Ok(m)),
                Err(ProtoError::Timeout { .. }) => break,
                Err(e) => self.queued.push_back(Err(e)),
            }
        }
        !self.queued.iter().any(|m| {
            matches!(
                m,
                Ok((
                    Message::Goodbye(Goodbye {
                        reason: GoodbyeReason::EndOfStream | GoodbyeReason::Leaving,
                        ..
                    }),
                    _
                ))
            )
        })
    }

    fn handle(
        &mut self,
        msg: Message,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<Event, ProtoError> {
        let count = self.buffers.len();
        match msg {
            Message::AddBuffer(a) => {
                let id = a.buffer_id;
                let slot = self.buffers.get(id as usize).ok_or(ProtoError::BadBuffer {
                    id,
                    why: format!("id out of range (the producer announced {count} buffers)"),
                })?;
                if slot.is_some() {
                    return Err(ProtoError::BadBuffer {
                        id,
                        why: "sent twice".into(),
                    });
                }
                let buf = validate_add_buffer(&a, fds, &self.welcome)?;
                self.buffers[id as usize] = Some(buf);
                Ok(Event::BufferAdded(id))
            }
            Message::Frame(f) => {
                let id = f.buffer_id;
                let Some(buf) = self.buffers.get(id as usize).and_then(|b| b.as_ref()) else {
                    return Err(ProtoError::BadFrame(format!(
                        "buffer {id} is not added (never added, or removed)"
                    )));
                };
                if let Some(seq) = self.held[id as usize] {
                    return Err(ProtoError::BadFrame(format!(
                        "buffer {id} reused while we still hold frame {seq} in it"
                    )));
                }
                if f.chunks.len() != buf.layout.planes.len() {
                    return Err(ProtoError::BadFrame(format!(
                        "{} chunks for {} planes",
                        f.chunks.len(),
                        buf.layout.planes.len()
                    )));
                }
                // A chunk covers its whole plane: stride x rows (capped at 2^32-1).
                for (p, (c, pl)) in f.chunks.iter().zip(&buf.layout.planes).enumerate() {
                    let want = pl.size().min(u64::from(u32::MAX)) as u32;
                    if c.bytes_used != want {
                        return Err(ProtoError::BadFrame(format!(
                            "chunk {p}: bytes_used {} (the plane is {want} bytes: stride x rows)",
                            c.bytes_used
                        )));
                    }
                }
                if self.last_seq.is_some_and(|s| f.seq <= s) {
                    return Err(ProtoError::BadFrame(format!(
                        "sequence went backwards ({} after {})",
                        f.seq,
                        self.last_seq.unwrap_or_default()
                    )));
                }
                if let Some(s) = self.last_seq {
                    if f.seq - s > MAX_SEQ_STEP {
                        return Err(ProtoError::BadFrame(format!(
                            "sequence jumps by {} (from {s} to {}); a step is at most \
                             {MAX_SEQ_STEP} ({} frames skipped)",
                            f.seq - s,
                            f.seq,
                            MAX_SEQ_STEP - 1
                        )));
                    }
                }
                self.last_seq = Some(f.seq);
                self.held[id as usize] = Some(f.seq);
                Ok(Event::Frame(f))
            }
            Message::RemoveBuffer(r) => {
                let id = r.buffer_id;
                match self.buffers.get_mut(id as usize) {
                    Some(slot @ Some(_)) => {
                        if self.held[id as usize].is_some() {
                            return Err(ProtoError::BadBuffer {
                                id,
                                why: "removed while we hold a frame in it".into(),
                            });
                        }
                        *slot = None;
                        Ok(Event::BufferRemoved(id))
                    }
                    _ => Err(ProtoError::BadBuffer {
                        id,
                        why: "removed but never added".into(),
                    }),
                }
            }
            Message::Welcome(w) => {
                // Renegotiation: only once every buffer is gone, same version, a format we
                // offered.
                if let Some(id) = self.buffers.iter().position(Option::is_some) {
                    return Err(ProtoError::BadBuffer {
                        id: id as u32,
                        why: "still added when the producer sent a new Welcome (remove every \
                              buffer first)"
                            .into(),
                    });
                }
                if w.version != VERSION {
                    return Err(ProtoError::Version {
                        ours: VERSION,
                        theirs: w.version,
                    });
                }
                check_offered(&self.caps, &w)?;
                let n = w.buffer_count as usize;
                self.buffers = (0..n).map(|_| None).collect();
                self.held = vec![None; n];
                self.welcome = w;
                Ok(Event::Renegotiated)
            }
            Message::Goodbye(g) => Ok(Event::End(g)),
            other => Err(ProtoError::Unexpected {
                expected: "AddBuffer, Frame, RemoveBuffer, Welcome or Goodbye",
                got: other.name(),
            }),
        }
    }

    /// Hand the frame in `buffer_id` back to the producer.
    pub fn release(&mut self, buffer_id: u32) -> Result<(), ProtoError> {
        self.release_sent(buffer_id).map(|_| ())
    }

    /// [`Client::release`], saying whether the `Release` went out: `true` proves that the
    /// connection was still open when the frame was done with, so the producer had not reused
    /// its buffer (it closes a consumer's connection before reusing what it held: PROTOCOL.md,
    /// "Reclaimed buffers") — the check after use, at no cost beyond the release itself.
    /// `false`: the producer has closed; see [`Client::frames_reclaimed`].
    pub fn release_sent(&mut self, buffer_id: u32) -> Result<bool, ProtoError> {
        let seq = self
            .held
            .get_mut(buffer_id as usize)
            .and_then(|h| h.take())
            .ok_or_else(|| ProtoError::BadRelease(format!("we hold no frame in {buffer_id}")))?;
        match self
            .chan
            .send(&Message::Release(Release { buffer_id, seq }))
        {
            Ok(()) => Ok(true),
            // The producer may already be gone at the end of a stream.
            Err(ProtoError::Closed) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Leave politely.
    /// Say goodbye and end the connection so that the producer reads the reason: shut down
    /// writing, then read (and drop) whatever it had queued for us, so that closing does not
    /// reset the connection under the Goodbye (see [`Channel::close_gracefully`]).
    pub fn goodbye(&mut self, reason: GoodbyeReason, message: &str) {
        let _ = self.chan.send(&Message::Goodbye(Goodbye {
            reason,
            message: message.to_string(),
        }));
        self.chan.shutdown_and_drain();
    }
}

/// Receive one message; a malformed one is answered with a Goodbye naming the problem.
/// Is what the producer chose among what we offered?
fn check_offered(caps: &[Cap], welcome: &Welcome) -> Result<(), ProtoError> {
    let fourcc = welcome.pixel.fourcc();
    let ok = caps.iter().any(|c| {
        c.fourcc == fourcc
            && c.modifier == welcome.modifier
            && c.memory_mask & welcome.memory.bit() != 0
    });
    if ok {
        Ok(())
    } else {
        Err(ProtoError::Unsupported(format!(
            "producer chose {} modifier {:#x} in {}, which we did not offer",
            welcome.pixel, welcome.modifier, welcome.memory
        )))
    }
}

pub(crate) fn recv_or_fail(
    chan: &mut Channel,
    timeout: Option<Duration>,
    what: &'static str,
) -> Result<(Message, Vec<std::os::fd::OwnedFd>), ProtoError> {
    match chan.recv(timeout, what) {
        Ok(m) => Ok(m),
        // A Welcome of another protocol version (its length differs too).
        Err(ProtoError::Wire(WireError::Version { theirs })) => Err(fail(
            chan,
            ProtoError::Version {
                ours: VERSION,
                theirs,
            },
        )),
        Err(e @ (ProtoError::Closed | ProtoError::Timeout { .. } | ProtoError::Io { .. })) => {
            Err(e)
        }
        Err(e) => Err(fail(chan, e)),
    }
}

/// Tell the peer what it did wrong (best effort) and hand the error back.
pub(crate) fn fail(chan: &Channel, e: ProtoError) -> ProtoError {
    let reason = match e {
        ProtoError::Version { .. } => GoodbyeReason::VersionMismatch,
        ProtoError::Unsupported(_) => GoodbyeReason::Unsupported,
        _ => GoodbyeReason::ProtocolError,
    };
    let _ = chan.send(&Message::Goodbye(Goodbye {
        reason,
        message: e.to_string(),
    }));
    e
}
