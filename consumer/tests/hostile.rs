//! Hostile peers against the real processes. The producer must answer each bad consumer with a
//! Goodbye naming the problem, stay up, return to its starting fd count, and then serve a good
//! consumer every frame verified. The consumer must refuse a bad producer with a clear error
//! and a non-zero exit.

mod common;
use common::*;
use dmabuf_core::alloc::sealed_memfd;
use dmabuf_core::format::{FrameFormat, FrameLayout, PixelFormat, MOD_LINEAR};
use dmabuf_core::proto::wire::*;
use dmabuf_core::proto::{Channel, Listener, ListenerOptions};
use dmabuf_core::testing::fd_count_of;
use dmabuf_core::{AllocatorKind, MemoryKind};
use nix::fcntl::SealFlag;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn nv12_caps() -> Vec<Cap> {
    vec![Cap {
        fourcc: PixelFormat::Nv12.fourcc(),
        memory_mask: MemoryKind::Memfd.bit() | MemoryKind::DmaBuf.bit(),
        modifier: MOD_LINEAR,
    }]
}

fn hello() -> Message {
    Message::Hello(Hello {
        version: VERSION,
        flags: 0,
        caps: nv12_caps(),
    })
}

fn memfd(size: u64, seals: SealFlag) -> OwnedFd {
    sealed_memfd("hostile", size, seals).unwrap()
}

/// The producer's Goodbye (skipping buffers and frames), or `None` if it just closed.
fn goodbye(chan: &mut Channel) -> Option<Goodbye> {
    loop {
        match chan.recv(Some(T), "the producer's goodbye") {
            Ok((Message::Goodbye(g), _)) => return Some(g),
            Ok(_) => continue,
            Err(dmabuf_core::proto::ProtoError::Closed) => return None,
            Err(e) => panic!("waiting for goodbye: {e}"),
        }
    }
}

/// Handshake and wait for the first frame; returns (buffer id, seq).
fn first_frame(chan: &mut Channel) -> (u32, u64) {
    chan.send(&hello()).unwrap();
    loop {
        match chan.recv(Some(T), "a frame").unwrap() {
            (Message::Frame(f), _) => return (f.buffer_id, f.seq),
            (Message::Goodbye(g), _) => panic!("goodbye: {g:?}"),
            _ => {}
        }
    }
}

#[test]
fn producer_survives_hostile_consumers_and_serves_the_next() {
    let sock = socket("hostile-consumers");
    let mut p = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--size",
            "320x240",
            "--stall-timeout",
            "1",
            "--buffers",
            "8",
        ],
    );
    let pid = p.pid();
    // Let it settle after binding, then take its fd count.
    std::thread::sleep(Duration::from_millis(200));
    let base0 = fd_count_of(pid);
    assert!(base0 > 4, "listener + pool fds expected, got {base0}");
    // A good consumer streams the whole time: no hostile one may disturb it.
    let bystander_json = sock.with_extension("bystander.json");
    let bystander = std::process::Command::new(consumer_bin())
        .arg("--socket")
        .arg(&sock)
        .args(["--quiet", "--import", "cpu-map", "--verify", "--stats-json"])
        .arg(&bystander_json)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || fd_count_of(pid) == base0 + 1));
    let base = base0 + 1;

    type Case = Box<dyn Fn(&mut Channel) -> Option<Goodbye>>;
    let pipe = nix::unistd::pipe().unwrap();
    let cases: Vec<(&str, Case, Option<&str>)> = vec![
        (
            "garbage instead of Hello",
            Box::new(|c| {
                c.send_raw(b"GET / HTTP/1.1\r\n\r\n", &[]).unwrap();
                goodbye(c)
            }),
            Some("bad magic"),
        ),
        (
            "wrong version",
            Box::new(|c| {
                c.send(&Message::Hello(Hello {
                    version: 9,
                    flags: 0,
                    caps: nv12_caps(),
                }))
                .unwrap();
                goodbye(c)
            }),
            Some("version mismatch"),
        ),
        (
            "Hello with a descriptor",
            Box::new(move |c| {
                c.send_with_fds(&hello(), &[pipe.0.as_fd()]).unwrap();
                goodbye(c)
            }),
            Some("Hello carried 1 descriptor"),
        ),
        (
            "Hello with 200 descriptors",
            Box::new(|c| {
                let fds: Vec<OwnedFd> = (0..200).map(|_| memfd(4096, SealFlag::empty())).collect();
                let b: Vec<BorrowedFd> = fds.iter().map(|f| f.as_fd()).collect();
                // The kernel caps one message at 253 fds; 200 is accepted by sendmsg.
                c.send_with_fds(&hello(), &b).unwrap();
                goodbye(c)
            }),
            Some("too many descriptors"),
        ),
        (
            "oversized message",
            Box::new(|c| {
                c.send_raw(&[7u8; 60000], &[]).unwrap();
                goodbye(c)
            }),
            Some("longer than the largest valid message"),
        ),
        (
            "no format in common",
            Box::new(|c| {
                c.send(&Message::Hello(Hello {
                    version: VERSION,
                    flags: 0,
                    caps: vec![Cap {
                        fourcc: PixelFormat::Yuyv.fourcc(),
                        memory_mask: MemoryKind::Memfd.bit(),
                        modifier: MOD_LINEAR,
                    }],
                }))
                .unwrap();
                goodbye(c)
            }),
            Some("cannot take NV12"),
        ),
        (
            "release of a buffer that does not exist",
            Box::new(|c| {
                first_frame(c);
                c.send(&Message::Release(Release {
                    buffer_id: 99,
                    seq: 0,
                }))
                .unwrap();
                goodbye(c)
            }),
            Some("buffer 99 does not exist"),
        ),
        (
            "double release",
            Box::new(|c| {
                let (id, seq) = first_frame(c);
                let r = Message::Release(Release { buffer_id: id, seq });
                c.send(&r).unwrap();
                c.send(&r).unwrap();
                goodbye(c)
            }),
            Some("double release"),
        ),
        (
            "release of a buffer never sent to it",
            Box::new(|c| {
                let (id, _) = first_frame(c);
                // Buffer `id + 1` may or may not have reached it yet: either way its seq is wrong.
                c.send(&Message::Release(Release {
                    buffer_id: (id + 1) % 8,
                    seq: u64::MAX - 1,
                }))
                .unwrap();
                goodbye(c)
            }),
            Some("release: buffer"),
        ),
        (
            "release with the wrong seq",
            Box::new(|c| {
                let (id, seq) = first_frame(c);
                c.send(&Message::Release(Release {
                    buffer_id: id,
                    seq: seq + 1000,
                }))
                .unwrap();
                goodbye(c)
            }),
            Some("not"),
        ),
        (
            "truncated Release mid-stream",
            Box::new(|c| {
                let (id, seq) = first_frame(c);
                let bytes = encode(&Message::Release(Release { buffer_id: id, seq }));
                c.send_raw(&bytes[..12], &[]).unwrap();
                goodbye(c)
            }),
            Some("header says"),
        ),
        (
            "unknown message type mid-stream",
            Box::new(|c| {
                let (id, seq) = first_frame(c);
                let mut bytes = encode(&Message::Release(Release { buffer_id: id, seq }));
                bytes[4..6].copy_from_slice(&77u16.to_le_bytes());
                c.send_raw(&bytes, &[]).unwrap();
                goodbye(c)
            }),
            Some("unknown message type 77"),
        ),
        (
            "Release carrying a directory, /dev/null and a socket",
            Box::new(|c| {
                let (id, seq) = first_frame(c);
                let d = std::fs::File::open("/").unwrap();
                let n = std::fs::File::open("/dev/null").unwrap();
                let (s1, _s2) = Channel::pair().unwrap();
                c.send_with_fds(
                    &Message::Release(Release { buffer_id: id, seq }),
                    &[d.as_fd(), n.as_fd(), s1.as_fd()],
                )
                .unwrap();
                goodbye(c)
            }),
            Some("Release carried 3 descriptor"),
        ),
        (
            "a second Hello mid-stream",
            Box::new(|c| {
                first_frame(c);
                c.send(&hello()).unwrap();
                goodbye(c)
            }),
            Some("got Hello"),
        ),
        (
            "Welcome instead of Hello",
            Box::new(|c| {
                c.send(&Message::Welcome(Welcome {
                    version: VERSION,
                    memory: MemoryKind::Memfd,
                    allocator: AllocatorKind::Memfd,
                    buffer_count: 2,
                    pixel: PixelFormat::Nv12,
                    width: 64,
                    height: 48,
                    fps_num: 60,
                    fps_den: 1,
                    color: ColorInfo::default(),
                    modifier: MOD_LINEAR,
                    geometry: Geometry::default(),
                    device: 0,
                }))
                .unwrap();
                goodbye(c)
            }),
            Some("expected Hello, got Welcome"),
        ),
        (
            "a consumer that stops releasing",
            Box::new(|c| {
                first_frame(c);
                goodbye(c)
            }),
            Some("released none for 1s; dropping it"),
        ),
        (
            "a consumer that vanishes mid-stream",
            Box::new(|c| {
                first_frame(c);
                None
            }),
            None,
        ),
    ];
    for (name, case, want) in cases {
        let mut chan = Channel::connect(&sock).unwrap();
        let g = case(&mut chan);
        drop(chan);
        if let Some(want) = want {
            let g = g.unwrap_or_else(|| panic!("{name}: the producer closed without a goodbye"));
            assert!(
                g.message.to_lowercase().contains(&want.to_lowercase()),
                "{name}: goodbye {g:?} lacks {want:?}"
            );
        }
        assert!(p.alive(), "{name}: the producer died");
        assert!(
            eventually(Duration::from_secs(5), || fd_count_of(pid) == base),
            "{name}: producer fd count {} != {base} at start",
            fd_count_of(pid)
        );
    }

    // The bystander was not disturbed: every frame it got verified, none dropped.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bystander.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = bystander.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bystander: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = read_json(&bystander_json);
    let frames = b["frames"].as_u64().unwrap();
    assert!(frames > 60, "bystander: {b}");
    assert_eq!(b["verified"].as_u64(), Some(frames), "bystander: {b}");
    assert_eq!(b["dropped"].as_u64(), Some(0), "bystander: {b}");
    let base = base0;
    assert!(eventually(Duration::from_secs(5), || fd_count_of(pid) == base));

    // And the next, well-behaved consumer gets every frame verified.
    let s = consume(
        &sock,
        "good",
        &["--frames", "120", "--verify"],
        Duration::from_secs(60),
    );
    assert_eq!(
        (s["frames"].as_u64(), s["verified"].as_u64()),
        (Some(120), Some(120))
    );
    assert!(eventually(Duration::from_secs(5), || fd_count_of(pid) == base));

    // SIGTERM: a clean exit that removes the socket file.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (st, err) = p.wait(Duration::from_secs(5));
    assert!(st.success(), "{err}");
    assert!(!sock.exists(), "socket file left behind");
}

/// Play a producer that sends `bad` after a good Welcome; the consumer must exit 1 naming
/// `want`, and tell us why in a Goodbye.
fn consumer_refuses(name: &str, memory: MemoryKind, bad: impl FnOnce(&Channel), want: &str) {
    let sock = socket(name);
    let listener = Listener::bind(&sock, &ListenerOptions::default()).unwrap();
    let s2 = sock.clone();
    let consumer =
        std::thread::spawn(move || run_consumer(&s2, &["--verify"], Duration::from_secs(30)));
    let mut chan = listener
        .accept(Some(T))
        .unwrap()
        .expect("consumer connects");
    match chan.recv(Some(T), "Hello").unwrap().0 {
        Message::Hello(h) => assert!(h.caps.len() >= 5, "consumer offers every format"),
        m => panic!("{m:?}"),
    }
    chan.send(&Message::Welcome(fake_welcome(memory, 2, 60)))
        .unwrap();
    bad(&chan);
    let out = consumer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(
        stderr.contains(want),
        "{name}: stderr lacks {want:?}:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let g = goodbye(&mut chan).expect("the consumer says why");
    assert_eq!(g.reason, GoodbyeReason::ProtocolError, "{g:?}");
}

fn add(id: u32, offset1: u64) -> Message {
    let l = FrameLayout::gpu_friendly(FrameFormat::linear(PixelFormat::Nv12, 64, 48)).unwrap();
    Message::AddBuffer(AddBuffer {
        buffer_id: id,
        n_fds: 1,
        planes: vec![
            WirePlane {
                fd_index: 0,
                stride: l.planes[0].stride,
                offset: 0,
                size: l.planes[0].size(),
            },
            WirePlane {
                fd_index: 0,
                stride: l.planes[1].stride,
                offset: offset1,
                size: l.planes[1].size(),
            },
        ],
    })
}

#[test]
fn consumer_refuses_an_unsealed_memfd() {
    consumer_refuses(
        "unsealed",
        MemoryKind::Memfd,
        |c| {
            let fd = memfd(65536, SealFlag::empty());
            c.send_with_fds(&add(0, 16384), &[fd.as_fd()]).unwrap();
        },
        "not sealed",
    );
}

#[test]
fn consumer_refuses_a_layout_beyond_the_fd() {
    consumer_refuses(
        "beyond",
        MemoryKind::Memfd,
        |c| {
            let fd = memfd(16384, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW);
            c.send_with_fds(&add(0, 16000), &[fd.as_fd()]).unwrap();
        },
        "beyond the end of fd 0",
    );
}

#[test]
fn consumer_refuses_a_pipe_posing_as_a_dma_buf() {
    consumer_refuses(
        "pipe",
        MemoryKind::DmaBuf,
        |c| {
            let (r, _w) = nix::unistd::pipe().unwrap();
            c.send_with_fds(&add(0, 16384), &[r.as_fd()]).unwrap();
        },
        "expected a dma-buf, got pipe:",
    );
}

/// A regular file whose name looks like a dma-buf's (`/proc/self/fd` shows `/dmabuf:…`) is
/// not one: the check is the file system's magic (DMA_BUF_MAGIC), not the name.
#[test]
fn consumer_refuses_a_file_named_like_a_dma_buf() {
    let path = std::path::Path::new("/dmabuf:not-really");
    if std::fs::write(path, vec![0u8; 16384 * 2]).is_err() {
        // Not root: the same check with a name under /tmp still proves the magic is used.
        dmabuf_core::testing::skip_or_fail(
            "consumer_refuses_a_file_named_like_a_dma_buf",
            "cannot create /dmabuf:not-really (needs root)",
        );
        return;
    }
    consumer_refuses(
        "fake-dmabuf",
        MemoryKind::DmaBuf,
        |c| {
            let f = std::fs::File::open(path).unwrap();
            c.send_with_fds(&add(0, 16384), &[f.as_fd()]).unwrap();
        },
        "expected a dma-buf, got /dmabuf:not-really (file system magic",
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn consumer_refuses_a_frame_in_an_unknown_buffer() {
    consumer_refuses(
        "unknown-frame",
        MemoryKind::Memfd,
        |c| {
            c.send(&Message::Frame(Frame {
                buffer_id: 1,
                flags: 0,
                seq: 0,
                pts_ns: 0,
                publish_ns: 0,
                checksum: 0,
                chunks: vec![Chunk::default(); 2],
            }))
            .unwrap();
        },
        "buffer 1 is not added (never added, or removed)",
    );
}

#[test]
fn consumer_without_a_producer_says_so() {
    let sock = socket("nobody");
    let t = std::time::Instant::now();
    let out = run_consumer(
        &sock,
        &["--connect-timeout", "0.3"],
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no producer at"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn consumer_refuses_a_modifier_it_did_not_offer() {
    let sock = socket("modifier");
    let listener = Listener::bind(&sock, &ListenerOptions::default()).unwrap();
    let s2 = sock.clone();
    let consumer =
        std::thread::spawn(move || run_consumer(&s2, &["--verify"], Duration::from_secs(30)));
    let mut chan = listener
        .accept(Some(T))
        .unwrap()
        .expect("consumer connects");
    let offered = match chan.recv(Some(T), "Hello").unwrap().0 {
        Message::Hello(h) => h.caps,
        m => panic!("{m:?}"),
    };
    // I915_FORMAT_MOD_X_TILED: a tiled layout this consumer cannot import here.
    let x_tiled = 0x0100_0000_0000_0001u64;
    assert!(offered.iter().all(|c| c.modifier != x_tiled), "{offered:?}");
    chan.send(&Message::Welcome(Welcome {
        version: VERSION,
        memory: MemoryKind::DmaBuf,
        allocator: AllocatorKind::Gbm,
        buffer_count: 2,
        pixel: PixelFormat::Nv12,
        width: 64,
        height: 48,
        fps_num: 60,
        fps_den: 1,
        color: ColorInfo::default(),
        modifier: x_tiled,
        geometry: Geometry::default(),
        device: 0,
    }))
    .unwrap();
    let out = consumer.join().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("modifier 0x100000000000001") && e.contains("did not offer"),
        "{e}"
    );
    let g = goodbye(&mut chan).expect("the consumer says why");
    assert_eq!(g.reason, GoodbyeReason::Unsupported, "{g:?}");
}

/// Every other way a producer can be hostile after a good Welcome, each against a fresh
/// consumer process: it must exit 1 naming the problem (and tell the producer in a Goodbye),
/// never panic, hang or die of SIGBUS. (The fd accounting of each case — every received fd
/// closed — is asserted in-process by `dmabuf-core/tests/session.rs`.)
#[test]
fn consumer_refuses_every_hostile_producer() {
    fn good() -> OwnedFd {
        memfd(65536, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW)
    }
    type Bad = Box<dyn FnOnce(&Channel)>;
    let cases: Vec<(&str, MemoryKind, Bad, &str)> = vec![
        (
            "socket-fd",
            MemoryKind::Memfd,
            Box::new(|c| {
                let (s1, _s2) = Channel::pair().unwrap();
                c.send_with_fds(&add(0, 16384), &[s1.as_fd()]).unwrap();
            }),
            "expected a memfd, got socket:",
        ),
        (
            "directory-fd",
            MemoryKind::Memfd,
            Box::new(|c| {
                let d = std::fs::File::open("/").unwrap();
                c.send_with_fds(&add(0, 16384), &[d.as_fd()]).unwrap();
            }),
            "expected a memfd, got /",
        ),
        (
            "dev-null-fd",
            MemoryKind::DmaBuf,
            Box::new(|c| {
                let d = std::fs::File::open("/dev/null").unwrap();
                c.send_with_fds(&add(0, 16384), &[d.as_fd()]).unwrap();
            }),
            "expected a dma-buf, got /dev/null",
        ),
        (
            "shrunk-memfd",
            MemoryKind::Memfd,
            Box::new(|c| {
                // Shrunk before it was sealed: the layout no longer fits.
                let fd = memfd(65536, SealFlag::empty());
                nix::unistd::ftruncate(&fd, 4096).unwrap();
                nix::fcntl::fcntl(
                    &fd,
                    nix::fcntl::FcntlArg::F_ADD_SEALS(
                        SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW,
                    ),
                )
                .unwrap();
                c.send_with_fds(&add(0, 16384), &[fd.as_fd()]).unwrap();
            }),
            "beyond the end of fd 0",
        ),
        (
            "overflowing-layout",
            MemoryKind::Memfd,
            Box::new(|c| {
                let fd = good();
                c.send_with_fds(&add(0, u64::MAX - 100), &[fd.as_fd()])
                    .unwrap();
            }),
            "overflows",
        ),
        (
            "200-fds",
            MemoryKind::Memfd,
            Box::new(|c| {
                let fds: Vec<OwnedFd> = (0..200).map(|_| good()).collect();
                let b: Vec<BorrowedFd> = fds.iter().map(|f| f.as_fd()).collect();
                c.send_with_fds(&add(0, 16384), &b).unwrap();
            }),
            "too many descriptors",
        ),
        (
            "duplicate-id",
            MemoryKind::Memfd,
            Box::new(|c| {
                let (a, b) = (good(), good());
                c.send_with_fds(&add(0, 16384), &[a.as_fd()]).unwrap();
                c.send_with_fds(&add(0, 16384), &[b.as_fd()]).unwrap();
            }),
            "sent twice",
        ),
        (
            "id-out-of-range",
            MemoryKind::Memfd,
            Box::new(|c| {
                let fd = good();
                c.send_with_fds(&add(7, 16384), &[fd.as_fd()]).unwrap();
            }),
            "out of range",
        ),
        (
            "garbage",
            MemoryKind::Memfd,
            Box::new(|c| c.send_raw(b"\x00\x01garbage garbage", &[]).unwrap()),
            "bad magic",
        ),
        (
            "truncated",
            MemoryKind::Memfd,
            Box::new(|c| {
                let bytes = encode(&add(0, 16384));
                c.send_raw(&bytes[..20], &[]).unwrap();
            }),
            "header says",
        ),
        (
            "oversized",
            MemoryKind::Memfd,
            Box::new(|c| c.send_raw(&[0x44u8; 65000], &[]).unwrap()),
            "longer than the largest valid message",
        ),
        (
            "unknown-type",
            MemoryKind::Memfd,
            Box::new(|c| {
                let mut bytes = encode(&add(0, 16384));
                bytes[4..6].copy_from_slice(&99u16.to_le_bytes());
                c.send_raw(&bytes, &[]).unwrap();
            }),
            "unknown message type 99",
        ),
        (
            // A second Welcome renegotiates, but only once every buffer is removed.
            "second-welcome-with-buffers-added",
            MemoryKind::Memfd,
            Box::new(|c| {
                let fd = good();
                c.send_with_fds(&add(0, 16384), &[fd.as_fd()]).unwrap();
                c.send(&Message::Welcome(Welcome {
                    version: VERSION,
                    memory: MemoryKind::Memfd,
                    allocator: AllocatorKind::Memfd,
                    buffer_count: 2,
                    pixel: PixelFormat::Nv12,
                    width: 64,
                    height: 48,
                    fps_num: 60,
                    fps_den: 1,
                    color: ColorInfo::default(),
                    modifier: MOD_LINEAR,
                    geometry: Geometry::default(),
                    device: 0,
                }))
                .unwrap();
            }),
            "still added when the producer sent a new Welcome",
        ),
        (
            "frame-before-its-buffer",
            MemoryKind::Memfd,
            Box::new(|c| {
                let fd = good();
                c.send_with_fds(&add(0, 16384), &[fd.as_fd()]).unwrap();
                c.send(&Message::Frame(Frame {
                    buffer_id: 1,
                    flags: 0,
                    seq: 0,
                    pts_ns: 0,
                    publish_ns: 0,
                    checksum: 0,
                    chunks: vec![Chunk::default(); 2],
                }))
                .unwrap();
            }),
            "buffer 1 is not added (never added, or removed)",
        ),
    ];
    for (name, memory, bad, want) in cases {
        consumer_refuses(name, memory, bad, want);
    }
}

/// A producer speaking another protocol version: refused at the handshake.
#[test]
fn consumer_refuses_a_wrong_version() {
    let sock = socket("wrong-version");
    let listener = Listener::bind(&sock, &ListenerOptions::default()).unwrap();
    let s2 = sock.clone();
    let consumer = std::thread::spawn(move || run_consumer(&s2, &[], Duration::from_secs(30)));
    let mut chan = listener.accept(Some(T)).unwrap().expect("connects");
    chan.recv(Some(T), "Hello").unwrap();
    let mut bytes = encode(&Message::Welcome(Welcome {
        version: VERSION,
        memory: MemoryKind::Memfd,
        allocator: AllocatorKind::Memfd,
        buffer_count: 2,
        pixel: PixelFormat::Nv12,
        width: 64,
        height: 48,
        fps_num: 60,
        fps_den: 1,
        color: ColorInfo::default(),
        modifier: MOD_LINEAR,
        geometry: Geometry::default(),
        device: 0,
    }));
    // Welcome.version is the first field after the 8-byte header.
    bytes[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    chan.send_raw(&bytes, &[]).unwrap();
    let out = consumer.join().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("version mismatch"), "{e}");
    let g = goodbye(&mut chan).expect("the consumer says why");
    assert_eq!(g.reason, GoodbyeReason::VersionMismatch, "{g:?}");
}
