//! Publish frames drawn by your own program: a moving grey ramp in NV12, 60 frames a second,
//! to every consumer that connects.
//!
//! ```sh
//! cargo run -p dmabuf-core --example publish -- /tmp/frames.sock 600 &
//! consumer --socket /tmp/frames.sock --verify
//! ```
//!
//! Arguments: `[SOCKET] [FRAMES] [STALL_TIMEOUT_S]`. A consumer that holds every buffer it may
//! hold and releases none for the stall timeout (default 5 s) is dropped; give a longer one for
//! consumers whose first frames are slow (a software Vulkan driver building its pipelines).

use dmabuf_core::publisher::{Publisher, PublisherOptions};
use dmabuf_core::{FrameFormat, PixelFormat};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "/tmp/dmabuf-frames.sock".into());
    let frames: u64 = args.next().map_or(Ok(600), |n| n.parse())?;
    let stall: f64 = args.next().map_or(Ok(5.0), |s| s.parse())?;

    let format = FrameFormat::linear(PixelFormat::Nv12, 640, 360);
    let opts = PublisherOptions {
        fps: (60, 1),
        stall_timeout: Duration::try_from_secs_f64(stall)?,
        ..PublisherOptions::default()
    };
    let mut publisher = Publisher::bind(&path, format, opts)?;
    println!("publishing {format} on {path} ({})", publisher.allocator());

    // Wait for a first consumer (serving the socket meanwhile).
    while publisher.consumers() == 0 {
        publisher.serve(Duration::from_millis(100))?;
    }
    let period = Duration::from_nanos(1_000_000_000 / 60);
    let start = Instant::now();
    for seq in 0..frames {
        let Some(lease) = publisher.acquire(Duration::from_secs(1))? else {
            eprintln!("no free buffer for 1 s (consumers hold them all)");
            continue;
        };
        // Draw into the buffer where it lies: every plane at its offset and stride.
        let layout = lease.buffer().layout.clone();
        lease.with_bytes_mut(|bytes| {
            for (i, plane) in layout.planes.iter().enumerate() {
                for y in 0..plane.rows as usize {
                    let row = plane.offset as usize + y * plane.stride as usize;
                    let row = &mut bytes[row..row + plane.row_bytes as usize];
                    for (x, b) in row.iter_mut().enumerate() {
                        // Luma: a ramp that moves; chroma: neutral.
                        *b = if i == 0 {
                            (x as u64 + seq * 4) as u8
                        } else {
                            128
                        };
                    }
                }
            }
        })?;
        let pts_ns = (seq * period.as_nanos() as u64) as i64;
        publisher.publish(lease, pts_ns)?;
        // Pace: the next frame is due one period after this one. Sleep to it serving
        // connections; releases are taken then (one wake-up a frame).
        let due = start + period * (seq as u32 + 1);
        while Instant::now() < due {
            publisher.serve_until(due)?;
        }
        if publisher.consumers() == 0 {
            println!("every consumer left after {} frames", seq + 1);
            break;
        }
    }
    println!("published {} frames", publisher.frames());
    publisher.finish(Duration::from_secs(1));
    Ok(())
}
