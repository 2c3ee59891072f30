//! `consumer`: connects to a producer, receives each buffer's fds once, then reads frames in
//! place (no copy), optionally verifying each against the producer's checksum, and releases the
//! buffers back.

mod import;
mod stats;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use dmabuf_core::buffer::MemoryKind;
use dmabuf_core::format::{PixelFormat, MOD_LINEAR};
use dmabuf_core::proto::client::{Client, Event};
use dmabuf_core::proto::wire::{Cap, GoodbyeReason, FRAME_FLAG_CHECKSUM};
use dmabuf_core::proto::{Channel, ProtoError};
use import::cpu::MappedBuffer;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Receive video frames from a producer without copying them.
///
/// Connects to the producer's socket, states what it can import, maps each buffer once when
/// its fds arrive, and then handles each frame in place: with --verify it recomputes the
/// producer's checksum over the shared memory. A live line of statistics (fps, latency,
/// CPU) is printed to stderr every second.
///
/// Exit status: 0 on a clean end of stream or after --frames; 1 on errors; 3 if --verify found
/// mismatches.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The producer's socket.
    #[arg(long, default_value = "/tmp/dmabuf-frames.sock")]
    socket: PathBuf,

    /// Leave after this many frames (otherwise run until the producer ends the stream).
    #[arg(long)]
    frames: Option<u64>,

    /// Check every frame against the checksum the producer sent with it.
    #[arg(long)]
    verify: bool,

    /// Write statistics as a JSON object to this file at the end.
    #[arg(long)]
    stats_json: Option<PathBuf>,

    /// Write each frame's planes, tightly packed (no stride padding), to this file.
    #[arg(long)]
    dump_raw: Option<PathBuf>,

    /// Seconds to keep trying to connect while the producer starts.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,

    /// No live statistics line.
    #[arg(long, short)]
    quiet: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("consumer: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// What this consumer can take: every format, LINEAR, memfd or dma-buf (it maps them).
fn caps() -> Vec<Cap> {
    let mask = MemoryKind::Memfd.bit() | MemoryKind::DmaBuf.bit();
    PixelFormat::ALL
        .into_iter()
        .map(|p| Cap {
            fourcc: p.fourcc() as u32,
            memory_mask: mask,
            modifier: MOD_LINEAR,
        })
        .collect()
}

fn connect(args: &Args) -> Result<Channel> {
    if args.connect_timeout.is_nan() || args.connect_timeout < 0.0 {
        bail!("--connect-timeout must be >= 0");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.connect_timeout);
    loop {
        match Channel::connect(&args.socket) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "no producer at {} (is `producer --socket {}` running?)",
                        args.socket.display(),
                        args.socket.display()
                    )
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn run(args: &Args) -> Result<i32> {
    let chan = connect(args)?;
    let mut client = Client::handshake(chan, caps(), Duration::from_secs(5))
        .context("handshake with the producer")?;
    let w = client.welcome().clone();
    tracing::info!(
        "stream: {} {}x{} at {}/{} fps, {} buffers of {} ({})",
        w.pixel,
        w.width,
        w.height,
        w.fps_num,
        w.fps_den,
        w.buffer_count,
        w.memory,
        w.allocator
    );
    let mut stats = stats::Stats::new(!args.quiet);
    stats.report.alloc = w.allocator.name().into();
    stats.report.memory = w.memory.name().into();
    stats.report.import_path = "cpu-map".into();
    stats.report.pixel_format = w.pixel.name().into();
    stats.report.width = w.width;
    stats.report.height = w.height;
    stats.report.buffers = w.buffer_count;

    let mut dump = match &args.dump_raw {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut scratch = Vec::new();
    let mut maps: Vec<Option<MappedBuffer>> = (0..w.buffer_count).map(|_| None).collect();
    let result: Result<()> = (|| loop {
        match client.next_event(None) {
            Ok(Event::BufferAdded(id)) => {
                let buf = client.buffer(id).expect("just added");
                maps[id as usize] = Some(MappedBuffer::new(buf)?);
            }
            Ok(Event::BufferRemoved(id)) => maps[id as usize] = None,
            Ok(Event::Frame(f)) => {
                let received_ns = dmabuf_core::time::monotonic_ns();
                let id = f.buffer_id;
                let buf = client.buffer(id).expect("validated by the client");
                let map = maps[id as usize].as_ref().expect("mapped when added");
                if args.verify {
                    if f.flags & FRAME_FLAG_CHECKSUM == 0 {
                        stats.report.unverifiable += 1;
                    } else {
                        let got = map.checksum(buf)?;
                        if got == f.checksum {
                            stats.report.verified += 1;
                        } else {
                            stats.report.mismatches += 1;
                            if stats.report.mismatches <= 5 {
                                tracing::error!(
                                    "frame {}: checksum {got:#010x}, producer sent {:#010x}",
                                    f.seq,
                                    f.checksum
                                );
                            }
                        }
                    }
                }
                if let Some(out) = dump.as_mut() {
                    scratch.clear();
                    map.append_packed(buf, &mut scratch)?;
                    out.write_all(&scratch).context("writing --dump-raw")?;
                }
                client.release(id)?;
                stats.frame(f.seq, f.publish_ns, received_ns);
                if args.frames.is_some_and(|n| stats.report.frames >= n) {
                    client.goodbye(GoodbyeReason::Leaving, "got the frames I wanted");
                    return Ok(());
                }
            }
            Ok(Event::End(g)) => {
                return match g.reason {
                    GoodbyeReason::EndOfStream => Ok(()),
                    r => bail!("producer ended the stream ({r:?}): {}", g.message),
                };
            }
            Err(ProtoError::Closed) => bail!("producer closed the connection without a goodbye"),
            Err(e) => return Err(e).context("protocol error"),
        }
    })();
    if let Some(mut out) = dump {
        out.flush().context("writing --dump-raw")?;
    }
    let mut report = stats.finish();
    if let Err(e) = &result {
        report.error = Some(format!("{e:#}"));
    }
    if let Some(p) = &args.stats_json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, json + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    eprintln!(
        "consumer: {} frames, {:.1} fps, verified {} mismatches {} dropped {}, latency p50 {:.0} µs p99 {:.0} µs, CPU {:.1} µs/frame ({} via {})",
        report.frames,
        report.fps,
        report.verified,
        report.mismatches,
        report.dropped,
        report.latency_us_p50,
        report.latency_us_p99,
        report.cpu_ns_per_frame / 1e3,
        report.memory,
        report.import_path
    );
    result?;
    Ok(if report.mismatches > 0 { 3 } else { 0 })
}
