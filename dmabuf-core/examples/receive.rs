//! Receive frames from a producer and check each one on the CPU: connect, offer what a CPU
//! reader can take (every format, LINEAR, memfd or dma-buf), map each buffer once when it
//! arrives, recompute every frame's checksum, and let the frame guard hand each buffer back.
//!
//! ```sh
//! producer --socket /tmp/frames.sock --alloc memfd &
//! cargo run -p dmabuf-core --example receive -- /tmp/frames.sock 120
//! ```

use dmabuf_core::mapping::CpuMapping;
use dmabuf_core::proto::wire::FRAME_FLAG_CHECKSUM;
use dmabuf_core::receiver::{linear_caps, Receiver, ReceiverEvent};
use dmabuf_core::{format::plane_checksum, MemoryKind, PixelFormat};
use std::collections::HashMap;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "/tmp/dmabuf-frames.sock".into());
    let frames: u64 = args.next().map_or(Ok(100), |n| n.parse())?;

    let caps = linear_caps(&PixelFormat::ALL, &MemoryKind::ALL);
    let rx = Receiver::connect(&path, caps, Duration::from_secs(5))?;
    let w = rx.welcome();
    println!(
        "stream: {} {}x{} in {}",
        w.pixel, w.width, w.height, w.memory
    );

    // One read-only mapping per fd of each buffer, made once when the buffer arrives.
    let mut maps: HashMap<u32, Vec<CpuMapping>> = HashMap::new();
    let (mut seen, mut good, mut bad) = (0u64, 0u64, 0u64);
    while seen < frames {
        match rx.next_event(Some(Duration::from_secs(30)))? {
            ReceiverEvent::BufferAdded(id) => {
                let buf = rx.buffer(id).expect("just added");
                let m = buf
                    .fds
                    .iter()
                    .zip(&buf.fd_sizes)
                    .map(|(fd, &size)| CpuMapping::new(fd.clone(), size, false, buf.memory))
                    .collect::<Result<_, _>>()?;
                maps.insert(id, m);
            }
            ReceiverEvent::BufferRemoved(id) => {
                maps.remove(&id);
            }
            ReceiverEvent::Renegotiated(w) => {
                maps.clear();
                println!("stream is now {} {}x{}", w.pixel, w.width, w.height);
            }
            ReceiverEvent::Frame(frame) => {
                seen += 1;
                if frame.frame().flags & FRAME_FLAG_CHECKSUM == 0 {
                    continue; // nothing to check; dropping the guard releases the buffer
                }
                let fd_maps = &maps[&frame.buffer_id()];
                let mut sum = 0u32;
                for (i, (k, plane)) in frame.buffer().planes().enumerate() {
                    let bytes = fd_maps[k].read()?;
                    sum = sum.wrapping_add(plane_checksum(i as u32, &bytes, plane).unwrap_or(0));
                }
                // Used, then checked: a frame the producer reclaimed meanwhile does not count.
                if sum == frame.frame().checksum && frame.is_intact() {
                    good += 1;
                } else {
                    bad += 1;
                }
            }
            ReceiverEvent::End(goodbye) => {
                println!("producer ended the stream: {:?}", goodbye.reason);
                break;
            }
        }
    }
    println!("received {seen} frames: {good} verified, {bad} mismatched");
    rx.close("done");
    if bad > 0 {
        std::process::exit(3);
    }
    Ok(())
}
