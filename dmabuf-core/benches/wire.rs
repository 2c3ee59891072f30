//! Micro-benchmarks of the protocol: encode and decode of each message, and one send/receive
//! round trip over a real `SOCK_SEQPACKET` socketpair with 0 descriptors (a `Frame`, the
//! per-frame message) and with 1 and 4 (an `AddBuffer`, sent once per buffer).
//!
//! `cargo bench -p dmabuf-core --bench wire`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use dmabuf_core::alloc::sealed_memfd;
use dmabuf_core::buffer::{AllocatorKind, MemoryKind};
use dmabuf_core::format::PixelFormat;
use dmabuf_core::proto::wire::*;
use dmabuf_core::proto::Channel;
use nix::fcntl::SealFlag;
use std::os::fd::AsFd;
use std::time::Duration;

fn add_buffer(n_fds: u32) -> AddBuffer {
    AddBuffer {
        buffer_id: 0,
        n_fds,
        planes: (0..n_fds.max(1))
            .map(|i| WirePlane {
                fd_index: i.min(n_fds.saturating_sub(1)),
                stride: 1920,
                offset: 0,
                size: 1920 * 1080,
            })
            .collect(),
    }
}

fn frame() -> Frame {
    Frame {
        buffer_id: 1,
        flags: FRAME_FLAG_CHECKSUM,
        seq: 12345,
        pts_ns: 205_816_666,
        publish_ns: 123_456_789,
        checksum: 0xdead_beef,
        chunks: vec![
            Chunk {
                bytes_used: 1920 * 1080,
                flags: 0,
            },
            Chunk {
                bytes_used: 1920 * 540,
                flags: 0,
            },
        ],
    }
}

fn messages() -> Vec<(&'static str, Message)> {
    vec![
        (
            "Hello/8caps",
            Message::Hello(Hello {
                version: VERSION,
                flags: 0,
                caps: (0..8)
                    .map(|i| Cap {
                        fourcc: 0x3231_564e + i,
                        memory_mask: 3,
                        modifier: 0,
                    })
                    .collect(),
            }),
        ),
        (
            "Welcome",
            Message::Welcome(Welcome {
                version: VERSION,
                memory: MemoryKind::DmaBuf,
                allocator: AllocatorKind::DmaHeap,
                buffer_count: 4,
                pixel: PixelFormat::Nv12,
                width: 1920,
                height: 1080,
                fps_num: 60,
                fps_den: 1,
                color: ColorInfo {
                    matrix: 1,
                    range: 1,
                    ..ColorInfo::default()
                },
                modifier: 0,
                geometry: Geometry::default(),
                device: 0,
            }),
        ),
        ("AddBuffer", Message::AddBuffer(add_buffer(1))),
        ("Frame", Message::Frame(frame())),
        (
            "Release",
            Message::Release(Release {
                buffer_id: 1,
                seq: 12345,
            }),
        ),
        (
            "RemoveBuffer",
            Message::RemoveBuffer(RemoveBuffer { buffer_id: 1 }),
        ),
        (
            "Goodbye",
            Message::Goodbye(Goodbye {
                reason: GoodbyeReason::EndOfStream,
                message: "end of stream".into(),
            }),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (name, m) in messages() {
        g.bench_function(name, |b| b.iter(|| encode(black_box(&m))));
    }
    g.finish();
    let mut g = c.benchmark_group("decode");
    for (name, m) in messages() {
        let bytes = encode(&m);
        g.bench_function(name, |b| b.iter(|| decode(black_box(&bytes)).unwrap()));
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let (a, mut b) = Channel::pair().unwrap();
    let mut g = c.benchmark_group("send_recv");
    let f = Message::Frame(frame());
    g.bench_function(BenchmarkId::new("Frame", "0 fds"), |bench| {
        bench.iter(|| {
            a.send(&f).unwrap();
            let (m, fds) = b.recv(Some(Duration::from_secs(1)), "bench").unwrap();
            assert!(fds.is_empty());
            black_box(m)
        })
    });
    for n in [1u32, 4] {
        let fds: Vec<_> = (0..n)
            .map(|_| {
                sealed_memfd(
                    "bench",
                    4096,
                    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW,
                )
                .unwrap()
            })
            .collect();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let m = Message::AddBuffer(add_buffer(n));
        g.bench_function(BenchmarkId::new("AddBuffer", format!("{n} fds")), |bench| {
            bench.iter(|| {
                a.send_with_fds(&m, &borrowed).unwrap();
                let (m, got) = b.recv(Some(Duration::from_secs(1)), "bench").unwrap();
                assert_eq!(got.len(), n as usize);
                black_box(m)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, round_trip);
criterion_main!(benches);
