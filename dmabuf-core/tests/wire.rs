//! Encode/decode of every message, the byte offsets `docs/PROTOCOL.md` documents, and strict
//! rejection of malformed input (never a panic).

use dmabuf_core::buffer::{AllocatorKind, MemoryKind};
use dmabuf_core::format::PixelFormat;
use dmabuf_core::proto::wire::*;

fn samples() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            version: VERSION,
            flags: 0,
            caps: vec![],
        }),
        Message::Hello(Hello {
            version: VERSION,
            flags: 0,
            caps: (0..MAX_CAPS as u32)
                .map(|i| Cap {
                    fourcc: 0x3231_564e + i,
                    memory_mask: 6,
                    modifier: u64::from(i) << 56 | 7,
                })
                .collect(),
        }),
        Message::Welcome(Welcome {
            version: VERSION,
            memory: MemoryKind::DmaBuf,
            allocator: AllocatorKind::Udmabuf,
            buffer_count: 8,
            pixel: PixelFormat::I420,
            width: 1279,
            height: 719,
            fps_num: 30000,
            fps_den: 1001,
            color: ColorInfo {
                matrix: 1,
                range: 1,
                ..ColorInfo::default()
            },
            modifier: 0x0100_0000_0000_0001,
            geometry: Geometry::default(),
            device: 0,
        }),
        Message::AddBuffer(AddBuffer {
            buffer_id: 3,
            n_fds: 2,
            planes: vec![
                WirePlane {
                    fd_index: 0,
                    stride: 1280,
                    offset: 0,
                    size: 1280 * 720,
                },
                WirePlane {
                    fd_index: 1,
                    stride: 1280,
                    offset: 4096,
                    size: 1280 * 360,
                },
            ],
        }),
        Message::Frame(Frame {
            buffer_id: 1,
            flags: FRAME_FLAG_CHECKSUM,
            seq: u64::MAX - 1,
            pts_ns: -5,
            publish_ns: 123_456_789,
            checksum: 0xdead_beef,
            chunks: vec![
                Chunk {
                    bytes_used: 10,
                    flags: 0,
                },
                Chunk {
                    bytes_used: 20,
                    flags: CHUNK_FLAG_CORRUPTED,
                },
                Chunk {
                    bytes_used: 30,
                    flags: 0,
                },
            ],
        }),
        Message::Release(Release {
            buffer_id: 7,
            seq: 99,
        }),
        Message::RemoveBuffer(RemoveBuffer { buffer_id: 2 }),
        Message::Goodbye(Goodbye {
            reason: GoodbyeReason::ProtocolError,
            message: "buffer 3: plane 1 lies beyond the end of fd 0 — ünïcödé".into(),
        }),
        Message::Goodbye(Goodbye {
            reason: GoodbyeReason::EndOfStream,
            message: String::new(),
        }),
        Message::Ring(RingMsg { size: 33024 }),
        Message::Wake,
    ]
}

#[test]
fn ring_and_wake_bytes_are_where_protocol_md_says() {
    let r = encode(&Message::Ring(RingMsg { size: 33024 }));
    assert_eq!(&r[..8], &[0x44, 0x4D, 0x42, 0x46, 8, 0, 16, 0]);
    assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), 33024);
    assert_eq!(&r[12..16], &[0; 4]);
    assert!(matches!(
        decode(&patched(&Message::Ring(RingMsg { size: 1 }), 12, &[1])),
        Err(WireError::Reserved { .. })
    ));
    assert_eq!(
        encode(&Message::Wake),
        vec![0x44, 0x4D, 0x42, 0x46, 9, 0, 8, 0]
    );
    // A Wake with a body is the wrong length.
    let mut long = encode(&Message::Wake);
    long.extend_from_slice(&[0; 4]);
    long[6] = 12;
    assert!(decode(&long).is_err());
}

#[test]
fn every_message_round_trips() {
    for m in samples() {
        let bytes = encode(&m);
        assert_eq!(decode(&bytes).unwrap(), m, "{}", m.name());
        let want = match &m {
            Message::Hello(h) => HELLO_FIXED_LEN + h.caps.len() * CAP_LEN,
            Message::Welcome(_) => WELCOME_LEN,
            Message::AddBuffer(_) => ADD_BUFFER_LEN,
            Message::Frame(_) => FRAME_LEN,
            Message::Release(_) => RELEASE_LEN,
            Message::RemoveBuffer(_) => REMOVE_BUFFER_LEN,
            Message::Goodbye(_) => GOODBYE_LEN,
            Message::Ring(_) => RING_LEN_MSG,
            Message::Wake => WAKE_LEN,
        };
        assert_eq!(bytes.len(), want, "{}", m.name());
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
    }
}

#[test]
fn sizes_match_protocol_md() {
    assert_eq!(
        (WELCOME_LEN, ADD_BUFFER_LEN, FRAME_LEN, RELEASE_LEN),
        (112, 120, 80, 24)
    );
    assert_eq!(
        (REMOVE_BUFFER_LEN, GOODBYE_LEN, MAX_MESSAGE_LEN),
        (16, 128, 1048)
    );
}

#[test]
fn frame_bytes_are_where_protocol_md_says() {
    let m = &samples()[4];
    let b = encode(m);
    assert_eq!(&b[0..4], b"DMBF");
    assert_eq!(u16::from_le_bytes([b[4], b[5]]), 4, "type");
    assert_eq!(u16::from_le_bytes([b[6], b[7]]), 80, "length");
    assert_eq!(
        u32::from_le_bytes(b[8..12].try_into().unwrap()),
        1,
        "buffer_id"
    );
    assert_eq!(
        u32::from_le_bytes(b[12..16].try_into().unwrap()),
        1,
        "flags"
    );
    assert_eq!(
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
        u64::MAX - 1
    );
    assert_eq!(
        i64::from_le_bytes(b[24..32].try_into().unwrap()),
        -5,
        "pts_ns"
    );
    assert_eq!(
        u64::from_le_bytes(b[32..40].try_into().unwrap()),
        123_456_789
    );
    assert_eq!(
        u32::from_le_bytes(b[40..44].try_into().unwrap()),
        0xdead_beef
    );
    assert_eq!(
        u32::from_le_bytes(b[44..48].try_into().unwrap()),
        3,
        "n_chunks"
    );
    assert_eq!(
        u32::from_le_bytes(b[56..60].try_into().unwrap()),
        20,
        "chunk 1"
    );
    assert_eq!(
        u32::from_le_bytes(b[60..64].try_into().unwrap()),
        1,
        "chunk 1 flags"
    );
    assert!(b[72..80].iter().all(|&x| x == 0), "unused chunk is zero");
}

#[test]
fn welcome_and_add_buffer_offsets() {
    let w = encode(&samples()[2]);
    assert_eq!(
        u32::from_le_bytes(w[12..16].try_into().unwrap()),
        2,
        "memory"
    );
    assert_eq!(
        u32::from_le_bytes(w[16..20].try_into().unwrap()),
        3,
        "allocator"
    );
    assert_eq!(&w[24..28], b"YU12", "fourcc");
    assert_eq!(u32::from_le_bytes(w[28..32].try_into().unwrap()), 1279);
    assert_eq!((w[44], w[45]), (1, 1), "matrix (H.273 BT.709), range");
    assert_eq!(
        u64::from_le_bytes(w[48..56].try_into().unwrap()),
        0x0100_0000_0000_0001
    );
    let a = encode(&samples()[3]);
    assert_eq!(
        u32::from_le_bytes(a[12..16].try_into().unwrap()),
        2,
        "n_fds"
    );
    assert_eq!(
        u32::from_le_bytes(a[16..20].try_into().unwrap()),
        2,
        "n_planes"
    );
    // plane 1 at 24 + 24
    assert_eq!(
        u32::from_le_bytes(a[48..52].try_into().unwrap()),
        1,
        "fd_index"
    );
    assert_eq!(
        u64::from_le_bytes(a[56..64].try_into().unwrap()),
        4096,
        "offset"
    );
}

fn patched(m: &Message, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = encode(m);
    b[at..at + bytes.len()].copy_from_slice(bytes);
    b
}

#[test]
fn malformed_messages_are_named_errors() {
    let s = samples();
    let frame = &s[4];
    assert_eq!(decode(&[1, 2, 3]), Err(WireError::TooShort(3)));
    assert!(matches!(
        decode(&patched(frame, 0, b"XXXX")),
        Err(WireError::BadMagic(_))
    ));
    assert_eq!(
        decode(&patched(frame, 4, &99u16.to_le_bytes())),
        Err(WireError::UnknownType(99))
    );
    assert!(matches!(
        decode(&patched(frame, 6, &81u16.to_le_bytes())),
        Err(WireError::LengthMismatch { .. })
    ));
    // A Frame whose header claims Release length: the length checks catch it.
    let mut short = encode(frame);
    short.truncate(24);
    short[6..8].copy_from_slice(&24u16.to_le_bytes());
    assert!(matches!(decode(&short), Err(WireError::BadLength { .. })));
    // Unknown flag bits, too many chunks, bad chunk flags, garbage in an unused chunk.
    for (at, val) in [
        (12usize, 4u32),
        (12, 1 << 31),
        (44, 5),
        (44, 0),
        (52, 2),
        (76, 1),
    ] {
        assert!(
            decode(&patched(frame, at, &val.to_le_bytes())).is_err(),
            "frame byte {at} = {val}"
        );
    }
    // Both defined flag bits (checksum, copied) are accepted.
    match decode(&patched(frame, 12, &3u32.to_le_bytes())) {
        Ok(Message::Frame(f)) => assert_eq!(f.flags, FRAME_FLAG_CHECKSUM | FRAME_FLAG_COPIED),
        other => panic!("flags 3: {other:?}"),
    }
    // Hello: more caps than allowed, an unknown flag (bit 0, the ring, is known), reserved.
    let hello = &s[0];
    assert!(matches!(
        decode(&patched(hello, 16, &2u32.to_le_bytes())),
        Err(WireError::OutOfRange { field: "flags", .. })
    ));
    match decode(&patched(hello, 16, &1u32.to_le_bytes())) {
        Ok(Message::Hello(h)) => assert_eq!(h.flags, HELLO_FLAG_RING),
        other => panic!("flags 1: {other:?}"),
    }
    assert!(matches!(
        decode(&patched(hello, 12, &65u32.to_le_bytes())),
        Err(WireError::OutOfRange {
            field: "n_caps",
            ..
        })
    ));
    assert!(matches!(
        decode(&patched(hello, 20, &1u32.to_le_bytes())),
        Err(WireError::Reserved { .. })
    ));
    // Welcome: unknown memory kind, allocator, fourcc, zero size, zero fps_den, bad colour.
    let welcome = &s[2];
    for (at, bytes) in [
        (12usize, 9u32.to_le_bytes().to_vec()),
        (16, 0u32.to_le_bytes().to_vec()),
        (16, 7u32.to_le_bytes().to_vec()),
        (20, 0u32.to_le_bytes().to_vec()),
        (24, b"RG16".to_vec()),
        (28, 0u32.to_le_bytes().to_vec()),
        (32, 99999u32.to_le_bytes().to_vec()),
        (40, 0u32.to_le_bytes().to_vec()),
        (44, vec![15]),
        (45, vec![3]),
        (46, vec![23]),
        (47, vec![19]),
        (56, vec![7]),
        (57, vec![4]),
        (58, vec![2]),
        (59, vec![1]),
        // A sample aspect ratio with a zero denominator, or a zero numerator.
        (60, 1u32.to_le_bytes().to_vec()),
        (64, 1u32.to_le_bytes().to_vec()),
        (68, 1u32.to_le_bytes().to_vec()),
    ] {
        assert!(
            decode(&patched(welcome, at, &bytes)).is_err(),
            "welcome byte {at}"
        );
    }
    // AddBuffer: no fds, too many fds, a plane naming a missing fd, garbage in an unused plane.
    let add = &s[3];
    for (at, val) in [(12usize, 0u32), (12, 5), (16, 0), (16, 5), (48, 2), (72, 1)] {
        assert!(
            decode(&patched(add, at, &val.to_le_bytes())).is_err(),
            "add byte {at}"
        );
    }
    // Goodbye: unknown reason, text length past the field, invalid UTF-8, junk after the text.
    let bye = &s[7];
    assert!(decode(&patched(bye, 8, &77u32.to_le_bytes())).is_err());
    assert!(decode(&patched(bye, 12, &113u32.to_le_bytes())).is_err());
    assert_eq!(decode(&patched(bye, 16, &[0xff])), Err(WireError::BadText));
    assert!(decode(&patched(bye, 127, &[1])).is_err());
    // Release with a nonzero reserved field.
    assert!(decode(&patched(&s[5], 12, &[1])).is_err());
}

#[test]
fn every_truncation_and_random_bytes_fail_cleanly() {
    for m in samples() {
        let b = encode(&m);
        for n in 0..b.len() {
            let mut t = b[..n].to_vec();
            if n >= 8 {
                t[6..8].copy_from_slice(&(n as u16).to_le_bytes());
            }
            assert!(decode(&t).is_err(), "{} cut to {n} bytes", m.name());
        }
    }
    // xorshift noise with a valid header, so decoding gets past the magic.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut ok = 0;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ty = (x % 8) as u16;
        let len = [24usize, 40, 56, 120, 80, 24, 16, 128][ty as usize % 8];
        let mut b: Vec<u8> = (0..len)
            .map(|i| (x.rotate_left(i as u32 % 64) >> 3) as u8)
            .collect();
        b[0..4].copy_from_slice(b"DMBF");
        b[4..6].copy_from_slice(&ty.to_le_bytes());
        b[6..8].copy_from_slice(&(len as u16).to_le_bytes());
        if let Ok(m) = decode(&b) {
            // Whatever decodes must re-encode to the same bytes (no silent normalisation).
            assert_eq!(encode(&m), b);
            ok += 1;
        }
    }
    assert!(ok < 20_000);
}

#[test]
fn goodbye_text_is_cut_at_a_char_boundary() {
    let long = "é".repeat(100);
    let b = encode(&Message::Goodbye(Goodbye {
        reason: GoodbyeReason::InternalError,
        message: long,
    }));
    match decode(&b).unwrap() {
        Message::Goodbye(g) => assert_eq!(g.message, "é".repeat(56)),
        _ => unreachable!(),
    }
}

#[test]
fn welcome_allocator_v4l2_is_5() {
    match decode(&patched(&samples()[2], 16, &5u32.to_le_bytes())) {
        Ok(Message::Welcome(w)) => assert_eq!(w.allocator, AllocatorKind::V4l2),
        other => panic!("allocator 5 should decode as v4l2: {other:?}"),
    }
    assert_eq!(AllocatorKind::V4l2.wire(), 5);
    assert_eq!(AllocatorKind::V4l2.memory(), Some(MemoryKind::DmaBuf));
    assert_eq!(AllocatorKind::PipeWire.wire(), 6);
    assert_eq!(AllocatorKind::PipeWire.memory(), None);
    assert!(
        "v4l2".parse::<dmabuf_core::alloc::AllocChoice>().is_err(),
        "v4l2 buffers are not an --alloc choice"
    );
}

/// Version 2's Welcome, byte for byte as docs/PROTOCOL.md lays it out.
#[test]
fn welcome_bytes_are_where_protocol_md_says() {
    let w = Welcome {
        version: VERSION,
        memory: MemoryKind::Memfd,
        allocator: AllocatorKind::Memfd,
        buffer_count: 4,
        pixel: PixelFormat::I420,
        width: 720,
        height: 480,
        fps_num: 30,
        fps_den: 1,
        color: ColorInfo {
            matrix: 9,
            range: 1,
            primaries: 9,
            transfer: 16,
            chroma_location: 3,
        },
        modifier: 0,
        geometry: Geometry {
            sar_num: 32,
            sar_den: 27,
            rotation: 1,
            mirror: true,
        },
        device: 0x1234_5678_9abc_def0,
    };
    let b = encode(&Message::Welcome(w.clone()));
    assert_eq!(b.len(), 112);
    assert_eq!(
        u32::from_le_bytes(b[8..12].try_into().unwrap()),
        2,
        "version"
    );
    assert_eq!(&b[24..28], b"YU12");
    assert_eq!(
        &b[44..48],
        &[9, 1, 9, 16],
        "matrix, range, primaries, transfer"
    );
    assert_eq!(
        &b[56..60],
        &[3, 1, 1, 0],
        "chroma location, rotation, mirror, reserved"
    );
    assert_eq!(
        u32::from_le_bytes(b[60..64].try_into().unwrap()),
        32,
        "sar_num"
    );
    assert_eq!(
        u32::from_le_bytes(b[64..68].try_into().unwrap()),
        27,
        "sar_den"
    );
    assert_eq!(
        u64::from_le_bytes(b[72..80].try_into().unwrap()),
        0x1234_5678_9abc_def0,
        "device"
    );
    assert!(b[80..112].iter().all(|&x| x == 0), "HDR bytes");
    assert_eq!(decode(&b).unwrap(), Message::Welcome(w));
    // The HDR bytes are reserved: refused unless zero.
    let mut filled = b.clone();
    filled[108] = 1;
    assert!(matches!(decode(&filled), Err(WireError::Reserved { .. })));
    // The display size: 720 x 32/27 = 853, then turned a quarter.
    let g = Geometry {
        sar_num: 32,
        sar_den: 27,
        rotation: 1,
        mirror: false,
    };
    assert_eq!(g.display_size(720, 480), ((480, 853), 853));
    assert_eq!(Geometry::default().display_size(7, 5), ((7, 5), 7));
}

/// An unknown fourcc is named by its characters, not as a decimal number.
#[test]
fn an_unknown_fourcc_is_named() {
    let e = decode(&patched(&samples()[2], 24, b"RG16"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"RG16\" (0x36314752)"), "{e}");
}

/// A Hello capability's memory_mask holds bit 1 (memfd, value 2) and/or bit 2 (dma-buf, 4);
/// 0, bit 0 and any other bit are refused.
#[test]
fn memory_mask_reserved_bits_are_refused() {
    for (mask, ok) in [
        (2u32, true),
        (4, true),
        (6, true),
        (0, false),
        (1, false),
        (8, false),
        (0xFFFF_FFFF, false),
    ] {
        let m = Message::Hello(Hello {
            version: VERSION,
            flags: 0,
            caps: vec![Cap {
                fourcc: u32::from_le_bytes(*b"NV12"),
                memory_mask: mask,
                modifier: 0,
            }],
        });
        assert_eq!(decode(&encode(&m)).is_ok(), ok, "memory_mask {mask:#x}");
    }
}

/// A version 1 Welcome (56 bytes) is named as another version, not as a bad length.
#[test]
fn an_old_welcome_is_a_version_error() {
    let mut b = encode(&samples()[2]);
    b.truncate(56);
    b[6..8].copy_from_slice(&56u16.to_le_bytes());
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    match decode(&b) {
        Err(WireError::Version { theirs: 1 }) => {}
        other => panic!("{other:?}"),
    }
    let e = decode(&b).unwrap_err().to_string();
    assert!(e.contains("version 1") && e.contains("version 2"), "{e}");
}
