//! `producer`: allocates a pool of frame buffers, fills them, and serves them to consumers over
//! a Unix socket (fds once per buffer, then small per-frame messages).

mod server;
mod source;
mod transport;

use source::decode::Decoder;
use source::pattern::Pattern;
use source::{FileSource, FrameSource, PatternSource};
use transport::{TestLoad, Transport, TransportKind};

use anyhow::{bail, Context as _, Result};
use clap::builder::TypedValueParser as _;
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
    /// `file:PATH`: a local video file (PATH is a path, even with a ':' in it) decoded by FFmpeg
    /// (H.264, HEVC, VP9, AV1 …) at its own size and format, each frame published at its own
    /// timestamp (variable frame rate; a timestamp jump of over 2 s or backwards is a logged
    /// discontinuity played at the nominal rate); damaged packets are skipped and counted, as
    /// the ffmpeg CLI does; its colorimetry (matrix, range, primaries, transfer, chroma
    /// location), sample aspect ratio and rotation go to consumers; a mid-stream size change
    /// renegotiates; e.g. file:samples/clip-1080p60.mp4. Pictures are carried in the format
    /// they decode to when a DRM fourcc describes it (see --format), decoded in place; other
    /// formats (12-bit, RGB48, 4:1:1, palette …) get one counted swscale conversion each to the
    /// nearest carried format.
    /// `v4l2:/dev/videoN`: capture from a V4L2 webcam (NV12, YUYV or I420; --size, --format
    /// and --fps choose the capture format, otherwise the device's current one), paced by the
    /// device; see --v4l2-io and --list-devices.
    /// `pipewire:TARGET`: take a PipeWire video stream (a camera, a screen cast, another
    /// application's node; TARGET is its node.name or object.serial: WirePlumber 0.5 does not take
    /// an object id) and pass its frames on in PipeWire's own buffers where they are fds (LINEAR
    /// dma-bufs, asked for first, or sealed memfds: no copy; each given back to PipeWire once
    /// every consumer released it), else copied once into the pool (counted); paced by the node;
    /// its renegotiations (a new size or format) are followed. Needs a running PipeWire daemon.
    #[arg(long, default_value = "pattern")]
    source: String,

    /// With a v4l2: source, how frames leave the driver: expbuf (the driver's buffers exported
    /// as dma-bufs and sent to consumers: zero-copy), dmabuf (the driver captures into this
    /// producer's --alloc dma-buf pool: zero-copy), mmap (one copy into the pool), or auto
    /// (expbuf, else dmabuf, else mmap). A buffer is queued to the driver again only after
    /// every consumer released it.
    #[arg(long, value_enum, default_value = "auto")]
    v4l2_io: source::v4l2::Io,

    /// List the V4L2 devices (/dev/video*) with their formats, frame sizes and rates, the
    /// PipeWire daemon's video nodes (for --source pipewire:), and whether a DRM device makes
    /// timeline syncobjs (PipeWire's explicit sync), and exit.
    #[arg(long)]
    list_devices: bool,

    /// With a file source: start again from the beginning at the end (timestamps keep going;
    /// a still image repeats at its nominal rate).
    #[arg(long = "loop")]
    looping: bool,

    /// With a file source: decoder threads (frame threading); default: the cores available.
    #[arg(long)]
    decode_threads: Option<usize>,

    /// With a file source: `direct` decodes straight into the shared buffers (a custom
    /// get_buffer2; no copy), falling back to one copy per frame when it cannot (GBM memory,
    /// pool dry, a picture that does not fit); `copy` always decodes into FFmpeg's own buffers
    /// and copies each frame once (for comparison).
    #[arg(long, value_enum, default_value_t = DecodePath::Direct)]
    decode_path: DecodePath,

    /// With a file source decoding in place: pool buffers for the decoder (its reference
    /// frames and threads) on top of --buffers; default: the stream's reference limit (from its
    /// codec and level) + decode threads + 2. Fewer save memory; pictures that find the pool
    /// dry are copied once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=64))]
    decoder_buffers: Option<u32>,

    /// Buffer allocator: auto (dma-heap, then udmabuf, then gbm, then memfd; it says which it
    /// picked and why), memfd, dma-heap, udmabuf or gbm.
    #[arg(long, default_value = "auto")]
    alloc: AllocChoice,

    /// Pattern (or V4L2 capture) frame size, WIDTHxHEIGHT (odd sizes are fine)
    /// [default: 1920x1080; V4L2: the device's current size].
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,

    /// Pixel format, by DRM name, fourcc or FFmpeg name: I420 (YU12), NV12, YUYV, XRGB8888
    /// (XR24), ARGB8888 (AR24), P010, S010 (yuv420p10le), S210, S410, YUV422 (YU16), NV16,
    /// YUV444 (YU24), NV24, R8 (gray), BGR888 (BG24, FFmpeg rgb24), RGB888 (RG24, bgr24).
    /// Pattern: the format drawn [default: NV12]. File: convert every picture to it (one
    /// counted swscale conversion per frame unless it decodes so) [default: as decoded].
    /// V4L2 capture: the capture format [default: the first carried one the device offers];
    /// V4L2 also takes MJPEG (MJPG): the device's JPEGs decoded by FFmpeg into NV12 pool
    /// buffers.
    #[arg(long, value_parser = parse_format)]
    format: Option<FormatArg>,

    /// Pattern frames per second to pace at (a rational such as 30000/1001 works too)
    /// [default: 60]. A file plays at its own rate; a V4L2 device is asked for this rate
    /// (VIDIOC_S_PARM) [default: its current rate].
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

    /// Buffers in the pool for the consumers to hold (a file decoded in place gets the
    /// decoder's on top: see --decoder-buffers; a v4l2: source asks the driver for this many).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    buffers: u32,

    /// Also publish the stream as a PipeWire `Video/Source` node named NAME (default
    /// `dmabuf-pipe`), for desktop clients (OBS's PipeWire source, `gst-launch-1.0 pipewiresrc
    /// target-object=NAME`). Its buffers are the pool's (memfd or dma-buf fds): no copy. The
    /// stream runs while a socket consumer or a PipeWire client takes it; the pool has at least
    /// 8 buffers (what PipeWire clients commonly ask for), PipeWire may hold half of them. Needs
    /// a running PipeWire daemon (found through XDG_RUNTIME_DIR or PIPEWIRE_REMOTE).
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "dmabuf-pipe")]
    pipewire: Option<String>,

    /// Do not compute the per-frame checksum (consumers then cannot --verify; for benchmarks).
    #[arg(long)]
    no_checksum: bool,

    /// Keep every consumer on the socket alone: decline the shared-memory ring a consumer asks
    /// for (docs/PROTOCOL.md, "Ring"), which otherwise carries frames and releases without a
    /// system call while both sides are busy (for comparisons).
    #[arg(long)]
    no_ring: bool,

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

    /// How pixels reach the consumer. zero-copy: the source draws into the shared pool buffer
    /// and only a small message crosses the socket. For comparison: memcpy (the source draws
    /// into private memory and each frame is copied into the shared buffer) and socket-copy
    /// (each frame's bytes go through a second, stream socket SOCKET.bytes; the consumer must
    /// use --transport socket-copy too).
    #[arg(
        long,
        default_value = "zero-copy",
        value_parser = clap::builder::PossibleValuesParser::new(TransportKind::NAMES)
            .map(|s| s.parse::<TransportKind>().expect("one of the possible values"))
    )]
    transport: TransportKind,

    /// Write the producer's statistics (CPU per frame split into source and transport work,
    /// page faults, fps, over the frames after --stats-warmup) as JSON to this file at the end.
    #[arg(long)]
    stats_json: Option<PathBuf>,

    /// Frames to leave out of the --stats-json figures at the start (warm-up).
    #[arg(long, default_value_t = 10)]
    stats_warmup: u64,

    /// Testing the measurement: burn this many µs of CPU in the transport step of every frame.
    #[arg(long, hide = true, default_value_t = 0)]
    test_burn_us: u64,

    /// Testing the measurement: touch this many fresh memfd pages (page faults) in the
    /// transport step of every frame.
    #[arg(long, hide = true, default_value_t = 0)]
    test_fault_pages: u64,
}

/// Buffers GStreamer's `pipewiresrc` asks for by default (`min-buffers`).
const PIPEWIRE_MIN_BUFFERS: usize = 8;

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

/// A pixel format, a V4L2 multi-buffer format (its planes in separate buffers), or MJPEG
/// (both V4L2 capture only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FormatArg {
    Pixel(PixelFormat),
    /// A V4L2 fourcc such as NM12 (NV12M), and the format it carries.
    V4l2(u32, PixelFormat),
    Mjpeg,
}

fn parse_format(s: &str) -> Result<FormatArg, String> {
    if s.eq_ignore_ascii_case("MJPEG") || s.eq_ignore_ascii_case("MJPG") {
        return Ok(FormatArg::Mjpeg);
    }
    for (name, cc) in source::v4l2::MULTI_BUFFER_NAMES {
        let code = u32::from_le_bytes(*cc);
        if s.eq_ignore_ascii_case(name) || s.as_bytes().eq_ignore_ascii_case(cc) {
            let pixel = source::v4l2::FORMATS
                .iter()
                .find(|(_, c, _)| *c == cc)
                .map(|(p, _, _)| *p)
                .expect("every multi-buffer name is in FORMATS");
            return Ok(FormatArg::V4l2(code, pixel));
        }
    }
    s.parse().map(FormatArg::Pixel).map_err(|e| {
        format!("{e}; or, for V4L2 capture, MJPEG or a multi-buffer format (NV12M, YUV420M, NV16M, YUV422M, YUV444M)")
    })
}

fn pixel_arg(args: &Args) -> Result<Option<PixelFormat>> {
    match args.format {
        Some(FormatArg::Mjpeg) => bail!("--format MJPEG applies to a v4l2: source"),
        Some(FormatArg::V4l2(cc, _)) => bail!(
            "--format {}: formats with one buffer per plane apply to a v4l2: source",
            String::from_utf8_lossy(&cc.to_le_bytes())
        ),
        Some(FormatArg::Pixel(p)) => Ok(Some(p)),
        None => Ok(None),
    }
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
    // Each consumer costs a socket: take the hard limit, as servers do.
    let fd_limit = dmabuf_core::procstat::raise_fd_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    tracing::debug!("open-file limit: {fd_limit}");
    if let Err(e) = run(Args::parse()) {
        eprintln!("producer: error: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DecodePath {
    Direct,
    Copy,
}

fn source(args: &Args) -> Result<Box<dyn FrameSource>> {
    if args.source == "pattern" {
        if args.looping
            || args.decode_threads.is_some()
            || args.decode_path != DecodePath::Direct
            || args.decoder_buffers.is_some()
        {
            bail!(
                "--loop, --decode-threads, --decode-path and --decoder-buffers apply to a file source"
            );
        }
        let (w, h) = args.size.unwrap_or((1920, 1080));
        let pixel = pixel_arg(args)?.unwrap_or(PixelFormat::Nv12);
        return Ok(Box::new(PatternSource {
            pattern: Pattern::new(pixel, w, h),
            format: FrameFormat::linear(pixel, w, h),
            fps: args.fps.unwrap_or((60, 1)),
        }));
    }
    if let Some(path) = args.source.strip_prefix("file:") {
        if args.size.is_some() || args.fps.is_some() {
            bail!("--size and --fps apply to the pattern or a camera; a file plays at its own size and rate");
        }
        let threads = args
            .decode_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 || threads > 64 {
            bail!("--decode-threads must be 1..=64");
        }
        let mut dec = Decoder::open(std::path::Path::new(path), threads, pixel_arg(args)?)?;
        // The comparison transports decode into private memory and copy or send from there.
        if args.decode_path == DecodePath::Copy || args.transport != TransportKind::ZeroCopy {
            dec.force_copy();
        }
        dec.decoder_buffers = args.decoder_buffers.map(|n| n as usize);
        return Ok(Box::new(FileSource::new(dec, args.looping)));
    }
    if let Some(target) = args.source.strip_prefix("pipewire:") {
        if args.transport != TransportKind::ZeroCopy {
            bail!("--transport memcpy and socket-copy compare the pattern or a file, not a pipewire: source");
        }
        if args.size.is_some() || args.fps.is_some() || args.format.is_some() {
            bail!("--size, --fps and --format do not apply to a pipewire: source (it plays what the node sends)");
        }
        if target.is_empty() {
            bail!(
                "--source pipewire: needs a node: its name or serial (--list-devices lists them)"
            );
        }
        let src = source::pipewire::PipeWireSource::connect(target, Duration::from_secs(10))?;
        return Ok(Box::new(src));
    }
    if let Some(path) = args.source.strip_prefix("v4l2:") {
        if args.transport != TransportKind::ZeroCopy {
            bail!("--transport memcpy and socket-copy compare the pattern or a file, not a v4l2: source");
        }
        if args.looping || args.decode_threads.is_some() {
            bail!("--loop and --decode-threads apply to a file source");
        }
        if args.stall_timeout.is_nan() || args.stall_timeout <= 0.0 {
            bail!("--stall-timeout must be positive");
        }
        let req = source::v4l2::Request {
            size: args.size,
            pixel: match args.format {
                Some(FormatArg::Pixel(p) | FormatArg::V4l2(_, p)) => Some(p),
                _ => None,
            },
            fourcc: match args.format {
                Some(FormatArg::V4l2(cc, _)) => Some(cc),
                _ => None,
            },
            mjpeg: args.format == Some(FormatArg::Mjpeg),
            fps: args.fps,
            io: args.v4l2_io,
            alloc: args.alloc,
            buffers: args.buffers as usize,
            stall: Duration::from_secs_f64(args.stall_timeout),
        };
        let cap = source::v4l2::Capture::open(std::path::Path::new(path), &req)?;
        return Ok(Box::new(cap));
    }
    bail!(
        "unknown source {:?}: expected `pattern`, `file:PATH` or `v4l2:/dev/videoN`",
        args.source
    )
}

fn run(args: Args) -> Result<()> {
    if args.list_devices {
        print!("{}", source::v4l2::list::list_devices());
        match dmabuf_pipewire::video_nodes() {
            Ok(nodes) if nodes.is_empty() => println!("PipeWire: no video nodes"),
            Ok(nodes) => {
                println!("PipeWire video nodes (--source pipewire:NAME or SERIAL):");
                for n in nodes {
                    println!(
                        "  {} (serial {}, id {}): {}{}",
                        n.name,
                        n.serial.as_deref().unwrap_or("?"),
                        n.id,
                        n.media_class,
                        n.description
                            .map(|d| format!(", {d:?}"))
                            .unwrap_or_default()
                    );
                }
            }
            Err(e) => println!("PipeWire: {e}"),
        }
        println!("PipeWire: {}", dmabuf_pipewire::explicit_sync_note());
        return Ok(());
    }
    if args.v4l2_io != source::v4l2::Io::Auto && !args.source.starts_with("v4l2:") {
        bail!("--v4l2-io applies to a v4l2: source");
    }
    let source = source(&args)?;
    // A capture device or a PipeWire stream paces itself.
    let pace = !args.no_pace && !source.live();
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
    if args
        .pipewire
        .as_deref()
        .is_some_and(|n| n.trim().is_empty())
    {
        bail!("--pipewire NAME: the node needs a name clients can target (or omit NAME for dmabuf-pipe)");
    }
    let mut buffers = args.buffers as usize;
    if args.pipewire.is_some() && buffers < PIPEWIRE_MIN_BUFFERS {
        tracing::info!(
            "--pipewire: {PIPEWIRE_MIN_BUFFERS} buffers rather than {buffers} (PipeWire clients ask for 8)"
        );
        buffers = PIPEWIRE_MIN_BUFFERS;
    }
    let opts = server::ServeOptions {
        alloc: args.alloc,
        buffers,
        pace,
        frames: args.frames,
        checksum: !args.no_checksum,
        hello_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs_f64(args.stall_timeout),
        duration: args.duration.map(Duration::from_secs_f64),
        report_every: Duration::from_secs_f64(args.report_every),
        pipewire: args.pipewire.clone(),
        ring: !args.no_ring,
    };
    let mut transport = Transport::new(
        args.transport,
        &args.socket,
        args.stats_warmup,
        TestLoad {
            burn_ns: args.test_burn_us.saturating_mul(1000),
            fault_pages: args.test_fault_pages,
        },
        args.stats_json.is_some(),
    );
    tracing::info!("transport: {}", transport.kind().name());
    let result = server::serve(&args.socket, &listen, source, &mut transport, opts, stop);
    if let Some(path) = &args.stats_json {
        let report = transport.meter.report();
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    result
}
