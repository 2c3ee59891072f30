//! `producer`: allocates a pool of frame buffers, fills them, and serves them to consumers over
//! a Unix socket (fds once per buffer, then small per-frame messages).

mod fanout;
mod server;
mod source;

use source::decode::Decoder;
use source::pattern::Pattern;
use source::Source;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use dmabuf_core::alloc::AllocChoice;
use dmabuf_core::format::{FrameFormat, PixelFormat, MAX_DIMENSION};
use dmabuf_core::proto::ListenerOptions;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Serve video frames to consumers without copying them.
///
/// The producer allocates a fixed pool of frame buffers (dma-buf from a dma-heap, udmabuf or
/// GBM; or sealed memfds), draws frames into them and publishes each frame to every connected
/// consumer as a small message naming the buffer. Each buffer's file descriptors cross the
/// socket once per consumer (SCM_RIGHTS); consumers release buffers back, and a buffer is reused
/// only once every consumer has released it. Several consumers may connect at any time; a slow
/// one is skipped (its frames dropped and counted) rather than slowing the others. When the
/// last consumer leaves, the producer waits for the next one, unless --frames ended the stream.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Example:\n  producer --socket /tmp/frames.sock --size 1920x1080 --format NV12 --fps 60\n  consumer --socket /tmp/frames.sock --verify"
)]
struct Args {
    /// Unix socket path to listen on (SOCK_SEQPACKET). A stale socket file is replaced; one a
    /// running producer owns is not.
    #[arg(long, default_value = "/tmp/dmabuf-frames.sock")]
    socket: PathBuf,

    /// Frame source. `pattern`: moving colour bars drawn in the pool's pixel format.
    /// `file:PATH`: a video file decoded by FFmpeg (H.264, HEVC, VP9, AV1 …) at its own size,
    /// format and frame rate, paced at that rate; e.g. file:samples/clip-1080p60.mp4.
    #[arg(long, default_value = "pattern")]
    source: String,

    /// With a file source: start again from the beginning at the end (timestamps keep going).
    #[arg(long = "loop")]
    looping: bool,

    /// With a file source: decoder threads (frame threading); default: the cores available.
    #[arg(long)]
    decode_threads: Option<usize>,

    /// Buffer allocator: auto (dma-heap, then udmabuf, then gbm, then memfd; it says which it
    /// picked and why), memfd, dma-heap, udmabuf or gbm.
    #[arg(long, default_value = "auto")]
    alloc: AllocChoice,

    /// Pattern frame size, WIDTHxHEIGHT (odd sizes are fine) [default: 1920x1080].
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,

    /// Pattern pixel format: I420, NV12, YUYV, XRGB8888 or ARGB8888 (DRM fourcc names such as
    /// YU12, XR24 also work) [default: NV12].
    #[arg(long)]
    format: Option<PixelFormat>,

    /// Pattern frames per second to pace at (a rational such as 30000/1001 works too)
    /// [default: 60]. A file plays at its own rate.
    #[arg(long, value_parser = parse_fps)]
    fps: Option<(u32, u32)>,

    /// Send frames as fast as the consumer releases buffers, ignoring --fps.
    #[arg(long)]
    no_pace: bool,

    /// End the stream after this many frames (otherwise serve forever). The stream starts when
    /// the first consumer connects to an idle producer.
    #[arg(long)]
    frames: Option<u64>,

    /// End the stream after this many seconds (like --frames; for soak tests).
    #[arg(long)]
    duration: Option<f64>,

    /// Seconds between progress lines (frames, fps, consumers, pool, RSS, open fds).
    #[arg(long, default_value_t = 5.0)]
    report_every: f64,

    /// Buffers in the pool.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    buffers: u32,

    /// Do not compute the per-frame checksum (consumers then cannot --verify; for benchmarks).
    #[arg(long)]
    no_checksum: bool,

    /// Socket file mode, octal (0600: only our uid may connect; peers are also checked with
    /// SO_PEERCRED).
    #[arg(long, visible_alias = "socket-mode", default_value = "600", value_parser = parse_mode)]
    mode: u32,

    /// Also accept consumers running as this uid (repeatable). Our own uid is always allowed.
    #[arg(long)]
    allow_uid: Vec<u32>,

    /// Seconds a consumer may hold every buffer (with several consumers: its quota, half the
    /// pool) without releasing any before it is dropped. (With several consumers, one that holds
    /// its quota is skipped, its frames dropped, until it releases.)
    #[arg(long, default_value_t = 5.0)]
    stall_timeout: f64,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT"))?;
    let w: u32 = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in {s:?}"))?;
    let h: u32 = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in {s:?}"))?;
    if w == 0 || h == 0 || w > MAX_DIMENSION || h > MAX_DIMENSION {
        return Err(format!("{w}x{h}: each side must be 1..={MAX_DIMENSION}"));
    }
    Ok((w, h))
}

fn parse_fps(s: &str) -> Result<(u32, u32), String> {
    let (n, d) = match s.split_once('/') {
        Some((n, d)) => (n, d),
        None => (s, "1"),
    };
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("bad frame rate {s:?}"))?;
    let d: u32 = d
        .trim()
        .parse()
        .map_err(|_| format!("bad frame rate {s:?}"))?;
    if n == 0 || d == 0 || n / d > 1000 {
        return Err(format!("frame rate {s:?} must be between 1/N and 1000"));
    }
    Ok((n, d))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode"))
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
    if let Err(e) = run(Args::parse()) {
        eprintln!("producer: error: {e:#}");
        std::process::exit(1);
    }
}

fn source(args: &Args) -> Result<Source> {
    if args.source == "pattern" {
        if args.looping || args.decode_threads.is_some() {
            bail!("--loop and --decode-threads apply to a file source");
        }
        let (w, h) = args.size.unwrap_or((1920, 1080));
        let pixel = args.format.unwrap_or(PixelFormat::Nv12);
        return Ok(Source::Pattern {
            pattern: Pattern::new(pixel, w, h),
            format: FrameFormat::linear(pixel, w, h),
            fps: args.fps.unwrap_or((60, 1)),
        });
    }
    if let Some(path) = args.source.strip_prefix("file:") {
        if args.size.is_some() || args.format.is_some() || args.fps.is_some() {
            bail!("--size, --format and --fps apply to the pattern; a file plays at its own size, format and rate");
        }
        let threads = args
            .decode_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 || threads > 64 {
            bail!("--decode-threads must be 1..=64");
        }
        let dec = Decoder::open(std::path::Path::new(path), threads)?;
        return Ok(Source::File {
            dec: Box::new(dec),
            looping: args.looping,
            used: false,
        });
    }
    bail!(
        "unknown source {:?}: expected `pattern` or `file:PATH` (V4L2 capture is not implemented yet)",
        args.source
    )
}

fn run(args: Args) -> Result<()> {
    let source = source(&args)?;
    if args.stall_timeout.is_nan() || args.stall_timeout <= 0.0 {
        bail!("--stall-timeout must be positive");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if args.duration.is_some_and(|d| !positive(d)) || !positive(args.report_every) {
        bail!("--duration and --report-every must be positive seconds");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let listen = ListenerOptions {
        mode: args.mode,
        allow_uids: args.allow_uid.clone(),
    };
    let opts = server::ServeOptions {
        alloc: args.alloc,
        buffers: args.buffers as usize,
        pace: !args.no_pace,
        frames: args.frames,
        checksum: !args.no_checksum,
        hello_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs_f64(args.stall_timeout),
        duration: args.duration.map(Duration::from_secs_f64),
        report_every: Duration::from_secs_f64(args.report_every),
    };
    server::serve(&args.socket, &listen, source, opts, stop)
}
