//! `consumer`: connects to a producer, receives each buffer's fds once, then reads frames in
//! place (no copy), optionally verifying each against the producer's checksum, and releases the
//! buffers back.

mod framemd5;
mod import;
mod stats;
mod transport;
mod window;

use anyhow::{bail, Context as _, Result};
use clap::builder::TypedValueParser as _;
use clap::Parser;
use dmabuf_core::buffer::MemoryKind;
use dmabuf_core::format::{PixelFormat, MOD_LINEAR};
use dmabuf_core::proto::client::{Client, Event};
use dmabuf_core::proto::wire::{
    h273, Cap, GoodbyeReason, CHUNK_FLAG_CORRUPTED, FRAME_FLAG_CHECKSUM, FRAME_FLAG_COPIED,
};
use dmabuf_core::proto::{Channel, ProtoError};
use import::cpu::MappedBuffer;
use import::vulkan::{ImportPath, Vulkan};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Receive video frames from a producer without copying them.
///
/// Connects to the producer's socket, states what it can import, maps each buffer once when
/// its fds arrive, and then handles each frame in place: with --verify it recomputes the
/// producer's checksum over the shared memory. A live line of statistics (fps, latency,
/// CPU) is printed to stderr every second.
///
/// Exit status: 0 on a clean end of stream, after --frames/--duration, or on SIGINT/SIGTERM
/// (it says goodbye and writes its statistics); 1 on errors (a producer that goes away is one,
/// unless --reconnect); 3 if --verify or --expect-framemd5 found mismatches.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The producer's socket.
    #[arg(long, default_value = "/tmp/dmabuf-frames.sock")]
    socket: PathBuf,

    /// Leave after this many frames (otherwise run until the producer ends the stream).
    #[arg(long)]
    frames: Option<u64>,

    /// Check every frame against the checksum the producer sent with it. This proves transport
    /// integrity (these are the bytes the producer published), not decode correctness: a
    /// picture the producer decoded wrongly is checksummed as it is. For that, see
    /// --expect-framemd5.
    #[arg(long)]
    verify: bool,

    /// Check decode correctness end to end: compare the MD5 of each frame's visible bytes
    /// (packed, as --dump-raw writes them) with the same frame in a reference made by the
    /// FFmpeg CLI, e.g. `ffmpeg -i IN -map 0:v:0 -autoscale 0 -fps_mode passthrough -pix_fmt
    /// yuv420p -f framemd5 REF` (frame `seq` against line `seq`, modulo the file's length for
    /// --loop). Mismatches are counted (`framemd5_mismatches`) and make the exit status 3.
    #[arg(long, value_name = "FILE")]
    expect_framemd5: Option<PathBuf>,

    /// Write statistics as a JSON object to this file at the end.
    #[arg(long)]
    stats_json: Option<PathBuf>,

    /// Write each frame's planes, tightly packed (no stride padding), to this file.
    #[arg(long)]
    dump_raw: Option<PathBuf>,

    /// How frames reach the GPU: auto (probe: dmabuf-image, else dmabuf-buffer for dma-bufs;
    /// host-pointer for memfds; copy as the last resort), dmabuf-image, dmabuf-buffer,
    /// host-pointer, copy (a real memcpy + upload, for comparison), or cpu-map (no GPU: map the
    /// buffers and read them on the CPU). With a GPU path, --verify runs the checksum on the GPU
    /// over the imported memory.
    #[arg(long, default_value = "auto")]
    import: ImportChoice,

    /// Write every Nth frame, converted to RGBA on the GPU, as a PNG into --snapshot-dir.
    #[arg(long)]
    snapshot_every: Option<u64>,

    /// Where --snapshot-every writes (created if missing).
    #[arg(long, default_value = "snapshots")]
    snapshot_dir: PathBuf,

    /// Show the video live in a window (X11, Vulkan swapchain; works under Xvfb with lavapipe).
    /// Esc, q or closing the window ends the stream.
    #[arg(long)]
    window: bool,

    /// With --window: keep the last frame on screen this many seconds after the stream ends.
    #[arg(long, default_value_t = 0.0)]
    window_hold: f64,

    /// Seconds to keep trying to connect while the producer starts.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,

    /// Seconds the producer may stay silent once connected (no buffer, no frame, no goodbye)
    /// before the consumer gives up on it, naming what it was waiting for; with --reconnect it
    /// then waits for a producer again. 0: wait forever. (The Welcome has its own 5 s limit.)
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    producer_timeout: f64,

    /// When the producer goes away (closes, is killed, or says Leaving), wait for a producer to
    /// listen on the socket again and resume: imports are dropped and redone, statistics carry
    /// on (frames, verified, dropped add up; `reconnects` counts the resumptions). Without it,
    /// the consumer ends with an error naming what happened.
    #[arg(long)]
    reconnect: bool,

    /// With --reconnect: give up after this many seconds without a producer (default: wait
    /// forever).
    #[arg(long, requires = "reconnect")]
    reconnect_timeout: Option<f64>,

    /// Leave after this many seconds (like --frames; for soak tests).
    #[arg(long)]
    duration: Option<f64>,

    /// Every this many seconds, record this process's RSS and open fds (printed, and kept as a
    /// time series in --stats-json `resources`).
    #[arg(long)]
    report_every: Option<f64>,

    /// How pixels arrive (must match the producer's --transport). zero-copy: read the shared
    /// buffer in place. memcpy: copy it into a staging buffer and upload it (implies --import
    /// copy). socket-copy: read each frame's bytes from the producer's byte stream
    /// (SOCKET.bytes) into the staging buffer and upload them (--import copy, or cpu-map to
    /// read them into private memory).
    #[arg(
        long,
        default_value = "zero-copy",
        value_parser = clap::builder::PossibleValuesParser::new(transport::TransportKind::NAMES)
            .map(|s| s.parse::<transport::TransportKind>().expect("one of the possible values"))
    )]
    transport: transport::TransportKind,

    /// Take frames and give releases on the socket alone: do not ask the producer for the
    /// shared-memory ring (docs/PROTOCOL.md, "Ring"; for comparisons).
    #[arg(long)]
    no_ring: bool,

    /// Frames to leave out of the steady-state figures in --stats-json at the start (warm-up).
    #[arg(long, default_value_t = 10)]
    stats_warmup: u64,

    /// Testing the measurement: burn this many µs of CPU per frame outside the GPU work.
    #[arg(long, hide = true, default_value_t = 0)]
    test_burn_us: u64,

    /// No live statistics line.
    #[arg(long, short)]
    quiet: bool,
}

/// `--import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ImportChoice {
    Auto,
    DmabufImage,
    DmabufBuffer,
    HostPointer,
    Copy,
    CpuMap,
}

impl ImportChoice {
    fn forced(self) -> Option<ImportPath> {
        match self {
            ImportChoice::DmabufImage => Some(ImportPath::DmabufImage),
            ImportChoice::DmabufBuffer => Some(ImportPath::DmabufBuffer),
            ImportChoice::HostPointer => Some(ImportPath::HostPointer),
            ImportChoice::Copy => Some(ImportPath::Copy),
            ImportChoice::Auto | ImportChoice::CpuMap => None,
        }
    }
}

/// The GPU side: the device, and the path chosen once the producer's Welcome is known.
struct Gpu {
    vk: Vulkan,
    path: ImportPath,
}

/// The most buffers a producer may announce (the wire's limit): Vulkan state is sized for it.
const MAX_BUFFERS: u32 = 256;

/// Open Vulkan for `choice` (able to present on `display`); `None` means the CPU mapping path.
fn open_gpu(
    choice: ImportChoice,
    display: Option<raw_window_handle::RawDisplayHandle>,
) -> Result<Option<Vulkan>> {
    if choice == ImportChoice::CpuMap {
        return Ok(None);
    }
    match Vulkan::new(MAX_BUFFERS, display) {
        Ok(vk) => {
            if let Some(path) = choice.forced() {
                if let Some(why) = vk.lacks(path) {
                    bail!("--import {path}: {why}");
                }
            }
            Ok(Some(vk))
        }
        Err(e) if choice == ImportChoice::Auto && display.is_none() => {
            tracing::warn!("no GPU import ({e:#}); reading frames through CPU mappings instead");
            Ok(None)
        }
        Err(e) => Err(e.context(format!("--import {choice:?}"))),
    }
}

/// The path for this stream: the forced one, or the best the device offers for it.
fn choose_path(
    vk: &Vulkan,
    choice: ImportChoice,
    w: &dmabuf_core::proto::wire::Welcome,
) -> ImportPath {
    if let Some(p) = choice.forced() {
        return p;
    }
    let fourcc = w.pixel.fourcc();
    let offered = |p: ImportPath| {
        vk.caps(&[p]).iter().any(|c| {
            c.fourcc == fourcc && c.modifier == w.modifier && c.memory_mask & w.memory.bit() != 0
        })
    };
    [
        ImportPath::DmabufImage,
        ImportPath::DmabufBuffer,
        ImportPath::HostPointer,
    ]
    .into_iter()
    .find(|&p| offered(p))
    .unwrap_or(ImportPath::Copy)
}

fn write_png(path: &std::path::Path, width: u32, height: u32, rgba: &[u8]) -> Result<()> {
    let file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut enc = png::Encoder::new(file, width, height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(rgba)?;
    Ok(())
}

fn main() {
    // Each buffer's planes cost a descriptor: take the hard limit.
    dmabuf_core::procstat::raise_fd_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let mut args = Args::parse();
    if args.transport != transport::TransportKind::ZeroCopy && args.import == ImportChoice::Auto {
        args.import = ImportChoice::Copy;
    }
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
            fourcc: p.fourcc(),
            memory_mask: mask,
            modifier: MOD_LINEAR,
        })
        .collect()
}

/// Connect, retrying for up to `timeout` seconds (`None`: forever) while no producer listens.
fn connect(args: &Args, timeout: Option<f64>, stop: &AtomicBool) -> Result<Channel> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t));
    loop {
        match Channel::connect(&args.socket) {
            Ok(c) => return Ok(c),
            Err(e) if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(e).with_context(|| {
                    format!(
                        "no producer at {} (is `producer --socket {}` running?)",
                        args.socket.display(),
                        args.socket.display()
                    )
                })
            }
            Err(_) if stop.load(Ordering::Relaxed) => bail!("interrupted while connecting"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn run(args: &Args) -> Result<i32> {
    match (args.transport, args.import) {
        (transport::TransportKind::Memcpy, i) if i != ImportChoice::Copy => {
            bail!("--transport memcpy copies into a staging buffer: it needs --import copy")
        }
        (transport::TransportKind::SocketCopy, i)
            if i != ImportChoice::Copy && i != ImportChoice::CpuMap =>
        {
            bail!("--transport socket-copy reads into a staging buffer (--import copy) or private memory (--import cpu-map)")
        }
        (transport::TransportKind::SocketCopy, _)
            if args.window
                || args.snapshot_every.is_some()
                || args.dump_raw.is_some()
                || args.reconnect =>
        {
            bail!("--transport socket-copy is for the comparison: no --window, --snapshot-every, --dump-raw or --reconnect")
        }
        _ => {}
    }
    if args.window && args.import == ImportChoice::CpuMap {
        bail!("--window shows frames through Vulkan; it cannot be used with --import cpu-map");
    }
    if args.window_hold.is_nan() || args.window_hold < 0.0 {
        bail!("--window-hold must be >= 0");
    }
    if args.connect_timeout.is_nan() || args.connect_timeout < 0.0 {
        bail!("--connect-timeout must be >= 0");
    }
    let positive = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v > 0.0);
    if !positive(args.reconnect_timeout) || !positive(args.duration) || !positive(args.report_every)
    {
        bail!("--reconnect-timeout, --duration and --report-every must be positive seconds");
    }
    // Declared before the GPU so that it is dropped after it (the surface goes first).
    let mut viewer = match args.window {
        true => Some(window::Viewer::new()?),
        false => None,
    };
    let display = viewer.as_ref().map(|v| v.display()).transpose()?;
    let vk = open_gpu(args.import, display)?;
    if vk.is_none() && args.snapshot_every.is_some() {
        bail!("--snapshot-every converts frames on the GPU; it needs a Vulkan import path (not cpu-map)");
    }
    if args.snapshot_every == Some(0) {
        bail!("--snapshot-every must be at least 1");
    }
    let offered = match (&vk, args.import.forced()) {
        (None, _) => caps(),
        (Some(vk), Some(p)) => vk.caps(&[p]),
        (Some(vk), None) => vk.caps(&[
            ImportPath::DmabufImage,
            ImportPath::DmabufBuffer,
            ImportPath::HostPointer,
            ImportPath::Copy,
        ]),
    };
    // The per-frame CPU meters cost two system calls a frame: only for --stats-json.
    dmabuf_core::time::set_metering(args.stats_json.is_some());
    let mut stats = stats::Stats::new(
        !args.quiet,
        args.report_every.map(Duration::from_secs_f64),
        args.stats_warmup,
    );
    stats.report.transport = args.transport.name().into();
    let mut gpu: Option<Gpu> = None;
    let mut vk = vk;
    let mut expect = match &args.expect_framemd5 {
        Some(p) => Some(framemd5::Expect::load(p)?),
        None => None,
    };
    let mut dump = match &args.dump_raw {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    // SIGINT/SIGTERM: leave cleanly after the current frame (Goodbye, statistics written).
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let started = Instant::now();
    let mut connect_timeout = Some(args.connect_timeout);
    // While reconnecting: when the wait began.
    let mut waiting_since: Option<Instant> = None;
    let result: Result<()> = loop {
        let timeout = match (waiting_since, connect_timeout) {
            (Some(t), Some(limit)) => Some((limit - t.elapsed().as_secs_f64()).max(0.0)),
            (_, limit) => limit,
        };
        let chan = match connect(args, timeout, &stop) {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        let client = match Client::handshake_with(
            chan,
            offered.clone(),
            Duration::from_secs(5),
            !args.no_ring,
        ) {
            Ok(c) => c,
            // A producer that is still going away (or not quite up) can accept and close:
            // while reconnecting, keep waiting.
            Err(ProtoError::Closed) if waiting_since.is_some() && !stop.load(Ordering::Relaxed) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => break Err(anyhow::Error::new(e).context("handshake with the producer")),
        };
        stats.connected();
        let w = client.welcome().clone();
        if let Some(g) = gpu.take() {
            // A new producer: forget every import of the previous one.
            let mut vk = g.vk;
            for id in 0..MAX_BUFFERS {
                vk.remove(id);
            }
            gpu = Some(Gpu {
                path: choose_path(&vk, args.import, &w),
                vk,
            });
        } else if let Some(vk) = vk.take() {
            gpu = Some(Gpu {
                path: choose_path(&vk, args.import, &w),
                vk,
            });
            if let (Some(v), Some(g), Some(d)) = (viewer.as_mut(), gpu.as_mut(), display) {
                let title = format!("{} {}x{} ({})", w.pixel, w.width, w.height, g.path);
                // Upright, at the display aspect ratio.
                let ((dw, dh), _) = w.geometry.display_size(w.width, w.height);
                let handle = v.open(dw, dh, &title)?;
                g.vk.attach_window(d, handle, dw, dh)?;
            }
        }
        if viewer.is_some()
            && (w.width, w.height) != (stats.report.width, stats.report.height)
            && stats.report.width != 0
        {
            break Err(anyhow::anyhow!(
                "the new producer sends {}x{}, the window shows {}x{}",
                w.width,
                w.height,
                stats.report.width,
                stats.report.height
            ));
        }
        if args.snapshot_every.is_some() {
            std::fs::create_dir_all(&args.snapshot_dir)
                .with_context(|| format!("creating {}", args.snapshot_dir.display()))?;
        }
        tracing::info!(
            "colorimetry: matrix {}, {} range, primaries {}, transfer {}, chroma location {}; \
             sample aspect {}, {}° clockwise{}",
            w.color.matrix_name(),
            w.color.range_name(),
            w.color.primaries_name(),
            w.color.transfer_name(),
            w.color.chroma_location,
            if w.geometry.sar_den > 0 {
                format!("{}:{}", w.geometry.sar_num, w.geometry.sar_den)
            } else {
                "unknown (square)".into()
            },
            90 * u32::from(w.geometry.rotation),
            if w.geometry.mirror { ", mirrored" } else { "" }
        );
        if matches!(w.color.transfer, h273::TRANSFER_PQ | h273::TRANSFER_HLG) {
            tracing::warn!(
                "{} transfer: carried and reported, not tone-mapped (snapshots and the window \
                 show the coded values as if SDR)",
                w.color.transfer_name()
            );
        }
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
        stats.report.alloc = w.allocator.name().into();
        stats.report.memory = w.memory.name().into();
        stats.report.import_path = gpu.as_ref().map_or("cpu-map", |g| g.path.name()).into();
        if let Some(g) = &gpu {
            stats.report.vk_device = Some(g.vk.device_name.clone());
            tracing::info!("import path: {} on {}", g.path, g.vk.device_name);
        }
        stats.report.pixel_format = w.pixel.name().into();
        stats.report.describe(&w);
        stats.report.width = w.width;
        stats.report.height = w.height;
        stats.report.buffers = w.buffer_count;
        // socket-copy: the frames' bytes come through a second, stream connection.
        let bytes = match args.transport {
            transport::TransportKind::SocketCopy => Some(
                transport::ByteStream::connect(&args.socket, Duration::from_secs(5))
                    .context("connecting the socket-copy byte stream")?,
            ),
            _ => None,
        };
        let mut s = Stream {
            args,
            client,
            bytes,
            gpu: &mut gpu,
            viewer: &mut viewer,
            stats: &mut stats,
            dump: &mut dump,
            expect: &mut expect,
            started,
            stop: &stop,
        };
        let outcome = s.run();
        // While the connection and the buffers are still open, as after the warm-up.
        s.stats.stream_ended();
        drop(s);
        match outcome {
            Ok(Outcome::Done) => break Ok(()),
            Ok(Outcome::ProducerGone(why)) if args.reconnect && !stop.load(Ordering::Relaxed) => {
                eprintln!(
                    "consumer: {why}; waiting for a producer at {} (--reconnect)",
                    args.socket.display()
                );
                stats.reconnected();
                connect_timeout = args.reconnect_timeout;
                waiting_since = Some(Instant::now());
            }
            Ok(Outcome::ProducerGone(why)) => {
                break Err(anyhow::anyhow!(
                    "{why} (use --reconnect to wait for the next producer)"
                ))
            }
            Err(e) => break Err(e),
        }
    };
    if let Some(mut out) = dump {
        out.flush().context("writing --dump-raw")?;
    }
    if let Some(v) = viewer.as_mut() {
        v.hold(Duration::from_secs_f64(args.window_hold));
    }
    if let Some(g) = &gpu {
        stats.report.vk_allocations = Some(g.vk.counters().allocations);
        stats.report.vk_imports = Some(g.vk.counters().imports);
        stats.report.implicit_sync_waits = Some(g.vk.counters().implicit_sync_waits);
    }
    // True only when the GPU recomputed at least one checksum.
    stats.report.gpu_verified = gpu.is_some() && args.verify && stats.report.verified > 0;
    if let Some(e) = &expect {
        stats.report.framemd5_matched = Some(e.matched);
        stats.report.framemd5_mismatches = Some(e.mismatched);
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
    if report.reconnects > 0 {
        eprintln!("consumer: reconnected {} time(s)", report.reconnects);
    }
    if let Some(first) = report.snapshots.first() {
        eprintln!(
            "consumer: {} PNG snapshot(s) in {} (first: {first})",
            report.snapshots.len(),
            args.snapshot_dir.display()
        );
    }
    if let (Some(ok), Some(bad)) = (report.framemd5_matched, report.framemd5_mismatches) {
        eprintln!(
            "consumer: decode check against the framemd5 reference: {ok} matched, {bad} differ"
        );
    }
    result?;
    let decode_bad = report.framemd5_mismatches.unwrap_or(0) > 0;
    Ok(if report.mismatches > 0 || decode_bad {
        3
    } else {
        0
    })
}

/// How one connection ended.
enum Outcome {
    /// End of stream, --frames, --duration or the window closed: the consumer is done.
    Done,
    /// The producer went away (closed, or said Leaving / InternalError): with --reconnect, wait
    /// for the next one.
    ProducerGone(String),
}

/// One connection's stream of frames.
struct Stream<'a> {
    args: &'a Args,
    client: Client,
    /// socket-copy's byte stream.
    bytes: Option<transport::ByteStream>,
    gpu: &'a mut Option<Gpu>,
    viewer: &'a mut Option<window::Viewer>,
    stats: &'a mut stats::Stats,
    dump: &'a mut Option<std::io::BufWriter<std::fs::File>>,
    /// `--expect-framemd5`.
    expect: &'a mut Option<framemd5::Expect>,
    started: Instant,
    stop: &'a AtomicBool,
}

impl Stream<'_> {
    fn run(&mut self) -> Result<Outcome> {
        let args = self.args;
        let mut w = self.client.welcome().clone();
        let mut scratch = Vec::new();
        let mut maps: Vec<Option<MappedBuffer>> = (0..w.buffer_count).map(|_| None).collect();
        let silence =
            (args.producer_timeout > 0.0).then(|| Duration::from_secs_f64(args.producer_timeout));
        let mut last_heard = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                self.client.goodbye(GoodbyeReason::Leaving, "interrupted");
                return Ok(Outcome::Done);
            }
            let event = self.client.next_event(Some(Duration::from_millis(250)));
            if !matches!(event, Err(ProtoError::Timeout { .. })) {
                last_heard = Instant::now();
            }
            match event {
                Err(ProtoError::Timeout { .. }) => {
                    if let Some(limit) = silence.filter(|l| last_heard.elapsed() >= *l) {
                        let added = (0..w.buffer_count)
                            .filter(|&id| self.client.buffer(id).is_some())
                            .count();
                        let what = if added < w.buffer_count as usize {
                            format!("its buffers ({added} of {} added)", w.buffer_count)
                        } else {
                            "the next frame".to_string()
                        };
                        let msg = format!(
                            "the producer sent nothing for {:.1} s while this consumer waited \
                             for {what} (--producer-timeout)",
                            limit.as_secs_f64()
                        );
                        self.client
                            .goodbye(GoodbyeReason::Leaving, "producer silent");
                        return Ok(Outcome::ProducerGone(msg));
                    }
                    continue;
                }
                Ok(Event::BufferAdded(id)) => {
                    // (The Ring message, if any, comes before the first buffer.)
                    self.stats.report.messages = if self.client.uses_ring() {
                        "ring"
                    } else {
                        "socket"
                    }
                    .into();
                    let buf = self.client.buffer(id).expect("just added");
                    match self.gpu.as_mut() {
                        Some(g) => {
                            let mut r = g.vk.import(id, buf, g.path);
                            if let Err(e) = &r {
                                if args.import == ImportChoice::Auto && g.path != ImportPath::Copy {
                                    // A buffer this path cannot take (a memfd whose size is not
                                    // a multiple of the host-pointer alignment …): the copy
                                    // path, the last resort, from here on.
                                    tracing::warn!(
                                        "buffer {id}: {} import failed ({e:#}); copying instead",
                                        g.path
                                    );
                                    g.path = ImportPath::Copy;
                                    self.stats.report.import_path = g.path.name().into();
                                    r = g.vk.import(id, buf, g.path);
                                }
                            }
                            if let Err(e) = r {
                                // Say why before leaving (Goodbye text is cut at 112 bytes:
                                // the root cause first).
                                let why = format!("buffer {id}: {}", e.root_cause());
                                self.client.goodbye(GoodbyeReason::Unsupported, &why);
                                return Err(
                                    e.context(format!("importing buffer {id} ({})", g.path))
                                );
                            }
                        }
                        None => maps[id as usize] = Some(MappedBuffer::new(buf)?),
                    }
                    let cpu_read = args.dump_raw.is_some() || args.expect_framemd5.is_some();
                    if cpu_read && maps[id as usize].is_none() {
                        maps[id as usize] = Some(MappedBuffer::new(buf)?);
                    }
                }
                Ok(Event::Renegotiated) => {
                    // Every buffer was removed (imports dropped above); new ones follow.
                    w = self.client.welcome().clone();
                    tracing::info!(
                        "renegotiated: {} {}x{}, {} buffers of {}",
                        w.pixel,
                        w.width,
                        w.height,
                        w.buffer_count,
                        w.memory
                    );
                    maps = (0..w.buffer_count).map(|_| None).collect();
                    let report = &mut self.stats.report;
                    if let Some(g) = self.gpu.as_mut() {
                        g.path = choose_path(&g.vk, args.import, &w);
                        report.import_path = g.path.name().into();
                    }
                    report.renegotiations += 1;
                    report.alloc = w.allocator.name().into();
                    report.memory = w.memory.name().into();
                    report.pixel_format = w.pixel.name().into();
                    report.describe(&w);
                    report.width = w.width;
                    report.height = w.height;
                    report.buffers = w.buffer_count;
                }
                Ok(Event::BufferRemoved(id)) => {
                    maps[id as usize] = None;
                    if let Some(g) = self.gpu.as_mut() {
                        g.vk.remove(id);
                    }
                }
                Ok(Event::Frame(f)) => {
                    let received_ns = dmabuf_core::time::monotonic_ns();
                    let id = f.buffer_id;
                    let buf = self.client.buffer(id).expect("validated by the client");
                    let map = maps[id as usize].as_ref();
                    let stats = &mut *self.stats;
                    if f.flags & FRAME_FLAG_COPIED != 0 {
                        stats.report.producer_copied += 1;
                    }
                    if f.chunks.iter().any(|c| c.flags & CHUNK_FLAG_CORRUPTED != 0) {
                        stats.report.corrupted += 1;
                    }
                    // socket-copy: the frame's bytes come through the byte stream (into the
                    // staging buffer, uploaded, or into private memory).
                    let mut streamed_sum = None;
                    let streamed = self.bytes.is_some();
                    if let Some(bs) = self.bytes.as_mut() {
                        if buf.fds.len() != 1 {
                            bail!("--transport socket-copy needs single-fd buffers");
                        }
                        let size = buf.fd_sizes[0] as usize;
                        let planes = &buf.layout.planes;
                        let want = args.verify && f.flags & FRAME_FLAG_CHECKSUM != 0;
                        match self.gpu.as_mut() {
                            Some(g) => g.vk.upload_with(id, |dst| {
                                bs.read_frame(dst)?;
                                if want {
                                    streamed_sum = dmabuf_core::format::frame_checksum(dst, planes);
                                }
                                Ok(())
                            })?,
                            None => {
                                let mut private = std::mem::take(&mut bs.private);
                                private.resize(size, 0);
                                bs.read_frame(&mut private)?;
                                if want {
                                    streamed_sum =
                                        dmabuf_core::format::frame_checksum(&private, planes);
                                }
                                bs.private = private;
                            }
                        }
                    }
                    // Use the frame first (checksum, conversion, reading it back); results are
                    // kept aside and only counted or written once the connection is known to
                    // have been open all along (below).
                    let mut checked = streamed;
                    // (computed checksum, the producer's)
                    let mut sums = None;
                    if args.verify {
                        if f.flags & FRAME_FLAG_CHECKSUM == 0 {
                            stats.report.unverifiable += 1;
                        } else {
                            let got = match (streamed, self.gpu.as_mut()) {
                                (true, _) => streamed_sum.context("frame without planes")?,
                                (false, Some(g)) => g.vk.checksum(id, buf)?,
                                (false, None) => map.expect("mapped when added").checksum(buf)?,
                            };
                            checked = true;
                            sums = Some(got);
                        }
                    }
                    if let Some(g) = self.gpu.as_mut() {
                        if !checked {
                            // Make the frame GPU-visible even when not verifying (the copy path
                            // copies; the zero-copy paths acquire and release the memory).
                            g.vk.touch(id, buf)?;
                        }
                    }
                    let visible_ns = self.gpu.as_ref().map(|_| dmabuf_core::time::monotonic_ns());
                    if args.test_burn_us > 0 {
                        dmabuf_core::time::burn_cpu_ns(args.test_burn_us.saturating_mul(1000));
                    }
                    let mut snapshot = None;
                    if let Some(g) = self.gpu.as_mut() {
                        if let Some(v) = self.viewer.as_mut() {
                            if !v.pump() {
                                self.client.release(id)?;
                                self.client.goodbye(GoodbyeReason::Leaving, "window closed");
                                return Ok(Outcome::Done);
                            }
                            g.vk.present(id, buf, w.color, w.geometry)?;
                        }
                        if let Some(n) = args.snapshot_every {
                            if stats.report.frames.is_multiple_of(n) {
                                snapshot = Some(g.vk.convert(id, buf, w.color, w.geometry)?);
                            }
                        }
                    }
                    let cpu_read = self.dump.is_some() || self.expect.is_some();
                    if cpu_read {
                        scratch.clear();
                        map.expect("mapped when added")
                            .append_packed(buf, &mut scratch)?;
                    }
                    // The producer reuses a buffer a consumer holds only after dropping it and
                    // closing its connection: if the connection was still open now, after every
                    // read above (or ended with the stream), nothing was overwritten meanwhile.
                    // The Release itself is the check: it goes out only on an open connection.
                    let sent = self.client.release_sent(id)?;
                    if !sent && self.client.frames_reclaimed() {
                        stats.report.reclaimed += 1;
                        tracing::warn!(
                            "frame {}: the producer ended the connection while it was in use \
                             (its buffer may have been reused): not counted, not written",
                            f.seq
                        );
                        continue;
                    }
                    if let Some(got) = sums {
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
                    if let Some(rgba) = snapshot {
                        let path = args.snapshot_dir.join(format!("frame-{:06}.png", f.seq));
                        let ((dw, dh), _) = w.geometry.display_size(w.width, w.height);
                        write_png(&path, dw, dh, &rgba)?;
                        stats.report.snapshots.push(path.display().to_string());
                    }
                    if cpu_read {
                        if let Some(out) = self.dump.as_mut() {
                            out.write_all(&scratch).context("writing --dump-raw")?;
                        }
                        if let Some(e) = self.expect.as_mut() {
                            e.check(f.seq, &scratch);
                        }
                    }
                    stats.frame(f.seq, f.pts_ns, f.publish_ns, received_ns);
                    stats.steady(
                        f.publish_ns,
                        visible_ns,
                        self.gpu.as_ref().map_or(0, |g| g.vk.gpu_cpu_ns()),
                    );
                    let enough = args.frames.is_some_and(|n| stats.report.frames >= n)
                        || args
                            .duration
                            .is_some_and(|d| self.started.elapsed().as_secs_f64() >= d);
                    if enough {
                        self.client
                            .goodbye(GoodbyeReason::Leaving, "got the frames I wanted");
                        return Ok(Outcome::Done);
                    }
                }
                Ok(Event::End(g)) => {
                    return match g.reason {
                        GoodbyeReason::EndOfStream => {
                            // Say why when the producer gave a reason (e.g. a capture device
                            // was unplugged); a plain end of stream needs no words.
                            if !g.message.is_empty() && g.message != "end of stream" {
                                eprintln!(
                                    "consumer: end of stream: {}",
                                    dmabuf_core::proto::wire::printable(&g.message)
                                );
                            }
                            Ok(Outcome::Done)
                        }
                        r @ (GoodbyeReason::Leaving | GoodbyeReason::InternalError) => {
                            Ok(Outcome::ProducerGone(format!(
                                "producer ended the stream ({r:?}): {}",
                                dmabuf_core::proto::wire::printable(&g.message)
                            )))
                        }
                        r => bail!(
                            "producer ended the stream ({r:?}): {}",
                            dmabuf_core::proto::wire::printable(&g.message)
                        ),
                    };
                }
                Err(ProtoError::Closed) => {
                    return Ok(Outcome::ProducerGone(
                        "producer closed the connection without a goodbye".into(),
                    ))
                }
                Err(e) => return Err(e).context("protocol error"),
            }
        }
    }
}
