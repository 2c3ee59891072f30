//! `consumer`: connects to a producer, receives each buffer's fds once, then reads frames in
//! place (no copy), optionally verifying each against the producer's checksum, and releases the
//! buffers back.

mod import;
mod stats;
mod transport;
mod window;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use dmabuf_core::buffer::MemoryKind;
use dmabuf_core::format::{PixelFormat, MOD_LINEAR};
use dmabuf_core::proto::client::{Client, Event};
use dmabuf_core::proto::wire::{Cap, GoodbyeReason, FRAME_FLAG_CHECKSUM};
use dmabuf_core::proto::{Channel, ProtoError};
use import::cpu::MappedBuffer;
use import::vulkan::{ImportPath, Vulkan};
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

    /// No live statistics line.
    #[arg(long, short)]
    quiet: bool,

    /// How pixels arrive (must match the producer's --transport). zero-copy: read the shared
    /// buffer in place. memcpy: copy it into a staging buffer and upload it (implies --import
    /// copy). socket-copy: read each frame's bytes from the producer's byte stream
    /// (SOCKET.bytes) into the staging buffer and upload them (--import copy, or cpu-map to
    /// read them into private memory).
    #[arg(long, value_enum, default_value = "zero-copy")]
    transport: transport::TransportKind,

    /// Frames to leave out of the steady-state figures in --stats-json at the start (warm-up).
    #[arg(long, default_value_t = 10)]
    stats_warmup: u64,

    /// Testing the measurement: burn this many µs of CPU per frame outside the GPU work.
    #[arg(long, hide = true, default_value_t = 0)]
    test_burn_us: u64,
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

/// Open Vulkan for `choice` (able to present on `display`); `None` means the CPU mapping path.
fn open_gpu(
    choice: ImportChoice,
    display: Option<raw_window_handle::RawDisplayHandle>,
) -> Result<Option<Vulkan>> {
    if choice == ImportChoice::CpuMap {
        return Ok(None);
    }
    match Vulkan::new(64, display) {
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
    let fourcc = w.pixel.fourcc() as u32;
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
            if args.window || args.snapshot_every.is_some() || args.dump_raw.is_some() =>
        {
            bail!("--transport socket-copy is for the comparison: no --window, --snapshot-every or --dump-raw")
        }
        _ => {}
    }
    if args.window && args.import == ImportChoice::CpuMap {
        bail!("--window shows frames through Vulkan; it cannot be used with --import cpu-map");
    }
    if args.window_hold.is_nan() || args.window_hold < 0.0 {
        bail!("--window-hold must be >= 0");
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
    let chan = connect(args)?;
    let mut client = Client::handshake(chan, offered, Duration::from_secs(5))
        .context("handshake with the producer")?;
    let w = client.welcome().clone();
    let mut bytes = match args.transport {
        transport::TransportKind::SocketCopy => Some(transport::ByteStream::connect(
            &args.socket,
            Duration::from_secs(5),
        )?),
        _ => None,
    };
    let mut gpu = vk.map(|vk| Gpu {
        path: choose_path(&vk, args.import, &w),
        vk,
    });
    if let (Some(v), Some(g), Some(d)) = (viewer.as_mut(), gpu.as_mut(), display) {
        let title = format!("{} {}x{} ({})", w.pixel, w.width, w.height, g.path);
        let handle = v.open(w.width, w.height, &title)?;
        g.vk.attach_window(d, handle, w.width, w.height)?;
    }
    if args.snapshot_every.is_some() {
        std::fs::create_dir_all(&args.snapshot_dir)
            .with_context(|| format!("creating {}", args.snapshot_dir.display()))?;
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
    let mut stats = stats::Stats::new(!args.quiet, args.stats_warmup);
    stats.report.transport = args.transport.name().into();
    stats.report.alloc = w.allocator.name().into();
    stats.report.memory = w.memory.name().into();
    stats.report.import_path = gpu.as_ref().map_or("cpu-map", |g| g.path.name()).into();
    if let Some(g) = &gpu {
        stats.report.vk_device = Some(g.vk.device_name.clone());
        tracing::info!("import path: {} on {}", g.path, g.vk.device_name);
    }
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
                match gpu.as_mut() {
                    Some(g) => {
                        g.vk.import(id, buf, g.path)
                            .with_context(|| format!("importing buffer {id} ({})", g.path))?
                    }
                    None => maps[id as usize] = Some(MappedBuffer::new(buf)?),
                }
                if args.dump_raw.is_some() && maps[id as usize].is_none() {
                    maps[id as usize] = Some(MappedBuffer::new(buf)?);
                }
            }
            Ok(Event::BufferRemoved(id)) => {
                maps[id as usize] = None;
                if let Some(g) = gpu.as_mut() {
                    g.vk.remove(id);
                }
            }
            Ok(Event::Frame(f)) => {
                let received_ns = dmabuf_core::time::monotonic_ns();
                let id = f.buffer_id;
                let buf = client.buffer(id).expect("validated by the client");
                let map = maps[id as usize].as_ref();
                // socket-copy: the frame's bytes come through the byte stream (into the
                // staging buffer, uploaded, or into private memory).
                let mut streamed_sum = None;
                let streamed = bytes.is_some();
                if let Some(bs) = bytes.as_mut() {
                    if buf.fds.len() != 1 {
                        bail!("--transport socket-copy needs single-fd buffers");
                    }
                    let size = buf.fd_sizes[0] as usize;
                    let planes = &buf.layout.planes;
                    let want = args.verify && f.flags & FRAME_FLAG_CHECKSUM != 0;
                    match gpu.as_mut() {
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
                let mut checked = streamed;
                if args.verify {
                    if f.flags & FRAME_FLAG_CHECKSUM == 0 {
                        stats.report.unverifiable += 1;
                    } else {
                        let got = match (streamed, gpu.as_mut()) {
                            (true, _) => streamed_sum.context("frame without planes")?,
                            (false, Some(g)) => g.vk.checksum(id, buf)?,
                            (false, None) => map.expect("mapped when added").checksum(buf)?,
                        };
                        checked = true;
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
                if let Some(g) = gpu.as_mut() {
                    if !checked {
                        // Make the frame GPU-visible even when not verifying (the copy path
                        // copies; the zero-copy paths acquire and release the memory).
                        g.vk.touch(id, buf)?;
                    }
                }
                let visible_ns = gpu.as_ref().map(|_| dmabuf_core::time::monotonic_ns());
                if args.test_burn_us > 0 {
                    dmabuf_core::time::burn_cpu_ns(args.test_burn_us.saturating_mul(1000));
                }
                if let Some(g) = gpu.as_mut() {
                    if let Some(v) = viewer.as_mut() {
                        if !v.pump() {
                            client.release(id)?;
                            client.goodbye(GoodbyeReason::Leaving, "window closed");
                            return Ok(());
                        }
                        g.vk.present(id, buf, w.color)?;
                    }
                    if let Some(n) = args.snapshot_every {
                        if stats.report.frames % n == 0 {
                            let rgba = g.vk.convert(id, buf, w.color)?;
                            let path = args.snapshot_dir.join(format!("frame-{:06}.png", f.seq));
                            write_png(&path, w.width, w.height, &rgba)?;
                            stats.report.snapshots.push(path.display().to_string());
                        }
                    }
                }
                if let Some(out) = dump.as_mut() {
                    scratch.clear();
                    map.expect("mapped when added")
                        .append_packed(buf, &mut scratch)?;
                    out.write_all(&scratch).context("writing --dump-raw")?;
                }
                client.release(id)?;
                stats.frame(f.seq, f.publish_ns, received_ns);
                stats.steady(
                    f.publish_ns,
                    visible_ns,
                    gpu.as_ref().map_or(0, |g| g.vk.gpu_cpu_ns()),
                );
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
    if let Some(v) = viewer.as_mut() {
        v.hold(Duration::from_secs_f64(args.window_hold));
    }
    if let Some(g) = &gpu {
        stats.report.vk_allocations = Some(g.vk.counters.allocations);
        stats.report.vk_imports = Some(g.vk.counters.imports);
        stats.report.implicit_sync_waits = Some(g.vk.counters.implicit_sync_waits);
    }
    stats.report.gpu_verified = gpu.is_some() && args.verify;
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
    if let Some(first) = report.snapshots.first() {
        eprintln!(
            "consumer: {} PNG snapshot(s) in {} (first: {first})",
            report.snapshots.len(),
            args.snapshot_dir.display()
        );
    }
    result?;
    Ok(if report.mismatches > 0 { 3 } else { 0 })
}
