//! The shared-memory ring beside the socket (`docs/PROTOCOL.md`, "Ring"): frames go from the
//! producer to the consumer and releases back through two single-producer single-consumer
//! rings in one sealed memfd, with no system call; a peer that sleeps says so in the ring and is
//! woken (a futex, or a `Wake` message on the socket) only then. The socket still carries
//! descriptors, control messages and the end of the connection.
//!
//! Both processes map the memfd read-write, so each side treats everything the other writes as
//! hostile input: a head that runs ahead by more than the ring's slots, or a slot that does not
//! decode as the message it must hold, is a protocol error; slots are copied out of the shared
//! memory once and then decoded, so a peer rewriting a slot meanwhile changes nothing.

use super::wire::{self, Frame, Message, Release, FRAME_LEN, RELEASE_LEN};
use super::ProtoError;
use crate::buffer::MemoryKind;
use crate::sys::{futex, mman::MappedRegion};
use nix::fcntl::SealFlag;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `"DMBR"`, the ring's first four bytes.
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"DMBR");
/// The ring layout's version.
pub const RING_VERSION: u32 = 1;
/// Slots in each ring (the most buffers a stream has, so neither ring can overflow: a frame
/// waits unread, or a release unread, only while its buffer is held, and a consumer holds at
/// most every buffer once).
pub const RING_SLOTS: u32 = 256;
/// Bytes of one frame slot: the 80-byte `Frame` message, `msgs_before` (u32), 12 zero bytes.
pub const FRAME_SLOT_LEN: usize = 96;
/// Bytes of one release slot: the 24-byte `Release` message, 8 zero bytes.
pub const RELEASE_SLOT_LEN: usize = 32;
/// Byte offsets of the header's words.
pub mod offset {
    /// `RING_MAGIC` (producer, once).
    pub const MAGIC: usize = 0;
    /// `RING_VERSION` (producer, once).
    pub const VERSION: usize = 4;
    /// Slots per ring, 256 (producer, once).
    pub const SLOTS: usize = 8;
    /// Frame slots written so far, mod 2³² (producer).
    pub const FRAME_HEAD: usize = 64;
    /// Messages sent on the socket so far, `Welcome` included, mod 2³² (producer).
    pub const MSGS_SENT: usize = 68;
    /// The consumer's doorbell: the producer adds 1 after every frame slot and every message.
    pub const DOORBELL: usize = 72;
    /// 1 once the producer has ended the session (it may reuse what the consumer holds).
    pub const ENDED: usize = 76;
    /// 1 while the producer sleeps waiting for releases: send `Wake` after a release.
    pub const PRODUCER_WAITS: usize = 80;
    /// Release slots written so far, mod 2³² (consumer).
    pub const RELEASE_HEAD: usize = 128;
    /// How the consumer sleeps: 0 awake, 1 on the doorbell futex, 2 in `poll` on the socket.
    pub const CONSUMER_WAITS: usize = 132;
    /// The first frame slot.
    pub const FRAMES: usize = 256;
    /// The first release slot.
    pub const RELEASES: usize = FRAMES + super::RING_SLOTS as usize * super::FRAME_SLOT_LEN;
}
/// The ring memfd's size in bytes (33024).
pub const RING_BYTES: usize = offset::RELEASES + RING_SLOTS as usize * RELEASE_SLOT_LEN;

/// `CONSUMER_WAITS`: awake.
pub const AWAKE: u32 = 0;
/// `CONSUMER_WAITS`: asleep on the doorbell futex (`FUTEX_WAKE` it).
pub const WAITS_FUTEX: u32 = 1;
/// `CONSUMER_WAITS`: asleep in `poll` on the socket (send `Wake`).
pub const WAITS_SOCKET: u32 = 2;

/// One mapping of a ring, shared by whoever waits on its doorbell.
#[derive(Debug)]
struct Map {
    region: MappedRegion,
}

impl Map {
    fn word(&self, off: usize) -> &AtomicU32 {
        &self.region.as_atomic_words()[off / 4]
    }

    fn write_slot(&self, off: usize, bytes: &[u8]) {
        for (i, w) in bytes.chunks(4).enumerate() {
            let mut b = [0u8; 4];
            b[..w.len()].copy_from_slice(w);
            self.word(off + 4 * i)
                .store(u32::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    fn read_slot<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, b) in out.chunks_mut(4).enumerate() {
            b.copy_from_slice(&self.word(off + 4 * i).load(Ordering::Relaxed).to_le_bytes());
        }
        out
    }
}

/// What a writer must do after putting something in the ring for a peer that may sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The peer is awake (or was woken through the futex): nothing.
    None,
    /// The peer sleeps in `poll` on the socket: send it a `Wake` message.
    Socket,
}

/// How many slots `head` is ahead of `tail`, refusing a head no honest writer could have
/// written.
fn pending(head: u32, tail: u32, what: &str) -> Result<u32, String> {
    let n = head.wrapping_sub(tail);
    if n > RING_SLOTS {
        return Err(format!(
            "{what} ring: head {head} is {n} slots ahead of {tail}, more than its {RING_SLOTS}"
        ));
    }
    Ok(n)
}

/// The producer's end: writes frames, reads releases.
#[derive(Debug)]
pub struct ProducerRing {
    map: Map,
    frame_head: u32,
    release_tail: u32,
}

impl ProducerRing {
    /// A new ring: a memfd of [`RING_BYTES`] sealed against shrinking and growing, mapped,
    /// and its descriptor, to send with the `Ring` message and then close (the mapping keeps
    /// the memory).
    pub fn new() -> Result<(Self, OwnedFd), ProtoError> {
        let fd = crate::alloc::sealed_memfd(
            "dmabuf-ring",
            RING_BYTES as u64,
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        )
        .map_err(ProtoError::io("memfd_create (ring)"))?;
        let region = MappedRegion::new(fd.as_fd(), RING_BYTES, true)
            .map_err(ProtoError::io("mmap (ring)"))?;
        let map = Map { region };
        map.word(offset::MAGIC).store(RING_MAGIC, Ordering::Relaxed);
        map.word(offset::VERSION)
            .store(RING_VERSION, Ordering::Relaxed);
        map.word(offset::SLOTS).store(RING_SLOTS, Ordering::Release);
        Ok((
            Self {
                map,
                frame_head: 0,
                release_tail: 0,
            },
            fd,
        ))
    }

    /// Put `frame` in the next slot, saying that `msgs_before` messages were sent on the
    /// socket before it. Call [`ProducerRing::ring`] after.
    pub fn push_frame(&mut self, frame: Frame, msgs_before: u32) {
        let slot = offset::FRAMES + (self.frame_head % RING_SLOTS) as usize * FRAME_SLOT_LEN;
        let mut bytes = [0u8; FRAME_SLOT_LEN];
        bytes[..FRAME_LEN].copy_from_slice(&wire::encode(&Message::Frame(frame)));
        bytes[FRAME_LEN..FRAME_LEN + 4].copy_from_slice(&msgs_before.to_le_bytes());
        self.map.write_slot(slot, &bytes);
        self.frame_head = self.frame_head.wrapping_add(1);
        self.map
            .word(offset::FRAME_HEAD)
            .store(self.frame_head, Ordering::Release);
    }

    /// After a frame slot or a message on the socket (`msgs_sent`: messages sent so far): ring
    /// the consumer's doorbell, waking it if it sleeps on the futex; [`Wake::Socket`] if it
    /// sleeps on the socket and a frame (not a message, which wakes it itself) was written.
    pub fn ring(&self, msgs_sent: u32) -> Wake {
        self.map
            .word(offset::MSGS_SENT)
            .store(msgs_sent, Ordering::Release);
        let bell = self.map.word(offset::DOORBELL);
        bell.fetch_add(1, Ordering::SeqCst);
        // (Our stores before the consumer's flag is read: the other half of its handshake.)
        fence(Ordering::SeqCst);
        match self.map.word(offset::CONSUMER_WAITS).load(Ordering::SeqCst) {
            WAITS_FUTEX => {
                let _ = futex::wake(bell, u32::MAX);
                Wake::None
            }
            WAITS_SOCKET => {
                // Someone polls the socket; a thread of the same consumer may sleep on the
                // futex meanwhile.
                let _ = futex::wake(bell, u32::MAX);
                Wake::Socket
            }
            _ => Wake::None,
        }
    }

    /// The next release the consumer wrote, if any (not checked against what it holds: the
    /// session does that). A head too far ahead, or a slot that is not a `Release`, is the
    /// consumer's protocol error.
    pub fn pop_release(&mut self) -> Result<Option<Release>, String> {
        let head = self.map.word(offset::RELEASE_HEAD).load(Ordering::Acquire);
        if pending(head, self.release_tail, "release")? == 0 {
            return Ok(None);
        }
        let slot = offset::RELEASES + (self.release_tail % RING_SLOTS) as usize * RELEASE_SLOT_LEN;
        let bytes: [u8; RELEASE_SLOT_LEN] = self.map.read_slot(slot);
        self.release_tail = self.release_tail.wrapping_add(1);
        if bytes[RELEASE_LEN..].iter().any(|&b| b != 0) {
            return Err(format!(
                "release slot {}: padding bytes 24..32 are not zero",
                self.release_tail.wrapping_sub(1) % RING_SLOTS
            ));
        }
        match wire::decode(&bytes[..RELEASE_LEN]) {
            Ok(Message::Release(r)) => Ok(Some(r)),
            Ok(other) => Err(format!(
                "release slot holds a {}, not a Release",
                other.name()
            )),
            Err(e) => Err(format!("release slot: {e}")),
        }
    }

    /// Whether a release is waiting (a head too far ahead counts: reading it fails).
    pub fn has_release(&self) -> bool {
        self.map.word(offset::RELEASE_HEAD).load(Ordering::SeqCst) != self.release_tail
    }

    /// Say whether the producer is about to sleep waiting for releases (the consumer then sends
    /// `Wake` after each); check [`ProducerRing::has_release`] after setting it, before sleeping.
    pub fn set_waiting(&self, on: bool) {
        self.map
            .word(offset::PRODUCER_WAITS)
            .store(on as u32, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The session is over: the producer may now reuse what the consumer holds. Wakes a
    /// consumer asleep on the futex.
    pub fn end(&self) {
        self.map.word(offset::ENDED).store(1, Ordering::SeqCst);
        let bell = self.map.word(offset::DOORBELL);
        bell.fetch_add(1, Ordering::SeqCst);
        let _ = futex::wake(bell, u32::MAX);
    }
}

impl Drop for ProducerRing {
    fn drop(&mut self) {
        self.end();
    }
}

/// The consumer's end: reads frames, writes releases. Its mapping is shared with the
/// [`Doorbell`]s it hands out, so a thread can sleep on it without holding the connection.
#[derive(Debug)]
pub struct ConsumerRing {
    map: Arc<Map>,
    frame_tail: u32,
    release_head: u32,
}

/// A frame read from the ring, with the number of socket messages that came before it.
#[derive(Debug, Clone)]
pub struct RingFrame {
    /// The frame (decoded, not yet checked against the session).
    pub frame: Frame,
    /// Messages the producer had sent on the socket before it (mod 2³²).
    pub msgs_before: u32,
}

impl ConsumerRing {
    /// Take the producer's ring: a memfd sealed against shrinking and growing, of exactly
    /// [`RING_BYTES`] (the `Ring` message's `size` too), with the right magic, version and
    /// slot count.
    pub fn from_fd(fd: OwnedFd, size: u32) -> Result<Self, String> {
        if size as usize != RING_BYTES {
            return Err(format!("Ring size {size}, must be {RING_BYTES}"));
        }
        let actual = super::validate::check_fd(fd.as_fd(), MemoryKind::Memfd)
            .map_err(|e| format!("ring fd: {e}"))?;
        if actual != RING_BYTES as u64 {
            return Err(format!(
                "ring fd is {actual} bytes, the Ring message says {RING_BYTES}"
            ));
        }
        let region = MappedRegion::new(fd.as_fd(), RING_BYTES, true)
            .map_err(|e| format!("mmap of the ring: {e}"))?;
        let map = Map { region };
        let (magic, version, slots) = (
            map.word(offset::MAGIC).load(Ordering::Acquire),
            map.word(offset::VERSION).load(Ordering::Acquire),
            map.word(offset::SLOTS).load(Ordering::Acquire),
        );
        if magic != RING_MAGIC || version != RING_VERSION || slots != RING_SLOTS {
            return Err(format!(
                "ring header: magic {magic:#010x}, version {version}, {slots} slots (want \
                 {RING_MAGIC:#010x}, {RING_VERSION}, {RING_SLOTS})"
            ));
        }
        // Both rings start at 0 (frames may already be waiting: the producer publishes as soon
        // as the Ring message is sent).
        Ok(Self {
            map: Arc::new(map),
            frame_tail: 0,
            release_head: 0,
        })
    }

    /// The next frame the producer wrote, if any (taken out of the ring; the caller keeps it
    /// until the messages before it have arrived).
    pub fn pop_frame(&mut self) -> Result<Option<RingFrame>, String> {
        let head = self.map.word(offset::FRAME_HEAD).load(Ordering::Acquire);
        if pending(head, self.frame_tail, "frame")? == 0 {
            return Ok(None);
        }
        let slot = offset::FRAMES + (self.frame_tail % RING_SLOTS) as usize * FRAME_SLOT_LEN;
        let bytes: [u8; FRAME_SLOT_LEN] = self.map.read_slot(slot);
        self.frame_tail = self.frame_tail.wrapping_add(1);
        if bytes[FRAME_LEN + 4..].iter().any(|&b| b != 0) {
            return Err("frame slot: padding bytes 84..96 are not zero".into());
        }
        let msgs_before =
            u32::from_le_bytes(bytes[FRAME_LEN..FRAME_LEN + 4].try_into().expect("4"));
        match wire::decode(&bytes[..FRAME_LEN]) {
            Ok(Message::Frame(frame)) => Ok(Some(RingFrame { frame, msgs_before })),
            Ok(other) => Err(format!("frame slot holds a {}, not a Frame", other.name())),
            Err(e) => Err(format!("frame slot: {e}")),
        }
    }

    /// Whether the producer wrote a frame not yet read.
    pub fn has_frame(&self) -> bool {
        self.map.word(offset::FRAME_HEAD).load(Ordering::Acquire) != self.frame_tail
    }

    /// Messages the producer says it has sent on the socket (untrusted).
    pub fn msgs_sent(&self) -> u32 {
        self.map.word(offset::MSGS_SENT).load(Ordering::Acquire)
    }

    /// Whether the producer has ended the session (it may reuse what we hold).
    pub fn ended(&self) -> bool {
        self.map.word(offset::ENDED).load(Ordering::SeqCst) != 0
    }

    /// Hand `release` back; [`Wake::Socket`] when the producer sleeps waiting for it (send
    /// `Wake`).
    pub fn push_release(&mut self, release: &Release) -> Wake {
        let slot = offset::RELEASES + (self.release_head % RING_SLOTS) as usize * RELEASE_SLOT_LEN;
        let mut bytes = [0u8; RELEASE_SLOT_LEN];
        bytes[..RELEASE_LEN].copy_from_slice(&wire::encode(&Message::Release(*release)));
        self.map.write_slot(slot, &bytes);
        self.release_head = self.release_head.wrapping_add(1);
        self.map
            .word(offset::RELEASE_HEAD)
            .store(self.release_head, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.map.word(offset::PRODUCER_WAITS).load(Ordering::SeqCst) != 0 {
            Wake::Socket
        } else {
            Wake::None
        }
    }

    /// Say how this consumer is about to sleep ([`AWAKE`], [`WAITS_FUTEX`], [`WAITS_SOCKET`]);
    /// after setting a sleeping state, check the ring again before sleeping.
    pub fn set_waiting(&self, how: u32) {
        let w = self.map.word(offset::CONSUMER_WAITS);
        // (Reading first: no store, and no cache line bounced, while it stays awake.)
        if w.load(Ordering::Relaxed) != how {
            w.store(how, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
    }

    /// Ring our own doorbell: wakes every thread of this process sleeping on it (leaving).
    pub fn wake_self(&self) {
        let bell = self.map.word(offset::DOORBELL);
        bell.fetch_add(1, Ordering::SeqCst);
        let _ = futex::wake(bell, u32::MAX);
    }

    /// The doorbell as it reads now: sleep on it with [`Doorbell::wait`] after checking the
    /// ring once more.
    pub fn doorbell(&self) -> Doorbell {
        Doorbell {
            value: self.map.word(offset::DOORBELL).load(Ordering::SeqCst),
            map: self.map.clone(),
        }
    }
}

/// A consumer's doorbell at a value it read: [`Doorbell::wait`] sleeps until the producer
/// rings it (or `timeout`).
#[derive(Debug)]
pub struct Doorbell {
    map: Arc<Map>,
    value: u32,
}

impl Doorbell {
    /// Sleep until the doorbell changes from the value read, at most `timeout`: true when it
    /// rang (or may have), false on timeout.
    pub fn wait(&self, timeout: Duration) -> bool {
        futex::wait(self.map.word(offset::DOORBELL), self.value, timeout).unwrap_or(true)
    }
}
