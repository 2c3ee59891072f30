//! The consumer's end of a session: `Hello` → `Welcome` → buffers and frames, with every message
//! checked against what came before (buffer ids in range and sent once, frames only on known
//! buffers the consumer is not still holding, sequence numbers increasing).

use super::channel::Channel;
use super::ring::{ConsumerRing, Doorbell, RingFrame, Wake, AWAKE, WAITS_FUTEX, WAITS_SOCKET};
use super::validate::validate_add_buffer;
use super::wire::{
    Cap, Frame, Goodbye, GoodbyeReason, Hello, Message, Release, Welcome, WireError,
    HELLO_FLAG_RING, MAX_SEQ_STEP, VERSION,
};
use super::ProtoError;
use crate::buffer::FrameBuffer;
use std::time::{Duration, Instant};

/// The longest a consumer with a ring sleeps on its doorbell before it looks at the socket
/// (a producer that died cannot ring).
const DOORBELL_CHECK: Duration = Duration::from_millis(250);
/// How long the messages a ring frame says came before it may take to arrive (they were sent
/// before the frame was written: an honest producer's are already queued).
const EARLY_FRAME_WAIT: Duration = Duration::from_secs(1);

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
    /// We asked for a ring in `Hello`.
    want_ring: bool,
    /// The producer's ring, once its `Ring` message came: frames and releases go through it.
    ring: Option<ConsumerRing>,
    /// Messages received on the socket (the ring's frames say how many came before them).
    msgs_got: u32,
    /// A frame taken from the ring whose earlier socket messages have not all been read.
    early: Option<RingFrame>,
    /// Threads sleeping on the ring's doorbell now.
    sleepers: u32,
    /// The last call returned no event: the caller may poll the socket (the producer sends
    /// `Wake`).
    poll_wanted: bool,
    /// We said goodbye: nothing more is read.
    left: bool,
}

impl Client {
    /// Say hello with `caps` and wait for the producer's `Welcome`.
    pub fn handshake(
        chan: Channel,
        caps: Vec<Cap>,
        timeout: Duration,
    ) -> Result<Client, ProtoError> {
        Self::handshake_with(chan, caps, timeout, true)
    }

    /// [`Client::handshake`], asking for a shared-memory ring (`ring`: frames and releases
    /// with no system call while both sides are busy; `docs/PROTOCOL.md`, "Ring") or not
    /// (everything on the socket). The producer may decline a ring; both work the same.
    pub fn handshake_with(
        mut chan: Channel,
        caps: Vec<Cap>,
        timeout: Duration,
        ring: bool,
    ) -> Result<Client, ProtoError> {
        chan.send(&Message::Hello(Hello {
            version: VERSION,
            flags: if ring { HELLO_FLAG_RING } else { 0 },
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
            want_ring: ring,
            ring: None,
            msgs_got: 1,
            early: None,
            sleepers: 0,
            poll_wanted: false,
            left: false,
        })
    }

    /// Whether frames and releases go through a shared-memory ring (the producer sent one).
    pub fn uses_ring(&self) -> bool {
        self.ring.is_some()
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
    ///
    /// With a ring, waiting sleeps on its doorbell (a futex) — except with a zero timeout,
    /// the call of an event loop that polls the socket: then the producer is asked to send
    /// `Wake` on the socket when the next frame comes, so the socket polls readable.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Event, ProtoError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let timed_out = || ProtoError::Timeout {
            what: "the producer",
            ms: timeout.map_or(0, |t| t.as_millis() as u64),
        };
        let mut first = true;
        loop {
            if self.ring.is_none() {
                // Everything on the socket (a Ring message may still come). The same timeout
                // on every call keeps `SO_RCVTIMEO` set once, not once per frame.
                let wait = if std::mem::take(&mut first) {
                    timeout
                } else {
                    deadline.map(|d| d.saturating_duration_since(Instant::now()))
                };
                let (msg, fds) = match self.queued.pop_front() {
                    Some(m) => m?,
                    None => self.recv(wait)?,
                };
                match self.handle(msg, fds).map_err(|e| fail(&self.chan, e))? {
                    Some(ev) => return Ok(ev),
                    None => continue,
                }
            }
            self.busy();
            if let Some(ev) = self.poll_event(false)? {
                return Ok(ev);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return self.idle()?.ok_or_else(timed_out);
            }
            let Some(bell) = self.arm() else { continue };
            match self.poll_event(false) {
                Ok(None) => {}
                got => {
                    self.disarm();
                    if let Some(ev) = got? {
                        return Ok(ev);
                    }
                }
            }
            let rang = bell.wait(left.unwrap_or(DOORBELL_CHECK).min(DOORBELL_CHECK));
            self.disarm();
            if !rang {
                // Quiet for a while: the socket says whether the producer is still there.
                if let Some(ev) = self.poll_event(true)? {
                    return Ok(ev);
                }
            }
        }
    }

    /// With a ring, about to return without an event to a caller that may poll the socket
    /// next (an event loop, or after a timeout): read what the socket holds (`Wake`s, a
    /// hang-up), then ask the producer for a `Wake` with the next frame (the socket then polls
    /// readable) and look once more. An event found meanwhile is returned.
    pub fn idle(&mut self) -> Result<Option<Event>, ProtoError> {
        if self.ring.is_none() {
            return Ok(None);
        }
        if let Some(ev) = self.poll_event(true)? {
            return Ok(Some(ev));
        }
        self.poll_wanted = true;
        self.update_waiting();
        let got = self.poll_event(false)?;
        if got.is_some() {
            self.busy();
        }
        Ok(got)
    }

    /// Taking events again: no `Wake`s needed until the next [`Client::idle`].
    pub fn busy(&mut self) {
        if self.poll_wanted {
            self.poll_wanted = false;
            self.update_waiting();
        }
    }

    /// With a ring, before a thread sleeps on its doorbell: say so, read the doorbell, and
    /// check again with [`Client::poll_event`] before [`Doorbell::wait`]; call
    /// [`Client::disarm`] after (each thread that sleeps arms and disarms once). `None`
    /// without a ring.
    pub fn arm(&mut self) -> Option<Doorbell> {
        let ring = self.ring.as_ref()?;
        self.sleepers += 1;
        self.update_waiting();
        Some(ring.doorbell())
    }

    /// Awake again after [`Client::arm`].
    pub fn disarm(&mut self) {
        self.sleepers = self.sleepers.saturating_sub(1);
        self.update_waiting();
    }

    /// Tell the producer how to wake us: through the socket when a caller may be polling it
    /// (it then rings the futex too), through the futex while a thread sleeps on it, not at
    /// all while we take events.
    fn update_waiting(&self) {
        if let Some(r) = &self.ring {
            r.set_waiting(if self.poll_wanted {
                WAITS_SOCKET
            } else if self.sleepers > 0 {
                WAITS_FUTEX
            } else {
                AWAKE
            });
        }
    }

    /// The next event if one is ready, without waiting: with a ring, a frame from it (once the
    /// socket messages sent before it are read) or a message the ring says was sent; and with
    /// `socket`, anything on the socket (a hang-up, `Wake`s to drain). Without a ring, the
    /// socket.
    pub fn poll_event(&mut self, socket: bool) -> Result<Option<Event>, ProtoError> {
        loop {
            if self.left {
                return Err(ProtoError::Closed);
            }
            let Some((msg, fds)) = self.next_ready(socket)? else {
                return Ok(None);
            };
            if let Some(ev) = self.handle(msg, fds).map_err(|e| fail(&self.chan, e))? {
                return Ok(Some(ev));
            }
        }
    }

    /// The next message to handle, in the producer's order: messages read ahead and a ring
    /// frame by how many socket messages came before the frame, else a socket message that is
    /// there.
    fn next_ready(
        &mut self,
        socket: bool,
    ) -> Result<Option<(Message, Vec<std::os::fd::OwnedFd>)>, ProtoError> {
        let Some(ring) = &mut self.ring else {
            return match self.queued.pop_front() {
                Some(m) => m.map(Some),
                None => self.recv_now(),
            };
        };
        if self.early.is_none() {
            self.early = ring
                .pop_frame()
                .map_err(|why| fail(&self.chan, ProtoError::BadRing(why)))?;
        }
        if let Some(f) = &self.early {
            // Messages handled so far: those received less those read ahead.
            let ahead = self.queued.iter().filter(|m| m.is_ok()).count() as u32;
            let handled = self.msgs_got.wrapping_sub(ahead);
            let before = f.msgs_before;
            if (handled.wrapping_sub(before) as i32) >= 0 {
                let f = self.early.take().expect("checked");
                return Ok(Some((Message::Frame(f.frame), Vec::new())));
            }
            if let Some(m) = self.queued.pop_front() {
                return m.map(Some);
            }
            // Sent before the frame was written: already queued, unless the producer lies.
            return match self.recv(Some(EARLY_FRAME_WAIT)) {
                Ok(m) => Ok(Some(m)),
                Err(ProtoError::Timeout { .. }) => Err(fail(
                    &self.chan,
                    ProtoError::BadRing(format!(
                        "a frame says {before} messages were sent before it; {} arrived",
                        self.msgs_got
                    )),
                )),
                Err(e) => Err(e),
            };
        }
        if let Some(m) = self.queued.pop_front() {
            return m.map(Some);
        }
        if socket || ring.msgs_sent() != self.msgs_got || ring.ended() {
            return self.recv_now();
        }
        Ok(None)
    }

    /// A socket message if one is queued.
    fn recv_now(&mut self) -> Result<Option<(Message, Vec<std::os::fd::OwnedFd>)>, ProtoError> {
        match self.recv(Some(Duration::ZERO)) {
            Ok(m) => Ok(Some(m)),
            Err(ProtoError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receive one socket message (counted).
    fn recv(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<(Message, Vec<std::os::fd::OwnedFd>), ProtoError> {
        let m = recv_or_fail(&mut self.chan, timeout, "the producer")?;
        self.msgs_got = self.msgs_got.wrapping_add(1);
        if self.ring.is_some() && matches!(m.0, Message::Frame(_)) {
            return Err(fail(
                &self.chan,
                ProtoError::BadRing("a Frame on the socket: with a ring, frames come in it".into()),
            ));
        }
        Ok(m)
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
            match self.recv(Some(Duration::ZERO)) {
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

    /// Check one message against the session; `None` for one that is not an event (the ring
    /// set up, a `Wake`).
    fn handle(
        &mut self,
        msg: Message,
        mut fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<Option<Event>, ProtoError> {
        let count = self.buffers.len();
        Ok(Some(match msg {
            Message::Ring(r) => {
                if !self.want_ring {
                    return Err(ProtoError::BadRing(
                        "sent, but we did not ask for one".into(),
                    ));
                }
                if self.ring.is_some() {
                    return Err(ProtoError::BadRing("sent twice".into()));
                }
                let fd = fds.pop().expect("the channel checked: one descriptor");
                self.ring = Some(ConsumerRing::from_fd(fd, r.size).map_err(ProtoError::BadRing)?);
                return Ok(None);
            }
            Message::Wake if self.ring.is_some() => return Ok(None),

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
                Event::BufferAdded(id)
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
                Event::Frame(f)
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
                        Event::BufferRemoved(id)
                    }
                    _ => {
                        return Err(ProtoError::BadBuffer {
                            id,
                            why: "removed but never added".into(),
                        })
                    }
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
                Event::Renegotiated
            }
            Message::Goodbye(g) => Event::End(g),
            other => {
                return Err(ProtoError::Unexpected {
                    expected: "AddBuffer, Frame, RemoveBuffer, Welcome or Goodbye",
                    got: other.name(),
                })
            }
        }))
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
        let release = Release { buffer_id, seq };
        if let Some(ring) = &mut self.ring {
            if ring.push_release(&release) == Wake::Socket {
                // The producer sleeps waiting for releases: wake it (it may be gone).
                let _ = self.chan.send(&Message::Wake);
            }
            // The producer marks the ring ended before it reuses anything we hold.
            return Ok(!ring.ended());
        }
        match self.chan.send(&Message::Release(release)) {
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
        if let Some(r) = &self.ring {
            // Threads asleep on the doorbell wake and find the session closed.
            self.left = true;
            r.wake_self();
        }
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
    let _ = chan.send(&goodbye_for(&e));
    e
}

/// The Goodbye that answers `e`.
pub(crate) fn goodbye_for(e: &ProtoError) -> Message {
    let reason = match e {
        ProtoError::Version { .. } => GoodbyeReason::VersionMismatch,
        ProtoError::Unsupported(_) => GoodbyeReason::Unsupported,
        _ => GoodbyeReason::ProtocolError,
    };
    Message::Goodbye(Goodbye {
        reason,
        message: e.to_string(),
    })
}
