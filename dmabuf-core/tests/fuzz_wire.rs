//! Fuzzing the wire decoder on stable Rust with proptest: arbitrary bytes, bytes behind a valid
//! header, and valid messages mutated (bytes flipped, cut, extended, spliced). Properties: the
//! decoder never panics; whatever it accepts re-encodes to exactly the bytes it came from
//! (decoding is strict: one message, one encoding) and decodes again to the same message.
//!
//! CI runs a modest number of cases per strategy; run it longer by hand:
//!
//!   PROPTEST_CASES=1000000 cargo test -p dmabuf-core --test fuzz_wire --release -- --nocapture
//!
//! Each test prints its executions; a crash (a panic in the decoder) fails the test with the
//! shrunk input.

use dmabuf_core::buffer::{AllocatorKind, MemoryKind};
use dmabuf_core::format::PixelFormat;
use dmabuf_core::proto::wire::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// The property every input must satisfy.
fn check(bytes: &[u8]) -> Result<bool, TestCaseError> {
    match decode(bytes) {
        Ok(m) => {
            let again = encode(&m);
            prop_assert_eq!(&again[..], bytes, "{} re-encodes differently", m.name());
            prop_assert_eq!(decode(&again).ok(), Some(m));
            Ok(true)
        }
        Err(e) => {
            // Errors are named, never empty.
            prop_assert!(!e.to_string().is_empty());
            Ok(false)
        }
    }
}

fn samples() -> Vec<Vec<u8>> {
    let msgs = [
        Message::Hello(Hello {
            version: VERSION,
            flags: 0,
            caps: (0..5)
                .map(|i| Cap {
                    fourcc: PixelFormat::ALL[i].fourcc(),
                    memory_mask: MemoryKind::Memfd.bit() | MemoryKind::DmaBuf.bit(),
                    modifier: 0,
                })
                .collect(),
        }),
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
        Message::AddBuffer(AddBuffer {
            buffer_id: 3,
            n_fds: 1,
            planes: vec![
                WirePlane {
                    fd_index: 0,
                    stride: 1920,
                    offset: 0,
                    size: 1920 * 1080,
                },
                WirePlane {
                    fd_index: 0,
                    stride: 1920,
                    offset: 1920 * 1080,
                    size: 1920 * 540,
                },
            ],
        }),
        Message::Frame(Frame {
            buffer_id: 1,
            flags: FRAME_FLAG_CHECKSUM,
            seq: 12345,
            pts_ns: 205_833_333,
            publish_ns: 987_654_321,
            checksum: 0xdead_beef,
            chunks: vec![
                Chunk {
                    bytes_used: 1920 * 1080,
                    flags: 0,
                },
                Chunk {
                    bytes_used: 1920 * 540,
                    flags: CHUNK_FLAG_CORRUPTED,
                },
            ],
        }),
        Message::Release(Release {
            buffer_id: 1,
            seq: 12345,
        }),
        Message::RemoveBuffer(RemoveBuffer { buffer_id: 2 }),
        Message::Goodbye(Goodbye {
            reason: GoodbyeReason::ProtocolError,
            message: "buffer 3: plane 1 lies beyond the end of fd 0 — ü".into(),
        }),
    ];
    msgs.iter().map(encode).collect()
}

fn report(name: &str, runs: u64, accepted: u64) {
    eprintln!("fuzz_wire {name}: {runs} executions, {accepted} decoded, 0 crashes");
}

#[test]
fn arbitrary_bytes() {
    let accepted = std::cell::Cell::new(0u64);
    let strat = prop::collection::vec(any::<u8>(), 0..=MAX_MESSAGE_LEN + 64);
    runner()
        .run(&strat, |b| {
            accepted.set(accepted.get() + u64::from(check(&b)?));
            Ok(())
        })
        .unwrap();
    report("arbitrary_bytes", u64::from(cases()), accepted.get());
}

#[test]
fn bytes_behind_a_valid_header() {
    let accepted = std::cell::Cell::new(0u64);
    // A right magic, a known or unknown type, a length that matches or not: reaches every
    // message's body decoder.
    let strat = (
        0u16..10,
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..=MAX_MESSAGE_LEN),
    );
    runner()
        .run(&strat, |(ty, right_len, body)| {
            let mut b = Vec::with_capacity(8 + body.len());
            b.extend_from_slice(&MAGIC.to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            let len = if right_len {
                (8 + body.len()) as u16
            } else {
                body.len() as u16
            };
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&body);
            accepted.set(accepted.get() + u64::from(check(&b)?));
            Ok(())
        })
        .unwrap();
    report(
        "bytes_behind_a_valid_header",
        u64::from(cases()),
        accepted.get(),
    );
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Xor(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    SpliceFrom(usize, usize),
}

#[test]
fn mutated_valid_messages() {
    let samples = samples();
    let n = samples.len();
    let mutation = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        (any::<usize>(), 1u8..).prop_map(|(i, v)| Mutation::Xor(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (any::<usize>(), any::<usize>()).prop_map(|(s, i)| Mutation::SpliceFrom(s, i)),
    ];
    let strat = (0..n, prop::collection::vec(mutation, 1..6));
    let accepted = std::cell::Cell::new(0u64);
    runner()
        .run(&strat, |(which, muts)| {
            let mut b = samples[which].clone();
            for m in muts {
                match m {
                    Mutation::Set(i, v) if !b.is_empty() => {
                        let k = i % b.len();
                        b[k] = v;
                    }
                    Mutation::Xor(i, v) if !b.is_empty() => {
                        let k = i % b.len();
                        b[k] ^= v;
                    }
                    Mutation::Truncate(i) => b.truncate(i % (b.len() + 1)),
                    Mutation::Extend(tail) => b.extend_from_slice(&tail),
                    Mutation::SpliceFrom(s, i) => {
                        // Another message's bytes written over this one's from offset i.
                        let other = &samples[s % n];
                        let at = i % (b.len() + 1);
                        b.truncate(at);
                        b.extend_from_slice(&other[at.min(other.len())..]);
                    }
                    _ => {}
                }
            }
            accepted.set(accepted.get() + u64::from(check(&b)?));
            Ok(())
        })
        .unwrap();
    report("mutated_valid_messages", u64::from(cases()), accepted.get());
}

/// Valid messages with arbitrary field values round-trip exactly.
#[test]
fn arbitrary_frames_and_releases_round_trip() {
    let chunk = (
        any::<u32>(),
        prop_oneof![Just(0u32), Just(CHUNK_FLAG_CORRUPTED)],
    )
        .prop_map(|(bytes_used, flags)| Chunk { bytes_used, flags });
    let frame = (
        any::<u32>(),
        any::<u64>(),
        any::<i64>(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        prop::collection::vec(chunk, 1..=MAX_PLANES),
    )
        .prop_map(
            |(buffer_id, seq, pts_ns, publish_ns, checksum, sum, chunks)| {
                Message::Frame(Frame {
                    buffer_id,
                    flags: if sum { FRAME_FLAG_CHECKSUM } else { 0 },
                    seq,
                    pts_ns,
                    publish_ns,
                    checksum,
                    chunks,
                })
            },
        );
    let release = (any::<u32>(), any::<u64>())
        .prop_map(|(buffer_id, seq)| Message::Release(Release { buffer_id, seq }));
    let goodbye = ".{0,60}".prop_map(|message| {
        Message::Goodbye(Goodbye {
            reason: GoodbyeReason::Leaving,
            message,
        })
    });
    let strat = prop_oneof![frame, release, goodbye];
    runner()
        .run(&strat, |m| {
            let bytes = encode(&m);
            let back = decode(&bytes);
            match (&m, back) {
                // Goodbye text is cut to its fixed field at a char boundary.
                (Message::Goodbye(g), Ok(Message::Goodbye(b))) => {
                    prop_assert!(g.message.starts_with(&b.message));
                    prop_assert!(b.message.len() <= GOODBYE_TEXT_LEN);
                }
                (_, Ok(back)) => prop_assert_eq!(back, m),
                (_, Err(e)) => prop_assert!(false, "{} did not decode: {e}", m.name()),
            }
            Ok(())
        })
        .unwrap();
    report(
        "arbitrary_frames_and_releases_round_trip",
        u64::from(cases()),
        u64::from(cases()),
    );
}
