//! Both ends of a session against a peer that speaks the protocol wrongly, over a real
//! `SOCK_SEQPACKET` socketpair with real fds. Every case asserts the named error, the Goodbye
//! the peer receives, and that the fd count after the error equals the count just before the
//! bad message arrived (the received descriptors were closed).

use dmabuf_core::alloc::{sealed_memfd, MemfdAllocator};
use dmabuf_core::format::{FrameFormat, FrameLayout, PixelFormat, MOD_LINEAR};
use dmabuf_core::pool::{Lease, Pool};
use dmabuf_core::proto::client::{Client, Event};
use dmabuf_core::proto::server::{full_chunks, read_hello, Pumped, Session};
use dmabuf_core::proto::wire::*;
use dmabuf_core::proto::{Channel, ProtoError};
use dmabuf_core::testing::{fd_count, serial};
use dmabuf_core::{AllocatorKind, MemoryKind};
use nix::fcntl::SealFlag;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(2);
const W: u32 = 64;
const H: u32 = 48;

fn welcome(memory: MemoryKind) -> Welcome {
    Welcome {
        version: VERSION,
        memory,
        allocator: if memory == MemoryKind::Memfd {
            AllocatorKind::Memfd
        } else {
            AllocatorKind::DmaHeap
        },
        buffer_count: 2,
        pixel: PixelFormat::Nv12,
        width: W,
        height: H,
        fps_num: 60,
        fps_den: 1,
        color: ColorInfo {
            matrix: 1,
            range: 1,
            ..ColorInfo::default()
        },
        modifier: MOD_LINEAR,
        geometry: Geometry::default(),
        device: 0,
    }
}

fn caps() -> Vec<Cap> {
    vec![Cap {
        fourcc: PixelFormat::Nv12.fourcc(),
        memory_mask: MemoryKind::Memfd.bit() | MemoryKind::DmaBuf.bit(),
        modifier: MOD_LINEAR,
    }]
}

fn layout() -> FrameLayout {
    FrameLayout::gpu_friendly(FrameFormat::linear(PixelFormat::Nv12, W, H)).unwrap()
}

fn good_memfd() -> OwnedFd {
    sealed_memfd(
        "t",
        layout().size,
        SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
    )
    .unwrap()
}

fn add_buffer(id: u32) -> AddBuffer {
    let l = layout();
    AddBuffer {
        buffer_id: id,
        n_fds: 1,
        planes: l
            .planes
            .iter()
            .map(|p| WirePlane {
                fd_index: 0,
                stride: p.stride,
                offset: p.offset,
                size: p.size(),
            })
            .collect(),
    }
}

/// A client whose producer end is `prod`.
fn connected(memory: MemoryKind) -> (Channel, Client) {
    let (prod, cons) = Channel::pair().unwrap();
    prod.send(&Message::Welcome(welcome(memory))).unwrap();
    let client = Client::handshake(cons, caps(), T).unwrap();
    (prod, client)
}

/// The Goodbye the client sent back, if any.
fn goodbye_from(chan: &mut Channel) -> Goodbye {
    loop {
        match chan.recv(Some(T), "goodbye") {
            Ok((Message::Goodbye(g), _)) => return g,
            Ok(_) => continue,
            Err(e) => panic!("no goodbye: {e}"),
        }
    }
}

/// Send `bytes` + `fds` to the client; expect an error matching `check`; assert that the fd
/// count is back to what it was before the message arrived and that the producer was told.
fn expect_client_error(
    memory: MemoryKind,
    setup: impl FnOnce(&Channel, &mut Client),
    bytes: Vec<u8>,
    fds: &[BorrowedFd<'_>],
    check: impl FnOnce(&ProtoError) -> bool,
    text: &str,
) {
    let (mut prod, mut client) = connected(memory);
    setup(&prod, &mut client);
    let before = fd_count();
    prod.send_raw(&bytes, fds).unwrap();
    let err = client.next_event(Some(T)).expect_err("must be refused");
    assert!(check(&err), "unexpected error: {err:?}");
    assert!(err.to_string().contains(text), "{err} lacks {text:?}");
    assert_eq!(fd_count(), before, "received fds leaked: {err}");
    if !matches!(err, ProtoError::Closed) {
        let g = goodbye_from(&mut prod);
        assert_ne!(g.reason, GoodbyeReason::EndOfStream);
        assert!(
            g.message.contains(text),
            "goodbye {:?} lacks {text:?}",
            g.message
        );
    }
}

fn enc(m: AddBuffer) -> Vec<u8> {
    encode(&Message::AddBuffer(m))
}

fn nothing(_: &Channel, _: &mut Client) {}

#[test]
fn a_good_buffer_and_frame_are_accepted() {
    let _g = serial();
    let (prod, mut client) = connected(MemoryKind::Memfd);
    let fd = good_memfd();
    prod.send_with_fds(&Message::AddBuffer(add_buffer(1)), &[fd.as_fd()])
        .unwrap();
    assert!(matches!(
        client.next_event(Some(T)).unwrap(),
        Event::BufferAdded(1)
    ));
    let buf = client.buffer(1).unwrap();
    assert_eq!(buf.layout.planes, layout().planes);
    prod.send(&Message::Frame(Frame {
        buffer_id: 1,
        flags: 0,
        seq: 0,
        pts_ns: 0,
        publish_ns: 0,
        checksum: 0,
        chunks: full_chunks(buf),
    }))
    .unwrap();
    assert!(matches!(
        client.next_event(Some(T)).unwrap(),
        Event::Frame(_)
    ));
    assert_eq!(client.held_count(), 1);
    client.release(1).unwrap();
    assert_eq!(client.held_count(), 0);
    assert!(
        client.release(1).is_err(),
        "double release is refused locally"
    );
}

#[test]
fn unsealed_memfd_is_refused() {
    let _g = serial();
    let unsealed = sealed_memfd("t", layout().size, SealFlag::empty()).unwrap();
    let only_shrink = sealed_memfd("t", layout().size, SealFlag::F_SEAL_SHRINK).unwrap();
    for fd in [unsealed, only_shrink] {
        expect_client_error(
            MemoryKind::Memfd,
            nothing,
            enc(add_buffer(0)),
            &[fd.as_fd()],
            |e| matches!(e, ProtoError::BadBuffer { id: 0, .. }),
            "not sealed",
        );
    }
}

#[test]
fn layout_beyond_the_fd_or_overflowing_is_refused() {
    let _g = serial();
    let fd = good_memfd();
    let size = layout().size;
    let mut beyond = add_buffer(0);
    beyond.planes[1].offset = size - 100;
    let mut overflow = add_buffer(0);
    overflow.planes[1].offset = u64::MAX - 10;
    let mut huge_stride = add_buffer(0);
    huge_stride.planes[0].stride = u32::MAX;
    let mut small_stride = add_buffer(0);
    small_stride.planes[0].stride = W - 1;
    let mut small_size = add_buffer(0);
    small_size.planes[0].size = 10;
    // The old minimum, (rows - 1) x stride + row bytes, no longer passes: a plane spans
    // stride x rows, as each Frame's bytes_used says.
    let mut last_row_short = add_buffer(0);
    last_row_short.planes[1].size =
        u64::from(last_row_short.planes[1].stride) * (u64::from(H).div_ceil(2) - 1) + u64::from(W);
    for (m, text) in [
        (beyond, "beyond the end"),
        (overflow, "overflows"),
        (huge_stride, "stride"),
        (small_stride, "stride"),
        (small_size, "smaller than stride x rows"),
        (last_row_short, "smaller than stride x rows"),
    ] {
        expect_client_error(
            MemoryKind::Memfd,
            nothing,
            enc(m),
            &[fd.as_fd()],
            |e| matches!(e, ProtoError::BadBuffer { .. }),
            text,
        );
    }
}

#[test]
fn wrong_kinds_of_fd_are_refused() {
    let _g = serial();
    let (r, _w) = nix::unistd::pipe().unwrap();
    let (s1, _s2) = Channel::pair().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let dir = std::fs::File::open("/").unwrap();
    let file = tempfile_fd();
    for (fd, text) in [
        (r.as_fd(), "expected a memfd, got pipe:"),
        (s1.as_fd(), "expected a memfd, got socket:"),
        (null.as_fd(), "expected a memfd, got /dev/null"),
        (dir.as_fd(), "expected a memfd, got /"),
        (file.as_fd(), "expected a memfd"),
    ] {
        expect_client_error(
            MemoryKind::Memfd,
            nothing,
            enc(add_buffer(0)),
            &[fd],
            |e| matches!(e, ProtoError::BadBuffer { .. }),
            text,
        );
    }
    // A memfd announced as a dma-buf.
    let memfd = good_memfd();
    expect_client_error(
        MemoryKind::DmaBuf,
        nothing,
        enc(add_buffer(0)),
        &[memfd.as_fd()],
        |e| matches!(e, ProtoError::BadBuffer { .. }),
        "expected a dma-buf, got /memfd:t",
    );
}

/// A regular file (not a memfd): F_GET_SEALS fails on it.
fn tempfile_fd() -> OwnedFd {
    let path = std::env::temp_dir().join(format!("dmabuf-test-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(layout().size).unwrap();
    let _ = std::fs::remove_file(&path);
    f.into()
}

#[test]
fn bad_buffer_ids_are_refused() {
    let _g = serial();
    let fd = good_memfd();
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        enc(add_buffer(2)),
        &[fd.as_fd()],
        |e| matches!(e, ProtoError::BadBuffer { id: 2, .. }),
        "out of range",
    );
    expect_client_error(
        MemoryKind::Memfd,
        |prod, client| {
            let fd = good_memfd();
            prod.send_with_fds(&Message::AddBuffer(add_buffer(0)), &[fd.as_fd()])
                .unwrap();
            client.next_event(Some(T)).unwrap();
        },
        enc(add_buffer(0)),
        &[fd.as_fd()],
        |e| matches!(e, ProtoError::BadBuffer { id: 0, .. }),
        "sent twice",
    );
}

#[test]
fn wrong_fd_counts_are_refused() {
    let _g = serial();
    let a = good_memfd();
    let b = good_memfd();
    // Declares 2, sends 1.
    let mut two = add_buffer(0);
    two.n_fds = 2;
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        enc(two),
        &[a.as_fd()],
        |e| matches!(e, ProtoError::FdCount { .. }),
        "carried 1 descriptor(s); it must carry 2",
    );
    // Declares 1, sends 2.
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        enc(add_buffer(0)),
        &[a.as_fd(), b.as_fd()],
        |e| matches!(e, ProtoError::FdCount { .. }),
        "must carry 1",
    );
    // Descriptors on a message that takes none.
    let frame = encode(&Message::RemoveBuffer(RemoveBuffer { buffer_id: 0 }));
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        frame,
        &[a.as_fd()],
        |e| matches!(e, ProtoError::FdCount { .. }),
        "RemoveBuffer carried 1",
    );
    // Far more than the receive buffer holds: MSG_CTRUNC, every one closed.
    let many: Vec<OwnedFd> = (0..100).map(|_| good_memfd()).collect();
    let borrowed: Vec<BorrowedFd> = many.iter().map(|f| f.as_fd()).collect();
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        enc(add_buffer(0)),
        &borrowed,
        |e| matches!(e, ProtoError::TooManyFds { .. }),
        "too many descriptors",
    );
}

#[test]
fn garbage_unknown_types_and_oversized_messages_are_refused() {
    let _g = serial();
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        b"hello, world".to_vec(),
        &[],
        |e| matches!(e, ProtoError::Wire(WireError::BadMagic(_))),
        "bad magic",
    );
    let mut unknown = encode(&Message::RemoveBuffer(RemoveBuffer { buffer_id: 0 }));
    unknown[4] = 42;
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        unknown,
        &[],
        |e| matches!(e, ProtoError::Wire(WireError::UnknownType(42))),
        "unknown message type 42",
    );
    let fd = good_memfd();
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        vec![0xab; 5000],
        &[fd.as_fd()],
        |e| matches!(e, ProtoError::Oversized { .. }),
        "longer than the largest valid message",
    );
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        encode(&Message::Release(Release {
            buffer_id: 0,
            seq: 0,
        })),
        &[],
        |e| matches!(e, ProtoError::Unexpected { .. }),
        "got Release",
    );
}

#[test]
fn bad_frames_are_refused() {
    let _g = serial();
    let chunks: Vec<Chunk> = layout()
        .planes
        .iter()
        .map(|p| Chunk {
            bytes_used: p.size() as u32,
            flags: 0,
        })
        .collect();
    let with_chunks = |id, seq, chunks: Vec<Chunk>| {
        encode(&Message::Frame(Frame {
            buffer_id: id,
            flags: 0,
            seq,
            pts_ns: 0,
            publish_ns: 0,
            checksum: 0,
            chunks,
        }))
    };
    let frame = |id, seq| with_chunks(id, seq, chunks.clone());
    let add = |prod: &Channel, client: &mut Client| {
        let fd = good_memfd();
        prod.send_with_fds(&Message::AddBuffer(add_buffer(0)), &[fd.as_fd()])
            .unwrap();
        client.next_event(Some(T)).unwrap();
    };
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        frame(1, 0),
        &[],
        |e| matches!(e, ProtoError::BadFrame(_)),
        "never added",
    );
    expect_client_error(
        MemoryKind::Memfd,
        |prod, client| {
            add(prod, client);
            prod.send_raw(&frame(0, 5), &[]).unwrap();
            client.next_event(Some(T)).unwrap();
        },
        frame(0, 6),
        &[],
        |e| matches!(e, ProtoError::BadFrame(_)),
        "reused while we still hold frame 5",
    );
    expect_client_error(
        MemoryKind::Memfd,
        |prod, client| {
            add(prod, client);
            prod.send_raw(&frame(0, 5), &[]).unwrap();
            client.next_event(Some(T)).unwrap();
            client.release(0).unwrap();
        },
        frame(0, 5),
        &[],
        |e| matches!(e, ProtoError::BadFrame(_)),
        "sequence went backwards",
    );
    // bytes_used is the plane's stride x rows: 0 and 0xFFFFFFFF are refused.
    for wrong in [0, u32::MAX] {
        let mut c = chunks.clone();
        c[1].bytes_used = wrong;
        expect_client_error(
            MemoryKind::Memfd,
            add,
            with_chunks(0, 0, c),
            &[],
            |e| matches!(e, ProtoError::BadFrame(_)),
            "bytes_used",
        );
    }
}

/// An AddBuffer with a descriptor no plane uses is refused (not kept open).
#[test]
fn an_unused_descriptor_is_refused() {
    let _g = serial();
    let (a, b) = (good_memfd(), good_memfd());
    let mut msg = add_buffer(0);
    msg.n_fds = 2;
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        encode(&Message::AddBuffer(msg)),
        &[a.as_fd(), b.as_fd()],
        |e| matches!(e, ProtoError::BadBuffer { id: 0, .. }),
        "fd 1 of 2 is used by no plane",
    );
}

/// A second Welcome renegotiates only once every buffer is removed, with our version and a
/// format we offered; otherwise the consumer refuses it and says why.
#[test]
fn renegotiation_is_checked() {
    let _g = serial();
    let add = |prod: &Channel, client: &mut Client| {
        let fd = good_memfd();
        prod.send_with_fds(&Message::AddBuffer(add_buffer(0)), &[fd.as_fd()])
            .unwrap();
        client.next_event(Some(T)).unwrap();
    };
    let rewelcome = |w: Welcome| encode(&Message::Welcome(w));
    expect_client_error(
        MemoryKind::Memfd,
        add,
        rewelcome(welcome(MemoryKind::Memfd)),
        &[],
        |e| matches!(e, ProtoError::BadBuffer { id: 0, .. }),
        "still added when the producer sent a new Welcome",
    );
    let mut other_version = welcome(MemoryKind::Memfd);
    other_version.version += 1;
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        rewelcome(other_version),
        &[],
        |e| matches!(e, ProtoError::Version { .. }),
        "version",
    );
    let mut not_offered = welcome(MemoryKind::Memfd);
    not_offered.modifier = 0x0100_0000_0000_0001;
    expect_client_error(
        MemoryKind::Memfd,
        nothing,
        rewelcome(not_offered),
        &[],
        |e| matches!(e, ProtoError::Unsupported(_)),
        "which we did not offer",
    );

    // The good case: remove, re-welcome at another size and count, add a buffer of the new
    // layout; the fds of the removed buffer are closed.
    let (prod, mut client) = connected(MemoryKind::Memfd);
    let before = fd_count();
    add(&prod, &mut client);
    assert_eq!(fd_count(), before + 1);
    prod.send(&Message::RemoveBuffer(RemoveBuffer { buffer_id: 0 }))
        .unwrap();
    assert!(matches!(
        client.next_event(Some(T)).unwrap(),
        Event::BufferRemoved(0)
    ));
    assert_eq!(fd_count(), before, "the removed buffer's fd is closed");
    let mut bigger = welcome(MemoryKind::Memfd);
    bigger.width *= 2;
    bigger.buffer_count = 7;
    prod.send(&Message::Welcome(bigger.clone())).unwrap();
    assert!(matches!(
        client.next_event(Some(T)).unwrap(),
        Event::Renegotiated
    ));
    assert_eq!(client.welcome(), &bigger);
    let format = FrameFormat {
        pixel: bigger.pixel,
        modifier: bigger.modifier,
        width: bigger.width,
        height: bigger.height,
    };
    let l = FrameLayout::gpu_friendly(format).unwrap();
    let fd = sealed_memfd(
        "renegotiated",
        l.size,
        SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW,
    )
    .unwrap();
    let planes = l
        .planes
        .iter()
        .map(|p| WirePlane {
            fd_index: 0,
            stride: p.stride,
            offset: p.offset,
            size: p.size(),
        })
        .collect();
    prod.send_with_fds(
        &Message::AddBuffer(AddBuffer {
            buffer_id: 6,
            n_fds: 1,
            planes,
        }),
        &[fd.as_fd()],
    )
    .unwrap();
    assert!(matches!(
        client.next_event(Some(T)).unwrap(),
        Event::BufferAdded(6)
    ));
    assert_eq!(client.buffer(6).unwrap().layout.format, format);
}

#[test]
fn handshake_errors_are_named() {
    let _g = serial();
    let before = fd_count();
    {
        let (mut prod, cons) = Channel::pair().unwrap();
        let mut w = welcome(MemoryKind::Memfd);
        w.version = VERSION + 1;
        prod.send(&Message::Welcome(w)).unwrap();
        let e = Client::handshake(cons, caps(), T).unwrap_err();
        assert!(
            matches!(e, ProtoError::Version { ours: VERSION, theirs } if theirs == VERSION + 1),
            "{e}"
        );
        assert_eq!(
            goodbye_from(&mut prod).reason,
            GoodbyeReason::VersionMismatch
        );
    }
    {
        // A format the consumer did not offer.
        let (mut prod, cons) = Channel::pair().unwrap();
        let mut w = welcome(MemoryKind::Memfd);
        w.pixel = PixelFormat::Yuyv;
        prod.send(&Message::Welcome(w)).unwrap();
        let e = Client::handshake(cons, caps(), T).unwrap_err();
        assert!(e.to_string().contains("YUYV"), "{e}");
        assert_eq!(goodbye_from(&mut prod).reason, GoodbyeReason::Unsupported);
    }
    {
        // Silence: a bounded wait, then a timeout naming what was awaited.
        let (_prod, cons) = Channel::pair().unwrap();
        let e = Client::handshake(cons, caps(), Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("Welcome"), "{e}");
    }
    assert_eq!(fd_count(), before);
}

// ---- the producer's end against a hostile consumer ----

fn pool() -> Pool {
    Pool::new(
        &MemfdAllocator::new(),
        FrameFormat::linear(PixelFormat::Nv12, W, H),
        2,
    )
    .unwrap()
}

/// A session with both buffers sent and frame `seq` 0 in buffer 0 held by the consumer.
fn serving(pool: &Pool) -> (Channel, Session<Arc<Lease>>) {
    let (prod, mut cons) = Channel::pair().unwrap();
    let mut s = Session::start(prod, &welcome(MemoryKind::Memfd)).unwrap();
    for id in 0..2 {
        s.add_buffer(id, pool.buffer(id).unwrap()).unwrap();
    }
    let lease = pool.try_acquire().unwrap();
    let frame = Frame {
        buffer_id: lease.id(),
        flags: 0,
        seq: 0,
        pts_ns: 0,
        publish_ns: 0,
        checksum: 0,
        chunks: full_chunks(lease.buffer()),
    };
    s.send_frame(frame, Arc::new(lease)).unwrap();
    // Drain what the consumer end received (closing the fds it got).
    while let Ok(Some(_)) = cons.try_recv() {}
    (cons, s)
}

#[test]
fn releases_are_checked_and_everything_held_comes_back() {
    let _g = serial();
    let pool = pool();
    let before = fd_count();
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::Release(Release {
                buffer_id: 1,
                seq: 0,
            }),
            "not held by this consumer",
        ),
        (
            Message::Release(Release {
                buffer_id: 9,
                seq: 0,
            }),
            "does not exist",
        ),
        (
            Message::Release(Release {
                buffer_id: 0,
                seq: 3,
            }),
            "holds frame 0, not 3",
        ),
        (
            Message::Hello(Hello {
                version: VERSION,
                flags: 0,
                caps: vec![],
            }),
            "got Hello",
        ),
    ];
    for (msg, text) in cases {
        let (mut cons, mut s) = serving(&pool);
        assert_eq!(pool.free_count(), 1);
        cons.send(&msg).unwrap();
        let e = s.pump(T).unwrap_err();
        assert!(e.to_string().contains(text), "{e} lacks {text:?}");
        assert!(goodbye_from(&mut cons).message.contains(text));
        drop(s);
        assert_eq!(
            pool.free_count(),
            2,
            "the held buffer came back with the session"
        );
    }
    // A double release: the first is fine, the second is refused.
    let (cons, mut s) = serving(&pool);
    let rel = Message::Release(Release {
        buffer_id: 0,
        seq: 0,
    });
    cons.send(&rel).unwrap();
    assert_eq!(s.pump(T).unwrap(), Pumped::Released(1));
    assert_eq!(pool.free_count(), 2);
    cons.send(&rel).unwrap();
    assert!(s
        .pump(T)
        .unwrap_err()
        .to_string()
        .contains("double release"));
    drop((cons, s));
    // A consumer that vanishes.
    let (cons, mut s) = serving(&pool);
    drop(cons);
    assert_eq!(s.pump(T).unwrap(), Pumped::Left);
    drop(s);
    assert_eq!(pool.free_count(), 2);
    assert_eq!(fd_count(), before);
}

#[test]
fn hello_errors_are_named() {
    let _g = serial();
    let before = fd_count();
    let (mut prod, mut cons) = Channel::pair().unwrap();
    cons.send(&Message::Hello(Hello {
        version: 7,
        flags: 0,
        caps: caps(),
    }))
    .unwrap();
    let e = read_hello(&mut prod, T).unwrap_err();
    assert!(matches!(e, ProtoError::Version { theirs: 7, .. }), "{e}");
    assert_eq!(
        goodbye_from(&mut cons).reason,
        GoodbyeReason::VersionMismatch
    );
    // A Hello carrying descriptors.
    let fd = good_memfd();
    let n = fd_count();
    cons.send_with_fds(
        &Message::Hello(Hello {
            version: VERSION,
            flags: 0,
            caps: caps(),
        }),
        &[fd.as_fd()],
    )
    .unwrap();
    let e = read_hello(&mut prod, T).unwrap_err();
    assert!(matches!(e, ProtoError::FdCount { .. }), "{e}");
    assert_eq!(fd_count(), n);
    // Nothing at all.
    let e = read_hello(&mut prod, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, ProtoError::Timeout { .. }), "{e}");
    drop((prod, cons, fd));
    assert_eq!(fd_count(), before);
}
