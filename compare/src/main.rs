//! `compare`: the same frames through every transport available on this machine, one after
//! another, with the real producer and consumer; a table, a JSON file with every figure, and a
//! plot of CPU per frame against frame size.

mod peers;
mod plot;
mod report;
mod run;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use dmabuf_core::alloc::{self, AllocChoice};
use dmabuf_core::format::{FrameFormat, PixelFormat};
use dmabuf_core::AllocatorKind;
use report::{Entry, Measured, PathStatus};
use run::{PathKind, RunSpec, Runner};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Compare zero-copy against memcpy and socket copy, side by side.
///
/// Runs the real producer and consumer over the real socket once per path, source and size:
/// `dmabuf` (dma-buf pool, fds once, Vulkan dma-buf import; needs a dma-buf allocator),
/// `memfd-zero-copy` (sealed memfd pool, Vulkan host-pointer import), `memcpy` (the producer
/// copies each frame into shared memory, the consumer copies it into a staging buffer and
/// uploads it) and `socket-copy` (each frame's bytes written through a stream socket, read
/// into the staging buffer and uploaded). Each combination runs twice: unpaced (CPU per frame,
/// page faults, frames/s) and paced at --fps (latency from publish to GPU-visible, % of a core).
///
/// CPU figures are process CPU clocks (CLOCK_PROCESS_CPUTIME_ID, all threads) over the steady
/// state, split by each process: the producer's source work (drawing or decoding) and the
/// consumer's GPU work (queue submits and fence waits; lavapipe runs the GPU's work on the
/// CPU) are reported apart from the transport's.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  compare                      # the default run (< 3 min on 2 cores)\n  compare --quick              # 720p and 1080p pattern, fewer frames\n  compare --update-docs        # also rewrite docs/BENCHMARKS.md's table and docs/compare.svg\n  compare --paths memfd-zero-copy,memcpy --sizes 1080p,4k --frames 100 --json out.json"
)]
struct Args {
    /// Paths to run, comma-separated: dmabuf, memfd-zero-copy, memcpy, socket-copy
    /// [default: all; dmabuf is skipped, with the reason, where no dma-buf allocator exists].
    #[arg(long, value_delimiter = ',', value_parser = PathKind::parse)]
    paths: Vec<PathKind>,

    /// Pattern frame sizes, comma-separated: 720p, 1080p, 4k, 8k or WIDTHxHEIGHT (NV12)
    /// [default: 720p,1080p,4k,8k; with --quick 720p,1080p].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    sizes: Vec<(u32, u32)>,

    /// Sources, comma-separated: pattern (isolates the transport) and clip (the bundled 1080p60
    /// H.264 clip decoded by FFmpeg: the share of the whole pipeline) [default: both; with
    /// --quick: pattern].
    #[arg(long, value_delimiter = ',', value_parser = ["pattern", "clip"])]
    sources: Vec<String>,

    /// The clip for the `clip` source.
    #[arg(long, default_value = "samples/clip-1080p60.mp4")]
    clip: PathBuf,

    /// Unpaced frames per run (default: by frame size, 300 at 720p down to 30 at 8K).
    #[arg(long)]
    frames: Option<u64>,

    /// Paced frames per run (default: by frame size, 120 at 720p down to 30 at 8K); 0 skips
    /// the paced runs (no latency or % of a core).
    #[arg(long)]
    paced_frames: Option<u64>,

    /// Frames per second of the paced runs (the clip plays at its own 60 fps).
    #[arg(long, default_value_t = 60)]
    fps: u32,

    /// Fewer sizes and frames, one repetition (a smoke run of about ten seconds).
    #[arg(long)]
    quick: bool,

    /// Run each combination this many times and report the median run (by transport CPU; the
    /// JSON keeps every run's figures) [default: 3; with --quick 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    repeat: Option<u32>,

    /// Write every figure of every run, and why a path was skipped, as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Write the plot (transport CPU per frame against frame size, one line per path) as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,

    /// Rewrite the generated section of docs/BENCHMARKS.md and docs/compare.svg (run from the
    /// repository root).
    #[arg(long)]
    update_docs: bool,

    /// Also run the peers side by side, same sizes and pacing: GStreamer `shmsink → shmsrc`,
    /// its source alone, our GStreamer elements `dmabufpipesink → dmabufpipesrc` (the plugin
    /// built beside this binary), PipeWire `pipewiresink → pipewiresrc` through a private
    /// daemon and our producer's PipeWire node (`--pipewire`) → `pipewiresrc` through the same
    /// daemon (both paced only), next to our zero-copy path; every process measured from outside (CPU
    /// from the kernel when it is reaped, N frames against N/10), wake-ups and syscalls per
    /// frame. Peers missing here are skipped with the reason.
    #[arg(long)]
    peers: bool,

    /// Run only the peer comparison (implies --peers).
    #[arg(long)]
    peers_only: bool,

    /// With --peers: also run an older build's producer and consumer (from this directory) as
    /// `ours-before`, alternated with ours in every round (before/after figures of a change).
    #[arg(long, value_name = "DIR")]
    peers_before: Option<PathBuf>,

    /// Where the producer and consumer binaries are [default: next to this one].
    #[arg(long)]
    bin_dir: Option<PathBuf>,

    /// Testing the measurement: both processes burn this many µs of CPU per frame in their
    /// transport step.
    #[arg(long, hide = true, default_value_t = 0)]
    test_burn_us: u64,

    /// Testing the measurement: the producer touches this many fresh memfd pages per frame.
    #[arg(long, hide = true, default_value_t = 0)]
    test_fault_pages: u64,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    match s.to_ascii_lowercase().as_str() {
        "720p" => return Ok((1280, 720)),
        "1080p" => return Ok((1920, 1080)),
        "4k" | "2160p" => return Ok((3840, 2160)),
        "8k" | "4320p" => return Ok((7680, 4320)),
        _ => {}
    }
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not 720p, 1080p, 4k, 8k or WIDTHxHEIGHT"))?;
    let w: u32 = w.parse().map_err(|_| format!("bad width in {s:?}"))?;
    let h: u32 = h.parse().map_err(|_| format!("bad height in {s:?}"))?;
    if w < 2 || h < 2 || w > 8192 || h > 8192 {
        return Err(format!("{s}: each side must be 2..=8192"));
    }
    Ok((w, h))
}

/// Default (unpaced, paced) frame counts for a frame of `pixels`.
fn default_frames(pixels: u64, quick: bool) -> (u64, u64) {
    let (u, p) = match pixels {
        0..=1_000_000 => (300, 120),
        1_000_001..=2_500_000 => (240, 120),
        2_500_001..=10_000_000 => (90, 60),
        _ => (30, 30),
    };
    if quick {
        (u.min(60), p.min(30))
    } else {
        (u, p)
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("compare: error: {e:#}");
        std::process::exit(1);
    }
}

/// The dma-buf allocator the `dmabuf` path uses, or why there is none.
fn dmabuf_allocator() -> Result<AllocatorKind, String> {
    let probe = FrameFormat::linear(PixelFormat::Nv12, 64, 64);
    let mut why = Vec::new();
    for kind in [
        AllocatorKind::DmaHeap,
        AllocatorKind::Udmabuf,
        AllocatorKind::Gbm,
    ] {
        match alloc::select(AllocChoice::Only(kind), probe) {
            Ok(_) => return Ok(kind),
            Err(e) => why.push(format!("{kind}: {e}")),
        }
    }
    Err(format!(
        "no dma-buf allocator for NV12 ({})",
        why.join("; ")
    ))
}

fn bin_dir(args: &Args) -> Result<PathBuf> {
    if let Some(d) = &args.bin_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe().context("locating this program")?;
    Ok(exe.parent().context("no parent directory")?.to_path_buf())
}

fn run(mut args: Args) -> Result<()> {
    let t0 = Instant::now();
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 });
    args.repeat = Some(repeat);
    let dir = bin_dir(&args)?;
    let (producer, consumer) = (dir.join("producer"), dir.join("consumer"));
    for b in [&producer, &consumer] {
        if !b.exists() {
            bail!(
                "{} not found (build with `cargo build --release --workspace --bins`, or pass --bin-dir)",
                b.display()
            );
        }
    }
    if args.fps == 0 || args.fps > 1000 {
        bail!("--fps must be 1..=1000");
    }
    let paths = if args.paths.is_empty() {
        PathKind::ALL.to_vec()
    } else {
        args.paths.clone()
    };
    let sizes = if !args.sizes.is_empty() {
        args.sizes.clone()
    } else if args.quick {
        vec![(1280, 720), (1920, 1080)]
    } else {
        vec![(1280, 720), (1920, 1080), (3840, 2160), (7680, 4320)]
    };
    let sources: Vec<String> = if !args.sources.is_empty() {
        args.sources.clone()
    } else if args.quick {
        vec!["pattern".into()]
    } else {
        vec!["pattern".into(), "clip".into()]
    };

    // Which paths can run here, and why not.
    let mut statuses = Vec::new();
    let mut dmabuf_alloc = String::new();
    for &p in &paths {
        let skip = match p {
            PathKind::Dmabuf => match dmabuf_allocator() {
                Ok(k) => {
                    dmabuf_alloc = k.name().to_string();
                    None
                }
                Err(why) => Some(why),
            },
            _ => None,
        };
        statuses.push(PathStatus {
            path: p.name().into(),
            ran: skip.is_none(),
            skip_reason: skip,
            allocator: match p {
                PathKind::Dmabuf => (!dmabuf_alloc.is_empty()).then(|| dmabuf_alloc.clone()),
                _ => Some("memfd".into()),
            },
        });
    }
    for s in &statuses {
        if let Some(why) = &s.skip_reason {
            eprintln!("compare: skipping {}: {why}", s.path);
        }
    }

    let clip_ok = args.clip.is_file();
    let mut plan: Vec<(String, Option<(u32, u32)>)> = Vec::new();
    let mut source_notes = Vec::new();
    for s in &sources {
        match s.as_str() {
            "pattern" => plan.extend(sizes.iter().map(|&sz| ("pattern".to_string(), Some(sz)))),
            _ if clip_ok => plan.push((format!("file:{}", args.clip.display()), None)),
            _ => source_notes.push(format!(
                "clip skipped: {} not found (run from the repository root or pass --clip)",
                args.clip.display()
            )),
        }
    }
    for n in &source_notes {
        eprintln!("compare: {n}");
    }

    let tmp = std::env::temp_dir().join(format!("dmabuf-compare-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut runner = Runner {
        producer,
        consumer,
        dir: tmp.clone(),
        counter: 0,
    };
    let runnable: Vec<PathKind> = paths
        .iter()
        .copied()
        .filter(|p| statuses.iter().any(|s| s.path == p.name() && s.ran))
        .filter(|_| !args.peers_only)
        .collect();
    let total = plan.len() * runnable.len();
    let mut entries = Vec::new();
    let mut k = 0;
    for (source, size) in &plan {
        let (w, h) = size.unwrap_or((1920, 1080));
        let (du, dp) = default_frames(u64::from(w) * u64::from(h), args.quick);
        let frames = args.frames.unwrap_or(du).max(4);
        let paced_frames = args.paced_frames.unwrap_or(dp);
        for &path in &runnable {
            k += 1;
            let label = match size {
                Some((w, h)) => format!("pattern {w}x{h}"),
                None => "clip".to_string(),
            };
            eprintln!(
                "compare: [{k}/{total}] {label} via {} ({frames} frames unpaced, {paced_frames} paced) …",
                path.name()
            );
            let spec = |frames: u64, fps: Option<u32>| RunSpec {
                path,
                source: source.clone(),
                size: *size,
                frames,
                warmup: (frames / 6).clamp(2, 10),
                fps,
                dmabuf_alloc: dmabuf_alloc.clone(),
                test_burn_us: args.test_burn_us,
                test_fault_pages: args.test_fault_pages,
            };
            let unpaced: Vec<_> = (0..repeat)
                .map(|_| runner.run(&spec(frames, None)))
                .collect();
            let paced: Vec<_> = match paced_frames {
                0 => Vec::new(),
                n => (0..repeat)
                    .map(|_| runner.run(&spec(n.max(4), Some(args.fps))))
                    .collect(),
            };
            let target_fps = if source.starts_with("file:") {
                None
            } else {
                Some(args.fps)
            };
            let entry = Entry::new(path, &label, source, *size, unpaced, paced, target_fps);
            eprintln!("compare:     {}", entry.one_line());
            entries.push(entry);
        }
    }
    let peers = if args.peers || args.peers_only {
        let (unpaced, paced) = if args.quick { (120, 60) } else { (600, 300) };
        let report = peers::run(&peers::PeerOptions {
            sizes: sizes.clone(),
            fps: args.fps,
            rounds: repeat,
            frames_unpaced: args.frames.unwrap_or(unpaced).max(20),
            frames_paced: args
                .paced_frames
                .filter(|&n| n > 0)
                .unwrap_or(paced)
                .max(20),
            producer: runner.producer.clone(),
            consumer: runner.consumer.clone(),
            dir: tmp.clone(),
            before: args.peers_before.clone(),
            gst_plugin: Some(runner.producer.with_file_name("libgstdmabufpipe.so")),
        })?;
        Some(report)
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&tmp);

    let machine = report::Machine::detect(&entries);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let measured = Measured {
        command,
        machine,
        paths: statuses,
        notes: source_notes,
        fps: args.fps,
        repeat,
        elapsed_s: t0.elapsed().as_secs_f64(),
        entries,
        peers,
    };
    if !measured.entries.is_empty() {
        println!("{}", measured.table());
        for line in measured.ratios() {
            println!("{line}");
        }
    }
    if let Some(p) = &measured.peers {
        println!("Peers side by side:\n\n{}", p.table());
        for line in p.ratios() {
            println!("{line}");
        }
        for (what, why) in &p.skipped {
            println!("skipped {what}: {why}");
        }
    }
    println!("total time {:.0} s", measured.elapsed_s);
    if let Some(p) = &args.json {
        write(p, &(serde_json::to_string_pretty(&measured)? + "\n"))?;
        eprintln!("compare: wrote {}", p.display());
    }
    let svg = plot::svg(&measured);
    if let Some(p) = &args.svg {
        write(p, &svg)?;
        eprintln!("compare: wrote {}", p.display());
    }
    if args.update_docs {
        let doc = Path::new("docs/BENCHMARKS.md");
        let mut text = std::fs::read_to_string(doc)
            .with_context(|| format!("reading {} (run from the repository root)", doc.display()))?;
        if !measured.entries.is_empty() {
            write(Path::new("docs/compare.svg"), &svg)?;
            text = report::splice(&text, &measured.markdown());
        }
        if let Some(p) = &measured.peers {
            text = peers::splice(&text, &p.markdown());
        }
        write(doc, &text)?;
        eprintln!("compare: updated docs/BENCHMARKS.md (and docs/compare.svg with our paths)");
    }
    let peer_failed = measured
        .peers
        .as_ref()
        .is_some_and(|p| p.entries.iter().any(|e| e.error.is_some()));
    if peer_failed {
        bail!("some peer runs failed (see the table and the JSON)");
    }
    if measured.entries.iter().any(|e| e.error.is_some()) {
        bail!("some runs failed (see the table and the JSON)");
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
