//! The shared-memory ring (`docs/PROTOCOL.md`, "Ring") against a peer that writes whatever it
//! likes into it: each side maps memory the other can rewrite, so every field it reads is
//! checked. Over a real `SOCK_SEQPACKET` socketpair, a real sealed memfd mapped by both ends;
//! each case asserts the named error and the Goodbye the hostile peer receives. And the ring
//! working: frames, releases, doorbells, and the poll-driven receiver woken by `Wake`.

use dmabuf_core::alloc::{sealed_memfd, MemfdAllocator};
use dmabuf_core::format::{FrameFormat, PixelFormat, MOD_LINEAR};
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::client::{Client, Event};
use dmabuf_core::proto::ring::{offset, RING_BYTES, RING_MAGIC, RING_SLOTS, RING_VERSION};
use dmabuf_core::proto::server::{full_chunks, read_hello, Pumped, Session};
use dmabuf_core::proto::wire::*;
use dmabuf_core::proto::{Channel, ProtoError};
use dmabuf_core::publisher::{Publisher, PublisherOptions};
use dmabuf_core::receiver::{linear_caps, Receiver, ReceiverEvent};
use dmabuf_core::sys::mman::MappedRegion;
use dmabuf_core::{AllocatorKind, MemoryKind};
use nix::fcntl::SealFlag;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(2);

fn format() -> FrameFormat {
    FrameFormat::linear(PixelFormat::Nv12, 64, 48)
}

fn pool(n: usize) -> Pool {
    Pool::new(&MemfdAllocator::new(), format(), n).unwrap()
}

fn welcome(buffers: u32) -> Welcome {
    Welcome {
        version: VERSION,
        memory: MemoryKind::Memfd,
        allocator: AllocatorKind::Memfd,
        buffer_count: buffers,
        pixel: PixelFormat::Nv12,
        width: 64,
        height: 48,
        fps_num: 60,
        fps_den: 1,
        color: ColorInfo::default(),
        modifier: MOD_LINEAR,
        geometry: Geometry::default(),
        device: 0,
    }
}

fn caps() -> Vec<Cap> {
    linear_caps(&[PixelFormat::Nv12], &[MemoryKind::Memfd])
}

fn hello(flags: u32) -> Message {
    Message::Hello(Hello {
        version: VERSION,
        flags,
        caps: caps(),
    })
}

/// A ring mapped by the test, which plays the hostile side.
struct Raw(MappedRegion);

impl Raw {
    fn map(fd: &OwnedFd) -> Raw {
        Raw(MappedRegion::new(fd.as_fd(), RING_BYTES, true).unwrap())
    }
    fn word(&self, off: usize) -> &AtomicU32 {
        &self.0.as_atomic_words()[off / 4]
    }
    fn set(&self, off: usize, v: u32) {
        self.word(off).store(v, Ordering::SeqCst);
    }
    fn get(&self, off: usize) -> u32 {
        self.word(off).load(Ordering::SeqCst)
    }
    fn put(&self, off: usize, bytes: &[u8]) {
        for (i, w) in bytes.chunks(4).enumerate() {
            let mut b = [0u8; 4];
            b[..w.len()].copy_from_slice(w);
            self.set(off + 4 * i, u32::from_le_bytes(b));
        }
    }
}

/// A producer session with a ring (2 buffers added) and the raw consumer end that asked for
/// it: its channel and the ring it was sent.
fn producer_with_hostile_consumer() -> (Session<Arc<Lease>>, Pool, Channel, Raw) {
    let (prod, mut cons) = Channel::pair().unwrap();
    let p = pool(2);
    let mut sess = Session::start_with(prod, &welcome(2), true).unwrap();
    for id in 0..2 {
        sess.add_buffer(id, p.buffer(id).unwrap()).unwrap();
    }
    assert!(sess.uses_ring());
    assert!(matches!(
        cons.recv(Some(T), "Welcome").unwrap().0,
        Message::Welcome(_)
    ));
    let (msg, mut fds) = cons.recv(Some(T), "Ring").unwrap();
    assert_eq!(
        msg,
        Message::Ring(RingMsg {
            size: RING_BYTES as u32
        })
    );
    let raw = Raw::map(&fds.pop().unwrap());
    assert_eq!(
        (
            raw.get(offset::MAGIC),
            raw.get(offset::VERSION),
            raw.get(offset::SLOTS)
        ),
        (RING_MAGIC, RING_VERSION, RING_SLOTS)
    );
    for _ in 0..2 {
        assert!(matches!(
            cons.recv(Some(T), "AddBuffer").unwrap().0,
            Message::AddBuffer(_)
        ));
    }
    (sess, p, cons, raw)
}

/// Publish a frame in buffer `id` to the session.
fn send_frame(sess: &mut Session<Arc<Lease>>, p: &Pool, seq: u64) -> u32 {
    let lease = p.try_acquire().expect("a free buffer");
    let id = lease.id();
    let chunks = full_chunks(lease.buffer());
    sess.send_frame(
        Frame {
            buffer_id: id,
            flags: 0,
            seq,
            pts_ns: 0,
            publish_ns: 0,
            checksum: 0,
            chunks,
        },
        Arc::new(lease),
    )
    .unwrap();
    id
}

fn release_slot(buffer_id: u32, seq: u64) -> Vec<u8> {
    let mut b = encode(&Message::Release(Release { buffer_id, seq }));
    b.resize(32, 0);
    b
}

/// The producer refuses what the consumer wrote, and tells it so (a Goodbye counted in the
/// ring's `msgs_sent` and rung on its doorbell, like every message).
fn expect_refused(mut sess: Session<Arc<Lease>>, mut cons: Channel, raw: Raw, text: &str) {
    let (sent, bell) = (raw.get(offset::MSGS_SENT), raw.get(offset::DOORBELL));
    let err = sess.pump(Duration::ZERO).expect_err("must be refused");
    assert_eq!(
        raw.get(offset::MSGS_SENT),
        sent.wrapping_add(1),
        "the Goodbye is counted"
    );
    assert_ne!(raw.get(offset::DOORBELL), bell, "and rung");
    assert!(err.to_string().contains(text), "{err} lacks {text:?}");
    loop {
        match cons.recv(Some(T), "Goodbye") {
            Ok((Message::Goodbye(g), _)) => {
                assert_eq!(g.reason, GoodbyeReason::ProtocolError);
                assert!(g.message.contains(text), "{:?} lacks {text:?}", g.message);
                return;
            }
            Ok(_) => continue,
            Err(e) => panic!("no Goodbye: {e}"),
        }
    }
}

#[test]
fn releases_through_the_ring_are_taken_without_a_message() {
    let (mut sess, p, cons, raw) = producer_with_hostile_consumer();
    let id = send_frame(&mut sess, &p, 7);
    // The frame is in slot 0, after the 4 messages sent before it (Welcome, Ring, 2 AddBuffer).
    assert_eq!(raw.get(offset::FRAME_HEAD), 1);
    let mut slot = [0u8; 96];
    for (i, b) in slot.chunks_mut(4).enumerate() {
        b.copy_from_slice(&raw.get(offset::FRAMES + 4 * i).to_le_bytes());
    }
    match decode(&slot[..80]).unwrap() {
        Message::Frame(f) => assert_eq!((f.buffer_id, f.seq), (id, 7)),
        m => panic!("{m:?}"),
    }
    assert_eq!(u32::from_le_bytes(slot[80..84].try_into().unwrap()), 4);
    assert_eq!(raw.get(offset::MSGS_SENT), 4);
    assert_eq!(sess.held_count(), 1);
    assert_eq!(p.free_count(), 1);
    raw.put(offset::RELEASES, &release_slot(id, 7));
    raw.set(offset::RELEASE_HEAD, 1);
    assert_eq!(sess.pump_ring().unwrap(), 1);
    assert_eq!(sess.held_count(), 0);
    assert_eq!(p.free_count(), 2);
    // Nothing came on the socket.
    assert!(matches!(sess.pump(Duration::ZERO), Ok(Pumped::Released(0))));
    drop(cons);
}

#[test]
fn a_release_head_far_ahead_is_refused() {
    let (mut sess, p, cons, raw) = producer_with_hostile_consumer();
    send_frame(&mut sess, &p, 0);
    raw.set(offset::RELEASE_HEAD, 1000);
    expect_refused(sess, cons, raw, "more than its 256");
}

#[test]
fn a_release_slot_that_is_not_a_release_is_refused() {
    let (mut sess, p, cons, raw) = producer_with_hostile_consumer();
    send_frame(&mut sess, &p, 0);
    let mut bytes = encode(&Message::Goodbye(Goodbye {
        reason: GoodbyeReason::Leaving,
        message: String::new(),
    }));
    bytes.truncate(32);
    raw.put(offset::RELEASES, &bytes);
    raw.set(offset::RELEASE_HEAD, 1);
    expect_refused(sess, cons, raw, "release slot");
}

#[test]
fn garbage_in_a_release_slot_padding_is_refused() {
    let (mut sess, p, cons, raw) = producer_with_hostile_consumer();
    let id = send_frame(&mut sess, &p, 0);
    let mut bytes = release_slot(id, 0);
    bytes[30] = 1;
    raw.put(offset::RELEASES, &bytes);
    raw.set(offset::RELEASE_HEAD, 1);
    expect_refused(sess, cons, raw, "padding");
}

#[test]
fn a_ring_release_of_a_buffer_not_held_is_refused() {
    let (mut sess, p, cons, raw) = producer_with_hostile_consumer();
    let id = send_frame(&mut sess, &p, 3);
    // The right buffer with the wrong seq, then (in a fresh session) a buffer never sent.
    raw.put(offset::RELEASES, &release_slot(id, 4));
    raw.set(offset::RELEASE_HEAD, 1);
    expect_refused(sess, cons, raw, "not 4");
    let (mut sess, p, cons, raw) = producer_with_hostile_consumer();
    let id = send_frame(&mut sess, &p, 0);
    raw.put(offset::RELEASES, &release_slot(1 - id, 0));
    raw.set(offset::RELEASE_HEAD, 1);
    expect_refused(sess, cons, raw, "not held");
}

#[test]
fn a_sleeping_producer_is_woken_by_a_wake_message() {
    let (mut sess, p, cons, raw) = producer_with_hostile_consumer();
    let id = send_frame(&mut sess, &p, 0);
    let t = std::thread::spawn(move || {
        // The producer sleeping in pump says so in the ring; the consumer, releasing, wakes
        // it with a Wake because it says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        while raw.get(offset::PRODUCER_WAITS) != 1 {
            assert!(
                Instant::now() < deadline,
                "the producer never said it sleeps"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        raw.put(offset::RELEASES, &release_slot(id, 0));
        raw.set(offset::RELEASE_HEAD, 1);
        cons.send(&Message::Wake).unwrap();
        (cons, raw)
    });
    let start = Instant::now();
    assert_eq!(
        sess.pump(Duration::from_secs(20)).unwrap(),
        Pumped::Released(1)
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "woken, not timed out"
    );
    let (_cons, raw) = t.join().unwrap();
    assert_eq!(raw.get(offset::PRODUCER_WAITS), 0, "awake again");
    assert_eq!(p.free_count(), 2);
}

#[test]
fn a_flood_of_wakes_does_not_keep_the_producer_reading() {
    let (mut sess, p, cons, _raw) = producer_with_hostile_consumer();
    let id = send_frame(&mut sess, &p, 0);
    for _ in 0..3 {
        cons.send(&Message::Wake).unwrap();
    }
    cons.send(&Message::Release(Release {
        buffer_id: id,
        seq: 0,
    }))
    .unwrap();
    // One message per turn without a wait: three Wakes, then the Release.
    for _ in 0..3 {
        assert_eq!(sess.pump(Duration::ZERO).unwrap(), Pumped::Released(0));
    }
    assert_eq!(sess.pump(Duration::ZERO).unwrap(), Pumped::Released(1));
}

#[test]
fn the_ring_says_when_the_session_ended() {
    let (sess, _p, _cons, raw) = producer_with_hostile_consumer();
    assert_eq!(raw.get(offset::ENDED), 0);
    let bell = raw.get(offset::DOORBELL);
    sess.finish(GoodbyeReason::EndOfStream, "done", Duration::ZERO);
    assert_eq!(raw.get(offset::ENDED), 1);
    assert_ne!(raw.get(offset::DOORBELL), bell, "the doorbell rang");
}

/// A hostile producer: a raw channel and a ring of its own making, in front of a real
/// [`Client`] that asked for a ring. The Welcome, the Ring (its memfd) and 2 AddBuffers are
/// sent; `doctor` may change the memfd or the Ring message first.
struct FakeProducer {
    chan: Channel,
    raw: Raw,
    _buffers: Vec<OwnedFd>,
}

fn ring_memfd(size: u64, seals: SealFlag) -> OwnedFd {
    sealed_memfd("hostile-ring", size, seals).unwrap()
}

fn sealed() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

fn fake_producer(ring_fd: OwnedFd, size: u32) -> (FakeProducer, Result<Client, ProtoError>) {
    let (prod, cons) = Channel::pair().unwrap();
    let raw = Raw::map(&ring_fd);
    raw.set(offset::MAGIC, RING_MAGIC);
    raw.set(offset::VERSION, RING_VERSION);
    raw.set(offset::SLOTS, RING_SLOTS);
    prod.send(&Message::Welcome(welcome(2))).unwrap();
    prod.send_with_fds(&Message::Ring(RingMsg { size }), &[ring_fd.as_fd()])
        .unwrap();
    raw.set(offset::MSGS_SENT, 2);
    let p = pool(2);
    let mut buffers = Vec::new();
    for id in 0..2u32 {
        let b = p.buffer(id).unwrap();
        let planes = b
            .planes()
            .map(|(i, pl)| WirePlane {
                fd_index: i as u32,
                stride: pl.stride,
                offset: pl.offset,
                size: pl.size(),
            })
            .collect();
        let fd = b.fds[0].try_clone().unwrap();
        prod.send_with_fds(
            &Message::AddBuffer(AddBuffer {
                buffer_id: id,
                n_fds: 1,
                planes,
            }),
            &[fd.as_fd()],
        )
        .unwrap();
        buffers.push(fd);
    }
    raw.set(offset::MSGS_SENT, 4);
    let client = Client::handshake(cons, caps(), T);
    (
        FakeProducer {
            chan: prod,
            raw,
            _buffers: buffers,
        },
        client,
    )
}

impl FakeProducer {
    fn frame_slot(&self, i: usize, frame: &Frame, msgs_before: u32) {
        let mut b = encode(&Message::Frame(frame.clone()));
        b.extend_from_slice(&msgs_before.to_le_bytes());
        b.resize(96, 0);
        self.raw.put(offset::FRAMES + 96 * i, &b);
    }

    fn goodbye(&mut self) -> Goodbye {
        loop {
            match self.chan.recv(Some(T), "Goodbye") {
                Ok((Message::Goodbye(g), _)) => return g,
                Ok(_) => continue,
                Err(e) => panic!("no Goodbye: {e}"),
            }
        }
    }
}

fn frame(buffer_id: u32, seq: u64) -> Frame {
    let p = pool(1);
    Frame {
        buffer_id,
        flags: 0,
        seq,
        pts_ns: 0,
        publish_ns: 0,
        checksum: 0,
        chunks: full_chunks(p.buffer(0).unwrap()),
    }
}

/// Read the Welcome's buffers; the next event is then `what` the ring holds.
fn take_buffers(client: &mut Client) {
    for _ in 0..2 {
        assert!(matches!(
            client.next_event(Some(T)).unwrap(),
            Event::BufferAdded(_)
        ));
    }
    assert!(client.uses_ring());
}

fn expect_client_refuses(mut fake: FakeProducer, mut client: Client, text: &str) {
    let err = client.next_event(Some(T)).expect_err("must be refused");
    assert!(err.to_string().contains(text), "{err} lacks {text:?}");
    let g = fake.goodbye();
    assert_eq!(g.reason, GoodbyeReason::ProtocolError);
    assert!(g.message.contains(text), "{:?} lacks {text:?}", g.message);
}

#[test]
fn frames_come_through_the_ring_in_order_with_the_socket() {
    let (fake, client) = fake_producer(ring_memfd(RING_BYTES as u64, sealed()), RING_BYTES as u32);
    let mut client = client.unwrap();
    // The frame is written before the buffers are read: it waits for the 4 messages before it.
    fake.frame_slot(0, &frame(1, 5), 4);
    fake.raw.set(offset::FRAME_HEAD, 1);
    take_buffers(&mut client);
    match client.next_event(Some(T)).unwrap() {
        Event::Frame(f) => assert_eq!((f.buffer_id, f.seq), (1, 5)),
        e => panic!("{e:?}"),
    }
    // Its release goes into the ring.
    client.release(1).unwrap();
    assert_eq!(fake.raw.get(offset::RELEASE_HEAD), 1);
    let mut slot = [0u8; 24];
    for (i, b) in slot.chunks_mut(4).enumerate() {
        b.copy_from_slice(&fake.raw.get(offset::RELEASES + 4 * i).to_le_bytes());
    }
    assert_eq!(
        decode(&slot).unwrap(),
        Message::Release(Release {
            buffer_id: 1,
            seq: 5
        })
    );
    // A frame written after a RemoveBuffer of its buffer is refused in the producer's order:
    // the RemoveBuffer is read first.
    fake.chan
        .send(&Message::RemoveBuffer(RemoveBuffer { buffer_id: 0 }))
        .unwrap();
    fake.raw.set(offset::MSGS_SENT, 5);
    fake.frame_slot(1, &frame(0, 6), 5);
    fake.raw.set(offset::FRAME_HEAD, 2);
    assert!(matches!(
        client.next_event(Some(T)).unwrap(),
        Event::BufferRemoved(0)
    ));
    expect_client_refuses(fake, client, "buffer 0 is not added");
}

/// A consumer that reads the socket ahead (to learn whether its frames are intact) still
/// gets a frame written before a Goodbye before the Goodbye.
#[test]
fn a_goodbye_read_ahead_does_not_overtake_an_earlier_frame() {
    let (mut fake, client) =
        fake_producer(ring_memfd(RING_BYTES as u64, sealed()), RING_BYTES as u32);
    let mut client = client.unwrap();
    take_buffers(&mut client);
    fake.frame_slot(0, &frame(0, 1), 4);
    fake.raw.set(offset::FRAME_HEAD, 1);
    fake.chan
        .send(&Message::Goodbye(Goodbye {
            reason: GoodbyeReason::EndOfStream,
            message: "done".into(),
        }))
        .unwrap();
    fake.raw.set(offset::MSGS_SENT, 5);
    fake.chan.shutdown_and_drain();
    // Reads the Goodbye ahead: the producer ended the stream, nothing was reclaimed.
    assert!(!client.frames_reclaimed());
    match client.next_event(Some(T)).unwrap() {
        Event::Frame(f) => assert_eq!(f.seq, 1),
        e => panic!("the frame first, not {e:?}"),
    }
    assert!(matches!(client.next_event(Some(T)).unwrap(), Event::End(_)));
}

#[test]
fn a_frame_head_far_ahead_is_refused() {
    let (fake, client) = fake_producer(ring_memfd(RING_BYTES as u64, sealed()), RING_BYTES as u32);
    let mut client = client.unwrap();
    take_buffers(&mut client);
    fake.raw.set(offset::FRAME_HEAD, 257);
    expect_client_refuses(fake, client, "more than its 256");
}

#[test]
fn a_frame_slot_that_is_not_a_frame_is_refused() {
    let (fake, client) = fake_producer(ring_memfd(RING_BYTES as u64, sealed()), RING_BYTES as u32);
    let mut client = client.unwrap();
    take_buffers(&mut client);
    let mut b = encode(&Message::Release(Release {
        buffer_id: 0,
        seq: 0,
    }));
    b.resize(96, 0);
    fake.raw.put(offset::FRAMES, &b);
    fake.raw.set(offset::FRAME_HEAD, 1);
    expect_client_refuses(fake, client, "frame slot");
}

#[test]
fn a_frame_slot_with_bad_chunks_is_refused_like_a_frame_message() {
    let (fake, client) = fake_producer(ring_memfd(RING_BYTES as u64, sealed()), RING_BYTES as u32);
    let mut client = client.unwrap();
    take_buffers(&mut client);
    let mut f = frame(0, 0);
    f.chunks[0].bytes_used += 1;
    fake.frame_slot(0, &f, 4);
    fake.raw.set(offset::FRAME_HEAD, 1);
    expect_client_refuses(fake, client, "bytes_used");
}

#[test]
fn a_frame_claiming_messages_never_sent_is_refused_after_a_second() {
    let (fake, client) = fake_producer(ring_memfd(RING_BYTES as u64, sealed()), RING_BYTES as u32);
    let mut client = client.unwrap();
    take_buffers(&mut client);
    fake.frame_slot(0, &frame(0, 0), 9);
    fake.raw.set(offset::FRAME_HEAD, 1);
    let start = Instant::now();
    expect_client_refuses(fake, client, "9 messages were sent before it");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_frame_on_the_socket_after_the_ring_is_refused() {
    let (fake, client) = fake_producer(ring_memfd(RING_BYTES as u64, sealed()), RING_BYTES as u32);
    let mut client = client.unwrap();
    take_buffers(&mut client);
    fake.chan.send(&Message::Frame(frame(0, 0))).unwrap();
    expect_client_refuses(fake, client, "with a ring, frames come in it");
}

#[test]
fn an_unsealed_or_wrong_sized_ring_is_refused() {
    for (fd, size, text) in [
        (
            ring_memfd(RING_BYTES as u64, SealFlag::empty()),
            RING_BYTES as u32,
            "not sealed",
        ),
        (
            ring_memfd(RING_BYTES as u64 + 4096, sealed()),
            RING_BYTES as u32,
            "bytes",
        ),
        (
            ring_memfd(RING_BYTES as u64, sealed()),
            4096,
            "Ring size 4096",
        ),
    ] {
        let (mut fake, client) = fake_producer(fd, size);
        let mut client = client.unwrap();
        let err = client.next_event(Some(T)).expect_err("must be refused");
        assert!(err.to_string().contains(text), "{err} lacks {text:?}");
        assert!(fake.goodbye().message.contains(text));
    }
}

#[test]
fn a_ring_with_the_wrong_magic_is_refused() {
    let fd = ring_memfd(RING_BYTES as u64, sealed());
    let (mut fake, client) = fake_producer(fd, RING_BYTES as u32);
    // (Rewritten before the client reads the Ring message.)
    fake.raw.set(offset::MAGIC, 0);
    let mut client = client.unwrap();
    let err = client.next_event(Some(T)).expect_err("must be refused");
    assert!(err.to_string().contains("ring header"), "{err}");
    assert!(fake.goodbye().message.contains("ring header"));
}

#[test]
fn a_ring_the_consumer_did_not_ask_for_is_refused() {
    let (prod, cons) = Channel::pair().unwrap();
    prod.send(&Message::Welcome(welcome(2))).unwrap();
    let fd = ring_memfd(RING_BYTES as u64, sealed());
    prod.send_with_fds(
        &Message::Ring(RingMsg {
            size: RING_BYTES as u32,
        }),
        &[fd.as_fd()],
    )
    .unwrap();
    let mut client = Client::handshake_with(cons, caps(), T, false).unwrap();
    let err = client.next_event(Some(T)).expect_err("must be refused");
    assert!(err.to_string().contains("did not ask"), "{err}");
}

/// A publisher and receivers over a real socket: one with a ring, one on the socket alone,
/// two that poll their fd (woken by `Wake`) after `try_next_event` or a `next_event` that
/// timed out at once; every frame arrives and every release returns.
#[test]
fn publisher_serves_ring_socket_and_polling_receivers_alike() {
    let sock = std::env::temp_dir().join(format!("ring-{}.sock", std::process::id()));
    let mut p = Publisher::bind(
        &sock,
        format(),
        PublisherOptions {
            buffers: 4,
            ..PublisherOptions::default()
        },
    )
    .unwrap();
    const N: u64 = 60;
    let mut threads = Vec::new();
    // (ring, poll: 0 next_event, 1 try_next_event then poll, 2 next_event(0) then poll)
    for (ring, poll) in [(true, 0), (false, 0), (true, 1), (true, 2)] {
        let sock = sock.clone();
        threads.push(std::thread::spawn(move || {
            let rx = Receiver::connect_with(&sock, caps(), T, ring).unwrap();
            let mut frames = 0u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "frames did not come");
                let ev = if poll > 0 {
                    let got = if poll == 1 {
                        rx.try_next_event().unwrap()
                    } else {
                        match rx.next_event(Some(Duration::ZERO)) {
                            Ok(ev) => Some(ev),
                            Err(ProtoError::Timeout { .. }) => None,
                            Err(e) => panic!("{e}"),
                        }
                    };
                    match got {
                        Some(ev) => ev,
                        None => {
                            let mut fds = [nix::poll::PollFd::new(
                                rx.as_fd(),
                                nix::poll::PollFlags::POLLIN,
                            )];
                            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16))
                                .unwrap();
                            continue;
                        }
                    }
                } else {
                    rx.next_event(Some(Duration::from_secs(10))).unwrap()
                };
                match ev {
                    ReceiverEvent::Frame(g) => {
                        frames += 1;
                        drop(g);
                    }
                    ReceiverEvent::End(_) => return (rx.uses_ring(), frames),
                    _ => {}
                }
            }
        }));
        let deadline = Instant::now() + T * 5;
        while p.consumers() < threads.len() {
            assert!(Instant::now() < deadline, "receiver not admitted");
            p.serve(Duration::from_millis(10)).unwrap();
        }
    }
    for i in 0..N {
        let lease = p
            .acquire(Duration::from_secs(10))
            .unwrap()
            .expect("a buffer");
        assert_eq!(
            p.publish(lease, i as i64).unwrap(),
            4,
            "frame {i} to all four"
        );
        // Each may hold one buffer (4 buffers, 4 consumers): let them release before the
        // next.
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.pool().free_count() < 4 {
            assert!(Instant::now() < deadline, "releases did not come back");
            p.serve(Duration::from_millis(50)).unwrap();
        }
    }
    p.finish(T);
    let got: Vec<(bool, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(got, vec![(true, N), (false, N), (true, N), (true, N)]);
}

/// A producer answers a Hello asking for a ring with one, and one not asking without.
#[test]
fn the_ring_is_given_only_when_asked_for() {
    for flags in [0, HELLO_FLAG_RING] {
        let (mut prod, cons) = Channel::pair().unwrap();
        cons.send(&hello(flags)).unwrap();
        let h = read_hello(&mut prod, T).unwrap();
        let ring = dmabuf_core::proto::server::wants_ring(&h);
        assert_eq!(ring, flags != 0);
        let sess = Session::<()>::start_with(prod, &welcome(2), ring).unwrap();
        assert_eq!(sess.uses_ring(), flags != 0);
    }
}

/// A receiver made on one thread and read on another (GStreamer's source does that), with
/// frames published the moment it is admitted: every frame arrives, every release returns.
#[test]
fn frames_published_at_once_reach_a_receiver_read_from_another_thread() {
    for round in 0..20 {
        let sock = std::env::temp_dir().join(format!("ring-x-{}-{round}.sock", std::process::id()));
        let mut p = Publisher::bind(&sock, format(), PublisherOptions::default()).unwrap();
        let s2 = sock.clone();
        let t = std::thread::spawn(move || {
            let rx = Arc::new(Receiver::connect(&s2, caps(), T).unwrap());
            let r2 = rx.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    match r2.next_event(Some(Duration::from_millis(100))) {
                        Ok(ReceiverEvent::Frame(g)) => {
                            n += 1;
                            drop(g);
                        }
                        Ok(ReceiverEvent::End(_)) => return n,
                        Ok(_) | Err(ProtoError::Timeout { .. }) => {}
                        Err(e) => panic!("round {round}: {e}"),
                    }
                }
            })
            .join()
            .unwrap()
        });
        while p.consumers() < 1 {
            p.serve(Duration::from_millis(5)).unwrap();
        }
        for i in 0..40 {
            let lease = p
                .acquire(Duration::from_secs(10))
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: frame {i}: no buffer came back"));
            p.publish(lease, i).unwrap();
        }
        p.finish(T);
        assert_eq!(t.join().unwrap(), 40, "round {round}");
    }
}

/// A paced publisher's sleep to its tick (`Publisher::serve_until`), with a receiver on the
/// ring and one on the socket: a release that comes during the sleep does not end it (one
/// wake-up a frame), releases waiting at the deadline are taken then, and a consumer arriving
/// ends it early to be admitted.
#[test]
fn a_paced_publisher_sleeps_through_releases_to_its_tick() {
    for ring in [true, false] {
        let sock =
            std::env::temp_dir().join(format!("ring-tick-{}-{ring}.sock", std::process::id()));
        let mut p = Publisher::bind(&sock, format(), PublisherOptions::default()).unwrap();
        let (got_tx, got_rx) = std::sync::mpsc::channel::<Instant>();
        let s2 = sock.clone();
        let t = std::thread::spawn(move || {
            let rx = Receiver::connect_with(&s2, caps(), T, ring).unwrap();
            loop {
                match rx.next_event(Some(Duration::from_secs(10))).unwrap() {
                    ReceiverEvent::Frame(g) => {
                        assert_eq!(rx.uses_ring(), ring);
                        // Released a little into the publisher's sleep.
                        std::thread::sleep(Duration::from_millis(20));
                        drop(g);
                        got_tx.send(Instant::now()).unwrap();
                    }
                    ReceiverEvent::End(_) => return,
                    _ => {}
                }
            }
        });
        let deadline = Instant::now() + T * 5;
        while p.consumers() < 1 {
            assert!(Instant::now() < deadline, "receiver not admitted");
            p.serve(Duration::from_millis(10)).unwrap();
        }
        let all = p.pool().free_count();
        let mut during = 0;
        for seq in 0..3 {
            let lease = p.acquire(T).unwrap().expect("a free buffer");
            p.publish(lease, seq).unwrap();
            // The release comes 20 ms into a 300 ms sleep: the sleep goes on to its end.
            let start = Instant::now();
            let due = start + Duration::from_millis(300);
            p.serve_until(due).unwrap();
            assert!(
                Instant::now() >= due,
                "ring {ring}: the sleep ended {:?} early",
                due - Instant::now()
            );
            // Once it is surely sent, a release waiting at the tick is taken there.
            let released = got_rx.recv_timeout(T * 5).expect("the receiver released");
            during += usize::from(released < due);
            let due = Instant::now() + Duration::from_millis(30);
            p.serve_until(due).unwrap();
            assert!(
                Instant::now() >= due,
                "ring {ring}: a waiting release woke the sleep"
            );
            assert_eq!(
                p.pool().free_count(),
                all,
                "ring {ring}: the release was taken"
            );
        }
        // (At least one release came during a sleep, however loaded the machine.)
        assert!(during > 0, "ring {ring}: no release came during a sleep");
        // A consumer that arrives ends the sleep (to be admitted) long before its deadline.
        let s3 = sock.clone();
        let second = std::thread::spawn(move || Receiver::connect_with(&s3, caps(), T, ring));
        let start = Instant::now();
        let due = start + Duration::from_secs(20);
        while p.consumers() < 2 {
            assert!(Instant::now() < due);
            p.serve_until(due).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ring {ring}: admitted after {:?}",
            start.elapsed()
        );
        let _rx2 = second.join().unwrap().unwrap();
        p.finish(T);
        t.join().unwrap();
    }
}

/// The same sleep with a ring receiver, a socket receiver and a connection that has not said
/// `Hello` yet: releases of both receivers (two frames each) do not end it and are all taken
/// at its end, and the socket receiver leaving ends it at once.
#[test]
fn a_paced_sleep_takes_every_release_and_wakes_for_a_departure() {
    let sock = std::env::temp_dir().join(format!("ring-tick-mixed-{}.sock", std::process::id()));
    let mut p = Publisher::bind(&sock, format(), PublisherOptions::default()).unwrap();
    // Each receiver: take 2 frames, hold them until told, release both, then leave when told.
    let spawn = |ring: bool| {
        let (tell_tx, tell_rx) = std::sync::mpsc::channel::<()>();
        let (said_tx, said_rx) = std::sync::mpsc::channel::<Instant>();
        let s = sock.clone();
        let t = std::thread::spawn(move || {
            let rx = Receiver::connect_with(&s, caps(), T, ring).unwrap();
            let mut held = Vec::new();
            while held.len() < 2 {
                if let ReceiverEvent::Frame(g) = rx.next_event(Some(T * 5)).unwrap() {
                    held.push(g);
                }
            }
            assert_eq!(rx.uses_ring(), ring);
            said_tx.send(Instant::now()).unwrap();
            tell_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            held.clear();
            said_tx.send(Instant::now()).unwrap();
            tell_rx.recv().unwrap();
            drop(rx);
        });
        (t, tell_tx, said_rx)
    };
    let (ring_t, ring_tell, ring_said) = spawn(true);
    let (sock_t, sock_tell, sock_said) = spawn(false);
    let deadline = Instant::now() + T * 5;
    while p.consumers() < 2 {
        assert!(Instant::now() < deadline, "receivers not admitted");
        p.serve(Duration::from_millis(10)).unwrap();
    }
    // A connection that says nothing (its Hello deadline is 5 s away).
    let _silent = Channel::connect(&sock).unwrap();
    // (Accepted now: an arrival ends a sleep, and this test is about releases.)
    p.serve(Duration::from_millis(100)).unwrap();
    let all = p.pool().free_count();
    for seq in 0..2 {
        let lease = p.acquire(T).unwrap().expect("a free buffer");
        p.publish(lease, seq).unwrap();
    }
    ring_said
        .recv_timeout(T * 5)
        .expect("the ring receiver holds 2");
    sock_said
        .recv_timeout(T * 5)
        .expect("the socket receiver holds 2");
    assert_eq!(p.pool().free_count(), all - 2);
    // Both release both frames 20 ms into a 1 s sleep: it goes on to its end and takes all 4.
    ring_tell.send(()).unwrap();
    sock_tell.send(()).unwrap();
    let due = Instant::now() + Duration::from_secs(1);
    p.serve_until(due).unwrap();
    assert!(Instant::now() >= due, "a release ended the sleep");
    let r1 = ring_said
        .recv_timeout(T * 5)
        .expect("the ring receiver released");
    let r2 = sock_said
        .recv_timeout(T * 5)
        .expect("the socket receiver released");
    assert!(r1 < due && r2 < due, "the releases came after a 1 s sleep");
    assert_eq!(
        p.pool().free_count(),
        all,
        "every release taken at the tick"
    );
    // The socket receiver leaves during a 20 s sleep: the sleep ends early for it.
    let start = Instant::now();
    sock_tell.send(()).unwrap();
    let due = start + Duration::from_secs(20);
    while p.consumers() > 1 {
        assert!(Instant::now() < due, "the departure was not seen");
        p.serve_until(due).unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "departure seen after {:?}",
        start.elapsed()
    );
    ring_tell.send(()).unwrap();
    sock_t.join().unwrap();
    ring_t.join().unwrap();
    p.finish(T);
}
