//! A `Publisher` renegotiating under `Receiver`s over a real socket (each receiver on its own
//! thread, as a separate program would be): a pool that shrinks ends the sessions it can no
//! longer serve with the stall guarantee, a format a consumer did not offer ends its session
//! with the reason (rather than a `Welcome` it would refuse), and a consumer holding a frame
//! below its quota gets the whole stall timeout, from the renegotiation, to release it.

use dmabuf_core::alloc::{self, AllocChoice};
use dmabuf_core::proto::wire::Cap;
use dmabuf_core::proto::wire::GoodbyeReason;
use dmabuf_core::proto::ProtoError;
use dmabuf_core::publisher::{Publisher, PublisherOptions};
use dmabuf_core::receiver::{linear_caps, Receiver, ReceiverEvent};
use dmabuf_core::{AllocatorKind, FrameFormat, MemoryKind, PixelFormat};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How a receiver's session went on after the renegotiation.
#[derive(Debug)]
enum Outcome {
    /// It was renegotiated: the new Welcome's fourcc and buffer count.
    Renegotiated { fourcc: u32, buffers: u32 },
    /// Its session ended: the Goodbye.
    Ended {
        reason: GoodbyeReason,
        message: String,
    },
    /// It left on its own.
    Left,
}

fn socket(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("dmabuf-reneg-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn memfd_pool(pixel: PixelFormat, buffers: usize) -> dmabuf_core::pool::Pool {
    let memfd = alloc::open(AllocatorKind::Memfd).unwrap();
    dmabuf_core::pool::Pool::new(memfd.as_ref(), FrameFormat::linear(pixel, 64, 48), buffers)
        .unwrap()
}

/// What a consumer of NV12 in memfds offers.
fn nv12() -> Vec<Cap> {
    linear_caps(&[PixelFormat::Nv12], &[MemoryKind::Memfd])
}

fn publisher(sock: &Path, buffers: usize, stall: Duration) -> Publisher {
    Publisher::bind(
        sock,
        FrameFormat::linear(PixelFormat::Nv12, 64, 48),
        PublisherOptions {
            buffers,
            alloc: AllocChoice::Only(AllocatorKind::Memfd),
            stall_timeout: stall,
            ..PublisherOptions::default()
        },
    )
    .unwrap()
}

/// The receiver's next event within 20 ms: `Ok(None)` for nothing (or an event the scripts
/// ignore), `Err` with the outcome once the session ended or renegotiated.
fn step(rx: &Receiver) -> Result<Option<dmabuf_core::receiver::FrameGuard>, Outcome> {
    match rx.next_event(Some(Duration::from_millis(20))) {
        Ok(ReceiverEvent::Frame(g)) => Ok(Some(g)),
        Ok(ReceiverEvent::Renegotiated(w)) => {
            // Take the new buffers before going (leaving while the producer still sends them
            // would be a consumer that left, dropped as such).
            for _ in 0..w.buffer_count {
                match rx.next_event(Some(Duration::from_secs(10))) {
                    Ok(ReceiverEvent::BufferAdded(_)) => {}
                    other => panic!("after the new Welcome, a new buffer, not {other:?}"),
                }
            }
            Err(Outcome::Renegotiated {
                fourcc: w.pixel.fourcc(),
                buffers: w.buffer_count,
            })
        }
        Ok(ReceiverEvent::End(g)) => Err(Outcome::Ended {
            reason: g.reason,
            message: g.message,
        }),
        Err(ProtoError::Goodbye { reason, message }) => Err(Outcome::Ended { reason, message }),
        Err(ProtoError::Timeout { .. }) | Ok(_) => Ok(None),
        Err(e) => panic!("receiver: {e}"),
    }
}

/// Until the session is renegotiated or ends: frames are released at once, except the first
/// while `hold` is given (it is let go when `hold` says so).
fn watch(rx: &Receiver, hold: Option<mpsc::Receiver<()>>) -> Outcome {
    let mut held = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no renegotiation or end in 20 s");
        if hold.as_ref().is_some_and(|h| h.try_recv().is_ok()) {
            held = None;
        }
        match step(rx) {
            Ok(Some(g)) if hold.is_some() && held.is_none() => held = Some(g),
            Ok(_) => {}
            Err(outcome) => return outcome,
        }
    }
}

type Script = Box<dyn FnOnce(Receiver) -> Outcome + Send>;

/// Connect receivers one at a time (so the publisher numbers them in this order), each
/// offering its caps and then running its script on its own thread; the publisher serves
/// meanwhile.
fn connect_all(
    p: &mut Publisher,
    sock: &Path,
    receivers: Vec<(Vec<Cap>, Script)>,
) -> Vec<std::thread::JoinHandle<Outcome>> {
    let mut threads = Vec::new();
    let before = p.consumers();
    for (i, (caps, script)) in receivers.into_iter().enumerate() {
        let sock = sock.to_path_buf();
        threads.push(std::thread::spawn(move || {
            script(Receiver::connect(&sock, caps, Duration::from_secs(10)).unwrap())
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.consumers() < before + i + 1 {
            assert!(Instant::now() < deadline, "receiver {i} not admitted");
            p.serve(Duration::from_millis(10)).unwrap();
        }
    }
    threads
}

/// A receiver that releases every frame at once (`watch` without a hold).
fn prompt(caps: Vec<Cap>) -> (Vec<Cap>, Script) {
    (caps, Box::new(|rx| watch(&rx, None)))
}

fn serve_until_done(
    p: &mut Publisher,
    threads: Vec<std::thread::JoinHandle<Outcome>>,
) -> Vec<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !threads.iter().all(|t| t.is_finished()) {
        assert!(Instant::now() < deadline, "receivers did not finish");
        p.serve(Duration::from_millis(10)).unwrap();
    }
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_smaller_pool_ends_the_sessions_it_cannot_serve_saying_why() {
    let sock = socket("shrink");
    let mut p = publisher(&sock, 4, Duration::from_secs(5));
    let nv12 = nv12();
    let threads = connect_all(
        &mut p,
        &sock,
        (0..4).map(|_| prompt(nv12.clone())).collect(),
    );
    // Four consumers on four buffers; a renegotiation to two buffers serves two of them.
    let left = p.replace_pool(memfd_pool(PixelFormat::Nv12, 2)).unwrap();
    assert_eq!(left, 2);
    let outcomes = serve_until_done(&mut p, threads);
    for (i, o) in outcomes.iter().enumerate() {
        match (i, o) {
            (0 | 1, Outcome::Renegotiated { buffers, .. }) => assert_eq!(*buffers, 2),
            (2 | 3, Outcome::Ended { reason, message }) => {
                assert_eq!(*reason, GoodbyeReason::Unsupported);
                assert!(
                    message.contains("renegotiated to 2 buffers")
                        && message.contains("at most 2 consumer"),
                    "{message}"
                );
            }
            _ => panic!("receiver {i}: {o:?} (the first two stay, the last two go)"),
        }
    }
}

#[test]
fn a_format_a_consumer_did_not_offer_ends_its_session_saying_so() {
    let sock = socket("format");
    let mut p = publisher(&sock, 4, Duration::from_secs(5));
    let nv12 = nv12();
    let both = linear_caps(
        &[PixelFormat::Nv12, PixelFormat::Xrgb8888],
        &[MemoryKind::Memfd],
    );
    let threads = connect_all(&mut p, &sock, vec![prompt(nv12), prompt(both)]);
    let left = p
        .replace_pool(memfd_pool(PixelFormat::Xrgb8888, 4))
        .unwrap();
    assert_eq!(left, 1, "the NV12-only consumer is not served in XRGB8888");
    let outcomes = serve_until_done(&mut p, threads);
    match &outcomes[0] {
        Outcome::Ended { reason, message } => {
            assert_eq!(*reason, GoodbyeReason::Unsupported);
            assert!(
                message.contains("XRGB8888") && message.contains("did not offer"),
                "{message}"
            );
        }
        o => panic!("the NV12-only consumer: {o:?}"),
    }
    match &outcomes[1] {
        Outcome::Renegotiated { fourcc, buffers } => {
            assert_eq!(*fourcc, PixelFormat::Xrgb8888.fourcc());
            assert_eq!(*buffers, 4);
        }
        o => panic!("the consumer that offered both: {o:?}"),
    }
}

/// A consumer holding one frame (below its quota, blocking nobody) for longer than the stall
/// timeout when the stream renegotiates is not dropped at once: the stall clock starts at the
/// renegotiation, and a release within the timeout moves it to the new pool.
#[test]
fn a_renegotiation_gives_a_slow_holder_the_whole_stall_timeout() {
    let sock = socket("holder");
    let stall = Duration::from_millis(1000);
    let mut p = publisher(&sock, 4, stall);
    let nv12 = nv12();
    let (let_go, hold) = mpsc::channel();
    let holder: Script = Box::new(move |rx| watch(&rx, Some(hold)));
    let threads = connect_all(&mut p, &sock, vec![prompt(nv12.clone()), (nv12, holder)]);
    let lease = p
        .acquire(Duration::from_secs(5))
        .unwrap()
        .expect("a free buffer");
    assert_eq!(p.publish(lease, 0).unwrap(), 2);
    // It holds the frame for 1.5 stall timeouts; the other released at once.
    let until = Instant::now() + stall * 3 / 2;
    while Instant::now() < until {
        p.serve(Duration::from_millis(10)).unwrap();
    }
    assert_eq!(p.consumers(), 2, "one frame below its quota stalls nobody");
    p.replace_pool(memfd_pool(PixelFormat::Nv12, 4)).unwrap();
    let until = Instant::now() + stall * 3 / 10;
    while Instant::now() < until {
        p.serve(Duration::from_millis(10)).unwrap();
    }
    let_go.send(()).unwrap();
    let outcomes = serve_until_done(&mut p, threads);
    for (i, o) in outcomes.iter().enumerate() {
        assert!(
            matches!(o, Outcome::Renegotiated { buffers: 4, .. }),
            "receiver {i}: {o:?}"
        );
    }
}

/// A receiver that keeps every frame it gets until told to leave (then closes, giving them
/// back), or until its session ends.
fn hoarder(caps: Vec<Cap>, leave: Option<mpsc::Receiver<()>>) -> (Vec<Cap>, Script) {
    (
        caps,
        Box::new(move |rx| {
            let mut kept = Vec::new();
            loop {
                if leave.as_ref().is_some_and(|l| l.try_recv().is_ok()) {
                    drop(kept);
                    rx.close("leaving");
                    return Outcome::Left;
                }
                match step(&rx) {
                    Ok(Some(g)) => kept.push(g),
                    Ok(None) => {}
                    Err(outcome) => return outcome,
                }
            }
        }),
    )
}

/// Two of three consumers stop releasing (quota 1 each); one of them leaves before the stall
/// timeout, so the quota grows to 2 and the other, still releasing nothing, gets one more
/// frame. Its stall clock runs on from when it first held its quota: it is dropped one stall
/// timeout after that, not one stall timeout after its quota filled again.
#[test]
fn a_quota_that_grows_does_not_restart_a_stalled_consumers_clock() {
    let sock = socket("grow");
    let stall = Duration::from_millis(1000);
    let mut p = publisher(&sock, 4, stall);
    let nv12 = nv12();
    let (leave, leave_rx) = mpsc::channel();
    let threads = connect_all(
        &mut p,
        &sock,
        vec![
            hoarder(nv12.clone(), Some(leave_rx)),
            hoarder(nv12.clone(), None),
            prompt(nv12),
        ],
    );
    let start = Instant::now();
    let mut left = false;
    // A frame every 20 ms for 1.45 stall timeouts; the first hoarder leaves at 0.9.
    while start.elapsed() < stall * 145 / 100 {
        if !left && start.elapsed() >= stall * 9 / 10 {
            leave.send(()).unwrap();
            left = true;
        }
        if let Some(lease) = p.acquire(Duration::ZERO).unwrap() {
            p.publish(lease, 0).unwrap();
        }
        p.serve(Duration::from_millis(20)).unwrap();
    }
    assert_eq!(
        p.consumers(),
        1,
        "the second hoarder, releasing nothing since its first frame, is dropped by now"
    );
    p.end_stream(GoodbyeReason::EndOfStream, "done", Duration::from_secs(1));
    let outcomes = serve_until_done(&mut p, threads);
    assert!(matches!(outcomes[0], Outcome::Left), "{:?}", outcomes[0]);
    match &outcomes[1] {
        Outcome::Ended { reason, message } => {
            assert_eq!(*reason, GoodbyeReason::InternalError);
            assert!(message.contains("released none"), "{message}");
        }
        o => panic!("the second hoarder: {o:?}"),
    }
    assert!(
        matches!(
            &outcomes[2],
            Outcome::Ended {
                reason: GoodbyeReason::EndOfStream,
                ..
            }
        ),
        "{:?}",
        outcomes[2]
    );
}

/// A consumer alone on two buffers holds one (below its quota) for longer than the stall
/// timeout; a second consumer joins, and its quota shrinks to the one it holds. Its stall clock
/// starts then: it is not dropped at once, and is one stall timeout later if it still
/// releases nothing.
#[test]
fn a_quota_that_shrinks_as_a_consumer_joins_starts_the_clock_then() {
    let sock = socket("join");
    let stall = Duration::from_millis(1000);
    let mut p = publisher(&sock, 2, stall);
    let (_never, hold) = mpsc::channel();
    let holder: Script = Box::new(move |rx| watch(&rx, Some(hold)));
    let mut threads = connect_all(&mut p, &sock, vec![(nv12(), holder)]);
    let lease = p
        .acquire(Duration::from_secs(5))
        .unwrap()
        .expect("a free buffer");
    assert_eq!(p.publish(lease, 0).unwrap(), 1);
    let serve_for = |p: &mut Publisher, d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            p.serve(Duration::from_millis(10)).unwrap();
        }
    };
    serve_for(&mut p, stall * 3 / 2);
    assert_eq!(p.consumers(), 1, "alone, holding 1 of 2: below its quota");
    threads.extend(connect_all(&mut p, &sock, vec![prompt(nv12())]));
    serve_for(&mut p, stall / 2);
    assert_eq!(
        p.consumers(),
        2,
        "at its quota for half the stall timeout only"
    );
    serve_for(&mut p, stall * 11 / 10);
    assert_eq!(
        p.consumers(),
        1,
        "at its quota, releasing none, for the stall timeout"
    );
    p.end_stream(GoodbyeReason::EndOfStream, "done", Duration::from_secs(1));
    let outcomes = serve_until_done(&mut p, threads);
    match &outcomes[0] {
        Outcome::Ended { reason, message } => {
            assert_eq!(*reason, GoodbyeReason::InternalError);
            assert!(message.contains("released none"), "{message}");
        }
        o => panic!("the holder: {o:?}"),
    }
}

/// A renegotiation that changes the format and shrinks the pool: those that cannot take the
/// format go first, and the pool's size is then weighed against those left.
#[test]
fn a_format_change_with_a_smaller_pool_keeps_those_that_fit() {
    let sock = socket("shrinkfmt");
    let mut p = publisher(&sock, 4, Duration::from_secs(5));
    let both = || {
        linear_caps(
            &[PixelFormat::Nv12, PixelFormat::Xrgb8888],
            &[MemoryKind::Memfd],
        )
    };
    let threads = connect_all(
        &mut p,
        &sock,
        vec![
            prompt(nv12()),
            prompt(nv12()),
            prompt(both()),
            prompt(both()),
        ],
    );
    let left = p
        .replace_pool(memfd_pool(PixelFormat::Xrgb8888, 2))
        .unwrap();
    assert_eq!(left, 2, "the two that offered XRGB8888 fit in two buffers");
    let outcomes = serve_until_done(&mut p, threads);
    for (i, o) in outcomes.iter().enumerate() {
        match (i, o) {
            (0 | 1, Outcome::Ended { message, .. }) => {
                assert!(message.contains("did not offer"), "{message}")
            }
            (2 | 3, Outcome::Renegotiated { fourcc, buffers: 2 }) => {
                assert_eq!(*fourcc, PixelFormat::Xrgb8888.fourcc())
            }
            _ => panic!("receiver {i}: {o:?}"),
        }
    }
}
