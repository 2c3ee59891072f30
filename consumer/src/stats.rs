//! Counters, the live statistics line and the `--stats-json` report.

use dmabuf_core::time::{monotonic_ns, process_cpu_ns};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The `--stats-json` object.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub frames: u64,
    pub verified: u64,
    pub mismatches: u64,
    /// Frames the producer skipped for us (gaps in the sequence numbers).
    pub dropped: u64,
    /// Frames that came without a checksum while --verify was on.
    pub unverifiable: u64,
    pub alloc: String,
    pub memory: String,
    pub import_path: String,
    pub pixel_format: String,
    pub width: u32,
    pub height: u32,
    pub buffers: u32,
    /// This process's CPU time from connect to the end, all threads, in ns.
    pub cpu_ns: u64,
    pub cpu_ns_per_frame: f64,
    pub wall_ns: u64,
    pub fps: f64,
    /// Producer's publish (`CLOCK_MONOTONIC` in the Frame message) to the consumer holding the
    /// frame, in microseconds.
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_max: f64,
    /// Time the consumer spent on a frame (verify, dump) before releasing it, in microseconds.
    pub process_us_p50: f64,
    /// The Vulkan device (null on the cpu-map path).
    pub vk_device: Option<String>,
    /// `vkAllocateMemory` calls and external-memory imports over the whole run (they must not
    /// grow with the number of frames).
    pub vk_allocations: Option<u64>,
    pub vk_imports: Option<u64>,
    /// GPU submits that waited on a dma-buf's exported sync file (implicit sync).
    pub implicit_sync_waits: Option<u64>,
    /// Whether `verified` was computed by the GPU over the imported memory.
    pub gpu_verified: bool,
    /// Open descriptors after the first 3 frames (every buffer imported, and whatever the
    /// driver opens lazily on first use) and at the end: equal unless something leaks per frame.
    pub fds_after_warmup: usize,
    pub fds_at_end: usize,
    /// `--transport`: zero-copy, memcpy or socket-copy.
    pub transport: String,
    /// Producer's publish to the frame being GPU-visible (the import's acquire, the upload or
    /// the checksum finished: fence signalled), in microseconds, over the steady state.
    pub visible_us_p50: f64,
    pub visible_us_p99: f64,
    /// The steady state: the frames after `--stats-warmup`.
    pub warmup_frames: u64,
    pub steady_frames: u64,
    pub steady_wall_ns: u64,
    /// Process CPU (all threads) over the steady state.
    pub steady_cpu_ns: u64,
    /// Of which inside GPU submits and fence waits (lavapipe runs the GPU's work on the CPU).
    pub steady_gpu_cpu_ns: u64,
    /// The rest: receiving, copies, releasing (`steady_cpu_ns - steady_gpu_cpu_ns`).
    pub steady_transport_cpu_ns: u64,
    pub steady_minflt: u64,
    pub steady_majflt: u64,
    pub steady_cpu_ns_per_frame: f64,
    pub gpu_cpu_ns_per_frame: f64,
    pub transport_cpu_ns_per_frame: f64,
    pub minflt_per_frame: f64,
    pub majflt_per_frame: f64,
    /// Medians over the steady frames of each frame's CPU (frame to frame), in ns.
    pub cpu_ns_p50: f64,
    pub gpu_cpu_ns_p50: f64,
    pub transport_cpu_ns_p50: f64,
    pub steady_fps: f64,
    /// Steady-state CPU as a share of one core over wall time, in %.
    pub cpu_percent: f64,
    /// PNG snapshots written.
    pub snapshots: Vec<String>,
    /// `null` when the stream ended normally, else what went wrong.
    pub error: Option<String>,
}

pub struct Stats {
    pub report: Report,
    latencies_us: Vec<f64>,
    process_us: Vec<f64>,
    start: Instant,
    cpu0: u64,
    last_seq: Option<u64>,
    live: bool,
    tty: bool,
    last_line: Instant,
    line_frames: u64,
    line_cpu: u64,
    warmup: u64,
    visible_us: Vec<f64>,
    steady: Option<Snapshot>,
    last: Snapshot,
    /// Per steady frame: (process CPU, of which GPU work) in ns.
    samples: Vec<(u64, u64)>,
}

fn median(mut v: Vec<u64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    frames: u64,
    wall_ns: u64,
    cpu_ns: u64,
    gpu_cpu_ns: u64,
    minflt: u64,
    majflt: u64,
}

fn snap(frames: u64, gpu_cpu_ns: u64) -> Snapshot {
    let (minflt, majflt) = dmabuf_core::time::page_faults();
    Snapshot {
        frames,
        wall_ns: monotonic_ns(),
        cpu_ns: process_cpu_ns(),
        gpu_cpu_ns,
        minflt,
        majflt,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

impl Stats {
    pub fn new(live: bool, warmup: u64) -> Self {
        Self {
            report: Report::default(),
            latencies_us: Vec::new(),
            process_us: Vec::new(),
            start: Instant::now(),
            cpu0: process_cpu_ns(),
            last_seq: None,
            live,
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            line_frames: 0,
            line_cpu: process_cpu_ns(),
            warmup: warmup.max(1),
            visible_us: Vec::new(),
            steady: None,
            last: Snapshot::default(),
            samples: Vec::new(),
        }
    }

    /// Count a frame that the consumer is done with, for the steady-state figures: it was
    /// published at `publish_ns`, GPU-visible at `visible_ns` (None without a GPU), and the
    /// GPU's work so far cost `gpu_cpu_ns` of process CPU.
    pub fn steady(&mut self, publish_ns: u64, visible_ns: Option<u64>, gpu_cpu_ns: u64) {
        let s = snap(self.report.frames, gpu_cpu_ns);
        if self.steady.is_some() {
            self.samples.push((
                s.cpu_ns - self.last.cpu_ns,
                s.gpu_cpu_ns - self.last.gpu_cpu_ns,
            ));
            if let Some(v) = visible_ns {
                self.visible_us
                    .push(v.saturating_sub(publish_ns) as f64 / 1e3);
            }
        } else if self.report.frames >= self.warmup {
            self.steady = Some(s);
        }
        self.last = s;
    }

    /// Count a frame that the consumer is done with; `received_ns` is when it arrived.
    pub fn frame(&mut self, seq: u64, publish_ns: u64, received_ns: u64) {
        if self.report.frames < 3 {
            self.report.fds_after_warmup = open_fds();
        }
        if let Some(last) = self.last_seq {
            self.report.dropped += seq.saturating_sub(last + 1);
        }
        self.last_seq = Some(seq);
        self.report.frames += 1;
        self.line_frames += 1;
        let lat = received_ns.saturating_sub(publish_ns) as f64 / 1e3;
        self.latencies_us.push(lat);
        self.process_us
            .push(monotonic_ns().saturating_sub(received_ns) as f64 / 1e3);
        if self.live && self.last_line.elapsed() >= Duration::from_secs(1) {
            self.print_line();
        }
    }

    fn print_line(&mut self) {
        let dt = self.last_line.elapsed().as_secs_f64();
        let cpu = process_cpu_ns();
        let fps = self.line_frames as f64 / dt;
        let cpu_pct = (cpu - self.line_cpu) as f64 / 1e9 / dt * 100.0;
        let recent = &self.latencies_us[self.latencies_us.len() - self.line_frames as usize..];
        let mut r = recent.to_vec();
        r.sort_by(f64::total_cmp);
        let line = format!(
            "frames {:>6} | {:6.1} fps | latency p50 {:7.1} µs p99 {:7.1} µs | consumer CPU {:5.1} % | verified {} mismatches {} dropped {}",
            self.report.frames,
            fps,
            percentile(&r, 0.5),
            percentile(&r, 0.99),
            cpu_pct,
            self.report.verified,
            self.report.mismatches,
            self.report.dropped
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.last_line = Instant::now();
        self.line_frames = 0;
        self.line_cpu = cpu;
    }

    /// Close the report.
    pub fn finish(mut self) -> Report {
        if self.live && self.tty {
            eprintln!();
        }
        self.report.fds_at_end = open_fds();
        let wall = self.start.elapsed();
        self.report.wall_ns = wall.as_nanos() as u64;
        self.report.cpu_ns = process_cpu_ns() - self.cpu0;
        let n = self.report.frames.max(1) as f64;
        self.report.cpu_ns_per_frame = self.report.cpu_ns as f64 / n;
        self.report.fps = self.report.frames as f64 / wall.as_secs_f64().max(1e-9);
        self.latencies_us.sort_by(f64::total_cmp);
        self.report.latency_us_p50 = percentile(&self.latencies_us, 0.5);
        self.report.latency_us_p99 = percentile(&self.latencies_us, 0.99);
        self.report.latency_us_max = self.latencies_us.last().copied().unwrap_or(0.0);
        self.process_us.sort_by(f64::total_cmp);
        self.report.process_us_p50 = percentile(&self.process_us, 0.5);
        self.visible_us.sort_by(f64::total_cmp);
        self.report.visible_us_p50 = percentile(&self.visible_us, 0.5);
        self.report.visible_us_p99 = percentile(&self.visible_us, 0.99);
        let a = self.steady.unwrap_or(self.last);
        let b = self.last;
        let r = &mut self.report;
        let n = b.frames - a.frames;
        let per = |v: u64| if n == 0 { 0.0 } else { v as f64 / n as f64 };
        r.warmup_frames = a.frames;
        r.steady_frames = n;
        r.steady_wall_ns = b.wall_ns - a.wall_ns;
        r.steady_cpu_ns = b.cpu_ns - a.cpu_ns;
        r.steady_gpu_cpu_ns = b.gpu_cpu_ns - a.gpu_cpu_ns;
        r.steady_transport_cpu_ns = r.steady_cpu_ns.saturating_sub(r.steady_gpu_cpu_ns);
        r.steady_minflt = b.minflt - a.minflt;
        r.steady_majflt = b.majflt - a.majflt;
        r.steady_cpu_ns_per_frame = per(r.steady_cpu_ns);
        r.gpu_cpu_ns_per_frame = per(r.steady_gpu_cpu_ns);
        r.transport_cpu_ns_per_frame = per(r.steady_transport_cpu_ns);
        r.minflt_per_frame = per(r.steady_minflt);
        r.majflt_per_frame = per(r.steady_majflt);
        r.cpu_ns_p50 = median(self.samples.iter().map(|s| s.0).collect());
        r.gpu_cpu_ns_p50 = median(self.samples.iter().map(|s| s.1).collect());
        r.transport_cpu_ns_p50 = median(
            self.samples
                .iter()
                .map(|s| s.0.saturating_sub(s.1))
                .collect(),
        );
        if r.steady_wall_ns > 0 {
            r.steady_fps = n as f64 * 1e9 / r.steady_wall_ns as f64;
            r.cpu_percent = r.steady_cpu_ns as f64 * 100.0 / r.steady_wall_ns as f64;
        }
        self.report
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}
